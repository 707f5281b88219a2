//! `--migration`: the online migration (`pgseal-proxy migrate`, proxy/src/migrate) on a large
//! table while an application works through the proxy.
//!
//! Per scenario (the default throttle, `--rate 0`; each on a fresh environment: PostgreSQL 15,
//! a keyserver, `pgseal-proxy serve` with `public.mig.{email,note,born}` configured with
//! `migration = "encrypt"`: email text `unique = true`, note text without index, born int4
//! `index = true`):
//! 1. the table is made directly upstream, owned by the application's user, without a primary
//!    key (`id int` with a plain index, `email` NOT NULL UNIQUE) and filled with `--rows` rows
//!    (generate_series), then VACUUM ANALYZE;
//! 2. **before**: pgbench through the proxy for `--secs` seconds (after 5 s of warm-up) with a
//!    custom script (a SELECT of a row by id, an UPDATE of two migrating columns of a row by id);
//! 3. **during**: `pgseal-proxy migrate --config …` (the real binary, its per-batch lines on a
//!    pipe); the same pgbench starts at its first backfill batch and runs until the verify pass
//!    has finished, then is stopped: the cut-over and the cleanup run without application load
//!    (pgbench would abort every client on the refusal while the table is cut over, and on a
//!    prepared statement planned under the old catalog). TPS is the sum of pgbench's per-second
//!    samples (`-P 1`) falling into the backfill pass, and into the verify pass;
//! 4. **after**: the same pgbench for `--secs` seconds on the now encrypted columns.
//!
//! pgbench ends a client at its first error (the proxy's transient refusals included), so each
//! aborted client is replaced by a one-client pgbench after 200 ms, as an application would
//! retry; the counts and the errors are printed.
//!
//! Options: `--rows N` (1,000,000), `--secs S` (30), `--rounds N` (1; medians over rounds),
//! `--clients N` (8, with `-j 2`), `--modes M` (prepared), `--batch N` (migrate's default),
//! `--rates default,0` (the scenarios: `default` = no `--rate` flag, a number = `--rate N`),
//! `--app-rate N` (`pgbench -R N`: an application at N transactions/s instead of flat out).
//! Each migrate run's output (and pgbench's progress lines) is kept in
//! `$TMPDIR/pgseal-mbench-<scenario>-<round>.log`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::keyserver::{cargo_bin, ColumnSpec, TestKeyserver};
use crate::support::pg::{bindir, PgCluster, PgOptions};
use crate::support::{
    proxy_env, proxy_toml, ProxyProcess, APP_PASSWORD, APP_USER, ENC_DB, UPSTREAM_PASSWORD,
};

const KR: &str = "mbench";
const TABLE: &str = "mig";

/// What `--migration` runs.
pub struct MigrationPlan {
    pub rows: u64,
    pub secs: u32,
    pub rounds: u32,
    pub clients: u32,
    pub mode: String,
    pub batch: Option<usize>,
    /// `pgbench -R`: the application's transactions per second in total (None: as fast as it
    /// goes).
    pub app_rate: Option<u64>,
    /// None: migrate's default throttle (no `--rate`); Some(n): `--rate n` (0: unthrottled).
    pub rates: Vec<Option<u64>>,
}

impl MigrationPlan {
    /// The plan from the command line (`opt` looks up an option's value).
    pub fn from_args(short: bool, opt: &dyn Fn(&str) -> Option<String>) -> MigrationPlan {
        MigrationPlan {
            rows: opt("--rows")
                .map(|v| v.replace(['_', ','], "").parse().unwrap())
                .unwrap_or(if short { 100_000 } else { 1_000_000 }),
            secs: opt("--secs")
                .map(|v| v.parse().unwrap())
                .unwrap_or(if short { 5 } else { 30 }),
            rounds: opt("--rounds").map(|v| v.parse().unwrap()).unwrap_or(1),
            clients: opt("--clients")
                .and_then(|v| v.split(',').next().map(|c| c.parse().unwrap()))
                .unwrap_or(8),
            mode: opt("--modes")
                .and_then(|v| v.split(',').next().map(str::to_owned))
                .unwrap_or_else(|| "prepared".into()),
            batch: opt("--batch").map(|v| v.parse().unwrap()),
            app_rate: opt("--app-rate").map(|v| v.parse().unwrap()),
            rates: opt("--rates")
                .unwrap_or_else(|| "default,0".into())
                .split(',')
                .map(|r| match r {
                    "default" => None,
                    n => Some(n.parse().unwrap()),
                })
                .collect(),
        }
    }
}

