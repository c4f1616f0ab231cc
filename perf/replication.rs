//! Whole-system replication runs: a release `basalt serve` primary and a
//! `basalt serve --role replica` child on this machine, through a store on
//! the same disk (`fs`) or moto's S3 server on loopback, with hdrhistogram
//! percentiles and a yardstick measured in the same run.
//!
//! cargo bench --bench replication              # everything
//! cargo bench --bench replication -- lag       # replication lag at a steady rate
//! cargo bench --bench replication -- ingest    # ingest with replication on vs off
//! cargo bench --bench replication -- catchup   # replica catch-up from a backlog
//! cargo bench --bench replication -- failover  # role switches and --ack-after upload
//! cargo bench --bench replication -- backup    # snapshots, bootstrap vs replay, restore
//! PERF_BACKUP_ROWS=10000000  rows of the reference table for `backup` (default 10M)
//! cargo bench --bench replication -- soak      # kill -9 cycles of primary and replica (moto)
//! PERF_SOAK_CYCLES=100   kill -9 cycles for `soak` (default 100)
//! PERF_SWITCH_ROUNDS=10  planned switchovers per store (default 10)
//! PERF_LAG_SECS=20       seconds of steady load per lag run (default 20)
//! PERF_LAG_RATE=100000   rows per second (default 100k)
//! PERF_LAG_ROWS=1000     rows per request (default 1000; PERF_LAG_ROWS=1
//!                        PERF_LAG_RATE=1 is single rows at one commit per second)
//! PERF_ROWS=2000000      rows per ingest replay (default 2M)
//! PERF_CATCHUP_ROWS=10000000  backlog rows (default 10M)
//! PERF_DIR=...           where the data goes (default target/perf-data)
//! PERF_PRIMARY_ARGS="--checkpoint-interval-ms 60000"  more flags for the primary
//! BASALT_TEST_MOTO=...   moto_server (default target/test-venv/bin/moto_server,
//!                        installed by ./scripts/test.sh); S3 runs are skipped
//!                        with a message when it is missing
//!
//! Lag = from the 204 of an HTTP request on the primary (its rows durable)
//! to the moment the replica's readers see them (its `_txn` counts them).
//! The yardstick of a lag run is the store itself: a PUT of a 256 KiB object
//! followed by a GET of it, timed in the same run.

mod node;
#[path = "../tests/servers/mod.rs"]
mod servers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt::gen::CpuGenerator;
use basalt::store::StoreConfig;
use hdrhistogram::Histogram;
use node::{cpu_seconds, get_json, ilp_text, visible_rows, wait_visible, KeepAlive, Server};
use object_store::{ObjectStoreExt, PutPayload};

/// moto's S3 server on a free port with bucket `basalt` (the tests'
/// starter), if installed.
fn moto() -> Option<servers::ServerGuard> {
    let bin = std::env::var_os("BASALT_TEST_MOTO").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/moto_server"),
        PathBuf::from,
    );
    if !bin.exists() {
        println!(
            "  (moto_server not found at {}: S3 runs skipped; ./scripts/test.sh installs it)",
            bin.display()
        );
        return None;
    }
    Some(servers::moto("basalt"))
}

fn s3_conn(port: u16, root: &str) -> String {
    format!("s3::bucket=basalt;root={root};region=us-east-1;endpoint=http://127.0.0.1:{port};access_key_id=t;secret_access_key=t;allow_http=true;")
}

/// A runtime (two worker threads when `multi`) and a store built for it
/// (a cloud store's pooled connections belong to one runtime).
fn store_on_runtime(conn: &str, multi: bool) -> (tokio::runtime::Runtime, basalt::store::Store) {
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("runtime");
    let store = StoreConfig::parse(conn)
        .expect("conn")
        .build()
        .expect("store");
    (rt, store)
}

/// PUT 256 KiB then GET it back, `n` times: the store's own round trip.
fn store_yardstick(conn: &str, n: usize) -> Histogram<u64> {
    let (rt, store) = store_on_runtime(conn, false);
    let body = bytes::Bytes::from(vec![7u8; 256 * 1024]);
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..n {
        let key = store.path(&["yardstick", &format!("{i:06}")]);
        let t = Instant::now();
        rt.block_on(async {
            store
                .inner
                .put(&key, PutPayload::from(body.clone()))
                .await?;
            store.inner.get(&key).await?.bytes().await
        })
        .expect("put+get");
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    h
}

fn pct(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.1} ms  p99 {:.1} ms  p999 {:.1} ms  max {:.1} ms",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.value_at_quantile(0.999) as f64 / 1e3,
        h.max() as f64 / 1e3
    )
}

fn store_counts(s: &Server) -> (u64, u64) {
    let j = get_json(s.http, "/status");
    let r = &j["store_requests"];
    (
        r["puts"].as_u64().unwrap_or(0),
        r["put_bytes"].as_u64().unwrap_or(0),
    )
}

