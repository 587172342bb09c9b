//! Black-box tests of TLS termination through the real binary: certificates
//! chosen by SNI, TLS 1.2 and 1.3, ALPN, certificates replaced live, and bad
//! PEMs refused with the field named.

use std::time::{Duration, Instant};

use crate::tls_support::*;
use portcullis_test_support::{request, RecordingUpstream};
use serde_json::json;

fn ssl(id: &str, leaf: &Leaf, snis: &[&str]) -> String {
    format!(
        "  - id: {id}\n    cert: {}\n    key: {}\n    snis: {}\n",
        q(&leaf.cert_pem),
        q(&leaf.key_pem),
        serde_json::to_string(snis).unwrap()
    )
}

fn route(up: &RecordingUpstream) -> String {
    format!(
        "routes:\n  - id: r\n    uri: /*\n    upstream: {{ nodes: {{ \"{}\": 1 }} }}\n",
        up.addr
    )
}

async fn served_cert(port: u16, sni: &str, ca: &Ca) -> Option<Vec<u8>> {
    let config = client_config(&ca.pem, None, &both_versions(), &[b"http/1.1"]);
    let stream = connect(port, sni, config).await.ok()?;
    Some(stream.get_ref().1.peer_certificates()?[0].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_exact_before_wildcard_and_unknown_names_fail_the_handshake()
{
    let up = RecordingUpstream::start().await;
    let ca = Ca::new("test ca");
    let wildcard = ca.server(&["*.example.com"]);
    let exact = ca.server(&["api.example.com"]);
    let cfg = format!(
        "{}ssls:\n{}{}",
        route(&up),
        ssl("wild", &wildcard, &["*.example.com"]),
        ssl("exact", &exact, &["api.example.com"])
    );
    let (gw, port) = start(&cfg);

    assert_eq!(
        served_cert(port, "api.example.com", &ca).await,
        Some(exact.der.to_vec())
    );
    assert_eq!(
        served_cert(port, "www.example.com", &ca).await,
        Some(wildcard.der.to_vec())
    );
    assert_eq!(served_cert(port, "other.test", &ca).await, None);
    assert_eq!(served_cert(port, "a.b.example.com", &ca).await, None);

    // Requests over TLS reach the upstream, which is told the scheme.
    let config = client_config(&ca.pem, None, &both_versions(), &[b"http/1.1"]);
    let (status, body) = try_get(port, "api.example.com", config, "/hello")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["headers"]["x-forwarded-proto"], json!("https"));
    // The plain listener is still there.
    let plain = request("GET", &gw.url("/plain"), &[], "").await.unwrap();
    assert_eq!(plain.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_are_negotiated_and_alpn_selects_h2_or_http1() {
    let up = RecordingUpstream::start().await;
    let ca = Ca::new("test ca");
    let leaf = ca.server(&["api.example.com"]);
    let (_gw, port) = start(&format!(
        "{}ssls:\n{}",
        route(&up),
        ssl("1", &leaf, &["api.example.com"])
    ));

    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let config = client_config(&ca.pem, None, &[version], &[b"http/1.1"]);
        let stream = connect(port, "api.example.com", config).await.unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        let mut h1 = H1::open(stream).await.unwrap();
        assert_eq!(h1.get("api.example.com", "/v").await.unwrap().0, 200);
    }

    let h2 = client_config(&ca.pem, None, &both_versions(), &[b"h2", b"http/1.1"]);
    let stream = connect(port, "api.example.com", h2).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, _) = get_h2(stream, "api.example.com", "/over-h2").await.unwrap();
    assert_eq!(status, 200);

    let h1 = client_config(&ca.pem, None, &both_versions(), &[b"http/1.1"]);
    let stream = connect(port, "api.example.com", h1).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_in_the_file_serves_new_handshakes_while_open_connections_keep_working(
) {
    let up = RecordingUpstream::start().await;
    let ca = Ca::new("test ca");
    let old = ca.server(&["api.example.com"]);
    let new = ca.server(&["api.example.com"]);
    let (gw, port) = start(&format!(
        "{}ssls:\n{}",
        route(&up),
        ssl("1", &old, &["api.example.com"])
    ));
    let config = client_config(&ca.pem, None, &both_versions(), &[b"http/1.1"]);
    let stream = connect(port, "api.example.com", config).await.unwrap();
    assert_eq!(stream.get_ref().1.peer_certificates().unwrap()[0], old.der);
    let mut open = H1::open(stream).await.unwrap();
    assert_eq!(open.get("api.example.com", "/before").await.unwrap().0, 200);

    rewrite_resources(
        &gw,
        &format!(
            "{}ssls:\n{}",
            route(&up),
            ssl("1", &new, &["api.example.com"])
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = served_cert(port, "api.example.com", &ca).await;
        if served == Some(new.der.to_vec()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection made before the change still serves, with its old
    // certificate, on the same process.
    assert_eq!(open.get("api.example.com", "/after").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssl_with_an_invalid_pem_is_refused_naming_the_field_and_a_good_one_serves_at_once() {
    // No resources in the file: the Admin API writes to the store.
    let (gw, port) = start("");
    let ca = Ca::new("test ca");
    let leaf = ca.server(&["api.example.com"]);
    let admin = [
        ("X-API-KEY", "test-admin-key"),
        ("content-type", "application/json"),
    ];
    let bad = json!({"cert": leaf.cert_pem, "key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "snis": ["api.example.com"]});
    let r = request(
        "PUT",
        &gw.admin_url("/apisix/admin/ssls/1"),
        &admin,
        bad.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("key"), "{}", r.text());
    let other = ca.server(&["other.example.com"]);
    let mismatched =
        json!({"cert": leaf.cert_pem, "key": other.key_pem, "snis": ["api.example.com"]});
    let r = request(
        "PUT",
        &gw.admin_url("/apisix/admin/ssls/1"),
        &admin,
        mismatched.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("does not match"), "{}", r.text());
    assert_eq!(served_cert(port, "api.example.com", &ca).await, None);

    let good = json!({"cert": leaf.cert_pem, "key": leaf.key_pem, "snis": ["api.example.com"]});
    let r = request(
        "PUT",
        &gw.admin_url("/apisix/admin/ssls/1"),
        &admin,
        good.to_string(),
    )
    .await
    .unwrap();
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    assert_eq!(
        served_cert(port, "api.example.com", &ca).await,
        Some(leaf.der.to_vec())
    );
}
