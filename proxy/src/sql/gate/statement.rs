//! One statement as PostgreSQL's grammar reads it: what it touches, whether it is a catalog
//! barrier, what it may change in the session, and the statement forms the gate refuses
//! outright on protected relations (renames and schema moves, field and element assignment
//! to protected columns, type changes of protected columns).

use pg_query::protobuf::{
    AlterTableType, ObjectType, RawStmt, TransactionStmtKind, VariableSetKind,
};
use pg_query::NodeEnum;

use super::names::Names;
use super::walk::{walk, Found};
use super::{Dirty, StatementFacts};
use crate::rewrite::refusal::FEATURE_NOT_SUPPORTED;
use crate::rewrite::Refusal;

/// Settings whose change alters how the server lexes SQL text.
const LEXER_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "backslash_quote",
    "client_encoding",
    "escape_string_warning",
];

/// Settings whose change alters how the server resolves names.
const RESOLUTION_SETTINGS: &[&str] = &["search_path", "role", "session_authorization"];

/// Statement kinds that never change what a name refers to or which relations are protected.
const NOT_BARRIERS: &[&str] = &[
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
    "CopyStmt",
    "TransactionStmt",
    "VariableShowStmt",
    "VariableSetStmt",
    "ExplainStmt",
    "DeclareCursorStmt",
    "FetchStmt",
    "ClosePortalStmt",
    "PrepareStmt",
    "ExecuteStmt",
    "DeallocateStmt",
    "ListenStmt",
    "NotifyStmt",
    "UnlistenStmt",
    "LockStmt",
    "VacuumStmt",
    "CheckPointStmt",
    "TruncateStmt",
    "IndexStmt",
    "CommentStmt",
    "GrantStmt",
    "GrantRoleStmt",
    "AlterDefaultPrivilegesStmt",
    "ConstraintsSetStmt",
    "ReindexStmt",
    "ClusterStmt",
    "RefreshMatViewStmt",
    "CreateFunctionStmt",
    "AlterFunctionStmt",
    "DoStmt",
    "CallStmt",
    "DiscardStmt",
    "CreateRoleStmt",
    "AlterRoleStmt",
    "AlterRoleSetStmt",
    "DropRoleStmt",
    "AlterDatabaseSetStmt",
    "CreatedbStmt",
    "DropdbStmt",
    "CreateEnumStmt",
    "CreateDomainStmt",
    "CompositeTypeStmt",
    "DefineStmt",
    "CreateSeqStmt",
    "AlterSeqStmt",
    "CreateStatsStmt",
    "SecLabelStmt",
    "ReassignOwnedStmt",
];

/// Statement kinds after which the proxy knows nothing about names until the catalog is read
/// again: schemas, extensions, foreign schemas, event triggers.
const BARRIERS_FOR_ALL: &[&str] = &[
    "CreateSchemaStmt",
    "ImportForeignSchemaStmt",
    "CreateExtensionStmt",
    "AlterExtensionStmt",
    "AlterExtensionContentsStmt",
    "CreateEventTrigStmt",
    "AlterEventTrigStmt",
    "DropOwnedStmt",
    "AlterOwnerStmt",
];

fn unsupported(message: String) -> Refusal {
    Refusal::new(FEATURE_NOT_SUPPORTED, message)
}

/// The facts of one parsed statement, or the refusal of a form the gate never forwards.
pub(crate) fn facts(raw: &RawStmt, names: &Names) -> Result<StatementFacts, Refusal> {
    let found = walk(raw);
    let node = raw.stmt.as_ref().and_then(|n| n.node.as_ref());
    let kind = found.top.unwrap_or("");
    let protected_relations: Vec<String> = found
        .range_vars
        .iter()
        .filter(|(_, r)| names.is_relation(r))
        .map(|(_, r)| r.to_lowercase())
        .collect();
    let names_protected =
        !protected_relations.is_empty() || found.identifiers.iter().any(|i| names.is_relation(i));
    let mut f = StatementFacts {
        kind,
        relations: found.range_vars.clone(),
        protected_relations,
        names_protected,
        carries_values: found.literal || found.param,
        names_protected_column: found.identifiers.iter().any(|i| names.is_column(i)),
        writes: found.writes,
        barrier: None,
        lexer_change: false,
        resolution_change: false,
        ends_block: false,
        body: matches!(kind, "CreateFunctionStmt" | "DoStmt"),
        identifiers: found.identifiers.clone(),
    };
    if found
        .functions
        .iter()
        .any(|n| n.eq_ignore_ascii_case("set_config"))
    {
        f.lexer_change = true;
        f.resolution_change = true;
    }
    if let Some(t) = found.temp_relations.iter().find(|t| names.is_relation(t)) {
        return Err(unsupported(format!(
            "pgseal: a temporary relation named {t}, like a protected table, would take its \
             place for unqualified names in this session; choose another name"
        )));
    }
    let Some(node) = node else {
        return Ok(f);
    };
    refuse_forms(node, names)?;
    classify(node, &found, &mut f);
    Ok(f)
}

