//! `[encryption]`, `[keyserver]` and `[[columns]]`: which columns are protected, and how.
//!
//! Validation turns the entries into a [`ProtectedSchema`] and names the offending entry in
//! every message (`[[columns]] #2 "public.patients.email": ...`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use pgseal_crypto::value::{LogicalType, Normalisation};
use pgseal_crypto::{ColumnId, IndexGroup};
use serde::Deserialize;

use super::{invalid, ConfigError, UserConfig};
use crate::keys::KeyserverConfig;
use crate::migrate::state::Direction;
use crate::rewrite::{IndexSpec, ProtectedColumn, ProtectedSchema};

/// `[encryption]`: where protected columns live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The database whose columns are protected; sessions to other databases pass through.
    pub database: String,
    /// A `[[users]]` name whose upstream credentials the catalog connection uses (default: the
    /// first `[[users]]` entry).
    pub catalog_user: Option<String>,
    /// `[[users]]` names trusted for migrations: their function, procedure and DO bodies may
    /// touch protected tables (a trust decision; docs/sql.md, "Function bodies").
    #[serde(default)]
    pub trusted_migration_users: Vec<String>,
    /// Largest statement text (bytes) a session to the protected database may send (default
    /// 8 MiB); longer ones are refused with 54000.
    pub max_statement_bytes: Option<usize>,
}

/// `[[columns]]`: one protected column.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// `schema.table.column` (case-sensitive PostgreSQL names, unquoted).
    pub column: String,
    /// The logical type name (`text`, `int4`, `uuid`, ...).
    #[serde(rename = "type")]
    pub ty: String,
    /// Keyserver keyring name.
    pub keyring: String,
    /// Equality (blind) index.
    #[serde(default)]
    pub index: bool,
    /// Index group shared with other columns (default: the column's own group).
    pub index_group: Option<String>,
    /// Case-insensitive equality (text types only).
    #[serde(default)]
    pub case_insensitive: bool,
    /// Ignore leading and trailing whitespace in equality (text types only).
    #[serde(default)]
    pub trim: bool,
    /// A UNIQUE blind-index expression index exists (needed for `ON CONFLICT (col)`).
    #[serde(default)]
    pub unique: bool,
    /// `"encrypt"`: the column may still be plaintext upstream and is being taken to pgseal
    /// cells by `pgseal-proxy migrate`; `"decrypt"`: it is being taken back to plaintext. The
    /// proxy then serves it as the migration's state upstream says (docs/migration.md).
    pub migration: Option<String>,
}

/// The validated encryption settings.
#[derive(Debug, Clone)]
pub struct EncryptionSettings {
    /// The protected database.
    pub database: String,
    /// The `[[users]]` name whose upstream credentials the catalog connection uses.
    pub catalog_user: String,
    /// The protected columns.
    pub schema: Arc<ProtectedSchema>,
    /// How to reach the keyserver.
    pub keyserver: KeyserverConfig,
    /// Users trusted for migrations (see [`EncryptionConfig::trusted_migration_users`]).
    pub trusted_migration_users: Vec<String>,
    /// Largest statement text a session may send.
    pub max_statement_bytes: usize,
    /// Columns configured with `migration = "encrypt"` or `"decrypt"`.
    pub migrations: BTreeMap<ColumnId, Direction>,
}

fn is_text(ty: LogicalType) -> bool {
    matches!(ty, LogicalType::Text | LogicalType::Varchar)
}

