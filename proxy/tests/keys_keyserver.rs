#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
//! `KeyserverKeys` against a real pgseal-keyserver on loopback (real mTLS, certificates from the
//! keyserver's own `pki` module). The keyserver runs on its own tokio runtime so that stopping it
//! closes every connection, like a crashed or unreachable server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgseal_crypto::value::{LogicalType, Normalisation};
use pgseal_crypto::{ColumnId, IndexGroup};
use pgseal_keyserver::cli::init::{init, InitArgs};
use pgseal_keyserver::client::{Client, ClientConfig};
use pgseal_keyserver::config::Config;
use pgseal_keyserver::model::{ProxyName, Role};
use pgseal_keyserver::pki::{self, CertPair};
use pgseal_proxy::keys::{KeyError, KeySource, KeyserverConfig, KeyserverKeys};
use pgseal_proxy::rewrite::{IndexSpec, ProtectedColumn, ProtectedSchema};
use zeroize::Zeroizing;

const PROXY: &str = "proxy-a";

/// A keyserver directory plus a running server (restartable on the same port).
struct Ks {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    admin_token: String,
    addr: Option<SocketAddr>,
    server: Option<tokio::runtime::Runtime>,
    /// Runtime for the test's own admin calls.
    rt: tokio::runtime::Runtime,
}

impl Ks {
    fn start() -> Self {
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut ks = Ks {
            dir,
            config_path: out.config_path,
            admin_token: out.admin_token.as_str().to_owned(),
            addr: None,
            server: None,
            rt,
        };
        ks.launch();
        ks
    }

    /// Starts the server (on the previous port when restarting).
    fn launch(&mut self) {
        let cfg = Config::load(&self.config_path).unwrap();
        let server = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let bind = self.addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let addr = server.block_on(async {
            let (state, tls) = pgseal_keyserver::prepare(&cfg).unwrap();
            let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let app = pgseal_keyserver::api::router(state);
            tokio::spawn(async move {
                let _ = pgseal_keyserver::server::serve(
                    listener,
                    tls,
                    app,
                    std::future::pending::<()>(),
                )
                .await;
            });
            addr
        });
        self.addr = Some(addr);
        self.server = Some(server);
    }

    /// Kills the server: its runtime and every connection go away.
    fn kill(&mut self) {
        if let Some(rt) = self.server.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.unwrap().port())
    }

    fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("ks").join("pki")
    }

    fn ca(&self) -> CertPair {
        CertPair {
            cert_pem: std::fs::read_to_string(self.pki_dir().join("ca.pem")).unwrap(),
            key_pem: std::fs::read_to_string(self.pki_dir().join("ca-key.pem")).unwrap(),
        }
    }

    fn client(&self, token: &str) -> Client {
        Client::new(ClientConfig {
            url: self.url(),
            ca_pem: self.ca().cert_pem.into_bytes(),
            identity: None,
            token: Some(Zeroizing::new(token.to_owned())),
            timeout: Duration::from_secs(20),
        })
        .unwrap()
    }

    fn admin(&self) -> Client {
        self.client(&self.admin_token)
    }

    fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Writes a proxy certificate issued by `ca` and returns the proxy's `[keyserver]` config.
    fn proxy_config(&self, ca: &CertPair, tag: &str, grace: u64, poll: u64) -> KeyserverConfig {
        let pair = pki::issue_proxy(ca, &ProxyName::parse(PROXY).unwrap()).unwrap();
        let cert = self.dir.path().join(format!("{tag}-proxy.pem"));
        let key = self.dir.path().join(format!("{tag}-proxy-key.pem"));
        std::fs::write(&cert, &pair.cert_pem).unwrap();
        std::fs::write(&key, &pair.key_pem).unwrap();
        KeyserverConfig {
            url: self.url(),
            ca: self.pki_dir().join("ca.pem"),
            cert,
            key,
            grace_seconds: grace,
            poll_wait_seconds: poll,
            timeout_ms: 3_000,
        }
    }

    /// Creates `keyring` and grants it to the proxy identity.
    fn keyring_granted(&self, keyring: &str) {
        let admin = self.admin();
        self.run(async {
            admin.create_keyring(keyring).await.unwrap();
            admin.set_proxy(PROXY, &[keyring.to_owned()]).await.unwrap();
        });
    }
}

impl Drop for Ks {
    fn drop(&mut self) {
        self.kill();
    }
}

fn email() -> ColumnId {
    ColumnId::parse("public.patients.email").unwrap()
}

