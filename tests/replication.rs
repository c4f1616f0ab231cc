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

/// The connection string of a shared-filesystem store under `dir`.
fn fs_conn(dir: &Path) -> String {
    format!("fs::root={};", dir.join("store").display())
}

/// The connection string of bucket `basalt` on `moto`, under `root`.
fn s3_conn(moto: &servers::ServerGuard, root: &str) -> String {
    format!(
        "s3::bucket=basalt;root={root};region=us-east-1;endpoint=http://127.0.0.1:{};\
         access_key_id=test;secret_access_key=test;allow_http=true;",
        moto.port
    )
}

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
    let (mut prev, mut epoch) = (0u64, 0u64);
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
        let h = seg.header();
        assert_eq!(h.first_txn, next);
        // One history: each segment links to the one before it, and the
        // epoch of its writer never goes back.
        assert_eq!(h.prev_xxh3, Some(prev), "key {k}: broken link");
        assert!(h.epoch >= epoch, "key {k}: epoch {} after {epoch}", h.epoch);
        (prev, epoch) = (seg.checksum(), h.epoch);
        next = h.last_txn + 1;
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
    let conn = s3_conn(&moto, "node1");
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
    let conn = fs_conn(dir.path());
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
/// history refuses to start (it would fork it), saying how to take over
/// instead, and the first history is intact. Tried with a fresh node and
/// with one that held an epoch of another store's history.
#[test]
fn a_second_primary_on_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conn = fs_conn(dir.path());
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

    // b has 5 txns of its own, uploaded to another store (its epoch 1).
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
    for (d, why) in [
        (dir.path().join("c"), "never held it"),
        (bdir, "of another history"),
    ] {
        let err = refused_start(&d, &conn);
        assert!(err.contains(why), "{err}");
        assert!(err.contains("--role"), "says how to take over: {err}");
        assert_eq!(
            assert_chain(&conn, 3),
            before,
            "the first primary's history is untouched"
        );
    }
}

/// Runs `basalt serve` as a primary on `conn`, expecting it to refuse to
/// start; returns what it printed on stderr.
fn refused_start(dir: &Path, conn: &str) -> String {
    let out = serve_primary(dir, conn).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && !stdout.contains("basalt serving"),
        "a second primary started: {stdout}"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `basalt serve` as a primary of `conn` on ephemeral ports, PostgreSQL off.
fn serve_primary(dir: &Path, conn: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"));
    c.args(["serve", "--http", "127.0.0.1:0", "--ilp", "127.0.0.1:0"])
        .args(["--pg", "off", "--object-store", conn])
        .arg("--data-dir")
        .arg(dir)
        .env("BASALT_LOG", "warn");
    c
}

/// Two primaries started at once on one fresh store: each claims epoch 1
/// with conditional create, exactly one gets it and serves; the other
/// refuses to start. The winner's history is the store's.
#[test]
fn two_primaries_at_once_never_fork_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let conn = fs_conn(dir.path());
    let spawn = |d: &Path| {
        serve_primary(d, &conn)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (adir, bdir) = (dir.path().join("a"), dir.path().join("b"));
    let mut nodes = [(spawn(&adir), adir), (spawn(&bdir), bdir)];
    // The loser exits; the winner prints its serving line and stays.
    let lost = eventually(Duration::from_secs(60), || {
        let exited: Vec<usize> = (0..2)
            .filter(|&i| nodes[i].0.try_wait().unwrap().is_some())
            .collect();
        assert!(exited.len() < 2, "both primaries exited");
        exited.first().copied()
    });
    let (loser, winner) = if lost == 0 {
        let [l, w] = nodes;
        (l, w)
    } else {
        let [w, l] = nodes;
        (l, w)
    };
    let (mut loser, (mut winner, wdir)) = (loser.0, winner);
    assert!(!loser.wait().unwrap().success());
    let mut loser_err = String::new();
    loser
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut loser_err)
        .unwrap();
    assert!(loser_err.contains("epoch 1"), "{loser_err}");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(winner.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("basalt serving"), "{line}");
    let http_addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap()
        .parse()
        .unwrap();
    for i in 0..3 {
        assert_eq!(
            http(http_addr, "POST", "/write", &[], &batch_body(i)).status,
            204
        );
    }
    let status = || http(http_addr, "GET", "/status", &[], b"").json();
    eventually(Duration::from_secs(30), || {
        (txn_of(&status(), "uploaded_txn") == 3).then_some(())
    });
    winner.kill().unwrap();
    winner.wait().unwrap();
    assert_chain(&conn, 3);
    assert!(wdir.join("_epoch").is_file());
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
    let conn = fs_conn(dir.path());
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

// ------------------------------------------------------------ failover

/// `GET /exec?query=sql`, parsed.
fn exec(addr: std::net::SocketAddr, sql: &str) -> serde_json::Value {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("query", sql);
    let r = http(addr, "GET", &format!("/exec?{}", q.finish()), &[], b"");
    assert_eq!(r.status, 200, "{sql}: {}", String::from_utf8_lossy(&r.body));
    // The answer is streamed in chunks.
    let (mut body, mut rest) = (Vec::new(), &r.body[..]);
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
            .expect("hex chunk size");
        if n == 0 {
            break;
        }
        body.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
        rest = &rest[eol + 2 + n + 2..];
    }
    serde_json::from_slice(&body).unwrap()
}

fn lifecycle(n: &ServerProcess) -> serde_json::Value {
    let r = http(n.http, "GET", "/lifecycle", &[], b"");
    assert_eq!(r.status, 200);
    r.json()
}

/// `SWITCH ROLE TO <to>` on `n`, then waits for the switch to end; returns
/// its report (`last_switch`).
fn switch(n: &ServerProcess, to: &str) -> serde_json::Value {
    let r = exec(n.http, &format!("SWITCH ROLE TO {to}"));
    assert_eq!(r["dataset"][0][1], true, "accepted, in flight: {r}");
    eventually(Duration::from_secs(60), || {
        let l = lifecycle(n);
        l["switch_in_flight"]
            .is_null()
            .then(|| l["last_switch"].clone())
    })
}

fn cpu_rows(addr: std::net::SocketAddr) -> u64 {
    exec(addr, "select count(*) from cpu")["dataset"][0][0]
        .as_u64()
        .expect("a count")
}

