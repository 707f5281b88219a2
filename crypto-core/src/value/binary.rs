//! PostgreSQL's binary wire format (`*send` / `*recv`) for each logical type.

use super::datetime::{check_date, check_timestamp};
use super::{Json, LogicalType, Numeric, Value, ValueError};

fn fixed<const N: usize>(bytes: &[u8], ty: &'static str) -> Result<[u8; N], ValueError> {
    bytes.try_into().map_err(|_| ValueError::BadBinary {
        ty,
        why: "wrong length",
    })
}

fn utf8<'a>(bytes: &'a [u8], ty: &'static str) -> Result<&'a str, ValueError> {
    std::str::from_utf8(bytes).map_err(|_| ValueError::BadBinary {
        ty,
        why: "invalid UTF-8",
    })
}

impl LogicalType {
    /// Parses a value in PostgreSQL's binary format (a binary-format Bind parameter).
    pub fn parse_binary(self, bytes: &[u8]) -> Result<Value, ValueError> {
        let ty = self.name();
        Ok(match self {
            Self::Text | Self::Varchar => {
                let s = utf8(bytes, ty)?;
                if s.contains('\0') {
                    return Err(ValueError::BadBinary {
                        ty,
                        why: "NUL character in text",
                    });
                }
                if self == Self::Text {
                    Value::Text(s.to_owned())
                } else {
                    Value::Varchar(s.to_owned())
                }
            }
            Self::Int2 => Value::Int2(i16::from_be_bytes(fixed(bytes, ty)?)),
            Self::Int4 => Value::Int4(i32::from_be_bytes(fixed(bytes, ty)?)),
            Self::Int8 => Value::Int8(i64::from_be_bytes(fixed(bytes, ty)?)),
            Self::Bool => Value::Bool(fixed::<1>(bytes, ty)? != [0]),
            Self::Float8 => Value::Float8(f64::from_be_bytes(fixed(bytes, ty)?)),
            Self::Numeric => Value::Numeric(Numeric::read_binary(bytes)?),
            Self::Date => Value::Date(check_date(i32::from_be_bytes(fixed(bytes, ty)?))?),
            Self::Timestamp => {
                Value::Timestamp(check_timestamp(i64::from_be_bytes(fixed(bytes, ty)?), ty)?)
            }
            Self::TimestampTz => {
                Value::TimestampTz(check_timestamp(i64::from_be_bytes(fixed(bytes, ty)?), ty)?)
            }
            Self::Uuid => Value::Uuid(fixed(bytes, ty)?),
            Self::Jsonb => match bytes.split_first() {
                Some((1, text)) => Value::Jsonb(Json::parse(utf8(text, ty)?)?),
                _ => {
                    return Err(ValueError::BadBinary {
                        ty,
                        why: "unsupported jsonb binary version",
                    })
                }
            },
            Self::Bytea => Value::Bytea(bytes.to_vec()),
        })
    }
}

impl Value {
    /// Appends the value in PostgreSQL's binary format.
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        match self {
            Self::Text(s) | Self::Varchar(s) => out.extend_from_slice(s.as_bytes()),
            Self::Int2(v) => out.extend_from_slice(&v.to_be_bytes()),
            Self::Int4(v) => out.extend_from_slice(&v.to_be_bytes()),
            Self::Int8(v) => out.extend_from_slice(&v.to_be_bytes()),
            Self::Bool(v) => out.push(u8::from(*v)),
            Self::Float8(v) => out.extend_from_slice(&v.to_be_bytes()),
            Self::Numeric(v) => v.write_binary(out),
            Self::Date(v) => out.extend_from_slice(&v.to_be_bytes()),
            Self::Timestamp(v) | Self::TimestampTz(v) => out.extend_from_slice(&v.to_be_bytes()),
            Self::Uuid(v) => out.extend_from_slice(v),
            Self::Jsonb(v) => {
                out.push(1);
                let mut s = String::new();
                v.write(&mut s, false);
                out.extend_from_slice(s.as_bytes());
            }
            Self::Bytea(v) => out.extend_from_slice(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_widths_are_checked() {
        assert!(LogicalType::Int4.parse_binary(&[0, 0, 1]).is_err());
        assert!(LogicalType::Int8.parse_binary(&[0; 4]).is_err());
        assert!(LogicalType::Uuid.parse_binary(&[0; 15]).is_err());
        assert!(LogicalType::Bool.parse_binary(&[]).is_err());
        assert!(LogicalType::Text.parse_binary(&[0xff, 0xfe]).is_err());
        assert!(LogicalType::Jsonb.parse_binary(b"\x02{}").is_err());
        assert!(LogicalType::Date
            .parse_binary(&i32::MAX.to_be_bytes())
            .is_ok());
        assert!(LogicalType::Timestamp
            .parse_binary(&(i64::MAX - 1).to_be_bytes())
            .is_err());
    }

    #[test]
    fn binary_round_trips() {
        for (ty, text) in [
            (LogicalType::Int2, "-3"),
            (LogicalType::Int4, "42"),
            (LogicalType::Int8, "-9000000000"),
            (LogicalType::Bool, "t"),
            (LogicalType::Float8, "-1.25"),
            (LogicalType::Numeric, "3.1400"),
            (LogicalType::Date, "2024-02-29"),
            (LogicalType::Timestamp, "2024-02-29 12:34:56.789"),
            (LogicalType::TimestampTz, "2024-02-29 12:34:56+00"),
            (LogicalType::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            (LogicalType::Jsonb, r#"{"a": [1, "x"]}"#),
            (LogicalType::Bytea, "\\x0001ff"),
            (LogicalType::Text, "héllo"),
        ] {
            let v = ty.parse_text(text).unwrap();
            let mut bin = Vec::new();
            v.write_binary(&mut bin);
            assert_eq!(ty.parse_binary(&bin).unwrap(), v, "{ty}");
        }
    }
}
