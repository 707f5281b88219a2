//! Property tests of the encryption interceptor: random interleavings of client and server
//! messages — well-formed ones from a vocabulary of statements and answers, truncated ones and
//! garbage — never make a session panic, and never put the plaintext of a protected column
//! upstream. Every literal written to a protected column in the statement pool carries the
//! marker `LEAKME`, and every such statement names its table schema-qualified (so no
//! search_path change can legitimately make it a plain table's statement); the marker must not
//! appear in anything sent upstream, whatever the order, the answers or the errors.

use proptest::prelude::*;

use super::*;

const MARKER: &[u8] = b"LEAKME";

/// Statements: protected-column writes and lookups with marked literals, refusals, parameter
/// statements, transaction and session control, plain statements and garbage.
const SQL: &[&str] = &[
    "INSERT INTO public.patients (id, email, notes) VALUES (1, 'LEAKME-a@x.org', 'LEAKME-note')",
    "SELECT id, email FROM public.patients WHERE email = 'LEAKME-b@x.org'",
    "UPDATE public.patients SET notes = 'LEAKME-c' WHERE email = 'LEAKME-d@x.org'",
    "SELECT email FROM public.patients WHERE email LIKE 'LEAKME-e%'",
    "DELETE FROM public.patients WHERE email IN ('LEAKME-f@x.org', 'LEAKME-g@x.org')",
    "INSERT INTO public.patients (id, email) VALUES ($1, $2)",
    "SELECT id, email, ssn, notes FROM public.patients WHERE email = $1",
    "SELECT * FROM patients",
    "SELECT data FROM plain WHERE id = $1",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SET search_path TO other, public",
    "RESET ALL",
    "DISCARD ALL",
    "SELECT 1; INSERT INTO public.patients (email) VALUES ('LEAKME-h@x.org')",
    "INSERT INTO public.patients (email) SELECT 'LEAKME-i@x.org'",
    "COPY public.patients FROM STDIN",
    "CREATE TABLE public.t2 (email text)",
    "DECLARE c CURSOR WITH HOLD FOR SELECT email FROM public.patients",
    "FETCH 1 FROM c",
    "SELEC garbage FROM public.patients WHERE 'LEAKME-j'",
    "",
    "SELECT * FROM public.patients WHERE ssn = 123 OR email = 'LEAKME-k@x.org'",
    "INSERT INTO public.patients (id, email) VALUES (2, 'LEAKME-l@x.org') \
     ON CONFLICT (email) DO UPDATE SET notes = 'LEAKME-m'",
    "SET LOCAL search_path TO other",
    "SAVEPOINT a",
    "ROLLBACK TO SAVEPOINT a",
    "WITH x AS (SELECT 'LEAKME-n@x.org' AS e) INSERT INTO public.patients (email) SELECT e FROM x",
    "UPDATE public.patients SET email = $1, notes = 'LEAKME-o' WHERE ssn = $2",
    "SELECT id FROM public.patients WHERE email = ANY($1)",
    "SELECT f(email) FROM public.patients WHERE notes = 'LEAKME-p'",
    "INSERT INTO public.typed (c_text, c_int8) VALUES ('LEAKME-q', 5)",
    "/* a comment */ SET search_path TO other",
    "COMMIT; INSERT INTO public.patients (email) VALUES ('LEAKME-r@x.org')",
    "DO $$ BEGIN PERFORM 1; END $$",
    "SELECT set_config('search_path', 'other', false)",
    "BEGIN; SET LOCAL search_path TO other",
    "INSERT INTO patients (id, email) VALUES (3, 'unqualified@x.org')",
];

const NAMES: &[&str] = &["", "s1", "s2"];
const PORTALS: &[&str] = &["", "p1"];
const OIDS: &[u32] = &[0, 25, 20, 17, 23, 1009];
const TAGS: &[&str] = &[
    "SELECT 1",
    "INSERT 0 1",
    "UPDATE 1",
    "SET",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "CREATE TABLE",
    "DISCARD ALL",
    "RESET",
    "FETCH 1",
    "COPY 1",
];
const CODES: &[&str] = &["42601", "26000", "25P02", "57014", "0A000"];

/// One step: who sends, which kind of message, four choices and a truncation.
type Step = (bool, u8, u16, u16, u16, u16, u8);

