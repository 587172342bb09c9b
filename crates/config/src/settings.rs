//! Node settings: the `gateway:` section of the config file. APISIX keeps
//! these in `conf/config.yaml`; portcullis keeps them beside the resources.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Plain HTTP data plane listeners (HTTP/1.1 and h2c prior knowledge).
    #[serde(default = "GatewaySettings::default_listen")]
    pub listen: Vec<SocketAddr>,
    /// HTTPS data plane listeners (TLS 1.2/1.3, ALPN h2 and http/1.1,
    /// certificates chosen by SNI from `ssls`). Empty by default: APISIX
    /// listens on 9443 out of the box, portcullis only where told to
    /// (docs/tls.md).
    #[serde(default)]
    pub listen_tls: Vec<SocketAddr>,
    #[serde(default)]
    pub admin: AdminSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// Where resources come from. Default: `file` when the file holds
    /// resources, else `store`.
    #[serde(default)]
    pub config_source: Option<ConfigSource>,
    #[serde(default = "GatewaySettings::default_data_dir")]
    pub data_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter.
    /// `RUST_LOG` wins when set.
    #[serde(default = "GatewaySettings::default_log_level")]
    pub log_level: String,
    /// Data plane threads, one current-thread runtime each. 0: one per core.
    #[serde(default)]
    pub workers: usize,
    /// One JSON line per request: `stdout`, `off`, or a file path.
    #[serde(default = "GatewaySettings::default_access_log")]
    pub access_log: String,
    #[serde(default)]
    pub http: HttpLimits,
    /// Peers whose `X-Forwarded-*` headers are believed. Empty: inbound
    /// `X-Forwarded-For` is kept and appended to, as APISIX does.
    #[serde(default)]
    pub trusted_addresses: Vec<ipnet::IpNet>,
    /// What the decision record carries and hides (docs/decision-record.md).
    #[serde(default)]
    pub telemetry: portcullis_telemetry::TelemetrySettings,
    /// Where `config_source: etcd` finds the resources (docs/etcd.md).
    #[serde(default)]
    pub etcd: EtcdSettings,
    /// The hash-chained decision audit store (docs/audit.md).
    #[serde(default)]
    pub audit: portcullis_audit::AuditSettings,
    /// Behaviour profiles and anomaly detectors (docs/audit.md).
    #[serde(default)]
    pub anomaly: portcullis_audit::AnomalySettings,
}

impl GatewaySettings {
    fn default_listen() -> Vec<SocketAddr> {
        vec![SocketAddr::from(([0, 0, 0, 0], 9080))]
    }
    fn default_data_dir() -> PathBuf {
        PathBuf::from("./data")
    }
    fn default_log_level() -> String {
        "info".into()
    }
    fn default_access_log() -> String {
        "stdout".into()
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    File,
    Store,
    Etcd,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    #[serde(default = "AdminSettings::default_listen")]
    pub listen: SocketAddr,
    /// There is no default key: without keys every admin request is refused.
    #[serde(default)]
    pub keys: Vec<AdminKey>,
    /// Client networks allowed to reach the Admin API.
    #[serde(default = "AdminSettings::default_allow")]
    pub allow: Vec<ipnet::IpNet>,
}

impl AdminSettings {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9180))
    }
    fn default_allow() -> Vec<ipnet::IpNet> {
        vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    }
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: Self::default_listen(),
            keys: Vec::new(),
            allow: Self::default_allow(),
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminKey {
    pub name: String,
    pub key: String,
    #[serde(default)]
    pub role: AdminRole,
}

impl std::fmt::Debug for AdminKey {
    // Keys never reach a log line, not even through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRole {
    #[default]
    Admin,
    Viewer,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    #[serde(default = "MetricsSettings::default_listen")]
    pub listen: SocketAddr,
}

impl MetricsSettings {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9091))
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            listen: Self::default_listen(),
        }
    }
}

/// Bounds on what a client may send before the gateway gives up on it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimits {
    /// Request line plus headers, bytes. Past it: 431.
    #[serde(default = "HttpLimits::default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Header count. Past it: 431.
    #[serde(default = "HttpLimits::default_max_headers")]
    pub max_headers: usize,
    /// Seconds to receive a request's headers, which also bounds how long
    /// an idle keep-alive connection waits for its next request. Past it: 408.
    #[serde(default = "HttpLimits::default_header_read_timeout")]
    pub header_read_timeout: f64,
    /// Seconds SIGTERM waits for in-flight requests.
    #[serde(default = "HttpLimits::default_drain_timeout")]
    pub drain_timeout: f64,
}

impl HttpLimits {
    fn default_max_header_bytes() -> usize {
        32 * 1024
    }
    fn default_max_headers() -> usize {
        100
    }
    fn default_header_read_timeout() -> f64 {
        60.0
    }
    fn default_drain_timeout() -> f64 {
        30.0
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

/// `gateway.etcd`: the etcd cluster `config_source: etcd` reads and the
/// Admin API writes, with the names APISIX gives them in `deployment.etcd`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// Endpoints, `http://127.0.0.1:2379` or `https://...`.
    #[serde(default = "EtcdSettings::default_host")]
    pub host: Vec<String>,
    /// Every key lives under it: `{prefix}/routes/{id}`.
    #[serde(default = "EtcdSettings::default_prefix")]
    pub prefix: String,
    /// Seconds one etcd request may take.
    #[serde(default = "EtcdSettings::default_timeout")]
    pub timeout: f64,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub tls: Option<EtcdTls>,
    /// portcullis: seconds the node may go without hearing from etcd before
    /// `/readyz` fails (it keeps serving its last good config regardless).
    /// 0: never fail on staleness.
    #[serde(default = "EtcdSettings::default_max_staleness")]
    pub max_staleness: f64,
}

impl EtcdSettings {
    fn default_host() -> Vec<String> {
        vec!["http://127.0.0.1:2379".into()]
    }
    fn default_prefix() -> String {
        "/apisix".into()
    }
    fn default_timeout() -> f64 {
        30.0
    }
    fn default_max_staleness() -> f64 {
        60.0
    }
}

impl Default for EtcdSettings {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

impl std::fmt::Debug for EtcdSettings {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("host", &self.host)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("max_staleness", &self.max_staleness)
            .finish()
    }
}

/// TLS towards etcd: a client certificate, and whether (and against which
/// CA) etcd's certificate is verified.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// Client certificate (PEM) and its key, for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// portcullis always verifies etcd's certificate; `false` is refused.
    #[serde(default = "EtcdTls::default_verify")]
    pub verify: bool,
    /// portcullis: the CA that signed etcd's certificate (PEM). Default: the
    /// system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The name to verify etcd's certificate against, when not the host's.
    #[serde(default)]
    pub sni: Option<String>,
}

impl EtcdTls {
    fn default_verify() -> bool {
        true
    }
}
