//! The decision record as JSON: schema `portcullis.decision/v1`
//! (docs/decision-record.md, docs/decision-record.schema.json).
//!
//! The encoder writes straight from the borrowed [`DecisionRecord`] into one
//! buffer: no intermediate `serde_json::Value`, no copies of the request's
//! strings. Redaction happens here, so every sink gets the same safe line.

use std::fmt::{self, Display, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use portcullis_core::decision::{DecisionRecord, Outcome, RECORD_SCHEMA};
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use crate::redact::{self, Field, Redaction, REDACTED};

/// Encode the record as one JSON line (ending in `\n`).
pub fn encode(rec: &DecisionRecord<'_>, r: &Redaction) -> Bytes {
    let mut buf = Vec::with_capacity(768);
    // Serializing borrowed strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, &Out { rec, r });
    buf.push(b'\n');
    Bytes::from(buf)
}

struct Out<'a, 'r> {
    rec: &'a DecisionRecord<'r>,
    r: &'a Redaction,
}

fn ms(d: Duration) -> f64 {
    // Three decimals: microsecond resolution is plenty for a log.
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl Serialize for Out<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rec = self.rec;
        let r = self.r;
        let extra =
            usize::from(r.query == crate::settings::QueryMode::Names && rec.query.is_some())
                + usize::from(!r.include_headers.is_empty());
        let mut m = s.serialize_struct("DecisionRecord", 20 + extra)?;
        m.serialize_field("schema", RECORD_SCHEMA)?;
        // Both formatted on the stack and written as plain strings: going
        // through `Display` costs a formatter call per field piece.
        m.serialize_field("time", Rfc3339(rec.time).to_ascii().as_str())?;
        m.serialize_field(
            "request_id",
            &rec.request_id.map(|v| r.field(Field::RequestId, v)),
        )?;
        m.serialize_field("trace_id", hex16(&rec.trace_id).as_str())?;
        m.serialize_field("route", &rec.route.map(|info| RouteOut { info, r }))?;
        m.serialize_field("service", &rec.route.and_then(|i| i.service_id.as_deref()))?;
        m.serialize_field("consumer", &rec.identity.map(|id| ConsumerOut { id, r }))?;
        if r.hides(Field::ClientAddr) {
            m.serialize_field("client_addr", REDACTED)?;
        } else {
            portcullis_core::request::with_ip_text(rec.client_ip, |client| {
                m.serialize_field("client_addr", client)
            })?;
        }
        m.serialize_field("client_port", &rec.client_port)?;
        m.serialize_field("scheme", rec.scheme)?;
        m.serialize_field("method", rec.method)?;
        m.serialize_field(
            "host",
            &rec.host.map(|h| redact::scrub(r.field(Field::Host, h))),
        )?;
        m.serialize_field("path", &redact::scrub(r.field(Field::Path, rec.path)))?;
        if r.query == crate::settings::QueryMode::Names {
            if let Some(q) = rec.query {
                m.serialize_field("query", &QueryOut(q))?;
            }
        }
        m.serialize_field("status", &rec.status)?;
        m.serialize_field(
            "latency",
            &LatencyOut {
                total: rec.latency,
                upstream: rec.upstream_latency,
            },
        )?;
        m.serialize_field(
            "upstream",
            &(rec.upstream_attempts > 0).then_some(UpstreamOut { rec, r }),
        )?;
        m.serialize_field(
            "bytes",
            &BytesOut {
                bytes_in: rec.bytes_in,
                bytes_out: rec.bytes_out,
            },
        )?;
        m.serialize_field("decisions", &DecisionsOut { rec, r })?;
        if !r.include_headers.is_empty() {
            m.serialize_field("headers", &HeadersOut { rec, r })?;
        }
        m.end()
    }
}

struct RouteOut<'a> {
    info: &'a portcullis_core::request::RouteInfo,
    r: &'a Redaction,
}

impl Serialize for RouteOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Route", 4)?;
        m.serialize_field("id", &*self.info.id)?;
        m.serialize_field("name", &self.info.name.as_deref())?;
        if self.r.hides(Field::RouteLabels) {
            m.serialize_field("labels", REDACTED)?;
        } else {
            m.serialize_field("labels", &self.info.labels)?;
        }
        m.serialize_field("tier", &self.info.labels.get("tier"))?;
        m.end()
    }
}

struct ConsumerOut<'a> {
    id: &'a portcullis_core::consumer::Identity,
    r: &'a Redaction,
}

impl Serialize for ConsumerOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.r;
        let c = &self.id.consumer;
        let mut m = s.serialize_struct("Consumer", 4)?;
        m.serialize_field("username", r.field(Field::ConsumerUsername, &c.username))?;
        m.serialize_field(
            "group",
            &c.group_id
                .as_deref()
                .map(|g| r.field(Field::ConsumerGroup, g)),
        )?;
        m.serialize_field(
            "credential_id",
            &self
                .id
                .credential_id
                .as_deref()
                .map(|g| r.field(Field::ConsumerCredentialId, g)),
        )?;
        m.serialize_field("authenticated_by", self.id.authenticated_by)?;
        m.end()
    }
}

