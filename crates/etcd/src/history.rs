//! The change history in cluster mode: one key per change under
//! `{prefix}/portcullis/changes/`, written in the same transaction as the
//! change itself, so every node's Admin API lists what any node changed,
//! and a change is never stored without its record (or the reverse).
//!
//! An entry says who (the admin key's name), from where, how (method), what
//! (kind and id) and the values before and after, masked by the caller's
//! rules. The order is etcd's: `seq` is the revision of the write that made
//! the change times 1000, plus the entry's place within that write (an
//! approval writes the proposer's change and the approval). The newest
//! [`KEPT`] entries are kept.

use etcd_client::{DeleteOptions, GetOptions, SortOrder, SortTarget, TxnOp};
use portcullis_config::Kind;
pub use portcullis_store::{Change, ChangeFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{keys, EtcdError, EtcdStore};

/// Entries kept; older ones are removed as new ones come.
pub const KEPT: usize = 10_000;

/// Trim once in this many writes (by revision), not on every one.
const TRIM_EVERY: i64 = 32;

/// Who makes a change, and how its values are shown in the history.
#[derive(Clone, Copy)]
pub struct Author<'a> {
    /// The admin key's name (never the key).
    pub actor: &'a str,
    pub client: &'a str,
    /// HTTP method, or `PROPOSE`, `APPROVE`, `REJECT`.
    pub method: &'a str,
    /// Hides secrets in the values recorded.
    pub mask: fn(Kind, &Value) -> Value,
}

impl Author<'_> {
    pub(crate) fn record(
        &self,
        kind: &str,
        id: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> Record {
        let masked = |v: Value| match Kind::parse(kind) {
            Some(k) => (self.mask)(k, &v),
            None => v,
        };
        Record {
            time: crate::unix_secs(),
            actor: self.actor.to_string(),
            client: self.client.to_string(),
            method: self.method.to_string(),
            kind: kind.to_string(),
            id: id.to_string(),
            before: before.map(masked),
            after: after.map(masked),
            n: 0,
        }
    }

    /// The same author with another method.
    pub fn with_method<'b>(&'b self, method: &'b str) -> Author<'b> {
        Author {
            actor: self.actor,
            client: self.client,
            method,
            mask: self.mask,
        }
    }
}

/// Values with nothing to hide.
pub fn unmasked(_: Kind, v: &Value) -> Value {
    v.clone()
}

/// One entry as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    time: i64,
    actor: String,
    client: String,
    method: String,
    kind: String,
    id: String,
    before: Option<Value>,
    after: Option<Value>,
    /// Place within its write.
    #[serde(default)]
    n: u32,
}

/// Whether `c` is one `q` asks for (store mode filters in SQL).
fn matches(q: &ChangeFilter, c: &Change) -> bool {
    let resource = match q.resource.as_deref().filter(|r| !r.is_empty()) {
        None => true,
        Some(r) => match r.split_once('/') {
            Some((kind, id)) => c.kind == kind && c.id == id,
            None => c.kind == r,
        },
    };
    resource
        && q.since.is_none_or(|s| c.time >= s)
        && q.actor
            .as_deref()
            .filter(|a| !a.is_empty())
            .is_none_or(|a| c.actor == a)
}

impl EtcdStore {
    /// The puts that store `records` (numbered in order) with a write.
    pub(crate) fn history_ops(&self, records: Vec<Record>) -> Vec<TxnOp> {
        let now = crate::unix_millis();
        records
            .into_iter()
            .enumerate()
            .map(|(n, mut r)| {
                r.n = n as u32;
                let tag = uuid::Uuid::new_v4().simple().to_string();
                TxnOp::put(
                    keys::change_key(&self.prefix, now, &tag[..12]),
                    serde_json::to_vec(&r).unwrap_or_default(),
                    None,
                )
            })
            .collect()
    }

    /// The history, newest first.
    pub async fn changes(&self, q: &ChangeFilter) -> Result<Vec<Change>, EtcdError> {
        let mut kv = self
            .client()
            .await?
            .kv_client()
            .max_decoding_message_size(crate::MAX_MESSAGE);
        let resp = self
            .call(kv.get(
                keys::changes_prefix(&self.prefix),
                Some(GetOptions::new().with_prefix()),
            ))
            .await?;
        let mut out: Vec<Change> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let r: Record = serde_json::from_slice(kv.value()).ok()?;
                Some(Change {
                    seq: kv.mod_revision() * 1000 + i64::from(r.n.min(999)),
                    time: r.time,
                    actor: r.actor,
                    client: r.client,
                    method: r.method,
                    kind: r.kind,
                    id: r.id,
                    before: r.before,
                    after: r.after,
                })
            })
            .filter(|c| matches(q, c))
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.seq));
        out.truncate(q.limit.unwrap_or(100));
        Ok(out)
    }

    /// Now and then (by `revision`), remove the entries beyond the newest
    /// [`KEPT`]. A failure is logged: the next trim catches up.
    pub(crate) async fn trim_history(&self, revision: i64) {
        if revision % TRIM_EVERY != 0 {
            return;
        }
        if let Err(e) = self.trim_history_now(KEPT).await {
            tracing::warn!(error = %e, "cannot trim the change history in etcd");
        }
    }

    pub(crate) async fn trim_history_now(&self, kept: usize) -> Result<(), EtcdError> {
        let mut kv = self.client().await?.kv_client();
        let prefix = keys::changes_prefix(&self.prefix);
        let count = self
            .call(kv.get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ))
            .await?
            .count() as usize;
        if count <= kept {
            return Ok(());
        }
        // Keys sort by the writers' clocks: the first ones are the oldest.
        let oldest = self
            .call(
                kv.get(
                    prefix.clone(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_keys_only()
                            .with_sort(SortTarget::Key, SortOrder::Ascend)
                            .with_limit((count - kept) as i64),
                    ),
                ),
            )
            .await?;
        let Some(last) = oldest.kvs().last() else {
            return Ok(());
        };
        let mut end = last.key().to_vec();
        end.push(0);
        self.call(kv.delete(prefix, Some(DeleteOptions::new().with_range(end))))
            .await?;
        Ok(())
    }
}
