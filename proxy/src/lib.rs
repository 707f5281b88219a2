//! pgseal-proxy (being built).
