//! The audit store through the real binary: records written off the
//! request path, queried by the Admin API and the CLI, and the hash chain
//! catching edited, removed and reordered rows.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_test_support::{request, Gateway, RecordingUpstream};
use serde_json::Value;

const ADMIN: (&str, &str) = ("x-api-key", "test-admin-key");
const VIEWER: (&str, &str) = ("x-api-key", "test-viewer-key");

fn config(up: &RecordingUpstream, audit: &str) -> String {
    let gw = portcullis_test_support::gateway::default_gateway_section();
    let node = format!("nodes: {{ \"{}\": 1 }}", up.addr);
    format!(
        "{gw}{audit}consumers:
  - username: alice
    plugins: {{ key-auth: {{ key: alice-key }} }}
  - username: bob
    plugins: {{ key-auth: {{ key: bob-key }} }}
routes:
  - id: orders
    uri: /orders
    labels: {{ tier: customer_data_api }}
    plugins:
      key-auth: {{}}
      request-id: {{}}
      consumer-restriction: {{ whitelist: [alice, bob] }}
      limit-count: {{ count: 100000, time_window: 60 }}
      request-validation: {{ header_schema: {{ type: object }} }}
    upstream: {{ {node} }}
  - id: open
    uri: /open
    plugins: {{ request-id: {{}} }}
    upstream: {{ {node} }}
"
    )
}

async fn admin_get(gw: &Gateway, path: &str, key: (&str, &str)) -> (u16, Value) {
    let r = request("GET", &gw.admin_url(path), &[key], "")
        .await
        .expect("admin request");
    (r.status, r.json())
}

