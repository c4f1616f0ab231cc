//! The replica side of replication on every transport: segments of a
//! primary's txns, put in the store under their keys, are applied by a
//! replica into tables byte-identical to the primary's; a restarted replica
//! resumes where it stopped; corrupt, truncated, foreign and misplaced
//! objects are refused naming the object, and the replica stays at its last
//! good txn. (Segments are made here from the primary's txns: the primary's
//! uploader is not built yet.)

mod common;
mod servers;

use basalt::batch::Batch;
use basalt::replication::{segment_key, Replica, ReplicationError};
use basalt::segment::{Compression, Link, Segment, SegmentWriter, FIRST_EPOCH};
use basalt::store::{Store, StoreConfig};
use basalt::table::{Schema, TableReader};
use common::{open_db, table_files, workload};
use object_store::{PutMode, PutOptions, PutPayload};

/// The primary's side of the store in these tests: its own client and
/// runtime (a store's pooled connections belong to the runtime that opened
/// them, so the replica gets a store of its own).
struct Uploads {
    rt: tokio::runtime::Runtime,
    store: Store,
}

impl Uploads {
    fn new(conn: &str) -> Uploads {
        Uploads {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            store: StoreConfig::parse(conn).unwrap().build().unwrap(),
        }
    }

    fn key(&self, first: u64) -> object_store::path::Path {
        segment_key(&self.store, "cpu", first)
    }

    fn put(&self, key: &object_store::path::Path, bytes: Vec<u8>, mode: PutMode) {
        self.rt
            .block_on(self.store.inner.put_opts(
                key,
                PutPayload::from(bytes),
                PutOptions {
                    mode,
                    ..Default::default()
                },
            ))
            .unwrap();
    }
}

/// The segment of `txns` (contiguous) of table `cpu` with id `id`,
/// linked to the segment whose checksum is `prev` (0: the first).
fn segment(
    id: u64,
    schema: &Schema,
    txns: &[(u64, Batch)],
    c: Compression,
    prev: u64,
) -> (u64, Vec<u8>) {
    let mut w = SegmentWriter::new(id, "cpu", schema).unwrap();
    for (t, b) in txns {
        w.push(*t, 1_700_000_000_000_000 + *t as i64, b.clone())
            .unwrap();
    }
    let link = Link {
        epoch: FIRST_EPOCH,
        prev_xxh3: prev,
    };
    (
        txns[0].0,
        w.finish_linked(link, c).unwrap().as_slice().to_vec(),
    )
}

/// Checksum of an encoded segment (what the next one links to).
fn checksum(bytes: &[u8]) -> u64 {
    Segment::from_slice(bytes).unwrap().checksum()
}

