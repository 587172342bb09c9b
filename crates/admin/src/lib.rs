//! The portcullis Admin API: APISIX's Admin API v3 on the wire, so APISIX
//! users' scripts and SDKs work unchanged, plus portcullis extensions under
//! `/portcullis/v1/`.
//!
//! Every write is validated as the whole configuration it would produce
//! (`Live::check`) before anything is stored; a refused write stores nothing.
//! A stored write is applied (`Live::apply`) before the answer is sent, so
//! the data plane serves it by the time the client hears back.
//!
//! - `auth`: client networks, admin keys, roles.
//! - `resources`: the `/apisix/admin/...` resource endpoints.
//! - `patch`: PATCH merge and sub-path semantics.
//! - `references`: refusing to delete what is still in use.
//! - `transfer`: export to and import from a config file, for the CLI.

mod approvals;
mod audit_api;
mod auth;
mod patch;
mod references;
mod resources;
pub mod transfer;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis_config::settings::{ConfigSource, GatewaySettings};
use portcullis_config::Live;
use portcullis_store::Store;
use serde_json::{json, Value};

pub use transfer::{export_yaml, import, ImportError};

/// The largest request body the Admin API reads. APISIX allows 1.5 MiB;
/// a little more room costs nothing on a loopback-only listener.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Where writes go.
enum Mode {
    /// The embedded store: the Admin API is the source of truth.
    Store(Arc<Store>),
    /// Resources come from elsewhere (the config file); writes are refused
    /// with this message.
    ReadOnly(String),
}

pub struct Admin {
    live: Arc<Live>,
    mode: Mode,
    keys: auth::Keys,
    allow: Vec<ipnet::IpNet>,
    /// One write at a time: a write's check, store and apply must not
    /// interleave with another's, or a check could pass against a config
    /// that is no longer the one being stored onto.
    write_lock: tokio::sync::Mutex<()>,
    /// `config_source: etcd`: reads and writes go to etcd (`mode` is then
    /// read-only, so nothing reaches the embedded store).
    etcd: Option<Arc<portcullis_etcd::EtcdStore>>,
}

impl Admin {
    /// `store` is used when `settings.config_source` is not `file`;
    /// `file_path` names the file in the read-only refusal.
    pub fn new(
        live: Arc<Live>,
        store: Option<Arc<Store>>,
        settings: &GatewaySettings,
        file_path: Option<PathBuf>,
    ) -> Admin {
        let file_mode = settings.config_source == Some(ConfigSource::File);
        let mode = match store {
            Some(store) if !file_mode => Mode::Store(store),
            _ => Mode::ReadOnly(match (&file_path, settings.config_source) {
                (Some(path), Some(ConfigSource::File) | None) => format!(
                    "config_source is file: the Admin API is read-only; edit {} instead",
                    path.display()
                ),
                (None, Some(ConfigSource::File) | None) => {
                    "config_source is file: the Admin API is read-only; edit the config file instead"
                        .to_string()
                }
                (_, Some(other)) => format!(
                    "config_source is {}: the Admin API is read-only here",
                    serde_json::to_value(other)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
            }),
        };
        Admin {
            live,
            mode,
            keys: auth::Keys::new(&settings.admin.keys),
            allow: settings.admin.allow.clone(),
            write_lock: tokio::sync::Mutex::new(()),
            etcd: None,
        }
    }

    /// An Admin API whose resources live in etcd (`config_source: etcd`).
    pub fn with_etcd(
        live: Arc<Live>,
        etcd: Arc<portcullis_etcd::EtcdStore>,
        settings: &GatewaySettings,
    ) -> Admin {
        let mut admin = Admin::new(live, None, settings, None);
        admin.etcd = Some(etcd);
        admin
    }

    fn store(&self) -> Option<&Arc<Store>> {
        match &self.mode {
            Mode::Store(s) => Some(s),
            Mode::ReadOnly(_) => None,
        }
    }
}

/// An answer: status and JSON body. Every answer carries
/// `X-API-VERSION: v3`, as APISIX's do.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn new(status: u16, body: Value) -> Reply {
        Reply { status, body }
    }
    pub fn error(status: u16, msg: impl Into<String>) -> Reply {
        Reply::new(status, json!({ "error_msg": msg.into() }))
    }
    pub fn not_found() -> Reply {
        Reply::new(404, json!({"message": "Key not found"}))
    }
}

