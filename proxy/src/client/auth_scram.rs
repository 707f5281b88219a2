//! SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it: the server side that checks clients
//! against configured verifiers, and the primitives the upstream client side shares.
//!
//! Written on RustCrypto `hmac`/`sha2` rather than pgwire's SCRAM because pgwire's server SCRAM is
//! tied to its own connection handler and codec, which a raw-framing proxy does not use. Proofs and
//! signatures are compared in constant time; key material is zeroized on drop.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Mechanism name.
pub const MECHANISM: &str = "SCRAM-SHA-256";
/// Iterations used for verifiers the proxy derives from passwords (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Highest iteration count accepted (from a verifier or from an upstream server).
pub const MAX_ITERATIONS: u32 = 10_000_000;

type HmacSha256 = Hmac<Sha256>;

/// A SCRAM exchange failed. Deliberately carries no detail a client could use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    /// A message of the exchange is malformed.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding or an extension we do not support was requested.
    #[error("unsupported SCRAM feature: {0}")]
    Unsupported(&'static str),
    /// The proof (or the server signature) did not verify.
    #[error("SCRAM authentication failed")]
    BadProof,
    /// A verifier string does not parse.
    #[error("invalid verifier: {0}")]
    BadVerifier(&'static str),
    /// Randomness unavailable.
    #[error("no randomness: {0}")]
    Random(String),
}

pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this never fails; fall back to an all-zero MAC anyway.
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) else {
        return [0u8; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `Hi()` of RFC 5802: PBKDF2-HMAC-SHA256 with one output block.
pub(crate) fn hi(password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let Ok(keyed) = <HmacSha256 as KeyInit>::new_from_slice(password) else {
        return Zeroizing::new([0u8; 32]);
    };
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = Zeroizing::new(u);
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    u.zeroize();
    out
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], ScramError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ScramError::Random(e.to_string()))?;
    Ok(b)
}

/// A stored SCRAM-SHA-256 verifier: what PostgreSQL keeps in `pg_authid.rolpassword`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ScramVerifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(..)")
    }
}

impl ScramVerifier {
    /// Derives a verifier from a password with a fresh random salt.
    pub fn from_password(password: &[u8]) -> Result<Self, ScramError> {
        let salt = random_bytes::<16>()?;
        Ok(Self::derive(password, &salt, DEFAULT_ITERATIONS))
    }

    /// Derives a verifier from a password, salt and iteration count.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = hi(password, salt, iterations);
        let client_key = Zeroizing::new(hmac(salted.as_ref(), &[b"Client Key"]));
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(client_key.as_ref()),
            server_key: hmac(salted.as_ref(), &[b"Server Key"]),
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 fields).
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .trim()
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadVerifier(
                "does not start with SCRAM-SHA-256$",
            ))?;
        let (iter_salt, keys) = rest
            .split_once('$')
            .ok_or(ScramError::BadVerifier("missing '$'"))?;
        let (iter, salt) = iter_salt
            .split_once(':')
            .ok_or(ScramError::BadVerifier("missing ':' after iterations"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(ScramError::BadVerifier("missing ':' between keys"))?;
        let iterations: u32 = iter
            .parse()
            .map_err(|_| ScramError::BadVerifier("iterations is not a number"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::BadVerifier("iterations out of range"));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramError::BadVerifier("salt is not base64"))?;
        let stored_key: [u8; 32] = B64
            .decode(stored)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::BadVerifier(
                "StoredKey is not 32 bytes of base64",
            ))?;
        let server_key: [u8; 32] = B64
            .decode(server)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::BadVerifier(
                "ServerKey is not 32 bytes of base64",
            ))?;
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Formats in PostgreSQL's `rolpassword` format.
    pub fn to_postgres_string(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// A verifier that no password matches, with a salt derived from `mock_secret` and the user
    /// name, so an unknown user sees an exchange that looks like a real one (as PostgreSQL does).
    pub fn mock(mock_secret: &[u8; 32], user: &str) -> Self {
        let salt = hmac(mock_secret, &[b"salt", user.as_bytes()]);
        let mut v = ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.get(..16).unwrap_or(&salt).to_vec(),
            stored_key: hmac(mock_secret, &[b"stored", user.as_bytes()]),
            server_key: hmac(mock_secret, &[b"server", user.as_bytes()]),
        };
        // Flip one bit so that even someone who learns the mock secret cannot log in.
        if let Some(b) = v.stored_key.first_mut() {
            *b ^= 1;
        }
        v
    }
}

