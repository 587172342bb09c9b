//! `--into`: the imported routes merged into an existing config file. A
//! route with the same id is replaced where it stands, new ones are added at
//! the end, everything else is kept; the result is validated as `serve`
//! would before the file is replaced (in one rename), so a failed import
//! leaves the file as it was.
//!
//! The file is rewritten from its parsed form: values (and `${VAR}`
//! references) are kept, comments and formatting are not.

use std::path::Path;

use anyhow::{bail, Context};
use portcullis_config::Live;
use serde_json::Value;

use super::routes::{LABEL, UPSTREAM_LABEL};

pub struct Report {
    pub replaced: usize,
    pub added: usize,
    /// Routes imported earlier for the same upstream that this document no
    /// longer has.
    pub stale: Vec<String>,
}

pub fn into_file(path: &Path, routes: &[Value]) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (merged, report) =
        merge(&text, routes).with_context(|| format!("cannot merge into {}", path.display()))?;
    check(&merged).with_context(|| {
        format!(
            "the merged config does not validate; {} is unchanged",
            path.display()
        )
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let tmp = path.with_file_name(format!(".{name}.openapi-import.tmp"));
    std::fs::write(&tmp, &merged).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(report)
}

/// Validate a config text as `portcullis validate` does.
fn check(text: &str) -> anyhow::Result<()> {
    let errors = match portcullis_config::file::parse(text) {
        Ok(file) => match Live::default().check(file.resources) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        },
        Err(e) => e,
    };
    let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
    bail!("{} error(s):\n{}", errors.len(), list.join("\n"))
}

fn id_of(route: &Value) -> Option<String> {
    match route.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn merge(text: &str, routes: &[Value]) -> anyhow::Result<(String, Report)> {
    let mut doc: Value = serde_norway::from_str(text).context("not valid YAML")?;
    if doc.is_null() {
        doc = Value::Object(serde_json::Map::new());
    }
    let Value::Object(top) = &mut doc else {
        bail!("expected a mapping at the top level");
    };
    let existing = top
        .entry("routes")
        .or_insert_with(|| Value::Array(Vec::new()));
    if existing.is_null() {
        *existing = Value::Array(Vec::new());
    }
    let Value::Array(existing) = existing else {
        bail!("routes: expected a list");
    };
    let mut report = Report {
        replaced: 0,
        added: 0,
        stale: Vec::new(),
    };
    let upstream = routes
        .first()
        .and_then(|r| r["labels"][UPSTREAM_LABEL].as_str())
        .unwrap_or_default()
        .to_string();
    let new_ids: Vec<String> = routes.iter().filter_map(id_of).collect();
    for old in existing.iter() {
        let imported_here = old["labels"][LABEL].is_string()
            && old["labels"][UPSTREAM_LABEL].as_str() == Some(upstream.as_str());
        if let Some(id) = id_of(old) {
            if imported_here && !new_ids.contains(&id) {
                report.stale.push(id);
            }
        }
    }
    for route in routes {
        let id = id_of(route).unwrap_or_default();
        match existing
            .iter_mut()
            .find(|r| id_of(r).as_deref() == Some(id.as_str()))
        {
            Some(old) => {
                if !old["labels"][LABEL].is_string() {
                    bail!(
                        "route {id} exists and was not imported from OpenAPI (no {LABEL} label): choose another --id-prefix"
                    );
                }
                *old = route.clone();
                report.replaced += 1;
            }
            None => {
                existing.push(route.clone());
                report.added += 1;
            }
        }
    }
    let text = serde_norway::to_string(&doc).context("cannot write the config as YAML")?;
    Ok((text, report))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn imported(id: &str, uri: &str) -> Value {
        json!({"id": id, "uri": uri, "upstream_id": "pets",
               "labels": {LABEL: id, UPSTREAM_LABEL: "pets"}})
    }

    const FILE: &str = "gateway:\n  admin:\n    keys: [{ name: ops, key: \"${KEY}\", role: admin }]\nupstreams:\n  - id: pets\n    nodes: { \"127.0.0.1:1\": 1 }\nroutes:\n  - id: mine\n    uri: /mine\n    upstream_id: pets\n  - id: getPet\n    uri: /old\n    upstream_id: pets\n    labels: { openapi_operation: getPet, openapi_upstream: pets }\n  - id: gone\n    uri: /gone\n    upstream_id: pets\n    labels: { openapi_operation: gone, openapi_upstream: pets }\n";

    #[test]
    fn same_ids_are_replaced_in_place_and_everything_else_is_kept() {
        let (text, report) = merge(
            FILE,
            &[imported("getPet", "/pets/:id"), imported("addPet", "/pets")],
        )
        .unwrap();
        let doc: Value = serde_norway::from_str(&text).unwrap();
        let ids: Vec<&str> = doc["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["mine", "getPet", "gone", "addPet"]);
        assert_eq!(doc["routes"][1]["uri"], "/pets/:id");
        assert_eq!(doc["gateway"]["admin"]["keys"][0]["key"], "${KEY}");
        assert_eq!(doc["upstreams"][0]["id"], "pets");
        assert_eq!((report.replaced, report.added), (1, 1));
        assert_eq!(report.stale, ["gone"]);
    }

    #[test]
    fn a_hand_written_route_with_the_same_id_is_not_overwritten() {
        let e = merge(FILE, &[imported("mine", "/x")]).err().unwrap();
        assert!(e.to_string().contains("not imported from OpenAPI"), "{e}");
    }

    #[test]
    fn a_file_without_routes_gets_them() {
        let (text, _) = merge("upstreams: []\n", &[imported("a", "/a")]).unwrap();
        let doc: Value = serde_norway::from_str(&text).unwrap();
        assert_eq!(doc["routes"][0]["id"], "a");
        assert!(merge("- 1\n", &[]).is_err());
    }
}