fn to_response(reply: Reply) -> http::Response<Full<Bytes>> {
    let body = serde_json::to_vec(&reply.body).unwrap_or_else(|_| b"{}".to_vec());
    http::Response::builder()
        .status(reply.status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("X-API-VERSION", "v3")
        .header("Server", "portcullis")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}

/// Serve the Admin API on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(to_response(handle(&admin, peer, req).await)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// Every second, delete resources whose ttl ran out and serve the config
/// without them. Does nothing when writes do not go to the store.
pub fn start_expiry(admin: Arc<Admin>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(store) = admin.store().cloned() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _one_writer = admin.write_lock.lock().await;
            match store.expire_due(SystemTime::now()) {
                Ok(gone) if gone.is_empty() => {}
                Ok(gone) => {
                    for (kind, id) in &gone {
                        tracing::info!(kind = kind.as_str(), id, "resource expired (ttl)");
                    }
                    resources::apply_from_store(&admin.live, &store);
                }
                Err(e) => tracing::error!(error = %e, "expiring ttl resources failed"),
            }
        }
    })
}

/// Decoded query arguments, last value wins.
pub(crate) type Query = std::collections::HashMap<String, String>;

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a handler needs to know about the request beyond its body.
pub(crate) struct Ctx {
    pub method: http::Method,
    pub query: Query,
    pub actor: String,
    pub client: String,
}

async fn handle(admin: &Admin, peer: SocketAddr, req: http::Request<Incoming>) -> Reply {
    if !auth::allowed(&admin.allow, peer.ip()) {
        tracing::warn!(client = %peer.ip(), "admin request from an address not in admin.allow");
        return Reply::error(403, "403 Forbidden");
    }
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let known = path.starts_with("/apisix/admin/") || path.starts_with("/portcullis/v1/");
    if !known {
        return Reply::error(404, "404 Route Not Found");
    }
    let method = req.method().clone();
    let is_read = method == http::Method::GET || method == http::Method::HEAD;
    let presented = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.get("api_key").cloned());
    let caller = match admin.keys.check(presented.as_deref(), is_read) {
        Ok(c) => c,
        Err(refusal) => {
            tracing::warn!(client = %peer.ip(), reason = refusal.description(), "admin request refused");
            return Reply::new(
                401,
                json!({"error_msg": "failed to check token", "description": refusal.description()}),
            );
        }
    };

    let body = if matches!(
        method,
        http::Method::PUT | http::Method::POST | http::Method::PATCH
    ) {
        let too_big = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > MAX_BODY_BYTES);
        if too_big {
            return Reply::error(413, "request body is too large");
        }
        match Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    return Reply::error(413, "request body is too large");
                }
                return Reply::error(400, format!("invalid request body: {e}"));
            }
        }
    } else {
        Bytes::new()
    };

    let ctx = Ctx {
        method,
        query,
        actor: caller.name,
        client: peer.ip().to_string(),
    };
    let reply = if let Some(rest) = path.strip_prefix("/portcullis/v1/") {
        match rest.strip_prefix("approvals") {
            Some(r) if r.is_empty() || r.starts_with('/') => {
                approvals::handle(admin, &ctx, r).await
            }
            _ => resources::extension(admin, &ctx, rest, &body).await,
        }
    } else {
        let rest = path.strip_prefix("/apisix/admin/").unwrap_or_default();
        resources::handle(admin, &ctx, rest, &body).await
    };
    tracing::debug!(method = %ctx.method, path, status = reply.status, actor = %ctx.actor, "admin request");
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_arguments_are_percent_decoded() {
        let q = parse_query(Some("name=a%20b&uri=%2Fx%2F*&ttl=5&bad=%zz&plus=a+b"));
        assert_eq!(q["name"], "a b");
        assert_eq!(q["uri"], "/x/*");
        assert_eq!(q["ttl"], "5");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["plus"], "a b");
    }
}
