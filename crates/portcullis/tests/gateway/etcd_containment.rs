//! Containment, dual control and the change history in cluster mode, black
//! box: real `portcullis` processes sharing a real `etcd` on loopback.
//! A quarantine made through one node blocks the consumer on the others
//! within a second (measured), is lifted everywhere by a DELETE through
//! any node or by its expiry, and outlives a node's restart (with etcd, and
//! from the local copy without it). A top-tier change proposed through one
//! node is approved through another by a different admin key, and only
//! then served anywhere. `GET /portcullis/v1/changes` on any node lists the
//! writes made through every node.

use std::time::{Duration, Instant};

use portcullis_etcd::etcd_client;
use portcullis_test_support::etcd::EtcdServer;
use portcullis_test_support::gateway::default_gateway_section;
use portcullis_test_support::{request, wait_for, Gateway, RecordingUpstream, Response};
use serde_json::{json, Value};

use crate::dual_control::{jwt, pay_route, SECRET};

const OPS: (&str, &str) = ("x-api-key", "test-admin-key");
const ALICE: (&str, &str) = ("x-api-key", "alice-admin-key");
const BOB: (&str, &str) = ("x-api-key", "bob-admin-key");
const VIEWER: (&str, &str) = ("x-api-key", "test-viewer-key");

/// A cluster node with admin keys ops, alice and bob, and a viewer.
fn node(etcd_endpoint: &str) -> Gateway {
    node_with(etcd_endpoint, "")
}

/// `extra`: more of the `gateway:` section.
fn node_with(etcd_endpoint: &str, extra: &str) -> Gateway {
    let section = default_gateway_section().replace(
        "      - { name: ops, key: test-admin-key, role: admin }\n",
        "      - { name: ops, key: test-admin-key, role: admin }\n      - { name: alice, key: alice-admin-key, role: admin }\n      - { name: bob, key: bob-admin-key, role: admin }\n",
    );
    assert!(
        section.contains("alice"),
        "the default section changed shape"
    );
    let config = format!(
        "{section}  config_source: etcd\n  etcd:\n    host: [\"{etcd_endpoint}\"]\n    prefix: /apisix\n    timeout: 5\n    max_staleness: 30\n{extra}"
    );
    Gateway::start(&config)
}

fn three(etcd: &EtcdServer) -> [Gateway; 3] {
    [
        node(&etcd.endpoint()),
        node(&etcd.endpoint()),
        node(&etcd.endpoint()),
    ]
}

async fn admin(gw: &Gateway, key: (&str, &str), method: &str, path: &str, body: Value) -> Response {
    gw.admin_as(key, method, path, body).await
}

async fn call(gw: &Gateway, path: &str, apikey: &str) -> u16 {
    request("GET", &gw.url(path), &[("apikey", apikey)], "")
        .await
        .map(|r| r.status)
        .unwrap_or(0)
}

