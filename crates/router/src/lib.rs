//! Route matching for portcullis, following Apache APISIX's route model: a route is chosen
//! by its `uris`, `methods`, `hosts`, `remote_addrs`, `vars` and `priority`.
//!
//! Everything here is pure: the gateway builds a [`Router`] from its route specs whenever
//! the configuration changes and asks it, on each request, which route serves it. No IO,
//! no clocks, no global state.
//!
//! - [`expr`]: the `vars` expression language (lua-resty-expr).
//! - [`host`]: exact and wildcard host patterns.
//! - [`Router`]: the table itself and its candidate order.

pub mod expr;
pub mod host;
mod table;

pub use expr::{Expr, ExprError, NoVars, VarLookup};
pub use host::{HostPattern, HostPatternError};
pub use table::{MatchInput, RouteMatch, RouteSpec, RouteSpecError, Router};
