//! limit-count: allow at most `count` requests per key in each
//! `time_window` seconds (APISIX's plugin of the same name).
//!
//! Policies: `local` (counters in this process) and `redis` /
//! `redis-cluster` (counters in Redis, shared by every gateway process on
//! it; see [`crate::redis_policy`]). Windows: `fixed` (a key's window starts
//! with its first request locally, as in lua-resty-limit-traffic's
//! `limit.count`; on Redis it starts with the first request of any process)
//! and `sliding` (the previous fixed window, weighted by how much of it is
//! still inside the sliding window, plus the current one).
//!
//! With `show_limit_quota_header` (the default) every answer, passed or
//! rejected, carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
//! `X-RateLimit-Reset` (seconds until the window ends, to 1/100 s).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use portcullis_core::decision::LimitState;
use portcullis_core::{
    ConfigError, Decision, Flow, Outcome, Phase, Plugin, Rejection, RequestState,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{config_hash, parse_conf, BuildContext};
use crate::limit_key::{self, KeyType, LimitKey};
use crate::limit_store::{Buckets, Expiring};
use crate::redis_policy::{self, RedisLimiter};
use crate::registry::PluginSpec;

pub const NAME: &str = "limit-count";

pub const SPEC: PluginSpec = PluginSpec {
    name: NAME,
    phase: Phase::Limit,
    priority: 1002,
    enforcing: true,
    build,
    consumer_conf: None,
    schema,
};

const LIMIT_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET_HEADER: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The plugin's own settings; the Redis ones (and `policy`) are taken out
/// first by [`redis_policy::split`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    count: u64,
    time_window: u64,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default)]
    key_type: KeyType,
    group: Option<String>,
    #[serde(default = "default_rejected_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    #[serde(default = "yes")]
    show_limit_quota_header: bool,
    #[serde(default)]
    window_type: WindowType,
    /// Read by [`redis_policy::split`]: what to do when Redis is away.
    #[serde(default)]
    #[allow(dead_code)]
    allow_degradation: bool,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum WindowType {
    #[default]
    Fixed,
    Sliding,
}

fn default_key() -> String {
    "remote_addr".into()
}
fn default_rejected_code() -> u16 {
    503
}
fn yes() -> bool {
    true
}

fn schema() -> Value {
    let mut schema = json!({
        "type": "object",
        "properties": {
            "count": {"type": "integer", "exclusiveMinimum": 0},
            "time_window": {"type": "integer", "exclusiveMinimum": 0},
            "window_type": {"type": "string", "enum": ["fixed", "sliding"], "default": "fixed"},
            "key": {"type": "string", "default": "remote_addr"},
            "key_type": {"type": "string", "enum": ["var", "var_combination", "constant"], "default": "var"},
            "group": {"type": "string", "minLength": 1},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
            "rejected_msg": {"type": "string", "minLength": 1},
            "allow_degradation": {"type": "boolean", "default": false},
            "show_limit_quota_header": {"type": "boolean", "default": true}
        },
        "required": ["count", "time_window"],
        "additionalProperties": false
    });
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        props.extend(redis_policy::schema_properties());
    }
    schema
}

/// One key's fixed window.
#[derive(Debug, Clone, Copy)]
struct Window {
    ends_at: Duration,
    remaining: u64,
}

impl Expiring for Window {
    fn expired(&self, now: Duration) -> bool {
        now >= self.ends_at
    }
}

/// One key's sliding window: counts of the current fixed window (number
/// `index` since the clock's origin) and of the one before.
#[derive(Debug, Clone, Copy)]
struct Sliding {
    index: u64,
    current: u64,
    previous: u64,
    /// When both windows have passed: nothing left to remember.
    forget_at: Duration,
}

impl Expiring for Sliding {
    fn expired(&self, now: Duration) -> bool {
        now >= self.forget_at
    }
}

/// Where the counters live.
enum Store {
    Fixed(Arc<Buckets<Window>>),
    Sliding(Arc<Buckets<Sliding>>),
    Redis(RedisLimiter),
}

/// What a request needs from the plugin, shareable with a deferred (Redis)
/// answer.
struct Settings {
    count: u64,
    window: Duration,
    sliding: bool,
    rejected_code: StatusCode,
    rejected_msg: Option<String>,
    show_headers: bool,
    limit_header: HeaderValue,
}

struct LimitCount {
    key: LimitKey,
    settings: Arc<Settings>,
    store: Store,
}

/// The quota a deferred (Redis) answer found, for [`Plugin::on_response`]
/// to put on the response: a future cannot write to the request's state.
/// Kept in the request head's extensions.
#[derive(Clone, Default)]
struct QuotaSlot(Arc<Mutex<Option<(u64, HeaderValue)>>>);

