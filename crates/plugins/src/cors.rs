//! cors: answer CORS preflights at the gateway and add the CORS headers to
//! every response of the route. APISIX's plugin of the same name, with its
//! fields and defaults (`*` everywhere, `max_age` 5, no credentials).

use std::collections::HashSet;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use portcullis_core::{ConfigError, Flow, Phase, Plugin, Rejection, RequestState};
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const SPEC: PluginSpec = PluginSpec {
    name: "cors",
    phase: Phase::Rewrite,
    priority: 4000,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";
/// APISIX's pattern for `allow_origins`: `*`, `**`, `null`, or a comma list
/// of `scheme://host[:port]`.
const ORIGINS_PATTERN: &str = r"^(\*|\*\*|null|\w+://[^,]+(,\w+://[^,]+)*)$";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default = "star")]
    allow_origins: String,
    #[serde(default = "star")]
    allow_methods: String,
    #[serde(default = "star")]
    allow_headers: String,
    expose_headers: Option<String>,
    #[serde(default = "default_max_age")]
    max_age: i64,
    #[serde(default)]
    allow_credential: bool,
    allow_origins_by_regex: Option<Vec<String>>,
    allow_origins_by_metadata: Option<Vec<String>>,
    timing_allow_origins: Option<String>,
    timing_allow_origins_by_regex: Option<Vec<String>>,
}

fn star() -> String {
    "*".into()
}
fn default_max_age() -> i64 {
    5
}

fn schema() -> Value {
    let regex_list = json!({
        "type": "array", "minItems": 1, "uniqueItems": true,
        "items": {"type": "string", "minLength": 1, "maxLength": 4096}
    });
    json!({
        "type": "object",
        "properties": {
            "allow_origins": {"type": "string", "pattern": ORIGINS_PATTERN, "default": "*"},
            "allow_methods": {"type": "string", "default": "*"},
            "allow_headers": {"type": "string", "default": "*"},
            "expose_headers": {"type": "string"},
            "max_age": {"type": "integer", "default": 5},
            "allow_credential": {"type": "boolean", "default": false},
            "allow_origins_by_regex": regex_list,
            "allow_origins_by_metadata": regex_list,
            "timing_allow_origins": {"type": "string", "pattern": ORIGINS_PATTERN},
            "timing_allow_origins_by_regex": regex_list
        },
        "additionalProperties": false
    })
}

/// Which origins a rule admits, and what the header then says.
#[derive(Debug)]
enum Origins {
    /// `*`: the header says `*`, whatever the origin.
    Any,
    /// `**`: the request's origin is echoed (`*` when there is none).
    Echo,
    /// One origin: admitted only when the request's origin is exactly it.
    One(String),
    /// A comma list: the request's origin is echoed when it is listed.
    List(HashSet<String>),
    /// `allow_origins_by_regex`: the origin is echoed when a regex finds a
    /// match in it.
    Regex(Regex),
}

impl Origins {
    fn parse(s: &str, field: &str) -> Result<Origins, ConfigError> {
        match s {
            "*" => return Ok(Origins::Any),
            "**" => return Ok(Origins::Echo),
            _ => {}
        }
        let items: Vec<&str> = s.split(',').map(str::trim).collect();
        for item in &items {
            let valid = *item == "null"
                || item.split_once("://").is_some_and(|(scheme, rest)| {
                    !scheme.is_empty()
                        && scheme
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && !rest.is_empty()
                });
            if !valid || (*item == "null" && items.len() > 1) {
                return Err(ConfigError::new(
                    field,
                    format!("\"{s}\" does not match {ORIGINS_PATTERN}"),
                ));
            }
        }
        Ok(match items.as_slice() {
            [one] => Origins::One(one.to_string()),
            many => Origins::List(many.iter().map(|s| s.to_string()).collect()),
        })
    }

    fn regex(rules: &[String], field: &str) -> Result<Origins, ConfigError> {
        if rules.is_empty() {
            return Err(ConfigError::new(
                field,
                "expect array to have at least 1 items",
            ));
        }
        for (i, r) in rules.iter().enumerate() {
            crate::proxy_rewrite::compile_regex(r)
                .map_err(|e| ConfigError::new(format!("{field}[{i}]"), e))?;
        }
        let joined = rules
            .iter()
            .map(|r| format!("(?:{r})"))
            .collect::<Vec<_>>()
            .join("|");
        crate::proxy_rewrite::compile_regex(&joined)
            .map(Origins::Regex)
            .map_err(|e| ConfigError::new(field, e))
    }

