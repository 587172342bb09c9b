//! `policy: redis` and `policy: redis-cluster` for limit-req and limit-count:
//! counters kept in Redis, so several gateway processes share one limit.
//!
//! - Settings carry APISIX's names (`redis_host`, `redis_port`,
//!   `redis_username`, `redis_password`, `redis_database`, `redis_timeout`,
//!   `redis_ssl`, `redis_ssl_verify`; `redis_cluster_nodes`,
//!   `redis_cluster_name`, `redis_cluster_ssl`, `redis_cluster_ssl_verify`).
//! - One connection per Redis target, shared by every plugin instance that
//!   names the same target (kept in the build context's shared state, so it
//!   also outlives reloads). The single-node connection is a multiplexed
//!   connection manager: requests from all worker threads are pipelined on
//!   it, and it reconnects by itself after a failure. The cluster
//!   connection routes each command by key slot and reconnects by itself.
//! - Every check is one server-side Lua script (EVALSHA, loaded on first
//!   use), so check-and-count is atomic across processes.
//! - Counter keys are `portcullis:{<owner>:<plugin>:<settings hash>:<limit
//!   key>}`. The braces are a Redis Cluster hash tag: every key a script
//!   derives from its counter (the sliding window's per-window counters)
//!   lands in the counter's slot, which a cluster requires of one script,
//!   while different limit keys still spread over the slots. The hash
//!   covers only what is counted (the plugin's own settings): gateways that
//!   reach Redis differently (seed order, timeout, password, degradation)
//!   share counters, and it is SHA-256, the same for every build.
//! - Every call is bounded by `redis_timeout`. A failure (refused, timed
//!   out, script error) fails open with `allow_degradation: true` — the
//!   request passes, a warning is logged at most once a second per target
//!   and [`redis_failed_open_total`] counts it — and otherwise fails
//!   closed with 503 `{"error_msg": "..."}` ([`redis_failed_closed_total`]).
//! - The password is never logged nor put in an error: targets are named
//!   by host and port only, and Redis's own errors do not echo it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use portcullis_core::{ConfigError, Rejection};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{IntoConnectionInfo, Script};
use serde::Deserialize;
use serde_json::Value;

use crate::context::{config_hash, parse_conf, BuildContext};

static FAILED_OPEN: AtomicU64 = AtomicU64::new(0);
static FAILED_CLOSED: AtomicU64 = AtomicU64::new(0);

/// Requests let through because Redis could not be asked
/// (`allow_degradation: true`), since the process started.
pub fn redis_failed_open_total() -> u64 {
    FAILED_OPEN.load(Ordering::Relaxed)
}

/// Requests refused with 503 because Redis could not be asked
/// (`allow_degradation: false`), since the process started.
pub fn redis_failed_closed_total() -> u64 {
    FAILED_CLOSED.load(Ordering::Relaxed)
}

