//! QWP ingress: a `/write/v4` message decoded ([`decode`]) against the
//! connection's symbol dictionary ([`Session`]), then mapped onto basalt's
//! column batches ([`to_batches`]), one per table block.
//!
//! The mapping is columnar: a column whose QWP type is the table column's
//! type is copied as a block (fixed-width values) or re-keyed (symbols);
//! only conversions (an INT block into a LONG column, DATE into TIMESTAMP,
//! VARCHAR into SYMBOL...) go value by value.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use super::{status, types, Cursor, WireError, FLAG_DEFER_COMMIT, FLAG_DELTA_SYMBOL_DICT};
use super::{FLAG_GORILLA, HEADER_BYTES, MAGIC, VERSION};
use crate::batch::{Batch, ColumnBuf, Values};
use crate::db::{Database, DbError, TableHandle};
use crate::table::schema::validate_name;
use crate::table::{ColumnType, PartitionBy, Schema, TableError};

/// Longest table or column name (bytes), as QuestDB's.
pub const NAME_BYTES_MAX: usize = 127;
/// Most columns in one table block.
pub const COLUMNS_MAX: usize = 2048;
/// Most rows in one table block.
pub const ROWS_MAX: usize = 1_000_000;
/// Most entries in a connection's symbol dictionary.
pub const DICT_ENTRIES_MAX: usize = 2_000_000;
/// Longest symbol dictionary entry (bytes).
pub const DICT_ENTRY_BYTES_MAX: usize = 1 << 20;
/// Most values (rows × table columns) one message may expand to.
pub const CELLS_MAX: usize = 32 << 20;
/// Most dimensions of an array value.
const ARRAY_DIMS_MAX: usize = 32;

/// A refused message: the status byte the client acts on, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u8,
    pub message: String,
}

impl Refusal {
    pub fn parse(message: impl Into<String>) -> Refusal {
        Refusal {
            status: status::PARSE_ERROR,
            message: message.into(),
        }
    }

    pub fn schema(message: impl Into<String>) -> Refusal {
        Refusal {
            status: status::SCHEMA_MISMATCH,
            message: message.into(),
        }
    }
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Refusal {
        Refusal::parse(e.to_string())
    }
}

/// One decoded message. Slices borrow the frame.
#[derive(Debug)]
pub struct Message<'a> {
    pub flags: u8,
    /// The dictionary delta: `delta[k]` defines symbol id `delta_start + k`.
    pub delta_start: usize,
    pub delta: Vec<&'a str>,
    pub tables: Vec<Block<'a>>,
}

impl Message<'_> {
    pub fn defer_commit(&self) -> bool {
        self.flags & FLAG_DEFER_COMMIT != 0
    }
}

/// A table block: rows of one table, column by column.
#[derive(Debug)]
pub struct Block<'a> {
    pub name: &'a str,
    pub rows: usize,
    pub columns: Vec<Column<'a>>,
}

/// One column of a block. The designated timestamp has an empty name.
#[derive(Debug)]
pub struct Column<'a> {
    pub name: &'a str,
    pub ty: u8,
    /// The null bitmap (bit set = null), when the column has one.
    pub nulls: Option<&'a [u8]>,
    /// Values present (rows minus nulls).
    pub present: usize,
    pub data: Data<'a>,
}

