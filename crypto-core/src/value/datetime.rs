//! Dates and timestamps as PostgreSQL stores them: days / microseconds since 2000-01-01,
//! proleptic Gregorian calendar, astronomical year numbering inside (1 BC = year 0).
//! Text forms are PostgreSQL's ISO `DateStyle`.

use super::ValueError;

/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const USECS_PER_DAY: i64 = 86_400_000_000;
/// PostgreSQL's `infinity` and `-infinity` dates.
pub const DATE_POS_INFINITY: i32 = i32::MAX;
/// See [`DATE_POS_INFINITY`].
pub const DATE_NEG_INFINITY: i32 = i32::MIN;
/// PostgreSQL's `infinity` and `-infinity` timestamps.
pub const TS_POS_INFINITY: i64 = i64::MAX;
/// See [`TS_POS_INFINITY`].
pub const TS_NEG_INFINITY: i64 = i64::MIN;
/// 4714-11-24 BC (Julian day 0), PostgreSQL's lower bound for dates and timestamps.
const MIN_DAYS: i64 = -2_451_545;
/// Upper bound for dates (5874897-12-31) relative to 2000-01-01.
const MAX_DATE_DAYS: i64 = 2_145_031_948;
/// Upper bound for timestamps: 294276-12-31 23:59:59.999999.
const MAX_TS_DAYS: i64 = 106_741_026;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

/// A small cursor over ASCII input.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            s: s.as_bytes(),
            pos: 0,
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn digits(&mut self, min: usize, max: usize) -> Option<(u64, usize)> {
        let start = self.pos;
        let mut v: u64 = 0;
        while let Some(c) = self.peek() {
            if !c.is_ascii_digit() || self.pos - start >= max {
                break;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.pos += 1;
        }
        let n = self.pos - start;
        (n >= min).then_some((v, n))
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }
    fn rest(&self) -> &'a [u8] {
        self.s.get(self.pos..).unwrap_or_default()
    }
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
}

fn bad(ty: &'static str, input: &str) -> ValueError {
    ValueError::invalid(ty, input)
}

/// Parses `YYYY-MM-DD` (year ≥ 1, optional ` BC`/` AD` later) into astronomical (y, m, d).
fn parse_ymd(c: &mut Cursor<'_>) -> Option<(i64, u32, u32)> {
    let (y, _) = c.digits(1, 7)?;
    if !c.eat(b'-') {
        return None;
    }
    let (m, _) = c.digits(1, 2)?;
    if !c.eat(b'-') {
        return None;
    }
    let (d, _) = c.digits(1, 2)?;
    Some((
        i64::try_from(y).ok()?,
        u32::try_from(m).ok()?,
        u32::try_from(d).ok()?,
    ))
}

/// Consumes an optional era suffix (` BC` / ` AD`, case-insensitive) and returns true for BC.
fn parse_era(c: &mut Cursor<'_>) -> bool {
    let save = c.pos;
    c.skip_ws();
    let rest = c.rest();
    if rest.len() >= 2 {
        let word = rest.get(..2).unwrap_or_default().to_ascii_uppercase();
        if word == b"BC" {
            c.pos += 2;
            return true;
        }
        if word == b"AD" {
            c.pos += 2;
            return false;
        }
    }
    c.pos = save;
    false
}

fn to_days(y: i64, m: u32, d: u32, bc: bool) -> Option<i64> {
    if y == 0 || !(1..=12).contains(&m) {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    if d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) - PG_EPOCH_DAYS)
}

fn special(s: &str) -> Option<&'static str> {
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "infinity" | "+infinity" => Some("infinity"),
        "-infinity" => Some("-infinity"),
        "epoch" => Some("epoch"),
        "now" | "today" | "tomorrow" | "yesterday" | "allballs" => Some("relative"),
        _ => None,
    }
}

fn relative_error(ty: &'static str, input: &str) -> ValueError {
    ValueError::Unsupported {
        ty,
        what: format!(
            "relative value {:?} (the proxy cannot evaluate it for an encrypted column; send a concrete value)",
            input.trim()
        ),
    }
}

