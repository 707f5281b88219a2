//! Schema migrations, applied in order and tracked in `PRAGMA user_version`.

use rusqlite::Connection;

use super::StoreError;

/// Migration scripts; index + 1 is the schema version they produce.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE keyrings (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL UNIQUE,
    created_at             TEXT NOT NULL,
    active_version         INTEGER NOT NULL,
    min_decryption_version INTEGER NOT NULL,
    revision               INTEGER NOT NULL
);
CREATE TABLE key_versions (
    keyring_id   TEXT NOT NULL REFERENCES keyrings(id),
    version      INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('active', 'decrypt_only', 'disabled', 'destroyed')),
    wrapped      BLOB,
    created_at   TEXT NOT NULL,
    destroyed_at TEXT,
    PRIMARY KEY (keyring_id, version),
    CHECK ((state = 'destroyed') = (wrapped IS NULL))
);
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  INTEGER,
    revoked_at  TEXT
);
CREATE TABLE proxies (
    name       TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE proxy_grants (
    proxy      TEXT NOT NULL REFERENCES proxies(name) ON DELETE CASCADE,
    keyring_id TEXT NOT NULL REFERENCES keyrings(id),
    PRIMARY KEY (proxy, keyring_id)
);
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    ts        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    keyring   TEXT,
    version   INTEGER,
    outcome   TEXT NOT NULL,
    detail    TEXT,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revision', '0');
"#,
    // 2: the revision at which each proxy's grants last changed (kept when the proxy is deleted), so
    // the change feed tells a proxy that a grant was withdrawn.
    r#"
CREATE TABLE grant_changes (
    proxy    TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
);
"#,
    // 3: blind-index key lineages (docs/format.md §2.4). A keyring that exists already gets
    // generation 1 defined as its active data-key version's material (the tags today's proxies
    // stored with cells of that version stay valid); cells of older data-key versions carry
    // tags under their own version (`legacy_tags`) until `pgseal-proxy reencrypt` re-tags them.
    r#"
CREATE TABLE index_generations (
    keyring_id     TEXT NOT NULL REFERENCES keyrings(id),
    generation     INTEGER NOT NULL,
    -- 'active' only in this release; the other states are those of the blind-index key
    -- rotation designed in docs/format.md §2.5 (kept here so that it needs no table rebuild).
    state          TEXT NOT NULL
                   CHECK (state IN ('next', 'active', 'retiring', 'retired', 'destroyed')),
    wrapped        BLOB,
    source_version INTEGER,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (keyring_id, generation),
    CHECK ((state = 'destroyed' AND wrapped IS NULL AND source_version IS NULL)
           OR (state <> 'destroyed' AND (wrapped IS NULL) <> (source_version IS NULL)))
);
ALTER TABLE keyrings ADD COLUMN active_index_generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE keyrings ADD COLUMN legacy_tags INTEGER NOT NULL DEFAULT 0;
INSERT INTO index_generations (keyring_id, generation, state, wrapped, source_version, created_at)
    SELECT id, 1, 'active', NULL, active_version, strftime('%Y-%m-%dT%H:%M:%SZ', 'now') FROM keyrings;
UPDATE keyrings SET legacy_tags = 1 WHERE active_version > 1;
"#,
    // 4: the blind-index key rotation (docs/format.md §2.5, docs/keyserver.md). The generations
    // table is rebuilt for its new CHECK (a retired generation keeps no material: a random one's
    // blob is erased, a derived one keeps only the number of the version it was derived from),
    // with at most one active generation per keyring. `index_rotations`
    // holds the rotation in progress; confirmations (one row per keyring, generation, phase and
    // proxy) and passes carry a sequence number from `meta.index_seq`, which only grows, so
    // "started after the last confirmation" never depends on the wall clock.
    r#"
CREATE TABLE index_generations_v4 (
    keyring_id     TEXT NOT NULL REFERENCES keyrings(id),
    generation     INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('next', 'active', 'retiring', 'retired')),
    wrapped        BLOB,
    source_version INTEGER,
    created_at     TEXT NOT NULL,
    retired_at     TEXT,
    PRIMARY KEY (keyring_id, generation),
    CHECK ((state = 'retired' AND wrapped IS NULL AND retired_at IS NOT NULL)
           OR (state <> 'retired' AND (wrapped IS NULL) <> (source_version IS NULL)
               AND retired_at IS NULL))
);
INSERT INTO index_generations_v4 (keyring_id, generation, state, wrapped, source_version, created_at)
    SELECT keyring_id, generation, state, wrapped, source_version, created_at FROM index_generations;
DROP TABLE index_generations;
ALTER TABLE index_generations_v4 RENAME TO index_generations;
CREATE UNIQUE INDEX index_generations_one_active ON index_generations (keyring_id)
    WHERE state = 'active';