/// The values of a column's non-null rows.
#[derive(Debug)]
pub enum Data<'a> {
    /// BOOLEAN: one bit per value, LSB first.
    Bits(&'a [u8]),
    /// Fixed-width little-endian values (width from the type).
    Fixed(&'a [u8]),
    /// TIMESTAMP / TIMESTAMP_NANOS sent Gorilla-encoded, decoded.
    Decoded(Vec<i64>),
    /// VARCHAR / BINARY: `present + 1` u32 offsets into `bytes`.
    Var { offsets: &'a [u8], bytes: &'a [u8] },
    /// SYMBOL: ids into the connection dictionary.
    Symbols(Vec<u32>),
    /// Types basalt has no column for (checked, then refused when mapped).
    Unsupported,
}

/// Width of a fixed-width type's values; `None` for the others.
fn width(ty: u8) -> Option<usize> {
    Some(match ty {
        types::BYTE => 1,
        types::SHORT | types::CHAR => 2,
        types::INT | types::FLOAT | types::IPV4 => 4,
        types::LONG
        | types::DOUBLE
        | types::TIMESTAMP
        | types::DATE
        | types::TIMESTAMP_NANOS
        | types::DECIMAL64 => 8,
        types::UUID | types::DECIMAL128 => 16,
        types::LONG256 | types::DECIMAL256 => 32,
        _ => return None,
    })
}

/// Decodes one message. `dict_len` is the size of the connection's
/// dictionary before it: symbol ids are checked against it and the delta.
pub fn decode(frame: &[u8], dict_len: usize) -> Result<Message<'_>, Refusal> {
    let mut c = Cursor::new(frame);
    let magic = c.bytes(4, "magic")?;
    if magic != MAGIC {
        return Err(Refusal::parse(format!(
            "not a QWP message: magic {magic:02x?}, expected \"QWP1\""
        )));
    }
    let version = c.u8("version")?;
    if version != VERSION {
        return Err(Refusal::parse(format!(
            "message version {version} does not match the negotiated version {VERSION}"
        )));
    }
    let flags = c.u8("flags")?;
    let known = FLAG_DEFER_COMMIT | FLAG_GORILLA | FLAG_DELTA_SYMBOL_DICT;
    if flags & !known != 0 {
        return Err(Refusal::parse(format!(
            "unsupported header flags {:#04x}",
            flags & !known
        )));
    }
    let table_count = c.u16("table count")? as usize;
    let payload = c.u32("payload length")? as usize;
    if payload != frame.len() - HEADER_BYTES {
        return Err(Refusal::parse(format!(
            "payload length {payload} does not match the {} bytes after the header",
            frame.len() - HEADER_BYTES
        )));
    }
    let mut msg = Message {
        flags,
        delta_start: dict_len,
        delta: Vec::new(),
        tables: Vec::new(),
    };
    if flags & FLAG_DELTA_SYMBOL_DICT != 0 {
        let at = c.pos();
        let start = c.count("dictionary delta start", DICT_ENTRIES_MAX)?;
        if start > dict_len {
            return Err(Refusal {
                status: status::DICTIONARY_GAP,
                message: format!(
                    "delta symbol dictionary gap: delta start {start} exceeds dictionary size {dict_len} (byte {at})"
                ),
            });
        }
        let n = c.count("dictionary delta count", DICT_ENTRIES_MAX - start)?;
        // Each entry takes at least one byte: no allocation past the message.
        let mut delta = Vec::with_capacity(n.min(c.remaining()));
        for _ in 0..n {
            delta.push(c.str("symbol", DICT_ENTRY_BYTES_MAX)?);
        }
        msg.delta_start = start;
        msg.delta = delta;
    }
    let symbols = dict_len.max(msg.delta_start + msg.delta.len());
    let gorilla = flags & FLAG_GORILLA != 0;
    msg.tables.reserve(table_count.min(c.remaining()));
    for _ in 0..table_count {
        msg.tables.push(block(&mut c, symbols, gorilla)?);
    }
    if !c.is_empty() {
        return Err(c
            .error(format!("{} bytes after the last table", c.remaining()))
            .into());
    }
    Ok(msg)
}

fn block<'a>(c: &mut Cursor<'a>, symbols: usize, gorilla: bool) -> Result<Block<'a>, Refusal> {
    let name = c.str("table name", NAME_BYTES_MAX)?;
    let rows = c.count("row count", ROWS_MAX)?;
    let ncols = c.count("column count", COLUMNS_MAX)?;
    let mut defs = Vec::with_capacity(ncols.min(c.remaining()));
    for _ in 0..ncols {
        let n = c.str("column name", NAME_BYTES_MAX)?;
        let ty = c.u8("column type")?;
        defs.push((n, ty));
    }
    let mut columns = Vec::with_capacity(defs.len());
    for (n, ty) in defs {
        columns.push(column(c, n, ty, rows, symbols, gorilla).map_err(|mut r| {
            r.message = format!("table {name:?} column {n:?}: {}", r.message);
            r
        })?);
    }
    Ok(Block {
        name,
        rows,
        columns,
    })
}

fn column<'a>(
    c: &mut Cursor<'a>,
    name: &'a str,
    ty: u8,
    rows: usize,
    symbols: usize,
    gorilla: bool,
) -> Result<Column<'a>, Refusal> {
    let null_flag = c.u8("null flag")?;
    let (nulls, present) = if null_flag != 0 {
        let bitmap = c.bytes(rows.div_ceil(8), "null bitmap")?;
        let nulls: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
        // Bits past the last row must be clear.
        if nulls > rows || (!rows.is_multiple_of(8) && bitmap[rows / 8] >> (rows % 8) != 0) {
            return Err(c.error("null bitmap marks rows past the row count").into());
        }
        (Some(bitmap), rows - nulls)
    } else {
        (None, rows)
    };
    let data = match ty {
        types::BOOLEAN => Data::Bits(c.bytes(present.div_ceil(8), "boolean values")?),
        types::TIMESTAMP | types::TIMESTAMP_NANOS if gorilla => {
            match c.u8("timestamp encoding")? {
                0 => Data::Fixed(c.bytes(present * 8, "timestamp values")?),
                1 => Data::Decoded(gorilla_decode(c, present)?),
                e => return Err(c.error(format!("unknown timestamp encoding {e}")).into()),
            }
        }
        types::DECIMAL64 | types::DECIMAL128 | types::DECIMAL256 => {
            c.u8("decimal scale")?;
            c.bytes(present * width(ty).unwrap_or(0), "decimal values")?;
            Data::Unsupported
        }
        types::GEOHASH => {
            let bits = c.count("geohash precision", 60)?;
            if bits == 0 {
                return Err(c.error("geohash precision 0").into());
            }
            c.bytes(present * bits.div_ceil(8), "geohash values")?;
            Data::Unsupported
        }
        types::VARCHAR | types::BINARY => {
            let offsets = c.bytes((present + 1) * 4, "offsets")?;
            let mut prev = 0u32;
            for (i, o) in offsets.chunks_exact(4).enumerate() {
                let o = u32::from_le_bytes(o.try_into().expect("4 bytes"));
                if (i == 0 && o != 0) || o < prev {
                    return Err(c.error(format!("offset {i} ({o}) out of order")).into());
                }
                prev = o;
            }
            let bytes = c.bytes(prev as usize, "string bytes")?;
            if ty == types::VARCHAR {
                check_utf8(offsets, bytes).map_err(|e| c.error(e))?;
                Data::Var { offsets, bytes }
            } else {
                Data::Unsupported
            }
        }
        types::SYMBOL => {
            let mut ids = Vec::with_capacity(present.min(c.remaining()));
            for _ in 0..present {
                let at = c.pos();
                let id = c.varint("symbol id")?;
                if id >= symbols as u64 {
                    return Err(Refusal::parse(format!(
                        "symbol id {id} is not in the dictionary of {symbols} entries (byte {at})"
                    )));
                }
                ids.push(id as u32);
            }
            Data::Symbols(ids)
        }
        types::DOUBLE_ARRAY | types::LONG_ARRAY => {
            for _ in 0..present {
                let dims = c.u8("array dimensions")? as usize;
                if dims == 0 || dims > ARRAY_DIMS_MAX {
                    return Err(c.error(format!("array of {dims} dimensions")).into());
                }
                let mut n: usize = 1;
                for _ in 0..dims {
                    n = n.saturating_mul(c.u32("array dimension")? as usize);
                }
                c.bytes(n.saturating_mul(8), "array elements")?;
            }
            Data::Unsupported
        }
        _ => match width(ty) {
            Some(w) => {
                let b = c.bytes(present * w, "values")?;
                if matches!(ty, types::UUID | types::LONG256 | types::IPV4) {
                    Data::Unsupported
                } else {
                    Data::Fixed(b)
                }
            }
            None => return Err(c.error(format!("unknown column type {ty:#04x}")).into()),
        },
    };
    Ok(Column {
        name,
        ty,
        nulls,
        present,
        data,
    })
}

