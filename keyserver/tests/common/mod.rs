//! Test harness: a real keyserver over HTTPS on loopback, certificates made with rcgen.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgseal_keyserver::cli::init::{init, InitArgs};
use pgseal_keyserver::client::{Client, ClientConfig};
use pgseal_keyserver::config::Config;
use pgseal_keyserver::model::ProxyName;
use pgseal_keyserver::pki::{self, CertPair};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub addr: SocketAddr,
    pub admin_token: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// Initialises a fresh keyserver directory (via `init`) and starts it.
    pub async fn start() -> Self {
        pgseal_keyserver::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let out = init(&InitArgs {
            dir: dir.path().join("ks"),
            listen: "127.0.0.1:0".into(),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            no_pki: false,
            root_key_env: None,
        })
        .unwrap();
        let mut h = Harness {
            dir,
            config_path: out.config_path,
            addr: "127.0.0.1:0".parse().unwrap(),
            admin_token: out.admin_token.as_str().to_owned(),
            stop: None,
            task: None,
        };
        h.launch().await.unwrap();
        h
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).unwrap()
    }

    pub fn ks_dir(&self) -> PathBuf {
        self.dir.path().join("ks")
    }

    pub fn db_path(&self) -> PathBuf {
        self.ks_dir().join("keyserver.db")
    }

    /// Starts the server from the config files; returns the start-up error if any.
    pub async fn launch(&mut self) -> Result<(), pgseal_keyserver::KsError> {
        let cfg = self.config();
        let (state, tls) = pgseal_keyserver::prepare(&cfg)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let app = pgseal_keyserver::api::router(state);
        self.task = Some(tokio::spawn(async move {
            pgseal_keyserver::server::serve(listener, tls, app, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        }));
        self.stop = Some(tx);
        Ok(())
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn ca(&self) -> CertPair {
        let pki = self.ks_dir().join("pki");
        CertPair {
            cert_pem: std::fs::read_to_string(pki.join("ca.pem")).unwrap(),
            key_pem: std::fs::read_to_string(pki.join("ca-key.pem")).unwrap(),
        }
    }

    fn client_with(&self, identity: Option<&CertPair>, token: Option<&str>) -> Client {
        Client::new(ClientConfig {
            url: self.url(),
            ca_pem: self.ca().cert_pem.into_bytes(),
            identity: identity.map(|p| {
                (
                    p.cert_pem.clone().into_bytes(),
                    Zeroizing::new(p.key_pem.clone().into_bytes()),
                )
            }),
            token: token.map(|t| Zeroizing::new(t.to_owned())),
            timeout: Duration::from_secs(20),
        })
        .unwrap()
    }

    pub fn admin(&self) -> Client {
        self.client_with(None, Some(&self.admin_token))
    }

    pub fn with_token(&self, token: &str) -> Client {
        self.client_with(None, Some(token))
    }

    pub fn anonymous(&self) -> Client {
        self.client_with(None, None)
    }

    /// A proxy client whose certificate is issued by the keyserver's CA.
    pub fn proxy(&self, name: &str) -> Client {
        let pair = pki::issue_proxy(&self.ca(), &ProxyName::parse(name).unwrap()).unwrap();
        self.client_with(Some(&pair), None)
    }

    /// A proxy client whose certificate comes from an unrelated CA.
    pub fn proxy_wrong_ca(&self, name: &str) -> Client {
        let other = pki::create_ca("rogue CA").unwrap();
        let pair = pki::issue_proxy(&other, &ProxyName::parse(name).unwrap()).unwrap();
        self.client_with(Some(&pair), None)
    }
}

/// Concatenated bytes of the database file and its WAL/SHM side files.
pub fn db_bytes(db: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = PathBuf::from(format!("{}{suffix}", db.display()));
        if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
