//! Per-request state shared by the phases: the request head as it will be
//! sent upstream, where it came from, which route matched, who the caller
//! is, and what each plugin decided.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use portcullis_router::expr::VarLookup;

use crate::consumer::{ConsumerIndex, Identity};
use crate::decision::Decision;

/// Names and labels of the matched route, for plugins and the log.
#[derive(Debug, Default)]
pub struct RouteInfo {
    pub id: Arc<str>,
    pub name: Option<Arc<str>>,
    pub service_id: Option<Arc<str>>,
    pub labels: std::collections::BTreeMap<String, String>,
}

pub struct RequestState {
    /// The request head; plugins may rewrite it before it goes upstream.
    pub head: http::request::Parts,
    /// The TCP peer.
    pub peer_addr: SocketAddr,
    /// The client address used for decisions: the peer, or what real-ip found.
    pub client_ip: IpAddr,
    /// `http` or `https`, as the client connected.
    pub scheme: &'static str,
    /// The local port the request arrived on.
    pub server_port: u16,
    pub request_id: Option<Arc<str>>,
    pub route: Arc<RouteInfo>,
    /// Path parameters captured by the route's uri pattern.
    pub path_params: Vec<(String, String)>,
    pub identity: Option<Identity>,
    /// The credential index of the snapshot serving this request.
    pub consumers: Arc<ConsumerIndex>,
    /// The buffered body, when a plugin on the route asked for it.
    pub body: Option<Bytes>,
    /// Headers to add to the response whatever it is (rate limit quotas,
    /// request ids, CORS).
    pub response_headers: HeaderMap,
    pub decisions: Vec<Decision>,
}

impl RequestState {
    pub fn new(
        head: http::request::Parts,
        peer_addr: SocketAddr,
        scheme: &'static str,
        server_port: u16,
    ) -> Self {
        RequestState {
            head,
            peer_addr,
            client_ip: peer_addr.ip(),
            scheme,
            server_port,
            request_id: None,
            route: no_route(),
            path_params: Vec::new(),
            identity: None,
            consumers: empty_index(),
            body: None,
            response_headers: HeaderMap::new(),
            decisions: Vec::new(),
        }
    }

    pub fn consumer_name(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| &*i.consumer.username)
    }

    pub fn path(&self) -> &str {
        self.head.uri.path()
    }

    pub fn query(&self) -> Option<&str> {
        self.head.uri.query()
    }

    /// The host the client asked for, without a port.
    pub fn host(&self) -> Option<&str> {
        let raw = self
            .head
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| self.head.uri.host())?;
        Some(strip_port(raw))
    }

    /// One query argument, percent-decoded.
    pub fn query_arg(&self, name: &str) -> Option<Cow<'_, str>> {
        query_arg(self.query()?, name)
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.head
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// One shared empty index, so a new request state allocates none.
/// Until a route matches: one shared empty `RouteInfo`, so a request
/// allocates nothing for it.
fn no_route() -> Arc<RouteInfo> {
    static NONE: std::sync::OnceLock<Arc<RouteInfo>> = std::sync::OnceLock::new();
    NONE.get_or_init(Arc::default).clone()
}

fn empty_index() -> Arc<ConsumerIndex> {
    static EMPTY: std::sync::OnceLock<Arc<ConsumerIndex>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Arc::default).clone()
}

/// `ip` as text. Formatting an address costs more than a limit plugin's
/// whole check, and a worker thread sees the same client request after
/// request (a keep-alive connection): it remembers the last one it wrote.
pub fn ip_text(ip: IpAddr) -> String {
    with_ip_text(ip, str::to_owned)
}

/// [`ip_text`] lent to `f` instead of copied out. `f` must not ask for an
/// address's text itself (the remembered text is borrowed while it runs).
pub fn with_ip_text<R>(ip: IpAddr, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, String)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((seen, text)) if *seen == ip => f(text),
            _ => f(&last.insert((ip, ip.to_string())).1),
        }
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Find `name` in a query string and percent-decode its value. A name
/// without `=` has the empty value.
pub fn query_arg<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Query-string decoding: `+` is a space, `%XX` a byte; invalid UTF-8 is
/// replaced rather than refused, as the value is only ever compared.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// APISIX's request variables, as `vars` expressions and `key` settings name
/// them.
impl VarLookup for RequestState {
    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(arg) = name.strip_prefix("arg_") {
            return self.query_arg(arg);
        }
        if let Some(h) = name.strip_prefix("http_") {
            let header = h.replace('_', "-");
            return self.header_str(&header).map(Cow::Borrowed);
        }
        if let Some(c) = name.strip_prefix("cookie_") {
            return self.cookie(c).map(Cow::Borrowed);
        }
        Some(match name {
            "uri" => Cow::Borrowed(self.path()),
            "request_uri" => Cow::Borrowed(
                self.head
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
            ),
            "args" | "query_string" => Cow::Borrowed(self.query()?),
            "host" => Cow::Borrowed(self.host()?),
            "request_method" => Cow::Borrowed(self.head.method.as_str()),
            "remote_addr" => Cow::Owned(ip_text(self.client_ip)),
            "remote_port" => Cow::Owned(self.peer_addr.port().to_string()),
            "realip_remote_addr" => Cow::Owned(self.peer_addr.ip().to_string()),
            "server_port" => Cow::Owned(self.server_port.to_string()),
            "scheme" => Cow::Borrowed(self.scheme),
            "consumer_name" => Cow::Borrowed(self.consumer_name()?),
            "consumer_group_id" => {
                Cow::Borrowed(self.identity.as_ref()?.consumer.group_id.as_deref()?)
            }
            "route_id" => Cow::Borrowed(&*self.route.id),
            "route_name" => Cow::Borrowed(self.route.name.as_deref()?),
            "service_id" => Cow::Borrowed(self.route.service_id.as_deref()?),
            "request_id" => Cow::Borrowed(self.request_id.as_deref()?),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_follows_the_address_it_is_given() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "2001:db8::7".parse().unwrap();
        for _ in 0..2 {
            assert_eq!(ip_text(a), "10.0.0.1");
            assert_eq!(ip_text(a), "10.0.0.1");
            assert_eq!(ip_text(b), "2001:db8::7");
        }
    }

    fn state(uri: &str) -> RequestState {
        let (head, ()) = http::Request::builder()
            .uri(uri)
            .header("host", "api.example.com:9080")
            .header("x-tenant-id", "t1")
            .header("cookie", "a=1; session=xyz")
            .body(())
            .unwrap()
            .into_parts();
        RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080)
    }

    #[test]
    fn vars_read_args_headers_cookies_and_host() {
        let s = state("/a/b?name=j%20son&x=1+2&flag");
        assert_eq!(s.var("arg_name").as_deref(), Some("j son"));
        assert_eq!(s.var("arg_x").as_deref(), Some("1 2"));
        assert_eq!(s.var("arg_flag").as_deref(), Some(""));
        assert_eq!(s.var("arg_missing"), None);
        assert_eq!(s.var("http_x_tenant_id").as_deref(), Some("t1"));
        assert_eq!(s.var("cookie_session").as_deref(), Some("xyz"));
        assert_eq!(s.var("host").as_deref(), Some("api.example.com"));
        assert_eq!(s.var("uri").as_deref(), Some("/a/b"));
        assert_eq!(s.var("remote_addr").as_deref(), Some("10.0.0.7"));
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41b"), "Ab");
    }

    #[test]
    fn host_port_is_stripped_for_v4_and_v6() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
