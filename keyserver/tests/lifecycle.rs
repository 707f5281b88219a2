//! Persistence, destruction, concurrent rotation, change feed, audit tamper detection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{contains, db_bytes, Harness};
use pgseal_keyserver::client::ClientError;
use pgseal_keyserver::model::{Role, VersionState};
use pgseal_keyserver::store::sqlite::Durability;
use pgseal_keyserver::store::{KeyStore, SqliteStore};

fn api_status<T>(r: Result<T, ClientError>) -> u16 {
    match r {
        Err(ClientError::Api { status, .. }) => status,
        Err(e) => panic!("expected an API error, got {e}"),
        Ok(_) => panic!("expected an API error, got success"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_persists_everything_and_checks_root_key() {
    let mut h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("patients").await.unwrap();
    admin.rotate("patients").await.unwrap();
    admin
        .set_proxy("proxy-a", &["patients".into()])
        .await
        .unwrap();
    let auditor = admin
        .create_token("aud", Role::Auditor, None)
        .await
        .unwrap();
    let proxy = h.proxy("proxy-a");
    let k1 = proxy.material("patients", 1).await.unwrap();
    let k2 = proxy.material("patients", 2).await.unwrap();
    assert_ne!(k1.key, k2.key);
    let meta_before = proxy.keyring("patients").await.unwrap();

    h.stop().await;
    h.launch().await.unwrap();
    let proxy = h.proxy("proxy-a");
    assert_eq!(proxy.keyring("patients").await.unwrap(), meta_before);
    assert_eq!(proxy.material("patients", 1).await.unwrap().key, k1.key);
    assert_eq!(proxy.material("patients", 2).await.unwrap().key, k2.key);
    assert_eq!(k1.keyring_id, meta_before.id);
    let report = h.with_token(&auditor.token).audit_verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    // The admin token survives too; rotation continues the numbering.
    assert_eq!(
        h.admin().rotate("patients").await.unwrap().active_version,
        3
    );
    h.stop().await;

    // Wrong root key: start-up refuses with a clear message.
    let key_path = h.ks_dir().join("root.key");
    let original = std::fs::read(&key_path).unwrap();
    std::fs::write(&key_path, format!("{}\n", "ab".repeat(32))).unwrap();
    let err = h.launch().await.unwrap_err().to_string();
    assert!(err.contains("root key does not match"), "{err}");
    // Missing root key.
    std::fs::remove_file(&key_path).unwrap();
    let err = h.launch().await.unwrap_err().to_string();
    assert!(err.contains("root key file"), "{err}");
    // Restored: starts again.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .unwrap();
        f.write_all(&original).unwrap();
    }
    h.launch().await.unwrap();
    assert_eq!(
        h.admin().keyring("patients").await.unwrap().active_version,
        3
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_material_is_gone_from_api_and_file() {
    let mut h = Harness::start().await;
    let admin = h.admin();
    let meta = admin.create_keyring("patients").await.unwrap();
    admin
        .set_proxy("proxy-a", &["patients".into()])
        .await
        .unwrap();
    let proxy = h.proxy("proxy-a");
    let k1 = proxy.material("patients", 1).await.unwrap();
    let wrapped: Vec<u8> = {
        let c = rusqlite::Connection::open(h.db_path()).unwrap();
        c.query_row(
            "SELECT wrapped FROM key_versions WHERE keyring_id = ?1 AND version = 1",
            [&meta.id],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(wrapped.len(), pgseal_crypto::keywrap::WRAPPED_LEN);
    let before = db_bytes(&h.db_path());
    assert!(
        contains(&before, &wrapped),
        "the wrapped blob must be on disk before destruction"
    );
    assert!(
        !contains(&before, k1.key.expose_secret()),
        "plaintext material is never on disk"
    );

    admin.rotate("patients").await.unwrap();
    assert_eq!(
        api_status(admin.version_action("patients", 1, "destroy").await),
        409,
        "must disable first"
    );
    admin
        .version_action("patients", 1, "disable")
        .await
        .unwrap();
    assert_eq!(api_status(proxy.material("patients", 1).await), 409);
    let m = admin
        .version_action("patients", 1, "destroy")
        .await
        .unwrap();
    assert_eq!(m.versions[0].state, VersionState::Destroyed);
    assert_eq!(api_status(proxy.material("patients", 1).await), 410);
    assert_eq!(
        api_status(admin.version_action("patients", 1, "enable").await),
        409
    );
    // The active version still works.
    proxy.material("patients", 2).await.unwrap();

    h.stop().await;
    let after = db_bytes(&h.db_path());
    assert!(
        !contains(&after, &wrapped),
        "wrapped blob of a destroyed version must not remain in the SQLite files"
    );
    assert!(!contains(&after, k1.key.expose_secret()));
    // Metadata is kept as a tombstone across restarts.
    h.launch().await.unwrap();
    let meta = h.admin().keyring("patients").await.unwrap();
    assert_eq!(meta.versions[0].state, VersionState::Destroyed);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_rotations_are_distinct_and_consecutive() {
    let h = Harness::start().await;
    h.admin().create_keyring("patients").await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = h.admin();
        tasks.push(tokio::spawn(async move {
            c.rotate("patients").await.unwrap().active_version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=51).collect::<Vec<u32>>());
    let meta = h.admin().keyring("patients").await.unwrap();
    assert_eq!(meta.active_version, 51);
    assert_eq!(meta.versions.len(), 51);
    assert_eq!(
        meta.versions
            .iter()
            .filter(|v| v.state == VersionState::Active)
            .count(),
        1
    );
    let auditor = h
        .admin()
        .create_token("aud", Role::Auditor, None)
        .await
        .unwrap();
    let auditor = h.with_token(&auditor.token);
    let report = auditor.audit_verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    let records = auditor.audit(0, 1000).await.unwrap().records;
    assert_eq!(
        records
            .iter()
            .filter(|r| r.action == "keyring.rotate" && r.outcome == "ok")
            .count(),
        50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_states_and_min_decryption_version_gate_material() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("patients").await.unwrap();
    admin.rotate("patients").await.unwrap();
    admin.rotate("patients").await.unwrap();
    admin
        .set_proxy("proxy-a", &["patients".into()])
        .await
        .unwrap();
    let proxy = h.proxy("proxy-a");
    for v in 1..=3 {
        proxy.material("patients", v).await.unwrap();
    }
    let m = admin.set_min_version("patients", 3).await.unwrap();
    assert_eq!(m.min_decryption_version, 3);
    assert_eq!(api_status(proxy.material("patients", 2).await), 409);
    assert_eq!(
        proxy.material("patients", 3).await.unwrap().state,
        VersionState::Active
    );
    admin.set_min_version("patients", 1).await.unwrap();
    admin
        .version_action("patients", 2, "disable")
        .await
        .unwrap();
    assert_eq!(api_status(proxy.material("patients", 2).await), 409);
    admin.version_action("patients", 2, "enable").await.unwrap();
    assert_eq!(
        proxy.material("patients", 2).await.unwrap().state,
        VersionState::DecryptOnly
    );
    assert_eq!(api_status(proxy.material("patients", 4).await), 404);
    assert_eq!(
        api_status(admin.version_action("patients", 3, "disable").await),
        409,
        "active version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feed_long_poll_sees_rotation_quickly() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("patients").await.unwrap();
    admin.create_keyring("billing").await.unwrap();
    admin
        .set_proxy("proxy-a", &["patients".into()])
        .await
        .unwrap();
    let proxy = h.proxy("proxy-a");
    let first = proxy.changes(0, None).await.unwrap();
    assert_eq!(
        first.changed.len(),
        1,
        "only granted keyrings are listed: {first:?}"
    );
    let rev = first.revision;
    // Nothing new: a short poll returns empty.
    assert!(proxy.changes(rev, None).await.unwrap().changed.is_empty());
    let poll = tokio::spawn(async move {
        let t = Instant::now();
        (proxy.changes(rev, Some(20)).await.unwrap(), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin.rotate("billing").await.unwrap(); // not granted: must not wake with a result
    admin.rotate("patients").await.unwrap();
    let (resp, elapsed) = poll.await.unwrap();
    assert!(
        elapsed < Duration::from_secs(5),
        "long poll took {elapsed:?}"
    );
    assert_eq!(resp.changed.len(), 1);
    assert_eq!(resp.changed[0].name, "patients");
    assert!(resp.revision > rev);

    // A new grant shows up in the change feed of that proxy.
    let proxy = h.proxy("proxy-a");
    let rev = proxy.changes(0, None).await.unwrap().revision;
    admin
        .set_proxy("proxy-a", &["patients".into(), "billing".into()])
        .await
        .unwrap();
    let resp = proxy.changes(rev, None).await.unwrap();
    let names: Vec<_> = resp.changed.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"billing"), "{names:?}");
    assert!(resp.grants_changed);

    // A withdrawn grant: the keyring cannot be listed any more, so the feed says that the
    // grants changed, and wakes a long poll at once; other proxies are not told.
    admin
        .set_proxy("proxy-b", &["billing".into()])
        .await
        .unwrap();
    let other = h.proxy("proxy-b");
    let rev = proxy.changes(0, None).await.unwrap().revision;
    assert!(!proxy.changes(rev, None).await.unwrap().grants_changed);
    let poll = tokio::spawn(async move {
        let t = Instant::now();
        (proxy.changes(rev, Some(20)).await.unwrap(), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin
        .set_proxy("proxy-a", &["patients".into()])
        .await
        .unwrap();
    let (resp, elapsed) = poll.await.unwrap();
    assert!(resp.grants_changed, "{resp:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "long poll took {elapsed:?}"
    );
    assert!(!other.changes(rev, None).await.unwrap().grants_changed);
    // Deleting the proxy is a grant change too.
    let proxy = h.proxy("proxy-a");
    let rev = proxy.changes(0, None).await.unwrap().revision;
    admin.delete_proxy("proxy-a").await.unwrap();
    assert!(proxy.changes(rev, None).await.unwrap().grants_changed);
}

fn tamper_copy(h: &Harness, name: &str) -> std::path::PathBuf {
    let dst = h.dir.path().join(name);
    let c = rusqlite::Connection::open(h.db_path()).unwrap();
    c.execute("VACUUM INTO ?1", [dst.to_str().unwrap()])
        .unwrap();
    dst
}

fn verify_file(path: &std::path::Path) -> pgseal_keyserver::model::AuditVerifyReport {
    SqliteStore::open(path, Durability::Normal)
        .unwrap()
        .verify_audit(None)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tampering_is_detected_and_located() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("patients").await.unwrap();
    for _ in 0..4 {
        admin.rotate("patients").await.unwrap();
    }
    assert!(h.anonymous().keyring("patients").await.is_err());
    let clean = tamper_copy(&h, "clean.db");
    let r = verify_file(&clean);
    assert!(r.ok && r.records >= 7, "{r:?}");

    // Edit a record.
    let p = tamper_copy(&h, "edit.db");
    rusqlite::Connection::open(&p)
        .unwrap()
        .execute("UPDATE audit SET outcome = 'ok' WHERE seq = 7", [])
        .unwrap();
    let r = verify_file(&p);
    assert!(!r.ok);
    assert_eq!(r.first_bad.unwrap().seq, 7);

    // Edit a record and recompute its hash: the next record no longer links.
    let p = tamper_copy(&h, "rehash.db");
    {
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 3", [])
            .unwrap();
        let store = SqliteStore::open(&p, Durability::Normal).unwrap();
        let mut rec = store.audit_records(2, 1, None).unwrap().remove(0);
        rec.hash = pgseal_keyserver::audit::record_hash(&rec);
        c.execute("UPDATE audit SET hash = ?1 WHERE seq = 3", [&rec.hash])
            .unwrap();
    }
    let r = verify_file(&p);
    assert_eq!(r.first_bad.unwrap().seq, 4);

    // Delete a record in the middle.
    let p = tamper_copy(&h, "delete.db");
    rusqlite::Connection::open(&p)
        .unwrap()
        .execute("DELETE FROM audit WHERE seq = 4", [])
        .unwrap();
    let r = verify_file(&p);
    let bad = r.first_bad.unwrap();
    assert_eq!(bad.seq, 4);
    assert!(bad.reason.contains("missing"), "{}", bad.reason);

    // Delete the last record (truncation).
    let p = tamper_copy(&h, "truncate.db");
    rusqlite::Connection::open(&p)
        .unwrap()
        .execute(
            "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
            [],
        )
        .unwrap();
    assert!(!verify_file(&p).ok);

    // Reorder two records (swap their sequence numbers).
    let p = tamper_copy(&h, "reorder.db");
    {
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute_batch("UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = -1;")
            .unwrap();
    }
    let r = verify_file(&p);
    assert_eq!(r.first_bad.unwrap().seq, 2);

    // The CLI reports the same and exits non-zero; the clean copy passes.
    let bin = env!("CARGO_BIN_EXE_pgseal-keyserver");
    let out = std::process::Command::new(bin)
        .args(["audit", "verify", "--db"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("BROKEN at record 2"), "{stdout}");
    let out = std::process::Command::new(bin)
        .args(["audit", "verify", "--db"])
        .arg(&clean)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_write_failure_fails_the_request_and_changes_nothing() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("patients").await.unwrap();
    admin
        .set_proxy("proxy-a", &["patients".into()])
        .await
        .unwrap();
    let proxy = h.proxy("proxy-a");
    proxy.material("patients", 1).await.unwrap();
    let db = rusqlite::Connection::open(h.db_path()).unwrap();
    db.execute_batch("CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit disk full'); END;")
        .unwrap();
    assert_eq!(api_status(admin.rotate("patients").await), 500);
    assert_eq!(
        api_status(proxy.material("patients", 1).await),
        500,
        "no unaudited key access"
    );
    assert_eq!(api_status(proxy.keyring("patients").await), 500);
    db.execute_batch("DROP TRIGGER no_audit;").unwrap();
    let meta = admin.keyring("patients").await.unwrap();
    assert_eq!(
        meta.active_version, 1,
        "the failed rotation must not have happened"
    );
    assert_eq!(meta.versions.len(), 1);
}
