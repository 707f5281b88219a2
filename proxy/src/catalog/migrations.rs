//! How a proxy serves columns that `pgseal-proxy migrate` is taking to pgseal cells (or back),
//! from the migration's state upstream (`pgseal.migrations`, see `migrate::state`).
//!
//! Trust: the upstream is not trusted with plaintext, so its state table alone never makes the
//! proxy send a protected column's plaintext upstream. A column is served as plaintext only
//! when its `[[columns]]` entry says `migration = "encrypt"` (the operator's decision: its
//! values are plaintext upstream until the cut-over anyway) or `migration = "decrypt"` after
//! the cut-over (the operator's decision to take it back). Once this process has served a
//! column encrypted under `migration = "encrypt"`, a state that says otherwise taints its table
//! (statements refused) instead of turning it back into plaintext.
//!
//! | `[[columns]]` | state row | served as |
//! |---|---|---|
//! | `encrypt` | none, `preparing` … `verified` | plaintext; the shadow column hidden |
//! | `encrypt` | `cutover`, `done` | encrypted; the old column hidden |
//! | `decrypt` | none, `preparing` … `verified` (or an `encrypt` row that is `done`) | encrypted; the shadow column hidden |
//! | `decrypt` | `cutover`, `done` | plaintext; the old column hidden |
//! | either | `cutting` | table refused (the names are being swapped) |
//! | none | `encrypt` `done` | encrypted |
//! | none | anything else | table refused (a migration the configuration does not know) |
//!
//! While any column is configured with `migration`, the catalog is reloaded every
//! [`REFRESH_DURING_MIGRATION`](crate::migrate::state::REFRESH_DURING_MIGRATION) and a
//! snapshot older than [`SNAPSHOT_TTL`](crate::migrate::state::SNAPSHOT_TTL) is not used for
//! the migrating tables (a degraded copy refuses them): `migrate` waits longer than that after
//! announcing `cutting` before it swaps the names, so no proxy serves a table by the names it
//! had before the swap.

use std::collections::{BTreeMap, HashSet};

use pgseal_crypto::ColumnId;

use super::{CatalogError, CatalogSnapshot};
use crate::migrate::state::{self, Direction, MigrationRow, Phase};
use crate::rewrite::{ProtectedColumn, ProtectedSchema};
use crate::upstream::simple_query::{quote_literal, Rows, SimpleClient};

/// The configured migrations: column → direction.
pub type Flags = BTreeMap<ColumnId, Direction>;

/// A table refused while a migration says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its OID.
    pub oid: u32,
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Completes "…, which is {why}".
    pub why: String,
}

/// What the migrations change in a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Columns served as plaintext for now.
    pub plain: Vec<ColumnId>,
    /// Columns served encrypted, at `(table OID, attnum)`.
    pub protected: Vec<(u32, i16, ProtectedColumn)>,
    /// Migration-owned columns no client sees.
    pub hidden: Vec<(u32, i16)>,
    /// Their names (also before a load knows their attnums).
    pub hidden_names: Vec<(u32, String)>,
    /// Tables refused.
    pub refused: Vec<Refused>,
}

impl Overrides {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty()
            && self.protected.is_empty()
            && self.hidden.is_empty()
            && self.hidden_names.is_empty()
            && self.refused.is_empty()
    }
}

/// One state row with the catalog facts the proxy needs: the table's OID and the attnums of the
/// column, the shadow and the old column under their current names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The row.
    pub row: MigrationRow,
    /// The table's OID (None: no such table now).
    pub oid: Option<u32>,
    /// The attnum of the column's name.
    pub column: Option<i16>,
    /// The attnum of the shadow's name.
    pub shadow: Option<i16>,
    /// The attnum of the old column's name.
    pub old: Option<i16>,
}

