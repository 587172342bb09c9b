//! The appending side: batches of pending records become one `audit_batch`
//! row each (plus their `audit_key` rows), chained record by record, in
//! one transaction; and retention, which removes whole batches from the
//! start and moves the anchor.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::layout::{self, Fields, Hash, Heads, KEYED};
use super::{anchor, Error, Pending, Row};
use crate::time;

/// A batch row's `records` stays below this; a larger flush becomes
/// several batches (in the same transaction).
const MAX_BATCH_BYTES: usize = 64 << 20;

/// The writer: the connection, the chain's head, and buffers reused from
/// batch to batch.
pub struct Appender {
    pub conn: Connection,
    /// The last record number written.
    pub last_seq: i64,
    pub last_hash: Hash,
    /// The last batch number written.
    pub last_batch: i64,
    heads: Vec<u8>,
    records: Vec<u8>,
    keys: HashMap<Vec<u8>, i64, BuildFx>,
    key: Vec<u8>,
}

/// The state one batch's rows are built from.
struct Building {
    batch: i64,
    first: i64,
    count: i64,
    time_min: i64,
    time_max: i64,
}

impl Appender {
    pub fn new(conn: Connection) -> Result<Appender, Error> {
        let last: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT seq, heads FROM audit_batch ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (last_seq, last_hash, last_batch) = match last {
            Some((batch, heads)) => {
                let mut tail = None;
                for h in Heads::new(&heads) {
                    let h = h.map_err(|_| Error::Damaged(batch))?;
                    tail = Some((h.seq, *h.hash));
                }
                let (seq, hash) = tail.ok_or(Error::Damaged(batch))?;
                (seq, hash, batch)
            }
            None => {
                let a = anchor(&conn)?;
                (a.seq, a.hash, a.batch)
            }
        };
        Ok(Appender {
            conn,
            last_seq,
            last_hash,
            last_batch,
            heads: Vec::new(),
            records: Vec::new(),
            keys: HashMap::default(),
            key: Vec::new(),
        })
    }

    /// Append owned rows (quarantine steps, alerts) as one batch.
    pub fn append_rows(&mut self, rows: &[Row]) -> Result<(), Error> {
        let pending: Vec<Pending> = rows.iter().map(Row::pending).collect();
        self.append(&pending, |_| {})
    }

    /// Append `batch` as one batch row (several when its JSON exceeds 64
    /// MiB) in one transaction, calling `each` with every record's fields.
    /// On failure nothing is appended and the head is unchanged.
    pub fn append(
        &mut self,
        batch: &[Pending],
        mut each: impl FnMut(&Fields<'_>),
    ) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        let (mut seq, mut prev, mut batch_no) = (self.last_seq, self.last_hash, self.last_batch);
        self.heads.clear();
        self.records.clear();
        self.keys.clear();
        let mut b: Option<Building> = None;
        for p in batch {
            let json = p.json();
            if b.is_some() && self.records.len() + json.len() > MAX_BATCH_BYTES {
                let done = b.take().expect("checked");
                write_batch(&tx, &done, &self.heads, &self.records, &mut self.keys)?;
                self.heads.clear();
                self.records.clear();
            }
            let f = p.fields();
            seq += 1;
            let cur = b.get_or_insert_with(|| {
                batch_no += 1;
                Building {
                    batch: batch_no,
                    first: seq,
                    count: 0,
                    time_min: f.time,
                    time_max: f.time,
                }
            });
            cur.count += 1;
            cur.time_min = cur.time_min.min(f.time);
            cur.time_max = cur.time_max.max(f.time);
            let off = self.records.len() as u32;
            self.records.extend_from_slice(json);
            prev = layout::push_head(&mut self.heads, &prev, seq, &p.fields, off, json);
            for (i, prefix) in KEYED {
                if let Some(v) = f.get(i) {
                    layout::key(prefix, v, &mut self.key);
                    match self.keys.get_mut(self.key.as_slice()) {
                        Some(n) => *n += 1,
                        None => {
                            self.keys.insert(self.key.clone(), 1);
                        }
                    }
                }
            }
            each(&f);
        }
        if let Some(done) = b {
            write_batch(&tx, &done, &self.heads, &self.records, &mut self.keys)?;
        }
        tx.commit()?;
        self.last_seq = seq;
        self.last_hash = prev;
        self.last_batch = batch_no;
        // A rare huge flush should not keep its buffers for ever.
        if self.records.capacity() > 4 * MAX_BATCH_BYTES / 16 {
            self.records = Vec::new();
            self.heads = Vec::new();
        }
        Ok(())
    }

