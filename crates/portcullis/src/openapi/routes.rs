//! One route per operation: the path template as an APISIX uri, the
//! operation's method, a stable id, and a request-validation plugin built
//! from its parameters and JSON request body.

use serde_json::{json, Map, Value};

use super::refs::{follow, Inliner};
use super::spec::{Spec, Version};
use super::{escape, strict, SpecError};

/// OpenAPI's operation keys, in the order routes are written.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// APISIX's id rule: `^[a-zA-Z0-9-_.]+$`, at most 64 characters.
const MAX_ID: usize = 64;
/// APISIX's limit on a route name.
const MAX_NAME: usize = 256;
/// The label that marks a route as imported; its value names the operation.
pub const LABEL: &str = "openapi_operation";
/// The label naming the upstream an imported route was made for.
pub const UPSTREAM_LABEL: &str = "openapi_upstream";

pub struct Options {
    pub upstream_id: String,
    pub id_prefix: String,
    pub strict: bool,
}

#[derive(Debug)]
pub struct Imported {
    pub routes: Vec<Value>,
    pub warnings: Vec<String>,
}

pub fn check_id(what: &str, id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        anyhow::bail!("{what} \"{id}\" must be 1-64 of a-z A-Z 0-9 - _ .");
    }
    Ok(())
}

pub fn generate(spec: &Spec, options: &Options) -> Result<Imported, SpecError> {
    let doc = &spec.doc;
    let paths = match doc.get("paths") {
        Some(Value::Object(p)) => p,
        Some(_) => return Err(SpecError::new("/paths", "must be an object")),
        None => {
            return Err(SpecError::new(
                "",
                "\"paths\" is missing: nothing to import",
            ))
        }
    };
    let mut out = Imported {
        routes: Vec::new(),
        warnings: Vec::new(),
    };
    let mut ids: Vec<(String, String)> = Vec::new();
    for (path, item) in paths {
        let at = format!("/paths/{}", escape(path));
        if path.starts_with("x-") {
            continue;
        }
        let (item, item_at) = follow(doc, item, &at)?;
        let Value::Object(item) = item else {
            return Err(SpecError::new(at, "a path item must be an object"));
        };
        let template = Template::parse(path, &at)?;
        let shared = params_of(
            doc,
            item.get("parameters"),
            &format!("{item_at}/parameters"),
        )?;
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let op_at = format!("{item_at}/{method}");
            let Value::Object(op) = op else {
                return Err(SpecError::new(op_at, "an operation must be an object"));
            };
            let own = params_of(doc, op.get("parameters"), &format!("{op_at}/parameters"))?;
            let params = merge_params(shared.clone(), own);
            let operation = Operation {
                spec,
                options,
                method,
                path,
                at: &op_at,
                op,
                template: &template,
                params: &params,
            };
            let route = operation.route(&mut out.warnings)?;
            let id = route["id"].as_str().unwrap_or_default().to_string();
            if let Some((_, other)) = ids.iter().find(|(i, _)| *i == id) {
                return Err(SpecError::new(
                    op_at,
                    format!("its route id \"{id}\" is also the id of #{other}: give the operations distinct operationIds"),
                ));
            }
            ids.push((id, op_at.clone()));
            out.routes.push(route);
        }
    }
    if out.routes.is_empty() {
        return Err(SpecError::new("/paths", "the document has no operations"));
    }
    if let Some(at) = env_reference(&Value::Array(out.routes.clone()), "") {
        return Err(SpecError::new(
            "",
            format!("the routes would hold \"${{\" at {at}: the config loader reads it as an environment variable"),
        ));
    }
    Ok(out)
}

/// Where a string holding `${` sits in `value`, if anywhere.
fn env_reference(value: &Value, at: &str) -> Option<String> {
    match value {
        Value::String(s) if s.contains("${") => Some(at.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| env_reference(v, &format!("{at}/{i}"))),
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            let here = format!("{at}/{}", escape(k));
            if k.contains("${") {
                Some(here)
            } else {
                env_reference(v, &here)
            }
        }),
        _ => None,
    }
}

/// A path template as an APISIX uri: `{name}` segments become `:name`.
struct Template {
    uri: String,
    /// The document's name of each path parameter → the uri's.
    params: Vec<(String, String)>,
}

