//! OpenTelemetry traces (docs/tracing.md): W3C trace context continued or
//! started, passed to the upstream, and one SERVER span per request (with a
//! CLIENT child for the upstream call) exported over OTLP/HTTP or OTLP/gRPC.
//!
//! The cost on the request path is what the mode asks for, and no more:
//!
//! - tracing off: read the client's `traceparent` for the record's
//!   `trace_id` (or make a random id); the header passes through untouched;
//! - on, not sampled: the same, plus a new `traceparent` (flags `00`) for
//!   the upstream when the client sent none; nothing is recorded;
//! - on, sampled: two new span ids and our `traceparent` for the upstream;
//!   at the log phase one plain [`span::SpanRecord`] is queued for the
//!   exporter thread, which builds the OpenTelemetry spans, batches and
//!   exports them. A full queue drops the span and counts it
//!   (`portcullis_sink_records{sink="opentelemetry",result="dropped"}`).
//!
//! The proxy holds one [`RequestSpan`] per request and calls, in order,
//! [`RequestSpan::start`], [`RequestSpan::set_route`],
//! [`RequestSpan::inject`], [`RequestSpan::upstream_started`] /
//! [`RequestSpan::upstream_finished`], then [`RequestSpan::finish`].

pub mod context;
mod export;
pub(crate) mod span;

use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use portcullis_core::decision::DecisionRecord;
use portcullis_core::{Plugin, Rejection, RequestState};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::settings::TracingSettings;
use context::{Sampler, TraceParent};
pub use export::flush;
use span::{SpanRecord, UpstreamCall};

/// The name traces go by in `portcullis_sink_records`.
pub const SINK_NAME: &str = "opentelemetry";

/// The node's tracer: the sampler and the exporter's queue. Set once at
/// start-up when tracing is enabled; absent otherwise.
struct Tracer {
    sampler: Sampler,
    tx: mpsc::Sender<SpanRecord>,
    dropped: Counter,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Start the exporter thread and turn tracing on for every request from
/// now on. Does nothing when `settings.enabled` is false; the first call
/// wins.
pub fn start(settings: &TracingSettings) -> std::io::Result<()> {
    if !settings.enabled || TRACER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel(settings.batch.max_queue.max(1));
    export::spawn(settings.clone(), rx)?;
    let _ = TRACER.set(Tracer {
        sampler: Sampler::new(settings.sampler_ratio, settings.parent_based),
        tx,
        dropped: crate::global().metrics.sink_counter(SINK_NAME, "dropped"),
    });
    Ok(())
}

/// Whether requests are being traced (the exporter is running).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// One request's trace context.
pub struct RequestSpan {
    trace_id: [u8; 16],
    mode: Mode,
}

enum Mode {
    /// Tracing is off: a plain proxy, the client's headers untouched.
    Off,
    /// Not sampled. `continued`: the client's `traceparent` goes upstream
    /// as it came; otherwise a new one, flags `00`.
    Unsampled {
        continued: bool,
    },
    Recording(Box<Recording>),
}

struct Recording {
    started: Instant,
    parent: Option<[u8; 8]>,
    span_id: [u8; 8],
    client_span_id: [u8; 8],
    tracestate: Option<HeaderValue>,
    route_template: Option<Box<str>>,
    upstream_start: Option<Instant>,
    upstream_end: Option<(Instant, Result<u16, u16>)>,
}

impl RequestSpan {
    /// Read the client's trace context and decide whether to record.
    pub fn start(headers: &HeaderMap) -> RequestSpan {
        let parent = context::traceparent(headers);
        let trace_id = parent.map_or_else(context::new_trace_id, |p| p.trace_id);
        let Some(tracer) = TRACER.get() else {
            return RequestSpan {
                trace_id,
                mode: Mode::Off,
            };
        };
        if !tracer.sampler.sample(parent.as_ref(), &trace_id) {
            return RequestSpan {
                trace_id,
                mode: Mode::Unsampled {
                    continued: parent.is_some(),
                },
            };
        }
        RequestSpan {
            trace_id,
            mode: Mode::Recording(Box::new(Recording::new(parent, headers))),
        }
    }

    /// The W3C trace id: the record's `trace_id`.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// Whether this request's spans will be exported.
    pub fn is_recording(&self) -> bool {
        matches!(self.mode, Mode::Recording(_))
    }

    /// The span id of the request's SERVER span, when recording.
    pub fn span_id(&self) -> Option<[u8; 8]> {
        match &self.mode {
            Mode::Recording(r) => Some(r.span_id),
            _ => None,
        }
    }

    /// The matched route's uri pattern, for the span's name and `http.route`.
    pub fn set_route(&mut self, uri_template: &str) {
        if let Mode::Recording(r) = &mut self.mode {
            r.route_template = Some(uri_template.into());
        }
    }