fn pick<T: Copy>(items: &[T], i: u16) -> T {
    items[usize::from(i) % items.len()]
}

fn bind_value(i: u16, h: &Harness) -> Option<Vec<u8>> {
    match i % 9 {
        0 => None,
        1 => Some(b"1".to_vec()),
        2 => Some(b"42".to_vec()),
        3 => Some(b"a@x.org".to_vec()),
        4 => Some(vec![0, 0, 0, 0, 0, 0, 0, 7]),
        5 => Some(b"not a number".to_vec()),
        6 => Some(Vec::new()),
        7 => Some(b"{a@x.org,b@y.org}".to_vec()),
        _ => Some(h.seal("patients", "email", "sealed@x.org")),
    }
}

fn frontend(h: &Harness, kind: u8, a: u16, b: u16, c: u16, d: u16) -> BytesMut {
    match kind % 10 {
        0 => query(pick(SQL, a)),
        1 => {
            let oids: Vec<u32> = (0..(c % 3)).map(|i| pick(OIDS, d >> (i * 3))).collect();
            parse(pick(NAMES, b), pick(SQL, a), &oids)
        }
        2 => {
            let n = usize::from(d % 3);
            let values: Vec<Option<Vec<u8>>> =
                (0..n).map(|i| bind_value(a >> (i * 4), h)).collect();
            let refs: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            let formats: Vec<i16> = match c % 4 {
                0 => vec![],
                1 => vec![1],
                2 => (0..n).map(|i| ((c >> (i + 2)) & 1) as i16).collect(),
                _ => vec![0, 1, 0, 1, 2],
            };
            let results: Vec<i16> = match c >> 8 & 3 {
                0 => vec![],
                1 => vec![1],
                2 => vec![0, 1],
                _ => vec![7],
            };
            bind(
                pick(PORTALS, b),
                pick(NAMES, b >> 2),
                &formats,
                &refs,
                &results,
            )
        }
        3 => {
            if b % 2 == 0 {
                describe(b'S', pick(NAMES, a))
            } else {
                describe(b'P', pick(PORTALS, a))
            }
        }
        4 => execute(pick(PORTALS, a), i32::from(b % 3)),
        5 => {
            let mut m = BytesMut::new();
            let (kind, name) = if b % 2 == 0 {
                (b'S', pick(NAMES, a))
            } else {
                (b'P', pick(PORTALS, a))
            };
            put_message(&mut m, b'C', |m| {
                m.put_u8(kind);
                put_cstr(m, name);
            });
            m
        }
        6 => simple(b'S'),
        7 => simple(b'H'),
        8 => match a % 3 {
            0 => {
                let mut m = BytesMut::new();
                put_message(&mut m, b'd', |m| {
                    m.put_slice(b"1\tcopy-row\n");
                });
                m
            }
            1 => simple(b'c'),
            _ => {
                let mut m = BytesMut::new();
                put_message(&mut m, b'f', |m| put_cstr(m, "stop"));
                m
            }
        },
        _ => garbage(pick(b"PBDECSHQdcfF", a), b, c),
    }
}

fn garbage(tag: u8, b: u16, c: u16) -> BytesMut {
    let len = usize::from(b % 24);
    let body: Vec<u8> = (0..len).map(|i| (c as usize * 31 + i * 7) as u8).collect();
    let mut m = BytesMut::new();
    put_message(&mut m, tag, |m| m.put_slice(&body));
    m
}

