//! The audit store through the real binary: records written off the
//! request path, queried by the Admin API and the CLI, and the hash chain
//! catching edited, removed and reordered records and batches.

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
fn tamper_copy(gw: &Gateway, name: &str, tamper: impl FnOnce(&rusqlite::Connection)) -> PathBuf {
    let src = gw.dir.path().join("data").join("audit.db");
    let dir = gw.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let conn = rusqlite::Connection::open(&src).unwrap();
    conn.execute("VACUUM INTO ?1", [dir.join("audit.db").to_str().unwrap()])
        .unwrap();
    drop(conn);
    let copy = rusqlite::Connection::open(dir.join("audit.db")).unwrap();
    tamper(&copy);
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

/// The batch holding record `seq`.
fn batch_of(c: &rusqlite::Connection, seq: i64) -> i64 {
    c.query_row(
        "SELECT seq FROM audit_batch WHERE first <= ?1 AND first + count > ?1",
        [seq],
        |r| r.get(0),
    )
    .unwrap()
}

fn blob(c: &rusqlite::Connection, batch: i64, col: &str) -> Vec<u8> {
    c.query_row(
        &format!("SELECT {col} FROM audit_batch WHERE seq = ?1"),
        [batch],
        |r| r.get(0),
    )
    .unwrap()
}

fn set_blob(c: &rusqlite::Connection, batch: i64, col: &str, v: &[u8]) {
    c.execute(
        &format!("UPDATE audit_batch SET {col} = ?2 WHERE seq = ?1"),
        rusqlite::params![batch, v],
    )
    .unwrap();
}

/// Record `seq`'s head: (its batch, where it starts and ends in `heads`,
/// where its JSON starts in `records`).
fn head_of(c: &rusqlite::Connection, seq: i64) -> (i64, usize, usize, usize) {
    let batch = batch_of(c, seq);
    let heads = blob(c, batch, "heads");
    let all: Vec<_> = portcullis_audit::store::Heads::new(&heads)
        .map(Result::unwrap)
        .collect();
    let i = all.iter().position(|h| h.seq == seq).unwrap();
    let end = all.get(i + 1).map_or(heads.len(), |h| h.pos as usize);
    (batch, all[i].pos as usize, end, all[i].json_off as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_record_that_was_changed_removed_or_reordered() {
    let up = RecordingUpstream::start().await;
    // Batches of three records: 1..3, 4..6, 7..9, 10.
    let gw = Gateway::start(&config(&up, "  audit: { batch: 3, flush_ms: 2000 }\n"));
    for i in 0..10 {
        let key = if i % 2 == 0 { "alice-key" } else { "bob-key" };
        request("GET", &gw.url("/orders"), &[("apikey", key)], "")
            .await
            .unwrap();
    }
    wait_for(&gw, "", 10).await;

    let clean = tamper_copy(&gw, "clean", |_| {});
    let (code, out) = verify(&clean);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok, 10 records (seq 1..10) in 4 batches"),
        "{out}"
    );
    let c = rusqlite::Connection::open(gw.dir.path().join("clean").join("audit.db")).unwrap();
    let (b5, b7) = (batch_of(&c, 5), batch_of(&c, 7));
    assert_eq!((batch_of(&c, 4), b5, batch_of(&c, 6)), (b5, b5, b5));
    assert_eq!(b7, b5 + 1);
    drop(c);

    // Changed: one byte of record 5's JSON inside its batch's blob.
    let cfg = tamper_copy(&gw, "edit-json", |c| {
        let (batch, _, _, json) = head_of(c, 5);
        let mut records = blob(c, batch, "records");
        let at = json + records[json..].iter().position(|b| *b == b'2').unwrap();
        records[at] = b'4'; // a digit of its time
        set_blob(c, batch, "records", &records);
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "record 5 (batch {b5}): content does not match its hash"
        )),
        "{out}"
    );
    assert!(!out.contains("record 6"), "{out}");

    // Changed: record 5's head made to say 403.
    let cfg = tamper_copy(&gw, "edit-head", |c| {
        let (batch, start, _, _) = head_of(c, 5);
        let mut heads = blob(c, batch, "heads");
        heads[start + 16..start + 18].copy_from_slice(&403u16.to_be_bytes());
        set_blob(c, batch, "heads", &heads);
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("record 5 (batch {b5}): content does not match")),
        "{out}"
    );

    // Changed, with its hash replaced too: record 6 no longer chains.
    let cfg = tamper_copy(&gw, "rehash", |c| {
        let (batch, start, end, _) = head_of(c, 5);
        let mut heads = blob(c, batch, "heads");
        heads[start + 16..start + 18].copy_from_slice(&403u16.to_be_bytes());
        heads[end - 32..end].copy_from_slice(&[0x5a; 32]);
        set_blob(c, batch, "heads", &heads);
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("record 5 (batch {b5}): content does not match")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "record 6 (batch {b5}): does not chain to record 5, which was changed or replaced"
        )),
        "{out}"
    );

    // Removed: a whole batch.
    let cfg = tamper_copy(&gw, "delete", |c| {
        c.execute("DELETE FROM audit_batch WHERE seq = ?1", [b5])
            .unwrap();
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "record 7 (batch {b7}): records 4..6 are missing (removed)"
        )),
        "{out}"
    );

    // Removed: one head out of a batch.
    let cfg = tamper_copy(&gw, "delete-head", |c| {
        let (batch, start, end, _) = head_of(c, 5);
        let mut heads = blob(c, batch, "heads");
        heads.drain(start..end);
        set_blob(c, batch, "heads", &heads);
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "record 6 (batch {b5}): records 5..5 are missing (removed)"
        )),
        "{out}"
    );

    // Removed at the start (no anchor moved).
    let cfg = tamper_copy(&gw, "delete-first", |c| {
        c.execute("DELETE FROM audit_batch WHERE seq < ?1", [b5])
            .unwrap();
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("record 4"), "{out}");
    assert!(out.contains("records 1..3 are missing"), "{out}");

    // Reordered: two batches swap their numbers.
    let cfg = tamper_copy(&gw, "reorder", |c| {
        c.execute_batch(&format!(
            "UPDATE audit_batch SET seq = -1 WHERE seq = {b5};
             UPDATE audit_batch SET seq = {b5} WHERE seq = {b7};
             UPDATE audit_batch SET seq = {b7} WHERE seq = -1;"
        ))
        .unwrap();
    });
    let (code, out) = verify(&cfg);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "record 7 (batch {b5}): records 4..6 come later in the file"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("record 4 (batch {b7}): out of order")),
        "{out}"
    );

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
    assert_eq!(v["problems"][0]["seq"], 7);
    assert_eq!(v["problems"][0]["batch"], b5);
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
