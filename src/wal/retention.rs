//! Keeping WAL for replication: a table's WAL may be dropped only up to the
//! last txn both checkpointed into the table files and uploaded to the
//! object store. The uploader records the uploaded txn in the table's
//! `_wal/_uploaded` mark (layout in docs/format.md) so that recovery keeps
//! the WAL files still needed after a restart.
//!
//! The mark is never ahead of the truth: it is written only after the
//! upload it names succeeded. It is written durably, because the uploader
//! accepts at most a few segments after it as its own at start-up (it asks
//! the store where its chain ends before it uploads anything): a mark that a
//! power loss emptied or set back would make it refuse its own history.

use std::path::Path;

use crate::disk;

use tracing::warn;
use xxhash_rust::xxh3::xxh3_64;

/// File name of the upload mark inside a table's `_wal` directory.
pub const UPLOAD_MARK_FILE: &str = "_uploaded";
const MAGIC: &[u8; 8] = b"BSLTUPLD";
/// Version written: 2 (56 bytes, with the last segment's checksum and
/// epoch); version 1 (40 bytes, without them) is still read.
const VERSION: u32 = 2;
const MARK_BYTES: usize = 56;
const MARK_V1_BYTES: usize = 40;

/// What the mark says: txns up to `txn` are in the store named by `store_id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadMark {
    pub txn: u64,
    /// xxh3-64 of the store's connection string with secrets masked: a
    /// mark of another store says nothing about this one.
    pub store_id: u64,
    /// Checksum of the segment in the store that ends at `txn` (the link
    /// the next segment carries); `None` in a version 1 mark.
    pub segment_xxh3: Option<u64>,
    /// Epoch of that segment (0 in a version 1 mark).
    pub epoch: u64,
}

fn encode(m: UploadMark) -> [u8; MARK_BYTES] {
    let mut b = [0u8; MARK_BYTES];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    // 12..16 reserved, zero.
    b[16..24].copy_from_slice(&m.txn.to_le_bytes());
    b[24..32].copy_from_slice(&m.store_id.to_le_bytes());
    b[32..40].copy_from_slice(&m.segment_xxh3.unwrap_or(0).to_le_bytes());
    b[40..48].copy_from_slice(&m.epoch.to_le_bytes());
    let h = xxh3_64(&b[..48]);
    b[48..56].copy_from_slice(&h.to_le_bytes());
    b
}

/// Decodes an upload mark's bytes (version 1 or 2); `None` when they are
/// not a whole, verified mark.
pub fn decode_upload_mark(b: &[u8]) -> Option<UploadMark> {
    if b.len() < 12 || &b[..8] != MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    match (version, b.len()) {
        (1, MARK_V1_BYTES) => (u64_at(32) == xxh3_64(&b[..32])).then(|| UploadMark {
            txn: u64_at(16),
            store_id: u64_at(24),
            segment_xxh3: None,
            epoch: 0,
        }),
        (2, MARK_BYTES) => (u64_at(48) == xxh3_64(&b[..48])).then(|| UploadMark {
            txn: u64_at(16),
            store_id: u64_at(24),
            segment_xxh3: Some(u64_at(32)),
            epoch: u64_at(40),
        }),
        _ => None,
    }
}

/// The upload mark of the table whose WAL is in `wal_dir`; txn 0 when there
/// is no readable mark (a damaged one is reported and ignored).
pub fn read_upload_mark(wal_dir: &Path) -> UploadMark {
    let path = wal_dir.join(UPLOAD_MARK_FILE);
    match disk::read(&path) {
        Ok(b) => decode_upload_mark(&b).unwrap_or_else(|| {
            warn!(path = %path.display(), "upload mark unreadable; keeping all WAL for the uploader");
            UploadMark::default()
        }),
        Err(_) => UploadMark::default(),
    }
}