impl Template {
    fn parse(path: &str, at: &str) -> Result<Template, SpecError> {
        if !path.starts_with('/') {
            return Err(SpecError::new(at, "a path must start with '/'"));
        }
        let mut params: Vec<(String, String)> = Vec::new();
        let mut segments = Vec::new();
        for segment in path[1..].split('/') {
            if segment.contains('{') || segment.contains('}') {
                let name = segment
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .filter(|n| !n.is_empty() && !n.contains(['{', '}']))
                    .ok_or_else(|| {
                        SpecError::new(
                            at,
                            format!("segment \"{segment}\": a path parameter must be a whole segment (APISIX matches /:name segments)"),
                        )
                    })?;
                let routed: String = name
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                if params.iter().any(|(n, r)| n == name || *r == routed) {
                    return Err(SpecError::new(
                        at,
                        format!("path parameter \"{name}\" appears twice"),
                    ));
                }
                segments.push(format!(":{routed}"));
                params.push((name.to_string(), routed));
            } else if segment.starts_with(':') || segment.contains('*') {
                return Err(SpecError::new(
                    at,
                    format!(
                        "segment \"{segment}\" would be read as an APISIX parameter or wildcard"
                    ),
                ));
            } else {
                segments.push(segment.to_string());
            }
        }
        Ok(Template {
            uri: format!("/{}", segments.join("/")),
            params,
        })
    }
}

#[derive(Clone)]
struct Param {
    name: String,
    location: String,
    at: String,
    value: Map<String, Value>,
}

fn params_of(doc: &Value, list: Option<&Value>, at: &str) -> Result<Vec<Param>, SpecError> {
    let items = match list {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(SpecError::new(at, "must be a list")),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let (item, item_at) = follow(doc, item, &format!("{at}/{i}"))?;
        let Value::Object(value) = item else {
            return Err(SpecError::new(item_at, "a parameter must be an object"));
        };
        let name = match value.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            _ => {
                return Err(SpecError::new(
                    format!("{item_at}/name"),
                    "must be a non-empty string",
                ))
            }
        };
        let location = match value.get("in").and_then(Value::as_str) {
            Some(l @ ("path" | "query" | "header" | "cookie")) => l.to_string(),
            _ => {
                return Err(SpecError::new(
                    format!("{item_at}/in"),
                    "must be one of path, query, header, cookie",
                ))
            }
        };
        out.push(Param {
            name,
            location,
            at: item_at,
            value: value.clone(),
        });
    }
    Ok(out)
}

/// An operation's parameters override the path item's of the same name and
/// location.
fn merge_params(shared: Vec<Param>, own: Vec<Param>) -> Vec<Param> {
    let mut out: Vec<Param> = shared
        .into_iter()
        .filter(|s| {
            !own.iter()
                .any(|o| o.name == s.name && o.location == s.location)
        })
        .collect();
    out.extend(own);
    out
}

struct Operation<'a> {
    spec: &'a Spec,
    options: &'a Options,
    method: &'a str,
    path: &'a str,
    at: &'a str,
    op: &'a Map<String, Value>,
    template: &'a Template,
    params: &'a [Param],
}

