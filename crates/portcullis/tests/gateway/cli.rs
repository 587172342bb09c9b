//! The command line: `validate` lists every error with its field path;
//! `demo` serves its example.

use std::process::Command;
use std::time::Duration;

fn portcullis() -> Command {
    Command::new(portcullis_test_support::gateway::binary_path())
}

#[test]
fn validate_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.yaml");
    std::fs::write(
        &path,
        "routes:\n  - id: r1\n    uri: /a/*\n    upstream: { nodes: { \"127.0.0.1:1\": 1 } }\n",
    )
    .unwrap();
    let out = portcullis()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn validate_lists_every_error_with_its_field_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "routes:\n  - id: r1\n    uri: /a\n    upstream_id: missing\n  - id: r2\n    uri: /b\n    upstream: { nodes: { \"127.0.0.1:1\": 1 } }\n    plugins: { no-such-plugin: {} }\n  - id: r3\n    uri: /c\n    methods: [FETCH]\n    upstream:\n      nodes: { \"127.0.0.1:1\": 1 }\n      timeout: { connect: -1 }\n",
    )
    .unwrap();
    let out = portcullis()
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "routes[0].upstream_id: failed to fetch upstream info by upstream id [missing], response code: 404",
        "routes[1].plugins.no-such-plugin: unknown plugin [no-such-plugin]",
        "routes[2].methods: unknown method \"FETCH\"",
        "routes[2].upstream.timeout.connect: must be a number of seconds",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn validate_names_a_missing_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.yaml");
    std::fs::write(
        &path,
        "gateway:\n  admin:\n    keys: [{ name: ops, key: \"${PORTCULLIS_TEST_UNSET_VAR}\" }]\n",
    )
    .unwrap();
    let out = portcullis()
        .args(["validate", "--config"])
        .arg(&path)
        .env_remove("PORTCULLIS_TEST_UNSET_VAR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("line 3: environment variable PORTCULLIS_TEST_UNSET_VAR is not set"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_its_example_routes() {
    let port = portcullis_test_support::free_port();
    let mut child = portcullis()
        .args(["demo", "--port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "demo did not listen");
    let get = |path: &str, headers: Vec<(&'static str, &'static str)>, body: &'static str| {
        let url = format!("{base}{path}");
        async move {
            portcullis_test_support::request(
                if body.is_empty() { "GET" } else { "POST" },
                &url,
                &headers,
                body,
            )
            .await
            .unwrap()
        }
    };
    let public = get("/public/hello", vec![], "").await;
    assert_eq!(public.status, 200);
    assert!(public.header("x-request-id").is_some());
    assert_eq!(get("/orders/1", vec![], "").await.status, 401);
    let ok = get(
        "/orders/1",
        vec![
            ("apikey", "demo-order-key"),
            ("content-type", "application/json"),
        ],
        r#"{"item":"book","quantity":2}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let bad = get(
        "/orders/1",
        vec![
            ("apikey", "demo-order-key"),
            ("content-type", "application/json"),
        ],
        r#"{"item":"book","quantity":0}"#,
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(get("/status", vec![], "").await.status, 200);
    assert_eq!(get("/admin", vec![], "").await.status, 404);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn every_example_config_validates() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files = Vec::new();
    let mut dirs = vec![examples];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    assert!(!files.is_empty());
    let scratch = tempfile::tempdir().unwrap();
    for path in files {
        // The demo config has placeholders the demo command fills in.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("{DEMO_UPSTREAM}", "127.0.0.1:1")
            .replace("{PORT}", "9080");
        let copy = scratch.path().join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        let out = portcullis()
            .args(["validate", "--config"])
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} does not validate:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
