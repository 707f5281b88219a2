//! The encryption layer: a [`crate::session::MessageInterceptor`] that rewrites statements on
//! protected columns (through [`crate::rewrite`]), encrypts bound values, and decrypts results.
//!
//! - [`EncryptionFactory`] holds what every session shares: the protected schema, the key and
//!   catalog sources, and an LRU of rewrite plans keyed by (SQL, search_path, catalog
//!   generation). Sessions to other databases get [`crate::session::PassThrough`].
//! - `session/` is the per-connection state machine: statements, portals, and an ordered queue
//!   of in-flight expectations so refusals, upstream answers and decrypted rows reach the client
//!   in protocol order, pipelines included; `session/name_resolution.rs` keeps its view of
//!   `search_path` and the role in step with the server's (and refuses what it cannot follow).
//! - `cells.rs` seals and opens cells; `rows.rs` maps RowDescriptions to protected columns and
//!   decrypts DataRows; `wire.rs` parses and builds the messages involved.
//! - Per-session memos keep the hot path off shared locks and hashes: `plan_memo.rs` (the last
//!   plans, per catalog generation and search_path), `key_cache.rs` (column keys, per key
//!   epoch: a new key snapshot or an expired grace period invalidates them), `row_memo.rs`
//!   (RowDescriptions and their result plans), `named.rs` (the unnamed statement and portal
//!   outside the hash maps).
//! - `leak_guard.rs` checks `bytea` result columns the proxy does not decrypt: a cell that a
//!   protected column's keys open (a function returning a protected table's rows) fails the
//!   result instead of reaching the client as ciphertext.
//!
//! # Lookups and key rotation
//! A rewritten statement with scalar lookups (`col = $1`) is rendered for the blind-index key
//! versions live when it is prepared: one `bytea` parameter per version (`= $k` or
//! `IN ($k, …)`). The session remembers those versions per prepared statement (also for
//! literal lookups, whose tags are in the SQL). When a Bind finds other versions live (a
//! rotation, a disabled or re-enabled version), it first re-prepares the statement upstream: a
//! hidden Close (named statements) and Parse of the re-rendered SQL, whose CloseComplete and
//! ParseComplete are not forwarded; if that Parse does not complete, the next Bind tries again.
//! A lookup therefore always searches every version that may be stored. Portals already bound
//! to the statement keep their plan: PostgreSQL does not close a portal when its statement is
//! closed, so one left suspended across a rotation goes on where it stopped (system test
//! `a_portal_suspended_across_a_rotation_keeps_its_rows`).
//!
//! Refusals ride the upstream's own error path: instead of the refused message the proxy sends
//! a decoy that PostgreSQL rejects (`Query`/`Parse` of a syntax error, `Bind` of a statement that
//! does not exist), and substitutes its own ErrorResponse for the upstream's. The upstream thus
//! aborts the transaction, skips to Sync and reports the transaction status exactly as if it had
//! refused the statement itself, and no plaintext is ever forwarded.
//!
//! # Statements and the catalog
//! Statements are analysed with the catalog snapshot's schema: partitions and inheritance
//! children of a protected table are analysed as that table, statements naming a view over one
//! are refused. A statement containing a word the snapshot does not know as a relation name
//! (nor noted as none at its generation) first triggers one catalog refresh, so a partition
//! created directly upstream is known before the first statement naming it; statements whose
//! first word names no relation (`SAVEPOINT`, `FETCH`, `SET`, …) are exempt. The scan is a
//! hand-written lexer over the text (no parse).
//!
//! # Results
//! A RowDescription field is decrypted when its type is `bytea` and `(table OID, attnum)` is a
//! protected column in the catalog snapshot (descendants map to their root's columns by name);
//! an unknown table OID triggers one catalog refresh (OIDs still unknown afterwards are
//! remembered per catalog generation, for all sessions). A field from a tainted relation (a
//! view over a protected table) fails the statement with `0A000`.
//! Values arrive as the client asked (text `\x…` or escape format, or binary) and leave in the
//! same format, rendered from the logical type. Protected columns are asked of the server in
//! binary once a statement's columns are known (a Describe), or for a `SELECT` on a statement
//! parsed again with the same plan, from the columns last described (`plan_memo.rs`; a hint
//! only: the RowDescription must confirm it before any row is handled). An Execute on a portal
//! whose columns are not known yet (its statement was never described) is preceded by a
//! Describe of the portal, whose answer the proxy keeps to itself. A cell that fails to decrypt ends the statement with
//! `XX001` (`58000` when keys are unavailable); the rest of its answers are dropped until
//! ReadyForQuery. When that ReadyForQuery says the server is inside a transaction block (`T`)
//! and the client has nothing else in flight, the proxy makes the server fail the transaction
//! too (it sends a statement the server rejects, keeps the error to itself, and forwards that
//! statement's ReadyForQuery `E`): later statements get `25P02` and `COMMIT` rolls back, as if
//! the server had failed the statement itself.
//!
//! # Known limits
//! - A result failed outside a transaction block, or in a Query string or pipeline that
//!   commits after it (`…; COMMIT` in one Query, a Sync closing an implicit transaction), or
//!   while the client already has its next statement in flight: the server has committed or
//!   will run that statement first, so ReadyForQuery reports what the server says.
//! - `SET search_path` is recognised at the start of each `;`-separated part of a statement
//!   and applied when it completes (later parts of the same Query string were analysed before).
//!   After any statement that may change name resolution (`SET`/`RESET` of `search_path` or a
//!   role, `RESET ALL`, `DISCARD ALL`) the session reads the server's `search_path` and
//!   `current_user` back at the next ReadyForQuery, and again when a transaction block ends or
//!   rolls back to a savepoint, so `SET LOCAL` and rolled-back `SET`s are followed. The client's
//!   ReadyForQuery waits for the answer; a client that pipelines past it has its statements
//!   analysed with the proxy's own reading until then.
//! - Values are rendered with `DateStyle = ISO` and `bytea_output = hex` whatever the session's
//!   settings; `timestamptz` text follows the session's `TimeZone` ([`zone`]).
//!
//! # Performance (benches/encrypt.rs; figures and commands in docs/benchmarks.md)
//! `encrypt/plan_cache_hit` ~0.2 µs; `encrypt/plan_passthrough` ~1 µs on a miss of the session's
//! plan memo (the unknown-word scan and two hash look-ups per word); decrypting a 10-column
//! DataRow with 3 protected columns ~2–2.5 µs; a whole point lookup through one session's
//! interceptor (`encrypt/session_lookup_{extended,prepared}`) ~4–5 µs.

