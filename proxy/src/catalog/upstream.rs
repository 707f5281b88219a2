//! [`UpstreamCatalog`]: a [`CatalogSource`] backed by the upstream database.
//!
//! It runs on its own OS thread with a current-thread tokio runtime and its own upstream
//! connection (the catalog user's credentials, the protected database), so catalog queries
//! never wait behind client traffic and sessions never share a connection. `snapshot()` is a
//! lock read; `refresh()` queues a request and blocks the caller until the new snapshot (or
//! [`REFRESH_TIMEOUT`]). Requests queued while a load runs are answered together by the next
//! load. A dropped connection is reopened on the next load (one retry on a fresh connection).
//!
//! The thread also reloads every [`PERIODIC_REFRESH`], so relations created directly upstream
//! (a new partition of a protected table, a view over one) are known within that interval even
//! when no statement names them. A load that finds the catalog unchanged keeps the current
//! snapshot and its generation (cached plans stay valid). Cost of one load with ~5 600
//! relations (`cargo test --test proxy_catalog bench_refresh -- --ignored --nocapture`, shared
//! 2-core machine under load): median 52 ms, max 106 ms.

use std::collections::HashSet;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pgseal_crypto::ColumnId;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, info, warn};

use super::connection::CatalogConnector;
use super::drift::OidMemory;
use super::load::load_following;
use super::migrations::{self, Flags};
use super::{CatalogError, CatalogSnapshot, CatalogSource};
use crate::config::{EncryptionSettings, Resolved};
use crate::migrate::state::{REFRESH_DURING_MIGRATION, SNAPSHOT_TTL};
use crate::rewrite::ProtectedSchema;
use crate::upstream::simple_query::SimpleClient;

/// How long `refresh()` waits for the catalog thread.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the catalog is reloaded without being asked.
pub const PERIODIC_REFRESH: Duration = Duration::from_secs(2);
/// How long one load's queries may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

type Answer = Result<Arc<CatalogSnapshot>, CatalogError>;

/// What the catalog thread publishes: the snapshot and, while online column migrations are
/// configured, until when it may be used and the degraded copy used after that.
#[derive(Default)]
struct Published {
    snapshot: Arc<CatalogSnapshot>,
    /// `(valid until, degraded copy)`: the migrating tables are refused in the copy.
    expiry: Option<(Instant, Arc<CatalogSnapshot>)>,
}

type Shared = Arc<RwLock<Published>>;

/// The catalog of the protected database, kept by a background thread.
pub struct UpstreamCatalog {
    current: Shared,
    requests: UnboundedSender<SyncSender<Answer>>,
}

impl std::fmt::Debug for UpstreamCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCatalog")
            .field("generation", &self.snapshot().generation())
            .finish_non_exhaustive()
    }
}

impl UpstreamCatalog {
    /// Starts the catalog thread, connects and loads the first snapshot. Fails with a message
    /// naming the database, user and address when the upstream is unreachable or refuses.
    /// Blocks the calling thread for at most the upstream connect timeout plus 6 s. The thread
    /// ends (closing its connection) when the returned catalog is dropped.
    pub fn start(
        resolved: &Resolved,
        settings: &EncryptionSettings,
    ) -> Result<Arc<UpstreamCatalog>, CatalogError> {
        let connector = CatalogConnector::new(resolved, settings)?;
        let wait = connector.timeout() + QUERY_TIMEOUT + Duration::from_secs(1);
        let schema = settings.schema.clone();
        let flags = settings.migrations.clone();
        let current: Shared = Arc::new(RwLock::new(Published::default()));
        let (tx, rx) = unbounded_channel();
        let (ready_tx, ready_rx) = sync_channel::<Result<(), CatalogError>>(1);
        let shared = current.clone();
        std::thread::Builder::new()
            .name("pgseal-catalog".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(CatalogError(format!("catalog runtime: {e}"))));
                        return;
                    }
                };
                rt.block_on(run(connector, schema, flags, shared, rx, ready_tx));
            })
            .map_err(|e| CatalogError(format!("cannot start the catalog thread: {e}")))?;
        match ready_rx.recv_timeout(wait) {
            Ok(Ok(())) => Ok(Arc::new(UpstreamCatalog {
                current,
                requests: tx,
            })),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CatalogError(
                "the first catalog load did not finish in time".into(),
            )),
        }
    }
}

