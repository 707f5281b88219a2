//! The keyserver follower: the first fetch of every keyring, then the change-feed loop (long
//! poll with a liveness check beside it, refresh of changed keyrings, short retries with a capped
//! backoff while the keyserver is unreachable). What counts as contact: see `health.rs`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pgseal_crypto::ColumnId;
use pgseal_keyserver::client::{Client, ClientError};
use tokio::sync::watch;

use super::health::Health;
use super::snapshot::{build_columns, fetch_keyring, FetchError, KeyringState, Snapshot};
use super::KeyError;
use crate::rewrite::ProtectedSchema;

/// First retry after a failed contact.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between retries while the keyserver fails: bounds how long after it is back
/// the proxy notices.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Interval of the liveness check while a long poll is open.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// State shared by the follower thread and the [`super::KeyserverKeys`] handle.
pub(crate) struct Shared {
    pub schema: ProtectedSchema,
    /// Column → keyring name.
    pub keyring_of: HashMap<ColumnId, String>,
    /// Every keyring the schema uses.
    pub keyrings: BTreeSet<String>,
    pub snapshot: RwLock<Arc<Snapshot>>,
    /// Bumped after every published snapshot (the key source's epoch).
    pub generation: AtomicU64,
    pub health: Health,
    pub url: String,
    pub poll_wait_secs: u64,
    /// How often every keyring's metadata is re-read even without a change in the feed (a
    /// withdrawn grant is announced by the feed's `grants_changed`; this catches anything else,
    /// e.g. a keyring deleted from the keyserver's database).
    pub resync: Duration,
}