/// The Redis settings of a limit plugin, as APISIX names them. They are
/// taken out of the plugin's config before the plugin parses the rest.
const FIELDS: &[&str] = &[
    "policy",
    "redis_host",
    "redis_port",
    "redis_username",
    "redis_password",
    "redis_database",
    "redis_timeout",
    "redis_ssl",
    "redis_ssl_verify",
    "redis_keepalive_timeout",
    "redis_keepalive_pool",
    "redis_cluster_nodes",
    "redis_cluster_name",
    "redis_cluster_ssl",
    "redis_cluster_ssl_verify",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisConf {
    #[serde(default = "local")]
    policy: String,
    redis_host: Option<String>,
    #[serde(default = "default_port")]
    redis_port: u16,
    redis_username: Option<String>,
    redis_password: Option<String>,
    #[serde(default)]
    redis_database: u32,
    #[serde(default = "default_timeout")]
    redis_timeout: u64,
    #[serde(default)]
    redis_ssl: bool,
    #[serde(default)]
    redis_ssl_verify: bool,
    /// Accepted for compatibility: one multiplexed connection replaces
    /// nginx's keepalive pool.
    #[allow(dead_code)]
    redis_keepalive_timeout: Option<u64>,
    #[allow(dead_code)]
    redis_keepalive_pool: Option<u64>,
    redis_cluster_nodes: Option<Vec<String>>,
    redis_cluster_name: Option<String>,
    #[serde(default)]
    redis_cluster_ssl: bool,
    #[serde(default)]
    redis_cluster_ssl_verify: bool,
}

fn local() -> String {
    "local".into()
}
fn default_port() -> u16 {
    6379
}
fn default_timeout() -> u64 {
    1000
}

/// JSON-schema properties of the Redis settings, for the plugins' schemas.
pub fn schema_properties() -> serde_json::Map<String, Value> {
    let v = serde_json::json!({
        "policy": {"type": "string", "enum": ["local", "redis", "redis-cluster"], "default": "local"},
        "redis_host": {"type": "string", "minLength": 2},
        "redis_port": {"type": "integer", "minimum": 1, "default": 6379},
        "redis_username": {"type": "string", "minLength": 1},
        "redis_password": {"type": "string", "minLength": 0},
        "redis_database": {"type": "integer", "minimum": 0, "default": 0},
        "redis_timeout": {"type": "integer", "minimum": 1, "default": 1000},
        "redis_ssl": {"type": "boolean", "default": false},
        "redis_ssl_verify": {"type": "boolean", "default": false},
        "redis_keepalive_timeout": {"type": "integer", "minimum": 1000},
        "redis_keepalive_pool": {"type": "integer", "minimum": 1},
        "redis_cluster_nodes": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 2}},
        "redis_cluster_name": {"type": "string"},
        "redis_cluster_ssl": {"type": "boolean", "default": false},
        "redis_cluster_ssl_verify": {"type": "boolean", "default": false}
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a literal object"),
    }
}

/// Where a limit plugin keeps its counters in Redis, and what it does when
/// Redis cannot answer.
#[derive(Clone)]
pub struct RedisLimiter {
    pub target: Arc<RedisTarget>,
    /// Prepended to every counter key: the plugin's state key, so counters
    /// of different routes and settings never mix, and stay the same
    /// across reloads and across gateway processes with the same config.
    pub prefix: Arc<str>,
    pub allow_degradation: bool,
}

/// Split `raw` into the plugin's own settings and, for a Redis policy, the
/// limiter. `state_key` names the plugin's counters (owner, plugin, config
/// hash, or group).
pub fn split<'v>(
    raw: &'v Value,
    ctx: &BuildContext,
    state_key: &str,
) -> Result<(Cow<'v, Value>, Option<RedisLimiter>), ConfigError> {
    let Value::Object(map) = raw else {
        return Ok((Cow::Borrowed(raw), None));
    };
    if !map.keys().any(|k| FIELDS.contains(&k.as_str())) {
        return Ok((Cow::Borrowed(raw), None));
    }
    let (mut own, mut redis) = (serde_json::Map::new(), serde_json::Map::new());
    for (k, v) in map {
        if FIELDS.contains(&k.as_str()) {
            redis.insert(k.clone(), v.clone());
        } else {
            own.insert(k.clone(), v.clone());
        }
    }
    let allow_degradation = own
        .get("allow_degradation")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let conf: RedisConf = parse_conf(&Value::Object(redis))?;
    let target =
        match conf.policy.as_str() {
            "local" => None,
            "redis" => Some(single_target(&conf, ctx)?),
            "redis-cluster" => Some(cluster_target(&conf, ctx)?),
            "redis-sentinel" => return Err(ConfigError::new(
                "policy",
                "policy \"redis-sentinel\" is not supported; use \"redis\" or \"redis-cluster\"",
            )),
            other => {
                return Err(ConfigError::new(
                    "policy",
                    format!(
                    "unknown policy \"{other}\"; expected \"local\", \"redis\" or \"redis-cluster\""
                ),
                ))
            }
        };
    let limiter = target.map(|target| RedisLimiter {
        target,
        prefix: counter_prefix(state_key, &own).into(),
        allow_degradation,
    });
    Ok((Cow::Owned(Value::Object(own)), limiter))
}

