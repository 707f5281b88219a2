//! Hash-chained audit log: record hashing and chain verification.
//!
//! Each record's hash is SHA-256 over a domain label and the canonical JSON array
//! `[seq, ts, actor, action, keyring, version, outcome, detail, prev_hash]`. The first
//! record's `prev_hash` is 64 zeros. The store keeps the head (last seq and hash) in its
//! meta table, so removing records at the end is detected too.
//!
//! Text that reaches a record from a request (paths, names, token ids) is escaped before it is
//! stored ([`escape_stored`]): control characters, bidirectional-override characters and the
//! backslash itself become `\xNN` / `\u{NNNN}` / `\\`, so a stored record can never carry a
//! terminal escape or a line break. Records written before this rule are hashed as stored and
//! still verify; the CLI escapes them when printing ([`escape_display`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::model::{AuditProblem, AuditRecord, AuditVerifyReport};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const LABEL: &[u8] = b"pgseal-keyserver/audit/v1\n";

/// What the caller wants recorded; the store adds seq, time and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who (`proxy:NAME`, `token:ID`, `anonymous`, `local:init`).
    pub actor: String,
    /// What (e.g. `keyring.rotate`).
    pub action: String,
    /// Keyring name, if any.
    pub keyring: Option<String>,
    /// Version, if any.
    pub version: Option<u32>,
    /// Optional detail (never secrets).
    pub detail: Option<String>,
    /// Source IP address of the request (not stored by itself; used to aggregate
    /// unauthenticated failures per source).
    pub source: Option<IpAddr>,
}

impl AuditEvent {
    /// A new event.
    pub fn new(actor: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            actor: truncate(&escape_stored(&actor.into()), 256),
            action: truncate(&escape_stored(&action.into()), 64),
            keyring: None,
            version: None,
            detail: None,
            source: None,
        }
    }
    /// Sets the source address.
    pub fn source(mut self, ip: Option<IpAddr>) -> Self {
        self.source = ip;
        self
    }
    /// Sets the keyring (escaped, truncated to 128 bytes so junk input cannot bloat the log).
    pub fn keyring(mut self, k: &str) -> Self {
        self.keyring = Some(truncate(&escape_stored(k), 128));
        self
    }
    /// Sets the version.
    pub fn version(mut self, v: u32) -> Self {
        self.version = Some(v);
        self
    }
    /// Sets the detail (escaped, truncated to 256 bytes).
    pub fn detail(mut self, d: impl AsRef<str>) -> Self {
        self.detail = Some(truncate(&escape_stored(d.as_ref()), 256));
        self
    }
}

/// Characters that must never reach a terminal or a line-oriented reader unescaped: control
/// characters (C0, DEL, C1), line/paragraph separators and bidirectional-formatting characters.
fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn push_escaped(out: &mut String, c: char) {
    let n = u32::from(c);
    if n < 0x100 {
        let _ = write!(out, "\\x{n:02x}");
    } else {
        let _ = write!(out, "\\u{{{n:04x}}}");
    }
}

