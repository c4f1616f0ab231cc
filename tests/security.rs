//! TLS and authentication on every port, with real peers: the official
//! QuestDB clients (questdb-rs 7 and Python 6.x) over `https::`, `tcps::`
//! and `wss::` with a test CA, `psql` with `sslmode=verify-full`, psycopg
//! with SCRAM, and raw HTTP for every wrong or missing credential. The test
//! CA and certificates are made by the `openssl` command.
//!
//! Needs `openssl`, `psql` and the Python client with psycopg
//! (`./scripts/test.sh` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use basalt::auth::{new_ilp_key, token_digest_text, ScramVerifier};
use base64::Engine;
use common::{eventually, http, row_count, ServerProcess};
use questdb::ingress::{Sender, TimestampNanos};

/// Runs scripts/test-pki.sh (the `openssl` command) with `args`.
fn test_pki(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-pki.sh");
    let o = Command::new(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        o.status.success(),
        "test-pki.sh {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A test CA, and certificates for `localhost`/`127.0.0.1` it signed: the
/// node's, an expired one, a client's; and one from another CA
/// (scripts/test-pki.sh).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let d = dir.display().to_string();
        test_pki(&[&d]);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// `name.pem`/`name.key`, CN=name, signed by `ca`.
    fn leaf(&self, name: &str, ca: &str) {
        test_pki(&[&self.dir.display().to_string(), "leaf", name, ca]);
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn tls_args(&self, name: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path(&format!("{name}.pem")),
            "--tls-key".into(),
            self.path(&format!("{name}.key")),
        ]
    }
}

/// The users of these tests, and their secrets in the clients' form.
struct Users {
    file: PathBuf,
    token: String,
    /// ILP/TCP key of `writer`: d, x, y.
    key: (String, String, String),
}

const ADMIN: (&str, &str) = ("admin", "admin-pw");
const WRITER: (&str, &str) = ("writer", "writer pw: ö");
const READER: (&str, &str) = ("reader", "reader-pw");

impl Users {
    fn new(dir: &Path) -> Users {
        let token = basalt::auth::new_token();
        let key = new_ilp_key();
        let old_md5 = format!("md5{:x}", md5::compute("old-pwold"));
        let text = format!(
            "[[user]]\nname = \"{}\"\npermission = \"admin\"\npassword = \"{}\"\n\n\
             [[user]]\nname = \"{}\"\npermission = \"read-write\"\npassword = \"{}\"\n\
             tokens = [\"{}\"]\nilp_key_x = \"{}\"\nilp_key_y = \"{}\"\n\n\
             [[user]]\nname = \"{}\"\npermission = \"read-only\"\npassword = \"{}\"\n\n\
             [[user]]\nname = \"old\"\npermission = \"read-only\"\npassword_md5 = \"{old_md5}\"\n",
            ADMIN.0,
            ScramVerifier::new(ADMIN.1).encode(),
            WRITER.0,
            ScramVerifier::new(WRITER.1).encode(),
            token_digest_text(&token),
            key.1,
            key.2,
            READER.0,
            ScramVerifier::new(READER.1).encode(),
        );
        let file = dir.join("users.toml");
        std::fs::write(&file, text).unwrap();
        Users { file, token, key }
    }

    fn args(&self) -> Vec<String> {
        vec!["--users".into(), self.file.display().to_string()]
    }
}

fn basic((user, password): (&str, &str)) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b}")
}

fn start(dir: &Path, args: &[String]) -> ServerProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProcess::start(dir, &args)
}

fn exec_as(s: &ServerProcess, who: (&str, &str), sql: &str) -> common::HttpResponse {
    let target = format!(
        "/exec?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("query", sql)
            .finish()
    );
    let mut r = http(
        s.http,
        "GET",
        &target,
        &[("Authorization", &basic(who))],
        b"",
    );
    if r.header("transfer-encoding") == Some("chunked") {
        r.body = common::dechunk(&r.body).unwrap();
    }
    r
}

