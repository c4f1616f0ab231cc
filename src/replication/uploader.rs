//! The primary's uploader: reads committed txns of every replicated table
//! from its WAL, seals them into segments by size or age, and uploads each
//! segment once, in txn order, with conditional create.
//!
//! ```text
//! shards ─ WAL files ─▶ WalTail (txn order) ─▶ SegmentWriter ── seal ──▶ PUT (If-None-Match)
//!                        up to the applied txn     bytes ≥ segment_bytes_max
//!                                                  or first commit older than segment_age_max
//! ```
//!
//! It runs on its own thread with its own tokio runtime, entirely off the
//! ingest path: it only reads WAL files and table handles' counters, so a
//! slow, failing or unreachable store never blocks a commit. It sleeps
//! until something happens: a shard advancing a table's written txn, a
//! table created, an upload finishing, or the next deadline (a segment's
//! age, a retry); an idle node costs nothing.
//!
//! Sealing copies each txn's WAL record as the shard wrote it into the
//! upload buffer (segment format 2): no decode, no re-encode. Each segment
//! names the checksum of the one before it (its link), so the chain in the
//! store is one history. The WAL is
//! the backlog: shards keep WAL files until their txns are uploaded (and
//! checkpointed), across restarts too (see `wal::retention`).
//!
//! Per table one segment is in flight at a time, so segments land in txn
//! order; at most `uploads_in_flight_max` tables upload at once. Failures
//! are retried with exponential backoff. At start-up (and after a restart)
//! the uploader asks the store where the table's chain ends, so it resumes
//! exactly there: no gap, no duplicate. A PUT that finds its key taken
//! (the previous run's upload landed but was not recorded, or a retry of a
//! PUT whose answer was lost) reads the object back: if its commit times
//! are this node's own and it links to the same previous segment, the
//! chain is adopted; otherwise another primary wrote this history and the
//! table's upload stops with an error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use rkyv::util::AlignedVec;
use tracing::{error, info, warn};

use super::{first_txn_of, segment_key, table_prefix};
use crate::db::{now_us, Catalog, TableHandle};
use crate::segment::{BufferPool, Compression, Link, Segment, SegmentWriter, FIRST_EPOCH};
use crate::store::{Store, StoreKind};
use crate::wal::{self, WalTail};

/// When segments are sealed and how uploads are paced.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// A segment is sealed once its column data reaches this size...
    pub segment_bytes_max: usize,
    /// ... or once its first txn was committed this long ago (and the
    /// uploader has caught up with the table), whichever comes first.
    pub segment_age_max: Duration,
    /// Tables uploading at once (one segment in flight per table).
    pub uploads_in_flight_max: usize,
    /// Longest wait between two tries of a failing upload (the wait starts
    /// at 50 ms and doubles).
    pub retry_backoff_max: Duration,
    /// Body compression of the segments.
    pub compression: Compression,
    /// At shutdown, how long to keep uploading what is committed (what is
    /// left stays in the WAL for the next start).
    pub shutdown_flush_max: Duration,
    /// How often the uploader asks the store whether another node claimed
    /// the next epoch (one GET): the longest an idle fenced primary keeps
    /// taking writes. A busy one learns sooner, at its next upload.
    pub ownership_check_interval: Duration,
    /// Uploading is background work (a lower CPU priority than the
    /// shards). Off when commits wait for their upload (`--ack-after
    /// upload`): then it is on the commit path.
    pub background: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            segment_bytes_max: 2 * 1024 * 1024,
            segment_age_max: Duration::from_millis(100),
            uploads_in_flight_max: 4,
            retry_backoff_max: Duration::from_secs(5),
            compression: Compression::None,
            shutdown_flush_max: Duration::from_secs(10),
            ownership_check_interval: Duration::from_secs(1),
            background: true,
        }
    }
}

impl UploadOptions {
    /// The low-lag profile: small segments sealed after 10 ms (about 100
    /// PUTs per second per busy table).
    pub fn low_lag() -> UploadOptions {
        UploadOptions {
            segment_bytes_max: 256 * 1024,
            segment_age_max: Duration::from_millis(10),
            ..UploadOptions::default()
        }
    }

    /// The defaults for a kind of store. A shared filesystem (`fs`) has no
    /// price per request: a segment is sealed as soon as the uploader has
    /// caught up and the previous one landed (segments then grow with the
    /// load while a PUT is in flight), for the lowest lag. Cloud stores
    /// (and `memory`) keep the PUT budget: sealed at 2 MiB or 100 ms, at
    /// most about 10 PUTs per second per table.
    pub fn for_store(kind: StoreKind) -> UploadOptions {
        match kind {
            StoreKind::Fs => UploadOptions {
                segment_bytes_max: 1024 * 1024,
                segment_age_max: Duration::ZERO,
                ownership_check_interval: Duration::from_millis(100),
                ..UploadOptions::default()
            },
            _ => UploadOptions::default(),
        }
    }
}

