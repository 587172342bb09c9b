//! Local `$ref`s: followed for parameters and request bodies, inlined for
//! schemas, each schema object converted to plain JSON Schema on the way
//! ([`dialect`]). A schema that reaches itself stays a `$ref`, into a `$defs`
//! (`definitions` in draft 7) block that the written schema carries, so the
//! validator resolves it without any IO. Only references into the document
//! itself (`#/...`) are accepted; how deep and how large inlining may go is
//! bounded.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::dialect;
use super::spec::Version;
use super::{escape, SpecError};

/// How many references may be followed inside one another.
pub const MAX_REF_DEPTH: usize = 64;
/// How many JSON values one written schema may hold once inlined.
pub const MAX_SCHEMA_NODES: usize = 200_000;

/// Where a keyword keeps subschemas, in the dialects OpenAPI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// The value is a schema.
    One,
    /// The value is a schema or (draft 7 `items`) a list of schemas.
    OneOrList,
    /// The value is a list of schemas.
    List,
    /// The value maps names to schemas (`dependencies` also to name lists).
    Map,
}

pub fn holds(keyword: &str) -> Option<Holds> {
    Some(match keyword {
        "additionalProperties"
        | "additionalItems"
        | "not"
        | "if"
        | "then"
        | "else"
        | "contains"
        | "propertyNames"
        | "unevaluatedProperties"
        | "unevaluatedItems"
        | "contentSchema" => Holds::One,
        "items" => Holds::OneOrList,
        "allOf" | "anyOf" | "oneOf" | "prefixItems" => Holds::List,
        "properties" | "patternProperties" | "dependentSchemas" | "$defs" | "definitions"
        | "dependencies" => Holds::Map,
        _ => return None,
    })
}