/// Steady load of `rate` rows/s in 1000-row HTTP requests for `secs`;
/// lag of every request to visibility on the replica.
#[allow(clippy::too_many_arguments)]
fn lag_run(
    base: &Path,
    name: &str,
    conn: &str,
    primary: &[&str],
    replica: &[&str],
    secs: u64,
    rate: u64,
) {
    println!("\n{name}");
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut pargs = vec!["--object-store", conn];
    pargs.extend(primary);
    let extra = std::env::var("PERF_PRIMARY_ARGS").unwrap_or_default();
    pargs.extend(extra.split_whitespace());
    let p = node::start(&dir.join("primary"), &pargs);
    let mut rargs = vec!["--role", "replica", "--object-store", conn];
    rargs.extend(replica);
    let r = node::start(&dir.join("replica"), &rargs);
    let yard = store_yardstick(conn, 100);
    let gen = CpuGenerator::default();
    let req_rows: u64 = std::env::var("PERF_LAG_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let requests = secs * rate / req_rows;
    let interval = Duration::from_micros(1_000_000 * req_rows / rate);
    // Request 0 creates the table; the run starts once the replica has it
    // (a replica looks for new tables once a second).
    let bodies: Vec<Vec<u8>> = (0..=requests)
        .map(|k| ilp_text(&gen, "cpu", k * req_rows, req_rows))
        .collect();
    let mut warm = KeepAlive::connect(p.http);
    assert_eq!(warm.post(&bodies[0]), 204);
    let created = Instant::now();
    wait_visible(&r.dir, &["cpu".to_string()], req_rows);
    println!(
        "  new table: visible on the replica {:.1} ms after the 204 that created it",
        created.elapsed().as_secs_f64() * 1e3
    );
    let bodies = &bodies[1..];
    let ilp_bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();
    let (puts0, put_bytes0) = store_counts(&p);
    let acks: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; requests as usize]));
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let rdir = r.dir.clone();
    // The watcher: when the replica's readers see n rows, requests below
    // n / req_rows became visible now.
    let watcher = {
        let (acks, done, seen) = (acks.clone(), done.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut next = 0u64;
            let tables = ["cpu".to_string()];
            let deadline_after_done = Duration::from_secs(60);
            let mut done_at: Option<Instant> = None;
            while next < requests {
                let rows = visible_rows(&rdir, &tables);
                let now = Instant::now();
                let upto = (rows / req_rows).saturating_sub(1).min(requests);
                while next < upto {
                    let ack = acks.lock().expect("acks")[next as usize];
                    match ack {
                        Some(a) => {
                            h.record(now.saturating_duration_since(a).as_micros() as u64)
                                .expect("record");
                            next += 1;
                        }
                        // Visible before we noted the ack: lag ~0.
                        None => std::thread::yield_now(),
                    }
                }
                seen.store(next, Ordering::Relaxed);
                if done.load(Ordering::Relaxed) {
                    let t = *done_at.get_or_insert(now);
                    if t.elapsed() > deadline_after_done {
                        println!("  replica stopped at {next} of {requests} requests");
                        break;
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            h
        })
    };
    let cpu0 = (cpu_seconds(p.child.id()), cpu_seconds(r.child.id()));
    let mut c = KeepAlive::connect(p.http);
    let t0 = Instant::now();
    let mut behind = 0u32;
    for (k, b) in bodies.iter().enumerate() {
        let due = t0 + interval * k as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > interval * 10 {
            behind += 1;
        }
        assert_eq!(c.post(b), 204);
        acks.lock().expect("acks")[k] = Some(Instant::now());
    }
    let elapsed = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    let h = watcher.join().expect("watcher");
    let (puts1, put_bytes1) = store_counts(&p);
    let cpu1 = (cpu_seconds(p.child.id()), cpu_seconds(r.child.id()));
    let (puts, put_bytes) = (puts1 - puts0, put_bytes1 - put_bytes0);
    println!(
        "  load: {} rows in {:.1} s = {:.0} rows/s ({} requests fell >10 intervals behind schedule)",
        requests * req_rows,
        elapsed.as_secs_f64(),
        (requests * req_rows) as f64 / elapsed.as_secs_f64(),
        behind
    );
    println!(
        "  lag (204 on primary -> visible on replica), {} requests: {}",
        h.len(),
        pct(&h)
    );
    println!(
        "  yardstick, this store: PUT 256 KiB + GET it back, 100 times: {}",
        pct(&yard)
    );
    println!(
        "  PUTs: {puts} = {:.1}/s for one table; uploaded {:.1} MB = {:.3} bytes per ILP byte ({:.1} MB ILP)",
        puts as f64 / elapsed.as_secs_f64(),
        put_bytes as f64 / 1e6,
        put_bytes as f64 / ilp_bytes as f64,
        ilp_bytes as f64 / 1e6
    );
    println!(
        "  CPU over the run: primary {:.2} s, replica {:.2} s",
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1
    );
    let _ = seen;
}

/// TCP replay of `rows` over 4 connections into 4 tables, replication off
/// and on (fs) alternately, twice each.
fn ingest_on_off(base: &Path, rows: u64) {
    println!("\ningest with replication off vs on (fs store on the same disk), TCP replay, 4 connections");
    let gen = CpuGenerator::default();
    let conns = 4u64;
    let per = rows / conns;
    let names: Vec<String> = (0..conns).map(|k| format!("cpu_{k}")).collect();
    let texts: Vec<Vec<u8>> = (0..conns)
        .map(|k| ilp_text(&gen, &names[k as usize], k * per, per))
        .collect();
    let bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
    let mut results: Vec<(bool, f64, f64)> = Vec::new();
    for round in 0..2 {
        for on in [false, true] {
            let dir = base.join(if on { "ingest-on" } else { "ingest-off" });
            let _ = std::fs::remove_dir_all(&dir);
            let store = if on {
                "fs::root=".to_string() + &dir.join("store").display().to_string() + ";"
            } else {
                "off".into()
            };
            let s = node::start(&dir.join("data"), &["--object-store", &store]);
            let cpu0 = cpu_seconds(s.child.id());
            let t0 = Instant::now();
            node::tcp_send_all(s.ilp, &texts);
            wait_visible(&s.dir, &names, per * conns);
            let visible = t0.elapsed().as_secs_f64();
            let rate = (per * conns) as f64 / visible;
            let cpu_us = (cpu_seconds(s.child.id()) - cpu0) * 1e6 / (per * conns) as f64;
            let mut line = format!(
                "  round {round} replication {:<3}: {:>10.0} rows/s  server CPU {cpu_us:.3} µs/row",
                if on { "on" } else { "off" },
                rate,
            );
            if on {
                // Until the store has everything.
                node::wait_uploaded(&s, &names);
                let (puts, put_bytes) = store_counts(&s);
                line += &format!(
                    "  all uploaded after {:.3} s; {puts} PUTs, {:.3} uploaded bytes per ILP byte",
                    t0.elapsed().as_secs_f64(),
                    put_bytes as f64 / bytes as f64
                );
            }
            println!("{line}");
            results.push((on, rate, cpu_us));
        }
    }
    let avg = |on: bool, f: fn(&(bool, f64, f64)) -> f64| {
        let v: Vec<f64> = results.iter().filter(|r| r.0 == on).map(f).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!(
        "  -> on / off = {:.3} (target >= 0.97); extra server CPU with replication on {:+.3} µs/row (target <= 0.05)",
        avg(true, |r| r.1) / avg(false, |r| r.1),
        avg(true, |r| r.2) - avg(false, |r| r.2)
    );
}

/// A 10M-row backlog in the store, then a replica started from nothing.
fn catchup(base: &Path, rows: u64, conn: &str, what: &str) {
    println!("\nreplica catch-up from a {rows}-row backlog ({what})");
    let dir = base.join(format!("catchup-{what}"));
    let _ = std::fs::remove_dir_all(&dir);
    let gen = CpuGenerator::default();
    let conns = 4u64;
    let per = rows / conns;
    let names: Vec<String> = (0..conns).map(|k| format!("cpu_{k}")).collect();
    let p = node::start(&dir.join("primary"), &["--object-store", conn]);
    let t0 = Instant::now();
    // Generated per connection while sending, in 100k-row pieces.
    std::thread::scope(|sc| {
        for (k, name) in names.iter().enumerate() {
            let (addr, gen) = (p.ilp, &gen);
            sc.spawn(move || {
                use std::io::Write;
                let mut c = std::net::TcpStream::connect(addr).expect("connect");
                let mut first = k as u64 * per;
                let end = first + per;
                while first < end {
                    let n = (end - first).min(100_000);
                    c.write_all(&ilp_text(gen, name, first, n)).expect("send");
                    first += n;
                }
            });
        }
    });
    wait_visible(&p.dir, &names, per * conns);
    let ingest = t0.elapsed().as_secs_f64();
    node::wait_uploaded(&p, &names);
    let uploaded = t0.elapsed().as_secs_f64();
    let (puts, put_bytes) = store_counts(&p);
    println!(
        "  primary: ingest (generated while sent, 4 TCP connections) {:.0} rows/s; all uploaded after {:.1} s: {puts} PUTs, {:.1} MB",
        (per * conns) as f64 / ingest,
        uploaded,
        put_bytes as f64 / 1e6
    );
    let rdir = dir.join("replica");
    let t1 = Instant::now();
    let r = node::start(&rdir, &["--role", "replica", "--object-store", conn]);
    let cpu0 = cpu_seconds(r.child.id());
    wait_visible(&rdir, &names, per * conns);
    let took = t1.elapsed().as_secs_f64();
    println!(
        "  replica: {} rows applied in {:.2} s = {:.0} rows/s ({:.1} MB/s of segments), replica CPU {:.2} s",
        per * conns,
        took,
        (per * conns) as f64 / took,
        put_bytes as f64 / 1e6 / took,
        cpu_seconds(r.child.id()) - cpu0
    );
    println!(
        "  -> catch-up / primary ingest = {:.2} (target >= 3)",
        ((per * conns) as f64 / took) / ((per * conns) as f64 / ingest)
    );
}

/// GETs every key in `keys`, 8 at a time (as restore and bootstrap do):
/// the store's raw download rate in MB/s, and the bytes.
fn raw_get(conn: &str, keys: &[object_store::path::Path]) -> (f64, u64) {
    use futures_util::StreamExt;
    let (rt, store) = store_on_runtime(conn, true);
    let t = Instant::now();
    let bytes: u64 = rt.block_on(async {
        futures_util::stream::iter(keys.iter().map(|k| {
            let s = store.clone();
            async move {
                s.inner
                    .get(k)
                    .await
                    .expect("get")
                    .bytes()
                    .await
                    .expect("body")
                    .len() as u64
            }
        }))
        .buffer_unordered(8)
        .fold(0u64, |a, b| async move { a + b })
        .await
    });
    (bytes as f64 / 1e6 / t.elapsed().as_secs_f64(), bytes)
}

/// The disk's durable write rate in the same run: 512 MiB written in 4 MiB
/// writes into a new file under `dir`, then one fdatasync (what restoring
/// a table's files costs at best), in MB/s.
fn disk_write(dir: &Path) -> f64 {
    use std::io::Write;
    let path = dir.join("disk-yardstick");
    let chunk: Vec<u8> = (0..4usize << 20).map(|i| (i * 31 % 251) as u8).collect();
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).expect("yardstick file");
    for _ in 0..128 {
        f.write_all(&chunk).expect("write");
    }
    f.sync_data().expect("fdatasync");
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    (512u64 << 20) as f64 / 1e6 / secs
}

/// Every key under `parts` of the store.
fn keys_under(conn: &str, parts: &[&str]) -> Vec<object_store::path::Path> {
    use futures_util::TryStreamExt;
    let (rt, store) = store_on_runtime(conn, false);
    let prefix = store.path(parts);
    rt.block_on(async {
        store
            .inner
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect::<Vec<_>>()
            .await
    })
    .expect("list")
}

/// `BACKUP DATABASE`, timed; its row as (bytes uploaded, parts uploaded, parts reused).
fn backup_now(addr: std::net::SocketAddr) -> (f64, u64, u64, u64) {
    let t = Instant::now();
    let j = exec(addr, "BACKUP DATABASE");
    let secs = t.elapsed().as_secs_f64();
    let cols: Vec<&str> = j["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    let v = |n: &str| {
        let i = cols.iter().position(|c| *c == n).expect("column");
        j["dataset"][0][i].as_u64().unwrap_or(0)
    };
    (
        secs,
        v("bytes_uploaded"),
        v("parts_uploaded"),
        v("parts_reused"),
    )
}

/// Snapshots of `rows` rows of the reference table (first, then after 1%
/// more rows), a new replica replaying the whole chain vs one bootstrapped
/// from the snapshot, and `basalt restore`, each against the store's raw
/// GET rate for the same objects in the same run.
fn backup_run(base: &Path, rows: u64, conn: &str, what: &str) {
    println!(
        "
snapshots, bootstrap and restore of {rows} rows ({what})"
    );
    let dir = base.join(format!("backup-{what}"));
    let _ = std::fs::remove_dir_all(&dir);
    let gen = CpuGenerator::default();
    let names = vec!["cpu".to_string()];
    let p = node::start(&dir.join("primary"), &["--object-store", conn]);
    let send = |first: u64, n: u64| {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(p.ilp).expect("connect");
        let mut at = first;
        while at < first + n {
            let k = (first + n - at).min(100_000);
            c.write_all(&ilp_text(&gen, "cpu", at, k)).expect("send");
            at += k;
        }
    };
    send(0, rows);
    wait_visible(&p.dir, &names, rows);
    node::wait_uploaded(&p, &names);
    let (_, seg_bytes) = store_counts(&p);

    // A replica replaying the whole chain (there is no snapshot yet).
    let t = Instant::now();
    let r1 = node::start(
        &dir.join("replay"),
        &["--role", "replica", "--object-store", conn],
    );
    wait_visible(&r1.dir, &names, rows);
    let replay = t.elapsed().as_secs_f64();
    drop(r1);
    let segs = keys_under(conn, &["tables", "cpu"]);
    let (seg_get, _) = raw_get(conn, &segs);
    println!(
        "  replay of the chain: {replay:.2} s ({} segments, {:.1} MB: {:.1} MB/s; raw GET of the same objects {seg_get:.1} MB/s)",
        segs.len(),
        seg_bytes as f64 / 1e6,
        seg_bytes as f64 / 1e6 / replay
    );

    let (s1, b1, n1, _) = backup_now(p.http);
    println!(
        "  first snapshot: {s1:.2} s, {n1} parts, {:.1} MB uploaded ({:.1} MB/s)",
        b1 as f64 / 1e6,
        b1 as f64 / 1e6 / s1
    );
    let extra = rows / 100;
    send(rows, extra);
    wait_visible(&p.dir, &names, rows + extra);
    node::wait_uploaded(&p, &names);
    let (s2, b2, n2, r2) = backup_now(p.http);
    println!(
        "  incremental snapshot after 1% more rows: {s2:.2} s, {n2} parts ({r2} reused), {:.2} MB = {:.2}% of the first (target <= 5%)",
        b2 as f64 / 1e6,
        b2 as f64 * 100.0 / b1.max(1) as f64
    );
    let parts = keys_under(conn, &["snapshots", "parts"]);
    let (part_get, part_bytes) = raw_get(conn, &parts);
    let disk = disk_write(&dir);
    println!(
        "  yardsticks: raw GET of every snapshot part: {:.1} MB at {part_get:.1} MB/s; this disk writes (then fdatasyncs) 512 MiB at {disk:.1} MB/s",
        part_bytes as f64 / 1e6
    );
    let bound = part_get.min(disk);

    // A replica bootstrapped from the newest snapshot.
    let t = Instant::now();
    let r2 = node::start(
        &dir.join("bootstrap"),
        &["--role", "replica", "--object-store", conn],
    );
    wait_visible(&r2.dir, &names, rows + extra);
    let boot = t.elapsed().as_secs_f64();
    drop(r2);
    println!(
        "  bootstrap from the snapshot: {boot:.2} s = {:.1} MB/s of parts ({:.0}% of raw GET, {:.0}% of min(raw GET, disk write)); replay / bootstrap = {:.1}x (target >= 5x)",
        part_bytes as f64 / 1e6 / boot,
        part_bytes as f64 / 1e6 / boot * 100.0 / part_get,
        part_bytes as f64 / 1e6 / boot * 100.0 / bound,
        replay / boot
    );

    // basalt restore of the latest state.
    let out = dir.join("restored");
    let t = Instant::now();
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(["restore", "--object-store", conn, "--data-dir"])
        .arg(&out)
        .env("BASALT_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("basalt restore");
    assert!(st.success(), "basalt restore failed");
    let took = t.elapsed().as_secs_f64();
    assert_eq!(visible_rows(&out, &names), rows + extra);
    println!(
        "  restore (latest): {took:.2} s = {:.1} MB/s of parts ({:.0}% of raw GET, {:.0}% of min(raw GET, disk write); target >= 50%)",
        part_bytes as f64 / 1e6 / took,
        part_bytes as f64 / 1e6 / took * 100.0 / part_get,
        part_bytes as f64 / 1e6 / took * 100.0 / bound
    );
}

/// POSTs `body` to /write on a fresh connection: true only on a 204 (the
/// rows are durable); any error or other status is false.
fn post_acked(addr: std::net::SocketAddr, body: &[u8]) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let head = format!(
        "POST /write HTTP/1.1\r\nHost: basalt\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes()).is_err() || s.write_all(body).is_err() {
        return false;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    resp.starts_with(b"HTTP/1.1 204")
}

/// SIGKILL, reaped; the handle is not dropped (its SIGTERM would go to a
/// pid that may be reused).
fn kill9(mut s: Server) {
    let _ = s.child.kill();
    let _ = s.child.wait();
    std::mem::forget(s);
}

/// `cycles` kill -9s, alternately of the primary and the replica, each
/// restarted, under two writers posting 50-row batches to the primary,
/// replicating through moto: acknowledged batches lost or duplicated on
/// the primary, and whether the replica ends equal to it.
fn soak(base: &Path, conn: &str, cycles: u64) {
    println!(
        "
soak: {cycles} kill -9 cycles of primary and replica under ingest (s3 moto)"
    );
    let dir = base.join("soak");
    let _ = std::fs::remove_dir_all(&dir);
    let (pdir, rdir) = (dir.join("primary"), dir.join("replica"));
    let pargs = [
        "--object-store",
        conn,
        "--segment-age-ms",
        "20",
        "--segment-bytes-max",
        "65536",
    ];
    let rargs = [
        "--role",
        "replica",
        "--object-store",
        conn,
        "--replica-poll-ms",
        "10",
    ];
    let mut p = node::start(&pdir, &pargs);
    let mut r = node::start(&rdir, &rargs);
    let addr = Arc::new(Mutex::new(p.http));
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (addr, acked, stop) = (addr.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let gen = CpuGenerator::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = w * 1_000_000_000 + n;
                    let mut body = Vec::new();
                    for j in 0..50 {
                        gen.ilp_line(&mut body, "cpu", id * 50 + j);
                    }
                    let a = *addr.lock().unwrap();
                    if post_acked(a, &body) {
                        acked.lock().unwrap().push(id);
                        n += 1;
                    } else {
                        // Down or restarting: the same batch id again later
                        // (an unacknowledged batch may or may not be there).
                        n += 1;
                        std::thread::park_timeout(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    for cycle in 0..cycles {
        // Progress before each kill: five more acknowledged batches.
        let want = acked.lock().unwrap().len() + 5;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < want {
            assert!(Instant::now() < deadline, "no progress in cycle {cycle}");
            std::thread::park_timeout(Duration::from_millis(2));
        }
        if cycle % 2 == 0 {
            kill9(p);
            p = node::start(&pdir, &pargs);
            *addr.lock().unwrap() = p.http;
        } else {
            kill9(r);
            r = node::start(&rdir, &rargs);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let took = t0.elapsed().as_secs_f64();
    // Everything acknowledged is replicated.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (ps, rs) = (get_json(p.http, "/status"), get_json(r.http, "/status"));
        let c = ps["tables"]["cpu"]["committed_txn"].as_u64().unwrap_or(0);
        let u = ps["tables"]["cpu"]["uploaded_txn"].as_u64().unwrap_or(0);
        let a = rs["tables"]["cpu"]["applied_txn"].as_u64().unwrap_or(0);
        if c > 0 && u == c && a == c {
            break;
        }
        assert!(Instant::now() < deadline, "not replicated: {ps} {rs}");
        std::thread::park_timeout(Duration::from_millis(20));
    }
    drop(p);
    drop(r);
    let ids = |d: &Path| {
        let scan = basalt::table::TableReader::open(d, "cpu")
            .expect("table")
            .scan(&["requests"], None)
            .expect("scan");
        let mut seen = std::collections::HashMap::<u64, u64>::new();
        for row in 0..scan.row_count() {
            if let basalt::batch::Value::Long(v) = scan.columns[0].value(row) {
                *seen.entry(v as u64 / 50).or_default() += 1;
            }
        }
        (seen, scan.row_count())
    };
    let (seen, rows) = ids(&pdir);
    let (rseen, rrows) = ids(&rdir);
    let acked = acked.lock().unwrap().clone();
    let lost = acked.iter().filter(|id| !seen.contains_key(id)).count();
    let twice = seen.values().filter(|n| **n > 50).count();
    let partial = seen.values().filter(|n| **n % 50 != 0).count();
    println!(
        "  {cycles} cycles in {took:.0} s ({} primary, {} replica kills): {} batches acknowledged, {rows} rows on the primary",
        cycles.div_ceil(2),
        cycles / 2,
        acked.len()
    );
    println!(
        "  acknowledged batches lost: {lost} (target 0); batches twice: {twice} (target 0); partial batches: {partial}"
    );
    println!(
        "  replica: {rrows} rows, {} batches, equal to the primary: {}",
        rseen.len(),
        rseen == seen
    );
}

/// `GET /exec?query=sql` on `addr`.
fn exec(addr: std::net::SocketAddr, sql: &str) -> serde_json::Value {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("query", sql);
    get_json(addr, &format!("/exec?{}", q.finish()))
}

/// `SWITCH ROLE TO <to>` on `addr`, waiting for the switch to end; its
/// report (`last_switch`).
fn switch(addr: std::net::SocketAddr, to: &str) -> serde_json::Value {
    exec(addr, &format!("SWITCH ROLE TO {to} TIMEOUT 30000"));
    loop {
        let l = get_json(addr, "/lifecycle");
        if l["switch_in_flight"].is_null() && !l["last_switch"].is_null() {
            let r = l["last_switch"].clone();
            assert_eq!(r["ok"], true, "switch to {to} failed: {r}");
            return r;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Planned switchovers back and forth under a steady writer (which moves
/// to the other node on 421), then an unplanned promotion after SIGKILL of
/// the primary, then commit latency with `--ack-after upload` against the
/// store's PUT latency, all in one run.
fn failover(base: &Path, what: &str, conn: &dyn Fn(&str) -> String, rounds: usize) {
    println!("\n== failover on {what} ==");
    let dir = base.join(format!("failover-{what}"));
    let _ = std::fs::remove_dir_all(&dir);
    let c = conn("switch");
    let nodes = [
        node::start(&dir.join("a"), &["--object-store", &c]),
        node::start(&dir.join("b"), &["--role", "replica", "--object-store", &c]),
    ];
    let addrs = [nodes[0].http, nodes[1].http];
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Arc<Mutex<Vec<(Instant, usize)>>> = Default::default();
    let writer = {
        let (stop, acks) = (stop.clone(), acks.clone());
        std::thread::spawn(move || {
            let gen = CpuGenerator::default();
            let (mut target, mut next) = (0usize, 0u64);
            let mut conn = KeepAlive::connect(addrs[target]);
            while !stop.load(Ordering::Acquire) {
                match conn.post(&ilp_text(&gen, "cpu", next, 100)) {
                    204 => {
                        acks.lock().unwrap().push((Instant::now(), target));
                        next += 100;
                    }
                    421 => {
                        target = 1 - target;
                        conn = KeepAlive::connect(addrs[target]);
                    }
                    s => panic!("write answered {s}"),
                }
            }
        })
    };
    let acked_on = |n: usize, after: Instant| {
        acks.lock()
            .unwrap()
            .iter()
            .filter(|a| a.1 == n && a.0 >= after)
            .count()
    };
    let mut gap = Histogram::<u64>::new(3).expect("histogram");
    let mut to_write = Histogram::<u64>::new(3).expect("histogram");
    let (mut demote, mut promote) = (Vec::new(), Vec::new());
    let mut primary = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        while acked_on(primary, start) < 50 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let new = 1 - primary;
        demote.push(
            switch(addrs[primary], "REPLICA")["millis"]
                .as_f64()
                .unwrap_or(0.0),
        );
        let asked = Instant::now();
        promote.push(
            switch(addrs[new], "PRIMARY")["millis"]
                .as_f64()
                .unwrap_or(0.0),
        );
        while acked_on(new, asked) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let a = acks.lock().unwrap();
        let last_old = a
            .iter()
            .filter(|x| x.1 == primary)
            .map(|x| x.0)
            .max()
            .unwrap();
        let first_new = a
            .iter()
            .filter(|x| x.1 == new && x.0 >= asked)
            .map(|x| x.0)
            .min()
            .unwrap();
        gap.record(first_new.duration_since(last_old).as_micros() as u64)
            .expect("record");
        to_write
            .record(first_new.duration_since(asked).as_micros() as u64)
            .expect("record");
        drop(a);
        primary = new;
    }
    stop.store(true, Ordering::Release);
    writer.join().expect("writer");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "  planned switchover, {rounds} rounds: switch to replica {:.1} ms, to primary {:.1} ms (means)",
        mean(&demote),
        mean(&promote)
    );
    println!(
        "    write gap (last write on the old primary to the first on the new): {}",
        pct(&gap)
    );
    println!(
        "    SWITCH ROLE TO PRIMARY to its first accepted write:                 {}",
        pct(&to_write)
    );
    // Unplanned: the primary is killed; the caught-up replica is promoted.
    let [a, b] = nodes;
    let (mut dead, survivor) = if primary == 0 { (a, b) } else { (b, a) };
    dead.child.kill().expect("SIGKILL");
    dead.child.wait().expect("reap");
    let asked = Instant::now();
    let r = switch(survivor.http, "PRIMARY");
    let mut w = KeepAlive::connect(survivor.http);
    let status = w.post(&ilp_text(
        &CpuGenerator::default(),
        "cpu",
        1_000_000_000,
        100,
    ));
    assert_eq!(status, 204);
    println!(
        "  unplanned (primary SIGKILLed): promotion {:.1} ms, SWITCH ROLE TO PRIMARY to the first accepted write {:.1} ms",
        r["millis"].as_f64().unwrap_or(0.0),
        asked.elapsed().as_secs_f64() * 1e3
    );
    drop(survivor);
    drop(dead);
    // The same load acknowledged locally, then after upload.
    for mode in ["local", "upload"] {
        ack_load(
            &dir.join(format!("ack-{mode}")),
            &conn(&format!("ack-{mode}")),
            mode,
        );
    }
}

/// Four writers of 1,000-row requests, 25 a second each (100k rows/s, the
/// lag runs' rate), for 10 s on a primary with `--ack-after mode`; commit
/// latency against PUTs of about a segment's size made beside them, under
/// the same load.
fn ack_load(dir: &Path, c: &str, mode: &str) {
    let p = node::start(dir, &["--object-store", c, "--ack-after", mode]);
    let lat: Arc<Mutex<Histogram<u64>>> =
        Arc::new(Mutex::new(Histogram::new(3).expect("histogram")));
    let until = Instant::now() + Duration::from_secs(10);
    let yardstick = {
        let c = c.to_string();
        std::thread::spawn(move || {
            let (rt, store) = store_on_runtime(&c, false);
            let body = bytes::Bytes::from(vec![7u8; 100 * 1024]);
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut i = 0;
            while Instant::now() < until {
                let key = store.path(&["put-yardstick", &format!("{i:06}")]);
                let t = Instant::now();
                rt.block_on(store.inner.put(&key, PutPayload::from(body.clone())))
                    .expect("put");
                h.record(t.elapsed().as_micros() as u64).expect("record");
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            h
        })
    };
    let writers: Vec<_> = (0..4u64)
        .map(|k| {
            let (lat, addr) = (lat.clone(), p.http);
            std::thread::spawn(move || {
                let gen = CpuGenerator::default();
                let mut conn = KeepAlive::connect(addr);
                let mut next = k * 1_000_000_000;
                let mut slot = Instant::now() + Duration::from_millis(10 * k);
                while Instant::now() < until {
                    let body = ilp_text(&gen, "cpu", next, 1000);
                    std::thread::sleep(slot.saturating_duration_since(Instant::now()));
                    slot += Duration::from_millis(40);
                    let t = Instant::now();
                    assert_eq!(conn.post(&body), 204);
                    lat.lock()
                        .unwrap()
                        .record(t.elapsed().as_micros() as u64)
                        .expect("record");
                    next += 1000;
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let (puts, put_bytes) = store_counts(&p);
    drop(p);
    let put = yardstick.join().expect("yardstick");
    let lat = lat.lock().unwrap().clone();
    println!(
        "  --ack-after {mode}, 4 writers x 25/s x 1,000-row requests, 10 s: {} commits, {:.0} PUTs/s of {} bytes on average",
        lat.len(),
        puts as f64 / 10.0,
        put_bytes / puts.max(1)
    );
    println!("    commit latency:                          {}", pct(&lat));
    println!("    yardstick, 100 KiB PUTs during the run:  {}", pct(&put));
    println!(
        "    commit p99 / PUT p99 = {:.2}{}",
        lat.value_at_quantile(0.99) as f64 / put.value_at_quantile(0.99).max(1) as f64,
        if mode == "upload" {
            " (target <= 2)"
        } else {
            ""
        }
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let what = args.first().map_or("all", String::as_str);
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = env("PERF_LAG_SECS", 20);
    let rate = env("PERF_LAG_RATE", 100_000);
    let rows = env("PERF_ROWS", 2_000_000);
    let backlog = env("PERF_CATCHUP_ROWS", 10_000_000);
    let base = std::env::var_os("PERF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/perf-data"))
        .join("replication");
    std::fs::create_dir_all(&base).expect("create PERF_DIR");
    println!(
        "perf data dir: {} ({} cores)",
        base.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let moto = if matches!(
        what,
        "all" | "lag" | "catchup" | "failover" | "backup" | "soak"
    ) {
        moto()
    } else {
        None
    };
    let low_lag_primary = ["--segment-age-ms", "10", "--segment-bytes-max", "262144"];
    let low_lag_replica = ["--replica-poll-ms", "10"];
    if what == "all" || what == "lag" {
        let fs = |n: &str| format!("fs::root={};", base.join(n).join("store").display());
        lag_run(
            &base,
            "lag-fs-default",
            &fs("lag-fs-default"),
            &[],
            &[],
            secs,
            rate,
        );
        lag_run(
            &base,
            "lag-fs-low-lag",
            &fs("lag-fs-low-lag"),
            &low_lag_primary,
            &low_lag_replica,
            secs,
            rate,
        );
        if let Some(m) = &moto {
            lag_run(
                &base,
                "lag-s3-default",
                &s3_conn(m.port, "lag-default"),
                &[],
                &[],
                secs,
                rate,
            );
            lag_run(
                &base,
                "lag-s3-low-lag",
                &s3_conn(m.port, "lag-low"),
                &low_lag_primary,
                &low_lag_replica,
                secs,
                rate,
            );
        }
    }
    if what == "all" || what == "ingest" {
        ingest_on_off(&base, rows);
    }
    if what == "all" || what == "failover" {
        let rounds = env("PERF_SWITCH_ROUNDS", 10) as usize;
        for n in ["switch", "ack-local", "ack-upload"] {
            let _ = std::fs::remove_dir_all(base.join(format!("failover-fs-{n}")));
        }
        let b = base.clone();
        failover(
            &base,
            "fs",
            &|n| format!("fs::root={};", b.join(format!("failover-fs-{n}")).display()),
            rounds,
        );
        if let Some(m) = &moto {
            let port = m.port;
            failover(
                &base,
                "s3",
                &|n| s3_conn(port, &format!("failover-{n}")),
                rounds,
            );
        }
    }
    if what == "all" || what == "backup" {
        let n = env("PERF_BACKUP_ROWS", 10_000_000);
        let store = base.join("backup-store");
        let _ = std::fs::remove_dir_all(&store);
        backup_run(&base, n, &format!("fs::root={};", store.display()), "fs");
        if let Some(m) = &moto {
            backup_run(&base, n, &s3_conn(m.port, "backup"), "s3");
        }
    }
    if what == "soak" {
        match &moto {
            Some(m) => soak(
                &base,
                &s3_conn(m.port, "soak"),
                env("PERF_SOAK_CYCLES", 100),
            ),
            None => println!("soak needs moto_server"),
        }
    }
    if what == "all" || what == "catchup" {
        let fs = format!("fs::root={};", base.join("catchup-store").display());
        let _ = std::fs::remove_dir_all(base.join("catchup-store"));
        catchup(&base, backlog, &fs, "fs");
        if let Some(m) = &moto {
            catchup(&base, backlog, &s3_conn(m.port, "catchup"), "s3");
        }
    }
}
