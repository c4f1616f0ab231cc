//! From ILP text to committed txns: tables and columns are created on first
//! use, values are checked against column types, and each table's rows of
//! one request become one txn.
//!
//! A request is all or nothing: if any line is bad, nothing of the request
//! is committed and the error names the line (tables or columns created for
//! earlier lines of it stay, empty). QuestDB's mapping:
//!
//! | ILP | new column | also accepted into |
//! |-----|------------|--------------------|
//! | tag | SYMBOL | VARCHAR |
//! | float | DOUBLE | FLOAT |
//! | integer `i` | LONG | INT, SHORT, BYTE (range-checked), DOUBLE, FLOAT |
//! | string | VARCHAR | SYMBOL |
//! | boolean | BOOLEAN | |
//! | timestamp `t`/`n` | TIMESTAMP | |
//!
//! New tables get a designated timestamp column `timestamp` (from the line's
//! trailing timestamp, or the server's clock) and the configured partition
//! scheme.

mod fast;

use foldhash::{HashMap, HashMapExt};
use std::borrow::Cow;
use std::sync::Arc;

use crate::batch::{Batch, BatchBuilder, Value};
use crate::db::{CommitTicket, Database, DbError, TableHandle};
use crate::ilp::{self, FieldValue, IlpError, Line, Precision};
use crate::table::schema::{validate_name, TIMESTAMP_MAX_US, TIMESTAMP_MIN_US};
use crate::table::{ColumnType, PartitionBy, Schema, TableError};

/// Name of the designated timestamp column of tables created by ingestion.
pub const TIMESTAMP_COLUMN: &str = "timestamp";

#[derive(Clone, Copy, Debug)]
pub struct IngestOptions {
    pub precision: Precision,
    /// Partition scheme of tables created on first use.
    pub partition_by: PartitionBy,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            precision: Precision::Nanos,
            partition_by: PartitionBy::Day,
        }
    }
}

/// Why a request was refused. `line` is 1-based within the request.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("line {line}: {source}")]
    Parse {
        line: usize,
        #[source]
        source: IlpError,
    },
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl IngestError {
    /// The 1-based line the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            IngestError::Parse { line, .. } | IngestError::Line { line, .. } => Some(*line),
            IngestError::Db(_) => None,
        }
    }
}

/// What a request committed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub lines: usize,
    /// (table, rows, txn) per table, in order of first appearance.
    pub tables: Vec<(String, usize, u64)>,
}

/// Shapes a table's fast path keeps (see [`Pending::learn_shape`]): lines
/// that alternate between a few shapes (optional fields, say) all go fast.
const FAST_LAYOUTS: usize = 4;

struct Pending {
    handle: Arc<TableHandle>,
    schema: Arc<Schema>,
    /// Lower-cased column name → index.
    index: HashMap<String, usize>,
    /// The column of each tag/field position in the last lines (tags first):
    /// clients repeat one layout, so one short compare replaces a hash lookup.
    layout: Vec<Option<(String, usize)>>,
    /// The shapes of the table's last lines, for the fast path (`fast`),
    /// the last used first; at most [`FAST_LAYOUTS`].
    fast: Vec<fast::Layout>,
    builder: BatchBuilder,
}

impl Pending {
    fn new(handle: Arc<TableHandle>) -> Pending {
        let schema = handle.schema();
        let index = column_index(&schema);
        Pending {
            builder: BatchBuilder::new(&schema),
            handle,
            schema,
            index,
            layout: Vec::new(),
            fast: Vec::new(),
        }
    }

    /// After `line` went the general way: its shape becomes the first the
    /// fast path tries (made only when no layout held already has it, so
    /// lines that fall back for their values allocate nothing).
    fn learn_shape(&mut self, line: &Line<'_>) {
        if let Some(k) = self.fast.iter().position(|l| self.describes(l, line)) {
            self.fast[..=k].rotate_right(1);
            return;
        }
        if let Some(layout) = self.fast_layout(line) {
            self.fast.truncate(FAST_LAYOUTS - 1);
            self.fast.insert(0, layout);
        }
    }

