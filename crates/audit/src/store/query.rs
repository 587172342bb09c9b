//! Queries and summaries over the batches.
//!
//! A query picks the batches whose time range meets the window
//! (`time_max >= from`, `time_min < to`, from the covering index) and, for
//! each of consumer, route, tier, decision and event it filters on, that
//! list the value in `audit_key`; then it decodes those batches' heads and
//! filters record by record. Pages are newest first (time, then record
//! number): batches are read by their newest record, and reading stops
//! once no batch left can hold a record of the page. The total comes from
//! the `audit_key` counts for batches wholly inside the window when at most
//! one keyed text is filtered on and neither status nor request id is;
//! otherwise every chosen batch is read. A `request_id` filter alone reads
//! every batch (it is not keyed): give it a time window to stay cheap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use rusqlite::{params, Connection};
use serde_json::{json, Map, Value};

use super::append::BuildFx;
use super::layout::{self, Fields, Heads, KEYED, TEXT_NAMES};
use super::{hex, Error};
use crate::time;

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
    /// `time:seq` of the last record of the previous page.
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

    /// The keyed texts filtered on: (text index, key prefix, value).
    fn keyed(&self) -> Vec<(usize, u8, &str)> {
        KEYED
            .iter()
            .filter_map(|&(i, prefix)| {
                let v = match i {
                    layout::CONSUMER => &self.consumer,
                    layout::ROUTE => &self.route,
                    layout::TIER => &self.tier,
                    layout::DECISION => &self.decision,
                    _ => &self.event,
                };
                v.as_deref().map(|v| (i, prefix, v))
            })
            .collect()
    }

    fn matcher(&self) -> Matcher<'_> {
        let status = self.status.as_deref().map(|s| match s.parse::<u16>() {
            Ok(code) => (code, code + 1),
            Err(_) => {
                let class = (s.as_bytes()[0] - b'0') as u16 * 100;
                (class, class + 100)
            }
        });
        Matcher {
            texts: self
                .keyed()
                .into_iter()
                .map(|(i, _, v)| (i, v.as_bytes()))
                .chain(
                    self.request_id
                        .as_deref()
                        .map(|v| (layout::REQUEST_ID, v.as_bytes())),
                )
                .collect(),
            status,
            from: self.from.unwrap_or(i64::MIN),
            to: self.to.unwrap_or(i64::MAX),
        }
    }
}

/// The per-record test.
struct Matcher<'f> {
    texts: Vec<(usize, &'f [u8])>,
    /// `lo..hi`.
    status: Option<(u16, u16)>,
    from: i64,
    to: i64,
}

impl Matcher<'_> {
    #[inline]
    fn matches(&self, f: &Fields<'_>) -> bool {
        f.time >= self.from
            && f.time < self.to
            && self
                .status
                .is_none_or(|(lo, hi)| f.status >= lo && f.status < hi)
            && self.texts.iter().all(|&(i, v)| f.get(i) == Some(v))
    }
}

/// A batch a query reads or counts.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    seq: i64,
    count: i64,
    time_min: i64,
    time_max: i64,
    /// Records with the one keyed value filtered on, from `audit_key`.
    keyed_count: Option<i64>,
}