/// One row per line of table `sw`, `id` numbering them.
fn sw_body(first: u64, n: u64) -> Vec<u8> {
    let mut b = Vec::new();
    for id in first..first + n {
        writeln!(
            b,
            "sw,src=t id={id}i {}",
            1_700_000_000_000_000_000 + id * 1000
        )
        .unwrap();
    }
    b
}

/// Unplanned failover: the primary is killed with txns the store never
/// received; the replica is promoted with `SWITCH ROLE TO PRIMARY` and
/// takes writes; the old primary restarted with `--role primary` is fenced:
/// it refuses writes (421), forks nothing, and reports the txns it never
/// shipped. It cannot follow the new primary while it holds them.
fn unplanned_failover(conn: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (adir, bdir) = (dir.path().join("a"), dir.path().join("b"));
    // Segments are sealed at 1 KiB: a whole batch ships at once, a single
    // row waits (for ten minutes) and is lost by the failover.
    let hold = ["--segment-bytes-max", "1024", "--segment-age-ms", "600000"];
    let a = primary(&adir, Some(conn), &hold);
    let b = ServerProcess::start_replica(&bdir, conn);
    assert_eq!(lifecycle(&b)["role"], "replica");
    assert_eq!(
        exec(b.http, "select node_role()")["dataset"][0][0],
        "replica"
    );
    for i in 0..3 {
        assert_eq!(
            http(a.http, "POST", "/write", &[], &batch_body(i)).status,
            204
        );
    }
    eventually(Duration::from_secs(30), || {
        (txn_of(&b.status(), "applied_txn") == 3 && txn_of(&a.status(), "uploaded_txn") == 3)
            .then_some(())
    });
    let line = format!(
        "cpu,host=lost usage_user=1.0 {}\n",
        1_800_000_000_000_000_000u64
    );
    assert_eq!(
        http(a.http, "POST", "/write", &[], line.as_bytes()).status,
        204
    );
    let s = a.status();
    assert_eq!(
        (txn_of(&s, "committed_txn"), txn_of(&s, "uploaded_txn")),
        (4, 3)
    );
    a.kill9();

    let t0 = std::time::Instant::now();
    let report = switch(&b, "PRIMARY");
    assert_eq!(report["ok"], true, "{report}");
    let l = lifecycle(&b);
    assert_eq!(
        (l["role"].as_str(), l["writable"].as_bool()),
        (Some("primary"), Some(true))
    );
    assert_eq!(l["epoch"], 2);
    assert_eq!(
        exec(b.http, "select node_role()")["dataset"][0][0],
        "primary"
    );
    let r = http(b.http, "POST", "/write", &[], &batch_body(10));
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    eprintln!(
        "unplanned failover on {}: switch {:.1} ms, SWITCH ROLE to the first accepted write {:.1} ms",
        conn.split("::").next().unwrap(),
        report["millis"].as_f64().unwrap(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    // txn 4 of b is its epoch-start (empty); 5 is the batch.
    let last = eventually(Duration::from_secs(30), || {
        let s = b.status();
        let c = txn_of(&s, "committed_txn");
        (c == 5 && txn_of(&s, "uploaded_txn") == c).then_some(c)
    });

    // The old primary, restarted with its stale role.
    let a = primary(&adir, Some(conn), &hold);
    let l = lifecycle(&a);
    assert_eq!(l["writable"], false, "{l}");
    let fenced = &l["fenced"];
    assert!(
        fenced["reason"].as_str().unwrap().contains("superseded"),
        "{l}"
    );
    assert_eq!(
        fenced["unshipped"],
        serde_json::json!([{"table": "cpu", "first_txn": 4, "last_txn": 4}]),
        "the txn the store never received is reported"
    );
    let r = http(a.http, "POST", "/write", &[], &batch_body(20));
    assert_eq!(r.status, 421, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("new primary"));
    let m = String::from_utf8(http(a.http, "GET", "/metrics", &[], b"").body).unwrap();
    assert!(m.contains("basalt_node_fenced 1"), "{m}");
    // It cannot become a replica of a history it diverged from.
    let report = switch(&a, "REPLICA");
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("never received"),
        "{report}"
    );
    assert_eq!(lifecycle(&a)["role"], "primary");
    // One history in the store: b's, with the lost txn absent.
    assert_chain(conn, last);
    assert_eq!(
        cpu_rows(b.http),
        4 * BATCH + 1,
        "batches 0..3 and 10 (with its extra row)"
    );
    drop(a);
    // A third node bootstrapped from the store equals the new primary.
    let cdir = dir.path().join("c");
    let c = ServerProcess::start_replica(&cdir, conn);
    eventually(Duration::from_secs(30), || {
        (txn_of(&c.status(), "applied_txn") == last).then_some(())
    });
    assert!(b.terminate().success());
    assert!(c.terminate().success());
    assert_same_tables(&bdir, &cdir);
}

#[test]
fn unplanned_failover_on_fs() {
    let dir = tempfile::tempdir().unwrap();
    unplanned_failover(&fs_conn(dir.path()));
}

#[test]
fn unplanned_failover_on_s3_moto() {
    let moto = servers::moto("basalt");
    unplanned_failover(&s3_conn(&moto, "fo"));
}

/// A planned switchover under continuous ingestion: a writer sends to the
/// primary and, on 421, to the other node. The primary switches to replica
/// (refuses writes, uploads everything), the replica to primary. No
/// acknowledged row is lost, the writes move with a short gap, and the old
/// primary, now a replica, equals the new one.
fn planned_switchover(conn: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (adir, bdir) = (dir.path().join("a"), dir.path().join("b"));
    let a = primary(&adir, Some(conn), &[]);
    let b = ServerProcess::start_replica(&bdir, conn);
    // A third node follows the store through the role change, serving
    // reads all along.
    let cdir = dir.path().join("c");
    let c = ServerProcess::start_replica(&cdir, conn);
    let addrs = [a.http, b.http];
    let stop = Arc::new(AtomicBool::new(false));
    // (id of the first row, rows) of every acknowledged request, and when.
    let acked: Arc<Mutex<Vec<(u64, std::time::Instant, usize)>>> = Default::default();
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let (mut next, mut target, mut refused) = (0u64, 0usize, 0u64);
            while !stop.load(Ordering::Acquire) {
                let r = http(addrs[target], "POST", "/write", &[], &sw_body(next, 10));
                match r.status {
                    204 => {
                        acked
                            .lock()
                            .unwrap()
                            .push((next, std::time::Instant::now(), target));
                        next += 10;
                    }
                    421 => {
                        refused += 1;
                        target = 1 - target;
                    }
                    s => panic!("write answered {s}: {}", String::from_utf8_lossy(&r.body)),
                }
            }
            refused
        })
    };
    let acks = |node: usize| acked.lock().unwrap().iter().filter(|a| a.2 == node).count();
    eventually(Duration::from_secs(30), || (acks(0) >= 30).then_some(()));
    // The follower reads from once it has the table until the end.
    eventually(Duration::from_secs(30), || {
        let t = exec(
            c.http,
            "select count(*) from information_schema.tables where table_name = 'sw'",
        );
        (t["dataset"][0][0].as_u64() == Some(1)).then_some(())
    });
    let reader = {
        let (stop, addr) = (stop.clone(), c.http);
        std::thread::spawn(move || {
            let (mut seen, mut reads) = (0u64, 0u64);
            while !stop.load(Ordering::Acquire) {
                let r = exec(addr, "select count(*) from sw");
                let n = r["dataset"][0][0].as_u64().expect("a count");
                assert!(n >= seen, "the follower's count went back: {n} < {seen}");
                (seen, reads) = (n, reads + 1);
            }
            reads
        })
    };
    let down = switch(&a, "REPLICA");
    assert_eq!(down["ok"], true, "{down}");
    // Over PostgreSQL wire this time.
    let out = psql(b.pg.expect("pg served"), "SWITCH ROLE TO PRIMARY");
    assert!(out.starts_with("replica|t|primary|"), "{out}");
    let up = eventually(Duration::from_secs(60), || {
        let l = lifecycle(&b);
        l["switch_in_flight"]
            .is_null()
            .then(|| l["last_switch"].clone())
    });
    assert_eq!(up["ok"], true, "{up}");
    let status = psql(b.pg.unwrap(), "SWITCH STATUS");
    assert!(status.starts_with("primary|f||2|t|f|"), "{status}");
    assert_eq!(psql(b.pg.unwrap(), "select node_role()").trim(), "primary");
    eventually(Duration::from_secs(30), || (acks(1) >= 30).then_some(()));
    stop.store(true, Ordering::Release);
    let refused = writer.join().unwrap();
    assert!(reader.join().unwrap() > 0, "the follower served reads");
    let acked = acked.lock().unwrap().clone();
    // The write gap: from the last write a took to the first b took.
    let last_a = acked
        .iter()
        .filter(|x| x.2 == 0)
        .map(|x| x.1)
        .max()
        .unwrap();
    let first_b = acked
        .iter()
        .filter(|x| x.2 == 1)
        .map(|x| x.1)
        .min()
        .unwrap();
    eprintln!(
        "planned switchover on {}: to replica {:.1} ms, to primary {:.1} ms, write gap {:.1} ms ({refused} requests refused with 421)",
        conn.split("::").next().unwrap(),
        down["millis"].as_f64().unwrap(),
        up["millis"].as_f64().unwrap(),
        first_b.duration_since(last_a).as_secs_f64() * 1e3
    );
    // Every acknowledged row is on the new primary, once.
    let ids = exec(
        b.http,
        "select count(*), count(distinct id), max(id) from sw",
    );
    let want = acked.len() as u64 * 10;
    assert_eq!(ids["dataset"][0][0].as_u64(), Some(want), "{ids}");
    assert_eq!(ids["dataset"][0][1].as_u64(), Some(want), "{ids}");
    // The old primary follows the new one to the same bytes.
    let last = eventually(Duration::from_secs(30), || {
        let s = b.status();
        let c = s["tables"]["sw"]["committed_txn"].as_u64().unwrap_or(0);
        (s["tables"]["sw"]["uploaded_txn"].as_u64() == Some(c)).then_some(c)
    });
    eventually(Duration::from_secs(30), || {
        (a.status()["tables"]["sw"]["applied_txn"].as_u64() == Some(last)).then_some(())
    });
    eventually(Duration::from_secs(30), || {
        (c.status()["tables"]["sw"]["applied_txn"].as_u64() == Some(last)).then_some(())
    });
    assert_eq!(lifecycle(&a)["role"], "replica");
    assert_eq!(
        http(a.http, "POST", "/write", &[], &sw_body(0, 1)).status,
        421
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    assert!(c.terminate().success());
    let fb = table_files(&bdir.join("sw"));
    for (d, who) in [(&adir, "the old primary"), (&cdir, "the follower")] {
        let f = table_files(&d.join("sw"));
        assert_eq!(f.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
        for (k, v) in &f {
            assert!(v == &fb[k], "{k} differs between {who} and the new primary");
        }
    }
}

/// `psql -At -c sql` against a node's PostgreSQL port: rows as `a|b|c`.
fn psql(addr: std::net::SocketAddr, sql: &str) -> String {
    let o = std::process::Command::new("psql")
        .args([
            "-X",
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
        ])
        .args(["-U", "admin", "-d", "qdb", "-At", "-F", "|"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql ({e}): apt-get install postgresql-client"));
    assert!(
        o.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn planned_switchover_on_fs() {
    let dir = tempfile::tempdir().unwrap();
    planned_switchover(&fs_conn(dir.path()));
}

#[test]
fn planned_switchover_on_s3_moto() {
    let moto = servers::moto("basalt");
    planned_switchover(&s3_conn(&moto, "sw"));
}

/// A primary paused (SIGSTOP, as a long GC pause would) while a replica is
/// promoted, then resumed: it learns it was fenced (at its next upload or
/// ownership check) and stops taking writes; nothing it wrote after the
/// promotion enters the store's history, which stays single; what it
/// acknowledged in between is reported as unshipped.
#[test]
fn a_paused_primary_is_fenced_before_it_extends_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let conn = fs_conn(dir.path());
    let (adir, bdir) = (dir.path().join("a"), dir.path().join("b"));
    let a = primary(&adir, Some(&conn), &[]);
    let b = ServerProcess::start_replica(&bdir, &conn);
    for i in 0..3 {
        assert_eq!(
            http(a.http, "POST", "/write", &[], &batch_body(i)).status,
            204
        );
    }
    eventually(Duration::from_secs(30), || {
        (txn_of(&b.status(), "applied_txn") == 3).then_some(())
    });
    let pid = a.child.id() as libc::pid_t;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let report = switch(&b, "PRIMARY");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        http(b.http, "POST", "/write", &[], &batch_body(10)).status,
        204
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let resumed = std::time::Instant::now();
    // The old primary may take a few writes before it learns; each is
    // either refused or ends up reported as unshipped.
    let mut taken = 0;
    eventually(Duration::from_secs(30), || {
        let l = lifecycle(&a);
        if l["fenced"].is_object() {
            return Some(());
        }
        let r = http(a.http, "POST", "/write", &[], &batch_body(20 + taken));
        if r.status == 204 {
            taken += 1;
        }
        None
    });
    eprintln!(
        "paused primary fenced {:.1} ms after SIGCONT, having taken {taken} writes meanwhile",
        resumed.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(
        http(a.http, "POST", "/write", &[], &batch_body(30)).status,
        421
    );
    let committed = txn_of(&a.status(), "committed_txn");
    let fenced = lifecycle(&a)["fenced"].clone();
    if committed > 3 {
        assert_eq!(
            fenced["unshipped"],
            serde_json::json!([{"table": "cpu", "first_txn": 4, "last_txn": committed}]),
            "{fenced}"
        );
    }
    let last = eventually(Duration::from_secs(30), || {
        let s = b.status();
        let c = txn_of(&s, "committed_txn");
        (txn_of(&s, "uploaded_txn") == c).then_some(c)
    });
    assert_eq!(last, 5, "b's epoch-start and its one batch");
    assert!(b.status()["tables"]["cpu"]["stopped"].is_null());
    assert_chain(&conn, last);
    assert_eq!(
        cpu_rows(b.http),
        4 * BATCH + 1,
        "batches 0..3 and 10 (with its extra row)"
    );
}

/// `--ack-after upload`: four writers send to the primary, which is killed
/// with SIGKILL at a moment that varies from run to run; the replica is
/// promoted. Every row the primary acknowledged (204) is on the new
/// primary: an unplanned failover loses no acknowledged row.
fn ack_after_upload(conn: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (adir, bdir) = (dir.path().join("a"), dir.path().join("b"));
    let a = primary(&adir, Some(conn), &["--ack-after", "upload"]);
    let b = ServerProcess::start_replica(&bdir, conn);
    let acked: Arc<Mutex<Vec<(u64, Duration)>>> = Default::default();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (acked, addr) = (acked.clone(), a.http);
            std::thread::spawn(move || {
                for k in 0.. {
                    let first = w * 1_000_000_000 + k * 10;
                    let t = std::time::Instant::now();
                    if !common::post_acked(addr, &sw_body(first, 10)) {
                        return; // killed (or refused): not acknowledged
                    }
                    acked.lock().unwrap().push((first, t.elapsed()));
                }
            })
        })
        .collect();
    let kill_after = 20
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as usize
            % 100);
    eventually(Duration::from_secs(60), || {
        (acked.lock().unwrap().len() >= kill_after).then_some(())
    });
    a.kill9();
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let mut lat: Vec<f64> = acked.iter().map(|x| x.1.as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    eprintln!(
        "--ack-after upload on {}: {} requests acknowledged before SIGKILL, commit latency p50 {:.1} ms p99 {:.1} ms",
        conn.split("::").next().unwrap(),
        acked.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    let report = switch(&b, "PRIMARY");
    assert_eq!(report["ok"], true, "{report}");
    let have: std::collections::HashSet<u64> = exec(b.http, "select id from sw")["dataset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_u64().unwrap())
        .collect();
    for (first, _) in &acked {
        for id in *first..first + 10 {
            assert!(
                have.contains(&id),
                "acknowledged row id={id} is not on the new primary"
            );
        }
    }
}

#[test]
fn ack_after_upload_loses_no_acknowledged_row_on_fs() {
    let dir = tempfile::tempdir().unwrap();
    ack_after_upload(&fs_conn(dir.path()));
}

#[test]
fn ack_after_upload_loses_no_acknowledged_row_on_s3_moto() {
    let moto = servers::moto("basalt");
    ack_after_upload(&s3_conn(&moto, "ack"));
}

/// A network namespace with two links to this host: `ctl` (the test talks
/// to the node inside) and `store` (the node reaches the object store).
/// Taking `store` down partitions the node from the store and nothing else.
/// Removed (with its links) on drop.
struct Netns {
    name: String,
    store_link: String,
    /// Host-side address of each link: `.1`; the namespace's is `.2`.
    ctl_net: String,
    store_net: String,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id() % 100_000;
        let k = (id % 200 + 20).to_string();
        let n = Netns {
            name: format!("bslt{id}"),
            store_link: format!("bs{id}h"),
            ctl_net: format!("10.213.{k}"),
            store_net: format!("10.214.{k}"),
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &n.name])
            .output();
        ip(&["netns", "add", &n.name]);
        ip(&["-n", &n.name, "link", "set", "lo", "up"]);
        for (host, inside, net) in [
            (format!("bc{id}h"), format!("bc{id}n"), &n.ctl_net),
            (n.store_link.clone(), format!("bs{id}n"), &n.store_net),
        ] {
            ip(&[
                "link", "add", &host, "type", "veth", "peer", "name", &inside,
            ]);
            ip(&["link", "set", &inside, "netns", &n.name]);
            ip(&["addr", "add", &format!("{net}.1/30"), "dev", &host]);
            ip(&["link", "set", &host, "up"]);
            ip(&[
                "-n",
                &n.name,
                "addr",
                "add",
                &format!("{net}.2/30"),
                "dev",
                &inside,
            ]);
            ip(&["-n", &n.name, "link", "set", &inside, "up"]);
        }
        n
    }

    fn store_link(&self, up: bool) {
        ip(&[
            "link",
            "set",
            &self.store_link,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A primary cut off from the store (a real partition: its link to the
/// store goes down, the test still reaches it) while the replica is
/// promoted, then healed: it is fenced as soon as it reaches the store
/// again, forks nothing, and reports the txns it took meanwhile.
#[test]
fn a_partitioned_primary_is_fenced_when_healed_and_forks_nothing() {
    let ns = Netns::new();
    let moto = servers::moto_on("basalt", "0.0.0.0");
    let conn_at = |host: &str| {
        format!(
            "s3::bucket=basalt;root=part;region=us-east-1;endpoint=http://{host}:{};\
             access_key_id=test;secret_access_key=test;allow_http=true;",
            moto.port
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let (adir, bdir) = (dir.path().join("a"), dir.path().join("b"));
    let mut cmd = std::process::Command::new("ip");
    let listen = format!("{}.2:0", ns.ctl_net);
    cmd.args(["netns", "exec", &ns.name])
        .arg(env!("CARGO_BIN_EXE_basalt"))
        .args(["serve", "--http", &listen, "--ilp", &listen, "--pg", "off"])
        // A private address of the test's own namespace.
        .arg("--allow-unauthenticated")
        .arg("--data-dir")
        .arg(&adir)
        .args(["--object-store", &conn_at(&format!("{}.1", ns.store_net))])
        .args(["--segment-age-ms", "20"])
        .env("BASALT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let a = ServerProcess::spawn(cmd, &adir);
    let conn_b = conn_at("127.0.0.1");
    let b = ServerProcess::start_replica(&bdir, &conn_b);
    for i in 0..3 {
        assert_eq!(
            http(a.http, "POST", "/write", &[], &batch_body(i)).status,
            204
        );
    }
    eventually(Duration::from_secs(30), || {
        (txn_of(&b.status(), "applied_txn") == 3).then_some(())
    });
    ns.store_link(false);
    // Cut off, it still takes writes (durable here, not uploaded).
    for i in 3..5 {
        assert_eq!(
            http(a.http, "POST", "/write", &[], &batch_body(i)).status,
            204
        );
    }
    let report = switch(&b, "PRIMARY");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        http(b.http, "POST", "/write", &[], &batch_body(10)).status,
        204
    );
    assert_eq!(txn_of(&a.status(), "uploaded_txn"), 3, "a was cut off");
    ns.store_link(true);
    let healed = std::time::Instant::now();
    let fenced = eventually(Duration::from_secs(60), || {
        let l = lifecycle(&a);
        l["fenced"].is_object().then(|| l["fenced"].clone())
    });
    eprintln!(
        "partitioned primary fenced {:.0} ms after the partition healed",
        healed.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(
        fenced["unshipped"],
        serde_json::json!([{"table": "cpu", "first_txn": 4, "last_txn": 5}]),
        "{fenced}"
    );
    assert_eq!(
        http(a.http, "POST", "/write", &[], &batch_body(30)).status,
        421
    );
    let last = eventually(Duration::from_secs(30), || {
        let s = b.status();
        let c = txn_of(&s, "committed_txn");
        (txn_of(&s, "uploaded_txn") == c).then_some(c)
    });
    assert_eq!(last, 5, "b's epoch-start and its one batch");
    assert_chain(&conn_b, last);
    assert_eq!(
        cpu_rows(b.http),
        4 * BATCH + 1,
        "batches 0..3 and 10 (with its extra row)"
    );
}

// ------------------------------------------------- snapshots and restore

/// `BACKUP DATABASE` over /exec: the one row it answers with, as a map.
fn backup(n: &ServerProcess) -> HashMap<String, serde_json::Value> {
    let r = exec(n.http, "BACKUP DATABASE");
    let cols: Vec<String> = r["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    cols.into_iter()
        .zip(r["dataset"][0].as_array().unwrap().iter().cloned())
        .collect()
}

/// `basalt <args>` to completion: (success, stdout, stderr).
fn basalt(args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(args)
        .env("BASALT_LOG", "info")
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn restore_cmd(conn: &str, dir: &Path, extra: &[&str]) -> (bool, String, String) {
    let d = dir.display().to_string();
    let mut args = vec!["restore", "--object-store", conn, "--data-dir", &d];
    args.extend(extra);
    basalt(&args)
}

/// Posts `n` batches from `first` and waits until the store holds them.
fn post_batches(p: &ServerProcess, first: u64, n: u64) {
    for b in first..first + n {
        let resp = http(p.http, "POST", "/write", &[], &batch_body(b));
        assert_eq!(resp.status, 204, "{}", String::from_utf8_lossy(&resp.body));
    }
}

fn wait_uploaded(p: &ServerProcess) -> u64 {
    wait_uploaded_table(p, "cpu")
}

fn wait_uploaded_table(p: &ServerProcess, table: &str) -> u64 {
    eventually(Duration::from_secs(60), || {
        let s = p.status();
        let t = &s["tables"][table];
        let c = t["committed_txn"].as_u64().unwrap_or(0);
        (c > 0 && t["uploaded_txn"].as_u64() == Some(c)).then_some(c)
    })
}

/// A snapshot taken while four batches a second keep arriving; a new
/// replica starts from it (it applies only the segments after it) and
/// ends byte-identical to the primary, and equal by query.
fn bootstrap_from_a_snapshot_under_ingestion(conn: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (pdir, rdir) = (dir.path().join("primary"), dir.path().join("replica"));
    let p = primary(&pdir, Some(conn), &[]);
    post_batches(&p, 0, 20);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, addr) = (stop.clone(), p.http);
        std::thread::spawn(move || {
            let mut b = 20;
            while !stop.load(Ordering::Acquire) {
                let resp = http(addr, "POST", "/write", &[], &batch_body(b));
                assert_eq!(resp.status, 204);
                b += 1;
            }
            b
        })
    };
    // Wait until the writer has committed more, so the snapshot is cut
    // while it writes.
    eventually(Duration::from_secs(30), || {
        (txn_of(&p.status(), "committed_txn") > 25).then_some(())
    });
    let b = backup(&p);
    assert!(b["tables"].as_u64() == Some(1), "{b:?}");
    assert!(b["parts_uploaded"].as_u64().unwrap() >= 2, "{b:?}");
    assert!(b["rows"].as_u64().unwrap() >= 20 * BATCH, "{b:?}");
    // And over PG wire: the second snapshot reuses the unchanged parts.
    let pg = psql(p.pg.unwrap(), "BACKUP DATABASE");
    assert!(pg.starts_with('1'), "snapshot number 1: {pg}");
    stop.store(true, Ordering::Release);
    let batches = writer.join().unwrap();
    let total = wait_uploaded(&p);
    assert!(total >= batches, "{total} txns for {batches} batches");

    let r = ServerProcess::start_replica(&rdir, conn);
    wait_replicated(&p, &r);
    let rs = r.status();
    let segments_applied = rs["tables"]["cpu"]["segments_applied"].as_u64().unwrap();
    let segments_in_store = assert_chain(conn, total) as u64;
    assert!(
        segments_applied < segments_in_store,
        "the replica applied {segments_applied} of {segments_in_store} segments: it started from the snapshot"
    );
    assert_eq!(cpu_rows(p.http), cpu_rows(r.http));
    assert!(p.terminate().success());
    assert!(r.terminate().success());
    assert_same_tables(&pdir, &rdir);
}

#[test]
fn bootstrap_from_a_snapshot_under_ingestion_on_fs() {
    let dir = tempfile::tempdir().unwrap();
    bootstrap_from_a_snapshot_under_ingestion(&fs_conn(dir.path()));
}

#[test]
fn bootstrap_from_a_snapshot_under_ingestion_on_s3_moto() {
    let moto = servers::moto("basalt");
    bootstrap_from_a_snapshot_under_ingestion(&s3_conn(&moto, "snap"));
}

#[test]
fn bootstrap_from_a_snapshot_under_ingestion_on_azurite() {
    let az = servers::azurite("basalt");
    let conn = format!(
        "azblob::container=basalt;root=snap;account_name=devstoreaccount1;\
         account_key=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
         endpoint=http://127.0.0.1:{}/devstoreaccount1;",
        az.port
    );
    bootstrap_from_a_snapshot_under_ingestion(&conn);
}

/// Rows of `cpu` in a data directory (it must have the table).
fn rows_in(dir: &Path) -> u64 {
    TableReader::open(dir, "cpu")
        .unwrap()
        .state()
        .unwrap()
        .row_count()
}

/// Rows of batches `0..n` (batch_body adds one row from batch 4 on).
fn rows_of_batches(n: u64) -> u64 {
    n * BATCH + n.saturating_sub(4)
}

/// Restores to moments between known batches, to a txn, and to the
/// latest; a restore killed with SIGKILL completes when run again; a
/// restored directory serves, and as a primary of the same store it is
/// refused (it would fork the history).
fn point_in_time_restore(conn: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = primary(&dir.path().join("primary"), Some(conn), &[]);
    post_batches(&p, 0, 3);
    wait_uploaded(&p);
    backup(&p);
    let t1 = basalt::db::now_us();
    post_batches(&p, 3, 3);
    let t2 = basalt::db::now_us();
    post_batches(&p, 6, 3);
    wait_uploaded(&p);
    backup(&p);
    post_batches(&p, 9, 3);
    let total = wait_uploaded(&p);
    assert_eq!(total, 12);

    let (ok, out, err) = basalt(&["backups", "--object-store", conn]);
    assert!(ok, "{err}");
    assert!(
        out.contains("snapshot      0") && out.contains("snapshot      1"),
        "{out}"
    );
    assert!(out.contains("segments hold txns 1..=12"), "{out}");

    // Between batches 2 and 3: snapshot 0 alone.
    let d1 = dir.path().join("r1");
    let (ok, out, err) = restore_cmd(conn, &d1, &["--to-time", &t1.to_string()]);
    assert!(ok, "{err}");
    assert!(out.contains("snapshot 0"), "{out}");
    assert_eq!(rows_in(&d1), rows_of_batches(3));
    // Between 5 and 6, as RFC 3339: snapshot 0, then segments up to txn 6.
    let d2 = dir.path().join("r2");
    let rfc = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(t2)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (ok, _, err) = restore_cmd(conn, &d2, &["--to-time", &rfc]);
    assert!(ok, "{err}");
    assert_eq!(rows_in(&d2), rows_of_batches(6));
    assert_eq!(
        TableReader::open(&d2, "cpu").unwrap().state().unwrap().txn,
        6
    );
    // By txn.
    let d3 = dir.path().join("r3");
    let (ok, _, err) = restore_cmd(conn, &d3, &["--to-txn", "cpu=8"]);
    assert!(ok, "{err}");
    assert_eq!(rows_in(&d3), rows_of_batches(8));
    // Latest: snapshot 1 and the segments after it.
    let d4 = dir.path().join("r4");
    let (ok, out, err) = restore_cmd(conn, &d4, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("snapshot 1"), "{out}");
    assert_eq!(rows_in(&d4), rows_of_batches(12));

    // Refusals: a txn past the store's, a moment in the future, a
    // directory that is not empty.
    let (ok, _, err) = restore_cmd(conn, &dir.path().join("r5"), &["--to-txn", "cpu=99"]);
    assert!(!ok && err.contains("holds txns of cpu up to 12"), "{err}");
    let future = (basalt::db::now_us() + 3_600_000_000).to_string();
    let (ok, _, err) = restore_cmd(conn, &dir.path().join("r6"), &["--to-time", &future]);
    assert!(!ok && err.contains("in the future"), "{err}");
    let (ok, _, err) = restore_cmd(conn, &d4, &[]);
    assert!(!ok && err.contains("not empty"), "{err}");

    // The restored directory serves (standalone), and is refused as a
    // second primary of the store it came from.
    let s = ServerProcess::start(&d2, &["--object-store", "off"]);
    assert_eq!(cpu_rows(s.http), rows_of_batches(6));
    assert!(s.terminate().success());
    let refused = refused_start(&d2, conn);
    assert!(refused.contains("fork"), "{refused}");
    assert!(p.terminate().success());
}

#[test]
fn point_in_time_restore_on_fs() {
    let dir = tempfile::tempdir().unwrap();
    point_in_time_restore(&fs_conn(dir.path()));
}

#[test]
fn point_in_time_restore_on_s3_moto() {
    let moto = servers::moto("basalt");
    point_in_time_restore(&s3_conn(&moto, "pitr"));
}

#[test]
fn point_in_time_restore_on_azurite() {
    let az = servers::azurite("basalt");
    let conn = format!(
        "azblob::container=basalt;root=pitr;account_name=devstoreaccount1;\
         account_key=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
         endpoint=http://127.0.0.1:{}/devstoreaccount1;",
        az.port
    );
    point_in_time_restore(&conn);
}

/// A restore killed with SIGKILL part way resumes when run again and ends
/// with exactly the rows of the target.
#[test]
fn a_restore_killed_part_way_completes_when_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let conn = fs_conn(dir.path());
    // Many small segments: the restore applies and checkpoints each.
    let p = primary(
        &dir.path().join("primary"),
        Some(&conn),
        &["--segment-age-ms", "0"],
    );
    for b in 0..300 {
        let line = format!("k,s=a v={b}i {}\n", 1_700_000_000_000_000_000u64 + b * 1000);
        assert_eq!(
            http(p.http, "POST", "/write", &[], line.as_bytes()).status,
            204
        );
    }
    let total = eventually(Duration::from_secs(60), || {
        let s = p.status();
        let c = s["tables"]["k"]["committed_txn"].as_u64().unwrap_or(0);
        (c == 300 && s["tables"]["k"]["uploaded_txn"].as_u64() == Some(300)).then_some(c)
    });
    assert!(p.terminate().success());
    let target = dir.path().join("restored");
    let d = target.display().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args([
            "restore",
            "--object-store",
            &conn,
            "--data-dir",
            &d,
            "--to-txn",
            "k=250",
        ])
        .env("BASALT_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the table has some txns, before it has them all.
    let ckpt = |dir: &Path| {
        std::fs::read(dir.join("k").join("_ckpt"))
            .ok()
            .and_then(|b| basalt::table::state::decode_txn(Path::new("_ckpt"), &b).ok())
            .map_or(0, |s| s.txn)
    };
    eventually(Duration::from_secs(60), || {
        (ckpt(&target) > 0).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = ckpt(&target);
    assert!(
        at_kill < 250
            && target
                .join(basalt::replication::restore::MARKER_FILE)
                .exists(),
        "killed part way (at txn {at_kill} of 250)"
    );
    // Another target is refused in the half-restored directory, and so is
    // serving it.
    let (ok, _, err) = restore_cmd(&conn, &target, &[]);
    assert!(!ok && err.contains("unfinished restore"), "{err}");
    let (ok, _, err) = basalt(&[
        "serve",
        "--data-dir",
        &d,
        "--object-store",
        "off",
        "--http",
        "127.0.0.1:0",
        "--ilp",
        "127.0.0.1:0",
        "--pg",
        "off",
    ]);
    assert!(!ok && err.contains("unfinished restore"), "{err}");
    let (ok, out, err) = restore_cmd(&conn, &target, &["--to-txn", "k=250"]);
    assert!(ok, "{err}");
    assert!(out.contains("k: txn 250"), "{out}");
    let scan = TableReader::open(&target, "k")
        .unwrap()
        .scan(&["v"], None)
        .unwrap();
    let got: Vec<i64> = (0..scan.row_count())
        .map(|i| match scan.value(0, i) {
            Value::Long(v) => v,
            v => panic!("{v:?}"),
        })
        .collect();
    assert_eq!(
        got,
        (0..250).collect::<Vec<i64>>(),
        "every row of txns 1..=250, once"
    );
    assert_eq!(total, 300);
}

/// Retention deletes old snapshots, their parts and the segments below the
/// oldest kept snapshot (counted in /metrics); a new replica still
/// converges, a replica stopped before and restarted after is rebuilt
/// from the newest snapshot; a restore to before what is kept is refused
/// with the restorable range; a damaged snapshot part is refused by name.
#[test]
fn retention_deletes_what_no_snapshot_needs_and_replicas_still_converge() {
    let dir = tempfile::tempdir().unwrap();
    let conn = fs_conn(dir.path());
    let (pdir, r1dir, r2dir) = (
        dir.path().join("primary"),
        dir.path().join("r1"),
        dir.path().join("r2"),
    );
    let p = primary(
        &pdir,
        Some(&conn),
        &[
            "--retention",
            "1ms",
            "--retention-snapshots",
            "1",
            "--retention-grace",
            "1ms",
            "--snapshot-interval",
            "1s",
        ],
    );
    post_batches(&p, 0, 4);
    let r1 = ServerProcess::start_replica(&r1dir, &conn);
    wait_replicated(&p, &r1);
    assert!(r1.terminate().success());
    let t_early = basalt::db::now_us();
    for round in 0..3 {
        post_batches(&p, 4 + round * 4, 4);
        wait_uploaded(&p);
        backup(&p);
    }
    // Retention runs after each scheduled snapshot: segment 1 goes.
    let metric = |name: &str| {
        let m = String::from_utf8(http(p.http, "GET", "/metrics", &[], b"").body).unwrap();
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Scheduled snapshots (every second) come on top of the three taken
    // by hand, and retention deleted segments, snapshots and parts.
    eventually(Duration::from_secs(60), || {
        (metric("basalt_snapshots_taken_total") > 4.0
            && metric("basalt_retention_deleted_segments_total") > 0.0
            && metric("basalt_retention_deleted_snapshots_total") > 0.0
            && metric("basalt_retention_deleted_parts_total") > 0.0
            && metric("basalt_retention_deleted_bytes_total") > 0.0)
            .then_some(())
    });
    let store_dir = dir.path().join("store");
    assert!(
        !store_dir
            .join("tables/cpu/00000000000000000001.seg")
            .exists(),
        "the first segment was deleted"
    );
    let (ok, out, _) = basalt(&["backups", "--object-store", &conn]);
    assert!(ok);
    assert!(
        !out.contains("snapshot      0 "),
        "snapshot 0 deleted: {out}"
    );
    post_batches(&p, 16, 2);
    let total = wait_uploaded(&p);
    // A new replica: from the newest snapshot.
    let r2 = ServerProcess::start_replica(&r2dir, &conn);
    wait_replicated(&p, &r2);
    // The replica stopped at txn 4 finds its next segments gone: rebuilt.
    let r1 = ServerProcess::start_replica(&r1dir, &conn);
    wait_replicated(&p, &r1);
    assert_eq!(cpu_rows(r1.http), rows_of_batches(18));
    // Before what is kept: refused, with the range.
    let (ok, _, err) = restore_cmd(
        &conn,
        &dir.path().join("early"),
        &["--to-time", &t_early.to_string()],
    );
    assert!(!ok && err.contains("restores any moment from"), "{err}");
    assert!(p.terminate().success());
    assert!(r1.terminate().success());
    assert!(r2.terminate().success());
    assert_same_tables(&pdir, &r1dir);
    assert_same_tables(&pdir, &r2dir);
    assert_eq!(rows_in(&pdir), rows_of_batches(18));
    assert!(total >= 18);

    // A damaged part: the restore names it and builds nothing from it.
    let mut parts = Vec::new();
    let mut stack = vec![store_dir.join("snapshots/parts")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e);
            } else if e.extension().is_some_and(|x| x == "part")
                && !e.to_string_lossy().contains("_sym")
            {
                parts.push(e);
            }
        }
    }
    let victim = parts
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(victim, &bytes).unwrap();
    let (ok, _, err) = restore_cmd(&conn, &dir.path().join("bad"), &[]);
    let name = victim.file_name().unwrap().to_string_lossy();
    assert!(
        !ok && err.contains(&*name) && err.contains("refused"),
        "{err}"
    );
}

/// A second snapshot after new rows in one partition of ten uploads that
/// partition (and the dictionaries) only: the bytes it reports are the
/// bytes that appeared in the store.
#[test]
fn a_second_snapshot_uploads_only_the_changed_partition() {
    let dir = tempfile::tempdir().unwrap();
    let conn = fs_conn(dir.path());
    let p = primary(&dir.path().join("primary"), Some(&conn), &[]);
    let day_ns = 86_400_000_000_000u64;
    let base = 1_700_006_400_000_000_000u64; // a midnight
    let mut body = Vec::new();
    for i in 0..20_000u64 {
        let day = i % 10;
        writeln!(
            body,
            "m,host=h{} v={i}i,x={}.5 {}",
            i % 7,
            i,
            base + day * day_ns + i * 1000
        )
        .unwrap();
    }
    assert_eq!(http(p.http, "POST", "/write", &[], &body).status, 204);
    wait_uploaded_table(&p, "m");
    let parts_bytes = || {
        let mut n = 0;
        let mut stack = vec![dir.path().join("store/snapshots/parts")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten() {
                let e = e.unwrap().path();
                if e.is_dir() {
                    stack.push(e);
                } else {
                    n += std::fs::metadata(&e).unwrap().len();
                }
            }
        }
        n
    };
    let first = backup(&p);
    let first_bytes = first["bytes_uploaded"].as_u64().unwrap();
    assert_eq!(first["parts_uploaded"].as_u64(), Some(11), "{first:?}");
    assert_eq!(parts_bytes(), first_bytes);
    // 1% more rows, all in the last day.
    let mut body = Vec::new();
    for i in 0..200u64 {
        writeln!(
            body,
            "m,host=h{} v={i}i,x=1.5 {}",
            i % 7,
            base + 9 * day_ns + 500_000_000_000 + i
        )
        .unwrap();
    }
    assert_eq!(http(p.http, "POST", "/write", &[], &body).status, 204);
    wait_uploaded_table(&p, "m");
    let second = backup(&p);
    let second_bytes = second["bytes_uploaded"].as_u64().unwrap();
    assert_eq!(second["parts_reused"].as_u64(), Some(10), "{second:?}");
    assert_eq!(
        parts_bytes(),
        first_bytes + second_bytes,
        "the PUT bytes are what appeared in the store"
    );
    assert!(
        second_bytes * 20 <= first_bytes * 3,
        "incremental {second_bytes} bytes vs first {first_bytes}"
    );
    // A third with nothing new uploads nothing.
    let third = backup(&p);
    assert_eq!(third["bytes_uploaded"].as_u64(), Some(0), "{third:?}");
    assert!(p.terminate().success());
}

/// `--backup-object-store`: snapshots go to their own store; a replica
/// given it starts from them, `basalt restore` and `basalt backups` read
/// them there.
#[test]
fn snapshots_in_a_separate_store() {
    let dir = tempfile::tempdir().unwrap();
    let conn = fs_conn(dir.path());
    let backups = format!("fs::root={};", dir.path().join("backups").display());
    let both = ["--object-store", &conn, "--backup-object-store", &backups];
    let pdir = dir.path().join("primary");
    let p = primary(&pdir, None, &both);
    post_batches(&p, 0, 6);
    wait_uploaded(&p);
    let b = backup(&p);
    assert_eq!(b["tables"].as_u64(), Some(1), "{b:?}");
    assert!(dir
        .path()
        .join("backups/snapshots/manifests")
        .join(format!("{:020}", 0))
        .exists());
    assert!(
        !dir.path().join("store/snapshots").exists(),
        "nothing under the replication store"
    );
    post_batches(&p, 6, 2);
    let total = wait_uploaded(&p);

    let rdir = dir.path().join("replica");
    let mut args = vec!["--role", "replica", "--replica-poll-ms", "20"];
    args.extend(both);
    let r = ServerProcess::start(&rdir, &args);
    wait_replicated(&p, &r);
    let applied = r.status()["tables"]["cpu"]["segments_applied"]
        .as_u64()
        .unwrap();
    assert!(
        (applied as usize) < assert_chain(&conn, total),
        "bootstrapped from the separate store"
    );

    let out = dir.path().join("restored");
    let (ok, out_text, err) = restore_cmd(&conn, &out, &["--backup-object-store", &backups]);
    assert!(ok, "{err}");
    assert!(out_text.contains("snapshot 0"), "{out_text}");
    assert_eq!(rows_in(&out), rows_of_batches(8));
    let (ok, list, _) = basalt(&[
        "backups",
        "--object-store",
        &conn,
        "--backup-object-store",
        &backups,
    ]);
    assert!(
        ok && list.contains("snapshots in fs::root=") && list.contains("snapshot      0"),
        "{list}"
    );
    assert!(p.terminate().success());
    assert!(r.terminate().success());
    assert_same_tables(&pdir, &rdir);
}
