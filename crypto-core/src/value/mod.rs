//! Typed values: the logical PostgreSQL types pgseal can protect, their wire formats, and the
//! canonical encoding that is encrypted and blind-indexed.
//!
//! A value enters as PostgreSQL text or binary wire format ([`LogicalType::parse_text`],
//! [`LogicalType::parse_binary`]), is stored as its canonical encoding
//! ([`Value::encode_canonical`]: a type tag and an exact body), and leaves in the wire format the
//! client asked for ([`Value::write_text`], [`Value::write_binary`]). The blind index is computed
//! over [`Value::index_input`], which maps values PostgreSQL considers equal (`'042'` and `42`,
//! `1.50` and `1.5`, `-0` and `0`) to the same bytes. `docs/format.md` specifies every encoding.

mod binary;
mod canonical;
pub mod datetime;
mod float;
pub mod json;
pub mod numeric;
mod text;

use thiserror::Error;

pub use canonical::Normalisation;
pub use json::Json;
pub use numeric::Numeric;

/// Why a value could not be parsed, decoded or rendered.
///
/// Messages name the type but never echo more than a short prefix of the input, since the input
/// may be the plaintext of a protected column.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueError {
    /// The text is not a valid literal of the type.
    #[error("invalid input syntax for type {ty}")]
    InvalidText {
        /// The logical type.
        ty: &'static str,
        /// Length of the rejected input (the input itself is not kept: it may be secret).
        len: usize,
    },
    /// The value is outside the type's range.
    #[error("value out of range for type {ty}")]
    OutOfRange {
        /// The logical type.
        ty: &'static str,
    },
    /// A binary-format value is malformed.
    #[error("invalid binary format for type {ty}: {why}")]
    BadBinary {
        /// The logical type.
        ty: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// The value is valid PostgreSQL but not supported on a protected column.
    #[error("unsupported value for protected column of type {ty}: {what}")]
    Unsupported {
        /// The logical type.
        ty: &'static str,
        /// What is not supported.
        what: String,
    },
    /// A canonical encoding (from a decrypted envelope) is malformed or of another type.
    #[error("corrupt canonical value: {0}")]
    BadCanonical(&'static str),
}

impl ValueError {
    pub(crate) fn invalid(ty: &'static str, input: &str) -> Self {
        Self::InvalidText {
            ty,
            len: input.len(),
        }
    }
}

/// The logical types a protected column can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum LogicalType {
    /// `text`
    Text,
    /// `varchar` / `character varying` (length limits are not enforced by the proxy)
    Varchar,
    /// `int2` / `smallint`
    Int2,
    /// `int4` / `integer`
    Int4,
    /// `int8` / `bigint`
    Int8,
    /// `bool` / `boolean`
    Bool,
    /// `float8` / `double precision`
    Float8,
    /// `numeric` / `decimal`
    Numeric,
    /// `date`
    Date,
    /// `timestamp` (without time zone)
    Timestamp,
    /// `timestamptz` (with time zone; held in UTC)
    TimestampTz,
    /// `uuid`
    Uuid,
    /// `jsonb`
    Jsonb,
    /// `bytea`
    Bytea,
}

impl LogicalType {
    /// Every supported type.
    pub const ALL: [LogicalType; 14] = [
        Self::Text,
        Self::Varchar,
        Self::Int2,
        Self::Int4,
        Self::Int8,
        Self::Bool,
        Self::Float8,
        Self::Numeric,
        Self::Date,
        Self::Timestamp,
        Self::TimestampTz,
        Self::Uuid,
        Self::Jsonb,
        Self::Bytea,
    ];

    /// PostgreSQL's type OID.
    pub fn oid(self) -> u32 {
        match self {
            Self::Text => 25,
            Self::Varchar => 1043,
            Self::Int2 => 21,
            Self::Int4 => 23,
            Self::Int8 => 20,
            Self::Bool => 16,
            Self::Float8 => 701,
            Self::Numeric => 1700,
            Self::Date => 1082,
            Self::Timestamp => 1114,
            Self::TimestampTz => 1184,
            Self::Uuid => 2950,
            Self::Jsonb => 3802,
            Self::Bytea => 17,
        }
    }

    /// PostgreSQL's canonical type name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Varchar => "varchar",
            Self::Int2 => "int2",
            Self::Int4 => "int4",
            Self::Int8 => "int8",
            Self::Bool => "bool",
            Self::Float8 => "float8",
            Self::Numeric => "numeric",
            Self::Date => "date",
            Self::Timestamp => "timestamp",
            Self::TimestampTz => "timestamptz",
            Self::Uuid => "uuid",
            Self::Jsonb => "jsonb",
            Self::Bytea => "bytea",
        }
    }

    /// Looks a type up by any of its SQL names (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase();
        Some(match n.as_str() {
            "text" => Self::Text,
            "varchar" | "character varying" => Self::Varchar,
            "int2" | "smallint" => Self::Int2,
            "int4" | "integer" | "int" => Self::Int4,
            "int8" | "bigint" => Self::Int8,
            "bool" | "boolean" => Self::Bool,
            "float8" | "double precision" => Self::Float8,
            "numeric" | "decimal" => Self::Numeric,
            "date" => Self::Date,
            "timestamp" | "timestamp without time zone" => Self::Timestamp,
            "timestamptz" | "timestamp with time zone" => Self::TimestampTz,
            "uuid" => Self::Uuid,
            "jsonb" => Self::Jsonb,
            "bytea" => Self::Bytea,
            _ => return None,
        })
    }

    /// Looks a type up by OID.
    pub fn from_oid(oid: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.oid() == oid)
    }
}

impl std::fmt::Display for LogicalType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A value of one of the [`LogicalType`]s.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `text`
    Text(String),
    /// `varchar`
    Varchar(String),
    /// `int2`
    Int2(i16),
    /// `int4`
    Int4(i32),
    /// `int8`
    Int8(i64),
    /// `bool`
    Bool(bool),
    /// `float8`
    Float8(f64),
    /// `numeric`
    Numeric(Numeric),
    /// `date`: days since 2000-01-01.
    Date(i32),
    /// `timestamp`: microseconds since 2000-01-01 00:00:00.
    Timestamp(i64),
    /// `timestamptz`: microseconds since 2000-01-01 00:00:00 UTC.
    TimestampTz(i64),
    /// `uuid`
    Uuid([u8; 16]),
    /// `jsonb`
    Jsonb(Json),
    /// `bytea`
    Bytea(Vec<u8>),
}

impl Value {
    /// The value's logical type.
    pub fn logical_type(&self) -> LogicalType {
        match self {
            Self::Text(_) => LogicalType::Text,
            Self::Varchar(_) => LogicalType::Varchar,
            Self::Int2(_) => LogicalType::Int2,
            Self::Int4(_) => LogicalType::Int4,
            Self::Int8(_) => LogicalType::Int8,
            Self::Bool(_) => LogicalType::Bool,
            Self::Float8(_) => LogicalType::Float8,
            Self::Numeric(_) => LogicalType::Numeric,
            Self::Date(_) => LogicalType::Date,
            Self::Timestamp(_) => LogicalType::Timestamp,
            Self::TimestampTz(_) => LogicalType::TimestampTz,
            Self::Uuid(_) => LogicalType::Uuid,
            Self::Jsonb(_) => LogicalType::Jsonb,
            Self::Bytea(_) => LogicalType::Bytea,
        }
    }
}
