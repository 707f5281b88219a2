//! Protected cells: sealing a value for storage (blind-index prefix + envelope), computing lookup
//! tags, opening a stored cell, and the bytea / bytea[] encodings that carry them. Errors name
//! the column, never the value.

use pgseal_crypto::value::datetime::SessionZone;
use pgseal_crypto::value::{LogicalType, Value, ValueError};
use pgseal_crypto::{BlindIndex, CryptoError, BLIND_INDEX_LEN};
use zeroize::Zeroize;

use crate::keys::{ColumnCrypto, KeyError};
use crate::rewrite::ProtectedColumn;

/// SQLSTATE for a value that does not parse for the column's type.
pub const INVALID_TEXT: &str = "22P02";
/// SQLSTATE for a stored value that cannot be decrypted.
pub const DATA_CORRUPTED: &str = "XX001";
/// SQLSTATE for unavailable keys.
pub const KEYS_UNAVAILABLE: &str = "58000";

/// Why a protected cell could not be sealed, looked up or opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CellError {
    /// The client's value is not valid for the column's type.
    #[error("pgseal: invalid value for protected column {column} ({reason})")]
    Input {
        /// Column.
        column: String,
        /// The type error (no value text in it).
        reason: ValueError,
    },
    /// Keys are unavailable.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// The message does not fit the statement (parameter or format-code counts).
    #[error("{0}")]
    Protocol(String),
    /// A stored value failed to decrypt or decode.
    #[error("pgseal: data corrupted: column {column} row could not be decrypted")]
    Corrupt {
        /// Column.
        column: String,
    },
}

impl CellError {
    /// The SQLSTATE to report.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::Input { reason, .. } => match reason {
                ValueError::OutOfRange { .. } => "22003",
                _ => INVALID_TEXT,
            },
            Self::Key(_) => KEYS_UNAVAILABLE,
            Self::Protocol(_) => "08P01",
            Self::Corrupt { .. } => DATA_CORRUPTED,
        }
    }

    pub(crate) fn input(col: &ProtectedColumn, reason: ValueError) -> Self {
        Self::Input {
            column: col.id.to_string(),
            reason,
        }
    }
}

/// Parses a client value in text (`format == 0`, read in the session's time zone) or binary
/// format for the column's type.
pub fn parse_value(
    col: &ProtectedColumn,
    format: i16,
    bytes: &[u8],
    zone: &dyn SessionZone,
) -> Result<Value, CellError> {
    if format == 0 {
        let text = std::str::from_utf8(bytes).map_err(|_| {
            CellError::input(
                col,
                ValueError::InvalidText {
                    ty: col.ty.name(),
                    len: bytes.len(),
                },
            )
        })?;
        col.ty.parse_text_in(text, zone)
    } else {
        col.ty.parse_binary(bytes)
    }
    .map_err(|e| CellError::input(col, e))
}

/// Byte 16 of a dual cell (`tag_from ‖ 0x02 ‖ tag_to ‖ envelope`, docs/format.md §2.5); a
/// single cell's byte 16 is the envelope's format byte, 0x01.
pub const DUAL_MARKER: u8 = 0x02;

/// Length of a dual cell's two tags and marker (the envelope starts there).
pub const DUAL_PREFIX_LEN: usize = 2 * BLIND_INDEX_LEN + 1;

/// The envelope of a stored cell: after the tag (indexed columns) or both tags and the marker
/// (dual cells of a blind-index rotation); None when the cell is too short.
pub fn envelope_of(stored: &[u8], indexed: bool) -> Option<&[u8]> {
    if !indexed {
        return Some(stored);
    }
    let rest = stored.get(BLIND_INDEX_LEN..)?;
    if rest.first() == Some(&DUAL_MARKER) {
        stored.get(DUAL_PREFIX_LEN..)
    } else {
        Some(rest)
    }
}

