//! Results: which columns of a RowDescription are protected, the RowDescription the client sees,
//! and DataRow decryption.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgseal_crypto::value::datetime::SessionZone;

use super::cells::{self, CellError};
use super::wire::{self, Field};
use crate::catalog::CatalogSnapshot;
use crate::keys::{ColumnCrypto, KeySource};
use crate::protocol::messages::put_message;
use crate::rewrite::plan::BYTEA_OID;
use crate::rewrite::ProtectedColumn;

/// How to treat each column of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowPlan {
    /// The protected column behind each result column, if any.
    cols: Vec<Option<ProtectedColumn>>,
    /// The format code of each column (as the upstream sends it and the client expects it).
    formats: Vec<i16>,
    /// Whether any column is protected.
    any: bool,
}

/// Why a DataRow could not be decrypted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RowError {
    /// A cell failed (corrupt data or unavailable keys).
    #[error(transparent)]
    Cell(#[from] CellError),
    /// The DataRow does not match its description.
    #[error("pgseal: a result row does not match its description")]
    Shape,
}

impl RowError {
    /// The SQLSTATE to report.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Cell(c) => c.sqlstate(),
            Self::Shape => "XX000",
        }
    }
}

impl RowPlan {
    /// A plan from the protected column of each result column and their formats.
    pub fn new(cols: Vec<Option<ProtectedColumn>>, formats: Vec<i16>) -> Self {
        let any = cols.iter().any(Option::is_some);
        Self { cols, formats, any }
    }

    /// Whether any column needs decryption.
    pub fn any(&self) -> bool {
        self.any
    }

    /// The same columns under a Bind's result format codes.
    pub fn with_result_formats(&self, result_formats: &[i16]) -> Self {
        let formats = (0..self.cols.len())
            .map(|i| match result_formats {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            })
            .collect();
        Self {
            cols: self.cols.clone(),
            formats,
            any: self.any,
        }
    }
}

/// How the fields of a RowDescription map onto the catalog.
#[derive(Debug, Clone, Default)]
pub struct FieldMap {
    /// The protected column behind each field (bytea fields of protected tables and their
    /// descendants).
    pub cols: Vec<Option<ProtectedColumn>>,
    /// Table OIDs of fields the snapshot does not know (a refresh may reveal a new partition or
    /// view).
    pub unknown: Vec<u32>,
    /// Why the result must not be handed over, when a field comes from a tainted relation (a
    /// view over a protected table).
    pub tainted: Option<String>,
}

/// The protected column behind each field, per `snapshot` (bytea fields of known tables only),
/// the OIDs of fields whose table the snapshot does not know, and whether a field comes from
/// a tainted relation.
pub fn map_fields(fields: &[Field], snapshot: &CatalogSnapshot) -> FieldMap {
    let mut unknown = Vec::new();
    let mut tainted = None;
    let cols = fields
        .iter()
        .map(|f| {
            if f.table_oid == 0 {
                return None;
            }
            if let Some(why) = snapshot.tainted(f.table_oid) {
                tainted.get_or_insert_with(|| why.to_owned());
                return None;
            }
            if !snapshot.knows_oid(f.table_oid) && !unknown.contains(&f.table_oid) {
                unknown.push(f.table_oid);
            }
            if f.type_oid != BYTEA_OID {
                return None;
            }
            snapshot.protected_at(f.table_oid, f.attnum).cloned()
        })
        .collect();
    FieldMap {
        cols,
        unknown,
        tainted,
    }
}

/// Appends the RowDescription the client sees: protected columns with their logical types.
pub fn write_client_row_description(out: &mut BytesMut, fields: &[Field], plan: &RowPlan) {
    let fields: Vec<Field> = fields
        .iter()
        .zip(plan.cols.iter())
        .map(|(f, c)| match c {
            Some(c) => Field {
                type_oid: c.ty.oid(),
                typlen: cells::typlen(c.ty),
                typmod: -1,
                ..f.clone()
            },
            None => f.clone(),
        })
        .collect();
    wire::write_row_description(out, &fields);
}

/// Decrypts one DataRow body into `out` as a complete DataRow message in the client's formats.
pub fn decrypt_data_row(
    keys: &dyn KeySource,
    plan: &RowPlan,
    body: &[u8],
    out: &mut BytesMut,
    zone: &dyn SessionZone,
) -> Result<(), RowError> {
    let values = wire::parse_data_row(body).map_err(|_| RowError::Shape)?;
    if values.len() != plan.cols.len() {
        return Err(RowError::Shape);
    }
    let mut scratch: Vec<u8> = Vec::with_capacity(body.len());
    let mut stored: Vec<u8> = Vec::new();
    let mut spans: Vec<Option<(usize, usize)>> = Vec::with_capacity(values.len());
    let mut crypto: Vec<(usize, Arc<ColumnCrypto>)> = Vec::new();
    for (i, (v, c)) in values.iter().zip(plan.cols.iter()).enumerate() {
        let (Some(v), Some(col)) = (v, c) else {
            spans.push(None);
            continue;
        };
        let format = plan.formats.get(i).copied().unwrap_or(0);
        let raw: &[u8] = if format == 0 {
            stored.clear();
            cells::decode_bytea_text(v, &mut stored).ok_or_else(|| CellError::Corrupt {
                column: col.id.to_string(),
            })?;
            &stored
        } else {
            v
        };
        let keys_for = match crypto.iter().find(|(j, _)| *j == i) {
            Some((_, k)) => k.clone(),
            None => {
                let k = keys.column(&col.id).map_err(CellError::Key)?;
                crypto.push((i, k.clone()));
                k
            }
        };
        let value = cells::open(&keys_for, col, raw)?;
        let start = scratch.len();
        if let Err(e) = cells::render(col, &value, format, &mut scratch, zone) {
            zeroize::Zeroize::zeroize(&mut scratch);
            return Err(e.into());
        }
        spans.push(Some((start, scratch.len())));
    }
    put_message(out, b'D', |b| {
        b.put_i16(i16::try_from(values.len()).unwrap_or(i16::MAX));
        for (v, span) in values.iter().zip(spans.iter()) {
            match span {
                Some((s, e)) => wire::put_value(b, scratch.get(*s..*e)),
                None => wire::put_value(b, *v),
            }
        }
    });
    zeroize::Zeroize::zeroize(&mut scratch);
    Ok(())
}
