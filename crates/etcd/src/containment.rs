//! Containment in cluster mode: quarantines are stored in etcd at
//! `{prefix}/portcullis/quarantines/{id}`, so one made through any node
//! applies on every node.
//!
//! - Every node's watch applies puts and deletes of these keys to its
//!   quarantine registry as they arrive (not coalesced with config
//!   rebuilds); a full load or reload makes the registry exactly what etcd
//!   holds. The request side is unchanged: one pointer load, expiry checked
//!   per request.
//! - A quarantine with an expiry is attached to a lease of its remaining
//!   time plus [`LEASE_MARGIN_SECS`]: every node lifts it at `expires_at` by
//!   its own clock, and etcd removes the key even if no node is left to.
//! - Each node keeps the quarantines with its config in
//!   `data_dir/etcd-cache.json`, so a node started while etcd is away
//!   still enforces them.
//! - A quarantine made on a node other than through the Admin API (the
//!   anomaly detector's) is published to etcd by [`Publisher`], retried
//!   while etcd is away, until it expires or is lifted.
//!
//! Creating and lifting are recorded in the shared change history (kind
//! `quarantine`, methods `POST` and `DELETE`), in the same transaction.
//! Each node's audit store records the steps that node took.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use portcullis_audit::quarantine::{self, Hold, Replication, Spec};
use serde_json::Value;

use crate::history::{unmasked, Author};
use crate::{keys, EtcdError, EtcdStore};

/// Seconds past a quarantine's expiry before its lease removes the key.
pub const LEASE_MARGIN_SECS: f64 = 2.0;

/// The kind quarantines carry in the change history.
const KIND: &str = "quarantine";

/// What the watch learned about one quarantine.
pub(crate) enum Word {
    Put(Box<Spec>),
    Delete(String),
}

/// A stored quarantine; `None` (logged) when it does not read as one.
pub(crate) fn spec_of(id: &str, value: &Value) -> Option<Spec> {
    match serde_json::from_value::<Spec>(value.clone()) {
        Ok(s) if s.id == id => Some(s),
        Ok(s) => {
            tracing::warn!(key_id = id, value_id = %s.id, "a quarantine in etcd names another id; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(id, error = %e, "a quarantine in etcd does not read; ignored");
            None
        }
    }
}

/// Apply what the watch learned to this node's registry.
pub(crate) fn apply(words: Vec<Word>) {
    let reg = quarantine::registry();
    for w in words {
        match w {
            Word::Put(spec) => {
                tracing::info!(id = %spec.id, target = %spec.target(), "quarantine from etcd applied");
                reg.apply_put(*spec);
            }
            Word::Delete(id) => {
                tracing::info!(id, "quarantine lifted in etcd");
                reg.apply_delete(&id);
            }
        }
    }
}

impl EtcdStore {
    /// Make this node's registry exactly what the mirror holds.
    pub(crate) fn apply_all_quarantines(&self) {
        let specs: Vec<Spec> = self
            .mirror()
            .quarantines
            .iter()
            .filter_map(|(id, q)| spec_of(id, &q.value))
            .collect();
        quarantine::registry().apply_all(specs);
    }

    /// Store a quarantine for every node, with its history record
    /// (`actor`, `client`: who asked). The revision it was stored at.
    pub async fn put_quarantine(
        &self,
        spec: &Spec,
        actor: &str,
        client_addr: &str,
    ) -> Result<i64, EtcdError> {
        let client = self.client().await?;
        let mut opts = PutOptions::new();
        if let Some(expires_at) = spec.expires_at {
            let left = (expires_at - crate::unix_millis()) as f64 / 1000.0;
            opts = opts.with_lease(
                self.lease(&client, left.max(0.0) + LEASE_MARGIN_SECS)
                    .await?,
            );
        }
        let author = Author {
            actor,
            client: client_addr,
            method: "POST",
            mask: unmasked,
        };
        let mut ops = vec![TxnOp::put(
            keys::quarantine_key(&self.prefix, &spec.id),
            serde_json::to_vec(spec).unwrap_or_default(),
            Some(opts),
        )];
        ops.extend(self.history_ops(vec![author.record(
            KIND,
            &spec.id,
            None,
            Some(spec.to_json()),
        )]));
        let mut kv = client.kv_client();
        let resp = self.call(kv.txn(Txn::new().and_then(ops))).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.trim_history(revision).await;
        Ok(revision)
    }

    /// A quarantine as etcd holds it now, with its `mod_revision`.
    pub async fn get_quarantine(&self, id: &str) -> Result<Option<(Spec, i64)>, EtcdError> {
        let mut kv = self.client().await?.kv_client();
        let resp = self
            .call(kv.get(keys::quarantine_key(&self.prefix, id), None))
            .await?;
        Ok(resp.kvs().first().and_then(|kv| {
            let value: Value = serde_json::from_slice(kv.value()).ok()?;
            spec_of(id, &value).map(|s| (s, kv.mod_revision()))
        }))
    }

    /// Lift a quarantine for every node, if etcd still holds it at `seen`
    /// (as [`EtcdStore::get_quarantine`] read it). The revision of the
    /// delete, or `None` when it was lifted or changed meanwhile.
    pub async fn delete_quarantine(
        &self,
        spec: &Spec,
        seen: i64,
        actor: &str,
        client_addr: &str,
    ) -> Result<Option<i64>, EtcdError> {
        let key = keys::quarantine_key(&self.prefix, &spec.id);
        let author = Author {
            actor,
            client: client_addr,
            method: "DELETE",
            mask: unmasked,
        };
        let mut ops = vec![TxnOp::delete(key.clone(), None)];
        ops.extend(self.history_ops(vec![author.record(
            KIND,
            &spec.id,
            Some(spec.to_json()),
            None,
        )]));
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, seen)])
            .and_then(ops);
        let mut kv = self.client().await?.kv_client();
        let resp = self.call(kv.txn(txn)).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if !resp.succeeded() {
            return Ok(None);
        }
        self.trim_history(revision).await;
        Ok(Some(revision))
    }
}

