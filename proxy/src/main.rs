//! `pgseal-proxy serve|check|schema --config FILE`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pgseal_keyserver::logging;
use pgseal_keyserver::model::{IndexPhase, IndexRotation};
use pgseal_proxy::catalog::load::load_snapshot;
use pgseal_proxy::catalog::verify::{self, Severity};
use pgseal_proxy::catalog::{
    dependents, migrations, CatalogConnector, CatalogError, UpstreamCatalog,
};
use pgseal_proxy::config::{EncryptionSettings, Resolved};
use pgseal_proxy::encrypt::EncryptionFactory;
use pgseal_proxy::keys::{KeySource, KeyserverKeys};
use pgseal_proxy::reencrypt::rotation_pass;
use pgseal_proxy::rewrite::schema::rotation_ddl;
use pgseal_proxy::rewrite::ProtectedSchema;
use pgseal_proxy::session::InterceptorFactory;
use pgseal_proxy::upstream::simple_query::SimpleClient;
use pgseal_proxy::{Config, PassThrough, Server};

const USAGE: &str = "usage: pgseal-proxy <serve|check|schema|reencrypt|migrate> --config FILE\n\
\n\
  serve   Run the proxy. SIGTERM: stop accepting, let in-flight queries finish for\n\
          [shutdown] grace_seconds, then close.\n\
  check   Validate the configuration, the secrets and files it names, the TLS material and\n\
          the listen addresses, then exit. With [[columns]] it also fetches the keys from the\n\
          keyserver as `serve` does (mTLS with the proxy certificate, the grant of every\n\
          keyring, an active version for writes), connects to the upstream as\n\
          encryption.catalog_user and checks every protected column, printing one line per\n\
          problem (\"error: keyserver URL: ...\", \"error: schema.table.column: ...\" or\n\
          \"warning: ...\"):\n\
            error    the keyserver cannot be reached, refuses the certificate, or a keyring\n\
                     is missing, not granted or has no active version;\n\
            error    the table or the column does not exist, or is not a table;\n\
            error    the column is not bytea (the line gives the DDL fix; see `schema`);\n\
            error    unique = true but no UNIQUE index on (substring(col from 1 for 16))\n\
                     (ON CONFLICT (col) would fail and duplicates would not be refused);\n\
            error    a CHECK constraint named pgseal_cell_<column> that is not the stored-cell\n\
                     check of the column as configured (it may refuse the proxy's writes);\n\
            error    during a blind-index key rotation: a column of the keyring not prepared\n\
                     for two-tag cells (`schema --index-rotation` prints the DDL);\n\
            warning  index = true but no index on (substring(col from 1 for 16))\n\
                     (equality lookups work but scan the table);\n\
            warning  no stored-cell CHECK constraint, or one still NOT VALID (a value that is\n\
                     not a pgseal cell, e.g. plaintext written past the proxy, would be stored).\n\
          Exit status 0: no errors (warnings allowed); 1: any error.\n\
  schema  Print the DDL that converts the configured columns to bytea and creates their\n\
          blind-index expression indexes and stored-cell CHECK constraints (NULL, or a pgseal\n\
          cell: blind index if any, format version 1, minimum length; see docs/format.md).\n\
          When the upstream is reachable, only what is still missing (comments say why each\n\
          column is or is not included); otherwise the DDL for every configured column.\n\
          Converting a column discards its existing values (USING NULL): for columns that\n\
          hold data use `migrate` instead.\n\
          --index-rotation [--keyring NAME]…: instead, the DDL to run before a blind-index key\n\
          rotation (`pgseal-keyserver keyring rotate-index`): the stored-cell constraints that\n\
          also accept two-tag cells, and a second UNIQUE index (pgseal_next_*) per unique\n\
          column. --index-rotation-done: the DDL after `rotate-index --finish` (single-cell\n\
          constraints again, second indexes dropped). Printed, not run.\n\
  reencrypt  After a key rotation: rewrite every stored cell of the configured columns that\n\
          is not under its keyring's active version (batches of 500 rows, one transaction\n\
          each; a row changed concurrently is left alone). Connects as\n\
          encryption.catalog_user, which then needs UPDATE on the protected tables. Prints one\n\
          line per column; exit status 1 if a cell could not be opened. Run it, then disable\n\
          and destroy the old versions on the keyserver. During a blind-index key rotation it\n\
          is also the re-index pass (before the cut-over: every cell gets both tags) and the\n\
          compaction pass (after it: every cell one tag of the new generation), reported to\n\
          the keyserver, which needs a complete pass before `--cutover` and `--finish`.\n\
  migrate  Online: take the columns configured with migration = \"encrypt\" from plaintext\n\
          upstream to pgseal cells (\"decrypt\": back to plaintext) while applications keep\n\
          working through the proxy (docs/migration.md). Phases prepare, backfill, verify,\n\
          cut-over, cleanup; state upstream in pgseal.migrations; run it again to resume.\n\
          Connects as encryption.catalog_user, which must own the tables.\n\
            --column SCHEMA.TABLE.COLUMN   only this column (repeatable)\n\
            --batch N          rows per batch, one transaction each (default 1000)\n\
            --rate N           rows per second at most (default 5000; 0: unthrottled)\n\
            --dry-run          print the plan and the DDL, change nothing\n\
            --stop-after PHASE stop once every column reached backfill|verified|cutover\n\
            --abort            undo migrations that have not been cut over\n\
          Ctrl-C stops after the current batch. Exit status 0: done (or stopped as asked);\n\
          1: refused or failed; 130: interrupted.\n\
\n\
Options: --config FILE (or -c FILE, --config=FILE); --help; --version.\n\
Logging: PGSEAL_LOG (or RUST_LOG), e.g. PGSEAL_LOG=debug; logs go to stderr. The level applies\n\
to pgseal's own targets (pgseal_*); every other crate is logged at warn at most.";

