//! APISIX's key layout: `{prefix}/{collection}/{id}` with a JSON value, and
//! a consumer's credentials under `{prefix}/consumers/{user}/credentials/{id}`.
//! Everything else under the prefix (`gen_id`, `data_plane/...`, the empty
//! `init_dir` markers APISIX's CLI writes at `{prefix}/routes/`, collections
//! portcullis does not know such as `stream_routes`) is not a resource and is
//! left alone.
//!
//! portcullis's own cluster state lives under `{prefix}/portcullis/`, a
//! collection APISIX does not have:
//!
//! - `quarantines/{id}`: active quarantines (a lease when they expire);
//! - `approvals/{id:020}`: changes held for a second admin's approval;
//! - `changes/{ms:013}-{tag}`: the change history;
//! - `seq`: a put to it makes approval ids.

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

/// The range end that, with `start`, covers every key beginning with
/// `start` (etcd's prefix range).
pub fn prefix_end(start: &str) -> Vec<u8> {
    let mut end = start.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Where portcullis keeps its own cluster state.
pub fn own_prefix(prefix: &str) -> String {
    format!("{prefix}/portcullis/")
}

pub fn quarantines_prefix(prefix: &str) -> String {
    format!("{prefix}/portcullis/quarantines/")
}

pub fn quarantine_key(prefix: &str, id: &str) -> String {
    format!("{prefix}/portcullis/quarantines/{id}")
}

/// The quarantine id a key holds.
pub fn parse_quarantine_key<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let id = key
        .strip_prefix(prefix)?
        .strip_prefix("/portcullis/quarantines/")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

pub fn approvals_prefix(prefix: &str) -> String {
    format!("{prefix}/portcullis/approvals/")
}

/// Zero padded, so keys sort as the ids do.
pub fn approval_key(prefix: &str, id: i64) -> String {
    format!("{prefix}/portcullis/approvals/{id:020}")
}

pub fn changes_prefix(prefix: &str) -> String {
    format!("{prefix}/portcullis/changes/")
}

/// Keys sort by the writer's clock; the order shown is etcd's revision.
pub fn change_key(prefix: &str, time_ms: i64, tag: &str) -> String {
    format!("{prefix}/portcullis/changes/{time_ms:013}-{tag}")
}

/// A put to it makes approval ids (its revision).
pub fn seq_key(prefix: &str) -> String {
    format!("{prefix}/portcullis/seq")
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
            "/apisix/portcullis/quarantines/q-1",
            "/apisix/portcullis/approvals/00000000000000000007",
            "/apisix/portcullis/changes/1700000000000-ab12",
            "/apisix/portcullis/seq",
        ] {
            assert_eq!(parse_key(p, key), None, "{key}");
        }
        assert_eq!(normalize_prefix("custom"), "/custom");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(parse_key("", "/routes/1"), Some((Kind::Routes, "1".into())));
    }

    #[test]
    fn portcullis_keys_have_their_own_collection() {
        let p = "/apisix";
        assert_eq!(
            parse_quarantine_key(p, &quarantine_key(p, "q-1")),
            Some("q-1")
        );
        assert_eq!(
            parse_quarantine_key(p, "/apisix/portcullis/quarantines/"),
            None
        );
        assert_eq!(parse_quarantine_key(p, "/apisix/routes/q-1"), None);
        assert!(approval_key(p, 7) < approval_key(p, 10));
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(&own_prefix(p)), b"/apisix/portcullis0".to_vec());
    }
}