/// Every value between two offsets must be whole UTF-8.
fn check_utf8(offsets: &[u8], bytes: &[u8]) -> Result<(), String> {
    if std::str::from_utf8(bytes).is_ok() {
        // Whole text is UTF-8; values must also start on char boundaries.
        let s = std::str::from_utf8(bytes).expect("checked");
        for o in offsets.chunks_exact(4) {
            let o = u32::from_le_bytes(o.try_into().expect("4 bytes")) as usize;
            if !s.is_char_boundary(o) {
                return Err(format!("string offset {o} splits a UTF-8 character"));
            }
        }
        return Ok(());
    }
    Err("string values are not UTF-8".into())
}

/// Reads bits LSB first.
struct Bits<'a> {
    buf: &'a [u8],
    bit: usize,
}

impl Bits<'_> {
    fn take(&mut self, n: usize) -> Option<u64> {
        if self.bit + n > self.buf.len() * 8 {
            return None;
        }
        let mut v = 0u64;
        for i in 0..n {
            let b = self.bit + i;
            v |= u64::from((self.buf[b / 8] >> (b % 8)) & 1) << i;
        }
        self.bit += n;
        Some(v)
    }
}

/// Gorilla delta-of-delta timestamps: two raw seeds, then a bit stream.
fn gorilla_decode(c: &mut Cursor<'_>, n: usize) -> Result<Vec<i64>, Refusal> {
    let mut out = Vec::with_capacity(n.min(c.remaining().saturating_mul(8)));
    for _ in 0..n.min(2) {
        out.push(c.i64("timestamp seed")?);
    }
    if n <= 2 {
        return Ok(out);
    }
    let start = c.pos();
    let mut bits = Bits {
        buf: c.rest(),
        bit: 0,
    };
    let short = || Refusal::parse(format!("Gorilla timestamps end early (byte {start})"));
    for _ in 2..n {
        let mut prefix = 0;
        while prefix < 4 && bits.take(1).ok_or_else(short)? == 1 {
            prefix += 1;
        }
        let dod = match prefix {
            0 => 0,
            p => {
                let w = [7, 9, 12, 32][p - 1];
                let v = bits.take(w).ok_or_else(short)?;
                // Sign-extend a w-bit two's complement value.
                ((v << (64 - w)) as i64) >> (64 - w)
            }
        };
        let k = out.len();
        let delta = out[k - 1].wrapping_sub(out[k - 2]).wrapping_add(dod);
        out.push(out[k - 1].wrapping_add(delta));
    }
    // The stream ends at its last (padded) byte.
    c.bytes(bits.bit.div_ceil(8), "timestamps")?;
    Ok(out)
}

/// One connection's state: its symbol dictionary.
#[derive(Default)]
pub struct Session {
    dict: Vec<String>,
}

impl Session {
    pub fn dict_len(&self) -> usize {
        self.dict.len()
    }

    /// Adds (or redefines) the entries of a message's delta. Call only once
    /// the message is accepted whole.
    pub fn apply_delta(&mut self, msg: &Message<'_>) {
        for (k, s) in msg.delta.iter().enumerate() {
            let id = msg.delta_start + k;
            if id < self.dict.len() {
                if self.dict[id] != *s {
                    self.dict[id] = s.to_string();
                }
            } else {
                self.dict.push(s.to_string());
            }
        }
    }

    /// The string of symbol `id` for `msg` (its delta first).
    pub fn symbol<'m>(&'m self, msg: &'m Message<'_>, id: u32) -> &'m str {
        let id = id as usize;
        if id >= msg.delta_start && id < msg.delta_start + msg.delta.len() {
            msg.delta[id - msg.delta_start]
        } else {
            self.dict.get(id).map_or("", String::as_str)
        }
    }
}

