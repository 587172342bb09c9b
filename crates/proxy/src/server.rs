//! Worker threads, listeners, connections, and the request handler that
//! ties routing, the phases and forwarding together.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_config::{CompiledRoute, GatewaySettings, Live};
use portcullis_core::{Phase, Rejection, RequestState};
use portcullis_router::MatchInput;
use tokio::net::TcpStream;

use crate::access_log::AccessLog;
use crate::body::{ReqBody, RespBody};
use crate::forward::{forward, UpstreamOutcome};
use crate::headers::{set_forwarded, strip_hop_by_hop, Forwarded};
use crate::listener::bind_reuseport;

/// Everything a worker needs, shared by all workers.
pub struct DataPlane {
    pub live: Arc<Live>,
    pub settings: GatewaySettings,
    pub access_log: AccessLog,
}

/// Tells workers to stop accepting and drain, and counts what is in flight.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
    active_connections: Arc<AtomicUsize>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(tokio::sync::watch::channel(false).0),
            active_connections: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn active_connections(&self) -> usize {
        self.active_connections.load(Ordering::Relaxed)
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// Start `workers` threads, each with a current-thread runtime and its own
/// SO_REUSEPORT socket on every listen address. Binding happens here, so a
/// port in use is reported before anything runs.
pub fn spawn_workers(
    dp: Arc<DataPlane>,
    workers: usize,
    shutdown: Shutdown,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    // One TLS terminator for all workers: its SNI table follows the snapshot.
    let tls = (!dp.settings.listen_tls.is_empty()).then(|| {
        Arc::new(crate::tls::TlsTerminator::new(
            dp.live.clone(),
            Duration::from_secs_f64(dp.settings.http.header_read_timeout.max(0.001)),
        ))
    });
    for worker in 0..workers.max(1) {
        let plain = dp.settings.listen.iter().map(|a| (a, None));
        let secure = dp.settings.listen_tls.iter().map(|a| (a, tls.clone()));
        let listeners = plain
            .chain(secure)
            .map(|(addr, tls)| {
                bind_reuseport(*addr).map(|l| (l, tls)).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let dp = dp.clone();
        let shutdown = shutdown.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker-{worker}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("worker runtime");
                    rt.block_on(run_worker(dp, listeners, shutdown));
                })?,
        );
    }
    Ok(handles)
}

/// A listening socket and, for HTTPS listeners, the TLS terminator.
type Listener = (
    std::net::TcpListener,
    Option<Arc<crate::tls::TlsTerminator>>,
);