/// The state rows with the table OIDs and attnums, in one statement (one snapshot of the
/// catalog and the state).
pub fn query_sql() -> String {
    format!(
        "SELECT {cols}, c.oid, ca.attnum, sa.attnum, oa.attnum FROM {table} m \
         LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = m.schema_name \
         LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = m.table_name AND c.relkind IN ('r', 'p') \
         LEFT JOIN pg_catalog.pg_attribute ca ON ca.attrelid = c.oid AND ca.attname = m.column_name AND ca.attnum > 0 AND NOT ca.attisdropped \
         LEFT JOIN pg_catalog.pg_attribute sa ON sa.attrelid = c.oid AND sa.attname = m.shadow_name AND sa.attnum > 0 AND NOT sa.attisdropped \
         LEFT JOIN pg_catalog.pg_attribute oa ON oa.attrelid = c.oid AND oa.attname = m.old_name AND oa.attnum > 0 AND NOT oa.attisdropped",
        cols = state::SELECT_COLUMNS,
        table = state::table_sql()
    )
}

/// Parses the answer of [`query_sql`]; rows that are not ours are skipped.
pub fn observed_from(rows: &Rows) -> Vec<Observed> {
    rows.iter()
        .filter_map(|r| {
            let num = |i: usize| r.get(i).and_then(|v| v.as_deref());
            Some(Observed {
                row: state::row_from(r)?,
                oid: num(8).and_then(|v| v.parse().ok()),
                column: num(9).and_then(|v| v.parse().ok()),
                shadow: num(10).and_then(|v| v.parse().ok()),
                old: num(11).and_then(|v| v.parse().ok()),
            })
        })
        .collect()
}

/// Reads the state when the state table exists (the snapshot lists it), else nothing.
pub async fn observe(
    client: &mut SimpleClient,
    snapshot: &CatalogSnapshot,
) -> Result<Vec<Observed>, CatalogError> {
    if !snapshot.has_table(state::SCHEMA, state::TABLE) {
        return Ok(Vec::new());
    }
    let results = client
        .query(&query_sql())
        .await
        .map_err(|e| CatalogError(e.to_string()))?;
    Ok(results.first().map(observed_from).unwrap_or_default())
}

/// `(schema, table, column)` of the configured migrating columns that hold pgseal cells upstream
/// now (`bytea` with a stored-cell constraint `pgseal_cell_*` on exactly that column); None
/// without such columns.
pub fn cell_form_sql(flags: &Flags) -> Option<String> {
    if flags.is_empty() {
        return None;
    }
    let values: Vec<String> = flags
        .keys()
        .map(|id| {
            format!(
                "({}, {}, {})",
                quote_literal(id.schema()),
                quote_literal(id.table()),
                quote_literal(id.column())
            )
        })
        .collect();
    Some(format!(
        "SELECT n.nspname, c.relname, a.attname FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE (n.nspname::text, c.relname::text, a.attname::text) IN (VALUES {}) \
           AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid = 'pg_catalog.bytea'::pg_catalog.regtype \
           AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint con WHERE con.conrelid = c.oid \
             AND con.contype = 'c' AND con.conkey = ARRAY[a.attnum] AND con.conname LIKE 'pgseal\\_cell\\_%')",
        values.join(", ")
    ))
}

/// The configured migrating columns that hold pgseal cells upstream now (see
/// [`cell_form_sql`]): never served as plaintext, whatever the state table says.
pub async fn cell_form(
    client: &mut SimpleClient,
    flags: &Flags,
) -> Result<HashSet<ColumnId>, CatalogError> {
    let Some(sql) = cell_form_sql(flags) else {
        return Ok(HashSet::new());
    };
    let results = client
        .query(&sql)
        .await
        .map_err(|e| CatalogError(e.to_string()))?;
    Ok(results
        .first()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    let f = |i: usize| r.get(i).and_then(|v| v.as_deref());
                    ColumnId::new(f(0)?, f(1)?, f(2)?).ok()
                })
                .collect()
        })
        .unwrap_or_default())
}

/// A column the overrides would serve as plaintext but that holds pgseal cells upstream (the
/// state row deleted or rewound by the host, say) is not served as plaintext: its table is
/// refused (by `oid_of` its table; when the OID is unknown the column stays in the analysed
/// schema, i.e. encrypted).
pub fn guard_cells(
    o: &mut Overrides,
    cell_form: &HashSet<ColumnId>,
    oid_of: impl Fn(&ColumnId) -> Option<u32>,
) {
    let held: Vec<ColumnId> = o
        .plain
        .iter()
        .filter(|id| cell_form.contains(*id))
        .cloned()
        .collect();
    for id in held {
        o.plain.retain(|p| *p != id);
        if let Some(oid) = oid_of(&id) {
            if !o.refused.iter().any(|r| r.oid == oid) {
                o.refused.push(Refused {
                    oid,
                    schema: id.schema().to_owned(),
                    table: id.table().to_owned(),
                    why: format!(
                        "holding pgseal cells in column {} (bytea with its stored-cell constraint) while the migration's state upstream says it is plaintext",
                        id.column()
                    ),
                });
            }
        }
    }
}

