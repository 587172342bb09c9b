//! The audit file: an append-only SQLite table whose rows form a hash chain.
//!
//! Row `seq` carries `prev_hash` (the `hash` of row `seq - 1`, or the
//! anchor's after retention removed older rows, or 32 zero bytes for the
//! first row ever) and `hash = SHA-256(prev_hash || canonical(row))`, where
//! `canonical` is every column but the two hashes, each length-prefixed, in
//! a fixed order (see [`canonical`]). Changing a column, removing a row or
//! swapping two rows breaks the chain at that row, and `verify` names it.

use std::borrow::Cow;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::time;

pub type Hash = [u8; 32];

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    event TEXT NOT NULL,
    consumer TEXT,
    credential TEXT,
    route TEXT,
    tier TEXT,
    status INTEGER NOT NULL,
    decision TEXT NOT NULL,
    plugin TEXT,
    request_id TEXT,
    method TEXT,
    path TEXT,
    client TEXT,
    record TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (time);
CREATE INDEX IF NOT EXISTS audit_by_consumer ON audit (consumer, time);
CREATE INDEX IF NOT EXISTS audit_by_route ON audit (route, time);
CREATE INDEX IF NOT EXISTS audit_by_decision ON audit (decision, time);
CREATE INDEX IF NOT EXISTS audit_by_request_id ON audit (request_id) WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS quarantines (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    ended_at INTEGER,
    ended_by TEXT,
    end_reason TEXT
);
CREATE TABLE IF NOT EXISTS profiles (
    identity TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated INTEGER NOT NULL
);
";

/// One audit row before it is chained.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Unix milliseconds.
    pub time: i64,
    /// `request`, `alert`, `quarantine.create`, `quarantine.lift`,
    /// `quarantine.expire`.
    pub event: Cow<'static, str>,
    pub consumer: Option<String>,
    pub credential: Option<String>,
    pub route: Option<String>,
    pub tier: Option<String>,
    pub status: u16,
    /// `allow`, `reject`, `would_reject`, `error`; for other events the
    /// action or detector.
    pub decision: Cow<'static, str>,
    /// The plugin that rejected, if one did.
    pub plugin: Option<Cow<'static, str>>,
    pub request_id: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub client: Option<String>,
    /// The decision record's JSON line, or the event's JSON.
    pub record: bytes::Bytes,
}

fn put(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.extend_from_slice(&u32::MAX.to_be_bytes()),
        Some(s) => {
            buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// The bytes a row's hash covers (besides `prev_hash`): seq, time, status
/// as 8-byte big-endian integers, then event, consumer, credential, route,
/// tier, decision, plugin, request_id, method, path, client, record, each
/// as a 4-byte big-endian length (`0xFFFFFFFF` for null) and the bytes.
#[allow(clippy::too_many_arguments)]
pub fn canonical(seq: i64, r: &RowRef<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256 + r.record.len());
    buf.extend_from_slice(b"portcullis.audit/v1\n");
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&r.time.to_be_bytes());
    buf.extend_from_slice(&r.status.to_be_bytes());
    for f in [
        Some(r.event),
        r.consumer,
        r.credential,
        r.route,
        r.tier,
        Some(r.decision),
        r.plugin,
        r.request_id,
        r.method,
        r.path,
        r.client,
    ] {
        put(&mut buf, f);
    }
    buf.extend_from_slice(&(r.record.len() as u32).to_be_bytes());
    buf.extend_from_slice(r.record);
    buf
}

/// A row's columns, borrowed: what [`canonical`] hashes.
pub struct RowRef<'a> {
    pub time: i64,
    pub event: &'a str,
    pub consumer: Option<&'a str>,
    pub credential: Option<&'a str>,
    pub route: Option<&'a str>,
    pub tier: Option<&'a str>,
    pub status: i64,
    pub decision: &'a str,
    pub plugin: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub client: Option<&'a str>,
    pub record: &'a [u8],
}

impl Row {
    pub fn as_ref(&self) -> RowRef<'_> {
        RowRef {
            time: self.time,
            event: &self.event,
            consumer: self.consumer.as_deref(),
            credential: self.credential.as_deref(),
            route: self.route.as_deref(),
            tier: self.tier.as_deref(),
            status: self.status as i64,
            decision: &self.decision,
            plugin: self.plugin.as_deref(),
            request_id: self.request_id.as_deref(),
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            client: self.client.as_deref(),
            record: &self.record,
        }
    }
}

