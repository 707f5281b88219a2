//! The last line against handing ciphertext to a client as if it were data.
//!
//! A result column is decrypted only when its RowDescription names a protected column (table
//! OID and attribute number). Values of a protected column can also reach a result without that
//! name: a function returning rows of a protected table (`SELECT * FROM f()`, table OID 0), a
//! plain `bytea` column someone copied ciphertext into directly upstream, an array or record
//! built from it, `COPY` out of any of these. Every `bytea` result column the proxy does not
//! decrypt is therefore checked cell by cell, and so are columns of types that can embed `bytea`
//! values (arrays, records, user-defined types) and COPY data: a value whose bytes could be a
//! stored value (an envelope header at offset 0, at offset 16 behind a blind index, or at offset
//! 33 behind the two tags of a blind-index rotation's dual cell) is
//! opened with the keys of every protected column; if one authenticates it, the result is
//! refused. A false refusal needs a forged AES-GCM-SIV tag; plain `bytea` values pay a few byte
//! comparisons (and only those that look like a header pay the trial decryptions).

use std::sync::LazyLock;

use memchr::memmem;
use pgseal_crypto::envelope::{FORMAT_VERSION, OVERHEAD};
use pgseal_crypto::BLIND_INDEX_LEN;

use super::cells;
use crate::keys::{KeyError, KeySource};
use crate::rewrite::{ProtectedColumn, ProtectedSchema};

/// Offsets an envelope header can be at in a stored value: a column without blind index, one
/// with, a dual cell of a blind-index rotation (docs/format.md §2.5).
const HEADER_OFFSETS: [usize; 3] = [0, BLIND_INDEX_LEN, cells::DUAL_PREFIX_LEN];

/// Bytes of a stored value the pre-check looks at: the longest prefix before a header, the
/// format byte and the two high bytes of the key version.
const PREFIX_LEN: usize = cells::DUAL_PREFIX_LEN + 3;

/// Whether an envelope header could start at `at`: the format byte, then a key version below
/// 65 536 (the two high bytes of the big-endian u32 are zero), with room for the whole
/// envelope overhead. Key versions count rotations from 1, so every real envelope passes.
fn header_at(stored: &[u8], at: usize) -> bool {
    stored.len() >= at + OVERHEAD && head_at(stored, at)
}

/// Whether the first bytes of a header (format, two high bytes of the key version) are at `at`.
fn head_at(bytes: &[u8], at: usize) -> bool {
    matches!(bytes.get(at..at + 3), Some([f, 0, 0]) if *f == FORMAT_VERSION)
}

/// Whether `stored` (raw bytea bytes) could be a protected column's stored value.
pub fn may_be_stored_value(stored: &[u8]) -> bool {
    HEADER_OFFSETS.iter().any(|at| header_at(stored, *at))
}

/// Whether a bytea cell in PostgreSQL's text format (`\x` hex, or the escape format) could be
/// a stored value; when it could, its raw bytes are in `raw` (cleared first). None: not valid
/// bytea text.
pub fn may_be_stored_text(text: &[u8], raw: &mut Vec<u8>) -> Option<bool> {
    raw.clear();
    match text.strip_prefix(b"\\x") {
        Some(hex) => may_be_stored_hex(hex, raw),
        None => {
            cells::decode_bytea_text(text, raw)?;
            Some(may_be_stored_value(raw))
        }
    }
}

/// Like [`may_be_stored_text`] for bare hex digits: the rest is decoded only when the first
/// bytes look like a header (`raw` holds all the bytes when true, nothing otherwise).
fn may_be_stored_hex(hex: &[u8], raw: &mut Vec<u8>) -> Option<bool> {
    raw.clear();
    // Shortest envelope: OVERHEAD bytes, 2 hex digits each.
    if hex.len() < 2 * OVERHEAD {
        return Some(false);
    }
    cells::decode_hex(hex.get(..2 * PREFIX_LEN).unwrap_or(hex), raw)?;
    let head = HEADER_OFFSETS.iter().any(|at| head_at(raw, *at));
    raw.clear();
    if !head {
        return Some(false);
    }
    cells::decode_hex(hex, raw)?;
    Some(may_be_stored_value(raw))
}

/// The protected column whose keys authenticate `stored` (raw bytea bytes), if any. Errors
/// when the keys of a column are unavailable while `stored` looks like a stored value: the
/// proxy cannot rule out that it is one.
pub fn column_of<'a>(
    schema: &'a ProtectedSchema,
    keys: &dyn KeySource,
    stored: &[u8],
) -> Result<Option<&'a ProtectedColumn>, KeyError> {
    if !may_be_stored_value(stored) {
        return Ok(None);
    }
    for col in schema.columns() {
        // The stored form (behind the blind index where the column has one), and the bare
        // envelope cut out of it or glued behind 16 other bytes (`substring(email from 17)`,
        // `'\x…'::bytea || note`): every offset a header can be at is tried.
        for at in HEADER_OFFSETS {
            let Some(envelope) = stored.get(at..).filter(|_| header_at(stored, at)) else {
                continue;
            };
            let crypto = keys.column(&col.id)?;
            match cells::open_envelope(&crypto, col, envelope) {
                Ok(_) => return Ok(Some(col)),
                Err(cells::CellError::Key(KeyError::VersionUnavailable { .. })) => {
                    // A version the column does not have (any more): if it ever sealed this
                    // value, the proxy cannot tell, but neither can anyone read it with these keys.
                }
                Err(cells::CellError::Key(e)) => return Err(e),
                Err(_) => {}
            }
        }
    }
    Ok(None)
}