/// Options of `schema` beyond `--config`.
#[derive(Default)]
struct SchemaOptions {
    /// `--index-rotation` (prepare) or `--index-rotation-done` (after `--finish`).
    rotation: Option<RotationDdl>,
    /// `--keyring NAME` (repeatable): only these keyrings' columns.
    keyrings: Vec<String>,
    /// `migrate`'s options.
    migrate: pgseal_proxy::migrate::Options,
}

#[derive(Clone, Copy)]
enum RotationDdl {
    Prepare,
    Done,
}

fn parse_args() -> Result<(String, PathBuf, SchemaOptions)> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    if cmd == "--version" || cmd == "-V" {
        println!("pgseal-proxy {}", env!("CARGO_PKG_VERSION"));
        std::process::exit(0);
    }
    if cmd.is_empty() || cmd == "--help" || cmd == "-h" {
        println!("{USAGE}");
        std::process::exit(if cmd.is_empty() { 2 } else { 0 });
    }
    let mut config = None;
    let mut options = SchemaOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => config = args.next().map(PathBuf::from),
            "--index-rotation" if cmd == "schema" => options.rotation = Some(RotationDdl::Prepare),
            "--index-rotation-done" if cmd == "schema" => {
                options.rotation = Some(RotationDdl::Done);
            }
            "--keyring" if cmd == "schema" => match args.next() {
                Some(k) => options.keyrings.push(k),
                None => bail!("--keyring needs a keyring name\n{USAGE}"),
            },
            "--column" if cmd == "migrate" => match args.next() {
                Some(c) => options.migrate.columns.push(c),
                None => bail!("--column needs SCHEMA.TABLE.COLUMN\n{USAGE}"),
            },
            "--batch" if cmd == "migrate" => {
                options.migrate.batch = number(args.next(), "--batch")?.max(1) as usize;
            }
            "--rate" if cmd == "migrate" => {
                let n = number(args.next(), "--rate")?;
                options.migrate.rate = (n > 0).then_some(n);
            }
            "--dry-run" if cmd == "migrate" => options.migrate.dry_run = true,
            "--abort" if cmd == "migrate" => options.migrate.abort = true,
            "--stop-after" if cmd == "migrate" => {
                use pgseal_proxy::migrate::state::Phase;
                let p = args.next().unwrap_or_default();
                options.migrate.stop_after = match Phase::parse(&p) {
                    Some(ph @ (Phase::Backfill | Phase::Verified | Phase::Cutover)) => Some(ph),
                    _ => bail!(
                        "--stop-after takes backfill, verified or cutover, not {p:?}\n{USAGE}"
                    ),
                };
            }
            s => match s.strip_prefix("--config=") {
                Some(p) => config = Some(PathBuf::from(p)),
                None => bail!("unknown argument {s:?}\n{USAGE}"),
            },
        }
    }
    let config = config.context(format!("--config FILE is required\n{USAGE}"))?;
    if !options.keyrings.is_empty() && options.rotation.is_none() {
        bail!("--keyring goes with --index-rotation or --index-rotation-done\n{USAGE}");
    }
    Ok((cmd, config, options))
}

