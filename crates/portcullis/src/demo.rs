//! `portcullis demo`: the gateway on an example config (examples/demo.yaml)
//! in front of a built-in echo upstream, so a newcomer sees it work with no
//! other software.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const DEMO_CONFIG: &str = include_str!("../../../examples/demo.yaml");

/// Start the echo upstream on a free loopback port, on its own thread.
fn start_echo_upstream() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("demo-upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            |req: http::Request<hyper::body::Incoming>| async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let headers: serde_json::Map<String, serde_json::Value> = parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                                    .collect();
                                let echo = serde_json::json!({
                                    "upstream": "portcullis demo echo",
                                    "method": parts.method.as_str(),
                                    "uri": parts.uri.to_string(),
                                    "headers": headers,
                                    "body": String::from_utf8_lossy(&body),
                                });
                                Ok::<_, Infallible>(
                                    http::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(
                                            serde_json::to_vec_pretty(&echo).unwrap_or_default(),
                                        )))
                                        .expect("response"),
                                )
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        })?;
    Ok(addr)
}

pub fn run(port: u16) -> anyhow::Result<()> {
    let upstream = start_echo_upstream()?;
    let text = DEMO_CONFIG
        .replace("{DEMO_UPSTREAM}", &upstream.to_string())
        .replace("{PORT}", &port.to_string());
    let file = portcullis_config::file::parse(&text).map_err(|errors| {
        anyhow::anyhow!(
            "demo config invalid: {}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    portcullis_config::Live::default()
        .check(file.resources.clone())
        .map_err(|errors| {
            anyhow::anyhow!(
                "demo config invalid: {}",
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
    let base = format!("http://127.0.0.1:{port}");
    eprintln!(
        r#"portcullis demo: gateway on {base}, echo upstream on {upstream}. Try:

  curl -i {base}/public/hello                                  # proxied, with an X-Request-Id
  curl -i {base}/orders/1                                      # 401: no API key
  curl -i {base}/orders/1 -H 'apikey: wrong'                   # 401: unknown key
  curl -i {base}/orders/1 -H 'apikey: demo-order-key' \
       -H 'content-type: application/json' -d '{{"item":"book","quantity":2}}'   # 200
  curl -i {base}/orders/1 -H 'apikey: demo-order-key' \
       -H 'content-type: application/json' -d '{{"item":"book","quantity":0}}'   # 400: schema
  for i in $(seq 6); do curl -s -o /dev/null -w '%{{http_code}}\n' {base}/orders/1 \
       -H 'apikey: demo-order-key' -d '{{"item":"x","quantity":1}}'; done      # 429 after 5
  curl -i {base}/status                                        # mocked answer
  curl -i {base}/admin                                         # 404: no route

One JSON access-log line per request follows on stdout. Ctrl-C stops.
"#
    );
    crate::serve::init_logging_for_demo();
    crate::serve::run_loaded(file, None)
}
