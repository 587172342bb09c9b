//! mtls-auth: attribute a request to the consumer whose credential names
//! the client certificate verified during the TLS handshake (portcullis;
//! APISIX cannot map a certificate to a consumer).
//!
//! The handshake (crates/proxy/src/tls.rs) has already verified the chain
//! against the SSL resource's `client.ca`; the listener puts a
//! [`PeerCertificate`] into the request's extensions, which a client cannot
//! forge. A consumer credential names the certificate by one of:
//!
//! - `fingerprint_sha256`: the SHA-256 of the certificate's DER (pins one
//!   certificate; colons and case do not matter);
//! - `spiffe_id`: a `spiffe://` URI SAN;
//! - `dns_name`: a DNS SAN (case-insensitive);
//! - `subject`: the subject distinguished name, as `CN=svc, O=Example`, in
//!   the certificate's order.
//!
//! and the certificate's identities are tried in that order. The request's
//! host must be the name the client asked for in the handshake (SNI), so a
//! certificate verified for one host's CA is not carried to another.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode};
use portcullis_core::{ConfigError, Decision, Flow, Phase, Plugin, Rejection, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::consumers::CredentialConf;
use crate::context::{parse_conf, BuildContext};
use crate::registry::PluginSpec;

pub const NAME: &str = "mtls-auth";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Authenticate,
    priority: 2530,
    enforcing: true,
    build,
    consumer_conf: Some(consumer_conf),
    schema,
};

const MISSING: &str = "Missing client certificate";
const INVALID: &str = "Invalid client certificate";
const WRONG_HOST: &str = "Client certificate was not verified for this host";

/// The client certificate the TLS listener verified, with the identities
/// mtls-auth matches on, parsed once per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The server name the client asked for (SNI), lower-cased.
    pub sni: Option<String>,
    /// URI SANs starting with `spiffe://`.
    pub spiffe_ids: Vec<String>,
    /// DNS SANs, lower-cased.
    pub dns_names: Vec<String>,
    /// Subject DN, normalised by [`normalize_subject`].
    pub subject: String,
    /// Lower-case hex SHA-256 of the certificate's DER.
    pub fingerprint_sha256: String,
}

impl PeerCertificate {
    /// Read the identities of a DER certificate. `None` when it does not
    /// parse (the handshake would have refused it first).
    pub fn from_der(der: &[u8], sni: Option<&str>) -> Option<PeerCertificate> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut out = PeerCertificate {
            sni: sni.map(str::to_ascii_lowercase),
            subject: normalize_subject(&cert.subject().to_string()),
            fingerprint_sha256: hex(&Sha256::digest(der)),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) if u.starts_with("spiffe://") => {
                        out.spiffe_ids.push(u.to_string())
                    }
                    GeneralName::DNSName(d) => out.dns_names.push(d.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
        Some(out)
    }

    /// Lookup keys in the order they are tried, each with the identity it
    /// names.
    fn candidates(&self) -> impl Iterator<Item = (String, &str)> {
        let fp = std::iter::once((
            format!("sha256:{}", self.fingerprint_sha256),
            self.fingerprint_sha256.as_str(),
        ));
        let spiffe = self
            .spiffe_ids
            .iter()
            .map(|s| (format!("spiffe:{s}"), s.as_str()));
        let dns = self
            .dns_names
            .iter()
            .map(|d| (format!("dns:{d}"), d.as_str()));
        let subject = (!self.subject.is_empty())
            .then(|| (format!("subject:{}", self.subject), self.subject.as_str()));
        fp.chain(spiffe).chain(dns).chain(subject)
    }
}

/// `CN=a,  O=b` and `CN=a, O=b` alike: parts trimmed, joined by `, `; the
/// attribute names upper-cased.
pub fn normalize_subject(s: &str) -> String {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => format!("{}={}", k.trim().to_ascii_uppercase(), v.trim()),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "forward_header": {"type": "string", "minLength": 1}
        },
        "additionalProperties": false
    })
}

