//! basalt tables as DataFusion tables: one [`QuerySchema`] per query lists
//! the data directory's tables, and each [`BasaltTable`] reads one committed
//! txn of its table, whatever scans the query makes of it.
//!
//! Column files are laid out as Arrow buffers (docs/format.md, "Column
//! files"), so a scan maps them and hands Arrow slices of the maps to the
//! plan: no column value is copied. Every array is still validated (offsets,
//! UTF-8, dictionary keys) before DataFusion sees it, so a damaged file is an
//! error, never undefined behaviour.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    new_null_array, ArrayRef, BooleanArray, DictionaryArray, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, Int8Array, LargeStringArray, RecordBatch,
    RecordBatchOptions, TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{
    DataType, Field, Int32Type, Schema as ArrowSchema, SchemaRef, TimeUnit,
};
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::Column as ColumnExpr;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use crate::table::reader::{MappedColumn, MappedDictionary, Snapshot};
use crate::table::{ColumnType, Schema, TableError, TableReader, TableState};

/// Field metadata key marking a table's designated timestamp column.
pub const DESIGNATED_TIMESTAMP: &str = "basalt.designated_timestamp";

/// How often a scan reads a fresh `_txn` when a partition version vanished
/// between reading it and mapping the files (a merge was checkpointed).
const SNAPSHOT_ATTEMPTS_MAX: usize = 16;

/// The Arrow type a column is read as (docs/format.md, "Column files").
pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Byte => DataType::Int8,
        ColumnType::Short => DataType::Int16,
        ColumnType::Int => DataType::Int32,
        ColumnType::Long => DataType::Int64,
        ColumnType::Float => DataType::Float32,
        ColumnType::Double => DataType::Float64,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::Symbol => {
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::LargeUtf8))
        }
        ColumnType::Varchar => DataType::LargeUtf8,
    }
}

/// The Arrow schema of a basalt table. Every column is nullable.
pub fn arrow_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = Field::new(&c.name, arrow_type(c.ty), true);
            if schema.timestamp == Some(i) {
                f.with_metadata(HashMap::from([(
                    DESIGNATED_TIMESTAMP.to_string(),
                    "true".to_string(),
                )]))
            } else {
                f
            }
        })
        .collect();
    Arc::new(ArrowSchema::new(fields))
}

