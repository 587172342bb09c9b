//! JWK sets: inline ones, and remote ones fetched from `jwks_uri`, cached
//! and refreshed in the background so that a rotated key is picked up
//! without a restart or a reload.
//!
//! A remote set is fetched when it is first configured, then again after
//! the response's `Cache-Control: max-age` clamped to
//! [`min_refresh`, `max_refresh`] (or `max_refresh` without one), and early
//! when a token names a `kid` the set does not hold — never more often than
//! once per `min_refresh`, whatever tokens arrive. A failed fetch keeps the
//! keys already held and is retried after `min_refresh`.
//!
//! Fetches run on one dedicated thread (`portcullis-jwks`) with its own
//! runtime, never on a worker, are bounded in time ([`FETCH_TIMEOUT`]) and
//! size ([`MAX_JWKS_BYTES`]), do not follow redirects, and verify HTTPS
//! against the system's roots. Request threads only read the current key
//! set through an atomic pointer.
//!
//! Sources are shared process-wide by their settings, so every consumer
//! credential and route naming the same `jwks_uri` shares one cache, and a
//! config reload keeps it. A source nobody has used for [`IDLE_DROP`] and
//! that no route holds is dropped when another is created.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tokio::sync::Notify;

use super::keys::{parse_jwk_set, JwkKey, VerifyKey};

pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const MAX_JWKS_BYTES: usize = 256 * 1024;
pub(crate) const IDLE_DROP: Duration = Duration::from_secs(24 * 3600);
pub(crate) const DEFAULT_MIN_REFRESH: u64 = 30;
pub(crate) const DEFAULT_MAX_REFRESH: u64 = 300;

/// Why no key was found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyMiss {
    /// The token's `kid` is not in the set (a refresh was asked for).
    UnknownKid,
    /// The set holds no key for the token's algorithm.
    NoKey,
    /// Several keys fit and the token names none.
    KidRequired,
    /// The key named by `kid` is not for the token's algorithm.
    AlgMismatch,
}

impl KeyMiss {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            KeyMiss::UnknownKid => "unknown kid",
            KeyMiss::NoKey => "no key for the token's algorithm",
            KeyMiss::KidRequired => "token has no kid and several keys fit",
            KeyMiss::AlgMismatch => "algorithm does not fit the key",
        }
    }
}

pub(crate) struct JwksSource {
    uri: Option<http::Uri>,
    min_refresh: Duration,
    max_refresh: Duration,
    keys: ArcSwap<Vec<JwkKey>>,
    wake: Arc<Notify>,
    /// Seconds since the epoch of the last use, for dropping idle sources.
    last_used: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwksSource {
    fn new(uri: Option<http::Uri>, min: u64, max: u64, keys: Vec<JwkKey>) -> JwksSource {
        JwksSource {
            uri,
            min_refresh: Duration::from_secs(min),
            max_refresh: Duration::from_secs(max),
            keys: ArcSwap::from_pointee(keys),
            wake: Arc::new(Notify::new()),
            last_used: AtomicU64::new(now_secs()),
        }
    }

    /// How many keys the set holds now.
    pub(crate) fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Ask for an early refresh (rate-limited by `min_refresh`).
    pub(crate) fn refresh_soon(&self) {
        if self.uri.is_some() {
            self.wake.notify_one();
        }
    }

    /// Run `f` with the key that verifies a token signed with `alg` and
    /// naming `kid`.
    pub(crate) fn with_key<R>(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        f: impl FnOnce(&VerifyKey) -> R,
    ) -> Result<R, KeyMiss> {
        let now = now_secs();
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
        let keys = self.keys.load();
        if let Some(kid) = kid {
            let Some(k) = keys.iter().find(|k| k.kid.as_deref() == Some(kid)) else {
                self.refresh_soon();
                return Err(KeyMiss::UnknownKid);
            };
            if !k.key.accepts(alg) {
                return Err(KeyMiss::AlgMismatch);
            }
            return Ok(f(&k.key));
        }
        let mut fitting = keys.iter().filter(|k| k.key.accepts(alg));
        match (fitting.next(), fitting.next()) {
            (Some(k), None) => Ok(f(&k.key)),
            (None, _) => {
                if keys.is_empty() {
                    self.refresh_soon();
                }
                Err(KeyMiss::NoKey)
            }
            (Some(_), Some(_)) => Err(KeyMiss::KidRequired),
        }
    }
}

/// An inline JWK set: parsed now, never refreshed.
pub(crate) fn inline(set: &Value) -> Result<Arc<JwksSource>, String> {
    let (keys, skipped) = parse_jwk_set(set)?;
    if keys.is_empty() {
        return Err(match skipped.first() {
            Some(why) => format!("no usable key ({why})"),
            None => "no keys".into(),
        });
    }
    Ok(Arc::new(JwksSource::new(None, 0, 0, keys)))
}

/// The name an inline set is shared under: a digest of its text.
pub(crate) fn inline_key(set: &Value) -> String {
    use sha2::{Digest, Sha256};
    format!("inline|{:x}", Sha256::digest(set.to_string().as_bytes()))
}

/// An inline JWK set on a consumer credential: the index keeps it as JSON,
/// so parsed sets are shared under [`inline_key`] and parsed once.
pub(crate) fn inline_shared(key: &str, set: &Value) -> Result<Arc<JwksSource>, String> {
    let (current, write_lock) = registry();
    if let Some(found) = current.load().get(key) {
        found.last_used.store(now_secs(), Ordering::Relaxed);
        return Ok(found.clone());
    }
    let source = inline(set)?;
    let _writer = write_lock.lock().unwrap_or_else(|p| p.into_inner());
    insert(current, key.to_string(), source.clone());
    Ok(source)
}

/// Add a source, dropping those nobody else holds and nobody used for a
/// long time. The caller holds the write lock.
fn insert(current: &ArcSwap<Registry>, key: String, source: Arc<JwksSource>) {
    let mut next: Registry = (**current.load()).clone();
    let idle_since = now_secs().saturating_sub(IDLE_DROP.as_secs());
    next.retain(|_, s| {
        Arc::strong_count(s) > 1 || s.last_used.load(Ordering::Relaxed) > idle_since
    });
    next.insert(key, source);
    current.store(Arc::new(next));
}

/// Check a `jwks_uri`: `http` or `https` with a host.
pub(crate) fn check_uri(uri: &str) -> Result<http::Uri, String> {
    let parsed: http::Uri = uri.parse().map_err(|_| "not a valid URI".to_string())?;
    match parsed.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must be an http or https URI".into()),
    }
    if parsed.host().is_none_or_empty() {
        return Err("must name a host".into());
    }
    Ok(parsed)
}

