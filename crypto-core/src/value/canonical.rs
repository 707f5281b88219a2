//! The canonical encoding (what is encrypted) and the index input (what is blind-indexed).
//!
//! Canonical encoding: one type tag byte, then the exact value:
//!
//! | type | tag | body |
//! |---|---|---|
//! | text | 0x01 | UTF-8 bytes |
//! | varchar | 0x02 | UTF-8 bytes |
//! | int2 / int4 / int8 | 0x10 / 0x11 / 0x12 | two's complement big-endian, 2 / 4 / 8 bytes |
//! | bool | 0x20 | 0x00 or 0x01 |
//! | float8 | 0x30 | IEEE 754 big-endian (every NaN as 0x7ff8000000000000) |
//! | numeric | 0x40 | ASCII `numeric_out` text (`NaN`, `Infinity`, `-Infinity`, `-12.340`) |
//! | date | 0x50 | i32 big-endian days since 2000-01-01 (`infinity` = i32::MAX, `-infinity` = i32::MIN) |
//! | timestamp | 0x51 | i64 big-endian µs since 2000-01-01 00:00 (±infinity = i64::MAX/MIN) |
//! | timestamptz | 0x52 | as timestamp, UTC |
//! | uuid | 0x60 | 16 bytes |
//! | jsonb | 0x70 | UTF-8 `jsonb_out` text (sorted keys, `", "` / `": "` separators) |
//! | bytea | 0x80 | raw bytes |
//!
//! Index input: one *family* byte, then the equality form. Types PostgreSQL compares with each
//! other share a family (text and varchar: 0x01; int2, int4, int8: 0x10 with an 8-byte i64 body),
//! so an index group may join an int4 column to an int8 column. Equality forms: text and varchar
//! after the column's [`Normalisation`]; float8 with `-0` as `0`; numeric and jsonb numbers
//! without trailing fraction zeros; everything else the canonical body.

use super::{Json, LogicalType, Numeric, Value, ValueError};

/// Optional normalisation of text values before blind indexing (per column).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Normalisation {
    /// Compare case-insensitively (Unicode lower-casing).
    pub case_insensitive: bool,
    /// Ignore leading and trailing whitespace.
    pub trim: bool,
}

impl LogicalType {
    /// The tag byte of the canonical encoding.
    pub fn tag(self) -> u8 {
        match self {
            Self::Text => 0x01,
            Self::Varchar => 0x02,
            Self::Int2 => 0x10,
            Self::Int4 => 0x11,
            Self::Int8 => 0x12,
            Self::Bool => 0x20,
            Self::Float8 => 0x30,
            Self::Numeric => 0x40,
            Self::Date => 0x50,
            Self::Timestamp => 0x51,
            Self::TimestampTz => 0x52,
            Self::Uuid => 0x60,
            Self::Jsonb => 0x70,
            Self::Bytea => 0x80,
        }
    }

    /// The family byte of the index input: types PostgreSQL compares for equality share one.
    pub fn family(self) -> u8 {
        match self {
            Self::Text | Self::Varchar => 0x01,
            Self::Int2 | Self::Int4 | Self::Int8 => 0x10,
            other => other.tag(),
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.tag() == tag)
    }
}

const CANONICAL_NAN: u64 = 0x7ff8_0000_0000_0000;

impl Value {
    /// Appends the canonical encoding (tag + exact body).
    pub fn encode_canonical(&self, out: &mut Vec<u8>) {
        out.push(self.logical_type().tag());
        match self {
            Self::Float8(v) if v.is_nan() => out.extend_from_slice(&CANONICAL_NAN.to_be_bytes()),
            Self::Float8(v) => out.extend_from_slice(&v.to_be_bytes()),
            Self::Numeric(n) => {
                let mut s = String::new();
                n.write_text(&mut s);
                out.extend_from_slice(s.as_bytes());
            }
            Self::Jsonb(j) => {
                let mut s = String::new();
                j.write(&mut s, false);
                out.extend_from_slice(s.as_bytes());
            }
            Self::Bool(b) => out.push(u8::from(*b)),
            // For the remaining types the canonical body is the binary wire format.
            other => other.write_binary(out),
        }
    }

    /// Decodes a canonical encoding (the plaintext of an envelope) and checks that it is of
    /// `expected` type: a value moved between columns of different types is refused.
    pub fn decode_canonical(bytes: &[u8], expected: LogicalType) -> Result<Self, ValueError> {
        let (&tag, body) = bytes
            .split_first()
            .ok_or(ValueError::BadCanonical("empty"))?;
        let ty = LogicalType::from_tag(tag).ok_or(ValueError::BadCanonical("unknown type tag"))?;
        if ty != expected {
            return Err(ValueError::BadCanonical(
                "type tag does not match the column type",
            ));
        }
        let corrupt = |_| ValueError::BadCanonical("malformed body");
        let text =
            || std::str::from_utf8(body).map_err(|_| ValueError::BadCanonical("invalid UTF-8"));
        let value = match ty {
            LogicalType::Bool => match body {
                [0] => Self::Bool(false),
                [1] => Self::Bool(true),
                _ => return Err(ValueError::BadCanonical("malformed bool")),
            },
            LogicalType::Numeric => Self::Numeric(Numeric::parse(text()?).map_err(corrupt)?),
            LogicalType::Jsonb => Self::Jsonb(Json::parse(text()?).map_err(corrupt)?),
            other => other.parse_binary(body).map_err(corrupt)?,
        };
        Ok(value)
    }

