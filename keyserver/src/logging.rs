//! The log subscriber of the pgseal binaries (`pgseal-proxy`, `pgseal-keyserver`).
//!
//! The user's filter (`PGSEAL_LOG` / `RUST_LOG`, EnvFilter syntax) applies to pgseal's own
//! targets (`pgseal_*`) only; every other target — sqlparser, rustls, tokio, hyper, h2, axum,
//! and `log` records of any crate — is capped at `warn`, whatever the filter says. Third-party
//! crates log at debug and trace what they handle (sqlparser the statement being parsed, its
//! tokens and literals; h2 and hyper frames and headers, where tokens travel), and pgseal's
//! logs must never contain SQL text, values or tokens: raising the level for them would be
//! one `PGSEAL_LOG=sqlparser=trace` away otherwise.

use tracing::level_filters::LevelFilter;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The most verbose level a target outside pgseal is logged at.
pub const OTHER_TARGETS_MAX: Level = Level::WARN;

/// Whether `target` belongs to pgseal's own crates (`pgseal_proxy`, `pgseal_keyserver`,
/// `pgseal_crypto`, … and their modules).
pub fn is_own_target(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or_default();
    krate.starts_with("pgseal_")
}

/// Whether a callsite may be logged at all: pgseal's own at any level, others up to
/// [`OTHER_TARGETS_MAX`].
pub fn allowed(metadata: &Metadata<'_>) -> bool {
    is_own_target(metadata.target()) || *metadata.level() <= OTHER_TARGETS_MAX
}

/// The filter of the binaries: `spec` (EnvFilter syntax; invalid directives are ignored, as
/// `EnvFilter::new` does) and [`allowed`].
pub fn filter<S>(spec: &str) -> impl Filter<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let user = EnvFilter::new(spec);
    // The cap never raises the user's level: its hint is the user's (so the `log` crate's
    // max level, taken from the hint, stays as low as before).
    let hint = Filter::<S>::max_level_hint(&user).unwrap_or(LevelFilter::TRACE);
    user.and(filter_fn(allowed).with_max_level_hint(hint))
}

/// Installs the global subscriber: [`filter`] of `spec`, formatted lines on stderr. `log`
/// records are forwarded into it (and filtered the same way).
pub fn init_stderr(spec: &str) {
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter(spec));
    tracing_subscriber::registry().with(layer).init();
}

/// The filter spec from the first of the environment variables `vars` that is set, else
/// `default`.
pub fn spec_from_env(vars: &[&str], default: &str) -> String {
    vars.iter()
        .find_map(|v| std::env::var(v).ok())
        .unwrap_or_else(|| default.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn own_targets() {
        for t in [
            "pgseal_proxy",
            "pgseal_proxy::session::relay",
            "pgseal_keyserver::client",
            "pgseal_crypto",
        ] {
            assert!(is_own_target(t), "{t}");
        }
        for t in [
            "sqlparser::parser",
            "rustls::server::hs",
            "h2::codec::framed_write",
            "hyper_util::client",
            "tokio",
            "log",
            "pgseal",
            "my_pgseal_proxy",
            "",
        ] {
            assert!(!is_own_target(t), "{t}");
        }
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(spec: &str) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || out.clone())
            .with_filter(filter(spec));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "pgseal_proxy::x", "own-trace");
            tracing::debug!(target: "pgseal_keyserver", "own-debug");
            tracing::info!(target: "pgseal_proxy", "own-info");
            tracing::trace!(target: "sqlparser::parser", "other-trace");
            tracing::debug!(target: "sqlparser::parser", "other-debug");
            tracing::info!(target: "h2::codec", "other-info");
            tracing::warn!(target: "rustls", "other-warn");
            tracing::error!(target: "hyper", "other-error");
        });
        let text = buf.0.lock().map(|v| v.clone()).unwrap_or_default();
        String::from_utf8_lossy(&text).into_owned()
    }

    #[test]
    fn other_targets_are_capped_at_warn_whatever_the_spec() {
        for spec in [
            "trace",
            "sqlparser=trace,trace",
            "sqlparser=trace,h2=trace,hyper=trace,rustls=trace,pgseal_proxy=trace,pgseal_keyserver=debug",
            "debug,sqlparser[foo]=trace",
        ] {
            let text = logged(spec);
            for never in ["other-trace", "other-debug", "other-info"] {
                assert!(!text.contains(never), "{spec}: {never} in\n{text}");
            }
            for always in ["other-warn", "other-error", "own-debug", "own-info"] {
                assert!(text.contains(always), "{spec}: {always} missing in\n{text}");
            }
        }
        // The user's level still applies to pgseal's own targets, and can lower the others.
        let text = logged("info");
        assert!(
            text.contains("own-info") && !text.contains("own-debug"),
            "{text}"
        );
        let text = logged("error");
        assert!(
            !text.contains("other-warn") && text.contains("other-error"),
            "{text}"
        );
        let text = logged("trace");
        assert!(text.contains("own-trace"), "{text}");
    }
}