fn rate_label(rate: Option<u64>) -> String {
    match rate {
        None => format!("default ({} rows/s)", pgseal_proxy::migrate::DEFAULT_RATE),
        Some(0) => "unthrottled (--rate 0)".into(),
        Some(n) => format!("--rate {n}"),
    }
}

fn columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new(&format!("public.{TABLE}.email"), "text", KR)
            .unique()
            .migrating("encrypt"),
        ColumnSpec::new(&format!("public.{TABLE}.note"), "text", KR).migrating("encrypt"),
        ColumnSpec::new(&format!("public.{TABLE}.born"), "int4", KR)
            .indexed()
            .migrating("encrypt"),
    ]
}

/// PostgreSQL (without statement logging), a keyserver, an encrypting `pgseal-proxy serve`
/// (log level warn). Dropped in field order: the proxy first.
struct Env {
    proxy: ProxyProcess,
    _ks: TestKeyserver,
    pg: PgCluster,
}

impl Env {
    fn start() -> Env {
        let pg = PgCluster::start(PgOptions {
            max_connections: Some(100),
            extra_conf: vec!["shared_buffers = 256MB".into()],
            ..Default::default()
        });
        pg.create_role(APP_USER, UPSTREAM_PASSWORD, "scram-sha-256");
        pg.create_database(ENC_DB, APP_USER);
        let ks = TestKeyserver::start();
        let identity = ks.provision_proxy("proxy-mbench", &[KR]);
        let mut toml = proxy_toml(
            &format!(
                "host = \"{}\"\nport = {}",
                pg.socket_dir().display(),
                pg.port
            ),
            "",
        );
        toml.push('\n');
        toml.push_str(&ks.encryption_toml(&identity, ENC_DB, APP_USER, &columns()));
        let proxy = ProxyProcess::start_with_log(&toml, &proxy_env(), "warn");
        Env { proxy, _ks: ks, pg }
    }

    fn direct(&self, sql: &str) -> String {
        self.pg.psql(ENC_DB, sql)
    }

    /// The table, filled directly upstream and owned by the application's user.
    fn create_table(&self, rows: u64) -> Duration {
        let started = Instant::now();
        self.direct(&format!(
            "CREATE TABLE {TABLE} (id int NOT NULL, email text NOT NULL, note text, born int4);\
             INSERT INTO {TABLE} SELECT g, 'user' || g || '@example.org', 'note ' || md5(g::text), 1900 + g % 120 \
               FROM generate_series(1, {rows}) g;\
             ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_email_key UNIQUE (email);\
             CREATE INDEX {TABLE}_id_idx ON {TABLE} (id);\
             ALTER TABLE {TABLE} OWNER TO {APP_USER}"
        ));
        self.direct(&format!("VACUUM ANALYZE {TABLE}"));
        self.direct("CHECKPOINT");
        started.elapsed()
    }

    fn table_size_mb(&self) -> f64 {
        self.direct(&format!(
            "SELECT pg_total_relation_size('{TABLE}') / 1048576.0"
        ))
        .parse()
        .unwrap_or(0.0)
    }
}