fn backend(h: &Harness, kind: u8, a: u16, b: u16, c: u16, d: u16) -> BytesMut {
    let lookalike: Vec<u8> = [&[1u8, 0, 0, 0, 1][..], &[0x5a; 40][..]].concat();
    match kind % 16 {
        0 => simple(b'1'),
        1 => simple(b'2'),
        2 => simple(b'3'),
        3 => simple(b'n'),
        4 => simple(b's'),
        5 => simple(b'I'),
        6 => {
            let oids: Vec<u32> = (0..(a % 3)).map(|i| pick(OIDS, b >> (i * 3))).collect();
            parameter_description(&oids)
        }
        7 => {
            let all = [
                field("id", PATIENTS, 1, 23, (c & 1) as i16),
                field("email", PATIENTS, 2, 17, (c >> 1 & 1) as i16),
                field("notes", PATIENTS, 4, 17, (c >> 2 & 1) as i16),
                field("data", 99999, 1, 17, 0),
                field("f", 0, 0, 17, (c >> 3 & 1) as i16),
                field("t", 0, 0, 25, 0),
            ];
            let n = usize::from(a % 4);
            let fields: Vec<Field> = (0..n)
                .map(|i| all[usize::from(b >> (i * 3)) % 6].clone())
                .collect();
            row_description(&fields)
        }
        8 => {
            let email = h.seal("patients", "email", "row@x.org");
            let notes = h.seal("patients", "notes", "row note");
            let pool: [Option<Vec<u8>>; 8] = [
                Some(hex_text(&email)),
                Some(email.clone()),
                Some(hex_text(&notes)),
                Some(hex_text(&lookalike)),
                Some(b"garbage".to_vec()),
                Some(b"1".to_vec()),
                None,
                Some(vec![0, 0, 0, 1]),
            ];
            let n = usize::from(a % 4);
            let values: Vec<Option<Vec<u8>>> = (0..n)
                .map(|i| pool[usize::from(b >> (i * 3)) % pool.len()].clone())
                .collect();
            let refs: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            data_row(&refs)
        }
        9 => complete(pick(TAGS, a)),
        10 => error(pick(CODES, a)),
        11 => ready(pick(b"ITE", a)),
        12 => {
            let mut m = BytesMut::new();
            let (name, value) = pick(
                &[
                    ("search_path", "other, public"),
                    ("DateStyle", "ISO, MDY"),
                    ("TimeZone", "Europe/Berlin"),
                    ("TimeZone", "Not/AZone"),
                ],
                a,
            );
            put_message(&mut m, b'S', |m| {
                put_cstr(m, name);
                put_cstr(m, value);
            });
            m
        }
        13 => {
            let mut m = BytesMut::new();
            put_message(&mut m, b'N', |m| {
                m.put_u8(b'S');
                put_cstr(m, "NOTICE");
                m.put_u8(b'C');
                put_cstr(m, "01000");
                m.put_u8(b'M');
                put_cstr(m, "notice");
                m.put_u8(0);
            });
            m
        }
        14 => match a % 4 {
            0 => copy_out_response(b % 2 == 1, 2),
            1 => {
                let mut m = BytesMut::new();
                put_message(&mut m, b'G', |m| {
                    m.put_u8(0);
                    m.put_i16(0);
                });
                m
            }
            2 => {
                let email = h.seal("patients", "email", "copy@x.org");
                let mut row = b"1\t\\".to_vec();
                row.extend_from_slice(&hex_text(&email));
                copy_data(&row)
            }
            _ => simple(b'c'),
        },
        _ => garbage(pick(b"TDtCEZS123nsIHGdc", a), b, c ^ d),
    }
}

/// Cuts a message's body to a prefix (keeping the framing consistent), as a peer sending a
/// malformed message would.
fn truncate(msg: BytesMut, cut: u8) -> BytesMut {
    if cut % 4 != 0 || msg.len() <= 5 {
        return msg;
    }
    let body_len = (msg.len() - 5) * usize::from(cut) / 256;
    let mut m = BytesMut::new();
    put_message(&mut m, msg[0], |m| m.put_slice(&msg[5..5 + body_len]));
    m
}

fn step() -> impl Strategy<Value = Step> {
    (
        any::<bool>(),
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        any::<u16>(),
        any::<u16>(),
        any::<u8>(),
    )
}

proptest! {
    // PGSEAL_FUZZ_CASES=100000 for a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PGSEAL_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_panic_and_no_marked_plaintext_upstream(steps in proptest::collection::vec(step(), 1..48)) {
        let mut h = harness();
        let mut up = BytesMut::new();
        let mut cl = BytesMut::new();
        for (from_client, kind, a, b, c, d, cut) in steps {
            let msg = if from_client {
                frontend(&h, kind, a, b, c, d)
            } else {
                backend(&h, kind, a, b, c, d)
            };
            let msg = truncate(msg, cut);
            if h.feed(&msg, from_client, &mut up, &mut cl).is_err() {
                break;
            }
            prop_assert!(
                !contains(&up, MARKER),
                "marked plaintext went upstream: {:?}",
                String::from_utf8_lossy(&up)
            );
        }
    }
}
