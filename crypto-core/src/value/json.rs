//! `jsonb`: JSON (RFC 8259) parsed and re-printed the way PostgreSQL's `jsonb_out` prints it —
//! object keys sorted by (length, bytes), duplicate keys resolved to the last value, numbers as
//! `numeric`, `", "` and `": "` separators. Equal jsonb values get identical text.

use super::numeric::Numeric;
use super::ValueError;

/// Nesting limit for protected jsonb values. The parser recurses; 128 levels keep it far from
/// the stack limit of a proxy worker thread on hostile input (PostgreSQL's own limit is higher).
pub const MAX_DEPTH: usize = 128;

/// A parsed JSON document.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as PostgreSQL's numeric.
    Number(Numeric),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object with sorted, unique keys.
    Object(Vec<(String, Json)>),
}

fn bad(input: &str) -> ValueError {
    ValueError::invalid("jsonb", input)
}

impl Json {
    /// Parses JSON text into its jsonb form.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let mut p = Parser {
            s: input.as_bytes(),
            pos: 0,
            input,
        };
        p.ws();
        let v = p.value(0)?;
        p.ws();
        if p.pos != p.s.len() {
            return Err(bad(input));
        }
        Ok(v)
    }

    /// Writes the canonical (`jsonb_out`) text. With `equality`, numbers use their equality form
    /// (`1.0` → `1`) so that values PostgreSQL considers equal print identically.
    pub fn write(&self, out: &mut String, equality: bool) {
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(true) => out.push_str("true"),
            Self::Bool(false) => out.push_str("false"),
            Self::Number(n) if equality => n.write_equality_form(out),
            Self::Number(n) => n.write_text(out),
            Self::String(s) => write_string(s, out),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out, equality);
                }
                out.push(']');
            }
            Self::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_string(k, out);
                    out.push_str(": ");
                    v.write(out, equality);
                }
                out.push('}');
            }
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    input: &'a str,
}

impl Parser<'_> {
    fn err(&self) -> ValueError {
        bad(self.input)
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }
    fn literal(&mut self, word: &[u8], v: Json) -> Result<Json, ValueError> {
        if self.s.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err())
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, ValueError> {
        if depth > MAX_DEPTH {
            return Err(ValueError::Unsupported {
                ty: "jsonb",
                what: format!("nesting deeper than {MAX_DEPTH} levels"),
            });
        }
        match self.peek() {
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.err()),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut members: Vec<(String, Json)> = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err());
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(self.err());
                    }
                    self.pos += 1;
                    self.ws();
                    let v = self.value(depth + 1)?;
                    members.push((key, v));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Json::Object(canonical_members(members)));
                        }
                        _ => return Err(self.err()),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err()),
        }
    }

    fn number(&mut self) -> Result<Json, ValueError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err()),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.err());
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.err());
            }
            self.digits();
        }
        let text = self.input.get(start..self.pos).ok_or_else(|| self.err())?;
        Ok(Json::Number(Numeric::parse(text)?))
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32, ValueError> {
        let h = self
            .s
            .get(self.pos..self.pos + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err())?;
        self.pos += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, ValueError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(self.input.get(start..self.pos).ok_or_else(|| self.err())?);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.peek().ok_or_else(|| self.err())?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(self.err());
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err());
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            if code == 0 {
                                // PostgreSQL: "\u0000 cannot be converted to text".
                                return Err(ValueError::Unsupported {
                                    ty: "jsonb",
                                    what: "\\u0000 in a string".into(),
                                });
                            }
                            out.push(char::from_u32(code).ok_or_else(|| self.err())?);
                        }
                        _ => return Err(self.err()),
                    }
                }
                _ => return Err(self.err()),
            }
        }
    }
}

/// jsonb object order: shorter keys first, then bytewise; the last duplicate wins.
fn canonical_members(members: Vec<(String, Json)>) -> Vec<(String, Json)> {
    let mut indexed: Vec<(usize, (String, Json))> = members.into_iter().enumerate().collect();
    indexed.sort_by(|(ia, (ka, _)), (ib, (kb, _))| {
        ka.len()
            .cmp(&kb.len())
            .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
            .then_with(|| ib.cmp(ia))
    });
    let mut out: Vec<(String, Json)> = Vec::with_capacity(indexed.len());
    for (_, (k, v)) in indexed {
        if out.last().is_some_and(|(last, _)| *last == k) {
            continue; // an earlier duplicate: the later one (sorted first) already won
        }
        out.push((k, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        let mut out = String::new();
        Json::parse(s).unwrap().write(&mut out, false);
        out
    }

    #[test]
    fn prints_like_jsonb_out() {
        assert_eq!(
            canon(r#"{"b":1,"a":2,"aa":[1,2.50,{"x":null}]}"#),
            r#"{"a": 2, "b": 1, "aa": [1, 2.50, {"x": null}]}"#
        );
        assert_eq!(canon(r#"{"a":1,"a":2}"#), r#"{"a": 2}"#);
        assert_eq!(canon(" [ ] "), "[]");
        assert_eq!(canon("{}"), "{}");
        assert_eq!(canon("1e2"), "100");
        assert_eq!(canon(r#""\u00e9\n\"\u0001""#), "\"é\\n\\\"\\u0001\"");
        assert_eq!(canon(r#""\ud83d\ude00""#), "\"😀\"");
        assert_eq!(canon("true"), "true");
    }

    #[test]
    fn equality_form_normalises_numbers() {
        let mut a = String::new();
        Json::parse(r#"{"n": 1.0}"#).unwrap().write(&mut a, true);
        let mut b = String::new();
        Json::parse(r#"{"n":1}"#).unwrap().write(&mut b, true);
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_invalid() {
        for s in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "01",
            "1.",
            "+1",
            ".5",
            "nul",
            "\"\\x\"",
            "\"\\u0000\"",
            "[1] x",
            "{'a':1}",
            "\"\u{1}\"",
        ] {
            assert!(Json::parse(s).is_err(), "{s:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(Json::parse(&deep).is_err());
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(Json::parse(&ok).is_ok());
        let hostile = "[".repeat(1_000_000);
        assert!(Json::parse(&hostile).is_err());
    }
}
