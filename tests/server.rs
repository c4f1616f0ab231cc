//! `basalt serve` as clients see it, over real loopback sockets against a
//! real child process: ILP over HTTP and TCP on every I/O engine, QuestDB's
//! error answers, limits, the config file, SIGTERM and kill -9.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use basalt::batch::Value;
use basalt::table::TableReader;
use common::{eventually, http, row_count, ServerProcess};

fn scan(data: &std::path::Path, table: &str) -> basalt::table::ScanResult {
    TableReader::open(data, table)
        .unwrap()
        .scan(&[], None)
        .unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn post(s: &ServerProcess, target: &str, body: &[u8]) -> common::HttpResponse {
    http(s.http, "POST", target, &[], body)
}

/// HTTP and TCP ingest on one engine: rows land with their values.
fn ingest_on(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &["--io-engine", engine, "--shards", "2"]);
    assert!(
        s.ready_line.contains(&format!("engine={engine}")),
        "{}",
        s.ready_line
    );
    let r = post(
        &s,
        "/write",
        b"m,host=a v=1.5,n=1i,ok=t,note=\"x\" 1700000000000000000\nm,host=b v=2.5,n=2i 1700000000001000000\n",
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    // Acknowledged means durable, not yet applied: wait for visibility.
    eventually(Duration::from_secs(10), || {
        (row_count(&s.data_dir, "m") == 2).then_some(())
    });
    let mut tcp = TcpStream::connect(s.ilp).unwrap();
    tcp.write_all(
        b"m,host=c v=3.5,n=3i 1700000000002000000\nm,host=d v=4.5,n=4i 1700000000003000000",
    )
    .unwrap();
    drop(tcp); // the last line has no newline: the close ends it
    eventually(Duration::from_secs(10), || {
        (row_count(&s.data_dir, "m") == 4).then_some(())
    });
    let r = scan(&s.data_dir, "m");
    let col = |n: &str| r.names.iter().position(|c| c == n).unwrap();
    let hosts: Vec<_> = (0..4).map(|i| r.value(col("host"), i)).collect();
    assert_eq!(
        hosts,
        [
            Value::Symbol("a"),
            Value::Symbol("b"),
            Value::Symbol("c"),
            Value::Symbol("d")
        ]
    );
    assert_eq!(r.value(col("n"), 3), Value::Long(4));
    assert_eq!(r.value(col("v"), 2), Value::Double(3.5));
    assert_eq!(r.value(col("ok"), 0), Value::Boolean(true));
    assert_eq!(r.value(col("ok"), 1), Value::Null);
    assert_eq!(
        r.value(col("timestamp"), 1),
        Value::Timestamp(1_700_000_000_001_000)
    );
    assert!(s.terminate().success());
}

#[test]
fn ingest_over_http_and_tcp_on_glommio() {
    ingest_on("glommio");
}

#[test]
fn ingest_over_http_and_tcp_on_tokio_uring() {
    ingest_on("tokio-uring");
}

#[test]
fn ingest_over_http_and_tcp_on_portable() {
    ingest_on("portable");
}

#[test]
fn http_answers_like_questdb() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(
        dir.path(),
        &["--http-request-bytes-max", "4096", "--shards", "1"],
    );
    let r = http(s.http, "GET", "/ping", &[], b"");
    assert_eq!(r.status, 204);
    assert!(r.header("x-influxdb-version").is_some());

    // A bad line: 400 naming the line, and nothing of the request committed.
    let r = post(
        &s,
        "/write",
        b"t,k=a v=1i 1000\nt,k=b v=2i 2000\nt,k=c v=oops 3000\n",
    );
    assert_eq!(r.status, 400);
    let j = r.json();
    assert_eq!(j["code"], "invalid");
    assert_eq!(j["line"], 3);
    assert!(j["message"].as_str().unwrap().contains("line 3"), "{j}");
    assert!(j["errorId"].as_str().is_some_and(|e| !e.is_empty()), "{j}");
    assert_eq!(row_count(&s.data_dir, "t"), 0);

    // A type conflict with an existing column is that line's error.
    assert_eq!(post(&s, "/write", b"t,k=a v=1i 1000\n").status, 204);
    let r = post(&s, "/write", b"t,k=a v=2i 2000\nt,k=a v=\"text\" 3000\n");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["line"], 2);
    assert!(
        r.json()["message"].as_str().unwrap().contains("LONG"),
        "{}",
        r.json()
    );

    // Names that could leave the data directory are refused.
    let r = post(&s, "/write", b"../evil v=1i 1000\n");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(!dir.path().join("evil").exists());

    // precision=ms, gzip.
    let body = gzip(b"p v=1i 1700000000123\n");
    let r = http(
        s.http,
        "POST",
        "/api/v2/write?precision=ms",
        &[("Content-Encoding", "gzip")],
        &body,
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    eventually(Duration::from_secs(10), || {
        (row_count(&s.data_dir, "p") == 1).then_some(())
    });
    assert_eq!(
        scan(&s.data_dir, "p").column("timestamp").unwrap().value(0),
        Value::Timestamp(1_700_000_000_123_000)
    );
    let r = post(&s, "/write?precision=minutes", b"p v=1i 1\n");
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap().contains("precision"));

    // Bad gzip: 415.
    let r = http(
        s.http,
        "POST",
        "/write",
        &[("Content-Encoding", "gzip")],
        b"not gzip at all",
    );
    assert_eq!(r.status, 415);
    assert!(r.json()["message"].as_str().unwrap().contains("gzip"));
    let r = http(
        s.http,
        "POST",
        "/write",
        &[("Content-Encoding", "br")],
        b"p v=1i 1\n",
    );
    assert_eq!(r.status, 415);

    // Over the limit: 413, by declared length and by gunzipped size.
    let big = vec![b'x'; 8192];
    let r = post(&s, "/write", &big);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "request_too_large");
    let bomb = gzip(&b"p v=1i 1700000000000000000\n".repeat(10_000));
    assert!(bomb.len() < 4096);
    let r = http(
        s.http,
        "POST",
        "/write",
        &[("Content-Encoding", "gzip")],
        &bomb,
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));

    // Unknown endpoint and wrong method.
    assert_eq!(http(s.http, "GET", "/nope", &[], b"").status, 404);
    assert_eq!(http(s.http, "GET", "/write", &[], b"").status, 405);

    // What the official clients ask before choosing a protocol version.
    let r = http(s.http, "GET", "/settings", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["config"]["line.proto.support.versions"],
        serde_json::json!([1, 2])
    );

    // Nothing accepted earlier was harmed.
    eventually(Duration::from_secs(10), || {
        (row_count(&s.data_dir, "t") == 1).then_some(())
    });
    assert_eq!(row_count(&s.data_dir, "p"), 1);
    assert!(s.terminate().success());
}

