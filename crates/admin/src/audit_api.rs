//! `/portcullis/v1/audit...` and `/portcullis/v1/quarantine...`
//! (docs/audit.md). Reads take an admin or viewer key; creating and
//! lifting a quarantine take an admin key (the viewer is refused before
//! this runs, as for every Admin API write).
//!
//! - `GET audit?consumer=&route=&tier=&status=&decision=&event=&request_id=&from=&to=&limit=&cursor=`
//! - `GET audit/summary?from=&to=&group_by=consumer,route` (and the filters)
//! - `GET audit/alerts` (the `alert` events, same filters)
//! - `GET audit/verify`, `GET audit/status`, `GET audit/profiles?identity=`
//! - `GET quarantine`, `GET quarantine/{id}`, `POST quarantine`,
//!   `DELETE quarantine/{id}`
//!
//! In cluster mode (`config_source: etcd`) a quarantine is created and
//! lifted in etcd, which every node follows (`portcullis_etcd::containment`);
//! the node that served the call records the step in its own audit store.
//! The audit queries answer from this node's audit store in every mode.

use bytes::Bytes;
use portcullis_audit::quarantine::{self, CreateRequest, Spec};
use portcullis_audit::{Audit, Filter};
use portcullis_etcd::EtcdStore;
use serde_json::{json, Value};

use crate::{Admin, Ctx, Reply};

fn audit() -> Result<&'static Audit, Reply> {
    portcullis_audit::global()
        .map(|a| &**a)
        .ok_or_else(|| Reply::error(503, "the audit store is not enabled on this node"))
}

fn filter(ctx: &Ctx) -> Result<Filter, Reply> {
    Filter::from_args(|k| ctx.query.get(k).cloned()).map_err(|e| Reply::error(400, e))
}

fn ok_or_500(r: Result<Value, String>) -> Reply {
    match r {
        Ok(v) => Reply::new(200, v),
        Err(e) => {
            tracing::error!(error = %e, "audit query failed");
            Reply::error(500, format!("audit query failed: {e}"))
        }
    }
}

/// `rest` is what follows `/portcullis/v1/`, starting with `audit` or
/// `quarantine`.
pub(crate) async fn handle(admin: &Admin, ctx: &Ctx, rest: &str, body: &Bytes) -> Reply {
    let rest = rest.trim_end_matches('/');
    let result = if let Some(sub) = rest.strip_prefix("audit") {
        audit_read(ctx, sub.trim_start_matches('/'))
    } else if let Some(sub) = rest.strip_prefix("quarantine") {
        let sub = sub.trim_start_matches('/');
        match &admin.etcd {
            Some(etcd) if ctx.method != http::Method::GET => {
                quarantine_in_etcd(etcd, ctx, sub, body).await
            }
            _ => quarantine_api(ctx, sub, body),
        }
    } else {
        Err(Reply::error(404, "404 Route Not Found"))
    };
    result.unwrap_or_else(|r| r)
}

fn audit_read(ctx: &Ctx, sub: &str) -> Result<Reply, Reply> {
    if ctx.method != http::Method::GET {
        return Err(Reply::error(405, "only GET is supported here"));
    }
    let a = audit()?;
    Ok(match sub {
        "" => ok_or_500(a.query(&filter(ctx)?)),
        "alerts" => {
            let mut f = filter(ctx)?;
            f.event = Some("alert".into());
            ok_or_500(a.query(&f))
        }
        "summary" => {
            let group_by: Vec<String> = ctx
                .query
                .get("group_by")
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            match a.summary(&filter(ctx)?, &group_by) {
                Ok(v) => Reply::new(200, v),
                Err(e) if e.starts_with("invalid group_by") => Reply::error(400, e),
                Err(e) => ok_or_500(Err(e)),
            }
        }
        "verify" => ok_or_500(
            a.verify()
                .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string())),
        ),
        "status" => Reply::new(200, a.status()),
        "profiles" => Reply::new(
            200,
            a.profiles(ctx.query.get("identity").map(String::as_str)),
        ),
        _ => Reply::error(404, "404 Route Not Found"),
    })
}