/// Appends the stored form of `value`: the blind index under the keyring's active index
/// generation (indexed columns; independent of the data-key version; during a blind-index
/// rotation before its cut-over, a marker and the next generation's tag as well) and the
/// envelope of its canonical encoding under the active data-key version.
pub fn seal(
    crypto: &ColumnCrypto,
    col: &ProtectedColumn,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), CellError> {
    let envelope = crypto.envelope()?;
    if let Some(spec) = &col.index {
        let key = crypto
            .active_index()
            .ok_or_else(|| KeyError::NoActiveVersion {
                keyring: crypto.keyring().to_owned(),
                column: col.id.to_string(),
            })?;
        let mut input = Vec::with_capacity(32);
        value.index_input(spec.norm, &mut input);
        out.extend_from_slice(&key.tag(&input));
        // Before a blind-index rotation's cut-over: the second tag (docs/format.md §2.5).
        if let Some(second) = crypto.second_index() {
            out.push(DUAL_MARKER);
            out.extend_from_slice(&second.tag(&input));
        }
        input.zeroize();
    }
    let mut canonical = Vec::with_capacity(32);
    value.encode_canonical(&mut canonical);
    let r = envelope.encrypt_into(&canonical, out);
    canonical.zeroize();
    r.map_err(|_| CellError::Corrupt {
        column: col.id.to_string(),
    })
}

/// Appends the lookup tags of `value` under every blind-index key whose tags may be stored (the
/// lineage's active generation first, then legacy keys; docs/format.md §2.4).
pub fn lookup_tags(
    crypto: &ColumnCrypto,
    col: &ProtectedColumn,
    value: &Value,
    out: &mut Vec<BlindIndex>,
) -> Result<(), CellError> {
    let Some(spec) = &col.index else {
        return Err(CellError::Key(KeyError::UnknownColumn(format!(
            "{} (no equality index)",
            col.id
        ))));
    };
    let mut input = Vec::with_capacity(32);
    value.index_input(spec.norm, &mut input);
    out.extend(crypto.lookup_keys().iter().map(|k| k.tag(&input)));
    input.zeroize();
    Ok(())
}

/// Opens a stored cell (raw bytea bytes) of `col`.
pub fn open(
    crypto: &ColumnCrypto,
    col: &ProtectedColumn,
    stored: &[u8],
) -> Result<Value, CellError> {
    let corrupt = || CellError::Corrupt {
        column: col.id.to_string(),
    };
    let envelope = envelope_of(stored, col.index.is_some()).ok_or_else(corrupt)?;
    open_envelope(crypto, col, envelope)
}

/// Opens a bare envelope of `col` (no blind-index prefix, whether or not the column has one).
pub fn open_envelope(
    crypto: &ColumnCrypto,
    col: &ProtectedColumn,
    envelope: &[u8],
) -> Result<Value, CellError> {
    let corrupt = || CellError::Corrupt {
        column: col.id.to_string(),
    };
    let keys = crypto.envelope()?;
    let mut plain = Vec::with_capacity(envelope.len());
    let r = keys.decrypt_into(envelope, &mut plain);
    let value = match r {
        Ok(()) => Value::decode_canonical(&plain, col.ty).map_err(|_| corrupt()),
        Err(CryptoError::UnknownKeyVersion(v)) => {
            Err(CellError::Key(KeyError::VersionUnavailable {
                keyring: crypto.keyring().to_owned(),
                column: col.id.to_string(),
                version: v,
            }))
        }
        Err(_) => Err(corrupt()),
    };
    plain.zeroize();
    value
}

