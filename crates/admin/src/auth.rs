//! Who may use the Admin API: the client address must be in `admin.allow`,
//! and the request must carry a configured key (`X-API-KEY` header or
//! `?api_key=`). A viewer key may only read.
//!
//! Keys are compared as SHA-256 digests in constant time, against every
//! configured key without stopping at a match, so neither the key's
//! content nor its length nor its position leaks through timing. Keys are
//! never logged; the key's name is what the change history records.

use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_config::settings::{AdminKey, AdminRole};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) struct Keys {
    keys: Vec<(String, [u8; 32], AdminRole)>,
}

/// Who is calling, once authenticated.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The key's name: what logs and the change history record.
    pub name: String,
}

/// Why a request was refused, in APISIX's `description` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NoKeysConfigured,
    Missing,
    Wrong,
    ViewerMayOnlyRead,
}

impl Refusal {
    pub fn description(self) -> &'static str {
        match self {
            Refusal::NoKeysConfigured => "no admin key is configured",
            Refusal::Missing => "missing apikey",
            Refusal::Wrong => "wrong apikey",
            Refusal::ViewerMayOnlyRead => "invalid method for role viewer",
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Keys {
    pub fn new(keys: &[AdminKey]) -> Keys {
        Keys {
            keys: keys
                .iter()
                // An empty key (an unset `${VAR:=}`) would let anyone in.
                .filter(|k| !k.key.is_empty())
                .map(|k| (k.name.clone(), digest(&k.key), k.role))
                .collect(),
        }
    }

    pub fn check(&self, presented: Option<&str>, is_read: bool) -> Result<Caller, Refusal> {
        if self.keys.is_empty() {
            return Err(Refusal::NoKeysConfigured);
        }
        let presented = presented.ok_or(Refusal::Missing)?;
        let wanted = digest(presented);
        let mut found: Option<&(String, [u8; 32], AdminRole)> = None;
        for entry in &self.keys {
            if bool::from(entry.1.ct_eq(&wanted)) && found.is_none() {
                found = Some(entry);
            }
        }
        let (name, _, role) = found.ok_or(Refusal::Wrong)?;
        if *role == AdminRole::Viewer && !is_read {
            return Err(Refusal::ViewerMayOnlyRead);
        }
        Ok(Caller { name: name.clone() })
    }
}

pub(crate) fn allowed(allow: &[IpNet], client: IpAddr) -> bool {
    // A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let client = match client {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    allow.iter().any(|net| net.contains(&client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(&[
            AdminKey {
                name: "ops".into(),
                key: "admin-secret".into(),
                role: AdminRole::Admin,
            },
            AdminKey {
                name: "dash".into(),
                key: "viewer-secret".into(),
                role: AdminRole::Viewer,
            },
        ])
    }

    #[test]
    fn a_configured_key_is_known_by_its_name() {
        assert_eq!(
            keys().check(Some("admin-secret"), false).unwrap().name,
            "ops"
        );
    }

    #[test]
    fn missing_and_wrong_keys_are_told_apart() {
        assert_eq!(keys().check(None, true).unwrap_err(), Refusal::Missing);
        assert_eq!(
            keys().check(Some("admin"), true).unwrap_err(),
            Refusal::Wrong
        );
    }

    #[test]
    fn a_viewer_may_read_but_not_write() {
        assert!(keys().check(Some("viewer-secret"), true).is_ok());
        assert_eq!(
            keys().check(Some("viewer-secret"), false).unwrap_err(),
            Refusal::ViewerMayOnlyRead
        );
    }

    #[test]
    fn without_keys_everything_is_refused() {
        let none = Keys::new(&[]);
        assert_eq!(
            none.check(Some("x"), true).unwrap_err(),
            Refusal::NoKeysConfigured
        );
    }

    #[test]
    fn mapped_v4_clients_match_v4_networks() {
        let allow = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(allowed(&allow, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!allowed(&allow, "10.0.0.1".parse().unwrap()));
    }
}
