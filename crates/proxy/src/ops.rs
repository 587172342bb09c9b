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
            let mut body = body;
            let now = std::time::SystemTime::now();
            let stale = status.is_stale(now);
            if let Some(age) = status.source_age(now) {
                // etcd: how old the served config may be, and whether that
                // is past `max_staleness`.
                body["config_source_age_seconds"] = age_seconds(age).into();
                body["stale"] = stale.into();
            }
            let ready = status.loaded_at.is_some() && status.last_error.is_none() && !stale;
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
            let metrics = &portcullis_telemetry::global().metrics;
            metrics.set_config(snapshot.version, status.applied_total, status.refused_total);
            metrics.clear_upstream_status();
            for upstream in snapshot.upstreams.values() {
                let name = upstream.name.as_deref().unwrap_or(&upstream.key);
                for (i, node) in upstream.nodes.iter().enumerate() {
                    let healthy = upstream
                        .state
                        .healthy
                        .get(i)
                        .is_none_or(|h| h.load(std::sync::atomic::Ordering::Relaxed));
                    metrics.set_upstream_status(name, &node.authority, healthy);
                }
            }
            let mut text = metrics.render();
            if let Some(age) = status.source_age(std::time::SystemTime::now()) {
                let gauge = format!(
                    "# HELP portcullis_config_source_age_seconds Seconds since the config source (etcd) was last heard from.\n# TYPE portcullis_config_source_age_seconds gauge\nportcullis_config_source_age_seconds {}\n",
                    age_seconds(age)
                );
                let at = text.rfind("# EOF").unwrap_or(text.len());
                text.insert_str(at, &gauge);
            }
            Response::builder()
                .header(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::new(Bytes::from(text)))
                .unwrap_or_default()
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error_msg": "not found"}),
        ),
    }
}

/// An age for /readyz and /metrics; "never heard from" reads as -1.
fn age_seconds(age: std::time::Duration) -> f64 {
    if age == std::time::Duration::MAX {
        -1.0
    } else {
        (age.as_secs_f64() * 1000.0).round() / 1000.0
    }
}