impl CatalogSource for UpstreamCatalog {
    fn snapshot(&self) -> Arc<CatalogSnapshot> {
        let read = |p: &Published| match &p.expiry {
            Some((until, degraded)) if Instant::now() >= *until => degraded.clone(),
            _ => p.snapshot.clone(),
        };
        match self.current.read() {
            Ok(g) => read(&g),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }

    fn refresh(&self) -> Result<Arc<CatalogSnapshot>, CatalogError> {
        let (tx, rx) = sync_channel(1);
        self.requests
            .send(tx)
            .map_err(|_| CatalogError("the catalog thread has stopped".into()))?;
        rx.recv_timeout(REFRESH_TIMEOUT).unwrap_or_else(|_| {
            Err(CatalogError(format!(
                "catalog refresh took longer than {} s",
                REFRESH_TIMEOUT.as_secs()
            )))
        })
    }
}

struct Loader {
    connector: CatalogConnector,
    schema: Arc<ProtectedSchema>,
    /// Columns configured with `migration = "encrypt"|"decrypt"`.
    flags: Flags,
    /// Columns this process has served encrypted under `migration = "encrypt"`.
    served_encrypted: HashSet<ColumnId>,
    current: Shared,
    client: Option<SimpleClient>,
    generation: u64,
    /// The OIDs of configured tables seen so far (drift done upstream is followed by OID).
    memory: OidMemory,
}

impl Loader {
    /// Loads a snapshot, on the open connection or a new one; retries once on a fresh
    /// connection when the open one fails (it may have been dropped by the server).
    async fn load(&mut self) -> Answer {
        let mut last = None;
        for attempt in 0..2 {
            let mut client = match self.client.take() {
                Some(c) => c,
                None => self.connector.connect().await?,
            };
            let next = self.generation + 1;
            let started = Instant::now();
            let r = tokio::time::timeout(QUERY_TIMEOUT, async {
                let (snap, memory) =
                    load_following(&mut client, &self.schema, next, &self.memory).await?;
                if self.flags.is_empty() && !snap.has_table("pgseal", "migrations") {
                    return Ok((snap, memory));
                }
                let observed = migrations::observe(&mut client, &snap).await?;
                let cells = migrations::cell_form(&mut client, &self.flags).await?;
                let mut served = self.served_encrypted.clone();
                let mut o =
                    migrations::overrides(&self.schema, &self.flags, &observed, &mut served);
                migrations::guard_cells(&mut o, &cells, |id| snap.oid_of(id.schema(), id.table()));
                self.served_encrypted = served;
                Ok((snap.with_migrations(&self.schema, &o), memory))
            })
            .await
            .unwrap_or_else(|_| Err(CatalogError("catalog query timed out".into())));
            match r {
                Ok((snap, memory)) => {
                    self.client = Some(client);
                    self.memory = memory;
                    let current = match self.current.read() {
                        Ok(g) => g.snapshot.clone(),
                        Err(poisoned) => poisoned.into_inner().snapshot.clone(),
                    };
                    let snap = if self.generation > 0 && current.same_content(&snap) {
                        current
                    } else {
                        self.generation = next;
                        debug!(generation = next, "catalog loaded");
                        Arc::new(snap)
                    };
                    // While migrations are configured a snapshot is good for SNAPSHOT_TTL from
                    // the moment its queries were sent (they saw the state of then or later).
                    let expiry = (!self.flags.is_empty()).then(|| {
                        let degraded = migrations::degraded(&snap, &self.schema, &self.flags);
                        (started + SNAPSHOT_TTL, Arc::new(degraded))
                    });
                    let published = Published {
                        snapshot: snap.clone(),
                        expiry,
                    };
                    match self.current.write() {
                        Ok(mut g) => *g = published,
                        Err(poisoned) => *poisoned.into_inner() = published,
                    }
                    return Ok(snap);
                }
                Err(e) => {
                    debug!(attempt, error = %e, "catalog load failed; reconnecting");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| CatalogError("catalog load failed".into())))
    }
}

async fn run(
    connector: CatalogConnector,
    schema: Arc<ProtectedSchema>,
    flags: Flags,
    current: Shared,
    mut requests: UnboundedReceiver<SyncSender<Answer>>,
    ready: SyncSender<Result<(), CatalogError>>,
) {
    let every = if flags.is_empty() {
        PERIODIC_REFRESH
    } else {
        REFRESH_DURING_MIGRATION
    };
    let mut loader = Loader {
        connector,
        schema,
        flags,
        served_encrypted: HashSet::new(),
        current,
        client: None,
        generation: 0,
        memory: OidMemory::default(),
    };
    match loader.load().await {
        Ok(s) => {
            info!(
                generation = s.generation(),
                target = %loader.connector.describe(),
                "catalog loaded"
            );
            let _ = ready.send(Ok(()));
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    }
    drop(ready);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let first = tokio::select! {
            r = requests.recv() => match r {
                Some(w) => Some(w),
                None => break,
            },
            _ = tick.tick() => None,
        };
        let mut waiters: Vec<SyncSender<Answer>> = first.into_iter().collect();
        while let Ok(w) = requests.try_recv() {
            waiters.push(w);
        }
        let answer = loader.load().await;
        if let Err(e) = &answer {
            if waiters.is_empty() {
                debug!(error = %e, "periodic catalog refresh failed");
            } else {
                warn!(error = %e, "catalog refresh failed");
            }
        }
        for w in waiters {
            let _ = w.try_send(answer.clone());
        }
    }
    if let Some(c) = loader.client.take() {
        c.close().await;
    }
}
