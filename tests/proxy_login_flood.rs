//! Login capacity of the `pgseal-proxy serve` binary (real PostgreSQL behind it), with its
//! default limits:
//!
//! - 1,000 connections that never log in (silent sockets, an SSLRequest then nothing, a TLS
//!   handshake left hanging, a startup packet sent a byte a second), plus about 100 new silent
//!   ones a second throughout: new clients still log in and query, every one of them; their login
//!   latency is printed (p50/p99) next to the same figures without the flood. Afterwards every
//!   flood connection has been closed by the proxy.
//! - Connections that have not authenticated never take a logged-in session's place: with
//!   `max_connections = 2` and 50 silent sockets open, two clients log in, the third gets FATAL
//!   53300 "sorry, too many clients already" — after authenticating. Slow starters are closed by
//!   the default start-up timeout (5 s) however they dribble.
//!
//! The test process holds ~1,300 sockets at once (the soft RLIMIT_NOFILE must allow it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::certs::TestCa;
use support::{
    proxy_env, proxy_toml, sqlstate, PgCluster, PgOptions, ProxyProcess, APP_PASSWORD, APP_USER,
    UPSTREAM_PASSWORD,
};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

struct Env {
    _dir: tempfile::TempDir,
    _pg: PgCluster,
    proxy: ProxyProcess,
}

/// PostgreSQL and a proxy offering TLS (`preferred`), with `limits` as the `[limits]` body.
fn start(limits: &str) -> Env {
    let pg = PgCluster::start(PgOptions {
        max_connections: Some(100),
        ..Default::default()
    });
    pg.create_role(APP_USER, UPSTREAM_PASSWORD, "scram-sha-256");
    pg.create_database("flood", APP_USER);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("pgseal flood test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let cert = support::write_file(dir.path(), "proxy.crt", &leaf.cert_pem);
    let key = support::write_file(dir.path(), "proxy.key", &leaf.key_pem);
    let mut extra = format!(
        "[tls]\nmode = \"preferred\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    if !limits.is_empty() {
        extra.push_str(&format!("[limits]\n{limits}\n"));
    }
    let toml = proxy_toml(
        &format!(
            "host = \"{}\"\nport = {}",
            pg.socket_dir().display(),
            pg.port
        ),
        &extra,
    );
    let proxy = ProxyProcess::start(&toml, &proxy_env());
    Env {
        _dir: dir,
        _pg: pg,
        proxy,
    }
}

fn conn_str(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname=flood sslmode=disable connect_timeout=10"
    )
}

/// Logs in and runs one query; the time to a usable session (login) or the error.
async fn login_and_query(port: u16) -> Result<Duration, tokio_postgres::Error> {
    let t = Instant::now();
    let (client, conn) = tokio_postgres::connect(&conn_str(port), tokio_postgres::NoTls).await?;
    let took = t.elapsed();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let rows = client.query("SELECT 40 + $1::int4", &[&2i32]).await?;
    assert_eq!(rows[0].get::<_, i32>(0), 42);
    drop(client);
    let _ = driver.await;
    Ok(took)
}

