//! Reading a segment (format versions 1 and 2): checksums first, then
//! validated rkyv access in place; and applying it into a table: version 2
//! payloads are viewed in place and copied once into the column files' runs.

use std::path::Path;

use rkyv::rancor;
use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::xxh3_64;

use super::format::{Compression, Preamble, SegmentError};
use super::writer::{block_hash, checksum_of};
use super::{ArchivedSegmentBody, ArchivedSegmentHeader, ArchivedSegmentHeaderV2, ColumnDef};
use crate::batch::{codec, Batch, ColumnBuf, Values};
use crate::table::{ColumnType, Schema, TableWriter};
use crate::wal::format::{self as wal_format, RecordHeader, RECORD_HEADER_BYTES};

/// What a segment's header says, whatever its format version (read once
/// from the verified archive).
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentInfo {
    pub table_id: u64,
    pub table: String,
    /// Ownership epoch of the writer (0 for version 1, which has none).
    pub epoch: u64,
    /// Checksum of the previous segment (`None` for version 1).
    pub prev_xxh3: Option<u64>,
    pub schema_version: u32,
    pub columns: Vec<ColumnDef>,
    pub timestamp_column: u32,
    pub partition_by: u8,
    pub first_txn: u64,
    pub last_txn: u64,
    pub row_count: u64,
    pub min_ts_us: i64,
    pub max_ts_us: i64,
    pub commit_times_us: Vec<i64>,
}

fn column_defs_of(cols: &rkyv::vec::ArchivedVec<super::ArchivedColumnDef>) -> Vec<ColumnDef> {
    cols.iter()
        .map(|c| ColumnDef {
            name: c.name.as_str().to_string(),
            ty: c.ty,
            added_in: c.added_in.to_native(),
        })
        .collect()
}

/// A [`SegmentInfo`] from either version's archived header: the fields
/// both versions have are read the same way; `epoch` and `prev_xxh3` are
/// the version's own.
macro_rules! segment_info {
    ($h:expr, epoch: $epoch:expr, prev_xxh3: $prev:expr) => {{
        let h = $h;
        SegmentInfo {
            table_id: h.table_id.to_native(),
            table: h.table.as_str().to_string(),
            epoch: $epoch,
            prev_xxh3: $prev,
            schema_version: h.schema_version.to_native(),
            columns: column_defs_of(&h.columns),
            timestamp_column: h.timestamp_column.to_native(),
            partition_by: h.partition_by,
            first_txn: h.first_txn.to_native(),
            last_txn: h.last_txn.to_native(),
            row_count: h.row_count.to_native(),
            min_ts_us: h.min_ts_us.to_native(),
            max_ts_us: h.max_ts_us.to_native(),
            commit_times_us: h.commit_times_us.iter().map(|t| t.to_native()).collect(),
        }
    }};
}

impl SegmentInfo {
    /// Version 1 has no epoch and no link.
    fn from_v1(h: &ArchivedSegmentHeader) -> SegmentInfo {
        segment_info!(h, epoch: 0, prev_xxh3: None)
    }

    fn from_v2(h: &ArchivedSegmentHeaderV2) -> SegmentInfo {
        segment_info!(h, epoch: h.epoch.to_native(), prev_xxh3: Some(h.prev_xxh3.to_native()))
    }

    /// Number of txns.
    pub fn txn_count(&self) -> usize {
        self.commit_times_us.len()
    }
}

enum Data {
    Mapped(memmap2::Mmap),
    Owned(AlignedVec<16>),
}

impl Data {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Mapped(m) => m,
            Data::Owned(v) => v,
        }
    }
}

/// A verified segment. Its archives were validated when it was opened;
/// accessors read them in place.
pub struct Segment {
    data: Data,
    /// The decompressed body of a compressed segment.
    body: Option<AlignedVec<16>>,
    /// Private: the accessors trust its lengths, which `verify` checked.
    preamble: Preamble,
    info: SegmentInfo,
    /// Version 2: each txn's record (offset in the raw body, header).
    records: Vec<(usize, RecordHeader)>,
}

