//! Printing the rewritten AST into a template: sentinel identifiers stand for slots, protected
//! parameter uses and raw fragments; they are found again by tokenizing the printed text.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use sqlparser::ast::Ident;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

use super::plan::{IndexPiece, Piece, UpstreamParam};
use super::refusal::{Refusal, INTERNAL_ERROR};

/// Per-call unique sentinel identifiers (`pgseal_<random hex>_s0`, `…_p0`, `…_r0`).
#[derive(Debug, Clone)]
pub(crate) struct Sentinels {
    prefix: String,
}

/// What a sentinel stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Slot(usize),
    Param(usize),
    Raw(usize),
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

impl Sentinels {
    /// A prefix that does not occur in `sql` (case-insensitively).
    pub(crate) fn new(sql: &str) -> Self {
        let lower = sql.to_lowercase();
        loop {
            let prefix = format!("pgseal_{:016x}_", random_u64());
            if !lower.contains(&prefix) {
                return Self { prefix };
            }
        }
    }

    fn ident(&self, tag: char, i: usize) -> Ident {
        Ident::new(format!("{}{tag}{i}", self.prefix))
    }
    /// The identifier standing for slot `i`.
    pub(crate) fn slot(&self, i: usize) -> Ident {
        self.ident('s', i)
    }
    /// The identifier standing for protected parameter use `i`.
    pub(crate) fn param(&self, i: usize) -> Ident {
        self.ident('p', i)
    }
    /// The identifier standing for raw SQL fragment `i`.
    pub(crate) fn raw(&self, i: usize) -> Ident {
        self.ident('r', i)
    }

    fn parse(&self, word: &str) -> Option<Result<Kind, ()>> {
        let rest = word.strip_prefix(self.prefix.as_str())?;
        let mut chars = rest.chars();
        let tag = chars.next();
        let n: Result<usize, _> = chars.as_str().parse();
        Some(match (tag, n) {
            (Some('s'), Ok(i)) => Ok(Kind::Slot(i)),
            (Some('p'), Ok(i)) => Ok(Kind::Param(i)),
            (Some('r'), Ok(i)) => Ok(Kind::Raw(i)),
            _ => Err(()),
        })
    }
}

fn internal(what: &str) -> Refusal {
    Refusal::new(
        INTERNAL_ERROR,
        format!("pgseal: rewrite self-check failed ({what})"),
    )
}

/// Converts the tokenizer's (line, column) locations to byte offsets, moving forwards only
/// (tokens arrive in order), so a whole pass is linear in the text length.
struct Cursor<'t> {
    text: &'t str,
    line: u64,
    col: u64,
    byte: usize,
}

impl<'t> Cursor<'t> {
    fn new(text: &'t str) -> Self {
        Self {
            text,
            line: 1,
            col: 1,
            byte: 0,
        }
    }

