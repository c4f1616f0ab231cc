//! `_meta` (schema) and `_txn` (committed state) codecs. Both start with
//! magic + format version and end with an xxh3-64 of every byte before it,
//! checked before anything else is decoded.

use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use super::schema::{Column, ColumnType, PartitionBy, Schema};
use super::TableError;

pub const META_MAGIC: &[u8; 8] = b"BSLTMETA";
pub const TXN_MAGIC: &[u8; 8] = b"BSLTTXN\0";
pub const META_VERSIONS: &str = "1";
pub const TXN_VERSIONS: &str = "1";
const FORMAT_VERSION: u32 = 1;
const PARTITION_RECORD_BYTES: usize = 48;
/// More rows than any partition can hold (2^48); larger counts are damage.
pub const ROWS_PER_PARTITION_MAX: u64 = 1 << 48;
const SYMBOL_RECORD_BYTES: usize = 16;

/// One live partition version, as `_txn` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionState {
    /// Start of the partition (µs); `i64::MIN` for `PARTITION BY NONE`.
    pub floor: i64,
    pub version: u64,
    pub rows: u64,
    /// Smallest and largest designated timestamp (0 for tables without one).
    pub min_ts: i64,
    pub max_ts: i64,
    /// Columns `0..columns` have files holding every row of this version;
    /// later columns (added since) are null in all of its rows.
    pub columns: u32,
}

/// What a reader sees: the last applied txn and how many rows of each file count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableState {
    pub txn: u64,
    /// Sorted by `floor`.
    pub partitions: Vec<PartitionState>,
    /// (column index, symbol count) for every symbol column, in column order.
    pub symbol_counts: Vec<(u32, u64)>,
}

impl TableState {
    pub fn row_count(&self) -> u64 {
        self.partitions.iter().map(|p| p.rows).sum()
    }

    pub fn symbol_count(&self, column: usize) -> u64 {
        self.symbol_counts
            .iter()
            .find(|(c, _)| *c as usize == column)
            .map_or(0, |(_, n)| *n)
    }
}

struct Cursor<'a> {
    file: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TableError> {
        if self.buf.len() - self.pos < n {
            return Err(corrupt(
                self.file,
                format!("ends early at byte {}", self.pos),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, TableError> {
        Ok(self.take(1)?[0])
    }
    /// `n` reserved bytes, which must be zero.
    fn zero(&mut self, n: usize) -> Result<(), TableError> {
        let at = self.pos;
        if self.take(n)?.iter().any(|b| *b != 0) {
            return Err(corrupt(
                self.file,
                format!("reserved bytes at offset {at} are not zero"),
            ));
        }
        Ok(())
    }
    fn u32(&mut self) -> Result<u32, TableError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, TableError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, TableError> {
        Ok(self.u64()? as i64)
    }
}

fn corrupt(file: &Path, why: String) -> TableError {
    TableError::Corrupt {
        file: file.to_path_buf(),
        why,
    }
}

/// Checks magic, checksum and version; returns the body after the 12-byte head.
fn open_envelope<'a>(
    file: &'a Path,
    buf: &'a [u8],
    magic: &[u8; 8],
    supported: &'static str,
) -> Result<Cursor<'a>, TableError> {
    if buf.len() < 20 || &buf[..8] != magic {
        return Err(corrupt(
            file,
            "bad magic: not a basalt file of this kind".into(),
        ));
    }
    let (body, sum) = buf.split_at(buf.len() - 8);
    let expected = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
    let actual = xxh3_64(body);
    if expected != actual {
        return Err(corrupt(
            file,
            format!("checksum mismatch: stored {expected:#018x}, computed {actual:#018x}"),
        ));
    }
    let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(TableError::UnsupportedVersion {
            file: file.to_path_buf(),
            version,
            supported,
        });
    }
    Ok(Cursor {
        file,
        buf: body,
        pos: 12,
    })
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let sum = xxh3_64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

pub fn encode_meta(schema: &Schema, table_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + schema.columns.len() * 32);
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(schema.columns.len() as u32).to_le_bytes());
    out.push(schema.partition_by as u8);
    out.push(schema.timestamp.is_some() as u8);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(schema.timestamp.unwrap_or(0) as u32).to_le_bytes());
    out.extend_from_slice(&table_id.to_le_bytes());
    out.extend_from_slice(&schema.version.to_le_bytes());
    for c in &schema.columns {
        out.push(c.ty.tag());
        out.extend_from_slice(&c.added_in.to_le_bytes());
        out.push(c.name.len() as u8);
        out.extend_from_slice(c.name.as_bytes());
    }
    seal(out)
}