fn quarantine_api(ctx: &Ctx, id: &str, body: &Bytes) -> Result<Reply, Reply> {
    let a = audit()?;
    let reg = quarantine::registry();
    Ok(match (&ctx.method, id) {
        (&http::Method::GET, "") => {
            let list: Vec<Value> = reg.list().iter().map(|s| s.to_json()).collect();
            Reply::new(200, json!({"total": list.len(), "list": list}))
        }
        (&http::Method::GET, id) => match reg.get(id) {
            Some(s) => Reply::new(200, s.to_json()),
            None => Reply::new(404, json!({"message": "no active quarantine with this id"})),
        },
        (&http::Method::POST, "") | (&http::Method::PUT, "") => {
            let spec = requested(ctx, body)?;
            match a.create_quarantine(spec, &ctx.actor, &ctx.client) {
                Ok(v) => Reply::new(201, v),
                Err(e) => Reply::error(500, e),
            }
        }
        (&http::Method::DELETE, id) if !id.is_empty() => {
            match a.lift_quarantine(id, &ctx.actor, &ctx.client) {
                Some(v) => Reply::new(200, json!({"deleted": "1", "lifted": v})),
                None => Reply::new(404, json!({"message": "no active quarantine with this id"})),
            }
        }
        _ => Reply::error(405, "not supported method for quarantine"),
    })
}

fn requested(ctx: &Ctx, body: &Bytes) -> Result<Spec, Reply> {
    let req: CreateRequest = serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, format!("invalid quarantine: {e}")))?;
    req.into_spec(&ctx.actor)
        .map_err(|e| Reply::error(400, format!("invalid quarantine: {e}")))
}

fn unavailable(e: portcullis_etcd::EtcdError) -> Reply {
    tracing::error!(error = %e, "quarantine: etcd operation failed");
    Reply::error(503, e.to_string())
}

fn not_active() -> Reply {
    Reply::new(404, json!({"message": "no active quarantine with this id"}))
}

/// Create and lift in cluster mode: etcd first (nothing happens anywhere
/// when etcd refuses), then this node's registry and audit store. The id is
/// held meanwhile, so the watch's echo of the write cannot interleave with
/// these steps; the answer is sent once this node's watch has caught up.
async fn quarantine_in_etcd(
    etcd: &EtcdStore,
    ctx: &Ctx,
    id: &str,
    body: &Bytes,
) -> Result<Reply, Reply> {
    let a = audit()?;
    let reg = quarantine::registry();
    match (&ctx.method, id) {
        (&http::Method::POST, "") | (&http::Method::PUT, "") => {
            let spec = requested(ctx, body)?;
            let _hold = reg.hold(&spec.id);
            let revision = etcd
                .put_quarantine(&spec, &ctx.actor, &ctx.client)
                .await
                .map_err(unavailable)?;
            let created = a
                .create_quarantine(spec, &ctx.actor, &ctx.client)
                .map_err(|e| Reply::error(500, e))?;
            etcd.wait_applied(revision).await;
            Ok(Reply::new(201, created))
        }
        (&http::Method::DELETE, id) if !id.is_empty() => {
            let _hold = reg.hold(id);
            let Some((spec, seen)) = etcd.get_quarantine(id).await.map_err(unavailable)? else {
                // Made here and not yet published (etcd was away): lift it here.
                return match a.lift_quarantine(id, &ctx.actor, &ctx.client) {
                    Some(v) => Ok(Reply::new(200, json!({"deleted": "1", "lifted": v}))),
                    None => Err(not_active()),
                };
            };
            if spec
                .expires_at
                .is_some_and(|e| e <= portcullis_audit::time::now_ms())
            {
                return Err(not_active());
            }
            let Some(revision) = etcd
                .delete_quarantine(&spec, seen, &ctx.actor, &ctx.client)
                .await
                .map_err(unavailable)?
            else {
                return Err(not_active());
            };
            if reg.get(id).is_none() {
                // Not seen here yet: in, so that lifting it is audited here.
                reg.insert(spec);
            }
            let lifted = a.lift_quarantine(id, &ctx.actor, &ctx.client);
            etcd.wait_applied(revision).await;
            Ok(Reply::new(200, json!({"deleted": "1", "lifted": lifted})))
        }
        _ => Err(Reply::error(405, "not supported method for quarantine")),
    }
}