/// One table's upload position, for `/status` and `/metrics`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TableUploadStatus {
    /// Last txn in the store.
    pub uploaded_txn: u64,
    pub segments_uploaded: u64,
    pub bytes_uploaded: u64,
    /// Commit time (µs since the epoch) of the last uploaded txn.
    pub uploaded_commit_time_us: i64,
    /// Failed tries of the segment in flight (0 when uploads succeed).
    pub retries: u64,
    /// The last upload error, until an upload succeeds.
    pub last_error: Option<String>,
    /// Set when upload of this table stopped for good (needs an operator).
    pub stopped: Option<String>,
}

/// Upload positions of all tables, shared with the HTTP server.
#[derive(Debug, Default)]
pub struct UploadStatus {
    tables: Mutex<BTreeMap<String, TableUploadStatus>>,
}

impl UploadStatus {
    pub fn tables(&self) -> BTreeMap<String, TableUploadStatus> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TableUploadStatus>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, table: &str, f: impl FnOnce(&mut TableUploadStatus)) {
        f(self.lock().entry(table.to_string()).or_default());
    }
}

/// Whose history the uploader extends: the epoch its node claimed, and
/// what to do when it learns that another node claimed a later one.
#[derive(Clone)]
pub struct Owner {
    pub epoch: u64,
    /// Called once, with the reason, when the node is found superseded:
    /// every table's upload has stopped by then.
    pub on_fenced: Arc<dyn Fn(String) + Send + Sync>,
}

impl Owner {
    /// The first epoch, for a node that never fails over (tests, tools).
    pub fn first() -> Owner {
        Owner {
            epoch: FIRST_EPOCH,
            on_fenced: Arc::new(|_| {}),
        }
    }
}

/// The running uploader; [`Uploader::shutdown`] after the database closed
/// uploads what is committed (within `shutdown_flush_max`) and stops.
pub struct Uploader {
    _thread: super::Background,
    pub status: Arc<UploadStatus>,
}

impl Uploader {
    /// Starts uploading every replicated table of `catalog` (tables created
    /// later are picked up) to `store`, which only this uploader uses.
    pub fn start(catalog: Catalog, store: Store, opts: UploadOptions) -> std::io::Result<Uploader> {
        Uploader::start_owned(catalog, store, opts, Owner::first())
    }

    /// [`Uploader::start`] for the holder of `owner.epoch`: its segments
    /// carry that epoch, and it stops (calling `owner.on_fenced`) as soon
    /// as it finds a later epoch claimed or a later epoch's segment where
    /// its next one belongs.
    pub fn start_owned(
        catalog: Catalog,
        store: Store,
        opts: UploadOptions,
        owner: Owner,
    ) -> std::io::Result<Uploader> {
        let status = Arc::new(UploadStatus::default());
        // Its blocking pool writes `fs::` objects: background work too.
        let background = opts.background;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_start(move || {
                if background {
                    lower_priority()
                }
            })
            .build()?;
        let st = status.clone();
        let wake = catalog.upload_wake();
        let thread = super::Background::spawn_woken("basalt-uploader", wake, move |stop| {
            if background {
                lower_priority();
            }
            rt.block_on(run(catalog, store, opts, owner, stop, st));
        })?;
        Ok(Uploader {
            _thread: thread,
            status,
        })
    }

    /// Uploads what is committed, then stops. Call after the database is
    /// closed, so that "committed" no longer moves.
    pub fn shutdown(self) {}
}

/// Upload is background work: when the cores are saturated, the shards
/// (ingest) go first and the upload backlog, kept in the WAL, grows; it
/// drains as soon as they leave room. Nice 10 on this thread (Linux
/// schedules threads individually); failing to lower it is harmless.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// How one upload ended.
enum Outcome {
    Uploaded {
        last: u64,
        bytes: u64,
    },
    /// The key was taken by this node's own earlier upload, ending at
    /// `last`, with checksum `xxh3`.
    Adopted {
        last: u64,
        xxh3: u64,
    },
    /// Shutdown came first.
    Abandoned,
    /// A later epoch's segment holds the key: this node was superseded.
    Fenced(String),
    /// Never retry: the store's history is not this node's.
    Fatal(String),
}

/// A sealed segment on its way.
struct InFlight {
    first: u64,
    last: u64,
    /// The sealed segment's checksum: the next one's link once it lands.
    xxh3: u64,
    last_commit_us: i64,
    task: tokio::task::JoinHandle<Outcome>,
}

enum Phase {
    /// Asking the store what it holds after the upload mark.
    Locating(tokio::task::JoinHandle<Result<(u64, Located), LocateError>>),
    /// Waiting to ask again (after a failure).
    LocateAfter(Instant),
    Ready,
    Stopped,
}

struct TableUpload {
    handle: Arc<TableHandle>,
    /// Names the store in upload marks.
    store_id: u64,
    tail: WalTail,
    phase: Phase,
    /// Next txn to put into `open`.
    next_txn: u64,
    /// What the next sealed segment links to: the last one in the store.
    link: Link,
    /// Reading the WAL failed: try again at this time.
    wal_retry_at: Option<Instant>,
    open: Option<SegmentWriter>,
    /// Commit time of the open segment's first txn.
    open_first_commit_us: i64,
    open_last_commit_us: i64,
    in_flight: Option<InFlight>,
    /// Set when this table's upload found a later epoch's segment.
    fenced: Option<String>,
}

