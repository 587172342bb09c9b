//! Store figures (docs/audit.md). Run, one at a time:
//!
//! ```text
//! AUDIT_BENCH_N=10000000 cargo test --release -p portcullis-audit --test bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `store_inserts_queries_summary_verify`: `AUDIT_BENCH_N` records
//!   (default 1,000,000) of ~700 bytes, 200 consumers, 50 routes, spread
//!   over 24 hours, appended in writer-sized batches (4096) with the
//!   detectors fed as the writer feeds them; then a consumer + one-hour
//!   query, a one-hour summary by consumer and route, `verify`, and the
//!   file's size per record.
//! - `request_path_and_writer_cost`: the gateway's own path: `observe`
//!   from a request thread while the writer thread drains, with their CPU
//!   time per record.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use portcullis_audit::profiles::Profiles;
use portcullis_audit::store::{self, Appender, Filter, Pending};
use portcullis_audit::AnomalySettings;
use portcullis_core::consumer::{Consumer, Identity};
use portcullis_core::decision::{Decision, DecisionRecord};
use portcullis_core::request::RouteInfo;

const START: i64 = 1_714_521_600_000;
const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

fn n() -> i64 {
    std::env::var("AUDIT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A decision record's JSON as the gateway writes it (~700 bytes).
fn record_json(i: i64, t: i64, consumer: &str, route: &str, status: u16, rid: &str) -> String {
    let decision = if status == 403 {
        r#"{"plugin":"consumer-restriction","outcome":"reject","reason":"consumer not allowed"}"#
    } else {
        r#"{"plugin":"limit-count","outcome":"allow","limit":{"limit":100000,"remaining":99123}}"#
    };
    format!(
        concat!(
            r#"{{"schema":"portcullis.decision/v1","time":"{t}","request_id":"{rid}","#,
            r#""trace_id":"4bf92f3577b34da6a3ce929d{i:08x}","#,
            r#""route":{{"id":"{route}","labels":{{"tier":"customer_data_api"}}}},"#,
            r#""consumer":{{"username":"{consumer}","credential_id":"cred-{consumer}","authenticated_by":"key-auth"}},"#,
            r#""client":{{"ip":"10.1.{a}.{b}","port":{port}}},"scheme":"https","method":"GET","host":"api.example.com","#,
            r#""path":"/v1/orders/{i}","status":{status},"latency_ms":1.734,"#,
            r#""upstream":{{"addr":"10.2.0.15:8080","attempts":1}},"bytes_in":0,"bytes_out":1834,"#,
            r#""decisions":[{{"plugin":"key-auth","outcome":"allow"}},{decision}]}}"#
        ),
        t = portcullis_audit::time::format(t),
        rid = rid,
        i = i,
        route = route,
        consumer = consumer,
        a = (i >> 8) & 255,
        b = i & 255,
        port = 30000 + i % 20000,
        status = status,
        decision = decision,
    )
}

fn pending(i: i64, n: i64) -> Pending {
    let t = START + i * DAY / n;
    let consumer = format!("svc-{}", i % 200);
    let route = format!("route-{}", i % 50);
    let reject = i % 20 == 0;
    let status = if reject { 403 } else { 200 };
    let rid = format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15);
    let path = format!("/v1/orders/{i}");
    let record = record_json(i, t, &consumer, &route, status, &rid);
    Pending::request(
        t,
        status,
        &[
            Some("request"),
            Some(&consumer),
            Some("cred-x"),
            Some(&route),
            Some("customer_data_api"),
            Some(if reject { "reject" } else { "allow" }),
            reject.then_some("consumer-restriction"),
            Some(&rid),
            Some("GET"),
            Some(&path),
            Some("10.1.2.3"),
        ],
        bytes::Bytes::from(record + "\n"),
    )
}

#[test]
#[ignore]
fn store_inserts_queries_summary_verify() {
    let n = n();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut app = Appender::new(store::open(&path).unwrap()).unwrap();
    let mut profiles = Profiles::default();
    let anomaly: AnomalySettings = serde_json::from_str("{}").unwrap();
    let (mut writer, mut writer_cpu) = (0.0, 0.0);
    let mut detectors = 0.0;
    let mut json_bytes = 0usize;
    let started = Instant::now();
    let mut i = 0;
    let mut batch = Vec::with_capacity(4096);
    while i < n {
        batch.clear();
        while batch.len() < 4096 && i < n {
            batch.push(pending(i, n));
            i += 1;
        }
        json_bytes += batch.iter().map(|p| p.json().len()).sum::<usize>();
        let (t, c) = (Instant::now(), my_cpu());
        app.append(&batch, |_| {}).unwrap();
        writer += t.elapsed().as_secs_f64();
        writer_cpu += my_cpu() - c;
        let c = my_cpu();
        for p in &batch {
            std::hint::black_box(profiles.observe(&p.fields(), &anomaly));
        }
        detectors += my_cpu() - c;
    }
    println!(
        "appended {n} records ({:.0} bytes of JSON each) in {writer:.1}s ({writer_cpu:.1}s CPU) of writer time, {:.1}s wall with generation: \
         {:.0} records/s ({:.0}/s of CPU), {:.2} µs/record CPU; detectors {:.2} µs/record CPU",
        json_bytes as f64 / n as f64,
        started.elapsed().as_secs_f64(),
        n as f64 / writer,
        n as f64 / writer_cpu,
        writer_cpu * 1e6 / n as f64,
        detectors * 1e6 / n as f64,
    );
    drop(app);
    let size: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "file: {:.0} MB, {:.0} bytes/record",
        size as f64 / 1e6,
        size as f64 / n as f64
    );

    let conn = store::open_read(&path).unwrap();
    let mid = START + DAY / 2;
    let window = |f: Filter| Filter {
        from: Some(mid),
        to: Some(mid + HOUR),
        limit: 100,
        ..f
    };
    let consumer = || Filter {
        consumer: Some("svc-7".into()),
        ..Filter::default()
    };
    for run in ["first", "again"] {
        let (v, t) = timed(|| store::query(&conn, &window(consumer())).unwrap());
        println!(
            "consumer + 1 h window ({run}): total {} ({} listed), first page and total in {t}",
            v["total"],
            v["list"].as_array().unwrap().len(),
        );
    }
    let (v, t) = timed(|| store::query(&conn, &window(Filter::default())).unwrap());
    println!("1 h window, no filter: total {} in {t}", v["total"]);
    let (v, t) = timed(|| {
        store::query(
            &conn,
            &Filter {
                limit: 100,
                ..consumer()
            },
        )
        .unwrap()
    });
    println!("consumer, no window: total {} in {t}", v["total"]);
    let (v, t) = timed(|| {
        store::query(
            &conn,
            &window(Filter {
                status: Some("4xx".into()),
                ..consumer()
            }),
        )
        .unwrap()
    });
    println!(
        "consumer + status 4xx + 1 h window (every batch in the window read): total {} in {t}",
        v["total"]
    );
    let rid = format!("{:032x}", (n / 2) as u128 * 0x9e37_79b9_7f4a_7c15);
    let (v, t) = timed(|| {
        store::query(
            &conn,
            &window(Filter {
                request_id: Some(rid.clone()),
                ..Filter::default()
            }),
        )
        .unwrap()
    });
    println!("request_id + 1 h window: total {} in {t}", v["total"]);
    let (s, t) = timed(|| {
        store::summary(
            &conn,
            &window(Filter::default()),
            &["consumer".into(), "route".into()],
        )
        .unwrap()
    });
    println!(
        "summary by consumer,route over 1 h: {} records in {} groups in {t}",
        s["total"],
        s["groups"].as_array().unwrap().len(),
    );
    let (v, t) = timed(|| store::verify(&conn).unwrap());
    assert!(v.ok, "{:?}", v.problems);
    println!(
        "verify {} records in {} batches: ok in {t}",
        v.rows, v.batches
    );
}

