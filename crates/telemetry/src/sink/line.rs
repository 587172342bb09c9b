//! JSON lines to stdout or a file. The file is opened for append and
//! reopened after SIGUSR1, so logrotate's `postrotate kill -USR1` works.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;

use super::RecordSink;

/// Bumped by every SIGUSR1; file writers reopen when it changed.
static REOPEN_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Ask every file sink to reopen its file before its next write (what
/// SIGUSR1 does).
pub fn request_reopen() {
    REOPEN_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Install the SIGUSR1 handler once. Until it is installed SIGUSR1 would
/// kill the process, so file sinks install it before they return.
pub fn install_reopen_signal() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("log-reopen".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    let _ = ready_tx.send(());
                    return;
                };
                rt.block_on(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let sig = signal(SignalKind::user_defined1());
                    let _ = ready_tx.send(());
                    let Ok(mut sig) = sig else {
                        tracing::warn!(
                            "cannot install the SIGUSR1 handler: log files will not be reopened"
                        );
                        return;
                    };
                    while sig.recv().await.is_some() {
                        tracing::info!("SIGUSR1: reopening log files");
                        request_reopen();
                    }
                });
            });
        if spawned.is_ok() {
            let _ = ready_rx.recv();
        }
    });
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Records to the process's stdout.
pub fn stdout(name: &str, capacity: usize) -> std::io::Result<RecordSink> {
    let (sink, rx) = RecordSink::channel(name.to_string(), capacity);
    let sent = crate::global().metrics.sink_counter(name, "sent");
    std::thread::Builder::new()
        .name("log-stdout".into())
        .spawn(move || write_loop(rx, sent, || Ok(Box::new(std::io::stdout())), false))?;
    Ok(sink)
}

/// Records appended to `path`, reopened after SIGUSR1. The file is opened
/// here once, so a path that cannot be written is refused up front.
pub fn file(name: &str, path: impl Into<PathBuf>, capacity: usize) -> std::io::Result<RecordSink> {
    let path = path.into();
    open_append(&path)?;
    install_reopen_signal();
    let (sink, rx) = RecordSink::channel(name.to_string(), capacity);
    let sent = crate::global().metrics.sink_counter(name, "sent");
    std::thread::Builder::new()
        .name("log-file".into())
        .spawn(move || {
            write_loop(
                rx,
                sent,
                move || Ok(Box::new(open_append(&path)?) as Box<dyn Write + Send>),
                true,
            )
        })?;
    Ok(sink)
}

/// How long the writer gathers records after the first of a burst.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

fn write_loop(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
    sent: prometheus_client::metrics::counter::Counter,
    open: impl Fn() -> std::io::Result<Box<dyn Write + Send>>,
    reopens: bool,
) {
    let mut generation = REOPEN_GENERATION.load(Ordering::Relaxed);
    let mut out = open().ok().map(|w| BufWriter::with_capacity(64 * 1024, w));
    while let Some(line) = rx.blocking_recv() {
        if reopens {
            let now = REOPEN_GENERATION.load(Ordering::Relaxed);
            if now != generation || out.is_none() {
                generation = now;
                if let Some(mut old) = out.take() {
                    let _ = old.flush();
                }
                out = match open() {
                    Ok(w) => Some(BufWriter::with_capacity(64 * 1024, w)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reopen the log file");
                        None
                    }
                };
            }
        }
        let Some(w) = out.as_mut() else { continue };
        let mut n = 0u64;
        let _ = w.write_all(&line);
        n += 1;
        // Let a burst gather before writing it: a writer that woke for every
        // record would cost the request side a thread wake-up each (a futex
        // call and a context switch), more than encoding the record.
        // Records reach the file at most LINGER late.
        std::thread::sleep(LINGER);
        // Drain what is queued before flushing: one syscall per burst.
        while let Ok(line) = rx.try_recv() {
            let _ = w.write_all(&line);
            n += 1;
        }
        let _ = w.flush();
        sent.inc_by(n);
    }
}