fn metrics(s: &ServerProcess) -> String {
    let r = http(
        s.http,
        "GET",
        "/metrics",
        &[("Authorization", &basic(READER))],
        b"",
    );
    assert_eq!(r.status, 200);
    String::from_utf8(common::dechunk(&r.body).unwrap_or(r.body)).unwrap()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Every wrong or missing credential is refused with the status and
/// message a client shows, and writes nothing; each user may do what its
/// permission says and no more; failures are counted and slowed down.
#[test]
fn http_credentials_and_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let users = Users::new(dir.path());
    let s = start(&dir.path().join("node"), &users.args());
    let line = b"t,host=a v=1i 1704067200000000000\n";
    let write = |auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        http(s.http, "POST", "/write", &h, line)
    };

    // What the clients ask before they have credentials stays open.
    assert_eq!(http(s.http, "GET", "/ping", &[], b"").status, 204);
    assert_eq!(http(s.http, "GET", "/settings", &[], b"").status, 200);

    let r = write(None);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"basalt\", charset=\"UTF-8\"")
    );
    assert!(String::from_utf8_lossy(&r.body).starts_with("authentication required"));
    for bad in [
        basic((WRITER.0, "nope")),
        basic(("nobody", WRITER.1)),
        "Bearer not-a-token".to_string(),
    ] {
        let t = Instant::now();
        let r = write(Some(&bad));
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(String::from_utf8_lossy(&r.body), "invalid credentials");
        // Held back: at least 100 ms, doubling per failure from this address.
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }
    let r = write(Some("Digest secret-x"));
    assert_eq!(r.status, 401);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("not Basic or Bearer"), "{body}");
    assert!(!body.contains("secret-x"), "the header is echoed: {body}");
    // A read-only user may not write.
    let r = write(Some(&basic(READER)));
    assert_eq!(r.status, 403);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "permission denied: user \"reader\" is read-only; POST /write needs read-write"
    );
    // Nothing above was written.
    let r = exec_as(&s, READER, "select count() from t");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("t"),
        "no table t yet"
    );

    // The writer, by password and by token.
    assert_eq!(write(Some(&basic(WRITER))).status, 204);
    assert_eq!(write(Some(&format!("Bearer {}", users.token))).status, 204);
    let r = eventually(Duration::from_secs(30), || {
        let r = exec_as(&s, READER, "select count() from t");
        (r.status == 200 && r.json()["dataset"][0][0] == 2).then_some(r)
    });
    assert_eq!(r.json()["count"], 1);
    // Queries need credentials too.
    assert_eq!(
        http(s.http, "GET", "/exec?query=select%201", &[], b"").status,
        401
    );
    assert_eq!(
        http(s.http, "GET", "/metrics", &[], b"").status,
        401,
        "/metrics needs credentials"
    );

    // Statements are checked by what they do.
    let r = exec_as(&s, READER, "create table r (ts timestamp) timestamp(ts)");
    assert_eq!(r.status, 403);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("CREATE TABLE needs read-write"));
    let r = exec_as(&s, WRITER, "BACKUP DATABASE");
    assert_eq!(r.status, 403);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("BACKUP DATABASE needs admin"));
    // The admin may (into the node's default store, a directory).
    let r = exec_as(&s, ADMIN, "BACKUP DATABASE");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = exec_as(&s, WRITER, "create table w (ts timestamp) timestamp(ts)");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Failed logins are counted (the 401 without credentials is not one).
    let m = metrics(&s);
    assert_eq!(
        metric(&m, "basalt_auth_failures_total{protocol=\"http\"}"),
        4,
        "{m}"
    );
    assert!(metric(&m, "basalt_auth_logins_total{protocol=\"http\"}") >= 8);
}