trait EmptyHost {
    fn is_none_or_empty(&self) -> bool;
}

impl EmptyHost for Option<&str> {
    fn is_none_or_empty(&self) -> bool {
        !matches!(self, Some(h) if !h.is_empty())
    }
}

type Registry = HashMap<String, Arc<JwksSource>>;

fn registry() -> &'static (ArcSwap<Registry>, Mutex<()>) {
    static REGISTRY: OnceLock<(ArcSwap<Registry>, Mutex<()>)> = OnceLock::new();
    REGISTRY.get_or_init(|| (ArcSwap::from_pointee(HashMap::new()), Mutex::new(())))
}

fn registry_key(uri: &str, min: u64, max: u64) -> String {
    format!("{min}|{max}|{uri}")
}

/// The shared source for `uri` with these refresh bounds, created (and its
/// first fetch started) when new. `uri` must have passed [`check_uri`].
pub(crate) fn remote(uri: &str, min: u64, max: u64) -> Result<Arc<JwksSource>, String> {
    let key = registry_key(uri, min, max);
    let (current, write_lock) = registry();
    if let Some(found) = current.load().get(&key) {
        found.last_used.store(now_secs(), Ordering::Relaxed);
        return Ok(found.clone());
    }
    let parsed = check_uri(uri)?;
    let _writer = write_lock.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = current.load().get(&key) {
        return Ok(found.clone());
    }
    let source = Arc::new(JwksSource::new(Some(parsed), min, max, Vec::new()));
    insert(current, key, source.clone());
    spawn_background(refresher(Arc::downgrade(&source), source.wake.clone()));
    Ok(source)
}

/// Keep `weak`'s keys fresh while the source lives.
async fn refresher(weak: Weak<JwksSource>, wake: Arc<Notify>) {
    loop {
        let Some((uri, min, max)) = weak
            .upgrade()
            .and_then(|s| Some((s.uri.clone()?, s.min_refresh, s.max_refresh)))
        else {
            return;
        };
        let fetched_at = Instant::now();
        let result = fetch(&uri).await;
        let Some(source) = weak.upgrade() else {
            return;
        };
        let next = match result.and_then(|(body, max_age)| {
            let set: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            Ok((parse_jwk_set(&set)?, max_age))
        }) {
            Ok(((keys, skipped), max_age)) => {
                if !skipped.is_empty() {
                    tracing::debug!(uri = %uri, skipped = ?skipped, "JWKS keys skipped");
                }
                tracing::debug!(uri = %uri, keys = keys.len(), "JWKS refreshed");
                source.keys.store(Arc::new(keys));
                max_age.unwrap_or(max).clamp(min, max)
            }
            Err(error) => {
                tracing::warn!(uri = %uri, %error, "JWKS fetch failed; keeping the keys held");
                min
            }
        };
        drop(source);
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = wake.notified() => {
                // Early refresh, but never sooner than min after the last.
                let since = fetched_at.elapsed();
                if since < min {
                    tokio::time::sleep(min - since).await;
                }
            }
        }
    }
}

