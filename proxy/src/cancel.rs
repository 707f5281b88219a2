//! Cancel keys. Clients get the proxy's own BackendKeyData; a CancelRequest carrying it is mapped
//! to the upstream connection's key and sent upstream. The secret is compared in constant time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;

/// Randomness failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a cancel key: {0}")]
pub struct CancelKeyError(String);

#[derive(Debug, Clone, Copy)]
struct Entry {
    secret: i32,
    upstream: Option<(i32, i32)>,
}

/// All live sessions' cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, Entry>>,
}

/// A registered key; removed from the registry on drop.
#[derive(Debug)]
pub struct CancelKey {
    /// Process id given to the client.
    pub pid: i32,
    /// Secret given to the client.
    pub secret: i32,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.map.lock() {
            m.remove(&self.pid);
        }
    }
}

fn random_i32() -> Result<i32, CancelKeyError> {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).map_err(|e| CancelKeyError(e.to_string()))?;
    Ok(i32::from_be_bytes(b))
}

impl CancelRegistry {
    /// Registers a session whose upstream key is `upstream` (None: the upstream sent none, so
    /// cancels are accepted and dropped).
    pub fn register(
        self: &Arc<Self>,
        upstream: Option<(i32, i32)>,
    ) -> Result<CancelKey, CancelKeyError> {
        let secret = random_i32()?;
        let mut map = self
            .map
            .lock()
            .map_err(|_| CancelKeyError("registry lock poisoned".into()))?;
        loop {
            // Positive, non-zero pids, like real backend pids.
            let pid = random_i32()? & 0x7fff_ffff;
            if pid == 0 || map.contains_key(&pid) {
                continue;
            }
            map.insert(pid, Entry { secret, upstream });
            return Ok(CancelKey {
                pid,
                secret,
                registry: Arc::clone(self),
            });
        }
    }

    /// The upstream key for a client's (pid, secret), if it matches a live session.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<(i32, i32)> {
        let map = self.map.lock().ok()?;
        let e = map.get(&pid)?;
        let ok: bool = e.secret.to_be_bytes().ct_eq(&secret.to_be_bytes()).into();
        if ok {
            e.upstream
        } else {
            None
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_lookup_drop() {
        let r = Arc::new(CancelRegistry::default());
        let k = r.register(Some((42, 7))).unwrap();
        assert_eq!(r.lookup(k.pid, k.secret), Some((42, 7)));
        assert_eq!(r.lookup(k.pid, k.secret.wrapping_add(1)), None);
        assert_eq!(r.len(), 1);
        drop(k);
        assert!(r.is_empty());
    }
}
