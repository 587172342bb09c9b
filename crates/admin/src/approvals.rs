//! Dual control for the top risk tier (docs/risk-tiers.md).
//!
//! An Admin API write that touches a `payment_or_admin_api` route, or the
//! service, upstream or plugin_config such a route uses (before or after the
//! write), or any global rule while such a route exists (a global rule runs
//! on every route), is validated as usual (an invalid write is still a 400)
//! and then, instead of being applied, held as a pending change and
//! answered 202 with its id: in the embedded store, or in cluster mode in
//! etcd (`portcullis_etcd::approvals`), so it can be approved through any
//! node. It applies only when a different admin key approves it:
//!
//! - `GET /portcullis/v1/approvals[?status=pending|approved|rejected|all]`
//! - `GET /portcullis/v1/approvals/{id}`
//! - `POST /portcullis/v1/approvals/{id}/approve`: a different admin key
//!   only (the proposer gets 403); the change is validated again against the
//!   config as it is now, and refused (409) if the resource changed since it
//!   was proposed.
//! - `POST /portcullis/v1/approvals/{id}/reject`: any admin key, the
//!   proposer too (withdrawing it).
//!
//! Proposals, approvals and rejections are recorded in the change history
//! (`/portcullis/v1/changes`, methods `PROPOSE`, `APPROVE`, `REJECT`).
//!
//! Exempt: the config file (`config_source: file`, whose review happens in
//! Git; the Admin API is read-only there), `portcullis import` and
//! `portcullis migrate`, an operator's offline actions, and anything written
//! to etcd other than through the Admin API.

use portcullis_config::tiers::{tier_of_value, TOP_TIER};
use portcullis_config::{Kind, RawConfig, RawResource};
use portcullis_etcd::approvals::Decided;
use portcullis_etcd::{Author, EtcdError, EtcdStore};
use portcullis_store::{secrets, Applied, ChangeMeta, DecideError, PendingChange, Proposal, Store};
use serde_json::{json, Value};

use crate::{Admin, Ctx, Mode, Reply};

/// How often an approval is tried again when another node wrote first.
const ATTEMPTS: usize = 5;

/// Why a write to `kind/id` needs a second approval, looking at the config
/// before and after it; `None` when it touches no top-tier route.
pub(crate) fn top_tier_reason(
    before: &RawConfig,
    after: &RawConfig,
    kind: Kind,
    id: &str,
) -> Option<String> {
    let top = TOP_TIER.as_str();
    if kind == Kind::GlobalRules {
        // A global rule runs on every route, the top tier's too.
        let route = [before, after].into_iter().find_map(|config| {
            config
                .of(Kind::Routes)
                .iter()
                .find(|r| tier_of_value(&r.value) == Some(TOP_TIER))
                .map(|r| r.id.clone())
        })?;
        return Some(format!(
            "global rule {id} applies to every route, and route {route} is tier {top}"
        ));
    }
    for config in [before, after] {
        let service_upstream = |sid: &str| -> Option<String> {
            config
                .of(Kind::Services)
                .iter()
                .find(|s| s.id == sid)
                .and_then(|s| id_field(&s.value, "upstream_id"))
        };
        for route in config.of(Kind::Routes) {
            if tier_of_value(&route.value) != Some(TOP_TIER) {
                continue;
            }
            let uses = match kind {
                Kind::Routes => route.id == id,
                Kind::Services => id_field(&route.value, "service_id").as_deref() == Some(id),
                Kind::PluginConfigs => {
                    id_field(&route.value, "plugin_config_id").as_deref() == Some(id)
                }
                Kind::Upstreams => {
                    id_field(&route.value, "upstream_id").as_deref() == Some(id)
                        || id_field(&route.value, "service_id")
                            .and_then(|sid| service_upstream(&sid))
                            .as_deref()
                            == Some(id)
                }
                _ => false,
            };
            if uses {
                return Some(if kind == Kind::Routes {
                    format!("route {id} is tier {top}")
                } else {
                    format!(
                        "route {} (tier {top}) uses {} {id}",
                        route.id,
                        kind.as_str().trim_end_matches('s')
                    )
                });
            }
        }
    }
    None
}

