//! The official JSON-Schema-Test-Suite, drafts 7 and 2020-12, through real
//! routes: one route per schema (`/suite/<n>`, request-validation's
//! `body_schema` = the schema) in front of a recording upstream, and every
//! test instance POSTed as a JSON body. A valid instance must reach the
//! upstream (200); an invalid one must be answered 400 with the upstream
//! seeing nothing.
//!
//! The suite is fetched by scripts/test.sh into the target directory and
//! named by `PORTCULLIS_JSON_SCHEMA_SUITE`; without it this test fails.
//!
//! Not run, and counted: the `optional/` directories (format assertions and
//! the like), `refRemote.json`, and every schema whose `$ref`, `$schema` or
//! `$id` names an http(s) URL other than the draft's metaschema (those need
//! a remote document, or a base URI that request-validation never fetches).
//! Boolean root schemas are sent as their object forms (`{}` and
//! `{"not": {}}`): `body_schema` is an object, as in APISIX. Draft 2020-12
//! schemas without `$schema` get it, as a user pins a draft; draft 7 ones
//! are left alone, as request-validation's default is draft 7.
//!
//! Schemas that request-validation refuses at load time and instances the
//! validator answers wrongly are listed below with the reason; the test
//! fails if the list is wrong either way.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use portcullis_test_support::{request, Gateway, RecordingUpstream};
use serde_json::{json, Value};

const ENV: &str = "PORTCULLIS_JSON_SCHEMA_SUITE";
const DRAFTS: [(&str, &str); 2] = [
    ("draft7", "http://json-schema.org/draft-07/schema"),
    (
        "draft2020-12",
        "https://json-schema.org/draft/2020-12/schema",
    ),
];
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// Schemas request-validation refuses when the config is loaded:
/// (draft, file, group description, why).
const REFUSED: &[(&str, &str, &str, &str)] = &[
    (
        "draft7",
        "definitions.json",
        "validate definition against metaschema",
        METASCHEMA_REF,
    ),
    (
        "draft7",
        "ref.json",
        "remote ref, containing refs itself",
        METASCHEMA_REF,
    ),
    (
        "draft7",
        "ref.json",
        "simple URN base URI with $ref via the URN",
        URN_REF,
    ),
    (
        "draft7",
        "ref.json",
        "URN base URI with URN and JSON pointer ref",
        URN_REF,
    ),
    (
        "draft7",
        "ref.json",
        "URN base URI with URN and anchor ref",
        URN_REF,
    ),
    (
        "draft2020-12",
        "defs.json",
        "validate definition against metaschema",
        METASCHEMA_REF,
    ),
    (
        "draft2020-12",
        "ref.json",
        "remote ref, containing refs itself",
        METASCHEMA_REF,
    ),
    (
        "draft2020-12",
        "ref.json",
        "simple URN base URI with $ref via the URN",
        URN_REF,
    ),
    (
        "draft2020-12",
        "ref.json",
        "URN base URI with URN and JSON pointer ref",
        URN_REF,
    ),
    (
        "draft2020-12",
        "ref.json",
        "URN base URI with URN and anchor ref",
        URN_REF,
    ),
    (
        "draft2020-12",
        "ref.json",
        "URN ref with nested pointer ref",
        URN_REF,
    ),
];

const METASCHEMA_REF: &str = "request-validation resolves only \"#...\" references: a $ref to the draft's metaschema URL is refused at load, though the validator knows it offline";
const URN_REF: &str = "request-validation resolves only \"#...\" references: a $ref to a urn: $id that the schema itself declares is refused at load";

/// Instances answered against the suite's verdict:
/// (draft, file, group description, test description, why).
const KNOWN_FAILURES: &[(&str, &str, &str, &str, &str)] = &[];

struct Group {
    draft: &'static str,
    file: String,
    description: String,
    schema: Value,
    tests: Vec<Instance>,
}

struct Instance {
    description: String,
    data: Value,
    valid: bool,
}

fn suite_dir() -> PathBuf {
    let dir = match std::env::var_os(ENV) {
        Some(d) => PathBuf::from(d),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("json-schema-test-suite")
        }
    };
    assert!(
        dir.join("tests/draft7").is_dir() && dir.join("tests/draft2020-12").is_dir(),
        "the JSON-Schema-Test-Suite is not at {} ({ENV}): run scripts/test.sh, which fetches it",
        dir.display()
    );
    dir
}

