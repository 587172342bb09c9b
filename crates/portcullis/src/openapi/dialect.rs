//! OpenAPI's schema dialect into plain JSON Schema (draft 7 for 3.0,
//! 2020-12 for 3.1), on a schema whose references are already inlined:
//! - `nullable: true` becomes a `type` union with `"null"` (and `null` in
//!   an `enum`);
//! - 3.0's boolean `exclusiveMinimum`/`exclusiveMaximum` become numbers;
//! - OpenAPI-only and annotation keywords (`discriminator`, `xml`,
//!   `example`, `externalDocs`, `x-*`, descriptions) are dropped, and so are
//!   `$id`/`$anchor`/`$schema` inside, which would move the base of the
//!   local references;
//! - a `readOnly` property is not required in a request (OpenAPI: "required
//!   takes effect on the response only"); with `--strict` it is refused, as
//!   a client has no business setting it (mass assignment).

use serde_json::{Map, Value};

#[cfg(test)]
use super::refs::each_subschema_mut;
use super::spec::Version;
use super::SpecError;

fn dropped(keyword: &str) -> bool {
    matches!(
        keyword,
        "discriminator"
            | "xml"
            | "example"
            | "examples"
            | "externalDocs"
            | "description"
            | "title"
            | "summary"
            | "deprecated"
            | "$comment"
            | "$id"
            | "$anchor"
            | "$dynamicAnchor"
            | "$schema"
            | "$vocabulary"
    ) || keyword.starts_with("x-")
}

/// Convert `schema` (found at `at`) and everything under it in place.
#[cfg(test)]
pub fn convert(
    schema: &mut Value,
    version: Version,
    strict: bool,
    at: &str,
) -> Result<(), SpecError> {
    let object = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(m) => m,
        _ => {
            return Err(SpecError::new(
                at,
                "a schema must be an object or a boolean",
            ))
        }
    };
    let marked = |s: &Value| s.get("readOnly") == Some(&Value::Bool(true));
    convert_node(object, version, strict, at, &marked)?;
    each_subschema_mut(object, &mut |_, child, suffix| {
        convert(child, version, strict, &format!("{at}/{suffix}"))
    })
}

/// Convert one schema object, not what is under it; `read_only` tells
/// whether a property's schema (perhaps a reference) is marked `readOnly`.
/// Runs before the subschemas are converted, while their marks are there.
pub fn convert_node(
    object: &mut Map<String, Value>,
    version: Version,
    strict: bool,
    at: &str,
    read_only: &dyn Fn(&Value) -> bool,
) -> Result<(), SpecError> {
    if object.contains_key("$dynamicRef") || object.contains_key("$recursiveRef") {
        return Err(SpecError::new(
            at,
            "$dynamicRef is not supported: use a local $ref",
        ));
    }
    object.retain(|k, _| !dropped(k));
    if let Some(nullable) = object.remove("nullable") {
        if nullable == Value::Bool(true) {
            allow_null(object);
        }
    }
    if version == Version::V30 {
        exclusive_bound(object, "exclusiveMinimum", "minimum");
        exclusive_bound(object, "exclusiveMaximum", "maximum");
    }
    read_only_properties(object, strict, read_only);
    for keyword in ["readOnly", "writeOnly"] {
        object.remove(keyword);
    }
    Ok(())
}

fn allow_null(object: &mut Map<String, Value>) {
    let null = Value::String("null".into());
    match object.get_mut("type") {
        Some(Value::String(t)) => {
            let t = Value::String(std::mem::take(t));
            object.insert("type".into(), Value::Array(vec![t, null]));
        }
        Some(Value::Array(types)) => {
            if !types.contains(&null) {
                types.push(null);
            }
        }
        // Without a type, 3.0 says nullable changes nothing.
        _ => return,
    }
    if let Some(Value::Array(values)) = object.get_mut("enum") {
        if !values.contains(&Value::Null) {
            values.push(Value::Null);
        }
    }
}

