//! Test helpers shared by portcullis's black-box tests: free loopback ports,
//! a small HTTP client, upstreams that record what reached them, and the
//! real `portcullis` binary started on loopback ports.

pub mod client;
pub mod etcd;
pub mod gateway;
pub mod otlp;
pub mod redis;
pub mod redis_cluster;
pub mod upstream;

pub use client::{request, Response};
pub use gateway::Gateway;
pub use upstream::{RecordingUpstream, Seen};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}
