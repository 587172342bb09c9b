//! portcullis's black-box tests, one module per capability, linked into one
//! test binary. Each module starts the real `portcullis` binary (or real
//! Redis, etcd and TLS peers) on free loopback ports; nextest still runs
//! every test in its own process.
//!
//! One binary instead of one per file: every test binary links the whole
//! gateway, and thirty of them took tens of gigabytes of disk and most of
//! the link time of a clean CI build.

mod admin_crash_safety;
mod admin_sdk;
mod audit;
mod auth_basic;
mod auth_jwt;
mod authorization;
mod cli;
mod dual_control;
mod etcd_cluster;
mod etcd_containment;
mod json_schema_suite;
mod limits;
mod limits_redis;
mod limits_redis_cluster;
mod migrate;
mod mtls;
mod oidc;
mod openapi_import;
mod proxying;
mod quarantine;
mod reload;
mod routing;
mod runbook;
mod telemetry;
mod tiers;
mod tls;
mod tls_support;
mod tracing;
mod upstream_health;