/// The basalt column type a new column of QWP type `ty` gets, or why none.
fn new_column_type(ty: u8) -> Result<ColumnType, String> {
    Ok(match ty {
        types::BOOLEAN => ColumnType::Boolean,
        types::BYTE => ColumnType::Byte,
        types::SHORT => ColumnType::Short,
        types::INT => ColumnType::Int,
        types::LONG => ColumnType::Long,
        types::FLOAT => ColumnType::Float,
        types::DOUBLE => ColumnType::Double,
        types::SYMBOL => ColumnType::Symbol,
        types::TIMESTAMP | types::TIMESTAMP_NANOS | types::DATE => ColumnType::Timestamp,
        types::VARCHAR | types::CHAR => ColumnType::Varchar,
        other => {
            return Err(format!(
                "QWP type {} has no basalt column type (supported: BOOLEAN, BYTE, SHORT, INT, \
                 LONG, FLOAT, DOUBLE, SYMBOL, TIMESTAMP, TIMESTAMP_NS, DATE, VARCHAR, CHAR)",
                types::name(other)
            ))
        }
    })
}

/// Maps a decoded message onto one batch per table block, creating tables
/// and columns on first use (as ILP does). `now_us` stamps rows without a
/// designated timestamp.
pub fn to_batches(
    db: &Database,
    session: &Session,
    msg: &Message<'_>,
    now_us: i64,
    partition_by: PartitionBy,
) -> Result<Vec<(Arc<TableHandle>, Batch)>, MapError> {
    let mut out = Vec::with_capacity(msg.tables.len());
    let mut cells = 0usize;
    for b in &msg.tables {
        if b.rows == 0 {
            continue;
        }
        let ctx = |e: MapError| match e {
            MapError::Refused(mut r) => {
                r.message = format!("table {:?}: {}", b.name, r.message);
                MapError::Refused(r)
            }
            other => other,
        };
        let handle = table_for(db, b, partition_by).map_err(ctx)?;
        // A few bytes can describe many rows (all null, or columns the
        // block leaves out): bound what the message expands to.
        let width = handle.schema().columns.len().max(b.columns.len() + 1);
        cells = cells.saturating_add(b.rows.saturating_mul(width));
        if cells > CELLS_MAX {
            return Err(MapError::Refused(Refusal::parse(format!(
                "the message expands to over {CELLS_MAX} values (rows × table columns); \
                 send fewer rows per message"
            ))));
        }
        let batch = block_batch(db, &handle, session, msg, b, now_us).map_err(ctx)?;
        out.push((handle, batch));
    }
    Ok(out)
}

/// Why a message could not be mapped.
#[derive(Debug)]
pub enum MapError {
    Refused(Refusal),
    Db(DbError),
}

impl From<Refusal> for MapError {
    fn from(r: Refusal) -> MapError {
        MapError::Refused(r)
    }
}

impl From<DbError> for MapError {
    fn from(e: DbError) -> MapError {
        match e {
            DbError::Table(t) => MapError::Refused(Refusal::schema(t.to_string())),
            DbError::Batch(b) => MapError::Refused(Refusal::parse(b.to_string())),
            other => MapError::Db(other),
        }
    }
}

