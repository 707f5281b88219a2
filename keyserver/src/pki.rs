//! A small built-in CA for teams without their own PKI (rcgen): CA, server certificate,
//! proxy client certificates. An external CA works as well: the server only needs PEM files.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::error::KsError;
use crate::model::ProxyName;

/// A certificate and its private key, PEM encoded.
pub struct CertPair {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (keep it secret).
    pub key_pem: String,
}

fn pki_err(e: rcgen::Error) -> KsError {
    KsError::Pki(e.to_string())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

/// Creates a self-signed CA (10 years) named `cn`.
pub fn create_ca(cn: &str) -> Result<CertPair, KsError> {
    let key = KeyPair::generate().map_err(pki_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 3650);
    let cert = params.self_signed(&key).map_err(pki_err)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issue(
    ca: &CertPair,
    cn: &str,
    sans: &[String],
    usage: ExtendedKeyUsagePurpose,
    days: i64,
) -> Result<CertPair, KsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(pki_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(pki_err)?;
    let key = KeyPair::generate().map_err(pki_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    for san in sans {
        params
            .subject_alt_names
            .push(match san.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into().map_err(pki_err)?),
            });
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues the keyserver's TLS server certificate (1 year) for the given DNS names / IPs.
pub fn issue_server(ca: &CertPair, sans: &[String]) -> Result<CertPair, KsError> {
    let cn = sans
        .first()
        .map(String::as_str)
        .unwrap_or("pgseal-keyserver");
    issue(ca, cn, sans, ExtendedKeyUsagePurpose::ServerAuth, 365)
}

/// Issues a proxy client certificate (1 year) whose common name is the proxy's identity.
pub fn issue_proxy(ca: &CertPair, name: &ProxyName) -> Result<CertPair, KsError> {
    issue(
        ca,
        name.as_str(),
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        365,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mtls::proxy_name_from_cert;
    use rustls_pki_types::{pem::PemObject, CertificateDer};

    #[test]
    fn proxy_cert_carries_name() {
        let ca = create_ca("test ca").unwrap();
        let p = issue_proxy(&ca, &ProxyName::parse("proxy-1").unwrap()).unwrap();
        let der = CertificateDer::from_pem_slice(p.cert_pem.as_bytes()).unwrap();
        assert_eq!(proxy_name_from_cert(&der).unwrap().as_str(), "proxy-1");
        let s = issue_server(&ca, &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(s.cert_pem.contains("BEGIN CERTIFICATE"));
    }
}
