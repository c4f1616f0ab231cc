//! The disk seam: every file and directory operation of the node's storage
//! (WAL, column and symbol files, `_meta`, `_txn`, `_ckpt`, `_wal/_aborted`,
//! `_wal/_uploaded`, partition directories, mmap) goes through this module.
//!
//! Paths under a mounted [`sim::SimDisk`] root are served by that simulated
//! disk; every other path goes to the real file system through `std::fs` (and
//! `memmap2` for maps). The check is one relaxed atomic load when nothing is
//! mounted, so the real path costs nothing measurable. A mount table keyed by
//! path, rather than a handle threaded through every constructor, keeps the
//! seam narrow: code that names a path names its disk.
//!
//! The simulated disk keeps writes that were not synced pending and can
//! produce the crash images a real disk may leave (docs/simulation.md).

pub mod sim;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

pub use sim::{Mounted, SimDisk};

/// How [`open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    Write,
    /// Read and write, created if missing, never truncated.
    Create,
    /// Write a new file; fails if it exists.
    CreateNew,
    /// Write a file from empty: created if missing, else truncated.
    Truncate,
}

/// An open file on the real or a simulated disk.
#[derive(Debug)]
pub enum DiskFile {
    Real(File),
    Sim(sim::SimFile),
}

impl DiskFile {
    pub fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => f.write_all_at(buf, pos),
            DiskFile::Sim(f) => f.write_at(buf, pos),
        }
    }

    pub fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => f.read_exact_at(buf, pos),
            DiskFile::Sim(f) => f.read_exact_at(buf, pos),
        }
    }

    /// `fdatasync`.
    pub fn sync_data(&self) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => f.sync_data(),
            DiskFile::Sim(f) => f.sync(),
        }
    }

    /// `fsync`.
    pub fn sync_all(&self) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => f.sync_all(),
            DiskFile::Sim(f) => f.sync(),
        }
    }

    /// The file's length in bytes (an I/O error is possible, so no `is_empty`).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> io::Result<u64> {
        match self {
            DiskFile::Real(f) => f.metadata().map(|m| m.len()),
            DiskFile::Sim(f) => f.len(),
        }
    }

    pub fn set_len(&self, len: u64) -> io::Result<()> {
        match self {
            DiskFile::Real(f) => f.set_len(len),
            DiskFile::Sim(f) => f.set_len(len),
        }
    }

    /// Maps the file read-only (see [`map`] for the caller's promise).
    pub fn map(&self) -> io::Result<Map> {
        match self {
            DiskFile::Real(f) => {
                if f.metadata()?.len() == 0 {
                    return Ok(Map::Empty);
                }
                // SAFETY: the caller keeps [`map`]'s contract.
                unsafe { Mmap::map(f) }.map(Map::Mmap)
            }
            DiskFile::Sim(f) => {
                let b = f.contents()?;
                Ok(if b.is_empty() {
                    Map::Empty
                } else {
                    Map::Bytes(b.into())
                })
            }
        }
    }
}

/// 64 random bits for a node whose data lives at `path`: from the simulated
/// disk's seeded generator when `path` is simulated (so one seed replays one
/// run, table ids included), else from the process's random hasher keys.
pub fn random_u64(path: &Path) -> u64 {
    if let Some((d, _)) = sim::lookup(path) {
        return d.random_u64();
    }
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((path, std::process::id()))
}

/// Microseconds since the Unix epoch for a node whose data lives at `path`:
/// the simulated disk's clock when `path` is simulated, else the system clock.
pub fn now_us(path: &Path) -> i64 {
    if let Some((d, _)) = sim::lookup(path) {
        return d.now_us();
    }
    system_now_us()
}

/// The system clock in microseconds since the Unix epoch.
pub fn system_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Whether `path` is served by a simulated disk.
pub fn is_simulated(path: &Path) -> bool {
    sim::lookup(path).is_some()
}

pub fn open(path: &Path, mode: Mode) -> io::Result<DiskFile> {
    if let Some((d, rel)) = sim::lookup(path) {
        return d.open(&rel, mode).map(DiskFile::Sim);
    }
    let mut o = OpenOptions::new();
    match mode {
        Mode::Read => o.read(true),
        Mode::Write => o.read(true).write(true),
        Mode::Create => o.read(true).write(true).create(true).truncate(false),
        Mode::CreateNew => o.read(true).write(true).create_new(true),
        Mode::Truncate => o.read(true).write(true).create(true).truncate(true),
    };
    o.open(path).map(DiskFile::Real)
}

pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    match sim::lookup(path) {
        Some((d, rel)) => d.read(&rel),
        None => fs::read(path),
    }
}

