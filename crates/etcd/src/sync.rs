//! Keeping a node's configuration in step with etcd: one full load, then a
//! watch from the next revision, with a clean full reload whenever the
//! watch cannot continue (its revision was compacted, etcd's history went
//! backwards). etcd going away never touches what is served; it only ages.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{EventType, GetOptions, WatchOptions};
use portcullis_config::Live;

use crate::{cache, containment, keys, mirror::Mirror, EtcdError, EtcdStore, MAX_MESSAGE};

/// How a node came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// From etcd, at this revision.
    Etcd { revision: i64, resources: usize },
    /// etcd was out of reach: from the config this node last persisted.
    Cache {
        revision: i64,
        resources: usize,
        path: String,
    },
    /// etcd was out of reach and nothing was persisted: nothing to serve yet.
    Empty,
}

/// Why a watch ended without an error.
enum WatchEnd {
    /// The next revision is gone (compacted) or etcd's history is not the
    /// one this node saw: only a full reload gives a whole config.
    Reload(String),
}

/// Most a burst of changes is held back to coalesce it into one rebuild.
const COALESCE: Duration = Duration::from_millis(50);
/// Quiet time that ends a burst.
const COALESCE_QUIET: Duration = Duration::from_millis(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl EtcdStore {
    /// Replace what this node knows with everything under the prefix but
    /// the change history and the approvals (which are read when asked
    /// for), at one revision. Returns the revision.
    pub(crate) async fn full_load(&self) -> Result<i64, EtcdError> {
        let client = self.client().await?;
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let all = keys::range_prefix(&self.prefix);
        let own = keys::own_prefix(&self.prefix);
        // Resources sort before and after `portcullis/`.
        let resp = self
            .call(kv.get(all.clone(), Some(GetOptions::new().with_range(own.clone()))))
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let at = |opts: GetOptions| Some(opts.with_revision(revision));
        let after = self
            .call(kv.get(
                keys::prefix_end(&own),
                at(GetOptions::new().with_range(keys::prefix_end(&all))),
            ))
            .await?;
        let quarantines = self
            .call(kv.get(
                keys::quarantines_prefix(&self.prefix),
                at(GetOptions::new().with_prefix()),
            ))
            .await?;
        let mut fresh = Mirror {
            revision,
            ..Mirror::default()
        };
        {
            let old = self.mirror();
            for kv in resp.kvs().iter().chain(after.kvs()) {
                let Ok(key) = kv.key_str() else { continue };
                // Unchanged values keep their shared JSON, so the snapshot
                // build recognises them without hashing them again.
                match old.entries.get(key) {
                    Some(e) if e.mod_revision == kv.mod_revision() => {
                        fresh.entries.insert(key.to_string(), e.clone());
                    }
                    _ => {
                        fresh.put(
                            &self.prefix,
                            key,
                            kv.value(),
                            kv.create_revision(),
                            kv.mod_revision(),
                        );
                    }
                }
            }
        }
        for kv in quarantines.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            if let Some(id) = keys::parse_quarantine_key(&self.prefix, key) {
                fresh.put_quarantine(id, kv.value(), kv.mod_revision());
            }
        }
        *self.mirror() = fresh;
        Ok(revision)
    }

    /// Bring the node up: etcd if it answers within the request timeout
    /// (at most 5 s), else the config persisted locally. Call once, before
    /// [`EtcdStore::run`].
    pub async fn start(self: &Arc<Self>, live: &Arc<Live>) -> Started {
        live.set_max_staleness(self.max_staleness);
        containment::install(self);
        let bound = self.timeout.min(Duration::from_secs(5));
        let loaded = match tokio::time::timeout(bound, self.full_load()).await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Timeout(bound)),
        };
        match loaded {
            Ok(revision) => {
                live.record_source_contact(SystemTime::now());
                let resources = self.mirror().entries.len();
                self.apply_all_quarantines();
                self.clone().apply(live.clone(), revision, true).await;
                tracing::info!(revision, resources, prefix = %self.prefix, "config loaded from etcd");
                Started::Etcd {
                    revision,
                    resources,
                }
            }
            Err(e) => {
                let Some(path) = self.cache_path.clone() else {
                    tracing::error!(error = %e, "etcd is out of reach and no local copy is kept: serving nothing until it answers");
                    return Started::Empty;
                };
                match cache::read(&path) {
                    Ok(Some(c)) if c.prefix == self.prefix => {
                        live.record_source_contact(c.contact_at());
                        let revision = c.revision;
                        *self.mirror() = Mirror::from_cache(&self.prefix, c);
                        let resources = self.mirror().entries.len();
                        self.apply_all_quarantines();
                        self.clone().apply(live.clone(), revision, false).await;
                        tracing::warn!(
                            error = %e,
                            path = %path.display(),
                            revision,
                            resources,
                            "etcd is out of reach at start: serving the config persisted locally; it is replaced as soon as etcd answers"
                        );
                        Started::Cache {
                            revision,
                            resources,
                            path: path.display().to_string(),
                        }
                    }
                    Ok(Some(c)) => {
                        tracing::error!(error = %e, cached_prefix = %c.prefix, prefix = %self.prefix, "etcd is out of reach and the local copy is of another prefix: serving nothing until etcd answers");
                        Started::Empty
                    }
                    Ok(None) => {
                        tracing::error!(error = %e, "etcd is out of reach and no config was persisted locally: serving nothing until it answers");
                        Started::Empty
                    }
                    Err(read) => {
                        tracing::error!(error = %e, cache_error = %read, path = %path.display(), "etcd is out of reach and the local copy does not read: serving nothing until etcd answers");
                        Started::Empty
                    }
                }
            }
        }
    }

    /// Keep the node in step with etcd, forever. `loaded` says whether
    /// [`EtcdStore::start`] got the config from etcd (else the first thing
    /// done is a full load).
    pub async fn run(self: Arc<Self>, live: Arc<Live>, started: Started) {
        let mut need_full = !matches!(started, Started::Etcd { .. });
        let mut backoff = BACKOFF_MIN;
        let mut down_since: Option<Instant> = None;
        loop {
            if need_full {
                match self.full_load().await {
                    Ok(revision) => {
                        live.record_source_contact(SystemTime::now());
                        if let Some(t) = down_since.take() {
                            tracing::info!(after = ?t.elapsed(), "etcd answers again");
                        }
                        need_full = false;
                        backoff = BACKOFF_MIN;
                        self.apply_all_quarantines();
                        self.clone().apply(live.clone(), revision, true).await;
                        tracing::info!(revision, "config reloaded from etcd");
                    }
                    Err(e) => {
                        if down_since.is_none() {
                            down_since = Some(Instant::now());
                            tracing::warn!(error = %e, "etcd is out of reach; serving the last good config");
                        } else {
                            tracing::debug!(error = %e, "etcd still out of reach");
                        }
                        sleep_backoff(&mut backoff).await;
                        continue;
                    }
                }
            }
            match self.watch(&live, &mut backoff, &mut down_since).await {
                Ok(WatchEnd::Reload(why)) => {
                    tracing::warn!(reason = %why, "etcd watch cannot continue: full reload");
                    need_full = true;
                }
                Err(e) => {
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        tracing::warn!(error = %e, "lost etcd; serving the last good config and retrying");
                    } else {
                        tracing::debug!(error = %e, "etcd still out of reach");
                    }
                    sleep_backoff(&mut backoff).await;
                }
            }
        }
    }

    /// Watch from the revision after the one this node has; returns when the
    /// watch cannot go on.
    async fn watch(
        self: &Arc<Self>,
        live: &Arc<Live>,
        backoff: &mut Duration,
        down_since: &mut Option<Instant>,
    ) -> Result<WatchEnd, EtcdError> {
        let client = self.client().await?;
        let start = self.mirror().revision + 1;
        let mut stream = self
            .call(
                client
                    .watch_client()
                    .max_decoding_message_size(MAX_MESSAGE)
                    .watch(
                        keys::range_prefix(&self.prefix),
                        Some(WatchOptions::new().with_prefix().with_start_revision(start)),
                    ),
            )
            .await?;
        // Ask for progress now and then: an answer proves etcd is there and
        // this watch is current, which is what keeps /readyz green.
        let every =
            (self.max_staleness / 4).clamp(Duration::from_millis(200), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asked_at: Option<Instant> = None;
        let mut first = true;
        loop {
            tokio::select! {
                msg = stream.message() => {
                    let Some(resp) = msg? else {
                        return Err(EtcdError::Unavailable("the watch stream ended".into()));
                    };
                    if resp.compact_revision() > 0 {
                        return Ok(WatchEnd::Reload(format!(
                            "revision {start} was compacted (etcd keeps from {})",
                            resp.compact_revision()
                        )));
                    }
                    if resp.canceled() {
                        return Err(EtcdError::Unavailable(format!(
                            "etcd cancelled the watch: {}",
                            resp.cancel_reason()
                        )));
                    }
                    let header_rev = resp.header().map(|h| h.revision()).unwrap_or_default();
                    if first {
                        first = false;
                        if header_rev + 1 < start {
                            return Ok(WatchEnd::Reload(format!(
                                "etcd is at revision {header_rev}, behind this node's {}: not the history this node saw",
                                start - 1
                            )));
                        }
                    }
                    live.record_source_contact(SystemTime::now());
                    asked_at = None;
                    *backoff = BACKOFF_MIN;
                    if let Some(t) = down_since.take() {
                        tracing::info!(after = ?t.elapsed(), "etcd answers again; catching up");
                    }
                    let (mut changed, mut contained) = self.note_events(&resp);
                    let mut revision = last_event_revision(&resp);
                    if changed {
                        // Coalesce a burst: take what follows closely.
                        let until = Instant::now() + COALESCE;
                        while Instant::now() < until {
                            match tokio::time::timeout(COALESCE_QUIET, stream.message()).await {
                                Ok(Ok(Some(more))) => {
                                    if more.compact_revision() > 0 || more.canceled() {
                                        // Serve what is whole so far; the next
                                        // message decides.
                                        break;
                                    }
                                    let (c, q) = self.note_events(&more);
                                    changed |= c;
                                    contained |= q;
                                    revision = revision.max(last_event_revision(&more));
                                }
                                Ok(Ok(None)) | Ok(Err(_)) => break,
                                Err(_) => break,
                            }
                        }
                    }
                    {
                        let mut m = self.mirror();
                        m.revision = m.revision.max(revision);
                        revision = m.revision;
                    }
                    if changed {
                        self.clone().apply(live.clone(), revision, true).await;
                    } else {
                        if contained {
                            // Keep the quarantines for a start without etcd.
                            let me = self.clone();
                            let _ = tokio::task::spawn_blocking(move || me.persist()).await;
                        }
                        self.publish_applied(revision);
                    }
                }
                _ = tick.tick() => {
                    if let Some(at) = asked_at {
                        if at.elapsed() > self.timeout.min(Duration::from_secs(10)).max(every * 3) {
                            return Err(EtcdError::Timeout(at.elapsed()));
                        }
                    } else {
                        asked_at = Some(Instant::now());
                    }
                    stream.request_progress().await?;
                }
            }
        }
    }

    /// Rebuild the raw config from the mirror and serve it (off the async
    /// threads: a build takes milliseconds); keep it on disk when it was
    /// taken from etcd and is good. A refused config leaves the last good
    /// one serving and is reported on /readyz.
    pub(crate) async fn apply(self: Arc<Self>, live: Arc<Live>, revision: i64, persist: bool) {
        let me = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            let raw = me.mirror().raw();
            match raw {
                Err(errors) => {
                    tracing::error!(?errors, "etcd holds a value that is not JSON; the last good config keeps serving");
                    live.record_refusal(errors);
                }
                Ok(raw) => match live.apply(raw) {
                    Ok(version) => {
                        tracing::debug!(revision, version, "config from etcd applied");
                        if persist {
                            me.persist();
                        }
                    }
                    Err(errors) => {
                        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                        tracing::error!(revision, ?errors, "etcd holds a configuration this node refuses; the last good config keeps serving");
                    }
                },
            }
        })
        .await;
        if let Err(e) = built {
            tracing::error!(error = %e, "applying the config from etcd failed");
        }
        self.publish_applied(revision);
    }

    fn persist(&self) {
        let Some(path) = &self.cache_path else { return };
        let snapshot = self
            .mirror()
            .to_cache(&self.prefix, cache::millis(SystemTime::now()));
        if let Err(e) = cache::write(path, &snapshot) {
            tracing::warn!(error = %e, path = %path.display(), "cannot persist the config from etcd locally");
        }
    }

    pub(crate) fn publish_applied(&self, revision: i64) {
        self.applied.send_if_modified(|r| {
            if *r < revision {
                *r = revision;
                true
            } else {
                false
            }
        });
    }

    /// Fold one watch response's events into the mirror, and apply the
    /// quarantines among them to the registry at once; whether a resource
    /// changed, and whether a quarantine did.
    fn note_events(&self, resp: &etcd_client::WatchResponse) -> (bool, bool) {
        let mut words = Vec::new();
        let changed = self.note_in_mirror(resp, &mut words);
        let contained = !words.is_empty();
        containment::apply(words);
        (changed, contained)
    }

    fn note_in_mirror(
        &self,
        resp: &etcd_client::WatchResponse,
        words: &mut Vec<containment::Word>,
    ) -> bool {
        let mut m = self.mirror();
        let mut changed = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            if let Some(id) = keys::parse_quarantine_key(&self.prefix, key) {
                match ev.event_type() {
                    EventType::Put => {
                        let stored = m.put_quarantine(id, kv.value(), kv.mod_revision());
                        if let Some(spec) = stored.and_then(|v| containment::spec_of(id, &v)) {
                            words.push(containment::Word::Put(Box::new(spec)));
                        }
                    }
                    EventType::Delete => {
                        m.quarantines.remove(id);
                        words.push(containment::Word::Delete(id.to_string()));
                    }
                }
                continue;
            }
            changed |= match ev.event_type() {
                EventType::Put => m.put(
                    &self.prefix,
                    key,
                    kv.value(),
                    kv.create_revision(),
                    kv.mod_revision(),
                ),
                EventType::Delete => m.delete(&self.prefix, key),
            };
        }
        changed
    }
}

async fn sleep_backoff(backoff: &mut Duration) {
    // A little jitter, so a cluster's nodes do not all knock at once.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = Duration::from_millis(u64::from(nanos % 100));
    tokio::time::sleep(*backoff + jitter).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// How far a watch response proves this node has seen etcd: the revision of
/// its last event. Not the header's revision: a response without events
/// (the watch's creation, a requested progress notification) carries the
/// revision etcd is at, and etcd before 3.4.25 and 3.5.8 may send it while
/// events up to that revision are still on their way (etcd-io/etcd#15220;
/// Debian 12 ships 3.4.23). Taking it would let a write be answered before
/// this node serves it, and a watch restarted from it skip those events.
/// Every key portcullis writes is under the watched prefix, so every write
/// arrives here as an event.
fn last_event_revision(resp: &etcd_client::WatchResponse) -> i64 {
    resp.events()
        .iter()
        .filter_map(|ev| ev.kv().map(|kv| kv.mod_revision()))
        .max()
        .unwrap_or(0)
}
