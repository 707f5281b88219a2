//! The state of online column migrations, kept upstream in `pgseal.migrations` (one row per
//! column; names, a direction, a phase and a row count, never a value), and the names every
//! migration gives its objects. Written by `pgseal-proxy migrate`, read by every proxy's
//! catalog thread (`catalog::migrations`), which decides from it how a migrating column is
//! served.
//!
//! The phases, in order (docs/migration.md): `preparing` (the row names the shadow column; the
//! DDL may be partly done) → `backfill` (shadow column, change trigger, constraint and indexes
//! in place) → `verified` → `cutting` (proxies refuse statements on the table while the names
//! are swapped) → `cutover` (the shadow holds the column's name; the old column is still
//! there, renamed) → `done` (the old column is dropped).

use std::fmt;
use std::time::Duration;

use crate::rewrite::schema::quote_ident;
use crate::upstream::simple_query::{quote_literal, Rows, SimpleClient};
use crate::upstream::UpstreamError;

/// The schema of pgseal's own upstream objects.
pub const SCHEMA: &str = "pgseal";
/// The state table's name (in [`SCHEMA`]).
pub const TABLE: &str = "migrations";

/// How long a proxy's catalog snapshot may be used while a migration is configured: after
/// that, statements on the migrating tables wait for a fresh load or are refused.
pub const SNAPSHOT_TTL: Duration = Duration::from_millis(1500);
/// How often a proxy reloads its catalog while a migration is configured.
pub const REFRESH_DURING_MIGRATION: Duration = Duration::from_millis(400);
/// How long `migrate` waits after announcing a phase that changes how proxies serve a table
/// (`preparing`, `cutting`) before acting on it: longer than [`SNAPSHOT_TTL`], so every
/// proxy still serving has loaded the announcement.
pub const ANNOUNCE_WAIT: Duration = Duration::from_millis(2500);

/// Which way a column goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Plaintext upstream → pgseal cells.
    Encrypt,
    /// pgseal cells → plaintext upstream (the way back).
    Decrypt,
}

impl Direction {
    /// `encrypt` or `decrypt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "encrypt" => Some(Self::Encrypt),
            "decrypt" => Some(Self::Decrypt),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a column's migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The row exists and names the shadow column; the DDL may be partly done.
    Preparing,
    /// Shadow column, trigger, constraint and indexes exist; rows are being filled.
    Backfill,
    /// Every row verified.
    Verified,
    /// Proxies refuse statements on the table; the names are about to be swapped.
    Cutting,
    /// The names are swapped; the old column still exists under [`Names::old`].
    Cutover,
    /// The old column is dropped.
    Done,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 6] = [
        Self::Preparing,
        Self::Backfill,
        Self::Verified,
        Self::Cutting,
        Self::Cutover,
        Self::Done,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preparing => "preparing",
            Self::Backfill => "backfill",
            Self::Verified => "verified",
            Self::Cutting => "cutting",
            Self::Cutover => "cutover",
            Self::Done => "done",
        }
    }

    /// Parses [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether the column's name already holds the new form.
    pub fn swapped(self) -> bool {
        matches!(self, Self::Cutover | Self::Done)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The names of one migration's upstream objects, from the column's attnum when the migration
/// was prepared (short, so that they never exceed PostgreSQL's 63 bytes, and unique per table)
/// and the table's OID (index and function names are unique per schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The column being filled (it takes the column's name at the cut-over).
    pub shadow: String,
    /// The name the original column gets at the cut-over.
    pub old: String,
    /// The change trigger (clears the shadow cell when the source value changes).
    pub trigger: String,
    /// The trigger's function (in [`SCHEMA`]).
    pub function: String,
    /// The constraint on the shadow column (the stored-cell check when encrypting, the
    /// not-a-cell guard when decrypting).
    pub check: String,
    /// The shadow column's blind-index (encrypt) or plain (decrypt) index.
    pub index: String,
}

