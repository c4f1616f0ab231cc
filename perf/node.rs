//! Shared by the whole-system benches: a release `basalt serve` child,
//! reading what it made visible, ILP text, and an HTTP keep-alive client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use basalt::gen::CpuGenerator;

pub struct Server {
    pub child: Child,
    pub http: SocketAddr,
    pub ilp: SocketAddr,
    pub dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Starts `basalt serve` on ephemeral ports with data in `dir` (kept if it
/// exists) and `extra` flags; waits for its ready line.
pub fn start(dir: &Path, extra: &[&str]) -> Server {
    // PERF_BASALT: another build's binary (an earlier commit's, say), to
    // compare two builds on the same machine in the same session.
    let bin = std::env::var_os("PERF_BASALT").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_basalt")),
        PathBuf::from,
    );
    let mut child = Command::new(&bin)
        .args(["serve", "--http", "127.0.0.1:0", "--ilp", "127.0.0.1:0"])
        .args(["--pg", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("BASALT_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start basalt serve");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read basalt's stdout");
    assert!(
        line.starts_with("basalt serving:"),
        "basalt did not start: {line:?}"
    );
    println!("  server: {}", line.trim());
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|a| a.parse().ok())
            .expect("address in the ready line")
    };
    let (http, ilp) = (field("http"), field("ilp"));
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    Server {
        child,
        http,
        ilp,
        dir: dir.to_path_buf(),
    }
}

/// Sends each text over its own ILP/TCP connection, all at once.
pub fn tcp_send_all(addr: SocketAddr, texts: &[Vec<u8>]) {
    std::thread::scope(|s| {
        for text in texts {
            s.spawn(move || {
                let mut c = TcpStream::connect(addr).expect("connect ILP/TCP");
                for chunk in text.chunks(1 << 20) {
                    c.write_all(chunk).expect("send ILP");
                }
            });
        }
    })
}

/// Waits until the store has every committed txn of `tables` (per /status).
pub fn wait_uploaded(s: &Server, tables: &[String]) {
    loop {
        let j = get_json(s.http, "/status");
        let done = tables.iter().all(|n| {
            let t = &j["tables"][n];
            t["uploaded_txn"].as_u64().unwrap_or(0) == t["committed_txn"].as_u64().unwrap_or(1)
        });
        if done {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `GET path` on a new connection, parsed as JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).expect("connect HTTP");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: basalt\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..at]).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200"),
        "GET {path}: {head}{}",
        String::from_utf8_lossy(&raw[at..])
    );
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&raw[at..])
    } else {
        raw[at..].to_vec()
    };
    serde_json::from_slice(&body).expect("JSON body")
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
            .expect("chunk size");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

/// User + system CPU seconds the process has used (all threads).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

pub fn visible_rows(dir: &Path, tables: &[String]) -> u64 {
    tables
        .iter()
        .map(|t| {
            basalt::table::TableReader::open(dir, t)
                .and_then(|r| r.state())
                .map_or(0, |s| s.row_count())
        })
        .sum()
}

pub fn wait_visible(dir: &Path, tables: &[String], rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while visible_rows(dir, tables) < rows {
        assert!(Instant::now() < deadline, "rows did not become visible");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// ILP text of rows `first..first + n` for `table`.
pub fn ilp_text(gen: &CpuGenerator, table: &str, first: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 140);
    for i in first..first + n {
        gen.ilp_line(&mut out, table, i);
    }
    out
}

/// An HTTP/1.1 keep-alive connection.
pub struct KeepAlive<S = TcpStream> {
    s: S,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> KeepAlive {
        let s = TcpStream::connect(addr).expect("connect ILP/HTTP");
        s.set_nodelay(true).expect("nodelay");
        KeepAlive::over(s)
    }
}

impl<S: Read + Write> KeepAlive<S> {
    /// Over an established stream (TLS, say).
    pub fn over(s: S) -> KeepAlive<S> {
        KeepAlive { s, buf: Vec::new() }
    }

    /// POSTs `body` to /write; returns the status.
    pub fn post(&mut self, body: &[u8]) -> u16 {
        let head = format!(
            "POST /write HTTP/1.1\r\nHost: basalt\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if body.len() < 64 * 1024 {
            let mut req = head.into_bytes();
            req.extend_from_slice(body);
            self.s.write_all(&req).expect("send request");
        } else {
            self.s.write_all(head.as_bytes()).expect("send head");
            self.s.write_all(body).expect("send body");
        }
        let mut tmp = [0u8; 4096];
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = self.s.read(&mut tmp).expect("read response");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < end + len {
            let n = self.s.read(&mut tmp).expect("read body");
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&tmp[..n]);
        }
        // 421: a node that does not take writes now (a role switch); the
        // caller moves on.
        if status != 204 && status != 421 {
            eprintln!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&self.buf[end..end + len])
            );
        }
        self.buf.drain(..end + len);
        status
    }
}
