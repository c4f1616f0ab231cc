//! Columnar row batches: what a client commits, what the WAL stores and what
//! apply writes into column files.
//!
//! A [`Batch`] holds one [`ColumnBuf`] per schema column. Fixed-width values are
//! little-endian bytes (booleans one byte per row, symbols i32 keys); varchars
//! are u64 offsets plus UTF-8 bytes. Symbol keys in a batch index the batch's own
//! dictionary ([`ColumnBuf::dict`]); apply maps them to table-level keys.

pub mod codec;
#[cfg(test)]
pub(crate) mod testing;

use foldhash::HashMap;
use foldhash::HashMapExt;

use crate::table::schema::{ColumnType, Schema, TIMESTAMP_MAX_US, TIMESTAMP_MIN_US};

/// Most rows one batch may carry (one txn). Keeps every length field bounded.
pub const BATCH_ROWS_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("column {column} ({name}) is {expected}, not {actual}")]
    TypeMismatch {
        column: usize,
        name: String,
        expected: ColumnType,
        actual: &'static str,
    },
    #[error("column index {column} is out of range: the table has {columns} columns")]
    NoSuchColumn { column: usize, columns: usize },
    #[error("designated timestamp column {name} is null in row {row}")]
    NullTimestamp { name: String, row: usize },
    #[error("batch has {rows} rows, more than the limit of {BATCH_ROWS_MAX}")]
    TooManyRows { rows: usize },
    #[error("batch encodes to {bytes} bytes, more than the limit of {limit} bytes per txn; commit it in smaller batches")]
    TooLarge { bytes: usize, limit: usize },
    #[error("designated timestamp {name} is {ts_us} µs in row {row}, outside years 1 to 9999")]
    TimestampOutOfRange {
        name: String,
        row: usize,
        ts_us: i64,
    },
    #[error("batch does not match the table schema: {0}")]
    Shape(String),
}

/// One value, borrowed. Used to build batches and to read scan results.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Boolean(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    /// Microseconds since the Unix epoch.
    Timestamp(i64),
    Symbol(&'a str),
    Varchar(&'a str),
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Boolean(_) => "BOOLEAN",
            Value::Byte(_) => "BYTE",
            Value::Short(_) => "SHORT",
            Value::Int(_) => "INT",
            Value::Long(_) => "LONG",
            Value::Float(_) => "FLOAT",
            Value::Double(_) => "DOUBLE",
            Value::Timestamp(_) => "TIMESTAMP",
            Value::Symbol(_) => "SYMBOL",
            Value::Varchar(_) => "VARCHAR",
        }
    }
}

/// Values of one column.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    /// `rows * width` little-endian bytes.
    Fixed(Vec<u8>),
    /// `rows + 1` offsets into `bytes`, the first 0.
    Var { offsets: Vec<u64>, bytes: Vec<u8> },
}

/// One column of a batch or of a scan result.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnBuf {
    pub ty: ColumnType,
    /// One byte per row, 1 = value present; `None` = no nulls.
    pub validity: Option<Vec<u8>>,
    pub values: Values,
    /// Symbol columns: the strings the keys index. Empty for other types.
    pub dict: Vec<String>,
}

impl ColumnBuf {
    pub fn new(ty: ColumnType) -> ColumnBuf {
        let values = match ty {
            ColumnType::Varchar => Values::Var {
                offsets: vec![0],
                bytes: Vec::new(),
            },
            _ => Values::Fixed(Vec::new()),
        };
        ColumnBuf {
            ty,
            validity: None,
            values,
            dict: Vec::new(),
        }
    }

    /// `rows` nulls of type `ty`.
    pub fn nulls(ty: ColumnType, rows: usize) -> ColumnBuf {
        let values = match ty.width() {
            Some(w) => Values::Fixed(vec![0; rows * w]),
            None => Values::Var {
                offsets: vec![0; rows + 1],
                bytes: Vec::new(),
            },
        };
        ColumnBuf {
            ty,
            validity: (rows > 0).then(|| vec![0; rows]),
            values,
            dict: Vec::new(),
        }
    }

