//! Measures what a configuration change costs with many routes: a cold
//! build (start-up, or every route changed) and the rebuild after one route
//! changes (an Admin API write or a one-line file edit), which reuses the
//! compiled form of every unchanged route. Run with
//! `cargo run --release -p portcullis-config --example snapshot_rebuild -- 10000`.

use std::time::{Duration, Instant};

use portcullis_config::{Kind, Live, RawConfig, RawResource};
use serde_json::json;

fn route(i: usize, tag: usize) -> RawResource {
    RawResource {
        id: format!("r{i}"),
        value: json!({
            "uri": format!("/svc{i}/*"),
            "methods": ["GET", "POST"],
            "upstream_id": "u1",
            "plugins": {"request-id": {}, "proxy-rewrite": {"headers": {"set": {"x-route": format!("r{i}-{tag}")}}}}
        })
        .into(),
        origin: format!("routes/r{i}"),
    }
}

fn median_ms(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(times[times.len() / 2]),
        ms(times[times.len() * 99 / 100]),
    )
}

fn main() {
    let routes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let mut raw = RawConfig::default();
    raw.push(
        Kind::Upstreams,
        RawResource {
            id: "u1".into(),
            value: json!({"nodes": {"127.0.0.1:8080": 1}}).into(),
            origin: "upstreams/u1".into(),
        },
    );
    for i in 0..routes {
        raw.push(Kind::Routes, route(i, 0));
    }

    let mut cold = Vec::new();
    for _ in 0..5 {
        let live = Live::default();
        let candidate = raw.clone();
        let started = Instant::now();
        live.apply(candidate).expect("valid");
        cold.push(started.elapsed());
    }

    let live = Live::default();
    live.apply(raw.clone()).expect("valid");
    let mut one_change = Vec::new();
    for n in 1..=50 {
        // What the Admin API does per write: copy the served config (cheap:
        // values are shared), replace one route, validate, swap.
        let mut candidate = RawConfig::clone(&live.load().raw);
        candidate.upsert(Kind::Routes, route(n % routes, n));
        let started = Instant::now();
        live.check(candidate.clone()).expect("valid");
        live.apply(candidate).expect("valid");
        one_change.push(started.elapsed());
    }
    let (cold_med, _) = median_ms(cold);
    let (one_med, one_p99) = median_ms(one_change);
    println!("{routes} routes: cold build median {cold_med:.1} ms; one route changed: check + rebuild + swap median {one_med:.1} ms, p99 {one_p99:.1} ms");
}