    /// Drop batches older than `max_age_ms` (by their newest record),
    /// beyond `max_records`, or while the file's used pages exceed
    /// `max_bytes`, always from the start of the chain; the anchor moves to
    /// the last removed record so `verify` still checks from there.
    /// Returns records removed.
    pub fn retain(
        &mut self,
        max_age_ms: i64,
        max_records: u64,
        max_bytes: u64,
    ) -> Result<u64, Error> {
        let mut cut: Option<i64> = None;
        if max_age_ms > 0 {
            let before = time::now_ms() - max_age_ms;
            let s: Option<i64> = self.conn.query_row(
                "SELECT MAX(seq) FROM audit_batch WHERE time_max < ?1",
                params![before],
                |r| r.get(0),
            )?;
            cut = cut.max(s);
        }
        if max_records > 0 && self.last_seq > max_records as i64 {
            // Whole batches: up to a batch more than max_records stays.
            let s: Option<i64> = self.conn.query_row(
                "SELECT MAX(seq) FROM audit_batch WHERE first + count - 1 <= ?1",
                params![self.last_seq - max_records as i64],
                |r| r.get(0),
            )?;
            cut = cut.max(s);
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
                        .query_row("SELECT MIN(seq), COUNT(*) FROM audit_batch", [], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })?;
                if let Some(lo) = lo {
                    cut = cut.max(Some(lo + (n / 10).max(1) - 1));
                }
            }
        }
        let Some(cut) = cut else { return Ok(0) };
        let tx = self.conn.transaction()?;
        let last: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT seq, heads FROM audit_batch WHERE seq <= ?1 ORDER BY seq DESC LIMIT 1",
                params![cut],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((batch, heads)) = last else {
            return Ok(0);
        };
        let mut tail = None;
        for h in Heads::new(&heads) {
            let h = h.map_err(|_| Error::Damaged(batch))?;
            tail = Some((h.seq, *h.hash));
        }
        let (anchor_seq, anchor_hash) = tail.ok_or(Error::Damaged(batch))?;
        let removed: i64 = tx.query_row(
            "SELECT COALESCE(SUM(count), 0) FROM audit_batch WHERE seq <= ?1",
            params![batch],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM audit_batch WHERE seq <= ?1", params![batch])?;
        tx.execute("DELETE FROM audit_key WHERE batch <= ?1", params![batch])?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('anchor_seq', ?1), ('anchor_hash', ?2), ('anchor_batch', ?3)",
            params![anchor_seq, &anchor_hash[..], batch],
        )?;
        tx.commit()?;
        Ok(removed as u64)
    }
}

fn write_batch(
    tx: &rusqlite::Transaction<'_>,
    b: &Building,
    heads: &[u8],
    records: &[u8],
    keys: &mut HashMap<Vec<u8>, i64, BuildFx>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit_batch (seq, first, count, time_min, time_max, heads, records) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        b.batch, b.first, b.count, b.time_min, b.time_max, heads, records
    ])?;
    let mut stmt =
        tx.prepare_cached("INSERT INTO audit_key (key, batch, count) VALUES (?1, ?2, ?3)")?;
    for (k, n) in keys.drain() {
        stmt.execute(params![String::from_utf8_lossy(&k), b.batch, n])?;
    }
    Ok(())
}

/// A fast hash for short keys the gateway's configuration names (consumer,
/// route, tier, decision, event): nobody outside chooses them.
#[derive(Default, Clone, Copy)]
pub struct BuildFx;

impl std::hash::BuildHasher for BuildFx {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx(0)
    }
}

/// FxHash (rustc's): a rotate, xor and multiply per word.
pub struct Fx(u64);

impl Fx {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
