//! Criterion benchmarks of the segment format on the reference table, for
//! 1 MiB and 64 MiB segments, each beside a memcpy of the same number of
//! bytes measured in the same run (the yardstick):
//! - encode: sealing as the uploader does it: each txn's WAL record copied
//!   into a pooled upload buffer, the body hashed, the header serialized
//!   after it (the WAL records are made outside the timing);
//! - verify+access: preamble, xxh3 of header and body, validated rkyv access;
//! - apply: map and verify the segment file, check each payload in place
//!   and apply the txns into a table's column files (no fsync: a checkpoint
//!   is not part of apply).
//!
//! Apply is also set beside a second yardstick: write(2) of the same bytes
//! into a new file. Also prints the lz4 compression ratio of the reference
//! table.
//!
//! cargo bench --bench segment

use basalt::batch::codec;
use basalt::batch::{Batch, Values};
use basalt::gen::CpuGenerator;
use basalt::segment::{apply_segment, BufferPool, Compression, Segment, SegmentWriter};
use basalt::table::TableWriter;
use basalt::wal::format::{append_record, RecordHeader};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// Txns of 10,000 rows (~0.5 MiB each) until the segment holds `bytes`.
fn txns_for(gen: &CpuGenerator, bytes: usize) -> Vec<(u64, Batch)> {
    let per_txn_rows = 10_000usize.min(bytes / 60);
    let mut out = Vec::new();
    let mut size = 0;
    let mut t = 0u64;
    while size < bytes {
        let b = gen.batch(t * per_txn_rows as u64, per_txn_rows, 0);
        size += batch_bytes(&b);
        t += 1;
        out.push((t, b));
    }
    out
}

/// Bytes of a batch's buffers.
fn batch_bytes(b: &Batch) -> usize {
    b.columns
        .iter()
        .map(|c| {
            let values = match &c.values {
                Values::Fixed(v) => v.len(),
                Values::Var { offsets, bytes } => bytes.len() + offsets.len() * 8,
            };
            values + c.validity.as_ref().map_or(0, Vec::len)
        })
        .sum()
}

/// A writer holding copies of `txns` (built outside the timed part).
fn filled_writer(gen: &CpuGenerator, txns: &[(u64, Batch)]) -> SegmentWriter {
    let mut w = SegmentWriter::new(1, "cpu", gen.schema()).expect("writer");
    for (t, b) in txns {
        w.push(*t, 0, b.clone()).expect("push");
    }
    w
}

/// The txns as the shards write them: WAL records.
fn wal_records(txns: &[(u64, Batch)]) -> Vec<(RecordHeader, Vec<u8>)> {
    txns.iter()
        .map(|(t, b)| {
            let mut payload = Vec::new();
            codec::encode(b, &mut payload);
            let h = RecordHeader {
                payload_len: payload.len() as u32,
                txn: *t,
                commit_time_us: 0,
                group_start: 0,
                row_count: b.row_count() as u32,
                schema_version: 1,
                flags: 1,
            };
            let mut rec = Vec::new();
            append_record(&mut rec, &h, &payload);
            (h, rec)
        })
        .collect()
}

/// Seals `records` as the uploader does.
fn seal(
    gen: &CpuGenerator,
    records: &[(RecordHeader, Vec<u8>)],
    pool: Option<&std::sync::Arc<BufferPool>>,
    compression: Compression,
) -> basalt::segment::EncodedSegment {
    let bytes: usize = records.iter().map(|(_, r)| r.len()).sum();
    let mut w = SegmentWriter::new_in(1, "cpu", gen.schema(), pool, bytes).expect("writer");
    for (h, r) in records {
        w.push_record(h, r).expect("push");
    }
    w.finish(compression).expect("finish")
}

fn encode(txns: &[(u64, Batch)], gen: &CpuGenerator, compression: Compression) -> Vec<u8> {
    filled_writer(gen, txns)
        .finish(compression)
        .expect("finish")
        .as_slice()
        .to_vec()
}

fn segments(c: &mut Criterion) {
    let gen = CpuGenerator::default();
    for (label, bytes) in [("1MiB", 1 << 20), ("64MiB", 64 << 20)] {
        let txns = txns_for(&gen, bytes);
        let plain = encode(&txns, &gen, Compression::None);
        let lz4 = encode(&txns, &gen, Compression::Lz4);
        println!(
            "segment {label}: {} txns, {} bytes; lz4 {} bytes (ratio {:.2})",
            txns.len(),
            plain.len(),
            lz4.len(),
            plain.len() as f64 / lz4.len() as f64
        );
        let mut g = c.benchmark_group(format!("segment_{label}"));
        g.sample_size(10);
        g.throughput(Throughput::Bytes(plain.len() as u64));

        let src = plain.clone();
        let mut dst = vec![0u8; src.len()];
        g.bench_function("memcpy_yardstick", |b| {
            b.iter(|| {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&dst);
            })
        });
        let records = wal_records(&txns);
        g.bench_function("encode", |b| {
            b.iter(|| seal(&gen, &records, None, Compression::None))
        });
        // As an uploader runs: buffers come back from finished uploads.
        let pool = BufferPool::new(2);
        g.bench_function("encode_pooled", |b| {
            b.iter(|| seal(&gen, &records, Some(&pool), Compression::None).into_bytes())
        });
        g.bench_function("encode_lz4", |b| {
            b.iter(|| seal(&gen, &records, Some(&pool), Compression::Lz4))
        });
        // The file is mapped as a replica would; verify runs on the mapping.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let path = dir.path().join("s.bsg");
        std::fs::write(&path, &plain).expect("write segment");
        g.bench_function("verify_access_mmap", |b| {
            b.iter(|| {
                let s = Segment::open(&path).expect("verify");
                std::hint::black_box(s.header().txn_count())
            })
        });
        let lz4_path = dir.path().join("s-lz4.bsg");
        std::fs::write(&lz4_path, &lz4).expect("write segment");
        g.bench_function("verify_access_lz4", |b| {
            b.iter(|| {
                let s = Segment::open(&lz4_path).expect("verify");
                std::hint::black_box(s.header().txn_count())
            })
        });
        // A second yardstick for apply: the same bytes written with
        // write(2) into a new file in the same directory (what apply
        // cannot avoid: page-cache pages allocated, cleared and filled).
        let mut k = 0u64;
        g.bench_function("file_write_yardstick", |b| {
            b.iter_batched(
                || {
                    let _ = std::fs::remove_file(dir.path().join(format!("w{k}")));
                    k += 1;
                    dir.path().join(format!("w{k}"))
                },
                |p| std::fs::write(&p, std::hint::black_box(&plain)).expect("write"),
                BatchSize::PerIteration,
            )
        });
        let mut n = 0u64;
        g.bench_function("apply", |b| {
            b.iter_batched(
                || {
                    // The previous iteration's table goes outside the timing.
                    let _ = std::fs::remove_dir_all(dir.path().join(format!("t{n}")));
                    n += 1;
                    let tdir = dir.path().join(format!("t{n}"));
                    std::fs::create_dir_all(&tdir).expect("table dir");
                    TableWriter::create_with_id(&tdir, "cpu", gen.schema(), 1).expect("table")
                },
                |mut w| {
                    let s = Segment::open(&path).expect("verify");
                    apply_segment(&mut w, &s).expect("apply");
                    w
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
}

criterion_group!(benches, segments);
criterion_main!(benches);
