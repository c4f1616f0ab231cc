//! The WAL writer of one (table, shard): group write, one fdatasync, rotation.

use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use crate::disk;
use crate::io::{Engine, WalFile};

use super::format::{encode_file_header, FILE_HEADER_BYTES};
use super::WalError;

/// Default size at which a WAL file is closed and the next one started.
pub const WAL_FILE_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

pub struct WalWriter<F> {
    dir: PathBuf,
    shard: u32,
    file: F,
    path: PathBuf,
    seq: u64,
    pos: u64,
    file_max_txn: u64,
    file_bytes_max: u64,
    /// Closed files and the highest txn each holds; removable once applied.
    closed: Vec<(PathBuf, u64)>,
    poisoned: Option<String>,
}

/// `<seq>.wal`, zero-padded so names sort in write order.
pub fn file_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn parse_file_name(name: &str) -> Option<u64> {
    name.strip_suffix(".wal")?.parse().ok()
}

/// Highest file sequence number in `dir`, if any.
fn last_seq(dir: &Path) -> Result<Option<u64>, WalError> {
    let entries = disk::read_dir(dir).map_err(|e| WalError::from_io(dir, "list", e))?;
    let mut last = None;
    for e in entries {
        if let Some(seq) = parse_file_name(&e.name) {
            last = last.max(Some(seq));
        }
    }
    Ok(last)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    disk::sync_dir(dir).map_err(|e| WalError::from_io(dir, "fsync directory", e))
}

impl<F: WalFile> WalWriter<F> {
    /// Opens a new WAL file for `shard` in `wal_dir/s<shard>/`, after any files already there.
    pub async fn create<E: Engine<File = F>>(
        engine: &E,
        wal_dir: &Path,
        shard: u32,
        file_bytes_max: u64,
    ) -> Result<WalWriter<F>, WalError> {
        let dir = wal_dir.join(format!("s{shard}"));
        if !disk::exists(&dir) {
            disk::create_dir_all(&dir)
                .map_err(|e| WalError::from_io(&dir, "create directory", e))?;
            sync_dir(wal_dir)?;
        }
        let seq = last_seq(&dir)?.map_or(0, |s| s + 1);
        let (file, path) = Self::create_file(engine, &dir, shard, seq).await?;
        Ok(WalWriter {
            dir,
            shard,
            file,
            path,
            seq,
            pos: FILE_HEADER_BYTES as u64,
            file_max_txn: 0,
            file_bytes_max,
            closed: Vec::new(),
            poisoned: None,
        })
    }

    async fn create_file<E: Engine<File = F>>(
        engine: &E,
        dir: &Path,
        shard: u32,
        seq: u64,
    ) -> Result<(F, PathBuf), WalError> {
        let path = dir.join(file_name(seq));
        let file = engine
            .create(&path)
            .await
            .map_err(|e| WalError::from_io(&path, "create", e))?;
        let (r, _) = file
            .write_all_at(encode_file_header(shard, seq).to_vec(), 0)
            .await;
        r.map_err(|e| WalError::from_io(&path, "write header", e))?;
        // The header is synced on its own: a torn first group must never
        // leave a file whose header recovery cannot read.
        file.sync_data()
            .await
            .map_err(|e| WalError::from_io(&path, "fdatasync header", e))?;
        sync_dir(dir)?;
        debug!(path = %path.display(), "opened WAL file");
        Ok((file, path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the writer refuses work, if it does.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Starts a group: rotates to a new file if this one is full, and returns
    /// the offset the group will be written at (records name it as `group_start`).
    pub async fn begin_group<E: Engine<File = F>>(&mut self, engine: &E) -> Result<u64, WalError> {
        if let Some(reason) = &self.poisoned {
            return Err(WalError::Poisoned {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        if self.pos >= self.file_bytes_max {
            if let Err(e) = self.rotate(engine).await {
                self.poisoned = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(self.pos)
    }

    /// Writes one group of framed records (see `format::append_record`),
    /// started with [`WalWriter::begin_group`], and syncs it. Returns the buffer for reuse. Any failure poisons the writer.
    pub async fn write_group(&mut self, group: Vec<u8>, max_txn: u64) -> Result<Vec<u8>, WalError> {
        if let Some(reason) = &self.poisoned {
            return Err(WalError::Poisoned {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let result = self.write_group_inner(group, max_txn).await;
        if let Err(e) = &result {
            warn!(wal = %self.path.display(), error = %e, "WAL write failed; refusing further writes until reopened");
            self.poisoned = Some(e.to_string());
        }
        result
    }

    async fn write_group_inner(
        &mut self,
        group: Vec<u8>,
        max_txn: u64,
    ) -> Result<Vec<u8>, WalError> {
        let len = group.len() as u64;
        let (r, buf) = self.file.write_all_at(group, self.pos).await;
        r.map_err(|e| WalError::from_io(&self.path, "write", e))?;
        self.file
            .sync_data()
            .await
            .map_err(|e| WalError::from_io(&self.path, "fdatasync", e))?;
        self.pos += len;
        self.file_max_txn = self.file_max_txn.max(max_txn);
        Ok(buf)
    }

    async fn rotate<E: Engine<File = F>>(&mut self, engine: &E) -> Result<(), WalError> {
        let seq = self.seq + 1;
        let (file, path) = Self::create_file(engine, &self.dir, self.shard, seq).await?;
        let old = std::mem::replace(&mut self.path, path);
        self.closed.push((old, self.file_max_txn));
        self.file = file;
        self.seq = seq;
        self.pos = FILE_HEADER_BYTES as u64;
        self.file_max_txn = 0;
        Ok(())
    }

    /// Removes closed files whose txns are all applied durably (`applied_txn`).
    pub fn remove_applied(&mut self, applied_txn: u64) {
        self.closed.retain(|(path, max_txn)| {
            if *max_txn > applied_txn {
                return true;
            }
            match disk::remove_file(path) {
                Ok(()) => false,
                // The uploader removed it (replication keeps files longer).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "could not remove applied WAL file");
                    true
                }
            }
        });
    }
}
