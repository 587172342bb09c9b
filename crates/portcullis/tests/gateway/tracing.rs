//! OpenTelemetry traces, black-box: the real binary, a recording upstream,
//! and an OTLP receiver (HTTP or gRPC) on loopback. W3C trace context is
//! continued or started and passed upstream; every request, served or
//! rejected, becomes a span whose trace id is the decision record's.

use std::time::{Duration, Instant};

use portcullis_test_support::gateway::default_gateway_section;
use portcullis_test_support::otlp::{OtlpReceiver, ReceivedSpan};
use portcullis_test_support::{free_port, request, Gateway, RecordingUpstream, Response};
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const ALICE_KEY: &str = "alice-key-0123456789";
const COLLECTOR_SECRET: &str = "collector-secret-5f1d";

fn traceparent(flags: &str) -> String {
    format!("00-{TRACE}-{PARENT}-{flags}")
}

/// The default gateway section with the access log on stdout and a
/// `telemetry.tracing` block.
fn gateway_section(tracing: &str) -> String {
    default_gateway_section().replace(
        "  access_log: \"off\"\n",
        &format!("  access_log: stdout\n  telemetry:\n    tracing:\n{tracing}"),
    )
}

fn tracing_block(endpoint: &str, extra: &str) -> String {
    format!(
        "      enabled: true\n      endpoint: \"{endpoint}\"\n      batch: {{ scheduled_delay_ms: 50 }}\n{extra}"
    )
}