fn id_field(v: &Value, field: &str) -> Option<String> {
    match v.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Called by a write once it has validated: hold it when it touches the
/// top tier. `value` is `None` for a delete; `after` is the config the
/// write would produce.
#[allow(clippy::too_many_arguments)]
pub(crate) fn hold(
    admin: &Admin,
    store: &Store,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    value: Option<&Value>,
    ttl: Option<f64>,
    after: &RawConfig,
) -> Option<Result<Reply, Reply>> {
    let before = admin.live.load();
    let reason = top_tier_reason(&before.raw, after, kind, id)?;
    let meta = ChangeMeta::new(ctx.actor.clone(), ctx.client.clone(), ctx.method.as_str());
    let proposal = Proposal {
        kind,
        id,
        value: value.cloned(),
        ttl,
        reason: &reason,
    };
    Some(match store.propose(proposal, &meta) {
        Ok(pending) => Ok(held(
            ctx,
            kind,
            id,
            pending,
            &reason,
            format!("/apisix/{}/{id}", kind.as_str()),
        )),
        Err(e) => Err(internal(e)),
    })
}

/// The 202 a held write answers with.
fn held(ctx: &Ctx, kind: Kind, id: &str, pending: i64, reason: &str, key: String) -> Reply {
    tracing::info!(
        actor = %ctx.actor,
        kind = kind.as_str(),
        id,
        pending,
        reason = %reason,
        "write held for a second admin's approval"
    );
    Reply::new(
        202,
        json!({
            "id": pending.to_string(),
            "status": "pending",
            "message": format!(
                "held for approval ({reason}): a different admin key must POST /portcullis/v1/approvals/{pending}/approve"
            ),
            "key": key,
        }),
    )
}

/// Who wrote, as the change history in etcd records it.
pub(crate) fn author<'a>(ctx: &'a Ctx, method: &'a str) -> Author<'a> {
    Author {
        actor: &ctx.actor,
        client: &ctx.client,
        method,
        mask: secrets::masked,
    }
}

/// [`hold`] in cluster mode: the pending change goes to etcd. `before` is
/// the view the write was checked against, `after` that view with it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn hold_in_etcd(
    etcd: &EtcdStore,
    ctx: &Ctx,
    kind: Kind,
    id: &str,
    value: Option<&Value>,
    ttl: Option<f64>,
    before: &RawConfig,
    after: &RawConfig,
) -> Option<Result<Reply, Reply>> {
    let reason = top_tier_reason(before, after, kind, id)?;
    let proposal = PendingChange {
        id: 0,
        time: 0,
        actor: ctx.actor.clone(),
        client: ctx.client.clone(),
        method: ctx.method.as_str().to_string(),
        kind: kind.as_str().to_string(),
        resource_id: id.to_string(),
        value: value.cloned(),
        ttl,
        base_modified_index: 0,
        reason: reason.clone(),
        status: "pending".into(),
        decided_by: None,
        decided_at: None,
    };
    Some(
        match etcd
            .propose(proposal, &author(ctx, ctx.method.as_str()))
            .await
        {
            Ok(p) => Ok(held(ctx, kind, id, p.id, &reason, etcd.key_of(kind, id))),
            Err(e) => Err(unavailable(e)),
        },
    )
}

fn unavailable(e: EtcdError) -> Reply {
    tracing::error!(error = %e, "approvals: etcd operation failed");
    match e {
        EtcdError::Conflict { .. } => Reply::error(
            409,
            "the configuration kept changing on other nodes; try again",
        ),
        other => Reply::error(503, other.to_string()),
    }
}

/// 403 when the approver is the admin key that proposed the change.
fn refuse_own_change(ctx: &Ctx, change: &PendingChange, id: i64) -> Result<(), Reply> {
    if change.actor == ctx.actor {
        tracing::warn!(actor = %ctx.actor, id, "an admin tried to approve their own change");
        return Err(Reply::error(
            403,
            "a change must be approved by a different admin key than the one that proposed it",
        ));
    }
    Ok(())
}

/// Apply the held change to `candidate` and check the whole configuration
/// it makes (the config may have moved on since the proposal): its
/// snapshot (whose `raw` is the candidate), or 400 naming the first error,
/// the change's own first.
fn check_with_change(
    admin: &Admin,
    mut candidate: RawConfig,
    kind: Kind,
    change: &PendingChange,
) -> Result<portcullis_config::Snapshot, Reply> {
    let origin = format!("{}/{}", kind.as_str(), change.resource_id);
    match &change.value {
        Some(v) => candidate.upsert(
            kind,
            RawResource {
                id: change.resource_id.clone(),
                value: v.clone().into(),
                origin: origin.clone(),
            },
        ),
        None => {
            candidate.remove(kind, &change.resource_id);
        }
    }
    admin.live.prepare(candidate).map_err(|errors| {
        let msg = errors
            .iter()
            .find(|e| e.resource == origin)
            .or_else(|| errors.first())
            .map(|e| e.to_string())
            .unwrap_or_else(|| "invalid configuration".into());
        Reply::error(
            400,
            format!("the change no longer builds a valid configuration: {msg}"),
        )
    })
}