/// Creates or truncates `path` and writes `bytes`, without syncing.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match sim::lookup(path) {
        Some((d, rel)) => d.write(&rel, bytes),
        None => fs::write(path, bytes),
    }
}

pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    match (sim::lookup(from), sim::lookup(to)) {
        (Some((d, a)), Some((_, b))) => d.rename(&a, &b, false),
        (None, None) => fs::rename(from, to),
        _ => Err(io::Error::from_raw_os_error(libc::EXDEV)),
    }
}

/// Swaps two paths atomically (`renameat2(RENAME_EXCHANGE)`).
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    match (sim::lookup(a), sim::lookup(b)) {
        (Some((d, x)), Some((_, y))) => d.rename(&x, &y, true),
        (None, None) => real_exchange(a, b),
        _ => Err(io::Error::from_raw_os_error(libc::EXDEV)),
    }
}

fn real_exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn remove_file(path: &Path) -> io::Result<()> {
    match sim::lookup(path) {
        Some((d, rel)) => d.remove(&rel, false),
        None => fs::remove_file(path),
    }
}

pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    match sim::lookup(path) {
        Some((d, rel)) => d.remove(&rel, true),
        None => fs::remove_dir_all(path),
    }
}

pub fn create_dir(path: &Path) -> io::Result<()> {
    match sim::lookup(path) {
        Some((d, rel)) => d.create_dir(&rel, false),
        None => fs::create_dir(path),
    }
}

pub fn create_dir_all(path: &Path) -> io::Result<()> {
    match sim::lookup(path) {
        Some((d, rel)) => d.create_dir(&rel, true),
        None => fs::create_dir_all(path),
    }
}

/// [`create_dir_all`], then fsyncs the parent of every directory it
/// created, so the new names survive a power loss (a data directory the
/// node creates must not vanish with everything acknowledged in it).
pub fn create_dir_all_durable(path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = Some(path);
    while let Some(d) = p {
        if is_dir(d) {
            break;
        }
        missing.push(d);
        p = d.parent();
    }
    create_dir_all(path)?;
    for d in missing.iter().rev() {
        // A relative path's first component lives in the current directory.
        let parent = match d.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => continue,
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// One entry of [`read_dir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

/// The entries of a directory, sorted by name. Names that are not UTF-8 are
/// left out (basalt never creates them).
pub fn read_dir(path: &Path) -> io::Result<Vec<Entry>> {
    if let Some((d, rel)) = sim::lookup(path) {
        return d.read_dir(&rel);
    }
    let mut out = Vec::new();
    for e in fs::read_dir(path)? {
        let e = e?;
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        // A symbolic link counts as what it points to; an entry removed
        // while listed (its type no longer known) is left out.
        let is_dir = match e.file_type() {
            Ok(t) if t.is_symlink() => fs::metadata(e.path()).is_ok_and(|m| m.is_dir()),
            Ok(t) => t.is_dir(),
            Err(_) => continue,
        };
        out.push(Entry { name, is_dir });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub fn exists(path: &Path) -> bool {
    match sim::lookup(path) {
        Some((d, rel)) => d.stat(&rel).is_ok(),
        None => path.exists(),
    }
}

pub fn is_dir(path: &Path) -> bool {
    match sim::lookup(path) {
        Some((d, rel)) => matches!(d.stat(&rel), Ok((true, _))),
        None => path.is_dir(),
    }
}

pub fn is_file(path: &Path) -> bool {
    match sim::lookup(path) {
        Some((d, rel)) => matches!(d.stat(&rel), Ok((false, _))),
        None => path.is_file(),
    }
}

/// The length of a file.
pub fn len(path: &Path) -> io::Result<u64> {
    match sim::lookup(path) {
        Some((d, rel)) => d.stat(&rel).map(|(_, n)| n),
        None => fs::metadata(path).map(|m| m.len()),
    }
}

/// fsyncs a directory, making the names in it durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    match sim::lookup(path) {
        Some((d, rel)) => d.sync_dir(&rel),
        None => File::open(path)?.sync_all(),
    }
}

impl std::ops::Deref for Map {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

/// A read-only map of a file's bytes. On the real disk an mmap (none for an
/// empty file); on a simulated disk a copy taken at map time.
pub enum Map {
    Empty,
    Mmap(Mmap),
    Bytes(Arc<[u8]>),
}

impl Map {
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Map::Empty => &[],
            Map::Mmap(m) => m,
            Map::Bytes(b) => b,
        }
    }
}

/// Maps `path` read-only.
///
/// The caller promises what every basalt reader relies on: the bytes it
/// looks at are not rewritten in place while mapped (appends go past them,
/// merges write a new partition version, truncation happens only in
/// recovery before readers exist).
pub fn map(path: &Path) -> io::Result<Map> {
    open(path, Mode::Read)?.map()
}
