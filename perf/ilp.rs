//! Whole-system ILP ingestion against a real `basalt serve` child process
//! (release build), client and server on this machine, with hdrhistogram
//! percentiles and fio's 4k fdatasync measured in the same run.
//!
//! cargo bench --bench ilp                  # everything
//! cargo bench --bench ilp -- tcp           # TCP replay over N connections
//! cargo bench --bench ilp -- http          # HTTP replay, 10k- and 1M-row requests
//! cargo bench --bench ilp -- latency       # single-row HTTP durable commit latency
//! cargo bench --bench ilp -- qwp           # QWP over WebSocket (questdb-rs 7), N and 1 connections
//! cargo bench --bench ilp -- ilp2          # ILP protocol version 2 (binary doubles) over HTTP, questdb-rs 7
//! cargo bench --bench ilp -- qwp-py        # a pandas DataFrame over QWP (Python client 6, perf/qwp_df.py)
//! cargo bench --bench ilp -- qwp-read      # QWP egress: the whole table through questdb-rs 7's Reader
//! cargo bench --bench ilp -- tls           # TLS against plaintext: TCP and HTTP replays, set-up time
//! PERF_ROWS=2000000 ...                    # rows per replay (default 2M)
//! PERF_CONNECTIONS=4 ...                   # TCP/HTTP connections (default 4)
//! PERF_ENGINE=glommio ...                  # server I/O engine (default auto)
//! PERF_DIR=/mnt/nvme/x ...                 # where the server's data goes
//! PERF_APPLY_MS=5 ...                      # server --apply-interval-ms (default 5)
//! PERF_BASALT=/path/to/basalt ...          # run another build's server (compare commits)
//! PERF_PYTHON=/path/to/python ...          # Python with questdb 6, pandas, pyarrow (default:
//!                                          # target/test-venv, made by ./scripts/test.sh)
//!
//! The ILP text (rows of the reference `cpu` table, src/gen.rs) is generated
//! before the clock starts. Connection k sends to its own table `cpu_<k>`,
//! so connections do not interleave timestamps in one table (which would
//! make every commit an out-of-order merge). A replay ends when every row is
//! visible to readers (applied), not merely acknowledged. Server CPU is the
//! child's user+sys time from /proc over the replay.

mod fio;
mod node;
mod tls;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt::gen::{CpuGenerator, BASE_TS_US};
use hdrhistogram::Histogram;
use node::{cpu_seconds, ilp_text, wait_visible, KeepAlive, Server};

/// A fresh server in `dir` with the engine and apply interval of the
/// environment (PERF_ENGINE, PERF_APPLY_MS).
fn start_server(dir: &Path, extra: &[&str]) -> Server {
    let _ = std::fs::remove_dir_all(dir);
    let engine = std::env::var("PERF_ENGINE").unwrap_or_else(|_| "auto".into());
    let apply_ms = std::env::var("PERF_APPLY_MS").unwrap_or_else(|_| "5".into());
    let mut args = vec!["--io-engine", &engine, "--apply-interval-ms", &apply_ms];
    args.extend_from_slice(extra);
    node::start(dir, &args)
}

struct Run {
    what: String,
    rows: u64,
    bytes: u64,
    sent: Duration,
    visible: Duration,
    cpu_s: f64,
    /// This process's CPU over the run: the load generator's.
    client_cpu_s: f64,
}

impl Run {
    fn print(&self) {
        let s = self.visible.as_secs_f64();
        println!(
            "{:<34} {:>9} rows {:>7.1} MB  sent {:>7.3}s  visible {:>7.3}s  {:>10.0} rows/s {:>7.1} MB/s  server CPU {:>6.3}s = {:.3} µs/row  client CPU {:.3} µs/row",
            self.what,
            self.rows,
            self.bytes as f64 / 1e6,
            self.sent.as_secs_f64(),
            s,
            self.rows as f64 / s,
            self.bytes as f64 / 1e6 / s,
            self.cpu_s,
            self.cpu_s * 1e6 / self.rows as f64,
            self.client_cpu_s * 1e6 / self.rows as f64,
        );
    }
}

fn tables(conns: usize) -> Vec<String> {
    (0..conns).map(|k| format!("cpu_{k}")).collect()
}

