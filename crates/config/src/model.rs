//! Typed APISIX resources, exactly as APISIX's Admin API and standalone
//! `apisix.yaml` spell them. Unknown fields are refused, so a typo is an
//! error instead of a silently ignored setting.
//!
//! These are the "low" form: well-typed, not yet cross-checked. `validate`
//! checks references and semantics; `snapshot` compiles them for serving.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A resource id: APISIX accepts strings and integers and treats them alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u64),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a string or an integer id"))?
        {
            Raw::S(s) => Ok(Id(s)),
            Raw::N(n) => Ok(Id(n.to_string())),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Labels = BTreeMap<String, String>;
/// Plugin name → its config, as written.
pub type PluginMap = BTreeMap<String, Value>;

fn enabled() -> u8 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub id: Option<Id>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub uris: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub remote_addr: Option<String>,
    #[serde(default)]
    pub remote_addrs: Vec<String>,
    #[serde(default)]
    pub vars: Option<Value>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "enabled")]
    pub status: u8,
    #[serde(default)]
    pub plugins: PluginMap,
    #[serde(default)]
    pub plugin_config_id: Option<Id>,
    #[serde(default)]
    pub service_id: Option<Id>,
    #[serde(default)]
    pub upstream_id: Option<Id>,
    #[serde(default)]
    pub upstream: Option<Upstream>,
    #[serde(default)]
    pub enable_websocket: Option<bool>,
    #[serde(default)]
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub id: Option<Id>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub plugins: PluginMap,
    #[serde(default)]
    pub upstream_id: Option<Id>,
    #[serde(default)]
    pub upstream: Option<Upstream>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub enable_websocket: Option<bool>,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    #[default]
    Roundrobin,
    Chash,
    LeastConn,
    /// Accepted for APISIX compatibility; served as least_conn.
    Ewma,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    #[default]
    Vars,
    Header,
    Cookie,
    Consumer,
    VarsCombinations,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PassHost {
    #[default]
    Pass,
    Node,
    Rewrite,
}

/// Seconds; fractions allowed, as APISIX.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    #[serde(default = "Timeout::default_secs")]
    pub connect: f64,
    #[serde(default = "Timeout::default_secs")]
    pub send: f64,
    #[serde(default = "Timeout::default_secs")]
    pub read: f64,
}

impl Timeout {
    fn default_secs() -> f64 {
        60.0
    }
}

impl Default for Timeout {
    fn default() -> Self {
        Timeout {
            connect: 60.0,
            send: 60.0,
            read: 60.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeepalivePool {
    #[serde(default = "KeepalivePool::default_size")]
    pub size: usize,
    #[serde(default = "KeepalivePool::default_idle")]
    pub idle_timeout: f64,
    #[serde(default = "KeepalivePool::default_requests")]
    pub requests: u64,
}

impl KeepalivePool {
    fn default_size() -> usize {
        320
    }
    fn default_idle() -> f64 {
        60.0
    }
    fn default_requests() -> u64 {
        1000
    }
}

impl Default for KeepalivePool {
    fn default() -> Self {
        KeepalivePool {
            size: 320,
            idle_timeout: 60.0,
            requests: 1000,
        }
    }
}

/// `nodes` as APISIX accepts it: `{"host:port": weight}` or a list.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Nodes {
    Map(BTreeMap<String, u32>),
    List(Vec<Node>),
}

impl<'de> Deserialize<'de> for Nodes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match v {
            Value::Object(_) => serde_json::from_value(v).map(Nodes::Map).map_err(|e| {
                serde::de::Error::custom(format!("a map of \"host:port\" to weight: {e}"))
            }),
            Value::Array(_) => serde_json::from_value(v).map(Nodes::List).map_err(|e| {
                serde::de::Error::custom(format!("a list of {{host, port, weight}}: {e}"))
            }),
            _ => Err(serde::de::Error::custom(
                "expected a map of \"host:port\" to weight or a list of {host, port, weight}",
            )),
        }
    }
}

impl Default for Nodes {
    fn default() -> Self {
        Nodes::List(Vec::new())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "Node::default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub metadata: Option<Value>,
}

impl Node {
    fn default_weight() -> u32 {
        1
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(default)]
    pub id: Option<Id>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(rename = "type", default)]
    pub balancer: BalancerKind,
    #[serde(default)]
    pub nodes: Nodes,
    #[serde(default)]
    pub hash_on: HashOn,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub scheme: Scheme,
    #[serde(default)]
    pub pass_host: PassHost,
    #[serde(default)]
    pub upstream_host: Option<String>,
    #[serde(default)]
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry_timeout: Option<f64>,
    #[serde(default)]
    pub keepalive_pool: Option<KeepalivePool>,
    #[serde(default)]
    pub checks: Option<Checks>,
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
}

fn yes() -> bool {
    true
}

