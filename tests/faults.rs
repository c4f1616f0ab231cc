//! Error paths driven by the fault-injecting engine: fsync failure, torn
//! write, disk full. After each, the WAL refuses writes and says why, what was
//! committed before stays readable, and a reopen recovers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use basalt::db::{Database, DbOptions, TableHandle};
use basalt::gen::CpuGenerator;
use basalt::io::{EngineChoice, FaultPlan};

const WAIT: Duration = Duration::from_secs(60);

fn open(dir: &Path, plan: &Arc<FaultPlan>) -> Database {
    Database::open(DbOptions {
        data_dir: dir.to_path_buf(),
        engine: EngineChoice::Fault(plan.clone()),
        // One shard, so every commit of the test meets the same WAL writer.
        shards: 1,
        ..DbOptions::default()
    })
    .unwrap()
}

fn setup(dir: &Path, plan: &Arc<FaultPlan>) -> (Database, Arc<TableHandle>) {
    let db = open(dir, plan);
    let t = db
        .create_table("cpu", CpuGenerator::default().schema())
        .unwrap();
    let txn = db
        .commit(&t, CpuGenerator::default().batch(0, 100, 0))
        .unwrap();
    t.wait_applied(txn, WAIT).unwrap();
    (db, t)
}

fn requests(db: &Database) -> Vec<i64> {
    let r = db.scan("cpu", &["requests"], None).unwrap();
    (0..r.row_count()).map(|i| r.columns[0].i64_at(i)).collect()
}

#[test]
fn fsync_failure_poisons_the_wal_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (db, t) = setup(dir.path(), &plan);
    let gen = CpuGenerator::default();
    plan.fail_syncs_after(0);
    let e = db.commit(&t, gen.batch(100, 100, 0)).unwrap_err();
    assert!(e.to_string().contains("fdatasync failed"), "{e}");
    assert!(!e.is_disk_full());
    // Healing the disk does not un-poison the WAL: fsync is never retried.
    plan.heal();
    let e = db.commit(&t, gen.batch(200, 100, 0)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("refuses writes since an earlier failure"),
        "{msg}"
    );
    assert!(
        msg.contains("fdatasync failed") && msg.contains("reopen the database"),
        "{msg}"
    );
    // What was acknowledged before stays readable.
    assert_eq!(requests(&db), (0..100).collect::<Vec<_>>());
    db.close();

    // Reopened, the database takes writes again. The failed commit's outcome
    // is unknown (its bytes may have reached the disk), never partial.
    let db = open(dir.path(), &plan);
    let t = db.table("cpu").unwrap();
    let txn = db.commit(&t, gen.batch(300, 100, 0)).unwrap();
    t.wait_applied(txn, WAIT).unwrap();
    let got = requests(&db);
    assert_eq!(&got[..100], &(0..100).collect::<Vec<_>>()[..]);
    assert!(
        got.len() == 200 || got.len() == 300,
        "{} rows: a partial txn?",
        got.len()
    );
    assert_eq!(&got[got.len() - 100..], &(300..400).collect::<Vec<_>>()[..]);
}

#[test]
fn torn_write_is_cut_at_recovery_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (db, t) = setup(dir.path(), &plan);
    let gen = CpuGenerator::default();
    plan.tear_next_write();
    let e = db.commit(&t, gen.batch(100, 100, 0)).unwrap_err();
    assert!(e.to_string().contains("injected torn write"), "{e}");
    assert!(
        db.commit(&t, gen.batch(200, 100, 0)).is_err(),
        "poisoned after a failed write"
    );
    db.close();

    let db = open(dir.path(), &plan);
    let report = &db.recovery()[0];
    assert!(report.torn_bytes_cut > 0, "{report:?}");
    assert_eq!(report.replayed_txns, 0);
    assert_eq!(
        requests(&db),
        (0..100).collect::<Vec<_>>(),
        "the torn txn is not visible"
    );
    let t = db.table("cpu").unwrap();
    let txn = db.commit(&t, gen.batch(100, 100, 0)).unwrap();
    t.wait_applied(txn, WAIT).unwrap();
    assert_eq!(requests(&db), (0..200).collect::<Vec<_>>());
}

#[test]
fn disk_full_is_a_clear_error_and_committed_data_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let (db, t) = setup(dir.path(), &plan);
    let gen = CpuGenerator::default();
    plan.disk_full_after(1000);
    let e = db.commit(&t, gen.batch(100, 1000, 0)).unwrap_err();
    assert!(e.is_disk_full(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("the disk is full") && msg.contains("Free space and reopen"),
        "{msg}"
    );
    assert_eq!(requests(&db), (0..100).collect::<Vec<_>>());
    let e = db.commit(&t, gen.batch(100, 10, 0)).unwrap_err();
    assert!(
        e.to_string().contains("the disk is full"),
        "poisoned, naming the cause: {e}"
    );
    db.close();

    plan.heal();
    let db = open(dir.path(), &plan);
    assert!(db.recovery()[0].torn_bytes_cut > 0);
    assert_eq!(requests(&db), (0..100).collect::<Vec<_>>());
    let t = db.table("cpu").unwrap();
    let txn = db.commit(&t, gen.batch(100, 1000, 0)).unwrap();
    t.wait_applied(txn, WAIT).unwrap();
    assert_eq!(requests(&db).len(), 1100);
}

#[test]
fn wal_files_rotate_and_applied_ones_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(DbOptions {
        data_dir: dir.path().to_path_buf(),
        engine: EngineChoice::Portable,
        shards: 1,
        wal_file_bytes_max: 64 * 1024,
        checkpoint_interval: Duration::from_millis(10),
        ..DbOptions::default()
    })
    .unwrap();
    let gen = CpuGenerator::default();
    let t = db.create_table("cpu", gen.schema()).unwrap();
    let mut last = 0;
    for k in 0..40 {
        last = db.commit(&t, gen.batch(k * 1000, 1000, 0)).unwrap();
        t.wait_applied(last, WAIT).unwrap();
    }
    t.wait_applied(last, WAIT).unwrap();
    // WAL stays until a checkpoint has made its txns durable in the table files.
    let deadline = std::time::Instant::now() + WAIT;
    while t.checkpoint_txn() < last {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint reached txn {last}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // One more commit lets the shard drop files checkpointed by now.
    let txn = db.commit(&t, gen.batch(40_000, 10, 0)).unwrap();
    t.wait_applied(txn, WAIT).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path().join("cpu/_wal/s0"))
        .unwrap()
        .collect();
    // 40 txns of ~60 KiB each would be ~40 files; applied ones are gone.
    assert!(files.len() <= 2, "{} WAL files left", files.len());
    assert_eq!(requests(&db).len(), 40_010);
}
