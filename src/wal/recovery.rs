//! Reading a table's WAL after a restart: every file of every shard, torn
//! tails cut, records after the table's committed txn returned in txn order.

use std::path::{Path, PathBuf};

use crate::disk::{self, Map, Mode};
use tracing::{info, warn};

use super::format::{self, FileHeaderError, RecordHeader, Tail, FILE_HEADER_BYTES};
use super::WalError;

/// A record to re-apply: where its payload is and what its header says.
#[derive(Clone, Copy, Debug)]
pub struct RecoveredRecord {
    pub header: RecordHeader,
    file: usize,
    offset: usize,
}

/// The WAL files of one table, mapped, with the records still to apply.
pub struct RecoveredWal {
    files: Vec<(PathBuf, Map)>,
    /// Highest txn in each file of `files` (0 for none).
    file_max_txn: Vec<u64>,
    /// Records with txn above the committed txn, ascending.
    pub records: Vec<RecoveredRecord>,
    /// Highest txn found in any file (0 if none).
    pub max_txn: u64,
    /// Every txn found in any file, ascending.
    pub all_txns: Vec<u64>,
    /// Bytes of torn tails cut from the files.
    pub torn_bytes_cut: u64,
}

impl RecoveredWal {
    pub fn payload(&self, r: &RecoveredRecord) -> &[u8] {
        let map = self.files[r.file].1.bytes();
        let start = r.offset + format::RECORD_HEADER_BYTES;
        &map[start..start + r.header.payload_len as usize]
    }

    pub fn path(&self, r: &RecoveredRecord) -> &Path {
        &self.files[r.file].0
    }

    /// Every WAL file found with the highest txn it holds.
    pub fn files_with_max_txn(&self) -> impl Iterator<Item = (&Path, u64)> {
        self.files
            .iter()
            .zip(&self.file_max_txn)
            .map(|((p, _), m)| (p.as_path(), *m))
    }
}

fn wal_files(wal_dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let mut out = Vec::new();
    if !disk::exists(wal_dir) {
        return Ok(out);
    }
    let shards = disk::read_dir(wal_dir).map_err(|e| WalError::from_io(wal_dir, "list", e))?;
    for s in shards.into_iter().filter(|s| s.is_dir) {
        let sdir = wal_dir.join(&s.name);
        let files = disk::read_dir(&sdir).map_err(|e| WalError::from_io(&sdir, "list", e))?;
        for f in files {
            if f.name.ends_with(".wal") {
                out.push(sdir.join(f.name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every WAL file under `wal_dir`, cutting torn tails, and returns the
/// records with txn above `committed_txn` in txn order.
pub fn recover_table_wal(wal_dir: &Path, committed_txn: u64) -> Result<RecoveredWal, WalError> {
    let mut files = Vec::new();
    let mut file_max_txn = Vec::new();
    let mut records = Vec::new();
    let mut max_txn = 0;
    let mut all_txns = Vec::new();
    let mut torn_bytes_cut = 0;
    for path in wal_files(wal_dir)? {
        let file =
            disk::open(&path, Mode::Write).map_err(|e| WalError::from_io(&path, "open", e))?;
        let len = file
            .len()
            .map_err(|e| WalError::from_io(&path, "stat", e))?;
        // Recovery runs before any writer of this table exists; nothing else
        // writes the file while it is mapped, and the only change (set_len)
        // happens after the map is dropped below.
        let map = file
            .map()
            .map_err(|e| WalError::from_io(&path, "mmap", e))?;
        let bytes = map.bytes();
        match format::decode_file_header(bytes) {
            Ok(_) => {}
            // Created but never synced: an fdatasync of any group would have
            // made the header durable, so nothing acknowledged is in here.
            Err(_) if bytes.len() <= FILE_HEADER_BYTES || bytes.iter().all(|b| *b == 0) => {
                info!(path = %path.display(), "WAL file with no synced header: nothing to recover");
                files.push((path, Map::Empty));
                file_max_txn.push(0);
                continue;
            }
            Err(FileHeaderError::Version(version)) => {
                return Err(WalError::UnsupportedVersion { path, version })
            }
            Err(e) => {
                return Err(WalError::BadHeader {
                    path,
                    why: format!("{e:?}"),
                })
            }
        }
        let (found, tail) = format::scan(bytes);
        let file_idx = files.len();
        let valid_end = match tail {
            Tail::Clean => None,
            Tail::Torn { bytes: cut } => Some(len - cut),
            Tail::Damaged { offset } => return Err(WalError::Damaged { path, offset }),
        };
        let mut file_max = 0;
        for (offset, header) in found {
            max_txn = max_txn.max(header.txn);
            file_max = file_max.max(header.txn);
            all_txns.push(header.txn);
            if header.txn > committed_txn {
                records.push(RecoveredRecord {
                    header,
                    file: file_idx,
                    offset,
                });
            }
        }
        let map = match valid_end {
            None => map,
            Some(end) => {
                warn!(
                    path = %path.display(),
                    cut_bytes = len - end,
                    "cutting torn WAL tail (an unsynced write, never acknowledged)"
                );
                drop(map);
                torn_bytes_cut += len - end;
                file.set_len(end)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| WalError::from_io(&path, "truncate torn tail", e))?;
                // As above; the file no longer changes.
                file.map()
                    .map_err(|e| WalError::from_io(&path, "mmap", e))?
            }
        };
        files.push((path, map));
        file_max_txn.push(file_max);
    }
    records.sort_by_key(|r| r.header.txn);
    all_txns.sort_unstable();
    if let Some(w) = records
        .windows(2)
        .find(|w| w[0].header.txn == w[1].header.txn)
    {
        return Err(WalError::DuplicateTxn {
            txn: w[0].header.txn,
            first: files[w[0].file].0.clone(),
            second: files[w[1].file].0.clone(),
        });
    }
    Ok(RecoveredWal {
        files,
        file_max_txn,
        records,
        max_txn,
        all_txns,
        torn_bytes_cut,
    })
}
