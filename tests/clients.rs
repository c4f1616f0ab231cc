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

fn python() -> String {
    std::env::var("BASALT_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn send_py(conf: &str, table: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/questdb_py.py");
    let o = std::process::Command::new(python())
        .args([script, conf, table, &ROWS.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
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