    /// The byte offset of `loc` (which must not lie before the previous call's).
    fn offset(&mut self, loc: Location) -> Option<usize> {
        while (self.line, self.col) < (loc.line, loc.column) {
            let c = self.text.get(self.byte..)?.chars().next()?;
            self.byte += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        ((self.line, self.col) == (loc.line, loc.column)).then_some(self.byte)
    }
}

/// A protected parameter use: the upstream parameter, and for a scalar lookup comparison the
/// compared prefix expression's text and whether it is negated (the sentinel then stands for
/// the whole comparison, rendered as a [`Piece::Lookup`]).
#[derive(Debug, Clone)]
pub(crate) struct ParamUse {
    pub(crate) param: UpstreamParam,
    pub(crate) lookup: Option<(String, bool)>,
}

/// The template and the upstream parameter list.
pub(crate) struct Built {
    pub(crate) template: Vec<Piece>,
    pub(crate) upstream: Vec<UpstreamParam>,
    pub(crate) max_client_param: usize,
}

/// What a stretch of the printed SQL is.
enum Mark {
    /// One of this call's sentinels.
    Sentinel(Kind),
    /// A client parameter `$n`.
    Placeholder(usize),
}

/// The sentinels and placeholders of the printed SQL, in order, with their byte spans.
///
/// Without a `$` in the text there is no placeholder (and no dollar-quoted string): the
/// sentinels are then found by substring search, which is exact because their prefix occurs
/// nowhere in the client's statement ([`Sentinels::new`]) and the printer writes them as bare
/// identifiers. Otherwise the text is tokenized.
fn marks(text: &str, sentinels: &Sentinels) -> Result<Vec<(usize, usize, Mark)>, Refusal> {
    let mut out = Vec::new();
    if !text.contains('$') {
        let prefix = sentinels.prefix.as_str();
        let mut from = 0;
        while let Some(at) = text.get(from..).and_then(|t| t.find(prefix)) {
            let start = from + at;
            let end = text
                .get(start + prefix.len()..)
                .and_then(|rest| {
                    let mut chars = rest.char_indices();
                    chars.next()?;
                    Some(
                        chars
                            .find(|(_, c)| !c.is_ascii_digit())
                            .map_or(rest.len(), |(i, _)| i),
                    )
                })
                .map(|n| start + prefix.len() + n)
                .ok_or_else(|| internal("malformed sentinel"))?;
            let word = text.get(start..end).ok_or_else(|| internal("span"))?;
            match sentinels.parse(word) {
                Some(Ok(k)) => out.push((start, end, Mark::Sentinel(k))),
                _ => return Err(internal("malformed sentinel")),
            }
            from = end;
        }
        return Ok(out);
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|_| internal("printed SQL does not tokenize"))?;
    let mut pos = Cursor::new(text);
    for t in tokens {
        let mark = match &t.token {
            Token::Word(w) if w.quote_style.is_none() => match sentinels.parse(&w.value) {
                Some(Ok(k)) => Mark::Sentinel(k),
                Some(Err(())) => return Err(internal("malformed sentinel")),
                None => continue,
            },
            Token::Placeholder(p) => {
                let n: usize = p
                    .strip_prefix('$')
                    .and_then(|d| d.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        Refusal::new(
                            super::refusal::SYNTAX_ERROR,
                            "pgseal: only $n parameters are supported in statements on protected tables",
                        )
                    })?;
                Mark::Placeholder(n)
            }
            _ => continue,
        };
        let start = pos.offset(t.span.start).ok_or_else(|| internal("span"))?;
        let end = pos.offset(t.span.end).ok_or_else(|| internal("span"))?;
        out.push((start, end, mark));
    }
    Ok(out)
}

