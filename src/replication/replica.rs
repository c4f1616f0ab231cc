//! The replica: applies the segments a primary uploaded, in txn order, into
//! its own tables. Every table's position is its own durable state (the
//! table's checkpointed txn), so a restarted replica resumes exactly where
//! it stopped. A bad object (corrupt, truncated, foreign, misplaced) is
//! refused with an error naming it; the table stays at its last good txn
//! and the next sync tries again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use object_store::ObjectStoreExt;
use rkyv::util::AlignedVec;
use tracing::info;

use super::{first_txn_of, segment_key, table_prefix};
use crate::segment::{apply_segment, Segment, SegmentError};
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
}

/// A read-only copy of the tables a primary uploads.
pub struct Replica {
    store: Store,
    data_dir: PathBuf,
    rt: tokio::runtime::Runtime,
    tables: BTreeMap<String, TableWriter>,
}

impl Replica {
    pub fn new(store: Store, data_dir: &Path) -> Result<Replica, ReplicationError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| ReplicationError::Io(format!("{}: {e}", data_dir.display())))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ReplicationError::Io(format!("tokio runtime: {e}")))?;
        Ok(Replica {
            store,
            data_dir: data_dir.to_path_buf(),
            rt,
            tables: BTreeMap::new(),
        })
    }

    /// The table's applied txn on this replica (0 when it has none yet).
    pub fn applied_txn(&mut self, table: &str) -> Result<u64, ReplicationError> {
        Ok(self.writer(table)?.map_or(0, |w| w.state().txn))
    }

    fn writer(&mut self, table: &str) -> Result<Option<&mut TableWriter>, ReplicationError> {
        if !self.tables.contains_key(table) && self.data_dir.join(table).is_dir() {
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
    /// order, each made durable before the next. Stops at the first bad
    /// object with an error naming it; what was applied before stays.
    pub fn sync_table(&mut self, table: &str) -> Result<SyncReport, ReplicationError> {
        let applied = self.applied_txn(table)?;
        let prefix = table_prefix(&self.store, table);
        let after = segment_key(&self.store, table, applied);
        let keys = self.rt.block_on(self.store.list_after(&prefix, &after))?;
        let mut report = SyncReport {
            txn: applied,
            ..SyncReport::default()
        };
        for key in keys {
            let first = first_txn_of(&key).ok_or_else(|| ReplicationError::Misplaced {
                key: key.to_string(),
                why: "the name is not <first txn, 20 digits>.seg".into(),
            })?;
            if first != report.txn + 1 {
                return Err(ReplicationError::Gap {
                    table: table.to_string(),
                    applied: report.txn,
                    next_key: key.to_string(),
                });
            }
            let bytes = self
                .rt
                .block_on(async { self.store.inner.get(&key).await?.bytes().await })?;
            let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
            aligned.extend_from_slice(&bytes);
            drop(bytes);
            let bad = |source| ReplicationError::BadObject {
                key: key.to_string(),
                source,
            };
            let seg = Segment::from_aligned(aligned).map_err(bad)?;
            let h = seg.header();
            if h.first_txn.to_native() != first || h.table.as_str() != table {
                return Err(ReplicationError::Misplaced {
                    key: key.to_string(),
                    why: format!(
                        "it holds txns {}..={} of table {}",
                        h.first_txn,
                        h.last_txn,
                        h.table.as_str()
                    ),
                });
            }
            if self.writer(table)?.is_none() {
                let w = create_from_header(&self.data_dir, &seg).map_err(bad)?;
                info!(table, "created replica table from the first segment");
                self.tables.insert(table.to_string(), w);
            }
            let w = self.tables.get_mut(table).expect("opened or created above");
            let r = apply_segment(w, &seg).map_err(bad)?;
            // The replica's position is durable before the next segment.
            w.checkpoint()?;
            report.segments += 1;
            report.txns += r.applied_txns;
            report.rows += r.rows;
            report.txn = w.state().txn;
        }
        Ok(report)
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
    for c in h.columns.iter().filter(|c| c.added_in.to_native() == 1) {
        let ty = ColumnType::from_tag(c.ty)
            .ok_or_else(|| SegmentError::Malformed(format!("column type tag {}", c.ty)))?;
        cols.push((c.name.as_str(), ty));
    }
    let ts = h
        .columns
        .get(h.timestamp_column.to_native() as usize)
        .map(|c| c.name.as_str());
    let partition_by = PartitionBy::from_tag(h.partition_by)
        .ok_or_else(|| SegmentError::Malformed(format!("partition tag {}", h.partition_by)))?;
    let schema = Schema::new(cols, ts, partition_by)?;
    Ok(TableWriter::create_with_id(
        data_dir,
        h.table.as_str(),
        &schema,
        h.table_id.to_native(),
    )?)
}
