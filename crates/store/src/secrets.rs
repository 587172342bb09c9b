//! Which fields of a resource are secrets, and how they are hidden.
//!
//! The Admin API never hands a secret back, and the change history never
//! records one: both mask through [`mask`]. A client that reads a resource,
//! edits it and writes it back sends the mask where the secret was;
//! [`restore_masked`] puts the stored secret back so that round trip does not
//! replace a real key with `******`.

use portcullis_config::Kind;
use serde_json::Value;

/// What a secret reads as in every answer and change record.
pub const MASK: &str = "******";

/// Secret fields inside an auth plugin's config, by plugin name.
const PLUGIN_SECRETS: &[(&str, &[&str])] = &[
    ("key-auth", &["key"]),
    ("basic-auth", &["password"]),
    ("jwt-auth", &["secret", "private_key"]),
    ("hmac-auth", &["secret_key"]),
];

/// Replace every secret in `value` (a resource of `kind`) with [`MASK`].
pub fn mask(kind: Kind, value: &mut Value) {
    visit(kind, value, &mut |slot| mask_slot(slot));
}

/// A copy of `value` with its secrets masked.
pub fn masked(kind: Kind, value: &Value) -> Value {
    let mut v = value.clone();
    mask(kind, &mut v);
    v
}

fn mask_slot(slot: &mut Value) {
    match slot {
        Value::Null => {}
        Value::Array(items) => items.iter_mut().for_each(mask_slot),
        other => *other = Value::String(MASK.to_string()),
    }
}

/// Where `value` carries [`MASK`] in a secret field, put back the secret
/// stored in `previous` at the same place.
pub fn restore_masked(kind: Kind, value: &mut Value, previous: &Value) {
    // Walk `previous` alongside: collect its secrets by path first, since
    // the visitor only hands out one slot at a time.
    let mut stored = Vec::new();
    let mut prev = previous.clone();
    visit_paths(kind, &mut prev, &mut |path, slot| {
        stored.push((path, slot.clone()))
    });
    visit_paths(kind, value, &mut |path, slot| {
        let is_masked = match slot {
            Value::String(s) => s == MASK,
            Value::Array(a) => a.iter().any(|v| v.as_str() == Some(MASK)),
            _ => false,
        };
        if is_masked {
            if let Some((_, secret)) = stored.iter().find(|(p, _)| *p == path) {
                *slot = secret.clone();
            }
        }
    });
}

fn visit(kind: Kind, value: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    visit_paths(kind, value, &mut |_, slot| f(slot));
}

/// Call `f` on every secret slot of `value`, with a path naming it.
fn visit_paths(kind: Kind, value: &mut Value, f: &mut dyn FnMut(String, &mut Value)) {
    let Some(obj) = value.as_object_mut() else {
        return;
    };
    match kind {
        Kind::Consumers | Kind::Credentials => {
            if let Some(Value::Object(plugins)) = obj.get_mut("plugins") {
                for (plugin, fields) in PLUGIN_SECRETS {
                    if let Some(Value::Object(conf)) = plugins.get_mut(*plugin) {
                        for field in *fields {
                            if let Some(slot) = conf.get_mut(*field) {
                                f(format!("plugins.{plugin}.{field}"), slot);
                            }
                        }
                    }
                }
            }
        }
        Kind::Ssls => {
            for field in ["key", "keys"] {
                if let Some(slot) = obj.get_mut(field) {
                    f(field.to_string(), slot);
                }
            }
        }
        Kind::Upstreams => upstream_tls_key(obj, "", f),
        Kind::Routes | Kind::Services => {
            if let Some(Value::Object(up)) = obj.get_mut("upstream") {
                upstream_tls_key(up, "upstream.", f);
            }
        }
        _ => {}
    }
}

/// An upstream's client certificate key (mTLS to the upstream) is a secret too.
fn upstream_tls_key(
    up: &mut serde_json::Map<String, Value>,
    prefix: &str,
    f: &mut dyn FnMut(String, &mut Value),
) {
    if let Some(Value::Object(tls)) = up.get_mut("tls") {
        if let Some(slot) = tls.get_mut("client_key") {
            f(format!("{prefix}tls.client_key"), slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_auth_plugin_secrets_of_consumers_and_credentials() {
        let mut c = json!({"username": "u", "plugins": {
            "key-auth": {"key": "k"}, "basic-auth": {"username": "u", "password": "p"},
            "jwt-auth": {"key": "u", "secret": "s"}}});
        mask(Kind::Consumers, &mut c);
        assert_eq!(c["plugins"]["key-auth"]["key"], MASK);
        assert_eq!(c["plugins"]["basic-auth"]["password"], MASK);
        assert_eq!(c["plugins"]["basic-auth"]["username"], "u");
        assert_eq!(c["plugins"]["jwt-auth"]["secret"], MASK);
        assert_eq!(c["plugins"]["jwt-auth"]["key"], "u");
    }

    #[test]
    fn masks_every_ssl_key() {
        let mut s = json!({"cert": "c", "key": "k", "keys": ["a", "b"]});
        mask(Kind::Ssls, &mut s);
        assert_eq!(s, json!({"cert": "c", "key": MASK, "keys": [MASK, MASK]}));
    }

    #[test]
    fn a_masked_secret_written_back_keeps_the_stored_one() {
        let stored = json!({"username": "u", "plugins": {"key-auth": {"key": "real"}}});
        let mut sent = masked(Kind::Consumers, &stored);
        sent["desc"] = json!("edited");
        restore_masked(Kind::Consumers, &mut sent, &stored);
        assert_eq!(sent["plugins"]["key-auth"]["key"], "real");
        assert_eq!(sent["desc"], "edited");
    }

    #[test]
    fn a_new_secret_is_not_replaced_by_the_stored_one() {
        let stored = json!({"username": "u", "plugins": {"key-auth": {"key": "old"}}});
        let mut sent = json!({"username": "u", "plugins": {"key-auth": {"key": "new"}}});
        restore_masked(Kind::Consumers, &mut sent, &stored);
        assert_eq!(sent["plugins"]["key-auth"]["key"], "new");
    }
}
