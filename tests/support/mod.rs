//! Shared harness for the system tests: a throwaway PostgreSQL 15 cluster (`pg`), test
//! certificates (`certs`) and an in-process pgseal-proxy (`proxy`).
//!
//! [`env()`] gives each test binary one cluster and one pass-through proxy in front of it (over the
//! unix socket); each test makes its own database with [`TestEnv::new_db`]. Tests that need other
//! settings (TLS, statement logging, a restart) start their own cluster.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

pub mod certs;
pub mod keyserver;
pub mod markers;
pub mod pg;
pub mod proxy;
pub mod raw;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub use pg::{PgCluster, PgOptions};
pub use proxy::TestProxy;

/// User clients log in to the proxy as.
pub const APP_USER: &str = "app";
/// Its password at the proxy.
pub const APP_PASSWORD: &str = "app-secret";
/// The upstream role's password (used when the proxy logs in over TCP).
pub const UPSTREAM_PASSWORD: &str = "upstream-app-pw";

/// A SCRAM verifier for [`APP_PASSWORD`] with few iterations, so debug-built drivers log in fast.
pub fn app_verifier() -> String {
    pgseal_proxy::client::auth_scram::ScramVerifier::derive(
        APP_PASSWORD.as_bytes(),
        b"pgseal-test-salt",
        64,
    )
    .to_postgres_string()
}

/// Proxy configuration for `upstream_block` (the `[upstream]` table body) with the `app` user
/// (SCRAM verifier in the file, upstream password from the environment).
pub fn proxy_toml(upstream_block: &str, extra: &str) -> String {
    proxy_toml_with_auth(
        upstream_block,
        extra,
        &format!("scram_verifier = \"{}\"", app_verifier()),
    )
}

/// Like [`proxy_toml`] with the user's authentication line given (e.g. `password_env = "..."`).
pub fn proxy_toml_with_auth(upstream_block: &str, extra: &str, auth_line: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
{extra}
[upstream]
{upstream_block}

[[users]]
name = "{APP_USER}"
{auth_line}
upstream_password_env = "TEST_UPSTREAM_PASSWORD"

[shutdown]
grace_seconds = 2
"#
    )
}

/// The environment variables the configurations above refer to.
pub fn proxy_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TEST_APP_PASSWORD", APP_PASSWORD),
        ("TEST_UPSTREAM_PASSWORD", UPSTREAM_PASSWORD),
    ]
}

/// One cluster and one proxy per test binary.
pub struct TestEnv {
    /// The cluster.
    pub pg: PgCluster,
    /// A pass-through proxy to it over the unix socket.
    pub proxy: TestProxy,
}

static ENV: OnceLock<TestEnv> = OnceLock::new();
static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The shared environment, started on first use.
pub fn env() -> &'static TestEnv {
    ENV.get_or_init(|| {
        let pg = PgCluster::start(PgOptions {
            max_connections: Some(400),
            ..Default::default()
        });
        pg.create_role(APP_USER, UPSTREAM_PASSWORD, "scram-sha-256");
        let toml = proxy_toml(
            &format!(
                "host = \"{}\"\nport = {}",
                pg.socket_dir().display(),
                pg.port
            ),
            "[metrics]\nlisten = \"127.0.0.1:0\"",
        );
        let proxy = TestProxy::start(&toml, &proxy_env());
        TestEnv { pg, proxy }
    })
}

impl TestEnv {
    /// A fresh database owned by the app role.
    pub fn new_db(&self, hint: &str) -> String {
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("t_{hint}_{n}");
        self.pg.create_database(&name, APP_USER);
        name
    }

    /// A libpq/tokio-postgres connection string to the proxy.
    pub fn conn_str(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
            self.proxy.port()
        )
    }
}

/// Connects tokio-postgres to `conn_str` (no TLS) and drives the connection in the background.
pub async fn connect(conn_str: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn_str}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A client of the application's user through a proxy listening on `port` (no TLS).
pub async fn app_client_at(port: u16) -> tokio_postgres::Client {
    connect(&format!(
        "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname={ENC_DB} sslmode=disable"
    ))
    .await
}

