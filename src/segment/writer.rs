//! Building a segment (format version 2) from committed txns: each txn's
//! WAL record is copied once, as the shard wrote it, into the buffer that
//! is uploaded; sealing hashes the body once and serializes a small rkyv
//! header after it.

use std::sync::{Arc, Mutex};

use rkyv::rancor;
use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::format::{
    align_up, Compression, Preamble, SegmentError, FORMAT_VERSION, PREAMBLE_BYTES,
    SEGMENT_BYTES_MAX,
};
use super::{ColumnDef, SegmentHeaderV2};
use crate::batch::{codec, Batch};
use crate::table::Schema;
use crate::wal::format::{self as wal_format, RecordHeader, RECORD_HEADER_BYTES};

/// xxh3-64 of a version 1 column block's contents, in a fixed order:
/// validity (a presence byte, then the bitmap), values, offsets
/// (little-endian), then each dictionary string as a u32 length and its bytes.
pub(crate) fn block_hash(
    validity: Option<&[u8]>,
    values: &[u8],
    offsets: &[u64],
    dict: &mut dyn Iterator<Item = &str>,
) -> u64 {
    let mut h = Xxh3::new();
    match validity {
        Some(v) => {
            h.update(&[1]);
            h.update(v);
        }
        None => h.update(&[0]),
    }
    h.update(values);
    for o in offsets {
        h.update(&o.to_le_bytes());
    }
    for s in dict {
        h.update(&(s.len() as u32).to_le_bytes());
        h.update(s.as_bytes());
    }
    h.digest()
}

fn column_defs(schema: &Schema) -> Vec<ColumnDef> {
    schema
        .columns
        .iter()
        .map(|c| ColumnDef {
            name: c.name.clone(),
            ty: c.ty.tag(),
            added_in: c.added_in,
        })
        .collect()
}

/// Where a segment stands in its table's chain: the epoch of the primary
/// writing it and the checksum of the segment before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub epoch: u64,
    /// [`EncodedSegment::checksum`] of the previous segment; 0 before a
    /// table's first segment.
    pub prev_xxh3: u64,
}

/// The epoch of a primary that never failed over (the first ownership).
pub const FIRST_EPOCH: u64 = 1;

/// Collects txns of one table, in txn order, into one segment.
pub struct SegmentWriter {
    header: SegmentHeaderV2,
    schema: Schema,
    /// Preamble placeholder, then the records pushed so far.
    buf: AlignedVec<16>,
    pool: Option<Arc<BufferPool>>,
}

impl SegmentWriter {
    /// A segment of `table` (id `table_id`) with columns as of `schema`.
    /// Only tables with a designated timestamp replicate.
    pub fn new(table_id: u64, table: &str, schema: &Schema) -> Result<SegmentWriter, SegmentError> {
        Self::new_in(table_id, table, schema, None, 0)
    }

    /// [`SegmentWriter::new`] whose buffer comes from `pool` (returned to
    /// it when the encoded segment, or the upload body made from it, is
    /// dropped), with room for about `capacity` bytes of records: a steady
    /// stream of segments reuses warm memory.
    pub fn new_in(
        table_id: u64,
        table: &str,
        schema: &Schema,
        pool: Option<&Arc<BufferPool>>,
        capacity: usize,
    ) -> Result<SegmentWriter, SegmentError> {
        let ts = schema.timestamp.ok_or_else(|| {
            SegmentError::Schema(format!(
                "table {table} has no designated timestamp: it is local-only and never replicates"
            ))
        })?;
        let want = PREAMBLE_BYTES + capacity;
        let mut buf = match pool {
            Some(p) => p.take(want),
            None => AlignedVec::<16>::with_capacity(want),
        };
        buf.extend_from_slice(&[0u8; PREAMBLE_BYTES]);
        Ok(SegmentWriter {
            header: SegmentHeaderV2 {
                table_id,
                table: table.to_string(),
                epoch: FIRST_EPOCH,
                prev_xxh3: 0,
                schema_version: schema.version,
                columns: column_defs(schema),
                timestamp_column: ts as u32,
                partition_by: schema.partition_by as u8,
                first_txn: 0,
                last_txn: 0,
                row_count: 0,
                min_ts_us: i64::MAX,
                max_ts_us: i64::MIN,
                commit_times_us: Vec::new(),
            },
            schema: schema.clone(),
            buf,
            pool: pool.cloned(),
        })
    }

    /// The table's schema grew (columns added): later txns may use it.
    pub fn set_schema(&mut self, schema: &Schema) -> Result<(), SegmentError> {
        if schema.columns.len() < self.schema.columns.len()
            || schema.columns[..self.schema.columns.len()] != self.schema.columns[..]
        {
            return Err(SegmentError::Schema(
                "a schema may only grow by appended columns".into(),
            ));
        }
        self.header.schema_version = schema.version;
        self.header.columns = column_defs(schema);
        self.schema = schema.clone();
        Ok(())
    }

    /// The schema version the segment's columns are at.
    pub fn schema_version(&self) -> u32 {
        self.schema.version
    }

