//! The official QuestDB clients as real peers of `basalt serve`: the Rust
//! crate `questdb-rs` and the PyPI package `questdb` each send 1M rows of
//! the reference `cpu` table over ILP/HTTP and ILP/TCP, and the rows read
//! back through the storage read API equal what was sent.
//!
//! The Python client must be importable by `$BASALT_TEST_PYTHON` (default
//! `python3`); `./scripts/test.sh` installs it in a virtualenv.

mod common;

use std::time::Duration;

use basalt::gen::{CpuGenerator, BASE_TS_US, HOSTS, REGIONS};
use basalt::table::TableReader;
use common::{eventually, row_count, ServerProcess};
use questdb::ingress::{Sender, TimestampNanos};

const ROWS: u64 = 1_000_000;

/// Waits for all rows, then compares every value with the generator's.
fn verify(s: &ServerProcess, table: &str) {
    eventually(Duration::from_secs(600), || {
        (row_count(&s.data_dir, table) >= ROWS).then_some(())
    });
    let r = TableReader::open(&s.data_dir, table)
        .unwrap()
        .scan(&[], None)
        .unwrap();
    if let Err(e) = CpuGenerator::default().check_scan(&r, ROWS) {
        panic!("table {table}: {e}");
    }
}

fn send_rs(conf: &str, table: &str) {
    let mut sender = Sender::from_conf(conf).expect("questdb-rs sender");
    let mut buf = sender.new_buffer();
    let hosts: Vec<String> = (0..HOSTS).map(|h| format!("host_{h:02}")).collect();
    for i in 0..ROWS {
        let h = (i % HOSTS) as usize;
        let f = (i % 1000) as f64;
        buf.table(table)
            .and_then(|b| b.symbol("host", hosts[h].as_str()))
            .and_then(|b| b.symbol("region", REGIONS[h % REGIONS.len()]))
            .and_then(|b| b.column_f64("usage_user", f / 10.0))
            .and_then(|b| b.column_f64("usage_system", f / 20.0))
            .and_then(|b| b.column_f64("usage_idle", 100.0 - f / 10.0))
            .and_then(|b| b.column_f64("temp", 40.0 + f / 50.0))
            .and_then(|b| b.column_i64("requests", i as i64))
            .unwrap();
        buf.at(TimestampNanos::new((BASE_TS_US + i as i64) * 1000))
            .unwrap();
        if buf.row_count() >= 50_000 {
            sender.flush(&mut buf).expect("flush");
        }
    }
    if buf.row_count() > 0 {
        sender.flush(&mut buf).expect("flush");
    }
    if conf.starts_with("ws::") {
        // QWP's flush only queues: wait until every message is acknowledged
        // (by basalt, once durable).
        sender
            .wait(questdb::ingress::AckLevel::Ok, Duration::from_secs(300))
            .expect("every QWP message acknowledged");
    }
}

#[test]
fn questdb_rs_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    // protocol_version is left to auto: the client asks GET /settings.
    send_rs(&format!("http::addr={};", s.http), "cpu_rs_http");
    // Over HTTP every flush returned after 204: all rows are durable.
    verify(&s, "cpu_rs_http");
}

#[test]
fn questdb_rs_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    send_rs(&format!("tcp::addr={};", s.ilp), "cpu_rs_tcp");
    verify(&s, "cpu_rs_tcp");
}

/// ILP protocol version 2 over TCP (no /settings there: asked for by
/// name): doubles travel in binary, any byte included.
#[test]
fn questdb_rs_over_tcp_protocol_2() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    send_rs(
        &format!("tcp::addr={};protocol_version=2;", s.ilp),
        "cpu_rs_tcp2",
    );
    verify(&s, "cpu_rs_tcp2");
}

