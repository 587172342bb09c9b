//! request-validation's portcullis extension: `query_schema` and
//! `path_schema`, JSON Schemas for the query arguments and the route's path
//! parameters (APISIX's plugin has only `header_schema` and `body_schema`).
//!
//! Both are validated as an object of decoded names and values, as
//! `x-www-form-urlencoded` bodies are: a repeated query name is an array, a
//! name without `=` is `true`. Query strings and paths carry only text, so a
//! value is read as the property's own `type` asks — an integer, a number, a
//! boolean, or an array of those — when the text is one; otherwise it stays
//! a string and the schema refuses it. That is what OpenAPI's parameter
//! serialisation (`style: form`, `explode: true`; `style: simple` in paths)
//! means, and what `portcullis openapi import` writes.

use jsonschema::Validator;
use portcullis_core::{ConfigError, RequestState};
use serde_json::{Map, Number, Value};

/// A compiled parameter schema and how to read each property's text.
pub(super) struct ParamSchema {
    pub(super) validator: Validator,
    readings: Vec<(String, Reading)>,
}

/// What a parameter's text is read as before validation.
#[derive(Debug, Clone, PartialEq)]
enum Reading {
    Scalar(Scalars),
    /// Every value an element; one value becomes a one-element array.
    Array(Scalars),
}

/// The scalar types a property admits besides strings, in the order tried.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Scalars {
    integer: bool,
    number: bool,
    boolean: bool,
}

impl Scalars {
    fn of(schema: &Value) -> Scalars {
        let mut s = Scalars::default();
        for t in types(schema) {
            match t {
                "integer" => s.integer = true,
                "number" => s.number = true,
                "boolean" => s.boolean = true,
                _ => {}
            }
        }
        s
    }

    fn any(self) -> bool {
        self.integer || self.number || self.boolean
    }

    fn read(self, text: &str) -> Option<Value> {
        if self.integer {
            if let Ok(i) = text.parse::<i64>() {
                return Some(Value::from(i));
            }
        }
        if self.number || self.integer {
            // Only plain decimal forms; `NaN`, `inf` and `0x..` stay text.
            let plain = !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
            if plain {
                if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
                    return Some(Value::Number(n));
                }
            }
        }
        if self.boolean {
            match text {
                "true" => return Some(Value::Bool(true)),
                "false" => return Some(Value::Bool(false)),
                _ => {}
            }
        }
        None
    }
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

impl ParamSchema {
    pub(super) fn new(validator: Validator, schema: &Value) -> ParamSchema {
        let readings = schema
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(name, prop)| {
                let reading = if types(prop).contains(&"array") {
                    let items = prop.get("items").map(Scalars::of).unwrap_or_default();
                    Reading::Array(items)
                } else {
                    let s = Scalars::of(prop);
                    if !s.any() {
                        return None;
                    }
                    Reading::Scalar(s)
                };
                Some((name.clone(), reading))
            })
            .collect();
        ParamSchema {
            validator,
            readings,
        }
    }

    /// The object to validate: `raw` (names to text, `true` or arrays) with
    /// each property read as its schema asks.
    fn typed(&self, mut raw: Map<String, Value>) -> Value {
        for (name, reading) in &self.readings {
            let Some(v) = raw.get_mut(name) else { continue };
            match reading {
                Reading::Scalar(s) => {
                    if let Some(typed) = v.as_str().and_then(|t| s.read(t)) {
                        *v = typed;
                    }
                }
                Reading::Array(s) => {
                    let items = match v.take() {
                        Value::Array(items) => items,
                        one => vec![one],
                    };
                    *v = Value::Array(
                        items
                            .into_iter()
                            .map(|item| match item.as_str().and_then(|t| s.read(t)) {
                                Some(typed) => typed,
                                None => item,
                            })
                            .collect(),
                    );
                }
            }
        }
        Value::Object(raw)
    }

    pub(super) fn query_object(&self, req: &RequestState) -> Value {
        let raw = match super::decode_form(req.query().unwrap_or("").as_bytes()) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self.typed(raw)
    }

    pub(super) fn path_object(&self, req: &RequestState) -> Value {
        let raw = req
            .path_params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(decode_segment(v))))
            .collect();
        self.typed(raw)
    }
}

/// A path segment's `%XX` escapes decoded (`+` is itself in a path);
/// invalid UTF-8 is replaced, as the value is only validated.
fn decode_segment(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parameter schemas describe an object of names; anything else is a
/// mistake worth naming at load time.
pub(super) fn check_shape(field: &str, schema: &Value) -> Result<(), ConfigError> {
    match schema.get("type") {
        None => Ok(()),
        Some(Value::String(t)) if t == "object" => Ok(()),
        Some(_) => Err(ConfigError::new(
            format!("{field}.type"),
            "must be \"object\": parameters are validated as an object of names",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema(s: Value) -> ParamSchema {
        let v = jsonschema::options().offline().build(&s).unwrap();
        ParamSchema::new(v, &s)
    }

    fn raw(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn text_is_read_as_the_property_type_asks() {
        let p = schema(json!({"properties": {
            "limit": {"type": "integer"},
            "ratio": {"type": ["number", "null"]},
            "flag": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "integer"}},
            "name": {"type": "string"}}}));
        let typed = p.typed(raw(json!({
            "limit": "10", "ratio": "0.5", "flag": "false",
            "tags": "3", "name": "42", "other": "7"})));
        assert_eq!(
            typed,
            json!({"limit": 10, "ratio": 0.5, "flag": false, "tags": [3],
                   "name": "42", "other": "7"})
        );
    }

    #[test]
    fn text_that_is_not_of_the_type_stays_text() {
        let p = schema(json!({"properties": {
            "limit": {"type": "integer"}, "ratio": {"type": "number"}}}));
        let typed = p.typed(raw(json!({"limit": "ten", "ratio": "NaN"})));
        assert_eq!(typed, json!({"limit": "ten", "ratio": "NaN"}));
        let typed = p.typed(raw(json!({"limit": ["1", "2"]})));
        assert_eq!(typed, json!({"limit": ["1", "2"]}));
    }

    #[test]
    fn path_segments_are_percent_decoded_without_plus_as_space() {
        assert_eq!(decode_segment("a%20b+c"), "a b+c");
        assert_eq!(decode_segment("100%"), "100%");
        assert_eq!(decode_segment("%4"), "%4");
        assert_eq!(decode_segment("%e2%82%ac"), "€");
    }
}