/// Server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    is_mock: bool,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

fn is_printable_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

impl ScramServer {
    /// Starts an exchange against `verifier`. A mock exchange always fails at the proof.
    pub fn new(verifier: ScramVerifier, is_mock: bool) -> Self {
        ScramServer {
            verifier,
            is_mock,
            gs2_header: String::new(),
            client_first_bare: String::new(),
            server_first: String::new(),
            nonce: String::new(),
        }
    }

    /// Handles client-first-message; returns server-first-message.
    pub fn client_first(&mut self, data: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => {
                return Err(ScramError::Unsupported("channel binding"));
            }
            _ => return Err(ScramError::Malformed("bad GS2 flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no client-first-bare"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Unsupported("authorization identity"));
        }
        let mut attrs = bare.split(',');
        let user = attrs.next().ok_or(ScramError::Malformed("no user"))?;
        if user.starts_with("m=") {
            return Err(ScramError::Unsupported("mandatory extension"));
        }
        if !user.starts_with("n=") {
            return Err(ScramError::Malformed("expected n="));
        }
        let cnonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("expected r="))?;
        if !is_printable_nonce(cnonce) {
            return Err(ScramError::Malformed("bad client nonce"));
        }
        let snonce = B64.encode(random_bytes::<18>()?);
        self.gs2_header = format!("{flag},{authzid},");
        self.client_first_bare = bare.to_owned();
        self.nonce = format!("{cnonce}{snonce}");
        self.server_first = format!(
            "r={},s={},i={}",
            self.nonce,
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        Ok(self.server_first.clone())
    }

