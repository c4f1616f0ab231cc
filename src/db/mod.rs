//! The database: tables, shards and the applier, and crash recovery at open.
//!
//! ```text
//! commit(batch) ─ validate, encode ─▶ shard k (pinned thread, I/O engine)
//!                                       group: txns from the table sequencer,
//!                                       one WAL write + one fdatasync per table
//!                                     ─▶ ack(txn) to the committer
//!                                     ─▶ applier thread: txn order, column files, _txn
//! ```

mod applier;
mod shard;

use std::cell::Cell;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use applier::ApplyMsg;
use shard::{CommitRequest, ShardContext, ShardLimits, ShardMsg};
pub use shard::{ShardEnv, ShardStats, SpawnFn};

use crate::batch::{codec, Batch, BatchError};
use crate::disk;
use crate::io::{
    self, Engine, EngineChoice, EngineUnavailable, FaultEngine, GlommioEngine, PortableEngine,
    Resolved, TokioUringEngine,
};
use crate::table::files::WAL_DIR;
use crate::table::{ColumnType, ScanResult, Schema, TableError, TableReader, TableWriter};
use crate::wal::{self, WalError};

/// Database settings. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct DbOptions {
    pub data_dir: PathBuf,
    pub engine: EngineChoice,
    /// Shard threads; 0 = one per core.
    pub shards: usize,
    /// Pin shard `k` to core `k mod cores`.
    pub pin_shards: bool,
    /// A WAL file is closed and the next started past this size.
    pub wal_file_bytes_max: u64,
    /// A group commit stops collecting commits at this many payload bytes.
    pub group_commit_bytes_max: usize,
    /// Commits waiting for one shard before committers block.
    pub shard_queue_max: usize,
    /// Resolved txns waiting for the applier before shards block.
    pub apply_queue_max: usize,
    /// Rows the applier puts into one apply step.
    pub apply_rows_max: usize,
    /// Least time between two apply steps (bounds how often `_txn` moves).
    pub apply_interval: Duration,
    /// Applied txns are made durable in the table files (and their WAL
    /// dropped) this often...
    pub checkpoint_interval: Duration,
    /// ... or after this many rows, whichever comes first.
    pub checkpoint_rows_max: usize,
    /// Replication is on: the WAL of tables with a designated timestamp is
    /// kept until it is uploaded too (see [`TableHandle::set_uploaded`]),
    /// across restarts.
    pub retain_wal_for_upload: bool,
    /// The store uploads go to (`Store::id`): an upload mark written for
    /// another store says nothing about this one (its WAL is all kept).
    pub upload_store_id: u64,
    /// A replica's node: tables are written by the replica, not by commits;
    /// open recovers nothing and creating tables is refused.
    pub read_only: bool,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            data_dir: PathBuf::from("basalt-data"),
            engine: EngineChoice::Auto,
            shards: 0,
            pin_shards: true,
            wal_file_bytes_max: wal::writer::WAL_FILE_BYTES_MAX_DEFAULT,
            group_commit_bytes_max: 8 * 1024 * 1024,
            shard_queue_max: 4096,
            apply_queue_max: 65_536,
            apply_rows_max: 4 * 1024 * 1024,
            apply_interval: Duration::from_millis(5),
            checkpoint_interval: Duration::from_secs(10),
            checkpoint_rows_max: 16 * 1024 * 1024,
            retain_wal_for_upload: false,
            upload_store_id: 0,
            read_only: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Wal(Arc<WalError>),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error(transparent)]
    Engine(#[from] EngineUnavailable),
    #[error("shard {shard} could not start its I/O engine: {why}")]
    ShardStart { shard: usize, why: String },
    #[error("apply into table {table} failed: {reason}. Committed data is safe in the WAL; reopen the database to recover")]
    ApplyFailed { table: String, reason: String },
    #[error("the database is shut down")]
    Closed,
    #[error("data directory {0} is in use by another basalt process (it holds {0}/.lock)")]
    Locked(PathBuf),
    #[error("table {table} refuses commits: an earlier apply or checkpoint failed ({reason}); reopen the database to recover")]
    TableFailed { table: String, reason: String },
    #[error("timed out after {0:?} waiting for the applier")]
    Timeout(Duration),
    #[error("this node is a read-only replica: tables are written only by replication")]
    ReadOnly,
    /// The node does not take writes now (a role switch runs, or it was
    /// fenced by a newer primary): HTTP 421, as QuestDB answers.
    #[error("{0}")]
    NotPrimary(String),
    #[error("table {table} was dropped")]
    Dropped { table: String },
}

impl From<WalError> for DbError {
    fn from(e: WalError) -> Self {
        DbError::Wal(Arc::new(e))
    }
}

impl DbError {
    pub fn is_disk_full(&self) -> bool {
        match self {
            DbError::Wal(w) => matches!(**w, WalError::DiskFull { .. }),
            DbError::Table(t) => t.is_disk_full(),
            _ => false,
        }
    }
}

#[derive(Debug, Default)]
struct ApplyStatus {
    resolved: u64,
    failed: Option<String>,
}

/// A table known to the database. Hold on to it: committing through a handle
/// takes no lock.
#[derive(Debug)]
pub struct TableHandle {
    pub name: String,
    /// Current schema; replaced (never mutated) when a column is added.
    schema: arc_swap::ArcSwap<Schema>,
    dir: PathBuf,
    table_id: u64,
    /// Its WAL is kept until uploaded (replication on, designated timestamp).
    replicated: bool,
    /// Last txn uploaded to the object store (replicated tables).
    uploaded_txn: AtomicU64,
    /// Txns whose WAL write failed (the applier skips them); replication
    /// ships them as empty txns so replicas stay at the primary's numbers.
    aborted: Mutex<std::collections::BTreeSet<u64>>,
    /// Every txn up to `.0` is durable in the WAL or aborted; `.1` holds the
    /// ranges resolved ahead of it (shards finish groups out of order).
    written: Mutex<(u64, std::collections::BTreeMap<u64, u64>)>,
    /// The table's sequencer: next txn to hand out.
    next_txn: AtomicU64,
    /// The commit time of the last txn handed out (µs): commit times never
    /// go back within a table, so a point in time is a prefix of its txns.
    last_commit_us: Mutex<i64>,
    /// Last checkpointed txn: WAL records up to it are no longer needed.
    durable_txn: AtomicU64,
    status: Mutex<ApplyStatus>,
    changed: Condvar,
    /// Set when apply or checkpoint failed: commits are refused (read without a lock).
    failed: std::sync::atomic::AtomicBool,
    /// Set (with `failed`) by DROP TABLE.
    dropped: std::sync::atomic::AtomicBool,
    /// Whether the uploader follows the table (it works on the table's WAL
    /// directory by path, so DROP TABLE waits for it to let go).
    upload_attached: Mutex<bool>,
    upload_changed: Condvar,
    /// The uploader's wake: notified when the written txn advances.
    upload_wake: Arc<tokio::sync::Notify>,
    /// Why the database refuses writes (shared with it): the shards check
    /// it too, so a commit prepared before the refusal is refused there.
    refusal: Refusal,
    /// Wakes requests waiting for their txns to be in the store
    /// (`--ack-after upload`): notified when the stored txn advances, and
    /// when the node is fenced.
    uploaded_changed: tokio::sync::Notify,
    /// Every txn up to this one is in the object store: set as soon as a
    /// PUT lands (`uploaded_txn` follows once the upload mark is written).
    stored_txn: AtomicU64,
    /// The uploader stopped uploading this table for good (an operator
    /// must act): what waits for its uploads gives up.
    upload_stopped: AtomicBool,
}