/// `portcullis:{<scope>:<hash>:`, closed by [`RedisLimiter::key`]. The
/// scope is `state_key` (`<owner>:<plugin>:<hash of the raw config>`, or
/// `group:<name>:...`) without its hash; the hash here covers the plugin's
/// own settings only, `allow_degradation` excluded, so that what decides the
/// counter is what is counted, not how Redis is reached.
fn counter_prefix(state_key: &str, own: &serde_json::Map<String, Value>) -> String {
    use sha2::{Digest, Sha256};
    let scope = match state_key.rsplit_once(':') {
        Some((scope, hash)) if !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            scope
        }
        _ => state_key,
    };
    /// Canonical JSON: object keys sorted, so the order a config lists
    /// them in does not matter.
    fn feed(v: &Value, h: &mut Sha256) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<_> = m.keys().collect();
                keys.sort();
                h.update(b"{");
                for k in keys {
                    feed(&Value::String(k.clone()), h);
                    h.update(b":");
                    feed(&m[k], h);
                    h.update(b",");
                }
                h.update(b"}");
            }
            Value::Array(a) => {
                h.update(b"[");
                for x in a {
                    feed(x, h);
                    h.update(b",");
                }
                h.update(b"]");
            }
            other => h.update(other.to_string().as_bytes()),
        }
    }
    let mut hasher = Sha256::new();
    let mut counted = own.clone();
    counted.remove("allow_degradation");
    feed(&Value::Object(counted), &mut hasher);
    let digest = hasher.finalize();
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("portcullis:{{{scope}:{hash}:")
}

fn timeout(conf: &RedisConf) -> Result<Duration, ConfigError> {
    if conf.redis_timeout == 0 {
        return Err(ConfigError::new("redis_timeout", "must be at least 1"));
    }
    Ok(Duration::from_millis(conf.redis_timeout))
}

/// Shared per target: the same host, port, database, credentials and TLS
/// settings give the same connection.
fn shared(
    ctx: &BuildContext,
    conf: &RedisConf,
    make: impl FnOnce() -> RedisTarget,
) -> Arc<RedisTarget> {
    let identity = serde_json::json!([
        conf.policy,
        conf.redis_host,
        conf.redis_port,
        conf.redis_username,
        conf.redis_password,
        conf.redis_database,
        conf.redis_timeout,
        conf.redis_ssl,
        conf.redis_ssl_verify,
        conf.redis_cluster_nodes,
        conf.redis_cluster_ssl,
        conf.redis_cluster_ssl_verify,
    ]);
    // Hashed, so the shared-state map never holds the password as a key.
    let key = format!("redis-target:{:x}", config_hash(&identity));
    ctx.state.get_or_insert(&key, make)
}

fn single_target(conf: &RedisConf, ctx: &BuildContext) -> Result<Arc<RedisTarget>, ConfigError> {
    let host = conf
        .redis_host
        .as_deref()
        .ok_or_else(|| ConfigError::new("redis_host", "required when policy is \"redis\""))?;
    if host.is_empty() || host.contains(['/', '@', '#', '?', ' ']) {
        return Err(ConfigError::new("redis_host", "not a host name or address"));
    }
    let timeout = timeout(conf)?;
    let scheme = if conf.redis_ssl { "rediss" } else { "redis" };
    let host_part = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let insecure = if conf.redis_ssl && !conf.redis_ssl_verify {
        "#insecure"
    } else {
        ""
    };
    let url = format!(
        "{scheme}://{host_part}:{}/{}{insecure}",
        conf.redis_port, conf.redis_database
    );
    let mut info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| ConfigError::new("redis_host", format!("invalid Redis address: {e}")))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &conf.redis_username {
        settings = settings.set_username(user);
    }
    if let Some(pass) = conf.redis_password.as_deref().filter(|p| !p.is_empty()) {
        settings = settings.set_password(pass);
    }
    info = info.set_redis_settings(settings);
    let client = redis::Client::open(info)
        .map_err(|e| ConfigError::new("redis_host", format!("invalid Redis settings: {e}")))?;
    let label = format!(
        "redis {host_part}:{}/{}",
        conf.redis_port, conf.redis_database
    );
    Ok(shared(ctx, conf, || {
        RedisTarget::new(
            label,
            timeout,
            Conn::Single {
                client,
                manager: OnceLock::new(),
            },
        )
    }))
}

