//! Black-box tests of openid-connect in bearer-only mode through the real
//! binary, against a small identity provider run by the test: discovery,
//! a JWK set, and an RFC 7662 introspection endpoint.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_test_support::{request, Gateway, RecordingUpstream};
use serde_json::{json, Value};

const CLIENT_ID: &str = "portcullis";
const CLIENT_SECRET: &str = "s3cret/with+chars";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The test's identity provider.
struct Idp {
    issuer: String,
    key: rcgen::KeyPair,
    /// Opaque token → introspection answer.
    active: Arc<Mutex<HashMap<String, Value>>>,
    introspections: Arc<AtomicUsize>,
}

impl Idp {
    async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = key.public_key_raw();
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "kid": "k1", "x": b64url(&raw[1..33]), "y": b64url(&raw[33..])}]});
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "introspection_endpoint": format!("{issuer}/introspect"),
        });
        let active: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let introspections = Arc::new(AtomicUsize::new(0));
        let (a, n) = (active.clone(), introspections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (jwks, discovery, active, hits) =
                    (jwks.clone(), discovery.clone(), a.clone(), n.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (jwks, discovery, active, hits) = (
                            jwks.clone(),
                            discovery.clone(),
                            active.clone(),
                            hits.clone(),
                        );
                        async move {
                            let path = req.uri().path().to_string();
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let form = req.into_body().collect().await.unwrap().to_bytes();
                            let body = match path.as_str() {
                                "/.well-known/openid-configuration" => discovery,
                                "/jwks" => jwks,
                                "/introspect" => {
                                    hits.fetch_add(1, Ordering::SeqCst);
                                    let expected = format!(
                                        "Basic {}",
                                        base64::engine::general_purpose::STANDARD
                                            .encode("portcullis:s3cret%2Fwith%2Bchars")
                                    );
                                    if auth.as_deref() != Some(&expected) {
                                        return Ok::<_, Infallible>(
                                            http::Response::builder()
                                                .status(401)
                                                .body(Full::new(Bytes::new()))
                                                .unwrap(),
                                        );
                                    }
                                    let form = String::from_utf8_lossy(&form).to_string();
                                    let token = form
                                        .split('&')
                                        .find_map(|p| p.strip_prefix("token="))
                                        .unwrap_or_default()
                                        .to_string();
                                    active
                                        .lock()
                                        .unwrap()
                                        .get(&token)
                                        .cloned()
                                        .unwrap_or(json!({"active": false}))
                                }
                                _ => json!({}),
                            };
                            Ok(http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Idp {
            issuer,
            key,
            active,
            introspections,
        }
    }

    fn sign(&self, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let key = EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn discovery(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }
}

fn config(up: &RecordingUpstream, idp: &Idp, use_jwks: bool) -> String {
    format!(
        r#"routes:
  - id: r
    uri: /*
    upstream: {{ nodes: {{ "{up}": 1 }} }}
    plugins:
      openid-connect:
        client_id: {CLIENT_ID}
        client_secret: "{CLIENT_SECRET}"
        discovery: "{discovery}"
        bearer_only: true
        use_jwks: {use_jwks}
        required_scopes: [orders.read]
        audience: orders-api
consumers:
  - username: alice
"#,
        up = up.addr,
        discovery = idp.discovery(),
    )
}

async fn get(gw: &Gateway, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let r = request("GET", &gw.url("/orders"), &headers, "")
        .await
        .unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

fn claims(idp: &Idp, exp: u64, aud: &str, scope: &str) -> Value {
    json!({"iss": idp.issuer, "sub": "alice", "aud": aud, "exp": exp,
           "iat": now(), "scope": scope})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_mode_admits_a_valid_token_as_its_consumer_and_refuses_expired_wrong_audience_and_missing_scope(
) {
    let up = RecordingUpstream::start().await;
    let idp = Idp::start().await;
    let gw = Gateway::start(&config(&up, &idp, true));

    let good = idp.sign(claims(
        &idp,
        now() + 300,
        "orders-api",
        "openid orders.read",
    ));
    let (status, body) = get(&gw, Some(&good)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer-username"], json!("alice"));
    assert_eq!(body["headers"]["x-access-token"], json!(good));
    assert_eq!(up.count(), 1);
    up.clear();

    let expired = idp.sign(claims(&idp, now() - 60, "orders-api", "orders.read"));
    let wrong_audience = idp.sign(claims(&idp, now() + 300, "billing-api", "orders.read"));
    let no_scope = idp.sign(claims(&idp, now() + 300, "orders-api", "openid"));
    let mut other_issuer = claims(&idp, now() + 300, "orders-api", "orders.read");
    other_issuer["iss"] = json!("http://evil.example");
    let other_issuer = idp.sign(other_issuer);
    for (what, token, message) in [
        ("expired", Some(expired.as_str()), "Invalid bearer token"),
        (
            "wrong audience",
            Some(&wrong_audience),
            "Invalid bearer token",
        ),
        ("missing scope", Some(&no_scope), "Insufficient scope"),
        ("other issuer", Some(&other_issuer), "Invalid bearer token"),
        ("garbage", Some("not.a.token"), "Invalid bearer token"),
        ("no token", None, "No bearer token found in request"),
    ] {
        let (status, body) = get(&gw, token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body, json!({ "message": message }), "{what}");
    }
    assert_eq!(up.count(), 0, "no rejected request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_mode_admits_an_active_token_caches_the_answer_and_refuses_inactive_ones() {
    let up = RecordingUpstream::start().await;
    let idp = Idp::start().await;
    let gw = Gateway::start(&config(&up, &idp, false));
    let exp = now() + 300;
    idp.active.lock().unwrap().extend([
        (
            "opaque-good".to_string(),
            json!({"active": true, "sub": "alice", "aud": "orders-api", "exp": exp,
                   "scope": "orders.read", "client_id": "shop"}),
        ),
        (
            "opaque-expired".to_string(),
            json!({"active": true, "sub": "alice", "aud": "orders-api",
                   "exp": now() - 10, "scope": "orders.read"}),
        ),
        (
            "opaque-wrong-aud".to_string(),
            json!({"active": true, "sub": "alice", "aud": "other", "exp": exp,
                   "scope": "orders.read"}),
        ),
        (
            "opaque-no-scope".to_string(),
            json!({"active": true, "sub": "alice", "aud": "orders-api", "exp": exp,
                   "scope": "profile"}),
        ),
    ]);

    for _ in 0..3 {
        let (status, body) = get(&gw, Some("opaque-good")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["headers"]["x-consumer-username"], json!("alice"));
    }
    assert_eq!(
        idp.introspections.load(Ordering::SeqCst),
        1,
        "the answer is cached within the token's lifetime"
    );
    up.clear();

    for (what, token, message) in [
        ("unknown", "opaque-unknown", "Invalid bearer token"),
        ("expired", "opaque-expired", "Invalid bearer token"),
        ("wrong audience", "opaque-wrong-aud", "Invalid bearer token"),
        ("missing scope", "opaque-no-scope", "Insufficient scope"),
    ] {
        let (status, body) = get(&gw, Some(token)).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body, json!({ "message": message }), "{what}");
    }
    assert_eq!(up.count(), 0, "no rejected request reached the upstream");
}
