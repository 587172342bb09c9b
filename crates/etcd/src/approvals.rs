//! Dual control in cluster mode: a write held for a second admin's approval
//! is stored at `{prefix}/portcullis/approvals/{id}`, so it can be proposed
//! through one node and approved through another.
//!
//! Approving is one transaction that applies the write (with `gen_id`'s
//! guard, as every portcullis write), records it and the approval in the
//! history, and marks the change approved; it succeeds only if the pending
//! change is still at the revision the approver read (two approvals race
//! safely: one wins, the other finds it decided) and the resource is still
//! at the revision it had when the change was proposed.

use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use portcullis_config::Kind;
pub use portcullis_store::PendingChange;
use serde_json::Value;

use crate::history::Author;
use crate::{keys, EtcdError, EtcdStore};

/// Decided changes are kept this long (a lease), then etcd removes them;
/// pending ones stay until decided.
pub const DECIDED_KEPT_SECS: f64 = 30.0 * 24.0 * 3600.0;

/// Most changes listed.
const LIST_MAX: usize = 1000;

/// What a decision came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// Done, at this revision.
    Done(i64),
    /// No such change.
    Gone,
    /// Someone decided it first: its status now.
    NotPending(String),
    /// The resource changed after the proposal.
    Stale,
    /// Another write moved the configuration: catch up to this revision,
    /// check again and retry.
    Moved(i64),
}

fn parse(kv: &etcd_client::KeyValue) -> Option<PendingChange> {
    serde_json::from_slice(kv.value()).ok()
}

impl EtcdStore {
    /// The resource's `mod_revision` as this node sees it (0: absent).
    pub fn modified_index(&self, kind: Kind, id: &str) -> u64 {
        self.get(kind, id)
            .map_or(0, |e| e.mod_revision.max(0) as u64)
    }

    /// Hold a write: store `p` (its `id`, `time`, `status` and base are set
    /// here) with the proposal's history record. Returns it as stored.
    pub async fn propose(
        &self,
        mut p: PendingChange,
        author: &Author<'_>,
    ) -> Result<PendingChange, EtcdError> {
        let client = self.client().await?;
        let mut kv = client.kv_client();
        let seq = self
            .call(kv.put(keys::seq_key(&self.prefix), "1", None))
            .await?;
        p.id = seq.header().map(|h| h.revision()).unwrap_or_default();
        p.time = crate::unix_secs();
        p.status = "pending".into();
        p.decided_by = None;
        p.decided_at = None;
        let kind = Kind::parse(&p.kind);
        p.base_modified_index = kind.map_or(0, |k| self.modified_index(k, &p.resource_id));
        let before = kind
            .and_then(|k| self.get(k, &p.resource_id))
            .map(|e| Value::clone(&e.value));
        let record =
            author
                .with_method("PROPOSE")
                .record(&p.kind, &p.resource_id, before, p.value.clone());
        let mut ops = vec![TxnOp::put(
            keys::approval_key(&self.prefix, p.id),
            serde_json::to_vec(&p).unwrap_or_default(),
            None,
        )];
        ops.extend(self.history_ops(vec![record]));
        let resp = self.call(kv.txn(Txn::new().and_then(ops))).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        self.trim_history(revision).await;
        Ok(p)
    }

