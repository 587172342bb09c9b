//! Reading the document: bounded in size, JSON or YAML into one JSON value,
//! and which OpenAPI version (so which JSON Schema dialect) it speaks.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use super::SpecError;

/// Larger documents are refused before they are parsed.
pub const MAX_SPEC_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// OpenAPI 3.0: schemas are an extended subset of JSON Schema draft 4/5,
    /// written out as draft 7.
    V30,
    /// OpenAPI 3.1: schemas are JSON Schema 2020-12.
    V31,
}

impl Version {
    /// The `$schema` the written schemas carry, so request-validation
    /// compiles them in the right dialect.
    pub fn dialect_uri(self) -> &'static str {
        match self {
            Version::V30 => "http://json-schema.org/draft-07/schema#",
            Version::V31 => "https://json-schema.org/draft/2020-12/schema",
        }
    }

    /// Where recursive schemas are kept inside a written schema.
    pub fn defs_keyword(self) -> &'static str {
        match self {
            Version::V30 => "definitions",
            Version::V31 => "$defs",
        }
    }
}

#[derive(Debug)]
pub struct Spec {
    pub doc: Value,
    pub version: Version,
}

pub fn read(path: &Path) -> anyhow::Result<Spec> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > MAX_SPEC_BYTES {
        anyhow::bail!(
            "{} is larger than {} MiB",
            path.display(),
            MAX_SPEC_BYTES >> 20
        );
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{} is not UTF-8: {e}", path.display()))?;
    parse(&text).with_context(|| format!("{} is not an OpenAPI 3 document", path.display()))
}

pub fn parse(text: &str) -> Result<Spec, SpecError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| SpecError::new("", format!("not valid JSON: {e}")))?
    } else {
        serde_norway::from_str(text)
            .map_err(|e| SpecError::new("", format!("not valid YAML: {e}")))?
    };
    if !doc.is_object() {
        return Err(SpecError::new("", "expected an object at the top level"));
    }
    if doc.get("swagger").is_some() {
        return Err(SpecError::new(
            "/swagger",
            "Swagger 2.0 is not supported: convert the document to OpenAPI 3 first",
        ));
    }
    let version = match doc.get("openapi") {
        Some(Value::String(v)) if v.starts_with("3.0.") || v == "3.0" => Version::V30,
        Some(Value::String(v)) if v.starts_with("3.1.") || v == "3.1" => Version::V31,
        Some(Value::String(v)) => {
            return Err(SpecError::new(
                "/openapi",
                format!("version \"{v}\" is not supported (expected 3.0.x or 3.1.x)"),
            ))
        }
        Some(_) => {
            return Err(SpecError::new(
                "/openapi",
                "must be a string such as \"3.1.0\"",
            ))
        }
        None => return Err(SpecError::new("", "\"openapi\" is missing")),
    };
    if let Some(dialect) = doc.get("jsonSchemaDialect") {
        if dialect.as_str() != Some(Version::V31.dialect_uri()) {
            return Err(SpecError::new(
                "/jsonSchemaDialect",
                "only JSON Schema 2020-12 (OpenAPI 3.1's default dialect) is supported",
            ));
        }
    }
    Ok(Spec { doc, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_documents_name_their_version() {
        let s = parse(r#"{"openapi": "3.0.3", "paths": {}}"#).unwrap();
        assert_eq!(s.version, Version::V30);
        let s = parse("openapi: 3.1.0\npaths: {}\n").unwrap();
        assert_eq!(s.version, Version::V31);
    }

    #[test]
    fn other_versions_and_shapes_are_refused_with_their_pointer() {
        assert_eq!(parse("swagger: '2.0'\n").unwrap_err().pointer, "/swagger");
        assert_eq!(parse("openapi: 4.0.0\n").unwrap_err().pointer, "/openapi");
        // Unquoted, YAML reads 3.1 as a number.
        assert_eq!(parse("openapi: 3.1\n").unwrap_err().pointer, "/openapi");
        assert_eq!(parse("openapi: '3.1'\n").unwrap().version, Version::V31);
        assert_eq!(parse("- a\n").unwrap_err().pointer, "");
        assert!(parse("{")
            .unwrap_err()
            .message
            .starts_with("not valid JSON"));
        let e = parse("openapi: 3.1.0\njsonSchemaDialect: https://example.com/d\n").unwrap_err();
        assert_eq!(e.pointer, "/jsonSchemaDialect");
    }
}
