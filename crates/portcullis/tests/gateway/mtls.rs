//! Black-box tests of client certificates through the real binary: the
//! handshake requires a certificate from the SSL's client CA, and mtls-auth
//! maps a verified certificate to a consumer.

use crate::tls_support::*;
use portcullis_test_support::RecordingUpstream;
use serde_json::json;

const SPIFFE: &str = "spiffe://example.org/ns/prod/sa/billing";

struct Setup {
    _gw: portcullis_test_support::Gateway,
    port: u16,
    up: RecordingUpstream,
    server_ca: Ca,
    client_ca: Ca,
}

async fn setup() -> Setup {
    let up = RecordingUpstream::start().await;
    let server_ca = Ca::new("server ca");
    let client_ca = Ca::new("client ca");
    let leaf = server_ca.server(&["api.example.com"]);
    let cfg = format!(
        r#"routes:
  - id: r
    uri: /*
    upstream: {{ nodes: {{ "{up}": 1 }} }}
    plugins:
      mtls-auth: {{ forward_header: X-Client-Identity }}
consumers:
  - username: billing
  - id: billing/credentials/workload
    plugins:
      mtls-auth: {{ spiffe_id: "{SPIFFE}" }}
ssls:
  - id: api
    cert: {cert}
    key: {key}
    snis: [api.example.com]
    client: {{ ca: {ca}, depth: 1 }}
"#,
        up = up.addr,
        cert = q(&leaf.cert_pem),
        key = q(&leaf.key_pem),
        ca = q(&client_ca.pem),
    );
    let (gw, port) = start(&cfg);
    Setup {
        _gw: gw,
        port,
        up,
        server_ca,
        client_ca,
    }
}

impl Setup {
    async fn get_with(&self, client: Option<&Leaf>) -> Result<(u16, serde_json::Value), String> {
        let config = client_config(
            &self.server_ca.pem,
            client,
            &both_versions(),
            &[b"http/1.1"],
        );
        try_get(self.port, "api.example.com", config, "/pay").await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_the_configured_ca_reaches_the_upstream_as_its_consumer() {
    let s = setup().await;
    let client = s
        .client_ca
        .client("billing", SPIFFE, "billing.internal", false);
    let (status, body) = s.get_with(Some(&client)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let headers = &body["headers"];
    assert_eq!(headers["x-consumer-username"], json!("billing"));
    assert_eq!(headers["x-credential-identifier"], json!("workload"));
    assert_eq!(headers["x-client-identity"], json!(SPIFFE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_expired_and_missing_client_certificates_fail_the_handshake() {
    let s = setup().await;
    let stranger_ca = Ca::new("someone else");
    let wrong_ca = stranger_ca.client("billing", SPIFFE, "billing.internal", false);
    let expired = s
        .client_ca
        .client("billing", SPIFFE, "billing.internal", true);
    for (what, client) in [
        ("wrong CA", Some(&wrong_ca)),
        ("expired", Some(&expired)),
        ("no certificate", None),
    ] {
        let result = s.get_with(client).await;
        assert!(result.is_err(), "{what}: {result:?}");
    }
    assert_eq!(s.up.count(), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_certificate_that_no_consumer_claims_is_401_and_never_reaches_the_upstream() {
    let s = setup().await;
    let unknown = s.client_ca.client(
        "intruder",
        "spiffe://example.org/ns/prod/sa/intruder",
        "intruder.internal",
        false,
    );
    let (status, body) = s.get_with(Some(&unknown)).await.unwrap();
    assert_eq!(status, 401);
    assert_eq!(body, json!({"message": "Invalid client certificate"}));
    assert_eq!(s.up.count(), 0);
}
