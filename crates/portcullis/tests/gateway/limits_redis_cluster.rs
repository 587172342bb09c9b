//! Black-box tests of `policy: redis-cluster`: real gateway processes
//! sharing a real Redis Cluster (three masters on loopback, formed by
//! crates/test-support). Limits stay exact across processes, each limit key
//! lives in one hash slot (so multi-key scripts work) while different keys
//! spread over the masters, and a master that dies is ridden out as
//! `allow_degradation` says, with recovery once it is back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_test_support::redis_cluster::{ClusterOptions, RedisCluster};
use portcullis_test_support::{request, Gateway, RecordingUpstream, Response};

async fn get(url: &str, headers: &[(&str, &str)]) -> Response {
    request("GET", url, headers, "").await.expect("request")
}

/// The Redis settings of a limit plugin pointing at `cluster`, as YAML
/// flow-mapping entries.
fn cluster_settings(cluster: &RedisCluster, timeout_ms: u64) -> String {
    let nodes: Vec<String> = cluster
        .addresses()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    format!(
        "policy: redis-cluster, redis_cluster_name: test-cluster, redis_cluster_nodes: [{}], redis_timeout: {timeout_ms}",
        nodes.join(", ")
    )
}

fn route(id: &str, uri: &str, up: &RecordingUpstream, plugins: &str) -> String {
    format!(
        "  - id: {id}\n    uri: {uri}\n    upstream: {{ nodes: {{ \"{}\": 1 }} }}\n    plugins:\n{plugins}",
        up.addr
    )
}

#[derive(Default)]
struct Tally {
    admitted: AtomicUsize,
    rejected: AtomicUsize,
    other: AtomicUsize,
}