#[test]
fn tcp_bad_line_closes_the_connection_and_keeps_earlier_lines() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &["--shards", "1"]);
    let mut tcp = TcpStream::connect(s.ilp).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(b"q v=1i 1000\nq v=2i 2000\nq v= 3000\nq v=4i 4000\n")
        .unwrap();
    // The server closes its side: read sees EOF (or a reset).
    let mut buf = [0u8; 16];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "server kept the connection open after a bad line");
    eventually(Duration::from_secs(10), || {
        (row_count(&s.data_dir, "q") == 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        row_count(&s.data_dir, "q"),
        2,
        "lines after the bad one must not land"
    );

    // An over-long line closes the connection too; the server stays up.
    let mut tcp = TcpStream::connect(s.ilp).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let long = vec![b'a'; 2 * 1024 * 1024];
    let _ = tcp.write_all(&long);
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(http(s.http, "GET", "/ping", &[], b"").status, 204);
    assert!(s.terminate().success());
}

#[test]
fn tcp_strings_with_newlines_split_across_reads_are_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &["--shards", "1"]);
    let mut tcp = TcpStream::connect(s.ilp).unwrap();
    tcp.set_nodelay(true).unwrap();
    // The first read ends right after a newline inside a quoted string.
    tcp.write_all(b"w v=1i 1000\nw s=\"line one\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    tcp.write_all(b"line two\" 2000\nw v=3i 3000\n").unwrap();
    drop(tcp);
    eventually(Duration::from_secs(10), || {
        (row_count(&s.data_dir, "w") == 3).then_some(())
    });
    let r = scan(&s.data_dir, "w");
    assert_eq!(
        r.column("s").unwrap().value(1),
        Value::Varchar("line one\nline two")
    );
}

