//! Active health checks take a failing node out of rotation and bring it
//! back; websockets pass through when the route enables them.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use portcullis_test_support::{request, Gateway, RecordingUpstream};

/// An upstream whose /health answers with a status the test controls.
async fn switchable_upstream(health: Arc<AtomicU16>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let status = if req.uri().path() == "/health" {
                            health.load(Ordering::Relaxed)
                        } else {
                            200
                        };
                        async move {
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("x-upstream", "switchable")
                                    .body(Full::new(Bytes::from_static(b"switchable")))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_failing_node_out_and_bring_it_back() {
    let steady = RecordingUpstream::start().await;
    let health = Arc::new(AtomicU16::new(200));
    let flaky = switchable_upstream(health.clone()).await;
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      nodes: {{ \"{}\": 1, \"{flaky}\": 1 }}\n      checks:\n        active:\n          http_path: /health\n          timeout: 0.5\n          healthy: {{ interval: 0.1, successes: 1 }}\n          unhealthy: {{ interval: 0.1, http_failures: 1 }}\n",
        steady.addr
    ));
    let hits_on_flaky = async |n: usize| {
        let mut hits = 0;
        for _ in 0..n {
            let r = request("GET", &gw.url("/x"), &[], "").await.unwrap();
            if r.header("x-upstream") == Some("switchable") {
                hits += 1;
            }
        }
        hits
    };
    assert!(
        hits_on_flaky(10).await > 0,
        "both nodes serve while healthy"
    );
    health.store(500, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        hits_on_flaky(10).await,
        0,
        "the failing node still got traffic"
    );
    health.store(200, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        hits_on_flaky(10).await > 0,
        "the recovered node got no traffic"
    );
}

/// An upstream that accepts a websocket upgrade and echoes bytes back.
async fn echo_upgrade_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: http::Request<hyper::body::Incoming>| async move {
                        let on_upgrade = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(upgraded) = on_upgrade.await {
                                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            }
                        });
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(101)
                                .header("upgrade", "websocket")
                                .header("connection", "upgrade")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_spliced_when_the_route_enables_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = echo_upgrade_upstream().await;
    let gw = Gateway::start(&format!(
        "routes:\n  - id: ws\n    uri: /ws\n    enable_websocket: true\n    upstream: {{ nodes: {{ \"{up}\": 1 }} }}\n"
    ));
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.http_port))
        .await
        .unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping-through-the-gateway").await.unwrap();
    let mut echoed = vec![0u8; 24];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping-through-the-gateway");
}