/// The batches meeting the window and listing every keyed value filtered
/// on, newest (by their newest record) first.
fn candidates(conn: &Connection, f: &Filter) -> rusqlite::Result<Vec<Candidate>> {
    let from = f.from.unwrap_or(i64::MIN);
    let to = f.to.unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT seq, count, time_min, time_max FROM audit_batch
         WHERE time_max >= ?1 AND time_min < ?2 ORDER BY time_max DESC, seq DESC",
    )?;
    let mut list: Vec<Candidate> = stmt
        .query_map(params![from, to], |r| {
            Ok(Candidate {
                seq: r.get(0)?,
                count: r.get(1)?,
                time_min: r.get(2)?,
                time_max: r.get(3)?,
                keyed_count: None,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let keyed = f.keyed();
    if keyed.is_empty() || list.is_empty() {
        return Ok(list);
    }
    let (lo, hi) = list.iter().fold((i64::MAX, i64::MIN), |(lo, hi), c| {
        (lo.min(c.seq), hi.max(c.seq))
    });
    let mut key = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT batch, count FROM audit_key WHERE key = ?1 AND batch BETWEEN ?2 AND ?3",
    )?;
    for (n, &(_, prefix, value)) in keyed.iter().enumerate() {
        layout::key(prefix, value.as_bytes(), &mut key);
        let key = String::from_utf8_lossy(&key);
        let counts: HashMap<i64, i64, BuildFx> = stmt
            .query_map(params![key, lo, hi], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        list.retain_mut(|c| match counts.get(&c.seq) {
            Some(&k) => {
                if n == 0 {
                    c.keyed_count = Some(k);
                }
                true
            }
            None => false,
        });
    }
    Ok(list)
}

/// Read one batch's heads (borrowed for `f`'s duration).
fn with_heads<T>(
    conn: &Connection,
    batch: i64,
    f: impl FnOnce(&[u8]) -> T,
) -> rusqlite::Result<Option<T>> {
    let mut stmt = conn.prepare_cached("SELECT heads FROM audit_batch WHERE seq = ?1")?;
    let mut rows = stmt.query([batch])?;
    match rows.next()? {
        Some(row) => Ok(Some(f(row.get_ref(0)?.as_blob()?))),
        None => Ok(None),
    }
}

/// A page entry: its place in the order, and where to find its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Hit {
    time: i64,
    seq: i64,
    batch: i64,
    pos: u32,
}

/// `{"total": N, "list": [...], "next_cursor": "time:seq" | null}`, newest
/// first.
pub fn query(conn: &Connection, f: &Filter) -> Result<Value, Error> {
    let tx = conn.unchecked_transaction()?;
    let list = candidates(&tx, f)?;
    let m = f.matcher();
    let (from, to) = (m.from, m.to);
    // Counts from `audit_key` stand for whole batches inside the window.
    let countable = f.keyed().len() <= 1 && f.status.is_none() && f.request_id.is_none();
    let cursor = f.cursor.unwrap_or((i64::MAX, i64::MAX));
    let keep = f.limit + 1;
    // The page so far: a min-heap of the best `keep`.
    let mut page: BinaryHeap<Reverse<Hit>> = BinaryHeap::with_capacity(keep + 1);
    let mut total: i64 = 0;
    let mut paging = true;
    for c in &list {
        if paging && page.len() == keep {
            let worst = page.peek().expect("full").0;
            // Batches come by newest record: none left can reach the page.
            if c.time_max < worst.time {
                paging = false;
            }
        }
        let inside = c.time_min >= from && c.time_max < to;
        let wanted = paging && c.time_min <= cursor.0;
        if countable && inside && !wanted {
            total += c.keyed_count.unwrap_or(c.count);
            continue;
        }
        let scanned = with_heads(&tx, c.seq, |heads| -> Result<i64, Error> {
            let mut n = 0;
            for h in Heads::new(heads) {
                let h = h.map_err(|_| Error::Damaged(c.seq))?;
                if !m.matches(&h.fields) {
                    continue;
                }
                n += 1;
                if wanted && (h.fields.time, h.seq) < cursor {
                    let hit = Hit {
                        time: h.fields.time,
                        seq: h.seq,
                        batch: c.seq,
                        pos: h.pos,
                    };
                    if page.len() < keep {
                        page.push(Reverse(hit));
                    } else if hit > page.peek().expect("full").0 {
                        page.pop();
                        page.push(Reverse(hit));
                    }
                }
            }
            Ok(n)
        })?;
        total += scanned.transpose()?.unwrap_or(0);
    }
    let mut hits: Vec<Hit> = page.into_iter().map(|r| r.0).collect();
    hits.sort_unstable_by(|a, b| b.cmp(a));
    let more = hits.len() > f.limit;
    hits.truncate(f.limit);
    let items = render(&tx, &hits)?;
    let next_cursor = match (more, hits.last()) {
        (true, Some(h)) => json!(format!("{}:{}", h.time, h.seq)),
        _ => Value::Null,
    };
    Ok(json!({"total": total, "list": items, "next_cursor": next_cursor}))
}

/// The page's records as the API shows them, in `hits` order; each batch
/// is read once.
fn render(conn: &Connection, hits: &[Hit]) -> Result<Vec<Value>, Error> {
    let mut out: Vec<Option<Value>> = vec![None; hits.len()];
    let mut by_batch: Vec<(i64, usize)> =
        hits.iter().enumerate().map(|(i, h)| (h.batch, i)).collect();
    by_batch.sort_unstable();
    let mut stmt = conn.prepare_cached("SELECT heads, records FROM audit_batch WHERE seq = ?1")?;
    for group in by_batch.chunk_by(|a, b| a.0 == b.0) {
        let batch = group[0].0;
        let mut rows = stmt.query([batch])?;
        let Some(row) = rows.next()? else { continue };
        let heads = row.get_ref(0)?.as_blob()?;
        let records = row.get_ref(1)?.as_blob()?;
        for &(_, i) in group {
            let h = Heads::at(heads, hits[i].pos).map_err(|_| Error::Damaged(batch))?;
            let mut m = Map::new();
            m.insert("seq".into(), json!(h.seq));
            m.insert("time".into(), json!(time::format(h.fields.time)));
            for (t, name) in TEXT_NAMES.iter().enumerate() {
                if t == layout::DECISION {
                    m.insert("status".into(), json!(h.fields.status));
                }
                m.insert((*name).into(), json!(h.fields.lossy(t)));
            }
            let record = h.json(records).unwrap_or_default();
            m.insert(
                "record".into(),
                serde_json::from_slice(record)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(record).into())),
            );
            m.insert("hash".into(), json!(hex(h.hash)));
            out[i] = Some(Value::Object(m));
        }
    }
    Ok(out.into_iter().flatten().collect())
}

