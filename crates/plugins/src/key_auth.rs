//! key-auth: authenticate a request by an API key sent in a header or a
//! query argument (APISIX's plugin of the same name: `header`, `query`,
//! `realm`, `hide_credentials`, `anonymous_consumer`; consumers carry
//! `{"key": ...}`).
//!
//! Keys are never kept in plain text: a consumer's key becomes the hex
//! SHA-256 digest it is indexed by, and a request's key is digested before
//! the lookup. The lookup is a hash-map probe on that digest, so its timing
//! says nothing about the key. No key ever reaches a log, an error or a
//! decision.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use portcullis_core::request::percent_decode;
use portcullis_core::{ConfigError, Flow, Phase, Plugin, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::consumers::CredentialConf;
use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const NAME: &str = "key-auth";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Authenticate,
    priority: 2500,
    enforcing: true,
    build,
    consumer_conf: Some(consumer_conf),
    schema,
};

const DEFAULT_NAME: &str = "apikey";
/// portcullis also reads this header when the route names neither a header
/// nor a query argument: it is what most API clients send.
const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-api-key");
const DIGEST_PREFIX: &str = "sha256:";

const MISSING: &str = "Missing API key in request";
const INVALID: &str = "Invalid API key in request";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    header: Option<String>,
    query: Option<String>,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    hide_credentials: bool,
    anonymous_consumer: Option<String>,
}

fn default_realm() -> String {
    "key".into()
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "header": {"type": "string", "default": DEFAULT_NAME},
            "query": {"type": "string", "default": DEFAULT_NAME},
            "realm": {
                "type": "string", "default": "key", "minLength": 1, "maxLength": 128,
                "pattern": "^[\\x20-\\x21\\x23-\\x5B\\x5D-\\x7E]+$"
            },
            "hide_credentials": {"type": "boolean", "default": false},
            "anonymous_consumer": {"type": "string", "minLength": 1}
        },
        "additionalProperties": false
    })
}

/// A consumer's (or credential's) key-auth settings: the key, or its
/// `sha256:<hex>` digest, becomes the lookup key; nothing else is kept.
fn consumer_conf(conf: &Value) -> Result<CredentialConf, ConfigError> {
    let key = match conf.get("key") {
        None | Some(Value::Null) => {
            return Err(ConfigError::new("", "property \"key\" is required"))
        }
        Some(Value::String(k)) => k,
        Some(other) => {
            return Err(ConfigError::new(
                "key",
                format!(
                    "property \"key\" validation failed: wrong type: expected string, got {}",
                    crate::auth_common::json_type(other)
                ),
            ))
        }
    };
    let lookup_key = match key.strip_prefix(DIGEST_PREFIX) {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            hex.to_ascii_lowercase()
        }
        Some(_) => {
            return Err(ConfigError::new(
                "key",
                "a key written as \"sha256:...\" must hold 64 hex digits",
            ))
        }
        None => digest(key.as_bytes()),
    };
    Ok(CredentialConf {
        lookup_key,
        conf: json!({}),
    })
}

/// Hex SHA-256, the form keys are indexed and looked up by.
pub(crate) fn digest(key: &[u8]) -> String {
    let mut hex = [0u8; 64];
    digest_hex(key, &mut hex).to_string()
}

/// [`digest`] into `out`, without allocating: what each request pays.
fn digest_hex<'o>(key: &[u8], out: &'o mut [u8; 64]) -> &'o str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(Sha256::digest(key)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

struct KeyAuth {
    header: HeaderName,
    /// `X-API-KEY`, when neither `header` nor `query` was configured.
    fallback: Option<HeaderName>,
    query: String,
    www_authenticate: HeaderValue,
    hide_credentials: bool,
    anonymous_consumer: Option<String>,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    let fallback = (conf.header.is_none() && conf.query.is_none()).then_some(FALLBACK_HEADER);
    let header_name = conf.header.as_deref().unwrap_or(DEFAULT_NAME);
    let header = HeaderName::from_bytes(header_name.as_bytes())
        .map_err(|_| ConfigError::new("header", "not a valid header name"))?;
    let query = conf.query.unwrap_or_else(|| DEFAULT_NAME.to_string());
    if query.is_empty() {
        return Err(ConfigError::new("query", "must not be empty"));
    }
    crate::auth_common::check_realm(&conf.realm)?;
    let www_authenticate = HeaderValue::from_str(&format!("apikey realm=\"{}\"", conf.realm))
        .map_err(|_| ConfigError::new("realm", "not usable in a header"))?;
    if conf.anonymous_consumer.as_deref() == Some("") {
        return Err(ConfigError::new("anonymous_consumer", "must not be empty"));
    }
    Ok(Arc::new(KeyAuth {
        header,
        fallback,
        query,
        www_authenticate,
        hide_credentials: conf.hide_credentials,
        anonymous_consumer: conf.anonymous_consumer,
    }))
}

