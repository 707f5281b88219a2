//! Numbered plaintext markers and a search for them in logs, dumps and raw data files.
//!
//! A marker is `qzadv` + four decimal digits + `m` (`qzadv0042m`): short, lower-case ASCII, and
//! unlikely to occur by chance in ciphertext or in PostgreSQL's own files. [`scan_file`] and
//! [`scan_dir`] find every marker in the bytes of files, literally (any letter case) and
//! hex-encoded (`717a616476…6d`, as PostgreSQL prints `bytea`), and report the marker number,
//! the file and a snippet around it. The byte search is `grep -a` (fast on the hundreds of
//! megabytes of a data directory and a trace log); the numbers are decoded here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Marker prefix.
pub const PREFIX: &str = "qzadv";

/// The marker for number `n` (0..=9999).
pub fn marker(n: usize) -> String {
    format!("{PREFIX}{n:04}m")
}

/// Where a marker was found.
#[derive(Clone, Debug)]
pub struct Hit {
    /// Marker number.
    pub n: usize,
    /// The file (as given, or below the directory searched).
    pub file: PathBuf,
    /// Hex-encoded rather than literal.
    pub hex: bool,
    /// A few bytes around the match, printable ASCII only.
    pub snippet: String,
}

const LITERAL_RE: &str = "qzadv[0-9]{4}m";
const HEX_RE: &str = "717a616476(3[0-9]){4}6d";

/// Every marker in the bytes of `files` (missing files are skipped).
pub fn scan_files(files: &[PathBuf]) -> Vec<Hit> {
    let files: Vec<&PathBuf> = files.iter().filter(|f| f.exists()).collect();
    if files.is_empty() {
        return Vec::new();
    }
    let mut cmd = grep();
    cmd.args(files.iter().map(|f| f.as_os_str()));
    run_grep(cmd)
}

/// Every marker in the bytes of every file below `dir` (recursively).
pub fn scan_dir(dir: &Path) -> Vec<Hit> {
    let mut cmd = grep();
    cmd.arg("-r").arg(dir);
    run_grep(cmd)
}

/// `grep` printing `file\0byte-offset:match` for every marker, over bytes (C locale, binary
/// files as text).
fn grep() -> Command {
    let mut cmd = Command::new("grep");
    cmd.env("LC_ALL", "C")
        .args(["-a", "-o", "-i", "-b", "-H", "-Z", "-E", "-e"])
        .arg(format!("{LITERAL_RE}|{HEX_RE}"));
    cmd
}

fn run_grep(mut cmd: Command) -> Vec<Hit> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run grep");
    // 0: matches, 1: none; 2: trouble (unreadable files are reported but do not hide matches).
    assert!(
        out.status.code().is_some_and(|c| c <= 2),
        "grep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut hits = Vec::new();
    // Every output record is `file\0offset:match\n`; a match never holds a newline.
    for rec in out.stdout.split(|b| *b == b'\n') {
        let Some(nul) = rec.iter().position(|b| *b == 0) else {
            continue;
        };
        let file = PathBuf::from(String::from_utf8_lossy(&rec[..nul]).to_string());
        let rest = &rec[nul + 1..];
        let Some(colon) = rest.iter().position(|b| *b == b':') else {
            continue;
        };
        let offset: u64 = String::from_utf8_lossy(&rest[..colon]).parse().unwrap_or(0);
        for (n, hex) in decode_all(&rest[colon + 1..]) {
            hits.push(Hit {
                n,
                snippet: snippet(&file, offset, 60),
                file: file.clone(),
                hex,
            });
        }
    }
    hits
}

/// Up to `around` bytes either side of `offset` in `file`, printable ASCII only.
fn snippet(file: &Path, offset: u64, around: u64) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut f) = std::fs::File::open(file) else {
        return String::new();
    };
    let start = offset.saturating_sub(around);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = vec![0u8; (offset - start + 2 * around) as usize];
    let n = f.read(&mut buf).unwrap_or(0);
    printable(&buf[..n])
}

/// Every marker number in `bytes` (literal or hex, any case), with whether it was hex.
pub fn decode_all(bytes: &[u8]) -> Vec<(usize, bool)> {
    let lower: Vec<u8> = bytes.iter().map(u8::to_ascii_lowercase).collect();
    let mut found = Vec::new();
    let lit = PREFIX.as_bytes();
    let hex_prefix: Vec<u8> = lit
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect();
    let mut i = 0;
    while i < lower.len() {
        let rest = &lower[i..];
        if rest.starts_with(lit) && rest.len() >= lit.len() + 5 {
            let digits = &rest[lit.len()..lit.len() + 4];
            if digits.iter().all(u8::is_ascii_digit) && rest[lit.len() + 4] == b'm' {
                found.push((digits_value(digits), false));
                i += lit.len() + 5;
                continue;
            }
        }
        if rest.starts_with(&hex_prefix) && rest.len() >= hex_prefix.len() + 10 {
            let tail = &rest[hex_prefix.len()..hex_prefix.len() + 10];
            let pairs_ok = (0..4).all(|k| tail[2 * k] == b'3' && tail[2 * k + 1].is_ascii_digit());
            if pairs_ok && &tail[8..10] == b"6d" {
                let digits: Vec<u8> = (0..4).map(|k| tail[2 * k + 1]).collect();
                found.push((digits_value(&digits), true));
                i += hex_prefix.len() + 10;
                continue;
            }
        }
        i += 1;
    }
    found
}

fn digits_value(d: &[u8]) -> usize {
    d.iter().fold(0, |acc, b| acc * 10 + usize::from(b - b'0'))
}

fn printable(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            }
        })
        .collect()
}

/// Hits grouped by marker number.
pub fn by_number(hits: &[Hit]) -> BTreeMap<usize, Vec<&Hit>> {
    let mut m: BTreeMap<usize, Vec<&Hit>> = BTreeMap::new();
    for h in hits {
        m.entry(h.n).or_default().push(h);
    }
    m
}
