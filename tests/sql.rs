//! SQL as clients see it, against real `basalt serve` child processes: HTTP
//! `/exec` (QuestDB's JSON) and `/exp` (CSV), and the PostgreSQL wire
//! protocol through the real `psql` and psycopg 3 (Python). Every column
//! type with nulls, NaN, quoting and unicode; time-range pruning shown in
//! the plan and on the filesystem; queries racing heavy ingestion never see
//! part of a txn; a primary and its replica answer alike and the replica
//! refuses DDL; bad queries get clear, positioned errors.
//!
//! Needs `psql` on PATH (`apt-get install postgresql-client`) and psycopg 3
//! importable by `$BASALT_TEST_PYTHON` (default `python3`;
//! `./scripts/test.sh` installs both). Missing either fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, get, http, HttpResponse, ServerProcess};
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

fn url(path: &str, query: &str, params: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("query", query);
    for (k, v) in params {
        q.append_pair(k, v);
    }
    format!("{path}?{}", q.finish())
}

/// GET /exec with `params` (`limit`, `count`).
fn exec_with(addr: SocketAddr, query: &str, params: &[(&str, &str)]) -> HttpResponse {
    get(addr, &url("/exec", query, params))
}

/// A query that must succeed: its JSON answer.
fn exec(addr: SocketAddr, query: &str) -> Value {
    common::exec_json(addr, query)
}

/// A query that must fail: its error message and position.
fn exec_error(addr: SocketAddr, query: &str) -> (String, u64) {
    let r = exec_with(addr, query, &[]);
    assert_eq!(
        r.status,
        400,
        "{query} should fail: {}",
        String::from_utf8_lossy(&r.body)
    );
    let j = r.json();
    assert_eq!(j["query"], query, "{j}");
    let message = j["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {j}"))
        .to_string();
    assert!(!message.is_empty(), "{j}");
    let position = j["position"]
        .as_u64()
        .unwrap_or_else(|| panic!("no position: {j}"));
    (message, position)
}

/// `select count(*)`-like: the single value of a one-row, one-column answer.
fn exec_i64(addr: SocketAddr, query: &str) -> i64 {
    let j = exec(addr, query);
    j["dataset"][0][0]
        .as_i64()
        .unwrap_or_else(|| panic!("{query}: not one integer: {j}"))
}

fn exp(addr: SocketAddr, query: &str, params: &[(&str, &str)]) -> String {
    let r = get(addr, &url("/exp", query, params));
    assert_eq!(
        r.status,
        200,
        "{query}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    String::from_utf8(r.body).expect("CSV is UTF-8")
}

/// POSTs ILP to /write; it must be acknowledged.
fn write(addr: SocketAddr, body: &str) {
    let r = http(addr, "POST", "/write", &[], body.as_bytes());
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
}

fn pg_port(s: &ServerProcess) -> u16 {
    s.pg.unwrap_or_else(|| panic!("no pg= in {:?}", s.ready_line))
        .port()
}

/// Runs `sql` with the real `psql` (unaligned, `|` between fields, nulls
/// as `NULL`): stdout on success, stderr on failure.
fn psql(port: u16, sql: &str) -> Result<String, String> {
    let o = Command::new("psql")
        .args(["-X", "-w", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "admin", "-d", "qdb", "-At", "-F", "|"])
        .args(["-P", "null=NULL", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run psql ({e}): these tests need the PostgreSQL client. Install it \
                 (apt-get install postgresql-client); ./scripts/test.sh does"
            )
        });
    let out = String::from_utf8(o.stdout).expect("psql prints UTF-8");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if o.status.success() {
        Ok(out)
    } else {
        Err(err)
    }
}

fn psql_ok(port: u16, sql: &str) -> String {
    psql(port, sql).unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
}

fn psql_error(port: u16, sql: &str) -> String {
    match psql(port, sql) {
        Ok(out) => panic!("psql {sql:?} should fail, printed {out:?}"),
        Err(e) => {
            assert!(e.contains("ERROR:"), "{e}");
            e
        }
    }
}

fn python() -> String {
    std::env::var("BASALT_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Opens a psycopg connection to the port in `sys.argv[1]` as `conn`.
const PY_CONNECT: &str = r#"
import sys, datetime, time
try:
    import psycopg
except ImportError as e:
    sys.exit(f"MISSING-PSYCOPG: {e}")
conn = psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="admin",
                       password="quest", dbname="qdb", autocommit=True, connect_timeout=10)
"#;

/// Runs a psycopg script (after [`PY_CONNECT`]) and returns its stdout.
fn psycopg(port: u16, script: &str, args: &[&str]) -> String {
    let py = python();
    let o = Command::new(&py)
        .arg("-c")
        .arg(format!("{PY_CONNECT}{script}"))
        .arg(port.to_string())
        .args(args)
        .env("PYTHONIOENCODING", "utf-8")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {py} ({e}): set BASALT_TEST_PYTHON to a Python with psycopg 3")
        });
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("MISSING-PSYCOPG"),
        "psycopg 3 is not importable by {py}: install it with ./scripts/test.sh, or \
         `{py} -m pip install 'psycopg[binary]>=3.1'` and set BASALT_TEST_PYTHON.\n{stderr}"
    );
    assert!(
        o.status.success(),
        "the psycopg script failed ({}):\n{stderr}\nstdout: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).expect("UTF-8 from Python")
}

/// The text of every plan line an EXPLAIN answer holds.
fn plan_text(addr: SocketAddr, query: &str) -> String {
    let j = exec(addr, query);
    let rows = j["dataset"].as_array().expect("rows");
    rows.iter()
        .map(|r| r[1].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `BasaltScan: ...` line of a plan.
fn scan_line(plan: &str) -> &str {
    let at = plan
        .find("BasaltScan:")
        .unwrap_or_else(|| panic!("no BasaltScan in the plan:\n{plan}"));
    plan[at..].lines().next().expect("a line")
}

/// Waits until the replica applied everything the primary committed to
/// each of `tables`.
fn wait_replicated(p: &ServerProcess, r: &ServerProcess, tables: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ps, rs) = (p.status(), r.status());
        let done = tables.iter().all(|t| {
            let committed = ps["tables"][t]["committed_txn"].as_u64().unwrap_or(0);
            committed > 0
                && ps["tables"][t]["applied_txn"].as_u64() == Some(committed)
                && ps["tables"][t]["uploaded_txn"].as_u64() == Some(committed)
                && rs["tables"][t]["applied_txn"].as_u64() == Some(committed)
        });
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not replicated within 60 s:\nprimary {ps}\nreplica {rs}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one directory of partition `name` (`2024-01-02` -> `2024-01-02.<v>`).
fn partition_dir(table_dir: &Path, name: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(table_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}.")))
        })
        .collect();
    assert_eq!(found.len(), 1, "partition {name}: {found:?}");
    found.into_iter().next().unwrap()
}