impl Names {
    /// The names for the column at `attnum` of the table with `table_oid`.
    pub fn new(table_oid: u32, attnum: i16) -> Self {
        Self {
            shadow: format!("pgseal_shadow_{attnum}"),
            old: format!("pgseal_old_{attnum}"),
            trigger: format!("pgseal_migrate_{attnum}"),
            function: format!("migrate_{table_oid}_{attnum}"),
            check: format!("pgseal_shadow_check_{attnum}"),
            index: format!("pgseal_shadow_ix_{table_oid}_{attnum}"),
        }
    }

    /// The names of a stored row (its shadow name holds the attnum).
    pub fn of_row(table_oid: u32, shadow: &str) -> Option<Self> {
        let attnum: i16 = shadow.strip_prefix("pgseal_shadow_")?.parse().ok()?;
        Some(Self::new(table_oid, attnum))
    }
}

/// One row of the state table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRow {
    /// Schema, table and column (the configured names).
    pub schema: String,
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
    /// Which way.
    pub direction: Direction,
    /// Where it stands.
    pub phase: Phase,
    /// The shadow column's name.
    pub shadow: String,
    /// The old column's name after the cut-over.
    pub old: String,
    /// Rows filled so far (progress only).
    pub rows_done: i64,
}

/// The qualified, quoted state table.
pub fn table_sql() -> String {
    format!("{}.{}", quote_ident(SCHEMA), quote_ident(TABLE))
}

/// Creates the schema and the state table when missing.
pub fn create_sql() -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {table} ( \
           schema_name text NOT NULL, table_name text NOT NULL, column_name text NOT NULL, \
           direction text NOT NULL CHECK (direction IN ('encrypt', 'decrypt')), \
           phase text NOT NULL CHECK (phase IN ('preparing', 'backfill', 'verified', 'cutting', 'cutover', 'done')), \
           shadow_name text NOT NULL, old_name text NOT NULL, \
           rows_done bigint NOT NULL DEFAULT 0, \
           started_at timestamptz NOT NULL DEFAULT now(), \
           updated_at timestamptz NOT NULL DEFAULT now(), \
           PRIMARY KEY (schema_name, table_name, column_name))",
        schema = quote_ident(SCHEMA),
        table = table_sql()
    )
}

/// The columns [`rows_from`] reads, in order.
pub const SELECT_COLUMNS: &str =
    "m.schema_name, m.table_name, m.column_name, m.direction, m.phase, m.shadow_name, m.old_name, m.rows_done";

/// Parses rows selected with [`SELECT_COLUMNS`] first; `None` for a row that is not one of
/// ours (an unknown direction or phase: the table was written by something else).
pub fn row_from(r: &[Option<String>]) -> Option<MigrationRow> {
    let f = |i: usize| r.get(i).and_then(|v| v.as_deref());
    Some(MigrationRow {
        schema: f(0)?.to_owned(),
        table: f(1)?.to_owned(),
        column: f(2)?.to_owned(),
        direction: Direction::parse(f(3)?)?,
        phase: Phase::parse(f(4)?)?,
        shadow: f(5)?.to_owned(),
        old: f(6)?.to_owned(),
        rows_done: f(7)?.parse().ok()?,
    })
}

/// The stored row of one column, if any.
pub async fn read(
    client: &mut SimpleClient,
    schema: &str,
    table: &str,
    column: &str,
) -> Result<Option<MigrationRow>, UpstreamError> {
    let rows: Rows = client
        .query(&format!(
            "SELECT {SELECT_COLUMNS} FROM {t} m WHERE m.schema_name = {s} AND m.table_name = {tb} AND m.column_name = {c}",
            t = table_sql(),
            s = quote_literal(schema),
            tb = quote_literal(table),
            c = quote_literal(column)
        ))
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    Ok(rows.first().and_then(|r| row_from(r)))
}

