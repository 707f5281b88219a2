//! The rewrite plan: what the integration sends upstream instead of the client's SQL.
//!
//! A plan holds no key material and no literal ciphertext, so it can be cached by SQL text and
//! reused for every execution: the crypto happens when the template is rendered (slots) and when
//! parameters are bound (upstream parameters).

use pgseal_crypto::value::LogicalType;
use pgseal_crypto::ColumnId;

/// bytea's type OID.
pub const BYTEA_OID: u32 = 17;
/// bytea[]'s type OID.
pub const BYTEA_ARRAY_OID: u32 = 1001;

/// The outcome of analysing a SQL string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Forward the original text unchanged (nothing to encrypt, rewrite or refuse).
    /// Result columns of protected tables are still decrypted through RowDescription.
    PassThrough,
    /// Send the rendered template instead.
    Rewrite(RewritePlan),
}

/// What a rewritten SQL string contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// Queries and data modification (slots and parameters may be present).
    Dml,
    /// Only DDL (protected column types become bytea, indexes the blind-index expression).
    Ddl,
}

/// A rewritten statement (or several, for a simple-protocol multi-statement string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewritePlan {
    /// DDL or DML.
    pub kind: PlanKind,
    /// The SQL to send, with holes for the slots.
    pub template: Vec<Piece>,
    /// The slots referenced by [`Piece::Slot`] (by index).
    pub slots: Vec<Slot>,
    /// The highest `$n` the client's SQL references.
    pub client_param_count: usize,
    /// For each client parameter (`$1` at index 0): the logical type the client should see in
    /// ParameterDescription when every use of it is protected (and all uses agree), else None
    /// (report what the upstream reports).
    pub client_param_types: Vec<Option<LogicalType>>,
    /// The upstream parameters (`$1` at index 0) of the rewritten SQL, and where each comes from.
    pub upstream_params: Vec<UpstreamParam>,
}

impl RewritePlan {
    /// The type OID to declare in the upstream Parse for each upstream parameter
    /// (17 bytea, 1001 bytea[], 0 = as the client declared / let the server infer).
    pub fn upstream_param_oids(&self) -> Vec<u32> {
        self.upstream_params
            .iter()
            .map(UpstreamParam::type_oid)
            .collect()
    }

    /// Renders the SQL to send: `render_slot` produces the SQL text of each slot (for a
    /// [`Slot::Value`] an encrypted `'\\x…'::bytea` literal, for a [`Slot::Lookup`] a `bytea[]`
    /// expression). A slot index outside `slots` is reported as `Err(None)`.
    pub fn render<E>(
        &self,
        mut render_slot: impl FnMut(&Slot) -> Result<String, E>,
    ) -> Result<String, Option<E>> {
        let mut out = String::new();
        for p in &self.template {
            match p {
                Piece::Sql(t) => out.push_str(t),
                Piece::Slot(i) => {
                    let slot = self.slots.get(*i).ok_or(None)?;
                    out.push_str(&render_slot(slot).map_err(Some)?);
                }
            }
        }
        Ok(out)
    }

    /// The template with slots shown as `{slot N}` (tests, logs: it contains no literal).
    pub fn debug_sql(&self) -> String {
        let mut s = String::new();
        for p in &self.template {
            match p {
                Piece::Sql(t) => s.push_str(t),
                Piece::Slot(i) => s.push_str(&format!("{{slot {i}}}")),
            }
        }
        s
    }
}

/// A part of the rewritten SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal SQL text.
    Sql(String),
    /// The rendering of `slots[i]`.
    Slot(usize),
}

/// A literal of the client's SQL that must be replaced by crypto output at execution time.
/// `literal_text` is the literal's text value (unquoted, unescaped), to be parsed with the column's
/// logical type (PostgreSQL text input format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Encrypt the literal for storage: render as `'\x<blind index?><envelope>'::bytea`.
    Value {
        /// The target column.
        column: ColumnId,
        /// The literal's text.
        literal_text: String,
    },
    /// Blind-index tags of every literal under every key version that may be stored: render as
    /// an array expression, e.g. `'{"\\x…","\\x…"}'::bytea[]` (used as `= ANY(…)` or
    /// `<> ALL(…)`; the operator is already in the template).
    Lookup {
        /// The compared column (its index group and normalisation give the key and input).
        column: ColumnId,
        /// The literals' texts (one for `=`, several for `IN (…)`).
        literal_texts: Vec<String>,
        /// True for `<>` / `NOT IN` (informational: the template already says `<> ALL`).
        negated: bool,
    },
}

/// Where an upstream parameter's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamParam {
    /// Client parameter `$n`, forwarded unchanged (format and declared type as the client sent).
    Plain(usize),
    /// Client parameter `$n`, a value stored into `column`: encrypt, send as bytea.
    Value {
        /// Client parameter number (1-based).
        param: usize,
        /// The target column.
        column: ColumnId,
    },
    /// Client parameter `$n`, compared with `column`: its tags under all key versions, `bytea[]`.
    Lookup {
        /// Client parameter number (1-based).
        param: usize,
        /// The compared column.
        column: ColumnId,
    },
    /// Client parameter `$n` is an array (`col = ANY($n)`): tags of every element under every key
    /// version, `bytea[]`. A NULL element matches nothing and can be dropped.
    LookupArray {
        /// Client parameter number (1-based).
        param: usize,
        /// The compared column.
        column: ColumnId,
    },
}

impl UpstreamParam {
    /// The client parameter number (1-based) this upstream parameter is computed from.
    pub fn client_param(&self) -> usize {
        match self {
            Self::Plain(n) => *n,
            Self::Value { param, .. }
            | Self::Lookup { param, .. }
            | Self::LookupArray { param, .. } => *param,
        }
    }

    /// The protected column involved, if any.
    pub fn column(&self) -> Option<&ColumnId> {
        match self {
            Self::Plain(_) => None,
            Self::Value { column, .. }
            | Self::Lookup { column, .. }
            | Self::LookupArray { column, .. } => Some(column),
        }
    }

    /// The type OID to declare upstream: 17 (bytea), 1001 (bytea[]) or 0 (unchanged).
    pub fn type_oid(&self) -> u32 {
        match self {
            Self::Plain(_) => 0,
            Self::Value { .. } => BYTEA_OID,
            Self::Lookup { .. } | Self::LookupArray { .. } => BYTEA_ARRAY_OID,
        }
    }
}