/// The ILP text of a replay over `conns` connections, one table each:
/// table names, each connection's text, the rows and bytes in all.
struct Replay {
    names: Vec<String>,
    texts: Vec<Vec<u8>>,
    rows: u64,
    bytes: u64,
}

fn tcp_texts(rows: u64, conns: usize) -> Replay {
    let gen = CpuGenerator::default();
    let per = rows / conns as u64;
    let names = tables(conns);
    let texts: Vec<Vec<u8>> = (0..conns)
        .map(|k| ilp_text(&gen, &names[k], k as u64 * per, per))
        .collect();
    let bytes = texts.iter().map(|t| t.len() as u64).sum();
    Replay {
        names,
        texts,
        rows: per * conns as u64,
        bytes,
    }
}

/// Each connection's HTTP request bodies of `request_rows` rows (at least
/// one per connection), with the table names and rows in all.
fn http_bodies(
    rows: u64,
    conns: usize,
    request_rows: u64,
) -> (Vec<String>, Vec<Vec<Vec<u8>>>, u64) {
    let gen = CpuGenerator::default();
    let per = (rows / conns as u64).max(request_rows);
    let per = per - per % request_rows;
    let names = tables(conns);
    let bodies = (0..conns)
        .map(|k| {
            (0..per / request_rows)
                .map(|r| {
                    ilp_text(
                        &gen,
                        &names[k],
                        k as u64 * per + r * request_rows,
                        request_rows,
                    )
                })
                .collect()
        })
        .collect();
    (names, bodies, per * conns as u64)
}

fn tcp_replay(base: &Path, rows: u64, conns: usize) {
    let Replay {
        names,
        texts,
        rows,
        bytes,
    } = tcp_texts(rows, conns);
    let what = format!("TCP replay, {conns} connections");
    measure(&base.join("tcp"), what, &names, rows, bytes, |server| {
        node::tcp_send_all(server.ilp, &texts)
    });
}

/// Starts a server in `dir`, runs `clients` against it, waits until `rows`
/// are visible in `names`, and prints the run; returns what the clients
/// returned.
fn measure<T>(
    dir: &Path,
    what: String,
    names: &[String],
    rows: u64,
    bytes: u64,
    clients: impl FnOnce(&Server) -> T,
) -> T {
    measure_with(dir, &[], what, names, rows, bytes, clients).0
}

/// [`measure`] with more server flags; also returns the run.
fn measure_with<T>(
    dir: &Path,
    extra: &[&str],
    what: String,
    names: &[String],
    rows: u64,
    bytes: u64,
    clients: impl FnOnce(&Server) -> T,
) -> (T, Run) {
    let server = start_server(dir, extra);
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let me = std::process::id();
    let client0 = cpu_seconds(me);
    let t0 = Instant::now();
    let out = clients(&server);
    let sent = t0.elapsed();
    wait_visible(&server.dir, names, rows);
    let visible = t0.elapsed();
    let run = Run {
        what,
        rows,
        bytes,
        sent,
        visible,
        cpu_s: cpu_seconds(pid) - cpu0,
        client_cpu_s: cpu_seconds(me) - client0,
    };
    run.print();
    (out, run)
}

