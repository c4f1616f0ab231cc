//! The node's role in replication, and switching it in place.
//!
//! A node with an object store is the primary (takes writes, uploads) or a
//! replica (follows the store, read-only). `SWITCH ROLE TO PRIMARY |
//! REPLICA` moves it between the two without a restart; `GET /lifecycle`,
//! `SWITCH STATUS` and `node_role()` report where it is. Ownership of the
//! store's history is an epoch claimed with conditional create (see
//! [`super::epoch`]); docs/failover.md has the protocol.
//!
//! ```text
//! TO REPLICA: refuse writes (421) ─▶ drain commits queued on the shards
//!             ─▶ wait until the store has every committed txn ─▶ stop the
//!             uploader ─▶ apply + checkpoint, let go of the tables ─▶ follow
//! TO PRIMARY: stop following ─▶ apply everything in the store ─▶ claim
//!             epoch E+1 ─▶ per table, an epoch-start segment at the chain's
//!             next key ─▶ open the tables for writing ─▶ start uploading
//!             ─▶ admit writes
//! ```
//!
//! A switch runs on its own thread; the statement returns once it is
//! accepted. One that cannot complete leaves the node in a safe state and
//! says why in `/lifecycle` (`last_switch`): a failed switch to replica
//! stays primary (writes admitted again unless fenced); a failed switch to
//! primary goes back to following the store.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::catalog;
use super::epoch::{self, Claim};
use super::status::{Fenced, NodeStatus, Role, RoleState, SwitchReport, Unshipped};
use super::{Owner, Replica, ReplicaOptions, ReplicaRunner, UploadOptions, Uploader};
use crate::db::{now_us, Database};
use crate::store::Store;

/// What a node needs to change roles.
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub store: Store,
    pub upload: UploadOptions,
    pub replica: ReplicaOptions,
    /// Names this node in the epoch claims it makes.
    pub node_name: String,
    /// Snapshots and retention (the primary's).
    pub backup: BackupOptions,
}

/// When the primary takes snapshots and what it keeps (docs/backup.md).
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Take a snapshot this often; `None`: only on `BACKUP DATABASE`.
    pub interval: Option<Duration>,
    /// Delete what this no longer needs; `None`: keep everything.
    pub retention: Option<super::snapshot::Retention>,
    /// How long a snapshot waits for the store to hold its txns.
    pub wait: Duration,
    /// Where snapshots go (`--backup-object-store`); `None`: the
    /// replication store, under `snapshots/`.
    pub store: Option<Store>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            interval: None,
            retention: None,
            wait: Duration::from_secs(60),
            store: None,
        }
    }
}

/// Role switches as the SQL front sees them.
pub trait RoleControl: Send + Sync {
    /// Starts a switch to `to`, each stage bounded by `stage_timeout`;
    /// returns the state once it is accepted (the switch runs on).
    fn switch_role(&self, to: Role, stage_timeout: Duration) -> Result<RoleState, String>;
    /// The role and what goes with it, now.
    fn role_state(&self) -> RoleState;
    /// Takes a snapshot now (`BACKUP DATABASE`); returns once it is
    /// complete in the store.
    fn backup(&self) -> Result<super::snapshot::SnapshotReport, String>;
}

/// How errors of an unreachable store begin (retried, not fatal).
const UNREACHABLE: &str = "the object store cannot be reached";

/// The default of `SWITCH ROLE ... TIMEOUT`: each stage, in milliseconds.
pub const SWITCH_TIMEOUT_DEFAULT_MS: u64 = 5_000;
/// The largest `TIMEOUT` accepted.
pub const SWITCH_TIMEOUT_MAX_MS: u64 = 600_000;
/// Tries to open a table's epoch while the old primary keeps landing
/// segments at the key wanted.
const EPOCH_START_TRIES: usize = 64;

/// The node's replication role and the machinery of each (cheap to clone).
#[derive(Clone)]
pub struct Node(Arc<Inner>);

struct Inner {
    cfg: NodeConfig,
    db: OnceLock<Weak<Database>>,
    work: Mutex<Work>,
    status: Arc<NodeStatus>,
    /// One snapshot or retention pass at a time.
    backup_lock: Mutex<()>,
    /// Full blocks of partitions already uploaded (not hashed again).
    blocks: super::snapshot::BlockCache,
}

#[derive(Default)]
struct Work {
    uploader: Option<Uploader>,
    follower: Option<ReplicaRunner>,
    /// Scheduled snapshots and retention (primary).
    backups: Option<super::Background>,
}