/// Parses a PostgreSQL date in ISO form.
pub fn parse_date(input: &str) -> Result<i32, ValueError> {
    match special(input) {
        Some("infinity") => return Ok(DATE_POS_INFINITY),
        Some("-infinity") => return Ok(DATE_NEG_INFINITY),
        Some("epoch") => return Ok(-(PG_EPOCH_DAYS as i32)),
        Some(_) => return Err(relative_error("date", input)),
        None => {}
    }
    let mut c = Cursor::new(input.trim());
    let (y, m, d) = parse_ymd(&mut c).ok_or_else(|| bad("date", input))?;
    let bc = parse_era(&mut c);
    if !c.at_end() {
        return Err(bad("date", input));
    }
    let days = to_days(y, m, d, bc).ok_or_else(|| bad("date", input))?;
    if !(MIN_DAYS..=MAX_DATE_DAYS).contains(&days) {
        return Err(ValueError::OutOfRange { ty: "date" });
    }
    i32::try_from(days).map_err(|_| ValueError::OutOfRange { ty: "date" })
}

fn write_ymd(days: i64, out: &mut String) -> bool {
    let (y, m, d) = civil_from_days(days + PG_EPOCH_DAYS);
    let (year, bc) = if y <= 0 { (1 - y, true) } else { (y, false) };
    push_padded(out, year.unsigned_abs(), 4);
    out.push('-');
    push_padded(out, u64::from(m), 2);
    out.push('-');
    push_padded(out, u64::from(d), 2);
    bc
}

/// Appends `n` in decimal, zero-padded to at least `width` digits (what `{n:0width$}` does,
/// without the formatting machinery: this runs for every date and timestamp cell rendered).
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut len = 0;
    let mut v = n;
    while let Some(slot) = digits.get_mut(len) {
        *slot = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for _ in len..width {
        out.push('0');
    }
    out.extend(digits.iter().take(len).rev().map(|d| char::from(*d)));
}

/// Renders a date as PostgreSQL does with `DateStyle = ISO`.
pub fn format_date(days: i32, out: &mut String) {
    match days {
        DATE_POS_INFINITY => out.push_str("infinity"),
        DATE_NEG_INFINITY => out.push_str("-infinity"),
        _ => {
            if write_ymd(i64::from(days), out) {
                out.push_str(" BC");
            }
        }
    }
}

/// Checks a date from the binary format.
pub fn check_date(days: i32) -> Result<i32, ValueError> {
    let d = i64::from(days);
    if days == DATE_POS_INFINITY
        || days == DATE_NEG_INFINITY
        || (MIN_DAYS..=MAX_DATE_DAYS).contains(&d)
    {
        Ok(days)
    } else {
        Err(ValueError::OutOfRange { ty: "date" })
    }
}

/// Checks a timestamp from the binary format.
pub fn check_timestamp(us: i64, ty: &'static str) -> Result<i64, ValueError> {
    if us == TS_POS_INFINITY || us == TS_NEG_INFINITY {
        return Ok(us);
    }
    let days = us.div_euclid(USECS_PER_DAY);
    if (MIN_DAYS..=MAX_TS_DAYS).contains(&days) {
        Ok(us)
    } else {
        Err(ValueError::OutOfRange { ty })
    }
}

/// Unix time of PostgreSQL's epoch (2000-01-01 00:00:00), in seconds.
const UNIX_SECS_AT_PG_EPOCH: i64 = 946_684_800;

/// What [`parse_offset`] returns when the input gives no offset.
const ABSENT_OFFSET: i64 = i64::MIN;

/// Parses a timestamp. With `with_zone`, an offset (`Z`, `UTC`, `+HH`, `+HH:MM`, `+HHMM`,
/// `+HH:MM:SS`) is accepted and the result is UTC; a missing offset means UTC. Zone names other
/// than UTC/GMT/Z are refused. [`parse_timestamp_in`] reads a missing offset in a session zone.
pub fn parse_timestamp(input: &str, with_zone: bool) -> Result<i64, ValueError> {
    if with_zone {
        parse_timestamp_in(input, Some(&Utc))
    } else {
        parse_timestamp_in(input, None)
    }
}