fn cluster_target(conf: &RedisConf, ctx: &BuildContext) -> Result<Arc<RedisTarget>, ConfigError> {
    let nodes = conf.redis_cluster_nodes.as_deref().unwrap_or_default();
    if nodes.is_empty() {
        return Err(ConfigError::new(
            "redis_cluster_nodes",
            "required when policy is \"redis-cluster\": a list of \"host:port\"",
        ));
    }
    if conf.redis_cluster_name.as_deref().is_none_or(str::is_empty) {
        return Err(ConfigError::new(
            "redis_cluster_name",
            "required when policy is \"redis-cluster\"",
        ));
    }
    let timeout = timeout(conf)?;
    let scheme = if conf.redis_cluster_ssl {
        "rediss"
    } else {
        "redis"
    };
    let mut urls = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        let valid = node
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            && !node.contains(['/', '@', '#', '?', ' ']);
        if !valid {
            return Err(ConfigError::new(
                format!("redis_cluster_nodes[{i}]"),
                "expected \"host:port\"",
            ));
        }
        urls.push(format!("{scheme}://{node}"));
    }
    let mut builder = ClusterClient::builder(urls)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(1);
    if conf.redis_cluster_ssl {
        builder = builder.tls(if conf.redis_cluster_ssl_verify {
            redis::TlsMode::Secure
        } else {
            redis::TlsMode::Insecure
        });
    }
    if let Some(user) = &conf.redis_username {
        builder = builder.username(user);
    }
    if let Some(pass) = conf.redis_password.as_deref().filter(|p| !p.is_empty()) {
        builder = builder.password(pass);
    }
    let client = builder.build().map_err(|e| {
        ConfigError::new(
            "redis_cluster_nodes",
            format!("invalid cluster settings: {e}"),
        )
    })?;
    let label = format!(
        "redis-cluster {} ({} nodes)",
        conf.redis_cluster_name.as_deref().unwrap_or_default(),
        nodes.len()
    );
    Ok(shared(ctx, conf, || {
        RedisTarget::new(
            label,
            timeout,
            Conn::Cluster {
                client: Box::new(client),
                conn: tokio::sync::OnceCell::new(),
            },
        )
    }))
}

enum Conn {
    Single {
        client: redis::Client,
        /// Made on first use, on a runtime; lazy, so building a config never
        /// waits for Redis and an unreachable Redis does not refuse it.
        manager: OnceLock<ConnectionManager>,
    },
    Cluster {
        client: Box<ClusterClient>,
        conn: tokio::sync::OnceCell<ClusterConnection>,
    },
}

/// One Redis deployment and its connection.
pub struct RedisTarget {
    /// For logs: host and port, never credentials.
    label: String,
    timeout: Duration,
    conn: Conn,
    origin: Instant,
    /// Seconds since `origin` of the last warning (plus one; 0 = never).
    last_warned: AtomicU64,
}

/// Why Redis gave no answer. The text never holds credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisFailure(pub String);

