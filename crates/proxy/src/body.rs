//! Body types of the data plane, as plain enums rather than boxed trait
//! objects: a request body is either still streaming from the client or was
//! buffered for validation; a response body is either the upstream's stream
//! or one the gateway made.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pool::PooledBody;

/// What goes upstream.
pub enum ReqBody {
    Streaming(Incoming),
    Full(Option<Bytes>),
}

impl ReqBody {
    pub fn empty() -> Self {
        ReqBody::Full(None)
    }

    /// A buffered body can be sent again on a retry; a stream cannot.
    pub fn replayable(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Full(b) => Some(ReqBody::Full(b.clone())),
            ReqBody::Streaming(s) if s.is_end_stream() => Some(ReqBody::Full(None)),
            ReqBody::Streaming(_) => None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Streaming(s) => Pin::new(s).poll_frame(cx),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Streaming(s) => s.is_end_stream(),
            ReqBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Streaming(s) => s.size_hint(),
            ReqBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ReqBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// What goes to the client.
pub enum RespBody {
    Upstream(PooledBody),
    Full(Option<Bytes>),
}

impl RespBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        RespBody::Full(if b.is_empty() { None } else { Some(b) })
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Upstream(s) => Pin::new(s).poll_frame(cx),
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream(s) => s.is_end_stream(),
            RespBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream(s) => s.size_hint(),
            RespBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
