//! Typed HTTPS client for the keyserver API (hyper + tokio-rustls, one kept-alive HTTP/1.1
//! connection per client, reconnecting when it drops).
//!
//! Proxies build it with a client certificate and use [`Client::keyring`],
//! [`Client::material`] and [`Client::changes`]; the CLI builds it with a bearer token.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use pgseal_crypto::SecretKey;
use rustls::{ClientConfig as TlsClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::model::{
    AuditList, AuditVerifyReport, ChangesResponse, CreateKeyringRequest, CreateTokenRequest,
    CreatedToken, ErrorBody, Health, IndexConfirmRequest, IndexMaterialResponse, IndexPassReport,
    IndexPassRequest, IndexPassResponse, IndexPhase, IndexRotationStatus, KeyringList, KeyringMeta,
    MaterialResponse, ProxyInfo, ProxyList, Role, SetMinVersionRequest, SetProxyRequest, TokenInfo,
    TokenList, VersionState,
};
use crate::server::{certs_from_pem, provider};

const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad client configuration (URL, PEM files).
    #[error("client configuration: {0}")]
    Config(String),
    /// TCP/TLS connection failure.
    #[error("cannot connect to keyserver: {0}")]
    Connect(String),
    /// HTTP-level failure.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The request timed out.
    #[error("request timed out")]
    Timeout,
    /// The server answered with an error.
    #[error("keyserver returned {status}: {error}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code.
        error: String,
        /// Message.
        message: String,
    },
    /// The response could not be decoded.
    #[error("bad response: {0}")]
    Decode(String),
}

/// How to reach and authenticate to the keyserver.
pub struct ClientConfig {
    /// `https://host:port`.
    pub url: String,
    /// PEM of the CA that signed the server certificate.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and key (PEM) for the data plane.
    pub identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    /// Bearer admin token for the control plane.
    pub token: Option<Zeroizing<String>>,
    /// Per-request timeout (long-poll waits are added on top).
    pub timeout: Duration,
}

/// Material of one key version, fetched by a proxy.
pub struct FetchedKey {
    /// Keyring id (use it, not the name, as cache key together with the version).
    pub keyring_id: String,
    /// Version.
    pub version: u32,
    /// State at fetch time.
    pub state: VersionState,
    /// The 32-byte key (zeroized on drop).
    pub key: SecretKey,
}

/// Material of one blind-index generation, fetched by a proxy.
pub struct FetchedIndexKey {
    /// Keyring id.
    pub keyring_id: String,
    /// Generation.
    pub generation: u32,
    /// The 32-byte index material (zeroized on drop).
    pub key: SecretKey,
}

/// A keyserver client.
pub struct Client {
    connector: TlsConnector,
    addr: String,
    host_header: String,
    server_name: ServerName<'static>,
    token: Option<Zeroizing<String>>,
    timeout: Duration,
    conn: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

fn cfg_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Config(e.to_string())
}

