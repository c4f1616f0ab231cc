//! Storage behaviour users rely on, run on every I/O engine: every type and
//! null round-trips, partitions, out-of-order inserts, symbols, varchar,
//! time-range scans, local-only tables, and data surviving a reopen.

use std::sync::Arc;
use std::time::Duration;

use basalt::batch::{Batch, BatchBuilder, Value};
use basalt::db::{Database, DbOptions, TableHandle};
use basalt::gen::{CpuGenerator, BASE_TS_US};
use basalt::io::EngineChoice;
use basalt::table::{ColumnType, PartitionBy, Schema};

const DAY_US: i64 = 86_400_000_000;
const WAIT: Duration = Duration::from_secs(60);

fn engines() -> Vec<EngineChoice> {
    vec![
        EngineChoice::Glommio,
        EngineChoice::TokioUring,
        EngineChoice::Portable,
    ]
}

/// For each named test body, a test that runs it on every I/O engine.
macro_rules! on_every_engine {
    ($($name:ident),* $(,)?) => {
        mod every_engine {
            $(
                #[test]
                fn $name() {
                    for engine in super::engines() {
                        super::$name(&engine);
                    }
                }
            )*
        }
    };
}

on_every_engine!(
    equal_timestamps_keep_commit_order,
    time_range_scan_returns_exactly_the_rows_in_range,
    symbols_share_one_table_dictionary_across_txns_and_partitions,
    local_only_tables_have_one_partition_and_keep_insert_order,
    bad_input_gets_a_clear_error_and_harms_nothing,
    every_partition_scheme_names_and_splits_partitions,
    null_rows_store_zero_bytes_whatever_the_batch_carried
);

fn open(dir: &std::path::Path, engine: &EngineChoice) -> Database {
    Database::open(DbOptions {
        data_dir: dir.to_path_buf(),
        engine: engine.clone(),
        shards: 2,
        ..DbOptions::default()
    })
    .unwrap_or_else(|e| panic!("open with {engine}: {e}"))
}

fn commit_and_wait(db: &Database, t: &Arc<TableHandle>, batch: Batch) -> u64 {
    let txn = db.commit(t, batch).unwrap();
    t.wait_applied(txn, WAIT).unwrap();
    txn
}

fn all_types_schema(partition_by: PartitionBy) -> Schema {
    Schema::new(
        vec![
            ("b", ColumnType::Boolean),
            ("i8", ColumnType::Byte),
            ("i16", ColumnType::Short),
            ("i32", ColumnType::Int),
            ("i64", ColumnType::Long),
            ("f32", ColumnType::Float),
            ("f64", ColumnType::Double),
            ("at", ColumnType::Timestamp),
            ("sym", ColumnType::Symbol),
            ("s", ColumnType::Varchar),
            ("ts", ColumnType::Timestamp),
        ],
        Some("ts"),
        partition_by,
    )
    .unwrap()
}

/// Row `i`: every third value of each column is null, the rest derive from `i`.
fn expected_row(i: i64, strings: &[String]) -> Vec<Value<'_>> {
    let null = |k: i64| (i + k) % 3 == 0;
    let pick = |k: i64, v: Value<'static>| if null(k) { Value::Null } else { v };
    vec![
        pick(0, Value::Boolean(i % 2 == 0)),
        pick(1, Value::Byte((i % 100) as i8 - 50)),
        pick(2, Value::Short((i * 7 % 30_000) as i16)),
        pick(3, Value::Int(-(i as i32) * 3)),
        pick(4, Value::Long(i * 1_000_000_007)),
        pick(5, Value::Float(i as f32 / 4.0)),
        pick(6, Value::Double(i as f64 * 1.5)),
        pick(7, Value::Timestamp(-i)),
        if null(8) {
            Value::Null
        } else {
            Value::Symbol(&strings[(i % 5) as usize])
        },
        if null(9) {
            Value::Null
        } else {
            Value::Varchar(&strings[5 + (i % 3) as usize])
        },
    ]
}

