//! Announcements of new tables, and epoch markers: a chain of small
//! objects `catalog/<seq, 20 digits>`, each written once with conditional
//! create. The uploader announces a table just before its first segment;
//! a replica looks for the one key the next entry must have (a GET, 404
//! when nothing is new) in every poll round, so a new table reaches it as
//! fast as a new segment of a known table does, without listing the
//! store's tables more often. The once-a-second table listing stays as the
//! fallback (tables whose first segment predates this chain, an
//! announcement that failed).
//!
//! A node promoted to primary appends an **epoch marker** after it has
//! opened its epoch in every table announced before it (docs/failover.md):
//! an older primary that tries to announce a table finds the marker where
//! its entry would go and is fenced, so it never starts a table's chain
//! after a promotion. An announcement carries the table's schema (its
//! `_meta` bytes), so the promoted node can open its epoch in a table whose
//! first segment has not landed yet.
//!
//! Entry layout (little-endian; docs/format.md, "Object store layout"),
//! version 2: magic `BSLTCATL`, version u32 = 2, kind u32 (1 table, 2 epoch
//! marker), epoch u64, table id u64, name length u32, schema length u32,
//! the name's UTF-8 bytes, the schema (`_meta` bytes), then the xxh3-64 of
//! every byte before it. Version 1 (a table: magic, version u32 = 1, name
//! length u32, table id u64, name, xxh3) is still read.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutPayload};
use xxhash_rust::xxh3::xxh3_64;

use crate::store::Store;
use crate::table::Schema;

/// Directory of the announcements under the store root.
pub const CATALOG_PREFIX: &str = "catalog";
const MAGIC: &[u8; 8] = b"BSLTCATL";
const VERSION: u32 = 2;
const KIND_TABLE: u32 = 1;
const KIND_EPOCH: u32 = 2;
/// Announcements tried past the end of the chain before giving up (other
/// tables racing for the same keys).
const TRIES_MAX: u64 = 64;

/// One announcement: a table, its id, and (version 2) the epoch of the
/// primary that announced it and the table's schema then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub table: String,
    pub table_id: u64,
    /// 0 in a version 1 entry.
    pub epoch: u64,
    /// `None` in a version 1 entry.
    pub schema: Option<Schema>,
}

/// One entry of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Table(Announcement),
    /// A node became primary under `epoch`: no older primary announces
    /// anything after this.
    Epoch(u64),
}

