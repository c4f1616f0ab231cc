//! File primitives for table files, and the one place that says which fsyncs
//! happen and why.
//!
//! fsync rules (docs/format.md, "Which fsyncs happen, and why"):
//! 1. Apply writes column and symbol files and publishes `_txn` with an atomic
//!    rename but no fsync ([`replace`]): readers see it at once; it is durable
//!    only in the WAL.
//! 2. A checkpoint `fdatasync`s every file written since the last one, fsyncs
//!    new directories, then replaces `_ckpt` durably ([`durable_replace`]:
//!    write temp → fsync → rename → fsync directory). WAL is removed only up
//!    to the `_ckpt` txn.
//! 3. Recovery trusts `_ckpt`, never `_txn` (which may count bytes a power
//!    loss took).

use std::path::{Path, PathBuf};

use super::TableError;
use crate::disk::{self, DiskFile, Mode};

/// An open table file (on the real or a simulated disk, see [`crate::disk`]).
pub type File = DiskFile;

pub const META_FILE: &str = "_meta";
pub const TXN_FILE: &str = "_txn";
pub const CKPT_FILE: &str = "_ckpt";
pub const SYMBOL_DIR: &str = "_sym";
pub const WAL_DIR: &str = "_wal";

/// Data file of a column: fixed values, boolean bits, or varchar bytes.
pub fn data_file(column: &str) -> String {
    format!("{column}.d")
}
/// Offsets file of a varchar column or symbol dictionary.
pub fn offsets_file(column: &str) -> String {
    format!("{column}.o")
}
/// Validity bitmap of a column.
pub fn validity_file(column: &str) -> String {
    format!("{column}.v")
}

/// Directory name of partition `name` at `version`.
pub fn partition_dir(name: &str, version: u64) -> String {
    format!("{name}.{version}")
}

/// Splits a partition directory name into (name, version).
pub fn parse_partition_dir(dir: &str) -> Option<(&str, u64)> {
    let (name, v) = dir.rsplit_once('.')?;
    Some((name, v.parse().ok()?))
}

pub fn fsync_dir(dir: &Path) -> Result<(), TableError> {
    disk::sync_dir(dir).map_err(TableError::io(dir))
}

/// Replaces `dir/name` with `bytes` atomically and durably.
pub fn durable_replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TableError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    disk::write(&tmp, bytes)
        .and_then(|_| disk::open(&tmp, Mode::Write)?.sync_all())
        .map_err(TableError::io(&tmp))?;
    disk::rename(&tmp, &target).map_err(TableError::io(&target))?;
    fsync_dir(dir)
}

/// Replaces `dir/name` with `bytes` atomically for readers, without fsync.
pub fn replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), TableError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    disk::write(&tmp, bytes).map_err(TableError::io(&tmp))?;
    disk::rename(&tmp, &target).map_err(TableError::io(&target))
}

/// Reads a whole small file (`_meta`, `_txn`).
pub fn read_file(path: &Path) -> Result<Vec<u8>, TableError> {
    disk::read(path).map_err(TableError::io(path))
}

/// Maps a file read-only; an empty file maps to an empty slice.
pub fn map(path: &Path) -> Result<MappedFile, TableError> {
    // basalt never rewrites bytes below a committed row count in place
    // (appends go past it; merges write a new partition version), so the bytes
    // a reader looks at do not change while mapped. Truncation happens only
    // during recovery, before any reader of this process exists.
    let map = disk::map(path).map_err(TableError::io(path))?;
    Ok(MappedFile { map })
}

pub struct MappedFile {
    map: disk::Map,
}

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl MappedFile {
    pub fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }

    pub fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// A corruption error unless the file holds at least `len` bytes.
    pub fn require(&self, path: &Path, len: u64) -> Result<(), TableError> {
        self.slice(path, 0, len).map(|_| ())
    }

    /// `len` bytes at `offset`, or a corruption error naming `path`.
    pub fn slice(&self, path: &Path, offset: u64, len: u64) -> Result<&[u8], TableError> {
        let b = self.bytes();
        let end = offset.checked_add(len).filter(|e| *e <= b.len() as u64);
        match end {
            Some(end) => Ok(&b[offset as usize..end as usize]),
            None => Err(TableError::Corrupt {
                file: path.to_path_buf(),
                why: format!("needs {len} bytes at offset {offset}, file has {}", b.len()),
            }),
        }
    }
}

/// Files and directories written since the last checkpoint, synced together
/// before `_ckpt` moves.
#[derive(Default)]
pub struct SyncSet {
    files: Vec<(PathBuf, File)>,
    dirs: Vec<PathBuf>,
}

impl SyncSet {
    /// Opens `path` for writing (creating it), remembering it for [`SyncSet::sync`].
    pub fn open(&mut self, path: PathBuf) -> Result<&File, TableError> {
        let f = open_rw(&path)?;
        self.files.push((path, f));
        Ok(&self.files.last().expect("just pushed").1)
    }

    pub fn add_dir(&mut self, dir: PathBuf) {
        if !self.dirs.contains(&dir) {
            self.dirs.push(dir);
        }
    }

    /// Hands the files to `dirty` for the next checkpoint. The first handle
    /// of each file is kept open until then, so a writeback error the kernel
    /// reports on it cannot be lost by closing and reopening the file.
    pub fn defer(self, dirty: &mut Dirty) {
        for (p, f) in self.files {
            dirty.files.entry(p).or_insert(f);
        }
        dirty.dirs.extend(self.dirs);
    }

    /// fdatasyncs every file, then fsyncs every directory.
    pub fn sync(self) -> Result<(), TableError> {
        for (path, f) in &self.files {
            f.sync_data().map_err(TableError::io(path))?;
        }
        for d in &self.dirs {
            fsync_dir(d)?;
        }
        Ok(())
    }
}