/// Where a schema names an http(s) URL that is not `metaschema`, if it
/// does. Literal data (`enum`, `const`, `default`, `examples`) is not
/// searched.
fn remote_reference(schema: &Value, metaschema: &str) -> Option<String> {
    match schema {
        Value::Object(m) => {
            for keyword in ["$ref", "$schema", "$id"] {
                if let Some(Value::String(url)) = m.get(keyword) {
                    let remote = url.starts_with("http://") || url.starts_with("https://");
                    if remote && url.trim_end_matches('#') != metaschema {
                        return Some(format!("{keyword}: {url}"));
                    }
                }
            }
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "enum" | "const" | "default" | "examples"))
                .find_map(|(_, v)| remote_reference(v, metaschema))
        }
        Value::Array(items) => items.iter().find_map(|v| remote_reference(v, metaschema)),
        _ => None,
    }
}

struct Counts {
    files: usize,
    optional_files: usize,
    remote_files: usize,
    remote_groups: usize,
    remote_tests: usize,
    boolean_roots: usize,
    pinned_2020_12: usize,
}

fn load(counts: &mut Counts) -> Vec<Group> {
    let root = suite_dir().join("tests");
    let mut groups = Vec::new();
    for (draft, metaschema) in DRAFTS {
        let dir = root.join(draft);
        counts.optional_files += walk_count(&dir.join("optional"));
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for path in files {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if file == "refRemote.json" {
                counts.remote_files += 1;
                continue;
            }
            counts.files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let cases: Vec<Value> =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for case in cases {
                let schema = case["schema"].clone();
                let tests: Vec<Instance> = case["tests"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| Instance {
                        description: t["description"].as_str().unwrap().to_string(),
                        data: t["data"].clone(),
                        valid: t["valid"].as_bool().unwrap(),
                    })
                    .collect();
                if remote_reference(&schema, metaschema).is_some() {
                    counts.remote_groups += 1;
                    counts.remote_tests += tests.len();
                    continue;
                }
                groups.push(Group {
                    draft,
                    file: file.clone(),
                    description: case["description"].as_str().unwrap().to_string(),
                    schema,
                    tests,
                });
            }
        }
    }
    for g in &mut groups {
        g.schema = body_schema(g.draft, &g.schema, counts);
    }
    groups
}

fn walk_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { walk_count(&p) } else { 1 })
        .sum()
}

/// The schema as a route's `body_schema`.
fn body_schema(draft: &str, schema: &Value, counts: &mut Counts) -> Value {
    let mut schema = match schema {
        Value::Bool(true) => {
            counts.boolean_roots += 1;
            json!({})
        }
        Value::Bool(false) => {
            counts.boolean_roots += 1;
            json!({"not": {}})
        }
        other => other.clone(),
    };
    if draft == "draft2020-12" {
        if let Value::Object(m) = &mut schema {
            if !m.contains_key("$schema") {
                m.insert("$schema".into(), json!(DRAFT_2020_12));
                counts.pinned_2020_12 += 1;
            }
        }
    }
    schema
}

fn config(groups: &[(usize, &Group)], upstream: &RecordingUpstream) -> String {
    let routes: Vec<Value> = groups
        .iter()
        .map(|(n, g)| {
            json!({
                "id": format!("suite-{n}"),
                "uri": format!("/suite/{n}"),
                "methods": ["POST"],
                "upstream_id": "suite",
                "plugins": {"request-validation": {"body_schema": g.schema}},
            })
        })
        .collect();
    let mut nodes = serde_json::Map::new();
    nodes.insert(upstream.addr.to_string(), json!(1));
    let doc = json!({
        "upstreams": [{"id": "suite", "nodes": nodes}],
        "routes": routes,
    });
    serde_norway::to_string(&doc).expect("config as YAML")
}

