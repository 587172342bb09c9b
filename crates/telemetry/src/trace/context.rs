//! W3C Trace Context (level 1): reading `traceparent` and `tracestate`,
//! writing `traceparent`, new ids, and the sampler.
//!
//! Everything here runs on the request path, so it works on bytes, on the
//! stack: a valid `traceparent` is parsed without allocating, a new one is
//! formatted into a 55-byte buffer.

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// `tracestate` longer than this is cut, whole entries at a time (the
/// 512 characters every vendor must be able to propagate).
pub const TRACESTATE_MAX: usize = 512;
/// Entries longer than this go first when `tracestate` must be cut.
const TRACESTATE_ENTRY_MAX: usize = 128;

/// A valid inbound `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of ours.
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The request's `traceparent`, if there is exactly one and it is valid.
pub fn traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let first = values.next()?;
    if values.next().is_some() {
        // Two traceparents: which one is ours to continue? Neither.
        return None;
    }
    parse_traceparent(first.as_bytes())
}

/// `version-traceid-parentid-flags` as level 1 defines it: lower-case hex
/// only; version `ff` and all-zero ids are invalid; version `00` is exactly
/// 55 characters; a later version may append fields after a `-`.
pub fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    let v = v.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    hex_into(&v[0..2], &mut version)?;
    match version[0] {
        0xff => return None,
        0x00 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flags = [0u8; 1];
    hex_into(&v[3..35], &mut trace_id)?;
    hex_into(&v[36..52], &mut parent_id)?;
    hex_into(&v[53..55], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

/// Decode lower-case hex into `out` (exactly twice its length).
fn hex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if hex.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

fn hex_write(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = DIGITS[usize::from(b >> 4)];
        o[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// `00-<trace id>-<span id>-<01 or 00>`.
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_write(trace_id, &mut buf[3..35]);
    hex_write(span_id, &mut buf[36..52]);
    if sampled {
        buf[54] = b'1';
    }
    HeaderValue::from_bytes(&buf).expect("hex digits and dashes are a valid header value")
}

/// A new trace id: random, never all zero.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A new span id: random, never all zero.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// The request's `tracestate`, bounded: one header of at most
/// [`TRACESTATE_MAX`] bytes is kept as it is (no copy); several headers are
/// joined, and anything longer is cut by whole entries, the longest ones
/// (over 128 characters) first, then from the end, as the W3C text asks.
pub fn bounded_tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(TRACESTATE).iter();
    let first = values.next()?;
    let second = values.next();
    if second.is_none() && first.len() <= TRACESTATE_MAX {
        return Some(first.clone());
    }
    let joined: Vec<&[u8]> = headers
        .get_all(TRACESTATE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let joined = joined.join(&b","[..]);
    let entries = joined
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty() && e.len() <= TRACESTATE_ENTRY_MAX);
    let mut out: Vec<u8> = Vec::with_capacity(TRACESTATE_MAX);
    for e in entries {
        let extra = e.len() + usize::from(!out.is_empty());
        if out.len() + extra > TRACESTATE_MAX {
            break;
        }
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    if out.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&out).ok()
}

/// `parentbased_traceidratio` (or plain `traceidratio`): a continued trace
/// follows the caller's sampled flag; otherwise the trace id decides, the
/// same way for every service that uses OpenTelemetry's ratio sampler.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    /// `ratio × 2^63`: sampled when the trace id's low 63 bits are below.
    bound: u64,
    always: bool,
    parent_based: bool,
}

impl Sampler {
    pub fn new(ratio: f64, parent_based: bool) -> Sampler {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Sampler {
            bound: (ratio * (1u64 << 63) as f64) as u64,
            always: ratio >= 1.0,
            parent_based,
        }
    }

    pub fn sample(&self, parent: Option<&TraceParent>, trace_id: &[u8; 16]) -> bool {
        if self.parent_based {
            if let Some(p) = parent {
                return p.sampled();
            }
        }
        if self.always {
            return true;
        }
        let low = u64::from_be_bytes(trace_id[8..16].try_into().expect("8 bytes"));
        (low >> 1) < self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read() {
        let p = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.trace_id[15], 0x36);
        assert_eq!(
            p.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(p.sampled());
        assert!(!parse_traceparent(TP.replace("-01", "-00").as_bytes())
            .unwrap()
            .sampled());
        // Optional whitespace around the value is tolerated.
        assert!(parse_traceparent(format!(" {TP}\t").as_bytes()).is_some());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "garbage",
            // all-zero trace id / parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version ff, upper case, short, long for version 00
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // wrong separators, non-hex flags
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // a later version must separate its extra fields with a dash
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad:?}");
        }
        // A later version with extra fields is read for what level 1 knows.
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"
        )
        .is_some());
    }

    #[test]
    fn two_traceparent_headers_are_invalid() {
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT, TP.parse().unwrap());
        assert!(traceparent(&h).is_some());
        h.append(TRACEPARENT, TP.parse().unwrap());
        assert!(traceparent(&h).is_none());
    }

    #[test]
    fn format_round_trips() {
        let t = new_trace_id();
        let s = new_span_id();
        let v = format_traceparent(&t, &s, true);
        let p = parse_traceparent(v.as_bytes()).unwrap();
        assert_eq!((p.trace_id, p.parent_id, p.flags), (t, s, 1));
        let v = format_traceparent(&t, &s, false);
        assert!(v.to_str().unwrap().ends_with("-00"));
        assert_eq!(v.len(), 55);
    }

    #[test]
    fn tracestate_is_kept_as_is_or_cut_by_entries() {
        let mut h = HeaderMap::new();
        assert!(bounded_tracestate(&h).is_none());
        h.insert(
            TRACESTATE,
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".parse().unwrap(),
        );
        assert_eq!(
            bounded_tracestate(&h).unwrap(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        h.append(TRACESTATE, "later=1".parse().unwrap());
        assert_eq!(
            bounded_tracestate(&h).unwrap(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7,later=1"
        );
        let long = format!("big={}", "x".repeat(200));
        let many: Vec<String> = (0..60).map(|i| format!("k{i}=v{i}")).collect();
        h.insert(
            TRACESTATE,
            format!("a=1,{long},{}", many.join(",")).parse().unwrap(),
        );
        let cut = bounded_tracestate(&h).unwrap();
        let cut = cut.to_str().unwrap();
        assert!(cut.len() <= TRACESTATE_MAX);
        assert!(cut.starts_with("a=1,k0=v0,"), "{cut}");
        assert!(!cut.contains("big="));
    }

    #[test]
    fn the_sampler_follows_the_parent_then_the_ratio() {
        let parent = parse_traceparent(TP.as_bytes()).unwrap();
        let unsampled = TraceParent { flags: 0, ..parent };
        let never = Sampler::new(0.0, true);
        assert!(never.sample(Some(&parent), &parent.trace_id));
        assert!(!never.sample(Some(&unsampled), &parent.trace_id));
        assert!(!never.sample(None, &[0xff; 16]));
        let always = Sampler::new(1.0, true);
        assert!(!always.sample(Some(&unsampled), &parent.trace_id));
        assert!(always.sample(None, &[0xff; 16]));
        // Not parent-based: the ratio decides even for a sampled caller.
        assert!(!Sampler::new(0.0, false).sample(Some(&parent), &parent.trace_id));
        // About half of random trace ids at 0.5.
        let half = Sampler::new(0.5, true);
        let n = (0..4000)
            .filter(|_| half.sample(None, &new_trace_id()))
            .count();
        assert!((1600..2400).contains(&n), "{n}");
        // The decision depends on the trace id alone.
        let mut low = [0u8; 16];
        low[15] = 1;
        assert!(half.sample(None, &low));
        assert!(!half.sample(None, &[0xff; 16]));
    }
}