    pub fn width(&self) -> usize {
        self.ty.width().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        match &self.values {
            Values::Fixed(b) => b.len() / self.width(),
            Values::Var { offsets, .. } => offsets.len() - 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_valid(&self, row: usize) -> bool {
        self.validity.as_ref().is_none_or(|v| v[row] != 0)
    }

    /// Fixed-width bytes of row `row`.
    fn fixed(&self, row: usize) -> &[u8] {
        let w = self.width();
        match &self.values {
            Values::Fixed(b) => &b[row * w..row * w + w],
            Values::Var { .. } => &[],
        }
    }

    pub fn str_at(&self, row: usize) -> &str {
        match &self.values {
            Values::Var { offsets, bytes } => {
                let s = &bytes[offsets[row] as usize..offsets[row + 1] as usize];
                std::str::from_utf8(s).unwrap_or("")
            }
            Values::Fixed(_) => "",
        }
    }

    pub fn i64_at(&self, row: usize) -> i64 {
        i64::from_le_bytes(self.fixed(row).try_into().unwrap_or([0; 8]))
    }

    pub fn i32_at(&self, row: usize) -> i32 {
        i32::from_le_bytes(self.fixed(row).try_into().unwrap_or([0; 4]))
    }

    /// The value of row `row`.
    pub fn value(&self, row: usize) -> Value<'_> {
        if !self.is_valid(row) {
            return Value::Null;
        }
        let f = || self.fixed(row);
        match self.ty {
            ColumnType::Boolean => Value::Boolean(f()[0] != 0),
            ColumnType::Byte => Value::Byte(f()[0] as i8),
            ColumnType::Short => Value::Short(i16::from_le_bytes([f()[0], f()[1]])),
            ColumnType::Int => Value::Int(self.i32_at(row)),
            ColumnType::Long => Value::Long(self.i64_at(row)),
            ColumnType::Float => Value::Float(f32::from_le_bytes(f().try_into().unwrap_or([0; 4]))),
            ColumnType::Double => {
                Value::Double(f64::from_le_bytes(f().try_into().unwrap_or([0; 8])))
            }
            ColumnType::Timestamp => Value::Timestamp(self.i64_at(row)),
            ColumnType::Symbol => {
                let key = self.i32_at(row);
                Value::Symbol(self.dict.get(key as usize).map_or("", String::as_str))
            }
            ColumnType::Varchar => Value::Varchar(self.str_at(row)),
        }
    }

    #[inline]
    fn set_valid(&mut self, valid: bool) {
        match (&mut self.validity, valid) {
            (Some(v), _) => v.push(valid as u8),
            (None, true) => {}
            (None, false) => {
                // The first null: every earlier row was valid.
                let mut v = vec![1u8; self.len()];
                v.push(0);
                self.validity = Some(v);
            }
        }
    }

    #[inline]
    fn push_fixed(&mut self, bytes: &[u8], valid: bool) {
        self.set_valid(valid);
        if let Values::Fixed(b) = &mut self.values {
            b.extend_from_slice(bytes);
        }
    }

    fn push_str(&mut self, s: &str, valid: bool) {
        self.set_valid(valid);
        if let Values::Var { offsets, bytes } = &mut self.values {
            bytes.extend_from_slice(s.as_bytes());
            offsets.push(bytes.len() as u64);
        }
    }

    pub fn push_null(&mut self) {
        match self.ty {
            ColumnType::Varchar => self.push_str("", false),
            _ => {
                let zeros = [0u8; 8];
                let w = self.width();
                self.push_fixed(&zeros[..w], false)
            }
        }
    }

    /// Sets the stored value of every null row to zero bytes (fixed types)
    /// or the empty string (varchar), so files depend only on the values.
    pub fn clear_null_values(&mut self) {
        let Some(valid) = &self.validity else { return };
        if !valid.contains(&0) {
            self.validity = None;
            return;
        }
        let w = self.width();
        match &mut self.values {
            Values::Fixed(bytes) => {
                for (r, v) in valid.iter().enumerate() {
                    if *v == 0 {
                        bytes[r * w..r * w + w].fill(0);
                    }
                }
            }
            Values::Var { offsets, bytes } => {
                if valid
                    .iter()
                    .zip(offsets.windows(2))
                    .any(|(v, o)| *v == 0 && o[0] != o[1])
                {
                    let mut out = Vec::with_capacity(bytes.len());
                    let mut offs = Vec::with_capacity(offsets.len());
                    offs.push(0u64);
                    for (r, v) in valid.iter().enumerate() {
                        if *v != 0 {
                            out.extend_from_slice(
                                &bytes[offsets[r] as usize..offsets[r + 1] as usize],
                            );
                        }
                        offs.push(out.len() as u64);
                    }
                    *offsets = offs;
                    *bytes = out;
                }
            }
        }
    }

    /// Appends `other[range]`; symbol keys are copied as they are.
    pub fn extend_from(&mut self, other: &ColumnBuf, range: std::ops::Range<usize>) {
        let rows = self.len();
        match (&mut self.validity, &other.validity) {
            (Some(v), Some(o)) => v.extend_from_slice(&o[range.clone()]),
            (Some(v), None) => v.resize(v.len() + range.len(), 1),
            (None, Some(o)) => {
                if o[range.clone()].contains(&0) {
                    let mut v = vec![1u8; rows];
                    v.extend_from_slice(&o[range.clone()]);
                    self.validity = Some(v);
                }
            }
            (None, None) => {}
        }
        match (&mut self.values, &other.values) {
            (Values::Fixed(b), Values::Fixed(o)) => {
                let w = other.width();
                b.extend_from_slice(&o[range.start * w..range.end * w]);
            }
            (
                Values::Var { offsets, bytes },
                Values::Var {
                    offsets: oo,
                    bytes: ob,
                },
            ) => {
                let start = oo[range.start];
                let end = oo[range.end];
                let base = bytes.len() as u64;
                bytes.extend_from_slice(&ob[start as usize..end as usize]);
                offsets.extend(
                    oo[range.start + 1..=range.end]
                        .iter()
                        .map(|o| o - start + base),
                );
            }
            _ => {}
        }
    }

    /// Appends every row of a borrowed payload column (see
    /// [`codec::view`]); symbol keys are copied as they are.
    pub fn extend_from_view(&mut self, other: &codec::ColumnView<'_>, rows: usize) {
        let have = self.len();
        match (&mut self.validity, other.validity) {
            (Some(v), Some(bits)) => {
                v.extend((0..rows).map(|i| (bits[i / 8] >> (i % 8)) & 1));
            }
            (Some(v), None) => v.resize(v.len() + rows, 1),
            (None, Some(bits)) => {
                let mut v = vec![1u8; have];
                v.extend((0..rows).map(|i| (bits[i / 8] >> (i % 8)) & 1));
                self.validity = Some(v);
            }
            (None, None) => {}
        }
        match (&mut self.values, &other.values) {
            (Values::Fixed(b), codec::ViewValues::Fixed(o)) => b.extend_from_slice(o),
            (Values::Var { offsets, bytes }, codec::ViewValues::Var { bytes: ob, .. }) => {
                let base = bytes.len() as u64;
                bytes.extend_from_slice(ob);
                offsets.extend((1..=rows).map(|i| other.offset(i) + base));
            }
            _ => {}
        }
    }

    /// A new column holding rows `idx[0], idx[1], ...` of this one.
    pub fn gather(&self, idx: &[u32]) -> ColumnBuf {
        let validity = self
            .validity
            .as_ref()
            .map(|v| idx.iter().map(|&i| v[i as usize]).collect());
        let values = match &self.values {
            Values::Fixed(b) => Values::Fixed(gather_fixed(b, self.width(), idx)),
            Values::Var { offsets, bytes } => {
                let mut out_off = Vec::with_capacity(idx.len() + 1);
                let mut out = Vec::new();
                out_off.push(0u64);
                for &i in idx {
                    let i = i as usize;
                    out.extend_from_slice(&bytes[offsets[i] as usize..offsets[i + 1] as usize]);
                    out_off.push(out.len() as u64);
                }
                Values::Var {
                    offsets: out_off,
                    bytes: out,
                }
            }
        };
        ColumnBuf {
            ty: self.ty,
            validity,
            values,
            dict: self.dict.clone(),
        }
    }
}

fn gather_fixed(src: &[u8], width: usize, idx: &[u32]) -> Vec<u8> {
    fn go<const W: usize>(src: &[u8], idx: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(idx.len() * W);
        for &i in idx {
            let i = i as usize * W;
            let v: [u8; W] = src[i..i + W].try_into().expect("slice has W bytes");
            out.extend_from_slice(&v);
        }
        out
    }
    match width {
        1 => go::<1>(src, idx),
        2 => go::<2>(src, idx),
        4 => go::<4>(src, idx),
        _ => go::<8>(src, idx),
    }
}

/// Rows for one table, column by column, in schema order.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub columns: Vec<ColumnBuf>,
}