impl Node {
    pub fn new(cfg: NodeConfig, status: Arc<NodeStatus>) -> Node {
        Node(Arc::new(Inner {
            cfg,
            db: OnceLock::new(),
            work: Mutex::new(Work::default()),
            status,
            backup_lock: Mutex::new(()),
            blocks: Default::default(),
        }))
    }

    /// The database this node runs (once the server holds it).
    pub fn attach(&self, db: Weak<Database>) {
        let _ = self.0.db.set(db);
    }

    pub fn status(&self) -> &Arc<NodeStatus> {
        &self.0.status
    }

    fn db(&self) -> Result<Arc<Database>, String> {
        self.0
            .db
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| "the database is shut down".to_string())
    }

    fn work(&self) -> std::sync::MutexGuard<'_, Work> {
        self.0.work.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts as the primary: confirms (or, on a fresh store, claims) the
    /// ownership of the store's history, starts uploading, admits writes.
    /// A node superseded while it was down starts fenced: it serves reads,
    /// refuses writes and reports what it never shipped.
    pub fn start_primary(&self) -> Result<(), String> {
        let db = self.db()?;
        db.refuse_writes("the node is starting: confirming it owns the store's history");
        let cfg = &self.0.cfg;
        let rt = runtime()?;
        let local = epoch::read_local(&cfg.data_dir)?;
        let latest = rt.block_on(epoch::latest(&cfg.store));
        let retrying = std::thread::current().name() == Some("basalt-confirm");
        if let (true, Err(e)) = (retrying, &latest) {
            return Err(format!("{UNREACHABLE}: {e}"));
        }
        // The local claim must be this store's: a data directory that held
        // an epoch of another store's history holds none of this one.
        if let (Some(c), Ok(latest)) = (&local, &latest) {
            if *latest >= c.epoch {
                let theirs = rt.block_on(epoch::read(&cfg.store, c.epoch))?;
                if theirs.as_ref() != Some(c) {
                    return Err(format!(
                        "this data directory held epoch {} of another history ({} says node {} \
                         claimed it), not of this object store's (whose epoch {} was claimed by \
                         {}): a second primary would fork it. Start this node with --role \
                         replica on an empty data directory, or point --object-store at its own \
                         store",
                        c.epoch,
                        cfg.data_dir.join(epoch::LOCAL_FILE).display(),
                        c.node,
                        c.epoch,
                        theirs.map_or_else(|| "nobody".to_string(), |t| format!("node {}", t.node)),
                    ));
                }
            }
        }
        let held = match (local, latest) {
            (Some(c), Err(e)) => {
                warn!(epoch = c.epoch, error = %e, "cannot reach the object store to confirm this node still owns its history; writes stay refused until it answers (asked again every ownership check interval)");
                db.refuse_writes(format!(
                    "the node is starting and cannot reach the object store to confirm it still \
                     owns the history ({e}); writes are refused until it does"
                ));
                self.0.status.update(|s| {
                    s.role = Role::Primary;
                    s.epoch = c.epoch;
                });
                let me = self.clone();
                std::thread::Builder::new()
                    .name("basalt-confirm".into())
                    .spawn(move || loop {
                        // The retry cadence of the ownership check.
                        std::thread::sleep(me.0.cfg.upload.ownership_check_interval);
                        if me.0.db.get().and_then(Weak::upgrade).is_none() {
                            return; // shut down
                        }
                        match me.start_primary() {
                            Ok(()) => return,
                            Err(e) if e.starts_with(UNREACHABLE) => {}
                            Err(e) => {
                                error!("{e}");
                                if let Ok(db) = me.db() {
                                    db.refuse_writes(e);
                                }
                                return;
                            }
                        }
                    })
                    .map_err(|e| format!("cannot start the ownership check: {e}"))?;
                return Ok(());
            }
            (None, Err(e)) => {
                return Err(format!(
                    "{UNREACHABLE}: cannot claim ownership of its history: {e}"
                ))
            }
            (Some(c), Ok(latest)) if latest > c.epoch => {
                let by = rt.block_on(epoch::superseded(&cfg.store, c.epoch));
                let why = match by {
                    Ok(Some(b)) => format!(
                        "this node held epoch {} and was superseded while it was down: node {} claimed epoch {} at {} µs",
                        c.epoch, b.node, b.epoch, b.claimed_at_us
                    ),
                    _ => format!(
                        "this node held epoch {} and was superseded while it was down: the store's latest epoch is {latest}",
                        c.epoch
                    ),
                };
                self.0.status.update(|s| {
                    s.role = Role::Primary;
                    s.epoch = c.epoch;
                });
                fence(&db, &self.0.status, why);
                return Ok(());
            }
            (Some(c), Ok(latest)) if latest < c.epoch => {
                return Err(format!(
                    "this node holds epoch {} of the store's history ({}), but the store's epochs \
                     end at {latest}: it is not the store this node wrote to, or its epochs/ were \
                     deleted. Point --object-store at the right store",
                    c.epoch,
                    cfg.data_dir.join(epoch::LOCAL_FILE).display()
                ))
            }
            (Some(c), Ok(_)) => c.epoch,
            (None, Ok(0)) => {
                let c = Claim {
                    epoch: crate::segment::FIRST_EPOCH,
                    node: cfg.node_name.clone(),
                    claimed_at_us: now_us(),
                };
                rt.block_on(epoch::claim(&cfg.store, &c))
                    .map_err(|e| format!("cannot claim epoch 1 of the object store: {e}"))?;
                epoch::write_local(&cfg.data_dir, &c)?;
                info!(epoch = c.epoch, "claimed the object store's history");
                c.epoch
            }
            (None, Ok(latest)) => {
                let by = rt
                    .block_on(epoch::read(&cfg.store, latest))
                    .ok()
                    .flatten()
                    .map_or_else(String::new, |c| format!(" (node {})", c.node));
                return Err(format!(
                    "the object store's history belongs to epoch {latest}{by}, and this data \
                     directory never held it: a second primary would fork it. Start this node \
                     with --role replica (and SWITCH ROLE TO PRIMARY to take over), or use \
                     another store"
                ));
            }
        };
        self.start_uploading(&db, held)?;
        Ok(())
    }

    /// Starts uploading as the holder of `held`, then admits writes.
    fn start_uploading(&self, db: &Arc<Database>, held: u64) -> Result<(), String> {
        let cfg = &self.0.cfg;
        // Commit times go on from the newest in the store, not back from
        // it, whatever this node's clock says (point-in-time restore).
        if let Ok(rt) = runtime() {
            let handles: Vec<_> = db
                .catalog()
                .handles()
                .into_iter()
                .filter(|h| h.is_replicated())
                .collect();
            let newest = rt.block_on(async {
                use futures_util::StreamExt;
                futures_util::stream::iter(handles.iter().map(|h| async move {
                    (
                        h,
                        super::restore::newest_commit_us(&cfg.store, &h.name).await,
                    )
                }))
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
            });
            for (h, r) in newest {
                match r {
                    Ok(Some(us)) => h.raise_commit_floor(us),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(table = %h.name, error = %e, "cannot read the newest commit time in the store; commit times follow this node's clock")
                    }
                }
            }
        }
        let (weak, status) = (Arc::downgrade(db), self.0.status.clone());
        let owner = Owner {
            epoch: held,
            on_fenced: Arc::new(move |why| {
                if let Some(db) = weak.upgrade() {
                    fence(&db, &status, why);
                }
            }),
        };
        let u = Uploader::start_owned(db.catalog(), cfg.store.clone(), cfg.upload.clone(), owner)
            .map_err(|e| format!("cannot start the uploader: {e}"))?;
        let up = u.status.clone();
        self.work().uploader = Some(u);
        self.start_backups();
        // Admits nothing if the uploader found this node fenced already.
        db.admit_writes();
        self.0.status.update(|s| {
            s.role = Role::Primary;
            s.epoch = held;
            s.upload = Some(up);
            s.replica = None;
            s.writable = db.write_refusal().is_none();
        });
        Ok(())
    }

    /// Starts as a replica: follows the store.
    pub fn start_replica(&self) -> Result<(), String> {
        let held = epoch::read_local(&self.0.cfg.data_dir)?.map_or(0, |c| c.epoch);
        self.0.status.update(|s| s.epoch = held);
        self.start_following()
    }

    fn start_following(&self) -> Result<(), String> {
        let cfg = &self.0.cfg;
        let r = ReplicaRunner::start(cfg.store.clone(), &cfg.data_dir, cfg.replica.clone())
            .map_err(|e| format!("cannot start following the store: {e}"))?;
        let rs = r.status.clone();
        self.work().follower = Some(r);
        self.0.status.update(|s| {
            s.role = Role::Replica;
            s.replica = Some(rs);
            s.upload = None;
            s.writable = false;
            // A fenced primary that follows the store is a plain replica.
            s.fenced = None;
        });
        Ok(())
    }

    /// Stops uploading or following (at shutdown, after the database closed).
    pub fn shutdown(&self) {
        let w = std::mem::take(&mut *self.work());
        drop(w);
    }

    fn switch_to_replica(&self, stage: Duration) -> Result<String, String> {
        let db = self.db()?;
        let st = self.0.status.state();
        let fenced = db.is_fenced();
        db.drain_commits("this node is switching to replica: send writes to the primary");
        self.0.status.update(|s| s.writable = false);
        if fenced {
            // Commits prepared before the fence may have been written since.
            let behind: Vec<Unshipped> = unshipped(&db);
            if !behind.is_empty() {
                return Err(format!(
                    "this node was fenced holding txns the store never received ({}): its \
                     tables differ from the new primary's, so it cannot follow it. Re-ingest \
                     those rows into the new primary, then rebuild this node as a replica from \
                     an empty data directory",
                    describe(&behind)
                ));
            }
        } else if let Err(why) = self.wait_stored(&db, &st, stage) {
            db.admit_writes(); // not if it was fenced meanwhile
            let writable = db.write_refusal().is_none();
            self.0.status.update(|s| s.writable = writable);
            return Err(format!(
                "{why}; the node stays primary{}",
                if writable {
                    " and takes writes"
                } else {
                    " (fenced: no writes)"
                }
            ));
        }
        let (u, b) = {
            let mut w = self.work();
            (w.uploader.take(), w.backups.take())
        };
        drop(b);
        drop(u);
        if let Err(e) = db.become_replica(stage) {
            let why = format!(
                "applying the committed txns failed ({e}); the node refuses writes and uploads \
                 nothing: restart it"
            );
            return Err(why);
        }
        self.start_following()?;
        Ok(if fenced {
            "fenced primary now follows the store".into()
        } else {
            "every committed txn is in the store; following it as a replica".into()
        })
    }

    /// Waits, at most `stage`, until the store holds every committed txn
    /// of every replicated table (woken by each upload that lands).
    fn wait_stored(&self, db: &Database, st: &RoleState, stage: Duration) -> Result<(), String> {
        let rt = runtime()?;
        let deadline = Instant::now() + stage;
        for h in db.catalog().handles() {
            if !h.is_replicated() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = h.wait_uploaded(h.written_txn(), || db.is_fenced());
            match rt.block_on(async { tokio::time::timeout(left, wait).await }) {
                Ok(true) => {}
                Ok(false) => {
                    let why = st
                        .upload
                        .as_ref()
                        .and_then(|u| u.tables().get(&h.name).and_then(|t| t.stopped.clone()))
                        .unwrap_or_else(|| "this node was fenced".into());
                    return Err(format!("upload of table {} stopped: {why}", h.name));
                }
                Err(_) => {
                    return Err(format!(
                    "the store did not receive every committed txn within {stage:?} ({} behind)",
                    describe(&unshipped(db))
                ))
                }
            }
        }
        Ok(())
    }

    fn switch_to_primary(&self, stage: Duration) -> Result<String, String> {
        let db = self.db()?;
        let cfg = &self.0.cfg;
        if !db.is_read_only() || !db.catalog().handles().is_empty() {
            return Err("this node holds its tables open for writing: it is not a replica".into());
        }
        let f = self.work().follower.take();
        drop(f); // joined: what it applied is checkpointed
        self.0.status.update(|s| s.replica = None);
        let claimed = match self.claim_history(stage) {
            Ok(e) => e,
            Err(why) => {
                let back = self.start_following();
                return Err(match back {
                    Ok(()) => format!("{why}; the node follows the store again as a replica"),
                    Err(e) => format!("{why}; following the store again failed too: {e}"),
                });
            }
        };
        if let Err(e) = db.become_primary("the node is switching to primary") {
            return Err(format!(
                "holding epoch {claimed} but cannot open the tables for writing ({e}); the node \
                 refuses writes: restart it with --role primary"
            ));
        }
        self.start_uploading(&db, claimed)?;
        info!(epoch = claimed, node = %cfg.node_name, "promoted to primary");
        Ok(format!("holding epoch {claimed}; writes admitted"))
    }

    /// Catches up with the store, claims the next epoch and opens it in
    /// every table's chain. Returns the epoch.
    fn claim_history(&self, stage: Duration) -> Result<u64, String> {
        let cfg = &self.0.cfg;
        let mut replica =
            Replica::new(cfg.store.clone(), &cfg.data_dir).map_err(|e| e.to_string())?;
        let locals = crate::table::table_names(&cfg.data_dir);
        for t in &locals {
            replica.applied_txn(t).map_err(|e| e.to_string())?;
        }
        let deadline = Instant::now() + stage;
        let remote = replica.remote_tables().map_err(|e| e.to_string())?;
        for t in &remote {
            replica
                .sync_table(t)
                .map_err(|e| format!("catching up with the store: {e}"))?;
            if Instant::now() > deadline {
                return Err(format!("catching up with the store took over {stage:?}"));
            }
        }
        let latest = replica.block_on(epoch::latest(&cfg.store))?;
        let held = epoch::read_local(&cfg.data_dir)?.map_or(0, |c| c.epoch);
        let c = Claim {
            epoch: latest.max(held) + 1,
            node: cfg.node_name.clone(),
            claimed_at_us: now_us(),
        };
        replica
            .block_on(epoch::claim(&cfg.store, &c))
            .map_err(|e| format!("cannot claim epoch {}: {e}", c.epoch))?;
        epoch::write_local(&cfg.data_dir, &c)?;
        info!(
            epoch = c.epoch,
            "claimed the next epoch of the store's history"
        );
        // From here the old primary is fenced at its next upload or check;
        // the epoch-start segments make sure it cannot extend any chain.
        let held = c.epoch;
        self.open_epoch(&mut replica, &c).map_err(|e| {
            format!(
                "epoch {held} is claimed, so the previous primary (if alive) is fenced at its \
                     next check, but it could not be opened in every table ({e}): no node takes \
                     writes now. Run SWITCH ROLE TO PRIMARY again"
            )
        })?;
        Ok(held)
    }

    /// Opens the claimed epoch in every table of the store and closes the
    /// catalog to older primaries.
    fn open_epoch(&self, replica: &mut Replica, c: &Claim) -> Result<(), String> {
        let cfg = &self.0.cfg;
        // Listed again after the claim: a table whose first segment landed
        // since the catch-up is opened too.
        let remote = replica.remote_tables().map_err(|e| e.to_string())?;
        let mut opened = std::collections::BTreeSet::new();
        for t in &remote {
            self.open_epoch_in(replica, t, None, c.epoch)?;
            opened.insert(t.clone());
        }
        // Tables announced whose first segment has not landed (the old
        // primary may land it yet): opened from the announced schema. Then
        // the epoch marker closes the catalog to older primaries, after
        // opening any table announced while it was being written.
        let seqs = replica
            .block_on(catalog::seqs(&cfg.store))
            .map_err(|e| format!("listing the catalog: {e}"))?;
        for &seq in &seqs {
            match replica.block_on(catalog::read(&cfg.store, seq))? {
                Some(catalog::Entry::Table(a)) if opened.insert(a.table.clone()) => {
                    self.open_epoch_in(replica, &a.table, Some(&a), c.epoch)?;
                }
                Some(catalog::Entry::Epoch(e)) if e > c.epoch => {
                    return Err(format!(
                        "epoch {e} was started while this node was opening epoch {}",
                        c.epoch
                    ))
                }
                _ => {}
            }
        }
        let marker = catalog::Entry::Epoch(c.epoch);
        let mut seq = seqs.last().map_or(0, |s| s + 1);
        loop {
            match replica.block_on(catalog::put_at(&cfg.store, seq, &marker))? {
                None => break,
                Some(catalog::Entry::Epoch(e)) if e == c.epoch => break,
                Some(catalog::Entry::Epoch(e)) if e > c.epoch => {
                    return Err(format!(
                        "epoch {e} was started while this node was opening epoch {}",
                        c.epoch
                    ))
                }
                Some(catalog::Entry::Table(a)) => {
                    if opened.insert(a.table.clone()) {
                        self.open_epoch_in(replica, &a.table, Some(&a), c.epoch)?;
                    }
                }
                Some(catalog::Entry::Epoch(_)) => {}
            }
            seq += 1;
        }
        replica.checkpoint_all().map_err(|e| e.to_string())
    }

    /// Opens `epoch` in `table`'s chain (an epoch-start segment after its
    /// end; at txn 1 from the announced schema when the chain is empty) and
    /// marks it uploaded there.
    fn open_epoch_in(
        &self,
        replica: &mut Replica,
        table: &str,
        announced: Option<&catalog::Announcement>,
        epoch: u64,
    ) -> Result<(), String> {
        let cfg = &self.0.cfg;
        let err =
            |e: super::ReplicationError| format!("opening epoch {epoch} in table {table}: {e}");
        let mut started = None;
        if let Some(a) = announced {
            let has_segments = !replica
                .block_on(cfg.store.list_after(
                    &super::table_prefix(&cfg.store, table),
                    &super::segment_key(&cfg.store, table, 0),
                ))
                .map_err(|e| format!("listing table {table}: {e}"))?
                .is_empty();
            if !has_segments {
                let Some(schema) = &a.schema else {
                    warn!(table, "announced without a schema (catalog version 1) and without segments: its epoch cannot be opened");
                    return Ok(());
                };
                started = replica
                    .start_epoch_new(table, a.table_id, schema, epoch)
                    .map_err(err)?;
            }
        }
        let (txn, xxh3) = match started {
            Some(s) => s,
            None => replica
                .start_epoch(table, epoch, EPOCH_START_TRIES)
                .map_err(err)?,
        };
        let wal_dir = cfg.data_dir.join(table).join(crate::table::files::WAL_DIR);
        let mark = crate::wal::retention::UploadMark {
            txn,
            store_id: cfg.store.config.id(),
            segment_xxh3: Some(xxh3),
            epoch,
        };
        crate::wal::retention::write_upload_mark(&wal_dir, mark)
            .map_err(|e| format!("writing {}: {e}", wal_dir.display()))
    }

    /// Takes a snapshot now, if this node is a primary that may write.
    fn snapshot_now(&self) -> Result<super::snapshot::SnapshotReport, String> {
        let _one = self.0.backup_lock.lock().unwrap_or_else(|p| p.into_inner());
        let db = self.db()?;
        let st = self.0.status.state();
        if st.role != Role::Primary || st.switching.is_some() {
            return Err(format!(
                "snapshots are taken by the primary; this node is {}{}",
                st.role.name(),
                if st.switching.is_some() {
                    " (switching)"
                } else {
                    ""
                }
            ));
        }
        if let Some(f) = &st.fenced {
            return Err(format!(
                "this node is fenced ({}): the new primary takes snapshots",
                f.reason
            ));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("basalt-snapshot")
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let stats = self.0.status.backup.clone();
        let cfg = &self.0.cfg;
        let r = rt.block_on(super::snapshot::take(
            &db,
            cfg.backup.store.as_ref().unwrap_or(&cfg.store),
            &cfg.store,
            st.epoch,
            cfg.backup.wait,
            &stats,
            &self.0.blocks,
        ));
        if let Err(e) = &r {
            stats
                .snapshot_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            error!(error = %e, "snapshot failed");
        }
        r
    }

    /// One retention pass, if configured.
    fn retention_pass(&self) -> Result<(), String> {
        let Some(r) = &self.0.cfg.backup.retention else {
            return Ok(());
        };
        let _one = self.0.backup_lock.lock().unwrap_or_else(|p| p.into_inner());
        let st = self.0.status.state();
        if st.role != Role::Primary || st.switching.is_some() || st.fenced.is_some() {
            return Ok(());
        }
        let stats = self.0.status.backup.clone();
        let rt = runtime()?;
        let cfg = &self.0.cfg;
        let res = rt.block_on(super::snapshot::enforce(
            cfg.backup.store.as_ref().unwrap_or(&cfg.store),
            &cfg.store,
            r,
            &stats,
            st.epoch,
        ));
        if let Err(e) = &res {
            stats
                .retention_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            error!(error = %e, "retention pass failed; nothing it had not deleted is lost, it runs again");
        }
        res.map(|_| ())
    }

    /// Starts the thread that takes scheduled snapshots and runs retention.
    fn start_backups(&self) {
        let b = &self.0.cfg.backup;
        if b.interval.is_none() && b.retention.is_none() {
            return;
        }
        let me = self.clone();
        let wake = Arc::new(tokio::sync::Notify::new());
        let w = wake.clone();
        let bg = super::Background::spawn_woken("basalt-backup", wake, move |stop| {
            let Ok(rt) = runtime() else { return };
            let cfg = &me.0.cfg.backup;
            // Retention looks again at least once a minute.
            let tick = cfg
                .interval
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60))
                .max(Duration::from_millis(10));
            let snaps = me.0.cfg.backup.store.as_ref().unwrap_or(&me.0.cfg.store);
            let last = rt
                .block_on(super::snapshot::newest(snaps))
                .ok()
                .flatten()
                .map(|m| m.completed_us);
            let mut due = cfg.interval.map(|i| {
                let base = last.unwrap_or_else(now_us);
                base.saturating_add(i.as_micros() as i64)
            });
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                if let (Some(d), Some(i)) = (due, cfg.interval) {
                    if now_us() >= d {
                        let _ = me.snapshot_now();
                        due = Some(now_us().saturating_add(i.as_micros() as i64));
                    }
                }
                let _ = me.retention_pass();
                let wait = match due {
                    Some(d) => Duration::from_micros((d - now_us()).max(0) as u64).min(tick),
                    None => tick,
                };
                rt.block_on(async {
                    let _ = tokio::time::timeout(wait, w.notified()).await;
                });
            }
        });
        match bg {
            Ok(bg) => self.work().backups = Some(bg),
            Err(e) => {
                error!(error = %e, "cannot start the snapshot thread; scheduled snapshots and retention are off")
            }
        }
    }

    fn run_switch(&self, to: Role, stage: Duration) {
        let started_us = now_us();
        let t0 = Instant::now();
        info!(to = to.name(), "role switch started");
        let r = match to {
            Role::Primary => self.switch_to_primary(stage),
            Role::Replica => self.switch_to_replica(stage),
        };
        let millis = t0.elapsed().as_secs_f64() * 1e3;
        let (ok, message) = match r {
            Ok(m) => {
                info!(to = to.name(), millis, "role switch done: {m}");
                (true, m)
            }
            Err(m) => {
                error!(to = to.name(), "role switch failed: {m}");
                (false, m)
            }
        };
        self.0.status.update(|s| {
            s.switching = None;
            s.last_switch = Some(SwitchReport {
                to: to.name(),
                ok,
                message,
                started_us,
                millis,
            });
        });
    }
}

