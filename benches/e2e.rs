//! End-to-end benchmark: direct PostgreSQL vs PgBouncer (session pooling) vs pgseal-proxy
//! (pass-through), side by side on one PostgreSQL, with `pgbench -S` at `-c 1` and `-c 8 -j 2` in
//! `-M simple|extended|prepared`; then the proxy's RSS with 1, 100 and 400 idle client connections.
//!
//! Run: `cargo bench --bench e2e` (about 8 minutes) or `cargo bench --bench e2e -- --short`
//! (about 1 minute, CI). Prints a table; figures are not asserted. Every round runs the
//! targets back to back (PgBouncer and the proxy swap places every round; plain and encrypted
//! likewise), and besides the ratio of the median rounds the table gives the median of the
//! per-round ratios — a paired comparison, less sensitive to load that drifts during the run
//! on a shared machine; the target lines judge that one. The proxy runs as a separate
//! process: this benchmark binary re-executes itself in proxy mode, so the proxy is built with
//! the bench (release) profile and its memory can be read from /proc.
//!
//! Then, unless `--no-encrypted`: the encryption overhead. Tables through the same proxy: `enc` with
//! three protected columns (`a int8` with an equality index, `b text`, `c date`), made with the DDL
//! `pgseal-proxy schema` prints (bytea, the blind-index expression index, the stored-cell CHECK
//! constraints), `enc_nochk` the same without the CHECK constraints, and an identical plaintext
//! one; pgbench custom scripts for a point lookup by `a` and for an insert, at `-c 8 -j 2` in
//! `-M simple|extended|prepared`; prints encrypted/plain TPS (`lookup`, `insert`) and with/without
//! the CHECK constraints (`insert-check`). The proxy gets its keys from
//! [`pgseal_proxy::keys::StaticKeys`] (the keyserver is not on the per-statement path: keys are cached)
//! and its catalog from the upstream like `pgseal-proxy serve`. `--encrypted-only` skips the
//! pass-through section.
//!
//! `--migration` runs only the online-migration benchmark instead (benches/e2e/migration.rs):
//! `pgseal-proxy migrate` encrypting three columns of a 1,000,000-row table, its backfill rate and
//! the application's TPS through the proxy before, during and after it, at the default throttle
//! and unthrottled (`--rows N`, `--secs S`, `--rounds N`, `--rates default,0`, `--batch N`,
//! `--app-rate N`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "e2e/migration.rs"]
mod migration;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::pg::{bindir, free_port, PgCluster, PgOptions};

const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";
const DB: &str = "bench";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__serve_proxy") {
        serve_proxy(Path::new(&args[2]));
        return;
    }
    if args.get(1).map(String::as_str) == Some("__serve_proxy_encrypted") {
        serve_proxy_encrypted(Path::new(&args[2]));
        return;
    }
    // `cargo test --all-targets` runs benches without `--bench`: do nothing then.
    if !args.iter().any(|a| a == "--bench") {
        println!("e2e: skipped (run with `cargo bench --bench e2e [-- --short]`)");
        return;
    }
    let short = args.iter().any(|a| a == "--short")
        || std::env::var("PGSEAL_BENCH_SHORT").is_ok_and(|v| v == "1");
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut plan = Plan {
        secs: if short { 2 } else { 5 },
        scale: if short { 1 } else { 10 },
        modes: vec!["simple".into(), "extended".into(), "prepared".into()],
        clients: vec![1, 8],
        rounds: if short { 1 } else { 3 },
        short,
        proxy_workers: opt("--proxy-workers").map(|v| v.parse().unwrap()),
        encrypted: !args.iter().any(|a| a == "--no-encrypted"),
        pass_through: !args.iter().any(|a| a == "--encrypted-only"),
        scripts: vec!["lookup".into(), "insert".into(), "insert-check".into()],
    };
    if args.iter().any(|a| a == "--migration") {
        migration::run(&migration::MigrationPlan::from_args(short, &opt));
        return;
    }
    if let Some(v) = opt("--scripts") {
        plan.scripts = v.split(',').map(str::to_owned).collect();
    }
    if let Some(v) = opt("--rounds") {
        plan.rounds = v.parse().unwrap();
    }
    if let Some(v) = opt("--secs") {
        plan.secs = v.parse().unwrap();
    }
    if let Some(v) = opt("--modes") {
        plan.modes = v.split(',').map(str::to_owned).collect();
    }
    if let Some(v) = opt("--clients") {
        plan.clients = v.split(',').map(|c| c.parse().unwrap()).collect();
    }
    if plan.pass_through {
        run(&plan);
    }
    if plan.encrypted {
        run_encrypted(&plan);
    }
}