fn median_of(runs: &[Figures], f: impl Fn(&Figures) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pgbench_cmd(port: u16, plan: &MigrationPlan, script: &Path, clients: u32) -> Command {
    let jobs = if clients > 1 { 2 } else { 1 };
    let mut cmd = Command::new(bindir().join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP_USER])
        .args(["-n", "-M", &plan.mode, "-f"])
        .arg(script)
        .args(["-c", &clients.to_string(), "-j", &jobs.to_string()])
        .args(["-T", "86400", "-P", "1"]);
    if let Some(r) = plan.app_rate {
        // This process's share of the total.
        let share = (r * u64::from(clients)).div_ceil(u64::from(plan.clients.max(1)));
        cmd.args(["-R", &share.max(1).to_string()]);
    }
    cmd.arg(ENC_DB)
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Src {
    Migrate,
    MigrateErr,
    /// The pgbench process of that index.
    Pgbench(usize),
}

struct Event {
    at: Instant,
    src: Src,
    /// None: end of that stream.
    line: Option<String>,
}

fn forward<R: Read + Send + 'static>(r: R, src: Src, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let _ = tx.send(Event {
                at: Instant::now(),
                src,
                line: Some(line),
            });
        }
        let _ = tx.send(Event {
            at: Instant::now(),
            src,
            line: None,
        });
    });
}

/// `key=value` of a migrate batch line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// A pgbench `-P` line: (seconds since start, tps, latency ms).
fn progress_sample(line: &str) -> Option<(f64, f64, f64)> {
    let rest = line.strip_prefix("progress: ")?;
    let mut parts = rest.split(", ");
    let secs = parts.next()?.strip_suffix(" s")?.parse().ok()?;
    let tps = parts.next()?.strip_suffix(" tps")?.parse().ok()?;
    let lat = parts
        .next()?
        .strip_prefix("lat ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((secs, tps, lat))
}

/// Delay before a client that pgbench aborted is replaced (an application's "retry shortly").
const REPLACE_AFTER: Duration = Duration::from_millis(200);

/// The application: pgbench with `-c clients` (`-T` a day, `-P 1`) until stopped. pgbench ends
/// a client at its first error; each client it aborts is replaced, after [`REPLACE_AFTER`], by
/// a pgbench process of one client, so the load keeps its number of clients. Its TPS over a
/// window is the sum of every process's per-second samples falling into it.
struct Load<'a> {
    port: u16,
    plan: &'a MigrationPlan,
    script: &'a Path,
    tx: mpsc::Sender<Event>,
    procs: Vec<(Child, Instant)>,
    /// Replacements due.
    due: Vec<Instant>,
    /// (end of the second, process, tps, latency ms).
    samples: Vec<(Instant, usize, f64, f64)>,
    /// Clients pgbench aborted, with the time.
    aborted: Vec<Instant>,
    /// The distinct errors they were aborted with (client numbers left out).
    errors: Vec<String>,
}