pub fn chain_hash(prev: &Hash, seq: i64, r: &RowRef<'_>) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical(seq, r));
    h.finalize().into()
}

pub fn hex(h: &[u8]) -> String {
    portcullis_telemetry::record::Hex(h).to_string()
}

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Batches commit often; NORMAL under WAL loses at most the last
    // batches on power loss, never the file's consistency.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

pub fn open_read(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// The appending side: the chain's head and the connection.
pub struct Appender {
    pub conn: Connection,
    pub last_seq: i64,
    pub last_hash: Hash,
}

impl Appender {
    pub fn new(conn: Connection) -> rusqlite::Result<Appender> {
        let head: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (last_seq, last_hash) = match head {
            Some((seq, h)) => (seq, to_hash(&h)),
            None => anchor(&conn)?,
        };
        Ok(Appender {
            conn,
            last_seq,
            last_hash,
        })
    }

    /// Append rows in one transaction. On failure nothing is appended and
    /// the head is unchanged.
    pub fn append(&mut self, rows: &[Row]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        let (mut seq, mut prev) = (self.last_seq, self.last_hash);
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO audit (seq, time, event, consumer, credential, route, tier, status, decision, plugin, request_id, method, path, client, record, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )?;
            for row in rows {
                seq += 1;
                // Stored as text (sqlite3 and jq users can read it), without
                // the line's newline; the hash covers exactly what is stored.
                let text = std::str::from_utf8(&row.record).unwrap_or("{}").trim_end();
                let mut r = row.as_ref();
                r.record = text.as_bytes();
                let hash = chain_hash(&prev, seq, &r);
                stmt.execute(params![
                    seq,
                    r.time,
                    r.event,
                    r.consumer,
                    r.credential,
                    r.route,
                    r.tier,
                    r.status,
                    r.decision,
                    r.plugin,
                    r.request_id,
                    r.method,
                    r.path,
                    r.client,
                    text,
                    &prev[..],
                    &hash[..],
                ])?;
                prev = hash;
            }
        }
        tx.commit()?;
        self.last_seq = seq;
        self.last_hash = prev;
        Ok(())
    }

    /// Drop rows older than `max_age_ms`, beyond `max_records`, or while the
    /// file's used pages exceed `max_bytes`; the anchor moves to the last
    /// removed row so `verify` still checks from there. Returns rows removed.
    pub fn retain(
        &mut self,
        max_age_ms: i64,
        max_records: u64,
        max_bytes: u64,
    ) -> rusqlite::Result<u64> {
        let mut cut: Option<i64> = None;
        if max_age_ms > 0 {
            let before = time::now_ms() - max_age_ms;
            let s: Option<i64> = self.conn.query_row(
                "SELECT MAX(seq) FROM audit WHERE time < ?1",
                params![before],
                |r| r.get(0),
            )?;
            cut = cut.max(s);
        }
        if max_records > 0 && self.last_seq > max_records as i64 {
            cut = cut.max(Some(self.last_seq - max_records as i64));
        }
        if max_bytes > 0 {
            let used: i64 = self.conn.query_row(
                "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())",
                [],
                |r| r.get(0),
            )?;
            let page: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            if (used * page) as u64 > max_bytes {
                // Remove the oldest tenth; the next round checks again.
                let (lo, n): (Option<i64>, i64) =
                    self.conn
                        .query_row("SELECT MIN(seq), COUNT(*) FROM audit", [], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?;
                if let Some(lo) = lo {
                    cut = cut.max(Some(lo + (n / 10).max(1) - 1));
                }
            }
        }
        let Some(cut) = cut else { return Ok(0) };
        let tx = self.conn.transaction()?;
        let anchor_hash: Option<Vec<u8>> = tx
            .query_row("SELECT hash FROM audit WHERE seq = ?1", params![cut], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(anchor_hash) = anchor_hash else {
            return Ok(0);
        };
        let n = tx.execute("DELETE FROM audit WHERE seq <= ?1", params![cut])?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('anchor_seq', ?1), ('anchor_hash', ?2)",
            params![cut, anchor_hash],
        )?;
        tx.commit()?;
        Ok(n as u64)
    }
}

fn to_hash(v: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    if v.len() == 32 {
        h.copy_from_slice(v);
    }
    h
}

/// Where the chain starts: (seq before the first kept row, its hash).
fn anchor(conn: &Connection) -> rusqlite::Result<(i64, Hash)> {
    let seq: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'anchor_seq'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let hash: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'anchor_hash'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok((
        seq.unwrap_or(0),
        hash.map(|h| to_hash(&h)).unwrap_or([0; 32]),
    ))
}

/// What `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub ok: bool,
    pub rows: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub head_hash: Option<String>,
    /// The first broken row and why.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub seq: i64,
    pub what: String,
}

