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
    // Two shapes taking turns (an optional field): after the first line of
    // each, every line goes fast.
    let before = buf.fast_lines();
    let mut turns = Vec::new();
    for i in 0..100 {
        let extra = if i % 2 == 0 { ",x=1.5" } else { "" };
        turns
            .extend_from_slice(format!("cpu,host=a u=2.5{extra} 1704067200000000000\n").as_bytes());
    }
    ing.add(&mut buf, &turns, NOW_US, true).unwrap();
    assert_eq!(buf.fast_lines() - before, 98);
    // An escaped tag value goes the general way every time, and its shape
    // (the one it had) stays first.
    let before = buf.fast_lines();
    let escaped =
        b"cpu,host=a\\ b u=1.5 1704067200000000000\ncpu,host=c u=2.5 1704067200000000000\n";
    ing.add(&mut buf, escaped, NOW_US, true).unwrap();
    assert_eq!(buf.fast_lines() - before, 1);
    let batches = ing.take_batches(&mut buf);
    assert_eq!(batches[0].1, 1104);
    db.close();
}

/// The fast path (lines straight into the columns) and the general path
/// (each line parsed into values, then mapped) take the same text to the
/// same result: the same batches, the same errors on the same lines, the
/// same tables and columns, whatever the mix of shapes, types, escapes,
/// bad values, precisions and read boundaries; into tables ILP made and
/// tables made with other column types, or without a designated timestamp.
mod fast_path_matches_the_general_path {
    use super::*;
    use basalt::ingest::IngestBuffer;
    use basalt::table::Schema;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const PRECISIONS: [Precision; 4] = [
        Precision::Nanos,
        Precision::Micros,
        Precision::Millis,
        Precision::Seconds,
    ];

    /// A float as text: short decimals (the one-pass reader), long ones
    /// (up to 20 digits, the general parser), shortest round-trip forms.
    fn float_text() -> BoxedStrategy<Vec<u8>> {
        let decimal = |max: usize| {
            (any::<bool>(), "[0-9]{1,20}", 0usize..21).prop_map(move |(neg, digits, dot)| {
                let digits = &digits[..digits.len().min(max)];
                let sign = if neg { "-" } else { "" };
                let dot = dot.min(digits.len());
                if dot == 0 || dot == digits.len() {
                    format!("{sign}{digits}").into_bytes()
                } else {
                    format!("{sign}{}.{}", &digits[..dot], &digits[dot..]).into_bytes()
                }
            })
        };
        prop_oneof![
            16 => decimal(8),
            8 => decimal(20),
            3 => any::<f64>().prop_map(|v| format!("{v:?}").into_bytes()),
            2 => any::<f64>().prop_map(|v| [b"==\x10".as_slice(), &v.to_le_bytes()].concat()),
            1 => prop::sample::select(vec!["-2e3", "NaN", "3i", "abc", "t", "1.", ".5", "-Infinity", "00.10", "1.2.3", "-", "1e400"])
                .prop_map(|v| v.as_bytes().to_vec()),
        ]
        .boxed()
    }

    /// A value of field kind `kind` (mostly valid, sometimes not).
    fn value(kind: usize) -> BoxedStrategy<Vec<u8>> {
        let odd =
            |v: Vec<&'static str>| prop::sample::select(v).prop_map(|v| v.as_bytes().to_vec());
        match kind {
            0 => float_text(),
            1 => prop_oneof![
                4 => any::<i64>().prop_map(|v| format!("{v}i").into_bytes()),
                // In range of BYTE columns; of SHORT, and just out of it.
                16 => (-128i64..128).prop_map(|v| format!("{v}i").into_bytes()),
                2 => (-40_000i64..40_000).prop_map(|v| format!("{v}i").into_bytes()),
                1 => odd(vec!["99999999999999999999i", "1.5", "4000000000i", "-i", "12", "1i2i", "-9223372036854775808i", "9223372036854775808i", "-2147483649i"]),
            ]
            .boxed(),
            2 => prop_oneof![
                16 => "[a-z ,=é]{0,8}".prop_map(|v| format!("\"{v}\"").into_bytes()),
                1 => odd(vec!["\"a\\\"b\"", "\"two\nlines\"", "unquoted", "\"x\\\\\"", "\"\r\""]),
            ]
            .boxed(),
            3 => prop_oneof![
                20 => odd(vec!["t", "false", "T", "TRUE", "True", "f", "F", "FALSE", "False", "true"]),
                1 => odd(vec!["yes", "tru"]),
            ]
            .boxed(),
            _ => prop_oneof![
                12 => (0i64..1_000_000_000).prop_map(|v| format!("{v}t").into_bytes()),
                6 => (0i64..1_000_000_000).prop_map(|v| format!("{v}n").into_bytes()),
                1 => odd(vec!["12", "n", "-7t", "5x"]),
            ]
            .boxed(),
        }
    }

