//! Identities that keys and ciphertexts are bound to.

use std::fmt;

use crate::CryptoError;

/// Longest identifier part we accept (PostgreSQL's NAMEDATALEN - 1 is 63 bytes; we allow
/// more so that a misconfigured name fails in the proxy's catalog check with a clear message
/// rather than here).
pub const MAX_PART_LEN: usize = 255;

/// A protected column: `schema.table.column`, exactly as PostgreSQL stores the names
/// (case-sensitive, already unquoted).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnId {
    schema: String,
    table: String,
    column: String,
}

impl ColumnId {
    /// Builds a column identity from its three unquoted parts.
    pub fn new(schema: &str, table: &str, column: &str) -> Result<Self, CryptoError> {
        for part in [schema, table, column] {
            check_part(part)?;
        }
        Ok(Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
            column: column.to_owned(),
        })
    }

    /// Parses `schema.table.column` (no part may contain a dot in this form).
    pub fn parse(dotted: &str) -> Result<Self, CryptoError> {
        let mut parts = dotted.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(s), Some(t), Some(c), None) => Self::new(s, t, c),
            _ => Err(CryptoError::InvalidIdentifier(format!(
                "expected schema.table.column, got {dotted:?}"
            ))),
        }
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }
    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }
    /// The column name.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The unambiguous binary encoding used in key derivation and AAD:
    /// each part as a big-endian u16 length followed by its UTF-8 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for part in [&self.schema, &self.table, &self.column] {
            encode_part(part, out);
        }
    }
}

impl fmt::Debug for ColumnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ColumnId({self})")
    }
}

impl fmt::Display for ColumnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// The name of an index group: columns that share a blind-index key so that they can be
/// compared (joined) on equality. A column without an explicit group is its own group,
/// named after the column (`schema.table.column`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexGroup(String);

impl IndexGroup {
    /// Validates and wraps a group name.
    pub fn new(name: &str) -> Result<Self, CryptoError> {
        check_part(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The default group of a column: its own dotted name.
    pub fn of_column(column: &ColumnId) -> Self {
        Self(column.to_string())
    }

    /// The group name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length-prefixed encoding, as for [`ColumnId::encode`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_part(&self.0, out);
    }
}

impl fmt::Debug for IndexGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IndexGroup({})", self.0)
    }
}

fn check_part(part: &str) -> Result<(), CryptoError> {
    if part.is_empty() {
        return Err(CryptoError::InvalidIdentifier("empty name".into()));
    }
    if part.len() > MAX_PART_LEN {
        return Err(CryptoError::InvalidIdentifier(format!(
            "name longer than {MAX_PART_LEN} bytes"
        )));
    }
    if part.contains('\0') {
        return Err(CryptoError::InvalidIdentifier("name contains NUL".into()));
    }
    Ok(())
}

fn encode_part(part: &str, out: &mut Vec<u8>) {
    // check_part bounds the length to MAX_PART_LEN, which fits in a u16.
    let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let id = ColumnId::parse("public.patients.name").unwrap();
        assert_eq!(id.to_string(), "public.patients.name");
        let mut enc = Vec::new();
        id.encode(&mut enc);
        assert_eq!(enc, b"\x00\x06public\x00\x08patients\x00\x04name");
    }

    #[test]
    fn encoding_is_unambiguous() {
        let a = ColumnId::new("a.b", "c", "d").unwrap();
        let b = ColumnId::new("a", "b.c", "d").unwrap();
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        a.encode(&mut ea);
        b.encode(&mut eb);
        assert_ne!(ea, eb);
    }

    #[test]
    fn rejects_bad_names() {
        assert!(ColumnId::parse("a.b").is_err());
        assert!(ColumnId::parse("a.b.c.d").is_err());
        assert!(ColumnId::parse("a..c").is_err());
        assert!(ColumnId::new("a", "b\0", "c").is_err());
        assert!(IndexGroup::new(&"x".repeat(256)).is_err());
        assert!(IndexGroup::new("").is_err());
    }
}
