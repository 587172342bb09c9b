//! jwt-auth: authenticate a request by a signed JSON Web Token (APISIX's
//! plugin of the same name, with its schema, defaults and messages), plus
//! what APISIX lacks: JWK sets (inline or fetched from `jwks_uri`, chosen by
//! `kid`, refreshed in the background), issuer / audience / required-claim
//! checks, an algorithm allow-list pinned to each key's type, and a claim
//! mapped to a consumer for tokens a route's identity provider issued.
//!
//! Two ways to find the key:
//! - **consumer credentials** (APISIX's way): the token's `key` claim (or
//!   `key_claim_name`) names a credential; its `secret` (HMAC), `public_key`,
//!   `jwks` or `jwks_uri` verifies the token.
//! - **a route JWK set** (portcullis): the route's `jwks_uri` / `jwks`
//!   verifies the token and the `consumer_claim` (default `sub`) names the
//!   consumer.
//!
//! Whatever the path, the token's `alg` must be one its key may verify:
//! `none` never is, an HMAC algorithm never meets a public key, and an
//! algorithm that does not fit the key's type or pinned `alg` fails. Header
//! parameters that point at keys (`jwk`, `jku`, `x5u`, `x5c`) are ignored;
//! `kid` only chooses among configured keys. Tokens over 8 KiB, malformed
//! ones and ones with `crit` are refused before any signature work.
//!
//! HMAC secrets cannot be digested (they are needed to verify), so they are
//! kept only in the credential index; they never reach a log, an error or a
//! decision record, and the Admin API masks them.

// pub(crate): openid-connect verifies tokens against discovered JWK sets
// with the same code.
pub(crate) mod jwks;
pub(crate) mod keys;
#[cfg(test)]
mod test_keys;
pub(crate) mod token;
mod verified;

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use portcullis_core::{ConfigError, Flow, Phase, Plugin, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth_common::{
    attach_identity, check_realm, required_string, strip_cookie, strip_query_arg,
};
use crate::consumers::CredentialConf;
use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;
use jwks::{JwksSource, KeyMiss, DEFAULT_MAX_REFRESH, DEFAULT_MIN_REFRESH};
use keys::{alg_name, parse_alg, parse_public_pem, Family, VerifyKey};
use token::{ClaimPolicy, Token};

pub const NAME: &str = "jwt-auth";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Authenticate,
    priority: 2510,
    enforcing: true,
    build,
    consumer_conf: Some(consumer_conf),
    schema,
};

const MISSING: &str = "Missing JWT token in request";
const INVALID_TOKEN: &str = "JWT token invalid";
const MISSING_KEY: &str = "missing user key in JWT token";
const INVALID_KEY: &str = "Invalid user key in JWT token";
const VERIFY_FAILED: &str = "failed to verify jwt";

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
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

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum TimeClaim {
    Exp,
    Nbf,
}

/// The route's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_jwt")]
    query: String,
    #[serde(default = "default_jwt")]
    cookie: String,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_key_claim")]
    key_claim_name: String,
    /// Accepted for APISIX compatibility; portcullis has no plugin context
    /// to store the payload in.
    #[serde(default)]
    #[allow(dead_code)]
    store_in_ctx: bool,
    #[serde(default = "default_realm")]
    realm: String,
    anonymous_consumer: Option<String>,
    claims_to_verify: Option<Vec<TimeClaim>>,
    // portcullis
    issuer: Option<OneOrMany>,
    audience: Option<OneOrMany>,
    #[serde(default)]
    required_claims: Vec<String>,
    jwks_uri: Option<String>,
    jwks: Option<Value>,
    jwks_min_refresh_interval: Option<u64>,
    jwks_max_refresh_interval: Option<u64>,
    algorithms: Option<Vec<String>>,
    consumer_claim: Option<String>,
    lifetime_grace_period: Option<u64>,
}

