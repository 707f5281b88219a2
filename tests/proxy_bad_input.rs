//! Bad input: truncated and malformed messages, wrong lengths, garbage after startup, oversized
//! messages, a SCRAM exchange with malformed fields. Each gets an error (FATAL ErrorResponse) or a
//! clean close, the proxy never panics, and other clients keep working throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use bytes::{BufMut, BytesMut};
use support::proxy::proxy_panicked;
use support::raw::{self, Raw};
use support::{connect, env, APP_PASSWORD, APP_USER};

/// A client that stays connected through all the abuse and must keep working.
async fn bystander(db: &str) -> tokio_postgres::Client {
    connect(&env().conn_str(db)).await
}

async fn still_serving(c: &tokio_postgres::Client, db: &str) {
    let v: i32 = c.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42, "existing connection still works");
    let fresh = connect(&env().conn_str(db)).await;
    let v: String = fresh
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, APP_USER, "new connections still work");
    assert!(!proxy_panicked(), "the proxy panicked");
}

fn startup_body(code: u32, rest: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u32((8 + rest.len()) as u32);
    b.put_u32(code);
    b.put_slice(rest);
    b
}

#[tokio::test]
async fn malformed_startup_packets() {
    let env = env();
    let db = env.new_db("badstartup");
    let c = bystander(&db).await;
    let addr = env.proxy.addr;

    // Length far above the startup limit.
    let mut r = Raw::connect(addr).await;
    r.send(&[0, 1, 0, 0, 0, 3, 0, 0]).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // Length below the minimum.
    let mut r = Raw::connect(addr).await;
    r.send(&[0, 0, 0, 2]).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // Unknown protocol version.
    let mut r = Raw::connect(addr).await;
    r.send(&startup_body(0x0002_0000, b"user\0app\0\0")).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // Parameters without terminator / key without value.
    let mut r = Raw::connect(addr).await;
    r.send(&startup_body(196_608, b"user\0app")).await;
    assert_eq!(r.expect_fatal().await, "08P01");
    let mut r = Raw::connect(addr).await;
    r.send(&startup_body(196_608, b"user\0\0")).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // Invalid UTF-8 in a parameter.
    let mut r = Raw::connect(addr).await;
    r.send(&startup_body(196_608, b"user\0\xff\xfe\0\0")).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // No user name.
    let mut r = Raw::connect(addr).await;
    r.send(&startup_body(196_608, b"database\0x\0\0")).await;
    let m = r.expect(b'E').await;
    assert_eq!(m.field(b'S').as_deref(), Some("FATAL"));

    // Truncated: announce 100 bytes, send 10, close.
    let mut r = Raw::connect(addr).await;
    r.send(&[0, 0, 0, 100, 0, 3, 0, 0, b'u', b's']).await;
    drop(r);

    // Garbage that is not a startup packet at all (an HTTP request).
    let mut r = Raw::connect(addr).await;
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // Direct TLS (a TLS ClientHello first) is not supported: error, not a hang.
    let mut r = Raw::connect(addr).await;
    r.send(&[0x16, 0x03, 0x01, 0x00, 0x10, 1, 2, 3]).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    still_serving(&c, &db).await;
}

async fn scram_start(addr: std::net::SocketAddr, db: &str) -> Raw {
    let mut r = Raw::connect(addr).await;
    r.send(&raw::startup(APP_USER, db)).await;
    let m = r.expect(b'R').await;
    assert_eq!(&m.body[..4], &10i32.to_be_bytes());
    r
}

fn sasl_initial(mechanism: &str, data: &[u8], declared_len: i32) -> Vec<u8> {
    let mut body = raw::cstr(mechanism);
    body.extend_from_slice(&declared_len.to_be_bytes());
    body.extend_from_slice(data);
    body
}