impl Batch {
    pub fn row_count(&self) -> usize {
        self.columns.first().map_or(0, ColumnBuf::len)
    }

    /// Checks that the batch fits `schema`: column types, equal lengths, no null
    /// designated timestamp, symbol keys inside their dictionaries. A batch
    /// made for an earlier schema version (a prefix of the columns) fits:
    /// the columns added since are null in its rows.
    pub fn validate(&self, schema: &Schema) -> Result<(), BatchError> {
        let first = schema.columns.iter().filter(|c| c.added_in == 1).count();
        if self.columns.len() > schema.columns.len() || self.columns.len() < first {
            return Err(BatchError::Shape(format!(
                "{} columns, the table has {}",
                self.columns.len(),
                schema.columns.len()
            )));
        }
        let rows = self.row_count();
        if rows > BATCH_ROWS_MAX {
            return Err(BatchError::TooManyRows { rows });
        }
        for (i, (c, s)) in self.columns.iter().zip(&schema.columns).enumerate() {
            if c.ty != s.ty {
                return Err(BatchError::TypeMismatch {
                    column: i,
                    name: s.name.clone(),
                    expected: s.ty,
                    actual: c.ty.name(),
                });
            }
            if c.len() != rows || c.validity.as_ref().is_some_and(|v| v.len() != rows) {
                return Err(BatchError::Shape(format!(
                    "column {} has {} rows, column 0 has {rows}",
                    s.name,
                    c.len()
                )));
            }
            if let Values::Var { offsets, bytes } = &c.values {
                if offsets[0] != 0
                    || offsets.windows(2).any(|w| w[0] > w[1])
                    || offsets[rows] != bytes.len() as u64
                {
                    return Err(BatchError::Shape(format!(
                        "column {} has bad offsets",
                        s.name
                    )));
                }
            }
            if c.ty == ColumnType::Symbol {
                let n = c.dict.len() as i64;
                for r in 0..rows {
                    let k = i64::from(c.i32_at(r));
                    if c.is_valid(r) && !(0..n).contains(&k) {
                        return Err(BatchError::Shape(format!(
                            "column {} row {r}: symbol key {k} outside its dictionary of {n}",
                            s.name
                        )));
                    }
                }
            }
        }
        if let Some(ts) = schema.timestamp {
            let col = &self.columns[ts];
            if let Some(row) = (0..rows).find(|&r| !col.is_valid(r)) {
                return Err(BatchError::NullTimestamp {
                    name: schema.columns[ts].name.clone(),
                    row,
                });
            }
            let range = TIMESTAMP_MIN_US..=TIMESTAMP_MAX_US;
            if let Some(row) = (0..rows).find(|&r| !range.contains(&col.i64_at(r))) {
                return Err(BatchError::TimestampOutOfRange {
                    name: schema.columns[ts].name.clone(),
                    row,
                    ts_us: col.i64_at(row),
                });
            }
        }
        Ok(())
    }