/// Validates one `[[columns]]` entry (`n` is its 1-based position, for messages).
fn column(n: usize, c: &ColumnConfig) -> Result<ProtectedColumn, ConfigError> {
    let at = format!("[[columns]] #{n} {:?}", c.column);
    let id = ColumnId::parse(&c.column).map_err(|e| {
        invalid(format!(
            "{at}: column must be schema.table.column (unquoted names): {e}"
        ))
    })?;
    let ty = LogicalType::from_name(&c.ty).ok_or_else(|| {
        let known: Vec<&str> = LogicalType::ALL.iter().map(|t| t.name()).collect();
        invalid(format!(
            "{at}: unknown type {:?} (known: {})",
            c.ty,
            known.join(" ")
        ))
    })?;
    if c.keyring.trim().is_empty() {
        return Err(invalid(format!("{at}: keyring is empty")));
    }
    if (c.case_insensitive || c.trim) && !is_text(ty) {
        return Err(invalid(format!(
            "{at}: case_insensitive/trim apply to text and varchar only, not {ty}"
        )));
    }
    if c.unique && !c.index {
        return Err(invalid(format!(
            "{at}: unique = true needs index = true (the unique index is on the blind index)"
        )));
    }
    if !c.index && (c.index_group.is_some() || c.case_insensitive || c.trim) {
        return Err(invalid(format!(
            "{at}: index_group, case_insensitive and trim need index = true"
        )));
    }
    let index = if c.index {
        let group = match &c.index_group {
            Some(g) => {
                IndexGroup::new(g).map_err(|e| invalid(format!("{at}: index_group {g:?}: {e}")))?
            }
            None => IndexGroup::of_column(&id),
        };
        Some(IndexSpec {
            group,
            norm: Normalisation {
                case_insensitive: c.case_insensitive,
                trim: c.trim,
            },
            unique: c.unique,
        })
    } else {
        None
    };
    Ok(ProtectedColumn {
        id,
        ty,
        keyring: c.keyring.clone(),
        index,
    })
}

/// Validates the columns: each entry, duplicates, and index groups (every column of a group
/// must have types PostgreSQL compares for equality, i.e. one type family such as
/// int2/int4/int8 or text/varchar, the same normalisation and the same keyring).
pub(super) fn protected_schema(columns: &[ColumnConfig]) -> Result<ProtectedSchema, ConfigError> {
    let mut seen: HashMap<ColumnId, usize> = HashMap::new();
    let mut groups: BTreeMap<String, (usize, LogicalType, Normalisation, String)> = BTreeMap::new();
    let mut out = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let n = i + 1;
        let p = column(n, c)?;
        if let Some(first) = seen.insert(p.id.clone(), n) {
            return Err(invalid(format!(
                "[[columns]] #{n} {:?}: duplicate column (also entry #{first})",
                c.column
            )));
        }
        if let Some(ix) = &p.index {
            let key = ix.group.as_str().to_owned();
            match groups.get(&key) {
                None => {
                    groups.insert(key, (n, p.ty, ix.norm, p.keyring.clone()));
                }
                Some((first, ty, norm, keyring)) => {
                    if ty.family() != p.ty.family() {
                        return Err(invalid(format!(
                            "[[columns]] #{n} {:?}: index_group {key:?} mixes type {} with {ty} (entry #{first}); columns of one group must be comparable",
                            c.column, p.ty
                        )));
                    }
                    if *norm != ix.norm {
                        return Err(invalid(format!(
                            "[[columns]] #{n} {:?}: index_group {key:?} needs the same case_insensitive/trim as entry #{first}",
                            c.column
                        )));
                    }
                    // The blind-index key is derived from the keyring's index material: columns
                    // of two keyrings never get equal tags, so a join between them would silently
                    // find nothing.
                    if *keyring != p.keyring {
                        return Err(invalid(format!(
                            "[[columns]] #{n} {:?}: index_group {key:?} needs the same keyring as entry #{first} ({keyring:?}, not {:?}); tags of two keyrings never compare equal",
                            c.column, p.keyring
                        )));
                    }
                }
            }
        }
        out.push(p);
    }
    Ok(ProtectedSchema::from_columns(out))
}

