//! portcullis's embedded store: the resources written through the Admin API,
//! kept in SQLite under `data_dir/portcullis.db`.
//!
//! It mirrors what APISIX keeps in etcd: every resource has a
//! `createdIndex`/`modifiedIndex` taken from one global revision counter, may
//! carry a ttl, and ids made by POST come from the same counter. Every write
//! is recorded in a change history (who, from where, before and after, with
//! secrets masked) in the same transaction as the write itself, so the
//! history can never miss or invent a change. The database runs in WAL mode
//! with `synchronous=FULL`: a write that was acknowledged survives `kill -9`
//! and power loss.

mod pending;
pub mod secrets;

pub use pending::{Applied, DecideError, PendingChange, Proposal};

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_config::{Kind, RawConfig, RawResource};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::Value;

/// The database file inside `data_dir`.
pub const DB_FILE: &str = "portcullis.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("store database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored value is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One stored resource with its revision bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub kind: Kind,
    pub id: String,
    /// As written (secrets in clear): callers mask before showing it.
    pub value: Value,
    pub created_index: u64,
    pub modified_index: u64,
    /// Unix seconds.
    pub create_time: i64,
    pub update_time: i64,
    /// Unix milliseconds; `None` for resources without ttl.
    pub expires_at: Option<i64>,
}

/// Who made a change and how, for the change history.
#[derive(Debug, Clone, Default)]
pub struct ChangeMeta {
    /// The admin key's name (never the key itself), or `ttl`, `import`.
    pub actor: String,
    /// The client address, or empty for changes made by the node itself.
    pub client: String,
    /// HTTP method, or `EXPIRE`, `IMPORT`.
    pub method: String,
}

impl ChangeMeta {
    pub fn new(
        actor: impl Into<String>,
        client: impl Into<String>,
        method: impl Into<String>,
    ) -> Self {
        ChangeMeta {
            actor: actor.into(),
            client: client.into(),
            method: method.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    /// Whether the resource did not exist before (APISIX answers 201).
    pub created: bool,
    pub created_index: u64,
    pub modified_index: u64,
}

/// One entry of the change history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub seq: i64,
    /// Unix seconds.
    pub time: i64,
    pub actor: String,
    pub client: String,
    pub method: String,
    pub kind: String,
    pub id: String,
    /// Masked; `null` when the resource was created.
    pub before: Option<Value>,
    /// Masked; `null` when the resource was deleted.
    pub after: Option<Value>,
}

/// Which changes to list. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ChangeFilter {
    /// `routes` (a whole kind) or `routes/1` (one resource; credentials are
    /// `credentials/user/cid`).
    pub resource: Option<String>,
    /// Only changes at or after this unix second.
    pub since: Option<i64>,
    pub actor: Option<String>,
    /// At most this many, newest first. Default 100.
    pub limit: Option<usize>,
}

pub struct Store {
    // rusqlite's Connection is not Sync; writes are serialised by the Admin
    // API anyway, and reads are rare (admin reads, reloads), so one
    // connection behind a mutex is enough.
    conn: Mutex<Connection>,
}

