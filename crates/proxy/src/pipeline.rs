//! Runs a route's plugins phase by phase (docs/phases.md is the contract).
//! Here, once, are the rules every plugin relies on: order, early answers,
//! deferred decisions, dry-run, multi-auth, and the decision trail.

use portcullis_config::CompiledRoute;
use portcullis_core::decision::Outcome;
use portcullis_core::{Decision, Flow, Phase, Plugin, Rejection, RequestState};

/// Await a plugin's answer, however it came.
async fn decide(plugin: &dyn Plugin, req: &mut RequestState) -> Option<Rejection> {
    let mut flow = plugin.on_request(req);
    let mut retries = 0;
    loop {
        match flow {
            Flow::Continue => return None,
            Flow::Respond(r) => return Some(r),
            Flow::Wait(fut) => flow = fut.await,
            Flow::Retry(fut) if retries < portcullis_core::phase::MAX_RETRIES => {
                retries += 1;
                fut.await;
                flow = plugin.on_request(req);
            }
            Flow::Retry(_) => {
                tracing::warn!(plugin = plugin.name(), "plugin kept asking to retry");
                return Some(Rejection::error_msg(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "service temporarily unavailable",
                ));
            }
        }
    }
}

/// Record the plugin's outcome unless it recorded a richer one itself.
fn record(plugin: &dyn Plugin, req: &mut RequestState, outcome: Outcome, status: Option<u16>) {
    let name = plugin.name();
    if let Some(last) = req.decisions.last_mut() {
        if last.plugin == name {
            // The plugin explained itself; dry-run softens what it said.
            if outcome == Outcome::WouldReject {
                last.outcome = Outcome::WouldReject;
            }
            return;
        }
    }
    req.decisions.push(Decision {
        plugin: name,
        outcome,
        reason: status.map(|s| {
            if outcome == Outcome::WouldReject {
                format!("would have rejected with {s}").into()
            } else {
                format!("rejected with {s}").into()
            }
        }),
        limit: None,
    });
}

/// Run one plugin: returns the rejection to answer with, if any.
async fn run_one(
    plugin: &dyn Plugin,
    req: &mut RequestState,
    enforcing_phase: bool,
) -> Option<Rejection> {
    let rejection = decide(plugin, req).await;
    match rejection {
        None => {
            if enforcing_phase {
                record(plugin, req, Outcome::Allow, None);
            }
            None
        }
        Some(r) if plugin.dry_run() => {
            record(plugin, req, Outcome::WouldReject, Some(r.status.as_u16()));
            None
        }
        Some(r) => {
            record(plugin, req, Outcome::Reject, Some(r.status.as_u16()));
            Some(r)
        }
    }
}

fn is_enforcing(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Authenticate | Phase::Authorize | Phase::Limit | Phase::Validate
    )
}

/// Run every plugin of `phase` in order. The first rejection ends the
/// request, except in Authenticate: there the first plugin that
/// authenticates wins, and only if none does is the first rejection answered
/// (APISIX's multi-auth).
pub async fn run_phase(
    route: &CompiledRoute,
    phase: Phase,
    req: &mut RequestState,
) -> Option<Rejection> {
    let plugins = route.plugins_in(phase);
    if plugins.is_empty() {
        return None;
    }
    let enforcing = is_enforcing(phase);
    if phase != Phase::Authenticate {
        for plugin in plugins {
            if let Some(r) = run_one(plugin.as_ref(), req, enforcing).await {
                return Some(r);
            }
        }
        return None;
    }
    let mut first_rejection = None;
    for plugin in plugins {
        if req.identity.is_some() {
            break;
        }
        let decisions_before = req.decisions.len();
        match decide(plugin.as_ref(), req).await {
            None => record(plugin.as_ref(), req, Outcome::Allow, None),
            Some(r) => {
                // A failed attempt is only a rejection if no other auth
                // plugin succeeds; keep the trail short and honest.
                req.decisions.truncate(decisions_before);
                first_rejection.get_or_insert((plugin.clone(), r));
            }
        }
    }
    if req.identity.is_some() {
        return None;
    }
    let (plugin, r) = first_rejection?;
    if plugin.dry_run() {
        record(
            plugin.as_ref(),
            req,
            Outcome::WouldReject,
            Some(r.status.as_u16()),
        );
        return None;
    }
    record(
        plugin.as_ref(),
        req,
        Outcome::Reject,
        Some(r.status.as_u16()),
    );
    Some(r)
}