async fn run(
    catalog: Catalog,
    store: Store,
    opts: UploadOptions,
    owner: Owner,
    stop: Arc<AtomicBool>,
    status: Arc<UploadStatus>,
) {
    let pool = BufferPool::new(opts.uploads_in_flight_max.max(1) * 2);
    let wake = catalog.upload_wake();
    // Where the next table announcement goes (one listing, when first needed).
    let announce_at: Arc<tokio::sync::Mutex<Option<u64>>> = Default::default();
    let mut tables: BTreeMap<String, TableUpload> = BTreeMap::new();
    let mut stop_deadline: Option<Instant> = None;
    // The ownership check: one GET of the next epoch's claim per interval.
    let fenced: Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let mut next_check = Instant::now() + opts.ownership_check_interval;
    let mut check: Option<tokio::task::JoinHandle<()>> = None;
    info!(store = %store.config, epoch = owner.epoch, "uploader started");
    loop {
        if check.as_ref().is_none_or(|c| c.is_finished()) && Instant::now() >= next_check {
            next_check = Instant::now() + opts.ownership_check_interval;
            let (s, f, w, epoch) = (store.clone(), fenced.clone(), wake.clone(), owner.epoch);
            check = Some(tokio::spawn(async move {
                match super::epoch::superseded(&s, epoch).await {
                    Ok(Some(c)) => {
                        *f.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                            "this node held epoch {epoch} and was superseded: node {} claimed epoch {} at {} µs",
                            c.node, c.epoch, c.claimed_at_us
                        ));
                        w.notify_one();
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "cannot check ownership of the store's history; retrying")
                    }
                }
            }));
        }
        // A table's upload may have found a later epoch's segment too.
        let found = fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .or_else(|| tables.values().find_map(|t| t.fenced.clone()));
        if let Some(why) = found {
            error!("{why}; uploads stopped, writes refused, unshipped txns stay in the WAL");
            // Writes are refused before anything can see the uploads stopped.
            (owner.on_fenced)(why.clone());
            for t in tables.values_mut() {
                if let Some(f) = t.in_flight.take() {
                    f.task.abort();
                }
                t.halt(&status, why.clone());
            }
            break;
        }
        let stopping = stop.load(Ordering::Acquire);
        if stopping && stop_deadline.is_none() {
            stop_deadline = Some(Instant::now() + opts.shutdown_flush_max);
        }
        let handles = catalog.handles();
        // A dropped table is forgotten at once, its upload in flight
        // abandoned, before DROP TABLE removes its directory: from then on
        // nothing here touches the path, which a new table of the same name
        // may take.
        tables.retain(|_, t| {
            if !t.handle.is_dropped() {
                return true;
            }
            if let Some(f) = t.in_flight.take() {
                f.task.abort();
            }
            t.handle.upload_detach();
            false
        });
        for h in handles {
            if h.is_replicated() && !tables.contains_key(&h.name) && h.upload_attach() {
                let t = TableUpload {
                    store_id: store.config.id(),
                    tail: WalTail::new(&h.dir().join(crate::table::files::WAL_DIR)),
                    phase: Phase::LocateAfter(Instant::now()),
                    next_txn: 0,
                    link: Link {
                        epoch: owner.epoch,
                        prev_xxh3: 0,
                    },
                    wal_retry_at: None,
                    open: None,
                    open_first_commit_us: 0,
                    open_last_commit_us: 0,
                    in_flight: None,
                    fenced: None,
                    handle: h.clone(),
                };
                tables.insert(h.name.clone(), t);
            }
        }
        let mut in_flight = tables.values().filter(|t| t.in_flight.is_some()).count();
        let mut busy = false;
        for t in tables.values_mut() {
            busy |= step(
                t,
                &store,
                &opts,
                &pool,
                &status,
                &stop,
                stopping,
                &mut in_flight,
                &announce_at,
            )
            .await;
        }
        if tables.values().any(|t| t.fenced.is_some()) {
            continue; // handled at the top of the loop, without sleeping
        }
        if let Some(deadline) = stop_deadline {
            if !busy {
                break;
            }
            if Instant::now() >= deadline {
                warn!("uploader stopping with txns not yet uploaded; they stay in the WAL for the next start");
                break;
            }
        }
        // Sleep until a shard writes, a table appears, an upload ends, or
        // the earliest deadline of a table passes.
        let uploads_full = tables.values().filter(|t| t.in_flight.is_some()).count()
            >= opts.uploads_in_flight_max.max(1);
        let deadline = tables
            .values()
            .filter_map(|t| t.deadline(&opts, uploads_full))
            .chain(std::iter::once(next_check))
            .min();
        let deadline = match stop_deadline {
            // Shutting down: uploads in flight end without a wake.
            Some(_) => Some(Instant::now() + Duration::from_millis(5)),
            None => deadline,
        };
        let notified = wake.notified();
        match deadline {
            Some(d) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(d.into()) => {}
                }
            }
            None => notified.await,
        }
    }
    for t in tables.values_mut() {
        if let Some(f) = t.in_flight.take() {
            // Stop flag is set: the task gives up at its next retry.
            let _ = f.task.await;
        }
        t.handle.upload_detach();
    }
    if let Some(c) = check {
        c.abort();
    }
    info!("uploader stopped");
}

