//! Replication end to end, with real processes: a `basalt serve` primary
//! uploads segments to a store (a shared directory, moto's S3 server,
//! Azurite), a `basalt serve --role replica` applies them; the replica's
//! column files equal the primary's byte for byte and it refuses writes.
//! Restarts (SIGKILL) of both in the middle of replication lose and
//! duplicate nothing; a second primary on the same store is refused.

mod common;
mod servers;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt::batch::Value;
use basalt::gen::CpuGenerator;
use basalt::replication::{first_txn_of, table_prefix};
use basalt::segment::Segment;
use basalt::store::StoreConfig;
use basalt::table::TableReader;
use common::{eventually, http, table_files, ServerProcess};
use object_store::ObjectStoreExt;

const BATCH: u64 = 500;

/// ILP lines of batch `b` of table `cpu`; from batch 4 on a column `note`
/// (varchar) appears, so the schema grows in the middle.
fn batch_body(b: u64) -> Vec<u8> {
    let gen = CpuGenerator::default();
    let mut body = Vec::new();
    for j in 0..BATCH {
        gen.ilp_line(&mut body, "cpu", b * BATCH + j);
    }
    if b >= 4 {
        let ts = (basalt::gen::BASE_TS_US + (b * BATCH) as i64) * 1000 + 1;
        writeln!(
            body,
            "cpu,host=extra note=\"batch {b}\",requests={}i {ts}",
            9_000_000 + b
        )
        .unwrap();
    }
    body
}

fn primary(dir: &Path, store: Option<&str>, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--checkpoint-interval-ms", "200"];
    if let Some(s) = store {
        args.extend(["--object-store", s]);
    }
    args.extend(extra);
    ServerProcess::start(dir, &args)
}

fn txn_of(v: &serde_json::Value, key: &str) -> u64 {
    v["tables"]["cpu"][key].as_u64().unwrap_or(0)
}

/// Waits until the replica applied everything the primary committed.
fn wait_replicated(p: &ServerProcess, r: &ServerProcess) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (ps, rs) = (p.status(), r.status());
        let committed = txn_of(&ps, "committed_txn");
        let uploaded = txn_of(&ps, "uploaded_txn");
        let applied = txn_of(&rs, "applied_txn");
        let applied_here = txn_of(&ps, "applied_txn");
        if committed > 0
            && uploaded == committed
            && applied == committed
            && applied_here == committed
        {
            return committed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not replicated within 120 s:\nprimary {ps}\nreplica {rs}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_same_tables(primary: &Path, replica: &Path) {
    let (p, r) = (
        table_files(&primary.join("cpu")),
        table_files(&replica.join("cpu")),
    );
    assert_eq!(
        p.keys().collect::<Vec<_>>(),
        r.keys().collect::<Vec<_>>(),
        "same files"
    );
    for (name, bytes) in &p {
        assert!(
            bytes == &r[name],
            "{name} differs between primary and replica"
        );
    }
    let scan = |d: &Path| {
        TableReader::open(d, "cpu")
            .unwrap()
            .scan(&[], None)
            .unwrap()
    };
    let (ps, rs) = (scan(primary), scan(replica));
    assert_eq!(ps.row_count(), rs.row_count());
    assert_eq!(ps.names, rs.names);
    for c in 0..ps.names.len() {
        for row in 0..ps.row_count() {
            assert_eq!(
                ps.columns[c].value(row),
                rs.columns[c].value(row),
                "column {c} row {row}"
            );
        }
    }
}

/// Every segment of `cpu` in the store: contiguous from txn 1 to `last`,
/// each a valid segment, none overlapping.
fn assert_chain(conn: &str, last: u64) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = StoreConfig::parse(conn).unwrap().build().unwrap();
    let keys = rt
        .block_on(store.list_after(
            &table_prefix(&store, "cpu"),
            &store.path(&["tables", "cpu", "0"]),
        ))
        .unwrap();
    let mut next = 1;
    for k in &keys {
        assert_eq!(
            first_txn_of(k),
            Some(next),
            "key {k}: the chain has a gap or an overlap"
        );
        let bytes = rt
            .block_on(async { store.inner.get(k).await?.bytes().await })
            .unwrap();
        let seg = Segment::from_slice(&bytes).unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(seg.header().first_txn, next);
        next = seg.header().last_txn + 1;
    }
    assert_eq!(
        next,
        last + 1,
        "the store holds txns up to {}, committed {last}",
        next - 1
    );
    keys.len()
}

