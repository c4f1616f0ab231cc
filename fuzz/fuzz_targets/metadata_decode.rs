//! Any bytes given to the decoders of basalt's metadata: the table files
//! `_meta` and `_txn`/`_ckpt`, snapshot manifests and parts, catalog
//! entries, epoch claims, and the WAL's `_aborted` list and `_uploaded`
//! mark. A decoded value or an error, never a panic,
//! UB or an allocation sized by a length field. The first byte picks the
//! decoder; each input is tried as given and with its checksum made to
//! match, which takes it past the checksum into the length checks.
#![no_main]

use std::path::Path;

use basalt::replication::snapshot::{self, PartRef};
use basalt::replication::{catalog, epoch};
use basalt::table::state;
use basalt::wal::retention;
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

/// The input with its last 8 bytes replaced by the xxh3-64 of the rest.
fn resealed(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    if v.len() >= 8 {
        let n = v.len() - 8;
        let sum = xxh3_64(&v[..n]);
        v[n..].copy_from_slice(&sum.to_le_bytes());
    }
    v
}

fn decode(kind: u8, b: &[u8]) {
    match kind % 8 {
        0 => {
            if let Ok((schema, id)) = state::decode_meta(Path::new("_meta"), b) {
                // What decodes must encode back to the same bytes.
                assert_eq!(state::encode_meta(&schema, id), b);
            }
        }
        1 => {
            if let Ok(st) = state::decode_txn(Path::new("_txn"), b) {
                assert_eq!(state::encode_txn(&st), b);
            }
        }
        2 => {
            if let Ok(m) = snapshot::decode_manifest(b) {
                assert_eq!(snapshot::encode_manifest(&m), b);
            }
        }
        3 => {
            let want = |b: &[u8]| PartRef {
                key: "k".into(),
                bytes: b.len() as u64,
                xxh3: snapshot::part_checksum_at(b)
                    .map_or(0, |at| u64::from_le_bytes(b[at..at + 8].try_into().unwrap())),
            };
            let _ = snapshot::decode_part(b, &want(b));
            if let Some(at) = snapshot::part_checksum_at(b) {
                let mut v = b.to_vec();
                let sum = xxh3_64(&v[..at]);
                v[at..at + 8].copy_from_slice(&sum.to_le_bytes());
                let _ = snapshot::decode_part(&v, &want(&v));
            }
        }
        4 => {
            let _ = catalog::decode(b);
        }
        5 => {
            let _ = epoch::decode(b);
        }
        6 => {
            if let Ok(txns) = retention::decode_aborted(b) {
                // Every listed txn is one whole, verified 16-byte entry.
                assert!(txns.len() * 16 + 16 <= b.len().max(16));
            }
        }
        _ => {
            let _ = retention::decode_upload_mark(b);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    decode(kind, rest);
    if !matches!(kind % 8, 3 | 6) {
        decode(kind, &resealed(rest));
    }
});