mod cache;
pub mod cells;
mod key_cache;
mod leak_guard;
mod named;
mod plan_memo;
mod row_memo;
pub mod rows;
mod search_path;
mod session;
pub mod wire;
pub mod zone;

use std::sync::Arc;

pub use cache::{Analysis, Outcome, PlanCache};

use crate::catalog::{CatalogSnapshot, CatalogSource};
use crate::keys::KeySource;
use crate::rewrite::{rewrite_expecting, Expectation, Plan, ProtectedSchema};
use crate::session::{InterceptorFactory, MessageInterceptor, PassThrough, SessionInfo};
use crate::sql::gate::{self, prefilter, Facts, Names, Trust};
use crate::sql::lexer::LexerState;

/// Plans kept per factory.
const PLAN_CACHE_CAPACITY: usize = 1024;

/// Default largest statement text an encrypting session may send (bytes).
pub const DEFAULT_MAX_STATEMENT_BYTES: usize = 8 * 1024 * 1024;

/// How the gate treats the sessions of a factory.
#[derive(Debug, Clone)]
pub struct GatePolicy {
    /// Client user names trusted for migrations: their function and DO bodies may touch
    /// protected tables (never with literals in statements on them).
    pub trusted_migration_users: Vec<String>,
    /// Largest statement text an encrypting session may send; longer ones are refused with
    /// `54000` (program_limit_exceeded) before any analysis.
    pub max_statement_bytes: usize,
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy {
            trusted_migration_users: Vec::new(),
            max_statement_bytes: DEFAULT_MAX_STATEMENT_BYTES,
        }
    }
}

