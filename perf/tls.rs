//! TLS against plaintext in the same run: the TCP and HTTP replays with the
//! same ILP text, each once in the clear and once over TLS (rustls on both
//! sides, the node's `--tls-cert`), and the time to open a connection and
//! get one answer, with and without TLS. The certificates come from
//! scripts/test-pki.sh.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::node::{self, KeepAlive};
use super::{measure_with, Run};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read the test CA") {
        roots.add(c.expect("a PEM certificate")).expect("a CA");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn connect_tls(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> Tls {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let conn = rustls::ClientConnection::new(config.clone(), name).expect("a TLS client");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_nodelay(true).expect("nodelay");
    rustls::StreamOwned::new(conn, sock)
}

fn ratio(what: &str, plain: &Run, tls: &Run) {
    let rate = |r: &Run| r.rows as f64 / r.visible.as_secs_f64();
    println!(
        "  {what}: TLS rows/s = {:.1}% of plaintext; server CPU per row {:.3} µs over TLS, {:.3} µs plaintext (+{:.1}%); client CPU per row {:.3} µs over TLS, {:.3} µs plaintext",
        100.0 * rate(tls) / rate(plain),
        tls.cpu_s * 1e6 / tls.rows as f64,
        plain.cpu_s * 1e6 / plain.rows as f64,
        100.0 * (tls.cpu_s / tls.rows as f64) / (plain.cpu_s / plain.rows as f64) - 100.0,
        tls.client_cpu_s * 1e6 / tls.rows as f64,
        plain.client_cpu_s * 1e6 / plain.rows as f64,
    );
}

/// POSTs every body on one keep-alive connection; each must be 204.
fn post_each<S: Read + Write>(mut c: KeepAlive<S>, bodies: &[Vec<u8>]) {
    for b in bodies {
        assert_eq!(c.post(b), 204);
    }
}

pub fn compare(base: &Path, rows: u64, conns: usize) {
    let pki = base.join("pki");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-pki.sh");
    let ok = std::process::Command::new(script)
        .arg(&pki)
        .status()
        .expect("run scripts/test-pki.sh");
    assert!(ok.success(), "scripts/test-pki.sh failed");
    let (cert, key) = (pki.join("node.pem"), pki.join("node.key"));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let tls_args = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let config = client_config(&pki.join("ca.pem"));
    for c in [conns, 1] {
        let super::Replay {
            names,
            texts,
            rows: total,
            bytes,
        } = super::tcp_texts(rows, c);
        let ((), plain) = measure_with(
            &base.join("tcp"),
            &[],
            format!("TCP replay, {c} conns, plaintext"),
            &names,
            total,
            bytes,
            |server| node::tcp_send_all(server.ilp, &texts),
        );
        let ((), tls) = measure_with(
            &base.join("tcp"),
            &tls_args,
            format!("TCP replay, {c} conns, TLS"),
            &names,
            total,
            bytes,
            |server| {
                std::thread::scope(|s| {
                    for text in &texts {
                        let config = &config;
                        s.spawn(move || {
                            let mut t = connect_tls(server.ilp, config);
                            for chunk in text.chunks(1 << 20) {
                                t.write_all(chunk).expect("send ILP over TLS");
                            }
                            t.flush().expect("flush");
                            t.conn.send_close_notify();
                            let _ = t.flush();
                        });
                    }
                })
            },
        );
        ratio(&format!("ILP/TCP, {c} conns"), &plain, &tls);
    }

    // HTTP: 10,000-row requests on keep-alive connections.
    let (names, bodies, total) = super::http_bodies(rows, conns, 10_000);
    let bytes: u64 = bodies.iter().flatten().map(|b| b.len() as u64).sum();
    let post_all = |addr: SocketAddr, tls: bool| {
        std::thread::scope(|s| {
            for mine in &bodies {
                let config = &config;
                s.spawn(move || {
                    if tls {
                        post_each(KeepAlive::over(connect_tls(addr, config)), mine);
                    } else {
                        post_each(KeepAlive::connect(addr), mine);
                    }
                });
            }
        })
    };
    let ((), plain) = measure_with(
        &base.join("http"),
        &[],
        format!("HTTP 10000-row requests, {conns} conns, plaintext"),
        &names,
        total,
        bytes,
        |server| post_all(server.http, false),
    );
    let ((), tls) = measure_with(
        &base.join("http"),
        &tls_args,
        format!("HTTP 10000-row requests, {conns} conns, TLS"),
        &names,
        total,
        bytes,
        |server| post_all(server.http, true),
    );
    ratio(&format!("ILP/HTTP, {conns} conns"), &plain, &tls);

    // Set-up: a new connection, one GET /ping, its answer.
    const CONNECTIONS: usize = 500;
    for tls in [false, true] {
        let server = super::start_server(&base.join("setup"), if tls { &tls_args } else { &[] });
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        let mut buf = [0u8; 512];
        for _ in 0..CONNECTIONS {
            let t = Instant::now();
            let req = b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            let n = if tls {
                let mut s = connect_tls(server.http, &config);
                s.write_all(req).expect("send");
                s.read(&mut buf).expect("answer")
            } else {
                let mut s = TcpStream::connect(server.http).expect("connect");
                s.write_all(req).expect("send");
                s.read(&mut buf).expect("answer")
            };
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 204"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            );
            h.record(t.elapsed().as_micros() as u64).expect("record");
        }
        println!(
            "  connect + GET /ping ({}): p50 {} µs  p99 {} µs  max {} µs over {CONNECTIONS} connections",
            if tls { "TLS 1.3, P-256 certificate" } else { "plaintext" },
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max()
        );
    }
}
