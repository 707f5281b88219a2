//! Identity of a proxy from its (already verified) client certificate: the subject common name.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::ProxyName;

/// Extracts the proxy name from the leaf certificate's subject CN; `None` if missing or not a
/// valid proxy name.
pub fn proxy_name_from_cert(der: &[u8]) -> Option<ProxyName> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    ProxyName::parse(cn).ok()
}