// ---------------------------------------------------------------- 1. types

const TYPES_DDL: &str = "CREATE TABLE types (ts TIMESTAMP, b BOOLEAN, y BYTE, s SHORT, i INT, \
    l LONG, f FLOAT, d DOUBLE, sym SYMBOL, v VARCHAR, seen TIMESTAMP) \
    TIMESTAMP(ts) PARTITION BY DAY WAL";

/// Rows 1-3 (one txn): extremes of every integer type, NaN and infinity,
/// a string needing CSV quoting (comma, quotes, a real newline), an empty
/// string, a symbol with a comma and quotes, unicode; a null in every
/// column somewhere. Rows 4-5 (another txn) land in the next two days.
const TYPES_ROWS_1: &str = "types,sym=alpha b=t,y=-128i,s=32767i,i=-2147483648i,\
l=9223372036854775807i,f=1.5,d=NaN,v=\"comma, \\\"quote\\\" and\nnewline\",seen=1700000000000001t \
1700000000123456000
types,sym=beta\\,\\ \"g\" b=f,y=127i,s=-32768i,i=2147483647i,l=-9223372036854775808i,f=-0.25,\
d=12345.678,v=\"\" 1700000001000000000
types,sym=ü€ñ v=\"日本語 ünïcödé 🚀\",d=Infinity 1700000002000000000
";
const TYPES_ROWS_2: &str = "types y=0i,seen=0t 1700086400000000000
types,sym=alpha y=1i,d=-Infinity,v=\" padded \" 1700172800000000000
";