/// A non-negative number argument.
fn number(arg: Option<String>, name: &str) -> Result<u64> {
    arg.as_deref()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{name} needs a number\n{USAGE}"))
}

fn current_thread() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")
}

/// `check` with `[[columns]]`: every protected column against the upstream catalog; returns
/// the number of errors.
fn check_columns(connector: &CatalogConnector, settings: &EncryptionSettings) -> Result<usize> {
    let (states, notes, migrations) = current_thread()?.block_on(async {
        let mut client = connector.connect().await?;
        let states = verify::inspect(&mut client, &settings.schema).await;
        let notes = dependent_notes(&mut client, &settings.schema).await;
        let migrations = migration_report(&mut client, settings).await;
        client.close().await;
        states.map(|s| (s, notes, migrations))
    })?;
    let migrations = migrations?;
    for n in &migrations.notes {
        println!("{n}");
    }
    for e in &migrations.errors {
        println!("{e}");
    }
    // Columns served as plaintext during a migration are not expected to be bytea yet.
    let findings: Vec<_> = verify::findings(&settings.schema, &states)
        .into_iter()
        .filter(|f| !migrations.plain.contains(&f.column))
        .collect();
    let migration_errors = migrations.errors.len();
    for f in &findings {
        println!("{f}");
    }
    let mut errors = migration_errors
        + findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
    match notes {
        Ok(notes) => {
            for n in &notes {
                println!("{n}");
            }
            errors += notes
                .iter()
                .filter(|n| n.level == dependents::Level::Error)
                .count();
        }
        Err(e) => println!("warning: partitions, views and functions not inspected: {e}"),
    }
    if errors > 0 {
        println!(
            "hint: `pgseal-proxy schema --config FILE` prints the DDL still missing for every column"
        );
    }
    Ok(errors)
}

