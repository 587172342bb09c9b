//! Acknowledged Admin API writes survive `kill -9`: writers PUT upstreams in
//! a loop, the process is killed (SIGKILL) while they run, and after a
//! restart on the same data directory every write that was answered 2xx is
//! there, in the change history too, and the data plane serves a route
//! created before the kill. Three kill/restart cycles on one data directory,
//! each killing at a different moment.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_test_support::{request, Gateway, RecordingUpstream};

const ADMIN: (&str, &str) = ("X-API-KEY", "test-admin-key");

/// Concurrent writers: with several requests in flight, the kill lands in
/// the middle of at least one write (parsed, being checked, being committed
/// or being answered) rather than between two.
const WRITERS: usize = 3;

async fn admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: &str,
) -> portcullis_test_support::Response {
    request(method, &gw.admin_url(path), &[ADMIN], body.to_string())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The Admin API listener is bound just after the data plane's; wait for it.
async fn wait_admin(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = gw.admin_url("/apisix/admin/routes");
    while Instant::now() < deadline {
        if let Ok(r) = request("GET", &url, &[ADMIN], "").await {
            if r.status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the Admin API did not answer within 20 s; stderr:\n{}",
        gw.stderr()
    );
}

/// Every id whose PUT was answered 2xx, in the order the answers came.
type Acked = Arc<Mutex<Vec<String>>>;

/// PUT `/apisix/admin/upstreams/c{cycle}-w{writer}-{i}` for i = 0, 1, ...
/// until a request fails (the process is gone); returns how many were sent.
async fn write_loop(
    admin_base: String,
    cycle: usize,
    writer: usize,
    upstream: String,
    acked: Acked,
) -> usize {
    let mut i = 0;
    loop {
        let id = format!("c{cycle}-w{writer}-{i}");
        let url = format!("{admin_base}/apisix/admin/upstreams/{id}");
        let body = format!(
            r#"{{"nodes":{{"{upstream}":1}},"type":"roundrobin","desc":"write {i} of writer {writer}"}}"#
        );
        match request("PUT", &url, &[ADMIN], body).await {
            Ok(r) if r.status == 200 || r.status == 201 => acked.lock().unwrap().push(id),
            Ok(r) => panic!("PUT {id} answered {} {}", r.status, r.text()),
            // Connection refused or reset: the process was killed.
            Err(_) => return i + 1,
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_during_a_write_loop() {
    let up = RecordingUpstream::start().await;
    let mut gw = Gateway::start("");
    wait_admin(&gw).await;

    // Created before any kill: must be served after every restart.
    let r = admin(
        &gw,
        "PUT",
        "/apisix/admin/upstreams/before",
        &format!(r#"{{"nodes":{{"{}":1}},"type":"roundrobin"}}"#, up.addr),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin(
        &gw,
        "PUT",
        "/apisix/admin/routes/before",
        r#"{"uri":"/before/*","upstream_id":"before"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        request("GET", &gw.url("/before/x"), &[], "")
            .await
            .unwrap()
            .status,
        200
    );

    let mut all_acked: Vec<String> = Vec::new();
    // Different moments: early (first writes, WAL fresh), mid, later (WAL
    // holding hundreds of frames; a checkpoint may be under way).
    let kill_after = [
        Duration::from_millis(120),
        Duration::from_millis(450),
        Duration::from_millis(1100),
    ];
    for (cycle, delay) in kill_after.into_iter().enumerate() {
        let acked: Acked = Arc::default();
        let base = format!("http://127.0.0.1:{}", gw.admin_port);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(write_loop(
                    base.clone(),
                    cycle,
                    w,
                    up.addr.to_string(),
                    acked.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(delay).await;
        let before_kill = acked.lock().unwrap().len();
        gw.child.kill().expect("SIGKILL portcullis"); // std's kill is SIGKILL on Unix
        let status = gw.child.wait().expect("reap portcullis");
        assert!(
            !status.success(),
            "portcullis exited on its own: {status:?}"
        );
        let mut sent = 0;
        for w in writers {
            sent += w.await.expect("writer task");
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            before_kill > 0 && !acked.is_empty(),
            "cycle {cycle}: no write was acknowledged before the kill; stderr:\n{}",
            gw.stderr()
        );
        eprintln!(
            "cycle {cycle}: killed after {delay:?}: {} writes acknowledged, {sent} sent (the rest were cut off by the kill)",
            acked.len()
        );
        all_acked.extend(acked);

        gw.restart(&[]);
        wait_admin(&gw).await;

        // Every acknowledged write of every cycle so far is there, as written.
        for id in &all_acked {
            let r = admin(&gw, "GET", &format!("/apisix/admin/upstreams/{id}"), "").await;
            assert_eq!(
                r.status,
                200,
                "acknowledged upstream {id} is missing after kill -9 (cycle {cycle}): {}",
                r.text()
            );
            let v = r.json();
            assert_eq!(v["value"]["id"], id.as_str());
            assert_eq!(v["value"]["nodes"][up.addr.to_string()], 1, "{v}");
        }
        // The collection agrees (a write cut off after its commit but before
        // its answer may be there too: never fewer).
        let list = admin(&gw, "GET", "/apisix/admin/upstreams", "")
            .await
            .json();
        let listed = list["total"].as_u64().unwrap() as usize;
        assert!(
            listed > all_acked.len(),
            "{listed} upstreams listed, {} acknowledged + 1",
            all_acked.len()
        );

        // The change history was written in the same transactions.
        let changes = admin(
            &gw,
            "GET",
            "/portcullis/v1/changes?resource=upstreams&limit=10000",
            "",
        )
        .await
        .json();
        let recorded: std::collections::HashSet<&str> = changes["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        for id in &all_acked {
            assert!(
                recorded.contains(id.as_str()),
                "no change record for acknowledged write {id}"
            );
        }

        // The data plane serves what was stored before the kill.
        let r = request("GET", &gw.url("/before/x"), &[], "").await.unwrap();
        assert_eq!(
            r.status,
            200,
            "route created before the kill is not served after restart (cycle {cycle}): {}",
            r.text()
        );

        // And the restarted node takes writes again.
        let r = admin(
            &gw,
            "PUT",
            &format!("/apisix/admin/routes/after-{cycle}"),
            &format!(
                r#"{{"uri":"/after-{cycle}/*","upstream_id":"{}"}}"#,
                all_acked[0]
            ),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let r = request("GET", &gw.url(&format!("/after-{cycle}/x")), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
}