#[test]
fn every_type_through_exec_exp_and_pg() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let port = pg_port(&s);

    // CREATE TABLE over PG, then ILP integers and floats into the narrower
    // BYTE/SHORT/INT/FLOAT columns.
    assert_eq!(psql_ok(port, TYPES_DDL).trim(), "CREATE TABLE");
    write(s.http, TYPES_ROWS_1);
    write(s.http, TYPES_ROWS_2);
    // An ILP value out of a narrow column's range is refused, and the
    // request commits nothing.
    let r = http(
        s.http,
        "POST",
        "/write",
        &[],
        b"types y=2i 1700000003000000000\ntypes y=128i 1700000004000000000\n",
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("does not fit") && msg.contains("\"y\""),
        "{msg}"
    );
    eventually(Duration::from_secs(10), || {
        (exec_i64(s.http, "select count(*) from types") == 5).then_some(())
    });

    // /exec: QuestDB's type names, the designated timestamp's index, every
    // value (NaN and infinities are null).
    let j = exec(s.http, "select * from types order by ts");
    let names = ["ts", "b", "y", "s", "i", "l", "f", "d", "sym", "v", "seen"];
    let types = [
        "TIMESTAMP",
        "BOOLEAN",
        "BYTE",
        "SHORT",
        "INT",
        "LONG",
        "FLOAT",
        "DOUBLE",
        "SYMBOL",
        "VARCHAR",
        "TIMESTAMP",
    ];
    let columns: Vec<Value> = names
        .iter()
        .zip(types)
        .map(|(n, t)| json!({"name": n, "type": t}))
        .collect();
    assert_eq!(j["columns"], Value::Array(columns), "{j}");
    assert_eq!(j["timestamp"], 0, "{j}");
    assert_eq!(j["count"], 5, "{j}");
    assert_eq!(j["query"], "select * from types order by ts");
    let expected = json!([
        [
            "2023-11-14T22:13:20.123456Z",
            true,
            -128,
            32767,
            -2147483648i64,
            i64::MAX,
            1.5,
            null,
            "alpha",
            "comma, \"quote\" and\nnewline",
            "2023-11-14T22:13:20.000001Z"
        ],
        [
            "2023-11-14T22:13:21.000000Z",
            false,
            127,
            -32768,
            2147483647,
            i64::MIN,
            -0.25,
            12345.678,
            "beta, \"g\"",
            "",
            null
        ],
        [
            "2023-11-14T22:13:22.000000Z",
            null,
            null,
            null,
            null,
            null,
            null,
            null,
            "ü€ñ",
            "日本語 ünïcödé 🚀",
            null
        ],
        [
            "2023-11-15T22:13:20.000000Z",
            null,
            0,
            null,
            null,
            null,
            null,
            null,
            null,
            null,
            "1970-01-01T00:00:00.000000Z"
        ],
        [
            "2023-11-16T22:13:20.000000Z",
            null,
            1,
            null,
            null,
            null,
            null,
            null,
            "alpha",
            " padded ",
            null
        ],
    ]);
    assert_eq!(j["dataset"], expected, "{j}");
    // The designated timestamp is found where a projection puts it, and is
    // not claimed for a computed column.
    let j = exec(s.http, "select v, ts from types");
    assert_eq!(j["timestamp"], 1, "{j}");
    let j = exec(s.http, "select v, ts + interval '1 second' as t from types");
    assert_eq!(j["timestamp"], -1, "{j}");

    // /exp: quoted header, null = empty, "" = empty string, quoting of
    // commas, quotes, newlines and edge spaces, timestamps unquoted.
    let csv = exp(s.http, "select * from types order by ts", &[]);
    let expected_csv = concat!(
        "\"ts\",\"b\",\"y\",\"s\",\"i\",\"l\",\"f\",\"d\",\"sym\",\"v\",\"seen\"\n",
        "2023-11-14T22:13:20.123456Z,true,-128,32767,-2147483648,9223372036854775807,1.5,,alpha,",
        "\"comma, \"\"quote\"\" and\nnewline\",2023-11-14T22:13:20.000001Z\n",
        "2023-11-14T22:13:21.000000Z,false,127,-32768,2147483647,-9223372036854775808,-0.25,",
        "12345.678,\"beta, \"\"g\"\"\",\"\",\n",
        "2023-11-14T22:13:22.000000Z,,,,,,,,ü€ñ,日本語 ünïcödé 🚀,\n",
        "2023-11-15T22:13:20.000000Z,,0,,,,,,,,1970-01-01T00:00:00.000000Z\n",
        "2023-11-16T22:13:20.000000Z,,1,,,,,,alpha,\" padded \",\n",
    );
    assert_eq!(csv, expected_csv);

    // psycopg 3 (extended protocol, %s parameters), text and binary
    // results: Python types and values.
    let out = psycopg(
        port,
        r#"
for binary in (False, True):
    cur = conn.cursor(binary=binary)
    cur.execute("select * from types where ts >= %s order by ts", (datetime.datetime(2023, 11, 14),))
    print("binary" if binary else "text", ",".join(d.name for d in cur.description))
    for row in cur.fetchall():
        print("|".join(f"{type(v).__name__}:{v!r}" for v in row))
    for q, p in [
        ("select count(*) from types where sym = %s", ("alpha",)),
        ("select count(*) from types where b = %s", (True,)),
        ("select count(*) from types where y >= %s", (0,)),
        ("select count(*) from types where l = %s", (9223372036854775807,)),
        ("select count(*) from types where d < %s", (0.0,)),
        ("select count(*) from types where v = %s", ("",)),
        ("select count(*) from types where ts >= %s", (datetime.datetime(2023, 11, 15),)),
        ("select count(*) from types where seen is null", ()),
    ]:
        cur.execute(q, p or None)
        print(q, "->", cur.fetchone()[0])
"#,
        &[],
    );
    let rows = [
        "datetime:datetime.datetime(2023, 11, 14, 22, 13, 20, 123456)|bool:True|int:-128|int:32767|\
         int:-2147483648|int:9223372036854775807|float:1.5|float:nan|str:'alpha'|\
         str:'comma, \"quote\" and\\nnewline'|datetime:datetime.datetime(2023, 11, 14, 22, 13, 20, 1)",
        "datetime:datetime.datetime(2023, 11, 14, 22, 13, 21)|bool:False|int:127|int:-32768|\
         int:2147483647|int:-9223372036854775808|float:-0.25|float:12345.678|str:'beta, \"g\"'|\
         str:''|NoneType:None",
        "datetime:datetime.datetime(2023, 11, 14, 22, 13, 22)|NoneType:None|NoneType:None|\
         NoneType:None|NoneType:None|NoneType:None|NoneType:None|float:inf|str:'ü€ñ'|\
         str:'日本語 ünïcödé 🚀'|NoneType:None",
        "datetime:datetime.datetime(2023, 11, 15, 22, 13, 20)|NoneType:None|int:0|NoneType:None|\
         NoneType:None|NoneType:None|NoneType:None|NoneType:None|NoneType:None|NoneType:None|\
         datetime:datetime.datetime(1970, 1, 1, 0, 0)",
        "datetime:datetime.datetime(2023, 11, 16, 22, 13, 20)|NoneType:None|int:1|NoneType:None|\
         NoneType:None|NoneType:None|NoneType:None|float:-inf|str:'alpha'|str:' padded '|\
         NoneType:None",
    ];
    let counts = [
        "select count(*) from types where sym = %s -> 2",
        "select count(*) from types where b = %s -> 1",
        "select count(*) from types where y >= %s -> 3",
        "select count(*) from types where l = %s -> 1",
        "select count(*) from types where d < %s -> 1",
        "select count(*) from types where v = %s -> 1",
        "select count(*) from types where ts >= %s -> 2",
        "select count(*) from types where seen is null -> 3",
    ];
    let mut expected_py = String::new();
    for mode in ["text", "binary"] {
        writeln!(expected_py, "{mode} {}", names.join(",")).unwrap();
        for r in rows.iter().chain(&counts) {
            writeln!(expected_py, "{r}").unwrap();
        }
    }
    assert_eq!(out, expected_py);

    // psql (simple protocol, text): PostgreSQL's text forms. Last, because
    // it is the one check that fails today (see the infinity note below).
    let out = psql_ok(port, "select * from types order by ts");
    let expected_psql = concat!(
        "2023-11-14 22:13:20.123456|t|-128|32767|-2147483648|9223372036854775807|1.5|NaN|alpha|",
        "comma, \"quote\" and\nnewline|2023-11-14 22:13:20.000001\n",
        "2023-11-14 22:13:21.000000|f|127|-32768|2147483647|-9223372036854775808|-0.25|12345.678|",
        "beta, \"g\"||NULL\n",
        "2023-11-14 22:13:22.000000|NULL|NULL|NULL|NULL|NULL|NULL|Infinity|ü€ñ|日本語 ünïcödé 🚀|NULL\n",
        "2023-11-15 22:13:20.000000|NULL|0|NULL|NULL|NULL|NULL|NULL|NULL|NULL|1970-01-01 00:00:00.000000\n",
        "2023-11-16 22:13:20.000000|NULL|1|NULL|NULL|NULL|NULL|-Infinity|alpha| padded |NULL\n",
    );
    // PostgreSQL's float8out writes infinities as `Infinity`/`-Infinity`
    // (drivers such as JDBC parse only those); basalt sends `inf`/`-inf`.
    assert_eq!(out, expected_psql);
}

// ---------------------------------------------------------------- 2. pruning

/// 2024-01-01T00:00:00Z in µs.
const JAN_1_US: i64 = 1_704_067_200_000_000;
const DAY_US: i64 = 86_400_000_000;