#[test]
fn a_request_spanning_tables_commits_nothing_when_one_line_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &["--shards", "1"]);
    // Table a is fine; table b's timestamp (in seconds) is past year 9999.
    let r = post(
        &s,
        "/write?precision=s",
        b"a v=1i 1700000000\nb v=2i 300000000000\n",
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["line"], 2);
    assert!(
        r.json()["message"].as_str().unwrap().contains("9999"),
        "{}",
        r.json()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        row_count(&s.data_dir, "a"),
        0,
        "table a must not be committed"
    );
    assert_eq!(row_count(&s.data_dir, "b"), 0);
}

#[test]
fn tcp_rows_are_committed_on_the_time_trigger_while_the_connection_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(
        dir.path(),
        &[
            "--shards",
            "1",
            "--ilp-commit-interval-ms",
            "50",
            "--ilp-commit-rows",
            "1000000",
        ],
    );
    let mut tcp = TcpStream::connect(s.ilp).unwrap();
    tcp.write_all(b"r v=1i 1000\nr v=2i 2000\n").unwrap();
    eventually(Duration::from_secs(10), || {
        (row_count(&s.data_dir, "r") == 2).then_some(())
    });
    // And on the size trigger, with a small row limit.
    drop(tcp);
    drop(s);
    let s = ServerProcess::start(
        dir.path(),
        &[
            "--shards",
            "1",
            "--ilp-commit-interval-ms",
            "600000",
            "--ilp-commit-rows",
            "3",
        ],
    );
    let mut tcp = TcpStream::connect(s.ilp).unwrap();
    tcp.write_all(b"r v=3i 3000\nr v=4i 4000\nr v=5i 5000\n")
        .unwrap();
    eventually(Duration::from_secs(10), || {
        (row_count(&s.data_dir, "r") == 5).then_some(())
    });
    drop(tcp);
}

#[test]
fn sigterm_shuts_down_cleanly_and_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);
    let mut body = Vec::new();
    let gen = basalt::gen::CpuGenerator::default();
    for i in 0..5000 {
        gen.ilp_line(&mut body, "cpu", i);
    }
    assert_eq!(post(&s, "/write", &body).status, 204);
    // An open TCP connection holding uncommitted rows is flushed at shutdown.
    let mut tcp = TcpStream::connect(s.ilp).unwrap();
    let mut more = Vec::new();
    for i in 5000..6000 {
        gen.ilp_line(&mut more, "cpu", i);
    }
    tcp.write_all(&more).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let status = s.terminate();
    assert!(status.success(), "{status}");
    drop(tcp);
    let r = scan(&dir.path().join(""), "cpu");
    gen.check_scan(&r, 6000).unwrap();
    // The shutdown checkpointed: nothing is left to replay.
    let s = ServerProcess::start(dir.path(), &[]);
    assert_eq!(row_count(&s.data_dir, "cpu"), 6000);
}

#[test]
fn config_file_env_and_flags_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("basalt.toml");
    let data = dir.path().join("from-file");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nshards = 1\nio_engine = \"portable\"\nhttp = \"127.0.0.1:0\"\nilp = \"127.0.0.1:0\"\npg = \"127.0.0.1:0\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"));
        cmd.arg("serve").arg("--config").arg(&cfg).args(args);
        cmd.env("BASALT_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        ServerProcess::spawn(cmd, &data)
    };
    let s = run(&[], &[]);
    assert!(s.ready_line.contains("shards=1"), "{}", s.ready_line);
    assert!(s.ready_line.contains("engine=portable"), "{}", s.ready_line);
    assert!(s.ready_line.contains("from-file"), "{}", s.ready_line);
    drop(s);
    let s = run(&[], &[("BASALT_SHARDS", "3")]);
    assert!(
        s.ready_line.contains("shards=3"),
        "env over file: {}",
        s.ready_line
    );
    drop(s);
    let s = run(&["--shards", "2"], &[("BASALT_SHARDS", "3")]);
    assert!(
        s.ready_line.contains("shards=2"),
        "flag over env: {}",
        s.ready_line
    );
    drop(s);

    // Unknown keys and bad values are errors that name the file and the key.
    std::fs::write(&cfg, "shards = 1\nshard_count = 2\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("shard_count") && err.contains("basalt.toml"),
        "{err}"
    );
    std::fs::write(&cfg, "io_engine = \"warp\"\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("basalt.toml") && err.contains("warp"), "{err}");
}

