//! Header rules at the proxy boundary: hop-by-hop headers never cross it,
//! forwarding headers tell the upstream who the client is.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `Connection` first: [`strip_hop_by_hop`] reads its slot.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
];

/// Remove hop-by-hop headers: the fixed list and every header the
/// `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look over the names finds which of the fixed list are present
    // (usually none on a request, `connection` on a response), so only
    // those are removed.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    // `Connection: keep-alive` / `close` name no header; anything else it
    // lists is hop-by-hop too.
    let mut named: Vec<HeaderName> = Vec::new();
    let connection_present = present[0];
    if connection_present {
        for value in headers.get_all(header::CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                if token.is_empty()
                    || token.eq_ignore_ascii_case("keep-alive")
                    || token.eq_ignore_ascii_case("close")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

pub struct Forwarded<'a> {
    /// The client address as header text (the connection formats its
    /// peer's once, not per request).
    pub client_ip: &'a HeaderValue,
    pub scheme: &'a str,
    /// The host the client asked for, without a port.
    pub host: Option<HeaderValue>,
    /// The local port as header text.
    pub server_port: &'a HeaderValue,
    /// Whether the peer may set X-Forwarded-* itself (trusted_addresses).
    pub trust_inbound: bool,
}

// Names made at compile time: a `&str` name or `from_static` outside a
// const is parsed again on every request.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// X-Real-IP, X-Forwarded-For (appended), -Proto, -Host, -Port, as
/// APISIX's nginx template sets them.
pub fn set_forwarded(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    let xff = match headers.get(X_FORWARDED_FOR).map(|v| v.as_bytes()) {
        Some(prev) if !prev.is_empty() => {
            let mut joined = Vec::with_capacity(prev.len() + 2 + f.client_ip.len());
            joined.extend_from_slice(prev);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(f.client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
        _ => Some(f.client_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_REAL_IP, f.client_ip.clone());
    let keep =
        |headers: &HeaderMap, name: &HeaderName| f.trust_inbound && headers.contains_key(name);
    if !keep(headers, &X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if f.scheme == "https" { "https" } else { "http" }),
        );
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        if let Some(v) = &f.host {
            headers.insert(X_FORWARDED_HOST, v.clone());
        }
    }
    if !keep(headers, &X_FORWARDED_PORT) {
        headers.insert(X_FORWARDED_PORT, f.server_port.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_and_fixed_hop_by_hop_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_is_appended_and_real_ip_set() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        set_forwarded(
            &mut h,
            &Forwarded {
                client_ip: &HeaderValue::from_static("10.0.0.1"),
                scheme: "http",
                host: Some(HeaderValue::from_static("api.example.com")),
                server_port: &HeaderValue::from_static("9080"),
                trust_inbound: false,
            },
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        assert_eq!(h["x-real-ip"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-port"], "9080");
    }
}
