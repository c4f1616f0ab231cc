//! ILP text into tables: created on first use, columns added as they appear,
//! type conflicts refused with the line number, and a bad line commits
//! nothing of its request.

mod common;

use basalt::batch::Value;
use basalt::db::Database;
use basalt::ilp::Precision;
use basalt::ingest::{IngestOptions, Ingestor};
use basalt::table::{ColumnType, PartitionBy};
use std::time::Duration;

const NOW_US: i64 = 1_704_067_200_000_000;

use common::open_db as open;

fn wait(db: &Database, table: &str, txn: u64) {
    db.table(table)
        .unwrap()
        .wait_applied(txn, Duration::from_secs(30))
        .unwrap();
}

#[test]
fn tables_and_columns_are_created_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let ing = Ingestor::new(&db, IngestOptions::default());
    let body =
        b"cpu,host=a,region=eu usage=0.5,requests=12i,ok=t,note=\"x y\" 1704067200000000000\n\
                 cpu,host=b usage=1.5,requests=3i 1704067200000001000\n\
                 mem,host=a free=10i\n\
                 cpu,host=c usage=2.5,extra=\"new\",at=1704067200000000t 1704067200000002000";
    let report = ing.ingest(body, NOW_US).unwrap();
    assert_eq!(report.lines, 4);
    assert_eq!(
        report
            .tables
            .iter()
            .map(|(t, r, _)| (t.as_str(), *r))
            .collect::<Vec<_>>(),
        vec![("cpu", 3), ("mem", 1)]
    );
    for (t, _, txn) in &report.tables {
        wait(&db, t, *txn);
    }
    let cpu = db.table("cpu").unwrap().schema();
    let cols: Vec<(&str, ColumnType)> = cpu
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.ty))
        .collect();
    assert_eq!(
        cols,
        vec![
            ("host", ColumnType::Symbol),
            ("region", ColumnType::Symbol),
            ("usage", ColumnType::Double),
            ("requests", ColumnType::Long),
            ("ok", ColumnType::Boolean),
            ("note", ColumnType::Varchar),
            ("timestamp", ColumnType::Timestamp),
            ("extra", ColumnType::Varchar),
            ("at", ColumnType::Timestamp),
        ]
    );
    assert_eq!(cpu.partition_by, PartitionBy::Day);
    let r = db.scan("cpu", &[], None).unwrap();
    assert_eq!(r.row_count(), 3);
    assert_eq!(r.value(0, 1), Value::Symbol("b"));
    assert_eq!(r.value(1, 1), Value::Null, "region missing from line 2");
    assert_eq!(r.value(3, 0), Value::Long(12));
    assert_eq!(r.value(5, 0), Value::Varchar("x y"));
    assert_eq!(r.value(6, 2), Value::Timestamp(NOW_US + 2));
    assert_eq!(r.value(7, 2), Value::Varchar("new"));
    assert_eq!(r.value(8, 2), Value::Timestamp(NOW_US));
    assert_eq!(r.value(7, 0), Value::Null);
    // No trailing timestamp: the server's clock.
    let m = db.scan("mem", &[], None).unwrap();
    assert_eq!(m.value(2, 0), Value::Timestamp(NOW_US));
}

#[test]
fn existing_column_types_take_compatible_values() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let ing = Ingestor::new(
        &db,
        IngestOptions {
            precision: Precision::Micros,
            ..IngestOptions::default()
        },
    );
    ing.ingest(b"t,s=x f=1.5,n=1i,v=\"a\" 1704067200000000\n", NOW_US)
        .unwrap();
    // An integer into a DOUBLE column, a tag into a VARCHAR one, a string into a SYMBOL.
    let r = ing
        .ingest(b"t,v=tagged f=2i,s=\"str\" 1704067200000001\n", NOW_US)
        .unwrap();
    wait(&db, "t", r.tables[0].2);
    let s = db.scan("t", &["s", "f", "v"], None).unwrap();
    assert_eq!(
        (s.value(0, 1), s.value(1, 1), s.value(2, 1)),
        (
            Value::Symbol("str"),
            Value::Double(2.0),
            Value::Varchar("tagged")
        )
    );
}

#[test]
fn a_bad_line_refuses_the_whole_request_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let ing = Ingestor::new(&db, IngestOptions::default());
    let r = ing
        .ingest(b"t,s=x n=1i 1704067200000000000\n", NOW_US)
        .unwrap();
    wait(&db, "t", r.tables[0].2);
    let cases: [(&[u8], usize, &str); 6] = [
        (
            b"t n=2i\nt n=\"text\"\n",
            2,
            "column \"n\" is LONG; a string value cannot go into it",
        ),
        (b"t n=2i\n\nt n=oops\n", 3, "invalid field value \"oops\""),
        (
            b"t,s=y n=3i\nt s=1.5\n",
            2,
            "column \"s\" is SYMBOL; a float value cannot go into it",
        ),
        (b"../etc n=1i\n", 1, "invalid table name"),
        (b"t _hidden=1i\n", 1, "invalid column name"),
        (b"t n=1i,n=2i\n", 1, "set twice"),
    ];
    for (body, line, want) in cases {
        let e = ing.ingest(body, NOW_US).unwrap_err();
        assert_eq!(e.line(), Some(line), "{e}");
        assert!(
            e.to_string().contains(want),
            "{:?}: {e}",
            String::from_utf8_lossy(body)
        );
    }
    // Nothing of those requests was committed: still the one row.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(db.scan("t", &["n"], None).unwrap().row_count(), 1);
    assert!(
        db.table("..").is_none()
            && !dir
                .path()
                .parent()
                .unwrap()
                .join("etc")
                .join("_meta")
                .exists()
    );
}