#[test]
fn a_second_server_on_the_same_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(&dir.path().join("a"), &["--shards", "1"]);
    let port = s.http.to_string();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args([
            "serve",
            "--shards",
            "1",
            "--ilp",
            "127.0.0.1:0",
            "--http",
            &port,
            "--data-dir",
        ])
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot listen for ILP/HTTP") && err.contains(&port),
        "{err}"
    );
}

/// kill -9 while clients post batches over HTTP: after a restart every
/// batch that got 204 is there exactly once.
#[test]
fn kill9_during_http_ingestion_loses_no_acknowledged_row() {
    let dir = tempfile::tempdir().unwrap();
    let gen = basalt::gen::CpuGenerator::default();
    const BATCH: u64 = 200;
    let mut acked_total = 0usize;
    for cycle in 0..3u64 {
        let s = ServerProcess::start(dir.path(), &["--checkpoint-interval-ms", "50"]);
        let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4u64)
            .map(|c| {
                let (acked, stop, addr) = (acked.clone(), stop.clone(), s.http);
                let gen = basalt::gen::CpuGenerator::default();
                std::thread::spawn(move || {
                    let mut b = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Batch ids never repeat across clients and cycles.
                        let id = (cycle * 4 + c) * 1_000_000 + b;
                        b += 1;
                        let mut body = Vec::new();
                        for j in 0..BATCH {
                            gen.ilp_line(&mut body, "cpu", id * BATCH + j);
                        }
                        if !common::post_acked(addr, &body) {
                            return;
                        }
                        acked.lock().unwrap().push(id);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700 + cycle * 300));
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "cycle {cycle}: no batch was acknowledged"
        );
        acked_total += acked.len();
        // Restart (recovery replays the WAL), then check.
        let s = ServerProcess::start(dir.path(), &[]);
        let r = scan(dir.path(), "cpu");
        let requests = r.column("requests").unwrap();
        let mut seen = std::collections::HashMap::<u64, u64>::new();
        for row in 0..r.row_count() {
            let Value::Long(v) = requests.value(row) else {
                panic!("null requests")
            };
            *seen.entry(v as u64 / BATCH).or_default() += 1;
        }
        for (id, n) in &seen {
            assert_eq!(
                *n, BATCH,
                "batch {id} is partly there ({n} rows): a txn was split"
            );
        }
        for id in &acked {
            assert!(
                seen.contains_key(id),
                "cycle {cycle}: acknowledged batch {id} is lost"
            );
        }
        let _ = gen.schema();
        drop(s);
    }
    assert!(acked_total > 0);
}

