//! The keyserver's audit log under hostile input (issue 14 item 3), against the real binary:
//! unauthenticated floods cause a bounded number of records (with exact counts), control
//! characters never reach a stored record or the auditor's terminal, non-UTF-8 paths are
//! audited, `audit tail -n N` is exact beyond one page, a tampered chain makes `tail` fail
//! loudly, and a closed pipe is no panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use pgseal_keyserver::client::{Client, ClientConfig};
use pgseal_keyserver::model::AuditRecord;
use support::keyserver::TestKeyserver;
use zeroize::Zeroizing;

const WINDOW_SECS: u64 = 2;
const PER_SOURCE: u64 = 3;

fn audit_toml() -> String {
    format!(
        "[audit]\nunauthenticated_window_secs = {WINDOW_SECS}\nunauthenticated_records_per_source = {PER_SOURCE}\n"
    )
}

fn client(ks: &TestKeyserver, token: Option<&str>) -> Client {
    Client::new(ClientConfig {
        url: ks.url.clone(),
        ca_pem: std::fs::read(ks.ca_path()).unwrap(),
        identity: None,
        token: token.map(|t| Zeroizing::new(t.to_string())),
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

/// Every record, read page by page with an auditor token.
async fn all_records(auditor: &Client) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::new();
    let mut after = 0;
    for _ in 0..1_000 {
        let page = auditor.audit(after, 1000).await.unwrap().records;
        let Some(last) = page.last().map(|r| r.seq) else {
            break;
        };
        let full = page.len() == 1000;
        after = last;
        out.extend(page);
        // Each read is itself audited: stop at the first short page, not at an empty one.
        if !full {
            break;
        }
    }
    out
}

fn field(detail: &str, key: &str) -> u64 {
    detail
        .split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {detail}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_flood_is_aggregated_with_exact_counts() {
    let ks = TestKeyserver::start_with(&audit_toml());
    let auditor = client(&ks, Some(&ks.create_token("auditor", "auditor")));
    let before = all_records(&auditor).await.last().map_or(0, |r| r.seq);

    let anon = client(&ks, None);
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < 3_000 && t.elapsed() < Duration::from_secs(8) {
        let (status, _) = anon
            .raw(
                http::Method::GET,
                "/v1/keyrings/some-kr/versions/1/material",
                None,
            )
            .await
            .unwrap();
        assert_eq!(status, 401);
        sent += 1;
    }
    let flood_secs = t.elapsed().as_secs_f64();
    // Windows the flood touched, plus one for the clock edge.
    let windows = (flood_secs / WINDOW_SECS as f64).ceil() as u64 + 1;

    // Wait until every failure is accounted for (the last window ends and is flushed).
    let deadline = Instant::now() + Duration::from_secs(WINDOW_SECS * 2 + 10);
    let (individual, aggregates) = loop {
        let recs: Vec<_> = all_records(&auditor)
            .await
            .into_iter()
            .filter(|r| r.seq > before && !r.actor.starts_with("token:"))
            .collect();
        let individual: Vec<_> = recs
            .iter()
            .filter(|r| r.action == "material.read")
            .cloned()
            .collect();
        let aggregates: Vec<_> = recs
            .iter()
            .filter(|r| r.action == "auth_failure.aggregate")
            .cloned()
            .collect();
        let counted: u64 = aggregates
            .iter()
            .map(|r| field(r.detail.as_deref().unwrap_or(""), "suppressed"))
            .sum();
        if individual.len() as u64 + counted >= sent || Instant::now() > deadline {
            break (individual, aggregates);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let counted: u64 = aggregates
        .iter()
        .map(|r| field(r.detail.as_deref().unwrap_or(""), "suppressed"))
        .sum();
    let records = individual.len() as u64 + aggregates.len() as u64;
    eprintln!(
        "{sent} unauthenticated requests in {flood_secs:.1} s ({:.0}/s) -> {records} audit records ({:.1}/s): {} individual, {} aggregate counting {counted}",
        sent as f64 / flood_secs,
        records as f64 / flood_secs,
        individual.len(),
        aggregates.len()
    );
    assert_eq!(
        individual.len() as u64 + counted,
        sent,
        "every failure is accounted for exactly once"
    );
    let bound = windows * (PER_SOURCE + 1);
    assert!(
        records <= bound,
        "{records} records for one source over {windows} windows (bound {bound})"
    );
    for r in &individual {
        assert_eq!(r.actor, "anonymous");
        assert_eq!(r.outcome, "unauthenticated");
        assert!(r
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("source=127.0.0.1"));
    }
    for r in &aggregates {
        assert_eq!(r.actor, "unauthenticated:127.0.0.1");
        let d = r.detail.as_deref().unwrap();
        assert!(d.contains("outcomes=unauthenticated="), "{d}");
        assert!(d.contains("actions=material.read="), "{d}");
    }
    // The aggregates are links of the same chain.
    let v = auditor.audit_verify().await.unwrap();
    assert!(v.ok, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_non_utf8_paths() {
    let ks = TestKeyserver::start_with(&audit_toml());
    let admin_token = ks.create_token("admin2", "key-admin");
    let auditor_token = ks.create_token("auditor", "auditor");
    let admin = client(&ks, Some(&admin_token));
    let auditor = client(&ks, Some(&auditor_token));

    // A keyring "name" that would colour the terminal and fake a record line.
    let evil = "/v1/keyrings/%1b%5b31mEVIL%1b%5b0m%0a%23999%20forged%20ok/rotate";
    let (status, _) = admin.raw(http::Method::POST, evil, None).await.unwrap();
    assert_eq!(status, 400);
    let (status, _) = admin
        .raw(http::Method::GET, "/v1/keyrings/%ff%fe", None)
        .await
        .unwrap();
    assert_eq!(status, 400);
    let anon = client(&ks, None);
    let (status, _) = anon
        .raw(http::Method::GET, "/v1/keyrings/%c3", None)
        .await
        .unwrap();
    assert_eq!(status, 401);

    let recs = all_records(&auditor).await;
    let rotate = recs
        .iter()
        .find(|r| r.action == "keyring.rotate" && r.outcome == "bad_request")
        .expect("the rotate attempt is audited");
    let kr = rotate.keyring.as_deref().unwrap();
    assert_eq!(kr, "\\x1b[31mEVIL\\x1b[0m\\x0a#999 forged ok");
    for r in &recs {
        for s in [&r.actor, &r.action, &r.outcome]
            .into_iter()
            .chain(r.keyring.as_ref())
            .chain(r.detail.as_ref())
        {
            assert!(
                !s.chars().any(char::is_control),
                "record {} stores a control character: {s:?}",
                r.seq
            );
        }
    }
    let bad_path = recs
        .iter()
        .find(|r| r.action == "invalid_path" && r.actor.starts_with("token:"))
        .expect("the non-UTF-8 path is audited");
    assert_eq!(bad_path.outcome, "bad_request");
    assert_eq!(bad_path.detail.as_deref(), Some("GET /v1/keyrings/%ff%fe"));
    let anon_bad = recs
        .iter()
        .find(|r| r.action == "invalid_path" && r.actor == "anonymous")
        .expect("the anonymous non-UTF-8 path is audited");
    assert_eq!(anon_bad.outcome, "unauthenticated");

    // What the auditor's terminal gets.
    let out = ks
        .command_with_token(&auditor_token)
        .args(["audit", "tail", "-n", "50"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\u{1b}'), "terminal escape printed: {text}");
    assert!(
        text.lines().all(|l| l.starts_with('#')),
        "a line that is not a record: {text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("#999")), "{text}");
    assert!(text.contains("\\x1b[31mEVIL"), "{text}");
}

fn tail(ks: &TestKeyserver, token: &str, n: u32) -> (bool, String, String) {
    let out = ks
        .command_with_token(token)
        .args(["audit", "tail", "-n", &n.to_string()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn seqs(text: &str) -> Vec<u64> {
    text.lines()
        .map(|l| {
            l.strip_prefix('#')
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("not a record line: {l:?}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_is_exact_beyond_one_page_and_fails_on_a_broken_chain() {
    let ks = TestKeyserver::start_with(&audit_toml());
    ks.create_keyring("tail-kr");
    let admin_token = ks.create_token("admin2", "key-admin");
    let auditor_token = ks.create_token("auditor", "auditor");
    let admin = client(&ks, Some(&admin_token));
    // 3,300 audited reads.
    let t = Instant::now();
    for _ in 0..3_300 {
        admin.keyring("tail-kr").await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(40), "too slow");
    }
    let auditor = client(&ks, Some(&auditor_token));
    let last = all_records(&auditor).await.last().unwrap().seq;
    assert!(last > 3_300);

    let (ok, out, err) = tail(&ks, &auditor_token, 3_100);
    assert!(ok, "{err}");
    let s = seqs(&out);
    assert_eq!(s.len(), 3_100);
    assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "not contiguous");
    // The newest records: everything up to the read before this tail's own verification.
    assert!(
        *s.last().unwrap() > last,
        "tail ends at {} (log had {last})",
        s.last().unwrap()
    );

    // More than there are: all of them, from #1.
    let (ok, out, err) = tail(&ks, &auditor_token, 100_000);
    assert!(ok, "{err}");
    let s = seqs(&out);
    assert_eq!(s.first(), Some(&1));
    assert!(s.windows(2).all(|w| w[1] == w[0] + 1));

    // A closed pipe is not a panic.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' audit tail -n 3000 | head -n 2; echo \"status=${{PIPESTATUS[0]}}\"",
            ks.bin().display()
        ))
        .env("PGSEAL_KEYSERVER_URL", &ks.url)
        .env("PGSEAL_KEYSERVER_CA", ks.ca_path())
        .env("PGSEAL_KEYSERVER_TOKEN", &auditor_token)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    let piped = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(piped.lines().count(), 3, "{piped}");
    assert!(piped.ends_with("status=0\n"), "{piped}");

    // Tamper with one record in the database, behind the server's back.
    let edit = std::process::Command::new("sqlite3")
        .arg(ks.db_path())
        .arg("UPDATE audit SET outcome = 'forged' WHERE seq = 10;")
        .output()
        .unwrap();
    assert!(
        edit.status.success(),
        "{}",
        String::from_utf8_lossy(&edit.stderr)
    );
    let (ok, out, err) = tail(&ks, &auditor_token, 20);
    assert!(!ok, "tail succeeded on a broken chain:\n{out}");
    assert!(err.contains("BROKEN at record 10"), "{err}");
    assert_eq!(seqs(&out).len(), 20, "the records are still shown");
    // Offline, from the database file.
    let out = ks
        .command_with_token(&auditor_token)
        .args(["audit", "tail", "-n", "5", "--db"])
        .arg(ks.db_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BROKEN at record 10"));
}
