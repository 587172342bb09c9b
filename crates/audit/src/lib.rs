//! portcullis incident response (docs/audit.md):
//!
//! - `store`: the append-only, hash-chained audit file (SQLite,
//!   `data_dir/audit.db`), its queries, summaries and `verify`;
//! - `quarantine`: containment with an expiry, checked by the data plane;
//! - `profiles`: behaviour profiles per identity and anomaly detectors.
//!
//! The request side only calls [`observe`] (encode the record's head
//! fields into one small buffer, share the record's JSON, and `try_send`
//! both into a bounded channel: a full channel drops the record and counts
//! it) and [`quarantine::check`]. One writer thread drains the channel in
//! batches (one row and one transaction each), feeds the profiles,
//! expires quarantines and applies retention.

pub mod profiles;
pub mod quarantine;
pub mod settings;
pub mod store;
pub mod time;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use portcullis_core::decision::Outcome;
use portcullis_core::DecisionRecord;
use portcullis_telemetry::redact::Field;
use serde_json::{json, Value};

pub use settings::{AnomalySettings, AuditSettings, Mode};
pub use store::{Filter, Pending, Row};

/// The audit file inside `data_dir`, unless `audit.file` says otherwise.
pub const DB_FILE: &str = "audit.db";

/// A change the node's change history should record (set by the binary to
/// write `store.changes`).
#[derive(Debug, Clone)]
pub struct ChangeNote {
    pub kind: &'static str,
    pub id: String,
    pub actor: String,
    pub client: String,
    pub method: &'static str,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

type Recorder = Box<dyn Fn(&ChangeNote) + Send + Sync>;

pub struct Audit {
    path: PathBuf,
    settings: AuditSettings,
    anomaly: AnomalySettings,
    tx: SyncSender<Pending>,
    appender: Mutex<store::Appender>,
    reader: Mutex<Option<rusqlite::Connection>>,
    profiles: Mutex<profiles::Profiles>,
    dropped: AtomicU64,
    written: AtomicU64,
    alerts: AtomicU64,
    dropped_metric: prometheus_counter::Counter,
    alerts_metric: prometheus_counter::Counter,
    recorder: OnceLock<Recorder>,
    webhook: Option<portcullis_telemetry::RecordSink>,
}

/// The telemetry crate's counters, without naming prometheus-client here.
mod prometheus_counter {
    pub type Counter = Box<dyn Fn() + Send + Sync>;
}

static GLOBAL: OnceLock<Arc<Audit>> = OnceLock::new();

/// The node's audit store, once [`start`] ran.
pub fn global() -> Option<&'static Arc<Audit>> {
    GLOBAL.get()
}