/// Poll the audit query until it reports at least `n` records.
async fn wait_for(gw: &Gateway, query: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = admin_get(gw, &format!("/portcullis/v1/audit?{query}"), VIEWER).await;
        assert_eq!(status, 200, "{v}");
        if v["total"].as_u64().unwrap_or(0) >= n || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(portcullis_test_support::gateway::binary_path())
        .args(args)
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_queryable_by_the_admin_api_and_the_cli() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(&up, ""));
    for _ in 0..3 {
        let r = request("GET", &gw.url("/orders"), &[("apikey", "alice-key")], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let r = request("GET", &gw.url("/orders"), &[("apikey", "bob-key")], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = request("GET", &gw.url("/orders"), &[("apikey", "wrong")], "")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = request("GET", &gw.url("/open"), &[], "").await.unwrap();
    assert_eq!(r.status, 200);

    let all = wait_for(&gw, "", 6).await;
    assert_eq!(all["total"], 6, "{all}");

    // By consumer, newest first, with the decision record inside.
    let v = wait_for(&gw, "consumer=alice", 3).await;
    assert_eq!(v["total"], 3);
    let first = &v["list"][0];
    assert_eq!(first["consumer"], "alice");
    assert_eq!(first["route"], "orders");
    assert_eq!(first["tier"], "customer_data_api");
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["record"]["schema"], "portcullis.decision/v1");
    assert!(first["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(first["hash"].as_str().unwrap().len(), 64);

    // Rejections, by status, decision, tier and request id.
    let (_, v) = admin_get(&gw, "/portcullis/v1/audit?decision=reject", VIEWER).await;
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["list"][0]["status"], 401);
    assert_eq!(v["list"][0]["plugin"], "key-auth");
    assert_eq!(v["list"][0]["consumer"], Value::Null);
    let (_, v) = admin_get(&gw, "/portcullis/v1/audit?status=4xx", VIEWER).await;
    assert_eq!(v["total"], 1);
    let (_, v) = admin_get(&gw, "/portcullis/v1/audit?tier=customer_data_api", VIEWER).await;
    assert_eq!(v["total"], 5);
    let rid = first["request_id"].as_str().unwrap().to_string();
    let (_, v) = admin_get(
        &gw,
        &format!("/portcullis/v1/audit?request_id={rid}"),
        VIEWER,
    )
    .await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["list"][0]["request_id"], rid.as_str());

    // Time window: everything is within the last minute, nothing before.
    let (_, v) = admin_get(&gw, "/portcullis/v1/audit?from=-1m&to=now", VIEWER).await;
    assert_eq!(v["total"], 6);
    let (_, v) = admin_get(&gw, "/portcullis/v1/audit?to=2020-01-01T00:00:00Z", VIEWER).await;
    assert_eq!(v["total"], 0);
    let (status, _) = admin_get(&gw, "/portcullis/v1/audit?from=yesterday", VIEWER).await;
    assert_eq!(status, 400);

    // Pages follow the cursor without repeats.
    let (_, p1) = admin_get(&gw, "/portcullis/v1/audit?limit=4", ADMIN).await;
    assert_eq!(p1["list"].as_array().unwrap().len(), 4);
    let cursor = p1["next_cursor"].as_str().expect("a next page").to_string();
    let (_, p2) = admin_get(
        &gw,
        &format!("/portcullis/v1/audit?limit=4&cursor={cursor}"),
        ADMIN,
    )
    .await;
    assert_eq!(p2["list"].as_array().unwrap().len(), 2);
    assert_eq!(p2["next_cursor"], Value::Null);
    let mut seqs: Vec<i64> = p1["list"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["list"].as_array().unwrap())
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 6);

    // Summary by consumer and route.
    let (status, s) = admin_get(
        &gw,
        "/portcullis/v1/audit/summary?from=-1h&group_by=consumer,route",
        VIEWER,
    )
    .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["total"], 6);
    let groups = s["groups"].as_array().unwrap();
    let alice = groups
        .iter()
        .find(|g| g["consumer"] == "alice")
        .expect("alice group");
    assert_eq!(alice["route"], "orders");
    assert_eq!(alice["total"], 3);
    assert_eq!(alice["allow"], 3);
    let anon = groups
        .iter()
        .find(|g| g["consumer"].is_null() && g["route"] == "orders")
        .unwrap();
    assert_eq!(anon["reject"], 1);
    assert_eq!(anon["statuses"]["401"], 1);
    let (status, _) = admin_get(
        &gw,
        "/portcullis/v1/audit/summary?group_by=password",
        VIEWER,
    )
    .await;
    assert_eq!(status, 400);

    // Keys: none → 401.
    let r = request("GET", &gw.admin_url("/portcullis/v1/audit"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 401);

    // Verify over the API and the CLI, while the gateway runs.
    let (_, v) = admin_get(&gw, "/portcullis/v1/audit/verify", VIEWER).await;
    assert_eq!(v["ok"], true, "{v}");
    let cfg = gw.config_path.to_str().unwrap();
    let (code, out) = cli(&["audit", "verify", "--config", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok, 6 records"), "{out}");
    let (code, out) = cli(&[
        "audit",
        "query",
        "--config",
        cfg,
        "--consumer",
        "alice",
        "--from",
        "-1h",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("alice") && out.contains("3 shown of 3"),
        "{out}"
    );
    let (code, out) = cli(&[
        "audit", "query", "--config", cfg, "--status", "401", "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["total"], 1);
}

/// A copy of the audit file to tamper with, and a config naming it.
fn tamper_copy(gw: &Gateway, name: &str, sql: &str) -> PathBuf {
    let src = gw.dir.path().join("data").join("audit.db");
    let dir = gw.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let conn = rusqlite::Connection::open(&src).unwrap();
    conn.execute("VACUUM INTO ?1", [dir.join("audit.db").to_str().unwrap()])
        .unwrap();
    drop(conn);
    let copy = rusqlite::Connection::open(dir.join("audit.db")).unwrap();
    copy.execute_batch(sql).unwrap();
    drop(copy);
    let cfg = dir.join("portcullis.yaml");
    std::fs::write(
        &cfg,
        format!("gateway:\n  data_dir: \"{}\"\n", dir.display()),
    )
    .unwrap();
    cfg
}

fn verify(cfg: &Path) -> (i32, String) {
    cli(&["audit", "verify", "--config", cfg.to_str().unwrap()])
}

const COLS: &str = "time, event, consumer, credential, route, tier, status, decision, plugin, request_id, method, path, client, record, prev_hash, hash";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_row_that_was_changed_removed_or_reordered() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(&up, ""));
    for i in 0..10 {
        let key = if i % 2 == 0 { "alice-key" } else { "bob-key" };
        request("GET", &gw.url("/orders"), &[("apikey", key)], "")
            .await
            .unwrap();
    }
    wait_for(&gw, "", 10).await;

    let clean = tamper_copy(&gw, "clean", "");
    let (code, out) = verify(&clean);
    assert_eq!(code, 0, "{out}");

    // Changed: a rejection made to look allowed.
    let cfg = tamper_copy(
        &gw,
        "edit",
        "UPDATE audit SET status = 200, consumer = 'carol' WHERE seq = 5;",
    );
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("row seq 5: content does not match"), "{out}");

    // Changed, with its own hash recomputed: the next row's link breaks.
    let cfg = tamper_copy(
        &gw,
        "rehash",
        "UPDATE audit SET hash = randomblob(32) WHERE seq = 5;",
    );
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("row seq 5: content does not match"), "{out}");
    assert!(out.contains("row seq 6: prev_hash does not match"), "{out}");

    // Removed.
    let cfg = tamper_copy(&gw, "delete", "DELETE FROM audit WHERE seq = 7;");
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("row seq 8: rows 7..7 are missing"), "{out}");

    // Removed at the start (no anchor moved).
    let cfg = tamper_copy(&gw, "delete-first", "DELETE FROM audit WHERE seq <= 2;");
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("row seq 3"), "{out}");

    // Reordered: rows 3 and 4 swap places, each keeping its own hashes.
    let swap = format!(
        "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (3, 4);
         UPDATE audit SET ({COLS}) = (SELECT {COLS} FROM t WHERE t.seq = 7 - audit.seq) WHERE seq IN (3, 4);"
    );
    let cfg = tamper_copy(&gw, "reorder", &swap);
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("row seq 3: prev_hash does not match"), "{out}");

    // The JSON form says the same.
    let out = cli(&[
        "audit",
        "verify",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
    ])
    .1;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["seq"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_but_never_blocks_a_request() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(
        &up,
        "  audit: { queue: 1, batch: 1, flush_ms: 0 }\n",
    ));
    let n = 300;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = gw.url("/open");
        tasks.push(tokio::spawn(async move {
            request("GET", &url, &[], "").await.unwrap().status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Every request is either written or counted as dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (_, s) = admin_get(&gw, "/portcullis/v1/audit/status", VIEWER).await;
        if s["written"].as_u64().unwrap() + s["dropped"].as_u64().unwrap() >= n
            || Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (written, dropped) = (
        status["written"].as_u64().unwrap(),
        status["dropped"].as_u64().unwrap(),
    );
    assert_eq!(written + dropped, n, "{status}");
    let (_, s) = admin_get(&gw, "/portcullis/v1/audit/summary", VIEWER).await;
    assert_eq!(s["dropped"].as_u64().unwrap(), dropped);
    assert_eq!(s["total"].as_u64().unwrap(), written);
    if dropped > 0 {
        let m = request("GET", &gw.metrics_url("/metrics"), &[], "")
            .await
            .unwrap()
            .text();
        assert!(
            m.lines().any(|l| l.starts_with("portcullis_sink_records")
                && l.contains("sink=\"audit\"")
                && l.contains("dropped")),
            "{m}"
        );
    }
    // The chain is whole even so.
    let (_, v) = admin_get(&gw, "/portcullis/v1/audit/verify", VIEWER).await;
    assert_eq!(v["ok"], true);
}