impl<'a> Load<'a> {
    /// A load with `plan.clients` clients, started now.
    fn start(
        port: u16,
        plan: &'a MigrationPlan,
        script: &'a Path,
        tx: mpsc::Sender<Event>,
    ) -> Load<'a> {
        let mut l = Load::new(port, plan, script, tx);
        l.spawn(plan.clients);
        l
    }

    /// A load without clients yet.
    fn new(
        port: u16,
        plan: &'a MigrationPlan,
        script: &'a Path,
        tx: mpsc::Sender<Event>,
    ) -> Load<'a> {
        Load {
            port,
            plan,
            script,
            tx,
            procs: Vec::new(),
            due: Vec::new(),
            samples: Vec::new(),
            aborted: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn spawn(&mut self, clients: u32) {
        let mut c = pgbench_cmd(self.port, self.plan, self.script, clients)
            .spawn()
            .unwrap();
        let idx = self.procs.len();
        forward(c.stderr.take().unwrap(), Src::Pgbench(idx), self.tx.clone());
        self.procs.push((c, Instant::now()));
    }

    /// Starts the replacements that are due.
    fn tick(&mut self) {
        let now = Instant::now();
        let ready = self.due.iter().filter(|d| **d <= now).count();
        self.due.retain(|d| *d > now);
        for _ in 0..ready {
            self.spawn(1);
        }
    }

    /// A line of pgbench process `idx`.
    fn line(&mut self, at: Instant, idx: usize, line: &str) {
        if let Some((secs, tps, lat)) = progress_sample(line) {
            if let Some((_, t0)) = self.procs.get(idx) {
                self.samples
                    .push((*t0 + Duration::from_secs_f64(secs), idx, tps, lat));
            }
        } else if let Some(at_client) = line.find("client ") {
            if line.contains(" aborted in command") {
                self.aborted.push(at);
                self.due.push(at + REPLACE_AFTER);
                let why = line
                    .find("ERROR:")
                    .and_then(|i| line.get(i..))
                    .unwrap_or_else(|| line.get(at_client..).unwrap_or(line))
                    .to_string();
                if !self.errors.contains(&why) {
                    self.errors.push(why);
                }
            }
        }
    }

    fn stop(&mut self) {
        for (c, _) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.due.clear();
    }

    /// Samples whose second's middle falls into `[from, to]`.
    fn window(
        &self,
        from: Instant,
        to: Instant,
    ) -> impl Iterator<Item = &(Instant, usize, f64, f64)> {
        self.samples.iter().filter(move |(at, _, _, _)| {
            let mid = at.checked_sub(Duration::from_millis(500)).unwrap_or(*at);
            mid >= from && mid <= to
        })
    }

    /// (TPS, latency ms weighted by transactions) over `[from, to]`: every process's
    /// transactions over the seconds the first process (the one of `-c clients`) reported.
    fn tps(&self, from: Option<Instant>, to: Option<Instant>) -> (f64, f64) {
        let (Some(from), Some(to)) = (from, to) else {
            return (f64::NAN, f64::NAN);
        };
        let seconds = self.window(from, to).filter(|s| s.1 == 0).count();
        let tx: f64 = self.window(from, to).map(|s| s.2).sum();
        let lat: f64 = self.window(from, to).map(|s| s.2 * s.3).sum();
        if seconds == 0 || tx == 0.0 {
            return (f64::NAN, f64::NAN);
        }
        (tx / seconds as f64, lat / tx)
    }
}

/// Waits for events until `deadline`, handing pgbench's lines to `load` and everything to
/// `other` (which returns true to stop waiting).
fn pump(
    rx: &mpsc::Receiver<Event>,
    load: &mut Load<'_>,
    log: &mut Log,
    deadline: Option<Instant>,
    mut other: impl FnMut(&Event, &mut Load<'_>) -> bool,
) {
    loop {
        load.tick();
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return;
        }
        let wait = deadline
            .map(|d| d - now)
            .unwrap_or(Duration::MAX)
            .min(Duration::from_millis(100));
        let Ok(ev) = rx.recv_timeout(wait) else {
            continue;
        };
        log.event(&ev);
        if let (Src::Pgbench(i), Some(line)) = (ev.src, &ev.line) {
            load.line(ev.at, i, line);
        }
        if other(&ev, load) {
            return;
        }
    }
}

/// The log of a scenario, written as lines come (follow it with `tail -f`).
struct Log {
    started: Instant,
    file: std::fs::File,
    tail: Vec<String>,
}

impl Log {
    fn note(&mut self, text: &str) {
        let entry = format!("{:9.3} {text}\n", self.started.elapsed().as_secs_f64());
        let _ = std::io::Write::write_all(&mut self.file, entry.as_bytes());
    }

    fn event(&mut self, ev: &Event) {
        let Some(line) = &ev.line else { return };
        let entry = format!(
            "{:9.3} {:?} {line}",
            ev.at.duration_since(self.started).as_secs_f64(),
            ev.src
        );
        let _ = std::io::Write::write_all(&mut self.file, format!("{entry}\n").as_bytes());
        if !line.starts_with("progress:") {
            self.tail.push(entry);
            if self.tail.len() > 15 {
                self.tail.remove(0);
            }
        }
    }
}