impl Client {
    /// Builds a client (no connection is made yet).
    pub fn new(cfg: ClientConfig) -> Result<Self, ClientError> {
        let uri: hyper::Uri = cfg.url.parse().map_err(cfg_err)?;
        if uri.scheme_str() != Some("https") {
            return Err(ClientError::Config(
                "the keyserver URL must start with https://".into(),
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Config("URL has no host".into()))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(bare_host.clone()).map_err(cfg_err)?;
        let mut roots = RootCertStore::empty();
        for c in certs_from_pem(&cfg.ca_pem).map_err(cfg_err)? {
            roots.add(c).map_err(cfg_err)?;
        }
        let builder = TlsClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(cfg_err)?
            .with_root_certificates(roots);
        let mut tls = match &cfg.identity {
            Some((cert, key)) => {
                let chain = certs_from_pem(cert).map_err(cfg_err)?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(cfg_err)?;
                builder.with_client_auth_cert(chain, key).map_err(cfg_err)?
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: TlsConnector::from(Arc::new(tls)),
            addr: if bare_host.contains(':') {
                format!("[{bare_host}]:{port}")
            } else {
                format!("{bare_host}:{port}")
            },
            host_header: format!("{host}:{port}"),
            server_name,
            token: cfg.token,
            timeout: cfg.timeout,
            conn: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| ClientError::Connect(format!("TLS: {e}")))?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: &Option<Vec<u8>>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), ClientError> {
        let mut guard = self.conn.lock().await;
        let mut sender = match guard.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        if sender.ready().await.is_err() {
            // The kept-alive connection went away before we sent anything: reconnect once.
            sender = self.connect().await?;
            sender
                .ready()
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?;
        }
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, &self.host_header);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", t.as_str()));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(b.clone()))),
            None => req.body(Full::new(Bytes::new())),
        }
        .map_err(|e| ClientError::Http(e.to_string()))?;
        let retry_req = (*method == Method::GET && body.is_none()).then(|| {
            let mut r = Request::new(Full::new(Bytes::new()));
            *r.method_mut() = req.method().clone();
            *r.uri_mut() = req.uri().clone();
            *r.headers_mut() = req.headers().clone();
            r
        });
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            // The server closed the kept-alive connection (idle timeout) just as the request
            // went out: a GET is safe to send once more on a new connection.
            Err(e) if (e.is_canceled() || e.is_incomplete_message()) && retry_req.is_some() => {
                sender = self.connect().await?;
                sender
                    .ready()
                    .await
                    .map_err(|e| ClientError::Http(e.to_string()))?;
                let Some(r) = retry_req else {
                    return Err(ClientError::Http(e.to_string()));
                };
                sender
                    .send_request(r)
                    .await
                    .map_err(|e| ClientError::Http(e.to_string()))?
            }
            Err(e) => return Err(ClientError::Http(e.to_string())),
        };
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        *guard = Some(sender);
        Ok((status, Zeroizing::new(bytes.to_vec())))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        extra_wait: Duration,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), ClientError> {
        tokio::time::timeout(
            self.timeout + extra_wait,
            self.send_once(&method, path, &body),
        )
        .await
        .map_err(|_| ClientError::Timeout)?
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        extra_wait: Duration,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        let (status, bytes) = self.send(method, path, body, extra_wait).await?;
        if !status.is_success() {
            let (error, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => (b.error, b.message),
                Err(_) => (
                    "unknown".to_owned(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ),
            };
            return Err(ClientError::Api {
                status: status.as_u16(),
                error,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>, Duration::ZERO)
            .await
    }

    // ---- data plane ----

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health").await
    }

    /// `GET /v1/keyrings/{name}`: metadata.
    pub async fn keyring(&self, name: &str) -> Result<KeyringMeta, ClientError> {
        self.get(&format!("/v1/keyrings/{name}")).await
    }

    /// `GET /v1/keyrings/{name}/versions/{version}/material` (proxy certificate required).
    pub async fn material(&self, name: &str, version: u32) -> Result<FetchedKey, ClientError> {
        let mut resp: MaterialResponse = self
            .get(&format!("/v1/keyrings/{name}/versions/{version}/material"))
            .await?;
        let b64 = Zeroizing::new(std::mem::take(&mut resp.material));
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| ClientError::Decode("material is not base64".into()))?,
        );
        let key = SecretKey::from_slice(&raw)
            .map_err(|_| ClientError::Decode("material is not 32 bytes".into()))?;
        Ok(FetchedKey {
            keyring_id: resp.keyring_id,
            version: resp.version,
            state: resp.state,
            key,
        })
    }

