//! redirect: answer with a redirection instead of proxying — to HTTPS
//! (`http_to_https`), to a uri built from variables (`uri`), or to one
//! derived from the request path by a regular expression (`regex_uri`).
//! APISIX's plugin of the same name.

use std::sync::Arc;

use http::header::{HeaderValue, LOCATION};
use http::{Method, StatusCode};
use portcullis_core::{ConfigError, Flow, Phase, Plugin, Rejection, RequestState};
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{parse_conf, BuildContext};
use crate::proxy_rewrite::{compile_regex, encode_path, Replacement, Template};
use crate::registry::PluginSpec;

pub const SPEC: PluginSpec = PluginSpec {
    name: "redirect",
    phase: Phase::BeforeProxy,
    priority: 900,
    enforcing: false,
    build,
    consumer_conf: None,
    schema,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default = "default_code")]
    ret_code: u16,
    uri: Option<String>,
    regex_uri: Option<Vec<String>>,
    http_to_https: Option<bool>,
    #[serde(default)]
    encode_uri: bool,
    #[serde(default)]
    append_query_string: bool,
}

fn default_code() -> u16 {
    302
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "ret_code": {"type": "integer", "minimum": 200, "default": 302},
            "uri": {"type": "string", "minLength": 2},
            "regex_uri": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "string"}},
            "http_to_https": {"type": "boolean"},
            "encode_uri": {"type": "boolean", "default": false},
            "append_query_string": {"type": "boolean", "default": false}
        },
        "oneOf": [
            {"required": ["uri"]},
            {"required": ["regex_uri"]},
            {"required": ["http_to_https"]}
        ],
        "additionalProperties": false
    })
}

enum Target {
    Uri(Template),
    Regex(Regex, Replacement),
    /// Only `http_to_https`.
    None,
}

struct Redirect {
    ret_code: StatusCode,
    target: Target,
    http_to_https: bool,
    encode_uri: bool,
    append_query_string: bool,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    let given = [
        conf.uri.is_some(),
        conf.regex_uri.is_some(),
        conf.http_to_https.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ConfigError::new(
            "",
            "exactly one of uri, regex_uri and http_to_https is required",
        ));
    }
    let http_to_https = conf.http_to_https.unwrap_or(false);
    if http_to_https && conf.append_query_string {
        return Err(ConfigError::new(
            "append_query_string",
            "only one of `http_to_https` and `append_query_string` can be configured.",
        ));
    }
    if conf.ret_code < 200 {
        return Err(ConfigError::new(
            "ret_code",
            format!("{} is less than the minimum of 200", conf.ret_code),
        ));
    }
    let ret_code = StatusCode::from_u16(conf.ret_code)
        .map_err(|_| ConfigError::new("ret_code", "not a status code"))?;
    let target = if let Some(uri) = &conf.uri {
        if uri.len() < 2 {
            return Err(ConfigError::new("uri", "must be at least 2 characters"));
        }
        Target::Uri(Template::parse(uri))
    } else if let Some(pair) = &conf.regex_uri {
        let [pattern, replacement] = pair.as_slice() else {
            return Err(ConfigError::new(
                "regex_uri",
                "expected [regular expression, replacement]",
            ));
        };
        Target::Regex(
            compile_regex(pattern).map_err(|e| ConfigError::new("regex_uri[0]", e))?,
            Replacement::parse(replacement).map_err(|e| ConfigError::new("regex_uri[1]", e))?,
        )
    } else {
        Target::None
    };
    Ok(Arc::new(Redirect {
        ret_code,
        target,
        http_to_https,
        encode_uri: conf.encode_uri,
        append_query_string: conf.append_query_string,
    }))
}

impl Plugin for Redirect {
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
        let mut code = self.ret_code;
        let mut location = None;
        if self.http_to_https {
            let scheme = req.header_str("x-forwarded-proto").unwrap_or(req.scheme);
            if !scheme.eq_ignore_ascii_case("https") {
                let Some(host) = req.host() else {
                    return Flow::Continue;
                };
                let request_uri = req.head.uri.path_and_query().map_or("/", |p| p.as_str());
                location = Some(format!("https://{host}{request_uri}"));
                code = if req.head.method == Method::GET || req.head.method == Method::HEAD {
                    StatusCode::MOVED_PERMANENTLY
                } else {
                    StatusCode::PERMANENT_REDIRECT
                };
            }
        }
        let location = match (location, &self.target) {
            (Some(l), _) => l,
            (None, Target::Uri(t)) => t.render(req, &[], false),
            (None, Target::Regex(re, rep)) => {
                let path = req.path();
                match re.captures(path) {
                    Some(caps) => rep.substitute(path, &caps),
                    None => return Flow::Continue,
                }
            }
            (None, Target::None) => return Flow::Continue,
        };
        let (path, query) = match location.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (location.as_str(), None),
        };
        let mut out = if self.encode_uri {
            encode_path(path)
        } else {
            path.to_string()
        };
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        if self.append_query_string {
            if let Some(q) = req.query() {
                out.push(if query.is_some() { '&' } else { '?' });
                out.push_str(q);
            }
        }
        Flow::Respond(Rejection::empty(code).with_header(LOCATION, header_value(&out)))
    }
}