/// One scenario's figures.
#[derive(Clone, Default)]
struct Figures {
    fill_s: f64,
    tps_before: f64,
    lat_before_ms: f64,
    /// migrate's `rate=` of the last backfill batch (rows read / s since the pass started).
    backfill_rate: f64,
    /// Rows written and read by the backfill pass (block pass and sweeps).
    backfill_written: u64,
    backfill_read: u64,
    backfill_batches: u64,
    backfill_s: f64,
    verify_s: f64,
    /// From migrate's start to its first backfill batch (announce wait, shadow columns,
    /// constraint validation, shadow indexes).
    prepare_s: f64,
    /// From the verify pass's end to the cut-over line (announce wait, lock, fill, swap): the
    /// time the proxies refuse the table.
    cutover_phase_s: f64,
    cutover_ms: f64,
    cutover_filled: u64,
    total_s: f64,
    tps_backfill: f64,
    lat_backfill_ms: f64,
    tps_verify: f64,
    tps_after: f64,
    size_before_mb: f64,
    size_after_mb: f64,
    /// Clients pgbench aborted (and that were replaced): before, during backfill + verify,
    /// after.
    aborted: [u64; 3],
    errors: Vec<String>,
    error: Option<String>,
}

/// One scenario on a fresh environment.
fn scenario(plan: &MigrationPlan, rate: Option<u64>, round: u32) -> Figures {
    let mut f = Figures::default();
    let env = Env::start();
    f.fill_s = env.create_table(plan.rows).as_secs_f64();
    f.size_before_mb = env.table_size_mb();
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("app.sql");
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {rows})\n\\set n random(1, 1000000000)\n\\set b random(1900, 2020)\n\
             SELECT id, email, note, born FROM {TABLE} WHERE id = :id;\n\
             UPDATE {TABLE} SET note = :n, born = :b WHERE id = :id;\n",
            rows = plan.rows
        ),
    )
    .unwrap();
    let name = match rate {
        None => "default".to_string(),
        Some(n) => format!("rate{n}"),
    };
    let log_path: PathBuf = std::env::temp_dir().join(format!("pgseal-mbench-{name}-{round}.log"));
    let mut log = Log {
        started: Instant::now(),
        file: std::fs::File::create(&log_path).unwrap(),
        tail: Vec::new(),
    };
    println!("  log: {}", log_path.display());
    // The proxy refreshes its catalog in the background; let it see the new table.
    std::thread::sleep(Duration::from_secs(2));
    let port = env.proxy.port;
    let (tx, rx) = mpsc::channel();

    // Warm-up, then before.
    log.note("warm-up");
    let mut load = Load::start(port, plan, &script, tx.clone());
    pump(
        &rx,
        &mut load,
        &mut log,
        Some(Instant::now() + Duration::from_secs(5)),
        |_, _| false,
    );
    load.stop();
    log.note("before");
    let mut load = Load::start(port, plan, &script, tx.clone());
    let from = Instant::now();
    let to = from + Duration::from_secs(u64::from(plan.secs));
    pump(&rx, &mut load, &mut log, Some(to), |_, _| false);
    load.stop();
    (f.tps_before, f.lat_before_ms) = load.tps(Some(from), Some(to));
    f.aborted[0] = load.aborted.len() as u64;
    f.errors.extend(load.errors.iter().cloned());

    // During: migrate, with the load from its first backfill batch to its verify pass's end.
    let mut args: Vec<String> = vec!["migrate".into()];
    if let Some(r) = rate {
        args.extend(["--rate".into(), r.to_string()]);
    }
    if let Some(b) = plan.batch {
        args.extend(["--batch".into(), b.to_string()]);
    }
    log.note(&format!("pgseal-proxy {}", args.join(" ")));
    let bin = cargo_bin("pgseal-proxy", "PGSEAL_PROXY_BIN");
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(&args)
        .arg("--config")
        .arg(env.proxy.config_path())
        .envs(proxy_env())
        .env("PGSEAL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    forward(child.stdout.take().unwrap(), Src::Migrate, tx.clone());
    forward(child.stderr.take().unwrap(), Src::MigrateErr, tx.clone());
    // The load starts at the first backfill batch.
    let mut load = Load::new(port, plan, &script, tx.clone());
    let (mut backfill_start, mut backfill_end, mut verify_end, mut cutover_at) =
        (None, None, None, None);
    let mut open = 2;
    pump(&rx, &mut load, &mut log, None, |ev, load| {
        let Some(line) = &ev.line else {
            if matches!(ev.src, Src::Migrate | Src::MigrateErr) {
                open -= 1;
            }
            return open == 0;
        };
        if !matches!(ev.src, Src::Migrate | Src::MigrateErr) {
            return false;
        }
        if line.contains("pass=backfill batch=") {
            if backfill_start.is_none() {
                backfill_start = Some(ev.at);
                load.spawn(plan.clients);
            }
            if let Some(r) = field(line, "rate") {
                f.backfill_rate = r.trim_end_matches("/s").parse().unwrap_or(f64::NAN);
            }
            f.backfill_batches += 1;
        } else if line.contains("pass=backfill finished") {
            backfill_end = Some(ev.at);
            // "… finished: N row(s) read, M written"
            let nums: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if let [read, written] = nums[..] {
                f.backfill_read = read;
                f.backfill_written = written;
            }
        } else if line.contains("pass=verify finished") {
            verify_end = Some(ev.at);
            load.stop();
        } else if let Some(rest) = line.strip_prefix("migrate: cut over ") {
            cutover_at = Some(ev.at);
            // "… in N ms (M row(s) filled under the lock)"
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "ms") {
                f.cutover_ms = words[i - 1].parse().unwrap_or(f64::NAN);
                f.cutover_filled = words
                    .get(i + 1)
                    .and_then(|w| w.trim_start_matches('(').parse().ok())
                    .unwrap_or(0);
            }
        }
        false
    });
    let status = child.wait().unwrap();
    f.total_s = started.elapsed().as_secs_f64();
    load.stop();
    let span = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => f64::NAN,
    };
    f.prepare_s = backfill_start.map_or(f64::NAN, |b| b.duration_since(started).as_secs_f64());
    f.backfill_s = span(backfill_start, backfill_end);
    f.verify_s = span(backfill_end, verify_end);
    f.cutover_phase_s = span(verify_end, cutover_at);
    (f.tps_backfill, f.lat_backfill_ms) = load.tps(backfill_start, backfill_end);
    f.tps_verify = load.tps(backfill_end, verify_end).0;
    f.aborted[1] = load.aborted.len() as u64;
    f.errors.extend(load.errors.iter().cloned());
    if !status.success() {
        f.error = Some(format!(
            "migrate exited with {status}; last lines:\n{}",
            log.tail.join("\n")
        ));
        return f;
    }
    // Sanity: every migrated column is cells upstream; a row reads back through the proxy.
    let types = env.direct(&format!(
        "SELECT string_agg(DISTINCT format_type(atttypid, atttypmod), ',') FROM pg_attribute \
         WHERE attrelid = '{TABLE}'::regclass AND attname IN ('email', 'note', 'born') AND NOT attisdropped"
    ));
    let through = crate::support::psql_proxy(
        port,
        ENC_DB,
        &[
            "-q",
            "-A",
            "-t",
            "-c",
            &format!("SELECT email FROM {TABLE} WHERE id = 7"),
        ],
        None,
    );
    let through = String::from_utf8_lossy(&through.stdout).trim().to_string();
    if types.trim() != "bytea" || through != "user7@example.org" {
        f.error = Some(format!(
            "after migrate: column types {types:?}, id 7 through the proxy {through:?}"
        ));
        return f;
    }
    f.size_after_mb = env.table_size_mb();
    // After: the proxy's next catalog load serves the new form.
    std::thread::sleep(Duration::from_secs(2));
    log.note("after");
    let mut load = Load::start(port, plan, &script, tx.clone());
    let from = Instant::now();
    let to = from + Duration::from_secs(u64::from(plan.secs));
    pump(&rx, &mut load, &mut log, Some(to), |_, _| false);
    load.stop();
    f.tps_after = load.tps(Some(from), Some(to)).0;
    f.aborted[2] = load.aborted.len() as u64;
    f.errors.extend(load.errors.iter().cloned());
    f.errors.dedup();
    f
}