pub fn encode(e: &Entry) -> Vec<u8> {
    let (kind, epoch, id, name, schema) = match e {
        Entry::Table(a) => (
            KIND_TABLE,
            a.epoch,
            a.table_id,
            a.table.as_str(),
            a.schema
                .as_ref()
                .map(|s| crate::table::state::encode_meta(s, a.table_id))
                .unwrap_or_default(),
        ),
        Entry::Epoch(epoch) => (KIND_EPOCH, *epoch, 0, "", Vec::new()),
    };
    let mut b = Vec::with_capacity(48 + name.len() + schema.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&epoch.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&(name.len() as u32).to_le_bytes());
    b.extend_from_slice(&(schema.len() as u32).to_le_bytes());
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&schema);
    let h = xxh3_64(&b);
    b.extend_from_slice(&h.to_le_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes an entry; `None` for anything that is not a whole, checksummed
/// one with a valid table name (and schema).
pub fn decode(b: &[u8]) -> Option<Entry> {
    if b.len() < 16 || &b[..8] != MAGIC {
        return None;
    }
    let (body, sum) = b.split_at(b.len() - 8);
    if xxh3_64(body) != u64::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    let table = |name: &[u8]| -> Option<String> {
        let t = std::str::from_utf8(name).ok()?.to_string();
        crate::table::schema::validate_name("table", &t).ok()?;
        Some(t)
    };
    match u32_at(b, 8)? {
        1 => {
            let n = u32_at(b, 12)? as usize;
            if b.len() != 32usize.checked_add(n)? {
                return None;
            }
            Some(Entry::Table(Announcement {
                table: table(&body[24..])?,
                table_id: u64_at(b, 16)?,
                epoch: 0,
                schema: None,
            }))
        }
        VERSION => {
            let (kind, epoch, id) = (u32_at(b, 12)?, u64_at(b, 16)?, u64_at(b, 24)?);
            let (n, m) = (u32_at(b, 32)? as usize, u32_at(b, 36)? as usize);
            if b.len() != 48usize.checked_add(n)?.checked_add(m)? {
                return None;
            }
            match kind {
                KIND_EPOCH if n == 0 && m == 0 && id == 0 => Some(Entry::Epoch(epoch)),
                KIND_TABLE => {
                    let schema = if m == 0 {
                        None
                    } else {
                        let meta = &body[40 + n..];
                        let (s, meta_id) = crate::table::state::decode_meta(
                            std::path::Path::new("catalog entry"),
                            meta,
                        )
                        .ok()?;
                        (meta_id == id).then_some(s)?.into()
                    };
                    Some(Entry::Table(Announcement {
                        table: table(&body[40..40 + n])?,
                        table_id: id,
                        epoch,
                        schema,
                    }))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The key of entry `seq`.
pub fn key(store: &Store, seq: u64) -> ObjectPath {
    store.path(&[CATALOG_PREFIX, &format!("{seq:020}")])
}

fn seq_of(key: &ObjectPath) -> Option<u64> {
    let name = key.filename()?;
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// The sequence numbers of every entry: one listing.
pub async fn seqs(store: &Store) -> Result<Vec<u64>, object_store::Error> {
    let prefix = store.path(&[CATALOG_PREFIX]);
    let keys = store
        .list_after(&prefix, &store.path(&[CATALOG_PREFIX, "0"]))
        .await?;
    let mut s: Vec<u64> = keys.iter().filter_map(seq_of).collect();
    s.sort_unstable();
    Ok(s)
}

/// The sequence number the next entry takes: one listing.
pub async fn next_seq(store: &Store) -> Result<u64, object_store::Error> {
    Ok(seqs(store).await?.last().map_or(0, |s| s + 1))
}

/// Reads entry `seq`: `Ok(None)` when there is none yet.
pub async fn read(store: &Store, seq: u64) -> Result<Option<Entry>, String> {
    let k = key(store, seq);
    match store.inner.get(&k).await {
        Ok(r) => {
            let bytes = r.bytes().await.map_err(|e| format!("reading {k}: {e}"))?;
            decode(&bytes)
                .map(Some)
                .ok_or_else(|| format!("object {k} is not a catalog entry"))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("reading {k}: {e}")),
    }
}

/// Why an announcement did not land.
#[derive(Debug)]
pub enum AnnounceError {
    /// A later epoch's marker is where the entry would go: the announcer
    /// was superseded.
    Fenced(String),
    Failed(String),
}

/// Announces `a` at the end of the chain, starting the search at `*next`
/// (learned with one listing when `None`); leaves `*next` after the entry
/// written (or found: an earlier run of this node announced it already).
/// A marker of an epoch later than `a.epoch` on the way fences the caller.
pub async fn announce(
    store: &Store,
    a: &Announcement,
    next: &mut Option<u64>,
) -> Result<(), AnnounceError> {
    // After a listing the search starts AT the last entry, not after it:
    // that entry is then read, so a marker of a later epoch at the end of
    // the chain fences this announcer instead of being stepped over.
    let mut seq = match *next {
        Some(s) => s,
        None => seqs(store)
            .await
            .map_err(|e| AnnounceError::Failed(format!("listing {CATALOG_PREFIX}/: {e}")))?
            .last()
            .copied()
            .unwrap_or(0),
    };
    let entry = Entry::Table(a.clone());
    for _ in 0..TRIES_MAX {
        let k = key(store, seq);
        let payload = PutPayload::from(encode(&entry));
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
                match read(store, seq).await.map_err(AnnounceError::Failed)? {
                    Some(Entry::Table(t)) if t.table == a.table && t.table_id == a.table_id => {
                        *next = Some(seq + 1);
                        return Ok(());
                    }
                    Some(Entry::Epoch(e)) if e > a.epoch => {
                        return Err(AnnounceError::Fenced(format!(
                            "this node held epoch {} and was superseded: {k} marks the start of \
                             epoch {e}",
                            a.epoch
                        )))
                    }
                    // A later primary's announcement: past its marker.
                    Some(Entry::Table(t)) if t.epoch > a.epoch => {
                        return Err(AnnounceError::Fenced(format!(
                            "this node held epoch {} and was superseded: {k} was announced by the \
                             primary of epoch {}",
                            a.epoch, t.epoch
                        )))
                    }
                    _ => seq += 1,
                }
            }
            Err(e) => {
                return Err(AnnounceError::Failed(format!(
                    "announcing table {} at {k}: {e}",
                    a.table
                )))
            }
        }
    }
    *next = None;
    Err(AnnounceError::Failed(format!(
        "announcing table {}: {TRIES_MAX} announcement keys after {CATALOG_PREFIX}/ were taken",
        a.table
    )))
}

/// Creates entry `seq` as `entry`: `Ok(None)` when it landed, the entry
/// found there when the key was taken.
pub async fn put_at(store: &Store, seq: u64, entry: &Entry) -> Result<Option<Entry>, String> {
    let k = key(store, seq);
    match store
        .inner
        .put_opts(&k, PutPayload::from(encode(entry)), PutMode::Create.into())
        .await
    {
        Ok(_) => Ok(None),
        Err(object_store::Error::AlreadyExists { .. }) => read(store, seq)
            .await?
            .map(Some)
            .ok_or_else(|| format!("{k} exists but cannot be read")),
        Err(e) => Err(format!("writing {k}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_and_damage_is_refused() {
        let schema = crate::gen::CpuGenerator::default().schema().clone();
        let a = Entry::Table(Announcement {
            table: "cpu".into(),
            table_id: 42,
            epoch: 3,
            schema: Some(schema),
        });
        let b = encode(&a);
        assert_eq!(decode(&b), Some(a));
        assert_eq!(decode(&encode(&Entry::Epoch(9))), Some(Entry::Epoch(9)));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 1;
            assert_eq!(decode(&d), None, "flipped byte {i}");
        }
        assert_eq!(decode(&b[..b.len() - 1]), None);
    }

    #[test]
    fn the_chain_grows_one_key_per_table_and_a_repeat_is_found() {
        let (store, rt) = crate::store::memory_for_tests();
        rt.block_on(async {
            let a = |t: &str| Announcement {
                table: t.into(),
                table_id: 1,
                epoch: 1,
                schema: None,
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
            assert_eq!(read(&store, 1).await.unwrap(), Some(Entry::Table(a("y"))));
            assert_eq!(read(&store, 2).await.unwrap(), Some(Entry::Table(a("z"))));
            assert_eq!(read(&store, 3).await.unwrap(), None);
            assert_eq!(next_seq(&store).await.unwrap(), 3);
            // A promotion marks epoch 2 at the end (3); the epoch-1
            // announcer is fenced when it gets there.
            let marker = Entry::Epoch(2);
            assert_eq!(
                put_at(&store, 2, &marker).await.unwrap(),
                Some(Entry::Table(a("z")))
            );
            assert_eq!(put_at(&store, 3, &marker).await.unwrap(), None);
            // With a stale position, and with none (it lists the chain
            // first): the marker at its end is read either way.
            for mut start in [Some(3), None] {
                match announce(&store, &a("w"), &mut start).await {
                    Err(AnnounceError::Fenced(m)) => assert!(m.contains("epoch 2"), "{m}"),
                    other => panic!("expected fenced, got {other:?}"),
                }
            }
            assert_eq!(
                read(&store, 4).await.unwrap(),
                None,
                "nothing after the marker"
            );
        });
    }

    #[test]
    fn version_1_entries_still_read() {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&7u64.to_le_bytes());
        b.extend_from_slice(b"cpu");
        let h = xxh3_64(&b);
        b.extend_from_slice(&h.to_le_bytes());
        assert_eq!(
            decode(&b),
            Some(Entry::Table(Announcement {
                table: "cpu".into(),
                table_id: 7,
                epoch: 0,
                schema: None
            }))
        );
    }
}
