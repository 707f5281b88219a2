//! `pgseal-proxy reencrypt`: after a key rotation, rewrites every stored cell of the protected
//! columns that is not under its keyring's active version, so that the old versions can then be
//! disabled and destroyed without making data unreadable.
//!
//! For each configured column, in batches: select cells whose envelope header names another key
//! version (the header is cleartext by design, docs/format.md, so PostgreSQL can filter on
//! `substring(col from … for 4)`), open each in this process, seal it again under the active
//! version (new nonce; the blind index is the lineage's, docs/format.md §2.4, so it is the same
//! as before unless the cell carried a legacy tag of the previous format, which is replaced)
//! and write it back with
//! `UPDATE … SET col = new WHERE ctid = … AND col = old RETURNING 1`: a row the application changed
//! in between is left alone (it was rewritten under the active version anyway, or will be on the
//! next run). Batches are keyset-paginated by `ctid`, so cells that cannot be opened (corrupt, or
//! a version the proxy cannot get) are counted once and never loop. Plaintext exists only in this
//! process's memory; what goes upstream is ciphertext.

use std::fmt;

use crate::encrypt::cells::{self, decode_bytea_text, CellError};
use crate::keys::KeySource;
use crate::rewrite::{ProtectedColumn, ProtectedSchema};
use crate::upstream::simple_query::{quote_literal, SimpleClient};
use crate::upstream::UpstreamError;

/// Why re-encryption stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReencryptError {
    /// Keys of a column are unavailable (no active version, keyserver gone).
    #[error("{column}: {source}")]
    Keys {
        /// Column.
        column: String,
        /// The key error.
        source: CellError,
    },
    /// The upstream refused a statement or the connection failed.
    #[error("{column}: upstream: {source}")]
    Upstream {
        /// Column.
        column: String,
        /// The upstream error (no data values in it).
        source: UpstreamError,
    },
    /// Two stored rows hold the same value of a unique column (data written before blind
    /// indexes were kept across rotations): re-tagging one of them violates the UNIQUE index.
    #[error(
        "{column}: two rows hold the same value of this unique column ({message}); they were \
         stored before blind indexes were kept across key rotations: find them through the \
         proxy, merge or delete one, and run reencrypt again"
    )]
    Duplicate {
        /// Column.
        column: String,
        /// PostgreSQL's message (names the index, no values).
        message: String,
    },
    /// The upstream answered something unexpected.
    #[error("{column}: unexpected answer from the upstream: {what}")]
    Answer {
        /// Column.
        column: String,
        /// What was wrong.
        what: &'static str,
    },
}

/// What happened to one column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnReport {
    /// `schema.table.column`.
    pub column: String,
    /// The active version the cells were rewritten to.
    pub active_version: u32,
    /// Cells rewritten.
    pub rewritten: u64,
    /// Cells changed by someone else between read and write (left alone).
    pub changed: u64,
    /// Cells that could not be opened (corrupt, moved, or under a version the proxy cannot
    /// get); left as they are.
    pub unreadable: u64,
}

impl fmt::Display for ColumnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} cell(s) rewritten to key version {}",
            self.column, self.rewritten, self.active_version
        )?;
        if self.changed > 0 {
            write!(f, ", {} changed concurrently (left alone)", self.changed)?;
        }
        if self.unreadable > 0 {
            write!(
                f,
                ", {} could not be opened (corrupt or under an unavailable version)",
                self.unreadable
            )?;
        }
        Ok(())
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Rewrites the cells of every column of `schema` that are not under the active version, in
/// batches of `batch` rows.
pub async fn reencrypt(
    client: &mut SimpleClient,
    schema: &ProtectedSchema,
    keys: &dyn KeySource,
    batch: usize,
) -> Result<Vec<ColumnReport>, ReencryptError> {
    let mut reports = Vec::new();
    for col in schema.columns() {
        reports.push(reencrypt_column(client, col, keys, batch.max(1)).await?);
    }
    Ok(reports)
}

