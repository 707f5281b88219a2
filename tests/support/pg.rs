//! A throwaway PostgreSQL 15 cluster for system tests and benchmarks.
//!
//! initdb + pg_ctl in a temp dir, a random TCP port on 127.0.0.1 plus a unix socket in the temp
//! dir. When run as root the server runs as the `postgres` user (PostgreSQL refuses root): the
//! temp dir is chowned to it and commands drop privileges with `CommandExt::{uid,gid}`.
//! Teardown: `Drop` stops the server and removes the directory; a watchdog process also does it
//! when the test process dies without running destructors (statics, panics with abort, kill -9).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Mutex;

/// Where the PostgreSQL binaries are: `PG_BINDIR`, else `pg_config --bindir` if it is 15, else
/// `/usr/lib/postgresql/15/bin`.
pub fn bindir() -> PathBuf {
    if let Ok(d) = std::env::var("PG_BINDIR") {
        return PathBuf::from(d);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").exists() {
        return debian;
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => debian,
    }
}

/// The uid/gid to run PostgreSQL as: None when not root.
fn run_as() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let euid = fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
    if euid != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.first() == Some(&"postgres") && f.len() > 3 {
            return Some((f[2].parse().unwrap(), f[3].parse().unwrap()));
        }
    }
    panic!("running as root but there is no `postgres` user to run PostgreSQL as");
}

/// A free TCP port on 127.0.0.1 (bind-and-release; callers retry on a clash).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// TLS material for the server.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
}

/// How to start a cluster.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// `log_statement = all` (and parameter logging) to the log file.
    pub log_statements: bool,
    /// Serve TLS on TCP (`ssl = on`).
    pub tls: Option<ServerTls>,
    /// `max_connections` (default 300).
    pub max_connections: Option<u32>,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// Require TLS for every TCP connection (`hostssl` only).
    pub require_tls: bool,
}

/// A running cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    /// TCP port on 127.0.0.1; also names the unix socket.
    pub port: u16,
    run_as: Option<(u32, u32)>,
    bindir: PathBuf,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

/// Password of every role the harness creates with [`PgCluster::create_role`] unless told.
pub const SUPERUSER: &str = "postgres";

