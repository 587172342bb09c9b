//! A real APISIX client against portcullis: the `apisix-client` Python SDK
//! from PyPI (1.0.3) walks through create / list / get / update / delete of
//! upstreams, routes and consumers (tests/sdk/apisix_sdk_walkthrough.py, which
//! lists the SDK's quirks), then this test checks through plain HTTP what
//! the walk-through left behind and that the data plane serves it.
//!
//! The SDK lives in a venv that scripts/test.sh creates at
//! `<target dir>/sdk-venv` (override with PORTCULLIS_SDK_VENV). Without it
//! this test fails: it is not skipped.

use std::path::PathBuf;
use std::process::Command;

use portcullis_test_support::{request, Gateway, RecordingUpstream};

const ADMIN: (&str, &str) = ("X-API-KEY", "test-admin-key");

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `<target>/debug/deps/admin_sdk-HASH` → `<target>/sdk-venv`.
fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTCULLIS_SDK_VENV") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").exists())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("sdk-venv")
}

fn sdk_python() -> PathBuf {
    let venv = venv_dir();
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import apisix_client"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ready,
        "the apisix-client SDK venv is missing or incomplete at {}: run scripts/test.sh \
         (it creates it), or: python3 -m venv {0} && {0}/bin/pip install -r tests/sdk/requirements.txt",
        venv.display()
    );
    python
}

async fn admin_get(gw: &Gateway, path: &str) -> portcullis_test_support::Response {
    request("GET", &gw.admin_url(path), &[ADMIN], "")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apisix_python_sdk_manages_upstreams_routes_and_consumers() {
    let python = sdk_python();
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start("");
    let script = workspace_root().join("tests/sdk/apisix_sdk_walkthrough.py");
    let args = vec![
        script.display().to_string(),
        "--admin-url".into(),
        format!("http://127.0.0.1:{}", gw.admin_port),
        "--api-key".into(),
        "test-admin-key".into(),
        "--viewer-key".into(),
        "test-viewer-key".into(),
        "--data-url".into(),
        format!("http://127.0.0.1:{}", gw.http_port),
        "--upstream".into(),
        up.addr.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new(python).args(&args).output())
        .await
        .unwrap()
        .expect("run the SDK walk-through");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "SDK walk-through failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- gateway stderr\n{}",
        out.status,
        gw.stderr()
    );
    eprintln!("{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| {
            panic!("last line of the walk-through is not its JSON summary ({e}):\n{stdout}")
        });
    for d in summary["deviations"].as_array().unwrap() {
        eprintln!(
            "deviation from APISIX seen by the SDK: {}",
            d.as_str().unwrap()
        );
    }

    // What the SDK kept is there, as it wrote it.
    for (kind, ids) in summary["kept"].as_object().unwrap() {
        for id in ids.as_array().unwrap() {
            let id = id.as_str().unwrap();
            let r = admin_get(&gw, &format!("/apisix/admin/{kind}/{id}")).await;
            assert_eq!(r.status, 200, "{kind}/{id} kept by the SDK: {}", r.text());
        }
    }
    // What it deleted is gone.
    for (kind, ids) in summary["deleted"].as_object().unwrap() {
        for id in ids.as_array().unwrap() {
            let id = id.as_str().unwrap();
            let r = admin_get(&gw, &format!("/apisix/admin/{kind}/{id}")).await;
            assert_eq!(
                r.status,
                404,
                "{kind}/{id} deleted by the SDK: {}",
                r.text()
            );
            assert_eq!(r.json(), serde_json::json!({"message": "Key not found"}));
        }
    }
    let up_v = admin_get(&gw, "/apisix/admin/upstreams/sdk-up")
        .await
        .json();
    assert_eq!(up_v["value"]["desc"], "updated by the SDK");
    assert_eq!(
        up_v["value"]["nodes"][0],
        serde_json::json!({"host": up.addr.ip().to_string(), "port": up.addr.port(), "weight": 1})
    );
    let route = admin_get(&gw, "/apisix/admin/routes/sdk-route")
        .await
        .json();
    assert_eq!(route["value"]["uri"], "/sdk-v2/*");
    // The fields the SDK always sends were stored as sent.
    assert_eq!(route["value"]["status"], 1);
    assert_eq!(route["value"]["priority"], 0);
    assert_eq!(route["value"]["enable_websocket"], false);
    let consumer = admin_get(&gw, "/apisix/admin/consumers/sdk_alice")
        .await
        .json();
    assert_eq!(consumer["value"]["desc"], "rotated");
    assert_ne!(
        consumer["value"]["plugins"]["key-auth"]["key"], "alice-rotated-key",
        "the Admin API returned a consumer key in clear"
    );
    let list = admin_get(&gw, "/apisix/admin/routes").await.json();
    assert_eq!(list["total"], 2, "{list}");

    // The data plane serves the final state.
    up.clear();
    let r = request("GET", &gw.url("/sdk-v2/x"), &[], "").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
    assert_eq!(
        request("GET", &gw.url("/sdk/x"), &[], "")
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        request("GET", &gw.url("/sdk-secure/x"), &[], "")
            .await
            .unwrap()
            .status,
        401
    );
    let key = summary["consumer_key"].as_str().unwrap();
    let r = request("GET", &gw.url("/sdk-secure/x"), &[("apikey", key)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // proxy-rewrite `uri: /secure` from the SDK's ProxyRewrite model.
    assert_eq!(up.seen().last().unwrap().uri, "/secure");

    // Every write the SDK had accepted is in the change history under the
    // admin key's name (3 upstream writes and a delete, 4 route writes and
    // a delete, 3 consumer writes and a delete); refused writes left none.
    let changes = admin_get(&gw, "/portcullis/v1/changes?limit=1000")
        .await
        .json();
    let list = changes["list"].as_array().unwrap();
    let methods: Vec<&str> = list
        .iter()
        .rev()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "PUT", "POST", "PUT", "DELETE", "PUT", "POST", "PUT", "DELETE", "PUT", "PUT", "PUT",
            "PUT", "DELETE"
        ],
        "{changes}"
    );
    assert!(list.iter().all(|c| c["actor"] == "ops"), "{changes}");
    assert!(
        !changes.to_string().contains("alice-secret-key"),
        "a key in clear in the history"
    );
}
