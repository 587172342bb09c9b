//! portcullis configuration.
//!
//! raw (JSON values from a file, the store or etcd) → typed and validated
//! (`model`, `snapshot::build`) → [`Snapshot`], published through [`Live`].
//! Every source goes through the same `build`, so a mistake is refused the
//! same way wherever it was made.

pub mod file;
pub mod live;
pub mod model;
pub mod raw;
pub mod settings;
pub mod snapshot;
pub mod ssl;
pub mod tiers;
pub mod upstream;

pub use live::{Live, ReloadStatus};
pub use raw::{Kind, RawConfig, RawResource};
pub use settings::{ConfigSource, GatewaySettings};
pub use snapshot::{build, CompiledRoute, Runtime, Snapshot};
