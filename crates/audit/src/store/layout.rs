//! The audit file's layout, `portcullis.audit/v2`: one SQLite row per
//! written batch, and inside it one compact binary head per record.
//!
//! A batch row (`audit_batch`) carries its number (`seq`), the record
//! number of its first record, how many it holds, the earliest and latest
//! record time, and two blobs: `heads` (the records' heads, one after the
//! other) and `records` (their decision-record JSON texts, concatenated).
//! Queries and summaries read `heads` only; `records` is read for the
//! records a page shows and by `verify`.
//!
//! A head, all integers big-endian:
//!
//! ```text
//! seq u64 | time i64 (unix ms) | status u16 | 11 × text | json_off u32 | json_len u32 | hash [32]
//! ```
//!
//! where each text (event, consumer, credential, route, tier, decision,
//! plugin, request_id, method, path, client, in that order) is a LEB128
//! varint of `len + 1` (`0` for null) and the UTF-8 bytes. The request
//! path encodes `time | status | texts` ([`encode_fields`]); the writer
//! puts the record number before and the JSON's place and the hash after.
//!
//! The chain: `hash = SHA-256(prev_hash || "portcullis.audit/v2\n" ||
//! seq..texts || json_len u32 || json)`, i.e. every byte of the head but
//! the JSON's offset and the hash itself, then the JSON. The first record's
//! `prev_hash` is 32 zero bytes, or the anchor's hash once retention has
//! removed older batches.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// What `meta.layout` says in a file of this layout.
pub const LAYOUT: &str = "portcullis.audit/v2";

/// The tag every hashed record starts with.
pub const DOMAIN: &[u8] = b"portcullis.audit/v2\n";

/// SQLite's page size for new files: large pages keep a batch's blobs in
/// few pages (fewer reads per batch scanned).
pub const PAGE_SIZE: u32 = 65536;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_batch (
    seq INTEGER PRIMARY KEY,
    first INTEGER NOT NULL,
    count INTEGER NOT NULL,
    time_min INTEGER NOT NULL,
    time_max INTEGER NOT NULL,
    heads BLOB NOT NULL,
    records BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_batch_by_time ON audit_batch (time_max, time_min, first, count);
CREATE TABLE IF NOT EXISTS audit_key (
    key TEXT NOT NULL,
    batch INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key, batch)
) WITHOUT ROWID;
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

/// The texts of a record, in head order.
pub const TEXTS: usize = 11;
pub const EVENT: usize = 0;
pub const CONSUMER: usize = 1;
pub const CREDENTIAL: usize = 2;
pub const ROUTE: usize = 3;
pub const TIER: usize = 4;
pub const DECISION: usize = 5;
pub const PLUGIN: usize = 6;
pub const REQUEST_ID: usize = 7;
pub const METHOD: usize = 8;
pub const PATH: usize = 9;
pub const CLIENT: usize = 10;

/// The texts' names, as queries show them.
pub const TEXT_NAMES: [&str; TEXTS] = [
    "event",
    "consumer",
    "credential",
    "route",
    "tier",
    "decision",
    "plugin",
    "request_id",
    "method",
    "path",
    "client",
];

/// The texts a batch lists in `audit_key` (one row per distinct value), and
/// the key's prefix: `c\x1fsvc-7` is consumer `svc-7`.
pub const KEYED: [(usize, u8); 5] = [
    (CONSUMER, b'c'),
    (ROUTE, b'r'),
    (TIER, b't'),
    (DECISION, b'd'),
    (EVENT, b'e'),
];

/// The `audit_key` key of a text's value.
pub fn key(prefix: u8, value: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(prefix);
    out.push(0x1f);
    out.extend_from_slice(value);
}

/// Bytes after the texts: json_off, json_len, hash.
const TAIL: usize = 4 + 4 + 32;

