//! APISIX's key layout: `{prefix}/{collection}/{id}` with a JSON value, and
//! a consumer's credentials under `{prefix}/consumers/{user}/credentials/{id}`.
//! Everything else under the prefix (`gen_id`, `data_plane/...`, the empty
//! `init_dir` markers APISIX's CLI writes at `{prefix}/routes/`, collections
//! portcullis does not know such as `stream_routes`) is not a resource and is
//! left alone.

use portcullis_config::Kind;

/// A prefix as keys use it: leading `/`, no trailing `/`. `""` and `/`
/// give the empty prefix (keys `/routes/1`).
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// The range every resource key falls in: `{prefix}/`.
pub fn range_prefix(prefix: &str) -> String {
    format!("{prefix}/")
}

/// The key a resource is stored at. Credential ids are `user/credential`.
pub fn key_of(prefix: &str, kind: Kind, id: &str) -> String {
    match (kind, id.split_once('/')) {
        (Kind::Credentials, Some((user, cred))) => {
            format!("{prefix}/consumers/{user}/credentials/{cred}")
        }
        _ => format!("{prefix}/{}/{id}", kind.as_str()),
    }
}

/// Where a consumer's credentials live, to delete them with it.
pub fn credentials_prefix(prefix: &str, user: &str) -> String {
    format!("{prefix}/consumers/{user}/credentials/")
}

/// APISIX's id generator key: a put to it makes a new revision, which POST
/// turns into a 20-digit id.
pub fn gen_id_key(prefix: &str) -> String {
    format!("{prefix}/gen_id")
}

/// The resource a key holds, or `None` for anything that is not one.
pub fn parse_key(prefix: &str, key: &str) -> Option<(Kind, String)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let (collection, id) = rest.split_once('/')?;
    if id.is_empty() {
        return None;
    }
    if collection == "consumers" {
        return match id.split_once('/') {
            None => Some((Kind::Consumers, id.to_string())),
            Some((user, tail)) => {
                let cred = tail.strip_prefix("credentials/")?;
                if user.is_empty() || cred.is_empty() || cred.contains('/') {
                    return None;
                }
                Some((Kind::Credentials, format!("{user}/{cred}")))
            }
        };
    }
    let kind = Kind::parse(collection).filter(|k| *k != Kind::Credentials)?;
    if id.contains('/') {
        return None;
    }
    Some((kind, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_apisix_keys_and_read_back() {
        let p = normalize_prefix("/apisix/");
        assert_eq!(p, "/apisix");
        for (kind, id, key) in [
            (Kind::Routes, "1", "/apisix/routes/1"),
            (Kind::ConsumerGroups, "g", "/apisix/consumer_groups/g"),
            (Kind::Consumers, "jack", "/apisix/consumers/jack"),
            (
                Kind::Credentials,
                "jack/c1",
                "/apisix/consumers/jack/credentials/c1",
            ),
            (
                Kind::PluginMetadata,
                "http-logger",
                "/apisix/plugin_metadata/http-logger",
            ),
        ] {
            assert_eq!(key_of(&p, kind, id), key);
            assert_eq!(parse_key(&p, key), Some((kind, id.to_string())));
        }
    }

    #[test]
    fn what_is_not_a_resource_is_ignored() {
        let p = "/apisix";
        for key in [
            "/apisix/routes/",
            "/apisix/gen_id",
            "/apisix/stream_routes/1",
            "/apisix/data_plane/server_info/x",
            "/apisix/credentials/x",
            "/apisix/consumers/jack/other/c1",
            "/apisix2/routes/1",
            "/apisix/routes/1/extra",
        ] {
            assert_eq!(parse_key(p, key), None, "{key}");
        }
        assert_eq!(normalize_prefix("custom"), "/custom");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(parse_key("", "/routes/1"), Some((Kind::Routes, "1".into())));
    }
}