/// A credential names exactly one identity of a certificate.
fn consumer_conf(conf: &Value) -> Result<CredentialConf, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cred {
        spiffe_id: Option<String>,
        dns_name: Option<String>,
        subject: Option<String>,
        fingerprint_sha256: Option<String>,
    }
    let c: Cred = parse_conf(conf)?;
    let mut keys = Vec::new();
    if let Some(id) = c.spiffe_id {
        if !id.starts_with("spiffe://") || id.len() <= "spiffe://".len() {
            return Err(ConfigError::new("spiffe_id", "must be a spiffe:// URI"));
        }
        keys.push(format!("spiffe:{id}"));
    }
    if let Some(d) = c.dns_name {
        if d.is_empty() {
            return Err(ConfigError::new("dns_name", "must not be empty"));
        }
        keys.push(format!("dns:{}", d.to_ascii_lowercase()));
    }
    if let Some(s) = c.subject {
        let s = normalize_subject(&s);
        if s.is_empty() {
            return Err(ConfigError::new("subject", "must not be empty"));
        }
        keys.push(format!("subject:{s}"));
    }
    if let Some(f) = c.fingerprint_sha256 {
        let clean: String = f
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        if clean.len() != 64 || !clean.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::new(
                "fingerprint_sha256",
                "must be 64 hex digits (colons allowed)",
            ));
        }
        keys.push(format!("sha256:{clean}"));
    }
    match keys.len() {
        1 => Ok(CredentialConf {
            lookup_key: keys.remove(0),
            conf: json!({}),
        }),
        0 => Err(ConfigError::new(
            "",
            "one of spiffe_id, dns_name, subject, fingerprint_sha256 is required",
        )),
        _ => Err(ConfigError::new(
            "",
            "only one of spiffe_id, dns_name, subject, fingerprint_sha256 per credential",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    forward_header: Option<String>,
}

struct MtlsAuth {
    forward_header: Option<HeaderName>,
}

fn build(conf: &Value, _ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let conf: Conf = parse_conf(conf)?;
    let forward_header = match conf.forward_header {
        None => None,
        Some(h) => Some(
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| ConfigError::new("forward_header", "not a valid header name"))?,
        ),
    };
    Ok(Arc::new(MtlsAuth { forward_header }))
}

impl MtlsAuth {
    fn reject(&self, req: &mut RequestState, message: &'static str, reason: &'static str) -> Flow {
        req.decisions.push(Decision::reject(NAME, reason));
        Flow::Respond(Rejection::message(StatusCode::UNAUTHORIZED, message))
    }
}

impl Plugin for MtlsAuth {
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
        // Whatever the client sent under the forwarded name never passes.
        if let Some(h) = &self.forward_header {
            req.head.headers.remove(h);
        }
        let Some(peer) = req.head.extensions.get::<Arc<PeerCertificate>>().cloned() else {
            return self.reject(req, MISSING, "no verified client certificate");
        };
        if let (Some(sni), Some(host)) = (peer.sni.as_deref(), req.host()) {
            if !host.eq_ignore_ascii_case(sni) {
                return self.reject(req, WRONG_HOST, "host differs from the TLS server name");
            }
        }
        let found = peer.candidates().find_map(|(key, identity)| {
            req.consumers
                .lookup(NAME, &key)
                .map(|c| (c.consumer.clone(), c.credential_id.clone(), identity))
        });
        let Some((consumer, credential_id, identity)) = found else {
            return self.reject(req, INVALID, "client certificate matches no consumer");
        };
        if let Some(h) = &self.forward_header {
            if let Ok(v) = HeaderValue::from_str(identity) {
                req.head.headers.insert(h.clone(), v);
            }
        }
        crate::auth_common::attach_identity(req, NAME, consumer, credential_id);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::{AddCredentials, ConsumerIndex, CredentialSource};
    use portcullis_core::Consumer;

    fn cert() -> (Vec<u8>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["svc-a.internal".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ns/prod/sa/svc-a".try_into().unwrap(),
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "svc-a");
        let c = params.self_signed(&key).unwrap();
        let der = c.der().to_vec();
        (der.clone(), hex(&Sha256::digest(&der)))
    }

    fn index(creds: &[(&str, Value)]) -> Arc<ConsumerIndex> {
        let mut index = ConsumerIndex::default();
        for (name, conf) in creds {
            let consumer = Arc::new(Consumer {
                username: Arc::from(*name),
                group_id: None,
                labels: Default::default(),
            });
            index.add_consumer(consumer.clone());
            let plugins = [(NAME.to_string(), conf.clone())].into_iter().collect();
            index
                .add(CredentialSource {
                    consumer,
                    credential_id: None,
                    plugins: &plugins,
                })
                .unwrap();
        }
        Arc::new(index)
    }

    fn request(peer: Option<PeerCertificate>, index: Arc<ConsumerIndex>) -> RequestState {
        let (mut head, ()) = http::Request::builder()
            .uri("/")
            .header("host", "api.example.com")
            .header("x-client-identity", "forged")
            .body(())
            .unwrap()
            .into_parts();
        if let Some(p) = peer {
            head.extensions.insert(Arc::new(p));
        }
        let mut st = RequestState::new(head, "127.0.0.1:1".parse().unwrap(), "https", 443);
        st.consumers = index;
        st
    }

    fn plugin() -> MtlsAuth {
        MtlsAuth {
            forward_header: Some(HeaderName::from_static("x-client-identity")),
        }
    }

    #[test]
    fn certificate_identities_are_read_from_the_sans_subject_and_digest() {
        let (der, fp) = cert();
        let p = PeerCertificate::from_der(&der, Some("API.example.com")).unwrap();
        assert_eq!(p.spiffe_ids, ["spiffe://example.org/ns/prod/sa/svc-a"]);
        assert_eq!(p.dns_names, ["svc-a.internal"]);
        assert_eq!(p.subject, "CN=svc-a");
        assert_eq!(p.fingerprint_sha256, fp);
        assert_eq!(p.sni.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn each_kind_of_credential_maps_the_certificate_to_its_consumer() {
        let (der, fp) = cert();
        let peer = PeerCertificate::from_der(&der, Some("api.example.com")).unwrap();
        for (conf, forwarded) in [
            (
                json!({"spiffe_id": "spiffe://example.org/ns/prod/sa/svc-a"}),
                "spiffe://example.org/ns/prod/sa/svc-a",
            ),
            (json!({"dns_name": "SVC-A.internal"}), "svc-a.internal"),
            (json!({"subject": "cn=svc-a"}), "CN=svc-a"),
            (json!({"fingerprint_sha256": fp.to_uppercase()}), &fp),
        ] {
            let mut st = request(Some(peer.clone()), index(&[("svc-a", conf.clone())]));
            assert!(
                matches!(plugin().on_request(&mut st), Flow::Continue),
                "{conf}"
            );
            assert_eq!(st.consumer_name(), Some("svc-a"));
            assert_eq!(st.header_str("x-client-identity"), Some(forwarded));
        }
    }

    #[test]
    fn no_certificate_an_unknown_one_or_another_host_is_401() {
        let (der, _) = cert();
        let peer = PeerCertificate::from_der(&der, Some("api.example.com")).unwrap();
        let idx = index(&[("other", json!({"dns_name": "svc-b.internal"}))]);
        for (peer, message) in [
            (None, MISSING),
            (Some(peer.clone()), INVALID),
            (
                Some(PeerCertificate {
                    sni: Some("other.example.com".into()),
                    ..peer
                }),
                WRONG_HOST,
            ),
        ] {
            let mut st = request(peer, idx.clone());
            let Flow::Respond(r) = plugin().on_request(&mut st) else {
                panic!("expected a rejection")
            };
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            assert_eq!(
                serde_json::from_slice::<Value>(&r.body).unwrap(),
                json!({ "message": message })
            );
            assert!(
                st.header_str("x-client-identity").is_none(),
                "forged header removed"
            );
        }
    }

    #[test]
    fn credentials_name_exactly_one_identity() {
        assert!(consumer_conf(&json!({})).is_err());
        assert!(consumer_conf(&json!({"dns_name": "a", "subject": "CN=a"})).is_err());
        assert!(consumer_conf(&json!({"spiffe_id": "https://x"})).is_err());
        assert!(consumer_conf(&json!({"fingerprint_sha256": "abc"})).is_err());
        assert_eq!(
            consumer_conf(&json!({"spiffe_id": "spiffe://td/x"}))
                .unwrap()
                .lookup_key,
            "spiffe:spiffe://td/x"
        );
    }
}
