//! limit-conn: limit the requests in flight per key (APISIX's plugin of the
//! same name, built on lua-resty-limit-traffic's `limit.conn`).
//!
//! A request raises its key's count when it enters the limit phase and
//! lowers it when the request ends, whichever way it ends (answered,
//! rejected later, upstream error, client gone). Up to `conn` requests pass
//! at once; the next `burst` are delayed, by `default_conn_delay` times how
//! many `conn`-sized groups are ahead of them; beyond `conn + burst` they are
//! rejected with `rejected_code`.
//!
//! Unless `only_use_default_delay` is set, the unit delay follows the
//! observed request latency as `limit.conn` does: on each request's end it
//! becomes the mean of itself and that request's latency.
//!
//! The count is released by a guard object kept in the request head's
//! extensions; the proxy drops the request's state once the response head
//! is ready, so "in flight" lasts until the response head (a long
//! streamed response body is not counted after its head has gone).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis_core::decision::LimitState;
use portcullis_core::{ConfigError, Decision, Flow, Outcome, Phase, Plugin, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{config_hash, parse_conf, BuildContext};
use crate::limit_key::{self, KeyType, LimitKey};
use crate::limit_store::{Buckets, Expiring};
use crate::registry::PluginSpec;

pub const NAME: &str = "limit-conn";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Limit,
    priority: 1003,
    enforcing: true,
    build,
    consumer_conf: None,
    schema,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    conn: u64,
    burst: u64,
    default_conn_delay: f64,
    #[serde(default)]
    only_use_default_delay: bool,
    key: Option<String>,
    #[serde(default)]
    key_type: KeyType,
    #[serde(default = "default_rejected_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    /// Only matters for remote policies, which limit-conn does not have.
    #[serde(default)]
    #[allow(dead_code)]
    allow_degradation: bool,
    /// Checked before parsing: only `local`.
    #[serde(default)]
    #[allow(dead_code)]
    policy: Option<String>,
}

fn default_rejected_code() -> u16 {
    503
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "conn": {"type": "integer", "exclusiveMinimum": 0},
            "burst": {"type": "integer", "minimum": 0},
            "default_conn_delay": {"type": "number", "exclusiveMinimum": 0},
            "only_use_default_delay": {"type": "boolean", "default": false},
            "key": {"type": "string"},
            "key_type": {"type": "string", "enum": ["var", "var_combination", "constant"], "default": "var"},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
            "rejected_msg": {"type": "string", "minLength": 1},
            "allow_degradation": {"type": "boolean", "default": false},
            "policy": {"type": "string", "enum": ["local"], "default": "local"}
        },
        "required": ["conn", "burst", "default_conn_delay"],
        "additionalProperties": false
    })
}

/// Requests in flight for one key. Nothing to remember at zero.
#[derive(Debug, Clone, Copy, Default)]
struct InFlight(u64);

impl Expiring for InFlight {
    fn expired(&self, _now: Duration) -> bool {
        self.0 == 0
    }
}

/// What outlives reloads for one limit-conn instance.
#[derive(Default)]
struct ConnState {
    counts: Buckets<InFlight>,
    /// The current unit delay in microseconds (0: not set yet).
    unit_delay_us: AtomicU64,
}

struct LimitConn {
    conn: u64,
    burst: u64,
    default_delay: Duration,
    adapt: bool,
    key: LimitKey,
    rejected_code: StatusCode,
    rejected_msg: Option<String>,
    state: Arc<ConnState>,
}

fn state_key(ctx: &BuildContext, conf: &Value) -> String {
    format!("{}:{}:{:x}", ctx.owner, NAME, config_hash(conf))
}

fn build(raw: &Value, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    match raw.get("policy") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if p == "local" => {}
        Some(Value::String(p)) if p.starts_with("redis") => {
            return Err(ConfigError::new(
                "policy",
                format!("policy \"{p}\" is not supported by limit-conn; use \"local\""),
            ))
        }
        Some(other) => {
            return Err(ConfigError::new(
                "policy",
                format!("unknown policy {other}; expected \"local\""),
            ))
        }
    }
    let conf: Conf = parse_conf(raw)?;
    if conf.conn == 0 {
        return Err(ConfigError::new("conn", "must be greater than 0"));
    }
    if !(conf.default_conn_delay.is_finite() && conf.default_conn_delay > 0.0) {
        return Err(ConfigError::new(
            "default_conn_delay",
            "must be greater than 0",
        ));
    }
    if conf.default_conn_delay > 3600.0 {
        return Err(ConfigError::new(
            "default_conn_delay",
            "must be at most 3600 seconds",
        ));
    }
    let key = LimitKey::new(conf.key.as_deref(), conf.key_type)?;
    let rejected_code = limit_key::rejected_code(conf.rejected_code)?;
    let rejected_msg = limit_key::rejected_msg(conf.rejected_msg)?;
    let state = ctx
        .state
        .get_or_insert(&state_key(ctx, raw), ConnState::default);
    Ok(Arc::new(LimitConn {
        conn: conf.conn,
        burst: conf.burst,
        default_delay: Duration::from_secs_f64(conf.default_conn_delay),
        adapt: !conf.only_use_default_delay,
        key,
        rejected_code,
        rejected_msg,
        state,
    }))
}

