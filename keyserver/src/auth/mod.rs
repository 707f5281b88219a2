//! Caller identities: proxies by client certificate (data plane), people and CI by bearer
//! admin token (control plane).

pub mod mtls;
pub mod tokens;

use crate::model::{ProxyName, Role};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A proxy whose client certificate chained to the configured CA.
    Proxy(ProxyName),
    /// An admin token.
    Admin {
        /// Token id.
        token_id: String,
        /// Role of the token.
        role: Role,
    },
}

impl Principal {
    /// Identity string for the audit log.
    pub fn audit_actor(&self) -> String {
        match self {
            Self::Proxy(p) => format!("proxy:{p}"),
            Self::Admin { token_id, role } => format!("token:{token_id}({})", role.as_str()),
        }
    }
}

/// Why a caller is not authenticated. All variants produce the same 401 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token and no client certificate.
    Missing,
    /// Token malformed, unknown, wrong secret, revoked or expired; or unusable certificate name.
    Invalid,
}

impl AuthFailure {
    /// Audit outcome code (more precise than what the caller sees).
    pub fn audit_code(self) -> &'static str {
        match self {
            Self::Missing => "unauthenticated",
            Self::Invalid => "bad_credentials",
        }
    }
}
