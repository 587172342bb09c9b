//! openid-connect, bearer-only: authenticate `Authorization: Bearer`
//! access tokens issued by an OpenID provider (APISIX's plugin of the same
//! name, its field names where they overlap; the relying-party login flow
//! with sessions and redirects is not offered).
//!
//! Two ways to check a token, as APISIX has them:
//! - `use_jwks: true`: locally, against the provider's JWK set found
//!   through `discovery` (`jwks_uri`), refreshed in the background and when
//!   a token names an unknown `kid` (jwt-auth's JWKS code). `iss` must be
//!   the provider's `issuer`; `exp` is required.
//! - otherwise: RFC 7662 introspection at `introspection_endpoint` (or the
//!   discovered one), authenticated with the client credentials. Results
//!   are cached by the token's SHA-256 (never the token) until the token's
//!   `exp`, at most `introspection_cache_ttl` seconds, in a bounded cache;
//!   inactive answers for a few seconds.
//!
//! Either way `required_scopes` must all be in `scope` (or `scp`), an
//! `audience` (when set) in `aud`, and the `consumer_claim` (default `sub`)
//! names the consumer.
//!
//! Network IO never runs inside `on_request`: when the discovery document,
//! the JWK set or an introspection answer is not there yet, the plugin
//! answers [`Flow::Retry`] with a future that fetches it, and the pipeline
//! calls it again once it is there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use portcullis_core::{
    ConfigError, Consumer, Decision, Flow, Phase, Plugin, Rejection, RequestState,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::context::{config_hash, parse_conf, BuildContext};
use crate::jwt_auth::jwks::{self, JwksSource};
use crate::jwt_auth::keys::{parse_alg, Family};
use crate::jwt_auth::token::{self, ClaimPolicy};
use crate::registry::PluginSpec;

pub const NAME: &str = "openid-connect";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Authenticate,
    // APISIX's priority.
    priority: 2599,
    enforcing: true,
    build,
    consumer_conf: None,
    schema,
};

const MISSING: &str = "No bearer token found in request";
const INVALID: &str = "Invalid bearer token";
const SCOPE: &str = "Insufficient scope";
const UNKNOWN_CONSUMER: &str = "Unknown consumer";
const UNAVAILABLE: &str = "Identity provider unavailable";
const MAX_BODY: usize = 256 * 1024;
const INACTIVE_TTL: Duration = Duration::from_secs(5);
const UNAVAILABLE_TTL: Duration = Duration::from_secs(1);

/// APISIX's fields for the relying-party flow: accepted, so an APISIX
/// config pastes in, and not acted on in bearer-only mode.
const IGNORED_APISIX_FIELDS: &[&str] = &[
    "scope",
    "redirect_uri",
    "logout_path",
    "post_logout_redirect_uri",
    "redirect_after_logout_uri",
    "session",
    "session_contents",
    "unauth_action",
    "use_pkce",
    "set_id_token_header",
    "set_userinfo_header",
    "set_refresh_token_header",
    "proxy_opts",
    "authorization_params",
    "renew_access_token_on_expiry",
    "access_token_expires_in",
    "access_token_expires_leeway",
    "refresh_session_interval",
    "iat_slack",
    "accept_none_alg",
    "accept_unsupported_alg",
    "force_reauthorize",
    "use_nonce",
    "revoke_tokens_on_logout",
    "jwk_expires_in",
    "jwt_verification_cache_ignore",
    "cache_segment",
    "introspection_interval",
    "introspection_expiry_claim",
    "introspection_addon_headers",
    "token_endpoint_auth_method",
    "ssl_verify",
    "client_jwt_assertion_expires_in",
    "client_rsa_private_key",
    "client_rsa_private_key_id",
    "claim_schema",
];

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Conf {
    client_id: String,
    client_secret: String,
    discovery: String,
    #[serde(default)]
    bearer_only: bool,
    #[serde(default = "default_realm")]
    realm: String,
    introspection_endpoint: Option<String>,
    #[serde(default = "default_auth_method")]
    introspection_endpoint_auth_method: String,
    #[serde(default)]
    use_jwks: bool,
    token_signing_alg_values_expected: Option<OneOrMany>,
    #[serde(default)]
    required_scopes: Vec<String>,
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default = "yes")]
    set_access_token_header: bool,
    #[serde(default)]
    access_token_in_authorization_header: bool,
    // portcullis
    audience: Option<OneOrMany>,
    #[serde(default = "default_consumer_claim")]
    consumer_claim: String,
    #[serde(default)]
    consumer_required: bool,
    #[serde(default = "default_cache_ttl")]
    introspection_cache_ttl: u64,
    #[serde(default = "default_cache_size")]
    introspection_cache_size: usize,
    #[serde(default)]
    lifetime_grace_period: u64,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

