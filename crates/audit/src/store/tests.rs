use std::borrow::Cow;

use rusqlite::{params, Connection};

use super::layout::{Heads, DECISION};
use super::*;

const T0: i64 = 1_714_521_600_000;

fn row(i: i64) -> Row {
    Row {
        time: T0 + i * 1000,
        event: Cow::Borrowed("request"),
        consumer: Some(format!("svc-{}", i % 3)),
        route: Some(format!("route-{}", i % 2)),
        tier: Some("customer_data_api".into()),
        status: if i % 4 == 0 { 403 } else { 200 },
        decision: Cow::Borrowed(if i % 4 == 0 { "reject" } else { "allow" }),
        plugin: (i % 4 == 0).then_some(Cow::Borrowed("consumer-restriction")),
        request_id: Some(format!("req-{i}")),
        method: Some("GET".into()),
        path: Some("/orders".into()),
        client: Some("10.0.0.7".into()),
        record: bytes::Bytes::from(format!("{{\"n\":{i}}}\n")),
        ..Row::default()
    }
}

/// Records 1..=n in batches of `per` (record i has time T0 + i s).
fn store(n: i64, per: usize) -> (tempfile::TempDir, std::path::PathBuf, Appender) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut app = Appender::new(open(&path).unwrap()).unwrap();
    let rows: Vec<Row> = (1..=n).map(row).collect();
    for chunk in rows.chunks(per) {
        app.append_rows(chunk).unwrap();
    }
    (dir, path, app)
}

fn problems(conn: &Connection) -> Vec<(i64, i64, String)> {
    let v = verify(conn).unwrap();
    assert_eq!(v.ok, v.problems.is_empty());
    v.problems
        .into_iter()
        .map(|p| (p.seq, p.batch, p.what))
        .collect()
}

