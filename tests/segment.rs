//! Segments end to end: a table rebuilt on a "replica" from segments is
//! byte-identical to the primary's table built through the WAL; a committed
//! sample of each format version stays readable; `basalt inspect` names
//! what is wrong with a damaged file.

mod common;

use std::path::{Path, PathBuf};

use basalt::batch::{BatchBuilder, Value};
use basalt::gen::{CpuGenerator, BASE_TS_US};
use basalt::segment::{apply_segment, Compression, Link, Segment, SegmentError, SegmentWriter};
use basalt::table::{ColumnType, TableReader, TableWriter};
use common::{open_db, table_files, workload};

#[test]
fn a_replica_built_from_segments_equals_the_primary_byte_for_byte() {
    for compression in [Compression::None, Compression::Lz4] {
        let dir = tempfile::tempdir().unwrap();
        let primary = dir.path().join("primary");
        let db = open_db(&primary);
        let txns = workload(&db);
        let final_schema = db.table("cpu").unwrap().schema();
        db.close();
        let id = TableReader::open(&primary, "cpu").unwrap().table_id();

        // Segments of 5 txns each, with the schema as of their last txn.
        let gen = CpuGenerator::default();
        let mut segments = Vec::new();
        for chunk in txns.chunks(5) {
            let mut w = SegmentWriter::new(id, "cpu", &final_schema).unwrap();
            for (txn, b) in chunk {
                w.push(*txn, 0, b.clone()).unwrap();
            }
            let enc = w.finish(compression).unwrap();
            let path = dir.path().join(format!("{:020}.seg", chunk[0].0));
            enc.write_file(&path).unwrap();
            segments.push(path);
        }

        // The replica starts from the schema's first version.
        let replica = dir.path().join("replica");
        std::fs::create_dir_all(&replica).unwrap();
        let mut w = TableWriter::create_with_id(&replica, "cpu", gen.schema(), id).unwrap();
        for p in &segments {
            let seg = Segment::open(p).unwrap();
            apply_segment(&mut w, &seg).unwrap();
            // Applying again changes nothing.
            assert_eq!(apply_segment(&mut w, &seg).unwrap().applied_txns, 0);
        }
        w.checkpoint().unwrap();
        drop(w);
        let a = table_files(&primary.join("cpu"));
        let b = table_files(&replica.join("cpu"));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, v) in &a {
            assert!(
                v == &b[k],
                "{compression:?}: {k} differs between primary and replica"
            );
        }
        let sa = TableReader::open(&primary, "cpu")
            .unwrap()
            .scan(&[], None)
            .unwrap();
        let sb = TableReader::open(&replica, "cpu")
            .unwrap()
            .scan(&[], None)
            .unwrap();
        assert_eq!(sa.txn, sb.txn);
        assert_eq!(sa.names, sb.names);
        assert_eq!(sa.columns, sb.columns);
    }
}

