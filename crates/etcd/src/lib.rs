//! portcullis's cluster mode: resources in etcd, in APISIX's key layout,
//! shared by every node.
//!
//! - Each node loads everything under the prefix with one range get, then
//!   watches from the next revision; every change rebuilds the whole raw
//!   configuration and hands it to [`Live::apply`] (bursts coalesced). A
//!   compacted watch revision means a clean full reload, never a partial
//!   config.
//! - etcd away: the node keeps serving its last good config, retries with
//!   backoff, and tells [`Live`] when it last heard from etcd, so `/readyz`
//!   fails past `max_staleness`. The last good config is also written to
//!   `data_dir/etcd-cache.json`, which a node started while etcd is away
//!   serves.
//! - Writes (the Admin API, `portcullis migrate`) go to etcd with APISIX's
//!   semantics: `createdIndex` = `create_revision`, `modifiedIndex` =
//!   `mod_revision`, ttl through a lease, POST ids from a put to
//!   `{prefix}/gen_id`. Each portcullis write is a transaction guarded by
//!   `gen_id`'s revision, so two nodes never both validate against a view
//!   the other has just changed.
//! - What the Admin API adds beyond APISIX lives under
//!   `{prefix}/portcullis/` (`keys`): quarantines, which every node's watch
//!   applies to its registry (`containment`); changes held for a second
//!   admin (`approvals`); and the change history (`history`), written in
//!   the same transaction as the change it records.
//!
//! [`Live`]: portcullis_config::Live
//! [`Live::apply`]: portcullis_config::Live::apply

pub mod approvals;
pub mod cache;
pub mod containment;
pub mod history;
pub mod keys;
mod mirror;
mod sync;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use etcd_client;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use portcullis_config::settings::EtcdSettings;
use portcullis_config::{Kind, RawConfig};
use serde_json::Value;

pub use history::{Author, Change, ChangeFilter};
pub use mirror::Entry;
pub use sync::Started;

/// Responses as large as a config with tens of thousands of routes.
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// Puts per transaction when importing (etcd's default limit is 128).
const IMPORT_BATCH: usize = 100;

/// Deleting a consumer records its credentials' deletions one by one, up
/// to this many (a transaction holds at most 128 operations).
const MAX_RECORDED_CREDENTIALS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd could not be reached or refused the request.
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// The settings cannot work (a TLS file that does not read, ...).
    #[error("etcd settings: {0}")]
    Settings(String),
    /// Another writer changed the configuration after this node's view of
    /// it: catch up to `revision` and try again.
    #[error("the configuration changed on another node (revision {revision})")]
    Conflict { revision: i64 },
}

impl From<etcd_client::Error> for EtcdError {
    fn from(e: etcd_client::Error) -> Self {
        EtcdError::Unavailable(e.to_string())
    }
}

/// What a put did, as the Admin API answers it.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    pub created: bool,
    pub created_index: u64,
    pub modified_index: u64,
    /// The value as stored (with `create_time` and `update_time`).
    pub value: Value,
}

pub struct EtcdStore {
    hosts: Vec<String>,
    prefix: String,
    timeout: Duration,
    max_staleness: Duration,
    options: ConnectOptions,
    client: Mutex<Option<Client>>,
    mirror: Mutex<mirror::Mirror>,
    /// The etcd revision the sync loop has applied (or refused) up to.
    applied: tokio::sync::watch::Sender<i64>,
    cache_path: Option<PathBuf>,
}

fn secs(s: f64, fallback: f64) -> Duration {
    Duration::from_secs_f64(if s.is_finite() && s > 0.0 {
        s
    } else {
        fallback
    })
}

/// Where the guard (`{prefix}/gen_id`) is now, from a refused guarded
/// transaction that read it back: the revision to catch up to before
/// checking again. Not the response's header revision, which may come from
/// a write outside this prefix, that no event here will ever show.
pub(crate) fn guard_revision(resp: &etcd_client::TxnResponse) -> i64 {
    let read = resp.op_responses().into_iter().rev().find_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
        _ => None,
    });
    read.unwrap_or_else(|| resp.header().map(|h| h.revision()).unwrap_or_default())
}