/// Routes of one `group` share their counters; otherwise the counters
/// belong to the owner and this exact config.
fn state_key(ctx: &BuildContext, conf: &Value) -> String {
    match conf.get("group").and_then(Value::as_str) {
        Some(group) => format!("group:{group}:{NAME}:{:x}", config_hash(conf)),
        None => format!("{}:{}:{:x}", ctx.owner, NAME, config_hash(conf)),
    }
}

fn refuse_rules(raw: &Value) -> Result<(), ConfigError> {
    if raw.get("rules").is_some() {
        return Err(ConfigError::new(
            "rules",
            "not supported yet; use count and time_window",
        ));
    }
    for field in ["count", "time_window"] {
        if raw.get(field).is_some_and(Value::is_string) {
            return Err(ConfigError::new(
                field,
                "variable expressions are not supported yet; use an integer",
            ));
        }
    }
    Ok(())
}

fn build(raw: &Value, ctx: &BuildContext) -> Result<Arc<dyn Plugin>, ConfigError> {
    refuse_rules(raw)?;
    let state_key = state_key(ctx, raw);
    let (own, redis) = redis_policy::split(raw, ctx, &state_key)?;
    let conf: Conf = parse_conf(&own)?;
    if conf.count == 0 {
        return Err(ConfigError::new("count", "must be greater than 0"));
    }
    if conf.time_window == 0 {
        return Err(ConfigError::new("time_window", "must be greater than 0"));
    }
    if conf.time_window > 10 * 365 * 24 * 3600 {
        return Err(ConfigError::new("time_window", "must be at most ten years"));
    }
    if conf.group.as_deref() == Some("") {
        return Err(ConfigError::new("group", "must not be empty"));
    }
    let key = LimitKey::new(Some(&conf.key), conf.key_type)?;
    let rejected_code = limit_key::rejected_code(conf.rejected_code)?;
    let rejected_msg = limit_key::rejected_msg(conf.rejected_msg)?;
    let sliding = conf.window_type == WindowType::Sliding;
    let store = match (redis, sliding) {
        (Some(limiter), _) => Store::Redis(limiter),
        (None, false) => Store::Fixed(ctx.state.get_or_insert(&state_key, Buckets::default)),
        (None, true) => Store::Sliding(ctx.state.get_or_insert(&state_key, Buckets::default)),
    };
    Ok(Arc::new(LimitCount {
        key,
        settings: Arc::new(Settings {
            count: conf.count,
            window: Duration::from_secs(conf.time_window),
            sliding,
            rejected_code,
            rejected_msg,
            show_headers: conf.show_limit_quota_header,
            limit_header: HeaderValue::from(conf.count),
        }),
        store,
    }))
}

