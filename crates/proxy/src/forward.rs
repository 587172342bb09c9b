//! Sending a request upstream: node choice, connection, timeouts, retries,
//! passive health, and the error answers (502 refused/reset, 504 timeout).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use portcullis_config::model::{HashOn, PassHost, Scheme};
use portcullis_config::upstream::{hash_str, Upstream};
use portcullis_core::{Rejection, RequestState};
use portcullis_router::VarLookup;

use crate::body::{ReqBody, RespBody};
use crate::pool::{self, ConnectError, PooledBody, Reuse};

/// What the log needs to know about the upstream side.
#[derive(Debug, Default, Clone)]
pub struct UpstreamOutcome {
    pub addr: Option<std::sync::Arc<str>>,
    pub attempts: u32,
    pub latency: Option<Duration>,
}

enum AttemptError {
    Connect(ConnectError),
    Timeout,
    /// The request failed after it may have reached the upstream.
    Send(hyper::Error),
}

pub fn upstream_error(status: StatusCode, msg: &str) -> Rejection {
    Rejection::error_msg(status, msg)
}

/// Forward the (already checked) request. `body` goes as is; it is retried
/// only when it can be replayed.
pub async fn forward(
    upstream: &Upstream,
    req: &RequestState,
    body: ReqBody,
    outcome: &mut UpstreamOutcome,
) -> Result<Response<RespBody>, Rejection> {
    let hash = chash_key(upstream, req).map(|k| hash_str(&k));
    let reuse = Reuse {
        max_idle: upstream.keepalive.size,
        idle_timeout: Duration::from_secs_f64(upstream.keepalive.idle_timeout.max(0.0)),
        max_requests: upstream.keepalive.requests.max(1),
    };
    let started = Instant::now();
    // Nodes that failed this request; empty (unallocated) until one does.
    let mut tried: Vec<usize> = Vec::new();
    let mut body = Some(body);
    loop {
        let Some(node_index) = upstream.pick(hash, &tried) else {
            return Err(upstream_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no upstream node available",
            ));
        };
        let node = &upstream.nodes[node_index];
        outcome.attempts += 1;
        outcome.addr = Some(node.authority.clone());
        // Keep a replayable copy before the body is consumed.
        let this_body = body.take().unwrap_or_else(ReqBody::empty);
        body = this_body.replayable();

        let in_flight = &upstream.state.in_flight[node_index];
        in_flight.fetch_add(1, Ordering::Relaxed);
        let attempt_started = Instant::now();
        let result = attempt(upstream, req, node_index, this_body, reuse).await;
        in_flight.fetch_sub(1, Ordering::Relaxed);
        outcome.latency = Some(attempt_started.elapsed());

        let err = match result {
            Ok(resp) => {
                note_status(upstream, node_index, resp.status().as_u16());
                return Ok(resp);
            }
            Err(e) => e,
        };
        tried.push(node_index);
        note_failure(
            upstream,
            node_index,
            matches!(
                err,
                AttemptError::Timeout | AttemptError::Connect(ConnectError::Timeout)
            ),
        );
        let may_retry = body.is_some()
            && (outcome.attempts as usize) <= upstream.retries as usize
            && tried.len() < upstream.nodes.len().max(1) + upstream.retries as usize
            && upstream.retry_timeout.is_none_or(|t| started.elapsed() < t);
        tracing::debug!(upstream = %upstream.key, node = %node.authority, error = %describe(&err), may_retry, "upstream attempt failed");
        if !may_retry {
            return Err(match err {
                AttemptError::Timeout | AttemptError::Connect(ConnectError::Timeout) => {
                    upstream_error(StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
                }
                _ => upstream_error(StatusCode::BAD_GATEWAY, "upstream unavailable"),
            });
        }
        if tried.len() >= upstream.nodes.len() {
            // Every node tried once: further retries may go anywhere.
            tried.clear();
        }
    }
}

fn describe(e: &AttemptError) -> String {
    match e {
        AttemptError::Connect(ConnectError::Timeout) => "connect timeout".into(),
        AttemptError::Connect(ConnectError::Io(e)) => format!("connect: {e}"),
        AttemptError::Connect(ConnectError::Handshake(e)) => format!("handshake: {e}"),
        AttemptError::Connect(ConnectError::Tls(e)) => format!("tls: {e}"),
        AttemptError::Timeout => "read timeout".into(),
        AttemptError::Send(e) => format!("send: {e}"),
    }
}

