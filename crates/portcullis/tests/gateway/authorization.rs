//! Black-box tests of authorization: consumer-restriction, ip-restriction,
//! remote_addrs and the Cedar policy plugin, on the real binary. One matrix
//! of consumers and groups × routes × methods × client addresses, every cell's
//! status asserted, and the upstream never reached on a rejection. Then
//! dry-run: traffic passes and the log shows what would have been refused.
//!
//! Client addresses: requests leave from 127.0.0.1 or 127.0.0.2 (both
//! loopback), by binding the client socket.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portcullis_test_support::gateway::default_gateway_section;
use portcullis_test_support::{request, Gateway, RecordingUpstream, Response};
use serde_json::Value;

const JACK: &str = "jack-key-0123456789";
const ROSE: &str = "rose-key-0123456789";
const OPS: &str = "ops-key-0123456789";

/// One request from `from` (a loopback address) to the gateway.
async fn send_from(
    from: &str,
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], gw.http_port)))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Response {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn config(up: &RecordingUpstream) -> String {
    let node = format!("upstream: {{ nodes: {{ \"{}\": 1 }} }}", up.addr);
    format!(
        r#"consumer_groups:
  - id: partners
  - id: staff
consumers:
  - username: jack
    group_id: partners
    labels: {{ team: sales }}
    plugins: {{ key-auth: {{ key: {JACK} }} }}
  - username: rose
    group_id: staff
    labels: {{ team: support }}
    plugins: {{ key-auth: {{ key: {ROSE} }} }}
  - username: ops
    plugins: {{ key-auth: {{ key: {OPS} }} }}
routes:
  # jack may only read; rose may not come in at all; ops may do anything.
  - id: orders
    uri: /orders/:id
    {node}
    plugins:
      key-auth: {{}}
      consumer-restriction:
        blacklist: [rose]
        allowed_by_methods: [{{ user: jack, methods: [GET] }}]
  # Only the partners group.
  - id: partners
    uri: /partners/*
    {node}
    plugins:
      key-auth: {{}}
      consumer-restriction: {{ type: consumer_group_id, whitelist: [partners] }}
  # Cedar: ops from 127.0.0.1 may do anything; partners may read; sales may
  # write its own team's records; DELETE needs a confirmation header.
  - id: admin
    uri: /admin/:team
    labels: {{ team: sales }}
    {node}
    plugins:
      key-auth: {{}}
      policy:
        policies: |
          @id("ops-from-localhost")
          permit(principal == Consumer::"ops", action, resource)
          when {{ context.client_ip.isInRange(ip("127.0.0.1/32")) }};
          @id("partners-read")
          permit(principal in Group::"partners", action == Action::"GET", resource);
          @id("team-writes")
          permit(principal, action == Action::"POST", resource)
          when {{ principal.hasTag("team") && context.params.hasTag("team")
                 && principal.getTag("team") == context.params.getTag("team") }};
          @id("confirm-deletes")
          forbid(principal, action == Action::"DELETE", resource)
          unless {{ context.headers.hasTag("x-confirm") && context.headers.getTag("x-confirm") == "yes" }};
  # Only from 127.0.0.1.
  - id: internal
    uri: /internal/*
    {node}
    plugins:
      ip-restriction: {{ whitelist: ["127.0.0.1/32"] }}
  # Matches only requests from 127.0.0.2: from elsewhere it is not a route.
  - id: lab
    uri: /lab/*
    remote_addrs: ["127.0.0.2"]
    {node}
"#
    )
}

struct Cell {
    who: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    from: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    /// The body of a rejection, when the cell checks it.
    body: Option<&'static str>,
}

const fn cell(
    who: Option<&'static str>,
    method: &'static str,
    path: &'static str,
    from: &'static str,
    status: u16,
) -> Cell {
    Cell {
        who,
        method,
        path,
        from,
        headers: &[],
        status,
        body: None,
    }
}

const A: &str = "127.0.0.1";
const B: &str = "127.0.0.2";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cell_of_the_consumer_route_method_address_matrix_gets_its_status() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(&up));
    let forbidden = "{\"message\":\"The consumer_name is forbidden.\"}\n";
    let cells = [
        // consumer-restriction by name, with allowed_by_methods.
        cell(Some(JACK), "GET", "/orders/1", A, 200),
        Cell {
            body: Some(forbidden),
            ..cell(Some(JACK), "POST", "/orders/1", A, 403)
        },
        cell(Some(JACK), "DELETE", "/orders/1", B, 403),
        Cell {
            body: Some(forbidden),
            ..cell(Some(ROSE), "GET", "/orders/1", A, 403)
        },
        cell(Some(ROSE), "POST", "/orders/1", B, 403),
        cell(Some(OPS), "GET", "/orders/1", A, 200),
        cell(Some(OPS), "POST", "/orders/1", B, 200),
        Cell {
            body: Some("{\"message\":\"Missing API key in request\"}\n"),
            ..cell(None, "GET", "/orders/1", A, 401)
        },
        // consumer-restriction by group.
        cell(Some(JACK), "GET", "/partners/x", A, 200),
        cell(Some(JACK), "POST", "/partners/x", B, 200),
        Cell {
            body: Some("{\"message\":\"The consumer_group_id is forbidden.\"}\n"),
            ..cell(Some(ROSE), "GET", "/partners/x", A, 403)
        },
        Cell {
            body: Some("{\"message\":\"The request is rejected, please check the consumer_group_id for this request\"}\n"),
            ..cell(Some(OPS), "GET", "/partners/x", A, 401)
        },
        // Cedar policy.
        cell(Some(OPS), "GET", "/admin/sales", A, 200),
        cell(Some(OPS), "PUT", "/admin/support", A, 200),
        Cell {
            body: Some("{\"message\":\"Access denied by policy\"}\n"),
            ..cell(Some(OPS), "GET", "/admin/sales", B, 403)
        },
        cell(Some(JACK), "GET", "/admin/support", B, 200),
        cell(Some(JACK), "POST", "/admin/sales", A, 200),
        cell(Some(JACK), "POST", "/admin/support", A, 403),
        cell(Some(ROSE), "GET", "/admin/support", A, 403),
        cell(Some(ROSE), "POST", "/admin/support", B, 200),
        cell(Some(OPS), "DELETE", "/admin/sales", A, 403),
        Cell {
            headers: &[("x-confirm", "yes")],
            ..cell(Some(OPS), "DELETE", "/admin/sales", A, 200)
        },
        Cell {
            headers: &[("x-confirm", "yes")],
            ..cell(Some(JACK), "DELETE", "/admin/sales", A, 403)
        },
        cell(None, "GET", "/admin/sales", A, 401),
        // ip-restriction and remote_addrs, by client address.
        cell(None, "GET", "/internal/x", A, 200),
        Cell {
            body: Some("{\"message\":\"Your IP address is not allowed\"}\n"),
            ..cell(None, "GET", "/internal/x", B, 403)
        },
        cell(None, "GET", "/lab/x", B, 200),
        cell(None, "GET", "/lab/x", A, 404),
    ];
    let mut failures = Vec::new();
    for c in &cells {
        let before = up.count();
        let mut headers: Vec<(&str, &str)> = c.headers.to_vec();
        if let Some(key) = c.who {
            headers.push(("apikey", key));
        }
        let r = send_from(c.from, &gw, c.method, c.path, &headers).await;
        let reached = up.count() - before;
        let who = c
            .who
            .map(|k| k.split('-').next().unwrap())
            .unwrap_or("nobody");
        let label = format!("{who} {} {} from {}", c.method, c.path, c.from);
        if r.status != c.status {
            failures.push(format!(
                "{label}: expected {}, got {} {}",
                c.status,
                r.status,
                r.text()
            ));
        }
        if let Some(body) = c.body {
            if r.text() != body {
                failures.push(format!("{label}: body {:?}, expected {body:?}", r.text()));
            }
        }
        let expect_reach = usize::from(c.status == 200);
        if reached != expect_reach {
            failures.push(format!(
                "{label}: upstream reached {reached} times, expected {expect_reach}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// JSON decision records on the gateway's stdout.
fn records(gw: &Gateway) -> Vec<Value> {
    gw.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["schema"] == "portcullis.decision/v1")
        .collect()
}

async fn wait_records(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = records(gw);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn decision<'a>(rec: &'a Value, plugin: &str) -> &'a Value {
    rec["decisions"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["plugin"] == plugin))
        .unwrap_or_else(|| panic!("no {plugin} decision in {rec}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lets_traffic_through_and_logs_what_each_plugin_would_have_refused() {
    let up = RecordingUpstream::start().await;
    let node = format!("upstream: {{ nodes: {{ \"{}\": 1 }} }}", up.addr);
    let dry = "_meta: { dry_run: true }";
    let resources = format!(
        r#"consumers:
  - username: rose
    plugins: {{ key-auth: {{ key: {ROSE} }} }}
routes:
  - id: cr
    uri: /cr
    {node}
    plugins:
      key-auth: {{}}
      consumer-restriction: {{ whitelist: [jack], {dry} }}
  - id: pol
    uri: /pol
    {node}
    plugins:
      key-auth: {{}}
      policy: {{ policies: "permit(principal == Consumer::\"jack\", action, resource);", {dry} }}
  - id: count
    uri: /count
    {node}
    plugins:
      limit-count: {{ count: 1, time_window: 60, {dry} }}
  - id: valid
    uri: /valid
    {node}
    plugins:
      request-validation:
        header_schema: {{ type: object, required: [x-purpose] }}
        {dry}
"#
    );
    let section =
        default_gateway_section().replace("  access_log: \"off\"\n", "  access_log: stdout\n");
    let gw = Gateway::start(&format!("{section}{resources}"));
    let key = [("apikey", ROSE)];
    let sent: [(&str, &[(&str, &str)]); 5] = [
        ("/cr", &key),
        ("/pol", &key),
        ("/count", &[]),
        ("/count", &[]),
        ("/valid", &[]),
    ];
    for (path, headers) in sent {
        let r = request("GET", &gw.url(path), headers, "").await.unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert_eq!(up.count(), 5, "every request reached the upstream");

    let recs = wait_records(&gw, 5).await;
    let by = |path: &str| -> Vec<&Value> { recs.iter().filter(|r| r["path"] == path).collect() };
    let cr = decision(by("/cr")[0], "consumer-restriction");
    assert_eq!(cr["result"], "would_reject", "{cr}");
    assert_eq!(cr["dry_run"], true);
    assert_eq!(
        cr["reason"],
        "consumer_name \"rose\" is not on the whitelist"
    );
    let pol = decision(by("/pol")[0], "policy");
    assert_eq!(pol["result"], "would_reject", "{pol}");
    assert!(pol["reason"]
        .as_str()
        .unwrap()
        .starts_with("no policy permits GET on route pol"));
    let counts = by("/count");
    assert_eq!(counts.len(), 2);
    let results: Vec<&Value> = counts
        .iter()
        .map(|r| &decision(r, "limit-count")["result"])
        .collect();
    assert!(results.contains(&&Value::from("allow")), "{results:?}");
    assert!(
        results.contains(&&Value::from("would_reject")),
        "{results:?}"
    );
    let valid = decision(by("/valid")[0], "request-validation");
    assert_eq!(valid["result"], "would_reject", "{valid}");

    // The would-be refusals are counted, when the metric exists.
    let metrics = request("GET", &gw.metrics_url("/metrics"), &[], "")
        .await
        .unwrap()
        .text();
    if metrics.contains("portcullis_dry_run_would_reject") {
        for plugin in [
            "consumer-restriction",
            "policy",
            "limit-count",
            "request-validation",
        ] {
            assert!(
                metrics
                    .lines()
                    .any(|l| l.starts_with("portcullis_dry_run_would_reject")
                        && l.contains(&format!("plugin=\"{plugin}\""))
                        && l.trim_end().ends_with(" 1")),
                "no dry-run count for {plugin}:\n{metrics}"
            );
        }
    }
}
