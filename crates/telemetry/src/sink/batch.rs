//! APISIX's batch processor: entries are collected into a batch that is
//! sent when it holds `batch_max_size` entries, when no entry arrived for
//! `inactive_timeout` seconds, or when its oldest entry is
//! `buffer_duration` seconds old. A failed send is retried up to
//! `max_retry_count` times, waiting `retry_delay` seconds and doubling the
//! wait each time (capped at 60 s); then the batch is dropped and counted
//! (`result="failed"`). While a batch is being sent, new records wait in the
//! bounded queue of `max_pending_entries`; past that they are dropped and
//! counted (`result="dropped"`).

use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::line::LINGER;
use super::RecordSink;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BatchOptions {
    #[serde(default = "BatchOptions::default_batch_max_size")]
    pub batch_max_size: usize,
    #[serde(default = "BatchOptions::default_inactive_timeout")]
    pub inactive_timeout: f64,
    #[serde(default = "BatchOptions::default_buffer_duration")]
    pub buffer_duration: f64,
    #[serde(default)]
    pub max_retry_count: u32,
    #[serde(default = "BatchOptions::default_retry_delay")]
    pub retry_delay: f64,
    /// portcullis: the bound of the queue in front of the batch.
    #[serde(default = "BatchOptions::default_max_pending_entries")]
    pub max_pending_entries: usize,
}

impl BatchOptions {
    // APISIX's batch-processor defaults; the logger plugins name these too.
    pub fn default_batch_max_size() -> usize {
        1000
    }
    pub fn default_inactive_timeout() -> f64 {
        5.0
    }
    pub fn default_buffer_duration() -> f64 {
        60.0
    }
    pub fn default_retry_delay() -> f64 {
        1.0
    }
    pub fn default_max_pending_entries() -> usize {
        10_000
    }

    /// The JSON-schema properties, as APISIX's batch processor lists them.
    pub fn schema_properties() -> serde_json::Map<String, Value> {
        let v = json!({
            "name": {"type": "string"},
            "batch_max_size": {"type": "integer", "minimum": 1, "default": 1000},
            "inactive_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 5},
            "buffer_duration": {"type": "number", "exclusiveMinimum": 0, "default": 60},
            "max_retry_count": {"type": "integer", "minimum": 0, "default": 0},
            "retry_delay": {"type": "number", "minimum": 0, "default": 1},
            "max_pending_entries": {"type": "integer", "minimum": 1, "default": 10000}
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Field-naming check of the numbers serde accepted.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.batch_max_size == 0 {
            return Err(("batch_max_size", "must be at least 1"));
        }
        if !(self.inactive_timeout > 0.0 && self.inactive_timeout.is_finite()) {
            return Err(("inactive_timeout", "must be a positive number of seconds"));
        }
        if !(self.buffer_duration > 0.0 && self.buffer_duration.is_finite()) {
            return Err(("buffer_duration", "must be a positive number of seconds"));
        }
        if !(self.retry_delay >= 0.0 && self.retry_delay.is_finite()) {
            return Err(("retry_delay", "must be zero or more seconds"));
        }
        if self.max_pending_entries == 0 {
            return Err(("max_pending_entries", "must be at least 1"));
        }
        Ok(())
    }
}

impl Default for BatchOptions {
    fn default() -> Self {
        serde_json::from_value(json!({})).expect("defaults deserialize")
    }
}

/// Delivers one batch. Runs on the sink's own thread.
pub(crate) trait Transport: 'static {
    #[allow(async_fn_in_trait)]
    async fn send(&mut self, batch: &[Bytes]) -> Result<(), String>;
}

/// Start a batching sink: its queue, and a thread with a small runtime that
/// batches and delivers.
pub(crate) fn spawn<T, F>(name: String, opts: BatchOptions, make: F) -> std::io::Result<RecordSink>
where
    T: Transport,
    F: FnOnce() -> T + Send + 'static,
{
    let (sink, rx) = RecordSink::channel(name.clone(), opts.max_pending_entries);
    let metrics = &crate::global().metrics;
    let sent = metrics.sink_counter(&name, "sent");
    let failed = metrics.sink_counter(&name, "failed");
    std::thread::Builder::new()
        .name(format!(
            "sink-{}",
            name.split(':').next().unwrap_or("batch")
        ))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "cannot start the sink's runtime");
                    return;
                }
            };
            rt.block_on(run(name, opts, rx, make(), sent, failed));
        })?;
    Ok(sink)
}

