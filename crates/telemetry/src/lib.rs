//! portcullis telemetry: one decision record per request, its versioned
//! JSON encoding with redaction, Prometheus metrics, and the sinks records
//! go to (stdout, file, HTTP batches, syslog), and OpenTelemetry traces
//! exported over OTLP ([`trace`], docs/tracing.md).
//!
//! The proxy builds a borrowed [`DecisionRecord`] in its log phase and calls
//! [`log`]: metrics are recorded from thread-local handles, the record is
//! encoded once (redacted) and handed to the node's sink and to every
//! logger plugin on the route (their `on_log`), each of which only queues
//! it. Writing happens on the sinks' own threads.

pub mod metrics;
pub mod record;
pub mod redact;
pub mod settings;
pub mod sink;
pub mod trace;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
pub use portcullis_core::decision::{DecisionRecord, RECORD_SCHEMA};
use portcullis_core::{Plugin, RequestState};

pub use metrics::Metrics;
pub use redact::Redaction;
pub use settings::{TelemetrySettings, TracingSettings};
pub use sink::RecordSink;

/// The record's JSON schema, as published in docs/.
pub const SCHEMA_JSON: &str = include_str!("../../../docs/decision-record.schema.json");

/// Process-wide telemetry: the metrics registry and the redaction rules.
pub struct Telemetry {
    pub metrics: Metrics,
    /// Set by [`init`]; records encoded before that use the defaults.
    redaction: OnceLock<Redaction>,
    sink_queue: AtomicUsize,
}

static GLOBAL: OnceLock<Telemetry> = OnceLock::new();

/// Set the node's telemetry settings, before requests are served, and start
/// the trace exporter when tracing is enabled. The first call wins
/// (settings are node settings: they change with a restart, not a reload).
pub fn init(settings: &TelemetrySettings) -> &'static Telemetry {
    let t = global();
    if t.redaction.set(Redaction::from_settings(settings)).is_ok() {
        t.sink_queue
            .store(settings.sink_queue.max(1), Ordering::Relaxed);
        if let Err(e) = trace::start(&settings.tracing) {
            tracing::error!(error = %e, "cannot start the OpenTelemetry exporter: traces are not exported");
        }
    }
    t
}

/// The process's telemetry.
pub fn global() -> &'static Telemetry {
    GLOBAL.get_or_init(|| Telemetry {
        metrics: Metrics::new(),
        redaction: OnceLock::new(),
        sink_queue: AtomicUsize::new(TelemetrySettings::default().sink_queue),
    })
}

impl Telemetry {
    /// The record's redacted JSON line, encoded on first use and shared.
    pub fn encode<'r>(&self, rec: &'r DecisionRecord<'_>) -> &'r Bytes {
        rec.encoded
            .get_or_init(|| record::encode(rec, self.redaction()))
    }

    pub fn redaction(&self) -> &Redaction {
        self.redaction.get_or_init(Redaction::default)
    }

    /// The queue bound of sinks that take the node's default.
    pub fn sink_queue(&self) -> usize {
        self.sink_queue.load(Ordering::Relaxed)
    }
}

/// The record's redacted JSON line (for logger plugins).
pub fn json<'r>(rec: &'r DecisionRecord<'_>) -> &'r Bytes {
    global().encode(rec)
}

/// The log phase: metrics, the node's own sink, then each plugin's
/// `on_log`. Never blocks.
pub fn log(
    req: &RequestState,
    rec: &DecisionRecord<'_>,
    plugins: &[Arc<dyn Plugin>],
    node_sink: Option<&RecordSink>,
) {
    let t = global();
    t.metrics.observe(req, rec);
    if let Some(sink) = node_sink {
        sink.send(t.encode(rec));
    }
    for p in plugins {
        p.on_log(req, rec);
    }
}

/// The trace id for a request: continued from a valid `traceparent`, else
/// new. (The proxy takes it from its [`trace::RequestSpan`].)
pub fn trace_id(headers: &http::HeaderMap) -> [u8; 16] {
    trace::context::traceparent(headers).map_or_else(trace::context::new_trace_id, |p| p.trace_id)
}