fn routes(up: &RecordingUpstream, dead: u16) -> String {
    let node = format!("nodes: {{ \"{}\": 1 }}", up.addr);
    format!(
        "consumers:
  - username: alice
    plugins: {{ key-auth: {{ key: {ALICE_KEY} }} }}
routes:
  - id: orders
    name: orders-api
    uri: /orders/:id
    labels: {{ tier: low_risk_read_api }}
    plugins: {{ key-auth: {{}}, limit-count: {{ count: 1000, time_window: 60 }} }}
    upstream: {{ {node} }}
  - id: open
    uri: /open
    upstream: {{ {node} }}
  - id: dead
    uri: /dead
    upstream: {{ nodes: {{ \"127.0.0.1:{dead}\": 1 }} }}
"
    )
}

fn start(up: &RecordingUpstream, tracing: &str) -> Gateway {
    Gateway::start(&format!(
        "{}{}",
        gateway_section(tracing),
        routes(up, free_port())
    ))
}

async fn send(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response {
    request("GET", &gw.url(path), headers, "")
        .await
        .expect("request")
}

/// The decision records on stdout, waiting (10 s at most) for `n`.
async fn records(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recs: Vec<Value> = gw
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["schema"] == "portcullis.decision/v1")
            .collect();
        if recs.len() >= n || Instant::now() > deadline {
            return recs;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `00-<trace>-<span>-<flags>` → (trace, span, flags).
fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {tp:?}");
    assert_eq!(p[0], "00");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

/// The traceparent the upstream got with the request whose `x-case` is `case`.
fn upstream_traceparent(up: &RecordingUpstream, case: &str) -> Option<String> {
    up.seen()
        .into_iter()
        .find(|s| s.headers.get("x-case").is_some_and(|v| v == case))
        .and_then(|s| {
            s.headers
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_string())
        })
}

async fn server_span(rx: &OtlpReceiver, trace_id: &str) -> ReceivedSpan {
    rx.wait_for(|spans| {
        spans
            .iter()
            .any(|s| s.trace_id == trace_id && s.kind == "server")
    })
    .await
    .into_iter()
    .find(|s| s.trace_id == trace_id && s.kind == "server")
    .unwrap_or_else(|| panic!("no server span for trace {trace_id}"))
}

async fn metric(gw: &Gateway, result: &str) -> f64 {
    let text = request("GET", &gw.metrics_url("/metrics"), &[], "")
        .await
        .expect("metrics")
        .text();
    let series =
        format!("portcullis_sink_records_total{{sink=\"opentelemetry\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_is_continued_exported_and_passed_upstream() {
    let up = RecordingUpstream::start().await;
    let rx = OtlpReceiver::http().await;
    let gw = start(
        &up,
        &tracing_block(
            &format!("http://{}", rx.addr),
            "      service_name: edge-gateway\n",
        ),
    );
    let tp = traceparent("01");
    let r = send(
        &gw,
        "/orders/42",
        &[
            ("apikey", ALICE_KEY),
            ("traceparent", &tp),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            ("user-agent", "tracing-test/1"),
            ("x-case", "continued"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The upstream continues the same trace under our span.
    let sent = upstream_traceparent(&up, "continued").expect("upstream got a traceparent");
    let (trace, upstream_parent, flags) = parts(&sent);
    assert_eq!(trace, TRACE);
    assert_ne!(upstream_parent, PARENT);
    assert_eq!(flags, "01");
    let seen = &up.seen()[0];
    assert_eq!(
        seen.headers.get("tracestate").unwrap(),
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    );

    let server = server_span(&rx, TRACE).await;
    assert_eq!(server.parent_span_id, PARENT);
    assert_eq!(server.name, "GET /orders/:id");
    assert_eq!(
        server.trace_state,
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    );
    assert_eq!(server.service_name.as_deref(), Some("edge-gateway"));
    assert_eq!(server.scope, "portcullis");
    assert_eq!(server.status, "unset");
    assert_eq!(server.attr_str("http.request.method"), Some("GET"));
    assert_eq!(server.attr_str("http.route"), Some("/orders/:id"));
    assert_eq!(server.attr_str("url.path"), Some("/orders/42"));
    assert_eq!(
        server.attr("http.response.status_code"),
        Some(&Value::from(200))
    );
    assert_eq!(server.attr_str("client.address"), Some("127.0.0.1"));
    assert_eq!(server.attr_str("server.address"), Some("127.0.0.1"));
    assert_eq!(
        server.attr_str("user_agent.original"),
        Some("tracing-test/1")
    );
    assert_eq!(server.attr_str("portcullis.route_id"), Some("orders"));
    assert_eq!(
        server.attr_str("portcullis.tier"),
        Some("low_risk_read_api")
    );
    assert_eq!(server.attr_str("portcullis.consumer"), Some("alice"));
    assert_eq!(server.attr_str("portcullis.decision"), Some("allow"));
    // The phases as events: one per enforcing plugin's decision.
    let events: Vec<(&str, &str, &str)> = server
        .events
        .iter()
        .map(|(name, a)| {
            (
                name.as_str(),
                a["portcullis.plugin"].as_str().unwrap(),
                a["portcullis.result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("authenticate", "key-auth", "allow"),
            ("limit", "limit-count", "allow")
        ]
    );
    assert_eq!(server.events[1].1["portcullis.limit"], 1000);

    // The upstream call is a CLIENT child; its id is the one the upstream saw.
    let client = rx.span(&upstream_parent).await.expect("client span");
    assert_eq!(client.kind, "client");
    assert_eq!(client.trace_id, TRACE);
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.attr_str("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(
        client.attr("network.peer.port"),
        Some(&Value::from(up.addr.port()))
    );
    assert_eq!(
        client.attr("http.response.status_code"),
        Some(&Value::from(200))
    );
    assert!(client.start_unix_nano >= server.start_unix_nano);
    assert!(client.end_unix_nano <= server.end_unix_nano);

    // The decision record names the same trace.
    let recs = records(&gw, 1).await;
    assert_eq!(recs[0]["trace_id"], TRACE);
    // Counted once the export is answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gw, "sent").await < 1.0 {
        assert!(Instant::now() < deadline, "the export was not counted");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_traceparent_starts_a_trace_named_in_its_record() {
    let up = RecordingUpstream::start().await;
    let rx = OtlpReceiver::http().await;
    let gw = start(&up, &tracing_block(&format!("http://{}", rx.addr), ""));
    let r = send(&gw, "/open", &[("x-case", "new")]).await;
    assert_eq!(r.status, 200);

    let recs = records(&gw, 1).await;
    let trace_id = recs[0]["trace_id"].as_str().unwrap().to_string();
    assert_eq!(trace_id.len(), 32);
    let server = server_span(&rx, &trace_id).await;
    assert_eq!(server.parent_span_id, "", "a new trace has a root span");
    assert_eq!(server.name, "GET /open");
    assert!(server.events.is_empty());
    let (trace, parent, flags) =
        parts(&upstream_traceparent(&up, "new").expect("upstream traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (trace_id.as_str(), "01"));
    let client = rx.span(&parent).await.expect("client span");
    assert_eq!(client.parent_span_id, server.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_traceparents_start_new_traces() {
    let up = RecordingUpstream::start().await;
    let rx = OtlpReceiver::http().await;
    let gw = start(&up, &tracing_block(&format!("http://{}", rx.addr), ""));
    let cases = [
        ("zero-trace", format!("00-{}-{PARENT}-01", "0".repeat(32))),
        ("zero-parent", format!("00-{TRACE}-{}-01", "0".repeat(16))),
        ("short", format!("00-{}-{PARENT}-01", &TRACE[..30])),
        (
            "upper",
            format!("00-{}-{PARENT}-01", TRACE.to_ascii_uppercase()),
        ),
        ("version-ff", format!("ff-{TRACE}-{PARENT}-01")),
        ("v00-too-long", format!("00-{TRACE}-{PARENT}-01-extra")),
    ];
    for (case, tp) in &cases {
        let r = send(
            &gw,
            "/open",
            &[
                ("x-case", case),
                ("traceparent", tp),
                ("tracestate", "rojo=1"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{case}");
    }
    let recs = records(&gw, cases.len()).await;
    assert_eq!(recs.len(), cases.len());
    for (case, _) in &cases {
        let sent = upstream_traceparent(&up, case).unwrap_or_else(|| panic!("{case}"));
        let (trace, _, flags) = parts(&sent);
        assert_ne!(trace, TRACE, "{case}: the bad parent's trace was continued");
        assert_ne!(trace, "0".repeat(32));
        assert_eq!(flags, "01");
        // The state of a trace we did not continue is not passed on.
        let seen = up
            .seen()
            .into_iter()
            .find(|s| s.headers.get("x-case").is_some_and(|v| v == case))
            .unwrap();
        assert!(seen.headers.get("tracestate").is_none(), "{case}");
        let server = server_span(&rx, &trace).await;
        assert_eq!(server.parent_span_id, "", "{case}");
        assert!(
            recs.iter().any(|r| r["trace_id"] == trace.as_str()),
            "{case}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_and_failed_requests_get_spans_with_their_status() {
    let up = RecordingUpstream::start().await;
    let rx = OtlpReceiver::grpc().await;
    let gw = start(
        &up,
        &tracing_block(&format!("http://{}", rx.addr), "      protocol: grpc\n"),
    );
    let ids = [
        ("11111111111111111111111111111111", "/nowhere", 404),
        ("22222222222222222222222222222222", "/orders/1", 401),
        ("33333333333333333333333333333333", "/dead", 502),
    ];
    for (trace, path, status) in ids {
        let tp = format!("00-{trace}-{PARENT}-01");
        let r = send(&gw, path, &[("traceparent", &tp)]).await;
        assert_eq!(r.status, status, "{path}");
    }
    assert_eq!(up.count(), 0);

    let not_found = server_span(&rx, ids[0].0).await;
    assert_eq!(not_found.name, "GET", "no route: the method alone");
    assert_eq!(
        not_found.attr("http.response.status_code"),
        Some(&Value::from(404))
    );
    assert!(not_found.attr("http.route").is_none());
    assert_eq!(not_found.attr_str("portcullis.decision"), Some("reject"));
    assert_eq!(not_found.status, "unset", "4xx is not a server error");

    let unauthorized = server_span(&rx, ids[1].0).await;
    assert_eq!(
        unauthorized.attr("http.response.status_code"),
        Some(&Value::from(401))
    );
    assert_eq!(unauthorized.attr_str("portcullis.decision"), Some("reject"));
    let (phase, attrs) = &unauthorized.events[0];
    assert_eq!(phase, "authenticate");
    assert_eq!(attrs["portcullis.plugin"], "key-auth");
    assert_eq!(attrs["portcullis.result"], "reject");

    let failed = server_span(&rx, ids[2].0).await;
    assert_eq!(failed.status, "error");
    assert_eq!(
        failed.attr("http.response.status_code"),
        Some(&Value::from(502))
    );
    let spans = rx
        .wait_for(|s| {
            s.iter()
                .any(|s| s.trace_id == ids[2].0 && s.kind == "client")
        })
        .await;
    let client = spans
        .iter()
        .find(|s| s.trace_id == ids[2].0 && s.kind == "client")
        .expect("the failed upstream call has a client span");
    assert_eq!(client.status, "error");
    assert_eq!(client.parent_span_id, failed.span_id);
    // No client span where nothing went upstream.
    assert!(!spans
        .iter()
        .any(|s| s.kind == "client" && (s.trace_id == ids[0].0 || s.trace_id == ids[1].0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_exporter_delivers_with_the_collector_headers_never_logged() {
    let up = RecordingUpstream::start().await;
    let rx = OtlpReceiver::grpc().await;
    let gw = start(
        &up,
        &tracing_block(
            &format!("http://{}", rx.addr),
            &format!(
                "      protocol: grpc\n      headers: {{ Authorization: \"Bearer {COLLECTOR_SECRET}\" }}\n"
            ),
        ),
    );
    let tp = traceparent("01");
    let r = send(&gw, "/open", &[("traceparent", &tp)]).await;
    assert_eq!(r.status, 200);
    let server = server_span(&rx, TRACE).await;
    assert_eq!(server.parent_span_id, PARENT);
    assert_eq!(server.service_name.as_deref(), Some("portcullis"));
    let export = &rx.exports()[0];
    assert_eq!(
        export.headers.get("authorization").unwrap(),
        &format!("Bearer {COLLECTOR_SECRET}")
    );
    assert!(!gw.stderr().contains(COLLECTOR_SECRET));
    assert!(!gw.stdout().contains(COLLECTOR_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_exporter_sends_the_collector_headers() {
    let up = RecordingUpstream::start().await;
    let rx = OtlpReceiver::http().await;
    let gw = start(
        &up,
        &tracing_block(
            &format!("http://{}", rx.addr),
            &format!("      headers: {{ x-collector-token: {COLLECTOR_SECRET} }}\n"),
        ),
    );
    let r = send(&gw, "/open", &[]).await;
    assert_eq!(r.status, 200);
    rx.wait_for(|s| !s.is_empty()).await;
    let export = &rx.exports()[0];
    assert_eq!(
        export.headers.get("x-collector-token").unwrap(),
        COLLECTOR_SECRET
    );
    assert_eq!(
        export.headers.get("content-type").unwrap(),
        "application/x-protobuf"
    );
    assert!(!gw.stderr().contains(COLLECTOR_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampler_ratio_zero_exports_nothing_but_still_propagates() {
    let up = RecordingUpstream::start().await;
    let rx = OtlpReceiver::http().await;
    let gw = start(
        &up,
        &tracing_block(&format!("http://{}", rx.addr), "      sampler_ratio: 0\n"),
    );
    // No traceparent: a new, unsampled trace, passed on with flags 00.
    assert_eq!(send(&gw, "/open", &[("x-case", "none")]).await.status, 200);
    // An unsampled parent: passed on as it came.
    let unsampled = traceparent("00");
    assert_eq!(
        send(
            &gw,
            "/open",
            &[("x-case", "unsampled"), ("traceparent", &unsampled)]
        )
        .await
        .status,
        200
    );
    let recs = records(&gw, 2).await;
    let (trace, _, flags) = parts(&upstream_traceparent(&up, "none").expect("propagated"));
    assert_eq!(flags, "00");
    assert!(recs.iter().any(|r| r["trace_id"] == trace.as_str()));
    assert_eq!(
        upstream_traceparent(&up, "unsampled").as_deref(),
        Some(unsampled.as_str())
    );
    assert!(recs.iter().any(|r| r["trace_id"] == TRACE));

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.spans().is_empty(), "{:?}", rx.spans());
    assert_eq!(metric(&gw, "sent").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_off_passes_the_client_context_through_untouched() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&format!(
        "{}{}",
        default_gateway_section().replace("  access_log: \"off\"\n", "  access_log: stdout\n"),
        routes(&up, free_port())
    ));
    let tp = traceparent("01");
    let with = [
        ("x-case", "with"),
        ("traceparent", tp.as_str()),
        ("tracestate", "rojo=1"),
    ];
    assert_eq!(send(&gw, "/open", &with).await.status, 200);
    assert_eq!(
        send(&gw, "/open", &[("x-case", "without")]).await.status,
        200
    );
    assert_eq!(
        upstream_traceparent(&up, "with").as_deref(),
        Some(tp.as_str())
    );
    assert_eq!(upstream_traceparent(&up, "without"), None);
    let recs = records(&gw, 2).await;
    assert!(recs.iter().any(|r| r["trace_id"] == TRACE));
    assert!(recs
        .iter()
        .all(|r| r["trace_id"].as_str().is_some_and(|t| t.len() == 32)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_requests_nothing_and_losses_are_counted() {
    let up = RecordingUpstream::start().await;
    let dead = free_port();
    let gw = start(
        &up,
        &format!(
            "      enabled: true\n      endpoint: \"http://127.0.0.1:{dead}\"\n      timeout: 2\n      batch: {{ max_queue: 2, max_export_batch: 1, scheduled_delay_ms: 10 }}\n"
        ),
    );
    let started = Instant::now();
    for _ in 0..30 {
        let r = send(&gw, "/open", &[]).await;
        assert_eq!(r.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests waited for the collector"
    );
    assert_eq!(up.count(), 30);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut failed, mut dropped) = (0.0, 0.0);
    while Instant::now() < deadline {
        failed = metric(&gw, "failed").await;
        dropped = metric(&gw, "dropped").await;
        if failed >= 1.0 && dropped >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed >= 1.0, "failed exports are counted");
    assert!(dropped >= 1.0, "spans past the queue bound are counted");
    assert_eq!(metric(&gw, "sent").await, 0.0);
}

#[test]
fn tracing_settings_are_checked_with_their_field_path() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, expected) in [
        (
            "gateway:\n  telemetry:\n    tracing:\n      enabled: true\n      sampler: always_on\n",
            "gateway.telemetry.tracing.sampler: unknown field `sampler`",
        ),
        (
            "gateway:\n  telemetry:\n    tracing:\n      sampler_ratio: 1.5\n",
            "gateway.telemetry: telemetry.tracing.sampler_ratio: must be between 0 and 1",
        ),
        (
            "gateway:\n  telemetry:\n    tracing:\n      protocol: http/json\n",
            "gateway.telemetry.tracing.protocol: unknown variant `http/json`",
        ),
        (
            "gateway:\n  telemetry:\n    tracing:\n      batch: { max_queue: 10, max_export_batch: 20 }\n",
            "gateway.telemetry: telemetry.tracing.batch.max_export_batch: must be at least 1 and at most max_queue",
        ),
        (
            "gateway:\n  telemetry:\n    tracing:\n      endpoint: \"ftp://collector\"\n",
            "gateway.telemetry: telemetry.tracing.endpoint: must start with http://",
        ),
    ] {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, yaml).unwrap();
        let out = std::process::Command::new(portcullis_test_support::gateway::binary_path())
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}
