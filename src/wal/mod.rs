//! The write-ahead log: one append-only WAL per (table, shard), framed records
//! with txn info and an xxh3 checksum, written and synced in groups.
//!
//! Layout: `<table>/_wal/s<shard>/<seq>.wal`. docs/format.md has the bytes.
//! A commit is durable once the `fdatasync` after its group's write returns.
//! After any write or sync error the writer is poisoned: it refuses further
//! work until the database is reopened (fsync is never retried: after a
//! failed fsync the kernel may have dropped the dirty pages).

pub mod format;
pub mod recovery;
pub mod retention;
pub mod tail;
pub mod writer;

use std::io;
use std::path::PathBuf;

pub use recovery::{recover_table_wal, RecoveredWal};
pub use tail::WalTail;
pub use writer::WalWriter;

use crate::batch::codec::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL {path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("WAL {path}: the disk is full; this commit failed and was not acknowledged. Free space and reopen the database; everything committed before stays readable")]
    DiskFull { path: PathBuf },
    #[error("WAL {path} refuses writes since an earlier failure ({reason}); reopen the database to recover")]
    Poisoned { path: PathBuf, reason: String },
    #[error("WAL {path} is damaged at offset {offset}: a record there fails its checksum and committed records follow it")]
    Damaged { path: PathBuf, offset: u64 },
    #[error("WAL {path} has a bad file header: {why}")]
    BadHeader { path: PathBuf, why: String },
    #[error(
        "WAL {path} has format version {version}; this build reads versions {}",
        format::FILE_VERSIONS
    )]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("WAL {path}: record of txn {txn} does not decode: {source}")]
    Payload {
        path: PathBuf,
        txn: u64,
        #[source]
        source: DecodeError,
    },
    #[error("txn {txn} appears twice in the WAL: {first} and {second}")]
    DuplicateTxn {
        txn: u64,
        first: PathBuf,
        second: PathBuf,
    },
}

impl WalError {
    /// Classifies an I/O error: ENOSPC becomes [`WalError::DiskFull`].
    pub fn from_io(path: &std::path::Path, op: &'static str, source: io::Error) -> WalError {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            WalError::DiskFull {
                path: path.to_path_buf(),
            }
        } else {
            WalError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        }
    }
}