fn table_for(
    db: &Database,
    b: &Block<'_>,
    partition_by: PartitionBy,
) -> Result<Arc<TableHandle>, MapError> {
    if let Some(t) = db.table_ignoring_case(b.name) {
        return Ok(t);
    }
    validate_name("table", b.name).map_err(|e| Refusal::schema(e.to_string()))?;
    let ts = crate::ingest::TIMESTAMP_COLUMN;
    let mut cols: Vec<(&str, ColumnType)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    seen.insert(ts.to_string());
    for c in &b.columns {
        if !c.name.is_empty() && seen.insert(c.name.to_lowercase()) {
            let ty = new_column_type(c.ty)
                .map_err(|m| Refusal::schema(format!("column {:?}: {m}", c.name)))?;
            cols.push((c.name, ty));
        }
    }
    cols.push((ts, ColumnType::Timestamp));
    let schema = Schema::new(cols, Some(ts), partition_by).map_err(DbError::from)?;
    match db.create_table(b.name, &schema) {
        Ok(t) => Ok(t),
        Err(DbError::Table(TableError::AlreadyExists(existing))) => {
            db.table_ignoring_case(b.name).ok_or_else(|| {
                MapError::Refused(Refusal::schema(format!(
                    "table name matches more than one table ignoring case (e.g. {existing:?}); \
                     write to the exact name"
                )))
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The index of the schema column `name` (case-insensitive), added if
/// missing.
fn column_index(
    db: &Database,
    handle: &Arc<TableHandle>,
    schema: &mut Arc<Schema>,
    name: &str,
    ty: u8,
) -> Result<usize, MapError> {
    let find = |s: &Schema| {
        s.columns.iter().position(|c| c.name == name).or_else(|| {
            s.columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(name))
        })
    };
    if let Some(i) = find(schema) {
        return Ok(i);
    }
    validate_name("column", name).map_err(|e| Refusal::schema(e.to_string()))?;
    let new_ty =
        new_column_type(ty).map_err(|m| Refusal::schema(format!("column {name:?}: {m}")))?;
    *schema = match db.add_column(handle, name, new_ty) {
        Ok(s) => s,
        // Added by another connection meanwhile.
        Err(DbError::Table(TableError::InvalidSchema(m))) if m.contains("already exists") => {
            handle.schema()
        }
        Err(e) => return Err(e.into()),
    };
    find(schema).ok_or(MapError::Db(DbError::Closed))
}

fn block_batch(
    db: &Database,
    handle: &Arc<TableHandle>,
    session: &Session,
    msg: &Message<'_>,
    b: &Block<'_>,
    now_us: i64,
) -> Result<Batch, MapError> {
    let mut schema = handle.schema();
    let mut slots: Vec<Option<usize>> = Vec::with_capacity(b.columns.len());
    for c in &b.columns {
        let i = if c.name.is_empty() {
            match schema.timestamp {
                Some(t) => t,
                None => {
                    return Err(Refusal::schema(
                        "the table has no designated timestamp column, but the rows carry one",
                    )
                    .into())
                }
            }
        } else {
            column_index(db, handle, &mut schema, c.name, c.ty)?
        };
        if slots.contains(&Some(i)) {
            return Err(Refusal::parse(format!(
                "column {:?} appears twice in the block (names are case-insensitive)",
                schema.columns[i].name
            ))
            .into());
        }
        slots.push(Some(i));
    }
    let mut cols: Vec<Option<ColumnBuf>> = vec![None; schema.columns.len()];
    for (c, slot) in b.columns.iter().zip(&slots) {
        let i = slot.expect("set above");
        let target = schema.columns[i].ty;
        let designated = schema.timestamp == Some(i);
        let mut buf = convert(c, target, b.rows, |id| session.symbol(msg, id))
            .map_err(|m| Refusal::schema(format!("column {:?}: {m}", schema.columns[i].name)))?;
        if designated {
            fill_nulls_with(&mut buf, now_us);
        }
        cols[i] = Some(buf);
    }
    let columns = cols
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            c.unwrap_or_else(|| {
                if schema.timestamp == Some(i) {
                    let mut ts = ColumnBuf::new(ColumnType::Timestamp);
                    ts.values = Values::Fixed(now_us.to_le_bytes().repeat(b.rows));
                    ts
                } else {
                    ColumnBuf::nulls(schema.columns[i].ty, b.rows)
                }
            })
        })
        .collect();
    Ok(Batch { columns })
}

/// The designated timestamp's null rows mean "the server's time".
fn fill_nulls_with(buf: &mut ColumnBuf, now_us: i64) {
    let Some(valid) = buf.validity.take() else {
        return;
    };
    if let Values::Fixed(bytes) = &mut buf.values {
        for (r, v) in valid.iter().enumerate() {
            if *v == 0 {
                bytes[r * 8..r * 8 + 8].copy_from_slice(&now_us.to_le_bytes());
            }
        }
    }
}

/// Row validity from a null bitmap (bit set = null).
fn validity(c: &Column<'_>, rows: usize) -> Option<Vec<u8>> {
    let bitmap = c.nulls?;
    Some(
        (0..rows)
            .map(|r| ((bitmap[r / 8] >> (r % 8)) & 1) ^ 1)
            .collect(),
    )
}

/// Spreads `present` values of `w` bytes over the rows, zeros at nulls.
fn spread(valid: Option<&[u8]>, values: &[u8], w: usize, rows: usize) -> Vec<u8> {
    match valid {
        None => values.to_vec(),
        Some(valid) => {
            let mut out = vec![0u8; rows * w];
            let mut k = 0;
            for (r, v) in valid.iter().enumerate() {
                if *v != 0 {
                    out[r * w..r * w + w].copy_from_slice(&values[k * w..k * w + w]);
                    k += 1;
                }
            }
            out
        }
    }
}

/// One value of a column, for conversions.
enum Val<'v> {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'v str),
}