impl RoleControl for Node {
    fn switch_role(&self, to: Role, stage_timeout: Duration) -> Result<RoleState, String> {
        let mut refused = None;
        self.0.status.update(|s| {
            if let Some(t) = s.switching {
                refused = Some(format!("a switch to {} is in flight", t.name()));
            } else if s.role == to {
                refused = Some(match (to, &s.fenced) {
                    (Role::Primary, Some(_)) => "this node is a fenced primary: a newer primary \
                        holds the store's history. SWITCH ROLE TO REPLICA first (it follows the \
                        new primary), then promote it if it should take over again"
                        .to_string(),
                    _ => format!("this node is already {}", to.name()),
                });
            } else {
                s.switching = Some(to);
            }
        });
        if let Some(r) = refused {
            tracing::warn!(target: "basalt::audit", action = "switch_role", to = to.name(), refused = %r, "role switch refused");
            return Err(r);
        }
        tracing::info!(target: "basalt::audit", action = "switch_role", to = to.name(), "role switch started");
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("basalt-switch".into())
            .spawn(move || me.run_switch(to, stage_timeout));
        if let Err(e) = spawned {
            self.0.status.update(|s| s.switching = None);
            return Err(format!("cannot start the switch: {e}"));
        }
        Ok(self.0.status.state())
    }

