//! Pending changes: Admin API writes held for a second admin's approval
//! (dual control for the top risk tier). A pending change is stored whole
//! (the value it would write, or a delete) with who proposed it; approving
//! applies it, with its change record and the approval's, in one
//! transaction; rejecting records the rejection. Proposals, approvals and
//! rejections all appear in the change history (methods `PROPOSE`,
//! `APPROVE`, `REJECT`, by the admin key's name), so the history tells who
//! asked, who agreed, and what changed.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use crate::{
    delete_in, get_in, now_millis, put_in, record_change, ChangeMeta, Kind, PutOutcome, Result,
    Store, StoredResource,
};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pending_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    actor TEXT NOT NULL,
    client TEXT NOT NULL,
    method TEXT NOT NULL,
    kind TEXT NOT NULL,
    res_id TEXT NOT NULL,
    value TEXT,
    ttl REAL,
    base_modified_index INTEGER NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT,
    decided_at INTEGER
);
CREATE INDEX IF NOT EXISTS pending_by_status ON pending_changes (status);
";

/// A write held for approval (in SQLite in store mode, as JSON in etcd in
/// cluster mode).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PendingChange {
    pub id: i64,
    /// Unix seconds.
    pub time: i64,
    /// The admin key's name that proposed it.
    pub actor: String,
    pub client: String,
    /// `PUT`, `POST`, `PATCH` or `DELETE`.
    pub method: String,
    pub kind: String,
    /// The resource id (for credentials, `user/cid`).
    pub resource_id: String,
    /// The whole value it would write; `null` for a delete. Shown masked.
    pub value: Option<Value>,
    pub ttl: Option<f64>,
    /// The resource's `modifiedIndex` when it was proposed (0: it did not
    /// exist). Approval refuses when the resource has changed since.
    pub base_modified_index: u64,
    /// Why it was held.
    pub reason: String,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
}

/// What a proposal holds.
pub struct Proposal<'a> {
    pub kind: Kind,
    pub id: &'a str,
    /// `None`: delete.
    pub value: Option<Value>,
    pub ttl: Option<f64>,
    pub reason: &'a str,
}

/// What approving did.
#[derive(Debug)]
pub enum Applied {
    Put(PutOutcome),
    Deleted(Vec<StoredResource>),
}

type Row = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<f64>,
    i64,
    String,
    String,
    Option<String>,
    Option<i64>,
);

const COLUMNS: &str = "id, time, actor, client, method, kind, res_id, value, ttl, base_modified_index, reason, status, decided_by, decided_at";

fn to_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    ))
}

fn from_row(row: Row) -> Result<PendingChange> {
    let (id, time, actor, client, method, kind, res_id, value, ttl, base, reason, status, by, at) =
        row;
    Ok(PendingChange {
        id,
        time,
        actor,
        client,
        method,
        kind,
        resource_id: res_id,
        value: value.map(|v| serde_json::from_str(&v)).transpose()?,
        ttl,
        base_modified_index: base as u64,
        reason,
        status,
        decided_by: by,
        decided_at: at,
    })
}

/// Whether the resource is still as it was when the change was proposed.
fn unchanged_since(current: Option<&StoredResource>, base: u64) -> bool {
    current.map_or(0, |c| c.modified_index) == base
}

/// Why an approval or rejection could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecideError {
    NotFound,
    /// Already approved or rejected.
    NotPending(String),
    /// The resource changed after the proposal: it would overwrite that.
    Stale,
}

