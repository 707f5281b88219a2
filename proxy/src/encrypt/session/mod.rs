//! The per-connection encryption state machine (see the module docs of [`super`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tracing::warn;

use super::cells::{self, CellError};
use super::key_cache::KeyCache;
use super::leak_guard;
use super::named::Named;
use super::plan_memo::PlanMemo;
use super::row_memo::RowMemo;
use super::rows::{self, RowPlan};
use super::search_path::{self, Change, Setting};
use super::wire::{self, BindMsg, ParseMsg};
use super::zone::Zone;
use super::{GateInput, Outcome, Shared};
use crate::keys::ColumnCrypto;
use crate::protocol::messages::{error_response, Severity};
use crate::protocol::ProtocolError;
use crate::rewrite::plan::{IndexForms, LookupWidths, Piece};
use crate::rewrite::{Plan, ProtectedColumn, RewritePlan, Slot, UpstreamParam};
use crate::session::{Frame, InterceptError, MessageInterceptor, Outbox, SessionInfo, TagSet};
use crate::sql::gate::{Facts, Trust};
use crate::sql::lexer::LexerState;
use pgseal_crypto::value::LogicalType;

mod name_resolution;

/// SQL the upstream rejects at parse time: stands in for a refused Query or Parse.
const DECOY_SQL: &str = "pgseal_statement_refused_by_proxy";
/// What the proxy sends (a syntax error) to make the server fail a transaction block in which
/// the proxy failed a result the server had produced without error.
pub(super) const ABORT_SQL: &str = "pgseal_result_refused_by_proxy_aborts_transaction";
/// What the proxy asks the server after a statement that may have changed name resolution.
pub(super) const RESYNC_SQL: &str = "SELECT pg_catalog.current_setting('search_path'), \
     current_user, pg_catalog.current_setting('backslash_quote') /* pgseal */";
/// A statement name that does not exist upstream: stands in for a refused Bind.
pub(super) const DECOY_STATEMENT: &str = "pgseal\u{1}refused\u{1}statement";

const FRONTEND_TAGS: TagSet = TagSet::EMPTY
    .with(b'Q')
    .with(b'P')
    .with(b'B')
    .with(b'D')
    .with(b'E')
    .with(b'C')
    .with(b'S')
    .with(b'F')
    .with(b'c')
    .with(b'f');

const BACKEND_TAGS: TagSet = TagSet::EMPTY
    .with(b'T')
    .with(b'D')
    .with(b't')
    .with(b'C')
    .with(b'E')
    .with(b'Z')
    .with(b's')
    .with(b'n')
    .with(b'1')
    .with(b'2')
    .with(b'3')
    .with(b'I')
    .with(b'N')
    .with(b'V')
    .with(b'G')
    .with(b'H')
    .with(b'd')
    .with(b'c')
    .with(b'S');

/// An upstream Bind parameter: format code and value (None = NULL).
type OwnedParam = (i16, Option<Vec<u8>>);