impl Operation<'_> {
    fn route(&self, warnings: &mut Vec<String>) -> Result<Value, SpecError> {
        let operation_id = match self.op.get("operationId") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
            Some(_) => {
                return Err(SpecError::new(
                    format!("{}/operationId", self.at),
                    "must be a non-empty string",
                ))
            }
        };
        let key = match operation_id {
            Some(id) => id.to_string(),
            None => format!("{}-{}", self.method, self.path),
        };
        let id = route_id(&self.options.id_prefix, &key);
        let method = self.method.to_ascii_uppercase();
        let name = self
            .op
            .get("summary")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                operation_id.map_or_else(|| format!("{method} {}", self.path), str::to_string)
            });
        let mut route = Map::new();
        route.insert("id".into(), json!(id));
        route.insert("name".into(), json!(cut(name.trim(), MAX_NAME)));
        route.insert("uri".into(), json!(self.template.uri));
        route.insert("methods".into(), json!([method]));
        route.insert("upstream_id".into(), json!(self.options.upstream_id));
        route.insert(
            "labels".into(),
            json!({ LABEL: label_value(&key), UPSTREAM_LABEL: self.options.upstream_id }),
        );
        let validation = self.validation(warnings)?;
        if !validation.is_empty() {
            route.insert(
                "plugins".into(),
                json!({ "request-validation": validation }),
            );
        }
        Ok(Value::Object(route))
    }

    fn warn(&self, warnings: &mut Vec<String>, at: &str, message: &str) {
        warnings.push(format!(
            "#{at} ({} {}): {message}",
            self.method.to_ascii_uppercase(),
            self.path
        ));
    }

    /// request-validation's config; empty when there is nothing to check.
    fn validation(&self, warnings: &mut Vec<String>) -> Result<Map<String, Value>, SpecError> {
        let mut conf = Map::new();
        let version = self.spec.version;
        let strict = self.options.strict;

        // Path parameters: every template name is one.
        let mut path = ParamSet::new(self.spec, strict);
        for (name, routed) in &self.template.params {
            match self
                .params
                .iter()
                .find(|p| p.location == "path" && p.name == *name)
            {
                Some(p) => {
                    let schema = self.param_schema(p, "simple", &mut path, warnings)?;
                    path.add(routed, schema, true);
                }
                None => {
                    self.warn(
                        warnings,
                        self.at,
                        &format!("path parameter \"{name}\" is not declared; any text is accepted"),
                    );
                    path.add(routed, Value::Object(Map::new()), true);
                }
            }
        }
        for p in self.params.iter().filter(|p| p.location == "path") {
            if !self.template.params.iter().any(|(n, _)| *n == p.name) {
                return Err(SpecError::new(
                    p.at.clone(),
                    format!("path parameter \"{}\" is not in the path template", p.name),
                ));
            }
        }
        if let Some(schema) = path.finish(version, false) {
            conf.insert("path_schema".into(), schema);
        }

        let mut query = ParamSet::new(self.spec, strict);
        for p in self.params.iter().filter(|p| p.location == "query") {
            let schema = self.param_schema(p, "form", &mut query, warnings)?;
            query.add(&p.name, schema, required(p));
        }
        if let Some(schema) = query.finish(version, strict) {
            conf.insert("query_schema".into(), schema);
        }

        let mut headers = ParamSet::new(self.spec, strict);
        for p in self.params.iter().filter(|p| p.location == "header") {
            let name = p.name.to_ascii_lowercase();
            // OpenAPI: these three are described elsewhere and ignored here.
            if matches!(name.as_str(), "accept" | "content-type" | "authorization") {
                continue;
            }
            let schema = self.param_schema(p, "simple", &mut headers, warnings)?;
            // Header values are validated as text: only a string schema
            // says more than whether the header is there.
            let types = types_of(&schema);
            let schema = if types.is_empty() || types == ["string"] {
                schema
            } else {
                Value::Object(Map::new())
            };
            headers.add(&name, schema, required(p));
        }
        if let Some(schema) = headers.finish(version, false) {
            conf.insert("header_schema".into(), schema);
        }
        for p in self.params.iter().filter(|p| p.location == "cookie") {
            self.warn(
                warnings,
                &p.at,
                &format!("cookie parameter \"{}\" is not validated", p.name),
            );
        }

        if let Some(body) = self.body_schema(warnings)? {
            conf.insert("body_schema".into(), body);
        }
        Ok(conf)
    }

    /// A parameter's schema, inlined and converted; `{}` (any value) when
    /// its serialisation is one request-validation cannot read.
    fn param_schema(
        &self,
        p: &Param,
        default_style: &str,
        set: &mut ParamSet<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<Value, SpecError> {
        let Some(schema) = p.value.get("schema") else {
            if p.value.contains_key("content") {
                self.warn(warnings, &p.at, &format!("parameter \"{}\" is described by content, not schema: only its presence is checked", p.name));
            }
            return Ok(Value::Object(Map::new()));
        };
        let schema = set.inliner.inline(schema, &format!("{}/schema", p.at))?;
        let schema = hoist_type(schema);
        let types = types_of(&schema);
        let style = p
            .value
            .get("style")
            .and_then(Value::as_str)
            .unwrap_or(default_style);
        let explode = p
            .value
            .get("explode")
            .and_then(Value::as_bool)
            .unwrap_or(style == "form");
        let readable = match p.location.as_str() {
            "query" => {
                style == "form"
                    && !types.contains(&"object")
                    && (explode || !types.contains(&"array"))
            }
            _ => style == "simple" && !types.contains(&"object") && !types.contains(&"array"),
        };
        if !readable {
            self.warn(
                warnings,
                &p.at,
                &format!("parameter \"{}\" (style {style}, explode {explode}, type {types:?}) cannot be read by request-validation: only its presence is checked", p.name),
            );
            return Ok(Value::Object(Map::new()));
        }
        Ok(schema)
    }

    fn body_schema(&self, warnings: &mut Vec<String>) -> Result<Option<Value>, SpecError> {
        let Some(body) = self.op.get("requestBody") else {
            return Ok(None);
        };
        let (body, body_at) = follow(&self.spec.doc, body, &format!("{}/requestBody", self.at))?;
        let Value::Object(body) = body else {
            return Err(SpecError::new(body_at, "a request body must be an object"));
        };
        let content = match body.get("content") {
            Some(Value::Object(c)) => c,
            _ => {
                return Err(SpecError::new(
                    format!("{body_at}/content"),
                    "must be an object",
                ))
            }
        };
        let json = content.iter().find(|(media, _)| is_json(media));
        let Some((media, media_type)) = json else {
            if !content.is_empty() {
                self.warn(
                    warnings,
                    &body_at,
                    "no JSON media type: the body is not validated",
                );
            }
            return Ok(None);
        };
        let media_at = format!("{body_at}/content/{}", escape(media));
        let Some(schema) = media_type.get("schema") else {
            return Ok(None);
        };
        if content.len() > 1 {
            self.warn(warnings, &body_at, &format!("only {media} is validated; request-validation refuses bodies of other media types"));
        }
        if body.get("required") != Some(&Value::Bool(true)) {
            self.warn(
                warnings,
                &body_at,
                "the body is optional in the document but request-validation refuses an empty body",
            );
        }
        let mut inliner = Inliner::new(&self.spec.doc, self.spec.version, self.options.strict);
        let schema = inliner.inline(schema, &format!("{media_at}/schema"))?;
        let mut schema = Value::Object(inliner.finish(schema));
        if self.options.strict {
            strict::close(&mut schema, self.spec.version);
        }
        Ok(Some(with_dialect(schema, self.spec.version)))
    }
}