/// Validates the encryption sections; `None` when no column is configured (pure pass-through).
pub(super) fn settings(
    encryption: Option<&EncryptionConfig>,
    keyserver: Option<&KeyserverConfig>,
    columns: &[ColumnConfig],
    users: &[UserConfig],
) -> Result<Option<EncryptionSettings>, ConfigError> {
    if columns.is_empty() {
        return Ok(None);
    }
    let schema = protected_schema(columns)?;
    let enc = encryption
        .ok_or_else(|| invalid("[[columns]] are configured but [encryption] is missing"))?;
    if enc.database.is_empty() {
        return Err(invalid("encryption.database is empty"));
    }
    let catalog_user = match &enc.catalog_user {
        Some(u) => {
            if !users.iter().any(|x| &x.name == u) {
                return Err(invalid(format!(
                    "encryption.catalog_user = {u:?} is not a [[users]] name"
                )));
            }
            u.clone()
        }
        None => users
            .first()
            .map(|u| u.name.clone())
            .ok_or_else(|| invalid("encryption.catalog_user: no [[users]] to use"))?,
    };
    let ks = keyserver
        .ok_or_else(|| invalid("[[columns]] are configured but [keyserver] is missing"))?;
    if ks.url.trim().is_empty() {
        return Err(invalid("keyserver.url is empty"));
    }
    for (name, path) in [("ca", &ks.ca), ("cert", &ks.cert), ("key", &ks.key)] {
        file_exists(&format!("keyserver.{name}"), path)?;
    }
    if ks.timeout_ms == 0 {
        return Err(invalid("keyserver.timeout_ms must be at least 1"));
    }
    for u in &enc.trusted_migration_users {
        if !users.iter().any(|x| &x.name == u) {
            return Err(invalid(format!(
                "encryption.trusted_migration_users: {u:?} is not a [[users]] name"
            )));
        }
    }
    let max_statement_bytes = enc
        .max_statement_bytes
        .unwrap_or(crate::encrypt::DEFAULT_MAX_STATEMENT_BYTES);
    if max_statement_bytes < 1024 {
        return Err(invalid(
            "encryption.max_statement_bytes must be at least 1024",
        ));
    }
    let mut migrations = BTreeMap::new();
    for (i, c) in columns.iter().enumerate() {
        let Some(m) = &c.migration else { continue };
        let direction = Direction::parse(m).ok_or_else(|| {
            invalid(format!(
                "[[columns]] #{} {:?}: migration = {m:?} (known: \"encrypt\", \"decrypt\")",
                i + 1,
                c.column
            ))
        })?;
        if let Ok(id) = ColumnId::parse(&c.column) {
            migrations.insert(id, direction);
        }
    }
    Ok(Some(EncryptionSettings {
        database: enc.database.clone(),
        catalog_user,
        schema: Arc::new(schema),
        keyserver: ks.clone(),
        trusted_migration_users: enc.trusted_migration_users.clone(),
        max_statement_bytes,
        migrations,
    }))
}

