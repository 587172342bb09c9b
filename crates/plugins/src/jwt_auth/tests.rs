//! Every way a token is accepted or refused. Each refusal is a 401 with
//! APISIX's message, never a 5xx and never a panic.

use std::collections::BTreeMap;

use http::StatusCode;
use jsonwebtoken::EncodingKey;
use portcullis_core::{Consumer, Outcome};

use super::keys::alg_name;
use super::test_keys::{RSA_PRIVATE_PEM, RSA_PUBLIC_PEM};
use super::token::b64url_encode;
use super::*;
use crate::auth_common::ANONYMOUS_MISSING;
use crate::consumers::{AddCredentials, ConsumerIndex, CredentialSource};
use crate::context::SharedState;
use crate::registry::build_plugin;

const SECRET: &str = "my-hmac-secret-that-is-long-enough";

fn consumer(name: &str) -> Arc<Consumer> {
    Arc::new(Consumer {
        username: name.into(),
        group_id: None,
        labels: BTreeMap::new(),
    })
}

struct Keys {
    ec: rcgen::KeyPair,
    ed: rcgen::KeyPair,
    attacker: rcgen::KeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keys {
        ec: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        ed: rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        attacker: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
    })
}

fn ec_jwk(pair: &rcgen::KeyPair, kid: &str) -> Value {
    let raw = pair.public_key_raw();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64url_encode(&raw[1..33]), "y": b64url_encode(&raw[33..])})
}

fn index() -> Arc<ConsumerIndex> {
    let k = keys();
    let mut index = ConsumerIndex::default();
    let mut add = |who: &str, cred: Option<&str>, conf: Value| {
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
    add("jack", None, json!({"key": "user-key", "secret": SECRET}));
    add(
        "b64",
        Some("c-b64"),
        json!({"key": "b64-key", "secret": "c2VjcmV0LWJ5dGVz", "base64_secret": true, "algorithm": "HS512"}),
    );
    add(
        "rsa",
        None,
        json!({"key": "rsa-key", "algorithm": "RS256", "public_key": RSA_PUBLIC_PEM}),
    );
    add(
        "ec",
        None,
        json!({"key": "ec-key", "algorithm": "ES256", "public_key": k.ec.public_key_pem(),
               "issuer": "https://idp.example", "audience": ["orders"], "required_claims": ["sub"],
               "lifetime_grace_period": 10}),
    );
    add(
        "ed",
        None,
        json!({"key": "ed-key", "algorithm": "EdDSA", "public_key": k.ed.public_key_pem()}),
    );
    add(
        "set",
        Some("c-set"),
        json!({"key": "set-key", "jwks": {"keys": [ec_jwk(&k.ec, "k1")]}}),
    );
    add(
        "alice",
        None,
        json!({"key": "alice-hmac", "secret": "alice"}),
    );
    index.add_consumer(consumer("guest"));
    Arc::new(index)
}

fn plugin(conf: Value) -> Arc<dyn Plugin> {
    try_plugin(conf).unwrap()
}

fn try_plugin(conf: Value) -> Result<Arc<dyn Plugin>, ConfigError> {
    let consumers = index();
    let state = SharedState::default();
    let ctx = BuildContext {
        consumers: &consumers,
        owner: "routes/1",
        state: &state,
    };
    build_plugin(NAME, &conf, &ctx).map(|p| p.unwrap())
}

fn now() -> u64 {
    system_now()
}

/// A token with exactly this header and these claims, signed by `key`
/// with `alg` (the header's alg may say something else).
fn sign_raw(header: Value, claims: Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!(
        "{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    sign_raw(
        json!({"alg": alg_name(alg), "typ": "JWT"}),
        claims,
        key,
        alg,
    )
}

fn hs(claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn ec_key(pair: &rcgen::KeyPair) -> EncodingKey {
    EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap()
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

fn bearer(token: &str) -> RequestState {
    request("/", &[("authorization", &format!("Bearer {token}"))])
}

fn run(conf: Value, mut req: RequestState) -> (Flow, RequestState) {
    let flow = plugin(conf).on_request(&mut req);
    (flow, req)
}

#[track_caller]
fn assert_401(flow: Flow, message: &str) {
    let Flow::Respond(r) = flow else {
        panic!("expected a rejection, got {flow:?}")
    };
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body, format!("{{\"message\":\"{message}\"}}\n"));
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| k == http::header::WWW_AUTHENTICATE && v == "Bearer realm=\"jwt\""));
}