/// Parses a `timestamp` (`zone` None) or a `timestamptz` whose missing offset means local time
/// in `zone` (PostgreSQL's `TimeZone`; a time in a daylight-saving gap or fold gets the offset
/// PostgreSQL gives it, see [`SessionZone::offset_for_local`]).
pub fn parse_timestamp_in(input: &str, zone: Option<&dyn SessionZone>) -> Result<i64, ValueError> {
    let with_zone = zone.is_some();
    let ty = if with_zone {
        "timestamptz"
    } else {
        "timestamp"
    };
    match special(input) {
        Some("infinity") => return Ok(TS_POS_INFINITY),
        Some("-infinity") => return Ok(TS_NEG_INFINITY),
        Some("epoch") => return Ok(-PG_EPOCH_DAYS * USECS_PER_DAY),
        Some(_) => return Err(relative_error(ty, input)),
        None => {}
    }
    let trimmed = input.trim();
    let mut c = Cursor::new(trimmed);
    let (y, m, d) = parse_ymd(&mut c).ok_or_else(|| bad(ty, input))?;
    let mut micros: i64 = 0;
    let save = c.pos;
    let has_time = c.eat(b'T') || c.eat(b't') || {
        c.skip_ws();
        c.peek().is_some_and(|ch| ch.is_ascii_digit())
    };
    if has_time {
        let (hh, _) = c.digits(1, 2).ok_or_else(|| bad(ty, input))?;
        if !c.eat(b':') {
            return Err(bad(ty, input));
        }
        let (mm, _) = c.digits(2, 2).ok_or_else(|| bad(ty, input))?;
        let mut ss = 0u64;
        let mut frac_us = 0i64;
        if c.eat(b':') {
            ss = c.digits(2, 2).ok_or_else(|| bad(ty, input))?.0;
            if c.eat(b'.') {
                frac_us = parse_fraction(&mut c).ok_or_else(|| bad(ty, input))?;
            }
        }
        // 24:00:00 is allowed by PostgreSQL and means the next midnight.
        let valid =
            (hh < 24 && mm < 60 && ss < 60) || (hh == 24 && mm == 0 && ss == 0 && frac_us == 0);
        if !valid {
            return Err(ValueError::OutOfRange { ty });
        }
        let secs = (hh * 3600 + mm * 60 + ss) as i64;
        micros = secs * 1_000_000 + frac_us;
    } else {
        c.pos = save;
    }
    let mut offset_secs: i64 = 0;
    if with_zone {
        c.skip_ws();
        offset_secs = parse_offset(&mut c).ok_or_else(|| bad(ty, input))?;
    }
    let bc = parse_era(&mut c);
    c.skip_ws();
    if !c.at_end() {
        return Err(bad(ty, input));
    }
    let days = to_days(y, m, d, bc).ok_or_else(|| bad(ty, input))?;
    let local = days
        .checked_mul(USECS_PER_DAY)
        .and_then(|v| v.checked_add(micros))
        .ok_or(ValueError::OutOfRange { ty })?;
    if offset_secs == ABSENT_OFFSET {
        offset_secs = match zone {
            Some(z) => i64::from(
                z.offset_for_local(local.div_euclid(1_000_000) + UNIX_SECS_AT_PG_EPOCH)
                    .ok_or_else(|| unknown_zone(z))?,
            ),
            None => 0,
        };
    }
    let us = local
        .checked_sub(offset_secs * 1_000_000)
        .ok_or(ValueError::OutOfRange { ty })?;
    if us == TS_POS_INFINITY || us == TS_NEG_INFINITY {
        return Err(ValueError::OutOfRange { ty });
    }
    check_timestamp(us, ty)
}

