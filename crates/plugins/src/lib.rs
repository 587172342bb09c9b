//! portcullis plugins. Each plugin is one module: its typed config, a
//! constructor that validates it, and its per-request code. The registry
//! lists them explicitly; nothing registers itself behind the reader's back.

pub mod consumers;
pub mod context;
pub mod dry_run;
pub mod registry;
pub mod secrets_at_rest;

mod auth_common;
mod basic_auth;
mod consumer_restriction;
mod cors;
mod file_logger;
mod http_logger;
mod ip_restriction;
mod jwt_auth;
mod key_auth;
mod limit_conn;
mod limit_count;
mod limit_key;
mod limit_req;
mod limit_store;
mod mocking;
mod mtls_auth;
mod openid_connect;
mod policy;
mod prometheus;
mod proxy_rewrite;
mod real_ip;
mod redirect;
mod redis_policy;
mod request_id;
mod request_validation;
mod response_rewrite;
mod syslog;

pub use consumers::{ConsumerIndex, IndexedCredential};
pub use context::{parse_conf, BuildContext, SharedState};
pub use mtls_auth::PeerCertificate;
pub use proxy_rewrite::{UpstreamHost, UpstreamScheme};
pub use redis_policy::{redis_failed_closed_total, redis_failed_open_total};
pub use registry::{build_plugin, plugin_names, plugin_schema, PluginSpec, REGISTRY};
