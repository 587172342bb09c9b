//! Verification keys and the algorithms each may be used with.
//!
//! Every key has a family (HMAC, RSA, P-256, P-384, Ed25519) and, when its
//! configuration says so, one pinned algorithm. A token's `alg` must fit
//! both before its signature is checked, so `none` (in any casing) never
//! verifies, an RSA public key is never used as an HMAC secret, and a key
//! published for RS256 does not verify a PS256 token.
//!
//! Signatures are checked with `jsonwebtoken::crypto::verify` (ring inside).
//! Public keys are parsed here, once, from PEM (SPKI `PUBLIC KEY` or PKCS#1
//! `RSA PUBLIC KEY`) or from a JWK, into the raw form ring verifies with.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::token::Token;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Family::Hmac => "hmac",
            Family::Rsa => "rsa",
            Family::P256 => "p256",
            Family::P384 => "p384",
            Family::Ed25519 => "ed25519",
        }
    }

    pub(crate) fn from_str(s: &str) -> Option<Family> {
        Some(match s {
            "hmac" => Family::Hmac,
            "rsa" => Family::Rsa,
            "p256" => Family::P256,
            "p384" => Family::P384,
            "ed25519" => Family::Ed25519,
            _ => return None,
        })
    }

    /// The family an algorithm's key must be of.
    pub(crate) fn of(alg: Algorithm) -> Family {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Family::Rsa,
            Algorithm::ES256 => Family::P256,
            Algorithm::ES384 => Family::P384,
            Algorithm::EdDSA => Family::Ed25519,
        }
    }
}

/// The algorithms portcullis verifies, by their JOSE names (case matters:
/// `none`, `None` and `NONE` are not among them).
pub(crate) fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// A key ready to verify, and what it may verify.
pub(crate) struct VerifyKey {
    family: Family,
    /// When set, the only algorithm this key verifies.
    pinned: Option<Algorithm>,
    key: DecodingKey,
}

impl VerifyKey {
    pub(crate) fn hmac(secret: &[u8], alg: Algorithm) -> VerifyKey {
        VerifyKey {
            family: Family::Hmac,
            pinned: Some(alg),
            key: DecodingKey::from_secret(secret),
        }
    }

    /// A public key in the raw form [`parse_public_pem`] returns.
    pub(crate) fn public(family: Family, raw: &[u8], pinned: Option<Algorithm>) -> VerifyKey {
        let key = match family {
            Family::Rsa => DecodingKey::from_rsa_der(raw),
            Family::P256 | Family::P384 => DecodingKey::from_ec_der(raw),
            // from_ed_der takes the raw 32-byte key, as ring does.
            Family::Ed25519 | Family::Hmac => DecodingKey::from_ed_der(raw),
        };
        VerifyKey {
            family,
            pinned,
            key,
        }
    }

    #[cfg(test)]
    pub(crate) fn family(&self) -> Family {
        self.family
    }

    pub(crate) fn pinned(&self) -> Option<Algorithm> {
        self.pinned
    }

    /// Whether a token signed with `alg` may be checked with this key.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        Family::of(alg) == self.family && !matches!(self.pinned, Some(p) if p != alg)
    }

    /// Check the token's signature with `alg`, which the caller has already
    /// parsed from the token header. Never panics: an algorithm that does
    /// not fit the key is a failed verification.
    pub(crate) fn verify(&self, token: &Token<'_>, alg: Algorithm) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        jsonwebtoken::crypto::verify(
            token.signature,
            token.signing_input.as_bytes(),
            &self.key,
            alg,
        )
        .unwrap_or(false)
    }
}

// ---- PEM and DER ---------------------------------------------------------

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The body of a PEM block and its label.
fn pem_body(pem: &str) -> Option<(String, Vec<u8>)> {
    let start = pem.find("-----BEGIN ")?;
    let after = &pem[start + 11..];
    let label_end = after.find("-----")?;
    let label = after[..label_end].to_string();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body_end = after.find(&end_marker)?;
    let b64: String = after
        .get(body_start..body_end)?
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label, der))
}

/// An RSA public key in PKCS#1 form: SEQUENCE { n INTEGER, e INTEGER },
/// with a modulus of at least 2048 bits.
fn check_pkcs1(der_bytes: &[u8]) -> Result<(), String> {
    let bad = || "not a valid RSA public key".to_string();
    let (tag, seq, rest) = der(der_bytes).ok_or_else(bad)?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(bad());
    }
    let (tag, n, seq) = der(seq).ok_or_else(bad)?;
    let (tag2, _e, rest) = der(seq).ok_or_else(bad)?;
    if tag != 0x02 || tag2 != 0x02 || !rest.is_empty() {
        return Err(bad());
    }
    let n = n.strip_prefix(&[0]).unwrap_or(n);
    if n.len() < 256 {
        return Err("RSA keys shorter than 2048 bits are not accepted".into());
    }
    Ok(())
}

