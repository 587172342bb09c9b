//! basic-auth: authenticate a request by `Authorization: Basic
//! base64(username:password)` (APISIX's plugin of the same name: route
//! `hide_credentials`, `realm`, `anonymous_consumer`; consumers carry
//! `{"username": ..., "password": ...}`).
//!
//! Passwords are never kept: a consumer's password becomes a random
//! 16-byte salt and HMAC-SHA256(salt, password) in the credential index, and
//! a request's password is digested with the same salt and compared in
//! constant time. An unknown username costs the same digest, so timing does
//! not tell which usernames exist. A config may also carry the digest
//! itself, `hmac-sha256:<32 hex salt>:<64 hex digest>`, and never the
//! password. No password reaches a log, an error or a decision.

use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use portcullis_core::{ConfigError, Flow, Phase, Plugin, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth_common::{attach_identity, check_realm, required_string};
use crate::consumers::CredentialConf;
use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const NAME: &str = "basic-auth";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Authenticate,
    priority: 2520,
    enforcing: true,
    build,
    consumer_conf: Some(consumer_conf),
    schema,
};

const MISSING: &str = "Missing authorization in request";
const INVALID_AUTHORIZATION: &str = "Invalid authorization in request";
const INVALID_USER: &str = "Invalid user authorization";

pub(crate) const DIGEST_PREFIX: &str = "hmac-sha256:";
const SALT_LEN: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_realm")]
    realm: String,
    anonymous_consumer: Option<String>,
}

fn default_realm() -> String {
    "basic".into()
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "hide_credentials": {"type": "boolean", "default": false},
            "realm": {
                "type": "string", "default": "basic", "minLength": 1, "maxLength": 128,
                "pattern": "^[\\x20-\\x21\\x23-\\x5B\\x5D-\\x7E]+$"
            },
            "anonymous_consumer": {"type": "string", "minLength": 1}
        },
        "additionalProperties": false
    })
}

type HmacSha256 = Hmac<Sha256>;

fn password_digest(salt: &[u8], password: &[u8]) -> [u8; 32] {
    // HMAC accepts a key of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(password);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A consumer's basic-auth settings: the username is the lookup key; the
/// password is replaced by a salted digest.
fn consumer_conf(conf: &Value) -> Result<CredentialConf, ConfigError> {
    let username = required_string(conf, "username")?;
    let password = required_string(conf, "password")?;
    if let Some(obj) = conf.as_object() {
        if let Some(extra) = obj.keys().find(|k| *k != "username" && *k != "password") {
            return Err(ConfigError::new(
                extra.as_str(),
                format!("additional properties forbidden, found {extra}"),
            ));
        }
    }
    let (salt, digest) = match password.strip_prefix(DIGEST_PREFIX) {
        Some(rest) => {
            let parsed = rest.split_once(':').and_then(|(s, d)| {
                let (s, d) = (unhex(s)?, unhex(d)?);
                (s.len() == SALT_LEN && d.len() == 32).then_some((s, d))
            });
            parsed.ok_or_else(|| {
                ConfigError::new(
                    "password",
                    "a password written as \"hmac-sha256:...\" must hold a 32-hex-digit salt and a 64-hex-digit digest",
                )
            })?
        }
        None => {
            let salt: [u8; SALT_LEN] = rand::random();
            (
                salt.to_vec(),
                password_digest(&salt, password.as_bytes()).to_vec(),
            )
        }
    };
    Ok(CredentialConf {
        lookup_key: username.to_string(),
        conf: json!({ "salt": hex(&salt), "digest": hex(&digest) }),
    })
}

/// The stored digest of `password` with a fresh salt, in the form a config
/// may carry instead of the password.
pub(crate) fn digest_for_config(password: &str) -> String {
    let salt: [u8; SALT_LEN] = rand::random();
    format!(
        "{DIGEST_PREFIX}{}:{}",
        hex(&salt),
        hex(&password_digest(&salt, password.as_bytes()))
    )
}

struct BasicAuth {
    hide_credentials: bool,
    www_authenticate: HeaderValue,
    anonymous_consumer: Option<String>,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    check_realm(&conf.realm)?;
    let www_authenticate = HeaderValue::from_str(&format!("Basic realm=\"{}\"", conf.realm))
        .map_err(|_| ConfigError::new("realm", "not usable in a header"))?;
    if conf.anonymous_consumer.as_deref() == Some("") {
        return Err(ConfigError::new("anonymous_consumer", "must not be empty"));
    }
    Ok(Arc::new(BasicAuth {
        hide_credentials: conf.hide_credentials,
        www_authenticate,
        anonymous_consumer: conf.anonymous_consumer,
    }))
}

/// Why a request did not authenticate: the answer and the decision reason.
struct Failure {
    message: &'static str,
    reason: &'static str,
}

const fn fail(message: &'static str, reason: &'static str) -> Failure {
    Failure { message, reason }
}

/// `Basic <base64(user:password)>` → (user, password). The scheme is
/// matched without regard to case; the password is everything after the
/// first colon (RFC 7617), so it may hold colons.
fn parse_basic(value: &[u8]) -> Option<(Vec<u8>, usize)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decoded = engine.decode(rest.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded, colon))
}

