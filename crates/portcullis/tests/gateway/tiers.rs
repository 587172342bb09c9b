//! Black-box tests of risk tiers: a route whose effective plugins lack a
//! control its `tier` label requires is refused through every path — the
//! `validate` command, a file reload (the last good config keeps serving and
//! /readyz shows the refusal) and the Admin API (400) — with the missing
//! control named. Each tier, each missing control.

use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_test_support::gateway::binary_path;
use portcullis_test_support::{request, Gateway, RecordingUpstream};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("X-API-KEY", "test-admin-key");

const AUTHN: &str = "authentication (one of";
const STRONG: &str = "strong authentication";
const AUTHZ: &str = "authorization (consumer-restriction or policy)";
const ALLOW_LIST: &str = "an explicit allow-list";
const LIMIT: &str = "a rate limit";
const VALIDATION: &str = "request validation";

/// The plugins that satisfy each tier.
fn complete(tier: &str) -> Value {
    let limit = json!({"count": 100, "time_window": 60});
    let validation = json!({"header_schema": {"type": "object"}});
    match tier {
        "low_risk_read_api" => json!({"key-auth": {}, "limit-count": limit}),
        "customer_data_api" => json!({
            "key-auth": {}, "consumer-restriction": {"whitelist": ["jack"]},
            "limit-count": limit, "request-validation": validation}),
        "payment_or_admin_api" => json!({
            "jwt-auth": {}, "consumer-restriction": {"whitelist": ["jack"]},
            "limit-count": limit, "request-validation": validation}),
        other => panic!("no such tier {other}"),
    }
}

/// (tier, what the case does, its plugins, the control the refusal must name).
fn refused_cases() -> Vec<(&'static str, String, Value, &'static str)> {
    let mut cases = Vec::new();
    let without = |tier: &str, plugin: &str| {
        let mut p = complete(tier);
        p.as_object_mut().unwrap().remove(plugin);
        p
    };
    for (plugin, control) in [("key-auth", AUTHN), ("limit-count", LIMIT)] {
        cases.push((
            "low_risk_read_api",
            format!("without {plugin}"),
            without("low_risk_read_api", plugin),
            control,
        ));
    }
    for (plugin, control) in [
        ("key-auth", AUTHN),
        ("consumer-restriction", AUTHZ),
        ("limit-count", LIMIT),
        ("request-validation", VALIDATION),
    ] {
        cases.push((
            "customer_data_api",
            format!("without {plugin}"),
            without("customer_data_api", plugin),
            control,
        ));
    }
    for (plugin, control) in [
        ("jwt-auth", STRONG),
        ("consumer-restriction", ALLOW_LIST),
        ("limit-count", LIMIT),
        ("request-validation", VALIDATION),
    ] {
        cases.push((
            "payment_or_admin_api",
            format!("without {plugin}"),
            without("payment_or_admin_api", plugin),
            control,
        ));
    }
    // key-auth alone is not strong authentication.
    let mut p = without("payment_or_admin_api", "jwt-auth");
    p["key-auth"] = json!({});
    cases.push((
        "payment_or_admin_api",
        "with key-auth instead of jwt-auth".into(),
        p,
        STRONG,
    ));
    // A blacklist is not an allow-list.
    let mut p = complete("payment_or_admin_api");
    p["consumer-restriction"] = json!({"blacklist": ["rose"]});
    cases.push((
        "payment_or_admin_api",
        "with a blacklist instead of a whitelist".into(),
        p,
        ALLOW_LIST,
    ));
    // A dry-run limit is not a limit.
    let mut p = complete("customer_data_api");
    p["limit-count"]["_meta"] = json!({"dry_run": true});
    cases.push((
        "customer_data_api",
        "with its limit in dry-run".into(),
        p,
        "limit-count is in dry-run",
    ));
    cases
}

fn route_json(tier: &str, plugins: &Value, up: &str) -> Value {
    json!({
        "uri": "/t/*",
        "labels": {"tier": tier},
        "plugins": plugins,
        "upstream": {"nodes": {up: 1}},
    })
}

/// The route as a config file's `routes:` section (JSON is YAML).
fn file_resources(tier: &str, plugins: &Value, up: &str) -> String {
    let mut route = route_json(tier, plugins, up);
    route["id"] = json!("t");
    format!(
        "consumers:\n  - {}\nroutes:\n  - {}\n",
        json!({"username": "jack", "plugins": {"key-auth": {"key": "jack-key-0123456789"}}}),
        route
    )
}

#[test]
fn validate_refuses_each_tier_missing_each_control_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let run = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = Command::new(binary_path())
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for tier in [
        "low_risk_read_api",
        "customer_data_api",
        "payment_or_admin_api",
    ] {
        let (ok, err) = run(&file_resources(tier, &complete(tier), "127.0.0.1:9"));
        assert!(ok, "{tier} with every control is valid: {err}");
    }
    for (tier, case, plugins, control) in refused_cases() {
        let (ok, err) = run(&file_resources(tier, &plugins, "127.0.0.1:9"));
        assert!(!ok, "{tier} {case} was accepted");
        assert!(
            err.contains("routes[0].labels.tier: tier ") && err.contains(control),
            "{tier} {case}: the refusal should name {control:?}: {err}"
        );
    }
    let (ok, err) = run(&file_resources(
        "gold",
        &complete("low_risk_read_api"),
        "127.0.0.1:9",
    ));
    assert!(!ok);
    assert!(err.contains("unknown tier \"gold\""), "{err}");
}

