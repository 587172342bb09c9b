//! `--strict`: an object may hold only the properties its schema declares,
//! so nothing can be smuggled to the upstream in an extra one.
//!
//! A plain object schema with `properties` and no `additionalProperties`
//! gets `additionalProperties: false`. That is wrong for a composed object
//! (`allOf: [Base, {properties: ...}]`): `additionalProperties` only sees
//! the properties beside it, so each part would refuse the other's. There,
//! 3.1 (2020-12) gets `unevaluatedProperties: false` on the object, which
//! sees every property any successful part evaluated; 3.0 (draft 7, which
//! has no such keyword) gets `propertyNames: {enum: [...]}` listing every
//! property any part declares — with `oneOf`/`anyOf` a property of another
//! branch is then let through, never an undeclared one.
//!
//! An object that declares `additionalProperties`, `unevaluatedProperties`
//! or `patternProperties` anywhere in its parts is left as written, and so
//! is what sits under `not`, `if` and `contains`, whose meaning closing
//! would invert or shift.

use serde_json::{json, Map, Value};

use super::refs::each_subschema_mut;
use super::spec::Version;

pub fn close(schema: &mut Value, version: Version) {
    close_at(schema, version, true);
}

/// Keywords whose subschemas describe another place in the instance (a
/// property's value, an item): each is an object of its own.
fn moves(keyword: &str) -> bool {
    matches!(
        keyword,
        "properties"
            | "patternProperties"
            | "additionalProperties"
            | "unevaluatedProperties"
            | "items"
            | "prefixItems"
            | "additionalItems"
            | "unevaluatedItems"
            | "$defs"
            | "definitions"
    )
}

/// In-place keywords whose subschemas are parts of the same object.
fn part_of(keyword: &str) -> bool {
    matches!(
        keyword,
        "allOf" | "anyOf" | "oneOf" | "then" | "else" | "dependentSchemas" | "dependencies"
    )
}

fn close_at(schema: &mut Value, version: Version, own_place: bool) {
    let Value::Object(object) = schema else {
        return;
    };
    if own_place {
        close_object(object, version);
    }
    let _ = each_subschema_mut(object, &mut |keyword, child, _| {
        if moves(keyword) {
            close_at(child, version, true);
        } else if part_of(keyword) {
            close_at(child, version, false);
        }
        Ok(())
    });
}

/// The object and its in-place parts, recursively.
fn parts<'a>(object: &'a Map<String, Value>, out: &mut Vec<&'a Map<String, Value>>) {
    out.push(object);
    for (keyword, value) in object {
        if !part_of(keyword) {
            continue;
        }
        match value {
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_object)
                .for_each(|m| parts(m, out)),
            Value::Object(m) if keyword == "then" || keyword == "else" => parts(m, out),
            Value::Object(m) => m
                .values()
                .filter_map(Value::as_object)
                .for_each(|m| parts(m, out)),
            _ => {}
        }
    }
}

fn close_object(object: &mut Map<String, Value>, version: Version) {
    let mut all = Vec::new();
    parts(object, &mut all);
    let open = all.iter().any(|p| {
        p.contains_key("additionalProperties")
            || p.contains_key("unevaluatedProperties")
            || p.contains_key("patternProperties")
    });
    let mut declared: Vec<String> = Vec::new();
    for p in &all {
        if let Some(Value::Object(props)) = p.get("properties") {
            for name in props.keys() {
                if !declared.contains(name) {
                    declared.push(name.clone());
                }
            }
        }
    }
    if open || declared.is_empty() {
        return;
    }
    let composed = all.len() > 1;
    let referenced = all.iter().any(|p| p.contains_key("$ref"));
    if !composed && !referenced {
        object.insert("additionalProperties".into(), Value::Bool(false));
        return;
    }
    match version {
        Version::V31 => {
            object.insert("unevaluatedProperties".into(), Value::Bool(false));
        }
        // A referenced (recursive) part's properties cannot be listed here.
        Version::V30 if referenced => {}
        Version::V30 => {
            let names = json!({"enum": declared});
            if object.contains_key("propertyNames") {
                let extra = json!({ "propertyNames": names });
                match object.get_mut("allOf") {
                    Some(Value::Array(all)) => all.push(extra),
                    _ => {
                        object.insert("allOf".into(), json!([extra]));
                    }
                }
            } else {
                object.insert("propertyNames".into(), names);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(mut s: Value, version: Version) -> Value {
        close(&mut s, version);
        s
    }

    #[test]
    fn plain_objects_are_closed_at_every_level() {
        let s = closed(
            json!({"type": "object", "properties": {
                "owner": {"type": "object", "properties": {"name": {}}},
                "tags": {"type": "array", "items": {"properties": {"v": {}}}},
                "meta": {"type": "object", "additionalProperties": {"type": "string"}}}}),
            Version::V30,
        );
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["owner"]["additionalProperties"], false);
        assert_eq!(
            s["properties"]["tags"]["items"]["additionalProperties"],
            false
        );
        assert_eq!(
            s["properties"]["meta"]["additionalProperties"],
            json!({"type": "string"})
        );
    }

    #[test]
    fn composed_objects_use_unevaluated_properties_in_3_1() {
        let s = closed(
            json!({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}),
            Version::V31,
        );
        assert_eq!(
            s,
            json!({"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}],
                   "unevaluatedProperties": false})
        );
    }

    #[test]
    fn composed_objects_list_their_property_names_in_3_0() {
        let s = closed(
            json!({"properties": {"kind": {}},
                   "allOf": [{"properties": {"a": {}}}, {"oneOf": [{"properties": {"b": {}}}]}]}),
            Version::V30,
        );
        assert_eq!(s["propertyNames"], json!({"enum": ["kind", "a", "b"]}));
        assert!(s["allOf"][0].get("additionalProperties").is_none());
    }

    #[test]
    fn explicitly_open_objects_and_negations_are_left_alone() {
        let open = json!({"allOf": [{"properties": {"a": {}}}, {"additionalProperties": true}]});
        assert_eq!(closed(open.clone(), Version::V31), open);
        let negated = json!({"not": {"properties": {"a": {"properties": {"b": {}}}}}});
        assert_eq!(closed(negated.clone(), Version::V30), negated);
        assert_eq!(
            closed(json!({"type": "string"}), Version::V30),
            json!({"type": "string"})
        );
    }
}