/// questdb-rs asks rustls for the process's default provider, and this
/// test build has two (aws-lc-rs through basalt, ring through questdb-rs).
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn send_rs(conf: &str, table: &str, rows: i64) -> Result<(), questdb::Error> {
    install_crypto_provider();
    let mut sender = Sender::from_conf(conf)?;
    let mut buf = sender.new_buffer();
    for i in 0..rows {
        buf.table(table)?
            .symbol("host", "a")?
            .column_i64("n", i)?
            .at(TimestampNanos::new(1_704_067_200_000_000_000 + i * 1000))?;
    }
    sender.flush(&mut buf)?;
    if conf.starts_with("ws") {
        sender.wait(questdb::ingress::AckLevel::Ok, Duration::from_secs(60))?;
    }
    Ok(())
}

/// A TLS client of this test's CA (rustls, as the node's own).
fn tls_connect(
    pki: &Pki,
    port: u16,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// `GET /metrics` over HTTPS as the reader; the value of `name`.
fn tls_metric(pki: &Pki, port: u16, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = tls_connect(pki, port);
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: {}\r\n\r\n",
        basic(READER)
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // rustls reports the peer's close without close_notify as an error
    // after the whole answer was read.
    let _ = s.read_to_end(&mut raw);
    let r = common::parse_response(&raw);
    assert_eq!(r.status, 200);
    let body = common::dechunk(&r.body).unwrap_or(r.body);
    metric(&String::from_utf8(body).unwrap(), name)
}

fn secure_py(args: &[&str]) {
    common::client_script("secure_py.py", args, "The client (questdb>=6) and psycopg");
}

/// A node with the test users and TLS (the test CA's `node` certificate).
fn secure_node(dir: &Path) -> (Pki, Users, ServerProcess) {
    let pki = Pki::new(&dir.join("pki"));
    let users = Users::new(dir);
    let mut args = users.args();
    args.extend(pki.tls_args("node"));
    let s = start(&dir.join("node"), &args);
    (pki, users, s)
}

/// The official clients over TLS with the credentials they support: ILP
/// over HTTPS with a password, ILP over TCP+TLS with QuestDB's ECDSA
/// challenge, QWP over WSS with a token (write and query); wrong
/// credentials are refused and write nothing.
#[test]
fn official_clients_over_tls_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, users, s) = secure_node(dir.path());
    let (http_port, ilp_port) = (s.http.port(), s.ilp.port());
    let tls = format!("tls_roots={};", pki.path("ca.pem"));
    let (d, x, y) = &users.key;

    send_rs(
        &format!(
            "https::addr=localhost:{http_port};username={};password={};{tls}",
            WRITER.0, WRITER.1
        ),
        "rs_https",
        1000,
    )
    .expect("ILP over HTTPS with a password");
    send_rs(
        &format!(
            "tcps::addr=localhost:{ilp_port};username={};token={d};token_x={x};token_y={y};{tls}",
            WRITER.0
        ),
        "rs_tcps",
        200_000,
    )
    .expect("ILP over TCP+TLS with the ECDSA challenge");
    send_rs(
        &format!(
            "wss::addr=localhost:{http_port};token={};{tls}",
            users.token
        ),
        "rs_wss",
        1000,
    )
    .expect("QWP over WSS with a token");
    // Every row, though the TCP client closes as soon as it wrote them.
    for (t, n) in [("rs_https", 1000), ("rs_tcps", 200_000), ("rs_wss", 1000)] {
        eventually(Duration::from_secs(60), || {
            (row_count(&s.data_dir, t) == n).then_some(())
        });
    }
    // The QWP reader over WSS, as the reader user.
    install_crypto_provider();
    let mut reader = questdb::egress::reader::Reader::from_conf(format!(
        "wss::addr=localhost:{http_port};username={};password={};{tls}",
        READER.0, READER.1
    ))
    .unwrap();
    let mut cursor = reader.execute("select sum(n) from rs_wss").unwrap();
    let b = cursor.next_batch().unwrap().expect("one batch");
    let questdb::egress::column::ColumnView::Long(sum) = b.column(0).unwrap() else {
        panic!("sum is not a LONG")
    };
    assert_eq!(sum.value(0), 999 * 1000 / 2);
    assert!(cursor.next_batch().unwrap().is_none());
    drop(cursor);
    // ... who may not run DDL over it either.
    let e = reader
        .execute("create table rs_nope (ts timestamp) timestamp(ts)")
        .and_then(|mut c| c.next_batch().map(|_| ()))
        .expect_err("a read-only user ran DDL over QWP");
    assert!(e.to_string().contains("needs read-write"), "{e}");

    // Wrong credentials: the clients show the refusal; nothing is written.
    let e = send_rs(
        &format!(
            "https::addr=localhost:{http_port};username={};password=wrong;{tls}",
            WRITER.0
        ),
        "rs_refused",
        10,
    )
    .expect_err("a wrong password was accepted");
    assert!(e.to_string().contains("401"), "{e}");
    let e = send_rs(
        &format!(
            "https::addr=localhost:{http_port};username={};password={};{tls}",
            READER.0, READER.1
        ),
        "rs_refused",
        10,
    )
    .expect_err("a read-only user wrote");
    assert!(e.to_string().contains("403"), "{e}");
    let e = send_rs(
        &format!("wss::addr=localhost:{http_port};token=forged;{tls}"),
        "rs_refused",
        10,
    )
    .expect_err("a forged token was accepted");
    assert!(e.to_string().contains("401"), "{e}");
    // A key that is not the user's: the server closes without a word (as
    // QuestDB does); once it counted the failure, nothing was written.
    let before = tls_metric(
        &pki,
        http_port,
        "basalt_auth_failures_total{protocol=\"ilp_tcp\"}",
    );
    let (od, ox, oy) = new_ilp_key();
    let refused = send_rs(
        &format!(
            "tcps::addr=localhost:{ilp_port};username={};token={od};token_x={ox};token_y={oy};{tls}",
            WRITER.0
        ),
        "rs_refused",
        10,
    );
    // The client cannot tell: the server closes without an answer, as
    // QuestDB does.
    drop(refused);
    eventually(Duration::from_secs(30), || {
        let n = tls_metric(
            &pki,
            http_port,
            "basalt_auth_failures_total{protocol=\"ilp_tcp\"}",
        );
        (n == before + 1).then_some(())
    });
    secure_py(&[
        "ingest",
        &http_port.to_string(),
        &ilp_port.to_string(),
        &pki.path("ca.pem"),
        WRITER.0,
        WRITER.1,
        &users.token,
        WRITER.0,
        d,
        x,
        y,
    ]);
    for t in ["py_https", "py_tcps", "py_wss"] {
        eventually(Duration::from_secs(60), || {
            (row_count(&s.data_dir, t) == 100).then_some(())
        });
    }
    assert!(
        !s.data_dir.join("rs_refused").exists(),
        "a refused client's table exists"
    );
    assert!(!s.data_dir.join("py_refused").exists());
}