async fn reencrypt_column(
    client: &mut SimpleClient,
    col: &ProtectedColumn,
    keys: &dyn KeySource,
    batch: usize,
) -> Result<ColumnReport, ReencryptError> {
    let name = col.id.to_string();
    let key_err = |source: CellError| ReencryptError::Keys {
        column: name.clone(),
        source,
    };
    let up_err = |source: UpstreamError| ReencryptError::Upstream {
        column: name.clone(),
        source,
    };
    let answer = |what: &'static str| ReencryptError::Answer {
        column: name.clone(),
        what,
    };
    let table = format!(
        "{}.{}",
        quote_ident(col.id.schema()),
        quote_ident(col.id.table())
    );
    let column = quote_ident(col.id.column());
    // 1-based position of the u32 key version: after the blind index (indexed columns) and
    // the format-version byte.
    let version_at = if col.index.is_some() {
        pgseal_crypto::BLIND_INDEX_LEN + 2
    } else {
        2
    };
    let mut report = ColumnReport {
        column: name.clone(),
        ..ColumnReport::default()
    };
    let mut after = "(0,0)".to_owned();
    loop {
        let crypto = keys
            .column(&col.id)
            .map_err(|e| key_err(CellError::Key(e)))?;
        let active = crypto.active_version().ok_or_else(|| {
            key_err(CellError::Key(crate::keys::KeyError::NoActiveVersion {
                keyring: crypto.keyring().to_owned(),
                column: name.clone(),
            }))
        })?;
        report.active_version = active;
        let select = format!(
            "SELECT ctid, {column} FROM {table} \
             WHERE {column} IS NOT NULL AND ctid > {after}::tid \
             AND substring({column} from {version_at} for 4) <> '\\x{active:08x}'::bytea \
             ORDER BY ctid LIMIT {batch}",
            after = quote_literal(&after),
        );
        let rows = client
            .query(&select)
            .await
            .map_err(up_err)?
            .into_iter()
            .next()
            .ok_or_else(|| answer("no result for the SELECT"))?;
        let Some(last) = rows.last() else {
            return Ok(report);
        };
        after = last
            .first()
            .cloned()
            .flatten()
            .ok_or_else(|| answer("a NULL ctid"))?;
        let mut updates = String::from("BEGIN;");
        let mut pending = 0u64;
        for row in &rows {
            let (Some(Some(ctid)), Some(Some(cell))) = (row.first(), row.get(1)) else {
                return Err(answer("a row without ctid or cell"));
            };
            let mut stored = Vec::new();
            if decode_bytea_text(cell.as_bytes(), &mut stored).is_none() {
                report.unreadable += 1;
                continue;
            }
            let value = match cells::open(&crypto, col, &stored) {
                Ok(v) => v,
                Err(CellError::Corrupt { .. } | CellError::Key(_)) => {
                    report.unreadable += 1;
                    continue;
                }
                Err(e) => return Err(key_err(e)),
            };
            let mut sealed = Vec::with_capacity(stored.len());
            cells::seal(&crypto, col, &value, &mut sealed).map_err(key_err)?;
            updates.push_str(&format!(
                "UPDATE {table} SET {column} = {new} WHERE ctid = {ctid}::tid AND {column} = {old} RETURNING 1;",
                new = cells::bytea_literal(&sealed),
                ctid = quote_literal(ctid),
                old = cells::bytea_literal(&stored),
            ));
            pending += 1;
        }
        if pending == 0 {
            continue;
        }
        updates.push_str("COMMIT;");
        let results = match client.query(&updates).await {
            Ok(r) => r,
            Err(UpstreamError::Query(f)) if f.code == "23505" => {
                // The transaction failed; leave the connection usable for the next column.
                let _ = client.query("ROLLBACK").await;
                return Err(ReencryptError::Duplicate {
                    column: name.clone(),
                    message: f.message,
                });
            }
            Err(e) => return Err(up_err(e)),
        };
        // BEGIN, one result per UPDATE, COMMIT.
        let done: u64 = results
            .iter()
            .skip(1)
            .take(usize::try_from(pending).unwrap_or(usize::MAX))
            .map(|r| r.len() as u64)
            .sum();
        report.rewritten += done;
        report.changed += pending - done.min(pending);
    }
}
