//! Results: which columns of a RowDescription are protected, the RowDescription the client sees,
//! and DataRow decryption.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgseal_crypto::value::datetime::SessionZone;

use super::cells::{self, CellError};
use super::key_cache::KeyCache;
use super::leak_guard;
use super::wire::{self, Field};
use crate::catalog::CatalogSnapshot;
use crate::keys::{ColumnCrypto, KeySource};
use crate::protocol::messages::put_message;
use crate::rewrite::plan::BYTEA_OID;
use crate::rewrite::{ProtectedColumn, ProtectedSchema};

/// Whether and how the cells of a result column the proxy does not decrypt are checked for
/// values of protected columns (`encrypt/leak_guard.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Not checked (a decrypted column, or a type that cannot carry raw `bytea`).
    Off,
    /// A `bytea` column: each cell is checked as one stored value.
    Bytea,
    /// A type that can hold `bytea` values inside it (`bytea[]`, records, composite and other
    /// user-defined types such as domains): every embedded value that could be a stored value
    /// is checked.
    Embedded,
    /// A text type (and arrays of them): hex, base64 and escape renderings of stored values
    /// inside it are checked (`encode(note, 'hex')`, `note::text`, `to_json(note)` of a
    /// function's rows, `encode(note, 'base64')`).
    Text,
}

/// Type OIDs of `bytea[]`, `record` and `record[]`.
const EMBEDDING_OIDS: [u32; 3] = [1001, 2249, 2287];
/// Type OIDs whose values are text a function could have rendered a `bytea` value into:
/// `name`, `text`, `json`, `xml`, `bpchar`, `varchar`, `unknown`, `cstring`, `jsonb`, and their
/// arrays.
const TEXT_OIDS: [u32; 17] = [
    19, 25, 114, 142, 1042, 1043, 705, 2275, 3802, // scalars
    1003, 1009, 199, 143, 1014, 1015, 3807, 1263, // arrays (…, cstring[])
];
/// The first OID of objects created in a database (below are the built-in types).
const FIRST_USER_OID: u32 = 16384;

impl Guard {
    /// The guard of an undecrypted result column of type `type_oid`.
    pub fn for_type(type_oid: u32) -> Self {
        if type_oid == BYTEA_OID {
            Self::Bytea
        } else if EMBEDDING_OIDS.contains(&type_oid) || type_oid >= FIRST_USER_OID {
            Self::Embedded
        } else if TEXT_OIDS.contains(&type_oid) {
            Self::Text
        } else {
            Self::Off
        }
    }
}

/// How to treat each column of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowPlan {
    /// The protected column behind each result column, if any (shared by the plans derived
    /// for each Bind's formats).
    cols: Arc<[Option<ProtectedColumn>]>,
    /// The format code of each column as the upstream sends it.
    upstream: Vec<i16>,
    /// The format code of each column as the client expects it (differs from `upstream` only
    /// for protected columns the proxy asked the upstream for in binary).
    formats: Vec<i16>,
    /// Whether any column is protected.
    any: bool,
    /// Per column: a `bytea` column the proxy does not decrypt, whose cells are checked for
    /// values of protected columns before they are handed over ([`super::leak_guard`]).
    guard: Arc<[Guard]>,
    /// Whether any column is guarded.
    any_guard: bool,
    /// Per column: an online migration's own column (shadow or old), dropped from what the
    /// client gets (empty: none).
    hidden: Arc<[bool]>,
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
    /// A column the proxy does not decrypt holds values of a protected column.
    #[error(
        "pgseal: result column {position} holds encrypted values of protected column {column} \
         without coming from it (a function, view or expression returning it): it cannot be \
         decrypted here and is not handed over; select the column from its table"
    )]
    Unmapped {
        /// 1-based position of the result column.
        position: usize,
        /// The protected column whose keys opened the value.
        column: String,
    },
    /// The data of a `COPY … TO STDOUT` holds values of a protected column.
    #[error(
        "pgseal: COPY data holds encrypted values of protected column {column} (copied from a \
         function, a view or a column holding its ciphertext): it cannot be decrypted here and \
         is not handed over"
    )]
    UnmappedCopy {
        /// The protected column whose keys opened the value.
        column: String,
    },
}

