//! PostgreSQL `numeric`: arbitrary-precision decimals with a display scale.
//!
//! Held as decimal digit strings (integer part without leading zeros, fraction part exactly
//! `scale` digits). Text forms follow `numeric_in` / `numeric_out`; the binary form is
//! PostgreSQL's base-10000 `numeric_send` layout.

use super::ValueError;

/// PostgreSQL's limits: 131072 digits before the point, 16383 after.
const MAX_INT_DIGITS: usize = 131_072;
const MAX_SCALE: usize = 16_383;
const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;

/// A numeric value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Numeric {
    /// Not a number (equal to itself in PostgreSQL).
    NaN,
    /// `Infinity`.
    PosInfinity,
    /// `-Infinity`.
    NegInfinity,
    /// A finite value.
    Finite {
        /// True for negative non-zero values (zero is never negative).
        negative: bool,
        /// Integer digits, ASCII, no leading zeros (empty for zero).
        int_digits: String,
        /// Fraction digits, ASCII, exactly the display scale long.
        frac_digits: String,
    },
}

fn bad(input: &str) -> ValueError {
    ValueError::invalid("numeric", input)
}

impl Numeric {
    /// Parses the text form (`numeric_in`): sign, digits, point, exponent, `NaN`, `Infinity`.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        let s = input.trim();
        match s.to_ascii_lowercase().as_str() {
            "nan" => return Ok(Self::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Ok(Self::PosInfinity),
            "-infinity" | "-inf" => return Ok(Self::NegInfinity),
            _ => {}
        }
        let bytes = s.as_bytes();
        let mut pos = 0;
        let negative = match bytes.first() {
            Some(b'-') => {
                pos = 1;
                true
            }
            Some(b'+') => {
                pos = 1;
                false
            }
            _ => false,
        };
        let mut int_part = String::new();
        let mut frac_part = String::new();
        let mut seen_point = false;
        let mut any_digit = false;
        while let Some(&c) = bytes.get(pos) {
            if c.is_ascii_digit() {
                any_digit = true;
                if seen_point {
                    frac_part.push(char::from(c));
                } else {
                    int_part.push(char::from(c));
                }
            } else if c == b'.' && !seen_point {
                seen_point = true;
            } else {
                break;
            }
            pos += 1;
            if int_part.len() > MAX_INT_DIGITS + 1 || frac_part.len() > MAX_SCALE + 1 {
                return Err(ValueError::OutOfRange { ty: "numeric" });
            }
        }
        if !any_digit {
            return Err(bad(input));
        }
        let mut exponent: i64 = 0;
        if matches!(bytes.get(pos), Some(b'e' | b'E')) {
            pos += 1;
            let exp_str = s.get(pos..).ok_or_else(|| bad(input))?;
            let end = exp_str
                .char_indices()
                .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '+' || c == '-'))))
                .map_or(exp_str.len(), |(i, _)| i);
            let digits = exp_str.get(..end).ok_or_else(|| bad(input))?;
            exponent = digits.parse::<i64>().map_err(|_| bad(input))?;
            if exponent.unsigned_abs() > (MAX_INT_DIGITS + MAX_SCALE) as u64 {
                return Err(ValueError::OutOfRange { ty: "numeric" });
            }
            pos += end;
        }
        if pos != bytes.len() {
            return Err(bad(input));
        }
        Self::from_parts(negative, &int_part, &frac_part, exponent)
    }

    /// Builds a value from digit strings and a decimal exponent, as `numeric_in` does:
    /// the display scale becomes `max(0, fraction digits - exponent)`.
    fn from_parts(
        negative: bool,
        int_part: &str,
        frac_part: &str,
        exponent: i64,
    ) -> Result<Self, ValueError> {
        let mut all = String::with_capacity(int_part.len() + frac_part.len());
        all.push_str(int_part);
        all.push_str(frac_part);
        let point = int_part.len() as i64 + exponent; // position of the point in `all`
        let scale = (frac_part.len() as i64 - exponent).max(0) as usize;
        if scale > MAX_SCALE {
            return Err(ValueError::OutOfRange { ty: "numeric" });
        }
        let (int_digits, frac_digits) = if point <= 0 {
            let zeros = "0".repeat(point.unsigned_abs() as usize);
            (String::new(), format!("{zeros}{all}"))
        } else {
            let p = point as usize;
            if p >= all.len() {
                (format!("{all}{}", "0".repeat(p - all.len())), String::new())
            } else {
                let (i, f) = all.split_at(p);
                (i.to_owned(), f.to_owned())
            }
        };
        let mut frac_digits = frac_digits;
        // Digits beyond the scale are zeros by construction; pad or cut to the scale.
        if frac_digits.len() < scale {
            frac_digits.push_str(&"0".repeat(scale - frac_digits.len()));
        }
        frac_digits.truncate(scale);
        let int_digits = int_digits.trim_start_matches('0').to_owned();
        if int_digits.len() > MAX_INT_DIGITS {
            return Err(ValueError::OutOfRange { ty: "numeric" });
        }
        let is_zero = int_digits.is_empty() && frac_digits.bytes().all(|b| b == b'0');
        Ok(Self::Finite {
            negative: negative && !is_zero,
            int_digits,
            frac_digits,
        })
    }

    /// The text form, as `numeric_out` prints it.
    pub fn write_text(&self, out: &mut String) {
        match self {
            Self::NaN => out.push_str("NaN"),
            Self::PosInfinity => out.push_str("Infinity"),
            Self::NegInfinity => out.push_str("-Infinity"),
            Self::Finite {
                negative,
                int_digits,
                frac_digits,
            } => {
                if *negative {
                    out.push('-');
                }
                if int_digits.is_empty() {
                    out.push('0');
                } else {
                    out.push_str(int_digits);
                }
                if !frac_digits.is_empty() {
                    out.push('.');
                    out.push_str(frac_digits);
                }
            }
        }
    }

    /// The form used for equality: trailing fraction zeros removed (`1.50` = `1.5` = `1.500`).
    pub fn write_equality_form(&self, out: &mut String) {
        match self {
            Self::Finite {
                negative,
                int_digits,
                frac_digits,
            } => Self::Finite {
                negative: *negative,
                int_digits: int_digits.clone(),
                frac_digits: frac_digits.trim_end_matches('0').to_owned(),
            }
            .write_text(out),
            other => other.write_text(out),
        }
    }

    /// PostgreSQL's binary form (`numeric_send`).
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        let (sign, weight, dscale, groups): (u16, i16, u16, Vec<i16>) = match self {
            Self::NaN => (SIGN_NAN, 0, 0, Vec::new()),
            Self::PosInfinity => (SIGN_PINF, 0, 0, Vec::new()),
            Self::NegInfinity => (SIGN_NINF, 0, 0, Vec::new()),
            Self::Finite {
                negative,
                int_digits,
                frac_digits,
            } => {
                let int_pad = (4 - int_digits.len() % 4) % 4;
                let frac_pad = (4 - frac_digits.len() % 4) % 4;
                let mut digits = String::with_capacity(int_digits.len() + frac_digits.len() + 8);
                digits.push_str(&"0".repeat(int_pad));
                digits.push_str(int_digits);
                let int_groups = (int_digits.len() + int_pad) / 4;
                digits.push_str(frac_digits);
                digits.push_str(&"0".repeat(frac_pad));
                let mut groups: Vec<i16> = digits
                    .as_bytes()
                    .chunks(4)
                    .map(|g| g.iter().fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0')))
                    .collect();
                let mut weight = int_groups as i64 - 1;
                let lead = groups.iter().take_while(|&&g| g == 0).count();
                groups.drain(..lead);
                weight -= lead as i64;
                while groups.last() == Some(&0) {
                    groups.pop();
                }
                if groups.is_empty() {
                    weight = 0;
                }
                let sign = if *negative { SIGN_NEG } else { SIGN_POS };
                let weight = i16::try_from(weight).unwrap_or(i16::MAX);
                let dscale = u16::try_from(frac_digits.len()).unwrap_or(u16::MAX);
                (sign, weight, dscale, groups)
            }
        };
        let ndigits = i16::try_from(groups.len()).unwrap_or(i16::MAX);
        out.extend_from_slice(&ndigits.to_be_bytes());
        out.extend_from_slice(&weight.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
    }

    /// Reads PostgreSQL's binary form (`numeric_recv`). Digits beyond the display scale are
    /// dropped, as PostgreSQL's own rounding to the scale would make them zero.
    pub fn read_binary(bytes: &[u8]) -> Result<Self, ValueError> {
        let err = || ValueError::BadBinary {
            ty: "numeric",
            why: "malformed numeric",
        };
        let word = |i: usize| -> Result<[u8; 2], ValueError> {
            bytes
                .get(i..i + 2)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(err)
        };
        let ndigits = i16::from_be_bytes(word(0)?);
        let weight = i16::from_be_bytes(word(2)?);
        let sign = u16::from_be_bytes(word(4)?);
        let dscale = u16::from_be_bytes(word(6)?);
        let ndigits = usize::try_from(ndigits).map_err(|_| err())?;
        if bytes.len() != 8 + 2 * ndigits {
            return Err(err());
        }
        match sign {
            SIGN_NAN => return Ok(Self::NaN),
            SIGN_PINF => return Ok(Self::PosInfinity),
            SIGN_NINF => return Ok(Self::NegInfinity),
            SIGN_POS | SIGN_NEG => {}
            _ => return Err(err()),
        }
        if usize::from(dscale) > MAX_SCALE {
            return Err(err());
        }
        let mut groups = Vec::with_capacity(ndigits);
        for i in 0..ndigits {
            let g = i16::from_be_bytes(word(8 + 2 * i)?);
            if !(0..10_000).contains(&g) {
                return Err(err());
            }
            groups.push(g);
        }
        // Place group i at base-10000 position (weight - i).
        let weight = i64::from(weight);
        let mut int_digits = String::new();
        let mut frac_digits = String::new();
        if weight >= 0 {
            if (weight as usize + 1) * 4 > MAX_INT_DIGITS + 4 {
                return Err(ValueError::OutOfRange { ty: "numeric" });
            }
            for pos in 0..=weight {
                let g = groups.get(pos as usize).copied().unwrap_or(0);
                int_digits.push_str(&format!("{g:04}"));
            }
        }
        let first_frac_group = (weight + 1).max(0) as usize;
        // Leading zero groups between the point and the first digit when weight < -1.
        let mut frac_all = String::new();
        if weight < -1 {
            let zeros = ((-weight - 1) as usize).min(MAX_SCALE / 4 + 2);
            frac_all.push_str(&"0000".repeat(zeros));
        }
        for g in groups.iter().skip(first_frac_group) {
            if frac_all.len() >= usize::from(dscale) {
                break;
            }
            frac_all.push_str(&format!("{g:04}"));
        }
        frac_digits.push_str(
            frac_all
                .get(..usize::from(dscale).min(frac_all.len()))
                .unwrap_or(""),
        );
        while frac_digits.len() < usize::from(dscale) {
            frac_digits.push('0');
        }
        Self::from_parts(sign == SIGN_NEG, &int_digits, &frac_digits, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) -> String {
        let mut out = String::new();
        Numeric::parse(s).unwrap().write_text(&mut out);
        out
    }

    fn bin_rt(s: &str) -> String {
        let mut b = Vec::new();
        Numeric::parse(s).unwrap().write_binary(&mut b);
        let mut out = String::new();
        Numeric::read_binary(&b).unwrap().write_text(&mut out);
        out
    }

    #[test]
    fn text_forms_match_postgres() {
        assert_eq!(rt("042"), "42");
        assert_eq!(rt(" -1.50 "), "-1.50");
        assert_eq!(rt("-0"), "0");
        assert_eq!(rt("-0.00"), "0.00");
        assert_eq!(rt(".5"), "0.5");
        assert_eq!(rt("5."), "5");
        assert_eq!(rt("1.5e3"), "1500");
        assert_eq!(rt("1.50e-1"), "0.150");
        assert_eq!(rt("1e-3"), "0.001");
        assert_eq!(rt("+12345678901234567890.123"), "12345678901234567890.123");
        assert_eq!(rt("nan"), "NaN");
        assert_eq!(rt("-inf"), "-Infinity");
        for bad in ["", "-", ".", "1.2.3", "1e", "abc", "1 2", "0x10"] {
            assert!(Numeric::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn equality_form() {
        let mut a = String::new();
        Numeric::parse("1.500").unwrap().write_equality_form(&mut a);
        assert_eq!(a, "1.5");
        let mut b = String::new();
        Numeric::parse("1.0").unwrap().write_equality_form(&mut b);
        assert_eq!(b, "1");
    }

    #[test]
    fn binary_layout_matches_postgres() {
        // SELECT numeric_send(12345.678) = \x0003000100000003 0001 0929 1a7c
        let mut b = Vec::new();
        Numeric::parse("12345.678").unwrap().write_binary(&mut b);
        assert_eq!(hex::encode(&b), "0003000100000003000109291a7c");
        // numeric_send(0.00) = ndigits 0, weight 0, sign 0, dscale 2
        let mut z = Vec::new();
        Numeric::parse("0.00").unwrap().write_binary(&mut z);
        assert_eq!(hex::encode(&z), "0000000000000002");
        // numeric_send(-0.0001) = 1 digit, weight -1, sign 0x4000, dscale 4, digit 1
        let mut n = Vec::new();
        Numeric::parse("-0.0001").unwrap().write_binary(&mut n);
        assert_eq!(hex::encode(&n), "0001ffff400000040001");
    }

    #[test]
    fn binary_round_trips() {
        for s in [
            "0",
            "1",
            "-1",
            "10000",
            "0.0001",
            "0.00001",
            "123456789.987654321",
            "1e20",
            "-0.5",
            "99999999",
            "1.10",
            "NaN",
            "Infinity",
            "-Infinity",
            "0.000",
        ] {
            assert_eq!(bin_rt(s), rt(s), "{s}");
        }
    }

    #[test]
    fn malformed_binary() {
        assert!(Numeric::read_binary(&[]).is_err());
        assert!(Numeric::read_binary(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err()); // missing digit
        assert!(Numeric::read_binary(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]).is_err()); // 10000
        assert!(Numeric::read_binary(&[0, 0, 0, 0, 0x12, 0x34, 0, 0]).is_err()); // bad sign
        assert!(Numeric::read_binary(&[0xff, 0xff, 0, 0, 0, 0, 0, 0]).is_err());
        // negative count
    }
}