    /// The value of the allow header for a request from `origin`, if the
    /// origin is admitted.
    fn allow(&self, origin: Option<&str>) -> Option<String> {
        match self {
            Origins::Any => Some("*".into()),
            Origins::Echo => Some(origin.unwrap_or("*").to_string()),
            Origins::One(o) => origin.filter(|r| r == o).map(str::to_string),
            Origins::List(set) => origin.filter(|r| set.contains(*r)).map(str::to_string),
            Origins::Regex(re) => origin.filter(|r| re.is_match(r)).map(str::to_string),
        }
    }

    /// Whether the answer depends on the request's origin (then caches must
    /// key on it: `Vary: Origin`).
    fn varies(&self) -> bool {
        !matches!(self, Origins::Any)
    }
}

struct Cors {
    origins: Origins,
    methods: HeaderValue,
    /// `None`: `**`, echo `Access-Control-Request-Headers`.
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    credential: bool,
    timing: Option<Origins>,
}

/// The request's `Origin` as it arrived, kept in the request's extensions:
/// later plugins (proxy-rewrite) may change the headers before the response
/// is answered.
#[derive(Clone)]
struct OriginalOrigin(Option<String>);

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    if conf.allow_credential {
        let starred = [
            Some(&conf.allow_origins),
            Some(&conf.allow_methods),
            Some(&conf.allow_headers),
            conf.expose_headers.as_ref(),
            conf.timing_allow_origins.as_ref(),
        ]
        .into_iter()
        .any(|v| v.is_some_and(|v| v == "*"));
        if starred {
            return Err(ConfigError::new(
                "allow_credential",
                "you can not set '*' for other option when 'allow_credential' is true",
            ));
        }
    }
    // `allow_origins` is checked even when a regex takes its place, as
    // APISIX's schema checks it.
    let listed = Origins::parse(&conf.allow_origins, "allow_origins")?;
    let origins = match &conf.allow_origins_by_regex {
        Some(rules) => Origins::regex(rules, "allow_origins_by_regex")?,
        None => listed,
    };
    if let Some(keys) = &conf.allow_origins_by_metadata {
        if keys.is_empty() || keys.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                "allow_origins_by_metadata",
                "expected a non-empty list of non-empty names",
            ));
        }
    }
    let timing = match (
        &conf.timing_allow_origins_by_regex,
        &conf.timing_allow_origins,
    ) {
        (Some(rules), _) => Some(Origins::regex(rules, "timing_allow_origins_by_regex")?),
        (None, Some(list)) => Some(Origins::parse(list, "timing_allow_origins")?),
        (None, None) => None,
    };
    let value = |field: &str, s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| ConfigError::new(field, "invalid value character in header"))
    };
    let methods = if conf.allow_methods == "**" {
        HeaderValue::from_static(ALL_METHODS)
    } else {
        value("allow_methods", &conf.allow_methods)?
    };
    let headers = match conf.allow_headers.as_str() {
        "**" => None,
        h => Some(value("allow_headers", h)?),
    };
    let expose = match conf.expose_headers.as_deref() {
        None | Some("") => None,
        Some(e) => Some(value("expose_headers", e)?),
    };
    Ok(Arc::new(Cors {
        origins,
        methods,
        headers,
        expose,
        max_age: HeaderValue::from(conf.max_age),
        credential: conf.allow_credential,
        timing,
    }))
}

impl Cors {
    /// The CORS headers for a request (from `origin`, with `req_headers`).
    fn headers_for(
        &self,
        origin: Option<&str>,
        req_headers: &HeaderMap,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(8);
        if let Some(allow) = self.origins.allow(origin) {
            if let Ok(v) = HeaderValue::from_str(&allow) {
                out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, v));
                out.push((header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone()));
                out.push((header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
                if let Some(e) = &self.expose {
                    out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone()));
                }
                let allow_headers = match &self.headers {
                    Some(h) => Some(h.clone()),
                    None => req_headers
                        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                        .cloned(),
                };
                if let Some(h) = allow_headers {
                    out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
                }
                if self.credential {
                    out.push((
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    ));
                }
            }
        }
        if let Some(timing) = &self.timing {
            // As APISIX: only a `*` or the request's own origin is sent.
            if let Some(t) = timing
                .allow(origin)
                .filter(|t| t == "*" || Some(t.as_str()) == origin)
            {
                if let Ok(v) = HeaderValue::from_str(&t) {
                    out.push((HeaderName::from_static("timing-allow-origin"), v));
                }
            }
        }
        out
    }

    fn varies(&self) -> bool {
        self.origins.varies() || self.timing.as_ref().is_some_and(Origins::varies)
    }
}