async fn run_worker(dp: Arc<DataPlane>, listeners: Vec<Listener>, shutdown: Shutdown) {
    let mut tasks = Vec::new();
    for (l, tls) in listeners {
        let listener = match tokio::net::TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register listener");
                continue;
            }
        };
        tasks.push(tokio::spawn(accept_loop(
            dp.clone(),
            listener,
            tls,
            shutdown.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    // Listeners are closed; wait for this worker's connections to finish,
    // within the drain bound.
    let deadline =
        Instant::now() + Duration::from_secs_f64(dp.settings.http.drain_timeout.max(0.0));
    while shutdown.active_connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn accept_loop(
    dp: Arc<DataPlane>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::TlsTerminator>>,
    shutdown: Shutdown,
) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut stop = shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let dp = dp.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(serve_connection(
            dp,
            stream,
            peer,
            local_port,
            shutdown,
            tls.clone(),
        ));
    }
}

struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    dp: Arc<DataPlane>,
    stream: TcpStream,
    peer: SocketAddr,
    local_port: u16,
    shutdown: Shutdown,
    tls: Option<Arc<crate::tls::TlsTerminator>>,
) {
    shutdown.active_connections.fetch_add(1, Ordering::Relaxed);
    let _guard = ConnectionGuard(shutdown.active_connections.clone());
    // A second descriptor for the same socket, so that when hyper gives up
    // on a slow client's headers (and drops its stream) we can still say
    // why (408). hyper reads through tokio's own TcpStream, which skips the
    // read that would only return EAGAIN after a short read and does not
    // zero its buffer.
    // (Not over TLS, where plain bytes would break the stream.)
    let for_408 = std::os::fd::AsFd::as_fd(&stream)
        .try_clone_to_owned()
        .ok()
        .filter(|_| tls.is_none())
        .map(std::net::TcpStream::from);
    let limits = &dp.settings.http;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs_f64(
            limits.header_read_timeout.max(0.001),
        ))
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);

    // HTTPS: the handshake, then the verified client certificate (if any)
    // travels with every request of the connection.
    let (stream, scheme, peer_cert) = match tls {
        None => (crate::tls::Stream::Plain(stream), "http", None),
        Some(tls) => match tls.accept(stream).await {
            Some((s, cert)) => (crate::tls::Stream::Tls(Box::new(s)), "https", cert),
            None => return,
        },
    };
    let svc_dp = dp.clone();
    let client = Arc::new(Client::new(peer, scheme, local_port));
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let dp = svc_dp.clone();
        let client = client.clone();
        if let Some(cert) = &peer_cert {
            req.extensions_mut().insert(cert.clone());
        }
        async move { Ok::<_, Infallible>(handle(&dp, req, &client).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stop = shutdown.subscribe();
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        let timed_out = e
            .downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_timeout());
        if timed_out {
            use std::io::Write;
            let _ = for_408.as_ref().map(|mut s| {
                s.write(
                b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            )
            });
        }
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// The client side of one connection: what every request on it shares,
/// with the forwarding header values formatted once per connection rather
/// than once per request.
struct Client {
    peer: SocketAddr,
    scheme: &'static str,
    local_port: u16,
    /// The peer's address as header text (X-Real-IP, X-Forwarded-For).
    peer_ip: HeaderValue,
    /// The local port as header text (X-Forwarded-Port).
    local_port_value: HeaderValue,
}

impl Client {
    fn new(peer: SocketAddr, scheme: &'static str, local_port: u16) -> Client {
        Client {
            peer,
            scheme,
            local_port,
            peer_ip: ip_header_value(peer.ip()),
            local_port_value: HeaderValue::from(local_port),
        }
    }
}

fn ip_header_value(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is valid header text")
}

fn not_found() -> Rejection {
    Rejection::error_msg(StatusCode::NOT_FOUND, "404 Route Not Found")
}

fn rejection_response(r: Rejection) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(r.body));
    *resp.status_mut() = r.status;
    for (k, v) in r.headers {
        resp.headers_mut().append(k, v);
    }
    resp
}

/// What the request handler learned, for the access log.
struct Trace {
    started: Instant,
    route_id: Option<Arc<str>>,
    /// Index of the matched route in the snapshot, for its log hooks.
    route_index: Option<usize>,
    upstream: UpstreamOutcome,
    /// W3C trace context and, when sampled, the span (docs/tracing.md).
    span: portcullis_telemetry::trace::RequestSpan,
}

async fn handle(dp: &DataPlane, req: Request<Incoming>, client: &Client) -> Response<RespBody> {
    let started = Instant::now();
    let snapshot = dp.live.load();
    let (parts, body) = req.into_parts();
    let mut st = RequestState::new(parts, client.peer, client.scheme, client.local_port);
    st.consumers = snapshot.consumers.clone();
    let mut trace = Trace {
        started,
        route_id: None,
        route_index: None,
        upstream: UpstreamOutcome::default(),
        span: portcullis_telemetry::trace::RequestSpan::start(&st.head.headers),
    };

    let found = snapshot
        .router
        .find(&MatchInput {
            method: &st.head.method,
            host: st.host(),
            path: st.path(),
            remote_addr: st.client_ip,
            vars: &st,
        })
        .map(|m| {
            trace.span.set_route(m.uri);
            let params: Vec<(String, String)> = m
                .params()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (m.index, params)
        });
    let response = match found {
        None => rejection_response(not_found()),
        Some((index, params)) => {
            let route = &snapshot.routes[index];
            st.route = route.info.clone();
            st.path_params = params;
            trace.route_id = Some(route.info.id.clone());
            trace.route_index = Some(index);
            let resp = match run_route(dp, client, route, &mut st, body, &mut trace).await {
                Ok(resp) => resp,
                Err(rejection) => rejection_response(rejection),
            };
            finish_response(route, &st, resp).await
        }
    };
    let mut response = add_state_headers(&st, response);
    // The client's protocol version, not the upstream's (which may be 1.0).
    *response.version_mut() = st.head.version;
    log_access(dp, &snapshot, &st, &trace, &response);
    response
}

