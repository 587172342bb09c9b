//! Reading a compact JWS (`header.payload.signature`) without trusting it,
//! and checking its claims once its signature is known good.
//!
//! The header is read for `alg` and `kid` only. `jwk`, `jku`, `x5u`, `x5c`
//! and every other header parameter are ignored: keys come from the
//! gateway's configuration, never from the token. A `crit` header names
//! extensions the verifier must understand; portcullis understands none, so
//! a token carrying one is refused (RFC 7515 §4.1.11).

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Tokens longer than this are refused before any decoding.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;
const MAX_KID_LEN: usize = 256;

/// Why a token could not be read. The reason goes to the decision record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    TooLong,
    Segments,
    Base64,
    Json,
    Crit,
}

impl Malformed {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Malformed::TooLong => "token too long",
            Malformed::Segments => "token is not three segments",
            Malformed::Base64 => "token segment is not base64url",
            Malformed::Json => "token header or payload is not a JSON object",
            Malformed::Crit => "token has critical header extensions",
        }
    }
}

/// A parsed, not yet verified token.
#[derive(Debug)]
pub(crate) struct Token<'t> {
    /// `alg` exactly as the header spells it.
    pub alg: String,
    pub kid: Option<String>,
    pub payload: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'t str,
    /// The base64url signature as sent.
    pub signature: &'t str,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

pub(crate) fn parse(token: &str) -> Result<Token<'_>, Malformed> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Malformed::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed::Segments);
    };
    if h.is_empty() || p.is_empty() {
        return Err(Malformed::Segments);
    }
    let is_b64url = |seg: &str| {
        seg.trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !is_b64url(s) {
        return Err(Malformed::Base64);
    }
    let engine = b64url();
    let header = engine.decode(h).map_err(|_| Malformed::Base64)?;
    let payload = engine.decode(p).map_err(|_| Malformed::Base64)?;
    let header: Header = serde_json::from_slice(&header).map_err(|_| Malformed::Json)?;
    if header.crit.is_some() {
        return Err(Malformed::Crit);
    }
    if header.kid.as_ref().is_some_and(|k| k.len() > MAX_KID_LEN) {
        return Err(Malformed::Json);
    }
    let payload: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| Malformed::Json)?;
    Ok(Token {
        alg: header.alg,
        kid: header.kid,
        payload,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s.trim_end_matches('='),
    })
}

/// A claim check that failed. The reason goes to the decision record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimError {
    Expired,
    NotYetValid,
    NotANumber(&'static str),
    Missing(String),
    Issuer,
    Audience,
}

impl ClaimError {
    pub(crate) fn reason(&self) -> String {
        match self {
            ClaimError::Expired => "token expired".into(),
            ClaimError::NotYetValid => "token not yet valid".into(),
            ClaimError::NotANumber(c) => format!("claim {c} is not a number"),
            ClaimError::Missing(c) => format!("claim {c} is missing"),
            ClaimError::Issuer => "issuer not accepted".into(),
            ClaimError::Audience => "audience not accepted".into(),
        }
    }
}

/// What the claims must satisfy.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClaimPolicy {
    /// APISIX's `claims_to_verify`: listed time claims must be present.
    /// Whether listed or not, `exp` and `nbf` are checked when present.
    pub require_exp: bool,
    pub require_nbf: bool,
    /// Allowed clock skew, seconds (`lifetime_grace_period`).
    pub leeway: u64,
    /// When not empty, `iss` must be one of these.
    pub issuers: Vec<String>,
    /// When not empty, `aud` (a string or an array) must hold one of these.
    pub audiences: Vec<String>,
    /// Claims that must be present (and not null).
    pub required: Vec<String>,
}

impl ClaimPolicy {
    /// Every check: time claims, then the others.
    #[cfg(test)]
    pub(crate) fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<(), ClaimError> {
        self.check_time(claims, now)?;
        self.check_others(claims)
    }

