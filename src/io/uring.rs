//! The tokio-uring engine: each shard runs a current-thread tokio-uring
//! runtime on its pinned thread.

use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use super::{pin_current_thread, Engine, NetStack, WalFile};

/// Submission queue entries per shard ring.
const RING_ENTRIES: u32 = 256;

#[derive(Clone, Copy, Debug, Default)]
pub struct TokioUringEngine;

pub struct TokioUringFile(tokio_uring::fs::File);

impl WalFile for TokioUringFile {
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        self.0.write_all_at(buf, pos).await
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data().await
    }
}

impl Engine for TokioUringEngine {
    type File = TokioUringFile;

    fn name(&self) -> &'static str {
        "tokio-uring"
    }

    fn net_stack(&self) -> NetStack {
        NetStack::Tokio
    }

    fn run<T, F>(&self, core: Option<usize>, make: impl FnOnce() -> F) -> io::Result<T>
    where
        F: Future<Output = T>,
    {
        pin_current_thread(core);
        // tokio-uring panics when the ring cannot be set up; report it as an error.
        catch_unwind(AssertUnwindSafe(|| {
            tokio_uring::builder().entries(RING_ENTRIES).start(make())
        }))
        .map_err(|_| {
            io::Error::other("tokio-uring runtime failed to start (io_uring unavailable?)")
        })
    }

    async fn create(&self, path: &Path) -> io::Result<TokioUringFile> {
        tokio_uring::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .await
            .map(TokioUringFile)
    }
}