/// Renders `value` of `col` in the client's format (0 text, in the session's time zone; else
/// binary).
pub fn render(
    col: &ProtectedColumn,
    value: &Value,
    format: i16,
    out: &mut Vec<u8>,
    zone: &dyn SessionZone,
) -> Result<(), CellError> {
    if format == 0 {
        value
            .write_text_in(out, zone)
            .map_err(|e| CellError::input(col, e))
    } else {
        value.write_binary(out);
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends lower-case hex.
pub fn push_hex(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for b in bytes {
        for n in [b >> 4, b & 15] {
            out.push(char::from(HEX.get(usize::from(n)).copied().unwrap_or(b'0')));
        }
    }
}

/// The value of a hex digit; 0xff for any other byte.
fn hex_value(c: u8) -> u8 {
    HEX_VALUE.get(usize::from(c)).copied().unwrap_or(0xff)
}

/// The value of each ASCII hex digit; 0xff for every other byte.
// Evaluated at compile time: an index out of range would fail the build, not panic at run time.
#[allow(clippy::indexing_slicing)]
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Decodes a bytea in text output format (`\x` hex, or the escape format when the session set
/// `bytea_output = escape`) into `out`. None when malformed.
pub fn decode_bytea_text(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    match text.strip_prefix(b"\\x") {
        Some(hex) => decode_hex(hex, out),
        None => decode_bytea_escape(text, out),
    }
}

/// Appends the bytes of hex digits `hex` (an even number of them) to `out`.
pub fn decode_hex(hex: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if hex.len() % 2 != 0 {
        return None;
    }
    out.reserve(hex.len() / 2);
    let mut bad = 0u8;
    out.extend(hex.chunks_exact(2).map(|pair| {
        let (hi, lo) = match pair {
            [h, l] => (hex_value(*h), hex_value(*l)),
            _ => (0xff, 0xff),
        };
        bad |= hi | lo;
        hi << 4 | lo
    }));
    // Every valid digit is < 16: any invalid one sets the high bits.
    (bad < 16).then_some(())
}

/// The escape output format: `\\` is a backslash, `\ooo` an octal byte, anything else itself.
fn decode_bytea_escape(text: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut it = text.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next()? {
            b'\\' => out.push(b'\\'),
            &d0 @ b'0'..=b'3' => {
                let d1 = *it.next()?;
                let d2 = *it.next()?;
                if !(b'0'..=b'7').contains(&d1) || !(b'0'..=b'7').contains(&d2) {
                    return None;
                }
                out.push(((d0 - b'0') << 6) | ((d1 - b'0') << 3) | (d2 - b'0'));
            }
            _ => return None,
        }
    }
    Some(())
}

/// The SQL literal of a stored cell: `E'\\x…'::bytea` (an escape string, so the text is the
/// same whatever `standard_conforming_strings` says).
pub fn bytea_literal(stored: &[u8]) -> String {
    let mut s = String::with_capacity(stored.len() * 2 + 16);
    s.push_str("E'\\\\x");
    push_hex(stored, &mut s);
    s.push_str("'::bytea");
    s
}

/// The SQL expression of a tag array: `ARRAY[E'\\x…'::bytea, …]::bytea[]`.
pub fn tag_array_literal(tags: &[BlindIndex]) -> String {
    if tags.is_empty() {
        return "'{}'::bytea[]".to_owned();
    }
    let mut s = String::from("ARRAY[");
    for (i, t) in tags.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&bytea_literal(t));
    }
    s.push_str("]::bytea[]");
    s
}

/// A one-dimensional `bytea[]` in binary array format.
pub fn tag_array_binary(tags: &[BlindIndex]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + tags.len() * (4 + BLIND_INDEX_LEN));
    let ndim: i32 = i32::from(!tags.is_empty());
    out.extend_from_slice(&ndim.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&crate::rewrite::plan::BYTEA_OID.to_be_bytes());
    if !tags.is_empty() {
        out.extend_from_slice(&i32::try_from(tags.len()).unwrap_or(i32::MAX).to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes());
        for t in tags {
            out.extend_from_slice(&(BLIND_INDEX_LEN as i32).to_be_bytes());
            out.extend_from_slice(t);
        }
    }
    out
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(i32::from_be_bytes(s))
}

/// The elements of a client array parameter (text `{a,b}` or binary array format), NULLs
/// dropped. None when malformed.
pub fn array_elements(format: i16, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    if format == 0 {
        return text_array_elements(std::str::from_utf8(bytes).ok()?);
    }
    let ndim = usize::try_from(be_i32(bytes, 0)?).ok()?;
    let mut at = 12;
    let mut total: usize = if ndim == 0 { 0 } else { 1 };
    for _ in 0..ndim {
        let n = usize::try_from(be_i32(bytes, at)?).ok()?;
        total = total.checked_mul(n)?;
        at += 8;
    }
    let mut out = Vec::new();
    for _ in 0..total {
        let len = be_i32(bytes, at)?;
        at += 4;
        if len < 0 {
            continue;
        }
        let len = usize::try_from(len).ok()?;
        out.push(bytes.get(at..at + len)?.to_vec());
        at += len;
    }
    (at == bytes.len()).then_some(out)
}