/// One round of work on a table. Returns whether it still has txns to upload.
#[allow(clippy::too_many_arguments)]
async fn step(
    t: &mut TableUpload,
    store: &Store,
    opts: &UploadOptions,
    pool: &Arc<BufferPool>,
    status: &Arc<UploadStatus>,
    stop: &Arc<AtomicBool>,
    stopping: bool,
    in_flight: &mut usize,
    announce_at: &Arc<tokio::sync::Mutex<Option<u64>>>,
) -> bool {
    let name = t.handle.name.clone();
    match &mut t.phase {
        Phase::Stopped => return false,
        Phase::LocateAfter(at) => {
            if stopping {
                return false;
            }
            if Instant::now() < *at {
                return true;
            }
            // The mark is a hint only for the store it was written for.
            let mark = wal::retention::read_upload_mark(&t.tail_dir());
            let (hint, link) = if mark.store_id == t.store_id {
                (mark.txn, mark.segment_xxh3)
            } else {
                (0, None)
            };
            let (s, n) = (store.clone(), name.clone());
            let epoch = t.link.epoch;
            let wake = wake_of(t);
            let task = tokio::spawn(async move {
                let r = locate(&s, &n, hint, link, epoch).await.map(|v| (hint, v));
                wake.notify_one();
                r
            });
            t.phase = Phase::Locating(task);
            return true;
        }
        Phase::Locating(task) => {
            if !task.is_finished() {
                return true;
            }
            let r = task
                .await
                .unwrap_or_else(|e| Err(LocateError::Transient(e.to_string())));
            match r {
                Ok((hint, located)) => {
                    let last = match t.verify_stored(hint, located.hint_xxh3, &located.stored) {
                        Ok(last) => last,
                        Err(why) => return t.stop(status, why),
                    };
                    t.link.prev_xxh3 = located.stored.last().map_or(located.hint_xxh3, |s| s.xxh3);
                    info!(table = %name, uploaded_txn = last, "upload resumes after the store's last segment");
                    // A mark promises that the WAL after it is all here
                    // (recovery relies on it): write one only if it is.
                    let complete = last >= t.handle.written_txn()
                        || t.handle.is_aborted(last + 1)
                        || matches!(t.tail.next(last + 1), Ok(Some(_)));
                    t.tail.rewind();
                    if complete {
                        t.mark_uploaded(last);
                    }
                    t.next_txn = last + 1;
                    status.update(&name, |s| {
                        s.uploaded_txn = last;
                        s.last_error = None;
                    });
                    t.phase = Phase::Ready;
                }
                Err(LocateError::Fatal(why)) => return t.stop(status, why),
                Err(LocateError::Fenced(why)) => {
                    // The run loop refuses writes, then marks every table.
                    t.fenced = Some(why);
                    t.phase = Phase::Stopped;
                    return false;
                }
                Err(LocateError::Transient(e)) => {
                    warn!(table = %name, error = %e, "cannot read the table's position in the object store; retrying");
                    status.update(&name, |s| s.last_error = Some(e));
                    let retry = opts.retry_backoff_max.min(Duration::from_secs(1));
                    t.phase = Phase::LocateAfter(Instant::now() + retry);
                    return !stopping;
                }
            }
        }
        Phase::Ready => {}
    }

    // 1. A finished upload.
    if t.in_flight.as_ref().is_some_and(|f| f.task.is_finished()) {
        let f = t.in_flight.take().expect("checked");
        *in_flight -= 1;
        let outcome = f
            .task
            .await
            .unwrap_or_else(|e| Outcome::Fatal(e.to_string()));
        match outcome {
            Outcome::Uploaded { last, bytes } => {
                // Requests waiting for their txns to be stored go now, not
                // after the mark's write.
                t.handle.set_stored(last);
                t.link.prev_xxh3 = f.xxh3;
                if t.mark_uploaded(last) {
                    t.tail.remove_released(t.handle.wal_release_txn());
                }
                status.update(&name, |s| {
                    s.uploaded_txn = last;
                    s.segments_uploaded += 1;
                    s.bytes_uploaded += bytes;
                    s.uploaded_commit_time_us = f.last_commit_us;
                    s.retries = 0;
                    s.last_error = None;
                });
            }
            Outcome::Adopted { last, xxh3 } => {
                info!(table = %name, first = f.first, last, "segment was already in the store (an earlier upload of this node); continuing after it");
                t.link.prev_xxh3 = xxh3;
                t.mark_uploaded(last);
                if last != f.last {
                    // The stored segment ends elsewhere than ours: rebuild
                    // from the txn after it.
                    t.open = None;
                    t.next_txn = last + 1;
                    t.tail.rewind();
                }
                status.update(&name, |s| s.uploaded_txn = last);
            }
            Outcome::Abandoned => {
                // Shutdown gave up on this segment: seal nothing after it
                // (that would leave a gap); it ships at the next start.
                t.open = None;
                t.phase = Phase::Stopped;
                return false;
            }
            Outcome::Fenced(why) => {
                // The run loop refuses writes, then marks every table.
                t.fenced = Some(why);
                t.phase = Phase::Stopped;
                return false;
            }
            Outcome::Fatal(why) => return t.stop(status, why),
        }
    }

    // 2. Fill the open segment from the WAL, up to the last durable txn
    // (not waiting for the primary's own apply or checkpoint).
    let resolved = t.handle.written_txn();
    // After a failed WAL read, the next try waits for its time.
    let waiting = t.wal_retry_at.is_some_and(|at| Instant::now() < at);
    if !waiting {
        t.wal_retry_at = None;
    }
    let mut caught_up = !waiting;
    while !waiting && t.next_txn <= resolved {
        if t.open
            .as_ref()
            .is_some_and(|o| o.data_bytes() >= opts.segment_bytes_max)
        {
            caught_up = false;
            break;
        }
        let txn = t.next_txn;
        let schema = t.handle.schema();
        if t.open.is_none() {
            let room = opts.segment_bytes_max + 64 * 1024;
            match SegmentWriter::new_in(t.handle.table_id(), &name, &schema, Some(pool), room) {
                Ok(w) => t.open = Some(w),
                Err(e) => {
                    return t.stop(status, format!("cannot make segments of table {name}: {e}"))
                }
            }
        }
        let open = t.open.as_mut().expect("made above");
        if open.schema_version() != schema.version {
            if let Err(e) = open.set_schema(&schema) {
                return t.stop(status, format!("table {name}: {e}"));
            }
        }
        let pushed = if t.handle.is_aborted(txn) {
            // A txn whose WAL write failed: no rows, but its number exists.
            open.push_aborted(txn).map(|()| 0)
        } else {
            match t.tail.next_record(txn) {
                // The record as the shard wrote it: copied once, not decoded.
                Ok(Some((h, record))) => open.push_record(&h, record).map(|()| h.commit_time_us),
                Ok(None) => {
                    return t.stop(
                        status,
                        format!(
                        "table {name}: committed txn {txn} is not in the local WAL; upload stopped"
                    ),
                    )
                }
                Err(e) => {
                    warn!(table = %name, error = %e, "reading the WAL failed; retrying");
                    t.wal_retry_at = Some(Instant::now() + Duration::from_millis(50));
                    caught_up = false;
                    break;
                }
            }
        };
        let commit_us = match pushed {
            Ok(c) => c,
            Err(e) => return t.stop(status, format!("table {name}: txn {txn}: {e}")),
        };
        if open.txn_count() == 1 {
            t.open_first_commit_us = if commit_us == 0 { now_us() } else { commit_us };
            t.open_last_commit_us = 0;
        }
        t.open_last_commit_us = t.open_last_commit_us.max(commit_us);
        t.next_txn += 1;
    }

    // 3. Seal and upload when due and nothing is in flight for the table.
    let Some(open) = t.open.as_ref().filter(|o| o.txn_count() > 0) else {
        return t.in_flight.is_some();
    };
    let age_us = now_us() - t.open_first_commit_us;
    let due = open.data_bytes() >= opts.segment_bytes_max
        || stopping
        || (caught_up && age_us >= opts.segment_age_max.as_micros() as i64);
    if t.in_flight.is_some() || !due || *in_flight >= opts.uploads_in_flight_max.max(1) {
        return true;
    }
    let open = t.open.take().expect("checked");
    let (first, last) = (t.next_txn - open.txn_count() as u64, t.next_txn - 1);
    let encoded = match open.finish_linked(t.link, opts.compression) {
        Ok(e) => e,
        Err(e) => {
            return t.stop(
                status,
                format!("table {name}: sealing txns {first}..={last}: {e}"),
            )
        }
    };
    // Our commit times and link, to recognise our own segment if the key
    // is taken.
    let commit_times = encoded.commit_times_us.clone();
    let xxh3 = encoded.checksum();
    let bytes = encoded.into_bytes();
    let key = segment_key(store, &name, first);
    let ctx = UploadCtx {
        store: store.clone(),
        table: name.clone(),
        table_id: t.handle.table_id(),
        link: t.link,
        // A table's first segment: replicas learn of the table first.
        announce: (first == 1).then(|| (announce_at.clone(), t.handle.schema())),
        stop: stop.clone(),
        backoff_max: opts.retry_backoff_max,
        status: status.clone(),
    };
    let wake = wake_of(t);
    let task = tokio::spawn(async move {
        let outcome = upload(ctx, key, bytes, first, last, commit_times).await;
        wake.notify_one();
        outcome
    });
    *in_flight += 1;
    t.in_flight = Some(InFlight {
        first,
        last,
        xxh3,
        last_commit_us: t.open_last_commit_us,
        task,
    });
    true
}

