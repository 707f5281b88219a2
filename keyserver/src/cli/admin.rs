//! Admin commands over the HTTP API, with human and JSON output.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

use super::{AuditCommand, KeyringCommand, ProxyCommand, Remote, RoleArg, TokenCommand};
use crate::audit::escape_display;
use crate::client::{Client, ClientConfig, ClientError};
use crate::model::{AuditRecord, AuditVerifyReport, IndexRotationStatus, KeyringMeta, Role};
use crate::store::sqlite::Durability;
use crate::store::{KeyStore, SqliteStore};

/// CLI failure with a message for the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage or local problem.
    #[error("{0}")]
    Usage(String),
    /// The API call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The audit chain is broken (exit code 1).
    #[error("audit chain verification FAILED")]
    AuditBroken,
    /// Writing the output failed (e.g. the reader of a pipe went away).
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// The output pipe was closed by its reader (`… | head`): not worth an error message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// `println!` that returns an error instead of panicking when stdout is closed.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(CliError::from)
    }};
}

fn client(remote: &Remote) -> Result<Client, CliError> {
    let ca_path = remote.ca.as_ref().ok_or_else(|| {
        CliError::Usage(
            "--ca or PGSEAL_KEYSERVER_CA is required (the server's CA certificate)".into(),
        )
    })?;
    let ca_pem = std::fs::read(ca_path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", ca_path.display())))?;
    let token = remote.token.as_ref().map(|t| Zeroizing::new(t.clone()));
    if token.is_none() {
        return Err(CliError::Usage(
            "--token or PGSEAL_KEYSERVER_TOKEN is required".into(),
        ));
    }
    Ok(Client::new(ClientConfig {
        url: remote.url.clone(),
        ca_pem,
        identity: None,
        token,
        timeout: Duration::from_secs(30),
    })?)
}

fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(|e| CliError::Usage(e.to_string()))?;
    outln!("{s}")?;
    Ok(())
}

fn print_keyring(m: &KeyringMeta) -> Result<(), CliError> {
    outln!("keyring {} ({})", m.name, m.id)?;
    outln!("  active version:          {}", m.active_version)?;
    outln!("  min decryption version:  {}", m.min_decryption_version)?;
    outln!("  revision:                {}", m.revision)?;
    outln!("  created:                 {}", m.created_at)?;
    for v in &m.versions {
        outln!(
            "  v{:<4} {:<13} created {}",
            v.version,
            v.state.as_str(),
            v.created_at
        )?;
    }
    outln!("  blind-index generation:  {}", m.index.active_generation)?;
    for g in &m.index.generations {
        let from = g
            .derived_from_version
            .map(|v| format!(" (material of data-key version {v})"))
            .unwrap_or_default();
        outln!(
            "  g{:<4} {:<13} created {}{from}",
            g.generation,
            g.state.as_str(),
            g.created_at
        )?;
    }
    if let Some(r) = &m.index.rotation {
        outln!(
            "  blind-index rotation:    generation {} -> {}, phase {} (`keyring rotate-index {} --status`)",
            r.from,
            r.to,
            r.phase.as_str(),
            m.name
        )?;
    }
    if !m.index.legacy_tag_versions.is_empty() {
        let list: Vec<String> = m
            .index
            .legacy_tag_versions
            .iter()
            .map(u32::to_string)
            .collect();
        outln!(
            "  legacy tags under:       version(s) {} (re-tagged by `pgseal-proxy reencrypt`)",
            list.join(", ")
        )?;
    }
    Ok(())
}