#[test]
fn appends_one_row_per_batch_and_lists_each_distinct_key() {
    let (_d, path, app) = store(10, 4);
    assert_eq!((app.last_seq, app.last_batch), (10, 3));
    let conn = open_read(&path).unwrap();
    let batches: Vec<(i64, i64, i64)> = conn
        .prepare("SELECT seq, first, count FROM audit_batch ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(batches, vec![(1, 1, 4), (2, 5, 4), (3, 9, 2)]);
    let n: i64 = conn
        .query_row(
            "SELECT count FROM audit_key WHERE key = 'c' || char(31) || 'svc-1' AND batch = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2, "records 1 and 4");
    // Reopening continues the chain where it stopped.
    drop(app);
    let app = Appender::new(open(&path).unwrap()).unwrap();
    assert_eq!((app.last_seq, app.last_batch), (10, 3));
    assert!(verify(&conn).unwrap().ok);
}

#[test]
fn queries_newest_first_with_totals_and_a_cursor() {
    let (_d, path, _app) = store(30, 7);
    let conn = open_read(&path).unwrap();
    let f = Filter {
        consumer: Some("svc-1".into()),
        limit: 4,
        ..Filter::default()
    };
    let v = query(&conn, &f).unwrap();
    assert_eq!(v["total"], 10);
    let seqs: Vec<i64> = v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![28, 25, 22, 19]);
    let first = &v["list"][0];
    assert_eq!(first["consumer"], "svc-1");
    assert_eq!(first["route"], "route-0");
    assert_eq!(first["status"], 403);
    assert_eq!(first["decision"], "reject");
    assert_eq!(first["plugin"], "consumer-restriction");
    assert_eq!(first["credential"], serde_json::Value::Null);
    assert_eq!(first["record"]["n"], 28);
    assert_eq!(first["hash"].as_str().unwrap().len(), 64);
    let cursor = v["next_cursor"].as_str().unwrap();
    assert_eq!(cursor, format!("{}:19", T0 + 19_000));
    let mut all = seqs;
    let mut f = f;
    let mut cursor = Some(cursor.to_string());
    while let Some(c) = cursor {
        f.cursor = Filter::from_args(|k| (k == "cursor").then(|| c.clone()))
            .unwrap()
            .cursor;
        let v = query(&conn, &f).unwrap();
        assert_eq!(v["total"], 10, "the total ignores the cursor");
        all.extend(
            v["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seq"].as_i64().unwrap()),
        );
        cursor = v["next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(all, vec![28, 25, 22, 19, 16, 13, 10, 7, 4, 1]);

    // A window, a status class, a request id.
    let f = Filter {
        from: Some(T0 + 5_000),
        to: Some(T0 + 12_000),
        status: Some("4xx".into()),
        limit: 100,
        ..Filter::default()
    };
    let v = query(&conn, &f).unwrap();
    assert_eq!(v["total"], 1, "{v}");
    assert_eq!(v["list"][0]["seq"], 8);
    let f = Filter {
        request_id: Some("req-17".into()),
        limit: 100,
        ..Filter::default()
    };
    assert_eq!(query(&conn, &f).unwrap()["list"][0]["seq"], 17);
    let f = Filter {
        consumer: Some("nobody".into()),
        limit: 100,
        ..Filter::default()
    };
    assert_eq!(query(&conn, &f).unwrap()["total"], 0);
    // Window totals from the key counts match a record-by-record count.
    for (from, to) in [(0, 31), (3, 17), (7, 14), (8, 8), (15, 40)] {
        let f = Filter {
            route: Some("route-1".into()),
            from: Some(T0 + from * 1000),
            to: Some(T0 + to * 1000),
            limit: 1,
            ..Filter::default()
        };
        let expect = (1..=30)
            .filter(|i| i % 2 == 1 && *i >= from && *i < to)
            .count();
        assert_eq!(query(&conn, &f).unwrap()["total"], expect, "{from}..{to}");
    }
}

#[test]
fn summarises_by_columns_with_counts_by_outcome() {
    let (_d, path, _app) = store(12, 5);
    let conn = open_read(&path).unwrap();
    let s = summary(
        &conn,
        &Filter {
            from: Some(T0),
            to: Some(T0 + 100_000),
            ..Filter::default()
        },
        &["consumer".into(), "status".into()],
    )
    .unwrap();
    assert_eq!(s["total"], 12);
    let groups = s["groups"].as_array().unwrap();
    let keys: Vec<(String, u64)> = groups
        .iter()
        .map(|g| {
            (
                g["consumer"].as_str().unwrap().to_string(),
                g["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![
            ("svc-0".into(), 200),
            ("svc-0".into(), 403),
            ("svc-1".into(), 200),
            ("svc-1".into(), 403),
            ("svc-2".into(), 200),
            ("svc-2".into(), 403),
        ]
    );
    // svc-0 with 403: records 12 only.
    assert_eq!(groups[1]["total"], 1);
    assert_eq!(groups[1]["reject"], 1);
    assert_eq!(groups[1]["allow"], 0);
    assert_eq!(groups[1]["statuses"]["403"], 1);
    assert!(summary(&conn, &Filter::default(), &["password".into()])
        .unwrap_err()
        .starts_with("invalid group_by"));
}

/// A copy of the file to tamper with.
fn tampered(
    path: &std::path::Path,
    f: impl FnOnce(&Connection),
) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("audit.db");
    Connection::open(path)
        .unwrap()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    let conn = Connection::open(&copy).unwrap();
    f(&conn);
    (dir, conn)
}

fn blob(conn: &Connection, batch: i64, col: &str) -> Vec<u8> {
    conn.query_row(
        &format!("SELECT {col} FROM audit_batch WHERE seq = ?1"),
        [batch],
        |r| r.get(0),
    )
    .unwrap()
}

fn set_blob(conn: &Connection, batch: i64, col: &str, v: &[u8]) {
    conn.execute(
        &format!("UPDATE audit_batch SET {col} = ?2 WHERE seq = ?1"),
        params![batch, v],
    )
    .unwrap();
}

/// Where record `seq`'s head lies in batch `batch`: (start, end, json
/// offset, status offset).
fn head_of(conn: &Connection, batch: i64, seq: i64) -> (usize, usize, usize, usize) {
    let heads = blob(conn, batch, "heads");
    let all: Vec<_> = Heads::new(&heads).map(Result::unwrap).collect();
    let i = all.iter().position(|h| h.seq == seq).unwrap();
    let start = all[i].pos as usize;
    let end = all.get(i + 1).map_or(heads.len(), |h| h.pos as usize);
    (start, end, all[i].json_off as usize, start + 16)
}

#[test]
fn verify_names_changed_removed_and_moved_records() {
    // Batches: 1 = records 1..3, 2 = 4..6, 3 = 7..9, 4 = 10.
    let (_d, path, _app) = store(10, 3);
    let conn = open_read(&path).unwrap();
    let v = verify(&conn).unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(
        (v.rows, v.batches, v.first_seq, v.last_seq),
        (10, 4, Some(1), Some(10))
    );

    // One byte of record 5's JSON.
    let (_t, c) = tampered(&path, |c| {
        let (_, _, off, _) = head_of(c, 2, 5);
        let mut rec = blob(c, 2, "records");
        rec[off + 5] = b'9';
        set_blob(c, 2, "records", &rec);
    });
    assert_eq!(
        problems(&c),
        vec![(
            5,
            2,
            "content does not match its hash (the record was changed)".into()
        )]
    );

    // Record 5's status in its head (403 → 200 would need... any change).
    let (_t, c) = tampered(&path, |c| {
        let (_, _, _, status) = head_of(c, 2, 5);
        let mut heads = blob(c, 2, "heads");
        heads[status..status + 2].copy_from_slice(&403u16.to_be_bytes());
        set_blob(c, 2, "heads", &heads);
    });
    assert_eq!(problems(&c)[0].0, 5);

    // Record 5's stored hash replaced: 5 no longer matches, 6 still
    // follows the original of 5.
    let (_t, c) = tampered(&path, |c| {
        let (_, end, _, _) = head_of(c, 2, 5);
        let mut heads = blob(c, 2, "heads");
        heads[end - 32..end].copy_from_slice(&[7; 32]);
        set_blob(c, 2, "heads", &heads);
    });
    let p = problems(&c);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].0, 5);
    assert_eq!(
        p[1],
        (
            6,
            2,
            "follows the original of record 5, whose stored hash was rewritten".into()
        )
    );

    // A batch removed.
    let (_t, c) = tampered(&path, |c| {
        c.execute("DELETE FROM audit_batch WHERE seq = 2", [])
            .unwrap();
    });
    assert_eq!(
        problems(&c),
        vec![
            (7, 3, "batches 2..2 are missing (removed)".into()),
            (7, 3, "records 4..6 are missing (removed)".into()),
        ]
    );

    // A head removed (and the batch's count fixed to match).
    let (_t, c) = tampered(&path, |c| {
        let (start, end, _, _) = head_of(c, 2, 5);
        let mut heads = blob(c, 2, "heads");
        heads.drain(start..end);
        set_blob(c, 2, "heads", &heads);
        c.execute("UPDATE audit_batch SET count = 2 WHERE seq = 2", [])
            .unwrap();
    });
    assert_eq!(
        problems(&c),
        vec![(6, 2, "records 5..5 are missing (removed)".into())]
    );

    // Two batches swap places.
    let (_t, c) = tampered(&path, |c| {
        c.execute_batch(
            "UPDATE audit_batch SET seq = -1 WHERE seq = 2;
             UPDATE audit_batch SET seq = 2 WHERE seq = 3;
             UPDATE audit_batch SET seq = 3 WHERE seq = -1;",
        )
        .unwrap();
    });
    assert_eq!(
        problems(&c),
        vec![
            (
                7,
                2,
                "records 4..6 come later in the file (batches or records were moved)".into()
            ),
            (
                4,
                3,
                "out of order: it comes after record 9 (batches or records were moved)".into()
            ),
        ]
    );

    // Heads that do not decode.
    let (_t, c) = tampered(&path, |c| {
        let heads = blob(c, 3, "heads");
        set_blob(c, 3, "heads", &heads[..heads.len() - 3]);
    });
    let p = problems(&c);
    assert_eq!(
        (p[0].1, p[0].2.as_str()),
        (3, "the batch's heads do not decode (the batch was changed)")
    );
    assert!(
        p.iter()
            .any(|p| p.0 == 10 && p.2 == "records 9..9 are missing (removed)"),
        "{p:?}"
    );
}

#[test]
fn retention_removes_whole_batches_and_moves_the_anchor() {
    let (_d, path, mut app) = store(10, 3);
    // At most 5 records: batches 1 and 2 (records 1..6) leave... batch 2
    // ends at 6 > 10 - 5, so only batch 1 goes.
    assert_eq!(app.retain(0, 5, 0).unwrap(), 3);
    let conn = open_read(&path).unwrap();
    let v = verify(&conn).unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!((v.first_seq, v.rows), (Some(4), 7));
    // Everything older than now: all of it; the chain goes on from the
    // anchor.
    assert_eq!(app.retain(1, 0, 0).unwrap(), 7);
    app.append_rows(&[row(11)]).unwrap();
    let v = verify(&conn).unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!((v.first_seq, v.rows, v.batches), (Some(11), 1, 1));
    let app = Appender::new(open(&path).unwrap()).unwrap();
    assert_eq!((app.last_seq, app.last_batch), (11, 5));
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM audit_key WHERE batch < 5", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn an_old_layout_file_is_refused_by_readers_and_set_aside_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(
            "CREATE TABLE audit (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, record TEXT NOT NULL);
             INSERT INTO audit VALUES (1, 1, '{}');
             CREATE TABLE quarantines (id TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at INTEGER NOT NULL,
                 expires_at INTEGER, ended_at INTEGER, ended_by TEXT, end_reason TEXT);
             INSERT INTO quarantines (id, spec, created_at) VALUES ('q1', '{}', 1);
             CREATE TABLE profiles (identity TEXT PRIMARY KEY, state TEXT NOT NULL, updated INTEGER NOT NULL);",
        )
        .unwrap();
    }
    let e = open_read(&path).unwrap_err().to_string();
    assert!(e.contains("old audit layout"), "{e}");
    let conn = open(&path).unwrap();
    let q: String = conn
        .query_row("SELECT id FROM quarantines", [], |r| r.get(0))
        .unwrap();
    assert_eq!(q, "q1");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit.db.v1-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let old = Connection::open(dir.path().join(&aside[0])).unwrap();
    let n: i64 = old
        .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "the old file is kept as it was");
    assert!(open_read(&path).is_ok());
}

#[test]
fn a_pending_record_keeps_its_fields_and_drops_the_newline() {
    let r = row(4);
    let p = r.pending();
    assert_eq!(p.json(), b"{\"n\":4}");
    let f = p.fields();
    assert!(f.is(DECISION, "reject"));
    assert_eq!((f.time, f.status), (T0 + 4000, 403));
}