fn required(p: &Param) -> bool {
    p.value.get("required") == Some(&Value::Bool(true))
}

fn is_json(media: &str) -> bool {
    let media = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media.ends_with("+json")
}

/// The parameters of one location, written as one object schema.
struct ParamSet<'d> {
    inliner: Inliner<'d>,
    properties: Map<String, Value>,
    required: Vec<String>,
}

impl<'d> ParamSet<'d> {
    fn new(spec: &'d Spec, strict: bool) -> ParamSet<'d> {
        ParamSet {
            inliner: Inliner::new(&spec.doc, spec.version, strict),
            properties: Map::new(),
            required: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, schema: Value, required: bool) {
        self.properties.insert(name.to_string(), schema);
        if required && !self.required.iter().any(|r| r == name) {
            self.required.push(name.to_string());
        }
    }

    /// `None` when no parameter of this location says anything.
    fn finish(self, version: Version, close: bool) -> Option<Value> {
        let says_something = !self.required.is_empty()
            || self
                .properties
                .values()
                .any(|s| !matches!(s, Value::Object(m) if m.is_empty()));
        if !says_something && !close {
            return None;
        }
        let mut root = Map::new();
        root.insert("type".into(), json!("object"));
        if !self.required.is_empty() {
            root.insert("required".into(), json!(self.required));
        }
        root.insert("properties".into(), Value::Object(self.properties));
        if close {
            // Parameters are scalars or arrays: only the set itself closes.
            root.insert("additionalProperties".into(), Value::Bool(false));
        }
        let schema = Value::Object(self.inliner.finish(Value::Object(root)));
        Some(with_dialect(schema, version))
    }
}

/// `$schema` first, so request-validation compiles the schema in the
/// document's dialect.
fn with_dialect(schema: Value, version: Version) -> Value {
    let mut out = Map::new();
    out.insert("$schema".into(), json!(version.dialect_uri()));
    if let Value::Object(m) = schema {
        out.extend(m);
    }
    Value::Object(out)
}

fn types_of(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// request-validation reads a parameter's text by the schema's own `type`.
/// A schema that types it only through `allOf`/`anyOf`/`oneOf` branches
/// gets their union beside them: implied by the branches, so it refuses
/// nothing they accept.
fn hoist_type(mut schema: Value) -> Value {
    let Value::Object(object) = &mut schema else {
        return schema;
    };
    if object.contains_key("type") {
        return schema;
    }
    let mut union: Vec<String> = Vec::new();
    for keyword in ["allOf", "anyOf", "oneOf"] {
        let Some(Value::Array(branches)) = object.get(keyword) else {
            continue;
        };
        let mut all_typed = true;
        let mut these: Vec<String> = Vec::new();
        for b in branches {
            let b = hoist_type(b.clone());
            let ts = types_of(&b);
            if ts.is_empty() {
                all_typed = false;
            }
            these.extend(ts.into_iter().map(str::to_string));
        }
        if all_typed && !branches.is_empty() {
            union.extend(these);
        }
    }
    union.sort();
    union.dedup();
    if !union.is_empty() {
        object.insert("type".into(), json!(union));
    }
    schema
}

/// A route id from an operation: the prefix and the operation's key with
/// anything outside APISIX's id alphabet as `-`; a key too long for 64
/// characters keeps its start and a hash of the whole, so it stays stable
/// and distinct.
fn route_id(prefix: &str, key: &str) -> String {
    let mut id = String::from(prefix);
    let mut last_dash = prefix.ends_with('-');
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            id.push(c);
            last_dash = false;
        } else if !last_dash {
            id.push('-');
            last_dash = true;
        }
    }
    let id = id.trim_end_matches('-').to_string();
    let id = if id.is_empty() {
        "operation".to_string()
    } else {
        id
    };
    if id.len() <= MAX_ID {
        return id;
    }
    let hash = format!("{:016x}", fnv1a(key.as_bytes()));
    format!("{}-{hash}", &id[..MAX_ID - hash.len() - 1])
}

/// FNV-1a, 64 bit: stable across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn label_value(key: &str) -> String {
    cut(&route_id("", key), MAX_ID)
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::super::spec::parse;
    use super::*;