#[test]
fn segments_of_another_table_or_with_a_gap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gen = CpuGenerator::default();
    let mut w = TableWriter::create_with_id(dir.path(), "cpu", gen.schema(), 42).unwrap();
    let seg_of = |id: u64, name: &str, first: u64| {
        let mut s = SegmentWriter::new(id, name, gen.schema()).unwrap();
        s.push(first, 0, gen.batch(0, 10, 0)).unwrap();
        Segment::from_slice(s.finish(Compression::None).unwrap().as_slice()).unwrap()
    };
    let e = apply_segment(&mut w, &seg_of(43, "cpu", 1)).unwrap_err();
    assert!(matches!(e, SegmentError::ForeignTable { .. }), "{e}");
    let e = apply_segment(&mut w, &seg_of(42, "mem", 1)).unwrap_err();
    assert!(matches!(e, SegmentError::ForeignTable { .. }), "{e}");
    let e = apply_segment(&mut w, &seg_of(42, "cpu", 3)).unwrap_err();
    assert!(
        matches!(
            e,
            SegmentError::Gap {
                missing_from: 1,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(w.state().txn, 0, "nothing bad was applied");
    apply_segment(&mut w, &seg_of(42, "cpu", 1)).unwrap();
    assert_eq!(w.state().txn, 1);
}

fn sample_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The sample of format version 2: 3 txns of the reference table (rows
/// 0..300, commit times 1..=3) plus one with a varchar column added, then
/// an aborted txn; epoch 1, linked to a made-up previous checksum.
fn sample_v2() -> Vec<u8> {
    let gen = CpuGenerator::default();
    let schema2 = gen
        .schema()
        .with_column("note", ColumnType::Varchar)
        .unwrap();
    let mut w = SegmentWriter::new(0x5eed, "cpu", &schema2).unwrap();
    for t in 0..3u64 {
        w.push(t + 1, t as i64 + 1, gen.batch(t * 100, 100, 0))
            .unwrap();
    }
    let mut b = BatchBuilder::new(&schema2);
    gen.row_partial(&mut b, 300, BASE_TS_US + 300);
    b.set(8, Value::Varchar("v2 sample")).unwrap();
    b.finish_row().unwrap();
    w.push(4, 4, b.finish()).unwrap();
    w.push_aborted(5).unwrap();
    let link = Link {
        epoch: 1,
        prev_xxh3: 0x1234_5678_9abc_def0,
    };
    w.finish_linked(link, Compression::None)
        .unwrap()
        .as_slice()
        .to_vec()
}

#[test]
fn committed_samples_of_every_version_stay_readable() {
    // Version 1 (written by an earlier build; still read and applied).
    let path = sample_dir().join("segment-v1.bsg");
    let seg = Segment::open(&path).expect("tests/data/segment-v1.bsg must stay readable");
    assert_eq!(seg.preamble().version, 1);
    let h = seg.header();
    assert_eq!(h.table, "cpu");
    assert_eq!(h.table_id, 0x5eed);
    assert_eq!((h.first_txn, h.last_txn), (1, 4));
    assert_eq!(h.row_count, 301);
    assert_eq!(h.columns.len(), 9);
    assert_eq!(h.columns[8].added_in, 2);
    assert_eq!((h.epoch, h.prev_xxh3), (0, None), "version 1 has no chain");
    let batches = seg.batches().unwrap();
    assert_eq!(
        batches[3].1.columns[8].value(0),
        Value::Varchar("v1 sample")
    );
    assert_eq!(batches[1].1.columns[6].value(5), Value::Long(105));
    assert!(seg.check_blocks().iter().all(|b| b.ok));

    // Version 2, and today's writer still produces exactly its bytes.
    let path = sample_dir().join("segment-v2.bsg");
    if std::env::var_os("BASALT_WRITE_SAMPLES").is_some() {
        std::fs::create_dir_all(sample_dir()).unwrap();
        std::fs::write(&path, sample_v2()).unwrap();
    }
    let seg = Segment::open(&path).expect("tests/data/segment-v2.bsg must stay readable");
    assert_eq!(seg.preamble().version, 2);
    let h = seg.header();
    assert_eq!((h.table.as_str(), h.table_id), ("cpu", 0x5eed));
    assert_eq!((h.first_txn, h.last_txn, h.row_count), (1, 5, 301));
    assert_eq!(h.commit_times_us, vec![1, 2, 3, 4, 0]);
    assert_eq!((h.epoch, h.prev_xxh3), (1, Some(0x1234_5678_9abc_def0)));
    assert_eq!(h.columns[8].added_in, 2);
    let batches = seg.batches().unwrap();
    assert_eq!(
        batches[3].1.columns[8].value(0),
        Value::Varchar("v2 sample")
    );
    assert_eq!(batches[1].1.columns[6].value(5), Value::Long(105));
    assert_eq!(batches[4].1.row_count(), 0, "the aborted txn has no rows");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        sample_v2(),
        "the v2 encoding changed: that needs a new format version"
    );
}

#[test]
fn a_replica_applies_both_versions_into_the_same_bytes() {
    // The v1 sample and the v2 sample carry the same rows (but for the
    // varchar's text): applied, their tables differ only in that text.
    let dir = tempfile::tempdir().unwrap();
    let gen = CpuGenerator::default();
    let mut rows = Vec::new();
    for (v, name) in [(1, "segment-v1.bsg"), (2, "segment-v2.bsg")] {
        let d = dir.path().join(format!("v{v}"));
        std::fs::create_dir_all(&d).unwrap();
        let mut w = TableWriter::create_with_id(&d, "cpu", gen.schema(), 0x5eed).unwrap();
        let seg = Segment::open(&sample_dir().join(name)).unwrap();
        let r = apply_segment(&mut w, &seg).unwrap();
        assert_eq!(r.rows, 301);
        assert_eq!(r.columns_added, vec!["note".to_string()]);
        drop(w);
        let scan = TableReader::open(&d, "cpu")
            .unwrap()
            .scan(&[], None)
            .unwrap();
        rows.push(scan);
    }
    assert_eq!(rows[0].txn, 4);
    assert_eq!(rows[1].txn, 5, "the aborted txn keeps its number");
    assert_eq!(rows[0].columns[..8], rows[1].columns[..8]);
}

fn inspect(path: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .arg("inspect")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn inspect_prints_a_good_segment_and_names_what_is_wrong_with_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = sample_v2();
    let path = dir.path().join("s.bsg");
    std::fs::write(&path, &good).unwrap();
    let o = inspect(&path);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("txns 1..=5 (5 txns), 301 rows"), "{out}");
    assert!(
        out.contains("chain: epoch 1, links to previous segment 123456789abcdef0"),
        "{out}"
    );
    assert!(out.contains("note\tVARCHAR\t2"), "{out}");
    assert!(out.contains("all 33 column blocks verified"), "{out}");

    let err_of = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        let o = inspect(&path);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // A value byte in the last txn's `note` block.
    let mut b = good.clone();
    let pos = b.windows(9).position(|w| w == b"v2 sample").unwrap();
    b[pos] ^= 1;
    let e = err_of(&b);
    assert!(e.contains("checksum mismatch in the body"), "{e}");
    assert!(
        e.contains("damaged block: txn 4 column (the txn's whole record)"),
        "{e}"
    );
    let e = err_of(&good[..good.len() - 10]);
    assert!(e.contains("truncated"), "{e}");
    let e = err_of(b"PAR1 this is some other file format entirely, not ours....................");
    assert!(e.contains("not a basalt segment"), "{e}");
    let mut b = good.clone();
    let n = b.len();
    b[n - 20] ^= 0xff;
    let e = err_of(&b);
    assert!(e.contains("checksum mismatch in the header"), "{e}");
    // The version 1 sample inspects too.
    let o = inspect(&sample_dir().join("segment-v1.bsg"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("format version 1"), "{out}");
    assert!(out.contains("all 33 column blocks verified"), "{out}");
}

/// A segment larger than one apply step is applied in steps when its rows
/// only append: the table is byte-identical to one built in a single step,
/// and the same holds for a segment whose rows go back in time (applied in
/// one step, one merge).
#[test]
fn a_large_segment_applies_in_steps_to_the_same_bytes() {
    let gen = CpuGenerator::default();
    let step = basalt::segment::APPLY_STEP_BYTES;
    for out_of_order in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = SegmentWriter::new(9, "cpu", gen.schema()).unwrap();
        let mut batches = Vec::new();
        let rows = 20_000;
        let mut t = 0u64;
        while seg.data_bytes() < 2 * step {
            // Out of order: every other txn goes back into the one before.
            let first = if out_of_order && t % 2 == 1 {
                (t - 1) * rows as u64 + 1
            } else {
                t * rows as u64
            };
            let b = gen.batch(first, rows, 0);
            seg.push(t + 1, 0, b.clone()).unwrap();
            batches.push((t + 1, b));
            t += 1;
        }
        let path = dir.path().join("s.seg");
        seg.finish(Compression::None)
            .unwrap()
            .write_file(&path)
            .unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
        }
        let mut wa = TableWriter::create_with_id(&a, "cpu", gen.schema(), 9).unwrap();
        let r = apply_segment(&mut wa, &Segment::open(&path).unwrap()).unwrap();
        assert_eq!(r.applied_txns, t);
        wa.checkpoint().unwrap();
        let mut wb = TableWriter::create_with_id(&b, "cpu", gen.schema(), 9).unwrap();
        let refs: Vec<(u64, &basalt::batch::Batch)> =
            batches.iter().map(|(t, b)| (*t, b)).collect();
        wb.apply(&refs).unwrap();
        wb.checkpoint().unwrap();
        let (fa, fb) = (table_files(&a.join("cpu")), table_files(&b.join("cpu")));
        assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
        for (k, v) in &fa {
            assert!(v == &fb[k], "out_of_order={out_of_order}: {k} differs");
        }
    }
}