/// How a column is served.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Encrypted,
    Plain,
    Refused(String),
}

/// How a column is served, from its configured direction and its state row.
fn mode(flag: Option<Direction>, row: Option<&MigrationRow>) -> Mode {
    use Direction::{Decrypt, Encrypt};
    let Some(row) = row else {
        return match flag {
            Some(Encrypt) => Mode::Plain,
            Some(Decrypt) | None => Mode::Encrypted,
        };
    };
    if row.phase == Phase::Cutting {
        return Mode::Refused(format!(
            "being cut over by `pgseal-proxy migrate` ({} of column {}; retry in a few seconds)",
            row.direction, row.column
        ));
    }
    match (flag, row.direction) {
        (Some(f), d) if f == d => match (d, row.phase.swapped()) {
            (Encrypt, false) | (Decrypt, true) => Mode::Plain,
            (Encrypt, true) | (Decrypt, false) => Mode::Encrypted,
        },
        // The finished migration before this one.
        (Some(Decrypt), Encrypt) if row.phase == Phase::Done => Mode::Encrypted,
        (Some(Encrypt), Decrypt) if row.phase == Phase::Done => Mode::Plain,
        (None, Encrypt) if row.phase == Phase::Done => Mode::Encrypted,
        (None, Decrypt) if row.phase == Phase::Done => Mode::Refused(format!(
            "holding column {} decrypted back to plaintext by `pgseal-proxy migrate` while the column is still configured (remove its [[columns]] entry)",
            row.column
        )),
        (Some(f), d) => Mode::Refused(format!(
            "being migrated ({d}, phase {}) while column {} is configured with migration = \"{f}\"",
            row.phase, row.column
        )),
        (None, d) => Mode::Refused(format!(
            "being migrated ({d}, phase {}) while column {} is configured without migration = \"{d}\"",
            row.phase, row.column
        )),
    }
}

/// What the migrations change, given the configured schema, the configured directions, the
/// observed state rows and the columns this process has served encrypted under
/// `migration = "encrypt"` (updated).
pub fn overrides(
    schema: &ProtectedSchema,
    flags: &Flags,
    observed: &[Observed],
    served_encrypted: &mut HashSet<ColumnId>,
) -> Overrides {
    let mut out = Overrides::default();
    let mut seen: HashSet<ColumnId> = HashSet::new();
    for o in observed {
        let r = &o.row;
        let Some(col) = schema.column(&r.schema, &r.table, &r.column) else {
            continue; // not a configured column: nothing of ours to serve
        };
        seen.insert(col.id.clone());
        let flag = flags.get(&col.id).copied();
        let mut m = mode(flag, Some(r));
        if m == Mode::Plain
            && flag == Some(Direction::Encrypt)
            && served_encrypted.contains(&col.id)
        {
            m = Mode::Refused(format!(
                "served encrypted by this proxy before, while the state of the migration of column {} now says plaintext (restart the proxy after an intended change)",
                r.column
            ));
        }
        let Some(oid) = o.oid else {
            if m == Mode::Plain {
                out.plain.push(col.id.clone());
            }
            continue;
        };
        // The migration's own columns: the shadow before the swap, the old column after it.
        let (own, name) = if r.phase.swapped() {
            (o.old, &r.old)
        } else {
            (o.shadow, &r.shadow)
        };
        if let Some(a) = own {
            out.hidden.push((oid, a));
        }
        out.hidden_names.push((oid, name.clone()));
        match m {
            Mode::Plain => out.plain.push(col.id.clone()),
            Mode::Encrypted => {
                if flag == Some(Direction::Encrypt) {
                    served_encrypted.insert(col.id.clone());
                }
                if let Some(a) = o.column {
                    out.protected.push((oid, a, col.clone()));
                }
            }
            Mode::Refused(why) => {
                if !out.refused.iter().any(|x| x.oid == oid) {
                    out.refused.push(Refused {
                        oid,
                        schema: r.schema.clone(),
                        table: r.table.clone(),
                        why,
                    });
                }
            }
        }
    }
    for (id, d) in flags {
        if seen.contains(id)
            || schema
                .column(id.schema(), id.table(), id.column())
                .is_none()
        {
            continue;
        }
        if mode(Some(*d), None) == Mode::Plain {
            if served_encrypted.contains(id) {
                // The state row went away after this process served the column encrypted:
                // keep it encrypted (the statements fail upstream if it really is plaintext).
                continue;
            }
            out.plain.push(id.clone());
        }
    }
    out
}

