use super::*;
use crate::batch::testing::{all_types, batch_of, row_strategy};
use crate::batch::Batch;
use crate::gen::CpuGenerator;
use proptest::prelude::*;

fn cpu_segment(
    txns: u64,
    rows: usize,
    compression: Compression,
) -> (Vec<(u64, Batch)>, EncodedSegment) {
    let gen = CpuGenerator::default();
    let mut w = SegmentWriter::new(7, "cpu", gen.schema()).unwrap();
    let mut batches = Vec::new();
    for t in 0..txns {
        let b = gen.batch(t * rows as u64, rows, 0);
        batches.push((t + 1, b.clone()));
        w.push(t + 1, 1_700_000_000_000_000 + t as i64, b).unwrap();
    }
    (batches, w.finish(compression).unwrap())
}

#[test]
fn encode_then_decode_gives_the_txns_back() {
    for compression in [Compression::None, Compression::Lz4] {
        let (batches, enc) = cpu_segment(5, 300, compression);
        let seg = Segment::from_slice(enc.as_slice()).unwrap();
        let h = seg.header();
        assert_eq!(h.table, "cpu");
        assert_eq!((h.first_txn, h.last_txn), (1, 5));
        assert_eq!(h.row_count, 1500);
        assert_eq!(h.commit_times_us.len(), 5);
        assert_eq!(h.min_ts_us, crate::gen::BASE_TS_US);
        assert_eq!(h.max_ts_us, crate::gen::BASE_TS_US + 1499);
        assert_eq!(seg.preamble().compression, compression);
        assert_eq!(seg.batches().unwrap(), batches);
        assert!(seg.check_blocks().iter().all(|b| b.ok));
    }
}

#[test]
fn the_upload_body_is_the_encode_buffer() {
    let (_, enc) = cpu_segment(3, 1000, Compression::None);
    let ptr = enc.as_slice().as_ptr();
    let len = enc.len();
    let body = enc.into_bytes();
    assert_eq!(
        body.as_ptr(),
        ptr,
        "Bytes must take the buffer over, not copy it"
    );
    assert_eq!(body.len(), len);
    assert_eq!(ptr as usize % 16, 0, "aligned for rkyv access");
}

#[test]
fn pooled_buffers_come_back_and_are_reused() {
    let gen = CpuGenerator::default();
    let pool = BufferPool::new(2);
    let make = || {
        let mut w = SegmentWriter::new_in(7, "cpu", gen.schema(), Some(&pool), 0).unwrap();
        w.push(1, 0, gen.batch(0, 500, 0)).unwrap();
        w.finish(Compression::None).unwrap()
    };
    let first = make();
    let ptr = first.as_slice().as_ptr();
    let body = first.into_bytes();
    let clone = body.clone();
    drop(body);
    assert!(pool.is_empty(), "still referenced by a clone");
    drop(clone);
    assert_eq!(pool.len(), 1);
    let second = make();
    assert_eq!(
        second.as_slice().as_ptr(),
        ptr,
        "the returned buffer is reused"
    );
    Segment::from_slice(second.as_slice()).unwrap();
}