/// What the gate needs to know of the session a statement comes from.
#[derive(Debug, Clone, Copy)]
pub struct GateInput {
    pub lexer: LexerState,
    pub trust: Trust,
}

impl Default for GateInput {
    fn default() -> Self {
        GateInput {
            lexer: LexerState::SERVER_DEFAULT,
            trust: Trust::Untrusted,
        }
    }
}

impl GateInput {
    /// The cache variant of this input.
    fn variant(&self) -> u8 {
        self.lexer.key() | (u8::from(self.trust == Trust::Migration) << 5)
    }
}

/// What all sessions of one factory share.
pub(crate) struct Shared {
    pub(crate) schema: Arc<ProtectedSchema>,
    pub(crate) keys: Arc<dyn KeySource>,
    pub(crate) catalog: Arc<dyn CatalogSource>,
    cache: PlanCache,
    lower_names: Vec<String>,
    names_ascii: bool,
    pass: Outcome,
    pub(crate) policy: GatePolicy,
    /// The gate's names at a catalog generation.
    gate_names: std::sync::Mutex<Option<(u64, Arc<Names>)>>,
    /// The gate's facts by statement shape.
    shapes: gate::ShapeCache,
    /// Table OIDs a refresh at this catalog generation did not know (no protected columns):
    /// no session refreshes for them again until the generation changes.
    unprotected_oids: std::sync::Mutex<(u64, std::collections::HashSet<u32>)>,
    /// Words of statement texts that a refresh at this catalog generation did not know as
    /// relation names: no session refreshes for them again until the generation changes.
    non_relation_words: std::sync::Mutex<(u64, std::collections::HashSet<String>)>,
}

/// Entries kept in each "known not to be there" set before it stops growing.
const NOTED_CAP: usize = 100_000;

/// First words of statements that name no relation (transaction control, savepoints, session
/// settings, cursors, notifications): their other words (savepoint, cursor and channel names,
/// often unique per use) do not trigger catalog refreshes.
const NAMES_NO_RELATION: &[&str] = &[
    "abort",
    "begin",
    "checkpoint",
    "close",
    "commit",
    "deallocate",
    "discard",
    "end",
    "fetch",
    "listen",
    "move",
    "notify",
    "release",
    "reset",
    "rollback",
    "savepoint",
    "set",
    "show",
    "start",
    "unlisten",
];

impl Shared {
    /// Whether `sql` may name a protected table, a descendant of one or a tainted relation
    /// (the rewriter's own textual pre-check, without allocating for ASCII text).
    pub(crate) fn mentions_protected(&self, sql: &str, snapshot: &CatalogSnapshot) -> bool {
        if self.lower_names.is_empty() {
            return false;
        }
        let extra = snapshot.extra_lower_names();
        if self.names_ascii && sql.is_ascii() && extra.iter().all(|n| n.is_ascii()) {
            let b = sql.as_bytes();
            return self
                .lower_names
                .iter()
                .chain(extra)
                .any(|n| contains_ignore_ascii_case(b, n.as_bytes()));
        }
        let lower = sql.to_lowercase();
        self.lower_names
            .iter()
            .chain(extra)
            .any(|n| lower.contains(n.as_str()))
    }

    /// The words of `sql` (identifiers and keywords, folded) that name no relation of
    /// `snapshot` and were not noted as such at its generation: each may name a relation created
    /// upstream since the snapshot (a new partition of a protected table). Empty when none.
    fn unknown_words(&self, sql: &str, snapshot: &CatalogSnapshot) -> Vec<String> {
        let mut words = Vec::new();
        let Ok(noted) = self.non_relation_words.lock() else {
            return words;
        };
        let current = noted.0 == snapshot.generation();
        // Whether the current statement can name a relation (decided by its first word).
        let mut skip: Option<bool> = None;
        crate::rewrite::for_each_word(sql, |w| {
            if w == ";" {
                skip = None;
                return;
            }
            if *skip.get_or_insert_with(|| NAMES_NO_RELATION.contains(&w)) {
                return;
            }
            let known = snapshot.has_relation_named(w)
                || (current && noted.1.contains(w))
                || words.iter().any(|x: &String| x == w);
            if !known {
                words.push(w.to_owned());
            }
        });
        words
    }