fn http_replay(base: &Path, rows: u64, conns: usize, request_rows: u64) {
    let (names, bodies, rows) = http_bodies(rows, conns, request_rows);
    let bytes: u64 = bodies.iter().flatten().map(|b| b.len() as u64).sum();
    let what = format!("HTTP {request_rows}-row requests, {conns} conns");
    let hists: Vec<Histogram<u64>> =
        measure(&base.join("http"), what, &names, rows, bytes, |server| {
            std::thread::scope(|s| {
                let handles: Vec<_> = bodies
                    .iter()
                    .map(|mine| {
                        let addr = server.http;
                        s.spawn(move || {
                            let mut h = Histogram::<u64>::new(3).expect("histogram");
                            let mut c = KeepAlive::connect(addr);
                            for b in mine {
                                let t = Instant::now();
                                assert_eq!(c.post(b), 204);
                                h.record(t.elapsed().as_micros() as u64).expect("record");
                            }
                            h
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("client"))
                    .collect()
            })
        });
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for x in &hists {
        h.add(x).expect("merge");
    }
    println!(
        "  request latency (204 = durable): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms over {} requests",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3,
        h.len()
    );
}

/// Rows in one QWP message (one `flush`).
const QWP_FLUSH_ROWS: u64 = 20_000;

/// QWP over WebSocket with questdb-rs 7 (`ws::`): each connection's rows
/// are encoded into the client's buffers before the clock starts, then
/// flushed and waited for (every message acknowledged, i.e. durable).
/// The official Rust client's two binary paths.
#[derive(Clone, Copy, PartialEq)]
enum Proto {
    /// QWP over WebSocket: pipelined messages, every one acknowledged
    /// once durable.
    Qwp,
    /// ILP protocol version 2 over HTTP (binary doubles): each request
    /// answered 204 once durable.
    IlpV2Http,
}

fn qwp_replay(base: &Path, rows: u64, conns: usize) {
    client_replay(base, rows, conns, Proto::Qwp)
}

/// questdb-rs 7 writing the reference table over `proto`, `conns`
/// connections, `QWP_FLUSH_ROWS` rows a message or request, all built
/// before the clock starts.
fn client_replay(base: &Path, rows: u64, conns: usize, proto: Proto) {
    use questdb::ingress::{AckLevel, Sender, TimestampNanos};
    let dir = base.join(if proto == Proto::Qwp { "qwp" } else { "ilp2" });
    let server = start_server(&dir, &[]);
    let names = tables(conns);
    let per = rows / conns as u64;
    let rows = per * conns as u64;
    let conf = match proto {
        Proto::Qwp => format!("ws::addr={};", server.http),
        Proto::IlpV2Http => format!(
            "http::addr={};protocol_version=2;auto_flush=off;request_timeout=600000;",
            server.http
        ),
    };
    let hosts: Vec<String> = (0..basalt::gen::HOSTS)
        .map(|h| format!("host_{h:02}"))
        .collect();
    let mut bytes = 0u64;
    let mut work = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let sender = Sender::from_conf(&conf).expect("QWP sender");
        let mut bufs = Vec::new();
        let mut buf = sender.new_buffer();
        for i in k as u64 * per..(k as u64 + 1) * per {
            let h = (i % basalt::gen::HOSTS) as usize;
            let f = (i % 1000) as f64;
            buf.table(name.as_str())
                .and_then(|b| b.symbol("host", hosts[h].as_str()))
                .and_then(|b| {
                    b.symbol(
                        "region",
                        basalt::gen::REGIONS[h % basalt::gen::REGIONS.len()],
                    )
                })
                .and_then(|b| b.column_f64("usage_user", f / 10.0))
                .and_then(|b| b.column_f64("usage_system", f / 20.0))
                .and_then(|b| b.column_f64("usage_idle", 100.0 - f / 10.0))
                .and_then(|b| b.column_f64("temp", 40.0 + f / 50.0))
                .and_then(|b| b.column_i64("requests", i as i64))
                .and_then(|b| b.at(TimestampNanos::new((BASE_TS_US + i as i64) * 1000)))
                .expect("row");
            if buf.row_count() as u64 >= QWP_FLUSH_ROWS {
                bytes += buf.len() as u64;
                bufs.push(std::mem::replace(&mut buf, sender.new_buffer()));
            }
        }
        if buf.row_count() > 0 {
            bytes += buf.len() as u64;
            bufs.push(buf);
        }
        work.push((sender, bufs));
    }
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let me = std::process::id();
    let client0 = cpu_seconds(me);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for (mut sender, bufs) in work {
            s.spawn(move || {
                for mut b in bufs {
                    sender.flush(&mut b).expect("flush");
                }
                if proto == Proto::Qwp {
                    sender
                        .wait(AckLevel::Ok, Duration::from_secs(600))
                        .expect("every message acknowledged");
                }
            });
        }
    });
    let sent = t0.elapsed();
    wait_visible(&server.dir, &names, rows);
    Run {
        what: match proto {
            Proto::Qwp => format!("QWP (questdb-rs 7), {conns} connections"),
            Proto::IlpV2Http => format!("ILP v2 HTTP (questdb-rs 7), {conns} conns"),
        },
        rows,
        bytes,
        sent,
        visible: t0.elapsed(),
        cpu_s: cpu_seconds(pid) - cpu0,
        client_cpu_s: cpu_seconds(me) - client0,
    }
    .print();
    println!("  (\"sent\" = every message acknowledged or request answered: durable)");
}