/// What `check` says of online column migrations (docs/migration.md).
async fn migration_report(
    client: &mut SimpleClient,
    settings: &EncryptionSettings,
) -> Result<migrations::CheckReport, CatalogError> {
    let exists = client
        .query("SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgseal' AND c.relname = 'migrations'")
        .await
        .map_err(|e| CatalogError(e.to_string()))?
        .first()
        .is_some_and(|r| !r.is_empty());
    let observed = if exists {
        let rows = client
            .query(&migrations::query_sql())
            .await
            .map_err(|e| CatalogError(e.to_string()))?;
        rows.first()
            .map(migrations::observed_from)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let cells = migrations::cell_form(client, &settings.migrations).await?;
    let snapshot = load_snapshot(client, &settings.schema, 1).await?;
    Ok(migrations::check_report(
        &settings.schema,
        &settings.migrations,
        &observed,
        &cells,
        |id| snapshot.oid_of(id.schema(), id.table()),
    ))
}

/// Partitions and children of the protected tables, views over them and functions naming them
/// (`check` prints them; none is an error).
async fn dependent_notes(
    client: &mut SimpleClient,
    schema: &ProtectedSchema,
) -> Result<Vec<dependents::Note>, CatalogError> {
    let snapshot = load_snapshot(client, schema, 1).await?;
    let mut notes = dependents::relation_notes(&snapshot);
    notes.extend(dependents::function_notes(client, &snapshot).await?);
    Ok(notes)
}

/// `check` with `[[columns]]`: the keyserver as `serve` would use it (mTLS handshake with the
/// proxy's certificate, the grant of every keyring the columns use, the key material of every
/// usable version) and an active version for every column (writes need one). Prints one line
/// per problem; returns the number of errors.
fn check_keys(settings: &EncryptionSettings) -> (usize, Vec<(String, IndexRotation)>) {
    let keys = match KeyserverKeys::start(&settings.keyserver, &settings.schema) {
        Ok(k) => k,
        Err(e) => {
            println!("error: keyserver {}: {e}", settings.keyserver.url);
            return (1, Vec::new());
        }
    };
    let mut errors = 0;
    for col in settings.schema.columns() {
        match keys.column(&col.id) {
            Ok(c) if c.active_version().is_some() => {}
            Ok(_) => {
                println!(
                    "error: {}: keyring {:?} has no active version (writes would fail)",
                    col.id, col.keyring
                );
                errors += 1;
            }
            Err(e) => {
                println!("error: {}: {e}", col.id);
                errors += 1;
            }
        }
    }
    (errors, keys.rotations())
}

/// `check` during blind-index key rotations: the database must be ready for dual cells (the
/// rotation variant of the stored-cell constraints, the second UNIQUE indexes). Returns the
/// number of errors.
fn check_rotations(
    connector: &CatalogConnector,
    settings: &EncryptionSettings,
    rotations: &[(String, IndexRotation)],
) -> Result<usize> {
    if rotations.is_empty() {
        return Ok(0);
    }
    current_thread()?.block_on(async {
        let mut client = connector.connect().await?;
        let mut errors = 0;
        for (keyring, r) in rotations {
            println!(
                "note: keyring {keyring}: blind-index key rotation {} → {} in phase {} (see `pgseal-keyserver keyring rotate-index {keyring} --status`)",
                r.from,
                r.to,
                r.phase.as_str()
            );
            if let Err(e) = rotation_pass::check_prepared(&mut client, &settings.schema, keyring).await {
                println!("error: {e}");
                errors += 1;
            }
        }
        client.close().await;
        anyhow::Ok(errors)
    })
}

fn check(path: &Path, resolved: Resolved) -> Result<()> {
    let encryption = resolved.encryption.clone();
    let connector = match &encryption {
        Some(s) => Some(CatalogConnector::new(&resolved, s)?),
        None => None,
    };
    // Load the TLS material and bind (on free ports), which is where most mistakes are.
    let mut probe = resolved;
    probe.listen.set_port(0);
    if let Some(m) = probe.metrics_listen.as_mut() {
        m.set_port(0);
    }
    Server::bind_sync(probe, Arc::new(PassThrough)).context("configuration does not load")?;
    let (Some(settings), Some(connector)) = (&encryption, &connector) else {
        println!("{}: configuration OK", path.display());
        return Ok(());
    };
    let (key_errors, rotations) = check_keys(settings);
    let column_errors = check_columns(connector, settings).with_context(|| {
        if key_errors > 0 {
            format!("{key_errors} keyserver problem(s) (see above)")
        } else {
            "keyserver OK".to_owned()
        }
    })?;
    let rotation_errors = check_rotations(connector, settings, &rotations)?;
    let errors = key_errors + column_errors + rotation_errors;
    if errors > 0 {
        bail!(
            "{}: {errors} problem(s) with the keyserver or the protected columns (see above)",
            path.display()
        );
    }
    let keyrings: std::collections::BTreeSet<&str> = settings
        .schema
        .columns()
        .map(|c| c.keyring.as_str())
        .collect();
    println!(
        "{}: configuration OK ({} protected column(s) checked in database {:?}; keys of {} keyring(s) fetched from {})",
        path.display(),
        settings.schema.columns().count(),
        settings.database,
        keyrings.len(),
        settings.keyserver.url
    );
    Ok(())
}

fn schema(resolved: &Resolved, options: &SchemaOptions) -> Result<()> {
    let Some(settings) = &resolved.encryption else {
        bail!("no [[columns]] configured: nothing to convert");
    };
    if let Some(which) = options.rotation {
        for k in &options.keyrings {
            if !settings.schema.columns().any(|c| &c.keyring == k) {
                bail!("no configured column uses keyring {k:?}");
            }
        }
        let ddl = match which {
            RotationDdl::Prepare => rotation_ddl::prepare_ddl(&settings.schema, &options.keyrings),
            RotationDdl::Done => rotation_ddl::finish_ddl(&settings.schema, &options.keyrings),
        };
        print!("{ddl}");
        return Ok(());
    }
    let connector = CatalogConnector::new(resolved, settings)?;
    let inspected = current_thread()?.block_on(async {
        let mut client = connector.connect().await?;
        let states = verify::inspect(&mut client, &settings.schema).await;
        client.close().await;
        states
    });
    match inspected {
        Ok(states) => print!("{}", verify::pending_ddl(&settings.schema, &states)),
        Err(e) => {
            println!("-- upstream not reachable ({e});");
            println!("-- DDL for every configured column, whatever it is now:");
            print!("{}", pgseal_proxy::rewrite::schema_ddl(&settings.schema));
        }
    }
    Ok(())
}

/// `reencrypt`: every stored cell not under its keyring's active version is rewritten under it.
fn reencrypt(resolved: &Resolved) -> Result<()> {
    let Some(settings) = &resolved.encryption else {
        bail!("no [[columns]] configured: nothing to re-encrypt");
    };
    // Columns an online migration is taking to cells (or back) are left to `migrate`: their
    // values may still be plaintext upstream.
    let mut settings = settings.clone();
    if !settings.migrations.is_empty() {
        let mut schema = (*settings.schema).clone();
        for (id, d) in &settings.migrations {
            println!(
                "{id}: skipped: configured with migration = \"{d}\" (remove the setting once `pgseal-proxy migrate` is done)"
            );
            schema.remove_column(id);
        }
        settings.schema = Arc::new(schema);
    }
    let settings = &settings;
    let keys = KeyserverKeys::start(&settings.keyserver, &settings.schema)
        .with_context(|| format!("keyserver {}", settings.keyserver.url))?;
    let rotations: Vec<_> = keys
        .rotations()
        .into_iter()
        .filter(|(k, _)| {
            settings
                .schema
                .columns()
                .any(|c| &c.keyring == k && c.index.is_some())
        })
        .collect();
    let keyserver = if rotations.is_empty() {
        None
    } else {
        Some(KeyserverKeys::client(&settings.keyserver)?)
    };
    let connector = CatalogConnector::new(resolved, settings)?;
    let (reports, passes) = current_thread()?.block_on(async {
        let mut client = connector.connect().await?;
        let r = reencrypt_run(
            &mut client,
            settings,
            keys.as_ref(),
            &rotations,
            keyserver.as_ref(),
        )
        .await;
        client.close().await;
        anyhow::Ok(r?)
    })?;
    let mut unreadable = 0;
    for r in &reports {
        println!("{r}");
        unreadable += r.unreadable;
    }
    for p in &passes {
        println!("{p}");
    }
    if unreadable > 0 {
        bail!("{unreadable} cell(s) could not be opened and still use old key versions");
    }
    if let Some(p) = passes.iter().find(|p| !p.complete) {
        bail!("{p}");
    }
    Ok(())
}

/// `migrate`: the online migrations of the columns configured with `migration`.
fn migrate(resolved: &Resolved, options: &SchemaOptions) -> Result<()> {
    use pgseal_proxy::migrate::{progress, Migrator, Outcome};
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(settings) = &resolved.encryption else {
        bail!("no [[columns]] configured: nothing to migrate");
    };
    let keys = KeyserverKeys::start(&settings.keyserver, &settings.schema)
        .with_context(|| format!("keyserver {}", settings.keyserver.url))?;
    let connector = CatalogConnector::new(resolved, settings)?;
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = current_thread()?.block_on(async {
        let flag = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("migrate: Ctrl-C: stopping after the current batch (run migrate again to resume)");
                flag.store(true, Ordering::Relaxed);
            }
        });
        let mut client = connector.connect().await?;
        let r = Migrator::new(
            &mut client,
            keys.as_ref(),
            options.migrate.clone(),
            progress::for_terminal_or_lines(),
            &stop,
        )
        .run(&settings.schema, &settings.migrations)
        .await;
        client.close().await;
        anyhow::Ok(r?)
    })?;
    match outcome {
        Outcome::Plan(text) => print!("{text}"),
        Outcome::Aborted(cols) if cols.is_empty() => println!("migrate: nothing to abort"),
        Outcome::Aborted(cols) => println!("migrate: aborted {}", cols.join(", ")),
        Outcome::Finished(phases) => {
            for (c, p) in phases {
                println!("migrate: {c}: phase {p}");
            }
        }
        Outcome::Interrupted(phases) => {
            for (c, p) in phases {
                println!("migrate: {c}: phase {p} (interrupted)");
            }
            std::process::exit(130);
        }
    }
    Ok(())
}

