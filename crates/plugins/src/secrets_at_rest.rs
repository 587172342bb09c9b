//! Credential secrets that can be kept as digests are turned into them
//! before anything is stored: an API key becomes `sha256:<hex>`, a
//! basic-auth password `hmac-sha256:<salt>:<digest>`. Both plugins accept
//! these forms in place of the secret, so a store (or an export of it) holds
//! nothing a thief could present. HMAC secrets of jwt-auth cannot be
//! digested (they are needed to verify) and are kept as written.

use serde_json::{Map, Value};

const KEY_DIGEST_PREFIX: &str = "sha256:";

/// Replace plain secrets in a consumer's or credential's `plugins` object by
/// their digests. Values already in digest form are left alone, so sealing
/// twice changes nothing.
pub fn seal_credentials(plugins: &mut Map<String, Value>) {
    if let Some(Value::String(key)) = plugins.get_mut("key-auth").and_then(|c| c.get_mut("key")) {
        if !key.starts_with(KEY_DIGEST_PREFIX) {
            *key = format!(
                "{KEY_DIGEST_PREFIX}{}",
                crate::key_auth::digest(key.as_bytes())
            );
        }
    }
    if let Some(Value::String(password)) = plugins
        .get_mut("basic-auth")
        .and_then(|c| c.get_mut("password"))
    {
        if !password.starts_with(crate::basic_auth::DIGEST_PREFIX) {
            *password = crate::basic_auth::digest_for_config(password);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plain_secrets_become_digests_the_plugins_accept() {
        let mut plugins = json!({
            "key-auth": {"key": "order-service-secret"},
            "basic-auth": {"username": "u", "password": "pw"}
        });
        seal_credentials(plugins.as_object_mut().unwrap());
        let key = plugins["key-auth"]["key"].as_str().unwrap();
        assert_eq!(
            key,
            format!(
                "sha256:{}",
                crate::key_auth::digest(b"order-service-secret")
            )
        );
        let password = plugins["basic-auth"]["password"].as_str().unwrap();
        assert!(password.starts_with("hmac-sha256:") && !password.contains("pw:"));
        let key_spec = crate::registry::plugin_spec("key-auth").unwrap();
        assert!((key_spec.consumer_conf.unwrap())(&plugins["key-auth"]).is_ok());
        let basic_spec = crate::registry::plugin_spec("basic-auth").unwrap();
        assert!((basic_spec.consumer_conf.unwrap())(&plugins["basic-auth"]).is_ok());
    }

    #[test]
    fn sealing_twice_changes_nothing() {
        let mut plugins =
            json!({"key-auth": {"key": "k"}, "basic-auth": {"username": "u", "password": "p"}});
        seal_credentials(plugins.as_object_mut().unwrap());
        let once = plugins.clone();
        seal_credentials(plugins.as_object_mut().unwrap());
        assert_eq!(plugins, once);
    }
}