/// Which partitions hold a column's files depends on the txns alone, not on
/// how they were grouped into apply steps: a primary that applied txn by
/// txn (the column added in between) and a replica that learned the column
/// first and applied every txn in one step hold the same bytes. Found by
/// the simulation (seed 2): a partition written by a pre-column txn got
/// the column's null files on one side only.
#[test]
fn a_column_added_mid_stream_gives_the_same_files_however_txns_are_grouped() {
    const DAY_US: i64 = 86_400_000_000;
    let gen = CpuGenerator::default();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut primary = TableWriter::create_with_id(a.path(), "cpu", gen.schema(), 7).unwrap();
    let mut replica = TableWriter::create_with_id(b.path(), "cpu", gen.schema(), 7).unwrap();
    let before = gen.batch(0, 10, 0);
    primary.apply(&[(1, &before)]).unwrap();
    primary.add_column("note", ColumnType::Varchar).unwrap();
    let with_note = primary.schema().clone();
    // Day 2 with notes; then, in day 3, a batch made before the column.
    let mut bb = BatchBuilder::new(&with_note);
    for i in 10..20u64 {
        gen.row_partial(&mut bb, i, basalt::gen::BASE_TS_US + DAY_US + i as i64);
        bb.set(8, Value::Varchar("n")).unwrap();
        bb.finish_row().unwrap();
    }
    let after = bb.finish();
    let late = gen.batch(20, 10, 2 * DAY_US);
    primary.apply(&[(2, &after)]).unwrap();
    primary.apply(&[(3, &late)]).unwrap();
    replica.add_column("note", ColumnType::Varchar).unwrap();
    replica
        .apply(&[(1, &before), (2, &after), (3, &late)])
        .unwrap();
    let (p, r) = (
        common::table_files(&a.path().join("cpu")),
        common::table_files(&b.path().join("cpu")),
    );
    assert_eq!(
        p.keys().collect::<Vec<_>>(),
        r.keys().collect::<Vec<_>>(),
        "the same files"
    );
    let differ: Vec<&String> = p.keys().filter(|k| p[*k] != r[*k]).collect();
    assert!(differ.is_empty(), "different bytes in {differ:?}");
    // Days 1 and 3 were written only by txns without the column.
    assert!(!p.contains_key("2024-01-01/note.d"), "{:?}", p.keys());
    assert!(p.contains_key("2024-01-02/note.d"), "{:?}", p.keys());
    assert!(!p.contains_key("2024-01-03/note.d"), "{:?}", p.keys());
}