struct QueryOut<'a>(&'a str);

impl Serialize for QueryOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for name in redact::query_names(self.0) {
            m.serialize_entry(&name, REDACTED)?;
        }
        m.end()
    }
}

struct LatencyOut {
    total: Duration,
    upstream: Option<Duration>,
}

impl Serialize for LatencyOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Latency", 3)?;
        m.serialize_field("total_ms", &ms(self.total))?;
        m.serialize_field("upstream_ms", &self.upstream.map(ms))?;
        m.serialize_field(
            "gateway_ms",
            &ms(self.total.saturating_sub(self.upstream.unwrap_or_default())),
        )?;
        m.end()
    }
}

struct UpstreamOut<'a, 'r> {
    rec: &'a DecisionRecord<'r>,
    r: &'a Redaction,
}

impl Serialize for UpstreamOut<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Upstream", 2)?;
        m.serialize_field(
            "addr",
            &self
                .rec
                .upstream_addr
                .map(|a| self.r.field(Field::UpstreamAddr, a)),
        )?;
        m.serialize_field("attempts", &self.rec.upstream_attempts)?;
        m.end()
    }
}

struct BytesOut {
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
}

impl Serialize for BytesOut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Bytes", 2)?;
        m.serialize_field("in", &self.bytes_in)?;
        m.serialize_field("out", &self.bytes_out)?;
        m.end()
    }
}

struct DecisionsOut<'a, 'r> {
    rec: &'a DecisionRecord<'r>,
    r: &'a Redaction,
}

impl Serialize for DecisionsOut<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.rec.decisions.len()))?;
        for d in self.rec.decisions {
            seq.serialize_element(&DecisionOut { d, r: self.r })?;
        }
        seq.end()
    }
}

struct DecisionOut<'a> {
    d: &'a portcullis_core::Decision,
    r: &'a Redaction,
}

impl Serialize for DecisionOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.d;
        let n = 4 + usize::from(d.limit.is_some()) * 2;
        let mut m = s.serialize_struct("Decision", n)?;
        m.serialize_field("plugin", d.plugin)?;
        m.serialize_field("result", d.outcome.as_str())?;
        m.serialize_field(
            "reason",
            &d.reason
                .as_deref()
                .map(|v| redact::scrub(self.r.field(Field::DecisionReason, v))),
        )?;
        m.serialize_field("dry_run", &(d.outcome == Outcome::WouldReject))?;
        if let Some(l) = d.limit {
            m.serialize_field("limit", &l.limit)?;
            m.serialize_field("remaining", &l.remaining)?;
        }
        m.end()
    }
}

struct HeadersOut<'a, 'r> {
    rec: &'a DecisionRecord<'r>,
    r: &'a Redaction,
}

impl Serialize for HeadersOut<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(headers) = self.rec.headers {
            for name in &self.r.include_headers {
                let Some(v) = headers.get(name) else { continue };
                let value = v.to_str().unwrap_or("[binary]");
                m.serialize_entry(name.as_str(), &redact::header_value(self.r, name, value))?;
            }
        }
        m.end()
    }
}

/// Lower-case hex of a byte string.
pub struct Hex<'a>(pub &'a [u8]);

impl Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Up to 32 ASCII bytes, formatted on the stack.
pub struct Ascii<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Ascii<N> {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, letters and punctuation are ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// A 16-byte id as 32 lowercase hex digits.
pub fn hex16(id: &[u8; 16]) -> Ascii<32> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in id.iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(b >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    Ascii { buf, len: 32 }
}

/// `2024-05-01T12:00:00.123Z`.
pub struct Rfc3339(pub SystemTime);

impl Rfc3339 {
    /// The same text as `Display`, without the formatter.
    pub fn to_ascii(&self) -> Ascii<24> {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, mo, da) = civil_from_days(days as i64);
        let mut buf = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y.clamp(0, 9999) as u64);
        put(5, 2, u64::from(mo));
        put(8, 2, u64::from(da));
        put(11, 2, rem / 3600);
        put(14, 2, rem % 3600 / 60);
        put(17, 2, rem % 60);
        put(20, 3, u64::from(d.subsec_millis()));
        Ascii { buf, len: 24 }
    }
}

impl Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, mo, da) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{mo:02}-{da:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The trace id of the request: the one in a valid W3C `traceparent`, or a
/// new random one.
pub fn trace_id(headers: &http::HeaderMap) -> [u8; 16] {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent)
        .unwrap_or_else(|| {
            let mut id = [0u8; 16];
            while id == [0u8; 16] {
                id = rand::random();
            }
            id
        })
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; an all-zero
/// trace id is invalid.
pub fn parse_traceparent(v: &str) -> Option<[u8; 16]> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || parent.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, chunk) in trace.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        id[i] = u8::from_str_radix(s, 16).ok()?;
    }
    (id != [0u8; 16]).then_some(id)
}

