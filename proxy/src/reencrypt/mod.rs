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
//!
//! During a blind-index key rotation (docs/format.md §2.5) the same pass also brings every cell
//! of the rotating keyring's columns to the phase's form: before the cut-over every single cell
//! becomes a dual one (re-index), after it every cell becomes a single cell under the new
//! generation (compaction; every cell is looked at, so a single cell still under the old
//! generation is found too). [`rotation_pass`] tells the keyserver about the pass.

pub mod rotation_pass;

use std::fmt;

use crate::encrypt::cells::{self, decode_bytea_text, CellError};
use crate::keys::{IndexForm, KeySource};
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
    /// indexes were kept across rotations, or a cell written under an old blind-index
    /// generation by a proxy that lagged behind a rotation): re-tagging one of them violates
    /// the UNIQUE index.
    #[error(
        "{column}: two rows hold the same value of this unique column ({message}); their \
         blind indexes were of different generations (stored before blind indexes were kept \
         across key rotations, or by a proxy that lagged behind a blind-index rotation): find \
         them through the proxy, merge or delete one, and run reencrypt again"
    )]
    Duplicate {
        /// Column.
        column: String,
        /// PostgreSQL's message (names the index, no values).
        message: String,
    },
    /// A blind-index key rotation's pass cannot run (the database is not prepared for it, the
    /// keyserver refused it, older transactions did not end).
    #[error("{0}")]
    Rotation(String),
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

pub(crate) fn quote_ident(s: &str) -> String {
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
    let indexed = col.index.is_some();
    // The u32 key version (1-based position): after the format-version byte, behind the blind
    // index (indexed columns), behind both tags in a dual cell.
    let version_expr = if indexed {
        format!(
            "CASE WHEN {dual} THEN substring({column} from 35 for 4) \
             ELSE substring({column} from 18 for 4) END",
            dual = is_dual_sql(&column)
        )
    } else {
        format!("substring({column} from 2 for 4)")
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
        let form = if indexed {
            crypto.form()
        } else {
            IndexForm::Single
        };
        // An E'' literal: the same whatever the session's standard_conforming_strings says.
        let stale_version = format!("{version_expr} <> E'\\\\x{active:08x}'::bytea");
        let dual = is_dual_sql(&column);
        // Which cells need a rewrite: another key version, or another form than the phase's
        // (after the cut-over every cell is looked at: a single cell's tag generation cannot be
        // told from its bytes).
        let needs = match form {
            _ if !indexed => stale_version,
            // Outside a rotation a dual cell is left alone: a run whose key snapshot is older
            // than a rotation's start must not turn the rotation's dual cells back into single
            // ones (after a rotation's finish there are none; the compaction saw to it).
            IndexForm::Single => format!("({stale_version} AND NOT {dual})"),
            IndexForm::Dual => format!("({stale_version} OR NOT {dual})"),
            IndexForm::Cutover => "TRUE".to_owned(),
        };
        let select = format!(
            "SELECT ctid, {column} FROM {table} \
             WHERE {column} IS NOT NULL AND ctid > {after}::tid AND {needs} \
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
            if form == IndexForm::Cutover
                && is_current_single(&crypto, col, &value, &stored, active)
            {
                continue;
            }
            if indexed
                && form == IndexForm::Single
                && stored.get(pgseal_crypto::BLIND_INDEX_LEN) == Some(&cells::DUAL_MARKER)
            {
                continue;
            }
            let mut sealed = Vec::with_capacity(stored.len() + cells::DUAL_PREFIX_LEN);
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

/// SQL: whether a stored cell of `column` (quoted) is a dual cell (byte 17, 1-based, is the
/// marker). Never raises an error, also not on a short value.
pub(crate) fn is_dual_sql(column: &str) -> String {
    format!("substring({column} from 17 for 1) = E'\\\\x02'::bytea")
}

/// Whether `stored` is already what a rewrite would produce after a blind-index rotation's
/// cut-over: a single cell under the active version whose tag is the active generation's.
fn is_current_single(
    crypto: &crate::keys::ColumnCrypto,
    col: &ProtectedColumn,
    value: &pgseal_crypto::value::Value,
    stored: &[u8],
    active: u32,
) -> bool {
    use pgseal_crypto::BLIND_INDEX_LEN;
    if stored.get(BLIND_INDEX_LEN) == Some(&cells::DUAL_MARKER) {
        return false;
    }
    let version = stored
        .get(BLIND_INDEX_LEN + 1..BLIND_INDEX_LEN + 5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes);
    if version != Some(active) {
        return false;
    }
    let mut tags = Vec::with_capacity(2);
    if cells::lookup_tags(crypto, col, value, &mut tags).is_err() {
        return false;
    }
    match (tags.first(), stored.get(..BLIND_INDEX_LEN)) {
        (Some(t), Some(prefix)) => t.as_slice() == prefix,
        _ => false,
    }
}
