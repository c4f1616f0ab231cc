//! The `basalt` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basalt::batch::Value;
use basalt::db::{Database, DbError, DbOptions};
use basalt::gen::{CpuGenerator, BASE_TS_US};
use basalt::io::EngineChoice;
use basalt::table::{ScanResult, TableError};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "basalt",
    version,
    about = "basalt: a time-series storage node",
    long_about = "basalt: a time-series storage node.\n\n\
        Rows are made durable in a write-ahead log on thread-per-core shards \
        (io_uring through glommio or tokio-uring, or portable pwrite/fdatasync), \
        then applied into columnar, time-partitioned table files.\n\n\
        Without a subcommand, runs `demo` with its defaults."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Args, Clone)]
struct NodeArgs {
    /// Directory holding the tables and their WALs.
    #[arg(
        long,
        global = true,
        env = "BASALT_DATA_DIR",
        default_value = "basalt-data"
    )]
    data_dir: PathBuf,
    /// WAL I/O engine: auto (io_uring via glommio when the kernel allows it,
    /// else tokio-uring, else portable), glommio, tokio-uring or portable.
    #[arg(long, global = true, env = "BASALT_IO_ENGINE", default_value = "auto")]
    io_engine: EngineChoice,
    /// Shard threads, each pinned to a core. 0 = one per core.
    #[arg(long, global = true, env = "BASALT_SHARDS", default_value_t = 0)]
    shards: usize,
    /// How often applied txns are made durable in the table files (and their
    /// WAL dropped). Shorter: less WAL to replay after a crash; longer: fewer
    /// fsync bursts next to commits.
    #[arg(
        long,
        global = true,
        env = "BASALT_CHECKPOINT_INTERVAL_MS",
        default_value_t = 10_000
    )]
    checkpoint_interval_ms: u64,
}