    /// `GET /v1/keyrings/{name}/index/{generation}/material` (proxy certificate required).
    pub async fn index_material(
        &self,
        name: &str,
        generation: u32,
    ) -> Result<FetchedIndexKey, ClientError> {
        let mut resp: IndexMaterialResponse = self
            .get(&format!("/v1/keyrings/{name}/index/{generation}/material"))
            .await?;
        let b64 = Zeroizing::new(std::mem::take(&mut resp.material));
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| ClientError::Decode("index material is not base64".into()))?,
        );
        let key = SecretKey::from_slice(&raw)
            .map_err(|_| ClientError::Decode("index material is not 32 bytes".into()))?;
        Ok(FetchedIndexKey {
            keyring_id: resp.keyring_id,
            generation: resp.generation,
            key,
        })
    }

    /// `POST /v1/keyrings/{name}/index/confirm` (proxy certificate required): this proxy has taken
    /// in `phase` of the blind-index key rotation to `generation`.
    pub async fn index_confirm(
        &self,
        name: &str,
        generation: u32,
        phase: IndexPhase,
    ) -> Result<(), ClientError> {
        let body = IndexConfirmRequest { generation, phase };
        let _: serde_json::Value = self
            .call(
                Method::POST,
                &format!("/v1/keyrings/{name}/index/confirm"),
                Some(&body),
                Duration::ZERO,
            )
            .await?;
        Ok(())
    }

    /// `POST /v1/keyrings/{name}/index/passes` (proxy certificate required): starts a re-index
    /// or compaction pass; 409 until every granted proxy confirmed the phase.
    pub async fn index_pass_start(
        &self,
        name: &str,
        generation: u32,
        phase: IndexPhase,
    ) -> Result<IndexPassResponse, ClientError> {
        let body = IndexPassRequest { generation, phase };
        self.call(
            Method::POST,
            &format!("/v1/keyrings/{name}/index/passes"),
            Some(&body),
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/keyrings/{name}/index/passes/{pass}`: reports the end of a pass.
    pub async fn index_pass_report(
        &self,
        name: &str,
        pass: &str,
        report: &IndexPassReport,
    ) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                Method::POST,
                &format!("/v1/keyrings/{name}/index/passes/{pass}"),
                Some(report),
                Duration::ZERO,
            )
            .await?;
        Ok(())
    }

    /// `GET /v1/changes?since=REV[&wait=SECS]`.
    pub async fn changes(
        &self,
        since: u64,
        wait_secs: Option<u64>,
    ) -> Result<ChangesResponse, ClientError> {
        match wait_secs {
            Some(w) => {
                self.call(
                    Method::GET,
                    &format!("/v1/changes?since={since}&wait={w}"),
                    None::<&()>,
                    Duration::from_secs(w),
                )
                .await
            }
            None => self.get(&format!("/v1/changes?since={since}")).await,
        }
    }

    // ---- control plane ----

    /// `GET /v1/keyrings`.
    pub async fn list_keyrings(&self) -> Result<KeyringList, ClientError> {
        self.get("/v1/keyrings").await
    }

    /// `POST /v1/keyrings`.
    pub async fn create_keyring(&self, name: &str) -> Result<KeyringMeta, ClientError> {
        let body = CreateKeyringRequest {
            name: name.to_owned(),
        };
        self.call(Method::POST, "/v1/keyrings", Some(&body), Duration::ZERO)
            .await
    }

    /// `POST /v1/keyrings/{name}/rotate`.
    pub async fn rotate(&self, name: &str) -> Result<KeyringMeta, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/keyrings/{name}/rotate"),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/keyrings/{name}/index/rotate`: starts a blind-index key rotation (phase `dual`).
    pub async fn index_rotate(&self, name: &str) -> Result<KeyringMeta, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/keyrings/{name}/index/rotate"),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/keyrings/{name}/index/cutover`: the cut-over (phase `cutover`).
    pub async fn index_cutover(&self, name: &str) -> Result<KeyringMeta, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/keyrings/{name}/index/cutover"),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/keyrings/{name}/index/finish`: ends the rotation (the old generation retired).
    pub async fn index_finish(&self, name: &str) -> Result<KeyringMeta, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/keyrings/{name}/index/finish"),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/keyrings/{name}/index/rotation`: the rotation, confirmations and passes.
    pub async fn index_rotation_status(
        &self,
        name: &str,
    ) -> Result<IndexRotationStatus, ClientError> {
        self.get(&format!("/v1/keyrings/{name}/index/rotation"))
            .await
    }

    /// `POST /v1/keyrings/{name}/versions/{version}/{action}` with action disable|enable|destroy.
    pub async fn version_action(
        &self,
        name: &str,
        version: u32,
        action: &str,
    ) -> Result<KeyringMeta, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/keyrings/{name}/versions/{version}/{action}"),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `PUT /v1/keyrings/{name}/min-decryption-version`.
    pub async fn set_min_version(&self, name: &str, min: u32) -> Result<KeyringMeta, ClientError> {
        let body = SetMinVersionRequest {
            min_decryption_version: min,
        };
        self.call(
            Method::PUT,
            &format!("/v1/keyrings/{name}/min-decryption-version"),
            Some(&body),
            Duration::ZERO,
        )
        .await
    }

    /// `POST /v1/tokens`.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        expires_in_secs: Option<u64>,
    ) -> Result<CreatedToken, ClientError> {
        let body = CreateTokenRequest {
            name: name.to_owned(),
            role,
            expires_in_secs,
        };
        self.call(Method::POST, "/v1/tokens", Some(&body), Duration::ZERO)
            .await
    }

    /// `GET /v1/tokens`.
    pub async fn list_tokens(&self) -> Result<TokenList, ClientError> {
        self.get("/v1/tokens").await
    }

    /// `DELETE /v1/tokens/{id}`.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `PUT /v1/proxies/{name}`.
    pub async fn set_proxy(
        &self,
        name: &str,
        keyrings: &[String],
    ) -> Result<ProxyInfo, ClientError> {
        let body = SetProxyRequest {
            keyrings: keyrings.to_vec(),
        };
        self.call(
            Method::PUT,
            &format!("/v1/proxies/{name}"),
            Some(&body),
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/proxies`.
    pub async fn list_proxies(&self) -> Result<ProxyList, ClientError> {
        self.get("/v1/proxies").await
    }

    /// `DELETE /v1/proxies/{name}`.
    pub async fn delete_proxy(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/proxies/{name}"),
            None::<&()>,
            Duration::ZERO,
        )
        .await
    }

    /// `GET /v1/audit?after=&limit=`.
    pub async fn audit(&self, after: u64, limit: u32) -> Result<AuditList, ClientError> {
        self.get(&format!("/v1/audit?after={after}&limit={limit}"))
            .await
    }

    /// `GET /v1/audit/verify`.
    pub async fn audit_verify(&self) -> Result<AuditVerifyReport, ClientError> {
        self.get("/v1/audit/verify").await
    }

    /// Sends a raw request (tests, debugging): returns status and body bytes.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let (status, bytes) = self.send(method, path, body, Duration::ZERO).await?;
        Ok((status.as_u16(), bytes.to_vec()))
    }
}