fn default_realm() -> String {
    "apisix".into()
}
fn default_auth_method() -> String {
    "client_secret_basic".into()
}
fn default_timeout() -> u64 {
    3
}
fn yes() -> bool {
    true
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_cache_ttl() -> u64 {
    300
}
fn default_cache_size() -> usize {
    10_000
}

fn schema() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "type": "object",
        "properties": {
            "client_id": {"type": "string"},
            "client_secret": {"type": "string"},
            "discovery": {"type": "string"},
            "bearer_only": {"type": "boolean", "default": false},
            "realm": {"type": "string", "default": "apisix"},
            "introspection_endpoint": {"type": "string"},
            "introspection_endpoint_auth_method": {
                "type": "string", "default": "client_secret_basic",
                "enum": ["client_secret_basic", "client_secret_post"]
            },
            "use_jwks": {"type": "boolean", "default": false},
            "token_signing_alg_values_expected": {"oneOf": [{"type": "string"}, strings]},
            "required_scopes": strings,
            "timeout": {"type": "integer", "minimum": 1, "default": 3},
            "set_access_token_header": {"type": "boolean", "default": true},
            "access_token_in_authorization_header": {"type": "boolean", "default": false},
            "audience": {"oneOf": [{"type": "string"}, strings]},
            "consumer_claim": {"type": "string", "default": "sub"},
            "consumer_required": {"type": "boolean", "default": false},
            "introspection_cache_ttl": {"type": "integer", "minimum": 0, "default": 300},
            "introspection_cache_size": {"type": "integer", "minimum": 1, "default": 10000},
            "lifetime_grace_period": {"type": "integer", "minimum": 0, "default": 0}
        },
        "required": ["client_id", "client_secret", "discovery"]
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---- the provider: discovery document and JWK set -----------------------------

struct Discovered {
    issuer: Option<String>,
    introspection_endpoint: Option<String>,
    jwks: Option<Arc<JwksSource>>,
}

struct Provider {
    uri: http::Uri,
    doc: tokio::sync::watch::Sender<Option<Arc<Discovered>>>,
    /// The last fetch failed and nothing was ever fetched.
    failing: AtomicBool,
}

/// One provider per discovery URL, shared by every route naming it; its
/// document is fetched in the background and refreshed hourly.
fn provider(uri: &str) -> Result<Arc<Provider>, String> {
    static PROVIDERS: OnceLock<Mutex<HashMap<String, Weak<Provider>>>> = OnceLock::new();
    let parsed = jwks::check_uri(uri)?;
    let mut map = PROVIDERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(p) = map.get(uri).and_then(Weak::upgrade) {
        return Ok(p);
    }
    map.retain(|_, w| w.strong_count() > 0);
    let p = Arc::new(Provider {
        uri: parsed,
        doc: tokio::sync::watch::channel(None).0,
        failing: AtomicBool::new(false),
    });
    map.insert(uri.to_string(), Arc::downgrade(&p));
    jwks::spawn_background(refresh_provider(Arc::downgrade(&p)));
    Ok(p)
}

async fn refresh_provider(weak: Weak<Provider>) {
    loop {
        let Some(uri) = weak.upgrade().map(|p| p.uri.clone()) else {
            return;
        };
        let result = call(&uri, None, jwks::FETCH_TIMEOUT).await;
        let Some(p) = weak.upgrade() else { return };
        let next = match result.and_then(|(status, body)| {
            if status != StatusCode::OK {
                return Err(format!("answered {status}"));
            }
            serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())
        }) {
            Ok(doc) => {
                let s = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_string);
                let jwks = match s("jwks_uri") {
                    Some(u) => match jwks::remote(&u, 30, 300) {
                        Ok(j) => Some(j),
                        Err(e) => {
                            tracing::warn!(uri = %u, error = %e, "discovered jwks_uri unusable");
                            None
                        }
                    },
                    None => None,
                };
                p.doc.send_replace(Some(Arc::new(Discovered {
                    issuer: s("issuer"),
                    introspection_endpoint: s("introspection_endpoint"),
                    jwks,
                })));
                p.failing.store(false, Ordering::Relaxed);
                Duration::from_secs(3600)
            }
            Err(error) => {
                tracing::warn!(uri = %uri, %error, "OpenID discovery failed");
                if p.doc.borrow().is_none() {
                    p.failing.store(true, Ordering::Relaxed);
                }
                Duration::from_secs(10)
            }
        };
        drop(p);
        tokio::time::sleep(next).await;
    }
}

