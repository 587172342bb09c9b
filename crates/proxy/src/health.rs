//! Active health checks. One task per upstream that configures
//! `checks.active`, probing every node on its interval and flipping the
//! node's health after the configured run of successes or failures. The
//! balancer skips unhealthy nodes (`Upstream::pick`).
//!
//! Tasks are keyed by the upstream's key, which includes a hash of its
//! config: an edit restarts the checker, an unrelated reload leaves it be.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use portcullis_config::upstream::Upstream;
use portcullis_config::Live;
use tokio::task::JoinHandle;

/// Keep one checker per upstream with active checks, following snapshots.
pub async fn run(live: Arc<Live>) {
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut seen_version = u64::MAX;
    loop {
        let snapshot = live.load();
        if snapshot.version != seen_version {
            seen_version = snapshot.version;
            let mut wanted: HashMap<String, Arc<Upstream>> = HashMap::new();
            let inline = snapshot.routes.iter().filter_map(|r| r.upstream.clone());
            for up in snapshot.upstreams.values().cloned().chain(inline) {
                if up.checks.as_ref().is_some_and(|c| c.active.is_some()) {
                    wanted.insert(up.key.clone(), up);
                }
            }
            tasks.retain(|key, task| {
                let keep = wanted.contains_key(key);
                if !keep {
                    task.abort();
                }
                keep
            });
            for (key, up) in wanted {
                tasks
                    .entry(key)
                    .or_insert_with(|| tokio::spawn(check_upstream(up)));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

enum Probe {
    Healthy,
    HttpFailure,
    TcpFailure,
    Timeout,
}

async fn check_upstream(up: Arc<Upstream>) {
    let Some(active) = up.checks.as_ref().and_then(|c| c.active.clone()) else {
        return;
    };
    let interval = Duration::from_secs_f64(
        active
            .healthy
            .interval
            .min(active.unhealthy.interval)
            .max(0.05),
    );
    let timeout = Duration::from_secs_f64(active.timeout.max(0.01));
    // Consecutive outcomes per node: (successes, http failures, tcp failures, timeouts).
    let mut runs = vec![(0u32, 0u32, 0u32, 0u32); up.nodes.len()];
    loop {
        for (i, node) in up.nodes.iter().enumerate() {
            let target = match active.port {
                Some(port) => format!("{}:{port}", node.host),
                None => node.authority.to_string(),
            };
            let probe = probe(&target, &active, timeout).await;
            let run = &mut runs[i];
            let healthy = &up.state.healthy[i];
            match probe {
                Probe::Healthy => {
                    *run = (run.0 + 1, 0, 0, 0);
                    if run.0 >= active.healthy.successes.max(1)
                        && !healthy.swap(true, Ordering::Relaxed)
                    {
                        tracing::info!(upstream = %up.key, node = %node.authority, "node healthy again (active check)");
                    }
                }
                failure => {
                    run.0 = 0;
                    let tripped = match failure {
                        Probe::HttpFailure => {
                            run.1 += 1;
                            run.1 >= active.unhealthy.http_failures.max(1)
                        }
                        Probe::TcpFailure => {
                            run.2 += 1;
                            run.2 >= active.unhealthy.tcp_failures.max(1)
                        }
                        _ => {
                            run.3 += 1;
                            run.3 >= active.unhealthy.timeouts.max(1)
                        }
                    };
                    if tripped && healthy.swap(false, Ordering::Relaxed) {
                        tracing::warn!(upstream = %up.key, node = %node.authority, "node marked unhealthy (active check)");
                    }
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn probe(
    target: &str,
    active: &portcullis_config::model::ActiveCheck,
    timeout: Duration,
) -> Probe {
    let connect = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await;
    let stream = match connect {
        Err(_) => return Probe::Timeout,
        Ok(Err(_)) => return Probe::TcpFailure,
        Ok(Ok(s)) => s,
    };
    if active.check_type == "tcp" {
        return Probe::Healthy;
    }
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let mut req = http::Request::get(active.http_path.as_str()).header(
            http::header::HOST,
            active.host.clone().unwrap_or_else(|| target.to_string()),
        );
        for line in &active.req_headers {
            if let Some((k, v)) = line.split_once(':') {
                req = req.header(k.trim(), v.trim());
            }
        }
        let resp = sender
            .send_request(req.body(Empty::<bytes::Bytes>::new()).ok()?)
            .await
            .ok()?;
        Some(resp.status().as_u16())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Probe::Timeout,
        Ok(None) => Probe::TcpFailure,
        Ok(Some(status)) if active.healthy.http_statuses.contains(&status) => Probe::Healthy,
        Ok(Some(_)) => Probe::HttpFailure,
    }
}