/// What to run: `--short`, `--secs N` (per round), `--rounds N`, `--modes
/// simple,extended,prepared`, `--clients 1,8`, `--proxy-workers N`, `--no-encrypted`,
/// `--encrypted-only`, `--scripts lookup,insert,insert-check` (encryption section).
struct Plan {
    secs: u32,
    rounds: u32,
    scale: u32,
    modes: Vec<String>,
    clients: Vec<u32>,
    short: bool,
    proxy_workers: Option<usize>,
    encrypted: bool,
    pass_through: bool,
    /// Custom scripts of the encryption section.
    scripts: Vec<String>,
}

/// Proxy mode: run pgseal-proxy from a config file until SIGTERM, like `pgseal-proxy serve`.
fn serve_proxy(config: &Path) {
    let config = pgseal_proxy::Config::from_file(config).unwrap();
    let threads = config.threads();
    let server = pgseal_proxy::Server::bind_sync(
        config.resolve().unwrap(),
        Arc::new(pgseal_proxy::PassThrough),
    )
    .unwrap();
    server
        .run_threaded(threads, pgseal_proxy::shutdown::terminate_signal())
        .unwrap();
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn postgres_ids() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres")).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
    })
}

fn start_pgbouncer(pg: &PgCluster, dir: &Path) -> (Killed, u16, String) {
    let port = free_port();
    let ini = dir.join("pgbouncer.ini");
    let users = dir.join("userlist.txt");
    std::fs::write(&users, format!("\"{USER}\" \"{PASSWORD}\"\n")).unwrap();
    std::fs::write(
        &ini,
        format!(
            "[databases]\n{DB} = host={sock} port={pgport} dbname={DB}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {users}\npool_mode = session\n\
             max_client_conn = 1000\ndefault_pool_size = 20\nlogfile = {log}\n\
             log_connections = 0\nlog_disconnections = 0\n",
            sock = pg.socket_dir().display(),
            pgport = pg.port,
            users = users.display(),
            log = dir.join("pgbouncer.log").display(),
        ),
    )
    .unwrap();
    let version = Command::new("pgbouncer")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|_| "pgbouncer not found".into());
    let mut cmd = Command::new("pgbouncer");
    cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some((uid, gid)) = postgres_ids() {
        for p in [&ini, &users] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
        cmd.uid(uid).gid(gid);
    }
    let child = Killed(cmd.spawn().expect("start pgbouncer (scripts/install-deps)"));
    wait_port(port);
    (child, port, version)
}

fn start_proxy(pg: &PgCluster, dir: &Path, workers: Option<usize>) -> (Killed, u16) {
    let port = free_port();
    let workers = workers
        .map(|w| format!("workers = {w}\n"))
        .unwrap_or_default();
    let cfg = dir.join("proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\n{workers}[upstream]\nhost = \"{}\"\nport = {}\n\
             [[users]]\nname = \"{USER}\"\npassword_env = \"BENCH_PROXY_PASSWORD\"\n\
             [limits]\nmax_connections = 2000\n[shutdown]\ngrace_seconds = 1\n",
            pg.socket_dir().display(),
            pg.port
        ),
    )
    .unwrap();
    (spawn_self("__serve_proxy", &cfg, port), port)
}