/// The time as the record writes it (for sinks that stamp their own).
pub fn now_rfc3339() -> String {
    let mut s = String::with_capacity(24);
    let _ = write!(s, "{}", Rfc3339(SystemTime::now()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::decision::{Decision, LimitState};
    use portcullis_core::request::RouteInfo;
    use std::sync::{Arc, OnceLock};

    fn record<'a>(
        route: Option<&'a RouteInfo>,
        decisions: &'a [Decision],
        headers: &'a http::HeaderMap,
    ) -> DecisionRecord<'a> {
        DecisionRecord {
            time: UNIX_EPOCH + Duration::from_millis(1_714_564_800_123),
            request_id: Some("req-1"),
            trace_id: [0xab; 16],
            route,
            identity: None,
            client_ip: "10.1.2.3".parse().unwrap(),
            client_port: 4444,
            scheme: "http",
            method: "GET",
            host: Some("api.example.com"),
            path: "/orders/42",
            query: Some("apikey=s3cret&page=2"),
            status: 429,
            latency: Duration::from_micros(1500),
            upstream_latency: None,
            upstream_addr: None,
            upstream_attempts: 0,
            bytes_in: Some(0),
            bytes_out: Some(40),
            decisions,
            headers: Some(headers),
            encoded: OnceLock::new(),
        }
    }

    #[test]
    fn time_is_rfc3339_utc_with_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_714_564_800_123);
        assert_eq!(Rfc3339(t).to_string(), "2024-05-01T12:00:00.123Z");
        assert_eq!(Rfc3339(t).to_ascii().as_str(), "2024-05-01T12:00:00.123Z");
        assert_eq!(
            Rfc3339(UNIX_EPOCH).to_ascii().as_str(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(Rfc3339(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn traceparent_is_continued_and_bad_ones_replaced() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let id = parse_traceparent(tp).unwrap();
        assert_eq!(Hex(&id).to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex16(&id).as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", tp.parse().unwrap());
        assert_eq!(trace_id(&h), id);
        assert_ne!(trace_id(&http::HeaderMap::new()), [0; 16]);
    }

    #[test]
    fn record_encodes_to_the_v1_shape_without_secrets() {
        let info = RouteInfo {
            id: Arc::from("r1"),
            name: Some(Arc::from("orders")),
            service_id: Some(Arc::from("s1")),
            labels: [("tier".to_string(), "customer_data_api".to_string())].into(),
        };
        let decisions = [Decision {
            plugin: "limit-count",
            outcome: Outcome::Reject,
            reason: Some("rate exceeded".into()),
            limit: Some(LimitState {
                limit: 2,
                remaining: 0,
            }),
        }];
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        headers.insert("user-agent", "curl/8".parse().unwrap());
        let rec = record(Some(&info), &decisions, &headers);

        let mut s = crate::settings::TelemetrySettings::default();
        let line = encode(&rec, &Redaction::from_settings(&s));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["schema"], "portcullis.decision/v1");
        assert_eq!(v["time"], "2024-05-01T12:00:00.123Z");
        assert_eq!(v["trace_id"], "abababababababababababababababab");
        assert_eq!(v["route"]["tier"], "customer_data_api");
        assert_eq!(v["service"], "s1");
        assert_eq!(v["path"], "/orders/42");
        assert!(v.get("query").is_none());
        assert!(v.get("headers").is_none());
        assert_eq!(v["decisions"][0]["limit"], 2);
        assert_eq!(v["decisions"][0]["remaining"], 0);
        assert_eq!(v["latency"]["total_ms"], 1.5);
        assert!(!String::from_utf8_lossy(&line).contains("s3cret"));

        s.query = crate::settings::QueryMode::Names;
        s.include_headers = vec!["authorization".into(), "user-agent".into()];
        let line = encode(&rec, &Redaction::from_settings(&s));
        let text = String::from_utf8_lossy(&line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["query"]["apikey"], "[redacted]");
        assert_eq!(v["headers"]["authorization"], "[redacted]");
        assert_eq!(v["headers"]["user-agent"], "curl/8");
        assert!(!text.contains("s3cret") && !text.contains("abc.def"));
    }

    #[test]
    fn the_published_schema_accepts_an_encoded_record() {
        let schema: serde_json::Value =
            serde_json::from_str(crate::SCHEMA_JSON).expect("schema is JSON");
        assert_eq!(
            schema["properties"]["schema"]["const"],
            "portcullis.decision/v1"
        );
        let headers = http::HeaderMap::new();
        let rec = record(None, &[], &headers);
        let line = encode(&rec, &Redaction::default());
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        // Every property the record writes is described, and every required one is written.
        let props = schema["properties"].as_object().unwrap();
        for k in v.as_object().unwrap().keys() {
            assert!(props.contains_key(k), "{k} is not in the schema");
        }
        for k in schema["required"].as_array().unwrap() {
            assert!(v.get(k.as_str().unwrap()).is_some(), "{k} is required");
        }
    }
}