/// Releases one request's place when dropped.
struct ConnGuard {
    state: Arc<ConnState>,
    key: Box<str>,
    /// When the request's own work began (after its delay), to measure its
    /// latency for the adaptive unit delay.
    started: Instant,
    adapt: bool,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.counts.update(
            &self.key,
            |_| InFlight(0),
            |n, _| n.0 = n.0.saturating_sub(1),
        );
        if self.adapt {
            let latency = self.started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
            let unit = &self.state.unit_delay_us;
            let _ = unit.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(
                    if old == 0 {
                        latency
                    } else {
                        (old + latency) / 2
                    }
                    .max(1),
                )
            });
        }
    }
}

/// The guards of the request's limit-conn instances (a route, its service
/// and global rules may each have one), dropped with the request.
#[derive(Clone, Default)]
struct ConnGuards(Vec<Arc<ConnGuard>>);

enum Verdict {
    /// Passed as the `n`-th request in flight.
    Pass(u64),
    Reject,
}

impl LimitConn {
    /// `limit.conn`'s `incoming` with commit: count the request, and take
    /// it back if that puts the key over `conn + burst`.
    fn incoming(&self, key: &str) -> Verdict {
        let max = self.conn.saturating_add(self.burst);
        self.state.counts.update(
            key,
            |_| InFlight(0),
            |n, _| {
                if n.0 >= max {
                    Verdict::Reject
                } else {
                    n.0 += 1;
                    Verdict::Pass(n.0)
                }
            },
        )
    }

    /// The wait of the `n`-th request in flight: none up to `conn`, then
    /// one unit per `conn` requests ahead.
    fn delay(&self, n: u64) -> Duration {
        if n <= self.conn {
            return Duration::ZERO;
        }
        let unit = match self.state.unit_delay_us.load(Ordering::Relaxed) {
            0 => self.default_delay,
            us if self.adapt => Duration::from_micros(us),
            _ => self.default_delay,
        };
        unit.saturating_mul(((n - 1) / self.conn).min(u64::from(u32::MAX)) as u32)
    }

    fn decision(&self, outcome: Outcome, in_flight: u64) -> Decision {
        let limit = self.conn.saturating_add(self.burst);
        Decision {
            plugin: NAME,
            outcome,
            reason: (outcome == Outcome::Reject).then_some("too many requests in flight".into()),
            limit: Some(LimitState {
                limit,
                remaining: limit.saturating_sub(in_flight),
            }),
        }
    }
}

