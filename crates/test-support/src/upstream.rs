//! Upstreams for tests: they answer with a JSON echo of what they received
//! and remember every request, so a test can prove that a rejected request
//! never reached the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The number in the path segment after `name`: `/a/sleep/50/b` → 50.
fn segment_after(path: &str, name: &str) -> Option<u64> {
    let mut parts = path.split('/');
    while let Some(p) = parts.next() {
        if p == name {
            return parts.next()?.parse().ok();
        }
    }
    None
}

#[derive(Clone)]
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingUpstream {
    /// Start on a free loopback port; answers 200 with
    /// `{"method","uri","headers","body"}`.
    pub async fn start() -> RecordingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            // Test conventions in the path: `/sleep/<ms>` waits before
                            // answering, `/status/<code>` answers with that status.
                            let path = parts.uri.path().to_string();
                            if let Some(ms) = segment_after(&path, "sleep") {
                                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                            }
                            let status = segment_after(&path, "status").unwrap_or(200) as u16;
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let headers: serde_json::Map<String, serde_json::Value> = parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.to_string(),
                                        serde_json::Value::String(
                                            v.to_str().unwrap_or("").to_string(),
                                        ),
                                    )
                                })
                                .collect();
                            let echo = serde_json::json!({
                                "method": parts.method.as_str(),
                                "uri": parts.uri.to_string(),
                                "headers": headers,
                                "body": String::from_utf8_lossy(&body),
                            });
                            log.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            });
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .header("x-upstream-port", addr.port().to_string())
                                    .body(Full::new(Bytes::from(echo.to_string())))
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
        RecordingUpstream { addr, seen }
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}
