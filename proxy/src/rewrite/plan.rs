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
    /// (17 bytea, 1001 bytea[], 0 = as the client declared / let the server infer), for the
    /// rendering with lookup widths `widths` (see [`RewritePlan::render`]): the plan's own
    /// parameters, then the extra tag parameters (bytea).
    pub fn upstream_param_oids(&self, widths: &LookupWidths) -> Vec<u32> {
        let mut oids: Vec<u32> = self
            .upstream_params
            .iter()
            .map(UpstreamParam::type_oid)
            .collect();
        oids.extend(std::iter::repeat_n(
            BYTEA_OID,
            self.extra_param_count(widths),
        ));
        oids
    }

    /// Whether the plan has scalar lookup parameters ([`UpstreamParam::Lookup`]), whose
    /// rendering depends on the number of live blind-index key versions.
    pub fn has_scalar_lookups(&self) -> bool {
        self.upstream_params
            .iter()
            .any(|u| matches!(u, UpstreamParam::Lookup { .. }))
    }

    /// How many upstream parameters the rendering with `widths` has beyond
    /// [`RewritePlan::upstream_params`] (the second and later tags of each scalar lookup).
    pub fn extra_param_count(&self, widths: &LookupWidths) -> usize {
        (0..self.upstream_params.len())
            .map(|i| self.width(i, widths).saturating_sub(1))
            .sum()
    }

    /// The number of tags upstream parameter `i` carries: its width if it is a scalar lookup,
    /// else 1.
    fn width(&self, i: usize, widths: &LookupWidths) -> usize {
        match self.upstream_params.get(i) {
            Some(UpstreamParam::Lookup { .. }) => widths.of(i),
            _ => 1,
        }
    }

    /// The upstream parameter numbers (1-based) carrying the tags of upstream parameter `i`
    /// (0-based) in the rendering with `widths`: `i + 1` first, then its extra parameters, which
    /// follow the plan's own parameters in order of `i`.
    pub fn lookup_numbers(&self, i: usize, widths: &LookupWidths) -> Vec<usize> {
        let base = self.upstream_params.len();
        let before: usize = (0..i)
            .map(|j| self.width(j, widths).saturating_sub(1))
            .sum();
        let w = self.width(i, widths);
        let mut v = Vec::with_capacity(w);
        v.push(i + 1);
        v.extend((1..w).map(|j| base + before + j));
        v
    }

    /// Renders the SQL to send: `render_slot` produces the SQL text of each slot (for a
    /// [`Slot::Value`] an encrypted `'\\x…'::bytea` literal, for a [`Slot::Lookup`] a `bytea[]`
    /// expression); each [`Piece::Lookup`] becomes `<prefix> = $k::bytea` when its parameter's
    /// width is 1, else `<prefix> IN ($k::bytea, $e1::bytea, …)` (`<>` / `NOT IN` when negated),
    /// numbered by [`RewritePlan::lookup_numbers`]. A slot index outside `slots` is reported as
    /// `Err(None)`.
    pub fn render<E>(
        &self,
        widths: &LookupWidths,
        forms: &IndexForms,
        mut render_slot: impl FnMut(&Slot) -> Result<String, E>,
    ) -> Result<String, Option<E>> {
        let mut index_pieces = 0usize;
        let mut out = String::with_capacity(self.rendered_len_hint());
        for p in &self.template {
            match p {
                Piece::Sql(t) => out.push_str(t),
                Piece::Slot(i) => {
                    let slot = self.slots.get(*i).ok_or(None)?;
                    out.push_str(&render_slot(slot).map_err(Some)?);
                }
                Piece::Lookup {
                    prefix,
                    param,
                    negated,
                } => {
                    if *param >= self.upstream_params.len() {
                        return Err(None);
                    }
                    self.render_lookup(&mut out, prefix, *param, *negated, widths);
                }
                Piece::Index(ix) => {
                    ix.render(forms.of(index_pieces), &mut out);
                    index_pieces += 1;
                }
            }
        }
        Ok(out)
    }

    /// The columns of the plan's [`Piece::Index`] pieces, in order: [`IndexForms`] gives their
    /// forms in the same order.
    pub fn index_piece_columns(&self) -> impl Iterator<Item = &ColumnId> {
        self.template.iter().filter_map(|p| match p {
            Piece::Index(ix) => Some(ix.column()),
            _ => None,
        })
    }

    /// A capacity for [`RewritePlan::render`]'s output: the template's text plus room for
    /// lookups and small slots (slots of large literals make the string grow once more).
    fn rendered_len_hint(&self) -> usize {
        self.template
            .iter()
            .map(|p| match p {
                Piece::Sql(t) => t.len(),
                Piece::Slot(_) => 96,
                Piece::Lookup { prefix, .. } => prefix.len() + 48,
                Piece::Index(_) => 160,
            })
            .sum()
    }

    fn render_lookup(
        &self,
        out: &mut String,
        prefix: &str,
        param: usize,
        negated: bool,
        widths: &LookupWidths,
    ) {
        let numbers = self.lookup_numbers(param, widths);
        out.push_str(prefix);
        if let [k] = numbers.as_slice() {
            out.push_str(if negated { " <> " } else { " = " });
            push_bytea_param(out, *k);
            return;
        }
        out.push_str(if negated { " NOT IN (" } else { " IN (" });
        for (j, k) in numbers.iter().enumerate() {
            if j > 0 {
                out.push_str(", ");
            }
            push_bytea_param(out, *k);
        }
        out.push(')');
    }

    /// The template with slots shown as `{slot N}` (tests, logs: it contains no literal) and
    /// lookups rendered for one key version.
    pub fn debug_sql(&self) -> String {
        let mut s = String::new();
        for p in &self.template {
            match p {
                Piece::Sql(t) => s.push_str(t),
                Piece::Slot(i) => s.push_str(&format!("{{slot {i}}}")),
                Piece::Lookup {
                    prefix,
                    param,
                    negated,
                } => self.render_lookup(&mut s, prefix, *param, *negated, &LookupWidths::ONE),
                Piece::Index(ix) => ix.render(IndexForm::Single, &mut s),
            }
        }
        s
    }
}