    /// Each tag and field of `line` as the fast path reads it: the byte
    /// before its name, the name, its column and how its value is read;
    /// `None` for one only the general path takes (an escaped name, a
    /// conversion).
    fn shape<'s>(
        &'s self,
        line: &'s Line<'_>,
    ) -> impl Iterator<Item = Option<(u8, &'s str, usize, fast::Kind)>> + 's {
        let tags = line.tags.len();
        let names = line.tags.iter().map(|(k, _)| k);
        let names = names.chain(line.fields.iter().map(|(k, _)| k));
        names.enumerate().map(move |(pos, key)| {
            let Cow::Borrowed(key) = key else { return None };
            let column = self.layout.get(pos)?.as_ref()?.1;
            let ty = self.schema.columns.get(column)?.ty;
            let kind = match pos.checked_sub(tags) {
                None => fast::Kind::tag(ty)?,
                Some(f) => fast::Kind::field(ty, &line.fields[f].1)?,
            };
            Some((if pos == tags { b' ' } else { b',' }, *key, column, kind))
        })
    }

    /// Whether `layout` is `line`'s shape, as [`Pending::fast_layout`]
    /// would make it.
    fn describes(&self, layout: &fast::Layout, line: &Line<'_>) -> bool {
        layout.columns == self.builder.column_count()
            && layout.measurement.as_slice() == line.measurement.as_bytes()
            && layout.entries.len() == line.tags.len() + line.fields.len()
            && self.shape(line).zip(&layout.entries).all(|(item, e)| {
                item.is_some_and(|(lead, key, column, kind)| e.is(lead, key, column, kind))
            })
    }

    /// The fast-path layout of `line`, just added through the general
    /// path; `None` when a name had escapes or a value needed a conversion
    /// only the general path makes.
    fn fast_layout(&self, line: &Line<'_>) -> Option<fast::Layout> {
        let Cow::Borrowed(measurement) = &line.measurement else {
            return None;
        };
        let mut set = vec![false; self.builder.column_count()];
        let mut entries = Vec::with_capacity(line.tags.len() + line.fields.len());
        for item in self.shape(line) {
            let (lead, key, column, kind) = item?;
            *set.get_mut(column)? = true;
            entries.push(fast::Entry::new(lead, key, column, kind));
        }
        let timestamp = self.schema.timestamp;
        if let Some(t) = timestamp {
            *set.get_mut(t)? = true;
        }
        let nulls = (0..set.len()).filter(|&c| !set[c]).collect();
        Some(fast::Layout {
            measurement: fast::Bytes::new(measurement.as_bytes()),
            entries,
            nulls,
            timestamp,
            columns: set.len(),
        })
    }

    fn refresh(&mut self, schema: Arc<Schema>) {
        for c in &schema.columns[self.builder.column_count()..] {
            self.builder.add_column(&c.name, c.ty);
        }
        self.index = column_index(&schema);
        self.schema = schema;
    }
}

/// Column name → index, under the name as stored and lower-cased, so the
/// common exact-case lookup allocates nothing.
fn column_index(schema: &Schema) -> HashMap<String, usize> {
    let mut index = HashMap::new();
    for (i, c) in schema.columns.iter().enumerate() {
        index.insert(c.name.to_lowercase(), i);
        index.insert(c.name.clone(), i);
    }
    index
}

/// Lines parsed and checked but not committed yet: one batch per table.
/// Kept across reads by a streaming (TCP) connection, so line numbers and
/// column lookups carry over.
#[derive(Default)]
pub struct IngestBuffer {
    tables: Vec<Pending>,
    by_name: HashMap<String, usize>,
    /// Lines read so far, blank ones included (error messages count them).
    line_no: usize,
    /// Non-blank lines accepted since the last commit.
    lines: usize,
    /// Rows held, not yet committed.
    rows: usize,
    /// Slot of the table of the last line (most lines repeat it).
    last_slot: Option<usize>,
    /// Values of the line the fast path is reading.
    slots: Vec<fast::Slot>,
    /// Lines the fast path took, ever.
    fast_lines: u64,
}

impl IngestBuffer {
    /// Rows held, not yet committed.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Lines that went straight into the columns (see `fast`), since the
    /// buffer was made.
    pub fn fast_lines(&self) -> u64 {
        self.fast_lines
    }
}