    /// Records words a refresh at `generation` did not know as relation names (a full set
    /// starts over, so new words never refresh on every statement).
    fn note_non_relations(&self, generation: u64, words: Vec<String>) {
        if let Ok(mut g) = self.non_relation_words.lock() {
            if g.0 != generation || g.1.len() >= NOTED_CAP {
                g.0 = generation;
                g.1.clear();
            }
            g.1.extend(words);
        }
    }

    /// The snapshot to plan `sql` with, and whether the statement may touch a protected
    /// relation. A statement with a word the snapshot does not know as a relation name (nor
    /// noted as none at its generation) triggers one refresh first: the word may name a
    /// partition or child of a protected table created upstream since the last load, which
    /// must be analysed as its root. A failed refresh is a refusal (fail closed).
    fn snapshot_for(
        &self,
        sql: &str,
    ) -> Result<(Arc<CatalogSnapshot>, bool), crate::rewrite::Refusal> {
        let snapshot = self.catalog.snapshot();
        if self.lower_names.is_empty() {
            return Ok((snapshot, false));
        }
        if self.unknown_words(sql, &snapshot).is_empty() {
            let mentions = self.mentions_protected(sql, &snapshot);
            return Ok((snapshot, mentions));
        }
        let fresh = self.catalog.refresh().map_err(|e| {
            crate::rewrite::Refusal::new(
                "58000",
                format!(
                    "pgseal: the statement names a relation the catalog does not know yet, and {e}"
                ),
            )
        })?;
        let words = self.unknown_words(sql, &fresh);
        self.note_non_relations(fresh.generation(), words);
        let mentions = self.mentions_protected(sql, &fresh);
        Ok((fresh, mentions))
    }

    /// Whether every OID of `oids` is known to hold no protected column at `generation`.
    pub(crate) fn known_unprotected(&self, generation: u64, oids: &[u32]) -> bool {
        self.unprotected_oids
            .lock()
            .map(|g| g.0 == generation && oids.iter().all(|o| g.1.contains(o)))
            .unwrap_or(false)
    }

    /// Records OIDs a refresh at `generation` did not know.
    pub(crate) fn note_unprotected(&self, generation: u64, oids: Vec<u32>) {
        if let Ok(mut g) = self.unprotected_oids.lock() {
            if g.0 != generation {
                g.0 = generation;
                g.1.clear();
            }
            if g.1.len() < NOTED_CAP {
                g.1.extend(oids);
            }
        }
    }

    /// The gate's names for `snapshot` (built once per catalog generation).
    fn names_for(&self, snapshot: &CatalogSnapshot, schema: &ProtectedSchema) -> Arc<Names> {
        let generation = snapshot.generation();
        if let Ok(g) = self.gate_names.lock() {
            if let Some((gen, names)) = g.as_ref() {
                if *gen == generation {
                    return names.clone();
                }
            }
        }
        let names = Arc::new(Names::of(schema));
        if let Ok(mut g) = self.gate_names.lock() {
            *g = Some((generation, names.clone()));
        }
        names
    }

    /// The refusal of a statement text longer than the policy allows.
    fn too_long(&self, sql: &str) -> Option<Outcome> {
        (sql.len() > self.policy.max_statement_bytes).then(|| {
            Arc::new(Analysis::plain(Err(crate::rewrite::Refusal::new(
                "54000",
                format!(
                    "pgseal: statement of {} bytes exceeds the limit of {} bytes for sessions \
                     with protected tables (encryption.max_statement_bytes)",
                    sql.len(),
                    self.policy.max_statement_bytes
                ),
            ))))
        })
    }