/// `psql` (libpq) as `user`; stdout on success, stderr on failure.
fn psql(port: u16, conn: &str, password: &str, sql: &str) -> Result<String, String> {
    let o = Command::new("psql")
        .arg("-X")
        .arg("-w")
        .arg(format!("{conn} port={port} dbname=qdb connect_timeout=10"))
        .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql ({e}): apt-get install postgresql-client"));
    if o.status.success() {
        Ok(String::from_utf8(o.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// PostgreSQL clients over TLS: psql with `sslmode=verify-full` (SCRAM,
/// and md5 for a user who has only an md5 password), psycopg with SCRAM;
/// wrong passwords refused with the PostgreSQL error; a read-only user
/// refused DDL with SQLSTATE 42501. A node asking for client certificates
/// lets in psql with one and refuses psql without.
#[test]
fn postgres_scram_md5_and_verify_full() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, users, s) = secure_node(dir.path());
    let port = s.pg.expect("pg served").port();
    let ca = pki.path("ca.pem");
    let verify_full = format!("host=localhost sslmode=verify-full sslrootcert={ca}");
    let as_user = |conn: &str, (user, password): (&str, &str), sql: &str| {
        psql(port, &format!("{conn} user={user}"), password, sql)
    };

    let out =
        as_user(&verify_full, READER, "select 6 * 7").expect("psql over verify-full with SCRAM");
    assert_eq!(out.trim(), "42");
    let e = as_user(&verify_full, (READER.0, "wrong"), "select 1").unwrap_err();
    assert!(
        e.contains("FATAL:  password authentication failed for user \"reader\""),
        "{e}"
    );
    let e = as_user(&verify_full, ("nobody", "x"), "select 1").unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"nobody\""),
        "{e}"
    );
    let out = as_user(&verify_full, ("old", "old-pw"), "select 1").expect("psql with md5");
    assert_eq!(out.trim(), "1");
    let e = as_user(
        &verify_full,
        READER,
        "create table p (ts timestamp) timestamp(ts)",
    )
    .unwrap_err();
    assert!(e.contains("CREATE TABLE needs read-write"), "{e}");
    // The admin may.
    as_user(
        &verify_full,
        ADMIN,
        "create table p (ts timestamp) timestamp(ts)",
    )
    .expect("the admin creates a table");
    // verify-full checks the name: 127.0.0.1 is in the certificate, a name
    // that is not is refused by the client.
    let other_name =
        format!("hostaddr=127.0.0.1 host=not-this-node sslmode=verify-full sslrootcert={ca}");
    let e = as_user(&other_name, READER, "select 1").unwrap_err();
    assert!(e.contains("not-this-node"), "{e}");
    // With TLS on, a plaintext session is refused before any password.
    let e = as_user("host=localhost sslmode=disable", READER, "select 1").unwrap_err();
    assert!(e.contains("over TLS only"), "{e}");
    secure_py(&["pg", &port.to_string(), &ca, READER.0, READER.1]);
    assert!(
        tls_metric(
            &pki,
            s.http.port(),
            "basalt_auth_failures_total{protocol=\"pg\"}"
        ) >= 3
    );
    drop(s);

    // Client certificates.
    let mut args = users.args();
    args.extend(pki.tls_args("node"));
    args.extend(["--tls-client-ca".to_string(), ca.clone()]);
    let s = start(&dir.path().join("node2"), &args);
    let port = s.pg.unwrap().port();
    let as_user = |conn: &str, (user, password): (&str, &str), sql: &str| {
        psql(port, &format!("{conn} user={user}"), password, sql)
    };
    let with_cert = format!(
        "{verify_full} sslcert={} sslkey={}",
        pki.path("client.pem"),
        pki.path("client.key")
    );
    let out = as_user(&with_cert, READER, "select 1").expect("psql with a client certificate");
    assert_eq!(out.trim(), "1");
    let e = as_user(&verify_full, READER, "select 1").unwrap_err();
    assert!(e.contains("certificate"), "{e}");
}