/// Escaping applied before a value is stored in a record: dangerous characters as `\xNN` or
/// `\u{NNNN}`, and `\` as `\\` so the escaping is unambiguous.
pub fn escape_stored(s: &str) -> String {
    if !s.chars().any(|c| c == '\\' || is_dangerous(c)) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if is_dangerous(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Escaping applied when printing a stored value: dangerous characters only (values stored
/// by this version contain none; older records may).
pub fn escape_display(s: &str) -> String {
    if !s.chars().any(is_dangerous) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_dangerous(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

/// Computes the hash of a record from its fields (ignores `record.hash`).
pub fn record_hash(r: &AuditRecord) -> String {
    let canonical = serde_json::json!([
        r.seq,
        r.ts,
        r.actor,
        r.action,
        r.keyring,
        r.version,
        r.outcome,
        r.detail,
        r.prev_hash
    ]);
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(canonical.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Verifies a chain given in storage order and the stored head (last seq, last hash).
pub fn verify_chain<I>(records: I, head: Option<(u64, String)>) -> AuditVerifyReport
where
    I: IntoIterator<Item = AuditRecord>,
{
    let mut prev = GENESIS_HASH.to_owned();
    let mut count = 0u64;
    let bad = |seq, reason: String, count, prev: &str| AuditVerifyReport {
        ok: false,
        records: count,
        head_hash: prev.to_owned(),
        first_bad: Some(AuditProblem { seq, reason }),
    };
    for r in records {
        let expected_seq = count + 1;
        if r.seq != expected_seq {
            let reason = if r.seq > expected_seq {
                format!(
                    "record {expected_seq} is missing (next stored record is {})",
                    r.seq
                )
            } else {
                format!("record {} is out of order (expected {expected_seq})", r.seq)
            };
            return bad(expected_seq, reason, count, &prev);
        }
        if r.prev_hash != prev {
            return bad(
                r.seq,
                format!("record {} does not link to the previous record", r.seq),
                count,
                &prev,
            );
        }
        if record_hash(&r) != r.hash {
            return bad(
                r.seq,
                format!("record {} was modified (hash mismatch)", r.seq),
                count,
                &prev,
            );
        }
        prev = r.hash;
        count += 1;
    }
    match head {
        Some((seq, hash)) if seq != count || hash != prev => bad(
            count + 1,
            format!("the log ends at record {count} but the stored head is record {seq}: records were removed"),
            count,
            &prev,
        ),
        None if count > 0 => bad(1, String::from("audit head is missing"), count, &prev),
        _ => AuditVerifyReport { ok: true, records: count, head_hash: prev, first_bad: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        let mut out = Vec::new();
        for seq in 1..=n {
            let mut r = AuditRecord {
                seq,
                ts: "2026-01-01T00:00:00Z".into(),
                actor: "a".into(),
                action: format!("act{seq}"),
                keyring: Some("k".into()),
                version: Some(1),
                outcome: "ok".into(),
                detail: None,
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            r.hash = record_hash(&r);
            prev = r.hash.clone();
            out.push(r);
        }
        out
    }

    fn head(c: &[AuditRecord]) -> Option<(u64, String)> {
        c.last().map(|r| (r.seq, r.hash.clone()))
    }

    #[test]
    fn intact_and_tampered() {
        let c = chain(5);
        let h = head(&c);
        assert!(verify_chain(c.clone(), h.clone()).ok);
        assert!(verify_chain(Vec::new(), None).ok);

        let mut edited = c.clone();
        edited[2].outcome = "denied".into();
        let r = verify_chain(edited, h.clone());
        assert_eq!(r.first_bad.unwrap().seq, 3);

        let mut removed = c.clone();
        removed.remove(1);
        assert_eq!(verify_chain(removed, h.clone()).first_bad.unwrap().seq, 2);

        let mut swapped = c.clone();
        swapped.swap(1, 3);
        assert_eq!(verify_chain(swapped, h.clone()).first_bad.unwrap().seq, 2);

        let mut truncated = c.clone();
        truncated.pop();
        assert_eq!(verify_chain(truncated, h).first_bad.unwrap().seq, 5);
    }

    #[test]
    fn escaping() {
        let evil = "a\u{1b}[31mX\nFAKE #1 ok\r\\\u{202e}\u{85}";
        let stored = escape_stored(evil);
        assert_eq!(stored, "a\\x1b[31mX\\x0aFAKE #1 ok\\x0d\\\\\\u{202e}\\x85");
        assert!(!stored.chars().any(is_dangerous));
        // Display of an already-escaped value changes nothing; of a raw one, escapes it.
        assert_eq!(escape_display(&stored), stored);
        assert_eq!(escape_display("x\u{7}y"), "x\\x07y");
        assert_eq!(escape_stored("plain kr-1"), "plain kr-1");
        let ev = AuditEvent::new("anon\n", "a")
            .keyring("k\u{1b}")
            .detail("GET /\u{0}");
        assert_eq!(ev.actor, "anon\\x0a");
        assert_eq!(ev.keyring.as_deref(), Some("k\\x1b"));
        assert_eq!(ev.detail.as_deref(), Some("GET /\\x00"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ääää", 3), "ä");
        assert_eq!(
            AuditEvent::new("a", "b")
                .keyring(&"x".repeat(500))
                .keyring
                .unwrap()
                .len(),
            128
        );
    }
}
