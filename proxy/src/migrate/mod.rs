//! `pgseal-proxy migrate`: takes configured columns that are plaintext upstream to pgseal
//! cells (or back) online, while applications keep reading and writing through the proxy
//! (docs/migration.md).
//!
//! Per column, through the phases of [`state::Phase`], each restartable and idempotent, with
//! the state upstream in `pgseal.migrations`:
//! 1. **prepare**: announce the migration (proxies hide the shadow column from results), wait
//!    until every proxy has seen it, add the shadow column, its constraint (the stored-cell
//!    check when encrypting), the change trigger that clears a shadow whose source value
//!    changes, and the shadow's index (`CONCURRENTLY`; UNIQUE for unique columns).
//! 2. **backfill** ([`fill`]): block range by block range, then sweeps over rows changed
//!    meanwhile; one transaction per batch; throttled.
//! 3. **verify**: every shadow opens to its source value, blind indexes match.
//! 4. **cut-over**: announce `cutting` (proxies refuse the table), wait until every proxy has
//!    seen it, then in one transaction: lock the tables, fill what is still pending, swap the
//!    names, record `cutover`. Proxies serve the new form from their next catalog load.
//! 5. **cleanup**: drop the old column and the trigger function.
//!
//! `--abort` undoes a migration before its cut-over; after it, the way back is a migration in
//! the other direction.

pub mod ddl;
pub mod fill;
pub mod preflight;
pub mod progress;
pub mod quiesce;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::encrypt::cells::CellError;
use crate::keys::KeySource;
use crate::rewrite::ProtectedSchema;
use crate::upstream::simple_query::SimpleClient;
use crate::upstream::UpstreamError;
use ddl::ColumnPlan;
use fill::TableWork;
use progress::Progress;
use state::{Direction, MigrationRow, Phase};

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The migration cannot run as asked (messages name the column and the reason).
    #[error("{0}")]
    Refused(String),
    /// The upstream refused a statement or the connection failed.
    #[error("{what}: upstream: {source}")]
    Upstream {
        /// The column or table.
        what: String,
        /// The upstream error (no data values in it).
        source: UpstreamError,
    },
    /// A column's keys are unavailable, or a cell could not be opened.
    #[error("{column}: {source}")]
    Keys {
        /// The column.
        column: String,
        /// The cause.
        source: CellError,
    },
    /// A source value is not a value of the configured type.
    #[error("{column}: a stored value cannot be migrated: {reason}")]
    Value {
        /// The column.
        column: String,
        /// Why (no value in it).
        reason: String,
    },
    /// Two rows hold values that are equal under a unique column's blind index.
    #[error(
        "{table}: two rows hold the same value of a unique column as its blind index compares \
         them ({message}); make the values distinct (or the column not unique) and run migrate again"
    )]
    Duplicate {
        /// The table.
        table: String,
        /// PostgreSQL's message (names the index).
        message: String,
    },
    /// Verification found shadows that are not their source's new form.
    #[error(
        "{table}: {mismatched} value(s) did not verify; their shadows were reset and are filled \
         again on the next run"
    )]
    Verification {
        /// The table.
        table: String,
        /// How many.
        mismatched: u64,
    },
    /// A cut-over attempt found sessions that could carry the old form across it.
    #[error("sessions that started before the cut-over are still at work ({0})")]
    Busy(String),
    /// The upstream answered something unexpected.
    #[error("unexpected answer from the upstream: {0}")]
    Answer(&'static str),
}

fn up(what: &str) -> impl Fn(UpstreamError) -> MigrateError + '_ {
    move |source| MigrateError::Upstream {
        what: what.to_owned(),
        source,
    }
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only these columns (`schema.table.column`); empty: every column configured with
    /// `migration`.
    pub columns: Vec<String>,
    /// Rows per batch (one transaction each).
    pub batch: usize,
    /// Rows per second at most (None: unthrottled).
    pub rate: Option<u64>,
    /// Print the plan and the DDL, change nothing.
    pub dry_run: bool,
    /// Undo the migrations (before their cut-over).
    pub abort: bool,
    /// Stop once every column has reached this phase.
    pub stop_after: Option<Phase>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            columns: Vec::new(),
            batch: DEFAULT_BATCH,
            rate: Some(DEFAULT_RATE),
            dry_run: false,
            abort: false,
            stop_after: None,
        }
    }
}

