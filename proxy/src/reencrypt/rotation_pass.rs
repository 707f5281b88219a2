//! A `reencrypt` run during a blind-index key rotation (docs/format.md §2.5) is a pass of the
//! rotation: re-index before the cut-over, compaction after it. The keyserver must know of it
//! (it lets the cut-over and the finish happen only after a complete pass that started once every
//! proxy had taken the phase in), and the database must be ready for the phase's cells. Before
//! the pass rewrites anything it waits until every transaction that was running when it started
//! has ended (a write sealed under the previous phase commits before the pass looks).

use std::time::{Duration, Instant};

use pgseal_keyserver::client::{Client, ClientError};
use pgseal_keyserver::model::{IndexPassReport, IndexPhase, IndexRotation};

use super::{is_dual_sql, quote_ident, ReencryptError};
use crate::rewrite::schema::cell_check::CellCheck;
use crate::rewrite::schema::rotation_ddl::{is_next_tag_expr, next_index_name};
use crate::rewrite::{ProtectedColumn, ProtectedSchema};
use crate::upstream::simple_query::{quote_literal, SimpleClient};

/// A pass the keyserver let start.
#[derive(Debug, Clone)]
pub struct Pass {
    /// Keyring.
    pub keyring: String,
    /// Its rotation, as the pass started in it.
    pub rotation: IndexRotation,
    /// The keyserver's pass id.
    pub id: String,
}

fn rotation_err(message: String) -> ReencryptError {
    ReencryptError::Rotation(message)
}

fn upstream(column: &ProtectedColumn, e: crate::upstream::UpstreamError) -> ReencryptError {
    ReencryptError::Upstream {
        column: column.id.to_string(),
        source: e,
    }
}

/// The indexed columns of `keyring`.
fn indexed_columns<'a>(
    schema: &'a ProtectedSchema,
    keyring: &'a str,
) -> impl Iterator<Item = &'a ProtectedColumn> {
    schema
        .columns()
        .filter(move |c| c.keyring == keyring && c.index.is_some())
}

fn regclass(c: &ProtectedColumn) -> String {
    quote_literal(&format!(
        "{}.{}",
        quote_ident(c.id.schema()),
        quote_ident(c.id.table())
    ))
}

/// The first column of the first result, if any.
fn first_values(rows: Vec<Vec<Vec<Option<String>>>>) -> Vec<Vec<Option<String>>> {
    rows.into_iter().next().unwrap_or_default()
}

/// Checks that every indexed column of `keyring` is ready for dual cells: its stored-cell
/// constraint (when it has one) is the rotation variant, and a unique column has a valid
/// UNIQUE index over the second-tag expression (`pgseal-proxy schema --index-rotation`).
pub async fn check_prepared(
    client: &mut SimpleClient,
    schema: &ProtectedSchema,
    keyring: &str,
) -> Result<(), ReencryptError> {
    let fix = format!("run the DDL of `pgseal-proxy schema --index-rotation --keyring {keyring}`");
    for c in indexed_columns(schema, keyring) {
        let Some(transition) = CellCheck::transition_of(c) else {
            continue;
        };
        let sql = format!(
            "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint \
             WHERE conrelid = {}::regclass AND conname = {} AND contype = 'c'",
            regclass(c),
            quote_literal(transition.name())
        );
        let rows = first_values(client.query(&sql).await.map_err(|e| upstream(c, e))?);
        for r in &rows {
            let def = r.first().cloned().flatten().unwrap_or_default();
            if !transition.matches(&def) {
                return Err(rotation_err(format!(
                    "{}: its stored-cell constraint {} does not accept two-tag cells yet: {fix}",
                    c.id,
                    transition.name()
                )));
            }
        }
        if !c.index.as_ref().is_some_and(|ix| ix.unique) {
            continue;
        }
        let sql = format!(
            "SELECT pg_catalog.pg_get_indexdef(i.indexrelid, 1, true) FROM pg_catalog.pg_index i \
             WHERE i.indrelid = {}::regclass AND i.indisunique AND i.indisvalid AND i.indnatts = 1 \
             AND i.indpred IS NULL",
            regclass(c)
        );
        let rows = first_values(client.query(&sql).await.map_err(|e| upstream(c, e))?);
        let present = rows.iter().any(|r| {
            r.first()
                .cloned()
                .flatten()
                .is_some_and(|expr| is_next_tag_expr(&expr, c.id.column()))
        });
        if !present {
            return Err(rotation_err(format!(
                "{}: no valid UNIQUE index over its second blind-index tag ({}): {fix}",
                c.id,
                next_index_name(c)
            )));
        }
    }
    Ok(())
}