// ---- a small HTTP client ---------------------------------------------------------

/// GET `uri` (or POST a form when `form` is given) and read the answer,
/// bounded in time and size; no redirects.
async fn call(
    uri: &http::Uri,
    form: Option<(Vec<(HeaderName, String)>, String)>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    tokio::time::timeout(timeout, call_inner(uri, form))
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

async fn call_inner(
    uri: &http::Uri,
    form: Option<(Vec<(HeaderName, String)>, String)>,
) -> Result<(StatusCode, Bytes), String> {
    let host = uri.host().ok_or("no host")?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut builder = http::Request::builder()
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "portcullis-oidc");
    let body = match form {
        None => Bytes::new(),
        Some((headers, body)) => {
            builder = builder.method(http::Method::POST).header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
            for (k, v) in headers {
                builder = builder.header(k, v);
            }
            Bytes::from(body)
        }
    };
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let response = if https {
        let name = rustls::pki_types::ServerName::try_from(bare_host.to_string())
            .map_err(|_| "not a valid TLS server name")?;
        let tls = tokio_rustls::TlsConnector::from(jwks::tls_config())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        crate::jwt_auth::jwks::send(TokioIo::new(tls), request).await?
    } else {
        crate::jwt_auth::jwks::send(TokioIo::new(tcp), request).await?
    };
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// `application/x-www-form-urlencoded` value encoding.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- the introspection cache ----------------------------------------------------

#[derive(Clone)]
enum Introspected {
    Active(Arc<Map<String, Value>>),
    Inactive,
    Unavailable,
}

#[derive(Default)]
struct Cache {
    entries: Mutex<HashMap<[u8; 32], (Instant, Introspected)>>,
}

impl Cache {
    fn get(&self, key: &[u8; 32]) -> Option<Introspected> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, v)| v.clone())
    }

    fn insert(&self, key: [u8; 32], value: Introspected, ttl: Duration, max: usize) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= max {
            let now = Instant::now();
            entries.retain(|_, (until, _)| *until > now);
            // Still full: drop an eighth, whichever they are.
            if entries.len() >= max {
                let drop: Vec<_> = entries.keys().take(max / 8 + 1).copied().collect();
                for k in drop {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, (Instant::now() + ttl, value));
    }
}

// ---- the plugin ---------------------------------------------------------------------

struct OpenidConnect {
    provider: Arc<Provider>,
    client_id: String,
    client_secret: String,
    introspection_endpoint: Option<http::Uri>,
    auth_post: bool,
    use_jwks: bool,
    algorithms: Vec<Algorithm>,
    required_scopes: Vec<String>,
    audiences: Vec<String>,
    consumer_claim: String,
    consumer_required: bool,
    access_token_header: Option<HeaderName>,
    realm: String,
    timeout: Duration,
    cache: Arc<Cache>,
    cache_ttl: u64,
    cache_size: usize,
    leeway: u64,
}