/// A table's rows on their way to durability.
pub struct Committing {
    pub table: String,
    pub rows: usize,
    pub ticket: CommitTicket,
}

/// Parses, maps and commits ILP requests against one database.
pub struct Ingestor<'a> {
    db: &'a Database,
    opts: IngestOptions,
    /// Lines that fit their table's last shape go straight into the columns.
    fast: bool,
}

impl<'a> Ingestor<'a> {
    pub fn new(db: &'a Database, opts: IngestOptions) -> Ingestor<'a> {
        Ingestor {
            db,
            opts,
            fast: true,
        }
    }

    /// Every line through the general path (parse, then map each value),
    /// none through the fast path: what the fast path is checked and
    /// measured against (the differential tests, `cargo bench --bench
    /// storage`). The results are the same, only slower.
    pub fn general_path_only(mut self) -> Ingestor<'a> {
        self.fast = false;
        self
    }

    /// Ingests one request body as one txn per table; returns once every
    /// txn is durable. `now_us` stamps lines without a timestamp. A bad line
    /// commits nothing.
    pub fn ingest(&self, body: &[u8], now_us: i64) -> Result<IngestReport, IngestError> {
        let mut buf = IngestBuffer::default();
        self.add(&mut buf, body, now_us, true)?;
        let lines = buf.lines;
        let committing = self.submit(&mut buf)?;
        let mut report = IngestReport {
            lines,
            tables: Vec::new(),
        };
        for c in committing {
            let txn = c.ticket.wait()?;
            report.tables.push((c.table, c.rows, txn));
        }
        Ok(report)
    }

    /// [`Ingestor::ingest`] for tasks on a shard: never blocks the executor.
    pub async fn ingest_async(
        &self,
        body: &[u8],
        now_us: i64,
    ) -> Result<IngestReport, IngestError> {
        let mut buf = IngestBuffer::default();
        self.add(&mut buf, body, now_us, true)?;
        let lines = buf.lines;
        let committing = self.submit_async(&mut buf).await?;
        let mut report = IngestReport {
            lines,
            tables: Vec::new(),
        };
        for c in committing {
            let txn = c.ticket.wait_async().await?;
            report.tables.push((c.table, c.rows, txn));
        }
        Ok(report)
    }

    /// Parses the lines of `text` into `buf`. With `last`, the text ends the
    /// input (its last line may lack a newline); without, only complete lines
    /// are taken. Returns the bytes consumed. On a bad line, the rows of
    /// earlier lines stay in `buf` and the error names the line.
    pub fn add(
        &self,
        buf: &mut IngestBuffer,
        text: &[u8],
        now_us: i64,
        last: bool,
    ) -> Result<usize, IngestError> {
        let mut rest = text;
        let mut parsed = Line::default();
        let mut slots = std::mem::take(&mut buf.slots);
        let result = loop {
            // Most lines: straight into the columns.
            if let Some(used) = self.add_fast(buf, rest, now_us, &mut slots) {
                rest = &rest[used..];
                buf.line_no += 1;
                buf.lines += 1;
                buf.rows += 1;
                buf.fast_lines += 1;
                continue;
            }
            let (line, used) = match ilp::next_line(rest) {
                Some(x) => x,
                // The last line may end without a newline.
                None if last && !rest.is_empty() => (rest, rest.len()),
                None => break Ok(()),
            };
            rest = &rest[used..];
            buf.line_no += 1;
            if ilp::is_blank(line) {
                continue;
            }
            if let Err(e) = self.add_line(buf, line, now_us, &mut parsed) {
                break Err(e);
            }
            buf.lines += 1;
            buf.rows += 1;
        };
        buf.slots = slots;
        result.map(|()| text.len() - rest.len())
    }