/// A one-dimensional text array literal's elements (NULLs dropped).
fn text_array_elements(s: &str) -> Option<Vec<Vec<u8>>> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => item.push(chars.next()?),
                    c => item.push(c),
                }
            }
            while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '}' || c == '"' {
                    return None;
                }
                chars.next();
                if c == '\\' {
                    item.push(chars.next()?);
                } else {
                    item.push(c);
                }
            }
            let t = item.trim_end().to_owned();
            if t.is_empty() {
                return None;
            }
            item = t;
        }
        if quoted || !item.eq_ignore_ascii_case("NULL") {
            out.push(item.into_bytes());
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// The array type OID of a logical type (for ParameterDescription of `= ANY($n)`).
pub fn array_oid(ty: LogicalType) -> u32 {
    match ty {
        LogicalType::Text => 1009,
        LogicalType::Varchar => 1015,
        LogicalType::Int2 => 1005,
        LogicalType::Int4 => 1007,
        LogicalType::Int8 => 1016,
        LogicalType::Bool => 1000,
        LogicalType::Float8 => 1022,
        LogicalType::Numeric => 1231,
        LogicalType::Date => 1182,
        LogicalType::Timestamp => 1115,
        LogicalType::TimestampTz => 1185,
        LogicalType::Uuid => 2951,
        LogicalType::Jsonb => 3807,
        _ => 1001,
    }
}

/// PostgreSQL's `typlen` of a logical type.
pub fn typlen(ty: LogicalType) -> i16 {
    match ty {
        LogicalType::Int2 => 2,
        LogicalType::Int4 | LogicalType::Date => 4,
        LogicalType::Int8
        | LogicalType::Float8
        | LogicalType::Timestamp
        | LogicalType::TimestampTz => 8,
        LogicalType::Bool => 1,
        LogicalType::Uuid => 16,
        _ => -1,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::keys::{IndexKeys, IndexRotationKeys};
    use crate::rewrite::IndexSpec;
    use pgseal_crypto::value::{LogicalType, Normalisation};
    use pgseal_crypto::{BlindIndexKey, ColumnId, IndexGroup, SecretKey};
    use pgseal_keyserver::model::IndexPhase;

    /// Before a blind-index rotation's cut-over a sealed cell carries both tags and opens; after
    /// it, one tag of the new generation. `envelope_of` finds the envelope in every form.
    #[test]
    fn dual_cells_during_a_blind_index_rotation() {
        let id = ColumnId::parse("public.acct.email").unwrap();
        let col = ProtectedColumn {
            index: Some(IndexSpec {
                group: IndexGroup::of_column(&id),
                norm: Normalisation::default(),
                unique: true,
            }),
            id,
            ty: LogicalType::Text,
            keyring: "k".into(),
        };
        let group = col.index.as_ref().unwrap().group.clone();
        let (data, g1, g2) = (
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([5; 32]),
            SecretKey::from_bytes([6; 32]),
        );
        let keys = |generation, material, phase, other, other_material| IndexKeys {
            generation,
            material,
            legacy: &[],
            rotation: Some(IndexRotationKeys {
                phase,
                other,
                material: other_material,
            }),
        };
        let value = Value::Text("anna@example.org".into());
        let mut input = Vec::new();
        value.index_input(Normalisation::default(), &mut input);
        let tag = |m: &SecretKey, g: u32| BlindIndexKey::derive(m, g, &group).unwrap().tag(&input);
        let dual = ColumnCrypto::derive(
            &col,
            &[(1, &data)],
            Some(1),
            &keys(1, &g1, IndexPhase::Dual, 2, &g2),
        )
        .unwrap();
        let mut cell = Vec::new();
        seal(&dual, &col, &value, &mut cell).unwrap();
        assert_eq!(cell[16], DUAL_MARKER);
        assert_eq!(&cell[..16], &tag(&g1, 1)[..]);
        assert_eq!(&cell[17..33], &tag(&g2, 2)[..]);
        assert_eq!(open(&dual, &col, &cell).unwrap(), value);
        assert_eq!(envelope_of(&cell, true).unwrap(), &cell[DUAL_PREFIX_LEN..]);
        let cut = ColumnCrypto::derive(
            &col,
            &[(1, &data)],
            Some(1),
            &keys(2, &g2, IndexPhase::Cutover, 1, &g1),
        )
        .unwrap();
        // A dual cell opens after the cut-over too, and a new one is single under generation 2.
        assert_eq!(open(&cut, &col, &cell).unwrap(), value);
        let mut single = Vec::new();
        seal(&cut, &col, &value, &mut single).unwrap();
        assert_eq!(single[16], pgseal_crypto::envelope::FORMAT_VERSION);
        assert_eq!(
            &single[..16],
            &tag(&g2, 2)[..],
            "the new single tag is generation 2's"
        );
        assert_eq!(envelope_of(&single, true).unwrap(), &single[16..]);
        assert!(envelope_of(&[0u8; 10], true).is_none());
        assert!(envelope_of(&cell[..20], true).is_none());
    }

    #[test]
    fn text_arrays() {
        let e = |s: &str| {
            text_array_elements(s).map(|v| {
                v.into_iter()
                    .map(|b| String::from_utf8(b).unwrap())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(e("{a,b}"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(
            e(r#"{ "x,y" , NULL, "NULL", c\,d }"#),
            Some(vec!["x,y".into(), "NULL".into(), "c,d".into()])
        );
        assert_eq!(e("{}"), Some(vec![]));
        assert_eq!(e("{a,}"), None);
        assert_eq!(e("a,b"), None);
        assert_eq!(e(r#"{"a"#), None);
    }

    #[test]
    fn binary_arrays() {
        let tags = [[1u8; 16], [2u8; 16]];
        let b = tag_array_binary(&tags);
        let els = array_elements(1, &b).unwrap();
        assert_eq!(els, vec![vec![1u8; 16], vec![2u8; 16]]);
        assert_eq!(array_elements(1, &tag_array_binary(&[])).unwrap().len(), 0);
        assert!(array_elements(1, &b[..b.len() - 1]).is_none());
    }

    #[test]
    fn hex_roundtrip() {
        let mut s = String::from("\\x");
        push_hex(&[0, 0xab, 0xff], &mut s);
        let mut out = Vec::new();
        decode_bytea_text(s.as_bytes(), &mut out).unwrap();
        assert_eq!(out, vec![0, 0xab, 0xff]);
        assert!(decode_bytea_text(b"\\x0", &mut Vec::new()).is_none());
        let mut esc = Vec::new();
        decode_bytea_text(b"a\\\\\\001\\377", &mut esc).unwrap();
        assert_eq!(esc, vec![b'a', b'\\', 1, 255]);
        assert!(decode_bytea_text(b"\\9", &mut Vec::new()).is_none());
        assert!(decode_bytea_text(b"\\01", &mut Vec::new()).is_none());
        assert_eq!(bytea_literal(&[0xab]), "E'\\\\xab'::bytea");
    }

    #[test]
    fn hex_decoding_covers_every_byte_and_rejects_non_digits() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut s = String::from("\\x");
        push_hex(&all, &mut s);
        let mut out = Vec::new();
        decode_bytea_text(s.as_bytes(), &mut out).unwrap();
        assert_eq!(out, all);
        let mut upper = Vec::new();
        decode_bytea_text(b"\\xABcD09", &mut upper).unwrap();
        assert_eq!(upper, vec![0xab, 0xcd, 0x09]);
        for bad in [
            &b"\\xg0"[..],
            b"\\x0g",
            b"\\x 0",
            b"\\x0\xff",
            b"\\x:0",
            b"\\x0/",
        ] {
            assert!(
                decode_bytea_text(bad, &mut Vec::new()).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