/// Call `f` on every direct subschema of `schema` with its keyword and the
/// pointer suffix that reaches it.
pub fn each_subschema_mut(
    schema: &mut Map<String, Value>,
    f: &mut dyn FnMut(&str, &mut Value, String) -> Result<(), SpecError>,
) -> Result<(), SpecError> {
    for (keyword, value) in schema.iter_mut() {
        let Some(kind) = holds(keyword) else { continue };
        let key = escape(keyword);
        match (kind, value) {
            (Holds::OneOrList | Holds::List, Value::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    f(keyword, item, format!("{key}/{i}"))?;
                }
            }
            (Holds::One | Holds::OneOrList, v) => f(keyword, v, key)?,
            (Holds::Map, Value::Object(entries)) => {
                for (name, item) in entries.iter_mut() {
                    // `dependencies` may also map a name to a list of names.
                    if keyword != "dependencies" || !item.is_array() {
                        f(keyword, item, format!("{key}/{}", escape(name)))?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The value a local reference points at, and its pointer.
pub fn target<'d>(
    doc: &'d Value,
    reference: &str,
    at: &str,
) -> Result<(&'d Value, String), SpecError> {
    let Some(fragment) = reference.strip_prefix('#') else {
        return Err(SpecError::new(
            at,
            format!(
                "$ref \"{}\" leaves the document: only local references (\"#/...\") are resolved",
                short(reference)
            ),
        ));
    };
    let pointer = percent_decode(fragment).ok_or_else(|| {
        SpecError::new(
            at,
            format!("$ref \"{}\" is not a valid URI fragment", short(reference)),
        )
    })?;
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(SpecError::new(
            at,
            format!(
                "$ref \"{}\": only JSON pointers are supported, not anchors",
                short(reference)
            ),
        ));
    }
    let value = doc.pointer(&pointer).ok_or_else(|| {
        SpecError::new(
            at,
            format!("$ref \"{}\" points at nothing", short(reference)),
        )
    })?;
    Ok((value, pointer))
}

/// Follow a chain of `$ref`s of a non-schema object (a parameter, a request
/// body) to the object itself, with the pointer where it sits.
pub fn follow<'d>(
    doc: &'d Value,
    mut value: &'d Value,
    at: &str,
) -> Result<(&'d Value, String), SpecError> {
    let mut pointer = at.to_string();
    for _ in 0..MAX_REF_DEPTH {
        match value.get("$ref") {
            Some(Value::String(r)) => {
                let (next, p) = target(doc, r, &format!("{pointer}/$ref"))?;
                value = next;
                pointer = p;
            }
            Some(_) => {
                return Err(SpecError::new(
                    format!("{pointer}/$ref"),
                    "must be a string",
                ))
            }
            None => return Ok((value, pointer)),
        }
    }
    Err(SpecError::new(
        at,
        format!("more than {MAX_REF_DEPTH} references in a row"),
    ))
}

fn short(s: &str) -> String {
    if s.len() <= 120 {
        return s.to_string();
    }
    let mut end = 120;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `%XX` in a URI fragment; `None` for bad escapes or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Keywords next to a `$ref` in 3.1 that only annotate; dropped rather
/// than kept as an `allOf` beside the reference.
fn annotation_only(keyword: &str) -> bool {
    matches!(
        keyword,
        "description" | "summary" | "title" | "example" | "examples" | "deprecated" | "$comment"
    ) || keyword.starts_with("x-")
}

/// Inlines the references of one written schema.
pub struct Inliner<'d> {
    doc: &'d Value,
    version: Version,
    strict: bool,
    /// Pointers being expanded, innermost last.
    stack: Vec<String>,
    /// Targets found to reach themselves.
    recursive: HashSet<String>,
    /// Target pointer → its name in the defs block.
    names: HashMap<String, String>,
    defs: Map<String, Value>,
    nodes: usize,
}

impl<'d> Inliner<'d> {
    /// `strict`: refuse read-only properties (see [`dialect`]).
    pub fn new(doc: &'d Value, version: Version, strict: bool) -> Inliner<'d> {
        Inliner {
            doc,
            version,
            strict,
            stack: Vec::new(),
            recursive: HashSet::new(),
            names: HashMap::new(),
            defs: Map::new(),
            nodes: 0,
        }
    }

    /// The schema at `at` with every reference inlined or pointing into the
    /// defs block; then [`Inliner::finish`] attaches that block.
    pub fn inline(&mut self, schema: &Value, at: &str) -> Result<Value, SpecError> {
        self.nodes += 1;
        if self.nodes > MAX_SCHEMA_NODES {
            return Err(SpecError::new(
                at,
                format!("the schema grows beyond {MAX_SCHEMA_NODES} values when its references are inlined"),
            ));
        }
        let object = match schema {
            Value::Object(m) => m,
            Value::Bool(_) => return Ok(schema.clone()),
            _ => {
                return Err(SpecError::new(
                    at,
                    "a schema must be an object or a boolean",
                ))
            }
        };
        if let Some(reference) = object.get("$ref") {
            let at_ref = format!("{at}/$ref");
            let Value::String(reference) = reference else {
                return Err(SpecError::new(at_ref, "must be a string"));
            };
            let resolved = self.resolve(reference, &at_ref)?;
            let siblings: Map<String, Value> = object
                .iter()
                .filter(|(k, _)| *k != "$ref" && !annotation_only(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // OpenAPI 3.0 ignores a reference's siblings; 3.1 (2020-12)
            // applies them beside it.
            if self.version == Version::V30 || siblings.is_empty() {
                return Ok(resolved);
            }
            let mut beside = match self.inline(&Value::Object(siblings), at)? {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            match beside.get_mut("allOf") {
                Some(Value::Array(all)) => all.push(resolved),
                _ => {
                    beside.insert("allOf".into(), Value::Array(vec![resolved]));
                }
            }
            return Ok(Value::Object(beside));
        }
        let mut out = object.clone();
        let doc = self.doc;
        let read_only = |s: &Value| {
            let marked = |s: &Value| s.get("readOnly") == Some(&Value::Bool(true));
            marked(s)
                || match s.get("$ref").and_then(Value::as_str) {
                    Some(r) => target(doc, r, "").is_ok_and(|(t, _)| marked(t)),
                    None => false,
                }
        };
        dialect::convert_node(&mut out, self.version, self.strict, at, &read_only)?;
        each_subschema_mut(&mut out, &mut |_, child, suffix| {
            *child = self.inline(child, &format!("{at}/{suffix}"))?;
            Ok(())
        })?;
        Ok(Value::Object(out))
    }

    fn resolve(&mut self, reference: &str, at: &str) -> Result<Value, SpecError> {
        let (target, pointer) = target(self.doc, reference, at)?;
        if self.stack.contains(&pointer) {
            self.recursive.insert(pointer.clone());
            return Ok(self.def_ref(&pointer));
        }
        if self
            .defs
            .contains_key(self.names.get(&pointer).map_or("", String::as_str))
        {
            return Ok(self.def_ref(&pointer));
        }
        if self.stack.len() >= MAX_REF_DEPTH {
            return Err(SpecError::new(
                at,
                format!("references nest deeper than {MAX_REF_DEPTH}"),
            ));
        }
        self.stack.push(pointer.clone());
        let body = self.inline(target, &pointer);
        self.stack.pop();
        let body = body?;
        if self.recursive.contains(&pointer) {
            let name = self.name_of(&pointer);
            self.defs.insert(name, body);
            return Ok(self.def_ref(&pointer));
        }
        Ok(body)
    }

    /// A stable, unique name in the defs block for a target.
    fn name_of(&mut self, pointer: &str) -> String {
        if let Some(n) = self.names.get(pointer) {
            return n.clone();
        }
        let last = pointer.rsplit('/').next().unwrap_or("schema");
        let base: String = last
            .replace("~1", "/")
            .replace("~0", "~")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = if base.is_empty() {
            "schema".to_string()
        } else {
            base
        };
        let mut name = base.clone();
        let mut n = 2;
        while self.names.values().any(|v| *v == name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.names.insert(pointer.to_string(), name.clone());
        name
    }

    fn def_ref(&mut self, pointer: &str) -> Value {
        let name = self.name_of(pointer);
        let mut m = Map::new();
        m.insert(
            "$ref".into(),
            Value::String(format!(
                "#/{}/{}",
                self.version.defs_keyword(),
                escape(&name)
            )),
        );
        Value::Object(m)
    }

    /// The written schema: `root` as an object, carrying the defs block
    /// when a recursive schema needed one.
    pub fn finish(self, root: Value) -> Map<String, Value> {
        let mut root = match root {
            Value::Object(m) => m,
            Value::Bool(true) => Map::new(),
            Value::Bool(false) => {
                let mut m = Map::new();
                m.insert("not".into(), Value::Object(Map::new()));
                m
            }
            // Not a schema; the dialect pass reports it.
            other => {
                let mut m = Map::new();
                m.insert("allOf".into(), Value::Array(vec![other]));
                m
            }
        };
        if self.defs.is_empty() {
            return root;
        }
        // Draft 7 ignores a reference's siblings: keep the reference apart.
        if let Some(r) = root.remove("$ref") {
            let mut only = Map::new();
            only.insert("$ref".into(), r);
            match root.get_mut("allOf") {
                Some(Value::Array(all)) => all.push(Value::Object(only)),
                _ => {
                    root.insert("allOf".into(), Value::Array(vec![Value::Object(only)]));
                }
            }
        }
        root.insert(self.version.defs_keyword().into(), Value::Object(self.defs));
        root
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({"components": {"schemas": {
            "Pet": {"type": "object", "properties": {
                "name": {"type": "string"}, "tag": {"$ref": "#/components/schemas/Tag"}}},
            "Tag": {"type": "string", "maxLength": 8},
            "Node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}},
            "A/B": {"type": "integer"}
        }}})
    }

    #[test]
    fn references_are_inlined_where_they_stand() {
        let d = doc();
        let mut i = Inliner::new(&d, Version::V30, false);
        let out = i
            .inline(&json!({"$ref": "#/components/schemas/Pet"}), "/x")
            .unwrap();
        assert_eq!(
            Value::Object(i.finish(out)),
            json!({"type": "object", "properties": {
                "name": {"type": "string"}, "tag": {"type": "string", "maxLength": 8}}})
        );
        let mut i = Inliner::new(&d, Version::V31, false);
        let out = i
            .inline(&json!({"$ref": "#/components/schemas/A~1B"}), "/x")
            .unwrap();
        assert_eq!(out, json!({"type": "integer"}));
    }

    #[test]
    fn recursive_schemas_stay_references_into_a_defs_block() {
        let d = doc();
        let mut i = Inliner::new(&d, Version::V30, false);
        let out = i
            .inline(&json!({"$ref": "#/components/schemas/Node"}), "/x")
            .unwrap();
        assert_eq!(
            Value::Object(i.finish(out)),
            json!({"allOf": [{"$ref": "#/definitions/Node"}], "definitions": {"Node": {
                "type": "object", "properties": {"children": {"type": "array",
                    "items": {"$ref": "#/definitions/Node"}}}}}})
        );
        let mut i = Inliner::new(&d, Version::V31, false);
        let out = i
            .inline(&json!({"type": "object", "properties": {"root": {"$ref": "#/components/schemas/Node"}}}), "/x")
            .unwrap();
        let out = Value::Object(i.finish(out));
        assert_eq!(out["properties"]["root"], json!({"$ref": "#/$defs/Node"}));
        assert!(out["$defs"]["Node"].is_object());
    }

    #[test]
    fn siblings_of_a_reference_apply_in_3_1_only() {
        let d = doc();
        let s = json!({"$ref": "#/components/schemas/Tag", "minLength": 2, "description": "x"});
        let mut i = Inliner::new(&d, Version::V30, false);
        assert_eq!(
            i.inline(&s, "/x").unwrap(),
            json!({"type": "string", "maxLength": 8})
        );
        let mut i = Inliner::new(&d, Version::V31, false);
        assert_eq!(
            i.inline(&s, "/x").unwrap(),
            json!({"minLength": 2, "allOf": [{"type": "string", "maxLength": 8}]})
        );
    }

    #[test]
    fn remote_missing_and_anchor_references_are_refused_with_their_pointer() {
        let d = doc();
        for (r, words) in [
            ("https://example.com/pet.json", "leaves the document"),
            ("pet.json#/Pet", "leaves the document"),
            ("#/components/schemas/Nope", "points at nothing"),
            ("#pet", "not anchors"),
            ("#/components/schemas/%zz", "not a valid URI fragment"),
        ] {
            let mut i = Inliner::new(&d, Version::V31, false);
            let e = i
                .inline(&json!({"properties": {"a": {"$ref": r}}}), "/paths/~1p/get")
                .unwrap_err();
            assert_eq!(e.pointer, "/paths/~1p/get/properties/a/$ref", "{r}");
            assert!(e.message.contains(words), "{r}: {}", e.message);
        }
    }

    #[test]
    fn growth_and_depth_are_bounded() {
        // Each level refers to the next twice: 2^40 values if inlined.
        let mut schemas = Map::new();
        for n in 0..40 {
            let next = format!("#/components/schemas/S{}", n + 1);
            schemas.insert(
                format!("S{n}"),
                json!({"properties": {"a": {"$ref": next}, "b": {"$ref": next}}}),
            );
        }
        schemas.insert("S40".into(), json!({"type": "string"}));
        let d = json!({"components": {"schemas": schemas}});
        let mut i = Inliner::new(&d, Version::V31, false);
        let e = i
            .inline(&json!({"$ref": "#/components/schemas/S0"}), "/x")
            .unwrap_err();
        assert!(e.message.contains("grows beyond"), "{}", e.message);

        let mut schemas = Map::new();
        for n in 0..100 {
            schemas.insert(
                format!("C{n}"),
                json!({"$ref": format!("#/components/schemas/C{}", n + 1)}),
            );
        }
        schemas.insert("C100".into(), json!({}));
        let d = json!({"components": {"schemas": schemas}});
        let mut i = Inliner::new(&d, Version::V31, false);
        let e = i
            .inline(&json!({"$ref": "#/components/schemas/C0"}), "/x")
            .unwrap_err();
        assert!(e.message.contains("nest deeper"), "{}", e.message);
    }

    #[test]
    fn non_schema_objects_are_followed_through_chains() {
        let d = json!({"components": {"parameters": {
            "Limit": {"$ref": "#/components/parameters/Real"},
            "Real": {"name": "limit", "in": "query"}}}});
        let r = json!({"$ref": "#/components/parameters/Limit"});
        let (p, at) = follow(&d, &r, "/p").unwrap();
        assert_eq!(p["name"], "limit");
        assert_eq!(at, "/components/parameters/Real");
    }
}