/// Rows per batch by default.
pub const DEFAULT_BATCH: usize = 1000;
/// Rows per second by default (`--rate 0`: unthrottled).
pub const DEFAULT_RATE: u64 = 5000;
/// The advisory lock key of `migrate` (one run per database at a time; `reencrypt` uses
/// `(1885693281, 1)`).
const LOCK: (i64, i64) = (1_885_693_281, 2);
/// Cut-over attempts (each waits at most [`CUTOVER_LOCK_TIMEOUT`] for the table locks).
const CUTOVER_ATTEMPTS: u32 = 5;
/// How long a cut-over waits for its table locks.
const CUTOVER_LOCK_TIMEOUT: &str = "5s";
/// A sweep that finds fewer rows than this ends the sweeping (the cut-over fills the rest
/// under its lock).
const SWEEP_ENOUGH: u64 = 50;
/// Sweeps per table at most.
const MAX_SWEEPS: u32 = 200;
/// How long the cut-over waits for sessions that started before it.
const QUIET_LIMIT: Duration = Duration::from_secs(300);
/// How often that wait says what it waits for.
const QUIET_REPORT: Duration = Duration::from_secs(5);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every column reached the end (or `--stop-after`).
    Finished(Vec<(String, Phase)>),
    /// Ctrl-C: stopped after a batch; run again to resume.
    Interrupted(Vec<(String, Phase)>),
    /// `--dry-run`: the plan.
    Plan(String),
    /// `--abort`: the columns undone.
    Aborted(Vec<String>),
}

/// One column of the run and where it stands.
struct Column {
    plan: ColumnPlan,
    row: MigrationRow,
    /// Whether the run created its state row.
    new: bool,
}

/// The migrator: a connection, the keys, the options, where to report, and Ctrl-C.
pub struct Migrator<'a> {
    client: &'a mut SimpleClient,
    keys: &'a dyn KeySource,
    options: Options,
    progress: Box<dyn Progress + 'a>,
    stop: &'a AtomicBool,
}