#[test]
fn time_range_pruning_touches_only_the_expected_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = ServerProcess::start(&data, &[]);
    // 100 rows a day on 2024-01-01, 02 and 03; value = day * 1000 + k.
    let mut body = String::new();
    for day in 0..3i64 {
        for k in 0..100i64 {
            let ts_ns = (JAN_1_US + day * DAY_US + k * 60_000_000) * 1000;
            writeln!(
                body,
                "readings,sensor=s{} value={}i {ts_ns}",
                k % 4,
                day * 1000 + k
            )
            .unwrap();
        }
    }
    write(s.http, &body);
    eventually(Duration::from_secs(10), || {
        (exec_i64(s.http, "select count(*) from readings") == 300).then_some(())
    });
    // Restart: the shutdown checkpoints, and from here on nothing writes
    // to the table while its directories move.
    assert!(s.terminate().success());
    let s = ServerProcess::start(&data, &[]);
    let port = pg_port(&s);

    let day2 = "timestamp >= '2024-01-02T00:00:00Z' and timestamp < '2024-01-03T00:00:00Z'";
    let (d2_lo, d2_hi) = (JAN_1_US + DAY_US, JAN_1_US + 2 * DAY_US);
    for (filter, range) in [
        (day2.to_string(), format!("ts_range=[{d2_lo}, {d2_hi})")),
        (
            "timestamp between '2024-01-02T00:00:00Z' and '2024-01-02T23:59:59.999999Z'"
                .to_string(),
            format!("ts_range=[{d2_lo}, {d2_hi})"),
        ),
        (
            "timestamp >= '2024-01-03T00:00:00Z'".to_string(),
            format!("ts_range=[{}, {})", JAN_1_US + 2 * DAY_US, i64::MAX),
        ),
        (
            "'2024-01-02T00:00:00Z' > timestamp".to_string(),
            format!("ts_range=[{}, {d2_lo})", i64::MIN),
        ),
    ] {
        let plan = plan_text(
            s.http,
            &format!("EXPLAIN select count(*) from readings where {filter}"),
        );
        let line = scan_line(&plan);
        assert!(line.contains("table=readings"), "{line}");
        assert!(line.contains("partitions=1/3"), "{filter}: {line}");
        assert!(line.contains("rows=100"), "{filter}: {line}");
        assert!(line.contains(&range), "{filter}: {line}");
    }
    // Controls: no time filter, or one on another column, reads all three.
    for q in [
        "EXPLAIN select count(*) from readings",
        "EXPLAIN select count(*) from readings where value >= 1000 and value < 2000",
    ] {
        let plan = plan_text(s.http, q);
        let line = scan_line(&plan);
        assert!(
            line.contains("partitions=3/3") && line.contains("rows=300"),
            "{q}: {line}"
        );
    }
    let table_dir = data.join("readings");
    let (p1, p2, p3) = (
        partition_dir(&table_dir, "2024-01-01"),
        partition_dir(&table_dir, "2024-01-02"),
        partition_dir(&table_dir, "2024-01-03"),
    );
    let p2_name = p2.file_name().unwrap().to_str().unwrap().to_string();
    let plan = plan_text(
        s.http,
        &format!("EXPLAIN VERBOSE select count(*) from readings where {day2}"),
    );
    assert!(
        plan.contains(&format!("scanned=[{p2_name}]")),
        "EXPLAIN VERBOSE names the one partition read:\n{}",
        scan_line(&plan)
    );

    // The proof on the filesystem: with the other two days' directories
    // gone, the day-2 query still answers, and correctly; a full scan fails.
    let day2_query = format!("select count(*), sum(value) from readings where {day2}");
    let day2_answer = json!([[100, (1000..1100).sum::<i64>()]]);
    assert_eq!(exec(s.http, &day2_query)["dataset"], day2_answer);
    let aside = dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    let (a1, a3) = (aside.join("day1"), aside.join("day3"));
    std::fs::rename(&p1, &a1).unwrap();
    std::fs::rename(&p3, &a3).unwrap();
    assert_eq!(exec(s.http, &day2_query)["dataset"], day2_answer);
    assert_eq!(psql_ok(port, &day2_query), "100|104950\n");
    // (count(*) alone reads no column file: `_txn` has the row counts.)
    let full = "select count(*), sum(value) from readings";
    let (err, _) = exec_error(s.http, full);
    let gone = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        err.contains("No such file") && (err.contains(&gone(&p1)) || err.contains(&gone(&p3))),
        "the full scan fails naming a missing partition's file: {err}"
    );
    psql_error(port, full);
    // Day 1 alone is missing too.
    exec_error(
        s.http,
        "select sum(value) from readings where timestamp < '2024-01-02T00:00:00Z'",
    );
    std::fs::rename(&a1, &p1).unwrap();
    std::fs::rename(&a3, &p3).unwrap();
    let all: i64 = (0..3)
        .map(|d| (0..100).map(|k| d * 1000 + k).sum::<i64>())
        .sum();
    assert_eq!(exec(s.http, full)["dataset"], json!([[300, all]]));
    assert_eq!(
        exec_i64(
            s.http,
            "select sum(value) from readings where timestamp < '2024-01-02T00:00:00Z'"
        ),
        (0..100).sum::<i64>()
    );
}

// ---------------------------------------------------------------- 3. racing ingestion

const ROWS_PER_BATCH: u64 = 200;
const WRITERS: u64 = 3;
const RACE_SECONDS: u64 = 5;
/// 2024-03-01T00:00:00Z in µs.
const MAR_1_US: i64 = 1_709_251_200_000_000;

/// One batch (= one request = one txn) of writer `w`: every row carries the
/// batch's id and the writer's symbol. Batches cycle through three days and
/// every other one lands before the rows already in its day (an
/// out-of-order merge into a new partition version).
fn race_batch(w: u64, n: u64) -> (u64, String) {
    let id = w * 1_000_000 + n;
    let seq = (n * WRITERS + w) as i64;
    let k = ROWS_PER_BATCH as i64;
    let base = MAR_1_US + (n % 3) as i64 * DAY_US + 20_000_000_000;
    let first = if n.is_multiple_of(2) {
        base + seq * k
    } else {
        base - (seq + 1) * k
    };
    let mut body = String::new();
    for j in 0..k {
        writeln!(
            body,
            "race,src=w{w} batch={id}i,seq={j}i,value={j}.5 {}",
            (first + j) * 1000
        )
        .unwrap();
    }
    (id, body)
}

const RACE_QUERY_FROM: &str =
    "select batch, count(*) as n, count(distinct src) as sources from race";
const RACE_QUERY: &str = concat!(
    "select batch, count(*) as n, count(distinct src) as sources from race",
    " group by batch"
);