impl RowError {
    /// The SQLSTATE to report.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Cell(c) => c.sqlstate(),
            Self::Shape => "XX000",
            Self::Unmapped { .. } | Self::UnmappedCopy { .. } => {
                crate::rewrite::refusal::FEATURE_NOT_SUPPORTED
            }
        }
    }
}

/// Per-column format codes from a Bind's result format codes (none: all text; one: all
/// columns; else one per column).
fn per_column(result_formats: &[i16], n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| match result_formats {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        })
        .collect()
}

impl RowPlan {
    /// A plan from the protected column of each result column and their formats (the same
    /// for the upstream and the client).
    pub fn new(cols: Vec<Option<ProtectedColumn>>, formats: Vec<i16>) -> Self {
        let guard = vec![Guard::Off; cols.len()];
        Self::guarded(cols, guard, formats)
    }

    /// Like [`RowPlan::new`], with the columns whose cells are checked for values of protected
    /// columns (`guard`, one flag per column; see [`FieldMap::guard`]).
    pub fn guarded(
        cols: Vec<Option<ProtectedColumn>>,
        guard: Vec<Guard>,
        formats: Vec<i16>,
    ) -> Self {
        let any = cols.iter().any(Option::is_some);
        let any_guard = guard.iter().any(|g| *g != Guard::Off);
        Self {
            cols: cols.into(),
            upstream: formats.clone(),
            formats,
            any,
            guard: guard.into(),
            any_guard,
            hidden: Arc::from(Vec::new()),
        }
    }

    /// The same plan with the columns the client does not see (`hidden`, one flag per
    /// column; see [`FieldMap::hidden`]).
    pub fn with_hidden(mut self, hidden: Vec<bool>) -> Self {
        if hidden.iter().any(|h| *h) {
            self.hidden = hidden.into();
        }
        self
    }

    /// Whether a column is dropped from what the client gets.
    pub fn any_hidden(&self) -> bool {
        !self.hidden.is_empty()
    }

    /// Whether result column `i` is dropped.
    fn is_hidden(&self, i: usize) -> bool {
        self.hidden.get(i).copied().unwrap_or(false)
    }

    /// Whether the client's RowDescription and DataRows differ from the upstream's (columns to
    /// decrypt or to drop).
    pub fn rewrites(&self) -> bool {
        self.any || self.any_hidden()
    }

    /// Whether any column needs decryption.
    pub fn any(&self) -> bool {
        self.any
    }

    /// Whether the rows need looking at (a column to decrypt, to check or to drop).
    pub fn inspect(&self) -> bool {
        self.any || self.any_guard || self.any_hidden()
    }

    /// The same plan for other formats.
    fn with(&self, upstream: Vec<i16>, formats: Vec<i16>) -> Self {
        Self {
            cols: self.cols.clone(),
            upstream,
            formats,
            any: self.any,
            guard: self.guard.clone(),
            any_guard: self.any_guard,
            hidden: self.hidden.clone(),
        }
    }

    /// The same columns under a Bind's result format codes, forwarded unchanged.
    pub fn with_result_formats(&self, result_formats: &[i16]) -> Self {
        let formats = per_column(result_formats, self.cols.len());
        self.with(formats.clone(), formats)
    }

    /// The same columns bound with the client's `result_formats`, but protected columns asked
    /// of the upstream in binary (no hex for PostgreSQL to encode and the proxy to decode):
    /// the plan and the per-column format codes for the upstream Bind. None when nothing
    /// would change, or when the client's codes are not ones PostgreSQL accepts for this
    /// many columns (the Bind is then forwarded as sent, for the upstream to judge).
    pub fn with_binary_upstream(&self, result_formats: &[i16]) -> Option<(Self, Vec<i16>)> {
        let n = self.cols.len();
        let valid_count = result_formats.len() <= 1 || result_formats.len() == n;
        if !self.any || !valid_count || result_formats.iter().any(|f| *f != 0 && *f != 1) {
            return None;
        }
        let formats = per_column(result_formats, n);
        let upstream: Vec<i16> = formats
            .iter()
            .zip(self.cols.iter())
            .map(|(f, c)| if c.is_some() { 1 } else { *f })
            .collect();
        if upstream == formats {
            return None;
        }
        Some((self.with(upstream.clone(), formats), upstream))
    }