/// The uploader's wake (shards, table creation, finished uploads).
fn wake_of(t: &TableUpload) -> Arc<tokio::sync::Notify> {
    t.handle.upload_wake()
}

impl TableUpload {
    /// When this table needs a look without being woken: its open segment
    /// comes of age, its WAL is read again after an error, or its position
    /// is asked for again. `None` while an upload (its own, or the one
    /// that frees a slot when `uploads_full`) is what it waits for: that
    /// upload's end wakes the uploader.
    fn deadline(&self, opts: &UploadOptions, uploads_full: bool) -> Option<Instant> {
        match &self.phase {
            Phase::LocateAfter(at) => return Some(*at),
            Phase::Ready => {}
            _ => return None,
        }
        if let Some(at) = self.wal_retry_at {
            return Some(at);
        }
        self.open.as_ref().filter(|o| o.txn_count() > 0)?;
        if self.in_flight.is_some() || uploads_full {
            return None;
        }
        let age_us = now_us().saturating_sub(self.open_first_commit_us);
        let age_max_us = i64::try_from(opts.segment_age_max.as_micros()).unwrap_or(i64::MAX);
        let left_us = age_max_us.saturating_sub(age_us).max(0) as u64;
        Some(Instant::now() + Duration::from_micros(left_us.min(3_600_000_000)))
    }