fn default_header() -> String {
    "authorization".into()
}
fn default_jwt() -> String {
    "jwt".into()
}
fn default_key_claim() -> String {
    "key".into()
}
fn default_realm() -> String {
    "jwt".into()
}

fn schema() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let one_or_many = json!({"oneOf": [{"type": "string"}, strings]});
    json!({
        "type": "object",
        "properties": {
            "header": {"type": "string", "default": "authorization"},
            "query": {"type": "string", "default": "jwt"},
            "cookie": {"type": "string", "default": "jwt"},
            "hide_credentials": {"type": "boolean", "default": false},
            "key_claim_name": {"type": "string", "default": "key", "minLength": 1},
            "store_in_ctx": {"type": "boolean", "default": false},
            "realm": {
                "type": "string", "default": "jwt", "minLength": 1, "maxLength": 128,
                "pattern": "^[\\x20-\\x21\\x23-\\x5B\\x5D-\\x7E]+$"
            },
            "anonymous_consumer": {"type": "string", "minLength": 1},
            "claims_to_verify": {
                "type": "array", "uniqueItems": true,
                "items": {"type": "string", "enum": ["exp", "nbf"]}
            },
            "issuer": one_or_many,
            "audience": one_or_many,
            "required_claims": strings,
            "jwks_uri": {"type": "string"},
            "jwks": {"type": "object"},
            "jwks_min_refresh_interval": {"type": "integer", "minimum": 1, "default": DEFAULT_MIN_REFRESH},
            "jwks_max_refresh_interval": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_REFRESH},
            "algorithms": strings,
            "consumer_claim": {"type": "string", "default": "sub", "minLength": 1},
            "lifetime_grace_period": {"type": "integer", "minimum": 0, "default": 0}
        },
        "additionalProperties": false
    })
}

/// `algorithms`: names → algorithms, none of them HMAC (JWK sets never
/// carry secrets). Empty or absent: every asymmetric algorithm.
fn allowed_algorithms(names: Option<&[String]>) -> Result<Vec<Algorithm>, ConfigError> {
    let Some(names) = names else {
        return Ok(ASYMMETRIC.to_vec());
    };
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let alg = parse_alg(name).ok_or_else(|| {
            ConfigError::new(
                format!("algorithms[{i}]"),
                format!("unsupported algorithm {name}"),
            )
        })?;
        if Family::of(alg) == Family::Hmac {
            return Err(ConfigError::new(
                format!("algorithms[{i}]"),
                "HMAC algorithms cannot be used with a JWK set",
            ));
        }
        out.push(alg);
    }
    if out.is_empty() {
        return Ok(ASYMMETRIC.to_vec());
    }
    Ok(out)
}

/// Refresh bounds: min ≥ 1 s, max ≥ min.
fn refresh_bounds(min: Option<u64>, max: Option<u64>) -> Result<(u64, u64), ConfigError> {
    let min = min.unwrap_or(DEFAULT_MIN_REFRESH);
    let max = max.unwrap_or(DEFAULT_MAX_REFRESH.max(min));
    if min == 0 {
        return Err(ConfigError::new(
            "jwks_min_refresh_interval",
            "must be at least 1",
        ));
    }
    if max < min {
        return Err(ConfigError::new(
            "jwks_max_refresh_interval",
            "must not be less than jwks_min_refresh_interval",
        ));
    }
    Ok((min, max))
}

// ---- consumer credentials ----------------------------------------------------

/// A consumer's (or credential's) jwt-auth settings, APISIX's and
/// portcullis's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredConf {
    /// Read (with APISIX's wording for its absence) before this struct.
    #[allow(dead_code)]
    key: String,
    secret: Option<String>,
    public_key: Option<String>,
    /// Older APISIX versions signed tokens with it; accepted and dropped.
    #[allow(dead_code)]
    private_key: Option<String>,
    algorithm: Option<String>,
    /// Token lifetime when APISIX signs one; portcullis signs none.
    exp: Option<i64>,
    #[serde(default)]
    base64_secret: bool,
    lifetime_grace_period: Option<i64>,
    /// Older APISIX versions read it on the consumer; it is the route's.
    #[allow(dead_code)]
    key_claim_name: Option<String>,
    // portcullis
    issuer: Option<OneOrMany>,
    audience: Option<OneOrMany>,
    required_claims: Option<Vec<String>>,
    jwks_uri: Option<String>,
    jwks: Option<Value>,
    jwks_min_refresh_interval: Option<u64>,
    jwks_max_refresh_interval: Option<u64>,
    algorithms: Option<Vec<String>>,
}