#[test]
fn bad_server_options_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expect) in [
        (&["--partition-by", "NONE"][..], "designated timestamp"),
        (&["--http", "not-an-address"][..], "--http"),
        (&["--io-engine", "warp"][..], "unknown I/O engine"),
        (&["--ilp-line-bytes-max", "10"][..], "at least 1024"),
        (
            &["--object-store", "s3::bucket=x;nope=1;"][..],
            "has no key \"nope\"",
        ),
        (&["--role", "replica"][..], "a replica needs --object-store"),
        (&["--segment-bytes-max", "10"][..], "at least 1024"),
        (
            &["--pg", "nowhere"][..],
            "--pg \"nowhere\" is not a usable address",
        ),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_basalt"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

/// A QWP message for table `t`: one row per value of a LONG column `x`,
/// plus `extra` columns, designated timestamps 1 µs apart.
fn qwp_frame(xs: &[i64], extra: &[(&str, u8, &[u8])]) -> Vec<u8> {
    use basalt::qwp::{finish_message, put_str, put_varint, start_message};
    let mut out = Vec::new();
    start_message(&mut out, basalt::qwp::FLAG_DELTA_SYMBOL_DICT, 1);
    put_varint(&mut out, 0);
    put_varint(&mut out, 0);
    put_str(&mut out, "t");
    put_varint(&mut out, xs.len() as u64);
    put_varint(&mut out, 2 + extra.len() as u64);
    put_str(&mut out, "x");
    out.push(basalt::qwp::types::LONG);
    put_str(&mut out, "");
    out.push(basalt::qwp::types::TIMESTAMP);
    for (name, ty, _) in extra {
        put_str(&mut out, name);
        out.push(*ty);
    }
    out.push(0);
    for x in xs {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.push(0);
    for i in 0..xs.len() as i64 {
        out.extend_from_slice(&(1_704_067_200_000_000 + i).to_le_bytes());
    }
    for (_, _, data) in extra {
        out.extend_from_slice(data);
    }
    finish_message(&mut out);
    out
}

type WsClient = tokio_tungstenite::tungstenite::WebSocket<TcpStream>;

fn qwp_connect(addr: std::net::SocketAddr) -> WsClient {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let (ws, resp) =
        tokio_tungstenite::tungstenite::client::client(format!("ws://{addr}/write/v4"), stream)
            .expect("WebSocket upgrade");
    assert_eq!(resp.headers()["x-qwp-version"], "1");
    ws
}

/// The next binary answer: (status, sequence number, message).
fn qwp_answer(ws: &mut WsClient) -> (u8, u64, String) {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.read().expect("an answer") {
            Message::Binary(b) => {
                let seq = u64::from_le_bytes(b[1..9].try_into().unwrap());
                let msg = if b[0] == 0 {
                    String::new()
                } else {
                    String::from_utf8_lossy(&b[11..]).into_owned()
                };
                return (b[0], seq, msg);
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a binary answer, got {other:?}"),
        }
    }
}

/// The code of the server's close frame.
fn qwp_close_code(
    ws: &mut WsClient,
) -> tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return f.code,
            Ok(_) => {}
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

/// Hostile QWP input gets the error the clients act on, naming what is
/// wrong, and harms nothing accepted: a message that is not QWP, a type
/// basalt has no column for, frames sent after a refusal (dropped, as the
/// client will send them again), a message over the size limit, text.
#[test]
fn qwp_bad_messages_are_refused_and_nothing_else_is_written() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start(dir.path(), &[]);

    // Acknowledged once durable, in order.
    let mut ws = qwp_connect(s.http);
    ws.send(Message::Binary(qwp_frame(&[1, 2], &[]).into()))
        .unwrap();
    assert_eq!(qwp_answer(&mut ws), (0, 0, String::new()));
    // A UUID column: SCHEMA_MISMATCH (0x03) for message 1, naming it.
    let uuid: Vec<u8> = std::iter::once(0u8).chain([7u8; 16]).collect();
    ws.send(Message::Binary(
        qwp_frame(&[3], &[("u", basalt::qwp::types::UUID, &uuid)]).into(),
    ))
    .unwrap();
    let (st, seq, msg) = qwp_answer(&mut ws);
    assert_eq!((st, seq), (0x03, 1), "{msg}");
    assert!(msg.contains("UUID") && msg.contains("\"u\""), "{msg}");
    // Later messages on the connection are dropped unanswered; the next
    // thing read is the close of our own close.
    ws.send(Message::Binary(qwp_frame(&[4], &[]).into()))
        .unwrap();
    ws.close(None).unwrap();
    while ws.read().is_ok() {}

    // Not QWP at all: PARSE_ERROR (0x05) saying so.
    let mut ws = qwp_connect(s.http);
    ws.send(Message::Binary(b"hello, server".to_vec().into()))
        .unwrap();
    let (st, seq, msg) = qwp_answer(&mut ws);
    assert_eq!((st, seq), (0x05, 0), "{msg}");
    assert!(msg.contains("magic"), "{msg}");

    // Over the size limit: closed with 1009.
    let mut ws = qwp_connect(s.http);
    let big = vec![0u8; 17 << 20];
    let _ = ws.send(Message::Binary(big.into()));
    assert_eq!(qwp_close_code(&mut ws), CloseCode::Size);

    // Text: closed with 1003.
    let mut ws = qwp_connect(s.http);
    ws.send(Message::Text("select 1".into())).unwrap();
    assert_eq!(qwp_close_code(&mut ws), CloseCode::Unsupported);

    // Only the first message's rows landed.
    let r = common::exec_json(s.http, "select x from t order by x");
    assert_eq!(r["dataset"], serde_json::json!([[1], [2]]), "{r}");
    // A plain GET of the endpoint says what it is.
    let r = http(s.http, "GET", "/write/v4", &[], b"");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("WebSocket"));
}