fn strings() -> Vec<String> {
    vec![
        "alpha".into(),
        "béta".into(),
        "γ".into(),
        "".into(),
        "with space,comma=eq".into(),
        "".into(),
        "a longer varchar value with unicode ✓ and \"quotes\"".into(),
        "x".repeat(1000),
    ]
}

fn build(schema: &Schema, rows: impl Iterator<Item = (i64, i64)>, strings: &[String]) -> Batch {
    let mut b = BatchBuilder::new(schema);
    for (i, ts) in rows {
        for (c, v) in expected_row(i, strings).into_iter().enumerate() {
            b.set(c, v).unwrap();
        }
        b.set(10, Value::Timestamp(ts)).unwrap();
        b.finish_row().unwrap();
    }
    b.finish()
}

#[test]
fn every_type_and_null_round_trips_across_partitions_and_reopen() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let schema = all_types_schema(PartitionBy::Day);
        let s = strings();
        {
            let db = open(dir.path(), &engine);
            let t = db.create_table("all_types", &schema).unwrap();
            // 3 txns over 4 days: rows i at ts BASE + i hours.
            for chunk in [0..40i64, 40..70, 70..96] {
                let rows = chunk.map(|i| (i, BASE_TS_US + i * 3_600_000_000));
                commit_and_wait(&db, &t, build(&schema, rows, &s));
            }
            let st = db.reader("all_types").unwrap().state().unwrap();
            assert_eq!(
                st.partitions.len(),
                4,
                "{engine}: 96 hours make 4 day partitions"
            );
            assert_eq!(st.row_count(), 96);
            db.close();
        }
        // Reopen: what was applied is still there, byte for byte the same values.
        let db = open(dir.path(), &engine);
        let r = db.scan("all_types", &[], None).unwrap();
        assert_eq!(r.row_count(), 96, "{engine}");
        for i in 0..96 {
            let exp = expected_row(i, &s);
            for (c, v) in exp.iter().enumerate() {
                let got = r.value(c, i as usize);
                assert_eq!(got, *v, "{engine}: row {i} column {}", r.names[c]);
            }
            assert_eq!(
                r.value(10, i as usize),
                Value::Timestamp(BASE_TS_US + i * 3_600_000_000)
            );
        }
    }
}

#[test]
fn out_of_order_rows_are_merged_in_timestamp_order() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), &engine);
        let gen = CpuGenerator::default();
        let t = db.create_table("cpu", gen.schema()).unwrap();
        // Even rows first, then odd rows (each older than the partition's newest row),
        // then a batch that is itself unsorted and spans two days.
        let mut b = BatchBuilder::new(gen.schema());
        for i in (0..1000u64).step_by(2) {
            gen.row(&mut b, i, BASE_TS_US + i as i64);
        }
        commit_and_wait(&db, &t, b.finish());
        let mut b = BatchBuilder::new(gen.schema());
        for i in (0..500u64).rev().map(|k| 2 * k + 1) {
            gen.row(&mut b, i, BASE_TS_US + i as i64);
        }
        for i in (1000..1100u64).rev() {
            gen.row(&mut b, i, BASE_TS_US + DAY_US + i as i64);
        }
        commit_and_wait(&db, &t, b.finish());
        let r = db.scan("cpu", &["requests", "ts", "host"], None).unwrap();
        assert_eq!(r.row_count(), 1100, "{engine}");
        let ts = r.column("ts").unwrap();
        for row in 1..r.row_count() {
            assert!(
                ts.i64_at(row - 1) <= ts.i64_at(row),
                "{engine}: not sorted at {row}"
            );
        }
        for i in 0..1000usize {
            assert_eq!(r.value(0, i), Value::Long(i as i64), "{engine}");
            assert_eq!(
                r.value(2, i),
                Value::Symbol(&format!("host_{:02}", i % 100)),
                "{engine}"
            );
        }
        let st = db.reader("cpu").unwrap().state().unwrap();
        assert_eq!(st.partitions.len(), 2);
        assert_eq!(
            st.partitions[0].version, 1,
            "the O3 merge made version 1 of day one"
        );
        // The old version stays until a checkpoint no longer names it (close checkpoints).
        db.close();
        let names: Vec<String> = std::fs::read_dir(dir.path().join("cpu"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.contains(&"2024-01-01.1".to_string()), "{names:?}");
        assert!(!names.contains(&"2024-01-01.0".to_string()), "{names:?}");
    }
}