async fn run<T: Transport>(
    name: String,
    opts: BatchOptions,
    mut rx: mpsc::Receiver<Bytes>,
    mut transport: T,
    sent: Counter,
    failed: Counter,
) {
    let inactive = Duration::from_secs_f64(opts.inactive_timeout);
    let max_age = Duration::from_secs_f64(opts.buffer_duration);
    let mut batch: Vec<Bytes> = Vec::with_capacity(opts.batch_max_size.min(1024));
    let mut open = true;
    while open {
        match rx.recv().await {
            Some(first) => batch.push(first),
            None => break,
        }
        // Gather in slices of LINGER: sleep, then take what queued meanwhile.
        // Waiting in recv instead would wake this task, on another thread,
        // for every record (a futex call and a context switch on the worker
        // that sent it). So inactivity is seen LINGER late at most.
        let started = Instant::now();
        let mut last = started;
        while batch.len() < opts.batch_max_size {
            let deadline = (last + inactive).min(started + max_age);
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep_until(deadline.min(now + LINGER)).await;
            let before = batch.len();
            open = super::drain(&mut rx, &mut batch, opts.batch_max_size);
            if !open {
                break;
            }
            if batch.len() > before {
                last = Instant::now();
            }
        }
        deliver(&name, &opts, &mut transport, &batch, &sent, &failed).await;
        batch.clear();
    }
}

async fn deliver<T: Transport>(
    name: &str,
    opts: &BatchOptions,
    transport: &mut T,
    batch: &[Bytes],
    sent: &Counter,
    failed: &Counter,
) {
    let mut delay = Duration::from_secs_f64(opts.retry_delay);
    for attempt in 0..=opts.max_retry_count {
        match transport.send(batch).await {
            Ok(()) => {
                sent.inc_by(batch.len() as u64);
                return;
            }
            Err(e) => {
                tracing::warn!(sink = %name, attempt = attempt + 1, error = %e, entries = batch.len(), "sink delivery failed");
                if attempt < opts.max_retry_count {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
    failed.inc_by(batch.len() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Flaky {
        fail_first: usize,
        calls: usize,
        got: Arc<Mutex<Vec<Vec<Bytes>>>>,
    }

    impl Transport for Flaky {
        async fn send(&mut self, batch: &[Bytes]) -> Result<(), String> {
            self.calls += 1;
            if self.calls <= self.fail_first {
                return Err("down".into());
            }
            self.got.lock().unwrap().push(batch.to_vec());
            Ok(())
        }
    }

    fn opts(size: usize, retries: u32) -> BatchOptions {
        BatchOptions {
            batch_max_size: size,
            inactive_timeout: 0.05,
            buffer_duration: 1.0,
            max_retry_count: retries,
            retry_delay: 0.01,
            max_pending_entries: 100,
        }
    }

    fn wait_for(got: &Arc<Mutex<Vec<Vec<Bytes>>>>, n: usize) -> Vec<Vec<Bytes>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let g = got.lock().unwrap().clone();
            if g.iter().map(Vec::len).sum::<usize>() >= n || std::time::Instant::now() > deadline {
                return g;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn batches_by_size_then_by_inactivity_and_retries_failures() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink = spawn("test:batch".into(), opts(3, 2), move || Flaky {
            fail_first: 1,
            calls: 0,
            got: g,
        })
        .unwrap();
        for i in 0..5 {
            sink.send(&Bytes::from(format!("{i}")));
        }
        let batches = wait_for(&got, 5);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [3, 2],
            "first batch full at 3, the rest after inactivity"
        );
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut o = opts(1, 0);
        o.max_pending_entries = 2;
        // The transport never succeeds, slowly: the queue fills.
        struct Stuck;
        impl Transport for Stuck {
            async fn send(&mut self, _b: &[Bytes]) -> Result<(), String> {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Err("stuck".into())
            }
        }
        let sink = spawn("test:stuck".into(), o, || Stuck).unwrap();
        for _ in 0..20 {
            sink.send(&Bytes::from_static(b"x"));
        }
        // One in flight at most, two queued: the rest are dropped and counted.
        assert!(sink.dropped() >= 17, "dropped {}", sink.dropped());
    }
}
