//! An OpenTelemetry collector stand-in: receives OTLP trace exports over
//! HTTP (`POST /v1/traces`, `application/x-protobuf`) or gRPC (the
//! `TraceService/Export` method), decodes them with `opentelemetry-proto`,
//! and keeps every span in a plain form tests can assert on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use serde_json::{Map, Value};

/// One received span, ids in lower-case hex (`parent_span_id` empty for a
/// root span).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub trace_state: String,
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: &'static str,
    /// `unset`, `ok` or `error`.
    pub status: &'static str,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Map<String, Value>,
    /// (name, attributes) in order.
    pub events: Vec<(String, Map<String, Value>)>,
    /// The resource's `service.name`.
    pub service_name: Option<String>,
    /// The instrumentation scope's name.
    pub scope: String,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
}

/// What one export request carried besides the spans.
#[derive(Debug, Clone)]
pub struct Export {
    /// HTTP headers, or gRPC metadata as headers.
    pub headers: http::HeaderMap,
    pub spans: usize,
}

#[derive(Clone)]
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    exports: Arc<Mutex<Vec<Export>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(value).collect()),
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(attributes(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        _ => Value::Null,
    }
}

fn attributes(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Value::Null, value)))
        .collect()
}

/// Flatten an export request into spans.
pub fn decode(req: &ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service_name = rs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .and_then(|a| {
                a.get("service.name")
                    .and_then(Value::as_str)
                    .map(String::from)
            });
        for ss in &rs.scope_spans {
            let scope = ss
                .scope
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            for s in &ss.spans {
                out.push(ReceivedSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    trace_state: s.trace_state.clone(),
                    name: s.name.clone(),
                    kind: match s.kind {
                        1 => "internal",
                        2 => "server",
                        3 => "client",
                        4 => "producer",
                        5 => "consumer",
                        _ => "unspecified",
                    },
                    status: match s.status.as_ref().map(|st| st.code) {
                        Some(1) => "ok",
                        Some(2) => "error",
                        _ => "unset",
                    },
                    start_unix_nano: s.start_time_unix_nano,
                    end_unix_nano: s.end_time_unix_nano,
                    attributes: attributes(&s.attributes),
                    events: s
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attributes(&e.attributes)))
                        .collect(),
                    service_name: service_name.clone(),
                    scope: scope.clone(),
                });
            }
        }
    }
    out
}

impl OtlpReceiver {
    fn empty(addr: SocketAddr) -> OtlpReceiver {
        OtlpReceiver {
            addr,
            spans: Arc::default(),
            exports: Arc::default(),
        }
    }

    fn keep(&self, headers: http::HeaderMap, req: &ExportTraceServiceRequest) {
        let spans = decode(req);
        self.exports.lock().unwrap().push(Export {
            headers,
            spans: spans.len(),
        });
        self.spans.lock().unwrap().extend(spans);
    }

    /// OTLP/HTTP on a free loopback port: `POST /v1/traces` with a protobuf
    /// body answers 200 with an empty `ExportTraceServiceResponse`.
    pub async fn http() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/HTTP receiver");
        let rx = Self::empty(listener.local_addr().expect("local addr"));
        let me = rx.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.answer_http(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        rx
    }

    async fn answer_http(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<Full<Bytes>> {
        let status = |code: u16| {
            http::Response::builder()
                .status(code)
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let (parts, body) = req.into_parts();
        if parts.method != http::Method::POST || parts.uri.path() != "/v1/traces" {
            return status(404);
        }
        let protobuf = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
        if !protobuf {
            return status(415);
        }
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            return status(400);
        };
        let Ok(export) = ExportTraceServiceRequest::decode(body) else {
            return status(400);
        };
        self.keep(parts.headers, &export);
        http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(
                ExportTraceServiceResponse::default().encode_to_vec(),
            )))
            .unwrap()
    }

    /// OTLP/gRPC on a free loopback port (tonic's server).
    pub async fn grpc() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP/gRPC receiver");
        let rx = Self::empty(listener.local_addr().expect("local addr"));
        let svc = TraceServiceServer::new(GrpcTraces(rx.clone()));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming(svc, tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        rx
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Every export request received so far.
    pub fn exports(&self) -> Vec<Export> {
        self.exports.lock().unwrap().clone()
    }

    /// Wait until `done` holds for the spans received (10 s at most), and
    /// return them.
    pub async fn wait_for(&self, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait for the span with this id.
    pub async fn span(&self, span_id: &str) -> Option<ReceivedSpan> {
        self.wait_for(|s| s.iter().any(|s| s.span_id == span_id))
            .await
            .into_iter()
            .find(|s| s.span_id == span_id)
    }
}

struct GrpcTraces(OtlpReceiver);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.keep(headers, request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