    fn role_state(&self) -> RoleState {
        self.0.status.state()
    }

    fn backup(&self) -> Result<super::snapshot::SnapshotReport, String> {
        let r = self.snapshot_now();
        match &r {
            Ok(s) => {
                tracing::info!(target: "basalt::audit", action = "backup", snapshot = s.seq, tables = s.tables, "BACKUP DATABASE done")
            }
            Err(e) => {
                tracing::warn!(target: "basalt::audit", action = "backup", error = %e, "BACKUP DATABASE failed")
            }
        }
        r
    }
}

/// Marks the node fenced: writes refused for good, the txns the store
/// never received reported.
fn fence(db: &Database, status: &NodeStatus, why: String) {
    db.fence(format!(
        "{why}. This node takes no writes: send them to the new primary"
    ));
    let unshipped = unshipped(db);
    if unshipped.is_empty() {
        error!("{why}: writes refused; every txn this node committed is in the store");
    } else {
        error!(
            unshipped = %describe(&unshipped),
            "{why}: writes refused; these committed txns never reached the store (they stay in this node's WAL and tables; re-ingest them into the new primary)"
        );
    }
    status.update(|s| {
        s.writable = false;
        s.fenced = Some(Fenced {
            reason: why,
            at_us: now_us(),
            unshipped,
        });
    });
}