/// Records durably that every txn up to `mark.txn` is in the object store:
/// write and sync a temp file, rename it over the mark, sync the directory.
pub fn write_upload_mark(wal_dir: &Path, mark: UploadMark) -> std::io::Result<()> {
    disk::create_dir_all(wal_dir)?;
    let tmp = wal_dir.join(format!("{UPLOAD_MARK_FILE}.tmp"));
    disk::write(&tmp, &encode(mark))?;
    disk::open(&tmp, disk::Mode::Write)?.sync_data()?;
    disk::rename(&tmp, &wal_dir.join(UPLOAD_MARK_FILE))?;
    disk::sync_dir(wal_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn mark_round_trips_and_damage_reads_as_zero() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read_upload_mark(dir.path()), UploadMark::default());
        let m = UploadMark {
            txn: 12_345,
            store_id: 77,
            segment_xxh3: Some(0xabc),
            epoch: 1,
        };
        write_upload_mark(dir.path(), m).expect("write mark");
        assert_eq!(read_upload_mark(dir.path()), m);
        let path = dir.path().join(UPLOAD_MARK_FILE);
        let mut b = fs::read(&path).expect("read");
        b[17] ^= 1;
        fs::write(&path, &b).expect("write");
        assert_eq!(read_upload_mark(dir.path()), UploadMark::default());
        // A version 1 mark (written before segment links) still reads.
        let mut v1 = [0u8; MARK_V1_BYTES];
        v1[..8].copy_from_slice(MAGIC);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1[16..24].copy_from_slice(&9u64.to_le_bytes());
        v1[24..32].copy_from_slice(&77u64.to_le_bytes());
        let h = xxh3_64(&v1[..32]);
        v1[32..40].copy_from_slice(&h.to_le_bytes());
        fs::write(&path, v1).expect("write");
        assert_eq!(
            read_upload_mark(dir.path()),
            UploadMark {
                txn: 9,
                store_id: 77,
                segment_xxh3: None,
                epoch: 0
            }
        );
    }
}

/// File name of the aborted-txn list inside a table's `_wal` directory.
pub const ABORTED_FILE: &str = "_aborted";
const ABORTED_MAGIC: &[u8; 8] = b"BSLTABRT";
/// Version written in the `_aborted` header. Builds before this one wrote
/// the upload mark's version constant there (1, later 2) over the same
/// layout; both are read.
const ABORTED_VERSION: u32 = 2;
const ABORTED_VERSIONS: [u32; 2] = [1, 2];
const ABORTED_HEADER_BYTES: usize = 16;
const ABORTED_ENTRY_BYTES: usize = 16;

fn aborted_entry(txn: u64) -> [u8; ABORTED_ENTRY_BYTES] {
    let mut e = [0u8; ABORTED_ENTRY_BYTES];
    e[..8].copy_from_slice(&txn.to_le_bytes());
    let h = xxh3_64(&e[..8]);
    e[8..].copy_from_slice(&h.to_le_bytes());
    e
}

/// Records durably that `txn` was aborted (its WAL write or fdatasync
/// failed, so the client got an error). Its record may still be whole in
/// the WAL; recovery must not replay it on a replicated table, or the
/// primary would hold rows its replicas (which got an empty txn) do not.
pub fn record_aborted(wal_dir: &Path, txn: u64) -> std::io::Result<()> {
    disk::create_dir_all(wal_dir)?;
    let path = wal_dir.join(ABORTED_FILE);
    let new = !disk::exists(&path);
    let f = disk::open(&path, disk::Mode::Create)?;
    let mut len = f.len()?;
    if new || len < ABORTED_HEADER_BYTES as u64 {
        f.set_len(0)?;
        let mut h = [0u8; ABORTED_HEADER_BYTES];
        h[..8].copy_from_slice(ABORTED_MAGIC);
        h[8..12].copy_from_slice(&ABORTED_VERSION.to_le_bytes());
        f.write_all_at(&h, 0)?;
        len = ABORTED_HEADER_BYTES as u64;
    } else {
        // A torn last entry (a crash mid-append) is cut first: an entry
        // appended after it would be read misaligned, and with it every
        // later one, so recovery would replay txns that replicas got empty.
        let entries = (len - ABORTED_HEADER_BYTES as u64) / ABORTED_ENTRY_BYTES as u64;
        let whole = ABORTED_HEADER_BYTES as u64 + entries * ABORTED_ENTRY_BYTES as u64;
        if whole != len {
            f.set_len(whole)?;
            len = whole;
        }
    }
    f.write_all_at(&aborted_entry(txn), len)?;
    f.sync_data()?;
    if new {
        disk::sync_dir(wal_dir)?;
    }
    Ok(())
}

