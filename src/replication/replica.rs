//! The replica: applies the segments a primary uploaded, in txn order, into
//! its own tables. Every table's position is its own durable state (the
//! table's checkpointed txn), so a restarted replica resumes exactly where
//! it stopped. A bad object (corrupt, truncated, foreign, misplaced) is
//! refused with an error naming it; the table stays at its last good txn
//! and the next sync tries again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjectPath;
use object_store::{GetResultPayload, ObjectStoreExt};
use rkyv::util::AlignedVec;
use tracing::{error, info, warn};

use super::{first_txn_of, segment_key, table_prefix};
use crate::db::now_us;
use crate::segment::{apply_segment_until, Segment, SegmentError};
use crate::store::Store;
use crate::table::{ColumnType, PartitionBy, Schema, TableError, TableWriter};

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("object {key}: {source}")]
    BadObject {
        key: String,
        #[source]
        source: SegmentError,
    },
    #[error("object {key} is not where its contents belong: {why}")]
    Misplaced { key: String, why: String },
    #[error("table {table}: the next segment after txn {applied} is missing; the store has {next_key} next")]
    Gap {
        table: String,
        applied: u64,
        next_key: String,
    },
    #[error("table {table}: the store no longer holds txn {}: its oldest segment starts at txn {oldest} (retention removed the rest); the table is rebuilt from the newest snapshot", applied + 1)]
    BehindRetention {
        table: String,
        applied: u64,
        oldest: u64,
    },
    #[error("table {table}: the store holds only the end of its chain (from txn {oldest}) and no snapshot of it: it was dropped on the primary before the newest snapshot; not replicated")]
    Dropped { table: String, oldest: u64 },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{0}")]
    Io(String),
}

/// What one sync of a table did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub segments: u64,
    pub txns: u64,
    pub rows: u64,
    /// The table's txn after the sync.
    pub txn: u64,
    /// Commit time on the primary (µs since the epoch) of the last txn
    /// applied by this sync; 0 when none was.
    pub last_commit_time_us: i64,
}

/// A read-only copy of the tables a primary uploads.
pub struct Replica {
    store: Store,
    /// Where snapshots are read from (the replication store unless
    /// `--backup-object-store` names another).
    pub snapshots: Store,
    data_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    tables: BTreeMap<String, TableWriter>,
    /// `None`: every sync that applied something ends with a checkpoint.
    /// `Some(d)`: a table is checkpointed at most every `d` (a crash then
    /// downloads again what came after the last one), and by
    /// [`Replica::checkpoint_all`].
    pub checkpoint_interval: Option<Duration>,
    last_checkpoint: BTreeMap<String, Instant>,
    /// Per table, the last segment applied in this run: its last txn,
    /// checksum and epoch. The next segment must link to it (one history).
    links: BTreeMap<String, (u64, u64, u64)>,
    /// Tables this run has listed once: their next segment starts right
    /// after their txn (a table built from a snapshot may sit inside one).
    aligned: std::collections::BTreeSet<String>,
    /// Set once queries may be reading the tables: local tables are no
    /// longer opened (recovery) from then on.
    pub serving: bool,
}

