//! The portable engine: `pwrite` + `fdatasync` on a plain thread. Its futures
//! complete immediately; the shard loop runs under a minimal `block_on`.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{pin_current_thread, Engine, WalFile};

#[derive(Clone, Copy, Debug, Default)]
pub struct PortableEngine;

pub struct PortableFile(pub(crate) File);

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

    fn run<T, F>(&self, core: Option<usize>, make: impl FnOnce() -> F) -> io::Result<T>
    where
        F: Future<Output = T>,
    {
        pin_current_thread(core);
        Ok(futures_lite::future::block_on(make()))
    }

    async fn create(&self, path: &Path) -> io::Result<PortableFile> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map(PortableFile)
    }
}