/// Seconds until `ends_at`, floored to 1/100 s and written as APISIX
/// writes it (`60`, `59.99`).
fn reset_value(ends_at: Duration, now: Duration) -> HeaderValue {
    let centis = ends_at.saturating_sub(now).as_millis() / 10;
    let (secs, hundredths) = ((centis / 100) as u64, (centis % 100) as u8);
    // On every answer: itoa and a stack buffer, not format!.
    let mut digits = itoa::Buffer::new();
    let mut text = [0u8; 24];
    let whole = digits.format(secs).as_bytes();
    text[..whole.len()].copy_from_slice(whole);
    let mut len = whole.len();
    if hundredths > 0 {
        let (tens, ones) = (hundredths / 10, hundredths % 10);
        text[len] = b'.';
        text[len + 1] = b'0' + tens;
        len += 2;
        if ones > 0 {
            text[len] = b'0' + ones;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or(HeaderValue::from_static("0"))
}

/// The answer to one request: admitted or not, what is left, and the reset.
type Taken = (Result<u64, ()>, HeaderValue);

impl Settings {
    fn quota_headers(&self, remaining: u64, reset: HeaderValue) -> [(HeaderName, HeaderValue); 3] {
        [
            (LIMIT_HEADER, self.limit_header.clone()),
            (REMAINING_HEADER, HeaderValue::from(remaining)),
            (RESET_HEADER, reset),
        ]
    }

    fn rejection(&self) -> Rejection {
        limit_key::rejection(self.rejected_code, self.rejected_msg.as_deref())
    }

    /// Take one request from a fixed window.
    fn take_fixed(&self, windows: &Buckets<Window>, key: &str) -> Taken {
        let (count, window) = (self.count, self.window);
        windows.update(
            key,
            |now| Window {
                ends_at: now + window,
                remaining: count,
            },
            |w, now| {
                let reset = reset_value(w.ends_at, now);
                if w.remaining == 0 {
                    return (Err(()), reset);
                }
                w.remaining -= 1;
                (Ok(w.remaining), reset)
            },
        )
    }

    /// Take one request from a sliding window: the previous fixed window
    /// counts for the share of it still inside the sliding window.
    fn take_sliding(&self, windows: &Buckets<Sliding>, key: &str) -> Taken {
        let (count, window) = (self.count, self.window.as_micros().max(1));
        windows.update(
            key,
            |_| Sliding {
                index: 0,
                current: 0,
                previous: 0,
                forget_at: Duration::ZERO,
            },
            |s, now| {
                let now_us = now.as_micros();
                let index = (now_us / window) as u64;
                if index == s.index + 1 {
                    s.previous = s.current;
                    s.current = 0;
                } else if index != s.index {
                    s.previous = 0;
                    s.current = 0;
                }
                s.index = index;
                let elapsed = now_us - u128::from(index) * window;
                let weighted = u128::from(s.previous) * (window - elapsed) / window;
                let estimate = weighted as u64 + s.current;
                let ends_at = Duration::from_micros(((u128::from(index) + 1) * window) as u64);
                let reset = reset_value(ends_at, now);
                if estimate >= count {
                    s.forget_at = ends_at + Duration::from_micros(window as u64);
                    return (Err(()), reset);
                }
                s.current += 1;
                s.forget_at = ends_at + Duration::from_micros(window as u64);
                (Ok(count - estimate - 1), reset)
            },
        )
    }

    /// What the Redis scripts answered, as a local take would.
    fn read_redis(&self, answer: &[i64]) -> Option<Taken> {
        let ms = |v: i64| Duration::from_millis(v.max(0) as u64);
        if self.sliding {
            let [admitted, estimate, reset_ms] = answer else {
                return None;
            };
            let reset = reset_value(ms(*reset_ms), Duration::ZERO);
            let left = self.count.saturating_sub((*estimate).max(0) as u64);
            Some((if *admitted == 1 { Ok(left) } else { Err(()) }, reset))
        } else {
            let [used, ttl_ms] = answer else {
                return None;
            };
            let used = (*used).max(0) as u64;
            let reset = reset_value(ms(*ttl_ms), Duration::ZERO);
            Some(if used <= self.count {
                (Ok(self.count - used), reset)
            } else {
                (Err(()), reset)
            })
        }
    }
}

impl LimitCount {
    fn decide(&self, req: &mut RequestState, taken: Taken) -> Flow {
        let settings = &self.settings;
        let (taken, reset) = taken;
        let remaining = taken.unwrap_or(0);
        if settings.show_headers {
            let headers = &mut req.response_headers;
            for (name, value) in settings.quota_headers(remaining, reset) {
                headers.insert(name, value);
            }
        }
        let outcome = if taken.is_ok() {
            Outcome::Allow
        } else {
            Outcome::Reject
        };
        req.decisions.push(Decision {
            plugin: NAME,
            outcome,
            reason: taken.is_err().then_some("request count exceeded".into()),
            limit: Some(LimitState {
                limit: settings.count,
                remaining,
            }),
        });
        match taken {
            Ok(_) => Flow::Continue,
            Err(()) => Flow::Respond(settings.rejection()),
        }
    }

    /// Ask Redis; the answer comes later, so the quota headers of a passed
    /// request travel through a [`QuotaSlot`].
    fn ask_redis(&self, req: &mut RequestState, limiter: &RedisLimiter) -> Flow {
        let key = limiter.key(&self.key.resolve(req));
        let slot = if self.settings.show_headers {
            let slot = QuotaSlot::default();
            req.head.extensions.insert(slot.clone());
            Some(slot)
        } else {
            None
        };
        let settings = self.settings.clone();
        let limiter = limiter.clone();
        Flow::Wait(Box::pin(async move {
            let window_ms = settings.window.as_millis() as i64;
            let answer = if settings.sliding {
                let script = &redis_policy::SLIDING_WINDOW;
                limiter
                    .target
                    .eval(script, &key, &[window_ms, settings.count as i64])
                    .await
            } else {
                let script = &redis_policy::FIXED_WINDOW;
                limiter.target.eval(script, &key, &[window_ms]).await
            };
            let taken = answer.and_then(|a| {
                settings.read_redis(&a).ok_or_else(|| {
                    redis_policy::RedisFailure(format!("unexpected script answer {a:?}"))
                })
            });
            match taken {
                Ok((Ok(remaining), reset)) => {
                    if let Some(slot) = slot {
                        *slot.0.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((remaining, reset));
                    }
                    Flow::Continue
                }
                Ok((Err(()), reset)) => {
                    let mut r = settings.rejection();
                    if settings.show_headers {
                        r.headers.extend(settings.quota_headers(0, reset));
                    }
                    Flow::Respond(r)
                }
                Err(failure) => match limiter.degrade(NAME, &failure, "failed to limit count") {
                    None => Flow::Continue,
                    Some(r) => Flow::Respond(r),
                },
            }
        }))
    }
}

impl Plugin for LimitCount {
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
        let taken = match &self.store {
            Store::Fixed(w) => self.settings.take_fixed(w, &self.key.resolve(req)),
            Store::Sliding(w) => self.settings.take_sliding(w, &self.key.resolve(req)),
            Store::Redis(limiter) => return self.ask_redis(req, limiter),
        };
        self.decide(req, taken)
    }

    fn on_response(&self, req: &RequestState, resp: &mut http::response::Parts) {
        let Some(slot) = req.head.extensions.get::<QuotaSlot>() else {
            return;
        };
        let quota = slot.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((remaining, reset)) = quota {
            for (name, value) in self.settings.quota_headers(remaining, reset) {
                resp.headers.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::ConsumerIndex;
    use crate::context::SharedState;
    use crate::limit_store::ManualClock;
    use crate::registry::build_plugin;

    fn fixture(conf: Value) -> (Arc<dyn Plugin>, Arc<ManualClock>) {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        let clock = Arc::new(ManualClock::default());
        let c = clock.clone();
        state.get_or_insert(&state_key(&ctx, &conf), || Buckets::<Window>::with_clock(c));
        (build_plugin(NAME, &conf, &ctx).unwrap().unwrap(), clock)
    }

    fn request() -> RequestState {
        let (head, ()) = http::Request::builder()
            .uri("/")
            .body(())
            .unwrap()
            .into_parts();
        RequestState::new(head, "10.0.0.7:5555".parse().unwrap(), "http", 9080)
    }

    fn quota(req: &RequestState) -> (String, String, String) {
        let h = |name: &str| {
            req.response_headers
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        (
            h("x-ratelimit-limit"),
            h("x-ratelimit-remaining"),
            h("x-ratelimit-reset"),
        )
    }

    fn strings(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn quota_headers_count_down_and_show_zero_on_rejection() {
        let (p, clock) = fixture(json!({"count": 2, "time_window": 60, "rejected_code": 429}));
        let mut req = request();
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        assert_eq!(quota(&req), strings("2", "1", "60"));
        clock.advance(Duration::from_millis(10_250));
        let mut req = request();
        assert!(matches!(p.on_request(&mut req), Flow::Continue));
        assert_eq!(quota(&req), strings("2", "0", "49.75"));
        clock.advance(Duration::from_millis(9_000));
        let mut req = request();
        let Flow::Respond(r) = p.on_request(&mut req) else {
            panic!("expected a rejection")
        };
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(quota(&req), strings("2", "0", "40.75"));
        assert_eq!(req.decisions[0].outcome, Outcome::Reject);
        assert_eq!(
            req.decisions[0].limit,
            Some(LimitState {
                limit: 2,
                remaining: 0
            })
        );
    }

    #[test]
    fn a_new_window_starts_when_the_old_one_ends() {
        let (p, clock) = fixture(json!({"count": 1, "time_window": 2}));
        assert!(matches!(p.on_request(&mut request()), Flow::Continue));
        let Flow::Respond(r) = p.on_request(&mut request()) else {
            panic!("expected a rejection")
        };
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        clock.advance(Duration::from_secs(2));
        assert!(matches!(p.on_request(&mut request()), Flow::Continue));
    }

    #[test]
    fn rejected_msg_is_error_msg_and_headers_can_be_hidden() {
        let (p, _) = fixture(json!({
            "count": 1, "time_window": 60, "rejected_msg": "quota used",
            "show_limit_quota_header": false
        }));
        p.on_request(&mut request());
        let mut req = request();
        let Flow::Respond(r) = p.on_request(&mut req) else {
            panic!("expected a rejection")
        };
        assert_eq!(r.body, "{\"error_msg\":\"quota used\"}\n");
        assert!(req.response_headers.is_empty());
    }

    #[test]
    fn reset_is_floored_to_hundredths() {
        let at = |ms| reset_value(Duration::from_millis(ms), Duration::ZERO);
        assert_eq!(at(60_000), "60");
        assert_eq!(at(59_999), "59.99");
        assert_eq!(at(59_900), "59.9");
        assert_eq!(at(5), "0");
        assert_eq!(at(100_050), "100.05");
        assert_eq!(at(3_600_000), "3600");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_admit_exactly_the_count() {
        let (p, _) =
            fixture(json!({"count": 100, "time_window": 60, "key_type": "constant", "key": "all"}));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { matches!(p.on_request(&mut request()), Flow::Continue) })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, 100);
    }

    #[test]
    fn unsupported_settings_are_refused_naming_the_field() {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        let field = |conf: Value| build_plugin(NAME, &conf, &ctx).err().unwrap().field;
        assert_eq!(
            field(json!({"count": 0, "time_window": 1})),
            "limit-count.count"
        );
        assert_eq!(
            field(json!({"count": 1, "time_window": 1, "policy": "redis-cluster"})),
            "limit-count.redis_cluster_nodes"
        );
        assert_eq!(
            field(json!({"count": 1, "time_window": 1, "policy": "redis"})),
            "limit-count.redis_host"
        );
        assert_eq!(
            field(json!({"count": 1, "time_window": 1, "policy": "redis-sentinel"})),
            "limit-count.policy"
        );
        assert_eq!(
            field(json!({"count": 1, "time_window": 1, "window_type": "rolling"})),
            "limit-count.window_type"
        );
        assert_eq!(
            field(json!({"rules": [{"count": 1, "time_window": 1, "key": "$remote_addr"}]})),
            "limit-count.rules"
        );
    }

    fn sliding_fixture(conf: Value) -> (Arc<dyn Plugin>, Arc<ManualClock>) {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        let clock = Arc::new(ManualClock::default());
        let c = clock.clone();
        state.get_or_insert(&state_key(&ctx, &conf), || {
            Buckets::<Sliding>::with_clock(c)
        });
        (build_plugin(NAME, &conf, &ctx).unwrap().unwrap(), clock)
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let (p, clock) =
            sliding_fixture(json!({"count": 10, "time_window": 10, "window_type": "sliding"}));
        let pass = |p: &Arc<dyn Plugin>| matches!(p.on_request(&mut request()), Flow::Continue);
        for _ in 0..10 {
            assert!(pass(&p));
        }
        assert!(!pass(&p));
        // A quarter into the next window, three quarters of the previous
        // window's 10 still count: 7, so 3 more pass.
        clock.advance(Duration::from_millis(12_500));
        let admitted = (0..10).filter(|_| pass(&p)).count();
        assert_eq!(admitted, 3);
        let mut req = request();
        p.on_request(&mut req);
        assert_eq!(quota(&req), strings("10", "0", "7.5"));
        // Two windows later nothing is remembered.
        clock.advance(Duration::from_secs(20));
        assert_eq!((0..20).filter(|_| pass(&p)).count(), 10);
    }

    /// Run with `cargo test -p portcullis-plugins --release -- --ignored
    /// --nocapture memory_per_key` to measure what a key costs in the local
    /// store (resident set size before and after a million keys).
    #[test]
    #[ignore]
    fn memory_per_key() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        }
        let windows: Buckets<Window> = Buckets::default();
        let settings = Settings {
            count: 100,
            window: Duration::from_secs(3600),
            sliding: false,
            rejected_code: StatusCode::TOO_MANY_REQUESTS,
            rejected_msg: None,
            show_headers: true,
            limit_header: HeaderValue::from(100u64),
        };
        let keys = 1_000_000u64;
        let before = rss_kib();
        let mut key = String::new();
        for i in 0..keys {
            use std::fmt::Write;
            key.clear();
            // The shape LimitKey makes for client addresses.
            let _ = write!(
                key,
                "ip:10.{}.{}.{}",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            );
            let _ = settings.take_fixed(&windows, &key);
        }
        let after = rss_kib();
        let held = windows.len() as u64;
        println!(
            "limit-count local: {held} keys held, {} bytes per key (RSS {} KiB -> {} KiB)",
            (after - before) * 1024 / held,
            before,
            after
        );
    }

    #[test]
    fn routes_in_one_group_share_a_counter() {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let conf = json!({"count": 1, "time_window": 60, "group": "partners"});
        let build_for = |owner: &str| {
            let ctx = BuildContext {
                consumers: &consumers,
                owner,
                state: &state,
            };
            build_plugin(NAME, &conf, &ctx).unwrap().unwrap()
        };
        let (a, b) = (build_for("routes/a"), build_for("routes/b"));
        assert!(matches!(a.on_request(&mut request()), Flow::Continue));
        assert!(matches!(b.on_request(&mut request()), Flow::Respond(_)));
    }
}
