//! A complete walk over a libpg_query parse tree.
//!
//! The gate must see every identifier, literal and function call of a statement, whatever node
//! type holds it: a walk that knows only some node types (as `pg_query`'s own `nodes()` does)
//! would be a hole for every type it does not know. The generated protobuf types of
//! `pg_query` all implement [`serde::Serialize`], so this module walks them with a serializer
//! of its own that records what the gate needs instead of producing output: every node type
//! entered (an enum variant), the field a value sits in, and every string. Nothing is
//! allocated per node; the walk costs a fraction of the parse.

use std::fmt;

use serde::ser::{self, Serialize};

/// What one walk over a statement (or a subtree) found.
#[derive(Debug, Default, Clone)]
pub(crate) struct Found {
    /// Relation names of every `RangeVar` (`schemaname`, `relname`; schema empty when
    /// unqualified), decoded as PostgreSQL decodes them.
    pub(crate) range_vars: Vec<(String, String)>,
    /// Every identifier string outside literals (`String` nodes, names in name fields).
    pub(crate) identifiers: Vec<String>,
    /// A literal (`A_Const`) outside type names (`varchar(20)`'s typmod is no value).
    pub(crate) literal: bool,
    /// A parameter reference (`$n`).
    pub(crate) param: bool,
    /// Last parts of the names of called functions (`FuncCall`), lower case as parsed.
    pub(crate) functions: Vec<String>,
    /// Node types of data-changing statements found anywhere (data-modifying CTEs, rule
    /// actions, SQL function bodies): `InsertStmt`, `UpdateStmt`, `DeleteStmt`, `MergeStmt`.
    pub(crate) writes: bool,
    /// The node type of the walked statement (the first `Node` variant).
    pub(crate) top: Option<&'static str>,
    /// Names of `RangeVar`s of temporary relations being created (`CREATE TEMP TABLE`,
    /// `SELECT … INTO TEMP`, or a `pg_temp` schema).
    pub(crate) temp_relations: Vec<String>,
    /// An `INTO` clause (`SELECT … INTO t`, `CREATE TABLE … AS`): a new table.
    pub(crate) into_clause: bool,
    /// Statement node types found below the top (`CreateSchemaStmt` elements, rule actions,
    /// `BEGIN ATOMIC` bodies, `EXPLAIN`'s statement).
    pub(crate) nested_statements: Vec<&'static str>,
}

/// Walks `value` (a parse-tree node or statement) and returns what it holds.
pub(crate) fn walk<T: Serialize>(value: &T) -> Found {
    let mut w = Walker::default();
    // The walker never fails: its error type exists for serde's signatures only.
    let _ = value.serialize(&mut w);
    w.found
}

#[derive(Default)]
struct Walker {
    found: Found,
    /// Names of the structs from the root to the current value (`RangeVar`, `AConst`, …).
    structs: Vec<&'static str>,
    /// Depth of statement structs (`InsertStmt`, …; not `RawStmt`).
    statements: u32,
    /// The struct field the current value sits in.
    field: &'static str,
    /// Depth inside `A_Const` (literal) and `TypeName` subtrees.
    in_const: u32,
    in_type: u32,
    /// Inside a `FuncCall`'s `funcname` list: the parts seen so far.
    funcname: Option<Vec<String>>,
    /// The `RangeVar`s being filled (schema, relation, temporary), innermost last.
    range_vars: Vec<(String, String, bool)>,
}

/// String fields of the parse tree that hold codes, not names.
const CODE_FIELDS: &[&str] = &[
    "relpersistence",
    "relkind",
    "subtype",
    "tgenabled",
    "generated_when",
    "generated_kind",
    "fk_upd_action",
    "fk_matchtype",
    "fk_del_action",
    "identity_type",
    "amtype",
    "aggkind",
];

#[derive(Debug)]
pub(crate) struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("parse-tree walk")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Never
    }
}

impl Walker {
    /// An enum variant: the node type of a `Node`.
    fn variant(&mut self, variant: &'static str) {
        if self.found.top.is_none() {
            self.found.top = Some(variant);
        }
    }

    fn enter(&mut self, name: &'static str) {
        match name {
            "AConst" => {
                if self.in_type == 0 {
                    self.found.literal = true;
                }
                self.in_const += 1;
            }
            "TypeName" => self.in_type += 1,
            "ParamRef" => self.found.param = true,
            "RangeVar" => self.range_vars.push((String::new(), String::new(), false)),
            "IntoClause" => self.found.into_clause = true,
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => self.found.writes = true,
            _ => {}
        }
        if name.ends_with("Stmt") && name != "RawStmt" {
            if self.statements > 0 {
                self.found.nested_statements.push(name);
            }
            self.statements += 1;
        }
        self.structs.push(name);
    }

