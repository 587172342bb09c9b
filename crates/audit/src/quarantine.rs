//! Containment: quarantines of a consumer, a credential, a client network
//! or a route, each with an action, a reason and an expiry.
//!
//! The data plane asks [`check`] once per request, right after the
//! Authenticate phase. The active set is an immutable index behind an
//! `ArcSwap`: the request side only loads a pointer and looks up hash maps;
//! a create or lift builds a new index and swaps it in, so a change applies
//! to the very next request. Expiry is checked on the request side too, so
//! a quarantine never outlives its `expires_at` even between sweeps.
//!
//! Answers:
//! - `block`: `403 {"message":"Access suspended: quarantined by the gateway"}`
//!   with `x-portcullis-quarantine: <id>`;
//! - `limit`: a token bucket of `rate` requests per second (burst `burst`,
//!   default `max(rate, 1)`) per quarantine; beyond it
//!   `429 {"error_msg":"quarantine rate limit exceeded"}`;
//! - `redirect`: `{"upstream_id": "safe"}` sends the request to that
//!   upstream instead of the route's, or `{"status": 200, "body": "...",
//!   "content_type": "application/json"}` answers with that mocked response.
//!
//! Each match adds a `quarantine` decision to the request's decision record.
//!
//! In cluster mode the registry follows a shared store (etcd) through
//! [`Replication`], [`Hold`] and the `apply_*` methods; the request side is
//! the same.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use http::{HeaderValue, StatusCode};
use ipnet::IpNet;
use portcullis_core::decision::Outcome;
use portcullis_core::{Decision, Rejection, RequestState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time;

pub const BLOCK_MESSAGE: &str = "Access suspended: quarantined by the gateway";
pub const LIMIT_MESSAGE: &str = "quarantine rate limit exceeded";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Block,
    Limit,
    Redirect,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// A quarantine as created, stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cidr: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    pub reason: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; `None`: until lifted.
    pub expires_at: Option<i64>,
    pub created_by: String,
}

/// The body of `POST /portcullis/v1/quarantine`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default)]
    pub consumer: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
    #[serde(default)]
    pub client_cidr: Option<String>,
    #[serde(default)]
    pub route: Option<String>,
    pub action: Action,
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub burst: Option<f64>,
    #[serde(default)]
    pub redirect: Option<Redirect>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds; absent or 0: until lifted.
    #[serde(default)]
    pub expires_in: Option<f64>,
}

impl CreateRequest {
    /// Check the request and make the quarantine it asks for.
    pub fn into_spec(self, actor: &str) -> Result<Spec, String> {
        let targets = [
            self.consumer.is_some(),
            self.credential.is_some(),
            self.client_cidr.is_some(),
            self.route.is_some(),
        ]
        .iter()
        .filter(|t| **t)
        .count();
        if targets != 1 {
            return Err(
                "name exactly one target: consumer, credential, client_cidr or route".into(),
            );
        }
        for (name, v) in [
            ("consumer", &self.consumer),
            ("credential", &self.credential),
            ("route", &self.route),
        ] {
            if v.as_deref() == Some("") {
                return Err(format!("{name} must not be empty"));
            }
        }
        let client_cidr = match &self.client_cidr {
            None => None,
            Some(c) => Some(match c.parse::<IpNet>() {
                Ok(n) => n,
                Err(_) => c
                    .parse::<std::net::IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| format!("client_cidr: \"{c}\" is not an address or CIDR"))?,
            }),
        };
        match self.action {
            Action::Limit => match self.rate {
                Some(r) if r.is_finite() && r > 0.0 => {}
                _ => return Err("action limit needs rate: requests per second above 0".into()),
            },
            Action::Redirect => {
                let ok = self.redirect.as_ref().is_some_and(|r| {
                    r.upstream_id.is_some() || r.body.is_some() || r.status.is_some()
                });
                if !ok {
                    return Err(
                        "action redirect needs redirect: {\"upstream_id\": ...} or {\"status\": ..., \"body\": ...}"
                            .into(),
                    );
                }
                if let Some(s) = self.redirect.as_ref().and_then(|r| r.status) {
                    if StatusCode::from_u16(s).is_err() || s < 200 {
                        return Err(format!("redirect.status: {s} is not a valid status"));
                    }
                }
            }
            Action::Block => {}
        }
        if let Some(b) = self.burst {
            if !(b.is_finite() && b >= 1.0) {
                return Err("burst must be at least 1".into());
            }
        }
        let expires_in = self.expires_in.unwrap_or(0.0);
        if !(expires_in.is_finite() && expires_in >= 0.0) {
            return Err("expires_in must be a number of seconds".into());
        }
        let now = time::now_ms();
        Ok(Spec {
            id: format!("q-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            consumer: self.consumer,
            credential: self.credential,
            client_cidr,
            route: self.route,
            action: self.action,
            rate: self.rate,
            burst: self.burst,
            redirect: self.redirect,
            reason: self.reason.unwrap_or_default(),
            created_at: now,
            expires_at: (expires_in > 0.0).then(|| now + (expires_in * 1000.0) as i64),
            created_by: actor.to_string(),
        })
    }
}

