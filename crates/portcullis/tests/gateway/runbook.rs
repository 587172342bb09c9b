//! docs/runbook-compromised-dependency.md, end to end through the real
//! binary: a compromised order-service calls an admin route it never
//! called, with a burst of malformed payloads; the alerts fire (log,
//! webhook, audit); the responder queries the window, quarantines the
//! consumer, traffic stops; the quarantine is lifted; the chain verifies.

use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_test_support::{request, Gateway, RecordingUpstream};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("x-api-key", "test-admin-key");
const VIEWER: (&str, &str) = ("x-api-key", "test-viewer-key");
const KEY: &str = "order-service-key";

fn config(up: &RecordingUpstream, hook: &RecordingUpstream, anomaly: &str) -> String {
    let gw = portcullis_test_support::gateway::default_gateway_section();
    let node = format!("nodes: {{ \"{}\": 1 }}", up.addr);
    format!(
        "{gw}  anomaly:
    learning_period: 1
    burst_window: 10
    burst_threshold: 5
    webhook: \"http://{}/alerts\"
{anomaly}consumers:
  - username: order-service
    plugins: {{ key-auth: {{ key: {KEY} }} }}
routes:
  - id: orders
    uri: /orders
    plugins: {{ key-auth: {{}}, request-id: {{}} }}
    upstream: {{ {node} }}
  - id: admin-users
    uri: /admin/users
    methods: [POST]
    plugins:
      key-auth: {{}}
      request-id: {{}}
      request-validation:
        body_schema: {{ type: object, required: [name], properties: {{ name: {{ type: string, minLength: 1 }} }} }}
    upstream: {{ {node} }}
",
        hook.addr
    )
}

async fn get(gw: &Gateway, path: &str) -> Value {
    let r = request("GET", &gw.admin_url(path), &[VIEWER], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Normal traffic during the learning period, then the compromise.
async fn compromise(gw: &Gateway) -> Vec<String> {
    for _ in 0..5 {
        let r = request("GET", &gw.url("/orders"), &[("apikey", KEY)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let body = if i % 2 == 0 {
            "{\"name\": \"\"}"
        } else {
            "not json"
        };
        let r = request(
            "POST",
            &gw.url("/admin/users"),
            &[("apikey", KEY), ("content-type", "application/json")],
            body,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 400, "{}", r.text());
        ids.push(r.header("x-request-id").unwrap().to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compromised_order_service_is_detected_queried_contained_and_released() {
    let (up, hook) = (
        RecordingUpstream::start().await,
        RecordingUpstream::start().await,
    );
    let gw = Gateway::start(&config(&up, &hook, "    mode: alert\n"));
    let t0 = portcullis_audit::time::format(portcullis_audit::time::now_ms() - 1000);
    let ids = compromise(&gw).await;

    // 1. The alerts fire: in the audit store, the log and the webhook.
    let mut alerts = Value::Null;
    until("both alerts", async || {
        alerts = get(&gw, "/portcullis/v1/audit/alerts?consumer=order-service").await;
        alerts["total"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    let list = alerts["list"].as_array().unwrap();
    let new_route = list
        .iter()
        .find(|a| a["decision"] == "new_route")
        .expect("new_route alert");
    assert_eq!(new_route["route"], "admin-users");
    assert_eq!(new_route["record"]["identity"], "order-service");
    assert!(new_route["record"]["detail"]
        .as_str()
        .unwrap()
        .contains("POST admin-users"));
    assert_eq!(
        new_route["record"]["evidence"]["request_ids"][0],
        ids[0].as_str()
    );
    let burst = list
        .iter()
        .find(|a| a["decision"] == "failure_burst")
        .expect("failure_burst alert");
    let evidence: Vec<&str> = burst["record"]["evidence"]["request_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(evidence.len(), 5);
    assert!(evidence.iter().all(|e| ids.iter().any(|i| i == e)));
    until("the log line", async || {
        gw.stderr().contains("\"message\":\"anomaly\"")
    })
    .await;
    until("the webhook", async || hook.count() > 0).await;
    let posted: Value = serde_json::from_slice(&hook.seen()[0].body).unwrap();
    let first = if posted.is_array() {
        posted[0].clone()
    } else {
        posted
    };
    assert_eq!(first["type"], "portcullis.anomaly/v1");
    assert_eq!(first["identity"], "order-service");

    // 2. The responder queries the window: what did order-service do, what
    //    was rejected, which request ids to chase.
    let window = format!("consumer=order-service&from={t0}&to=now");
    let rejected = get(
        &gw,
        &format!("/portcullis/v1/audit?{window}&decision=reject&event=request"),
    )
    .await;
    assert_eq!(rejected["total"], 6);
    assert!(rejected["list"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["plugin"] == "request-validation"));
    let summary = get(
        &gw,
        &format!("/portcullis/v1/audit/summary?{window}&event=request&group_by=consumer,route"),
    )
    .await;
    let admin_users = summary["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["route"] == "admin-users")
        .unwrap();
    assert_eq!(admin_users["reject"], 6);
    let profile = get(&gw, "/portcullis/v1/audit/profiles?identity=order-service").await;
    assert_eq!(profile["list"][0]["validation_failures"], 6);

    // 3. Contain: one call; traffic stops on the next request.
    let r = request("POST", &gw.admin_url("/portcullis/v1/quarantine"), &[ADMIN],
        json!({"consumer": "order-service", "action": "block", "reason": "runbook: suspected compromised dependency", "expires_in": 3600}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let seen = up.count();
    for path in ["/orders", "/orders"] {
        let r = request("GET", &gw.url(path), &[("apikey", KEY)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 403);
    }
    assert_eq!(up.count(), seen);

    // 4. Lift it once the dependency is fixed (or let it expire).
    let r = request(
        "DELETE",
        &gw.admin_url(&format!("/portcullis/v1/quarantine/{id}")),
        &[ADMIN],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = request("GET", &gw.url("/orders"), &[("apikey", KEY)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // 5. The record of all of it holds together.
    until("the lift event", async || {
        get(&gw, "/portcullis/v1/audit?event=quarantine.lift").await["total"] == 1
    })
    .await;
    let out = Command::new(portcullis_test_support::gateway::binary_path())
        .args([
            "audit",
            "verify",
            "--config",
            gw.config_path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_mode_quarantines_by_itself_with_an_expiry() {
    let (up, hook) = (
        RecordingUpstream::start().await,
        RecordingUpstream::start().await,
    );
    let gw = Gateway::start(&config(
        &up,
        &hook,
        "    mode: alert\n    detectors: { failure_burst: enforce }\n    quarantine_for: 2\n",
    ));
    compromise(&gw).await;
    let mut list = Value::Null;
    until("the automatic quarantine", async || {
        list = get(&gw, "/portcullis/v1/quarantine").await;
        list["total"] == 1
    })
    .await;
    assert_eq!(list["list"][0]["target"], "consumer:order-service");
    assert_eq!(list["list"][0]["created_by"], "anomaly-detector");
    assert!(list["list"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("failure_burst"));
    let r = request("GET", &gw.url("/orders"), &[("apikey", KEY)], "")
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // It expires by itself.
    until("the expiry", async || {
        request("GET", &gw.url("/orders"), &[("apikey", KEY)], "")
            .await
            .unwrap()
            .status
            == 200
    })
    .await;
}