fn malformed(what: &str, e: rancor::Error) -> SegmentError {
    SegmentError::Malformed(format!("{what} archive does not validate: {e}"))
}

impl Segment {
    /// Memory-maps and verifies a segment file. Segment files are immutable
    /// once written (basalt writes them with a rename and never modifies
    /// them); another process changing a mapped file is outside the model.
    pub fn open(path: &Path) -> Result<Segment, SegmentError> {
        let io = |source| SegmentError::Io {
            path: path.display().to_string(),
            source,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only private mapping of an immutable file (see above).
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
        Segment::verify(Data::Mapped(map))
    }

    /// Memory-maps and verifies an open segment file (`path` names it in
    /// errors); the same immutability holds as for [`Segment::open`].
    pub fn map_file(f: &std::fs::File, path: &Path) -> Result<Segment, SegmentError> {
        // SAFETY: read-only private mapping of an immutable file (see `open`).
        let map = unsafe { memmap2::Mmap::map(f) }.map_err(|source| SegmentError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Segment::verify(Data::Mapped(map))
    }

    /// Verifies a segment held in memory (copied once into an aligned buffer
    /// unless it already is one).
    pub fn from_slice(bytes: &[u8]) -> Result<Segment, SegmentError> {
        let mut v = AlignedVec::<16>::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        Segment::verify(Data::Owned(v))
    }

    pub fn from_aligned(bytes: AlignedVec<16>) -> Result<Segment, SegmentError> {
        Segment::verify(Data::Owned(bytes))
    }

    fn verify(data: Data) -> Result<Segment, SegmentError> {
        let bytes = data.bytes();
        let preamble = Preamble::decode(bytes)?;
        let h_off = preamble.header_offset();
        let header = &bytes[h_off..h_off + preamble.header_len as usize];
        let b_off = preamble.body_offset();
        let stored_body = &bytes[b_off..b_off + preamble.body_len as usize];
        for (part, b, expected) in [
            ("header", header, preamble.header_xxh3),
            ("body", stored_body, preamble.body_xxh3),
        ] {
            let actual = xxh3_64(b);
            if actual != expected {
                return Err(SegmentError::ChecksumMismatch {
                    part: part.into(),
                    expected,
                    actual,
                });
            }
        }
        if preamble.version >= 2
            && bytes[b_off + stored_body.len()..h_off]
                .iter()
                .any(|&x| x != 0)
        {
            return Err(SegmentError::Malformed(
                "padding between body and header is not zero".into(),
            ));
        }
        // Checksums match: now the archives may be looked at (validated).
        let body = match preamble.compression {
            Compression::None => None,
            Compression::Lz4 => {
                let mut out = AlignedVec::<16>::with_capacity(preamble.body_raw_len as usize);
                out.resize(preamble.body_raw_len as usize, 0);
                let n = lz4_flex::block::decompress_into(stored_body, &mut out).map_err(|e| {
                    SegmentError::Malformed(format!("lz4 body does not decompress: {e}"))
                })?;
                if n as u64 != preamble.body_raw_len {
                    return Err(SegmentError::Malformed(format!(
                        "lz4 body decompresses to {n} bytes, the preamble says {}",
                        preamble.body_raw_len
                    )));
                }
                Some(out)
            }
        };
        let raw_body: &[u8] = body.as_deref().unwrap_or(stored_body);
        let (info, records) = if preamble.version == 1 {
            let h = rkyv::access::<ArchivedSegmentHeader, rancor::Error>(header)
                .map_err(|e| malformed("header", e))?;
            let b = rkyv::access::<ArchivedSegmentBody, rancor::Error>(raw_body)
                .map_err(|e| malformed("body", e))?;
            check_consistency(h, b)?;
            (SegmentInfo::from_v1(h), Vec::new())
        } else {
            let h = rkyv::access::<ArchivedSegmentHeaderV2, rancor::Error>(header)
                .map_err(|e| malformed("header", e))?;
            let info = SegmentInfo::from_v2(h);
            let records = check_records(&info, raw_body)?;
            (info, records)
        };
        Ok(Segment {
            data,
            body,
            preamble,
            info,
            records,
        })
    }

    /// The verified preamble.
    pub fn preamble(&self) -> &Preamble {
        &self.preamble
    }

    /// The segment's checksum (bytes 56..64 of its preamble, covering the
    /// header's and body's): what the next segment's link names.
    pub fn checksum(&self) -> u64 {
        checksum_of(self.data.bytes())
    }

    fn raw_body(&self) -> &[u8] {
        match &self.body {
            Some(b) => b,
            None => {
                let off = self.preamble.body_offset();
                &self.data.bytes()[off..off + self.preamble.body_len as usize]
            }
        }
    }

    /// What the header says.
    pub fn header(&self) -> &SegmentInfo {
        &self.info
    }

    fn v1_header(&self) -> &ArchivedSegmentHeader {
        let off = self.preamble.header_offset();
        let bytes = &self.data.bytes()[off..off + self.preamble.header_len as usize];
        // SAFETY: `verify` checked these exact, immutable bytes against their
        // xxh3 and validated them with `rkyv::access` before `self` existed.
        unsafe { rkyv::access_unchecked::<ArchivedSegmentHeader>(bytes) }
    }

    fn v1_body(&self) -> &ArchivedSegmentBody {
        // SAFETY: as in `v1_header`: verified and validated in `verify`.
        unsafe { rkyv::access_unchecked::<ArchivedSegmentBody>(self.raw_body()) }
    }

    /// Total bytes of the segment as stored.
    pub fn len(&self) -> usize {
        self.data.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Version 2: each txn's record header and payload, in txn order,
    /// in place (the payloads are not checked yet: see [`codec::view`]).
    pub fn records(&self) -> impl Iterator<Item = (&RecordHeader, &[u8])> {
        let body = self.raw_body();
        self.records.iter().map(move |(pos, h)| {
            let start = pos + RECORD_HEADER_BYTES;
            (h, &body[start..start + h.payload_len as usize])
        })
    }

    /// The schema of the segment's columns (its last txn's).
    fn schema(&self) -> Result<Schema, SegmentError> {
        schema_of(&self.info)
    }

    /// The txns as batches (column data copied out of the segment), in txn
    /// order, typed by the header's columns. An aborted txn is a batch
    /// without rows or columns.
    pub fn batches(&self) -> Result<Vec<(u64, Batch)>, SegmentError> {
        if self.preamble.version >= 2 {
            let schema = self.schema()?;
            return self
                .records()
                .map(|(h, payload)| {
                    let b = if h.payload_len == 0 {
                        Batch {
                            columns: Vec::new(),
                        }
                    } else {
                        codec::decode(payload, &schema)
                            .map_err(|e| SegmentError::Schema(format!("txn {}: {e}", h.txn)))?
                    };
                    Ok((h.txn, b))
                })
                .collect();
        }
        let types = column_types(&self.info.columns)?;
        let mut out = Vec::with_capacity(self.info.txn_count());
        for t in self.v1_body().txns.iter() {
            let mut columns = Vec::with_capacity(t.columns.len());
            for (c, block) in t.columns.iter().enumerate() {
                let ty = types[c];
                let values = match ty {
                    ColumnType::Varchar => Values::Var {
                        offsets: block.offsets.iter().map(|o| o.to_native()).collect(),
                        bytes: block.values.as_slice().to_vec(),
                    },
                    _ => Values::Fixed(block.values.as_slice().to_vec()),
                };
                let rows = t.row_count.to_native() as usize;
                columns.push(ColumnBuf {
                    ty,
                    validity: block
                        .validity
                        .as_ref()
                        .map(|v| crate::batch::unpack_bits(v.as_slice(), 0, rows)),
                    values,
                    dict: block.dict.iter().map(|s| s.as_str().to_string()).collect(),
                });
            }
            out.push((t.txn.to_native(), Batch { columns }));
        }
        Ok(out)
    }

    /// Checks every part of the body on its own (the body checksum already
    /// covers them; this names a damaged part for `basalt inspect`):
    /// version 1 each column block's xxh3, version 2 each txn's WAL record
    /// checksum, reported per column of the txn.
    pub fn check_blocks(&self) -> Vec<BlockCheck> {
        if self.preamble.version == 1 {
            return check_blocks(self.v1_header(), self.v1_body());
        }
        let schema = self.schema().ok();
        let body = self.raw_body();
        let mut out = Vec::new();
        for (pos, h) in &self.records {
            let ok = wal_format::read_record(body, *pos).is_some();
            let payload = &body
                [pos + RECORD_HEADER_BYTES..pos + RECORD_HEADER_BYTES + h.payload_len as usize];
            let view = schema.as_ref().and_then(|s| codec::view(payload, s).ok());
            match view {
                Some(v) => {
                    for (c, col) in v.columns.iter().enumerate() {
                        out.push(BlockCheck {
                            txn: h.txn,
                            column: self.info.columns[c].name.clone(),
                            bytes: col.byte_len(),
                            ok,
                        });
                    }
                }
                None if h.payload_len > 0 || !ok => out.push(BlockCheck {
                    txn: h.txn,
                    column: WHOLE_RECORD.into(),
                    bytes: h.payload_len as usize,
                    ok,
                }),
                None => {}
            }
        }
        out
    }
}

/// The "column" a version 2 check names when it can only name the txn.
const WHOLE_RECORD: &str = "(the txn's whole record)";

/// The result of checking one column block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockCheck {
    pub txn: u64,
    pub column: String,
    pub bytes: usize,
    pub ok: bool,
}

pub(crate) fn check_blocks(h: &ArchivedSegmentHeader, b: &ArchivedSegmentBody) -> Vec<BlockCheck> {
    let mut out = Vec::new();
    for t in b.txns.iter() {
        for (c, block) in t.columns.iter().enumerate() {
            let offsets: Vec<u64> = block.offsets.iter().map(|o| o.to_native()).collect();
            let hash = block_hash(
                block.validity.as_ref().map(|v| v.as_slice()),
                block.values.as_slice(),
                &offsets,
                &mut block.dict.iter().map(|s| s.as_str()),
            );
            out.push(BlockCheck {
                txn: t.txn.to_native(),
                column: h
                    .columns
                    .get(c)
                    .map_or_else(|| format!("#{c}"), |d| d.name.as_str().to_string()),
                bytes: block.values.len()
                    + block.offsets.len() * 8
                    + block.validity.as_ref().map_or(0, |v| v.len()),
                ok: hash == block.xxh3.to_native(),
            });
        }
    }
    out
}

fn column_types(columns: &[ColumnDef]) -> Result<Vec<ColumnType>, SegmentError> {
    columns
        .iter()
        .map(|c| {
            ColumnType::from_tag(c.ty).ok_or_else(|| {
                SegmentError::Malformed(format!(
                    "column {:?} has unknown type tag {}",
                    c.name, c.ty
                ))
            })
        })
        .collect()
}

/// The schema a segment's header describes: its first version's columns,
/// then each later one added in order (one schema version each).
fn schema_of(h: &SegmentInfo) -> Result<Schema, SegmentError> {
    let types = column_types(&h.columns)?;
    let ts = h
        .columns
        .get(h.timestamp_column as usize)
        .map(|c| c.name.as_str());
    let partition_by = crate::table::PartitionBy::from_tag(h.partition_by)
        .ok_or_else(|| SegmentError::Malformed(format!("partition tag {}", h.partition_by)))?;
    let first: Vec<(&str, ColumnType)> = h
        .columns
        .iter()
        .zip(&types)
        .filter(|(c, _)| c.added_in == 1)
        .map(|(c, t)| (c.name.as_str(), *t))
        .collect();
    let mut schema = Schema::new(first, ts, partition_by)?;
    for (c, ty) in h.columns.iter().zip(&types).filter(|(c, _)| c.added_in > 1) {
        schema = schema.with_column(&c.name, *ty)?;
        if schema.version != c.added_in {
            return Err(SegmentError::Malformed(format!(
                "column {} says it was added in schema version {}, it would be {}",
                c.name, c.added_in, schema.version
            )));
        }
    }
    if schema.version != h.schema_version {
        return Err(SegmentError::Malformed(format!(
            "header says schema version {}, its columns make version {}",
            h.schema_version, schema.version
        )));
    }
    Ok(schema)
}

/// Version 2: the body is the txns' WAL records, one per txn, in order,
/// agreeing with the header. Returns each record's offset and header.
/// The body checksum already matched: records are not hashed again here.
fn check_records(h: &SegmentInfo, body: &[u8]) -> Result<Vec<(usize, RecordHeader)>, SegmentError> {
    let bad = |m: String| Err(SegmentError::Malformed(m));
    let (first, last) = (h.first_txn, h.last_txn);
    let n = h.txn_count() as u64;
    if n == 0 || last < first || (last - first).checked_add(1) != Some(n) {
        return bad(format!(
            "header says txns {first}..={last} with {n} commit times"
        ));
    }
    let types = column_types(&h.columns)?;
    if types.get(h.timestamp_column as usize) != Some(&ColumnType::Timestamp) {
        return bad("designated timestamp column is not a TIMESTAMP column".into());
    }
    let mut records = Vec::with_capacity(n as usize);
    let mut pos = 0usize;
    let mut rows = 0u64;
    for (i, &commit) in h.commit_times_us.iter().enumerate() {
        let txn = first + i as u64;
        let Some((r, _)) = wal_format::parse_record(body, pos) else {
            return bad(format!(
                "txn {txn}: no whole WAL record at body offset {pos}"
            ));
        };
        if r.txn != txn || r.commit_time_us != commit {
            return bad(format!(
                "record at body offset {pos} is txn {} committed at {}, the header says txn {txn} at {commit}",
                r.txn, r.commit_time_us
            ));
        }
        let sv = u32::from(r.schema_version);
        if (r.payload_len == 0 && r.row_count != 0)
            || (r.payload_len > 0 && !(1..=h.schema_version).contains(&sv))
        {
            return bad(format!(
                "txn {txn}: record of {} bytes, {} rows, schema version {sv}",
                r.payload_len, r.row_count
            ));
        }
        let end = pos + wal_format::record_bytes(r.payload_len) as usize;
        if body[pos + RECORD_HEADER_BYTES + r.payload_len as usize..end]
            .iter()
            .any(|&b| b != 0)
        {
            return bad(format!("txn {txn}: record padding is not zero"));
        }
        rows += u64::from(r.row_count);
        records.push((pos, r));
        pos = end;
    }
    if pos != body.len() {
        return bad(format!(
            "{} bytes after the last record of the body",
            body.len() - pos
        ));
    }
    if rows != h.row_count {
        return bad(format!(
            "header says {} rows, the records hold {rows}",
            h.row_count
        ));
    }
    Ok(records)
}

/// What the header says must agree with the body, and every block must
/// have the shape its type and row count give, before anything uses it.
fn check_consistency(
    h: &ArchivedSegmentHeader,
    b: &ArchivedSegmentBody,
) -> Result<(), SegmentError> {
    let bad = |m: String| Err(SegmentError::Malformed(m));
    let (first, last) = (h.first_txn.to_native(), h.last_txn.to_native());
    let n = b.txns.len() as u64;
    if n == 0 || last < first || (last - first).checked_add(1) != Some(n) {
        return bad(format!(
            "header says txns {first}..={last}, the body holds {n}"
        ));
    }
    if h.commit_times_us.len() as u64 != n {
        return bad(format!(
            "{} commit times for {n} txns",
            h.commit_times_us.len()
        ));
    }
    let types = column_types(&column_defs_of(&h.columns))?;
    if h.timestamp_column.to_native() as usize >= types.len()
        || types[h.timestamp_column.to_native() as usize] != ColumnType::Timestamp
    {
        return bad("designated timestamp column is not a TIMESTAMP column".into());
    }
    let mut added = 0;
    for c in h.columns.iter() {
        let a = c.added_in.to_native();
        if a < added || a == 0 {
            return bad(format!(
                "column {:?} has added_in {a} after {added}",
                c.name.as_str()
            ));
        }
        added = a;
    }
    let mut rows = 0u64;
    for (i, t) in b.txns.iter().enumerate() {
        let txn = t.txn.to_native();
        if txn != first + i as u64 {
            return bad(format!(
                "body txn {txn} out of order (expected {})",
                first + i as u64
            ));
        }
        let ncols = t.columns.len();
        if ncols == 0 || ncols > types.len() {
            return bad(format!(
                "txn {txn} has {ncols} columns, the header {}",
                types.len()
            ));
        }
        if t.schema_version.to_native() != h.columns[ncols - 1].added_in.to_native() {
            return bad(format!(
                "txn {txn} says schema version {} but has the columns of version {}",
                t.schema_version,
                h.columns[ncols - 1].added_in
            ));
        }
        let r = t.row_count.to_native() as usize;
        for (c, block) in t.columns.iter().enumerate() {
            let name = h.columns[c].name.as_str();
            let shape_ok = match types[c].width() {
                Some(w) => block.values.len() == r * w && block.offsets.is_empty(),
                None => block.offsets.len() == r + 1,
            };
            let validity_ok = block
                .validity
                .as_ref()
                .is_none_or(|v| v.len() == r.div_ceil(8));
            if !shape_ok || !validity_ok {
                return bad(format!(
                    "txn {txn} column {name}: block does not hold {r} rows"
                ));
            }
        }
        rows += r as u64;
    }
    if rows != h.row_count.to_native() {
        return bad(format!(
            "header says {} rows, the body holds {rows}",
            h.row_count
        ));
    }
    Ok(())
}

/// What applying a segment did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Txns applied (those at or below the table's txn are skipped).
    pub applied_txns: u64,
    pub rows: u64,
    /// Columns the segment added to the table.
    pub columns_added: Vec<String>,
}

/// Whether `views`, applied in order after rows up to timestamp `after`,
/// only append: each txn's designated timestamps (column `ts`) ascend and
/// none is older than a row before it.
fn appends_only(views: &[(u64, codec::BatchView<'_>, usize)], ts: usize, mut after: i64) -> bool {
    for (_, v, _) in views {
        if v.rows == 0 {
            continue;
        }
        let Some(codec::ViewValues::Fixed(b)) = v.columns.get(ts).map(|c| &c.values) else {
            return false;
        };
        for t in b.chunks_exact(8) {
            let t = i64::from_le_bytes(t.try_into().expect("8 bytes"));
            if t < after {
                return false;
            }
            after = t;
        }
    }
    true
}

/// Payload bytes applied in one step by [`apply_segment`].
pub const APPLY_STEP_BYTES: usize = 8 << 20;

/// Applies `seg` into `writer`'s table: schema changes first (columns
/// added in order), then every txn above the table's txn, each checked
/// against the schema before anything changes. Version 2 payloads are
/// viewed in place and copied once into the runs written to the column
/// files; version 1 txns go through batches. Refuses a segment of another
/// table or one that would leave a gap; re-applying an applied segment
/// does nothing. (The link to the previous segment is the caller's to
/// check: it knows what it applied before.)
pub fn apply_segment(writer: &mut TableWriter, seg: &Segment) -> Result<ApplyReport, SegmentError> {
    apply_segment_until(writer, seg, u64::MAX)
}

/// [`apply_segment`] of the segment's txns up to `until` only (a restore
/// to a point inside it). Columns the segment adds after `until` are not
/// added: the table gets the schema its last applied txn was written with.
pub fn apply_segment_until(
    writer: &mut TableWriter,
    seg: &Segment,
    until: u64,
) -> Result<ApplyReport, SegmentError> {
    let h = seg.header();
    let table_name = writer
        .dir()
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().to_string());
    if h.table_id != writer.table_id() || h.table != table_name {
        return Err(SegmentError::ForeignTable {
            found_name: h.table.clone(),
            found_id: h.table_id,
            expected_name: table_name,
            expected_id: writer.table_id(),
        });
    }
    let table_txn = writer.state().txn;
    let (first, last) = (h.first_txn, h.last_txn.min(until));
    let mut report = ApplyReport::default();
    if last <= table_txn {
        return Ok(report);
    }
    if first > table_txn + 1 {
        return Err(SegmentError::Gap {
            first,
            last,
            table_txn,
            missing_from: table_txn + 1,
        });
    }
    // Schema: the table's columns must be a prefix of the segment's. Cut
    // inside the segment, only the columns the applied txns were written
    // with (or that the table has) count.
    let mut types = column_types(&h.columns)?;
    let mut columns_used = h.columns.len();
    if last < h.last_txn {
        let version = seg
            .records()
            .filter(|(r, _)| r.txn > table_txn && r.txn <= last)
            .map(|(r, _)| u32::from(r.schema_version))
            .max()
            .unwrap_or(0)
            .max(writer.schema().version);
        columns_used = h.columns.iter().filter(|c| c.added_in <= version).count();
        types.truncate(columns_used);
    }
    let have = writer.schema().columns.len();
    if have > types.len() {
        return Err(SegmentError::Schema(format!(
            "the table has {have} columns, the segment's schema only {}",
            types.len()
        )));
    }
    for (i, c) in writer.schema().columns.iter().enumerate() {
        let d = &h.columns[i];
        if c.name != d.name || c.ty != types[i] {
            return Err(SegmentError::Schema(format!(
                "column {i} is {} {} in the table, {} {} in the segment",
                c.name, c.ty, d.name, types[i]
            )));
        }
    }
    // The schema after the segment's changes, built and checked first:
    // nothing changes in the table unless every txn fits it.
    let mut target = writer.schema().clone();
    for (i, d) in h.columns.iter().enumerate().take(columns_used).skip(have) {
        target = target.with_column(&d.name, types[i])?;
        let added_in = target.columns[i].added_in;
        if added_in != d.added_in {
            return Err(SegmentError::Schema(format!(
                "column {} was added in schema version {} on the primary, would be {added_in} here",
                d.name, d.added_in
            )));
        }
    }
    let add_columns = |writer: &mut TableWriter, report: &mut ApplyReport| {
        for (i, d) in h.columns.iter().enumerate().take(columns_used).skip(have) {
            writer.add_column(&d.name, types[i])?;
            report.columns_added.push(d.name.clone());
        }
        Ok::<(), SegmentError>(())
    };
    if seg.preamble().version >= 2 {
        let mut views = Vec::with_capacity(h.txn_count());
        for (r, payload) in seg
            .records()
            .filter(|(r, _)| r.txn > table_txn && r.txn <= last)
        {
            let txn = r.txn;
            if r.payload_len == 0 {
                // Aborted on the primary: its number, no rows.
                views.push((txn, codec::BatchView::empty(), 0));
                continue;
            }
            let v = codec::view(payload, &target)
                .map_err(|e| SegmentError::Schema(format!("txn {txn}: {e}")))?;
            let columns = target
                .columns
                .iter()
                .filter(|c| c.added_in <= u32::from(r.schema_version))
                .count();
            if v.rows != r.row_count as usize || v.columns.len() != columns {
                return Err(SegmentError::Malformed(format!(
                    "txn {txn}: the record says {} rows of schema version {} ({columns} columns), \
                     its payload has {} rows and {} columns",
                    r.row_count,
                    r.schema_version,
                    v.rows,
                    v.columns.len()
                )));
            }
            views.push((txn, v, payload.len()));
        }
        add_columns(writer, &mut report)?;
        report.applied_txns = views.len() as u64;
        report.rows = views.iter().map(|(_, v, _)| v.rows as u64).sum();
        let refs: Vec<(u64, &codec::BatchView<'_>)> =
            views.iter().map(|(t, v, _)| (*t, v)).collect();
        // In steps of whole txns of about APPLY_STEP_BYTES: the allocator
        // reuses one step's staging memory for the next, where one step
        // for a large segment maps fresh pages (glibc maps allocations over
        // 32 MiB afresh every time) and faults on all of them: a 64 MiB
        // segment applied at 0.65-0.7 GiB/s in one step, 1.6-1.7 GiB/s in
        // 8 or 16 MiB steps, 1.0 GiB/s in 1 MiB steps (per-step costs);
        // benches/segment.rs. Readers may see a step's txns before the
        // rest of the segment's (each txn whole); the replica's durable
        // position stays at segment boundaries (it checkpoints between
        // segments).
        // Only when every row appends (no out-of-order merge): a merge
        // rewrites the partition, which one step does once and many steps
        // would do many times.
        let newest = writer
            .state()
            .partitions
            .iter()
            .filter(|p| p.rows > 0)
            .map(|p| p.max_ts)
            .max()
            .unwrap_or(i64::MIN);
        let step_bytes = match writer.schema().timestamp {
            Some(ts) if appends_only(&views, ts, newest) => APPLY_STEP_BYTES,
            _ => usize::MAX,
        };
        let mut start = 0;
        while start < refs.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < refs.len() && (end == start || bytes < step_bytes) {
                bytes += views[end].2;
                end += 1;
            }
            writer.apply_views(&refs[start..end])?;
            start = end;
        }
        return Ok(report);
    }
    let batches = seg.batches()?;
    let todo: Vec<(u64, &Batch)> = batches
        .iter()
        .filter(|(t, _)| *t > table_txn && *t <= last)
        .map(|(t, b)| (*t, b))
        .collect();
    for (txn, b) in &todo {
        b.validate(&target)
            .map_err(|e| SegmentError::Schema(format!("txn {txn}: {e}")))?;
    }
    add_columns(writer, &mut report)?;
    report.applied_txns = todo.len() as u64;
    report.rows = todo.iter().map(|(_, b)| b.row_count() as u64).sum();
    // Validated above against the schema the table now has.
    writer.apply_validated(&todo)?;
    Ok(report)
}

/// For a segment whose body fails its checksum: if the (uncompressed) body
/// still validates as an archive, the column blocks whose own xxh3 fails.
/// Empty when nothing more precise can be said.
pub fn diagnose_body(bytes: &[u8]) -> Vec<BlockCheck> {
    let mut v = AlignedVec::<16>::with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    let bytes: &[u8] = &v;
    // The preamble and header must be intact; only the body is suspect.
    let Ok(p) = Preamble::decode(bytes) else {
        return Vec::new();
    };
    if p.compression != Compression::None {
        return Vec::new();
    }
    let h_off = p.header_offset();
    let header = &bytes[h_off..h_off + p.header_len as usize];
    let b_off = p.body_offset();
    let body = &bytes[b_off..b_off + p.body_len as usize];
    if xxh3_64(header) != p.header_xxh3 {
        return Vec::new();
    }
    if p.version >= 2 {
        // Each record carries the checksum its shard computed.
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((h, _)) = wal_format::parse_record(body, pos) {
            if wal_format::read_record(body, pos).is_none() {
                out.push(BlockCheck {
                    txn: h.txn,
                    column: WHOLE_RECORD.into(),
                    bytes: h.payload_len as usize,
                    ok: false,
                });
            }
            pos += wal_format::record_bytes(h.payload_len) as usize;
        }
        return out;
    }
    let (Ok(h), Ok(b)) = (
        rkyv::access::<ArchivedSegmentHeader, rancor::Error>(header),
        rkyv::access::<ArchivedSegmentBody, rancor::Error>(body),
    ) else {
        return Vec::new();
    };
    check_blocks(h, b).into_iter().filter(|c| !c.ok).collect()
}
