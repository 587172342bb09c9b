//! Cluster mode, black box: real `portcullis` processes sharing a real
//! `etcd` started on loopback ports. A write through any node's Admin API is
//! served by every node (convergence is measured); an etcd outage under load
//! fails no request, flips /readyz on staleness and back; a compacted watch
//! revision means a clean full reload; a node started while etcd is away
//! serves the config it persisted.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_etcd::etcd_client;
use portcullis_test_support::etcd::EtcdServer;
use portcullis_test_support::gateway::default_gateway_section;
use portcullis_test_support::{request, wait_for, Gateway, RecordingUpstream, Response};
use serde_json::json;

const KEY: (&str, &str) = ("x-api-key", "test-admin-key");

fn node(etcd_endpoint: &str, prefix: &str, max_staleness: f64) -> Gateway {
    let config = format!(
        "{}  config_source: etcd\n  etcd:\n    host: [\"{etcd_endpoint}\"]\n    prefix: {prefix}\n    timeout: 5\n    max_staleness: {max_staleness}\n",
        default_gateway_section()
    );
    Gateway::start(&config)
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: serde_json::Value) -> Response {
    gw.admin_as(KEY, method, path, body).await
}

async fn status(url: &str) -> u16 {
    request("GET", url, &[], "")
        .await
        .map(|r| r.status)
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn put_upstream(gw: &Gateway, up: &RecordingUpstream) {
    let r = admin(
        gw,
        "PUT",
        "/apisix/admin/upstreams/u1",
        json!({"type": "roundrobin", "nodes": {up.addr.to_string(): 1}}),
    )
    .await;
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_any_node_is_served_by_all_three() {
    let etcd = EtcdServer::start();
    let up = RecordingUpstream::start().await;
    let nodes = [
        node(&etcd.endpoint(), "/apisix", 30.0),
        node(&etcd.endpoint(), "/apisix", 30.0),
        node(&etcd.endpoint(), "/apisix", 30.0),
    ];
    put_upstream(&nodes[0], &up).await;

    // APISIX semantics: 201 then 200, createdIndex kept, modifiedIndex moves,
    // and every node answers reads with the same indexes.
    let first = admin(
        &nodes[1],
        "PUT",
        "/apisix/admin/routes/r1",
        json!({"uri": "/r1", "upstream_id": "u1"}),
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text());
    let second = admin(
        &nodes[2],
        "PUT",
        "/apisix/admin/routes/r1",
        json!({"uri": "/r1", "upstream_id": "u1", "name": "again"}),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.text());
    let (a, b) = (first.json(), second.json());
    assert_eq!(a["key"], "/apisix/routes/r1");
    assert_eq!(a["createdIndex"], b["createdIndex"]);
    assert!(b["modifiedIndex"].as_u64() > a["modifiedIndex"].as_u64());
    let read = admin(&nodes[0], "GET", "/apisix/admin/routes/r1", json!(null)).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["modifiedIndex"], b["modifiedIndex"]);
    assert_eq!(read.json()["value"]["name"], "again");

    // POST: a 20-digit id from etcd's revision.
    let posted = admin(
        &nodes[0],
        "POST",
        "/apisix/admin/routes",
        json!({"uri": "/posted", "upstream_id": "u1"}),
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.text());
    let id = posted.json()["value"]["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 20);
    assert!(id.chars().all(|c| c.is_ascii_digit()));

    // Validation before writing, and references checked on delete.
    let bad = admin(
        &nodes[1],
        "PUT",
        "/apisix/admin/routes/bad",
        json!({"uri": "/bad", "upstream_id": "missing"}),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let in_use = admin(
        &nodes[2],
        "DELETE",
        "/apisix/admin/upstreams/u1",
        json!(null),
    )
    .await;
    assert_eq!(in_use.status, 400, "{}", in_use.text());
    assert!(
        in_use.text().contains("is still using it"),
        "{}",
        in_use.text()
    );

    // Convergence: 100 writes, each through a different node, each timed
    // from its 2xx until all three nodes serve it.
    let mut samples = Vec::new();
    for i in 0..100 {
        let writer = &nodes[i % 3];
        let r = admin(
            writer,
            "PUT",
            &format!("/apisix/admin/routes/c{i}"),
            json!({"uri": format!("/c/{i}"), "upstream_id": "u1"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let acked = Instant::now();
        for n in &nodes {
            let url = n.url(&format!("/c/{i}"));
            let served =
                wait_for(async || status(&url).await == 200, Duration::from_secs(10)).await;
            assert!(
                served.is_some(),
                "write {i} was not served by every node within 10 s"
            );
        }
        samples.push(acked.elapsed());
    }
    samples.sort();
    let (median, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    eprintln!(
        "etcd convergence over 100 writes (3 nodes, time from the 2xx until all three serve it): median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        median.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        samples.last().unwrap().as_secs_f64() * 1000.0
    );
    assert!(median < Duration::from_secs(1), "median {median:?}");
    assert!(p99 < Duration::from_secs(3), "p99 {p99:?}");

    // ttl through a lease: gone from every node by itself.
    let r = admin(
        &nodes[0],
        "PUT",
        "/apisix/admin/routes/short?ttl=2",
        json!({"uri": "/short", "upstream_id": "u1"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for n in &nodes {
        let url = n.url("/short");
        assert!(
            wait_for(async || status(&url).await == 200, Duration::from_secs(5))
                .await
                .is_some()
        );
    }
    for n in &nodes {
        let url = n.url("/short");
        assert!(
            wait_for(async || status(&url).await == 404, Duration::from_secs(15))
                .await
                .is_some(),
            "the ttl route did not expire"
        );
    }

    // Delete through one node: gone everywhere.
    let del = admin(&nodes[1], "DELETE", "/apisix/admin/routes/c0", json!(null)).await;
    assert_eq!(del.status, 200, "{}", del.text());
    assert_eq!(del.json()["key"], "/apisix/routes/c0");
    for n in &nodes {
        let url = n.url("/c/0");
        assert!(
            wait_for(async || status(&url).await == 404, Duration::from_secs(5))
                .await
                .is_some()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_under_load_fails_no_request() {
    let mut etcd = EtcdServer::start();
    let up = RecordingUpstream::start().await;
    let nodes = [
        node(&etcd.endpoint(), "/apisix", 2.0),
        node(&etcd.endpoint(), "/apisix", 2.0),
        node(&etcd.endpoint(), "/apisix", 2.0),
    ];
    put_upstream(&nodes[0], &up).await;
    let r = admin(
        &nodes[0],
        "PUT",
        "/apisix/admin/routes/steady",
        json!({"uri": "/steady", "upstream_id": "u1"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for n in &nodes {
        let url = n.url("/steady");
        assert!(
            wait_for(async || status(&url).await == 200, Duration::from_secs(10))
                .await
                .is_some()
        );
        assert_eq!(status(&n.metrics_url("/readyz")).await, 200);
    }

    // Load on the unchanged route, through all three nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let urls: Vec<String> = nodes.iter().map(|n| n.url("/steady")).collect();
    let load: Vec<_> = (0..6)
        .map(|w| {
            let (stop, ok, failed, failures) =
                (stop.clone(), ok.clone(), failed.clone(), failures.clone());
            let url = urls[w % 3].clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match request("GET", &url, &[], "").await {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{:?}", other.map(|r| r.status)));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.stop();
    let stopped = Instant::now();
    // Writes are refused while etcd is away, with a clear answer.
    let refused = admin(
        &nodes[1],
        "PUT",
        "/apisix/admin/routes/during",
        json!({"uri": "/during", "upstream_id": "u1"}),
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    for n in &nodes {
        let url = n.metrics_url("/readyz");
        let flipped = wait_for(async || status(&url).await == 503, Duration::from_secs(20)).await;
        assert!(flipped.is_some(), "/readyz did not fail on staleness");
    }
    let readyz = request("GET", &nodes[0].metrics_url("/readyz"), &[], "")
        .await
        .unwrap()
        .json();
    assert_eq!(readyz["stale"], true, "{readyz}");
    assert!(
        readyz["config_source_age_seconds"].as_f64().unwrap() > 2.0,
        "{readyz}"
    );
    let metrics = request("GET", &nodes[0].metrics_url("/metrics"), &[], "")
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("portcullis_config_source_age_seconds"),
        "{metrics}"
    );
    eprintln!(
        "all three nodes not ready {:?} after etcd stopped (max_staleness 2 s)",
        stopped.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    etcd.restart();
    let back = Instant::now();
    for n in &nodes {
        let url = n.metrics_url("/readyz");
        let ready = wait_for(async || status(&url).await == 200, Duration::from_secs(30)).await;
        assert!(
            ready.is_some(),
            "/readyz did not recover after etcd returned"
        );
    }
    let catch_up = back.elapsed();
    eprintln!(
        "catch-up after an etcd outage of {:.1} s: all three nodes ready again {:.0} ms after etcd answered",
        (back - stopped).as_secs_f64(),
        catch_up.as_secs_f64() * 1000.0
    );

    // A write after the return converges everywhere.
    let r = admin(
        &nodes[2],
        "PUT",
        "/apisix/admin/routes/after",
        json!({"uri": "/after", "upstream_id": "u1"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    for n in &nodes {
        let url = n.url("/after");
        assert!(
            wait_for(async || status(&url).await == 200, Duration::from_secs(10))
                .await
                .is_some()
        );
    }

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("load during the outage: {ok} served, {failed} failed");
    assert_eq!(failed, 0, "{:?}", failures.lock().unwrap());
    assert!(ok > 500, "too little load ran: {ok}");
}

/// A TCP relay the test can cut, to take etcd away from one node only.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (c, k) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                k.lock().unwrap().push(task);
            }
        });
        Relay { port, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_revision_means_a_clean_full_reload() {
    let etcd = EtcdServer::start();
    let up = RecordingUpstream::start().await;
    let relay = Relay::start(etcd.client_port).await;
    let gw = node(&format!("http://127.0.0.1:{}", relay.port), "/apisix", 30.0);
    put_upstream(&gw, &up).await;
    for (id, uri) in [("one", "/one"), ("two", "/two")] {
        let r = admin(
            &gw,
            "PUT",
            &format!("/apisix/admin/routes/{id}"),
            json!({"uri": uri, "upstream_id": "u1"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    assert_eq!(status(&gw.url("/one")).await, 200);

    // The node loses etcd; meanwhile others change the config, and the
    // history the node would resume from is compacted away.
    relay.cut();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let route =
        |id: &str, uri: &str| json!({"id": id, "uri": uri, "upstream_id": "u1"}).to_string();
    client.delete("/apisix/routes/one", None).await.unwrap();
    client
        .put("/apisix/routes/two", route("two", "/two-b"), None)
        .await
        .unwrap();
    client
        .put("/apisix/routes/three", route("three", "/three"), None)
        .await
        .unwrap();
    for i in 0..20 {
        client
            .put(
                format!("/apisix/routes/n{i}"),
                route(&format!("n{i}"), &format!("/n/{i}")),
                None,
            )
            .await
            .unwrap();
    }
    let rev = etcd.revision();
    etcd.compact(rev);
    assert_eq!(
        status(&gw.url("/one")).await,
        200,
        "still the last good config"
    );

    relay.restore();
    let url = gw.url("/three");
    assert!(
        wait_for(async || status(&url).await == 200, Duration::from_secs(30))
            .await
            .is_some(),
        "the node did not reload after etcd came back; log:\n{}",
        gw.stderr()
    );
    // The whole new config, not part of it.
    assert_eq!(status(&gw.url("/one")).await, 404);
    assert_eq!(status(&gw.url("/two")).await, 404);
    assert_eq!(status(&gw.url("/two-b")).await, 200);
    for i in 0..20 {
        assert_eq!(status(&gw.url(&format!("/n/{i}"))).await, 200);
    }
    assert!(
        gw.stderr().contains("compacted"),
        "the log does not say why it reloaded:\n{}",
        gw.stderr()
    );
    let list = admin(&gw, "GET", "/apisix/admin/routes", json!(null)).await;
    assert_eq!(list.json()["total"], 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_etcd_is_down_serves_its_persisted_config() {
    let mut etcd = EtcdServer::start();
    let up = RecordingUpstream::start().await;
    let mut gw = node(&etcd.endpoint(), "/apisix", 30.0);
    put_upstream(&gw, &up).await;
    let r = admin(
        &gw,
        "PUT",
        "/apisix/admin/routes/kept",
        json!({"uri": "/kept", "upstream_id": "u1"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let cache = gw.dir.path().join("data").join("etcd-cache.json");
    let persisted = wait_for(
        async || std::fs::read_to_string(&cache).is_ok_and(|t| t.contains("/apisix/routes/kept")),
        Duration::from_secs(10),
    )
    .await;
    assert!(persisted.is_some(), "the config was not persisted locally");

    etcd.stop();
    gw.restart(&[]);
    let url = gw.url("/kept");
    assert!(
        wait_for(async || status(&url).await == 200, Duration::from_secs(10))
            .await
            .is_some(),
        "the persisted config is not served; log:\n{}",
        gw.stderr()
    );
    assert!(
        gw.stderr().contains("persisted locally"),
        "the node does not say it serves its local copy:\n{}",
        gw.stderr()
    );

    // etcd returns: the node catches up without a restart, and takes writes.
    etcd.restart();
    let ready = gw.metrics_url("/readyz");
    assert!(wait_for(
        async || status(&ready).await == 200,
        Duration::from_secs(30)
    )
    .await
    .is_some());
    let r = admin(
        &gw,
        "PUT",
        "/apisix/admin/routes/new",
        json!({"uri": "/new", "upstream_id": "u1"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Right after an outage the writing node may still be re-syncing its
    // watch, so the write is served within the cluster bound (1 s) rather
    // than before the answer.
    let new = gw.url("/new");
    assert!(
        wait_for(async || status(&new).await == 200, Duration::from_secs(1))
            .await
            .is_some(),
        "the write after etcd returned was not served within 1 s; log:\n{}",
        gw.stderr()
    );
    assert_eq!(status(&gw.url("/kept")).await, 200, "log:\n{}", gw.stderr());
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The figure for docs/etcd.md: a node's resident memory with 10,000
/// routes loaded from etcd, against the same node with none. Slow in a
/// debug build: `cargo test -p portcullis --test gateway etcd_cluster:: -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn memory_per_10000_routes() {
    let etcd = EtcdServer::start();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let upstream = json!({"id": "u1", "nodes": {"127.0.0.1:1980": 1}}).to_string();
    client
        .put("/big/upstreams/u1", upstream, None)
        .await
        .unwrap();
    for batch in 0..100 {
        let ops: Vec<etcd_client::TxnOp> = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                let route = json!({
                    "id": format!("r{n}"),
                    "uri": format!("/api/v1/resource{n}/*"),
                    "methods": ["GET", "POST"],
                    "upstream_id": "u1",
                    "plugins": {"proxy-rewrite": {"headers": {"set": {"x-route": format!("r{n}")}}}}
                });
                etcd_client::TxnOp::put(format!("/big/routes/r{n}"), route.to_string(), None)
            })
            .collect();
        client
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .unwrap();
    }
    let empty = node(&etcd.endpoint(), "/empty", 30.0);
    let started = Instant::now();
    let big = node(&etcd.endpoint(), "/big", 30.0);
    let load = started.elapsed();
    assert_eq!(status(&big.url("/api/v1/resource9999/x")).await, 502);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (e, b) = (rss_kib(empty.pid()), rss_kib(big.pid()));
    eprintln!(
        "memory: {e} KiB with no routes, {b} KiB with 10,000 routes from etcd: {} KiB per 10,000 routes (start with the full load: {:.2} s)",
        b.saturating_sub(e),
        load.as_secs_f64()
    );
}