impl TableHandle {
    fn new(
        name: &str,
        schema: Schema,
        writer: &TableWriter,
        resolved: u64,
        opts: &DbOptions,
        upload_wake: Arc<tokio::sync::Notify>,
        refusal: Refusal,
    ) -> TableHandle {
        let replicated = opts.retain_wal_for_upload && schema.timestamp.is_some();
        let dir = writer.dir().to_path_buf();
        let uploaded = if replicated {
            valid_mark(&dir.join(WAL_DIR), opts).unwrap_or(0)
        } else {
            0
        };
        TableHandle {
            name: name.to_string(),
            schema: arc_swap::ArcSwap::from_pointee(schema),
            dir,
            table_id: writer.table_id(),
            replicated,
            uploaded_txn: AtomicU64::new(uploaded),
            aborted: Mutex::new(Default::default()),
            written: Mutex::new((resolved, Default::default())),
            next_txn: AtomicU64::new(resolved + 1),
            last_commit_us: Mutex::new(i64::MIN),
            durable_txn: AtomicU64::new(resolved),
            status: Mutex::new(ApplyStatus {
                resolved,
                failed: None,
            }),
            changed: Condvar::new(),
            failed: std::sync::atomic::AtomicBool::new(false),
            dropped: std::sync::atomic::AtomicBool::new(false),
            upload_attached: Mutex::new(false),
            upload_changed: Condvar::new(),
            upload_wake,
            uploaded_changed: tokio::sync::Notify::new(),
            stored_txn: AtomicU64::new(uploaded),
            upload_stopped: AtomicBool::new(false),
            refusal,
        }
    }