fn equal_timestamps_keep_commit_order(engine: &EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), engine);
    let gen = CpuGenerator::default();
    let t = db.create_table("cpu", gen.schema()).unwrap();
    for first in [0u64, 10, 20] {
        let mut b = BatchBuilder::new(gen.schema());
        for i in first..first + 10 {
            gen.row(&mut b, i, BASE_TS_US + 5);
        }
        commit_and_wait(&db, &t, b.finish());
    }
    let r = db.scan("cpu", &["requests"], None).unwrap();
    let got: Vec<Value> = (0..30).map(|i| r.value(0, i)).collect();
    let want: Vec<Value> = (0..30).map(Value::Long).collect();
    assert_eq!(got, want);
}

fn time_range_scan_returns_exactly_the_rows_in_range(engine: &EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), engine);
    let gen = CpuGenerator::default();
    let t = db.create_table("cpu", gen.schema()).unwrap();
    // 5 days, one row per hour.
    let mut b = BatchBuilder::new(gen.schema());
    for i in 0..120u64 {
        gen.row(&mut b, i, BASE_TS_US + i as i64 * 3_600_000_000);
    }
    commit_and_wait(&db, &t, b.finish());
    let from = BASE_TS_US + DAY_US + 3 * 3_600_000_000; // day 2, 03:00
    let to = BASE_TS_US + 3 * DAY_US; // day 4, 00:00 (exclusive)
    let r = db.scan("cpu", &["requests", "ts"], Some(from..to)).unwrap();
    let got: Vec<i64> = (0..r.row_count())
        .map(|i| r.column("requests").unwrap().i64_at(i))
        .collect();
    assert_eq!(got, (27..72).collect::<Vec<i64>>());
    assert!(db
        .scan("cpu", &["nope"], None)
        .unwrap_err()
        .to_string()
        .contains("no column named \"nope\""));
}

fn symbols_share_one_table_dictionary_across_txns_and_partitions(engine: &EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), engine);
    let gen = CpuGenerator::default();
    let t = db.create_table("cpu", gen.schema()).unwrap();
    commit_and_wait(&db, &t, gen.batch(0, 500, 0));
    commit_and_wait(&db, &t, gen.batch(500, 500, DAY_US));
    let st = db.reader("cpu").unwrap().state().unwrap();
    assert_eq!(st.symbol_count(0), 100, "100 hosts, each stored once");
    assert_eq!(st.symbol_count(1), 4, "4 regions");
    let r = db.scan("cpu", &["host", "region"], None).unwrap();
    for i in 0..1000 {
        assert_eq!(
            r.value(0, i),
            Value::Symbol(&format!("host_{:02}", i % 100))
        );
    }
}

fn local_only_tables_have_one_partition_and_keep_insert_order(engine: &EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), engine);
    let schema = Schema::new(
        vec![("k", ColumnType::Varchar), ("v", ColumnType::Long)],
        None,
        PartitionBy::None,
    )
    .unwrap();
    assert!(schema.is_local_only());
    let t = db.create_table("settings", &schema).unwrap();
    for i in [3i64, 1, 2] {
        let mut b = BatchBuilder::new(&schema);
        b.set(0, Value::Varchar(&format!("key{i}"))).unwrap();
        b.set(1, Value::Long(i)).unwrap();
        b.finish_row().unwrap();
        commit_and_wait(&db, &t, b.finish());
    }
    let r = db.scan("settings", &[], None).unwrap();
    let got: Vec<Value> = (0..3).map(|i| r.value(1, i)).collect();
    assert_eq!(got, vec![Value::Long(3), Value::Long(1), Value::Long(2)]);
    assert_eq!(r.value(0, 0), Value::Varchar("key3"));
    assert!(std::fs::metadata(dir.path().join("settings/default.0"))
        .unwrap()
        .is_dir());
}