impl Shared {
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn publish(&self, snap: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn all_names(&self) -> String {
        self.keyrings.iter().cloned().collect::<Vec<_>>().join(", ")
    }

    /// The start-up error for `e`, with a hint on what to check.
    fn startup_error(&self, keyring: Option<&str>, e: &FetchError) -> KeyError {
        let reason = match e {
            FetchError::NotServed(m) => m.clone(),
            FetchError::Failed(
                err @ (ClientError::Connect(_) | ClientError::Http(_) | ClientError::Timeout),
            ) => format!(
                "cannot reach the keyserver at {}: {err} (check that it is running, that its \
                 certificate is signed by the configured CA, and that this proxy's client \
                 certificate was issued by the keyserver's CA)",
                self.url
            ),
            FetchError::Failed(err @ ClientError::Api { status: 401, .. }) => format!(
                "the keyserver at {} refused this proxy's client certificate: {err}",
                self.url
            ),
            FetchError::Failed(err) => format!("keyserver at {}: {err}", self.url),
        };
        KeyError::Unavailable {
            keyring: keyring.map_or_else(|| self.all_names(), str::to_owned),
            reason,
        }
    }
}

/// First fetch: the current feed revision, then every keyring. Returns the revision to follow
/// from. Any failure is fatal (start-up fails).
pub(crate) async fn initial(client: &Client, shared: &Shared) -> Result<u64, KeyError> {
    let rev = client
        .changes(0, None)
        .await
        .map_err(|e| shared.startup_error(None, &FetchError::Failed(e)))?
        .revision;
    let mut keyrings = HashMap::new();
    for name in &shared.keyrings {
        let state = fetch_keyring(client, name, None)
            .await
            .map_err(|e| shared.startup_error(Some(name), &e))?;
        if !state.versions.contains_key(&state.active) {
            return Err(KeyError::NoActiveVersion {
                keyring: name.clone(),
                column: "(all of its columns)".into(),
            });
        }
        tracing::info!(keyring = %name, keyring_id = %state.id, active_version = state.active,
            versions = ?state.versions.keys().collect::<Vec<_>>(), "keyring loaded from the keyserver");
        keyrings.insert(name.clone(), state);
    }
    let columns = build_columns(&shared.schema, &keyrings, &shared.keyrings, &HashMap::new())?;
    shared.publish(Snapshot {
        keyrings,
        columns,
        revoked: HashMap::new(),
    });
    shared.health.contact();
    Ok(rev)
}

/// Refetches the keyrings in `changed` and publishes a new snapshot.
async fn refresh(
    client: &Client,
    shared: &Shared,
    changed: &BTreeSet<String>,
) -> Result<(), FetchError> {
    let old = shared.current();
    let mut keyrings: HashMap<String, KeyringState> = HashMap::new();
    let mut revoked = old.revoked.clone();
    for name in &shared.keyrings {
        let prev = old.keyrings.get(name);
        if !changed.contains(name) {
            if let Some(p) = prev {
                keyrings.insert(name.clone(), share(p));
            }
            continue;
        }
        match fetch_keyring(client, name, prev).await {
            Ok(state) => {
                log_change(name, prev, &state);
                revoked.remove(name);
                keyrings.insert(name.clone(), state);
            }
            Err(FetchError::NotServed(m)) => {
                tracing::error!(keyring = %name, "keyring no longer served to this proxy; its columns fail closed");
                revoked.insert(name.clone(), m);
            }
            Err(e) => return Err(e),
        }
    }
    let columns = build_columns(&shared.schema, &keyrings, changed, &old.columns)
        .map_err(|e| FetchError::Failed(ClientError::Decode(e.to_string())))?;
    shared.publish(Snapshot {
        keyrings,
        columns,
        revoked,
    });
    Ok(())
}

fn share(p: &KeyringState) -> KeyringState {
    KeyringState {
        id: p.id.clone(),
        revision: p.revision,
        active: p.active,
        versions: p
            .versions
            .iter()
            .map(|(v, k)| (*v, Arc::clone(k)))
            .collect(),
        index: p.index.clone(),
    }
}

fn log_change(name: &str, prev: Option<&KeyringState>, new: &KeyringState) {
    let versions: Vec<u32> = new.versions.keys().copied().collect();
    match prev {
        Some(p) if p.active != new.active => tracing::info!(keyring = %name, keyring_id = %new.id,
            from = p.active, to = new.active, versions = ?versions, "keyring rotation noticed"),
        Some(p) if p.revision == new.revision && p.versions.keys().eq(new.versions.keys()) => {
            tracing::debug!(keyring = %name, "keyring unchanged");
        }
        Some(p) => {
            let dropped: Vec<u32> = p
                .versions
                .keys()
                .filter(|v| !new.versions.contains_key(v))
                .copied()
                .collect();
            tracing::info!(keyring = %name, keyring_id = %new.id, revision = new.revision,
                versions = ?versions, dropped = ?dropped, "keyring change noticed");
        }
        None => tracing::info!(keyring = %name, keyring_id = %new.id, active_version = new.active,
            versions = ?versions, "keyring loaded"),
    }
    if !new.versions.contains_key(&new.active) {
        tracing::warn!(keyring = %name, active_version = new.active,
            "the active version is not usable; new writes to its columns are refused");
    }
}

/// Follows the change feed from `rev` until `stop` turns true.
///
/// While the keyserver answers: a long poll of `poll_wait_secs`, with a liveness check on
/// `probe` every [`PROBE_EVERY`] while it is open (a keyserver that stops answering without
/// closing the connection is noticed within that plus the request timeout). While it fails:
/// short reads of the feed, retried with a backoff capped at [`MAX_BACKOFF`]; the first that
/// succeeds re-reads every keyring and ends the failure, so protected columns work again about
/// a second after the keyserver is back.
pub(crate) async fn follow(
    client: Client,
    probe: Client,
    shared: Arc<Shared>,
    mut rev: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut last_resync = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        let failing = shared.health.is_failing();
        let sent = Instant::now();
        let step = async {
            let wait = (!failing).then_some(shared.poll_wait_secs);
            let resp = client
                .changes(rev, wait)
                .await
                .map_err(FetchError::Failed)?;
            // A grant change may have withdrawn a keyring (the feed cannot list what this proxy
            // no longer sees): re-read everything, like the periodic resync. After a failure,
            // too (whatever happened meanwhile is read again before the failure ends).
            let resync = failing || resp.grants_changed || last_resync.elapsed() >= shared.resync;
            let changed: BTreeSet<String> = if resync {
                shared.keyrings.clone()
            } else {
                resp.changed
                    .iter()
                    .filter(|c| shared.keyrings.contains(&c.name))
                    .map(|c| c.name.clone())
                    .collect()
            };
            if !changed.is_empty() {
                refresh(&client, &shared, &changed).await?;
            }
            Ok::<(u64, bool), FetchError>((resp.revision, resync))
        };
        let res = tokio::select! {
            _ = stop.changed() => return,
            r = step => r.map_err(|e| (Instant::now(), e)),
            (probe_sent, e) = liveness(&probe), if !failing => Err((probe_sent, FetchError::Failed(e))),
        };
        match res {
            Ok((next, resynced)) => {
                shared.health.contact();
                rev = next;
                if resynced {
                    last_resync = tokio::time::Instant::now();
                }
                backoff = MIN_BACKOFF;
            }
            Err((at, e)) => {
                // A short request counts from when it was sent; the long poll from when it broke.
                let at = if failing { sent } else { at };
                shared.health.failure(at, &e);
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Checks every [`PROBE_EVERY`] that the keyserver answers; returns the first check that fails,
/// with the instant it was sent. A successful check proves only that the keyserver answers, not
/// that it serves this proxy, so it never ends a failure.
async fn liveness(probe: &Client) -> (Instant, ClientError) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let sent = Instant::now();
        if let Err(e) = probe.health().await {
            return (sent, e);
        }
    }
}
