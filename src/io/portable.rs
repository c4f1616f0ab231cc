//! The portable engine: `pwrite` + `fdatasync` on a plain thread. Its file
//! futures complete immediately; the shard's tasks (commit loop, network
//! connections) run on a tokio current-thread runtime with epoll.

use std::future::Future;
use std::io;
use std::path::Path;

use crate::disk::{self, DiskFile, Mode};

use super::{pin_current_thread, Engine, NetStack, WalFile};

/// Runs `make()` on a tokio current-thread runtime with a `LocalSet`, so
/// `!Send` tasks can be spawned next to it.
pub fn run_tokio_local<T, F>(make: impl FnOnce() -> F) -> io::Result<T>
where
    F: Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let local = tokio::task::LocalSet::new();
    Ok(local.block_on(&rt, make()))
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PortableEngine;

/// A WAL file through the disk seam ([`crate::disk`]): real or simulated.
pub struct PortableFile(pub(crate) DiskFile);

impl WalFile for PortableFile {
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        (self.0.write_all_at(&buf, pos), buf)
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Engine for PortableEngine {
    type File = PortableFile;

    fn name(&self) -> &'static str {
        "portable"
    }

    fn net_stack(&self) -> NetStack {
        NetStack::Tokio
    }

    fn run<T, F>(&self, core: Option<usize>, make: impl FnOnce() -> F) -> io::Result<T>
    where
        F: Future<Output = T>,
    {
        pin_current_thread(core);
        run_tokio_local(make)
    }

    async fn create(&self, path: &Path) -> io::Result<PortableFile> {
        disk::open(path, Mode::CreateNew).map(PortableFile)
    }
}