/// Draft 4's `exclusiveMinimum: true` beside `minimum` is draft 7's
/// `exclusiveMinimum: <minimum>`.
fn exclusive_bound(object: &mut Map<String, Value>, exclusive: &str, bound: &str) {
    if !matches!(object.get(exclusive), Some(Value::Bool(_))) {
        return;
    }
    let on = object.remove(exclusive) == Some(Value::Bool(true));
    if on {
        if let Some(limit) = object.remove(bound) {
            object.insert(exclusive.into(), limit);
        }
    }
}

fn read_only_properties(
    object: &mut Map<String, Value>,
    strict: bool,
    marked: &dyn Fn(&Value) -> bool,
) {
    let read_only: Vec<String> = match object.get("properties") {
        Some(Value::Object(props)) => props
            .iter()
            .filter(|(_, s)| marked(s))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => return,
    };
    if read_only.is_empty() {
        return;
    }
    if let Some(Value::Array(required)) = object.get_mut("required") {
        required.retain(|name| {
            !name
                .as_str()
                .is_some_and(|n| read_only.iter().any(|r| r == n))
        });
        if required.is_empty() {
            object.remove("required");
        }
    }
    if strict {
        if let Some(Value::Object(props)) = object.get_mut("properties") {
            for name in &read_only {
                props.insert(name.clone(), Value::Bool(false));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn converted(mut s: Value, version: Version) -> Value {
        convert(&mut s, version, false, "").unwrap();
        s
    }

    #[test]
    fn nullable_becomes_a_type_union_and_admits_null_in_an_enum() {
        assert_eq!(
            converted(
                json!({"type": "string", "nullable": true, "enum": ["a"]}),
                Version::V30
            ),
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
        assert_eq!(
            converted(json!({"type": "string", "nullable": false}), Version::V30),
            json!({"type": "string"})
        );
        assert_eq!(
            converted(json!({"nullable": true}), Version::V30),
            json!({})
        );
    }

    #[test]
    fn draft_4_exclusive_bounds_become_numbers_in_3_0() {
        assert_eq!(
            converted(
                json!({"type": "integer", "minimum": 1, "exclusiveMinimum": true,
                       "maximum": 9, "exclusiveMaximum": false}),
                Version::V30
            ),
            json!({"type": "integer", "exclusiveMinimum": 1, "maximum": 9})
        );
        assert_eq!(
            converted(json!({"exclusiveMinimum": 1}), Version::V31),
            json!({"exclusiveMinimum": 1})
        );
    }

    #[test]
    fn openapi_keywords_go_and_read_only_properties_are_not_required() {
        let s = converted(
            json!({"type": "object", "required": ["id", "name"], "discriminator": {"propertyName": "kind"},
                   "xml": {"name": "pet"}, "example": {"id": 1}, "x-internal": true,
                   "properties": {
                       "id": {"type": "integer", "readOnly": true},
                       "name": {"type": "string", "description": "the name", "externalDocs": {}},
                       "description": {"type": "string"}}}),
            Version::V30,
        );
        assert_eq!(
            s,
            json!({"type": "object", "required": ["name"], "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"},
                "description": {"type": "string"}}})
        );
    }

    #[test]
    fn strict_refuses_read_only_properties_in_requests() {
        let mut s = json!({"type": "object", "required": ["id"],
            "properties": {"id": {"type": "integer", "readOnly": true}}});
        convert(&mut s, Version::V31, true, "").unwrap();
        assert_eq!(s, json!({"type": "object", "properties": {"id": false}}));
    }

    #[test]
    fn literal_values_are_left_alone_and_non_schemas_are_named() {
        let s = converted(
            json!({"enum": [{"nullable": true, "x-a": 1}], "default": {"xml": 1}}),
            Version::V30,
        );
        assert_eq!(
            s,
            json!({"enum": [{"nullable": true, "x-a": 1}], "default": {"xml": 1}})
        );
        let mut bad = json!({"properties": {"a": 5}});
        assert_eq!(
            convert(&mut bad, Version::V31, false, "/s")
                .unwrap_err()
                .pointer,
            "/s/properties/a"
        );
    }
}
