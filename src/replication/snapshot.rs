//! Snapshots (QuestDB calls them backups): a consistent copy of every
//! replicated table's files at a txn the store already holds, in the object
//! store, so that a new node starts from it instead of replaying the whole
//! segment chain, and a point in time is restored from it plus segments.
//!
//! ```text
//! snapshots/manifests/<seq, 20 digits>                       one per snapshot, written last
//! snapshots/parts/<table id, 16 hex>/<xxh3-128 of the part's header, 32 hex>.part
//! ```
//!
//! A part bundles one block of [`BLOCK_ROWS`] rows of a partition version:
//! the bytes of every column file for those rows (or one block of entries
//! of the table's symbol dictionaries). Rows only ever append to a
//! partition version (an out-of-order merge writes a new version), so every
//! full block of a partition stays byte for byte the same from one snapshot
//! to the next: parts are keyed by their content, and a snapshot uploads
//! only the blocks that changed, which after new rows is the last block of
//! the partitions that got them. Every object is created once (conditional
//! create); the manifest names the parts with their checksums and comes
//! last, so a half-uploaded snapshot is never visible.
//! Layouts byte by byte: docs/format.md, "Snapshots".

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use tracing::{info, warn};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::db::{now_us, Database, TableHandle};
use crate::disk;
use crate::store::Store;
use crate::table::files::{self, MappedFile};
use crate::table::state::{self, TableState};
use crate::table::{ColumnType, Schema, TableError};

/// Everything snapshots write lives under this prefix.
pub const SNAPSHOTS_PREFIX: &str = "snapshots";
const MANIFESTS: &str = "manifests";
const PARTS: &str = "parts";

const MANIFEST_MAGIC: &[u8; 8] = b"BSLTSNAP";
const PART_MAGIC: &[u8; 8] = b"BSLTPART";
const VERSION: u32 = 1;
/// A manifest names at most this many tables, a part this many files.
const TABLES_MAX: u32 = 100_000;
const PART_FILES_MAX: u32 = 3 * 2048;
/// Parts uploaded or downloaded at once.
const PARTS_IN_FLIGHT: usize = 8;
/// Rows (or dictionary entries) per part: a multiple of 8, so bitmaps split
/// at byte boundaries. About 7 MiB of the reference table's rows.
pub const BLOCK_ROWS: u64 = 128 * 1024;

/// One object of a snapshot, as its manifest names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRef {
    /// Key under the store's root (`snapshots/parts/...`).
    pub key: String,
    /// The object's length in bytes.
    pub bytes: u64,
    /// The part's checksum: the xxh3-64 at the end of its header, which
    /// covers every file's own xxh3.
    pub xxh3: u64,
}

/// One table in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSnapshot {
    pub name: String,
    pub table_id: u64,
    /// The table's txn in the snapshot: its files hold txns `1..=txn`.
    pub txn: u64,
    /// The bytes of its `_meta` file.
    pub meta: Vec<u8>,
    /// The bytes of its `_txn` (and `_ckpt`) file at `txn`.
    pub state: Vec<u8>,
    /// Rows (dictionary entries) per part.
    pub block_rows: u64,
    /// The symbol dictionaries, block by block.
    pub symbols: Vec<PartRef>,
    /// Per partition (in the order of `state`), its blocks in row order.
    pub partitions: Vec<Vec<PartRef>>,
}

/// A snapshot's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub seq: u64,
    /// Epoch of the primary that took it.
    pub epoch: u64,
    /// When the primary started reading the tables (its clock, µs).
    pub started_us: i64,
    /// When it had read every table's state: every txn in the snapshot was
    /// committed before this (the earliest point in time it restores).
    pub cut_us: i64,
    /// When the parts were all in the store (just before the manifest).
    pub completed_us: i64,
    pub tables: Vec<TableSnapshot>,
}

impl Manifest {
    pub fn table(&self, name: &str) -> Option<&TableSnapshot> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Bytes of every part it names.
    pub fn bytes(&self) -> u64 {
        self.parts().map(|p| p.bytes).sum()
    }

    pub fn parts(&self) -> impl Iterator<Item = &PartRef> {
        self.tables.iter().flat_map(TableSnapshot::parts)
    }
}

impl TableSnapshot {
    pub fn parts(&self) -> impl Iterator<Item = &PartRef> {
        self.symbols.iter().chain(self.partitions.iter().flatten())
    }
}

// ---------------------------------------------------------------- encoding

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| format!("truncated at byte {} (needs {n} more)", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// Magic, version and a count (of tables, of files) at most `max`.
    fn envelope(&mut self, magic: &[u8; 8], what: &str, max: u32) -> Result<u32, String> {
        if self.take(8)? != magic {
            return Err(format!(
                "it does not start with {}",
                String::from_utf8_lossy(magic)
            ));
        }
        let v = self.u32()?;
        if v != VERSION {
            return Err(format!(
                "{what} version {v}; this build reads version {VERSION}"
            ));
        }
        let n = self.u32()?;
        if n > max {
            return Err(format!("{what}: {n} entries (at most {max})"));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String, String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("a name before byte {} is not UTF-8", self.at))
    }
}

/// The manifest's bytes (docs/format.md, "Snapshot manifest").
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(MANIFEST_MAGIC);
    put_u32(&mut b, VERSION);
    put_u32(&mut b, m.tables.len() as u32);
    put_u64(&mut b, m.seq);
    put_u64(&mut b, m.epoch);
    put_u64(&mut b, m.started_us as u64);
    put_u64(&mut b, m.cut_us as u64);
    put_u64(&mut b, m.completed_us as u64);
    for t in &m.tables {
        put_bytes(&mut b, t.name.as_bytes());
        put_u64(&mut b, t.table_id);
        put_u64(&mut b, t.txn);
        put_bytes(&mut b, &t.meta);
        put_bytes(&mut b, &t.state);
        put_u64(&mut b, t.block_rows);
        put_u32(&mut b, t.partitions.len() as u32 + 1);
        for blocks in std::iter::once(&t.symbols).chain(&t.partitions) {
            put_u32(&mut b, blocks.len() as u32);
            for p in blocks {
                put_bytes(&mut b, p.key.as_bytes());
                put_u64(&mut b, p.bytes);
                put_u64(&mut b, p.xxh3);
            }
        }
    }
    let sum = xxh3_64(&b);
    put_u64(&mut b, sum);
    b
}

/// Decodes and checks a manifest: checksum first, then every length.
pub fn decode_manifest(b: &[u8]) -> Result<Manifest, String> {
    if b.len() < 56 + 8 {
        return Err(format!(
            "{} bytes is too short for a snapshot manifest",
            b.len()
        ));
    }
    let (body, sum) = b.split_at(b.len() - 8);
    if xxh3_64(body) != u64::from_le_bytes(sum.try_into().expect("8")) {
        return Err("its checksum does not match (damaged or not a manifest)".into());
    }
    let mut r = Reader { b: body, at: 0 };
    let n = r.envelope(MANIFEST_MAGIC, "manifest", TABLES_MAX)?;
    let seq = r.u64()?;
    let epoch = r.u64()?;
    let started_us = r.u64()? as i64;
    let cut_us = r.u64()? as i64;
    let completed_us = r.u64()? as i64;
    let mut tables = Vec::new();
    for _ in 0..n {
        let name = r.string()?;
        crate::table::schema::validate_name("table", &name).map_err(|e| e.to_string())?;
        let table_id = r.u64()?;
        let txn = r.u64()?;
        let meta = r.bytes()?.to_vec();
        let st = r.bytes()?.to_vec();
        let block_rows = r.u64()?;
        if block_rows == 0 || !block_rows.is_multiple_of(8) {
            return Err(format!(
                "table {name}: {block_rows} rows per part (a multiple of 8 above 0)"
            ));
        }
        let groups = r.u32()?;
        if groups == 0 || groups as usize > r.b.len() {
            return Err(format!("table {name}: {groups} groups of parts"));
        }
        let mut all = Vec::with_capacity(groups as usize);
        for _ in 0..groups {
            let n = r.u32()?;
            if n as usize > r.b.len() {
                return Err(format!("table {name}: {n} parts"));
            }
            let mut refs = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let key = r.string()?;
                let bytes = r.u64()?;
                let xxh3 = r.u64()?;
                if !key.starts_with("snapshots/parts/")
                    || key
                        .split('/')
                        .any(|s| s.is_empty() || s == "." || s == "..")
                {
                    return Err(format!(
                        "table {name}: part key {key:?} is not under snapshots/parts/"
                    ));
                }
                refs.push(PartRef { key, bytes, xxh3 });
            }
            all.push(refs);
        }
        let symbols = all.remove(0);
        tables.push(TableSnapshot {
            name,
            table_id,
            txn,
            meta,
            state: st,
            block_rows,
            symbols,
            partitions: all,
        });
    }
    if r.at != body.len() {
        return Err(format!("{} bytes after the last table", body.len() - r.at));
    }
    Ok(Manifest {
        seq,
        epoch,
        started_us,
        cut_us,
        completed_us,
        tables,
    })
}