#[tokio::test]
async fn malformed_scram_exchanges() {
    let env = env();
    let db = env.new_db("badscram");
    let c = bystander(&db).await;
    let addr = env.proxy.addr;
    let before = env.proxy.metrics.auth_failures();

    let first = b"n,,n=,r=clientnonce1234";
    let cases: Vec<Vec<u8>> = vec![
        sasl_initial("SCRAM-SHA-1", first, first.len() as i32),
        sasl_initial("SCRAM-SHA-256", first, 999),
        sasl_initial("SCRAM-SHA-256", first, -1),
        sasl_initial("SCRAM-SHA-256", b"garbage", 7),
        sasl_initial("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc", 32),
        sasl_initial("SCRAM-SHA-256", b"n,a=admin,n=,r=abc", 18),
        sasl_initial("SCRAM-SHA-256", b"n,,n=,r=", 8),
        sasl_initial("SCRAM-SHA-256", b"n,,n=,r=\xff\xfe", 10),
        b"SCRAM-SHA-256".to_vec(), // no terminator
        vec![],
    ];
    for body in cases {
        let mut r = scram_start(addr, &db).await;
        r.send_msg(b'p', &body).await;
        assert_eq!(r.expect_fatal().await, "08P01", "case {body:?}");
    }

    // A good client-first, then malformed client-final messages.
    let finals: Vec<&[u8]> = vec![
        b"c=biws",
        b"c=biws,r=wrongnonce,p=AAAA",
        b"c=xxxx,r=clientnonce1234,p=AAAA",
        b"c=biws,r=clientnonce1234,p=!!!notbase64",
        b"\xff\xfe",
        b"",
    ];
    for fin in finals {
        let mut r = scram_start(addr, &db).await;
        r.send_msg(
            b'p',
            &sasl_initial("SCRAM-SHA-256", first, first.len() as i32),
        )
        .await;
        let m = r.expect(b'R').await;
        assert_eq!(&m.body[..4], &11i32.to_be_bytes());
        r.send_msg(b'p', fin).await;
        let code = r.expect_fatal().await;
        assert!(code == "08P01" || code == "28P01", "final {fin:?}: {code}");
    }

    // A proof of the right shape that is wrong: the uniform authentication error.
    let mut r = scram_start(addr, &db).await;
    r.send_msg(
        b'p',
        &sasl_initial("SCRAM-SHA-256", first, first.len() as i32),
    )
    .await;
    let m = r.expect(b'R').await;
    let server_first = String::from_utf8(m.body[4..].to_vec()).unwrap();
    let nonce = server_first
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .unwrap();
    let fin = format!("c=biws,r={nonce},p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    r.send_msg(b'p', fin.as_bytes()).await;
    assert_eq!(r.expect_fatal().await, "28P01");

    // Wrong message type during authentication; oversized password message.
    let mut r = scram_start(addr, &db).await;
    r.send_msg(b'Q', &raw::cstr("SELECT 1")).await;
    assert_eq!(r.expect_fatal().await, "08P01");
    let mut r = scram_start(addr, &db).await;
    let mut b = BytesMut::new();
    b.put_u8(b'p');
    b.put_u32(1_000_000);
    r.send(&b).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // Truncated in the middle of the SASL message.
    let mut r = scram_start(addr, &db).await;
    r.send(&[b'p', 0, 0, 0, 50, b'S', b'C']).await;
    drop(r);

    assert!(env.proxy.metrics.auth_failures() > before);
    still_serving(&c, &db).await;
}

#[tokio::test]
async fn garbage_wrong_lengths_and_oversized_messages_after_login() {
    let env = env();
    let db = env.new_db("badmsg");
    let c = bystander(&db).await;
    let addr = env.proxy.addr;
    let before = env.proxy.metrics.protocol_errors();

    // Pure garbage after startup: 0xff type with a huge length.
    let mut r = Raw::login(addr, APP_USER, APP_PASSWORD, &db).await;
    r.send(&[0xff; 64]).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // Length word below 4.
    let mut r = Raw::login(addr, APP_USER, APP_PASSWORD, &db).await;
    r.send(&[b'Q', 0, 0, 0, 2]).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // A small-limit message (Sync) claiming 20 kB.
    let mut r = Raw::login(addr, APP_USER, APP_PASSWORD, &db).await;
    r.send(&[b'S', 0, 0, 0x4e, 0x20]).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // A Query claiming more than PostgreSQL's 1 GiB limit.
    let mut r = Raw::login(addr, APP_USER, APP_PASSWORD, &db).await;
    r.send(&[b'Q', 0x40, 0, 0, 0]).await;
    assert_eq!(r.expect_fatal().await, "08P01");

    // A valid query, then garbage in the same write: the query's result may arrive, then FATAL.
    let mut r = Raw::login(addr, APP_USER, APP_PASSWORD, &db).await;
    let mut b = BytesMut::new();
    raw::msg(&mut b, b'Q', &raw::cstr("SELECT 1"));
    b.put_slice(&[b'B', 0, 0, 0, 1]);
    r.send(&b).await;
    let mut saw_fatal = false;
    while let Some(m) = r.next().await {
        if m.tag == b'E' && m.field(b'S').as_deref() == Some("FATAL") {
            saw_fatal = true;
        }
    }
    assert!(saw_fatal);

    // A message PostgreSQL does not know is forwarded raw; the server rejects it.
    let mut r = Raw::login(addr, APP_USER, APP_PASSWORD, &db).await;
    r.send_msg(b'y', b"hello").await;
    let m = r.expect(b'E').await;
    assert_eq!(m.field(b'C').as_deref(), Some("08P01"));

    // Malformed body with a valid frame (Bind with a truncated parameter) reaches PostgreSQL,
    // which answers with an error; the proxy does not decode it and does not choke.
    let mut r = Raw::login(addr, APP_USER, APP_PASSWORD, &db).await;
    r.send_msg(b'P', &raw::parse("", "SELECT $1::text")).await;
    r.send_msg(b'B', &[0, 0, 0, 0, 0, 1, 0, 0, 0, 9, b'x'])
        .await;
    r.send_msg(b'S', &[]).await;
    r.expect(b'1').await;
    let m = r.expect(b'E').await;
    assert_eq!(m.field(b'C').as_deref(), Some("08P01"));

    // Truncated message then close.
    let mut r = Raw::login(addr, APP_USER, APP_PASSWORD, &db).await;
    r.send(&[b'Q', 0, 0, 0, 100, b'S', b'E']).await;
    drop(r);

    assert!(env.proxy.metrics.protocol_errors() >= before + 4);
    still_serving(&c, &db).await;
}

#[tokio::test]
async fn function_call_messages_forward_raw() {
    // FunctionCall ('F') is what libpq's large-object API uses; pgwire cannot decode it, the
    // proxy's own framing forwards it.
    let env = env();
    let db = env.new_db("fastpath");
    let mut r = Raw::login(env.proxy.addr, APP_USER, APP_PASSWORD, &db).await;
    let mut body = Vec::new();
    body.extend_from_slice(&2026u32.to_be_bytes()); // pg_backend_pid()
    body.extend_from_slice(&0u16.to_be_bytes()); // no argument format codes
    body.extend_from_slice(&0u16.to_be_bytes()); // no arguments
    body.extend_from_slice(&0u16.to_be_bytes()); // text result
    r.send_msg(b'F', &body).await;
    let msgs = r.until(b'Z').await;
    assert_eq!(msgs[0].tag, b'V', "FunctionCallResponse");
    let len = i32::from_be_bytes(msgs[0].body[..4].try_into().unwrap());
    let pid: i32 = std::str::from_utf8(&msgs[0].body[4..4 + len as usize])
        .unwrap()
        .parse()
        .unwrap();
    assert!(pid > 0);
    assert!(!proxy_panicked());
}

#[tokio::test]
async fn uniform_error_for_every_failed_login() {
    let env = env();
    let db = env.new_db("uniform");
    let port = env.proxy.port();
    let try_login = |user: &str, password: &str, dbname: &str| {
        format!("host=127.0.0.1 port={port} user={user} password={password} dbname={dbname}")
    };
    let mut seen = Vec::new();
    for (user, pw, dbname) in [
        (APP_USER, "wrong-password", db.as_str()),
        (APP_USER, APP_PASSWORD, "no_such_database"),
        ("nobody", APP_PASSWORD, db.as_str()),
    ] {
        let err = tokio_postgres::connect(&try_login(user, pw, dbname), tokio_postgres::NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user}/{dbname} logged in"));
        let db_err = err.as_db_error().expect("an ErrorResponse");
        assert_eq!(db_err.code().code(), "28P01");
        assert_eq!(db_err.severity(), "FATAL");
        seen.push(db_err.message().replace(user, "<user>"));
    }
    assert!(
        seen.iter().all(|m| m == &seen[0]),
        "messages differ: {seen:?}"
    );
    assert!(!seen[0].contains("database"), "{}", seen[0]);
}
