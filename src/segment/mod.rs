//! Segments: what crosses the object store. A segment is an immutable run of
//! committed txns of one table, made on the primary and applied on replicas.
//!
//! Format version 2 (written today; docs/format.md, "Segments"):
//!
//! ```text
//! preamble (64 bytes, fixed, little-endian; its own xxh3)
//! body     the txns' WAL records, exactly as the shards wrote them (lz4 when compressed)
//! header   rkyv archive of [`SegmentHeaderV2`] (epoch, link to the previous segment)
//! ```
//!
//! Sealing copies each WAL record once into the upload buffer and hashes
//! the body once; the records keep the checksums the shards computed.
//! A replica maps the segment, checks the preamble, the header and body
//! checksums, and applies each record's payload in place
//! ([`crate::batch::codec::view`]) without building a batch.
//!
//! Version 1 (rkyv header and an rkyv body of column blocks) is still read.

mod format;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

pub use format::{
    reseal, Compression, Preamble, SegmentError, ACCEPTED_VERSIONS, FORMAT_VERSION, MAGIC,
    PREAMBLE_BYTES, SEGMENT_BYTES_MAX,
};
pub use reader::{
    apply_segment, apply_segment_until, diagnose_body, ApplyReport, BlockCheck, Segment,
    SegmentInfo, APPLY_STEP_BYTES,
};
pub use writer::{BufferPool, EncodedSegment, Link, SegmentWriter, FIRST_EPOCH};

use rkyv::{Archive, Serialize};

/// A column of the table as of the segment's last txn.
#[derive(Archive, Serialize, Clone, Debug, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    /// `ColumnType` as its on-disk code (docs/format.md, `_meta`).
    pub ty: u8,
    /// Schema version that added the column (1 for the table's first columns).
    pub added_in: u32,
}

/// What a version 2 segment is: read and checked before the body is touched.
#[derive(Archive, Serialize, Clone, Debug, PartialEq)]
pub struct SegmentHeaderV2 {
    pub table_id: u64,
    pub table: String,
    /// Ownership epoch of the primary that wrote the segment (never lower
    /// than the previous segment's).
    pub epoch: u64,
    /// The previous segment's checksum (the xxh3 in bytes 56..64 of its
    /// preamble, which covers its header and body checksums); 0 for a
    /// table's first segment. The chain of links proves one history.
    pub prev_xxh3: u64,
    /// Schema version of the table after the segment's last txn.
    pub schema_version: u32,
    /// The table's columns at that version.
    pub columns: Vec<ColumnDef>,
    /// Index of the designated timestamp column.
    pub timestamp_column: u32,
    /// `PartitionBy` as its on-disk code.
    pub partition_by: u8,
    pub first_txn: u64,
    pub last_txn: u64,
    pub row_count: u64,
    /// Designated timestamps, µs (`i64::MAX`/`i64::MIN` when no rows).
    pub min_ts_us: i64,
    pub max_ts_us: i64,
    /// Commit time of each txn, µs since the epoch, in txn order (0 for an
    /// aborted txn).
    pub commit_times_us: Vec<i64>,
}

/// What a version 1 segment is (read only).
#[derive(Archive, Serialize, Clone, Debug, PartialEq)]
pub struct SegmentHeader {
    pub table_id: u64,
    pub table: String,
    /// Schema version of the table after the segment's last txn.
    pub schema_version: u32,
    /// The table's columns at that version. Columns whose `added_in` is above
    /// a replica's schema version are the schema changes the segment carries.
    pub columns: Vec<ColumnDef>,
    /// Index of the designated timestamp column.
    pub timestamp_column: u32,
    /// `PartitionBy` as its on-disk code.
    pub partition_by: u8,
    pub first_txn: u64,
    pub last_txn: u64,
    pub row_count: u64,
    /// Designated timestamps, µs (`i64::MAX`/`i64::MIN` when no rows).
    pub min_ts_us: i64,
    pub max_ts_us: i64,
    /// Commit time of each txn, µs since the epoch, in txn order.
    pub commit_times_us: Vec<i64>,
}

/// The txns of a version 1 segment, in order, with their column data.
#[derive(Archive, Serialize, Debug, PartialEq)]
pub struct SegmentBody {
    pub txns: Vec<TxnBlock>,
}

#[derive(Archive, Serialize, Debug, PartialEq)]
pub struct TxnBlock {
    pub txn: u64,
    pub row_count: u32,
    /// Schema version the txn's batch was built for: its columns are that
    /// version's (a prefix of the header's columns).
    pub schema_version: u32,
    pub columns: Vec<ColumnBlock>,
}

/// One column of one txn, exactly as the WAL payload carries it.
#[derive(Archive, Serialize, Debug, PartialEq)]
pub struct ColumnBlock {
    /// Validity bitmap, LSB first, one bit per row; `None` = every row valid.
    pub validity: Option<Vec<u8>>,
    /// Fixed-width values (little-endian), or the bytes of a varchar column.
    pub values: Vec<u8>,
    /// Varchar: `row_count + 1` offsets into `values`; empty otherwise.
    pub offsets: Vec<u64>,
    /// Symbol: the strings the keys in `values` index (txn-local keys).
    /// Applied in txn order, new ones extend the table dictionary exactly as
    /// on the primary.
    pub dict: Vec<String>,
    /// xxh3-64 of this block (see `writer::block_hash`): names a damaged block.
    pub xxh3: u64,
}
