//! pgseal-keyserver (being built).