impl BasicAuth {
    fn authenticate(&self, req: &mut RequestState) -> Result<(), Failure> {
        let mut values = req.head.headers.get_all(http::header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Err(fail(MISSING, "missing authorization"));
        };
        if values.next().is_some() {
            return Err(fail(INVALID_AUTHORIZATION, "several authorization headers"));
        }
        let Some((decoded, colon)) = parse_basic(value.as_bytes()) else {
            return Err(fail(INVALID_AUTHORIZATION, "malformed basic authorization"));
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let found = std::str::from_utf8(user)
            .ok()
            .and_then(|u| req.consumers.lookup(NAME, u));
        let Some(found) = found else {
            // Spend the same work as for a known user.
            let _ = password_digest(&[0u8; SALT_LEN], password);
            return Err(fail(INVALID_USER, "unknown user"));
        };
        let field = |name: &str| found.conf.get(name).and_then(Value::as_str).and_then(unhex);
        let (Some(salt), Some(stored)) = (field("salt"), field("digest")) else {
            return Err(fail(INVALID_USER, "credential without a digest"));
        };
        let presented = password_digest(&salt, password);
        if !bool::from(presented.as_slice().ct_eq(&stored)) {
            return Err(fail(INVALID_USER, "wrong password"));
        }
        let (consumer, credential_id) = (found.consumer.clone(), found.credential_id.clone());
        if self.hide_credentials {
            req.head.headers.remove(http::header::AUTHORIZATION);
        }
        attach_identity(req, NAME, consumer, credential_id);
        Ok(())
    }

    fn reject(&self, req: &mut RequestState, message: &'static str, reason: &'static str) -> Flow {
        crate::auth_common::unauthorized(req, NAME, message, reason, &self.www_authenticate)
    }
}

impl Plugin for BasicAuth {
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
                req.head.headers.remove(http::header::AUTHORIZATION);
            }
        };
        crate::auth_common::attach_anonymous(req, NAME, anonymous, &self.www_authenticate, hide)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use portcullis_core::{Consumer, Outcome};

    use http::StatusCode;

    use super::*;
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
        let add = |index: &mut ConsumerIndex, who: &str, cred: Option<&str>, conf: Value| {
            let plugins = BTreeMap::from([(NAME.to_string(), conf)]);
            index
                .add(CredentialSource {
                    consumer: consumer(who),
                    credential_id: cred.map(Arc::from),
                    plugins: &plugins,
                })
                .unwrap();
            index.add_consumer(consumer(who));
        };
        add(
            &mut index,
            "jack",
            None,
            json!({"username": "jack", "password": "jack-pass:with:colons"}),
        );
        add(
            &mut index,
            "billing",
            Some("cred-1"),
            json!({"username": "billing", "password": digest_for_config("b1ll")}),
        );
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

    fn basic(user: &str, password: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b64}")
    }

    fn request(headers: &[(&str, &str)]) -> RequestState {
        let mut b = http::Request::builder().uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, ()) = b.body(()).unwrap().into_parts();
        let mut req = RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080);
        req.consumers = index();
        req
    }

    fn assert_401(flow: Flow, message: &str) {
        let Flow::Respond(r) = flow else {
            panic!("expected a rejection, got {flow:?}")
        };
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body, format!("{{\"message\":\"{message}\"}}\n"));
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == http::header::WWW_AUTHENTICATE && v == "Basic realm=\"basic\""));
    }

    #[test]
    fn request_without_authorization_is_refused_as_missing() {
        let mut req = request(&[]);
        assert_401(plugin(json!({})).on_request(&mut req), MISSING);
        assert_eq!(req.decisions[0].outcome, Outcome::Reject);
    }

    #[test]
    fn malformed_authorization_is_refused_as_invalid() {
        for bad in [
            "Bearer abc",
            "Basic",
            "Basic !!!not-base64!!!",
            "Basic bm8tY29sb24=", // "no-colon"
        ] {
            let mut req = request(&[("authorization", bad)]);
            assert_401(
                plugin(json!({})).on_request(&mut req),
                INVALID_AUTHORIZATION,
            );
        }
    }

    #[test]
    fn unknown_user_and_wrong_password_are_refused_alike() {
        let mut req = request(&[("authorization", &basic("nobody", "x"))]);
        assert_401(plugin(json!({})).on_request(&mut req), INVALID_USER);
        let mut req = request(&[("authorization", &basic("jack", "jack-pass"))]);
        assert_401(plugin(json!({})).on_request(&mut req), INVALID_USER);
        assert_eq!(req.decisions[0].reason.as_deref(), Some("wrong password"));
    }

    #[test]
    fn right_password_authenticates_and_password_may_hold_colons() {
        let mut req = request(&[("authorization", &basic("jack", "jack-pass:with:colons"))]);
        assert!(matches!(
            plugin(json!({})).on_request(&mut req),
            Flow::Continue
        ));
        assert_eq!(req.consumer_name(), Some("jack"));
        assert_eq!(req.identity.as_ref().unwrap().authenticated_by, NAME);
        assert_eq!(req.header_str("x-consumer-username"), Some("jack"));
        // hide_credentials is off: the header goes upstream as in APISIX.
        assert!(req.header_str("authorization").is_some());
    }

    #[test]
    fn scheme_is_matched_without_regard_to_case() {
        let header = basic("jack", "jack-pass:with:colons").replace("Basic", "bAsIc");
        let mut req = request(&[("authorization", &header)]);
        assert!(matches!(
            plugin(json!({})).on_request(&mut req),
            Flow::Continue
        ));
    }

    #[test]
    fn digested_password_on_a_credential_matches_and_names_the_credential() {
        let mut req = request(&[("authorization", &basic("billing", "b1ll"))]);
        let flow = plugin(json!({"hide_credentials": true})).on_request(&mut req);
        assert!(matches!(flow, Flow::Continue));
        assert_eq!(req.header_str("x-credential-identifier"), Some("cred-1"));
        assert_eq!(req.header_str("authorization"), None);
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let good = basic("jack", "jack-pass:with:colons");
        let mut req = request(&[("authorization", &good), ("authorization", "Basic eDp5")]);
        assert_401(
            plugin(json!({})).on_request(&mut req),
            INVALID_AUTHORIZATION,
        );
    }

    #[test]
    fn anonymous_consumer_is_used_when_nothing_authenticates() {
        let p = plugin(json!({"anonymous_consumer": "guest"}));
        let mut req = request(&[("authorization", &basic("jack", "wrong"))]);
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        assert_eq!(req.consumer_name(), Some("guest"));
        let p = plugin(json!({"anonymous_consumer": "nobody"}));
        let mut req = request(&[]);
        assert_401(p.on_request(&mut req), INVALID_USER);
    }

    #[test]
    fn realm_is_configurable_and_checked() {
        let p = plugin(json!({"realm": "partners"}));
        let Flow::Respond(r) = p.on_request(&mut request(&[])) else {
            panic!("expected a rejection")
        };
        assert!(r
            .headers
            .iter()
            .any(|(_, v)| v == "Basic realm=\"partners\""));
        let consumers = index();
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        assert!(build_plugin(NAME, &json!({"realm": "a\"b"}), &ctx).is_err());
    }

    #[test]
    fn consumer_conf_keeps_no_password() {
        let cred = consumer_conf(&json!({"username": "u", "password": "s3cret"})).unwrap();
        assert_eq!(cred.lookup_key, "u");
        assert!(!cred.conf.to_string().contains("s3cret"));
        // A fresh salt each time: equal passwords do not digest alike.
        let again = consumer_conf(&json!({"username": "u", "password": "s3cret"})).unwrap();
        assert_ne!(cred.conf["digest"], again.conf["digest"]);
    }

    #[test]
    fn consumer_conf_is_checked_in_apisix_words() {
        let err = consumer_conf(&json!({"username": "u"})).unwrap_err();
        assert_eq!(err.message, "property \"password\" is required");
        let err = consumer_conf(&json!({"password": "p"})).unwrap_err();
        assert_eq!(err.message, "property \"username\" is required");
        assert!(consumer_conf(&json!({"username": "u", "password": 5})).is_err());
        assert!(consumer_conf(&json!({"username": "u", "password": "hmac-sha256:zz"})).is_err());
        assert!(consumer_conf(&json!({"username": "u", "password": "p", "pasword": "q"})).is_err());
    }
}