    fn leave(&mut self) {
        let Some(name) = self.structs.pop() else {
            return;
        };
        match name {
            "AConst" => self.in_const = self.in_const.saturating_sub(1),
            "TypeName" => self.in_type = self.in_type.saturating_sub(1),
            "RangeVar" => {
                if let Some((schema, rel, temp)) = self.range_vars.pop() {
                    if temp || schema.to_ascii_lowercase().starts_with("pg_temp") {
                        self.found.temp_relations.push(rel.clone());
                    }
                    self.found.range_vars.push((schema, rel));
                }
            }
            _ => {}
        }
        if name.ends_with("Stmt") && name != "RawStmt" {
            self.statements = self.statements.saturating_sub(1);
        }
    }

    fn string(&mut self, v: &str) {
        if self.in_const > 0 {
            return;
        }
        let top = self.structs.last().copied().unwrap_or("");
        if top == "RangeVar" {
            if let Some(rv) = self.range_vars.last_mut() {
                match self.field {
                    "schemaname" => rv.0 = v.to_owned(),
                    "relname" => rv.1 = v.to_owned(),
                    "relpersistence" => rv.2 = v == "t",
                    _ => {}
                }
            }
        }
        if let Some(parts) = self.funcname.as_mut() {
            if top == "String" {
                parts.push(v.to_owned());
            }
        }
        // Identifiers: the values of `String` nodes and of name fields; one-letter code
        // fields (`relpersistence`, `fk_matchtype`, …) are no names.
        if !v.is_empty() && !CODE_FIELDS.contains(&self.field) {
            self.found.identifiers.push(v.to_owned());
        }
    }
}

impl ser::Serializer for &mut Walker {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, _: bool) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Never> {
        self.string(v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), Never> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        self.variant(variant);
        value.serialize(&mut *self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Never> {
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Self, Never> {
        self.enter(name);
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Never> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Never> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Never> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Never> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

impl ser::SerializeMap for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), Never> {
        key.serialize(&mut **self)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), Never> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        let outer = std::mem::replace(&mut self.field, key);
        let in_funcname = key == "funcname" && self.structs.last() == Some(&"FuncCall");
        if in_funcname {
            self.funcname = Some(Vec::new());
        }
        let r = value.serialize(&mut **self);
        if in_funcname {
            if let Some(parts) = self.funcname.take() {
                if let Some(last) = parts.into_iter().last() {
                    self.found.functions.push(last);
                }
            }
        }
        self.field = outer;
        r
    }
    fn end(self) -> Result<(), Never> {
        self.leave();
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Walker {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        let outer = std::mem::replace(&mut self.field, key);
        let r = value.serialize(&mut **self);
        self.field = outer;
        r
    }
    fn end(self) -> Result<(), Never> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sql: &str) -> Found {
        let parsed = pg_query::parse(sql, 0).unwrap();
        walk(&parsed.protobuf)
    }

    #[test]
    fn relations_everywhere_are_found_decoded() {
        let f = found(
            "WITH w AS (INSERT INTO U&\"p\\0061tients\" (email) VALUES ('x') RETURNING 1) \
             SELECT * FROM s.a JOIN (SELECT 1 FROM b) q ON true WHERE EXISTS (SELECT 1 FROM c)",
        );
        let mut names: Vec<_> = f.range_vars.iter().map(|(_, r)| r.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["a", "b", "c", "patients"]);
        assert!(f.range_vars.iter().any(|(s, r)| s == "s" && r == "a"));
        assert!(f.writes);
        assert!(f.literal);
    }

    #[test]
    fn literals_are_not_identifiers_and_typmods_are_not_values() {
        let f = found("CREATE TABLE t (a varchar(20))");
        assert!(!f.literal);
        assert!(f.identifiers.iter().any(|i| i == "a"));
        let f = found("SELECT 'patients'");
        assert!(f.literal);
        assert!(!f.identifiers.iter().any(|i| i == "patients"));
        let f = found("SELECT $1");
        assert!(f.param && !f.literal);
    }

    #[test]
    fn function_names_and_drop_lists() {
        let f = found("SELECT pg_catalog.set_config('search_path', 'x', false), lower('a')");
        assert_eq!(f.functions, ["set_config", "lower"]);
        let f = found("DROP TABLE public.patients, other");
        assert!(f.identifiers.iter().any(|i| i == "patients"));
        assert!(f.range_vars.is_empty());
    }

    #[test]
    fn nested_statements_are_listed() {
        let f = found("CREATE SCHEMA s CREATE TABLE patients (a int)");
        assert_eq!(f.nested_statements, ["CreateStmt"]);
        let f = found("CREATE RULE r AS ON INSERT TO t DO INSTEAD INSERT INTO patients VALUES (1)");
        assert!(f.writes);
        assert_eq!(f.range_vars.len(), 2);
    }
}