    fn options(strict: bool) -> Options {
        Options {
            upstream_id: "pets".into(),
            id_prefix: String::new(),
            strict,
        }
    }

    fn import(yaml: &str, strict: bool) -> Result<Imported, SpecError> {
        generate(&parse(yaml).unwrap(), &options(strict))
    }

    const PETS: &str = r##"
openapi: 3.0.3
paths:
  /pets/{petId}:
    parameters:
      - { name: petId, in: path, required: true, schema: { type: integer, minimum: 1 } }
    get:
      operationId: getPet
      summary: Find a pet
      parameters:
        - { name: fields, in: query, schema: { type: array, items: { type: string } } }
        - { name: X-Request-Tag, in: header, required: true, schema: { type: string, maxLength: 8 } }
    put:
      parameters:
        - { $ref: '#/components/parameters/Dry' }
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: '#/components/schemas/Pet' }
components:
  parameters:
    Dry: { name: dry_run, in: query, required: true, schema: { type: boolean } }
  schemas:
    Pet:
      type: object
      required: [id, name]
      properties:
        id: { type: integer, readOnly: true }
        name: { type: string, nullable: true }
"##;

    #[test]
    fn each_operation_is_a_route_with_its_validation() {
        let out = import(PETS, false).unwrap();
        assert_eq!(out.routes.len(), 2);
        let get = &out.routes[0];
        assert_eq!(get["id"], "getPet");
        assert_eq!(get["name"], "Find a pet");
        assert_eq!(get["uri"], "/pets/:petId");
        assert_eq!(get["methods"], json!(["GET"]));
        assert_eq!(get["upstream_id"], "pets");
        assert_eq!(get["labels"][LABEL], "getPet");
        let v = &get["plugins"]["request-validation"];
        assert_eq!(
            v["path_schema"],
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                   "required": ["petId"], "properties": {"petId": {"type": "integer", "minimum": 1}}})
        );
        assert_eq!(v["query_schema"]["properties"]["fields"]["type"], "array");
        assert!(v["query_schema"].get("required").is_none());
        assert_eq!(v["header_schema"]["required"], json!(["x-request-tag"]));
        assert!(v.get("body_schema").is_none());

        let put = &out.routes[1];
        assert_eq!(put["id"], "put-pets-petId");
        assert_eq!(put["name"], "PUT /pets/{petId}");
        let v = &put["plugins"]["request-validation"];
        assert_eq!(v["query_schema"]["required"], json!(["dry_run"]));
        assert_eq!(
            v["body_schema"],
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                   "required": ["name"], "properties": {
                       "id": {"type": "integer"}, "name": {"type": ["string", "null"]}}})
        );
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }

    #[test]
    fn strict_closes_bodies_and_queries_and_refuses_read_only_fields() {
        let out = import(PETS, true).unwrap();
        let v = &out.routes[1]["plugins"]["request-validation"];
        assert_eq!(v["body_schema"]["additionalProperties"], false);
        assert_eq!(v["body_schema"]["properties"]["id"], false);
        assert_eq!(v["query_schema"]["additionalProperties"], false);
        assert!(v["path_schema"].get("additionalProperties").is_none());
    }

    #[test]
    fn route_ids_are_stable_valid_and_distinct() {
        assert_eq!(
            route_id("", "get-/pets/{petId}/toys"),
            "get-pets-petId-toys"
        );
        assert_eq!(route_id("shop-", "listPets"), "shop-listPets");
        let long = "x".repeat(100);
        let id = route_id("", &long);
        assert_eq!(id.len(), 64);
        assert_eq!(id, route_id("", &long));
        assert_ne!(id, route_id("", &format!("{long}y")));
        let e = import(
            "openapi: 3.1.0\npaths:\n  /a:\n    get: { operationId: same }\n  /b:\n    get: { operationId: same }\n",
            false,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/paths/~1b/get");
    }

    #[test]
    fn bad_documents_are_named_by_pointer() {
        let cases = [
            ("openapi: 3.1.0\n", ""),
            ("openapi: 3.1.0\npaths: []\n", "/paths"),
            ("openapi: 3.1.0\npaths: {}\n", "/paths"),
            ("openapi: 3.1.0\npaths:\n  /a/{id}.json:\n    get: {}\n", "/paths/~1a~1{id}.json"),
            ("openapi: 3.1.0\npaths:\n  /a:\n    get:\n      parameters: [{ name: x }]\n", "/paths/~1a/get/parameters/0/in"),
            ("openapi: 3.1.0\npaths:\n  /a:\n    get:\n      parameters: [{ name: x, in: path }]\n", "/paths/~1a/get/parameters/0"),
            ("openapi: 3.1.0\npaths:\n  /a:\n    post:\n      requestBody: { $ref: 'other.yaml#/B' }\n", "/paths/~1a/post/requestBody/$ref"),
            ("openapi: 3.1.0\npaths:\n  /a:\n    get:\n      parameters: [{ name: x, in: query, schema: { pattern: '^${x}' } }]\n", ""),
        ];
        for (doc, pointer) in cases {
            let e = import(doc, false)
                .err()
                .unwrap_or_else(|| panic!("accepted: {doc}"));
            assert_eq!(e.pointer, pointer, "{doc}: {e}");
        }
    }

    #[test]
    fn unreadable_parameters_are_checked_for_presence_only_with_a_warning() {
        let out = import(
            "openapi: 3.1.0\npaths:\n  /a:\n    get:\n      parameters:\n        - { name: ids, in: query, required: true, explode: false, schema: { type: array } }\n        - { name: sid, in: cookie }\n",
            false,
        )
        .unwrap();
        let q = &out.routes[0]["plugins"]["request-validation"]["query_schema"];
        assert_eq!(q["properties"]["ids"], json!({}));
        assert_eq!(q["required"], json!(["ids"]));
        assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
    }

    #[test]
    fn types_behind_compositions_are_hoisted_for_parameters() {
        assert_eq!(
            hoist_type(json!({"oneOf": [{"type": "integer"}, {"type": "boolean"}]})),
            json!({"oneOf": [{"type": "integer"}, {"type": "boolean"}], "type": ["boolean", "integer"]})
        );
        assert_eq!(
            hoist_type(json!({"anyOf": [{"type": "integer"}, {"minimum": 1}]})),
            json!({"anyOf": [{"type": "integer"}, {"minimum": 1}]})
        );
    }
}