impl NodeArgs {
    fn open(&self) -> Result<Database, DbError> {
        Database::open(DbOptions {
            data_dir: self.data_dir.clone(),
            engine: self.io_engine.clone(),
            shards: self.shards,
            checkpoint_interval: Duration::from_millis(self.checkpoint_interval_ms.max(1)),
            ..DbOptions::default()
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create the reference table `cpu` (if missing), ingest generated rows
    /// through the WAL, and print a scan of what landed.
    Demo {
        /// Rows to ingest.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Rows per commit (one txn each).
        #[arg(long, default_value_t = 10_000)]
        batch_rows: usize,
        /// Concurrent committer threads.
        #[arg(long, default_value_t = 4)]
        committers: usize,
    },
    /// Print rows of a table as tab-separated text.
    Scan {
        /// Table to read.
        table: String,
        /// Columns to print, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// Only rows with designated timestamp >= this (µs since epoch).
        #[arg(long)]
        from_us: Option<i64>,
        /// Only rows with designated timestamp < this (µs since epoch).
        #[arg(long)]
        to_us: Option<i64>,
        /// Print at most this many rows.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// List tables with their committed txn, partitions and row counts.
    Tables,
    /// Ingest InfluxDB Line Protocol from a file (or `-` for stdin): tables
    /// and columns are created on first use; the whole input is one request
    /// (a bad line commits nothing and names the line).
    Ingest {
        /// File of ILP lines, or `-` for standard input.
        file: PathBuf,
        /// Unit of the trailing timestamps: n, u, ms or s.
        #[arg(long, default_value = "n")]
        precision: String,
        /// Partition scheme of tables created by this input.
        #[arg(long, default_value = "DAY")]
        partition_by: basalt::table::PartitionBy,
    },
    /// Test support: ingest acknowledged batches forever, printing `ack <id>`
    /// after each durable commit (the crash test kills it with SIGKILL).
    #[command(hide = true)]
    CrashChild {
        #[arg(long, default_value_t = 0)]
        first_batch: u64,
        #[arg(long, default_value_t = 100)]
        batch_rows: usize,
        #[arg(long, default_value_t = 4)]
        committers: usize,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BASALT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo {
        rows: 1_000_000,
        batch_rows: 10_000,
        committers: 4,
    }) {
        Command::Demo {
            rows,
            batch_rows,
            committers,
        } => demo(&cli.node, rows, batch_rows.max(1), committers.max(1)).map_err(|e| e.to_string()),
        Command::Scan {
            table,
            columns,
            from_us,
            to_us,
            limit,
        } => scan(&cli.node, &table, &columns, from_us, to_us, limit).map_err(|e| e.to_string()),
        Command::Tables => tables(&cli.node).map_err(|e| e.to_string()),
        Command::Ingest {
            file,
            precision,
            partition_by,
        } => ingest(&cli.node, &file, &precision, partition_by),
        Command::CrashChild {
            first_batch,
            batch_rows,
            committers,
        } => crash_child(&cli.node, first_batch, batch_rows, committers).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("basalt: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open_cpu(db: &Database) -> Result<Arc<basalt::db::TableHandle>, DbError> {
    match db.table("cpu") {
        Some(t) => Ok(t),
        None => db.create_table("cpu", CpuGenerator::default().schema()),
    }
}

fn demo(node: &NodeArgs, rows: u64, batch_rows: usize, committers: usize) -> Result<(), DbError> {
    let db = node.open()?;
    let table = open_cpu(&db)?;
    let first = db.reader("cpu")?.state()?.row_count();
    let gen = CpuGenerator::default();
    let next = AtomicU64::new(0);
    let last_txn = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| -> Result<(), DbError> {
        let workers: Vec<_> = (0..committers)
            .map(|_| {
                s.spawn(|| -> Result<(), DbError> {
                    loop {
                        let at = next.fetch_add(batch_rows as u64, Ordering::Relaxed);
                        if at >= rows {
                            return Ok(());
                        }
                        let n = batch_rows.min((rows - at) as usize);
                        let txn = db.commit(&table, gen.batch(first + at, n, 0))?;
                        last_txn.fetch_max(txn, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("committer thread panicked")?;
        }
        Ok(())
    })?;
    let durable = started.elapsed();
    table.wait_applied(last_txn.load(Ordering::Relaxed), Duration::from_secs(600))?;
    let applied = started.elapsed();
    println!(
        "ingested {rows} rows of cpu in {} txns through the WAL ({} engine, {} shards): durable in {:.2?} ({:.0} rows/s), applied in {:.2?}",
        rows.div_ceil(batch_rows as u64),
        db.engine().choice,
        db.shard_count(),
        durable,
        rows as f64 / durable.as_secs_f64(),
        applied,
    );
    let result = db.scan("cpu", &[], None)?;
    print_summary(&result, 5);
    let day = db.scan(
        "cpu",
        &["host", "usage_user", "ts"],
        Some(BASE_TS_US..BASE_TS_US + 1_000),
    )?;
    println!(
        "rows in the first millisecond of 2024-01-01 (time-range scan): {}",
        day.row_count()
    );
    db.close();
    Ok(())
}

fn scan(
    node: &NodeArgs,
    table: &str,
    columns: &[String],
    from_us: Option<i64>,
    to_us: Option<i64>,
    limit: usize,
) -> Result<(), DbError> {
    let reader = basalt::table::TableReader::open(&node.data_dir, table)?;
    let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
    let range = match (from_us, to_us) {
        (None, None) => None,
        (f, t) => Some(f.unwrap_or(i64::MIN)..t.unwrap_or(i64::MAX)),
    };
    let result = reader.scan(&cols, range)?;
    print_rows(&result, 0..result.row_count().min(limit));
    println!("({} rows at txn {})", result.row_count(), result.txn);
    Ok(())
}

fn ingest(
    node: &NodeArgs,
    file: &std::path::Path,
    precision: &str,
    partition_by: basalt::table::PartitionBy,
) -> Result<(), String> {
    use std::io::Read;
    let precision = basalt::ilp::Precision::from_param(precision)
        .ok_or_else(|| format!("unknown precision {precision:?} (expected n, u, ms or s)"))?;
    let mut body = Vec::new();
    if file == std::path::Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|e| format!("reading stdin: {e}"))?;
    } else {
        body = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    }
    let db = node.open().map_err(|e| e.to_string())?;
    let opts = basalt::ingest::IngestOptions {
        precision,
        partition_by,
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let report = basalt::ingest::Ingestor::new(&db, opts)
        .ingest(&body, now_us)
        .map_err(|e| e.to_string())?;
    for (table, rows, txn) in &report.tables {
        println!("{table}: {rows} rows committed as txn {txn}");
        if let Some(t) = db.table(table) {
            t.wait_applied(*txn, Duration::from_secs(600))
                .map_err(|e| e.to_string())?;
        }
    }
    println!("{} lines ingested", report.lines);
    db.close();
    Ok(())
}

fn tables(node: &NodeArgs) -> Result<(), DbError> {
    let entries = std::fs::read_dir(&node.data_dir).map_err(TableError::io(&node.data_dir))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(basalt::table::files::META_FILE).is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    println!("table\ttxn\tpartitions\trows\treplication");
    for n in names {
        let r = basalt::table::TableReader::open(&node.data_dir, &n)?;
        let s = r.state()?;
        println!(
            "{n}\t{}\t{}\t{}\t{}",
            s.txn,
            s.partitions.len(),
            s.row_count(),
            if r.schema().is_local_only() {
                "local-only"
            } else {
                "replicated"
            }
        );
    }
    Ok(())
}

fn format_value(v: Value<'_>) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Byte(x) => x.to_string(),
        Value::Short(x) => x.to_string(),
        Value::Int(x) => x.to_string(),
        Value::Long(x) => x.to_string(),
        Value::Float(x) => x.to_string(),
        Value::Double(x) => x.to_string(),
        Value::Timestamp(us) => chrono::DateTime::from_timestamp_micros(us)
            .map_or(us.to_string(), |t| {
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            }),
        Value::Symbol(s) | Value::Varchar(s) => s.to_string(),
    }
}

fn print_rows(r: &ScanResult, rows: std::ops::Range<usize>) {
    println!("{}", r.names.join("\t"));
    print_values(r, rows);
}

fn print_values(r: &ScanResult, rows: std::ops::Range<usize>) {
    for row in rows {
        let line: Vec<String> = (0..r.columns.len())
            .map(|c| format_value(r.value(c, row)))
            .collect();
        println!("{}", line.join("\t"));
    }
}

fn print_summary(r: &ScanResult, n: usize) {
    let total = r.row_count();
    println!(
        "scan of cpu at txn {}: {total} rows; first and last {n}:",
        r.txn
    );
    print_rows(r, 0..total.min(n));
    if total > n {
        println!("...");
        print_values(r, total.saturating_sub(n).max(n)..total);
    }
}

/// Commits batches of `batch_rows` rows; batch `b` holds rows with
/// `requests = b * batch_rows + j`. Timestamps spread over three days and
/// arrive out of order across committers, so O3 merges happen too.
fn crash_child(
    node: &NodeArgs,
    first_batch: u64,
    batch_rows: usize,
    committers: usize,
) -> Result<(), DbError> {
    let db = node.open()?;
    let table = open_cpu(&db)?;
    let gen = CpuGenerator::default();
    let next = AtomicU64::new(first_batch);
    let out = Mutex::new(std::io::stdout());
    std::thread::scope(|s| {
        for _ in 0..committers {
            s.spawn(|| loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                let mut builder = basalt::batch::BatchBuilder::new(gen.schema());
                for j in 0..batch_rows as u64 {
                    let i = b * batch_rows as u64 + j;
                    let day = (b % 3) as i64 * 86_400_000_000;
                    gen.row(&mut builder, i, BASE_TS_US + day + i as i64);
                }
                match db.commit(&table, builder.finish()) {
                    Ok(_) => {
                        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = writeln!(o, "ack {b}");
                        let _ = o.flush();
                    }
                    Err(e) => {
                        eprintln!("commit of batch {b} failed: {e}");
                        std::process::exit(3);
                    }
                }
            });
        }
    });
    Ok(())
}