/// Row values of a column: `None` at nulls (bitmap nulls, and the values
/// QuestDB reads as null: `i32::MIN`/`i64::MIN` in INT/LONG, NaN).
fn row_values<'v>(
    c: &'v Column<'_>,
    rows: usize,
    sym: &dyn Fn(u32) -> &'v str,
) -> Result<Vec<Option<Val<'v>>>, String> {
    let valid = validity(c, rows);
    let mut present: Vec<Option<Val<'v>>> = Vec::with_capacity(c.present);
    let fixed = |b: &[u8], i: usize, w: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..w].copy_from_slice(&b[i * w..i * w + w]);
        a
    };
    match &c.data {
        Data::Bits(b) => {
            for i in 0..c.present {
                present.push(Some(Val::Bool((b[i / 8] >> (i % 8)) & 1 == 1)));
            }
        }
        Data::Decoded(v) => {
            for x in v {
                present.push(Some(Val::Int(temporal_us(c.ty, *x)?)));
            }
        }
        Data::Fixed(b) => {
            for i in 0..c.present {
                let v = match c.ty {
                    types::BYTE => Some(Val::Int(i64::from(b[i] as i8))),
                    types::SHORT => Some(Val::Int(i64::from(i16::from_le_bytes(
                        fixed(b, i, 2)[..2].try_into().expect("2"),
                    )))),
                    types::INT => {
                        let v = i32::from_le_bytes(fixed(b, i, 4)[..4].try_into().expect("4"));
                        (v != i32::MIN).then_some(Val::Int(i64::from(v)))
                    }
                    types::LONG => {
                        let v = i64::from_le_bytes(fixed(b, i, 8));
                        (v != i64::MIN).then_some(Val::Int(v))
                    }
                    types::FLOAT => {
                        let v = f32::from_le_bytes(fixed(b, i, 4)[..4].try_into().expect("4"));
                        (!v.is_nan()).then_some(Val::Float(f64::from(v)))
                    }
                    types::DOUBLE => {
                        let v = f64::from_le_bytes(fixed(b, i, 8));
                        (!v.is_nan()).then_some(Val::Float(v))
                    }
                    types::TIMESTAMP | types::TIMESTAMP_NANOS | types::DATE => {
                        let v = i64::from_le_bytes(fixed(b, i, 8));
                        (v != i64::MIN)
                            .then(|| temporal_us(c.ty, v).map(Val::Int))
                            .transpose()?
                    }
                    other => {
                        return Err(format!("{} values are not supported", types::name(other)))
                    }
                };
                present.push(v);
            }
        }
        Data::Var { offsets, bytes } => {
            let off = |i: usize| {
                u32::from_le_bytes(offsets[i * 4..i * 4 + 4].try_into().expect("4")) as usize
            };
            for i in 0..c.present {
                let s = std::str::from_utf8(&bytes[off(i)..off(i + 1)]).expect("checked");
                present.push(Some(Val::Str(s)));
            }
        }
        Data::Symbols(ids) => {
            for id in ids {
                present.push(Some(Val::Str(sym(*id))));
            }
        }
        Data::Unsupported => {
            return Err(new_column_type(c.ty).err().unwrap_or_default());
        }
    }
    let Some(valid) = valid else {
        return Ok(present);
    };
    let mut it = present.into_iter();
    Ok(valid
        .iter()
        .map(|v| if *v != 0 { it.next().flatten() } else { None })
        .collect())
}

/// A TIMESTAMP, TIMESTAMP_NANOS or DATE value in microseconds.
fn temporal_us(ty: u8, v: i64) -> Result<i64, String> {
    match ty {
        types::TIMESTAMP => Ok(v),
        types::TIMESTAMP_NANOS => Ok(v.div_euclid(1000)),
        _ => v
            .checked_mul(1000)
            .ok_or_else(|| format!("DATE value {v} ms is out of range")),
    }
}