/// A refusal: SQLSTATE and message.
type Refused = (&'static str, String);

/// Why a RowDescription has no result plan.
enum DescribedError {
    /// The message is malformed.
    Protocol(ProtocolError),
    /// The result must not be handed over, or the catalog could not be read.
    Refused(Refused),
}

/// What a statement does to the session once it completes.
#[derive(Debug, Clone, Default)]
struct Effects {
    search_path: Option<Change>,
    /// The statement may change name resolution in ways only the server knows (see
    /// [`search_path::needs_resync`]).
    resync: bool,
    /// The statement may change how the server lexes SQL (see [`crate::sql::lexer`]).
    lexer: bool,
    /// What PostgreSQL's grammar read in it (barriers among it), when it went through the
    /// gate.
    facts: Option<Arc<Facts>>,
    /// Its barriers, as they stand behind those in flight when it was sent.
    pending: Vec<crate::sql::gate::Pending>,
}

impl Effects {
    /// Whether the statement may change how the server resolves names.
    fn changes_resolution(&self) -> bool {
        self.search_path.is_some()
            || self.resync
            || self.facts.as_ref().is_some_and(|f| f.resolution_change())
    }

    /// Whether the statement is a catalog barrier.
    fn is_barrier(&self) -> bool {
        self.facts
            .as_ref()
            .is_some_and(|f| f.barriers().next().is_some())
    }
}

/// A prepared statement as the client named it.
struct Stmt {
    /// Distinguishes a statement from a later one of the same name.
    id: u64,
    outcome: Outcome,
    declared: Vec<u32>,
    rows: Option<Arc<RowPlan>>,
    effects: Effects,
    /// The blind-index key versions the upstream statement was rendered for; None when unknown
    /// (keys unavailable at Parse, or a re-prepare that did not complete): the next Bind
    /// re-prepares it.
    keys: Option<KeyVersions>,
    /// The session's name-resolution epoch the statement was analysed at.
    path_epoch: u64,
    /// The catalog generation the statement was analysed at (or last found to plan the same).
    catalog: u64,
    /// The client's Parse message (its SQL is analysed again when the epoch has changed).
    parse: Bytes,
}

/// The key versions a rendering of a rewrite plan depends on: for each scalar lookup parameter
/// (in upstream order), then each literal slot (in slot order), the blind-index versions of the
/// column that may be stored, newest first (a lookup), or the cells' form with the sealing data-key
/// version and tag generations (a value sealed into the SQL); then the form of each index piece.
/// A scalar lookup has one upstream parameter per version, literal lookups and values are
/// rendered into the SQL, so a statement prepared for other versions must be re-prepared before
/// it is bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KeyVersions(Vec<Vec<u32>>);

/// A statement's new upstream rendering, to be prepared before a Bind.
struct Reparse {
    /// The statement's id.
    id: u64,
    text: String,
    param_oids: Vec<u32>,
    versions: KeyVersions,
}

/// What a Bind needs to know about the live keys of a plan's lookups.
struct LookupKeys {
    /// Per upstream parameter, the column keys of a scalar lookup (None for other parameters).
    cryptos: Vec<Option<Arc<ColumnCrypto>>>,
    /// The widths of the scalar lookups (one tag per blind-index key).
    widths: LookupWidths,
    /// The live forms of the plan's index pieces (joins, ON CONFLICT targets).
    forms: IndexForms,
    /// The versions the rendering depends on.
    versions: KeyVersions,
}

/// A portal.
struct Portal {
    /// Distinguishes a portal from a later one of the same name.
    id: u64,
    /// The statement it was bound from (name, id).
    statement: (String, u64),
    rows: Option<Arc<RowPlan>>,
    /// The client's per-column result format codes when the proxy asked the upstream for
    /// protected columns in binary instead.
    client_formats: Option<Vec<i16>>,
    effects: Effects,
    /// A Describe of this portal is in flight (its answer will give `rows`).
    describing: bool,
}

/// Row state of a simple query (or FunctionCall) in flight.
#[derive(Default)]
struct QueryState {
    rows: Option<Arc<RowPlan>>,
    effects: Effects,
}

/// One expected answer from the upstream, in order.
enum Pending {
    Parse,
    Bind,
    Close,
    /// A Close or Parse the proxy sent on its own to re-prepare a statement before a Bind
    /// (after a key rotation): its completion is not forwarded. For the Parse, the statement
    /// (name, id) whose upstream rendering is unknown if the Parse does not complete.
    Hidden {
        reprepared: Option<(String, u64)>,
    },
    DescribeStmt {
        name: String,
        id: u64,
        forward: bool,
    },
    DescribePortal {
        name: String,
        id: u64,
        forward: bool,
    },
    /// An Execute, with what is known of its portal when it was sent (the rows may still come
    /// from a Describe of the portal answered before it).
    Execute {
        portal_id: u64,
        rows: Option<Arc<RowPlan>>,
        effects: Effects,
    },
    /// A Sync, with the frontend sequence number of the message.
    Sync(u64),
    Query(QueryState),
    /// A decoy was sent; its error is replaced by this one.
    Refused {
        error: Bytes,
        simple: bool,
    },
    /// The proxy's own query of the server's `search_path` and `current_user`: its answers are
    /// not forwarded, except its ReadyForQuery when the client's own was held back for it.
    Resync {
        forward_ready: bool,
    },
}

/// The encrypting interceptor of one session.
pub(crate) struct EncryptSession {
    shared: Arc<Shared>,
    user: String,
    setting: Setting,
    initial: Setting,
    search_path: Vec<String>,
    statements: Named<Stmt>,
    portals: Named<Portal>,
    queue: VecDeque<Pending>,
    skip_until_sync: bool,
    discard_until_ready: bool,
    /// The proxy failed a result since the last ReadyForQuery (the server saw no error).
    failed_result: bool,
    /// Bumped whenever the proxy's view of name resolution (search_path, user) changes: a
    /// statement analysed at another epoch is checked again before it is bound (PostgreSQL
    /// re-analyses a prepared statement after a search_path change).
    path_epoch: u64,
    /// In a `COPY … TO STDOUT`: whether its format is binary (its data is checked for values
    /// of protected columns, see [`super::leak_guard`]).
    copy_out: Option<bool>,
    /// A statement that may change name resolution completed: re-read the server's values at
    /// the next ReadyForQuery.
    resync_pending: bool,
    /// Such a statement ran inside the current transaction block: the server may undo it
    /// (`SET LOCAL`, rollback), so re-read at its end and after a rollback to a savepoint.
    resync_at_txn_end: bool,
    /// A `ROLLBACK` completed since the last ReadyForQuery.
    rolled_back: bool,
    /// Sequence number of the last frontend message.
    fe_seq: u64,
    /// Sequence numbers of CopyDone/CopyFail messages whose COPY has not started yet.
    copy_ends: VecDeque<u64>,
    /// In COPY FROM STDIN mode before the client's CopyDone/CopyFail: Syncs are ignored by the
    /// server, so they are not expected.
    in_copy_in: bool,
    /// Source of statement and portal ids.
    next_id: u64,
    /// The session's `TimeZone` (ParameterStatus), for timestamptz text.
    zone: Zone,
    /// RowDescriptions seen recently, with their plans.
    row_memo: RowMemo,
    /// Column keys used recently (see [`KeyCache`]).
    key_cache: RefCell<KeyCache>,
    /// Plans of recent statements (see [`PlanMemo`]).
    plan_memo: PlanMemo,
    /// The session's lexer settings as the server last reported them.
    lexer: LexerState,
    /// A statement that may have changed the lexer settings completed: they are uncertain
    /// until the server's values are read back.
    lexer_resync: bool,
    /// Whether the client user is trusted for migrations (function bodies).
    trust: Trust,
    /// Barriers among the statements parsed since the last ReadyForQuery (a client may parse
    /// a barrier and a statement using its names before executing either).
    parsed_barriers: Vec<crate::sql::gate::Pending>,
}

fn proto(e: ProtocolError) -> InterceptError {
    InterceptError {
        code: "08P01",
        message: format!("protocol violation: {e}"),
    }
}

fn error_bytes(code: &str, message: &str) -> Bytes {
    let mut b = BytesMut::new();
    error_response(&mut b, Severity::Error, code, message);
    b.freeze()
}

impl EncryptSession {
    pub(crate) fn new(shared: Arc<Shared>, info: &SessionInfo) -> Self {
        let probed = |name: &str| {
            info.probe
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        // The server's own values at session start (role and database defaults applied),
        // when the session's start-up read them; else the start-up packet's.
        let initial = probed("search_path")
            .and_then(search_path::parse_shown)
            .or_else(|| search_path::from_startup(&info.params))
            .unwrap_or_else(search_path::default_setting);
        let user = probed("current_user")
            .unwrap_or(&info.upstream_user)
            .to_owned();
        let search_path = search_path::expand(&initial, &user);
        let mut lexer = LexerState::SERVER_DEFAULT;
        for (k, v) in &info.server_params {
            lexer.apply_report(k, v);
        }
        if let Some(v) = probed("backslash_quote") {
            lexer.apply_backslash_quote(v);
        }
        let trust = if shared.policy.trusted_migration_users.contains(&info.user) {
            Trust::Migration
        } else {
            Trust::Untrusted
        };
        Self {
            shared,
            user,
            setting: initial.clone(),
            initial,
            search_path,
            statements: Named::default(),
            portals: Named::default(),
            queue: VecDeque::new(),
            skip_until_sync: false,
            discard_until_ready: false,
            failed_result: false,
            path_epoch: 0,
            copy_out: None,
            resync_pending: false,
            resync_at_txn_end: false,
            rolled_back: false,
            fe_seq: 0,
            copy_ends: VecDeque::new(),
            in_copy_in: false,
            next_id: 0,
            zone: info
                .server_params
                .iter()
                .find(|(k, _)| k == "TimeZone")
                .map_or_else(Zone::utc, |(_, v)| Zone::from_setting(v)),
            row_memo: RowMemo::default(),
            key_cache: RefCell::new(KeyCache::default()),
            plan_memo: PlanMemo::default(),
            lexer,
            lexer_resync: false,
            trust,
            parsed_barriers: Vec::new(),
        }
    }

    /// Whether the lexer settings may have changed without the proxy knowing their values:
    /// a statement that may change them is in flight, or its values are not read back yet.
    fn lexer_unsettled(&self) -> bool {
        self.lexer_resync
            || self.queue.iter().any(|p| match p {
                Pending::Execute { effects, .. } => effects.lexer,
                Pending::Query(q) => q.effects.lexer,
                _ => false,
            })
    }

    /// What the gate must know of this session for a statement sent now.
    fn gate_input(&self) -> GateInput {
        GateInput {
            lexer: if self.lexer_unsettled() {
                self.lexer.unsettled()
            } else {
                self.lexer
            },
            trust: self.trust,
        }
    }

    /// ParameterStatus: follows `TimeZone` and the lexer settings; always forwarded.
    fn on_parameter_status(&mut self, frame: Frame, out: &mut Outbox<'_>) {
        let mut parts = frame.body().split(|b| *b == 0);
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            out.to_client.extend_from_slice(frame.raw());
            return;
        };
        match (std::str::from_utf8(name), std::str::from_utf8(value)) {
            (Ok("TimeZone"), Ok(v)) if !self.zone.is(v) => {
                self.zone = Zone::from_setting(v);
            }
            (Ok("TimeZone"), Ok(_)) => {}
            (Ok(n), Ok(v)) => {
                let before = self.lexer;
                if self.lexer.apply_report(n, v) && self.lexer != before {
                    self.plan_memo.clear();
                }
            }
            // A value the proxy cannot read: the lexer state is not known.
            (Ok(n), Err(_)) if self.lexer.apply_report(n, "unknown") => {
                self.lexer_resync = true;
                self.plan_memo.clear();
            }
            _ => {}
        }
        out.to_client.extend_from_slice(frame.raw());
    }

    fn column(&self, id: &pgseal_crypto::ColumnId) -> Result<&ProtectedColumn, CellError> {
        self.shared
            .schema
            .column(id.schema(), id.table(), id.column())
            .ok_or_else(|| CellError::Key(crate::keys::KeyError::UnknownColumn(id.to_string())))
    }

    /// The plan of `sql` under the session's `search_path`: from the session's memo at the
    /// current catalog generation, else from the shared cache (or analysed).
    fn plan(&mut self, sql: &str) -> Outcome {
        let input = self.gate_input();
        if input.lexer != self.lexer {
            // Settings in flight: analysed under every reading, never remembered.
            return self.shared.plan(sql, &self.search_path, &input);
        }
        let generation = self.shared.catalog.snapshot().generation();
        if let Some(o) = self.plan_memo.get(sql, generation) {
            return o;
        }
        let outcome = self.shared.plan(sql, &self.search_path, &input);
        self.plan_memo.put(sql, generation, &outcome);
        outcome
    }

    /// The columns statement `s` was last described with under the same plan, when it is
    /// a query whose shape the hint may predict (a `SELECT`: a wrong guess fails the result,
    /// and for a statement that writes, the write would already be done).
    fn rows_hint(&self, s: &Stmt) -> Option<Arc<RowPlan>> {
        let Ok(Plan::Rewrite(plan)) = &**s.outcome else {
            return None;
        };
        let select = matches!(plan.template.first(), Some(Piece::Sql(t))
            if t.trim_start().get(..6).is_some_and(|w| w.eq_ignore_ascii_case("select")));
        if !select {
            return None;
        }
        self.plan_memo.rows_hint(&s.outcome)
    }

    fn crypto(
        &self,
        id: &pgseal_crypto::ColumnId,
    ) -> Result<Arc<crate::keys::ColumnCrypto>, CellError> {
        let keys = &*self.shared.keys;
        match self.key_cache.try_borrow_mut() {
            Ok(mut cache) => cache.column(keys, id),
            Err(_) => keys.column(id),
        }
        .map_err(CellError::Key)
    }

    /// The live keys of a plan's lookups (no key lookups for a plan without any).
    fn lookup_keys(&self, plan: &RewritePlan) -> Result<LookupKeys, CellError> {
        let mut cryptos = Vec::with_capacity(plan.upstream_params.len());
        let mut widths = Vec::new();
        let mut versions = Vec::new();
        let list = |c: &ColumnCrypto| -> Vec<u32> {
            c.lookup_keys().iter().map(|k| k.key_version()).collect()
        };
        for u in &plan.upstream_params {
            match u {
                UpstreamParam::Lookup { column, .. } => {
                    let c = self.crypto(column)?;
                    widths.resize(cryptos.len(), 1);
                    widths.push(c.lookup_keys().len().max(1));
                    versions.push(list(&c));
                    cryptos.push(Some(c));
                }
                _ => cryptos.push(None),
            }
        }
        for slot in &plan.slots {
            match slot {
                Slot::Lookup { column, .. } => versions.push(list(&*self.crypto(column)?)),
                // A literal sealed into the upstream statement: sealed again (and the statement
                // prepared again) when the sealing keys or the cells' form change, so that a
                // statement prepared before a rotation does not go on writing the old form.
                Slot::Value { column, .. } => {
                    let c = self.crypto(column)?;
                    versions.push(vec![
                        c.form().code(),
                        c.active_version().unwrap_or(0),
                        c.active_index().map_or(0, |k| k.key_version()),
                        c.second_index().map_or(0, |k| k.key_version()),
                    ]);
                }
            }
        }
        let forms = self.index_forms(plan)?;
        versions.extend(forms.0.iter().map(|f| vec![f.code()]));
        Ok(LookupKeys {
            cryptos,
            forms,
            widths: LookupWidths(widths),
            versions: KeyVersions(versions),
        })
    }

    /// The live forms of the cells a plan's index pieces compare (a blind-index rotation in
    /// progress or not); empty without index pieces.
    fn index_forms(&self, plan: &RewritePlan) -> Result<IndexForms, CellError> {
        let mut forms = Vec::new();
        for column in plan.index_piece_columns() {
            forms.push(self.crypto(column)?.form());
        }
        Ok(IndexForms(forms))
    }

    /// The upstream Parse of a rewrite plan rendered for `widths`: the SQL (slots rendered with
    /// fresh ciphertext) and the parameter type OIDs (plain parameters as the client declared).
    fn upstream_parse(
        &self,
        plan: &RewritePlan,
        declared: &[u32],
        widths: &LookupWidths,
        forms: &IndexForms,
    ) -> Result<(String, Vec<u32>), (&'static str, String)> {
        let text = self.render(plan, widths, forms)?;
        let oids = plan
            .upstream_param_oids(widths)
            .into_iter()
            .zip(
                plan.upstream_params
                    .iter()
                    .map(Some)
                    .chain(std::iter::repeat(None)),
            )
            .map(|(oid, u)| match u {
                Some(UpstreamParam::Plain(n)) => {
                    declared.get(n.saturating_sub(1)).copied().unwrap_or(0)
                }
                _ => oid,
            })
            .collect();
        Ok((text, oids))
    }

    /// The SQL to send for a rewrite plan: slots rendered with fresh ciphertext, scalar lookups
    /// for `widths`.
    fn render(
        &self,
        plan: &RewritePlan,
        widths: &LookupWidths,
        forms: &IndexForms,
    ) -> Result<String, (&'static str, String)> {
        plan.render(widths, forms, |slot| -> Result<String, CellError> {
            match slot {
                Slot::Value {
                    column,
                    literal_text,
                } => {
                    let col = self.column(column)?;
                    let value = col
                        .ty
                        .parse_text_in(literal_text, &self.zone)
                        .map_err(|e| CellError::input(col, e))?;
                    let crypto = self.crypto(column)?;
                    let mut stored = Vec::with_capacity(literal_text.len() + 64);
                    cells::seal(&crypto, col, &value, &mut stored)?;
                    Ok(cells::bytea_literal(&stored))
                }
                Slot::Lookup {
                    column,
                    literal_texts,
                    ..
                } => {
                    let col = self.column(column)?;
                    let crypto = self.crypto(column)?;
                    let mut tags = Vec::new();
                    for t in literal_texts {
                        let value = col
                            .ty
                            .parse_text_in(t, &self.zone)
                            .map_err(|e| CellError::input(col, e))?;
                        cells::lookup_tags(&crypto, col, &value, &mut tags)?;
                    }
                    Ok(cells::tag_array_literal(&tags))
                }
            }
        })
        .map_err(|e| match e {
            Some(c) => (c.sqlstate(), c.to_string()),
            None => (
                "XX000",
                "pgseal: internal error rendering a statement".into(),
            ),
        })
    }

    /// The upstream parameters of a Bind on a rewritten statement.
    /// Scalar lookups get one parameter per blind-index key, as `keys` says: the first tag at the
    /// lookup's own position, the others after the plan's parameters.
    fn bind_params(
        &self,
        plan: &RewritePlan,
        declared: &[u32],
        bind: &BindMsg<'_>,
        keys: &LookupKeys,
    ) -> Result<Vec<OwnedParam>, CellError> {
        // A binary value arrives in the type the client declared, which may differ from the
        // column's (int4 for an int8 column): read it as declared, convert through text.
        let parse = |col: &ProtectedColumn, idx: usize, format: i16, v: &[u8]| {
            let as_declared = declared
                .get(idx)
                .and_then(|o| LogicalType::from_oid(*o))
                .filter(|t| *t != col.ty && format != 0);
            match as_declared {
                Some(t) => {
                    let value = t.parse_binary(v).map_err(|e| CellError::input(col, e))?;
                    col.ty
                        .parse_text_in(&value.to_text(), &self.zone)
                        .map_err(|e| CellError::input(col, e))
                }
                None => cells::parse_value(col, format, v, &self.zone),
            }
        };
        // PostgreSQL's own checks, made here because the upstream statement has other
        // parameters than the client's.
        let expected = plan.client_param_count.max(declared.len());
        if bind.params.len() != expected {
            return Err(CellError::Protocol(format!(
                "bind message supplies {} parameters, but prepared statement \"{}\" requires {}",
                bind.params.len(),
                bind.statement,
                expected
            )));
        }
        let nf = bind.param_formats.len();
        if nf > 1 && nf != expected {
            return Err(CellError::Protocol(format!(
                "bind message has {nf} parameter formats but {expected} parameters"
            )));
        }
        if let Some(f) = bind.param_formats.iter().find(|f| **f != 0 && **f != 1) {
            return Err(CellError::Protocol(format!("unsupported format code: {f}")));
        }
        let mut out = Vec::with_capacity(plan.upstream_params.len());
        let mut extra: Vec<OwnedParam> = Vec::with_capacity(plan.extra_param_count(&keys.widths));
        for (i, up) in plan.upstream_params.iter().enumerate() {
            let n = up.client_param();
            let idx = n.saturating_sub(1);
            let format = bind.param_format(idx);
            let value = bind.params.get(idx).copied().flatten();
            match up {
                UpstreamParam::Plain(_) => out.push((format, value.map(<[u8]>::to_vec))),
                UpstreamParam::Value { column, .. } => {
                    let Some(v) = value else {
                        out.push((1, None));
                        continue;
                    };
                    let col = self.column(column)?;
                    let parsed = parse(col, idx, format, v)?;
                    let crypto = self.crypto(column)?;
                    let mut stored = Vec::with_capacity(v.len() + 64);
                    cells::seal(&crypto, col, &parsed, &mut stored)?;
                    out.push((1, Some(stored)));
                }
                UpstreamParam::Lookup { column, .. } => {
                    let width = keys.widths.of(i);
                    let Some(v) = value else {
                        out.push((1, None));
                        extra.extend((1..width).map(|_| (1, None)));
                        continue;
                    };
                    let col = self.column(column)?;
                    let parsed = parse(col, idx, format, v)?;
                    let crypto = match keys.cryptos.get(i) {
                        Some(Some(c)) => c.clone(),
                        _ => self.crypto(column)?,
                    };
                    let mut tags = Vec::with_capacity(width);
                    cells::lookup_tags(&crypto, col, &parsed, &mut tags)?;
                    // One tag per blind-index key the statement was prepared for: never fewer
                    // parameters than tags (a key's tags would go unsearched); a repeated tag
                    // fills a statement prepared for more keys.
                    let Some(last) = tags.last().copied() else {
                        return Err(CellError::Key(crate::keys::KeyError::NoActiveVersion {
                            keyring: crypto.keyring().to_owned(),
                            column: column.to_string(),
                        }));
                    };
                    if tags.len() > width {
                        return Err(CellError::Protocol(format!(
                            "pgseal: the key versions of column {column} changed while binding; retry"
                        )));
                    }
                    tags.resize(width, last);
                    let mut tags = tags.into_iter().map(|t| (1, Some(t.to_vec())));
                    out.extend(tags.next());
                    extra.extend(tags);
                }
                UpstreamParam::LookupArray { column, .. } => {
                    let Some(v) = value else {
                        out.push((1, None));
                        continue;
                    };
                    let col = self.column(column)?;
                    let elements = cells::array_elements(format, v).ok_or_else(|| {
                        CellError::input(
                            col,
                            pgseal_crypto::value::ValueError::InvalidText {
                                ty: "array",
                                len: v.len(),
                            },
                        )
                    })?;
                    let crypto = self.crypto(column)?;
                    let mut tags = Vec::new();
                    for e in elements {
                        let parsed = cells::parse_value(col, format, &e, &self.zone)?;
                        cells::lookup_tags(&crypto, col, &parsed, &mut tags)?;
                    }
                    out.push((1, Some(cells::tag_array_binary(&tags))));
                }
            }
        }
        out.append(&mut extra);
        Ok(out)
    }

    fn refuse_simple(&mut self, code: &str, message: &str, out: &mut Outbox<'_>) {
        wire::write_query(out.to_upstream, DECOY_SQL);
        self.queue.push_back(Pending::Refused {
            error: error_bytes(code, message),
            simple: true,
        });
    }

    fn refuse_extended(
        &mut self,
        decoy: impl FnOnce(&mut BytesMut),
        code: &str,
        message: &str,
        out: &mut Outbox<'_>,
    ) {
        decoy(out.to_upstream);
        self.queue.push_back(Pending::Refused {
            error: error_bytes(code, message),
            simple: false,
        });
        self.skip_until_sync = true;
    }

    fn on_query(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        let sql = wire::parse_query(frame.body()).map_err(proto)?;
        if let Some((code, message)) = self
            .ahead_of_resolution_change(sql)
            .or_else(|| self.behind_block_end(sql))
        {
            self.refuse_simple(code, &message, out);
            return Ok(());
        }
        let outcome = self.plan(sql);
        let effects = self.effects(sql, &outcome);
        if let Some((code, message)) = self.behind_barrier(sql, &outcome) {
            self.refuse_simple(code, &message, out);
            return Ok(());
        }
        match &**outcome {
            Err(r) => {
                self.refuse_simple(r.sqlstate, &r.message, out);
                return Ok(());
            }
            Ok(Plan::PassThrough) => out.to_upstream.extend_from_slice(frame.raw()),
            Ok(Plan::Rewrite(plan)) => match self
                .index_forms(plan)
                .map_err(|e| (e.sqlstate(), e.to_string()))
                .and_then(|forms| self.render(plan, &LookupWidths::ONE, &forms))
            {
                Ok(text) => wire::write_query(out.to_upstream, &text),
                Err((code, msg)) => {
                    self.refuse_simple(code, &msg, out);
                    return Ok(());
                }
            },
        }
        self.queue.push_back(Pending::Query(QueryState {
            rows: None,
            effects,
        }));
        Ok(())
    }

    fn on_parse(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        let msg = ParseMsg::parse(frame.body()).map_err(proto)?;
        let name = msg.name.to_owned();
        let outcome = self.plan(msg.query);
        let effects = self.effects(msg.query, &outcome);
        let mut keys = Some(KeyVersions::default());
        let ahead = self
            .ahead_of_resolution_change(msg.query)
            .or_else(|| self.behind_barrier(msg.query, &outcome));
        let refusal = match &**outcome {
            _ if ahead.is_some() => ahead,
            Err(r) => Some((r.sqlstate, r.message.clone())),
            Ok(Plan::PassThrough) => {
                out.to_upstream.extend_from_slice(frame.raw());
                None
            }
            Ok(Plan::Rewrite(plan)) => {
                // Keys unavailable now: render for one version, re-prepare at Bind (which
                // reports the key error if they still are).
                let (widths, forms) = match self.lookup_keys(plan) {
                    Ok(k) => {
                        keys = Some(k.versions);
                        (k.widths, k.forms)
                    }
                    Err(_) => {
                        keys = None;
                        (LookupWidths::ONE, IndexForms::SINGLE)
                    }
                };
                match self.upstream_parse(plan, &msg.param_oids, &widths, &forms) {
                    Ok((text, param_oids)) => {
                        ParseMsg {
                            name: msg.name,
                            query: &text,
                            param_oids,
                        }
                        .write(out.to_upstream);
                        None
                    }
                    Err(e) => Some(e),
                }
            }
        };
        if let Some((code, message)) = refusal {
            self.statements.remove(&name);
            let decoy = |b: &mut BytesMut| {
                ParseMsg {
                    name: &name,
                    query: DECOY_SQL,
                    param_oids: Vec::new(),
                }
                .write(b)
            };
            self.refuse_extended(decoy, code, &message, out);
            return Ok(());
        }
        self.parsed_barriers.extend(effects.pending.iter().cloned());
        let declared = msg.param_oids.clone();
        self.next_id += 1;
        self.statements.insert(
            &name,
            Stmt {
                id: self.next_id,
                outcome,
                declared,
                rows: None,
                effects,
                keys,
                path_epoch: self.path_epoch,
                catalog: self.shared.catalog.snapshot().generation(),
                // A copy: a slice of the read buffer would keep all of it alive.
                parse: Bytes::copy_from_slice(frame.raw()),
            },
        );
        self.queue.push_back(Pending::Parse);
        Ok(())
    }

    fn on_bind(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        let bind = BindMsg::parse(frame.body()).map_err(proto)?;
        if let Some((code, message)) = self.analysed_under_other_resolution(bind.statement) {
            let portal = bind.portal.to_owned();
            self.portals.remove(&portal);
            let decoy = |b: &mut BytesMut| wire::write_bind(b, &portal, DECOY_STATEMENT, &[], &[]);
            self.refuse_extended(decoy, code, &message, out);
            return Ok(());
        }
        let stmt = self.statements.get(bind.statement);
        // Result columns known from a Describe of this very statement: protected ones are asked
        // of the upstream in binary.
        // (Only for a Bind PostgreSQL would accept as sent: re-encoding it must not hide an
        // error in its parameter format codes.)
        let nf = bind.param_formats.len();
        let well_formed = nf <= 1 || nf == bind.params.len();
        // Columns not known yet (an unnamed statement, parsed again for every execution):
        // the columns the same plan was last described with are a hint for the upstream
        // formats only. The portal's columns stay unknown, so its rows wait for the
        // RowDescription, which must confirm the hint (a plain column in another format than
        // the client asked for fails the result, never reaches the client).
        let (rows, binary, client_formats) = match stmt.and_then(|s| s.rows.as_ref()) {
            Some(r) if !well_formed => (
                Some(Arc::new(r.with_result_formats(&bind.result_formats))),
                None,
                None,
            ),
            Some(r) => match r.with_binary_upstream(&bind.result_formats) {
                Some((plan, upstream)) => {
                    let client = plan.client_formats().to_vec();
                    (Some(Arc::new(plan)), Some(upstream), Some(client))
                }
                None => (
                    Some(Arc::new(r.with_result_formats(&bind.result_formats))),
                    None,
                    None,
                ),
            },
            None => match stmt
                .filter(|_| well_formed)
                .and_then(|s| self.rows_hint(s))
                .and_then(|h| h.with_binary_upstream(&bind.result_formats))
            {
                Some((plan, upstream)) => {
                    (None, Some(upstream), Some(plan.client_formats().to_vec()))
                }
                None => (None, None, None),
            },
        };
        let result_formats: &[i16] = binary.as_deref().unwrap_or(&bind.result_formats);
        let effects = stmt.map(|s| s.effects.clone()).unwrap_or_default();
        let statement = (bind.statement.to_owned(), stmt.map_or(0, |s| s.id));
        let prepared = stmt.and_then(|s| match &**s.outcome {
            Ok(Plan::Rewrite(plan)) => Some(self.prepare_bind(plan, s, &bind)),
            _ => None,
        });
        // The parameters the proxy rewrote, if any.
        let rewritten = match prepared {
            None => None,
            Some(Ok((params, reparse))) => {
                if let Some(r) = reparse {
                    self.reprepare(bind.statement, r, out);
                }
                Some(params)
            }
            Some(Err((code, message))) => {
                let portal = bind.portal.to_owned();
                self.portals.remove(&portal);
                let decoy =
                    |b: &mut BytesMut| wire::write_bind(b, &portal, DECOY_STATEMENT, &[], &[]);
                self.refuse_extended(decoy, code, &message, out);
                return Ok(());
            }
        };
        if rewritten.is_none() && binary.is_none() {
            out.to_upstream.extend_from_slice(frame.raw());
        } else {
            let refs: Vec<(i16, Option<&[u8]>)> = match &rewritten {
                Some(params) => params.iter().map(|(f, v)| (*f, v.as_deref())).collect(),
                None => (0..bind.params.len())
                    .map(|i| (bind.param_format(i), bind.params.get(i).copied().flatten()))
                    .collect(),
            };
            wire::write_bind(
                out.to_upstream,
                bind.portal,
                bind.statement,
                &refs,
                result_formats,
            );
        }
        self.next_id += 1;
        let portal = Portal {
            id: self.next_id,
            statement,
            rows,
            client_formats,
            effects,
            describing: false,
        };
        self.portals.insert(bind.portal, portal);
        self.queue.push_back(Pending::Bind);
        Ok(())
    }

    /// The upstream parameters of a Bind on a rewritten statement, and the statement's new
    /// rendering when it was prepared for other key versions than the live ones.
    fn prepare_bind(
        &self,
        plan: &RewritePlan,
        stmt: &Stmt,
        bind: &BindMsg<'_>,
    ) -> Result<(Vec<OwnedParam>, Option<Reparse>), Refused> {
        let cell = |e: CellError| (e.sqlstate(), e.to_string());
        let keys = self.lookup_keys(plan).map_err(cell)?;
        let params = self
            .bind_params(plan, &stmt.declared, bind, &keys)
            .map_err(cell)?;
        if stmt.keys.as_ref() == Some(&keys.versions) {
            return Ok((params, None));
        }
        let (text, param_oids) =
            self.upstream_parse(plan, &stmt.declared, &keys.widths, &keys.forms)?;
        Ok((
            params,
            Some(Reparse {
                id: stmt.id,
                text,
                param_oids,
                versions: keys.versions,
            }),
        ))
    }

    /// Re-prepares statement `name` upstream (hidden Close and Parse, answers swallowed), so
    /// that the Bind that follows searches every live key version.
    fn reprepare(&mut self, name: &str, r: Reparse, out: &mut Outbox<'_>) {
        if !name.is_empty() {
            wire::write_close(out.to_upstream, b'S', name);
            self.queue.push_back(Pending::Hidden { reprepared: None });
        }
        ParseMsg {
            name,
            query: &r.text,
            param_oids: r.param_oids,
        }
        .write(out.to_upstream);
        self.queue.push_back(Pending::Hidden {
            reprepared: Some((name.to_owned(), r.id)),
        });
        if let Some(s) = self.statements.get_mut(name).filter(|s| s.id == r.id) {
            s.keys = Some(r.versions);
        }
    }

    /// A hidden re-prepare that did not complete (skipped or failed upstream): the statement's
    /// upstream rendering is unknown, so the next Bind re-prepares it again.
    fn abandoned(&mut self, p: &Pending) {
        if let Pending::Hidden {
            reprepared: Some((name, id)),
        } = p
        {
            if let Some(s) = self
                .statements
                .get_mut(name.as_str())
                .filter(|s| s.id == *id)
            {
                s.keys = None;
            }
        }
    }

    fn on_describe(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        let (kind, name) = wire::parse_target(frame.body(), "Describe").map_err(proto)?;
        let name = name.to_owned();
        let pending = if kind == b'S' {
            let id = self.statements.get(&name).map_or(0, |s| s.id);
            Pending::DescribeStmt {
                name,
                id,
                forward: true,
            }
        } else {
            let id = match self.portals.get_mut(&name) {
                Some(p) => {
                    p.describing = true;
                    p.id
                }
                None => 0,
            };
            Pending::DescribePortal {
                name,
                id,
                forward: true,
            }
        };
        self.queue.push_back(pending);
        out.to_upstream.extend_from_slice(frame.raw());
        Ok(())
    }

    fn on_execute(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        let portal = wire::parse_execute(frame.body()).map_err(proto)?;
        let (portal_id, rows, effects, describing) = match self.portals.get(portal) {
            Some(p) => (p.id, p.rows.clone(), p.effects.clone(), p.describing),
            None => (0, None, Effects::default(), false),
        };
        if rows.is_none() && !describing {
            // The client did not describe it: learn the columns ourselves, answer swallowed.
            wire::write_describe(out.to_upstream, b'P', portal);
            self.queue.push_back(Pending::DescribePortal {
                name: portal.to_owned(),
                id: portal_id,
                forward: false,
            });
            if let Some(p) = self.portals.get_mut(portal) {
                p.describing = true;
            }
        }
        out.to_upstream.extend_from_slice(frame.raw());
        self.queue.push_back(Pending::Execute {
            portal_id,
            rows,
            effects,
        });
        Ok(())
    }

    fn on_close(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        let (kind, name) = wire::parse_target(frame.body(), "Close").map_err(proto)?;
        if kind == b'S' {
            self.statements.remove(name);
        } else {
            self.portals.remove(name);
        }
        out.to_upstream.extend_from_slice(frame.raw());
        self.queue.push_back(Pending::Close);
        Ok(())
    }

    // ---- backend ----

    /// Applies a completed statement's effects.
    fn complete(&mut self, tag: &str, effects: &Effects) {
        if tag.starts_with("SET") || tag.starts_with("RESET") {
            match &effects.search_path {
                Some(Change::Set(s)) => self.setting = s.clone(),
                Some(Change::Reset) => self.setting = self.initial.clone(),
                None => {}
            }
            self.set_search_path(search_path::expand(&self.setting, &self.user));
        }
        if effects.resync || effects.changes_resolution() {
            self.resync_pending = true;
        }
        if effects.lexer {
            // Reported settings arrive before the next ReadyForQuery; backslash_quote is read
            // back with the resync.
            self.lexer_resync = true;
            self.resync_pending = true;
            self.plan_memo.clear();
        }
        if tag == "ROLLBACK" {
            self.rolled_back = true;
        }
        let ddl = ["CREATE", "ALTER", "DROP", "COMMENT"]
            .iter()
            .any(|k| tag.starts_with(k));
        if ddl || effects.is_barrier() {
            if let Err(e) = self.shared.catalog.refresh() {
                warn!(error = %e, "catalog refresh after DDL failed");
            }
        }
    }

    /// A statement-level failure on the result path: report it, drop the rest until
    /// ReadyForQuery.
    fn fail_results(&mut self, code: &str, message: &str, out: &mut Outbox<'_>) {
        error_response(out.to_client, Severity::Error, code, message);
        self.discard_until_ready = true;
        self.failed_result = true;
    }

    /// Pops answered entries of a batch after an upstream error (the upstream skips to Sync).
    fn drop_until_sync(&mut self) {
        while let Some(front) = self.queue.front() {
            if matches!(front, Pending::Sync(_) | Pending::Query(_)) {
                break;
            }
            if let Some(p) = self.queue.pop_front() {
                self.abandoned(&p);
            }
        }
    }

    /// The result plan of a RowDescription (refreshing the catalog once for unknown tables),
    /// and the catalog generation it was mapped against. Fails with `0A000` when a field comes
    /// from a tainted relation (a view over a protected table), `58000` when the catalog cannot
    /// be refreshed.
    fn row_plan(
        &mut self,
        fields: &[wire::Field],
    ) -> Result<(RowPlan, u64), (&'static str, String)> {
        let snapshot = self.shared.catalog.snapshot();
        let mut generation = snapshot.generation();
        let mut map = rows::map_fields(fields, &snapshot);
        if !map.unknown.is_empty()
            && !self
                .shared
                .known_unprotected(snapshot.generation(), &map.unknown)
        {
            let fresh = self
                .shared
                .catalog
                .refresh()
                .map_err(|e| ("58000", e.to_string()))?;
            map = rows::map_fields(fields, &fresh);
            generation = fresh.generation();
            self.shared
                .note_unprotected(fresh.generation(), std::mem::take(&mut map.unknown));
        }
        if let Some(why) = map.tainted {
            return Err((crate::rewrite::refusal::FEATURE_NOT_SUPPORTED, why));
        }
        let formats = fields.iter().map(|f| f.format).collect();
        let plan = RowPlan::guarded(map.cols, map.guard, formats).with_hidden(map.hidden);
        Ok((plan, generation))
    }

    /// The result plan of a RowDescription and the RowDescription the client gets (None: the
    /// upstream's unchanged), from the session's memo when this exact message was mapped at the
    /// current catalog generation.
    /// `client_formats`: the client's per-column format codes when the proxy asked the
    /// upstream for protected columns in binary.
    fn described_rows(
        &mut self,
        body: &[u8],
        client_formats: Option<&[i16]>,
    ) -> Result<(Arc<RowPlan>, Option<Bytes>), DescribedError> {
        let generation = self.shared.catalog.snapshot().generation();
        if let Some(hit) = self.row_memo.get(generation, body, client_formats) {
            return Ok(hit);
        }
        let fields = wire::parse_row_description(body).map_err(DescribedError::Protocol)?;
        let (mut plan, generation) = self.row_plan(&fields).map_err(DescribedError::Refused)?;
        if let Some(cf) = client_formats {
            plan = plan.for_client_formats(cf).ok_or_else(|| {
                DescribedError::Refused((
                    "XX000",
                    "pgseal: the result's columns changed since the statement was described; \
                     prepare it again"
                        .to_owned(),
                ))
            })?;
        }
        let plan = Arc::new(plan);
        let client = plan.rewrites().then(|| {
            let mut b = BytesMut::new();
            rows::write_client_row_description(&mut b, &fields, &plan);
            b.freeze()
        });
        self.row_memo.put(
            generation,
            body,
            client_formats,
            plan.clone(),
            client.clone(),
        );
        Ok((plan, client))
    }

    fn on_row_description(
        &mut self,
        frame: Frame,
        out: &mut Outbox<'_>,
    ) -> Result<(), InterceptError> {
        // A Describe of a portal whose protected columns the proxy asked for in binary.
        let client_formats = match self.queue.front() {
            Some(Pending::DescribePortal { name, id, .. }) => self
                .portals
                .get(name.as_str())
                .filter(|p| p.id == *id)
                .and_then(|p| p.client_formats.clone()),
            _ => None,
        };
        let (plan, client) = match self.described_rows(frame.body(), client_formats.as_deref()) {
            Ok(p) => p,
            Err(DescribedError::Protocol(e)) => return Err(proto(e)),
            Err(DescribedError::Refused((code, e))) => {
                if client_formats.is_some() {
                    // The columns were not what the proxy expected: guess no more from what
                    // was seen before (until a Describe shows them again).
                    self.plan_memo.forget_rows_hints();
                }
                self.fail_results(code, &e, out);
                return Ok(());
            }
        };
        let mut forward = true;
        match self.queue.front_mut() {
            Some(Pending::DescribeStmt { .. } | Pending::DescribePortal { .. }) => {
                forward = self.described(plan.clone());
            }
            Some(Pending::Query(q)) => q.rows = Some(plan.clone()),
            _ => {}
        }
        if forward {
            match client {
                Some(c) => out.to_client.extend_from_slice(&c),
                None => out.to_client.extend_from_slice(frame.raw()),
            }
        }
        Ok(())
    }

    /// Records the answer to the Describe at the front of the queue (RowDescription or NoData)
    /// and pops it; returns whether the client asked for it.
    fn described(&mut self, plan: Arc<RowPlan>) -> bool {
        match self.queue.pop_front() {
            Some(Pending::DescribeStmt { name, id, forward }) => {
                if let Some(s) = self
                    .statements
                    .get_mut(name.as_str())
                    .filter(|s| s.id == id)
                {
                    s.rows = Some(plan);
                }
                forward
            }
            Some(Pending::DescribePortal { name, id, forward }) => {
                let mut statement = None;
                if let Some(p) = self.portals.get_mut(name.as_str()).filter(|p| p.id == id) {
                    p.rows = Some(plan.clone());
                    statement = Some(p.statement.clone());
                }
                // The statement's result columns, for its next Binds (PostgreSQL keeps a
                // prepared statement's result shape or fails it).
                if let Some((s_name, s_id)) = statement {
                    if let Some(s) = self
                        .statements
                        .get_mut(s_name.as_str())
                        .filter(|s| s.id == s_id && s.rows.is_none())
                    {
                        s.rows = Some(plan.clone());
                        self.plan_memo.set_rows_hint(&s.outcome, &plan);
                    }
                }
                // Executes of this portal sent before the answer arrived.
                for e in self.queue.iter_mut() {
                    if let Pending::Execute {
                        portal_id,
                        rows: rows @ None,
                        ..
                    } = e
                    {
                        if *portal_id == id {
                            *rows = Some(plan.clone());
                        }
                    }
                }
                forward
            }
            Some(other) => {
                self.queue.push_front(other);
                true
            }
            None => true,
        }
    }

    fn on_no_data(&mut self, frame: Frame, out: &mut Outbox<'_>) {
        let mut forward = true;
        if let Some(Pending::DescribeStmt { .. } | Pending::DescribePortal { .. }) =
            self.queue.front()
        {
            forward = self.described(Arc::new(RowPlan::default()));
        }
        if forward {
            out.to_client.extend_from_slice(frame.raw());
        }
    }

    fn on_parameter_description(
        &mut self,
        frame: Frame,
        out: &mut Outbox<'_>,
    ) -> Result<(), InterceptError> {
        let Some(Pending::DescribeStmt { name, id, forward }) = self.queue.front() else {
            out.to_client.extend_from_slice(frame.raw());
            return Ok(());
        };
        if !*forward {
            return Ok(());
        }
        let Some(stmt) = self.statements.get(name.as_str()).filter(|s| s.id == *id) else {
            out.to_client.extend_from_slice(frame.raw());
            return Ok(());
        };
        let Ok(Plan::Rewrite(plan)) = &**stmt.outcome else {
            out.to_client.extend_from_slice(frame.raw());
            return Ok(());
        };
        let upstream = wire::parse_parameter_description(frame.body()).map_err(proto)?;
        let n = plan.client_param_count.max(stmt.declared.len());
        let oids: Vec<u32> = (0..n)
            .map(|i| {
                if let Some(d) = stmt.declared.get(i).filter(|d| **d != 0) {
                    return *d;
                }
                if let Some(Some(t)) = plan.client_param_types.get(i) {
                    return t.oid();
                }
                let p = i + 1;
                let mut oid = stmt.declared.get(i).copied().unwrap_or(0);
                for (k, u) in plan.upstream_params.iter().enumerate() {
                    match u {
                        UpstreamParam::Plain(m) if *m == p => {
                            return upstream.get(k).copied().unwrap_or(oid)
                        }
                        UpstreamParam::LookupArray { param, column } if *param == p => {
                            if let Some(c) = self.shared.schema.column(
                                column.schema(),
                                column.table(),
                                column.column(),
                            ) {
                                oid = cells::array_oid(c.ty);
                            }
                        }
                        _ => {}
                    }
                }
                oid
            })
            .collect();
        wire::write_parameter_description(out.to_client, &oids);
        Ok(())
    }

    /// CopyData of a `COPY … TO STDOUT`: forwarded unless it carries a value a protected
    /// column's keys open (COPY from a function or a plain column holding ciphertext).
    fn on_copy_out_data(&mut self, frame: Frame, out: &mut Outbox<'_>) {
        let Some(binary) = self.copy_out else {
            out.to_client.extend_from_slice(frame.raw());
            return;
        };
        let found = leak_guard::embedded_column_of(
            &self.shared.schema,
            &*self.shared.keys,
            frame.body(),
            binary,
        );
        let e = match found {
            Ok(None) => {
                out.to_client.extend_from_slice(frame.raw());
                return;
            }
            Ok(Some(col)) => rows::RowError::UnmappedCopy {
                column: col.id.to_string(),
            },
            Err(e) => rows::RowError::Cell(CellError::Key(e)),
        };
        self.copy_out = None;
        warn!(error = %e, "COPY data refused");
        self.fail_results(e.sqlstate(), &e.to_string(), out);
    }

    fn on_data_row(&mut self, frame: Frame, out: &mut Outbox<'_>) {
        let plan = match self.queue.front() {
            Some(Pending::Execute { rows: None, .. }) => {
                // Never seen: the columns of this result are unknown. Fail closed.
                self.fail_results(
                    "XX000",
                    "pgseal: the columns of this result are unknown, so it is not forwarded",
                    out,
                );
                return;
            }
            Some(Pending::Execute { rows, .. }) => rows.clone(),
            Some(Pending::Query(q)) => q.rows.clone(),
            _ => None,
        };
        let Some(plan) = plan.filter(|p| p.inspect()) else {
            out.to_client.extend_from_slice(frame.raw());
            return;
        };
        if !plan.rewrites() {
            match rows::check_data_row(&self.shared.schema, &*self.shared.keys, &plan, frame.body())
            {
                Ok(()) => out.to_client.extend_from_slice(frame.raw()),
                Err(e) => {
                    warn!(error = %e, "result row refused");
                    self.fail_results(e.sqlstate(), &e.to_string(), out);
                }
            }
            return;
        }
        let mark = out.to_client.len();
        if let Err(e) = rows::decrypt_data_row(
            &self.shared.schema,
            &*self.shared.keys,
            self.key_cache.get_mut(),
            &plan,
            frame.body(),
            out.to_client,
            &self.zone,
        ) {
            out.to_client.truncate(mark);
            warn!(error = %e, "result row could not be decrypted");
            self.fail_results(e.sqlstate(), &e.to_string(), out);
        }
    }

    fn on_command_complete(
        &mut self,
        frame: Frame,
        out: &mut Outbox<'_>,
    ) -> Result<(), InterceptError> {
        let tag = wire::parse_command_complete(frame.body())
            .map_err(proto)?
            .to_owned();
        let effects = match self.queue.front_mut() {
            Some(Pending::Execute { effects, .. }) => {
                let e = std::mem::take(effects);
                self.queue.pop_front();
                Some(e)
            }
            Some(Pending::Query(q)) => {
                q.rows = None;
                Some(q.effects.clone())
            }
            _ => None,
        };
        self.complete(&tag, &effects.unwrap_or_default());
        out.to_client.extend_from_slice(frame.raw());
        Ok(())
    }

    fn on_error(&mut self, frame: Frame, out: &mut Outbox<'_>) {
        match self.queue.front_mut() {
            Some(Pending::Refused { error, simple }) => {
                out.to_client.extend_from_slice(error);
                if *simple {
                    if let Some(f) = self.queue.front_mut() {
                        *f = Pending::Query(QueryState::default());
                    }
                } else {
                    self.queue.pop_front();
                    self.drop_until_sync();
                }
                return;
            }
            Some(Pending::Query(q)) => q.rows = None,
            Some(Pending::Sync(_)) | None => {}
            Some(_) => self.drop_until_sync(),
        }
        out.to_client.extend_from_slice(frame.raw());
    }

    fn on_ready(&mut self, frame: Frame, out: &mut Outbox<'_>) {
        if let Some(Pending::Resync { forward_ready }) = self.queue.front() {
            let forward = *forward_ready;
            self.queue.pop_front();
            if forward {
                out.to_client.extend_from_slice(frame.raw());
            }
            return;
        }
        while let Some(p) = self.queue.pop_front() {
            if matches!(
                p,
                Pending::Sync(_) | Pending::Query(_) | Pending::Refused { simple: true, .. }
            ) {
                break;
            }
            self.abandoned(&p);
        }
        self.discard_until_ready = false;
        if self.queue.is_empty() {
            self.parsed_barriers.clear();
        }
        // A result the proxy failed inside a transaction block: the server saw no error and
        // would let the transaction go on (and COMMIT). Make it fail the transaction as it
        // would have failed it itself: a statement it rejects, whose error is not forwarded;
        // the client gets that statement's ReadyForQuery (status E) for its own. Only when the
        // client has nothing else in flight (else that would run first).
        if std::mem::take(&mut self.failed_result)
            && frame.body().first() == Some(&b'T')
            && self.queue.is_empty()
        {
            wire::write_query(out.to_upstream, ABORT_SQL);
            self.queue.push_back(Pending::Refused {
                error: Bytes::new(),
                simple: true,
            });
            return;
        }
        if self.resync(frame.body().first().copied(), out) {
            return;
        }
        out.to_client.extend_from_slice(frame.raw());
    }

    /// At a ReadyForQuery with transaction `status`: re-reads the server's `search_path` and
    /// `current_user` when a statement may have changed them in ways the proxy cannot follow
    /// (see [`search_path::needs_resync`]). When the client has nothing in flight, its
    /// ReadyForQuery is held back until the answer is in (returns true: the caller must not
    /// forward it), so its next statement is analysed with the server's values. With messages
    /// in flight the query goes after them at the next batch boundary; without one, it waits
    /// for the next ReadyForQuery.
    fn resync(&mut self, status: Option<u8>, out: &mut Outbox<'_>) -> bool {
        let in_block = matches!(status, Some(b'T' | b'E'));
        if self.resync_pending && in_block {
            self.resync_at_txn_end = true;
        }
        let due = self.resync_pending
            || (self.resync_at_txn_end && (status == Some(b'I') || self.rolled_back));
        if status == Some(b'I') {
            self.resync_at_txn_end = false;
        }
        self.rolled_back = false;
        if !due || status == Some(b'E') {
            // In a failed block the query would fail too; the block's end re-reads.
            self.resync_pending = false;
            return false;
        }
        let hold = self.queue.is_empty();
        let boundary = matches!(
            self.queue.back(),
            Some(Pending::Sync(_) | Pending::Query(_) | Pending::Refused { simple: true, .. })
        );
        if !hold && !boundary {
            self.resync_pending = true;
            return false;
        }
        self.resync_pending = false;
        wire::write_query(out.to_upstream, RESYNC_SQL);
        self.queue.push_back(Pending::Resync {
            forward_ready: hold,
        });
        hold
    }

    /// An answer to the proxy's own `search_path` query (not forwarded).
    fn on_resync_answer(&mut self, frame: &Frame) {
        match frame.tag() {
            b'D' => {
                let values = wire::parse_data_row(frame.body()).unwrap_or_default();
                let text = |i: usize| {
                    values
                        .get(i)
                        .copied()
                        .flatten()
                        .and_then(|v| std::str::from_utf8(v).ok())
                };
                if let Some(bq) = text(2) {
                    self.lexer.apply_backslash_quote(bq);
                    self.lexer_resync = false;
                    self.plan_memo.clear();
                }
                match (text(0).and_then(search_path::parse_shown), text(1)) {
                    (Some(setting), Some(user)) => {
                        self.setting = setting;
                        self.user = user.to_owned();
                        self.set_search_path(search_path::expand(&self.setting, &self.user));
                    }
                    _ => warn!(
                        "the server's search_path could not be read back; keeping the proxy's"
                    ),
                }
            }
            b'E' => {
                warn!("the server refused the search_path query; retrying at the next idle point");
                self.resync_pending = true;
            }
            _ => {}
        }
    }

    /// CopyInResponse: the server ignores Syncs until the client's CopyDone/CopyFail, so
    /// Syncs the client sent in between are not expected.
    fn on_copy_in(&mut self) {
        let limit = match self.copy_ends.pop_front() {
            Some(seq) => seq,
            None => {
                self.in_copy_in = true;
                u64::MAX
            }
        };
        let mut i = 1;
        while let Some(p) = self.queue.get(i) {
            match p {
                Pending::Sync(seq) if *seq < limit => {
                    self.queue.remove(i);
                }
                _ => i += 1,
            }
        }
    }

    /// A simple completion message (ParseComplete, BindComplete, CloseComplete,
    /// PortalSuspended, EmptyQueryResponse).
    fn on_simple_completion(&mut self, frame: Frame, out: &mut Outbox<'_>) {
        match self.queue.front() {
            Some(Pending::Refused { error, simple }) => {
                // The decoy unexpectedly succeeded: still report the refusal.
                out.to_client.extend_from_slice(error);
                if *simple {
                    self.discard_until_ready = true;
                } else {
                    self.queue.pop_front();
                }
                return;
            }
            Some(Pending::Query(_)) => {}
            Some(Pending::Sync(_)) | None => {}
            Some(Pending::Hidden { .. }) => {
                // The answer to a hidden re-prepare: the client did not ask for it.
                self.queue.pop_front();
                return;
            }
            Some(_) => {
                self.queue.pop_front();
            }
        }
        out.to_client.extend_from_slice(frame.raw());
    }
}

impl EncryptSession {
    /// A frontend message whose body does not decode: never forward a statement or values the
    /// proxy could not inspect; answer in protocol order instead (the session goes on, as it
    /// would with PostgreSQL). Describe/Close/Execute carry no data: PostgreSQL answers them.
    fn undecodable(&mut self, tag: u8, raw: &[u8], e: &InterceptError, out: &mut Outbox<'_>) {
        match tag {
            b'Q' => self.refuse_simple(e.code, &e.message, out),
            b'P' => self.refuse_extended(
                |b| {
                    ParseMsg {
                        name: "",
                        query: DECOY_SQL,
                        param_oids: Vec::new(),
                    }
                    .write(b)
                },
                e.code,
                &e.message,
                out,
            ),
            b'B' => self.refuse_extended(
                |b| wire::write_bind(b, "", DECOY_STATEMENT, &[], &[]),
                e.code,
                &e.message,
                out,
            ),
            _ => {
                out.to_upstream.extend_from_slice(raw);
                self.queue.push_back(Pending::Close);
            }
        }
    }
}

impl MessageInterceptor for EncryptSession {
    fn frontend_tags(&self) -> TagSet {
        FRONTEND_TAGS
    }

    fn backend_tags(&self) -> TagSet {
        BACKEND_TAGS
    }

    fn on_frontend(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        let tag = frame.tag();
        if self.skip_until_sync {
            if tag == b'S' {
                self.skip_until_sync = false;
                self.fe_seq += 1;
                self.queue.push_back(Pending::Sync(self.fe_seq));
                out.to_upstream.extend_from_slice(frame.raw());
            }
            return Ok(());
        }
        self.fe_seq += 1;
        let raw = frame.raw().clone();
        let handled = match tag {
            b'Q' => self.on_query(frame, out),
            b'P' => self.on_parse(frame, out),
            b'B' => self.on_bind(frame, out),
            b'D' => self.on_describe(frame, out),
            b'E' => self.on_execute(frame, out),
            b'C' => self.on_close(frame, out),
            b'S' => {
                if !self.in_copy_in {
                    self.queue.push_back(Pending::Sync(self.fe_seq));
                }
                out.to_upstream.extend_from_slice(frame.raw());
                Ok(())
            }
            b'c' | b'f' => {
                if self.in_copy_in {
                    self.in_copy_in = false;
                } else if self.copy_ends.len() < 64 {
                    self.copy_ends.push_back(self.fe_seq);
                }
                out.to_upstream.extend_from_slice(frame.raw());
                Ok(())
            }
            b'F' => {
                self.queue.push_back(Pending::Query(QueryState::default()));
                out.to_upstream.extend_from_slice(frame.raw());
                Ok(())
            }
            _ => {
                out.to_upstream.extend_from_slice(frame.raw());
                Ok(())
            }
        };
        if let Err(e) = handled {
            self.undecodable(tag, &raw, &e, out);
        }
        Ok(())
    }

    fn on_backend(&mut self, frame: Frame, out: &mut Outbox<'_>) -> Result<(), InterceptError> {
        let tag = frame.tag();
        if tag == b'Z' {
            self.on_ready(frame, out);
            return Ok(());
        }
        if tag == b'S' {
            self.on_parameter_status(frame, out);
            return Ok(());
        }
        if let Some(Pending::Resync { .. }) = self.queue.front() {
            // (Notices and notifications pass as usual.)
            if matches!(tag, b'T' | b'D' | b'C' | b'E' | b'I' | b'n') {
                self.on_resync_answer(&frame);
                return Ok(());
            }
        }
        if self.discard_until_ready {
            return Ok(());
        }
        match tag {
            b'T' => self.on_row_description(frame, out)?,
            b'D' => self.on_data_row(frame, out),
            b't' => self.on_parameter_description(frame, out)?,
            b'n' => self.on_no_data(frame, out),
            b'C' => self.on_command_complete(frame, out)?,
            b'E' => self.on_error(frame, out),
            b'1' | b'2' | b'3' | b's' | b'I' => self.on_simple_completion(frame, out),
            b'G' => {
                self.on_copy_in();
                out.to_client.extend_from_slice(frame.raw());
            }
            b'H' => {
                self.copy_out = Some(frame.body().first() == Some(&1));
                out.to_client.extend_from_slice(frame.raw());
            }
            b'd' => self.on_copy_out_data(frame, out),
            b'c' => {
                self.copy_out = None;
                out.to_client.extend_from_slice(frame.raw());
            }
            _ => out.to_client.extend_from_slice(frame.raw()),
        }
        Ok(())
    }
}