#[track_caller]
fn assert_refused(token: &str, message: &str) {
    let (flow, req) = run(json!({}), bearer(token));
    assert_401(flow, message);
    assert!(req.identity.is_none());
    assert_eq!(req.decisions[0].outcome, Outcome::Reject);
    let reason = req.decisions[0].reason.as_deref().unwrap();
    assert!(!reason.contains(SECRET));
    assert!(token.is_empty() || !reason.contains(token));
}

#[track_caller]
fn assert_accepted(conf: Value, req: RequestState, who: &str) -> RequestState {
    let (flow, req) = run(conf, req);
    assert!(
        matches!(flow, Flow::Continue),
        "{flow:?} {:?}",
        req.decisions
    );
    assert_eq!(req.consumer_name(), Some(who));
    assert_eq!(req.identity.as_ref().unwrap().authenticated_by, NAME);
    assert_eq!(req.header_str("x-consumer-username"), Some(who));
    req
}

// ---- accepted --------------------------------------------------------------

#[test]
fn hs256_token_in_the_authorization_header_authenticates_its_consumer() {
    let t = hs(json!({"key": "user-key", "exp": now() + 60}));
    let req = assert_accepted(json!({}), bearer(&t), "jack");
    assert_eq!(req.header_str("x-credential-identifier"), None);
    // hide_credentials is off: the header goes upstream as in APISIX.
    assert!(req.header_str("authorization").is_some());
    // Bare, without "Bearer ".
    assert_accepted(json!({}), request("/", &[("authorization", &t)]), "jack");
}

#[test]
fn token_in_query_or_cookie_authenticates_and_hide_credentials_removes_it() {
    let t = hs(json!({"key": "user-key"}));
    let conf = json!({"hide_credentials": true});
    let req = assert_accepted(
        conf.clone(),
        request(&format!("/p?a=1&jwt={t}"), &[]),
        "jack",
    );
    assert_eq!(req.head.uri.to_string(), "/p?a=1");
    let req = assert_accepted(
        conf.clone(),
        request("/", &[("cookie", &format!("a=1; jwt={t}; b=2"))]),
        "jack",
    );
    assert_eq!(req.header_str("cookie"), Some("a=1; b=2"));
    let req = assert_accepted(conf, bearer(&t), "jack");
    assert_eq!(req.header_str("authorization"), None);
}

#[test]
fn custom_header_query_cookie_and_key_claim_are_honoured() {
    let t = hs(json!({"user": "user-key"}));
    let conf =
        json!({"header": "x-jwt", "query": "token", "cookie": "sess", "key_claim_name": "user"});
    assert_accepted(conf.clone(), request("/", &[("x-jwt", &t)]), "jack");
    assert_accepted(conf.clone(), request(&format!("/?token={t}"), &[]), "jack");
    assert_accepted(
        conf,
        request("/", &[("cookie", &format!("sess={t}"))]),
        "jack",
    );
}

#[test]
fn base64_secret_and_hs512_verify_and_name_the_credential() {
    let t = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(b"secret-bytes"),
        json!({"key": "b64-key"}),
    );
    let req = assert_accepted(json!({}), bearer(&t), "b64");
    assert_eq!(req.header_str("x-credential-identifier"), Some("c-b64"));
}