/// A column's values as a basalt column of type `target`.
fn convert<'v>(
    c: &'v Column<'_>,
    target: ColumnType,
    rows: usize,
    sym: impl Fn(u32) -> &'v str,
) -> Result<ColumnBuf, String> {
    let valid = validity(c, rows);
    let mismatch = || {
        format!(
            "{} values cannot be written to a {} column",
            types::name(c.ty),
            target.name()
        )
    };
    // Same representation: copy the block, only marking sentinel nulls.
    let same = matches!(
        (c.ty, target),
        (types::BYTE, ColumnType::Byte)
            | (types::SHORT, ColumnType::Short)
            | (types::INT, ColumnType::Int)
            | (types::LONG, ColumnType::Long)
            | (types::FLOAT, ColumnType::Float)
            | (types::DOUBLE, ColumnType::Double)
            | (types::TIMESTAMP, ColumnType::Timestamp)
    );
    if let (true, Data::Fixed(b)) = (same, &c.data) {
        let w = target.width().expect("fixed");
        let values = spread(valid.as_deref(), b, w, rows);
        let mut valid = valid;
        mark_sentinels(c.ty, &values, rows, &mut valid);
        return Ok(ColumnBuf {
            ty: target,
            validity: valid,
            values: Values::Fixed(values),
            dict: Vec::new(),
        });
    }
    if let (types::TIMESTAMP_NANOS | types::DATE, ColumnType::Timestamp, Data::Fixed(b)) =
        (c.ty, target, &c.data)
    {
        // Nanoseconds (the clients' designated timestamps) or milliseconds
        // to microseconds, in one pass.
        let mut us = Vec::with_capacity(b.len());
        let mut valid = valid;
        let bitmap = valid.is_some();
        for (i, v) in b.chunks_exact(8).enumerate() {
            let v = i64::from_le_bytes(v.try_into().expect("8 bytes"));
            let x = if v == i64::MIN {
                // QuestDB's null: a sentinel only where there is no bitmap.
                if !bitmap {
                    valid.get_or_insert_with(|| vec![1; rows])[i] = 0;
                }
                0
            } else {
                temporal_us(c.ty, v)?
            };
            us.extend_from_slice(&x.to_le_bytes());
        }
        // Without a bitmap `us` has a value per row already.
        let values = if bitmap {
            spread(valid.as_deref(), &us, 8, rows)
        } else {
            us
        };
        return Ok(ColumnBuf {
            ty: target,
            values: Values::Fixed(values),
            validity: valid,
            dict: Vec::new(),
        });
    }
    if let (types::BOOLEAN, ColumnType::Boolean, Data::Bits(b)) = (c.ty, target, &c.data) {
        let bits: Vec<u8> = (0..c.present).map(|i| (b[i / 8] >> (i % 8)) & 1).collect();
        return Ok(ColumnBuf {
            ty: target,
            values: Values::Fixed(spread(valid.as_deref(), &bits, 1, rows)),
            validity: valid,
            dict: Vec::new(),
        });
    }
    if let (types::SYMBOL, ColumnType::Symbol, Data::Symbols(ids)) = (c.ty, target, &c.data) {
        let mut dict = Vec::new();
        let mut local = Vec::with_capacity(ids.len() * 4);
        let mut add = |id: u32| {
            dict.push(sym(id).to_string());
            (dict.len() - 1) as i32
        };
        // The connection's ids are dense from 0: a table indexed by id
        // beats hashing every row's id, unless the ids run far past the
        // rows of this message.
        let max = ids.iter().max().map_or(0, |m| *m as usize);
        if max < 4 * ids.len() + 1024 {
            let mut keys = vec![-1i32; max + 1];
            for &id in ids {
                let slot = &mut keys[id as usize];
                if *slot < 0 {
                    *slot = add(id);
                }
                local.extend_from_slice(&slot.to_le_bytes());
            }
        } else {
            let mut keys: HashMap<u32, i32> = HashMap::new();
            for &id in ids {
                let k = *keys.entry(id).or_insert_with(|| add(id));
                local.extend_from_slice(&k.to_le_bytes());
            }
        }
        return Ok(ColumnBuf {
            ty: target,
            values: Values::Fixed(spread(valid.as_deref(), &local, 4, rows)),
            validity: valid,
            dict,
        });
    }
    if c.ty == types::CHAR {
        let Data::Fixed(b) = &c.data else {
            return Err(mismatch());
        };
        if target != ColumnType::Varchar {
            return Err(mismatch());
        }
        let mut chars = Vec::with_capacity(c.present);
        for i in 0..c.present {
            let u = u16::from_le_bytes([b[i * 2], b[i * 2 + 1]]);
            chars.push(char::from_u32(u32::from(u)).ok_or_else(|| {
                format!("CHAR value {u:#x} is not a character (a lone UTF-16 surrogate)")
            })?);
        }
        let mut buf = ColumnBuf::new(ColumnType::Varchar);
        let mut it = chars.into_iter();
        let (mut offsets, mut bytes) = (vec![0u64], Vec::new());
        let mut v = Vec::with_capacity(rows);
        for r in 0..rows {
            let ok = valid.as_ref().is_none_or(|v| v[r] != 0);
            if ok {
                let ch = it.next().unwrap_or('\0');
                // QuestDB's CHAR has no null: 0 is its empty value.
                if ch != '\0' {
                    let mut tmp = [0u8; 4];
                    bytes.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                }
            }
            offsets.push(bytes.len() as u64);
            v.push(u8::from(ok));
        }
        buf.values = Values::Var { offsets, bytes };
        buf.validity = valid.is_some().then_some(v);
        return Ok(buf);
    }
    // Conversions, value by value.
    let vals = row_values(c, rows, &sym)?;
    let mut buf = ColumnBuf::new(target);
    let mut validity = Vec::with_capacity(rows);
    let mut any_null = false;
    match target {
        ColumnType::Varchar | ColumnType::Symbol => {
            let (mut offsets, mut bytes) = (vec![0u64], Vec::new());
            let mut keys: HashMap<&str, i32> = HashMap::new();
            let mut dict: Vec<String> = Vec::new();
            let mut fixed = Vec::new();
            for v in &vals {
                let s = match v {
                    None => None,
                    Some(Val::Str(s)) => Some(*s),
                    Some(_) => return Err(mismatch()),
                };
                any_null |= s.is_none();
                validity.push(u8::from(s.is_some()));
                if target == ColumnType::Varchar {
                    bytes.extend_from_slice(s.unwrap_or("").as_bytes());
                    offsets.push(bytes.len() as u64);
                } else {
                    let k = match s {
                        None => 0,
                        Some(s) => *keys.entry(s).or_insert_with(|| {
                            dict.push(s.to_string());
                            (dict.len() - 1) as i32
                        }),
                    };
                    fixed.extend_from_slice(&k.to_le_bytes());
                }
            }
            buf.values = if target == ColumnType::Varchar {
                Values::Var { offsets, bytes }
            } else {
                Values::Fixed(fixed)
            };
            buf.dict = dict;
        }
        _ => {
            let w = target.width().expect("fixed");
            let mut out = Vec::with_capacity(rows * w);
            for v in &vals {
                let bytes: [u8; 8] = match (v, target) {
                    (None, _) => [0; 8],
                    (Some(Val::Bool(b)), ColumnType::Boolean) => {
                        [u8::from(*b), 0, 0, 0, 0, 0, 0, 0]
                    }
                    (Some(Val::Int(i)), ColumnType::Timestamp)
                        if matches!(
                            c.ty,
                            types::TIMESTAMP | types::TIMESTAMP_NANOS | types::DATE
                        ) =>
                    {
                        i.to_le_bytes()
                    }
                    (Some(Val::Int(i)), ColumnType::Long) if is_int(c.ty) => i.to_le_bytes(),
                    (Some(Val::Int(i)), ColumnType::Int) if is_int(c.ty) => {
                        narrow::<i32>(*i, target)?.to_le_bytes().pad()
                    }
                    (Some(Val::Int(i)), ColumnType::Short) if is_int(c.ty) => {
                        narrow::<i16>(*i, target)?.to_le_bytes().pad()
                    }
                    (Some(Val::Int(i)), ColumnType::Byte) if is_int(c.ty) => {
                        narrow::<i8>(*i, target)?.to_le_bytes().pad()
                    }
                    (Some(Val::Int(i)), ColumnType::Double) if is_int(c.ty) => {
                        (*i as f64).to_le_bytes()
                    }
                    (Some(Val::Int(i)), ColumnType::Float) if is_int(c.ty) => {
                        (*i as f32).to_le_bytes().pad()
                    }
                    (Some(Val::Float(f)), ColumnType::Double) => f.to_le_bytes(),
                    (Some(Val::Float(f)), ColumnType::Float) => (*f as f32).to_le_bytes().pad(),
                    _ => return Err(mismatch()),
                };
                any_null |= v.is_none();
                validity.push(u8::from(v.is_some()));
                out.extend_from_slice(&bytes[..w]);
            }
            buf.values = Values::Fixed(out);
        }
    }
    buf.validity = any_null.then_some(validity);
    Ok(buf)
}