/// Publishes quarantines made on this node outside the Admin API.
pub struct Publisher {
    store: Arc<EtcdStore>,
    runtime: tokio::runtime::Handle,
}

/// From now on, quarantines this node makes on its own are published
/// through `store` (tasks on the current runtime).
pub(crate) fn install(store: &Arc<EtcdStore>) {
    quarantine::registry().set_replication(Arc::new(Publisher {
        store: store.clone(),
        runtime: tokio::runtime::Handle::current(),
    }));
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

fn still_active(spec: &Spec) -> bool {
    let now = crate::unix_millis();
    spec.expires_at.is_none_or(|e| now < e) && quarantine::registry().get(&spec.id).is_some()
}

impl Replication for Publisher {
    fn publish(&self, spec: Spec, hold: Hold) {
        let store = self.store.clone();
        self.runtime.spawn(async move {
            let mut wait = RETRY_MIN;
            let mut warned = false;
            while still_active(&spec) {
                match store
                    .put_quarantine(&spec, &spec.created_by, "")
                    .await
                {
                    Ok(revision) => {
                        tracing::info!(id = %spec.id, target = %spec.target(), "quarantine published to etcd");
                        store.wait_applied(revision).await;
                        if !still_active(&spec) {
                            // Lifted here while it was being published.
                            if let Ok(Some((s, seen))) = store.get_quarantine(&spec.id).await {
                                let _ = store.delete_quarantine(&s, seen, "expiry", "").await;
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        if !warned {
                            warned = true;
                            tracing::warn!(id = %spec.id, error = %e, "cannot publish a quarantine to etcd yet; it applies on this node only until it can");
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
            drop(hold);
        });
    }

    fn withdraw(&self, spec: Spec, hold: Hold) {
        let store = self.store.clone();
        self.runtime.spawn(async move {
            let done = match store.get_quarantine(&spec.id).await {
                Ok(Some((s, seen))) => store
                    .delete_quarantine(&s, seen, "local", "")
                    .await
                    .map(|_| ()),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                tracing::error!(id = %spec.id, error = %e, "cannot lift a quarantine in etcd; lift it again through the Admin API");
            }
            drop(hold);
        });
    }
}
