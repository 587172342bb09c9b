//! `verify`: walk the batches in order, decode their heads, recompute every
//! record's hash from the one before it, and name the record (and batch)
//! that was changed, removed or moved.

use std::collections::HashMap;

use rusqlite::Connection;

use super::layout::{chain_hash, Hash, Head, Heads};
use super::{anchor, hex, Error};

/// What `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub ok: bool,
    /// Records read.
    pub rows: u64,
    pub batches: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub head_hash: Option<String>,
    /// The problems found, first first (at most 20).
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// The record number.
    pub seq: i64,
    /// The batch it was read from.
    pub batch: i64,
    pub what: String,
}

/// A record the next one chains to: its stored hash, and the hash its
/// content gives (they differ when its hash was rewritten).
#[derive(Clone, Copy)]
struct Link {
    seq: i64,
    stored: Hash,
    computed: Hash,
}

/// A record whose predecessor comes later in the file (batches moved):
/// checked when the predecessor is read.
struct Deferred {
    seq: i64,
    batch: i64,
    stored: Hash,
    hashed: Vec<u8>,
    json: Vec<u8>,
}

const MAX_PROBLEMS: usize = 20;

struct Walk {
    out: Verification,
    /// Record ranges each batch row claims (`first`, `first + count`), by
    /// batch: tells records moved later in the file from records removed.
    claims: Vec<(i64, i64, i64)>,
}

impl Walk {
    fn problem(&mut self, seq: i64, batch: i64, what: String) {
        if self.out.problems.len() < MAX_PROBLEMS {
            self.out.problems.push(Problem { seq, batch, what });
        }
    }

    /// Whether a batch after `batch` claims any record in `lo..hi`.
    fn later(&self, batch: i64, lo: i64, hi: i64) -> bool {
        self.claims
            .iter()
            .any(|&(b, first, end)| b > batch && first < hi && end > lo)
    }
}

/// Check `hashed`/`json` (record `seq`, stored hash `stored`) against the
/// record before it.
fn check(prev: &Link, stored: &Hash, hashed: &[u8], json: &[u8]) -> (Hash, Option<String>) {
    let computed = chain_hash(&prev.stored, hashed, json);
    if computed == *stored {
        return (computed, None);
    }
    if prev.computed != prev.stored {
        // The record before failed its own check.
        let what = if chain_hash(&prev.computed, hashed, json) == *stored {
            format!(
                "follows the original of record {}, whose stored hash was rewritten",
                prev.seq
            )
        } else {
            format!(
                "does not chain to record {}, which was changed or replaced",
                prev.seq
            )
        };
        return (computed, Some(what));
    }
    (
        computed,
        Some("content does not match its hash (the record was changed)".to_string()),
    )
}

