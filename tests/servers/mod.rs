//! Real object-store protocol servers on loopback for the tests: moto's S3
//! server (PyPI `moto[server]`) and Azurite's blob server (npm `azurite`).
//! `./scripts/test.sh` installs both under target/; a test that needs one
//! fails loudly, saying how to install it, when it is missing or does not
//! start. Each test gets its own server on a free port, killed on drop.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ServerGuard {
    child: Child,
    pub port: u16,
    what: &'static str,
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn wait_listening(g: &mut ServerGuard) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(("127.0.0.1", g.port)).is_ok() {
            return;
        }
        if let Some(status) = g.child.try_wait().expect("poll server") {
            panic!("{} exited before listening ({status})", g.what);
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on 127.0.0.1:{} within 60 s",
            g.what,
            g.port
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn program(env: &str, default: PathBuf, how: &str) -> PathBuf {
    let p = std::env::var_os(env).map_or(default, PathBuf::from);
    assert!(
        p.exists(),
        "{} not found: run ./scripts/test.sh (it installs it) or {how}, or set {env}",
        p.display()
    );
    p
}

/// moto's S3 server with bucket `bucket` created.
pub fn moto(bucket: &str) -> ServerGuard {
    moto_on(bucket, "127.0.0.1")
}

/// [`moto`] listening on `host` (`0.0.0.0`: also on addresses a network
/// namespace reaches); the bucket is created through loopback.
pub fn moto_on(bucket: &str, host: &str) -> ServerGuard {
    let bin = program(
        "BASALT_TEST_MOTO",
        root().join("target/test-venv/bin/moto_server"),
        "pip install 'moto[server]'",
    );
    let port = free_port();
    let child = Command::new(bin)
        .args(["-H", host, "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let mut g = ServerGuard {
        child,
        port,
        what: "moto_server",
    };
    wait_listening(&mut g);
    // Bucket creation: an unsigned PUT, which moto accepts.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to moto");
    use std::io::{Read, Write};
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("create bucket");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "moto refused bucket creation: {resp}"
    );
    g
}

/// Azurite's blob server with container `container` created.
pub fn azurite(container: &str) -> ServerGuard {
    let bin = program(
        "BASALT_TEST_AZURITE",
        root().join("target/test-node/node_modules/.bin/azurite-blob"),
        "npm install azurite",
    );
    let port = free_port();
    let child = Command::new(bin)
        .args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start azurite-blob");
    let mut g = ServerGuard {
        child,
        port,
        what: "azurite-blob",
    };
    wait_listening(&mut g);
    let o = Command::new("node")
        .arg(root().join("tests/servers/azurite_create_container.js"))
        .args([&port.to_string(), container])
        .output()
        .expect("run node to create the container");
    assert!(
        o.status.success(),
        "creating container {container} on Azurite failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    g
}
