//! Live config from a file: valid edits swap in whole, invalid ones are
//! refused and the last good config keeps serving; SIGHUP reloads; SIGTERM
//! drains.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_test_support::{request, wait_for, Gateway, RecordingUpstream};

fn config(up: &RecordingUpstream, uri: &str, tag: &str) -> String {
    format!(
        "routes:\n  - id: r1\n    uri: {uri}\n    upstream: {{ nodes: {{ \"{}\": 1 }} }}\n    plugins:\n      proxy-rewrite: {{ headers: {{ set: {{ x-version: \"{tag}\" }} }} }}\n",
        up.addr
    )
}

fn full(gw: &Gateway, resources: &str) -> String {
    // Keep the gateway section the test harness generated.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let gateway = text.split("\nroutes:").next().unwrap();
    format!("{gateway}\n{resources}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_edit_is_served_within_a_second() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(&up, "/old/*", "1"));
    assert_eq!(
        request("GET", &gw.url("/new/x"), &[], "")
            .await
            .unwrap()
            .status,
        404
    );
    gw.write_config(&full(&gw, &config(&up, "/new/*", "2")));
    let url = gw.url("/new/x");
    assert!(
        wait_for(
            async || request("GET", &url, &[], "").await.unwrap().status == 200,
            Duration::from_secs(1)
        )
        .await
        .is_some(),
        "the edit was not served within 1 s"
    );
    assert_eq!(
        request("GET", &gw.url("/old/x"), &[], "")
            .await
            .unwrap()
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_edit_is_refused_and_the_last_good_config_keeps_serving() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(&up, "/api/*", "1"));
    let bad = format!(
        "routes:\n  - id: r1\n    uri: /api/*\n    upstream: {{ nodes: {{ \"{}\": 1 }} }}\n  - id: r2\n    uri: /b/*\n    upstream:\n      nodes: {{ \"not-an-address:x\": 1 }}\n",
        up.addr
    );
    gw.write_config(&full(&gw, &bad));
    let readyz = gw.metrics_url("/readyz");
    assert!(
        wait_for(
            async || request("GET", &readyz, &[], "").await.unwrap().status == 503,
            Duration::from_secs(10)
        )
        .await
        .is_some(),
        "/readyz did not report the refusal"
    );
    let ready = request("GET", &readyz, &[], "").await.unwrap().json();
    let err = ready["last_reload_error"][0].as_str().unwrap();
    assert!(
        err.starts_with("routes[1].upstream.nodes.not-an-address:x"),
        "{err}"
    );
    assert_eq!(
        request("GET", &gw.url("/api/x"), &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    assert!(gw.stderr().contains("config file refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(&up, "/api/*", "0"));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::new();
    for _ in 0..4 {
        let (stop, failures, served, url) = (
            stop.clone(),
            failures.clone(),
            served.clone(),
            gw.url("/api/x"),
        );
        loaders.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match request("GET", &url, &[], "").await {
                    Ok(r) if r.status == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for version in 1..=20 {
        gw.write_config(&full(&gw, &config(&up, "/api/*", &version.to_string())));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.await.unwrap();
    }
    let ready = request("GET", &gw.metrics_url("/readyz"), &[], "")
        .await
        .unwrap()
        .json();
    assert!(ready["reloads_applied"].as_u64().unwrap() >= 20, "{ready}");
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 100);
    let last = up.seen().last().unwrap().headers["x-version"].clone();
    assert_eq!(last, "20");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(&up, "/a/*", "1"));
    // Write without the watcher noticing first is not guaranteed; SIGHUP must
    // apply it at once either way.
    gw.write_config(&full(&gw, &config(&up, "/b/*", "2")));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let url = gw.url("/b/x");
    assert!(wait_for(
        async || request("GET", &url, &[], "").await.unwrap().status == 200,
        Duration::from_secs(1)
    )
    .await
    .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let up = RecordingUpstream::start().await;
    let mut gw = Gateway::start(&config(&up, "/*", "1"));
    let url = gw.url("/sleep/500");
    let in_flight = tokio::spawn(async move { request("GET", &url, &[], "").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = gw.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let r = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(r.status, 200);
    let started = Instant::now();
    let code = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit status {code:?}");
    // New connections are refused once draining started.
    assert!(std::net::TcpStream::connect(("127.0.0.1", gw.http_port)).is_err());
}