#[test]
fn queries_during_heavy_ingestion_never_see_a_partial_txn() {
    let dir = tempfile::tempdir().unwrap();
    // Frequent checkpoints: replaced partition versions are removed while
    // queries run.
    let s = ServerProcess::start(dir.path(), &["--checkpoint-interval-ms", "100"]);
    let port = pg_port(&s);
    let (first, body) = race_batch(WRITERS, 0);
    write(s.http, &body);
    eventually(Duration::from_secs(10), || {
        let r = exec_with(s.http, "select count(*) from race", &[]);
        (r.status == 200 && r.json()["dataset"][0][0] == ROWS_PER_BATCH).then_some(())
    });

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(vec![first]));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stop, acked, addr) = (stop.clone(), acked.clone(), s.http);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (id, body) = race_batch(w, n);
                    n += 1;
                    write(addr, &body);
                    acked.lock().unwrap().push(id);
                }
            })
        })
        .collect();

    // psycopg checks the same invariant concurrently, over the extended
    // protocol, with a fresh snapshot per statement.
    let py = {
        let seconds = RACE_SECONDS.to_string();
        let k = ROWS_PER_BATCH.to_string();
        std::thread::spawn(move || {
            psycopg(
                port,
                &format!(
                    r#"
deadline = time.monotonic() + float(sys.argv[2])
k = int(sys.argv[3])
queries, last = 0, 0
cur = conn.cursor()
while time.monotonic() < deadline:
    cur.execute("{RACE_QUERY_FROM} where seq >= %s group by batch", (0,))
    rows = cur.fetchall()
    bad = [r for r in rows if r[1] != k or r[2] != 1]
    if bad:
        sys.exit(f"partial or mixed batches seen: {{bad[:5]}}")
    if len(rows) < last:
        sys.exit(f"went back in time: {{len(rows)}} batches after {{last}}")
    last = len(rows)
    queries += 1
print(queries, last)
"#
                ),
                &[&seconds, &k],
            )
        })
    };

    // /exec checks it too: every batch whole, and never fewer batches than
    // a previous answer showed.
    let started = Instant::now();
    let (mut queries, mut last, mut distinct_sizes) = (0u64, 0usize, BTreeSet::new());
    while started.elapsed() < Duration::from_secs(RACE_SECONDS) {
        let j = exec(s.http, RACE_QUERY);
        let rows = j["dataset"].as_array().unwrap();
        for r in rows {
            assert!(
                r[1] == ROWS_PER_BATCH && r[2] == 1,
                "query {queries} saw batch {} with {} rows from {} sources",
                r[0],
                r[1],
                r[2]
            );
        }
        assert!(
            rows.len() >= last,
            "a query saw {} batches after one saw {last}",
            rows.len()
        );
        last = rows.len();
        distinct_sizes.insert(last);
        queries += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("a writer failed");
    }
    let py_out = py.join().expect("the psycopg checker failed");
    let py_queries: u64 = py_out
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("psycopg printed {py_out:?}"));

    let acked = acked.lock().unwrap().clone();
    let total = acked.len() as u64;
    eprintln!(
        "{total} batches acknowledged; {queries} /exec and {py_queries} psycopg queries; \
         {} distinct batch counts seen",
        distinct_sizes.len()
    );
    assert!(total > 30, "only {total} batches acknowledged");
    assert!(
        queries + py_queries > 20,
        "only {queries} + {py_queries} queries ran"
    );
    assert!(queries >= 5 && py_queries >= 5, "{queries} {py_queries}");
    assert!(
        distinct_sizes.len() > 2,
        "the queries did not run during ingestion: batch counts seen {distinct_sizes:?}"
    );
    // Everything acknowledged is there, each batch whole, and nothing else.
    let j = eventually(Duration::from_secs(30), || {
        let j = exec(s.http, &format!("{RACE_QUERY} order by batch"));
        (j["dataset"].as_array().unwrap().len() as u64 == total).then_some(j)
    });
    let seen: BTreeMap<u64, (u64, u64)> = j["dataset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_u64().unwrap(),
                (r[1].as_u64().unwrap(), r[2].as_u64().unwrap()),
            )
        })
        .collect();
    for id in &acked {
        assert_eq!(seen.get(id), Some(&(ROWS_PER_BATCH, 1)), "batch {id}");
    }
    assert_eq!(
        exec_i64(s.http, "select count(*) from race"),
        (total * ROWS_PER_BATCH) as i64
    );
}

// ---------------------------------------------------------------- 4. replica

/// 2024-01-01T23:30:00Z in µs: an hour of rows crosses midnight.
const CPU_START_US: i64 = 1_704_151_800_000_000;
const CPU_ROWS: i64 = 3600;
const HOSTS: i64 = 5;

fn cpu_usage(i: i64) -> f64 {
    // Multiples of 0.25: sums are exact, whatever order threads add in.
    (i % 40) as f64 * 0.25
}

/// Rows `lo..hi` of `cpu`: one a second, hosts round-robin.
fn cpu_rows(lo: i64, hi: i64) -> String {
    let mut body = String::new();
    for i in lo..hi {
        writeln!(
            body,
            "cpu,host=h{} usage={},reqs={i}i {}",
            i % HOSTS,
            cpu_usage(i),
            (CPU_START_US + i * 1_000_000) * 1000
        )
        .unwrap();
    }
    body
}

/// Every number as an f64: `/exec` writes an integral double as `4`, which
/// reads back as an integer.
fn as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().expect("a number")),
        Value::Array(a) => Value::Array(a.iter().map(as_f64).collect()),
        other => other.clone(),
    }
}

fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[test]
fn primary_and_replica_return_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let (pdir, rdir) = (dir.path().join("primary"), dir.path().join("replica"));
    let store = format!("fs::root={};", pdir.join("_replication").display());
    let p = ServerProcess::start(&pdir, &["--checkpoint-interval-ms", "200"]);
    let r = ServerProcess::start_replica(&rdir, &store);
    assert!(r.ready_line.contains("role=replica"), "{}", r.ready_line);
    let (pp, rp) = (pg_port(&p), pg_port(&r));

    // Six txns, the last two out of order (an O3 merge on apply).
    for (lo, hi) in [(0, 600), (600, 1200), (1200, 1800), (1800, 2400)] {
        write(p.http, &cpu_rows(lo, hi));
    }
    write(p.http, &cpu_rows(3000, 3600));
    write(p.http, &cpu_rows(2400, 3000));
    // A table made by CREATE TABLE replicates with its narrow types.
    exec(
        p.http,
        "CREATE TABLE trades (ts TIMESTAMP, sym SYMBOL, px DOUBLE, qty INT, side BYTE, \
         ok BOOLEAN, note VARCHAR) TIMESTAMP(ts) PARTITION BY HOUR",
    );
    write(
        p.http,
        "trades,sym=BTC px=42000.5,qty=3i,side=1i,ok=t,note=\"first\" 1704067200000000000\n\
         trades,sym=ETH px=2200.25,qty=-7i,side=-1i,ok=f 1704070800000000000\n\
         trades,sym=BTC px=41999.75,qty=1i,note=\"x, \\\"y\\\"\" 1704074400000000000\n",
    );
    wait_replicated(&p, &r, &["cpu", "trades"]);

    let latest = "select distinct on (host) host, usage, timestamp from cpu \
                  order by host, timestamp desc";
    let sampled = "select date_bin(interval '1 minute', timestamp) as t, avg(usage) from cpu \
                   group by 1 order by 1";
    let ranged = "select host, count(*) as n, sum(usage) as total from cpu \
                  where timestamp >= '2024-01-02T00:00:00Z' and timestamp < '2024-01-02T00:10:00Z' \
                  group by host order by host";
    let by_host = "select host, count(*), min(reqs), max(reqs), sum(usage) from cpu \
                   group by host order by host";
    let queries = [
        by_host,
        sampled,
        latest,
        ranged,
        "select * from cpu where timestamp = '2024-01-02T00:00:07Z'",
        "select * from trades order by ts",
        "select sym, sum(qty), count(note) from trades group by sym order by sym",
    ];
    let mut answers = BTreeMap::new();
    for q in queries {
        let (a, b) = (exec(p.http, q), exec(r.http, q));
        assert!(
            !a["dataset"].as_array().unwrap().is_empty(),
            "{q} found nothing: {a}"
        );
        assert_eq!(a["columns"], b["columns"], "{q}");
        assert_eq!(a["timestamp"], b["timestamp"], "{q}");
        assert_eq!(
            a["dataset"], b["dataset"],
            "{q}: the replica answers otherwise"
        );
        let (pa, ra) = (psql_ok(pp, q), psql_ok(rp, q));
        assert!(!pa.is_empty(), "{q}");
        assert_eq!(pa, ra, "{q} over PostgreSQL");
        answers.insert(q, a);
    }
    // And the answers are right, not only equal.
    let hosts: Vec<Value> = (0..HOSTS)
        .map(|h| {
            let is: Vec<i64> = (0..CPU_ROWS).filter(|i| i % HOSTS == h).collect();
            json!([
                format!("h{h}"),
                is.len(),
                is[0],
                is[is.len() - 1],
                is.iter().map(|&i| cpu_usage(i)).sum::<f64>()
            ])
        })
        .collect();
    assert_eq!(
        as_f64(&answers[by_host]["dataset"]),
        as_f64(&Value::Array(hosts))
    );
    let minutes: Vec<Value> = (0..CPU_ROWS / 60)
        .map(|m| {
            let sum: f64 = (m * 60..m * 60 + 60).map(cpu_usage).sum();
            json!([iso(CPU_START_US + m * 60_000_000), sum / 60.0])
        })
        .collect();
    assert_eq!(
        as_f64(&answers[sampled]["dataset"]),
        as_f64(&Value::Array(minutes))
    );
    let last: Vec<Value> = (0..HOSTS)
        .map(|h| {
            let i = CPU_ROWS - HOSTS + h;
            json!([
                format!("h{h}"),
                cpu_usage(i),
                iso(CPU_START_US + i * 1_000_000)
            ])
        })
        .collect();
    assert_eq!(
        as_f64(&answers[latest]["dataset"]),
        as_f64(&Value::Array(last))
    );
    // QuestDB's own clauses, rewritten, answer the same on both nodes.
    for (questdb, same_as) in [
        (
            "select timestamp, avg(usage) from cpu sample by 1m",
            sampled,
        ),
        (
            "select host, usage, timestamp from cpu latest on timestamp partition by host",
            latest,
        ),
    ] {
        for node in [&p, &r] {
            let j = exec(node.http, questdb);
            assert_eq!(
                as_f64(&j["dataset"]),
                as_f64(&answers[same_as]["dataset"]),
                "{questdb}"
            );
        }
    }
    let ten: Vec<Value> = (0..HOSTS)
        .map(|h| {
            let is = (1800..2400).filter(|i| i % HOSTS == h);
            json!([format!("h{h}"), 120, is.map(cpu_usage).sum::<f64>()])
        })
        .collect();
    assert_eq!(
        as_f64(&answers[ranged]["dataset"]),
        as_f64(&Value::Array(ten))
    );
    let t = &answers["select * from trades order by ts"];
    let types: Vec<&str> = t["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "TIMESTAMP",
            "SYMBOL",
            "DOUBLE",
            "INT",
            "BYTE",
            "BOOLEAN",
            "VARCHAR"
        ]
    );
    assert_eq!(
        t["dataset"][2],
        json!([
            "2024-01-01T02:00:00.000000Z",
            "BTC",
            41999.75,
            1,
            null,
            null,
            "x, \"y\""
        ])
    );

    // The replica refuses DDL, over HTTP and PostgreSQL, and keeps its data.
    for ddl in [
        "CREATE TABLE nope (ts TIMESTAMP, x LONG) TIMESTAMP(ts)",
        "DROP TABLE cpu",
        "DROP TABLE IF EXISTS trades",
    ] {
        let (err, _) = exec_error(r.http, ddl);
        assert!(err.contains("read-only replica"), "{ddl}: {err}");
        assert!(err.contains("on the primary"), "{ddl}: {err}");
        let err = psql_error(rp, ddl);
        assert!(err.contains("read-only replica"), "{ddl}: {err}");
    }
    assert_eq!(exec_i64(r.http, "select count(*) from cpu"), CPU_ROWS);
    assert_eq!(exec_i64(r.http, "select count(*) from trades"), 3);
    exec_error(r.http, "select * from nope");

    // On the primary: DROP TABLE (over PostgreSQL) removes the table;
    // CREATE TABLE with the same name makes a new, empty one.
    assert_eq!(psql_ok(pp, "DROP TABLE cpu").trim(), "DROP TABLE");
    let (err, _) = exec_error(p.http, "select * from cpu");
    assert!(err.contains("not found") && err.contains("cpu"), "{err}");
    assert!(!pdir.join("cpu").exists(), "the table's directory is gone");
    let (err, _) = exec_error(p.http, "DROP TABLE cpu");
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(
        exec(p.http, "DROP TABLE IF EXISTS cpu"),
        json!({"ddl": "OK"})
    );
    assert_eq!(
        exec(
            p.http,
            "CREATE TABLE cpu (timestamp TIMESTAMP, host SYMBOL, load FLOAT) TIMESTAMP(timestamp)"
        ),
        json!({"ddl": "OK"})
    );
    let j = exec(p.http, "select * from cpu");
    assert_eq!(j["dataset"], json!([]), "{j}");
    assert_eq!(j["count"], 0);
    assert_eq!(
        j["columns"],
        json!([
            {"name": "timestamp", "type": "TIMESTAMP"},
            {"name": "host", "type": "SYMBOL"},
            {"name": "load", "type": "FLOAT"}
        ])
    );
    write(p.http, "cpu,host=z load=0.5 1704067200000000000\n");
    eventually(Duration::from_secs(10), || {
        (exec(p.http, "select host, load from cpu")["dataset"] == json!([["z", 0.5]])).then_some(())
    });
    assert_eq!(psql_ok(pp, "select host, load from cpu"), "z|0.5\n");
}