impl Replica {
    pub fn new(store: Store, data_dir: &Path) -> Result<Replica, ReplicationError> {
        crate::disk::create_dir_all_durable(data_dir)
            .map_err(|e| ReplicationError::Io(format!("{}: {e}", data_dir.display())))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ReplicationError::Io(format!("tokio runtime: {e}")))?;
        Ok(Replica {
            snapshots: store.clone(),
            store,
            data_dir: data_dir.to_path_buf(),
            rt,
            tables: BTreeMap::new(),
            checkpoint_interval: None,
            last_checkpoint: BTreeMap::new(),
            links: BTreeMap::new(),
            aligned: Default::default(),
            serving: false,
        })
    }

    /// The table's applied txn on this replica (0 when it has none yet).
    pub fn applied_txn(&mut self, table: &str) -> Result<u64, ReplicationError> {
        Ok(self.writer(table)?.map_or(0, |w| w.state().txn))
    }

    fn writer(&mut self, table: &str) -> Result<Option<&mut TableWriter>, ReplicationError> {
        if !self.tables.contains_key(table) && crate::disk::is_dir(&self.data_dir.join(table)) {
            if self.serving {
                // Opening runs recovery, which may cut column files that
                // queries have mapped: only before queries are served.
                return Err(ReplicationError::Io(format!(
                    "local table {table} could not be opened when the replica started; fix or remove {}, then restart",
                    self.data_dir.join(table).display()
                )));
            }
            // Recovery cuts the table back to its last checkpoint: the
            // replica's durable position.
            let w = TableWriter::open(&self.data_dir, table)?;
            self.tables.insert(table.to_string(), w);
        }
        Ok(self.tables.get_mut(table))
    }

    /// Tables the store has segments for.
    pub fn remote_tables(&self) -> Result<Vec<String>, ReplicationError> {
        let prefix = self.store.path(&[super::TABLES_PREFIX]);
        let listing = self
            .rt
            .block_on(self.store.inner.list_with_delimiter(Some(&prefix)))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// Applies every segment of `table` after the replica's position, in
    /// order; readers see each txn once it is whole. What was applied is
    /// made durable (checkpointed) at the end of the sync, also when it
    /// stops at a bad object (with an error naming it).
    pub fn sync_table(&mut self, table: &str) -> Result<SyncReport, ReplicationError> {
        let mut report = SyncReport::default();
        let r = self.sync_into(table, &mut report);
        self.maybe_checkpoint(table, report.txns > 0)?;
        r.map(|()| report)
    }

    /// [`Replica::sync_table`] without a listing: fetches the key the next
    /// segment must have (`<applied txn + 1>.seg`) until there is none. One
    /// GET per poll when nothing is new, cheaper and faster than a LIST on
    /// every store; a gap (a later key without the next one) only shows in
    /// [`Replica::sync_table`]'s listing, which the runner also does.
    pub fn sync_table_next(&mut self, table: &str) -> Result<SyncReport, ReplicationError> {
        let mut report = SyncReport::default();
        let r = self.sync_next_into(table, &mut report);
        self.maybe_checkpoint(table, report.txns > 0)?;
        r.map(|()| report)
    }

    /// Makes the table's applied txns durable (its position survives a
    /// crash), now or when `checkpoint_interval` says so.
    fn maybe_checkpoint(&mut self, table: &str, applied: bool) -> Result<(), ReplicationError> {
        let due = match self.checkpoint_interval {
            None => applied,
            Some(d) => self
                .last_checkpoint
                .get(table)
                .is_none_or(|t| t.elapsed() >= d),
        };
        if !due {
            return Ok(());
        }
        if let Some(w) = self.tables.get_mut(table) {
            if w.state().txn != w.checkpoint_txn() {
                w.checkpoint()?;
            }
            self.last_checkpoint
                .insert(table.to_string(), Instant::now());
        }
        Ok(())
    }

    /// Checkpoints every table with applied txns (at shutdown).
    pub fn checkpoint_all(&mut self) -> Result<(), ReplicationError> {
        for w in self.tables.values_mut() {
            if w.state().txn != w.checkpoint_txn() {
                w.checkpoint()?;
            }
        }
        Ok(())
    }

    fn sync_next_into(
        &mut self,
        table: &str,
        report: &mut SyncReport,
    ) -> Result<(), ReplicationError> {
        // A table this run has not listed may sit inside a segment (built
        // from a snapshot): a listing finds it.
        if !self.aligned.contains(table) {
            return self.sync_into(table, report);
        }
        report.txn = self.applied_txn(table)?;
        loop {
            let first = report.txn + 1;
            let key = segment_key(&self.store, table, first);
            let Some(seg) = self.fetch(&key)? else {
                return Ok(());
            };
            self.apply_fetched(table, &key, first, seg, u64::MAX, report)?;
        }
    }

    fn sync_into(&mut self, table: &str, report: &mut SyncReport) -> Result<(), ReplicationError> {
        let applied = self.applied_txn(table)?;
        let prefix = table_prefix(&self.store, table);
        let after = segment_key(&self.store, table, applied);
        let mut keys = self.rt.block_on(self.store.list_after(&prefix, &after))?;
        report.txn = applied;
        let aligned = self.aligned.contains(table);
        if keys.first().and_then(first_txn_of) != Some(applied + 1)
            && (!keys.is_empty() || (applied > 0 && !aligned))
        {
            // The table may sit inside a segment (built from a snapshot at
            // a txn no segment ends at), or retention removed what it needs.
            if let Some(key) = self.containing(table, applied + 1)? {
                keys.insert(0, key);
            } else if !keys.is_empty()
                && (applied > 0 || keys.first().and_then(first_txn_of) != Some(1))
            {
                let oldest = keys.first().and_then(first_txn_of).unwrap_or(0);
                let all = self.rt.block_on(
                    self.store
                        .list_after(&prefix, &segment_key(&self.store, table, 0)),
                )?;
                if all.first().and_then(first_txn_of) == Some(oldest) {
                    return Err(ReplicationError::BehindRetention {
                        table: table.to_string(),
                        applied,
                        oldest,
                    });
                }
            }
        }
        // From here on the next segment starts right after the table's txn.
        self.aligned.insert(table.to_string());
        for key in keys {
            let (first, seg) = self.fetch_listed(table, &key, report.txn)?;
            self.apply_fetched(table, &key, first, seg, u64::MAX, report)?;
        }
        Ok(())
    }

    /// The key of the segment of `table` that holds `txn` without starting
    /// at it: one listing of the table and, when the candidate is not
    /// followed by the key of `txn + 1`..., one GET to check it reaches `txn`.
    fn containing(&self, table: &str, txn: u64) -> Result<Option<ObjectPath>, ReplicationError> {
        let prefix = table_prefix(&self.store, table);
        let keys = self.rt.block_on(
            self.store
                .list_after(&prefix, &segment_key(&self.store, table, 0)),
        )?;
        let Some(i) = keys
            .iter()
            .rposition(|k| first_txn_of(k).is_some_and(|f| f < txn))
        else {
            return Ok(None);
        };
        // It reaches `txn` if the next key starts after it (or there is none
        // and the segment is long enough: checked when it is applied).
        match keys.get(i + 1).and_then(first_txn_of) {
            Some(next) if next <= txn => Ok(None),
            _ => Ok(Some(keys[i].clone())),
        }
    }

    /// The listed segment `key` of `table`, which sits at `applied`: its
    /// first txn (at most `applied + 1`, else the chain has a gap) and the
    /// verified segment.
    fn fetch_listed(
        &self,
        table: &str,
        key: &ObjectPath,
        applied: u64,
    ) -> Result<(u64, Segment), ReplicationError> {
        let first = first_txn_of(key).ok_or_else(|| ReplicationError::Misplaced {
            key: key.to_string(),
            why: "the name is not <first txn, 20 digits>.seg".into(),
        })?;
        if first > applied + 1 {
            return Err(ReplicationError::Gap {
                table: table.to_string(),
                applied,
                next_key: key.to_string(),
            });
        }
        let seg = self.fetch_present(key)?;
        Ok((first, seg))
    }

    /// [`Replica::fetch`] of a key a listing just showed.
    fn fetch_present(&self, key: &ObjectPath) -> Result<Segment, ReplicationError> {
        self.fetch(key)?.ok_or_else(|| ReplicationError::Misplaced {
            key: key.to_string(),
            why: "listed, but gone when fetched".into(),
        })
    }

    /// Downloads and verifies one object; `None` if there is none.
    fn fetch(&self, key: &ObjectPath) -> Result<Option<Segment>, ReplicationError> {
        let bad = |source| ReplicationError::BadObject {
            key: key.to_string(),
            source,
        };
        let got = match self.rt.block_on(self.store.inner.get(key)) {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let seg = match got.payload {
            // A shared filesystem: the object's own file, memory-mapped
            // (objects are immutable once published).
            GetResultPayload::File(f, path) => Segment::map_file(&f, &path).map_err(bad)?,
            GetResultPayload::Stream(_) => {
                let bytes = self.rt.block_on(got.bytes())?;
                let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
                aligned.extend_from_slice(&bytes);
                drop(bytes);
                Segment::from_aligned(aligned).map_err(bad)?
            }
        };
        Ok(Some(seg))
    }

    /// Applies the txns up to `until` of a verified segment fetched from
    /// `key`, which must start at `first`.
    fn apply_fetched(
        &mut self,
        table: &str,
        key: &ObjectPath,
        first: u64,
        seg: Segment,
        until: u64,
        report: &mut SyncReport,
    ) -> Result<(), ReplicationError> {
        let bad = |source| ReplicationError::BadObject {
            key: key.to_string(),
            source,
        };
        let h = seg.header();
        if h.first_txn != first || h.table != table {
            return Err(ReplicationError::Misplaced {
                key: key.to_string(),
                why: format!(
                    "it holds txns {}..={} of table {}",
                    h.first_txn, h.last_txn, h.table
                ),
            });
        }
        // The chain: a segment links to the one applied before it, and an
        // epoch never goes back. (After a restart the first segment's link
        // cannot be compared: this run has not seen its predecessor.)
        if let Some(&(txn, sum, epoch)) = self.links.get(table) {
            if txn.checked_add(1) == Some(first) {
                let why = match h.prev_xxh3 {
                    // A segment without a link (format 1) after linked ones:
                    // written by something that does not extend this chain.
                    None if epoch > 0 => Some(SegmentError::Malformed(format!(
                        "a segment of format version {} without a link follows linked segments",
                        seg.preamble().version
                    ))),
                    Some(prev) if prev != sum => Some(SegmentError::BrokenChain {
                        first,
                        last: h.last_txn,
                        expected: sum,
                        found: prev,
                    }),
                    Some(_) if h.epoch < epoch => Some(SegmentError::EpochWentBack {
                        first,
                        epoch: h.epoch,
                        before: epoch,
                    }),
                    _ => None,
                };
                if let Some(e) = why {
                    return Err(bad(e));
                }
            }
        }
        if self.writer(table)?.is_none() {
            let w = create_from_header(&self.data_dir, &seg).map_err(bad)?;
            info!(table, "created replica table from the first segment");
            self.tables.insert(table.to_string(), w);
        }
        let w = self.tables.get_mut(table).expect("opened or created above");
        let r = apply_segment_until(w, &seg, until).map_err(bad)?;
        report.segments += 1;
        report.txns += r.applied_txns;
        report.rows += r.rows;
        report.txn = w.state().txn;
        self.links
            .insert(table.to_string(), (h.last_txn, seg.checksum(), h.epoch));
        // Empty (aborted) txns carry commit time 0.
        if let Some(t) = h.commit_times_us.iter().copied().max() {
            report.last_commit_time_us = report.last_commit_time_us.max(t);
        }
        Ok(())
    }

    /// The checksum of the segment of `table` that ends at txn `txn` (the
    /// link of the segment after it): known if this run applied it,
    /// otherwise found with one listing of the table and one GET.
    pub fn chain_checksum(&mut self, table: &str, txn: u64) -> Result<u64, ReplicationError> {
        if let Some(&(last, sum, _)) = self.links.get(table) {
            if last == txn {
                return Ok(sum);
            }
        }
        let prefix = table_prefix(&self.store, table);
        let keys = self.rt.block_on(
            self.store
                .list_after(&prefix, &segment_key(&self.store, table, 0)),
        )?;
        let key = keys
            .iter()
            .filter(|k| first_txn_of(k).is_some_and(|f| f <= txn))
            .max_by_key(|k| first_txn_of(k))
            .ok_or_else(|| ReplicationError::Gap {
                table: table.to_string(),
                applied: txn,
                next_key: "no segment holding it".into(),
            })?;
        let seg = self.fetch_present(key)?;
        if seg.header().last_txn != txn {
            return Err(ReplicationError::Misplaced {
                key: key.to_string(),
                why: format!(
                    "it ends at txn {}, the table here at {txn}",
                    seg.header().last_txn
                ),
            });
        }
        Ok(seg.checksum())
    }

    /// Creates the key of txn `txn` of `table` with an epoch-start segment:
    /// one empty txn of `epoch`, linked to `prev_xxh3`, with `schema` in
    /// its header. Its checksum, or `None` when another writer took the key.
    fn put_epoch_start(
        &mut self,
        (table, table_id, schema): (&str, u64, &Schema),
        txn: u64,
        prev_xxh3: u64,
        epoch: u64,
    ) -> Result<Option<u64>, ReplicationError> {
        use object_store::{PutMode, PutPayload};
        let bad = |source| ReplicationError::BadObject {
            key: table.to_string(),
            source,
        };
        let mut sw = crate::segment::SegmentWriter::new(table_id, table, schema).map_err(bad)?;
        sw.push_aborted(txn).map_err(bad)?;
        let link = crate::segment::Link { epoch, prev_xxh3 };
        let enc = sw
            .finish_linked(link, crate::segment::Compression::None)
            .map_err(bad)?;
        let xxh3 = enc.checksum();
        let key = segment_key(&self.store, table, txn);
        let put = self.store.inner.put_opts(
            &key,
            PutPayload::from(enc.into_bytes()),
            PutMode::Create.into(),
        );
        match self.rt.block_on(put) {
            Ok(_) => {
                let r = self.sync_table_next(table)?;
                if r.txn != txn {
                    return Err(ReplicationError::Io(format!(
                        "table {table}: the epoch-start segment {key} landed but the table is at txn {}",
                        r.txn
                    )));
                }
                Ok(Some(xxh3))
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                info!(table, key = %key, "another writer's segment took the key first");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens epoch `epoch` in `table`'s chain (a promotion): applies what
    /// the store holds, then creates the key right after it with a segment
    /// of one empty txn, of `epoch`, linked to the chain's last segment,
    /// and applies it. Once it lands, the previous primary can never extend
    /// this table's chain: its next segment needs the same key. If another
    /// writer's segment takes the key first, it is applied and the next key
    /// is tried. Returns the epoch-start txn and its segment's checksum.
    pub fn start_epoch(
        &mut self,
        table: &str,
        epoch: u64,
        tries_max: usize,
    ) -> Result<(u64, u64), ReplicationError> {
        for _ in 0..tries_max.max(1) {
            self.sync_table(table)?;
            let txn = self.applied_txn(table)?;
            let prev = self.chain_checksum(table, txn)?;
            let w = self
                .tables
                .get(table)
                .ok_or_else(|| ReplicationError::Io(format!("table {table} is not here")))?;
            let (id, schema) = (w.table_id(), w.schema().clone());
            // Taken: the previous primary's segment, applied next round.
            if let Some(xxh3) = self.put_epoch_start((table, id, &schema), txn + 1, prev, epoch)? {
                return Ok((txn + 1, xxh3));
            }
        }
        Err(ReplicationError::Io(format!(
            "table {table}: another writer kept extending the chain ({tries_max} tries)"
        )))
    }

    /// [`Replica::start_epoch`] for a table announced with `schema` whose
    /// chain is still empty (its first segment has not landed): the
    /// epoch-start segment takes txn 1, and the table is created here from
    /// it. `Ok(None)` when another writer's first segment took the key: use
    /// [`Replica::start_epoch`] then.
    pub fn start_epoch_new(
        &mut self,
        table: &str,
        table_id: u64,
        schema: &Schema,
        epoch: u64,
    ) -> Result<Option<(u64, u64)>, ReplicationError> {
        Ok(self
            .put_epoch_start((table, table_id, schema), 1, 0, epoch)?
            .map(|xxh3| (1, xxh3)))
    }

    /// Builds, from the newest snapshot in the store, every table of it
    /// this replica does not have (a new node starts there instead of
    /// replaying every segment since txn 1); the segments after it follow.
    /// Returns the snapshot used, if any.
    pub fn bootstrap(&mut self) -> Result<Option<u64>, ReplicationError> {
        let Some(m) = self
            .rt
            .block_on(super::snapshot::newest(&self.snapshots))
            .map_err(ReplicationError::Io)?
        else {
            return Ok(None);
        };
        let missing: Vec<&super::snapshot::TableSnapshot> = m
            .tables
            .iter()
            .filter(|t| !crate::disk::exists(&self.data_dir.join(&t.name)))
            .collect();
        let built = missing.len();
        let progress = super::snapshot::Progress::default();
        let started = Instant::now();
        super::snapshot::materialize_blocking(
            &self.snapshots,
            &self.data_dir,
            &missing,
            false,
            &progress,
        )
        .map_err(ReplicationError::Io)?;
        if built > 0 {
            info!(
                snapshot = m.seq,
                tables = built,
                bytes = progress.bytes.load(Ordering::Relaxed),
                millis = started.elapsed().as_millis() as u64,
                "bootstrapped from a snapshot; applying the segments after it"
            );
        }
        Ok(Some(m.seq))
    }

    /// Rebuilds `table` from the newest snapshot that holds it past txn
    /// `past` (the table fell behind what the store keeps). Its files are
    /// replaced whole; queries that had them mapped keep reading the old
    /// ones.
    pub fn rebuild_table(
        &mut self,
        table: &str,
        past: u64,
        oldest: u64,
    ) -> Result<u64, ReplicationError> {
        let m = self
            .rt
            .block_on(super::snapshot::newest(&self.snapshots))
            .map_err(ReplicationError::Io)?;
        if m.as_ref().is_some_and(|m| m.table(table).is_none()) {
            return Err(ReplicationError::Dropped {
                table: table.to_string(),
                oldest,
            });
        }
        let Some(t) = m
            .as_ref()
            .and_then(|m| m.table(table))
            .filter(|t| t.txn >= past)
        else {
            return Err(ReplicationError::Io(format!(
                "table {table}: the store holds neither the segments after this replica's txn                  nor a snapshot reaching txn {past}; remove the table here to rebuild it"
            )));
        };
        if let Some(w) = self.tables.get(table) {
            if w.table_id() != t.table_id {
                return Err(ReplicationError::Io(format!(
                    "table {table}: the snapshot holds table id {:016x}, this replica {:016x}",
                    t.table_id,
                    w.table_id()
                )));
            }
        }
        // Let go of the writer first: its files are about to be replaced.
        self.tables.remove(table);
        self.links.remove(table);
        self.aligned.remove(table);
        let progress = super::snapshot::Progress::default();
        super::snapshot::materialize_blocking(
            &self.snapshots,
            &self.data_dir,
            &[t],
            true,
            &progress,
        )
        .map_err(ReplicationError::Io)?;
        let w = TableWriter::open(&self.data_dir, table)?;
        self.tables.insert(table.to_string(), w);
        warn!(
            table,
            txn = t.txn,
            "table rebuilt from a snapshot: it had fallen behind what the store keeps"
        );
        Ok(t.txn)
    }

    /// Applies `table`'s segments after its txn up to `stop` (a restore):
    /// the txns up to `stop.txn`, and while their commit times are at most
    /// `stop.time_us`. Each segment is checkpointed once applied, so a
    /// killed restore resumes where it stopped. Returns the table's txn.
    pub fn apply_until(
        &mut self,
        table: &str,
        stop: Stop,
        progress: &super::snapshot::Progress,
    ) -> Result<u64, ReplicationError> {
        let mut applied = self.applied_txn(table)?;
        // One listing of the whole chain: from the segment holding the
        // txn after the table's (it may start before it) on.
        let prefix = table_prefix(&self.store, table);
        let mut keys = self.rt.block_on(
            self.store
                .list_after(&prefix, &segment_key(&self.store, table, 0)),
        )?;
        let from = keys
            .iter()
            .rposition(|k| first_txn_of(k).is_some_and(|f| f <= applied + 1))
            .unwrap_or(0);
        keys.drain(..from);
        for key in keys {
            if applied >= stop.txn {
                break;
            }
            let (first, seg) = self.fetch_listed(table, &key, applied)?;
            let h = seg.header();
            // The last txn to apply: before the first one committed after
            // the point (commit times grow with txns; aborted ones carry 0).
            let mut until = stop.txn;
            for (i, t) in h.commit_times_us.iter().enumerate() {
                let txn = h.first_txn + i as u64;
                if txn > applied && *t > stop.time_us {
                    until = until.min(txn - 1);
                    break;
                }
            }
            let len = seg.len() as u64;
            let last_txn = h.last_txn;
            if until > applied {
                self.apply_fetched(table, &key, first, seg, until, &mut SyncReport::default())?;
                if let Some(w) = self.tables.get_mut(table) {
                    w.checkpoint()?;
                    applied = w.state().txn;
                }
            }
            progress.bytes.fetch_add(len, Ordering::Relaxed);
            progress.objects.fetch_add(1, Ordering::Relaxed);
            if until < last_txn {
                break;
            }
        }
        Ok(applied)
    }

    /// The local tables (opened so far).
    pub fn table_names(&self) -> Vec<String> {
        self.tables.keys().cloned().collect()
    }

    /// The store this replica follows.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `f` on the replica's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Syncs every table the store has.
    pub fn sync_all(&mut self) -> Result<BTreeMap<String, SyncReport>, ReplicationError> {
        let mut out = BTreeMap::new();
        for t in self.remote_tables()? {
            let r = self.sync_table(&t)?;
            out.insert(t, r);
        }
        Ok(out)
    }
}

/// The table as of its first schema version, with the primary's id; later
/// columns come from the segments.
fn create_from_header(data_dir: &Path, seg: &Segment) -> Result<TableWriter, SegmentError> {
    let h = seg.header();
    let mut cols = Vec::new();
    for c in h.columns.iter().filter(|c| c.added_in == 1) {
        let ty = ColumnType::from_tag(c.ty)
            .ok_or_else(|| SegmentError::Malformed(format!("column type tag {}", c.ty)))?;
        cols.push((c.name.as_str(), ty));
    }
    let ts = h
        .columns
        .get(h.timestamp_column as usize)
        .map(|c| c.name.as_str());
    let partition_by = PartitionBy::from_tag(h.partition_by)
        .ok_or_else(|| SegmentError::Malformed(format!("partition tag {}", h.partition_by)))?;
    let schema = Schema::new(cols, ts, partition_by)?;
    Ok(TableWriter::create_with_id(
        data_dir, &h.table, &schema, h.table_id,
    )?)
}

/// Where a restore stops: the last txn, and the latest commit time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    pub txn: u64,
    pub time_us: i64,
}

impl Stop {
    pub const LATEST: Stop = Stop {
        txn: u64::MAX,
        time_us: i64::MAX,
    };
}

/// How a replica node follows the store.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// How often each table's next segment is looked for (one GET of the
    /// key it must have, per table).
    pub poll_interval: Duration,
    /// How often new tables are looked for (one LIST of the tables).
    pub discover_interval: Duration,
    /// How often each table's keys after its position are listed instead
    /// of fetching the next key: one LIST per table, which shows a gap (a
    /// later key without the next one) that a GET of the next key cannot.
    pub list_interval: Duration,
    /// A table's applied txns are made durable at most this often (a
    /// checkpoint fsyncs its files); after a crash the replica downloads
    /// again what came after its last checkpoint.
    pub checkpoint_interval: Duration,
    /// The core the replica's apply thread is pinned to (modulo the
    /// cores), like a primary's shards; `None` leaves it unpinned.
    pub core: Option<usize>,
    /// Where snapshots are (`--backup-object-store`); `None`: the store
    /// followed.
    pub snapshots: Option<Store>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            poll_interval: Duration::from_millis(50),
            discover_interval: Duration::from_secs(1),
            list_interval: Duration::from_secs(10),
            checkpoint_interval: Duration::from_secs(1),
            core: None,
            snapshots: None,
        }
    }
}