#[test]
fn rs256_es256_and_eddsa_tokens_verify_with_the_consumer_public_key() {
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
    let t = sign(Algorithm::RS256, &rsa, json!({"key": "rsa-key"}));
    assert_accepted(json!({}), bearer(&t), "rsa");
    let claims =
        json!({"key": "ec-key", "iss": "https://idp.example", "aud": "orders", "sub": "x"});
    let t = sign(Algorithm::ES256, &ec_key(&keys().ec), claims);
    assert_accepted(json!({}), bearer(&t), "ec");
    let ed = EncodingKey::from_ed_pem(keys().ed.serialize_pem().as_bytes()).unwrap();
    let t = sign(Algorithm::EdDSA, &ed, json!({"key": "ed-key"}));
    assert_accepted(json!({}), bearer(&t), "ed");
}

#[test]
fn consumer_jwk_set_verifies_by_kid() {
    let t = sign_raw(
        json!({"alg": "ES256", "kid": "k1"}),
        json!({"key": "set-key"}),
        &ec_key(&keys().ec),
        Algorithm::ES256,
    );
    let req = assert_accepted(json!({}), bearer(&t), "set");
    assert_eq!(req.header_str("x-credential-identifier"), Some("c-set"));
}

#[test]
fn route_jwk_set_maps_the_subject_to_a_consumer() {
    let conf =
        json!({"jwks": {"keys": [ec_jwk(&keys().ec, "idp-1")]}, "issuer": "https://idp.example"});
    let claims = json!({"sub": "alice", "iss": "https://idp.example", "exp": now() + 60});
    let header = json!({"alg": "ES256", "kid": "idp-1"});
    let t = sign_raw(
        header.clone(),
        claims,
        &ec_key(&keys().ec),
        Algorithm::ES256,
    );
    assert_accepted(conf.clone(), bearer(&t), "alice");
    // The subject must name a consumer.
    let claims = json!({"sub": "mallory", "iss": "https://idp.example", "exp": now() + 60});
    let t = sign_raw(
        header.clone(),
        claims,
        &ec_key(&keys().ec),
        Algorithm::ES256,
    );
    assert_401(run(conf.clone(), bearer(&t)).0, INVALID_KEY);
    // IdP tokens must expire.
    let claims = json!({"sub": "alice", "iss": "https://idp.example"});
    let t = sign_raw(header, claims, &ec_key(&keys().ec), Algorithm::ES256);
    assert_401(run(conf, bearer(&t)).0, VERIFY_FAILED);
}

#[test]
fn lifetime_grace_period_bounds_the_clock_skew() {
    let claims = |exp: u64| json!({"key": "ec-key", "iss": "https://idp.example", "aud": "orders", "sub": "x", "exp": exp});
    let t = sign(Algorithm::ES256, &ec_key(&keys().ec), claims(now() - 5));
    assert_accepted(json!({}), bearer(&t), "ec");
    let t = sign(Algorithm::ES256, &ec_key(&keys().ec), claims(now() - 60));
    assert_401(run(json!({}), bearer(&t)).0, VERIFY_FAILED);
}

// ---- refused ---------------------------------------------------------------

#[test]
fn request_without_token_is_refused_as_missing() {
    let (flow, req) = run(json!({}), request("/", &[]));
    assert_401(flow, MISSING);
    assert_eq!(req.decisions[0].reason.as_deref(), Some("missing token"));
}

#[test]
fn alg_none_in_any_casing_is_refused() {
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64url_encode(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        let claims = b64url_encode(json!({"key": "user-key"}).to_string().as_bytes());
        assert_refused(&format!("{header}.{claims}."), VERIFY_FAILED);
        // Even with a route JWK set.
        let conf = json!({"jwks": {"keys": [ec_jwk(&keys().ec, "k")]}});
        assert_401(
            run(conf, bearer(&format!("{header}.{claims}."))).0,
            VERIFY_FAILED,
        );
    }
}

