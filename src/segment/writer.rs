//! Building a segment from committed txns, serialized with rkyv straight
//! into the buffer that is uploaded.

use std::sync::{Arc, Mutex};

use rkyv::rancor;
use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::format::{
    align_up, Compression, Preamble, SegmentError, FORMAT_VERSION, PREAMBLE_BYTES,
};
use super::{ColumnBlock, ColumnDef, SegmentBody, SegmentHeader, TxnBlock};
use crate::batch::{Batch, ColumnBuf, Values};
use crate::table::Schema;

/// xxh3-64 of a column block's contents, in a fixed order: validity
/// (a presence byte, then the bitmap), values, offsets (little-endian),
/// then each dictionary string as a u32 length and its bytes.
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

/// Collects txns of one table, in txn order, into one segment.
pub struct SegmentWriter {
    header: SegmentHeader,
    body: SegmentBody,
    schema: Schema,
    /// Bytes of column data pushed so far (for sealing by size).
    data_bytes: usize,
}

impl SegmentWriter {
    /// A segment of `table` (id `table_id`) with columns as of `schema`.
    /// Only tables with a designated timestamp replicate.
    pub fn new(table_id: u64, table: &str, schema: &Schema) -> Result<SegmentWriter, SegmentError> {
        let ts = schema.timestamp.ok_or_else(|| {
            SegmentError::Schema(format!(
                "table {table} has no designated timestamp: it is local-only and never replicates"
            ))
        })?;
        Ok(SegmentWriter {
            header: SegmentHeader {
                table_id,
                table: table.to_string(),
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
            body: SegmentBody { txns: Vec::new() },
            schema: schema.clone(),
            data_bytes: 0,
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
        self.body.txns.len()
    }

    /// Column bytes pushed so far: about what the body will be.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    pub fn last_txn(&self) -> Option<u64> {
        (!self.body.txns.is_empty()).then_some(self.header.last_txn)
    }

    /// Adds committed txn `txn`, which must follow the last one. The batch's
    /// buffers move into the segment (no copy); it must be valid for the
    /// table's schema (the WAL decoder and `Database::submit` check that).
    pub fn push(
        &mut self,
        txn: u64,
        commit_time_us: i64,
        batch: Batch,
    ) -> Result<(), SegmentError> {
        if let Some(last) = self.last_txn() {
            if txn != last + 1 {
                return Err(SegmentError::Schema(format!(
                    "txn {txn} does not follow txn {last}: a segment is a contiguous run"
                )));
            }
        } else {
            self.header.first_txn = txn;
        }
        batch
            .validate(&self.schema)
            .map_err(|e| SegmentError::Schema(format!("txn {txn}: {e}")))?;
        let rows = batch.row_count();
        let ncols = batch.columns.len();
        let schema_version = self.schema.columns[ncols - 1].added_in;
        let ts_col = self.header.timestamp_column as usize;
        if let Some(Values::Fixed(ts)) = batch.columns.get(ts_col).map(|c| &c.values) {
            for v in ts.chunks_exact(8) {
                let t = i64::from_le_bytes(v.try_into().expect("8 bytes"));
                self.header.min_ts_us = self.header.min_ts_us.min(t);
                self.header.max_ts_us = self.header.max_ts_us.max(t);
            }
        }
        let columns = batch
            .columns
            .into_iter()
            .map(column_block)
            .collect::<Vec<_>>();
        self.data_bytes += columns
            .iter()
            .map(|c| {
                c.values.len()
                    + c.offsets.len() * 8
                    + c.validity.as_ref().map_or(0, Vec::len)
                    + c.dict.iter().map(|s| s.len() + 8).sum::<usize>()
            })
            .sum::<usize>();
        self.header.last_txn = txn;
        self.header.row_count += rows as u64;
        self.header.commit_times_us.push(commit_time_us);
        self.body.txns.push(TxnBlock {
            txn,
            row_count: rows as u32,
            schema_version,
            columns,
        });
        Ok(())
    }

    /// Serializes the segment: preamble, header and body in one aligned
    /// buffer. Without compression the body is serialized in place, so the
    /// column data is copied exactly once (into this buffer).
    pub fn finish(self, compression: Compression) -> Result<EncodedSegment, SegmentError> {
        self.finish_with(compression, None)
    }

    /// [`SegmentWriter::finish`] into a buffer from `pool` (returned to it
    /// when the encoded segment, or the upload body made from it, is
    /// dropped): a steady stream of segments reuses warm memory instead of
    /// faulting in fresh pages for every one.
    pub fn finish_with(
        self,
        compression: Compression,
        pool: Option<&Arc<BufferPool>>,
    ) -> Result<EncodedSegment, SegmentError> {
        if self.body.txns.is_empty() {
            return Err(SegmentError::Schema(
                "a segment needs at least one txn".into(),
            ));
        }
        let ser =
            |e: rancor::Error| SegmentError::Malformed(format!("rkyv serialization failed: {e}"));
        // Header and body archives plus rkyv's small per-vector overhead.
        let estimate = PREAMBLE_BYTES + 4096 + self.data_bytes + self.body.txns.len() * 256;
        let mut buf = match pool {
            Some(p) => p.take(estimate),
            None => AlignedVec::<16>::with_capacity(estimate),
        };
        buf.extend_from_slice(&[0u8; PREAMBLE_BYTES]);
        let mut buf =
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(&self.header, buf).map_err(ser)?;
        let header_len = buf.len() - PREAMBLE_BYTES;
        let body_off = align_up(buf.len());
        buf.resize(body_off, 0);
        let mut buf =
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(&self.body, buf).map_err(ser)?;
        let body_raw_len = buf.len() - body_off;
        if compression == Compression::Lz4 {
            let packed = lz4_flex::block::compress(&buf[body_off..]);
            buf.resize(body_off, 0);
            buf.extend_from_slice(&packed);
        }
        let preamble = Preamble {
            version: FORMAT_VERSION,
            compression,
            header_len: u32::try_from(header_len)
                .map_err(|_| SegmentError::Malformed("header over 4 GiB".into()))?,
            body_len: (buf.len() - body_off) as u64,
            body_raw_len: body_raw_len as u64,
            header_xxh3: xxh3_64(&buf[PREAMBLE_BYTES..PREAMBLE_BYTES + header_len]),
            body_xxh3: xxh3_64(&buf[body_off..]),
        };
        buf[..PREAMBLE_BYTES].copy_from_slice(&preamble.encode());
        debug_assert_eq!(preamble.total_len(), buf.len() as u64);
        Ok(EncodedSegment {
            bytes: Some(buf),
            pool: pool.cloned(),
            preamble,
            first_txn: self.header.first_txn,
            last_txn: self.header.last_txn,
        })
    }
}

fn column_block(c: ColumnBuf) -> ColumnBlock {
    let (values, offsets) = match c.values {
        Values::Fixed(v) => (v, Vec::new()),
        Values::Var { offsets, bytes } => (bytes, offsets),
    };
    // In memory one byte per row; in the segment a bitmap, as in the WAL.
    let validity = c.validity.as_deref().map(crate::batch::pack_bits);
    let xxh3 = block_hash(
        validity.as_deref(),
        &values,
        &offsets,
        &mut c.dict.iter().map(String::as_str),
    );
    ColumnBlock {
        validity,
        values,
        offsets,
        dict: c.dict,
        xxh3,
    }
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
}

impl EncodedSegment {
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
