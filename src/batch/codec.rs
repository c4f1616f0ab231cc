//! The batch encoding used as the WAL record payload (docs/format.md, "WAL
//! record payload"). Little-endian, no alignment requirements. The decoder
//! trusts nothing: every length is checked against the bytes that remain
//! before anything is allocated, so hostile input gives a [`DecodeError`].

use crate::table::schema::{ColumnType, Schema};

use super::{pack_bits, unpack_bits, Batch, BatchError, ColumnBuf, Values, BATCH_ROWS_MAX};
use crate::table::schema::{TIMESTAMP_MAX_US, TIMESTAMP_MIN_US};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("payload ends early: needed {needed} bytes at offset {offset}, {available} left")]
    Truncated {
        offset: usize,
        needed: u64,
        available: usize,
    },
    #[error("payload has {0} bytes after the last column")]
    TrailingBytes(usize),
    #[error("column {column}: {why}")]
    Column { column: usize, why: String },
    #[error("payload declares {rows} rows, more than the limit of {BATCH_ROWS_MAX}")]
    TooManyRows { rows: u64 },
    #[error("payload has {actual} columns, the schema has {expected} (and at least its first version's)")]
    ColumnCount { expected: usize, actual: usize },
}

const FLAG_VALIDITY: u8 = 1;

/// Appends the encoding of `batch` to `out`.
pub fn encode(batch: &Batch, out: &mut Vec<u8>) {
    let rows = batch.row_count();
    // One allocation of the final size, not a doubling series of copies.
    out.reserve(encoded_len_max(batch));
    out.extend_from_slice(&(rows as u32).to_le_bytes());
    out.extend_from_slice(&(batch.columns.len() as u32).to_le_bytes());
    for c in &batch.columns {
        let has_validity = c.validity.as_ref().is_some_and(|v| v.contains(&0));
        out.push(c.ty.tag());
        out.push(if has_validity { FLAG_VALIDITY } else { 0 });
        out.extend_from_slice(&[0, 0]);
        if has_validity {
            out.extend_from_slice(&pack_bits(c.validity.as_deref().unwrap_or(&[])));
        }
        if c.ty == ColumnType::Symbol {
            out.extend_from_slice(&(c.dict.len() as u32).to_le_bytes());
            let mut end = 0u32;
            for s in &c.dict {
                end += s.len() as u32;
                out.extend_from_slice(&end.to_le_bytes());
            }
            for s in &c.dict {
                out.extend_from_slice(s.as_bytes());
            }
        }
        match &c.values {
            Values::Fixed(b) => out.extend_from_slice(b),
            Values::Var { offsets, bytes } => {
                out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                for o in offsets {
                    out.extend_from_slice(&o.to_le_bytes());
                }
                out.extend_from_slice(bytes);
            }
        }
    }
}

/// At least the bytes [`encode`] writes for `batch`.
fn encoded_len_max(batch: &Batch) -> usize {
    let rows = batch.row_count();
    8 + batch
        .columns
        .iter()
        .map(|c| {
            let dict: usize = c.dict.iter().map(|s| 4 + s.len()).sum();
            let values = match &c.values {
                Values::Fixed(b) => b.len(),
                Values::Var { offsets, bytes } => 8 + offsets.len() * 8 + bytes.len(),
            };
            4 + rows.div_ceil(8) + 4 + dict + values
        })
        .sum::<usize>()
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let available = self.buf.len() - self.pos;
        if n > available as u64 {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// A decoded payload that borrows its bytes: every check [`decode`] makes,
/// without copying a column. Apply reads it straight from a mapped segment.
#[derive(Debug)]
pub struct BatchView<'a> {
    pub rows: usize,
    /// The schema's first `columns.len()` columns (a prefix for a batch of
    /// an earlier schema version; empty for an empty, aborted txn).
    pub columns: Vec<ColumnView<'a>>,
}

/// One column of a [`BatchView`].
#[derive(Debug)]
pub struct ColumnView<'a> {
    pub ty: ColumnType,
    /// LSB-first bitmap of `rows` bits; `None` = no nulls (an all-valid
    /// bitmap in the payload reads as `None` too).
    pub validity: Option<&'a [u8]>,
    pub values: ViewValues<'a>,
    /// Symbol columns: `d` u32 end offsets into `dict_bytes` (empty otherwise).
    dict_ends: &'a [u8],
    dict_bytes: &'a [u8],
}

/// Values of a [`ColumnView`], as the payload has them.
#[derive(Debug)]
pub enum ViewValues<'a> {
    /// `rows * width` little-endian bytes.
    Fixed(&'a [u8]),
    /// `rows + 1` u64 LE offsets (checked ascending from 0) into `bytes`.
    Var { offsets: &'a [u8], bytes: &'a [u8] },
}