/// Runs this binary in proxy mode `mode` with config `cfg` and waits until `port` listens.
fn spawn_self(mode: &str, cfg: &Path, port: u16) -> Killed {
    let child = Command::new(std::env::current_exe().unwrap())
        .arg(mode)
        .arg(cfg)
        .env("BENCH_PROXY_PASSWORD", PASSWORD)
        .env("PGSEAL_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    Killed(child)
}

#[derive(Clone, Copy, Default)]
struct Run {
    tps: f64,
    latency_ms: f64,
    failed: u64,
    /// CPU time of the pooler/proxy process per transaction, µs (0 for direct).
    cpu_us_per_tx: f64,
    /// CPU time of the PostgreSQL cluster (postmaster, backends, background processes) per
    /// transaction, µs.
    pg_cpu_us_per_tx: f64,
    /// CPU time of pgbench per transaction, µs.
    client_cpu_us_per_tx: f64,
}

impl Run {
    /// CPU time per transaction of everything the transaction runs through (PostgreSQL, the
    /// pooler/proxy, pgbench), µs. On a saturated machine TPS is about the cores divided by
    /// this, so the ratio of two runs' totals estimates their TPS ratio from CPU accounting,
    /// which moves much less with the neighbours' load than the TPS itself.
    fn total_cpu_us_per_tx(&self) -> f64 {
        self.cpu_us_per_tx + self.pg_cpu_us_per_tx + self.client_cpu_us_per_tx
    }
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name (state is field 0).
fn stat_fields(pid: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .collect()
}

/// utime + stime of a process (all threads), in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let f = stat_fields(&pid.to_string());
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    get(11) + get(12)
}

/// CPU ticks of a PostgreSQL cluster: the postmaster's own and its reaped children's
/// (cutime, cstime: backends that have exited), plus every live child's.
fn cluster_ticks(postmaster: u32) -> u64 {
    let f = stat_fields(&postmaster.to_string());
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    let mut ticks = get(11) + get(12) + get(13) + get(14);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let f = stat_fields(pid);
        if f.get(1).copied() == Some(u64::from(postmaster)) {
            ticks += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        }
    }
    ticks
}

/// CPU ticks of this process's reaped children (pgbench once it has been waited for).
fn children_ticks() -> u64 {
    let f = stat_fields("self");
    f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0)
}

fn pgbench(
    port: u16,
    mode: &str,
    clients: u32,
    secs: u32,
    pid: Option<u32>,
    postmaster: u32,
) -> Run {
    pgbench_script(port, mode, clients, secs, pid, postmaster, None)
}

/// `pgbench -S`, or the custom script `script` (`-f`).
fn pgbench_script(
    port: u16,
    mode: &str,
    clients: u32,
    secs: u32,
    pid: Option<u32>,
    postmaster: u32,
    script: Option<&Path>,
) -> Run {
    let ticks_before = pid.map(cpu_ticks);
    let (pg_before, client_before) = (cluster_ticks(postmaster), children_ticks());
    let jobs = if clients > 1 { 2 } else { 1 };
    let out = Command::new(bindir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER])
        .args(match script {
            Some(_) => vec!["-n", "-M", mode, "-f"],
            None => vec!["-S", "-n", "-M", mode],
        })
        .args(script)
        .args(["-c", &clients.to_string(), "-j", &jobs.to_string()])
        .args(["-T", &secs.to_string(), DB])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .output()
        .unwrap();
    // pgbench's backends exit after it does; give the postmaster a moment to reap them so
    // their time is counted here rather than in the next run.
    std::thread::sleep(Duration::from_millis(100));
    let (pg_after, client_after) = (cluster_ticks(postmaster), children_ticks());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let find = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in pgbench output:\n{text}"))
    };
    let tx = find("number of transactions actually processed:");
    let per_tx = |ticks: u64| {
        if tx > 0.0 {
            ticks as f64 * 10_000.0 / tx
        } else {
            0.0
        }
    };
    let cpu_us_per_tx = match (pid, ticks_before) {
        (Some(p), Some(b)) => per_tx(cpu_ticks(p).saturating_sub(b)),
        _ => 0.0,
    };
    Run {
        tps: find("tps ="),
        latency_ms: find("latency average ="),
        failed: find("number of failed transactions:") as u64,
        cpu_us_per_tx,
        pg_cpu_us_per_tx: per_tx(pg_after.saturating_sub(pg_before)),
        client_cpu_us_per_tx: per_tx(client_after.saturating_sub(client_before)),
    }
}