/// How a blind-index rotation pass of a `reencrypt` run ended.
struct PassOutcome {
    pass: rotation_pass::Pass,
    complete: bool,
    left: u64,
    rewritten: u64,
}

impl std::fmt::Display for PassOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = rotation_pass::what(self.pass.rotation.phase);
        if self.complete {
            write!(
                f,
                "keyring {}: {what} pass for blind-index generation {} complete ({} cell(s) rewritten); reported to the keyserver",
                self.pass.keyring, self.pass.rotation.to, self.rewritten
            )
        } else {
            write!(
                f,
                "keyring {}: {what} pass for blind-index generation {} incomplete: {} cell(s) still in the previous form or unreadable; reported, run reencrypt again",
                self.pass.keyring, self.pass.rotation.to, self.left
            )
        }
    }
}

/// `reencrypt` with the passes of the blind-index rotations in progress.
async fn reencrypt_run(
    client: &mut SimpleClient,
    settings: &EncryptionSettings,
    keys: &dyn KeySource,
    rotations: &[(String, IndexRotation)],
    keyserver: Option<&pgseal_keyserver::client::Client>,
) -> Result<(Vec<pgseal_proxy::reencrypt::ColumnReport>, Vec<PassOutcome>)> {
    rotation_pass::lock_single_run(client).await?;
    let mut passes = Vec::new();
    if let Some(ks) = keyserver {
        for (keyring, _) in rotations {
            rotation_pass::check_prepared(client, &settings.schema, keyring).await?;
        }
        for (keyring, rotation) in rotations {
            match rotation_pass::start(ks, keyring, rotation).await {
                Ok(p) => passes.push(p),
                Err(e) => {
                    abandon(ks, &passes).await;
                    return Err(e.into());
                }
            }
        }
    }
    match rewrite_rounds(client, settings, keys, &passes).await {
        Ok((reports, outcomes)) => {
            let mut done = Vec::new();
            if let Some(ks) = keyserver {
                for o in outcomes {
                    if let Err(e) =
                        rotation_pass::report(ks, &o.pass, o.complete, o.rewritten).await
                    {
                        println!("error: {e}");
                        continue;
                    }
                    done.push(o);
                }
            }
            Ok((reports, done))
        }
        Err(e) => {
            if let Some(ks) = keyserver {
                abandon(ks, &passes).await;
            }
            Err(e)
        }
    }
}

