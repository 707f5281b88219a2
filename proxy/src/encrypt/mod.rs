//! The encryption layer: a [`crate::session::MessageInterceptor`] that rewrites statements on
//! protected columns (through [`crate::rewrite`]), encrypts bound values, and decrypts results.