fn build(raw: &Value, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(raw)?;
    if let Some(k) = conf
        .rest
        .keys()
        .find(|k| !IGNORED_APISIX_FIELDS.contains(&k.as_str()))
    {
        return Err(ConfigError::new(k.as_str(), "unknown field"));
    }
    if !conf.bearer_only {
        return Err(ConfigError::new(
            "bearer_only",
            "portcullis supports bearer_only: true only (no login redirects or sessions)",
        ));
    }
    if conf.client_id.is_empty() {
        return Err(ConfigError::new("client_id", "must not be empty"));
    }
    crate::auth_common::check_realm(&conf.realm)?;
    let provider = provider(&conf.discovery).map_err(|e| ConfigError::new("discovery", e))?;
    let introspection_endpoint = match &conf.introspection_endpoint {
        None => None,
        Some(u) => {
            Some(jwks::check_uri(u).map_err(|e| ConfigError::new("introspection_endpoint", e))?)
        }
    };
    let auth_post = match conf.introspection_endpoint_auth_method.as_str() {
        "client_secret_basic" => false,
        "client_secret_post" => true,
        other => {
            return Err(ConfigError::new(
                "introspection_endpoint_auth_method",
                format!("\"{other}\" is not one of client_secret_basic, client_secret_post"),
            ))
        }
    };
    let mut algorithms = Vec::new();
    for (i, name) in conf
        .token_signing_alg_values_expected
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = format!("token_signing_alg_values_expected[{i}]");
        let alg = parse_alg(name)
            .ok_or_else(|| ConfigError::new(&field, format!("unsupported algorithm {name}")))?;
        if Family::of(alg) == Family::Hmac {
            return Err(ConfigError::new(
                field,
                "HMAC algorithms cannot be verified with a JWK set",
            ));
        }
        algorithms.push(alg);
    }
    if algorithms.is_empty() {
        algorithms = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ]
        .to_vec();
    }
    if conf.timeout == 0 {
        return Err(ConfigError::new("timeout", "must be at least 1"));
    }
    let access_token_header = conf.set_access_token_header.then(|| {
        if conf.access_token_in_authorization_header {
            http::header::AUTHORIZATION
        } else {
            HeaderName::from_static("x-access-token")
        }
    });
    let key = format!("{}|{NAME}|{:x}", ctx.owner, config_hash(raw));
    Ok(Arc::new(OpenidConnect {
        provider,
        client_id: conf.client_id,
        client_secret: conf.client_secret,
        introspection_endpoint,
        auth_post,
        use_jwks: conf.use_jwks,
        algorithms,
        required_scopes: conf.required_scopes,
        audiences: conf.audience.map(OneOrMany::into_vec).unwrap_or_default(),
        consumer_claim: conf.consumer_claim,
        consumer_required: conf.consumer_required,
        access_token_header,
        realm: conf.realm,
        timeout: Duration::from_secs(conf.timeout),
        cache: ctx.state.get_or_insert(&key, Cache::default),
        cache_ttl: conf.introspection_cache_ttl,
        cache_size: conf.introspection_cache_size.max(1),
        leeway: conf.lifetime_grace_period,
    }))
}

/// Why a request did not authenticate.
struct Failure {
    status: StatusCode,
    message: &'static str,
    error: Option<&'static str>,
    reason: String,
}

fn invalid(reason: impl Into<String>) -> Failure {
    Failure {
        status: StatusCode::UNAUTHORIZED,
        message: INVALID,
        error: Some("invalid_token"),
        reason: reason.into(),
    }
}