    /// This plan (made from an upstream RowDescription) for a client that asked for
    /// `client` format codes (per column) where the proxy asked for binary protected
    /// columns. None when a column the proxy does not decrypt arrives in another format than
    /// the client's (the result's columns changed since the Bind): the result must not be
    /// handed over.
    pub fn for_client_formats(&self, client: &[i16]) -> Option<Self> {
        if client.len() != self.cols.len() {
            return None;
        }
        let consistent = self
            .cols
            .iter()
            .zip(self.upstream.iter().zip(client))
            .all(|(c, (u, f))| c.is_some() || u == f);
        consistent.then(|| self.with(self.upstream.clone(), client.to_vec()))
    }

    /// The client's format code of every column.
    pub fn client_formats(&self) -> &[i16] {
        &self.formats
    }
}

/// How the fields of a RowDescription map onto the catalog.
#[derive(Debug, Clone, Default)]
pub struct FieldMap {
    /// The protected column behind each field (bytea fields of protected tables and their
    /// descendants).
    pub cols: Vec<Option<ProtectedColumn>>,
    /// Per field without a protected column behind it (a function's result, an expression, a
    /// plain column): how its cells are checked for a protected column's values.
    pub guard: Vec<Guard>,
    /// Table OIDs of fields the snapshot does not know (a refresh may reveal a new partition or
    /// view).
    pub unknown: Vec<u32>,
    /// Why the result must not be handed over, when a field comes from a tainted relation (a
    /// view over a protected table).
    pub tainted: Option<String>,
    /// Per field: an online migration's own column (the shadow being filled, the old column
    /// after the cut-over), which no client sees.
    pub hidden: Vec<bool>,
}

/// The protected column behind each field, per `snapshot` (bytea fields of known tables only),
/// the OIDs of fields whose table the snapshot does not know, and whether a field comes from
/// a tainted relation.
pub fn map_fields(fields: &[Field], snapshot: &CatalogSnapshot) -> FieldMap {
    let mut unknown = Vec::new();
    let mut tainted = None;
    let cols: Vec<Option<ProtectedColumn>> = fields
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
            if f.type_oid != BYTEA_OID || snapshot.hidden_at(f.table_oid, f.attnum, &f.name) {
                return None;
            }
            snapshot.protected_at(f.table_oid, f.attnum).cloned()
        })
        .collect();
    let hidden: Vec<bool> = fields
        .iter()
        .map(|f| f.table_oid != 0 && snapshot.hidden_at(f.table_oid, f.attnum, &f.name))
        .collect();
    let guard = fields
        .iter()
        .zip(cols.iter())
        .zip(hidden.iter())
        .map(|((f, c), h)| match c {
            Some(_) => Guard::Off,
            // Dropped, never handed over: nothing to check.
            None if *h => Guard::Off,
            None => Guard::for_type(f.type_oid),
        })
        .collect();
    FieldMap {
        cols,
        guard,
        unknown,
        tainted,
        hidden,
    }
}

/// Appends the RowDescription the client sees: protected columns with their logical types,
/// hidden columns left out.
pub fn write_client_row_description(out: &mut BytesMut, fields: &[Field], plan: &RowPlan) {
    let fields: Vec<Field> = fields
        .iter()
        .zip(plan.cols.iter())
        .zip(plan.formats.iter())
        .enumerate()
        .filter(|(i, _)| !plan.is_hidden(*i))
        .map(|(_, ((f, c), format))| match c {
            Some(c) => Field {
                type_oid: c.ty.oid(),
                typlen: cells::typlen(c.ty),
                typmod: -1,
                format: *format,
                ..f.clone()
            },
            None => f.clone(),
        })
        .collect();
    wire::write_row_description(out, &fields);
}