/// Walk the whole chain from its anchor. Stops collecting after 20
/// problems.
pub fn verify(conn: &Connection) -> rusqlite::Result<Verification> {
    let (anchor_seq, anchor_hash) = anchor(conn)?;
    let mut stmt = conn.prepare(
        "SELECT seq, time, event, consumer, credential, route, tier, status, decision, plugin, request_id, method, path, client, record, prev_hash, hash
         FROM audit ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Verification {
        ok: true,
        rows: 0,
        first_seq: None,
        last_seq: None,
        head_hash: None,
        problems: Vec::new(),
    };
    let mut expect_seq = anchor_seq + 1;
    let mut expect_prev = anchor_hash;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let record: String = row.get(14)?;
        let prev_hash: Vec<u8> = row.get(15)?;
        let hash: Vec<u8> = row.get(16)?;
        let (event, decision): (String, String) = (row.get(2)?, row.get(8)?);
        let strs: Vec<Option<String>> = [3, 4, 5, 6, 9, 10, 11, 12, 13]
            .iter()
            .map(|&i| row.get(i))
            .collect::<rusqlite::Result<_>>()?;
        let r = RowRef {
            time: row.get(1)?,
            event: &event,
            consumer: strs[0].as_deref(),
            credential: strs[1].as_deref(),
            route: strs[2].as_deref(),
            tier: strs[3].as_deref(),
            status: row.get(7)?,
            decision: &decision,
            plugin: strs[4].as_deref(),
            request_id: strs[5].as_deref(),
            method: strs[6].as_deref(),
            path: strs[7].as_deref(),
            client: strs[8].as_deref(),
            record: record.as_bytes(),
        };
        out.rows += 1;
        out.first_seq.get_or_insert(seq);
        out.last_seq = Some(seq);
        let mut problem = |what: String| {
            if out.problems.len() < 20 {
                out.problems.push(Problem { seq, what });
            }
        };
        if seq != expect_seq {
            problem(if seq > expect_seq {
                format!("rows {expect_seq}..{} are missing (removed)", seq - 1)
            } else {
                format!("out of order: expected row {expect_seq}")
            });
        }
        if prev_hash[..] != expect_prev[..] {
            problem(
                "prev_hash does not match the hash of the row before it (a row was removed, reordered or its hash rewritten)"
                    .to_string(),
            );
        }
        let computed = chain_hash(&to_hash(&prev_hash), seq, &r);
        if computed[..] != hash[..] {
            problem("content does not match its hash (the row was changed)".to_string());
        }
        expect_seq = seq + 1;
        expect_prev = to_hash(&hash);
        out.head_hash = Some(hex(&hash));
    }
    out.ok = out.problems.is_empty();
    Ok(out)
}

/// Query filters. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub consumer: Option<String>,
    pub route: Option<String>,
    pub tier: Option<String>,
    /// An exact status (`403`) or a class (`4xx`).
    pub status: Option<String>,
    pub decision: Option<String>,
    pub event: Option<String>,
    pub request_id: Option<String>,
    /// Unix ms, inclusive.
    pub from: Option<i64>,
    /// Unix ms, exclusive.
    pub to: Option<i64>,
    pub limit: usize,
    /// `time:seq` of the last row of the previous page.
    pub cursor: Option<(i64, i64)>,
}