/// Decodes `_meta` into (schema, table id).
pub fn decode_meta(file: &Path, buf: &[u8]) -> Result<(Schema, u64), TableError> {
    let mut c = open_envelope(file, buf, META_MAGIC, META_VERSIONS)?;
    let count = c.u32()? as usize;
    let partition_by = c.u8()?;
    let partition_by = PartitionBy::from_tag(partition_by)
        .ok_or_else(|| corrupt(file, format!("unknown partition scheme {partition_by}")))?;
    let has_ts = c.u8()?;
    c.zero(2)?;
    let ts = c.u32()? as usize;
    if has_ts > 1 || (has_ts == 0 && ts != 0) {
        return Err(corrupt(
            file,
            format!("designated timestamp flag {has_ts} with column {ts}"),
        ));
    }
    let table_id = c.u64()?;
    let version = c.u32()?;
    let mut columns = Vec::with_capacity(count.min(super::schema::COLUMNS_MAX));
    for i in 0..count {
        let tag = c.u8()?;
        let ty = ColumnType::from_tag(tag)
            .ok_or_else(|| corrupt(file, format!("column {i} has unknown type {tag}")))?;
        let added_in = c.u32()?;
        let len = c.u8()? as usize;
        let name = std::str::from_utf8(c.take(len)?)
            .map_err(|_| corrupt(file, format!("column {i} name is not UTF-8")))?;
        columns.push(Column {
            name: name.to_string(),
            ty,
            added_in,
        });
    }
    if c.pos != c.buf.len() {
        return Err(corrupt(file, "bytes after the last column".into()));
    }
    let schema = Schema {
        columns,
        timestamp: (has_ts != 0).then_some(ts),
        partition_by,
        version,
    };
    schema
        .validate()
        .map_err(|e| corrupt(file, format!("schema does not validate: {e}")))?;
    Ok((schema, table_id))
}

