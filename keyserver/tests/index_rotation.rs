//! Online blind-index key rotation against the real server: start, confirmations, passes,
//! cut-over, finish, their gates, the change feed, the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use hyper::Method;
use pgseal_keyserver::client::{Client, ClientError};
use pgseal_keyserver::model::{
    IndexPassReport, IndexPhase, IndexRotation, IndexState, KeyringMeta, Role,
};

/// Status, code and message of an API error (panics on success).
fn api_err<T>(r: Result<T, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api {
            status,
            error,
            message,
        }) => (status, error, message),
        Err(e) => panic!("expected an API error, got {e}"),
        Ok(_) => panic!("expected an API error, got success"),
    }
}

fn state_of(m: &KeyringMeta, generation: u32) -> IndexState {
    m.index
        .generations
        .iter()
        .find(|g| g.generation == generation)
        .map(|g| g.state)
        .unwrap()
}

const DONE: IndexPassReport = IndexPassReport {
    complete: true,
    rewritten: 7,
};
const PARTIAL: IndexPassReport = IndexPassReport {
    complete: false,
    rewritten: 3,
};

/// Runs `step` while a proxy long-polls the change feed from `since`; asserts the feed reports
/// `keyring` at the revision `step` returned, within a couple of seconds.
async fn feed_sees<F>(proxy: &Client, since: u64, keyring: &str, step: F) -> KeyringMeta
where
    F: std::future::Future<Output = KeyringMeta>,
{
    let t = Instant::now();
    let (resp, meta) = tokio::join!(
        async { proxy.changes(since, Some(20)).await.unwrap() },
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            step.await
        }
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        resp.changed
            .iter()
            .any(|c| c.name == keyring && c.revision == meta.revision),
        "{resp:?} vs revision {}",
        meta.revision
    );
    meta
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_rotation_with_every_gate() {
    let h = Harness::start().await;
    let admin = h.admin();
    let m0 = admin.create_keyring("people").await.unwrap();
    admin.create_keyring("other").await.unwrap();
    for p in ["proxy-a", "proxy-b"] {
        admin.set_proxy(p, &["people".into()]).await.unwrap();
    }
    admin.set_proxy("proxy-c", &["other".into()]).await.unwrap();
    let (pa, pb, pc) = (h.proxy("proxy-a"), h.proxy("proxy-b"), h.proxy("proxy-c"));
    let g1 = pa.index_material("people", 1).await.unwrap();
    assert_eq!(m0.index.rotation, None);

    // Start: generation 2 `next`, phase dual, generation 1 still active.
    let since = pa.changes(0, None).await.unwrap().revision;
    let m1 = feed_sees(&pa, since, "people", async {
        admin.index_rotate("people").await.unwrap()
    })
    .await;
    assert_eq!(
        m1.index.rotation,
        Some(IndexRotation {
            from: 1,
            to: 2,
            phase: IndexPhase::Dual
        })
    );
    assert_eq!(m1.index.active_generation, 1);
    assert_eq!(state_of(&m1, 1), IndexState::Active);
    assert_eq!(state_of(&m1, 2), IndexState::Next);
    assert_eq!(m1.index.generations[1].derived_from_version, None);
    assert!(m1.revision > m0.revision);
    assert_eq!(pb.keyring("people").await.unwrap().index, m1.index);
    let (s, code, _) = api_err(admin.index_rotate("people").await);
    assert_eq!((s, code.as_str()), (409, "index_rotation_in_progress"));

    // Both generations are served to the granted proxies, to nobody else.
    let g2 = pa.index_material("people", 2).await.unwrap();
    assert_ne!(g1.key, g2.key);
    assert_eq!(pa.index_material("people", 1).await.unwrap().key, g1.key);
    assert_eq!(pb.index_material("people", 2).await.unwrap().key, g2.key);
    for g in [1, 2] {
        let (s, code, _) = api_err(pc.index_material("people", g).await);
        assert_eq!((s, code.as_str()), (404, "not_found"));
    }
    let (s, ..) = api_err(pc.index_confirm("people", 2, IndexPhase::Dual).await);
    assert_eq!(s, 404);

    // Cut-over refused before any confirmation; a pass cannot start either.
    let (s, code, msg) = api_err(admin.index_cutover("people").await);
    assert_eq!((s, code.as_str()), (409, "index_rotation_not_ready"));
    assert_eq!(
        msg,
        "2 of 2 granted proxies have not confirmed phase dual of generation 2: proxy-a, proxy-b"
    );
    let (s, code, msg) = api_err(pa.index_pass_start("people", 2, IndexPhase::Dual).await);
    assert_eq!((s, code.as_str()), (409, "index_phase_unconfirmed"));
    assert!(
        msg.starts_with("2 of 2 proxies granted keyring people"),
        "{msg}"
    );

    pa.index_confirm("people", 2, IndexPhase::Dual)
        .await
        .unwrap();
    pa.index_confirm("people", 2, IndexPhase::Dual)
        .await
        .unwrap();
    let (_, _, msg) = api_err(admin.index_cutover("people").await);
    assert_eq!(
        msg,
        "1 of 2 granted proxies have not confirmed phase dual of generation 2: proxy-b"
    );
    // The proxy learns counts only, never the other proxies' names.
    let (_, _, msg) = api_err(pa.index_pass_start("people", 2, IndexPhase::Dual).await);
    assert!(msg.starts_with("1 of 2 proxies"), "{msg}");
    assert!(!msg.contains("proxy-b"), "{msg}");
    let st = admin.index_rotation_status("people").await.unwrap();
    assert_eq!(st.proxies.len(), 2);
    assert!(st.proxies[0].confirmed && st.proxies[0].confirmed_at.is_some());
    assert!(!st.proxies[1].confirmed && st.proxies[1].proxy == "proxy-b");

    pb.index_confirm("people", 2, IndexPhase::Dual)
        .await
        .unwrap();
    let (_, _, msg) = api_err(admin.index_cutover("people").await);
    assert!(
        msg.starts_with("no complete re-index pass") && msg.contains("pgseal-proxy reencrypt"),
        "{msg}"
    );

    // A complete pass that started before the last confirmation does not count.
    let early = pa
        .index_pass_start("people", 2, IndexPhase::Dual)
        .await
        .unwrap();
    assert!(early.pass.starts_with("ip_") && early.pass.len() == 35);
    admin
        .set_proxy("proxy-d", &["people".into()])
        .await
        .unwrap();
    let pd = h.proxy("proxy-d");
    pd.index_confirm("people", 2, IndexPhase::Dual)
        .await
        .unwrap();
    pa.index_pass_report("people", &early.pass, &DONE)
        .await
        .unwrap();
    let (_, code, msg) = api_err(admin.index_cutover("people").await);
    assert_eq!(code, "index_rotation_not_ready");
    assert!(msg.starts_with("no complete re-index pass"), "{msg}");
    // An incomplete pass does not count.
    let partial = pb
        .index_pass_start("people", 2, IndexPhase::Dual)
        .await
        .unwrap();
    pb.index_pass_report("people", &partial.pass, &PARTIAL)
        .await
        .unwrap();
    let (_, _, msg) = api_err(admin.index_cutover("people").await);
    assert!(msg.starts_with("no complete re-index pass"), "{msg}");
    let st = admin.index_rotation_status("people").await.unwrap();
    assert_eq!(st.passes.len(), 2);
    assert_eq!(st.passes[1].complete, Some(false));
    assert_eq!(st.passes[1].rewritten, Some(3));
    assert!(st.next_step_blocked_by.is_some());

    let good = pd
        .index_pass_start("people", 2, IndexPhase::Dual)
        .await
        .unwrap();
    pd.index_pass_report("people", &good.pass, &DONE)
        .await
        .unwrap();
    assert_eq!(
        admin
            .index_rotation_status("people")
            .await
            .unwrap()
            .next_step_blocked_by,
        None
    );
    // Finish is refused before the cut-over.
    let (s, code, _) = api_err(admin.index_finish("people").await);
    assert_eq!((s, code.as_str()), (409, "index_phase"));

    // Cut-over: generation 2 active, 1 retiring; both still served.
    let since = pa.changes(0, None).await.unwrap().revision;
    let m2 = feed_sees(&pa, since, "people", async {
        admin.index_cutover("people").await.unwrap()
    })
    .await;
    assert!(m2.revision > m1.revision);
    assert_eq!(m2.index.active_generation, 2);
    assert_eq!(state_of(&m2, 1), IndexState::Retiring);
    assert_eq!(state_of(&m2, 2), IndexState::Active);
    assert_eq!(
        m2.index.rotation.as_ref().map(|r| r.phase),
        Some(IndexPhase::Cutover)
    );
    assert_eq!(pa.index_material("people", 1).await.unwrap().key, g1.key);
    assert_eq!(pa.index_material("people", 2).await.unwrap().key, g2.key);
    let (s, code, _) = api_err(admin.index_cutover("people").await);
    assert_eq!((s, code.as_str()), (409, "index_phase"));

    // Phase dual is over: a confirmation of it is stale.
    let (s, code, _) = api_err(pa.index_confirm("people", 2, IndexPhase::Dual).await);
    assert_eq!((s, code.as_str()), (409, "index_rotation_stale"));
    let (_, _, msg) = api_err(admin.index_finish("people").await);
    assert_eq!(
        msg,
        "3 of 3 granted proxies have not confirmed phase cutover of generation 2: proxy-a, proxy-b, proxy-d"
    );
    for p in [&pa, &pb, &pd] {
        p.index_confirm("people", 2, IndexPhase::Cutover)
            .await
            .unwrap();
    }
    let (_, _, msg) = api_err(admin.index_finish("people").await);
    assert!(msg.starts_with("no complete compaction pass"), "{msg}");
    let compact = pa
        .index_pass_start("people", 2, IndexPhase::Cutover)
        .await
        .unwrap();
    pa.index_pass_report("people", &compact.pass, &PARTIAL)
        .await
        .unwrap();
    let (_, _, msg) = api_err(admin.index_finish("people").await);
    assert!(msg.starts_with("no complete compaction pass"), "{msg}");
    let compact = pa
        .index_pass_start("people", 2, IndexPhase::Cutover)
        .await
        .unwrap();
    pa.index_pass_report("people", &compact.pass, &DONE)
        .await
        .unwrap();

    // Finish: generation 1 retired, its material no longer served (nor stored).
    let since = pa.changes(0, None).await.unwrap().revision;
    let m3 = feed_sees(&pa, since, "people", async {
        admin.index_finish("people").await.unwrap()
    })
    .await;
    assert!(m3.revision > m2.revision);
    assert_eq!(m3.index.rotation, None);
    assert_eq!(m3.index.active_generation, 2);
    assert_eq!(state_of(&m3, 1), IndexState::Retired);
    assert_eq!(state_of(&m3, 2), IndexState::Active);
    let (s, code, _) = api_err(pa.index_material("people", 1).await);
    assert_eq!((s, code.as_str()), (410, "index_generation_retired"));
    // Uniform for an ungranted proxy still.
    assert_eq!(api_err(pc.index_material("people", 1).await).0, 404);
    assert_eq!(pa.index_material("people", 2).await.unwrap().key, g2.key);
    let wrapped: Option<Vec<u8>> = rusqlite::Connection::open(h.db_path())
        .unwrap()
        .query_row(
            "SELECT wrapped FROM index_generations WHERE keyring_id = ?1 AND generation = 1",
            [&m0.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(wrapped, None);
    let st = admin.index_rotation_status("people").await.unwrap();
    assert_eq!(st.rotation, None);
    assert!(st.proxies.is_empty() && st.passes.is_empty());
    let (s, code, _) = api_err(admin.index_finish("people").await);
    assert_eq!((s, code.as_str()), (409, "no_index_rotation"));
    let (s, code, _) = api_err(pa.index_confirm("people", 2, IndexPhase::Cutover).await);
    assert_eq!((s, code.as_str()), (409, "index_rotation_stale"));

    // The next rotation goes to generation 3.
    let m4 = admin.index_rotate("people").await.unwrap();
    assert_eq!(
        m4.index.rotation,
        Some(IndexRotation {
            from: 2,
            to: 3,
            phase: IndexPhase::Dual
        })
    );

    // Every step is in the audit log, and the chain verifies.
    let aud = admin
        .create_token("aud", Role::Auditor, None)
        .await
        .unwrap();
    let aud = h.with_token(&aud.token);
    let records = aud.audit(0, 1000).await.unwrap().records;
    let has = |action: &str, outcome: &str| {
        records.iter().any(|r| {
            r.action == action && r.outcome == outcome && r.keyring.as_deref() == Some("people")
        })
    };
    for (action, outcome) in [
        ("index.rotate", "ok"),
        ("index.rotate", "index_rotation_in_progress"),
        ("index.cutover", "index_rotation_not_ready"),
        ("index.cutover", "ok"),
        ("index.finish", "index_phase"),
        ("index.finish", "ok"),
        ("index.rotation.read", "ok"),
        ("index_phase.confirm", "ok"),
        ("index_phase.confirm", "index_rotation_stale"),
        ("index_phase.confirm", "not_found"),
        ("index_pass.start", "ok"),
        ("index_pass.start", "index_phase_unconfirmed"),
        ("index_pass.report", "ok"),
    ] {
        assert!(has(action, outcome), "no audit record {action} {outcome}");
    }
    assert!(records.iter().any(|r| r.action == "index_pass.report"
        && r.actor == "proxy:proxy-d"
        && r.detail.as_deref()
            == Some(format!("pass={} complete=true rewritten=7", good.pass).as_str())));
    let report = aud.audit_verify().await.unwrap();
    assert!(report.ok, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granting_blocks_the_cutover_and_revoking_unblocks_it() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("k").await.unwrap();
    admin.set_proxy("proxy-a", &["k".into()]).await.unwrap();
    let pa = h.proxy("proxy-a");
    admin.index_rotate("k").await.unwrap();
    pa.index_confirm("k", 2, IndexPhase::Dual).await.unwrap();
    let p = pa.index_pass_start("k", 2, IndexPhase::Dual).await.unwrap();
    pa.index_pass_report("k", &p.pass, &DONE).await.unwrap();
    let blocked = || async {
        admin
            .index_rotation_status("k")
            .await
            .unwrap()
            .next_step_blocked_by
    };
    assert_eq!(blocked().await, None);

    // A proxy granted during phase dual blocks the cut-over until it confirms...
    admin.set_proxy("proxy-b", &["k".into()]).await.unwrap();
    let pb = h.proxy("proxy-b");
    let (_, _, msg) = api_err(admin.index_cutover("k").await);
    assert_eq!(
        msg,
        "1 of 2 granted proxies have not confirmed phase dual of generation 2: proxy-b"
    );
    // ...and after it confirmed, the earlier pass no longer counts.
    pb.index_confirm("k", 2, IndexPhase::Dual).await.unwrap();
    let msg = blocked().await.unwrap();
    assert!(msg.starts_with("no complete re-index pass"), "{msg}");
    // Revoking its grant unblocks (its confirmation no longer counts)...
    admin.set_proxy("proxy-b", &[]).await.unwrap();
    assert_eq!(blocked().await, None);
    // ...and drops its confirmation: granted again, it has to confirm again.
    admin.set_proxy("proxy-b", &["k".into()]).await.unwrap();
    let msg = blocked().await.unwrap();
    assert!(msg.ends_with(": proxy-b"), "{msg}");
    // Removing the proxy altogether unblocks too.
    admin.delete_proxy("proxy-b").await.unwrap();
    let m = admin.index_cutover("k").await.unwrap();
    assert_eq!(m.index.active_generation, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_foreign_requests_are_refused() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("k").await.unwrap();
    for p in ["proxy-a", "proxy-b"] {
        admin.set_proxy(p, &["k".into()]).await.unwrap();
    }
    admin.set_proxy("proxy-x", &[]).await.unwrap();
    let (pa, pb, px) = (h.proxy("proxy-a"), h.proxy("proxy-b"), h.proxy("proxy-x"));

    // No rotation: nothing to confirm.
    let (s, code, _) = api_err(pa.index_confirm("k", 2, IndexPhase::Dual).await);
    assert_eq!((s, code.as_str()), (409, "index_rotation_stale"));
    let (s, code, _) = api_err(admin.index_cutover("k").await);
    assert_eq!((s, code.as_str()), (409, "no_index_rotation"));
    admin.index_rotate("k").await.unwrap();
    // Wrong generation or phase: stale.
    for (g, phase) in [
        (3, IndexPhase::Dual),
        (2, IndexPhase::Cutover),
        (1, IndexPhase::Dual),
    ] {
        let (s, code, _) = api_err(pa.index_confirm("k", g, phase).await);
        assert_eq!(
            (s, code.as_str()),
            (409, "index_rotation_stale"),
            "{g} {phase:?}"
        );
        let (s, code, _) = api_err(pa.index_pass_start("k", g, phase).await);
        assert_eq!(
            (s, code.as_str()),
            (409, "index_rotation_stale"),
            "{g} {phase:?}"
        );
    }
    // An ungranted proxy gets the uniform 404 everywhere, for a known keyring or not.
    for name in ["k", "nope"] {
        let (s, code, _) = api_err(px.index_confirm(name, 2, IndexPhase::Dual).await);
        assert_eq!((s, code.as_str()), (404, "not_found"));
        let (s, ..) = api_err(px.index_pass_start(name, 2, IndexPhase::Dual).await);
        assert_eq!(s, 404);
    }
    // Admin tokens may not confirm; proxies may not steer the rotation.
    assert_eq!(
        api_err(admin.index_confirm("k", 2, IndexPhase::Dual).await).0,
        403
    );
    assert_eq!(api_err(pa.index_cutover("k").await).0, 403);
    assert_eq!(api_err(pa.index_rotation_status("k").await).0, 403);
    assert_eq!(api_err(h.anonymous().index_rotate("k").await).0, 401);
    let aud = admin
        .create_token("aud", Role::Auditor, None)
        .await
        .unwrap();
    let aud = h.with_token(&aud.token);
    assert_eq!(api_err(aud.index_rotate("k").await).0, 403);
    assert!(aud.index_rotation_status("k").await.is_ok());

    pa.index_confirm("k", 2, IndexPhase::Dual).await.unwrap();
    pb.index_confirm("k", 2, IndexPhase::Dual).await.unwrap();
    let old = pa.index_pass_start("k", 2, IndexPhase::Dual).await.unwrap();
    let done = pa.index_pass_start("k", 2, IndexPhase::Dual).await.unwrap();
    assert_ne!(old.pass, done.pass);

    // Unknown pass ids, malformed ones, and another proxy's pass: the same 404.
    let unknown = format!("ip_{}", "0".repeat(32));
    for (proxy, pass) in [
        (&pa, unknown.as_str()),
        (&pa, "ip_xyz"),
        (&pb, old.pass.as_str()),
        (&px, old.pass.as_str()),
    ] {
        let (s, code, _) = api_err(pa_report(proxy, "k", pass, &DONE).await);
        assert_eq!((s, code.as_str()), (404, "not_found"), "{pass}");
    }
    // The right pass under another keyring's name: 404 too.
    admin.create_keyring("k2").await.unwrap();
    admin
        .set_proxy("proxy-a", &["k".into(), "k2".into()])
        .await
        .unwrap();
    let (s, ..) = api_err(pa.index_pass_report("k2", &old.pass, &DONE).await);
    assert_eq!(s, 404);

    pa.index_pass_report("k", &done.pass, &DONE).await.unwrap();
    let (s, code, _) = api_err(pa.index_pass_report("k", &done.pass, &DONE).await);
    assert_eq!((s, code.as_str()), (409, "index_pass_reported"));
    admin.index_cutover("k").await.unwrap();
    // The rotation moved on since `old` started: its report is stale, and not recorded.
    let (s, code, _) = api_err(pa.index_pass_report("k", &old.pass, &DONE).await);
    assert_eq!((s, code.as_str()), (409, "index_rotation_stale"));
    let st = admin.index_rotation_status("k").await.unwrap();
    let o = st.passes.iter().find(|p| p.id == old.pass).unwrap();
    assert_eq!((o.ended_at.as_ref(), o.complete), (None, None));

    // Malformed bodies: 400.
    let (s, _) = pa
        .raw(
            Method::POST,
            "/v1/keyrings/k/index/confirm",
            Some(br#"{"generation":2,"phase":"sideways"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(s, 400);
    let (s, _) = pa
        .raw(
            Method::POST,
            &format!("/v1/keyrings/k/index/passes/{}", old.pass),
            Some(br#"{"complete":true}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(s, 400);
}

async fn pa_report(
    proxy: &Client,
    name: &str,
    pass: &str,
    report: &IndexPassReport,
) -> Result<(), ClientError> {
    proxy.index_pass_report(name, pass, report).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_passes_are_capped() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("k").await.unwrap();
    admin.set_proxy("proxy-a", &["k".into()]).await.unwrap();
    let pa = h.proxy("proxy-a");
    admin.index_rotate("k").await.unwrap();
    pa.index_confirm("k", 2, IndexPhase::Dual).await.unwrap();
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(pa.index_pass_start("k", 2, IndexPhase::Dual).await.unwrap());
    }
    let (s, code, msg) = api_err(pa.index_pass_start("k", 2, IndexPhase::Dual).await);
    assert_eq!((s, code.as_str()), (409, "too_many_open_passes"), "{msg}");
    let n: i64 = rusqlite::Connection::open(h.db_path())
        .unwrap()
        .query_row("SELECT COUNT(*) FROM index_passes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 16);
    // Reporting one frees a slot.
    pa.index_pass_report("k", &open[0].pass, &PARTIAL)
        .await
        .unwrap();
    pa.index_pass_start("k", 2, IndexPhase::Dual).await.unwrap();
    assert_eq!(
        api_err(pa.index_pass_start("k", 2, IndexPhase::Dual).await).0,
        409
    );
    // Reported passes are bounded too: many start/report rounds keep the table small.
    for p in &open[1..] {
        pa.index_pass_report("k", &p.pass, &PARTIAL).await.unwrap();
    }
    for _ in 0..40 {
        let p = pa.index_pass_start("k", 2, IndexPhase::Dual).await.unwrap();
        pa.index_pass_report("k", &p.pass, &PARTIAL).await.unwrap();
    }
    let n: i64 = rusqlite::Connection::open(h.db_path())
        .unwrap()
        .query_row("SELECT COUNT(*) FROM index_passes", [], |r| r.get(0))
        .unwrap();
    assert!(n <= 32 + 1 + 16, "{n}");
}

/// A keyring carried over from before lineages (generation 1 = data-key version 2's
/// material): the version is protected from destruction until a rotation retires the
/// generation, and destroyable after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_derived_generation_frees_its_source_version() {
    let h = Harness::start().await;
    let admin = h.admin();
    let m = admin.create_keyring("old").await.unwrap();
    admin.rotate("old").await.unwrap();
    {
        // What migration 3 does for a keyring whose active version is 2.
        let c = rusqlite::Connection::open(h.db_path()).unwrap();
        c.execute(
            "UPDATE index_generations SET wrapped = NULL, source_version = 2 WHERE keyring_id = ?1",
            [&m.id],
        )
        .unwrap();
    }
    admin.set_proxy("proxy-a", &["old".into()]).await.unwrap();
    let pa = h.proxy("proxy-a");
    let v2 = pa.material("old", 2).await.unwrap();
    assert_eq!(pa.index_material("old", 1).await.unwrap().key, v2.key);
    admin.rotate("old").await.unwrap();
    admin.version_action("old", 2, "disable").await.unwrap();
    let (s, code, _) = api_err(admin.version_action("old", 2, "destroy").await);
    assert_eq!((s, code.as_str()), (409, "index_source"));

    admin.index_rotate("old").await.unwrap();
    for phase in [IndexPhase::Dual, IndexPhase::Cutover] {
        pa.index_confirm("old", 2, phase).await.unwrap();
        let p = pa.index_pass_start("old", 2, phase).await.unwrap();
        pa.index_pass_report("old", &p.pass, &DONE).await.unwrap();
        // Still protected while the generation is retiring.
        let (_, code, _) = api_err(admin.version_action("old", 2, "destroy").await);
        assert_eq!(code, "index_source");
        if phase == IndexPhase::Dual {
            admin.index_cutover("old").await.unwrap();
        }
    }
    let m = admin.index_finish("old").await.unwrap();
    assert_eq!(state_of(&m, 1), IndexState::Retired);
    assert_eq!(m.index.generations[0].derived_from_version, Some(2));
    assert_eq!(api_err(pa.index_material("old", 1).await).0, 410);
    let m = admin.version_action("old", 2, "destroy").await.unwrap();
    assert!(m
        .versions
        .iter()
        .any(|v| v.version == 2 && v.state == pgseal_keyserver::model::VersionState::Destroyed));
    assert!(pa.index_material("old", 2).await.is_ok());
}

/// Runs the CLI against the harness; returns (success, stdout, stderr).
async fn cli(h: &Harness, args: &[&str]) -> (bool, String, String) {
    let bin = env!("CARGO_BIN_EXE_pgseal-keyserver");
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args)
        .env("PGSEAL_KEYSERVER_URL", h.url())
        .env("PGSEAL_KEYSERVER_CA", h.ks_dir().join("pki").join("ca.pem"))
        .env("PGSEAL_KEYSERVER_TOKEN", &h.admin_token);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_rotate_index_start_status_cutover_finish() {
    let h = Harness::start().await;
    let admin = h.admin();
    admin.create_keyring("k").await.unwrap();
    admin.set_proxy("proxy-a", &["k".into()]).await.unwrap();
    let pa = h.proxy("proxy-a");

    let (ok, out, err) = cli(&h, &["keyring", "rotate-index", "k"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("blind-index rotation:    generation 1 -> 2, phase dual"),
        "{out}"
    );
    assert!(out.contains("g2    next"), "{out}");
    let (ok, out, _) = cli(&h, &["keyring", "show", "k"]).await;
    assert!(ok && out.contains("generation 1 -> 2, phase dual"), "{out}");

    let (ok, out, err) = cli(&h, &["keyring", "rotate-index", "k", "--status"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("rotation: generation 1 -> 2, phase dual"),
        "{out}"
    );
    assert!(
        out.contains("proxies confirmed phase dual: 0 of 1"),
        "{out}"
    );
    assert!(out.contains("proxy-a") && out.contains("MISSING"), "{out}");
    assert!(out.contains("passes: none"), "{out}");
    assert!(
        out.contains("--cutover` waits for: 1 of 1 granted proxies"),
        "{out}"
    );

    let (ok, _, err) = cli(&h, &["keyring", "rotate-index", "k", "--cutover"]).await;
    assert!(!ok);
    assert!(
        err.contains(
            "1 of 1 granted proxies have not confirmed phase dual of generation 2: proxy-a"
        ),
        "{err}"
    );
    let (ok, _, err) = cli(
        &h,
        &["keyring", "rotate-index", "k", "--cutover", "--finish"],
    )
    .await;
    assert!(!ok && err.contains("cannot be used with"), "{err}");

    pa.index_confirm("k", 2, IndexPhase::Dual).await.unwrap();
    let p = pa.index_pass_start("k", 2, IndexPhase::Dual).await.unwrap();
    pa.index_pass_report("k", &p.pass, &DONE).await.unwrap();
    let (ok, out, _) = cli(&h, &["keyring", "rotate-index", "k", "--status"]).await;
    assert!(ok);
    assert!(
        out.contains("proxies confirmed phase dual: 1 of 1"),
        "{out}"
    );
    assert!(
        out.contains(&p.pass) && out.contains("complete rewritten 7"),
        "{out}"
    );
    assert!(out.contains("--cutover` (ready)"), "{out}");
    let (ok, out, _) = cli(&h, &["keyring", "rotate-index", "k", "--status", "--json"]).await;
    assert!(ok, "{out}");
    let st: pgseal_keyserver::model::IndexRotationStatus = serde_json::from_str(&out).unwrap();
    assert_eq!(st.passes.len(), 1);
    assert!(st.proxies[0].confirmed);

    let (ok, out, err) = cli(&h, &["keyring", "rotate-index", "k", "--cutover"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("phase cutover") && out.contains("g1    retiring"),
        "{out}"
    );
    pa.index_confirm("k", 2, IndexPhase::Cutover).await.unwrap();
    let p = pa
        .index_pass_start("k", 2, IndexPhase::Cutover)
        .await
        .unwrap();
    pa.index_pass_report("k", &p.pass, &DONE).await.unwrap();
    let (ok, out, err) = cli(&h, &["keyring", "rotate-index", "k", "--finish"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("g1    retired") && !out.contains("blind-index rotation:"),
        "{out}"
    );
    let (ok, out, _) = cli(&h, &["keyring", "rotate-index", "k", "--status"]).await;
    assert!(
        ok && out.contains("no blind-index key rotation in progress"),
        "{out}"
    );
}