/// Route numbers that `portcullis validate` refuses, with its messages.
fn refused_routes(config: &str) -> BTreeMap<usize, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("suite.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(portcullis_test_support::gateway::binary_path())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run portcullis validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut refused = BTreeMap::new();
    for line in stderr.lines().skip(1) {
        let line = line.trim();
        let index = line
            .strip_prefix("routes[")
            .and_then(|rest| rest.split_once(']'))
            .and_then(|(n, _)| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("validate refused the suite config as a whole: {stderr}"));
        refused.insert(index, line.to_string());
    }
    assert_eq!(
        out.status.success(),
        refused.is_empty(),
        "validate: {stderr}"
    );
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_suite_case_is_answered_as_the_suite_says_through_a_route() {
    let mut counts = Counts {
        files: 0,
        optional_files: 0,
        remote_files: 0,
        remote_groups: 0,
        remote_tests: 0,
        boolean_roots: 0,
        pinned_2020_12: 0,
    };
    let groups = load(&mut counts);
    let upstream = RecordingUpstream::start().await;

    // Schemas the config layer refuses, checked against REFUSED.
    let numbered: Vec<(usize, &Group)> = groups.iter().enumerate().collect();
    let refused = refused_routes(&config(&numbered, &upstream));
    let mut problems = Vec::new();
    let mut refused_tests = 0;
    for (index, message) in &refused {
        let g = numbered[*index].1;
        refused_tests += g.tests.len();
        let listed = REFUSED
            .iter()
            .any(|(d, f, desc, _)| *d == g.draft && *f == g.file && *desc == g.description);
        if !listed {
            problems.push(format!(
                "refused but not in REFUSED: {} {} {:?}: {message}",
                g.draft, g.file, g.description
            ));
        }
    }
    for (d, f, desc, _) in REFUSED {
        let found = refused.keys().any(|i| {
            let g = numbered[*i].1;
            g.draft == *d && g.file == *f && g.description == *desc
        });
        if !found {
            problems.push(format!("in REFUSED but accepted now: {d} {f} {desc:?}"));
        }
    }
    let served: Vec<(usize, &Group)> = numbered
        .iter()
        .filter(|(n, _)| !refused.contains_key(n))
        .copied()
        .collect();

    let gw = Arc::new(Gateway::start(&config(&served, &upstream)));
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for (n, g) in &served {
        for (t, instance) in g.tests.iter().enumerate() {
            let url = gw.url(&format!("/suite/{n}?t={t}"));
            let body = serde_json::to_vec(&instance.data).unwrap();
            let limit = limit.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.unwrap();
                let r = request("POST", &url, &[("content-type", "application/json")], body)
                    .await
                    .expect("request");
                (r.status, r.text())
            }));
        }
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let reached: HashSet<String> = upstream.seen().into_iter().map(|s| s.uri).collect();

    let mut answers = answers.into_iter();
    let mut failures = BTreeSet::new();
    let (mut run, mut passed) = (0, 0);
    for (n, g) in &served {
        for (t, instance) in g.tests.iter().enumerate() {
            let (status, body) = answers.next().unwrap();
            run += 1;
            let seen = reached.contains(&format!("/suite/{n}?t={t}"));
            let right = if instance.valid {
                status == 200 && seen
            } else {
                status == 400 && !seen
            };
            if right {
                passed += 1;
                continue;
            }
            failures.insert((
                g.draft,
                g.file.clone(),
                g.description.clone(),
                instance.description.clone(),
                format!(
                    "expected {}, got {status} ({}), upstream {}",
                    if instance.valid { "valid" } else { "invalid" },
                    body.chars().take(100).collect::<String>(),
                    if seen { "reached" } else { "not reached" }
                ),
            ));
        }
    }
    let mut known_hit = 0;
    for (d, f, desc, test, why) in &failures {
        let known = KNOWN_FAILURES
            .iter()
            .any(|k| k.0 == *d && k.1 == f && k.2 == desc && k.3 == test);
        if known {
            known_hit += 1;
        } else {
            problems.push(format!("{d} {f} {desc:?} / {test:?}: {why}"));
        }
    }
    for (d, f, desc, test, _) in KNOWN_FAILURES {
        let still = failures
            .iter()
            .any(|x| x.0 == *d && x.1 == *f && x.2 == *desc && x.3 == *test);
        if !still {
            problems.push(format!(
                "in KNOWN_FAILURES but passes now: {d} {f} {desc:?} / {test:?}"
            ));
        }
    }

    println!(
        "JSON-Schema-Test-Suite through request-validation: {} schemas in {} files; {run} instances run, {passed} passed, {known_hit} known failures",
        served.len(),
        counts.files
    );
    println!(
        "excluded: {} optional/ files; {} refRemote.json files; {} schemas ({} instances) naming a remote $ref/$schema/$id; {} schemas ({refused_tests} instances) refused by request-validation at load",
        counts.optional_files,
        counts.remote_files,
        counts.remote_groups,
        counts.remote_tests,
        refused.len()
    );
    println!(
        "adapted: {} boolean root schemas sent as object forms; {} draft 2020-12 schemas given \"$schema\"",
        counts.boolean_roots, counts.pinned_2020_12
    );
    for (d, f, desc, why) in REFUSED {
        println!("refused at load: {d} {f} {desc:?}: {why}");
    }
    for (d, f, desc, test, why) in KNOWN_FAILURES {
        println!("known failure: {d} {f} {desc:?} / {test:?}: {why}");
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(run > 1000, "only {run} instances ran");
}