/// Splits the printed SQL on sentinels and renumbers placeholders.
/// `param_uses[i]` is the (non-plain) upstream parameter a `p<i>` sentinel stands for.
/// Every slot, parameter use and raw fragment must appear exactly once, or the call fails.
pub(crate) fn build(
    text: &str,
    sentinels: &Sentinels,
    slot_count: usize,
    param_uses: &[ParamUse],
    raws: &[IndexPiece],
) -> Result<Built, Refusal> {
    let marks = marks(text, sentinels)?;
    let mut seen_slots = vec![0usize; slot_count];
    let mut seen_params = vec![0usize; param_uses.len()];
    let mut seen_raws = vec![0usize; raws.len()];
    let mut upstream: Vec<UpstreamParam> = Vec::new();
    let mut max_client_param = 0usize;
    let mut template: Vec<Piece> = Vec::new();
    let mut sql = String::new();
    let mut cursor = 0usize;

    let mut numbers: HashMap<UpstreamParam, usize> = HashMap::new();
    let mut number = |p: UpstreamParam, upstream: &mut Vec<UpstreamParam>| -> usize {
        if let Some(k) = numbers.get(&p) {
            return *k;
        }
        upstream.push(p.clone());
        numbers.insert(p, upstream.len());
        upstream.len()
    };

    for (start, end, mark) in marks {
        sql.push_str(text.get(cursor..start).ok_or_else(|| internal("span"))?);
        cursor = end;
        let kind = match mark {
            Mark::Sentinel(k) => k,
            Mark::Placeholder(n) => {
                max_client_param = max_client_param.max(n);
                let k = number(UpstreamParam::Plain(n), &mut upstream);
                sql.push_str(&format!("${k}"));
                continue;
            }
        };
        match kind {
            Kind::Slot(i) => {
                *seen_slots
                    .get_mut(i)
                    .ok_or_else(|| internal("unknown slot"))? += 1;
                if !sql.is_empty() {
                    template.push(Piece::Sql(std::mem::take(&mut sql)));
                }
                template.push(Piece::Slot(i));
            }
            Kind::Param(i) => {
                *seen_params
                    .get_mut(i)
                    .ok_or_else(|| internal("unknown parameter"))? += 1;
                let u = param_uses
                    .get(i)
                    .ok_or_else(|| internal("unknown parameter"))?;
                let p = &u.param;
                max_client_param = max_client_param.max(p.client_param());
                let k = number(p.clone(), &mut upstream);
                if let Some((prefix, negated)) = &u.lookup {
                    if !sql.is_empty() {
                        template.push(Piece::Sql(std::mem::take(&mut sql)));
                    }
                    template.push(Piece::Lookup {
                        prefix: prefix.clone(),
                        param: k.saturating_sub(1),
                        negated: *negated,
                    });
                    continue;
                }
                let cast = if p.type_oid() == super::plan::BYTEA_OID {
                    "bytea"
                } else {
                    "bytea[]"
                };
                sql.push_str(&format!("${k}::{cast}"));
            }
            Kind::Raw(i) => {
                *seen_raws
                    .get_mut(i)
                    .ok_or_else(|| internal("unknown fragment"))? += 1;
                let ix = raws.get(i).ok_or_else(|| internal("unknown fragment"))?;
                if !sql.is_empty() {
                    template.push(Piece::Sql(std::mem::take(&mut sql)));
                }
                template.push(Piece::Index(ix.clone()));
            }
        }
    }
    sql.push_str(text.get(cursor..).ok_or_else(|| internal("span"))?);
    if !sql.is_empty() {
        template.push(Piece::Sql(sql));
    }
    let once = |v: &[usize]| v.iter().all(|c| *c == 1);
    if !once(&seen_slots) || !once(&seen_params) || !once(&seen_raws) {
        return Err(internal("sentinel count mismatch"));
    }
    Ok(Built {
        template,
        upstream,
        max_client_param,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgseal_crypto::ColumnId;

    #[test]
    fn splits_on_sentinels_and_renumbers() {
        let s = Sentinels::new("x");
        let col = ColumnId::new("public", "t", "c").unwrap();
        let text = format!(
            "SELECT 'é\n', $2 FROM t WHERE a = {} AND b = ANY({}) AND c = $2 AND d = {}",
            s.slot(0),
            s.param(0),
            s.raw(0)
        );
        let uses = vec![ParamUse {
            param: UpstreamParam::LookupArray {
                param: 1,
                column: col.clone(),
            },
            lookup: None,
        }];
        let conflict = IndexPiece::Conflict {
            col: "c".into(),
            column: col.clone(),
        };
        let b = build(&text, &s, 1, &uses, std::slice::from_ref(&conflict)).unwrap();
        assert_eq!(
            b.template,
            vec![
                Piece::Sql("SELECT 'é\n', $1 FROM t WHERE a = ".into()),
                Piece::Slot(0),
                Piece::Sql(" AND b = ANY($2::bytea[]) AND c = $1 AND d = ".into()),
                Piece::Index(conflict),
            ]
        );
        assert_eq!(
            b.upstream,
            vec![
                UpstreamParam::Plain(2),
                UpstreamParam::LookupArray {
                    param: 1,
                    column: col
                }
            ]
        );
        assert_eq!(b.max_client_param, 2);
    }

    /// Without a `$` the sentinels are found by substring search: the same pieces as the
    /// tokenizer finds, also next to punctuation, at the end, and with look-alikes in literals.
    #[test]
    fn sentinels_without_placeholders() {
        let s = Sentinels::new("x");
        let col = ColumnId::new("public", "t", "c").unwrap();
        let conflict = IndexPiece::Conflict {
            col: "c".into(),
            column: col,
        };
        let text = format!(
            "INSERT INTO t (a) VALUES ({}) ON CONFLICT({}) WHERE x = 'pgseal_0_s1' AND y = {}",
            s.slot(0),
            s.raw(0),
            s.slot(1)
        );
        let fast = build(&text, &s, 2, &[], std::slice::from_ref(&conflict)).unwrap();
        assert_eq!(
            fast.template,
            vec![
                Piece::Sql("INSERT INTO t (a) VALUES (".into()),
                Piece::Slot(0),
                Piece::Sql(") ON CONFLICT(".into()),
                Piece::Index(conflict.clone()),
                Piece::Sql(") WHERE x = 'pgseal_0_s1' AND y = ".into()),
                Piece::Slot(1),
            ]
        );
        // The same text with a `$` in a comment goes through the tokenizer: same pieces.
        let slow_text = format!("{text} /* $ */");
        let slow = build(&slow_text, &s, 2, &[], std::slice::from_ref(&conflict)).unwrap();
        assert_eq!(&slow.template[..5], &fast.template[..5]);
        // A sentinel that is not one of this call's, or seen twice, fails.
        let twice = format!("{} {}", s.slot(0), s.slot(0));
        assert!(build(&twice, &s, 1, &[], &[]).is_err());
        let unknown = format!("{}", s.slot(3));
        assert!(build(&unknown, &s, 1, &[], &[]).is_err());
    }

    #[test]
    fn scalar_lookup_use_becomes_a_lookup_piece() {
        let s = Sentinels::new("x");
        let col = ColumnId::new("public", "t", "c").unwrap();
        let lookup = UpstreamParam::Lookup {
            param: 2,
            column: col.clone(),
        };
        let text = format!(
            "SELECT 1 FROM t WHERE {} AND b = $1 OR {}",
            s.param(0),
            s.param(1)
        );
        let uses = vec![
            ParamUse {
                param: lookup.clone(),
                lookup: Some(("SUBSTRING(c FROM 1 FOR 16)".into(), false)),
            },
            ParamUse {
                param: lookup.clone(),
                lookup: Some(("SUBSTRING(c FROM 1 FOR 16)".into(), true)),
            },
        ];
        let b = build(&text, &s, 0, &uses, &[]).unwrap();
        let piece = |negated| Piece::Lookup {
            prefix: "SUBSTRING(c FROM 1 FOR 16)".into(),
            param: 0,
            negated,
        };
        assert_eq!(
            b.template,
            vec![
                Piece::Sql("SELECT 1 FROM t WHERE ".into()),
                piece(false),
                Piece::Sql(" AND b = $2 OR ".into()),
                piece(true),
            ]
        );
        // one upstream parameter for both uses of $2
        assert_eq!(b.upstream, vec![lookup, UpstreamParam::Plain(1)]);
    }

    #[test]
    fn missing_or_duplicated_sentinel_is_an_error() {
        let s = Sentinels::new("x");
        let text = format!("SELECT {} , {}", s.slot(0), s.slot(0));
        assert!(build(&text, &s, 1, &[], &[]).is_err());
        assert!(build("SELECT 1", &s, 1, &[], &[]).is_err());
    }

    #[test]
    fn sentinel_prefix_avoids_input_text() {
        let a = Sentinels::new("");
        let b = Sentinels::new("");
        assert_ne!(a.prefix, b.prefix);
        assert!(!a.prefix.is_empty());
    }
}