impl Spec {
    /// `consumer:order-service`, `route:admin`, ...
    pub fn target(&self) -> String {
        if let Some(c) = &self.consumer {
            format!("consumer:{c}")
        } else if let Some(c) = &self.credential {
            format!("credential:{c}")
        } else if let Some(c) = &self.client_cidr {
            format!("client_cidr:{c}")
        } else {
            format!("route:{}", self.route.as_deref().unwrap_or_default())
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("target".into(), Value::String(self.target()));
            m.insert(
                "created".into(),
                Value::String(time::format(self.created_at)),
            );
            m.insert(
                "expires".into(),
                self.expires_at
                    .map_or(Value::Null, |e| Value::String(time::format(e))),
            );
        }
        v
    }
}

struct Bucket {
    tokens: f64,
    last: std::time::Instant,
}

struct Entry {
    spec: Spec,
    bucket: Mutex<Bucket>,
    header: HeaderValue,
}

impl Entry {
    fn new(spec: Spec) -> Arc<Entry> {
        let burst = spec.burst.unwrap_or(spec.rate.unwrap_or(1.0).max(1.0));
        Arc::new(Entry {
            header: HeaderValue::from_str(&spec.id)
                .unwrap_or(HeaderValue::from_static("quarantine")),
            spec,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                last: std::time::Instant::now(),
            }),
        })
    }

    fn live(&self, now: i64) -> bool {
        Entry::live_at(&self.spec, now)
    }

    fn live_at(spec: &Spec, now: i64) -> bool {
        spec.expires_at.is_none_or(|e| now < e)
    }

    /// Take a token; false when the bucket is empty.
    fn take(&self) -> bool {
        let rate = self.spec.rate.unwrap_or(1.0);
        let burst = self.spec.burst.unwrap_or(rate.max(1.0));
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct Active {
    by_consumer: HashMap<String, Arc<Entry>>,
    by_credential: HashMap<String, Arc<Entry>>,
    by_route: HashMap<String, Arc<Entry>>,
    cidrs: Vec<(IpNet, Arc<Entry>)>,
    count: usize,
}

/// The node's quarantines.
pub struct Quarantines {
    active: ArcSwap<Active>,
    /// The source of truth for rebuilding `active`, by id.
    specs: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Cluster mode: where quarantines made on this node are published.
    replication: OnceLock<Arc<dyn Replication>>,
    /// Ids a local operation holds (see [`Quarantines::hold`]): how many
    /// holds, and the shared store's latest word on the id meanwhile.
    holds: Mutex<HashMap<String, Held>>,
}

#[derive(Default)]
struct Held {
    count: usize,
    /// `Some(Some(spec))`: stored; `Some(None)`: deleted; `None`: no word.
    deferred: Option<Option<Spec>>,
}

/// The process's quarantines.
pub fn registry() -> &'static Quarantines {
    static Q: OnceLock<Quarantines> = OnceLock::new();
    Q.get_or_init(Quarantines::empty)
}

