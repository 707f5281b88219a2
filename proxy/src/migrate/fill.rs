//! Filling and checking shadow columns, one table at a time: read rows (by block range, or the
//! pending ones), turn each source value into its new form in this process (seal a plaintext
//! into a pgseal cell, or open a cell into its plaintext), write the shadows back guarded by
//! the row version read (`ctid` and `xmin`: a row changed in between is left alone, its
//! trigger cleared the shadow and a later sweep fills it), and verify that every shadow is the
//! source value's exact new form.
//!
//! Rows are addressed by `ctid` + `xmin`, so tables without a primary key are handled. Source
//! values come in the migrator session's text formats (`DateStyle ISO`, `TimeZone UTC`,
//! shortest exact floats, hex bytea; see [`SESSION_SETTINGS`]).

use std::fmt::Write as _;

use pgseal_crypto::value::datetime::Utc;
use pgseal_crypto::value::Value;
use zeroize::Zeroize;

use super::ddl::ColumnPlan;
use super::state::Direction;
use super::MigrateError;
use crate::encrypt::cells::{self, decode_bytea_text, CellError};
use crate::keys::{ColumnCrypto, IndexForm, KeySource};
use crate::upstream::simple_query::{quote_literal, Rows, SimpleClient};
use crate::upstream::UpstreamError;

/// The migrator session's settings: text formats the converters read and write exactly.
pub const SESSION_SETTINGS: &str = "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; \
     SET extra_float_digits = 1; SET bytea_output = 'hex'; SET IntervalStyle = 'postgres'; \
     SET standard_conforming_strings = on; SET statement_timeout = 0";

/// The columns of one table that migrate together.
#[derive(Debug, Clone)]
pub struct TableWork<'a> {
    /// `"schema"."table"`.
    pub table: String,
    /// Its migrating columns (at least one).
    pub columns: Vec<&'a ColumnPlan>,
}

/// Counts of a fill or a verification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rows read.
    pub read: u64,
    /// Shadow cells written.
    pub written: u64,
    /// Rows changed by someone else between read and write (left for a sweep).
    pub changed: u64,
}

/// What a verification found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verified {
    /// Rows looked at.
    pub rows: u64,
    /// Values that matched (non-NULL).
    pub matched: u64,
    /// NULL values (NULL shadow: correct).
    pub nulls: u64,
    /// Shadows still to fill (rows changed since the fill).
    pub pending: u64,
    /// Shadows that are not the source value's new form (reset to be filled again).
    pub mismatched: u64,
}

fn up(table: &str) -> impl Fn(UpstreamError) -> MigrateError + '_ {
    move |source| MigrateError::Upstream {
        what: table.to_owned(),
        source,
    }
}