/// Open the audit file, restore active quarantines and profiles, start the
/// writer thread, and make it the node's. Call once, after
/// `portcullis_telemetry::init`.
pub fn start(
    data_dir: &Path,
    settings: &AuditSettings,
    anomaly: &AnomalySettings,
) -> Result<Arc<Audit>, String> {
    if let Some(a) = GLOBAL.get() {
        return Ok(a.clone());
    }
    let path = settings.path(data_dir);
    let conn = store::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // Quarantines still active.
    let now = time::now_ms();
    {
        let mut stmt = conn
            .prepare("SELECT spec FROM quarantines WHERE ended_at IS NULL")
            .map_err(|e| e.to_string())?;
        let specs: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| e.to_string())?;
        for s in specs {
            if let Ok(spec) = serde_json::from_str::<quarantine::Spec>(&s) {
                // Expired while the node was down: the sweep records it.
                let _ = now;
                quarantine::registry().insert(spec);
            }
        }
    }
    let mut prof = profiles::Profiles::default();
    {
        let mut stmt = conn
            .prepare("SELECT identity, state FROM profiles")
            .map_err(|e| e.to_string())?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| e.to_string())?;
        prof.load(rows);
    }
    let appender = store::Appender::new(conn).map_err(|e| e.to_string())?;
    let (tx, rx) = sync_channel(settings.queue.max(1));
    let metrics = &portcullis_telemetry::global().metrics;
    let dropped = metrics.sink_counter("audit", "dropped");
    let fired = metrics.sink_counter("anomaly_alerts", "fired");
    let webhook = anomaly.webhook.as_deref().and_then(|w| {
        let uri = portcullis_telemetry::sink::http::HttpTarget::parse_uri(w).ok()?;
        let target = portcullis_telemetry::sink::http::HttpTarget {
            uri,
            auth_header: None,
            timeout: Duration::from_secs(5),
            concat: portcullis_telemetry::sink::http::Concat::Json,
        };
        let opts = portcullis_telemetry::sink::batch::BatchOptions {
            batch_max_size: 100,
            inactive_timeout: 0.2,
            buffer_duration: 1.0,
            max_retry_count: 3,
            retry_delay: 1.0,
            max_pending_entries: 1000,
        };
        portcullis_telemetry::sink::http::spawn("anomaly_webhook".into(), target, opts)
            .map_err(|e| tracing::error!(error = %e, "cannot start the anomaly webhook"))
            .ok()
    });
    let audit = Arc::new(Audit {
        path,
        settings: settings.clone(),
        anomaly: anomaly.clone(),
        tx,
        appender: Mutex::new(appender),
        reader: Mutex::new(None),
        profiles: Mutex::new(prof),
        dropped: AtomicU64::new(0),
        written: AtomicU64::new(0),
        alerts: AtomicU64::new(0),
        dropped_metric: Box::new(move || {
            dropped.inc();
        }),
        alerts_metric: Box::new(move || {
            fired.inc();
        }),
        recorder: OnceLock::new(),
        webhook,
    });
    let _ = GLOBAL.set(audit.clone());
    let a = audit.clone();
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || a.run_writer(rx))
        .map_err(|e| format!("cannot start the audit writer: {e}"))?;
    Ok(audit)
}

/// The log phase's hook: queue the request's audit row. Never blocks; a
/// full queue drops the row and counts it.
pub fn observe(rec: &DecisionRecord<'_>) {
    if let Some(a) = GLOBAL.get() {
        a.observe(rec);
    }
}

fn decision_of(rec: &DecisionRecord<'_>) -> (&'static str, Option<&'static str>) {
    if let Some(d) = rec.decisions.iter().find(|d| d.outcome == Outcome::Reject) {
        return ("reject", Some(d.plugin));
    }
    if let Some(d) = rec
        .decisions
        .iter()
        .find(|d| d.outcome == Outcome::WouldReject)
    {
        return ("would_reject", Some(d.plugin));
    }
    if rec.status >= 400 {
        return ("error", None);
    }
    ("allow", None)
}

/// The request's audit record: its head fields encoded in one buffer
/// (redacted as the decision record is), and its JSON, encoded once per
/// request and shared with the other sinks.
pub fn pending(rec: &DecisionRecord<'_>) -> Pending {
    let r = portcullis_telemetry::global().redaction();
    let (decision, plugin) = decision_of(rec);
    let ip;
    let client = if r.hides(Field::ClientAddr) {
        "[redacted]"
    } else {
        ip = portcullis_core::request::ip_text(rec.client_ip);
        ip.as_str()
    };
    let texts = [
        Some("request"),
        rec.identity
            .map(|i| r.field(Field::ConsumerUsername, &i.consumer.username)),
        rec.identity.and_then(|i| {
            i.credential_id
                .as_deref()
                .map(|c| r.field(Field::ConsumerCredentialId, c))
        }),
        rec.route.map(|i| &*i.id),
        rec.route
            .and_then(|i| i.labels.get("tier").map(String::as_str)),
        Some(decision),
        plugin,
        rec.request_id.map(|v| r.field(Field::RequestId, v)),
        Some(rec.method),
        Some(r.field(Field::Path, rec.path)),
        Some(client),
    ];
    Pending::request(
        time::ms_of(rec.time),
        rec.status,
        &texts,
        portcullis_telemetry::json(rec).clone(),
    )
}

