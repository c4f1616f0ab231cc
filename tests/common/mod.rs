//! Shared by the server tests: a real `basalt serve` child process on
//! loopback ports, and a minimal HTTP/1.1 client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use basalt::batch::{Batch, BatchBuilder, Value};
use basalt::db::{Database, DbOptions};
use basalt::gen::{CpuGenerator, BASE_TS_US};
use basalt::io::EngineChoice;
use basalt::table::{ColumnType, TableReader};

/// A `basalt serve` child. Killed with SIGKILL when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub http: SocketAddr,
    pub ilp: SocketAddr,
    /// PostgreSQL wire address, when served.
    pub pg: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub ready_line: String,
}

impl ServerProcess {
    /// Starts `basalt serve` on ephemeral loopback ports with `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_with(data_dir, extra, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let command = || {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_basalt"));
            cmd.arg("serve")
                .arg("--data-dir")
                .arg(data_dir)
                .args(["--http", "127.0.0.1:0", "--ilp", "127.0.0.1:0"])
                .args(["--pg", "127.0.0.1:0"])
                .args(extra)
                .env("BASALT_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd
        };
        // Port 0 is resolved by binding and releasing a probe socket; a
        // test running beside this one (a store server, another node) can
        // take the port before the node binds it for good. Such a start is
        // tried again; any other failure repeats and is reported.
        for _ in 0..2 {
            if let Ok(s) = Self::try_spawn(command(), data_dir) {
                return s;
            }
        }
        Self::spawn(command(), data_dir)
    }

    /// [`ServerProcess::spawn`] that returns the failure instead of panicking.
    fn try_spawn(cmd: Command, data_dir: &Path) -> Result<ServerProcess, String> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::spawn(cmd, data_dir)))
            .map_err(|_| "basalt serve did not start".to_string())
    }

    /// Spawns a prepared command and waits for its "basalt serving" line.
    pub fn spawn(mut cmd: Command, data_dir: &Path) -> ServerProcess {
        let mut child = cmd.spawn().expect("start basalt serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        lines.read_line(&mut line).expect("read basalt's stdout");
        if !line.starts_with("basalt serving:") {
            let status = child.wait().expect("wait for basalt");
            panic!("basalt serve did not start ({status}): first line {line:?}");
        }
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        };
        let http = field("http").parse().expect("http address");
        let ilp = field("ilp").parse().expect("ilp address");
        let pg = field("pg").parse().ok();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = lines.read_to_end(&mut sink);
        });
        ServerProcess {
            child,
            http,
            ilp,
            pg,
            data_dir: data_dir.to_path_buf(),
            ready_line: line,
        }
    }

    /// A `--role replica` following `store`, polling every 20 ms.
    pub fn start_replica(data_dir: &Path, store: &str) -> ServerProcess {
        Self::start(
            data_dir,
            &[
                "--role",
                "replica",
                "--object-store",
                store,
                "--replica-poll-ms",
                "20",
            ],
        )
    }

    /// `GET /status`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let r = http(self.http, "GET", "/status", &[], b"");
        assert_eq!(r.status, 200);
        r.json()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait for basalt") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "basalt did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reaps the child.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL basalt");
        self.child.wait().expect("reap basalt");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response: status, headers (lower-cased names), body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect to basalt HTTP");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP response head in {:?}",
                String::from_utf8_lossy(raw)
            )
        });
    let head = std::str::from_utf8(&raw[..end]).expect("UTF-8 head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// A GET whose streamed (chunked) body is decoded; the body must end with
/// the last chunk, as a whole answer does.
pub fn get(addr: SocketAddr, target: &str) -> HttpResponse {
    let mut r = http(addr, "GET", target, &[], b"");
    if r.header("transfer-encoding") == Some("chunked") {
        r.body = dechunk(&r.body).unwrap_or_else(|e| {
            panic!(
                "GET {target}: bad chunked body ({e}): {:?}",
                String::from_utf8_lossy(&r.body)
            )
        });
    }
    r
}

/// The payload of an HTTP/1.1 chunked body.
pub fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("no chunk size line (the body ended early)")?;
        let size_text = std::str::from_utf8(&raw[..eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 || &raw[size..size + 2] != b"\r\n" {
            return Err(format!("a chunk of {size} bytes is cut short"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// `GET /exec` of a query that must succeed: its JSON answer.
pub fn exec_json(addr: SocketAddr, sql: &str) -> serde_json::Value {
    let q: String = form_urlencoded::byte_serialize(sql.as_bytes()).collect();
    let r = get(addr, &format!("/exec?query={q}"));
    assert_eq!(r.status, 200, "{sql}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// POSTs an ILP body to /write on a new connection; true only for a 204
/// (false when the server is gone or refused it), for clients racing a
/// SIGKILL.
pub fn post_acked(addr: SocketAddr, body: &[u8]) -> bool {
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return false;
    };
    let head = format!(
        "POST /write HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    if conn.write_all(head.as_bytes()).is_err() || conn.write_all(body).is_err() {
        return false;
    }
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw);
    raw.starts_with(b"HTTP/1.1 204")
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(x) = f() {
            return x;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rows of `table` visible to readers (0 while it does not exist).
pub fn row_count(data_dir: &Path, table: &str) -> u64 {
    basalt::table::TableReader::open(data_dir, table)
        .and_then(|r| r.state())
        .map_or(0, |s| s.row_count())
}

/// Every file of a table that holds data, by path relative to the table,
/// with partition directories named without their version (versions count
/// apply steps, which differ between nodes; contents must not).
pub fn table_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let reader = TableReader::open(
        dir.parent().unwrap(),
        dir.file_name().unwrap().to_str().unwrap(),
    )
    .unwrap();
    let state = reader.state().unwrap();
    for p in &state.partitions {
        let name = reader.schema().partition_by.partition_name(p.floor);
        let pdir = dir.join(basalt::table::files::partition_dir(&name, p.version));
        for e in std::fs::read_dir(&pdir).unwrap() {
            let e = e.unwrap();
            out.insert(
                format!("{name}/{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    for e in std::fs::read_dir(dir.join("_sym")).unwrap() {
        let e = e.unwrap();
        out.insert(
            format!("_sym/{}", e.file_name().to_string_lossy()),
            std::fs::read(e.path()).unwrap(),
        );
    }
    out.insert("_meta".into(), std::fs::read(dir.join("_meta")).unwrap());
    out
}

/// Txns of the reference table with out-of-order timestamps, new symbols,
/// and a column added half way.
pub fn workload(db: &Database) -> Vec<(u64, Batch)> {
    let gen = CpuGenerator::default();
    let t = db.create_table("cpu", gen.schema()).unwrap();
    let mut txns = Vec::new();
    for i in 0..12u64 {
        // Every third batch lands a day earlier: an O3 merge on apply.
        let offset = if i % 3 == 2 { -86_400_000_000 } else { 0 };
        let b = gen.batch(i * 500, 500, offset);
        let txn = db.commit(&t, b.clone()).unwrap();
        txns.push((txn, b));
        if i == 5 {
            db.add_column(&t, "note", ColumnType::Varchar).unwrap();
        }
        if i >= 6 {
            let schema = t.schema();
            let mut bb = BatchBuilder::new(&schema);
            for r in 0..50u64 {
                gen.row_partial(
                    &mut bb,
                    100_000 + i * 50 + r,
                    BASE_TS_US + 10_000_000 + (i * 50 + r) as i64,
                );
                bb.set(8, Value::Varchar(&format!("n{r}"))).unwrap();
                bb.finish_row().unwrap();
            }
            let b = bb.finish();
            let txn = db.commit(&t, b.clone()).unwrap();
            txns.push((txn, b));
        }
    }
    t.wait_applied(txns.last().unwrap().0, Duration::from_secs(30))
        .unwrap();
    txns
}

pub fn open_db(dir: &Path) -> Database {
    Database::open(DbOptions {
        data_dir: dir.to_path_buf(),
        engine: EngineChoice::Portable,
        shards: 1,
        ..DbOptions::default()
    })
    .unwrap()
}

/// The Python with the QuestDB client (`$BASALT_TEST_PYTHON`, default
/// `python3`; ./scripts/test.sh sets up a virtualenv).
pub fn python() -> String {
    std::env::var("BASALT_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs tests/clients/`script` with `args`; it must exit 0 and print `ok`
/// last. `needs` names what the script imports, for the failure message.
pub fn client_script(script: &str, args: &[&str], needs: &str) {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim().ends_with("ok"),
        "{script} {args:?} failed ({}). {needs} are installed by ./scripts/test.sh.\n\
         stdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
