//! The `basalt` command as a user runs it: the demo ingests through the WAL,
//! `tables` and `scan` read it back, and bad input gets a clear error.

use std::process::{Command, Output};

fn basalt(data: &std::path::Path, args: &[&str]) -> Output {
    basalt_logging(data, args, "warn")
}

/// [`basalt`] with its log filter at `level`.
fn basalt_logging(data: &std::path::Path, args: &[&str], level: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_basalt"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("BASALT_LOG", level)
        .output()
        .expect("run basalt")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn demo_then_tables_then_scan() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = basalt(
        &data,
        &[
            "demo",
            "--rows",
            "20000",
            "--batch-rows",
            "1000",
            "--io-engine",
            "portable",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("ingested 20000 rows of cpu in 20 txns"),
        "{out}"
    );
    assert!(out.contains("scan of cpu at txn 20: 20000 rows"), "{out}");

    let o = basalt(&data, &["tables"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("cpu\t20\t1\t20000\treplicated"),
        "{}",
        stdout(&o)
    );

    let o = basalt(
        &data,
        &[
            "scan",
            "cpu",
            "--columns",
            "host,requests,ts",
            "--limit",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "host\trequests\tts");
    assert_eq!(lines[1], "host_00\t0\t2024-01-01T00:00:00.000000Z");
    assert_eq!(lines[2], "host_01\t1\t2024-01-01T00:00:00.000001Z");
    assert!(out.contains("(20000 rows at txn 20)"), "{out}");

    // A time range: [BASE + 10 µs, BASE + 15 µs) holds rows 10..15.
    let o = basalt(
        &data,
        &[
            "scan",
            "cpu",
            "--columns",
            "requests",
            "--from-us",
            "1704067200000010",
            "--to-us",
            "1704067200000015",
        ],
    );
    assert!(stdout(&o).contains("(5 rows at txn 20)"), "{}", stdout(&o));
}

#[test]
fn bad_input_gets_a_clear_error_and_a_failing_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = basalt(&data, &["demo", "--io-engine", "uring"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("expected auto, glommio, tokio-uring or portable"),
        "{}",
        stderr(&o)
    );

    let o = basalt(&data, &["scan", "nope"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("table \"nope\" does not exist"),
        "{}",
        stderr(&o)
    );

    let o = basalt(&data, &["scan", "../etc"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("invalid table name"), "{}", stderr(&o));

    // A replica follows a store: without one it would follow nothing.
    let o = basalt(
        &data,
        &["serve", "--role", "replica", "--object-store", "off"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--role replica needs --object-store"),
        "{}",
        stderr(&o)
    );
    let o = basalt(
        &data,
        &["serve", "--object-store", "off", "--ack-after", "upload"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--ack-after upload needs an object store"),
        "{}",
        stderr(&o)
    );

    // Snapshot and retention options: bad values named, nonsense refused.
    for (args, want) in [
        (
            &["serve", "--snapshot-interval", "6 hours"][..],
            "--snapshot-interval: \"6 hours\": unknown unit",
        ),
        (
            &["serve", "--snapshot-interval", "0s"][..],
            "--snapshot-interval must be at least 1s",
        ),
        (
            &["serve", "--retention", "7d", "--retention-grace", "off"][..],
            "--retention-grace cannot be off",
        ),
        (
            &["serve", "--retention", "7d", "--retention-snapshots", "0"][..],
            "--retention-snapshots must be at least 1",
        ),
        (
            &[
                "serve",
                "--object-store",
                "off",
                "--snapshot-interval",
                "1h",
            ][..],
            "need an object store",
        ),
        (
            &["restore", "--data-dir", "x"][..],
            "--object-store is required",
        ),
        (
            &[
                "restore",
                "--object-store",
                "fs::root=/nonexistent-basalt;",
                "--to-time",
                "yesterday",
            ][..],
            "neither RFC 3339",
        ),
        (
            &[
                "restore",
                "--object-store",
                "fs::root=/nonexistent-basalt;",
                "--to-txn",
                "cpu",
            ][..],
            "is not TABLE=N",
        ),
    ] {
        let o = basalt(&data, args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }

    let o = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .arg("--help")
        .output()
        .unwrap();
    let help = stdout(&o);
    for flag in [
        "--data-dir",
        "--io-engine",
        "--shards",
        "--checkpoint-interval-ms",
        "demo",
        "scan",
        "tables",
        "restore",
        "backups",
        "--snapshot-interval",
        "--retention",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
    assert!(
        !help.contains("crash-child"),
        "test-only subcommand is hidden"
    );
}

#[test]
fn ingest_ilp_from_stdin_then_scan() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_basalt"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--io-engine", "portable", "ingest", "-", "--precision", "u"])
        .env("BASALT_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"weather,city=Paris temp=11.5,wet=t 1704067200000000\nweather,city=Oslo temp=-3.0 1704067200000001\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("weather: 2 rows committed as txn 1"),
        "{}",
        stdout(&o)
    );
    let o = basalt(&data, &["scan", "weather"]);
    let out = stdout(&o);
    assert!(out.contains("city\ttemp\twet\ttimestamp"), "{out}");
    assert!(
        out.contains("Oslo\t-3\tnull\t2024-01-01T00:00:00.000001Z"),
        "{out}"
    );

    // A bad line: nothing committed, the line named, a failing exit code.
    let bad = dir.path().join("bad.ilp");
    std::fs::write(&bad, "weather,city=Rome temp=20.0\nweather temp=\"hot\"\n").unwrap();
    let o = basalt(&data, &["ingest", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("line 2: column \"temp\" is DOUBLE; a string value cannot go into it"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&basalt(&data, &["scan", "weather"])).contains("(2 rows at txn 1)"));
}

/// Logs written to a pipe or a file carry no ANSI colour codes (a log
/// shipper or `grep` would see them as text); they still say what happened.
#[test]
fn redirected_logs_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let o = basalt_logging(
        &dir.path().join("data"),
        &["demo", "--rows", "1000", "--io-engine", "portable"],
        "info",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("INFO"), "no log lines: {err}");
    assert!(
        !err.contains('\x1b'),
        "colour codes in a redirected log: {err:?}"
    );
}

/// `--log-format json` writes one JSON object per line (for log shippers),
/// with the level, the message and the fields.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let o = basalt_logging(
        &dir.path().join("data"),
        &[
            "--log-format",
            "json",
            "demo",
            "--rows",
            "1000",
            "--io-engine",
            "portable",
        ],
        "info",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
        assert!(l["fields"]["message"].is_string(), "{l}");
    }
    // A bad value is refused by name, before anything runs.
    let o = basalt(dir.path(), &["--log-format", "xml", "tables"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("xml"), "{}", stderr(&o));
}