    /// Set the trace context the upstream gets, on the request headers
    /// about to be forwarded.
    pub fn inject(&self, headers: &mut HeaderMap) {
        match &self.mode {
            Mode::Off | Mode::Unsampled { continued: true } => {}
            Mode::Unsampled { continued: false } => {
                let span = context::new_span_id();
                headers.insert(
                    context::TRACEPARENT,
                    context::format_traceparent(&self.trace_id, &span, false),
                );
                // A new trace: whatever state came with an invalid parent
                // belongs to another.
                headers.remove(context::TRACESTATE);
            }
            Mode::Recording(r) => {
                headers.insert(
                    context::TRACEPARENT,
                    context::format_traceparent(&self.trace_id, &r.client_span_id, true),
                );
                match &r.tracestate {
                    Some(ts) => {
                        headers.insert(context::TRACESTATE, ts.clone());
                    }
                    None => {
                        headers.remove(context::TRACESTATE);
                    }
                }
            }
        }
    }

    /// The upstream call begins (node choice, connection, every attempt).
    pub fn upstream_started(&mut self) {
        if let Mode::Recording(r) = &mut self.mode {
            r.upstream_start = Some(Instant::now());
        }
    }

    /// The upstream call ended with a response head or the gateway's own
    /// 502/503/504.
    pub fn upstream_finished<B>(&mut self, result: &Result<http::Response<B>, Rejection>) {
        if let Mode::Recording(r) = &mut self.mode {
            let outcome = match result {
                Ok(resp) => Ok(resp.status().as_u16()),
                Err(rej) => Err(rej.status.as_u16()),
            };
            r.upstream_end = Some((Instant::now(), outcome));
        }
    }

    /// The log phase: queue the request's span for export. Never blocks;
    /// a full queue drops it and counts it.
    pub fn finish(
        &self,
        req: &RequestState,
        rec: &DecisionRecord<'_>,
        plugins: &[Arc<dyn Plugin>],
    ) {
        let Mode::Recording(r) = &self.mode else {
            return;
        };
        let Some(tracer) = TRACER.get() else {
            return;
        };
        let record = r.to_record(self.trace_id, req, rec, plugins);
        if tracer.tx.try_send(record).is_err() {
            tracer.dropped.inc();
        }
    }
}

impl Recording {
    fn new(parent: Option<TraceParent>, headers: &HeaderMap) -> Recording {
        Recording {
            started: Instant::now(),
            parent: parent.map(|p| p.parent_id),
            span_id: context::new_span_id(),
            client_span_id: context::new_span_id(),
            // State belongs to the trace it came with: kept only when we
            // continue that trace.
            tracestate: parent.and_then(|_| context::bounded_tracestate(headers)),
            route_template: None,
            upstream_start: None,
            upstream_end: None,
        }
    }

    fn to_record(
        &self,
        trace_id: [u8; 16],
        req: &RequestState,
        rec: &DecisionRecord<'_>,
        plugins: &[Arc<dyn Plugin>],
    ) -> SpanRecord {
        // Every time is taken on the monotonic clock and placed on the wall
        // clock from one reading of both, so the spans nest exactly. The
        // response head was ready `rec.latency` after the request came.
        let (now, wall) = (Instant::now(), SystemTime::now());
        let at = |i: Instant| match i.checked_duration_since(now) {
            Some(ahead) => wall + ahead,
            None => wall - now.duration_since(i),
        };
        let end = at(self.started + rec.latency);
        let upstream = self.upstream_start.map(|started| {
            let (ended, outcome) = self.upstream_end.unwrap_or((now, Err(rec.status)));
            UpstreamCall {
                span_id: self.client_span_id,
                start: at(started),
                end: at(ended),
                addr: rec.upstream_addr.map(Into::into),
                attempts: rec.upstream_attempts,
                last_attempt: rec.upstream_latency,
                outcome,
            }
        });
        let decided_at = upstream.as_ref().map_or(end, |u| u.start);
        let phase_of = |plugin: &str| {
            plugins
                .iter()
                .find(|p| p.name() == plugin)
                .map_or("decision", |p| phase_name(p.phase()))
        };
        SpanRecord {
            trace_id,
            span_id: self.span_id,
            parent_id: self.parent,
            tracestate: self.tracestate.clone(),
            start: at(self.started),
            end,
            method: req.head.method.clone(),
            version: req.head.version,
            scheme: rec.scheme,
            route_template: self.route_template.clone(),
            route: rec.route.is_some().then(|| req.route.clone()),
            path: rec.path.into(),
            host: rec.host.map(Into::into),
            user_agent: req.head.headers.get(http::header::USER_AGENT).cloned(),
            client_ip: rec.client_ip,
            client_port: rec.client_port,
            status: rec.status,
            request_id: req.request_id.clone(),
            identity: req.identity.clone(),
            decisions: rec
                .decisions
                .iter()
                .map(|d| (phase_of(d.plugin), d.clone()))
                .collect(),
            decided_at,
            upstream,
        }
    }
}

/// The event name of a decision: the phase its plugin runs in.
fn phase_name(p: portcullis_core::Phase) -> &'static str {
    use portcullis_core::Phase;
    match p {
        Phase::Rewrite => "rewrite",
        Phase::Authenticate => "authenticate",
        Phase::Authorize => "authorize",
        Phase::Limit => "limit",
        Phase::Validate => "validate",
        Phase::BeforeProxy => "before_proxy",
    }
}
