//! The Admin API from the outside: a real listener on a loopback port, a
//! store in a temporary directory, and plain HTTP, as an APISIX user's
//! script would talk to it.

use std::sync::Arc;
use std::time::Duration;

use portcullis_admin::{serve, start_expiry, Admin};
use portcullis_config::settings::{
    AdminKey, AdminRole, AdminSettings, ConfigSource, GatewaySettings,
};
use portcullis_config::{Kind, Live};
use portcullis_store::Store;
use portcullis_test_support::client::{request, Response};
use serde_json::{json, Value};

const ADMIN_KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";
const VIEWER_KEY: &str = "4054f7cf07e344346cd3f287985e76a2";

struct Api {
    base: String,
    live: Arc<Live>,
    store: Arc<Store>,
    /// Owned when the test does not keep the directory itself.
    _dir: Option<tempfile::TempDir>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn settings() -> GatewaySettings {
    let keys = vec![
        AdminKey {
            name: "ops".into(),
            key: ADMIN_KEY.into(),
            role: AdminRole::Admin,
        },
        AdminKey {
            name: "dashboard".into(),
            key: VIEWER_KEY.into(),
            role: AdminRole::Viewer,
        },
    ];
    GatewaySettings {
        config_source: Some(ConfigSource::Store),
        admin: AdminSettings {
            keys,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn start_with(dir: tempfile::TempDir, settings: GatewaySettings) -> Api {
    let mut api = start_in(dir.path(), settings).await;
    api._dir = Some(dir);
    api
}

async fn start_in(path: &std::path::Path, settings: GatewaySettings) -> Api {
    let store = Arc::new(Store::open(path).unwrap());
    let live = Live::new();
    live.apply(store.load_raw().unwrap()).unwrap();
    let admin = Arc::new(Admin::new(
        live.clone(),
        Some(store.clone()),
        &settings,
        None,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let tasks = vec![
        tokio::spawn(serve(listener, admin.clone())),
        start_expiry(admin),
    ];
    Api {
        base,
        live,
        store,
        _dir: None,
        tasks,
    }
}

async fn start() -> Api {
    start_with(tempfile::tempdir().unwrap(), settings()).await
}

impl Api {
    async fn call_as(&self, key: Option<&str>, method: &str, path: &str, body: &str) -> Response {
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if let Some(k) = key {
            headers.push(("X-API-KEY", k));
        }
        request(
            method,
            &format!("{}{path}", self.base),
            &headers,
            body.to_string(),
        )
        .await
        .unwrap()
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> Response {
        self.call_as(Some(ADMIN_KEY), method, path, body).await
    }

    async fn put(&self, path: &str, body: Value) -> Response {
        self.call("PUT", path, &body.to_string()).await
    }

    fn served_routes(&self) -> usize {
        self.live.load().raw.of(Kind::Routes).len()
    }
}

fn has_plugin(name: &str) -> bool {
    portcullis_plugins::plugin_names().any(|n| n == name)
}

async fn upstream(api: &Api, id: &str) {
    let r = api
        .put(
            &format!("/apisix/admin/upstreams/{id}"),
            json!({"type": "roundrobin", "nodes": {"127.0.0.1:18080": 1}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test]
async fn put_creates_with_201_then_replaces_with_200_in_apisix_shape() {
    let api = start().await;
    let r = api
        .put(
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "upstream": {"nodes": {"127.0.0.1:80": 1}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("X-API-VERSION"), Some("v3"));
    let body = r.json();
    assert_eq!(body["key"], "/apisix/routes/1");
    assert_eq!(body["value"]["id"], "1");
    assert_eq!(body["value"]["uri"], "/a");
    assert!(body["value"]["create_time"].is_i64());
    assert!(body["value"]["update_time"].is_i64());
    let created = body["createdIndex"].as_u64().unwrap();
    assert_eq!(body["modifiedIndex"].as_u64().unwrap(), created);

    let r = api
        .put(
            "/apisix/admin/routes/1",
            json!({"uri": "/b", "upstream": {"nodes": {"127.0.0.1:80": 1}}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["createdIndex"].as_u64().unwrap(), created);
    assert!(body["modifiedIndex"].as_u64().unwrap() > created);

    let got = api.call("GET", "/apisix/admin/routes/1", "").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["value"]["uri"], "/b");
    assert_eq!(api.served_routes(), 1);
}

#[tokio::test]
async fn post_makes_a_twenty_digit_id() {
    let api = start().await;
    let r = api
        .call(
            "POST",
            "/apisix/admin/upstreams",
            r#"{"nodes": {"127.0.0.1:80": 1}}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["value"]["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 20);
    assert!(id.chars().all(|c| c.is_ascii_digit()));
    assert_eq!(r.json()["key"], format!("/apisix/upstreams/{id}"));
    let r = api
        .call(
            "POST",
            "/apisix/admin/upstreams",
            r#"{"id": "x", "nodes": {"127.0.0.1:80": 1}}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error_msg"], "wrong upstream id, do not need it");
}

#[tokio::test]
async fn ids_in_body_and_path_must_agree() {
    let api = start().await;
    let r = api
        .put("/apisix/admin/routes/1", json!({"id": "2", "uri": "/a"}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error_msg"], "wrong route id");
    let r = api.put("/apisix/admin/routes", json!({"uri": "/a"})).await;
    assert_eq!(r.json()["error_msg"], "missing route id");
    // An id in the body alone is enough, integer or string.
    upstream(&api, "u").await;
    let r = api
        .put(
            "/apisix/admin/routes",
            json!({"id": 7, "uri": "/a", "upstream_id": "u"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/routes/7");
}

#[tokio::test]
async fn missing_resources_are_key_not_found() {
    let api = start().await;
    for (method, body) in [("GET", ""), ("DELETE", ""), ("PATCH", "{}")] {
        let r = api.call(method, "/apisix/admin/routes/nope", body).await;
        assert_eq!(r.status, 404, "{method}");
        assert_eq!(r.json(), json!({"message": "Key not found"}));
    }
}

#[tokio::test]
async fn lists_have_total_and_items_and_filter_by_name_label_and_uri() {
    let api = start().await;
    upstream(&api, "u").await;
    for (id, name, uri, label) in [
        ("1", "orders", "/orders/*", "team"),
        ("2", "customers", "/customers/*", "owner"),
        ("3", "orders-admin", "/admin/orders", "team"),
    ] {
        let r = api
            .put(
                &format!("/apisix/admin/routes/{id}"),
                json!({"name": name, "uri": uri, "labels": {label: "x"}, "upstream_id": "u"}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let all = api.call("GET", "/apisix/admin/routes", "").await.json();
    assert_eq!(all["total"], 3);
    assert_eq!(all["list"][0]["key"], "/apisix/routes/1");
    assert!(all["list"][0]["createdIndex"].is_u64());
    let by_name = api
        .call("GET", "/apisix/admin/routes?name=orders", "")
        .await
        .json();
    assert_eq!(by_name["total"], 2);
    let by_label = api
        .call("GET", "/apisix/admin/routes?label=owner", "")
        .await
        .json();
    assert_eq!(by_label["total"], 1);
    let by_uri = api
        .call("GET", "/apisix/admin/routes?uri=%5E%2Fadmin", "")
        .await
        .json();
    assert_eq!(by_uri["total"], 1);
    assert_eq!(by_uri["list"][0]["value"]["id"], "3");
    let page = api
        .call("GET", "/apisix/admin/routes?page=2&page_size=10", "")
        .await
        .json();
    assert_eq!(page["total"], 3);
    assert_eq!(page["list"], json!([]));
    let bad = api
        .call("GET", "/apisix/admin/routes?page=1&page_size=5", "")
        .await;
    assert_eq!(bad.status, 400);
    let empty = api.call("GET", "/apisix/admin/services", "").await.json();
    assert_eq!(empty, json!({"total": 0, "list": []}));
}

#[tokio::test]
async fn delete_answers_deleted_and_key_and_stops_serving() {
    let api = start().await;
    upstream(&api, "u").await;
    api.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/a", "upstream_id": "u"}),
    )
    .await;
    assert_eq!(api.served_routes(), 1);
    let r = api.call("DELETE", "/apisix/admin/routes/1", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"deleted": "1", "key": "/apisix/routes/1"}));
    assert_eq!(api.served_routes(), 0);
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused() {
    let api = start().await;
    for key in [None, Some("wrong")] {
        let r = api.call_as(key, "GET", "/apisix/admin/routes", "").await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error_msg"], "failed to check token");
    }
    let r = request(
        "GET",
        &format!("{}/apisix/admin/routes?api_key={ADMIN_KEY}", api.base),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_viewer_may_read_but_every_write_is_refused() {
    let api = start().await;
    upstream(&api, "u").await;
    let r = api
        .call_as(Some(VIEWER_KEY), "GET", "/apisix/admin/upstreams/u", "")
        .await;
    assert_eq!(r.status, 200);
    for method in ["PUT", "POST", "PATCH", "DELETE"] {
        let r = api
            .call_as(
                Some(VIEWER_KEY),
                method,
                "/apisix/admin/upstreams/u",
                r#"{"nodes": {"127.0.0.1:81": 1}}"#,
            )
            .await;
        assert_eq!(r.status, 401, "{method}");
        assert_eq!(
            r.json(),
            json!({"error_msg": "failed to check token", "description": "invalid method for role viewer"})
        );
    }
    assert!(api.store.get(Kind::Upstreams, "u").unwrap().is_some());
}

#[tokio::test]
async fn without_configured_keys_every_request_is_refused() {
    let mut s = settings();
    s.admin.keys.clear();
    let api = start_with(tempfile::tempdir().unwrap(), s).await;
    let r = api.call("GET", "/apisix/admin/routes", "").await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn clients_outside_admin_allow_get_403() {
    let mut s = settings();
    s.admin.allow = vec!["10.0.0.0/8".parse().unwrap()];
    let api = start_with(tempfile::tempdir().unwrap(), s).await;
    let r = api.call("GET", "/apisix/admin/routes", "").await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn bodies_are_json_whatever_the_content_type_and_bad_json_is_400() {
    let api = start().await;
    // call() sends curl -d's form content type with a JSON body.
    upstream(&api, "u").await;
    let r = api
        .call("PUT", "/apisix/admin/upstreams/v", "{not json")
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error_msg"]
        .as_str()
        .unwrap()
        .starts_with("invalid request body: "));
    assert!(api.store.get(Kind::Upstreams, "v").unwrap().is_none());
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let api = start().await;
    let big = format!(r#"{{"desc": "{}"}}"#, "x".repeat(5 * 1024 * 1024));
    let r = api.call("PUT", "/apisix/admin/upstreams/u", &big).await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn invalid_writes_store_nothing_and_name_the_field() {
    let api = start().await;
    let r = api
        .put(
            "/apisix/admin/upstreams/u",
            json!({"nodes": {"127.0.0.1:80": 1}, "type": "nope"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error_msg"].as_str().unwrap().to_string();
    assert!(msg.starts_with("invalid configuration: type"), "{msg}");
    assert!(api.store.get(Kind::Upstreams, "u").unwrap().is_none());

    let r = api
        .put(
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "upstream_id": "missing"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_msg"],
        "failed to fetch upstream info by upstream id [missing], response code: 404"
    );
    let r = api
        .put(
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "plugins": {"no-such-plugin": {}}, "upstream": {"nodes": {"127.0.0.1:80": 1}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error_msg"], "unknown plugin [no-such-plugin]");
    let r = api
        .put(
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "create_time": 1}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(api.store.all().unwrap().is_empty());
    assert!(api.store.changes(&Default::default()).unwrap().is_empty());
}

#[tokio::test]
async fn deleting_what_is_still_used_is_refused_naming_the_user() {
    let api = start().await;
    upstream(&api, "u").await;
    api.put("/apisix/admin/services/s", json!({"upstream_id": "u"}))
        .await;
    let r = api
        .put(
            "/apisix/admin/routes/1",
            json!({"uri": "/a", "service_id": "s"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = api.call("DELETE", "/apisix/admin/upstreams/u", "").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_msg"],
        "can not delete this upstream, service [s] is still using it now"
    );
    let r = api.call("DELETE", "/apisix/admin/services/s", "").await;
    assert_eq!(
        r.json()["error_msg"],
        "can not delete this service directly, route [1] is still using it now"
    );
    api.put(
        "/apisix/admin/routes/2",
        json!({"uri": "/b", "upstream_id": "u"}),
    )
    .await;
    api.call("DELETE", "/apisix/admin/routes/1", "").await;
    let r = api.call("DELETE", "/apisix/admin/upstreams/u", "").await;
    assert_eq!(
        r.json()["error_msg"],
        "can not delete this upstream, route [2] is still using it now"
    );

    api.put("/apisix/admin/plugin_configs/pc", json!({"plugins": {}}))
        .await;
    api.put(
        "/apisix/admin/routes/3",
        json!({"uri": "/c", "upstream_id": "u", "plugin_config_id": "pc"}),
    )
    .await;
    let r = api
        .call("DELETE", "/apisix/admin/plugin_configs/pc", "")
        .await;
    assert_eq!(
        r.json()["error_msg"],
        "can not delete this plugin config, route [3] is still using it now"
    );
    api.put("/apisix/admin/consumer_groups/g", json!({"plugins": {}}))
        .await;
    let r = api
        .put(
            "/apisix/admin/consumers/jack",
            json!({"username": "jack", "group_id": "g"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = api
        .call("DELETE", "/apisix/admin/consumer_groups/g", "")
        .await;
    assert_eq!(
        r.json()["error_msg"],
        "can not delete this consumer group, consumer [jack] is still using it now"
    );
}

#[tokio::test]
async fn patch_merges_and_a_sub_path_replaces_one_field() {
    let api = start().await;
    upstream(&api, "u").await;
    api.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/a", "methods": ["GET", "POST"], "desc": "d", "upstream_id": "u", "labels": {"a": "1"}}),
    )
    .await;
    let r = api
        .call(
            "PATCH",
            "/apisix/admin/routes/1",
            r#"{"desc": null, "labels": {"b": "2"}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = &r.json()["value"];
    assert!(v.get("desc").is_none());
    assert_eq!(v["labels"], json!({"a": "1", "b": "2"}));
    assert_eq!(v["uri"], "/a");

    let r = api
        .call("PATCH", "/apisix/admin/routes/1/methods", r#"["PUT"]"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"]["methods"], json!(["PUT"]));
    let r = api
        .call(
            "PATCH",
            "/apisix/admin/routes/1/plugins",
            r#"{"request-id": {}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"]["plugins"], json!({"request-id": {}}));
    // A patch that breaks the route is refused and changes nothing.
    let r = api
        .call(
            "PATCH",
            "/apisix/admin/routes/1",
            r#"{"upstream_id": "gone"}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    let stored = api.store.get(Kind::Routes, "1").unwrap().unwrap();
    assert_eq!(stored.value["upstream_id"], "u");
}

#[tokio::test]
async fn a_resource_with_ttl_expires_and_stops_being_served() {
    let api = start().await;
    upstream(&api, "u").await;
    let r = api
        .call(
            "PUT",
            "/apisix/admin/routes/t?ttl=1",
            r#"{"uri": "/t", "upstream_id": "u"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(api.served_routes(), 1);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let r = api.call("GET", "/apisix/admin/routes/t", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(api.served_routes(), 0);
    let r = api
        .call("PUT", "/apisix/admin/routes/x?ttl=soon", r#"{"uri": "/x"}"#)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_msg"],
        "invalid argument ttl: should be a number"
    );
}

#[tokio::test]
async fn a_reopened_store_serves_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    {
        let api = start_in(dir.path(), settings()).await;
        upstream(&api, "u").await;
        let r = api
            .put(
                "/apisix/admin/routes/1",
                json!({"uri": "/a", "upstream_id": "u"}),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    // A new node on the same data directory, as after a restart.
    let api = start_in(dir.path(), settings()).await;
    assert_eq!(api.served_routes(), 1);
    let r = api.call("GET", "/apisix/admin/routes/1", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"]["upstream_id"], "u");
}

#[tokio::test]
async fn secrets_are_masked_in_answers_and_history_but_kept_for_the_proxy() {
    if !has_plugin("key-auth") {
        return;
    }
    let api = start().await;
    let r = api
        .put(
            "/apisix/admin/consumers/jack",
            json!({"username": "jack", "plugins": {"key-auth": {"key": "jack-secret"}}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["value"]["plugins"]["key-auth"]["key"], "******");
    assert!(!r.text().contains("jack-secret"));
    let r = api.call("GET", "/apisix/admin/consumers/jack", "").await;
    assert_eq!(r.json()["value"]["plugins"]["key-auth"]["key"], "******");
    let r = api.call("GET", "/apisix/admin/consumers", "").await;
    assert!(!r.text().contains("jack-secret"));
    let r = api.call("GET", "/portcullis/v1/changes", "").await;
    assert!(!r.text().contains("jack-secret"));
    // Writing back what GET showed keeps the real key.
    let mut shown = api
        .call("GET", "/apisix/admin/consumers/jack", "")
        .await
        .json()["value"]
        .clone();
    shown["desc"] = json!("edited");
    shown.as_object_mut().unwrap().remove("create_time");
    shown.as_object_mut().unwrap().remove("update_time");
    let r = api.put("/apisix/admin/consumers/jack", shown).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Stored as a digest (the proxy indexes keys by digest), never in clear.
    let stored = api.store.get(Kind::Consumers, "jack").unwrap().unwrap();
    let key = stored.value["plugins"]["key-auth"]["key"].as_str().unwrap();
    assert!(key.starts_with("sha256:") && key.len() == 71, "{key}");
    assert!(!stored.value.to_string().contains("jack-secret"));
}

#[tokio::test]
async fn a_consumer_key_auth_without_key_is_refused_in_apisix_words() {
    if !has_plugin("key-auth") {
        return;
    }
    let api = start().await;
    let r = api
        .put(
            "/apisix/admin/consumers/jack",
            json!({"username": "jack", "plugins": {"key-auth": {}}}),
        )
        .await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error_msg"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("invalid plugins configuration: failed to check the configuration of plugin key-auth err:"),
        "{msg}"
    );
}

#[tokio::test]
async fn consumers_are_named_by_username_and_credentials_live_under_them() {
    let api = start().await;
    let r = api
        .put("/apisix/admin/consumers", json!({"username": "jack"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/consumers/jack");
    let r = api
        .put("/apisix/admin/consumers/jill", json!({"username": "jack"}))
        .await;
    assert_eq!(r.json()["error_msg"], "wrong username");

    let r = api
        .put(
            "/apisix/admin/consumers/nobody/credentials/c1",
            json!({"plugins": {}}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"error_msg": "consumer not found"}));

    let r = api
        .put(
            "/apisix/admin/consumers/jack/credentials/c1",
            json!({"plugins": {}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/consumers/jack/credentials/c1");
    assert_eq!(r.json()["value"]["id"], "c1");
    let list = api
        .call("GET", "/apisix/admin/consumers/jack/credentials", "")
        .await
        .json();
    assert_eq!(list["total"], 1);
    let consumers = api.call("GET", "/apisix/admin/consumers", "").await.json();
    assert_eq!(consumers["total"], 1);

    // Deleting the consumer takes its credentials along.
    let r = api.call("DELETE", "/apisix/admin/consumers/jack", "").await;
    assert_eq!(r.status, 200);
    assert!(api
        .store
        .get(Kind::Credentials, "jack/c1")
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn the_change_history_records_who_changed_what() {
    let api = start().await;
    upstream(&api, "u").await;
    api.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/a", "upstream_id": "u"}),
    )
    .await;
    api.call("DELETE", "/apisix/admin/routes/1", "").await;
    let r = api
        .call_as(
            Some(VIEWER_KEY),
            "GET",
            "/portcullis/v1/changes?resource=routes/1",
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["total"], 2);
    let newest = &body["list"][0];
    assert_eq!(newest["method"], "DELETE");
    assert_eq!(newest["actor"], "ops");
    assert_eq!(newest["client"], "127.0.0.1");
    assert_eq!(newest["kind"], "routes");
    assert_eq!(newest["id"], "1");
    assert_eq!(newest["after"], Value::Null);
    assert_eq!(newest["before"]["uri"], "/a");
    assert_eq!(body["list"][1]["method"], "PUT");
    let by_actor = api
        .call("GET", "/portcullis/v1/changes?actor=someone-else", "")
        .await
        .json();
    assert_eq!(by_actor["total"], 0);
}

#[tokio::test]
async fn plugins_list_and_schema_are_served() {
    let api = start().await;
    let r = api.call("GET", "/apisix/admin/plugins/list", "").await;
    assert_eq!(r.status, 200);
    assert!(r.json().as_array().unwrap().contains(&json!("request-id")));
    let r = api
        .call("GET", "/apisix/admin/plugins/request-id", "")
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json().is_object());
    let r = api.call("GET", "/apisix/admin/plugins/no-such", "").await;
    assert_eq!(r.status, 404);
    // APISIX's plugin reload: nothing to reload here, but callers get its answer.
    let r = api.call("PUT", "/apisix/admin/plugins/reload", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!("done"));
    let r = api.call("POST", "/apisix/admin/plugins/list", "").await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn file_mode_answers_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings();
    s.config_source = Some(ConfigSource::File);
    let live = Live::new();
    let file = portcullis_config::file::parse(
        "upstreams:\n  - id: u\n    nodes: {\"127.0.0.1:80\": 1}\nroutes:\n  - id: r1\n    uri: /a\n    upstream_id: u\n",
    )
    .unwrap();
    live.apply(file.resources).unwrap();
    let admin = Arc::new(Admin::new(
        live,
        None,
        &s,
        Some(dir.path().join("portcullis.yaml")),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(serve(listener, admin));
    let key = [("X-API-KEY", ADMIN_KEY)];
    let r = request("GET", &format!("{base}/apisix/admin/routes/r1"), &key, "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"]["uri"], "/a");
    let r = request(
        "PUT",
        &format!("{base}/apisix/admin/routes/r2"),
        &key,
        r#"{"uri": "/b"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_msg"],
        format!(
            "config_source is file: the Admin API is read-only; edit {} instead",
            dir.path().join("portcullis.yaml").display()
        )
    );
    task.abort();
}

/// The customer-API walk-through's Admin API half, verbatim bodies.
#[tokio::test]
async fn the_customer_api_scenario_is_accepted() {
    let api = start().await;
    let r = api
        .call(
            "PUT",
            "/apisix/admin/upstreams/customer-api",
            r#"
{ "name": "customer-api", "type": "roundrobin", "nodes": { "127.0.0.1:18080": 1 },
  "timeout": { "connect": 5, "send": 10, "read": 10 } }"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    let full =
        has_plugin("key-auth") && has_plugin("limit-req") && has_plugin("request-validation");
    let route = if full {
        r#"
{ "name": "customer-api-route", "uri": "/internal/customers/*", "upstream_id": "customer-api",
  "plugins": { "key-auth": {}, "limit-req": { "rate": 20, "burst": 10, "rejected_code": 429 },
    "request-validation": { "body_schema": { "type": "object",
      "properties": { "customer_id": { "type": "string", "minLength": 1 },
                      "action": { "type": "string", "enum": ["read", "update"] } },
      "required": ["customer_id", "action"] } } } }"#
    } else {
        // Until every plugin of the scenario is registered: the same route
        // with the plugins that exist.
        r#"
{ "name": "customer-api-route", "uri": "/internal/customers/*", "upstream_id": "customer-api",
  "plugins": { "request-id": {} } }"#
    };
    let r = api
        .call("PUT", "/apisix/admin/routes/customer-api", route)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    if has_plugin("key-auth") {
        let r = api
            .call(
                "PUT",
                "/apisix/admin/consumers/order-service",
                r#"
{ "username": "order-service", "plugins": { "key-auth": { "key": "order-service-secret" } } }"#,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let snapshot = api.live.load();
        assert_eq!(snapshot.raw.of(Kind::Consumers).len(), 1);
    }
    assert_eq!(api.served_routes(), 1);
}