impl TableWork<'_> {
    /// SQL: any of the table's columns has a row still to fill.
    pub fn pending_sql(&self) -> String {
        let parts: Vec<String> = self.columns.iter().map(|c| c.pending_sql()).collect();
        format!("({})", parts.join(" OR "))
    }

    /// `SELECT ctid, xmin, source, shadow IS NULL, …` of the rows matching `filter`.
    fn read_sql(&self, filter: &str, limit: Option<usize>) -> String {
        let mut cols = String::from("ctid, xmin");
        for c in &self.columns {
            let _ = write!(cols, ", {}, {} IS NULL", c.column(), c.shadow());
        }
        let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
        format!("SELECT {cols} FROM {} WHERE {filter}{limit}", self.table)
    }

    /// The table's size in blocks.
    pub async fn blocks(&self, client: &mut SimpleClient) -> Result<u64, MigrateError> {
        let rows = client
            .query(&format!(
                "SELECT pg_catalog.pg_relation_size({t}::regclass) / pg_catalog.current_setting('block_size')::bigint",
                t = quote_literal(&self.table)
            ))
            .await
            .map_err(up(&self.table))?;
        Ok(first_number(&rows).unwrap_or(0))
    }

    /// Fills the pending rows in blocks `[from, to)`.
    pub async fn fill_blocks(
        &self,
        client: &mut SimpleClient,
        keys: &dyn KeySource,
        from: u64,
        to: u64,
    ) -> Result<Counts, MigrateError> {
        let filter = format!(
            "ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid AND {}",
            self.pending_sql()
        );
        self.fill(client, keys, &filter, None).await
    }

    /// Fills up to `limit` pending rows wherever they are (rows updated or inserted since the
    /// block pass saw their blocks).
    pub async fn fill_pending(
        &self,
        client: &mut SimpleClient,
        keys: &dyn KeySource,
        limit: usize,
    ) -> Result<Counts, MigrateError> {
        self.fill(client, keys, &self.pending_sql(), Some(limit))
            .await
    }

    /// How many rows are still to fill.
    pub async fn count_pending(&self, client: &mut SimpleClient) -> Result<u64, MigrateError> {
        let rows = client
            .query(&format!(
                "SELECT count(*) FROM {} WHERE {}",
                self.table,
                self.pending_sql()
            ))
            .await
            .map_err(up(&self.table))?;
        Ok(first_number(&rows).unwrap_or(0))
    }

    async fn fill(
        &self,
        client: &mut SimpleClient,
        keys: &dyn KeySource,
        filter: &str,
        limit: Option<usize>,
    ) -> Result<Counts, MigrateError> {
        let crypto = self.crypto(keys)?;
        let mut rows = client
            .query(&self.read_sql(filter, limit))
            .await
            .map_err(up(&self.table))?
            .into_iter()
            .next()
            .unwrap_or_default();
        let mut counts = Counts {
            read: rows.len() as u64,
            ..Counts::default()
        };
        if rows.is_empty() {
            return Ok(counts);
        }
        let mut values = String::new();
        let mut batch = 0u64;
        let result = self.values_of(&crypto, &rows, &mut values, &mut batch);
        wipe(&mut rows);
        result?;
        if batch == 0 {
            return Ok(counts);
        }
        let mut sets = Vec::new();
        let mut names = vec!["t".to_owned(), "x".to_owned()];
        for (i, c) in self.columns.iter().enumerate() {
            sets.push(format!("{s} = COALESCE(v.c{i}, u.{s})", s = c.shadow()));
            names.push(format!("c{i}"));
        }
        let mut update = format!(
            "UPDATE {} AS u SET {} FROM (VALUES {values}) AS v({}) \
             WHERE u.ctid = v.t AND u.xmin = v.x RETURNING 1",
            self.table,
            sets.join(", "),
            names.join(", ")
        );
        values.zeroize();
        let done = client.query(&update).await;
        update.zeroize();
        let done = match done {
            Ok(r) => r.into_iter().next().map(|r| r.len() as u64).unwrap_or(0),
            Err(UpstreamError::Query(f)) if f.code == "23505" => {
                return Err(MigrateError::Duplicate {
                    table: self.table.clone(),
                    message: f.message,
                })
            }
            Err(e) => return Err(up(&self.table)(e)),
        };
        counts.written = done;
        counts.changed = batch.saturating_sub(done);
        Ok(counts)
    }

    /// The key material of every column (checked for writes: an active version, no
    /// blind-index rotation in progress).
    fn crypto(
        &self,
        keys: &dyn KeySource,
    ) -> Result<Vec<std::sync::Arc<ColumnCrypto>>, MigrateError> {
        self.columns
            .iter()
            .map(|c| {
                let crypto = keys.column(&c.col.id).map_err(|e| MigrateError::Keys {
                    column: c.col.id.to_string(),
                    source: CellError::Key(e),
                })?;
                if c.col.index.is_some() && crypto.form() != IndexForm::Single {
                    return Err(MigrateError::Refused(format!(
                        "{}: a blind-index key rotation of keyring {:?} is in progress; finish it first",
                        c.col.id, c.col.keyring
                    )));
                }
                Ok(crypto)
            })
            .collect()
    }

    /// Appends the VALUES rows `('ctid'::tid, 'xmin'::xid, new0, new1, …)` of the rows that
    /// have something to fill; `batch` counts them.
    fn values_of(
        &self,
        crypto: &[std::sync::Arc<ColumnCrypto>],
        rows: &Rows,
        out: &mut String,
        batch: &mut u64,
    ) -> Result<(), MigrateError> {
        let mut cell = Vec::new();
        let mut text = Vec::new();
        for row in rows {
            let (Some(Some(ctid)), Some(Some(xmin))) = (row.first(), row.get(1)) else {
                return Err(MigrateError::Answer("a row without ctid or xmin"));
            };
            let mut item = format!(
                "({}::tid, {}::xid",
                quote_literal(ctid),
                quote_literal(xmin)
            );
            let mut any = false;
            for (i, (c, k)) in self.columns.iter().zip(crypto).enumerate() {
                let source = row.get(2 + 2 * i).and_then(|v| v.as_deref());
                let pending = row.get(3 + 2 * i).and_then(|v| v.as_deref()) == Some("t");
                match (source, pending) {
                    (Some(v), true) => {
                        let new = convert(c, k, v, &mut cell, &mut text)?;
                        let _ = write!(item, ", {new}");
                        any = true;
                    }
                    _ => {
                        let _ = write!(item, ", NULL::{}", c.shadow_type());
                    }
                }
            }
            item.push(')');
            if any {
                if *batch > 0 {
                    out.push_str(", ");
                }
                out.push_str(&item);
                *batch += 1;
            }
            item.zeroize();
        }
        cell.zeroize();
        text.zeroize();
        Ok(())
    }

    /// Verifies the rows in blocks `[from, to)`: every non-NULL shadow opens (or parses) to the
    /// source value's canonical encoding, and a cell's blind index is the value's. Mismatched
    /// shadows are reset to NULL (filled again by the next sweep).
    pub async fn verify_blocks(
        &self,
        client: &mut SimpleClient,
        keys: &dyn KeySource,
        from: u64,
        to: u64,
    ) -> Result<Verified, MigrateError> {
        let crypto = self.crypto(keys)?;
        let mut cols = String::from("ctid, xmin");
        for c in &self.columns {
            let _ = write!(cols, ", {}, {}", c.column(), c.shadow());
        }
        let mut rows = client
            .query(&format!(
                "SELECT {cols} FROM {} WHERE ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid",
                self.table
            ))
            .await
            .map_err(up(&self.table))?
            .into_iter()
            .next()
            .unwrap_or_default();
        let mut v = Verified {
            rows: rows.len() as u64,
            ..Verified::default()
        };
        let mut reset = Vec::new();
        for row in &rows {
            for (i, (c, k)) in self.columns.iter().zip(&crypto).enumerate() {
                let source = row.get(2 + 2 * i).and_then(|x| x.as_deref());
                let shadow = row.get(3 + 2 * i).and_then(|x| x.as_deref());
                match (source, shadow) {
                    (None, None) => v.nulls += 1,
                    (Some(_), None) => v.pending += 1,
                    (None, Some(_)) => {
                        v.mismatched += 1;
                        reset.push((row, i));
                    }
                    (Some(s), Some(n)) => {
                        if same_value(c, k, s, n) {
                            v.matched += 1;
                        } else {
                            v.mismatched += 1;
                            reset.push((row, i));
                        }
                    }
                }
            }
        }
        let mut sql = String::new();
        for (row, i) in reset {
            let (Some(Some(ctid)), Some(Some(xmin)), Some(c)) =
                (row.first(), row.get(1), self.columns.get(i))
            else {
                continue;
            };
            let _ = write!(
                sql,
                "UPDATE {} SET {} = NULL WHERE ctid = {}::tid AND xmin = {}::xid;",
                self.table,
                c.shadow(),
                quote_literal(ctid),
                quote_literal(xmin)
            );
        }
        wipe(&mut rows);
        if !sql.is_empty() {
            client.query(&sql).await.map_err(up(&self.table))?;
        }
        Ok(v)
    }
}