/// Fractional seconds to microseconds, rounding half up at the 7th digit.
fn parse_fraction(c: &mut Cursor<'_>) -> Option<i64> {
    let start = c.pos;
    let mut us: i64 = 0;
    let mut n = 0;
    let mut round = false;
    while let Some(ch) = c.peek() {
        if !ch.is_ascii_digit() {
            break;
        }
        if n < 6 {
            us = us * 10 + i64::from(ch - b'0');
        } else if n == 6 {
            round = ch >= b'5';
        }
        n += 1;
        c.pos += 1;
    }
    if c.pos == start {
        return Some(0);
    }
    for _ in n..6 {
        us *= 10;
    }
    Some(us + i64::from(round))
}

fn parse_offset(c: &mut Cursor<'_>) -> Option<i64> {
    let rest = c.rest();
    let upper: Vec<u8> = rest
        .iter()
        .take(3)
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if upper.starts_with(b"UTC") || upper.starts_with(b"GMT") {
        c.pos += 3;
        if !matches!(c.peek(), Some(b'+' | b'-')) {
            return Some(0);
        }
    } else if upper.first() == Some(&b'Z') {
        c.pos += 1;
        return Some(0);
    }
    let sign = match c.peek() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => {
            let era = upper.starts_with(b"BC") || upper.starts_with(b"AD");
            return if c.at_end() || c.peek() == Some(b' ') || era {
                Some(ABSENT_OFFSET)
            } else {
                None
            };
        }
    };
    c.pos += 1;
    let (first, n) = c.digits(1, 4)?;
    let (mut h, mut m) = if n > 2 {
        (first / 100, first % 100)
    } else {
        (first, 0)
    };
    let mut s = 0;
    if n <= 2 && c.eat(b':') {
        m = c.digits(2, 2)?.0;
        if c.eat(b':') {
            s = c.digits(2, 2)?.0;
        }
    }
    if h > 15 || m > 59 || s > 59 {
        return None;
    }
    h = h * 3600 + m * 60 + s;
    Some(sign * h as i64)
}

fn unknown_zone(z: &dyn SessionZone) -> ValueError {
    ValueError::Unsupported {
        ty: "timestamptz",
        what: format!(
            "text without a UTC offset, or output as text, while TimeZone is {:?} (a zone pgseal cannot resolve; give an explicit offset or use the binary format)",
            z.name()
        ),
    }
}

/// Renders a timestamp as PostgreSQL does (ISO). `with_zone` appends `+00` (values are UTC).
pub fn format_timestamp(us: i64, with_zone: bool, out: &mut String) {
    if with_zone {
        // UTC always resolves.
        let _ = format_timestamptz_in(us, &Utc, out);
    } else {
        format_local(us, None, out);
    }
}

/// Renders a `timestamptz` as PostgreSQL does with `DateStyle = ISO` and `TimeZone` = `zone`:
/// local time, then the offset (`+01`, `+05:30`, `+00:53:28`).
pub fn format_timestamptz_in(
    us: i64,
    zone: &dyn SessionZone,
    out: &mut String,
) -> Result<(), ValueError> {
    if us == TS_POS_INFINITY || us == TS_NEG_INFINITY {
        format_local(us, None, out);
        return Ok(());
    }
    let offset = zone
        .offset_at_utc(us.div_euclid(1_000_000) + UNIX_SECS_AT_PG_EPOCH)
        .ok_or_else(|| unknown_zone(zone))?;
    let local = us
        .checked_add(i64::from(offset) * 1_000_000)
        .ok_or(ValueError::OutOfRange { ty: "timestamptz" })?;
    format_local(local, Some(offset), out);
    Ok(())
}

