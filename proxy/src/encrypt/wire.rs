//! The extended-query and result messages the encryption layer reads and rebuilds: Parse, Bind,
//! Describe, Close, Execute, RowDescription, DataRow and ParameterDescription. Parsers fail with
//! a [`ProtocolError`] instead of panicking on short or malformed input.

use bytes::{BufMut, BytesMut};

use crate::protocol::messages::{put_cstr, put_message, BodyReader};
use crate::protocol::ProtocolError;

fn count(r: &mut BodyReader<'_>, what: &'static str) -> Result<usize, ProtocolError> {
    let b = r.bytes(2)?;
    let n = i16::from_be_bytes([
        b.first().copied().unwrap_or(0),
        b.get(1).copied().unwrap_or(0),
    ]);
    usize::try_from(n).map_err(|_| ProtocolError::Malformed { what })
}

fn i16_at(r: &mut BodyReader<'_>) -> Result<i16, ProtocolError> {
    let b = r.bytes(2)?;
    Ok(i16::from_be_bytes([
        b.first().copied().unwrap_or(0),
        b.get(1).copied().unwrap_or(0),
    ]))
}

/// A Parse message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMsg<'a> {
    /// Statement name ("" = unnamed).
    pub name: &'a str,
    /// SQL text.
    pub query: &'a str,
    /// Declared parameter type OIDs (0 = unspecified).
    pub param_oids: Vec<u32>,
}

impl<'a> ParseMsg<'a> {
    /// Parses a Parse body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = BodyReader::new(body, "Parse");
        let name = r.cstr()?;
        let query = r.cstr()?;
        let n = count(&mut r, "Parse")?;
        let mut param_oids = Vec::with_capacity(n);
        for _ in 0..n {
            param_oids.push(r.u32()?);
        }
        Ok(Self {
            name,
            query,
            param_oids,
        })
    }

    /// Appends the message.
    pub fn write(&self, out: &mut BytesMut) {
        put_message(out, b'P', |b| {
            put_cstr(b, self.name);
            put_cstr(b, self.query);
            b.put_i16(i16::try_from(self.param_oids.len()).unwrap_or(i16::MAX));
            for o in &self.param_oids {
                b.put_u32(*o);
            }
        });
    }
}

/// A Bind message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMsg<'a> {
    /// Portal name.
    pub portal: &'a str,
    /// Statement name.
    pub statement: &'a str,
    /// Parameter format codes as sent (0, 1 or one per parameter).
    pub param_formats: Vec<i16>,
    /// Parameter values (None = NULL).
    pub params: Vec<Option<&'a [u8]>>,
    /// Result format codes as sent.
    pub result_formats: Vec<i16>,
}

impl<'a> BindMsg<'a> {
    /// Parses a Bind body.
    pub fn parse(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = BodyReader::new(body, "Bind");
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let nf = count(&mut r, "Bind")?;
        let mut param_formats = Vec::with_capacity(nf);
        for _ in 0..nf {
            param_formats.push(i16_at(&mut r)?);
        }
        let np = count(&mut r, "Bind")?;
        let mut params = Vec::with_capacity(np);
        for _ in 0..np {
            let len = r.i32()?;
            if len < 0 {
                params.push(None);
            } else {
                let len = usize::try_from(len).map_err(|_| ProtocolError::malformed("Bind"))?;
                params.push(Some(r.bytes(len)?));
            }
        }
        let nr = count(&mut r, "Bind")?;
        let mut result_formats = Vec::with_capacity(nr);
        for _ in 0..nr {
            result_formats.push(i16_at(&mut r)?);
        }
        Ok(Self {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// The format code of parameter `i` (0-based) under the protocol's rules.
    pub fn param_format(&self, i: usize) -> i16 {
        match self.param_formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        }
    }
}

/// Appends a Bind with one format code per parameter.
pub fn write_bind(
    out: &mut BytesMut,
    portal: &str,
    statement: &str,
    params: &[(i16, Option<&[u8]>)],
    result_formats: &[i16],
) {
    out.reserve(
        16 + portal.len()
            + statement.len()
            + params
                .iter()
                .map(|(_, v)| 6 + v.map_or(0, <[u8]>::len))
                .sum::<usize>()
            + 2 * result_formats.len(),
    );
    put_message(out, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        let n = i16::try_from(params.len()).unwrap_or(i16::MAX);
        b.put_i16(n);
        for (f, _) in params {
            b.put_i16(*f);
        }
        b.put_i16(n);
        for (_, v) in params {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                    b.put_slice(v);
                }
            }
        }
        b.put_i16(i16::try_from(result_formats.len()).unwrap_or(i16::MAX));
        for f in result_formats {
            b.put_i16(*f);
        }
    });
}

/// The target of a Describe or Close: `b'S'` statement or `b'P'` portal, and its name.
pub fn parse_target<'a>(
    body: &'a [u8],
    what: &'static str,
) -> Result<(u8, &'a str), ProtocolError> {
    let mut r = BodyReader::new(body, what);
    let kind = r.u8()?;
    let name = r.cstr()?;
    Ok((kind, name))
}