/// The new form of one source value, as a typed SQL literal: a `bytea` cell when encrypting,
/// the plaintext in the logical type when decrypting.
fn convert(
    c: &ColumnPlan,
    crypto: &ColumnCrypto,
    source: &str,
    cell: &mut Vec<u8>,
    text: &mut Vec<u8>,
) -> Result<String, MigrateError> {
    let key_err = |source: CellError| MigrateError::Keys {
        column: c.col.id.to_string(),
        source,
    };
    match c.direction {
        Direction::Encrypt => {
            let value = parse_source(c, source)?;
            cell.clear();
            cells::seal(crypto, &c.col, &value, cell).map_err(key_err)?;
            Ok(cells::bytea_literal(cell))
        }
        Direction::Decrypt => {
            let value = open_source(c, crypto, source, cell)?;
            text.clear();
            value
                .write_text_in(text, &Utc)
                .map_err(|e| MigrateError::Value {
                    column: c.col.id.to_string(),
                    reason: e.to_string(),
                })?;
            let s = std::str::from_utf8(text).map_err(|_| MigrateError::Value {
                column: c.col.id.to_string(),
                reason: "the value's text is not UTF-8".into(),
            })?;
            Ok(format!("{}::{}", quote_literal(s), c.shadow_type()))
        }
    }
}