/// Run `fut` on the background thread that fetches JWK sets.
pub(crate) fn spawn_background(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("portcullis-jwks".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("JWKS runtime");
                let _ = tx.send(rt.handle().clone());
                rt.block_on(std::future::pending::<()>());
            })
            .expect("spawn the JWKS thread");
        rx.recv().expect("JWKS runtime handle")
    });
    handle.spawn(fut);
}

/// `Cache-Control: max-age=N`, if the answer carries one.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (k, v) = d.trim().split_once('=')?;
            k.eq_ignore_ascii_case("max-age")
                .then(|| v.trim_matches('"').parse().ok())
                .flatten()
        })
        .map(Duration::from_secs)
}

async fn fetch(uri: &http::Uri) -> Result<(Bytes, Option<Duration>), String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(uri))
        .await
        .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
}

async fn fetch_inner(uri: &http::Uri) -> Result<(Bytes, Option<Duration>), String> {
    let host = uri.host().ok_or("no host")?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().rsplit('@').next().unwrap_or(a.as_str()))
        .unwrap_or(host);
    let request = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(
            http::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .header(http::header::USER_AGENT, "portcullis-jwks")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let response = if https {
        let name = rustls::pki_types::ServerName::try_from(bare_host.to_string())
            .map_err(|_| "not a valid TLS server name")?;
        let tls = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    if response.status() != http::StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let max_age = max_age(response.headers());
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((body, max_age))
}

/// One request over a fresh HTTP/1.1 connection (plain or TLS), for the
/// identity-provider fetches of jwt-auth and openid-connect.
pub(crate) async fn send<T, B>(
    io: T,
    request: http::Request<B>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))
}

pub(crate) fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn ec_jwk(kid: &str) -> Value {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = ec.public_key_raw();
        let b = super::super::token::b64url_encode;
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b(&raw[1..33]), "y": b(&raw[33..])})
    }

    /// A one-request-per-connection HTTP server answering with whatever
    /// set is current, counting fetches.
    async fn serve(set: Arc<Mutex<Value>>, hits: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let body = set.lock().unwrap().to_string();
                hits.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/jwks.json")
    }

    async fn eventually(mut check: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn remote_set_is_fetched_and_an_unknown_kid_refreshes_it_at_most_once_per_min_interval() {
        let set = Arc::new(Mutex::new(serde_json::json!({"keys": [ec_jwk("k1")]})));
        let hits = Arc::new(AtomicUsize::new(0));
        let uri = serve(set.clone(), hits.clone()).await;
        let source = remote(&uri, 1, 3600).unwrap();
        assert!(eventually(|| source.len() == 1).await, "first fetch");
        // The same settings share one source.
        assert!(Arc::ptr_eq(&source, &remote(&uri, 1, 3600).unwrap()));

        *set.lock().unwrap() = serde_json::json!({"keys": [ec_jwk("k2")]});
        // A burst of unknown kids asks for a refresh many times...
        for _ in 0..50 {
            assert_eq!(
                source.with_key(Some("k2"), Algorithm::ES256, |_| ()),
                Err(KeyMiss::UnknownKid)
            );
        }
        let found = eventually(|| {
            source
                .with_key(Some("k2"), Algorithm::ES256, |_| ())
                .is_ok()
        })
        .await;
        assert!(found, "the rotated key is picked up");
        // ...but the server saw one fetch for it, not fifty.
        assert!(hits.load(Ordering::SeqCst) <= 3, "{hits:?}");
        assert_eq!(
            source.with_key(Some("k1"), Algorithm::ES256, |_| ()),
            Err(KeyMiss::UnknownKid),
            "the rotated-out key no longer verifies"
        );
    }

    #[test]
    fn keys_are_chosen_by_kid_and_algorithm() {
        let set = serde_json::json!({"keys": [ec_jwk("a"), ec_jwk("b")]});
        let source = inline(&set).unwrap();
        assert!(source.with_key(Some("a"), Algorithm::ES256, |_| ()).is_ok());
        assert_eq!(
            source.with_key(Some("a"), Algorithm::RS256, |_| ()),
            Err(KeyMiss::AlgMismatch)
        );
        assert_eq!(
            source.with_key(None, Algorithm::ES256, |_| ()),
            Err(KeyMiss::KidRequired)
        );
        assert_eq!(
            source.with_key(None, Algorithm::HS256, |_| ()),
            Err(KeyMiss::NoKey)
        );
        assert!(inline(&serde_json::json!({"keys": []})).is_err());
    }

    #[test]
    fn uris_are_checked() {
        assert!(check_uri("https://idp.example/jwks").is_ok());
        assert!(check_uri("ftp://idp.example/jwks").is_err());
        assert!(check_uri("/jwks").is_err());
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let mut h = http::HeaderMap::new();
        h.insert("cache-control", "public, max-age=120".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::from_secs(120)));
    }
}