impl RedisTarget {
    fn new(label: String, timeout: Duration, conn: Conn) -> Self {
        RedisTarget {
            label,
            timeout,
            conn,
            origin: Instant::now(),
            last_warned: AtomicU64::new(0),
        }
    }

    #[cfg(test)]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Run `script` on `key` with integer `args`; its answer is a list of
    /// integers. Bounded by `redis_timeout`, connection included.
    pub async fn eval(
        &self,
        script: &'static Script,
        key: &str,
        args: &[i64],
    ) -> Result<Vec<i64>, RedisFailure> {
        let call = async {
            let mut invocation = script.key(key);
            for a in args {
                invocation.arg(*a);
            }
            match &self.conn {
                Conn::Single { client, manager } => {
                    let mut m = match manager.get() {
                        Some(m) => m.clone(),
                        None => {
                            let config = ConnectionManagerConfig::new()
                                .set_connection_timeout(Some(self.timeout))
                                .set_response_timeout(Some(self.timeout))
                                .set_number_of_retries(2)
                                .set_min_delay(Duration::from_millis(50))
                                .set_max_delay(Duration::from_millis(500));
                            let made =
                                ConnectionManager::new_lazy_with_config(client.clone(), config)
                                    .map_err(|e| RedisFailure(e.to_string()))?;
                            manager.get_or_init(|| made).clone()
                        }
                    };
                    invocation
                        .invoke_async::<Vec<i64>>(&mut m)
                        .await
                        .map_err(|e| RedisFailure(e.to_string()))
                }
                Conn::Cluster { client, conn } => {
                    let mut c = conn
                        .get_or_try_init(|| client.get_async_connection())
                        .await
                        .map_err(|e| RedisFailure(e.to_string()))?
                        .clone();
                    invocation
                        .invoke_async::<Vec<i64>>(&mut c)
                        .await
                        .map_err(|e| RedisFailure(e.to_string()))
                }
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(RedisFailure(format!(
                "no answer within redis_timeout ({} ms)",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Count a failed call and warn, at most once a second per target.
    fn note_failure(&self, plugin: &str, failure: &RedisFailure, fail_open: bool) {
        let total = if fail_open {
            FAILED_OPEN.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            FAILED_CLOSED.fetch_add(1, Ordering::Relaxed) + 1
        };
        let now = self.origin.elapsed().as_secs() + 1;
        let last = self.last_warned.load(Ordering::Relaxed);
        if last != now
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                plugin,
                target = %self.label,
                error = %failure.0,
                total,
                "redis unavailable for rate limiting; {}",
                if fail_open {
                    "failing open (allow_degradation)"
                } else {
                    "failing closed (503)"
                }
            );
        }
    }
}

impl RedisLimiter {
    /// The answer when Redis could not be asked: `None` lets the request
    /// through (`allow_degradation`), else 503 with `msg`.
    pub fn degrade(&self, plugin: &str, failure: &RedisFailure, msg: &str) -> Option<Rejection> {
        self.target
            .note_failure(plugin, failure, self.allow_degradation);
        (!self.allow_degradation)
            .then(|| Rejection::error_msg(StatusCode::SERVICE_UNAVAILABLE, msg))
    }

    /// The counter key of a limit key: the whole of it inside the hash tag
    /// the prefix opened, so the slot depends on the limit key too.
    pub fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len() + 1);
        k.push_str(&self.prefix);
        k.push_str(key);
        k.push('}');
        k
    }
}

/// Fixed window: count this request; the first request of a window starts
/// its expiry. ARGV[1]: window in ms. Returns {count after this request,
/// ms until the window ends}.
pub static FIXED_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if n == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
",
    )
});