    pub fn txn_count(&self) -> usize {
        self.header.commit_times_us.len()
    }

    /// Bytes of records pushed so far: about what the body will be.
    pub fn data_bytes(&self) -> usize {
        self.buf.len() - PREAMBLE_BYTES
    }

    pub fn last_txn(&self) -> Option<u64> {
        (self.txn_count() > 0).then_some(self.header.last_txn)
    }

    fn check_next(&mut self, txn: u64) -> Result<(), SegmentError> {
        match self.last_txn() {
            Some(last) if txn != last + 1 => Err(SegmentError::Schema(format!(
                "txn {txn} does not follow txn {last}: a segment is a contiguous run"
            ))),
            Some(_) => Ok(()),
            None => {
                self.header.first_txn = txn;
                Ok(())
            }
        }
    }

    /// Adds committed txn `txn` from a batch (encoded as the WAL would).
    /// It must be valid for the table's schema.
    pub fn push(
        &mut self,
        txn: u64,
        commit_time_us: i64,
        batch: Batch,
    ) -> Result<(), SegmentError> {
        batch
            .validate(&self.schema)
            .map_err(|e| SegmentError::Schema(format!("txn {txn}: {e}")))?;
        let ncols = batch.columns.len();
        let mut payload = Vec::new();
        codec::encode(&batch, &mut payload);
        let h = RecordHeader {
            payload_len: payload.len() as u32,
            txn,
            commit_time_us,
            group_start: 0,
            row_count: batch.row_count() as u32,
            schema_version: self.schema.columns[ncols - 1].added_in as u16,
            flags: 0,
        };
        let mut record = Vec::with_capacity(wal_format::record_bytes(h.payload_len) as usize);
        wal_format::append_record(&mut record, &h, &payload);
        self.push_record(&h, &record)
    }

