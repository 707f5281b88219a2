//! `pgseal-proxy serve --config FILE` and `pgseal-proxy check --config FILE`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pgseal_proxy::{Config, PassThrough, Server};

const USAGE: &str = "usage: pgseal-proxy <serve|check> --config FILE\n\
  serve   run the proxy (SIGTERM: graceful shutdown)\n\
  check   validate the configuration and the secrets and files it names, then exit\n\
Logging: PGSEAL_LOG (or RUST_LOG), e.g. PGSEAL_LOG=debug";

fn parse_args() -> Result<(String, PathBuf)> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    if cmd == "--version" || cmd == "-V" {
        println!("pgseal-proxy {}", env!("CARGO_PKG_VERSION"));
        std::process::exit(0);
    }
    if cmd.is_empty() || cmd == "--help" || cmd == "-h" {
        println!("{USAGE}");
        std::process::exit(if cmd.is_empty() { 2 } else { 0 });
    }
    let mut config = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => config = args.next().map(PathBuf::from),
            s => match s.strip_prefix("--config=") {
                Some(p) => config = Some(PathBuf::from(p)),
                None => bail!("unknown argument {s:?}\n{USAGE}"),
            },
        }
    }
    let config = config.context(format!("--config FILE is required\n{USAGE}"))?;
    Ok((cmd, config))
}

fn main() -> Result<()> {
    let (cmd, path) = parse_args()?;
    let filter = std::env::var("PGSEAL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let config = Config::from_file(&path)?;
    let threads = config.threads();
    let resolved = config
        .resolve()
        .with_context(|| format!("{}: invalid configuration", path.display()))?;
    match cmd.as_str() {
        "check" => {
            // Also load the TLS material and bind (on free ports), which is where most
            // mistakes are.
            let mut probe = resolved;
            probe.listen.set_port(0);
            if let Some(m) = probe.metrics_listen.as_mut() {
                m.set_port(0);
            }
            Server::bind_sync(probe, Arc::new(PassThrough))
                .context("configuration does not load")?;
            println!("{}: configuration OK", path.display());
            Ok(())
        }
        "serve" => {
            let server = Server::bind_sync(resolved, Arc::new(PassThrough))?;
            tracing::info!(
                listen = ?server.local_addr(),
                metrics = ?server.metrics_addr(),
                threads,
                "pgseal-proxy listening"
            );
            server.run_threaded(threads, pgseal_proxy::shutdown::terminate_signal())?;
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
