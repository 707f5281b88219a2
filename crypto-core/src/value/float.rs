//! `float8` text forms as PostgreSQL 15 prints them with the default `extra_float_digits = 1`:
//! the shortest digits that round-trip, in `%g`-like layout (fixed notation for decimal exponents
//! from -4 to 14, otherwise `d.ddde+XX`).

use super::ValueError;

pub(super) fn parse(input: &str) -> Result<f64, ValueError> {
    let s = input.trim();
    let lower = s.to_ascii_lowercase();
    match lower.as_str() {
        "nan" | "+nan" | "-nan" => return Ok(f64::NAN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(f64::INFINITY),
        "-infinity" | "-inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust's parser also takes "inf"/"nan" spellings handled above and nothing PostgreSQL
    // rejects except hexadecimal forms, which it refuses too.
    if lower.contains("inf") || lower.contains("nan") || s.is_empty() {
        return Err(ValueError::invalid("float8", input));
    }
    let v: f64 = s
        .parse()
        .map_err(|_| ValueError::invalid("float8", input))?;
    if v.is_infinite() {
        return Err(ValueError::OutOfRange { ty: "float8" });
    }
    // PostgreSQL reports underflow to zero of a non-zero literal as out of range.
    if v == 0.0 && s.bytes().any(|b| (b'1'..=b'9').contains(&b)) && !has_zero_mantissa(s) {
        return Err(ValueError::OutOfRange { ty: "float8" });
    }
    Ok(v)
}

/// True when the mantissa (before any exponent) is all zeros, e.g. `0.000e5`.
fn has_zero_mantissa(s: &str) -> bool {
    let mantissa = s.split(['e', 'E']).next().unwrap_or(s);
    !mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b))
}

pub(super) fn format(v: f64, out: &mut String) {
    if v.is_nan() {
        return out.push_str("NaN");
    }
    if v.is_infinite() {
        return out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    }
    if v == 0.0 {
        return out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
    }
    // `{:e}` gives the shortest round-trip digits: "-1.2345e-7".
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if negative {
        out.push('-');
    }
    let n = digits.len() as i32;
    if (-4..15).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else if exp + 1 >= n {
            out.push_str(&digits);
            for _ in 0..(exp + 1 - n) {
                out.push('0');
            }
        } else {
            let (int, frac) = digits.split_at((exp + 1) as usize);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        }
    } else {
        let (first, rest) = digits.split_at(1.min(digits.len()));
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.unsigned_abs()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64) -> String {
        let mut s = String::new();
        format(v, &mut s);
        s
    }

    #[test]
    fn output_matches_postgres_15() {
        assert_eq!(f(1.0), "1");
        assert_eq!(f(-1.5), "-1.5");
        assert_eq!(f(0.1), "0.1");
        assert_eq!(f(1e15), "1e+15");
        assert_eq!(f(123456789012345.0), "123456789012345");
        assert_eq!(f(1e14), "100000000000000");
        assert_eq!(f(0.0001), "0.0001");
        assert_eq!(f(0.00001), "1e-05");
        assert_eq!(f(1.5e-10), "1.5e-10");
        assert_eq!(f(1.7976931348623157e308), "1.7976931348623157e+308");
        assert_eq!(f(5e-324), "5e-324");
        assert_eq!(f(std::f64::consts::PI), "3.141592653589793");
        assert_eq!(f(-0.0), "-0");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn input() {
        assert_eq!(parse(" 042 ").unwrap(), 42.0);
        assert_eq!(parse("1e3").unwrap(), 1000.0);
        assert_eq!(parse(".5").unwrap(), 0.5);
        assert!(parse("-Infinity").unwrap().is_infinite());
        assert!(parse("NaN").unwrap().is_nan());
        assert_eq!(parse("0.000e5").unwrap(), 0.0);
        assert!(parse("1e400").is_err());
        assert!(parse("1e-400").is_err());
        assert!(parse("abc").is_err());
        assert!(parse("").is_err());
        assert!(parse("infinityx").is_err());
    }
}