/// The reference table as one pandas DataFrame written by the official
/// Python client's columnar QWP path (`QuestDB.dataframe`, which returns
/// once every batch is committed). The frame is built before the clock
/// starts; the client's CPU is the Python process's own.
fn qwp_dataframe(base: &Path, rows: u64) {
    use std::io::{BufRead, BufReader, Write};
    let python = std::env::var_os("PERF_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} not found: run ./scripts/test.sh once (it makes target/test-venv with the QuestDB \
         client, pandas and pyarrow) or set PERF_PYTHON",
        python.display()
    );
    let server = start_server(&base.join("qwp-py"), &[]);
    let table = "cpu_df".to_string();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("perf/qwp_df.py");
    let mut child = std::process::Command::new(&python)
        .arg(&script)
        .arg(server.http.to_string())
        .arg(&table)
        .arg(rows.to_string())
        .arg(basalt::gen::HOSTS.to_string())
        .arg(BASE_TS_US.to_string())
        .arg(basalt::gen::REGIONS.join(","))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start perf/qwp_df.py");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read perf/qwp_df.py");
    let bytes: u64 = line
        .strip_prefix("ready ")
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_else(|| panic!("perf/qwp_df.py did not get ready: {line:?}"));
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(b"go\n").expect("start the write");
    line.clear();
    out.read_line(&mut line).expect("read perf/qwp_df.py");
    let sent = t0.elapsed();
    let client_cpu_s: f64 = line
        .strip_prefix("done ")
        .and_then(|d| d.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("perf/qwp_df.py failed: {line:?}"));
    wait_visible(&server.dir, std::slice::from_ref(&table), rows);
    let run = Run {
        what: "QWP pandas DataFrame (Python 6)".into(),
        rows,
        bytes,
        sent,
        visible: t0.elapsed(),
        cpu_s: cpu_seconds(pid) - cpu0,
        client_cpu_s,
    };
    assert!(child.wait().expect("perf/qwp_df.py").success());
    run.print();
    println!("  (MB = the frame in memory; \"sent\" = the call returned: every batch durable)");
}

