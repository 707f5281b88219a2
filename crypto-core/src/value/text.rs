//! PostgreSQL's text wire format for each logical type.

use super::datetime::{
    format_date, format_timestamp, format_timestamptz_in, parse_date, parse_timestamp,
    parse_timestamp_in, SessionZone, Utc,
};
use super::{float, Json, LogicalType, Numeric, Value, ValueError};

impl LogicalType {
    /// Parses a literal in PostgreSQL's text format (as in a SQL literal or a text-format Bind
    /// parameter). Malformed input is a typed error.
    pub fn parse_text(self, input: &str) -> Result<Value, ValueError> {
        self.parse_text_in(input, &Utc)
    }

    /// [`Self::parse_text`] in a session whose `TimeZone` is `zone` (a `timestamptz` without an
    /// offset is local time there, as PostgreSQL reads it).
    pub fn parse_text_in(self, input: &str, zone: &dyn SessionZone) -> Result<Value, ValueError> {
        Ok(match self {
            Self::Text => Value::Text(check_text(self, input)?),
            Self::Varchar => Value::Varchar(check_text(self, input)?),
            Self::Int2 => Value::Int2(
                i16::try_from(parse_int(input, "int2")?)
                    .map_err(|_| ValueError::OutOfRange { ty: "int2" })?,
            ),
            Self::Int4 => Value::Int4(
                i32::try_from(parse_int(input, "int4")?)
                    .map_err(|_| ValueError::OutOfRange { ty: "int4" })?,
            ),
            Self::Int8 => Value::Int8(parse_int(input, "int8")?),
            Self::Bool => Value::Bool(parse_bool(input)?),
            Self::Float8 => Value::Float8(float::parse(input)?),
            Self::Numeric => Value::Numeric(Numeric::parse(input)?),
            Self::Date => Value::Date(parse_date(input)?),
            Self::Timestamp => Value::Timestamp(parse_timestamp(input, false)?),
            Self::TimestampTz => Value::TimestampTz(parse_timestamp_in(input, Some(zone))?),
            Self::Uuid => Value::Uuid(parse_uuid(input)?),
            Self::Jsonb => Value::Jsonb(Json::parse(input)?),
            Self::Bytea => Value::Bytea(parse_bytea(input)?),
        })
    }
}

impl Value {
    /// Appends the value in PostgreSQL's text output format (`DateStyle = ISO`,
    /// `bytea_output = hex`, `extra_float_digits = 1`, timestamptz in UTC).
    pub fn write_text(&self, out: &mut Vec<u8>) {
        // UTC always resolves.
        let _ = self.write_text_in(out, &Utc);
    }

    /// [`Self::write_text`] in a session whose `TimeZone` is `zone` (a `timestamptz` is shown
    /// in local time with its offset, as PostgreSQL shows it). Fails only for a `timestamptz`
    /// when `zone` cannot be resolved.
    pub fn write_text_in(
        &self,
        out: &mut Vec<u8>,
        zone: &dyn SessionZone,
    ) -> Result<(), ValueError> {
        let mut s = String::new();
        match self {
            Self::Text(v) | Self::Varchar(v) => {
                out.extend_from_slice(v.as_bytes());
                return Ok(());
            }
            Self::Int2(v) => s = v.to_string(),
            Self::Int4(v) => s = v.to_string(),
            Self::Int8(v) => s = v.to_string(),
            Self::Bool(v) => s.push(if *v { 't' } else { 'f' }),
            Self::Float8(v) => float::format(*v, &mut s),
            Self::Numeric(v) => v.write_text(&mut s),
            Self::Date(v) => format_date(*v, &mut s),
            Self::Timestamp(v) => format_timestamp(*v, false, &mut s),
            Self::TimestampTz(v) => format_timestamptz_in(*v, zone, &mut s)?,
            Self::Uuid(v) => s = format_uuid(v),
            Self::Jsonb(v) => v.write(&mut s, false),
            Self::Bytea(v) => {
                out.extend_from_slice(b"\\x");
                for b in v {
                    out.extend_from_slice(&hex_pair(*b));
                }
                return Ok(());
            }
        }
        out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    /// The text format as a `String` (convenience for tests and tools).
    pub fn to_text(&self) -> String {
        let mut out = Vec::new();
        self.write_text(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn check_text(ty: LogicalType, input: &str) -> Result<String, ValueError> {
    if input.contains('\0') {
        return Err(ValueError::Unsupported {
            ty: ty.name(),
            what: "NUL character in text".into(),
        });
    }
    Ok(input.to_owned())
}

/// `int2in`/`int4in`/`int8in` (PostgreSQL 15): surrounding whitespace, optional sign, decimal
/// digits only.
fn parse_int(input: &str, ty: &'static str) -> Result<i64, ValueError> {
    let s = input.trim_matches(|c: char| c.is_ascii_whitespace());
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..).unwrap_or("")),
        Some(b'+') => (false, s.get(1..).unwrap_or("")),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::invalid(ty, input));
    }
    let mut v: i64 = 0;
    for b in digits.bytes() {
        let d = i64::from(b - b'0');
        v = v
            .checked_mul(10)
            .and_then(|v| {
                if negative {
                    v.checked_sub(d)
                } else {
                    v.checked_add(d)
                }
            })
            .ok_or(ValueError::OutOfRange { ty })?;
    }
    Ok(v)
}

