//! Black-box tests of dual control: Admin API writes that touch a
//! `payment_or_admin_api` route are held until a different admin key
//! approves them; a pending change does not affect traffic, an approved one
//! does; approvals and rejections are in the change history.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_test_support::gateway::default_gateway_section;
use portcullis_test_support::{request, Gateway, RecordingUpstream, Response};
use serde_json::{json, Value};

const ALICE: (&str, &str) = ("X-API-KEY", "alice-admin-key");
const BOB: (&str, &str) = ("X-API-KEY", "bob-admin-key");
const AUDITOR: (&str, &str) = ("X-API-KEY", "test-viewer-key");
pub(crate) const SECRET: &str = "jack-hmac-secret-0123456789";

fn start() -> Gateway {
    let section = default_gateway_section().replace(
        "      - { name: ops, key: test-admin-key, role: admin }\n",
        "      - { name: alice, key: alice-admin-key, role: admin }\n      - { name: bob, key: bob-admin-key, role: admin }\n",
    );
    assert!(
        section.contains("alice"),
        "the default section changed shape"
    );
    Gateway::start(&section)
}

async fn admin(gw: &Gateway, key: (&str, &str), method: &str, path: &str, body: Value) -> Response {
    gw.admin_as(key, method, path, body).await
}

/// A token for consumer jack (also used by etcd_containment).
pub(crate) fn jwt() -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"key": "jack", "exp": 4_000_000_000u64}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A complete payment_or_admin_api route; `version` is set as a header on
/// the way upstream, so a test can tell which version served (also used by
/// etcd_containment).
pub(crate) fn pay_route(version: &str) -> Value {
    json!({
        "uri": "/pay/*",
        "labels": {"tier": "payment_or_admin_api"},
        "upstream_id": "u1",
        "plugins": {
            "jwt-auth": {},
            "consumer-restriction": {"whitelist": ["jack"]},
            "limit-count": {"count": 1000, "time_window": 60},
            "request-validation": {"header_schema": {"type": "object"}},
            "proxy-rewrite": {"headers": {"set": {"x-version": version}}}
        }
    })
}

async fn pay(gw: &Gateway) -> Response {
    let auth = format!("Bearer {}", jwt());
    request("GET", &gw.url("/pay/x"), &[("authorization", &auth)], "")
        .await
        .unwrap()
}