/// Checks one cell of a guarded column (see [`super::leak_guard`]): an error when it holds a
/// value of a protected column, or may and the keys to tell are unavailable.
fn check_guarded(
    schema: &ProtectedSchema,
    keys: &dyn KeySource,
    plan: &RowPlan,
    i: usize,
    v: &[u8],
    raw: &mut Vec<u8>,
) -> Result<(), RowError> {
    let binary = plan.upstream.get(i).copied().unwrap_or(0) != 0;
    let embedded = match plan.guard.get(i) {
        Some(Guard::Embedded) => Some(leak_guard::embedded_column_of(schema, keys, v, binary)),
        // Text is the same bytes in both formats (jsonb's binary form adds a version byte).
        Some(Guard::Text) => Some(leak_guard::text_column_of(schema, keys, v)),
        _ => None,
    };
    if let Some(found) = embedded {
        return match found.map_err(CellError::Key)? {
            Some(col) => Err(RowError::Unmapped {
                position: i + 1,
                column: col.id.to_string(),
            }),
            None => Ok(()),
        };
    }
    let stored: &[u8] = if !binary {
        match leak_guard::may_be_stored_text(v, raw) {
            Some(true) => raw,
            // Not bytea text (the server would not send it) or not like a stored value.
            Some(false) | None => return Ok(()),
        }
    } else {
        v
    };
    match leak_guard::column_of(schema, keys, stored).map_err(CellError::Key)? {
        Some(col) => Err(RowError::Unmapped {
            position: i + 1,
            column: col.id.to_string(),
        }),
        None => Ok(()),
    }
}

/// Checks the guarded cells of a DataRow body whose plan decrypts nothing (the row is then
/// forwarded as it is).
pub fn check_data_row(
    schema: &ProtectedSchema,
    keys: &dyn KeySource,
    plan: &RowPlan,
    body: &[u8],
) -> Result<(), RowError> {
    let values = wire::parse_data_row(body).map_err(|_| RowError::Shape)?;
    if values.len() != plan.cols.len() {
        return Err(RowError::Shape);
    }
    let mut raw = Vec::new();
    for (i, (v, g)) in values.iter().zip(plan.guard.iter()).enumerate() {
        if let (Some(v), true) = (v, *g != Guard::Off) {
            check_guarded(schema, keys, plan, i, v, &mut raw)?;
        }
    }
    Ok(())
}