    /// Adds txn `txn` that was aborted on the primary (its WAL write
    /// failed): no rows, but its number exists. Commit time 0, so the
    /// segment is the same whenever it is rebuilt.
    pub fn push_aborted(&mut self, txn: u64) -> Result<(), SegmentError> {
        let h = RecordHeader {
            payload_len: 0,
            txn,
            commit_time_us: 0,
            group_start: 0,
            row_count: 0,
            schema_version: 0,
            flags: 0,
        };
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES);
        wal_format::append_record(&mut record, &h, &[]);
        self.push_record(&h, &record)
    }

    /// Adds a committed txn's WAL record exactly as the shard wrote it
    /// (`record`: header, payload and padding, checksum verified by the
    /// reader of the WAL; `h` its decoded header). The one copy of the
    /// txn's data on its way to the store.
    pub fn push_record(&mut self, h: &RecordHeader, record: &[u8]) -> Result<(), SegmentError> {
        let txn = h.txn;
        if record.len() as u64 != wal_format::record_bytes(h.payload_len) {
            return Err(SegmentError::Schema(format!(
                "txn {txn}: a record of {} bytes for a payload of {}",
                record.len(),
                h.payload_len
            )));
        }
        if (self.data_bytes() + record.len()) as u64 > SEGMENT_BYTES_MAX {
            return Err(SegmentError::Schema(format!(
                "txn {txn}: a segment holds at most {SEGMENT_BYTES_MAX} bytes"
            )));
        }
        if h.payload_len > 0 && u32::from(h.schema_version) > self.schema.version {
            return Err(SegmentError::Schema(format!(
                "txn {txn} was built for schema version {}, the segment's is {}",
                h.schema_version, self.schema.version
            )));
        }
        self.check_next(txn)?;
        if h.row_count > 0 {
            let payload =
                &record[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.payload_len as usize];
            let ts = codec::fixed_column(payload, self.header.timestamp_column as usize)
                .ok_or_else(|| {
                    SegmentError::Schema(format!(
                        "txn {txn}: the record has no designated timestamp column"
                    ))
                })?;
            let (mut lo, mut hi) = (self.header.min_ts_us, self.header.max_ts_us);
            for v in ts.chunks_exact(8) {
                let t = i64::from_le_bytes(v.try_into().expect("8 bytes"));
                lo = lo.min(t);
                hi = hi.max(t);
            }
            (self.header.min_ts_us, self.header.max_ts_us) = (lo, hi);
        }
        self.buf.extend_from_slice(record);
        self.header.last_txn = txn;
        self.header.row_count += u64::from(h.row_count);
        self.header.commit_times_us.push(h.commit_time_us);
        Ok(())
    }

    /// Serializes the segment: preamble, the records as pushed (the
    /// buffer they were copied into), the header after them.
    pub fn finish(self, compression: Compression) -> Result<EncodedSegment, SegmentError> {
        self.finish_linked(
            Link {
                epoch: FIRST_EPOCH,
                prev_xxh3: 0,
            },
            compression,
        )
    }

    /// [`SegmentWriter::finish`] at `link` in the table's chain.
    pub fn finish_linked(
        mut self,
        link: Link,
        compression: Compression,
    ) -> Result<EncodedSegment, SegmentError> {
        if self.txn_count() == 0 {
            return Err(SegmentError::Schema(
                "a segment needs at least one txn".into(),
            ));
        }
        self.header.epoch = link.epoch;
        self.header.prev_xxh3 = link.prev_xxh3;
        let ser =
            |e: rancor::Error| SegmentError::Malformed(format!("rkyv serialization failed: {e}"));
        let mut buf = std::mem::take(&mut self.buf);
        let body_raw_len = buf.len() - PREAMBLE_BYTES;
        if compression == Compression::Lz4 {
            let packed = lz4_flex::block::compress(&buf[PREAMBLE_BYTES..]);
            buf.resize(PREAMBLE_BYTES, 0);
            buf.extend_from_slice(&packed);
        }
        let body_len = buf.len() - PREAMBLE_BYTES;
        let body_xxh3 = xxh3_64(&buf[PREAMBLE_BYTES..]);
        let header_off = align_up(buf.len());
        buf.resize(header_off, 0);
        let mut buf =
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(&self.header, buf).map_err(ser)?;
        let header_len = buf.len() - header_off;
        let preamble = Preamble {
            version: FORMAT_VERSION,
            compression,
            header_len: u32::try_from(header_len)
                .map_err(|_| SegmentError::Malformed("header over 4 GiB".into()))?,
            body_len: body_len as u64,
            body_raw_len: body_raw_len as u64,
            header_xxh3: xxh3_64(&buf[header_off..]),
            body_xxh3,
        };
        buf[..PREAMBLE_BYTES].copy_from_slice(&preamble.encode());
        debug_assert_eq!(preamble.total_len(), buf.len() as u64);
        Ok(EncodedSegment {
            bytes: Some(buf),
            pool: self.pool.take(),
            preamble,
            first_txn: self.header.first_txn,
            last_txn: self.header.last_txn,
            commit_times_us: std::mem::take(&mut self.header.commit_times_us),
        })
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            if self.buf.capacity() > 0 {
                pool.give(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// The checksum of a segment's bytes (see [`EncodedSegment::checksum`]);
/// 0 for bytes too short to have a preamble.
pub(crate) fn checksum_of(bytes: &[u8]) -> u64 {
    bytes
        .get(56..64)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Reusable encode buffers, at most `buffers_max` kept.
pub struct BufferPool {
    free: Mutex<Vec<AlignedVec<16>>>,
    buffers_max: usize,
}

impl BufferPool {
    pub fn new(buffers_max: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool {
            free: Mutex::new(Vec::new()),
            buffers_max,
        })
    }

    fn take(&self, capacity: usize) -> AlignedVec<16> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match free.iter().position(|b| b.capacity() >= capacity) {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                AlignedVec::with_capacity(capacity)
            }
        }
    }

    fn give(&self, mut buf: AlignedVec<16>) {
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.buffers_max {
            free.push(buf);
        }
    }

    /// Buffers waiting for reuse.
    pub fn len(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A pooled buffer as the owner behind an upload body.
struct Pooled {
    buf: Option<AlignedVec<16>>,
    pool: Option<Arc<BufferPool>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or(&[])
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let (Some(buf), Some(pool)) = (self.buf.take(), &self.pool) {
            pool.give(buf);
        }
    }
}

/// A serialized segment: the buffer to upload or write as a file.
pub struct EncodedSegment {
    bytes: Option<AlignedVec<16>>,
    pool: Option<Arc<BufferPool>>,
    pub preamble: Preamble,
    pub first_txn: u64,
    pub last_txn: u64,
    /// Commit time of each txn, in txn order.
    pub commit_times_us: Vec<i64>,
}

impl EncodedSegment {
    /// The segment's checksum: the xxh3 in bytes 56..64 of its preamble,
    /// which covers the header's and the body's. The next segment of the
    /// table links to it.
    pub fn checksum(&self) -> u64 {
        checksum_of(self.as_slice())
    }

    pub fn as_slice(&self) -> &[u8] {
        self.bytes.as_deref().unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// The buffer as an upload body (`object_store::PutPayload::from(Bytes)`),
    /// without copying: `Bytes` takes ownership of the aligned buffer (and
    /// gives it back to its pool when the last clone is dropped).
    pub fn into_bytes(mut self) -> bytes::Bytes {
        bytes::Bytes::from_owner(Pooled {
            buf: self.bytes.take(),
            pool: self.pool.take(),
        })
    }

    /// Writes the segment to `path` durably (temp file, fsync, rename,
    /// fsync of the directory).
    pub fn write_file(&self, path: &std::path::Path) -> Result<(), SegmentError> {
        let bad = || SegmentError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other("not a file path"),
        };
        let dir = path.parent().ok_or_else(bad)?;
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        crate::table::files::durable_replace(dir, name, self.as_slice())
            .map_err(SegmentError::Table)
    }
}

impl Drop for EncodedSegment {
    fn drop(&mut self) {
        if let (Some(buf), Some(pool)) = (self.bytes.take(), &self.pool) {
            pool.give(buf);
        }
    }
}