    /// The line at the start of `b` through its table's fast-path layout
    /// (see `fast`); the bytes it took, or `None` for the general path.
    #[inline]
    fn add_fast(
        &self,
        buf: &mut IngestBuffer,
        b: &[u8],
        now_us: i64,
        slots: &mut Vec<fast::Slot>,
    ) -> Option<usize> {
        if !self.fast {
            return None;
        }
        let m = fast::measurement_end(b)?;
        let name = &b[..m];
        let slot = match buf.last_slot {
            Some(s)
                if buf.tables[s]
                    .fast
                    .first()
                    .is_some_and(|l| l.measurement.is(name)) =>
            {
                s
            }
            _ => *buf.by_name.get(std::str::from_utf8(name).ok()?)?,
        };
        let p = &mut buf.tables[slot];
        if !p.builder.has_room() {
            return None;
        }
        let columns = p.builder.column_count();
        for k in 0..p.fast.len() {
            let layout = &p.fast[k];
            if layout.columns != columns {
                continue;
            }
            let Some((used, ts)) = fast::parse(layout, b, m, self.opts.precision, now_us, slots)
            else {
                continue;
            };
            fast::append(layout, b, slots, ts, &mut p.builder);
            // The shape just used is tried first next time.
            p.fast[..=k].rotate_right(1);
            buf.last_slot = Some(slot);
            return Some(used);
        }
        None
    }

