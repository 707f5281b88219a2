//! Data-plane fetch benchmark: one key version over kept-alive mTLS connections on loopback.
//!
//! `cargo bench -p pgseal-keyserver --bench fetch` (set FETCH_SECS to change the load phase).
//! The server runs in its own 2-thread tokio runtime, the clients in another, in one process.
//! Every fetch is real: TLS, HTTP/1.1, auth, SQLite read, unwrap, audit record written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgseal_keyserver::cli::init::{init, InitArgs};
use pgseal_keyserver::client::{Client, ClientConfig};
use pgseal_keyserver::config::Config;
use pgseal_keyserver::model::ProxyName;
use pgseal_keyserver::pki::{self, CertPair};
use zeroize::Zeroizing;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing special: run quickly then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let load_secs: u64 = std::env::var("FETCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 10 });
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
    let cfg = Config::load(&out.config_path).unwrap();
    let (state, tls) = pgseal_keyserver::prepare(&cfg).unwrap();

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    server_rt.spawn(pgseal_keyserver::server::serve(
        listener,
        tls,
        pgseal_keyserver::api::router(state),
        std::future::pending(),
    ));

    let pki_dir = dir.path().join("ks/pki");
    let ca = CertPair {
        cert_pem: std::fs::read_to_string(pki_dir.join("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(pki_dir.join("ca-key.pem")).unwrap(),
    };
    let url = format!("https://127.0.0.1:{}", addr.port());
    let make = |identity: Option<CertPair>, token: Option<&str>| {
        Client::new(ClientConfig {
            url: url.clone(),
            ca_pem: ca.cert_pem.clone().into_bytes(),
            identity: identity.map(|p| {
                (
                    p.cert_pem.into_bytes(),
                    Zeroizing::new(p.key_pem.into_bytes()),
                )
            }),
            token: token.map(|t| Zeroizing::new(t.to_owned())),
            timeout: Duration::from_secs(30),
        })
        .unwrap()
    };
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let admin = make(None, Some(out.admin_token.as_str()));
    client_rt.block_on(async {
        admin.create_keyring("patients").await.unwrap();
        admin.rotate("patients").await.unwrap();
        admin
            .set_proxy("proxy-bench", &["patients".into()])
            .await
            .unwrap();
    });
    let proxy_pair = || pki::issue_proxy(&ca, &ProxyName::parse("proxy-bench").unwrap()).unwrap();

    // Phase 1: one kept-alive client, sequential fetches.
    let single = make(Some(proxy_pair()), None);
    let n = if quick { 300 } else { 5000 };
    let mut lat = client_rt.block_on(async {
        for _ in 0..200 {
            single.material("patients", 2).await.unwrap();
        }
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let k = single.material("patients", 2).await.unwrap();
            lat.push(t.elapsed());
            assert_eq!(k.version, 2);
        }
        lat
    });
    lat.sort_unstable();
    println!(
        "single client, {n} sequential fetches: median {:?}, p90 {:?}, p99 {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99)
    );

    // Phase 2: 8 concurrent kept-alive clients for `load_secs`.
    let clients: Vec<Arc<Client>> = (0..8)
        .map(|_| Arc::new(make(Some(proxy_pair()), None)))
        .collect();
    let (total, mut lat) = client_rt.block_on(async {
        for c in &clients {
            c.material("patients", 2).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(load_secs);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in &clients {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    c.material("patients", 2).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = start.elapsed();
        (all.len() as f64 / elapsed.as_secs_f64(), all)
    });
    lat.sort_unstable();
    println!(
        "8 concurrent clients, {load_secs}s: {total:.0} fetches/s ({} fetches), median {:?}, p99 {:?}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    let audit_rows = {
        let c = rusqlite::Connection::open(&cfg.database).unwrap();
        c.query_row("SELECT COUNT(*) FROM audit", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    println!("audit records written: {audit_rows}");
    server_rt.shutdown_background();
}
