//! A per-session memo of RowDescriptions. libpq describes every portal it executes
//! (`PQexecPrepared`, `PQexecParams`), so a busy session receives the same RowDescription for
//! every statement it runs; mapping its fields onto the catalog and rebuilding the client's
//! RowDescription each time costs more than the decryption of a small row. The memo keeps the
//! result plan and the client's RowDescription of the last few distinct answers, keyed by the
//! upstream message body (byte for byte), the catalog generation they were mapped against and
//! the client's format codes when the proxy asked the upstream for other ones.

use std::sync::Arc;

use bytes::Bytes;

use super::rows::RowPlan;

/// How many distinct RowDescriptions a session remembers.
pub const CAPACITY: usize = 8;

/// A remembered answer.
struct Entry {
    generation: u64,
    upstream: Box<[u8]>,
    client_formats: Option<Box<[i16]>>,
    plan: Arc<RowPlan>,
    /// The complete RowDescription message the client gets; None when the upstream's is
    /// forwarded unchanged (no protected column).
    client: Option<Bytes>,
}

/// The memo of one session.
#[derive(Default)]
pub struct RowMemo {
    entries: Vec<Entry>,
    /// The slot the next new entry replaces once the memo is full.
    next: usize,
}

impl RowMemo {
    /// The plan and client message remembered for the RowDescription `body` mapped at
    /// catalog `generation` for a client expecting `client_formats` (None: the upstream's).
    pub fn get(
        &self,
        generation: u64,
        body: &[u8],
        client_formats: Option<&[i16]>,
    ) -> Option<(Arc<RowPlan>, Option<Bytes>)> {
        self.entries
            .iter()
            .find(|e| {
                e.generation == generation
                    && *e.upstream == *body
                    && e.client_formats.as_deref() == client_formats
            })
            .map(|e| (e.plan.clone(), e.client.clone()))
    }

    /// Remembers the plan and client message of `body` mapped at catalog `generation` for a
    /// client expecting `client_formats` (replacing the oldest entry when full).
    pub fn put(
        &mut self,
        generation: u64,
        body: &[u8],
        client_formats: Option<&[i16]>,
        plan: Arc<RowPlan>,
        client: Option<Bytes>,
    ) {
        let entry = Entry {
            generation,
            upstream: body.into(),
            client_formats: client_formats.map(Into::into),
            plan,
            client,
        };
        if self.entries.len() < CAPACITY {
            self.entries.push(entry);
            return;
        }
        if let Some(slot) = self.entries.get_mut(self.next) {
            *slot = entry;
        }
        self.next = (self.next + 1) % CAPACITY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize) -> Arc<RowPlan> {
        Arc::new(RowPlan::new(vec![None; n], vec![0; n]))
    }

    #[test]
    fn hits_only_the_same_bytes_at_the_same_generation() {
        let mut m = RowMemo::default();
        assert!(m.get(1, b"abc", None).is_none());
        m.put(
            1,
            b"abc",
            None,
            plan(1),
            Some(Bytes::from_static(b"T-client")),
        );
        let (p, c) = m.get(1, b"abc", None).unwrap();
        assert_eq!(*p, *plan(1));
        assert_eq!(c.as_deref(), Some(&b"T-client"[..]));
        assert!(
            m.get(2, b"abc", None).is_none(),
            "another catalog generation"
        );
        assert!(m.get(1, b"abd", None).is_none(), "other bytes");
        assert!(m.get(1, b"ab", None).is_none(), "a prefix");
        assert!(
            m.get(1, b"abc", Some(&[0])).is_none(),
            "other client formats"
        );
        m.put(1, b"abc", Some(&[0]), plan(2), None);
        assert_eq!(*m.get(1, b"abc", Some(&[0])).unwrap().0, *plan(2));
        assert!(m.get(1, b"abc", Some(&[1])).is_none());
        assert_eq!(*m.get(1, b"abc", None).unwrap().0, *plan(1));
    }

    #[test]
    fn replaces_the_oldest_entry_when_full() {
        let mut m = RowMemo::default();
        for i in 0..CAPACITY + 2 {
            m.put(1, &[u8::try_from(i).unwrap()], None, plan(i), None);
        }
        assert!(m.get(1, &[0], None).is_none());
        assert!(m.get(1, &[1], None).is_none());
        for i in 2..CAPACITY + 2 {
            let (p, _) = m.get(1, &[u8::try_from(i).unwrap()], None).unwrap();
            assert_eq!(*p, *plan(i), "entry {i}");
        }
    }
}