/// The run of median TPS, with each CPU figure replaced by its own median over the runs.
fn median(mut runs: Vec<Run>) -> Run {
    let mid = |f: fn(&Run) -> f64, runs: &[Run]| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let cpu = mid(|r| r.cpu_us_per_tx, &runs);
    let pg_cpu = mid(|r| r.pg_cpu_us_per_tx, &runs);
    let client_cpu = mid(|r| r.client_cpu_us_per_tx, &runs);
    runs.sort_by(|a, b| a.tps.total_cmp(&b.tps));
    let failed = runs.iter().map(|r| r.failed).sum();
    let mut m = runs[runs.len() / 2];
    m.failed = failed;
    m.cpu_us_per_tx = cpu;
    m.pg_cpu_us_per_tx = pg_cpu;
    m.client_cpu_us_per_tx = client_cpu;
    m
}

/// The median of `v` (sorted in place), and its minimum and maximum.
fn median_range(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn idle_memory(proxy: &Killed, port: u16) -> Vec<(usize, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pid = proxy.0.id();
    let conn_str =
        format!("host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DB}");
    rt.block_on(async {
        let mut clients = Vec::new();
        let mut out = vec![(0usize, rss_kib(pid))];
        for target in [1usize, 100, 400] {
            while clients.len() < target {
                let (c, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                // One round trip so the session is fully set up, then idle.
                c.simple_query("SELECT 1").await.unwrap();
                clients.push(c);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            out.push((target, rss_kib(pid)));
        }
        drop(clients);
        tokio::time::sleep(Duration::from_millis(300)).await;
        out
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} vCPU, {cpu}")
}

/// A fresh PostgreSQL with the benchmark role and database.
fn start_pg(max_connections: u32) -> PgCluster {
    let pg = PgCluster::start(PgOptions {
        max_connections: Some(max_connections),
        extra_conf: vec!["shared_buffers = 256MB".into()],
        ..Default::default()
    });
    pg.create_role(USER, PASSWORD, "scram-sha-256");
    pg.create_database(DB, USER);
    pg
}

fn run(plan: &Plan) {
    let (secs, scale, short) = (plan.secs, plan.scale, plan.short);
    println!(
        "e2e benchmark ({} mode): pgbench -S -T {secs} x {} interleaved rounds (median), scale {scale}; machine: {}",
        if short { "short" } else { "full" },
        plan.rounds,
        machine()
    );
    let pg = start_pg(600);
    let out = Command::new(bindir().join("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string()])
        .args(["-h"])
        .arg(pg.socket_dir())
        .args(["-p", &pg.port.to_string(), "-U", USER, DB])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let work = tempfile::tempdir().unwrap();
    let (bouncer, bouncer_port, bouncer_version) = start_pgbouncer(&pg, work.path());
    let (proxy, proxy_port) = start_proxy(&pg, work.path(), plan.proxy_workers);
    println!("PgBouncer: {bouncer_version}; proxy pid {}", proxy.0.id());

    // Idle memory first, on a fresh proxy process.
    let mem = idle_memory(&proxy, proxy_port);

    let postmaster = pg.postmaster_pid().expect("postmaster.pid");
    let targets = [
        (pg.port, None),
        (bouncer_port, Some(bouncer.0.id())),
        (proxy_port, Some(proxy.0.id())),
    ];
    // Warm-up (caches, pools).
    for (port, _) in targets {
        pgbench(port, "simple", 8, 1, None, postmaster);
    }
    let mut results = Vec::new();
    for mode in &plan.modes {
        let mode = mode.as_str();
        for &clients in &plan.clients {
            // Interleaved rounds (direct, PgBouncer, proxy, direct, ...) so drift on the shared
            // machine hits all three alike; the median round of each is reported.
            // PgBouncer and the proxy swap places every round, and each round's proxy/PgBouncer
            // ratio is kept (a paired comparison under the same background load).
            let mut runs: [Vec<Run>; 3] = Default::default();
            let mut paired = Vec::new();
            let mut paired_cpu = Vec::new();
            for round in 0..plan.rounds.max(1) {
                let order = if round % 2 == 0 { [0, 1, 2] } else { [0, 2, 1] };
                for i in order {
                    let (port, pid) = targets[i];
                    runs[i].push(pgbench(port, mode, clients, secs, pid, postmaster));
                }
                let (b, p) = (runs[1][round as usize], runs[2][round as usize]);
                paired.push(p.tps / b.tps);
                paired_cpu.push(b.total_cpu_us_per_tx() / p.total_cpu_us_per_tx());
            }
            paired.sort_by(f64::total_cmp);
            let r = runs.map(median);
            results.push((mode, clients, r, paired, median_range(&mut paired_cpu).0));
        }
    }
    drop(proxy);
    drop(bouncer);

    println!();
    println!("| mode | -c | direct TPS | PgBouncer TPS | proxy TPS | proxy/direct | proxy/PgBouncer | paired proxy/PgBouncer: median (min–max) | direct lat ms | PgBouncer lat ms | proxy lat ms | proxy added µs | PgBouncer CPU µs/tx | proxy CPU µs/tx | PostgreSQL CPU µs/tx direct / PgBouncer / proxy | pgbench CPU µs/tx direct / PgBouncer / proxy | CPU estimate proxy/PgBouncer (paired median) | failed |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut misses = Vec::new();
    for (mode, clients, r, paired, paired_cpu) in &results {
        let [d, b, p] = *r;
        let added_us = (p.latency_ms - d.latency_ms) * 1000.0;
        println!(
            "| {mode} | {clients} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} ({:.2}–{:.2}) | {:.3} | {:.3} | {:.3} | {:.0} | {:.1} | {:.1} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {paired_cpu:.2} | {} |",
            d.tps,
            b.tps,
            p.tps,
            p.tps / d.tps,
            p.tps / b.tps,
            paired[paired.len() / 2],
            paired[0],
            paired[paired.len() - 1],
            d.latency_ms,
            b.latency_ms,
            p.latency_ms,
            added_us,
            b.cpu_us_per_tx,
            p.cpu_us_per_tx,
            d.pg_cpu_us_per_tx,
            b.pg_cpu_us_per_tx,
            p.pg_cpu_us_per_tx,
            d.client_cpu_us_per_tx,
            b.client_cpu_us_per_tx,
            p.client_cpu_us_per_tx,
            d.failed + b.failed + p.failed
        );
        let paired_median = paired[paired.len() / 2];
        if *clients == 8 && paired_median < 1.0 {
            misses.push(format!(
                "{mode} -c 8: proxy/PgBouncer {paired_median:.2} (paired median; ratio of medians {:.2}) < 1.0",
                p.tps / b.tps
            ));
        }
        if *clients == 1 && added_us > 60.0 {
            misses.push(format!(
                "{mode} -c 1: added latency {added_us:.0} µs > 60 µs"
            ));
        }
    }
    println!();
    println!("| idle client connections | proxy RSS KiB |");
    println!("|---|---|");
    for (n, kib) in &mem {
        println!("| {n} | {kib} |");
    }
    let base = mem.first().map(|m| m.1).unwrap_or(0);
    let at400 = mem.last().map(|m| m.1).unwrap_or(0);
    let per_conn = (at400.saturating_sub(base)) as f64 / 400.0;
    let at100 = mem.get(2).map(|m| m.1).unwrap_or(0);
    let marginal = (at400.saturating_sub(at100)) as f64 / 300.0;
    println!("per idle connection: {per_conn:.1} KiB (0 → 400), {marginal:.1} KiB (100 → 400)");
    if per_conn > 64.0 {
        misses.push(format!(
            "idle memory {per_conn:.1} KiB per connection > 64 KiB"
        ));
    }
    println!();
    if misses.is_empty() {
        println!("targets: all met");
    } else {
        println!("targets missed: {}", misses.join("; "));
    }
}

const ENC_KEYRING: &str = "bench";

/// Proxy mode with encryption: `public.enc.{a,b,c}` protected, keys from [`StaticKeys`], catalog
/// from the upstream.
fn serve_proxy_encrypted(config: &Path) {
    use pgseal_proxy::catalog::UpstreamCatalog;
    use pgseal_proxy::encrypt::EncryptionFactory;
    use pgseal_proxy::keys::StaticKeys;
    let config = pgseal_proxy::Config::from_file(config).unwrap();
    let threads = config.threads();
    let resolved = config.resolve().unwrap();
    let enc = resolved
        .encryption
        .clone()
        .expect("[[columns]] in the bench config");
    let mut keyrings = std::collections::HashMap::new();
    keyrings.insert(
        ENC_KEYRING.to_string(),
        vec![(1u32, pgseal_crypto::SecretKey::generate().unwrap())],
    );
    let keys = Arc::new(StaticKeys::new(&enc.schema, &keyrings).unwrap());
    let catalog = UpstreamCatalog::start(&resolved, &enc).unwrap();
    let factory = EncryptionFactory::new(enc.schema.clone(), enc.database.clone(), keys, catalog);
    let server = pgseal_proxy::Server::bind_sync(resolved, Arc::new(factory)).unwrap();
    server
        .run_threaded(threads, pgseal_proxy::shutdown::terminate_signal())
        .unwrap();
}

/// The encrypting proxy's configuration (written to `dir`), its port and its protected columns.
fn encrypted_config(
    pg: &PgCluster,
    dir: &Path,
) -> (
    std::path::PathBuf,
    u16,
    Arc<pgseal_proxy::rewrite::ProtectedSchema>,
) {
    let port = free_port();
    // The [keyserver] section must name existing files; this mode does not contact it.
    for f in ["ca.pem", "proxy.pem", "proxy-key.pem"] {
        std::fs::write(dir.join(f), "unused by the benchmark\n").unwrap();
    }
    let cfg = dir.join("proxy-encrypted.toml");
    let mut columns = String::new();
    for t in ["enc", "enc_nochk"] {
        columns.push_str(&format!(
            "[[columns]]\ncolumn = \"public.{t}.a\"\ntype = \"int8\"\nkeyring = \"{ENC_KEYRING}\"\nindex = true\n\
             [[columns]]\ncolumn = \"public.{t}.b\"\ntype = \"text\"\nkeyring = \"{ENC_KEYRING}\"\n\
             [[columns]]\ncolumn = \"public.{t}.c\"\ntype = \"date\"\nkeyring = \"{ENC_KEYRING}\"\n"
        ));
    }
    let text = format!(
            "listen = \"127.0.0.1:{port}\"\n[upstream]\nhost = \"{sock}\"\nport = {pgport}\n\
             [[users]]\nname = \"{USER}\"\npassword_env = \"BENCH_PROXY_PASSWORD\"\n\
             [limits]\nmax_connections = 2000\n[shutdown]\ngrace_seconds = 1\n\
             [encryption]\ndatabase = \"{DB}\"\ncatalog_user = \"{USER}\"\n\
             [keyserver]\nurl = \"https://127.0.0.1:1\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/proxy.pem\"\nkey = \"{d}/proxy-key.pem\"\n\
             {columns}",
        sock = pg.socket_dir().display(),
        pgport = pg.port,
        d = dir.display(),
    );
    std::fs::write(&cfg, &text).unwrap();
    let schema = pgseal_proxy::Config::from_toml(&text)
        .unwrap()
        .resolve_with_env(|k| (k == "BENCH_PROXY_PASSWORD").then(|| PASSWORD.to_owned()))
        .unwrap()
        .encryption
        .expect("[[columns]] in the bench config")
        .schema;
    (cfg, port, schema)
}

/// Encrypted vs plaintext table through the same proxy: point lookup and insert.
fn run_encrypted(plan: &Plan) {
    let (secs, short) = (plan.secs, plan.short);
    let rows: u32 = if short { 2_000 } else { 20_000 };
    println!();
    println!(
        "encryption overhead ({} mode): pgbench custom scripts -c 8 -j 2 -T {secs} x {} interleaved rounds (median), {rows} rows per table; machine: {}",
        if short { "short" } else { "full" },
        plan.rounds,
        machine()
    );
    let pg = start_pg(200);
    let work = tempfile::tempdir().unwrap();
    let (cfg, port, schema) = encrypted_config(&pg, work.path());
    // The protected tables as `pgseal-proxy schema` makes them: bytea columns, the blind-index
    // expression index on `a`, the stored-cell CHECK constraints (dropped again on enc_nochk).
    pg.psql(
        DB,
        &format!(
            "SET ROLE {USER};\
             CREATE TABLE enc (id bigserial PRIMARY KEY, a int8, b text, c date);\
             CREATE TABLE enc_nochk (id bigserial PRIMARY KEY, a int8, b text, c date);\
             {}\
             ALTER TABLE enc_nochk DROP CONSTRAINT pgseal_cell_a, DROP CONSTRAINT pgseal_cell_b, \
               DROP CONSTRAINT pgseal_cell_c;\
             CREATE TABLE plain (id bigserial PRIMARY KEY, a int8, b text, c date);\
             CREATE INDEX plain_a_idx ON plain (a);",
            pgseal_proxy::rewrite::schema_ddl(&schema)
        ),
    );
    assert_eq!(
        pg.psql(
            DB,
            "SELECT count(*) FROM pg_constraint WHERE contype = 'c' AND conrelid = 'enc'::regclass"
        ),
        "3",
        "enc has its three stored-cell constraints"
    );
    let proxy = spawn_self("__serve_proxy_encrypted", &cfg, port);
    let pid = proxy.0.id();
    let postmaster = pg.postmaster_pid().expect("postmaster.pid");

    // Fill both tables through the proxy (prepared INSERTs; the encrypted one is encrypted).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conn_str =
        format!("host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DB}");
    rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        for table in ["enc", "enc_nochk", "plain"] {
            let ins = c
                .prepare(&format!(
                    "INSERT INTO {table} (a, b, c) VALUES ($1, $2, '2024-05-01')"
                ))
                .await
                .unwrap();
            c.batch_execute("BEGIN").await.unwrap();
            for k in 1..=i64::from(rows) {
                c.execute(&ins, &[&k, &format!("note {k}")]).await.unwrap();
            }
            c.batch_execute("COMMIT").await.unwrap();
        }
        // Sanity: a lookup through the blind index finds the row and decrypts it.
        let row = c
            .query_one("SELECT a, b FROM enc WHERE a = $1", &[&7i64])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 7);
        assert_eq!(row.get::<_, String>(1), "note 7");
    });
    pg.psql(DB, "ANALYZE enc; ANALYZE enc_nochk; ANALYZE plain;");

    let script = |name: &str, body: String| {
        let path = work.path().join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let scripts = [
        (
            "lookup",
            script(
                "lookup-plain.sql",
                format!("\\set k random(1, {rows})\nSELECT id, a, b, c FROM plain WHERE a = :k;\n"),
            ),
            script(
                "lookup-enc.sql",
                format!("\\set k random(1, {rows})\nSELECT id, a, b, c FROM enc WHERE a = :k;\n"),
            ),
        ),
        (
            "insert",
            script(
                "insert-plain.sql",
                "\\set k random(1, 1000000000)\nINSERT INTO plain (a, b, c) VALUES (:k, 'note', '2024-05-01');\n".into(),
            ),
            script(
                "insert-enc.sql",
                "\\set k random(1, 1000000000)\nINSERT INTO enc (a, b, c) VALUES (:k, 'note', '2024-05-01');\n".into(),
            ),
        ),
        (
            // Baseline: the encrypted table without the stored-cell CHECK constraints.
            "insert-check",
            script(
                "insert-enc-nochk.sql",
                "\\set k random(1, 1000000000)\nINSERT INTO enc_nochk (a, b, c) VALUES (:k, 'note', '2024-05-01');\n".into(),
            ),
            script(
                "insert-enc-check.sql",
                "\\set k random(1, 1000000000)\nINSERT INTO enc (a, b, c) VALUES (:k, 'note', '2024-05-01');\n".into(),
            ),
        ),
    ];
    // Warm-up.
    for (_, plain, enc) in &scripts {
        pgbench_script(port, "prepared", 8, 1, None, postmaster, Some(plain));
        pgbench_script(port, "prepared", 8, 1, None, postmaster, Some(enc));
    }
    println!();
    println!(
        "lookup, insert: plain = the plaintext table, encrypted = enc (with its CHECK constraints); \
         insert-check: plain = enc_nochk (encrypted, no CHECK constraints), encrypted = enc (with them)"
    );
    println!("| script | mode | plain TPS (proxy) | encrypted TPS (proxy) | encrypted/plain | paired ratios: median (min–max) | plain lat ms | encrypted lat ms | proxy CPU µs/tx plain → encrypted | PostgreSQL CPU µs/tx plain → encrypted | pgbench CPU µs/tx plain → encrypted | CPU estimate encrypted/plain: paired median (min–max) | failed |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut misses = Vec::new();
    for (name, plain, enc) in scripts
        .iter()
        .filter(|(n, _, _)| plan.scripts.iter().any(|s| s == n))
    {
        for mode in &plan.modes {
            let mut runs: [Vec<Run>; 2] = Default::default();
            // Each round runs plain then encrypted back to back (alternating which goes first),
            // so a round's ratio compares runs made under the same background load.
            let mut paired = Vec::new();
            let mut paired_cpu = Vec::new();
            for round in 0..plan.rounds.max(1) {
                let mut pair = [None, None];
                for which in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
                    let script = if which == 0 { plain } else { enc };
                    pair[which] = Some(pgbench_script(
                        port,
                        mode,
                        8,
                        secs,
                        Some(pid),
                        postmaster,
                        Some(script),
                    ));
                }
                let [Some(p), Some(e)] = pair else {
                    unreachable!()
                };
                paired.push(e.tps / p.tps);
                paired_cpu.push(p.total_cpu_us_per_tx() / e.total_cpu_us_per_tx());
                runs[0].push(p);
                runs[1].push(e);
            }
            paired.sort_by(f64::total_cmp);
            let paired_median = paired[paired.len() / 2];
            let [p, e] = runs.map(median);
            let ratio = e.tps / p.tps;
            let (cpu_median, cpu_min, cpu_max) = median_range(&mut paired_cpu);
            println!(
                "| {name} | {mode} | {:.0} | {:.0} | {ratio:.2} | {paired_median:.2} ({:.2}–{:.2}) | {:.3} | {:.3} | {:.1} → {:.1} | {:.1} → {:.1} | {:.1} → {:.1} | {cpu_median:.2} ({cpu_min:.2}–{cpu_max:.2}) | {} |",
                p.tps,
                e.tps,
                paired[0],
                paired[paired.len() - 1],
                p.latency_ms,
                e.latency_ms,
                p.cpu_us_per_tx,
                e.cpu_us_per_tx,
                p.pg_cpu_us_per_tx,
                e.pg_cpu_us_per_tx,
                p.client_cpu_us_per_tx,
                e.client_cpu_us_per_tx,
                p.failed + e.failed
            );
            // Judged on the paired ratios (robust to load drifting between rounds); the ratio of
            // the medians is printed beside it.
            if mode != "simple" && *name != "insert-check" && paired_median < 0.85 {
                misses.push(format!(
                    "{name} {mode}: encrypted/plain {paired_median:.2} (paired median; ratio of medians {ratio:.2}) < 0.85"
                ));
            }
        }
    }
    drop(proxy);
    println!();
    if misses.is_empty() {
        println!("encryption targets (extended, prepared; paired medians ≥ 0.85): all met");
    } else {
        println!("encryption targets missed: {}", misses.join("; "));
    }
}