fn u64_le(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

fn u32_le(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

impl<'a> ColumnView<'a> {
    pub fn is_valid(&self, row: usize) -> bool {
        self.validity
            .is_none_or(|v| (v[row / 8] >> (row % 8)) & 1 != 0)
    }

    /// Bytes the column takes in the payload (after its 4-byte block head).
    pub fn byte_len(&self) -> usize {
        let values = match self.values {
            ViewValues::Fixed(b) => b.len(),
            ViewValues::Var { offsets, bytes } => 8 + offsets.len() + bytes.len(),
        };
        self.validity.map_or(0, <[u8]>::len)
            + values
            + self.dict_ends.len()
            + self.dict_bytes.len()
            + if self.ty == ColumnType::Symbol { 4 } else { 0 }
    }

    /// Number of strings in a symbol column's dictionary.
    pub fn dict_len(&self) -> usize {
        self.dict_ends.len() / 4
    }

    /// The symbol dictionary's strings, in key order (checked UTF-8).
    pub fn dict(&self) -> impl Iterator<Item = &'a str> + '_ {
        let mut start = 0usize;
        (0..self.dict_len()).map(move |k| {
            let end = u32_le(self.dict_ends, k) as usize;
            let s = &self.dict_bytes[start..end];
            start = end;
            // SAFETY: `view` checked every dictionary string for UTF-8.
            unsafe { std::str::from_utf8_unchecked(s) }
        })
    }

    /// Varchar offset `i` (of `rows + 1`).
    pub fn offset(&self, i: usize) -> u64 {
        match self.values {
            ViewValues::Var { offsets, .. } => u64_le(offsets, i),
            ViewValues::Fixed(_) => 0,
        }
    }

    /// The column as an owned [`ColumnBuf`] (one copy).
    pub fn to_column(&self, rows: usize) -> ColumnBuf {
        let values = match self.values {
            ViewValues::Fixed(b) => Values::Fixed(b.to_vec()),
            ViewValues::Var { offsets, bytes } => Values::Var {
                offsets: (0..=rows).map(|i| u64_le(offsets, i)).collect(),
                bytes: bytes.to_vec(),
            },
        };
        ColumnBuf {
            ty: self.ty,
            validity: self.validity.map(|v| unpack_bits(v, 0, rows)),
            values,
            dict: self.dict().map(str::to_string).collect(),
        }
    }
}

impl BatchView<'_> {
    /// An empty txn (no rows, no columns): an aborted txn keeps its number.
    pub fn empty() -> BatchView<'static> {
        BatchView {
            rows: 0,
            columns: Vec::new(),
        }
    }

    /// The view as an owned [`Batch`] (column data copied once).
    pub fn to_batch(&self) -> Batch {
        Batch {
            columns: self
                .columns
                .iter()
                .map(|c| c.to_column(self.rows))
                .collect(),
        }
    }
}

/// Decodes a payload written by [`encode`] for a table of `schema`.
pub fn decode(buf: &[u8], schema: &Schema) -> Result<Batch, DecodeError> {
    Ok(view(buf, schema)?.to_batch())
}