impl ReplicaOptions {
    /// The defaults for a kind of store: a shared filesystem answers a
    /// look for the next segment with a file open, so it is looked for
    /// every 5 ms; cloud stores (a GET each) every 50 ms.
    pub fn for_store(kind: crate::store::StoreKind) -> ReplicaOptions {
        match kind {
            crate::store::StoreKind::Fs => ReplicaOptions {
                poll_interval: Duration::from_millis(5),
                ..ReplicaOptions::default()
            },
            _ => ReplicaOptions::default(),
        }
    }
}

/// One table's position on a replica, for `/status` and `/metrics`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TableReplicaStatus {
    pub applied_txn: u64,
    /// Commit time on the primary (µs since the epoch) of the last applied txn.
    pub applied_commit_time_us: i64,
    /// Seconds from the primary's commit of the newest applied txn to the
    /// moment it was applied here (the last measured replication lag).
    pub lag_seconds: f64,
    pub segments_applied: u64,
    pub rows_applied: u64,
    /// The last error, until a sync of the table succeeds.
    pub last_error: Option<String>,
}

/// Positions of a replica's tables, shared with the HTTP server.
#[derive(Debug, Default)]
pub struct ReplicaStatus {
    tables: Mutex<BTreeMap<String, TableReplicaStatus>>,
    /// When the last round of syncs succeeded (µs since the epoch).
    pub last_sync_us: AtomicI64,
    /// An error finding tables, until it succeeds again.
    discover_error: Mutex<Option<String>>,
}

