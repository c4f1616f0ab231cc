//! Reading a table: one committed txn, by columns and designated-timestamp range.
//!
//! A reader takes `_txn` first and then looks only at the rows it counts, so
//! appends in progress past those rows are invisible. If an out-of-order merge
//! removes a partition version between reading `_txn` and opening its files,
//! the scan starts again from a fresh `_txn`.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{unpack_bits, ColumnBuf, Value, Values};

use super::files::{self, MappedFile};
use super::schema::{validate_name, ColumnType, Schema};
use super::state::{self, PartitionState, TableState};
use super::TableError;

/// Files one snapshot may map. Each map is a kernel mapping, and a process
/// has about 65k (`vm.max_map_count`); a scan must not use them up for
/// everything else (the allocator, the WAL, segments).
pub const SNAPSHOT_MAPS_MAX: usize = 16_384;

/// How often a scan restarts when a partition version vanishes under it.
const SCAN_RETRIES_MAX: usize = 16;

/// Reads rows `rows` of one column stored in `dir`. With `with_validity`
/// false the validity file is not read (symbol dictionaries have none).
pub fn read_column(
    dir: &Path,
    name: &str,
    ty: ColumnType,
    rows: Range<u64>,
    with_validity: bool,
) -> Result<ColumnBuf, TableError> {
    let n = (rows.end - rows.start) as usize;
    let dpath = dir.join(files::data_file(name));
    let data = files::map(&dpath)?;
    let values = match ty {
        ColumnType::Varchar => {
            let opath = dir.join(files::offsets_file(name));
            let omap = files::map(&opath)?;
            let raw = omap.slice(&opath, rows.start * 8, (n as u64 + 1) * 8)?;
            let offs: Vec<u64> = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            let first = offs[0];
            if offs.windows(2).any(|w| w[0] > w[1]) {
                return Err(TableError::Corrupt {
                    file: opath,
                    why: "offsets go backwards".into(),
                });
            }
            let bytes = data.slice(&dpath, first, offs[n] - first)?.to_vec();
            for w in offs.windows(2) {
                if std::str::from_utf8(&bytes[(w[0] - first) as usize..(w[1] - first) as usize])
                    .is_err()
                {
                    return Err(TableError::Corrupt {
                        file: dpath,
                        why: "varchar bytes are not UTF-8".into(),
                    });
                }
            }
            Values::Var {
                offsets: offs.iter().map(|o| o - first).collect(),
                bytes,
            }
        }
        ColumnType::Boolean => {
            let bits = data.slice(&dpath, 0, rows.end.div_ceil(8))?;
            Values::Fixed(unpack_bits(bits, rows.start as usize, n))
        }
        _ => {
            let w = ty.width().expect("fixed-width type") as u64;
            Values::Fixed(data.slice(&dpath, rows.start * w, n as u64 * w)?.to_vec())
        }
    };
    let validity = if with_validity {
        let vpath = dir.join(files::validity_file(name));
        let vmap = files::map(&vpath)?;
        let bits = vmap.slice(&vpath, 0, rows.end.div_ceil(8))?;
        let v = unpack_bits(bits, rows.start as usize, n);
        v.contains(&0).then_some(v)
    } else {
        None
    };
    Ok(ColumnBuf {
        ty,
        validity,
        values,
        dict: Vec::new(),
    })
}

/// Rows of a scan, column by column. Symbol columns carry the table dictionary.
#[derive(Debug)]
pub struct ScanResult {
    /// The txn the scan saw.
    pub txn: u64,
    pub names: Vec<String>,
    pub columns: Vec<ColumnBuf>,
}

impl ScanResult {
    pub fn row_count(&self) -> usize {
        self.columns.first().map_or(0, ColumnBuf::len)
    }

    pub fn value(&self, column: usize, row: usize) -> Value<'_> {
        self.columns[column].value(row)
    }

    pub fn column(&self, name: &str) -> Option<&ColumnBuf> {
        self.names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .map(|i| &self.columns[i])
    }
}

/// Reads committed data of one table; cheap to create, safe next to a writer
/// in this or another process.
pub struct TableReader {
    dir: PathBuf,
    schema: Schema,
    table_id: u64,
}

