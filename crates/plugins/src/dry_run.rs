//! `_meta.dry_run`: the plugin decides and its decision is recorded as
//! "would reject", but the request goes on. Teams roll out a policy this
//! way, watch the log and metrics, then enforce. The pipeline does the
//! softening (it sees immediate and deferred answers alike); this wrapper
//! only marks the instance.

use std::sync::Arc;

use bytes::Bytes;
use portcullis_core::{Flow, Phase, Plugin, RequestState};

pub struct DryRun {
    inner: Arc<dyn Plugin>,
}

impl DryRun {
    pub fn new(inner: Arc<dyn Plugin>) -> Self {
        DryRun { inner }
    }
}

impl Plugin for DryRun {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn phase(&self) -> Phase {
        self.inner.phase()
    }
    fn priority(&self) -> i32 {
        self.inner.priority()
    }
    fn body_limit(&self) -> Option<usize> {
        self.inner.body_limit()
    }
    fn dry_run(&self) -> bool {
        true
    }
    fn on_request(&self, req: &mut RequestState) -> Flow {
        self.inner.on_request(req)
    }
    fn on_response(&self, req: &RequestState, resp: &mut http::response::Parts) {
        self.inner.on_response(req, resp)
    }
    fn rewrites_response_body(&self) -> bool {
        self.inner.rewrites_response_body()
    }
    fn on_response_body(&self, req: &RequestState, body: Bytes) -> Bytes {
        self.inner.on_response_body(req, body)
    }
}
