//! Containment through the real binary: a quarantine applies to the very
//! next request, lifts itself at expiry or on DELETE, survives a restart,
//! and every step is in the audit store and the change history.

use std::time::{Duration, Instant};

use portcullis_test_support::{request, Gateway, RecordingUpstream};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("x-api-key", "test-admin-key");
const VIEWER: (&str, &str) = ("x-api-key", "test-viewer-key");

async fn admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    key: (&str, &str),
    body: Value,
) -> (u16, Value) {
    let r = gw.admin_as(key, method, path, body).await;
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// A store-mode gateway with consumers alice and bob (key-auth) and routes
/// `orders` and `other` to `up`, and an upstream `safe` to `safe`.
async fn gateway(up: &RecordingUpstream, safe: &RecordingUpstream) -> Gateway {
    let gw = Gateway::start("");
    for user in ["alice", "bob"] {
        let (s, v) = admin(
            &gw,
            "PUT",
            &format!("/apisix/admin/consumers/{user}"),
            ADMIN,
            json!({"username": user, "plugins": {"key-auth": {"key": format!("{user}-key")}}}),
        )
        .await;
        assert!(s == 200 || s == 201, "{v}");
    }
    let (s, v) = admin(
        &gw,
        "PUT",
        "/apisix/admin/upstreams/safe",
        ADMIN,
        json!({"nodes": {safe.addr.to_string(): 1}, "type": "roundrobin"}),
    )
    .await;
    assert!(s == 200 || s == 201, "{v}");
    for (id, uri) in [("orders", "/orders"), ("other", "/other")] {
        let (s, v) = admin(
            &gw,
            "PUT",
            &format!("/apisix/admin/routes/{id}"),
            ADMIN,
            json!({
                "uri": uri,
                "plugins": {"key-auth": {}, "request-id": {}},
                "upstream": {"nodes": {up.addr.to_string(): 1}, "type": "roundrobin"},
            }),
        )
        .await;
        assert!(s == 200 || s == 201, "{v}");
    }
    gw
}

async fn call(gw: &Gateway, path: &str, key: &str) -> portcullis_test_support::Response {
    request("GET", &gw.url(path), &[("apikey", key)], "")
        .await
        .expect("request")
}

async fn events(gw: &Gateway, event: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = admin(
            gw,
            "GET",
            &format!("/portcullis/v1/audit?event={event}"),
            VIEWER,
            Value::Null,
        )
        .await;
        if v["total"].as_u64().unwrap_or(0) >= n || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_applies_to_the_next_request_and_delete_lifts_it() {
    let (up, safe) = (
        RecordingUpstream::start().await,
        RecordingUpstream::start().await,
    );
    let gw = gateway(&up, &safe).await;
    assert_eq!(call(&gw, "/orders", "alice-key").await.status, 200);

    // A viewer may not contain.
    let body = json!({"consumer": "alice", "action": "block", "reason": "suspected compromise", "expires_in": 3600});
    let (s, _) = admin(
        &gw,
        "POST",
        "/portcullis/v1/quarantine",
        VIEWER,
        body.clone(),
    )
    .await;
    assert_eq!(s, 401);

    let (s, q) = admin(&gw, "POST", "/portcullis/v1/quarantine", ADMIN, body).await;
    assert_eq!(s, 201, "{q}");
    let id = q["id"].as_str().unwrap().to_string();
    assert_eq!(q["target"], "consumer:alice");
    assert_eq!(q["created_by"], "ops");
    assert!(q["expires"].as_str().is_some());

    // The very next request, with no wait.
    let seen = up.count();
    let r = call(&gw, "/orders", "alice-key").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json(),
        json!({"message": "Access suspended: quarantined by the gateway"})
    );
    assert_eq!(r.header("x-portcullis-quarantine"), Some(id.as_str()));
    assert_eq!(
        up.count(),
        seen,
        "a blocked request never reaches the upstream"
    );
    assert_eq!(call(&gw, "/other", "alice-key").await.status, 403);
    assert_eq!(call(&gw, "/orders", "bob-key").await.status, 200);

    let (s, list) = admin(&gw, "GET", "/portcullis/v1/quarantine", VIEWER, Value::Null).await;
    assert_eq!(s, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["list"][0]["id"], id.as_str());
    assert_eq!(list["list"][0]["reason"], "suspected compromise");
    let (s, _) = admin(
        &gw,
        "GET",
        &format!("/portcullis/v1/quarantine/{id}"),
        VIEWER,
        Value::Null,
    )
    .await;
    assert_eq!(s, 200);

    let (s, _) = admin(
        &gw,
        "DELETE",
        &format!("/portcullis/v1/quarantine/{id}"),
        VIEWER,
        Value::Null,
    )
    .await;
    assert_eq!(s, 401);
    let (s, v) = admin(
        &gw,
        "DELETE",
        &format!("/portcullis/v1/quarantine/{id}"),
        ADMIN,
        Value::Null,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(call(&gw, "/orders", "alice-key").await.status, 200);
    let (s, _) = admin(
        &gw,
        "DELETE",
        &format!("/portcullis/v1/quarantine/{id}"),
        ADMIN,
        Value::Null,
    )
    .await;
    assert_eq!(s, 404);

    // Audited: the steps, and the blocked requests with their decision.
    let created = events(&gw, "quarantine.create", 1).await;
    assert_eq!(created["list"][0]["record"]["actor"], "ops");
    assert_eq!(created["list"][0]["consumer"], "alice");
    let lifted = events(&gw, "quarantine.lift", 1).await;
    assert_eq!(lifted["total"], 1);
    // Records reach the store in batches off the request path: wait for them.
    let mut blocked = Value::Null;
    for _ in 0..100 {
        (_, blocked) = admin(
            &gw,
            "GET",
            "/portcullis/v1/audit?consumer=alice&status=403",
            VIEWER,
            Value::Null,
        )
        .await;
        if blocked["total"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(blocked["total"], 2, "{blocked}");
    assert_eq!(blocked["list"][0]["plugin"], "quarantine");
    let decisions = blocked["list"][0]["record"]["decisions"]
        .as_array()
        .unwrap();
    assert!(decisions
        .iter()
        .any(|d| d["plugin"] == "quarantine" && d["result"] == "reject"));

    // And in the change history.
    let (_, changes) = admin(
        &gw,
        "GET",
        "/portcullis/v1/changes?resource=quarantine",
        VIEWER,
        Value::Null,
    )
    .await;
    assert_eq!(changes["total"], 2, "{changes}");
    assert_eq!(changes["list"][0]["method"], "DELETE");
    assert_eq!(changes["list"][1]["method"], "POST");
    assert_eq!(changes["list"][1]["actor"], "ops");
    assert_eq!(changes["list"][1]["after"]["target"], "consumer:alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_lifts_a_quarantine_and_a_restart_keeps_the_active_ones() {
    let (up, safe) = (
        RecordingUpstream::start().await,
        RecordingUpstream::start().await,
    );
    let mut gw = gateway(&up, &safe).await;
    let (s, short) = admin(
        &gw,
        "POST",
        "/portcullis/v1/quarantine",
        ADMIN,
        json!({"consumer": "alice", "action": "block", "reason": "short", "expires_in": 1.5}),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = admin(
        &gw,
        "POST",
        "/portcullis/v1/quarantine",
        ADMIN,
        json!({"route": "other", "action": "block", "reason": "route closed", "expires_in": 3600}),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(call(&gw, "/orders", "alice-key").await.status, 403);

    gw.restart(&[]);
    assert_eq!(
        call(&gw, "/other", "bob-key").await.status,
        403,
        "the route quarantine survives a restart"
    );
    let (_, list) = admin(&gw, "GET", "/portcullis/v1/quarantine", VIEWER, Value::Null).await;
    assert!(list["total"].as_u64().unwrap() >= 1);

    // The short one lifts itself.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = 403;
    while Instant::now() < deadline {
        status = call(&gw, "/orders", "alice-key").await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    let expired = events(&gw, "quarantine.expire", 1).await;
    assert_eq!(expired["list"][0]["request_id"], short["id"]);
    let (_, list) = admin(&gw, "GET", "/portcullis/v1/quarantine", VIEWER, Value::Null).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["list"][0]["target"], "route:other");
    let (_, changes) = admin(
        &gw,
        "GET",
        "/portcullis/v1/changes?resource=quarantine",
        VIEWER,
        Value::Null,
    )
    .await;
    assert!(
        changes["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["method"] == "EXPIRE"),
        "{changes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_redirect_and_client_network_quarantines() {
    let (up, safe) = (
        RecordingUpstream::start().await,
        RecordingUpstream::start().await,
    );
    let gw = gateway(&up, &safe).await;

    // Refused requests say why.
    for bad in [
        json!({"consumer": "a", "route": "b", "action": "block"}),
        json!({"action": "block"}),
        json!({"consumer": "a", "action": "limit"}),
        json!({"consumer": "a", "action": "redirect"}),
        json!({"client_cidr": "not-a-net", "action": "block"}),
        json!({"consumer": "a", "action": "explode"}),
    ] {
        let (s, v) = admin(&gw, "POST", "/portcullis/v1/quarantine", ADMIN, bad.clone()).await;
        assert_eq!(s, 400, "{bad} → {v}");
    }

    // limit: one request per second, burst one.
    let (s, q) = admin(&gw, "POST", "/portcullis/v1/quarantine", ADMIN,
        json!({"consumer": "alice", "action": "limit", "rate": 1, "burst": 1, "reason": "cut quota"})).await;
    assert_eq!(s, 201, "{q}");
    assert_eq!(call(&gw, "/orders", "alice-key").await.status, 200);
    let r = call(&gw, "/orders", "alice-key").await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json(),
        json!({"error_msg": "quarantine rate limit exceeded"})
    );
    admin(
        &gw,
        "DELETE",
        &format!("/portcullis/v1/quarantine/{}", q["id"].as_str().unwrap()),
        ADMIN,
        Value::Null,
    )
    .await;

    // redirect to the safe upstream.
    let (s, q) = admin(
        &gw,
        "POST",
        "/portcullis/v1/quarantine",
        ADMIN,
        json!({"consumer": "bob", "action": "redirect", "redirect": {"upstream_id": "safe"}}),
    )
    .await;
    assert_eq!(s, 201, "{q}");
    let (before_up, before_safe) = (up.count(), safe.count());
    assert_eq!(call(&gw, "/orders", "bob-key").await.status, 200);
    assert_eq!((up.count(), safe.count()), (before_up, before_safe + 1));
    admin(
        &gw,
        "DELETE",
        &format!("/portcullis/v1/quarantine/{}", q["id"].as_str().unwrap()),
        ADMIN,
        Value::Null,
    )
    .await;

    // redirect to a mocked answer, for a whole route.
    let (s, q) = admin(
        &gw,
        "POST",
        "/portcullis/v1/quarantine",
        ADMIN,
        json!({
        "route": "other", "action": "redirect",
        "redirect": {"status": 503, "body": "{\"maintenance\":true}"}}),
    )
    .await;
    assert_eq!(s, 201, "{q}");
    let r = call(&gw, "/other", "bob-key").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json(), json!({"maintenance": true}));
    admin(
        &gw,
        "DELETE",
        &format!("/portcullis/v1/quarantine/{}", q["id"].as_str().unwrap()),
        ADMIN,
        Value::Null,
    )
    .await;

    // A client network: even requests that fail authentication are blocked
    // once the check runs.
    let (s, _) = admin(
        &gw,
        "POST",
        "/portcullis/v1/quarantine",
        ADMIN,
        json!({"client_cidr": "127.0.0.0/8", "action": "block", "expires_in": 60}),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(call(&gw, "/orders", "bob-key").await.status, 403);
    assert_eq!(call(&gw, "/other", "alice-key").await.status, 403);
}
