//! Dual control for the top risk tier (docs/risk-tiers.md).
//!
//! An Admin API write that touches a `payment_or_admin_api` route, or the
//! service, upstream or plugin_config such a route uses (before or after the
//! write), is validated as usual (an invalid write is still a 400) and then,
//! instead of being applied, held in the store as a pending change and
//! answered 202 with its id. It applies only when a different admin key
//! approves it:
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
//! Git; the Admin API is read-only there) and `portcullis import`, an
//! operator's offline action on the data directory.

use portcullis_config::tiers::{tier_of_value, TOP_TIER};
use portcullis_config::{Kind, RawConfig, RawResource};
use portcullis_store::{secrets, Applied, ChangeMeta, DecideError, PendingChange, Proposal, Store};
use serde_json::{json, Value};

use crate::{Admin, Ctx, Mode, Reply};

/// Why a write to `kind/id` needs a second approval, looking at the config
/// before and after it; `None` when it touches no top-tier route.
pub(crate) fn top_tier_reason(
    before: &RawConfig,
    after: &RawConfig,
    kind: Kind,
    id: &str,
) -> Option<String> {
    let top = TOP_TIER.as_str();
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
        Ok(pending) => {
            tracing::info!(
                actor = %ctx.actor,
                kind = kind.as_str(),
                id,
                pending,
                reason = %reason,
                "write held for a second admin's approval"
            );
            Ok(Reply::new(
                202,
                json!({
                    "id": pending.to_string(),
                    "status": "pending",
                    "message": format!(
                        "held for approval ({reason}): a different admin key must POST /portcullis/v1/approvals/{pending}/approve"
                    ),
                    "key": format!("/apisix/{}/{id}", kind.as_str()),
                }),
            ))
        }
        Err(e) => Err(internal(e)),
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

fn parse_id(s: &str) -> Result<i64, Reply> {
    s.parse::<i64>()
        .map_err(|_| Reply::error(400, "invalid pending change id: should be an integer"))
}

fn list(store: &Store, ctx: &Ctx) -> Reply {
    let status = match ctx.query.get("status").map(String::as_str) {
        None | Some("pending") => Some("pending"),
        Some("all") => None,
        Some(s @ ("approved" | "rejected")) => Some(s),
        Some(_) => {
            return Reply::error(
                400,
                "invalid argument status: one of pending, approved, rejected, all",
            )
        }
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
    if change.actor == ctx.actor {
        tracing::warn!(actor = %ctx.actor, id, "an admin tried to approve their own change");
        return Err(Reply::error(
            403,
            "a change must be approved by a different admin key than the one that proposed it",
        ));
    }
    let kind = Kind::parse(&change.kind).ok_or_else(Reply::not_found)?;
    let origin = format!("{}/{}", kind.as_str(), change.resource_id);
    // Validate again: the config may have moved on since the proposal.
    let mut candidate = RawConfig::clone(&admin.live.load().raw);
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
    let mut snapshot = admin.live.prepare(candidate.clone()).map_err(|errors| {
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
    })?;
    let meta = ChangeMeta::new(ctx.actor.clone(), ctx.client.clone(), "APPROVE");
    let (change, applied) = store
        .approve(id, &meta)
        .map_err(internal)?
        .map_err(decide_error)?;
    if let Applied::Put(_) = applied {
        // Serve exactly what is stored (the store adds create/update times).
        if let Some(stored) = store.get(kind, &change.resource_id).map_err(internal)? {
            candidate.upsert(
                kind,
                RawResource {
                    id: change.resource_id.clone(),
                    value: stored.value.into(),
                    origin,
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
