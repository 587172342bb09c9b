//! The phase contract. docs/phases.md describes the same contract for people;
//! keep the two in step.
//!
//! A request passes the phases in the order of [`Phase`]. Within a phase,
//! plugins run by descending priority (APISIX's numbers, so a reader of
//! APISIX's docs finds the same order). A plugin returns [`Flow::Continue`] to
//! hand on, [`Flow::Respond`] to answer the client now (nothing reaches the
//! upstream), or [`Flow::Wait`] when it must wait for something (a delay, a
//! Redis answer) before deciding.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::request::RequestState;

/// The phases a request passes, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Before anything decides: request ids, real client address, CORS
    /// preflights, redirects, mocked answers.
    Rewrite,
    /// Turn a credential into a consumer. The first plugin that
    /// authenticates wins; if none does, the first rejection is answered.
    Authenticate,
    /// Decide whether this identity may reach this route.
    Authorize,
    /// Count and throttle.
    Limit,
    /// Check headers and the buffered body against schemas.
    Validate,
    /// Last changes to the request before it goes upstream.
    BeforeProxy,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Rewrite,
        Phase::Authenticate,
        Phase::Authorize,
        Phase::Limit,
        Phase::Validate,
        Phase::BeforeProxy,
    ];
}

/// An answer to the client instead of the upstream. The body is already the
/// APISIX-compatible JSON; the reason goes to the decision record.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Rejection {
    /// `{"message": msg}`: the shape APISIX's auth and restriction plugins use.
    pub fn message(status: StatusCode, msg: &str) -> Self {
        Self::json_field(status, "message", msg)
    }

    /// `{"error_msg": msg}`: the shape APISIX's limit plugins and router use.
    pub fn error_msg(status: StatusCode, msg: &str) -> Self {
        Self::json_field(status, "error_msg", msg)
    }

    pub fn json_field(status: StatusCode, field: &str, msg: &str) -> Self {
        let mut obj = serde_json::Map::new();
        obj.insert(
            field.to_string(),
            serde_json::Value::String(msg.to_string()),
        );
        let mut body = serde_json::to_vec(&obj).unwrap_or_default();
        body.push(b'\n');
        Rejection {
            status,
            body: Bytes::from(body),
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
        }
    }

    /// A body that is not JSON (APISIX's request-validation answers with the
    /// schema error as plain text).
    pub fn plain(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Rejection {
            status,
            body: body.into(),
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn empty(status: StatusCode) -> Self {
        Rejection {
            status,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }
}

/// What a plugin tells the pipeline.
pub enum Flow {
    Continue,
    Respond(Rejection),
    /// Wait for the future, then treat its result as the plugin's answer.
    /// The future owns what it needs: it cannot borrow the request.
    Wait(BoxFuture<'static, Flow>),
    /// Await the future, then call the plugin's `on_request` again. For a
    /// plugin whose answer needs IO and also changes the request (an
    /// authenticator that must fetch before it can set `identity`): the
    /// future fills the plugin's own cache, the second call reads it. The
    /// pipeline allows [`MAX_RETRIES`] in a row, then answers 503.
    Retry(BoxFuture<'static, ()>),
}

/// How many [`Flow::Retry`] one plugin may return for one request.
pub const MAX_RETRIES: usize = 3;

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flow::Continue => f.write_str("Continue"),
            Flow::Respond(r) => f.debug_tuple("Respond").field(&r.status).finish(),
            Flow::Wait(_) => f.write_str("Wait(..)"),
            Flow::Retry(_) => f.write_str("Retry(..)"),
        }
    }
}

/// A configured plugin instance, built once per snapshot from its validated
/// config. Instances are shared by every request on the routes that use them.
pub trait Plugin: Send + Sync + 'static {
    /// APISIX's name: `key-auth`, `limit-req`, ...
    fn name(&self) -> &'static str;

    fn phase(&self) -> Phase;

    /// APISIX's priority; higher runs first within a phase.
    fn priority(&self) -> i32;

    /// When the plugin needs the request body, the most it will buffer. The
    /// proxy buffers up to that bound before the Validate phase and answers
    /// 413 past it. `None`: the body keeps streaming.
    fn body_limit(&self) -> Option<usize> {
        None
    }

    /// Under `_meta.dry_run` the pipeline records a rejection as "would
    /// reject" and lets the request through, for immediate and deferred
    /// answers alike.
    fn dry_run(&self) -> bool {
        false
    }

    /// The request-side work of the plugin in its phase.
    fn on_request(&self, req: &mut RequestState) -> Flow;

    /// Adjust the response head before it goes to the client. Runs for
    /// upstream answers and for rejections alike.
    fn on_response(&self, _req: &RequestState, _resp: &mut http::response::Parts) {}

    /// Rewrite the response body. Only called when
    /// [`Plugin::rewrites_response_body`] is true, which makes the proxy
    /// buffer that response.
    fn rewrites_response_body(&self) -> bool {
        false
    }

    fn on_response_body(&self, _req: &RequestState, body: Bytes) -> Bytes {
        body
    }

    /// The log phase: runs once per request, after the response head is
    /// ready, for served and rejected requests alike. Logger plugins hand
    /// the record to their sink here; they must not block or do IO.
    fn on_log(&self, _req: &RequestState, _record: &crate::decision::DecisionRecord<'_>) {}
}

/// A pinned boxed future, for plugins that build [`Flow::Wait`] by hand.
pub type WaitFuture = Pin<Box<dyn std::future::Future<Output = Flow> + Send + 'static>>;