/// APISIX's health checks. Defaults are APISIX's (lua-resty-healthcheck).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    #[serde(default)]
    pub active: Option<ActiveCheck>,
    #[serde(default)]
    pub passive: Option<PassiveCheck>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveCheck {
    #[serde(rename = "type", default = "ActiveCheck::default_type")]
    pub check_type: String,
    #[serde(default = "ActiveCheck::default_timeout")]
    pub timeout: f64,
    #[serde(default = "ActiveCheck::default_concurrency")]
    pub concurrency: u32,
    #[serde(default = "ActiveCheck::default_path")]
    pub http_path: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "yes")]
    pub https_verify_certificate: bool,
    #[serde(default)]
    pub req_headers: Vec<String>,
    #[serde(default)]
    pub healthy: ActiveHealthy,
    #[serde(default)]
    pub unhealthy: ActiveUnhealthy,
}

impl ActiveCheck {
    fn default_type() -> String {
        "http".into()
    }
    fn default_timeout() -> f64 {
        1.0
    }
    fn default_concurrency() -> u32 {
        10
    }
    fn default_path() -> String {
        "/".into()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthy {
    #[serde(default = "one_f64")]
    pub interval: f64,
    #[serde(default = "ActiveHealthy::default_statuses")]
    pub http_statuses: Vec<u16>,
    #[serde(default = "two")]
    pub successes: u32,
}

impl ActiveHealthy {
    fn default_statuses() -> Vec<u16> {
        vec![200, 302]
    }
}

impl Default for ActiveHealthy {
    fn default() -> Self {
        ActiveHealthy {
            interval: 1.0,
            http_statuses: Self::default_statuses(),
            successes: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveUnhealthy {
    #[serde(default = "one_f64")]
    pub interval: f64,
    #[serde(default = "ActiveUnhealthy::default_statuses")]
    pub http_statuses: Vec<u16>,
    #[serde(default = "five")]
    pub http_failures: u32,
    #[serde(default = "two")]
    pub tcp_failures: u32,
    #[serde(default = "three")]
    pub timeouts: u32,
}

impl ActiveUnhealthy {
    fn default_statuses() -> Vec<u16> {
        vec![429, 404, 500, 501, 502, 503, 504, 505]
    }
}

impl Default for ActiveUnhealthy {
    fn default() -> Self {
        ActiveUnhealthy {
            interval: 1.0,
            http_statuses: Self::default_statuses(),
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 3,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveCheck {
    #[serde(rename = "type", default)]
    pub check_type: Option<String>,
    #[serde(default)]
    pub healthy: PassiveHealthy,
    #[serde(default)]
    pub unhealthy: PassiveUnhealthy,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthy {
    #[serde(default = "PassiveHealthy::default_statuses")]
    pub http_statuses: Vec<u16>,
    #[serde(default = "five")]
    pub successes: u32,
}

impl PassiveHealthy {
    fn default_statuses() -> Vec<u16> {
        (200..=207).chain([208, 226]).chain(300..=308).collect()
    }
}

impl Default for PassiveHealthy {
    fn default() -> Self {
        PassiveHealthy {
            http_statuses: Self::default_statuses(),
            successes: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveUnhealthy {
    #[serde(default = "PassiveUnhealthy::default_statuses")]
    pub http_statuses: Vec<u16>,
    #[serde(default = "five")]
    pub http_failures: u32,
    #[serde(default = "two")]
    pub tcp_failures: u32,
    #[serde(default = "seven")]
    pub timeouts: u32,
}

impl PassiveUnhealthy {
    fn default_statuses() -> Vec<u16> {
        vec![429, 500, 503]
    }
}

impl Default for PassiveUnhealthy {
    fn default() -> Self {
        PassiveUnhealthy {
            http_statuses: Self::default_statuses(),
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 7,
        }
    }
}

fn one_f64() -> f64 {
    1.0
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn five() -> u32 {
    5
}
fn seven() -> u32 {
    7
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub username: String,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub group_id: Option<Id>,
    #[serde(default)]
    pub plugins: PluginMap,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

/// A credential of a consumer (APISIX 3.7+): one auth plugin's secret, so a
/// consumer can hold several and rotate them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    #[serde(default)]
    pub id: Option<Id>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub plugins: PluginMap,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

/// consumer_groups, plugin_configs and global_rules share this shape: a set
/// of plugins with an id.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSet {
    #[serde(default)]
    pub id: Option<Id>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub plugins: PluginMap,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Ssl {
    #[serde(default)]
    pub id: Option<Id>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(rename = "type", default)]
    pub ssl_type: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub certs: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub snis: Vec<String>,
    #[serde(default)]
    pub client: Option<SslClient>,
    #[serde(default)]
    pub status: Option<u8>,
    #[serde(default)]
    pub ssl_protocols: Vec<String>,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SslClient {
    pub ca: String,
    #[serde(default = "SslClient::default_depth")]
    pub depth: u32,
    #[serde(default)]
    pub skip_mtls_uri_regex: Vec<String>,
}

impl SslClient {
    fn default_depth() -> u32 {
        1
    }
}