    /// Designated timestamps of every row (`None` for local-only tables).
    pub fn timestamps(&self, schema: &Schema) -> Option<Vec<i64>> {
        let c = &self.columns[schema.timestamp?];
        Some((0..c.len()).map(|r| c.i64_at(r)).collect())
    }
}

/// Builds a [`Batch`] row by row: `set` values, then `finish_row`; unset columns are null.
#[derive(Debug)]
pub struct BatchBuilder {
    columns: Vec<ColumnBuf>,
    names: Vec<String>,
    timestamp: Option<usize>,
    set: Vec<bool>,
    symbol_keys: Vec<HashMap<String, i32>>,
    rows: usize,
}

impl BatchBuilder {
    pub fn new(schema: &Schema) -> BatchBuilder {
        let n = schema.columns.len();
        BatchBuilder {
            columns: schema
                .columns
                .iter()
                .map(|c| ColumnBuf::new(c.ty))
                .collect(),
            names: schema.columns.iter().map(|c| c.name.clone()).collect(),
            timestamp: schema.timestamp,
            set: vec![false; n],
            symbol_keys: vec![HashMap::new(); n],
            rows: 0,
        }
    }

    pub fn row_count(&self) -> usize {
        self.rows
    }

    /// Sets column `column` of the current row. Setting a column twice in one row is an error.
    pub fn set(&mut self, column: usize, value: Value<'_>) -> Result<&mut Self, BatchError> {
        let columns = self.columns.len();
        let col = self
            .columns
            .get_mut(column)
            .ok_or(BatchError::NoSuchColumn { column, columns })?;
        if self.set[column] {
            return Err(BatchError::Shape(format!(
                "column {} set twice in row {}",
                self.names[column], self.rows
            )));
        }
        let mismatch = |v: &Value<'_>| BatchError::TypeMismatch {
            column,
            name: self.names[column].clone(),
            expected: col.ty,
            actual: v.kind(),
        };
        match (col.ty, value) {
            (_, Value::Null) => col.push_null(),
            (ColumnType::Boolean, Value::Boolean(b)) => col.push_fixed(&[b as u8], true),
            (ColumnType::Byte, Value::Byte(v)) => col.push_fixed(&v.to_le_bytes(), true),
            (ColumnType::Short, Value::Short(v)) => col.push_fixed(&v.to_le_bytes(), true),
            (ColumnType::Int, Value::Int(v)) => col.push_fixed(&v.to_le_bytes(), true),
            (ColumnType::Long, Value::Long(v)) => col.push_fixed(&v.to_le_bytes(), true),
            (ColumnType::Float, Value::Float(v)) => col.push_fixed(&v.to_le_bytes(), true),
            (ColumnType::Double, Value::Double(v)) => col.push_fixed(&v.to_le_bytes(), true),
            (ColumnType::Timestamp, Value::Timestamp(v)) => col.push_fixed(&v.to_le_bytes(), true),
            (ColumnType::Varchar, Value::Varchar(s)) => col.push_str(s, true),
            (ColumnType::Symbol, Value::Symbol(s)) => {
                let key = symbol_key(&mut self.symbol_keys[column], &mut col.dict, s);
                col.push_fixed(&key.to_le_bytes(), true);
            }
            (_, v) => return Err(mismatch(&v)),
        }
        self.set[column] = true;
        Ok(self)
    }

    /// Ends the current row: unset columns become null. The designated timestamp must be set.
    pub fn finish_row(&mut self) -> Result<(), BatchError> {
        if let Some(ts) = self.timestamp {
            if !self.set[ts] || !self.columns[ts].is_valid(self.rows) {
                let row = self.rows;
                self.cancel_row();
                return Err(BatchError::NullTimestamp {
                    name: self.names[ts].clone(),
                    row,
                });
            }
        }
        if self.rows >= BATCH_ROWS_MAX {
            self.cancel_row();
            return Err(BatchError::TooManyRows {
                rows: self.rows + 1,
            });
        }
        for (c, set) in self.columns.iter_mut().zip(self.set.iter_mut()) {
            if !*set {
                c.push_null();
            }
            *set = false;
        }
        self.rows += 1;
        Ok(())
    }

    /// Drops whatever was set in the current row.
    pub fn cancel_row(&mut self) {
        let rows = self.rows;
        for (c, set) in self.columns.iter_mut().zip(self.set.iter_mut()) {
            if *set {
                let mut keep = ColumnBuf::new(c.ty);
                keep.extend_from(c, 0..rows);
                keep.dict = std::mem::take(&mut c.dict);
                *c = keep;
            }
            *set = false;
        }
    }

    /// Adds a column (added to the table meanwhile): null in the rows so far.
    pub fn add_column(&mut self, name: &str, ty: ColumnType) {
        self.columns.push(ColumnBuf::nulls(ty, self.rows));
        self.names.push(name.to_string());
        self.set.push(false);
        self.symbol_keys.push(HashMap::new());
    }

    pub fn column_count(&self) -> usize {
        self.columns.len()
    }

    /// Whole rows appended by a caller that already checked every value
    /// against the column types (ILP's fast path, `ingest`): `push_*` one
    /// value into every column, then [`BatchBuilder::end_raw_row`]. No
    /// [`BatchBuilder::set`] may be pending.
    #[inline]
    pub(crate) fn push_raw_fixed<const N: usize>(&mut self, column: usize, bytes: [u8; N]) {
        let col = &mut self.columns[column];
        debug_assert_eq!(col.width(), N);
        col.set_valid(true);
        if let Values::Fixed(b) = &mut col.values {
            b.extend_from_slice(&bytes);
        }
    }

    #[inline]
    pub(crate) fn push_raw_str(&mut self, column: usize, s: &str) {
        self.columns[column].push_str(s, true);
    }

    #[inline]
    pub(crate) fn push_raw_null(&mut self, column: usize) {
        self.columns[column].push_null();
    }

    /// A symbol value: its key in this batch's dictionary of `column`.
    #[inline]
    pub(crate) fn push_raw_symbol(&mut self, column: usize, s: &str) {
        let col = &mut self.columns[column];
        let key = symbol_key(&mut self.symbol_keys[column], &mut col.dict, s);
        col.push_fixed(&key.to_le_bytes(), true);
    }

    /// Whether one more row fits the batch.
    #[inline]
    pub(crate) fn has_room(&self) -> bool {
        self.rows < BATCH_ROWS_MAX
    }

    /// Ends a row whose every column got one `push_raw_*`.
    #[inline]
    pub(crate) fn end_raw_row(&mut self) {
        self.rows += 1;
        debug_assert!(
            self.columns.iter().all(|c| c.len() == self.rows),
            "a raw row must set every column once"
        );
    }

    pub fn finish(mut self) -> Batch {
        self.cancel_row();
        Batch {
            columns: self.columns,
        }
    }
}