    /// `exp` and `nbf`, with the leeway.
    pub(crate) fn check_time(
        &self,
        claims: &Map<String, Value>,
        now: u64,
    ) -> Result<(), ClaimError> {
        let time = |name: &'static str, required: bool| -> Result<Option<f64>, ClaimError> {
            match claims.get(name) {
                None | Some(Value::Null) if required => Err(ClaimError::Missing(name.into())),
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(_) => Err(ClaimError::NotANumber(name)),
            }
        };
        let now = now as f64;
        let leeway = self.leeway as f64;
        if let Some(exp) = time("exp", self.require_exp)? {
            // Valid while now < exp (+ leeway): RFC 7519 §4.1.4.
            if exp <= now - leeway {
                return Err(ClaimError::Expired);
            }
        }
        if let Some(nbf) = time("nbf", self.require_nbf)? {
            if nbf > now + leeway {
                return Err(ClaimError::NotYetValid);
            }
        }
        Ok(())
    }

    /// Issuer, audience and required claims.
    pub(crate) fn check_others(&self, claims: &Map<String, Value>) -> Result<(), ClaimError> {
        for name in &self.required {
            if matches!(claims.get(name), None | Some(Value::Null)) {
                return Err(ClaimError::Missing(name.clone()));
            }
        }
        if !self.issuers.is_empty() {
            let iss = claims.get("iss").and_then(Value::as_str);
            if !iss.is_some_and(|i| self.issuers.iter().any(|a| a == i)) {
                return Err(ClaimError::Issuer);
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |a: &Value| {
                a.as_str()
                    .is_some_and(|a| self.audiences.iter().any(|x| x == a))
            };
            let ok = match claims.get("aud") {
                Some(Value::Array(list)) => list.iter().any(accepted),
                Some(one) => accepted(one),
                None => false,
            };
            if !ok {
                return Err(ClaimError::Audience);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn token(header: Value, payload: Value) -> String {
        format!(
            "{}.{}.c2ln",
            b64url_encode(header.to_string().as_bytes()),
            b64url_encode(payload.to_string().as_bytes())
        )
    }

    #[test]
    fn a_well_formed_token_is_read() {
        let t = token(json!({"alg": "HS256", "kid": "k1"}), json!({"key": "a"}));
        let parsed = parse(&t).unwrap();
        assert_eq!(parsed.alg, "HS256");
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.payload["key"], "a");
        assert_eq!(parsed.signature, "c2ln");
        assert_eq!(parsed.signing_input.matches('.').count(), 1);
    }

    #[test]
    fn malformed_tokens_are_named() {
        let good = token(json!({"alg": "HS256"}), json!({}));
        assert_eq!(parse("a.b").unwrap_err(), Malformed::Segments);
        assert_eq!(parse("a.b.c.d").unwrap_err(), Malformed::Segments);
        assert_eq!(parse(".b.c").unwrap_err(), Malformed::Segments);
        assert_eq!(parse("%%%.e30.sig").unwrap_err(), Malformed::Base64);
        assert_eq!(
            parse(&format!("{good}!")).unwrap_err(),
            Malformed::Base64,
            "signature outside the base64url alphabet"
        );
        // Truncated in the middle of the header: not base64 or not JSON.
        assert!(parse(&good[..5]).is_err());
        let not_json = format!("{}.e30.sig", b64url_encode(b"{alg"));
        assert_eq!(parse(&not_json).unwrap_err(), Malformed::Json);
        let no_alg = token(json!({"typ": "JWT"}), json!({}));
        assert_eq!(parse(&no_alg).unwrap_err(), Malformed::Json);
        let array_payload = token(json!({"alg": "HS256"}), json!([1]));
        assert_eq!(parse(&array_payload).unwrap_err(), Malformed::Json);
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(parse(&long).unwrap_err(), Malformed::TooLong);
    }

    #[test]
    fn critical_header_extensions_are_refused() {
        let t = token(
            json!({"alg": "HS256", "crit": ["exp"], "exp": 1}),
            json!({}),
        );
        assert_eq!(parse(&t).unwrap_err(), Malformed::Crit);
    }

    #[test]
    fn duplicate_header_fields_are_refused() {
        let header = br#"{"alg":"HS256","alg":"none"}"#;
        let t = format!("{}.e30.sig", b64url_encode(header));
        assert_eq!(parse(&t).unwrap_err(), Malformed::Json);
    }

    #[test]
    fn exp_and_nbf_are_checked_with_leeway() {
        let p = ClaimPolicy::default();
        let now = 1_000;
        assert_eq!(p.check(json!({}).as_object().unwrap(), now), Ok(()));
        let c = json!({"exp": 1000}).as_object().unwrap().clone();
        assert_eq!(p.check(&c, now), Err(ClaimError::Expired));
        assert_eq!(p.check(&c, 999), Ok(()));
        let lenient = ClaimPolicy {
            leeway: 5,
            ..ClaimPolicy::default()
        };
        assert_eq!(lenient.check(&c, 1004), Ok(()));
        assert_eq!(lenient.check(&c, 1005), Err(ClaimError::Expired));
        let c = json!({"nbf": 1010}).as_object().unwrap().clone();
        assert_eq!(p.check(&c, now), Err(ClaimError::NotYetValid));
        assert_eq!(lenient.check(&c, 1005), Ok(()));
        let c = json!({"exp": "soon"}).as_object().unwrap().clone();
        assert_eq!(p.check(&c, now), Err(ClaimError::NotANumber("exp")));
    }

    #[test]
    fn listed_time_claims_are_required() {
        let p = ClaimPolicy {
            require_exp: true,
            ..ClaimPolicy::default()
        };
        assert_eq!(
            p.check(json!({}).as_object().unwrap(), 0),
            Err(ClaimError::Missing("exp".into()))
        );
    }

    #[test]
    fn issuer_audience_and_required_claims_are_checked() {
        let p = ClaimPolicy {
            issuers: vec!["https://idp".into()],
            audiences: vec!["orders".into()],
            required: vec!["sub".into()],
            ..ClaimPolicy::default()
        };
        let ok = json!({"iss": "https://idp", "aud": ["x", "orders"], "sub": "a"});
        assert_eq!(p.check(ok.as_object().unwrap(), 0), Ok(()));
        let c = json!({"iss": "https://evil", "aud": "orders", "sub": "a"});
        assert_eq!(p.check(c.as_object().unwrap(), 0), Err(ClaimError::Issuer));
        let c = json!({"iss": "https://idp", "aud": "billing", "sub": "a"});
        assert_eq!(
            p.check(c.as_object().unwrap(), 0),
            Err(ClaimError::Audience)
        );
        let c = json!({"iss": "https://idp", "aud": "orders"});
        assert_eq!(
            p.check(c.as_object().unwrap(), 0),
            Err(ClaimError::Missing("sub".into()))
        );
    }
}