/// Parse a PEM public key into its family and the raw bytes ring verifies
/// with (PKCS#1 for RSA, the uncompressed point for EC, the 32-byte key for
/// Ed25519).
pub(crate) fn parse_public_pem(pem: &str) -> Result<(Family, Vec<u8>), String> {
    let (label, body) = pem_body(pem).ok_or("not a PEM block")?;
    match label.as_str() {
        "RSA PUBLIC KEY" => {
            check_pkcs1(&body)?;
            Ok((Family::Rsa, body))
        }
        "PUBLIC KEY" => {
            let bad = || "not a valid SubjectPublicKeyInfo".to_string();
            let (tag, spki, rest) = der(&body).ok_or_else(bad)?;
            if tag != 0x30 || !rest.is_empty() {
                return Err(bad());
            }
            let (tag, alg_id, spki) = der(spki).ok_or_else(bad)?;
            let (bit_tag, bits, rest) = der(spki).ok_or_else(bad)?;
            if tag != 0x30 || bit_tag != 0x03 || !rest.is_empty() {
                return Err(bad());
            }
            let Some((&0, key)) = bits.split_first() else {
                return Err(bad());
            };
            let (oid_tag, oid, params) = der(alg_id).ok_or_else(bad)?;
            if oid_tag != 0x06 {
                return Err(bad());
            }
            let family = if oid == OID_RSA {
                check_pkcs1(key)?;
                Family::Rsa
            } else if oid == OID_EC {
                let (tag, curve, _) = der(params).ok_or_else(bad)?;
                let (family, len) = match (tag, curve) {
                    (0x06, c) if c == OID_P256 => (Family::P256, 65),
                    (0x06, c) if c == OID_P384 => (Family::P384, 97),
                    _ => return Err("only the P-256 and P-384 curves are supported".into()),
                };
                if key.len() != len || key[0] != 0x04 {
                    return Err(bad());
                }
                family
            } else if oid == OID_ED25519 {
                if key.len() != 32 {
                    return Err(bad());
                }
                Family::Ed25519
            } else {
                return Err("unsupported public key type".into());
            };
            Ok((family, key.to_vec()))
        }
        other => Err(format!("expected a PUBLIC KEY PEM block, got {other}")),
    }
}

// ---- JWK -------------------------------------------------------------------

/// The most keys one JWK set may hold.
pub(crate) const MAX_JWKS_KEYS: usize = 64;

/// A verification key from a JWK set.
pub(crate) struct JwkKey {
    pub kid: Option<String>,
    pub key: VerifyKey,
}

fn b64url_field(jwk: &Value, name: &str) -> Option<Vec<u8>> {
    let s = jwk.get(name)?.as_str()?;
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
    .decode(s)
    .ok()
}