/// The protected column whose keys authenticate a value embedded in `data`, if any: one
/// CopyData message of a `COPY … TO STDOUT` (which carries no column types), or a result cell
/// of a type that can hold `bytea` values (an array, a record). Every value that could be a
/// stored `bytea` value is tried: hex renderings anywhere (see [`hex_column_of`]), and in
/// binary formats every stretch behind a plausible length word.
pub fn embedded_column_of<'a>(
    schema: &'a ProtectedSchema,
    keys: &dyn KeySource,
    data: &[u8],
    binary: bool,
) -> Result<Option<&'a ProtectedColumn>, KeyError> {
    if binary {
        let mut at = 0;
        while let Some(len_bytes) = data.get(at..at + 4) {
            let len = <[u8; 4]>::try_from(len_bytes).map_or(0, u32::from_be_bytes);
            let value = usize::try_from(len)
                .ok()
                .filter(|l| *l >= OVERHEAD)
                .and_then(|l| data.get(at + 4..at + 4 + l));
            if let Some(v) = value {
                if let Some(col) = column_of(schema, keys, v)? {
                    return Ok(Some(col));
                }
            }
            at += 1;
        }
    }
    // Text inside binary records and arrays is rendered like text: checked the same way.
    text_column_of(schema, keys, data)
}

/// Finds the hex digits of a header's first three bytes (format 1, key version below 65 536);
/// built once (building a searcher costs more than scanning a short value).
static HEAD_HEX: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"010000"));

/// The protected column whose keys authenticate a stored value written out in hex inside
/// `text`, if any: `bytea` text output (`\x…`, also inside arrays, records, JSON and COPY
/// data) and `encode(…, 'hex')`, in either letter case. A candidate is a run of hex digits
/// (not preceded by one) that starts with a header, or with 16 bytes of blind index and then a
/// header, and ends where the digits end. A run glued to other hex digits on either side is
/// not taken apart.
///
/// Linear in the length of `text`: at most three candidates per run are decoded, each once.
fn hex_column_of<'a>(
    schema: &'a ProtectedSchema,
    keys: &dyn KeySource,
    text: &[u8],
) -> Result<Option<&'a ProtectedColumn>, KeyError> {
    // Shortest stored value: OVERHEAD bytes, two digits each.
    if text.len() < 2 * OVERHEAD {
        return Ok(None);
    }
    let hex = |i: usize| text.get(i).is_some_and(u8::is_ascii_hexdigit);
    let mut raw = Vec::new();
    for at in HEAD_HEX.find_iter(text) {
        // The run starts at the header, or 16 or 33 bytes of prefix before it.
        let Some(start) = HEADER_OFFSETS.iter().map(|o| 2 * o).find_map(|digits| {
            let start = at.checked_sub(digits)?;
            ((start == 0 || !hex(start - 1)) && (start..at).all(hex)).then_some(start)
        }) else {
            continue;
        };
        let run = text
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if run < 2 * OVERHEAD {
            continue;
        }
        let digits = text.get(start..start + run - run % 2).unwrap_or_default();
        raw.clear();
        if cells::decode_hex(digits, &mut raw).is_none() || !may_be_stored_value(&raw) {
            continue;
        }
        if let Some(col) = column_of(schema, keys, &raw)? {
            return Ok(Some(col));
        }
    }
    Ok(None)
}

/// The protected column whose keys authenticate a value rendered into `text` (a text result
/// cell, or text inside a record or array), if any: hex renderings ([`hex_column_of`]), base64
/// renderings (`encode(…, 'base64')`, which PostgreSQL wraps every 76 characters) and escape
/// renderings (`encode(…, 'escape')`, a `bytea` cast to text under `bytea_output = escape`).
pub fn text_column_of<'a>(
    schema: &'a ProtectedSchema,
    keys: &dyn KeySource,
    text: &[u8],
) -> Result<Option<&'a ProtectedColumn>, KeyError> {
    if let Some(col) = hex_column_of(schema, keys, text)? {
        return Ok(Some(col));
    }
    if let Some(col) = base64_column_of(schema, keys, text)? {
        return Ok(Some(col));
    }
    escape_column_of(schema, keys, text)
}

/// Characters of a base64 rendering, with the line breaks PostgreSQL puts into one.
fn base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r')
}

