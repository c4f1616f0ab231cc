//! Ownership of the history: epochs claimed in the store.
//!
//! A node becomes the primary of a store by creating `epochs/<E, 20
//! digits>` with conditional create, where `E` is one more than the highest
//! epoch there: only one node can create each key, so at most one node ever
//! holds each epoch. Every segment carries the epoch of the primary that
//! wrote it; a node that finds `epochs/<its epoch + 1>` (or a segment of a
//! higher epoch where its next one belongs) has been superseded and stops
//! taking writes. The node keeps the epoch it holds in `<data-dir>/_epoch`,
//! so a restart knows whether it is still the owner. docs/failover.md has
//! the protocol and the argument why two primaries never both extend the
//! history.
//!
//! Claim layout (little-endian; also the `_epoch` file): magic `BSLTEPCH`,
//! version u32 = 1, node name length u32, epoch u64, claim time i64 (µs
//! since the Unix epoch), the node name's UTF-8 bytes, then the xxh3-64 of
//! every byte before it.

use std::path::Path;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use xxhash_rust::xxh3::xxh3_64;

use crate::store::Store;

/// Directory of the claims under the store root.
pub const EPOCHS_PREFIX: &str = "epochs";
/// The file in the data directory naming the epoch this node holds.
pub const LOCAL_FILE: &str = "_epoch";
const MAGIC: &[u8; 8] = b"BSLTEPCH";
const VERSION: u32 = 1;
const FIXED: usize = 8 + 4 + 4 + 8 + 8;

/// One claim: who took which epoch, when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Claim {
    pub epoch: u64,
    pub node: String,
    pub claimed_at_us: i64,
}

pub fn encode(c: &Claim) -> Vec<u8> {
    let mut b = Vec::with_capacity(FIXED + 8 + c.node.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(c.node.len() as u32).to_le_bytes());
    b.extend_from_slice(&c.epoch.to_le_bytes());
    b.extend_from_slice(&c.claimed_at_us.to_le_bytes());
    b.extend_from_slice(c.node.as_bytes());
    let h = xxh3_64(&b);
    b.extend_from_slice(&h.to_le_bytes());
    b
}

/// Decodes a claim; `None` for anything that is not a whole, checksummed one.
pub fn decode(b: &[u8]) -> Option<Claim> {
    if b.len() < FIXED + 8 || &b[..8] != MAGIC || b[8..12] != VERSION.to_le_bytes() {
        return None;
    }
    let n = u32::from_le_bytes(b[12..16].try_into().ok()?) as usize;
    if b.len() != FIXED.checked_add(n)?.checked_add(8)? {
        return None;
    }
    let (body, sum) = b.split_at(FIXED + n);
    if xxh3_64(body) != u64::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    Some(Claim {
        epoch: u64::from_le_bytes(body[16..24].try_into().ok()?),
        claimed_at_us: i64::from_le_bytes(body[24..32].try_into().ok()?),
        node: std::str::from_utf8(&body[FIXED..]).ok()?.to_string(),
    })
}

/// The key of epoch `epoch`'s claim.
pub fn key(store: &Store, epoch: u64) -> ObjectPath {
    store.path(&[EPOCHS_PREFIX, &format!("{epoch:020}")])
}

fn epoch_of(key: &ObjectPath) -> Option<u64> {
    let name = key.filename()?;
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// The highest epoch claimed in the store (0: none yet): one listing.
pub async fn latest(store: &Store) -> Result<u64, String> {
    let prefix = store.path(&[EPOCHS_PREFIX]);
    let keys = store
        .list_after(&prefix, &store.path(&[EPOCHS_PREFIX, "0"]))
        .await
        .map_err(|e| format!("listing {prefix}/: {e}"))?;
    Ok(keys.iter().filter_map(epoch_of).max().unwrap_or(0))
}

/// Reads the claim of `epoch`: `Ok(None)` when nobody holds it.
pub async fn read(store: &Store, epoch: u64) -> Result<Option<Claim>, String> {
    let k = key(store, epoch);
    match store.inner.get(&k).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(|e| format!("reading {k}: {e}"))?;
            match decode(&bytes) {
                Some(c) if c.epoch == epoch => Ok(Some(c)),
                _ => Err(format!("object {k} is not an epoch claim")),
            }
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("reading {k}: {e}")),
    }
}

