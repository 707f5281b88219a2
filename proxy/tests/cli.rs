//! The binary: `check` gives clear messages, `serve` stops on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pgseal-proxy");

fn config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("proxy.toml");
    std::fs::write(&p, body).unwrap();
    p
}

const GOOD: &str = r#"
listen = "127.0.0.1:0"
[upstream]
host = "/tmp"
port = 5432
[[users]]
name = "app"
password_env = "CLI_TEST_PASSWORD"
"#;

#[test]
fn check_accepts_a_good_config_and_explains_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), GOOD);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&p)
        .env("CLI_TEST_PASSWORD", "s3cret-value")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));

    // Missing secret: names the variable, never prints a secret.
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&p)
        .env_remove("CLI_TEST_PASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CLI_TEST_PASSWORD"), "{err}");

    // Unknown key, TLS without files, missing file.
    for (body, needle) in [
        (GOOD.replace("port = 5432", "port = 5432\nprot = 1"), "prot"),
        (
            GOOD.replace(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\n[tls]\nmode = \"required\"",
            ),
            "tls.cert",
        ),
        (
            GOOD.replace("port = 5432", "port = 5432\ntls = \"verify-full\""),
            "upstream.ca",
        ),
    ] {
        let p = config(dir.path(), &body);
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&p)
            .env("CLI_TEST_PASSWORD", "s3cret-value")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!err.contains("s3cret-value"));
    }
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/proxy.toml"));
}

#[test]
fn serve_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(
        dir.path(),
        &GOOD.replace("[[users]]", "[shutdown]\ngrace_seconds = 1\n[[users]]"),
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&p)
        .env("CLI_TEST_PASSWORD", "s3cret-value")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read its log as it comes; send SIGTERM only once it listens (its handler is installed
    // by then; a busy machine can take more than a fixed sleep to get there).
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.lock().unwrap().contains("pgseal-proxy listening") {
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        assert!(Instant::now() < deadline, "serve did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            assert!(s.success(), "exit status {s}");
            break;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(log.contains("shutdown complete"), "{log}");
    assert!(!log.contains("s3cret-value"));
}

/// GOOD plus protected columns, with keyserver files in `dir` and an unreachable upstream.
fn with_columns(dir: &std::path::Path) -> String {
    for f in ["ca.pem", "proxy.pem", "proxy-key.pem"] {
        std::fs::write(dir.join(f), "dummy").unwrap();
    }
    let d = dir.display();
    GOOD.replace("host = \"/tmp\"", "host = \"/nonexistent-pgseal-dir\"")
        + &format!(
            r#"
[encryption]
database = "app"
[keyserver]
url = "https://127.0.0.1:1"
ca = "{d}/ca.pem"
cert = "{d}/proxy.pem"
key = "{d}/proxy-key.pem"
[[columns]]
column = "public.patients.email"
type = "text"
keyring = "patients"
index = true
unique = true
"#
        )
}

fn run(cmd: &str, p: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args([cmd, "--config"])
        .arg(p)
        .env("CLI_TEST_PASSWORD", "s3cret-value")
        .output()
        .unwrap()
}

#[test]
fn columns_config_errors_name_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let good = with_columns(dir.path());
    for (body, needle) in [
        (
            good.replace("type = \"text\"", "type = \"txt\""),
            "[[columns]] #1 \"public.patients.email\": unknown type \"txt\"",
        ),
        (
            good.replace("index = true\n", ""),
            "unique = true needs index = true",
        ),
        (good.replace("proxy-key.pem", "gone.pem"), "keyserver.key"),
        (
            good.replace("[encryption]\ndatabase = \"app\"", ""),
            "[encryption] is missing",
        ),
    ] {
        let out = run("check", &config(dir.path(), &body));
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!err.contains("s3cret-value"));
    }
}

#[test]
fn check_and_schema_without_a_reachable_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), &with_columns(dir.path()));
    let out = run("check", &p);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the upstream catalog") && err.contains("database \"app\""),
        "{err}"
    );
    let out = run("schema", &p);
    assert!(out.status.success());
    let ddl = String::from_utf8_lossy(&out.stdout);
    assert!(ddl.contains("-- upstream not reachable"), "{ddl}");
    assert!(
        ddl.contains("ALTER TABLE \"public\".\"patients\" ALTER COLUMN \"email\" TYPE bytea"),
        "{ddl}"
    );
    assert!(ddl.contains("CREATE UNIQUE INDEX"), "{ddl}");
    // Without columns there is nothing to print.
    let p = config(dir.path(), GOOD);
    let out = run("schema", &p);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [[columns]]"));
}

#[test]
fn serve_with_columns_fails_at_start_without_a_keyserver() {
    // With [[columns]] the proxy must get its keys before it listens: a keyserver it cannot use
    // (here: unusable certificate files, nothing listening) stops start-up with a message
    // naming the keyserver, instead of serving protected columns without encryption.
    let dir = tempfile::tempdir().unwrap();
    let p = config(dir.path(), &with_columns(dir.path()));
    let out = run("serve", &p);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("keyserver"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("schema") && help.contains("Exit status 0"),
        "{help}"
    );
}
