//! The keyserver-backed [`KeySource`]: fetches every keyring the protected schema uses over mTLS,
//! caches the material in zeroized memory, follows rotation through the change feed on its own
//! thread, serves the cached keys for `grace_seconds` from the first failed contact while the
//! keyserver is unreachable (see `health.rs` for what counts as contact), then fails closed, and
//! works again about a second after the keyserver answers again.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use pgseal_crypto::ColumnId;
use pgseal_keyserver::client::{Client, ClientConfig};
use pgseal_keyserver::model::IndexRotation;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::confirm::confirm_phases;
use super::follow::{follow, initial, Shared};
use super::health::Health;
use super::snapshot::Snapshot;
use super::{ColumnCrypto, KeyError, KeySource, KeyserverConfig};
use crate::rewrite::ProtectedSchema;

/// Default interval of the full metadata re-read (see [`KeyserverKeys::start_with_resync`]).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

/// Keys fetched from pgseal-keyserver. `column()` reads a snapshot (read lock + `Arc` clone) and
/// never touches the network.
pub struct KeyserverKeys {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for KeyserverKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyserverKeys")
            .field("url", &self.shared.url)
            .field("keyrings", &self.shared.keyrings)
            .finish_non_exhaustive()
    }
}

fn read_file(what: &str, path: &std::path::Path, keyrings: &str) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError::Unavailable {
        keyring: keyrings.to_owned(),
        reason: format!("cannot read the keyserver {what} {}: {e}", path.display()),
    })
}

impl KeyserverKeys {
    /// Connects (mTLS with the proxy's client certificate), fetches metadata and the material of
    /// every usable version of every keyring `schema` uses, derives the [`ColumnCrypto`] of every
    /// column, and starts following the change feed on its own OS thread with its own tokio
    /// current-thread runtime. Blocks until the first fetch completed; keyserver unreachable /
    /// certificate refused / keyring missing → `Err` with a clear message.
    ///
    /// Safe to call from inside a tokio runtime (the work runs on the key thread); the calling
    /// thread blocks for the duration of the first fetch (bounded by `timeout_ms` per request).
    pub fn start(
        config: &KeyserverConfig,
        schema: &ProtectedSchema,
    ) -> Result<Arc<KeyserverKeys>, KeyError> {
        Self::start_with_resync(config, schema, DEFAULT_RESYNC)
    }

    /// [`Self::start`] with another full re-read interval: besides following the change feed,
    /// the metadata of every keyring is re-read every `resync` (default 60 s), which notices a
    /// revoked grant or a deleted keyring (the feed does not show those); their columns then fail
    /// closed.
    pub fn start_with_resync(
        config: &KeyserverConfig,
        schema: &ProtectedSchema,
        resync: Duration,
    ) -> Result<Arc<KeyserverKeys>, KeyError> {
        Self::start_inner(config, schema, resync, false)
    }

    /// [`Self::start`] for a serving proxy: besides following the change feed, it confirms
    /// every blind-index rotation phase it has taken in to the keyserver (`keys/confirm.rs`).
    pub fn start_serving(
        config: &KeyserverConfig,
        schema: &ProtectedSchema,
    ) -> Result<Arc<KeyserverKeys>, KeyError> {
        Self::start_inner(config, schema, DEFAULT_RESYNC, true)
    }

