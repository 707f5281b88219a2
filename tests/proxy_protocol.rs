//! Protocol fidelity through pgseal-proxy against a real PostgreSQL 15: simple and extended
//! protocol (text and binary), pipelining with one Sync, errors mid-pipeline, transactions, COPY
//! both ways, LISTEN/NOTIFY, notices, large streamed results, cancel, 200 concurrent clients and a
//! client that disconnects in the middle of a large result.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use support::raw::{self, Raw};
use support::{connect, env, APP_PASSWORD, APP_USER};
use tokio_postgres::SimpleQueryMessage;

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn simple_query_multi_statement_and_transactions() {
    let env = env();
    let db = env.new_db("simple");
    let c = connect(&env.conn_str(&db)).await;
    let msgs = c
        .simple_query(
            "CREATE TABLE t (id int primary key, v text); \
             INSERT INTO t VALUES (1, 'a'), (2, NULL); \
             SELECT id, v FROM t ORDER BY id; SELECT 'two', 2",
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&msgs),
        vec![
            vec![Some("1".into()), Some("a".into())],
            vec![Some("2".into()), None],
            vec![Some("two".into()), Some("2".into())],
        ]
    );
    // Transactions: rollback undoes, commit keeps; an error aborts the transaction.
    c.batch_execute("BEGIN; INSERT INTO t VALUES (3, 'c'); ROLLBACK")
        .await
        .unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (4, 'd'); COMMIT")
        .await
        .unwrap();
    let err = c
        .batch_execute("BEGIN; INSERT INTO t VALUES (1, 'dup')")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23505");
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25P02", "in failed transaction");
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

#[tokio::test]
async fn extended_protocol_binary_prepared_statements() {
    let env = env();
    let db = env.new_db("extended");
    let c = connect(&env.conn_str(&db)).await;
    c.batch_execute("CREATE TABLE p (id int8, name text, score float8, data bytea, note text)")
        .await
        .unwrap();
    let ins = c
        .prepare("INSERT INTO p VALUES ($1, $2, $3, $4, $5)")
        .await
        .unwrap();
    for i in 0..50i64 {
        let name = format!("name-{i}");
        let data = vec![i as u8; (i as usize) * 10];
        let score = i as f64 / 3.0;
        c.execute(&ins, &[&i, &name, &score, &data, &None::<String>])
            .await
            .unwrap();
    }
    let sel = c
        .prepare("SELECT id, name, score, data FROM p WHERE id >= $1 ORDER BY id")
        .await
        .unwrap();
    let rows = c.query(&sel, &[&45i64]).await.unwrap();
    assert_eq!(rows.len(), 5);
    let last = &rows[4];
    assert_eq!(last.get::<_, i64>(0), 49);
    assert_eq!(last.get::<_, String>(1), "name-49");
    assert!((last.get::<_, f64>(2) - 49.0 / 3.0).abs() < 1e-12);
    assert_eq!(last.get::<_, Vec<u8>>(3), vec![49u8; 490]);
    // Text format through the simple protocol gives the same values.
    let msgs = c
        .simple_query("SELECT name, encode(data, 'hex') FROM p WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(
        rows_of(&msgs),
        vec![vec![
            Some("name-3".into()),
            Some("030303030303030303030303030303030303030303030303030303030303".into())
        ]]
    );
    // Concurrent queries on one connection are pipelined by tokio-postgres.
    let futs: Vec<_> = (0..20i64)
        .map(|i| {
            let c = &c;
            let sel = &sel;
            async move { c.query(sel, &[&i]).await.unwrap().len() }
        })
        .collect();
    let counts = futures_util::future::join_all(futs).await;
    assert_eq!(counts, (0..20).map(|i| 50 - i).collect::<Vec<_>>());
}

fn rows_of(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    rows(msgs)
}