fn send_py(conf: &str, table: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/questdb_py.py");
    let o = std::process::Command::new(common::python())
        .args([script, conf, table, &ROWS.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", common::python()));
    assert!(
        o.status.success(),
        "the Python QuestDB client failed ({}). Install it with ./scripts/test.sh, or \
         `pip install 'questdb>=6'` and set BASALT_TEST_PYTHON.\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("sent {ROWS}")
    );
}

#[test]
fn questdb_python_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    send_py(&format!("http::addr={};", s.http), "cpu_py_http");
    verify(&s, "cpu_py_http");
}

#[test]
fn questdb_python_over_tcp_protocol_2() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    send_py(
        &format!("tcp::addr={};protocol_version=2;", s.ilp),
        "cpu_py_tcp2",
    );
    verify(&s, "cpu_py_tcp2");
}

#[test]
fn questdb_python_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    send_py(&format!("tcp::addr={};", s.ilp), "cpu_py_tcp");
    verify(&s, "cpu_py_tcp");
}

/// QWP over WebSocket (`ws::`, questdb-rs 7's default transport): 1M rows
/// of the reference table, acknowledged once durable; then the same rows
/// read back over QWP egress equal /exec's, value for value.
#[test]
fn questdb_rs_over_ws() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    send_rs(&format!("ws::addr={};", s.http), "cpu_rs_ws");
    verify(&s, "cpu_rs_ws");

    let sql = "select host, usage_user, requests, timestamp from cpu_rs_ws \
               where requests < 50000 order by requests";
    // The client asks for batches of at most 1000 rows.
    let mut reader = questdb::egress::reader::Reader::from_conf(format!(
        "ws::addr={};max_batch_rows=1000;",
        s.http
    ))
    .unwrap();
    let mut got: Vec<(String, f64, i64, String)> = Vec::new();
    let mut cursor = reader.execute(sql).expect("query over QWP");
    while let Some(b) = cursor.next_batch().expect("a result batch") {
        use questdb::egress::column::ColumnView as C;
        let (C::Symbol(host), C::Double(user), C::Long(req), C::Timestamp(ts)) = (
            b.column(0).unwrap(),
            b.column(1).unwrap(),
            b.column(2).unwrap(),
            b.column(3).unwrap(),
        ) else {
            panic!("unexpected column types")
        };
        assert!(b.row_count() <= 1000, "a batch of {} rows", b.row_count());
        for r in 0..b.row_count() {
            let t = chrono::DateTime::from_timestamp_micros(ts.value(r)).unwrap();
            got.push((
                host.resolve(r).unwrap().to_string(),
                user.value(r),
                req.value(r),
                t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            ));
        }
    }
    let exec = common::exec_json(s.http, sql);
    let want = exec["dataset"].as_array().unwrap();
    assert_eq!(got.len(), 50_000);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.0, w[0].as_str().unwrap());
        assert_eq!(g.1, w[1].as_f64().unwrap());
        assert_eq!(g.2, w[2].as_i64().unwrap());
        assert_eq!(g.3, w[3].as_str().unwrap());
    }
}

fn qwp_py(args: &[&str]) {
    common::client_script(
        "qwp_py.py",
        args,
        "The client (questdb>=6, pandas, pyarrow)",
    );
}

/// The Python client 6.x over `ws::`: rows of every type basalt has, nulls,
/// a column new mid-stream, another spelling of the table, a query round
/// trip equal to /exec, binds, errors, DDL; and DataFrames both ways.
#[test]
fn questdb_python_over_ws() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let addr = s.http.to_string();
    qwp_py(&["types", &addr]);
    qwp_py(&["dataframe", &addr]);
}

/// A replica refuses QWP writes as QuestDB does (421 + `X-QuestDB-Role`):
/// a client given only the replica fails, one given both writes to the
/// primary; readers reach the role they ask for through SERVER_INFO.
#[test]
fn questdb_python_ws_finds_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let (pdir, rdir) = (dir.path().join("primary"), dir.path().join("replica"));
    let p = ServerProcess::start(&pdir, &[]);
    let store = format!("fs::root={};", pdir.join("_replication").display());
    let r = ServerProcess::start_replica(&rdir, &store);
    qwp_py(&["replica", &r.http.to_string(), &p.http.to_string()]);
}
