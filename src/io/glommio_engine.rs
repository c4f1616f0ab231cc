//! The glommio engine: each shard runs a glommio `LocalExecutor` pinned to its
//! core; WAL files use glommio's buffered file API over io_uring.

use std::future::Future;
use std::io;
use std::path::Path;

use glommio::io::BufferedFile;
use glommio::{LocalExecutorBuilder, Placement};

use super::{Engine, NetStack, WalFile};

/// Memory glommio locks for its io_uring buffers per executor. Small: WAL
/// writes use buffered files, not glommio's registered DMA buffers.
const IO_MEMORY_BYTES: usize = 512 * 1024;

#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioEngine;

impl GlommioEngine {
    /// Starts and stops an executor on a scratch thread.
    pub fn probe(&self) -> io::Result<()> {
        std::thread::spawn(|| {
            let ex = LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(IO_MEMORY_BYTES)
                .make()
                .map_err(io::Error::from)?;
            ex.run(async {});
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("glommio executor panicked while starting")))
    }
}

pub struct GlommioFile(BufferedFile);

impl WalFile for GlommioFile {
    async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        let len = buf.len();
        // BufferedFile consumes the buffer. A short write (not expected for
        // regular files) is reported as an error, which poisons the WAL.
        match self.0.write_at(buf, pos).await {
            Ok(n) if n == len => (Ok(()), Vec::new()),
            Ok(n) => (
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {n} of {len} bytes"),
                )),
                Vec::new(),
            ),
            Err(e) => (Err(e.into()), Vec::new()),
        }
    }

    async fn sync_data(&self) -> io::Result<()> {
        self.0.fdatasync().await.map_err(io::Error::from)
    }
}

impl Engine for GlommioEngine {
    type File = GlommioFile;

    fn name(&self) -> &'static str {
        "glommio"
    }

    fn net_stack(&self) -> NetStack {
        NetStack::Glommio
    }

    fn run<T, F>(&self, core: Option<usize>, make: impl FnOnce() -> F) -> io::Result<T>
    where
        F: Future<Output = T>,
    {
        let placement = match core {
            Some(c) => Placement::Fixed(c % num_cpus()),
            None => Placement::Unbound,
        };
        let ex = LocalExecutorBuilder::new(placement)
            .io_memory(IO_MEMORY_BYTES)
            .make()
            .map_err(io::Error::from)?;
        Ok(ex.run(make()))
    }

    async fn create(&self, path: &Path) -> io::Result<GlommioFile> {
        glommio::io::OpenOptions::new()
            .write(true)
            .create_new(true)
            .buffered_open(path)
            .await
            .map(GlommioFile)
            .map_err(io::Error::from)
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