fn internal(e: portcullis_store::StoreError) -> Reply {
    tracing::error!(error = %e, "approvals: store operation failed");
    Reply::error(500, "failed to access the store")
}

fn show(c: &PendingChange) -> Value {
    let masked = Kind::parse(&c.kind)
        .zip(c.value.as_ref())
        .map(|(kind, v)| secrets::masked(kind, v));
    json!({
        "id": c.id.to_string(),
        "time": c.time,
        "proposed_by": c.actor,
        "client": c.client,
        "method": c.method,
        "kind": c.kind,
        "resource_id": c.resource_id,
        "value": masked,
        "ttl": c.ttl,
        "reason": c.reason,
        "status": c.status,
        "decided_by": c.decided_by,
        "decided_at": c.decided_at,
    })
}

/// `/portcullis/v1/approvals...`; `rest` is what follows `approvals`.
pub(crate) async fn handle(admin: &Admin, ctx: &Ctx, rest: &str) -> Reply {
    if let Some(etcd) = &admin.etcd {
        return handle_in_etcd(admin, etcd, ctx, rest).await;
    }
    let store = match &admin.mode {
        Mode::Store(s) => s.clone(),
        Mode::ReadOnly(msg) => {
            return if ctx.method == http::Method::GET {
                Reply::new(200, json!({"total": 0, "list": []}))
            } else {
                Reply::error(400, msg.clone())
            }
        }
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (&ctx.method, segs.as_slice()) {
        (&http::Method::GET, []) => list(&store, ctx),
        (&http::Method::GET, [id]) => match parse_id(id) {
            Ok(id) => match store.pending_change(id) {
                Ok(Some(c)) => Reply::new(200, show(&c)),
                Ok(None) => Reply::not_found(),
                Err(e) => internal(e),
            },
            Err(r) => r,
        },
        (&http::Method::POST, [id, "approve"]) => match parse_id(id) {
            Ok(id) => approve(admin, &store, ctx, id).await.unwrap_or_else(|r| r),
            Err(r) => r,
        },
        (&http::Method::POST, [id, "reject"]) => match parse_id(id) {
            Ok(id) => reject(admin, &store, ctx, id).await,
            Err(r) => r,
        },
        (_, [] | [_]) => Reply::error(405, "only GET is supported here"),
        (_, [_, "approve" | "reject"]) => Reply::error(405, "only POST is supported here"),
        _ => Reply::error(404, "404 Route Not Found"),
    }
}

async fn handle_in_etcd(admin: &Admin, etcd: &EtcdStore, ctx: &Ctx, rest: &str) -> Reply {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let result = match (&ctx.method, segs.as_slice()) {
        (&http::Method::GET, []) => match status_filter(ctx) {
            Ok(status) => etcd
                .pendings(status)
                .await
                .map(|list| {
                    let list: Vec<Value> = list.into_iter().map(|p| show(&p)).collect();
                    Reply::new(200, json!({"total": list.len(), "list": list}))
                })
                .map_err(unavailable),
            Err(r) => Err(r),
        },
        (&http::Method::GET, [id]) => match parse_id(id) {
            Ok(id) => match etcd.pending(id).await {
                Ok(Some((p, _))) => Ok(Reply::new(200, show(&p))),
                Ok(None) => Err(Reply::not_found()),
                Err(e) => Err(unavailable(e)),
            },
            Err(r) => Err(r),
        },
        (&http::Method::POST, [id, verb @ ("approve" | "reject")]) => match parse_id(id) {
            Ok(id) => decide_in_etcd(admin, etcd, ctx, id, *verb == "approve").await,
            Err(r) => Err(r),
        },
        (_, [] | [_]) => Err(Reply::error(405, "only GET is supported here")),
        (_, [_, "approve" | "reject"]) => Err(Reply::error(405, "only POST is supported here")),
        _ => Err(Reply::error(404, "404 Route Not Found")),
    };
    result.unwrap_or_else(|r| r)
}

/// Approve or reject a change held in etcd, through any node.
async fn decide_in_etcd(
    admin: &Admin,
    etcd: &EtcdStore,
    ctx: &Ctx,
    id: i64,
    approve: bool,
) -> Result<Reply, Reply> {
    let _one_writer = admin.write_lock.lock().await;
    for _ in 0..ATTEMPTS {
        let (change, seen) = etcd
            .pending(id)
            .await
            .map_err(unavailable)?
            .ok_or_else(Reply::not_found)?;
        if change.status != "pending" {
            return Err(decide_error(DecideError::NotPending(change.status)));
        }
        let mut decided = change.clone();
        decided.status = if approve { "approved" } else { "rejected" }.into();
        decided.decided_by = Some(ctx.actor.clone());
        decided.decided_at = Some(portcullis_store::now_millis() / 1000);
        if !approve {
            let outcome = etcd
                .decide(&decided, seen, None, &author(ctx, "REJECT"))
                .await
                .map_err(unavailable)?;
            return match outcome {
                Decided::Done(_) => {
                    tracing::info!(by = %ctx.actor, proposer = %change.actor, id, "pending change rejected");
                    Ok(Reply::new(200, show(&decided)))
                }
                Decided::Gone => Err(Reply::not_found()),
                Decided::NotPending(status) => Err(decide_error(DecideError::NotPending(status))),
                Decided::Stale | Decided::Moved(_) => continue,
            };
        }
        refuse_own_change(ctx, &change, id)?;
        let kind = Kind::parse(&change.kind).ok_or_else(Reply::not_found)?;
        // Check against a view that has at least what etcd held when the
        // change was read.
        etcd.wait_applied(seen).await;
        if etcd.modified_index(kind, &change.resource_id) != change.base_modified_index {
            return Err(decide_error(DecideError::Stale));
        }
        let (candidate, guard) = etcd.view().map_err(|errors| {
            Reply::error(
                400,
                format!("invalid configuration: etcd holds {}", errors.join("; ")),
            )
        })?;
        check_with_change(admin, candidate, kind, &change)?;
        match etcd
            .decide(&decided, seen, Some(guard), &author(ctx, "APPROVE"))
            .await
            .map_err(unavailable)?
        {
            Decided::Done(revision) => {
                if !etcd.wait_applied(revision).await {
                    tracing::warn!(
                        revision,
                        "approved in etcd, but this node has not caught up with it yet"
                    );
                }
                tracing::info!(approver = %ctx.actor, proposer = %change.actor, id, kind = kind.as_str(), resource = %change.resource_id, "pending change approved and applied");
                return Ok(Reply::new(200, show(&decided)));
            }
            Decided::Gone => return Err(Reply::not_found()),
            Decided::NotPending(status) => {
                return Err(decide_error(DecideError::NotPending(status)))
            }
            Decided::Stale => return Err(decide_error(DecideError::Stale)),
            Decided::Moved(revision) => {
                etcd.wait_applied(revision).await;
            }
        }
    }
    Err(unavailable(EtcdError::Conflict { revision: 0 }))
}

fn parse_id(s: &str) -> Result<i64, Reply> {
    s.parse::<i64>()
        .map_err(|_| Reply::error(400, "invalid pending change id: should be an integer"))
}

/// `?status=`: pending (the default), approved, rejected or all (`None`).
fn status_filter(ctx: &Ctx) -> Result<Option<&'static str>, Reply> {
    match ctx.query.get("status").map(String::as_str) {
        None | Some("pending") => Ok(Some("pending")),
        Some("all") => Ok(None),
        Some("approved") => Ok(Some("approved")),
        Some("rejected") => Ok(Some("rejected")),
        Some(_) => Err(Reply::error(
            400,
            "invalid argument status: one of pending, approved, rejected, all",
        )),
    }
}