fn bearer_token(req: &RequestState) -> Option<&str> {
    let v = req.header_str("authorization")?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn scopes_of(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

impl OpenidConnect {
    fn reject(&self, req: &mut RequestState, f: Failure) -> Flow {
        req.decisions.push(Decision::reject(NAME, f.reason.clone()));
        let challenge = match f.error {
            Some(e) => format!("Bearer realm=\"{}\", error=\"{e}\"", self.realm),
            None => format!("Bearer realm=\"{}\"", self.realm),
        };
        let mut r = Rejection::message(f.status, f.message);
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r = r.with_header(http::header::WWW_AUTHENTICATE, v);
        }
        Flow::Respond(r)
    }

    /// Wait (bounded) for the discovery document.
    fn wait_for_discovery(&self) -> Flow {
        let mut rx = self.provider.doc.subscribe();
        let timeout = self.timeout;
        Flow::Retry(Box::pin(async move {
            let _ = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        }))
    }

    fn discovered(&self) -> Result<Option<Arc<Discovered>>, Failure> {
        let doc = self.provider.doc.borrow().clone();
        if doc.is_none() && self.provider.failing.load(Ordering::Relaxed) {
            return Err(Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: UNAVAILABLE,
                error: None,
                reason: "discovery document unavailable".into(),
            });
        }
        Ok(doc)
    }

    /// Local verification against the discovered JWK set.
    fn verify_locally(
        &self,
        token: &str,
        doc: &Discovered,
    ) -> Result<Result<Map<String, Value>, Failure>, Flow> {
        let Some(source) = doc.jwks.clone() else {
            return Ok(Err(invalid("provider publishes no jwks_uri")));
        };
        if source.len() == 0 {
            // The first fetch of the set is under way: wait for it.
            let timeout = self.timeout;
            return Err(Flow::Retry(Box::pin(async move {
                let deadline = Instant::now() + timeout;
                while source.len() == 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })));
        }
        let parsed = match token::parse(token) {
            Ok(t) => t,
            Err(m) => return Ok(Err(invalid(m.reason()))),
        };
        let Some(alg) = parse_alg(&parsed.alg).filter(|a| self.algorithms.contains(a)) else {
            return Ok(Err(invalid("algorithm not allowed")));
        };
        match source.with_key(parsed.kid.as_deref(), alg, |k| k.verify(&parsed, alg)) {
            Ok(true) => {}
            Ok(false) => return Ok(Err(invalid("signature mismatch"))),
            Err(miss) => return Ok(Err(invalid(miss.reason()))),
        }
        let policy = ClaimPolicy {
            require_exp: true,
            leeway: self.leeway,
            issuers: doc.issuer.iter().cloned().collect(),
            ..Default::default()
        };
        if let Err(e) = policy
            .check_time(&parsed.payload, now_secs())
            .and_then(|()| policy.check_others(&parsed.payload))
        {
            return Ok(Err(invalid(e.reason())));
        }
        Ok(Ok(parsed.payload))
    }

    fn introspect(&self, token: &str, doc: Option<&Discovered>) -> Result<Introspected, Flow> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit);
        }
        let endpoint = match (&self.introspection_endpoint, doc) {
            (Some(e), _) => e.clone(),
            (None, Some(d)) => match d.introspection_endpoint.as_deref().map(jwks::check_uri) {
                Some(Ok(u)) => u,
                _ => return Ok(Introspected::Unavailable),
            },
            (None, None) => return Err(self.wait_for_discovery()),
        };
        let mut headers = Vec::new();
        let mut body = format!("token={}&token_type_hint=access_token", form_encode(token));
        if self.auth_post {
            body.push_str(&format!(
                "&client_id={}&client_secret={}",
                form_encode(&self.client_id),
                form_encode(&self.client_secret)
            ));
        } else {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                form_encode(&self.client_id),
                form_encode(&self.client_secret)
            ));
            headers.push((http::header::AUTHORIZATION, format!("Basic {basic}")));
        }
        let cache = self.cache.clone();
        let (timeout, max_ttl, size) = (self.timeout, self.cache_ttl, self.cache_size);
        Err(Flow::Retry(Box::pin(async move {
            let answer = call(&endpoint, Some((headers, body)), timeout).await;
            let (value, ttl) = match answer.and_then(|(status, body)| {
                if status != StatusCode::OK {
                    return Err(format!("answered {status}"));
                }
                serde_json::from_slice::<Map<String, Value>>(&body).map_err(|e| e.to_string())
            }) {
                Ok(claims) if claims.get("active") == Some(&Value::Bool(true)) => {
                    let now = now_secs();
                    let until_exp = claims
                        .get("exp")
                        .and_then(Value::as_u64)
                        .map_or(max_ttl, |exp| exp.saturating_sub(now));
                    let ttl = Duration::from_secs(until_exp.min(max_ttl));
                    (Introspected::Active(Arc::new(claims)), ttl)
                }
                Ok(_) => (Introspected::Inactive, INACTIVE_TTL),
                Err(error) => {
                    tracing::warn!(%error, "token introspection failed");
                    (Introspected::Unavailable, UNAVAILABLE_TTL)
                }
            };
            // A zero ttl would make the retry miss again: keep it a moment.
            cache.insert(key, value, ttl.max(Duration::from_millis(500)), size);
        })))
    }

    /// Claims every mode checks, then the consumer.
    fn admit(
        &self,
        req: &mut RequestState,
        claims: &Map<String, Value>,
        token: &str,
    ) -> Result<(), Failure> {
        let policy = ClaimPolicy {
            leeway: self.leeway,
            audiences: self.audiences.clone(),
            ..Default::default()
        };
        policy
            .check_time(claims, now_secs())
            .and_then(|()| policy.check_others(claims))
            .map_err(|e| invalid(e.reason()))?;
        let scopes = scopes_of(claims);
        if let Some(missing) = self
            .required_scopes
            .iter()
            .find(|s| !scopes.contains(&s.as_str()))
        {
            return Err(Failure {
                status: StatusCode::UNAUTHORIZED,
                message: SCOPE,
                error: Some("insufficient_scope"),
                reason: format!("scope {missing} missing"),
            });
        }
        let name = claims.get(&self.consumer_claim).and_then(Value::as_str);
        let consumer = match name.and_then(|n| req.consumers.consumer(n)) {
            Some(c) => c.clone(),
            None if self.consumer_required || name.is_none() => {
                return Err(Failure {
                    status: StatusCode::UNAUTHORIZED,
                    message: UNKNOWN_CONSUMER,
                    error: Some("invalid_token"),
                    reason: format!("claim {} names no consumer", self.consumer_claim),
                })
            }
            // Not a configured consumer: the identity still carries the
            // provider's name for it, for the log and the upstream.
            None => Arc::new(Consumer {
                username: Arc::from(name.unwrap_or_default()),
                group_id: None,
                labels: Default::default(),
            }),
        };
        if let Some(h) = &self.access_token_header {
            let value = if *h == http::header::AUTHORIZATION {
                format!("Bearer {token}")
            } else {
                token.to_string()
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                req.head.headers.insert(h.clone(), v);
            }
        }
        crate::auth_common::attach_identity(req, NAME, consumer, None);
        Ok(())
    }
}