/// Barrier, settings and block effects of a statement.
fn classify(node: &NodeEnum, found: &Found, f: &mut StatementFacts) {
    let everything = || {
        let mut d: Vec<String> = found.identifiers.clone();
        d.extend(found.range_vars.iter().map(|(_, r)| r.clone()));
        Dirty::Names(d)
    };
    match node {
        NodeEnum::VariableSetStmt(s) => {
            let name = s.name.to_ascii_lowercase();
            let reset_all = s.kind == VariableSetKind::VarResetAll as i32;
            if reset_all || LEXER_SETTINGS.contains(&name.as_str()) {
                f.lexer_change = true;
            }
            if reset_all || RESOLUTION_SETTINGS.contains(&name.as_str()) {
                f.resolution_change = true;
            }
        }
        NodeEnum::DiscardStmt(_) => {
            f.lexer_change = true;
            f.resolution_change = true;
        }
        NodeEnum::TransactionStmt(t) => {
            f.ends_block = [
                TransactionStmtKind::TransStmtCommit,
                TransactionStmtKind::TransStmtRollback,
                TransactionStmtKind::TransStmtRollbackTo,
                TransactionStmtKind::TransStmtPrepare,
            ]
            .iter()
            .any(|k| *k as i32 == t.kind);
        }
        // Code the text does not show may set search_path or the role.
        NodeEnum::DoStmt(_) | NodeEnum::CallStmt(_) | NodeEnum::ExecuteStmt(_) => {
            f.resolution_change = true;
        }
        NodeEnum::SelectStmt(s) if s.into_clause.is_some() => f.barrier = Some(everything()),
        // EXPLAIN ANALYZE runs its statement: CREATE TABLE AS / SELECT INTO create a table.
        NodeEnum::ExplainStmt(_)
            if found.nested_statements.contains(&"CreateTableAsStmt") || found.into_clause =>
        {
            f.barrier = Some(everything());
        }
        _ => {}
    }
    if f.barrier.is_none() && !NOT_BARRIERS.contains(&f.kind) {
        f.barrier = Some(if BARRIERS_FOR_ALL.contains(&f.kind) {
            Dirty::All
        } else if known_ddl(f.kind) {
            everything()
        } else {
            // A statement kind the gate does not know: assume the worst.
            Dirty::All
        });
    }
    if BARRIERS_FOR_ALL.contains(&f.kind) {
        f.resolution_change = true;
    }
}

/// DDL whose effect on names is limited to the names it mentions.
fn known_ddl(kind: &str) -> bool {
    matches!(
        kind,
        "CreateStmt"
            | "CreateForeignTableStmt"
            | "CreateTableAsStmt"
            | "ViewStmt"
            | "AlterTableStmt"
            | "RenameStmt"
            | "AlterObjectSchemaStmt"
            | "DropStmt"
            | "RuleStmt"
            | "CreateTrigStmt"
            | "CreatePolicyStmt"
            | "AlterPolicyStmt"
            | "AlterTableMoveAllStmt"
            | "AlterTableSpaceOptionsStmt"
            | "CreateTableSpaceStmt"
            | "DropTableSpaceStmt"
            | "CreatePublicationStmt"
            | "AlterPublicationStmt"
            | "CreateSubscriptionStmt"
            | "AlterSubscriptionStmt"
            | "DropSubscriptionStmt"
            | "CreateForeignServerStmt"
            | "AlterForeignServerStmt"
            | "CreateUserMappingStmt"
            | "AlterUserMappingStmt"
            | "DropUserMappingStmt"
            | "CreateFdwStmt"
            | "AlterFdwStmt"
            | "CreateCastStmt"
            | "CreateOpClassStmt"
            | "CreateOpFamilyStmt"
            | "AlterOpFamilyStmt"
            | "CreateConversionStmt"
            | "CreateTransformStmt"
            | "CreateAmStmt"
            | "CreatePLangStmt"
            | "AlterEnumStmt"
            | "AlterDomainStmt"
            | "AlterTypeStmt"
            | "AlterOperatorStmt"
            | "AlterCollationStmt"
            | "AlterStatsStmt"
            | "AlterTSDictionaryStmt"
            | "AlterTSConfigurationStmt"
            | "AlterSystemStmt"
            | "AlterDatabaseStmt"
            | "AlterDatabaseRefreshCollStmt"
            | "AlterObjectDependsStmt"
            | "CreateRangeStmt"
            | "DropdbStmt"
    )
}