impl ReplicaStatus {
    pub fn tables(&self) -> BTreeMap<String, TableReplicaStatus> {
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn discover_error(&self) -> Option<String> {
        self.discover_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, table: &str, f: impl FnOnce(&mut TableReplicaStatus)) {
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        f(t.entry(table.to_string()).or_default());
    }
}

/// A replica following the store on its own thread.
pub struct ReplicaRunner {
    _thread: super::Background,
    pub status: Arc<ReplicaStatus>,
}

impl ReplicaRunner {
    /// Follows `store` into the tables under `data_dir` until shut down.
    /// Errors are logged (once per distinct message) and retried every poll.
    pub fn start(
        store: Store,
        data_dir: &Path,
        opts: ReplicaOptions,
    ) -> Result<ReplicaRunner, ReplicationError> {
        let mut replica = Replica::new(store, data_dir)?;
        replica.checkpoint_interval = Some(opts.checkpoint_interval);
        if let Some(s) = &opts.snapshots {
            replica.snapshots = s.clone();
        }
        // Tables this node does not have start from the newest snapshot
        // (before anything serves queries). A store that cannot be read now
        // is not fatal: a table found later without a snapshot replays its
        // segments, or is rebuilt when they are gone.
        if let Err(e) = replica.bootstrap() {
            warn!(error = %e, "cannot bootstrap from the newest snapshot; tables replay their segments instead");
        }
        // Recovery of local tables (cutting files back to the last
        // checkpoint) happens now, before anything serves queries: a query
        // maps column files, and a file cut under a map would fault.
        for name in crate::table::table_names(data_dir) {
            if let Err(e) = replica.writer(&name) {
                warn!(table = %name, error = %e, "cannot open a local table: it is not replicated until the replica restarts");
            }
        }
        replica.serving = true;
        let status = Arc::new(ReplicaStatus::default());
        let st = status.clone();
        let thread = super::Background::spawn("basalt-replica", move |stop| {
            crate::io::pin_current_thread(opts.core);
            follow(&mut replica, &opts, &stop, &st)
        })
        .map_err(|e| ReplicationError::Io(format!("replica thread: {e}")))?;
        Ok(ReplicaRunner {
            _thread: thread,
            status,
        })
    }

