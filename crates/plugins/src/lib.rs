//! portcullis plugins. Each plugin is one module: its typed config, a
//! constructor that validates it, and its per-request code. The registry
//! lists them explicitly; nothing registers itself behind the reader's back.

pub mod consumers;
pub mod context;
pub mod dry_run;
pub mod registry;

mod cors;
mod ip_restriction;
mod key_auth;
mod limit_count;
mod limit_key;
mod limit_req;
mod limit_store;
mod mocking;
mod proxy_rewrite;
mod real_ip;
mod redirect;
mod request_id;
mod request_validation;
mod response_rewrite;

pub use consumers::{ConsumerIndex, IndexedCredential};
pub use context::{parse_conf, BuildContext, SharedState};
pub use proxy_rewrite::{UpstreamHost, UpstreamScheme};
pub use registry::{build_plugin, plugin_names, plugin_schema, PluginSpec, REGISTRY};
