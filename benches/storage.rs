//! Criterion micro-benchmarks of the storage core on the reference table:
//! apply into column files (in order, and with 10% of rows out of order),
//! the WAL payload codec, and ILP text parsed into column batches, each
//! beside a memcpy of the same bytes.
//!
//! cargo bench --bench storage

use std::path::Path;

use basalt::batch::{codec, Batch, BatchBuilder};
use basalt::db::{Database, DbOptions};
use basalt::gen::{CpuGenerator, BASE_TS_US};
use basalt::ingest::{IngestBuffer, IngestOptions, Ingestor};
use basalt::io::EngineChoice;
use basalt::table::TableWriter;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const ROWS: usize = 1_000_000;

/// Raw bytes of the batch's values, for the memcpy yardstick.
fn value_bytes(b: &Batch) -> usize {
    let mut buf = Vec::new();
    codec::encode(b, &mut buf);
    buf.len()
}

fn fresh_table(dir: &Path, gen: &CpuGenerator) -> TableWriter {
    let _ = std::fs::remove_dir_all(dir.join("cpu"));
    TableWriter::create(dir, "cpu", gen.schema()).expect("create table")
}

/// A batch where `o3_every`-th rows go back in time, inside the range already applied.
fn batch_with_o3(gen: &CpuGenerator, first: u64, n: usize, o3_every: usize) -> Batch {
    let mut b = BatchBuilder::new(gen.schema());
    for k in 0..n {
        let i = first + k as u64;
        let ts = if o3_every > 0 && k % o3_every == 0 {
            BASE_TS_US + (i as i64 % first.max(1) as i64)
        } else {
            BASE_TS_US + i as i64
        };
        gen.row(&mut b, i, ts);
    }
    b.finish()
}

fn apply(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let gen = CpuGenerator::default();
    let mut g = c.benchmark_group("apply");
    g.sample_size(10);
    g.throughput(Throughput::Elements(ROWS as u64));

    // In order: each iteration appends the next 1M rows (one apply step, fsyncs included).
    let mut w = fresh_table(dir.path(), &gen);
    let mut next = 0u64;
    let mut txn = 0u64;
    g.bench_function("in_order_1M_rows", |b| {
        b.iter_batched(
            || {
                let batch = gen.batch(next, ROWS, 0);
                next += ROWS as u64;
                batch
            },
            |batch| {
                txn += 1;
                w.apply(&[(txn, &batch)]).expect("apply");
            },
            BatchSize::PerIteration,
        )
    });

    // 10% out of order: a partition of 1M rows, then 1M more of which every tenth
    // lands inside the existing range, forcing a merge into a new partition version.
    g.bench_function("o3_10pct_1M_rows_into_1M", |b| {
        b.iter_batched(
            || {
                let mut w = fresh_table(dir.path(), &gen);
                w.apply(&[(1, &gen.batch(0, ROWS, 0))]).expect("seed");
                (w, batch_with_o3(&gen, ROWS as u64, ROWS, 10))
            },
            |(mut w, batch)| {
                w.apply(&[(2, &batch)]).expect("apply");
            },
            BatchSize::PerIteration,
        )
    });

    // Yardstick: memcpy of as many bytes as the batch's encoded values.
    let bytes = value_bytes(&gen.batch(0, ROWS, 0));
    let src = vec![7u8; bytes];
    let mut dst = vec![0u8; bytes];
    g.bench_function("memcpy_same_bytes", |b| {
        b.iter(|| {
            dst.copy_from_slice(&src);
            criterion::black_box(&dst);
        })
    });
    g.finish();
}

fn codec_bench(c: &mut Criterion) {
    let gen = CpuGenerator::default();
    let batch = gen.batch(0, 100_000, 0);
    let mut buf = Vec::new();
    codec::encode(&batch, &mut buf);
    let mut g = c.benchmark_group("wal_payload");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("encode_100k_rows", |b| {
        let mut out = Vec::with_capacity(buf.len());
        b.iter(|| {
            out.clear();
            codec::encode(&batch, &mut out);
        })
    });
    g.bench_function("decode_100k_rows", |b| {
        b.iter(|| codec::decode(&buf, gen.schema()).expect("decode"))
    });
    g.finish();
}

/// ILP text of the reference table into column batches (what a server
/// does with every request before the WAL), beside a memcpy of the text.
fn ilp_bench(c: &mut Criterion) {
    const LINES: u64 = 100_000;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let db = Database::open(DbOptions {
        data_dir: dir.path().to_path_buf(),
        engine: EngineChoice::Portable,
        shards: 1,
        ..DbOptions::default()
    })
    .expect("open database");
    let gen = CpuGenerator::default();
    let mut text = Vec::new();
    for i in 0..LINES {
        gen.ilp_line(&mut text, "cpu", i);
    }
    let parse = |ing: &Ingestor| {
        let mut buf = IngestBuffer::default();
        let used = ing.add(&mut buf, &text, 0, true).expect("valid ILP");
        assert_eq!(used, text.len());
        ing.take_batches(&mut buf)
    };
    let fast = Ingestor::new(&db, IngestOptions::default());
    let general = Ingestor::new(&db, IngestOptions::default()).general_path_only();
    // The first run creates the table and its columns.
    let batches = parse(&fast);
    assert_eq!(batches[0].1 as u64, LINES);
    assert_eq!(batches[0].2, parse(&general)[0].2, "both paths agree");
    let mut g = c.benchmark_group("ilp_parse");
    g.throughput(Throughput::Elements(LINES));
    // Lines straight into the columns (what servers do)...
    g.bench_function("text_to_batch_100k_rows", |b| b.iter(|| parse(&fast)));
    // ... and each line parsed into values, then mapped (the general path).
    g.bench_function("text_to_batch_100k_rows_general_path", |b| {
        b.iter(|| parse(&general))
    });
    let mut dst = vec![0u8; text.len()];
    g.bench_function("memcpy_same_bytes", |b| {
        b.iter(|| {
            dst.copy_from_slice(&text);
            criterion::black_box(&dst);
        })
    });
    g.finish();
    drop(batches);
    db.close();
}

criterion_group!(benches, apply, codec_bench, ilp_bench);
criterion_main!(benches);
