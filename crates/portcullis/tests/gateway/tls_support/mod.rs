//! Shared by the tls and mtls tests: certificates made with rcgen, a
//! gateway with an HTTPS listener, and a TLS client (tokio-rustls).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_test_support::gateway::default_gateway_section;
use portcullis_test_support::{free_port, Gateway};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A certificate authority that issues server and client certificates.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, mut params: CertificateParams, cn: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A server certificate for `names`.
    pub fn server(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, &names[0])
    }

    /// A client certificate with a SPIFFE ID and a DNS name; `expired`
    /// makes one that ended yesterday.
    pub fn client(&self, cn: &str, spiffe: &str, dns: &str, expired: bool) -> Leaf {
        let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(spiffe.try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.issue(params, cn)
    }
}

/// YAML-safe (JSON) quoting of a PEM.
pub fn q(pem: &str) -> String {
    serde_json::to_string(pem).unwrap()
}

/// The default gateway section plus an HTTPS listener on `tls_port`.
pub fn gateway_with_tls(tls_port: u16) -> String {
    format!(
        "{}  listen_tls: [\"127.0.0.1:{tls_port}\"]\n",
        default_gateway_section()
    )
}

/// Start the gateway with an HTTPS listener; returns it and the TLS port.
pub fn start(resources: &str) -> (Gateway, u16) {
    let tls_port = free_port();
    let gw = Gateway::start(&format!("{}{resources}", gateway_with_tls(tls_port)));
    (gw, tls_port)
}

/// Replace the resources of a running gateway's file, keeping its section.
pub fn rewrite_resources(gw: &Gateway, resources: &str) {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let gateway_part = text
        .split_once("\nroutes:")
        .or_else(|| text.split_once("\nssls:"))
        .map(|(g, _)| g)
        .unwrap();
    gw.write_config(&format!("{gateway_part}\n{resources}"));
}

/// A client trusting `ca_pem`, speaking `versions`, offering `alpn`, with
/// an optional client certificate.
pub fn client_config(
    ca_pem: &str,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub fn both_versions() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13, &rustls::version::TLS12]
}

pub async fn connect(
    port: u16,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// An HTTP/1.1 connection over TLS that sends several requests.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl H1 {
    pub async fn open(stream: TlsStream<TcpStream>) -> Result<H1, String> {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H1 { sender })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<(u16, Value), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::get(path)
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }
}

/// One h2 request over TLS.
pub async fn get_h2(
    stream: TlsStream<TcpStream>,
    host: &str,
    path: &str,
) -> Result<(u16, Value), String> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(format!("https://{host}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Handshake, then one HTTP/1.1 request: an error at either step is the
/// handshake failing (with TLS 1.3 a refused client certificate surfaces
/// on the first read).
pub async fn try_get(
    port: u16,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(u16, Value), String> {
    let stream = connect(port, sni, config)
        .await
        .map_err(|e| e.to_string())?;
    let mut h1 = H1::open(stream).await?;
    h1.get(sni, path).await
}