fn list(store: &Store, ctx: &Ctx) -> Reply {
    let status = match status_filter(ctx) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match store.pending_changes(status) {
        Ok(list) => Reply::new(
            200,
            json!({"total": list.len(), "list": list.iter().map(show).collect::<Vec<_>>()}),
        ),
        Err(e) => internal(e),
    }
}

fn decide_error(e: DecideError) -> Reply {
    match e {
        DecideError::NotFound => Reply::not_found(),
        DecideError::NotPending(status) => {
            Reply::error(409, format!("the change is already {status}"))
        }
        DecideError::Stale => Reply::error(
            409,
            "the resource changed after this change was proposed; reject it and propose it again",
        ),
    }
}

async fn approve(admin: &Admin, store: &Store, ctx: &Ctx, id: i64) -> Result<Reply, Reply> {
    let _one_writer = admin.write_lock.lock().await;
    let change = store
        .pending_change(id)
        .map_err(internal)?
        .ok_or_else(Reply::not_found)?;
    if change.status != "pending" {
        return Err(decide_error(DecideError::NotPending(change.status)));
    }
    refuse_own_change(ctx, &change, id)?;
    let kind = Kind::parse(&change.kind).ok_or_else(Reply::not_found)?;
    // Validate again: the config may have moved on since the proposal.
    let candidate = RawConfig::clone(&admin.live.load().raw);
    let mut snapshot = check_with_change(admin, candidate, kind, &change)?;
    let meta = ChangeMeta::new(ctx.actor.clone(), ctx.client.clone(), "APPROVE");
    let (change, applied) = store
        .approve(id, &meta)
        .map_err(internal)?
        .map_err(decide_error)?;
    if let Applied::Put(_) = applied {
        // Serve exactly what is stored (the store adds create/update times).
        if let Some(stored) = store.get(kind, &change.resource_id).map_err(internal)? {
            let mut candidate = RawConfig::clone(&snapshot.raw);
            candidate.upsert(
                kind,
                RawResource {
                    id: change.resource_id.clone(),
                    value: stored.value.into(),
                    origin: format!("{}/{}", kind.as_str(), change.resource_id),
                },
            );
            snapshot.raw = std::sync::Arc::new(candidate);
        }
    }
    admin.live.install(snapshot);
    tracing::info!(approver = %ctx.actor, proposer = %change.actor, id, kind = kind.as_str(), resource = %change.resource_id, "pending change approved and applied");
    Ok(Reply::new(200, show(&change)))
}