fn external(e: TableError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The tables of one data directory, as one query sees them: each table is
/// read at one txn for the whole query, however often the query scans it.
#[derive(Debug)]
pub struct QuerySchema {
    data_dir: PathBuf,
    tables: Mutex<HashMap<String, Arc<BasaltTable>>>,
}

impl QuerySchema {
    pub fn new(data_dir: &Path) -> QuerySchema {
        QuerySchema {
            data_dir: data_dir.to_path_buf(),
            tables: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl SchemaProvider for QuerySchema {
    fn table_names(&self) -> Vec<String> {
        crate::table::table_names(&self.data_dir)
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(stored) = crate::table::resolve_name(&self.data_dir, name) else {
            return Ok(None);
        };
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tables.get(&stored) {
            return Ok(Some(t.clone()));
        }
        let reader = match TableReader::open(&self.data_dir, &stored) {
            Ok(r) => r,
            Err(TableError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(external(e)),
        };
        let t = Arc::new(BasaltTable::new(stored.clone(), reader));
        tables.insert(stored, t.clone());
        Ok(Some(t))
    }

    fn table_exist(&self, name: &str) -> bool {
        crate::table::resolve_name(&self.data_dir, name).is_some()
    }
}

/// One table at one txn (fixed by the first scan of the query).
pub struct BasaltTable {
    name: String,
    reader: TableReader,
    schema: SchemaRef,
    /// The state every scan of this query reads; `None` until the first scan.
    state: Mutex<Option<TableState>>,
}

impl fmt::Debug for BasaltTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasaltTable")
            .field("name", &self.name)
            .finish()
    }
}

impl BasaltTable {
    fn new(name: String, reader: TableReader) -> BasaltTable {
        let schema = arrow_schema(reader.schema());
        BasaltTable {
            name,
            reader,
            schema,
            state: Mutex::new(None),
        }
    }

    /// Maps what a scan needs at the query's txn. The first scan picks the
    /// txn; if a partition version it names is already gone (merged and
    /// checkpointed away in between) it picks a newer one.
    fn snapshot(&self, columns: &[usize], range: Option<Range<i64>>) -> Result<Snapshot> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let fixed = state.is_some();
        let mut attempt = 0;
        loop {
            let current = match &*state {
                Some(s) => s.clone(),
                None => self.reader.state().map_err(external)?,
            };
            match self.reader.snapshot(&current, columns, range.clone()) {
                Ok(s) => {
                    *state = Some(current);
                    return Ok(s);
                }
                Err(TableError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && !fixed
                        && attempt < SNAPSHOT_ATTEMPTS_MAX =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(external(e)),
            }
        }
    }

    fn timestamp_name(&self) -> Option<&str> {
        let s = self.reader.schema();
        s.timestamp.map(|i| s.columns[i].name.as_str())
    }
}

#[async_trait]
impl TableProvider for BasaltTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let ts = self.timestamp_name();
        Ok(filters
            .iter()
            .map(|f| match ts.and_then(|ts| time_range(f, ts)) {
                // The scan narrows rows to the range by partition and binary
                // search; DataFusion still applies the filter exactly.
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let range = self.timestamp_name().and_then(|ts| {
            filters
                .iter()
                .filter_map(|f| time_range(f, ts))
                .reduce(|a, b| a.start.max(b.start)..a.end.min(b.end))
        });
        let snapshot = self.snapshot(&columns, range.clone())?;
        let schema = Arc::new(self.schema.project(&columns)?);
        let config = state.config_options();
        let exec = BasaltScan::new(
            self.name.clone(),
            self.reader.schema(),
            snapshot,
            schema,
            range,
            limit,
            config.execution.target_partitions,
            usize::from(config.execution.batch_size),
        )?;
        Ok(Arc::new(exec))
    }
}

/// The designated timestamp range `filter` bounds, if it is a comparison of
/// column `ts` with a timestamp literal (or a conjunction containing them).
/// Ranges are half-open µs; a coarser literal unit widens the range, which
/// is safe because DataFusion re-applies the filter.
pub fn time_range(filter: &Expr, ts: &str) -> Option<Range<i64>> {
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                return match (time_range(left, ts), time_range(right, ts)) {
                    (Some(a), Some(b)) => Some(a.start.max(b.start)..a.end.min(b.end)),
                    (a, b) => a.or(b),
                };
            }
            let (op, v) = match (is_column(left, ts), is_column(right, ts)) {
                (true, false) => (*op, literal_us(right)?),
                (false, true) => (op.swap()?, literal_us(left)?),
                _ => return None,
            };
            let (lo, hi) = v;
            match op {
                Operator::Eq => Some(lo..hi.saturating_add(1)),
                Operator::Gt => Some(lo.saturating_add(1)..i64::MAX),
                Operator::GtEq => Some(lo..i64::MAX),
                Operator::Lt => Some(i64::MIN..hi),
                Operator::LtEq => Some(i64::MIN..hi.saturating_add(1)),
                _ => None,
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_column(expr, ts) => {
            let (lo, _) = literal_us(low)?;
            let (_, hi) = literal_us(high)?;
            Some(lo..hi.saturating_add(1))
        }
        _ => None,
    }
}

fn is_column(e: &Expr, ts: &str) -> bool {
    matches!(e, Expr::Column(c) if c.name == ts)
}

/// A timestamp literal as the µs range it may stand for: exact for µs,
/// floor and ceiling for other units.
fn literal_us(e: &Expr) -> Option<(i64, i64)> {
    let Expr::Literal(v, _) = e else {
        return None;
    };
    let (value, per_us) = match v {
        ScalarValue::TimestampMicrosecond(Some(v), _) => return Some((*v, *v)),
        ScalarValue::TimestampSecond(Some(v), _) => {
            return Some((v.saturating_mul(1_000_000), v.saturating_mul(1_000_000)))
        }
        ScalarValue::TimestampMillisecond(Some(v), _) => {
            return Some((v.saturating_mul(1000), v.saturating_mul(1000)))
        }
        ScalarValue::TimestampNanosecond(Some(v), _) => (*v, 1000),
        _ => return None,
    };
    Some((value.div_euclid(per_us), value.div_euclid(per_us) + 1))
}

/// A contiguous run of rows of one partition slice.
#[derive(Clone, Debug)]
struct Chunk {
    partition: usize,
    rows: Range<u64>,
}

/// A partition's files as Arrow buffers (each shares its file's map).
struct PartitionBuffers {
    columns: Vec<Option<ColumnBuffers>>,
}

struct ColumnBuffers {
    data: Buffer,
    offsets: Option<Buffer>,
    validity: Buffer,
}

fn buffer(file: &Arc<crate::table::files::MappedFile>) -> Buffer {
    Buffer::from(bytes::Bytes::from_owner(SharedMap(file.clone())))
}

/// Lets `bytes::Bytes` own a shared map.
struct SharedMap(Arc<crate::table::files::MappedFile>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl ColumnBuffers {
    fn new(c: &MappedColumn) -> ColumnBuffers {
        ColumnBuffers {
            data: buffer(&c.data),
            offsets: c.offsets.as_ref().map(buffer),
            validity: buffer(&c.validity),
        }
    }
}

/// Reads one table at one txn: the leaf of every plan over a basalt table.
pub struct BasaltScan {
    table: String,
    txn: u64,
    partitions_total: usize,
    partition_names: Vec<String>,
    range: Option<Range<i64>>,
    /// What every output partition's stream reads from.
    mapped: Arc<Mapped>,
    /// Chunks per output partition.
    work: Vec<Vec<Chunk>>,
    rows: u64,
    batch_rows: usize,
    properties: Arc<PlanProperties>,
}

/// The snapshot's files as Arrow buffers, and how to cut batches from them.
struct Mapped {
    schema: SchemaRef,
    column_types: Vec<ColumnType>,
    buffers: Vec<PartitionBuffers>,
    dictionaries: Vec<Option<ArrayRef>>,
}

impl fmt::Debug for BasaltScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasaltScan")
            .field("table", &self.table)
            .finish()
    }
}

impl BasaltScan {
    #[allow(clippy::too_many_arguments)]
    fn new(
        table: String,
        table_schema: &Schema,
        snapshot: Snapshot,
        schema: SchemaRef,
        range: Option<Range<i64>>,
        limit: Option<usize>,
        target_partitions: usize,
        batch_rows: usize,
    ) -> Result<BasaltScan> {
        let column_types: Vec<ColumnType> = snapshot
            .columns
            .iter()
            .map(|&i| table_schema.columns[i].ty)
            .collect();
        let dictionaries = snapshot
            .dictionaries
            .iter()
            .map(|d| d.as_ref().map(dictionary_values).transpose())
            .collect::<Result<Vec<_>>>()?;
        let buffers: Vec<PartitionBuffers> = snapshot
            .partitions
            .iter()
            .map(|p| PartitionBuffers {
                columns: p
                    .columns
                    .iter()
                    .map(|c| c.as_ref().map(ColumnBuffers::new))
                    .collect(),
            })
            .collect();
        // Every row, in timestamp order, cut short by a pushed-down limit.
        let mut chunks = Vec::new();
        let mut left = limit.map_or(u64::MAX, |l| l as u64);
        for (k, p) in snapshot.partitions.iter().enumerate() {
            if left == 0 {
                break;
            }
            let n = (p.rows.end - p.rows.start).min(left);
            left -= n;
            chunks.push(Chunk {
                partition: k,
                rows: p.rows.start..p.rows.start + n,
            });
        }
        let rows: u64 = chunks.iter().map(|c| c.rows.end - c.rows.start).sum();
        let work = split(&chunks, rows, target_partitions);
        // Each output partition is a run of rows in timestamp order.
        let ts_ordering = table_schema.timestamp.and_then(|ts| {
            let at = snapshot.columns.iter().position(|&c| c == ts)?;
            LexOrdering::new([PhysicalSortExpr::new_default(Arc::new(ColumnExpr::new(
                schema.field(at).name(),
                at,
            ))
                as Arc<dyn PhysicalExpr>)])
        });
        let eq = match ts_ordering {
            Some(o) => EquivalenceProperties::new_with_orderings(schema.clone(), [o]),
            None => EquivalenceProperties::new(schema.clone()),
        };
        let properties = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(work.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(BasaltScan {
            table,
            txn: snapshot.txn,
            partitions_total: snapshot.partitions_total,
            partition_names: snapshot
                .partitions
                .iter()
                .map(|p| p.dir_name.clone())
                .collect(),
            range,
            mapped: Arc::new(Mapped {
                schema,
                column_types,
                buffers,
                dictionaries,
            }),
            work,
            rows,
            batch_rows,
            properties: Arc::new(properties),
        })
    }
}

/// Splits `chunks` (in order) into at most `n` runs of about equal rows.
fn split(chunks: &[Chunk], rows: u64, n: usize) -> Vec<Vec<Chunk>> {
    /// Fewer rows than this per output partition are not worth a thread.
    const ROWS_PER_PARTITION_MIN: u64 = 64 * 1024;
    let n = (rows / ROWS_PER_PARTITION_MIN).clamp(1, n as u64);
    let per = rows.div_ceil(n).max(1);
    let mut out: Vec<Vec<Chunk>> = vec![Vec::new()];
    let mut room = per;
    for c in chunks {
        let mut start = c.rows.start;
        while start < c.rows.end {
            if room == 0 {
                out.push(Vec::new());
                room = per;
            }
            let take = (c.rows.end - start).min(room);
            out.last_mut().expect("never empty").push(Chunk {
                partition: c.partition,
                rows: start..start + take,
            });
            start += take;
            room -= take;
        }
    }
    out
}

/// The dictionary of a symbol column as a validated Arrow string array
/// sharing the dictionary files' maps.
fn dictionary_values(d: &MappedDictionary) -> Result<ArrayRef> {
    let offsets = ScalarBuffer::<i64>::new(buffer(&d.offsets), 0, d.count as usize + 1);
    let values = buffer(&d.data);
    Ok(Arc::new(string_array(offsets, values, None)?))
}

/// A `LargeStringArray` over `offsets` into `values`, checked: offsets must
/// not go backwards or past `values`, and the bytes must be UTF-8.
fn string_array(
    offsets: ScalarBuffer<i64>,
    values: Buffer,
    nulls: Option<NullBuffer>,
) -> Result<LargeStringArray> {
    let ok = offsets.first().is_some_and(|f| *f >= 0)
        && offsets.windows(2).all(|w| w[0] <= w[1])
        && offsets
            .last()
            .is_some_and(|l| *l as u64 <= values.len() as u64);
    if !ok {
        return Err(DataFusionError::Execution(
            "a column's offsets file is damaged (offsets go backwards or past its data)".into(),
        ));
    }
    Ok(LargeStringArray::try_new(
        OffsetBuffer::new(offsets),
        values,
        nulls,
    )?)
}

impl Mapped {
    fn array(&self, column: usize, chunk: &Chunk) -> Result<ArrayRef> {
        let ty = self.column_types[column];
        let start = chunk.rows.start as usize;
        let len = (chunk.rows.end - chunk.rows.start) as usize;
        let Some(files) = &self.buffers[chunk.partition].columns[column] else {
            return Ok(new_null_array(&arrow_type(ty), len));
        };
        let nulls = NullBuffer::new(BooleanBuffer::new(files.validity.clone(), start, len));
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        fn values<T: datafusion::arrow::datatypes::ArrowNativeType>(
            b: &Buffer,
            start: usize,
            len: usize,
        ) -> ScalarBuffer<T> {
            ScalarBuffer::new(b.clone(), start, len)
        }
        let d = &files.data;
        Ok(match ty {
            ColumnType::Boolean => Arc::new(BooleanArray::new(
                BooleanBuffer::new(d.clone(), start, len),
                nulls,
            )),
            ColumnType::Byte => Arc::new(Int8Array::new(values(d, start, len), nulls)),
            ColumnType::Short => Arc::new(Int16Array::new(values(d, start, len), nulls)),
            ColumnType::Int => Arc::new(Int32Array::new(values(d, start, len), nulls)),
            ColumnType::Long => Arc::new(Int64Array::new(values(d, start, len), nulls)),
            ColumnType::Float => Arc::new(Float32Array::new(values(d, start, len), nulls)),
            ColumnType::Double => Arc::new(Float64Array::new(values(d, start, len), nulls)),
            ColumnType::Timestamp => {
                Arc::new(TimestampMicrosecondArray::new(values(d, start, len), nulls))
            }
            ColumnType::Symbol => {
                let keys = Int32Array::new(values(d, start, len), nulls);
                let dict = self.dictionaries[column]
                    .clone()
                    .expect("symbol columns carry a dictionary");
                Arc::new(DictionaryArray::<Int32Type>::try_new(keys, dict)?)
            }
            ColumnType::Varchar => {
                let offsets = files
                    .offsets
                    .as_ref()
                    .expect("varchar columns have offsets");
                string_array(values(offsets, start, len + 1), d.clone(), nulls)
                    .map(|a| Arc::new(a) as ArrayRef)?
            }
        })
    }

    fn batch(&self, chunk: &Chunk) -> Result<RecordBatch> {
        let schema = self.schema.clone();
        let columns = (0..self.column_types.len())
            .map(|c| self.array(c, chunk))
            .collect::<Result<Vec<_>>>()?;
        let rows = (chunk.rows.end - chunk.rows.start) as usize;
        Ok(RecordBatch::try_new_with_options(
            schema,
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

impl DisplayAs for BasaltScan {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BasaltScan: table={}, txn={}, partitions={}/{}, rows={}",
            self.table,
            self.txn,
            self.partition_names.len(),
            self.partitions_total,
            self.rows
        )?;
        if let Some(r) = &self.range {
            write!(f, ", ts_range=[{}, {})", r.start, r.end)?;
        }
        if matches!(t, DisplayFormatType::Verbose) {
            write!(f, ", scanned=[{}]", self.partition_names.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for BasaltScan {
    fn name(&self) -> &str {
        "BasaltScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "BasaltScan has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let work = self.work.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("BasaltScan has no partition {partition}"))
        })?;
        let batch_rows = self.batch_rows as u64;
        let pieces: Vec<Chunk> = work
            .into_iter()
            .flat_map(|c| {
                let mut v = Vec::new();
                let mut s = c.rows.start;
                while s < c.rows.end {
                    let e = (s + batch_rows).min(c.rows.end);
                    v.push(Chunk {
                        partition: c.partition,
                        rows: s..e,
                    });
                    s = e;
                }
                v
            })
            .collect();
        let mapped = self.mapped.clone();
        let schema = mapped.schema.clone();
        let stream = futures_util::stream::iter(pieces.into_iter().map(move |c| mapped.batch(&c)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
