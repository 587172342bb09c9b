//! The current snapshot behind one atomic pointer, and what the last reload
//! attempt said. Readers (every request) load the pointer; the one writer
//! (whichever source is active) validates a whole new snapshot off the
//! request path and swaps it in, in one step.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use portcullis_core::ConfigError;

use crate::raw::RawConfig;
use crate::snapshot::{self, Runtime, Snapshot};

#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// When the serving snapshot was built.
    pub loaded_at: Option<SystemTime>,
    /// The errors of the last refused update, if the last attempt failed.
    pub last_error: Option<Vec<String>>,
    pub refused_total: u64,
    pub applied_total: u64,
    /// For a source that can be out of reach (etcd): when this node last
    /// heard from it, and how long it may go without before /readyz fails.
    pub source_contact_at: Option<SystemTime>,
    pub max_staleness: Option<std::time::Duration>,
}

impl ReloadStatus {
    /// How long since the source was last heard from (`None` for sources
    /// that are always at hand, such as the file or the store).
    pub fn source_age(&self, now: SystemTime) -> Option<std::time::Duration> {
        self.max_staleness?;
        Some(match self.source_contact_at {
            Some(at) => now.duration_since(at).unwrap_or_default(),
            None => std::time::Duration::MAX,
        })
    }

    /// Whether the source has been out of reach for longer than allowed.
    pub fn is_stale(&self, now: SystemTime) -> bool {
        match (self.max_staleness, self.source_age(now)) {
            (Some(max), Some(age)) => !max.is_zero() && age > max,
            _ => false,
        }
    }
}

pub struct Live {
    current: ArcSwap<Snapshot>,
    pub runtime: Runtime,
    status: Mutex<ReloadStatus>,
    /// Serialises builds, so two sources never race their swaps.
    build_lock: Mutex<()>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            runtime: Runtime::default(),
            status: Mutex::new(ReloadStatus::default()),
            build_lock: Mutex::new(()),
        }
    }
}

impl Live {
    pub fn new() -> Arc<Live> {
        Arc::new(Live::default())
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A cheap guard for the request path (no refcount traffic).
    pub fn load_guard(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Validate `raw` whole and, if it is good, serve it. If not, the
    /// current snapshot keeps serving and the errors are kept for /readyz.
    pub fn apply(&self, raw: RawConfig) -> Result<u64, Vec<ConfigError>> {
        let _one_at_a_time = self.build_lock.lock().unwrap_or_else(|p| p.into_inner());
        match snapshot::build(raw, &self.runtime) {
            Ok(snap) => Ok(self.install_built(snap)),
            Err(errors) => {
                let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                status.last_error = Some(errors.iter().map(|e| e.to_string()).collect());
                status.refused_total += 1;
                Err(errors)
            }
        }
    }

    /// Build a snapshot without serving it: the Admin API builds, then
    /// stores, then [`Live::install`]s the very snapshot it checked, so a
    /// write is validated and compiled once.
    pub fn prepare(&self, raw: RawConfig) -> Result<Snapshot, Vec<ConfigError>> {
        snapshot::build(raw, &self.runtime)
    }

    /// Serve a snapshot made by [`Live::prepare`].
    pub fn install(&self, snap: Snapshot) -> u64 {
        let _one_at_a_time = self.build_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.install_built(snap)
    }

    fn install_built(&self, snap: Snapshot) -> u64 {
        let version = snap.version;
        let previous = self.current.swap(Arc::new(snap));
        // Counters and logger threads of routes that neither this snapshot
        // nor the previous one uses are released now.
        self.runtime.plugin_state.sweep_unused();
        // Freeing a large snapshot takes milliseconds: do it off the
        // writer's path (requests may still hold it anyway).
        let _ = std::thread::Builder::new()
            .name("snapshot-drop".into())
            .spawn(move || drop(previous));
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.loaded_at = Some(SystemTime::now());
        status.last_error = None;
        status.applied_total += 1;
        version
    }

    /// Check `raw` without serving it (the Admin API's pre-write check and
    /// `portcullis validate`). Plugin state it touches is shared, which is
    /// harmless: a counter made for a config that is never served is dropped
    /// at the next cleanup.
    pub fn check(&self, raw: RawConfig) -> Result<(), Vec<ConfigError>> {
        snapshot::build(raw, &self.runtime).map(|_| ())
    }

    /// Note a refusal found before `apply` could run (the file did not
    /// even parse), so /readyz reports it like any other.
    pub fn record_refusal(&self, errors: Vec<String>) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_error = Some(errors);
        status.refused_total += 1;
    }

    /// Declare the source one that can be out of reach (etcd), and how long
    /// it may be before /readyz fails (zero: never).
    pub fn set_max_staleness(&self, max: std::time::Duration) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.max_staleness = Some(max);
    }

    /// The source answered at `at`: the config served is current as of then.
    pub fn record_source_contact(&self, at: SystemTime) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.source_contact_at.is_none_or(|prev| prev < at) {
            status.source_contact_at = Some(at);
        }
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