impl Audit {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn anomaly(&self) -> &AnomalySettings {
        &self.anomaly
    }

    /// Send node-side changes (quarantines) to the change history too.
    pub fn set_change_recorder(&self, f: impl Fn(&ChangeNote) + Send + Sync + 'static) {
        let _ = self.recorder.set(Box::new(f));
    }

    pub fn observe(&self, rec: &DecisionRecord<'_>) {
        match self.tx.try_send(pending(rec)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                (self.dropped_metric)();
            }
        }
    }

    /// Rows dropped because the writer's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn run_writer(self: Arc<Self>, rx: Receiver<Pending>) {
        let batch_max = self.settings.batch.max(1);
        let linger = Duration::from_millis(self.settings.flush_ms);
        let mut batch: Vec<Pending> = Vec::with_capacity(batch_max);
        let mut last_sweep = Instant::now() - Duration::from_secs(1);
        let mut last_retention = Instant::now() - Duration::from_secs(3600);
        let mut last_profiles = Instant::now();
        // Set when the last batch filled up: the queue holds more, so take
        // it at once instead of gathering again.
        let mut backlog = false;
        loop {
            let first = match backlog.then(|| rx.try_recv().ok()).flatten() {
                Some(row) => Ok(row),
                None => rx.recv_timeout(Duration::from_millis(100)),
            };
            match first {
                Ok(row) => {
                    batch.push(row);
                    // Gather by sleeping, not by waiting in recv: a writer
                    // parked in recv is woken (a futex call and a context
                    // switch on a worker's core) by every record sent, one
                    // sleeping is not woken at all.
                    if !backlog {
                        std::thread::sleep(linger);
                    }
                    while batch.len() < batch_max {
                        match rx.try_recv() {
                            Ok(row) => batch.push(row),
                            Err(_) => break,
                        }
                    }
                    backlog = batch.len() == batch_max;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if !batch.is_empty() {
                self.write_batch(&mut batch);
            }
            if last_sweep.elapsed() >= Duration::from_millis(100) {
                last_sweep = Instant::now();
                self.expire_quarantines();
            }
            if last_profiles.elapsed() >= Duration::from_secs(2) {
                last_profiles = Instant::now();
                self.save_profiles();
            }
            if last_retention.elapsed() >= Duration::from_secs(30) {
                last_retention = Instant::now();
                self.apply_retention();
            }
        }
    }

    fn write_batch(&self, batch: &mut Vec<Pending>) {
        // The detectors read each record's fields as the appender decodes
        // them (no second pass, no copies).
        let mut alerts: Vec<profiles::Alert> = Vec::new();
        let result = {
            let mut app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
            let mut p = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
            app.append(batch, |f| alerts.extend(p.observe(f, &self.anomaly)))
        };
        match result {
            Ok(()) => {
                self.written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, rows = batch.len(), "audit batch could not be written; dropped");
                self.dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
        batch.clear();
        for a in alerts {
            self.raise(a);
        }
    }

    /// Log, webhook, metric, audit event; quarantine in enforce mode.
    fn raise(&self, a: profiles::Alert) {
        self.alerts.fetch_add(1, Ordering::Relaxed);
        (self.alerts_metric)();
        let mut body = a.to_json();
        tracing::warn!(
            detector = a.detector,
            identity = %a.identity,
            route = a.route.as_deref().unwrap_or(""),
            detail = %a.detail,
            evidence = ?a.evidence,
            mode = a.mode.as_str(),
            "anomaly"
        );
        if a.mode == Mode::Enforce {
            let target = match (&a.consumer, &a.client) {
                (Some(c), _) => Some(("consumer", c.clone())),
                (None, Some(ip)) => Some(("client_cidr", ip.clone())),
                _ => None,
            };
            if let Some((kind, who)) = target {
                let exists = quarantine::registry()
                    .find_target(&format!(
                        "{kind}:{}",
                        if kind == "client_cidr" {
                            who.parse::<std::net::IpAddr>()
                                .map(|ip| ipnet::IpNet::from(ip).to_string())
                                .unwrap_or(who.clone())
                        } else {
                            who.clone()
                        }
                    ))
                    .is_some();
                if !exists {
                    let req = json!({
                        kind: who,
                        "action": self.anomaly.quarantine_action,
                        "rate": 1,
                        "reason": format!("anomaly {}: {}", a.detector, a.detail),
                        "expires_in": self.anomaly.quarantine_for,
                    });
                    match serde_json::from_value::<quarantine::CreateRequest>(req)
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.into_spec("anomaly-detector"))
                    {
                        Ok(spec) => {
                            if let Ok(v) = self.create_quarantine(spec, "anomaly-detector", "") {
                                body["quarantine_id"] = v["id"].clone();
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "anomaly quarantine refused"),
                    }
                }
            }
        }
        let line = bytes::Bytes::from(format!("{body}\n"));
        if let Some(w) = &self.webhook {
            w.send(&line);
        }
        let row = Row {
            time: a.time,
            event: Cow::Borrowed("alert"),
            consumer: a.consumer.clone(),
            route: a.route.clone(),
            tier: a.tier.clone(),
            decision: Cow::Borrowed(a.detector),
            client: a.client.clone(),
            request_id: a.evidence.first().cloned(),
            record: line,
            ..Row::default()
        };
        self.append_now(vec![row]);
    }

    /// Append event rows synchronously (quarantine steps, alerts): these
    /// are never dropped.
    fn append_now(&self, rows: Vec<Row>) -> bool {
        let mut app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        match app.append_rows(&rows) {
            Ok(()) => {
                self.written.fetch_add(rows.len() as u64, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "audit event could not be written");
                false
            }
        }
    }

    fn save_profiles(&self) {
        let dirty = {
            let mut p = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
            p.take_dirty()
        };
        if dirty.is_empty() {
            return;
        }
        let mut app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        let now = time::now_ms();
        let r = (|| -> rusqlite::Result<()> {
            let tx = app.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO profiles (identity, state, updated) VALUES (?1, ?2, ?3)",
                )?;
                for (id, state) in &dirty {
                    stmt.execute(rusqlite::params![id, state, now])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = r {
            tracing::error!(error = %e, "profiles could not be saved");
        }
    }

    fn apply_retention(&self) {
        let s = &self.settings;
        if s.max_age == 0 && s.max_records == 0 && s.max_bytes == 0 {
            return;
        }
        let mut app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        match app.retain(
            (s.max_age as i64).saturating_mul(1000),
            s.max_records,
            s.max_bytes,
        ) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "audit retention removed old records"),
            Err(e) => tracing::error!(error = %e, "audit retention failed"),
        }
    }

    /// Make a quarantine active, persist it, audit it and record the
    /// change.
    pub fn create_quarantine(
        &self,
        spec: quarantine::Spec,
        actor: &str,
        client: &str,
    ) -> Result<Value, String> {
        let value = spec.to_json();
        let stored = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
        {
            let app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
            app.conn
                .execute(
                    "INSERT OR REPLACE INTO quarantines (id, spec, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![spec.id, stored, spec.created_at, spec.expires_at],
                )
                .map_err(|e| format!("cannot store the quarantine: {e}"))?;
        }
        quarantine::registry().insert(spec.clone());
        tracing::warn!(id = %spec.id, target = %spec.target(), action = ?spec.action, reason = %spec.reason, actor, "quarantine created");
        self.quarantine_event(
            "quarantine.create",
            &spec,
            actor,
            client,
            None,
            Some(value.clone()),
            "POST",
        );
        Ok(value)
    }

    /// Lift an active quarantine early. `None`: no such active quarantine.
    pub fn lift_quarantine(&self, id: &str, actor: &str, client: &str) -> Option<Value> {
        let spec = quarantine::registry().remove(id)?;
        self.end_quarantine(&spec, actor, "lifted");
        let before = spec.to_json();
        tracing::warn!(id = %spec.id, target = %spec.target(), actor, "quarantine lifted");
        self.quarantine_event(
            "quarantine.lift",
            &spec,
            actor,
            client,
            Some(before.clone()),
            None,
            "DELETE",
        );
        Some(before)
    }

    fn expire_quarantines(&self) {
        for spec in quarantine::registry().take_expired(time::now_ms()) {
            self.end_quarantine(&spec, "expiry", "expired");
            tracing::info!(id = %spec.id, target = %spec.target(), "quarantine expired");
            self.quarantine_event(
                "quarantine.expire",
                &spec,
                "expiry",
                "",
                Some(spec.to_json()),
                None,
                "EXPIRE",
            );
        }
    }

    fn end_quarantine(&self, spec: &quarantine::Spec, by: &str, why: &str) {
        let app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = app.conn.execute(
            "UPDATE quarantines SET ended_at = ?2, ended_by = ?3, end_reason = ?4 WHERE id = ?1",
            rusqlite::params![spec.id, time::now_ms(), by, why],
        ) {
            tracing::error!(error = %e, "cannot record the end of a quarantine");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn quarantine_event(
        &self,
        event: &'static str,
        spec: &quarantine::Spec,
        actor: &str,
        client: &str,
        before: Option<Value>,
        after: Option<Value>,
        method: &'static str,
    ) {
        let record = json!({
            "type": "portcullis.quarantine/v1",
            "event": event,
            "actor": actor,
            "client": client,
            "quarantine": spec.to_json(),
        });
        let row = Row {
            time: time::now_ms(),
            event: Cow::Borrowed(event),
            consumer: spec.consumer.clone(),
            credential: spec.credential.clone(),
            route: spec.route.clone(),
            decision: Cow::Owned(
                serde_json::to_value(spec.action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            ),
            request_id: Some(spec.id.clone()),
            client: spec.client_cidr.map(|c| c.to_string()),
            record: bytes::Bytes::from(format!("{record}\n")),
            ..Row::default()
        };
        self.append_now(vec![row]);
        if let Some(rec) = self.recorder.get() {
            rec(&ChangeNote {
                kind: "quarantine",
                id: spec.id.clone(),
                actor: actor.to_string(),
                client: client.to_string(),
                method,
                before,
                after,
            });
        }
    }

    fn with_reader<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> T) -> Result<T, String> {
        let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(store::open_read(&self.path).map_err(|e| e.to_string())?);
        }
        Ok(f(guard.as_ref().expect("opened")))
    }

    pub fn query(&self, f: &Filter) -> Result<Value, String> {
        self.with_reader(|c| store::query(c, f).map_err(|e| e.to_string()))?
    }

    pub fn summary(&self, f: &Filter, group_by: &[String]) -> Result<Value, String> {
        let mut v = self.with_reader(|c| store::summary(c, f, group_by))??;
        v["dropped"] = json!(self.dropped());
        Ok(v)
    }

    pub fn verify(&self) -> Result<store::Verification, String> {
        self.with_reader(|c| store::verify(c).map_err(|e| e.to_string()))?
    }

    /// Writer state for `GET /portcullis/v1/audit/status`.
    pub fn status(&self) -> Value {
        let (seq, head) = {
            let app = self.appender.lock().unwrap_or_else(|p| p.into_inner());
            (app.last_seq, store::hex(&app.last_hash))
        };
        json!({
            "file": self.path.display().to_string(),
            "written": self.written(),
            "dropped": self.dropped(),
            "alerts": self.alerts.load(Ordering::Relaxed),
            "last_seq": seq,
            "head_hash": head,
            "active_quarantines": quarantine::registry().active_count(),
            "anomaly_mode": self.anomaly.mode.as_str(),
        })
    }

    pub fn profiles(&self, identity: Option<&str>) -> Value {
        let p = self.profiles.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<Value> = p
            .map
            .iter()
            .filter(|(id, _)| identity.is_none_or(|w| w == id.as_str()))
            .map(|(id, prof)| prof.to_json(id))
            .collect();
        list.sort_by(|a, b| a["identity"].as_str().cmp(&b["identity"].as_str()));
        json!({"total": list.len(), "list": list})
    }
}