#[tokio::test]
async fn pipeline_with_one_sync_named_and_unnamed_portals_describe_close_flush() {
    let env = env();
    let db = env.new_db("pipeline");
    let mut r = Raw::login(env.proxy.addr, APP_USER, APP_PASSWORD, &db).await;
    let mut b = BytesMut::new();
    raw::msg(&mut b, b'P', &raw::parse("s1", "SELECT $1::int + 1"));
    raw::msg(&mut b, b'D', &raw::named(b'S', "s1"));
    for i in 0..100 {
        raw::msg(&mut b, b'B', &raw::bind("", "s1", &[Some(&i.to_string())]));
        raw::msg(&mut b, b'E', &raw::execute("", 0));
    }
    // A named portal fetched in two steps.
    raw::msg(
        &mut b,
        b'P',
        &raw::parse("", "SELECT generate_series(1, 5)"),
    );
    raw::msg(&mut b, b'B', &raw::bind("port", "", &[]));
    raw::msg(&mut b, b'E', &raw::execute("port", 3));
    raw::msg(&mut b, b'E', &raw::execute("port", 0));
    raw::msg(&mut b, b'C', &raw::named(b'P', "port"));
    raw::msg(&mut b, b'C', &raw::named(b'S', "s1"));
    raw::msg(&mut b, b'H', &[]);
    r.send(&b).await;
    // Flush makes the server send everything so far without Sync.
    let msgs = r.until(b'3').await; // CloseComplete of the portal
    let msgs2 = r.until(b'3').await; // CloseComplete of the statement
    assert!(msgs2.len() == 1);
    let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
    assert_eq!(
        &tags[..3],
        b"1tT",
        "ParseComplete, ParameterDescription, RowDescription"
    );
    let data: Vec<String> = msgs
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| String::from_utf8_lossy(&m.body[6..]).into_owned())
        .collect();
    let expected: Vec<String> = (0..100)
        .map(|i| (i + 1).to_string())
        .chain((1..=5).map(|i| i.to_string()))
        .collect();
    assert_eq!(data, expected);
    assert_eq!(
        tags.iter().filter(|t| **t == b's').count(),
        1,
        "one PortalSuspended"
    );
    r.send_msg(b'S', &[]).await;
    let z = r.until(b'Z').await;
    assert_eq!(z.last().unwrap().body, b"I");
    // The statement is closed: using it now fails.
    r.send_msg(b'B', &raw::bind("", "s1", &[Some("1")])).await;
    r.send_msg(b'S', &[]).await;
    let m = r.until(b'Z').await;
    assert_eq!(m[0].tag, b'E');
    assert_eq!(m[0].field(b'C').as_deref(), Some("26000"));
}

#[tokio::test]
async fn error_in_the_middle_of_a_pipeline_skips_until_sync() {
    let env = env();
    let db = env.new_db("pipeerr");
    let mut r = Raw::login(env.proxy.addr, APP_USER, APP_PASSWORD, &db).await;
    let mut b = BytesMut::new();
    raw::msg(&mut b, b'P', &raw::parse("", "SELECT 1"));
    raw::msg(&mut b, b'B', &raw::bind("", "", &[]));
    raw::msg(&mut b, b'E', &raw::execute("", 0));
    raw::msg(&mut b, b'P', &raw::parse("", "SELECT 1/0"));
    raw::msg(&mut b, b'B', &raw::bind("", "", &[]));
    raw::msg(&mut b, b'E', &raw::execute("", 0));
    raw::msg(&mut b, b'P', &raw::parse("", "SELECT 2"));
    raw::msg(&mut b, b'B', &raw::bind("", "", &[]));
    raw::msg(&mut b, b'E', &raw::execute("", 0));
    raw::msg(&mut b, b'S', &[]);
    raw::msg(&mut b, b'P', &raw::parse("", "SELECT 3"));
    raw::msg(&mut b, b'B', &raw::bind("", "", &[]));
    raw::msg(&mut b, b'E', &raw::execute("", 0));
    raw::msg(&mut b, b'S', &[]);
    r.send(&b).await;
    let first = r.until(b'Z').await;
    let tags: String = first.iter().map(|m| m.tag as char).collect();
    // PostgreSQL folds 1/0 while planning at Bind: ParseComplete, then the error, then nothing
    // until Sync (the third statement is skipped).
    assert_eq!(tags, "12DC1EZ", "error then skip until Sync");
    let err = &first[5];
    assert_eq!(err.field(b'C').as_deref(), Some("22012"));
    let second = r.until(b'Z').await;
    let tags: String = second.iter().map(|m| m.tag as char).collect();
    assert_eq!(tags, "12DCZ");
    assert_eq!(&second[2].body[6..], b"3");
}