impl Plugin for LimitConn {
    fn name(&self) -> &'static str {
        NAME
    }
    fn phase(&self) -> Phase {
        SPEC.phase
    }
    fn priority(&self) -> i32 {
        SPEC.priority
    }

    fn on_request(&self, req: &mut RequestState) -> Flow {
        let key = self.key.resolve(req);
        let n = match self.incoming(&key) {
            Verdict::Reject => {
                req.decisions
                    .push(self.decision(Outcome::Reject, self.conn.saturating_add(self.burst)));
                return Flow::Respond(limit_key::rejection(
                    self.rejected_code,
                    self.rejected_msg.as_deref(),
                ));
            }
            Verdict::Pass(n) => n,
        };
        let delay = self.delay(n);
        let guard = Arc::new(ConnGuard {
            state: self.state.clone(),
            key: key.into(),
            started: Instant::now() + delay,
            adapt: self.adapt,
        });
        match req.head.extensions.get_mut::<ConnGuards>() {
            Some(guards) => guards.0.push(guard),
            None => {
                req.head.extensions.insert(ConnGuards(vec![guard]));
            }
        }
        req.decisions.push(self.decision(Outcome::Allow, n));
        // As APISIX: delays under a millisecond are not worth a timer.
        if delay < Duration::from_millis(1) {
            return Flow::Continue;
        }
        Flow::Wait(Box::pin(async move {
            tokio::time::sleep(delay).await;
            Flow::Continue
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::ConsumerIndex;
    use crate::context::SharedState;
    use crate::registry::build_plugin;

    fn build_with(conf: Value, state: &SharedState) -> Arc<dyn Plugin> {
        let consumers = Arc::new(ConsumerIndex::default());
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state,
        };
        build_plugin(NAME, &conf, &ctx).unwrap().unwrap()
    }

    fn request() -> RequestState {
        let (head, ()) = http::Request::builder()
            .uri("/")
            .body(())
            .unwrap()
            .into_parts();
        RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080)
    }

    #[test]
    fn conn_pass_burst_wait_and_the_rest_are_rejected_until_one_ends() {
        let state = SharedState::default();
        let p = build_with(
            json!({"conn": 2, "burst": 1, "default_conn_delay": 0.1, "only_use_default_delay": true}),
            &state,
        );
        let mut held: Vec<RequestState> = Vec::new();
        for expect_wait in [false, false, true] {
            let mut req = request();
            let flow = p.on_request(&mut req);
            assert_eq!(matches!(flow, Flow::Wait(_)), expect_wait, "{flow:?}");
            assert!(!matches!(flow, Flow::Respond(_)));
            held.push(req);
        }
        let mut req = request();
        let Flow::Respond(r) = p.on_request(&mut req) else {
            panic!("expected a rejection")
        };
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(req.decisions[0].outcome, Outcome::Reject);
        // A request ending (its state dropped) frees its place.
        held.pop();
        assert!(matches!(p.on_request(&mut request()), Flow::Wait(_)));
        held.clear();
        assert!(matches!(p.on_request(&mut request()), Flow::Continue));
    }

    #[test]
    fn the_delay_grows_per_conn_sized_group() {
        let state = SharedState::default();
        let p = LimitConn {
            conn: 2,
            burst: 10,
            default_delay: Duration::from_millis(100),
            adapt: false,
            key: LimitKey::Constant("k".into()),
            rejected_code: StatusCode::SERVICE_UNAVAILABLE,
            rejected_msg: None,
            state: state.get_or_insert("x", ConnState::default),
        };
        let ms = |n| p.delay(n).as_millis();
        assert_eq!((ms(1), ms(2), ms(3), ms(4), ms(5)), (0, 0, 100, 100, 200));
    }

    #[test]
    fn unit_delay_follows_latency_unless_only_default() {
        let state = SharedState::default();
        let conf = json!({"conn": 1, "burst": 5, "default_conn_delay": 1});
        let p = build_with(conf.clone(), &state);
        let mut req = request();
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        std::thread::sleep(Duration::from_millis(20));
        drop(req);
        // Unit delay is now ~20 ms instead of 1 s.
        let mut a = request();
        assert!(matches!(p.on_request(&mut a), Flow::Continue));
        let mut b = request();
        let Flow::Wait(_) = p.on_request(&mut b) else {
            panic!("expected a delay")
        };
        let st: Arc<ConnState> = {
            let consumers = Arc::new(ConsumerIndex::default());
            let ctx = BuildContext {
                consumers: &consumers,
                owner: "routes/1",
                state: &state,
            };
            state.get_or_insert(&state_key(&ctx, &conf), ConnState::default)
        };
        let unit = st.unit_delay_us.load(Ordering::Relaxed);
        assert!((19_000..500_000).contains(&unit), "{unit}");
    }

    #[test]
    fn keys_are_counted_apart() {
        let state = SharedState::default();
        let p = build_with(
            json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "http_x_user"}),
            &state,
        );
        let from = |user: &str| {
            let (head, ()) = http::Request::builder()
                .uri("/")
                .header("x-user", user)
                .body(())
                .unwrap()
                .into_parts();
            RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080)
        };
        let mut a = from("a");
        assert!(matches!(p.on_request(&mut a), Flow::Continue));
        assert!(matches!(p.on_request(&mut from("b")), Flow::Continue));
        assert!(matches!(p.on_request(&mut from("a")), Flow::Respond(_)));
    }

    #[test]
    fn two_instances_on_one_request_both_hold_and_release() {
        let state = SharedState::default();
        let p = build_with(
            json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1}),
            &state,
        );
        let consumers = Arc::new(ConsumerIndex::default());
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "global_rules/g",
            state: &state,
        };
        let q = build_plugin(
            NAME,
            &json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1}),
            &ctx,
        )
        .unwrap()
        .unwrap();
        let mut req = request();
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        assert!(matches!(q.on_request(&mut req), Flow::Continue));
        assert!(matches!(p.on_request(&mut request()), Flow::Respond(_)));
        assert!(matches!(q.on_request(&mut request()), Flow::Respond(_)));
        drop(req);
        assert!(matches!(p.on_request(&mut request()), Flow::Continue));
        assert!(matches!(q.on_request(&mut request()), Flow::Continue));
    }

    #[test]
    fn invalid_settings_are_refused_naming_the_field() {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        let field = |conf: Value| build_plugin(NAME, &conf, &ctx).err().unwrap().field;
        assert_eq!(
            field(json!({"conn": 0, "burst": 0, "default_conn_delay": 0.1})),
            "limit-conn.conn"
        );
        assert_eq!(
            field(json!({"conn": 1, "burst": 0, "default_conn_delay": 0})),
            "limit-conn.default_conn_delay"
        );
        assert_eq!(field(json!({"conn": 1, "burst": 0})), "limit-conn");
        assert_eq!(
            field(json!({"conn": 1, "burst": 0, "default_conn_delay": 1, "policy": "redis"})),
            "limit-conn.policy"
        );
    }
}
