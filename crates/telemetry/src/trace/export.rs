//! The exporter thread: its own current-thread runtime, fed by the bounded
//! queue the request path writes to. Spans are batched the way
//! OpenTelemetry's batch span processor does it (`max_export_batch` spans,
//! or whatever arrived within `scheduled_delay_ms`), converted to
//! OpenTelemetry span data here, off the workers, and sent with
//! `opentelemetry-otlp`'s exporter: OTLP/HTTP protobuf through a small
//! hyper client of ours (no reqwest, no second TLS stack), or OTLP/gRPC
//! over tonic.
//!
//! Counted in `portcullis_sink_records{sink="opentelemetry"}`: `sent`,
//! `dropped` (queue full, counted on the request side), `failed` (the
//! export gave up; its spans are lost). A dead collector costs requests
//! nothing.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SpanExporter as _;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::span::SpanRecord;
use super::SINK_NAME;
use crate::settings::{OtlpProtocol, TracingSettings};
use crate::sink::line::LINGER;

/// Flush requests: each carries the channel its answer goes back on.
static FLUSH: OnceLock<mpsc::UnboundedSender<std::sync::mpsc::SyncSender<()>>> = OnceLock::new();

/// Export what is queued now and wait for it, at most `timeout` (for a
/// clean stop). Returns false when tracing is off or the wait timed out.
pub fn flush(timeout: Duration) -> bool {
    let Some(tx) = FLUSH.get() else {
        return false;
    };
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    if tx.send(done_tx).is_err() {
        return false;
    }
    done_rx.recv_timeout(timeout).is_ok()
}

pub(super) fn spawn(
    settings: TracingSettings,
    rx: mpsc::Receiver<SpanRecord>,
) -> std::io::Result<()> {
    let metrics = &crate::global().metrics;
    let counters = Counters {
        sent: metrics.sink_counter(SINK_NAME, "sent"),
        failed: metrics.sink_counter(SINK_NAME, "failed"),
    };
    let (flush_tx, flush_rx) = mpsc::unbounded_channel();
    let _ = FLUSH.set(flush_tx);
    std::thread::Builder::new()
        .name("otlp-traces".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the OpenTelemetry exporter runtime: traces are not exported");
                    return;
                }
            };
            rt.block_on(run(settings, rx, flush_rx, counters));
        })?;
    Ok(())
}

struct Counters {
    sent: Counter,
    failed: Counter,
}

/// The OTLP/HTTP URL: `endpoint` itself when it names a path, else
/// `/v1/traces` under it (as `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
pub(crate) fn http_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    match endpoint.parse::<http::Uri>() {
        Ok(uri) if uri.path() != "/" && !uri.path().is_empty() => endpoint.to_string(),
        _ => format!("{trimmed}/v1/traces"),
    }
}

/// The gRPC target: scheme and authority only (the service path is fixed).
pub(crate) fn grpc_origin(endpoint: &str) -> String {
    match endpoint.parse::<http::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(s), Some(a)) => format!("{s}://{a}"),
            _ => endpoint.to_string(),
        },
        Err(_) => endpoint.to_string(),
    }
}

fn build(settings: &TracingSettings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let timeout = Duration::from_secs_f64(settings.timeout);
    let exporter = match settings.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(http_traces_url(&settings.endpoint))
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(timeout)
            .with_headers(settings.headers.0.clone().into_iter().collect())
            .with_http_client(OtlpHttpClient::new(timeout))
            .build(),
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in &settings.headers.0 {
                let key =
                    tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| format!("header {name}: not a valid gRPC metadata key"))?;
                let value = value
                    .parse()
                    .map_err(|_| format!("header {name}: not a valid gRPC metadata value"))?;
                metadata.insert(key, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(grpc_origin(&settings.endpoint))
                .with_protocol(Protocol::Grpc)
                .with_timeout(timeout)
                .with_metadata(metadata)
                .build()
        }
    };
    let mut exporter = exporter.map_err(|e| e.to_string())?;
    exporter.set_resource(
        &opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .build(),
    );
    Ok(exporter)
}

