//! limit-req: throttle a request rate with a leaky bucket (APISIX's plugin
//! of the same name, which uses lua-resty-limit-traffic's `limit.req`).
//!
//! Requests up to `rate` per second pass at once; up to `burst` more are
//! delayed so that they leave at `rate` (or pass at once with `nodelay`);
//! beyond that they are rejected with `rejected_code`. Each key has its own
//! bucket. Without `key`, portcullis counts by the authenticated consumer,
//! else by the client address (APISIX requires `key`).
//!
//! Policies: `local` (buckets in this process) and `redis` / `redis-cluster`
//! (one bucket per key in Redis, updated by an atomic script on Redis's
//! clock, shared by every gateway process; see [`crate::redis_policy`]).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use portcullis_core::decision::LimitState;
use portcullis_core::{ConfigError, Decision, Flow, Outcome, Phase, Plugin, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{config_hash, parse_conf, BuildContext};
use crate::limit_key::{self, KeyType, LimitKey};
use crate::limit_store::{Buckets, Expiring};
use crate::redis_policy::{self, RedisLimiter};
use crate::registry::PluginSpec;

pub const NAME: &str = "limit-req";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Limit,
    priority: 1001,
    enforcing: true,
    build,
    consumer_conf: None,
    schema,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    rate: f64,
    burst: f64,
    key: Option<String>,
    #[serde(default)]
    key_type: KeyType,
    #[serde(default = "default_rejected_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    #[serde(default)]
    nodelay: bool,
    /// Read by [`redis_policy::split`]: what to do when Redis is away.
    #[serde(default)]
    #[allow(dead_code)]
    allow_degradation: bool,
}

fn default_rejected_code() -> u16 {
    503
}

fn schema() -> Value {
    let mut schema = json!({
        "type": "object",
        "properties": {
            "rate": {"type": "number", "exclusiveMinimum": 0},
            "burst": {"type": "number", "minimum": 0},
            "key": {"type": "string"},
            "key_type": {"type": "string", "enum": ["var", "var_combination", "constant"], "default": "var"},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
            "rejected_msg": {"type": "string", "minLength": 1},
            "nodelay": {"type": "boolean", "default": false},
            "allow_degradation": {"type": "boolean", "default": false}
        },
        "required": ["rate", "burst"],
        "additionalProperties": false
    });
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        props.extend(redis_policy::schema_properties());
    }
    schema
}

/// One key's bucket, in thousandths of a request as limit.req keeps it, so
/// that fractional rates and bursts count exactly.
#[derive(Debug, Clone, Copy)]
struct Leaky {
    excess: u64,
    last: Duration,
    /// From then on the bucket is as good as new: nothing to remember.
    empty_at: Duration,
}

impl Expiring for Leaky {
    fn expired(&self, now: Duration) -> bool {
        now >= self.empty_at
    }
}

struct LimitReq {
    /// Requests per second, in thousandths.
    rate: u64,
    /// Burst, in thousandths of a request.
    burst: u64,
    key: LimitKey,
    rejected_code: StatusCode,
    rejected_msg: Option<String>,
    nodelay: bool,
    store: Store,
}

enum Store {
    Local(Arc<Buckets<Leaky>>),
    Redis(RedisLimiter),
}

fn state_key(ctx: &BuildContext, conf: &Value) -> String {
    format!("{}:{}:{:x}", ctx.owner, NAME, config_hash(conf))
}

