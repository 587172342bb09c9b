//! Black-box tests of basic-auth through the real binary: APISIX's answers,
//! identity headers upstream, and passwords that never come back out of the
//! Admin API.

use std::time::{Duration, Instant};

use base64::Engine;
use portcullis_test_support::{request, Gateway, RecordingUpstream};
use serde_json::{json, Value};

fn basic(user: &str, password: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_answers_as_apisix_and_only_the_right_password_reaches_the_upstream() {
    let up = RecordingUpstream::start().await;
    let cfg = format!(
        r#"routes:
  - id: basic
    uri: /basic/*
    upstream: {{ nodes: {{ "{up}": 1 }} }}
    plugins:
      basic-auth: {{ hide_credentials: true }}
consumers:
  - username: jack
    plugins:
      basic-auth: {{ username: jack, password: "jack:pass word" }}
  - username: billing
  - id: billing/credentials/new
    plugins:
      basic-auth: {{ username: billing, password: b1ll1ng }}
"#,
        up = up.addr
    );
    let gw = Gateway::start(&cfg);
    let url = gw.url("/basic/x");

    let r = request("GET", &url, &[], "").await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"message": "Missing authorization in request"})
    );
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"basic\""));

    for (header, message) in [
        ("Basic %%%".to_string(), "Invalid authorization in request"),
        ("Bearer abc".to_string(), "Invalid authorization in request"),
        (basic("jack", "wrong"), "Invalid user authorization"),
        (
            basic("nobody", "jack:pass word"),
            "Invalid user authorization",
        ),
    ] {
        let r = request("GET", &url, &[("authorization", &header)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{header}");
        assert_eq!(r.json(), json!({ "message": message }));
    }
    assert_eq!(up.count(), 0, "no refused request reached the upstream");

    let r = request(
        "GET",
        &url,
        &[("authorization", &basic("jack", "jack:pass word"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let r = request(
        "GET",
        &url,
        &[("authorization", &basic("billing", "b1ll1ng"))],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = up.seen();
    assert_eq!(seen[0].headers["x-consumer-username"], "jack");
    assert!(seen[0].headers.get("authorization").is_none());
    assert_eq!(seen[1].headers["x-consumer-username"], "billing");
    assert_eq!(seen[1].headers["x-credential-identifier"], "new");
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: Value) -> (u16, Value) {
    let r = request(
        method,
        &gw.admin_url(path),
        &[
            ("x-api-key", "test-admin-key"),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
    .unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_written_through_the_admin_api_are_never_read_back() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start("");
    let (status, _) = admin(
        &gw,
        "PUT",
        "/apisix/admin/consumers",
        json!({"username": "jack", "plugins": {"basic-auth": {"username": "jack", "password": "s3cret-pw"}}}),
    )
    .await;
    assert!(status == 200 || status == 201, "{status}");
    let (status, _) = admin(
        &gw,
        "PUT",
        "/apisix/admin/routes/r1",
        json!({"uri": "/b", "plugins": {"basic-auth": {}}, "upstream": {"nodes": {up.addr.to_string(): 1}}}),
    )
    .await;
    assert!(status == 200 || status == 201, "{status}");

    let (status, body) = admin(&gw, "GET", "/apisix/admin/consumers/jack", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(body["value"]["plugins"]["basic-auth"]["password"], "******");
    assert!(!body.to_string().contains("s3cret-pw"));

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while Instant::now() < deadline {
        let auth = basic("jack", "s3cret-pw");
        status = request("GET", &gw.url("/b"), &[("authorization", &auth)], "")
            .await
            .unwrap()
            .status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    assert!(!gw.stderr().contains("s3cret-pw") && !gw.stdout().contains("s3cret-pw"));
}