fn file_exists(setting: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(invalid(format!(
            "{setting} = {:?} is not a file",
            path.display().to_string()
        ))),
        Err(e) => Err(invalid(format!(
            "{setting} = {:?}: {e}",
            path.display().to_string()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Resolved};

    struct Files {
        dir: tempfile::TempDir,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "proxy.pem", "proxy-key.pem"] {
            std::fs::write(dir.path().join(f), "-----BEGIN DUMMY-----\n").unwrap();
        }
        Files { dir }
    }

    fn toml(f: &Files, encryption: &str, columns: &str) -> String {
        let d = f.dir.path().display();
        format!(
            r#"
listen = "127.0.0.1:0"
[upstream]
host = "/tmp"
[[users]]
name = "app"
password_env = "APP_PW"
[[users]]
name = "catalog"
password_env = "APP_PW"
{encryption}
[keyserver]
url = "https://127.0.0.1:8443"
ca = "{d}/ca.pem"
cert = "{d}/proxy.pem"
key = "{d}/proxy-key.pem"
{columns}
"#
        )
    }

    const ENC: &str = "[encryption]\ndatabase = \"app\"\n";

    const EMAIL: &str = r#"
[[columns]]
column = "public.patients.email"
type = "text"
keyring = "patients"
index = true
case_insensitive = true
trim = true
unique = true
"#;

    fn resolve(text: &str) -> Result<Resolved, String> {
        Config::from_toml(text)
            .map_err(|e| e.to_string())?
            .resolve_with_env(|_| Some("pw".into()))
            .map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        match resolve(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn builds_the_protected_schema() {
        let f = files();
        let cols = format!(
            "{EMAIL}
[[columns]]
column = \"public.patients.ssn\"
type = \"varchar\"
keyring = \"patients\"
[[columns]]
column = \"billing.invoices.patient_id\"
type = \"int8\"
keyring = \"billing\"
index = true
index_group = \"patient\"
[[columns]]
column = \"public.patients.id_ref\"
type = \"int4\"
keyring = \"billing\"
index = true
index_group = \"patient\"
"
        );
        let r = resolve(&toml(&f, ENC, &cols)).unwrap();
        let e = r.encryption.unwrap();
        assert_eq!(e.database, "app");
        assert_eq!(e.catalog_user, "app", "defaults to the first user");
        assert_eq!(e.keyserver.grace_seconds, 300);
        assert_eq!(e.schema.columns().count(), 4);
        let email = e.schema.column("public", "patients", "email").unwrap();
        assert_eq!(email.ty.name(), "text");
        assert_eq!(email.keyring, "patients");
        let ix = email.index.as_ref().unwrap();
        assert!(ix.unique && ix.norm.case_insensitive && ix.norm.trim);
        assert_eq!(ix.group.as_str(), "public.patients.email");
        let ssn = e.schema.column("public", "patients", "ssn").unwrap();
        assert!(ssn.index.is_none());
        let inv = e
            .schema
            .column("billing", "invoices", "patient_id")
            .unwrap();
        assert_eq!(inv.index.as_ref().unwrap().group.as_str(), "patient");
    }

    #[test]
    fn no_columns_is_pass_through() {
        let f = files();
        let r = resolve(&toml(&f, "", "")).unwrap();
        assert!(r.encryption.is_none());
    }

    #[test]
    fn catalog_user_must_be_a_user() {
        let f = files();
        let r = resolve(&toml(
            &f,
            "[encryption]\ndatabase = \"app\"\ncatalog_user = \"catalog\"",
            EMAIL,
        ))
        .unwrap();
        assert_eq!(r.encryption.unwrap().catalog_user, "catalog");
        let e = err(&toml(
            &f,
            "[encryption]\ndatabase = \"app\"\ncatalog_user = \"nobody\"",
            EMAIL,
        ));
        assert!(
            e.contains("catalog_user = \"nobody\" is not a [[users]] name"),
            "{e}"
        );
    }

    #[test]
    fn every_error_names_the_entry() {
        let f = files();
        let col = |extra: &str| {
            format!(
                "[[columns]]\ncolumn = \"public.patients.email\"\ntype = \"text\"\nkeyring = \"patients\"\n{extra}\n"
            )
        };
        let second = |ty: &str, extra: &str| {
            format!(
                "[[columns]]\ncolumn = \"public.other.x\"\ntype = \"{ty}\"\nkeyring = \"k\"\n{extra}"
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (
                col("").replace("type = \"text\"", "type = \"texte\""),
                "#1 \"public.patients.email\": unknown type \"texte\"",
            ),
            (
                col("").replace("public.patients.email", "patients.email"),
                "#1 \"patients.email\": column must be schema.table.column",
            ),
            (
                col("").replace("public.patients.email", "public..email"),
                "column must be schema.table.column",
            ),
            (
                col("").replace("public.patients.email", "a.b.c.d"),
                "#1 \"a.b.c.d\": column must be schema.table.column",
            ),
            (format!("{}{}", col(""), col("")), "#2 \"public.patients.email\": duplicate column (also entry #1)"),
            (
                col("").replace("type = \"text\"", "type = \"int4\"") + "index = true\ncase_insensitive = true\n",
                "#1 \"public.patients.email\": case_insensitive/trim apply to text and varchar only, not int4",
            ),
            (
                col("").replace("type = \"text\"", "type = \"uuid\"") + "index = true\ntrim = true\n",
                "not uuid",
            ),
            (col("unique = true"), "#1 \"public.patients.email\": unique = true needs index = true"),
            (col("trim = true"), "need index = true"),
            (col("index_group = \"g\""), "need index = true"),
            (
                col("keyring = \"\"").replace("keyring = \"patients\"\n", ""),
                "keyring is empty",
            ),
            (
                col("index = true\nindex_group = \"g\"") + &second("int4", "index = true\nindex_group = \"g\""),
                "#2 \"public.other.x\": index_group \"g\" mixes type int4 with text (entry #1)",
            ),
            (
                col("index = true\nindex_group = \"g\"\ncase_insensitive = true")
                    + &second("varchar", "index = true\nindex_group = \"g\""),
                "#2 \"public.other.x\": index_group \"g\" needs the same case_insensitive/trim as entry #1",
            ),
            (
                col("index = true\nindex_group = \"g\"") + &second("text", "index = true\nindex_group = \"g\""),
                "#2 \"public.other.x\": index_group \"g\" needs the same keyring as entry #1 (\"patients\", not \"k\")",
            ),
            (
                col("index = true\nindex_group = \"\""),
                "#1 \"public.patients.email\": index_group \"\"",
            ),
            (col("bogus = 1"), "bogus"),
        ];
        for (cols, needle) in cases {
            let e = err(&toml(&f, ENC, &cols));
            assert!(e.contains(needle), "{needle:?} not in {e:?}\n{cols}");
        }
    }

    #[test]
    fn compatible_types_share_a_group() {
        let f = files();
        let cols = "[[columns]]\ncolumn = \"a.t.x\"\ntype = \"int4\"\nkeyring = \"k\"\nindex = true\nindex_group = \"g\"\n\
                    [[columns]]\ncolumn = \"a.u.y\"\ntype = \"int8\"\nkeyring = \"k\"\nindex = true\nindex_group = \"g\"\n";
        assert!(resolve(&toml(&f, ENC, cols)).is_ok());
    }

    #[test]
    fn sections_required_with_columns() {
        let f = files();
        let e = err(&toml(&f, "", EMAIL));
        assert!(e.contains("[encryption] is missing"), "{e}");
        let e = err(&toml(&f, "[encryption]\ndatabase = \"\"", EMAIL));
        assert!(e.contains("encryption.database is empty"), "{e}");
        let text = toml(&f, ENC, EMAIL);
        let start = text.find("[keyserver]").unwrap();
        let end = text.find("[[columns]]").unwrap();
        let no_ks = format!("{}{}", &text[..start], &text[end..]);
        let e = err(&no_ks);
        assert!(e.contains("[keyserver] is missing"), "{e}");
        let e = err(&text.replace("url = \"https://127.0.0.1:8443\"", "url = \"\""));
        assert!(e.contains("keyserver.url is empty"), "{e}");
        let e = err(&text.replace("[keyserver]", "[keyserver]\ntimeout_ms = 0"));
        assert!(e.contains("keyserver.timeout_ms"), "{e}");
        let e = err(&text.replace("[encryption]", "[encryption]\nfoo = 1"));
        assert!(e.contains("foo"), "{e}");
    }

    #[test]
    fn keyserver_files_must_exist() {
        let f = files();
        let text = toml(&f, ENC, EMAIL);
        for (file, setting) in [
            ("ca.pem", "keyserver.ca"),
            ("proxy.pem", "keyserver.cert"),
            ("proxy-key.pem", "keyserver.key"),
        ] {
            let e = err(&text.replace(file, "missing.pem"));
            assert!(e.contains(setting) && e.contains("missing.pem"), "{e}");
        }
        let d = f.dir.path().display().to_string();
        let e = err(&text.replace(&format!("{d}/ca.pem"), &d));
        assert!(
            e.contains("keyserver.ca") && e.contains("is not a file"),
            "{e}"
        );
    }
}