/// What `pgseal-proxy check` says of online migrations: the columns served as plaintext for now
/// (their catalog findings do not apply), one note per migration, and errors (a table the
/// proxies refuse because of a migration's state).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Columns served as plaintext.
    pub plain: Vec<ColumnId>,
    /// `note: …` lines.
    pub notes: Vec<String>,
    /// `error: …` lines.
    pub errors: Vec<String>,
}

/// The check report from the configuration and the observed state rows.
pub fn check_report(
    schema: &ProtectedSchema,
    flags: &Flags,
    observed: &[Observed],
    cell_form: &HashSet<ColumnId>,
    oid_of: impl Fn(&ColumnId) -> Option<u32>,
) -> CheckReport {
    let mut o = overrides(schema, flags, observed, &mut HashSet::new());
    guard_cells(&mut o, cell_form, oid_of);
    let mut report = CheckReport {
        plain: o.plain.clone(),
        ..CheckReport::default()
    };
    for (id, d) in flags {
        let row = observed.iter().map(|x| &x.row).find(|r| {
            (r.schema.as_str(), r.table.as_str(), r.column.as_str())
                == (id.schema(), id.table(), id.column())
        });
        let served = if o.plain.contains(id) {
            "served as plaintext"
        } else {
            "served encrypted"
        };
        report.notes.push(match row {
            Some(r) => format!(
                "note: {id}: migration = \"{d}\": the migration upstream is to {} in phase {} ({served}; `pgseal-proxy migrate` goes on from there)",
                r.direction, r.phase
            ),
            None => format!(
                "note: {id}: migration = \"{d}\": not started ({served}; run `pgseal-proxy migrate`)"
            ),
        });
        if row.is_some_and(|r| r.direction == *d && r.phase == Phase::Done) {
            report.notes.push(format!(
                "note: {id}: the migration is done; remove migration = \"{d}\" from its [[columns]] entry{} at the next restart",
                if *d == Direction::Decrypt { " (and the entry itself)" } else { "" }
            ));
        }
    }
    for r in &o.refused {
        report.errors.push(format!(
            "error: {}.{}: statements on this table are refused: it is {}",
            r.schema, r.table, r.why
        ));
    }
    report
}

