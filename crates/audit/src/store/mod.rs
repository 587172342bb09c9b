//! The audit file: an append-only SQLite file whose records form a hash
//! chain, written one batch per row (see [`layout`]).
//!
//! Each record's `hash = SHA-256(prev_hash || canonical(record))`, chained
//! across batches; `verify` names the record (and batch) that was changed,
//! removed or moved. Queries pick batches by time and by the distinct
//! values a batch lists in `audit_key`, then filter the batch's heads
//! without parsing JSON; JSON is read only for the records a page shows.
//!
//! - [`layout`]: the tables and the binary head of a record;
//! - [`append`]: the writer ([`Appender`]) and retention;
//! - [`verify`](mod@verify): the chain check;
//! - [`query`](mod@query): queries and summaries.

pub mod append;
pub mod layout;
pub mod query;
pub mod verify;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

pub use append::Appender;
pub use layout::{Fields, Hash, Head, Heads};
pub use query::{query, summary, Filter, GROUP_COLUMNS};
pub use verify::{verify, Problem, Verification};

use layout::TEXTS;

/// What reading or writing the audit file can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Column(#[from] rusqlite::types::FromSqlError),
    /// The file is not in this version's layout.
    #[error("{0}")]
    Layout(String),
    /// A batch's heads do not decode: the file was changed.
    #[error("audit batch {0} is damaged (its heads do not decode); run `portcullis audit verify`")]
    Damaged(i64),
}

/// One audit record before it is chained, with owned texts: what quarantine
/// steps and alerts are built as (requests go through
/// [`Pending::request`] instead, without owning anything but the bytes).
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Unix milliseconds.
    pub time: i64,
    /// `request`, `alert`, `quarantine.create`, `quarantine.lift`,
    /// `quarantine.expire`.
    pub event: std::borrow::Cow<'static, str>,
    pub consumer: Option<String>,
    pub credential: Option<String>,
    pub route: Option<String>,
    pub tier: Option<String>,
    pub status: u16,
    /// `allow`, `reject`, `would_reject`, `error`; for other events the
    /// action or detector.
    pub decision: std::borrow::Cow<'static, str>,
    /// The plugin that rejected, if one did.
    pub plugin: Option<std::borrow::Cow<'static, str>>,
    pub request_id: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub client: Option<String>,
    /// The decision record's JSON line, or the event's JSON.
    pub record: bytes::Bytes,
}

impl Row {
    /// The texts in head order.
    pub fn texts(&self) -> [Option<&str>; TEXTS] {
        [
            Some(&self.event),
            self.consumer.as_deref(),
            self.credential.as_deref(),
            self.route.as_deref(),
            self.tier.as_deref(),
            Some(&self.decision),
            self.plugin.as_deref(),
            self.request_id.as_deref(),
            self.method.as_deref(),
            self.path.as_deref(),
            self.client.as_deref(),
        ]
    }

    pub fn pending(&self) -> Pending {
        Pending::request(self.time, self.status, &self.texts(), self.record.clone())
    }
}

/// A record on its way to the writer: its head fields already encoded
/// (one allocation) and its JSON shared with the other sinks.
#[derive(Debug, Clone)]
pub struct Pending {
    fields: Vec<u8>,
    record: bytes::Bytes,
}

impl Pending {
    /// `texts` in head order (event, consumer, credential, route, tier,
    /// decision, plugin, request_id, method, path, client).
    pub fn request(
        time: i64,
        status: u16,
        texts: &[Option<&str>; TEXTS],
        record: bytes::Bytes,
    ) -> Pending {
        Pending {
            fields: layout::encode_fields(time, status, texts),
            record,
        }
    }

    pub fn fields(&self) -> Fields<'_> {
        Fields::decode(&self.fields).expect("encoded by Pending::request")
    }

    /// The JSON as stored: without the line's newline.
    pub fn json(&self) -> &[u8] {
        self.record.strip_suffix(b"\n").unwrap_or(&self.record)
    }
}

pub fn hex(h: &[u8]) -> String {
    portcullis_telemetry::record::Hex(h).to_string()
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|r| r.is_some())
}

/// The first layout wrote one row per record in a table named `audit`.
fn is_v1(conn: &Connection) -> rusqlite::Result<bool> {
    Ok(has_table(conn, "audit")? && !has_table(conn, "audit_batch")?)
}

fn v1_message(path: &Path) -> String {
    format!(
        "{} has the old audit layout (one row per record, portcullis.audit/v1), which this version does not read; \
         the gateway sets it aside as {}.v1-<time> when it starts (or move it away yourself)",
        path.display(),
        path.display()
    )
}