impl Store {
    /// Hold a write for approval; returns its id. The proposal is recorded
    /// in the change history too (method `PROPOSE`).
    pub fn propose(&self, p: Proposal<'_>, meta: &ChangeMeta) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current = get_in(&tx, p.kind, p.id)?;
        let now = now_millis() / 1000;
        tx.prepare_cached(
            "INSERT INTO pending_changes (time, actor, client, method, kind, res_id, value, ttl, base_modified_index, reason, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending')",
        )?
        .execute(params![
            now,
            meta.actor,
            meta.client,
            meta.method,
            p.kind.as_str(),
            p.id,
            p.value.as_ref().map(serde_json::to_string).transpose()?,
            p.ttl,
            current.as_ref().map_or(0, |c| c.modified_index) as i64,
            p.reason,
        ])?;
        let id = tx.last_insert_rowid();
        let propose = ChangeMeta::new(meta.actor.clone(), meta.client.clone(), "PROPOSE");
        record_change(
            &tx,
            now,
            &propose,
            p.kind,
            p.id,
            current.as_ref().map(|c| &c.value),
            p.value.as_ref(),
        )?;
        tx.commit()?;
        Ok(id)
    }

    pub fn pending_change(&self, id: i64) -> Result<Option<PendingChange>> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM pending_changes WHERE id = ?1"
            ))?
            .query_row(params![id], to_row)
            .optional()?;
        row.map(from_row).transpose()
    }

    /// Pending changes (`status` `None`: every one), newest first.
    pub fn pending_changes(&self, status: Option<&str>) -> Result<Vec<PendingChange>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM pending_changes WHERE ?1 IS NULL OR status = ?1 ORDER BY id DESC LIMIT 1000"
        ))?;
        let rows = stmt.query_map(params![status], to_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(from_row(row?)?);
        }
        Ok(out)
    }

    /// Apply a pending change: the write itself (recorded with the
    /// proposer's name and method), the approval (method `APPROVE`, by the
    /// approver) and the status, in one transaction. The caller has checked
    /// that the approver is not the proposer and that the result builds.
    pub fn approve(
        &self,
        id: i64,
        approver: &ChangeMeta,
    ) -> Result<std::result::Result<(PendingChange, Applied), DecideError>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM pending_changes WHERE id = ?1"
            ))?
            .query_row(params![id], to_row)
            .optional()?;
        let Some(change) = row.map(from_row).transpose()? else {
            return Ok(Err(DecideError::NotFound));
        };
        if change.status != "pending" {
            return Ok(Err(DecideError::NotPending(change.status)));
        }
        let Some(kind) = Kind::parse(&change.kind) else {
            return Ok(Err(DecideError::NotFound));
        };
        let current = get_in(&tx, kind, &change.resource_id)?;
        if !unchanged_since(current.as_ref(), change.base_modified_index) {
            return Ok(Err(DecideError::Stale));
        }
        let author = ChangeMeta::new(
            change.actor.clone(),
            change.client.clone(),
            change.method.clone(),
        );
        let now = now_millis() / 1000;
        let applied = match &change.value {
            Some(v) => Applied::Put(put_in(
                &tx,
                kind,
                &change.resource_id,
                v.clone(),
                change.ttl,
                &author,
            )?),
            None => {
                let mut gone = Vec::new();
                if let Some(found) = current.clone() {
                    delete_in(&tx, &found, now, &author)?;
                    gone.push(found);
                }
                Applied::Deleted(gone)
            }
        };
        let approve = ChangeMeta::new(approver.actor.clone(), approver.client.clone(), "APPROVE");
        record_change(
            &tx,
            now,
            &approve,
            kind,
            &change.resource_id,
            current.as_ref().map(|c| &c.value),
            change.value.as_ref(),
        )?;
        tx.prepare_cached(
            "UPDATE pending_changes SET status = 'approved', decided_by = ?2, decided_at = ?3 WHERE id = ?1",
        )?
        .execute(params![id, approver.actor, now])?;
        tx.commit()?;
        let mut change = change;
        change.status = "approved".into();
        change.decided_by = Some(approver.actor.clone());
        change.decided_at = Some(now);
        Ok(Ok((change, applied)))
    }

    /// Refuse a pending change; the rejection is recorded in the change
    /// history (method `REJECT`).
    pub fn reject_pending(
        &self,
        id: i64,
        by: &ChangeMeta,
    ) -> Result<std::result::Result<PendingChange, DecideError>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM pending_changes WHERE id = ?1"
            ))?
            .query_row(params![id], to_row)
            .optional()?;
        let Some(mut change) = row.map(from_row).transpose()? else {
            return Ok(Err(DecideError::NotFound));
        };
        if change.status != "pending" {
            return Ok(Err(DecideError::NotPending(change.status)));
        }
        let now = now_millis() / 1000;
        if let Some(kind) = Kind::parse(&change.kind) {
            let current = get_in(&tx, kind, &change.resource_id)?;
            let reject = ChangeMeta::new(by.actor.clone(), by.client.clone(), "REJECT");
            record_change(
                &tx,
                now,
                &reject,
                kind,
                &change.resource_id,
                current.as_ref().map(|c| &c.value),
                change.value.as_ref(),
            )?;
        }
        tx.prepare_cached(
            "UPDATE pending_changes SET status = 'rejected', decided_by = ?2, decided_at = ?3 WHERE id = ?1",
        )?
        .execute(params![id, by.actor, now])?;
        tx.commit()?;
        change.status = "rejected".into();
        change.decided_by = Some(by.actor.clone());
        change.decided_at = Some(now);
        Ok(Ok(change))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ChangeFilter;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn a_proposal_changes_nothing_until_approved_and_is_in_the_history() {
        let (_dir, store) = store();
        let alice = ChangeMeta::new("alice", "127.0.0.1", "PUT");
        let id = store
            .propose(
                Proposal {
                    kind: Kind::Routes,
                    id: "pay",
                    value: Some(json!({"uri": "/pay"})),
                    ttl: None,
                    reason: "top tier",
                },
                &alice,
            )
            .unwrap();
        assert!(store.get(Kind::Routes, "pay").unwrap().is_none());
        assert_eq!(store.pending_changes(Some("pending")).unwrap().len(), 1);
        let bob = ChangeMeta::new("bob", "127.0.0.1", "POST");
        let (change, applied) = store.approve(id, &bob).unwrap().unwrap();
        assert!(matches!(applied, Applied::Put(o) if o.created));
        assert_eq!(change.decided_by.as_deref(), Some("bob"));
        assert!(store.get(Kind::Routes, "pay").unwrap().is_some());
        let history: Vec<(String, String)> = store
            .changes(&ChangeFilter::default())
            .unwrap()
            .into_iter()
            .map(|c| (c.actor, c.method))
            .collect();
        assert_eq!(
            history,
            vec![
                ("bob".to_string(), "APPROVE".to_string()),
                ("alice".to_string(), "PUT".to_string()),
                ("alice".to_string(), "PROPOSE".to_string()),
            ]
        );
        assert_eq!(
            store.approve(id, &bob).unwrap().unwrap_err(),
            DecideError::NotPending("approved".into())
        );
    }

    #[test]
    fn a_change_made_stale_by_a_later_write_cannot_be_approved() {
        let (_dir, store) = store();
        let alice = ChangeMeta::new("alice", "", "DELETE");
        store
            .put(Kind::Routes, "pay", json!({"uri": "/pay"}), None, &alice)
            .unwrap();
        let id = store
            .propose(
                Proposal {
                    kind: Kind::Routes,
                    id: "pay",
                    value: None,
                    ttl: None,
                    reason: "top tier",
                },
                &alice,
            )
            .unwrap();
        store
            .put(Kind::Routes, "pay", json!({"uri": "/pay2"}), None, &alice)
            .unwrap();
        let bob = ChangeMeta::new("bob", "", "POST");
        assert_eq!(
            store.approve(id, &bob).unwrap().unwrap_err(),
            DecideError::Stale
        );
        let rejected = store.reject_pending(id, &bob).unwrap().unwrap();
        assert_eq!(rejected.status, "rejected");
        assert!(store.get(Kind::Routes, "pay").unwrap().is_some());
    }
}
