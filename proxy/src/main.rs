//! `pgseal-proxy serve --config FILE` and `pgseal-proxy check --config FILE`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pgseal_proxy::{Config, Server};

const USAGE: &str = "usage: pgseal-proxy <serve|check> --config FILE\n\
  serve   run the proxy (SIGTERM: graceful shutdown)\n\
  check   validate the configuration and the secrets it names, then exit\n\
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
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]))
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
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
    let workers = config.workers;
    let resolved = config
        .resolve()
        .with_context(|| format!("{}: invalid configuration", path.display()))?;
    match cmd.as_str() {
        "check" => {
            // Also load the TLS material, which is where most mistakes are.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut probe = resolved;
            probe.listen.set_port(0);
            if let Some(m) = probe.metrics_listen.as_mut() {
                m.set_port(0);
            }
            rt.block_on(Server::bind(probe))
                .context("configuration does not load")?;
            println!("{}: configuration OK", path.display());
            Ok(())
        }
        "serve" => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.enable_all();
            if let Some(w) = workers {
                rt.worker_threads(w);
            }
            let rt = rt.build()?;
            rt.block_on(async {
                let server = Server::bind(resolved).await?;
                tracing::info!(
                    listen = ?server.local_addr(),
                    metrics = ?server.metrics_addr(),
                    "pgseal-proxy listening"
                );
                server.run(pgseal_proxy::shutdown::terminate_signal()).await;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