fn end_to_end(store: Option<&str>, primary_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (pdir, rdir) = (dir.path().join("primary"), dir.path().join("replica"));
    let default_store = format!("fs::root={};", pdir.join("_replication").display());
    let conn = store.map_or(default_store.clone(), str::to_string);
    let p = primary(&pdir, store, primary_args);
    assert!(p.ready_line.contains("role=primary"), "{}", p.ready_line);
    let r = ServerProcess::start_replica(&rdir, &conn);
    for b in 0..10 {
        let resp = http(p.http, "POST", "/write", &[], &batch_body(b));
        assert_eq!(resp.status, 204, "{}", String::from_utf8_lossy(&resp.body));
    }
    let txn = wait_replicated(&p, &r);
    assert_eq!(txn, 10);

    // The replica refuses writes: HTTP 421 with a JSON message, TCP closed.
    let resp = http(
        r.http,
        "POST",
        "/write",
        &[],
        b"cpu,host=x usage_user=1.0\n",
    );
    assert_eq!(resp.status, 421);
    let j = resp.json();
    assert!(
        j["message"].as_str().unwrap().contains("read-only replica"),
        "{j}"
    );
    let mut tcp = TcpStream::connect(r.ilp).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = tcp.write_all(b"cpu,host=x usage_user=1.0\n");
    let mut buf = [0u8; 16];
    assert_eq!(
        tcp.read(&mut buf).unwrap_or(0),
        0,
        "the replica closes ILP/TCP connections"
    );

    // Metrics on both sides.
    let pm = String::from_utf8(http(p.http, "GET", "/metrics", &[], b"").body).unwrap();
    assert!(pm.contains("basalt_upload_txn{table=\"cpu\"} 10"), "{pm}");
    assert!(
        pm.contains("basalt_upload_backlog_txns{table=\"cpu\"} 0"),
        "{pm}"
    );
    assert!(
        pm.contains("basalt_store_requests_total{table=\"cpu\",op=\"put\"}"),
        "{pm}"
    );
    let rm = String::from_utf8(http(r.http, "GET", "/metrics", &[], b"").body).unwrap();
    assert!(
        rm.contains("basalt_replica_applied_txn{table=\"cpu\"} 10"),
        "{rm}"
    );
    assert!(
        rm.contains("basalt_replication_lag_seconds{table=\"cpu\"}"),
        "{rm}"
    );
    let rs = r.status();
    assert_eq!(rs["role"], "replica");
    assert!(
        !rs["store"].as_str().unwrap().contains("Eby8vdM02xNOcqFl"),
        "secrets masked: {rs}"
    );

    assert!(p.terminate().success());
    assert!(r.terminate().success());
    assert_same_tables(&pdir, &rdir);
    assert_chain(&conn, 10);
    let lz4 = primary_args.contains(&"lz4");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = StoreConfig::parse(&conn).unwrap().build().unwrap();
    let key = basalt::replication::segment_key(&store, "cpu", 1);
    let bytes = rt
        .block_on(async { store.inner.get(&key).await?.bytes().await })
        .unwrap();
    let seg = Segment::from_slice(&bytes).unwrap();
    let want = if lz4 {
        basalt::segment::Compression::Lz4
    } else {
        basalt::segment::Compression::None
    };
    assert_eq!(seg.preamble().compression, want);
}

#[test]
fn primary_to_replica_through_the_default_fs_store() {
    end_to_end(None, &[]);
}

#[test]
fn primary_to_replica_through_s3_moto() {
    let moto = servers::moto("basalt");
    let conn = format!(
        "s3::bucket=basalt;root=node1;region=us-east-1;endpoint=http://127.0.0.1:{};\
         access_key_id=test;secret_access_key=test;allow_http=true;",
        moto.port
    );
    end_to_end(Some(&conn), &[]);
}

/// Through Azurite with lz4-compressed segments.
#[test]
fn primary_to_replica_through_azurite() {
    let az = servers::azurite("basalt");
    let conn = format!(
        "azblob::container=basalt;root=node1;account_name=devstoreaccount1;\
         account_key=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
         endpoint=http://127.0.0.1:{}/devstoreaccount1;",
        az.port
    );
    end_to_end(Some(&conn), &["--segment-compression", "lz4"]);
}

