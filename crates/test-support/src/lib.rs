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

/// Poll `check` every 2 ms until it holds (how long that took) or `within`
/// passes (`None`).
pub async fn wait_for(
    mut check: impl AsyncFnMut() -> bool,
    within: std::time::Duration,
) -> Option<std::time::Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    None
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}