/// Appends `$k::bytea` (without the formatting machinery: this runs for every rendering of a
/// lookup, i.e. on every Parse in extended mode).
fn push_bytea_param(out: &mut String, k: usize) {
    out.push('$');
    let mut digits = [0u8; 20];
    let mut n = k;
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(d) = digits.get_mut(start) {
            *d = b'0' + u8::try_from(n % 10).unwrap_or(0);
        }
        n /= 10;
        if n == 0 || start == 0 {
            break;
        }
    }
    for d in digits.get(start..).unwrap_or_default() {
        out.push(char::from(*d));
    }
    out.push_str("::bytea");
}

/// The number of blind-index tags each scalar lookup parameter carries in one rendering of a
/// plan: one per blind-index key of the column whose tags may be stored (the lineage's
/// generation, plus legacy keys, docs/format.md §2.4), fixed when the statement is
/// prepared upstream. Indexed like [`RewritePlan::upstream_params`]; a missing entry, a
/// parameter that is not a scalar lookup, and 0 all count as 1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupWidths(pub Vec<usize>);

impl LookupWidths {
    /// Every lookup with one tag.
    pub const ONE: LookupWidths = LookupWidths(Vec::new());

    /// The width of upstream parameter `i` (at least 1).
    pub fn of(&self, i: usize) -> usize {
        self.0.get(i).copied().unwrap_or(1).max(1)
    }
}

/// The form of an indexed column's stored cells (docs/format.md §2.5): whether a blind-index key
/// rotation is in progress for its keyring, and in which phase. Joins and `ON CONFLICT` targets
/// are rendered for it ([`Piece::Index`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IndexForm {
    /// No rotation: single cells; the prefix is every cell's tag.
    #[default]
    Single,
    /// Rotation before the cut-over: new cells are dual (`tag_from ‖ 0x02 ‖ tag_to ‖ envelope`);
    /// every cell's prefix is a `from` tag (proxies one phase ahead excepted).
    Dual,
    /// Rotation after the cut-over: new cells are single under `to`; every cell's second-tag
    /// expression ([`next_tag_sql`]) is a `to` tag, prefixes are of either generation.
    Cutover,
}

impl IndexForm {
    /// A number for the key-version lists that decide when a prepared statement is re-prepared.
    pub fn code(self) -> u32 {
        match self {
            Self::Single => 0,
            Self::Dual => 1,
            Self::Cutover => 2,
        }
    }
}

/// The forms of a plan's [`Piece::Index`] pieces, in template order (missing: single).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexForms(pub Vec<IndexForm>);

impl IndexForms {
    /// Every index piece in the single form.
    pub const SINGLE: IndexForms = IndexForms(Vec::new());

    fn of(&self, i: usize) -> IndexForm {
        self.0.get(i).copied().unwrap_or_default()
    }
}

/// `substring(<col> from 1 for 16)`: the prefix tag.
pub fn prefix_tag_sql(col: &str) -> String {
    format!("SUBSTRING({col} FROM 1 FOR 16)")
}

