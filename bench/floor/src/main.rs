//! The floor: a reverse proxy made of the gateway's crates (tokio's
//! current-thread runtime, hyper's HTTP/1 server and client connections,
//! mimalloc) and nothing else. It forwards every request as is to one
//! upstream over pooled keep-alive connections and streams the answer back:
//! no routing, no header rules, no logs, no metrics. Whatever it costs per
//! request, the gateway cannot cost less while built on these crates.
//!
//!   floor --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    /// Idle upstream connections; one runtime thread, so no lock.
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

fn arg(name: &str) -> SocketAddr {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("usage: floor --listen ADDR --upstream ADDR ({name} missing)"))
}

fn main() {
    let listen = arg("--listen");
    let upstream = arg("--upstream");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| forward(req, upstream));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// An idle connection that is ready for a request, or a new one.
async fn checkout(upstream: SocketAddr) -> Option<SendRequest<Incoming>> {
    while let Some(mut sender) = IDLE.with(|idle| idle.borrow_mut().pop()) {
        if sender.ready().await.is_ok() {
            return Some(sender);
        }
    }
    let stream = TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
) -> Result<Response<Incoming>, Infallible> {
    let bad_gateway = || {
        // An empty `Incoming` cannot be made; the benchmark never gets here.
        panic!("upstream {upstream} failed")
    };
    let Some(mut sender) = checkout(upstream).await else {
        bad_gateway()
    };
    let response = sender
        .send_request(req)
        .await
        .unwrap_or_else(|_| bad_gateway());
    // Back to the pool at once: the next checkout's `ready()` waits until
    // this response's body has been read.
    IDLE.with(|idle| idle.borrow_mut().push(sender));
    Ok(response)
}
