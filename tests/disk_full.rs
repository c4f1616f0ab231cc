//! A real full disk: the database runs on a small tmpfs until writes fail
//! with ENOSPC (in the WAL, in apply or in a checkpoint, whichever comes
//! first). The error must say the disk is full, data already committed must
//! stay readable, and after space is freed a reopen must recover every
//! acknowledged commit. Needs root (it mounts a tmpfs), as CI has.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use basalt::db::{Database, DbOptions};
use basalt::gen::CpuGenerator;
use basalt::io::EngineChoice;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it and needs root: mount said {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn options(dir: &Path) -> DbOptions {
    DbOptions {
        data_dir: dir.join("data"),
        engine: EngineChoice::Portable,
        shards: 1,
        checkpoint_interval: Duration::from_millis(20),
        ..DbOptions::default()
    }
}

#[test]
fn enospc_is_reported_as_a_full_disk_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(dir.path(), "3m");
    let gen = CpuGenerator::default();
    let mut acked = Vec::new();
    let error;
    {
        let db = Database::open(options(dir.path())).unwrap();
        let t = db.create_table("cpu", gen.schema()).unwrap();
        let mut k = 0u64;
        loop {
            match db.commit(&t, gen.batch(k * 500, 500, 0)) {
                Ok(_) => acked.push(k),
                Err(e) => {
                    error = e.to_string();
                    break;
                }
            }
            k += 1;
            assert!(k < 10_000, "3 MiB never filled up");
        }
        eprintln!("after {} acknowledged commits: {error}", acked.len());
        assert!(
            error.contains("disk is full"),
            "error should name the full disk: {error}"
        );
        assert!(!acked.is_empty());
        // What readers saw before the failure is still readable and whole.
        let r = db.scan("cpu", &["requests"], None).unwrap();
        assert_eq!(r.row_count() % 500, 0, "only whole txns are visible");
        db.close();
    }
    // Free space, reopen: recovery brings back every acknowledged commit.
    fs.resize("64m");
    let db = Database::open(options(dir.path())).unwrap();
    let r = db.scan("cpu", &["requests"], None).unwrap();
    let got: std::collections::BTreeSet<i64> =
        (0..r.row_count()).map(|i| r.columns[0].i64_at(i)).collect();
    for k in &acked {
        for j in 0..500 {
            assert!(
                got.contains(&((k * 500 + j) as i64)),
                "acknowledged batch {k} lost (error was: {error})"
            );
        }
    }
    // And the database takes writes again.
    let t = db.table("cpu").unwrap();
    let txn = db.commit(&t, gen.batch(1_000_000, 10, 0)).unwrap();
    t.wait_applied(txn, Duration::from_secs(30)).unwrap();
    db.close();
    drop(fs);
}
