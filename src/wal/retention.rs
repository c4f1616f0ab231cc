//! Keeping WAL for replication: a table's WAL may be dropped only up to the
//! last txn both checkpointed into the table files and uploaded to the
//! object store. The uploader records the uploaded txn in the table's
//! `_wal/_uploaded` mark (layout in docs/format.md) so that recovery keeps
//! the WAL files still needed after a restart.
//!
//! The mark is a hint, never ahead of the truth: it is written only after
//! the upload it names succeeded, and without fsync (a lost or stale mark
//! keeps more WAL than needed, and the uploader asks the store where its
//! chain ends before it uploads anything).

use std::fs;
use std::path::Path;

use tracing::warn;
use xxhash_rust::xxh3::xxh3_64;

/// File name of the upload mark inside a table's `_wal` directory.
pub const UPLOAD_MARK_FILE: &str = "_uploaded";
const MAGIC: &[u8; 8] = b"BSLTUPLD";
const VERSION: u32 = 1;
const MARK_BYTES: usize = 32;

fn encode(txn: u64) -> [u8; MARK_BYTES] {
    let mut b = [0u8; MARK_BYTES];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    // 12..16 reserved, zero.
    b[16..24].copy_from_slice(&txn.to_le_bytes());
    let h = xxh3_64(&b[..24]);
    b[24..32].copy_from_slice(&h.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<u64> {
    if b.len() != MARK_BYTES || &b[..8] != MAGIC || b[8..12] != VERSION.to_le_bytes() {
        return None;
    }
    let h = u64::from_le_bytes(b[24..32].try_into().ok()?);
    (h == xxh3_64(&b[..24])).then(|| u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")))
}

/// The last txn known uploaded for the table whose WAL is in `wal_dir`;
/// 0 when there is no readable mark (a damaged one is reported and ignored).
pub fn read_upload_mark(wal_dir: &Path) -> u64 {
    let path = wal_dir.join(UPLOAD_MARK_FILE);
    match fs::read(&path) {
        Ok(b) => decode(&b).unwrap_or_else(|| {
            warn!(path = %path.display(), "upload mark unreadable; keeping all WAL for the uploader");
            0
        }),
        Err(_) => 0,
    }
}

/// Records that every txn up to `txn` is in the object store: write a temp
/// file, rename it over the mark (atomic, not fsynced: see the module doc).
pub fn write_upload_mark(wal_dir: &Path, txn: u64) -> std::io::Result<()> {
    fs::create_dir_all(wal_dir)?;
    let tmp = wal_dir.join(format!("{UPLOAD_MARK_FILE}.tmp"));
    fs::write(&tmp, encode(txn))?;
    fs::rename(&tmp, wal_dir.join(UPLOAD_MARK_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_round_trips_and_damage_reads_as_zero() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read_upload_mark(dir.path()), 0);
        write_upload_mark(dir.path(), 12_345).expect("write mark");
        assert_eq!(read_upload_mark(dir.path()), 12_345);
        let path = dir.path().join(UPLOAD_MARK_FILE);
        let mut b = fs::read(&path).expect("read");
        b[17] ^= 1;
        fs::write(&path, &b).expect("write");
        assert_eq!(read_upload_mark(dir.path()), 0);
    }
}