/// Checks a payload written by [`encode`] against `schema` and borrows its
/// columns: lengths against the bytes left, offsets for order and bounds,
/// strings for UTF-8, symbol keys against the dictionary, the designated
/// timestamp for nulls and range. What passes is a valid batch.
pub fn view<'a>(buf: &'a [u8], schema: &Schema) -> Result<BatchView<'a>, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let rows = u64::from(r.u32()?);
    if rows > BATCH_ROWS_MAX as u64 {
        return Err(DecodeError::TooManyRows { rows });
    }
    let column_count = r.u32()? as usize;
    // A batch of an earlier schema version carries a prefix of the columns.
    let first = schema.columns.iter().filter(|c| c.added_in == 1).count();
    if column_count > schema.columns.len() || column_count < first {
        return Err(DecodeError::ColumnCount {
            expected: schema.columns.len(),
            actual: column_count,
        });
    }
    let mut columns = Vec::with_capacity(column_count);
    for (i, s) in schema.columns.iter().take(column_count).enumerate() {
        let bad = |why: String| DecodeError::Column { column: i, why };
        let head = r.take(4)?;
        let ty = ColumnType::from_tag(head[0])
            .ok_or_else(|| bad(format!("unknown type tag {}", head[0])))?;
        if ty != s.ty {
            return Err(bad(format!("type {ty}, the schema says {}", s.ty)));
        }
        if head[1] & !FLAG_VALIDITY != 0 || head[2] != 0 || head[3] != 0 {
            return Err(bad(format!("unknown flags {:#x}", head[1])));
        }
        let validity = if head[1] & FLAG_VALIDITY != 0 {
            let bits = r.take(rows.div_ceil(8))?;
            // An all-valid bitmap reads as "no nulls", the form encode writes.
            let all = (0..rows as usize).all(|row| (bits[row / 8] >> (row % 8)) & 1 != 0);
            (!all).then_some(bits)
        } else {
            None
        };
        let (mut dict_ends, mut dict_bytes): (&[u8], &[u8]) = (&[], &[]);
        if ty == ColumnType::Symbol {
            let n = u64::from(r.u32()?);
            dict_ends = r.take(n * 4)?;
            let mut start = 0u32;
            for k in 0..n as usize {
                let end = u32_le(dict_ends, k);
                if end < start {
                    return Err(bad("symbol dictionary offsets go backwards".into()));
                }
                start = end;
            }
            dict_bytes = r.take(u64::from(start))?;
            let mut start = 0usize;
            for k in 0..n as usize {
                let end = u32_le(dict_ends, k) as usize;
                std::str::from_utf8(&dict_bytes[start..end])
                    .map_err(|e| bad(format!("symbol is not UTF-8: {e}")))?;
                start = end;
            }
        }
        let values = match ty.width() {
            Some(w) => ViewValues::Fixed(r.take(rows * w as u64)?),
            None => {
                let data_len = r.u64()?;
                let offsets = r.take((rows + 1) * 8)?;
                let mut prev = 0u64;
                let mut ok = u64_le(offsets, 0) == 0;
                for k in 1..=rows as usize {
                    let o = u64_le(offsets, k);
                    ok &= o >= prev;
                    prev = o;
                }
                if !ok || prev != data_len {
                    return Err(bad(
                        "varchar offsets are not ascending from 0 to the data length".into(),
                    ));
                }
                let bytes = r.take(data_len)?;
                for k in 0..rows as usize {
                    let (a, b) = (u64_le(offsets, k) as usize, u64_le(offsets, k + 1) as usize);
                    std::str::from_utf8(&bytes[a..b])
                        .map_err(|e| bad(format!("varchar is not UTF-8: {e}")))?;
                }
                ViewValues::Var { offsets, bytes }
            }
        };
        let col = ColumnView {
            ty,
            validity,
            values,
            dict_ends,
            dict_bytes,
        };
        if let (ColumnType::Symbol, ViewValues::Fixed(keys)) = (ty, &col.values) {
            let n = col.dict_len() as u32;
            if let Some(row) =
                (0..rows as usize).find(|&row| col.is_valid(row) && (u32_le(keys, row)) >= n)
            {
                return Err(bad(format!(
                    "row {row}: symbol key outside the dictionary of {n}"
                )));
            }
        }
        columns.push(col);
    }
    if r.pos != buf.len() {
        return Err(DecodeError::TrailingBytes(buf.len() - r.pos));
    }
    if let Some(ts) = schema.timestamp.filter(|&ts| ts < columns.len()) {
        let col = &columns[ts];
        let name = &schema.columns[ts].name;
        let ts_err = |e: BatchError| DecodeError::Column {
            column: ts,
            why: e.to_string(),
        };
        if let Some(row) = (0..rows as usize).find(|&row| !col.is_valid(row)) {
            return Err(ts_err(BatchError::NullTimestamp {
                name: name.clone(),
                row,
            }));
        }
        if let ViewValues::Fixed(b) = col.values {
            let range = TIMESTAMP_MIN_US..=TIMESTAMP_MAX_US;
            if let Some(row) =
                (0..rows as usize).find(|&row| !range.contains(&(u64_le(b, row) as i64)))
            {
                return Err(ts_err(BatchError::TimestampOutOfRange {
                    name: name.clone(),
                    row,
                    ts_us: u64_le(b, row) as i64,
                }));
            }
        }
    }
    Ok(BatchView {
        rows: rows as usize,
        columns,
    })
}

