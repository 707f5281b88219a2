//! `init` and `cert issue`: local set-up without a running server.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::audit::AuditEvent;
use crate::config::{AuditConfig, Config, LimitsConfig, TlsConfig, DEFAULT_MAX_BODY_BYTES};
use crate::error::KsError;
use crate::model::{ProxyName, Role};
use crate::pki::{self, CertPair};
use crate::rootkey::{LocalRootKey, RootKey};
use crate::store::sqlite::Durability;
use crate::store::{KeyStore, SqliteStore, TokenRecord};
use crate::util::now_rfc3339;

/// `init` arguments.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Directory for keyserver.toml, root.key, keyserver.db and pki/ (created, mode 0700).
    #[arg(long)]
    pub dir: PathBuf,
    /// Listen address written to the configuration.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// DNS names / IPs for the server certificate (repeatable).
    #[arg(long = "san", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
    pub sans: Vec<String>,
    /// Do not create a CA and server certificate (bring your own; edit [tls] in keyserver.toml).
    #[arg(long)]
    pub no_pki: bool,
    /// Take the root key from this environment variable instead of creating root.key.
    #[arg(long)]
    pub root_key_env: Option<String>,
}

/// What `init` created.
pub struct InitOutcome {
    /// Configuration file.
    pub config_path: PathBuf,
    /// First key-admin token (shown once).
    pub admin_token: zeroize::Zeroizing<String>,
    /// Token id.
    pub admin_token_id: String,
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), KsError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| KsError::io(path, e))?;
    f.write_all(contents).map_err(|e| KsError::io(path, e))?;
    f.sync_all().map_err(|e| KsError::io(path, e))
}

/// Creates a keyserver directory.
pub fn init(args: &InitArgs) -> Result<InitOutcome, KsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.dir)
        .map_err(|e| KsError::io(&args.dir, e))?;
    let dir = fs::canonicalize(&args.dir).map_err(|e| KsError::io(&args.dir, e))?;
    let db_path = dir.join("keyserver.db");
    let config_path = dir.join("keyserver.toml");
    for p in [&db_path, &config_path] {
        if p.exists() {
            return Err(KsError::Config(format!(
                "{} exists already; refusing to overwrite",
                p.display()
            )));
        }
    }
    let listen = args
        .listen
        .parse()
        .map_err(|e| KsError::Config(format!("--listen: {e}")))?;
    let pki_dir = dir.join("pki");
    if !args.no_pki {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&pki_dir)
            .map_err(|e| KsError::io(&pki_dir, e))?;
        let ca = pki::create_ca("pgseal keyserver CA")?;
        let server = pki::issue_server(&ca, &args.sans)?;
        write_file(&pki_dir.join("ca.pem"), ca.cert_pem.as_bytes(), 0o644)?;
        write_file(&pki_dir.join("ca-key.pem"), ca.key_pem.as_bytes(), 0o600)?;
        write_file(
            &pki_dir.join("server.pem"),
            server.cert_pem.as_bytes(),
            0o644,
        )?;
        write_file(
            &pki_dir.join("server-key.pem"),
            server.key_pem.as_bytes(),
            0o600,
        )?;
    }
    let (root, root_key_file, root_key_env): (Box<dyn RootKey>, _, _) = match &args.root_key_env {
        Some(var) => (
            Box::new(LocalRootKey::from_env(var)?),
            None,
            Some(var.clone()),
        ),
        None => {
            let path = dir.join("root.key");
            (
                Box::new(LocalRootKey::create_file(&path)?),
                Some(path),
                None,
            )
        }
    };
    let cfg = Config {
        listen,
        database: db_path.clone(),
        root_key_file,
        root_key_env,
        durability: Durability::Normal,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        tls: TlsConfig {
            cert: pki_dir.join("server.pem"),
            key: pki_dir.join("server-key.pem"),
            client_ca: pki_dir.join("ca.pem"),
        },
        limits: LimitsConfig::default(),
        audit: AuditConfig::default(),
    };
    let store = SqliteStore::open(&db_path, cfg.durability)?;
    fs::set_permissions(&db_path, fs::Permissions::from_mode(0o600))
        .map_err(|e| KsError::io(&db_path, e))?;
    store.check_root_key(root.as_ref())?;
    let (admin_token, admin_token_id) = bootstrap_token(&store, "bootstrap key-admin (init)")?;
    write_file(&config_path, cfg.to_toml()?.as_bytes(), 0o600)?;
    Ok(InitOutcome {
        config_path,
        admin_token,
        admin_token_id,
    })
}

/// Creates a key-admin token directly in the store (used by `init`).
pub fn bootstrap_token(
    store: &dyn KeyStore,
    name: &str,
) -> Result<(zeroize::Zeroizing<String>, String), KsError> {
    let new =
        crate::auth::tokens::generate().map_err(|e| KsError::Config(format!("random: {e}")))?;
    let rec = TokenRecord {
        id: new.id.clone(),
        name: name.to_owned(),
        role: Role::KeyAdmin,
        secret_hash: new.secret_hash,
        created_at: now_rfc3339(),
        expires_at: None,
        revoked: false,
    };
    let ev = AuditEvent::new("local:init", "token.create")
        .detail(format!("id={} role=key-admin", rec.id));
    store.create_token(&rec, &ev)?;
    Ok((new.token, new.id))
}

/// `cert issue --proxy NAME`: writes NAME.pem and NAME-key.pem (0600).
pub fn issue_proxy_cert(
    proxy: &str,
    pki_dir: &Path,
    out_dir: Option<&Path>,
) -> Result<(PathBuf, PathBuf), KsError> {
    let name = ProxyName::parse(proxy).map_err(|e| KsError::Config(e.to_string()))?;
    let read = |p: PathBuf| fs::read_to_string(&p).map_err(|e| KsError::io(p, e));
    let ca = CertPair {
        cert_pem: read(pki_dir.join("ca.pem"))?,
        key_pem: read(pki_dir.join("ca-key.pem"))?,
    };
    let pair = pki::issue_proxy(&ca, &name)?;
    let out = out_dir.unwrap_or(pki_dir);
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}-key.pem"));
    write_file(&cert_path, pair.cert_pem.as_bytes(), 0o644)?;
    write_file(&key_path, pair.key_pem.as_bytes(), 0o600)?;
    Ok((cert_path, key_path))
}