/// The key of symbol `s` in a batch dictionary, added if new.
#[inline]
fn symbol_key(keys: &mut HashMap<String, i32>, dict: &mut Vec<String>, s: &str) -> i32 {
    if let Some(k) = keys.get(s) {
        return *k;
    }
    let k = dict.len() as i32;
    dict.push(s.to_string());
    keys.insert(s.to_string(), k);
    k
}

/// Packs one-byte-per-row flags into an LSB-first bitmap (Arrow's layout).
pub fn pack_bits(flags: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; flags.len().div_ceil(8)];
    for (i, chunk) in flags.chunks(8).enumerate() {
        let mut b = 0u8;
        for (j, f) in chunk.iter().enumerate() {
            b |= ((*f != 0) as u8) << j;
        }
        out[i] = b;
    }
    out
}

/// Unpacks `rows` flags from an LSB-first bitmap, starting at bit `first`.
pub fn unpack_bits(bits: &[u8], first: usize, rows: usize) -> Vec<u8> {
    (first..first + rows)
        .map(|i| (bits[i / 8] >> (i % 8)) & 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::testing::all_types;
    use super::*;

    #[test]
    fn builder_round_trips_values_and_nulls() {
        let s = all_types();
        let mut b = BatchBuilder::new(&s);
        let row: Vec<Value> = vec![
            Value::Boolean(true),
            Value::Byte(-3),
            Value::Short(-300),
            Value::Int(7),
            Value::Long(-9),
            Value::Float(1.5),
            Value::Double(2.25),
            Value::Timestamp(1_000),
            Value::Symbol("a"),
            Value::Varchar("héllo"),
        ];
        for (i, v) in row.iter().enumerate() {
            b.set(i, *v).unwrap();
        }
        b.finish_row().unwrap();
        b.set(7, Value::Timestamp(2_000)).unwrap();
        b.finish_row().unwrap();
        let batch = b.finish();
        batch.validate(&s).unwrap();
        assert_eq!(batch.row_count(), 2);
        for (i, v) in row.iter().enumerate() {
            assert_eq!(batch.columns[i].value(0), *v);
            let second = if i == 7 {
                Value::Timestamp(2_000)
            } else {
                Value::Null
            };
            assert_eq!(batch.columns[i].value(1), second);
        }
    }

    #[test]
    fn builder_errors_say_what_and_where() {
        let s = all_types();
        let mut b = BatchBuilder::new(&s);
        let e = b.set(3, Value::Varchar("x")).unwrap_err();
        assert!(e.to_string().contains("INT, not VARCHAR"), "{e}");
        b.set(0, Value::Boolean(false)).unwrap();
        let e = b.finish_row().unwrap_err();
        assert_eq!(
            e,
            BatchError::NullTimestamp {
                name: "TIMESTAMP".into(),
                row: 0
            }
        );
        // The failed row left nothing behind.
        assert_eq!(b.finish().row_count(), 0);
    }

    #[test]
    fn gather_and_bits() {
        let s = all_types();
        let mut b = BatchBuilder::new(&s);
        for i in 0..10 {
            b.set(7, Value::Timestamp(i)).unwrap();
            if i % 3 == 0 {
                b.set(9, Value::Varchar(&format!("v{i}"))).unwrap();
            }
            b.finish_row().unwrap();
        }
        let batch = b.finish();
        let g = batch.columns[9].gather(&[9, 0, 3]);
        assert_eq!(g.value(0), Value::Varchar("v9"));
        assert_eq!(g.value(1), Value::Varchar("v0"));
        let flags: Vec<u8> = (0..19).map(|i| (i % 3 == 0) as u8).collect();
        assert_eq!(unpack_bits(&pack_bits(&flags), 0, 19), flags);
        assert_eq!(unpack_bits(&pack_bits(&flags), 5, 7), flags[5..12].to_vec());
    }
}