async fn reject(admin: &Admin, store: &Store, ctx: &Ctx, id: i64) -> Reply {
    let _one_writer = admin.write_lock.lock().await;
    let meta = ChangeMeta::new(ctx.actor.clone(), ctx.client.clone(), "REJECT");
    match store.reject_pending(id, &meta) {
        Ok(Ok(change)) => {
            tracing::info!(by = %ctx.actor, proposer = %change.actor, id, "pending change rejected");
            Reply::new(200, show(&change))
        }
        Ok(Err(e)) => decide_error(e),
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn config(items: &[(Kind, &str, Value)]) -> RawConfig {
        let mut raw = RawConfig::default();
        for (kind, id, value) in items {
            raw.push(
                *kind,
                RawResource {
                    id: id.to_string(),
                    value: Arc::new(value.clone()),
                    origin: format!("{}/{id}", kind.as_str()),
                },
            );
        }
        raw
    }

    #[test]
    fn writes_to_what_a_top_tier_route_uses_are_held() {
        let top = json!({"uri": "/pay", "labels": {"tier": "payment_or_admin_api"},
            "service_id": "s1", "plugin_config_id": "pc1"});
        let raw = config(&[
            (Kind::Routes, "pay", top),
            (
                Kind::Routes,
                "read",
                json!({"uri": "/r", "upstream_id": "u2"}),
            ),
            (Kind::Services, "s1", json!({"upstream_id": "u1"})),
        ]);
        let reason = |kind, id| top_tier_reason(&raw, &raw, kind, id);
        assert!(reason(Kind::Routes, "pay")
            .unwrap()
            .contains("route pay is tier"));
        assert!(reason(Kind::Services, "s1").is_some());
        assert!(reason(Kind::PluginConfigs, "pc1").is_some());
        assert!(reason(Kind::Upstreams, "u1").is_some());
        assert!(reason(Kind::Upstreams, "u2").is_none());
        assert!(reason(Kind::Routes, "read").is_none());
        assert!(reason(Kind::Consumers, "pay").is_none());
    }

    #[test]
    fn global_rules_are_held_while_a_top_tier_route_exists() {
        let empty = RawConfig::default();
        let with = config(&[(
            Kind::Routes,
            "pay",
            json!({"uri": "/pay", "labels": {"tier": "payment_or_admin_api"}}),
        )]);
        let reason = top_tier_reason(&with, &with, Kind::GlobalRules, "g1").unwrap();
        assert!(
            reason.contains("global rule g1 applies to every route"),
            "{reason}"
        );
        assert!(
            reason.contains("route pay is tier payment_or_admin_api"),
            "{reason}"
        );
        assert!(top_tier_reason(&empty, &empty, Kind::GlobalRules, "g1").is_none());
        let read = config(&[(Kind::Routes, "r", json!({"uri": "/r"}))]);
        assert!(top_tier_reason(&read, &read, Kind::GlobalRules, "g1").is_none());
    }

    #[test]
    fn creating_or_downgrading_a_top_tier_route_is_held_too() {
        let empty = RawConfig::default();
        let with = config(&[(
            Kind::Routes,
            "pay",
            json!({"uri": "/pay", "labels": {"tier": "payment_or_admin_api"}}),
        )]);
        assert!(top_tier_reason(&empty, &with, Kind::Routes, "pay").is_some());
        assert!(top_tier_reason(&with, &empty, Kind::Routes, "pay").is_some());
    }
}