fn bad_input_gets_a_clear_error_and_harms_nothing(engine: &EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), engine);
    let gen = CpuGenerator::default();
    let t = db.create_table("cpu", gen.schema()).unwrap();
    commit_and_wait(&db, &t, gen.batch(0, 10, 0));
    // A batch built for another schema.
    let other = all_types_schema(PartitionBy::Day);
    let e = db
        .commit(&t, build(&other, [(1, BASE_TS_US)].into_iter(), &strings()))
        .unwrap_err();
    assert!(e.to_string().contains("11 columns, the table has 8"), "{e}");
    // Names that would leave the data dir.
    for name in ["../evil", "a/b", ".hidden", ""] {
        let e = db.create_table(name, gen.schema()).unwrap_err();
        assert!(e.to_string().contains("invalid table name"), "{name}: {e}");
    }
    assert!(db
        .create_table("cpu", gen.schema())
        .unwrap_err()
        .to_string()
        .contains("already exists"));
    // Partition scheme rules.
    let e = Schema::new(vec![("v", ColumnType::Long)], None, PartitionBy::Day).unwrap_err();
    assert!(
        e.to_string().contains("needs a designated timestamp"),
        "{e}"
    );
    // Designated timestamps outside years 1..=9999 are refused before the WAL.
    let mut b = BatchBuilder::new(gen.schema());
    gen.row(&mut b, 99, i64::MAX);
    let e = db.commit(&t, b.finish()).unwrap_err();
    assert!(e.to_string().contains("outside years 1 to 9999"), "{e}");
    // A second process (or open) on the same data directory is refused.
    let e = Database::open(DbOptions {
        data_dir: dir.path().to_path_buf(),
        engine: engine.clone(),
        ..DbOptions::default()
    })
    .err()
    .expect("second open of a locked data dir");
    assert!(
        e.to_string().contains("in use by another basalt process"),
        "{e}"
    );
    commit_and_wait(&db, &t, gen.batch(10, 5, 0));
    assert_eq!(db.scan("cpu", &[], None).unwrap().row_count(), 15);
    assert!(
        !dir.path().join("evil").exists() && !dir.path().parent().unwrap().join("evil").exists()
    );
}

fn every_partition_scheme_names_and_splits_partitions(engine: &EngineChoice) {
    let cases = [
        (PartitionBy::Hour, 3_600_000_000i64, "2024-01-01T00.0"),
        (PartitionBy::Day, DAY_US, "2024-01-01.0"),
        (PartitionBy::Week, 7 * DAY_US, "2024-W01.0"),
        (PartitionBy::Month, 31 * DAY_US, "2024-01.0"),
        (PartitionBy::Year, 366 * DAY_US, "2024.0"),
    ];
    for (p, span, first_dir) in cases {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), engine);
        let schema = Schema::new(
            vec![("v", ColumnType::Long), ("ts", ColumnType::Timestamp)],
            Some("ts"),
            p,
        )
        .unwrap();
        let t = db.create_table("t", &schema).unwrap();
        let mut b = BatchBuilder::new(&schema);
        for k in 0..3i64 {
            b.set(0, Value::Long(k)).unwrap();
            b.set(1, Value::Timestamp(BASE_TS_US + k * span)).unwrap();
            b.finish_row().unwrap();
        }
        commit_and_wait(&db, &t, b.finish());
        let st = db.reader("t").unwrap().state().unwrap();
        assert_eq!(st.partitions.len(), 3, "{p}");
        assert!(
            dir.path().join("t").join(first_dir).is_dir(),
            "{p}: {first_dir}"
        );
    }
}