impl<'a> Migrator<'a> {
    /// A migrator on `client` (connected to the protected database as a user that owns the
    /// tables).
    pub fn new(
        client: &'a mut SimpleClient,
        keys: &'a dyn KeySource,
        options: Options,
        progress: Box<dyn Progress + 'a>,
        stop: &'a AtomicBool,
    ) -> Self {
        Self {
            client,
            keys,
            options,
            progress,
            stop,
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    async fn exec(
        &mut self,
        what: &str,
        sql: &str,
    ) -> Result<Vec<crate::upstream::simple_query::Rows>, MigrateError> {
        self.client.query(sql).await.map_err(up(what))
    }

    /// Runs the migrations of the configured columns `migrations` of `schema`.
    pub async fn run(
        &mut self,
        schema: &ProtectedSchema,
        migrations: &BTreeMap<pgseal_crypto::ColumnId, Direction>,
    ) -> Result<Outcome, MigrateError> {
        let selected = select(schema, migrations, &self.options.columns)?;
        self.exec("session", fill::SESSION_SETTINGS).await?;
        let has_state = fill::first_number(
            &self
                .exec(
                    "state",
                    "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgseal' AND c.relname = 'migrations'",
                )
                .await?,
        ) == Some(1);
        if !self.options.dry_run {
            self.exec("state", &state::create_sql()).await?;
            let got = self
                .exec(
                    "lock",
                    &format!(
                        "SELECT pg_catalog.pg_try_advisory_lock({}, {})",
                        LOCK.0, LOCK.1
                    ),
                )
                .await?;
            let locked = got
                .first()
                .and_then(|r| r.first())
                .and_then(|r| r.first())
                .and_then(|v| v.as_deref())
                == Some("t");
            if !locked {
                return Err(MigrateError::Refused(
                    "another `pgseal-proxy migrate` is running on this database; wait for it to finish".into(),
                ));
            }
        }
        let mut columns = Vec::new();
        let mut finished = Vec::new();
        for (col, direction) in &selected {
            let row = if has_state || !self.options.dry_run {
                state::read(
                    self.client,
                    col.id.schema(),
                    col.id.table(),
                    col.id.column(),
                )
                .await
                .map_err(up(&col.id.to_string()))?
            } else {
                None
            };
            match row {
                Some(r) if r.direction == *direction && r.phase == Phase::Done => {
                    finished.push((col.id.to_string(), Phase::Done));
                }
                Some(r) if r.direction == *direction => {
                    let facts = preflight::facts(self.client, col).await?;
                    let Some((oid, _, _)) = facts.table else {
                        return Err(MigrateError::Refused(format!(
                            "{}: the table of a migration in phase {} is gone",
                            col.id, r.phase
                        )));
                    };
                    let names = state::Names::of_row(oid, &r.shadow).ok_or_else(|| {
                        MigrateError::Refused(format!(
                            "{}: the state row names shadow column {:?}, which is not one of migrate's",
                            col.id, r.shadow
                        ))
                    })?;
                    let not_null = facts.column.as_ref().is_some_and(|c| c.not_null);
                    columns.push(Column {
                        plan: ColumnPlan {
                            col: (*col).clone(),
                            direction: *direction,
                            table_oid: oid,
                            names,
                            not_null,
                        },
                        row: r,
                        new: false,
                    });
                }
                Some(r) if r.phase != Phase::Done => {
                    return Err(MigrateError::Refused(format!(
                        "{}: a migration to {} is in progress (phase {}); finish it (configure migration = \"{}\") or abort it first",
                        col.id, r.direction, r.phase, r.direction
                    )));
                }
                _ => {
                    if self.options.abort {
                        continue;
                    }
                    let facts = preflight::facts(self.client, col).await?;
                    let plan = preflight::plan(col, *direction, &facts)?;
                    let row = MigrationRow {
                        schema: col.id.schema().to_owned(),
                        table: col.id.table().to_owned(),
                        column: col.id.column().to_owned(),
                        direction: *direction,
                        phase: Phase::Preparing,
                        shadow: plan.names.shadow.clone(),
                        old: plan.names.old.clone(),
                        rows_done: 0,
                    };
                    columns.push(Column {
                        plan,
                        row,
                        new: true,
                    });
                }
            }
        }
        if self.options.abort {
            return self.abort(columns).await;
        }
        if self.options.dry_run {
            return Ok(Outcome::Plan(dry_run(&columns, &finished)));
        }
        for (id, _) in &finished {
            self.progress
                .note(&format!("migrate: {id}: already migrated (phase done)"));
        }
        let outcome = self.advance(&mut columns).await?;
        let mut phases: Vec<(String, Phase)> = columns
            .iter()
            .map(|c| (c.plan.col.id.to_string(), c.row.phase))
            .collect();
        phases.extend(finished);
        Ok(match outcome {
            Stop::Done => Outcome::Finished(phases),
            Stop::Interrupted => Outcome::Interrupted(phases),
        })
    }

    /// Moves every column through the phases.
    async fn advance(&mut self, columns: &mut [Column]) -> Result<Stop, MigrateError> {
        // Prepare.
        let announce: Vec<usize> = (0..columns.len())
            .filter(|i| {
                columns
                    .get(*i)
                    .is_some_and(|c| c.row.phase == Phase::Preparing)
            })
            .collect();
        if !announce.is_empty() {
            for i in &announce {
                let Some(c) = columns.get(*i) else { continue };
                if c.new {
                    let sql = state::start_sql(&c.row);
                    self.exec(&c.plan.col.id.to_string(), &sql).await?;
                }
            }
            self.progress.note(&format!(
                "migrate: announced; waiting {} ms so that every proxy hides the new columns",
                state::ANNOUNCE_WAIT.as_millis()
            ));
            tokio::time::sleep(state::ANNOUNCE_WAIT).await;
            for i in announce {
                let Some(c) = columns.get_mut(i) else {
                    continue;
                };
                self.prepare(&c.plan).await?;
                self.set_phase(c, Phase::Backfill, None).await?;
            }
        }
        if self.reached(columns, Phase::Backfill) {
            return Ok(Stop::Done);
        }
        // Backfill and verify, table by table.
        let tables = by_table(columns, |p| p == Phase::Backfill);
        for idx in tables.values() {
            let plans: Vec<&ColumnPlan> = idx
                .iter()
                .filter_map(|i| columns.get(*i).map(|c| &c.plan))
                .collect();
            let Some(first) = plans.first() else { continue };
            let work = TableWork {
                table: first.table(),
                columns: plans.clone(),
            };
            let filled = match self.backfill(&work).await? {
                Some(n) => n,
                None => return Ok(Stop::Interrupted),
            };
            let Some(v) = self.verify(&work).await? else {
                return Ok(Stop::Interrupted);
            };
            self.progress.note(&format!(
                "migrate: {}: verified {} row(s): {} value(s) match, {} NULL, {} changed since (filled at the cut-over), {} mismatched",
                work.table, v.rows, v.matched, v.nulls, v.pending, v.mismatched
            ));
            if v.mismatched > 0 {
                return Err(MigrateError::Verification {
                    table: work.table.clone(),
                    mismatched: v.mismatched,
                });
            }
            for i in idx {
                if let Some(c) = columns.get_mut(*i) {
                    let n = i64::try_from(filled).unwrap_or(i64::MAX);
                    self.set_phase(c, Phase::Verified, Some(n)).await?;
                }
            }
        }
        if self.reached(columns, Phase::Verified) || self.stopped() {
            return Ok(if self.stopped() {
                Stop::Interrupted
            } else {
                Stop::Done
            });
        }
        // Cut-over of every verified column together (index groups across tables included).
        if columns
            .iter()
            .any(|c| matches!(c.row.phase, Phase::Verified | Phase::Cutting))
        {
            self.cutover(columns).await?;
        }
        if self.reached(columns, Phase::Cutover) {
            return Ok(Stop::Done);
        }
        // Cleanup.
        for c in columns.iter_mut() {
            if c.row.phase != Phase::Cutover {
                continue;
            }
            for sql in c.plan.cleanup_sql() {
                self.exec_with_lock_retry(&c.plan.col.id.to_string(), &sql)
                    .await?;
            }
            self.set_phase(c, Phase::Done, None).await?;
            self.progress.note(&format!(
                "migrate: {}: done ({}ed upstream); remove migration = \"{}\" from its [[columns]] entry at the next restart of the proxies{}",
                c.plan.col.id,
                c.plan.direction,
                c.plan.direction,
                match c.plan.direction {
                    Direction::Encrypt => "; the old plaintext may still be in dead tuples, WAL, replicas, backups, pg_stat_statements and server logs: see docs/migration.md, \"What still holds the plaintext\"",
                    Direction::Decrypt => "; then remove the column's [[columns]] entry",
                }
            ));
        }
        Ok(Stop::Done)
    }

    /// Whether `--stop-after` is `phase` and every column has reached it.
    fn reached(&self, columns: &[Column], phase: Phase) -> bool {
        self.options.stop_after == Some(phase) && columns.iter().all(|c| c.row.phase >= phase)
    }

    async fn set_phase(
        &mut self,
        c: &mut Column,
        phase: Phase,
        rows: Option<i64>,
    ) -> Result<(), MigrateError> {
        let sql = state::set_phase_sql(&c.row, phase, rows);
        self.exec(&c.plan.col.id.to_string(), &sql).await?;
        c.row.phase = phase;
        Ok(())
    }

    /// Runs `sql` with a short lock timeout, retrying while the table is busy.
    async fn exec_with_lock_retry(&mut self, what: &str, sql: &str) -> Result<(), MigrateError> {
        let mut attempt = 0u32;
        loop {
            let r = self
                .client
                .query(&format!(
                    "SET lock_timeout = '{CUTOVER_LOCK_TIMEOUT}'; {sql}; RESET lock_timeout"
                ))
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(UpstreamError::Query(f)) if f.code == "55P03" && attempt < CUTOVER_ATTEMPTS => {
                    attempt += 1;
                    let _ = self.client.query("RESET lock_timeout").await;
                    self.progress.note(&format!(
                        "migrate: {what}: the table is busy (lock timeout); retrying"
                    ));
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                }
                Err(e) => return Err(up(what)(e)),
            }
        }
    }

    /// The prepare DDL of one column, skipping what exists.
    async fn prepare(&mut self, p: &ColumnPlan) -> Result<(), MigrateError> {
        let what = p.col.id.to_string();
        self.exec_with_lock_retry(&what, &p.add_shadow_sql())
            .await?;
        if let Some(check) = p.shadow_check() {
            let rows = self
                .exec(
                    &what,
                    &format!(
                        "SELECT convalidated FROM pg_catalog.pg_constraint WHERE conrelid = {} AND conname = {}",
                        p.table_oid,
                        crate::upstream::simple_query::quote_literal(check.name())
                    ),
                )
                .await?;
            let state = rows
                .first()
                .and_then(|r| r.first())
                .and_then(|r| r.first())
                .map(|v| v.as_deref() == Some("t"));
            if state.is_none() {
                self.exec_with_lock_retry(&what, check.add_sql(true).trim_end_matches(';'))
                    .await?;
            }
            if state != Some(true) {
                self.exec(&what, &check.validate_sql(check.name())).await?;
            }
        }
        self.exec(&what, &p.function_sql()).await?;
        self.exec_with_lock_retry(&what, &p.trigger_sql()).await?;
        if let Some(index) = p.index_sql() {
            let rows = self
                .exec(
                    &what,
                    &format!(
                        "SELECT i.indisvalid FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
                         WHERE i.indrelid = {} AND ic.relname = {}",
                        p.table_oid,
                        crate::upstream::simple_query::quote_literal(&p.names.index)
                    ),
                )
                .await?;
            let valid = rows
                .first()
                .and_then(|r| r.first())
                .and_then(|r| r.first())
                .map(|v| v.as_deref() == Some("t"));
            if valid == Some(false) {
                self.exec(&what, &p.drop_index_sql()).await?;
            }
            if valid != Some(true) {
                self.progress.note(&format!(
                    "migrate: {what}: building the shadow's index (CONCURRENTLY)"
                ));
                self.exec(&what, &index).await?;
            }
        }
        self.progress.note(&format!(
            "migrate: {what}: prepared (shadow column {})",
            p.names.shadow
        ));
        Ok(())
    }

    /// Sleeps as long as the rate asks, given `done` rows since `started`.
    async fn throttle(&self, started: Instant, done: u64) {
        let Some(rate) = self.options.rate.filter(|r| *r > 0) else {
            return;
        };
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }

    /// The backfill of one table: the block pass, then sweeps. The rows filled, or None when
    /// Ctrl-C stopped it.
    async fn backfill(&mut self, work: &TableWork<'_>) -> Result<Option<u64>, MigrateError> {
        let blocks = work.blocks(self.client).await?;
        let estimate = work.count_pending(self.client).await?;
        self.progress.start(&work.table, "backfill", estimate);
        let batch = self.options.batch.max(1) as u64;
        let started = Instant::now();
        let mut filled = 0u64;
        let mut at = 0u64;
        let mut step = 8u64;
        while at < blocks {
            if self.stopped() {
                self.progress.finish();
                return Ok(None);
            }
            let to = at.saturating_add(step).min(blocks.max(at + 1));
            let c = work.fill_blocks(self.client, self.keys, at, to).await?;
            self.progress.batch(c.read, c.written);
            filled += c.written;
            // Aim at `batch` rows per transaction.
            step = match (step * batch).checked_div(c.read) {
                None => (step * 2).min(65_536),
                Some(s) => s.clamp(1, 65_536),
            };
            at = to;
            self.throttle(started, filled).await;
        }
        for _ in 0..MAX_SWEEPS {
            if self.stopped() {
                self.progress.finish();
                return Ok(None);
            }
            let c = work
                .fill_pending(self.client, self.keys, self.options.batch.max(1))
                .await?;
            self.progress.batch(c.read, c.written);
            filled += c.written;
            self.throttle(started, filled).await;
            if c.read < SWEEP_ENOUGH {
                break;
            }
        }
        self.progress.finish();
        Ok(Some(filled))
    }

    /// The verification of one table, block by block. None when Ctrl-C stopped it.
    async fn verify(
        &mut self,
        work: &TableWork<'_>,
    ) -> Result<Option<fill::Verified>, MigrateError> {
        let blocks = work.blocks(self.client).await?;
        self.progress.start(&work.table, "verify", blocks);
        let mut total = fill::Verified::default();
        let step = 64u64;
        let mut at = 0u64;
        while at < blocks {
            if self.stopped() {
                self.progress.finish();
                return Ok(None);
            }
            let to = at.saturating_add(step);
            let v = work.verify_blocks(self.client, self.keys, at, to).await?;
            self.progress.batch(v.rows, 0);
            total.rows += v.rows;
            total.matched += v.matched;
            total.nulls += v.nulls;
            total.pending += v.pending;
            total.mismatched += v.mismatched;
            at = to;
        }
        self.progress.finish();
        Ok(Some(total))
    }

    /// The cut-over of every verified column, in one transaction: wait until no session could
    /// carry the old form across it ([`quiesce`]), announce it, wait until every proxy refuses
    /// the tables, then swap under the lock; an attempt that finds a late session or a busy
    /// table goes back to `verified` (the tables are served again) and tries again.
    async fn cutover(&mut self, columns: &mut [Column]) -> Result<(), MigrateError> {
        let idx: Vec<usize> = (0..columns.len())
            .filter(|i| {
                columns
                    .get(*i)
                    .is_some_and(|c| matches!(c.row.phase, Phase::Verified | Phase::Cutting))
            })
            .collect();
        let mut tables: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut oids: Vec<u32> = Vec::new();
        for i in &idx {
            if let Some(c) = columns.get(*i) {
                tables.entry(c.plan.table()).or_default().push(*i);
                if !oids.contains(&c.plan.table_oid) {
                    oids.push(c.plan.table_oid);
                }
            }
        }
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            // A run resumed in `cutting`: serve the tables while waiting.
            self.set_phases(columns, &idx, Phase::Verified).await?;
            self.wait_for_quiet(&oids).await?;
            self.set_phases(columns, &idx, Phase::Cutting).await?;
            self.progress.note(&format!(
                "migrate: cut-over announced; waiting {} ms so that every proxy refuses the tables meanwhile",
                state::ANNOUNCE_WAIT.as_millis()
            ));
            tokio::time::sleep(state::ANNOUNCE_WAIT).await;
            let started = Instant::now();
            match self.cutover_once(columns, &tables, &oids).await {
                Ok(filled) => {
                    for i in &idx {
                        if let Some(c) = columns.get_mut(*i) {
                            c.row.phase = Phase::Cutover;
                        }
                    }
                    self.progress.note(&format!(
                        "migrate: cut over {} column(s) of {} table(s) in {} ms ({} row(s) filled under the lock)",
                        idx.len(),
                        tables.len(),
                        started.elapsed().as_millis(),
                        filled
                    ));
                    return Ok(());
                }
                Err(e) => {
                    let _ = self.client.query("ROLLBACK").await;
                    // Serve the tables again (also when giving up: until the next run).
                    self.set_phases(columns, &idx, Phase::Verified).await?;
                    let busy = match &e {
                        MigrateError::Upstream {
                            source: UpstreamError::Query(f),
                            ..
                        } => f.code == "55P03",
                        MigrateError::Busy(_) => true,
                        _ => false,
                    };
                    if busy && attempt < CUTOVER_ATTEMPTS {
                        self.progress.note(&format!(
                            "migrate: cut-over attempt {attempt} given up ({e}); the tables are served again; retrying"
                        ));
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Sets the phase of the columns at `idx`.
    async fn set_phases(
        &mut self,
        columns: &mut [Column],
        idx: &[usize],
        phase: Phase,
    ) -> Result<(), MigrateError> {
        for i in idx {
            if let Some(c) = columns.get_mut(*i) {
                if c.row.phase != phase {
                    self.set_phase(c, phase, None).await?;
                }
            }
        }
        Ok(())
    }

    /// Waits (nothing refused meanwhile) until no other session runs a statement, holds a
    /// snapshot or holds a lock on the tables since before the wait began.
    async fn wait_for_quiet(&mut self, oids: &[u32]) -> Result<(), MigrateError> {
        let since = self
            .exec("cut-over", "SELECT pg_catalog.statement_timestamp()::text")
            .await?
            .first()
            .and_then(|r| r.first())
            .and_then(|r| r.first())
            .cloned()
            .flatten()
            .ok_or(MigrateError::Answer("no timestamp"))?;
        let since = format!(
            "{}::timestamptz",
            crate::upstream::simple_query::quote_literal(&since)
        );
        let started = Instant::now();
        let mut said: Option<Instant> = None;
        loop {
            let blockers = quiesce::blockers(self.client, oids, &since, true).await?;
            if blockers.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= QUIET_LIMIT {
                return Err(MigrateError::Refused(format!(
                    "the cut-over waited {} s for sessions that started before it ({}); let them finish or end them (pg_cancel_backend / pg_terminate_backend) and run migrate again",
                    QUIET_LIMIT.as_secs(),
                    blockers.join("; ")
                )));
            }
            if said.is_none_or(|t| t.elapsed() >= QUIET_REPORT) {
                self.progress.note(&format!(
                    "migrate: before the cut-over, waiting for sessions that started earlier: {}",
                    blockers.join("; ")
                ));
                said = Some(Instant::now());
            }
            if self.stopped() {
                return Err(MigrateError::Refused(
                    "Ctrl-C while waiting for the cut-over; run migrate again".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One cut-over transaction, COMMIT included; the rows filled under the lock.
    async fn cutover_once(
        &mut self,
        columns: &[Column],
        tables: &BTreeMap<String, Vec<usize>>,
        oids: &[u32],
    ) -> Result<u64, MigrateError> {
        let names: Vec<&str> = tables.keys().map(String::as_str).collect();
        self.exec(
            "cut-over",
            &format!(
                "BEGIN; SET LOCAL lock_timeout = '{CUTOVER_LOCK_TIMEOUT}'; LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
                names.join(", ")
            ),
        )
        .await?;
        // Work forwarded before every proxy refused the tables (the transaction started at
        // least ANNOUNCE_WAIT after the announcement, which is more than one second plus the
        // proxies' snapshot lifetime), and anything queued behind this lock.
        let late = quiesce::blockers(
            self.client,
            oids,
            "(pg_catalog.now() - interval '1 second')",
            false,
        )
        .await?;
        if !late.is_empty() {
            return Err(MigrateError::Busy(late.join("; ")));
        }
        // Objects created during the migration that use a column (a view would keep the old
        // column, and the cleanup could not drop it).
        for idx in tables.values() {
            for i in idx {
                let Some(c) = columns.get(*i) else { continue };
                let facts = preflight::facts(self.client, &c.plan.col).await?;
                if let Some(d) = facts.dependents.or(facts.foreign_keys) {
                    return Err(MigrateError::Refused(format!(
                        "{}: {d} uses the column now (created during the migration): drop it, run migrate again, and create it again afterwards",
                        c.plan.col.id
                    )));
                }
            }
        }
        let mut filled = 0;
        for (table, idx) in tables {
            let plans: Vec<&ColumnPlan> = idx
                .iter()
                .filter_map(|i| columns.get(*i).map(|c| &c.plan))
                .collect();
            let work = TableWork {
                table: table.clone(),
                columns: plans,
            };
            loop {
                let c = work
                    .fill_pending(self.client, self.keys, self.options.batch.max(1))
                    .await?;
                filled += c.written;
                if c.read == 0 || c.written == 0 {
                    break;
                }
            }
            let left = work.count_pending(self.client).await?;
            if left > 0 {
                return Err(MigrateError::Refused(format!(
                    "{table}: {left} row(s) could not be filled under the cut-over's lock"
                )));
            }
        }
        for idx in tables.values() {
            for i in idx {
                let Some(c) = columns.get(*i) else { continue };
                let mut sql = c.plan.swap_sql().join("; ");
                sql.push_str("; ");
                sql.push_str(&state::set_phase_sql(&c.row, Phase::Cutover, None));
                self.exec(&c.plan.col.id.to_string(), &sql).await?;
            }
        }
        self.exec("cut-over", "COMMIT").await?;
        Ok(filled)
    }

    /// `--abort`: undoes the migrations that have not been cut over.
    async fn abort(&mut self, columns: Vec<Column>) -> Result<Outcome, MigrateError> {
        if let Some(c) = columns.iter().find(|c| c.row.phase.swapped()) {
            return Err(MigrateError::Refused(format!(
                "{}: already cut over (phase {}); the way back is a migration in the other direction (migration = \"{}\")",
                c.plan.col.id,
                c.row.phase,
                match c.plan.direction {
                    Direction::Encrypt => "decrypt",
                    Direction::Decrypt => "encrypt",
                }
            )));
        }
        let mut undone = Vec::new();
        for mut c in columns.into_iter().filter(|c| !c.new) {
            // Proxies serve the column as before the migration once the row is gone; the
            // shadow is dropped after that (until then they hide it).
            if c.row.phase == Phase::Cutting {
                self.set_phase(&mut c, Phase::Verified, None).await?;
            }
            let what = c.plan.col.id.to_string();
            for sql in c.plan.abort_sql() {
                self.exec_with_lock_retry(&what, &sql).await?;
            }
            self.exec(&what, &state::delete_sql(&c.row)).await?;
            self.progress
                .note(&format!("migrate: {what}: aborted (shadow column dropped)"));
            undone.push(what);
        }
        Ok(Outcome::Aborted(undone))
    }
}

/// Why [`Migrator::advance`] returned.
enum Stop {
    Done,
    Interrupted,
}

/// The columns of the run: configured with `migration`, filtered by `--column`; index groups
/// must migrate together.
fn select<'s>(
    schema: &'s ProtectedSchema,
    migrations: &BTreeMap<pgseal_crypto::ColumnId, Direction>,
    only: &[String],
) -> Result<Vec<(&'s crate::rewrite::ProtectedColumn, Direction)>, MigrateError> {
    for name in only {
        let configured = schema.columns().find(|c| &c.id.to_string() == name);
        match configured {
            None => {
                return Err(MigrateError::Refused(format!(
                    "{name}: not a configured column (add a [[columns]] entry with migration = \"encrypt\")"
                )))
            }
            Some(c) if !migrations.contains_key(&c.id) => {
                return Err(MigrateError::Refused(format!(
                    "{name}: its [[columns]] entry has no migration = \"encrypt\" or \"decrypt\""
                )))
            }
            Some(_) => {}
        }
    }
    let picked: Vec<(&crate::rewrite::ProtectedColumn, Direction)> = schema
        .columns()
        .filter_map(|c| migrations.get(&c.id).map(|d| (c, *d)))
        .filter(|(c, _)| only.is_empty() || only.contains(&c.id.to_string()))
        .collect();
    if picked.is_empty() {
        return Err(MigrateError::Refused(
            "no [[columns]] entry has migration = \"encrypt\" or \"decrypt\": nothing to migrate"
                .into(),
        ));
    }
    // Index groups: columns of one group compare blind indexes, so those migrating must be cut
    // over together, in one direction.
    let mut groups: BTreeMap<&str, BTreeSet<Direction>> = BTreeMap::new();
    for (c, d) in &picked {
        if let Some(ix) = &c.index {
            groups.entry(ix.group.as_str()).or_default().insert(*d);
        }
    }
    for (group, dirs) in &groups {
        if dirs.len() > 1 {
            return Err(MigrateError::Refused(format!(
                "index group {group:?}: its columns migrate in both directions at once; migrate them one way"
            )));
        }
        for c in schema.columns() {
            let in_group = c
                .index
                .as_ref()
                .is_some_and(|ix| ix.group.as_str() == *group);
            if in_group
                && migrations.contains_key(&c.id)
                && !picked.iter().any(|(p, _)| p.id == c.id)
            {
                return Err(MigrateError::Refused(format!(
                    "{}: in index group {group:?} with columns of this run; the columns of a group migrate together (add it to --column)",
                    c.id
                )));
            }
        }
    }
    Ok(picked)
}

/// The columns of the run grouped by table (indexes into `columns`), for those whose phase
/// matches.
fn by_table(columns: &[Column], phase: impl Fn(Phase) -> bool) -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, c) in columns.iter().enumerate() {
        if phase(c.row.phase) {
            out.entry(c.plan.table()).or_default().push(i);
        }
    }
    out
}

/// `--dry-run`: where each column stands and the SQL still to run.
fn dry_run(columns: &[Column], finished: &[(String, Phase)]) -> String {
    let mut out = String::new();
    for (id, _) in finished {
        out.push_str(&format!("-- {id}: already migrated (phase done)\n"));
    }
    for c in columns {
        let p = &c.plan;
        out.push_str(&format!(
            "-- {}: {} (phase {}{}), shadow column {}, old column after the cut-over {}\n",
            p.col.id,
            p.direction,
            c.row.phase,
            if c.new { ", not started" } else { "" },
            p.names.shadow,
            p.names.old
        ));
        if c.row.phase <= Phase::Preparing {
            out.push_str("-- prepare:\n");
            out.push_str(&format!("{};\n", p.add_shadow_sql()));
            if let Some(check) = p.shadow_check() {
                out.push_str(&format!(
                    "{}\n{}\n",
                    check.add_sql(true),
                    check.validate_sql(check.name())
                ));
            }
            out.push_str(&format!("{};\n{};\n", p.function_sql(), p.trigger_sql()));
            if let Some(ix) = p.index_sql() {
                out.push_str(&format!("{ix};\n"));
            }
        }
        if c.row.phase <= Phase::Verified {
            out.push_str(&format!(
                "-- backfill: batches of rows WHERE {}, then verify every row\n",
                p.pending_sql()
            ));
        }
        if c.row.phase < Phase::Cutover {
            out.push_str(&format!(
                "-- cut-over (one transaction, after LOCK TABLE {} IN ACCESS EXCLUSIVE MODE and filling what is pending):\n",
                p.table()
            ));
            for s in p.swap_sql() {
                out.push_str(&format!("{s};\n"));
            }
        }
        if c.row.phase < Phase::Done {
            out.push_str("-- cleanup:\n");
            for s in p.cleanup_sql() {
                out.push_str(&format!("{s};\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::{IndexSpec, ProtectedColumn};
    use pgseal_crypto::value::{LogicalType, Normalisation};
    use pgseal_crypto::{ColumnId, IndexGroup};

    fn col(name: &str, group: Option<&str>) -> ProtectedColumn {
        let id = ColumnId::parse(name).unwrap();
        ProtectedColumn {
            id: id.clone(),
            ty: LogicalType::Text,
            keyring: "k".into(),
            index: group.map(|g| IndexSpec {
                group: IndexGroup::new(g).unwrap(),
                norm: Normalisation::default(),
                unique: false,
            }),
        }
    }

    fn refused<T: std::fmt::Debug>(r: Result<T, MigrateError>) -> String {
        match r {
            Err(MigrateError::Refused(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn selection_follows_the_configuration_and_keeps_index_groups_together() {
        let a = col("public.a.x", Some("g"));
        let b = col("public.b.y", Some("g"));
        let c = col("public.c.z", None);
        let schema = ProtectedSchema::from_columns([a.clone(), b.clone(), c.clone()]);
        let mut m = BTreeMap::new();
        assert!(refused(select(&schema, &m, &[])).contains("nothing to migrate"));
        m.insert(a.id.clone(), Direction::Encrypt);
        m.insert(b.id.clone(), Direction::Encrypt);
        assert_eq!(select(&schema, &m, &[]).unwrap().len(), 2);
        // One side of a group alone.
        assert!(refused(select(&schema, &m, &["public.a.x".into()])).contains("migrate together"));
        // Unknown or unflagged columns.
        assert!(refused(select(&schema, &m, &["public.nope.x".into()]))
            .contains("not a configured column"));
        assert!(refused(select(&schema, &m, &["public.c.z".into()])).contains("no migration"));
        // Both directions in one group.
        m.insert(b.id.clone(), Direction::Decrypt);
        assert!(refused(select(&schema, &m, &[])).contains("both directions"));
        // A column of the group already encrypted (no flag) does not block the other.
        m.remove(&b.id);
        assert_eq!(select(&schema, &m, &[]).unwrap().len(), 1);
    }
}
