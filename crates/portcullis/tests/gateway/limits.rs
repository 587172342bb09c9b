//! Black-box tests of the local limit plugins: the real binary in front of a
//! real upstream on loopback ports. limit-conn counts requests in flight
//! (the upstream's `/sleep/<ms>` keeps them there), limit-count admits
//! exactly its quota under concurrency and keeps its counters across
//! unrelated config edits.

use std::time::{Duration, Instant};

use portcullis_test_support::gateway::default_gateway_section;
use portcullis_test_support::{request, Gateway, RecordingUpstream, Response};

async fn get(url: &str) -> Response {
    request("GET", url, &[], "").await.expect("request")
}

fn route(id: &str, uri: &str, up: &RecordingUpstream, plugins: &str) -> String {
    format!(
        "  - id: {id}\n    uri: {uri}\n    upstream: {{ nodes: {{ \"{}\": 1 }} }}\n    plugins:\n{plugins}",
        up.addr
    )
}

/// Send `n` requests at once (each on its own connection) and return their
/// statuses, sorted.
async fn burst(url: &str, n: usize) -> Vec<u16> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_admits_conn_in_flight_and_releases_when_they_end() {
    let up = RecordingUpstream::start().await;
    let plugins = "      limit-conn: { conn: 2, burst: 0, default_conn_delay: 0.1, key_type: constant, key: all, rejected_msg: \"too many in flight\" }\n";
    let gw = Gateway::start(&format!("routes:\n{}", route("r1", "/*", &up, plugins)));
    let url = gw.url("/sleep/300");
    let statuses = burst(&url, 10).await;
    assert_eq!(count(&statuses, 200), 2, "{statuses:?}");
    assert_eq!(count(&statuses, 503), 8, "{statuses:?}");
    assert_eq!(up.count(), 2);
    // Every place was given back: a second wave gets the same.
    let statuses = burst(&url, 4).await;
    assert_eq!(count(&statuses, 200), 2, "{statuses:?}");
    let r = {
        let slow = tokio::spawn({
            let url = url.clone();
            async move { get(&url).await }
        });
        let slow2 = tokio::spawn({
            let url = url.clone();
            async move { get(&url).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = get(&gw.url("/fast")).await;
        slow.await.unwrap();
        slow2.await.unwrap();
        r
    };
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json(),
        serde_json::json!({"error_msg": "too many in flight"})
    );
    // Sequential requests never overlap: all pass.
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/fast")).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_delays_the_burst_and_rejects_beyond_it() {
    let up = RecordingUpstream::start().await;
    let plugins = "      limit-conn: { conn: 1, burst: 1, default_conn_delay: 0.4, only_use_default_delay: true, key_type: constant, key: all, rejected_code: 429 }\n";
    let gw = Gateway::start(&format!("routes:\n{}", route("r1", "/*", &up, plugins)));
    let url = gw.url("/sleep/300");
    let started = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                // Ordered arrivals: the third finds one in flight and one waiting.
                tokio::time::sleep(Duration::from_millis(50 * i)).await;
                let r = get(&url).await;
                (r.status, started.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results[0].0, 200, "{results:?}");
    assert_eq!(results[1].0, 200, "{results:?}");
    assert_eq!(results[2].0, 429, "{results:?}");
    // The second waited one unit (400 ms) before its 300 ms upstream call.
    assert!(results[1].1 >= Duration::from_millis(700), "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_place_is_released_when_a_later_plugin_rejects() {
    let up = RecordingUpstream::start().await;
    // limit-conn (1003) runs before limit-count (1002); limit-count rejects
    // from the second request on. Were limit-conn's place not given back,
    // the third request would be refused by limit-conn instead.
    let plugins = "      limit-conn: { conn: 1, burst: 0, default_conn_delay: 0.1, key_type: constant, key: all, rejected_msg: conn }\n      limit-count: { count: 1, time_window: 60, key_type: constant, key: all, rejected_msg: count }\n";
    let gw = Gateway::start(&format!("routes:\n{}", route("r1", "/*", &up, plugins)));
    assert_eq!(get(&gw.url("/a")).await.status, 200);
    for _ in 0..3 {
        let r = get(&gw.url("/a")).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json(), serde_json::json!({"error_msg": "count"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_count_admits_exactly_its_quota_under_concurrency_on_two_workers() {
    let up = RecordingUpstream::start().await;
    let plugins = "      limit-count: { count: 50, time_window: 60, key_type: constant, key: all, rejected_code: 429 }\n";
    let config = format!(
        "{}routes:\n{}",
        default_gateway_section().replace("workers: 1", "workers: 2"),
        route("r1", "/*", &up, plugins)
    );
    let gw = Gateway::start(&config);
    let url = gw.url("/x");
    // 400 requests, 40 at a time.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.extend(burst(&url, 40).await);
    }
    assert_eq!(count(&statuses, 200), 50);
    assert_eq!(count(&statuses, 429), 350);
    assert_eq!(up.count(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_count_headers_and_rejection_as_apisix() {
    let up = RecordingUpstream::start().await;
    let plugins = "      limit-count: { count: 2, time_window: 60, rejected_code: 429, rejected_msg: \"quota exceeded\" }\n";
    let gw = Gateway::start(&format!("routes:\n{}", route("r1", "/*", &up, plugins)));
    for left in ["1", "0"] {
        let r = get(&gw.url("/x")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left));
        let reset: f64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((59.0..=60.0).contains(&reset), "{reset}");
    }
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(r.header("x-ratelimit-reset").is_some());
    assert_eq!(r.json(), serde_json::json!({"error_msg": "quota exceeded"}));
    assert_eq!(up.count(), 2);
}

async fn config_version(gw: &Gateway) -> u64 {
    get(&gw.metrics_url("/readyz")).await.json()["config_version"]
        .as_u64()
        .expect("config_version")
}

/// Write `resources` after the gateway section and wait until the new
/// version is live.
async fn reload(gw: &Gateway, resources: &str) {
    let before = config_version(gw).await;
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let gateway = text.split("\nroutes:").next().unwrap();
    gw.write_config(&format!("{gateway}\n{resources}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while config_version(gw).await == before {
        assert!(
            Instant::now() < deadline,
            "the edit was not applied in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_count_counters_survive_unrelated_edits_and_reset_on_their_own() {
    let up = RecordingUpstream::start().await;
    let limit = "      limit-count: { count: 5, time_window: 600, key_type: constant, key: all }\n";
    let resources = |tag: &str, limit: &str, more_routes: &str| {
        format!(
            "routes:\n{}{}{more_routes}",
            route(
                "r1",
                "/api/*",
                &up,
                &format!("{limit}      proxy-rewrite: {{ headers: {{ set: {{ x-tag: \"{tag}\" }} }} }}\n")
            ),
            route("r2", "/other/*", &up, "      request-id: {}\n"),
        )
    };
    let gw = Gateway::start(&resources("1", limit, ""));
    let remaining = async || {
        get(&gw.url("/api/x"))
            .await
            .header("x-ratelimit-remaining")
            .unwrap()
            .to_string()
    };
    assert_eq!(remaining().await, "4");
    assert_eq!(remaining().await, "3");
    // Another plugin on the same route changes.
    reload(&gw, &resources("2", limit, "")).await;
    assert_eq!(up.seen().len(), 2);
    assert_eq!(remaining().await, "2");
    assert_eq!(up.seen().last().unwrap().headers["x-tag"], "2");
    // Another route is added.
    let r3 = route("r3", "/third/*", &up, "      request-id: {}\n");
    reload(&gw, &resources("2", limit, &r3)).await;
    assert_eq!(remaining().await, "1");
    // The limit's own settings change: a fresh counter.
    let changed =
        "      limit-count: { count: 6, time_window: 600, key_type: constant, key: all }\n";
    reload(&gw, &resources("2", changed, &r3)).await;
    assert_eq!(remaining().await, "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_conn_place_is_released_when_the_client_goes_away() {
    use tokio::io::AsyncWriteExt;
    let up = RecordingUpstream::start().await;
    let plugins = "      limit-conn: { conn: 1, burst: 0, default_conn_delay: 0.1, key_type: constant, key: all }\n";
    let gw = Gateway::start(&format!("routes:\n{}", route("r1", "/*", &up, plugins)));
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", gw.http_port))
        .await
        .unwrap();
    client
        .write_all(b"GET /sleep/5000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&gw.url("/fast")).await.status, 503);
    drop(client);
    // Well before the upstream would have answered, the place is free.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if get(&gw.url("/fast")).await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place was not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
