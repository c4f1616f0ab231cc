//! The fuzz seed corpora in fuzz/corpus/ are real encodings made by this
//! code; this test keeps them decodable. `BASALT_WRITE_SEEDS=1 cargo test
//! --test fuzz_seeds` rewrites them after a format change.

use std::path::PathBuf;

use basalt::batch::{codec, BatchBuilder, Value};
use basalt::gen::CpuGenerator;
use basalt::table::{ColumnType, PartitionBy, Schema};
use basalt::wal::format::{self, RecordHeader, Tail, FLAG_GROUP_END, SCHEMA_VERSION};

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn all_types() -> Schema {
    let cols: Vec<(&str, ColumnType)> = ColumnType::ALL.iter().map(|t| (t.name(), *t)).collect();
    Schema::new(cols, Some("TIMESTAMP"), PartitionBy::Day).unwrap()
}

fn payload_seeds() -> Vec<(String, Vec<u8>)> {
    let mut cpu = vec![0u8];
    codec::encode(&CpuGenerator::default().batch(0, 3, 0), &mut cpu);
    let schema = all_types();
    let mut b = BatchBuilder::new(&schema);
    let row = [
        Value::Boolean(true),
        Value::Byte(-1),
        Value::Short(300),
        Value::Int(-7),
        Value::Long(1 << 40),
        Value::Float(0.5),
        Value::Double(-2.5),
        Value::Timestamp(12),
        Value::Symbol("s"),
        Value::Varchar("v\u{e9}"),
    ];
    for (i, v) in row.iter().enumerate() {
        b.set(i, *v).unwrap();
    }
    b.finish_row().unwrap();
    b.set(7, Value::Timestamp(13)).unwrap();
    b.finish_row().unwrap();
    let mut all = vec![1u8];
    codec::encode(&b.finish(), &mut all);
    vec![
        ("cpu_3_rows".into(), cpu),
        ("all_types_with_nulls".into(), all),
    ]
}

fn wal_seed() -> Vec<u8> {
    let mut f = format::encode_file_header(0, 0).to_vec();
    let gen = CpuGenerator::default();
    for (group, txns) in [(0u64, 1..3u64), (1, 3..4)] {
        let start = f.len() as u64;
        for txn in txns.clone() {
            let mut payload = Vec::new();
            codec::encode(&gen.batch(txn * 2, 2, 0), &mut payload);
            let h = RecordHeader {
                payload_len: payload.len() as u32,
                txn,
                commit_time_us: 1_700_000_000_000_000 + group as i64,
                group_start: start,
                row_count: 2,
                schema_version: SCHEMA_VERSION,
                flags: if txn + 1 == txns.end {
                    FLAG_GROUP_END
                } else {
                    0
                },
            };
            format::append_record(&mut f, &h, &payload);
        }
    }
    f
}

#[test]
fn committed_fuzz_seeds_are_valid_encodings() {
    let write = std::env::var_os("BASALT_WRITE_SEEDS").is_some();
    for (name, bytes) in payload_seeds() {
        let path = corpus("wal_payload").join(&name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let seed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let schema = if seed[0] & 1 == 0 {
            Schema::reference_cpu()
        } else {
            all_types()
        };
        codec::decode(&seed[1..], &schema).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let path = corpus("wal_scan").join("two_groups");
    if write {
        std::fs::write(&path, wal_seed()).unwrap();
    }
    let seed = std::fs::read(&path).unwrap();
    let (records, tail) = format::scan(&seed);
    assert_eq!(records.len(), 3);
    assert_eq!(tail, Tail::Clean);
}