pub fn now_millis() -> i64 {
    millis(SystemTime::now())
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    value TEXT NOT NULL,
    created_index INTEGER NOT NULL,
    modified_index INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    update_time INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS resources_by_expiry ON resources (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS revision (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO revision (one, value) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    actor TEXT NOT NULL,
    client TEXT NOT NULL,
    method TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    before TEXT,
    after TEXT
);
CREATE INDEX IF NOT EXISTS changes_by_resource ON changes (kind, id);
CREATE INDEX IF NOT EXISTS changes_by_time ON changes (time);
";

impl Store {
    /// Open (or create) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join(DB_FILE))?;
        // WAL keeps readers off the writer's back; FULL makes every commit
        // durable before it is acknowledged.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(pending::SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every unexpired resource, as the config builder takes it; origins
    /// read `routes/1`, so errors name the resource as the Admin API does.
    pub fn load_raw(&self) -> Result<RawConfig> {
        let mut raw = RawConfig::default();
        for r in self.all()? {
            raw.push(
                r.kind,
                RawResource {
                    origin: format!("{}/{}", r.kind.as_str(), r.id),
                    id: r.id,
                    value: r.value.into(),
                },
            );
        }
        Ok(raw)
    }

    /// Every unexpired resource of every kind, ordered by kind then id.
    pub fn all(&self) -> Result<Vec<StoredResource>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, id, value, created_index, modified_index, create_time, update_time, expires_at
             FROM resources WHERE expires_at IS NULL OR expires_at > ?1 ORDER BY kind, id",
        )?;
        let rows = stmt.query_map(params![now_millis()], row_to_parts)?;
        collect(rows)
    }

    pub fn get(&self, kind: Kind, id: &str) -> Result<Option<StoredResource>> {
        let conn = self.conn();
        get_in(&conn, kind, id)
    }

    /// Every unexpired resource of `kind`, ordered by id.
    pub fn list(&self, kind: Kind) -> Result<Vec<StoredResource>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT kind, id, value, created_index, modified_index, create_time, update_time, expires_at
             FROM resources WHERE kind = ?1 AND (expires_at IS NULL OR expires_at > ?2) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![kind.as_str(), now_millis()], row_to_parts)?;
        collect(rows)
    }

    /// Create or replace one resource, with its change record, in one
    /// transaction. `create_time` is kept from the resource it replaces and
    /// `update_time` set to now, in `value` too (APISIX shows both).
    /// `ttl_secs` makes it expire; `None` makes it permanent.
    pub fn put(
        &self,
        kind: Kind,
        id: &str,
        value: Value,
        ttl_secs: Option<f64>,
        meta: &ChangeMeta,
    ) -> Result<PutOutcome> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let out = put_in(&tx, kind, id, value, ttl_secs, meta)?;
        tx.commit()?;
        Ok(out)
    }

    /// Several puts in one transaction: all of them land or none does.
    pub fn put_all(
        &self,
        items: Vec<(Kind, String, Value)>,
        meta: &ChangeMeta,
    ) -> Result<Vec<PutOutcome>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(items.len());
        for (kind, id, value) in items {
            out.push(put_in(&tx, kind, &id, value, None, meta)?);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Delete one resource, with its change record. Deleting a consumer
    /// deletes its credentials in the same transaction, as APISIX removes
    /// the consumer's `credentials/` directory. Returns what was deleted
    /// (the resource first), empty when it did not exist.
    pub fn delete(&self, kind: Kind, id: &str, meta: &ChangeMeta) -> Result<Vec<StoredResource>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(found) = get_in(&tx, kind, id)? else {
            return Ok(Vec::new());
        };
        let mut gone = vec![found];
        if kind == Kind::Consumers {
            let mut stmt = tx.prepare_cached(
                "SELECT kind, id, value, created_index, modified_index, create_time, update_time, expires_at
                 FROM resources WHERE kind = ?1 AND substr(id, 1, ?2) = ?3 ORDER BY id",
            )?;
            let prefix = format!("{id}/");
            let rows = stmt.query_map(
                params![
                    Kind::Credentials.as_str(),
                    prefix.chars().count() as i64,
                    prefix
                ],
                row_to_parts,
            )?;
            gone.extend(collect(rows)?);
        }
        let time = now_millis() / 1000;
        for r in &gone {
            delete_in(&tx, r, time, meta)?;
        }
        tx.commit()?;
        Ok(gone)
    }

    /// Delete every resource whose ttl has run out by `now`, recording each
    /// deletion (actor `ttl`). Returns what was removed.
    pub fn expire_due(&self, now: SystemTime) -> Result<Vec<(Kind, String)>> {
        let now_ms = millis(now);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let due = {
            let mut stmt = tx.prepare_cached(
                "SELECT kind, id, value, created_index, modified_index, create_time, update_time, expires_at
                 FROM resources WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            )?;
            let rows = stmt.query_map(params![now_ms], row_to_parts)?;
            collect(rows)?
        };
        let meta = ChangeMeta::new("ttl", "", "EXPIRE");
        for r in &due {
            delete_in(&tx, r, now_ms / 1000, &meta)?;
        }
        tx.commit()?;
        Ok(due.into_iter().map(|r| (r.kind, r.id)).collect())
    }

    /// A new id for POST: the next revision, 20 digits zero padded, as
    /// APISIX formats etcd's revision (`%020d`). Never repeats, across
    /// restarts too.
    pub fn next_id(&self) -> Result<String> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let rev = bump_revision(&tx)?;
        tx.commit()?;
        Ok(format!("{rev:020}"))
    }

    /// The change history, newest first.
    pub fn changes(&self, filter: &ChangeFilter) -> Result<Vec<Change>> {
        let mut sql = String::from(
            "SELECT seq, time, actor, client, method, kind, id, before, after FROM changes WHERE 1=1",
        );
        let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
        if let Some(resource) = filter.resource.as_deref().filter(|r| !r.is_empty()) {
            match resource.split_once('/') {
                Some((kind, id)) => {
                    sql.push_str(" AND kind = ? AND id = ?");
                    args.push(Box::new(kind.to_string()));
                    args.push(Box::new(id.to_string()));
                }
                None => {
                    sql.push_str(" AND kind = ?");
                    args.push(Box::new(resource.to_string()));
                }
            }
        }
        if let Some(since) = filter.since {
            sql.push_str(" AND time >= ?");
            args.push(Box::new(since));
        }
        if let Some(actor) = filter.actor.as_deref().filter(|a| !a.is_empty()) {
            sql.push_str(" AND actor = ?");
            args.push(Box::new(actor.to_string()));
        }
        sql.push_str(" ORDER BY seq DESC LIMIT ?");
        args.push(Box::new(filter.limit.unwrap_or(100) as i64));

        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(
            rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())),
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, Option<String>>(7)?,
                    row.get::<_, Option<String>>(8)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, time, actor, client, method, kind, id, before, after) = row?;
            out.push(Change {
                seq,
                time,
                actor,
                client,
                method,
                kind,
                id,
                before: before.map(|s| serde_json::from_str(&s)).transpose()?,
                after: after.map(|s| serde_json::from_str(&s)).transpose()?,
            });
        }
        Ok(out)
    }
}