impl Plugin for OpenidConnect {
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
        let Some(token) = bearer_token(req).map(str::to_string) else {
            return self.reject(
                req,
                Failure {
                    status: StatusCode::UNAUTHORIZED,
                    message: MISSING,
                    error: None,
                    reason: "no bearer token".into(),
                },
            );
        };
        if token.len() > token::MAX_TOKEN_LEN {
            return self.reject(req, invalid("token too long"));
        }
        let doc = match self.discovered() {
            Ok(d) => d,
            Err(f) => return self.reject(req, f),
        };
        let claims = if self.use_jwks {
            let Some(doc) = doc else {
                return self.wait_for_discovery();
            };
            match self.verify_locally(&token, &doc) {
                Err(wait) => return wait,
                Ok(Err(f)) => return self.reject(req, f),
                Ok(Ok(claims)) => Arc::new(claims),
            }
        } else {
            match self.introspect(&token, doc.as_deref()) {
                Err(wait) => return wait,
                Ok(Introspected::Active(claims)) => claims,
                Ok(Introspected::Inactive) => return self.reject(req, invalid("token inactive")),
                Ok(Introspected::Unavailable) => {
                    return self.reject(
                        req,
                        Failure {
                            status: StatusCode::SERVICE_UNAVAILABLE,
                            message: UNAVAILABLE,
                            error: None,
                            reason: "introspection unavailable".into(),
                        },
                    )
                }
            }
        };
        match self.admit(req, &claims, &token) {
            Ok(()) => Flow::Continue,
            Err(f) => self.reject(req, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_read_from_scope_and_scp() {
        let claims = json!({"scope": "read write", "scp": ["admin"]});
        assert_eq!(
            scopes_of(claims.as_object().unwrap()),
            ["read", "write", "admin"]
        );
    }

    #[test]
    fn form_values_are_percent_encoded() {
        assert_eq!(form_encode("a b+c/=é"), "a%20b%2Bc%2F%3D%C3%A9");
    }

    #[test]
    fn the_cache_is_bounded_and_entries_expire() {
        let cache = Cache::default();
        for i in 0..100u8 {
            cache.insert([i; 32], Introspected::Inactive, Duration::from_secs(60), 10);
        }
        assert!(cache.entries.lock().unwrap().len() <= 10);
        cache.insert([200; 32], Introspected::Inactive, Duration::ZERO, 10);
        assert!(cache.get(&[200; 32]).is_none());
    }

    #[test]
    fn only_bearer_only_mode_and_known_fields_are_accepted() {
        let consumers = Arc::new(crate::consumers::ConsumerIndex::default());
        let state = crate::context::SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        let base = json!({"client_id": "c", "client_secret": "s",
            "discovery": "http://127.0.0.1:9/.well-known/openid-configuration"});
        let mut conf = base.clone();
        assert_eq!(build(&conf, &ctx).err().unwrap().field, "bearer_only");
        conf["bearer_only"] = json!(true);
        conf["redirect_uri"] = json!("/cb");
        assert!(build(&conf, &ctx).is_ok());
        conf["no_such_field"] = json!(1);
        assert_eq!(build(&conf, &ctx).err().unwrap().field, "no_such_field");
    }
}