/// QWP egress: `rows` rows of the reference table (ingested over ILP/TCP
/// first) read back whole through questdb-rs 7's `Reader`, every value of
/// one column summed on the client so every batch is decoded; beside a
/// memcpy of as many bytes as the rows' values, in the same run.
fn qwp_read(base: &Path, rows: u64) {
    use questdb::egress::column::ColumnView;
    use questdb::egress::reader::Reader;
    let Replay {
        names, texts, rows, ..
    } = tcp_texts(rows, 1);
    let server = start_server(&base.join("qwp-read"), &[]);
    node::tcp_send_all(server.ilp, &texts);
    wait_visible(&server.dir, &names, rows);
    drop(texts);
    let pid = server.child.id();
    let me = std::process::id();
    let mut reader = Reader::from_conf(format!("ws::addr={};", server.http)).expect("QWP reader");
    let sql = format!("select * from {}", names[0]);
    for round in 0..3 {
        let (cpu0, client0) = (cpu_seconds(pid), cpu_seconds(me));
        let t0 = Instant::now();
        let mut cursor = reader.execute(&sql).expect("query over QWP");
        let (mut got, mut batches, mut sum) = (0u64, 0u64, 0i64);
        while let Some(b) = cursor.next_batch().expect("a result batch") {
            let ColumnView::Long(req) = b.column(6).expect("requests") else {
                panic!("requests is not a LONG column")
            };
            sum = (0..b.row_count()).fold(sum, |s, r| s.wrapping_add(req.value(r)));
            got += b.row_count() as u64;
            batches += 1;
        }
        let took = t0.elapsed().as_secs_f64();
        assert_eq!(got, rows, "rows read back");
        assert_eq!(sum, (0..rows as i64).sum::<i64>(), "requests read back");
        println!(
            "QWP egress (questdb-rs 7 Reader), round {round}: {rows} rows in {batches} batches  {took:.3}s  {:.0} rows/s  server CPU {:.3} µs/row  client CPU {:.3} µs/row",
            rows as f64 / took,
            (cpu_seconds(pid) - cpu0) * 1e6 / rows as f64,
            (cpu_seconds(me) - client0) * 1e6 / rows as f64,
        );
    }
    // Yardstick: the rows' values (8 columns, 54 bytes a row) copied once.
    let bytes = rows as usize * 54;
    let (src, mut dst) = (vec![7u8; bytes], vec![0u8; bytes]);
    // Once to fault the pages in, then timed.
    dst.copy_from_slice(&src);
    let t0 = Instant::now();
    dst.copy_from_slice(&src);
    std::hint::black_box(&dst);
    println!(
        "  memcpy of the same {:.0} MB, same run: {:.3}s",
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
}

fn single_row_latency(base: &Path, requests: u64) {
    let dir = base.join("latency");
    let server = start_server(&dir, &[]);
    let yard_dir = base.join("fio");
    std::fs::create_dir_all(&yard_dir).expect("fio dir");
    let yard = fio::fio(&yard_dir, 4096, 64);
    let mut c = KeepAlive::connect(server.http);
    let gen = CpuGenerator::default();
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let mut body = Vec::new();
    for i in 0..requests {
        body.clear();
        gen.ilp_line(&mut body, "cpu", i);
        let t = Instant::now();
        assert_eq!(c.post(&body), 204);
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    let q = |p: f64| h.value_at_quantile(p) as f64;
    print!(
        "single-row HTTP commit ({requests} requests, one keep-alive connection): p50 {:.0} µs  p99 {:.0} µs  p999 {:.0} µs  max {:.0} µs",
        q(0.5),
        q(0.99),
        q(0.999),
        h.max() as f64
    );
    match yard {
        Some(f) => println!(
            "\n  fio 4k write+fdatasync, same disk, same run: fdatasync p50 {:.0} µs p99 {:.0} µs p999 {:.0} µs, write p99 {:.0} µs, {:.1} MB/s\n  -> basalt p99 / fio fdatasync p99 = {:.2} (target <= 2); / fio (write + fdatasync) p99 = {:.2}",
            f.sync_p50_us,
            f.sync_p99_us,
            f.sync_p999_us,
            f.write_p99_us,
            f.mb_per_s,
            q(0.99) / f.sync_p99_us,
            q(0.99) / (f.sync_p99_us + f.write_p99_us)
        ),
        None => println!("\n  (fio unavailable: no yardstick)"),
    }
    let _ = BASE_TS_US;
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let what = args.first().map_or("all", String::as_str);
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let rows = env("PERF_ROWS", 2_000_000);
    let conns = env("PERF_CONNECTIONS", 4).max(1) as usize;
    let base = std::env::var_os("PERF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/perf-data"))
        .join("ilp");
    std::fs::create_dir_all(&base).expect("create PERF_DIR");
    println!(
        "perf data dir: {} ({} cores)",
        base.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if what == "all" || what == "tcp" {
        tcp_replay(&base, rows, conns);
        tcp_replay(&base, rows, 1);
    }
    if what == "all" || what == "http" {
        http_replay(&base, rows, conns, 10_000);
        http_replay(&base, rows.max(2_000_000), 2, 1_000_000);
    }
    if what == "all" || what == "qwp" {
        qwp_replay(&base, rows, conns);
        qwp_replay(&base, rows, 1);
    }
    if what == "all" || what == "ilp2" {
        client_replay(&base, rows, conns, Proto::IlpV2Http);
        client_replay(&base, rows, 1, Proto::IlpV2Http);
    }
    if what == "all" || what == "qwp-py" {
        qwp_dataframe(&base, rows);
    }
    if what == "all" || what == "qwp-read" {
        qwp_read(&base, rows);
    }
    if what == "all" || what == "tls" {
        tls::compare(&base, rows, conns);
    }
    if what == "all" || what == "latency" {
        single_row_latency(&base, 10_000);
    }
}
