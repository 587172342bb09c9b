//! The Admin API in cluster mode (`config_source: etcd`): reads answer from
//! what this node has seen in etcd; writes go to etcd with APISIX's
//! semantics (`createdIndex` = `create_revision`, `modifiedIndex` =
//! `mod_revision`, 201 when the put found no previous key, ttl by lease,
//! POST ids from `{prefix}/gen_id`'s revision).
//!
//! A write is validated as the whole configuration etcd would then hold
//! (the same `Live::prepare` the store path uses), then written in a
//! transaction that only succeeds if no other node wrote in between; if one
//! did, this node catches up and validates again. The answer is sent once
//! this node serves the write (its watch has applied that revision), so a
//! client reading back from the same node sees it.
//!
//! A write that touches the top risk tier is held in etcd for a second
//! admin instead (`approvals`). Every write is recorded in the change
//! history in etcd, in the same transaction (`GET /portcullis/v1/changes`
//! answers from there on every node).

use bytes::Bytes;
use portcullis_config::{Kind, RawResource};
use portcullis_etcd::{EtcdError, EtcdStore};
use portcullis_store::{secrets, ChangeFilter};
use serde_json::{json, Value};

use super::{
    forbid_timestamps, label, origin, parse_body, parse_object, prepare, resolve_id, ttl, Entry,
    Target,
};
use crate::approvals::{author, hold_in_etcd};
use crate::{patch, Admin, Ctx, Reply};

/// How often a write is tried again when another node wrote first.
const ATTEMPTS: usize = 5;

fn unavailable(e: EtcdError) -> Reply {
    tracing::error!(error = %e, "admin etcd operation failed");
    match e {
        EtcdError::Conflict { .. } => Reply::error(
            409,
            "the configuration kept changing on other nodes; try again",
        ),
        other => Reply::error(503, other.to_string()),
    }
}

fn entry(e: portcullis_etcd::Entry) -> Entry {
    Entry {
        id: e.id,
        value: Value::clone(&e.value),
        created_index: e.create_revision.max(0) as u64,
        modified_index: e.mod_revision.max(0) as u64,
    }
}

pub(super) fn read_all(etcd: &EtcdStore, kind: Kind) -> Vec<Entry> {
    etcd.list(kind).into_iter().map(entry).collect()
}

pub(super) fn read_one(etcd: &EtcdStore, kind: Kind, id: &str) -> Option<Entry> {
    etcd.get(kind, id).map(entry)
}

fn item(etcd: &EtcdStore, kind: Kind, e: &Entry) -> Value {
    json!({
        "key": etcd.key_of(kind, &e.id),
        "value": secrets::masked(kind, &e.value),
        "createdIndex": e.created_index,
        "modifiedIndex": e.modified_index,
    })
}

/// The configuration etcd holds, as writes are checked against it. A value
/// this node cannot read at all refuses every write until it is fixed.
fn view(etcd: &EtcdStore) -> Result<(portcullis_config::RawConfig, i64), Reply> {
    etcd.view().map_err(|errors| {
        Reply::error(
            400,
            format!("invalid configuration: etcd holds {}", errors.join("; ")),
        )
    })
}

fn log_change(ctx: &Ctx, kind: Kind, id: &str, action: &str) {
    tracing::info!(
        actor = %ctx.actor,
        client = %ctx.client,
        method = %ctx.method,
        kind = kind.as_str(),
        id,
        action,
        "configuration changed (etcd)"
    );
}

/// PUT, POST, PATCH and DELETE.
pub(super) async fn write(
    admin: &Admin,
    etcd: &EtcdStore,
    ctx: &Ctx,
    t: &Target,
    body: &Bytes,
) -> Result<Reply, Reply> {
    match ctx.method {
        http::Method::PUT => put_or_post(admin, etcd, ctx, t, body, false).await,
        http::Method::POST => put_or_post(admin, etcd, ctx, t, body, true).await,
        http::Method::PATCH => patch(admin, etcd, ctx, t, body).await,
        http::Method::DELETE => delete(admin, etcd, ctx, t).await,
        _ => Err(Reply::error(404, "not found")),
    }
}

async fn put_or_post(
    admin: &Admin,
    etcd: &EtcdStore,
    ctx: &Ctx,
    t: &Target,
    body: &Bytes,
    post: bool,
) -> Result<Reply, Reply> {
    let mut value = parse_object(body)?;
    forbid_timestamps(&value)?;
    let ttl = ttl(ctx)?;
    let _one_writer = admin.write_lock.lock().await;
    if let Some(user) = &t.consumer {
        if etcd.get(Kind::Consumers, user).is_none() {
            return Err(Reply::error(404, "consumer not found"));
        }
    }
    let id = if post {
        match t.kind {
            Kind::Consumers => {
                return Err(Reply::error(
                    405,
                    "not supported `POST` method for consumer",
                ))
            }
            Kind::PluginMetadata => {
                return Err(Reply::error(
                    405,
                    "not supported `POST` method for plugin_metadata",
                ))
            }
            _ => {}
        }
        if t.id.is_some() || value.contains_key("id") {
            return Err(Reply::error(
                400,
                format!("wrong {} id, do not need it", label(t.kind)),
            ));
        }
        let own = etcd.next_id().await.map_err(unavailable)?;
        let with_id = Target {
            kind: t.kind,
            consumer: t.consumer.clone(),
            id: Some(own),
            sub_path: String::new(),
        };
        resolve_id(admin, &with_id, &mut value, false)?
    } else {
        resolve_id(admin, t, &mut value, false)?
    };
    let mut value = Value::Object(value);
    if let Some(previous) = etcd.get(t.kind, &id) {
        secrets::restore_masked(t.kind, &mut value, &previous.value);
    }
    commit(admin, etcd, ctx, t.kind, &id, value, ttl).await
}