    /// A designated timestamp written for `precision`, or with its unit.
    fn timestamp(precision: Precision) -> BoxedStrategy<String> {
        let us = 1_704_067_200_000_000i64..1_704_067_300_000_000;
        prop_oneof![
            24 => us.clone().prop_map(move |us| match precision {
                Precision::Nanos => format!(" {}", us * 1000 + us % 7),
                Precision::Micros => format!(" {us}"),
                Precision::Millis => format!(" {}", us / 1000),
                Precision::Seconds => format!(" {}", us / 1_000_000),
            }),
            4 => Just(String::new()),
            2 => us.clone().prop_map(|us| format!(" {us}t")),
            2 => us.prop_map(|us| format!(" {}n", us * 1000)),
            1 => prop::sample::select(vec![" -5", " 99999999999999999999", " 12 13", " 1704067200000000000 ", " 9223372036854775807", " 1704067200000000000x", " 1704067200000000000\r"])
                .prop_map(String::from),
        ]
        .boxed()
    }

    /// Lines of one shape (table, tags, fields and their kinds, timestamp
    /// form, line end) with their own values; sometimes a value of another
    /// kind, an escape, a bad timestamp.
    fn lines(precision: Precision) -> impl Strategy<Value = Vec<Vec<u8>>> {
        let table = prop_oneof![
            4 => Just("cpu"),
            // Made by `run` with other column types; without a timestamp.
            2 => prop::sample::select(vec!["typed", "short", "tiny", "nots"]),
            1 => prop::sample::select(vec!["Cpu", "TYPED", "mem", "m\\ x", "cpu\\,y"]),
        ];
        let tag_key = prop_oneof![
            6 => prop::sample::select(vec!["host", "region"]),
            1 => prop::sample::select(vec!["HOST", "r\\ k"]),
        ];
        let tags = prop::collection::vec(tag_key, 0..3);
        // (key, kind): a key keeps its kind mostly, so the layouts repeat;
        // sometimes not, so types conflict too.
        let field = prop_oneof![
            12 => prop::sample::select(vec![("f", 0usize), ("n", 1), ("s", 2), ("b", 3), ("at", 4), ("g", 0)]),
            1 => (prop::sample::select(vec!["f", "n", "s", "b", "at", "g", "F"]), 0usize..5),
        ];
        let fields = prop::collection::vec(field, 1..5);
        let end = prop_oneof![
            12 => Just("\n"),
            1 => prop::sample::select(vec!["\r\n", "\n\n", "\n# note\n"]),
        ];
        // Repeated names (in any case) are refused: sometimes, not mostly.
        let repeats = prop::bool::weighted(0.1);
        (table, tags, fields, end, 1usize..8, repeats).prop_flat_map(move |(table, mut tags, mut fields, end, n, repeats)| {
            if !repeats {
                let mut seen = std::collections::HashSet::new();
                tags.retain(|k| seen.insert(k.to_lowercase()));
                fields.retain(|(k, _)| seen.insert(k.to_lowercase()));
                if fields.is_empty() {
                    fields.push(("f", 0));
                }
            }
            let tag_value = prop_oneof![
                24 => "[a-z]{1,6}",
                1 => prop::sample::select(vec!["h\\,1", "x=y", "é", "", "a\rb"]).prop_map(String::from),
            ];
            let tag_values = prop::collection::vec(tag_value, tags.len());
            let values: Vec<_> = fields.iter().map(|&(_, kind)| value(kind)).collect();
            let line = (tag_values, values, timestamp(precision)).prop_map(move |(tag_values, values, ts)| {
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
        })
    }

    /// A few shapes' lines, in runs, as clients send them: each run one
    /// HTTP request, or all of them one TCP stream.
    fn requests(precision: Precision) -> impl Strategy<Value = Vec<Vec<u8>>> {
        (
            prop::collection::vec(lines(precision), 1..4),
            prop::collection::vec(0usize..4, 1..8),
        )
            .prop_map(|(shapes, picks)| {
                picks
                    .into_iter()
                    .map(|s| shapes[s % shapes.len()].concat())
                    .collect()
            })
    }

    /// Tables with the column types ILP never creates, and one without a
    /// designated timestamp.
    fn create_tables(db: &Database) {
        use ColumnType as T;
        /// A table: its name, its columns, whether it has a designated timestamp.
        type Table = (&'static str, Vec<(&'static str, T)>, bool);
        let tables: [Table; 4] = [
            (
                "typed",
                vec![
                    ("host", T::Varchar),
                    ("region", T::Symbol),
                    ("f", T::Float),
                    ("n", T::Int),
                    ("s", T::Symbol),
                    ("b", T::Boolean),
                    ("at", T::Timestamp),
                    ("g", T::Double),
                ],
                true,
            ),
            (
                "short",
                vec![("n", T::Short), ("f", T::Double), ("g", T::Float)],
                true,
            ),
            ("tiny", vec![("n", T::Byte), ("host", T::Symbol)], true),
            (
                "nots",
                vec![
                    ("host", T::Symbol),
                    ("f", T::Double),
                    ("n", T::Long),
                    ("s", T::Varchar),
                ],
                false,
            ),
        ];
        for (name, mut cols, ts) in tables {
            let schema = if ts {
                cols.push(("timestamp", T::Timestamp));
                Schema::new(cols, Some("timestamp"), PartitionBy::Day)
            } else {
                Schema::new(cols, None, PartitionBy::None)
            };
            db.create_table(name, &schema.unwrap()).unwrap();
        }
    }

    /// What ingesting `requests` gives: each add's answer, every table's
    /// batch and the tables' columns; and the lines the fast path took.
    /// As a TCP stream (`cuts`: where reads end; the first error ends the
    /// connection), or as HTTP requests (each in a buffer of its own).
    fn run(
        fast: bool,
        requests: &[Vec<u8>],
        stream: Option<&[usize]>,
        precision: Precision,
    ) -> (Vec<String>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        create_tables(&db);
        let opts = IngestOptions {
            precision,
            ..IngestOptions::default()
        };
        let ing = Ingestor::new(&db, opts);
        let ing = if fast { ing } else { ing.general_path_only() };
        let mut out = Vec::new();
        let mut fast_lines = 0;
        let mut finish = |buf: &mut IngestBuffer, out: &mut Vec<String>| {
            fast_lines += buf.fast_lines();
            for (handle, rows, batch) in ing.take_batches(buf) {
                out.push(format!("{} {rows} {batch:?}", handle.name));
            }
        };
        match stream {
            Some(cuts) => {
                let text = requests.concat();
                let mut buf = IngestBuffer::default();
                // What was not taken waits for the next read.
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
                finish(&mut buf, &mut out);
            }
            None => {
                for body in requests {
                    let mut buf = IngestBuffer::default();
                    match ing.add(&mut buf, body, NOW_US, true) {
                        Ok(used) => out.push(format!("took {used}")),
                        Err(e) => out.push(format!("error {e}")),
                    }
                    finish(&mut buf, &mut out);
                }
            }
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
        (out, fast_lines)
    }

    #[test]
    fn same_batches_errors_and_tables() {
        let mut runner = TestRunner::new(Config {
            cases: 256,
            ..Config::default()
        });
        let cases = (0usize..4).prop_flat_map(|p| {
            let precision = PRECISIONS[p];
            let stream = prop::option::of(prop::collection::vec(any::<usize>(), 0..4));
            (Just(precision), requests(precision), stream)
        });
        let fast_lines = std::cell::Cell::new(0u64);
        let lines = std::cell::Cell::new(0u64);
        runner
            .run(&cases, |(precision, requests, stream)| {
                let stream = stream.as_deref();
                let (fast, taken) = run(true, &requests, stream, precision);
                let (general, none) = run(false, &requests, stream, precision);
                prop_assert_eq!(none, 0);
                prop_assert_eq!(
                    fast,
                    general,
                    "requests {:?}",
                    requests
                        .iter()
                        .map(|r| String::from_utf8_lossy(r))
                        .collect::<Vec<_>>()
                );
                fast_lines.set(fast_lines.get() + taken);
                let newlines = requests.iter().flatten().filter(|&&b| b == b'\n').count();
                lines.set(lines.get() + newlines as u64);
                Ok(())
            })
            .unwrap();
        // The comparison means something only if the fast path took a good
        // share of the lines (a first line per shape, and lines after an
        // error on a stream, cannot).
        let (fast_lines, lines) = (fast_lines.get(), lines.get());
        println!("{fast_lines} of about {lines} lines took the fast path");
        assert!(
            fast_lines * 5 > lines,
            "only {fast_lines} of about {lines} lines took the fast path"
        );
    }
}