fn build(raw: &Value, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    let state_key = state_key(ctx, raw);
    let (own, redis) = redis_policy::split(raw, ctx, &state_key)?;
    let conf: Conf = parse_conf(&own)?;
    if !(conf.rate.is_finite() && conf.rate > 0.0) {
        return Err(ConfigError::new("rate", "must be greater than 0"));
    }
    if !(conf.burst.is_finite() && conf.burst >= 0.0) {
        return Err(ConfigError::new("burst", "must be at least 0"));
    }
    let rate = (conf.rate * 1000.0).round();
    if !(1.0..=1e15).contains(&rate) {
        return Err(ConfigError::new("rate", "must be between 0.001 and 10^12"));
    }
    let burst = (conf.burst * 1000.0).round();
    if burst > 1e15 {
        return Err(ConfigError::new("burst", "must be at most 10^12"));
    }
    let key = LimitKey::new(conf.key.as_deref(), conf.key_type)?;
    let rejected_code = limit_key::rejected_code(conf.rejected_code)?;
    let rejected_msg = limit_key::rejected_msg(conf.rejected_msg)?;
    let store = match redis {
        Some(limiter) => Store::Redis(limiter),
        None => Store::Local(ctx.state.get_or_insert(&state_key, Buckets::default)),
    };
    Ok(Arc::new(LimitReq {
        rate: rate as u64,
        burst: burst as u64,
        key,
        rejected_code,
        rejected_msg,
        nodelay: conf.nodelay,
        store,
    }))
}

enum Verdict {
    /// Passed, with this much excess (thousandths of a request).
    Pass {
        excess: u64,
    },
    Reject,
}

impl LimitReq {
    /// limit.req's `incoming`: leak what the time since the last request
    /// drained, add this request, refuse it (without counting it) above the
    /// burst.
    fn incoming(&self, buckets: &Buckets<Leaky>, key: &str) -> Verdict {
        let (rate, burst) = (self.rate, self.burst);
        buckets.update(
            key,
            |now| Leaky {
                excess: 0,
                last: now,
                empty_at: now,
            },
            |bucket, now| {
                let excess = if bucket.expired(now) {
                    // A fresh (or fully drained) bucket: no excess.
                    0
                } else {
                    let elapsed = now.saturating_sub(bucket.last).as_micros();
                    let leaked = u128::from(rate) * elapsed / 1_000_000;
                    (u128::from(bucket.excess) + 1000).saturating_sub(leaked) as u64
                };
                if excess > burst {
                    return Verdict::Reject;
                }
                let drain_micros = (u128::from(excess) + 1000) * 1_000_000 / u128::from(rate);
                *bucket = Leaky {
                    excess,
                    last: now,
                    empty_at: now
                        + Duration::from_micros(drain_micros.min(u128::from(u64::MAX)) as u64),
                };
                Verdict::Pass { excess }
            },
        )
    }

    fn decision(&self, outcome: Outcome, excess: u64) -> Decision {
        Decision {
            plugin: NAME,
            outcome,
            reason: (outcome == Outcome::Reject).then_some("request rate exceeded".into()),
            limit: Some(LimitState {
                limit: self.burst / 1000,
                remaining: self.burst.saturating_sub(excess) / 1000,
            }),
        }
    }
}

impl Plugin for LimitReq {
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
        let buckets = match &self.store {
            Store::Local(buckets) => buckets,
            Store::Redis(limiter) => return self.ask_redis(limiter, &key),
        };
        let verdict = self.incoming(buckets, &key);
        match verdict {
            Verdict::Reject => {
                req.decisions
                    .push(self.decision(Outcome::Reject, self.burst + 1000));
                Flow::Respond(limit_key::rejection(
                    self.rejected_code,
                    self.rejected_msg.as_deref(),
                ))
            }
            Verdict::Pass { excess } => {
                req.decisions.push(self.decision(Outcome::Allow, excess));
                match self.delay(excess) {
                    None => Flow::Continue,
                    Some(delay) => Flow::Wait(Box::pin(async move {
                        tokio::time::sleep(delay).await;
                        Flow::Continue
                    })),
                }
            }
        }
    }
}

impl LimitReq {
    /// How long a request with this excess waits: `excess / rate`. As
    /// APISIX: delays under a millisecond are not worth a timer.
    fn delay(&self, excess: u64) -> Option<Duration> {
        let delay = Duration::from_micros(excess.saturating_mul(1_000_000) / self.rate);
        (!self.nodelay && delay >= Duration::from_millis(1)).then_some(delay)
    }