    fn start_inner(
        config: &KeyserverConfig,
        schema: &ProtectedSchema,
        resync: Duration,
        confirm: bool,
    ) -> Result<Arc<KeyserverKeys>, KeyError> {
        let keyrings: BTreeSet<String> = schema.columns().map(|c| c.keyring.clone()).collect();
        let keyring_of: HashMap<ColumnId, String> = schema
            .columns()
            .map(|c| (c.id.clone(), c.keyring.clone()))
            .collect();
        let names = keyrings.iter().cloned().collect::<Vec<_>>().join(", ");
        let ca_pem = read_file("CA certificate", &config.ca, &names)?;
        let cert_pem = read_file("client certificate", &config.cert, &names)?;
        let key_pem = Zeroizing::new(read_file("client key", &config.key, &names)?);
        // Two clients, each with its own connection: the change feed and fetches on one, the
        // liveness check made while a long poll is open on the other.
        let new_client = || {
            Client::new(ClientConfig {
                url: config.url.clone(),
                ca_pem: ca_pem.clone(),
                identity: Some((cert_pem.clone(), key_pem.clone())),
                token: None,
                timeout: Duration::from_millis(config.timeout_ms.max(1)),
            })
            .map_err(|e| KeyError::Unavailable {
                keyring: names.clone(),
                reason: format!("keyserver client configuration: {e}"),
            })
        };
        let client = new_client()?;
        let probe = new_client()?;
        let confirmer = if confirm { Some(new_client()?) } else { None };
        let shared = Arc::new(Shared {
            schema: schema.clone(),
            keyring_of,
            keyrings,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            generation: AtomicU64::new(0),
            health: Health::new(Duration::from_secs(config.grace_seconds)),
            url: config.url.clone(),
            poll_wait_secs: config.poll_wait_seconds.max(1),
            resync,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), KeyError>>();
        let thread_shared = Arc::clone(&shared);
        let unavailable = |reason: String| KeyError::Unavailable {
            keyring: names.clone(),
            reason,
        };
        let thread = std::thread::Builder::new()
            .name("pgseal-keys".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(KeyError::Unavailable {
                            keyring: thread_shared
                                .keyrings
                                .iter()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", "),
                            reason: format!("cannot start the key runtime: {e}"),
                        }));
                        return;
                    }
                };
                rt.block_on(async move {
                    match initial(&client, &thread_shared).await {
                        Ok(rev) => {
                            let _ = ready_tx.send(Ok(()));
                            if let Some(c) = confirmer {
                                tokio::spawn(confirm_phases(
                                    c,
                                    Arc::clone(&thread_shared),
                                    stop_rx.clone(),
                                ));
                            }
                            follow(client, probe, thread_shared, rev, stop_rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| unavailable(format!("cannot start the key thread: {e}")))?;
        let first = ready_rx
            .recv()
            .map_err(|_| unavailable("the key thread ended before the first fetch".into()));
        let keys = Arc::new(KeyserverKeys {
            shared,
            stop: stop_tx,
            thread: Mutex::new(Some(thread)),
        });
        match first.and_then(|r| r) {
            Ok(()) => Ok(keys),
            Err(e) => {
                keys.stop();
                Err(e)
            }
        }
    }

    /// Stops the background thread (also on Drop). Afterwards `column()` serves the last
    /// snapshot without following changes.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("the key thread panicked");
            }
        }
    }

    /// The blind-index key rotations in progress, by keyring, as last fetched.
    pub fn rotations(&self) -> Vec<(String, IndexRotation)> {
        let mut v: Vec<(String, IndexRotation)> = self
            .shared
            .current()
            .keyrings
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.index.rotation.as_ref()?.rotation.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A keyserver client with this proxy's identity (for the data-plane calls of
    /// `reencrypt`: re-index and compaction passes).
    pub fn client(config: &KeyserverConfig) -> Result<Client, KeyError> {
        let unavailable = |reason: String| KeyError::Unavailable {
            keyring: "(keyserver)".into(),
            reason,
        };
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                unavailable(format!(
                    "cannot read the keyserver {what} {}: {e}",
                    path.display()
                ))
            })
        };
        Client::new(ClientConfig {
            url: config.url.clone(),
            ca_pem: read("CA certificate", &config.ca)?,
            identity: Some((
                read("client certificate", &config.cert)?,
                Zeroizing::new(read("client key", &config.key)?),
            )),
            token: None,
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
        })
        .map_err(|e| unavailable(format!("keyserver client configuration: {e}")))
    }

    /// The active (sealing) version of every keyring, as last fetched (for status output).
    pub fn active_versions(&self) -> HashMap<String, u32> {
        self.shared
            .current()
            .keyrings
            .iter()
            .map(|(n, s)| (n.clone(), s.active))
            .collect()
    }
}

impl Drop for KeyserverKeys {
    fn drop(&mut self) {
        self.stop();
    }
}

impl KeySource for KeyserverKeys {
    fn column(&self, column: &ColumnId) -> Result<Arc<ColumnCrypto>, KeyError> {
        let keyring = self
            .shared
            .keyring_of
            .get(column)
            .ok_or_else(|| KeyError::UnknownColumn(column.to_string()))?;
        if let Some(reason) = self.shared.health.expired() {
            return Err(KeyError::Unavailable {
                keyring: keyring.clone(),
                reason,
            });
        }
        let snap = self.shared.current();
        if let Some(reason) = snap.revoked.get(keyring) {
            return Err(KeyError::Unavailable {
                keyring: keyring.clone(),
                reason: reason.clone(),
            });
        }
        snap.columns
            .get(column)
            .cloned()
            .ok_or_else(|| KeyError::Unavailable {
                keyring: keyring.clone(),
                reason: "no keys fetched for this keyring".into(),
            })
    }

    /// The number of snapshots published so far; `None` while the grace period has expired
    /// (every call then goes to [`KeySource::column`], which fails closed).
    fn epoch(&self) -> Option<u64> {
        if self.shared.health.expired().is_some() {
            return None;
        }
        Some(self.shared.generation.load(Ordering::Acquire))
    }
}