async fn patch(
    admin: &Admin,
    etcd: &EtcdStore,
    ctx: &Ctx,
    t: &Target,
    body: &Bytes,
) -> Result<Reply, Reply> {
    let own =
        t.id.clone()
            .ok_or_else(|| Reply::error(400, format!("missing {} id", label(t.kind))))?;
    let id = t.full_id(&own);
    let change = parse_body(body, "missing new configuration")?;
    if t.sub_path.is_empty() && !change.is_object() {
        return Err(Reply::error(400, "invalid configuration"));
    }
    let ttl = ttl(ctx)?;
    let _one_writer = admin.write_lock.lock().await;
    let previous = etcd.get(t.kind, &id).ok_or_else(Reply::not_found)?;
    let mut value = Value::clone(&previous.value);
    if t.sub_path.is_empty() {
        patch::merge_patch(&mut value, &change);
    } else {
        patch::replace_at(&mut value, &t.sub_path, change).map_err(|e| Reply::error(400, e))?;
    }
    let (field, wrong) = match t.kind {
        Kind::Consumers => ("username", "wrong username".to_string()),
        _ => ("id", format!("wrong {} id", label(t.kind))),
    };
    let same = match value.get(field) {
        None => true,
        Some(Value::String(s)) => *s == own,
        Some(Value::Number(n)) => n.to_string() == own,
        Some(_) => false,
    };
    if !same {
        return Err(Reply::error(400, wrong));
    }
    if let Value::Object(obj) = &mut value {
        obj.insert(field.into(), Value::String(own.clone()));
    }
    secrets::restore_masked(t.kind, &mut value, &previous.value);
    commit(admin, etcd, ctx, t.kind, &id, value, ttl).await
}

/// Check the whole configuration with this write in it, write it if no
/// other node wrote meanwhile (else catch up and check again), and answer
/// once this node serves it.
async fn commit(
    admin: &Admin,
    etcd: &EtcdStore,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    mut value: Value,
    ttl: Option<f64>,
) -> Result<Reply, Reply> {
    super::seal(kind, &mut value);
    for _ in 0..ATTEMPTS {
        let (before, guard) = view(etcd)?;
        let mut candidate = before.clone();
        candidate.upsert(
            kind,
            RawResource {
                id: id.to_string(),
                value: value.clone().into(),
                origin: origin(kind, id),
            },
        );
        let snapshot = prepare(&admin.live, candidate, kind, id)?;
        if let Some(held) = hold_in_etcd(
            etcd,
            ctx,
            kind,
            id,
            Some(&value),
            ttl,
            &before,
            &snapshot.raw,
        )
        .await
        {
            return held;
        }
        let by = author(ctx, ctx.method.as_str());
        match etcd
            .put(kind, id, value.clone(), ttl, Some(guard), Some(&by))
            .await
        {
            Ok(out) => {
                if !etcd.wait_applied(out.modified_index as i64).await {
                    tracing::warn!(
                        revision = out.modified_index,
                        "written to etcd, but this node has not caught up with it yet"
                    );
                }
                log_change(ctx, kind, id, if out.created { "create" } else { "update" });
                let e = Entry {
                    id: id.to_string(),
                    value: out.value,
                    created_index: out.created_index,
                    modified_index: out.modified_index,
                };
                let status = if out.created { 201 } else { 200 };
                return Ok(Reply::new(status, item(etcd, kind, &e)));
            }
            Err(EtcdError::Conflict { revision }) => {
                etcd.wait_applied(revision).await;
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(unavailable(EtcdError::Conflict { revision: 0 }))
}

async fn delete(admin: &Admin, etcd: &EtcdStore, ctx: &Ctx, t: &Target) -> Result<Reply, Reply> {
    let own =
        t.id.clone()
            .ok_or_else(|| Reply::error(400, format!("missing {} id", label(t.kind))))?;
    let id = t.full_id(&own);
    let _one_writer = admin.write_lock.lock().await;
    for _ in 0..ATTEMPTS {
        if etcd.get(t.kind, &id).is_none() {
            return Err(Reply::not_found());
        }
        let (before, guard) = view(etcd)?;
        let mut candidate = before.clone();
        crate::resources::remove_for_delete(&mut candidate, ctx, t.kind, &id)?;
        let snapshot = prepare(&admin.live, candidate, t.kind, &id)?;
        if let Some(held) =
            hold_in_etcd(etcd, ctx, t.kind, &id, None, None, &before, &snapshot.raw).await
        {
            return held;
        }
        let by = author(ctx, ctx.method.as_str());
        match etcd.delete(t.kind, &id, Some(guard), Some(&by)).await {
            Ok(Some(revision)) => {
                etcd.wait_applied(revision).await;
                log_change(ctx, t.kind, &id, "delete");
                return Ok(Reply::new(
                    200,
                    json!({"deleted": "1", "key": etcd.key_of(t.kind, &id)}),
                ));
            }
            Ok(None) => return Err(Reply::not_found()),
            Err(EtcdError::Conflict { revision }) => {
                etcd.wait_applied(revision).await;
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(unavailable(EtcdError::Conflict { revision: 0 }))
}

/// `GET /portcullis/v1/changes` in cluster mode: the history every node
/// writes to etcd, in store mode's shape.
pub(super) async fn changes(etcd: &EtcdStore, filter: &ChangeFilter) -> Reply {
    match etcd.changes(filter).await {
        Ok(list) => Reply::new(200, json!({"total": list.len(), "list": list})),
        Err(e) => unavailable(e),
    }
}
