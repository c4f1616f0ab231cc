//! The batch encoding used as the WAL record payload (docs/format.md, "WAL
//! record payload"). Little-endian, no alignment requirements. The decoder
//! trusts nothing: every length is checked against the bytes that remain
//! before anything is allocated, so hostile input gives a [`DecodeError`].

use crate::table::schema::{ColumnType, Schema};

use super::{pack_bits, unpack_bits, Batch, ColumnBuf, Values, BATCH_ROWS_MAX};

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

/// Decodes a payload written by [`encode`] for a table of `schema`.
pub fn decode(buf: &[u8], schema: &Schema) -> Result<Batch, DecodeError> {
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
            // An all-valid bitmap decodes to "no nulls", the form encode writes.
            let v = unpack_bits(r.take(rows.div_ceil(8))?, 0, rows as usize);
            v.contains(&0).then_some(v)
        } else {
            None
        };
        let mut dict = Vec::new();
        if ty == ColumnType::Symbol {
            let n = u64::from(r.u32()?);
            let ends = r.take(n * 4)?;
            let ends: Vec<u32> = ends
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            if ends.windows(2).any(|w| w[0] > w[1]) {
                return Err(bad("symbol dictionary offsets go backwards".into()));
            }
            let total = ends.last().copied().unwrap_or(0);
            let bytes = r.take(u64::from(total))?;
            let mut start = 0u32;
            for end in ends {
                let s = std::str::from_utf8(&bytes[start as usize..end as usize])
                    .map_err(|e| bad(format!("symbol is not UTF-8: {e}")))?;
                dict.push(s.to_string());
                start = end;
            }
        }
        let values = match ty.width() {
            Some(w) => Values::Fixed(r.take(rows * w as u64)?.to_vec()),
            None => {
                let data_len = r.u64()?;
                let raw = r.take((rows + 1) * 8)?;
                let offsets: Vec<u64> = raw
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                if offsets[0] != 0
                    || offsets.windows(2).any(|w| w[0] > w[1])
                    || offsets[rows as usize] != data_len
                {
                    return Err(bad(
                        "varchar offsets are not ascending from 0 to the data length".into(),
                    ));
                }
                let bytes = r.take(data_len)?.to_vec();
                for w in offsets.windows(2) {
                    std::str::from_utf8(&bytes[w[0] as usize..w[1] as usize])
                        .map_err(|e| bad(format!("varchar is not UTF-8: {e}")))?;
                }
                Values::Var { offsets, bytes }
            }
        };
        let col = ColumnBuf {
            ty,
            validity,
            values,
            dict,
        };
        if ty == ColumnType::Symbol {
            let n = col.dict.len() as i64;
            if let Some(row) = (0..rows as usize)
                .find(|&row| col.is_valid(row) && !(0..n).contains(&i64::from(col.i32_at(row))))
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
    let batch = Batch { columns };
    // Everything else `Batch::validate` checks: a decoded batch is a valid one.
    batch.validate(schema).map_err(|e| DecodeError::Column {
        column: schema.timestamp.unwrap_or(0),
        why: e.to_string(),
    })?;
    Ok(batch)
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