type Parts = (String, String, String, i64, i64, i64, i64, Option<i64>);

fn row_to_parts(row: &rusqlite::Row<'_>) -> rusqlite::Result<Parts> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
    ))
}

fn collect(rows: impl Iterator<Item = rusqlite::Result<Parts>>) -> Result<Vec<StoredResource>> {
    let mut out = Vec::new();
    for row in rows {
        if let Some(r) = from_parts(row?)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// `None` for a kind this version does not know (a row written by a newer
/// one): skipped rather than failing every read.
fn from_parts(p: Parts) -> Result<Option<StoredResource>> {
    let (kind, id, value, created_index, modified_index, create_time, update_time, expires_at) = p;
    let Some(kind) = Kind::parse(&kind) else {
        tracing::warn!(
            kind,
            id,
            "store holds a resource of an unknown kind; ignored"
        );
        return Ok(None);
    };
    Ok(Some(StoredResource {
        kind,
        id,
        value: serde_json::from_str(&value)?,
        created_index: created_index as u64,
        modified_index: modified_index as u64,
        create_time,
        update_time,
        expires_at,
    }))
}

fn get_in(conn: &Connection, kind: Kind, id: &str) -> Result<Option<StoredResource>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, id, value, created_index, modified_index, create_time, update_time, expires_at
         FROM resources WHERE kind = ?1 AND id = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
    )?;
    let row = stmt
        .query_row(params![kind.as_str(), id, now_millis()], row_to_parts)
        .optional()?;
    match row {
        Some(p) => from_parts(p),
        None => Ok(None),
    }
}

fn bump_revision(tx: &Transaction<'_>) -> Result<u64> {
    let rev: i64 = tx.query_row(
        "UPDATE revision SET value = value + 1 WHERE one = 1 RETURNING value",
        [],
        |r| r.get(0),
    )?;
    Ok(rev as u64)
}

