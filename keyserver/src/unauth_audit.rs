//! Bounded auditing of unauthenticated failures.
//!
//! Every failed unauthenticated request (no credentials, bad token, unusable certificate) is
//! still accounted for, but an anonymous client must not be able to turn each request into a
//! durable write. Per source IP and fixed clock-aligned window, the first
//! `records_per_source` failures are written as records of their own; the rest are counted and,
//! once the window has ended, written as one `auth_failure.aggregate` record per source (counts
//! in the detail, in the same hash chain as every other record). At most `max_sources` sources
//! are tracked per window; failures from further sources are counted into one aggregate record
//! with source `other`. So unauthenticated clients cause at most
//! `max_sources × (records_per_source + 1) + 1` records per window.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::config::AuditConfig;

/// Action name of aggregate records.
pub const AGGREGATE_ACTION: &str = "auth_failure.aggregate";
/// Most distinct actions named in one aggregate record.
const MAX_ACTIONS: usize = 16;

/// What to do with one unauthenticated failure.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write this event as a record of its own.
    Write,
    /// Counted; it will appear in the window's aggregate record.
    Counted,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    written: u64,
    suppressed: u64,
    by_outcome: BTreeMap<String, u64>,
    by_action: BTreeMap<String, u64>,
    other_actions: u64,
}

impl Counts {
    fn count_suppressed(&mut self, ev: &AuditEvent, outcome: &str) {
        self.suppressed += 1;
        *self.by_outcome.entry(outcome.to_owned()).or_default() += 1;
        if let Some(n) = self.by_action.get_mut(&ev.action) {
            *n += 1;
        } else if self.by_action.len() < MAX_ACTIONS {
            self.by_action.insert(ev.action.clone(), 1);
        } else {
            self.other_actions += 1;
        }
    }
}

#[derive(Debug, Default)]
struct Window {
    index: u64,
    sources: HashMap<IpAddr, Counts>,
    overflow: Counts,
}

/// The aggregator (one per server).
#[derive(Debug)]
pub struct UnauthAudit {
    window_secs: u64,
    per_source: u64,
    max_sources: usize,
    current: Mutex<Window>,
    /// Windows that ended and still have to be written.
    pending: Mutex<Vec<Window>>,
    /// Aggregate records whose write failed, tried again on the next flush.
    retry: Mutex<Vec<Aggregate>>,
}

/// One aggregate record to append: the event and its outcome.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// The record.
    pub event: AuditEvent,
    /// Its outcome (`unauthenticated`, `bad_credentials`).
    pub outcome: String,
}

fn now_unix_secs() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

impl UnauthAudit {
    /// A new aggregator for `cfg`.
    pub fn new(cfg: &AuditConfig) -> Self {
        Self {
            window_secs: cfg.unauthenticated_window_secs.max(1),
            per_source: u64::from(cfg.unauthenticated_records_per_source),
            max_sources: cfg.unauthenticated_max_sources,
            current: Mutex::new(Window::default()),
            pending: Mutex::new(Vec::new()),
            retry: Mutex::new(Vec::new()),
        }
    }

    /// Window length in seconds.
    pub fn window_secs(&self) -> u64 {
        self.window_secs
    }

    fn window_index(&self, unix: u64) -> u64 {
        unix / self.window_secs
    }

    /// Moves the current window to `pending` when `index` is newer.
    fn roll(&self, cur: &mut Window, index: u64) {
        if cur.index == index {
            return;
        }
        let old = std::mem::replace(
            cur,
            Window {
                index,
                ..Window::default()
            },
        );
        if !old.sources.is_empty() || old.overflow.suppressed > 0 {
            if let Ok(mut p) = self.pending.lock() {
                p.push(old);
            }
        }
    }

    /// Accounts for one unauthenticated failure at the current time.
    pub fn record(&self, ev: &AuditEvent, outcome: &str) -> Decision {
        self.record_at(ev, outcome, now_unix_secs())
    }

    fn record_at(&self, ev: &AuditEvent, outcome: &str, unix: u64) -> Decision {
        let index = self.window_index(unix);
        let Ok(mut cur) = self.current.lock() else {
            // A poisoned lock: fail towards writing (audited, just not aggregated).
            return Decision::Write;
        };
        self.roll(&mut cur, index);
        let tracked = cur.sources.len();
        let counts = match ev.source {
            Some(ip) if cur.sources.contains_key(&ip) || tracked < self.max_sources => {
                cur.sources.entry(ip).or_default()
            }
            _ => {
                cur.overflow.count_suppressed(ev, outcome);
                return Decision::Counted;
            }
        };
        if counts.written < self.per_source {
            counts.written += 1;
            Decision::Write
        } else {
            counts.count_suppressed(ev, outcome);
            Decision::Counted
        }
    }

    /// Aggregate records of windows that have ended (all of them when `all`, e.g. at
    /// shutdown). Records are returned, not written: the caller appends them to the chain and
    /// hands back what could not be written with [`requeue`](Self::requeue).
    pub fn take_due(&self, all: bool) -> Vec<Aggregate> {
        self.take_due_at(all, now_unix_secs())
    }

