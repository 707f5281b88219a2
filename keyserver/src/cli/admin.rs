//! Admin commands over the HTTP API, with human and JSON output.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

use super::{AuditCommand, KeyringCommand, ProxyCommand, Remote, RoleArg, TokenCommand};
use crate::client::{Client, ClientConfig, ClientError};
use crate::model::{AuditRecord, AuditVerifyReport, KeyringMeta, Role};
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
    println!("{s}");
    Ok(())
}

fn print_keyring(m: &KeyringMeta) {
    println!("keyring {} ({})", m.name, m.id);
    println!("  active version:          {}", m.active_version);
    println!("  min decryption version:  {}", m.min_decryption_version);
    println!("  revision:                {}", m.revision);
    println!("  created:                 {}", m.created_at);
    for v in &m.versions {
        println!(
            "  v{:<4} {:<13} created {}",
            v.version,
            v.state.as_str(),
            v.created_at
        );
    }
    println!("  blind-index generation:  {}", m.index.active_generation);
    for g in &m.index.generations {
        let from = g
            .derived_from_version
            .map(|v| format!(" (material of data-key version {v})"))
            .unwrap_or_default();
        println!(
            "  g{:<4} {:<13} created {}{from}",
            g.generation,
            g.state.as_str(),
            g.created_at
        );
    }
    if !m.index.legacy_tag_versions.is_empty() {
        let list: Vec<String> = m
            .index
            .legacy_tag_versions
            .iter()
            .map(u32::to_string)
            .collect();
        println!(
            "  legacy tags under:       version(s) {} (re-tagged by `pgseal-proxy reencrypt`)",
            list.join(", ")
        );
    }
}

fn output_keyring(json: bool, m: &KeyringMeta) -> Result<(), CliError> {
    if json {
        print_json(m)
    } else {
        print_keyring(m);
        Ok(())
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
        KeyringCommand::SetMinVersion { name, version } => {
            output_keyring(json, &c.set_min_version(name, *version).await?)
        }
        KeyringCommand::List => {
            let l = c.list_keyrings().await?;
            if json {
                return print_json(&l);
            }
            println!(
                "{:<32} {:>7} {:>8} {:>9}  ID",
                "NAME", "ACTIVE", "MIN-DEC", "REVISION"
            );
            for k in &l.keyrings {
                println!(
                    "{:<32} {:>7} {:>8} {:>9}  {}",
                    k.name, k.active_version, k.min_decryption_version, k.revision, k.id
                );
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
            println!("token id:   {}", t.info.id);
            println!("role:       {}", t.info.role.as_str());
            if let Some(e) = t.info.expires_at {
                println!("expires at: {e} (unix seconds)");
            }
            println!("token (shown once, store it safely):");
            println!("{}", t.token);
            Ok(())
        }
        TokenCommand::List => {
            let l = c.list_tokens().await?;
            if remote.json {
                return print_json(&l);
            }
            println!(
                "{:<36} {:<10} {:<8} {:<12} NAME",
                "ID", "ROLE", "REVOKED", "EXPIRES"
            );
            for t in &l.tokens {
                let exp = t
                    .expires_at
                    .map_or_else(|| "-".to_owned(), |e| e.to_string());
                println!(
                    "{:<36} {:<10} {:<8} {:<12} {}",
                    t.id,
                    t.role.as_str(),
                    t.revoked,
                    exp,
                    t.name
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let t = c.revoke_token(id).await?;
            if remote.json {
                return print_json(&t);
            }
            println!("revoked {}", t.id);
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
            println!("proxy {} may read: {}", p.name, p.keyrings.join(", "));
            Ok(())
        }
        ProxyCommand::List => {
            let l = c.list_proxies().await?;
            if remote.json {
                return print_json(&l);
            }
            for p in &l.proxies {
                println!("{:<32} {}", p.name, p.keyrings.join(","));
            }
            Ok(())
        }
        ProxyCommand::Remove { name } => {
            let v = c.delete_proxy(name).await?;
            if remote.json {
                return print_json(&v);
            }
            println!("removed proxy {name}");
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

fn print_record(r: &AuditRecord) {
    let kr = match (&r.keyring, r.version) {
        (Some(k), Some(v)) => format!("{k} v{v}"),
        (Some(k), None) => k.clone(),
        _ => "-".into(),
    };
    println!(
        "#{:<6} {} {:<40} {:<28} {:<20} {:<14} {}",
        r.seq,
        r.ts,
        r.actor,
        r.action,
        kr,
        r.outcome,
        r.detail.as_deref().unwrap_or("")
    );
}

fn report(json: bool, r: &AuditVerifyReport) -> Result<(), CliError> {
    if json {
        print_json(r)?;
    } else if r.ok {
        println!(
            "audit chain OK: {} records, head {}",
            r.records, r.head_hash
        );
    } else if let Some(bad) = &r.first_bad {
        println!("audit chain BROKEN at record {}: {}", bad.seq, bad.reason);
        println!("{} records verified before it", r.records);
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
        AuditCommand::Tail { lines, db } => {
            let records = match db {
                Some(db) => {
                    let store = open_db(db)?;
                    let all = store
                        .audit_records(0, u32::MAX, None)
                        .map_err(|e| CliError::Usage(e.to_string()))?;
                    let skip = all.len().saturating_sub(*lines as usize);
                    all.into_iter().skip(skip).collect::<Vec<_>>()
                }
                None => {
                    let c = client(remote)?;
                    // Find the head (the verification itself is the next record), then read
                    // the last `lines` records.
                    let head = c.audit_verify().await?.records + 1;
                    let after = head.saturating_sub(u64::from(*lines));
                    c.audit(after, (*lines).min(1000)).await?.records
                }
            };
            if remote.json {
                return print_json(&records);
            }
            for r in &records {
                print_record(r);
            }
            Ok(())
        }
    }
}