/// CPU seconds the thread named `name` has used (Linux schedstat, in ns).
fn thread_cpu(name: &str) -> f64 {
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = e.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return schedstat(&dir.join("schedstat"));
        }
    }
    0.0
}

fn schedstat(path: &std::path::Path) -> f64 {
    let s = std::fs::read_to_string(path).unwrap();
    s.split(' ').next().unwrap().parse::<f64>().unwrap() / 1e9
}

/// CPU seconds this thread has used: the figure that holds on a busy
/// machine (wall time counts other processes' turns too).
fn my_cpu() -> f64 {
    schedstat(std::path::Path::new("/proc/thread-self/schedstat"))
}

/// Wall and CPU milliseconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, String) {
    let (w, c) = (Instant::now(), my_cpu());
    let v = f();
    let (w, c) = (w.elapsed().as_secs_f64(), my_cpu() - c);
    (v, format!("{:.1} ms ({:.1} ms CPU)", w * 1e3, c * 1e3))
}

#[test]
#[ignore]
fn request_path_and_writer_cost() {
    let n: u64 = std::env::var("AUDIT_COST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().unwrap();
    let settings: portcullis_audit::AuditSettings =
        serde_json::from_str(r#"{"max_age": 0}"#).unwrap();
    let anomaly: AnomalySettings = serde_json::from_str("{}").unwrap();
    let audit = portcullis_audit::start(dir.path(), &settings, &anomaly).unwrap();
    let routes: Vec<RouteInfo> = (0..50)
        .map(|r| RouteInfo {
            id: format!("route-{r}").into(),
            name: None,
            service_id: None,
            labels: [("tier".to_string(), "customer_data_api".to_string())].into(),
        })
        .collect();
    let identities: Vec<Identity> = (0..200)
        .map(|c| Identity {
            consumer: Arc::new(Consumer {
                username: format!("svc-{c}").into(),
                group_id: None,
                labels: Default::default(),
            }),
            credential_id: Some(format!("cred-{c}").into()),
            authenticated_by: "key-auth",
        })
        .collect();
    let decisions = [
        Decision::allow("key-auth"),
        Decision::allow("request-id"),
        Decision::allow("limit-count"),
    ];
    let headers = http::HeaderMap::new();
    let ids: Vec<String> = (0..4096).map(|i| format!("{:032x}", i * 7919)).collect();
    let make = |i: u64| DecisionRecord {
        time: SystemTime::now(),
        request_id: Some(&ids[i as usize % ids.len()]),
        trace_id: [7; 16],
        route: Some(&routes[i as usize % routes.len()]),
        identity: Some(&identities[i as usize % identities.len()]),
        client_ip: "10.1.2.3".parse().unwrap(),
        client_port: 40000,
        scheme: "https",
        method: "GET",
        host: Some("api.example.com"),
        path: "/v1/orders/42",
        query: None,
        status: 200,
        latency: Duration::from_micros(1700),
        upstream_latency: Some(Duration::from_micros(1200)),
        upstream_addr: Some("10.2.0.15:8080"),
        upstream_attempts: 1,
        bytes_in: Some(0),
        bytes_out: Some(1834),
        decisions: &decisions,
        headers: Some(&headers),
        encoded: Default::default(),
    };
    // The JSON is the access log's (encoded once per request either way):
    // encode it outside the timed part, as the log sink does first.
    let recs: Vec<DecisionRecord<'_>> = (0..8192).map(make).collect();
    for r in &recs {
        let _ = portcullis_telemetry::json(r).clone();
    }
    let writer_before = thread_cpu("audit-writer");
    let t = Instant::now();
    let mut sent = 0u64;
    let mut observe = Duration::ZERO;
    while sent < n {
        let c = Instant::now();
        for r in &recs {
            audit.observe(r);
        }
        observe += c.elapsed();
        sent += recs.len() as u64;
        // Keep the queue from overflowing (not timed): the writer has the
        // other core.
        while audit.written() + audit.dropped() + 30_000 < sent {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    while audit.written() + audit.dropped() < sent {
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = t.elapsed();
    let writer = thread_cpu("audit-writer") - writer_before;
    println!(
        "observe: {sent} records, {:.3} µs/record on the request thread (encode + try_send, the writer running beside); \
         writer thread {:.2} µs/record of CPU (append, hash, SQLite, detectors); {:.0} records/s end to end; dropped {}",
        observe.as_secs_f64() * 1e6 / sent as f64,
        writer * 1e6 / sent as f64,
        sent as f64 / wall.as_secs_f64(),
        audit.dropped(),
    );
    // The encode alone, without the channel.
    let t = Instant::now();
    for _ in 0..100 {
        for r in &recs {
            std::hint::black_box(portcullis_audit::pending(r));
        }
    }
    println!(
        "pending() alone: {:.3} µs/record",
        t.elapsed().as_secs_f64() * 1e6 / (100 * recs.len()) as f64
    );
    // For scale: the decision record's JSON, which the access log encodes
    // (and the audit store shares) once per request.
    let redaction = portcullis_telemetry::global().redaction();
    let t = Instant::now();
    for _ in 0..20 {
        for r in &recs {
            std::hint::black_box(portcullis_telemetry::record::encode(r, redaction));
        }
    }
    println!(
        "decision record JSON encode (shared with the access log): {:.3} µs/record",
        t.elapsed().as_secs_f64() * 1e6 / (20 * recs.len()) as f64
    );
}
