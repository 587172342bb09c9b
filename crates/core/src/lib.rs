//! Shared vocabulary of portcullis: the phase contract every plugin implements,
//! the per-request state the phases share, consumers, decisions, and the
//! configuration error that names the field at fault.
//!
//! Nothing here does IO; the proxy, config and plugin crates build on it.

pub mod consumer;
pub mod decision;
pub mod error;
pub mod phase;
pub mod request;

pub use consumer::{Consumer, ConsumerIndex, IndexedCredential};
pub use decision::{Decision, DecisionRecord, Outcome};
pub use error::ConfigError;
pub use phase::{Flow, Phase, Plugin, Rejection};
pub use request::RequestState;
