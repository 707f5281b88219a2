//! `pgseal-keyserver` binary.

use anyhow::Context;
use clap::Parser;
use pgseal_keyserver::cli::admin::{self, CliError};
use pgseal_keyserver::cli::{init, CertCommand, Cli, Command};
use pgseal_keyserver::config::Config;

fn main() -> std::process::ExitCode {
    // RUST_LOG for pgseal's own targets; every other crate at most `warn`.
    pgseal_keyserver::logging::init_stderr(&pgseal_keyserver::logging::spec_from_env(
        &["RUST_LOG"],
        "info",
    ));
    pgseal_keyserver::install_crypto_provider();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `… | head`: the reader has all it wanted.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<CliError>()
            .is_some_and(CliError::is_broken_pipe)
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes a line to stdout; an error (closed pipe) instead of `println!`'s panic.
fn out(line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{line}")
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    match cli.command {
        Command::Serve { config } => {
            let cfg = Config::load(&config)?;
            rt.block_on(pgseal_keyserver::run(&cfg))?;
        }
        Command::Init(args) => {
            let created = init::init(&args)?;
            // Messages on stderr, the token alone on stdout: `TOKEN=$(pgseal-keyserver init ...)` works.
            eprintln!("created {}", created.config_path.display());
            eprintln!(
                "first key-admin token (id {}) follows on stdout, shown once; store it safely",
                created.admin_token_id
            );
            out(created.admin_token.as_str())?;
        }
        Command::Cert {
            command:
                CertCommand::Issue {
                    proxy,
                    pki_dir,
                    out_dir,
                },
        } => {
            let (cert, key) = init::issue_proxy_cert(&proxy, &pki_dir, out_dir.as_deref())?;
            out(&format!("wrote {} and {}", cert.display(), key.display()))?;
            out(&format!(
                "grant it keyrings with: pgseal-keyserver proxy grant {proxy} --keyring NAME"
            ))?;
        }
        Command::Keyring { remote, command } => rt.block_on(admin::keyring(&remote, &command))?,
        Command::Token { remote, command } => rt.block_on(admin::token(&remote, &command))?,
        Command::Proxy { remote, command } => rt.block_on(admin::proxy(&remote, &command))?,
        Command::Audit { remote, command } => match rt.block_on(admin::audit(&remote, &command)) {
            Err(CliError::AuditBroken) => anyhow::bail!("audit chain verification FAILED"),
            Err(e) if e.is_broken_pipe() => {}
            other => other?,
        },
    }
    Ok(())
}