/// Sliding window, as a weighted pair of fixed windows (the previous
/// window counts for the part of it still inside the sliding window).
/// ARGV[1]: window in ms, ARGV[2]: limit. The request is counted only when
/// admitted. Returns {1 admitted / 0 refused, estimated count after this
/// request, ms until the current fixed window ends}.
pub static SLIDING_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index = math.floor(now / window)
local cur_key = KEYS[1] .. ':' .. index
local prev_key = KEYS[1] .. ':' .. (index - 1)
local cur = tonumber(redis.call('GET', cur_key) or '0')
local prev = tonumber(redis.call('GET', prev_key) or '0')
local elapsed = now - index * window
local estimate = math.floor(prev * (window - elapsed) / window) + cur
local reset = window - elapsed
if estimate >= limit then
  return {0, estimate, reset}
end
redis.call('INCR', cur_key)
redis.call('PEXPIRE', cur_key, window * 2)
return {1, estimate + 1, reset}
",
    )
});

/// Leaky bucket as nginx's limit_req counts it, in thousandths of a
/// request, on Redis's clock. ARGV[1]: rate (thousandths per second),
/// ARGV[2]: burst (thousandths). Returns {1 passed / 0 rejected, excess}.
/// A rejected request is not counted.
pub static LEAKY_BUCKET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'excess', 'last')
local excess = 0
if st[1] then
  local elapsed = now - tonumber(st[2])
  if elapsed < 0 then elapsed = 0 end
  excess = tonumber(st[1]) - math.floor(rate * elapsed / 1000) + 1000
  if excess < 0 then excess = 0 end
end
if excess > burst then
  return {0, excess}
