//! Reading a live table's WAL in txn order, for the uploader: every shard's
//! files, merged by txn, read incrementally as the shards append.
//!
//! Each shard's records are in ascending txn order (a shard takes its txns
//! from the table's sequencer in the order it writes them), so the next txn
//! is at the head of one of the files. Only txns the caller knows are
//! committed are asked for; their records are whole and synced. A file's
//! unwritten or torn tail just reads as "nothing yet".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::disk::{self, DiskFile, Map, Mode};

use super::format::{self, RecordHeader, FILE_HEADER_BYTES, RECORD_HEADER_BYTES};
use super::WalError;

struct TailFile {
    file: DiskFile,
    map: Option<Map>,
    /// Offset of the next record to read.
    pos: usize,
    /// Highest txn read from this file so far.
    max_txn: u64,
}

impl TailFile {
    /// The header of the record at `pos`, mapping the file again if it grew.
    fn peek(&mut self) -> Option<RecordHeader> {
        if let Some(m) = &self.map {
            if let Some((h, _)) = format::read_record(m, self.pos) {
                return Some(h);
            }
        }
        let len = self.file.len().ok()? as usize;
        if len <= self.map.as_ref().map_or(0, |m| m.len()) || len <= FILE_HEADER_BYTES {
            return None;
        }
        // WAL files are only appended to while the database runs (recovery,
        // the only thing that truncates one, runs before the uploader
        // starts); a file removed while mapped stays readable.
        self.map = self.file.map().ok();
        format::read_record(self.map.as_deref()?, self.pos).map(|(h, _)| h)
    }

    fn advance(&mut self, h: &RecordHeader) {
        self.pos += format::record_bytes(h.payload_len) as usize;
        self.max_txn = self.max_txn.max(h.txn);
    }
}

/// An incremental, txn-ordered reader of one table's WAL directory.
pub struct WalTail {
    wal_dir: PathBuf,
    /// By path: `s<shard>/<seq>.wal`, so a shard's files sort in write order.
    files: BTreeMap<PathBuf, TailFile>,
}

impl WalTail {
    pub fn new(wal_dir: &Path) -> WalTail {
        WalTail {
            wal_dir: wal_dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    /// Starts over from the first record of every file (after the caller's
    /// position moved backwards).
    pub fn rewind(&mut self) {
        self.files.clear();
    }

    /// The record of `txn` and its payload, if the WAL has it. Records of
    /// earlier txns met on the way are skipped: ask in ascending order.
    pub fn next(&mut self, txn: u64) -> Result<Option<(RecordHeader, &[u8])>, WalError> {
        Ok(self.next_record(txn)?.map(|(h, rec)| {
            (
                h,
                &rec[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.payload_len as usize],
            )
        }))
    }

    /// [`WalTail::next`], giving the whole record as the shard wrote it
    /// (header, payload, padding; checksum verified).
    pub fn next_record(&mut self, txn: u64) -> Result<Option<(RecordHeader, &[u8])>, WalError> {
        for attempt in 0..2 {
            let mut found = None;
            for (path, f) in self.files.iter_mut() {
                while let Some(h) = f.peek() {
                    if h.txn < txn {
                        f.advance(&h);
                        continue;
                    }
                    if h.txn == txn {
                        found = Some((path.clone(), h));
                    }
                    break;
                }
                if found.is_some() {
                    break;
                }
            }
            if let Some((path, h)) = found {
                let f = self.files.get_mut(&path).expect("found above");
                // Advance first, then hand out the payload at the old position.
                let pos = f.pos;
                f.advance(&h);
                let map = f.map.as_deref().expect("peeked");
                let end = pos + format::record_bytes(h.payload_len) as usize;
                return Ok(Some((h, &map[pos..end])));
            }
            if attempt == 0 {
                self.rescan()?;
            }
        }
        Ok(None)
    }

    /// Picks up files the shards started, forgets files that were removed.
    fn rescan(&mut self) -> Result<(), WalError> {
        let mut seen = Vec::new();
        let dir = &self.wal_dir;
        let shards = match disk::read_dir(dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(WalError::from_io(dir, "list", e)),
        };
        for s in shards.into_iter().filter(|s| s.is_dir) {
            let sdir = dir.join(&s.name);
            let Ok(files) = disk::read_dir(&sdir) else {
                continue;
            };
            for f in files {
                if f.name.ends_with(".wal") {
                    seen.push(sdir.join(f.name));
                }
            }
        }
        self.files.retain(|p, _| seen.contains(p));
        for path in seen {
            if self.files.contains_key(&path) {
                continue;
            }
            // A file removed between the listing and here had nothing we need.
            if let Ok(file) = disk::open(&path, Mode::Read) {
                self.files.insert(
                    path,
                    TailFile {
                        file,
                        map: None,
                        pos: FILE_HEADER_BYTES,
                        max_txn: 0,
                    },
                );
            }
        }
        Ok(())
    }

    /// Removes files no longer needed: read to a clean end, holding no txn
    /// above `release_txn`, and followed by a newer file of the same shard
    /// (so no shard appends to them any more). These are files a previous
    /// run kept for the uploader; the shards remove their own.
    pub fn remove_released(&mut self, release_txn: u64) -> u64 {
        let paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        let mut removed = 0;
        for (i, path) in paths.iter().enumerate() {
            let newer_in_shard = paths
                .get(i + 1)
                .is_some_and(|next| next.parent() == path.parent());
            let f = self.files.get_mut(path).expect("listed");
            let len = f.file.len().unwrap_or(u64::MAX) as usize;
            let consumed = f.peek().is_none() && f.pos >= len;
            if newer_in_shard
                && consumed
                && f.max_txn <= release_txn
                && disk::remove_file(path).is_ok()
            {
                self.files.remove(path);
                removed += 1;
            }
        }
        removed
    }
}