    /// The outcome of `sql` under `search_path` for a session described by `input`
    /// (cached). A text that may touch a protected relation or change what names or the lexer
    /// mean goes through the gate ([`crate::sql::gate`]): PostgreSQL's own grammar, under the
    /// session's lexer settings. A text the gate finds naming a protected relation is then
    /// rewritten, and refused unless the rewriter read the same statements and relations.
    pub(crate) fn plan(&self, sql: &str, search_path: &[String], input: &GateInput) -> Outcome {
        if let Some(refused) = self.too_long(sql) {
            return refused;
        }
        let variant = input.variant();
        // A plan cached at the current generation was made after this text's words were
        // resolved against this very snapshot (known relations, or noted as none after a
        // refresh to it): nothing to look up again.
        if !self.lower_names.is_empty() {
            let generation = self.catalog.snapshot().generation();
            if let Some(o) = self.cache.get(sql, search_path, generation, variant) {
                return o;
            }
        }
        let snapshot = match self.snapshot_for(sql) {
            Ok((s, mentions)) => {
                let lexer_standard = input.lexer == LexerState::SERVER_DEFAULT;
                if !mentions && lexer_standard && !prefilter::needs_gate(sql, true) {
                    return self.pass.clone();
                }
                s
            }
            Err(r) => return Arc::new(Analysis::plain(Err(r))),
        };
        let generation = snapshot.generation();
        if let Some(o) = self.cache.get(sql, search_path, generation, variant) {
            return o;
        }
        // A snapshot that was never loaded knows nothing: the configured schema.
        let schema = snapshot.analysed_schema(&self.schema);
        let names = self.names_for(&snapshot, schema);
        let analysis = match gate::analyse_cached(
            sql,
            &input.lexer,
            &names,
            input.trust,
            &self.shapes,
            generation,
        ) {
            Err(r) => Analysis::plain(Err(r)),
            Ok(facts) => {
                let result = if facts.names_protected() {
                    let expect = Expectation {
                        statements: facts
                            .statements
                            .iter()
                            .map(|s| (s.kind, s.protected_relations.clone()))
                            .collect(),
                    };
                    rewrite_expecting(sql, schema, &*snapshot, search_path, &expect)
                } else {
                    Ok(Plan::PassThrough)
                };
                Analysis {
                    result,
                    facts: Some(facts),
                }
            }
        };
        let outcome: Outcome = Arc::new(analysis);
        self.cache
            .put(sql, search_path, generation, variant, outcome.clone());
        outcome
    }

    /// The gate's facts of `sql` for a session described by `input`, also for a text the
    /// pre-filter lets skip the gate (a statement sent behind a barrier still in flight is
    /// checked against it). Not cached. `Err`: the gate's refusal.
    pub(crate) fn facts(
        &self,
        sql: &str,
        input: &GateInput,
    ) -> Result<Arc<Facts>, crate::rewrite::Refusal> {
        let snapshot = self.catalog.snapshot();
        let schema = snapshot.analysed_schema(&self.schema);
        let names = self.names_for(&snapshot, schema);
        gate::analyse(sql, &input.lexer, &names, input.trust).map(Arc::new)
    }
}

