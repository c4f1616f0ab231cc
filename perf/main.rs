//! Whole-system storage benchmarks with hdrhistogram percentiles, each printed
//! beside fio measured in the same run on the same file system (this machine
//! is shared and noisy: only same-run ratios mean anything).
//!
//! cargo bench --bench perf                 # everything
//! cargo bench --bench perf -- commit       # durable commit latency only
//! cargo bench --bench perf -- group        # group-commit throughput only
//! cargo bench --bench perf -- apply        # apply into column files only
//! PERF_DIR=/mnt/nvme/x cargo bench --bench perf   # measure another disk
//! PERF_CHECKPOINT_MS=60000 ...             # checkpoint interval (default 1000)
//! PERF_APPLY_MS=50 ...                     # least time between apply steps (default 5)
//! PERF_SECONDS=10 ...                      # length of each throughput run
//!
//! Reference table: cpu (see src/gen.rs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt::db::{Database, DbOptions, TableHandle};
use basalt::gen::CpuGenerator;
use hdrhistogram::Histogram;

mod fio;
use fio::{fio, Fio};

const ENGINES: [&str; 3] = ["glommio", "tokio-uring", "portable"];

fn open(dir: &Path, engine: &str) -> (Database, Arc<TableHandle>) {
    let _ = std::fs::remove_dir_all(dir);
    let mut opts = DbOptions {
        data_dir: dir.to_path_buf(),
        engine: engine.parse().expect("engine name"),
        ..DbOptions::default()
    };
    if let Some(ms) = std::env::var("PERF_CHECKPOINT_MS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        opts.checkpoint_interval = Duration::from_millis(ms);
    }
    let db = Database::open(opts).expect("open database");
    let t = db
        .create_table("cpu", CpuGenerator::default().schema())
        .expect("create cpu");
    (db, t)
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn commit_latency(base: &Path) {
    println!("\n== durable commit latency (one committer, commit returns after fdatasync) ==");
    // fio at 4k (the yardstick) and at the size of a 1,000-row WAL
    // record (~56 KiB), so the 1,000-row case is also compared like for like.
    let fio_4k = fio(base, 4096, 16);
    let fio_56k = fio(base, 57_344, 64);
    for (name, f) in [("4k", &fio_4k), ("56k", &fio_56k)] {
        if let Some(f) = f {
            println!(
                "fio io_uring {name} write+fdatasync: fdatasync p50 {:.1} µs  p99 {:.1} µs  p999 {:.1} µs  (write p99 {:.1} µs)",
                f.sync_p50_us, f.sync_p99_us, f.sync_p999_us, f.write_p99_us
            );
        }
    }
    let fio = fio_4k;
    println!(
        "{:<12} {:>6} {:>8} {:>10} {:>10} {:>10} {:>14} {:>16}",
        "engine",
        "rows",
        "commits",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "p99 / fio4k p99",
        "p99 / fio56k p99"
    );
    let gen = CpuGenerator::default();
    for engine in ENGINES {
        for (rows, commits) in [(1usize, 3000u64), (1000, 1500)] {
            let (db, t) = open(&base.join("db"), engine);
            let batches: Vec<_> = (0..commits)
                .map(|i| gen.batch(i * rows as u64, rows, 0))
                .collect();
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            for (i, b) in batches.into_iter().enumerate() {
                let start = Instant::now();
                db.commit(&t, b).expect("commit");
                if i >= 50 {
                    h.record(start.elapsed().as_nanos() as u64).expect("record");
                }
            }
            let ratio = |f: &Option<Fio>| {
                f.as_ref()
                    .map_or(f64::NAN, |f| us(&h, 0.99) / f.sync_p99_us)
            };
            println!(
                "{:<12} {:>6} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>15.2} {:>16.2}",
                engine,
                rows,
                h.len(),
                us(&h, 0.5),
                us(&h, 0.99),
                us(&h, 0.999),
                ratio(&fio),
                ratio(&fio_56k),
            );
            db.close();
        }
    }
}

fn group_commit(base: &Path, seconds: f64) {
    println!("\n== group-commit throughput (1,000-row commits, {seconds} s per run) ==");
    println!(
        "{:<12} {:>10} {:>12} {:>10} {:>12} {:>10} {:>14} {:>10}",
        "engine",
        "committers",
        "rows/s",
        "MB/s",
        "commits/sync",
        "KiB/sync",
        "fio MB/s same",
        "ratio"
    );
    let gen = Arc::new(CpuGenerator::default());
    for engine in ENGINES {
        for committers in [1usize, 8, 64] {
            let (db, t) = open(&base.join("db"), engine);
            let db = Arc::new(db);
            let stop = Arc::new(AtomicBool::new(false));
            let rows = Arc::new(AtomicU64::new(0));
            // Pre-build one batch per committer: the bench measures the WAL, not the generator.
            let threads: Vec<_> = (0..committers)
                .map(|c| {
                    let (db, t, stop, rows, gen) = (
                        db.clone(),
                        t.clone(),
                        stop.clone(),
                        rows.clone(),
                        gen.clone(),
                    );
                    std::thread::spawn(move || {
                        let batch = gen.batch(c as u64 * 1000, 1000, 0);
                        while !stop.load(Ordering::Relaxed) {
                            db.commit(&t, batch.clone()).expect("commit");
                            rows.fetch_add(1000, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            let (g0, c0, b0) = db.wal_totals();
            let r0 = rows.load(Ordering::Relaxed);
            let start = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(seconds));
            let (g1, c1, b1) = db.wal_totals();
            let r1 = rows.load(Ordering::Relaxed);
            let el = start.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            for th in threads {
                th.join().expect("committer");
            }
            let groups = (g1 - g0).max(1);
            let bytes = b1 - b0;
            let per_sync = bytes / groups;
            // fio at the same fsync cadence: one fdatasync per `per_sync` bytes.
            let bs = (per_sync.max(4096) / 4096 * 4096) as usize;
            let size_mb = ((bytes as f64 / 1e6) as usize).clamp(16, 256);
            let f = fio(base, bs, size_mb);
            let mbs = bytes as f64 / el / 1e6;
            println!(
                "{:<12} {:>10} {:>12.0} {:>10.1} {:>12.1} {:>10.1} {:>14.1} {:>10.2}",
                engine,
                committers,
                (r1 - r0) as f64 / el,
                mbs,
                (c1 - c0) as f64 / groups as f64,
                per_sync as f64 / 1024.0,
                f.as_ref().map_or(f64::NAN, |f| f.mb_per_s),
                f.as_ref().map_or(f64::NAN, |f| mbs / f.mb_per_s),
            );
            drop(db);
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Apply throughput into column files, wall clock (fsyncs included) and per
/// CPU-second of the applying thread (what "per core" means).
fn apply(base: &Path) {
    use basalt::batch::BatchBuilder;
    use basalt::gen::BASE_TS_US;
    use basalt::table::TableWriter;
    const ROWS: usize = 1_000_000;
    const STEPS: u64 = 5;
    println!("\n== apply into column files ({STEPS} steps of {ROWS} rows, cpu table) ==");
    println!(
        "{:<28} {:>14} {:>16} {:>10} {:>22}",
        "case", "rows/s wall", "rows/s per core", "cpu share", "+checkpoint rows/s"
    );
    let gen = CpuGenerator::default();
    for o3_every in [0usize, 10] {
        let dir = base.join("apply");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("apply dir");
        let mut w = TableWriter::create(&dir, "cpu", gen.schema()).expect("create");
        let (mut wall, mut cpu, mut ckpt) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for step in 0..STEPS {
            let first = step * ROWS as u64;
            let mut b = BatchBuilder::new(gen.schema());
            for k in 0..ROWS as u64 {
                let i = first + k;
                // Every o3_every-th row lands inside the range already applied.
                let ts = if o3_every > 0 && step > 0 && k % o3_every as u64 == 0 {
                    BASE_TS_US + (i * 7919 % first) as i64
                } else {
                    BASE_TS_US + i as i64
                };
                gen.row(&mut b, i, ts);
            }
            let batch = b.finish();
            let (w0, c0) = (Instant::now(), thread_cpu());
            w.apply(&[(step + 1, &batch)]).expect("apply");
            let (applied, cpu_applied) = (w0.elapsed(), thread_cpu() - c0);
            let k0 = Instant::now();
            w.checkpoint().expect("checkpoint");
            if step > 0 {
                wall += applied;
                cpu += cpu_applied;
                ckpt += k0.elapsed();
            }
        }
        let rows = ((STEPS - 1) * ROWS as u64) as f64;
        println!(
            "{:<28} {:>14.0} {:>16.0} {:>9.0}% {:>22.0}",
            if o3_every == 0 {
                "in order"
            } else {
                "10% out of order (O3 merge)"
            },
            rows / wall.as_secs_f64(),
            rows / cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
            rows / (wall + ckpt).as_secs_f64(),
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let what = args.first().map_or("all", String::as_str);
    let base = std::env::var_os("PERF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/perf-data"));
    std::fs::create_dir_all(&base).expect("create PERF_DIR");
    println!(
        "perf data dir: {} (set PERF_DIR to measure another disk)",
        base.display()
    );
    let seconds: f64 = std::env::var("PERF_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    if what == "all" || what == "commit" {
        commit_latency(&base);
    }
    if what == "all" || what == "group" {
        group_commit(&base, seconds);
    }
    if what == "all" || what == "apply" {
        apply(&base);
    }
}
