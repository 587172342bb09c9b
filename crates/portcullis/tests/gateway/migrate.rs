//! `portcullis migrate`, black box: resources go store → etcd → file and
//! file → etcd → store without losing anything, a gateway serves what was
//! migrated into etcd, and a migration that would leave an invalid config
//! writes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use portcullis_config::{Kind, RawConfig};
use portcullis_test_support::etcd::EtcdServer;
use portcullis_test_support::gateway::{binary_path, default_gateway_section};
use portcullis_test_support::{request, Gateway, RecordingUpstream};
use serde_json::Value;

fn portcullis(args: &[&str]) -> (bool, String) {
    let out = Command::new(binary_path())
        .args(args)
        .output()
        .expect("run portcullis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(args: &[&str]) -> String {
    let (ok, text) = portcullis(args);
    assert!(ok, "portcullis {} failed:\n{text}", args.join(" "));
    text
}

fn resources(up: &str) -> String {
    format!(
        r#"upstreams:
  - id: u1
    type: roundrobin
    nodes: {{ "{up}": 1 }}
services:
  - id: s1
    upstream_id: u1
    name: svc
plugin_configs:
  - id: pc1
    plugins:
      proxy-rewrite: {{ headers: {{ set: {{ x-from: pc1 }} }} }}
routes:
  - id: r1
    uri: /a
    name: alpha
    labels: {{ team: payments }}
    service_id: s1
    plugin_config_id: pc1
  - id: r2
    uris: [/b, /c]
    upstream_id: u1
    plugins:
      key-auth: {{}}
consumer_groups:
  - id: g1
    plugins: {{}}
consumers:
  - username: jack
    group_id: g1
    desc: a consumer
  - id: jack/credentials/c1
    plugins:
      # sha256("jack-key"): stores keep API keys as digests, so the round
      # trip is compared in that form; requests still present "jack-key".
      key-auth: {{ key: "sha256:1fe706351dd2dfd936e98c1569805804987c13ebaffc348d98b2e370d6916b30" }}
global_rules:
  - id: gr1
    plugins:
      request-id: {{}}
"#
    )
}

/// Every resource by kind and id, without the sources' bookkeeping.
fn contents(raw: &RawConfig) -> BTreeMap<(Kind, String), Value> {
    let mut out = BTreeMap::new();
    for kind in Kind::ALL {
        for r in raw.of(kind) {
            let mut v = Value::clone(&r.value);
            if let Value::Object(obj) = &mut v {
                obj.remove("create_time");
                obj.remove("update_time");
            }
            out.insert((kind, r.id.clone()), v);
        }
    }
    out
}

fn read_file(path: &Path) -> RawConfig {
    portcullis_config::file::read(path)
        .unwrap_or_else(|e| panic!("{} does not read back: {e:?}", path.display()))
        .resources
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_to_etcd_to_file_and_back_loses_nothing() {
    let etcd = EtcdServer::start();
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.yaml");
    std::fs::write(&src, resources(&up.addr.to_string())).unwrap();
    let original = contents(&read_file(&src));
    assert_eq!(original.len(), 9);

    // A store with the resources in it.
    let data = dir.path().join("data");
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(
        &cfg,
        format!("gateway:\n  data_dir: \"{}\"\n", data.display()),
    )
    .unwrap();
    must(&[
        "import",
        src.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);

    // store → etcd → file.
    let host = format!("127.0.0.1:{}", etcd.client_port);
    let to_etcd = format!("etcd:{host}/mig");
    let out = must(&[
        "migrate",
        "--from",
        &format!("store:{}", data.display()),
        "--to",
        &to_etcd,
    ]);
    assert!(out.contains("migrated 9 resources"), "{out}");
    let file = dir.path().join("out.yaml");
    must(&[
        "migrate",
        "--from",
        &to_etcd,
        "--to",
        &format!("file:{}", file.display()),
    ]);
    assert_eq!(contents(&read_file(&file)), original, "store → etcd → file");
    // An existing file is not replaced without --force.
    let (ok, text) = portcullis(&[
        "migrate",
        "--from",
        &to_etcd,
        "--to",
        &format!("file:{}", file.display()),
    ]);
    assert!(!ok && text.contains("--force"), "{text}");

    // file → etcd (another prefix) → a new store, read back by export.
    let back = format!("etcd:http://{host}/back");
    must(&[
        "migrate",
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        &back,
    ]);
    let data2 = dir.path().join("data2");
    must(&[
        "migrate",
        "--from",
        &back,
        "--to",
        &format!("store:{}", data2.display()),
    ]);
    let cfg2 = dir.path().join("cfg2.yaml");
    std::fs::write(
        &cfg2,
        format!("gateway:\n  data_dir: \"{}\"\n", data2.display()),
    )
    .unwrap();
    let exported = must(&["export", "--config", cfg2.to_str().unwrap()]);
    let exported = portcullis_config::file::parse(&exported).unwrap().resources;
    assert_eq!(contents(&exported), original, "file → etcd → store");

    // A gateway on the migrated prefix serves it, credentials included.
    let gw = Gateway::start(&format!(
        "{}  config_source: etcd\n  etcd:\n    host: [\"{}\"]\n    prefix: /mig\n",
        default_gateway_section(),
        etcd.endpoint()
    ));
    let a = request("GET", &gw.url("/a"), &[], "").await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["headers"]["x-from"], "pc1");
    let b = request("GET", &gw.url("/b"), &[("apikey", "jack-key")], "")
        .await
        .unwrap();
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(
        request("GET", &gw.url("/b"), &[], "").await.unwrap().status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_would_leave_an_invalid_config_writes_nothing() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("bad.yaml");
    std::fs::write(
        &src,
        "routes:\n  - id: r1\n    uri: /a\n    upstream_id: missing\n",
    )
    .unwrap();
    let target = format!("etcd:127.0.0.1:{}/refused", etcd.client_port);
    let (ok, text) = portcullis(&[
        "migrate",
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        &target,
    ]);
    assert!(!ok, "{text}");
    assert!(text.contains("missing"), "{text}");
    let (ok, text) = portcullis(&[
        "migrate",
        "--from",
        &target,
        "--to",
        &format!("file:{}", dir.path().join("empty.yaml").display()),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("migrated 0 resources"), "{text}");
}
