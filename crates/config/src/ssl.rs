//! `ssls` resources: certificates, keys, SNIs and client CAs, checked when a
//! snapshot is built so that a bad PEM is refused with the field named
//! (`ssls[0].key: ...`) and never reaches a handshake.
//!
//! The data plane (crates/proxy/src/tls.rs) parses the same resources with
//! [`parse`] once per changed resource, never per handshake.

use std::sync::Arc;

use portcullis_core::ConfigError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::model::Ssl;

/// An `ssls` resource ready for the TLS listener.
#[derive(Debug)]
pub struct ParsedSsl {
    /// Lower-cased SNIs: exact names and `*.suffix` wildcards.
    pub snis: Vec<String>,
    /// `cert`/`key`, then each `certs[i]`/`keys[i]` pair (an RSA and an
    /// ECDSA certificate for one name, say).
    pub keys: Vec<Arc<CertifiedKey>>,
    /// `client.ca`: when set, a client certificate issued under it is required.
    pub client: Option<ClientAuth>,
    /// TLS 1.2 allowed (`ssl_protocols`; both when empty).
    pub tls12: bool,
    pub tls13: bool,
}

#[derive(Debug)]
pub struct ClientAuth {
    pub roots: Arc<rustls::RootCertStore>,
    /// Intermediate certificates a client may present between its
    /// certificate and the CA (nginx's `ssl_verify_depth`).
    pub depth: u32,
}

/// The crypto provider every TLS listener uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Whether the resource is a server certificate the listener serves
/// (`type: client` resources hold certificates for upstream mTLS, and
/// `status: 0` disables a resource).
pub fn serves(ssl: &Ssl) -> bool {
    ssl.ssl_type.as_deref().unwrap_or("server") == "server" && ssl.status != Some(0)
}

fn certs(pem: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(ConfigError::new(
            field,
            "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)",
        )),
        Err(e) => Err(ConfigError::new(
            field,
            format!("invalid PEM certificate: {e}"),
        )),
    }
}

fn key(pem: &str, field: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        ConfigError::new(
            field,
            format!("invalid PEM private key (PKCS#8, PKCS#1 or SEC1 expected): {e}"),
        )
    })
}

fn pair(
    cert_pem: &str,
    key_pem: &str,
    cert_field: &str,
    key_field: &str,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let chain = certs(cert_pem, cert_field)?;
    let key = key(key_pem, key_field)?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                ConfigError::new(key_field, "the key does not match the certificate")
            }
            rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_) => {
                ConfigError::new(cert_field, format!("unusable certificate: {e}"))
            }
            other => ConfigError::new(key_field, format!("unusable private key: {other}")),
        })
}

/// An SNI as APISIX accepts it: a host name, or `*.` and a host name.
fn check_sni(sni: &str, field: &str) -> Result<String, ConfigError> {
    let lower = sni.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(lower)
    } else {
        Err(ConfigError::new(
            field,
            format!("\"{sni}\" is not a host name or a \"*.\" wildcard"),
        ))
    }
}

/// Check and parse one `ssls` resource. Errors name the field.
pub fn parse(ssl: &Ssl) -> Result<ParsedSsl, ConfigError> {
    if let Some(t) = ssl.ssl_type.as_deref() {
        if t != "server" && t != "client" {
            return Err(ConfigError::new(
                "type",
                format!("\"{t}\" is not one of \"server\", \"client\""),
            ));
        }
    }
    let (Some(cert), Some(key_pem)) = (ssl.cert.as_deref(), ssl.key.as_deref()) else {
        return Err(if ssl.cert.is_none() {
            ConfigError::new("cert", "required")
        } else {
            ConfigError::new("key", "required")
        });
    };
    let mut keys = vec![pair(cert, key_pem, "cert", "key")?];
    if ssl.certs.len() != ssl.keys.len() {
        return Err(ConfigError::new(
            "keys",
            "certs and keys must have the same number of items",
        ));
    }
    for (i, (c, k)) in ssl.certs.iter().zip(&ssl.keys).enumerate() {
        keys.push(pair(c, k, &format!("certs[{i}]"), &format!("keys[{i}]"))?);
    }

    let mut snis = Vec::new();
    if let Some(sni) = &ssl.sni {
        snis.push(check_sni(sni, "sni")?);
    }
    for (i, sni) in ssl.snis.iter().enumerate() {
        snis.push(check_sni(sni, &format!("snis[{i}]"))?);
    }
    if snis.is_empty() && serves(ssl) {
        return Err(ConfigError::new("snis", "required (or sni)"));
    }

    let client = match &ssl.client {
        None => None,
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(&c.ca, "client.ca")? {
                roots.add(cert).map_err(|e| {
                    ConfigError::new("client.ca", format!("unusable CA certificate: {e}"))
                })?;
            }
            // `skip_mtls_uri_regex` is accepted for APISIX compatibility
            // and not acted on: every URI requires the certificate, the
            // stricter reading (docs/tls.md).
            Some(ClientAuth {
                roots: Arc::new(roots),
                depth: c.depth,
            })
        }
    };

    let (mut tls12, mut tls13) = (ssl.ssl_protocols.is_empty(), ssl.ssl_protocols.is_empty());
    for (i, p) in ssl.ssl_protocols.iter().enumerate() {
        match p.as_str() {
            "TLSv1.2" => tls12 = true,
            "TLSv1.3" => tls13 = true,
            // Accepted for APISIX compatibility; rustls never negotiates them.
            "TLSv1" | "TLSv1.1" => {}
            other => {
                return Err(ConfigError::new(
                    format!("ssl_protocols[{i}]"),
                    format!("\"{other}\" is not one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"),
                ))
            }
        }
    }
    if !tls12 && !tls13 {
        return Err(ConfigError::new(
            "ssl_protocols",
            "portcullis speaks TLSv1.2 and TLSv1.3 only: list at least one of them",
        ));
    }
    Ok(ParsedSsl {
        snis,
        keys,
        client,
        tls12,
        tls13,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssl(value: serde_json::Value) -> Ssl {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn bad_pem_is_refused_with_the_field_named() {
        let e = parse(&ssl(serde_json::json!({
            "cert": "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            "key": "x", "snis": ["a.example"]
        })))
        .unwrap_err();
        assert_eq!(e.field, "cert");
        let e = parse(&ssl(
            serde_json::json!({"cert": "", "key": "", "snis": ["a"]}),
        ))
        .unwrap_err();
        assert_eq!(e.field, "cert");
    }

    #[test]
    fn snis_are_host_names_or_leading_wildcards() {
        assert_eq!(
            check_sni("*.Example.com", "snis[0]").unwrap(),
            "*.example.com"
        );
        assert!(check_sni("a.*.example.com", "snis[0]").is_err());
        assert!(check_sni("", "sni").is_err());
    }
}