/// Cluster mode (`config_source: etcd`): quarantines live in a store every
/// node shares and watches, and each node's registry follows it through
/// [`Quarantines::apply_put`], [`Quarantines::apply_delete`] and
/// [`Quarantines::apply_all`]. A quarantine made on this node other than
/// through the Admin API (the anomaly detector's) is handed to
/// `publish` by [`Quarantines::insert`], with a hold on its id that the
/// publisher keeps until the store has it.
pub trait Replication: Send + Sync {
    fn publish(&self, spec: Spec, hold: Hold);
    fn withdraw(&self, spec: Spec, hold: Hold);
}

/// A local operation on one quarantine id (an Admin API create or lift in
/// cluster mode, a publication). While it is held, what the shared store
/// says about the id is kept aside rather than applied, so the operation's
/// own steps (store, audit, registry) cannot interleave with the echo of
/// them; when the last hold drops, the store's latest word is applied.
/// Inserts and removals made under a hold are not published.
pub struct Hold {
    registry: &'static Quarantines,
    id: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let deferred = {
            let mut holds = self
                .registry
                .holds
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let Some(h) = holds.get_mut(&self.id) else {
                return;
            };
            h.count = h.count.saturating_sub(1);
            if h.count > 0 {
                return;
            }
            holds.remove(&self.id).and_then(|h| h.deferred)
        };
        match deferred {
            Some(Some(spec)) => self.registry.set_if_changed(spec),
            Some(None) => {
                self.registry.drop_spec(&self.id);
            }
            None => {}
        }
    }
}

/// Set on the request by a `redirect` to an upstream: the proxy sends the
/// request to this upstream id instead of the route's.
#[derive(Debug, Clone)]
pub struct SafeUpstream(pub String);

impl Quarantines {
    fn empty() -> Quarantines {
        Quarantines {
            active: ArcSwap::from_pointee(Active::default()),
            specs: Mutex::new(BTreeMap::new()),
            replication: OnceLock::new(),
            holds: Mutex::new(HashMap::new()),
        }
    }

    fn rebuild(&self, specs: &BTreeMap<String, Arc<Entry>>) {
        let mut a = Active::default();
        // Oldest first, so the first quarantine of a target stays in force
        // when two name the same one.
        let mut entries: Vec<&Arc<Entry>> = specs.values().collect();
        entries.sort_by_key(|e| e.spec.created_at);
        for e in entries {
            let s = &e.spec;
            if let Some(c) = &s.consumer {
                a.by_consumer.entry(c.clone()).or_insert_with(|| e.clone());
            } else if let Some(c) = &s.credential {
                a.by_credential
                    .entry(c.clone())
                    .or_insert_with(|| e.clone());
            } else if let Some(r) = &s.route {
                a.by_route.entry(r.clone()).or_insert_with(|| e.clone());
            } else if let Some(n) = s.client_cidr {
                a.cidrs.push((n, e.clone()));
            }
            a.count += 1;
        }
        self.active.store(Arc::new(a));
    }

    /// Make `spec` active now. In cluster mode, unless its id is held, it
    /// is published to the other nodes too.
    pub fn insert(&'static self, spec: Spec) {
        let publish = self.unheld_replication(&spec.id);
        {
            let mut specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
            specs.insert(spec.id.clone(), Entry::new(spec.clone()));
            self.rebuild(&specs);
        }
        if let Some((r, hold)) = publish {
            r.publish(spec, hold);
        }
    }