    /// Appends the index input: family byte and equality form (see the module docs).
    pub fn index_input(&self, norm: Normalisation, out: &mut Vec<u8>) {
        out.push(self.logical_type().family());
        match self {
            Self::Text(s) | Self::Varchar(s) => {
                let s = if norm.trim { s.trim() } else { s.as_str() };
                if norm.case_insensitive {
                    out.extend_from_slice(s.to_lowercase().as_bytes());
                } else {
                    out.extend_from_slice(s.as_bytes());
                }
            }
            Self::Int2(v) => out.extend_from_slice(&i64::from(*v).to_be_bytes()),
            Self::Int4(v) => out.extend_from_slice(&i64::from(*v).to_be_bytes()),
            Self::Int8(v) => out.extend_from_slice(&v.to_be_bytes()),
            Self::Float8(v) if *v == 0.0 => out.extend_from_slice(&0f64.to_be_bytes()),
            Self::Numeric(n) => {
                let mut s = String::new();
                n.write_equality_form(&mut s);
                out.extend_from_slice(s.as_bytes());
            }
            Self::Jsonb(j) => {
                let mut s = String::new();
                j.write(&mut s, true);
                out.extend_from_slice(s.as_bytes());
            }
            other => {
                // Same body as the canonical encoding, without its tag.
                let start = out.len();
                other.encode_canonical(out);
                out.remove(start);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(ty: LogicalType, s: &str, norm: Normalisation) -> Vec<u8> {
        let mut out = Vec::new();
        ty.parse_text(s).unwrap().index_input(norm, &mut out);
        out
    }

    #[test]
    fn equal_values_share_index_input() {
        let n = Normalisation::default();
        assert_eq!(
            idx(LogicalType::Int4, "042", n),
            idx(LogicalType::Int4, "42", n)
        );
        assert_eq!(
            idx(LogicalType::Int2, "42", n),
            idx(LogicalType::Int8, "42", n)
        );
        assert_eq!(
            idx(LogicalType::Numeric, "1.50", n),
            idx(LogicalType::Numeric, "1.5", n)
        );
        assert_eq!(
            idx(LogicalType::Float8, "-0", n),
            idx(LogicalType::Float8, "0", n)
        );
        assert_eq!(
            idx(LogicalType::Text, "a", n),
            idx(LogicalType::Varchar, "a", n)
        );
        assert_eq!(
            idx(LogicalType::Bool, "yes", n),
            idx(LogicalType::Bool, "t", n)
        );
        assert_eq!(
            idx(LogicalType::Uuid, "A0EEBC999C0B4EF8BB6D6BB9BD380A11", n),
            idx(LogicalType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", n)
        );
        assert_eq!(
            idx(LogicalType::Jsonb, r#"{"b":1.0,"a":2}"#, n),
            idx(LogicalType::Jsonb, r#"{"a":2,"b":1}"#, n)
        );
        assert_ne!(
            idx(LogicalType::Text, "A", n),
            idx(LogicalType::Text, "a", n)
        );
        assert_ne!(
            idx(LogicalType::Int4, "1", n),
            idx(LogicalType::Text, "1", n)
        );
        let ci = Normalisation {
            case_insensitive: true,
            trim: true,
        };
        assert_eq!(
            idx(LogicalType::Text, " Alice@Example.ORG ", ci),
            idx(LogicalType::Text, "alice@example.org", ci)
        );
    }

    #[test]
    fn canonical_keeps_exact_form_and_checks_type() {
        let v = LogicalType::Numeric.parse_text("1.50").unwrap();
        let mut enc = Vec::new();
        v.encode_canonical(&mut enc);
        assert_eq!(enc, b"\x401.50");
        assert_eq!(
            Value::decode_canonical(&enc, LogicalType::Numeric)
                .unwrap()
                .to_text(),
            "1.50"
        );
        assert!(Value::decode_canonical(&enc, LogicalType::Text).is_err());
        assert!(Value::decode_canonical(&[], LogicalType::Text).is_err());
        assert!(Value::decode_canonical(&[0xff, 1], LogicalType::Text).is_err());
        assert!(Value::decode_canonical(&[0x11, 1, 2], LogicalType::Int4).is_err());
        assert!(Value::decode_canonical(&[0x20, 2], LogicalType::Bool).is_err());
        let mut nan = Vec::new();
        Value::Float8(f64::from_bits(0x7ff0_0000_0000_0001)).encode_canonical(&mut nan);
        assert_eq!(nan, [&[0x30u8][..], &CANONICAL_NAN.to_be_bytes()].concat());
    }
}
