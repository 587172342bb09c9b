//! The operations listener: `/healthz` (the process is alive), `/readyz`
//! (a configuration is loaded and the last update was not refused), and
//! `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use portcullis_config::Live;

pub async fn serve(listener: tokio::net::TcpListener, live: Arc<Live>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let live = live.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let live = live.clone();
                async move { Ok::<_, Infallible>(answer(&live, req.uri().path())) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default()
}

fn answer(live: &Live, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        "/readyz" => {
            let status = live.status();
            let snapshot = live.load();
            let body = serde_json::json!({
                "config_version": snapshot.version,
                "routes": snapshot.routes.len(),
                "last_reload_error": status.last_error,
                "reloads_applied": status.applied_total,
                "reloads_refused": status.refused_total,
            });
            let ready = status.loaded_at.is_some() && status.last_error.is_none();
            json(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                body,
            )
        }
        "/metrics" => {
            let status = live.status();
            let snapshot = live.load();
            let text = format!(
                "# TYPE portcullis_config_version gauge\nportcullis_config_version {}\n# TYPE portcullis_config_reloads_total counter\nportcullis_config_reloads_total{{result=\"applied\"}} {}\nportcullis_config_reloads_total{{result=\"refused\"}} {}\n",
                snapshot.version, status.applied_total, status.refused_total
            );
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(text)))
                .unwrap_or_default()
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error_msg": "not found"}),
        ),
    }
}
