//! fio, the yardstick every perf figure is printed beside.

use std::path::Path;
use std::process::Command;

pub struct Fio {
    pub sync_p50_us: f64,
    pub sync_p99_us: f64,
    pub sync_p999_us: f64,
    pub write_p99_us: f64,
    pub mb_per_s: f64,
}

/// Runs fio's sequential write with one fdatasync per `bs` bytes.
pub fn fio(dir: &Path, bs: usize, size_mb: usize) -> Option<Fio> {
    let out = Command::new("fio")
        .args([
            "--name=basalt-yardstick",
            &format!("--directory={}", dir.display()),
            "--ioengine=io_uring",
            "--rw=write",
            &format!("--bs={bs}"),
            "--fdatasync=1",
            &format!("--size={size_mb}m"),
            "--output-format=json",
        ])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!("fio failed: {}", String::from_utf8_lossy(&o.stderr));
            return None;
        }
        Err(e) => {
            eprintln!(
                "fio not runnable ({e}); install it with `apt-get install fio` for the yardstick"
            );
            return None;
        }
    };
    let _ = std::fs::remove_file(dir.join("basalt-yardstick.0.0"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let job = &v["jobs"][0];
    let pct = |section: &str, key: &str, p: &str| {
        job[section][key]["percentile"][p]
            .as_f64()
            .unwrap_or(f64::NAN)
            / 1000.0
    };
    Some(Fio {
        sync_p50_us: pct("sync", "lat_ns", "50.000000"),
        sync_p99_us: pct("sync", "lat_ns", "99.000000"),
        sync_p999_us: pct("sync", "lat_ns", "99.900000"),
        write_p99_us: pct("write", "clat_ns", "99.000000"),
        mb_per_s: job["write"]["bw_bytes"].as_f64().unwrap_or(f64::NAN) / 1e6,
    })
}