    fn tail_dir(&self) -> std::path::PathBuf {
        self.handle.dir().join(crate::table::files::WAL_DIR)
    }

    /// Records that txns up to `last` are in the store: the mark first (the
    /// shards drop WAL up to the uploaded txn, so the WAL after the mark is
    /// always there after a crash), then the table handle. Without the mark
    /// on disk the WAL it covers stays. Returns whether it was recorded.
    fn mark_uploaded(&mut self, last: u64) -> bool {
        let mark = wal::retention::UploadMark {
            txn: last,
            store_id: self.store_id,
            segment_xxh3: Some(self.link.prev_xxh3),
            epoch: self.link.epoch,
        };
        match wal::retention::write_upload_mark(&self.tail_dir(), mark) {
            Ok(()) => {
                self.handle.set_uploaded(last);
                true
            }
            Err(e) => {
                warn!(table = %self.handle.name, error = %e, "could not write the upload mark; keeping the WAL it would release");
                false
            }
        }
    }

    /// Checks that the segments the store holds after the upload mark
    /// (`hint`, whose segment has checksum `hint_xxh3`) are this node's
    /// own, continuing the chain: of this node's epoch and linked to the
    /// segment before (only the holder of an epoch writes segments of it),
    /// or, for segments without an epoch (format 1), each txn's commit time
    /// equal to the one in this node's WAL (kept for every txn after the
    /// mark). Returns where the chain ends.
    fn verify_stored(
        &mut self,
        hint: u64,
        hint_xxh3: u64,
        stored: &[StoredSegment],
    ) -> Result<u64, String> {
        let name = self.handle.name.clone();
        let resolved = self.handle.written_txn();
        let mut last = hint;
        let mut prev = hint_xxh3;
        self.tail.rewind();
        for s in stored {
            let linked = s.epoch == self.link.epoch && s.prev_xxh3 == Some(prev);
            prev = s.xxh3;
            if s.first != last + 1 {
                return Err(format!(
                    "object {} starts at txn {} but the chain of table {name} ends at txn {last}: \
                     the store holds a history this node did not write. Upload of the table is stopped",
                    s.key, s.first
                ));
            }
            if s.last > resolved {
                return Err(format!(
                    "object {} holds txns up to {} of table {name}, this node only up to {resolved}: \
                     another primary wrote this table's history, or this node lost data. \
                     Upload of the table is stopped; nothing was written",
                    s.key, s.last
                ));
            }
            if linked {
                last = s.last;
                continue;
            }
            if s.epoch != 0 {
                return Err(format!(
                    "object {} (epoch {}) does not continue this node's chain of table {name} \
                     (epoch {}): another primary wrote this history. Upload of the table is \
                     stopped; nothing was written",
                    s.key, s.epoch, self.link.epoch
                ));
            }
            for (i, txn) in (s.first..=s.last).enumerate() {
                let theirs = s.commit_times.get(i).copied();
                if self.handle.is_aborted(txn) {
                    // Shipped empty; its record, if any, proves nothing.
                    continue;
                }
                let ours = match self.tail.next(txn) {
                    Ok(Some((h, _))) => h.commit_time_us,
                    Ok(None) => {
                        return Err(format!(
                            "object {} holds txn {txn} of table {name}, which this node's WAL no \
                             longer has, so it cannot tell whether the store's history is its own \
                             (was the store or the data directory switched?). Upload of the table \
                             is stopped",
                            s.key
                        ))
                    }
                    Err(e) => return Err(format!("table {name}: reading the WAL: {e}")),
                };
                if theirs != Some(ours) {
                    return Err(format!(
                        "object {} holds a txn {txn} of table {name} that this node did not \
                         commit: another primary is writing this table's history. Upload of \
                         the table is stopped; nothing was written",
                        s.key
                    ));
                }
            }
            last = s.last;
        }
        self.tail.rewind();
        Ok(last)
    }