impl TableReader {
    pub fn open(data_dir: &Path, name: &str) -> Result<TableReader, TableError> {
        validate_name("table", name)?;
        let dir = data_dir.join(name);
        let meta = dir.join(files::META_FILE);
        if !crate::disk::exists(&meta) {
            return Err(TableError::NotFound(name.to_string()));
        }
        let (schema, table_id) = state::decode_meta(&meta, &files::read_file(&meta)?)?;
        Ok(TableReader {
            dir,
            schema,
            table_id,
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn table_id(&self) -> u64 {
        self.table_id
    }

    /// The committed state a scan started now would see.
    pub fn state(&self) -> Result<TableState, TableError> {
        let p = self.dir.join(files::TXN_FILE);
        state::decode_txn(&p, &files::read_file(&p)?)
    }

    /// Reads `columns` (all when empty) of rows whose designated timestamp is
    /// in `ts_range` (all rows when `None`), in partition and timestamp order.
    pub fn scan(
        &self,
        columns: &[&str],
        ts_range: Option<Range<i64>>,
    ) -> Result<ScanResult, TableError> {
        let idx: Vec<usize> = if columns.is_empty() {
            (0..self.schema.columns.len()).collect()
        } else {
            columns
                .iter()
                .map(|c| {
                    self.schema
                        .column_index(c)
                        .ok_or_else(|| TableError::NoSuchColumn(c.to_string()))
                })
                .collect::<Result<_, _>>()?
        };
        let mut attempt = 0;
        loop {
            match self.scan_once(&idx, ts_range.clone()) {
                Err(TableError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && attempt < SCAN_RETRIES_MAX =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn scan_once(
        &self,
        idx: &[usize],
        ts_range: Option<Range<i64>>,
    ) -> Result<ScanResult, TableError> {
        let state = self.state()?;
        let mut out: Vec<ColumnBuf> = idx
            .iter()
            .map(|&i| ColumnBuf::new(self.schema.columns[i].ty))
            .collect();
        for (o, &i) in out.iter_mut().zip(idx) {
            let c = &self.schema.columns[i];
            if c.ty == ColumnType::Symbol {
                let count = state.symbol_count(i);
                let strings = read_column(
                    &self.dir.join(files::SYMBOL_DIR),
                    &c.name,
                    ColumnType::Varchar,
                    0..count,
                    false,
                )?;
                o.dict = (0..count as usize)
                    .map(|k| strings.str_at(k).to_string())
                    .collect();
            }
        }
        for p in &state.partitions {
            if let (Some(r), Some(_)) = (&ts_range, self.schema.timestamp) {
                if p.max_ts < r.start || p.min_ts >= r.end {
                    continue;
                }
            }
            let dir = self.dir.join(files::partition_dir(
                &self.schema.partition_by.partition_name(p.floor),
                p.version,
            ));
            let rows = self.rows_in_range(&dir, p, ts_range.as_ref())?;
            if rows.is_empty() {
                continue;
            }
            for (o, &i) in out.iter_mut().zip(idx) {
                let c = &self.schema.columns[i];
                // Columns added after this partition version was written are null in it.
                let part = if i < p.columns as usize {
                    read_column(&dir, &c.name, c.ty, rows.clone(), true)?
                } else {
                    ColumnBuf::nulls(c.ty, (rows.end - rows.start) as usize)
                };
                o.extend_from(&part, 0..part.len());
            }
        }
        Ok(ScanResult {
            txn: state.txn,
            names: idx
                .iter()
                .map(|&i| self.schema.columns[i].name.clone())
                .collect(),
            columns: out,
        })
    }
}

/// The files of one column in one partition version, mapped: a zero-copy
/// view of committed rows (see docs/format.md, "Column files").
pub struct MappedColumn {
    /// `<column>.d`.
    pub data: Arc<MappedFile>,
    /// `<column>.o` (varchar only).
    pub offsets: Option<Arc<MappedFile>>,
    /// `<column>.v`.
    pub validity: Arc<MappedFile>,
}

/// Rows `rows` of one partition version, with its files mapped.
pub struct PartitionSlice {
    /// The partition's directory name (e.g. `2024-01-15.0`).
    pub dir_name: String,
    pub rows: Range<u64>,
    /// One entry per requested column; `None` for a column added after this
    /// partition version was written (null in all of its rows).
    pub columns: Vec<Option<MappedColumn>>,
}

/// A symbol column's table-wide dictionary at the snapshot's txn.
pub struct MappedDictionary {
    /// `count + 1` u64 offsets.
    pub offsets: Arc<MappedFile>,
    pub data: Arc<MappedFile>,
    pub count: u64,
}

/// Committed rows of one txn, mapped: what a query reads. The mappings keep
/// the files readable even if a merge and checkpoint remove them meanwhile.
pub struct Snapshot {
    pub txn: u64,
    /// Requested columns (indexes into the schema).
    pub columns: Vec<usize>,
    /// In partition (and so designated timestamp) order.
    pub partitions: Vec<PartitionSlice>,
    /// Partitions of the table at this txn, before pruning.
    pub partitions_total: usize,
    /// Per requested column: its dictionary when it is a symbol column.
    pub dictionaries: Vec<Option<MappedDictionary>>,
}

impl TableReader {
    /// Maps `columns` of the rows of `state` whose designated timestamp is in
    /// `ts_range` (all rows when `None`). Partitions outside the range are
    /// not touched. Lengths are checked against `state`, so a short file is a
    /// corruption error, never a read past its end.
    ///
    /// A partition version that vanished since `state` was read (merged and
    /// checkpointed away) gives an `Io` error of kind `NotFound`: read a
    /// fresh state and try again.
    pub fn snapshot(
        &self,
        state: &TableState,
        columns: &[usize],
        ts_range: Option<Range<i64>>,
    ) -> Result<Snapshot, TableError> {
        let mut dictionaries = Vec::with_capacity(columns.len());
        for &i in columns {
            let c = self
                .schema
                .columns
                .get(i)
                .ok_or_else(|| TableError::NoSuchColumn(format!("#{i}")))?;
            dictionaries.push(if c.ty == ColumnType::Symbol {
                let dir = self.dir.join(files::SYMBOL_DIR);
                let count = state.symbol_count(i);
                let opath = dir.join(files::offsets_file(&c.name));
                let dpath = dir.join(files::data_file(&c.name));
                let offsets = files::map(&opath)?;
                offsets.require(&opath, (count + 1) * 8)?;
                let data = files::map(&dpath)?;
                Some(MappedDictionary {
                    offsets: Arc::new(offsets),
                    data: Arc::new(data),
                    count,
                })
            } else {
                None
            });
        }
        let mut partitions = Vec::new();
        let mut maps = 0;
        for p in &state.partitions {
            if let (Some(r), Some(_)) = (&ts_range, self.schema.timestamp) {
                if p.max_ts < r.start || p.min_ts >= r.end {
                    continue;
                }
            }
            maps += columns
                .iter()
                .filter(|&&i| i < p.columns as usize)
                .map(|&i| match self.schema.columns[i].ty {
                    ColumnType::Varchar => 3,
                    _ => 2,
                })
                .sum::<usize>();
            if maps > SNAPSHOT_MAPS_MAX {
                return Err(TableError::TooManyFiles {
                    maps,
                    max: SNAPSHOT_MAPS_MAX,
                });
            }
            let dir_name =
                files::partition_dir(&self.schema.partition_by.partition_name(p.floor), p.version);
            let dir = self.dir.join(&dir_name);
            let rows = self.rows_in_range(&dir, p, ts_range.as_ref())?;
            if rows.is_empty() {
                continue;
            }
            let mut mapped = Vec::with_capacity(columns.len());
            for &i in columns {
                if i >= p.columns as usize {
                    mapped.push(None);
                    continue;
                }
                let c = &self.schema.columns[i];
                let dpath = dir.join(files::data_file(&c.name));
                let vpath = dir.join(files::validity_file(&c.name));
                let data = files::map(&dpath)?;
                let validity = files::map(&vpath)?;
                validity.require(&vpath, rows.end.div_ceil(8))?;
                let offsets = match c.ty {
                    ColumnType::Varchar => {
                        let opath = dir.join(files::offsets_file(&c.name));
                        let o = files::map(&opath)?;
                        o.require(&opath, (rows.end + 1) * 8)?;
                        Some(Arc::new(o))
                    }
                    ColumnType::Boolean => {
                        data.require(&dpath, rows.end.div_ceil(8))?;
                        None
                    }
                    ty => {
                        let w = ty.width().expect("fixed-width type") as u64;
                        data.require(&dpath, rows.end * w)?;
                        None
                    }
                };
                mapped.push(Some(MappedColumn {
                    data: Arc::new(data),
                    offsets,
                    validity: Arc::new(validity),
                }));
            }
            partitions.push(PartitionSlice {
                dir_name,
                rows,
                columns: mapped,
            });
        }
        Ok(Snapshot {
            txn: state.txn,
            columns: columns.to_vec(),
            partitions,
            partitions_total: state.partitions.len(),
            dictionaries,
        })
    }

    /// Rows of partition `p` (files in `dir`) whose designated timestamp is
    /// in `ts_range`: a binary search of the sorted timestamp column.
    fn rows_in_range(
        &self,
        dir: &Path,
        p: &PartitionState,
        ts_range: Option<&Range<i64>>,
    ) -> Result<Range<u64>, TableError> {
        let (Some(r), Some(ts)) = (ts_range, self.schema.timestamp) else {
            return Ok(0..p.rows);
        };
        if p.min_ts >= r.start && p.max_ts < r.end {
            return Ok(0..p.rows);
        }
        let name = &self.schema.columns[ts].name;
        let path = dir.join(files::data_file(name));
        let map = files::map(&path)?;
        let bytes = map.slice(&path, 0, p.rows * 8)?;
        let at =
            |i: usize| i64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let lower = partition_point(p.rows as usize, |i| at(i) < r.start);
        let upper = partition_point(p.rows as usize, |i| at(i) < r.end);
        Ok(lower as u64..upper as u64)
    }

    /// The table's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// First index in `0..n` for which `pred` is false (`pred` true then false).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}
