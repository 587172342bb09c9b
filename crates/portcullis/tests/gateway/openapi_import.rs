//! `portcullis openapi import` end to end: the real binary turns OpenAPI
//! documents into routes, the routes are merged into a config that
//! `validate` accepts, and a real gateway in front of a recording upstream
//! lets valid requests through and refuses invalid ones before the upstream
//! sees anything.

use std::path::Path;
use std::process::{Command, Output};

use portcullis_test_support::{request, Gateway, RecordingUpstream, Response};

const PETSTORE_3_0: &str = r##"
openapi: 3.0.3
info: { title: Petstore, version: 1.0.0 }
servers: [{ url: "https://pets.example.com" }]
paths:
  /pets:
    get:
      operationId: listPets
      summary: List pets
      parameters:
        - { $ref: "#/components/parameters/Limit" }
        - name: tags
          in: query
          schema: { type: array, items: { type: string, maxLength: 10 }, maxItems: 3 }
      responses: { "200": { description: ok } }
    post:
      operationId: createPet
      requestBody:
        $ref: "#/components/requestBodies/NewPet"
      responses: { "201": { description: created } }
  /pets/{petId}:
    parameters:
      - name: petId
        in: path
        required: true
        schema: { type: integer, format: int64, minimum: 1 }
    get:
      operationId: getPet
      parameters:
        - name: X-Tenant
          in: header
          required: true
          schema: { type: string, enum: [acme, globex] }
      responses: { "200": { description: ok } }
    delete:
      responses: { "204": { description: deleted } }
components:
  parameters:
    Limit:
      name: limit
      in: query
      required: true
      schema: { type: integer, minimum: 1, maximum: 100 }
  requestBodies:
    NewPet:
      required: true
      content:
        application/json:
          schema: { $ref: "#/components/schemas/Pet" }
  schemas:
    Pet:
      type: object
      required: [id, name, owner]
      discriminator: { propertyName: kind }
      example: { name: Rex }
      properties:
        id: { type: integer, readOnly: true }
        name: { type: string, minLength: 1, maxLength: 32 }
        nickname: { type: string, nullable: true }
        owner: { $ref: "#/components/schemas/Owner" }
    Owner:
      type: object
      required: [email]
      properties:
        email: { type: string, pattern: "^[^@]+@[^@]+$" }
        address:
          type: object
          properties:
            city: { type: string }
            zip: { type: string, pattern: "^[0-9]{5}$" }
"##;