CREATE TABLE index_rotations (
    keyring_id      TEXT PRIMARY KEY REFERENCES keyrings(id),
    from_generation INTEGER NOT NULL,
    to_generation   INTEGER NOT NULL,
    phase           TEXT NOT NULL CHECK (phase IN ('dual', 'cutover')),
    started_at      TEXT NOT NULL
);
CREATE TABLE index_confirmations (
    keyring_id   TEXT NOT NULL REFERENCES keyrings(id),
    generation   INTEGER NOT NULL,
    phase        TEXT NOT NULL CHECK (phase IN ('dual', 'cutover')),
    proxy        TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    confirmed_at TEXT NOT NULL,
    PRIMARY KEY (keyring_id, generation, phase, proxy)
);
CREATE TABLE index_passes (
    id           TEXT PRIMARY KEY,
    keyring_id   TEXT NOT NULL REFERENCES keyrings(id),
    generation   INTEGER NOT NULL,
    phase        TEXT NOT NULL CHECK (phase IN ('dual', 'cutover')),
    proxy        TEXT NOT NULL,
    start_seq    INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    started_unix INTEGER NOT NULL,
    ended_at     TEXT,
    complete     INTEGER,
    rewritten    INTEGER,
    CHECK ((ended_at IS NULL) = (complete IS NULL))
);
CREATE INDEX index_passes_by_phase ON index_passes (keyring_id, generation, phase, start_seq);
INSERT INTO meta (key, value) VALUES ('index_seq', '0');
"#,
];

/// Current schema version.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Applies all pending migrations, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this keyserver ({SCHEMA_VERSION})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as u32 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrates_once() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        super::migrate(&mut c).unwrap();
        super::migrate(&mut c).unwrap();
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, super::SCHEMA_VERSION);
    }

    /// A keyring stored by schema 2 (before lineages) gets generation 1 from its active
    /// data-key version, and legacy tags when older versions exist.
    #[test]
    fn existing_keyrings_get_a_lineage_from_their_active_version() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        for (i, sql) in super::MIGRATIONS.iter().enumerate().take(2) {
            c.execute_batch(sql).unwrap();
            c.pragma_update(None, "user_version", i as u32 + 1).unwrap();
        }
        c.execute_batch(
            "INSERT INTO keyrings VALUES ('kr_a', 'a', 't', 1, 1, 1);
             INSERT INTO keyrings VALUES ('kr_b', 'b', 't', 3, 1, 2);",
        )
        .unwrap();
        super::migrate(&mut c).unwrap();
        let row = |id: &str| -> (i64, i64, i64) {
            c.query_row(
                "SELECT g.source_version, k.legacy_tags, k.active_index_generation \
                 FROM index_generations g JOIN keyrings k ON k.id = g.keyring_id \
                 WHERE g.keyring_id = ?1 AND g.generation = 1 AND g.wrapped IS NULL",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
        };
        assert_eq!(row("kr_a"), (1, 0, 1));
        assert_eq!(row("kr_b"), (3, 1, 1));
    }

    /// Schema 3 → 4 rebuilds the generations table: every keyring keeps its generations, their
    /// blobs byte for byte and their derivation; the rotation tables start empty.
    #[test]
    fn schema_4_keeps_generations_and_their_material() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        c.pragma_update(None, "foreign_keys", "ON").unwrap();
        for (i, sql) in super::MIGRATIONS.iter().enumerate().take(3) {
            c.execute_batch(sql).unwrap();
            c.pragma_update(None, "user_version", i as u32 + 1).unwrap();
        }
        let blob: Vec<u8> = (0u8..60).collect();
        c.execute_batch(
            "INSERT INTO keyrings (id, name, created_at, active_version, min_decryption_version, revision) \
             VALUES ('kr_new', 'new', 't', 1, 1, 3);",
        )
        .unwrap();
        c.execute(
            "INSERT INTO index_generations (keyring_id, generation, state, wrapped, source_version, created_at) \
             VALUES ('kr_new', 1, 'active', ?1, NULL, 't0')",
            [&blob],
        )
        .unwrap();
        c.execute_batch("INSERT INTO keyrings VALUES ('kr_old', 'old', 't', 2, 1, 4, 1, 1);")
            .unwrap();
        c.execute_batch(
            "INSERT INTO index_generations VALUES ('kr_old', 1, 'active', NULL, 2, 't1');",
        )
        .unwrap();
        super::migrate(&mut c).unwrap();
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 4);
        let got: (String, Option<Vec<u8>>, Option<i64>, String) = c
            .query_row(
                "SELECT state, wrapped, source_version, created_at FROM index_generations \
                 WHERE keyring_id = 'kr_new' AND generation = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(got, ("active".into(), Some(blob), None, "t0".into()));
        let got: (String, Option<Vec<u8>>, Option<i64>) = c
            .query_row(
                "SELECT state, wrapped, source_version FROM index_generations \
                 WHERE keyring_id = 'kr_old' AND generation = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(got, ("active".into(), None, Some(2)));
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM index_rotations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        // The new constraints hold: a second active generation, or a retired one that kept
        // its blob, are refused.
        assert!(c
            .execute_batch(
                "INSERT INTO index_generations VALUES ('kr_old', 2, 'active', NULL, 1, 't', NULL);"
            )
            .is_err());
        assert!(c
            .execute_batch(
                "INSERT INTO index_generations VALUES ('kr_old', 2, 'retired', x'00', NULL, 't', 't');"
            )
            .is_err());
        assert!(c
            .execute_batch(
                "INSERT INTO index_generations VALUES ('kr_old', 2, 'next', x'00', NULL, 't', NULL);"
            )
            .is_ok());
    }
}