    /// The bucket lives in Redis: one script call decides, then the request
    /// waits its turn like a local one.
    fn ask_redis(&self, limiter: &RedisLimiter, key: &str) -> Flow {
        let key = limiter.key(key);
        let limiter = limiter.clone();
        let (rate, burst, nodelay) = (self.rate, self.burst, self.nodelay);
        let rejection = limit_key::rejection(self.rejected_code, self.rejected_msg.as_deref());
        Flow::Wait(Box::pin(async move {
            let script = &redis_policy::LEAKY_BUCKET;
            let answer = limiter
                .target
                .eval(script, &key, &[rate as i64, burst as i64])
                .await;
            match answer.as_deref() {
                Ok([1, excess]) => {
                    let excess = (*excess).max(0) as u64;
                    let delay = Duration::from_micros(excess.saturating_mul(1_000_000) / rate);
                    if !nodelay && delay >= Duration::from_millis(1) {
                        tokio::time::sleep(delay).await;
                    }
                    Flow::Continue
                }
                Ok([0, _]) => Flow::Respond(rejection),
                Ok(other) => {
                    let failure =
                        redis_policy::RedisFailure(format!("unexpected script answer {other:?}"));
                    degrade(&limiter, &failure)
                }
                Err(failure) => degrade(&limiter, failure),
            }
        }))
    }
}