impl EtcdStore {
    /// Check the settings and prepare the connection; nothing is contacted
    /// yet. `cache_path` is where the last good config is kept (`None`:
    /// nowhere, as for `portcullis migrate`).
    pub fn new(
        settings: &EtcdSettings,
        cache_path: Option<PathBuf>,
    ) -> Result<EtcdStore, EtcdError> {
        if settings.host.is_empty() {
            return Err(EtcdError::Settings(
                "host: at least one endpoint is required".into(),
            ));
        }
        let timeout = secs(settings.timeout, 30.0);
        let hosts: Vec<String> = settings
            .host
            .iter()
            .map(|h| {
                if h.contains("://") {
                    h.clone()
                } else {
                    format!("http://{h}")
                }
            })
            .collect();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout.min(Duration::from_secs(5)))
            .with_keep_alive(Duration::from_secs(5), timeout.min(Duration::from_secs(10)))
            .with_keep_alive_while_idle(true);
        match (&settings.user, &settings.password) {
            (Some(user), Some(password)) => options = options.with_user(user, password),
            (Some(_), None) | (None, Some(_)) => {
                return Err(EtcdError::Settings("user and password go together".into()))
            }
            (None, None) => {}
        }
        let https = hosts.iter().any(|h| h.starts_with("https://"));
        if settings.tls.is_some() || https {
            let mut tls = TlsOptions::new();
            let read = |p: &PathBuf, what: &str| {
                std::fs::read(p).map_err(|e| {
                    EtcdError::Settings(format!("tls.{what}: cannot read {}: {e}", p.display()))
                })
            };
            match &settings.tls {
                Some(t) => {
                    if !t.verify {
                        return Err(EtcdError::Settings(
                            "tls.verify: false is not supported; give tls.ca instead".into(),
                        ));
                    }
                    tls = match &t.ca {
                        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "ca")?)),
                        None => tls.with_enabled_roots(),
                    };
                    match (&t.cert, &t.key) {
                        (Some(cert), Some(key)) => {
                            tls = tls.identity(Identity::from_pem(
                                read(cert, "cert")?,
                                read(key, "key")?,
                            ))
                        }
                        (None, None) => {}
                        _ => {
                            return Err(EtcdError::Settings(
                                "tls.cert and tls.key go together".into(),
                            ))
                        }
                    }
                    if let Some(sni) = &t.sni {
                        tls = tls.domain_name(sni.clone());
                    }
                }
                None => tls = tls.with_enabled_roots(),
            }
            options = options.with_tls(tls);
        }
        let (applied, _) = tokio::sync::watch::channel(0);
        Ok(EtcdStore {
            hosts,
            prefix: keys::normalize_prefix(&settings.prefix),
            timeout,
            max_staleness: if settings.max_staleness.is_finite() && settings.max_staleness > 0.0 {
                Duration::from_secs_f64(settings.max_staleness)
            } else {
                Duration::ZERO
            },
            options,
            client: Mutex::new(None),
            mirror: Mutex::new(mirror::Mirror::default()),
            applied,
            cache_path,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key a resource lives at, as answers show it.
    pub fn key_of(&self, kind: Kind, id: &str) -> String {
        keys::key_of(&self.prefix, kind, id)
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, mirror::Mirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `fut` under the request timeout.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(EtcdError::Timeout(self.timeout)),
        }
    }

    /// The client, connecting first if need be (with user and password,
    /// connecting authenticates, which needs etcd to be there).
    async fn client(&self) -> Result<Client, EtcdError> {
        if let Some(c) = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(c);
        }
        let c = self
            .call(Client::connect(&self.hosts, Some(self.options.clone())))
            .await?;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    // --- reads, from what this node has seen -------------------------------

    pub fn get(&self, kind: Kind, id: &str) -> Option<Entry> {
        let key = keys::key_of(&self.prefix, kind, id);
        self.mirror().entries.get(&key).cloned()
    }

    /// Every resource of `kind`, ordered by key.
    pub fn list(&self, kind: Kind) -> Vec<Entry> {
        self.mirror()
            .entries
            .values()
            .filter(|e| e.kind == kind)
            .cloned()
            .collect()
    }

    /// Everything under the prefix as a raw configuration.
    pub fn raw(&self) -> Result<RawConfig, Vec<String>> {
        self.mirror().raw()
    }

    /// The revision this node has applied up to.
    pub fn applied_revision(&self) -> i64 {
        *self.applied.borrow()
    }

    /// What a write is checked against: everything this node has seen in
    /// etcd (which is what is served, unless etcd holds something this node
    /// refuses), and the guard a write must find `gen_id` at for that view
    /// to still be current.
    pub fn view(&self) -> Result<(RawConfig, i64), Vec<String>> {
        let m = self.mirror();
        Ok((m.raw()?, m.guard))
    }

    /// Wait until this node serves what etcd held at `revision`; `false`
    /// when that takes longer than the request timeout (the write is in
    /// etcd all the same, and every node will serve it once it catches up).
    pub async fn wait_applied(&self, revision: i64) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(self.timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    // --- writes --------------------------------------------------------------

    /// A new id for POST, as APISIX makes it: the revision of a put to
    /// `{prefix}/gen_id`, 20 digits zero padded.
    pub async fn next_id(&self) -> Result<String, EtcdError> {
        let mut kv = self.client().await?.kv_client();
        let resp = self
            .call(kv.put(keys::gen_id_key(&self.prefix), "1", None))
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        // The put moved the guard: wait to see it, so the write that
        // follows is not refused as a conflict.
        self.wait_applied(rev).await;
        Ok(format!("{rev:020}"))
    }

    /// `value` as stored: `create_time` kept from the resource it
    /// replaces, `update_time` now (neither for plugin_metadata, as in
    /// APISIX).
    pub(crate) fn stamped(&self, kind: Kind, id: &str, mut value: Value) -> Value {
        if kind != Kind::PluginMetadata {
            let now = unix_secs();
            let create_time = self
                .get(kind, id)
                .and_then(|p| p.value.get("create_time").and_then(Value::as_i64))
                .unwrap_or(now);
            if let Value::Object(obj) = &mut value {
                obj.insert("create_time".into(), create_time.into());
                obj.insert("update_time".into(), now.into());
            }
        }
        value
    }

    /// A lease of `ttl_secs` (rounded up, at least 1 s).
    pub(crate) async fn lease(&self, client: &Client, ttl_secs: f64) -> Result<i64, EtcdError> {
        let mut lease = client.lease_client();
        let granted = self
            .call(lease.grant(ttl_secs.ceil().max(1.0) as i64, None))
            .await?;
        Ok(granted.id())
    }

    /// The ops that delete one resource (a consumer with its credentials),
    /// and the history records of what they delete, as this node sees it.
    pub(crate) fn delete_ops(
        &self,
        kind: Kind,
        id: &str,
        author: Option<&Author<'_>>,
    ) -> (Vec<TxnOp>, Vec<history::Record>) {
        let mut ops = vec![TxnOp::delete(
            keys::key_of(&self.prefix, kind, id),
            Some(DeleteOptions::new().with_prev_key()),
        )];
        let mut records = Vec::new();
        if let Some(a) = author {
            records.push(a.record(
                kind.as_str(),
                id,
                self.get(kind, id).map(|e| Value::clone(&e.value)),
                None,
            ));
        }
        if kind == Kind::Consumers {
            ops.push(TxnOp::delete(
                keys::credentials_prefix(&self.prefix, id),
                Some(DeleteOptions::new().with_prefix()),
            ));
            if let Some(a) = author {
                let own = format!("{id}/");
                records.extend(
                    self.list(Kind::Credentials)
                        .into_iter()
                        .filter(|c| c.id.starts_with(&own))
                        .take(MAX_RECORDED_CREDENTIALS)
                        .map(|c| {
                            a.record(
                                Kind::Credentials.as_str(),
                                &c.id,
                                Some(Value::clone(&c.value)),
                                None,
                            )
                        }),
                );
            }
        }
        (ops, records)
    }

    /// Create or replace one resource, stamped as [`EtcdStore::stamped`]
    /// says. `ttl_secs` attaches it to a lease. `guard`: the `gen_id`
    /// revision of the view the write was checked against (see
    /// [`EtcdStore::view`]); `None` writes unconditionally. `author`: record
    /// the change in the history, in the same transaction.
    pub async fn put(
        &self,
        kind: Kind,
        id: &str,
        value: Value,
        ttl_secs: Option<f64>,
        guard: Option<i64>,
        author: Option<&Author<'_>>,
    ) -> Result<PutOutcome, EtcdError> {
        let client = self.client().await?;
        let key = keys::key_of(&self.prefix, kind, id);
        let value = self.stamped(kind, id, value);
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        let mut opts = PutOptions::new().with_prev_key();
        if let Some(ttl) = ttl_secs {
            opts = opts.with_lease(self.lease(&client, ttl).await?);
        }
        let mut ops = vec![TxnOp::put(key, bytes, Some(opts))];
        if let Some(a) = author {
            let before = self.get(kind, id).map(|e| Value::clone(&e.value));
            let record = a.record(kind.as_str(), id, before, Some(value.clone()));
            ops.extend(self.history_ops(vec![record]));
        }
        let resp = self.guarded_txn(&client, &mut ops, guard).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let prev_create = resp
            .op_responses()
            .into_iter()
            .next()
            .and_then(|r| match r {
                TxnOpResponse::Put(p) => p.prev_key().map(|kv| kv.create_revision()),
                _ => None,
            });
        if author.is_some() {
            self.trim_history(revision).await;
        }
        Ok(PutOutcome {
            created: prev_create.is_none(),
            created_index: prev_create.unwrap_or(revision) as u64,
            modified_index: revision as u64,
            value,
        })
    }

    /// Delete one resource; deleting a consumer deletes its credentials in
    /// the same transaction. The revision of the delete, or `None` when
    /// there was nothing to delete. `author`: as for [`EtcdStore::put`].
    pub async fn delete(
        &self,
        kind: Kind,
        id: &str,
        guard: Option<i64>,
        author: Option<&Author<'_>>,
    ) -> Result<Option<i64>, EtcdError> {
        let client = self.client().await?;
        let (mut ops, records) = self.delete_ops(kind, id, author);
        if !records.is_empty() {
            // Recorded only if the delete finds the resource.
            let key = keys::key_of(&self.prefix, kind, id);
            let history = self.history_ops(records);
            ops.push(TxnOp::txn(
                Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Greater, 0)])
                    .and_then(history),
            ));
            ops.rotate_right(1);
        }
        let resp = self.guarded_txn(&client, &mut ops, guard).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let deleted = resp.op_responses().into_iter().any(|r| match r {
            TxnOpResponse::Delete(d) => d
                .prev_kvs()
                .first()
                .is_some_and(|kv| kv.key() == keys::key_of(&self.prefix, kind, id).as_bytes()),
            _ => false,
        });
        if deleted && author.is_some() {
            self.trim_history(revision).await;
        }
        Ok(deleted.then_some(revision))
    }

    async fn guarded_txn(
        &self,
        client: &Client,
        ops: &mut Vec<TxnOp>,
        guard: Option<i64>,
    ) -> Result<etcd_client::TxnResponse, EtcdError> {
        let mut kv = client.kv_client();
        let gen_id = keys::gen_id_key(&self.prefix);
        let txn = match guard {
            Some(g) => {
                ops.push(TxnOp::put(gen_id.clone(), "1", None));
                Txn::new()
                    .when([Compare::mod_revision(gen_id.clone(), CompareOp::Equal, g)])
                    .and_then(std::mem::take(ops))
                    .or_else([TxnOp::get(gen_id, None)])
            }
            None => Txn::new().and_then(std::mem::take(ops)),
        };
        let resp = self.call(kv.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(EtcdError::Conflict {
                revision: guard_revision(&resp),
            });
        }
        Ok(resp)
    }

    /// Write every resource of `raw` (ids as the config knows them; values
    /// get `id`, `create_time`, `update_time` as the Admin API would give
    /// them), in transactions of up to 100 puts. Returns how many.
    pub async fn import(&self, raw: &RawConfig) -> Result<usize, EtcdError> {
        let client = self.client().await?;
        let mut kv = client.kv_client();
        let now = unix_secs();
        let mut ops = Vec::new();
        let mut n = 0;
        for kind in Kind::ALL {
            for r in raw.of(kind) {
                let mut value = Value::clone(&r.value);
                if let Value::Object(obj) = &mut value {
                    match kind {
                        Kind::Consumers => {}
                        Kind::Credentials => {
                            let own = r.id.split_once('/').map(|(_, c)| c).unwrap_or(&r.id);
                            obj.insert("id".into(), Value::String(own.to_string()));
                        }
                        _ => {
                            obj.insert("id".into(), Value::String(r.id.clone()));
                        }
                    }
                    if kind != Kind::PluginMetadata {
                        obj.entry("create_time").or_insert(now.into());
                        obj.entry("update_time").or_insert(now.into());
                    }
                }
                let key = keys::key_of(&self.prefix, kind, &r.id);
                ops.push(TxnOp::put(
                    key,
                    serde_json::to_vec(&value).unwrap_or_default(),
                    None,
                ));
                n += 1;
                if ops.len() == IMPORT_BATCH {
                    self.call(kv.txn(Txn::new().and_then(std::mem::take(&mut ops))))
                        .await?;
                }
            }
        }
        if !ops.is_empty() {
            self.call(kv.txn(Txn::new().and_then(ops))).await?;
        }
        Ok(n)
    }

    /// Read everything under the prefix once (for `portcullis migrate`).
    pub async fn load_once(&self) -> Result<RawConfig, EtcdError> {
        self.full_load().await?;
        self.raw()
            .map_err(|errors| EtcdError::Settings(errors.join("; ")))
    }

    /// The current revision, by a one-key read.
    pub async fn current_revision(&self) -> Result<i64, EtcdError> {
        let mut kv = self.client().await?.kv_client();
        let resp = self
            .call(kv.get(
                keys::gen_id_key(&self.prefix),
                Some(GetOptions::new().with_count_only()),
            ))
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }
}

pub(crate) fn unix_secs() -> i64 {
    unix_millis() / 1000
}

pub(crate) fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Build the store behind `Arc`, as the sync loop and the Admin API share it.
pub fn shared(
    settings: &EtcdSettings,
    cache_path: Option<PathBuf>,
) -> Result<Arc<EtcdStore>, EtcdError> {
    EtcdStore::new(settings, cache_path).map(Arc::new)
}