/// One JWK → a verification key, or why it was skipped. Symmetric (`oct`)
/// keys are never taken from a JWK set: HMAC secrets belong in `secret`.
pub(crate) fn parse_jwk(jwk: &Value) -> Result<JwkKey, String> {
    if jwk.get("use").is_some_and(|u| u != "sig") {
        return Err("not a signing key (use)".into());
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o == "verify"));
        if !verifies {
            return Err("not a verification key (key_ops)".into());
        }
    }
    let kid = match jwk.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("kid is not a string".into()),
    };
    let pinned = match jwk.get("alg") {
        None | Some(Value::Null) => None,
        Some(a) => Some(a.as_str().and_then(parse_alg).ok_or("unsupported alg")?),
    };
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
    let (family, key) = match kty {
        "RSA" => {
            let n = b64url_field(jwk, "n").ok_or("bad n")?;
            let e = b64url_field(jwk, "e").ok_or("bad e")?;
            let n_len = n.iter().skip_while(|b| **b == 0).count();
            if n_len < 256 {
                return Err("RSA keys shorter than 2048 bits are not accepted".into());
            }
            if e.is_empty() || e.len() > 8 {
                return Err("bad e".into());
            }
            (Family::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let (family, len) = match crv {
                "P-256" => (Family::P256, 32),
                "P-384" => (Family::P384, 48),
                _ => return Err("unsupported curve".into()),
            };
            let x = b64url_field(jwk, "x").ok_or("bad x")?;
            let y = b64url_field(jwk, "y").ok_or("bad y")?;
            if x.len() != len || y.len() != len {
                return Err("bad point".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (family, DecodingKey::from_ec_der(&point))
        }
        "OKP" if crv == "Ed25519" => {
            let x = b64url_field(jwk, "x").ok_or("bad x")?;
            if x.len() != 32 {
                return Err("bad x".into());
            }
            (Family::Ed25519, DecodingKey::from_ed_der(&x))
        }
        "oct" => return Err("symmetric keys are not taken from a JWK set".into()),
        _ => return Err("unsupported key type".into()),
    };
    if pinned.is_some_and(|a| Family::of(a) != family) {
        return Err("alg does not fit the key type".into());
    }
    Ok(JwkKey {
        kid,
        key: VerifyKey {
            family,
            pinned,
            key,
        },
    })
}

/// A JWK set (`{"keys": [...]}`) → its usable keys. Keys portcullis cannot
/// use are skipped (and named in the returned notes), so one exotic key
/// does not hide the others.
pub(crate) fn parse_jwk_set(set: &Value) -> Result<(Vec<JwkKey>, Vec<String>), String> {
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWK set is an object with a \"keys\" array")?;
    if keys.len() > MAX_JWKS_KEYS {
        return Err(format!("more than {MAX_JWKS_KEYS} keys"));
    }
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        match parse_jwk(jwk) {
            Ok(k) => usable.push(k),
            Err(why) => skipped.push(format!("keys[{i}]: {why}")),
        }
    }
    Ok((usable, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_and_odd_casings_are_not_algorithms() {
        for name in ["none", "None", "NONE", "nOnE", "hs256", "ES512", ""] {
            assert!(parse_alg(name).is_none(), "{name}");
        }
        assert_eq!(parse_alg("EdDSA"), Some(Algorithm::EdDSA));
    }

    #[test]
    fn a_key_accepts_only_its_family_and_pinned_algorithm() {
        let k = VerifyKey::hmac(b"secret", Algorithm::HS256);
        assert!(k.accepts(Algorithm::HS256));
        assert!(!k.accepts(Algorithm::HS512));
        assert!(!k.accepts(Algorithm::RS256));
        let (family, raw) = parse_public_pem(super::super::test_keys::RSA_PUBLIC_PEM).unwrap();
        let k = VerifyKey::public(family, &raw, None);
        assert!(k.accepts(Algorithm::RS256) && k.accepts(Algorithm::PS512));
        assert!(!k.accepts(Algorithm::HS256));
        assert!(!k.accepts(Algorithm::ES256));
    }

    #[test]
    fn pem_public_keys_of_each_family_are_read() {
        use super::super::test_keys;
        assert_eq!(
            parse_public_pem(test_keys::RSA_PUBLIC_PEM).unwrap().0,
            Family::Rsa
        );
        assert_eq!(
            parse_public_pem(test_keys::RSA_PKCS1_PUBLIC_PEM).unwrap().0,
            Family::Rsa
        );
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let (family, raw) = parse_public_pem(&ec.public_key_pem()).unwrap();
        assert_eq!(family, Family::P256);
        assert_eq!(raw, ec.public_key_raw());
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert_eq!(
            parse_public_pem(&ec.public_key_pem()).unwrap().0,
            Family::P384
        );
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(
            parse_public_pem(&ed.public_key_pem()).unwrap().0,
            Family::Ed25519
        );
        assert!(parse_public_pem("not pem").is_err());
        assert!(parse_public_pem(test_keys::RSA_PRIVATE_PEM).is_err());
    }

    #[test]
    fn jwk_sets_skip_keys_that_cannot_be_used() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = ec.public_key_raw();
        let b = |s: &[u8]| super::super::token::b64url_encode(s);
        let set = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": b(&raw[1..33]), "y": b(&raw[33..])},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": b(&raw[1..33]), "y": b(&raw[33..])},
            {"kty": "EC", "crv": "P-256", "kid": "rs", "alg": "RS256", "x": b(&raw[1..33]), "y": b(&raw[33..])},
            {"kty": "RSA", "kid": "short", "n": b(&[1u8; 128]), "e": "AQAB"}
        ]});
        let (keys, skipped) = parse_jwk_set(&set).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ec"));
        assert_eq!(keys[0].key.family(), Family::P256);
        assert_eq!(skipped.len(), 4);
        assert!(parse_jwk_set(&serde_json::json!({"keys": 1})).is_err());
    }
}