/// The copy of `snapshot` used when it is too old while migrations are configured: every table
/// with a migrating column is refused until a fresh load.
pub fn degraded(
    snapshot: &CatalogSnapshot,
    schema: &ProtectedSchema,
    flags: &Flags,
) -> CatalogSnapshot {
    let mut refused = Vec::new();
    for id in flags.keys() {
        let oid = snapshot
            .by_oid
            .iter()
            .find(|(_, t)| t.schema == id.schema() && t.table == id.table())
            .map(|(oid, _)| *oid);
        if let Some(oid) = oid {
            if !refused.iter().any(|r: &Refused| r.oid == oid) {
                refused.push(Refused {
                    oid,
                    schema: id.schema().to_owned(),
                    table: id.table().to_owned(),
                    why: format!(
                        "being migrated (column {}) while this proxy's catalog could not be refreshed in time (retry shortly)",
                        id.column()
                    ),
                });
            }
        }
    }
    // Tables whose only protected column is served as plaintext are not in `by_oid` when the
    // snapshot was built without them; they are still named in the analysed schema's
    // pre-check names, and refusing by name needs an OID only for results.
    let generation = snapshot.generation() | (1 << 63);
    snapshot
        .clone()
        .with_migrations(
            schema,
            &Overrides {
                refused,
                ..Overrides::default()
            },
        )
        .with_generation(generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgseal_crypto::value::LogicalType;

    fn col() -> ProtectedColumn {
        ProtectedColumn {
            id: ColumnId::parse("public.patients.email").unwrap(),
            ty: LogicalType::Text,
            keyring: "k".into(),
            index: None,
        }
    }

    fn row(direction: Direction, phase: Phase) -> MigrationRow {
        MigrationRow {
            schema: "public".into(),
            table: "patients".into(),
            column: "email".into(),
            direction,
            phase,
            shadow: "pgseal_shadow_3".into(),
            old: "pgseal_old_3".into(),
            rows_done: 0,
        }
    }

    fn observed(direction: Direction, phase: Phase) -> Observed {
        let swapped = phase.swapped();
        Observed {
            row: row(direction, phase),
            oid: Some(100),
            // Before the swap the column is attnum 3 and the shadow 5; after it the reverse.
            column: Some(if swapped { 5 } else { 3 }),
            shadow: (!swapped).then_some(5),
            old: swapped.then_some(3),
        }
    }

    fn run(flag: Option<Direction>, obs: &[Observed]) -> Overrides {
        let schema = ProtectedSchema::from_columns([col()]);
        let mut flags = Flags::new();
        if let Some(f) = flag {
            flags.insert(col().id, f);
        }
        overrides(&schema, &flags, obs, &mut HashSet::new())
    }

    #[test]
    fn every_phase_of_both_directions_is_served_as_the_table_says() {
        use Direction::{Decrypt, Encrypt};
        for phase in Phase::ALL {
            for d in [Encrypt, Decrypt] {
                let o = run(Some(d), &[observed(d, phase)]);
                if phase == Phase::Cutting {
                    assert_eq!(o.refused.len(), 1, "{d} {phase}");
                    assert!(o.plain.is_empty() && o.protected.is_empty());
                    continue;
                }
                let plain = (d == Encrypt) != phase.swapped();
                assert_eq!(!o.plain.is_empty(), plain, "{d} {phase}");
                assert_eq!(o.protected.is_empty(), plain, "{d} {phase}");
                if !plain {
                    let expect = if phase.swapped() { 5 } else { 3 };
                    assert_eq!(o.protected[0].1, expect, "{d} {phase}");
                }
                // The migration's own column is hidden: the shadow, then the old column.
                let hidden = if phase.swapped() { 3 } else { 5 };
                assert_eq!(o.hidden, vec![(100, hidden)], "{d} {phase}");
                assert!(o.refused.is_empty());
            }
        }
    }

    #[test]
    fn no_row_follows_the_configuration_and_unknown_migrations_are_refused() {
        use Direction::{Decrypt, Encrypt};
        assert_eq!(run(Some(Encrypt), &[]).plain, vec![col().id]);
        assert!(run(Some(Decrypt), &[]).is_empty());
        assert!(run(None, &[]).is_empty());
        // A finished encryption without a flag: encrypted as usual.
        let o = run(None, &[observed(Encrypt, Phase::Done)]);
        assert!(o.plain.is_empty() && o.refused.is_empty());
        // A migration in progress the configuration does not know, or in the other direction,
        // or a decrypted column still configured: refused, never plaintext.
        for (flag, d, p) in [
            (None, Encrypt, Phase::Backfill),
            (None, Decrypt, Phase::Verified),
            (None, Decrypt, Phase::Done),
            (Some(Encrypt), Decrypt, Phase::Backfill),
            (Some(Decrypt), Encrypt, Phase::Cutover),
        ] {
            let o = run(flag, &[observed(d, p)]);
            assert_eq!(o.refused.len(), 1, "{flag:?} {d} {p}");
            assert!(o.plain.is_empty(), "{flag:?} {d} {p}");
        }
        // The finished migration before a new one in the other direction.
        assert_eq!(
            run(Some(Encrypt), &[observed(Decrypt, Phase::Done)]).plain,
            vec![col().id]
        );
        assert!(run(Some(Decrypt), &[observed(Encrypt, Phase::Done)])
            .plain
            .is_empty());
    }

    #[test]
    fn a_column_once_served_encrypted_never_turns_plain_again() {
        let schema = ProtectedSchema::from_columns([col()]);
        let mut flags = Flags::new();
        flags.insert(col().id, Direction::Encrypt);
        let mut served = HashSet::new();
        let o = overrides(
            &schema,
            &flags,
            &[observed(Direction::Encrypt, Phase::Cutover)],
            &mut served,
        );
        assert_eq!(o.protected.len(), 1);
        // The upstream now claims the migration is back before the cut-over.
        let o = overrides(
            &schema,
            &flags,
            &[observed(Direction::Encrypt, Phase::Backfill)],
            &mut served,
        );
        assert!(o.plain.is_empty());
        assert_eq!(o.refused.len(), 1);
        // Or the row is gone.
        let o = overrides(&schema, &flags, &[], &mut served);
        assert!(o.plain.is_empty());
    }

    #[test]
    fn a_column_holding_cells_is_never_served_as_plaintext() {
        let schema = ProtectedSchema::from_columns([col()]);
        let mut flags = Flags::new();
        flags.insert(col().id, Direction::Encrypt);
        let cells: HashSet<ColumnId> = [col().id].into_iter().collect();
        // The state row was deleted (or rewound) but the column is bytea with its constraint.
        for obs in [vec![], vec![observed(Direction::Encrypt, Phase::Backfill)]] {
            let mut o = overrides(&schema, &flags, &obs, &mut HashSet::new());
            assert_eq!(o.plain, vec![col().id]);
            guard_cells(&mut o, &cells, |_| Some(100));
            assert!(o.plain.is_empty());
            assert_eq!(o.refused.len(), 1);
            assert!(o.refused[0].why.contains("holding pgseal cells"));
        }
    }

    #[test]
    fn check_reports_the_phase_and_what_is_refused() {
        let schema = ProtectedSchema::from_columns([col()]);
        let mut flags = Flags::new();
        flags.insert(col().id, Direction::Encrypt);
        let r = check_report(
            &schema,
            &flags,
            &[observed(Direction::Encrypt, Phase::Backfill)],
            &HashSet::new(),
            |_| Some(100),
        );
        assert_eq!(r.plain, vec![col().id]);
        assert!(
            r.notes[0].contains("phase backfill (served as plaintext"),
            "{:?}",
            r.notes
        );
        assert!(r.errors.is_empty());
        let r = check_report(
            &schema,
            &flags,
            &[observed(Direction::Encrypt, Phase::Cutting)],
            &HashSet::new(),
            |_| Some(100),
        );
        assert_eq!(r.errors.len(), 1);
        let r = check_report(
            &schema,
            &flags,
            &[observed(Direction::Encrypt, Phase::Done)],
            &HashSet::new(),
            |_| Some(100),
        );
        assert!(r.plain.is_empty());
        assert!(
            r.notes.iter().any(|n| n.contains("remove migration")),
            "{:?}",
            r.notes
        );
        let r = check_report(&schema, &flags, &[], &HashSet::new(), |_| Some(100));
        assert!(r.notes[0].contains("not started"));
        // A migration upstream the configuration does not know: an error.
        let r = check_report(
            &schema,
            &Flags::new(),
            &[observed(Direction::Encrypt, Phase::Backfill)],
            &HashSet::new(),
            |_| Some(100),
        );
        assert_eq!(r.errors.len(), 1);
    }

    #[test]
    fn rows_of_unconfigured_columns_are_ignored_and_answers_parse() {
        let mut other = observed(Direction::Encrypt, Phase::Backfill);
        other.row.column = "name".into();
        assert!(run(None, &[other]).is_empty());
        let s = |v: &str| Some(v.to_owned());
        let rows = vec![vec![
            s("public"),
            s("patients"),
            s("email"),
            s("encrypt"),
            s("backfill"),
            s("pgseal_shadow_3"),
            s("pgseal_old_3"),
            s("0"),
            s("100"),
            s("3"),
            s("5"),
            None,
        ]];
        let o = observed_from(&rows);
        assert_eq!(o.len(), 1);
        assert_eq!(
            (o[0].oid, o[0].column, o[0].shadow, o[0].old),
            (Some(100), Some(3), Some(5), None)
        );
        assert!(query_sql().contains("pgseal"));
    }
}