fn varint_len(mut v: u32) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `time | status | texts`, the part of a head known on the request path,
/// in one allocation of the exact size.
pub fn encode_fields(time: i64, status: u16, texts: &[Option<&str>; TEXTS]) -> Vec<u8> {
    let len = 10
        + texts
            .iter()
            .map(|t| t.map_or(1, |s| varint_len(s.len() as u32 + 1) + s.len()))
            .sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(&status.to_be_bytes());
    for t in texts {
        match t {
            None => out.push(0),
            Some(s) => {
                // Longer texts cannot come from a request (header limits).
                let s = &s.as_bytes()[..s.len().min(u32::MAX as usize - 1)];
                put_varint(&mut out, s.len() as u32 + 1);
                out.extend_from_slice(s);
            }
        }
    }
    out
}

/// A head or fields blob that does not decode: the file was changed (or
/// is not an audit file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n).ok_or(Malformed)?;
        let s = self.buf.get(self.pos..end).ok_or(Malformed)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn varint(&mut self) -> Result<u32, Malformed> {
        let mut v: u32 = 0;
        for shift in (0..35).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(Malformed)?;
            self.pos += 1;
            v |= ((b & 0x7f) as u32).checked_shl(shift).ok_or(Malformed)?;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(Malformed)
    }

    fn fields(&mut self) -> Result<Fields<'a>, Malformed> {
        let time = i64::from_be_bytes(self.array()?);
        let status = u16::from_be_bytes(self.array()?);
        let mut text = [None; TEXTS];
        for t in &mut text {
            *t = match self.varint()? {
                0 => None,
                n => Some(self.take(n as usize - 1)?),
            };
        }
        Ok(Fields { time, status, text })
    }
}

/// A record's time, status and texts, borrowed from a head (or from a
/// pending record's encoding). Texts are bytes: matching needs no UTF-8
/// check; [`Fields::str`] checks.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub time: i64,
    pub status: u16,
    pub text: [Option<&'a [u8]>; TEXTS],
}

impl<'a> Fields<'a> {
    /// Decode what [`encode_fields`] wrote.
    pub fn decode(buf: &'a [u8]) -> Result<Fields<'a>, Malformed> {
        let mut r = Reader { buf, pos: 0 };
        let f = r.fields()?;
        if r.pos != buf.len() {
            return Err(Malformed);
        }
        Ok(f)
    }

    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.text[i]
    }

    /// The text as UTF-8 (`None` when null, or not UTF-8 in a damaged file).
    pub fn str(&self, i: usize) -> Option<&'a str> {
        self.text[i].and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The text as shown by queries.
    pub fn lossy(&self, i: usize) -> Option<std::borrow::Cow<'a, str>> {
        self.text[i].map(String::from_utf8_lossy)
    }

    pub fn is(&self, i: usize, v: &str) -> bool {
        self.text[i] == Some(v.as_bytes())
    }
}

/// One record's head, borrowed from a batch's `heads`.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The record number.
    pub seq: i64,
    pub fields: Fields<'a>,
    /// Where its JSON lies in the batch's `records`.
    pub json_off: u32,
    pub json_len: u32,
    pub hash: &'a Hash,
    /// The hashed part: `seq | time | status | texts`.
    pub hashed: &'a [u8],
    /// Where this head starts in `heads`.
    pub pos: u32,
}

impl<'a> Head<'a> {
    /// The record's JSON in the batch's `records` (`None` when the head
    /// points outside it).
    pub fn json(&self, records: &'a [u8]) -> Option<&'a [u8]> {
        let start = self.json_off as usize;
        records.get(start..start.checked_add(self.json_len as usize)?)
    }
}

/// The heads of a batch, in order; stops at the first that does not
/// decode.
pub struct Heads<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> Heads<'a> {
    pub fn new(heads: &'a [u8]) -> Heads<'a> {
        Heads {
            r: Reader { buf: heads, pos: 0 },
            failed: false,
        }
    }

    /// The head that starts at `pos` (from [`Head::pos`]).
    pub fn at(heads: &'a [u8], pos: u32) -> Result<Head<'a>, Malformed> {
        let mut h = Heads::new(heads);
        h.r.pos = pos as usize;
        h.next().unwrap_or(Err(Malformed))
    }

    fn head(&mut self) -> Result<Head<'a>, Malformed> {
        let start = self.r.pos;
        let seq = i64::from_be_bytes(self.r.array()?);
        let fields = self.r.fields()?;
        let hashed = &self.r.buf[start..self.r.pos];
        let json_off = u32::from_be_bytes(self.r.array()?);
        let json_len = u32::from_be_bytes(self.r.array()?);
        let hash: &Hash = self.r.take(32)?.try_into().map_err(|_| Malformed)?;
        Ok(Head {
            seq,
            fields,
            json_off,
            json_len,
            hash,
            hashed,
            pos: start as u32,
        })
    }
}

impl<'a> Iterator for Heads<'a> {
    type Item = Result<Head<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.pos >= self.r.buf.len() {
            return None;
        }
        let h = self.head();
        self.failed = h.is_err();
        Some(h)
    }
}