fn served_version(up: &RecordingUpstream) -> String {
    let seen = up.seen();
    let last = seen.last().expect("the upstream saw a request");
    last.headers["x-version"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_tier_change_waits_for_a_different_admin_and_only_then_serves() {
    let up = RecordingUpstream::start().await;
    let gw = start();
    // Writes that touch no top-tier route apply at once.
    let r = admin(
        &gw,
        ALICE,
        "PUT",
        "/apisix/admin/upstreams/u1",
        json!({"nodes": {up.addr.to_string(): 1}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin(
        &gw,
        ALICE,
        "PUT",
        "/apisix/admin/consumers/jack",
        json!({"plugins": {"jwt-auth": {"key": "jack", "secret": SECRET}}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // Creating the top-tier route is held: 202 with the pending change's id.
    let r = admin(
        &gw,
        ALICE,
        "PUT",
        "/apisix/admin/routes/pay",
        pay_route("1"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let first = r.json()["id"].as_str().unwrap().to_string();
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("route pay is tier payment_or_admin_api"));

    // Pending: not stored, not served.
    assert_eq!(
        admin(&gw, ALICE, "GET", "/apisix/admin/routes/pay", Value::Null)
            .await
            .status,
        404
    );
    assert_eq!(pay(&gw).await.status, 404);
    assert_eq!(up.count(), 0);

    // Anyone may see it; a viewer may not decide it.
    let list = admin(&gw, AUDITOR, "GET", "/portcullis/v1/approvals", Value::Null).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["total"], 1);
    assert_eq!(list.json()["list"][0]["proposed_by"], "alice");
    assert_eq!(list.json()["list"][0]["resource_id"], "pay");
    let approve = format!("/portcullis/v1/approvals/{first}/approve");
    assert_eq!(
        admin(&gw, AUDITOR, "POST", &approve, Value::Null)
            .await
            .status,
        401
    );

    // The proposer cannot approve their own change.
    let r = admin(&gw, ALICE, "POST", &approve, Value::Null).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(pay(&gw).await.status, 404);

    // A second admin approves: now it serves.
    let r = admin(&gw, BOB, "POST", &approve, Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "approved");
    assert_eq!(r.json()["decided_by"], "bob");
    let served = pay(&gw).await;
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served_version(&up), "1");
    assert_eq!(
        admin(&gw, BOB, "POST", &approve, Value::Null).await.status,
        409,
        "a change is applied once"
    );

    // An edit is held too; rejected, it never serves.
    let r = admin(
        &gw,
        ALICE,
        "PUT",
        "/apisix/admin/routes/pay",
        pay_route("2"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let second = r.json()["id"].as_str().unwrap().to_string();
    pay(&gw).await;
    assert_eq!(served_version(&up), "1", "a pending edit does not serve");
    let r = admin(
        &gw,
        BOB,
        "POST",
        &format!("/portcullis/v1/approvals/{second}/reject"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "rejected");
    pay(&gw).await;
    assert_eq!(served_version(&up), "1");

    // Proposed again and approved by bob, it serves.
    let r = admin(
        &gw,
        ALICE,
        "PUT",
        "/apisix/admin/routes/pay",
        pay_route("2"),
    )
    .await;
    let third = r.json()["id"].as_str().unwrap().to_string();
    let r = admin(
        &gw,
        BOB,
        "POST",
        &format!("/portcullis/v1/approvals/{third}/approve"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    pay(&gw).await;
    assert_eq!(served_version(&up), "2");

    // What the route uses is guarded as well: its upstream, and deleting it.
    let r = admin(
        &gw,
        BOB,
        "PATCH",
        "/apisix/admin/upstreams/u1",
        json!({"desc": "moved"}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("uses upstream u1"));
    let r = admin(&gw, BOB, "DELETE", "/apisix/admin/routes/pay", Value::Null).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        pay(&gw).await.status,
        200,
        "a pending delete does not serve"
    );

    // The change history tells who proposed, approved and rejected what.
    let history = admin(
        &gw,
        AUDITOR,
        "GET",
        "/portcullis/v1/changes?resource=routes/pay",
        Value::Null,
    )
    .await
    .json();
    let entries: Vec<(String, String)> = history["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["actor"].as_str().unwrap().to_string(),
                c["method"].as_str().unwrap().to_string(),
            )
        })
        .rev()
        .collect();
    let expected: Vec<(String, String)> = [
        ("alice", "PROPOSE"),
        ("alice", "PUT"),
        ("bob", "APPROVE"),
        ("alice", "PROPOSE"),
        ("bob", "REJECT"),
        ("alice", "PROPOSE"),
        ("alice", "PUT"),
        ("bob", "APPROVE"),
        ("bob", "PROPOSE"),
    ]
    .iter()
    .map(|(a, m)| (a.to_string(), m.to_string()))
    .collect();
    assert_eq!(entries, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_below_the_top_tier_are_not_held() {
    let up = RecordingUpstream::start().await;
    let gw = start();
    let r = admin(
        &gw,
        ALICE,
        "PUT",
        "/apisix/admin/routes/open",
        json!({"uri": "/open", "upstream": {"nodes": {up.addr.to_string(): 1}}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin(
        &gw,
        ALICE,
        "PUT",
        "/apisix/admin/routes/read",
        json!({"uri": "/read", "labels": {"tier": "low_risk_read_api"},
               "plugins": {"key-auth": {}, "limit-count": {"count": 5, "time_window": 60}},
               "upstream": {"nodes": {up.addr.to_string(): 1}}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let pending = admin(&gw, ALICE, "GET", "/portcullis/v1/approvals", Value::Null).await;
    assert_eq!(pending.json()["total"], 0);
    assert_eq!(
        request("GET", &gw.url("/open"), &[], "")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_rule_write_is_held_while_a_top_tier_route_exists() {
    let up = RecordingUpstream::start().await;
    let gw = start();
    for (path, body) in [
        (
            "/apisix/admin/upstreams/u1",
            json!({"nodes": {up.addr.to_string(): 1}}),
        ),
        (
            "/apisix/admin/consumers/jack",
            json!({"plugins": {"jwt-auth": {"key": "jack", "secret": SECRET}}}),
        ),
        // No top-tier route yet: a global rule applies at once.
        (
            "/apisix/admin/global_rules/g1",
            json!({"plugins": {"request-id": {}}}),
        ),
    ] {
        let r = admin(&gw, ALICE, "PUT", path, body).await;
        assert_eq!(r.status, 201, "{path}: {}", r.text());
    }
    let r = admin(
        &gw,
        ALICE,
        "PUT",
        "/apisix/admin/routes/pay",
        pay_route("1"),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = admin(
        &gw,
        BOB,
        "POST",
        &format!("/portcullis/v1/approvals/{id}/approve"),
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(pay(&gw).await.status, 200);

    // A global rule runs on every route, the payment route too: held.
    let edit = json!({"plugins": {"request-id": {"header_name": "x-trace"}}});
    let r = admin(&gw, ALICE, "PUT", "/apisix/admin/global_rules/g1", edit).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let message = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(
            "global rule g1 applies to every route, and route pay is tier payment_or_admin_api"
        ),
        "{message}"
    );
    let held = r.json()["id"].as_str().unwrap().to_string();
    let served = admin(
        &gw,
        AUDITOR,
        "GET",
        "/apisix/admin/global_rules/g1",
        Value::Null,
    )
    .await;
    assert!(served.json()["value"]["plugins"]["request-id"]
        .get("header_name")
        .is_none());
    let approve = format!("/portcullis/v1/approvals/{held}/approve");
    assert_eq!(
        admin(&gw, ALICE, "POST", &approve, Value::Null)
            .await
            .status,
        403
    );
    let r = admin(&gw, BOB, "POST", &approve, Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let served = admin(
        &gw,
        AUDITOR,
        "GET",
        "/apisix/admin/global_rules/g1",
        Value::Null,
    )
    .await;
    assert_eq!(
        served.json()["value"]["plugins"]["request-id"]["header_name"],
        "x-trace"
    );

    // New ones and deletes too.
    let r = admin(
        &gw,
        BOB,
        "PUT",
        "/apisix/admin/global_rules/g2",
        json!({"plugins": {"cors": {}}}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let r = admin(
        &gw,
        BOB,
        "DELETE",
        "/apisix/admin/global_rules/g1",
        Value::Null,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        admin(
            &gw,
            AUDITOR,
            "GET",
            "/apisix/admin/global_rules/g1",
            Value::Null
        )
        .await
        .status,
        200
    );
}