fn origin_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Add `Origin` to `Vary` unless it is there already.
fn add_vary_origin(headers: &mut HeaderMap) {
    let present = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.eq_ignore_ascii_case("origin")
        });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        SPEC.name
    }
    fn phase(&self) -> Phase {
        SPEC.phase
    }
    fn priority(&self) -> i32 {
        SPEC.priority
    }

    fn on_request(&self, req: &mut RequestState) -> Flow {
        let origin = origin_of(&req.head.headers);
        let preflight = req.head.method == Method::OPTIONS
            && origin.is_some()
            && req
                .head
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let mut answer = Rejection::empty(StatusCode::OK);
            answer.headers = self.headers_for(origin.as_deref(), &req.head.headers);
            if self.varies() {
                answer
                    .headers
                    .push((header::VARY, HeaderValue::from_static("Origin")));
            }
            return Flow::Respond(answer);
        }
        req.head.extensions.insert(OriginalOrigin(origin));
        Flow::Continue
    }

    /// Every response, the preflight answer included, gets the headers; they
    /// replace any the upstream sent.
    fn on_response(&self, req: &RequestState, resp: &mut http::response::Parts) {
        let origin = match req.head.extensions.get::<OriginalOrigin>() {
            Some(o) => o.0.clone(),
            None => origin_of(&req.head.headers),
        };
        for (name, value) in self.headers_for(origin.as_deref(), &req.head.headers) {
            resp.headers.insert(name, value);
        }
        if self.varies() {
            add_vary_origin(&mut resp.headers);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_rewrite::tests::{build, request};

    const PREFLIGHT: [(&str, &str); 3] = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "x-token"),
    ];

    fn preflight(conf: Value) -> Rejection {
        let p = build("cors", conf).unwrap();
        match p.on_request(&mut request("OPTIONS", "/things", &PREFLIGHT)) {
            Flow::Respond(r) => r,
            other => panic!("a preflight is answered, got {other:?}"),
        }
    }

    fn get<'a>(headers: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    /// Run a normal request through on_request and on_response.
    fn response(conf: Value, headers: &[(&str, &str)], upstream: &[(&str, &str)]) -> HeaderMap {
        let p = build("cors", conf).unwrap();
        let mut req = request("GET", "/things", headers);
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        let mut resp = http::Response::builder();
        for (k, v) in upstream {
            resp = resp.header(*k, *v);
        }
        let (mut parts, ()) = resp.body(()).unwrap().into_parts();
        p.on_response(&req, &mut parts);
        parts.headers
    }

    #[test]
    fn a_preflight_is_answered_200_with_the_default_headers() {
        let r = preflight(json!({}));
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.is_empty());
        assert_eq!(get(&r.headers, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&r.headers, "access-control-allow-methods"), Some("*"));
        assert_eq!(get(&r.headers, "access-control-allow-headers"), Some("*"));
        assert_eq!(get(&r.headers, "access-control-max-age"), Some("5"));
        assert_eq!(get(&r.headers, "access-control-allow-credentials"), None);
        assert_eq!(get(&r.headers, "vary"), None);
    }

    #[test]
    fn a_plain_options_request_goes_upstream() {
        let p = build("cors", json!({})).unwrap();
        let mut req = request("OPTIONS", "/things", &[("origin", "https://app.example")]);
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
    }

    #[test]
    fn a_listed_origin_is_echoed_with_credentials_and_vary() {
        let conf = json!({
            "allow_origins": "https://app.example,https://admin.example",
            "allow_methods": "GET,PUT",
            "allow_headers": "x-token",
            "expose_headers": "x-request-id",
            "max_age": 600,
            "allow_credential": true
        });
        let r = preflight(conf.clone());
        assert_eq!(
            get(&r.headers, "access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(
            get(&r.headers, "access-control-allow-methods"),
            Some("GET,PUT")
        );
        assert_eq!(
            get(&r.headers, "access-control-expose-headers"),
            Some("x-request-id")
        );
        assert_eq!(get(&r.headers, "access-control-max-age"), Some("600"));
        assert_eq!(
            get(&r.headers, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(get(&r.headers, "vary"), Some("Origin"));

        let h = response(conf, &[("origin", "https://evil.example")], &[]);
        assert!(h.get("access-control-allow-origin").is_none());
        assert_eq!(h.get("vary").unwrap(), "Origin");
    }

    #[test]
    fn normal_responses_get_the_headers_replacing_the_upstreams() {
        let h = response(
            json!({"allow_origins": "https://app.example"}),
            &[("origin", "https://app.example")],
            &[
                ("access-control-allow-origin", "*"),
                ("vary", "Accept-Encoding"),
            ],
        );
        assert_eq!(
            h.get("access-control-allow-origin").unwrap(),
            "https://app.example"
        );
        assert_eq!(h.get("access-control-allow-methods").unwrap(), "*");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);
    }

    #[test]
    fn the_original_origin_counts_even_if_a_later_plugin_removes_it() {
        let p = build("cors", json!({"allow_origins": "**"})).unwrap();
        let mut req = request("GET", "/", &[("origin", "https://app.example")]);
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        req.head.headers.remove("origin");
        let (mut parts, ()) = http::Response::new(()).into_parts();
        p.on_response(&req, &mut parts);
        assert_eq!(
            parts.headers.get("access-control-allow-origin").unwrap(),
            "https://app.example"
        );
    }

    #[test]
    fn double_stars_echo_the_origin_all_methods_and_requested_headers() {
        let r = preflight(json!({
            "allow_origins": "**", "allow_methods": "**", "allow_headers": "**", "allow_credential": true
        }));
        assert_eq!(
            get(&r.headers, "access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(
            get(&r.headers, "access-control-allow-methods"),
            Some(ALL_METHODS)
        );
        assert_eq!(
            get(&r.headers, "access-control-allow-headers"),
            Some("x-token")
        );
    }

    #[test]
    fn origins_by_regex_admit_matching_origins_only() {
        let conf =
            json!({"allow_origins_by_regex": [".*\\.example\\.com$", "^https://exact\\.org$"]});
        let ok = response(conf.clone(), &[("origin", "https://a.example.com")], &[]);
        assert_eq!(
            ok.get("access-control-allow-origin").unwrap(),
            "https://a.example.com"
        );
        let ok = response(conf.clone(), &[("origin", "https://exact.org")], &[]);
        assert_eq!(
            ok.get("access-control-allow-origin").unwrap(),
            "https://exact.org"
        );
        let no = response(conf, &[("origin", "https://example.com.evil")], &[]);
        assert!(no.get("access-control-allow-origin").is_none());
    }

    #[test]
    fn timing_allow_origin_is_sent_for_admitted_origins() {
        let conf = json!({"timing_allow_origins": "https://app.example"});
        let h = response(conf.clone(), &[("origin", "https://app.example")], &[]);
        assert_eq!(h.get("timing-allow-origin").unwrap(), "https://app.example");
        let h = response(conf, &[("origin", "https://other.example")], &[]);
        assert!(h.get("timing-allow-origin").is_none());
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |conf: Value| build("cors", conf).err().unwrap();
        let e = err(json!({"allow_credential": true}));
        assert_eq!(e.field, "cors.allow_credential");
        assert!(e.message.contains("can not set '*'"));
        assert!(err(json!({"allow_credential": true, "allow_origins": "https://a.b", "allow_methods": "GET", "allow_headers": "*"}))
            .message
            .contains("'*'"));
        assert_eq!(
            err(json!({"allow_origins": "a.example"})).field,
            "cors.allow_origins"
        );
        assert_eq!(
            err(json!({"allow_origins_by_regex": ["ok", "("]})).field,
            "cors.allow_origins_by_regex[1]"
        );
        assert_eq!(err(json!({"max_age": "5"})).field, "cors.max_age");
        // Credentials with `**` are allowed, as in APISIX.
        assert!(build("cors", json!({"allow_credential": true, "allow_origins": "**", "allow_methods": "**", "allow_headers": "**"})).is_ok());
        // Accepted, not acted on.
        assert!(build("cors", json!({"allow_origins_by_metadata": ["company"]})).is_ok());
    }
}