    fn stop(&mut self, status: &UploadStatus, why: String) -> bool {
        error!(table = %self.handle.name, "{why}");
        self.halt(status, why)
    }

    /// [`TableUpload::stop`] without the log line (the caller logged why).
    fn halt(&mut self, status: &UploadStatus, why: String) -> bool {
        status.update(&self.handle.name, |s| s.stopped = Some(why));
        self.phase = Phase::Stopped;
        self.handle.set_upload_stopped();
        false
    }
}

/// Segments after its upload mark a node accepts as possibly its own.
const STORED_AFTER_MARK_MAX: usize = 8;

/// Why the store's position of a table is not known yet.
enum LocateError {
    /// Retried after a while (the store is unreachable, a request failed).
    Transient(String),
    /// Never retried: the store holds what this node cannot have written.
    Fatal(String),
    /// A later epoch's segment follows this node's: it was superseded.
    Fenced(String),
}

/// A segment found in the store at start-up.
struct StoredSegment {
    key: String,
    first: u64,
    last: u64,
    commit_times: Vec<i64>,
    xxh3: u64,
    epoch: u64,
    prev_xxh3: Option<u64>,
}

/// Where a table's chain in the store ends.
struct Located {
    /// Segments after the upload mark (normally none).
    stored: Vec<StoredSegment>,
    /// Checksum of the segment ending at the mark (0 when the mark is 0).
    hint_xxh3: u64,
}

/// The segments of `table` in the store that start after txn `hint` (the
/// upload mark): normally none, or the one whose upload landed just
/// before a crash. `hint_xxh3` is the mark's link, when it has one; a mark
/// written before segments were linked has none, and the segment ending
/// at the mark is then looked up (once, at start-up).
async fn locate(
    store: &Store,
    table: &str,
    hint: u64,
    hint_xxh3: Option<u64>,
    epoch: u64,
) -> Result<Located, LocateError> {
    let prefix = table_prefix(store, table);
    let after = segment_key(store, table, hint);
    let keys = store
        .list_after(&prefix, &after)
        .await
        .map_err(|e| LocateError::Transient(format!("listing {prefix}: {e}")))?;
    let keys: Vec<_> = keys.iter().filter(|k| first_txn_of(k).is_some()).collect();
    // This node uploads one segment at a time and marks each: more than a
    // few after its mark are not its own.
    if keys.len() > STORED_AFTER_MARK_MAX {
        return Err(LocateError::Fatal(format!(
            "the store holds {} segments of table {table} after txn {hint}, the last this node \
             marked uploaded: not this node's history. Upload of the table is stopped",
            keys.len()
        )));
    }
    let mut stored = Vec::new();
    for key in keys {
        let (seg, _) = fetch(store, key).await.map_err(LocateError::Transient)?;
        let h = seg.header();
        if h.table != table || first_txn_of(key) != Some(h.first_txn) {
            return Err(LocateError::Fatal(format!(
                "object {key} holds txns {}..={} of table {}: not where it belongs. \
                 Upload of the table is stopped",
                h.first_txn, h.last_txn, h.table
            )));
        }
        if h.epoch > epoch {
            return Err(LocateError::Fenced(format!(
                "this node held epoch {epoch} and was superseded: object {key} (txns {}..={} of \
                 table {table}) was written by the primary of epoch {}",
                h.first_txn, h.last_txn, h.epoch
            )));
        }
        stored.push(StoredSegment {
            key: key.to_string(),
            first: h.first_txn,
            last: h.last_txn,
            commit_times: h.commit_times_us.clone(),
            xxh3: seg.checksum(),
            epoch: h.epoch,
            prev_xxh3: h.prev_xxh3,
        });
    }
    let hint_xxh3 = match hint_xxh3 {
        Some(x) => x,
        None if hint == 0 || !stored.is_empty() => 0,
        None => ending_at(store, table, hint).await?,
    };
    Ok(Located { stored, hint_xxh3 })
}

/// The checksum of the segment of `table` whose last txn is `txn` (for a
/// mark written before segments were linked): one listing of the table.
async fn ending_at(store: &Store, table: &str, txn: u64) -> Result<u64, LocateError> {
    let prefix = table_prefix(store, table);
    let keys = store
        .list_after(&prefix, &segment_key(store, table, 0))
        .await
        .map_err(|e| LocateError::Transient(format!("listing {prefix}: {e}")))?;
    let key = keys
        .iter()
        .filter(|k| first_txn_of(k).is_some_and(|f| f <= txn))
        .max_by_key(|k| first_txn_of(k))
        .ok_or_else(|| {
            LocateError::Fatal(format!(
                "the upload mark of table {table} says txn {txn} is in the store, but the store \
                 has no segment holding it. Upload of the table is stopped"
            ))
        })?;
    let (seg, _) = fetch(store, key).await.map_err(LocateError::Transient)?;
    if seg.header().last_txn != txn {
        return Err(LocateError::Fatal(format!(
            "object {key} ends at txn {}, the upload mark of table {table} at {txn}. \
             Upload of the table is stopped",
            seg.header().last_txn
        )));
    }
    Ok(seg.checksum())
}

