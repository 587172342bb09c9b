//! Behaviour profiles per identity and the detectors that read them.
//!
//! An identity is a consumer name, or `client:<ip>` for requests no
//! credential was attributed to (those only feed the failure detector).
//! Profiles are fed from the audit writer thread, never from a request,
//! and saved to the audit file's `profiles` table, so they survive reloads
//! and restarts.
//!
//! Detectors:
//! - `new_route`: a method + route the identity never called, once its
//!   learning period (since it was first seen) is over;
//! - `rate_spike`: requests in the current rate bucket above `spike_factor`
//!   × the identity's EWMA baseline (and at least `spike_min_requests`),
//!   once learned;
//! - `failure_burst`: `burst_threshold` authentication, authorization or
//!   validation failures within `burst_window` seconds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::settings::{AnomalySettings, Mode};
use crate::store::layout::{
    CLIENT, CONSUMER, DECISION, EVENT, METHOD, PATH, PLUGIN, REQUEST_ID, ROUTE, TIER,
};
use crate::store::Fields;
use crate::time;

const EVIDENCE: usize = 20;
const MAX_PROFILES: usize = 100_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    /// Unix ms of the first request seen.
    pub first_seen: i64,
    pub last_seen: i64,
    /// `METHOD route-id` → requests.
    pub routes: BTreeMap<String, u64>,
    pub requests: u64,
    pub auth_failures: u64,
    pub authorization_failures: u64,
    pub validation_failures: u64,
    /// Requests per rate bucket, smoothed.
    pub baseline: f64,
    /// Rate buckets seen (the baseline is trusted after a few).
    pub buckets: u64,
    pub bucket_start: i64,
    pub bucket_count: u64,
    #[serde(skip)]
    bucket_ids: Vec<String>,
    #[serde(skip)]
    spike_alerted: bool,
    #[serde(skip)]
    failures: VecDeque<(i64, Option<String>)>,
}

impl Profile {
    pub fn to_json(&self, identity: &str) -> Value {
        let rate = |n: u64| {
            if self.requests == 0 {
                0.0
            } else {
                n as f64 / self.requests as f64
            }
        };
        json!({
            "identity": identity,
            "first_seen": time::format(self.first_seen),
            "last_seen": time::format(self.last_seen),
            "routes": self.routes,
            "requests": self.requests,
            "baseline_per_window": self.baseline,
            "auth_failure_rate": rate(self.auth_failures),
            "authorization_failure_rate": rate(self.authorization_failures),
            "validation_failure_rate": rate(self.validation_failures),
            "auth_failures": self.auth_failures,
            "authorization_failures": self.authorization_failures,
            "validation_failures": self.validation_failures,
        })
    }
}

/// What a detector found.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub detector: &'static str,
    pub identity: String,
    /// Set when the identity is a consumer.
    pub consumer: Option<String>,
    pub client: Option<String>,
    pub route: Option<String>,
    pub tier: Option<String>,
    pub detail: String,
    pub evidence: Vec<String>,
    pub mode: Mode,
    /// Unix ms.
    pub time: i64,
}