/// Base64 renderings: each maximal run of base64 characters long enough for an envelope is
/// decoded (line breaks removed) and checked like a stored value. Linear in `text`.
fn base64_column_of<'a>(
    schema: &'a ProtectedSchema,
    keys: &dyn KeySource,
    text: &[u8],
) -> Result<Option<&'a ProtectedColumn>, KeyError> {
    use base64::Engine as _;
    // Shortest stored value: OVERHEAD bytes, 4 characters per 3 bytes.
    let shortest = OVERHEAD.div_ceil(3) * 4;
    if text.len() < shortest {
        return Ok(None);
    }
    let mut run = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let len = text
            .get(at..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| base64_char(**b))
            .count();
        if len == 0 {
            at += 1;
            continue;
        }
        run.clear();
        run.extend(
            text.get(at..at + len)
                .unwrap_or_default()
                .iter()
                .filter(|b| !matches!(b, b'\n' | b'\r')),
        );
        at += len;
        if run.len() < shortest {
            continue;
        }
        let engine = if run.ends_with(b"=") || run.len() % 4 == 0 {
            &base64::engine::general_purpose::STANDARD
        } else {
            &base64::engine::general_purpose::STANDARD_NO_PAD
        };
        let Ok(raw) = engine.decode(&run) else {
            continue;
        };
        if may_be_stored_value(&raw) {
            if let Some(col) = column_of(schema, keys, &raw)? {
                return Ok(Some(col));
            }
        }
    }
    Ok(None)
}

/// Escape renderings: when `text` holds an escaped header (`\001\000\000`), it is decoded as
/// `bytea` escape text and the first few header positions are checked (the envelope runs to
/// the end of the cell, as `encode(…, 'escape')` renders it).
fn escape_column_of<'a>(
    schema: &'a ProtectedSchema,
    keys: &dyn KeySource,
    text: &[u8],
) -> Result<Option<&'a ProtectedColumn>, KeyError> {
    /// Header positions tried per cell (bounds the trial decryptions).
    const MAX_TRIES: usize = 4;
    if memmem::find(text, b"\\001\\000\\000").is_none() {
        return Ok(None);
    }
    let mut raw = Vec::new();
    if cells::decode_bytea_text(text, &mut raw).is_none() {
        return Ok(None);
    }
    let heads = memmem::find_iter(&raw, &[FORMAT_VERSION, 0, 0]).take(MAX_TRIES);
    for p in heads.collect::<Vec<_>>() {
        for start in HEADER_OFFSETS.iter().filter_map(|o| p.checked_sub(*o)) {
            if let Some(col) = column_of(schema, keys, raw.get(start..).unwrap_or_default())? {
                return Ok(Some(col));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn the_pre_check_passes_headers_at_either_offset_only() {
        let mut v = vec![0xabu8; 64];
        assert!(!may_be_stored_value(&v));
        v[0] = FORMAT_VERSION;
        v[1] = 0;
        v[2] = 0;
        assert!(may_be_stored_value(&v));
        // too short for an envelope
        assert!(!may_be_stored_value(&v[..OVERHEAD - 1]));
        let mut w = vec![0xabu8; 64];
        w[BLIND_INDEX_LEN] = FORMAT_VERSION;
        w[BLIND_INDEX_LEN + 1] = 0;
        w[BLIND_INDEX_LEN + 2] = 0;
        assert!(may_be_stored_value(&w));
        // a key version of 65 536 or more is not taken for one
        w[BLIND_INDEX_LEN + 2] = 1;
        assert!(!may_be_stored_value(&w));
    }

    #[test]
    fn text_cells_are_decoded_only_when_their_head_could_be_a_header() {
        let mut raw = Vec::new();
        let plain = format!("\\x{}", "ab".repeat(64));
        assert_eq!(may_be_stored_text(plain.as_bytes(), &mut raw), Some(false));
        assert!(raw.is_empty(), "a plain cell is not decoded in full");
        let looks = format!("\\x01000000{}", "cc".repeat(OVERHEAD));
        assert_eq!(may_be_stored_text(looks.as_bytes(), &mut raw), Some(true));
        assert_eq!(raw.len(), (looks.len() - 2) / 2);
        let behind_index = format!("\\x{}01000000{}", "ff".repeat(16), "7".repeat(2 * OVERHEAD));
        assert_eq!(
            may_be_stored_text(behind_index.as_bytes(), &mut raw),
            Some(true)
        );
        // escape format is decoded in full and then checked
        assert_eq!(may_be_stored_text(b"plain text", &mut raw), Some(false));
        // short and malformed cells
        assert_eq!(may_be_stored_text(b"\\x01", &mut raw), Some(false));
        let odd = format!("\\x0100{}z", "0".repeat(2 * OVERHEAD));
        assert_eq!(may_be_stored_text(odd.as_bytes(), &mut raw), None);
    }
}