/// Four clients post batches while the primary is SIGKILLed three times
/// and the replica twice, each restarted: every acknowledged batch is on
/// the primary exactly once, the store's chain has no gap and no overlap,
/// and the replica ends byte-identical to the primary.
#[test]
fn kill9_of_primary_and_replica_during_replication_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (pdir, rdir) = (dir.path().join("primary"), dir.path().join("replica"));
    let conn = format!("fs::root={};", dir.path().join("store").display());
    // Small, frequent segments: the kills land between and during uploads.
    let up = ["--segment-age-ms", "20", "--segment-bytes-max", "65536"];
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut r = Some(ServerProcess::start_replica(&rdir, &conn));
    for cycle in 0..3u64 {
        let p = primary(&pdir, Some(&conn), &up);
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4u64)
            .map(|c| {
                let (acked, stop, addr) = (acked.clone(), stop.clone(), p.http);
                std::thread::spawn(move || {
                    let gen = CpuGenerator::default();
                    let mut b = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = (cycle * 4 + c) * 1_000_000 + b;
                        b += 1;
                        let mut body = Vec::new();
                        for j in 0..200 {
                            gen.ilp_line(&mut body, "cpu", id * 200 + j);
                        }
                        if !common::post_acked(addr, &body) {
                            return;
                        }
                        acked.lock().unwrap().push(id);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800 + cycle * 300));
        if cycle < 2 {
            // The replica dies too, mid-apply, and comes back.
            r.take().unwrap().kill9();
            r = Some(ServerProcess::start_replica(&rdir, &conn));
        }
        p.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
    }
    let p = primary(&pdir, Some(&conn), &up);
    let r = r.take().unwrap();
    let last = wait_replicated(&p, &r);
    assert!(p.terminate().success());
    assert!(r.terminate().success());

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "only {} batches acknowledged",
        acked.len()
    );
    let scan = TableReader::open(&pdir, "cpu")
        .unwrap()
        .scan(&["requests"], None)
        .unwrap();
    let mut seen = HashMap::<u64, u64>::new();
    for row in 0..scan.row_count() {
        let Value::Long(v) = scan.columns[0].value(row) else {
            panic!("null requests")
        };
        *seen.entry(v as u64 / 200).or_default() += 1;
    }
    for (id, n) in &seen {
        assert_eq!(*n, 200, "batch {id} is partly there or twice ({n} rows)");
    }
    for id in &acked {
        assert!(seen.contains_key(id), "acknowledged batch {id} is lost");
    }
    let segments = assert_chain(&conn, last);
    assert!(segments > 3, "{segments} segments");
    assert_same_tables(&pdir, &rdir);
}

/// A primary pointed at a store that already holds another primary's
/// history of a table writes nothing there: its upload of the table stops
/// with an error in /status, and the first history is intact. Tried with a
/// fresh node and with one that has its own history of the table (uploaded
/// elsewhere before).
#[test]
fn a_second_primary_on_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conn = format!("fs::root={};", dir.path().join("store").display());
    let a = primary(&dir.path().join("a"), Some(&conn), &[]);
    for b in 0..3 {
        assert_eq!(
            http(a.http, "POST", "/write", &[], &batch_body(b)).status,
            204
        );
    }
    eventually(Duration::from_secs(30), || {
        (txn_of(&a.status(), "uploaded_txn") == 3).then_some(())
    });
    assert!(a.terminate().success());
    let before = assert_chain(&conn, 3);

    // b has 5 txns of its own, uploaded to another store.
    let bdir = dir.path().join("b");
    let other = format!("fs::root={};", dir.path().join("other").display());
    let b = primary(&bdir, Some(&other), &[]);
    for i in 0..5 {
        assert_eq!(
            http(b.http, "POST", "/write", &[], &batch_body(100 + i)).status,
            204
        );
    }
    eventually(Duration::from_secs(30), || {
        (txn_of(&b.status(), "uploaded_txn") == 5).then_some(())
    });
    assert!(b.terminate().success());
    // A fresh c, and b, each pointed at a's store.
    for d in [dir.path().join("c"), bdir] {
        let n = primary(&d, Some(&conn), &[]);
        assert_eq!(
            http(n.http, "POST", "/write", &[], &batch_body(200)).status,
            204
        );
        let stopped = eventually(Duration::from_secs(30), || {
            n.status()["tables"]["cpu"]["stopped"]
                .as_str()
                .map(str::to_string)
        });
        assert!(
            stopped.contains("Upload of the table is stopped"),
            "{stopped}"
        );
        let m = String::from_utf8(http(n.http, "GET", "/metrics", &[], b"").body).unwrap();
        assert!(m.contains("basalt_upload_stopped{table=\"cpu\"} 1"), "{m}");
        assert!(n.terminate().success());
        assert_eq!(
            assert_chain(&conn, 3),
            before,
            "the first primary's history is untouched"
        );
    }
}

