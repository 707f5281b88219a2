//! The session settings that change how PostgreSQL reads SQL text, as the server reports them.
//!
//! - `standard_conforming_strings` (reported in ParameterStatus): with `off`, a backslash in an
//!   ordinary `'…'` literal is an escape, so `'a\''` does not end where it ends with `on`.
//! - `backslash_quote` (not reported; read from the server at session start and after a
//!   statement that may change it): with `off`, `\'` inside an escape string is an error.
//! - `client_encoding` (reported): the server converts the text to its own encoding before
//!   lexing; in multi-byte encodings such as SJIS or BIG5 a trail byte can be `\` or `'`. The
//!   proxy reads text as UTF-8, so any other encoding is modelled only for ASCII-only text.
//!
//! A setting is `Unknown` while a statement that may change it is in flight (the server
//! reports the new value only at the next ReadyForQuery, and lexes pipelined statements with
//! it before that). The gate reads a statement under every combination of the unknown settings
//! and refuses it when the readings differ or any of them may touch a protected relation.

use pg_query::ParserOptions;

/// One setting as the proxy knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Known {
    On,
    Off,
    /// A statement that may change it has not been answered yet.
    Unknown,
}

impl Known {
    fn from_bool(on: bool) -> Self {
        if on {
            Known::On
        } else {
            Known::Off
        }
    }

    fn values(self) -> &'static [bool] {
        match self {
            Known::On => &[true],
            Known::Off => &[false],
            Known::Unknown => &[true, false],
        }
    }
}

/// The lexer-relevant settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LexerState {
    pub standard_conforming_strings: Known,
    /// `on` or `safe_encoding` (the default; the same for UTF-8) vs `off`.
    pub backslash_quote: Known,
    /// Whether `client_encoding` is UTF8 (or SQL_ASCII, which the server does not convert).
    pub client_utf8: bool,
}

impl Default for LexerState {
    fn default() -> Self {
        Self::SERVER_DEFAULT
    }
}

impl LexerState {
    /// PostgreSQL's defaults since 9.1.
    pub const SERVER_DEFAULT: LexerState = LexerState {
        standard_conforming_strings: Known::On,
        backslash_quote: Known::On,
        client_utf8: true,
    };

    /// Whether this is the state the rewriter's own parser models (standard strings, UTF-8).
    pub fn is_standard(&self) -> bool {
        self.standard_conforming_strings == Known::On && self.client_utf8
    }

    /// Whether some setting is unknown.
    pub fn uncertain(&self) -> bool {
        self.standard_conforming_strings == Known::Unknown || self.backslash_quote == Known::Unknown
    }

    /// The parser options of every reading the gate must consider.
    pub fn parser_options(&self) -> Vec<ParserOptions> {
        let mut out = Vec::with_capacity(4);
        for &scs in self.standard_conforming_strings.values() {
            for &bq in self.backslash_quote.values() {
                let mut o = ParserOptions::DEFAULT;
                if !scs {
                    o |= ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS;
                }
                if !bq {
                    o |= ParserOptions::DISABLE_BACKSLASH_QUOTE;
                }
                out.push(o);
            }
        }
        out
    }

    /// A small number that distinguishes states, for cache keys.
    pub fn key(&self) -> u8 {
        let k = |s: Known| match s {
            Known::On => 0u8,
            Known::Off => 1,
            Known::Unknown => 2,
        };
        k(self.standard_conforming_strings)
            | (k(self.backslash_quote) << 2)
            | (u8::from(!self.client_utf8) << 4)
    }

    /// Applies a ParameterStatus (or start-up) report; returns whether it concerned the lexer.
    pub fn apply_report(&mut self, name: &str, value: &str) -> bool {
        if name.eq_ignore_ascii_case("standard_conforming_strings") {
            self.standard_conforming_strings = Known::from_bool(setting_is_on(value));
            true
        } else if name.eq_ignore_ascii_case("client_encoding") {
            self.client_utf8 = encoding_is_utf8(value);
            true
        } else {
            false
        }
    }

    /// Applies the server's `backslash_quote` as `current_setting` shows it.
    pub fn apply_backslash_quote(&mut self, value: &str) {
        // on, off, safe_encoding (= on for every client encoding the proxy admits).
        self.backslash_quote = Known::from_bool(!value.trim().eq_ignore_ascii_case("off"));
    }

    /// The state while a statement that may change the settings is in flight (the client
    /// encoding too: non-ASCII text is then refused).
    pub fn unsettled(&self) -> LexerState {
        LexerState {
            standard_conforming_strings: Known::Unknown,
            backslash_quote: Known::Unknown,
            client_utf8: false,
        }
    }
}

/// Whether a boolean GUC value reads as on (`on`, `true`, `yes`, `1` and their prefixes, as
/// PostgreSQL's `parse_bool` accepts them).
fn setting_is_on(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    matches!(
        v.as_str(),
        "on" | "true" | "yes" | "1" | "t" | "y" | "ye" | "tr" | "tru"
    )
}

/// Whether a client_encoding value is UTF8 (any spelling PostgreSQL accepts) or SQL_ASCII.
fn encoding_is_utf8(value: &str) -> bool {
    let v: String = value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(v.as_str(), "utf8" | "unicode" | "sqlascii")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_followed() {
        let mut s = LexerState::SERVER_DEFAULT;
        assert!(s.is_standard());
        assert!(s.apply_report("standard_conforming_strings", "off"));
        assert_eq!(s.standard_conforming_strings, Known::Off);
        assert!(!s.is_standard());
        assert!(s.apply_report("standard_conforming_strings", "on"));
        assert!(s.apply_report("client_encoding", "SJIS"));
        assert!(!s.client_utf8);
        assert!(s.apply_report("client_encoding", "UTF8"));
        assert!(s.client_utf8);
        assert!(s.apply_report("client_encoding", "unicode"));
        assert!(s.client_utf8);
        assert!(!s.apply_report("TimeZone", "UTC"));
        s.apply_backslash_quote("off");
        assert_eq!(s.backslash_quote, Known::Off);
        s.apply_backslash_quote("safe_encoding");
        assert_eq!(s.backslash_quote, Known::On);
    }

    #[test]
    fn unknown_settings_give_every_reading() {
        let s = LexerState::SERVER_DEFAULT.unsettled();
        assert!(s.uncertain());
        assert_eq!(s.parser_options().len(), 4);
        assert_eq!(
            LexerState::SERVER_DEFAULT.parser_options(),
            [ParserOptions::DEFAULT]
        );
        let keys: std::collections::HashSet<u8> = [
            LexerState::SERVER_DEFAULT,
            s,
            LexerState {
                client_utf8: false,
                ..LexerState::SERVER_DEFAULT
            },
        ]
        .iter()
        .map(LexerState::key)
        .collect();
        assert_eq!(keys.len(), 3);
    }
}