/// Append a head for record `seq` whose `time | status | texts` are
/// `fields` and whose JSON is `json`, at `json_off` in the batch's
/// records, chained to `prev`. Returns its hash.
pub fn push_head(
    heads: &mut Vec<u8>,
    prev: &Hash,
    seq: i64,
    fields: &[u8],
    json_off: u32,
    json: &[u8],
) -> Hash {
    heads.reserve(8 + fields.len() + TAIL);
    let start = heads.len();
    heads.extend_from_slice(&seq.to_be_bytes());
    heads.extend_from_slice(fields);
    let hash = chain_hash(prev, &heads[start..], json);
    heads.extend_from_slice(&json_off.to_be_bytes());
    heads.extend_from_slice(&(json.len() as u32).to_be_bytes());
    heads.extend_from_slice(&hash);
    hash
}

/// `SHA-256(prev || DOMAIN || hashed || json_len u32 || json)`.
pub fn chain_hash(prev: &Hash, hashed: &[u8], json: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(DOMAIN);
    h.update(hashed);
    h.update((json.len() as u32).to_be_bytes());
    h.update(json);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts() -> [Option<&'static str>; TEXTS] {
        let mut t = [None; TEXTS];
        t[EVENT] = Some("request");
        t[CONSUMER] = Some("svc-7");
        t[DECISION] = Some("allow");
        t[PATH] = Some("");
        t[REQUEST_ID] = Some(Box::leak("r".repeat(300).into_boxed_str()));
        t
    }

    #[test]
    fn fields_round_trip_with_nulls_empty_and_long_texts() {
        let enc = encode_fields(1_714_521_600_123, 403, &texts());
        assert_eq!(enc.len(), enc.capacity(), "one exact allocation");
        let f = Fields::decode(&enc).unwrap();
        assert_eq!(f.time, 1_714_521_600_123);
        assert_eq!(f.status, 403);
        assert!(f.is(EVENT, "request") && f.is(CONSUMER, "svc-7"));
        assert_eq!(f.get(CREDENTIAL), None);
        assert_eq!(f.get(PATH), Some(&b""[..]));
        assert_eq!(f.str(REQUEST_ID).unwrap().len(), 300);
    }

    #[test]
    fn heads_decode_in_order_and_chain() {
        let fields = encode_fields(5, 200, &texts());
        let mut heads = Vec::new();
        let h1 = push_head(&mut heads, &[0; 32], 1, &fields, 0, b"{}");
        let h2 = push_head(&mut heads, &h1, 2, &fields, 2, b"{\"a\":1}");
        let records = b"{}{\"a\":1}";
        let got: Vec<Head> = Heads::new(&heads).map(Result::unwrap).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].seq, got[1].seq), (1, 2));
        assert_eq!(got[1].json(records), Some(&b"{\"a\":1}"[..]));
        assert_eq!(got[1].hash, &h2);
        assert_eq!(chain_hash(&h1, got[1].hashed, b"{\"a\":1}"), h2);
        assert_eq!(Heads::at(&heads, got[1].pos).unwrap().seq, 2);
    }

    #[test]
    fn truncated_heads_stop_with_an_error() {
        let fields = encode_fields(5, 200, &texts());
        let mut heads = Vec::new();
        push_head(&mut heads, &[0; 32], 1, &fields, 0, b"{}");
        heads.pop();
        let got: Vec<_> = Heads::new(&heads).collect();
        assert!(matches!(got.as_slice(), [Err(Malformed)]));
        assert!(Fields::decode(&fields[..fields.len() - 1]).is_err());
    }
}