/// `boolin`: `t`/`true`/`yes`/`on`/`1` and their false counterparts, case-insensitive, unique
/// prefixes accepted, surrounding whitespace ignored.
fn parse_bool(input: &str) -> Result<bool, ValueError> {
    let s = input.trim().to_ascii_lowercase();
    let is_prefix = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    if is_prefix("true", 1) || is_prefix("yes", 1) || is_prefix("on", 2) || s == "1" {
        Ok(true)
    } else if is_prefix("false", 1) || is_prefix("no", 1) || is_prefix("off", 2) || s == "0" {
        Ok(false)
    } else {
        Err(ValueError::invalid("bool", input))
    }
}

/// `uuid_in`: 32 hex digits, optionally in braces, with an optional hyphen after any group of
/// four digits.
fn parse_uuid(input: &str) -> Result<[u8; 16], ValueError> {
    let err = || ValueError::invalid("uuid", input);
    let mut s = input.as_bytes();
    let braced = s.first() == Some(&b'{');
    if braced {
        s = s.get(1..).ok_or_else(err)?;
    }
    let mut out = [0u8; 16];
    let mut pos = 0;
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = s
            .get(pos)
            .and_then(|c| (*c as char).to_digit(16))
            .ok_or_else(err)?;
        let lo = s
            .get(pos + 1)
            .and_then(|c| (*c as char).to_digit(16))
            .ok_or_else(err)?;
        *byte = (hi * 16 + lo) as u8;
        pos += 2;
        if i % 2 == 1 && i < 15 && s.get(pos) == Some(&b'-') {
            pos += 1;
        }
    }
    if braced {
        if s.get(pos) != Some(&b'}') {
            return Err(err());
        }
        pos += 1;
    }
    if pos != s.len() {
        return Err(err());
    }
    Ok(out)
}

fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let pair = hex_pair(*b);
        s.push(char::from(pair[0]));
        s.push(char::from(pair[1]));
    }
    s
}

fn hex_pair(b: u8) -> [u8; 2] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digit = |n: u8| HEX.get(usize::from(n)).copied().unwrap_or(b'0');
    [digit(b >> 4), digit(b & 0xf)]
}