    /// Handles client-final-message; returns server-final-message when the proof verifies.
    pub fn client_final(&mut self, data: &[u8]) -> Result<String, ScramError> {
        if self.server_first.is_empty() {
            return Err(ScramError::Malformed("client-final before client-first"));
        }
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof_b64) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("expected c="))?;
        let expected_cbind = B64.encode(self.gs2_header.as_bytes());
        if cbind != expected_cbind {
            return Err(ScramError::Malformed("channel binding mismatch"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("expected r="))?;
        let proof: [u8; 32] = B64
            .decode(proof_b64)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::Malformed("proof is not 32 bytes of base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = Zeroizing::new([0u8; 32]);
        for ((k, p), s) in client_key
            .iter_mut()
            .zip(proof.iter())
            .zip(client_signature.iter())
        {
            *k = p ^ s;
        }
        let computed = sha256(client_key.as_ref());
        let proof_ok: bool = computed.ct_eq(&self.verifier.stored_key).into();
        let nonce_ok: bool = nonce.as_bytes().ct_eq(self.nonce.as_bytes()).into();
        if !proof_ok || !nonce_ok || self.is_mock {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// Client side of one SCRAM-SHA-256 exchange (the proxy authenticating to the upstream).
pub struct ScramClient {
    password: Zeroizing<Vec<u8>>,
    client_nonce: String,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// Starts an exchange with a password.
    pub fn new(password: &[u8]) -> Result<Self, ScramError> {
        let client_nonce = B64.encode(random_bytes::<18>()?);
        Ok(ScramClient {
            password: Zeroizing::new(password.to_vec()),
            client_first_bare: format!("n=,r={client_nonce}"),
            client_nonce,
            server_signature: None,
        })
    }

    /// client-first-message.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Handles server-first-message; returns client-final-message.
    pub fn server_first(&mut self, data: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in msg.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(v);
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = Some(v);
            } else if attr.starts_with("m=") {
                return Err(ScramError::Unsupported("mandatory extension"));
            }
        }
        let nonce = nonce.ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let salt = B64
            .decode(salt.ok_or(ScramError::Malformed("no salt"))?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = iterations
            .ok_or(ScramError::Malformed("no iteration count"))?
            .parse()
            .map_err(|_| ScramError::Malformed("bad iteration count"))?;
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::Malformed("iteration count out of range"));
        }
        let salted = hi(&self.password, &salt, iterations);
        let client_key = Zeroizing::new(hmac(salted.as_ref(), &[b"Client Key"]));
        let stored_key = sha256(client_key.as_ref());
        let server_key = Zeroizing::new(hmac(salted.as_ref(), &[b"Server Key"]));
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let client_signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let mut proof = [0u8; 32];
        for ((p, k), s) in proof
            .iter_mut()
            .zip(client_key.iter())
            .zip(client_signature.iter())
        {
            *p = k ^ s;
        }
        self.server_signature = Some(hmac(server_key.as_ref(), &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final-message.
    pub fn server_final(&self, data: &[u8]) -> Result<(), ScramError> {
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let v = msg
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .ok_or(ScramError::BadProof)?;
        let got = B64.decode(v).map_err(|_| ScramError::BadProof)?;
        let expected = self.server_signature.ok_or(ScramError::BadProof)?;
        if bool::from(got.as_slice().ct_eq(&expected)) {
            Ok(())
        } else {
            Err(ScramError::BadProof)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_agree() {
        let v = ScramVerifier::derive(b"pencil", b"0123456789abcdef", 4096);
        let parsed = ScramVerifier::parse(&v.to_postgres_string()).unwrap();
        let mut server = ScramServer::new(parsed, false);
        let mut client = ScramClient::new(b"pencil").unwrap();
        let sf = server
            .client_first(client.client_first().as_bytes())
            .unwrap();
        let cf = client.server_first(sf.as_bytes()).unwrap();
        let fin = server.client_final(cf.as_bytes()).unwrap();
        client.server_final(fin.as_bytes()).unwrap();
    }

    #[test]
    fn wrong_password_and_mock_fail() {
        let v = ScramVerifier::derive(b"pencil", b"salt", 4096);
        let mut server = ScramServer::new(v, false);
        let mut client = ScramClient::new(b"pen").unwrap();
        let sf = server
            .client_first(client.client_first().as_bytes())
            .unwrap();
        let cf = client.server_first(sf.as_bytes()).unwrap();
        assert_eq!(
            server.client_final(cf.as_bytes()),
            Err(ScramError::BadProof)
        );

        let mut server = ScramServer::new(ScramVerifier::mock(&[7; 32], "x"), true);
        let mut client = ScramClient::new(b"pencil").unwrap();
        let sf = server
            .client_first(client.client_first().as_bytes())
            .unwrap();
        let cf = client.server_first(sf.as_bytes()).unwrap();
        assert_eq!(
            server.client_final(cf.as_bytes()),
            Err(ScramError::BadProof)
        );
    }

    #[test]
    fn malformed_fields_are_errors() {
        let v = ScramVerifier::derive(b"pencil", b"salt", 16);
        for bad in [
            &b""[..],
            b"n",
            b"x,,n=,r=abc",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,a=bob,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=",
            b"n,,n=,r=",
            b"n,,n=,r=a,b",
            b"\xff\xfe",
        ] {
            let mut s = ScramServer::new(v.clone(), false);
            if s.client_first(bad).is_ok() {
                assert!(s.client_final(b"c=biws,r=x,p=AAAA").is_err());
            }
        }
        let mut s = ScramServer::new(v.clone(), false);
        assert!(s.client_final(b"c=biws,r=x,p=AAAA").is_err());
        s.client_first(b"n,,n=,r=abc").unwrap();
        for bad in [
            &b"c=biws"[..],
            b"c=xxxx,r=abc,p=AAAA",
            b"c=biws,r=abc,p=!!!",
            b"c=biws,r=abc,p=AAAA",
            b"r=abc,p=AAAA",
        ] {
            assert!(s.client_final(bad).is_err());
        }
        assert!(ScramVerifier::parse("md5abc").is_err());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$0:AAAA$AAAA:AAAA").is_err());
    }

    #[test]
    fn rfc7677_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = ScramVerifier::derive(b"pencil", &salt, 4096);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac(&v.server_key, &[auth.as_bytes()]);
        assert_eq!(
            B64.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }
}
