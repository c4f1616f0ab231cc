//! The single writer of a table: creation, crash recovery of the table files,
//! and apply of committed txns into column files.
//!
//! Apply keeps rows sorted by the designated timestamp inside every partition.
//! Rows at or after a partition's newest row are appended in place; rows
//! older than it ("out of order", O3) make a new partition version holding the
//! merged rows. Either way the new rows count only once `_txn` is replaced, so
//! a reader sees whole txns or nothing of them.

use foldhash::HashMap;
use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::batch::codec::BatchView;
use crate::batch::{Batch, ColumnBuf, Values};
use crate::disk;

/// The rows of one txn, owned or viewed in place.
#[derive(Clone, Copy)]
enum Rows<'a> {
    Batch(&'a Batch),
    View(&'a BatchView<'a>),
}

impl Rows<'_> {
    fn row_count(&self) -> usize {
        match self {
            Rows::Batch(b) => b.row_count(),
            Rows::View(v) => v.rows,
        }
    }
}

use super::files::{self, SyncSet};
use super::reader::read_column;
use super::schema::{validate_name, ColumnType, PartitionBy, Schema};
use super::state::{self, PartitionState, TableState};
use super::TableError;

struct SymbolDict {
    keys: HashMap<String, i32>,
    count: u64,
}

impl SymbolDict {
    /// Table keys for a batch's dictionary, adding strings not seen before
    /// (in dictionary order, so every node assigns the same keys).
    fn map_batch_keys<'s>(
        &mut self,
        column: &str,
        batch_dict: impl Iterator<Item = &'s str>,
        added: &mut Vec<String>,
    ) -> Result<Vec<i32>, TableError> {
        batch_dict
            .map(|s| match self.keys.get(s) {
                Some(k) => Ok(*k),
                None => {
                    let k = i32::try_from(self.count).map_err(|_| {
                        TableError::InvalidSchema(format!(
                            "symbol column {column} has {} distinct values, the most a symbol column holds",
                            i32::MAX
                        ))
                    })?;
                    self.keys.insert(s.to_string(), k);
                    self.count += 1;
                    added.push(s.to_string());
                    Ok(k)
                }
            })
            .collect()
    }
}

pub struct TableWriter {
    dir: PathBuf,
    name: String,
    schema: Schema,
    table_id: u64,
    /// What readers see (`_txn`).
    state: TableState,
    /// What is durable in the table files (`_ckpt`); recovery starts here.
    ckpt: TableState,
    /// Written since `ckpt`, to sync at the next checkpoint.
    dirty: files::Dirty,
    /// Partition versions replaced since `ckpt`, removed once a checkpoint drops them.
    obsolete: Vec<PathBuf>,
    /// Per column; `Some` for symbol columns.
    symbols: Vec<Option<SymbolDict>>,
    /// Set after a failed apply: the files may hold a partial apply, so the
    /// writer refuses work until reopened (which runs recovery).
    failed: Option<String>,
}

impl TableWriter {
    /// Creates table `name` under `data_dir` atomically: it is built in a
    /// hidden directory, then renamed into place.
    pub fn create(data_dir: &Path, name: &str, schema: &Schema) -> Result<TableWriter, TableError> {
        let table_id = disk::random_u64(data_dir);
        Self::create_with_id(data_dir, name, schema, table_id)
    }

    /// [`TableWriter::create`] with a given table id: a replica creates its
    /// copy of a table with the primary's id (segments name it).
    pub fn create_with_id(
        data_dir: &Path,
        name: &str,
        schema: &Schema,
        table_id: u64,
    ) -> Result<TableWriter, TableError> {
        validate_name("table", name)?;
        schema.validate()?;
        let target = data_dir.join(name);
        if disk::exists(&target) {
            return Err(TableError::AlreadyExists(name.to_string()));
        }
        let tmp = data_dir.join(format!(".create-{name}"));
        if disk::exists(&tmp) {
            disk::remove_dir_all(&tmp).map_err(TableError::io(&tmp))?;
        }
        let sym_dir = tmp.join(files::SYMBOL_DIR);
        let wal_dir = tmp.join(files::WAL_DIR);
        for d in [&tmp, &sym_dir, &wal_dir] {
            disk::create_dir_all(d).map_err(TableError::io(d))?;
        }
        let mut sync = SyncSet::default();
        for c in schema.columns.iter().filter(|c| c.ty == ColumnType::Symbol) {
            let o = sym_dir.join(files::offsets_file(&c.name));
            let f = sync.open(o.clone())?;
            files::write_at(f, &o, &0u64.to_le_bytes(), 0)?;
            sync.open(sym_dir.join(files::data_file(&c.name)))?;
        }
        sync.add_dir(sym_dir);
        sync.add_dir(wal_dir);
        sync.sync()?;
        files::durable_replace(
            &tmp,
            files::META_FILE,
            &state::encode_meta(schema, table_id),
        )?;
        let initial = initial_state(schema);
        files::durable_replace(&tmp, files::CKPT_FILE, &state::encode_txn(&initial))?;
        files::durable_replace(&tmp, files::TXN_FILE, &state::encode_txn(&initial))?;
        disk::rename(&tmp, &target).map_err(TableError::io(&target))?;
        files::fsync_dir(data_dir)?;
        info!(
            table = name,
            local_only = schema.is_local_only(),
            "created table"
        );
        Self::open(data_dir, name)
    }

