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
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
            let out = init::init(&args)?;
            // Messages on stderr, the token alone on stdout: `TOKEN=$(pgseal-keyserver init ...)` works.
            eprintln!("created {}", out.config_path.display());
            eprintln!(
                "first key-admin token (id {}) follows on stdout, shown once; store it safely",
                out.admin_token_id
            );
            println!("{}", out.admin_token.as_str());
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
            println!("wrote {} and {}", cert.display(), key.display());
            println!("grant it keyrings with: pgseal-keyserver proxy grant {proxy} --keyring NAME");
        }
        Command::Keyring { remote, command } => rt.block_on(admin::keyring(&remote, &command))?,
        Command::Token { remote, command } => rt.block_on(admin::token(&remote, &command))?,
        Command::Proxy { remote, command } => rt.block_on(admin::proxy(&remote, &command))?,
        Command::Audit { remote, command } => match rt.block_on(admin::audit(&remote, &command)) {
            Err(CliError::AuditBroken) => anyhow::bail!("audit chain verification FAILED"),
            other => other?,
        },
    }
    Ok(())
}