/// The txns a `_aborted` file's bytes record. A file shorter than its
/// header is one whose creation was interrupted before its first entry was
/// synced: nothing in it was relied on. The last entry may be torn (a
/// crash mid-append; that abort was never relied on) and is skipped; any
/// other damage (a bad header, version or reserved bytes, an entry that
/// does not verify before the last) is an error: skipping it could replay
/// a txn replicas received empty.
pub fn decode_aborted(b: &[u8]) -> Result<Vec<u64>, String> {
    if b.len() < ABORTED_HEADER_BYTES {
        return Ok(Vec::new());
    }
    if &b[..8] != ABORTED_MAGIC {
        return Err("it does not start with BSLTABRT".into());
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if !ABORTED_VERSIONS.contains(&version) {
        return Err(format!(
            "version {version}; this build reads versions {ABORTED_VERSIONS:?}"
        ));
    }
    if b[12..16] != [0; 4] {
        return Err("reserved header bytes are not zero".into());
    }
    let entries = b[ABORTED_HEADER_BYTES..].chunks(ABORTED_ENTRY_BYTES);
    let last = entries.len().saturating_sub(1);
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.enumerate() {
        let txn = u64::from_le_bytes(
            e.get(..8)
                .and_then(|t| t.try_into().ok())
                .unwrap_or_default(),
        );
        if e.len() == ABORTED_ENTRY_BYTES && aborted_entry(txn)[..] == e[..] {
            out.push(txn);
        } else if i != last {
            return Err(format!(
                "entry {i} (at byte {}) does not verify, and entries follow it",
                ABORTED_HEADER_BYTES + i * ABORTED_ENTRY_BYTES
            ));
        } // else: a torn last entry
    }
    Ok(out)
}

/// The txns recorded as aborted in `wal_dir` (none without the file); an
/// error names the file when it is damaged (see [`decode_aborted`]).
pub fn read_aborted(wal_dir: &Path) -> Result<Vec<u64>, String> {
    let path = wal_dir.join(ABORTED_FILE);
    match disk::read(&path) {
        Ok(b) => decode_aborted(&b).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Drops the list once every txn in it is at or below `txn` (uploaded and
/// checkpointed: neither recovery nor the uploader needs it any more).
pub fn clear_aborted_upto(wal_dir: &Path, txn: u64) {
    let path = wal_dir.join(ABORTED_FILE);
    if !disk::exists(&path) {
        return;
    }
    // A damaged list is kept: recovery refuses it, and says why.
    if read_aborted(wal_dir).is_ok_and(|l| l.iter().all(|t| *t <= txn)) {
        let _ = disk::remove_file(&path);
    }
}

#[cfg(test)]
mod aborted_tests {
    use super::*;
    use std::fs;

    #[test]
    fn aborted_txns_are_recorded_read_back_and_cleared() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(read_aborted(dir.path()).unwrap().is_empty());
        record_aborted(dir.path(), 7).expect("record");
        record_aborted(dir.path(), 9).expect("record");
        assert_eq!(read_aborted(dir.path()).unwrap(), vec![7, 9]);
        // A torn last entry is ignored.
        let path = dir.path().join(ABORTED_FILE);
        let mut b = fs::read(&path).expect("read");
        b.truncate(b.len() - 3);
        fs::write(&path, &b).expect("write");
        assert_eq!(read_aborted(dir.path()).unwrap(), vec![7]);
        // The next entry after a torn one is read back (it used to be read
        // misaligned and dropped).
        record_aborted(dir.path(), 8).expect("record");
        assert_eq!(read_aborted(dir.path()).unwrap(), vec![7, 8]);
        clear_aborted_upto(dir.path(), 6);
        assert!(path.exists());
        clear_aborted_upto(dir.path(), 8);
        assert!(!path.exists());
    }

    /// Damage other than a torn last entry is an error, never a shorter
    /// list: a txn dropped from it would be replayed by recovery although
    /// replicas received it empty.
    #[test]
    fn a_damaged_aborted_list_is_an_error_not_a_shorter_list() {
        let dir = tempfile::tempdir().expect("temp dir");
        for t in [3, 4, 5] {
            record_aborted(dir.path(), t).expect("record");
        }
        let good = fs::read(dir.path().join(ABORTED_FILE)).expect("read");
        assert_eq!(decode_aborted(&good).unwrap(), vec![3, 4, 5]);
        assert_eq!(
            u32::from_le_bytes(good[8..12].try_into().unwrap()),
            ABORTED_VERSION
        );
        let damaged = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 0x10;
            decode_aborted(&b)
        };
        assert!(damaged(0).unwrap_err().contains("BSLTABRT"));
        assert!(damaged(8).unwrap_err().contains("version"));
        assert!(damaged(13).unwrap_err().contains("reserved"));
        let e = damaged(16 + 16 + 2).unwrap_err();
        assert!(e.contains("entry 1"), "{e}");
        // The last entry damaged reads as torn: that abort was never relied on.
        assert_eq!(damaged(16 + 32 + 2).unwrap(), vec![3, 4]);
        // A header cut short: created, nothing synced in it.
        assert_eq!(decode_aborted(&good[..10]).unwrap(), Vec::<u64>::new());
        // Read through the directory, the error names the file.
        let mut b = good.clone();
        b[20] ^= 1;
        fs::write(dir.path().join(ABORTED_FILE), &b).unwrap();
        assert!(read_aborted(dir.path()).unwrap_err().contains("_aborted"));
    }
}