/// The values of fixed-width column `col` of a payload, found by walking
/// the column blocks with bounds checks only (no validation): for payloads
/// this node wrote and checksummed itself, e.g. the designated timestamps
/// of a WAL record the uploader seals into a segment. `None` if the payload
/// does not have such a column.
pub fn fixed_column(buf: &[u8], col: usize) -> Option<&[u8]> {
    let mut r = Reader { buf, pos: 0 };
    let rows = u64::from(r.u32().ok()?);
    let n = r.u32().ok()? as usize;
    if col >= n {
        return None;
    }
    for i in 0..=col {
        let head = r.take(4).ok()?;
        let ty = ColumnType::from_tag(head[0])?;
        if head[1] & FLAG_VALIDITY != 0 {
            r.take(rows.div_ceil(8)).ok()?;
        }
        if ty == ColumnType::Symbol {
            let d = u64::from(r.u32().ok()?);
            let ends = r.take(d * 4).ok()?;
            let total = if d == 0 {
                0
            } else {
                u32_le(ends, d as usize - 1)
            };
            r.take(u64::from(total)).ok()?;
        }
        match ty.width() {
            Some(w) => {
                let v = r.take(rows * w as u64).ok()?;
                if i == col {
                    return Some(v);
                }
            }
            None => {
                if i == col {
                    return None;
                }
                let data_len = r.u64().ok()?;
                r.take((rows + 1) * 8).ok()?;
                r.take(data_len).ok()?;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::testing::{all_types, row_strategy, OwnedValue};
    use crate::batch::BatchBuilder;
    use crate::batch::Value;
    use crate::table::schema::PartitionBy;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_decode_is_identity(rows in proptest::collection::vec(row_strategy(), 0..40)) {
            let schema = all_types();
            let mut b = BatchBuilder::new(&schema);
            for row in &rows {
                for (i, v) in row.iter().enumerate() {
                    if let Some(v) = v {
                        b.set(i, v.as_value()).unwrap();
                    }
                }
                b.finish_row().unwrap();
            }
            let batch = b.finish();
            let mut buf = Vec::new();
            encode(&batch, &mut buf);
            let back = decode(&buf, &schema).unwrap();
            prop_assert_eq!(back.row_count(), rows.len());
            for (r, row) in rows.iter().enumerate() {
                for (i, v) in row.iter().enumerate() {
                    let got = back.columns[i].value(r);
                    match v {
                        None => prop_assert_eq!(got, Value::Null),
                        Some(OwnedValue::Float(f)) if f.is_nan() => prop_assert!(matches!(got, Value::Float(g) if g.is_nan())),
                        Some(OwnedValue::Double(f)) if f.is_nan() => prop_assert!(matches!(got, Value::Double(g) if g.is_nan())),
                        Some(v) => prop_assert_eq!(got, v.as_value()),
                    }
                }
            }
        }

        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, &all_types());
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let schema = all_types();
        let mut b = BatchBuilder::new(&schema);
        b.set(7, Value::Timestamp(5)).unwrap();
        b.set(8, Value::Symbol("x")).unwrap();
        b.set(9, Value::Varchar("y")).unwrap();
        b.finish_row().unwrap();
        let mut buf = Vec::new();
        encode(&b.finish(), &mut buf);
        for n in 0..buf.len() {
            assert!(decode(&buf[..n], &schema).is_err(), "prefix {n} decoded");
        }
        let mut long = buf.clone();
        long.push(0);
        assert_eq!(decode(&long, &schema), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn a_batch_of_an_earlier_schema_version_decodes_as_a_prefix() {
        let v1 = Schema::reference_cpu();
        let v2 = v1.with_column("extra", ColumnType::Varchar).unwrap();
        let batch = crate::gen::CpuGenerator::default().batch(0, 3, 0);
        let mut buf = Vec::new();
        encode(&batch, &mut buf);
        let back = decode(&buf, &v2).unwrap();
        assert_eq!(back, batch, "8 columns of v1, decoded against v2");
        // Fewer columns than the table's first version is damage.
        let mut short = Vec::new();
        encode(
            &Batch {
                columns: batch.columns[..7].to_vec(),
            },
            &mut short,
        );
        assert!(matches!(
            decode(&short, &v2),
            Err(DecodeError::ColumnCount {
                expected: 9,
                actual: 7
            })
        ));
    }

    #[test]
    fn symbol_offsets_that_go_backwards_are_refused() {
        // Found by the wal_payload fuzz target: a dictionary end offset larger
        // than the last one used to index past the dictionary bytes.
        let schema = Schema::new(vec![("s", ColumnType::Symbol)], None, PartitionBy::None).unwrap();
        let mut buf = Vec::new();
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&[ColumnType::Symbol.tag(), 0, 0, 0]);
        buf.extend_from_slice(&2u32.to_le_bytes());
        buf.extend_from_slice(&1792u32.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        let e = decode(&buf, &schema).unwrap_err();
        assert!(e.to_string().contains("go backwards"), "{e}");
    }

    #[test]
    fn huge_length_fields_do_not_allocate() {
        let schema =
            Schema::new(vec![("v", ColumnType::Varchar)], None, PartitionBy::None).unwrap();
        let mut buf = Vec::new();
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&[ColumnType::Varchar.tag(), 0, 0, 0]);
        buf.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(&buf, &schema),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
