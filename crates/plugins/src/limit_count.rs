//! limit-count: allow at most `count` requests per key in each
//! `time_window` seconds (APISIX's plugin of the same name, local policy,
//! fixed window). The window of a key starts with its first request, as in
//! lua-resty-limit-traffic's `limit.count`.
//!
//! With `show_limit_quota_header` (the default) every answer, passed or
//! rejected, carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
//! `X-RateLimit-Reset` (seconds until the window ends, to 1/100 s).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use portcullis_core::decision::LimitState;
use portcullis_core::{ConfigError, Decision, Flow, Outcome, Phase, Plugin, RequestState};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::{config_hash, parse_conf, BuildContext};
use crate::limit_key::{self, KeyType, LimitKey};
use crate::limit_store::{Buckets, Expiring};
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
    /// Only matters for remote policies; accepted for compatibility.
    #[serde(default)]
    #[allow(dead_code)]
    allow_degradation: bool,
    /// Checked by [`limit_key::refuse_unsupported`] before parsing.
    #[serde(default)]
    #[allow(dead_code)]
    policy: Option<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
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
    json!({
        "type": "object",
        "properties": {
            "count": {"type": "integer", "exclusiveMinimum": 0},
            "time_window": {"type": "integer", "exclusiveMinimum": 0},
            "window_type": {"type": "string", "enum": ["fixed"], "default": "fixed"},
            "key": {"type": "string", "default": "remote_addr"},
            "key_type": {"type": "string", "enum": ["var", "var_combination", "constant"], "default": "var"},
            "group": {"type": "string", "minLength": 1},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
            "rejected_msg": {"type": "string", "minLength": 1},
            "policy": {"type": "string", "enum": ["local"], "default": "local"},
            "allow_degradation": {"type": "boolean", "default": false},
            "show_limit_quota_header": {"type": "boolean", "default": true}
        },
        "required": ["count", "time_window"],
        "additionalProperties": false
    })
}

/// One key's window.
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

struct LimitCount {
    count: u64,
    window: Duration,
    key: LimitKey,
    rejected_code: StatusCode,
    rejected_msg: Option<String>,
    show_headers: bool,
    limit_header: HeaderValue,
    windows: Arc<Buckets<Window>>,
}

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
    limit_key::refuse_unsupported(raw)?;
    refuse_rules(raw)?;
    let conf: Conf = parse_conf(raw)?;
    if conf.count == 0 {
        return Err(ConfigError::new("count", "must be greater than 0"));
    }
    if conf.time_window == 0 {
        return Err(ConfigError::new("time_window", "must be greater than 0"));
    }
    if conf.window_type == WindowType::Sliding {
        return Err(ConfigError::new(
            "window_type",
            "\"sliding\" is not supported yet; use \"fixed\"",
        ));
    }
    if conf.group.as_deref() == Some("") {
        return Err(ConfigError::new("group", "must not be empty"));
    }
    let key = LimitKey::new(Some(&conf.key), conf.key_type)?;
    let rejected_code = limit_key::rejected_code(conf.rejected_code)?;
    let rejected_msg = limit_key::rejected_msg(conf.rejected_msg)?;
    let windows = ctx
        .state
        .get_or_insert(&state_key(ctx, raw), Buckets::default);
    Ok(Arc::new(LimitCount {
        count: conf.count,
        window: Duration::from_secs(conf.time_window),
        key,
        rejected_code,
        rejected_msg,
        show_headers: conf.show_limit_quota_header,
        limit_header: HeaderValue::from(conf.count),
        windows,
    }))
}

/// Seconds until `ends_at`, floored to 1/100 s and written as APISIX
/// writes it (`60`, `59.99`).
fn reset_value(ends_at: Duration, now: Duration) -> HeaderValue {
    let centis = ends_at.saturating_sub(now).as_millis() / 10;
    let fixed = format!("{}.{:02}", centis / 100, centis % 100);
    let text = fixed.trim_end_matches('0').trim_end_matches('.');
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("0"))
}

impl LimitCount {
    /// Take one request from the key's window. `Ok(remaining)` or
    /// `Err(())` when the window is used up; both with the reset value.
    fn take(&self, key: &str) -> (Result<u64, ()>, HeaderValue) {
        let (count, window) = (self.count, self.window);
        self.windows.update(
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
        let key = self.key.resolve(req);
        let (taken, reset) = self.take(&key);
        let remaining = taken.unwrap_or(0);
        if self.show_headers {
            let headers = &mut req.response_headers;
            headers.insert(LIMIT_HEADER, self.limit_header.clone());
            headers.insert(REMAINING_HEADER, HeaderValue::from(remaining));
            headers.insert(RESET_HEADER, reset);
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
                limit: self.count,
                remaining,
            }),
        });
        match taken {
            Ok(_) => Flow::Continue,
            Err(()) => Flow::Respond(limit_key::rejection(
                self.rejected_code,
                self.rejected_msg.as_deref(),
            )),
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
            "limit-count.policy"
        );
        assert_eq!(
            field(json!({"count": 1, "time_window": 1, "window_type": "sliding"})),
            "limit-count.window_type"
        );
        assert_eq!(
            field(json!({"rules": [{"count": 1, "time_window": 1, "key": "$remote_addr"}]})),
            "limit-count.rules"
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
