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
}

/// Role switches as the SQL front sees them.
pub trait RoleControl: Send + Sync {
    /// Starts a switch to `to`, each stage bounded by `stage_timeout`;
    /// returns the state once it is accepted (the switch runs on).
    fn switch_role(&self, to: Role, stage_timeout: Duration) -> Result<RoleState, String>;
    /// The role and what goes with it, now.
    fn role_state(&self) -> RoleState;
}

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
}

#[derive(Default)]
struct Work {
    uploader: Option<Uploader>,
    follower: Option<ReplicaRunner>,
}

impl Node {
    pub fn new(cfg: NodeConfig, status: Arc<NodeStatus>) -> Node {
        Node(Arc::new(Inner {
            cfg,
            db: OnceLock::new(),
            work: Mutex::new(Work::default()),
            status,
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
                warn!(epoch = c.epoch, error = %e, "cannot reach the object store to confirm ownership; starting as the holder of the epoch this node last held (the uploader checks again)");
                c.epoch
            }
            (None, Err(e)) => {
                return Err(format!(
                    "cannot claim ownership of the object store's history: {e}"
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
        self.0.status.update(|s| {
            s.role = Role::Primary;
            s.epoch = held;
            s.upload = Some(up);
            s.replica = None;
            s.writable = true;
            s.fenced = None;
        });
        db.admit_writes();
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
        if let Some(f) = &st.fenced {
            if !f.unshipped.is_empty() {
                return Err(format!(
                    "this node was fenced holding txns the store never received ({}): its tables \
                     differ from the new primary's, so it cannot follow it. Re-ingest those rows \
                     into the new primary, then rebuild this node as a replica from an empty data \
                     directory",
                    describe(&f.unshipped)
                ));
            }
        }
        let fenced = st.fenced.is_some();
        db.drain_commits("this node is switching to replica: send writes to the primary");
        self.0.status.update(|s| s.writable = false);
        if !fenced {
            // Every committed txn into the store first.
            let deadline = Instant::now() + stage;
            loop {
                let handles = db.catalog().handles();
                let behind: Vec<_> = handles
                    .iter()
                    .filter(|h| h.is_replicated() && h.uploaded_txn() < h.written_txn())
                    .collect();
                if behind.is_empty() {
                    break;
                }
                let stopped = st
                    .upload
                    .as_ref()
                    .and_then(|u| u.tables().into_values().find_map(|t| t.stopped));
                let why = if let Some(s) = stopped {
                    Some(format!("upload stopped: {s}"))
                } else if Instant::now() >= deadline {
                    Some(format!(
                        "the store did not receive every committed txn within {stage:?} ({} behind)",
                        describe(
                            &behind
                                .iter()
                                .map(|h| Unshipped {
                                    table: h.name.clone(),
                                    first_txn: h.uploaded_txn() + 1,
                                    last_txn: h.written_txn(),
                                })
                                .collect::<Vec<_>>()
                        )
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    if self.0.status.state().fenced.is_none() {
                        db.admit_writes();
                        self.0.status.update(|s| s.writable = true);
                    }
                    return Err(format!("{why}; the node stays primary"));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let u = self.work().uploader.take();
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

    fn switch_to_primary(&self, stage: Duration) -> Result<String, String> {
        let db = self.db()?;
        let cfg = &self.0.cfg;
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
        let store_id = cfg.store.config.id();
        for t in &remote {
            let (txn, xxh3) = replica
                .start_epoch(t, c.epoch, EPOCH_START_TRIES)
                .map_err(|e| format!("opening epoch {} in table {t}: {e}", c.epoch))?;
            let wal_dir = cfg.data_dir.join(t).join(crate::table::files::WAL_DIR);
            let mark = crate::wal::retention::UploadMark {
                txn,
                store_id,
                segment_xxh3: Some(xxh3),
                epoch: c.epoch,
            };
            crate::wal::retention::write_upload_mark(&wal_dir, mark)
                .map_err(|e| format!("writing {}: {e}", wal_dir.display()))?;
        }
        replica.checkpoint_all().map_err(|e| e.to_string())?;
        Ok(c.epoch)
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
            } else if s.role == to && (to == Role::Replica || s.fenced.is_none()) {
                refused = Some(format!("this node is already {}", to.name()));
            } else {
                s.switching = Some(to);
            }
        });
        if let Some(r) = refused {
            return Err(r);
        }
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
}

/// Marks the node fenced: writes refused for good, the txns the store
/// never received reported.
fn fence(db: &Database, status: &NodeStatus, why: String) {
    db.fence(format!(
        "{why}. This node takes no writes: send them to the new primary"
    ));
    let unshipped: Vec<Unshipped> = db
        .catalog()
        .handles()
        .into_iter()
        .filter(|h| h.is_replicated() && h.uploaded_txn() < h.written_txn())
        .map(|h| Unshipped {
            table: h.name.clone(),
            first_txn: h.uploaded_txn() + 1,
            last_txn: h.written_txn(),
        })
        .collect();
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
