//! Announcements of new tables: a chain of small objects
//! `catalog/<seq, 20 digits>`, each naming one table, written once with
//! conditional create. The uploader announces a table just before its first
//! segment; a replica looks for the one key the next announcement must
//! have (a GET, 404 when nothing is new) in every poll round, so a new
//! table reaches it as fast as a new segment of a known table does, without
//! listing the store's tables more often. The once-a-second table listing
//! stays as the fallback (tables whose first segment predates this chain,
//! an announcement that failed).
//!
//! Entry layout (little-endian; docs/format.md, "Object store layout"):
//! magic `BSLTCATL`, version u32 = 1, name length u32, table id u64, the
//! name's UTF-8 bytes, then the xxh3-64 of every byte before it.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use xxhash_rust::xxh3::xxh3_64;

use crate::store::Store;

/// Directory of the announcements under the store root.
pub const CATALOG_PREFIX: &str = "catalog";
const MAGIC: &[u8; 8] = b"BSLTCATL";
const VERSION: u32 = 1;
/// Announcements tried past the end of the chain before giving up (other
/// tables racing for the same keys).
const TRIES_MAX: u64 = 64;

/// One announcement: a table and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub table: String,
    pub table_id: u64,
}

pub fn encode(a: &Announcement) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + a.table.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(a.table.len() as u32).to_le_bytes());
    b.extend_from_slice(&a.table_id.to_le_bytes());
    b.extend_from_slice(a.table.as_bytes());
    let h = xxh3_64(&b);
    b.extend_from_slice(&h.to_le_bytes());
    b
}

/// Decodes an announcement; `None` for anything that is not a whole,
/// checksummed one with a valid table name.
pub fn decode(b: &[u8]) -> Option<Announcement> {
    if b.len() < 32 || &b[..8] != MAGIC || b[8..12] != VERSION.to_le_bytes() {
        return None;
    }
    let n = u32::from_le_bytes(b[12..16].try_into().ok()?) as usize;
    if b.len() != 32 + n {
        return None;
    }
    let (body, sum) = b.split_at(24 + n);
    if xxh3_64(body) != u64::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    let table = std::str::from_utf8(&body[24..]).ok()?.to_string();
    crate::table::schema::validate_name("table", &table).ok()?;
    Some(Announcement {
        table,
        table_id: u64::from_le_bytes(body[16..24].try_into().ok()?),
    })
}

/// The key of announcement `seq`.
pub fn key(store: &Store, seq: u64) -> ObjectPath {
    store.path(&[CATALOG_PREFIX, &format!("{seq:020}")])
}

fn seq_of(key: &ObjectPath) -> Option<u64> {
    let name = key.filename()?;
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// The sequence number the next announcement takes: one listing.
pub async fn next_seq(store: &Store) -> Result<u64, object_store::Error> {
    let prefix = store.path(&[CATALOG_PREFIX]);
    let keys = store
        .list_after(&prefix, &store.path(&[CATALOG_PREFIX, "0"]))
        .await?;
    Ok(keys.iter().filter_map(seq_of).max().map_or(0, |s| s + 1))
}

/// Reads announcement `seq`: `Ok(None)` when there is none yet.
pub async fn read(store: &Store, seq: u64) -> Result<Option<Announcement>, String> {
    let k = key(store, seq);
    match store.inner.get(&k).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(|e| format!("reading {k}: {e}"))?;
            decode(&bytes)
                .map(Some)
                .ok_or_else(|| format!("object {k} is not a table announcement"))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("reading {k}: {e}")),
    }
}

/// Announces `a` at the end of the chain, starting the search at `*next`
/// (learned with one listing when `None`); leaves `*next` after the entry
/// written (or found: an earlier run of this node announced it already).
pub async fn announce(
    store: &Store,
    a: &Announcement,
    next: &mut Option<u64>,
) -> Result<(), String> {
    let mut seq = match *next {
        Some(s) => s,
        None => next_seq(store)
            .await
            .map_err(|e| format!("listing {CATALOG_PREFIX}/: {e}"))?,
    };
    for _ in 0..TRIES_MAX {
        let k = key(store, seq);
        let payload = PutPayload::from(encode(a));
        match store
            .inner
            .put_opts(&k, payload, PutMode::Create.into())
            .await
        {
            Ok(_) => {
                *next = Some(seq + 1);
                return Ok(());
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                if read(store, seq).await?.as_ref() == Some(a) {
                    *next = Some(seq + 1);
                    return Ok(());
                }
                seq += 1;
            }
            Err(e) => return Err(format!("announcing table {} at {k}: {e}", a.table)),
        }
    }
    *next = None;
    Err(format!(
        "announcing table {}: {TRIES_MAX} announcement keys after {CATALOG_PREFIX}/ were taken",
        a.table
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_damage_is_refused() {
        let a = Announcement {
            table: "cpu".into(),
            table_id: 42,
        };
        let b = encode(&a);
        assert_eq!(decode(&b), Some(a));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 1;
            assert_eq!(decode(&d), None, "flipped byte {i}");
        }
        assert_eq!(decode(&b[..b.len() - 1]), None);
    }

    #[test]
    fn the_chain_grows_one_key_per_table_and_a_repeat_is_found() {
        let store = crate::store::StoreConfig::parse("memory::")
            .unwrap()
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = |t: &str| Announcement {
                table: t.into(),
                table_id: 1,
            };
            let mut next = None;
            announce(&store, &a("x"), &mut next).await.unwrap();
            assert_eq!(next, Some(1));
            // Another node's uploader (its own position unknown) appends after.
            let mut other = None;
            announce(&store, &a("y"), &mut other).await.unwrap();
            assert_eq!(other, Some(2));
            // Ours is stale: it finds the taken key and goes past it.
            announce(&store, &a("z"), &mut next).await.unwrap();
            assert_eq!(next, Some(3));
            assert_eq!(read(&store, 1).await.unwrap(), Some(a("y")));
            assert_eq!(read(&store, 2).await.unwrap(), Some(a("z")));
            assert_eq!(read(&store, 3).await.unwrap(), None);
            assert_eq!(next_seq(&store).await.unwrap(), 3);
        });
    }
}