    /// Opens a table and recovers its files to the last checkpoint (`_ckpt`):
    /// bytes past its row counts are cut, partition versions it does not name
    /// are removed, and `_txn` is reset to it. The caller replays the WAL
    /// from the checkpoint's txn.
    pub fn open(data_dir: &Path, name: &str) -> Result<TableWriter, TableError> {
        validate_name("table", name)?;
        let dir = data_dir.join(name);
        if !disk::is_dir(&dir) {
            return Err(TableError::NotFound(name.to_string()));
        }
        let meta_path = dir.join(files::META_FILE);
        let (schema, table_id) = state::decode_meta(&meta_path, &files::read_file(&meta_path)?)?;
        // `_txn` may be ahead of what reached the disk; `_ckpt` is not.
        let ckpt_path = dir.join(files::CKPT_FILE);
        let state = state::decode_txn(&ckpt_path, &files::read_file(&ckpt_path)?)?;
        let mut w = TableWriter {
            dir,
            name: name.to_string(),
            schema,
            table_id,
            state: state.clone(),
            ckpt: state,
            dirty: files::Dirty::default(),
            obsolete: Vec::new(),
            symbols: Vec::new(),
            failed: None,
        };
        w.recover_files()?;
        // Readers go back to the checkpoint until the WAL is replayed on top.
        files::durable_replace(&w.dir, files::TXN_FILE, &state::encode_txn(&w.state))?;
        Ok(w)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn schema(&self) -> &Schema {
        &self.schema
    }
    pub fn table_id(&self) -> u64 {
        self.table_id
    }
    pub fn state(&self) -> &TableState {
        &self.state
    }

    fn recover_files(&mut self) -> Result<(), TableError> {
        let live: Vec<String> = self
            .state
            .partitions
            .iter()
            .map(|p| self.partition_path_name(p))
            .collect();
        let first = self
            .schema
            .columns
            .iter()
            .filter(|c| c.added_in == 1)
            .count();
        for (p, dir_name) in self.state.partitions.clone().iter().zip(&live) {
            if !(first..=self.schema.columns.len()).contains(&(p.columns as usize)) {
                return Err(TableError::Corrupt {
                    file: self.dir.join(files::CKPT_FILE),
                    why: format!(
                        "partition {dir_name} claims {} columns; the schema has {} ({first} at first)",
                        p.columns,
                        self.schema.columns.len()
                    ),
                });
            }
            let pdir = self.dir.join(dir_name);
            let have = p.columns as usize;
            for c in &self.schema.columns[..have] {
                recover_column(&pdir, &c.name, c.ty, p.rows)?;
            }
            // Files of later columns are leftovers of a backfill that was
            // never checkpointed.
            let mut removed = false;
            for c in &self.schema.columns[have..] {
                for f in column_files(&c.name) {
                    removed |= remove_if_exists(&pdir.join(f))?;
                }
            }
            if removed {
                files::fsync_dir(&pdir)?;
            }
        }
        // Partition versions not named by `_txn` are leftovers of an apply that
        // did not finish (new version never published) or of one that finished
        // before the old version was removed.
        let entries = disk::read_dir(&self.dir).map_err(TableError::io(&self.dir))?;
        for e in entries {
            let fname = e.name;
            let path = self.dir.join(&fname);
            if fname.ends_with(".tmp") {
                disk::remove_file(&path).map_err(TableError::io(&path))?;
                continue;
            }
            if fname.starts_with('_') || files::parse_partition_dir(&fname).is_none() {
                continue;
            }
            if !live.contains(&fname) {
                debug!(table = %self.name, dir = %fname, "removing unpublished partition version");
                disk::remove_dir_all(&path).map_err(TableError::io(&path))?;
            }
        }
        self.symbols = Vec::with_capacity(self.schema.columns.len());
        for (i, c) in self.schema.columns.iter().enumerate() {
            if c.ty != ColumnType::Symbol {
                self.symbols.push(None);
                continue;
            }
            let count = self.state.symbol_count(i);
            let sym_dir = self.dir.join(files::SYMBOL_DIR);
            let strings = read_column(&sym_dir, &c.name, ColumnType::Varchar, 0..count, false)?;
            let Values::Var { offsets, .. } = &strings.values else {
                unreachable!("read_column gives offsets for VARCHAR")
            };
            let data_len = offsets[count as usize];
            files::truncate_to(&sym_dir.join(files::offsets_file(&c.name)), (count + 1) * 8)?;
            files::truncate_to(&sym_dir.join(files::data_file(&c.name)), data_len)?;
            let keys = (0..count as usize)
                .map(|k| (strings.str_at(k).to_string(), k as i32))
                .collect();
            self.symbols.push(Some(SymbolDict { keys, count }));
        }
        Ok(())
    }

    fn partition_path_name(&self, p: &PartitionState) -> String {
        files::partition_dir(&self.schema.partition_by.partition_name(p.floor), p.version)
    }

    /// Applies committed txns, in ascending txn order, as one step: visible
    /// to readers at once, durable in the table files at the next checkpoint.
    /// Every batch is validated against the schema first.
    pub fn apply(&mut self, txns: &[(u64, &Batch)]) -> Result<(), TableError> {
        for (_, batch) in txns {
            batch.validate(&self.schema)?;
        }
        self.apply_validated(txns)
    }

    /// [`TableWriter::apply`] for batches already validated against this
    /// table's schema (or an earlier version of it): by `Database::submit`
    /// on the commit path, by the WAL decoder on recovery.
    pub(crate) fn apply_validated(&mut self, txns: &[(u64, &Batch)]) -> Result<(), TableError> {
        let txns: Vec<(u64, Rows<'_>)> = txns.iter().map(|(t, b)| (*t, Rows::Batch(b))).collect();
        self.apply_rows(&txns)
    }

    /// [`TableWriter::apply_validated`] for payloads viewed in place (a
    /// replica applying a mapped segment): each txn's columns are copied
    /// once, straight from the payload into the run written to the column
    /// files. The views were checked by [`crate::batch::codec::view`] against this
    /// table's schema (or an earlier version of it).
    pub fn apply_views(&mut self, txns: &[(u64, &BatchView<'_>)]) -> Result<(), TableError> {
        let txns: Vec<(u64, Rows<'_>)> = txns.iter().map(|(t, v)| (*t, Rows::View(v))).collect();
        self.apply_rows(&txns)
    }

    fn apply_rows(&mut self, txns: &[(u64, Rows<'_>)]) -> Result<(), TableError> {
        if let Some(why) = &self.failed {
            return Err(TableError::Corrupt {
                file: self.dir.clone(),
                why: format!("an earlier apply failed ({why}); reopen the table to recover"),
            });
        }
        let mut last = self.state.txn;
        for (txn, _) in txns {
            if *txn <= last {
                return Err(TableError::TxnOrder {
                    txn: *txn,
                    committed: last,
                });
            }
            last = *txn;
        }
        if txns.is_empty() {
            return Ok(());
        }
        let result = self.apply_inner(txns, last);
        if let Err(e) = &result {
            warn!(table = %self.name, error = %e, "apply failed; table stays at txn {}", self.state.txn);
            self.failed = Some(e.to_string());
        }
        result
    }

    fn apply_inner(&mut self, txns: &[(u64, Rows<'_>)], last_txn: u64) -> Result<(), TableError> {
        let mut next = self.state.clone();
        next.txn = last_txn;
        let mut sync = SyncSet::default();
        let mut new_symbols: Vec<Vec<String>> = vec![Vec::new(); self.schema.columns.len()];
        let mut combined = self.combine(txns, &mut new_symbols)?;
        let rows = combined.first().map_or(0, |c| c.len());
        // The columns each row's txn was made with (a batch made before a
        // column was added has fewer). A partition gets a column's files
        // only when a row written into it comes from a txn that has the
        // column, so which partitions have which files depends on the txns
        // alone, not on how they were grouped into apply steps: a primary
        // applying txn by txn and a replica applying a whole segment, or a
        // recovery replaying the WAL, write the same files.
        let full = self.schema.columns.len();
        let width_of = |r: &Rows<'_>| {
            let n = match r {
                Rows::Batch(b) => b.columns.len(),
                Rows::View(v) => v.columns.len(),
            };
            n.min(full) as u32
        };
        let mut widths: Option<Vec<u32>> = txns
            .iter()
            .any(|(_, r)| width_of(r) as usize != full)
            .then(|| {
                txns.iter()
                    .flat_map(|(_, r)| std::iter::repeat_n(width_of(r), r.row_count()))
                    .collect()
            });
        let width = |widths: &Option<Vec<u32>>, range: Range<usize>| {
            widths.as_ref().map_or(full, |w| {
                w[range].iter().copied().max().unwrap_or(0) as usize
            })
        };
        let mut obsolete = Vec::new();
        match self.schema.timestamp {
            None => {
                if rows > 0 {
                    self.write_run(
                        &mut next,
                        &mut sync,
                        &combined,
                        0..rows,
                        width(&widths, 0..rows),
                        i64::MIN,
                        &[],
                        &mut obsolete,
                    )?;
                }
            }
            Some(ts_col) => {
                let mut ts: Vec<i64> = (0..rows).map(|r| combined[ts_col].i64_at(r)).collect();
                if ts.windows(2).any(|w| w[0] > w[1]) {
                    assert!(
                        u32::try_from(rows).is_ok(),
                        "apply steps are bounded far below 2^32 rows"
                    );
                    let mut perm: Vec<u32> = (0..rows as u32).collect();
                    perm.sort_by_key(|&i| ts[i as usize]);
                    combined = combined
                        .iter()
                        .map(|c| Cow::Owned(c.gather(&perm)))
                        .collect();
                    ts = perm.iter().map(|&i| ts[i as usize]).collect();
                    widths = widths.map(|w| perm.iter().map(|&i| w[i as usize]).collect());
                }
                let mut start = 0;
                while start < rows {
                    let floor = self.schema.partition_by.floor(ts[start])?;
                    let end_ts = self.partition_end(floor);
                    let end = start + ts[start..].partition_point(|t| *t < end_ts);
                    self.write_run(
                        &mut next,
                        &mut sync,
                        &combined,
                        start..end,
                        width(&widths, start..end),
                        floor,
                        &ts[start..end],
                        &mut obsolete,
                    )?;
                    start = end;
                }
            }
        }
        self.write_symbols(&mut next, &mut sync, &new_symbols)?;
        sync.defer(&mut self.dirty);
        // Visible to readers now; durable in the WAL until the next checkpoint.
        self.assert_grows(&next, rows as u64);
        files::replace(&self.dir, files::TXN_FILE, &state::encode_txn(&next))?;
        self.state = next;
        // Old versions stay until a checkpoint no longer names them: `_ckpt`
        // (what recovery trusts) may still point at them.
        self.obsolete.extend(obsolete);
        Ok(())
    }

    /// The design's invariants of one apply step (docs/format.md): the txn
    /// moves forward, every row lands once, and no partition loses rows or
    /// goes back to an older version. Checked before `_txn` is published; a
    /// violation is a bug that would corrupt the table, so it stops here.
    fn assert_grows(&self, next: &TableState, rows: u64) {
        assert!(
            next.txn > self.state.txn,
            "table {}: apply moves the txn from {} to {}",
            self.name,
            self.state.txn,
            next.txn
        );
        assert_eq!(
            next.row_count(),
            self.state.row_count() + rows,
            "table {}: an apply of {rows} rows at txn {} does not add them exactly once",
            self.name,
            next.txn
        );
        for old in &self.state.partitions {
            let new = next.partitions.iter().find(|p| p.floor == old.floor);
            assert!(
                new.is_some_and(|p| p.rows >= old.rows && p.version >= old.version),
                "table {}: partition {} went back at txn {} ({old:?} -> {new:?})",
                self.name,
                old.floor,
                next.txn
            );
        }
    }

    /// Makes everything applied so far durable in the table files: syncs what
    /// was written since the last checkpoint, then replaces `_ckpt`. Returns
    /// the checkpointed txn; WAL up to it is no longer needed.
    pub fn checkpoint(&mut self) -> Result<u64, TableError> {
        if let Some(why) = &self.failed {
            return Err(TableError::Corrupt {
                file: self.dir.clone(),
                why: format!("an earlier apply failed ({why}); reopen the table to recover"),
            });
        }
        if self.state == self.ckpt && self.dirty.is_empty() {
            return Ok(self.ckpt.txn);
        }
        let result = self.dirty.sync().and_then(|_| {
            files::durable_replace(&self.dir, files::CKPT_FILE, &state::encode_txn(&self.state))
        });
        if let Err(e) = result {
            warn!(table = %self.name, error = %e, "checkpoint failed; the table refuses work until reopened");
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.ckpt = self.state.clone();
        for dir in self.obsolete.drain(..) {
            if let Err(e) = disk::remove_dir_all(&dir) {
                // Harmless: recovery removes unnamed versions on the next open.
                warn!(dir = %dir.display(), error = %e, "could not remove old partition version");
            }
        }
        Ok(self.ckpt.txn)
    }

    /// Adds a column as the next schema version. Existing rows read as null;
    /// partitions get the column's files when they are next written.
    pub fn add_column(&mut self, name: &str, ty: ColumnType) -> Result<Schema, TableError> {
        if let Some(why) = &self.failed {
            return Err(TableError::Corrupt {
                file: self.dir.clone(),
                why: format!("an earlier apply failed ({why}); reopen the table to recover"),
            });
        }
        validate_name("column", name)?;
        let next = self.schema.with_column(name, ty)?;
        let index = next.columns.len() - 1;
        if ty == ColumnType::Symbol {
            // Dictionary files first: a crash before `_meta` leaves unused files.
            let sym_dir = self.dir.join(files::SYMBOL_DIR);
            let mut sync = SyncSet::default();
            for f in [files::offsets_file(name), files::data_file(name)] {
                remove_if_exists(&sym_dir.join(&f))?;
            }
            let o = sym_dir.join(files::offsets_file(name));
            let f = sync.open(o.clone())?;
            files::write_at(f, &o, &0u64.to_le_bytes(), 0)?;
            sync.open(sym_dir.join(files::data_file(name)))?;
            sync.add_dir(sym_dir);
            sync.sync()?;
        }
        let meta = state::encode_meta(&next, self.table_id);
        if let Err(e) = files::durable_replace(&self.dir, files::META_FILE, &meta) {
            // `_meta` on disk may or may not name the column now: refuse
            // work until a reopen reads back what is there.
            self.failed = Some(e.to_string());
            return Err(e);
        }
        self.symbols
            .push((ty == ColumnType::Symbol).then(|| SymbolDict {
                keys: HashMap::default(),
                count: 0,
            }));
        if ty == ColumnType::Symbol {
            self.state.symbol_counts.push((index as u32, 0));
        }
        info!(table = %self.name, column = name, %ty, version = next.version, "added column");
        self.schema = next.clone();
        Ok(next)
    }

    /// The last checkpointed (durable in table files) txn.
    pub fn checkpoint_txn(&self) -> u64 {
        self.ckpt.txn
    }

    /// First µs after the partition starting at `floor`.
    fn partition_end(&self, floor: i64) -> i64 {
        // The floor of any instant after the partition differs from `floor`;
        // step by the scheme's largest length and floor back.
        let span: i64 = match self.schema.partition_by {
            PartitionBy::None => return i64::MAX,
            PartitionBy::Hour => 3_600_000_000,
            PartitionBy::Day => 86_400_000_000,
            PartitionBy::Week => 7 * 86_400_000_000,
            PartitionBy::Month => 31 * 86_400_000_000,
            PartitionBy::Year => 366 * 86_400_000_000,
        };
        let probe = floor.saturating_add(span);
        match self.schema.partition_by.floor(probe) {
            Ok(f) if f > floor => f,
            _ => probe,
        }
    }

    /// Concatenates the txns' columns, mapping batch-local symbol keys to
    /// table keys (one lookup per dictionary string, then one array index
    /// per row). A single batch's non-symbol columns are borrowed, not copied.
    fn combine<'b>(
        &mut self,
        txns: &[(u64, Rows<'b>)],
        new_symbols: &mut [Vec<String>],
    ) -> Result<Vec<Cow<'b, ColumnBuf>>, TableError> {
        let mut out = Vec::with_capacity(self.schema.columns.len());
        for (i, c) in self.schema.columns.iter().enumerate() {
            if let [(_, Rows::Batch(batch))] = txns {
                let batch: &'b Batch = batch;
                if let Some(col) = batch.columns.get(i) {
                    if self.symbols[i].is_none() && col.validity.is_none() {
                        out.push(Cow::Borrowed(col));
                        continue;
                    }
                }
            }
            let mut col = ColumnBuf::new(c.ty);
            if let Values::Fixed(b) = &mut col.values {
                let rows: usize = txns.iter().map(|(_, r)| r.row_count()).sum();
                b.reserve(rows * c.ty.width().unwrap_or(0));
            }
            for (_, rows) in txns {
                let start = col.len();
                let n = rows.row_count();
                let map = match rows {
                    // A batch made before column `i` was added: nulls.
                    Rows::Batch(b) if b.columns.get(i).is_none() => {
                        col.extend_from(&ColumnBuf::nulls(c.ty, n), 0..n);
                        continue;
                    }
                    Rows::View(v) if v.columns.get(i).is_none() => {
                        col.extend_from(&ColumnBuf::nulls(c.ty, n), 0..n);
                        continue;
                    }
                    Rows::Batch(b) => {
                        let src = &b.columns[i];
                        col.extend_from(src, 0..src.len());
                        match &mut self.symbols[i] {
                            Some(dict) => Some(dict.map_batch_keys(
                                &c.name,
                                src.dict.iter().map(String::as_str),
                                &mut new_symbols[i],
                            )?),
                            None => None,
                        }
                    }
                    Rows::View(v) => {
                        let src = &v.columns[i];
                        col.extend_from_view(src, n);
                        match &mut self.symbols[i] {
                            Some(dict) => Some(dict.map_batch_keys(
                                &c.name,
                                src.dict(),
                                &mut new_symbols[i],
                            )?),
                            None => None,
                        }
                    }
                };
                if let Some(map) = map {
                    let validity = col.validity.as_deref();
                    let Values::Fixed(bytes) = &mut col.values else {
                        unreachable!("symbol keys are fixed-width")
                    };
                    for (r, chunk) in bytes[start * 4..].chunks_exact_mut(4).enumerate() {
                        let valid = validity.is_none_or(|v| v[start + r] != 0);
                        let local = i32::from_le_bytes(chunk.try_into().expect("4 bytes"));
                        let global = if valid { map[local as usize] } else { 0 };
                        chunk.copy_from_slice(&global.to_le_bytes());
                    }
                }
            }
            col.clear_null_values();
            out.push(Cow::Owned(col));
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_run(
        &self,
        next: &mut TableState,
        sync: &mut SyncSet,
        combined: &[Cow<'_, ColumnBuf>],
        range: Range<usize>,
        width: usize,
        floor: i64,
        ts: &[i64],
        obsolete: &mut Vec<PathBuf>,
    ) -> Result<(), TableError> {
        let (min_ts, max_ts) = match (ts.first(), ts.last()) {
            (Some(a), Some(b)) => (*a, *b),
            _ => (0, 0),
        };
        let name = self.schema.partition_by.partition_name(floor);
        let pos = next.partitions.binary_search_by_key(&floor, |p| p.floor);
        match pos {
            Ok(i) if self.schema.timestamp.is_none() || min_ts >= next.partitions[i].max_ts => {
                // In order: append in place after the committed rows.
                let p = &mut next.partitions[i];
                let dir = self.dir.join(files::partition_dir(&name, p.version));
                // Columns added since this version was written start with
                // null files for its existing rows.
                let width = width.max(p.columns as usize);
                let cols = &self.schema.columns[..width];
                if (p.columns as usize) < width {
                    // New file names in an existing directory: the directory
                    // is synced with the files at the next checkpoint.
                    sync.add_dir(dir.clone());
                }
                for c in &cols[p.columns as usize..] {
                    for f in column_files(&c.name) {
                        remove_if_exists(&dir.join(f))?;
                    }
                    let nulls = ColumnBuf::nulls(c.ty, p.rows as usize);
                    write_column(sync, &dir, &c.name, &nulls, 0..p.rows as usize, 0)?;
                }
                p.columns = width as u32;
                for (c, col) in cols.iter().zip(combined) {
                    write_column(sync, &dir, &c.name, col, range.clone(), p.rows)?;
                }
                p.rows += range.len() as u64;
                p.max_ts = max_ts.max(p.max_ts);
            }
            Ok(i) => {
                // Out of order: merge into a new version of the partition.
                let old = next.partitions[i];
                let old_dir = self.dir.join(files::partition_dir(&name, old.version));
                let ts_col = self
                    .schema
                    .timestamp
                    .expect("O3 only with a designated timestamp");
                let width = width.max(old.columns as usize);
                let cols = &self.schema.columns[..width];
                let mut merged = Vec::with_capacity(width);
                for (k, (c, col)) in cols.iter().zip(combined).enumerate() {
                    let mut m = if k < old.columns as usize {
                        read_column(&old_dir, &c.name, c.ty, 0..old.rows, true)?
                    } else {
                        ColumnBuf::nulls(c.ty, old.rows as usize)
                    };
                    m.extend_from(col, range.clone());
                    merged.push(m);
                }
                let total = merged[ts_col].len();
                if u32::try_from(total).is_err() {
                    return Err(TableError::InvalidSchema(format!(
                        "partition {name} would hold {total} rows after an out-of-order merge; \
                         use a finer PARTITION BY (the limit is {} rows per merged partition)",
                        u32::MAX
                    )));
                }
                let mut perm: Vec<u32> = (0..total as u32).collect();
                let ts_of = |i: u32| merged[ts_col].i64_at(i as usize);
                perm.sort_by_key(|&i| ts_of(i));
                let version = old.version + 1;
                let dir = self.new_partition_dir(sync, &name, version)?;
                for (c, col) in cols.iter().zip(&merged) {
                    let sorted = col.gather(&perm);
                    write_column(sync, &dir, &c.name, &sorted, 0..total, 0)?;
                }
                next.partitions[i] = PartitionState {
                    floor,
                    version,
                    rows: total as u64,
                    min_ts: old.min_ts.min(min_ts),
                    max_ts: old.max_ts.max(max_ts),
                    columns: width as u32,
                };
                debug!(table = %self.name, partition = %name, version, rows = total, "out-of-order merge");
                obsolete.push(old_dir);
            }
            Err(i) => {
                let dir = self.new_partition_dir(sync, &name, 0)?;
                for (c, col) in self.schema.columns[..width].iter().zip(combined) {
                    write_column(sync, &dir, &c.name, col, range.clone(), 0)?;
                }
                next.partitions.insert(
                    i,
                    PartitionState {
                        floor,
                        version: 0,
                        rows: range.len() as u64,
                        min_ts,
                        max_ts,
                        columns: width as u32,
                    },
                );
            }
        }
        Ok(())
    }

    fn new_partition_dir(
        &self,
        sync: &mut SyncSet,
        name: &str,
        version: u64,
    ) -> Result<PathBuf, TableError> {
        let dir = self.dir.join(files::partition_dir(name, version));
        if disk::exists(&dir) {
            disk::remove_dir_all(&dir).map_err(TableError::io(&dir))?;
        }
        disk::create_dir(&dir).map_err(TableError::io(&dir))?;
        sync.add_dir(dir.clone());
        sync.add_dir(self.dir.clone());
        Ok(dir)
    }

    fn write_symbols(
        &self,
        next: &mut TableState,
        sync: &mut SyncSet,
        new_symbols: &[Vec<String>],
    ) -> Result<(), TableError> {
        let sym_dir = self.dir.join(files::SYMBOL_DIR);
        for (i, added) in new_symbols.iter().enumerate() {
            let Some(dict) = &self.symbols[i] else {
                continue;
            };
            if added.is_empty() {
                continue;
            }
            let name = &self.schema.columns[i].name;
            let old_count = dict.count - added.len() as u64;
            let mut col = ColumnBuf::new(ColumnType::Varchar);
            if let Values::Var { offsets, bytes } = &mut col.values {
                for s in added {
                    bytes.extend_from_slice(s.as_bytes());
                    offsets.push(bytes.len() as u64);
                }
            }
            write_varchar(sync, &sym_dir, name, &col, 0..added.len(), old_count)?;
            match next
                .symbol_counts
                .iter_mut()
                .find(|(c, _)| *c as usize == i)
            {
                Some(entry) => entry.1 = dict.count,
                None => next.symbol_counts.push((i as u32, dict.count)),
            }
        }
        Ok(())
    }
}

fn initial_state(schema: &Schema) -> TableState {
    TableState {
        txn: 0,
        partitions: Vec::new(),
        symbol_counts: schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.ty == ColumnType::Symbol)
            .map(|(i, _)| (i as u32, 0))
            .collect(),
    }
}

/// Writes rows `range` of `col` after the `existing` committed rows of a column.
fn write_column(
    sync: &mut SyncSet,
    dir: &Path,
    name: &str,
    col: &ColumnBuf,
    range: Range<usize>,
    existing: u64,
) -> Result<(), TableError> {
    if col.ty == ColumnType::Varchar {
        write_varchar(sync, dir, name, col, range.clone(), existing)?;
    } else {
        let path = dir.join(files::data_file(name));
        let f = sync.open(path.clone())?;
        let Values::Fixed(bytes) = &col.values else {
            unreachable!("fixed-width column")
        };
        let w = col.width();
        let values = &bytes[range.start * w..range.end * w];
        if col.ty == ColumnType::Boolean {
            files::append_bits(f, &path, existing, values)?;
        } else {
            files::write_at(f, &path, values, existing * w as u64)?;
        }
    }
    let vpath = dir.join(files::validity_file(name));
    let f = sync.open(vpath.clone())?;
    match &col.validity {
        Some(v) => files::append_bits(f, &vpath, existing, &v[range]),
        None => files::append_ones(f, &vpath, existing, range.len()),
    }
}

/// Appends varchar rows: offsets continue from the last committed offset.
fn write_varchar(
    sync: &mut SyncSet,
    dir: &Path,
    name: &str,
    col: &ColumnBuf,
    range: Range<usize>,
    existing: u64,
) -> Result<(), TableError> {
    let Values::Var { offsets, bytes } = &col.values else {
        unreachable!("varchar column")
    };
    let opath = dir.join(files::offsets_file(name));
    let dpath = dir.join(files::data_file(name));
    let of = sync.open(opath.clone())?;
    let base = if existing == 0 {
        files::write_at(of, &opath, &0u64.to_le_bytes(), 0)?;
        0
    } else {
        let mut b = [0u8; 8];
        of.read_exact_at(&mut b, existing * 8)
            .map_err(TableError::io(&opath))?;
        u64::from_le_bytes(b)
    };
    let first = offsets[range.start];
    let mut out = Vec::with_capacity(range.len() * 8);
    for o in &offsets[range.start + 1..=range.end] {
        out.extend_from_slice(&(o - first + base).to_le_bytes());
    }
    files::write_at(of, &opath, &out, (existing + 1) * 8)?;
    let df = sync.open(dpath.clone())?;
    let data = &bytes[first as usize..offsets[range.end] as usize];
    files::write_at(df, &dpath, data, base)
}

/// Every file a column may have in a partition directory.
fn column_files(name: &str) -> [String; 3] {
    [
        files::data_file(name),
        files::offsets_file(name),
        files::validity_file(name),
    ]
}

/// Removes `path`; whether it existed.
fn remove_if_exists(path: &Path) -> Result<bool, TableError> {
    match disk::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(TableError::io(path)(e)),
    }
}

/// Cuts a column's files back to `rows` committed rows.
fn recover_column(dir: &Path, name: &str, ty: ColumnType, rows: u64) -> Result<(), TableError> {
    match ty {
        ColumnType::Varchar => {
            let opath = dir.join(files::offsets_file(name));
            files::truncate_to(&opath, (rows + 1) * 8)?;
            let f = disk::open(&opath, disk::Mode::Read).map_err(TableError::io(&opath))?;
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, rows * 8)
                .map_err(TableError::io(&opath))?;
            files::truncate_to(&dir.join(files::data_file(name)), u64::from_le_bytes(b))?;
        }
        ColumnType::Boolean => files::truncate_bits(&dir.join(files::data_file(name)), rows)?,
        _ => {
            let w = ty.width().expect("fixed-width type") as u64;
            files::truncate_to(&dir.join(files::data_file(name)), rows * w)?;
        }
    }
    files::truncate_bits(&dir.join(files::validity_file(name)), rows)
}