fn print_rotation_status(st: &IndexRotationStatus) -> Result<(), CliError> {
    let name = escape_display(&st.keyring);
    outln!("keyring {name}")?;
    outln!("  active blind-index generation: {}", st.active_generation)?;
    let Some(r) = &st.rotation else {
        outln!("  no blind-index key rotation in progress")?;
        return Ok(());
    };
    outln!(
        "  rotation: generation {} -> {}, phase {}",
        r.from,
        r.to,
        r.phase.as_str()
    )?;
    let confirmed = st.proxies.iter().filter(|p| p.confirmed).count();
    outln!(
        "  proxies confirmed phase {}: {} of {}",
        r.phase.as_str(),
        confirmed,
        st.proxies.len()
    )?;
    for p in &st.proxies {
        match &p.confirmed_at {
            Some(at) => outln!(
                "    {:<32} confirmed {}",
                escape_display(&p.proxy),
                escape_display(at)
            )?,
            None => outln!("    {:<32} MISSING", escape_display(&p.proxy))?,
        }
    }
    if st.passes.is_empty() {
        outln!("  passes: none")?;
    } else {
        outln!("  passes:")?;
    }
    for p in &st.passes {
        let end = match (&p.ended_at, p.complete, p.rewritten) {
            (Some(at), Some(c), n) => format!(
                "ended {} {} rewritten {}",
                escape_display(at),
                if c { "complete" } else { "INCOMPLETE" },
                n.unwrap_or(0)
            ),
            _ => "running (not reported)".to_owned(),
        };
        outln!(
            "    {} {:<8} by {:<24} started {} {end}",
            escape_display(&p.id),
            p.phase.as_str(),
            escape_display(&p.proxy),
            escape_display(&p.started_at)
        )?;
    }
    let next = match r.phase {
        crate::model::IndexPhase::Dual => "--cutover",
        crate::model::IndexPhase::Cutover => "--finish",
    };
    match &st.next_step_blocked_by {
        None => outln!("  next step: `keyring rotate-index {name} {next}` (ready)")?,
        Some(why) => outln!(
            "  next step: `keyring rotate-index {name} {next}` waits for: {}",
            escape_display(why)
        )?,
    }
    Ok(())
}

fn output_keyring(json: bool, m: &KeyringMeta) -> Result<(), CliError> {
    if json {
        print_json(m)
    } else {
        print_keyring(m)
    }
}

/// `keyring …`.
pub async fn keyring(remote: &Remote, cmd: &KeyringCommand) -> Result<(), CliError> {
    let c = client(remote)?;
    let json = remote.json;
    match cmd {
        KeyringCommand::Create { name } => output_keyring(json, &c.create_keyring(name).await?),
        KeyringCommand::Show { name } => output_keyring(json, &c.keyring(name).await?),
        KeyringCommand::Rotate { name } => output_keyring(json, &c.rotate(name).await?),
        KeyringCommand::Disable { name, version } => {
            output_keyring(json, &c.version_action(name, *version, "disable").await?)
        }
        KeyringCommand::Enable { name, version } => {
            output_keyring(json, &c.version_action(name, *version, "enable").await?)
        }
        KeyringCommand::Destroy { name, version } => {
            output_keyring(json, &c.version_action(name, *version, "destroy").await?)
        }
        KeyringCommand::RotateIndex {
            name,
            cutover,
            finish,
            status,
        } => {
            if *status {
                let st = c.index_rotation_status(name).await?;
                return if json {
                    print_json(&st)
                } else {
                    print_rotation_status(&st)
                };
            }
            let m = if *cutover {
                c.index_cutover(name).await?
            } else if *finish {
                c.index_finish(name).await?
            } else {
                c.index_rotate(name).await?
            };
            output_keyring(json, &m)
        }
        KeyringCommand::SetMinVersion { name, version } => {
            output_keyring(json, &c.set_min_version(name, *version).await?)
        }
        KeyringCommand::List => {
            let l = c.list_keyrings().await?;
            if json {
                return print_json(&l);
            }
            outln!(
                "{:<32} {:>7} {:>8} {:>9}  ID",
                "NAME",
                "ACTIVE",
                "MIN-DEC",
                "REVISION"
            )?;
            for k in &l.keyrings {
                outln!(
                    "{:<32} {:>7} {:>8} {:>9}  {}",
                    k.name,
                    k.active_version,
                    k.min_decryption_version,
                    k.revision,
                    k.id
                )?;
            }
            Ok(())
        }
    }
}