#[test]
fn damage_anywhere_is_refused_with_what_is_wrong() {
    let (_, enc) = cpu_segment(3, 100, Compression::None);
    let good = enc.as_slice().to_vec();
    let p = enc.preamble;
    let at = |i: usize| {
        let mut b = good.clone();
        b[i] ^= 0x40;
        Segment::from_slice(&b)
            .err()
            .expect("damage must be refused")
    };
    assert!(matches!(at(0), SegmentError::NotASegment { .. }));
    assert!(
        matches!(at(30), SegmentError::ChecksumMismatch { ref part, .. } if part == "preamble")
    );
    assert!(
        matches!(at(p.header_offset() + 3), SegmentError::ChecksumMismatch { ref part, .. } if part == "header")
    );
    assert!(
        matches!(at(good.len() - 1), SegmentError::ChecksumMismatch { ref part, .. } if part == "header")
    );
    assert!(
        matches!(at(PREAMBLE_BYTES + 3), SegmentError::ChecksumMismatch { ref part, .. } if part == "body")
    );
    assert!(
        matches!(at(p.body_offset() + 1), SegmentError::ChecksumMismatch { ref part, .. } if part == "body")
    );
    for cut in [
        0,
        10,
        64,
        p.body_offset(),
        p.header_offset(),
        good.len() - 1,
    ] {
        let e = Segment::from_slice(&good[..cut]).err().unwrap();
        assert!(
            matches!(e, SegmentError::Truncated { .. }),
            "cut at {cut}: {e}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        Segment::from_slice(&longer),
        Err(SegmentError::Malformed(_))
    ));
    // A future version, correctly checksummed, is a typed error.
    let mut v3 = p;
    v3.version = 3;
    let mut b = good.clone();
    b[..PREAMBLE_BYTES].copy_from_slice(&v3.encode());
    let e = Segment::from_slice(&b).err().unwrap();
    assert!(
        matches!(e, SegmentError::UnsupportedVersion { found: 3, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("[1, 2]"), "{e}");
}

#[test]
fn a_lying_length_field_allocates_nothing_big() {
    let (_, enc) = cpu_segment(1, 10, Compression::Lz4);
    let mut p = enc.preamble;
    p.body_raw_len = u64::MAX / 2;
    let mut b = enc.as_slice().to_vec();
    b[..PREAMBLE_BYTES].copy_from_slice(&p.encode());
    assert!(matches!(
        Segment::from_slice(&b),
        Err(SegmentError::Malformed(_))
    ));
}

#[test]
fn local_only_tables_make_no_segments() {
    let schema = crate::table::Schema::new(
        vec![("v", crate::table::ColumnType::Long)],
        None,
        crate::table::PartitionBy::None,
    )
    .unwrap();
    let e = SegmentWriter::new(1, "t", &schema).err().unwrap();
    assert!(e.to_string().contains("local-only"), "{e}");
}

proptest! {
    #[test]
    fn encode_decode_is_identity_for_every_type(
        txns in proptest::collection::vec(proptest::collection::vec(row_strategy(), 1..20), 1..4),
        lz4 in any::<bool>(),
    ) {
        let schema = all_types();
        let mut w = SegmentWriter::new(3, "all", &schema).unwrap();
        let mut want = Vec::new();
        for (i, rows) in txns.iter().enumerate() {
            let b = batch_of(&schema, rows);
            want.push((10 + i as u64, b.clone()));
            w.push(10 + i as u64, i as i64, b).unwrap();
        }
        let c = if lz4 { Compression::Lz4 } else { Compression::None };
        let enc = w.finish(c).unwrap();
        let seg = Segment::from_slice(enc.as_slice()).unwrap();
        prop_assert_eq!(seg.batches().unwrap(), want);
    }

    #[test]
    fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Segment::from_slice(&bytes);
    }
}

/// Writes the committed fuzz seeds (small valid segments) when
/// BASALT_WRITE_FUZZ_SEEDS is set; otherwise checks they still verify.
#[test]
fn fuzz_seeds_are_valid_segments() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seeds = Vec::new();
    for (rows, c) in [(3, Compression::None), (2, Compression::Lz4)] {
        seeds.push(cpu_segment(2, rows, c).1.as_slice().to_vec());
    }
    let schema = all_types();
    let mut w = SegmentWriter::new(1, "all", &schema).unwrap();
    let rows = vec![vec![None; 10]
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if i == 7 {
                Some(crate::batch::testing::OwnedValue::Timestamp(5))
            } else {
                v
            }
        })
        .collect::<Vec<_>>()];
    w.push(1, 0, batch_of(&schema, &rows)).unwrap();
    seeds.push(w.finish(Compression::None).unwrap().as_slice().to_vec());
    for target in ["segment_decode", "segment_apply"] {
        let dir = root.join(target);
        for (i, s) in seeds.iter().enumerate() {
            let path = dir.join(format!("seed-{i}.bsg"));
            if std::env::var_os("BASALT_WRITE_FUZZ_SEEDS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, s).unwrap();
            }
            let bytes = std::fs::read(&path).expect("committed fuzz seed");
            Segment::from_slice(&bytes).expect("seed verifies");
        }
        // Seeds of earlier format versions (v1-*) stay and keep verifying.
        for e in std::fs::read_dir(&dir).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            Segment::from_slice(&bytes).expect("every seed verifies");
        }
    }
}

#[test]
fn sealing_copies_wal_records_as_written_and_links_the_chain() {
    let gen = CpuGenerator::default();
    let batch = gen.batch(0, 50, 0);
    let mut payload = Vec::new();
    crate::batch::codec::encode(&batch, &mut payload);
    let h = crate::wal::format::RecordHeader {
        payload_len: payload.len() as u32,
        txn: 7,
        commit_time_us: 1234,
        group_start: 4096,
        row_count: 50,
        schema_version: 1,
        flags: 1,
    };
    let mut record = Vec::new();
    crate::wal::format::append_record(&mut record, &h, &payload);
    let mut w = SegmentWriter::new(9, "cpu", gen.schema()).unwrap();
    w.push_record(&h, &record).unwrap();
    w.push_aborted(8).unwrap();
    let link = Link {
        epoch: 3,
        prev_xxh3: 0xfeed,
    };
    let enc = w.finish_linked(link, Compression::None).unwrap();
    // The record is in the body byte for byte, right after the preamble.
    assert_eq!(
        &enc.as_slice()[PREAMBLE_BYTES..PREAMBLE_BYTES + record.len()],
        &record[..]
    );
    let seg = Segment::from_slice(enc.as_slice()).unwrap();
    let hd = seg.header();
    assert_eq!((hd.epoch, hd.prev_xxh3), (3, Some(0xfeed)));
    assert_eq!((hd.first_txn, hd.last_txn, hd.row_count), (7, 8, 50));
    assert_eq!(hd.commit_times_us, vec![1234, 0]);
    assert_eq!(seg.checksum(), enc.checksum());
    assert_ne!(seg.checksum(), 0);
    let b = seg.batches().unwrap();
    assert_eq!(b[0], (7, batch));
    assert_eq!(b[1].1.row_count(), 0);
    // A record that is not the next txn, or not whole, is refused.
    let mut w = SegmentWriter::new(9, "cpu", gen.schema()).unwrap();
    w.push_record(&h, &record).unwrap();
    assert!(w.push_record(&h, &record).is_err(), "txn 7 twice");
    assert!(w.push_record(&h, &record[..record.len() - 8]).is_err());
}

#[test]
fn a_record_that_disagrees_with_the_header_is_refused() {
    let (_, enc) = cpu_segment(2, 10, Compression::None);
    let good = enc.as_slice().to_vec();
    // The second record's txn number, rewritten (and every checksum made
    // to match): the header says txn 2 there.
    let mut b = good.clone();
    let second = PREAMBLE_BYTES
        + crate::wal::format::record_bytes(u32::from_le_bytes(
            b[PREAMBLE_BYTES + 4..PREAMBLE_BYTES + 8]
                .try_into()
                .unwrap(),
        )) as usize;
    b[second + 8] = 9;
    reseal(&mut b);
    let e = Segment::from_slice(&b).err().expect("refused");
    assert!(e.to_string().contains("txn 9"), "{e}");
}