fn degrade(limiter: &RedisLimiter, failure: &redis_policy::RedisFailure) -> Flow {
    match limiter.degrade(NAME, failure, "failed to limit req") {
        None => Flow::Continue,
        Some(r) => Flow::Respond(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::ConsumerIndex;
    use crate::context::SharedState;
    use crate::limit_store::ManualClock;
    use crate::registry::build_plugin;

    struct Fixture {
        plugin: Arc<dyn Plugin>,
        clock: Arc<ManualClock>,
    }

    /// Build through the registry, with the bucket store made beforehand
    /// on a hand-moved clock (as a reload would find it in shared state).
    fn fixture(conf: Value) -> Fixture {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        let clock = Arc::new(ManualClock::default());
        let c = clock.clone();
        state.get_or_insert(&state_key(&ctx, &conf), || Buckets::<Leaky>::with_clock(c));
        let plugin = build_plugin(NAME, &conf, &ctx).unwrap().unwrap();
        Fixture { plugin, clock }
    }

    fn request_from(ip: &str) -> RequestState {
        let (head, ()) = http::Request::builder()
            .uri("/")
            .body(())
            .unwrap()
            .into_parts();
        RequestState::new(head, format!("{ip}:5555").parse().unwrap(), "http", 9080)
    }

    fn request() -> RequestState {
        request_from("10.0.0.7")
    }

    /// Delay in milliseconds for a waiting answer, 0 for Continue, None for
    /// a rejection.
    fn outcome(flow: &Flow) -> Option<u64> {
        match flow {
            Flow::Continue => Some(0),
            Flow::Wait(_) => Some(u64::MAX),
            Flow::Retry(_) => panic!("limit-req never retries"),
            Flow::Respond(_) => None,
        }
    }

    #[test]
    fn customer_api_route_config_builds_verbatim() {
        fixture(json!({"rate": 20, "burst": 10, "rejected_code": 429}));
    }

    #[test]
    fn burst_beyond_rate_is_delayed_then_rejected_with_rejected_code() {
        let f = fixture(json!({"rate": 20, "burst": 10, "rejected_code": 429}));
        let flows: Vec<Flow> = (0..12)
            .map(|_| f.plugin.on_request(&mut request()))
            .collect();
        // The first passes at once, the next ten wait their turn, the twelfth is refused.
        assert_eq!(outcome(&flows[0]), Some(0));
        for flow in &flows[1..11] {
            assert_eq!(outcome(flow), Some(u64::MAX));
        }
        let Flow::Respond(r) = &flows[11] else {
            panic!("expected a rejection")
        };
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(r.body.is_empty());
    }

    #[test]
    fn bucket_drains_at_rate() {
        let f = fixture(json!({"rate": 2, "burst": 0, "nodelay": true}));
        assert!(matches!(
            f.plugin.on_request(&mut request()),
            Flow::Continue
        ));
        assert!(matches!(
            f.plugin.on_request(&mut request()),
            Flow::Respond(_)
        ));
        f.clock.advance(Duration::from_millis(499));
        assert!(matches!(
            f.plugin.on_request(&mut request()),
            Flow::Respond(_)
        ));
        f.clock.advance(Duration::from_millis(1));
        assert!(matches!(
            f.plugin.on_request(&mut request()),
            Flow::Continue
        ));
    }

    #[test]
    fn default_rejection_is_503_and_rejected_msg_is_error_msg() {
        let f = fixture(json!({"rate": 1, "burst": 0}));
        f.plugin.on_request(&mut request());
        let Flow::Respond(r) = f.plugin.on_request(&mut request()) else {
            panic!("expected a rejection")
        };
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        let f = fixture(json!({"rate": 1, "burst": 0, "rejected_msg": "slow down"}));
        f.plugin.on_request(&mut request());
        let mut req = request();
        let Flow::Respond(r) = f.plugin.on_request(&mut req) else {
            panic!("expected a rejection")
        };
        assert_eq!(r.body, "{\"error_msg\":\"slow down\"}\n");
        assert_eq!(req.decisions[0].outcome, Outcome::Reject);
    }

    #[test]
    fn nodelay_lets_the_burst_through_at_once() {
        let f = fixture(json!({"rate": 1, "burst": 3, "nodelay": true}));
        for _ in 0..4 {
            assert!(matches!(
                f.plugin.on_request(&mut request()),
                Flow::Continue
            ));
        }
        assert!(matches!(
            f.plugin.on_request(&mut request()),
            Flow::Respond(_)
        ));
    }

    #[tokio::test]
    async fn excess_waits_excess_over_rate_seconds() {
        let f = fixture(json!({"rate": 50, "burst": 5}));
        f.plugin.on_request(&mut request());
        f.plugin.on_request(&mut request());
        let Flow::Wait(wait) = f.plugin.on_request(&mut request()) else {
            panic!("expected a delay")
        };
        let started = std::time::Instant::now();
        assert!(matches!(wait.await, Flow::Continue));
        // Two requests of excess at 50/s: 40 ms.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(39), "{waited:?}");
    }

    #[test]
    fn keys_are_counted_apart() {
        let f = fixture(json!({"rate": 1, "burst": 0}));
        assert!(matches!(
            f.plugin.on_request(&mut request_from("10.0.0.1")),
            Flow::Continue
        ));
        assert!(matches!(
            f.plugin.on_request(&mut request_from("10.0.0.2")),
            Flow::Continue
        ));
        assert!(matches!(
            f.plugin.on_request(&mut request_from("10.0.0.1")),
            Flow::Respond(_)
        ));
    }

    #[test]
    fn counters_survive_a_rebuild_with_the_same_config() {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        let conf = json!({"rate": 1, "burst": 0});
        let first = build_plugin(NAME, &conf, &ctx).unwrap().unwrap();
        assert!(matches!(first.on_request(&mut request()), Flow::Continue));
        let reloaded = build_plugin(NAME, &conf, &ctx).unwrap().unwrap();
        assert!(matches!(
            reloaded.on_request(&mut request()),
            Flow::Respond(_)
        ));
        let edited = build_plugin(NAME, &json!({"rate": 2, "burst": 0}), &ctx)
            .unwrap()
            .unwrap();
        assert!(matches!(edited.on_request(&mut request()), Flow::Continue));
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
        assert_eq!(field(json!({"rate": 0, "burst": 1})), "limit-req.rate");
        assert_eq!(field(json!({"rate": 1, "burst": -1})), "limit-req.burst");
        assert_eq!(
            field(json!({"rate": 1, "burst": 1, "rejected_code": 99})),
            "limit-req.rejected_code"
        );
        assert_eq!(
            field(json!({"rate": 1, "burst": 1, "policy": "redis"})),
            "limit-req.redis_host"
        );
        assert_eq!(
            field(json!({"rate": 1, "burst": 1, "policy": "redis-sentinel"})),
            "limit-req.policy"
        );
        assert_eq!(
            field(json!({"rate": 1, "burst": 1, "nodleay": true})),
            "limit-req.nodleay"
        );
    }
}
