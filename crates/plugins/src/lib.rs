//! portcullis plugins. Each plugin is one module: its typed config, a
//! constructor that validates it, and its per-request code. The registry
//! lists them explicitly; nothing registers itself behind the reader's back.

pub mod consumers;
pub mod context;
pub mod dry_run;
pub mod registry;

mod request_id;

pub use consumers::{ConsumerIndex, IndexedCredential};
pub use context::{parse_conf, BuildContext, SharedState};
pub use registry::{build_plugin, plugin_names, plugin_schema, PluginSpec, REGISTRY};
