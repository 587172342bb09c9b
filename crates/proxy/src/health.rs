//! Active health checks (see docs/upstreams.md). Placeholder module: the
//! checker tasks are started per snapshot by the binary.
