//! Connection admission: who may hold a connection, and how many.
//!
//! Three pools, each a semaphore taken without waiting (a full pool refuses the connection at
//! once instead of queueing it in the listen backlog, where it would delay everyone behind it):
//!
//! - **handshake**: every accepted TCP connection until its TLS handshake ends (bounded in time
//!   by the handshake timeout), also capped per source IP address;
//! - **proxy**: connections that presented a verified client certificate with a usable proxy
//!   name. Anonymous clients cannot take these slots, so they stay available for key fetches;
//! - **anonymous**: every other connection (admin tokens, unauthenticated), also capped per
//!   source IP address.
//!
//! A connection leaves the handshake pool before it joins the proxy or anonymous pool, so an
//! established proxy connection never depends on the handshake pool.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;

/// Counts connections per source address; entries are removed when they reach zero.
#[derive(Debug)]
struct PerSource {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerSource {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceGuard> {
        let mut m = self.counts.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            owner: self.clone(),
            ip,
        })
    }

    fn count(&self, ip: IpAddr) -> usize {
        self.counts
            .lock()
            .map(|m| m.get(&ip).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// One connection counted against its source; released on drop.
#[derive(Debug)]
pub struct SourceGuard {
    owner: Arc<PerSource>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.owner.counts.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

/// A slot held by one connection; released on drop.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _source: Option<SourceGuard>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The pool is full.
    PoolFull(&'static str),
    /// The source has its maximum of connections of this kind.
    SourceFull(&'static str),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PoolFull(p) => write!(f, "{p} connection slots are all in use"),
            Self::SourceFull(p) => write!(f, "the source has its maximum of {p} connections"),
        }
    }
}

/// The three pools.
#[derive(Debug, Clone)]
pub struct Admission {
    handshakes: Arc<Semaphore>,
    handshakes_per_source: Arc<PerSource>,
    anonymous: Arc<Semaphore>,
    anonymous_per_source: Arc<PerSource>,
    proxies: Arc<Semaphore>,
}

fn take(
    pool: &Arc<Semaphore>,
    per_source: Option<(&Arc<PerSource>, IpAddr)>,
    name: &'static str,
) -> Result<Slot, Refused> {
    let source = match per_source {
        Some((ps, ip)) => Some(ps.try_take(ip).ok_or(Refused::SourceFull(name))?),
        None => None,
    };
    let permit = pool
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refused::PoolFull(name))?;
    Ok(Slot {
        _permit: permit,
        _source: source,
    })
}

impl Admission {
    /// Pools sized by `limits`.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self {
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
            handshakes_per_source: PerSource::new(limits.max_handshakes_per_source),
            anonymous: Arc::new(Semaphore::new(limits.max_anonymous_connections)),
            anonymous_per_source: PerSource::new(limits.max_anonymous_per_source),
            proxies: Arc::new(Semaphore::new(limits.proxy_connections)),
        }
    }

    /// A slot for a new TCP connection until its TLS handshake ends.
    pub fn handshake(&self, ip: IpAddr) -> Result<Slot, Refused> {
        take(
            &self.handshakes,
            Some((&self.handshakes_per_source, ip)),
            "handshake",
        )
    }

    /// A slot for a connection with a verified proxy certificate.
    pub fn proxy(&self) -> Result<Slot, Refused> {
        take(&self.proxies, None, "proxy")
    }

    /// A slot for any other connection.
    pub fn anonymous(&self, ip: IpAddr) -> Result<Slot, Refused> {
        take(
            &self.anonymous,
            Some((&self.anonymous_per_source, ip)),
            "anonymous",
        )
    }

    /// Anonymous connections currently held by `ip` (for tests and diagnostics).
    pub fn anonymous_from(&self, ip: IpAddr) -> usize {
        self.anonymous_per_source.count(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            max_handshakes: 4,
            max_handshakes_per_source: 2,
            max_anonymous_connections: 3,
            max_anonymous_per_source: 2,
            proxy_connections: 2,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn pools_and_sources_are_bounded_and_released() {
        let a = Admission::new(&limits());
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let ip3: IpAddr = "10.0.0.3".parse().unwrap();
        let h1 = a.handshake(ip1).unwrap();
        let _h2 = a.handshake(ip1).unwrap();
        assert_eq!(
            a.handshake(ip1).unwrap_err(),
            Refused::SourceFull("handshake")
        );
        let _h3 = a.handshake(ip2).unwrap();
        let _h4 = a.handshake(ip2).unwrap();
        assert_eq!(
            a.handshake(ip3).unwrap_err(),
            Refused::PoolFull("handshake")
        );
        drop(h1);
        let _h5 = a.handshake(ip1).unwrap();

        let n1 = a.anonymous(ip1).unwrap();
        let _n2 = a.anonymous(ip1).unwrap();
        assert!(a.anonymous(ip1).is_err());
        let _n3 = a.anonymous(ip2).unwrap();
        assert_eq!(
            a.anonymous(ip3).unwrap_err(),
            Refused::PoolFull("anonymous")
        );
        // The anonymous pool being full does not touch the proxy reserve.
        let _p1 = a.proxy().unwrap();
        let _p2 = a.proxy().unwrap();
        assert_eq!(a.proxy().unwrap_err(), Refused::PoolFull("proxy"));
        assert_eq!(a.anonymous_from(ip1), 2);
        drop(n1);
        assert_eq!(a.anonymous_from(ip1), 1);
        assert!(a.anonymous(ip3).is_ok());
    }
}
