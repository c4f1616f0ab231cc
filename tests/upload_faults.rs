//! The uploader against a fault-injecting object store: errors, latency,
//! PUTs that land but report failure, a store that is down for a while,
//! and a restart of the primary while it is down. Nothing is lost or
//! uploaded twice, commits keep going the whole time, and a replica built
//! from the store equals the primary byte for byte.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt::db::{Database, DbOptions};
use basalt::gen::CpuGenerator;
use basalt::io::EngineChoice;
use basalt::replication::{
    first_txn_of, table_prefix, Replica, ReplicaOptions, ReplicaRunner, UploadOptions, Uploader,
};
use basalt::segment::Segment;
use basalt::store::{FaultControl, Store, StoreConfig};
use basalt::table::TableReader;
use common::{eventually, table_files};
use object_store::ObjectStoreExt;

/// The id of the `memory::` store the uploads go to in these tests.
fn memory_id() -> u64 {
    StoreConfig::parse("memory::").unwrap().id()
}

fn open(dir: &std::path::Path) -> Database {
    Database::open(DbOptions {
        data_dir: dir.to_path_buf(),
        engine: EngineChoice::Portable,
        shards: 2,
        checkpoint_interval: Duration::from_millis(50),
        retain_wal_for_upload: true,
        upload_store_id: memory_id(),
        ..DbOptions::default()
    })
    .unwrap()
}

fn upload_opts() -> UploadOptions {
    UploadOptions {
        segment_age_max: Duration::from_millis(10),
        segment_bytes_max: 256 * 1024,
        retry_backoff_max: Duration::from_millis(100),
        shutdown_flush_max: Duration::from_millis(500),
        ..UploadOptions::default()
    }
}

/// The segments of `cpu` form one chain from txn 1 to `last`.
fn assert_chain(store: &Store, last: u64) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = rt
        .block_on(store.list_after(
            &table_prefix(store, "cpu"),
            &store.path(&["tables", "cpu", "0"]),
        ))
        .unwrap();
    let mut next = 1;
    for k in &keys {
        assert_eq!(first_txn_of(k), Some(next), "key {k}: gap or overlap");
        let bytes = rt
            .block_on(async { store.inner.get(k).await?.bytes().await })
            .unwrap();
        let seg = Segment::from_slice(&bytes).unwrap();
        next = seg.header().last_txn + 1;
    }
    assert_eq!(next, last + 1);
    keys.len()
}

/// Commits 100-row batches until stopped; counts them.
struct Committer {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<u64>,
}