#[tokio::test]
async fn copy_in_and_out() {
    let env = env();
    let db = env.new_db("copy");
    let c = connect(&env.conn_str(&db)).await;
    c.batch_execute("CREATE TABLE c (id int, v text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut expected = String::new();
    for chunk in 0..20 {
        let mut s = String::new();
        for i in 0..1000 {
            let id = chunk * 1000 + i;
            s.push_str(&format!("{id}\tvalue {id}\n"));
        }
        expected.push_str(&s);
        sink.send(Bytes::from(s)).await.unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 20_000);
    let stream = c
        .copy_out("COPY (SELECT id, v FROM c ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    // COPY FROM STDIN with bad data: error, session usable.
    let sink = c.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22P02");
    let n: i64 = c
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20_000);
}

#[tokio::test]
async fn listen_notify_and_notices() {
    let env = env();
    let db = env.new_db("notify");
    let (listener, mut conn) = tokio_postgres::connect(&env.conn_str(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    listener.batch_execute("LISTEN chan").await.unwrap();
    let notifier = connect(&env.conn_str(&db)).await;
    notifier
        .batch_execute("NOTIFY chan, 'hello through the proxy'")
        .await
        .unwrap();
    // Self-notification: its pid must be the one the proxy gave this client (BackendKeyData).
    listener.batch_execute("NOTIFY chan, 'self'").await.unwrap();
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'a notice %', 42; END $$")
        .await
        .unwrap();
    let mut got_notification = None;
    let mut got_self = None;
    let mut got_notice = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while (got_notification.is_none() || got_notice.is_none() || got_self.is_none())
        && Instant::now() < deadline
    {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await else {
            break;
        };
        match m {
            tokio_postgres::AsyncMessage::Notification(n) if n.payload() == "self" => {
                got_self = Some(n.process_id())
            }
            tokio_postgres::AsyncMessage::Notification(n) => {
                got_notification = Some((n.channel().to_owned(), n.payload().to_owned()))
            }
            tokio_postgres::AsyncMessage::Notice(n) => got_notice = Some(n.message().to_owned()),
            _ => {}
        }
    }
    assert_eq!(
        got_notification,
        Some(("chan".into(), "hello through the proxy".into()))
    );
    assert_eq!(got_notice.as_deref(), Some("a notice 42"));
    let upstream_pid: i32 = listener
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let self_pid = got_self.expect("self notification");
    assert_ne!(
        self_pid, upstream_pid,
        "notification pid is translated to the proxy's BackendKeyData pid"
    );
}

#[tokio::test]
async fn large_result_is_streamed() {
    let env = env();
    let db = env.new_db("large");
    let c = connect(&env.conn_str(&db)).await;
    // ~64 MB in 64 KiB rows, plus one row larger than the proxy's read buffer.
    let stream = c
        .query_raw(
            "SELECT i, repeat('x', 65536) FROM generate_series(1, 1000) i",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut n = 0;
    while let Some(row) = stream.next().await {
        let row = row.unwrap();
        assert_eq!(row.get::<_, String>(1).len(), 65536);
        n += 1;
    }
    assert_eq!(n, 1000);
    let big: String = c
        .query_one("SELECT repeat('y', 20 * 1024 * 1024)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 20 * 1024 * 1024);
    // A large parameter (Bind) and a large query text.
    let param = "z".repeat(5 * 1024 * 1024);
    let len: i32 = c
        .query_one("SELECT length($1::text)", &[&param])
        .await
        .unwrap()
        .get(0);
    assert_eq!(len, 5 * 1024 * 1024);
}

#[tokio::test]
async fn cancel_a_running_pg_sleep() {
    let env = env();
    let db = env.new_db("cancel");
    let c = connect(&env.conn_str(&db)).await;
    let token = c.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    });
    let err = c.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(err.code().unwrap().code(), "57014", "query_canceled: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The session is still usable.
    let v: i32 = c.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    // A cancel with a wrong secret does nothing.
    let mut r = Raw::connect(env.proxy.addr).await;
    let mut b = BytesMut::new();
    b.extend_from_slice(&16u32.to_be_bytes());
    b.extend_from_slice(&80_877_102u32.to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&2i32.to_be_bytes());
    r.send(&b).await;
    assert!(r.next().await.is_none());
}

#[tokio::test]
async fn two_hundred_concurrent_clients() {
    let env = env();
    let db = env.new_db("concurrent");
    let setup = connect(&env.conn_str(&db)).await;
    setup
        .batch_execute("CREATE TABLE hits (client int, n int)")
        .await
        .unwrap();
    let conn_str = env.conn_str(&db);
    let mut tasks = Vec::new();
    for client in 0..200i32 {
        let conn_str = conn_str.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&conn_str).await;
            let st = c.prepare("INSERT INTO hits VALUES ($1, $2)").await.unwrap();
            for n in 0..5i32 {
                c.execute(&st, &[&client, &n]).await.unwrap();
            }
            let got: i64 = c
                .query_one("SELECT count(*) FROM hits WHERE client = $1", &[&client])
                .await
                .unwrap()
                .get(0);
            assert_eq!(got, 5);
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let active: i64 = setup
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(active >= 201, "all 200 sessions open at once, got {active}");
    let total: i64 = setup
        .query_one("SELECT count(*) FROM hits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 1000);
}

#[tokio::test]
async fn client_disconnect_in_the_middle_of_a_large_result() {
    let env = env();
    let db = env.new_db("disconnect");
    let check = connect(&env.conn_str(&db)).await;
    {
        let mut r = Raw::login(env.proxy.addr, APP_USER, APP_PASSWORD, &db).await;
        r.send_msg(
            b'Q',
            &raw::cstr("SELECT repeat('x', 1000) FROM generate_series(1, 2000000)"),
        )
        .await;
        // Read a little of the ~2 GB result, then vanish.
        for _ in 0..100 {
            r.next().await.unwrap();
        }
    }
    // The upstream session goes away (the proxy closes it), nothing else is disturbed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = check
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "upstream session still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v: i32 = check.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);
}

#[tokio::test]
async fn metrics_endpoint_reports_counters() {
    let env = env();
    let db = env.new_db("metrics");
    let c = connect(&env.conn_str(&db)).await;
    c.simple_query("SELECT 1").await.unwrap();
    let addr = env.proxy.metrics_addr.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{body}"))
    };
    assert!(value("pgseal_proxy_connections_total") >= 1.0);
    assert!(value("pgseal_proxy_connections_active") >= 1.0);
    assert!(value("pgseal_proxy_queries_total") >= 1.0);
    assert!(value("pgseal_proxy_client_bytes_total") > 0.0);
    assert!(value("pgseal_proxy_query_duration_seconds_count") >= 1.0);
    assert!(!body.contains("SELECT"), "no SQL in metrics");
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_queries_finish() {
    let env = env();
    let db = env.new_db("shutdown");
    let upstream = format!(
        "host = \"{}\"\nport = {}",
        env.pg.socket_dir().display(),
        env.pg.port
    );
    let mut proxy =
        support::TestProxy::start(&support::proxy_toml(&upstream, ""), &support::proxy_env());
    let conn_str = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        proxy.port()
    );
    let idle = connect(&conn_str).await;
    let busy = connect(&conn_str).await;
    idle.simple_query("SELECT 1").await.unwrap();
    let in_flight = tokio::spawn(async move {
        busy.query_one("SELECT pg_sleep(1), 7::int4", &[])
            .await
            .map(|r| r.get::<_, i32>(1))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The in-flight query completes.
    assert_eq!(in_flight.await.unwrap().unwrap(), 7);
    // The idle session was closed.
    let err = idle.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.is_closed() || err.code().map(|c| c.code()) == Some("57P01"),
        "{err}"
    );
    // No new connections.
    assert!(tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
        .await
        .is_err());
}