/// Per replicated table, the committed txns not in the store.
fn unshipped(db: &Database) -> Vec<Unshipped> {
    super::status::unshipped(&db.catalog())
}

fn describe(u: &[Unshipped]) -> String {
    u.iter()
        .map(|u| format!("{} txns {}..={}", u.table, u.first_txn, u.last_txn))
        .collect::<Vec<_>>()
        .join(", ")
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// This host's name and the data directory: how epoch claims name a node.
pub fn default_node_name(data_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!("{host}:{}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::{Compression, Link, SegmentWriter};
    use object_store::{ObjectStoreExt, PutMode, PutPayload};

    /// The old primary (epoch 1) has table `t` in the store and has
    /// announced table `x` whose first segment has not landed. A promotion
    /// opens epoch 2 in both (in `x` from the announced schema) and closes
    /// the catalog: every next move of the old primary fails.
    #[test]
    fn a_promotion_fences_every_table_including_one_announced_without_segments() {
        let (store, rt) = crate::store::memory_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let schema = crate::gen::CpuGenerator::default().schema().clone();
        let put = |key: object_store::path::Path, b: bytes::Bytes| {
            rt.block_on(
                store
                    .inner
                    .put_opts(&key, PutPayload::from(b), PutMode::Create.into()),
            )
        };
        let old = Claim {
            epoch: 1,
            node: "a".into(),
            claimed_at_us: 1,
        };
        rt.block_on(epoch::claim(&store, &old)).unwrap();
        let announce = |t: &str, id: u64, next: &mut Option<u64>| {
            let a = catalog::Announcement {
                table: t.into(),
                table_id: id,
                epoch: 1,
                schema: Some(schema.clone()),
            };
            rt.block_on(catalog::announce(&store, &a, next))
        };
        let mut next = None;
        announce("t", 7, &mut next).unwrap();
        let mut w = SegmentWriter::new(7, "t", &schema).unwrap();
        w.push_aborted(1).unwrap();
        w.push_aborted(2).unwrap();
        let seg = w
            .finish_linked(
                Link {
                    epoch: 1,
                    prev_xxh3: 0,
                },
                Compression::None,
            )
            .unwrap();
        put(super::super::segment_key(&store, "t", 1), seg.into_bytes()).unwrap();
        announce("x", 8, &mut next).unwrap();

        let status = Arc::new(NodeStatus::new(
            "memory::".into(),
            store.stats.clone(),
            None,
            RoleState::new(Role::Replica),
        ));
        let node = Node::new(
            NodeConfig {
                data_dir: dir.path().to_path_buf(),
                store: store.clone(),
                upload: UploadOptions::default(),
                replica: ReplicaOptions::default(),
                node_name: "b".into(),
                backup: Default::default(),
            },
            status,
        );
        assert_eq!(node.claim_history(Duration::from_secs(10)).unwrap(), 2);

        // Epoch-start segments: t at txn 3, x at txn 1 (its first).
        for (t, txn, prev_epoch_segments) in [("t", 3u64, true), ("x", 1, false)] {
            let key = super::super::segment_key(&store, t, txn);
            let b = rt
                .block_on(async { store.inner.get(&key).await?.bytes().await })
                .unwrap();
            let seg = crate::segment::Segment::from_slice(&b).unwrap();
            let h = seg.header();
            assert_eq!(
                (h.epoch, h.first_txn, h.last_txn, h.row_count),
                (2, txn, txn, 0)
            );
            assert_eq!(h.prev_xxh3 != Some(0), prev_epoch_segments);
            // Applied here, with the upload mark at it.
            let mark = crate::wal::retention::read_upload_mark(
                &dir.path().join(t).join(crate::table::files::WAL_DIR),
            );
            assert_eq!((mark.txn, mark.epoch), (txn, 2));
            let r = crate::table::TableReader::open(dir.path(), t).unwrap();
            assert_eq!(r.state().unwrap().txn, txn);
        }
        // The old primary: its next segment of t, its first of x, and any
        // new announcement are all refused.
        let mut w = SegmentWriter::new(7, "t", &schema).unwrap();
        w.push_aborted(3).unwrap();
        let seg = w.finish(Compression::None).unwrap();
        assert!(matches!(
            put(super::super::segment_key(&store, "t", 3), seg.into_bytes()),
            Err(object_store::Error::AlreadyExists { .. })
        ));
        let mut w = SegmentWriter::new(8, "x", &schema).unwrap();
        w.push_aborted(1).unwrap();
        let seg = w.finish(Compression::None).unwrap();
        assert!(matches!(
            put(super::super::segment_key(&store, "x", 1), seg.into_bytes()),
            Err(object_store::Error::AlreadyExists { .. })
        ));
        match announce("y", 9, &mut next) {
            Err(catalog::AnnounceError::Fenced(m)) => assert!(m.contains("epoch 2"), "{m}"),
            other => panic!("expected the old primary fenced, got {other:?}"),
        }
    }
}