async fn attempt(
    upstream: &Upstream,
    req: &RequestState,
    node_index: usize,
    body: ReqBody,
    reuse: Reuse,
) -> Result<Response<RespBody>, AttemptError> {
    let node = &upstream.nodes[node_index];
    let tls = match upstream.scheme {
        Scheme::Http => None,
        Scheme::Https => {
            let sni = match (upstream.pass_host, upstream.upstream_host.as_deref()) {
                (PassHost::Rewrite, Some(host)) => host,
                _ => node.host.as_str(),
            };
            let name = crate::upstream_tls::server_name(sni).ok_or_else(|| {
                AttemptError::Connect(ConnectError::Tls(std::io::Error::other(
                    "invalid TLS server name",
                )))
            })?;
            Some((
                name,
                crate::upstream_tls::client_config(upstream.tls_verify),
            ))
        }
    };
    let target = pool::Target {
        authority: &node.authority,
        tls,
    };
    let mut conn = pool::checkout(&target, upstream.connect_timeout, reuse)
        .await
        .map_err(AttemptError::Connect)?;

    let mut builder = Request::builder().method(req.head.method.clone()).uri(
        req.head
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    if let Some(headers) = builder.headers_mut() {
        *headers = req.head.headers.clone();
        match upstream.pass_host {
            PassHost::Pass => {
                if !headers.contains_key(header::HOST) {
                    if let Some(h) = req
                        .head
                        .uri
                        .authority()
                        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                    {
                        headers.insert(header::HOST, h);
                    }
                }
            }
            PassHost::Node => {
                let host = if node.port == 80 {
                    &*node.host
                } else {
                    &*node.authority
                };
                if let Ok(v) = HeaderValue::from_str(host) {
                    headers.insert(header::HOST, v);
                }
            }
            PassHost::Rewrite => {
                if let Some(v) = upstream
                    .upstream_host
                    .as_deref()
                    .and_then(|h| HeaderValue::from_str(h).ok())
                {
                    headers.insert(header::HOST, v);
                }
            }
        }
    }
    let request = builder.body(body).map_err(|_| {
        AttemptError::Connect(ConnectError::Io(std::io::Error::other(
            "request could not be built",
        )))
    })?;

    let sent = tokio::time::timeout(upstream.read_timeout, conn.sender.send_request(request)).await;
    match sent {
        Err(_) => Err(AttemptError::Timeout),
        Ok(Err(e)) => Err(AttemptError::Send(e)),
        Ok(Ok(resp)) => {
            let (parts, incoming) = resp.into_parts();
            Ok(Response::from_parts(
                parts,
                RespBody::Upstream(PooledBody::new(incoming, conn)),
            ))
        }
    }
}

/// The chash key for this request, per the upstream's `hash_on`.
fn chash_key(upstream: &Upstream, req: &RequestState) -> Option<String> {
    use portcullis_config::model::BalancerKind;
    if upstream.balancer != BalancerKind::Chash {
        return None;
    }
    let key = upstream.hash_key.as_deref().unwrap_or("");
    match upstream.hash_on {
        HashOn::Vars => req.var(key).map(|v| v.into_owned()),
        HashOn::Header => req.header_str(key).map(str::to_string),
        HashOn::Cookie => req.cookie(key).map(str::to_string),
        HashOn::Consumer => req.consumer_name().map(str::to_string),
        HashOn::VarsCombinations => Some(expand_vars(key, req)),
    }
    .or_else(|| Some(req.client_ip.to_string()))
}

/// `$remote_addr$arg_id` → the variables' values, concatenated.
fn expand_vars(template: &str, req: &RequestState) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let name_len = rest[at + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at - 1);
        let name = &rest[at + 1..at + 1 + name_len];
        if let Some(v) = req.var(name) {
            out.push_str(&v);
        }
        rest = &rest[at + 1 + name_len..];
    }
    out.push_str(rest);
    out
}

/// Passive health: count failures per node and mark it down past the
/// threshold. Only when the upstream configures passive checks.
fn note_failure(upstream: &Upstream, node: usize, timeout: bool) {
    let Some(passive) = upstream.checks.as_ref().and_then(|c| c.passive.as_ref()) else {
        return;
    };
    let threshold = if timeout {
        passive.unhealthy.timeouts
    } else {
        passive.unhealthy.tcp_failures
    };
    let failures = upstream.state.failures[node].fetch_add(1, Ordering::Relaxed) + 1;
    upstream.state.successes[node].store(0, Ordering::Relaxed);
    if threshold > 0
        && failures >= threshold
        && upstream.state.healthy[node].swap(false, Ordering::Relaxed)
    {
        tracing::warn!(upstream = %upstream.key, node = %upstream.nodes[node].authority, "node marked unhealthy by passive check");
    }
}

fn note_status(upstream: &Upstream, node: usize, status: u16) {
    let Some(passive) = upstream.checks.as_ref().and_then(|c| c.passive.as_ref()) else {
        return;
    };
    if passive.unhealthy.http_statuses.contains(&status) {
        let failures = upstream.state.failures[node].fetch_add(1, Ordering::Relaxed) + 1;
        if passive.unhealthy.http_failures > 0
            && failures >= passive.unhealthy.http_failures
            && upstream.state.healthy[node].swap(false, Ordering::Relaxed)
        {
            tracing::warn!(upstream = %upstream.key, node = %upstream.nodes[node].authority, status, "node marked unhealthy by passive check");
        }
    } else if passive.healthy.http_statuses.contains(&status) {
        upstream.state.failures[node].store(0, Ordering::Relaxed);
        let ok = upstream.state.successes[node].fetch_add(1, Ordering::Relaxed) + 1;
        if ok >= passive.healthy.successes.max(1) {
            upstream.state.healthy[node].store(true, Ordering::Relaxed);
        }
    }
}