/// `token …`.
pub async fn token(remote: &Remote, cmd: &TokenCommand) -> Result<(), CliError> {
    let c = client(remote)?;
    match cmd {
        TokenCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let role = match role {
                RoleArg::KeyAdmin => Role::KeyAdmin,
                RoleArg::Auditor => Role::Auditor,
            };
            let t = c.create_token(name, role, *expires_in).await?;
            if remote.json {
                return print_json(&t);
            }
            outln!("token id:   {}", t.info.id)?;
            outln!("role:       {}", t.info.role.as_str())?;
            if let Some(e) = t.info.expires_at {
                outln!("expires at: {e} (unix seconds)")?;
            }
            outln!("token (shown once, store it safely):")?;
            outln!("{}", t.token)?;
            Ok(())
        }
        TokenCommand::List => {
            let l = c.list_tokens().await?;
            if remote.json {
                return print_json(&l);
            }
            outln!(
                "{:<36} {:<10} {:<8} {:<12} NAME",
                "ID",
                "ROLE",
                "REVOKED",
                "EXPIRES"
            )?;
            for t in &l.tokens {
                let exp = t
                    .expires_at
                    .map_or_else(|| "-".to_owned(), |e| e.to_string());
                outln!(
                    "{:<36} {:<10} {:<8} {:<12} {}",
                    t.id,
                    t.role.as_str(),
                    t.revoked,
                    exp,
                    t.name
                )?;
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let t = c.revoke_token(id).await?;
            if remote.json {
                return print_json(&t);
            }
            outln!("revoked {}", t.id)?;
            Ok(())
        }
    }
}

/// `proxy …`.
pub async fn proxy(remote: &Remote, cmd: &ProxyCommand) -> Result<(), CliError> {
    let c = client(remote)?;
    match cmd {
        ProxyCommand::Grant { name, keyrings } => {
            let p = c.set_proxy(name, keyrings).await?;
            if remote.json {
                return print_json(&p);
            }
            outln!("proxy {} may read: {}", p.name, p.keyrings.join(", "))?;
            Ok(())
        }
        ProxyCommand::List => {
            let l = c.list_proxies().await?;
            if remote.json {
                return print_json(&l);
            }
            for p in &l.proxies {
                outln!("{:<32} {}", p.name, p.keyrings.join(","))?;
            }
            Ok(())
        }
        ProxyCommand::Remove { name } => {
            let v = c.delete_proxy(name).await?;
            if remote.json {
                return print_json(&v);
            }
            outln!("removed proxy {name}")?;
            Ok(())
        }
    }
}

fn open_db(path: &Path) -> Result<SqliteStore, CliError> {
    if !path.exists() {
        return Err(CliError::Usage(format!(
            "{} does not exist",
            path.display()
        )));
    }
    SqliteStore::open(path, Durability::Normal).map_err(|e| CliError::Usage(e.to_string()))
}

/// One record per line. Every field goes through [`escape_display`]: records stored before
/// values were escaped at write time may still hold control characters.
fn print_record(r: &AuditRecord) -> Result<(), CliError> {
    let kr = match (&r.keyring, r.version) {
        (Some(k), Some(v)) => format!("{k} v{v}"),
        (Some(k), None) => k.clone(),
        _ => "-".into(),
    };
    outln!(
        "#{:<6} {} {:<40} {:<28} {:<20} {:<14} {}",
        r.seq,
        escape_display(&r.ts),
        escape_display(&r.actor),
        escape_display(&r.action),
        escape_display(&kr),
        escape_display(&r.outcome),
        escape_display(r.detail.as_deref().unwrap_or(""))
    )
}

/// Records per page when reading the log over the API (the server's maximum).
const PAGE: u32 = 1000;