/// Walk the whole chain from its anchor. Stops collecting after 20
/// problems (and keeps counting records).
pub fn verify(conn: &Connection) -> Result<Verification, Error> {
    let tx = conn.unchecked_transaction()?;
    let a = anchor(&tx)?;
    let claims: Vec<(i64, i64, i64)> = tx
        .prepare("SELECT seq, first, first + count FROM audit_batch ORDER BY seq")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut w = Walk {
        out: Verification {
            ok: true,
            rows: 0,
            batches: 0,
            first_seq: None,
            last_seq: None,
            head_hash: None,
            problems: Vec::new(),
        },
        claims,
    };
    let mut next_batch = a.batch + 1;
    let mut next = a.seq + 1;
    let mut prev = Link {
        seq: a.seq,
        stored: a.hash,
        computed: a.hash,
    };
    // The last record of each batch read, for records whose batch moved.
    let mut ends: HashMap<i64, Link> = HashMap::new();
    let mut waiting: HashMap<i64, Deferred> = HashMap::new();
    let mut stmt =
        tx.prepare("SELECT seq, first, count, heads, records FROM audit_batch ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let batch: i64 = row.get(0)?;
        let (first, count): (i64, i64) = (row.get(1)?, row.get(2)?);
        let heads = row.get_ref(3)?.as_blob()?;
        let records = row.get_ref(4)?.as_blob()?;
        w.out.batches += 1;
        let batch_gap = (batch > next_batch).then(|| (next_batch, batch - 1));
        next_batch = next_batch.max(batch + 1);
        let mut seen = 0i64;
        let mut first_seen = None;
        // This batch's record numbers and links, for records moved within it.
        let seqs: Vec<i64> = Heads::new(heads)
            .map_while(Result::ok)
            .map(|h| h.seq)
            .collect();
        let mut links: Vec<Link> = Vec::with_capacity(seqs.len());
        for h in Heads::new(heads) {
            let Ok(h) = h else {
                w.problem(
                    prev.seq + 1,
                    batch,
                    "the batch's heads do not decode (the batch was changed)".to_string(),
                );
                break;
            };
            seen += 1;
            let n = h.seq;
            first_seen.get_or_insert(n);
            w.out.rows += 1;
            w.out.first_seq.get_or_insert(n);
            w.out.last_seq = Some(w.out.last_seq.map_or(n, |l| l.max(n)));
            if let (Some((lo, hi)), 1) = (batch_gap, seen) {
                w.problem(
                    n,
                    batch,
                    format!("batches {lo}..{hi} are missing (removed)"),
                );
            }
            if n < next && prev.seq == n {
                w.problem(n, batch, "appears twice (a copy was added)".to_string());
            } else if n < next && prev.seq != n - 1 {
                // Reported once per run of moved records.
                w.problem(
                    n,
                    batch,
                    format!(
                        "out of order: it comes after record {} (batches or records were moved)",
                        next - 1
                    ),
                );
            } else if n > next {
                let here = seqs[seen as usize..].iter().any(|s| (next..n).contains(s));
                let what = if here || w.later(batch, next, n) {
                    format!(
                        "records {next}..{} come later in the file (batches or records were moved)",
                        n - 1
                    )
                } else {
                    format!("records {next}..{} are missing (removed)", n - 1)
                };
                w.problem(n, batch, what);
            }
            next = next.max(n + 1);
            let ahead = seqs[seen as usize..].contains(&(n - 1));
            let before = if prev.seq == n - 1 {
                Some(prev)
            } else {
                links
                    .iter()
                    .rev()
                    .find(|l| l.seq == n - 1)
                    .or_else(|| ends.get(&(n - 1)))
                    .copied()
            };
            prev = link(&h, records, before, ahead, batch, &mut w, &mut waiting);
            links.push(prev);
            if let Some(d) = waiting.remove(&n) {
                if let (_, Some(what)) = check(&prev, &d.stored, &d.hashed, &d.json) {
                    w.problem(d.seq, d.batch, what);
                }
            }
            w.out.head_hash = Some(hex(h.hash));
        }
        ends.insert(prev.seq, prev);
        if seen != count || first_seen.is_some_and(|f| f != first) {
            w.problem(
                first_seen.unwrap_or(first),
                batch,
                format!(
                    "the batch row says records {first}..{}, its heads hold {seen} from {} (the batch was changed)",
                    first + count - 1,
                    first_seen.map_or("-".to_string(), |f| f.to_string()),
                ),
            );
        }
    }
    // Records still waiting for a predecessor that never came were
    // reported as a gap already.
    let mut out = w.out;
    out.ok = out.problems.is_empty();
    Ok(out)
}

/// Chain record `h` to its predecessor `before` (when already read) and
/// report a mismatch; when the predecessor is still to come (`ahead` in
/// this batch, or in a later one), check it then.
fn link(
    h: &Head<'_>,
    records: &[u8],
    before: Option<Link>,
    ahead: bool,
    batch: i64,
    w: &mut Walk,
    waiting: &mut HashMap<i64, Deferred>,
) -> Link {
    let n = h.seq;
    let Some(json) = h.json(records) else {
        w.problem(
            n,
            batch,
            "its JSON lies outside the batch's records (the batch was changed)".to_string(),
        );
        return Link {
            seq: n,
            stored: *h.hash,
            computed: *h.hash,
        };
    };
    let computed = match before {
        Some(p) => {
            let (computed, what) = check(&p, h.hash, h.hashed, json);
            if let Some(what) = what {
                w.problem(n, batch, what);
            }
            computed
        }
        None => {
            if ahead || w.later(batch, n - 1, n) {
                waiting.insert(
                    n - 1,
                    Deferred {
                        seq: n,
                        batch,
                        stored: *h.hash,
                        hashed: h.hashed.to_vec(),
                        json: json.to_vec(),
                    },
                );
            }
            // Otherwise its predecessor is gone (reported as a gap): the
            // chain resumes from the stored hash.
            *h.hash
        }
    };
    Link {
        seq: n,
        stored: *h.hash,
        computed,
    }
}