/// The phases, the body bound, then the upstream.
async fn run_route(
    dp: &DataPlane,
    client: &Client,
    route: &CompiledRoute,
    st: &mut RequestState,
    body: Incoming,
    trace: &mut Trace,
) -> Result<Response<RespBody>, Rejection> {
    for phase in [
        Phase::Rewrite,
        Phase::Authenticate,
        Phase::Authorize,
        Phase::Limit,
    ] {
        if let Some(r) = crate::pipeline::run_phase(route, phase, st).await {
            return Err(r);
        }
        // Containment (docs/audit.md): quarantines apply once the caller is known.
        if phase == Phase::Authenticate {
            if let Some(r) = portcullis_audit::quarantine::check(st) {
                return Err(r);
            }
        }
    }
    let mut body = Some(body);
    if let Some(limit) = route.body_limit {
        st.body =
            Some(buffer_body(body.take().expect("body present"), &st.head.headers, limit).await?);
    }
    for phase in [Phase::Validate, Phase::BeforeProxy] {
        if let Some(r) = crate::pipeline::run_phase(route, phase, st).await {
            return Err(r);
        }
    }

    // A quarantine's `redirect` to a safe upstream replaces the route's.
    let safe_upstream = st
        .head
        .extensions
        .remove::<portcullis_audit::quarantine::SafeUpstream>()
        .and_then(|s| dp.live.load().upstreams.get(&s.0).cloned());
    let Some(upstream) = safe_upstream.as_deref().or(route.upstream.as_deref()) else {
        return Err(Rejection::error_msg(
            StatusCode::SERVICE_UNAVAILABLE,
            "missing upstream configuration in Route or Service",
        ));
    };
    let websocket = route.enable_websocket && is_websocket_upgrade(&st.head.headers);
    let client_upgrade = websocket
        .then(|| st.head.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    prepare_upstream_headers(dp, client, st, websocket);
    trace.span.inject(&mut st.head.headers);
    let req_body = match (st.body.take(), body) {
        (Some(buffered), _) => ReqBody::Full((!buffered.is_empty()).then_some(buffered)),
        (None, Some(incoming)) => ReqBody::Streaming(incoming),
        (None, None) => ReqBody::empty(),
    };
    trace.span.upstream_started();
    let forwarded = forward(upstream, st, req_body, &mut trace.upstream).await;
    trace.span.upstream_finished(&forwarded);
    let mut resp = forwarded?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let (Some(client), Some(upstream_side)) = (
            client_upgrade,
            resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>(),
        ) {
            tokio::spawn(splice_upgraded(client, upstream_side));
        }
        return Ok(resp);
    }
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

fn is_websocket_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Copy bytes both ways between the client and the upstream once both
/// sides have switched protocols.
async fn splice_upgraded(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Read the body up to `limit`. A declared length above it is refused before
/// a byte is read; a stream that crosses it is refused when it does.
async fn buffer_body(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: usize,
) -> Result<Bytes, Rejection> {
    let too_large =
        || Rejection::error_msg(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(Rejection::error_msg(
            StatusCode::BAD_REQUEST,
            "failed to read request body",
        )),
    }
}

fn prepare_upstream_headers(
    dp: &DataPlane,
    client: &Client,
    st: &mut RequestState,
    websocket: bool,
) {
    let trust_inbound = dp
        .settings
        .trusted_addresses
        .iter()
        .any(|n| n.contains(&st.peer_addr.ip()));
    // X-Forwarded-Host: the Host header as is when it has no port (a cheap
    // shared copy), else the host part of it.
    let host = match st.head.headers.get(header::HOST) {
        Some(v) if !v.as_bytes().contains(&b':') => Some(v.clone()),
        _ => st.host().and_then(|h| HeaderValue::from_str(h).ok()),
    };
    // real-ip may have replaced the peer with the address it vouches for.
    let client_ip = if st.client_ip == client.peer.ip() {
        client.peer_ip.clone()
    } else {
        ip_header_value(st.client_ip)
    };
    let upgrade = websocket
        .then(|| st.head.headers.get(header::UPGRADE).cloned())
        .flatten();
    let headers = &mut st.head.headers;
    strip_hop_by_hop(headers);
    // The gateway answered any 100-continue itself; nginx drops it too.
    headers.remove(header::EXPECT);
    if websocket {
        if let Some(u) = upgrade {
            headers.insert(header::UPGRADE, u);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    set_forwarded(
        headers,
        &Forwarded {
            client_ip: &client_ip,
            scheme: st.scheme,
            host,
            server_port: &client.local_port_value,
            trust_inbound,
        },
    );
}

/// Response hooks of the route's plugins; buffered body rewrites when a
/// plugin asks for them.
async fn finish_response(
    route: &CompiledRoute,
    st: &RequestState,
    resp: Response<RespBody>,
) -> Response<RespBody> {
    if route.plugins.is_empty() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    for plugin in &route.plugins {
        plugin.on_response(st, &mut parts);
    }
    if !route.rewrites_response_body {
        return Response::from_parts(parts, body);
    }
    const MAX_REWRITTEN_BODY: usize = 16 * 1024 * 1024;
    let mut bytes = match Limited::new(body, MAX_REWRITTEN_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return rejection_response(Rejection::error_msg(
                StatusCode::BAD_GATEWAY,
                "upstream response could not be rewritten",
            ));
        }
    };
    for plugin in &route.plugins {
        if plugin.rewrites_response_body() {
            bytes = plugin.on_response_body(st, bytes);
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, RespBody::full(bytes))
}

fn add_state_headers(st: &RequestState, mut resp: Response<RespBody>) -> Response<RespBody> {
    for (k, v) in st.response_headers.iter() {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

/// The log phase: one decision record (docs/decision-record.md) for every
/// request, served or rejected, to metrics, the node's access log and the
/// route's logger plugins. Only queues; never blocks.
fn log_access(
    dp: &DataPlane,
    snapshot: &portcullis_config::Snapshot,
    st: &RequestState,
    trace: &Trace,
    resp: &Response<RespBody>,
) {
    let plugins: &[Arc<dyn portcullis_core::Plugin>] = trace
        .route_index
        .and_then(|i| snapshot.routes.get(i))
        .map_or(&[], |r| &r.plugins);
    let record = portcullis_core::DecisionRecord {
        time: std::time::SystemTime::now(),
        request_id: st.request_id.as_deref(),
        trace_id: trace.span.trace_id(),
        route: trace.route_id.as_ref().map(|_| &*st.route),
        identity: st.identity.as_ref(),
        client_ip: st.client_ip,
        client_port: st.peer_addr.port(),
        scheme: st.scheme,
        method: st.head.method.as_str(),
        host: st.host(),
        // The query string can carry credentials: the encoder drops it.
        path: st.path(),
        query: st.query(),
        status: resp.status().as_u16(),
        latency: trace.started.elapsed(),
        upstream_latency: trace.upstream.latency,
        upstream_addr: trace.upstream.addr.as_deref(),
        upstream_attempts: trace.upstream.attempts,
        bytes_in: st
            .head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or(st.body.as_ref().map(|b| b.len() as u64)),
        bytes_out: resp.body().size_hint().exact(),
        decisions: &st.decisions,
        headers: Some(&st.head.headers),
        encoded: Default::default(),
    };
    portcullis_telemetry::log(st, &record, plugins, dp.access_log.sink());
    trace.span.finish(st, &record, plugins);
    portcullis_audit::observe(&record);
}