fn replicate_through(conn: &str) {
    let up = Uploads::new(conn);
    let replica_store = || StoreConfig::parse(conn).unwrap().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let primary = dir.path().join("primary");
    let db = open_db(&primary);
    let txns = workload(&db);
    let schema = db.table("cpu").unwrap().schema();
    db.close();
    let id = TableReader::open(&primary, "cpu").unwrap().table_id();
    let mut prev = 0;
    let segments: Vec<(u64, Vec<u8>)> = txns
        .chunks(4)
        .enumerate()
        .map(|(i, c)| {
            let comp = if i % 2 == 0 {
                Compression::None
            } else {
                Compression::Lz4
            };
            let s = segment(id, &schema, c, comp, prev);
            prev = checksum(&s.1);
            s
        })
        .collect();
    let key = |first: u64| up.key(first);
    let replica_dir = dir.path().join("replica");

    // The first half, then a restart, then the rest.
    let half = segments.len() / 2;
    for (first, bytes) in &segments[..half] {
        up.put(&key(*first), bytes.clone(), PutMode::Create);
    }
    let mut r = Replica::new(replica_store(), &replica_dir).unwrap();
    let rep = r.sync_table("cpu").unwrap();
    assert_eq!(rep.segments as usize, half);
    let at_half = rep.txn;
    assert_eq!(r.sync_table("cpu").unwrap().segments, 0, "nothing new");
    drop(r);

    // A corrupt object where the next segment belongs is refused, naming it.
    let (next_first, next_bytes) = segments[half].clone();
    let mut corrupt = next_bytes.clone();
    let n = corrupt.len();
    corrupt[n - 40] ^= 0x10;
    up.put(&key(next_first), corrupt, PutMode::Create);
    let mut r = Replica::new(replica_store(), &replica_dir).unwrap();
    assert_eq!(
        r.applied_txn("cpu").unwrap(),
        at_half,
        "resumed from its own state"
    );
    let e = r.sync_table("cpu").unwrap_err();
    assert!(
        matches!(e, ReplicationError::BadObject { .. })
            && e.to_string().contains(&format!("{next_first:020}.seg")),
        "{e}"
    );
    assert_eq!(
        r.applied_txn("cpu").unwrap(),
        at_half,
        "nothing bad applied"
    );
    // Truncated: refused too.
    up.put(
        &key(next_first),
        next_bytes[..next_bytes.len() / 2].to_vec(),
        PutMode::Overwrite,
    );
    let e = r.sync_table("cpu").unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // Another table's segment at this key: refused.
    let mut other = SegmentWriter::new(id ^ 1, "cpu", &schema).unwrap();
    other
        .push(next_first, 0, txns[(next_first - 1) as usize].1.clone())
        .unwrap();
    up.put(
        &key(next_first),
        other.finish(Compression::None).unwrap().as_slice().to_vec(),
        PutMode::Overwrite,
    );
    let e = r.sync_table("cpu").unwrap_err();
    assert!(
        e.to_string().contains("not") && e.to_string().contains(&format!("{:016x}", id)),
        "{e}"
    );
    // A segment under the wrong key: refused as misplaced.
    up.put(&key(next_first), segments[0].1.clone(), PutMode::Overwrite);
    let e = r.sync_table("cpu").unwrap_err();
    assert!(matches!(e, ReplicationError::Misplaced { .. }), "{e}");
    assert_eq!(r.applied_txn("cpu").unwrap(), at_half);

    // Repaired (an operator re-uploads the right object): the replica goes on.
    up.put(&key(next_first), next_bytes, PutMode::Overwrite);
    for (first, bytes) in &segments[half + 1..] {
        up.put(&key(*first), bytes.clone(), PutMode::Create);
    }
    let rep = r.sync_table("cpu").unwrap();
    let last = txns.last().unwrap().0;
    assert_eq!(rep.txn, last);
    // A next segment that links to another history than the one applied
    // (a second primary, a fork) is refused, naming both checksums.
    let (_, fork) = segment(
        id,
        &schema,
        &[(last + 1, txns[0].1.clone())],
        Compression::None,
        prev ^ 1,
    );
    up.put(&key(last + 1), fork, PutMode::Create);
    let e = r.sync_table("cpu").unwrap_err();
    assert!(
        e.to_string().contains("not the same history")
            && e.to_string().contains(&format!("{prev:016x}")),
        "{e}"
    );
    assert_eq!(
        r.applied_txn("cpu").unwrap(),
        last,
        "the fork was not applied"
    );
    // Linked right, but from an older epoch (a deposed primary): refused.
    let mut w = SegmentWriter::new(id, "cpu", &schema).unwrap();
    w.push(last + 1, 0, txns[0].1.clone()).unwrap();
    let link = Link {
        epoch: FIRST_EPOCH - 1,
        prev_xxh3: prev,
    };
    let stale = w.finish_linked(link, Compression::None).unwrap();
    up.put(
        &key(last + 1),
        stale.as_slice().to_vec(),
        PutMode::Overwrite,
    );
    let e = r.sync_table("cpu").unwrap_err();
    assert!(
        e.to_string().contains("epoch 0, after segments of epoch 1"),
        "{e}"
    );
    assert_eq!(r.applied_txn("cpu").unwrap(), last);
    drop(r);

    // Byte for byte the primary's table (partition versions aside), and the
    // same rows.
    let a = table_files(&primary.join("cpu"));
    let b = table_files(&replica_dir.join("cpu"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(v == &b[k], "{k} differs between primary and replica");
    }
    let sa = TableReader::open(&primary, "cpu")
        .unwrap()
        .scan(&[], None)
        .unwrap();
    let sb = TableReader::open(&replica_dir, "cpu")
        .unwrap()
        .scan(&[], None)
        .unwrap();
    assert_eq!(
        (sa.txn, &sa.names, &sa.columns),
        (sb.txn, &sb.names, &sb.columns)
    );
}

#[test]
fn replica_on_memory_is_not_shared_between_stores() {
    // Each `memory::` store is its own empty store: the replica sees nothing.
    let up = Uploads::new("memory::");
    up.put(&up.key(1), b"x".to_vec(), PutMode::Create);
    let dir = tempfile::tempdir().unwrap();
    let mut r = Replica::new(
        StoreConfig::parse("memory::").unwrap().build().unwrap(),
        dir.path(),
    )
    .unwrap();
    assert_eq!(r.sync_table("cpu").unwrap().segments, 0);
}

#[test]
fn replica_on_fs() {
    let dir = tempfile::tempdir().unwrap();
    let conn = format!("fs::root={};", dir.path().display());
    replicate_through(&conn);
}

#[test]
fn replica_on_s3_moto() {
    let server = servers::moto("basalt");
    let conn = format!(
        "s3::bucket=basalt;root=r;region=us-east-1;endpoint=http://127.0.0.1:{};access_key_id=t;secret_access_key=t;allow_http=true;",
        server.port
    );
    replicate_through(&conn);
}

#[test]
fn replica_on_azurite() {
    let server = servers::azurite("basalt");
    let conn = format!(
        "azblob::container=basalt;root=r;account_name=devstoreaccount1;account_key=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;endpoint=http://127.0.0.1:{}/devstoreaccount1;",
        server.port
    );
    replicate_through(&conn);
}

#[test]
fn the_replica_lists_the_tables_the_store_has() {
    let dir = tempfile::tempdir().unwrap();
    let conn = format!("fs::root={};", dir.path().join("store").display());
    let up = Uploads::new(&conn);
    up.put(
        &segment_key(&up.store, "cpu", 1),
        b"x".to_vec(),
        PutMode::Create,
    );
    up.put(
        &segment_key(&up.store, "mem", 1),
        b"x".to_vec(),
        PutMode::Create,
    );
    let r = Replica::new(
        StoreConfig::parse(&conn).unwrap().build().unwrap(),
        &dir.path().join("replica"),
    )
    .unwrap();
    assert_eq!(
        r.remote_tables().unwrap(),
        vec!["cpu".to_string(), "mem".to_string()]
    );
}
