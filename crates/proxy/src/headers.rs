//! Header rules at the proxy boundary: hop-by-hop headers never cross it,
//! forwarding headers tell the upstream who the client is.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

pub struct Forwarded<'a> {
    pub client_ip: std::net::IpAddr,
    pub scheme: &'a str,
    pub host: Option<&'a str>,
    pub server_port: u16,
    /// Whether the peer may set X-Forwarded-* itself (trusted_addresses).
    pub trust_inbound: bool,
}

/// X-Real-IP, X-Forwarded-For (appended), -Proto, -Host, -Port, as
/// APISIX's nginx template sets them.
pub fn set_forwarded(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    let ip = f.client_ip.to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    if let Ok(v) = HeaderValue::from_str(&ip) {
        headers.insert(HeaderName::from_static("x-real-ip"), v);
    }
    let keep = |headers: &HeaderMap, name: &str| f.trust_inbound && headers.contains_key(name);
    if !keep(headers, "x-forwarded-proto") {
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(if f.scheme == "https" { "https" } else { "http" }),
        );
    }
    if !keep(headers, "x-forwarded-host") {
        if let Some(v) = f.host.and_then(|h| HeaderValue::from_str(h).ok()) {
            headers.insert(HeaderName::from_static("x-forwarded-host"), v);
        }
    }
    if !keep(headers, "x-forwarded-port") {
        headers.insert(
            HeaderName::from_static("x-forwarded-port"),
            HeaderValue::from(f.server_port),
        );
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
                client_ip: "10.0.0.1".parse().unwrap(),
                scheme: "http",
                host: Some("api.example.com"),
                server_port: 9080,
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
