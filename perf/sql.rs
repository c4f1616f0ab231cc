//! SQL on 10M rows of the reference table, through a release `basalt
//! serve`'s HTTP `/exec` (the same engine answers PostgreSQL clients), with
//! hdrhistogram percentiles and the server's peak memory per query.
//!
//! cargo bench --bench sql
//! PERF_SQL_ROWS=10000000   rows (default 10M; kept under PERF_DIR between runs)
//! PERF_SQL_RUNS=15         timed runs per query (after one warm-up)
//! PERF_DIR=...             where the data goes (default target/perf-data)
//!
//! The data: `cpu` (docs: src/gen.rs), 100 hosts, one row every 86.4 ms,
//! so 10M rows cover 10 days = 10 DAY partitions of 1M rows.
//!
//! Yardstick, same run: memcpy of as many bytes as the full scan reads (one
//! f64 column of every row), so "scan GB/s" can be read against what this
//! machine's memory does at that moment.

mod node;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt::batch::BatchBuilder;
use basalt::db::{Database, DbOptions};
use basalt::gen::{CpuGenerator, BASE_TS_US};
use basalt::io::EngineChoice;
use hdrhistogram::Histogram;

/// Row spacing: 10M rows over 10 days.
const ROW_SPACING_US: i64 = 86_400;
const BATCH_ROWS: u64 = 100_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fills `dir` with `rows` rows of `cpu` (unless it already holds them).
fn load(dir: &Path, rows: u64) {
    let have = node::visible_rows(dir, &["cpu".to_string()]);
    if have == rows {
        println!("  data: {rows} rows already in {}", dir.display());
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    let t = Instant::now();
    let db = Database::open(DbOptions {
        data_dir: dir.to_path_buf(),
        engine: EngineChoice::Auto,
        retain_wal_for_upload: false,
        ..DbOptions::default()
    })
    .expect("open the database");
    let gen = CpuGenerator::default();
    let table = db.create_table("cpu", gen.schema()).expect("create cpu");
    let mut first = 0;
    while first < rows {
        let n = BATCH_ROWS.min(rows - first);
        let mut b = BatchBuilder::new(gen.schema());
        for i in first..first + n {
            gen.row(&mut b, i, BASE_TS_US + i as i64 * ROW_SPACING_US);
        }
        db.commit(&table, b.finish()).expect("commit");
        first += n;
    }
    db.close();
    println!(
        "  data: {rows} rows loaded in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        dir.display()
    );
}

/// `/exec` of `sql`; returns the parsed answer.
fn exec(http: SocketAddr, sql: &str) -> serde_json::Value {
    let q: String = form_urlencoded::byte_serialize(sql.as_bytes()).collect();
    node::get_json(http, &format!("/exec?query={q}"))
}

/// A field of /proc/<pid>/status in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Samples the server's anonymous (heap) memory while a query runs.
struct MemWatch {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl MemWatch {
    fn start(pid: u32) -> MemWatch {
        // Resets VmHWM (peak RSS) to the current RSS.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak_kb.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(status_kb(pid, "RssAnon:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        MemWatch {
            stop,
            peak_kb,
            thread,
        }
    }

    /// (peak anonymous RSS, peak total RSS incl. mapped files) in MiB.
    fn finish(self, pid: u32) -> (f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.peak_kb.load(Ordering::Relaxed) as f64 / 1024.0,
            status_kb(pid, "VmHWM:") as f64 / 1024.0,
        )
    }
}

/// memcpy of `bytes`, best of 5: GB/s.
fn memcpy_gbs(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e9
}

