//! Resources a logged-in user can make the proxy hold are bounded (issue 13, item 6): many
//! distinct large statements on a protected table do not grow the proxy's memory past the plan
//! cache's byte budget, and a statement over `encryption.max_statement_bytes` is refused with
//! 54000 before any analysis, the connection staying usable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use support::keyserver::ColumnSpec;
use support::{sqlstate, EncEnv};

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_statements_stay_within_the_plan_cache_budget() {
    let env = EncEnv::start(&[ColumnSpec::new("public.big.secret", "text", "bigring").indexed()]);
    let c = env.client().await;
    c.batch_execute("CREATE TABLE big (id int4, secret text); CREATE INDEX ON big (secret)")
        .await
        .unwrap();
    let pid = env.proxy.pid().unwrap();
    // Warm up: one statement of each kind, so allocator arenas exist before the baseline.
    let filler = "x".repeat(1024 * 1024);
    c.simple_query(&format!("SELECT id FROM big WHERE secret = 'warm{filler}'"))
        .await
        .unwrap();
    let before = rss_kib(pid);
    // 150 distinct statements of 1 MiB, each analysed and cached as a rewrite: unbounded, the
    // cache alone would keep about 450 MiB (text and template of each).
    for i in 0..150 {
        let sql = format!("SELECT id FROM big WHERE secret = 'v{i}{filler}'");
        c.simple_query(&sql).await.unwrap();
    }
    drop(c);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = rss_kib(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    println!(
        "proxy RSS {before} KiB -> {after} KiB (+{grown_mib} MiB) after 150 x 1 MiB statements"
    );
    // The cache's budget is 64 MiB; allow the allocator its slack.
    assert!(grown_mib < 160, "the proxy grew by {grown_mib} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_the_limit_is_refused_and_the_session_goes_on() {
    let env = EncEnv::start(&[ColumnSpec::new("public.lim.secret", "text", "limring")]);
    let c = env.client().await;
    c.batch_execute("CREATE TABLE lim (id int4, secret text)")
        .await
        .unwrap();
    let marker = "overlimitMARKER";
    // Default limit: 8 MiB.
    let sql = format!(
        "INSERT INTO lim (id, secret) VALUES (1, '{marker}{}')",
        "y".repeat(9 * 1024 * 1024)
    );
    let e = c.simple_query(&sql).await.unwrap_err();
    assert_eq!(sqlstate(&e), "54000", "{e:?}");
    // The same text on a plain table is not an encrypting statement, but the limit applies to
    // every statement of a session to the protected database.
    let e = c
        .simple_query(&format!("SELECT '{}'", "z".repeat(9 * 1024 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "54000");
    // The connection stays usable.
    c.simple_query("INSERT INTO lim (id, secret) VALUES (2, 'ok')")
        .await
        .unwrap();
    assert!(!env.pg.log().contains(marker));
}
