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

/// A client's lines after the first go straight into the columns; a line of
/// another shape goes the general way and its shape becomes the new one.
#[test]
fn lines_of_one_shape_take_the_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let ing = Ingestor::new(&db, IngestOptions::default());
    let mut buf = basalt::ingest::IngestBuffer::default();
    let mut text = Vec::new();
    for i in 0..1000 {
        text.extend_from_slice(
            format!(
                "cpu,host=h{} u={}.5,n={i}i,s=\"x\" {}\n",
                i % 7,
                i,
                1_704_067_200_000_000_000i64 + i
            )
            .as_bytes(),
        );
    }
    assert_eq!(ing.add(&mut buf, &text, NOW_US, true).unwrap(), text.len());
    assert_eq!(buf.fast_lines(), 999);
    // Another order of fields: one general line, then fast again.
    let other =
        b"cpu,host=a n=1i,u=2.5 1704067200000000000\ncpu,host=b n=2i,u=3.5 1704067200000000000\n";
    ing.add(&mut buf, other, NOW_US, true).unwrap();
    assert_eq!(buf.fast_lines(), 1000);
    let batches = ing.take_batches(&mut buf);
    assert_eq!(batches[0].1, 1002);
    db.close();
}

/// The fast path (lines straight into the columns) and the general path
/// (each line parsed into values, then mapped) take the same text to the
/// same result: the same batches, the same errors on the same lines, the
/// same tables and columns, whatever the mix of shapes, types, escapes,
/// bad values and read boundaries.
mod fast_path_matches_the_general_path {
    use super::*;
    use basalt::ingest::IngestBuffer;
    use proptest::prelude::*;

    /// A value of field kind `kind` (mostly valid, sometimes not).
    fn value(kind: usize) -> BoxedStrategy<Vec<u8>> {
        let odd =
            |v: Vec<&'static str>| prop::sample::select(v).prop_map(|v| v.as_bytes().to_vec());
        match kind {
            // Floats as clients print them: any number of decimals, signs.
            0 => prop_oneof![
                12 => (any::<bool>(), 0u64..100_000_000, 0usize..8).prop_map(|(neg, m, frac)| {
                    let digits = format!("{m:0w$}", w = frac + 1);
                    let (a, b) = digits.split_at(digits.len() - frac);
                    let sign = if neg { "-" } else { "" };
                    let v = if frac == 0 { format!("{sign}{a}") } else { format!("{sign}{a}.{b}") };
                    v.into_bytes()
                }),
                3 => any::<f64>().prop_map(|v| format!("{v:?}").into_bytes()),
                2 => any::<f64>().prop_map(|v| [b"==\x10".as_slice(), &v.to_le_bytes()].concat()),
                1 => odd(vec!["-2e3", "NaN", "3i", "abc", "t", "1.", ".5", "-Infinity", "1234567890123456.5", "00.10", "1.2.3", "-"]),
            ]
            .boxed(),
            1 => prop_oneof![
                12 => any::<i64>().prop_map(|v| format!("{v}i").into_bytes()),
                4 => (-1000i64..1000).prop_map(|v| format!("{v}i").into_bytes()),
                1 => odd(vec!["99999999999999999999i", "1.5", "4000000000i", "-i", "12", "1i2i", "-9223372036854775808i", "9223372036854775808i"]),
            ]
            .boxed(),
            2 => prop_oneof![
                8 => "[a-z ,=é]{0,8}".prop_map(|v| format!("\"{v}\"").into_bytes()),
                1 => odd(vec!["\"a\\\"b\"", "\"two\nlines\"", "unquoted", "\"x\\\\\""]),
            ]
            .boxed(),
            3 => odd(vec!["t", "false", "T", "TRUE", "True", "f", "F", "FALSE", "False", "true", "yes"]).boxed(),
            _ => prop_oneof![
                6 => (0i64..1_000_000_000).prop_map(|v| format!("{v}t").into_bytes()),
                3 => (0i64..1_000_000_000).prop_map(|v| format!("{v}n").into_bytes()),
                1 => odd(vec!["12", "n", "-7t", "5x"]),
            ]
            .boxed(),
        }
    }