/// A SASLInitialResponse whose length field is missing (which panics
/// pgwire's decoder) is answered `FATAL 08P01` before it gets there, and
/// the node goes on serving logins.
#[test]
fn a_malformed_scram_message_is_refused_not_a_crash() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let users = Users::new(dir.path());
    let s = start(&dir.path().join("node"), &users.args());
    let port = s.pg.expect("pg served").port();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let params = b"user\0reader\0database\0qdb\0\0";
    let mut startup = ((8 + params.len()) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
    startup.extend_from_slice(params);
    c.write_all(&startup).unwrap();
    // AuthenticationSASL: 'R', length, 10, mechanism names.
    let mut head = [0u8; 9];
    c.read_exact(&mut head).unwrap();
    assert_eq!(head[0], b'R');
    assert_eq!(i32::from_be_bytes(head[5..9].try_into().unwrap()), 10);
    let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len - 8];
    c.read_exact(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("SCRAM-SHA-256"));
    // The mechanism's name, and no length of its data.
    let body = b"SCRAM-SHA-256\0";
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((4 + body.len()) as i32).to_be_bytes());
    msg.extend_from_slice(body);
    c.write_all(&msg).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("FATAL") && text.contains("08P01"), "{text}");
    let out = psql(
        port,
        &format!("host=127.0.0.1 user={}", READER.0),
        READER.1,
        "select 1",
    )
    .expect("a login after the malformed one");
    assert_eq!(out.trim(), "1");
}

