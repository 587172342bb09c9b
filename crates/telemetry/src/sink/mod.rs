//! Where decision records go. Every sink is a bounded queue in front of a
//! writer that runs on its own thread: a request only ever does a
//! non-blocking `try_send` of an already encoded line, and a full queue drops
//! the record and counts it (`portcullis_sink_records{result="dropped"}`).

pub mod batch;
pub mod http;
pub mod line;
pub mod syslog;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// The request-side handle of a sink: cheap to share, never blocks.
pub struct RecordSink {
    name: String,
    tx: mpsc::Sender<Bytes>,
    dropped: Counter,
}

impl RecordSink {
    /// Make the queue; the caller starts the writer on the receiving end.
    pub(crate) fn channel(name: String, capacity: usize) -> (RecordSink, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dropped = crate::global().metrics.sink_counter(&name, "dropped");
        (RecordSink { name, tx, dropped }, rx)
    }

    /// Queue one encoded record. Never waits: a full queue drops it.
    pub fn send(&self, line: &Bytes) {
        if self.tx.try_send(line.clone()).is_err() {
            self.dropped.inc();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

impl std::fmt::Debug for RecordSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSink")
            .field("name", &self.name)
            .finish()
    }
}

/// Move what is queued in `rx` into `batch`, until `batch` holds `max`;
/// `false` once the channel is closed and empty. The sinks gather this way
/// after sleeping instead of waiting in `recv`, which would wake them for
/// every record sent.
pub(crate) fn drain<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) -> bool {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}