/// Files and directories written since the last checkpoint.
#[derive(Debug, Default)]
pub struct Dirty {
    pub files: std::collections::BTreeMap<PathBuf, File>,
    pub dirs: std::collections::BTreeSet<PathBuf>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }

    /// fdatasyncs every file, then fsyncs every directory (children before parents).
    pub fn sync(&mut self) -> Result<(), TableError> {
        for (path, f) in &self.files {
            f.sync_data().map_err(TableError::io(path))?;
        }
        let mut dirs: Vec<&PathBuf> = self.dirs.iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            fsync_dir(d)?;
        }
        self.files.clear();
        self.dirs.clear();
        Ok(())
    }
}

/// Opens `path` for reading and writing, creating it, never truncating.
pub fn open_rw(path: &Path) -> Result<File, TableError> {
    disk::open(path, Mode::Create).map_err(TableError::io(path))
}

pub fn write_at(f: &File, path: &Path, bytes: &[u8], pos: u64) -> Result<(), TableError> {
    f.write_all_at(bytes, pos).map_err(TableError::io(path))
}

/// Writes one-byte-per-row `flags` as bits `first..first+flags.len()` of an
/// LSB-first bitmap file, keeping the bits below `first` and clearing any
/// stale bits above them in the shared byte.
pub fn append_bits(f: &File, path: &Path, first: u64, flags: &[u8]) -> Result<(), TableError> {
    let byte0 = first / 8;
    let shift = (first % 8) as usize;
    let mut existing = [0u8; 1];
    if shift > 0 {
        f.read_exact_at(&mut existing, byte0)
            .map_err(TableError::io(path))?;
        existing[0] &= (1u8 << shift) - 1;
    }
    let total = shift + flags.len();
    let mut out = vec![0u8; total.div_ceil(8)];
    if let Some(b) = out.first_mut() {
        *b = existing[0];
    }
    for (i, v) in flags.iter().enumerate() {
        let bit = shift + i;
        out[bit / 8] |= ((*v != 0) as u8) << (bit % 8);
    }
    write_at(f, path, &out, byte0)
}

/// Sets bits `first..first+n` of an LSB-first bitmap file to 1 (the
/// validity of a column without nulls), like [`append_bits`] with all ones.
pub fn append_ones(f: &File, path: &Path, first: u64, n: usize) -> Result<(), TableError> {
    let byte0 = first / 8;
    let shift = (first % 8) as usize;
    let total = shift + n;
    let mut out = vec![0xFFu8; total.div_ceil(8)];
    if out.is_empty() {
        return Ok(());
    }
    if shift > 0 {
        let mut existing = [0u8; 1];
        f.read_exact_at(&mut existing, byte0)
            .map_err(TableError::io(path))?;
        let low = (1u8 << shift) - 1;
        out[0] = (existing[0] & low) | !low;
    }
    if !total.is_multiple_of(8) {
        let last = out.len() - 1;
        out[last] &= (1u8 << (total % 8)) - 1;
    }
    write_at(f, path, &out, byte0)
}

/// Cuts `path` to `len` bytes if it is longer (recovery of an interrupted
/// append). A file shorter than `len` is corruption.
pub fn truncate_to(path: &Path, len: u64) -> Result<(), TableError> {
    let f = disk::open(path, Mode::Write).map_err(TableError::io(path))?;
    let actual = f.len().map_err(TableError::io(path))?;
    if actual < len {
        return Err(TableError::Corrupt {
            file: path.to_path_buf(),
            why: format!("has {actual} bytes, committed state needs {len}"),
        });
    }
    if actual > len {
        f.set_len(len).map_err(TableError::io(path))?;
        f.sync_all().map_err(TableError::io(path))?;
    }
    Ok(())
}

/// Truncates a bitmap file to `bits` bits and clears the unused bits of its
/// last byte, so the file's bytes depend only on committed rows.
pub fn truncate_bits(path: &Path, bits: u64) -> Result<(), TableError> {
    truncate_to(path, bits.div_ceil(8))?;
    if !bits.is_multiple_of(8) {
        let f = disk::open(path, Mode::Write).map_err(TableError::io(path))?;
        let mut b = [0u8; 1];
        let pos = bits / 8;
        f.read_exact_at(&mut b, pos).map_err(TableError::io(path))?;
        let masked = b[0] & ((1u8 << (bits % 8)) - 1);
        if masked != b[0] {
            write_at(&f, path, &[masked], pos)?;
            f.sync_data().map_err(TableError::io(path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::unpack_bits;

    #[test]
    fn append_bits_keeps_old_bits_and_clears_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let f = open_rw(&path).unwrap();
        append_bits(&f, &path, 0, &[1, 0, 1]).unwrap();
        // Stale bits past row 3 (a crashed append) must not leak into the next append.
        write_at(&f, &path, &[0xFF], 0).unwrap();
        truncate_bits(&path, 3).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![0b0000_0111]);
        append_bits(&f, &path, 3, &[0, 0, 1, 1, 0, 1, 1, 1, 1]).unwrap();
        let bits = std::fs::read(&path).unwrap();
        assert_eq!(
            unpack_bits(&bits, 0, 12),
            vec![1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1]
        );
        assert_eq!(bits.len(), 2);
    }

    #[test]
    fn partition_dir_names_round_trip() {
        assert_eq!(
            parse_partition_dir(&partition_dir("2024-01-02", 7)),
            Some(("2024-01-02", 7))
        );
        assert_eq!(parse_partition_dir("_meta"), None);
    }
}