    fn add_line<'l>(
        &self,
        buf: &mut IngestBuffer,
        text: &'l [u8],
        now_us: i64,
        parsed: &mut Line<'l>,
    ) -> Result<(), IngestError> {
        let line_no = buf.line_no;
        ilp::parse_line(text, self.opts.precision, parsed).map_err(|source| {
            IngestError::Parse {
                line: line_no,
                source,
            }
        })?;
        let bad = |message: String| IngestError::Line {
            line: line_no,
            message,
        };
        let table = parsed.measurement.as_ref();
        let last = buf
            .last_slot
            .filter(|&i| buf.tables[i].handle.name == table);
        let slot = match last.or_else(|| buf.by_name.get(table).copied()) {
            Some(i) => i,
            None => {
                validate_name("table", table).map_err(|e| bad(e.to_string()))?;
                let handle = self.table_for(table, parsed).map_err(|e| match e {
                    IngestError::Db(DbError::Table(t)) => bad(t.to_string()),
                    other => other,
                })?;
                // Another spelling of a table already held (`Weather` and
                // `weather`): one batch for both.
                let held = buf
                    .tables
                    .iter()
                    .position(|p| Arc::ptr_eq(&p.handle, &handle));
                let slot = held.unwrap_or_else(|| {
                    buf.tables.push(Pending::new(handle));
                    buf.tables.len() - 1
                });
                buf.by_name.insert(table.to_string(), slot);
                slot
            }
        };
        buf.last_slot = Some(slot);
        let p = &mut buf.tables[slot];
        self.add_row(p, parsed, now_us).map_err(|e| match e {
            IngestError::Line { message, .. } => bad(message),
            IngestError::Db(DbError::Table(t)) => bad(t.to_string()),
            IngestError::Db(DbError::Batch(b)) => bad(b.to_string()),
            other => other,
        })?;
        // The next lines of this shape take the fast path.
        p.learn_shape(parsed);
        Ok(())
    }

    /// Takes every table's rows out of `buf`, leaving it ready for more
    /// (uncommitted: for benchmarks and tools; servers [`Ingestor::submit`]).
    pub fn take_batches(&self, buf: &mut IngestBuffer) -> Vec<(Arc<TableHandle>, usize, Batch)> {
        buf.rows = 0;
        buf.lines = 0;
        let mut out = Vec::new();
        for p in &mut buf.tables {
            let rows = p.builder.row_count();
            if rows == 0 {
                continue;
            }
            let fresh = BatchBuilder::new(&p.schema);
            let batch = std::mem::replace(&mut p.builder, fresh).finish();
            out.push((p.handle.clone(), rows, batch));
        }
        out
    }

    /// Validates and encodes every table's rows before any is sent, so a
    /// request is refused whole or committed whole (per table a txn).
    fn prepare_all(
        &self,
        buf: &mut IngestBuffer,
    ) -> Result<Vec<(String, usize, crate::db::PreparedCommit)>, IngestError> {
        self.take_batches(buf)
            .into_iter()
            .map(|(handle, rows, batch)| {
                let p = self.db.prepare(&handle, batch)?;
                Ok((handle.name.clone(), rows, p))
            })
            .collect()
    }

    /// Commits the rows held in `buf`, one txn per table (blocking while a
    /// shard queue is full; not for shard threads).
    pub fn submit(&self, buf: &mut IngestBuffer) -> Result<Vec<Committing>, IngestError> {
        let mut out = Vec::new();
        for (table, rows, p) in self.prepare_all(buf)? {
            let ticket = self.db.submit_prepared(p)?;
            out.push(Committing {
                table,
                rows,
                ticket,
            });
        }
        Ok(out)
    }

    /// [`Ingestor::submit`] for tasks on a shard.
    pub async fn submit_async(
        &self,
        buf: &mut IngestBuffer,
    ) -> Result<Vec<Committing>, IngestError> {
        let mut out = Vec::new();
        for (table, rows, p) in self.prepare_all(buf)? {
            let ticket = self.db.submit_prepared_async(p).await?;
            out.push(Committing {
                table,
                rows,
                ticket,
            });
        }
        Ok(out)
    }

    /// The table named by a line, created from the line's shape if missing.
    fn table_for(&self, name: &str, line: &Line<'_>) -> Result<Arc<TableHandle>, IngestError> {
        // `weather` writes to `Weather` (names are case-insensitive).
        if let Some(t) = self.db.table_ignoring_case(name) {
            return Ok(t);
        }
        let mut cols: Vec<(&str, ColumnType)> = Vec::new();
        for (k, _) in &line.tags {
            cols.push((k.as_ref(), ColumnType::Symbol));
        }
        for (k, v) in &line.fields {
            cols.push((k.as_ref(), new_column_type(v)));
        }
        cols.push((TIMESTAMP_COLUMN, ColumnType::Timestamp));
        // Repeated names are reported when the row is set, with the line.
        let mut seen = std::collections::HashSet::new();
        cols.retain(|(n, _)| seen.insert(n.to_lowercase()));
        let schema = Schema::new(cols, Some(TIMESTAMP_COLUMN), self.opts.partition_by)
            .map_err(DbError::from)?;
        match self.db.create_table(name, &schema) {
            Ok(t) => Ok(t),
            // Another request created it meanwhile.
            Err(DbError::Table(TableError::AlreadyExists(existing))) => {
                self.db.table_ignoring_case(name).ok_or_else(|| {
                    // Tables made before names were case-insensitive may
                    // differ only in case: say which to use.
                    IngestError::Db(DbError::Table(TableError::InvalidSchema(format!(
                        "table name {name:?} matches more than one table ignoring case \
                         (e.g. {existing:?}); write to the exact name"
                    ))))
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    fn column(&self, p: &mut Pending, name: &str, ty: ColumnType) -> Result<usize, IngestError> {
        if let Some(i) = p
            .index
            .get(name)
            .or_else(|| p.index.get(&name.to_lowercase()))
        {
            return Ok(*i);
        }
        let schema = match self.db.add_column(&p.handle, name, ty) {
            Ok(s) => s,
            // Added by another request meanwhile: use it.
            Err(DbError::Table(TableError::InvalidSchema(m))) if m.contains("already exists") => {
                p.handle.schema()
            }
            Err(e) => return Err(e.into()),
        };
        p.refresh(schema);
        p.index
            .get(&name.to_lowercase())
            .copied()
            .ok_or_else(|| IngestError::Line {
                line: 0,
                message: format!("column {name:?} could not be added"),
            })
    }

    /// The column for the tag/field at `pos` named `name`: from the layout
    /// of earlier lines when the name matches, else looked up (or added).
    fn column_at(
        &self,
        p: &mut Pending,
        pos: usize,
        name: &str,
        ty: ColumnType,
    ) -> Result<usize, IngestError> {
        if let Some(Some((n, i))) = p.layout.get(pos) {
            if n == name {
                return Ok(*i);
            }
        }
        let i = self.column(p, name, ty)?;
        if p.layout.len() <= pos {
            p.layout.resize(pos + 1, None);
        }
        p.layout[pos] = Some((name.to_string(), i));
        Ok(i)
    }

    fn add_row(&self, p: &mut Pending, line: &Line<'_>, now_us: i64) -> Result<(), IngestError> {
        let result = self.set_values(p, line, now_us);
        match result {
            Ok(()) => p.builder.finish_row().map_err(|e| IngestError::Line {
                line: 0,
                message: e.to_string(),
            }),
            Err(e) => {
                p.builder.cancel_row();
                Err(e)
            }
        }
    }

    fn set_values(&self, p: &mut Pending, line: &Line<'_>, now_us: i64) -> Result<(), IngestError> {
        let set_err = |e: crate::batch::BatchError| IngestError::Line {
            line: 0,
            message: e.to_string(),
        };
        for (pos, (k, v)) in line.tags.iter().enumerate() {
            let i = self.column_at(p, pos, k, ColumnType::Symbol)?;
            let value = match p.schema.columns[i].ty {
                ColumnType::Symbol => Value::Symbol(v),
                ColumnType::Varchar => Value::Varchar(v),
                other => return Err(conflict(k, other, "tag")),
            };
            p.builder.set(i, value).map_err(set_err)?;
        }
        let tags = line.tags.len();
        for (pos, (k, v)) in line.fields.iter().enumerate() {
            let i = self.column_at(p, tags + pos, k, new_column_type(v))?;
            let ty = p.schema.columns[i].ty;
            let value = field_value(k, ty, v)?;
            p.builder.set(i, value).map_err(set_err)?;
        }
        let ts = line.timestamp.unwrap_or(now_us);
        let Some(ts_col) = p.schema.timestamp else {
            return Ok(());
        };
        if !(TIMESTAMP_MIN_US..=TIMESTAMP_MAX_US).contains(&ts) {
            return Err(IngestError::Line {
                line: 0,
                message: format!(
                    "designated timestamp {ts} µs is outside years 1 to 9999 (check the precision)"
                ),
            });
        }
        p.builder
            .set(ts_col, Value::Timestamp(ts))
            .map_err(set_err)?;
        Ok(())
    }
}

fn new_column_type(v: &FieldValue<'_>) -> ColumnType {
    match v {
        FieldValue::Float(_) => ColumnType::Double,
        FieldValue::Integer(_) => ColumnType::Long,
        FieldValue::String(_) => ColumnType::Varchar,
        FieldValue::Boolean(_) => ColumnType::Boolean,
        FieldValue::Timestamp(_) => ColumnType::Timestamp,
    }
}

fn conflict(column: &str, ty: ColumnType, kind: &str) -> IngestError {
    IngestError::Line {
        line: 0,
        message: format!("column {column:?} is {ty}; a {kind} value cannot go into it"),
    }
}

/// The value of field `v` for a column of type `ty`.
fn field_value<'v>(
    column: &str,
    ty: ColumnType,
    v: &'v FieldValue<'_>,
) -> Result<Value<'v>, IngestError> {
    let out_of_range = |n: i64| IngestError::Line {
        line: 0,
        message: format!("value {n} does not fit column {column:?} of type {ty}"),
    };
    Ok(match (ty, v) {
        (ColumnType::Double, FieldValue::Float(f)) => Value::Double(*f),
        (ColumnType::Float, FieldValue::Float(f)) => Value::Float(*f as f32),
        (ColumnType::Long, FieldValue::Integer(n)) => Value::Long(*n),
        (ColumnType::Int, FieldValue::Integer(n)) => {
            Value::Int(i32::try_from(*n).map_err(|_| out_of_range(*n))?)
        }
        (ColumnType::Short, FieldValue::Integer(n)) => {
            Value::Short(i16::try_from(*n).map_err(|_| out_of_range(*n))?)
        }
        (ColumnType::Byte, FieldValue::Integer(n)) => {
            Value::Byte(i8::try_from(*n).map_err(|_| out_of_range(*n))?)
        }
        (ColumnType::Double, FieldValue::Integer(n)) => Value::Double(*n as f64),
        (ColumnType::Float, FieldValue::Integer(n)) => Value::Float(*n as f32),
        (ColumnType::Varchar, FieldValue::String(s)) => Value::Varchar(s),
        (ColumnType::Symbol, FieldValue::String(s)) => Value::Symbol(s),
        (ColumnType::Boolean, FieldValue::Boolean(b)) => Value::Boolean(*b),
        (ColumnType::Timestamp, FieldValue::Timestamp(t)) => Value::Timestamp(*t),
        (ty, v) => return Err(conflict(column, ty, v.kind())),
    })
}