/// A `Location` value. Bytes a header cannot carry (a CR or LF from a decoded
/// variable) are percent-encoded, so a redirect can never split a response.
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let mut out = String::with_capacity(s.len() + 8);
        for b in s.bytes() {
            if b.is_ascii_graphic() || b == b' ' {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("/"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy_rewrite::tests::{build, request};

    fn redirect(conf: Value, mut req: RequestState) -> Option<(u16, String)> {
        let p = build("redirect", conf).unwrap();
        match p.on_request(&mut req) {
            Flow::Continue => None,
            Flow::Respond(r) => {
                let loc = r
                    .headers
                    .iter()
                    .find(|(n, _)| n == LOCATION)
                    .map(|(_, v)| v.to_str().unwrap().to_string())
                    .unwrap();
                Some((r.status.as_u16(), loc))
            }
            Flow::Wait(_) | Flow::Retry(_) => panic!("redirect never waits"),
        }
    }

    #[test]
    fn uri_redirects_with_302_and_resolves_variables() {
        let req = request("GET", "/old/page?x=1", &[("host", "a.example")]);
        assert_eq!(
            redirect(json!({"uri": "/new$uri?from=$host"}), req),
            Some((302, "/new/old/page?from=a.example".into()))
        );
    }

    #[test]
    fn ret_code_and_request_uri_are_honoured() {
        let req = request("GET", "/p?q=1", &[]);
        assert_eq!(
            redirect(
                json!({"uri": "https://b.example$request_uri", "ret_code": 301}),
                req
            ),
            Some((301, "https://b.example/p?q=1".into()))
        );
    }

    #[test]
    fn http_to_https_uses_301_for_get_and_308_for_other_methods() {
        let conf = json!({"http_to_https": true});
        let get = request("GET", "/a?b=1", &[("host", "api.example:9080")]);
        assert_eq!(
            redirect(conf.clone(), get),
            Some((301, "https://api.example/a?b=1".into()))
        );
        let post = request("POST", "/a", &[("host", "api.example")]);
        assert_eq!(
            redirect(conf.clone(), post),
            Some((308, "https://api.example/a".into()))
        );
    }

    #[test]
    fn http_to_https_leaves_https_requests_alone() {
        let conf = json!({"http_to_https": true});
        let mut tls = request("GET", "/a", &[("host", "api.example")]);
        tls.scheme = "https";
        assert_eq!(redirect(conf.clone(), tls), None);
        let behind_lb = request(
            "GET",
            "/a",
            &[("host", "api.example"), ("x-forwarded-proto", "https")],
        );
        assert_eq!(redirect(conf, behind_lb), None);
    }

    #[test]
    fn regex_uri_redirects_only_when_it_matches() {
        let conf = json!({"regex_uri": ["^/v1/(.*)", "/v2/$1"], "ret_code": 307});
        assert_eq!(
            redirect(conf.clone(), request("GET", "/v1/users", &[])),
            Some((307, "/v2/users".into()))
        );
        assert_eq!(redirect(conf, request("GET", "/other", &[])), None);
    }

    #[test]
    fn append_query_string_keeps_the_client_query() {
        let conf = json!({"uri": "/new", "append_query_string": true});
        assert_eq!(
            redirect(conf, request("GET", "/old?a=1", &[])),
            Some((302, "/new?a=1".into()))
        );
        let conf = json!({"uri": "/new?x=y", "append_query_string": true});
        assert_eq!(
            redirect(conf, request("GET", "/old?a=1", &[])),
            Some((302, "/new?x=y&a=1".into()))
        );
    }

    #[test]
    fn encode_uri_escapes_the_path_but_not_the_query() {
        let conf = json!({"uri": "/to/$arg_name?k=a b", "encode_uri": true});
        assert_eq!(
            redirect(conf, request("GET", "/from?name=j%20son", &[])),
            Some((302, "/to/j%20son?k=a b".into()))
        );
    }

    #[test]
    fn a_newline_from_a_variable_cannot_split_the_response() {
        let conf = json!({"uri": "/to/$arg_x"});
        let (_, loc) = redirect(conf, request("GET", "/?x=a%0d%0aSet-Cookie:%20x", &[])).unwrap();
        assert_eq!(loc, "/to/a%0D%0ASet-Cookie: x");
    }

    #[test]
    fn config_errors_name_the_field() {
        let err = |conf: Value| build("redirect", conf).err().unwrap();
        assert!(err(json!({})).message.contains("exactly one"));
        assert!(err(json!({"uri": "/a", "http_to_https": true}))
            .message
            .contains("exactly one"));
        assert_eq!(
            err(json!({"http_to_https": true, "append_query_string": true})).field,
            "redirect.append_query_string"
        );
        assert_eq!(
            err(json!({"uri": "/a", "ret_code": 100})).field,
            "redirect.ret_code"
        );
        assert_eq!(
            err(json!({"regex_uri": ["(", "/x"]})).field,
            "redirect.regex_uri[0]"
        );
        assert_eq!(
            err(json!({"regex_uri": ["/a"]})).field,
            "redirect.regex_uri"
        );
        assert_eq!(
            err(json!({"uri": "/a", "bogus": 1})).field,
            "redirect.bogus"
        );
    }
}
