//! Black-box tests of proxying: the real binary in front of real upstreams
//! on loopback ports.

use std::time::Duration;

use portcullis_test_support::{request, Gateway, RecordingUpstream};

async fn get(url: &str, headers: &[(&str, &str)]) -> portcullis_test_support::Response {
    request("GET", url, headers, "").await.expect("request")
}

fn one_route(upstream: &RecordingUpstream, extra: &str) -> String {
    format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      nodes: {{ \"{}\": 1 }}\n{extra}",
        upstream.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_path_answers_apisix_404_body() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r1\n    uri: /api/*\n    upstream:\n      nodes: {{ \"{}\": 1 }}\n",
        up.addr
    ));
    let r = get(&gw.url("/other"), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        serde_json::json!({"error_msg": "404 Route Not Found"})
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&one_route(&up, ""));
    let r = get(
        &gw.url("/x?q=1"),
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = &up.seen()[0];
    assert_eq!(seen.uri, "/x?q=1");
    for gone in ["x-hop", "te", "proxy-authorization", "keep-alive"] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(
        seen.headers["x-forwarded-port"],
        gw.http_port.to_string().as_str()
    );
    assert_eq!(
        seen.headers["host"],
        format!("127.0.0.1:{}", gw.http_port).as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_a_502_with_a_short_json_body() {
    let dead = portcullis_test_support::free_port();
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      nodes: {{ \"127.0.0.1:{dead}\": 1 }}\n"
    ));
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json(),
        serde_json::json!({"error_msg": "upstream unavailable"})
    );
    assert!(
        !r.text().contains(&dead.to_string()),
        "the answer names an internal address"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_a_504_after_the_read_timeout() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      timeout: {{ connect: 1, send: 1, read: 0.2 }}\n      nodes: {{ \"{}\": 1 }}\n",
        up.addr
    ));
    let started = std::time::Instant::now();
    let r = get(&gw.url("/sleep/2000"), &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(
        r.json(),
        serde_json::json!({"error_msg": "upstream timed out"})
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_retried_on_another() {
    let up = RecordingUpstream::start().await;
    let dead = portcullis_test_support::free_port();
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      retries: 1\n      nodes: {{ \"127.0.0.1:{dead}\": 1, \"{}\": 1 }}\n",
        up.addr
    ));
    for _ in 0..6 {
        let r = get(&gw.url("/x"), &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_spreads_by_weight() {
    let a = RecordingUpstream::start().await;
    let b = RecordingUpstream::start().await;
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      type: roundrobin\n      nodes: {{ \"{}\": 3, \"{}\": 1 }}\n",
        a.addr, b.addr
    ));
    for _ in 0..40 {
        assert_eq!(get(&gw.url("/x"), &[]).await.status, 200);
    }
    assert_eq!((a.count(), b.count()), (30, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chash_on_a_header_keeps_a_key_on_one_node() {
    let a = RecordingUpstream::start().await;
    let b = RecordingUpstream::start().await;
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      type: chash\n      hash_on: header\n      key: x-user\n      nodes: {{ \"{}\": 1, \"{}\": 1 }}\n",
        a.addr, b.addr
    ));
    let mut ports = std::collections::HashSet::new();
    for _ in 0..10 {
        let r = get(&gw.url("/x"), &[("x-user", "alice")]).await;
        ports.insert(r.header("x-upstream-port").unwrap().to_string());
    }
    assert_eq!(ports.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_host_rewrite_sets_the_upstream_host() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&format!(
        "routes:\n  - id: r1\n    uri: /*\n    upstream:\n      pass_host: rewrite\n      upstream_host: internal.example\n      nodes: {{ \"{}\": 1 }}\n",
        up.addr
    ));
    assert_eq!(get(&gw.url("/x"), &[]).await.status, 200);
    assert_eq!(up.seen()[0].headers["host"], "internal.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_stream_through() {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&one_route(&up, ""));
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.http_port))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(Bytes::from("hello "))),
        Ok(Frame::data(Bytes::from("chunked world"))),
    ];
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = http::Request::post("/upload")
        .header("host", "x")
        .header("expect", "100-continue")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = &up.seen()[0];
    assert_eq!(seen.body, "hello chunked world");
    assert!(!seen.headers.contains_key("expect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served() {
    use http_body_util::{BodyExt, Empty};
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&one_route(&up, ""));
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", gw.http_port))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://127.0.0.1:{}/h2", gw.http_port))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"/h2\""));
}

/// Send raw bytes and read what comes back until the server closes.
async fn raw_exchange(port: u16, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_a_garbage_request_line_400() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&one_route(&up, ""));
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = raw_exchange(gw.http_port, big.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "got: {answer:.80}");
    let mut many = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_exchange(gw.http_port, many.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "got: {answer:.80}");
    let answer = raw_exchange(
        gw.http_port,
        b"NOT A REQUEST\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "got: {answer:.80}");
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_get_408() {
    let up = RecordingUpstream::start().await;
    let gw = Gateway::start(&format!(
        "gateway:\n  listen: [\"127.0.0.1:{{HTTP_PORT}}\"]\n  metrics: {{ listen: \"127.0.0.1:{{METRICS_PORT}}\" }}\n  admin: {{ listen: \"127.0.0.1:{{ADMIN_PORT}}\" }}\n  workers: 1\n  access_log: \"off\"\n  http: {{ header_read_timeout: 0.3 }}\n{}",
        one_route(&up, "")
    ));
    let answer = raw_exchange(
        gw.http_port,
        b"GET / HTTP/1.1\r\nhost: x\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "got: {answer:.80}");
}