impl Alert {
    pub fn to_json(&self) -> Value {
        json!({
            "type": "portcullis.anomaly/v1",
            "time": time::format(self.time),
            "detector": self.detector,
            "identity": self.identity,
            "consumer": self.consumer,
            "route": self.route,
            "tier": self.tier,
            "detail": self.detail,
            "evidence": {"request_ids": self.evidence},
            "mode": self.mode.as_str(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Auth,
    Authorization,
    Validation,
}

fn failure_of(row: &Fields<'_>) -> Option<Failure> {
    if !row.is(DECISION, "reject") && !row.is(DECISION, "error") {
        return None;
    }
    let plugin = row.str(PLUGIN).unwrap_or("");
    if plugin == "quarantine" || plugin.starts_with("limit-") {
        return None;
    }
    if plugin.ends_with("-auth") || (plugin.is_empty() && row.status == 401) {
        Some(Failure::Auth)
    } else if plugin.ends_with("-restriction")
        || plugin == "uri-blocker"
        || plugin == "opa"
        || (plugin.is_empty() && row.status == 403)
    {
        Some(Failure::Authorization)
    } else if plugin == "request-validation"
        || (plugin.is_empty() && matches!(row.status, 400 | 413 | 422))
    {
        Some(Failure::Validation)
    } else {
        None
    }
}

#[derive(Default)]
pub struct Profiles {
    pub map: HashMap<String, Profile>,
    pub dirty: HashSet<String>,
    /// `METHOD route` of the record being fed (reused: no allocation per
    /// record).
    route_key: String,
}

impl Profiles {
    /// Feed one request record; return what the detectors found. Allocates
    /// only for what is new (an identity, a route, an alert) and for
    /// evidence (a few request ids per rate bucket, failures).
    pub fn observe(&mut self, row: &Fields<'_>, s: &AnomalySettings) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if !row.is(EVENT, "request") {
            return alerts;
        }
        let failure = failure_of(row);
        let consumer = row.str(CONSUMER);
        let client = row.str(CLIENT);
        let anonymous;
        let identity: &str = match (consumer, client) {
            (Some(c), _) => c,
            // Anonymous requests only feed the failure detector.
            (None, Some(ip)) if failure.is_some() => {
                anonymous = format!("client:{ip}");
                &anonymous
            }
            _ => return alerts,
        };
        let now = row.time;
        let p = match self.map.get_mut(identity) {
            Some(p) => p,
            None => {
                if self.map.len() >= MAX_PROFILES {
                    return alerts;
                }
                self.map
                    .entry(identity.to_string())
                    .or_insert_with(|| Profile {
                        first_seen: now,
                        bucket_start: now,
                        ..Profile::default()
                    })
            }
        };
        if !self.dirty.contains(identity) {
            self.dirty.insert(identity.to_string());
        }
        p.last_seen = now;
        p.requests += 1;
        let learned = (now - p.first_seen) as f64 >= s.learning_period * 1000.0;
        let tier = row.str(TIER);
        let route = row.str(ROUTE);
        let request_id = row.str(REQUEST_ID);
        let mut alert = |detector: &'static str, detail: String, evidence: Vec<String>| {
            let mode = s.mode_of(detector, tier);
            if mode != Mode::Learn {
                alerts.push(Alert {
                    detector,
                    identity: identity.to_string(),
                    consumer: consumer.map(str::to_string),
                    client: client.map(str::to_string),
                    route: route.map(str::to_string),
                    tier: tier.map(str::to_string),
                    detail,
                    evidence,
                    mode,
                    time: now,
                });
            }
        };

        // new_route
        if let (Some(_), Some(route)) = (consumer, route) {
            let key = &mut self.route_key;
            key.clear();
            key.push_str(row.str(METHOD).unwrap_or("-"));
            key.push(' ');
            key.push_str(route);
            let first = match p.routes.get_mut(key.as_str()) {
                Some(n) => {
                    *n += 1;
                    false
                }
                None => {
                    p.routes.insert(key.clone(), 1);
                    true
                }
            };
            if first && learned {
                alert(
                    "new_route",
                    format!(
                        "first call of {key}{} after the learning period",
                        tier.map(|t| format!(" (tier {t})")).unwrap_or_default()
                    ),
                    request_id.map(str::to_string).into_iter().collect(),
                );
            }
        }

        // rate_spike: close the buckets that ended, then test the current one.
        if consumer.is_some() {
            let window = (s.rate_window * 1000.0).max(1.0) as i64;
            let mut closed = 0;
            while now >= p.bucket_start + window && closed < 1000 {
                let n = p.bucket_count as f64;
                p.baseline = if p.buckets == 0 {
                    n
                } else {
                    0.3 * n + 0.7 * p.baseline
                };
                p.buckets += 1;
                p.bucket_count = 0;
                p.bucket_ids.clear();
                p.spike_alerted = false;
                p.bucket_start += window;
                closed += 1;
            }
            if now >= p.bucket_start + window {
                p.bucket_start = now;
            }
            p.bucket_count += 1;
            if p.bucket_ids.len() < EVIDENCE {
                if let Some(id) = request_id {
                    p.bucket_ids.push(id.to_string());
                }
            }
            let limit = s.spike_factor * p.baseline.max(1.0);
            if learned
                && p.buckets >= 3
                && !p.spike_alerted
                && p.bucket_count >= s.spike_min_requests
                && p.bucket_count as f64 > limit
            {
                p.spike_alerted = true;
                alert(
                    "rate_spike",
                    format!(
                        "{} requests in {}s against a baseline of {:.1}",
                        p.bucket_count, s.rate_window, p.baseline
                    ),
                    p.bucket_ids.clone(),
                );
            }
        }

        // failure_burst
        if let Some(f) = failure {
            match f {
                Failure::Auth => p.auth_failures += 1,
                Failure::Authorization => p.authorization_failures += 1,
                Failure::Validation => p.validation_failures += 1,
            }
            let window = (s.burst_window * 1000.0) as i64;
            p.failures.push_back((now, request_id.map(str::to_string)));
            while p.failures.front().is_some_and(|(t, _)| *t + window < now) {
                p.failures.pop_front();
            }
            if p.failures.len() >= s.burst_threshold.max(1) as usize {
                let evidence: Vec<String> = p
                    .failures
                    .iter()
                    .filter_map(|(_, id)| id.clone())
                    .rev()
                    .take(EVIDENCE)
                    .collect();
                let n = p.failures.len();
                p.failures.clear();
                alert(
                    "failure_burst",
                    format!(
                        "{n} authentication, authorization or validation failures within {}s (last: {} {} → {})",
                        s.burst_window,
                        row.str(METHOD).unwrap_or("-"),
                        row.str(PATH).unwrap_or("-"),
                        row.status
                    ),
                    evidence,
                );
            }
        }
        alerts
    }

    /// The identities whose profile changed since the last call, and their
    /// state as JSON.
    pub fn take_dirty(&mut self) -> Vec<(String, String)> {
        let dirty: Vec<String> = self.dirty.drain().collect();
        dirty
            .into_iter()
            .filter_map(|id| {
                let p = self.map.get(&id)?;
                Some((id, serde_json::to_string(p).ok()?))
            })
            .collect()
    }

    pub fn load(&mut self, rows: Vec<(String, String)>) {
        for (id, state) in rows {
            if let Ok(p) = serde_json::from_str::<Profile>(&state) {
                self.map.insert(id, p);
            }
        }
    }

    pub fn routes_of(&self, identity: &str) -> BTreeSet<String> {
        self.map
            .get(identity)
            .map(|p| p.routes.keys().cloned().collect())
            .unwrap_or_default()
    }
}