/// One file inside a part: its name (relative to the directory it goes
/// into) and its bytes, in pieces (mapped file ranges, no copy).
struct PartFile {
    name: String,
    pieces: Vec<Bytes>,
}

impl PartFile {
    fn len(&self) -> u64 {
        self.pieces.iter().map(|p| p.len() as u64).sum()
    }
    fn xxh3_128(&self) -> u128 {
        let mut h = Xxh3::new();
        for p in &self.pieces {
            h.update(p);
        }
        h.digest128()
    }
}

/// A part's header (ending with its checksum) for `files`.
fn part_header(files: &[(String, u64, u128)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(PART_MAGIC);
    put_u32(&mut b, VERSION);
    put_u32(&mut b, files.len() as u32);
    for (name, len, sum) in files {
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        put_u64(&mut b, *len);
        b.extend_from_slice(&sum.to_le_bytes());
    }
    let sum = xxh3_64(&b);
    put_u64(&mut b, sum);
    b
}

/// A part ready to upload: its header, then every file's pieces.
struct BuiltPart {
    payload: Vec<Bytes>,
    bytes: u64,
    xxh3: u64,
    /// xxh3-128 of the header (which holds every file's xxh3-128): the
    /// part's content address.
    address: u128,
}

fn build_part(files: Vec<PartFile>) -> BuiltPart {
    let list: Vec<(String, u64, u128)> = files
        .iter()
        .map(|f| (f.name.clone(), f.len(), f.xxh3_128()))
        .collect();
    let header = part_header(&list);
    let xxh3 = u64::from_le_bytes(header[header.len() - 8..].try_into().expect("8"));
    let address = xxhash_rust::xxh3::xxh3_128(&header);
    let mut payload = vec![Bytes::from(header)];
    for f in files {
        payload.extend(f.pieces.into_iter().filter(|p| !p.is_empty()));
    }
    let bytes = payload.iter().map(|p| p.len() as u64).sum();
    BuiltPart {
        payload,
        bytes,
        xxh3,
        address,
    }
}

/// A part holding `files` (name, bytes), as a snapshot writes it (tests,
/// fuzz seeds); returns its bytes.
pub fn encode_part(files: &[(&str, &[u8])]) -> Vec<u8> {
    let built = build_part(
        files
            .iter()
            .map(|(n, b)| PartFile {
                name: n.to_string(),
                pieces: vec![Bytes::copy_from_slice(b)],
            })
            .collect(),
    );
    built
        .payload
        .iter()
        .flat_map(|b| b.iter().copied())
        .collect()
}

/// Where a part's header checksum is, if its header parses: fuzzing
/// rewrites it so that inputs get past the checksum.
pub fn part_checksum_at(b: &[u8]) -> Option<usize> {
    let mut r = Reader { b, at: 0 };
    r.take(12).ok()?;
    let n = r.u32().ok()?.min(PART_FILES_MAX);
    for _ in 0..n {
        let len = r.u16().ok()? as usize;
        r.take(len + 8 + 16).ok()?;
    }
    (r.at + 8 <= b.len()).then_some(r.at)
}

/// Checks a downloaded part against its manifest entry and returns its
/// files (name, bytes), every one verified against its own xxh3.
pub fn decode_part<'a>(b: &'a [u8], want: &PartRef) -> Result<Vec<(String, &'a [u8])>, String> {
    if b.len() as u64 != want.bytes {
        return Err(format!(
            "{} bytes, the manifest says {}",
            b.len(),
            want.bytes
        ));
    }
    let mut r = Reader { b, at: 0 };
    let n = r.envelope(PART_MAGIC, "part", PART_FILES_MAX)?;
    let mut list = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = r.u16()? as usize;
        let name = std::str::from_utf8(r.take(len)?)
            .map_err(|_| "a file name is not UTF-8".to_string())?
            .to_string();
        let flen = r.u64()?;
        let sum = u128::from_le_bytes(r.take(16)?.try_into().expect("16"));
        list.push((name, flen, sum));
    }
    let header_end = r.at;
    let sum = r.u64()?;
    if xxh3_64(&b[..header_end]) != sum {
        return Err("its header checksum does not match".into());
    }
    if sum != want.xxh3 {
        return Err(format!(
            "its checksum is {sum:016x}, the manifest says {:016x} (another object under this key)",
            want.xxh3
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (name, len, fsum) in list {
        let bytes = r
            .take(usize::try_from(len).map_err(|_| "a file length overflows".to_string())?)
            .map_err(|e| format!("file {name}: {e}"))?;
        if xxhash_rust::xxh3::xxh3_128(bytes) != fsum {
            return Err(format!("file {name} does not match its checksum"));
        }
        out.push((name, bytes));
    }
    if r.at != b.len() {
        return Err(format!("{} bytes after the last file", b.len() - r.at));
    }
    Ok(out)
}

// ------------------------------------------------------------------- keys

fn manifest_key(store: &Store, seq: u64) -> ObjectPath {
    store.path(&[SNAPSHOTS_PREFIX, MANIFESTS, &format!("{seq:020}")])
}

fn full_key(store: &Store, rel: &str) -> ObjectPath {
    let parts: Vec<&str> = rel.split('/').collect();
    store.path(&parts)
}

fn seq_of(key: &ObjectPath) -> Option<u64> {
    let name = key.filename()?;
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// The sequence numbers of every manifest, oldest first: one listing.
pub async fn manifest_seqs(store: &Store) -> Result<Vec<u64>, String> {
    let prefix = store.path(&[SNAPSHOTS_PREFIX, MANIFESTS]);
    let keys = store
        .list_after(&prefix, &store.path(&[SNAPSHOTS_PREFIX, MANIFESTS, "0"]))
        .await
        .map_err(|e| format!("listing {prefix}: {e}"))?;
    let mut s: Vec<u64> = keys.iter().filter_map(seq_of).collect();
    s.sort_unstable();
    Ok(s)
}

/// Reads and checks manifest `seq`.
pub async fn read_manifest(store: &Store, seq: u64) -> Result<Manifest, String> {
    let k = manifest_key(store, seq);
    let bytes = store
        .inner
        .get(&k)
        .await
        .map_err(|e| format!("reading {k}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("reading {k}: {e}"))?;
    let m = decode_manifest(&bytes).map_err(|e| format!("snapshot manifest {k}: {e}"))?;
    if m.seq != seq {
        return Err(format!("snapshot manifest {k} says it is number {}", m.seq));
    }
    Ok(m)
}

/// The newest snapshot, if any.
/// The newest readable snapshot, if any. A manifest that cannot be read
/// (damaged, or a different version) is skipped with a warning: the one
/// before it still serves.
pub async fn newest(store: &Store) -> Result<Option<Manifest>, String> {
    for s in manifest_seqs(store).await?.into_iter().rev() {
        match read_manifest(store, s).await {
            Ok(m) => return Ok(Some(m)),
            Err(e) if e.starts_with("snapshot manifest") => {
                warn!(error = %e, "skipping an unreadable snapshot manifest");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

// ----------------------------------------------------------- taking one

/// Counters of snapshots and retention, for `/metrics`.
#[derive(Debug, Default)]
pub struct BackupStats {
    pub snapshots_taken: AtomicU64,
    pub snapshot_failures: AtomicU64,
    pub parts_uploaded: AtomicU64,
    pub part_bytes_uploaded: AtomicU64,
    pub parts_reused: AtomicU64,
    pub last_completed_us: AtomicU64,
    pub deleted_snapshots: AtomicU64,
    pub deleted_parts: AtomicU64,
    pub deleted_segments: AtomicU64,
    pub deleted_bytes: AtomicU64,
    pub retention_failures: AtomicU64,
}

impl BackupStats {
    fn snapshot_done(&self, r: &SnapshotReport, completed_us: i64) {
        self.snapshots_taken.fetch_add(1, Ordering::Relaxed);
        self.parts_uploaded
            .fetch_add(r.parts_uploaded, Ordering::Relaxed);
        self.part_bytes_uploaded
            .fetch_add(r.bytes_uploaded, Ordering::Relaxed);
        self.parts_reused
            .fetch_add(r.parts_reused, Ordering::Relaxed);
        self.last_completed_us
            .store(completed_us as u64, Ordering::Relaxed);
    }

    fn retention_done(&self, r: &RetentionReport) {
        self.deleted_snapshots
            .fetch_add(r.snapshots, Ordering::Relaxed);
        self.deleted_parts.fetch_add(r.parts, Ordering::Relaxed);
        self.deleted_segments
            .fetch_add(r.segments, Ordering::Relaxed);
        self.deleted_bytes.fetch_add(r.bytes, Ordering::Relaxed);
    }
}

/// What one snapshot did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotReport {
    pub seq: u64,
    pub key: String,
    pub tables: u64,
    pub rows: u64,
    pub parts_uploaded: u64,
    pub bytes_uploaded: u64,
    pub parts_reused: u64,
    pub bytes_reused: u64,
    pub millis: f64,
}

/// One column's files in one partition version (or one dictionary),
/// mapped whole: blocks are slices of them.
struct ColumnMaps {
    name: String,
    ty: ColumnType,
    data: Bytes,
    /// Varchar and dictionaries: `count + 1` u64 offsets.
    offsets: Option<Bytes>,
    /// `None` for dictionaries.
    validity: Option<Bytes>,
}

impl ColumnMaps {
    /// Maps the files of a column with `rows` rows in `dir`, checking each
    /// holds them.
    fn map(
        dir: &Path,
        name: &str,
        ty: ColumnType,
        rows: u64,
        dictionary: bool,
    ) -> Result<ColumnMaps, TableError> {
        let dpath = dir.join(files::data_file(name));
        let data = mapped(&dpath)?;
        let (data, offsets) = match ty {
            ColumnType::Varchar => {
                let opath = dir.join(files::offsets_file(name));
                let offs = head(&opath, &mapped(&opath)?, (rows + 1) * 8)?;
                let end = u64_at(&offs, rows);
                (head(&dpath, &data, end)?, Some(offs))
            }
            ColumnType::Boolean => (head(&dpath, &data, rows.div_ceil(8))?, None),
            ty => {
                let w = ty.width().expect("fixed-width type") as u64;
                (head(&dpath, &data, rows * w)?, None)
            }
        };
        let validity = if dictionary {
            None
        } else {
            let vpath = dir.join(files::validity_file(name));
            Some(head(&vpath, &mapped(&vpath)?, rows.div_ceil(8))?)
        };
        Ok(ColumnMaps {
            name: name.to_string(),
            ty,
            data,
            offsets,
            validity,
        })
    }

    /// The files of rows `start..end` (a block: `start` a multiple of 8):
    /// values, then (varchar) the end offset of each row, then validity.
    fn block(&self, start: u64, end: u64) -> Vec<PartFile> {
        let mut out = Vec::with_capacity(3);
        match (&self.offsets, self.ty) {
            (Some(offs), _) => {
                let (from, to) = (u64_at(offs, start), u64_at(offs, end));
                out.push(PartFile {
                    name: files::data_file(&self.name),
                    pieces: vec![self.data.slice(from as usize..to as usize)],
                });
                out.push(PartFile {
                    name: files::offsets_file(&self.name),
                    pieces: vec![offs.slice((start as usize + 1) * 8..(end as usize + 1) * 8)],
                });
            }
            (None, ColumnType::Boolean) => out.push(PartFile {
                name: files::data_file(&self.name),
                pieces: bits(&self.data, start, end),
            }),
            (None, ty) => {
                let w = ty.width().expect("fixed-width type");
                out.push(PartFile {
                    name: files::data_file(&self.name),
                    pieces: vec![self.data.slice(start as usize * w..end as usize * w)],
                });
            }
        }
        if let Some(v) = &self.validity {
            out.push(PartFile {
                name: files::validity_file(&self.name),
                pieces: bits(v, start, end),
            });
        }
        out
    }
}

fn u64_at(b: &[u8], i: u64) -> u64 {
    let at = i as usize * 8;
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Bits `start..end` of a bitmap (`start` a multiple of 8), with the bits
/// past `end` in the last byte cleared (a later append may have set them).
fn bits(b: &Bytes, start: u64, end: u64) -> Vec<Bytes> {
    let (from, to) = ((start / 8) as usize, end.div_ceil(8) as usize);
    if end.is_multiple_of(8) || to == from {
        return vec![b.slice(from..to)];
    }
    let last = b[to - 1] & ((1u8 << (end % 8)) - 1);
    vec![b.slice(from..to - 1), Bytes::from(vec![last])]
}

fn mapped(path: &Path) -> Result<Bytes, TableError> {
    let m: MappedFile = files::map(path)?;
    Ok(Bytes::from_owner(m))
}

/// `len` bytes of a mapped file; a file shorter than that is corrupt.
fn head(path: &Path, file: &Bytes, len: u64) -> Result<Bytes, TableError> {
    if (file.len() as u64) < len {
        return Err(TableError::Corrupt {
            file: path.to_path_buf(),
            why: format!("needs {len} bytes, file has {}", file.len()),
        });
    }
    Ok(file.slice(..len as usize))
}

/// The files each part of a partition with `columns` columns (or, with
/// `None`, of the dictionaries) holds, in order: what restore accepts.
fn expected_files(schema: &Schema, columns: Option<u32>) -> Vec<String> {
    let mut out = Vec::new();
    match columns {
        None => {
            for c in schema.columns.iter().filter(|c| c.ty == ColumnType::Symbol) {
                out.push(files::data_file(&c.name));
                out.push(files::offsets_file(&c.name));
            }
        }
        Some(n) => {
            for c in schema.columns.iter().take(n as usize) {
                out.push(files::data_file(&c.name));
                if c.ty == ColumnType::Varchar {
                    out.push(files::offsets_file(&c.name));
                }
                out.push(files::validity_file(&c.name));
            }
        }
    }
    out
}

/// A table's files at one txn, mapped: what a snapshot uploads.
struct Cut {
    handle: Arc<TableHandle>,
    meta: Vec<u8>,
    state: TableState,
    /// Symbol columns: (count, dictionary files).
    dictionaries: Vec<(u64, ColumnMaps)>,
    /// Per partition: its columns' files.
    partitions: Vec<Vec<ColumnMaps>>,
}

/// Maps table `h`'s files at its current `_txn`. A partition version merged
/// away meanwhile, or a column added meanwhile, means reading again.
fn cut_table(h: &Arc<TableHandle>) -> Result<Cut, String> {
    let dir = h.dir().to_path_buf();
    let mut last = String::new();
    for _ in 0..16 {
        match try_cut(h, &dir) {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => last = "its schema changed while it was read".into(),
            Err(TableError::Io { source, path })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                last = format!("{} vanished while it was read", path.display());
            }
            Err(e) => return Err(format!("table {}: {e}", h.name)),
        }
    }
    Err(format!(
        "table {}: no consistent cut after 16 tries: {last}",
        h.name
    ))
}

fn try_cut(h: &Arc<TableHandle>, dir: &Path) -> Result<Option<Cut>, TableError> {
    let meta_path = dir.join(files::META_FILE);
    let meta = files::read_file(&meta_path)?;
    let (schema, id) = state::decode_meta(&meta_path, &meta)?;
    let txn_path = dir.join(files::TXN_FILE);
    let state = state::decode_txn(&txn_path, &files::read_file(&txn_path)?)?;
    // `_meta` is replaced before any txn counts a column it adds.
    let again = files::read_file(&meta_path)?;
    if again != meta
        || id != h.table_id()
        || state
            .partitions
            .iter()
            .any(|p| p.columns as usize > schema.columns.len())
    {
        return Ok(None);
    }
    let sym_dir = dir.join(files::SYMBOL_DIR);
    let mut dictionaries = Vec::new();
    for (i, c) in schema.columns.iter().enumerate() {
        if c.ty == ColumnType::Symbol {
            let count = state.symbol_count(i);
            dictionaries.push((
                count,
                ColumnMaps::map(&sym_dir, &c.name, ColumnType::Varchar, count, true)?,
            ));
        }
    }
    let mut partitions = Vec::with_capacity(state.partitions.len());
    for p in &state.partitions {
        let pdir = dir.join(files::partition_dir(
            &schema.partition_by.partition_name(p.floor),
            p.version,
        ));
        let mut cols = Vec::new();
        for c in schema.columns.iter().take(p.columns as usize) {
            cols.push(ColumnMaps::map(&pdir, &c.name, c.ty, p.rows, false)?);
        }
        partitions.push(cols);
    }
    Ok(Some(Cut {
        handle: h.clone(),
        meta,
        state,
        dictionaries,
        partitions,
    }))
}

/// A full block of a partition version: its bytes never change, so its
/// part is known without hashing it again.
type BlockId = (u64, i64, u64, u64, u32);

/// Full blocks of partitions this node has uploaded (cleared when too big).
#[derive(Default)]
pub struct BlockCache(std::sync::Mutex<std::collections::HashMap<BlockId, PartRef>>);

const BLOCK_CACHE_MAX: usize = 1 << 20;

/// Uploads `part` at `key` with a conditional create: the bytes put (0 when
/// the same part was there already). A damaged object at the key (it does
/// not verify as this part) is deleted and put again.
async fn put_part(store: &Store, key: String, part: BuiltPart) -> Result<u64, String> {
    let k = full_key(store, &key);
    let want = PartRef {
        key,
        bytes: part.bytes,
        xxh3: part.xxh3,
    };
    for attempt in 0..2 {
        let payload: PutPayload = part.payload.iter().cloned().collect();
        match store
            .inner
            .put_opts(&k, payload, PutMode::Create.into())
            .await
        {
            Ok(_) => return Ok(part.bytes),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let got = store
                    .inner
                    .get(&k)
                    .await
                    .map_err(|e| format!("reading {k}: {e}"))?
                    .bytes()
                    .await
                    .map_err(|e| format!("reading {k}: {e}"))?;
                match decode_part(&got, &want) {
                    Ok(_) => return Ok(0),
                    Err(e) if attempt == 0 => {
                        warn!(key = %k, error = %e, "a snapshot part in the store is damaged; replacing it");
                        store
                            .inner
                            .delete(&k)
                            .await
                            .map_err(|e| format!("deleting damaged {k}: {e}"))?;
                    }
                    Err(e) => {
                        return Err(format!(
                            "snapshot part {k} is in the store, but differs: {e}"
                        ))
                    }
                }
            }
            Err(e) => return Err(format!("uploading {k}: {e}")),
        }
    }
    Err(format!("snapshot part {k} could not be replaced"))
}

/// Takes a snapshot of every replicated table of `db` into `store` (the
/// replication store `history`, or a separate one), one
/// table at a time: waits until what was committed before it is applied,
/// maps the table's files at its current txn (ingestion goes on), uploads
/// the parts the store does not have yet and lets go of the files. Then
/// waits until the store holds every table's segments up to its txn in the
/// snapshot (bounded by `wait`; a table whose upload stopped is left out,
/// with a warning), checks the node still owns the store's history, and
/// writes the manifest last.
pub async fn take(
    db: &Database,
    store: &Store,
    history: &Store,
    epoch: u64,
    wait: Duration,
    stats: &BackupStats,
    cache: &BlockCache,
) -> Result<SnapshotReport, String> {
    let started = Instant::now();
    let started_us = now_us();
    let previous = newest(store).await?;
    // The previous snapshot's parts, if they are still there whole (a HEAD
    // each): a part lost since is uploaded again.
    let mut known: BTreeMap<String, PartRef> = BTreeMap::new();
    if let Some(m) = &previous {
        let refs: Vec<PartRef> = m.parts().cloned().collect();
        let checked: Vec<(PartRef, bool)> = futures_util::stream::iter(refs.into_iter().map(|p| async move {
            let ok = matches!(store.inner.head(&full_key(store, &p.key)).await, Ok(h) if h.size == p.bytes);
            (p, ok)
        }))
        .buffer_unordered(PARTS_IN_FLIGHT * 2)
        .collect()
        .await;
        for (p, ok) in checked {
            if ok {
                known.insert(p.key.clone(), p);
            } else {
                warn!(key = %p.key, "a part of the previous snapshot is missing or has another size; uploading it again");
            }
        }
    }
    let mut handles: Vec<Arc<TableHandle>> = db
        .catalog()
        .handles()
        .into_iter()
        .filter(|h| h.is_replicated() && !h.is_dropped())
        .collect();
    handles.sort_by(|a, b| a.name.cmp(&b.name));
    let mut report = SnapshotReport::default();
    let mut tables = Vec::with_capacity(handles.len());
    let mut cut_us = now_us();
    for h in &handles {
        // Everything committed before the snapshot was asked for is in it.
        h.wait_applied(h.committed_txn(), wait).map_err(|e| {
            format!(
                "table {}: waiting for committed txns to be applied: {e}",
                h.name
            )
        })?;
        let c = cut_table(h)?;
        // Every txn in the cut was committed before this (commit times
        // never go back, and may run ahead of a clock that stepped back).
        cut_us = now_us().max(h.last_commit_us()).max(cut_us);
        let (t, uploads) = plan_table(&c, &known, cache, &mut report);
        let results: Vec<Result<u64, String>> = futures_util::stream::iter(
            uploads
                .into_iter()
                .map(|(key, part)| put_part(store, key, part)),
        )
        .buffer_unordered(PARTS_IN_FLIGHT)
        .collect()
        .await;
        for r in results {
            let b = r?;
            if b > 0 {
                report.parts_uploaded += 1;
                report.bytes_uploaded += b;
            } else {
                report.parts_reused += 1;
            }
        }
        report.rows += c.state.row_count();
        // The maps go here: one table's files are mapped at a time.
        drop(c);
        tables.push((h.clone(), t));
    }
    // The snapshot may only name txns the store holds: a node bootstrapped
    // from it continues with the segments after them.
    let waits = tables.iter().map(|(h, t)| async move {
        (
            tokio::time::timeout(wait, h.wait_uploaded(t.txn, || false)).await,
            h,
            t,
        )
    });
    let mut left_out = Vec::new();
    for (stored, h, t) in futures_util::future::join_all(waits).await {
        match stored {
            Ok(true) => {}
            Ok(false) => {
                warn!(table = %h.name, "the table's upload stopped (see /status): it is left out of the snapshot");
                left_out.push(t.name.clone());
            }
            Err(_) => {
                return Err(format!(
                    "table {}: txn {} did not reach the store within {} ms; the parts are \
                     uploaded, the snapshot is not written",
                    t.name,
                    t.txn,
                    wait.as_millis()
                ))
            }
        }
    }
    let mut m = Manifest {
        seq: 0,
        epoch,
        started_us,
        cut_us,
        completed_us: now_us(),
        tables: tables
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| !left_out.contains(&t.name))
            .collect(),
    };
    report.tables = m.tables.len() as u64;
    // A primary superseded meanwhile writes no manifest: its tables may
    // already differ from the new primary's history.
    if let Some(by) = super::epoch::superseded(history, epoch).await? {
        return Err(format!(
            "this node was superseded (epoch {} claimed by {}): the snapshot is not written",
            by.epoch, by.node
        ));
    }
    // Conditional create after the newest readable manifest: a taken
    // number (an unreadable manifest, another node's snapshot) means the next.
    let mut seq = previous.as_ref().map_or(0, |m| m.seq + 1);
    loop {
        m.seq = seq;
        let k = manifest_key(store, seq);
        let put = store
            .inner
            .put_opts(
                &k,
                PutPayload::from(encode_manifest(&m)),
                PutMode::Create.into(),
            )
            .await;
        match put {
            Ok(_) => {
                report.key = k.to_string();
                break;
            }
            Err(object_store::Error::AlreadyExists { .. }) => seq += 1,
            Err(e) => return Err(format!("writing {k}: {e}")),
        }
    }
    report.seq = seq;
    report.millis = started.elapsed().as_secs_f64() * 1e3;
    stats.snapshot_done(&report, m.completed_us);
    info!(
        snapshot = seq,
        tables = report.tables,
        parts_uploaded = report.parts_uploaded,
        bytes_uploaded = report.bytes_uploaded,
        parts_reused = report.parts_reused,
        millis = format!("{:.1}", report.millis),
        "snapshot complete"
    );
    Ok(report)
}

/// The manifest entry of a cut table and the parts to upload for it: the
/// parts `known` (in the store already) are named, not uploaded; full
/// blocks in `cache` are not hashed again.
fn plan_table(
    c: &Cut,
    known: &BTreeMap<String, PartRef>,
    cache: &BlockCache,
    report: &mut SnapshotReport,
) -> (TableSnapshot, BTreeMap<String, BuiltPart>) {
    let id = c.handle.table_id();
    let mut uploads: BTreeMap<String, BuiltPart> = BTreeMap::new();
    let mut cache_map = cache.0.lock().unwrap_or_else(|p| p.into_inner());
    let mut place = |built: BuiltPart, report: &mut SnapshotReport| -> PartRef {
        let key = format!(
            "{SNAPSHOTS_PREFIX}/{PARTS}/{id:016x}/{:032x}.part",
            built.address
        );
        let r = PartRef {
            key: key.clone(),
            bytes: built.bytes,
            xxh3: built.xxh3,
        };
        if known.contains_key(&key) {
            report.parts_reused += 1;
            report.bytes_reused += built.bytes;
        } else {
            uploads.entry(key).or_insert(built);
        }
        r
    };
    // Dictionaries: block k holds entries k·B.. of every symbol column.
    let most = c.dictionaries.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut symbols = Vec::new();
    for k in 0..most.div_ceil(BLOCK_ROWS).max(1) {
        let start = k * BLOCK_ROWS;
        let mut fs = Vec::new();
        for (count, maps) in &c.dictionaries {
            let (s, e) = (start.min(*count), (start + BLOCK_ROWS).min(*count));
            fs.extend(maps.block(s, e));
        }
        symbols.push(place(build_part(fs), report));
    }
    let mut partitions = Vec::with_capacity(c.partitions.len());
    for (p, cols) in c.state.partitions.iter().zip(&c.partitions) {
        let mut blocks = Vec::new();
        for k in 0..p.rows.div_ceil(BLOCK_ROWS) {
            let (start, end) = (k * BLOCK_ROWS, ((k + 1) * BLOCK_ROWS).min(p.rows));
            let full = end - start == BLOCK_ROWS;
            let bid: BlockId = (id, p.floor, p.version, k, p.columns);
            if full {
                if let Some(r) = cache_map.get(&bid).filter(|r| known.contains_key(&r.key)) {
                    report.parts_reused += 1;
                    report.bytes_reused += r.bytes;
                    blocks.push(r.clone());
                    continue;
                }
            }
            let fs: Vec<PartFile> = cols.iter().flat_map(|m| m.block(start, end)).collect();
            let r = place(build_part(fs), report);
            if full {
                if cache_map.len() >= BLOCK_CACHE_MAX {
                    cache_map.clear();
                }
                cache_map.insert(bid, r.clone());
            }
            blocks.push(r);
        }
        partitions.push(blocks);
    }
    let t = TableSnapshot {
        name: c.handle.name.clone(),
        table_id: id,
        txn: c.state.txn,
        meta: c.meta.clone(),
        state: state::encode_txn(&c.state),
        block_rows: BLOCK_ROWS,
        symbols,
        partitions,
    };
    (t, uploads)
}

// ---------------------------------------------------------- materializing

/// Downloads and verifies part `p`, naming the object in every error.
async fn fetch_part(store: &Store, p: &PartRef) -> Result<Bytes, String> {
    let k = full_key(store, &p.key);
    let got = store
        .inner
        .get(&k)
        .await
        .map_err(|e| format!("snapshot part {k}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("snapshot part {k}: {e}"))?;
    decode_part(&got, p).map_err(|e| format!("snapshot part {k} is refused: {e}"))?;
    Ok(got)
}

/// Progress of a bootstrap or restore: bytes and objects so far.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub objects: AtomicU64,
}

/// Builds table `t` of a snapshot under `data_dir` from its parts: in
/// `.create-<name>/`, every file and directory fsynced, then renamed into
/// place (replacing an existing copy of the table when `replace`), so the
/// table exists whole or not at all.
pub async fn materialize(
    store: &Store,
    data_dir: &Path,
    t: &TableSnapshot,
    replace: bool,
    progress: &Progress,
) -> Result<(), String> {
    let meta_path = PathBuf::from(format!("snapshot table {} _meta", t.name));
    let (schema, id) = state::decode_meta(&meta_path, &t.meta).map_err(|e| e.to_string())?;
    if id != t.table_id {
        return Err(format!(
            "snapshot table {}: its _meta names table id {id:016x}, the manifest {:016x}",
            t.name, t.table_id
        ));
    }
    let st_path = PathBuf::from(format!("snapshot table {} _txn", t.name));
    let st = state::decode_txn(&st_path, &t.state).map_err(|e| e.to_string())?;
    let b = t.block_rows;
    let blocks_ok = st.txn == t.txn
        && st.partitions.len() == t.partitions.len()
        && st
            .partitions
            .iter()
            .zip(&t.partitions)
            .all(|(p, parts)| p.rows.div_ceil(b) == parts.len() as u64);
    if !blocks_ok || b == 0 || !b.is_multiple_of(8) {
        return Err(format!(
            "snapshot table {}: the manifest's parts do not match its partitions",
            t.name
        ));
    }
    let tmp = data_dir.join(format!(".create-{}", t.name));
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    if disk::exists(&tmp) {
        disk::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    let sym_dir = tmp.join(files::SYMBOL_DIR);
    for d in [&tmp, &sym_dir, &tmp.join(files::WAL_DIR)] {
        disk::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    // Every part in order (the dictionaries, then each partition's blocks),
    // a few downloads ahead of the writes (spawned: on a multi-threaded
    // runtime they go on while a part is written).
    let mut wanted: Vec<(Option<usize>, PartRef)> =
        t.symbols.iter().map(|p| (None, p.clone())).collect();
    for (i, parts) in t.partitions.iter().enumerate() {
        wanted.extend(parts.iter().map(|p| (Some(i), p.clone())));
    }
    // Each open file and where its next bytes go.
    let mut writers: BTreeMap<PathBuf, (disk::DiskFile, u64)> = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = vec![sym_dir.clone()];
    // Varchar and dictionary offsets start with a 0 the parts leave out.
    let open = |writers: &mut BTreeMap<PathBuf, (disk::DiskFile, u64)>,
                path: PathBuf,
                offsets: bool|
     -> Result<(), String> {
        if let std::collections::btree_map::Entry::Vacant(v) = writers.entry(path) {
            let path = v.key().clone();
            let f = disk::open(&path, disk::Mode::Truncate).map_err(|e| io(&path, e))?;
            let mut at = 0;
            if offsets {
                f.write_all_at(&0u64.to_le_bytes(), 0)
                    .map_err(|e| io(&path, e))?;
                at = 8;
            }
            v.insert((f, at));
        }
        Ok(())
    };
    // Files every table needs even with no parts naming them yet.
    for name in expected_files(&schema, None) {
        open(&mut writers, sym_dir.join(&name), name.ends_with(".o"))?;
    }
    for (ps, parts) in st.partitions.iter().zip(&t.partitions) {
        if parts.is_empty() {
            let dir = tmp.join(files::partition_dir(
                &schema.partition_by.partition_name(ps.floor),
                ps.version,
            ));
            disk::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            for name in expected_files(&schema, Some(ps.columns)) {
                open(&mut writers, dir.join(&name), name.ends_with(".o"))?;
            }
            dirs.push(dir);
        }
    }
    // A group's files are synced and closed when the next group starts:
    // open files stay bounded by one partition's.
    let flush = |writers: &mut BTreeMap<PathBuf, (disk::DiskFile, u64)>| -> Result<(), String> {
        for (path, (f, _)) in writers.iter() {
            f.sync_data().map_err(|e| io(path, e))?;
        }
        writers.clear();
        Ok(())
    };
    let mut group: Option<Option<usize>> = None;
    let mut pending = std::collections::VecDeque::new();
    let mut next = 0;
    loop {
        while pending.len() < PARTS_IN_FLIGHT && next < wanted.len() {
            let (s, p) = (store.clone(), wanted[next].1.clone());
            pending.push_back(tokio::spawn(async move { fetch_part(&s, &p).await }));
            next += 1;
        }
        let Some(task) = pending.pop_front() else {
            break;
        };
        let (i, p) = &wanted[next - pending.len() - 1];
        let bytes = task
            .await
            .map_err(|e| format!("snapshot part {}: download task: {e}", p.key))??;
        let k = full_key(store, &p.key);
        let files_in = decode_part(&bytes, p).map_err(|e| format!("snapshot part {k}: {e}"))?;
        if group != Some(*i) {
            flush(&mut writers)?;
            group = Some(*i);
        }
        let (dir, expected) = match i {
            None => (sym_dir.clone(), expected_files(&schema, None)),
            Some(i) => {
                let ps = &st.partitions[*i];
                (
                    tmp.join(files::partition_dir(
                        &schema.partition_by.partition_name(ps.floor),
                        ps.version,
                    )),
                    expected_files(&schema, Some(ps.columns)),
                )
            }
        };
        let names: Vec<&str> = files_in.iter().map(|(n, _)| n.as_str()).collect();
        if names != expected.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(format!(
                "snapshot part {k} holds files {names:?}, the table needs {expected:?}"
            ));
        }
        if !dirs.contains(&dir) {
            disk::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            dirs.push(dir.clone());
        }
        for (name, b) in &files_in {
            let path = dir.join(name);
            open(&mut writers, path.clone(), name.ends_with(".o"))?;
            let (f, at) = writers.get_mut(&path).expect("opened above");
            f.write_all_at(b, *at).map_err(|e| io(&path, e))?;
            *at += b.len() as u64;
        }
        progress
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        progress.objects.fetch_add(1, Ordering::Relaxed);
    }
    flush(&mut writers)?;
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        files::fsync_dir(d).map_err(|e| e.to_string())?;
    }
    {
        files::durable_replace(&tmp, files::META_FILE, &t.meta).map_err(|e| e.to_string())?;
        files::durable_replace(&tmp, files::CKPT_FILE, &t.state).map_err(|e| e.to_string())?;
        files::durable_replace(&tmp, files::TXN_FILE, &t.state).map_err(|e| e.to_string())?;
        files::fsync_dir(&tmp).map_err(|e| e.to_string())?;
        let target = data_dir.join(&t.name);
        if disk::exists(&target) {
            if !replace {
                return Err(format!(
                    "table {} is already in {}",
                    t.name,
                    data_dir.display()
                ));
            }
            // One atomic exchange: a crash leaves the old table or the new
            // one in place, never neither (the other is in `.create-*`,
            // removed at the next open).
            disk::rename_exchange(&tmp, &target).map_err(|e| io(&target, e))?;
            files::fsync_dir(data_dir).map_err(|e| e.to_string())?;
            disk::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        } else {
            disk::rename(&tmp, &target).map_err(|e| io(&target, e))?;
            files::fsync_dir(data_dir).map_err(|e| e.to_string())?;
        }
    }
    info!(table = %t.name, txn = t.txn, "table built from snapshot");
    Ok(())
}

/// [`materialize`] of each of `tables`, in order, on one runtime of its
/// own with two worker threads, so downloads go on while parts are
/// written, and with a store of its own (a cloud store's pooled
/// connections belong to the runtime that opened them).
pub fn materialize_blocking(
    store: &Store,
    data_dir: &Path,
    tables: &[&TableSnapshot],
    replace: bool,
    progress: &Progress,
) -> Result<(), String> {
    if tables.is_empty() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("basalt-restore")
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let own = match store.config.kind {
        crate::store::StoreKind::Memory => store.clone(),
        _ => store.config.build().map_err(|e| e.to_string())?,
    };
    rt.block_on(async {
        for t in tables {
            materialize(&own, data_dir, t, replace, progress).await?;
        }
        Ok(())
    })
}

// --------------------------------------------------------------- retention

/// What the primary keeps in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Every moment of the last `window` stays restorable.
    pub window: Duration,
    /// At least this many snapshots are kept, whatever their age.
    pub keep_min: usize,
    /// Nothing is deleted until it has been unneeded this long: a snapshot
    /// only once a newer one has been complete for `grace` (a bootstrap or
    /// restore that started from it has that long to read it), an object
    /// only once it is older than `grace` (a snapshot being uploaded by
    /// another node is not yet named by a manifest).
    pub grace: Duration,
}

/// What one retention pass deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub snapshots: u64,
    pub parts: u64,
    pub segments: u64,
    pub bytes: u64,
}

/// Which snapshots `r` keeps at `now` (µs), given them oldest first.
pub fn kept(manifests: &[Manifest], r: &Retention, now: i64) -> BTreeSet<u64> {
    let grace = r.grace.as_micros() as i64;
    // The window reaches back a grace period further: a restore that
    // picked the window's base a moment ago keeps it while it runs.
    let window_start = now
        .saturating_sub(r.window.as_micros() as i64)
        .saturating_sub(grace);
    let mut keep = BTreeSet::new();
    let n = manifests.len();
    for (i, m) in manifests.iter().enumerate() {
        let newest_k = i + r.keep_min >= n;
        let in_window = m.cut_us >= window_start;
        // The base of the window's first moments: the newest one cut before it.
        let base = manifests
            .get(i + 1)
            .is_none_or(|next| next.cut_us > window_start);
        // A newer snapshot complete for less than the grace: a bootstrap may
        // still have picked this one as the newest.
        let recent_successor = manifests
            .get(i + 1)
            .is_none_or(|next| next.completed_us > now.saturating_sub(grace));
        if newest_k || in_window || base || recent_successor {
            keep.insert(m.seq);
        }
    }
    keep
}

/// Deletes what `r` no longer needs (snapshots and parts in `store`,
/// segments in the replication store `history`): snapshots outside it, parts no kept
/// snapshot names, and segments wholly below every kept snapshot's txn of
/// their table (the oldest kept snapshot restores them). Never a segment
/// the live chain or a kept snapshot needs; never an object younger than
/// the grace period.
pub async fn enforce(
    store: &Store,
    history: &Store,
    r: &Retention,
    stats: &BackupStats,
    epoch: u64,
) -> Result<RetentionReport, String> {
    let now = now_us();
    // Only the holder of the newest epoch deletes anything.
    if let Some(by) = super::epoch::superseded(history, epoch).await? {
        return Err(format!(
            "this node was superseded (epoch {} claimed by {}): retention deletes nothing",
            by.epoch, by.node
        ));
    }
    let seqs = manifest_seqs(store).await?;
    let mut manifests = Vec::with_capacity(seqs.len());
    let mut unreadable = BTreeSet::new();
    for s in &seqs {
        match read_manifest(store, *s).await {
            Ok(m) => manifests.push(m),
            // Not deleted, and the parts it might name are not either.
            Err(e) if e.starts_with("snapshot manifest") => {
                warn!(error = %e, "retention skips an unreadable snapshot manifest and deletes no part while it is there");
                unreadable.insert(*s);
            }
            Err(e) => return Err(e),
        }
    }
    let mut report = RetentionReport::default();
    if manifests.is_empty() {
        return Ok(report);
    }
    let keep = kept(&manifests, r, now);
    let old_enough = |t: chrono::DateTime<chrono::Utc>| {
        t.timestamp_micros() <= now.saturating_sub(r.grace.as_micros() as i64)
    };
    let kept_ms: Vec<&Manifest> = manifests.iter().filter(|m| keep.contains(&m.seq)).collect();
    let newest_kept = *kept_ms.last().expect("the newest is always kept");
    // Segments go only once the window's first moment is restorable from a
    // kept snapshot (else the segments are the only way back there).
    let window_start = now.saturating_sub(r.window.as_micros() as i64);
    let window_based = kept_ms.iter().any(|m| m.cut_us <= window_start);
    // Per table of the newest kept snapshot: the least txn any kept
    // snapshot holds of it (0, keep everything, when one lacks it or holds
    // a table of that name with another id: a restore from that one
    // replays this table's chain from txn 1).
    let trims: Vec<(&str, u64)> = if window_based {
        newest_kept
            .tables
            .iter()
            .map(|t| {
                let least = kept_ms
                    .iter()
                    .map(|m| {
                        m.table(&t.name)
                            .filter(|x| x.table_id == t.table_id)
                            .map_or(0, |x| x.txn)
                    })
                    .min()
                    .unwrap_or(0);
                (t.name.as_str(), least)
            })
            .filter(|(_, least)| *least > 0)
            .collect()
    } else {
        Vec::new()
    };
    // Segments ending at or before that txn go. A segment ends where the
    // next one starts.
    for &(name, least) in &trims {
        let prefix = super::table_prefix(history, name);
        // One listing gives each segment's age and size too.
        let metas = history
            .list_meta_after(&prefix, &super::segment_key(history, name, 0))
            .await
            .map_err(|e| format!("listing {prefix}: {e}"))?;
        for w in metas.windows(2) {
            let next_first = super::first_txn_of(&w[1].location).unwrap_or(0);
            if super::first_txn_of(&w[0].location).is_none()
                || next_first == 0
                || next_first > least + 1
            {
                break;
            }
            if !old_enough(w[0].last_modified) {
                continue;
            }
            delete(history, &w[0].location).await?;
            report.segments += 1;
            report.bytes += w[0].size;
        }
    }
    // Snapshots, then the parts no kept one names.
    let mut named: BTreeSet<String> = BTreeSet::new();
    if !unreadable.is_empty() {
        // Cannot tell which parts those name: delete none.
        stats.retention_done(&report);
        return Ok(report);
    }
    for m in &manifests {
        if keep.contains(&m.seq) {
            named.extend(m.parts().map(|p| p.key.clone()));
            continue;
        }
        let k = manifest_key(store, m.seq);
        delete(store, &k).await?;
        report.snapshots += 1;
    }
    let prefix = store.path(&[SNAPSHOTS_PREFIX, PARTS]);
    let root = store.root.to_string();
    let mut listing = store.inner.list(Some(&prefix));
    let mut doomed = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| format!("listing {prefix}: {e}"))?;
        let full = meta.location.to_string();
        let rel = full
            .strip_prefix(&root)
            .map(|s| s.trim_start_matches('/'))
            .unwrap_or(&full)
            .to_string();
        if !named.contains(&rel) && old_enough(meta.last_modified) {
            doomed.push((meta.location, meta.size));
        }
    }
    for (k, size) in doomed {
        delete(store, &k).await?;
        report.parts += 1;
        report.bytes += size;
    }
    stats.retention_done(&report);
    if report != RetentionReport::default() {
        info!(
            snapshots = report.snapshots,
            parts = report.parts,
            segments = report.segments,
            bytes = report.bytes,
            "retention deleted what no kept snapshot or moment needs"
        );
    }
    Ok(report)
}

async fn delete(store: &Store, k: &ObjectPath) -> Result<(), String> {
    match store.inner.delete(k).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => {
            warn!(key = %k, error = %e, "retention could not delete an object");
            Err(format!("deleting {k}: {e}"))
        }
    }
}

/// Parses a duration like `90s`, `15m`, `6h`, `7d` (or a bare number of
/// seconds); `off` is `None`.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 15m, 6h, 7d, or off)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "ms" => return Ok(Some(Duration::from_millis(n))),
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (ms, s, m, h, d or w)"
            ))
        }
    };
    n.checked_mul(secs)
        .map(|s| Some(Duration::from_secs(s)))
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(seq: u64, cut_us: i64) -> Manifest {
        Manifest {
            seq,
            epoch: 1,
            started_us: cut_us - 5,
            cut_us,
            completed_us: cut_us + 10,
            tables: vec![TableSnapshot {
                name: "cpu".into(),
                table_id: 7,
                txn: seq * 10,
                meta: vec![1, 2, 3],
                state: vec![4, 5],
                block_rows: BLOCK_ROWS,
                symbols: vec![PartRef {
                    key: "snapshots/parts/0000000000000007/00.part".into(),
                    bytes: 20,
                    xxh3: 9,
                }],
                partitions: vec![
                    vec![],
                    vec![
                        PartRef {
                            key: "snapshots/parts/0000000000000007/01.part".into(),
                            bytes: 100,
                            xxh3: 11,
                        },
                        PartRef {
                            key: "snapshots/parts/0000000000000007/02.part".into(),
                            bytes: 50,
                            xxh3: 12,
                        },
                    ],
                ],
            }],
        }
    }

    #[test]
    fn manifests_round_trip_and_refuse_damage() {
        let m = manifest(3, 1_000_000);
        let b = encode_manifest(&m);
        assert_eq!(decode_manifest(&b).unwrap(), m);
        for i in [0, 9, 20, b.len() / 2, b.len() - 1] {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(decode_manifest(&d).is_err(), "flipped byte {i} accepted");
        }
        assert!(decode_manifest(&b[..b.len() - 3]).is_err());
    }

    #[test]
    fn parts_verify_every_file() {
        let files = vec![
            PartFile {
                name: "a.d".into(),
                pieces: vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")],
            },
            PartFile {
                name: "a.v".into(),
                pieces: vec![Bytes::from_static(&[0xff, 0x01])],
            },
        ];
        let p = build_part(files);
        let bytes: Vec<u8> = p.payload.iter().flat_map(|b| b.iter().copied()).collect();
        let r = PartRef {
            key: "k".into(),
            bytes: p.bytes,
            xxh3: p.xxh3,
        };
        let got = decode_part(&bytes, &r).unwrap();
        assert_eq!(got[0], ("a.d".to_string(), &b"hello world"[..]));
        assert_eq!(got[1].1, &[0xff, 0x01]);
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        let e = decode_part(&bad, &r).unwrap_err();
        assert!(e.contains("a.v"), "{e}");
        assert!(decode_part(&bytes[..n - 1], &r).is_err());
    }

    #[test]
    fn bitmaps_drop_bits_past_the_last_row() {
        let f = Bytes::from_static(&[0xff, 0xff, 0xff]);
        let all = |v: Vec<Bytes>| {
            v.iter()
                .flat_map(|b| b.iter().copied())
                .collect::<Vec<u8>>()
        };
        assert_eq!(all(bits(&f, 0, 11)), vec![0xff, 0x07]);
        assert_eq!(all(bits(&f, 8, 16)), vec![0xff]);
        assert_eq!(all(bits(&f, 16, 17)), vec![0x01]);
        assert!(head(Path::new("x"), &f, 4).is_err());
    }

    #[test]
    fn retention_keeps_the_window_its_base_and_the_newest() {
        let h = 3_600_000_000i64;
        let now = 100 * h;
        // Snapshots every hour from 90 h to 99 h.
        let ms: Vec<Manifest> = (0..10).map(|i| manifest(i, (90 + i as i64) * h)).collect();
        let r = Retention {
            window: Duration::from_secs(3 * 3600 + 1800),
            keep_min: 2,
            grace: Duration::from_secs(60),
        };
        // Window from 96.5 h: snapshots cut at 97, 98, 99 and the base (96).
        let k = kept(&ms, &r, now);
        assert_eq!(k.into_iter().collect::<Vec<_>>(), vec![6, 7, 8, 9]);
        // A successor complete for less than the grace keeps its predecessor.
        let mut ms2 = ms.clone();
        ms2[5].completed_us = now - 1;
        assert!(kept(&ms2, &r, now).contains(&4));
        let r0 = Retention {
            window: Duration::ZERO,
            keep_min: 1,
            grace: Duration::ZERO,
        };
        assert_eq!(kept(&ms, &r0, now).into_iter().collect::<Vec<_>>(), vec![9]);
    }

    /// Segments go only below what every kept snapshot holds, and only
    /// once a kept snapshot restores the window's first moment; parts no
    /// kept manifest names go; a superseded node deletes nothing.
    #[test]
    fn retention_deletes_only_what_no_kept_snapshot_or_moment_needs() {
        let h = 3_600_000_000i64;
        let run = |window_h: u64, m1_has_t: bool, superseded: bool| -> Vec<String> {
            let (store, rt) = crate::store::memory_for_tests();
            let put = |k: ObjectPath| {
                rt.block_on(store.inner.put(&k, PutPayload::from(vec![1u8; 10])))
                    .unwrap();
            };
            for first in [1u64, 11, 21, 31] {
                put(super::super::segment_key(&store, "t", first));
            }
            for p in ["a", "b", "orphan"] {
                put(full_key(
                    &store,
                    &format!("snapshots/parts/0000000000000007/{p}.part"),
                ));
            }
            let now = now_us();
            let part = |p: &str| PartRef {
                key: format!("snapshots/parts/0000000000000007/{p}.part"),
                bytes: 10,
                xxh3: 0,
            };
            let table = |txn: u64, p: &str| TableSnapshot {
                name: "t".into(),
                table_id: 7,
                txn,
                meta: vec![],
                state: vec![],
                block_rows: BLOCK_ROWS,
                symbols: vec![part(p)],
                partitions: vec![],
            };
            let ms = [
                (0u64, now - 10 * h, vec![table(15, "a")]),
                (
                    1,
                    now - h,
                    if m1_has_t {
                        vec![table(25, "b")]
                    } else {
                        vec![]
                    },
                ),
            ];
            for (seq, cut, tables) in ms {
                let m = Manifest {
                    seq,
                    epoch: 1,
                    started_us: cut,
                    cut_us: cut,
                    completed_us: cut,
                    tables,
                };
                rt.block_on(store.inner.put(
                    &manifest_key(&store, seq),
                    PutPayload::from(encode_manifest(&m)),
                ))
                .unwrap();
            }
            if superseded {
                let c = super::super::epoch::Claim {
                    epoch: 2,
                    node: "x".into(),
                    claimed_at_us: 1,
                };
                rt.block_on(super::super::epoch::claim(&store, &c)).unwrap();
            }
            let r = Retention {
                window: Duration::from_secs(window_h * 3600),
                keep_min: 1,
                grace: Duration::ZERO,
            };
            let res = rt.block_on(enforce(&store, &store, &r, &BackupStats::default(), 1));
            assert_eq!(res.is_err(), superseded, "{res:?}");
            let mut keys: Vec<String> = rt
                .block_on(store.list_after(&store.path(&["tables"]), &store.path(&["tables", "0"])))
                .unwrap()
                .iter()
                .filter_map(|k| k.filename().map(str::to_string))
                .collect();
            keys.extend(
                rt.block_on(store.list_after(
                    &store.path(&[SNAPSHOTS_PREFIX, PARTS]),
                    &store.path(&[SNAPSHOTS_PREFIX, PARTS, "0"]),
                ))
                .unwrap()
                .iter()
                .filter_map(|k| k.filename().map(str::to_string)),
            );
            keys
        };
        let seg = |n: u64| format!("{n:020}.seg");
        // A 3 h window: snapshot 0 is its base, both kept; below txn 15 goes.
        assert_eq!(
            run(3, true, false),
            vec![seg(11), seg(21), seg(31), "a.part".into(), "b.part".into()]
        );
        // A 30-day window no snapshot reaches back to: no segment goes.
        assert_eq!(
            run(24 * 30, true, false),
            vec![
                seg(1),
                seg(11),
                seg(21),
                seg(31),
                "a.part".into(),
                "b.part".into()
            ]
        );
        // A kept snapshot without the table: a restore from it replays the
        // table from txn 1, so no segment goes.
        assert_eq!(
            run(3, false, false)[..4],
            [seg(1), seg(11), seg(21), seg(31)]
        );
        // Superseded: nothing at all.
        assert_eq!(run(3, true, true).len(), 7);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("off").unwrap(), None);
        assert_eq!(
            parse_duration("90s").unwrap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_duration("2h").unwrap(),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_duration("7d").unwrap(),
            Some(Duration::from_secs(7 * 86400))
        );
        assert_eq!(
            parse_duration("250ms").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert!(parse_duration("7y").is_err());
        assert!(parse_duration("").is_err());
    }
}