end
redis.call('HSET', KEYS[1], 'excess', excess, 'last', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((excess + 1000) * 1000 / rate) + 1000)
return {1, excess}
",
    )
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::ConsumerIndex;
    use crate::context::SharedState;
    use serde_json::json;

    fn with_ctx<R>(f: impl FnOnce(&BuildContext) -> R) -> R {
        let consumers = Arc::new(ConsumerIndex::default());
        let state = SharedState::default();
        let ctx = BuildContext {
            consumers: &consumers,
            owner: "routes/1",
            state: &state,
        };
        f(&ctx)
    }

    #[test]
    fn local_configs_pass_through_untouched() {
        with_ctx(|ctx| {
            let raw = json!({"count": 1, "time_window": 1});
            let (own, limiter) = split(&raw, ctx, "k").unwrap();
            assert!(matches!(own, Cow::Borrowed(_)));
            assert!(limiter.is_none());
            let raw = json!({"count": 1, "policy": "local", "redis_host": "ignored"});
            let (own, limiter) = split(&raw, ctx, "k").unwrap();
            assert_eq!(*own, json!({"count": 1}));
            assert!(limiter.is_none());
        });
    }

    #[test]
    fn one_connection_per_target_shared_across_instances() {
        with_ctx(|ctx| {
            let a =
                json!({"policy": "redis", "redis_host": "127.0.0.1", "redis_password": "s3cret"});
            let b = json!({"policy": "redis", "redis_host": "127.0.0.1", "redis_password": "s3cret", "allow_degradation": true});
            let c = json!({"policy": "redis", "redis_host": "127.0.0.1", "redis_database": 1});
            let la = split(&a, ctx, "a").unwrap().1.unwrap();
            let lb = split(&b, ctx, "b").unwrap().1.unwrap();
            let lc = split(&c, ctx, "c").unwrap().1.unwrap();
            assert!(Arc::ptr_eq(&la.target, &lb.target));
            assert!(!Arc::ptr_eq(&la.target, &lc.target));
            assert!(lb.allow_degradation && !la.allow_degradation);
            let key = la.key("ip:1");
            assert!(key.starts_with("portcullis:{a:"), "{key}");
            assert!(key.ends_with(":ip:1}"), "{key}");
            // allow_degradation does not change what is counted.
            assert_eq!(lb.key("ip:1").replacen("{b:", "{a:", 1), key);
            assert!(!la.target.label().contains("s3cret"));
            assert_eq!(la.target.label(), "redis 127.0.0.1:6379/0");
        });
    }

    #[test]
    fn counters_depend_on_what_is_counted_not_on_how_redis_is_reached() {
        with_ctx(|ctx| {
            // As limit-count names its state: owner, plugin, raw config hash.
            let prefix = |v: &Value| {
                let state_key = format!("routes/1:limit-count:{:x}", config_hash(v));
                split(v, ctx, &state_key).unwrap().1.unwrap().prefix
            };
            let base = json!({
                "count": 5, "time_window": 60, "policy": "redis-cluster",
                "redis_cluster_name": "c", "redis_cluster_nodes": ["127.0.0.1:7000", "127.0.0.1:7001"]
            });
            let reached_otherwise = json!({
                "time_window": 60, "count": 5, "policy": "redis-cluster",
                "redis_cluster_name": "other", "redis_cluster_nodes": ["127.0.0.1:7001", "127.0.0.1:7000"],
                "redis_timeout": 50, "redis_password": "pw", "allow_degradation": true
            });
            let p = prefix(&base);
            assert_eq!(p, prefix(&reached_otherwise));
            assert!(p.starts_with("portcullis:{routes/1:limit-count:"), "{p}");
            assert!(!prefix(&reached_otherwise).contains("pw"));
            let mut counted_otherwise = base.clone();
            counted_otherwise["count"] = json!(6);
            assert_ne!(p, prefix(&counted_otherwise));
            // A group keeps its name in the key.
            let own = serde_json::Map::new();
            assert!(counter_prefix("group:g:limit-count:ab12", &own)
                .starts_with("portcullis:{group:g:limit-count:"));
        });
    }

    #[test]
    fn missing_and_wrong_settings_name_their_field() {
        with_ctx(|ctx| {
            let field = |v: Value| split(&v, ctx, "k").err().unwrap().field;
            assert_eq!(field(json!({"policy": "redis"})), "redis_host");
            assert_eq!(
                field(json!({"policy": "redis-cluster"})),
                "redis_cluster_nodes"
            );
            assert_eq!(
                field(json!({"policy": "redis-cluster", "redis_cluster_nodes": ["a:1"]})),
                "redis_cluster_name"
            );
            assert_eq!(
                field(
                    json!({"policy": "redis-cluster", "redis_cluster_name": "c", "redis_cluster_nodes": ["nope"]})
                ),
                "redis_cluster_nodes[0]"
            );
            assert_eq!(field(json!({"policy": "redis-sentinel"})), "policy");
            assert_eq!(field(json!({"policy": "memcached"})), "policy");
            assert_eq!(
                field(json!({"policy": "redis", "redis_host": "h", "redis_timeout": 0})),
                "redis_timeout"
            );
            assert_eq!(
                field(json!({"policy": "redis", "redis_host": "h", "redis_port": "x"})),
                "redis_port"
            );
        });
    }

    #[test]
    fn cluster_settings_build() {
        with_ctx(|ctx| {
            let raw = json!({
                "policy": "redis-cluster", "redis_cluster_name": "c",
                "redis_cluster_nodes": ["127.0.0.1:7000", "127.0.0.1:7001"],
                "redis_password": "pw"
            });
            let l = split(&raw, ctx, "k").unwrap().1.unwrap();
            assert_eq!(l.target.label(), "redis-cluster c (2 nodes)");
        });
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_within_the_timeout_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let raw = json!({
            "policy": "redis", "redis_host": "127.0.0.1", "redis_port": port,
            "redis_password": "hunter2", "redis_timeout": 300
        });
        let limiter = with_ctx(|ctx| split(&raw, ctx, "k").unwrap().1.unwrap());
        let started = Instant::now();
        let err = limiter
            .target
            .eval(&FIXED_WINDOW, &limiter.key("x"), &[1000])
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(!err.0.contains("hunter2"), "{}", err.0);
        let closed = limiter.degrade("limit-count", &err, "failed to limit count");
        assert_eq!(closed.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(redis_failed_closed_total() >= 1);
    }
}
