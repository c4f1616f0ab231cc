//! Columnar, time-partitioned tables: schema (`_meta`), committed state
//! (`_txn`), symbol dictionaries (`_sym/`), one directory per partition
//! version with one file per column. docs/format.md has every byte.
//!
//! [`TableWriter`] is the only writer of a table (the applier owns it);
//! [`TableReader`] reads a consistent committed txn from any thread or process.

pub mod files;
pub mod reader;
pub mod schema;
pub mod state;
pub mod writer;

use std::io;
use std::path::PathBuf;

pub use reader::{ScanResult, TableReader};
pub use schema::{Column, ColumnType, PartitionBy, Schema};
pub use state::{PartitionState, TableState};
pub use writer::TableWriter;

/// Names of the tables in `data_dir` (directories with a `_meta` and a
/// valid table name), sorted.
pub fn table_names(data_dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = crate::disk::read_dir(data_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .into_iter()
        .map(|e| e.name)
        .filter(|n| {
            schema::validate_name("table", n).is_ok()
                && crate::disk::is_file(&data_dir.join(n).join(files::META_FILE))
        })
        .collect();
    names.sort();
    names
}

/// The stored name of table `name`: itself, or the one table equal to it
/// ignoring ASCII case (SQL folds unquoted names to lower case; basalt
/// keeps the case a client created a table with). `None` when there is no
/// such table, or several differ only in case.
pub fn resolve_name(data_dir: &std::path::Path, name: &str) -> Option<String> {
    if schema::validate_name("table", name).is_ok()
        && crate::disk::is_file(&data_dir.join(name).join(files::META_FILE))
    {
        return Some(name.to_string());
    }
    let mut found = table_names(data_dir)
        .into_iter()
        .filter(|t| t.eq_ignore_ascii_case(name));
    match (found.next(), found.next()) {
        (Some(t), None) => Some(t),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("I/O error on {path}: {source}{hint}", hint = disk_full_hint(source))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file} is corrupt: {why}")]
    Corrupt { file: PathBuf, why: String },
    #[error("{file} has format version {version}; this build reads versions {supported}")]
    UnsupportedVersion {
        file: PathBuf,
        version: u32,
        supported: &'static str,
    },
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    #[error("invalid {what} name {name:?}: {why}")]
    InvalidName {
        what: String,
        name: String,
        why: String,
    },
    #[error("timestamp {ts_us} µs is outside the supported range (years 1 to 9999)")]
    TimestampOutOfRange { ts_us: i64 },
    #[error("table {0:?} already exists")]
    AlreadyExists(String),
    #[error("table {0:?} does not exist")]
    NotFound(String),
    #[error("no column named {0:?}")]
    NoSuchColumn(String),
    #[error("txn {txn} is not after the table's committed txn {committed}")]
    TxnOrder { txn: u64, committed: u64 },
    #[error("the scan would map {maps} files, more than the limit of {max}: narrow the time range or select fewer columns")]
    TooManyFiles { maps: usize, max: usize },
    #[error(transparent)]
    Batch(#[from] crate::batch::BatchError),
}

fn disk_full_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        " (the disk is full: free space, then reopen; committed data stays readable)"
    } else {
        ""
    }
}

impl TableError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> TableError {
        let path = path.into();
        move |source| TableError::Io { path, source }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, TableError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}
