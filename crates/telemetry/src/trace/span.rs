//! A recorded request as a plain struct, and its OpenTelemetry spans.
//!
//! The request path only fills a [`SpanRecord`]: ids, times and the
//! request's own values (shared `Arc`s, a few short strings). The exporter
//! thread turns it into a SERVER span (HTTP semantic conventions, one event
//! per decision) and, when the request went upstream, a CLIENT child span;
//! naming, attributes and redaction all happen there.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use portcullis_core::consumer::Identity;
use portcullis_core::decision::Decision;
use portcullis_core::request::RouteInfo;

use crate::redact::{self, Field, Redaction};

/// What the exporter needs to know about one sampled request.
pub(crate) struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span when the trace was continued.
    pub parent_id: Option<[u8; 8]>,
    pub tracestate: Option<HeaderValue>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: http::Method,
    pub version: http::Version,
    pub scheme: &'static str,
    /// The matched route's uri pattern (`/orders/:id`).
    pub route_template: Option<Box<str>>,
    pub route: Option<Arc<RouteInfo>>,
    pub path: Box<str>,
    pub host: Option<Box<str>>,
    pub user_agent: Option<HeaderValue>,
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub status: u16,
    pub request_id: Option<Arc<str>>,
    pub identity: Option<Identity>,
    /// Each enforcing plugin's decision, with the phase it ran in.
    pub decisions: Vec<(&'static str, Decision)>,
    /// When the phases were done: the upstream call's start, or the answer.
    pub decided_at: SystemTime,
    pub upstream: Option<UpstreamCall>,
}

/// The call to the upstream: every attempt, from the first node pick to the
/// response head (or the last failure).
pub(crate) struct UpstreamCall {
    pub span_id: [u8; 8],
    pub start: SystemTime,
    pub end: SystemTime,
    /// The last node tried, `host:port`.
    pub addr: Option<Box<str>>,
    pub attempts: u32,
    /// The last attempt alone.
    pub last_attempt: Option<Duration>,
    /// The upstream's status, or the gateway's 502/504 when none came.
    pub outcome: Result<u16, u16>,
}

/// The overall verdict written as `portcullis.decision`.
fn verdict(rec: &SpanRecord) -> &'static str {
    let rejected = rec
        .decisions
        .iter()
        .any(|(_, d)| d.outcome == portcullis_core::decision::Outcome::Reject);
    if rejected || (rec.upstream.is_none() && rec.status >= 400) {
        "reject"
    } else {
        "allow"
    }
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `host:port` → (`host`, port); `[v6]:port` keeps the address bare.
fn split_authority(a: &str) -> (&str, Option<i64>) {
    match a.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse().ok(),
        ),
        _ => (a, None),
    }
}

fn text(s: Cow<'_, str>) -> opentelemetry::Value {
    opentelemetry::Value::from(s.into_owned())
}

impl SpanRecord {
    /// The request's spans: the SERVER span, then the upstream CLIENT span.
    pub fn into_spans(self, r: &Redaction, scope: &InstrumentationScope) -> Vec<SpanData> {
        let trace_id = TraceId::from_bytes(self.trace_id);
        let trace_state = self
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<TraceState>().ok())
            .unwrap_or_default();
        let context = |span_id: [u8; 8]| {
            SpanContext::new(
                trace_id,
                SpanId::from_bytes(span_id),
                TraceFlags::SAMPLED,
                false,
                trace_state.clone(),
            )
        };
        let method = self.method.as_str().to_owned();
        let mut spans = Vec::with_capacity(2);

        if let Some(up) = &self.upstream {
            let mut attrs = vec![
                KeyValue::new("http.request.method", method.clone()),
                KeyValue::new("portcullis.upstream.attempts", i64::from(up.attempts)),
            ];
            if let Some(addr) = up.addr.as_deref() {
                let shown = r.field(Field::UpstreamAddr, addr);
                let (host, port) = split_authority(shown);
                attrs.push(KeyValue::new("server.address", host.to_owned()));
                attrs.push(KeyValue::new("network.peer.address", host.to_owned()));
                if let Some(port) = port {
                    attrs.push(KeyValue::new("server.port", port));
                    attrs.push(KeyValue::new("network.peer.port", port));
                }
            }
            if let Some(d) = up.last_attempt {
                attrs.push(KeyValue::new(
                    "portcullis.upstream.last_attempt_ms",
                    d.as_secs_f64() * 1000.0,
                ));
            }
            let status = match up.outcome {
                Ok(code) => {
                    attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
                    if code >= 400 {
                        attrs.push(KeyValue::new("error.type", code.to_string()));
                        Status::error("")
                    } else {
                        Status::Unset
                    }
                }
                Err(code) => {
                    let kind = if code == 504 {
                        "timeout"
                    } else {
                        "upstream_unavailable"
                    };
                    attrs.push(KeyValue::new("error.type", kind));
                    Status::error(kind)
                }
            };
            spans.push(SpanData {
                span_context: context(up.span_id),
                parent_span_id: SpanId::from_bytes(self.span_id),
                parent_span_is_remote: false,
                span_kind: SpanKind::Client,
                name: Cow::Owned(method.clone()),
                start_time: up.start,
                end_time: up.end.max(up.start),
                attributes: attrs,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status,
                instrumentation_scope: scope.clone(),
            });
        }