fn rename_kind_is_relation_or_column(t: i32) -> bool {
    [
        ObjectType::ObjectTable,
        ObjectType::ObjectView,
        ObjectType::ObjectMatview,
        ObjectType::ObjectForeignTable,
        ObjectType::ObjectColumn,
        ObjectType::ObjectAttribute,
        ObjectType::ObjectTabconstraint,
    ]
    .iter()
    .any(|k| *k as i32 == t)
}

/// The statement forms refused on protected relations whatever else the statement does.
fn refuse_forms(node: &NodeEnum, names: &Names) -> Result<(), Refusal> {
    match node {
        NodeEnum::RenameStmt(r) => {
            let rel = r
                .relation
                .as_ref()
                .map(|v| v.relname.as_str())
                .unwrap_or("");
            if r.rename_type == ObjectType::ObjectSchema as i32 && names.is_schema(&r.subname) {
                return Err(unsupported(format!(
                    "pgseal: schema {} holds protected tables and cannot be renamed through the \
                     proxy; rename it directly upstream and update the proxy's [[columns]] \
                     configuration (docs/sql.md, \"Renaming protected tables\")",
                    r.subname
                )));
            }
            if rename_kind_is_relation_or_column(r.rename_type) && names.is_relation(rel) {
                return Err(unsupported(format!(
                    "pgseal: renaming protected table {rel} or its columns is not supported \
                     through the proxy; rename it directly upstream and update the proxy's \
                     [[columns]] configuration (docs/sql.md, \"Renaming protected tables\")"
                )));
            }
            if names.is_relation(&r.newname) {
                return Err(unsupported(format!(
                    "pgseal: renaming a relation to {}, the name of a protected table, is not \
                     supported through the proxy",
                    r.newname
                )));
            }
        }
        NodeEnum::AlterObjectSchemaStmt(a) => {
            let rel = a
                .relation
                .as_ref()
                .map(|v| v.relname.as_str())
                .unwrap_or("");
            if names.is_relation(rel) || names.is_schema(&a.newschema) && !rel.is_empty() {
                return Err(unsupported(format!(
                    "pgseal: moving {rel} to schema {} is not supported through the proxy when it \
                     is or becomes protected; move it directly upstream and update the proxy's \
                     [[columns]] configuration (docs/sql.md, \"Renaming protected tables\")",
                    a.newschema
                )));
            }
        }
        NodeEnum::AlterTableStmt(a) => {
            let rel = a
                .relation
                .as_ref()
                .map(|v| v.relname.as_str())
                .unwrap_or("");
            if names.is_relation(rel) {
                for cmd in &a.cmds {
                    let Some(NodeEnum::AlterTableCmd(c)) = cmd.node.as_ref() else {
                        continue;
                    };
                    if c.subtype == AlterTableType::AtAlterColumnType as i32
                        && names.is_column(&c.name)
                    {
                        return Err(unsupported(format!(
                            "pgseal: changing the type of protected column {rel}.{} is not \
                             supported (it is stored as bytea upstream)",
                            c.name
                        )));
                    }
                }
            }
        }
        NodeEnum::InsertStmt(i) => {
            let rel = i
                .relation
                .as_ref()
                .map(|v| v.relname.as_str())
                .unwrap_or("");
            if names.is_relation(rel) {
                indirection(rel, &i.cols, names)?;
                if let Some(oc) = i.on_conflict_clause.as_ref() {
                    indirection(rel, &oc.target_list, names)?;
                }
            }
        }
        NodeEnum::UpdateStmt(u) => {
            let rel = u
                .relation
                .as_ref()
                .map(|v| v.relname.as_str())
                .unwrap_or("");
            if names.is_relation(rel) {
                indirection(rel, &u.target_list, names)?;
            }
        }
        NodeEnum::MergeStmt(m) => {
            let rel = m
                .relation
                .as_ref()
                .map(|v| v.relname.as_str())
                .unwrap_or("");
            if names.is_relation(rel) {
                for w in &m.merge_when_clauses {
                    if let Some(NodeEnum::MergeWhenClause(w)) = w.node.as_ref() {
                        indirection(rel, &w.target_list, names)?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Refuses an assignment to a field or element of a protected column (`SET name.x = …`,
/// `INSERT INTO t (email[1]) …`): the value is not the column's own, so it cannot be sealed.
fn indirection(
    rel: &str,
    targets: &[pg_query::protobuf::Node],
    names: &Names,
) -> Result<(), Refusal> {
    for t in targets {
        if let Some(NodeEnum::ResTarget(r)) = t.node.as_ref() {
            if !r.indirection.is_empty() && names.is_column(&r.name) {
                return Err(unsupported(format!(
                    "pgseal: assigning to a field or element of protected column {rel}.{} is not \
                     supported; assign the whole value",
                    r.name
                )));
            }
        }
    }
    Ok(())
}