/// Two primaries running at once on one store (split brain): each segment
/// key can be created once, so exactly one of them extends the table's
/// history; the other finds a key taken by someone else's txns and stops.
/// A replica built from the store equals the one that won.
#[test]
fn two_primaries_at_once_never_fork_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let conn = format!("fs::root={};", dir.path().join("store").display());
    let up = ["--segment-age-ms", "20"];
    let (adir, bdir) = (dir.path().join("a"), dir.path().join("b"));
    let a = primary(&adir, Some(&conn), &up);
    let b = primary(&bdir, Some(&conn), &up);
    for i in 0..10 {
        assert_eq!(
            http(a.http, "POST", "/write", &[], &batch_body(i)).status,
            204
        );
        assert_eq!(
            http(b.http, "POST", "/write", &[], &batch_body(100 + i)).status,
            204
        );
    }
    let stopped = |s: &ServerProcess| s.status()["tables"]["cpu"]["stopped"].is_string();
    let (winner, wdir, loser) = eventually(Duration::from_secs(30), || {
        let (sa, sb) = (stopped(&a), stopped(&b));
        match (sa, sb) {
            (false, true) => Some((&a, &adir, &b)),
            (true, false) => Some((&b, &bdir, &a)),
            (true, true) => panic!("both primaries stopped"),
            (false, false) => None,
        }
    });
    let last = eventually(Duration::from_secs(30), || {
        let s = winner.status();
        let c = txn_of(&s, "committed_txn");
        (txn_of(&s, "uploaded_txn") == c && txn_of(&s, "applied_txn") == c).then_some(c)
    });
    assert_eq!(last, 10);
    assert!(!stopped(winner) && stopped(loser));
    assert_chain(&conn, last);
    let rdir = dir.path().join("replica");
    let r = ServerProcess::start_replica(&rdir, &conn);
    eventually(Duration::from_secs(30), || {
        (txn_of(&r.status(), "applied_txn") == last).then_some(())
    });
    assert!(r.terminate().success());
    assert_same_tables(wdir, &rdir);
}

/// A corrupt object where the next segment belongs: the replica refuses it
/// naming the object in /status and /metrics, stays at its last good txn,
/// and goes on once the object is good.
#[test]
fn a_replica_refuses_a_corrupt_object_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let conn = format!("fs::root={};", store_dir.display());
    let p = primary(&dir.path().join("p"), Some(&conn), &[]);
    for b in 0..4 {
        assert_eq!(
            http(p.http, "POST", "/write", &[], &batch_body(b)).status,
            204
        );
        // One segment per txn: wait for each upload.
        eventually(Duration::from_secs(30), || {
            (txn_of(&p.status(), "uploaded_txn") == b + 1).then_some(())
        });
    }
    assert!(p.terminate().success());
    let seg_dir = store_dir.join("tables").join("cpu");
    let last = seg_dir.join(format!("{:020}.seg", 4));
    let good = std::fs::read(&last).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 100] ^= 0x40;
    std::fs::write(&last, &bad).unwrap();

    let r = ServerProcess::start_replica(&dir.path().join("r"), &conn);
    let err = eventually(Duration::from_secs(30), || {
        let s = r.status();
        s["tables"]["cpu"]["last_error"]
            .as_str()
            .map(str::to_string)
            .filter(|_| txn_of(&s, "applied_txn") == 3)
    });
    assert!(
        err.contains("00000000000000000004.seg") && err.contains("checksum"),
        "{err}"
    );
    let m = String::from_utf8(http(r.http, "GET", "/metrics", &[], b"").body).unwrap();
    assert!(
        m.contains("basalt_replica_sync_failing{table=\"cpu\"} 1"),
        "{m}"
    );
    // Repaired (by an operator restoring the object): the replica goes on.
    std::fs::write(&last, &good).unwrap();
    eventually(Duration::from_secs(30), || {
        (txn_of(&r.status(), "applied_txn") == 4).then_some(())
    });
    assert!(r.status()["tables"]["cpu"]["last_error"].is_null());
    assert!(r.terminate().success());
}

/// Turning replication on for a table whose older WAL is gone (it ran with
/// `--object-store off`): the primary cannot ship that history, so the
/// table's upload stops with an error saying so, and nothing (no empty
/// stand-in txns either) reaches the store, across restarts too.
#[test]
fn replication_turned_on_late_refuses_to_ship_a_partial_history() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("p");
    let conn = format!("fs::root={};", dir.path().join("store").display());
    for round in 0..2 {
        let p = primary(&pdir, Some("off"), &[]);
        for b in 0..3 {
            let body = batch_body(round * 10 + b);
            assert_eq!(http(p.http, "POST", "/write", &[], &body).status, 204);
        }
        assert!(p.terminate().success());
    }
    for _ in 0..2 {
        let p = primary(&pdir, Some(&conn), &[]);
        let stopped = eventually(Duration::from_secs(30), || {
            p.status()["tables"]["cpu"]["stopped"]
                .as_str()
                .map(str::to_string)
        });
        assert!(stopped.contains("not in the local WAL"), "{stopped}");
        assert!(p.terminate().success());
        let segments = std::fs::read_dir(dir.path().join("store").join("tables").join("cpu"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(segments, 0, "nothing was uploaded");
    }
}