/// Open (or create) the audit file for writing. A file of the old layout
/// is set aside (renamed, never changed) and a new one started, with the
/// quarantines and profiles carried over.
pub fn open(path: &Path) -> Result<Connection, Error> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut aside = None;
    if is_v1(&conn)? {
        let to = set_aside(conn, path)?;
        conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        aside = Some(to);
    }
    // Takes effect only while the file is new.
    conn.pragma_update(None, "page_size", layout::PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Batches commit often; NORMAL under WAL loses at most the last
    // batches on power loss, never the file's consistency.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(layout::SCHEMA)?;
    conn.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('layout', ?1)",
        [layout::LAYOUT],
    )?;
    check_layout(&conn, path)?;
    if let Some(old) = aside {
        carry_over(&conn, &old)?;
    }
    Ok(conn)
}

/// Rename a v1 file to `<name>.v1-<unix ms>`, after folding its WAL into
/// it so the renamed file stands alone.
fn set_aside(conn: Connection, path: &Path) -> Result<std::path::PathBuf, Error> {
    let refuse = |why: String| Error::Layout(format!("{} ({why})", v1_message(path)));
    conn.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|e| {
            refuse(format!(
                "cannot set it aside: {e}; is another process using it?"
            ))
        })?;
    drop(conn);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".v1-{}", crate::time::now_ms()));
    let to = path.with_file_name(name);
    std::fs::rename(path, &to)
        .map_err(|e| refuse(format!("cannot rename it to {}: {e}", to.display())))?;
    tracing::warn!(
        old = %to.display(),
        file = %path.display(),
        "the audit file had the old layout (portcullis.audit/v1); it was set aside unchanged and a new chain started"
    );
    Ok(to)
}

fn carry_over(conn: &Connection, old: &Path) -> Result<(), Error> {
    conn.execute(
        "ATTACH DATABASE ?1 AS old",
        [old.to_string_lossy().as_ref()],
    )?;
    let copied = conn.execute_batch(
        "INSERT OR IGNORE INTO quarantines (id, spec, created_at, expires_at, ended_at, ended_by, end_reason)
             SELECT id, spec, created_at, expires_at, ended_at, ended_by, end_reason FROM old.quarantines;
         INSERT OR IGNORE INTO profiles (identity, state, updated)
             SELECT identity, state, updated FROM old.profiles;",
    );
    conn.execute("DETACH DATABASE old", [])?;
    if let Err(e) = copied {
        tracing::error!(error = %e, "quarantines and profiles could not be carried over from the old audit file");
    }
    Ok(())
}

fn check_layout(conn: &Connection, path: &Path) -> Result<(), Error> {
    if is_v1(conn)? {
        return Err(Error::Layout(v1_message(path)));
    }
    let layout: Option<String> = if has_table(conn, "meta")? {
        conn.query_row("SELECT value FROM meta WHERE key = 'layout'", [], |r| {
            r.get(0)
        })
        .optional()?
    } else {
        None
    };
    match layout.as_deref() {
        Some(layout::LAYOUT) | None => Ok(()),
        Some(other) => Err(Error::Layout(format!(
            "{} has audit layout {other}; this version reads {}",
            path.display(),
            layout::LAYOUT
        ))),
    }
}

/// Open the audit file for reading (queries, `verify`); works while the
/// gateway writes it. A file of the old layout is refused, untouched.
pub fn open_read(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    check_layout(&conn, path)?;
    Ok(conn)
}

/// Where the chain starts: the last record and batch retention removed
/// (0 for none) and that record's hash (zeros for none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Anchor {
    pub seq: i64,
    pub batch: i64,
    pub hash: Hash,
}

pub(crate) fn to_hash(v: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    if v.len() == 32 {
        h.copy_from_slice(v);
    }
    h
}

pub fn anchor(conn: &Connection) -> rusqlite::Result<Anchor> {
    let get = |key: &str| -> rusqlite::Result<Option<rusqlite::types::Value>> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
    };
    use rusqlite::types::Value as V;
    let int = |v: Option<V>| match v {
        Some(V::Integer(i)) => i,
        _ => 0,
    };
    Ok(Anchor {
        seq: int(get("anchor_seq")?),
        batch: int(get("anchor_batch")?),
        hash: match get("anchor_hash")? {
            Some(V::Blob(b)) => to_hash(&b),
            _ => [0; 32],
        },
    })
}

#[cfg(test)]
mod tests;
