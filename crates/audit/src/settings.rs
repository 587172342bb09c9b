//! `gateway.audit` and `gateway.anomaly` in the config file.
//!
//! ```yaml
//! gateway:
//!   audit:
//!     enabled: true          # default true
//!     file: audit.db         # inside data_dir unless absolute
//!     queue: 65536           # records waiting for the writer; past it they are dropped and counted
//!     batch: 4096            # most records per transaction
//!     flush_ms: 20           # longest a record waits for its batch
//!     max_age: 2592000       # seconds (30 days); 0 keeps everything
//!     max_records: 0         # 0: no bound
//!     max_bytes: 0           # 0: no bound
//!   anomaly:
//!     mode: learn            # learn | alert | enforce (per detector below, per tier in `tiers`)
//!     learning_period: 86400 # seconds of an identity's history before new routes alert
//!     rate_window: 60        # seconds per rate bucket
//!     spike_factor: 5        # a bucket above k × the identity's EWMA baseline
//!     spike_min_requests: 50
//!     burst_window: 10       # seconds
//!     burst_threshold: 10    # failures (auth, authorization, validation) in the window
//!     quarantine_for: 3600   # seconds: what `enforce` quarantines for
//!     quarantine_action: block
//!     detectors: { new_route: alert, rate_spike: alert, failure_burst: enforce }
//!     tiers: { payment_or_admin_api: enforce }
//!     webhook: http://alerts.internal/portcullis
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "AuditSettings::default_file")]
    pub file: PathBuf,
    #[serde(default = "AuditSettings::default_queue")]
    pub queue: usize,
    #[serde(default = "AuditSettings::default_batch")]
    pub batch: usize,
    #[serde(default = "AuditSettings::default_flush_ms")]
    pub flush_ms: u64,
    /// Seconds; 0 keeps records for ever.
    #[serde(default = "AuditSettings::default_max_age")]
    pub max_age: u64,
    #[serde(default)]
    pub max_records: u64,
    #[serde(default)]
    pub max_bytes: u64,
}

fn yes() -> bool {
    true
}

impl AuditSettings {
    fn default_file() -> PathBuf {
        PathBuf::from(crate::DB_FILE)
    }
    fn default_queue() -> usize {
        64 * 1024
    }
    fn default_batch() -> usize {
        4096
    }
    fn default_flush_ms() -> u64 {
        20
    }
    fn default_max_age() -> u64 {
        30 * 86_400
    }

    /// The database path for a node whose data directory is `data_dir`.
    pub fn path(&self, data_dir: &Path) -> PathBuf {
        if self.file.is_absolute() {
            self.file.clone()
        } else {
            data_dir.join(&self.file)
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.queue == 0 {
            return Err("audit.queue: must be at least 1".into());
        }
        if self.batch == 0 {
            return Err("audit.batch: must be at least 1".into());
        }
        Ok(())
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Build profiles only.
    #[default]
    Learn,
    /// Log, webhook, metric and an `alert` audit event.
    Alert,
    /// As `alert`, and quarantine the identity with an expiry.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Learn => "learn",
            Mode::Alert => "alert",
            Mode::Enforce => "enforce",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalySettings {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "AnomalySettings::default_learning_period")]
    pub learning_period: f64,
    #[serde(default = "AnomalySettings::default_rate_window")]
    pub rate_window: f64,
    #[serde(default = "AnomalySettings::default_spike_factor")]
    pub spike_factor: f64,
    #[serde(default = "AnomalySettings::default_spike_min_requests")]
    pub spike_min_requests: u64,
    #[serde(default = "AnomalySettings::default_burst_window")]
    pub burst_window: f64,
    #[serde(default = "AnomalySettings::default_burst_threshold")]
    pub burst_threshold: u32,
    #[serde(default = "AnomalySettings::default_quarantine_for")]
    pub quarantine_for: u64,
    #[serde(default = "AnomalySettings::default_quarantine_action")]
    pub quarantine_action: String,
    /// Mode per detector (`new_route`, `rate_spike`, `failure_burst`);
    /// unnamed ones take `mode`.
    #[serde(default)]
    pub detectors: BTreeMap<String, Mode>,
    /// Mode per route tier; the stricter of detector and tier mode applies.
    #[serde(default)]
    pub tiers: BTreeMap<String, Mode>,
    /// Alerts are POSTed here as JSON arrays (batched, retried 3 times).
    #[serde(default)]
    pub webhook: Option<String>,
}

pub const DETECTORS: &[&str] = &["new_route", "rate_spike", "failure_burst"];

impl AnomalySettings {
    fn default_learning_period() -> f64 {
        86_400.0
    }
    fn default_rate_window() -> f64 {
        60.0
    }
    fn default_spike_factor() -> f64 {
        5.0
    }
    fn default_spike_min_requests() -> u64 {
        50
    }
    fn default_burst_window() -> f64 {
        10.0
    }
    fn default_burst_threshold() -> u32 {
        10
    }
    fn default_quarantine_for() -> u64 {
        3600
    }
    fn default_quarantine_action() -> String {
        "block".into()
    }

    /// The mode of `detector` for a route of `tier`.
    pub fn mode_of(&self, detector: &str, tier: Option<&str>) -> Mode {
        let base = self.detectors.get(detector).copied().unwrap_or(self.mode);
        match tier.and_then(|t| self.tiers.get(t)) {
            Some(t) => base.max(*t),
            None => base,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        for d in self.detectors.keys() {
            if !DETECTORS.contains(&d.as_str()) {
                return Err(format!(
                    "anomaly.detectors: unknown detector \"{d}\" (one of {})",
                    DETECTORS.join(", ")
                ));
            }
        }
        for (name, v) in [
            ("learning_period", self.learning_period),
            ("rate_window", self.rate_window),
            ("burst_window", self.burst_window),
            ("spike_factor", self.spike_factor),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("anomaly.{name}: must be a positive number"));
            }
        }
        if self.rate_window <= 0.0 || self.burst_window <= 0.0 {
            return Err("anomaly: rate_window and burst_window must be above 0".into());
        }
        if !["block", "limit"].contains(&self.quarantine_action.as_str()) {
            return Err("anomaly.quarantine_action: block or limit".into());
        }
        if let Some(w) = &self.webhook {
            if !w.starts_with("http://") {
                return Err("anomaly.webhook: must start with http://".into());
            }
        }
        Ok(())
    }
}

impl Default for AnomalySettings {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}
