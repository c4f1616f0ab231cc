//! Reading a segment: checksums first, then validated rkyv access in place;
//! and applying it into a table through the WAL's apply path.

use std::path::Path;

use rkyv::rancor;
use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::xxh3_64;

use super::format::{Compression, Preamble, SegmentError, PREAMBLE_BYTES};
use super::writer::block_hash;
use super::{ArchivedSegmentBody, ArchivedSegmentHeader};
use crate::batch::{Batch, ColumnBuf, Values};
use crate::table::{ColumnType, TableWriter};

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
        let header = &bytes[PREAMBLE_BYTES..PREAMBLE_BYTES + preamble.header_len as usize];
        let stored_body = &bytes[preamble.body_offset()..];
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
        // Checksums match: now the archives may be looked at (validated).
        let h = rkyv::access::<ArchivedSegmentHeader, rancor::Error>(header)
            .map_err(|e| malformed("header", e))?;
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
        let b = rkyv::access::<ArchivedSegmentBody, rancor::Error>(raw_body)
            .map_err(|e| malformed("body", e))?;
        check_consistency(h, b)?;
        Ok(Segment {
            data,
            body,
            preamble,
        })
    }

    /// The verified preamble.
    pub fn preamble(&self) -> &Preamble {
        &self.preamble
    }

    fn raw_body(&self) -> &[u8] {
        match &self.body {
            Some(b) => b,
            None => &self.data.bytes()[self.preamble.body_offset()..],
        }
    }

    pub fn header(&self) -> &ArchivedSegmentHeader {
        let bytes =
            &self.data.bytes()[PREAMBLE_BYTES..PREAMBLE_BYTES + self.preamble.header_len as usize];
        // SAFETY: `verify` checked these exact, immutable bytes against their
        // xxh3 and validated them with `rkyv::access` before `self` existed.
        unsafe { rkyv::access_unchecked::<ArchivedSegmentHeader>(bytes) }
    }

    pub fn body(&self) -> &ArchivedSegmentBody {
        // SAFETY: as in `header`: verified and validated in `verify`.
        unsafe { rkyv::access_unchecked::<ArchivedSegmentBody>(self.raw_body()) }
    }

    /// Total bytes of the segment as stored.
    pub fn len(&self) -> usize {
        self.data.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The txns as batches (column data copied out of the segment), in txn
    /// order, typed by the header's columns.
    pub fn batches(&self) -> Result<Vec<(u64, Batch)>, SegmentError> {
        let h = self.header();
        let types = column_types(h)?;
        let mut out = Vec::with_capacity(self.body().txns.len());
        for t in self.body().txns.iter() {
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

    /// Recomputes every column block's xxh3 (the body checksum already
    /// covers them; this names a damaged block for `basalt inspect`).
    pub fn check_blocks(&self) -> Vec<BlockCheck> {
        check_blocks(self.header(), self.body())
    }
}

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

fn column_types(h: &ArchivedSegmentHeader) -> Result<Vec<ColumnType>, SegmentError> {
    h.columns
        .iter()
        .map(|c| {
            ColumnType::from_tag(c.ty).ok_or_else(|| {
                SegmentError::Malformed(format!(
                    "column {:?} has unknown type tag {}",
                    c.name.as_str(),
                    c.ty
                ))
            })
        })
        .collect()
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
    let types = column_types(h)?;
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

/// Applies `seg` into `writer`'s table through the same apply path as the
/// WAL: schema changes first (columns added in order), then every txn above
/// the table's txn, each validated against the schema. Refuses a segment of
/// another table or one that would leave a gap; re-applying an applied
/// segment does nothing.
pub fn apply_segment(writer: &mut TableWriter, seg: &Segment) -> Result<ApplyReport, SegmentError> {
    let h = seg.header();
    let table_name = writer
        .dir()
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().to_string());
    if h.table_id.to_native() != writer.table_id() || h.table.as_str() != table_name {
        return Err(SegmentError::ForeignTable {
            found_name: h.table.as_str().to_string(),
            found_id: h.table_id.to_native(),
            expected_name: table_name,
            expected_id: writer.table_id(),
        });
    }
    let table_txn = writer.state().txn;
    let (first, last) = (h.first_txn.to_native(), h.last_txn.to_native());
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
    // Schema: the table's columns must be a prefix of the segment's.
    let types = column_types(h)?;
    let have = writer.schema().columns.len();
    if have > types.len() {
        return Err(SegmentError::Schema(format!(
            "the table has {have} columns, the segment's schema only {}",
            types.len()
        )));
    }
    for (i, c) in writer.schema().columns.iter().enumerate() {
        let d = &h.columns[i];
        if c.name != d.name.as_str() || c.ty != types[i] {
            return Err(SegmentError::Schema(format!(
                "column {i} is {} {} in the table, {} {} in the segment",
                c.name,
                c.ty,
                d.name.as_str(),
                types[i]
            )));
        }
    }
    // The schema after the segment's changes, built and checked first:
    // nothing changes in the table unless every txn fits it.
    let mut target = writer.schema().clone();
    for (i, d) in h.columns.iter().enumerate().skip(have) {
        target = target.with_column(d.name.as_str(), types[i])?;
        let added_in = target.columns[i].added_in;
        if added_in != d.added_in.to_native() {
            return Err(SegmentError::Schema(format!(
                "column {} was added in schema version {} on the primary, would be {added_in} here",
                d.name.as_str(),
                d.added_in
            )));
        }
    }
    let batches = seg.batches()?;
    let todo: Vec<(u64, &Batch)> = batches
        .iter()
        .filter(|(t, _)| *t > table_txn)
        .map(|(t, b)| (*t, b))
        .collect();
    for (txn, b) in &todo {
        b.validate(&target)
            .map_err(|e| SegmentError::Schema(format!("txn {txn}: {e}")))?;
    }
    for (i, d) in h.columns.iter().enumerate().skip(have) {
        writer.add_column(d.name.as_str(), types[i])?;
        report.columns_added.push(d.name.as_str().to_string());
    }
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
    let header = &bytes[PREAMBLE_BYTES..PREAMBLE_BYTES + p.header_len as usize];
    let body = &bytes[p.body_offset()..];
    if xxh3_64(header) != p.header_xxh3 {
        return Vec::new();
    }
    let (Ok(h), Ok(b)) = (
        rkyv::access::<ArchivedSegmentHeader, rancor::Error>(header),
        rkyv::access::<ArchivedSegmentBody, rancor::Error>(body),
    ) else {
        return Vec::new();
    };
    check_blocks(h, b).into_iter().filter(|c| !c.ok).collect()
}
