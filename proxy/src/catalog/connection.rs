//! The catalog's own upstream connection: the `[upstream]` target, the upstream credentials of
//! `encryption.catalog_user`, the protected database.

use std::time::Duration;

use zeroize::Zeroizing;

use super::CatalogError;
use crate::config::{EncryptionSettings, Resolved};
use crate::upstream::auth::Credentials;
use crate::upstream::connect::UpstreamTarget;
use crate::upstream::simple_query::SimpleClient;

/// Startup parameters of catalog connections.
const PARAMS: [(&str, &str); 2] = [
    ("application_name", "pgseal-catalog"),
    ("client_encoding", "UTF8"),
];

/// Everything needed to open a catalog connection.
pub struct CatalogConnector {
    target: UpstreamTarget,
    user: String,
    password: Option<Zeroizing<String>>,
    database: String,
    timeout: Duration,
}

impl std::fmt::Debug for CatalogConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogConnector")
            .field("target", &self.target)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl CatalogConnector {
    /// Builds the connector (loads upstream TLS material; no I/O otherwise).
    pub fn new(resolved: &Resolved, settings: &EncryptionSettings) -> Result<Self, CatalogError> {
        let user = resolved.users.get(&settings.catalog_user).ok_or_else(|| {
            CatalogError(format!(
                "encryption.catalog_user {:?} is not a configured user",
                settings.catalog_user
            ))
        })?;
        let target = UpstreamTarget::from_config(&resolved.config.upstream)
            .map_err(|e| CatalogError(format!("upstream TLS: {e}")))?;
        Ok(CatalogConnector {
            target,
            user: user.upstream_user.clone(),
            password: user.upstream_password.clone(),
            database: settings.database.clone(),
            timeout: resolved.connect_timeout(),
        })
    }

    /// The connect + login timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Where and as whom, for messages (no secrets).
    pub fn describe(&self) -> String {
        format!(
            "database {:?} as upstream user {:?} at {}:{}",
            self.database, self.user, self.target.host, self.target.port
        )
    }

    /// Opens and logs in a connection.
    pub async fn connect(&self) -> Result<SimpleClient, CatalogError> {
        let creds = Credentials {
            user: &self.user,
            password: self.password.as_ref(),
            database: &self.database,
            params: &PARAMS.map(|(k, v)| (k.to_owned(), v.to_owned())),
        };
        SimpleClient::connect(&self.target, &creds, self.timeout)
            .await
            .map_err(|e| {
                CatalogError(format!(
                    "cannot reach the upstream catalog ({}): {e}",
                    self.describe()
                ))
            })
    }
}