    /// Lift one; returns it when it was active. In cluster mode, unless its
    /// id is held, the other nodes are told too.
    pub fn remove(&'static self, id: &str) -> Option<Spec> {
        let withdraw = self.unheld_replication(id);
        let gone = self.drop_spec(id)?;
        if let Some((r, hold)) = withdraw {
            r.withdraw(gone.clone(), hold);
        }
        Some(gone)
    }

    fn drop_spec(&self, id: &str) -> Option<Spec> {
        let mut specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
        let gone = specs.remove(id)?;
        self.rebuild(&specs);
        Some(gone.spec.clone())
    }

    /// Insert unless the same quarantine is already active (a limit's
    /// bucket is kept) or it has expired.
    fn set_if_changed(&self, spec: Spec) {
        if !Entry::live_at(&spec, time::now_ms()) {
            return;
        }
        let mut specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
        if specs.get(&spec.id).is_some_and(|e| e.spec == spec) {
            return;
        }
        specs.insert(spec.id.clone(), Entry::new(spec));
        self.rebuild(&specs);
    }

    /// The replication and a hold on `id`, when there is a replication and
    /// nobody holds `id` yet.
    fn unheld_replication(&'static self, id: &str) -> Option<(Arc<dyn Replication>, Hold)> {
        let r = self.replication.get()?.clone();
        if self
            .holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
        {
            return None;
        }
        Some((r, self.hold(id)))
    }

    /// Cluster mode: publish what this node makes through `r` from now on.
    /// Set once; later calls are ignored.
    pub fn set_replication(&self, r: Arc<dyn Replication>) {
        let _ = self.replication.set(r);
    }

    /// Hold `id` for a local operation (see [`Hold`]).
    pub fn hold(&'static self, id: &str) -> Hold {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        holds.entry(id.to_string()).or_default().count += 1;
        Hold {
            registry: self,
            id: id.to_string(),
        }
    }

    /// `true` when `id` is held: the word is kept for the hold's end.
    fn defer(&self, id: &str, word: Option<Spec>) -> bool {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        match holds.get_mut(id) {
            Some(h) => {
                h.deferred = Some(word);
                true
            }
            None => false,
        }
    }

    /// The shared store holds `spec` (cluster mode): make it active here,
    /// unless it already is or has expired. Not published back.
    pub fn apply_put(&self, spec: Spec) {
        if !self.defer(&spec.id, Some(spec.clone())) {
            self.set_if_changed(spec);
        }
    }

    /// The shared store no longer holds `id` (cluster mode): lift it here.
    /// Not published back.
    pub fn apply_delete(&self, id: &str) {
        if !self.defer(id, None) {
            self.drop_spec(id);
        }
    }

    /// The shared store holds exactly `all` (cluster mode, a full load):
    /// make this node's set the same. Held ids keep the word for later.
    pub fn apply_all(&self, all: Vec<Spec>) {
        let now = time::now_ms();
        let mut incoming: BTreeMap<String, Spec> = BTreeMap::new();
        for spec in all {
            if !self.defer(&spec.id, Some(spec.clone())) {
                incoming.insert(spec.id.clone(), spec);
            }
        }
        let mut specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = specs
            .keys()
            .filter(|id| !incoming.contains_key(*id))
            .cloned()
            .collect();
        let mut changed = false;
        for id in gone {
            if !self.defer(&id, None) {
                specs.remove(&id);
                changed = true;
            }
        }
        for (id, spec) in incoming {
            let same = specs.get(&id).is_some_and(|e| e.spec == spec);
            if !same && Entry::live_at(&spec, now) {
                specs.insert(id, Entry::new(spec));
                changed = true;
            }
        }
        if changed {
            self.rebuild(&specs);
        }
    }

    /// Remove and return every quarantine whose expiry has passed.
    pub fn take_expired(&self, now: i64) -> Vec<Spec> {
        let mut specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<String> = specs
            .values()
            .filter(|e| !e.live(now))
            .map(|e| e.spec.id.clone())
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        let out = due
            .iter()
            .filter_map(|id| specs.remove(id))
            .map(|e| e.spec.clone())
            .collect();
        self.rebuild(&specs);
        out
    }