/// What the request presented.
enum Presented<'r> {
    None,
    One(Cow<'r, [u8]>),
    /// Different keys in different places (or repeated): refused rather
    /// than guess which one the upstream will believe.
    Conflicting,
}

impl KeyAuth {
    fn presented<'r>(&self, req: &'r RequestState) -> Presented<'r> {
        let headers = req.head.headers.get_all(&self.header).iter();
        let fallback = self
            .fallback
            .iter()
            .flat_map(|name| req.head.headers.get_all(name).iter());
        let from_headers = headers.chain(fallback).map(|v| Cow::Borrowed(v.as_bytes()));
        let from_query = req
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k) == self.query.as_str()).then(|| match percent_decode(v) {
                    Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                    Cow::Owned(s) => Cow::Owned(s.into_bytes()),
                })
            });
        let mut found = Presented::None;
        for key in from_headers.chain(from_query) {
            found = match found {
                Presented::None => Presented::One(key),
                Presented::One(k) if k == key => Presented::One(k),
                _ => return Presented::Conflicting,
            };
        }
        found
    }

    /// Remove every place a key may have come from, so the upstream never
    /// sees it.
    fn strip_credentials(&self, req: &mut RequestState) {
        req.head.headers.remove(&self.header);
        if let Some(fallback) = &self.fallback {
            req.head.headers.remove(fallback);
        }
        let Some(query) = req.query() else { return };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
                percent_decode(k) != self.query.as_str()
            })
            .collect();
        if kept.len() == query.split('&').count() {
            return;
        }
        let path_and_query = if kept.is_empty() {
            req.path().to_string()
        } else {
            format!("{}?{}", req.path(), kept.join("&"))
        };
        let mut parts = req.head.uri.clone().into_parts();
        if let Ok(pq) = path_and_query.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                req.head.uri = uri;
            }
        }
    }

    fn reject(&self, req: &mut RequestState, message: &'static str, reason: &'static str) -> Flow {
        crate::auth_common::unauthorized(req, NAME, message, reason, &self.www_authenticate)
    }

    /// No usable key: the anonymous consumer when configured, else 401.
    fn unauthenticated(
        &self,
        req: &mut RequestState,
        message: &'static str,
        reason: &'static str,
    ) -> Flow {
        let Some(anonymous) = &self.anonymous_consumer else {
            return self.reject(req, message, reason);
        };
        let hide = |req: &mut RequestState| {
            if self.hide_credentials {
                self.strip_credentials(req);
            }
        };
        crate::auth_common::attach_anonymous(req, NAME, anonymous, &self.www_authenticate, hide)
    }
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        NAME
    }
    fn phase(&self) -> Phase {
        SPEC.phase
    }
    fn priority(&self) -> i32 {
        SPEC.priority
    }

    fn on_request(&self, req: &mut RequestState) -> Flow {
        let mut hex = [0u8; 64];
        let lookup = match self.presented(req) {
            Presented::None => return self.unauthenticated(req, MISSING, "missing API key"),
            Presented::Conflicting => {
                return self.unauthenticated(req, INVALID, "conflicting API keys")
            }
            Presented::One(key) => digest_hex(&key, &mut hex),
        };
        // The index comes with the request, from the snapshot serving it.
        let Some(found) = req.consumers.lookup(NAME, lookup) else {
            return self.unauthenticated(req, INVALID, "invalid API key");
        };
        let (consumer, credential_id) = (found.consumer.clone(), found.credential_id.clone());
        if self.hide_credentials {
            self.strip_credentials(req);
        }
        crate::auth_common::attach_identity(req, NAME, consumer, credential_id);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::StatusCode;
    use portcullis_core::{Consumer, Outcome, Rejection};

    use super::*;
    use crate::auth_common::ANONYMOUS_MISSING;
    use crate::consumers::{AddCredentials, ConsumerIndex, CredentialSource};
    use crate::context::SharedState;
    use crate::registry::build_plugin;

    fn consumer(name: &str) -> Arc<Consumer> {
        Arc::new(Consumer {
            username: name.into(),
            group_id: None,
            labels: BTreeMap::new(),
        })
    }

    fn index() -> Arc<ConsumerIndex> {
        let mut index = ConsumerIndex::default();
        let plugins = BTreeMap::from([(NAME.to_string(), json!({"key": "order-service-secret"}))]);
        index
            .add(CredentialSource {
                consumer: consumer("order-service"),
                credential_id: None,
                plugins: &plugins,
            })
            .unwrap();
        let digested = format!("sha256:{}", digest(b"billing-secret"));
        let plugins = BTreeMap::from([(NAME.to_string(), json!({ "key": digested }))]);
        index
            .add(CredentialSource {
                consumer: consumer("billing"),
                credential_id: Some("cred-1".into()),
                plugins: &plugins,
            })
            .unwrap();
        index.add_consumer(consumer("order-service"));
        index.add_consumer(consumer("billing"));
        index.add_consumer(consumer("guest"));
        Arc::new(index)
    }

    fn plugin(conf: Value) -> Arc<dyn Plugin> {
        let consumers = index();
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        build_plugin(NAME, &conf, &ctx).unwrap().unwrap()
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestState {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, ()) = b.body(()).unwrap().into_parts();
        let mut req = RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080);
        req.consumers = index();
        req
    }

    fn rejected(flow: Flow) -> Rejection {
        match flow {
            Flow::Respond(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn assert_401(flow: Flow, message: &str) {
        let r = rejected(flow);
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body, format!("{{\"message\":\"{message}\"}}\n"));
        let www = r
            .headers
            .iter()
            .find(|(k, _)| k == http::header::WWW_AUTHENTICATE)
            .map(|(_, v)| v.to_str().unwrap());
        assert_eq!(www, Some("apikey realm=\"key\""));
    }

    #[test]
    fn request_without_key_is_refused_as_missing() {
        let mut req = request("/", &[]);
        assert_401(plugin(json!({})).on_request(&mut req), MISSING);
        assert_eq!(req.decisions[0].outcome, Outcome::Reject);
        assert_eq!(req.decisions[0].reason.as_deref(), Some("missing API key"));
    }

    #[test]
    fn unknown_key_is_refused_as_invalid_and_never_recorded() {
        let mut req = request("/", &[("apikey", "guess-me")]);
        assert_401(plugin(json!({})).on_request(&mut req), INVALID);
        let reason = req.decisions[0].reason.as_deref().unwrap();
        assert!(!reason.contains("guess-me"));
    }

    #[test]
    fn key_in_apikey_header_authenticates_the_consumer() {
        let mut req = request("/", &[("apikey", "order-service-secret")]);
        assert!(matches!(
            plugin(json!({})).on_request(&mut req),
            Flow::Continue
        ));
        assert_eq!(req.consumer_name(), Some("order-service"));
        let identity = req.identity.as_ref().unwrap();
        assert_eq!(identity.authenticated_by, "key-auth");
        assert_eq!(identity.credential_id, None);
        assert_eq!(req.header_str("x-consumer-username"), Some("order-service"));
        assert_eq!(req.header_str("x-credential-identifier"), None);
        // hide_credentials is off: the key goes upstream as APISIX does.
        assert_eq!(req.header_str("apikey"), Some("order-service-secret"));
        assert_eq!(req.decisions[0].outcome, Outcome::Allow);
    }

    #[test]
    fn x_api_key_is_accepted_when_no_location_is_configured() {
        let mut req = request("/", &[("X-API-KEY", "order-service-secret")]);
        assert!(matches!(
            plugin(json!({})).on_request(&mut req),
            Flow::Continue
        ));
        assert_eq!(req.consumer_name(), Some("order-service"));
    }

    #[test]
    fn x_api_key_is_ignored_when_a_header_is_configured() {
        let mut req = request("/", &[("X-API-KEY", "order-service-secret")]);
        let flow = plugin(json!({"header": "token"})).on_request(&mut req);
        assert_401(flow, MISSING);
    }

    #[test]
    fn key_in_query_authenticates_and_hide_credentials_removes_it() {
        let mut req = request("/p?a=1&apikey=order-service-secret&b=2", &[]);
        let flow = plugin(json!({"hide_credentials": true})).on_request(&mut req);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(req.head.uri.to_string(), "/p?a=1&b=2");
        let mut req = request("/p?apikey=order-service-secret", &[]);
        plugin(json!({"hide_credentials": true})).on_request(&mut req);
        assert_eq!(req.head.uri.to_string(), "/p");
    }

    #[test]
    fn hide_credentials_removes_the_header_before_proxying() {
        let mut req = request("/", &[("apikey", "order-service-secret")]);
        let flow = plugin(json!({"hide_credentials": true})).on_request(&mut req);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(req.header_str("apikey"), None);
        let mut req = request("/", &[("x-api-key", "order-service-secret")]);
        plugin(json!({"hide_credentials": true})).on_request(&mut req);
        assert_eq!(req.header_str("x-api-key"), None);
    }

    #[test]
    fn two_different_keys_are_refused() {
        let mut req = request("/?apikey=other", &[("apikey", "order-service-secret")]);
        assert_401(plugin(json!({})).on_request(&mut req), INVALID);
        let mut req = request(
            "/",
            &[("apikey", "order-service-secret"), ("x-api-key", "other")],
        );
        assert_401(plugin(json!({})).on_request(&mut req), INVALID);
        assert_eq!(
            req.decisions[0].reason.as_deref(),
            Some("conflicting API keys")
        );
    }

    #[test]
    fn the_same_key_in_two_places_is_accepted() {
        let mut req = request(
            "/?apikey=order-service-secret",
            &[("apikey", "order-service-secret")],
        );
        assert!(matches!(
            plugin(json!({})).on_request(&mut req),
            Flow::Continue
        ));
    }

    #[test]
    fn digested_key_on_a_credential_matches_the_plain_key() {
        let mut req = request("/", &[("apikey", "billing-secret")]);
        assert!(matches!(
            plugin(json!({})).on_request(&mut req),
            Flow::Continue
        ));
        assert_eq!(req.consumer_name(), Some("billing"));
        assert_eq!(req.header_str("x-credential-identifier"), Some("cred-1"));
    }

    #[test]
    fn spoofed_consumer_headers_are_replaced() {
        let mut req = request(
            "/",
            &[
                ("apikey", "order-service-secret"),
                ("x-consumer-username", "admin"),
                ("x-credential-identifier", "forged"),
                ("x-consumer-custom-id", "forged"),
            ],
        );
        plugin(json!({})).on_request(&mut req);
        assert_eq!(req.header_str("x-consumer-username"), Some("order-service"));
        assert_eq!(req.header_str("x-credential-identifier"), None);
        assert_eq!(req.header_str("x-consumer-custom-id"), None);
    }

    #[test]
    fn anonymous_consumer_is_used_when_no_key_authenticates() {
        let p = plugin(json!({"anonymous_consumer": "guest", "hide_credentials": true}));
        let mut req = request("/?apikey=wrong", &[]);
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        assert_eq!(req.consumer_name(), Some("guest"));
        assert_eq!(req.head.uri.to_string(), "/");
        let p = plugin(json!({"anonymous_consumer": "nobody"}));
        let mut req = request("/", &[]);
        assert_401(p.on_request(&mut req), ANONYMOUS_MISSING);
    }

    #[test]
    fn custom_header_and_realm_are_honoured() {
        let p = plugin(json!({"header": "Authorization-Key", "realm": "partners"}));
        let mut req = request("/", &[("authorization-key", "order-service-secret")]);
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        let mut req = request("/", &[]);
        let r = rejected(p.on_request(&mut req));
        assert!(r
            .headers
            .iter()
            .any(|(_, v)| v == "apikey realm=\"partners\""));
    }

    #[test]
    fn consumer_without_key_is_refused_in_apisix_words() {
        let mut index = ConsumerIndex::default();
        let plugins = BTreeMap::from([(NAME.to_string(), json!({}))]);
        let err = index
            .add(CredentialSource {
                consumer: consumer("c"),
                credential_id: None,
                plugins: &plugins,
            })
            .unwrap_err();
        assert_eq!(
            err.message,
            "invalid plugins configuration: failed to check the configuration of plugin key-auth err: property \"key\" is required"
        );
    }

    #[test]
    fn consumer_conf_keeps_only_the_digest() {
        let cred = consumer_conf(&json!({"key": "s3cret"})).unwrap();
        assert_eq!(cred.lookup_key, digest(b"s3cret"));
        assert!(!cred.conf.to_string().contains("s3cret"));
        let upper = format!("sha256:{}", digest(b"s3cret").to_uppercase());
        assert_eq!(
            consumer_conf(&json!({ "key": upper })).unwrap().lookup_key,
            digest(b"s3cret")
        );
        assert!(consumer_conf(&json!({"key": "sha256:abc"})).is_err());
        assert!(consumer_conf(&json!({"key": 5})).is_err());
    }

    #[test]
    fn unknown_route_field_is_named() {
        let consumers = index();
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        let err = build_plugin(NAME, &json!({"hedaer": "x"}), &ctx)
            .err()
            .unwrap();
        assert!(err.message.contains("hedaer"), "{}", err.message);
    }
}
