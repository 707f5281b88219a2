//! The keyserver grace period, measured through the whole system (real PostgreSQL, a real
//! pgseal-keyserver over mTLS, the `pgseal-proxy serve` binary with the default 25 s long poll):
//!
//! - The keyserver is killed while a long poll is open: statements on protected columns keep
//!   working for the configured grace, counted from the first failed contact (±1 s), then fail
//!   closed with 58000 naming the keyring; once the keyserver answers again they work within 2 s.
//! - The keyserver hangs (SIGSTOP) without closing its connections: the liveness check (every
//!   second) notices, and the grace ends between the configured time and 2 s after it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::keyserver::ColumnSpec;
use support::{db_message, proxy_env, secret, sqlstate, EncEnv, ProxyProcess};

const KR: &str = "graceling";
/// Grace period of the proxy under test (seconds).
const GRACE: u64 = 5;
/// Allowed error of the grace period's end.
const SLACK: Duration = Duration::from_secs(1);
/// The longest a recovery may take once the keyserver answers again.
const RECOVERY: Duration = Duration::from_secs(2);

fn columns() -> Vec<ColumnSpec> {
    vec![ColumnSpec::new("public.vault.secret", "text", KR).indexed()]
}

/// Restarts the proxy of `env` with its configuration edited by `edit` (the harness writes a
/// 1 s long poll; these tests run the production default of 25 s, where the grace bug showed).
fn restart_proxy(env: &mut EncEnv, edit: &[(&str, &str)]) {
    let mut toml = std::fs::read_to_string(env.proxy.config_path()).unwrap();
    let listen = toml
        .lines()
        .find(|l| l.starts_with("listen = "))
        .unwrap()
        .to_owned();
    toml = toml.replace(&listen, "listen = \"127.0.0.1:0\"");
    for (from, to) in edit {
        assert!(toml.contains(from), "{from} not in the proxy configuration");
        toml = toml.replace(from, to);
    }
    env.proxy = ProxyProcess::start(&toml, &proxy_env());
}

/// One statement that needs the key (a blind-index lookup and a decryption): `Ok` with the row,
/// or the error, which must be the fail-closed one naming the keyring.
async fn probe(c: &tokio_postgres::Client, value: &str) -> Result<(), String> {
    match c
        .query("SELECT secret FROM vault WHERE secret = $1", &[&value])
        .await
    {
        Ok(rows) => {
            assert_eq!(rows.len(), 1, "the lookup finds the row");
            assert_eq!(
                rows[0].get::<_, String>(0),
                value,
                "plaintext, never ciphertext"
            );
            Ok(())
        }
        Err(e) => {
            assert_eq!(sqlstate(&e), "58000", "fail closed: {e:?}");
            let msg = db_message(&e);
            assert!(msg.contains(KR), "the error names the keyring: {msg}");
            Err(msg)
        }
    }
}