struct Query {
    name: &'static str,
    sql: String,
    /// Rows the query reads (for rows/s).
    rows: u64,
    /// Column bytes it reads (for GB/s).
    bytes: u64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("sql: bench");
        return;
    }
    let rows = env_u64("PERF_SQL_ROWS", 10_000_000);
    let runs = env_u64("PERF_SQL_RUNS", 15).max(1);
    let base = std::env::var("PERF_DIR").unwrap_or_else(|_| "target/perf-data".into());
    let dir = Path::new(&base).join(format!("sql-{rows}"));
    std::fs::create_dir_all(&base).expect("create PERF_DIR");
    println!("sql bench: {rows} rows of cpu, {runs} runs per query");
    load(&dir, rows);
    let server = node::start(&dir, &["--object-store", "off"]);
    let pid = server.child.id();
    let hour_start = BASE_TS_US + (rows as i64 * ROW_SPACING_US) / 2;
    let hour = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .expect("in range")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let hour_rows = (3_600_000_000 / ROW_SPACING_US) as u64;
    let queries = [
        Query {
            name: "full scan count/sum/avg",
            sql: "select count(*), sum(usage_user), avg(usage_user) from cpu".into(),
            rows,
            bytes: rows * 8,
        },
        Query {
            name: "GROUP BY host averages",
            sql: "select host, avg(usage_user), avg(usage_system) from cpu group by host".into(),
            rows,
            bytes: rows * (4 + 8 + 8),
        },
        Query {
            name: "1 hour, 1-minute samples",
            sql: format!(
                "select date_bin(interval '1 minute', ts) as minute, avg(usage_user), max(temp) \
                 from cpu where ts >= '{}' and ts < '{}' group by 1 order by 1",
                hour(hour_start),
                hour(hour_start + 3_600_000_000)
            ),
            rows: hour_rows,
            bytes: hour_rows * (8 + 8 + 8),
        },
        Query {
            name: "latest row per host (DISTINCT ON)",
            sql: "select distinct on (host) host, usage_user, temp, ts from cpu order by host, ts desc"
                .into(),
            rows,
            bytes: rows * (4 + 8 + 8 + 8),
        },
        Query {
            name: "latest row per host (last_value)",
            sql: "select host, last_value(usage_user order by ts) as usage_user, \
                  last_value(temp order by ts) as temp, max(ts) as ts from cpu group by host"
                .into(),
            rows,
            bytes: rows * (4 + 8 + 8 + 8),
        },
    ];
    let memcpy = memcpy_gbs((rows * 8) as usize);
    println!(
        "  yardstick: memcpy of {} MB: {memcpy:.2} GB/s",
        rows * 8 / 1_000_000
    );
    println!(
        "  {:<36} {:>9} {:>9} {:>9} {:>12} {:>8} {:>10} {:>10}",
        "query", "p50 ms", "p99 ms", "max ms", "rows/s", "GB/s", "anon MiB", "RSS MiB"
    );
    for q in &queries {
        let first = exec(server.http, &q.sql);
        assert!(
            first["count"].as_u64().unwrap_or(0) > 0,
            "{}: {first}",
            q.name
        );
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        let watch = MemWatch::start(pid);
        for _ in 0..runs {
            let t = Instant::now();
            std::hint::black_box(exec(server.http, &q.sql));
            h.record(t.elapsed().as_micros() as u64).expect("record");
        }
        let (anon, rss) = watch.finish(pid);
        let p50 = h.value_at_quantile(0.5) as f64 / 1e6;
        println!(
            "  {:<36} {:>9.1} {:>9.1} {:>9.1} {:>12.0} {:>8.2} {:>10.0} {:>10.0}",
            q.name,
            p50 * 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.max() as f64 / 1e3,
            q.rows as f64 / p50,
            q.bytes as f64 / p50 / 1e9,
            anon,
            rss,
        );
    }
    // A check that the answers are right, not just fast.
    let total = exec(server.http, "select count(*) as n from cpu");
    assert_eq!(total["dataset"][0][0].as_u64(), Some(rows), "{total}");
    let latest = exec(
        server.http,
        "select distinct on (host) host, requests from cpu order by host, ts desc",
    );
    let hosts = latest["dataset"].as_array().expect("rows");
    assert_eq!(hosts.len() as u64, basalt::gen::HOSTS.min(rows));
    for r in hosts {
        let req = r[1].as_u64().expect("requests");
        assert!(
            req >= rows - basalt::gen::HOSTS,
            "latest requests {req} of {r}"
        );
    }
    println!(
        "  answers checked: count = {rows}, latest row of each of {} hosts",
        hosts.len()
    );
}