/// Check a credential and turn it into what the index keeps: the `key` is
/// the lookup key; the conf holds the verification material in the form the
/// request path uses without parsing PEM again.
fn consumer_conf(conf: &Value) -> Result<CredentialConf, ConfigError> {
    let key = required_string(conf, "key")?;
    if key.is_empty() {
        return Err(ConfigError::new(
            "key",
            "property \"key\" validation failed: string too short, expected at least 1, got 0",
        ));
    }
    let c: CredConf = parse_conf(conf)?;
    if c.exp.is_some_and(|e| e < 1) {
        return Err(ConfigError::new(
            "exp",
            "property \"exp\" validation failed: expected a value of at least 1",
        ));
    }
    let grace = match c.lifetime_grace_period {
        None => 0,
        Some(g) if g >= 0 => g as u64,
        Some(_) => return Err(ConfigError::new(
            "lifetime_grace_period",
            "property \"lifetime_grace_period\" validation failed: expected a value of at least 0",
        )),
    };
    let algorithm = match c.algorithm.as_deref() {
        None => None,
        Some(name) => Some(parse_alg(name).ok_or_else(|| {
            ConfigError::new(
                "algorithm",
                format!("property \"algorithm\" validation failed: unsupported algorithm {name}"),
            )
        })?),
    };
    let uses_jwks = c.jwks_uri.is_some() || c.jwks.is_some();
    let material = if uses_jwks {
        if c.secret.is_some() || c.public_key.is_some() {
            return Err(ConfigError::new(
                "jwks",
                "use either jwks / jwks_uri or secret / public_key",
            ));
        }
        if c.jwks_uri.is_some() && c.jwks.is_some() {
            return Err(ConfigError::new("jwks", "use either jwks or jwks_uri"));
        }
        let algorithms = match (algorithm, &c.algorithms) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "algorithms",
                    "use either algorithm or algorithms",
                ))
            }
            (Some(a), None) => allowed_algorithms(Some(&[alg_name(a).to_string()]))
                .map_err(|e| ConfigError::new("algorithm", e.message))?,
            (None, names) => allowed_algorithms(names.as_deref())?,
        };
        let names: Vec<&str> = algorithms.iter().map(|a| alg_name(*a)).collect();
        match (&c.jwks_uri, &c.jwks) {
            (Some(uri), _) => {
                let (min, max) =
                    refresh_bounds(c.jwks_min_refresh_interval, c.jwks_max_refresh_interval)?;
                // Registering the source starts its first fetch now, so the
                // keys are there by the time tokens arrive.
                jwks::remote(uri, min, max).map_err(|e| ConfigError::new("jwks_uri", e))?;
                json!({"kind": "jwks", "uri": uri, "min": min, "max": max, "algorithms": names})
            }
            (None, Some(set)) => {
                let shared = jwks::inline_key(set);
                jwks::inline_shared(&shared, set).map_err(|e| ConfigError::new("jwks", e))?;
                json!({"kind": "jwks_inline", "jwks": set, "shared": shared, "algorithms": names})
            }
            (None, None) => unreachable!("uses_jwks"),
        }
    } else {
        if c.algorithms.is_some() {
            return Err(ConfigError::new(
                "algorithms",
                "algorithms applies to jwks and jwks_uri; use algorithm",
            ));
        }
        let alg = algorithm.unwrap_or(Algorithm::HS256);
        if Family::of(alg) == Family::Hmac {
            let Some(secret) = c.secret.as_deref() else {
                return Err(ConfigError::new(
                    "secret",
                    "property \"secret\" is required when using HS based algorithms",
                ));
            };
            if secret.is_empty() {
                return Err(ConfigError::new(
                    "secret",
                    "property \"secret\" validation failed: string too short, expected at least 1, got 0",
                ));
            }
            let bytes = if c.base64_secret {
                base64::engine::general_purpose::STANDARD
                    .decode(secret)
                    .map_err(|_| {
                        ConfigError::new(
                            "secret",
                            "base64_secret required but the secret is not in base64 format",
                        )
                    })?
            } else {
                secret.as_bytes().to_vec()
            };
            json!({
                "kind": "hmac",
                "alg": alg_name(alg),
                "secret": base64::engine::general_purpose::STANDARD.encode(bytes),
            })
        } else {
            let Some(pem) = c.public_key.as_deref().filter(|p| !p.is_empty()) else {
                return Err(ConfigError::new("public_key", "missing valid public key"));
            };
            let (family, raw) = parse_public_pem(pem)
                .map_err(|e| ConfigError::new("public_key", format!("invalid public key: {e}")))?;
            if Family::of(alg) != family {
                return Err(ConfigError::new(
                    "public_key",
                    format!("a {} key cannot verify {}", family.as_str(), alg_name(alg)),
                ));
            }
            json!({
                "kind": "public",
                "alg": alg_name(alg),
                "family": family.as_str(),
                "der": base64::engine::general_purpose::STANDARD.encode(raw),
            })
        }
    };
    let mut stored = material;
    stored["grace"] = json!(grace);
    stored["issuers"] = json!(c.issuer.map(OneOrMany::into_vec).unwrap_or_default());
    stored["audiences"] = json!(c.audience.map(OneOrMany::into_vec).unwrap_or_default());
    stored["required_claims"] = json!(c.required_claims.unwrap_or_default());
    Ok(CredentialConf {
        lookup_key: key.to_string(),
        conf: stored,
    })
}