// ---------------------------------------------------------------- 5. errors

#[test]
fn bad_queries_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let port = pg_port(&s);
    let mut body = String::new();
    for i in 0..5i64 {
        writeln!(
            body,
            "cpu,host=h{i} usage={i}.5 {}",
            (JAN_1_US + i * 1_000_000) * 1000
        )
        .unwrap();
    }
    write(s.http, &body);
    eventually(Duration::from_secs(10), || {
        let r = exec_with(s.http, "select count(*) from cpu", &[]);
        (r.status == 200 && r.json()["dataset"][0][0] == 5).then_some(())
    });

    // Syntax error: the position is the character offset of the problem.
    let (e, at) = exec_error(s.http, "select * frm cpu");
    assert_eq!(at, 13, "{e}");
    assert!(e.contains("cpu"), "{e}");
    let (e, at) = exec_error(s.http, "select host,\n  usage frm cpu");
    assert_eq!(at, 25, "{e}");
    // Unknown table and column: named, and pointed at.
    let (e, at) = exec_error(s.http, "select * from nope");
    assert!(e.contains("nope") && e.contains("not found"), "{e}");
    assert_eq!(at, 14, "{e}");
    let (e, at) = exec_error(s.http, "select host, nope from cpu");
    assert!(e.contains("nope"), "{e}");
    assert_eq!(at, 13, "{e}");
    // A failure while running (not planning) is a 400 too.
    let (e, _) = exec_error(s.http, "select cast(host as int) from cpu");
    assert!(e.contains("h0") || e.contains("cast"), "{e}");
    // Empty and missing queries.
    for target in ["/exec?query=", "/exec?query=%20%20", "/exec", "/exp?query="] {
        let r = get(s.http, target);
        assert_eq!(r.status, 400, "{target}");
        assert!(
            r.json()["error"].as_str().unwrap().contains("empty query"),
            "{target}: {}",
            r.json()
        );
    }
    // Bad limits.
    for limit in ["abc", "-1", "5,2", "1,x"] {
        let r = exec_with(s.http, "select * from cpu", &[("limit", limit)]);
        assert_eq!(r.status, 400, "limit={limit}");
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains("limit"), "limit={limit}: {e}");
    }
    // DML and unsupported statements.
    for (q, want) in [
        (
            "insert into cpu (host, usage) values ('x', 1.0)",
            "not supported",
        ),
        ("delete from cpu", "not supported"),
        ("CREATE VIEW v AS select 1", "only CREATE TABLE"),
    ] {
        let (e, _) = exec_error(s.http, q);
        assert!(e.contains(want), "{q}: {e}");
    }
    // CREATE TABLE errors, positioned.
    for (q, want, at) in [
        (
            "CREATE TABLE t (ts TIMESTAMP, x DECIMAL) TIMESTAMP(ts)",
            "unsupported column type DECIMAL",
            32,
        ),
        (
            "CREATE TABLE t (ts TIMESTAMP, x INT) TIMESTAMP(x)",
            "must be of type TIMESTAMP",
            47,
        ),
        (
            "CREATE TABLE t (x INT) TIMESTAMP(ts)",
            "no column named \"ts\"",
            33,
        ),
        (
            "CREATE TABLE t (x INT) PARTITION BY DAY",
            "needs a designated timestamp",
            13,
        ),
        (
            "CREATE TABLE t (ts TIMESTAMP, ts LONG) TIMESTAMP(ts)",
            "duplicate column name",
            30,
        ),
        (
            "CREATE TABLE t (ts TIMESTAMP) TIMESTAMP(ts) PARTITION BY FORTNIGHT",
            "unknown partition scheme",
            57,
        ),
    ] {
        let (e, pos) = exec_error(s.http, q);
        assert!(e.contains(want), "{q}: {e}");
        assert_eq!(pos, at, "{q}: {e}");
    }
    let (e, _) = exec_error(s.http, "CREATE TABLE cpu (ts TIMESTAMP) TIMESTAMP(ts)");
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(
        exec(
            s.http,
            "CREATE TABLE IF NOT EXISTS cpu (ts TIMESTAMP) TIMESTAMP(ts)"
        ),
        json!({"ddl": "OK"})
    );
    let (e, _) = exec_error(s.http, "DROP TABLE nope");
    assert!(e.contains("does not exist") && e.contains("nope"), "{e}");
    // Nothing above made a table.
    let tables: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.') && !n.starts_with('_'))
        .collect();
    assert_eq!(tables, BTreeSet::from(["cpu".to_string()]));

    // The same errors over PostgreSQL: psql, and psycopg on one connection
    // that keeps working after each.
    let e = psql_error(port, "select * frm cpu");
    assert!(e.contains("Expected"), "{e}");
    let e = psql_error(port, "select * from nope");
    assert!(e.contains("not found"), "{e}");
    let e = psql_error(
        port,
        "CREATE TABLE t (ts TIMESTAMP, x DECIMAL) TIMESTAMP(ts)",
    );
    assert!(e.contains("unsupported column type DECIMAL"), "{e}");
    let out = psycopg(
        port,
        r#"
cur = conn.cursor()
for q in ["select * frm cpu", "select nope from cpu", "select * from nope where x = %s",
          "CREATE TABLE t (x INT) PARTITION BY DAY"]:
    try:
        cur.execute(q, (1,) if "%s" in q else None)
        print("no error for", q)
    except psycopg.Error as e:
        print(type(e).__name__, str(e).splitlines()[0])
    cur.execute("select count(*) from cpu where usage > %s", (1.0,))
    print(cur.fetchone()[0])
"#,
        &[],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    for pair in lines.chunks(2) {
        assert!(!pair[0].starts_with("no error"), "{out}");
        assert_eq!(pair[1], "4", "the connection works after an error:\n{out}");
    }
    assert!(lines[0].contains("Expected"), "{out}");
    assert!(lines[2].contains("nope"), "{out}");
    assert!(lines[4].contains("not found"), "{out}");
    assert!(lines[6].contains("needs a designated timestamp"), "{out}");

    // limit and count: `n` = the first n rows, `lo,hi` = rows lo+1..=hi;
    // count is the rows sent, or every row of the result with count=true.
    let q = "select host from cpu order by timestamp";
    let hosts = |j: &Value| -> Vec<String> {
        j["dataset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect()
    };
    for (params, want, count) in [
        (vec![("limit", "2")], vec!["h0", "h1"], 2),
        (vec![("limit", "1,3")], vec!["h1", "h2"], 2),
        (vec![("limit", "2"), ("count", "true")], vec!["h0", "h1"], 5),
        (
            vec![("limit", "1,3"), ("count", "true")],
            vec!["h1", "h2"],
            5,
        ),
        (vec![("limit", "0")], vec![], 0),
        (vec![("limit", "4,10")], vec!["h4"], 1),
        (vec![("limit", "10,20"), ("count", "true")], vec![], 5),
        (
            vec![("count", "true")],
            vec!["h0", "h1", "h2", "h3", "h4"],
            5,
        ),
    ] {
        let r = exec_with(s.http, q, &params);
        assert_eq!(r.status, 200, "{params:?}");
        let j = r.json();
        assert_eq!(hosts(&j), want, "{params:?}: {j}");
        assert_eq!(j["count"], count, "{params:?}: {j}");
    }
    assert_eq!(
        exp(s.http, q, &[("limit", "1,3")]),
        "\"host\"\nh1\nh2\n",
        "/exp takes limit too"
    );

    // Hostile statements: an expression nested past any sane depth, a flat
    // chain of 20,000 terms (planning recurses over it), and a placeholder
    // number that would ask for gigabytes. Each is an answer or a clear
    // error; none takes the node down.
    let nested = format!("select {}1{}", "(".repeat(5000), ")".repeat(5000));
    let (msg, _) = exec_error(s.http, &nested);
    assert!(msg.contains("recursion"), "{msg}");
    let chain = format!("select 1{}", "+1".repeat(300));
    assert_eq!(exec(s.http, &chain)["dataset"][0][0], 301);
    // (10,000 terms: a URL much longer is refused by HTTP itself, 414.)
    let chain = format!("select 1{}", "+1".repeat(10_000));
    let (msg, _) = exec_error(s.http, &chain);
    assert!(msg.contains("more than the limit of 2000"), "{msg}");
    let msg = psycopg(
        pg_port(&s),
        "for q in ['select $4000000000', 'select ' + '1' * (1 << 20)]:\n\
         \x20   try:\n\
         \x20       conn.execute(q, prepare=True)\n\
         \x20       print('accepted')\n\
         \x20   except psycopg.Error as e:\n\
         \x20       print('error:', e)\n",
        &[],
    );
    assert!(msg.contains("past the limit of 65535"), "{msg}");
    assert!(msg.contains("more than the limit"), "{msg}");

    // Still serving, over every door.
    assert_eq!(http(s.http, "GET", "/ping", &[], b"").status, 204);
    write(
        s.http,
        &format!("cpu,host=h5 usage=9.5 {}\n", (JAN_1_US + 10_000_000) * 1000),
    );
    eventually(Duration::from_secs(10), || {
        (exec_i64(s.http, "select count(*) from cpu") == 6).then_some(())
    });
    assert_eq!(
        psql_ok(port, "select host, usage from cpu where usage > 9"),
        "h5|9.5\n"
    );
}

/// Names are case-insensitive, as in QuestDB, and keep the case they were
/// created with: a table and column made by ILP as `Weather`/`Temperature`
/// are found by any spelling in /exec and psql, and ILP writes to `weather`
/// with a field `temperature` land in that same table and column.
#[test]
fn names_are_case_insensitive_everywhere_and_keep_their_case() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let port = pg_port(&s);
    let ts = |i: i64| (JAN_1_US + i * 1_000_000) * 1000;
    write(
        s.http,
        &format!("Weather,City=Oslo Temperature=1.5 {}\n", ts(0)),
    );
    // Other spellings of the same table and columns, in one request and
    // in the next.
    write(
        s.http,
        &format!(
            "weather,city=Oslo temperature=2.5 {}\nWEATHER,CITY=Rome TEMPERATURE=3.5 {}\n",
            ts(1),
            ts(2)
        ),
    );
    eventually(Duration::from_secs(10), || {
        let r = exec_with(s.http, "select count(*) from Weather", &[]);
        (r.status == 200 && r.json()["dataset"][0][0] == 3).then_some(())
    });
    // One table, three columns, as first spelled.
    let tables: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.eq_ignore_ascii_case("weather"))
        .collect();
    assert_eq!(tables, ["Weather"]);
    let j = exec(s.http, "select * from weather");
    let names: Vec<&str> = j["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["City", "Temperature", "timestamp"]);
    for q in [
        "select Temperature from Weather order by timestamp",
        "select temperature from weather order by timestamp",
        "SELECT TEMPERATURE FROM WEATHER ORDER BY TIMESTAMP",
        r#"select "Temperature" from "Weather" order by timestamp"#,
    ] {
        let j = exec(s.http, q);
        assert_eq!(j["columns"][0]["name"], "Temperature", "{q}: {j}");
        assert_eq!(j["dataset"], json!([[1.5], [2.5], [3.5]]), "{q}: {j}");
    }
    let j = exec(
        s.http,
        "select city, max(temperature) m from weather where city = 'Oslo' group by city",
    );
    assert_eq!(j["dataset"], json!([["Oslo", 2.5]]), "{j}");
    // psql too.
    let out = psql_ok(port, "select TEMPERATURE from weather order by timestamp");
    assert_eq!(out, "1.5\n2.5\n3.5\n");
    // A table differing only in case is the same table for CREATE TABLE.
    let (e, _) = exec_error(s.http, "create table WEATHER (ts timestamp) timestamp(ts)");
    assert!(e.contains("Weather") && e.contains("exists"), "{e}");
    // A column that is not there is still an error, pointed at.
    let (e, at) = exec_error(s.http, "select humidity from Weather");
    assert!(e.contains("humidity"), "{e}");
    assert_eq!(at, 7, "{e}");
}