fn is_int(ty: u8) -> bool {
    matches!(ty, types::BYTE | types::SHORT | types::INT | types::LONG)
}

fn narrow<T: TryFrom<i64>>(v: i64, target: ColumnType) -> Result<T, String> {
    T::try_from(v).map_err(|_| format!("value {v} is out of range for a {} column", target.name()))
}

trait Pad {
    fn pad(self) -> [u8; 8];
}

impl<const N: usize> Pad for [u8; N] {
    fn pad(self) -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..N].copy_from_slice(&self);
        a
    }
}

/// Marks the values QuestDB reads as null (`i32::MIN`, `i64::MIN`, NaN)
/// in a column copied as a block.
fn mark_sentinels(ty: u8, values: &[u8], rows: usize, valid: &mut Option<Vec<u8>>) {
    let is_null = |r: usize| -> bool {
        match ty {
            types::INT => {
                i32::from_le_bytes(values[r * 4..r * 4 + 4].try_into().expect("4")) == i32::MIN
            }
            types::LONG | types::TIMESTAMP => {
                i64::from_le_bytes(values[r * 8..r * 8 + 8].try_into().expect("8")) == i64::MIN
            }
            types::FLOAT => {
                f32::from_le_bytes(values[r * 4..r * 4 + 4].try_into().expect("4")).is_nan()
            }
            types::DOUBLE => {
                f64::from_le_bytes(values[r * 8..r * 8 + 8].try_into().expect("8")).is_nan()
            }
            _ => false,
        }
    };
    if matches!(ty, types::BYTE | types::SHORT) {
        return;
    }
    for r in 0..rows {
        if is_null(r) {
            let v = valid.get_or_insert_with(|| vec![1; rows]);
            v[r] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A null (`i64::MIN`) in the middle of nanosecond timestamps sent
    /// without a bitmap nulls that row only (a review found later rows
    /// shifted by one).
    #[test]
    fn a_sentinel_null_in_nanosecond_timestamps_stays_in_its_row() {
        let vals: Vec<u8> = [1_000i64, i64::MIN, 3_000, 4_000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = Column {
            name: "t",
            ty: types::TIMESTAMP_NANOS,
            nulls: None,
            present: 4,
            data: Data::Fixed(&vals),
        };
        let b = convert(&c, ColumnType::Timestamp, 4, |_| "").unwrap();
        assert_eq!(b.validity, Some(vec![1, 0, 1, 1]));
        assert_eq!(
            (0..4).map(|r| b.i64_at(r)).collect::<Vec<_>>(),
            vec![1, 0, 3, 4]
        );
        // With a bitmap, values are only the non-null rows.
        let vals: Vec<u8> = [1_000i64, 3_000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = Column {
            name: "t",
            ty: types::TIMESTAMP_NANOS,
            nulls: Some(&[0b0010]),
            present: 2,
            data: Data::Fixed(&vals),
        };
        let b = convert(&c, ColumnType::Timestamp, 3, |_| "").unwrap();
        assert_eq!(b.validity, Some(vec![1, 0, 1]));
        assert_eq!(
            (0..3).map(|r| b.i64_at(r)).collect::<Vec<_>>(),
            vec![1, 0, 3]
        );
    }

    #[test]
    fn sentinels_read_as_null_and_conversions_check_ranges() {
        let vals: Vec<u8> = [5i64, i64::MIN, 300]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c = Column {
            name: "x",
            ty: types::LONG,
            nulls: None,
            present: 3,
            data: Data::Fixed(&vals),
        };
        let b = convert(&c, ColumnType::Long, 3, |_| "").unwrap();
        assert_eq!(b.validity, Some(vec![1, 0, 1]));
        let b = convert(&c, ColumnType::Short, 3, |_| "").unwrap();
        assert_eq!(b.validity, Some(vec![1, 0, 1]));
        let e = convert(&c, ColumnType::Byte, 3, |_| "").unwrap_err();
        assert!(e.contains("300") && e.contains("BYTE"), "{e}");
        let e = convert(&c, ColumnType::Varchar, 3, |_| "").unwrap_err();
        assert!(
            e.contains("LONG values cannot be written to a VARCHAR column"),
            "{e}"
        );
    }
}