fn strings_of(conf: &Value, field: &str) -> Vec<String> {
    conf.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn algorithms_of(conf: &Value) -> impl Iterator<Item = Algorithm> + '_ {
    conf.get("algorithms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().and_then(parse_alg))
}

/// Why a token did not authenticate: the answer and the decision reason.
struct Failure {
    message: &'static str,
    reason: Cow<'static, str>,
}

fn fail(message: &'static str, reason: impl Into<Cow<'static, str>>) -> Failure {
    Failure {
        message,
        reason: reason.into(),
    }
}

fn key_miss(miss: KeyMiss) -> Failure {
    fail(VERIFY_FAILED, miss.reason())
}

/// Verify `token` with a JWK set, the token's `alg` being allowed.
fn verify_with_set(
    source: &JwksSource,
    allowed: impl IntoIterator<Item = Algorithm>,
    token: &Token<'_>,
    alg: Algorithm,
) -> Result<(), Failure> {
    if !allowed.into_iter().any(|a| a == alg) {
        return Err(fail(VERIFY_FAILED, "algorithm not allowed"));
    }
    match source.with_key(token.kid.as_deref(), alg, |k| k.verify(token, alg)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(fail(VERIFY_FAILED, "signature mismatch")),
        Err(miss) => Err(key_miss(miss)),
    }
}

/// Verify `token` with a consumer credential's stored material.
fn verify_with_credential(conf: &Value, token: &Token<'_>, alg: Algorithm) -> Result<(), Failure> {
    let field = |name: &str| conf.get(name).and_then(Value::as_str);
    let broken = || fail(VERIFY_FAILED, "credential cannot verify");
    let single = |key: VerifyKey| {
        // APISIX: the token's alg must be the consumer's algorithm.
        if key.pinned() != Some(alg) || !key.accepts(alg) {
            return Err(fail(VERIFY_FAILED, "algorithm mismatch"));
        }
        if key.verify(token, alg) {
            Ok(())
        } else {
            Err(fail(VERIFY_FAILED, "signature mismatch"))
        }
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
    match field("kind") {
        Some("hmac") => {
            let pinned = field("alg").and_then(parse_alg).ok_or_else(broken)?;
            let secret = field("secret").and_then(b64).ok_or_else(broken)?;
            single(VerifyKey::hmac(&secret, pinned))
        }
        Some("public") => {
            let pinned = field("alg").and_then(parse_alg).ok_or_else(broken)?;
            let family = field("family")
                .and_then(Family::from_str)
                .ok_or_else(broken)?;
            let raw = field("der").and_then(b64).ok_or_else(broken)?;
            single(VerifyKey::public(family, &raw, Some(pinned)))
        }
        Some("jwks") => {
            let uri = field("uri").ok_or_else(broken)?;
            let min = conf.get("min").and_then(Value::as_u64).ok_or_else(broken)?;
            let max = conf.get("max").and_then(Value::as_u64).ok_or_else(broken)?;
            let source = jwks::remote(uri, min, max).map_err(|_| broken())?;
            verify_with_set(&source, algorithms_of(conf), token, alg)
        }
        Some("jwks_inline") => {
            let set = conf.get("jwks").ok_or_else(broken)?;
            let shared = field("shared").ok_or_else(broken)?;
            let source = jwks::inline_shared(shared, set).map_err(|_| broken())?;
            verify_with_set(&source, algorithms_of(conf), token, alg)
        }
        _ => Err(broken()),
    }
}

// ---- the route plugin ----------------------------------------------------------

/// A route's own JWK set, for tokens its identity provider issued.
struct RouteKeys {
    source: Arc<JwksSource>,
    algorithms: Vec<Algorithm>,
    consumer_claim: String,
}

struct JwtAuth {
    header: HeaderName,
    query: String,
    cookie: String,
    hide_credentials: bool,
    key_claim_name: String,
    www_authenticate: HeaderValue,
    anonymous_consumer: Option<String>,
    require_exp: bool,
    require_nbf: bool,
    /// Route-wide claim checks (issuer, audience, required claims).
    policy: ClaimPolicy,
    route_keys: Option<RouteKeys>,
    route_grace: u64,
    now: fn() -> u64,
    /// This instance's number in the verified-token cache.
    instance: u64,
}

fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    check_realm(&conf.realm)?;
    let header = HeaderName::from_bytes(conf.header.as_bytes())
        .map_err(|_| ConfigError::new("header", "not a valid header name"))?;
    if conf.key_claim_name.is_empty() {
        return Err(ConfigError::new("key_claim_name", "must not be empty"));
    }
    if conf.anonymous_consumer.as_deref() == Some("") {
        return Err(ConfigError::new("anonymous_consumer", "must not be empty"));
    }
    let www_authenticate = HeaderValue::from_str(&format!("Bearer realm=\"{}\"", conf.realm))
        .map_err(|_| ConfigError::new("realm", "not usable in a header"))?;
    let listed = conf.claims_to_verify.unwrap_or_default();
    let route_keys = match (&conf.jwks_uri, &conf.jwks) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new("jwks", "use either jwks or jwks_uri"));
        }
        (Some(uri), None) => {
            let (min, max) = refresh_bounds(
                conf.jwks_min_refresh_interval,
                conf.jwks_max_refresh_interval,
            )?;
            Some(jwks::remote(uri, min, max).map_err(|e| ConfigError::new("jwks_uri", e))?)
        }
        (None, Some(set)) => Some(jwks::inline(set).map_err(|e| ConfigError::new("jwks", e))?),
        (None, None) => None,
    };
    let route_keys = match route_keys {
        Some(source) => Some(RouteKeys {
            source,
            algorithms: allowed_algorithms(conf.algorithms.as_deref())?,
            consumer_claim: conf.consumer_claim.unwrap_or_else(|| "sub".into()),
        }),
        None => {
            let extras = [
                ("algorithms", conf.algorithms.is_some()),
                ("consumer_claim", conf.consumer_claim.is_some()),
                (
                    "lifetime_grace_period",
                    conf.lifetime_grace_period.is_some(),
                ),
                (
                    "jwks_min_refresh_interval",
                    conf.jwks_min_refresh_interval.is_some(),
                ),
                (
                    "jwks_max_refresh_interval",
                    conf.jwks_max_refresh_interval.is_some(),
                ),
            ];
            if let Some((field, _)) = extras.iter().find(|(_, set)| *set) {
                return Err(ConfigError::new(
                    *field,
                    "applies only with the route's jwks or jwks_uri",
                ));
            }
            None
        }
    };
    Ok(Arc::new(JwtAuth {
        header,
        query: conf.query,
        cookie: conf.cookie,
        hide_credentials: conf.hide_credentials,
        key_claim_name: conf.key_claim_name,
        www_authenticate,
        anonymous_consumer: conf.anonymous_consumer,
        // Tokens from a route's identity provider must carry exp.
        require_exp: listed.contains(&TimeClaim::Exp) || route_keys.is_some(),
        require_nbf: listed.contains(&TimeClaim::Nbf),
        policy: ClaimPolicy {
            issuers: conf.issuer.map(OneOrMany::into_vec).unwrap_or_default(),
            audiences: conf.audience.map(OneOrMany::into_vec).unwrap_or_default(),
            required: conf.required_claims,
            ..ClaimPolicy::default()
        },
        route_keys,
        route_grace: conf.lifetime_grace_period.unwrap_or(0),
        now: system_now,
        instance: verified::next_instance(),
    }))
}

