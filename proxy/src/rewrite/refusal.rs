//! Refusals: statements the proxy will not forward, with the SQLSTATE to report.

use std::fmt;

/// SQLSTATE `0A000` feature_not_supported.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE `42883` undefined_function (an operator or function over ciphertext).
pub const UNDEFINED_FUNCTION: &str = "42883";
/// SQLSTATE `42601` syntax_error (a statement that mentions a protected table and cannot be parsed).
pub const SYNTAX_ERROR: &str = "42601";
/// SQLSTATE `XX000` internal_error (the rewriter could not verify its own output).
pub const INTERNAL_ERROR: &str = "XX000";

/// Why a statement is not forwarded. The message names the protected column
/// (`schema.table.column`) and the operation; it never contains a literal value of the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The SQLSTATE for the ErrorResponse.
    pub sqlstate: &'static str,
    /// The human-readable message (no literal values).
    pub message: String,
}

impl Refusal {
    /// A refusal with an explicit SQLSTATE.
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self {
            sqlstate,
            message: message.into(),
        }
    }

    /// `0A000`: an operation on a protected column that pgseal cannot perform on ciphertext.
    pub fn unsupported(column: &dyn fmt::Display, operation: &str) -> Self {
        Self::new(
            FEATURE_NOT_SUPPORTED,
            format!("pgseal: {operation} is not supported on protected column {column}"),
        )
    }

    /// `42883`: a function, cast or operator applied to a protected column.
    pub fn undefined_function(column: &dyn fmt::Display, operation: &str) -> Self {
        Self::new(
            UNDEFINED_FUNCTION,
            format!("pgseal: {operation} cannot be applied to protected column {column}"),
        )
    }

    /// `0A000` for a statement form that touches a protected table but is not handled.
    pub fn unsupported_statement(table: &str, what: &str) -> Self {
        Self::new(
            FEATURE_NOT_SUPPORTED,
            format!("pgseal: {what} is not supported on protected table {table}"),
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.sqlstate)
    }
}

impl std::error::Error for Refusal {}
