//! Command-line interface: `serve`, `init`, `cert issue` (local) and admin commands over the
//! HTTP API.

pub mod admin;
pub mod init;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// pgseal keyserver: keyrings, rotation, mTLS for proxies, admin tokens, audit.
#[derive(Debug, Parser)]
#[command(name = "pgseal-keyserver", version)]
pub struct Cli {
    /// Command.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection options of the admin commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Keyserver URL.
    #[arg(
        long,
        env = "PGSEAL_KEYSERVER_URL",
        default_value = "https://localhost:8443",
        global = true
    )]
    pub url: String,
    /// CA certificate (PEM) that signed the server certificate.
    #[arg(long, env = "PGSEAL_KEYSERVER_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Admin bearer token (prefer the environment variable over the command line).
    #[arg(
        long,
        env = "PGSEAL_KEYSERVER_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print JSON instead of human-readable output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create a root key, database, configuration and (optionally) a small CA; prints the first
    /// key-admin token once.
    Init(init::InitArgs),
    /// Certificates from the built-in CA.
    Cert {
        /// Sub-command.
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Keyrings (over the API).
    Keyring {
        /// Connection.
        #[command(flatten)]
        remote: Remote,
        /// Sub-command.
        #[command(subcommand)]
        command: KeyringCommand,
    },
    /// Admin tokens (over the API).
    Token {
        /// Connection.
        #[command(flatten)]
        remote: Remote,
        /// Sub-command.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Proxy identities and their keyring grants (over the API).
    Proxy {
        /// Connection.
        #[command(flatten)]
        remote: Remote,
        /// Sub-command.
        #[command(subcommand)]
        command: ProxyCommand,
    },
    /// Audit log (over the API, or offline with --db).
    Audit {
        /// Connection.
        #[command(flatten)]
        remote: Remote,
        /// Sub-command.
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// `cert` sub-commands.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a proxy client certificate (CN = proxy name) signed by the built-in CA.
    Issue {
        /// Proxy name (becomes the certificate's common name and the proxy identity).
        #[arg(long)]
        proxy: String,
        /// Directory holding ca.pem and ca-key.pem (created by `init`).
        #[arg(long)]
        pki_dir: PathBuf,
        /// Output directory (default: the PKI directory).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

/// `keyring` sub-commands.
#[derive(Debug, Subcommand)]
pub enum KeyringCommand {
    /// Create a keyring (version 1 active).
    Create {
        /// Name.
        name: String,
    },
    /// List keyrings.
    List,
    /// Show metadata of one keyring.
    Show {
        /// Name.
        name: String,
    },
    /// Add a version and make it active.
    Rotate {
        /// Name.
        name: String,
    },
    /// Disable a version (reversible).
    Disable {
        /// Name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Re-enable a disabled version.
    Enable {
        /// Name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Destroy a disabled version (irreversible).
    Destroy {
        /// Name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Rotate the blind-index key online (docs/keyserver.md, "Rotating the blind-index key"):
    /// without a flag, start (generation g+1 `next`, phase dual); then `--status`, `--cutover`,
    /// `--finish`.
    RotateIndex {
        /// Name.
        name: String,
        /// Cut over to the new generation (needs every granted proxy's confirmation and a
        /// complete re-index pass).
        #[arg(long, conflicts_with_all = ["finish", "status"])]
        cutover: bool,
        /// Retire the old generation (needs every confirmation of phase cutover and a complete
        /// compaction pass).
        #[arg(long, conflicts_with_all = ["cutover", "status"])]
        finish: bool,
        /// Show the phase, which proxies confirmed it, and the passes.
        #[arg(long, conflicts_with_all = ["cutover", "finish"])]
        status: bool,
    },
    /// Set min_decryption_version.
    SetMinVersion {
        /// Name.
        name: String,
        /// Version.
        version: u32,
    },
}

/// Token roles on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// key-admin.
    KeyAdmin,
    /// auditor.
    Auditor,
}

/// `token` sub-commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; the secret is printed once.
    Create {
        /// Label.
        #[arg(long)]
        name: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Lifetime in seconds.
        #[arg(long)]
        expires_in: Option<u64>,
    },
    /// List tokens.
    List,
    /// Revoke a token.
    Revoke {
        /// Token id (tok_…).
        id: String,
    },
}

/// `proxy` sub-commands.
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Create or replace a proxy identity's keyring grants.
    Grant {
        /// Proxy name (certificate CN).
        name: String,
        /// Keyring (repeat for several).
        #[arg(long = "keyring", required = true)]
        keyrings: Vec<String>,
    },
    /// List proxies.
    List,
    /// Remove a proxy and all its grants.
    Remove {
        /// Proxy name.
        name: String,
    },
}

/// `audit` sub-commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain; exit code 1 if broken.
    Verify {
        /// Verify a database file directly instead of asking the server.
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Show the last records.
    Tail {
        /// Number of records.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// Read a database file directly instead of asking the server.
        #[arg(long)]
        db: Option<PathBuf>,
    },
}
