//! What every auth plugin does once it knows who the caller is: attach the
//! consumer to the request and tell the upstream, through headers it can
//! trust, as APISIX 3 does (`X-Consumer-Username`, `X-Credential-Identifier`).

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode};
use portcullis_core::consumer::Identity;
use portcullis_core::{ConfigError, Consumer, Decision, Flow, Rejection, RequestState};

pub(crate) const CONSUMER_HEADER: HeaderName = HeaderName::from_static("x-consumer-username");
pub(crate) const CREDENTIAL_HEADER: HeaderName = HeaderName::from_static("x-credential-identifier");
pub(crate) const CUSTOM_ID_HEADER: HeaderName = HeaderName::from_static("x-consumer-custom-id");

/// Attribute the request to `consumer`, set the identity headers for the
/// upstream (whatever the client sent under those names is replaced or
/// removed) and record the allow decision of `plugin`.
pub(crate) fn attach_identity(
    req: &mut RequestState,
    plugin: &'static str,
    consumer: Arc<Consumer>,
    credential_id: Option<Arc<str>>,
) {
    let headers = &mut req.head.headers;
    headers.remove(&CONSUMER_HEADER);
    headers.remove(&CREDENTIAL_HEADER);
    headers.remove(&CUSTOM_ID_HEADER);
    if let Ok(v) = HeaderValue::from_str(&consumer.username) {
        headers.insert(CONSUMER_HEADER, v);
    }
    if let Some(Ok(v)) = credential_id.as_deref().map(HeaderValue::from_str) {
        headers.insert(CREDENTIAL_HEADER, v);
    }
    req.identity = Some(Identity {
        consumer,
        credential_id,
        authenticated_by: plugin,
    });
    req.decisions.push(Decision::allow(plugin));
}

/// APISIX's answer when a route's `anonymous_consumer` names no consumer.
pub(crate) const ANONYMOUS_MISSING: &str = "Invalid user authorization";

/// 401 `{"message": ...}` with the plugin's `WWW-Authenticate` challenge;
/// `reason` (never a secret) goes to the decision record.
pub(crate) fn unauthorized(
    req: &mut RequestState,
    plugin: &'static str,
    message: &'static str,
    reason: impl Into<Cow<'static, str>>,
    challenge: &HeaderValue,
) -> Flow {
    req.decisions.push(Decision::reject(plugin, reason));
    Flow::Respond(
        Rejection::message(StatusCode::UNAUTHORIZED, message)
            .with_header(http::header::WWW_AUTHENTICATE, challenge.clone()),
    )
}

/// The request brought no usable credential and the route names an
/// anonymous consumer: attribute the request to it (after `hide` removed
/// whatever credential was sent, when the plugin hides credentials), or
/// 401 when no such consumer exists.
pub(crate) fn attach_anonymous(
    req: &mut RequestState,
    plugin: &'static str,
    anonymous: &str,
    challenge: &HeaderValue,
    hide: impl FnOnce(&mut RequestState),
) -> Flow {
    let Some(consumer) = req.consumers.consumer(anonymous).cloned() else {
        return unauthorized(
            req,
            plugin,
            ANONYMOUS_MISSING,
            "anonymous consumer not found",
            challenge,
        );
    };
    hide(req);
    attach_identity(req, plugin, consumer, None);
    Flow::Continue
}

/// APISIX's realm rule (`schema_def.get_realm_schema`): 1 to 128 printable
/// ASCII characters without `"` or `\`, so it can sit in a quoted header.
pub(crate) fn check_realm(realm: &str) -> Result<(), ConfigError> {
    let ok = !realm.is_empty()
        && realm.len() <= 128
        && realm
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "realm",
            "must be 1 to 128 printable ASCII characters without '\"' or '\\'",
        ))
    }
}

/// The JSON type name APISIX's schema errors use.
pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `property "x" is required` / wrong type, as APISIX's schema check words it.
pub(crate) fn required_string<'v>(
    conf: &'v serde_json::Value,
    field: &str,
) -> Result<&'v str, ConfigError> {
    match conf.get(field) {
        None | Some(serde_json::Value::Null) => Err(ConfigError::new(
            "",
            format!("property \"{field}\" is required"),
        )),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => Err(ConfigError::new(
            field,
            format!(
                "property \"{field}\" validation failed: wrong type: expected string, got {}",
                json_type(other)
            ),
        )),
    }
}

/// Remove every `name` argument from the request's query string.
pub(crate) fn strip_query_arg(req: &mut RequestState, name: &str) {
    use portcullis_core::request::percent_decode;
    let Some(query) = req.query() else { return };
    let total = query.split('&').count();
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(k) != name
        })
        .collect();
    if kept.len() == total {
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

/// Remove the cookie `name` from every `Cookie` header, dropping headers
/// left empty.
pub(crate) fn strip_cookie(req: &mut RequestState, name: &str) {
    let cookies: Vec<String> = req
        .head
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .map(str::trim)
                .filter(|pair| {
                    !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != name
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|v| !v.is_empty())
        .collect();
    req.head.headers.remove(http::header::COOKIE);
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            req.head.headers.append(http::header::COOKIE, v);
        }
    }
}