pub fn run(plan: &MigrationPlan) {
    println!(
        "migration benchmark: {} rows, 3 migrating columns (email text unique, note text, born int4 indexed); \
         pgbench -M {} -c {}{} -f (SELECT by id; UPDATE note, born by id), before/after -T {}; {} round(s); machine: {}",
        plan.rows,
        plan.mode,
        plan.clients,
        plan.app_rate
            .map(|r| format!(" -R {r}"))
            .unwrap_or_default(),
        plan.secs,
        plan.rounds,
        crate::machine()
    );
    let mut results: Vec<(Option<u64>, Vec<Figures>)> =
        plan.rates.iter().map(|r| (*r, Vec::new())).collect();
    for round in 0..plan.rounds.max(1) {
        let mut order: Vec<usize> = (0..results.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let rate = results[i].0;
            println!("round {}: {}", round + 1, rate_label(rate));
            let f = scenario(plan, rate, round + 1);
            println!(
                "  table filled in {:.1} s; {} backfill batch line(s)",
                f.fill_s, f.backfill_batches
            );
            for e in &f.errors {
                println!("  pgbench aborted client(s) with: {e}");
            }
            if let Some(e) = &f.error {
                println!("  FAILED: {e}");
            }
            header();
            print_row(
                &format!("{} (round {})", rate_label(rate), round + 1),
                std::slice::from_ref(&f),
            );
            results[i].1.push(f);
        }
    }
    println!();
    header();
    for (rate, runs) in &results {
        let label = if runs.len() > 1 {
            format!("{} (median of {})", rate_label(*rate), runs.len())
        } else {
            rate_label(*rate)
        };
        print_row(&label, runs);
    }
    println!(
        "note: a shared, noisy 2-vCPU VM unless the machine line says otherwise; PostgreSQL runs with fsync = off \
         (the test clusters' settings); the load is stopped after the verify pass (the cut-over runs without it); \
         clients that pgbench aborted on an error were replaced after 200 ms (counts in the last column)"
    );
}