/// Downloads and verifies one segment.
async fn fetch(store: &Store, key: &object_store::path::Path) -> Result<(Segment, usize), String> {
    let bytes = async { store.inner.get(key).await?.bytes().await }
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    let len = bytes.len();
    let mut aligned = AlignedVec::<16>::with_capacity(len);
    aligned.extend_from_slice(&bytes);
    let seg = Segment::from_aligned(aligned).map_err(|e| format!("object {key}: {e}"))?;
    Ok((seg, len))
}

/// Where the next table announcement goes (learned with one listing).
type AnnounceAt = Arc<tokio::sync::Mutex<Option<u64>>>;

struct UploadCtx {
    store: Store,
    table: String,
    table_id: u64,
    /// The link of the segment being uploaded.
    link: Link,
    /// Announce the table (`catalog/`) before the segment, at this
    /// position, with this schema.
    announce: Option<(AnnounceAt, Arc<crate::table::Schema>)>,
    stop: Arc<AtomicBool>,
    backoff_max: Duration,
    status: Arc<UploadStatus>,
}

/// PUTs one segment with conditional create, retrying with backoff until
/// it lands, is found already there, or shutdown gives up on it.
async fn upload(
    ctx: UploadCtx,
    key: object_store::path::Path,
    bytes: bytes::Bytes,
    first: u64,
    last: u64,
    commit_times: Vec<i64>,
) -> Outcome {
    let mut delay = Duration::from_millis(50);
    let mut tries = 0u64;
    let mut announced = ctx.announce.is_none();
    loop {
        // A table's first segment: the announcement first, then the PUT;
        // either failing is retried with the same backoff.
        let err = if !announced {
            let (at, schema) = ctx.announce.as_ref().expect("not announced yet");
            let a = super::catalog::Announcement {
                table: ctx.table.clone(),
                table_id: ctx.table_id,
                epoch: ctx.link.epoch,
                schema: Some((**schema).clone()),
            };
            match super::catalog::announce(&ctx.store, &a, &mut *at.lock().await).await {
                Ok(()) => {
                    announced = true;
                    continue;
                }
                Err(super::catalog::AnnounceError::Fenced(why)) => return Outcome::Fenced(why),
                Err(super::catalog::AnnounceError::Failed(e)) => e,
            }
        } else {
            let payload = PutPayload::from(bytes.clone());
            match ctx
                .store
                .inner
                .put_opts(&key, payload, PutMode::Create.into())
                .await
            {
                Ok(_) => {
                    return Outcome::Uploaded {
                        last,
                        bytes: bytes.len() as u64,
                    }
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    match fetch(&ctx.store, &key).await {
                        Ok((seg, _)) => return adopt(&ctx, &key, &seg, first, &commit_times),
                        Err(e) => e,
                    }
                }
                Err(e) => e.to_string(),
            }
        };
        tries += 1;
        if tries == 1 || tries.is_power_of_two() {
            warn!(table = %ctx.table, key = %key, tries, error = %err, "upload failed; retrying");
        }
        ctx.status.update(&ctx.table, |s| {
            s.retries = tries;
            s.last_error = Some(err);
        });
        if ctx.stop.load(Ordering::Acquire) && tries >= 3 {
            return Outcome::Abandoned;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(ctx.backoff_max);
    }
}

/// The key of our segment is taken: it is ours if it is this table's,
/// starts where ours does, its commit times are ours and it links to the
/// same previous segment (a version 1 segment has no link to compare).
fn adopt(
    ctx: &UploadCtx,
    key: &object_store::path::Path,
    seg: &Segment,
    first: u64,
    ours: &[i64],
) -> Outcome {
    let h = seg.header();
    if h.epoch > ctx.link.epoch {
        return Outcome::Fenced(format!(
            "this node held epoch {} and was superseded: object {key} (txns {}..={} of table {}) \
             was written by the primary of epoch {}",
            ctx.link.epoch, h.first_txn, h.last_txn, h.table, h.epoch
        ));
    }
    let theirs = &h.commit_times_us;
    let n = theirs.len().min(ours.len());
    // Version 1 segments have no epoch (0) and no link.
    let same_owner = h.epoch == ctx.link.epoch || h.prev_xxh3.is_none();
    if same_owner
        && h.table == ctx.table
        && h.table_id == ctx.table_id
        && h.first_txn == first
        && theirs[..n] == ours[..n]
        && h.prev_xxh3.is_none_or(|p| p == ctx.link.prev_xxh3)
    {
        return Outcome::Adopted {
            last: h.last_txn,
            xxh3: seg.checksum(),
        };
    }
    Outcome::Fatal(format!(
        "object {key} already exists with different contents (table {} id {}, txns {}..={}): \
         another primary is writing table {}'s history. Upload of the table is stopped",
        h.table, h.table_id, h.first_txn, h.last_txn, ctx.table
    ))
}