/// Where the token came from, for hide_credentials.
#[derive(Clone, Copy)]
enum Source {
    Header,
    Query,
    Cookie,
}

impl JwtAuth {
    /// The token, as APISIX looks for it: the header (a `Bearer ` prefix is
    /// dropped), else the query argument, else the cookie.
    fn token<'r>(&self, req: &'r RequestState) -> Option<(Cow<'r, str>, Source)> {
        if let Some(v) = req.head.headers.get(&self.header) {
            // A value that is not visible ASCII cannot be a token.
            let v = v.to_str().unwrap_or("");
            let v = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v);
            return Some((Cow::Borrowed(v), Source::Header));
        }
        if let Some(v) = req.query_arg(&self.query) {
            return Some((v, Source::Query));
        }
        req.cookie(&self.cookie)
            .map(|v| (Cow::Borrowed(v), Source::Cookie))
    }

    fn hide(&self, req: &mut RequestState, source: Source) {
        match source {
            Source::Header => {
                req.head.headers.remove(&self.header);
            }
            Source::Query => strip_query_arg(req, &self.query),
            Source::Cookie => strip_cookie(req, &self.cookie),
        }
    }

    fn authenticate(&self, req: &mut RequestState) -> Result<(), Failure> {
        let Some((raw, source)) = self.token(req) else {
            return Err(fail(MISSING, "missing token"));
        };
        let now = (self.now)();
        if self.route_keys.is_none() {
            if let Some(v) = verified::get(self.instance, &req.consumers, &raw, now) {
                if self.hide_credentials {
                    self.hide(req, source);
                }
                attach_identity(req, NAME, v.consumer, v.credential_id);
                return Ok(());
            }
        }
        let token = token::parse(&raw).map_err(|m| fail(INVALID_TOKEN, m.reason()))?;
        // The algorithm the token claims; `none` and unknown names fail here.
        let alg = parse_alg(&token.alg);
        let (consumer, credential_id) = if let Some(route) = &self.route_keys {
            let alg = alg.ok_or_else(|| fail(VERIFY_FAILED, "algorithm not allowed"))?;
            verify_with_set(&route.source, route.algorithms.iter().copied(), &token, alg)?;
            let policy = ClaimPolicy {
                require_exp: self.require_exp,
                require_nbf: self.require_nbf,
                leeway: self.route_grace,
                ..ClaimPolicy::default()
            };
            policy
                .check_time(&token.payload, now)
                .and_then(|()| self.policy.check_others(&token.payload))
                .map_err(|e| fail(VERIFY_FAILED, e.reason()))?;
            let name = token
                .payload
                .get(&route.consumer_claim)
                .and_then(Value::as_str)
                .ok_or_else(|| fail(MISSING_KEY, "consumer claim missing"))?;
            let consumer = req
                .consumers
                .consumer(name)
                .cloned()
                .ok_or_else(|| fail(INVALID_KEY, "no consumer for the claim"))?;
            (consumer, None)
        } else {
            let user_key = match token.payload.get(&self.key_claim_name) {
                None | Some(Value::Null) => return Err(fail(MISSING_KEY, "key claim missing")),
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err(fail(INVALID_KEY, "key claim is not a string")),
            };
            let found = req
                .consumers
                .lookup(NAME, user_key)
                .ok_or_else(|| fail(INVALID_KEY, "unknown key"))?;
            let alg = alg.ok_or_else(|| fail(VERIFY_FAILED, "algorithm mismatch"))?;
            verify_with_credential(&found.conf, &token, alg)?;
            let conf = &found.conf;
            let time = ClaimPolicy {
                require_exp: self.require_exp,
                require_nbf: self.require_nbf,
                leeway: conf.get("grace").and_then(Value::as_u64).unwrap_or(0),
                ..ClaimPolicy::default()
            };
            let credential = ClaimPolicy {
                issuers: strings_of(conf, "issuers"),
                audiences: strings_of(conf, "audiences"),
                required: strings_of(conf, "required_claims"),
                ..ClaimPolicy::default()
            };
            time.check_time(&token.payload, now)
                .and_then(|()| self.policy.check_others(&token.payload))
                .and_then(|()| credential.check_others(&token.payload))
                .map_err(|e| fail(VERIFY_FAILED, e.reason()))?;
            // Keys held in the credential itself (not a JWK set that may
            // rotate) let the next request with this token skip the check.
            if matches!(
                conf.get("kind").and_then(Value::as_str),
                Some("hmac" | "public")
            ) {
                let leeway = time.leeway as f64;
                let claim = |name: &str| token.payload.get(name).and_then(Value::as_f64);
                verified::put(
                    self.instance,
                    &req.consumers,
                    &raw,
                    now,
                    claim("nbf").map(|nbf| (nbf - leeway).ceil().max(0.0) as u64),
                    claim("exp").map(|exp| (exp + leeway).ceil().max(0.0) as u64),
                    verified::Verified {
                        consumer: found.consumer.clone(),
                        credential_id: found.credential_id.clone(),
                    },
                );
            }
            (found.consumer.clone(), found.credential_id.clone())
        };
        if self.hide_credentials {
            self.hide(req, source);
        }
        attach_identity(req, NAME, consumer, credential_id);
        Ok(())
    }

    fn reject(
        &self,
        req: &mut RequestState,
        message: &'static str,
        reason: Cow<'static, str>,
    ) -> Flow {
        crate::auth_common::unauthorized(req, NAME, message, reason, &self.www_authenticate)
    }
}

impl Plugin for JwtAuth {
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
        let Err(failure) = self.authenticate(req) else {
            return Flow::Continue;
        };
        let Some(anonymous) = &self.anonymous_consumer else {
            return self.reject(req, failure.message, failure.reason);
        };
        let hide = |req: &mut RequestState| {
            if self.hide_credentials {
                if let Some((_, source)) = self.token(req) {
                    self.hide(req, source);
                }
            }
        };
        crate::auth_common::attach_anonymous(req, NAME, anonymous, &self.www_authenticate, hide)
    }
}

#[cfg(test)]
mod tests;
