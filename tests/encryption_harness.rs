//! The keyserver harness works: a real `pgseal-keyserver` starts, answers `GET /v1/health`,
//! creates keyrings, issues a proxy certificate, grants it, rotates, disables; and it writes the
//! proxy configuration blocks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use support::keyserver::{ColumnSpec, TestKeyserver};

#[test]
fn keyserver_harness_provisions_a_proxy() {
    let ks = TestKeyserver::start();
    let health = ks.health().expect("health answers");
    assert!(health.contains("\"status\":\"ok\""), "{health}");

    let id = ks.provision_proxy("proxy-test-1", &["patients", "visits"]);
    let cert = std::fs::read_to_string(&id.cert).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    assert_eq!(ks.active_version("patients"), 1);
    assert_eq!(ks.rotate("patients"), 2);
    ks.disable("patients", 1);
    let shown = ks.admin_ok(&["keyring", "show", "patients"]);
    assert!(shown.contains("disabled"), "{shown}");
    ks.enable("patients", 1);

    // The grant is real: the proxy identity reads the keyring's metadata over mTLS, and a
    // keyring it was not granted answers 404.
    let fetch = |name: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(ks.ca_path())
            .arg("--cert")
            .arg(&id.cert)
            .arg("--key")
            .arg(&id.key)
            .arg(format!("{}/v1/keyrings/{name}", ks.url))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let granted = fetch("visits");
    assert!(granted.ends_with("\n200"), "{granted}");
    assert!(granted.contains("\"name\":\"visits\""), "{granted}");
    ks.create_keyring("other");
    let denied = fetch("other");
    assert!(denied.ends_with("\n404"), "{denied}");

    // The configuration block names the files the proxy needs, and they exist.
    let block = ks.keyserver_toml(&id);
    assert!(
        block.starts_with(&format!("[keyserver]\nurl = \"{}\"", ks.url)),
        "{block}"
    );
    for p in [ks.ca_path(), id.cert.clone(), id.key.clone()] {
        assert!(
            block.contains(&p.display().to_string()) && p.exists(),
            "{block}"
        );
    }
    let enc = ks.encryption_toml(
        &id,
        "app",
        "app",
        &[ColumnSpec::new("public.patients.email", "text", "patients")
            .unique()
            .case_insensitive()],
    );
    assert!(enc.contains("[encryption]\ndatabase = \"app\""), "{enc}");
    assert!(
        enc.contains("case_insensitive = true\nunique = true"),
        "{enc}"
    );
}

/// The proxy-process helper runs the real `pgseal-proxy serve` binary (here without
/// `[[columns]]`, so pass-through) and clients get through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_process_serves_clients() {
    let pg = support::PgCluster::start(support::PgOptions::default());
    pg.create_role(
        support::APP_USER,
        support::UPSTREAM_PASSWORD,
        "scram-sha-256",
    );
    pg.create_database(support::ENC_DB, support::APP_USER);
    let toml = support::proxy_toml(
        &format!(
            "host = \"{}\"\nport = {}",
            pg.socket_dir().display(),
            pg.port
        ),
        "",
    );
    let mut proxy = support::ProxyProcess::start(&toml, &support::proxy_env());
    let c = support::connect(&format!(
        "host=127.0.0.1 port={} user={} password={} dbname={}",
        proxy.port,
        support::APP_USER,
        support::APP_PASSWORD,
        support::ENC_DB
    ))
    .await;
    let v: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, support::APP_USER);
    assert!(proxy.is_running());
    assert!(
        proxy.log().contains("pgseal-proxy listening"),
        "{}",
        proxy.log()
    );
}