#[test]
fn hmac_signed_with_the_rsa_public_key_as_secret_is_refused() {
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
        json!({"key": "rsa-key"}),
    );
    assert_refused(&forged, VERIFY_FAILED);
    let pk = EncodingKey::from_secret(keys().ec.public_key_pem().as_bytes());
    let conf = json!({"jwks": {"keys": [ec_jwk(&keys().ec, "k")]}});
    let t = sign_raw(
        json!({"alg": "HS256", "kid": "k"}),
        json!({"sub": "alice", "exp": now() + 60}),
        &pk,
        Algorithm::HS256,
    );
    assert_401(run(conf, bearer(&t)).0, VERIFY_FAILED);
}

#[test]
fn token_whose_alg_differs_from_the_consumers_is_refused() {
    let t = sign(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        json!({"key": "user-key"}),
    );
    assert_refused(&t, VERIFY_FAILED);
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap();
    let t = sign(Algorithm::PS256, &rsa, json!({"key": "rsa-key"}));
    assert_refused(&t, VERIFY_FAILED);
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    assert_refused(
        &hs(json!({"key": "user-key", "exp": now() - 1})),
        VERIFY_FAILED,
    );
    assert_refused(
        &hs(json!({"key": "user-key", "nbf": now() + 60})),
        VERIFY_FAILED,
    );
    assert_refused(
        &hs(json!({"key": "user-key", "exp": "tomorrow"})),
        VERIFY_FAILED,
    );
}

#[test]
fn claims_to_verify_makes_listed_claims_required() {
    let t = hs(json!({"key": "user-key"}));
    let (flow, _) = run(json!({"claims_to_verify": ["exp"]}), bearer(&t));
    assert_401(flow, VERIFY_FAILED);
    let t = hs(json!({"key": "user-key", "exp": now() + 60, "nbf": now() - 1}));
    assert_accepted(
        json!({"claims_to_verify": ["exp", "nbf"]}),
        bearer(&t),
        "jack",
    );
}

#[test]
fn wrong_signature_is_refused() {
    let t = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret"),
        json!({"key": "user-key"}),
    );
    assert_refused(&t, VERIFY_FAILED);
    // A valid token whose payload was swapped.
    let good = hs(json!({"key": "user-key", "admin": false}));
    let parts: Vec<&str> = good.split('.').collect();
    let evil = b64url_encode(
        json!({"key": "user-key", "admin": true})
            .to_string()
            .as_bytes(),
    );
    assert_refused(&format!("{}.{evil}.{}", parts[0], parts[2]), VERIFY_FAILED);
}

#[test]
fn truncated_non_base64_and_oversized_tokens_are_refused_as_invalid() {
    let good = hs(json!({"key": "user-key"}));
    let cut = good.rsplit_once('.').unwrap().0;
    assert_refused(cut, INVALID_TOKEN);
    assert_refused(&good[..good.len() / 3], INVALID_TOKEN);
    assert_refused("not-a-token", INVALID_TOKEN);
    assert_refused("@@@.###.$$$", INVALID_TOKEN);
    assert_refused("", INVALID_TOKEN);
    let big = hs(json!({"key": "user-key", "pad": "x".repeat(9000)}));
    assert_refused(&big, INVALID_TOKEN);
    // A truncated signature is a bad signature.
    assert_refused(&good[..good.len() - 4], VERIFY_FAILED);
}

