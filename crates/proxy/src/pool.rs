//! Upstream connections, pooled per worker thread. Each worker runs its own
//! current-thread runtime, so its pool needs no lock: a connection is taken
//! out for a request and put back when the response body has been read to
//! the end (an HTTP/1.1 connection cannot carry a second request before).

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::body::ReqBody;

struct Idle {
    sender: SendRequest<ReqBody>,
    since: Instant,
    uses: u64,
}

thread_local! {
    // FxHash: keys are the gateway's own upstream addresses, not client input.
    static IDLE: RefCell<HashMap<Arc<str>, Vec<Idle>, rustc_hash::FxBuildHasher>> =
        RefCell::new(HashMap::default());
}

/// How a pooled connection may be reused (APISIX's `keepalive_pool`).
#[derive(Clone, Copy, Debug)]
pub struct Reuse {
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub max_requests: u64,
}

pub struct Conn {
    pub sender: SendRequest<ReqBody>,
    key: Arc<str>,
    uses: u64,
    reuse: Reuse,
}

#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    Tls(std::io::Error),
    Handshake(hyper::Error),
}

/// Where to connect: a `host:port`, and for https upstreams the name to
/// send as SNI and verify, with the TLS settings.
pub struct Target<'a> {
    pub authority: &'a Arc<str>,
    pub tls: Option<(
        rustls::pki_types::ServerName<'static>,
        std::sync::Arc<rustls::ClientConfig>,
    )>,
}

impl Target<'_> {
    /// Plain and TLS connections to one address are pooled apart, and TLS
    /// ones by the name they were verified for.
    fn pool_key(&self) -> Arc<str> {
        match &self.tls {
            None => self.authority.clone(),
            Some((name, _)) => format!("https://{}@{}", name.to_str(), self.authority).into(),
        }
    }
}

/// An idle connection to the target, or a new one.
pub async fn checkout(
    target: &Target<'_>,
    connect_timeout: Duration,
    reuse: Reuse,
) -> Result<Conn, ConnectError> {
    let key = target.pool_key();
    // An idle connection may still be finishing its previous response on
    // the connection task; `ready()` waits for that (a few microseconds) or
    // reports that the upstream closed it.
    while let Some(mut idle) = take_idle(&key, reuse.idle_timeout) {
        if idle.sender.ready().await.is_ok() {
            return Ok(Conn {
                sender: idle.sender,
                key,
                uses: idle.uses,
                reuse,
            });
        }
    }
    let stream = tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect(&**target.authority),
    )
    .await
    .map_err(|_| ConnectError::Timeout)?
    .map_err(ConnectError::Io)?;
    let _ = stream.set_nodelay(true);
    let sender = match &target.tls {
        None => {
            let (sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(ConnectError::Handshake)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            sender
        }
        Some((name, config)) => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls =
                tokio::time::timeout(connect_timeout, connector.connect(name.clone(), stream))
                    .await
                    .map_err(|_| ConnectError::Timeout)?
                    .map_err(ConnectError::Tls)?;
            let (sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake(TokioIo::new(tls))
                .await
                .map_err(ConnectError::Handshake)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            sender
        }
    };
    Ok(Conn {
        sender,
        key,
        uses: 0,
        reuse,
    })
}

fn take_idle(authority: &str, idle_timeout: Duration) -> Option<Idle> {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let list = pool.get_mut(authority)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < idle_timeout && !idle.sender.is_closed() {
                return Some(idle);
            }
        }
        None
    })
}

impl Conn {
    /// Put the connection back for the next request on this thread.
    fn checkin(self) {
        let uses = self.uses + 1;
        if uses >= self.reuse.max_requests || self.sender.is_closed() || self.reuse.max_idle == 0 {
            return;
        }
        IDLE.with(|pool| {
            let mut pool = pool.borrow_mut();
            let list = pool.entry(self.key).or_default();
            if list.len() < self.reuse.max_idle {
                list.push(Idle {
                    sender: self.sender,
                    since: Instant::now(),
                    uses,
                });
            }
        });
    }
}

/// The upstream's response body; returns its connection to the pool when
/// read to the end. Dropped early, the connection is closed instead, since
/// unread bytes would poison the next request.
pub struct PooledBody {
    body: Incoming,
    conn: Option<Conn>,
}

impl PooledBody {
    pub fn new(body: Incoming, conn: Conn) -> Self {
        let mut pooled = PooledBody {
            body,
            conn: Some(conn),
        };
        if pooled.body.is_end_stream() {
            pooled.release();
        }
        pooled
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.checkin();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