/// Reports `passes` as incomplete (a run that stopped early), so that they do not stay open on
/// the keyserver; errors are printed, not returned.
async fn abandon(ks: &pgseal_keyserver::client::Client, passes: &[rotation_pass::Pass]) {
    for p in passes {
        if let Err(e) = rotation_pass::report(ks, p, false, 0).await {
            println!("error: {e}");
        }
    }
}

/// The rewrite rounds of a `reencrypt` run: one round over every column, then, for the passes of
/// blind-index rotations, more rounds until nothing is left in the previous form (rows the
/// application changed while a round read them were left alone). A compaction is complete only
/// after a round that found every cell of the keyring already single under the new generation
/// (a single cell's generation cannot be read from its bytes, so only opening it tells).
async fn rewrite_rounds(
    client: &mut SimpleClient,
    settings: &EncryptionSettings,
    keys: &dyn KeySource,
    passes: &[rotation_pass::Pass],
) -> Result<(Vec<pgseal_proxy::reencrypt::ColumnReport>, Vec<PassOutcome>)> {
    let columns_of = |p: &rotation_pass::Pass| -> Vec<String> {
        settings
            .schema
            .columns()
            .filter(|c| c.keyring == p.keyring && c.index.is_some())
            .map(|c| c.id.to_string())
            .collect()
    };
    if passes.is_empty() {
        let reports =
            pgseal_proxy::reencrypt::reencrypt(client, &settings.schema, keys, REENCRYPT_BATCH)
                .await?;
        return Ok((reports, Vec::new()));
    }
    rotation_pass::wait_for_older_transactions(client, OLDER_TRANSACTIONS_LIMIT).await?;
    let mut total =
        pgseal_proxy::reencrypt::reencrypt(client, &settings.schema, keys, REENCRYPT_BATCH).await?;
    let mut last = total.clone();
    let mut verdict: Vec<(bool, u64)> = Vec::new();
    for round in 1..=PASS_ROUNDS {
        verdict.clear();
        for p in passes {
            let cols = columns_of(p);
            let of_last = last.iter().filter(|r| cols.contains(&r.column));
            let (rewritten, changed, unreadable) = of_last.fold((0, 0, 0), |(w, c, u), r| {
                (w + r.rewritten, c + r.changed, u + r.unreadable)
            });
            let left = rotation_pass::cells_left(client, &settings.schema, p).await?;
            let verified = match p.rotation.phase {
                IndexPhase::Dual => true,
                IndexPhase::Cutover => rewritten == 0 && changed == 0,
            };
            let complete = left == 0 && unreadable == 0 && verified;
            verdict.push((complete, left + unreadable));
        }
        if verdict.iter().all(|(c, _)| *c) || round == PASS_ROUNDS {
            break;
        }
        last = pgseal_proxy::reencrypt::reencrypt(client, &settings.schema, keys, REENCRYPT_BATCH)
            .await?;
        for (t, l) in total.iter_mut().zip(&last) {
            t.rewritten += l.rewritten;
            t.changed = l.changed;
            t.unreadable = l.unreadable;
        }
    }
    let outcomes = passes
        .iter()
        .zip(verdict)
        .map(|(p, (complete, left))| {
            let cols = columns_of(p);
            let rewritten = total
                .iter()
                .filter(|r| cols.contains(&r.column))
                .map(|r| r.rewritten)
                .sum();
            PassOutcome {
                pass: p.clone(),
                complete,
                left,
                rewritten,
            }
        })
        .collect();
    Ok((total, outcomes))
}

