//! A real `pgseal-keyserver` process for system tests, plus the proxy configuration blocks that
//! point a proxy at it.
//!
//! [`TestKeyserver::start`] runs `init` in a temp dir (its own CA and server certificate, root key,
//! SQLite database) with a free port on 127.0.0.1, starts `serve`, waits for `GET /v1/health`, and
//! creates a named key-admin token (the bootstrap token from `init` is used only for that). Admin
//! commands go through the real CLI (`keyring create|rotate|disable`, `cert issue`, `proxy grant`).
//! Drop kills the server; the temp dir goes with it.
//!
//! The binary is the one cargo builds next to the test binary (`target/<profile>/pgseal-keyserver`,
//! or `PGSEAL_KEYSERVER_BIN`); [`cargo_bin`] brings it (and `pgseal-proxy`) up to date first.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary built by cargo in the same target directory as the running test binary.
///
/// The first call per test process runs `cargo build --bins -p pgseal-proxy -p pgseal-keyserver`
/// for that target directory and profile (a no-op when they are fresh), so a lone
/// `cargo test --test …` never runs stale binaries. `PGSEAL_TEST_NO_BUILD=1` skips the build;
/// `env_override` names a variable that points at a binary to use instead.
pub fn cargo_bin(name: &str, env_override: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env_override) {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    build_bins(&profile_dir);
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p {name}`), or set {env_override}",
        bin.display()
    );
    bin
}

fn build_bins(profile_dir: &Path) {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("PGSEAL_TEST_NO_BUILD").is_some() {
            return;
        }
        let (Some(target_dir), Some(profile)) = (
            profile_dir.parent(),
            profile_dir.file_name().and_then(|p| p.to_str()),
        ) else {
            return;
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "--bins",
            "-p",
            "pgseal-proxy",
            "-p",
            "pgseal-keyserver",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        match cmd.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "building pgseal-proxy and pgseal-keyserver failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: could not run cargo ({e}); using existing binaries"),
        }
    });
}

/// A watchdog that kills process `pid` and removes `dir` once this test process is gone (its
/// stdin pipe closes), for processes held in statics, whose destructors never run. Keep the
/// returned value alive.
pub fn kill_on_exit(pid: u32, dir: &Path) -> Option<(Child, std::process::ChildStdin)> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat >/dev/null; kill {pid} 2>/dev/null; sleep 0.5; rm -rf '{}'",
            dir.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let stdin = child.stdin.take()?;
    Some((child, stdin))
}

/// Path of the `pgseal-keyserver` binary.
pub fn keyserver_bin() -> PathBuf {
    cargo_bin("pgseal-keyserver", "PGSEAL_KEYSERVER_BIN")
}

/// A proxy's client identity issued by the keyserver's built-in CA.
#[derive(Clone, Debug)]
pub struct ProxyIdentity {
    /// Proxy name (certificate CN).
    pub name: String,
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A running keyserver; killed on drop.
pub struct TestKeyserver {
    dir: tempfile::TempDir,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    bin: PathBuf,
    child: Option<Child>,
    admin_token: String,
    current: u32,
    _watchdog: Option<(Child, std::process::ChildStdin)>,
}

impl TestKeyserver {
    /// Initialises and starts a keyserver; panics with its log when it does not come up.
    pub fn start() -> TestKeyserver {
        TestKeyserver::start_with("")
    }

    /// [`start`](Self::start) with `extra_toml` appended to the generated `keyserver.toml`
    /// (e.g. `[limits]` or `[audit]` tables).
    pub fn start_with(extra_toml: &str) -> TestKeyserver {
        let bin = keyserver_bin();
        let dir = tempfile::Builder::new()
            .prefix("pgseal-ks-")
            .tempdir()
            .unwrap();
        let mut last_err = String::new();
        // Retry on a port clash (free_port is bind-and-release).
        for attempt in 0..5u32 {
            let port = super::pg::free_port();
            let ks_dir = dir.path().join(format!("ks{attempt}"));
            let out = Command::new(&bin)
                .arg("init")
                .arg("--dir")
                .arg(&ks_dir)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "pgseal-keyserver init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let bootstrap = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !extra_toml.is_empty() {
                let cfg_path = ks_dir.join("keyserver.toml");
                let mut cfg = fs::read_to_string(&cfg_path).unwrap();
                cfg.push('\n');
                cfg.push_str(extra_toml);
                fs::write(&cfg_path, cfg).unwrap();
            }
            let log = fs::File::create(dir.path().join(format!("serve{attempt}.log"))).unwrap();
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg("--config")
                .arg(ks_dir.join("keyserver.toml"))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let url = format!("https://127.0.0.1:{port}");
            let ca = ks_dir.join("pki").join("ca.pem");
            if wait_healthy(&mut child, &url, &ca, Duration::from_secs(20)) {
                let watchdog = kill_on_exit(child.id(), dir.path());
                let mut ks = TestKeyserver {
                    _watchdog: watchdog,
                    dir,
                    port,
                    url,
                    bin,
                    child: Some(child),
                    admin_token: bootstrap,
                    current: attempt,
                };
                // A named key-admin token for everything else, as an operator would do.
                let out = ks.admin_ok(&[
                    "token",
                    "create",
                    "--name",
                    "test-harness",
                    "--role",
                    "key-admin",
                    "--json",
                ]);
                ks.admin_token =
                    json_string_field(&out, "token").unwrap_or_else(|| panic!("no token in {out}"));
                return ks;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_err = fs::read_to_string(dir.path().join(format!("serve{attempt}.log")))
                .unwrap_or_default();
        }
        panic!("pgseal-keyserver did not start:\n{last_err}");
    }

    /// The keyserver's SQLite database (tests that stage a state of an earlier release edit it
    /// while the server is stopped).
    pub fn db_path(&self) -> PathBuf {
        self.ks_dir().join("keyserver.db")
    }

    fn ks_dir(&self) -> PathBuf {
        self.dir.path().join(format!("ks{}", self.current))
    }

    /// The keyserver's CA certificate (signs the server certificate and proxy certificates).
    pub fn ca_path(&self) -> PathBuf {
        self.ks_dir().join("pki").join("ca.pem")
    }

    /// Stops the server process (as if the keyserver host went away); [`resume`](Self::resume)
    /// starts it again on the same port with the same state.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the stopped server again (same directory, port and keys); panics with its log when
    /// it does not come up.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the keyserver is running");
        let log_path = self.dir.path().join(format!("serve{}.log", self.current));
        let log = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .unwrap();
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(self.ks_dir().join("keyserver.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        assert!(
            wait_healthy(
                &mut child,
                &self.url,
                &self.ca_path(),
                Duration::from_secs(20)
            ),
            "pgseal-keyserver did not come back:\n{}",
            self.log()
        );
        self.child = Some(child);
    }

    /// The server's process id, while it runs (to pause it with SIGSTOP: a keyserver that
    /// hangs without closing its connections).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The `keyserver` binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Creates an admin token with `role` (`auditor`, `key-admin`); returns the token.
    pub fn create_token(&self, name: &str, role: &str) -> String {
        let out = self.admin_ok(&["token", "create", "--name", name, "--role", role, "--json"]);
        json_string_field(&out, "token").unwrap_or_else(|| panic!("no token in {out}"))
    }

    /// A CLI command against this server with the given token (stdin closed).
    pub fn command_with_token(&self, token: &str) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("PGSEAL_KEYSERVER_URL", &self.url)
            .env("PGSEAL_KEYSERVER_CA", self.ca_path())
            .env("PGSEAL_KEYSERVER_TOKEN", token)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    /// The directory holding the built-in CA.
    pub fn pki_dir(&self) -> PathBuf {
        self.ks_dir().join("pki")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join(format!("serve{}.log", self.current)))
            .unwrap_or_default()
    }

    /// `GET /v1/health` with curl (verifying the server certificate against the CA); the body.
    pub fn health(&self) -> Option<String> {
        health(&self.url, &self.ca_path())
    }

    /// Runs an admin command of the CLI against this server.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("PGSEAL_KEYSERVER_URL", &self.url)
            .env("PGSEAL_KEYSERVER_CA", self.ca_path())
            .env("PGSEAL_KEYSERVER_TOKEN", &self.admin_token)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Like [`admin`](Self::admin), panicking with the output on failure; returns stdout.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "pgseal-keyserver {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Creates a keyring (version 1 active).
    pub fn create_keyring(&self, name: &str) {
        self.admin_ok(&["keyring", "create", name]);
    }

    /// The keyring's active version.
    pub fn active_version(&self, keyring: &str) -> u32 {
        let out = self.admin_ok(&["keyring", "show", keyring, "--json"]);
        json_u32_field(&out, "active_version").unwrap_or_else(|| panic!("{out}"))
    }

    /// Rotates a keyring; returns the new active version.
    pub fn rotate(&self, keyring: &str) -> u32 {
        let out = self.admin_ok(&["keyring", "rotate", keyring, "--json"]);
        json_u32_field(&out, "active_version").unwrap_or_else(|| panic!("{out}"))
    }

    /// Disables a (decrypt-only) version.
    pub fn disable(&self, keyring: &str, version: u32) {
        self.admin_ok(&["keyring", "disable", keyring, &version.to_string()]);
    }

    /// Re-enables a disabled version.
    pub fn enable(&self, keyring: &str, version: u32) {
        self.admin_ok(&["keyring", "enable", keyring, &version.to_string()]);
    }

    /// Issues a proxy client certificate (CN = `name`) from the built-in CA (offline CLI).
    pub fn issue_proxy_cert(&self, name: &str) -> ProxyIdentity {
        let out_dir = self.dir.path().join(format!("proxy-{name}"));
        fs::create_dir_all(&out_dir).unwrap();
        let out = Command::new(&self.bin)
            .args(["cert", "issue", "--proxy", name, "--pki-dir"])
            .arg(self.pki_dir())
            .arg("--out-dir")
            .arg(&out_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cert issue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = ProxyIdentity {
            name: name.to_string(),
            cert: out_dir.join(format!("{name}.pem")),
            key: out_dir.join(format!("{name}-key.pem")),
        };
        assert!(
            id.cert.exists() && id.key.exists(),
            "cert issue wrote no files"
        );
        id
    }

    /// Grants a proxy identity these keyrings (replacing earlier grants).
    pub fn grant(&self, proxy: &str, keyrings: &[&str]) {
        let mut args = vec!["proxy", "grant", proxy];
        for k in keyrings {
            args.push("--keyring");
            args.push(k);
        }
        self.admin_ok(&args);
    }

    /// Creates `keyrings`, issues a certificate for proxy `name` and grants it the keyrings.
    pub fn provision_proxy(&self, name: &str, keyrings: &[&str]) -> ProxyIdentity {
        for k in keyrings {
            self.create_keyring(k);
        }
        let id = self.issue_proxy_cert(name);
        self.grant(name, keyrings);
        id
    }

    /// The `[keyserver]` block of a proxy configuration for `identity`.
    pub fn keyserver_toml(&self, identity: &ProxyIdentity) -> String {
        self.keyserver_toml_with_grace(identity, 300)
    }

    /// [`keyserver_toml`](Self::keyserver_toml) with a given grace period (seconds the cached
    /// keys keep serving while the keyserver cannot be reached).
    pub fn keyserver_toml_with_grace(
        &self,
        identity: &ProxyIdentity,
        grace_seconds: u64,
    ) -> String {
        format!(
            "[keyserver]\nurl = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ngrace_seconds = {grace_seconds}\npoll_wait_seconds = 1\n",
            self.url,
            self.ca_path().display(),
            identity.cert.display(),
            identity.key.display()
        )
    }

    /// The `[encryption]` + `[keyserver]` + `[[columns]]` blocks for a proxy configuration.
    pub fn encryption_toml(
        &self,
        identity: &ProxyIdentity,
        database: &str,
        catalog_user: &str,
        columns: &[ColumnSpec],
    ) -> String {
        self.encryption_toml_with_grace(identity, database, catalog_user, columns, 300)
    }

    /// [`encryption_toml`](Self::encryption_toml) with a given grace period.
    pub fn encryption_toml_with_grace(
        &self,
        identity: &ProxyIdentity,
        database: &str,
        catalog_user: &str,
        columns: &[ColumnSpec],
        grace_seconds: u64,
    ) -> String {
        let mut s = format!(
            "[encryption]\ndatabase = \"{database}\"\ncatalog_user = \"{catalog_user}\"\n\n"
        );
        s.push_str(&self.keyserver_toml_with_grace(identity, grace_seconds));
        for c in columns {
            s.push('\n');
            s.push_str(&c.to_toml());
        }
        s
    }
}

impl Drop for TestKeyserver {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET {url}/v1/health` with curl, verifying the server certificate against `ca`; the body.
pub fn health(url: &str, ca: &Path) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "2", "--cacert"])
        .arg(ca)
        .arg(format!("{url}/v1/health"))
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn wait_healthy(child: &mut Child, url: &str, ca: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if health(url, ca).is_some_and(|b| b.contains("\"status\":\"ok\"")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// One `[[columns]]` entry.
#[derive(Clone, Debug)]
pub struct ColumnSpec {
    /// `schema.table.column`.
    pub column: String,
    /// Logical type name (`text`, `int8`, …).
    pub ty: String,
    /// Keyring name.
    pub keyring: String,
    /// Equality (blind) index.
    pub index: bool,
    /// Index group (None: the column's own).
    pub index_group: Option<String>,
    /// Case-insensitive normalisation.
    pub case_insensitive: bool,
    /// Trim normalisation.
    pub trim: bool,
    /// A UNIQUE blind-index expression index exists.
    pub unique: bool,
    /// `migration = "encrypt"|"decrypt"` (an online migration, docs/migration.md).
    pub migration: Option<String>,
}

impl ColumnSpec {
    /// A column without index.
    pub fn new(column: &str, ty: &str, keyring: &str) -> ColumnSpec {
        ColumnSpec {
            column: column.to_string(),
            ty: ty.to_string(),
            keyring: keyring.to_string(),
            index: false,
            index_group: None,
            case_insensitive: false,
            trim: false,
            unique: false,
            migration: None,
        }
    }

    /// Configured with `migration = "<direction>"` (`encrypt` or `decrypt`).
    pub fn migrating(mut self, direction: &str) -> ColumnSpec {
        self.migration = Some(direction.to_string());
        self
    }

    /// With an equality index.
    pub fn indexed(mut self) -> ColumnSpec {
        self.index = true;
        self
    }

    /// With a unique equality index.
    pub fn unique(mut self) -> ColumnSpec {
        self.index = true;
        self.unique = true;
        self
    }

    /// In index group `g`.
    pub fn group(mut self, g: &str) -> ColumnSpec {
        self.index = true;
        self.index_group = Some(g.to_string());
        self
    }

    /// Case-insensitive (text types).
    pub fn case_insensitive(mut self) -> ColumnSpec {
        self.case_insensitive = true;
        self
    }

    /// The TOML `[[columns]]` table.
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "[[columns]]\ncolumn = \"{}\"\ntype = \"{}\"\nkeyring = \"{}\"\nindex = {}\n",
            self.column, self.ty, self.keyring, self.index
        );
        if let Some(g) = &self.index_group {
            s.push_str(&format!("index_group = \"{g}\"\n"));
        }
        if self.case_insensitive {
            s.push_str("case_insensitive = true\n");
        }
        if self.trim {
            s.push_str("trim = true\n");
        }
        if self.unique {
            s.push_str("unique = true\n");
        }
        if let Some(m) = &self.migration {
            s.push_str(&format!("migration = \"{m}\"\n"));
        }
        s
    }
}

/// The string value of `"field": "…"` in (pretty or compact) JSON text.
pub fn json_string_field(json: &str, field: &str) -> Option<String> {
    let at = json.find(&format!("\"{field}\""))?;
    let rest = json.get(at + field.len() + 2..)?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest.get(..rest.find('"')?)?.to_string())
}

/// The unsigned integer value of `"field": N` in JSON text.
pub fn json_u32_field(json: &str, field: &str) -> Option<u32> {
    let at = json.find(&format!("\"{field}\""))?;
    let rest = json.get(at + field.len() + 2..)?;
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