/// `INSERT … ON CONFLICT DO UPDATE` of a row in phase `preparing` (a new migration of the
/// column replaces a finished one).
pub fn start_sql(row: &MigrationRow) -> String {
    format!(
        "INSERT INTO {t} (schema_name, table_name, column_name, direction, phase, shadow_name, old_name) \
         VALUES ({s}, {tb}, {c}, {d}, 'preparing', {sh}, {o}) \
         ON CONFLICT (schema_name, table_name, column_name) DO UPDATE SET \
           direction = EXCLUDED.direction, phase = 'preparing', shadow_name = EXCLUDED.shadow_name, \
           old_name = EXCLUDED.old_name, rows_done = 0, started_at = now(), updated_at = now()",
        t = table_sql(),
        s = quote_literal(&row.schema),
        tb = quote_literal(&row.table),
        c = quote_literal(&row.column),
        d = quote_literal(row.direction.as_str()),
        sh = quote_literal(&row.shadow),
        o = quote_literal(&row.old),
    )
}

/// Moves a column's row to `phase` (and sets its row count when given).
pub fn set_phase_sql(row: &MigrationRow, phase: Phase, rows_done: Option<i64>) -> String {
    let rows = rows_done
        .map(|n| format!(", rows_done = {n}"))
        .unwrap_or_default();
    format!(
        "UPDATE {t} SET phase = {p}{rows}, updated_at = now() \
         WHERE schema_name = {s} AND table_name = {tb} AND column_name = {c}",
        t = table_sql(),
        p = quote_literal(phase.as_str()),
        s = quote_literal(&row.schema),
        tb = quote_literal(&row.table),
        c = quote_literal(&row.column),
    )
}

/// Deletes a column's row (an aborted migration).
pub fn delete_sql(row: &MigrationRow) -> String {
    format!(
        "DELETE FROM {t} WHERE schema_name = {s} AND table_name = {tb} AND column_name = {c}",
        t = table_sql(),
        s = quote_literal(&row.schema),
        tb = quote_literal(&row.table),
        c = quote_literal(&row.column),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_directions_round_trip_in_order() {
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(Phase::parse(p.as_str()), Some(*p));
            if let Some(next) = Phase::ALL.get(i + 1) {
                assert!(p < next);
            }
        }
        assert!(Phase::Cutover.swapped() && Phase::Done.swapped());
        assert!(!Phase::Cutting.swapped());
        assert_eq!(Phase::parse("other"), None);
        for d in [Direction::Encrypt, Direction::Decrypt] {
            assert_eq!(Direction::parse(d.as_str()), Some(d));
        }
        // The table's CHECK names exactly these phases.
        let create = create_sql();
        for p in Phase::ALL {
            assert!(create.contains(&format!("'{}'", p.as_str())), "{p}");
        }
    }

    #[test]
    fn names_are_short_and_found_again_from_the_shadow() {
        let n = Names::new(4_294_967_295, 1600);
        for name in [
            &n.shadow,
            &n.old,
            &n.trigger,
            &n.function,
            &n.check,
            &n.index,
        ] {
            assert!(name.len() <= 63, "{name}");
        }
        assert_eq!(Names::of_row(4_294_967_295, &n.shadow), Some(n));
        assert_eq!(Names::of_row(1, "email"), None);
        // Not a stored-cell constraint name (catalog drift looks for pgseal_cell_*).
        assert!(!Names::new(1, 2).check.starts_with("pgseal_cell_"));
    }

    #[test]
    fn rows_parse_and_reject_what_is_not_ours() {
        let s = |v: &str| Some(v.to_owned());
        let good = vec![
            s("public"),
            s("patients"),
            s("email"),
            s("encrypt"),
            s("backfill"),
            s("pgseal_shadow_3"),
            s("pgseal_old_3"),
            s("42"),
        ];
        let row = row_from(&good).unwrap();
        assert_eq!(row.phase, Phase::Backfill);
        assert_eq!(row.direction, Direction::Encrypt);
        assert_eq!(row.rows_done, 42);
        let mut bad = good.clone();
        bad[4] = s("sideways");
        assert_eq!(row_from(&bad), None);
        let mut null = good;
        null[5] = None;
        assert_eq!(row_from(&null), None);
        // Literals are quoted.
        let mut odd = row;
        odd.table = "pat'ients".into();
        assert!(start_sql(&odd).contains("'pat''ients'"));
        assert!(set_phase_sql(&odd, Phase::Done, Some(7)).contains("rows_done = 7"));
        assert!(delete_sql(&odd).contains("'pat''ients'"));
    }
}
