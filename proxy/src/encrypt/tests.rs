//! Tests of the encryption interceptor.