pub const GROUP_COLUMNS: &[&str] = &[
    "consumer", "route", "tier", "event", "status", "client", "method",
];

/// A group column: a text (its index) or the status.
#[derive(Clone, Copy)]
enum Column {
    Text(usize),
    Status,
}

/// Strings seen by a summary, numbered from 1 (0 is null).
#[derive(Default)]
struct Interner {
    ids: HashMap<Box<[u8]>, u32, BuildFx>,
    names: Vec<Box<[u8]>>,
}

impl Interner {
    fn id(&mut self, v: Option<&[u8]>) -> u32 {
        let Some(v) = v else { return 0 };
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        self.names.push(v.into());
        let id = self.names.len() as u32;
        self.ids.insert(v.into(), id);
        id
    }

    fn name(&self, id: u32) -> Option<String> {
        (id > 0).then(|| String::from_utf8_lossy(&self.names[id as usize - 1]).into_owned())
    }
}

const MAX_GROUP: usize = 7;

#[derive(Default)]
struct Counts {
    total: i64,
    /// (decision id, count)
    decisions: Vec<(u32, i64)>,
    /// (status, count)
    statuses: Vec<(u16, i64)>,
}

fn bump<K: PartialEq>(list: &mut Vec<(K, i64)>, k: K) {
    match list.iter_mut().find(|(x, _)| *x == k) {
        Some((_, n)) => *n += 1,
        None => list.push((k, 1)),
    }
}