impl Filter {
    /// Build from query arguments (`consumer`, `route`, `tier`, `status`,
    /// `decision`, `event`, `request_id`, `from`, `to`, `limit`, `cursor`).
    pub fn from_args(get: impl Fn(&str) -> Option<String>) -> Result<Filter, String> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let mut f = Filter {
            consumer: nonempty("consumer"),
            route: nonempty("route"),
            tier: nonempty("tier"),
            status: nonempty("status"),
            decision: nonempty("decision"),
            event: nonempty("event"),
            request_id: nonempty("request_id"),
            from: nonempty("from").map(|v| time::parse(&v)).transpose()?,
            to: nonempty("to").map(|v| time::parse(&v)).transpose()?,
            limit: 100,
            cursor: None,
        };
        if let Some(s) = &f.status {
            let ok = s.parse::<u16>().is_ok()
                || (s.len() == 3 && s.ends_with("xx") && s.as_bytes()[0].is_ascii_digit());
            if !ok {
                return Err(format!(
                    "invalid status \"{s}\": a code (403) or a class (4xx)"
                ));
            }
        }
        if let Some(l) = nonempty("limit") {
            f.limit = l
                .parse::<usize>()
                .map_err(|_| format!("invalid limit \"{l}\""))?
                .clamp(1, 10_000);
        }
        if let Some(c) = nonempty("cursor") {
            let (t, s) = c
                .split_once(':')
                .ok_or_else(|| format!("invalid cursor \"{c}\""))?;
            f.cursor = Some((
                t.parse().map_err(|_| format!("invalid cursor \"{c}\""))?,
                s.parse().map_err(|_| format!("invalid cursor \"{c}\""))?,
            ));
        }
        Ok(f)
    }

    fn where_clause(&self, args: &mut Vec<rusqlite::types::Value>, with_cursor: bool) -> String {
        use rusqlite::types::Value as V;
        let mut sql = String::from(" WHERE 1=1");
        let mut eq = |col: &str, v: &Option<String>, sql: &mut String| {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                args.push(V::Text(v.clone()));
            }
        };
        eq("consumer", &self.consumer, &mut sql);
        eq("route", &self.route, &mut sql);
        eq("tier", &self.tier, &mut sql);
        eq("decision", &self.decision, &mut sql);
        eq("event", &self.event, &mut sql);
        eq("request_id", &self.request_id, &mut sql);
        if let Some(s) = &self.status {
            if let Ok(code) = s.parse::<i64>() {
                sql.push_str(" AND status = ?");
                args.push(V::Integer(code));
            } else {
                let class = (s.as_bytes()[0] - b'0') as i64 * 100;
                sql.push_str(" AND status >= ? AND status < ?");
                args.push(V::Integer(class));
                args.push(V::Integer(class + 100));
            }
        }
        if let Some(from) = self.from {
            sql.push_str(" AND time >= ?");
            args.push(V::Integer(from));
        }
        if let Some(to) = self.to {
            sql.push_str(" AND time < ?");
            args.push(V::Integer(to));
        }
        if let (true, Some((t, s))) = (with_cursor, self.cursor) {
            sql.push_str(" AND (time < ? OR (time = ? AND seq < ?))");
            args.push(V::Integer(t));
            args.push(V::Integer(t));
            args.push(V::Integer(s));
        }
        sql
    }
}

/// `{"total": N, "list": [...], "next_cursor": "time:seq" | null}`, newest
/// first.
pub fn query(conn: &Connection, f: &Filter) -> rusqlite::Result<Value> {
    let mut args = Vec::new();
    let w = f.where_clause(&mut args, false);
    let total: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM audit{w}"),
        rusqlite::params_from_iter(args.iter()),
        |r| r.get(0),
    )?;
    let mut args = Vec::new();
    let w = f.where_clause(&mut args, true);
    let sql = format!(
        "SELECT seq, time, event, consumer, credential, route, tier, status, decision, plugin, request_id, method, path, client, record, hash
         FROM audit{w} ORDER BY time DESC, seq DESC LIMIT {}",
        f.limit + 1
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
    let mut list = Vec::new();
    let mut last = None;
    let mut more = false;
    while let Some(row) = rows.next()? {
        if list.len() == f.limit {
            more = true;
            break;
        }
        let seq: i64 = row.get(0)?;
        let t: i64 = row.get(1)?;
        let record: String = row.get(14)?;
        let hash: Vec<u8> = row.get(15)?;
        let mut m = Map::new();
        m.insert("seq".into(), json!(seq));
        m.insert("time".into(), json!(time::format(t)));
        let names = [
            (2, "event"),
            (3, "consumer"),
            (4, "credential"),
            (5, "route"),
            (6, "tier"),
        ];
        for (i, n) in names {
            m.insert(n.into(), json!(row.get::<_, Option<String>>(i)?));
        }
        m.insert("status".into(), json!(row.get::<_, i64>(7)?));
        for (i, n) in [
            (8, "decision"),
            (9, "plugin"),
            (10, "request_id"),
            (11, "method"),
            (12, "path"),
            (13, "client"),
        ] {
            m.insert(n.into(), json!(row.get::<_, Option<String>>(i)?));
        }
        m.insert(
            "record".into(),
            serde_json::from_str(&record).unwrap_or(Value::String(record)),
        );
        m.insert("hash".into(), json!(hex(&hash)));
        list.push(Value::Object(m));
        last = Some((t, seq));
    }
    let next_cursor = match (more, last) {
        (true, Some((t, s))) => json!(format!("{t}:{s}")),
        _ => Value::Null,
    };
    Ok(json!({"total": total, "list": list, "next_cursor": next_cursor}))
}

