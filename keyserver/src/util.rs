//! Small helpers: random identifiers and timestamps.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A non-enumerable identifier: `prefix` + `_` + 128 random bits as 32 hex digits.
pub fn random_id(prefix: &str) -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    Ok(format!("{prefix}_{}", hex::encode(b)))
}

/// Current UTC time as RFC 3339 with nanoseconds trimmed to what `time` prints.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00Z"))
}

/// Current time in unix seconds.
pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_random_and_prefixed() {
        let a = super::random_id("kr").unwrap();
        let b = super::random_id("kr").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("kr_"));
        assert_eq!(a.len(), 3 + 32);
    }
}