/// Starts the pass of `keyring`'s rotation on the keyserver.
pub async fn start(
    keyserver: &Client,
    keyring: &str,
    rotation: &IndexRotation,
) -> Result<Pass, ReencryptError> {
    match keyserver
        .index_pass_start(keyring, rotation.to, rotation.phase)
        .await
    {
        Ok(r) => Ok(Pass {
            keyring: keyring.to_owned(),
            rotation: rotation.clone(),
            id: r.pass,
        }),
        Err(ClientError::Api {
            status: 409,
            message,
            ..
        }) => Err(rotation_err(format!(
            "keyring {keyring}: the keyserver does not let the {} pass start yet: {message}",
            what(rotation.phase)
        ))),
        Err(e) => Err(rotation_err(format!(
            "keyring {keyring}: cannot start the {} pass on the keyserver: {e}",
            what(rotation.phase)
        ))),
    }
}

/// What a pass of `phase` does, for messages.
pub fn what(phase: IndexPhase) -> &'static str {
    match phase {
        IndexPhase::Dual => "re-index",
        IndexPhase::Cutover => "compaction",
    }
}

/// Waits until every transaction of this database's client sessions that was open when this
/// was called has ended (at most `limit`): each holds the lock on its virtual transaction id from
/// its start, also one that has not written yet (a Bind whose Execute comes later, an INSERT
/// waiting for a lock), so a cell sealed under the previous phase is committed, or never will
/// be, before the pass looks — the wait `CREATE INDEX CONCURRENTLY` makes.
pub async fn wait_for_older_transactions(
    client: &mut SimpleClient,
    limit: Duration,
) -> Result<(), ReencryptError> {
    let err = |e: crate::upstream::UpstreamError| {
        rotation_err(format!("cannot read the upstream's open transactions: {e}"))
    };
    const OPEN: &str = "SELECT l.virtualxid FROM pg_catalog.pg_locks l \
         JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'virtualxid' AND l.granted AND l.mode = 'ExclusiveLock' \
         AND l.pid <> pg_catalog.pg_backend_pid() AND a.datname = pg_catalog.current_database() \
         AND a.backend_type = 'client backend'";
    let open: Vec<String> = first_values(client.query(OPEN).await.map_err(err)?)
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    let list = open
        .iter()
        .map(|v| quote_literal(v))
        .collect::<Vec<_>>()
        .join(", ");
    let still = format!(
        "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'virtualxid' AND granted \
         AND virtualxid IN ({list})"
    );
    let started = Instant::now();
    loop {
        let rows = first_values(client.query(&still).await.map_err(err)?);
        if rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .as_deref()
            == Some("0")
        {
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(rotation_err(format!(
                "transactions older than the pass were still open after {} s \
                 (see pg_stat_activity, state 'idle in transaction' or long queries); end them \
                 and run reencrypt again",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes the session-level advisory lock that lets one `reencrypt` at a time work on this
/// database (released when the connection closes). A second run stops instead of rewriting
/// cells for a phase it may have read before the first run's.
pub async fn lock_single_run(client: &mut SimpleClient) -> Result<(), ReencryptError> {
    let rows = first_values(
        client
            .query("SELECT pg_catalog.pg_try_advisory_lock(1885693281, 1)")
            .await
            .map_err(|e| rotation_err(format!("cannot take the reencrypt lock: {e}")))?,
    );
    match rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .as_deref()
    {
        Some("t") => Ok(()),
        _ => Err(rotation_err(
            "another pgseal-proxy reencrypt is running against this database (advisory lock \
             1885693281/1 held); wait for it to end"
                .into(),
        )),
    }
}

/// The cells of `keyring`'s indexed columns still in the form the pass replaces (single cells
/// for a re-index, dual cells for a compaction).
pub async fn cells_left(
    client: &mut SimpleClient,
    schema: &ProtectedSchema,
    pass: &Pass,
) -> Result<u64, ReencryptError> {
    let mut left = 0u64;
    for c in indexed_columns(schema, &pass.keyring) {
        let column = quote_ident(c.id.column());
        let dual = is_dual_sql(&column);
        let form = match pass.rotation.phase {
            IndexPhase::Dual => format!("NOT ({dual})"),
            IndexPhase::Cutover => dual,
        };
        let sql = format!(
            "SELECT count(*) FROM {}.{} WHERE {column} IS NOT NULL AND {form}",
            quote_ident(c.id.schema()),
            quote_ident(c.id.table())
        );
        let rows = first_values(client.query(&sql).await.map_err(|e| upstream(c, e))?);
        let n: u64 = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .ok_or(ReencryptError::Answer {
                column: c.id.to_string(),
                what: "count(*) is not a number",
            })?;
        left += n;
    }
    Ok(left)
}

/// Reports the end of `pass`.
pub async fn report(
    keyserver: &Client,
    pass: &Pass,
    complete: bool,
    rewritten: u64,
) -> Result<(), ReencryptError> {
    keyserver
        .index_pass_report(
            &pass.keyring,
            &pass.id,
            &IndexPassReport {
                complete,
                rewritten,
            },
        )
        .await
        .map_err(|e| {
            rotation_err(format!(
                "keyring {}: the keyserver did not take the {} pass's report: {e}",
                pass.keyring,
                what(pass.rotation.phase)
            ))
        })
}