/// The tag of generation `to` during a blind-index rotation: a dual cell's second tag, else the
/// prefix. The `pgseal_next_*` UNIQUE indexes are over exactly this expression.
pub fn next_tag_sql(col: &str) -> String {
    format!(
        "CASE WHEN get_byte({col}, 16) = 2 THEN substring({col} from 18 for 16) \
         ELSE substring({col} from 1 for 16) END"
    )
}

/// A piece of SQL over an indexed column's tags whose text depends on the column's
/// [`IndexForm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexPiece {
    /// `a = b` (`<>` when negated) between two protected columns of one index group.
    Join {
        /// SQL of the left column reference.
        left: String,
        /// SQL of the right column reference.
        right: String,
        /// `<>` instead of `=`.
        negated: bool,
        /// The left column (its keyring's form decides).
        column: ColumnId,
    },
    /// An `ON CONFLICT` inference element for a unique indexed column.
    Conflict {
        /// SQL of the column reference.
        col: String,
        /// The column.
        column: ColumnId,
    },
}

impl IndexPiece {
    /// The column whose form decides the rendering.
    pub fn column(&self) -> &ColumnId {
        match self {
            Self::Join { column, .. } | Self::Conflict { column, .. } => column,
        }
    }

    /// Appends the SQL for `form`. A join compares prefixes outside a rotation; during one it
    /// also compares the second-tag expressions, so that it is exact whichever phase the cells
    /// were written in (before the cut-over every prefix is a `from` tag, after it every
    /// second-tag expression is a `to` tag; tags of two generations collide with probability
    /// 2^-128). An `ON CONFLICT` target names the UNIQUE index that compares every cell: the
    /// prefix index, or after the cut-over the `pgseal_next_*` index.
    pub fn render(&self, form: IndexForm, out: &mut String) {
        match self {
            Self::Join {
                left,
                right,
                negated,
                ..
            } => {
                let eq = format!("{} = {}", prefix_tag_sql(left), prefix_tag_sql(right));
                match (form, negated) {
                    (IndexForm::Single, false) => out.push_str(&eq),
                    (IndexForm::Single, true) => out.push_str(&format!(
                        "{} <> {}",
                        prefix_tag_sql(left),
                        prefix_tag_sql(right)
                    )),
                    (IndexForm::Dual | IndexForm::Cutover, negated) => {
                        let both =
                            format!("({eq} OR {} = {})", next_tag_sql(left), next_tag_sql(right));
                        if *negated {
                            out.push_str(&format!("(NOT {both})"));
                        } else {
                            out.push_str(&both);
                        }
                    }
                }
            }
            Self::Conflict { col, .. } => match form {
                IndexForm::Single | IndexForm::Dual => {
                    out.push_str(&format!("({})", prefix_tag_sql(col)));
                }
                IndexForm::Cutover => out.push_str(&format!("({})", next_tag_sql(col))),
            },
        }
    }
}

/// A part of the rewritten SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// SQL over an indexed column's tags, rendered for the live form of its cells.
    Index(IndexPiece),
    /// Literal SQL text.
    Sql(String),
    /// The rendering of `slots[i]`.
    Slot(usize),
    /// A blind-index comparison with a scalar lookup parameter (client `col = $n`, `col <> $n`,
    /// `col [NOT] IN (…, $n, …)`), rendered for the number of live key versions: see
    /// [`RewritePlan::render`].
    Lookup {
        /// The compared expression, `SUBSTRING(col FROM 1 FOR 16)`.
        prefix: String,
        /// The upstream parameter (0-based index into [`RewritePlan::upstream_params`]), an
        /// [`UpstreamParam::Lookup`].
        param: usize,
        /// `<>` / `NOT IN` instead of `=` / `IN`.
        negated: bool,
    },
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
    /// Blind-index tags of every literal under every blind-index key that may be stored: render as
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
    /// Client parameter `$n`, compared with `column`: its tag under each live key version
    /// (newest first), one `bytea` parameter per version (see [`Piece::Lookup`]; the first tag is
    /// this parameter, the others are extra parameters after the plan's own).
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

    /// The type OID to declare upstream: 17 (bytea), 1001 (bytea[]) or 0 (unchanged). For a
    /// scalar lookup, every extra tag parameter is bytea too.
    pub fn type_oid(&self) -> u32 {
        match self {
            Self::Plain(_) => 0,
            Self::Value { .. } | Self::Lookup { .. } => BYTEA_OID,
            Self::LookupArray { .. } => BYTEA_ARRAY_OID,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_params_render_like_format() {
        for k in [0, 1, 9, 10, 11, 99, 100, 65_535, 1_000_000, usize::MAX] {
            let mut s = String::from("x");
            push_bytea_param(&mut s, k);
            assert_eq!(s, format!("x${k}::bytea"));
        }
    }
}
