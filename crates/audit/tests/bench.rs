//! Store figures (run with `cargo test --release -p portcullis-audit --test
//! bench -- --ignored --nocapture`; `AUDIT_BENCH_N` rows, default 1,000,000).

use std::borrow::Cow;
use std::time::Instant;

use portcullis_audit::store::{self, Appender, Filter, Row};

#[test]
#[ignore]
fn inserts_and_a_consumer_window_query() {
    let n: i64 = std::env::var("AUDIT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut app = Appender::new(store::open(&path).unwrap()).unwrap();
    let record = bytes::Bytes::from(format!(
        "{{\"schema\":\"portcullis.decision/v1\",\"pad\":\"{}\"}}\n",
        "x".repeat(600)
    ));
    // Spread over 10 days, 200 consumers, 50 routes.
    let start = 1_714_521_600_000i64;
    let step = 10 * 86_400_000 / n;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(4096);
    for i in 0..n {
        batch.push(Row {
            time: start + i * step,
            event: Cow::Borrowed("request"),
            consumer: Some(format!("svc-{}", i % 200)),
            route: Some(format!("route-{}", i % 50)),
            tier: Some("customer_data_api".into()),
            status: if i % 20 == 0 { 403 } else { 200 },
            decision: Cow::Borrowed(if i % 20 == 0 { "reject" } else { "allow" }),
            request_id: Some(format!("req-{i:016x}")),
            method: Some("GET".into()),
            path: Some("/orders/42".into()),
            client: Some("10.0.0.7".into()),
            record: record.clone(),
            ..Row::default()
        });
        if batch.len() == 4096 {
            app.append(&batch).unwrap();
            batch.clear();
        }
    }
    app.append(&batch).unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "inserted {n} rows in {secs:.1}s: {:.0} rows/s",
        n as f64 / secs
    );

    let conn = store::open_read(&path).unwrap();
    let mid = start + 5 * 86_400_000;
    let f = Filter {
        consumer: Some("svc-7".into()),
        from: Some(mid),
        to: Some(mid + 3_600_000),
        limit: 100,
        ..Filter::default()
    };
    let t = Instant::now();
    let v = store::query(&conn, &f).unwrap();
    println!(
        "consumer + 1 h window over {n} rows: {} matching, first page in {:.1} ms",
        v["total"],
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    let s = store::summary(
        &conn,
        &Filter {
            from: Some(mid),
            to: Some(mid + 3_600_000),
            ..Filter::default()
        },
        &["consumer".into(), "route".into()],
    )
    .unwrap();
    println!(
        "summary by consumer,route over 1 h: {} rows counted in {:.1} ms",
        s["total"],
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    let ok = store::verify(&conn).unwrap().ok;
    println!(
        "verify {n} rows: ok={ok} in {:.1}s",
        t.elapsed().as_secs_f64()
    );
}
