//! A session's memo of column keys. [`KeySource::column`] hashes the column's three-part name
//! and takes the key snapshot's lock; a session asks for the same few columns on every
//! statement and every row. The memo answers from the last answers as long as the key source
//! reports the same epoch (no new snapshot published, grace period not expired); a source
//! without epochs is asked every time.

use std::sync::Arc;

use pgseal_crypto::ColumnId;

use crate::keys::{ColumnCrypto, KeyError, KeySource};

/// How many columns a session remembers.
const CAPACITY: usize = 8;

/// The memo of one session.
#[derive(Default)]
pub struct KeyCache {
    /// The epoch the entries were fetched at.
    epoch: Option<u64>,
    entries: Vec<(ColumnId, Arc<ColumnCrypto>)>,
}

impl KeyCache {
    /// The keys of `id`: remembered ones when `keys` is still at the epoch they were fetched
    /// at, else fetched (and remembered). Errors are not remembered.
    pub fn column(
        &mut self,
        keys: &dyn KeySource,
        id: &ColumnId,
    ) -> Result<Arc<ColumnCrypto>, KeyError> {
        let epoch = keys.epoch();
        if epoch.is_none() || epoch != self.epoch {
            self.entries.clear();
            self.epoch = epoch;
        }
        if epoch.is_some() {
            // Column name first: the other parts mostly repeat between a session's columns.
            let same = |c: &ColumnId| {
                c.column() == id.column() && c.table() == id.table() && c.schema() == id.schema()
            };
            if let Some((_, c)) = self.entries.iter().find(|(c, _)| same(c)) {
                return Ok(c.clone());
            }
        }
        let c = keys.column(id)?;
        if epoch.is_some() {
            if self.entries.len() >= CAPACITY {
                self.entries.remove(0);
            }
            self.entries.push((id.clone(), c.clone()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::rewrite::ProtectedColumn;
    use pgseal_crypto::value::LogicalType;
    use pgseal_crypto::SecretKey;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Keys whose material the test swaps, with an epoch it controls and a count of asks.
    struct Counting {
        keys: Mutex<Arc<ColumnCrypto>>,
        epoch: Mutex<Option<u64>>,
        asked: AtomicUsize,
        fail: AtomicU64,
    }

    impl KeySource for Counting {
        fn column(&self, column: &ColumnId) -> Result<Arc<ColumnCrypto>, KeyError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) == 1 {
                return Err(KeyError::UnknownColumn(column.to_string()));
            }
            Ok(self.keys.lock().unwrap().clone())
        }
        fn epoch(&self) -> Option<u64> {
            *self.epoch.lock().unwrap()
        }
    }

    fn crypto(version: u32) -> Arc<ColumnCrypto> {
        let col = ProtectedColumn {
            id: ColumnId::parse("public.t.c").unwrap(),
            ty: LogicalType::Text,
            keyring: "k".into(),
            index: None,
        };
        let key = SecretKey::from_bytes([3; 32]);
        let index = crate::keys::IndexKeys {
            generation: 1,
            material: &key,
            legacy: &[],
            rotation: None,
        };
        Arc::new(ColumnCrypto::derive(&col, &[(version, &key)], Some(version), &index).unwrap())
    }

    /// Version-1 keys at epoch 1, nothing asked yet.
    fn counting() -> Counting {
        Counting {
            keys: Mutex::new(crypto(1)),
            epoch: Mutex::new(Some(1)),
            asked: AtomicUsize::new(0),
            fail: AtomicU64::new(0),
        }
    }

    #[test]
    fn remembers_within_an_epoch_and_refetches_after() {
        let src = counting();
        let id = ColumnId::parse("public.t.c").unwrap();
        let other = ColumnId::parse("public.t.d").unwrap();
        let mut cache = KeyCache::default();
        for _ in 0..5 {
            assert_eq!(cache.column(&src, &id).unwrap().active_version(), Some(1));
        }
        assert_eq!(src.asked.load(Ordering::SeqCst), 1);
        cache.column(&src, &other).unwrap();
        assert_eq!(src.asked.load(Ordering::SeqCst), 2);
        // A new snapshot: asked again, and the new keys are served.
        *src.keys.lock().unwrap() = crypto(2);
        *src.epoch.lock().unwrap() = Some(2);
        assert_eq!(cache.column(&src, &id).unwrap().active_version(), Some(2));
        assert_eq!(src.asked.load(Ordering::SeqCst), 3);
        // No epoch (e.g. grace period expired): asked every time, and its error surfaces.
        *src.epoch.lock().unwrap() = None;
        src.fail.store(1, Ordering::SeqCst);
        assert!(cache.column(&src, &id).is_err());
        assert!(cache.column(&src, &id).is_err());
        assert_eq!(src.asked.load(Ordering::SeqCst), 5);
        // Errors are not remembered.
        *src.epoch.lock().unwrap() = Some(3);
        assert!(cache.column(&src, &id).is_err());
        src.fail.store(0, Ordering::SeqCst);
        assert!(cache.column(&src, &id).is_ok());
        assert_eq!(src.asked.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn keeps_at_most_capacity_columns() {
        let src = counting();
        let mut cache = KeyCache::default();
        let ids: Vec<ColumnId> = (0..CAPACITY + 1)
            .map(|i| ColumnId::parse(&format!("public.t.c{i}")).unwrap())
            .collect();
        for id in &ids {
            cache.column(&src, id).unwrap();
        }
        assert_eq!(cache.entries.len(), CAPACITY);
        // The first was evicted, the last is remembered.
        cache.column(&src, ids.last().unwrap()).unwrap();
        assert_eq!(src.asked.load(Ordering::SeqCst), CAPACITY + 1);
        cache.column(&src, &ids[0]).unwrap();
        assert_eq!(src.asked.load(Ordering::SeqCst), CAPACITY + 2);
    }
}