/// Local date and time, then the UTC offset if any, then ` BC`.
fn format_local(us: i64, offset: Option<i32>, out: &mut String) {
    match us {
        TS_POS_INFINITY => return out.push_str("infinity"),
        TS_NEG_INFINITY => return out.push_str("-infinity"),
        _ => {}
    }
    let days = us.div_euclid(USECS_PER_DAY);
    let tod = us.rem_euclid(USECS_PER_DAY);
    let bc = write_ymd(days, out);
    let secs = tod / 1_000_000;
    let frac = tod % 1_000_000;
    out.push(' ');
    push_padded(out, (secs / 3600).unsigned_abs(), 2);
    out.push(':');
    push_padded(out, ((secs / 60) % 60).unsigned_abs(), 2);
    out.push(':');
    push_padded(out, (secs % 60).unsigned_abs(), 2);
    if frac != 0 {
        // Six digits of microseconds without the trailing zeros.
        let (mut f, mut width) = (frac.unsigned_abs(), 6);
        while f % 10 == 0 {
            f /= 10;
            width -= 1;
        }
        out.push('.');
        push_padded(out, f, width);
    }
    if let Some(off) = offset {
        let a = off.unsigned_abs();
        out.push(if off < 0 { '-' } else { '+' });
        push_padded(out, u64::from(a / 3600), 2);
        if a % 3600 != 0 {
            out.push(':');
            push_padded(out, u64::from((a / 60) % 60), 2);
            if a % 60 != 0 {
                out.push(':');
                push_padded(out, u64::from(a % 60), 2);
            }
        }
    }
    if bc {
        out.push_str(" BC");
    }
}

/// The session time zone (PostgreSQL's `TimeZone` setting) for `timestamptz` text: input
/// without an offset is local time in it, output is local time with its offset. Binary format
/// and the stored values are UTC and do not depend on it.
pub trait SessionZone: Send + Sync {
    /// The setting's name as PostgreSQL reports it (for messages).
    fn name(&self) -> &str;
    /// The UTC offset in seconds east of Greenwich at the UTC instant `utc_secs` (Unix
    /// seconds); None when the zone cannot be resolved.
    fn offset_at_utc(&self, utc_secs: i64) -> Option<i32>;
    /// The UTC offset for the local wall-clock time `local_secs` (seconds since 1970-01-01
    /// 00:00 local). In a daylight-saving gap (the clock jumps forward) PostgreSQL uses the
    /// offset before the transition, in a fold (the clock goes back) the one after it.
    fn offset_for_local(&self, local_secs: i64) -> Option<i32>;
}

/// UTC (PostgreSQL's default `TimeZone` when the server configures none, and what `GMT`,
/// `Etc/UTC`, … resolve to).
#[derive(Debug, Clone, Copy, Default)]
pub struct Utc;

impl SessionZone for Utc {
    fn name(&self) -> &str {
        "UTC"
    }
    fn offset_at_utc(&self, _: i64) -> Option<i32> {
        Some(0)
    }
    fn offset_for_local(&self, _: i64) -> Option<i32> {
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date_rt(s: &str) -> String {
        let mut out = String::new();
        format_date(parse_date(s).unwrap(), &mut out);
        out
    }

    fn ts_rt(s: &str, tz: bool) -> String {
        let mut out = String::new();
        format_timestamp(parse_timestamp(s, tz).unwrap(), tz, &mut out);
        out
    }

    #[test]
    fn push_padded_matches_the_format_machinery() {
        for n in [0u64, 1, 9, 10, 99, 100, 2024, 12345, 5_874_897, u64::MAX] {
            for width in [0usize, 2, 4, 6] {
                let mut out = String::from("x");
                push_padded(&mut out, n, width);
                assert_eq!(out, format!("x{n:0width$}"), "{n} width {width}");
            }
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("2000-01-01").unwrap(), 0);
        assert_eq!(parse_date("1970-01-01").unwrap(), -10957);
        assert_eq!(parse_date("epoch").unwrap(), -10957);
        assert_eq!(date_rt(" 2024-2-29 "), "2024-02-29");
        assert_eq!(date_rt("0001-01-01 BC"), "0001-01-01 BC");
        assert_eq!(date_rt("4714-11-24 BC"), "4714-11-24 BC");
        assert_eq!(date_rt("5874897-12-31"), "5874897-12-31");
        assert_eq!(date_rt("Infinity"), "infinity");
        assert_eq!(date_rt("-infinity"), "-infinity");
        assert!(parse_date("2023-02-29").is_err());
        assert!(parse_date("2023-13-01").is_err());
        assert!(parse_date("0000-01-01").is_err());
        assert!(parse_date("4714-11-23 BC").is_err());
        assert!(parse_date("2023-01-01x").is_err());
        assert!(parse_date("today").is_err());
        assert!(parse_date("").is_err());
    }

    /// A zone with standard time +01 and summer time +02 from 2024-03-31 01:00 UTC to
    /// 2024-10-27 01:00 UTC (Europe/Berlin in 2024), following PostgreSQL's gap/fold rule.
    struct Berlin2024;
    const SUMMER_START: i64 = 1_711_846_800; // 2024-03-31 01:00 UTC
    const SUMMER_END: i64 = 1_729_990_800; // 2024-10-27 01:00 UTC
    impl SessionZone for Berlin2024 {
        fn name(&self) -> &str {
            "Europe/Berlin"
        }
        fn offset_at_utc(&self, t: i64) -> Option<i32> {
            Some(if (SUMMER_START..SUMMER_END).contains(&t) {
                7200
            } else {
                3600
            })
        }
        fn offset_for_local(&self, l: i64) -> Option<i32> {
            let (as_std, as_dst) = (l - 3600, l - 7200);
            let std_ok = !(SUMMER_START..SUMMER_END).contains(&as_std);
            let dst_ok = (SUMMER_START..SUMMER_END).contains(&as_dst);
            Some(match (std_ok, dst_ok) {
                (true, false) => 3600,
                (false, true) => 7200,
                // fold (both valid): the offset after the transition (standard time)
                (true, true) => 3600,
                // gap (neither): the offset before the transition (standard time)
                (false, false) => 3600,
            })
        }
    }

    struct Fixed(i32);
    impl SessionZone for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn offset_at_utc(&self, _: i64) -> Option<i32> {
            Some(self.0)
        }
        fn offset_for_local(&self, _: i64) -> Option<i32> {
            Some(self.0)
        }
    }