        let name = match self.route_template.as_deref() {
            Some(t) => format!("{method} {t}"),
            None => method.clone(),
        };
        let mut attrs = Vec::with_capacity(20);
        attrs.push(KeyValue::new("http.request.method", method));
        attrs.push(KeyValue::new("url.scheme", self.scheme));
        attrs.push(KeyValue::new(
            "url.path",
            text(redact::scrub(r.field(Field::Path, &self.path))),
        ));
        attrs.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(self.version),
        ));
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(self.status),
        ));
        if let Some(t) = self.route_template.as_deref() {
            attrs.push(KeyValue::new("http.route", t.to_owned()));
        }
        if let Some(h) = self.host.as_deref() {
            attrs.push(KeyValue::new(
                "server.address",
                text(redact::scrub(r.field(Field::Host, h))),
            ));
        }
        if !r.hides(Field::ClientAddr) {
            attrs.push(KeyValue::new("client.address", self.client_ip.to_string()));
            attrs.push(KeyValue::new("client.port", i64::from(self.client_port)));
        }
        if let Some(ua) = self.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
            attrs.push(KeyValue::new(
                "user_agent.original",
                text(redact::scrub(ua)),
            ));
        }
        if let Some(route) = &self.route {
            attrs.push(KeyValue::new("portcullis.route_id", route.id.to_string()));
            if let Some(n) = &route.name {
                attrs.push(KeyValue::new("portcullis.route_name", n.to_string()));
            }
            if let Some(s) = &route.service_id {
                attrs.push(KeyValue::new("portcullis.service_id", s.to_string()));
            }
            if let Some(tier) = route.labels.get("tier") {
                attrs.push(KeyValue::new("portcullis.tier", tier.clone()));
            }
        }
        if let Some(id) = &self.identity {
            attrs.push(KeyValue::new(
                "portcullis.consumer",
                r.field(Field::ConsumerUsername, &id.consumer.username)
                    .to_owned(),
            ));
            attrs.push(KeyValue::new(
                "portcullis.authenticated_by",
                id.authenticated_by,
            ));
        }
        if let Some(req_id) = &self.request_id {
            attrs.push(KeyValue::new(
                "portcullis.request_id",
                r.field(Field::RequestId, req_id).to_owned(),
            ));
        }
        attrs.push(KeyValue::new("portcullis.decision", verdict(&self)));
        if let Some(up) = &self.upstream {
            if let Some(addr) = up.addr.as_deref() {
                attrs.push(KeyValue::new(
                    "portcullis.upstream.address",
                    r.field(Field::UpstreamAddr, addr).to_owned(),
                ));
            }
        }
        let status = if self.status >= 500 {
            attrs.push(KeyValue::new("error.type", self.status.to_string()));
            Status::error("")
        } else {
            Status::Unset
        };

        let events = self
            .decisions
            .iter()
            .map(|(phase, d)| {
                let mut a = vec![
                    KeyValue::new("portcullis.plugin", d.plugin),
                    KeyValue::new("portcullis.result", d.outcome.as_str()),
                ];
                if let Some(reason) = d.reason.as_deref() {
                    a.push(KeyValue::new(
                        "portcullis.reason",
                        text(redact::scrub(r.field(Field::DecisionReason, reason))),
                    ));
                }
                if let Some(l) = d.limit {
                    a.push(KeyValue::new(
                        "portcullis.limit",
                        i64::try_from(l.limit).unwrap_or(i64::MAX),
                    ));
                    a.push(KeyValue::new(
                        "portcullis.remaining",
                        i64::try_from(l.remaining).unwrap_or(i64::MAX),
                    ));
                }
                opentelemetry::trace::Event::new(*phase, self.decided_at, a, 0)
            })
            .collect();

        spans.push(SpanData {
            span_context: context(self.span_id),
            parent_span_id: self.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.parent_id.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(name),
            start_time: self.start,
            end_time: self.end.max(self.start),
            attributes: attrs,
            dropped_attributes_count: 0,
            events: {
                let mut e = SpanEvents::default();
                e.events = events;
                e
            },
            links: SpanLinks::default(),
            status,
            instrumentation_scope: scope.clone(),
        });
        spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::decision::{LimitState, Outcome};

    fn record() -> SpanRecord {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        SpanRecord {
            trace_id: [0x4b; 16],
            span_id: [1; 8],
            parent_id: Some([2; 8]),
            tracestate: Some(HeaderValue::from_static("rojo=00f067aa0ba902b7")),
            start: t0,
            end: t0 + Duration::from_millis(5),
            method: http::Method::GET,
            version: http::Version::HTTP_11,
            scheme: "http",
            route_template: Some("/orders/:id".into()),
            route: Some(Arc::new(RouteInfo {
                id: Arc::from("orders"),
                name: Some(Arc::from("orders-api")),
                service_id: None,
                labels: [("tier".to_string(), "customer_data_api".to_string())].into(),
            })),
            path: "/orders/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl".into(),
            host: Some("api.example.com".into()),
            user_agent: Some(HeaderValue::from_static("curl/8")),
            client_ip: "10.1.2.3".parse().unwrap(),
            client_port: 5555,
            status: 200,
            request_id: None,
            identity: None,
            decisions: vec![(
                "limit",
                Decision {
                    plugin: "limit-count",
                    outcome: Outcome::Allow,
                    reason: None,
                    limit: Some(LimitState {
                        limit: 10,
                        remaining: 9,
                    }),
                },
            )],
            decided_at: t0 + Duration::from_millis(1),
            upstream: Some(UpstreamCall {
                span_id: [3; 8],
                start: t0 + Duration::from_millis(1),
                end: t0 + Duration::from_millis(4),
                addr: Some("127.0.0.1:8080".into()),
                attempts: 1,
                last_attempt: Some(Duration::from_millis(3)),
                outcome: Ok(200),
            }),
        }
    }

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn a_request_becomes_a_server_span_and_an_upstream_client_span() {
        let scope = InstrumentationScope::builder("portcullis").build();
        let spans = record().into_spans(&Redaction::default(), &scope);
        assert_eq!(spans.len(), 2);
        let (client, server) = (&spans[0], &spans[1]);
        assert_eq!(server.name, "GET /orders/:id");
        assert_eq!(server.span_kind, SpanKind::Server);
        assert_eq!(server.parent_span_id, SpanId::from_bytes([2; 8]));
        assert!(server.parent_span_is_remote);
        assert_eq!(
            server.span_context.trace_state().header(),
            "rojo=00f067aa0ba902b7"
        );
        assert_eq!(attr(server, "http.route").unwrap().as_str(), "/orders/:id");
        assert_eq!(
            attr(server, "url.path").unwrap().as_str(),
            "/orders/[redacted]"
        );
        assert_eq!(
            attr(server, "portcullis.route_id").unwrap().as_str(),
            "orders"
        );
        assert_eq!(
            attr(server, "portcullis.decision").unwrap().as_str(),
            "allow"
        );
        assert_eq!(server.events.len(), 1);
        assert_eq!(server.events[0].name, "limit");
        assert_eq!(server.status, Status::Unset);

        assert_eq!(client.span_kind, SpanKind::Client);
        assert_eq!(client.parent_span_id, SpanId::from_bytes([1; 8]));
        assert_eq!(
            client.span_context.trace_id(),
            server.span_context.trace_id()
        );
        assert_eq!(
            attr(client, "network.peer.address").unwrap().as_str(),
            "127.0.0.1"
        );
    }

    #[test]
    fn redacted_fields_stay_out_and_5xx_is_an_error() {
        let s = crate::settings::TelemetrySettings {
            redact: crate::settings::RedactSettings {
                headers: vec![],
                fields: vec!["client_addr".into(), "upstream.addr".into()],
            },
            ..Default::default()
        };
        let r = Redaction::from_settings(&s);
        let mut rec = record();
        rec.status = 502;
        rec.upstream.as_mut().unwrap().outcome = Err(502);
        let scope = InstrumentationScope::builder("portcullis").build();
        let spans = rec.into_spans(&r, &scope);
        let (client, server) = (&spans[0], &spans[1]);
        assert!(attr(server, "client.address").is_none());
        assert_eq!(
            attr(server, "portcullis.upstream.address")
                .unwrap()
                .as_str(),
            "[redacted]"
        );
        assert!(matches!(server.status, Status::Error { .. }));
        assert!(matches!(client.status, Status::Error { .. }));
        assert_eq!(
            attr(client, "network.peer.address").unwrap().as_str(),
            "[redacted]"
        );
    }

    #[test]
    fn authority_split() {
        assert_eq!(split_authority("10.0.0.1:80"), ("10.0.0.1", Some(80)));
        assert_eq!(split_authority("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_authority("example.com"), ("example.com", None));
    }
}
