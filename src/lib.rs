//! Root package of the pgseal workspace.
//!
//! It owns the system tests in `tests/`, the benchmarks in `benches/` and the
//! local demo. The product crates are `pgseal-crypto` (`crypto-core/`),
//! `pgseal-keyserver` (`keyserver/`) and `pgseal-proxy` (`proxy/`).
