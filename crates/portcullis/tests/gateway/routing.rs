//! Black-box tests of APISIX routing through the real binary.

use portcullis_test_support::{request, Gateway, RecordingUpstream};

async fn status(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let r = request(method, &gw.url(path), headers, "")
        .await
        .expect("request");
    let which = r
        .json()
        .get("headers")
        .and_then(|h| h.get("x-route"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_default();
    (r.status, which)
}

/// Each route tags the request with its id, so the test sees which matched.
fn route(id: &str, body: &str, upstream: &RecordingUpstream) -> String {
    format!(
        "  - id: {id}\n{body}    upstream: {{ nodes: {{ \"{}\": 1 }} }}\n    plugins:\n      proxy-rewrite: {{ headers: {{ set: {{ x-route: {id} }} }} }}\n",
        upstream.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apisix_match_rules_pick_the_expected_route() {
    let up = RecordingUpstream::start().await;
    let mut cfg = String::from("routes:\n");
    cfg += &route("exact", "    uri: /api/users\n", &up);
    cfg += &route("prefix", "    uri: /api/*\n", &up);
    cfg += &route("get-only", "    uri: /read/*\n    methods: [GET]\n", &up);
    cfg += &route(
        "wild-host",
        "    uri: /h/*\n    hosts: [\"*.example.com\"]\n",
        &up,
    );
    cfg += &route("low", "    uri: /p/*\n    priority: 1\n", &up);
    cfg += &route("high", "    uri: /p/*\n    priority: 10\n", &up);
    cfg += &route("off", "    uri: /off/*\n    status: 0\n", &up);
    cfg += &route(
        "vars",
        "    uri: /v/*\n    vars: [[\"AND\", [\"arg_env\", \"==\", \"beta\"], [\"OR\", [\"http_x_tier\", \"in\", [\"gold\", \"silver\"]], [\"http_x_vip\", \"~~\", \"^y\"]]]]\n",
        &up,
    );
    cfg += &route(
        "loopback",
        "    uri: /net/*\n    remote_addrs: [\"127.0.0.0/8\"]\n",
        &up,
    );
    cfg += &route(
        "elsewhere",
        "    uri: /far/*\n    remote_addrs: [\"10.0.0.0/8\"]\n",
        &up,
    );
    let gw = Gateway::start(&cfg);

    assert_eq!(
        status(&gw, "GET", "/api/users", &[]).await,
        (200, "exact".into())
    );
    assert_eq!(
        status(&gw, "GET", "/api/users/7", &[]).await,
        (200, "prefix".into())
    );
    assert_eq!(
        status(&gw, "GET", "/read/x", &[]).await,
        (200, "get-only".into())
    );
    assert_eq!(status(&gw, "POST", "/read/x", &[]).await.0, 404);
    assert_eq!(
        status(&gw, "GET", "/h/x", &[("host", "a.example.com")]).await,
        (200, "wild-host".into())
    );
    assert_eq!(
        status(&gw, "GET", "/h/x", &[("host", "example.com")])
            .await
            .0,
        404
    );
    assert_eq!(status(&gw, "GET", "/p/x", &[]).await, (200, "high".into()));
    assert_eq!(status(&gw, "GET", "/off/x", &[]).await.0, 404);
    assert_eq!(
        status(&gw, "GET", "/v/x?env=beta", &[("x-tier", "gold")]).await,
        (200, "vars".into())
    );
    assert_eq!(
        status(&gw, "GET", "/v/x?env=beta", &[("x-vip", "yes")]).await,
        (200, "vars".into())
    );
    assert_eq!(
        status(&gw, "GET", "/v/x?env=beta", &[("x-tier", "bronze")])
            .await
            .0,
        404
    );
    assert_eq!(
        status(&gw, "GET", "/v/x?env=prod", &[("x-tier", "gold")])
            .await
            .0,
        404
    );
    assert_eq!(
        status(&gw, "GET", "/net/x", &[]).await,
        (200, "loopback".into())
    );
    assert_eq!(status(&gw, "GET", "/far/x", &[]).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_inherits_upstream_and_plugins_from_its_service() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&format!(
        "upstreams:\n  - id: u1\n    nodes: {{ \"{}\": 1 }}\nservices:\n  - id: s1\n    upstream_id: u1\n    plugins:\n      proxy-rewrite: {{ headers: {{ set: {{ x-from: service }} }} }}\nroutes:\n  - id: r1\n    uri: /svc/*\n    service_id: s1\n",
        up.addr
    ));
    let r = request("GET", &gw.url("/svc/a"), &[], "").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.seen()[0].headers["x-from"], "service");
}