/// `n` logins by `workers` concurrent clients; every one must succeed. Latencies, sorted.
async fn logins(port: u16, n: usize, workers: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..n / workers {
                match login_and_query(port).await {
                    Ok(d) => out.push(d),
                    Err(e) => panic!(
                        "a real login failed: {} {e:?}",
                        e.code().map(|c| c.code().to_owned()).unwrap_or_default()
                    ),
                }
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn pct(sorted: &[Duration], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1000.0
}

async fn open(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connect to the proxy (raise RLIMIT_NOFILE?): {e}"))
}

/// Whether the proxy closed `s` (EOF or reset within 200 ms; bytes it sent are skipped).
async fn closed_by_proxy(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// A startup packet sent one byte a second until the proxy closes the connection (at most
/// `max` seconds); returns how long the proxy let it dribble.
async fn dribble(port: u16, max: Duration) -> Duration {
    let mut s = open(port).await;
    let mut pkt = vec![0u8, 0, 0, 0, 0, 3, 0, 0];
    pkt.extend_from_slice(b"user\0app\0database\0flood\0\0");
    let len = u32::try_from(pkt.len()).unwrap().to_be_bytes();
    pkt[..4].copy_from_slice(&len);
    let t = Instant::now();
    for b in pkt.iter().cycle() {
        if t.elapsed() > max || s.write_all(&[*b]).await.is_err() {
            break;
        }
        if closed_by_proxy(&mut s).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    t.elapsed()
}

/// An SSLRequest, the proxy's `S`, then the first bytes of a TLS record and nothing more.
async fn hanging_tls(port: u16) -> TcpStream {
    let mut s = open(port).await;
    s.write_all(&SSL_REQUEST).await.unwrap();
    let mut b = [0u8; 1];
    // The proxy answers `S` unless it already evicted this connection (then EOF).
    if tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .is_ok_and(|r| matches!(r, Ok(1)))
    {
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_logins_succeed_while_a_thousand_connections_never_log_in() {
    let env = start("");
    let port = env.proxy.port;

    let quiet = logins(port, 40, 2).await;
    eprintln!(
        "logins without flood: n={} p50={:.1} ms p99={:.1} ms",
        quiet.len(),
        pct(&quiet, 50),
        pct(&quiet, 99)
    );

    // The flood: 1,000 connections that never log in.
    let mut held = Vec::new();
    for i in 0..900 {
        let mut s = open(port).await;
        if i % 9 == 0 {
            s.write_all(&SSL_REQUEST).await.unwrap();
        }
        held.push(s);
    }
    for _ in 0..50 {
        held.push(hanging_tls(port).await);
    }
    let dribblers: Vec<_> = (0..50)
        .map(|_| tokio::spawn(dribble(port, Duration::from_secs(20))))
        .collect();
    // ... and ~100 new silent connections a second while the clients log in.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let t = Instant::now();
            let mut recent = std::collections::VecDeque::new();
            let mut opened = 0usize;
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(30) {
                recent.push_back(open(port).await);
                opened += 1;
                if recent.len() > 300 {
                    recent.pop_front();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            opened
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let flooded = logins(port, 100, 4).await;
    stop.store(true, Ordering::Relaxed);
    let churned = churn.await.unwrap();
    eprintln!(
        "logins with 1,000 connections that never log in + {churned} new ones during the logins: \
         n={} p50={:.1} ms p99={:.1} ms (all succeeded)",
        flooded.len(),
        pct(&flooded, 50),
        pct(&flooded, 99)
    );
    assert_eq!(flooded.len(), 100);

    // Every flood connection is closed by the proxy: evicted, or at the start-up timeout (5 s
    // by default) however it dribbles.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut open_left = 0;
    for s in &mut held {
        if !closed_by_proxy(s).await {
            open_left += 1;
        }
    }
    assert_eq!(open_left, 0, "flood connections the proxy still holds");
    for d in dribblers {
        let lasted = d.await.unwrap();
        assert!(
            lasted < Duration::from_secs(7),
            "a byte-a-second start-up lasted {lasted:?}"
        );
    }
    // And the proxy still serves.
    login_and_query(port).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_never_take_a_session_slot() {
    let env = start("max_connections = 2");
    let port = env.proxy.port;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(open(port).await);
    }
    let sslreq = {
        let mut s = open(port).await;
        s.write_all(&SSL_REQUEST).await.unwrap();
        s
    };
    let tls = hanging_tls(port).await;
    let since = Instant::now();
    let slow = tokio::spawn(dribble(port, Duration::from_secs(20)));

    let mut sessions = Vec::new();
    for _ in 0..2 {
        let (c, conn) = tokio_postgres::connect(&conn_str(port), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("login with 50 silent sockets open: {e:?}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        c.simple_query("SELECT 1").await.unwrap();
        sessions.push(c);
    }
    let e = tokio_postgres::connect(&conn_str(port), tokio_postgres::NoTls)
        .await
        .err()
        .expect("a third session beyond max_connections = 2");
    assert_eq!(sqlstate(&e), "53300", "{e:?}");
    assert!(
        e.as_db_error()
            .is_some_and(|d| d.message() == "sorry, too many clients already"),
        "{e:?}"
    );
    // A wrong password still gets the authentication error, not the capacity one (the cap is
    // checked after authentication).
    let bad = conn_str(port).replace(APP_PASSWORD, "wrong");
    let e = tokio_postgres::connect(&bad, tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e), "28P01", "{e:?}");
    drop(sessions.pop());
    // The slot comes back once the session ends.
    let t = Instant::now();
    loop {
        match login_and_query(port).await {
            Ok(_) => break,
            Err(e) => assert_eq!(sqlstate(&e), "53300", "{e:?}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the session slot was not released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Slow starters are closed at the default start-up timeout (5 s), dribbling or not.
    let lasted = slow.await.unwrap();
    eprintln!(
        "a byte-a-second start-up was closed after {:.1} s",
        lasted.as_secs_f64()
    );
    assert!(
        lasted >= Duration::from_secs(4) && lasted < Duration::from_secs(7),
        "a byte-a-second start-up lasted {lasted:?} (startup_timeout_ms defaults to 5000)"
    );
    let wait = Duration::from_secs(6).saturating_sub(since.elapsed());
    tokio::time::sleep(wait).await;
    for (what, mut s) in [
        ("an SSLRequest then nothing", sslreq),
        ("a hanging TLS handshake", tls),
    ] {
        assert!(closed_by_proxy(&mut s).await, "{what} still open after 6 s");
    }
    for s in &mut silent {
        assert!(
            closed_by_proxy(s).await,
            "a silent socket still open after 6 s"
        );
    }
}
