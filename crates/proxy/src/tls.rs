//! TLS termination for the HTTPS listeners (docs/tls.md).
//!
//! Each handshake reads the ClientHello first (rustls's `Acceptor`), picks
//! the `ssls` resource for its SNI — an exact name before a `*.` wildcard —
//! and continues with that resource's own `ServerConfig`: its certificates
//! and, when it has `client.ca`, a verifier that requires a client
//! certificate issued under that CA. No SNI, or no resource for it: the
//! handshake fails.
//!
//! The SNI table follows the serving snapshot: a handshake compares the
//! snapshot's version with the table's and, when they differ, the table is
//! rebuilt once (under a lock, by whichever handshake sees it first).
//! Resources whose content did not change keep their parsed `ServerConfig`,
//! so PEMs are parsed once per change, never per handshake, and a
//! certificate replaced through the Admin API or the file serves the next
//! handshake while open connections keep theirs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_config::ssl::{self, ClientAuth, ParsedSsl};
use portcullis_config::Live;
use portcullis_plugins::PeerCertificate;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

/// SNI → server configuration, for one snapshot version.
#[derive(Default)]
struct SniTable {
    version: u64,
    exact: HashMap<String, Arc<ServerConfig>>,
    /// `*.example.com` is kept under `example.com`.
    wildcard: HashMap<String, Arc<ServerConfig>>,
}

impl SniTable {
    /// An exact name first; then a wildcard covering one leading label
    /// (`*.example.com` serves `a.example.com`, not `a.b.example.com`).
    fn find(&self, sni: &str) -> Option<Arc<ServerConfig>> {
        if let Some(c) = self.exact.get(sni) {
            return Some(c.clone());
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

/// Shared by every worker: the current SNI table and parsed resources.
pub struct TlsTerminator {
    live: Arc<Live>,
    table: ArcSwap<SniTable>,
    /// Parsed configs by the content of their resource, kept across
    /// rebuilds so an unchanged certificate is not parsed again.
    parsed: Mutex<HashMap<u64, Served>>,
    handshake_timeout: Duration,
}

/// A parsed resource: its configuration and its lower-cased SNIs.
type Served = (Arc<ServerConfig>, Vec<String>);

fn content_key(s: &portcullis_config::model::Ssl) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(s).unwrap_or_default().hash(&mut h);
    h.finish()
}

impl TlsTerminator {
    pub fn new(live: Arc<Live>, handshake_timeout: Duration) -> TlsTerminator {
        TlsTerminator {
            live,
            table: ArcSwap::from_pointee(SniTable::default()),
            parsed: Mutex::new(HashMap::new()),
            handshake_timeout,
        }
    }

    /// The table for the serving snapshot, rebuilt if the snapshot changed.
    fn table(&self) -> Arc<SniTable> {
        let snapshot = self.live.load_guard();
        let current = self.table.load_full();
        if current.version == snapshot.version {
            return current;
        }
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table.load_full();
        if current.version == snapshot.version {
            return current;
        }
        let mut next = SniTable {
            version: snapshot.version,
            ..Default::default()
        };
        let mut kept = HashMap::new();
        for s in snapshot.ssls.iter().filter(|s| ssl::serves(s)) {
            let key = content_key(s);
            let served = match parsed.get(&key) {
                Some(c) => c.clone(),
                // The snapshot validated it; a failure here is a bug, and
                // the resource's names simply fail their handshakes.
                None => match ssl::parse(s).map_err(|e| e.to_string()).and_then(|p| {
                    let snis = p.snis.clone();
                    server_config(p).map(|c| (c, snis))
                }) {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::error!(%error, "ssl resource cannot serve");
                        continue;
                    }
                },
            };
            for sni in &served.1 {
                match sni.strip_prefix("*.") {
                    Some(parent) => next.wildcard.insert(parent.to_string(), served.0.clone()),
                    None => next.exact.insert(sni.clone(), served.0.clone()),
                };
            }
            kept.insert(key, served);
        }
        *parsed = kept;
        let next = Arc::new(next);
        self.table.store(next.clone());
        next
    }

    /// Complete a handshake within the handshake timeout. `None`: it failed
    /// (no SNI, no certificate for it, a refused client certificate, a
    /// protocol error); the connection is dropped.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Option<(TlsStream<TcpStream>, Option<Arc<PeerCertificate>>)> {
        let handshake = async {
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
                .await
                .ok()?;
            let sni = start.client_hello().server_name()?.to_ascii_lowercase();
            let Some(config) = self.table().find(&sni) else {
                tracing::debug!(%sni, "no certificate for this server name");
                return None;
            };
            let stream = match start.into_stream(config).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::debug!(%sni, %error, "TLS handshake failed");
                    return None;
                }
            };
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| PeerCertificate::from_der(der, Some(&sni)))
                .map(Arc::new);
            Some((stream, peer))
        };
        tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .ok()
            .flatten()
    }
}

/// One resource's server configuration: TLS 1.2/1.3 as `ssl_protocols`
/// says, ALPN h2 then http/1.1, its certificates, its client CA.
fn server_config(parsed: ParsedSsl) -> Result<Arc<ServerConfig>, String> {
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if parsed.tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if parsed.tls12 {
        versions.push(&rustls::version::TLS12);
    }
    let builder = ServerConfig::builder_with_provider(ssl::provider())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;
    let builder = match parsed.client {
        None => builder.with_no_client_auth(),
        Some(ClientAuth { roots, depth }) => {
            let inner = WebPkiClientVerifier::builder_with_provider(roots, ssl::provider())
                .build()
                .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(Arc::new(DepthLimited { inner, depth }))
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(KeySet(parsed.keys)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A resource's certificates (`cert` and `certs`): the first whose key can
/// sign with a scheme the client offers (RSA or ECDSA, say).
#[derive(Debug)]
struct KeySet(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for KeySet {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offered = hello.signature_schemes();
        self.0
            .iter()
            .find(|k| k.key.choose_scheme(offered).is_some())
            .or_else(|| self.0.first())
            .cloned()
    }
}

/// webpki's client verification, plus nginx's `ssl_verify_depth`: at most
/// `depth` intermediate certificates between the client's and the CA.
#[derive(Debug)]
struct DepthLimited {
    inner: Arc<dyn ClientCertVerifier>,
    depth: u32,
}

impl ClientCertVerifier for DepthLimited {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() > self.depth as usize {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client connection, plain or TLS, as hyper reads it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    #[inline]
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    #[inline]
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    #[inline]
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_win_over_wildcards_and_wildcards_cover_one_label() {
        let config = |_: &str| {
            Arc::new(
                ServerConfig::builder_with_provider(ssl::provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(KeySet(Vec::new()))),
            )
        };
        let exact = config("exact");
        let wild = config("wild");
        let mut t = SniTable::default();
        t.exact.insert("api.example.com".into(), exact.clone());
        t.wildcard.insert("example.com".into(), wild.clone());
        assert!(Arc::ptr_eq(&t.find("api.example.com").unwrap(), &exact));
        assert!(Arc::ptr_eq(&t.find("www.example.com").unwrap(), &wild));
        assert!(t.find("a.b.example.com").is_none());
        assert!(t.find("example.com").is_none());
    }
}