fn schema(keyring: &str) -> ProtectedSchema {
    let id = email();
    ProtectedSchema::from_columns([ProtectedColumn {
        id: id.clone(),
        ty: LogicalType::Text,
        keyring: keyring.to_owned(),
        index: Some(IndexSpec {
            group: IndexGroup::of_column(&id),
            norm: Normalisation::default(),
            unique: false,
        }),
    }])
}

fn seal(keys: &dyn KeySource, pt: &[u8]) -> Vec<u8> {
    let c = keys.column(&email()).unwrap();
    let mut out = Vec::new();
    c.envelope().unwrap().encrypt_into(pt, &mut out).unwrap();
    out
}

fn open(keys: &dyn KeySource, env: &[u8]) -> Result<Vec<u8>, String> {
    let c = keys.column(&email()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    c.envelope()
        .map_err(|e| e.to_string())?
        .decrypt_into(env, &mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The data-key versions the source can open envelopes of, newest first.
fn open_versions(keys: &dyn KeySource) -> Vec<u32> {
    let c = keys.column(&email()).unwrap();
    let env = c.envelope().unwrap();
    (1..=16)
        .rev()
        .filter(|v| env.version(*v).is_some())
        .collect()
}

/// The ids of the blind-index keys lookups use (the lineage's generation; data-key versions
/// do not add any).
fn index_ids(keys: &dyn KeySource) -> Vec<u32> {
    keys.column(&email())
        .unwrap()
        .lookup_keys()
        .iter()
        .map(|k| k.key_version())
        .collect()
}

/// Polls `cond` every 10 ms up to `limit`; returns how long it took.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

/// `material.read` audit records of `version` (needs an auditor token).
fn material_reads(ks: &Ks, auditor: &Client, version: u32) -> usize {
    ks.run(auditor.audit(0, 1000))
        .unwrap()
        .records
        .iter()
        .filter(|r| r.action == "material.read" && r.outcome == "ok" && r.version == Some(version))
        .count()
}

#[test]
fn start_fetches_keys_and_values_round_trip() {
    let ks = Ks::start();
    ks.keyring_granted("patients");
    let cfg = ks.proxy_config(&ks.ca(), "ok", 300, 25);
    let keys = KeyserverKeys::start(&cfg, &schema("patients")).unwrap();
    let c = keys.column(&email()).unwrap();
    assert_eq!(c.active_version(), Some(1));
    assert_eq!(c.keyring(), "patients");
    assert_eq!(open_versions(keys.as_ref()), vec![1]);
    let env = seal(keys.as_ref(), b"alice@example.org");
    assert_ne!(&env[..], b"alice@example.org");
    assert_eq!(open(keys.as_ref(), &env).unwrap(), b"alice@example.org");
    // Same material → same blind index tag from a second, independent source.
    let keys2 = KeyserverKeys::start(&cfg, &schema("patients")).unwrap();
    let tag1 = c.active_index().unwrap().tag(b"alice@example.org");
    let tag2 = keys2
        .column(&email())
        .unwrap()
        .active_index()
        .unwrap()
        .tag(b"alice@example.org");
    assert_eq!(tag1, tag2);
    assert_eq!(open(keys2.as_ref(), &env).unwrap(), b"alice@example.org");
    let other = ColumnId::parse("public.patients.name").unwrap();
    assert!(matches!(
        keys.column(&other),
        Err(KeyError::UnknownColumn(_))
    ));
    // column() is a snapshot read: measure its cost.
    let t0 = Instant::now();
    for _ in 0..100_000 {
        assert!(keys.column(&email()).is_ok());
    }
    eprintln!(
        "column(): {:?} per call (debug build)",
        t0.elapsed() / 100_000
    );
    keys.stop();
    // Stopped: the last snapshot keeps serving.
    assert_eq!(open(keys.as_ref(), &env).unwrap(), b"alice@example.org");
}

#[test]
fn rotation_is_noticed_within_seconds_and_old_versions_stay_readable() {
    let ks = Ks::start();
    ks.keyring_granted("patients");
    let admin = ks.admin();
    let auditor = ks.client(
        &ks.run(admin.create_token("aud", Role::Auditor, None))
            .unwrap()
            .token,
    );
    let keys = KeyserverKeys::start(
        &ks.proxy_config(&ks.ca(), "rot", 300, 25),
        &schema("patients"),
    )
    .unwrap();
    let env1 = seal(keys.as_ref(), b"bob@example.org");
    let tag_v1 = keys
        .column(&email())
        .unwrap()
        .active_index()
        .unwrap()
        .tag(b"bob@example.org");
    assert_eq!(material_reads(&ks, &auditor, 1), 1);

    let mut times = Vec::new();
    for expected in [2u32, 3] {
        let t0 = Instant::now();
        ks.run(admin.rotate("patients")).unwrap();
        wait_until(Duration::from_secs(5), "rotation", || {
            keys.column(&email()).unwrap().active_version() == Some(expected)
        });
        times.push(t0.elapsed());
    }
    eprintln!("rotation noticed after {times:?} (rotate call included)");
    assert!(times.iter().all(|t| *t < Duration::from_secs(3)));

    let c = keys.column(&email()).unwrap();
    assert_eq!(open_versions(keys.as_ref()), vec![3, 2, 1]);
    // The blind index comes from the keyring's index lineage: two rotations change neither the
    // stored tag nor the lookup tags (one generation, one tag).
    assert_eq!(index_ids(keys.as_ref()), vec![1]);
    let tags: Vec<_> = c
        .lookup_keys()
        .iter()
        .map(|k| k.tag(b"bob@example.org"))
        .collect();
    assert_eq!(
        tags,
        vec![tag_v1],
        "the lookup tag is unchanged by rotations"
    );
    assert_eq!(
        c.active_index().unwrap().tag(b"bob@example.org"),
        tag_v1,
        "new values get the same tag"
    );
    // Old version still decrypts; new values are sealed with v3.
    assert_eq!(open(keys.as_ref(), &env1).unwrap(), b"bob@example.org");
    let env3 = seal(keys.as_ref(), b"bob@example.org");
    let mut probe = Vec::new();
    assert!(c
        .envelope()
        .unwrap()
        .version(3)
        .unwrap()
        .decrypt_into(&env3, &mut probe)
        .is_ok());
    assert!(c
        .envelope()
        .unwrap()
        .version(1)
        .unwrap()
        .decrypt_into(&env3, &mut probe)
        .is_err());
    // Unchanged versions were not fetched again on refresh.
    assert_eq!(material_reads(&ks, &auditor, 1), 1);
    assert_eq!(material_reads(&ks, &auditor, 2), 1);
    assert_eq!(material_reads(&ks, &auditor, 3), 1);
    // The index material was fetched once, at start.
    let index_reads = ks
        .run(auditor.audit(0, 1000))
        .unwrap()
        .records
        .iter()
        .filter(|r| r.action == "index_material.read" && r.outcome == "ok")
        .count();
    assert_eq!(index_reads, 1);
}

#[test]
fn disable_destroy_and_min_version_drop_versions() {
    let ks = Ks::start();
    ks.keyring_granted("patients");
    let admin = ks.admin();
    for _ in 0..3 {
        ks.run(admin.rotate("patients")).unwrap();
    }
    let keys = KeyserverKeys::start(
        &ks.proxy_config(&ks.ca(), "drop", 300, 25),
        &schema("patients"),
    )
    .unwrap();
    assert_eq!(open_versions(keys.as_ref()), vec![4, 3, 2, 1]);
    // Envelopes of v1..v3 sealed with the version keys the source holds.
    let c = keys.column(&email()).unwrap();
    let sealed: Vec<Vec<u8>> = (1..=3)
        .map(|v| {
            let mut out = Vec::new();
            c.envelope()
                .unwrap()
                .version(v)
                .unwrap()
                .encrypt_into(b"carol", &mut out)
                .unwrap();
            out
        })
        .collect();
    drop(c);

    ks.run(admin.version_action("patients", 1, "disable"))
        .unwrap();
    wait_until(Duration::from_secs(5), "v1 dropped", || {
        open_versions(keys.as_ref()) == vec![4, 3, 2]
    });
    assert!(open(keys.as_ref(), &sealed[0]).is_err());
    assert_eq!(open(keys.as_ref(), &sealed[1]).unwrap(), b"carol");

    ks.run(admin.version_action("patients", 1, "enable"))
        .unwrap();
    wait_until(Duration::from_secs(5), "v1 back", || {
        open_versions(keys.as_ref()) == vec![4, 3, 2, 1]
    });
    assert_eq!(open(keys.as_ref(), &sealed[0]).unwrap(), b"carol");

    // Destroy needs a disabled version first.
    ks.run(admin.version_action("patients", 2, "disable"))
        .unwrap();
    ks.run(admin.version_action("patients", 2, "destroy"))
        .unwrap();
    wait_until(Duration::from_secs(5), "v2 dropped", || {
        open_versions(keys.as_ref()) == vec![4, 3, 1]
    });
    assert!(open(keys.as_ref(), &sealed[1]).is_err());
    // A destroyed version never comes back.
    assert!(ks
        .run(admin.version_action("patients", 2, "enable"))
        .is_err());

    assert_eq!(index_ids(keys.as_ref()), vec![1], "lookups unchanged");
    ks.run(admin.set_min_version("patients", 4)).unwrap();
    wait_until(Duration::from_secs(5), "versions below 4 dropped", || {
        open_versions(keys.as_ref()) == vec![4]
    });
    assert_eq!(index_ids(keys.as_ref()), vec![1], "lookups unchanged");
    assert!(open(keys.as_ref(), &sealed[0]).is_err());
    assert!(open(keys.as_ref(), &sealed[2]).is_err());
    assert_eq!(keys.column(&email()).unwrap().active_version(), Some(4));
    let env = seal(keys.as_ref(), b"dave");
    assert_eq!(open(keys.as_ref(), &env).unwrap(), b"dave");
}

#[test]
fn start_fails_clearly() {
    let mut ks = Ks::start();
    ks.keyring_granted("patients");
    ks.run(ks.admin().create_keyring("secret")).unwrap();
    let good = ks.proxy_config(&ks.ca(), "good", 300, 25);

    // Keyring missing, keyring not granted.
    for (kr, name) in [("nope", "missing"), ("secret", "not granted")] {
        let err = KeyserverKeys::start(&good, &schema(kr))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "keyring {kr} does not exist on the keyserver or is not granted"
            )),
            "{name}: {err}"
        );
    }

    // Client certificate from another CA.
    let rogue = pki::create_ca("rogue CA").unwrap();
    let bad = ks.proxy_config(&rogue, "rogue", 300, 25);
    let err = KeyserverKeys::start(&bad, &schema("patients"))
        .unwrap_err()
        .to_string();
    eprintln!("wrong CA: {err}");
    assert!(
        err.contains("keys of keyring patients are unavailable"),
        "{err}"
    );
    assert!(
        err.contains("cannot reach the keyserver")
            || err.contains("refused this proxy's client certificate"),
        "{err}"
    );

    // Missing certificate file.
    let mut nofile = good.clone();
    nofile.cert = ks.dir.path().join("absent.pem");
    let err = KeyserverKeys::start(&nofile, &schema("patients"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read the keyserver client certificate"),
        "{err}"
    );

    // Keyserver down.
    ks.kill();
    let t0 = Instant::now();
    let err = KeyserverKeys::start(&good, &schema("patients"))
        .unwrap_err()
        .to_string();
    eprintln!("down: {err} (after {:?})", t0.elapsed());
    assert!(
        err.contains("cannot reach the keyserver at https://127.0.0.1:"),
        "{err}"
    );
    assert!(matches!(
        KeyserverKeys::start(&good, &schema("patients")),
        Err(KeyError::Unavailable { .. })
    ));
}

#[test]
fn grace_period_then_fail_closed_then_recovery() {
    let mut ks = Ks::start();
    ks.keyring_granted("patients");
    let keys = KeyserverKeys::start(
        &ks.proxy_config(&ks.ca(), "grace", 2, 1),
        &schema("patients"),
    )
    .unwrap();
    let env = seal(keys.as_ref(), b"erin");
    // A healthy idle feed never expires the cache, even past the grace period.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(open(keys.as_ref(), &env).unwrap(), b"erin");

    ks.kill();
    let down = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(open(keys.as_ref(), &env).unwrap(), b"erin", "within grace");
    let expired = wait_until(Duration::from_secs(6), "grace expiry", || {
        matches!(keys.column(&email()), Err(KeyError::Unavailable { .. }))
    }) + Duration::from_millis(500);
    eprintln!("fail closed {expired:?} after the keyserver went down (grace 2 s, poll 1 s)");
    assert!(expired >= Duration::from_millis(1000), "{expired:?}");
    let err = keys.column(&email()).unwrap_err().to_string();
    assert!(err.contains("grace period 2s expired"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(keys.column(&email()).is_err(), "stays closed while down");
    // Counted from the last contact (at most one poll wait before the kill), not from the kill.
    assert!(expired <= Duration::from_millis(3500), "{expired:?}");
    assert!(down.elapsed() >= expired);

    ks.launch();
    let back = wait_until(Duration::from_secs(10), "recovery", || {
        keys.column(&email()).is_ok()
    });
    eprintln!("recovered {back:?} after the keyserver came back");
    assert_eq!(open(keys.as_ref(), &env).unwrap(), b"erin");
    // And it follows the feed again.
    ks.run(ks.admin().rotate("patients")).unwrap();
    wait_until(Duration::from_secs(5), "rotation after recovery", || {
        keys.column(&email()).unwrap().active_version() == Some(2)
    });
    let _: Arc<KeyserverKeys> = keys;
}

#[test]
fn revoked_grant_fails_closed_and_regrant_recovers() {
    let ks = Ks::start();
    ks.keyring_granted("patients");
    let admin = ks.admin();
    let cfg = ks.proxy_config(&ks.ca(), "revoke", 300, 1);
    // The default 60 s resync: the withdrawal must come through the change feed.
    let keys = KeyserverKeys::start(&cfg, &schema("patients")).unwrap();
    let env = seal(keys.as_ref(), b"frank");
    ks.run(admin.set_proxy(PROXY, &[])).unwrap();
    let t = wait_until(Duration::from_secs(5), "revocation noticed", || {
        matches!(keys.column(&email()), Err(KeyError::Unavailable { .. }))
    });
    eprintln!("revoked grant noticed after {t:?} (through the change feed)");
    let err = keys.column(&email()).unwrap_err().to_string();
    assert!(err.contains("not granted"), "{err}");
    ks.run(admin.set_proxy(PROXY, &["patients".to_owned()]))
        .unwrap();
    wait_until(Duration::from_secs(5), "re-grant noticed", || {
        keys.column(&email()).is_ok()
    });
    assert_eq!(open(keys.as_ref(), &env).unwrap(), b"frank");
    // Deleting the proxy identity withdraws every grant: also announced by the feed.
    ks.run(admin.delete_proxy(PROXY)).unwrap();
    let t = wait_until(Duration::from_secs(5), "deleted proxy noticed", || {
        matches!(keys.column(&email()), Err(KeyError::Unavailable { .. }))
    });
    eprintln!("deleted proxy noticed after {t:?}");
    ks.run(admin.set_proxy(PROXY, &["patients".to_owned()]))
        .unwrap();
    wait_until(Duration::from_secs(5), "re-created proxy noticed", || {
        keys.column(&email()).is_ok()
    });
}

/// Every log line of this test binary (a global subscriber: the follower logs from its own thread).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct W(&'static Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || W(buf))
            .init();
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

#[test]
fn logs_name_rotations_and_outages_but_never_material() {
    logs();
    let mut ks = Ks::start();
    ks.keyring_granted("patients");
    let admin = ks.admin();
    let cfg = ks.proxy_config(&ks.ca(), "logs", 1, 1);
    let keys = KeyserverKeys::start(&cfg, &schema("patients")).unwrap();
    ks.run(admin.rotate("patients")).unwrap();
    wait_until(Duration::from_secs(5), "rotation", || {
        keys.column(&email()).unwrap().active_version() == Some(2)
    });
    let id = ks.run(admin.keyring("patients")).unwrap().id;
    // The material, fetched as the proxy would (to look for it in the logs).
    let proxy = Client::new(ClientConfig {
        url: ks.url(),
        ca_pem: std::fs::read(&cfg.ca).unwrap(),
        identity: Some((
            std::fs::read(&cfg.cert).unwrap(),
            Zeroizing::new(std::fs::read(&cfg.key).unwrap()),
        )),
        token: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let mut secrets = Vec::new();
    for v in [1, 2] {
        let m = ks.run(proxy.material("patients", v)).unwrap();
        let raw = m.key.expose_secret();
        secrets.push(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            raw,
        ));
        secrets.push(raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        secrets.push(format!("{:?}", &raw[..8]).trim_end_matches(']').to_owned());
    }
    ks.kill();
    wait_until(Duration::from_secs(8), "grace expiry logged", || {
        log_text().contains("keyserver grace period expired")
    });
    let text = log_text();
    assert!(
        text.lines().any(|l| l.contains("keyring rotation noticed")
            && l.contains(&id)
            && l.contains("from=1")
            && l.contains("to=2")),
        "{text}"
    );
    assert!(text.contains("keyserver unreachable; serving cached keys during the grace period"));
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "key material in the logs");
    }
    assert!(matches!(
        keys.column(&email()),
        Err(KeyError::Unavailable { .. })
    ));
}