#[test]
fn the_tier_templates_in_examples_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiers");
    for tier in [
        "low_risk_read_api",
        "customer_data_api",
        "payment_or_admin_api",
    ] {
        let out = Command::new(binary_path())
            .args(["validate", "--config"])
            .arg(root.join(format!("{tier}.yaml")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tier}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn readyz(gw: &Gateway) -> Value {
    request("GET", &gw.metrics_url("/readyz"), &[], "")
        .await
        .unwrap()
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reload_missing_a_control_is_refused_and_the_last_good_config_keeps_serving() {
    let up = RecordingUpstream::start().await;
    let addr = up.addr.to_string();
    let good = file_resources("low_risk_read_api", &complete("low_risk_read_api"), &addr);
    let gw = Gateway::start(&good);
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let gateway = text.split("\nconsumers:").next().unwrap().to_string();
    let key = [("apikey", "jack-key-0123456789")];
    assert_eq!(
        request("GET", &gw.url("/t/x"), &key, "")
            .await
            .unwrap()
            .status,
        200
    );
    let mut last_refused = readyz(&gw).await["reloads_refused"].as_u64().unwrap_or(0);
    for (tier, case, plugins, control) in refused_cases() {
        gw.write_config(&format!(
            "{gateway}\n{}",
            file_resources(tier, &plugins, &addr)
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = loop {
            let ready = readyz(&gw).await;
            if ready["reloads_refused"].as_u64().unwrap_or(0) > last_refused
                || Instant::now() > deadline
            {
                break ready;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        last_refused = ready["reloads_refused"].as_u64().unwrap_or(0);
        let err = ready["last_reload_error"][0].as_str().unwrap_or_default();
        assert!(
            err.starts_with("routes[0].labels.tier: tier ") && err.contains(control),
            "{tier} {case}: /readyz should name {control:?}: {ready}"
        );
        // The last good config (low_risk_read_api, complete) still serves.
        let r = request("GET", &gw.url("/t/x"), &key, "").await.unwrap();
        assert_eq!(r.status, 200, "{tier} {case}: {}", r.text());
        assert_eq!(
            request("GET", &gw.url("/t/x"), &[], "")
                .await
                .unwrap()
                .status,
            401,
            "{tier} {case}: the served route still authenticates"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_400_naming_the_missing_control_and_stores_nothing() {
    let up = RecordingUpstream::start().await;
    let addr = up.addr.to_string();
    let gw = Gateway::start("");
    let admin = |method: &'static str, path: &str, body: String| {
        let url = gw.admin_url(path);
        async move { request(method, &url, &[ADMIN], body).await.unwrap() }
    };
    for (tier, case, plugins, control) in refused_cases() {
        let r = admin(
            "PUT",
            "/apisix/admin/routes/t",
            route_json(tier, &plugins, &addr).to_string(),
        )
        .await;
        assert_eq!(r.status, 400, "{tier} {case}: {}", r.text());
        let msg = r.json()["error_msg"].as_str().unwrap().to_string();
        assert!(
            msg.starts_with("invalid configuration: labels.tier: tier ") && msg.contains(control),
            "{tier} {case}: {msg}"
        );
        let stored = admin("GET", "/apisix/admin/routes/t", String::new()).await;
        assert_eq!(stored.status, 404, "{tier} {case}: nothing is stored");
    }
    // With every control present the lower tiers are written at once; the
    // top tier is valid too, and held for a second admin (dual_control.rs).
    for (tier, status) in [
        ("low_risk_read_api", 201),
        ("customer_data_api", 200),
        ("payment_or_admin_api", 202),
    ] {
        let r = admin(
            "PUT",
            "/apisix/admin/routes/t",
            route_json(tier, &complete(tier), &addr).to_string(),
        )
        .await;
        assert_eq!(r.status, status, "{tier}: {}", r.text());
    }
    // A service edit that would leave a tiered route short is refused too.
    let r = admin(
        "PUT",
        "/apisix/admin/services/s",
        json!({"plugins": {"key-auth": {}, "limit-count": {"count": 5, "time_window": 60}}})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin(
        "PUT",
        "/apisix/admin/routes/behind",
        json!({"uri": "/b", "service_id": "s", "labels": {"tier": "low_risk_read_api"},
               "upstream": {"nodes": {addr.as_str(): 1}}})
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "the service's plugins count: {}", r.text());
    let r = admin(
        "PUT",
        "/apisix/admin/services/s",
        json!({"plugins": {"key-auth": {}}}).to_string(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error_msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("routes/behind") && msg.contains(LIMIT),
        "{msg}"
    );
}