/// Appends a Describe message.
pub fn write_describe(out: &mut BytesMut, kind: u8, name: &str) {
    put_message(out, b'D', |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// Appends a Close message.
pub fn write_close(out: &mut BytesMut, kind: u8, name: &str) {
    put_message(out, b'C', |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// The portal name of an Execute message.
pub fn parse_execute(body: &[u8]) -> Result<&str, ProtocolError> {
    BodyReader::new(body, "Execute").cstr()
}

/// Appends a simple Query message.
pub fn write_query(out: &mut BytesMut, sql: &str) {
    put_message(out, b'Q', |b| put_cstr(b, sql));
}

/// The SQL of a simple Query message.
pub fn parse_query(body: &[u8]) -> Result<&str, ProtocolError> {
    BodyReader::new(body, "Query").cstr()
}

/// The tag of a CommandComplete message.
pub fn parse_command_complete(body: &[u8]) -> Result<&str, ProtocolError> {
    BodyReader::new(body, "CommandComplete").cstr()
}

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column name.
    pub name: String,
    /// Table OID (0 if not a table column).
    pub table_oid: u32,
    /// Attribute number (0 if not a table column).
    pub attnum: i16,
    /// Type OID.
    pub type_oid: u32,
    /// Type length.
    pub typlen: i16,
    /// Type modifier.
    pub typmod: i32,
    /// Format code (0 text, 1 binary).
    pub format: i16,
}

/// Parses a RowDescription body.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<Field>, ProtocolError> {
    let mut r = BodyReader::new(body, "RowDescription");
    let n = count(&mut r, "RowDescription")?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        fields.push(Field {
            name: r.cstr()?.to_owned(),
            table_oid: r.u32()?,
            attnum: i16_at(&mut r)?,
            type_oid: r.u32()?,
            typlen: i16_at(&mut r)?,
            typmod: r.i32()?,
            format: i16_at(&mut r)?,
        });
    }
    Ok(fields)
}

/// Appends a RowDescription.
pub fn write_row_description(out: &mut BytesMut, fields: &[Field]) {
    put_message(out, b'T', |b| {
        b.put_i16(i16::try_from(fields.len()).unwrap_or(i16::MAX));
        for f in fields {
            put_cstr(b, &f.name);
            b.put_u32(f.table_oid);
            b.put_i16(f.attnum);
            b.put_u32(f.type_oid);
            b.put_i16(f.typlen);
            b.put_i32(f.typmod);
            b.put_i16(f.format);
        }
    });
}

/// Parses a ParameterDescription body.
pub fn parse_parameter_description(body: &[u8]) -> Result<Vec<u32>, ProtocolError> {
    let mut r = BodyReader::new(body, "ParameterDescription");
    let n = count(&mut r, "ParameterDescription")?;
    let mut oids = Vec::with_capacity(n);
    for _ in 0..n {
        oids.push(r.u32()?);
    }
    Ok(oids)
}

/// Appends a ParameterDescription.
pub fn write_parameter_description(out: &mut BytesMut, oids: &[u32]) {
    put_message(out, b't', |b| {
        b.put_i16(i16::try_from(oids.len()).unwrap_or(i16::MAX));
        for o in oids {
            b.put_u32(*o);
        }
    });
}

/// Splits a DataRow body into its values (None = NULL).
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    let mut r = BodyReader::new(body, "DataRow");
    let n = count(&mut r, "DataRow")?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            values.push(None);
        } else {
            let len = usize::try_from(len).map_err(|_| ProtocolError::malformed("DataRow"))?;
            values.push(Some(r.bytes(len)?));
        }
    }
    Ok(values)
}

/// Appends a length-prefixed value (or -1 for NULL) to a message body under construction.
pub fn put_value(b: &mut BytesMut, v: Option<&[u8]>) {
    match v {
        None => b.put_i32(-1),
        Some(v) => {
            b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
            b.put_slice(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_roundtrip_and_formats() {
        let mut out = BytesMut::new();
        write_bind(&mut out, "p", "s", &[(0, Some(b"1")), (1, None)], &[1]);
        let b = BindMsg::parse(&out[5..]).unwrap();
        assert_eq!(b.portal, "p");
        assert_eq!(b.statement, "s");
        assert_eq!(b.params, vec![Some(&b"1"[..]), None]);
        assert_eq!(b.param_format(0), 0);
        assert_eq!(b.param_format(1), 1);
        assert_eq!(b.result_formats, vec![1]);
        assert!(BindMsg::parse(&out[5..out.len() - 1]).is_err());
    }

    #[test]
    fn row_description_roundtrip() {
        let f = Field {
            name: "email".into(),
            table_oid: 1,
            attnum: 2,
            type_oid: 17,
            typlen: -1,
            typmod: -1,
            format: 0,
        };
        let mut out = BytesMut::new();
        write_row_description(&mut out, std::slice::from_ref(&f));
        assert_eq!(parse_row_description(&out[5..]).unwrap(), vec![f]);
        assert!(parse_row_description(&out[5..10]).is_err());
    }
}