fn header() {
    println!("| throttle | backfill rows/s | backfill s | rows written (read) | verify s | prepare s | cut-over phase s | cut-over ms (rows filled under the lock) | migrate total s | TPS before | TPS during backfill | during/before | lat ms before → during | TPS during verify | TPS after (encrypted) | table MB before → after | clients aborted before / during / after |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

fn print_row(label: &str, runs: &[Figures]) {
    let ok: Vec<Figures> = runs.iter().filter(|f| f.error.is_none()).cloned().collect();
    let failed = runs.len() - ok.len();
    if ok.is_empty() {
        println!("| {label} | failed ({failed}) |");
        return;
    }
    let m = |g: fn(&Figures) -> f64| median_of(&ok, g);
    println!(
        "| {label} | {:.0} | {:.1} | {:.0} ({:.0}) | {:.1} | {:.1} | {:.1} | {:.0} ({:.0}) | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} → {:.2} | {:.0} | {:.0} | {:.0} → {:.0} | {} |{}",
        m(|f| f.backfill_rate),
        m(|f| f.backfill_s),
        m(|f| f.backfill_written as f64),
        m(|f| f.backfill_read as f64),
        m(|f| f.verify_s),
        m(|f| f.prepare_s),
        m(|f| f.cutover_phase_s),
        m(|f| f.cutover_ms),
        m(|f| f.cutover_filled as f64),
        m(|f| f.total_s),
        m(|f| f.tps_before),
        m(|f| f.tps_backfill),
        median_of(&ok, |f| f.tps_backfill / f.tps_before),
        m(|f| f.lat_before_ms),
        m(|f| f.lat_backfill_ms),
        m(|f| f.tps_verify),
        m(|f| f.tps_after),
        m(|f| f.size_before_mb),
        m(|f| f.size_after_mb),
        (0..3)
            .map(|i| ok.iter().map(|f| f.aborted[i]).sum::<u64>().to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        if failed > 0 {
            format!(" ({failed} failed run(s) left out)")
        } else {
            String::new()
        }
    );
}