/// Whether a record with `seq >= s` exists (one audited read).
async fn exists_from(c: &Client, s: u64) -> Result<bool, CliError> {
    Ok(!c.audit(s.saturating_sub(1), 1).await?.records.is_empty())
}

/// The highest stored sequence number, found without trusting the chain (doubling, then
/// bisection: about 2·log2(n) one-record reads, each itself audited).
async fn find_end(c: &Client, known: u64) -> Result<u64, CliError> {
    let mut lo = known;
    let mut hi = known.max(1).saturating_mul(2);
    while exists_from(c, hi).await? {
        lo = hi;
        hi = hi.saturating_mul(2);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if exists_from(c, mid).await? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// The last `n` records up to and including `end`, reading page by page.
async fn read_tail(c: &Client, end: u64, n: u32) -> Result<Vec<AuditRecord>, CliError> {
    let mut after = end.saturating_sub(u64::from(n));
    let mut out: Vec<AuditRecord> = Vec::new();
    while out.len() < n as usize {
        let want = PAGE.min(n - u32::try_from(out.len()).unwrap_or(n));
        let page = c.audit(after, want).await?.records;
        let Some(last) = page.last().map(|r| r.seq) else {
            break;
        };
        let done = last >= end;
        out.extend(page.into_iter().filter(|r| r.seq <= end));
        if done || last <= after {
            break;
        }
        after = last;
    }
    Ok(out)
}

/// `audit tail`: the last `lines` records, after verifying the whole chain. On a broken chain
/// the records are still printed (they are the evidence), preceded by a warning on stderr,
/// and the command fails.
async fn tail(remote: &Remote, lines: u32, db: Option<&Path>) -> Result<(), CliError> {
    let (records, report) = match db {
        Some(db) => {
            let store = open_db(db)?;
            let report = store
                .verify_audit(None)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let all = store
                .audit_records(0, u32::MAX, None)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let skip = all.len().saturating_sub(lines as usize);
            (all.into_iter().skip(skip).collect::<Vec<_>>(), report)
        }
        None => {
            let c = client(remote)?;
            let report = c.audit_verify().await?;
            let end = if report.ok {
                // The verification is itself the next record.
                report.records + 1
            } else {
                find_end(&c, report.records).await?
            };
            (read_tail(&c, end, lines).await?, report)
        }
    };
    if let (false, Some(bad)) = (report.ok, &report.first_bad) {
        eprintln!(
            "WARNING: audit chain BROKEN at record {}: {}",
            bad.seq,
            escape_display(&bad.reason)
        );
        eprintln!("WARNING: the records below cannot be trusted; run `audit verify`");
    }
    let printed = if remote.json {
        print_json(&records)
    } else {
        records.iter().try_for_each(print_record)
    };
    match printed {
        Err(e) if !e.is_broken_pipe() => return Err(e),
        _ => {}
    }
    if report.ok {
        printed
    } else {
        Err(CliError::AuditBroken)
    }
}

fn report(json: bool, r: &AuditVerifyReport) -> Result<(), CliError> {
    if json {
        print_json(r)?;
    } else if r.ok {
        outln!(
            "audit chain OK: {} records, head {}",
            r.records,
            r.head_hash
        )?;
    } else if let Some(bad) = &r.first_bad {
        outln!("audit chain BROKEN at record {}: {}", bad.seq, bad.reason)?;
        outln!("{} records verified before it", r.records)?;
    }
    if r.ok {
        Ok(())
    } else {
        Err(CliError::AuditBroken)
    }
}

/// `audit …`.
pub async fn audit(remote: &Remote, cmd: &AuditCommand) -> Result<(), CliError> {
    match cmd {
        AuditCommand::Verify { db: Some(db) } => {
            let store = open_db(db)?;
            let r = store
                .verify_audit(None)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            report(remote.json, &r)
        }
        AuditCommand::Verify { db: None } => {
            report(remote.json, &client(remote)?.audit_verify().await?)
        }
        AuditCommand::Tail { lines, db } => tail(remote, *lines, db.as_deref()).await,
    }
}