/// Until `path` answers `status` for `apikey` on every node; how long.
async fn on_every_node(
    nodes: &[Gateway],
    path: &str,
    apikey: &str,
    status: u16,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    for (i, n) in nodes.iter().enumerate() {
        let seen = wait_for(async || call(n, path, apikey).await == status, within).await;
        assert!(
            seen.is_some(),
            "node {} did not answer {status} on {path} within {within:?}",
            i + 1
        );
    }
    started.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Consumers alice and bob (key-auth) and route `orders` to `up`.
async fn orders(nodes: &[Gateway], up: &RecordingUpstream) {
    for user in ["alice", "bob"] {
        let r = admin(
            &nodes[2],
            OPS,
            "PUT",
            &format!("/apisix/admin/consumers/{user}"),
            json!({"username": user, "plugins": {"key-auth": {"key": format!("{user}-key")}}}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = admin(
        &nodes[0],
        OPS,
        "PUT",
        "/apisix/admin/routes/orders",
        json!({
            "uri": "/orders",
            "plugins": {"key-auth": {}},
            "upstream": {"nodes": {up.addr.to_string(): 1}, "type": "roundrobin"},
        }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    on_every_node(nodes, "/orders", "alice-key", 200, Duration::from_secs(10)).await;
}

async fn quarantine(gw: &Gateway, body: Value) -> String {
    let r = admin(gw, OPS, "POST", "/portcullis/v1/quarantine", body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_through_one_node_blocks_on_every_node_within_a_second() {
    let mut etcd = EtcdServer::start();
    let up = RecordingUpstream::start().await;
    let mut nodes = three(&etcd);
    orders(&nodes, &up).await;

    // Propagation: a quarantine through node 1, timed from the moment the
    // POST is sent until nodes 2 and 3 both answer 403; lifted again
    // through node 3 and timed until all three serve alice.
    let mut blocked = Vec::new();
    let mut lifted = Vec::new();
    for _ in 0..20 {
        let sent = Instant::now();
        let id = quarantine(
            &nodes[0],
            json!({"consumer": "alice", "action": "block", "reason": "suspected compromise", "expires_in": 3600}),
        )
        .await;
        assert_eq!(call(&nodes[0], "/orders", "alice-key").await, 403);
        on_every_node(
            &nodes[1..],
            "/orders",
            "alice-key",
            403,
            Duration::from_secs(5),
        )
        .await;
        blocked.push(sent.elapsed());
        assert_eq!(
            call(&nodes[1], "/orders", "bob-key").await,
            200,
            "only alice"
        );

        let sent = Instant::now();
        let r = admin(
            &nodes[2],
            OPS,
            "DELETE",
            &format!("/portcullis/v1/quarantine/{id}"),
            Value::Null,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["lifted"]["id"], id.as_str());
        on_every_node(&nodes, "/orders", "alice-key", 200, Duration::from_secs(5)).await;
        lifted.push(sent.elapsed());
    }
    blocked.sort();
    lifted.sort();
    eprintln!(
        "quarantine through node 1 until nodes 2 and 3 answer 403 (20 runs): median {:.1} ms, max {:.1} ms",
        ms(blocked[blocked.len() / 2]),
        ms(*blocked.last().unwrap())
    );
    eprintln!(
        "lift through node 3 until all three serve again (20 runs): median {:.1} ms, max {:.1} ms",
        ms(lifted[lifted.len() / 2]),
        ms(*lifted.last().unwrap())
    );
    assert!(
        *blocked.last().unwrap() < Duration::from_secs(1),
        "{blocked:?}"
    );

    // Every node lists the same active quarantines; lifting twice is a 404.
    let id = quarantine(
        &nodes[2],
        json!({"consumer": "bob", "action": "block", "reason": "kept"}),
    )
    .await;
    on_every_node(&nodes, "/orders", "bob-key", 403, Duration::from_secs(5)).await;
    for n in &nodes {
        let list = admin(n, VIEWER, "GET", "/portcullis/v1/quarantine", Value::Null).await;
        assert_eq!(list.json()["total"], 1, "{}", list.text());
        assert_eq!(list.json()["list"][0]["id"], id.as_str());
    }
    let gone = admin(
        &nodes[0],
        OPS,
        "DELETE",
        "/portcullis/v1/quarantine/q-none",
        Value::Null,
    )
    .await;
    assert_eq!(gone.status, 404, "{}", gone.text());

    // The audit record of each step is on the node that served it.
    for (n, total) in [(0, 20), (1, 0), (2, 1)] {
        let created = admin(
            &nodes[n],
            VIEWER,
            "GET",
            "/portcullis/v1/audit?event=quarantine.create",
            Value::Null,
        )
        .await;
        assert_eq!(
            created.json()["total"],
            total,
            "node {}: {}",
            n + 1,
            created.text()
        );
    }
    let lifts = admin(
        &nodes[2],
        VIEWER,
        "GET",
        "/portcullis/v1/audit?event=quarantine.lift",
        Value::Null,
    )
    .await;
    assert_eq!(lifts.json()["total"], 20, "{}", lifts.text());

    // A short expiry lifts itself everywhere, and etcd drops the key.
    let short = quarantine(
        &nodes[2],
        json!({"consumer": "alice", "action": "block", "expires_in": 1.5}),
    )
    .await;
    on_every_node(&nodes, "/orders", "alice-key", 403, Duration::from_secs(5)).await;
    let lifted_at =
        on_every_node(&nodes, "/orders", "alice-key", 200, Duration::from_secs(5)).await;
    eprintln!(
        "a 1.5 s quarantine lifted on every node {:.0} ms after it applied everywhere",
        ms(lifted_at)
    );
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let key = format!("/apisix/portcullis/quarantines/{short}");
    let mut dropped = false;
    for _ in 0..100 {
        if client
            .get(key.as_str(), None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the lease did not remove {key}");

    // A restarted node keeps the quarantine, made through another node
    // (so not in its own audit store): from etcd ...
    nodes[1].restart(&[]);
    on_every_node(
        &nodes[1..2],
        "/orders",
        "bob-key",
        403,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(call(&nodes[1], "/orders", "alice-key").await, 200);

    // ... and, started while etcd is away, from its local copy.
    etcd.stop();
    nodes[1].restart(&[]);
    on_every_node(
        &nodes[1..2],
        "/orders",
        "bob-key",
        403,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(call(&nodes[1], "/orders", "alice-key").await, 200);
    // Containment needs etcd in cluster mode: refused, nothing changes.
    let refused = admin(
        &nodes[0],
        OPS,
        "POST",
        "/portcullis/v1/quarantine",
        json!({"consumer": "alice", "action": "block"}),
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(call(&nodes[0], "/orders", "alice-key").await, 200);

    // etcd back: a lift through another node reaches the restarted one.
    etcd.restart();
    let r = admin(
        &nodes[0],
        OPS,
        "DELETE",
        &format!("/portcullis/v1/quarantine/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    on_every_node(&nodes, "/orders", "bob-key", 200, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantine_by_the_anomaly_detector_applies_on_every_node() {
    let etcd = EtcdServer::start();
    let up = RecordingUpstream::start().await;
    let enforce = "  anomaly:\n    mode: alert\n    detectors: { failure_burst: enforce }\n    burst_threshold: 5\n    quarantine_for: 60\n";
    let nodes = [
        node_with(&etcd.endpoint(), enforce),
        node_with(&etcd.endpoint(), ""),
        node_with(&etcd.endpoint(), ""),
    ];
    orders(&nodes, &up).await;
    let r = admin(
        &nodes[0],
        OPS,
        "PUT",
        "/apisix/admin/routes/checked",
        json!({
            "uri": "/checked",
            "plugins": {
                "key-auth": {},
                "request-validation": {"header_schema": {"type": "object", "required": ["x-order"]}}
            },
            "upstream": {"nodes": {up.addr.to_string(): 1}, "type": "roundrobin"},
        }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    on_every_node(
        &nodes,
        "/checked",
        "alice-key",
        400,
        Duration::from_secs(10),
    )
    .await;

    // A burst of validation failures by alice on node 1 only: node 1's
    // detector quarantines her, and every node enforces it.
    for _ in 0..10 {
        call(&nodes[0], "/checked", "alice-key").await;
    }
    let took = on_every_node(&nodes, "/orders", "alice-key", 403, Duration::from_secs(10)).await;
    eprintln!(
        "anomaly quarantine on node 1 enforced by all three within {:.0} ms of the burst",
        ms(took)
    );
    assert_eq!(call(&nodes[2], "/orders", "bob-key").await, 200);
    let list = admin(
        &nodes[2],
        VIEWER,
        "GET",
        "/portcullis/v1/quarantine",
        Value::Null,
    )
    .await;
    assert_eq!(list.json()["total"], 1, "{}", list.text());
    assert_eq!(list.json()["list"][0]["created_by"], "anomaly-detector");
    assert_eq!(list.json()["list"][0]["target"], "consumer:alice");
    let history = admin(
        &nodes[1],
        VIEWER,
        "GET",
        "/portcullis/v1/changes?resource=quarantine",
        Value::Null,
    )
    .await;
    assert_eq!(history.json()["total"], 1, "{}", history.text());
    assert_eq!(history.json()["list"][0]["actor"], "anomaly-detector");

    // Let node 1's audit writer (which feeds the detector) take in the
    // whole burst first, so that a late batch of it cannot quarantine
    // alice again after the lift (seen on a loaded machine).
    let mut last = -1;
    for _ in 0..50 {
        let a = admin(
            &nodes[0],
            VIEWER,
            "GET",
            "/portcullis/v1/audit?consumer=alice&limit=1",
            Value::Null,
        )
        .await;
        let total = a.json()["total"].as_i64().unwrap_or(-1);
        if total == last {
            break;
        }
        last = total;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Lifted through another node: lifted everywhere, node 1 included.
    let id = list.json()["list"][0]["id"].as_str().unwrap().to_string();
    let r = admin(
        &nodes[1],
        OPS,
        "DELETE",
        &format!("/portcullis/v1/quarantine/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    on_every_node(&nodes, "/orders", "alice-key", 200, Duration::from_secs(5)).await;
}

async fn pay(gw: &Gateway) -> u16 {
    let auth = format!("Bearer {}", jwt());
    request("GET", &gw.url("/pay/x"), &[("authorization", &auth)], "")
        .await
        .map(|r| r.status)
        .unwrap_or(0)
}

fn served_version(up: &RecordingUpstream) -> String {
    let seen = up.seen();
    let last = seen.last().expect("the upstream saw a request");
    last.headers["x-version"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_proposed_on_one_node_is_approved_on_another_by_a_second_admin() {
    let etcd = EtcdServer::start();
    let up = RecordingUpstream::start().await;
    let nodes = three(&etcd);
    let r = admin(
        &nodes[0],
        ALICE,
        "PUT",
        "/apisix/admin/upstreams/u1",
        json!({"nodes": {up.addr.to_string(): 1}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin(
        &nodes[0],
        ALICE,
        "PUT",
        "/apisix/admin/consumers/jack",
        json!({"plugins": {"jwt-auth": {"key": "jack", "secret": SECRET}}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // A global rule is not held while no top-tier route exists.
    let r = admin(
        &nodes[1],
        ALICE,
        "PUT",
        "/apisix/admin/global_rules/g1",
        json!({"plugins": {"request-id": {}}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Proposed through node 1: held, served nowhere.
    let r = admin(
        &nodes[0],
        ALICE,
        "PUT",
        "/apisix/admin/routes/pay",
        pay_route("1"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("route pay is tier payment_or_admin_api"));
    assert_eq!(r.json()["key"], "/apisix/routes/pay");
    for n in &nodes {
        assert_eq!(pay(n).await, 404, "a pending change does not serve");
        let read = admin(n, ALICE, "GET", "/apisix/admin/routes/pay", Value::Null).await;
        assert_eq!(read.status, 404);
    }
    assert_eq!(up.count(), 0);

    // Every node lists it; the proposer cannot approve it anywhere.
    for n in &nodes {
        let list = admin(n, VIEWER, "GET", "/portcullis/v1/approvals", Value::Null).await;
        assert_eq!(list.status, 200, "{}", list.text());
        assert_eq!(list.json()["total"], 1, "{}", list.text());
        assert_eq!(list.json()["list"][0]["id"], id.as_str());
        assert_eq!(list.json()["list"][0]["proposed_by"], "alice");
    }
    let approve = format!("/portcullis/v1/approvals/{id}/approve");
    let r = admin(&nodes[1], ALICE, "POST", &approve, Value::Null).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = admin(&nodes[1], VIEWER, "POST", &approve, Value::Null).await;
    assert_eq!(r.status, 401, "{}", r.text());

    // Bob approves through node 2 and node 3 at once: one wins, the other
    // finds it decided.
    let (a, b) = tokio::join!(
        admin(&nodes[1], BOB, "POST", &approve, Value::Null),
        admin(&nodes[2], BOB, "POST", &approve, Value::Null),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text(), b.text());
    let won = if a.status == 200 { a } else { b };
    assert_eq!(won.json()["status"], "approved");
    assert_eq!(won.json()["decided_by"], "bob");
    for n in &nodes {
        let served = wait_for(async || pay(n).await == 200, Duration::from_secs(5)).await;
        assert!(served.is_some(), "the approved route is served everywhere");
    }
    assert_eq!(served_version(&up), "1");
    let shown = admin(
        &nodes[0],
        VIEWER,
        "GET",
        &format!("/portcullis/v1/approvals/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(shown.json()["status"], "approved", "{}", shown.text());

    // An edit proposed on node 3 and rejected on node 1 never serves.
    let r = admin(
        &nodes[2],
        ALICE,
        "PUT",
        "/apisix/admin/routes/pay",
        pay_route("2"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let second = r.json()["id"].as_str().unwrap().to_string();
    let r = admin(
        &nodes[0],
        BOB,
        "POST",
        &format!("/portcullis/v1/approvals/{second}/reject"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "rejected");
    for n in &nodes {
        assert_eq!(pay(n).await, 200);
        assert_eq!(served_version(&up), "1");
    }
    let r = admin(
        &nodes[1],
        BOB,
        "POST",
        &format!("/portcullis/v1/approvals/{second}/approve"),
        Value::Null,
    )
    .await;
    assert_eq!(
        r.status,
        409,
        "a rejected change is not approved: {}",
        r.text()
    );

    // A change proposed before the resource moved on is stale.
    let r = admin(
        &nodes[0],
        ALICE,
        "PUT",
        "/apisix/admin/routes/pay",
        pay_route("3"),
    )
    .await;
    let stale = r.json()["id"].as_str().unwrap().to_string();
    let r = admin(
        &nodes[0],
        ALICE,
        "PUT",
        "/apisix/admin/routes/pay",
        pay_route("4"),
    )
    .await;
    let newer = r.json()["id"].as_str().unwrap().to_string();
    let r = admin(
        &nodes[1],
        BOB,
        "POST",
        &format!("/portcullis/v1/approvals/{newer}/approve"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(
        &nodes[2],
        BOB,
        "POST",
        &format!("/portcullis/v1/approvals/{stale}/approve"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("changed after"), "{}", r.text());
    for n in &nodes {
        assert!(wait_for(
            async || pay(n).await == 200 && served_version(&up) == "4",
            Duration::from_secs(5)
        )
        .await
        .is_some());
    }

    // With a top-tier route in place, a global rule write is held too.
    let r = admin(
        &nodes[1],
        ALICE,
        "PUT",
        "/apisix/admin/global_rules/g1",
        json!({"plugins": {"request-id": {"header_name": "x-trace"}}}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("global rule g1 applies to every route"));
    let r = admin(
        &nodes[1],
        ALICE,
        "DELETE",
        "/apisix/admin/global_rules/g1",
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let g1 = admin(
        &nodes[2],
        VIEWER,
        "GET",
        "/apisix/admin/global_rules/g1",
        Value::Null,
    )
    .await;
    assert_eq!(g1.status, 200);
    assert!(g1.json()["value"]["plugins"]["request-id"]
        .get("header_name")
        .is_none());

    // The shared history, read on node 3, tells who did what through
    // which node.
    let history = admin(
        &nodes[2],
        VIEWER,
        "GET",
        "/portcullis/v1/changes?resource=routes/pay",
        Value::Null,
    )
    .await;
    assert_eq!(history.status, 200, "{}", history.text());
    let entries: Vec<(String, String)> = history.json()["list"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|c| {
            (
                c["actor"].as_str().unwrap().to_string(),
                c["method"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("alice", "PROPOSE"),
        ("alice", "PUT"),
        ("bob", "APPROVE"),
        ("alice", "PROPOSE"),
        ("bob", "REJECT"),
        ("alice", "PROPOSE"),
        ("alice", "PROPOSE"),
        ("alice", "PUT"),
        ("bob", "APPROVE"),
    ]
    .iter()
    .map(|(a, m)| (a.to_string(), m.to_string()))
    .collect();
    assert_eq!(entries, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_history_lists_writes_made_through_every_node() {
    let etcd = EtcdServer::start();
    let up = RecordingUpstream::start().await;
    let nodes = three(&etcd);
    orders(&nodes, &up).await;
    let r = admin(
        &nodes[1],
        ALICE,
        "PATCH",
        "/apisix/admin/routes/orders",
        json!({"desc": "patched"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = quarantine(
        &nodes[1],
        json!({"consumer": "alice", "action": "block", "reason": "history"}),
    )
    .await;
    let r = admin(
        &nodes[0],
        BOB,
        "DELETE",
        &format!("/portcullis/v1/quarantine/{id}"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(
        &nodes[2],
        BOB,
        "DELETE",
        "/apisix/admin/consumers/bob",
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    for n in &nodes {
        let all = admin(n, VIEWER, "GET", "/portcullis/v1/changes", Value::Null).await;
        assert_eq!(all.status, 200, "{}", all.text());
        let list = all.json()["list"].as_array().unwrap().clone();
        let seen: Vec<(String, String, String, String)> = list
            .iter()
            .rev()
            .map(|c| {
                (
                    c["actor"].as_str().unwrap().to_string(),
                    c["method"].as_str().unwrap().to_string(),
                    c["kind"].as_str().unwrap().to_string(),
                    c["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let expected: Vec<(String, String, String, String)> = [
            ("ops", "PUT", "consumers", "alice"),
            ("ops", "PUT", "consumers", "bob"),
            ("ops", "PUT", "routes", "orders"),
            ("alice", "PATCH", "routes", "orders"),
            ("ops", "POST", "quarantine", id.as_str()),
            ("bob", "DELETE", "quarantine", id.as_str()),
            ("bob", "DELETE", "consumers", "bob"),
        ]
        .iter()
        .map(|(a, m, k, i)| (a.to_string(), m.to_string(), k.to_string(), i.to_string()))
        .collect();
        assert_eq!(seen, expected);
        // Newest first, ordered, with who and when; secrets masked.
        let seqs: Vec<i64> = list.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
        assert!(list
            .iter()
            .all(|c| c["time"].as_i64().unwrap() > 1_700_000_000));
        assert!(list.iter().all(|c| c["client"] == "127.0.0.1"));
        let alice = list.iter().find(|c| c["id"] == "alice").unwrap();
        assert_eq!(alice["before"], Value::Null);
        assert_eq!(
            alice["after"]["plugins"]["key-auth"]["key"], "******",
            "{alice}"
        );
        let patch = list.iter().find(|c| c["method"] == "PATCH").unwrap();
        assert_eq!(patch["before"]["uri"], "/orders");
        assert_eq!(patch["after"]["desc"], "patched");
    }

    // Filters, as in store mode.
    let by_bob = admin(
        &nodes[0],
        VIEWER,
        "GET",
        "/portcullis/v1/changes?actor=bob",
        Value::Null,
    )
    .await;
    assert_eq!(by_bob.json()["total"], 2, "{}", by_bob.text());
    let routes = admin(
        &nodes[0],
        VIEWER,
        "GET",
        "/portcullis/v1/changes?resource=routes&limit=1",
        Value::Null,
    )
    .await;
    assert_eq!(routes.json()["total"], 1, "{}", routes.text());
    assert_eq!(routes.json()["list"][0]["method"], "PATCH");
    let later = admin(
        &nodes[0],
        VIEWER,
        "GET",
        "/portcullis/v1/changes?since=4000000000",
        Value::Null,
    )
    .await;
    assert_eq!(later.json()["total"], 0, "{}", later.text());
}