fn null_rows_store_zero_bytes_whatever_the_batch_carried(engine: &EngineChoice) {
    use basalt::batch::{ColumnBuf, Values};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), engine);
    let schema = Schema::new(
        vec![
            ("v", ColumnType::Long),
            ("s", ColumnType::Varchar),
            ("ts", ColumnType::Timestamp),
        ],
        Some("ts"),
        PartitionBy::Day,
    )
    .unwrap();
    let t = db.create_table("t", &schema).unwrap();
    // Hand-built: row 1 is null but carries bytes under it.
    let batch = Batch {
        columns: vec![
            ColumnBuf {
                ty: ColumnType::Long,
                validity: Some(vec![1, 0]),
                values: Values::Fixed([5i64.to_le_bytes(), 7i64.to_le_bytes()].concat()),
                dict: vec![],
            },
            ColumnBuf {
                ty: ColumnType::Varchar,
                validity: Some(vec![1, 0]),
                values: Values::Var {
                    offsets: vec![0, 1, 4],
                    bytes: b"aXYZ".to_vec(),
                },
                dict: vec![],
            },
            ColumnBuf {
                ty: ColumnType::Timestamp,
                validity: None,
                values: Values::Fixed(
                    [BASE_TS_US.to_le_bytes(), BASE_TS_US.to_le_bytes()].concat(),
                ),
                dict: vec![],
            },
        ],
    };
    commit_and_wait(&db, &t, batch);
    db.close();
    let part = dir.path().join("t/2024-01-01.0");
    assert_eq!(
        std::fs::read(part.join("v.d")).unwrap(),
        [5i64.to_le_bytes(), [0; 8]].concat()
    );
    assert_eq!(std::fs::read(part.join("s.d")).unwrap(), b"a");
    assert_eq!(std::fs::read(part.join("v.v")).unwrap(), vec![0b01]);
}

/// Commit times never go back within a table, also when the floor (the
/// newest commit time in the store at a start or a promotion) is ahead of
/// this node's clock.
#[test]
fn commit_times_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), &EngineChoice::Portable);
    let gen = CpuGenerator::default();
    let t = db.create_table("cpu", gen.schema()).unwrap();
    let ahead = basalt::db::now_us() + 3_600_000_000;
    t.raise_commit_floor(ahead);
    commit_and_wait(&db, &t, gen.batch(0, 5, 0));
    assert_eq!(t.last_commit_us(), ahead, "the floor, not the clock");
    t.raise_commit_floor(0);
    commit_and_wait(&db, &t, gen.batch(5, 5, 0));
    assert_eq!(t.last_commit_us(), ahead, "a lower floor changes nothing");
}

/// A damaged `_wal/_aborted` list keeps the table closed with an error
/// naming the file: opening it would replay txns that replicas received
/// empty.
#[test]
fn a_damaged_aborted_list_refuses_the_open_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open(dir.path(), &EngineChoice::Portable);
        let gen = CpuGenerator::default();
        let t = db.create_table("cpu", gen.schema()).unwrap();
        commit_and_wait(&db, &t, gen.batch(0, 5, 0));
        db.close();
    }
    let wal = dir.path().join("cpu").join("_wal");
    for txn in [1, 2] {
        basalt::wal::retention::record_aborted(&wal, txn).unwrap();
    }
    let path = wal.join(basalt::wal::retention::ABORTED_FILE);
    let mut b = std::fs::read(&path).unwrap();
    b[20] ^= 1; // the first of two entries
    std::fs::write(&path, &b).unwrap();
    let e = Database::open(DbOptions {
        data_dir: dir.path().to_path_buf(),
        engine: EngineChoice::Portable,
        shards: 1,
        ..DbOptions::default()
    })
    .err()
    .expect("the open is refused")
    .to_string();
    assert!(
        e.contains("_aborted") && e.contains("does not verify"),
        "{e}"
    );
}

/// A replica node's follower writes tables until it is joined, after the
/// database closed: the data directory stays locked while anyone holds the
/// lock (`Database::dir_lock`), so a second process cannot open it in that
/// window and have its recovery remove partition versions still written.
#[test]
fn the_data_dir_lock_outlives_close_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DbOptions {
        data_dir: dir.path().to_path_buf(),
        engine: EngineChoice::Portable,
        shards: 1,
        ..DbOptions::default()
    };
    let db = Database::open(opts.clone()).unwrap();
    let held = db.dir_lock();
    db.close();
    let e = Database::open(opts.clone())
        .err()
        .expect("open while the lock is held");
    assert!(
        e.to_string().contains("in use by another basalt process"),
        "{e}"
    );
    drop(held);
    Database::open(opts).expect("open once the lock is released");
}