pub fn encode_txn(state: &TableState) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        40 + state.partitions.len() * PARTITION_RECORD_BYTES
            + state.symbol_counts.len() * SYMBOL_RECORD_BYTES,
    );
    out.extend_from_slice(TXN_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(state.partitions.len() as u32).to_le_bytes());
    out.extend_from_slice(&state.txn.to_le_bytes());
    out.extend_from_slice(&(state.symbol_counts.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for p in &state.partitions {
        out.extend_from_slice(&p.floor.to_le_bytes());
        out.extend_from_slice(&p.version.to_le_bytes());
        out.extend_from_slice(&p.rows.to_le_bytes());
        out.extend_from_slice(&p.min_ts.to_le_bytes());
        out.extend_from_slice(&p.max_ts.to_le_bytes());
        out.extend_from_slice(&p.columns.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    for (col, n) in &state.symbol_counts {
        out.extend_from_slice(&col.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    seal(out)
}

pub fn decode_txn(file: &Path, buf: &[u8]) -> Result<TableState, TableError> {
    let mut c = open_envelope(file, buf, TXN_MAGIC, TXN_VERSIONS)?;
    let partitions = c.u32()? as usize;
    let txn = c.u64()?;
    let symbols = c.u32()? as usize;
    c.zero(4)?;
    let need = partitions * PARTITION_RECORD_BYTES + symbols * SYMBOL_RECORD_BYTES;
    if c.buf.len() - c.pos != need {
        return Err(corrupt(
            file,
            format!("{partitions} partitions and {symbols} symbol columns need {need} bytes"),
        ));
    }
    let mut state = TableState {
        txn,
        partitions: Vec::with_capacity(partitions),
        symbol_counts: Vec::with_capacity(symbols),
    };
    for _ in 0..partitions {
        let p = PartitionState {
            floor: c.i64()?,
            version: c.u64()?,
            rows: c.u64()?,
            min_ts: c.i64()?,
            max_ts: c.i64()?,
            columns: c.u32()?,
        };
        c.zero(4)?;
        state.partitions.push(p);
    }
    if state
        .partitions
        .windows(2)
        .any(|w| w[0].floor >= w[1].floor)
    {
        return Err(corrupt(
            file,
            "partitions are not in ascending order".into(),
        ));
    }
    for _ in 0..symbols {
        let col = c.u32()?;
        c.zero(4)?;
        let n = c.u64()?;
        if n > i32::MAX as u64 {
            return Err(corrupt(
                file,
                format!("symbol column {col} claims {n} symbols"),
            ));
        }
        state.symbol_counts.push((col, n));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `metadata_decode` fuzz target (seed
    /// `regression-txn-reserved-bytes`): reserved bytes that are not zero
    /// were accepted, so two different files decoded to the same state.
    #[test]
    fn reserved_bytes_must_be_zero() {
        let reseal = |b: &mut Vec<u8>| {
            let n = b.len() - 8;
            let sum = xxhash_rust::xxh3::xxh3_64(&b[..n]);
            b[n..].copy_from_slice(&sum.to_le_bytes());
        };
        let state = TableState {
            txn: 7,
            partitions: vec![PartitionState {
                floor: 0,
                version: 1,
                rows: 3,
                min_ts: 1,
                max_ts: 2,
                columns: 4,
            }],
            symbol_counts: vec![(0, 5)],
        };
        let good = encode_txn(&state);
        // The header's, a partition's and a symbol entry's reserved u32.
        for at in [28, 32 + 44, 32 + 48 + 4] {
            let mut b = good.clone();
            b[at] = 1;
            reseal(&mut b);
            let e = decode_txn(Path::new("_txn"), &b).unwrap_err();
            assert!(e.to_string().contains("reserved"), "{e}");
        }
        let mut m = encode_meta(&Schema::reference_cpu(), 1);
        m[18] = 1;
        reseal(&mut m);
        assert!(decode_meta(Path::new("_meta"), &m).is_err());
    }

    #[test]
    fn meta_and_txn_round_trip_and_detect_damage() {
        let p = Path::new("t/_meta");
        let schema = Schema::reference_cpu();
        let buf = encode_meta(&schema, 42);
        assert_eq!(decode_meta(p, &buf).unwrap(), (schema, 42));
        let state = TableState {
            txn: 9,
            partitions: vec![PartitionState {
                floor: 0,
                version: 2,
                rows: 10,
                min_ts: 1,
                max_ts: 5,
                columns: 8,
            }],
            symbol_counts: vec![(0, 100), (1, 3)],
        };
        let tbuf = encode_txn(&state);
        assert_eq!(decode_txn(p, &tbuf).unwrap(), state);
        for i in 0..tbuf.len() {
            let mut bad = tbuf.clone();
            bad[i] ^= 0x40;
            assert!(decode_txn(p, &bad).is_err(), "flip at {i} accepted");
        }
        for n in 0..tbuf.len() {
            assert!(decode_txn(p, &tbuf[..n]).is_err());
        }
    }

    #[test]
    fn future_versions_get_a_typed_error() {
        let mut buf = encode_txn(&TableState::default());
        buf.truncate(buf.len() - 8);
        buf[8..12].copy_from_slice(&7u32.to_le_bytes());
        let buf = seal(buf);
        assert!(matches!(
            decode_txn(Path::new("_txn"), &buf),
            Err(TableError::UnsupportedVersion { version: 7, .. })
        ));
    }
}