/// Whether `hay` contains `needle` (lower-case ASCII), ignoring ASCII case: scans for the first
/// byte, then compares the rest.
fn contains_ignore_ascii_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let upper = first.to_ascii_uppercase();
    let Some(last_start) = hay.len().checked_sub(needle.len()) else {
        return false;
    };
    let mut from = 0;
    while let Some(pos) = hay
        .get(from..=last_start)
        .and_then(|h| h.iter().position(|&c| c == first || c == upper))
    {
        let at = from + pos;
        if hay
            .get(at + 1..at + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(rest))
        {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Builds the encrypting interceptor for sessions to the protected database.
pub struct EncryptionFactory {
    shared: Arc<Shared>,
    database: String,
}

impl EncryptionFactory {
    /// A factory for sessions to `database`, with the protected columns of `schema`.
    pub fn new(
        schema: Arc<ProtectedSchema>,
        database: String,
        keys: Arc<dyn KeySource>,
        catalog: Arc<dyn CatalogSource>,
    ) -> Self {
        let lower_names: Vec<String> = schema.lower_table_names().iter().cloned().collect();
        let names_ascii = lower_names.iter().all(|n| n.is_ascii());
        Self {
            shared: Arc::new(Shared {
                schema,
                keys,
                catalog,
                cache: PlanCache::new(PLAN_CACHE_CAPACITY),
                lower_names,
                names_ascii,
                pass: Arc::new(Analysis::plain(Ok(Plan::PassThrough))),
                policy: GatePolicy::default(),
                gate_names: std::sync::Mutex::new(None),
                shapes: gate::ShapeCache::default(),
                unprotected_oids: std::sync::Mutex::new((u64::MAX, Default::default())),
                non_relation_words: std::sync::Mutex::new((u64::MAX, Default::default())),
            }),
            database,
        }
    }

    /// The same factory with `policy` for its sessions.
    pub fn with_policy(mut self, policy: GatePolicy) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.policy = policy;
        }
        self
    }

    /// The rewrite outcome of `sql` (through the plan cache), as a session with the server's
    /// default settings would get it.
    pub fn plan(&self, sql: &str, search_path: &[String]) -> Outcome {
        self.shared.plan(sql, search_path, &GateInput::default())
    }

    /// Decrypts one DataRow body described by `rows` into `out` (a complete DataRow message),
    /// rendering text in UTC. Exposed for benchmarks.
    pub fn decrypt_data_row(
        &self,
        rows: &rows::RowPlan,
        body: &[u8],
        out: &mut bytes::BytesMut,
    ) -> Result<(), rows::RowError> {
        rows::decrypt_data_row(
            &self.shared.schema,
            &*self.shared.keys,
            &mut key_cache::KeyCache::default(),
            rows,
            body,
            out,
            &zone::Zone::utc(),
        )
    }
}

impl EncryptionFactory {
    /// Checks one DataRow body of columns the proxy does not decrypt for values of protected
    /// columns (`leak_guard`), as a session does before forwarding it. Exposed for benchmarks.
    pub fn check_data_row(&self, rows: &rows::RowPlan, body: &[u8]) -> Result<(), rows::RowError> {
        rows::check_data_row(&self.shared.schema, &*self.shared.keys, rows, body)
    }
}

/// The session's real settings at start (role and database defaults applied): read before
/// the client can send anything, so the first statement is analysed with them.
const STARTUP_PROBE: &str = "SELECT pg_catalog.current_setting('search_path'), current_user, \
     pg_catalog.current_setting('backslash_quote') /* pgseal */";
const STARTUP_PROBE_COLUMNS: &[&str] = &["search_path", "current_user", "backslash_quote"];

impl InterceptorFactory for EncryptionFactory {
    fn create(&self, info: &SessionInfo) -> Box<dyn MessageInterceptor> {
        if info.database != self.database || self.shared.schema.is_empty() {
            return Box::new(PassThrough);
        }
        Box::new(session::EncryptSession::new(self.shared.clone(), info))
    }

    fn startup_probe(&self, database: &str) -> Option<(&'static str, &'static [&'static str])> {
        (database == self.database && !self.shared.schema.is_empty())
            .then_some((STARTUP_PROBE, STARTUP_PROBE_COLUMNS))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_gate;

#[cfg(test)]
mod precheck_tests {
    use super::contains_ignore_ascii_case as c;

    #[test]
    fn case_insensitive_substring() {
        assert!(c(b"SELECT * FROM Patients", b"patients"));
        assert!(c(b"patients", b"patients"));
        assert!(c(b"xpatientsx", b"patients"));
        assert!(!c(b"SELECT * FROM patient", b"patients"));
        assert!(!c(b"", b"patients"));
        assert!(c(b"ppatients", b"patients"));
    }
}