impl Committer {
    fn start(db: Arc<Database>, first_batch: u64) -> Committer {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), commits.clone());
        let thread = std::thread::spawn(move || {
            let gen = CpuGenerator::default();
            let t = match db.table("cpu") {
                Some(t) => t,
                None => db.create_table("cpu", gen.schema()).unwrap(),
            };
            let mut b = first_batch;
            let mut last = 0;
            while !s.load(Ordering::Relaxed) {
                last = db.commit(&t, gen.batch(b * 100, 100, 0)).unwrap();
                b += 1;
                c.fetch_add(1, Ordering::Relaxed);
            }
            last
        });
        Committer {
            stop,
            commits,
            thread,
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn faults_in_the_store_lose_nothing_duplicate_nothing_and_never_stall_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (pdir, rdir) = (dir.path().join("primary"), dir.path().join("replica"));
    let store = StoreConfig::parse("memory::").unwrap().build().unwrap();
    let control = Arc::new(FaultControl::default());
    control.latency_ms.store(3, Ordering::Relaxed);
    control.fail_put_every.store(5, Ordering::Relaxed);
    control.fail_after_put_every.store(7, Ordering::Relaxed);
    control.fail_get_every.store(3, Ordering::Relaxed);

    // 1. A flaky, slow store.
    let db = Arc::new(open(&pdir));
    let up = Uploader::start(
        db.catalog(),
        store.with_faults(control.clone()),
        upload_opts(),
    )
    .unwrap();
    let c = Committer::start(db.clone(), 0);
    std::thread::sleep(Duration::from_millis(1500));
    let table = db.table("cpu").unwrap();
    assert!(table.uploaded_txn() > 0, "uploads go through a flaky store");

    // 2. The store goes down: commits go on, the backlog stays in the WAL.
    control.down.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    let (before, uploaded_at_down) = (c.commits.load(Ordering::Relaxed), table.uploaded_txn());
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let during = c.commits.load(Ordering::Relaxed) - before;
    assert!(
        during > 50,
        "only {during} commits in 1.5 s while the store was down"
    );
    assert!(
        table.uploaded_txn() <= uploaded_at_down + 1,
        "nothing uploads while down"
    );
    let st = up.status.tables()["cpu"].clone();
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("injected"),
        "{st:?}"
    );
    let committed_first = c.finish();
    println!(
        "{during} commits in {:?} with the store down",
        down_at.elapsed()
    );

    // 3. Restart of the primary while the store is still down: the WAL of
    // what was not uploaded survives recovery and the checkpoint.
    up.shutdown();
    let db = Arc::try_unwrap(db).ok().expect("committer finished");
    db.close();
    let db = Arc::new(open(&pdir));
    let wal_files = walkdir(&pdir.join("cpu").join("_wal"));
    assert!(
        wal_files > 0,
        "the un-uploaded WAL was kept across the restart"
    );
    let c = Committer::start(db.clone(), 1_000_000);
    std::thread::sleep(Duration::from_millis(300));

    // 4. The store comes back (still flaky): everything gets there, once.
    control.down.store(false, Ordering::Relaxed);
    let up = Uploader::start(
        db.catalog(),
        store.with_faults(control.clone()),
        upload_opts(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let last = c.finish();
    assert!(last > committed_first);
    let table = db.table("cpu").unwrap();
    eventually(Duration::from_secs(60), || {
        (table.uploaded_txn() == last).then_some(())
    });
    assert!(
        control.injected.load(Ordering::Relaxed) > 10,
        "faults were injected"
    );
    up.shutdown();
    let db = Arc::try_unwrap(db).ok().expect("committer finished");
    db.close();
    let segments = assert_chain(&store, last);
    println!("{segments} segments for {last} txns");

    // Uploaded and checkpointed WAL is dropped again.
    let db = open(&pdir);
    db.close();
    let left = walkdir(&pdir.join("cpu").join("_wal"));
    if left != 0 {
        let mark = basalt::wal::retention::read_upload_mark(&pdir.join("cpu").join("_wal"));
        let _ = std::process::Command::new("find")
            .arg(pdir.join("cpu").join("_wal"))
            .arg("-ls")
            .status();
        panic!("{left} WAL files left; mark {mark:?}, last {last}");
    }

    let mut r = Replica::new(store.clone(), &rdir).unwrap();
    assert_eq!(r.sync_table("cpu").unwrap().txn, last);
    drop(r);
    let (p, rr) = (
        table_files(&pdir.join("cpu")),
        table_files(&rdir.join("cpu")),
    );
    assert_eq!(p.len(), rr.len());
    for (name, bytes) in &p {
        assert!(bytes == &rr[name], "{name} differs");
    }
}

/// WAL files under a `_wal` directory.
fn walkdir(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|shards| {
            shards
                .flatten()
                .filter_map(|s| std::fs::read_dir(s.path()).ok())
                .flat_map(|f| f.flatten())
                .filter(|f| f.file_name().to_string_lossy().ends_with(".wal"))
                .count()
        })
        .unwrap_or(0)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else if e.file_name() != ".lock" {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A commit whose fdatasync fails (its record may be whole on disk) is
/// aborted: it is uploaded as an empty txn, recorded in `_wal/_aborted`,
/// and recovery from a crash image taken before any checkpoint does not
/// replay it, so primary and replica hold the same rows.
#[test]
fn an_aborted_commit_travels_as_an_empty_txn_and_is_never_replayed() {
    use basalt::io::FaultPlan;
    let dir = tempfile::tempdir().unwrap();
    let (pdir, rdir, image) = (
        dir.path().join("primary"),
        dir.path().join("replica"),
        dir.path().join("crash-image"),
    );
    let plan = FaultPlan::new();
    let db = Arc::new(
        Database::open(DbOptions {
            data_dir: pdir.clone(),
            engine: EngineChoice::Fault(plan.clone()),
            shards: 2,
            checkpoint_interval: Duration::from_secs(3600),
            retain_wal_for_upload: true,
            upload_store_id: memory_id(),
            ..DbOptions::default()
        })
        .unwrap(),
    );
    let store = StoreConfig::parse("memory::").unwrap().build().unwrap();
    let up = Uploader::start(db.catalog(), store.clone(), upload_opts()).unwrap();
    let gen = CpuGenerator::default();
    let t = db.create_table("cpu", gen.schema()).unwrap();
    // A local-only table (no designated timestamp) is never uploaded.
    let local = db
        .create_table(
            "scratch",
            &basalt::table::Schema::new(
                vec![("v", basalt::table::ColumnType::Long)],
                None,
                basalt::table::PartitionBy::None,
            )
            .unwrap(),
        )
        .unwrap();
    assert!(!local.is_replicated());
    let mut bb = basalt::batch::BatchBuilder::new(&local.schema());
    bb.set(0, basalt::batch::Value::Long(1)).unwrap();
    bb.finish_row().unwrap();
    db.commit(&local, bb.finish()).unwrap();
    // One thread per shard: commits go to the thread's home shard.
    let commit_on = |first: u64, n: u64, fail_first: bool| {
        let (db, t, plan) = (db.clone(), t.clone(), plan.clone());
        std::thread::spawn(move || {
            let gen = CpuGenerator::default();
            let mut out = Vec::new();
            for i in 0..n {
                if fail_first && i == n - 1 {
                    plan.fail_syncs_after(0);
                }
                out.push(db.commit(&t, gen.batch((first + i) * 100, 100, 0)));
                plan.heal();
            }
            out
        })
        .join()
        .unwrap()
    };
    let a = commit_on(0, 4, true);
    assert!(a[..3].iter().all(Result::is_ok) && a[3].is_err(), "{a:?}");
    let aborted = 4;
    // The next commits from a thread whose home is the healthy shard (the
    // failed one refuses work until reopened).
    let b = (0..16)
        .map(|_| commit_on(10, 3, false))
        .find(|r| r[0].is_ok())
        .expect("a thread on the healthy shard");
    let last = *b.last().unwrap().as_ref().unwrap();
    assert!(b.iter().all(Result::is_ok) && last > aborted);
    t.wait_applied(last, Duration::from_secs(30)).unwrap();
    assert_eq!(
        basalt::wal::retention::read_aborted(&pdir.join("cpu").join("_wal")).unwrap(),
        vec![aborted]
    );
    eventually(Duration::from_secs(30), || {
        (t.uploaded_txn() == last).then_some(())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let scratch_keys = rt
        .block_on(store.list_after(
            &table_prefix(&store, "scratch"),
            &store.path(&["tables", "scratch", "0"]),
        ))
        .unwrap();
    assert!(
        scratch_keys.is_empty(),
        "a local-only table was uploaded: {scratch_keys:?}"
    );
    // A crash image: the files as they are, no checkpoint since creation.
    copy_dir(&pdir, &image);
    up.shutdown();
    drop(t);
    Arc::try_unwrap(db).ok().expect("only here").close();

    let mut r = Replica::new(store.clone(), &rdir).unwrap();
    assert_eq!(r.sync_table("cpu").unwrap().txn, last);
    drop(r);
    let recovered = Database::open(DbOptions {
        data_dir: image.clone(),
        engine: EngineChoice::Portable,
        shards: 1,
        retain_wal_for_upload: true,
        upload_store_id: memory_id(),
        ..DbOptions::default()
    })
    .unwrap();
    let report = recovered.recovery()[0].clone();
    assert_eq!(
        report.replayed_txns, 6,
        "txn {aborted} is not replayed: {report:?}"
    );
    assert_eq!(report.resolved_txn, last);
    recovered.close();
    for primary in [&pdir, &image] {
        let (p, rr) = (
            table_files(&primary.join("cpu")),
            table_files(&rdir.join("cpu")),
        );
        assert_eq!(p.keys().collect::<Vec<_>>(), rr.keys().collect::<Vec<_>>());
        for (name, bytes) in &p {
            assert!(bytes == &rr[name], "{name} differs ({})", primary.display());
        }
    }
    let rows = TableReader::open(&image, "cpu")
        .unwrap()
        .state()
        .unwrap()
        .row_count();
    assert_eq!(rows, 600, "the aborted commit's rows are not replayed");
}

/// A table created on the primary reaches a running replica through its
/// announcement (`catalog/`), although the replica lists the store's
/// tables only once an hour here: new tables do not wait for a listing.
#[test]
fn a_new_table_reaches_a_replica_through_its_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::parse("memory::").unwrap().build().unwrap();
    let db = open(&dir.path().join("p"));
    let opts = ReplicaOptions {
        poll_interval: Duration::from_millis(5),
        discover_interval: Duration::from_secs(3600),
        ..ReplicaOptions::default()
    };
    let runner = ReplicaRunner::start(store.clone(), &dir.path().join("r"), opts).unwrap();
    // Its first round (announcements and tables listed: none yet) is over.
    eventually(Duration::from_secs(30), || {
        (runner.status.last_sync_us.load(Ordering::Acquire) > 0).then_some(())
    });
    let up = Uploader::start(db.catalog(), store.clone(), upload_opts()).unwrap();
    let gen = CpuGenerator::default();
    let t = db.create_table("cpu", gen.schema()).unwrap();
    let txn = db.commit(&t, gen.batch(0, 100, 0)).unwrap();
    eventually(Duration::from_secs(30), || {
        let s = runner.status.tables();
        (s.get("cpu").map(|s| s.applied_txn) == Some(txn)).then_some(())
    });
    drop(runner);
    drop(up);
    db.close();
}