/// How many times a rotation pass goes over the tables at most.
const PASS_ROUNDS: usize = 8;

/// How long a rotation pass waits for transactions older than itself.
const OLDER_TRANSACTIONS_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Rows per `reencrypt` batch (one upstream transaction each).
const REENCRYPT_BATCH: usize = 500;

/// The interceptor factory `serve` runs with, and what must stay alive as long as it does.
struct Interceptors {
    factory: Arc<dyn InterceptorFactory>,
    /// The keyserver-backed key source (its follower thread stops when dropped).
    _keys: Option<Arc<KeyserverKeys>>,
}

/// Pass-through without `[[columns]]`; otherwise the encryption layer with keys from the keyserver
/// and the upstream catalog. Either missing at start-up is fatal: never serve protected columns
/// without encryption.
fn interceptors(resolved: &Resolved) -> Result<Interceptors> {
    let Some(settings) = &resolved.encryption else {
        return Ok(Interceptors {
            factory: Arc::new(PassThrough),
            _keys: None,
        });
    };
    let keys = KeyserverKeys::start_serving(&settings.keyserver, &settings.schema)
        .with_context(|| format!("keyserver {}", settings.keyserver.url))?;
    let catalog = UpstreamCatalog::start(resolved, settings).with_context(|| {
        format!(
            "catalog of database {:?} (encryption.catalog_user {:?})",
            settings.database, settings.catalog_user
        )
    })?;
    tracing::info!(
        columns = settings.schema.columns().count(),
        database = %settings.database,
        keyserver = %settings.keyserver.url,
        "encryption enabled"
    );
    let key_source: Arc<dyn KeySource> = keys.clone();
    let factory = EncryptionFactory::new(
        settings.schema.clone(),
        settings.database.clone(),
        key_source,
        catalog,
    )
    .with_policy(pgseal_proxy::encrypt::GatePolicy {
        trusted_migration_users: settings.trusted_migration_users.clone(),
        max_statement_bytes: settings.max_statement_bytes,
    });
    Ok(Interceptors {
        factory: Arc::new(factory),
        _keys: Some(keys),
    })
}

