//! Black-box tests of the Redis policies: real gateway processes sharing a
//! real `redis-server` on a loopback port. Limits stay exact across
//! processes, and a Redis outage is ridden out as `allow_degradation` says,
//! with recovery after Redis returns and no gateway restart.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_test_support::redis::RedisServer;
use portcullis_test_support::{request, Gateway, RecordingUpstream, Response};

async fn get(url: &str) -> Response {
    request("GET", url, &[], "").await.expect("request")
}

fn config(up: &RecordingUpstream, plugins: &str) -> String {
    format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream: {{ nodes: {{ \"{}\": 1 }} }}\n    plugins:\n{plugins}",
        up.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_count_on_redis_is_exact_across_two_gateways() {
    let redis = RedisServer::start();
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-count: {{ count: 1000, time_window: 600, key_type: constant, key: all, rejected_code: 429, policy: redis, redis_host: 127.0.0.1, redis_port: {}, redis_timeout: 2000 }}\n",
        redis.port
    );
    let a = Gateway::start(&config(&up, &plugins));
    let b = Gateway::start(&config(&up, &plugins));
    let urls = Arc::new([a.url("/x"), b.url("/x")]);
    let next = Arc::new(AtomicUsize::new(0));
    let (admitted, rejected, other) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let total = 10_000;
    let started = Instant::now();
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (urls, next) = (urls.clone(), next.clone());
            let (admitted, rejected, other) = (admitted.clone(), rejected.clone(), other.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let r = get(&urls[w % 2]).await;
                    match r.status {
                        200 => admitted.fetch_add(1, Ordering::Relaxed),
                        429 => rejected.fetch_add(1, Ordering::Relaxed),
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let (admitted, rejected, other) = (
        admitted.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    eprintln!(
        "two gateways on one redis: {admitted} admitted, {rejected} rejected, {other} other, of {total} in {:?}",
        started.elapsed()
    );
    assert_eq!(other, 0);
    assert_eq!(admitted + rejected, total);
    assert_eq!(admitted, 1000);
    assert_eq!(up.count(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_count_on_redis_sends_apisix_headers() {
    let redis = RedisServer::start();
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-count: {{ count: 2, time_window: 60, rejected_code: 429, rejected_msg: over, policy: redis, redis_host: 127.0.0.1, redis_port: {} }}\n",
        redis.port
    );
    let gw = Gateway::start(&config(&up, &plugins));
    for left in ["1", "0"] {
        let r = get(&gw.url("/x")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left));
        let reset: f64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((58.0..=60.0).contains(&reset), "{reset}");
    }
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.json(), serde_json::json!({"error_msg": "over"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_req_on_redis_shares_one_bucket_across_gateways() {
    let redis = RedisServer::start();
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-req: {{ rate: 1, burst: 0, nodelay: true, key_type: constant, key: all, rejected_code: 429, policy: redis, redis_host: 127.0.0.1, redis_port: {} }}\n",
        redis.port
    );
    let a = Gateway::start(&config(&up, &plugins));
    let b = Gateway::start(&config(&up, &plugins));
    assert_eq!(get(&a.url("/x")).await.status, 200);
    assert_eq!(get(&b.url("/x")).await.status, 429);
    assert_eq!(get(&a.url("/x")).await.status, 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&b.url("/x")).await.status, 200);
    assert_eq!(get(&a.url("/x")).await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_req_on_redis_delays_the_burst() {
    let redis = RedisServer::start();
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-req: {{ rate: 5, burst: 2, key_type: constant, key: all, policy: redis, redis_host: 127.0.0.1, redis_port: {} }}\n",
        redis.port
    );
    let gw = Gateway::start(&config(&up, &plugins));
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let url = gw.url("/x");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                (get(&url).await.status, started.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{results:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        1,
        "{results:?}"
    );
    // The two in the burst waited 200 and 400 ms (less what already leaked).
    let slowest = results
        .iter()
        .filter(|r| r.0 == 200)
        .map(|r| r.1)
        .max()
        .unwrap();
    assert!(slowest >= Duration::from_millis(300), "{results:?}");
}

/// Poll `url` until `check` holds, for at most `within`.
async fn wait_until(url: &str, within: Duration, check: impl Fn(&Response) -> bool) -> Response {
    let deadline = Instant::now() + within;
    loop {
        let r = get(url).await;
        if check(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no matching answer within {within:?}; last: {} {:?}",
            r.status,
            r.headers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis outage in the middle of a run: `fail_open` decides what the
/// gateway answers while Redis is down; both recover once it is back.
async fn outage(allow_degradation: bool) {
    let mut redis = RedisServer::start();
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-count: {{ count: 1000, time_window: 600, key_type: constant, key: all, policy: redis, redis_host: 127.0.0.1, redis_port: {}, redis_password: \"\", redis_timeout: 300, allow_degradation: {allow_degradation} }}\n",
        redis.port
    );
    let gw = Gateway::start(&config(&up, &plugins));
    let url = gw.url("/x");
    for _ in 0..5 {
        let r = get(&url).await;
        assert_eq!(r.status, 200);
        assert!(r.header("x-ratelimit-remaining").is_some());
    }
    redis.stop();
    let started = Instant::now();
    for _ in 0..10 {
        let r = get(&url).await;
        if allow_degradation {
            assert_eq!(r.status, 200, "{}", r.text());
            // Nobody counted it: no quota to show.
            assert!(r.header("x-ratelimit-remaining").is_none());
        } else {
            assert_eq!(r.status, 503);
            assert_eq!(
                r.json(),
                serde_json::json!({"error_msg": "failed to limit count"})
            );
        }
    }
    // Each answer came within about redis_timeout.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let log = gw.stderr();
    assert!(log.contains("redis unavailable for rate limiting"), "{log}");
    let mode = if allow_degradation {
        "failing open"
    } else {
        "failing closed"
    };
    assert!(log.contains(mode), "{log}");
    // Warnings are rate limited: far fewer than the failed requests.
    assert!(log.matches("redis unavailable").count() <= 5, "{log}");
    redis.restart();
    // Back without restarting the gateway: counted again (Redis lost its
    // data, so the window starts afresh).
    let r = wait_until(&url, Duration::from_secs(15), |r| {
        r.status == 200 && r.header("x-ratelimit-remaining").is_some()
    })
    .await;
    let left: u64 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
    assert!(left >= 990, "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_with_allow_degradation_and_recovers() {
    outage(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_without_allow_degradation_and_recovers() {
    outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_at_start_does_not_refuse_the_config() {
    let port = portcullis_test_support::free_port();
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-count: {{ count: 10, time_window: 60, policy: redis, redis_host: 127.0.0.1, redis_port: {port}, redis_password: very-secret-pw, redis_timeout: 200 }}\n",
    );
    let gw = Gateway::start(&config(&up, &plugins));
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status, 503);
    assert!(!gw.stderr().contains("very-secret-pw"));
    assert!(!r.text().contains("very-secret-pw"));
}