impl PgCluster {
    /// Starts a cluster; panics with the server log when it does not come up.
    pub fn start(opts: PgOptions) -> PgCluster {
        let bindir = bindir();
        assert!(
            bindir.join("initdb").exists(),
            "PostgreSQL 15 binaries not found in {} (run scripts/install-deps)",
            bindir.display()
        );
        let run_as = run_as();
        let dir = tempfile::Builder::new()
            .prefix("pgseal-pg-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut cluster = PgCluster {
            dir,
            port: 0,
            run_as,
            bindir,
            watchdog: Mutex::new(None),
        };
        let out = cluster.run(
            cluster
                .cmd("initdb")
                .arg("-D")
                .arg(cluster.data_dir())
                .args([
                    "-U",
                    SUPERUSER,
                    "--no-locale",
                    "-E",
                    "UTF8",
                    "-A",
                    "trust",
                    "-N",
                ]),
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start_watchdog();
        cluster.write_conf(&opts);
        // Retry on a port clash.
        let mut last_log = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            cluster.write_port();
            let out = cluster.run(
                cluster
                    .cmd("pg_ctl")
                    .args(["-w", "-t", "60", "-D"])
                    .arg(cluster.data_dir())
                    .arg("-l")
                    .arg(cluster.log_path())
                    .arg("start"),
            );
            if out.status.success() {
                return cluster;
            }
            last_log = cluster.log();
        }
        panic!("PostgreSQL did not start:\n{last_log}");
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bindir.join(prog));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
            c.env("HOME", self.dir.path());
        }
        c.current_dir(self.dir.path());
        c
    }

    fn run(&self, c: &mut Command) -> Output {
        c.stdin(Stdio::null()).output().unwrap()
    }

    /// The temp dir (also the unix socket directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The data directory (heap files, WAL), e.g. to search its bytes.
    pub fn data_path(&self) -> PathBuf {
        self.data_dir()
    }

    /// The postmaster's process id (from `postmaster.pid`), while the cluster runs.
    #[allow(dead_code)] // used by the benchmark harness only
    pub fn postmaster_pid(&self) -> Option<u32> {
        fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn write_file_as_owner(&self, path: &Path, contents: &str, mode: u32) {
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    fn write_conf(&self, opts: &PgOptions) {
        let dir = self.dir.path().display().to_string();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{dir}'"),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "shared_buffers = 64MB".into(),
            format!("max_connections = {}", opts.max_connections.unwrap_or(300)),
            "logging_collector = off".into(),
            "log_min_messages = warning".into(),
            "password_encryption = 'scram-sha-256'".into(),
            "include_if_exists = 'port.conf'".into(),
        ];
        if opts.log_statements {
            conf.push("log_statement = 'all'".into());
            conf.push("log_parameter_max_length = -1".into());
            conf.push("log_min_error_statement = error".into());
        }
        let mut hba = String::from("local all all trust\n");
        if let Some(tls) = &opts.tls {
            let cert = self.dir.path().join("server.crt");
            let key = self.dir.path().join("server.key");
            self.write_file_as_owner(&cert, &tls.cert_pem, 0o644);
            self.write_file_as_owner(&key, &tls.key_pem, 0o600);
            conf.push("ssl = on".into());
            conf.push(format!("ssl_cert_file = '{}'", cert.display()));
            conf.push(format!("ssl_key_file = '{}'", key.display()));
        }
        let host = if opts.require_tls { "hostssl" } else { "host" };
        hba.push_str(&format!("{host} all md5user 127.0.0.1/32 md5\n"));
        hba.push_str(&format!("{host} all pwuser 127.0.0.1/32 password\n"));
        hba.push_str(&format!("{host} all trustuser 127.0.0.1/32 trust\n"));
        hba.push_str(&format!("{host} all all 127.0.0.1/32 scram-sha-256\n"));
        conf.extend(opts.extra_conf.iter().cloned());
        let data = self.data_dir();
        let mut main = fs::read_to_string(data.join("postgresql.conf")).unwrap();
        main.push('\n');
        main.push_str(&conf.join("\n"));
        main.push('\n');
        self.write_file_as_owner(&data.join("postgresql.conf"), &main, 0o600);
        self.write_file_as_owner(&data.join("pg_hba.conf"), &hba, 0o600);
    }

    fn write_port(&self) {
        self.write_file_as_owner(
            &self.data_dir().join("port.conf"),
            &format!("port = {}\n", self.port),
            0o600,
        );
    }

    /// A watchdog shell that stops the server and removes the directory once this process is
    /// gone (its stdin pipe closes).
    fn start_watchdog(&self) {
        let dir = self.dir.path().display().to_string();
        let pg_ctl = self.bindir.join("pg_ctl").display().to_string();
        let drop_priv = match self.run_as {
            Some(_) => "setpriv --reuid=postgres --regid=postgres --clear-groups",
            None => "",
        };
        let script = format!(
            "cat >/dev/null; {drop_priv} {pg_ctl} -D '{dir}/data' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'"
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        *self.watchdog.lock().unwrap() = Some((child, stdin));
    }

    /// Runs SQL with psql as the superuser over the unix socket; panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a database owned by `owner`.
    pub fn create_database(&self, name: &str, owner: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{name}\" OWNER \"{owner}\""),
        );
    }

    /// Creates a login role with a password (stored with `encryption`: scram-sha-256 or md5).
    pub fn create_role(&self, name: &str, password: &str, encryption: &str) {
        self.psql(
            "postgres",
            &format!(
                "SET password_encryption = '{encryption}'; CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'"
            ),
        );
    }

    /// Restarts the server (fast mode: sessions get FATAL 57P01).
    pub fn restart(&self) {
        let out = self.run(
            self.cmd("pg_ctl")
                .args(["-w", "-t", "60", "-m", "fast", "-D"])
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_path())
                .arg("restart"),
        );
        assert!(
            out.status.success(),
            "restart failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stops the server now.
    pub fn stop(&self) {
        let _ = self.run(
            self.cmd("pg_ctl")
                .args(["-w", "-m", "immediate", "-D"])
                .arg(self.data_dir())
                .arg("stop"),
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        if let Ok(mut w) = self.watchdog.lock() {
            if let Some((mut child, stdin)) = w.take() {
                drop(stdin);
                let _ = child.wait();
            }
        }
    }
}

/// Writes `contents` to a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = fs::File::create(&p).unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    p
}
