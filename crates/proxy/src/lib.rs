//! The portcullis data plane.
//!
//! One current-thread tokio runtime per worker thread, each with its own
//! SO_REUSEPORT listener and its own upstream connection pool: no locks and
//! no cross-thread hand-off on the request path (DESIGN.md's measured
//! design). A request walks the phases of `pipeline`, then `forward` sends
//! it upstream.

pub mod access_log;
mod body;
mod forward;
mod headers;
pub mod health;
mod listener;
pub mod ops;
mod pipeline;
mod pool;
mod server;
pub mod tls;
mod upstream_tls;

pub use server::{spawn_workers, DataPlane, Shutdown};