    pub fn list(&self) -> Vec<Spec> {
        let specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Spec> = specs.values().map(|e| e.spec.clone()).collect();
        v.sort_by_key(|s| s.created_at);
        v
    }

    pub fn get(&self, id: &str) -> Option<Spec> {
        let specs = self.specs.lock().unwrap_or_else(|p| p.into_inner());
        specs.get(id).map(|e| e.spec.clone())
    }

    /// An active quarantine with the same target and action, if any.
    pub fn find_target(&self, target: &str) -> Option<Spec> {
        self.list().into_iter().find(|s| s.target() == target)
    }

    pub fn active_count(&self) -> usize {
        self.active.load().count
    }
}

/// The data plane's check, after Authenticate. `None`: carry on (a
/// `redirect` to an upstream sets [`SafeUpstream`] on the request).
pub fn check(st: &mut RequestState) -> Option<Rejection> {
    let active = registry().active.load();
    if active.count == 0 {
        return None;
    }
    let now = time::now_ms();
    let found = st
        .identity
        .as_ref()
        .and_then(|id| {
            active
                .by_consumer
                .get(&*id.consumer.username)
                .filter(|e| e.live(now))
                .or_else(|| {
                    id.credential_id
                        .as_deref()
                        .and_then(|c| active.by_credential.get(c))
                        .filter(|e| e.live(now))
                })
        })
        .or_else(|| active.by_route.get(&*st.route.id).filter(|e| e.live(now)))
        .or_else(|| {
            active
                .cidrs
                .iter()
                .find(|(n, e)| n.contains(&st.client_ip) && e.live(now))
                .map(|(_, e)| e)
        })?
        .clone();
    drop(active);
    let s = &found.spec;
    let reason = |what: &str| -> std::borrow::Cow<'static, str> {
        format!("{what} by quarantine {} ({})", s.id, s.target()).into()
    };
    let (outcome, answer) = match s.action {
        Action::Block => (
            Outcome::Reject,
            Some(
                Rejection::message(StatusCode::FORBIDDEN, BLOCK_MESSAGE).with_header(
                    http::HeaderName::from_static("x-portcullis-quarantine"),
                    found.header.clone(),
                ),
            ),
        ),
        Action::Limit => {
            if found.take() {
                (Outcome::Allow, None)
            } else {
                (
                    Outcome::Reject,
                    Some(
                        Rejection::error_msg(StatusCode::TOO_MANY_REQUESTS, LIMIT_MESSAGE)
                            .with_header(
                                http::HeaderName::from_static("x-portcullis-quarantine"),
                                found.header.clone(),
                            ),
                    ),
                )
            }
        }
        Action::Redirect => {
            let r = s.redirect.clone().unwrap_or_default();
            match r.upstream_id {
                Some(up) => {
                    st.head.extensions.insert(SafeUpstream(up));
                    (Outcome::Allow, None)
                }
                None => {
                    let status = r
                        .status
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .unwrap_or(StatusCode::OK);
                    let mut rej = Rejection::plain(status, r.body.unwrap_or_default());
                    rej.headers.clear();
                    let ct = r
                        .content_type
                        .as_deref()
                        .and_then(|c| HeaderValue::from_str(c).ok())
                        .unwrap_or(HeaderValue::from_static("application/json"));
                    rej.headers.push((http::header::CONTENT_TYPE, ct));
                    rej.headers.push((
                        http::HeaderName::from_static("x-portcullis-quarantine"),
                        found.header.clone(),
                    ));
                    (Outcome::Reject, Some(rej))
                }
            }
        }
    };
    st.decisions.push(Decision {
        plugin: "quarantine",
        outcome,
        reason: Some(match (s.action, &answer) {
            (Action::Block, _) => reason("blocked"),
            (Action::Limit, Some(_)) => reason("rate limited"),
            (Action::Limit, None) => reason("within the rate"),
            (Action::Redirect, Some(_)) => reason("answered with a mock"),
            (Action::Redirect, None) => reason("sent to the safe upstream"),
        }),
        limit: None,
    });
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> &'static Quarantines {
        Box::leak(Box::new(Quarantines::empty()))
    }

    fn spec(id: &str, consumer: &str, expires_at: Option<i64>) -> Spec {
        Spec {
            id: id.into(),
            consumer: Some(consumer.into()),
            credential: None,
            client_cidr: None,
            route: None,
            action: Action::Block,
            rate: None,
            burst: None,
            redirect: None,
            reason: String::new(),
            created_at: 1,
            expires_at,
            created_by: "ops".into(),
        }
    }

    fn ids(q: &Quarantines) -> Vec<String> {
        q.list().into_iter().map(|s| s.id).collect()
    }

    #[derive(Default)]
    struct Recorder {
        published: Mutex<Vec<String>>,
        withdrawn: Mutex<Vec<String>>,
    }

    impl Replication for Recorder {
        fn publish(&self, spec: Spec, _hold: Hold) {
            self.published.lock().unwrap().push(spec.id);
        }
        fn withdraw(&self, spec: Spec, _hold: Hold) {
            self.withdrawn.lock().unwrap().push(spec.id);
        }
    }

    #[test]
    fn the_shared_store_s_word_is_applied_and_a_full_load_replaces_the_set() {
        let q = fresh();
        q.apply_put(spec("q-1", "alice", None));
        q.apply_put(spec("q-2", "bob", None));
        // Already expired: not applied.
        q.apply_put(spec("q-3", "carol", Some(1)));
        assert_eq!(ids(q), ["q-1", "q-2"]);
        assert_eq!(q.active_count(), 2);
        q.apply_delete("q-1");
        assert_eq!(ids(q), ["q-2"]);
        q.apply_all(vec![spec("q-4", "dave", None), spec("q-5", "eve", Some(1))]);
        assert_eq!(ids(q), ["q-4"]);
        assert_eq!(q.active_count(), 1);
    }

    #[test]
    fn a_hold_keeps_the_store_s_word_until_it_ends() {
        let q = fresh();
        q.apply_put(spec("q-1", "alice", None));
        {
            let first = q.hold("q-1");
            let _second = q.hold("q-1");
            q.apply_delete("q-1");
            q.apply_all(Vec::new());
            assert_eq!(ids(q), ["q-1"], "deferred while held");
            drop(first);
            assert_eq!(ids(q), ["q-1"], "still held once");
        }
        assert!(ids(q).is_empty(), "applied when the last hold ends");

        // The latest word wins: deleted, then stored again.
        let hold = q.hold("q-2");
        q.apply_delete("q-2");
        q.apply_put(spec("q-2", "bob", None));
        drop(hold);
        assert_eq!(ids(q), ["q-2"]);
        // No word: a local insert under a hold stays.
        let hold = q.hold("q-3");
        q.insert(spec("q-3", "carol", None));
        drop(hold);
        assert_eq!(ids(q), ["q-2", "q-3"]);
    }

    #[test]
    fn local_inserts_and_removals_are_published_unless_held() {
        let q = fresh();
        let r = Arc::new(Recorder::default());
        q.set_replication(r.clone());
        q.insert(spec("q-1", "alice", None));
        {
            let _hold = q.hold("q-2");
            q.insert(spec("q-2", "bob", None));
            q.remove("q-2");
        }
        q.remove("q-1");
        // What the store says is never published back.
        q.apply_put(spec("q-3", "carol", None));
        q.apply_delete("q-3");
        assert_eq!(*r.published.lock().unwrap(), ["q-1"]);
        assert_eq!(*r.withdrawn.lock().unwrap(), ["q-1"]);
    }
}
