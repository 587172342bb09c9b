//! Black-box tests of jwt-auth through the real binary: tokens from
//! consumer credentials and from a JWKS server that rotates its keys, hostile
//! tokens, and jwt-auth beside key-auth on one route.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_test_support::{request, Gateway, RecordingUpstream};
use serde_json::{json, Value};

const SECRET: &str = "jack-hmac-secret-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn es256(pair: &rcgen::KeyPair, kid: &str, claims: Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn jwk(pair: &rcgen::KeyPair, kid: &str) -> Value {
    let raw = pair.public_key_raw();
    json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
           "x": b64url(&raw[1..33]), "y": b64url(&raw[33..])})
}

fn new_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

/// A JWKS endpoint serving whatever set is current.
async fn jwks_server(set: Arc<Mutex<Value>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let set = set.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let body = set.lock().unwrap().to_string();
                    async move {
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/jwk-set+json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let r = request("GET", &gw.url(path), headers, "")
        .await
        .expect("request");
    let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, body)
}

async fn with_bearer(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    get(gw, path, &[("authorization", &format!("Bearer {token}"))]).await
}

fn message(m: &str) -> Value {
    json!({ "message": m })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_tokens_reach_the_upstream_with_their_identity_and_hostile_tokens_never_do() {
    let up = RecordingUpstream::start().await;
    let ec = new_key();
    let cfg = format!(
        r#"routes:
  - id: jwt
    uri: /jwt/*
    upstream: {{ nodes: {{ "{up}": 1 }} }}
    plugins:
      jwt-auth: {{ hide_credentials: true }}
consumers:
  - username: jack
  - id: jack/credentials/laptop
    plugins:
      jwt-auth: {{ key: jack-key, secret: "{SECRET}" }}
  - username: ec
    plugins:
      jwt-auth: {{ key: ec-key, algorithm: ES256, public_key: {pem} }}
"#,
        up = up.addr,
        pem = serde_json::to_string(&ec.public_key_pem()).unwrap(),
    );
    let gw = Gateway::start(&cfg);

    let (status, body) = get(&gw, "/jwt/a", &[]).await;
    assert_eq!(
        (status, body),
        (401, message("Missing JWT token in request"))
    );

    // HMAC keyed with the consumer's public key (the classic confusion).
    let public_as_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"key": "ec-key"}),
        &EncodingKey::from_secret(ec.public_key_pem().as_bytes()),
    )
    .unwrap();
    let wrong_signature = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"key": "jack-key"}),
        &EncodingKey::from_secret(b"not jack's secret"),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(br#"{"key":"jack-key"}"#)
    );
    let none_upper = format!(
        "{}.{}.",
        b64url(br#"{"alg":"NONE"}"#),
        b64url(br#"{"key":"jack-key"}"#)
    );
    let crit = format!(
        "{}.{}.sig",
        b64url(br#"{"alg":"HS256","crit":["x"],"x":1}"#),
        b64url(br#"{"key":"jack-key"}"#)
    );
    let oversized = hs256(json!({"key": "jack-key", "pad": "x".repeat(9000)}));
    let good = hs256(json!({"key": "jack-key", "exp": now() + 300}));
    let hostile: Vec<(String, &str)> = vec![
        (none, "failed to verify jwt"),
        (none_upper, "failed to verify jwt"),
        (public_as_secret, "failed to verify jwt"),
        (wrong_signature, "failed to verify jwt"),
        (
            hs256(json!({"key": "jack-key", "exp": now() - 10})),
            "failed to verify jwt",
        ),
        (
            hs256(json!({"key": "jack-key", "nbf": now() + 600})),
            "failed to verify jwt",
        ),
        (
            hs256(json!({"key": "someone-else"})),
            "Invalid user key in JWT token",
        ),
        (good[..good.len() / 2].to_string(), "JWT token invalid"),
        ("%%%.@@@.###".to_string(), "JWT token invalid"),
        (crit, "JWT token invalid"),
        (oversized, "JWT token invalid"),
    ];
    for (token, expected) in &hostile {
        let (status, body) = with_bearer(&gw, "/jwt/a", token).await;
        assert_eq!(
            (status, body),
            (401, message(expected)),
            "token {token:.60}"
        );
    }
    assert_eq!(up.count(), 0, "no rejected request reached the upstream");

    let (status, _) = with_bearer(&gw, "/jwt/a", &good).await;
    assert_eq!(status, 200);
    let (status, _) = get(&gw, &format!("/jwt/b?jwt={good}"), &[]).await;
    assert_eq!(status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["x-consumer-username"], "jack");
    assert_eq!(seen[0].headers["x-credential-identifier"], "laptop");
    assert!(
        seen[0].headers.get("authorization").is_none(),
        "hide_credentials"
    );
    assert_eq!(
        seen[1].uri, "/jwt/b",
        "hide_credentials drops the query token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_and_jwt_auth_on_one_route_each_authenticate_their_consumer() {
    let up = RecordingUpstream::start().await;
    let cfg = format!(
        r#"routes:
  - id: both
    uri: /both/*
    upstream: {{ nodes: {{ "{up}": 1 }} }}
    plugins:
      key-auth: {{}}
      jwt-auth: {{}}
consumers:
  - username: jack
    plugins:
      jwt-auth: {{ key: jack-key, secret: "{SECRET}" }}
  - username: order-service
    plugins:
      key-auth: {{ key: order-service-key }}
"#,
        up = up.addr
    );
    let gw = Gateway::start(&cfg);

    let (status, _) = get(&gw, "/both/x", &[("apikey", "order-service-key")]).await;
    assert_eq!(status, 200);
    let token = hs256(json!({"key": "jack-key"}));
    let (status, _) = with_bearer(&gw, "/both/x", &token).await;
    assert_eq!(status, 200);
    let seen = up.seen();
    assert_eq!(seen[0].headers["x-consumer-username"], "order-service");
    assert_eq!(seen[1].headers["x-consumer-username"], "jack");

    let (status, _) = get(&gw, "/both/x", &[]).await;
    assert_eq!(status, 401);
    let (status, _) = get(
        &gw,
        "/both/x",
        &[("apikey", "wrong"), ("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(up.count(), 2, "refused requests never reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_with_a_rotated_in_jwks_key_pass_without_a_restart() {
    let up = RecordingUpstream::start().await;
    let (old, new, attacker) = (new_key(), new_key(), new_key());
    let set = Arc::new(Mutex::new(json!({"keys": [jwk(&old, "2024-old")]})));
    let jwks_uri = jwks_server(set.clone()).await;
    let cfg = format!(
        r#"routes:
  - id: idp
    uri: /idp/*
    upstream: {{ nodes: {{ "{up}": 1 }} }}
    plugins:
      jwt-auth:
        jwks_uri: "{jwks_uri}"
        jwks_min_refresh_interval: 1
        jwks_max_refresh_interval: 2
        issuer: https://idp.test
        audience: orders
  - id: partner
    uri: /partner/*
    upstream: {{ nodes: {{ "{up}": 1 }} }}
    plugins:
      jwt-auth: {{ key_claim_name: iss }}
consumers:
  - username: alice
  - username: partner-a
    plugins:
      jwt-auth: {{ key: "https://idp.test", jwks_uri: "{jwks_uri}", jwks_min_refresh_interval: 1, audience: partners }}
"#,
        up = up.addr
    );
    let gw = Gateway::start(&cfg);
    let claims = |aud: &str| json!({"sub": "alice", "iss": "https://idp.test", "aud": aud, "exp": now() + 300});

    // The first fetch runs in the background: wait for it.
    let first = es256(&old, "2024-old", claims("orders"));
    assert!(
        eventually(&gw, "/idp/a", &first, 200).await,
        "the JWKS key verifies"
    );

    // Hostile tokens: wrong audience, a header-supplied key, an unknown kid,
    // the right kid signed by someone else, a missing consumer.
    let mut evil_header = Header::new(Algorithm::ES256);
    evil_header.kid = Some("2024-old".into());
    evil_header.jku = Some(format!("{jwks_uri}?attacker"));
    let attacker_pem = EncodingKey::from_ec_pem(attacker.serialize_pem().as_bytes()).unwrap();
    let hostile = [
        es256(&old, "2024-old", claims("billing")),
        es256(&attacker, "evil", claims("orders")),
        jsonwebtoken::encode(&evil_header, &claims("orders"), &attacker_pem).unwrap(),
        es256(
            &old,
            "2024-old",
            json!({"sub": "mallory", "iss": "https://idp.test", "aud": "orders", "exp": now() + 300}),
        ),
    ];
    up.clear();
    for token in &hostile {
        let (status, _) = with_bearer(&gw, "/idp/a", token).await;
        assert_eq!(status, 401);
    }
    assert_eq!(up.count(), 0);

    // A consumer credential backed by the same JWKS: the iss claim names it.
    let partner = es256(&old, "2024-old", claims("partners"));
    assert!(eventually(&gw, "/partner/a", &partner, 200).await);
    assert_eq!(
        up.seen().last().unwrap().headers["x-consumer-username"],
        "partner-a"
    );

    // Rotate: the identity provider publishes a new key and drops the old.
    *set.lock().unwrap() = json!({"keys": [jwk(&new, "2025-new")]});
    let rotated = es256(&new, "2025-new", claims("orders"));
    assert!(
        eventually(&gw, "/idp/a", &rotated, 200).await,
        "the new key is picked up without a restart"
    );
    assert_eq!(
        up.seen().last().unwrap().headers["x-consumer-username"],
        "alice"
    );
    assert!(
        eventually(&gw, "/idp/a", &first, 401).await,
        "the rotated-out key stops verifying"
    );
    let partner_new = es256(&new, "2025-new", claims("partners"));
    assert!(eventually(&gw, "/partner/a", &partner_new, 200).await);
}

/// Send `token` until the answer is `status` (up to 15 s).
async fn eventually(gw: &Gateway, path: &str, token: &str, status: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if with_bearer(gw, path, token).await.0 == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