    struct Unknown;
    impl SessionZone for Unknown {
        fn name(&self) -> &str {
            "Mars/Olympus"
        }
        fn offset_at_utc(&self, _: i64) -> Option<i32> {
            None
        }
        fn offset_for_local(&self, _: i64) -> Option<i32> {
            None
        }
    }

    fn in_zone(s: &str, z: &dyn SessionZone) -> String {
        let us = parse_timestamp_in(s, Some(z)).unwrap();
        let mut out = String::new();
        format_timestamptz_in(us, z, &mut out).unwrap();
        out
    }

    fn utc_of(s: &str, z: &dyn SessionZone) -> String {
        let mut out = String::new();
        format_timestamp(parse_timestamp_in(s, Some(z)).unwrap(), true, &mut out);
        out
    }

    #[test]
    fn timestamptz_in_a_session_zone() {
        let z = Berlin2024;
        // Input without an offset is local time; output is local time with the offset.
        assert_eq!(utc_of("2024-01-15 10:00", &z), "2024-01-15 09:00:00+00");
        assert_eq!(utc_of("2024-07-15 10:00", &z), "2024-07-15 08:00:00+00");
        assert_eq!(
            in_zone("2024-07-15 10:00:00.25", &z),
            "2024-07-15 10:00:00.25+02"
        );
        assert_eq!(in_zone("2024-01-15 10:00+00", &z), "2024-01-15 11:00:00+01");
        // An explicit offset wins over the zone.
        assert_eq!(utc_of("2024-07-15 10:00-03", &z), "2024-07-15 13:00:00+00");
        // Gap: 02:30 does not exist on 2024-03-31; PostgreSQL reads it with the offset before
        // the transition (+01), i.e. 01:30 UTC = 03:30+02.
        assert_eq!(utc_of("2024-03-31 02:30", &z), "2024-03-31 01:30:00+00");
        assert_eq!(in_zone("2024-03-31 02:30", &z), "2024-03-31 03:30:00+02");
        // Fold: 02:30 happens twice on 2024-10-27; PostgreSQL takes the later one (+01).
        assert_eq!(utc_of("2024-10-27 02:30", &z), "2024-10-27 01:30:00+00");
        // Offsets with minutes and seconds, negative offsets, BC, infinity.
        assert_eq!(
            in_zone("2024-01-01 00:00+00", &Fixed(19_800)),
            "2024-01-01 05:30:00+05:30"
        );
        assert_eq!(
            in_zone("1850-01-01 00:00+00", &Fixed(3208)),
            "1850-01-01 00:53:28+00:53:28"
        );
        assert_eq!(
            in_zone("2024-01-01 00:00+00", &Fixed(-12_600)),
            "2023-12-31 20:30:00-03:30"
        );
        assert_eq!(
            in_zone("0044-03-15 12:00:00+00 BC", &Fixed(3600)),
            "0044-03-15 13:00:00+01 BC"
        );
        assert_eq!(in_zone("infinity", &Unknown), "infinity");
        // An era right after the time (no offset) is local time too.
        assert_eq!(
            in_zone("0044-03-15 12:00 BC", &Fixed(3600)),
            "0044-03-15 12:00:00+01 BC"
        );
        assert_eq!(
            utc_of("0044-03-15 12:00 BC", &Fixed(3600)),
            "0044-03-15 11:00:00+00 BC"
        );
        // A zone that cannot be resolved: only input with an explicit offset works.
        assert_eq!(
            utc_of("2024-01-01 10:00+01", &Unknown),
            "2024-01-01 09:00:00+00"
        );
        let e = parse_timestamp_in("2024-01-01 10:00", Some(&Unknown)).unwrap_err();
        assert!(e.to_string().contains("Mars/Olympus"), "{e}");
        let mut out = String::new();
        assert!(format_timestamptz_in(0, &Unknown, &mut out).is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("2000-01-01 00:00:00", false).unwrap(), 0);
        assert_eq!(
            ts_rt("2024-05-06T07:08:09.5", false),
            "2024-05-06 07:08:09.5"
        );
        assert_eq!(
            ts_rt("2024-05-06 07:08:09.1234567", false),
            "2024-05-06 07:08:09.123457"
        );
        assert_eq!(ts_rt("2024-05-06", false), "2024-05-06 00:00:00");
        assert_eq!(ts_rt("2024-05-06 24:00:00", false), "2024-05-07 00:00:00");
        assert_eq!(
            ts_rt("1999-12-31 23:59:59.999999", false),
            "1999-12-31 23:59:59.999999"
        );
        assert_eq!(
            ts_rt("0044-03-15 12:00:00 BC", false),
            "0044-03-15 12:00:00 BC"
        );
        assert_eq!(
            ts_rt("2024-05-06 07:08:09+02", true),
            "2024-05-06 05:08:09+00"
        );
        assert_eq!(
            ts_rt("2024-05-06 07:08:09-05:30", true),
            "2024-05-06 12:38:09+00"
        );
        assert_eq!(
            ts_rt("2024-05-06 07:08:09Z", true),
            "2024-05-06 07:08:09+00"
        );
        assert_eq!(
            ts_rt("2024-05-06 07:08:09 UTC", true),
            "2024-05-06 07:08:09+00"
        );
        assert_eq!(
            ts_rt("2024-05-06 07:08:09+0130", true),
            "2024-05-06 05:38:09+00"
        );
        assert_eq!(ts_rt("2024-05-06 07:08:09", true), "2024-05-06 07:08:09+00");
        assert!(parse_timestamp("2024-05-06 25:00:00", false).is_err());
        assert!(parse_timestamp("2024-05-06 07:08:09 Europe/Berlin", true).is_err());
        assert!(parse_timestamp("2024-05-06 07:08:09+02", false).is_err());
        assert!(parse_timestamp("now", false).is_err());
        assert!(parse_timestamp("294277-01-01", false).is_err());
    }

    #[test]
    fn calendar_round_trip() {
        for d in (-2_451_545i64..2_000_000).step_by(997) {
            let (y, m, dd) = civil_from_days(d + PG_EPOCH_DAYS);
            assert_eq!(days_from_civil(y, m, dd) - PG_EPOCH_DAYS, d);
        }
    }
}
