//! Confirmations of blind-index key rotation phases (docs/format.md §2.5): once a snapshot
//! with a rotation phase has been in force for [`SETTLE`] (statements sealed under the previous
//! snapshot have reached the upstream), the serving proxy tells the keyserver that it writes and
//! searches as that phase says. The keyserver lets a re-index pass start, and the next phase
//! begin, only after every proxy granted the keyring has confirmed. Runs on the key thread,
//! beside the change-feed follower, with a connection of its own; only `serve` confirms
//! (`check` and `reencrypt` also load keys, but do not serve sessions).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgseal_keyserver::client::{Client, ClientError};
use pgseal_keyserver::model::IndexPhase;
use tokio::sync::watch;
use tokio::time::Instant;

use super::follow::Shared;

/// How long a phase is in force before it is confirmed.
pub(crate) const SETTLE: Duration = Duration::from_secs(1);
/// How often the snapshot is looked at.
const TICK: Duration = Duration::from_millis(250);
/// Pause before a failed confirmation is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// One phase of one keyring's rotation.
type PhaseKey = (String, u32, IndexPhase);

/// What is known of a phase.
enum Seen {
    /// In force since; confirmation due after [`SETTLE`] (or retried after a failure).
    Due(Instant),
    /// Confirmed (or refused as stale: the keyserver moved on, the next snapshot shows it).
    Done,
}

/// Confirms every rotation phase in force until `stop` turns true.
pub(crate) async fn confirm_phases(
    client: Client,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen: HashMap<PhaseKey, Seen> = HashMap::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let now = Instant::now();
        let current: Vec<PhaseKey> = shared
            .current()
            .keyrings
            .iter()
            .filter_map(|(name, state)| {
                let r = &state.index.rotation.as_ref()?.rotation;
                Some((name.clone(), r.to, r.phase))
            })
            .collect();
        seen.retain(|k, _| current.contains(k));
        for key in current {
            let due = match seen.entry(key.clone()).or_insert(Seen::Due(now + SETTLE)) {
                Seen::Due(at) => *at,
                Seen::Done => continue,
            };
            if due > now {
                continue;
            }
            let (name, generation, phase) = &key;
            let outcome = match client.index_confirm(name, *generation, *phase).await {
                Ok(()) => {
                    tracing::info!(keyring = %name, generation, phase = phase.as_str(),
                        "blind-index rotation phase confirmed to the keyserver");
                    Seen::Done
                }
                Err(ClientError::Api { status: 409, .. }) => {
                    tracing::info!(keyring = %name, generation, phase = phase.as_str(),
                        "blind-index rotation phase no longer current; not confirmed");
                    Seen::Done
                }
                Err(e) => {
                    tracing::warn!(keyring = %name, generation, phase = phase.as_str(), error = %e,
                        "could not confirm a blind-index rotation phase; retrying");
                    Seen::Due(Instant::now() + RETRY)
                }
            };
            seen.insert(key, outcome);
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}