    /// The table's current schema (batches built for an earlier version still commit).
    pub fn schema(&self) -> Arc<Schema> {
        self.schema.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ApplyStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every txn up to this one is applied (or was aborted and never acknowledged).
    pub fn resolved_txn(&self) -> u64 {
        self.lock().resolved
    }

    fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Every txn up to `txn` is applied. The watermarks stay ordered:
    /// allocated ≥ written ≥ applied, and applied never goes back.
    fn set_resolved(&self, txn: u64) {
        let written = self.written_txn();
        let mut s = self.lock();
        assert!(
            txn >= s.resolved && txn <= written,
            "table {}: applied txn {txn} after {} with {written} written",
            self.name,
            s.resolved
        );
        s.resolved = txn;
        drop(s);
        self.changed.notify_all();
    }

    /// The table's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The table's id (segments carry it; replicas keep it).
    pub fn table_id(&self) -> u64 {
        self.table_id
    }

    /// Whether its WAL is kept for upload (replication on and the table has
    /// a designated timestamp; local-only tables never replicate).
    pub fn is_replicated(&self) -> bool {
        self.replicated
    }

    /// Hands out `n` txns and their commit time: txn numbers and commit
    /// times grow together (a later txn is never committed earlier, even if
    /// the clock steps back), which is what restoring to a point in time
    /// relies on (docs/backup.md).
    pub(crate) fn sequence(&self, n: u64) -> (u64, i64) {
        let mut last = self
            .last_commit_us
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let first = self.next_txn.fetch_add(n, Ordering::SeqCst);
        let t = disk::now_us(&self.dir).max(*last);
        *last = t;
        (first, t)
    }

    /// Commit times from now on are at least `us` (the newest commit time
    /// in the store when this node starts or becomes the primary: commit
    /// times never go back across a restart or a failover either, whatever
    /// the clocks do).
    pub fn raise_commit_floor(&self, us: i64) {
        let mut last = self
            .last_commit_us
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *last = (*last).max(us);
    }

    /// The commit time of the last txn handed out in this run (µs;
    /// `i64::MIN` before the first).
    pub fn last_commit_us(&self) -> i64 {
        *self
            .last_commit_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Txns handed out so far (some may still be in flight).
    pub fn committed_txn(&self) -> u64 {
        self.next_txn.load(Ordering::Acquire).saturating_sub(1)
    }

    /// Last txn known to be in the object store.
    pub fn uploaded_txn(&self) -> u64 {
        self.uploaded_txn.load(Ordering::Acquire)
    }

    /// Every txn up to `txn` is in the object store: with the checkpoint,
    /// this bounds the WAL the shards keep.
    pub fn set_uploaded(&self, txn: u64) {
        self.uploaded_txn.fetch_max(txn, Ordering::AcqRel);
        self.lock_aborted().retain(|t| *t > txn);
        self.set_stored(txn);
    }

    /// Every txn up to `txn` is in the object store (a PUT landed; its
    /// upload mark may not be written yet): wakes requests waiting for it.
    pub fn set_stored(&self, txn: u64) {
        debug_assert!(
            txn <= self.written_txn(),
            "table {}: txn {txn} stored, only {} written",
            self.name,
            self.written_txn()
        );
        self.stored_txn.fetch_max(txn, Ordering::AcqRel);
        self.uploaded_changed.notify_waiters();
    }

    /// Waits until `txn` is in the object store; `false` when the table's
    /// upload stopped or `give_up` says so first (checked at every change
    /// of the stored txn and when [`TableHandle::wake_upload_waiters`] is
    /// called). Works on any executor.
    pub async fn wait_uploaded(&self, txn: u64, give_up: impl Fn() -> bool) -> bool {
        loop {
            // Registered before the check: a change in between still wakes it.
            let changed = self.uploaded_changed.notified();
            if self.stored_txn.load(Ordering::Acquire) >= txn {
                return true;
            }
            if self.upload_stopped.load(Ordering::Acquire) || give_up() {
                return false;
            }
            changed.await;
        }
    }

    /// The uploader stopped uploading this table for good: wakes what
    /// waits for its uploads, to give up.
    pub fn set_upload_stopped(&self) {
        self.upload_stopped.store(true, Ordering::Release);
        self.uploaded_changed.notify_waiters();
    }

    /// Wakes every [`TableHandle::wait_uploaded`] to look again.
    pub fn wake_upload_waiters(&self) {
        self.uploaded_changed.notify_waiters();
    }

    /// The WAL may be dropped up to this txn.
    pub fn wal_release_txn(&self) -> u64 {
        let durable = self.durable_txn.load(Ordering::Acquire);
        if self.replicated {
            durable.min(self.uploaded_txn())
        } else {
            durable
        }
    }

    fn lock_aborted(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<u64>> {
        self.aborted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `txn` was aborted (its WAL write failed; it holds no rows).
    pub fn is_aborted(&self, txn: u64) -> bool {
        self.lock_aborted().contains(&txn)
    }

    /// Records that `txn` was aborted; for a replicated table durably too
    /// (`_wal/_aborted`), so recovery never replays it: replicas get it
    /// empty. If that record cannot be written the table refuses commits.
    /// Returns false when the durable record failed: the txn must then
    /// not count as resolved (nothing may ship it).
    fn note_aborted(&self, txn: u64) -> bool {
        if !self.replicated {
            return true;
        }
        // Under the set's lock: one writer of `_aborted` at a time.
        let mut set = self.lock_aborted();
        if let Err(e) = wal::retention::record_aborted(&self.dir.join(WAL_DIR), txn) {
            warn!(table = %self.name, txn, error = %e, "cannot record an aborted txn; the table refuses commits until reopened");
            drop(set);
            self.set_failed(format!("recording aborted txn {txn}: {e}"));
            return false;
        }
        set.insert(txn);
        true
    }

    /// Drops `_wal/_aborted` once nothing in it is above `txn` (under the
    /// same lock as its writers).
    pub(crate) fn clear_aborted_upto(&self, txn: u64) {
        let _set = self.lock_aborted();
        wal::retention::clear_aborted_upto(&self.dir.join(WAL_DIR), txn);
    }

    /// Txns `first..=last` are durable in the WAL (or aborted).
    fn mark_written(&self, first: u64, last: u64) {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        w.1.insert(first, last);
        while let Some((&f, &l)) = w.1.first_key_value() {
            if f > w.0 + 1 {
                break;
            }
            w.0 = w.0.max(l);
            w.1.remove(&f);
        }
        drop(w);
        if self.replicated {
            // One atomic operation when the uploader is already awake.
            self.upload_wake.notify_one();
        }
    }

    /// What wakes the uploader (it sleeps until a table has work).
    pub fn upload_wake(&self) -> Arc<tokio::sync::Notify> {
        self.upload_wake.clone()
    }

    /// Every txn up to this one is durable in the WAL or aborted (ahead of
    /// [`TableHandle::resolved_txn`], which waits for apply): what the
    /// uploader may ship.
    pub fn written_txn(&self) -> u64 {
        self.written.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Txns up to `txn` are durable in the table files: their WAL may go.
    fn set_durable(&self, txn: u64) {
        let prev = self.durable_txn.swap(txn, Ordering::AcqRel);
        assert!(
            txn >= prev && txn <= self.resolved_txn(),
            "table {}: checkpoint txn {txn} after {prev}, with {} applied",
            self.name,
            self.resolved_txn()
        );
    }

    /// The last checkpointed txn: durable in the table files, not only the WAL.
    pub fn checkpoint_txn(&self) -> u64 {
        self.durable_txn.load(Ordering::Acquire)
    }

    fn set_schema(&self, schema: Schema) {
        self.schema.store(Arc::new(schema));
    }

    /// Why commits to the table are refused, if they are.
    pub(crate) fn refusal(&self) -> Option<DbError> {
        if !self.failed.load(Ordering::Acquire) {
            return self
                .refusal
                .load()
                .as_ref()
                .map(|why| DbError::NotPrimary(why.to_string()));
        }
        Some(if self.dropped.load(Ordering::Acquire) {
            DbError::Dropped {
                table: self.name.clone(),
            }
        } else {
            DbError::TableFailed {
                table: self.name.clone(),
                reason: self.failure().unwrap_or_default(),
            }
        })
    }

    /// The uploader starts following the table; false (and it must not)
    /// once the table is dropped.
    pub fn upload_attach(&self) -> bool {
        let mut g = self
            .upload_attached
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *g = !self.is_dropped();
        *g
    }

    /// The uploader no longer touches the table (it was dropped).
    pub fn upload_detach(&self) {
        *self
            .upload_attached
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = false;
        self.upload_changed.notify_all();
    }

    /// Waits until the uploader lets go of the table; false on timeout.
    fn wait_upload_detached(&self, timeout: Duration) -> bool {
        let g = self
            .upload_attached
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (g, _) = self
            .upload_changed
            .wait_timeout_while(g, timeout, |attached| *attached)
            .unwrap_or_else(|p| p.into_inner());
        !*g
    }

    /// Whether DROP TABLE removed it.
    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    fn set_failed(&self, why: String) {
        self.failed.store(true, Ordering::Release);
        self.lock().failed = Some(why);
        self.changed.notify_all();
    }

    /// Blocks until `txn` is applied and visible to readers.
    pub fn wait_applied(&self, txn: u64, timeout: Duration) -> Result<(), DbError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(reason) = &s.failed {
                return Err(DbError::ApplyFailed {
                    table: self.name.clone(),
                    reason: reason.clone(),
                });
            }
            if s.resolved >= txn {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DbError::Timeout(timeout));
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Wall-clock time in µs since the Unix epoch (commit times, lag).
pub fn now_us() -> i64 {
    disk::system_now_us()
}

/// The database's tables by name, shared.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    tables: Arc<Mutex<HashMap<String, Arc<TableHandle>>>>,
    /// Wakes the uploader: a table was created, or one's written txn advanced.
    upload_wake: Arc<tokio::sync::Notify>,
    /// Why writes are refused now (`None`: admitted): checked by every
    /// commit and table creation before anything is written, and by the
    /// shards before they write a commit.
    refusal: Refusal,
}

/// A shared reason to refuse writes (`None`: admitted).
type Refusal = Arc<arc_swap::ArcSwapOption<String>>;

impl Catalog {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TableHandle>>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What wakes the uploader (shards writing, tables created).
    pub fn upload_wake(&self) -> Arc<tokio::sync::Notify> {
        self.upload_wake.clone()
    }

    /// Every table, sorted by name.
    pub fn handles(&self) -> Vec<Arc<TableHandle>> {
        let mut v: Vec<Arc<TableHandle>> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// A validated, encoded commit not yet sent to its shard.
pub struct PreparedCommit {
    shard: usize,
    msg: ShardMsg,
    ticket: CommitTicket,
}

/// A commit in flight; `wait` for its txn once it is durable.
pub struct CommitTicket(flume::Receiver<Result<u64, DbError>>);

impl CommitTicket {
    pub fn wait(self) -> Result<u64, DbError> {
        self.0.recv().unwrap_or(Err(DbError::Closed))
    }
    pub async fn wait_async(self) -> Result<u64, DbError> {
        self.ready().await
    }
    /// [`CommitTicket::wait_async`] without giving up the ticket: dropping
    /// the wait loses nothing, so it can race other events.
    pub async fn ready(&self) -> Result<u64, DbError> {
        self.0.recv_async().await.unwrap_or(Err(DbError::Closed))
    }
}

/// What recovery did to one table when the database was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub table: String,
    /// Committed txns found in the WAL and applied into the table files.
    pub replayed_txns: u64,
    /// Bytes of torn (never acknowledged) WAL tails that were cut.
    pub torn_bytes_cut: u64,
    /// WAL files read (and removed once applied).
    pub wal_files: u64,
    /// Every txn up to this one is applied or was aborted: the sequencer
    /// continues after it.
    pub resolved_txn: u64,
    /// Txn numbers above the upload mark that no WAL file holds: handed out
    /// to a group that was in flight at a crash (never written, never
    /// acknowledged) while later txns of another shard were. Replication
    /// ships them as empty txns. Only computed with replication on.
    pub never_written: Vec<u64>,
}

pub struct Database {
    opts: DbOptions,
    /// A replica's node: tables belong to replication. Starts as
    /// `opts.read_only`; a role switch flips it.
    read_only: AtomicBool,
    /// Superseded by a newer primary: committed txns not yet in the store
    /// never will be (from this node).
    fenced: AtomicBool,
    /// Exclusive lock on `<data-dir>/.lock`, held while the database is open.
    /// (None on a simulated disk, where one process owns the disk.) Shared
    /// with [`DirLock`]s, which keep it past [`Database::close`].
    lock: DirLock,
    recovery: Vec<RecoveryReport>,
    engine: Resolved,
    tables: Catalog,
    shards: Vec<flume::Sender<ShardMsg>>,
    shard_stats: Vec<Arc<ShardStats>>,
    threads: Vec<JoinHandle<()>>,
    applier_tx: Option<flume::Sender<ApplyMsg>>,
    applier: Option<JoinHandle<()>>,
}

/// Sends the message `make` builds around a reply channel and waits for the
/// reply (none when the receiver is gone: it has nothing left to do).
fn barrier<M>(to: &flume::Sender<M>, make: impl FnOnce(flume::Sender<()>) -> M) {
    let (done, wait) = flume::bounded(1);
    if to.send(make(done)).is_ok() {
        let _ = wait.recv();
    }
}

/// How long DROP TABLE waits for the uploader to let go of the table.
const DROP_UPLOAD_WAIT: Duration = Duration::from_secs(10);

static NEXT_HOME_SHARD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static HOME_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

impl Database {
    /// Opens (or creates) the database in `opts.data_dir`, recovering every
    /// table: torn WAL tails are cut and committed txns re-applied.
    pub fn open(opts: DbOptions) -> Result<Database, DbError> {
        let engine = if disk::is_simulated(&opts.data_dir)
            && !matches!(opts.engine, EngineChoice::Portable | EngineChoice::Fault(_))
        {
            // io_uring engines write real files; the portable engine writes
            // through the disk seam.
            Resolved {
                choice: EngineChoice::Portable,
                reason: "the data directory is on a simulated disk".into(),
            }
        } else {
            io::resolve(&opts.engine)?
        };
        info!(engine = %engine.choice, reason = %engine.reason, "I/O engine");
        disk::create_dir_all_durable(&opts.data_dir).map_err(TableError::io(&opts.data_dir))?;
        let lock = DirLock {
            _file: if disk::is_simulated(&opts.data_dir) {
                None
            } else {
                Some(Arc::new(lock_data_dir(&opts.data_dir)?))
            },
        };
        let (applier_tx, applier_rx) = flume::bounded(opts.apply_queue_max.max(1));
        // The applier runs before tables are handed to it, so a bounded
        // queue can never block open.
        let limits = applier::ApplierLimits {
            rows_max: opts.apply_rows_max,
            apply_interval: opts.apply_interval,
            checkpoint_interval: opts.checkpoint_interval,
            checkpoint_rows_max: opts.checkpoint_rows_max,
        };
        let applier = std::thread::Builder::new()
            .name("basalt-applier".into())
            .spawn(move || applier::run(applier_rx, limits))
            .map_err(|e| TableError::io(&opts.data_dir)(e))?;
        let mut tables = HashMap::new();
        let upload_wake = Arc::new(tokio::sync::Notify::new());
        let refusal = Refusal::default();
        let mut recovery = Vec::new();
        let recovered = if opts.read_only {
            Vec::new()
        } else {
            recover_all(&opts)?
        };
        for (writer, report) in recovered {
            let name = report.table.clone();
            let report_holes = report.never_written.clone();
            let resolved = report.resolved_txn;
            recovery.push(report);
            let handle = Arc::new(TableHandle::new(
                &name,
                writer.schema().clone(),
                &writer,
                resolved,
                &opts,
                upload_wake.clone(),
                refusal.clone(),
            ));
            applier_tx
                .send(ApplyMsg::AddTable {
                    handle: handle.clone(),
                    writer: Box::new(writer),
                })
                .map_err(|_| DbError::Closed)?;
            for txn in &report_holes {
                if !handle.note_aborted(*txn) {
                    break;
                }
            }
            tables.insert(name, handle);
        }
        let shard_count = if opts.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.shards
        };
        let mut db = Database {
            read_only: AtomicBool::new(opts.read_only),
            fenced: AtomicBool::new(false),
            opts,
            lock,
            recovery,
            engine,
            tables: Catalog {
                tables: Arc::new(Mutex::new(tables)),
                upload_wake,
                refusal,
            },
            shards: Vec::new(),
            shard_stats: Vec::new(),
            threads: Vec::new(),
            applier_tx: Some(applier_tx),
            applier: Some(applier),
        };
        for k in 0..shard_count {
            db.start_shard(k)?;
        }
        info!(shards = shard_count, data_dir = %db.opts.data_dir.display(), "database open");
        Ok(db)
    }

    fn start_shard(&mut self, k: usize) -> Result<(), DbError> {
        let (tx, rx) = flume::bounded(self.opts.shard_queue_max);
        let (ready_tx, ready_rx) = flume::bounded::<Result<(), String>>(1);
        let applier = self.applier_tx.clone().ok_or(DbError::Closed)?;
        let limits = ShardLimits {
            group_bytes_max: self.opts.group_commit_bytes_max,
            wal_file_bytes_max: self.opts.wal_file_bytes_max,
        };
        let core = self.opts.pin_shards.then_some(k);
        let stats = Arc::new(ShardStats::default());
        self.shard_stats.push(stats.clone());
        let choice = self.engine.choice.clone();
        let ctx = ShardContext {
            shard: k as u32,
            rx,
            applier,
            limits,
            stats,
        };
        let thread = std::thread::Builder::new()
            .name(format!("basalt-shard-{k}"))
            .spawn(move || {
                // Commits made on this shard (by its connections) go to its own WAL.
                HOME_SHARD.with(|h| h.set(Some(k)));
                let ready = ready_tx.clone();
                let r = match choice {
                    EngineChoice::Glommio | EngineChoice::Auto => {
                        run_shard(GlommioEngine, core, ctx, ready)
                    }
                    EngineChoice::TokioUring => run_shard(TokioUringEngine, core, ctx, ready),
                    EngineChoice::Portable => run_shard(PortableEngine, core, ctx, ready),
                    EngineChoice::Fault(plan) => run_shard(FaultEngine { plan }, core, ctx, ready),
                };
                if let Err(e) = r {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            })
            .map_err(|e| DbError::ShardStart {
                shard: k,
                why: e.to_string(),
            })?;
        self.threads.push(thread);
        match ready_rx.recv() {
            Ok(Ok(())) => {
                self.shards.push(tx);
                Ok(())
            }
            Ok(Err(why)) => Err(DbError::ShardStart { shard: k, why }),
            Err(_) => Err(DbError::ShardStart {
                shard: k,
                why: "shard thread exited while starting".into(),
            }),
        }
    }

    /// What recovery did at open, one entry per table.
    pub fn recovery(&self) -> &[RecoveryReport] {
        &self.recovery
    }

    /// The I/O engine in use and why it was picked.
    pub fn engine(&self) -> &Resolved {
        &self.engine
    }

    /// WAL totals over all shards: (group writes = fdatasyncs, commits, bytes).
    pub fn wal_totals(&self) -> (u64, u64, u64) {
        self.shard_stats.iter().fold((0, 0, 0), |(g, c, b), s| {
            (
                g + s.groups.load(Ordering::Relaxed),
                c + s.commits.load(Ordering::Relaxed),
                b + s.bytes.load(Ordering::Relaxed),
            )
        })
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn data_dir(&self) -> &Path {
        &self.opts.data_dir
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TableHandle>>> {
        self.tables.lock()
    }

    /// The tables, shareable with threads that outlive a borrow of the
    /// database (the uploader).
    pub fn catalog(&self) -> Catalog {
        self.tables.clone()
    }

    /// Whether the node is a read-only replica.
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// Refuses every new commit and table creation with `why` (HTTP 421)
    /// until [`Database::admit_writes`]. Commits already prepared finish.
    pub fn refuse_writes(&self, why: impl Into<String>) {
        self.tables.refusal.store(Some(Arc::new(why.into())));
    }

    /// Admits writes again (see [`Database::refuse_writes`]), unless the
    /// node was fenced: that lasts until it lets go of its tables
    /// ([`Database::become_replica`]).
    pub fn admit_writes(&self) {
        if !self.is_fenced() {
            self.tables.refusal.store(None);
        }
    }

    /// Refuses writes for good (a newer primary superseded this node) and
    /// wakes requests waiting for uploads that will not happen.
    pub fn fence(&self, why: impl Into<String>) {
        let why = why.into();
        self.refuse_writes(why.clone());
        self.fenced.store(true, Ordering::Release);
        for h in self.tables.handles() {
            h.wake_upload_waiters();
        }
    }

    /// Whether [`Database::fence`] was called (and writes not admitted since).
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Why writes are refused now, if they are.
    pub fn write_refusal(&self) -> Option<DbError> {
        if self.is_read_only() {
            return Some(DbError::ReadOnly);
        }
        self.tables
            .refusal
            .load()
            .as_ref()
            .map(|why| DbError::NotPrimary(why.to_string()))
    }

    /// Turns a replica's database into a primary's: every local table is
    /// opened and recovered as at start-up (its WAL replayed, upload mark
    /// read) and handed to the applier. Writes stay refused with `why`
    /// until [`Database::admit_writes`]: the caller starts uploading first.
    pub fn become_primary(&self, why: &str) -> Result<Vec<RecoveryReport>, DbError> {
        self.refuse_writes(why);
        let applier = self.applier_tx.as_ref().ok_or(DbError::Closed)?;
        let mut tables = self.tables();
        if !tables.is_empty() {
            return Err(DbError::NotPrimary(
                "the node already holds open tables; it is not a replica".into(),
            ));
        }
        let mut reports = Vec::new();
        for (writer, report) in recover_all(&self.opts)? {
            let handle = Arc::new(TableHandle::new(
                &report.table,
                writer.schema().clone(),
                &writer,
                report.resolved_txn,
                &self.opts,
                self.tables.upload_wake(),
                self.tables.refusal.clone(),
            ));
            applier
                .send(ApplyMsg::AddTable {
                    handle: handle.clone(),
                    writer: Box::new(writer),
                })
                .map_err(|_| DbError::Closed)?;
            for txn in &report.never_written {
                if !handle.note_aborted(*txn) {
                    break;
                }
            }
            tables.insert(report.table.clone(), handle);
            reports.push(report);
        }
        self.read_only.store(false, Ordering::Release);
        drop(tables);
        self.tables.upload_wake.notify_one();
        Ok(reports)
    }

    /// Refuses new writes with `why` and waits until every commit already
    /// queued on a shard is written (acknowledged or failed): afterwards no
    /// table's written txn moves. The first step of a switch to replica.
    pub fn drain_commits(&self, why: &str) {
        // Commits prepared before the refusal but not yet on a shard are
        // refused there too (the shards read the same refusal): nothing
        // slips past the barrier.
        self.refuse_writes(why);
        let handles: Vec<Arc<TableHandle>> = self.tables().values().cloned().collect();
        for h in &handles {
            for shard in &self.shards {
                // Commits queued before this message are written first;
                // the table's WAL files are closed.
                barrier(shard, |done| ShardMsg::Forget {
                    table: h.clone(),
                    done,
                });
            }
        }
    }

    /// Turns a drained primary's database (see [`Database::drain_commits`])
    /// into a replica's: every table applied and checkpointed, then let go
    /// (its writer closed), so that replication can open the tables. The
    /// caller has stopped the uploader.
    pub fn become_replica(&self, timeout: Duration) -> Result<(), DbError> {
        let handles: Vec<Arc<TableHandle>> = self.tables().values().cloned().collect();
        for h in &handles {
            h.wait_applied(h.written_txn(), timeout)?;
        }
        for h in &handles {
            if let Some(applier) = &self.applier_tx {
                barrier(applier, |done| ApplyMsg::Release {
                    table: h.clone(),
                    done,
                });
            }
            if let Some(reason) = h.failure() {
                return Err(DbError::ApplyFailed {
                    table: h.name.clone(),
                    reason,
                });
            }
            if !h.wait_upload_detached(DROP_UPLOAD_WAIT) {
                warn!(table = %h.name, "the uploader did not let go of the table");
            }
            // Applied, checkpointed and (replicated) uploaded: the WAL is
            // history. Gone, so that a later promotion replays nothing
            // stale from it.
            if h.refusal().is_none() {
                let wal = h.dir().join(WAL_DIR);
                if let Err(e) = disk::remove_dir_all(&wal) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        warn!(table = %h.name, error = %e, "cannot remove the WAL of a released table");
                    }
                }
            }
        }
        self.tables().clear();
        self.read_only.store(true, Ordering::Release);
        // A replica takes no writes whatever: the fence has done its work.
        self.fenced.store(false, Ordering::Release);
        self.tables.refusal.store(None);
        Ok(())
    }

    /// Creates a table. Tables without a designated timestamp are local-only.
    pub fn create_table(&self, name: &str, schema: &Schema) -> Result<Arc<TableHandle>, DbError> {
        if let Some(e) = self.write_refusal() {
            return Err(e);
        }
        let mut tables = self.tables();
        // Names are case-insensitive (as in QuestDB): `weather` is the
        // table `Weather` if that exists.
        if let Some(existing) = tables.keys().find(|k| k.eq_ignore_ascii_case(name)) {
            return Err(TableError::AlreadyExists(existing.clone()).into());
        }
        let writer = TableWriter::create(&self.opts.data_dir, name, schema)?;
        let handle = Arc::new(TableHandle::new(
            name,
            schema.clone(),
            &writer,
            0,
            &self.opts,
            self.tables.upload_wake(),
            self.tables.refusal.clone(),
        ));
        self.applier_tx
            .as_ref()
            .ok_or(DbError::Closed)?
            .send(ApplyMsg::AddTable {
                handle: handle.clone(),
                writer: Box::new(writer),
            })
            .map_err(|_| DbError::Closed)?;
        tables.insert(name.to_string(), handle.clone());
        drop(tables);
        self.tables.upload_wake.notify_one();
        Ok(handle)
    }

    /// Drops a table: commits to it are refused from now on, commits
    /// already queued finish, and then its directory is removed (renamed to
    /// `.dropped-<name>-<id>` first, so a crash midway leaves no half
    /// table; open removes leftovers). Its history in an object store stays.
    pub fn drop_table(&self, name: &str) -> Result<(), DbError> {
        if let Some(e) = self.write_refusal() {
            return Err(e);
        }
        let handle = {
            let mut tables = self.tables();
            let h = tables
                .remove(name)
                .ok_or_else(|| TableError::NotFound(name.to_string()))?;
            h.dropped.store(true, Ordering::Release);
            h.set_failed("the table was dropped".into());
            // The uploader lets go of a dropped table when it next looks.
            h.upload_wake.notify_one();
            h
        };
        // Every shard writes what it holds for the table, then closes its
        // WAL; then the applier drops its writer.
        for shard in &self.shards {
            barrier(shard, |done| ShardMsg::Forget {
                table: handle.clone(),
                done,
            });
        }
        if let Some(applier) = &self.applier_tx {
            barrier(applier, |done| ApplyMsg::DropTable {
                table: handle.clone(),
                done,
            });
        }
        // The uploader works on the WAL directory by path: it must let go
        // before the path can be taken by a new table of the same name.
        if !handle.wait_upload_detached(DROP_UPLOAD_WAIT) {
            warn!(
                table = name,
                "the uploader did not let go of the table within {DROP_UPLOAD_WAIT:?}; dropping anyway"
            );
        }
        let dir = handle.dir().to_path_buf();
        let grave =
            self.opts
                .data_dir
                .join(format!(".dropped-{}-{:016x}", name, handle.table_id()));
        disk::rename(&dir, &grave).map_err(TableError::io(&dir))?;
        crate::table::files::fsync_dir(&self.opts.data_dir)?;
        disk::remove_dir_all(&grave).map_err(TableError::io(&grave))?;
        info!(table = name, "table dropped");
        Ok(())
    }

    pub fn table(&self, name: &str) -> Option<Arc<TableHandle>> {
        self.tables().get(name).cloned()
    }

    /// The table `name` names ignoring ASCII case (names are
    /// case-insensitive, as in QuestDB; the stored case is kept): itself,
    /// else the one table equal to it ignoring case.
    pub fn table_ignoring_case(&self, name: &str) -> Option<Arc<TableHandle>> {
        let tables = self.tables();
        if let Some(t) = tables.get(name) {
            return Some(t.clone());
        }
        let mut found = tables
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, t)| t);
        match (found.next(), found.next()) {
            (Some(t), None) => Some(t.clone()),
            _ => None,
        }
    }

    pub fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tables().keys().cloned().collect();
        names.sort();
        names
    }

    /// Sends a commit to this thread's shard; the ticket resolves once durable.
    /// Blocks while that shard's queue is full: do not call it on a shard
    /// thread (use [`Database::submit_async`] there).
    pub fn submit(&self, table: &Arc<TableHandle>, batch: Batch) -> Result<CommitTicket, DbError> {
        self.submit_prepared(self.prepare(table, batch)?)
    }

    /// [`Database::submit`] for tasks on a shard: waits for queue space
    /// without blocking the shard's executor. On a shard thread the commit
    /// goes to that shard's own WAL.
    pub async fn submit_async(
        &self,
        table: &Arc<TableHandle>,
        batch: Batch,
    ) -> Result<CommitTicket, DbError> {
        self.submit_prepared_async(self.prepare(table, batch)?)
            .await
    }

    /// Runs the task made by `make` on shard `shard`'s executor (modulo the
    /// shard count), next to its commit loop. The task ends at the latest
    /// when the database is closed.
    pub fn spawn_on_shard(&self, shard: usize, make: SpawnFn) -> Result<(), DbError> {
        let tx = self.shards.get(shard % self.shards.len().max(1));
        tx.ok_or(DbError::Closed)?
            .send(ShardMsg::Spawn(make))
            .map_err(|_| DbError::Closed)
    }

    /// Sends a prepared commit (see [`Database::submit_async`]).
    pub async fn submit_prepared_async(&self, p: PreparedCommit) -> Result<CommitTicket, DbError> {
        let tx = self.shards.get(p.shard).ok_or(DbError::Closed)?;
        tx.send_async(p.msg).await.map_err(|_| DbError::Closed)?;
        Ok(p.ticket)
    }

    /// Sends a prepared commit (see [`Database::submit`]).
    pub fn submit_prepared(&self, p: PreparedCommit) -> Result<CommitTicket, DbError> {
        let tx = self.shards.get(p.shard).ok_or(DbError::Closed)?;
        tx.send(p.msg).map_err(|_| DbError::Closed)?;
        Ok(p.ticket)
    }

    /// Validates and encodes a commit without sending it: a request that
    /// commits to several tables prepares all of them first, so a bad batch
    /// refuses the whole request before anything is committed.
    pub fn prepare(
        &self,
        table: &Arc<TableHandle>,
        batch: Batch,
    ) -> Result<PreparedCommit, DbError> {
        if let Some(e) = self.write_refusal().or_else(|| table.refusal()) {
            return Err(e);
        }
        let schema = table.schema.load();
        batch.validate(&schema)?;
        // The version that added the batch's last column is the one it was built for.
        let schema_version = schema.columns[batch.columns.len() - 1]
            .added_in
            .min(u32::from(u16::MAX)) as u16;
        let mut payload = Vec::new();
        codec::encode(&batch, &mut payload);
        let limit = crate::wal::format::RECORD_PAYLOAD_BYTES_MAX as usize;
        if payload.len() > limit {
            return Err(BatchError::TooLarge {
                bytes: payload.len(),
                limit,
            }
            .into());
        }
        let (ack, rx) = flume::bounded(1);
        let shard = HOME_SHARD.with(|h| {
            h.get().unwrap_or_else(|| {
                let k = NEXT_HOME_SHARD.fetch_add(1, Ordering::Relaxed);
                h.set(Some(k));
                k
            })
        }) % self.shards.len().max(1);
        let msg = ShardMsg::Commit(CommitRequest {
            table: table.clone(),
            schema_version,
            payload,
            batch,
            ack,
        });
        Ok(PreparedCommit {
            shard,
            msg,
            ticket: CommitTicket(rx),
        })
    }

    /// Adds a column to `table` as its next schema version, durably. Rows
    /// already committed read as null in it; batches built for the previous
    /// schema still commit (the new column is null in their rows).
    pub fn add_column(
        &self,
        table: &Arc<TableHandle>,
        name: &str,
        ty: ColumnType,
    ) -> Result<Arc<Schema>, DbError> {
        let (ack, done) = flume::bounded(1);
        self.applier_tx
            .as_ref()
            .ok_or(DbError::Closed)?
            .send(ApplyMsg::AddColumn {
                table: table.clone(),
                name: name.to_string(),
                ty,
                ack,
            })
            .map_err(|_| DbError::Closed)?;
        let schema = done.recv().map_err(|_| DbError::Closed)??;
        Ok(schema)
    }

    /// Commits `batch` as one txn; returns once it is durable (not yet applied).
    pub fn commit(&self, table: &Arc<TableHandle>, batch: Batch) -> Result<u64, DbError> {
        self.submit(table, batch)?.wait()
    }

    /// A reader of `name`'s committed data.
    pub fn reader(&self, name: &str) -> Result<TableReader, DbError> {
        Ok(TableReader::open(&self.opts.data_dir, name)?)
    }

    /// Scans `columns` (all when empty) of `name` over `ts_range`.
    pub fn scan(
        &self,
        name: &str,
        columns: &[&str],
        ts_range: Option<std::ops::Range<i64>>,
    ) -> Result<ScanResult, DbError> {
        Ok(self.reader(name)?.scan(columns, ts_range)?)
    }

    /// Returns once the applier has done everything asked of it before the
    /// call: the applies and checkpoints that committed txns caused. Tools
    /// and the simulation use it to keep the applier's writes from
    /// interleaving with the next commit's.
    pub fn applier_barrier(&self) {
        if let Some(a) = &self.applier_tx {
            barrier(a, |done| ApplyMsg::Barrier { done });
        }
    }

    /// The data directory's lock, held until every clone is dropped too. A
    /// node whose replication threads outlive the database (a replica's
    /// follower applies and checkpoints until it is joined) keeps one, so
    /// no other process opens the directory in between: a second opener's
    /// recovery would remove partition versions the follower still writes.
    pub fn dir_lock(&self) -> DirLock {
        self.lock.clone()
    }

    /// Stops shards and the applier after everything queued is applied.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for s in &self.shards {
            let _ = s.send(ShardMsg::Stop);
        }
        self.shards.clear();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // The last reference may be dropped by a task on a shard thread
            // (a request in flight at shutdown): that thread ends by itself
            // once its loop sees Stop; joining it from itself would deadlock.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        self.applier_tx = None;
        if let Some(a) = self.applier.take() {
            let _ = a.join();
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run_shard<E: Engine>(
    engine: E,
    core: Option<usize>,
    ctx: ShardContext,
    ready: flume::Sender<Result<(), String>>,
) -> std::io::Result<()> {
    let e2 = engine.clone();
    engine.run(core, move || async move {
        let _ = ready.send(Ok(()));
        shard::run(e2, ctx).await
    })
}

/// A hold on `<data-dir>/.lock` (see [`Database::dir_lock`]).
#[derive(Clone, Debug)]
pub struct DirLock {
    /// Held for its descriptor: the lock goes with the last clone.
    _file: Option<Arc<fs::File>>,
}

/// Takes `<data-dir>/.lock` exclusively: two processes writing one data
/// directory would both run recovery and hand out the same txns.
fn lock_data_dir(dir: &Path) -> Result<fs::File, DbError> {
    let path = dir.join(".lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(TableError::io(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(DbError::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(TableError::io(&path)(e).into()),
    }
}

/// Opens every table under the data dir and replays its WAL.
fn recover_all(opts: &DbOptions) -> Result<Vec<(TableWriter, RecoveryReport)>, DbError> {
    let mut out = Vec::new();
    let dir = &opts.data_dir;
    let entries = disk::read_dir(dir).map_err(TableError::io(dir))?;
    let mut names = Vec::new();
    for e in entries {
        let name = e.name;
        let path = dir.join(&name);
        if name.starts_with(".create-") || name.starts_with(".dropped-") {
            // A table creation that did not finish (nothing was committed to
            // it), or a dropped table not yet removed.
            disk::remove_dir_all(&path).map_err(TableError::io(&path))?;
            continue;
        }
        if disk::is_file(&path.join(crate::table::files::META_FILE)) {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        out.push(recover_table(opts, &name)?);
    }
    Ok(out)
}

fn recover_table(opts: &DbOptions, name: &str) -> Result<(TableWriter, RecoveryReport), DbError> {
    let mut writer = TableWriter::open(&opts.data_dir, name)?;
    let wal_dir = writer.dir().join(WAL_DIR);
    let committed = writer.state().txn;
    let recovered = wal::recover_table_wal(&wal_dir, committed)?;
    // Txns whose commit failed on a replicated table are never replayed
    // (replicas got them empty).
    let aborted: std::collections::BTreeSet<u64> = wal::retention::read_aborted(&wal_dir)
        .map_err(|why| TableError::Corrupt {
            file: wal_dir.join(wal::retention::ABORTED_FILE),
            why: format!(
                "{why}: the txns it lists must not be replayed (replicas got them empty); \
                 restore the file or rebuild this node from the object store"
            ),
        })?
        .into_iter()
        .collect();
    let schema = writer.schema().clone();
    let mut chunk: Vec<(u64, Batch)> = Vec::new();
    let mut rows = 0;
    let mut applied = 0u64;
    for r in &recovered.records {
        if aborted.contains(&r.header.txn) {
            continue;
        }
        let batch =
            codec::decode(recovered.payload(r), &schema).map_err(|source| WalError::Payload {
                path: recovered.path(r).to_path_buf(),
                txn: r.header.txn,
                source,
            })?;
        rows += batch.row_count();
        chunk.push((r.header.txn, batch));
        if rows >= opts.apply_rows_max {
            apply_chunk(&mut writer, &mut chunk)?;
            rows = 0;
        }
        applied += 1;
    }
    apply_chunk(&mut writer, &mut chunk)?;
    writer.checkpoint()?;
    // Every record is now in the table files (durably) or was at or below the
    // checkpoint: the WAL files are no longer needed.
    let max_txn = recovered.max_txn;
    let torn_bytes_cut = recovered.torn_bytes_cut;
    // With replication on, WAL not yet uploaded stays for the uploader
    // (which removes these files once it has shipped them); all of it when
    // there is no mark for this store.
    let replicated = opts.retain_wal_for_upload && schema.timestamp.is_some();
    let mark = if replicated {
        valid_mark(&wal_dir, opts)
    } else {
        None
    };
    let keep_above = match (replicated, mark) {
        (false, _) => u64::MAX,
        (true, Some(m)) => m,
        (true, None) => 0,
    };
    let wal_files = recovered.files_with_max_txn().count() as u64;
    // The WAL above the mark is all there (the mark is written before the
    // shards may drop anything it covers), so a txn number missing from it
    // was never written.
    // Only with a mark of this store: without one the WAL may have been
    // dropped before replication began, and a missing txn proves nothing.
    let never_written: Vec<u64> = match mark {
        None => Vec::new(),
        Some(m) => (m + 1..=max_txn.max(aborted.iter().copied().max().unwrap_or(0)))
            .filter(|t| recovered.all_txns.binary_search(t).is_err() || aborted.contains(t))
            .collect(),
    };
    if !never_written.is_empty() {
        info!(
            table = name,
            txns = ?never_written,
            "txn numbers handed out but never written before the crash; replication ships them empty"
        );
    }
    let paths: Vec<PathBuf> = recovered
        .files_with_max_txn()
        .filter(|(_, max)| *max <= keep_above)
        .map(|(p, _)| p.to_path_buf())
        .collect();
    drop(recovered);
    for p in &paths {
        if let Err(e) = disk::remove_file(p) {
            warn!(path = %p.display(), error = %e, "could not remove recovered WAL file");
        }
    }
    if applied > 0 || wal_files > 0 {
        info!(
            table = name,
            replayed_txns = applied,
            torn_bytes_cut,
            wal_files,
            txn = writer.state().txn,
            "recovered table from WAL"
        );
    }
    // Every record above the committed txn was just applied (or is an
    // aborted txn, skipped), so the WAL holds nothing above the resolved
    // txn: the sequencer continues from it.
    // An aborted txn's number is never handed out again (it may have no
    // record at all), or a later commit under it would be skipped here.
    let resolved_txn = writer
        .state()
        .txn
        .max(max_txn)
        .max(aborted.iter().copied().max().unwrap_or(0));
    let report = RecoveryReport {
        table: name.to_string(),
        resolved_txn,
        replayed_txns: applied,
        torn_bytes_cut,
        wal_files,
        never_written,
    };
    Ok((writer, report))
}

/// The upload mark's txn, if the mark was written for this node's store.
fn valid_mark(wal_dir: &Path, opts: &DbOptions) -> Option<u64> {
    let m = wal::retention::read_upload_mark(wal_dir);
    (m.store_id == opts.upload_store_id
        && disk::exists(&wal_dir.join(wal::retention::UPLOAD_MARK_FILE)))
    .then_some(m.txn)
}

fn apply_chunk(writer: &mut TableWriter, chunk: &mut Vec<(u64, Batch)>) -> Result<(), DbError> {
    if chunk.is_empty() {
        return Ok(());
    }
    let refs: Vec<(u64, &Batch)> = chunk.iter().map(|(t, b)| (*t, b)).collect();
    // Decoding validated every batch against the schema.
    writer.apply_validated(&refs)?;
    chunk.clear();
    Ok(())
}
