//! The sessions a cut-over must not overlap with. The proxies refuse statements on a table from
//! the moment they know it is being cut over, but PostgreSQL may still hold work they forwarded
//! before: a query string whose later statements name the table, a pipeline queued behind a
//! long statement, a REPEATABLE READ or SERIALIZABLE transaction whose snapshot predates the
//! shadow's last fill (it would read those old row versions under the column's name), a
//! statement queued behind the cut-over's lock. None of them may see the swap.
//!
//! Before announcing the cut-over, `migrate` waits (without refusing anything) until no session
//! of the database runs a statement, holds a snapshot, or holds a lock on the tables since
//! before the wait began; under the cut-over's lock it checks again for statements and
//! snapshots older than the announcement (plus the proxies' snapshot lifetime) and for sessions
//! waiting on the tables, and gives the cut-over up (to try again) when it finds one.

use super::MigrateError;
use crate::upstream::simple_query::SimpleClient;

/// SQL: `(pid, why)` of the other client sessions of this database that block a cut-over,
/// given `since` (an SQL `timestamptz` expression) and the tables' OIDs; `holders`: also
/// transactions since before `since` that hold a lock on one of the tables (before the
/// announcement; under the cut-over's own lock there are none).
pub fn blockers_sql(table_oids: &[u32], since: &str, holders: bool) -> String {
    let oids: Vec<String> = table_oids.iter().map(u32::to_string).collect();
    let oids = format!("'{{{}}}'::pg_catalog.oid[]", oids.join(","));
    format!(
        "SELECT a.pid, CASE \
           WHEN a.state = 'active' AND a.query_start < {since} THEN 'a statement running since ' || a.query_start::text \
           WHEN a.backend_xmin IS NOT NULL AND a.xact_start < {since} THEN 'a transaction holding a snapshot since ' || a.xact_start::text \
           WHEN w.pid IS NOT NULL THEN 'a statement waiting for a lock on the table' \
           ELSE 'a transaction holding a lock on the table since ' || a.xact_start::text END \
         FROM pg_catalog.pg_stat_activity a \
         LEFT JOIN LATERAL (SELECT l.pid FROM pg_catalog.pg_locks l WHERE l.pid = a.pid AND l.relation = ANY ({oids}) AND NOT l.granted LIMIT 1) w ON true \
         LEFT JOIN LATERAL (SELECT l.pid FROM pg_catalog.pg_locks l WHERE l.pid = a.pid AND l.relation = ANY ({oids}) AND l.granted LIMIT 1) h ON true \
         WHERE a.datname = pg_catalog.current_database() AND a.pid <> pg_catalog.pg_backend_pid() \
           AND a.backend_type = 'client backend' \
           AND ((a.state = 'active' AND a.query_start < {since}) \
             OR (a.backend_xmin IS NOT NULL AND a.xact_start < {since}) \
             OR w.pid IS NOT NULL \
             OR ({holders} AND h.pid IS NOT NULL AND a.xact_start < {since})) \
         ORDER BY a.pid"
    )
}

/// The blockers (see [`blockers_sql`]) as `pid: why` lines.
pub async fn blockers(
    client: &mut SimpleClient,
    table_oids: &[u32],
    since: &str,
    holders: bool,
) -> Result<Vec<String>, MigrateError> {
    let rows = client
        .query(&blockers_sql(table_oids, since, holders))
        .await
        .map_err(|source| MigrateError::Upstream {
            what: "cut-over".into(),
            source,
        })?;
    Ok(rows
        .first()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    let f = |i: usize| r.get(i).and_then(|v| v.as_deref()).unwrap_or("?");
                    format!("pid {}: {}", f(0), f(1))
                })
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_every_kind_of_blocker() {
        let sql = blockers_sql(&[16_400, 16_401], "now()", true);
        assert!(sql.contains("'{16400,16401}'::pg_catalog.oid[]"));
        for part in [
            "a.state = 'active' AND a.query_start < now()",
            "a.backend_xmin IS NOT NULL AND a.xact_start < now()",
            "NOT l.granted",
            "(true AND h.pid IS NOT NULL",
            "pg_backend_pid()",
            "current_database()",
        ] {
            assert!(sql.contains(part), "{part}");
        }
        assert!(blockers_sql(&[1], "x", false).contains("(false AND h.pid"));
    }
}