/// Why a claim did not happen.
#[derive(Debug)]
pub enum ClaimError {
    /// Another node created the key first.
    Taken(Option<Claim>),
    Store(String),
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Taken(Some(c)) => write!(
                f,
                "epoch {} was claimed first by node {} (at {} µs)",
                c.epoch, c.node, c.claimed_at_us
            ),
            ClaimError::Taken(None) => write!(f, "the epoch was claimed first by another node"),
            ClaimError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// Creates `claim`'s key; fails if any node (this one included, in an
/// earlier try whose answer was lost: then the claim read back is ours and
/// counts) created it first.
pub async fn claim(store: &Store, claim: &Claim) -> Result<(), ClaimError> {
    let k = key(store, claim.epoch);
    let payload = PutPayload::from(encode(claim));
    match store
        .inner
        .put_opts(&k, payload, PutMode::Create.into())
        .await
    {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            match read(store, claim.epoch).await.map_err(ClaimError::Store)? {
                Some(c) if c == *claim => Ok(()),
                other => Err(ClaimError::Taken(other)),
            }
        }
        Err(e) => Err(ClaimError::Store(format!("creating {k}: {e}"))),
    }
}

/// The claim that superseded `epoch`, if another node has claimed the next
/// one: one GET (404 while this node is still the owner).
pub async fn superseded(store: &Store, epoch: u64) -> Result<Option<Claim>, String> {
    read(store, epoch + 1).await
}

/// The epoch this node holds, from `<data_dir>/_epoch` (`None`: it never
/// claimed one).
pub fn read_local(data_dir: &Path) -> Result<Option<Claim>, String> {
    let path = data_dir.join(LOCAL_FILE);
    match crate::disk::read(&path) {
        Ok(b) => decode(&b).map(Some).ok_or_else(|| {
            format!(
                "{} is damaged (not a checksummed epoch claim); it names the epoch this node \
                 held as primary: restore it, or remove it and start the node as a replica",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Records durably that this node holds `claim`'s epoch (written to a
/// temporary file, fsynced, renamed over `_epoch`, directory fsynced).
pub fn write_local(data_dir: &Path, claim: &Claim) -> Result<(), String> {
    crate::table::files::durable_replace(data_dir, LOCAL_FILE, &encode(claim))
        .map_err(|e| format!("writing {}: {e}", data_dir.join(LOCAL_FILE).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_and_damage_is_refused() {
        let c = Claim {
            epoch: 7,
            node: "host-a:/data".into(),
            claimed_at_us: 1_700_000_000_000_000,
        };
        let b = encode(&c);
        assert_eq!(decode(&b), Some(c));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 1;
            assert_eq!(decode(&d), None, "flipped byte {i}");
        }
        assert_eq!(decode(&b[..b.len() - 1]), None);
    }

    #[test]
    fn only_one_node_claims_an_epoch_and_the_owner_learns_it_was_superseded() {
        let (store, rt) = crate::store::memory_for_tests();
        rt.block_on(async {
            let c = |e: u64, n: &str| Claim {
                epoch: e,
                node: n.into(),
                claimed_at_us: 1,
            };
            assert_eq!(latest(&store).await.unwrap(), 0);
            claim(&store, &c(1, "a")).await.unwrap();
            // A retry of our own claim succeeds; another node's fails.
            claim(&store, &c(1, "a")).await.unwrap();
            match claim(&store, &c(1, "b")).await {
                Err(ClaimError::Taken(Some(t))) => assert_eq!(t.node, "a"),
                other => panic!("expected Taken, got {other:?}"),
            }
            assert_eq!(superseded(&store, 1).await.unwrap(), None);
            claim(&store, &c(2, "b")).await.unwrap();
            assert_eq!(latest(&store).await.unwrap(), 2);
            assert_eq!(superseded(&store, 1).await.unwrap(), Some(c(2, "b")));
        });
    }

    #[test]
    fn the_local_file_round_trips_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_local(dir.path()).unwrap(), None);
        let c = Claim {
            epoch: 3,
            node: "n".into(),
            claimed_at_us: 5,
        };
        write_local(dir.path(), &c).unwrap();
        assert_eq!(read_local(dir.path()).unwrap(), Some(c));
        std::fs::write(dir.path().join(LOCAL_FILE), b"junk").unwrap();
        assert!(read_local(dir.path()).unwrap_err().contains("damaged"));
    }
}