#[test]
fn unknown_crit_header_is_refused() {
    let t = sign_raw(
        json!({"alg": "HS256", "crit": ["http://example.com/ext"], "http://example.com/ext": true}),
        json!({"key": "user-key"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    );
    assert_refused(&t, INVALID_TOKEN);
}

#[test]
fn header_supplied_keys_are_never_used() {
    let attacker = &keys().attacker;
    let claims =
        json!({"key": "ec-key", "iss": "https://idp.example", "aud": "orders", "sub": "x"});
    for extra in [
        json!({"jwk": ec_jwk(attacker, "evil")}),
        json!({"jku": "http://attacker.example/jwks.json"}),
        json!({"x5u": "http://attacker.example/cert.pem"}),
        json!({"kid": "evil"}),
        json!({"kid": "../../dev/null"}),
    ] {
        let mut header = json!({"alg": "ES256"});
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let t = sign_raw(header, claims.clone(), &ec_key(attacker), Algorithm::ES256);
        assert_refused(&t, VERIFY_FAILED);
    }
    // With a route JWK set: a kid the set does not hold, and the set's own
    // kid on a token the attacker signed.
    let conf = json!({"jwks": {"keys": [ec_jwk(&keys().ec, "idp-1")]}});
    let claims = json!({"sub": "alice", "exp": now() + 60});
    for header in [
        json!({"alg": "ES256", "kid": "evil", "jwk": ec_jwk(attacker, "evil")}),
        json!({"alg": "ES256", "kid": "idp-1", "jku": "http://attacker.example/jwks.json"}),
        json!({"alg": "ES256", "jwk": ec_jwk(attacker, "x")}),
    ] {
        let t = sign_raw(header, claims.clone(), &ec_key(attacker), Algorithm::ES256);
        assert_401(run(conf.clone(), bearer(&t)).0, VERIFY_FAILED);
    }
}

#[test]
fn unknown_or_missing_key_claim_is_refused() {
    assert_refused(&hs(json!({"key": "nobody"})), INVALID_KEY);
    assert_refused(&hs(json!({"sub": "user-key"})), MISSING_KEY);
    assert_refused(&hs(json!({"key": 42})), INVALID_KEY);
}

#[test]
fn wrong_issuer_or_audience_or_missing_required_claim_is_refused() {
    let sign_ec = |claims: Value| sign(Algorithm::ES256, &ec_key(&keys().ec), claims);
    assert_refused(
        &sign_ec(json!({"key": "ec-key", "iss": "https://evil", "aud": "orders", "sub": "x"})),
        VERIFY_FAILED,
    );
    assert_refused(
        &sign_ec(
            json!({"key": "ec-key", "iss": "https://idp.example", "aud": "billing", "sub": "x"}),
        ),
        VERIFY_FAILED,
    );
    assert_refused(
        &sign_ec(json!({"key": "ec-key", "iss": "https://idp.example", "aud": "orders"})),
        VERIFY_FAILED,
    );
    // Route-level checks apply to every consumer's tokens.
    let t = hs(json!({"key": "user-key"}));
    assert_401(
        run(json!({"audience": "orders"}), bearer(&t)).0,
        VERIFY_FAILED,
    );
    assert_401(
        run(json!({"required_claims": ["scope"]}), bearer(&t)).0,
        VERIFY_FAILED,
    );
}

#[test]
fn route_algorithm_allow_list_is_enforced() {
    let conf = json!({"jwks": {"keys": [ec_jwk(&keys().ec, "k")]}, "algorithms": ["RS256"]});
    let t = sign_raw(
        json!({"alg": "ES256", "kid": "k"}),
        json!({"sub": "alice", "exp": now() + 60}),
        &ec_key(&keys().ec),
        Algorithm::ES256,
    );
    let (flow, req) = run(conf, bearer(&t));
    assert_401(flow, VERIFY_FAILED);
    assert_eq!(
        req.decisions[0].reason.as_deref(),
        Some("algorithm not allowed")
    );
}

#[test]
fn anonymous_consumer_is_used_when_no_token_authenticates() {
    let (flow, req) = run(json!({"anonymous_consumer": "guest"}), bearer("garbage"));
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(req.consumer_name(), Some("guest"));
    let (flow, _) = run(json!({"anonymous_consumer": "nobody"}), request("/", &[]));
    assert_401(flow, ANONYMOUS_MISSING);
}

// ---- configuration -----------------------------------------------------------

fn cred_err(conf: Value) -> String {
    consumer_conf(&conf).unwrap_err().message
}

#[test]
fn consumer_conf_is_checked_in_apisix_words() {
    assert_eq!(
        cred_err(json!({"secret": "s"})),
        "property \"key\" is required"
    );
    assert_eq!(
        cred_err(json!({"key": "k"})),
        "property \"secret\" is required when using HS based algorithms"
    );
    assert_eq!(
        cred_err(json!({"key": "k", "algorithm": "RS256"})),
        "missing valid public key"
    );
    assert_eq!(
        cred_err(json!({"key": "k", "secret": "%%%", "base64_secret": true})),
        "base64_secret required but the secret is not in base64 format"
    );
    assert!(
        cred_err(json!({"key": "k", "secret": "s", "algorithm": "none"})).contains("algorithm")
    );
    assert!(
        cred_err(json!({"key": "k", "algorithm": "ES256", "public_key": RSA_PUBLIC_PEM}))
            .contains("cannot verify")
    );
    assert!(
        cred_err(json!({"key": "k", "algorithm": "RS256", "public_key": "junk"}))
            .contains("invalid public key")
    );
    assert!(
        cred_err(json!({"key": "k", "secret": "s", "jwks_uri": "https://idp/jwks"}))
            .contains("either")
    );
    assert!(cred_err(json!({"key": "k", "jwks": {"keys": []}})).contains("no keys"));
    assert!(
        cred_err(json!({"key": "k", "jwks_uri": "https://idp/jwks", "algorithms": ["HS256"]}))
            .contains("HMAC")
    );
    assert!(cred_err(json!({"key": "k", "secret": "s", "sekret": "t"})).contains("sekret"));
}

#[test]
fn consumer_conf_accepts_apisix_fields_it_does_not_use() {
    let c = consumer_conf(&json!({
        "key": "k", "secret": "s", "exp": 86400, "lifetime_grace_period": 0,
        "private_key": "-----BEGIN PRIVATE KEY-----", "key_claim_name": "key"
    }))
    .unwrap();
    assert_eq!(c.lookup_key, "k");
    assert!(!c.conf.to_string().contains("PRIVATE"));
}

#[test]
fn route_conf_is_checked() {
    assert!(try_plugin(json!({"realm": "a\"b"})).is_err());
    assert!(try_plugin(json!({"claims_to_verify": ["iat"]})).is_err());
    assert!(
        try_plugin(json!({"algorithms": ["RS256"]})).is_err(),
        "no JWK set"
    );
    assert!(try_plugin(json!({"jwks_uri": "ftp://x/jwks"})).is_err());
    assert!(try_plugin(json!({"jwks_uri": "http://127.0.0.1:9/jwks", "jwks_min_refresh_interval": 60, "jwks_max_refresh_interval": 10})).is_err());
    assert!(try_plugin(
        json!({"jwks": {"keys": [ec_jwk(&keys().ec, "k")]}, "algorithms": ["HS256"]})
    )
    .is_err());
    assert!(try_plugin(json!({"store_in_ctx": true, "hide_credentials": true})).is_ok());
}

// ---- the verified-token cache --------------------------------------------------

#[test]
fn a_repeated_token_is_served_from_the_cache_until_its_credentials_change() {
    let p = plugin(json!({"hide_credentials": true}));
    let shared = index();
    let t = hs(json!({"key": "user-key", "exp": now() + 60}));
    for _ in 0..3 {
        let mut req = bearer(&t);
        req.consumers = shared.clone();
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        assert_eq!(req.consumer_name(), Some("jack"));
        // A cache hit still hides the credential from the upstream.
        assert_eq!(req.header_str("authorization"), None);
    }
    // The credential is gone from the served index: the cached token is
    // checked again, and refused.
    let mut rotated = ConsumerIndex::default();
    rotated.add_consumer(consumer("jack"));
    let mut req = bearer(&t);
    req.consumers = Arc::new(rotated);
    assert_401(p.on_request(&mut req), "Invalid user key in JWT token");
    // A token that fails is never cached: a tampered copy stays refused.
    let at = t.rfind('.').unwrap() + 5;
    let swap = if &t[at..=at] == "A" { "B" } else { "A" };
    let forged = format!("{}{swap}{}", &t[..at], &t[at + 1..]);
    for _ in 0..2 {
        let mut req = bearer(&forged);
        req.consumers = shared.clone();
        assert!(matches!(p.on_request(&mut req), Flow::Respond(_)));
    }
}
