//! Crash safety with a real process and a real SIGKILL: a child ingests
//! batches (one txn each) on several committer threads and prints `ack <id>`
//! once each is durable; the test kills it at a pseudo-random instant, then
//! checks, cycle after cycle on the same data directory:
//! - before recovery, a plain reader sees no partial txn;
//! - after recovery (reopen), every acknowledged batch is there exactly once
//!   and every batch that is there is whole.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use basalt::db::{Database, DbOptions};
use basalt::io::EngineChoice;
use basalt::table::{ScanResult, TableReader};

const BATCH_ROWS: u64 = 50;
const CYCLES: u64 = 21;
/// Batch ids of cycle `c` start at `c * BATCH_ID_STRIDE`.
const BATCH_ID_STRIDE: u64 = 10_000_000;

/// Rows per batch id, from a scan of `requests` (row i belongs to batch i / BATCH_ROWS).
fn rows_per_batch(r: &ScanResult) -> BTreeMap<u64, u64> {
    let col = r.column("requests").expect("requests column");
    let mut seen = BTreeSet::new();
    let mut per = BTreeMap::new();
    for row in 0..r.row_count() {
        let id = col.i64_at(row) as u64;
        assert!(seen.insert(id), "row requests={id} appears twice");
        *per.entry(id / BATCH_ROWS).or_insert(0) += 1;
    }
    per
}

fn assert_whole(per: &BTreeMap<u64, u64>, when: &str) {
    for (b, n) in per {
        assert_eq!(
            *n, BATCH_ROWS,
            "{when}: batch {b} has {n} of {BATCH_ROWS} rows: a partial txn is visible"
        );
    }
}

/// Deterministic pseudo-random delay per cycle (xorshift), 30..400 ms.
fn delay_ms(cycle: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (cycle + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    30 + x % 370
}

fn run_child(data: &Path, engine: &str, cycle: u64) -> BTreeSet<u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "--io-engine",
            engine,
            "--shards",
            "2",
        ])
        .args([
            "crash-child",
            "--batch-rows",
            &BATCH_ROWS.to_string(),
            "--committers",
            "4",
        ])
        .args(["--first-batch", &(cycle * BATCH_ID_STRIDE).to_string()])
        .env("BASALT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn basalt crash-child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Only whole lines count: a line cut by the kill was never fully acknowledged to us.
            if let Some(id) = line
                .strip_prefix("ack ")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let _ = tx.send(id);
            }
        }
    });
    // Wait for the first ack so the kill lands while ingesting, not during start-up.
    let mut acked = BTreeSet::new();
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("child acknowledged nothing in 60 s");
    acked.insert(first);
    let until = Instant::now() + Duration::from_millis(delay_ms(cycle));
    while Instant::now() < until {
        if let Ok(id) = rx.recv_timeout(Duration::from_millis(1)) {
            acked.insert(id);
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    assert!(!status.success(), "child should have died from SIGKILL");
    reader.join().unwrap();
    acked.extend(rx.try_iter());
    acked
}

#[test]
fn kill_9_during_ingest_loses_no_acknowledged_txn_and_shows_no_partial_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let engines = ["glommio", "tokio-uring", "portable"];
    let mut all_acked = BTreeSet::new();
    let mut total_kills = 0;
    let mut replayed = 0;
    let mut torn = 0;
    for cycle in 0..CYCLES {
        let engine = engines[(cycle % 3) as usize];
        let acked = run_child(&data, engine, cycle);
        total_kills += 1;
        assert!(!acked.is_empty());
        all_acked.extend(acked.iter().copied());

        // Before recovery: what a reader sees is whole txns only.
        if let Ok(reader) = TableReader::open(&data, "cpu") {
            let per = rows_per_batch(&reader.scan(&["requests"], None).unwrap());
            assert_whole(&per, &format!("cycle {cycle} before recovery"));
        }

        // Every third cycle, also play a power loss on the table files: nothing
        // written since the last checkpoint survives. `_txn` (renamed, never
        // fsynced) is garbage, partition versions `_ckpt` does not name are
        // gone, and column/symbol files lose their unsynced tails.
        if cycle % 3 == 1 {
            lose_unsynced_table_writes(&data.join("cpu"));
        }

        // Recovery: reopen (cuts torn WAL tails, re-applies committed txns).
        let db = Database::open(DbOptions {
            data_dir: data.clone(),
            engine: EngineChoice::Portable,
            shards: 1,
            ..DbOptions::default()
        })
        .unwrap_or_else(|e| panic!("cycle {cycle} ({engine}): recovery failed: {e}"));
        for r in db.recovery() {
            replayed += r.replayed_txns;
            torn += r.torn_bytes_cut;
        }
        let per = rows_per_batch(&db.scan("cpu", &["requests"], None).unwrap());
        assert_whole(&per, &format!("cycle {cycle} after recovery"));
        for b in &all_acked {
            assert!(
                per.contains_key(b),
                "cycle {cycle} ({engine}): acknowledged batch {b} is missing"
            );
        }
        let wal_left = walkdir_count(&data.join("cpu").join("_wal"));
        assert_eq!(wal_left, 0, "recovered WAL files are removed once applied");
        db.close();
    }
    assert!(total_kills >= 20);
    // The kills must have landed while txns were durable but not yet applied,
    // or this test would not be exercising WAL replay at all.
    assert!(replayed > 0, "no kill left txns to replay from the WAL");
    eprintln!(
        "{total_kills} kills, {} acknowledged batches, all present; {replayed} txns replayed from WAL, {torn} torn bytes cut",
        all_acked.len()
    );
}

/// What a power loss may leave of a table's files: only what the last
/// checkpoint synced. (WAL files are left alone: every acknowledged group
/// was fdatasynced before its ack.)
fn lose_unsynced_table_writes(table: &Path) {
    let ckpt_path = table.join("_ckpt");
    let ckpt =
        basalt::table::state::decode_txn(&ckpt_path, &std::fs::read(&ckpt_path).unwrap()).unwrap();
    std::fs::write(
        table.join("_txn"),
        b"garbage: rename reached the disk, data did not",
    )
    .unwrap();
    let named: Vec<(i64, u64, u64)> = ckpt
        .partitions
        .iter()
        .map(|p| (p.floor, p.version, p.rows))
        .collect();
    for e in std::fs::read_dir(table).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('_') || !e.path().is_dir() {
            continue;
        }
        let keep = named.iter().find(|(floor, version, _)| {
            let day = chrono::DateTime::from_timestamp_micros(*floor)
                .unwrap()
                .format("%Y-%m-%d");
            name == format!("{day}.{version}")
        });
        match keep {
            None => std::fs::remove_dir_all(e.path()).unwrap(),
            Some((_, _, rows)) => {
                // Fixed-width columns lose everything past the checkpointed rows.
                for col in [
                    "usage_user",
                    "usage_system",
                    "usage_idle",
                    "temp",
                    "requests",
                    "ts",
                ] {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(e.path().join(format!("{col}.d")))
                        .unwrap();
                    f.set_len(rows * 8).unwrap();
                }
            }
        }
    }
}

fn walkdir_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| {
            if e.path().is_dir() {
                walkdir_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}
