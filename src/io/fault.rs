//! A fault-injecting engine for tests: the portable engine plus scripted
//! fsync errors, torn writes and a disk that fills up. Modeled on
//! TigerBeetle's testing storage: faults are decided by a shared plan that the
//! test sets while the system runs.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::portable::PortableFile;
use super::{pin_current_thread, Engine, NetStack, WalFile};

/// What goes wrong, and when. Shared between the test and the engine.
#[derive(Debug)]
pub struct FaultPlan {
    syncs_left: AtomicU64,
    bytes_left: AtomicU64,
    tear_next_write: AtomicBool,
    /// Syncs that reached the disk, for assertions.
    pub syncs: AtomicU64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            syncs_left: AtomicU64::new(u64::MAX),
            bytes_left: AtomicU64::new(u64::MAX),
            tear_next_write: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
        }
    }
}

impl FaultPlan {
    pub fn new() -> Arc<FaultPlan> {
        Arc::new(FaultPlan::default())
    }

    /// After `n` more successful syncs, every sync fails with EIO.
    pub fn fail_syncs_after(&self, n: u64) {
        self.syncs_left.store(n, Ordering::SeqCst);
    }

    /// After `n` more bytes, writes fail with ENOSPC (the part that fits is written).
    pub fn disk_full_after(&self, n: u64) {
        self.bytes_left.store(n, Ordering::SeqCst);
    }

    /// The next write puts only the first half of its bytes on disk, then fails with EIO.
    pub fn tear_next_write(&self) {
        self.tear_next_write.store(true, Ordering::SeqCst);
    }

    /// No more faults.
    pub fn heal(&self) {
        self.syncs_left.store(u64::MAX, Ordering::SeqCst);
        self.bytes_left.store(u64::MAX, Ordering::SeqCst);
        self.tear_next_write.store(false, Ordering::SeqCst);
    }
}

#[derive(Clone, Debug)]
pub struct FaultEngine {
    pub plan: Arc<FaultPlan>,
}

pub struct FaultFile {
    inner: PortableFile,
    plan: Arc<FaultPlan>,
}

impl WalFile for FaultFile {
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        let f = &self.inner.0;
        if self.plan.tear_next_write.swap(false, Ordering::SeqCst) {
            let half = buf.len() / 2;
            let r = f.write_all_at(&buf[..half], pos);
            return (r.and(Err(io::Error::other("injected torn write"))), buf);
        }
        let len = buf.len() as u64;
        let left = self.plan.bytes_left.load(Ordering::SeqCst);
        if left != u64::MAX {
            let fits = left.min(len);
            self.plan.bytes_left.store(left - fits, Ordering::SeqCst);
            if fits < len {
                let r = f.write_all_at(&buf[..fits as usize], pos);
                return (r.and(Err(io::Error::from_raw_os_error(libc::ENOSPC))), buf);
            }
        }
        (f.write_all_at(&buf, pos), buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        let left = self.plan.syncs_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(io::Error::other("injected fsync failure (EIO)"));
        }
        if left != u64::MAX {
            self.plan.syncs_left.store(left - 1, Ordering::SeqCst);
        }
        self.inner.0.sync_data()?;
        self.plan.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Engine for FaultEngine {
    type File = FaultFile;

    fn name(&self) -> &'static str {
        "fault"
    }

    fn net_stack(&self) -> NetStack {
        NetStack::Tokio
    }

    fn run<T, F>(&self, core: Option<usize>, make: impl FnOnce() -> F) -> io::Result<T>
    where
        F: Future<Output = T>,
    {
        pin_current_thread(core);
        super::portable::run_tokio_local(make)
    }

    async fn create(&self, path: &Path) -> io::Result<FaultFile> {
        let f = crate::disk::open(path, crate::disk::Mode::CreateNew)?;
        Ok(FaultFile {
            inner: PortableFile(f),
            plan: self.plan.clone(),
        })
    }
}
