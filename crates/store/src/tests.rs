//! The store's behaviour: revisions, ttl, cascades, history, durability
//! across reopening.

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;

fn meta() -> ChangeMeta {
    ChangeMeta::new("ops", "127.0.0.1", "PUT")
}

#[test]
fn a_first_put_creates_and_a_second_replaces_keeping_created_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = store
        .put(
            Kind::Routes,
            "1",
            json!({"id": "1", "uri": "/a"}),
            None,
            &meta(),
        )
        .unwrap();
    assert!(first.created);
    assert_eq!(first.created_index, first.modified_index);
    let second = store
        .put(
            Kind::Routes,
            "1",
            json!({"id": "1", "uri": "/b"}),
            None,
            &meta(),
        )
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.created_index, first.created_index);
    assert!(second.modified_index > first.modified_index);
    let got = store.get(Kind::Routes, "1").unwrap().unwrap();
    assert_eq!(got.value["uri"], "/b");
    assert!(got.value["create_time"].is_i64());
    assert!(got.value["update_time"].is_i64());
}

#[test]
fn a_reopened_store_still_has_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .put(
                Kind::Upstreams,
                "u",
                json!({"id": "u", "nodes": {"127.0.0.1:80": 1}}),
                None,
                &meta(),
            )
            .unwrap();
        store.next_id().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let raw = store.load_raw().unwrap();
    assert_eq!(raw.of(Kind::Upstreams)[0].id, "u");
    assert_eq!(raw.of(Kind::Upstreams)[0].origin, "upstreams/u");
    // The revision counter survives too, so ids never repeat.
    let id = store.next_id().unwrap();
    assert_eq!(id.len(), 20);
    assert_eq!(id, format!("{:020}", 3));
}

#[test]
fn generated_ids_are_twenty_digits_and_increase() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store.next_id().unwrap();
    let b = store.next_id().unwrap();
    assert_eq!(a.len(), 20);
    assert!(a.chars().all(|c| c.is_ascii_digit()));
    assert!(b > a);
}

#[test]
fn resources_with_a_ttl_vanish_from_reads_and_are_deleted_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put(
            Kind::Routes,
            "t",
            json!({"id": "t", "uri": "/t"}),
            Some(0.05),
            &meta(),
        )
        .unwrap();
    store
        .put(
            Kind::Routes,
            "p",
            json!({"id": "p", "uri": "/p"}),
            None,
            &meta(),
        )
        .unwrap();
    assert!(store.get(Kind::Routes, "t").unwrap().is_some());
    std::thread::sleep(Duration::from_millis(80));
    assert!(store.get(Kind::Routes, "t").unwrap().is_none());
    assert_eq!(store.list(Kind::Routes).unwrap().len(), 1);
    let gone = store.expire_due(SystemTime::now()).unwrap();
    assert_eq!(gone, vec![(Kind::Routes, "t".to_string())]);
    let history = store
        .changes(&ChangeFilter {
            resource: Some("routes/t".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(history[0].actor, "ttl");
    assert_eq!(history[0].after, None);
}

#[test]
fn deleting_a_consumer_deletes_its_credentials_and_nobody_elses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put(
            Kind::Consumers,
            "jack",
            json!({"username": "jack"}),
            None,
            &meta(),
        )
        .unwrap();
    store
        .put(
            Kind::Consumers,
            "jackson",
            json!({"username": "jackson"}),
            None,
            &meta(),
        )
        .unwrap();
    store
        .put(
            Kind::Credentials,
            "jack/c1",
            json!({"id": "c1"}),
            None,
            &meta(),
        )
        .unwrap();
    store
        .put(
            Kind::Credentials,
            "jackson/c1",
            json!({"id": "c1"}),
            None,
            &meta(),
        )
        .unwrap();
    let gone = store.delete(Kind::Consumers, "jack", &meta()).unwrap();
    assert_eq!(gone.len(), 2);
    assert!(store.get(Kind::Credentials, "jack/c1").unwrap().is_none());
    assert!(store
        .get(Kind::Credentials, "jackson/c1")
        .unwrap()
        .is_some());
}

#[test]
fn deleting_what_is_not_there_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store
        .delete(Kind::Routes, "nope", &meta())
        .unwrap()
        .is_empty());
    assert!(store.changes(&ChangeFilter::default()).unwrap().is_empty());
}

#[test]
fn the_change_history_names_who_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let consumer = json!({"username": "u", "plugins": {"key-auth": {"key": "s3cret"}}});
    store
        .put(Kind::Consumers, "u", consumer, None, &meta())
        .unwrap();
    store
        .put(
            Kind::Routes,
            "1",
            json!({"id": "1", "uri": "/"}),
            None,
            &ChangeMeta::new("viewer-bot", "10.0.0.1", "POST"),
        )
        .unwrap();
    let all = store.changes(&ChangeFilter::default()).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].kind, "routes");
    assert_eq!(
        all[1].after.as_ref().unwrap()["plugins"]["key-auth"]["key"],
        "******"
    );
    assert!(all[1].before.is_none());
    let by_actor = store
        .changes(&ChangeFilter {
            actor: Some("viewer-bot".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_actor.len(), 1);
    assert_eq!(by_actor[0].client, "10.0.0.1");
    let by_kind = store
        .changes(&ChangeFilter {
            resource: Some("consumers".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_kind.len(), 1);
    let future = store
        .changes(&ChangeFilter {
            since: Some(now_millis() / 1000 + 100),
            ..Default::default()
        })
        .unwrap();
    assert!(future.is_empty());
    // The stored value itself keeps the secret: the proxy needs it.
    let stored = store.get(Kind::Consumers, "u").unwrap().unwrap();
    assert_eq!(stored.value["plugins"]["key-auth"]["key"], "s3cret");
}

#[test]
fn put_all_lands_every_resource_in_one_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let out = store
        .put_all(
            vec![
                (Kind::Upstreams, "u".into(), json!({"id": "u"})),
                (Kind::Routes, "r".into(), json!({"id": "r"})),
            ],
            &ChangeMeta::new("import", "", "IMPORT"),
        )
        .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(store.all().unwrap().len(), 2);
}

#[test]
fn plugin_metadata_gets_no_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put(
            Kind::PluginMetadata,
            "http-logger",
            json!({"id": "http-logger"}),
            None,
            &meta(),
        )
        .unwrap();
    let got = store
        .get(Kind::PluginMetadata, "http-logger")
        .unwrap()
        .unwrap();
    assert_eq!(got.value, json!({"id": "http-logger"}));
}