/// Decrypts one DataRow body into `out` as a complete DataRow message in the client's formats
/// (and checks its guarded cells).
pub fn decrypt_data_row(
    schema: &ProtectedSchema,
    keys: &dyn KeySource,
    cache: &mut KeyCache,
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
        if plan.is_hidden(i) {
            spans.push(None);
            continue;
        }
        let (Some(v), Some(col)) = (v, c) else {
            if let (Some(v), Some(Guard::Bytea | Guard::Embedded | Guard::Text)) =
                (v, plan.guard.get(i))
            {
                check_guarded(schema, keys, plan, i, v, &mut stored)?;
            }
            spans.push(None);
            continue;
        };
        let upstream = plan.upstream.get(i).copied().unwrap_or(0);
        let format = plan.formats.get(i).copied().unwrap_or(0);
        let raw: &[u8] = if upstream == 0 {
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
                let k = cache.column(keys, &col.id).map_err(CellError::Key)?;
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
    let shown = (0..values.len()).filter(|i| !plan.is_hidden(*i)).count();
    put_message(out, b'D', |b| {
        b.put_i16(i16::try_from(shown).unwrap_or(i16::MAX));
        for (i, (v, span)) in values.iter().zip(spans.iter()).enumerate() {
            if plan.is_hidden(i) {
                continue;
            }
            match span {
                Some((s, e)) => wire::put_value(b, scratch.get(*s..*e)),
                None => wire::put_value(b, *v),
            }
        }
    });
    zeroize::Zeroize::zeroize(&mut scratch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgseal_crypto::value::LogicalType;
    use pgseal_crypto::ColumnId;

    fn protected() -> Option<ProtectedColumn> {
        Some(ProtectedColumn {
            id: ColumnId::new("public", "t", "secret").unwrap(),
            ty: LogicalType::Text,
            keyring: "k".into(),
            index: None,
        })
    }

    fn described() -> RowPlan {
        RowPlan::new(vec![None, protected(), None], vec![0, 0, 0])
    }

    #[test]
    fn binary_upstream_only_for_protected_columns_and_valid_codes() {
        let (plan, upstream) = described().with_binary_upstream(&[]).unwrap();
        assert_eq!(upstream, vec![0, 1, 0]);
        assert_eq!(plan.client_formats(), &[0, 0, 0]);
        let (plan, upstream) = described().with_binary_upstream(&[1, 0, 1]).unwrap();
        assert_eq!(upstream, vec![1, 1, 1]);
        assert_eq!(plan.client_formats(), &[1, 0, 1]);
        // Nothing to change: the client already asks for binary there.
        assert!(described().with_binary_upstream(&[1]).is_none());
        assert!(described().with_binary_upstream(&[0, 1, 0]).is_none());
        // Codes PostgreSQL rejects are forwarded for it to reject.
        assert!(described().with_binary_upstream(&[0, 1]).is_none());
        assert!(described().with_binary_upstream(&[2]).is_none());
        assert!(described().with_binary_upstream(&[0, 0, -1]).is_none());
        // No protected column.
        let plain = RowPlan::new(vec![None, None], vec![0, 0]);
        assert!(plain.with_binary_upstream(&[]).is_none());
    }

    #[test]
    fn client_formats_apply_only_where_the_upstream_agrees_on_plain_columns() {
        // As the upstream describes the portal bound with [0, 1, 0].
        let from_upstream = RowPlan::new(vec![None, protected(), None], vec![0, 1, 0]);
        let plan = from_upstream.for_client_formats(&[0, 0, 0]).unwrap();
        assert_eq!(plan.client_formats(), &[0, 0, 0]);
        assert_eq!(plan.upstream, vec![0, 1, 0]);
        // A plain column in another format than the client asked for: the columns changed.
        assert!(from_upstream.for_client_formats(&[1, 0, 0]).is_none());
        assert!(from_upstream.for_client_formats(&[0, 0]).is_none());
        // The protected column moved: column 1 is now plain but arrives in binary.
        let moved = RowPlan::new(vec![protected(), None, None], vec![0, 1, 0]);
        assert!(moved.for_client_formats(&[0, 0, 0]).is_none());
    }

    #[test]
    fn hidden_columns_are_dropped_from_the_description_and_every_row() {
        use crate::keys::StaticKeys;
        use std::collections::HashMap;
        let field = |name: &str, attnum: i16| Field {
            name: name.into(),
            table_oid: 100,
            attnum,
            type_oid: 25,
            typlen: -1,
            typmod: -1,
            format: 0,
        };
        let fields = vec![
            field("id", 1),
            field("pgseal_shadow_2", 5),
            field("email", 2),
        ];
        let plan = RowPlan::new(vec![None, None, None], vec![0, 0, 0])
            .with_hidden(vec![false, true, false]);
        assert!(plan.rewrites() && plan.inspect() && !plan.any());
        let mut desc = BytesMut::new();
        write_client_row_description(&mut desc, &fields, &plan);
        let shown = wire::parse_row_description(desc.get(5..).unwrap()).unwrap();
        let names: Vec<&str> = shown.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["id", "email"]);
        // A DataRow of three values becomes one of two.
        let mut body = BytesMut::new();
        body.put_i16(3);
        for v in [Some(&b"7"[..]), Some(&b"\\x0102"[..]), None] {
            wire::put_value(&mut body, v);
        }
        let schema = ProtectedSchema::new();
        let keys = StaticKeys::new(&schema, &HashMap::new()).unwrap();
        let mut out = BytesMut::new();
        decrypt_data_row(
            &schema,
            &keys,
            &mut KeyCache::default(),
            &plan,
            &body,
            &mut out,
            &pgseal_crypto::value::datetime::Utc,
        )
        .unwrap();
        let values = wire::parse_data_row(out.get(5..).unwrap()).unwrap();
        assert_eq!(values, vec![Some(&b"7"[..]), None]);
        // Without hidden columns nothing changes.
        assert!(!RowPlan::new(vec![None], vec![0])
            .with_hidden(vec![false])
            .rewrites());
    }
}