/// The certificate the node serves now.
fn served_certificate(pki: &Pki, port: u16) -> Vec<u8> {
    use std::io::Write;
    let mut s = tls_connect(pki, port);
    // Any write completes the handshake.
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    s.flush().unwrap();
    s.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

fn pem_der(path: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

/// An ILP/TCP client that writes its rows over TLS and closes at once,
/// without reading (as a plain `openssl s_client < file` does): every row
/// arrives. (A server that sent TLS 1.3 session tickets would leave unread
/// bytes at the client, whose close then resets the connection and drops
/// the rows still in flight.)
#[test]
fn tls_ilp_tcp_clients_that_never_read_lose_nothing() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let s = start(&dir.path().join("node"), &pki.tls_args("node"));
    let rows = 50_000u64;
    let mut text = Vec::new();
    for i in 0..rows {
        writeln!(
            text,
            "raw,host=h{} n={i}i {}",
            i % 7,
            1_704_067_200_000_000_000 + i * 1000
        )
        .unwrap();
    }
    for conn in 0..3 {
        let table = format!("raw{conn}");
        let body = String::from_utf8(text.clone())
            .unwrap()
            .replace("raw,", &format!("{table},"));
        let mut t = tls_connect(&pki, s.ilp.port());
        t.write_all(body.as_bytes()).unwrap();
        t.conn.send_close_notify();
        t.flush().unwrap();
        drop(t);
        eventually(Duration::from_secs(60), || {
            (row_count(&s.data_dir, &table) == rows).then_some(())
        });
    }
}

/// A client refuses a node whose certificate expired or comes from another
/// CA; a node picks up a replaced certificate without a restart, and keeps
/// the old one while the new files do not load.
#[test]
fn certificates_expired_foreign_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let tls = format!("tls_roots={};", pki.path("ca.pem"));
    for (cert, want) in [
        ("expired", "certificate expired"),
        ("foreign", "UnknownIssuer"),
    ] {
        let s = start(&dir.path().join(cert), &pki.tls_args(cert));
        let e = send_rs(
            &format!("https::addr=localhost:{};{tls}", s.http.port()),
            "t",
            1,
        )
        .expect_err("the client accepted a bad certificate");
        assert!(e.to_string().contains(want), "{cert}: {e}");
        assert!(
            e.to_string().contains("invalid peer certificate"),
            "{cert}: {e}"
        );
        assert!(!s.data_dir.join("t").exists());
    }

    // Reload: the node serves copies of node.pem/node.key, replaced while
    // it runs.
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    std::fs::copy(pki.path("node.pem"), &cert).unwrap();
    std::fs::copy(pki.path("node.key"), &key).unwrap();
    let args = vec![
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    let s = start(&dir.path().join("reload"), &args);
    let port = s.http.port();
    assert_eq!(
        served_certificate(&pki, port),
        pem_der(&pki.path("node.pem"))
    );
    pki.leaf("node2", "ca");
    // A certificate without its key does not load: the old one stays.
    std::fs::write(&cert, std::fs::read(pki.path("node2.pem")).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(
            served_certificate(&pki, port),
            pem_der(&pki.path("node.pem"))
        );
    }
    std::fs::write(&key, std::fs::read(pki.path("node2.key")).unwrap()).unwrap();
    eventually(Duration::from_secs(30), || {
        (served_certificate(&pki, port) == pem_der(&pki.path("node2.pem"))).then_some(())
    });
    send_rs(
        &format!("https::addr=localhost:{port};{tls}"),
        "after_reload",
        10,
    )
    .expect("writes over the new certificate");
}

/// A node on a non-loopback address without users refuses to start and
/// says how to fix it; `--allow-unauthenticated` starts it anyway. A
/// replica refuses writes whoever asks, an admin included.
#[test]
fn open_ports_need_users_and_replicas_refuse_admins() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("open"))
        .args(["--http", "0.0.0.0:0", "--ilp", "127.0.0.1:0", "--pg", "off"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--http 0.0.0.0:0"), "{err}");
    assert!(err.contains("--users FILE"), "{err}");
    assert!(err.contains("--allow-unauthenticated"), "{err}");
    assert!(!dir.path().join("open").exists(), "nothing was created");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_basalt"));
    cmd.args(["serve", "--data-dir"])
        .arg(dir.path().join("open2"))
        .args(["--http", "0.0.0.0:0", "--ilp", "127.0.0.1:0", "--pg", "off"])
        .arg("--allow-unauthenticated")
        .stdout(std::process::Stdio::piped());
    let s = ServerProcess::spawn(cmd, &dir.path().join("open2"));
    assert_eq!(http(s.http, "GET", "/ping", &[], b"").status, 204);
    drop(s);

    let users = Users::new(dir.path());
    let (pdir, rdir) = (dir.path().join("primary"), dir.path().join("replica"));
    let p = start(&pdir, &users.args());
    let store = format!("fs::root={};", pdir.join("_replication").display());
    let mut args = users.args();
    args.extend(
        [
            "--role",
            "replica",
            "--object-store",
            &store,
            "--replica-poll-ms",
            "20",
        ]
        .map(String::from),
    );
    let r = start(&rdir, &args);
    let line = b"t,host=a v=1i 1704067200000000000\n";
    let admin = basic(ADMIN);
    let h = [("Authorization", admin.as_str())];
    assert_eq!(http(p.http, "POST", "/write", &h, line).status, 204);
    let refused = http(r.http, "POST", "/write", &h, line);
    assert_eq!(
        refused.status,
        421,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    // The replica has the primary's row, and only that one (its own write
    // was refused, not queued).
    eventually(Duration::from_secs(30), || {
        let r = exec_as(&r, READER, "select count() from t");
        (r.status == 200 && r.json()["dataset"][0][0] == 1).then_some(())
    });
    let r = exec_as(&p, READER, "select count() from t");
    assert_eq!(r.json()["dataset"][0][0], 1);
}

/// Lines an ILP/TCP client sends right behind its signature, in the same
/// write, are kept when a later line is bad: the lines before a bad line
/// are committed, on a logged-in connection as on any other.
#[test]
fn ilp_tcp_lines_sent_with_the_signature_survive_a_bad_line() {
    use aws_lc_rs::signature::{self, EcdsaKeyPair};
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let users = Users::new(dir.path());
    let s = start(&dir.path().join("node"), &users.args());
    let (d, x, y) = &users.key;
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(x).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(y).unwrap());
    let key = EcdsaKeyPair::from_private_key_and_public_key(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &URL_SAFE_NO_PAD.decode(d).unwrap(),
        &point,
    )
    .unwrap();
    let mut c = std::net::TcpStream::connect(s.ilp).unwrap();
    c.write_all(format!("{}\n", WRITER.0).as_bytes()).unwrap();
    let mut challenge = Vec::new();
    BufReader::new(c.try_clone().unwrap())
        .read_until(b'\n', &mut challenge)
        .unwrap();
    assert_eq!(challenge.pop(), Some(b'\n'));
    let sig = key
        .sign(&aws_lc_rs::rand::SystemRandom::new(), &challenge)
        .unwrap();
    let mut rest = STANDARD.encode(sig).into_bytes();
    rest.extend_from_slice(b"\n");
    for i in 0..3 {
        writeln!(
            rest,
            "signed,host=a n={i}i {}",
            1_704_067_200_000_000_000i64 + i
        )
        .unwrap();
    }
    rest.extend_from_slice(b"signed,host=a n=oops\n");
    c.write_all(&rest).unwrap();
    eventually(Duration::from_secs(60), || {
        (row_count(&s.data_dir, "signed") == 3).then_some(())
    });
}
