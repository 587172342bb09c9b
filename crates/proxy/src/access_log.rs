//! One JSON line per request, written off the request path: the request
//! task hands a line to a bounded queue and a writer thread does the IO. A
//! full queue drops the line and counts it, so a slow disk never slows a
//! request. (The full decision record and its sinks build on this.)

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// `stdout`, `off`, or a file path (appended to).
    pub fn open(target: &str) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            "off" | "" => {
                return Ok(AccessLog {
                    tx: None,
                    dropped: AtomicU64::new(0),
                })
            }
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel::<String>(64 * 1024);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Drain what is queued before flushing: one syscall per burst.
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, line: String) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(line) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