impl Tally {
    fn get(&self) -> (usize, usize, usize) {
        (
            self.admitted.load(Ordering::Relaxed),
            self.rejected.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

/// `workers` concurrent clients, round-robin over `urls`, until `more`
/// says stop; 200 counts as admitted, 429 as rejected.
async fn hammer(
    urls: Vec<String>,
    workers: usize,
    more: impl Fn(usize) -> bool + Send + Sync + 'static,
) -> Tally {
    let urls = Arc::new(urls);
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let more = Arc::new(more);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (urls, tally, next, more) =
                (urls.clone(), tally.clone(), next.clone(), more.clone());
            tokio::spawn(async move {
                while more(next.fetch_add(1, Ordering::Relaxed)) {
                    let r = get(&urls[w % urls.len()], &[]).await;
                    let counter = match r.status {
                        200 => &tally.admitted,
                        429 => &tally.rejected,
                        _ => &tally.other,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::into_inner(tally).expect("workers are done")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_count_on_redis_cluster_is_exact_across_two_gateways() {
    let cluster = RedisCluster::start(3);
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-count: {{ count: 1000, time_window: 600, key_type: constant, key: all, rejected_code: 429, {} }}\n",
        cluster_settings(&cluster, 2000)
    );
    let config = format!("routes:\n{}", route("r1", "/*", &up, &plugins));
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    let total = 10_000;
    let started = Instant::now();
    let tally = hammer(vec![a.url("/x"), b.url("/x")], 32, move |n| n < total).await;
    let (admitted, rejected, other) = tally.get();
    eprintln!(
        "two gateways on a 3-master cluster: {admitted} admitted, {rejected} rejected, {other} other, of {total} in {:?}",
        started.elapsed()
    );
    assert_eq!(other, 0, "{}", a.stderr());
    assert_eq!(admitted + rejected, total);
    assert_eq!(admitted, 1000);
    assert_eq!(up.count(), 1000);
}

/// Twelve consumers on two routes (fixed and sliding windows): each
/// consumer has its own quota; each consumer's counters sit in one hash
/// slot (the sliding window's two counters included), and the consumers'
/// slots spread over the masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_counted_apart_on_slots_spread_over_the_masters() {
    let cluster = RedisCluster::start(3);
    let up = RecordingUpstream::start().await;
    let consumers: Vec<String> = (0..12).map(|i| format!("user{i:02}")).collect();
    let mut config = String::from("consumers:\n");
    for c in &consumers {
        config.push_str(&format!(
            "  - username: {c}\n    plugins: {{ key-auth: {{ key: key-{c} }} }}\n"
        ));
    }
    config.push_str("routes:\n");
    let redis = cluster_settings(&cluster, 2000);
    for window in ["fixed", "sliding"] {
        let plugins = format!(
            "      key-auth: {{}}\n      limit-count: {{ count: 3, time_window: 600, window_type: {window}, key: consumer_name, rejected_code: 429, {redis} }}\n"
        );
        config.push_str(&route(window, &format!("/{window}"), &up, &plugins));
    }
    let gw = Gateway::start(&config);
    for window in ["fixed", "sliding"] {
        for c in &consumers {
            let key = format!("key-{c}");
            let statuses: Vec<u16> = {
                let mut s = Vec::new();
                for _ in 0..4 {
                    s.push(
                        get(&gw.url(&format!("/{window}")), &[("apikey", &key)])
                            .await
                            .status,
                    );
                }
                s
            };
            assert_eq!(
                statuses,
                [200, 200, 200, 429],
                "{window} {c}: {}",
                gw.stderr()
            );
        }
    }

    // Where the counters are: every node's keys, by consumer.
    let mut nodes_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut slots_of: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    let mut total = 0;
    for node in 0..cluster.len() {
        for key in cluster.keys(node, "portcullis:*") {
            total += 1;
            let slot = cluster.keyslot(&key);
            // The cluster keeps a key on the master serving its slot.
            assert_eq!(cluster.master_of_slot(slot), node, "{key}");
            let window = if key.contains("routes/sliding") {
                "sliding"
            } else {
                "fixed"
            };
            // consumer_name is a variable: the limit key is `var:<name>`.
            let consumer = consumers
                .iter()
                .find(|c| key.contains(&format!(":var:{c}}}")))
                .unwrap_or_else(|| panic!("a key of no consumer: {key}"));
            // A hash tag makes the slot a function of the limit key alone:
            // what follows the tag (the sliding window's index) does not
            // move it.
            let (tagged, _) = key.split_once('}').expect("a hash tag");
            let tag = tagged.split_once('{').expect("a hash tag").1;
            assert_eq!(cluster.keyslot(tag), slot, "{key}");
            nodes_of.entry(consumer.clone()).or_default().insert(node);
            slots_of
                .entry(format!("{window} {consumer}"))
                .or_default()
                .insert(slot);
        }
    }
    eprintln!("{total} keys; nodes by consumer: {nodes_of:?}");
    // Fixed: one key per consumer; sliding: one per consumer (the current
    // window; the previous one was never written).
    assert_eq!(total, 2 * consumers.len());
    for (who, slots) in &slots_of {
        assert_eq!(slots.len(), 1, "{who}: {slots:?}");
    }
    let fixed_slots: BTreeSet<u16> = slots_of
        .iter()
        .filter(|(k, _)| k.starts_with("fixed"))
        .flat_map(|(_, s)| s.iter().copied())
        .collect();
    assert!(fixed_slots.len() > consumers.len() / 2, "{fixed_slots:?}");
    let masters_used: BTreeSet<usize> = nodes_of.values().flatten().copied().collect();
    assert!(masters_used.len() >= 2, "{nodes_of:?}");
}

/// Two gateways hammer one limit-req bucket (rate 10/s, no burst) for
/// three seconds: they admit what the rate allows, together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_req_on_redis_cluster_admits_at_the_configured_rate() {
    let cluster = RedisCluster::start(3);
    let up = RecordingUpstream::start().await;
    let rate = 10.0;
    let plugins = format!(
        "      limit-req: {{ rate: {rate}, burst: 0, nodelay: true, key_type: constant, key: all, rejected_code: 429, {} }}\n",
        cluster_settings(&cluster, 2000)
    );
    let config = format!("routes:\n{}", route("r1", "/*", &up, &plugins));
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    let run = Duration::from_secs(3);
    let started = Instant::now();
    let tally = hammer(vec![a.url("/x"), b.url("/x")], 8, move |_| {
        started.elapsed() < run
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let (admitted, rejected, other) = tally.get();
    // The first request passes at once, then one every 1/rate seconds.
    let expected = 1.0 + rate * elapsed;
    eprintln!(
        "limit-req rate {rate}/s on a 3-master cluster: {admitted} admitted, {rejected} rejected, {other} other in {elapsed:.2} s (expected {expected:.1})"
    );
    assert_eq!(other, 0, "{}", a.stderr());
    assert!(
        rejected > admitted,
        "the clients asked for more than the rate"
    );
    // Never above the rate; a little below it, since a request that
    // arrives after the bucket has drained is admitted late by however
    // long the clients took to ask again.
    assert!(
        admitted as f64 <= expected + 1.0,
        "{admitted} admitted, expected {expected:.1}"
    );
    assert!(
        admitted as f64 >= expected * 0.85,
        "{admitted} admitted, expected {expected:.1}"
    );
}

/// Poll until `check` holds, for at most `within`.
async fn wait_until(
    url: &str,
    headers: &[(&str, &str)],
    within: Duration,
    mut check: impl FnMut(&Response) -> bool,
) -> Response {
    let deadline = Instant::now() + within;
    loop {
        let r = get(url, headers).await;
        if check(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no matching answer within {within:?}; last: {} {:?} {}",
            r.status,
            r.headers,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn remaining(r: &Response) -> Option<u64> {
    r.header("x-ratelimit-remaining")
        .map(|v| v.parse().expect("a number"))
}

/// The node holding the counter of each `user`, found by looking.
fn nodes_of_users(cluster: &RedisCluster, users: &[String]) -> BTreeMap<String, usize> {
    let mut found = BTreeMap::new();
    for node in 0..cluster.len() {
        for key in cluster.keys(node, "portcullis:*") {
            let limit_key = key.trim_end_matches('}');
            if let Some(u) = users
                .iter()
                .find(|u| limit_key.ends_with(&format!("var:{u}")))
            {
                found.insert(u.clone(), node);
            }
        }
    }
    assert_eq!(found.len(), users.len(), "{found:?}");
    found
}

/// A master is killed in the middle of a run. Keys on the other masters are
/// still counted until the cluster declares the master failed (node timeout,
/// 2 s here); from then on the cluster refuses every key. Either way the
/// gateway answers as `allow_degradation` says, and counts again once the
/// master is back — without a restart.
async fn master_outage(allow_degradation: bool) {
    let mut cluster = RedisCluster::start(3);
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-count: {{ count: 1000, time_window: 600, key: http_x_user, {}, allow_degradation: {allow_degradation} }}\n",
        cluster_settings(&cluster, 300)
    );
    let gw = Gateway::start(&format!("routes:\n{}", route("r1", "/*", &up, &plugins)));
    let url = gw.url("/x");
    let users: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    for u in &users {
        let r = get(&url, &[("x-user", u)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(remaining(&r), Some(999));
    }
    let nodes = nodes_of_users(&cluster, &users);
    let victim_user = &users[0];
    let victim = nodes[victim_user];
    let survivor = users
        .iter()
        .find(|u| nodes[*u] != victim)
        .expect("users on more than one master");

    cluster.kill(victim);
    let killed_at = Instant::now();
    // The survivor's master still answers: counted as usual.
    let r = get(&url, &[("x-user", survivor)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r), Some(998), "{}", gw.stderr());

    let check_degraded = |r: &Response| {
        if allow_degradation {
            // Passed, and nobody counted it: no quota to show.
            r.status == 200 && remaining(r).is_none()
        } else {
            r.status == 503 && r.json() == serde_json::json!({"error_msg": "failed to limit count"})
        }
    };
    let started = Instant::now();
    for _ in 0..10 {
        let r = get(&url, &[("x-user", victim_user)]).await;
        assert!(
            check_degraded(&r),
            "{} {:?} {}",
            r.status,
            r.headers,
            r.text()
        );
    }
    // Each answer came within about redis_timeout (300 ms).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Once the cluster marks the master failed, it refuses all keys
    // (cluster-require-full-coverage): the survivor degrades too.
    wait_until(
        &url,
        &[("x-user", survivor)],
        Duration::from_secs(15),
        check_degraded,
    )
    .await;
    eprintln!(
        "master {victim} killed: the survivor's key degraded after {:?}",
        killed_at.elapsed()
    );

    let log = gw.stderr();
    assert!(log.contains("redis unavailable for rate limiting"), "{log}");
    assert!(log.contains("redis-cluster test-cluster"), "{log}");
    let mode = if allow_degradation {
        "failing open"
    } else {
        "failing closed"
    };
    assert!(log.contains(mode), "{log}");

    cluster.restart(victim);
    let restarted_at = Instant::now();
    // Back without restarting the gateway. The restarted master lost its
    // data (no persistence): the victim's window starts afresh; the
    // survivor's master kept its count (998 and whatever the polls above
    // counted before the cluster went down).
    let r = wait_until(
        &url,
        &[("x-user", victim_user)],
        Duration::from_secs(20),
        |r| r.status == 200 && remaining(r).is_some(),
    )
    .await;
    assert_eq!(remaining(&r), Some(999));
    eprintln!(
        "master {victim} restarted: counted again {:?} after the cluster was whole",
        restarted_at.elapsed()
    );
    let r = wait_until(
        &url,
        &[("x-user", survivor)],
        Duration::from_secs(20),
        |r| r.status == 200 && remaining(r).is_some(),
    )
    .await;
    let left = remaining(&r).unwrap();
    assert!(left < 998, "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_open_with_allow_degradation_and_recovers() {
    master_outage(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_fails_closed_without_allow_degradation_and_recovers() {
    master_outage(false).await;
}

/// With a replica per master, a dead master is replaced without anyone
/// restarting anything: refused (fail closed) while the cluster notices and
/// promotes the replica, then counted again, the count carried over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_a_dead_master_and_the_count_goes_on() {
    let mut cluster = RedisCluster::start_with(ClusterOptions {
        masters: 3,
        replicas: 1,
        password: None,
    });
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-count: {{ count: 1000, time_window: 600, key: http_x_user, {} }}\n",
        cluster_settings(&cluster, 300)
    );
    let gw = Gateway::start(&format!("routes:\n{}", route("r1", "/*", &up, &plugins)));
    let url = gw.url("/x");
    let user = [("x-user", "u0")];
    for left in (995..1000).rev() {
        let r = get(&url, &user).await;
        assert_eq!(remaining(&r), Some(left), "{}", gw.stderr());
    }
    let key = (0..cluster.len())
        .flat_map(|n| cluster.keys(n, "portcullis:*"))
        .next()
        .expect("the counter");
    let master = cluster.master_of_slot(cluster.keyslot(&key));
    cluster.wait_replicated();

    cluster.kill(master);
    let killed_at = Instant::now();
    let mut refused = 0;
    let r = wait_until(&url, &user, Duration::from_secs(30), |r| {
        if r.status == 503 {
            refused += 1;
        }
        r.status == 200
    })
    .await;
    let promoted = cluster.master_of_slot(cluster.keyslot(&key));
    eprintln!(
        "master {master} killed: {refused} polls refused, counted again after {:?} on node {promoted}",
        killed_at.elapsed()
    );
    assert_ne!(promoted, master);
    assert!(refused > 0, "the failover takes the node timeout at least");
    // The replica had the count: the window goes on.
    assert_eq!(remaining(&r), Some(994));
}

/// `redis_password` authenticates to every node; a wrong one fails (closed
/// here) like an outage, and neither password reaches a log or a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_cluster_needs_the_right_redis_password() {
    let cluster = RedisCluster::start_with(ClusterOptions {
        masters: 3,
        replicas: 0,
        password: Some("cluster-secret-pw".into()),
    });
    let up = RecordingUpstream::start().await;
    let redis = cluster_settings(&cluster, 1000);
    let mut config = String::from("routes:\n");
    for (id, password) in [("right", "cluster-secret-pw"), ("wrong", "not-the-pw")] {
        let plugins = format!(
            "      limit-count: {{ count: 10, time_window: 60, {redis}, redis_password: {password} }}\n"
        );
        config.push_str(&route(id, &format!("/{id}"), &up, &plugins));
    }
    let gw = Gateway::start(&config);
    let r = get(&gw.url("/right"), &[]).await;
    assert_eq!(r.status, 200, "{}", gw.stderr());
    assert_eq!(remaining(&r), Some(9));
    let r = get(&gw.url("/wrong"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json(),
        serde_json::json!({"error_msg": "failed to limit count"})
    );
    let log = gw.stderr();
    assert!(log.contains("redis unavailable for rate limiting"), "{log}");
    for secret in ["cluster-secret-pw", "not-the-pw"] {
        assert!(!log.contains(secret), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_at_start_does_not_refuse_the_config() {
    let port = portcullis_test_support::free_port();
    let up = RecordingUpstream::start().await;
    let plugins = format!(
        "      limit-count: {{ count: 10, time_window: 60, policy: redis-cluster, redis_cluster_name: gone, redis_cluster_nodes: [\"127.0.0.1:{port}\"], redis_password: very-secret-pw, redis_timeout: 200 }}\n",
    );
    let gw = Gateway::start(&format!("routes:\n{}", route("r1", "/*", &up, &plugins)));
    let started = Instant::now();
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!gw.stderr().contains("very-secret-pw"));
    assert!(!r.text().contains("very-secret-pw"));
}
