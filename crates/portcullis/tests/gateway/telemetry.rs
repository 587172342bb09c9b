//! Black-box tests of the decision record, its sinks and the metrics: the
//! real binary, real upstreams, and collectors (HTTP, syslog UDP/TCP) on
//! loopback ports.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portcullis_test_support::gateway::default_gateway_section;
use portcullis_test_support::{free_port, request, Gateway, RecordingUpstream, Response};
use serde_json::Value;

async fn send(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    request(method, &gw.url(path), headers, body.to_string())
        .await
        .expect("request")
}

/// The default gateway section with the access log on stdout and extra
/// `gateway:` settings.
fn gateway_section(extra: &str) -> String {
    default_gateway_section().replace(
        "  access_log: \"off\"\n",
        &format!("  access_log: stdout\n{extra}"),
    )
}

/// JSON lines of `text` (other lines ignored).
fn records(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["schema"] == "portcullis.decision/v1")
        .collect()
}

/// Poll `read` until it yields at least `n` records or 10 s pass.
async fn wait_records(n: usize, read: impl Fn() -> Vec<Value>) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = read();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn by_path<'a>(recs: &'a [Value], path: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["path"] == path).collect()
}

fn decisions(rec: &Value) -> Vec<(String, String)> {
    rec["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["plugin"].as_str().unwrap().to_string(),
                d["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(p: &str, r: &str) -> (String, String) {
    (p.to_string(), r.to_string())
}

/// method, path, headers, body, expected status
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str, u16);
/// path, headers, expected status
type SecretCase = (String, Vec<(&'static str, String)>, u16);

const ALICE_KEY: &str = "alice-key-0123456789";

fn mixed_config(up: &RecordingUpstream, dead: u16, extra_route_plugins: &str) -> String {
    let node = format!("nodes: {{ \"{}\": 1 }}", up.addr);
    format!(
        "upstreams:
  - id: dead-upstream
    nodes: {{ \"127.0.0.1:{dead}\": 1 }}
consumers:
  - username: alice
    plugins: {{ key-auth: {{ key: {ALICE_KEY} }} }}
routes:
  - id: open
    name: open-route
    uri: /open
    labels: {{ team: web }}
    plugins: {{ request-id: {{}} {extra_route_plugins} }}
    upstream: {{ {node} }}
  - id: auth
    uri: /auth
    labels: {{ tier: low_risk_read_api }}
    plugins: {{ key-auth: {{}}, limit-count: {{ count: 1000, time_window: 60 }} }}
    upstream: {{ {node} }}
  - id: denied
    uri: /denied
    plugins: {{ ip-restriction: {{ blacklist: [\"127.0.0.0/8\"] }} }}
    upstream: {{ {node} }}
  - id: limited
    uri: /limited
    plugins: {{ limit-count: {{ count: 1, time_window: 60, rejected_code: 429 }} }}
    upstream: {{ {node} }}
  - id: validated
    uri: /validated
    plugins:
      request-validation:
        body_schema: {{ type: object, required: [customer_id], properties: {{ customer_id: {{ type: string, minLength: 1 }} }} }}
    upstream: {{ {node} }}
  - id: dead
    uri: /dead
    upstream_id: dead-upstream
  - id: dry
    uri: /dry
    plugins: {{ ip-restriction: {{ blacklist: [\"127.0.0.0/8\"], _meta: {{ dry_run: true }} }} }}
    upstream: {{ {node} }}
"
    )
}

/// The mixed run: every request's record is present exactly once, with the
/// right decisions; then the Prometheus output agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_exactly_one_record_with_its_decisions() {
    let up = RecordingUpstream::start().await;
    let dead = free_port();
    let gw = Gateway::start(&format!(
        "{}{}",
        gateway_section(""),
        mixed_config(
            &up,
            dead,
            ", file-logger: { path: \"{DATA_DIR}-route.log\" }"
        )
    ));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cases: Vec<Case> = vec![
        ("GET", "/open", vec![("traceparent", tp)], "", 200),
        ("GET", "/auth", vec![], "", 401),
        ("GET", "/auth?x=1", vec![("x-api-key", ALICE_KEY)], "", 200),
        ("GET", "/denied", vec![], "", 403),
        ("GET", "/limited", vec![], "", 200),
        ("GET", "/limited", vec![], "", 429),
        (
            "POST",
            "/validated",
            vec![("content-type", "application/json")],
            "{\"customer_id\": \"\"}",
            400,
        ),
        ("GET", "/nowhere", vec![], "", 404),
        ("GET", "/dead", vec![], "", 502),
        ("GET", "/dry", vec![], "", 200),
    ];
    for (method, path, headers, body, status) in &cases {
        let r = send(&gw, method, path, headers, body).await;
        assert_eq!(r.status, *status, "{method} {path}: {}", r.text());
    }

    let recs = wait_records(cases.len(), || records(&gw.stdout())).await;
    assert_eq!(
        recs.len(),
        cases.len(),
        "one record per request:\n{}",
        gw.stdout()
    );

    let open = by_path(&recs, "/open");
    assert_eq!(open.len(), 1);
    let open = open[0];
    assert_eq!(open["status"], 200);
    assert_eq!(open["route"]["id"], "open");
    assert_eq!(open["route"]["name"], "open-route");
    assert!(open["route"]["tier"].is_null());
    assert_eq!(open["route"]["labels"]["team"], "web");
    assert_eq!(open["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(open["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(open["upstream"]["addr"], up.addr.to_string());
    assert_eq!(open["upstream"]["attempts"], 1);
    assert!(open["latency"]["upstream_ms"].as_f64().is_some());
    assert!(
        open["latency"]["total_ms"].as_f64().unwrap()
            >= open["latency"]["upstream_ms"].as_f64().unwrap()
    );
    assert!(open["bytes"]["out"].as_u64().unwrap() > 0);
    assert_eq!(open["client_addr"], "127.0.0.1");
    assert_eq!(open["method"], "GET");
    assert!(decisions(open).is_empty());

    let auth = by_path(&recs, "/auth");
    assert_eq!(auth.len(), 2, "the query is not part of the path");
    let rejected = auth.iter().find(|r| r["status"] == 401).unwrap();
    assert_eq!(decisions(rejected), [pair("key-auth", "reject")]);
    assert!(rejected["consumer"].is_null());
    assert!(rejected["upstream"].is_null());
    let served = auth.iter().find(|r| r["status"] == 200).unwrap();
    assert_eq!(
        decisions(served),
        [pair("key-auth", "allow"), pair("limit-count", "allow")]
    );
    assert_eq!(served["consumer"]["username"], "alice");
    assert_eq!(served["consumer"]["authenticated_by"], "key-auth");
    assert_eq!(served["route"]["tier"], "low_risk_read_api");
    assert!(served.get("query").is_none());
    // A trace id is made up when the client sent none.
    assert_eq!(served["trace_id"].as_str().unwrap().len(), 32);
    assert_ne!(served["trace_id"], open["trace_id"]);

    let denied = by_path(&recs, "/denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["status"], 403);
    assert_eq!(decisions(denied[0]), [pair("ip-restriction", "reject")]);

    let limited = by_path(&recs, "/limited");
    assert_eq!(limited.len(), 2);
    let ok = limited.iter().find(|r| r["status"] == 200).unwrap();
    let over = limited.iter().find(|r| r["status"] == 429).unwrap();
    assert_eq!(decisions(ok), [pair("limit-count", "allow")]);
    assert_eq!(ok["decisions"][0]["limit"], 1);
    assert_eq!(ok["decisions"][0]["remaining"], 0);
    assert_eq!(decisions(over), [pair("limit-count", "reject")]);
    assert_eq!(over["decisions"][0]["limit"], 1);

    let validated = by_path(&recs, "/validated");
    assert_eq!(validated.len(), 1);
    assert_eq!(validated[0]["status"], 400);
    assert_eq!(
        decisions(validated[0]),
        [pair("request-validation", "reject")]
    );
    let reason = validated[0]["decisions"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("customer_id"), "first error: {reason}");

    let nowhere = by_path(&recs, "/nowhere");
    assert_eq!(nowhere.len(), 1);
    assert_eq!(nowhere[0]["status"], 404);
    assert!(nowhere[0]["route"].is_null());

    let dead_rec = by_path(&recs, "/dead");
    assert_eq!(dead_rec.len(), 1);
    assert_eq!(dead_rec[0]["status"], 502);
    assert_eq!(dead_rec[0]["upstream"]["addr"], format!("127.0.0.1:{dead}"));
    assert!(dead_rec[0]["upstream"]["attempts"].as_u64().unwrap() >= 1);

    let dry = by_path(&recs, "/dry");
    assert_eq!(dry.len(), 1);
    assert_eq!(dry[0]["status"], 200);
    assert_eq!(decisions(dry[0]), [pair("ip-restriction", "would_reject")]);
    assert_eq!(dry[0]["decisions"][0]["dry_run"], true);

    // The route's file-logger got the route's record, once.
    let route_log = format!("{}-route.log", gw.dir.path().join("data").display());
    let file_recs = wait_records(1, || {
        records(&std::fs::read_to_string(&route_log).unwrap_or_default())
    })
    .await;
    assert_eq!(file_recs.len(), 1);
    assert_eq!(file_recs[0]["path"], "/open");

    // Prometheus output: every sample line parses, and the counts agree.
    let m = send_metrics(&gw).await;
    let samples = parse_metrics(&m);
    let get = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    };
    assert_eq!(
        get(
            "portcullis_http_status_total",
            &[("code", "401"), ("route", "auth")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        get(
            "portcullis_http_status_total",
            &[("code", "200"), ("route", "auth"), ("consumer", "alice")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "portcullis_http_status_total",
            &[("code", "404"), ("route", "")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "portcullis_http_status_total",
            &[("code", "502"), ("route", "dead"), ("node", "127.0.0.1")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "portcullis_decisions_total",
            &[
                ("route", "limited"),
                ("plugin", "limit-count"),
                ("result", "reject")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "portcullis_decisions_total",
            &[
                ("route", "denied"),
                ("plugin", "ip-restriction"),
                ("result", "reject")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "portcullis_dry_run_would_reject_total",
            &[("route", "dry"), ("plugin", "ip-restriction")]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "portcullis_http_latency_count",
            &[("type", "request"), ("route", "open")]
        ),
        Some(1.0)
    );
    assert!(get(
        "portcullis_http_latency_bucket",
        &[("type", "upstream"), ("route", "open"), ("le", "+Inf")]
    )
    .is_some());
    assert!(
        get(
            "portcullis_bandwidth_total",
            &[("type", "egress"), ("route", "open")]
        )
        .unwrap()
            > 0.0
    );
    assert!(get("portcullis_config_version", &[]).unwrap() >= 1.0);
    assert_eq!(
        get("portcullis_config_reloads_total", &[("result", "refused")]),
        Some(0.0)
    );
    let health = get(
        "portcullis_upstream_status",
        &[("ip", "127.0.0.1"), ("port", &dead.to_string())],
    );
    assert!(health == Some(0.0) || health == Some(1.0), "{m}");
    let sent = get(
        "portcullis_sink_records_total",
        &[("sink", "access_log"), ("result", "sent")],
    )
    .unwrap();
    assert_eq!(sent, cases.len() as f64);
    assert_eq!(
        get(
            "portcullis_sink_records_total",
            &[("sink", "access_log"), ("result", "dropped")]
        )
        .unwrap_or(0.0),
        0.0
    );
}

async fn send_metrics(gw: &Gateway) -> String {
    let r = request("GET", &gw.metrics_url("/metrics"), &[], "")
        .await
        .expect("metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    r.text()
}

type Sample = (String, std::collections::HashMap<String, String>, f64);

/// Parse the text exposition strictly enough: every line is a comment or
/// `name{labels} value`, the last line is `# EOF`.
fn parse_metrics(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "exposition must end with # EOF");
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Default::default()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels {line}"));
                let mut labels = std::collections::HashMap::new();
                // Label values here hold no `",` sequences.
                for kv in body.split("\",").filter(|s| !s.is_empty()) {
                    let (k, v) = kv
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label {kv} in {line}"));
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{name}"
        );
        out.push((name, labels, value));
    }
    out
}

/// A stand-in SIEM collector: records every POST body, answers 200.
struct Collector {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(port: u16, bodies: Arc<Mutex<Vec<String>>>) -> Collector {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind collector");
        let addr = listener.local_addr().unwrap();
        let log = bodies.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let log = log.clone();
                            async move {
                                let auth = req
                                    .headers()
                                    .get("authorization")
                                    .map(|v| v.to_str().unwrap_or("").to_string());
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let mut text = String::from_utf8_lossy(&body).into_owned();
                                if let Some(a) = auth {
                                    text.push_str("\nAUTH:");
                                    text.push_str(&a);
                                }
                                log.lock().unwrap().push(text);
                                Ok::<_, Infallible>(http::Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector { addr, task }
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Records received by a collector (bodies are JSON arrays).
fn collected(bodies: &Arc<Mutex<Vec<String>>>) -> Vec<Value> {
    bodies
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| {
            let json = b.split("\nAUTH:").next().unwrap();
            match serde_json::from_str::<Value>(json) {
                Ok(Value::Array(a)) => a,
                Ok(v) => vec![v],
                Err(_) => vec![],
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_logger_batches_and_survives_a_collector_outage() {
    let up = RecordingUpstream::start().await;
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let collector = Collector::start(0, bodies.clone()).await;
    let port = collector.addr.port();
    let gw = Gateway::start(&format!(
        "routes:
  - id: r1
    uri: /*
    plugins:
      http-logger:
        uri: \"http://127.0.0.1:{port}/ingest\"
        auth_header: \"Bearer collector-token\"
        batch_max_size: 2
        inactive_timeout: 0.2
        max_retry_count: 10
        retry_delay: 0.1
    upstream: {{ nodes: {{ \"{}\": 1 }} }}
",
        up.addr
    ));
    for i in 0..3 {
        assert_eq!(
            send(&gw, "GET", &format!("/a/{i}"), &[], "").await.status,
            200
        );
    }
    let got = wait_records(3, || collected(&bodies)).await;
    assert_eq!(got.len(), 3, "{:?}", bodies.lock().unwrap());
    {
        let b = bodies.lock().unwrap();
        assert!(b[0].starts_with('['), "batches are JSON arrays: {}", b[0]);
        assert!(b[0].ends_with("AUTH:Bearer collector-token"));
        assert_eq!(
            serde_json::from_str::<Value>(b[0].split("\nAUTH:").next().unwrap())
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    // The collector goes away; requests are not slowed, records wait and retry.
    collector.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 3..5 {
        let started = Instant::now();
        assert_eq!(
            send(&gw, "GET", &format!("/a/{i}"), &[], "").await.status,
            200
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let back = Collector::start(port, bodies.clone()).await;
    let got = wait_records(5, || collected(&bodies)).await;
    let mut paths: Vec<String> = got
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/a/0", "/a/1", "/a/2", "/a/3", "/a/4"]);
    let m = send_metrics(&gw).await;
    assert!(
        m.contains(
            "portcullis_sink_records_total{sink=\"http-logger:routes/r1\",result=\"sent\"} 5"
        ),
        "{m}"
    );
    back.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_sends_rfc5424_over_udp_and_tcp() {
    let up = RecordingUpstream::start().await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(&format!(
        "routes:
  - id: via-udp
    uri: /udp
    plugins: {{ syslog: {{ host: 127.0.0.1, port: {}, sock_type: udp, batch_max_size: 1, inactive_timeout: 0.1 }} }}
    upstream: {{ nodes: {{ \"{up}\": 1 }} }}
  - id: via-tcp
    uri: /tcp
    plugins: {{ syslog: {{ host: 127.0.0.1, port: {}, sock_type: tcp, facility: auth, severity: notice, batch_max_size: 5, inactive_timeout: 0.1 }} }}
    upstream: {{ nodes: {{ \"{up}\": 1 }} }}
",
        udp.local_addr().unwrap().port(),
        tcp.local_addr().unwrap().port(),
        up = up.addr,
    ));
    assert_eq!(send(&gw, "GET", "/udp", &[], "").await.status, 200);
    let mut buf = vec![0u8; 65536];
    let n = tokio::time::timeout(Duration::from_secs(10), udp.recv(&mut buf))
        .await
        .expect("udp datagram")
        .unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // local0.info = 16*8+6 = 134
    assert!(msg.starts_with("<134>1 "), "{msg}");
    let parts: Vec<&str> = msg.splitn(8, ' ').collect();
    assert_eq!(parts[3], "portcullis");
    assert_eq!(parts[5], "decision");
    let rec: Value = serde_json::from_str(parts[7]).unwrap();
    assert_eq!(rec["path"], "/udp");
    assert_eq!(rec["route"]["id"], "via-udp");

    for _ in 0..2 {
        assert_eq!(send(&gw, "GET", "/tcp", &[], "").await.status, 200);
    }
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), tcp.accept())
        .await
        .expect("tcp connect")
        .unwrap();
    let mut data = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut frames: Vec<String> = Vec::new();
    while frames.len() < 2 && Instant::now() < deadline {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut chunk)).await
        {
            data.extend_from_slice(&chunk[..n]);
        }
        // Octet counting: "LEN SP MSG".
        frames.clear();
        let mut rest = &data[..];
        while let Some(sp) = rest.iter().position(|b| *b == b' ') {
            let len: usize = std::str::from_utf8(&rest[..sp])
                .unwrap()
                .parse()
                .expect("frame length");
            if rest.len() < sp + 1 + len {
                break;
            }
            frames.push(String::from_utf8_lossy(&rest[sp + 1..sp + 1 + len]).into_owned());
            rest = &rest[sp + 1 + len..];
        }
    }
    assert_eq!(frames.len(), 2, "{}", String::from_utf8_lossy(&data));
    for f in &frames {
        // auth.notice = 4*8+5 = 37
        assert!(f.starts_with("<37>1 "), "{f}");
        let rec: Value = serde_json::from_str(f.splitn(8, ' ').nth(7).unwrap()).unwrap();
        assert_eq!(rec["route"]["id"], "via-tcp");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_logger_reopens_its_file_on_sigusr1() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&format!(
        "routes:
  - id: r1
    uri: /*
    plugins: {{ file-logger: {{ path: \"{{DATA_DIR}}-access.log\" }} }}
    upstream: {{ nodes: {{ \"{}\": 1 }} }}
",
        up.addr
    ));
    let path = std::path::PathBuf::from(format!(
        "{}-access.log",
        gw.dir.path().join("data").display()
    ));
    assert_eq!(send(&gw, "GET", "/before", &[], "").await.status, 200);
    let read = |p: &std::path::Path| records(&std::fs::read_to_string(p).unwrap_or_default());
    assert_eq!(wait_records(1, || read(&path)).await.len(), 1);

    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-USR1", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(send(&gw, "GET", "/after", &[], "").await.status, 200);
    let fresh = wait_records(1, || read(&path)).await;
    assert_eq!(fresh.len(), 1, "a new file after SIGUSR1");
    assert_eq!(fresh[0]["path"], "/after");
    let old = read(&rotated);
    assert_eq!(old.len(), 1);
    assert_eq!(old[0]["path"], "/before");
    // The process is still alive and serving.
    assert_eq!(send(&gw, "GET", "/again", &[], "").await.status, 200);
}

/// Known secrets go in through every door; none comes out anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_any_output() {
    const HEADER_KEY: &str = "sk-live-HEADERSECRET-7f3a9";
    const QUERY_KEY: &str = "sk-live-QUERYSECRET-1b2c3";
    const WRONG_KEY: &str = "sk-live-WRONGSECRET-9d8e7";
    const COOKIE: &str = "COOKIESECRET-5a6b7c";
    const OPAQUE: &str = "OPAQUEBEARER-4d5e6f";
    // A JWT: header {"alg":"HS256","typ":"JWT"}, payload {"sub":"alice"}.
    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    const JWT_SIG: &str = "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    let up = RecordingUpstream::start().await;
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let collector = Collector::start(0, bodies.clone()).await;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let node = format!("nodes: {{ \"{}\": 1 }}", up.addr);
    let gw = Gateway::start_with(
        &format!(
            "{}consumers:
  - username: alice
    plugins: {{ key-auth: {{ key: {HEADER_KEY} }} }}
  - username: bob
    plugins: {{ key-auth: {{ key: {QUERY_KEY} }} }}
global_rules:
  - id: g1
    plugins:
      file-logger: {{ path: \"{{DATA_DIR}}-global.log\" }}
      http-logger: {{ uri: \"http://{}/ingest\", batch_max_size: 1, inactive_timeout: 0.1 }}
      syslog: {{ host: 127.0.0.1, port: {}, sock_type: udp, batch_max_size: 1, inactive_timeout: 0.1 }}
routes:
  - id: keyed
    uri: /keyed/*
    plugins: {{ key-auth: {{ query: apikey, header: apikey }} }}
    upstream: {{ {node} }}
  - id: open
    uri: /open/*
    upstream: {{ {node} }}
",
            gateway_section(
                "  log_level: debug\n  telemetry:\n    query: names\n    include_headers: [authorization, cookie, x-api-key, apikey, user-agent, x-session-token]\n"
            ),
            collector.addr,
            udp.local_addr().unwrap().port(),
        ),
        &[("RUST_LOG", "debug")],
    );
    let requests: Vec<SecretCase> = vec![
        ("/keyed/a".into(), vec![("apikey", HEADER_KEY.into())], 200),
        (format!("/keyed/b?apikey={QUERY_KEY}&page=2"), vec![], 200),
        ("/keyed/c".into(), vec![("apikey", WRONG_KEY.into())], 401),
        (format!("/keyed/d?apikey={WRONG_KEY}"), vec![], 401),
        (
            "/open/e".into(),
            vec![
                ("authorization", format!("Bearer {JWT}")),
                ("cookie", format!("session={COOKIE}; theme=dark")),
            ],
            200,
        ),
        (
            "/open/f".into(),
            vec![
                ("authorization", format!("Bearer {OPAQUE}")),
                ("x-session-token", COOKIE.into()),
                ("user-agent", "secrets-test/1".into()),
            ],
            200,
        ),
        (
            format!("/open/{JWT}"),
            vec![("x-api-key", HEADER_KEY.into())],
            200,
        ),
        (
            format!("/missing?token={JWT}"),
            vec![("cookie", format!("sid={COOKIE}"))],
            404,
        ),
    ];
    for (path, headers, status) in &requests {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = send(&gw, "GET", path, &h, "").await;
        assert_eq!(r.status, *status, "{path}: {}", r.text());
    }

    let n = requests.len();
    let stdout_recs = wait_records(n, || records(&gw.stdout())).await;
    assert_eq!(stdout_recs.len(), n);
    let global_log = format!("{}-global.log", gw.dir.path().join("data").display());
    // Global rules apply to matched routes: every request but the 404.
    let file_recs = wait_records(n - 1, || {
        records(&std::fs::read_to_string(&global_log).unwrap_or_default())
    })
    .await;
    assert_eq!(file_recs.len(), n - 1);
    let collected_recs = wait_records(n - 1, || collected(&bodies)).await;
    assert_eq!(collected_recs.len(), n - 1);
    let mut syslog_text = String::new();
    let mut buf = [0u8; 65536];
    while let Ok(len) = udp.recv(&mut buf) {
        syslog_text.push_str(&String::from_utf8_lossy(&buf[..len]));
        syslog_text.push('\n');
    }
    assert_eq!(
        syslog_text.matches("<134>1 ").count(),
        n - 1,
        "{syslog_text}"
    );

    // The headers that were configured show up, redacted where secret.
    let f = stdout_recs.iter().find(|r| r["path"] == "/open/f").unwrap();
    assert_eq!(f["headers"]["user-agent"], "secrets-test/1");
    assert_eq!(f["headers"]["authorization"], "[redacted]");
    assert_eq!(f["headers"]["x-session-token"], "[redacted]");
    let b = stdout_recs
        .iter()
        .find(|r| r["path"] == "/keyed/b")
        .unwrap();
    assert_eq!(b["query"]["apikey"], "[redacted]");
    assert_eq!(b["consumer"]["username"], "bob");

    let metrics = send_metrics(&gw).await;
    let outputs = [
        ("stdout", gw.stdout()),
        ("stderr", gw.stderr()),
        ("file-logger", std::fs::read_to_string(&global_log).unwrap()),
        ("http-logger", bodies.lock().unwrap().join("\n")),
        ("syslog", syslog_text),
        ("metrics", metrics),
    ];
    assert!(
        !outputs[1].1.is_empty(),
        "debug logging produced output to search"
    );
    for (name, text) in &outputs {
        for secret in [
            HEADER_KEY, QUERY_KEY, WRONG_KEY, COOKIE, OPAQUE, JWT, JWT_SIG,
        ] {
            assert!(
                !text.contains(secret),
                "{name} contains the secret {secret}:\n{text}"
            );
        }
    }
    collector.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_configs_are_checked_like_apisix() {
    let up = RecordingUpstream::start().await;
    // Store-backed (no resources in the file): the Admin API validates writes.
    let gw = Gateway::start("");
    let put = |body: String| {
        let url = gw.admin_url("/apisix/admin/routes/x");
        async move {
            request("PUT", &url, &[("x-api-key", "test-admin-key")], body)
                .await
                .unwrap()
        }
    };
    let route = |plugins: &str| {
        format!(
            "{{\"uri\": \"/x\", \"plugins\": {plugins}, \"upstream\": {{\"nodes\": {{\"{}\": 1}}}}}}",
            up.addr
        )
    };
    let r = put(route(
        "{\"http-logger\": {\"uri\": \"http://127.0.0.1:9/\", \"batch_max_size\": 0}}",
    ))
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("batch_max_size"), "{}", r.text());
    let r = put(route(
        "{\"http-logger\": {\"uri\": \"http://127.0.0.1:9/\", \"include_req_body\": true}}",
    ))
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = put(route(
        "{\"syslog\": {\"host\": \"127.0.0.1\", \"port\": 514, \"sock_type\": \"sctp\"}}",
    ))
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = put(route(
        "{\"http-logger\": {\"uri\": \"http://127.0.0.1:9/\"}, \"prometheus\": {}}",
    ))
    .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text());
}