    /// Lines of one shape (table, tags, fields and their kinds, timestamp
    /// form, line end) with their own values; sometimes a value of another
    /// kind, an escape, a bad timestamp.
    fn lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let table = prop_oneof![
            6 => Just("cpu"),
            1 => prop::sample::select(vec!["Cpu", "mem", "m\\ x", "cpu\\,y"]),
        ];
        let tag_key = prop_oneof![
            6 => prop::sample::select(vec!["host", "region"]),
            1 => prop::sample::select(vec!["HOST", "r\\ k"]),
        ];
        let tags = prop::collection::vec(tag_key, 0..3);
        // (key, kind): the keys repeat across kinds, so types conflict too.
        let field = (
            prop::sample::select(vec!["f", "n", "s", "b", "at", "F"]),
            0usize..5,
        );
        let fields = prop::collection::vec(field, 0..5);
        let ts_form = 0usize..8;
        let end = prop_oneof![
            6 => Just("\n"),
            1 => prop::sample::select(vec!["\r\n", "\n\n", "\n# note\n"]),
        ];
        (table, tags, fields, ts_form, end, 1usize..8).prop_flat_map(
            |(table, tags, fields, ts_form, end, n)| {
                let tag_value = prop_oneof![
                    12 => "[a-z]{1,6}",
                    1 => prop::sample::select(vec!["h\\,1", "x=y", "é", ""]).prop_map(String::from),
                ];
                let tag_values = prop::collection::vec(tag_value, tags.len());
                let values: Vec<_> = fields.iter().map(|&(_, kind)| value(kind)).collect();
                let ts = match ts_form {
                    0..=3 => (1_704_067_200_000_000_000i64..1_704_067_300_000_000_000)
                        .prop_map(|t| format!(" {t}"))
                        .boxed(),
                    4 => Just(String::new()).boxed(),
                    5 => (1_704_067_200_000_000i64..1_704_067_300_000_000)
                        .prop_map(|t| format!(" {t}t"))
                        .boxed(),
                    6 => (1_704_067_200_000_000_000i64..1_704_067_300_000_000_000)
                        .prop_map(|t| format!(" {t}n"))
                        .boxed(),
                    _ => prop::sample::select(vec![
                        " -5",
                        " 99999999999999999999",
                        " 12 13",
                        " 1704067200000000000 ",
                        " 9223372036854775807",
                        " 1704067200000000000x",
                    ])
                    .prop_map(String::from)
                    .boxed(),
                };
                let line = (tag_values, values, ts).prop_map(move |(tag_values, values, ts)| {
                    let mut out = table.as_bytes().to_vec();
                    for (k, v) in tags.iter().zip(tag_values) {
                        out.extend_from_slice(format!(",{k}={v}").as_bytes());
                    }
                    for (i, ((k, _), v)) in fields.iter().zip(values).enumerate() {
                        out.push(if i == 0 { b' ' } else { b',' });
                        out.extend_from_slice(k.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(&v);
                    }
                    out.extend_from_slice(ts.as_bytes());
                    out.extend_from_slice(end.as_bytes());
                    out
                });
                prop::collection::vec(line, n)
            },
        )
    }

    /// A few shapes' lines, in runs, as clients send them.
    fn text() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(lines(), 1..4),
            prop::collection::vec(0usize..4, 1..8),
        )
            .prop_map(|(shapes, picks)| {
                let mut out = Vec::new();
                for s in picks {
                    for l in &shapes[s % shapes.len()] {
                        out.extend_from_slice(l);
                    }
                }
                out
            })
    }

    /// What ingesting `text` in reads ending at `cuts` gives: each add's
    /// answer, then every table's batch and the tables' columns.
    fn run(fast: bool, text: &[u8], cuts: &[usize], precision: Precision) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let opts = IngestOptions {
            precision,
            ..IngestOptions::default()
        };
        let ing = Ingestor::new(&db, opts);
        let ing = if fast { ing } else { ing.general_path_only() };
        let mut buf = IngestBuffer::default();
        let mut out = Vec::new();
        // As a streaming connection reads: what was not taken waits for
        // the next read.
        let mut pending: Vec<u8> = Vec::new();
        let mut at = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
        ends.sort_unstable();
        ends.push(text.len());
        for (k, &end) in ends.iter().enumerate() {
            let end = end.max(at);
            pending.extend_from_slice(&text[at..end]);
            at = end;
            let last = k + 1 == ends.len();
            match ing.add(&mut buf, &pending, NOW_US, last) {
                Ok(used) => {
                    out.push(format!("took {used}"));
                    pending.drain(..used);
                }
                Err(e) => {
                    out.push(format!("error {e}"));
                    break;
                }
            }
        }
        for (handle, rows, batch) in ing.take_batches(&mut buf) {
            out.push(format!("{} {rows} {batch:?}", handle.name));
        }
        let mut names = db.table_names();
        names.sort();
        for t in names {
            let schema = db.table(&t).unwrap().schema();
            let cols: Vec<_> = schema
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.ty))
                .collect();
            out.push(format!("{t} {cols:?}"));
        }
        db.close();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn same_batches_errors_and_tables(
            text in text(),
            cuts in prop::collection::vec(any::<usize>(), 0..4),
            micros in any::<bool>(),
        ) {
            let precision = if micros { Precision::Micros } else { Precision::Nanos };
            let fast = run(true, &text, &cuts, precision);
            let general = run(false, &text, &cuts, precision);
            prop_assert_eq!(fast, general, "text {:?}", String::from_utf8_lossy(&text));
        }
    }
}