fn put_in(
    tx: &Transaction<'_>,
    kind: Kind,
    id: &str,
    mut value: Value,
    ttl_secs: Option<f64>,
    meta: &ChangeMeta,
) -> Result<PutOutcome> {
    let now_ms = now_millis();
    let now = now_ms / 1000;
    // An expired row still in the table (expiry runs once a second) is gone
    // as far as clients are concerned: this put creates anew.
    let previous = get_in(tx, kind, id)?;
    let create_time = previous.as_ref().map(|p| p.create_time).unwrap_or(now);
    // plugin_metadata has no timestamps in APISIX.
    if kind != Kind::PluginMetadata {
        if let Value::Object(obj) = &mut value {
            obj.insert("create_time".into(), create_time.into());
            obj.insert("update_time".into(), now.into());
        }
    }
    let rev = bump_revision(tx)?;
    let created_index = previous.as_ref().map(|p| p.created_index).unwrap_or(rev);
    let expires_at = ttl_secs.map(|t| now_ms + (t * 1000.0).round() as i64);
    tx.prepare_cached(
        "INSERT INTO resources (kind, id, value, created_index, modified_index, create_time, update_time, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (kind, id) DO UPDATE SET value = excluded.value, created_index = excluded.created_index,
           modified_index = excluded.modified_index, create_time = excluded.create_time,
           update_time = excluded.update_time, expires_at = excluded.expires_at",
    )?
    .execute(params![
        kind.as_str(),
        id,
        serde_json::to_string(&value)?,
        created_index as i64,
        rev as i64,
        create_time,
        now,
        expires_at
    ])?;
    record_change(
        tx,
        now,
        meta,
        kind,
        id,
        previous.as_ref().map(|p| &p.value),
        Some(&value),
    )?;
    Ok(PutOutcome {
        created: previous.is_none(),
        created_index,
        modified_index: rev,
    })
}

fn delete_in(tx: &Transaction<'_>, r: &StoredResource, time: i64, meta: &ChangeMeta) -> Result<()> {
    tx.prepare_cached("DELETE FROM resources WHERE kind = ?1 AND id = ?2")?
        .execute(params![r.kind.as_str(), r.id])?;
    // A delete is a revision too, as in etcd.
    bump_revision(tx)?;
    record_change(tx, time, meta, r.kind, &r.id, Some(&r.value), None)
}

fn record_change(
    tx: &Transaction<'_>,
    time: i64,
    meta: &ChangeMeta,
    kind: Kind,
    id: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Result<()> {
    let enc = |v: Option<&Value>| -> Result<Option<String>> {
        v.map(|v| serde_json::to_string(&secrets::masked(kind, v)))
            .transpose()
            .map_err(Into::into)
    };
    tx.prepare_cached(
        "INSERT INTO changes (time, actor, client, method, kind, id, before, after)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        time,
        meta.actor,
        meta.client,
        meta.method,
        kind.as_str(),
        id,
        enc(before)?,
        enc(after)?
    ])?;
    tracing::info!(
        actor = %meta.actor,
        client = %meta.client,
        method = %meta.method,
        kind = kind.as_str(),
        id,
        action = match (before, after) {
            (None, Some(_)) => "create",
            (Some(_), Some(_)) => "update",
            _ => "delete",
        },
        "configuration changed"
    );
    Ok(())
}

/// Changes the node makes outside the resource tables (quarantines, from
/// portcullis-audit), recorded in the same history.
impl Store {
    pub fn record_change(
        &self,
        kind: &str,
        id: &str,
        before: Option<&Value>,
        after: Option<&Value>,
        meta: &ChangeMeta,
    ) -> Result<()> {
        let enc = |v: Option<&Value>| v.map(serde_json::to_string).transpose();
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO changes (time, actor, client, method, kind, id, before, after)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            now_millis() / 1000,
            meta.actor,
            meta.client,
            meta.method,
            kind,
            id,
            enc(before)?,
            enc(after)?,
        ])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