/// A plaintext source value (text format) as the column's logical type.
fn parse_source(c: &ColumnPlan, source: &str) -> Result<Value, MigrateError> {
    cells::parse_value(&c.col, 0, source.as_bytes(), &Utc).map_err(|e| MigrateError::Value {
        column: c.col.id.to_string(),
        reason: e.to_string(),
    })
}

/// A cell source value (bytea text) opened.
fn open_source(
    c: &ColumnPlan,
    crypto: &ColumnCrypto,
    source: &str,
    raw: &mut Vec<u8>,
) -> Result<Value, MigrateError> {
    raw.clear();
    decode_bytea_text(source.as_bytes(), raw).ok_or_else(|| MigrateError::Value {
        column: c.col.id.to_string(),
        reason: "a stored value is not bytea".into(),
    })?;
    cells::open(crypto, &c.col, raw).map_err(|e| MigrateError::Keys {
        column: c.col.id.to_string(),
        source: e,
    })
}

/// Whether `shadow` is exactly the new form of `source` (same canonical encoding; for a cell
/// also the value's blind index).
fn same_value(c: &ColumnPlan, crypto: &ColumnCrypto, source: &str, shadow: &str) -> bool {
    let mut raw = Vec::new();
    let (plain, sealed, cell) = match c.direction {
        Direction::Encrypt => (
            parse_source(c, source),
            open_source(c, crypto, shadow, &mut raw),
            raw.clone(),
        ),
        Direction::Decrypt => {
            let opened = open_source(c, crypto, source, &mut raw);
            (
                cells::parse_value(&c.col, 0, shadow.as_bytes(), &Utc).map_err(|e| {
                    MigrateError::Value {
                        column: c.col.id.to_string(),
                        reason: e.to_string(),
                    }
                }),
                opened,
                raw.clone(),
            )
        }
    };
    let (Ok(a), Ok(b)) = (plain, sealed) else {
        return false;
    };
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    a.encode_canonical(&mut ea);
    b.encode_canonical(&mut eb);
    let mut same = ea == eb;
    if same && c.col.index.is_some() {
        let mut tags = Vec::new();
        same = cells::lookup_tags(crypto, &c.col, &b, &mut tags).is_ok()
            && tags.first().map(|t| t.as_slice()) == cell.get(..pgseal_crypto::BLIND_INDEX_LEN);
    }
    ea.zeroize();
    eb.zeroize();
    raw.zeroize();
    same
}

/// The first column of the first row of the first result, as a number.
pub(crate) fn first_number(results: &[Rows]) -> Option<u64> {
    results.first()?.first()?.first()?.as_deref()?.parse().ok()
}

/// Overwrites the text of every value read.
fn wipe(rows: &mut Rows) {
    for row in rows.iter_mut() {
        for v in row.iter_mut().flatten() {
            v.zeroize();
        }
    }
}