/// `byteain`: `\x` followed by hex pairs (whitespace allowed between pairs), or the escape
/// format (`\\` and `\ooo` octal escapes, other bytes literal).
fn parse_bytea(input: &str) -> Result<Vec<u8>, ValueError> {
    let err = || ValueError::invalid("bytea", input);
    let b = input.as_bytes();
    if let Some(hex) = input
        .strip_prefix("\\x")
        .or_else(|| input.strip_prefix("\\X"))
    {
        let mut out = Vec::with_capacity(hex.len() / 2);
        let mut high: Option<u32> = None;
        for c in hex.bytes() {
            // Whitespace may separate pairs, never split one.
            if c.is_ascii_whitespace() && high.is_none() {
                continue;
            }
            let d = char::from(c).to_digit(16).ok_or_else(err)?;
            match high.take() {
                None => high = Some(d),
                Some(h) => out.push((h * 16 + d) as u8),
            }
        }
        if high.is_some() {
            return Err(err());
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        match (b.get(i + 1), b.get(i + 2), b.get(i + 3)) {
            (Some(b'\\'), _, _) => {
                out.push(b'\\');
                i += 2;
            }
            (Some(&a), Some(&m), Some(&z))
                if (b'0'..=b'3').contains(&a)
                    && (b'0'..=b'7').contains(&m)
                    && (b'0'..=b'7').contains(&z) =>
            {
                out.push(((a - b'0') << 6) | ((m - b'0') << 3) | (z - b'0'));
                i += 4;
            }
            _ => return Err(err()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(ty: LogicalType, s: &str) -> String {
        ty.parse_text(s).unwrap().to_text()
    }

    #[test]
    fn integers() {
        assert_eq!(rt(LogicalType::Int4, "042"), "42");
        assert_eq!(rt(LogicalType::Int4, " -7 "), "-7");
        assert_eq!(
            rt(LogicalType::Int8, "-9223372036854775808"),
            "-9223372036854775808"
        );
        assert_eq!(rt(LogicalType::Int2, "+32767"), "32767");
        assert!(LogicalType::Int2.parse_text("32768").is_err());
        assert!(LogicalType::Int8.parse_text("9223372036854775808").is_err());
        for bad in ["", "-", "1.0", "1e3", "0x10", "1_000", "4 2", "abc"] {
            assert!(LogicalType::Int4.parse_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn booleans() {
        for t in ["t", "TRUE", " yes ", "on", "1", "tr", "y"] {
            assert_eq!(
                LogicalType::Bool.parse_text(t).unwrap(),
                Value::Bool(true),
                "{t}"
            );
        }
        for f in ["f", "False", "no", "off", "0", "of", "n"] {
            assert_eq!(
                LogicalType::Bool.parse_text(f).unwrap(),
                Value::Bool(false),
                "{f}"
            );
        }
        for bad in ["o", "", "2", "truex", "yess"] {
            assert!(LogicalType::Bool.parse_text(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Value::Bool(true).to_text(), "t");
    }

    #[test]
    fn uuids() {
        let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        for form in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
        ] {
            assert_eq!(rt(LogicalType::Uuid, form), canonical, "{form}");
        }
        for bad in [
            "",
            "a0eebc99",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc999c0b4ef8bb6d6bb9bd380a1g",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11x",
        ] {
            assert!(LogicalType::Uuid.parse_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn byteas() {
        assert_eq!(
            LogicalType::Bytea.parse_text("\\xDEad beef").unwrap(),
            Value::Bytea(vec![0xde, 0xad, 0xbe, 0xef])
        );
        assert_eq!(rt(LogicalType::Bytea, "\\x00ff"), "\\x00ff");
        assert_eq!(
            LogicalType::Bytea.parse_text("a\\\\b\\001").unwrap(),
            Value::Bytea(b"a\\b\x01".to_vec())
        );
        assert_eq!(rt(LogicalType::Bytea, ""), "\\x");
        for bad in ["\\x0", "\\xzz", "\\x0 0", "a\\b", "\\400"] {
            assert!(LogicalType::Bytea.parse_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn text_rejects_nul() {
        assert!(LogicalType::Text.parse_text("a\0b").is_err());
        assert_eq!(rt(LogicalType::Varchar, " keeps spaces "), " keeps spaces ");
    }

    #[test]
    fn names_and_oids() {
        for t in LogicalType::ALL {
            assert_eq!(LogicalType::from_name(t.name()), Some(t));
            assert_eq!(LogicalType::from_oid(t.oid()), Some(t));
        }
        assert_eq!(
            LogicalType::from_name("Double Precision"),
            Some(LogicalType::Float8)
        );
        assert_eq!(LogicalType::from_name("money"), None);
    }
}