/// Counts by outcome per group: `{"total": N, "groups": [{"consumer":
/// ..., "route": ..., "total": n, "allow": a, "reject": r, "would_reject":
/// w, "error": e, "statuses": {"200": ...}}]}`, groups in the order of
/// their columns (null first).
pub fn summary(conn: &Connection, f: &Filter, group_by: &[String]) -> Result<Value, String> {
    let mut cols: Vec<Column> = Vec::with_capacity(group_by.len());
    for g in group_by {
        if !GROUP_COLUMNS.contains(&g.as_str()) {
            return Err(format!(
                "invalid group_by \"{g}\" (any of {})",
                GROUP_COLUMNS.join(", ")
            ));
        }
        cols.push(match g.as_str() {
            "status" => Column::Status,
            name => Column::Text(
                TEXT_NAMES
                    .iter()
                    .position(|n| *n == name)
                    .expect("a group column is a text or the status"),
            ),
        });
    }
    cols.truncate(MAX_GROUP);
    let run = || -> Result<Value, Error> {
        let tx = conn.unchecked_transaction()?;
        let list = candidates(&tx, f)?;
        let m = f.matcher();
        let mut strings = Interner::default();
        let mut groups: HashMap<[u32; MAX_GROUP], Counts, BuildFx> = HashMap::default();
        let mut total = 0i64;
        for c in &list {
            let r = with_heads(&tx, c.seq, |heads| -> Result<(), Error> {
                for h in Heads::new(heads) {
                    let h = h.map_err(|_| Error::Damaged(c.seq))?;
                    let fl = &h.fields;
                    if !m.matches(fl) {
                        continue;
                    }
                    total += 1;
                    let mut key = [0u32; MAX_GROUP];
                    for (k, col) in key.iter_mut().zip(&cols) {
                        *k = match *col {
                            Column::Status => fl.status as u32,
                            Column::Text(i) => strings.id(fl.get(i)),
                        };
                    }
                    let decision = strings.id(fl.get(layout::DECISION));
                    let g = groups.entry(key).or_default();
                    g.total += 1;
                    bump(&mut g.decisions, decision);
                    bump(&mut g.statuses, fl.status);
                }
                Ok(())
            })?;
            r.transpose()?;
        }
        // The order SQL gave: by each column, null first.
        let value_of = |col: &Column, k: u32| match col {
            Column::Status => json!(k),
            Column::Text(_) => json!(strings.name(k)),
        };
        let mut sorted: Vec<(Vec<Value>, Counts)> = groups
            .into_iter()
            .map(|(k, c)| {
                (
                    cols.iter()
                        .zip(k)
                        .map(|(col, k)| value_of(col, k))
                        .collect(),
                    c,
                )
            })
            .collect();
        sorted.sort_by(|a, b| {
            a.0.iter()
                .zip(&b.0)
                .map(|(x, y)| match (x, y) {
                    (Value::Number(x), Value::Number(y)) => x.as_u64().cmp(&y.as_u64()),
                    (Value::String(x), Value::String(y)) => x.cmp(y),
                    (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
                    (Value::Null, _) => std::cmp::Ordering::Less,
                    (_, _) => std::cmp::Ordering::Greater,
                })
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let groups: Vec<Value> = sorted
            .into_iter()
            .map(|(key, mut c)| {
                let mut m = Map::new();
                for (g, v) in group_by.iter().zip(key) {
                    m.insert(g.clone(), v);
                }
                m.insert("total".into(), json!(c.total));
                for o in ["allow", "reject", "would_reject", "error"] {
                    m.insert(o.into(), json!(0));
                }
                let mut decisions: Vec<(String, i64)> = c
                    .decisions
                    .iter()
                    .map(|&(d, n)| (strings.name(d).unwrap_or_default(), n))
                    .collect();
                decisions.sort();
                for (d, n) in decisions {
                    m.insert(d, json!(n));
                }
                c.statuses.sort_unstable();
                let statuses: Map<String, Value> = c
                    .statuses
                    .iter()
                    .map(|&(s, n)| (s.to_string(), json!(n)))
                    .collect();
                m.insert("statuses".into(), Value::Object(statuses));
                Value::Object(m)
            })
            .collect();
        Ok(json!({
            "total": total,
            "group_by": group_by,
            "groups": groups,
        }))
    };
    run().map_err(|e| e.to_string())
}