async fn run(
    settings: TracingSettings,
    mut rx: mpsc::Receiver<SpanRecord>,
    mut flush_rx: mpsc::UnboundedReceiver<std::sync::mpsc::SyncSender<()>>,
    counters: Counters,
) {
    let exporter = match build(&settings) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the OpenTelemetry exporter: traces are not exported");
            // Keep draining, so the queue's bound still holds, and count.
            while rx.recv().await.is_some() {
                counters.failed.inc();
            }
            return;
        }
    };
    let scope = InstrumentationScope::builder("portcullis")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let mut out = Batcher {
        exporter,
        scope,
        counters,
        timeout: Duration::from_secs_f64(settings.timeout) + Duration::from_secs(1),
        last_warning: None,
    };
    let max = settings.batch.max_export_batch.max(1);
    let delay = Duration::from_millis(settings.batch.scheduled_delay_ms.max(1));
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(max);
    loop {
        // Wait for a first span, or a flush.
        let mut flush_done = None;
        tokio::select! {
            n = rx.recv_many(&mut batch, max) => if n == 0 { return },
            Some(done) = flush_rx.recv() => flush_done = Some(done),
        }
        // Fill the batch until it is full or the first span has waited long enough.
        let deadline = Instant::now() + delay;
        // In slices of LINGER, taking what queued meanwhile: waiting in
        // recv would wake this thread for every span (a futex call and a
        // context switch on the worker that sent it).
        while flush_done.is_none() && batch.len() < max {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.min(now + LINGER)) => {}
                Some(done) = flush_rx.recv() => flush_done = Some(done),
            }
            if !crate::sink::drain(&mut rx, &mut batch, max) {
                break;
            }
        }
        out.export(&mut batch).await;
        if let Some(done) = flush_done {
            loop {
                crate::sink::drain(&mut rx, &mut batch, max);
                if batch.is_empty() {
                    break;
                }
                out.export(&mut batch).await;
            }
            let _ = done.try_send(());
        }
    }
}

struct Batcher {
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
    counters: Counters,
    timeout: Duration,
    last_warning: Option<Instant>,
}

impl Batcher {
    async fn export(&mut self, batch: &mut Vec<SpanRecord>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let redaction = crate::global().redaction();
        let spans: Vec<_> = batch
            .drain(..)
            .flat_map(|r| r.into_spans(redaction, &self.scope))
            .collect();
        let result = tokio::time::timeout(self.timeout, self.exporter.export(spans)).await;
        let error = match result {
            Ok(Ok(())) => {
                self.counters.sent.inc_by(n);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        self.counters.failed.inc_by(n);
        // One warning per half minute is enough to say the collector is away.
        let quiet = self
            .last_warning
            .is_some_and(|t| t.elapsed() < Duration::from_secs(30));
        if !quiet {
            self.last_warning = Some(Instant::now());
            tracing::warn!(error = %error, spans = n, "OpenTelemetry export failed; spans dropped");
        }
    }
}

/// OTLP/HTTP's transport: HTTP/1.1 over plain TCP with one kept-alive
/// connection, on the exporter thread's runtime.
#[derive(Debug)]
struct OtlpHttpClient {
    timeout: Duration,
    conn: Mutex<Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
}

impl OtlpHttpClient {
    fn new(timeout: Duration) -> OtlpHttpClient {
        OtlpHttpClient {
            timeout,
            conn: Mutex::new(None),
        }
    }

    async fn connect(
        authority: &http::uri::Authority,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, opentelemetry_http::HttpError>
    {
        let addr = (authority.host(), authority.port_u16().unwrap_or(80));
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn send(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        let (mut parts, body) = request.into_parts();
        let authority = parts
            .uri
            .authority()
            .cloned()
            .ok_or("the collector endpoint has no host")?;
        // Origin form on the wire, the authority in Host.
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()?;
        parts
            .headers
            .insert(http::header::HOST, authority.as_str().parse()?);
        let cached = self.conn.lock().map(|mut c| c.take()).unwrap_or(None);
        let mut sender = match cached {
            Some(mut s) => match s.ready().await {
                Ok(()) => s,
                Err(_) => Self::connect(&authority).await?,
            },
            None => Self::connect(&authority).await?,
        };
        let resp = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, 4 * 1024 * 1024)
            .collect()
            .await?
            .to_bytes();
        if let Ok(mut c) = self.conn.lock() {
            *c = Some(sender);
        }
        Ok(Response::from_parts(parts, body))
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttpClient {
    async fn send_bytes(
        &self,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, opentelemetry_http::HttpError> {
        match tokio::time::timeout(self.timeout, self.send(request)).await {
            Ok(r) => r,
            Err(_) => Err("the collector did not answer in time".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_completed_per_protocol() {
        assert_eq!(
            http_traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://collector:4318/custom/traces"),
            "http://collector:4318/custom/traces"
        );
        assert_eq!(
            grpc_origin("http://127.0.0.1:4317/x"),
            "http://127.0.0.1:4317"
        );
    }
}