fn main() -> Result<()> {
    let (cmd, path, schema_options) = parse_args()?;
    // PGSEAL_LOG (or RUST_LOG) sets the level of pgseal's own targets only: every other crate
    // (sqlparser logs the statements it parses at debug) is capped at `warn`, so no SQL text,
    // value or token reaches the log through a dependency.
    logging::init_stderr(&logging::spec_from_env(&["PGSEAL_LOG", "RUST_LOG"], "info"));
    let config = Config::from_file(&path)?;
    let threads = config.threads();
    let resolved = config
        .resolve()
        .with_context(|| format!("{}: invalid configuration", path.display()))?;
    match cmd.as_str() {
        "check" => check(&path, resolved),
        "schema" => schema(&resolved, &schema_options),
        "reencrypt" => reencrypt(&resolved),
        "migrate" => migrate(&resolved, &schema_options),
        "serve" => {
            // Each session holds a client and an upstream descriptor; start-ups one each.
            let limits = &resolved.config.limits;
            pgseal_keyserver::fd_limit::ensure(
                limits
                    .max_connections
                    .saturating_mul(2)
                    .saturating_add(limits.max_startup_connections),
            );
            let interceptors = interceptors(&resolved)?;
            let server = Server::bind_sync(resolved, interceptors.factory)?;
            tracing::info!(
                listen = ?server.local_addr(),
                metrics = ?server.metrics_addr(),
                threads,
                "pgseal-proxy listening"
            );
            server.run_threaded(threads, pgseal_proxy::shutdown::terminate_signal())?;
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