/// Runs psql against the proxy with `args`; stdin from `input`.
pub fn psql_proxy(port: u16, db: &str, args: &[&str], input: Option<&str>) -> Output {
    let bindir = pg::bindir();
    let mut cmd = Command::new(bindir.join("psql"));
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-U", APP_USER, "-d", db])
        .args(args)
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10");
    run_with_input(&mut cmd, input)
}

/// Runs a command with optional stdin, returning its output.
pub fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Output {
    use std::io::Write as _;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(i) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(i.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Asserts a command succeeded, showing its output otherwise; returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A file with `contents` in `dir`.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    pg::write_file(dir, name, contents)
}

/// A `pgseal-proxy serve` process (the real binary, as operators run it), for the encryption
/// system tests; killed on drop. Its log (stderr and stdout) goes to a file.
pub struct ProxyProcess {
    dir: tempfile::TempDir,
    /// Port on 127.0.0.1 where clients connect.
    pub port: u16,
    child: Option<std::process::Child>,
    _watchdog: Option<(std::process::Child, std::process::ChildStdin)>,
}

impl ProxyProcess {
    /// Writes `toml` (with `listen` replaced by a free port) and starts `pgseal-proxy serve`
    /// with `PGSEAL_LOG=info`; waits until it accepts connections. Panics with its log when it
    /// does not come up.
    pub fn start(toml: &str, env: &[(&str, &str)]) -> ProxyProcess {
        Self::start_with_log(toml, env, "info")
    }

    /// [`start`](Self::start) with `PGSEAL_LOG` set to `log_filter` (e.g. `trace`).
    pub fn start_with_log(toml: &str, env: &[(&str, &str)], log_filter: &str) -> ProxyProcess {
        let bin = keyserver::cargo_bin("pgseal-proxy", "PGSEAL_PROXY_BIN");
        let dir = tempfile::Builder::new()
            .prefix("pgseal-proxy-")
            .tempdir()
            .unwrap();
        let mut last_log = String::new();
        for attempt in 0..5 {
            let port = pg::free_port();
            let text = toml.replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            );
            let conf = write_file(dir.path(), "proxy.toml", &text);
            let log_path = dir.path().join(format!("proxy{attempt}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg("--config")
                .arg(&conf)
                .envs(env.iter().copied())
                .env("PGSEAL_LOG", log_filter)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return ProxyProcess {
                        _watchdog: keyserver::kill_on_exit(child.id(), dir.path()),
                        dir,
                        port,
                        child: Some(child),
                    };
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if !last_log.contains("in use") {
                break;
            }
        }
        panic!("pgseal-proxy did not start:\n{last_log}");
    }

    /// The configuration file the proxy runs with.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// Everything the proxy logged so far (all attempts).
    pub fn log(&self) -> String {
        let mut all = String::new();
        for attempt in 0..5 {
            if let Ok(s) =
                std::fs::read_to_string(self.dir.path().join(format!("proxy{attempt}.log")))
            {
                all.push_str(&s);
            }
        }
        all
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The files the proxy logged to (one per start attempt; those that exist).
    pub fn log_paths(&self) -> Vec<std::path::PathBuf> {
        (0..5)
            .map(|attempt| self.dir.path().join(format!("proxy{attempt}.log")))
            .filter(|p| p.exists())
            .collect()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Database the encryption system tests protect.
pub const ENC_DB: &str = "app";

/// PostgreSQL (with `log_statement = all` and parameter logging), a keyserver and an encrypting
/// `pgseal-proxy serve` process protecting `columns` of database [`ENC_DB`].
pub struct EncEnv {
    /// The proxy (dropped first).
    pub proxy: ProxyProcess,
    /// The keyserver.
    pub ks: keyserver::TestKeyserver,
    /// The cluster.
    pub pg: PgCluster,
    /// The proxy identity.
    pub identity: keyserver::ProxyIdentity,
}

impl EncEnv {
    /// Starts everything; every keyring named by `columns` is created and granted.
    pub fn start(columns: &[keyserver::ColumnSpec]) -> EncEnv {
        Self::start_with_grace(columns, 300)
    }

    /// [`start`](Self::start) with the proxy's keyserver grace period set to `grace_seconds`.
    pub fn start_with_grace(columns: &[keyserver::ColumnSpec], grace_seconds: u64) -> EncEnv {
        Self::start_with_log(columns, grace_seconds, "info")
    }

    /// [`start_with_log`](Self::start_with_log) (the name the log tests use).
    pub fn start_with(columns: &[keyserver::ColumnSpec], grace_seconds: u64, log: &str) -> EncEnv {
        Self::start_with_log(columns, grace_seconds, log)
    }

    /// [`start_with_grace`](Self::start_with_grace) with the proxy's `PGSEAL_LOG` set to
    /// `log_filter` (the adversarial suite runs it at `trace`).
    pub fn start_with_log(
        columns: &[keyserver::ColumnSpec],
        grace_seconds: u64,
        log_filter: &str,
    ) -> EncEnv {
        let pg = PgCluster::start(PgOptions {
            log_statements: true,
            max_connections: Some(100),
            ..Default::default()
        });
        pg.create_role(APP_USER, UPSTREAM_PASSWORD, "scram-sha-256");
        pg.create_database(ENC_DB, APP_USER);
        let ks = keyserver::TestKeyserver::start();
        let mut keyrings: Vec<&str> = columns.iter().map(|c| c.keyring.as_str()).collect();
        keyrings.sort_unstable();
        keyrings.dedup();
        let identity = ks.provision_proxy("proxy-test", &keyrings);
        let mut toml = proxy_toml(
            &format!(
                "host = \"{}\"\nport = {}",
                pg.socket_dir().display(),
                pg.port
            ),
            "",
        );
        toml.push('\n');
        toml.push_str(&ks.encryption_toml_with_grace(
            &identity,
            ENC_DB,
            APP_USER,
            columns,
            grace_seconds,
        ));
        let proxy = ProxyProcess::start_with_log(&toml, &proxy_env(), log_filter);
        EncEnv {
            proxy,
            ks,
            pg,
            identity,
        }
    }

    /// Starts a new proxy process with the same configuration (it fetches every key afresh) and
    /// stops the old one; clients connect to the new port.
    pub fn restart_proxy(&mut self) {
        let text = std::fs::read_to_string(self.proxy.config_path()).unwrap();
        let toml = text.replace(
            &format!("listen = \"127.0.0.1:{}\"", self.proxy.port),
            "listen = \"127.0.0.1:0\"",
        );
        self.proxy = ProxyProcess::start(&toml, &proxy_env());
    }

    /// Another proxy with this one's configuration (on a free port, `PGSEAL_LOG=log_filter`),
    /// started now: it loads the catalog and the keys as they are now.
    pub fn second_proxy(&self, log_filter: &str) -> ProxyProcess {
        let toml: String = std::fs::read_to_string(self.proxy.config_path())
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("listen = ") {
                    "listen = \"127.0.0.1:0\""
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        ProxyProcess::start_with_log(&toml, &proxy_env(), log_filter)
    }

    /// tokio-postgres / libpq connection string to the proxy.
    pub fn conn_str(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={ENC_DB} sslmode=disable",
            self.proxy.port
        )
    }

    /// A tokio-postgres client connected through the proxy.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.conn_str()).await
    }

    /// Runs `pgseal-proxy ARGS --config <the running proxy's configuration>` (e.g. `check`,
    /// `reencrypt`, `schema --index-rotation`) to completion.
    pub fn proxy_command(&self, args: &[&str]) -> Output {
        Command::new(keyserver::cargo_bin("pgseal-proxy", "PGSEAL_PROXY_BIN"))
            .args(args)
            .arg("--config")
            .arg(self.proxy.config_path())
            .envs(proxy_env())
            .output()
            .unwrap()
    }

    /// SQL straight to PostgreSQL as the superuser (unaligned, tuples only).
    pub fn direct(&self, sql: &str) -> String {
        self.pg.psql(ENC_DB, sql)
    }

    /// The stored cells of a protected column, straight from PostgreSQL (NULLs skipped).
    pub fn stored_cells(&self, table: &str, column: &str) -> Vec<Vec<u8>> {
        self.direct(&format!(
            "SELECT encode(\"{column}\", 'hex') FROM {table} WHERE \"{column}\" IS NOT NULL"
        ))
        .lines()
        .map(|h| hex_decode(h.trim()))
        .collect()
    }

    /// Asserts that no plaintext in `secrets` reached PostgreSQL: not in the server log, not in a
    /// direct `COPY … TO STDOUT` of `tables`, not in the proxy's log (neither as text nor
    /// hex-encoded); and that every stored cell of `protected` (`table`, `column`, indexed)
    /// parses as `[16-byte tag] + envelope`.
    pub fn assert_no_leak(
        &self,
        secrets: &[String],
        tables: &[&str],
        protected: &[(&str, &str, bool)],
    ) {
        assert!(
            !secrets.is_empty(),
            "a leak check needs plaintexts to look for"
        );
        let mut haystacks = vec![
            ("server log".to_string(), self.pg.log()),
            ("proxy log".to_string(), self.proxy.log()),
        ];
        for t in tables {
            haystacks.push((
                format!("dump of {t}"),
                self.direct(&format!("COPY {t} TO STDOUT")),
            ));
        }
        for s in secrets {
            let hex = hex_encode(s.as_bytes());
            for (what, text) in &haystacks {
                let lower = text.to_lowercase();
                assert!(
                    !lower.contains(&s.to_lowercase()),
                    "plaintext {s:?} found in the {what}"
                );
                assert!(
                    !lower.contains(&hex),
                    "hex-encoded plaintext {s:?} found in the {what}"
                );
            }
        }
        for (table, column, indexed) in protected {
            let cells = self.stored_cells(table, column);
            assert!(
                !cells.is_empty(),
                "{table}.{column}: no stored cells to check"
            );
            for cell in cells {
                if let Err(e) = check_cell(&cell, *indexed) {
                    panic!(
                        "{table}.{column}: stored cell {} is not a pgseal cell: {e}",
                        hex_encode(&cell)
                    );
                }
            }
        }
    }
}

/// Checks a stored cell: optional 16-byte blind index, then envelope = version byte 1, u32 key
/// version ≥ 1, 12-byte nonce, ciphertext of ≥ 1 byte (type tag) and a 16-byte AEAD tag.
/// Returns the key version.
pub fn check_cell(cell: &[u8], indexed: bool) -> Result<u32, String> {
    let env = if indexed {
        cell.get(16..).ok_or("shorter than the blind index")?
    } else {
        cell
    };
    if env.len() < 1 + 4 + 12 + 1 + 16 {
        return Err(format!("envelope of {} bytes is too short", env.len()));
    }
    if env[0] != 1 {
        return Err(format!("format version {}", env[0]));
    }
    let kv = u32::from_be_bytes([env[1], env[2], env[3], env[4]]);
    if kv == 0 {
        return Err("key version 0".into());
    }
    Ok(kv)
}

/// Lower-case hex.
pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decodes lower- or upper-case hex (panics on malformed input: test data only).
pub fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// A distinctive random plaintext (`prefix` + 16 hex digits), recorded in `secrets`.
pub fn secret(secrets: &mut Vec<String>, prefix: &str) -> String {
    use std::hash::BuildHasher as _;
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let r = std::collections::hash_map::RandomState::new().hash_one((n, std::process::id()));
    let s = format!("{prefix}Zq{r:016x}");
    secrets.push(s.clone());
    s
}

/// The SQLSTATE of a tokio-postgres error (panics when it is not a server error).
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"))
        .code()
        .to_string()
}

/// The message of a tokio-postgres server error.
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}
