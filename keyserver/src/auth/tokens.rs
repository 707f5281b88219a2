//! Admin bearer tokens: `pgsk_<id>_<secret>`, 128-bit id and 256-bit secret, stored only as
//! SHA-256 of the secret and compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::store::TokenRecord;
use crate::util::now_unix;

const PREFIX: &str = "pgsk_";

/// A freshly generated token: the id and the full secret string (shown once).
pub struct NewToken {
    /// `tok_…` id.
    pub id: String,
    /// Full bearer token string.
    pub token: Zeroizing<String>,
    /// SHA-256 of the secret part.
    pub secret_hash: [u8; 32],
}

/// Generates a new token.
pub fn generate() -> Result<NewToken, getrandom::Error> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id)?;
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut())?;
    let secret_hex = Zeroizing::new(hex::encode(secret.as_ref()));
    let id = format!("tok_{}", hex::encode(id));
    let token = Zeroizing::new(format!("{PREFIX}{id}_{}", secret_hex.as_str()));
    Ok(NewToken {
        secret_hash: hash_secret(&secret_hex),
        id,
        token,
    })
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits a presented token into (id, secret); `None` if malformed.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    // id is "tok_" + 32 hex; the secret follows after '_'.
    let id = rest.get(..36)?;
    let secret = rest.get(36..)?.strip_prefix('_')?;
    if !id.starts_with("tok_") || secret.len() != 64 {
        return None;
    }
    Some((id, secret))
}

/// Checks a presented secret against a stored record: hash match (constant time), not revoked,
/// not expired.
pub fn verify(rec: &TokenRecord, secret: &str) -> bool {
    let presented = hash_secret(secret);
    let hash_ok: bool = presented.ct_eq(&rec.secret_hash).into();
    let live = !rec.revoked && rec.expires_at.is_none_or(|exp| now_unix() < exp);
    hash_ok && live
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn rec(t: &NewToken) -> TokenRecord {
        TokenRecord {
            id: t.id.clone(),
            name: "n".into(),
            role: Role::Auditor,
            secret_hash: t.secret_hash,
            created_at: String::new(),
            expires_at: None,
            revoked: false,
        }
    }

    #[test]
    fn generate_parse_verify() {
        let t = generate().unwrap();
        let (id, secret) = parse(&t.token).unwrap();
        assert_eq!(id, t.id);
        let mut r = rec(&t);
        assert!(verify(&r, secret));
        assert!(!verify(&r, &"0".repeat(64)));
        r.revoked = true;
        assert!(!verify(&r, secret));
        r.revoked = false;
        r.expires_at = Some(now_unix() - 1);
        assert!(!verify(&r, secret));
        r.expires_at = Some(now_unix() + 100);
        assert!(verify(&r, secret));
        assert!(parse("pgsk_short").is_none());
        assert!(parse("nope").is_none());
        assert!(parse(&format!("{}x", t.token.as_str())).is_none());
        assert!(parse("pgsk_ä").is_none());
    }
}
