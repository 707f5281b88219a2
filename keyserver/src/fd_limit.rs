//! The file-descriptor limit the connection limits need: every admitted connection holds one
//! descriptor, so the soft `RLIMIT_NOFILE` must exceed the sum of the pools, or `accept` fails
//! for everyone (proxies included) once anonymous clients hold the rest.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept for the database, the listener, logs and the runtime.
pub const RESERVED_FDS: u64 = 128;

/// Raises the soft limit towards the hard limit when `connections + RESERVED_FDS` does not
/// fit, and warns when it still does not. Returns the soft limit in force afterwards.
pub fn ensure(connections: usize) -> Option<u64> {
    let need = u64::try_from(connections)
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVED_FDS);
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current?;
    if soft >= need {
        return Some(soft);
    }
    let target = cur.maximum.map_or(need, |hard| hard.min(need));
    if target > soft
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: cur.maximum,
            },
        )
        .is_ok()
    {
        tracing::info!(from = soft, to = target, "raised the open-file limit");
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(soft);
    if now < need {
        tracing::warn!(
            limit = now,
            needed = need,
            "the open-file limit is below the configured connection limits plus {RESERVED_FDS}; \
             raise it (ulimit -n / LimitNOFILE=) or lower [limits]"
        );
    }
    Some(now)
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_needs_fit() {
        // The test process can always hold a handful of connections.
        let soft = super::ensure(1).unwrap();
        assert!(soft > super::RESERVED_FDS);
    }
}