    /// Stops after the sync in progress (what it applied is checkpointed).
    pub fn shutdown(self) {}
}

fn follow(replica: &mut Replica, opts: &ReplicaOptions, stop: &AtomicBool, status: &ReplicaStatus) {
    let mut tables: Vec<String> = Vec::new();
    let mut last_discover: Option<Instant> = None;
    let mut last_list: Option<Instant> = None;
    let mut logged: BTreeMap<String, String> = BTreeMap::new();
    // Tables dropped on the primary whose chain retention trimmed: nothing
    // to follow until the replica restarts.
    let mut ignored: std::collections::BTreeSet<String> = Default::default();
    // The next table announcement to look for (`catalog/`): known after
    // the first listing of the announcements, which precedes the first
    // listing of the tables so that no table falls between the two.
    let mut announced_next: Option<u64> = None;
    info!(store = %replica.store.config, "replica following the object store");
    while !stop.load(Ordering::Acquire) {
        let round = Instant::now();
        let mut ok = true;
        // New tables once per discover interval; each table's keys once
        // per list interval (which also shows a gap); otherwise one GET of
        // each table's next key.
        let discover = last_discover.is_none_or(|t| t.elapsed() >= opts.discover_interval);
        let listed = last_list.is_none_or(|t| t.elapsed() >= opts.list_interval);
        if listed {
            last_list = Some(Instant::now());
        }
        if discover && announced_next.is_none() {
            match replica
                .rt
                .block_on(super::catalog::next_seq(&replica.store))
            {
                Ok(n) => announced_next = Some(n),
                Err(e) => {
                    warn!(error = %e, "cannot list the table announcements; new tables are found by the table listing")
                }
            }
        }
        if discover {
            match replica.remote_tables() {
                Ok(t) => {
                    // Announced tables whose first segment is still on its
                    // way stay in the list.
                    for name in t {
                        if !tables.contains(&name) {
                            tables.push(name);
                        }
                    }
                    last_discover = Some(Instant::now());
                    *status
                        .discover_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = None;
                }
                Err(e) => {
                    ok = false;
                    let msg = e.to_string();
                    if logged.get("") != Some(&msg) {
                        warn!(error = %msg, "cannot list the store's tables; retrying");
                        logged.insert(String::new(), msg.clone());
                    }
                    *status
                        .discover_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(msg);
                }
            }
        }
        // New tables announced since: one GET of the next announcement's
        // key per round (404 when there is none).
        while let Some(n) = announced_next {
            match replica.rt.block_on(super::catalog::read(&replica.store, n)) {
                Ok(Some(super::catalog::Entry::Table(a))) => {
                    if !tables.contains(&a.table) {
                        info!(table = %a.table, "new table announced");
                        tables.push(a.table);
                    }
                    announced_next = Some(n + 1);
                }
                Ok(Some(super::catalog::Entry::Epoch(e))) => {
                    info!(epoch = e, "a new primary took over the store's history");
                    announced_next = Some(n + 1);
                }
                Ok(None) => break,
                Err(e) => {
                    if logged.get(" catalog") != Some(&e) {
                        warn!(error = %e, "cannot read a table announcement; new tables are found by the table listing");
                        logged.insert(" catalog".into(), e);
                    }
                    break;
                }
            }
        }
        for t in &tables {
            if stop.load(Ordering::Acquire) {
                break;
            }
            if ignored.contains(t) {
                continue;
            }
            let r = if listed {
                replica.sync_table(t)
            } else {
                replica.sync_table_next(t)
            };
            match r {
                Ok(r) => {
                    logged.remove(t);
                    let now = now_us();
                    status.update(t, |s| {
                        s.applied_txn = r.txn;
                        s.last_error = None;
                        if r.txns > 0 {
                            s.applied_commit_time_us = r.last_commit_time_us;
                            s.lag_seconds = (now - r.last_commit_time_us) as f64 / 1e6;
                            s.segments_applied += r.segments;
                            s.rows_applied += r.rows;
                        }
                    });
                }
                Err(ReplicationError::BehindRetention {
                    applied, oldest, ..
                }) => {
                    warn!(table = %t, applied, "the store no longer holds the segments this table needs next; rebuilding it from the newest snapshot");
                    let rebuilt = replica.rebuild_table(t, applied + 1, oldest);
                    if let Err(e @ ReplicationError::Dropped { .. }) = &rebuilt {
                        warn!(table = %t, "{e}");
                        ignored.insert(t.clone());
                    } else if let Err(e) = rebuilt {
                        ok = false;
                        let msg = e.to_string();
                        if logged.get(t) != Some(&msg) {
                            error!(table = %t, error = %msg, "cannot rebuild the table; retrying");
                            logged.insert(t.clone(), msg.clone());
                        }
                        status.update(t, |s| s.last_error = Some(msg));
                    }
                }
                Err(e) => {
                    ok = false;
                    let msg = e.to_string();
                    if logged.get(t) != Some(&msg) {
                        error!(table = %t, error = %msg, "replica sync failed; the table stays at its last good txn and retries");
                        logged.insert(t.clone(), msg.clone());
                    }
                    let applied = replica.applied_txn(t).unwrap_or(0);
                    status.update(t, |s| {
                        s.applied_txn = applied;
                        s.last_error = Some(msg);
                    });
                }
            }
        }
        if ok {
            status.last_sync_us.store(now_us(), Ordering::Release);
        }
        let wait = opts.poll_interval.saturating_sub(round.elapsed());
        std::thread::sleep(wait);
    }
    if let Err(e) = replica.checkpoint_all() {
        error!(error = %e, "checkpoint at shutdown failed; the next start downloads again what came after the last one");
    }
    info!("replica stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{Compression, Link, SegmentWriter};
    use object_store::{PutMode, PutPayload};

    /// A table built from a snapshot whose txn falls inside the chain's
    /// last segment, on a table that gets no new segment: the rest of that
    /// segment is applied at the first sync, and a promotion can open the
    /// next epoch after it.
    #[test]
    fn a_table_inside_the_last_segment_catches_up_and_can_be_promoted() {
        let (store, rt) = crate::store::memory_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let gen = crate::gen::CpuGenerator::default();
        let schema = gen.schema().clone();
        let mut w = SegmentWriter::new(7, "t", &schema).unwrap();
        for txn in 1..=10u64 {
            w.push(txn, 1_000 + txn as i64, gen.batch(txn * 10, 10, 0))
                .unwrap();
        }
        let seg = w
            .finish_linked(
                Link {
                    epoch: 1,
                    prev_xxh3: 0,
                },
                Compression::None,
            )
            .unwrap();
        let bytes = seg.into_bytes();
        rt.block_on(store.inner.put_opts(
            &segment_key(&store, "t", 1),
            PutPayload::from(bytes.clone()),
            PutMode::Create.into(),
        ))
        .unwrap();
        // What a snapshot at txn 5 would have built.
        {
            let mut t = TableWriter::create_with_id(dir.path(), "t", &schema, 7).unwrap();
            let s = Segment::from_slice(&bytes).unwrap();
            apply_segment_until(&mut t, &s, 5).unwrap();
            t.checkpoint().unwrap();
            assert_eq!(t.state().txn, 5);
        }
        let mut r = Replica::new(store.clone(), dir.path()).unwrap();
        let got = r.sync_table_next("t").unwrap();
        assert_eq!(got.txn, 10, "the rest of the segment holding txn 6");
        assert_eq!(got.rows, 50);
        let (txn, _) = r.start_epoch("t", 2, 4).unwrap();
        assert_eq!(txn, 11);
    }
}