    /// One change and the revision it is at.
    pub async fn pending(&self, id: i64) -> Result<Option<(PendingChange, i64)>, EtcdError> {
        let mut kv = self.client().await?.kv_client();
        let resp = self
            .call(kv.get(keys::approval_key(&self.prefix, id), None))
            .await?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| parse(kv).map(|p| (p, kv.mod_revision()))))
    }

    /// Changes of `status` (`None`: all), newest first.
    pub async fn pendings(&self, status: Option<&str>) -> Result<Vec<PendingChange>, EtcdError> {
        let mut kv = self
            .client()
            .await?
            .kv_client()
            .max_decoding_message_size(crate::MAX_MESSAGE);
        let resp = self
            .call(
                kv.get(
                    keys::approvals_prefix(&self.prefix),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Key, SortOrder::Descend),
                    ),
                ),
            )
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(parse)
            .filter(|p| status.is_none_or(|s| p.status == s))
            .take(LIST_MAX)
            .collect())
    }

    /// Approve (`guard`: the `gen_id` revision of the view the change was
    /// checked against again) or reject (`guard` `None`) the change `decided`
    /// describes, which was read at revision `seen`; `decided` carries its
    /// new status, `decided_by` and `decided_at`. Approving applies the
    /// write and records it (by the proposer, with its method) and the
    /// approval (by `decider`); rejecting records the rejection.
    pub async fn decide(
        &self,
        decided: &PendingChange,
        seen: i64,
        guard: Option<i64>,
        decider: &Author<'_>,
    ) -> Result<Decided, EtcdError> {
        let client = self.client().await?;
        let pending_key = keys::approval_key(&self.prefix, decided.id);
        let kind = Kind::parse(&decided.kind);
        let resource_key = kind.map(|k| keys::key_of(&self.prefix, k, &decided.resource_id));
        let current = kind
            .and_then(|k| self.get(k, &decided.resource_id))
            .map(|e| Value::clone(&e.value));
        let mut compares = vec![Compare::mod_revision(
            pending_key.clone(),
            CompareOp::Equal,
            seen,
        )];
        let mut ops = Vec::new();
        let mut records = Vec::new();
        let mut leases = Vec::new();
        let approving = guard.is_some();
        if let (Some(g), Some(kind), Some(key)) = (guard, kind, resource_key.as_ref()) {
            compares.push(Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                decided.base_modified_index as i64,
            ));
            compares.push(Compare::mod_revision(
                keys::gen_id_key(&self.prefix),
                CompareOp::Equal,
                g,
            ));
            let proposer = Author {
                actor: &decided.actor,
                client: &decided.client,
                method: &decided.method,
                mask: decider.mask,
            };
            match &decided.value {
                Some(v) => {
                    let value = self.stamped(kind, &decided.resource_id, v.clone());
                    let mut opts = PutOptions::new();
                    if let Some(ttl) = decided.ttl {
                        let lease = self.lease(&client, ttl).await?;
                        leases.push(lease);
                        opts = opts.with_lease(lease);
                    }
                    records.push(proposer.record(
                        &decided.kind,
                        &decided.resource_id,
                        current.clone(),
                        Some(value.clone()),
                    ));
                    ops.push(TxnOp::put(
                        key.clone(),
                        serde_json::to_vec(&value).unwrap_or_default(),
                        Some(opts),
                    ));
                }
                None => {
                    let (deletes, deleted) =
                        self.delete_ops(kind, &decided.resource_id, Some(&proposer));
                    ops.extend(deletes);
                    records.extend(deleted);
                }
            }
            ops.push(TxnOp::put(keys::gen_id_key(&self.prefix), "1", None));
        }
        let method = if approving { "APPROVE" } else { "REJECT" };
        records.push(decider.with_method(method).record(
            &decided.kind,
            &decided.resource_id,
            current,
            decided.value.clone(),
        ));
        ops.extend(self.history_ops(records));
        let lease = self.lease(&client, DECIDED_KEPT_SECS).await?;
        leases.push(lease);
        ops.push(TxnOp::put(
            pending_key.clone(),
            serde_json::to_vec(decided).unwrap_or_default(),
            Some(PutOptions::new().with_lease(lease)),
        ));
        let mut otherwise = vec![TxnOp::get(pending_key, None)];
        let reads_resource = resource_key.is_some();
        if let Some(key) = resource_key {
            otherwise.push(TxnOp::get(key, None));
        }
        // Last, so `guard_revision` finds it.
        otherwise.push(TxnOp::get(keys::gen_id_key(&self.prefix), None));
        let txn = Txn::new().when(compares).and_then(ops).or_else(otherwise);
        let mut kv = client.kv_client();
        let resp = self.call(kv.txn(txn)).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if resp.succeeded() {
            self.trim_history(revision).await;
            return Ok(Decided::Done(revision));
        }
        let mut lease_client = client.lease_client();
        for lease in leases {
            // Unused: let it go now rather than at its expiry.
            let _ = self.call(lease_client.revoke(lease)).await;
        }
        // Why not: the change decided meanwhile, the resource moved, or
        // (only the guard is left) another write.
        let got: Vec<Option<etcd_client::KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            .collect();
        let Some(Some(now)) = got.first() else {
            return Ok(Decided::Gone);
        };
        if now.mod_revision() != seen {
            let status = parse(now).map_or_else(|| "changed".to_string(), |p| p.status);
            return Ok(Decided::NotPending(status));
        }
        if approving {
            let resource_rev = got
                .get(1)
                .filter(|_| reads_resource)
                .and_then(|kv| kv.as_ref().map(|kv| kv.mod_revision()))
                .unwrap_or(0);
            if resource_rev != decided.base_modified_index as i64 {
                return Ok(Decided::Stale);
            }
        }
        Ok(Decided::Moved(crate::guard_revision(&resp)))
    }
}