fn portcullis(args: &[&str]) -> Output {
    Command::new(portcullis_test_support::gateway::binary_path())
        .args(args)
        .output()
        .expect("run portcullis")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A config holding the upstream (and a hand-written route that imports
/// must leave alone), with `spec` imported into it.
fn import_into(
    dir: &Path,
    upstream: &RecordingUpstream,
    spec: &str,
    extra: &[&str],
) -> (std::path::PathBuf, Output) {
    let spec_path = dir.join("openapi.yaml");
    std::fs::write(&spec_path, spec).unwrap();
    let config = dir.join("portcullis.yaml");
    if !config.exists() {
        std::fs::write(
            &config,
            format!(
                "upstreams:\n  - id: pets\n    nodes: {{ \"{}\": 1 }}\nroutes:\n  - id: health\n    uri: /health\n    upstream_id: pets\n",
                upstream.addr
            ),
        )
        .unwrap();
    }
    let mut args = vec![
        "openapi",
        "import",
        path_str(&spec_path),
        "--upstream",
        "pets",
        "--into",
        path_str(&config),
    ];
    args.extend_from_slice(extra);
    let out = portcullis(&args);
    (config, out)
}

fn assert_validates(config: &Path) {
    let out = portcullis(&["validate", "--config", path_str(config)]);
    assert!(
        out.status.success(),
        "validate refused the import: {}",
        text(&out)
    );
}

async fn send(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    request(method, &gw.url(path), headers, body.to_string())
        .await
        .expect("request")
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// Each request reaches the upstream or is answered 400 without it.
async fn expect(
    gw: &Gateway,
    up: &RecordingUpstream,
    status: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) {
    let before = up.count();
    let r = send(gw, method, path, headers, body).await;
    assert_eq!(r.status, status, "{method} {path} {body}: {}", r.text());
    let reached = up.count() - before;
    assert_eq!(
        reached,
        usize::from(status == 200),
        "{method} {path} {body}: the upstream saw {reached} request(s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_routes_refuse_invalid_requests_before_the_upstream_sees_them() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, out) = import_into(dir.path(), &up, PETSTORE_3_0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_validates(&config);
    let gw = Gateway::start(&std::fs::read_to_string(&config).unwrap());

    let tenant = [("x-tenant", "acme")];
    // Path and header parameters.
    expect(&gw, &up, 200, "GET", "/pets/42", &tenant, "").await;
    expect(&gw, &up, 400, "GET", "/pets/0", &tenant, "").await;
    expect(&gw, &up, 400, "GET", "/pets/rex", &tenant, "").await;
    expect(&gw, &up, 400, "GET", "/pets/42", &[], "").await;
    expect(
        &gw,
        &up,
        400,
        "GET",
        "/pets/42",
        &[("x-tenant", "initech")],
        "",
    )
    .await;
    expect(&gw, &up, 200, "DELETE", "/pets/7", &[], "").await;
    expect(&gw, &up, 400, "DELETE", "/pets/-7", &[], "").await;
    // Query parameters, one from a $ref'd component.
    expect(&gw, &up, 200, "GET", "/pets?limit=10", &[], "").await;
    expect(
        &gw,
        &up,
        200,
        "GET",
        "/pets?limit=10&tags=a&tags=b",
        &[],
        "",
    )
    .await;
    expect(&gw, &up, 400, "GET", "/pets", &[], "").await;
    expect(&gw, &up, 400, "GET", "/pets?limit=101", &[], "").await;
    expect(&gw, &up, 400, "GET", "/pets?limit=ten", &[], "").await;
    expect(
        &gw,
        &up,
        400,
        "GET",
        "/pets?limit=1&tags=a&tags=b&tags=c&tags=d",
        &[],
        "",
    )
    .await;
    // Methods the document does not have are not routed.
    let r = send(&gw, "PATCH", "/pets/42", &[], "").await;
    assert_eq!(r.status, 404);

    // A JSON body with a nested $ref'd object and a 3.0 nullable.
    let good = r#"{"name": "Rex", "nickname": null, "owner": {"email": "a@b.c", "address": {"zip": "12345"}}}"#;
    expect(&gw, &up, 200, "POST", "/pets?limit=1", &[JSON], good).await;
    assert_eq!(up.seen().last().unwrap().uri, "/pets?limit=1");
    let also_good = r#"{"name": "Rex", "nickname": "R", "owner": {"email": "a@b.c"}, "extra": 1}"#;
    expect(&gw, &up, 200, "POST", "/pets", &[JSON], also_good).await;
    for bad in [
        r#"{"name": "Rex"}"#,
        r#"{"name": "", "owner": {"email": "a@b.c"}}"#,
        r#"{"name": "Rex", "nickname": 5, "owner": {"email": "a@b.c"}}"#,
        r#"{"name": "Rex", "owner": {"email": "nobody"}}"#,
        r#"{"name": "Rex", "owner": {"email": "a@b.c", "address": {"zip": "1"}}}"#,
        r#"[]"#,
        r#"not json"#,
    ] {
        expect(&gw, &up, 400, "POST", "/pets", &[JSON], bad).await;
    }
    let r = send(&gw, "POST", "/pets", &[JSON], r#"{"name": "Rex"}"#).await;
    assert_eq!(r.text(), "property \"owner\" is required");

    // The hand-written route is still there.
    expect(&gw, &up, 200, "GET", "/health", &[], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_undeclared_and_read_only_properties() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, out) = import_into(dir.path(), &up, PETSTORE_3_0, &["--strict"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_validates(&config);
    let gw = Gateway::start(&std::fs::read_to_string(&config).unwrap());

    let good = r#"{"name": "Rex", "owner": {"email": "a@b.c", "address": {"city": "Oslo"}}}"#;
    expect(&gw, &up, 200, "POST", "/pets", &[JSON], good).await;
    for smuggled in [
        r#"{"name": "Rex", "owner": {"email": "a@b.c"}, "is_admin": true}"#,
        r#"{"name": "Rex", "owner": {"email": "a@b.c", "role": "admin"}}"#,
        r#"{"name": "Rex", "owner": {"email": "a@b.c", "address": {"city": "Oslo", "x": 1}}}"#,
        r#"{"id": 7, "name": "Rex", "owner": {"email": "a@b.c"}}"#,
    ] {
        expect(&gw, &up, 400, "POST", "/pets", &[JSON], smuggled).await;
    }
    let r = send(
        &gw,
        "POST",
        "/pets",
        &[JSON],
        r#"{"name": "Rex", "owner": {"email": "a@b.c"}, "is_admin": true}"#,
    )
    .await;
    assert!(
        r.text().contains("is_admin") || r.text().contains("Additional properties"),
        "{}",
        r.text()
    );
    // Undeclared query arguments too.
    expect(&gw, &up, 200, "GET", "/pets?limit=5", &[], "").await;
    expect(&gw, &up, 400, "GET", "/pets?limit=5&debug=1", &[], "").await;
}

const TREE_3_1: &str = r##"{
  "openapi": "3.1.0",
  "info": {"title": "Catalog", "version": "2"},
  "paths": {
    "/categories/{slug}": {
      "put": {
        "operationId": "putCategory",
        "parameters": [{"name": "slug", "in": "path", "required": true,
                        "schema": {"type": "string", "pattern": "^[a-z-]+$"}}],
        "requestBody": {"required": true, "content": {"application/json; charset=utf-8": {
          "schema": {"$ref": "#/components/schemas/Category"}}}}
      }
    },
    "/labels": {
      "post": {
        "operationId": "addLabel",
        "requestBody": {"required": true, "content": {"application/json": {
          "schema": {"allOf": [{"$ref": "#/components/schemas/Named"},
                               {"type": "object", "properties": {"color": {"type": ["string", "null"]}}}]}}}}
      }
    }
  },
  "components": {"schemas": {
    "Named": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
    "Category": {"type": "object", "required": ["name"], "properties": {
      "name": {"type": "string"},
      "children": {"type": "array", "items": {"$ref": "#/components/schemas/Category"}}}}
  }}
}"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_3_1_recursive_schemas_and_strict_allof_are_enforced() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, out) = import_into(dir.path(), &up, TREE_3_1, &["--strict"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_validates(&config);
    let gw = Gateway::start(&std::fs::read_to_string(&config).unwrap());

    let tree = r#"{"name": "a", "children": [{"name": "b", "children": [{"name": "c"}]}]}"#;
    expect(&gw, &up, 200, "PUT", "/categories/toys", &[JSON], tree).await;
    expect(&gw, &up, 400, "PUT", "/categories/Toys", &[JSON], tree).await;
    let deep_bad = r#"{"name": "a", "children": [{"name": "b", "children": [{"title": "c"}]}]}"#;
    expect(&gw, &up, 400, "PUT", "/categories/toys", &[JSON], deep_bad).await;
    let deep_extra = r#"{"name": "a", "children": [{"name": "b", "x": 1}]}"#;
    expect(
        &gw,
        &up,
        400,
        "PUT",
        "/categories/toys",
        &[JSON],
        deep_extra,
    )
    .await;

    // allOf + strict: both parts' properties pass, nothing else does.
    expect(
        &gw,
        &up,
        200,
        "POST",
        "/labels",
        &[JSON],
        r#"{"name": "n", "color": null}"#,
    )
    .await;
    expect(
        &gw,
        &up,
        400,
        "POST",
        "/labels",
        &[JSON],
        r#"{"name": "n", "color": 1}"#,
    )
    .await;
    expect(
        &gw,
        &up,
        400,
        "POST",
        "/labels",
        &[JSON],
        r#"{"name": "n", "size": 1}"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimporting_a_changed_document_updates_the_same_routes_in_place() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, out) = import_into(dir.path(), &up, PETSTORE_3_0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let first: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();

    let changed = PETSTORE_3_0
        .replace("minimum: 1, maximum: 100", "minimum: 1, maximum: 10")
        .replace(
            "    delete:\n      responses: { \"204\": { description: deleted } }\n",
            "    delete:\n      responses: { \"204\": { description: deleted } }\n    patch:\n      operationId: patchPet\n      responses: { \"200\": { description: ok } }\n",
        );
    assert_ne!(changed, PETSTORE_3_0);
    let (config, out) = import_into(dir.path(), &up, &changed, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("4 replaced, 1 added"),
        "{}",
        text(&out)
    );
    assert_validates(&config);
    let second: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    let ids = |doc: &serde_json::Value| -> Vec<String> {
        doc["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(&first),
        [
            "health",
            "listPets",
            "createPet",
            "getPet",
            "delete-pets-petId"
        ]
    );
    assert_eq!(
        ids(&second),
        [
            "health",
            "listPets",
            "createPet",
            "getPet",
            "delete-pets-petId",
            "patchPet"
        ]
    );
    let limit = |doc: &serde_json::Value| {
        doc["routes"][1]["plugins"]["request-validation"]["query_schema"]["properties"]["limit"]
            ["maximum"]
            .clone()
    };
    assert_eq!(limit(&first), 100);
    assert_eq!(limit(&second), 10);

    let gw = Gateway::start(&std::fs::read_to_string(&config).unwrap());
    expect(&gw, &up, 200, "GET", "/pets?limit=10", &[], "").await;
    expect(&gw, &up, 400, "GET", "/pets?limit=11", &[], "").await;
    expect(&gw, &up, 200, "PATCH", "/pets/3", &[], "").await;
}

#[test]
fn output_goes_to_stdout_or_a_file_and_an_id_prefix_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("openapi.yaml");
    std::fs::write(&spec, PETSTORE_3_0).unwrap();
    let out = portcullis(&["openapi", "import", path_str(&spec), "--upstream", "pets"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_norway::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["routes"].as_array().unwrap().len(), 4);
    assert_eq!(doc["routes"][0]["uri"], "/pets");
    assert_eq!(doc["routes"][2]["uri"], "/pets/:petId");

    let file = dir.path().join("routes.yaml");
    let out = portcullis(&[
        "openapi",
        "import",
        path_str(&spec),
        "--upstream",
        "pets",
        "--id-prefix",
        "shop-",
        "--output",
        path_str(&file),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty());
    let doc: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["routes"][0]["id"], "shop-listPets");
    assert_eq!(doc["routes"][3]["id"], "shop-delete-pets-petId");

    // With the upstream beside them, the routes are a valid config.
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(
        &config,
        format!(
            "upstreams:\n  - id: pets\n    nodes: {{ \"127.0.0.1:1\": 1 }}\n{}",
            std::fs::read_to_string(&file).unwrap()
        ),
    )
    .unwrap();
    assert_validates(&config);
}

#[test]
fn invalid_documents_fail_naming_the_json_pointer_and_leave_the_config_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.yaml");
    let original = "upstreams:\n  - id: pets\n    nodes: { \"127.0.0.1:1\": 1 }\n";
    std::fs::write(&config, original).unwrap();
    let remote = PETSTORE_3_0.replace(
        "schema: { $ref: \"#/components/schemas/Pet\" }",
        "schema: { $ref: \"https://schemas.example.com/pet.json\" }",
    );
    let cases: [(&str, &str); 5] = [
        (
            remote.as_str(),
            "at #/components/requestBodies/NewPet/content/application~1json/schema/$ref: $ref \"https://schemas.example.com/pet.json\" leaves the document",
        ),
        ("swagger: '2.0'\n", "at #/swagger: Swagger 2.0 is not supported"),
        ("openapi: 3.0.3\npaths:\n  /a:\n    get:\n      parameters: [{ name: q, in: body }]\n", "at #/paths/~1a/get/parameters/0/in"),
        ("{\"openapi\": \"3.1.0\", \"paths\": {\"/a\": {\"get\": {\"parameters\": [{\"name\": \"x\", \"in\": \"query\", \"schema\": {\"$ref\": \"#/components/schemas/Missing\"}}]}}}}", "at #/paths/~1a/get/parameters/0/schema/$ref: $ref \"#/components/schemas/Missing\" points at nothing"),
        ("openapi: 3.0.3\npaths: [\n", "not valid YAML"),
    ];
    for (spec, expected) in cases {
        let spec_path = dir.path().join("bad.yaml");
        std::fs::write(&spec_path, spec).unwrap();
        let out = portcullis(&[
            "openapi",
            "import",
            path_str(&spec_path),
            "--upstream",
            "pets",
            "--into",
            path_str(&config),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(expected),
            "expected {expected:?}: {}",
            text(&out)
        );
        assert!(!err.contains("panicked"), "{}", text(&out));
        assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
    }

    // A document beyond the size bound is refused before it is parsed.
    let huge = dir.path().join("huge.yaml");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(16 * 1024 * 1024 + 1).unwrap();
    let out = portcullis(&["openapi", "import", path_str(&huge), "--upstream", "pets"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("larger than 16 MiB"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_merge_that_would_not_validate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("openapi.yaml");
    std::fs::write(&spec, PETSTORE_3_0).unwrap();
    let config = dir.path().join("portcullis.yaml");
    // No upstream "pets" in this file.
    let original = "upstreams:\n  - id: other\n    nodes: { \"127.0.0.1:1\": 1 }\n";
    std::fs::write(&config, original).unwrap();
    let out = portcullis(&[
        "openapi",
        "import",
        path_str(&spec),
        "--upstream",
        "pets",
        "--into",
        path_str(&config),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not validate"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), original);
}