pub const GROUP_COLUMNS: &[&str] = &[
    "consumer", "route", "tier", "event", "status", "client", "method",
];

/// Counts by outcome per group: `{"total": N, "groups": [{"consumer":
/// ..., "route": ..., "total": n, "allow": a, "reject": r, "would_reject":
/// w, "error": e, "statuses": {"200": ...}}]}`.
pub fn summary(conn: &Connection, f: &Filter, group_by: &[String]) -> Result<Value, String> {
    for g in group_by {
        if !GROUP_COLUMNS.contains(&g.as_str()) {
            return Err(format!(
                "invalid group_by \"{g}\" (any of {})",
                GROUP_COLUMNS.join(", ")
            ));
        }
    }
    let mut args = Vec::new();
    let w = f.where_clause(&mut args, false);
    let cols: String = group_by.iter().map(|g| format!("{g}, ")).collect();
    let group = if group_by.is_empty() {
        String::from("decision, status")
    } else {
        format!("{}, decision, status", group_by.join(", "))
    };
    let sql = format!(
        "SELECT {cols}decision, status, COUNT(*) FROM audit{w} GROUP BY {group} ORDER BY {group}"
    );
    let run = || -> rusqlite::Result<Value> {
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args.iter()))?;
        let mut groups: Vec<(Vec<Value>, Map<String, Value>)> = Vec::new();
        let mut total = 0i64;
        let n = group_by.len();
        while let Some(row) = rows.next()? {
            let key: Vec<Value> = (0..n)
                .map(|i| {
                    row.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                        rusqlite::types::Value::Integer(i) => json!(i),
                        rusqlite::types::Value::Text(t) => json!(t),
                        _ => Value::Null,
                    })
                })
                .collect::<rusqlite::Result<_>>()?;
            let decision: String = row.get(n)?;
            let status: i64 = row.get(n + 1)?;
            let count: i64 = row.get(n + 2)?;
            total += count;
            if groups.last().is_none_or(|(k, _)| *k != key) {
                let mut m = Map::new();
                for (g, v) in group_by.iter().zip(&key) {
                    m.insert(g.clone(), v.clone());
                }
                m.insert("total".into(), json!(0));
                for o in ["allow", "reject", "would_reject", "error"] {
                    m.insert(o.into(), json!(0));
                }
                m.insert("statuses".into(), json!({}));
                groups.push((key, m));
            }
            let m = &mut groups.last_mut().expect("pushed").1;
            let bump = |m: &mut Map<String, Value>, k: &str, by: i64| {
                let v = m.get(k).and_then(Value::as_i64).unwrap_or(0);
                m.insert(k.to_string(), json!(v + by));
            };
            bump(m, "total", count);
            bump(m, &decision, count);
            if let Some(Value::Object(st)) = m.get_mut("statuses") {
                bump(st, &status.to_string(), count);
            }
        }
        Ok(json!({
            "total": total,
            "group_by": group_by,
            "groups": groups.into_iter().map(|(_, m)| Value::Object(m)).collect::<Vec<_>>(),
        }))
    };
    run().map_err(|e| e.to_string())
}