/// Runs [`probe`] every 100 ms until it fails (at most `GRACE + 6` s after `down`); returns the
/// time of the last success and of the first failure, both from `down`.
async fn until_fail_closed(
    c: &tokio_postgres::Client,
    value: &str,
    down: Instant,
) -> (Duration, Duration, String) {
    let mut last_ok = Duration::ZERO;
    loop {
        let at = down.elapsed();
        match probe(c, value).await {
            Ok(()) => last_ok = at,
            Err(msg) => return (last_ok, at, msg),
        }
        assert!(
            at < Duration::from_secs(GRACE + 6),
            "still serving keys {at:?} after the keyserver went away (grace {GRACE} s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs [`probe`] every 50 ms until it works (at most 10 s); the time from `back`.
async fn until_working(c: &tokio_postgres::Client, value: &str, back: Instant) -> Duration {
    loop {
        if probe(c, value).await.is_ok() {
            return back.elapsed();
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "protected columns still failed 10 s after the keyserver answered again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `late`: how much later than the configured grace the end may come besides [`SLACK`] (a hung
/// keyserver is noticed by the liveness check, made every second).
fn assert_grace(last_ok: Duration, first_fail: Duration, late: Duration, what: &str) {
    let grace = Duration::from_secs(GRACE);
    eprintln!(
        "{what}: configured grace {GRACE} s; last success {:.2} s, first fail-closed {:.2} s after",
        last_ok.as_secs_f64(),
        first_fail.as_secs_f64()
    );
    assert!(
        last_ok + SLACK >= grace,
        "{what}: protected columns failed {first_fail:?} after, before the grace of {GRACE} s ran out"
    );
    assert!(
        first_fail <= grace + late + SLACK,
        "{what}: protected columns kept working until {first_fail:?} after, beyond the grace of {GRACE} s"
    );
}

async fn setup(env: &EncEnv, s: &mut Vec<String>) -> (tokio_postgres::Client, String) {
    let c = env.client().await;
    c.batch_execute("CREATE TABLE vault (id int4 PRIMARY KEY, secret text)")
        .await
        .unwrap();
    let v = secret(s, "grace");
    c.execute("INSERT INTO vault (id, secret) VALUES (1, $1)", &[&v])
        .await
        .unwrap();
    probe(&c, &v).await.unwrap();
    // Let the long poll that started with the proxy run for a while: the grace must not count
    // from when it began.
    tokio::time::sleep(Duration::from_secs(3)).await;
    (c, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_counts_from_the_keyserver_going_away_and_recovery_is_fast() {
    let mut env = EncEnv::start_with_grace(&columns(), GRACE);
    restart_proxy(
        &mut env,
        &[("poll_wait_seconds = 1", "poll_wait_seconds = 25")],
    );
    let mut s = Vec::new();
    let (c, v) = setup(&env, &mut s).await;

    tokio::task::block_in_place(|| env.ks.stop());
    let down = Instant::now();
    let (last_ok, first_fail, msg) = until_fail_closed(&c, &v, down).await;
    assert_grace(last_ok, first_fail, Duration::ZERO, "keyserver killed");
    eprintln!("fail-closed error: {msg}");
    // Writes fail closed too, and nothing is written.
    let lost = secret(&mut s, "lost");
    let e = c
        .execute("INSERT INTO vault (id, secret) VALUES (2, $1)", &[&lost])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "58000", "{e:?}");
    assert!(db_message(&e).contains(KR), "{e:?}");

    let spawned = Instant::now();
    tokio::task::block_in_place(|| env.ks.resume());
    let answering = Instant::now();
    let took = until_working(&c, &v, answering).await;
    eprintln!(
        "keyserver restarted (its start-up took {:.2} s): protected columns work again {:.2} s after it answers",
        answering.duration_since(spawned).as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(
        took <= RECOVERY,
        "recovery took {took:?} after the keyserver answered again"
    );
    // And writes work again.
    c.execute("INSERT INTO vault (id, secret) VALUES (3, $1)", &[&lost])
        .await
        .unwrap();
    let ids = tokio::task::block_in_place(|| {
        env.direct("SELECT string_agg(id::text, ',' ORDER BY id) FROM vault")
    });
    assert_eq!(
        ids.trim(),
        "1,3",
        "nothing written while keys were unavailable"
    );
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_counts_from_a_hung_keyserver() {
    let mut env = EncEnv::start_with_grace(&columns(), GRACE);
    restart_proxy(
        &mut env,
        &[(
            "poll_wait_seconds = 1",
            "poll_wait_seconds = 25\ntimeout_ms = 2000",
        )],
    );
    let mut s = Vec::new();
    let (c, v) = setup(&env, &mut s).await;

    let pid = env.ks.pid().unwrap();
    signal(pid, "-STOP");
    let down = Instant::now();
    let res = until_fail_closed(&c, &v, down).await;
    signal(pid, "-CONT");
    let answering = Instant::now();
    let (last_ok, first_fail, _) = res;
    assert_grace(
        last_ok,
        first_fail,
        Duration::from_secs(1),
        "keyserver hung (SIGSTOP)",
    );
    let took = until_working(&c, &v, answering).await;
    eprintln!(
        "keyserver resumed (SIGCONT): protected columns work again {:.2} s after",
        took.as_secs_f64()
    );
    assert!(took <= RECOVERY, "recovery took {took:?}");
}