    fn take_due_at(&self, all: bool, unix: u64) -> Vec<Aggregate> {
        let index = self.window_index(unix);
        if let Ok(mut cur) = self.current.lock() {
            if all {
                self.roll(&mut cur, index.saturating_add(1));
            } else {
                self.roll(&mut cur, index);
            }
        }
        let windows = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => Vec::new(),
        };
        let mut out = match self.retry.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => Vec::new(),
        };
        for w in windows {
            let mut sources: Vec<_> = w.sources.into_iter().collect();
            sources.sort_by_key(|(ip, _)| *ip);
            for (ip, c) in sources {
                if c.suppressed > 0 {
                    out.push(self.aggregate(w.index, &ip.to_string(), &c));
                }
            }
            if w.overflow.suppressed > 0 {
                out.push(self.aggregate(w.index, "other", &w.overflow));
            }
        }
        out
    }

    fn aggregate(&self, index: u64, source: &str, c: &Counts) -> Aggregate {
        let start = index.saturating_mul(self.window_secs);
        let start_ts = i64::try_from(start)
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| start.to_string());
        let outcomes = c
            .by_outcome
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut actions = c
            .by_action
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>();
        if c.other_actions > 0 {
            actions.push(format!("other={}", c.other_actions));
        }
        let outcome = match c.by_outcome.keys().next() {
            Some(only) if c.by_outcome.len() == 1 => only.clone(),
            _ => "unauthenticated".to_owned(),
        };
        let event = AuditEvent::new(format!("unauthenticated:{source}"), AGGREGATE_ACTION).detail(
            format!(
                "source={source} window_start={start_ts} window_secs={} suppressed={} written_individually={} outcomes={outcomes} actions={}",
                self.window_secs,
                c.suppressed,
                c.written,
                actions.join(",")
            ),
        );
        Aggregate { event, outcome }
    }

    /// Puts aggregate events that could not be written back for the next attempt.
    pub fn requeue(&self, events: Vec<Aggregate>) {
        if events.is_empty() {
            return;
        }
        if let Ok(mut q) = self.retry.lock() {
            q.extend(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(per_source: u32, max_sources: usize) -> AuditConfig {
        AuditConfig {
            unauthenticated_window_secs: 10,
            unauthenticated_records_per_source: per_source,
            unauthenticated_max_sources: max_sources,
        }
    }

    fn ev(ip: &str) -> AuditEvent {
        AuditEvent::new("anonymous", "keyring.read").source(ip.parse().ok())
    }

    fn suppressed(a: &Aggregate) -> u64 {
        let d = a.event.detail.clone().unwrap_or_default();
        let v = d
            .split(' ')
            .find_map(|kv| kv.strip_prefix("suppressed="))
            .unwrap_or("x");
        v.parse().unwrap()
    }

    #[test]
    fn per_source_burst_then_counted_then_aggregated() {
        let u = UnauthAudit::new(&cfg(2, 10));
        let t = 1_000;
        let d: Vec<_> = (0..100)
            .map(|_| u.record_at(&ev("10.0.0.1"), "unauthenticated", t))
            .collect();
        assert_eq!(d.iter().filter(|d| **d == Decision::Write).count(), 2);
        // Same window: nothing due yet.
        assert!(u.take_due_at(false, t + 5).is_empty());
        let due = u.take_due_at(false, t + 10);
        assert_eq!(due.len(), 1);
        assert_eq!(suppressed(&due[0]), 98);
        assert_eq!(due[0].event.action, AGGREGATE_ACTION);
        assert_eq!(due[0].event.actor, "unauthenticated:10.0.0.1");
        assert_eq!(due[0].outcome, "unauthenticated");
        assert!(due[0]
            .event
            .detail
            .as_deref()
            .unwrap()
            .contains("keyring.read=98"));
        // A new window starts with a fresh allowance.
        assert_eq!(
            u.record_at(&ev("10.0.0.1"), "unauthenticated", t + 11),
            Decision::Write
        );
        assert!(
            u.take_due_at(false, t + 30).is_empty(),
            "nothing suppressed"
        );
    }

    #[test]
    fn sources_beyond_the_cap_share_one_record() {
        let u = UnauthAudit::new(&cfg(1, 3));
        let mut writes = 0;
        for i in 0..50u32 {
            let ip = format!("10.0.{}.{}", i / 200, i % 200);
            for _ in 0..4 {
                if u.record_at(&ev(&ip), "bad_credentials", 500) == Decision::Write {
                    writes += 1;
                }
            }
        }
        assert_eq!(writes, 3);
        let due = u.take_due_at(true, 500);
        // 3 tracked sources (3 suppressed each) + the overflow (47 × 4).
        assert_eq!(due.len(), 4);
        let total: u64 = due.iter().map(suppressed).sum();
        assert_eq!(total + writes, 200);
        assert!(due.iter().any(|a| a.event.actor == "unauthenticated:other"));
        assert!(u64::try_from(due.len()).unwrap() + writes <= cfg(1, 3).max_records_per_window());
    }

    #[test]
    fn requeued_aggregates_come_back() {
        let u = UnauthAudit::new(&cfg(0, 3));
        assert_eq!(
            u.record_at(&ev("::1"), "unauthenticated", 0),
            Decision::Counted
        );
        let due = u.take_due_at(true, 0);
        assert_eq!(due.len(), 1);
        u.requeue(due);
        assert_eq!(u.take_due_at(false, 0).len(), 1);
        assert!(u.take_due_at(false, 0).is_empty());
    }
}
