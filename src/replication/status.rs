//! What a node tells about replication: `GET /status` (JSON) and
//! `GET /metrics` (Prometheus text exposition format 0.0.4).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use super::replica::ReplicaStatus;
use super::uploader::UploadStatus;
use crate::db::{now_us, Catalog};
use crate::store::StoreStats;

/// What the node does in replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Takes writes, uploads segments.
    Primary,
    /// Read-only; applies what a primary uploaded.
    Replica,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// Everything `/status`, `/metrics` and `/lifecycle` read. The role part
/// changes with a role switch.
#[derive(Debug)]
pub struct NodeStatus {
    /// The store's connection string, secrets masked.
    pub store: String,
    pub store_stats: Arc<StoreStats>,
    /// The database's tables (a primary's; none while a replica).
    pub catalog: Option<Catalog>,
    state: std::sync::Mutex<RoleState>,
    /// Snapshots taken and what retention deleted.
    pub backup: Arc<super::snapshot::BackupStats>,
}

/// Txns a fenced primary committed that the store never received: the
/// data an unplanned failover lost, for an operator to re-ingest (they are
/// still in this node's WAL and table files).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Unshipped {
    pub table: String,
    pub first_txn: u64,
    pub last_txn: u64,
}

/// Per replicated table of `catalog`, the committed txns not in the store.
pub fn unshipped(catalog: &Catalog) -> Vec<Unshipped> {
    catalog
        .handles()
        .into_iter()
        .filter(|h| h.is_replicated() && h.uploaded_txn() < h.written_txn())
        .map(|h| Unshipped {
            table: h.name.clone(),
            first_txn: h.uploaded_txn() + 1,
            last_txn: h.written_txn(),
        })
        .collect()
}

/// Why and when this node stopped being the primary without a switch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fenced {
    pub reason: String,
    pub at_us: i64,
    pub unshipped: Vec<Unshipped>,
}

/// The outcome of the last role switch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SwitchReport {
    pub to: &'static str,
    pub ok: bool,
    /// What happened, or why it failed and in which state the node is.
    pub message: String,
    pub started_us: i64,
    pub millis: f64,
}

/// The node's role and what goes with it.
#[derive(Clone, Debug)]
pub struct RoleState {
    pub role: Role,
    /// The epoch this node holds as primary, or last held (0: never).
    pub epoch: u64,
    /// The role a switch in flight goes to.
    pub switching: Option<Role>,
    /// Writes are admitted.
    pub writable: bool,
    pub fenced: Option<Fenced>,
    pub last_switch: Option<SwitchReport>,
    pub upload: Option<Arc<UploadStatus>>,
    pub replica: Option<Arc<ReplicaStatus>>,
}

impl RoleState {
    pub fn new(role: Role) -> RoleState {
        RoleState {
            role,
            epoch: 0,
            switching: None,
            writable: false,
            fenced: None,
            last_switch: None,
            upload: None,
            replica: None,
        }
    }
}

/// Bytes of WAL files under a table directory's `_wal/`.
fn wal_bytes(table_dir: &Path) -> u64 {
    use crate::disk;
    let wal = table_dir.join(crate::table::files::WAL_DIR);
    let Ok(shards) = disk::read_dir(&wal) else {
        return 0;
    };
    shards
        .into_iter()
        .filter(|s| s.is_dir)
        .flat_map(|s| {
            let dir = wal.join(&s.name);
            disk::read_dir(&dir)
                .unwrap_or_default()
                .into_iter()
                .filter(|f| !f.is_dir)
                .map(move |f| disk::len(&dir.join(f.name)).unwrap_or(0))
        })
        .sum()
}

/// One primary table's replication position.
struct PrimaryTable {
    name: String,
    replicated: bool,
    /// Durable in the WAL: every acknowledged commit.
    committed_txn: u64,
    /// Applied into the table files (visible to readers).
    applied_txn: u64,
    uploaded_txn: u64,
    wal_bytes: u64,
    upload: super::uploader::TableUploadStatus,
}

impl NodeStatus {
    pub fn new(
        store: String,
        store_stats: Arc<StoreStats>,
        catalog: Option<Catalog>,
        state: RoleState,
    ) -> NodeStatus {
        NodeStatus {
            store,
            store_stats,
            catalog,
            state: std::sync::Mutex::new(state),
            backup: Arc::default(),
        }
    }

    /// The role part, as it is now.
    pub fn state(&self) -> RoleState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the role part.
    pub fn update(&self, f: impl FnOnce(&mut RoleState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The role part, with a fenced node's unshipped txns as they are now
    /// (a commit in flight when it was fenced may land after).
    fn current(&self) -> RoleState {
        let mut st = self.state();
        if let (Some(f), Some(c)) = (&mut st.fenced, &self.catalog) {
            f.unshipped = unshipped(c);
        }
        st
    }

    /// `GET /lifecycle`: the role, a switch in flight, and whether the node
    /// is ready for what its role serves.
    pub fn lifecycle_json(&self) -> Value {
        let st = self.current();
        let ready = st.switching.is_none()
            && st.fenced.is_none()
            && match st.role {
                Role::Replica => st.replica.is_some(),
                Role::Primary => st.writable,
            };
        json!({
            "role": st.role.name(),
            "epoch": st.epoch,
            "switch_in_flight": st.switching.map(Role::name),
            "ready": ready,
            "writable": st.writable,
            "fenced": st.fenced,
            "last_switch": st.last_switch,
        })
    }

    fn primary_tables(&self, st: &RoleState) -> Vec<PrimaryTable> {
        let uploads = st.upload.as_ref().map(|u| u.tables()).unwrap_or_default();
        let Some(catalog) = &self.catalog else {
            return Vec::new();
        };
        catalog
            .handles()
            .into_iter()
            .map(|h| PrimaryTable {
                replicated: h.is_replicated(),
                committed_txn: h.written_txn(),
                applied_txn: h.resolved_txn(),
                uploaded_txn: h.uploaded_txn(),
                wal_bytes: wal_bytes(h.dir()),
                upload: uploads.get(&h.name).cloned().unwrap_or_default(),
                name: h.name.clone(),
            })
            .collect()
    }

    /// `GET /status`.
    pub fn status_json(&self) -> Value {
        let st = self.current();
        let mut tables = serde_json::Map::new();
        match st.role {
            Role::Primary => {
                for t in self.primary_tables(&st) {
                    if !t.replicated {
                        tables.insert(
                            t.name.clone(),
                            json!({"replicated": false, "committed_txn": t.committed_txn, "applied_txn": t.applied_txn}),
                        );
                        continue;
                    }
                    tables.insert(
                        t.name.clone(),
                        json!({
                            "replicated": t.replicated,
                            "committed_txn": t.committed_txn,
                            "applied_txn": t.applied_txn,
                            "uploaded_txn": t.uploaded_txn,
                            "backlog_txns": t.committed_txn.saturating_sub(t.uploaded_txn),
                            "wal_bytes": t.wal_bytes,
                            "segments_uploaded": t.upload.segments_uploaded,
                            "bytes_uploaded": t.upload.bytes_uploaded,
                            "retries": t.upload.retries,
                            "last_error": t.upload.last_error,
                            "stopped": t.upload.stopped,
                        }),
                    );
                }
            }
            Role::Replica => {
                if let Some(r) = &st.replica {
                    for (name, t) in r.tables() {
                        tables.insert(name, serde_json::to_value(t).unwrap_or(Value::Null));
                    }
                }
            }
        }
        let mut out = json!({
            "role": st.role.name(),
            "epoch": st.epoch,
            "writable": st.writable,
            "switch_in_flight": st.switching.map(Role::name),
            "fenced": st.fenced,
            "store": self.store,
            "store_requests": self.store_stats.total.snapshot(),
            "tables": tables,
        });
        if let Some(r) = &st.replica {
            let last = r.last_sync_us.load(Ordering::Acquire);
            out["last_sync_age_seconds"] = if last == 0 {
                Value::Null
            } else {
                json!((now_us() - last) as f64 / 1e6)
            };
            out["discover_error"] = json!(r.discover_error());
        }
        out
    }

    /// `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        let st = self.state();
        let mut m = Metrics::default();
        m.gauge(
            "basalt_node_role",
            "1 for the role this node runs as.",
            &[("role", st.role.name())],
            1.0,
        );
        m.gauge(
            "basalt_node_epoch",
            "The epoch this node holds as primary, or last held (0: never).",
            &[],
            st.epoch as f64,
        );
        m.gauge(
            "basalt_node_writable",
            "1 while the node admits writes.",
            &[],
            f64::from(u8::from(st.writable)),
        );
        m.gauge(
            "basalt_node_fenced",
            "1 once this node found itself superseded by a newer primary (see /status).",
            &[],
            f64::from(u8::from(st.fenced.is_some())),
        );
        {
            use std::sync::atomic::Ordering::Relaxed;
            let b = &self.backup;
            for (name, help, v) in [
                (
                    "basalt_snapshots_taken_total",
                    "Snapshots this node completed (BACKUP DATABASE and --snapshot-interval).",
                    &b.snapshots_taken,
                ),
                (
                    "basalt_snapshot_failures_total",
                    "Snapshots that failed (see the log).",
                    &b.snapshot_failures,
                ),
                (
                    "basalt_snapshot_parts_uploaded_total",
                    "Snapshot parts uploaded.",
                    &b.parts_uploaded,
                ),
                (
                    "basalt_snapshot_part_bytes_uploaded_total",
                    "Bytes of snapshot parts uploaded.",
                    &b.part_bytes_uploaded,
                ),
                (
                    "basalt_snapshot_parts_reused_total",
                    "Snapshot parts an earlier snapshot had already uploaded.",
                    &b.parts_reused,
                ),
                (
                    "basalt_retention_deleted_snapshots_total",
                    "Snapshot manifests deleted by retention.",
                    &b.deleted_snapshots,
                ),
                (
                    "basalt_retention_deleted_parts_total",
                    "Snapshot parts deleted by retention.",
                    &b.deleted_parts,
                ),
                (
                    "basalt_retention_deleted_segments_total",
                    "Segments deleted by retention.",
                    &b.deleted_segments,
                ),
                (
                    "basalt_retention_deleted_bytes_total",
                    "Bytes of objects deleted by retention.",
                    &b.deleted_bytes,
                ),
                (
                    "basalt_retention_failures_total",
                    "Retention passes that failed (see the log).",
                    &b.retention_failures,
                ),
            ] {
                m.counter(name, help, &[], v.load(Relaxed) as f64);
            }
            m.gauge(
                "basalt_snapshot_last_completed_seconds",
                "When this node's last snapshot completed (Unix time; 0: none).",
                &[],
                b.last_completed_us.load(Relaxed) as f64 / 1e6,
            );
        }
        let now = now_us();
        let tables = if st.role == Role::Primary {
            self.primary_tables(&st)
        } else {
            Vec::new()
        };
        for t in tables {
            let l = [("table", t.name.as_str())];
            m.gauge(
                "basalt_table_committed_txn",
                "Last txn committed (durable in the WAL, acknowledged).",
                &l,
                t.committed_txn as f64,
            );
            m.gauge(
                "basalt_table_applied_txn",
                "Last txn applied into the table files (visible to readers).",
                &l,
                t.applied_txn as f64,
            );
            if !t.replicated {
                continue;
            }
            let backlog = t.committed_txn.saturating_sub(t.uploaded_txn);
            m.gauge(
                "basalt_upload_txn",
                "Last txn uploaded to the object store.",
                &l,
                t.uploaded_txn as f64,
            );
            m.gauge(
                "basalt_upload_backlog_txns",
                "Committed txns not yet uploaded.",
                &l,
                backlog as f64,
            );
            m.gauge(
                "basalt_upload_backlog_bytes",
                "Bytes of WAL kept on local disk until uploaded and checkpointed.",
                &l,
                t.wal_bytes as f64,
            );
            let lag = if backlog == 0 || t.upload.uploaded_commit_time_us == 0 {
                0.0
            } else {
                (now - t.upload.uploaded_commit_time_us) as f64 / 1e6
            };
            m.gauge(
                "basalt_upload_lag_seconds",
                "Age of the last uploaded txn while a backlog exists (0 when none).",
                &l,
                lag,
            );
            m.counter(
                "basalt_upload_segments_total",
                "Segments uploaded.",
                &l,
                t.upload.segments_uploaded as f64,
            );
            m.counter(
                "basalt_upload_bytes_total",
                "Segment bytes uploaded.",
                &l,
                t.upload.bytes_uploaded as f64,
            );
            m.gauge(
                "basalt_upload_retries",
                "Failed tries of the segment in flight.",
                &l,
                t.upload.retries as f64,
            );
            m.gauge(
                "basalt_upload_stopped",
                "1 when upload of the table stopped for good (see /status).",
                &l,
                f64::from(u8::from(t.upload.stopped.is_some())),
            );
        }
        if let Some(r) = &st.replica {
            for (name, t) in r.tables() {
                let l = [("table", name.as_str())];
                m.gauge(
                    "basalt_replica_applied_txn",
                    "Last txn applied on this replica.",
                    &l,
                    t.applied_txn as f64,
                );
                m.gauge(
                    "basalt_replication_lag_seconds",
                    "Primary commit to replica apply of the newest applied txn.",
                    &l,
                    t.lag_seconds,
                );
                m.counter(
                    "basalt_replica_segments_applied_total",
                    "Segments applied.",
                    &l,
                    t.segments_applied as f64,
                );
                m.counter(
                    "basalt_replica_rows_applied_total",
                    "Rows applied.",
                    &l,
                    t.rows_applied as f64,
                );
                m.gauge(
                    "basalt_replica_sync_failing",
                    "1 while syncing the table fails (see /status).",
                    &l,
                    f64::from(u8::from(t.last_error.is_some())),
                );
            }
            let last = r.last_sync_us.load(Ordering::Acquire);
            if last != 0 {
                m.gauge(
                    "basalt_replica_last_sync_age_seconds",
                    "Seconds since the last fully successful poll of the store.",
                    &[],
                    (now - last) as f64 / 1e6,
                );
            }
        }
        let mut store = vec![("", self.store_stats.total.snapshot())];
        let per_table = self.store_stats.tables();
        store.extend(per_table.iter().map(|(k, v)| (k.as_str(), *v)));
        for (table, c) in store {
            let mut l = vec![];
            if !table.is_empty() {
                l.push(("table", table));
            }
            for (op, n) in [("put", c.puts), ("get", c.gets), ("list", c.lists)] {
                let mut l = l.clone();
                l.push(("op", op));
                m.counter(
                    "basalt_store_requests_total",
                    "Object store requests (no table label: all of them).",
                    &l,
                    n as f64,
                );
            }
            for (op, n) in [("put", c.put_bytes), ("get", c.get_bytes)] {
                let mut l = l.clone();
                l.push(("op", op));
                m.counter(
                    "basalt_store_bytes_total",
                    "Object store payload bytes (no table label: all of them).",
                    &l,
                    n as f64,
                );
            }
            m.counter(
                "basalt_store_errors_total",
                "Object store requests that failed.",
                &l,
                c.errors as f64,
            );
        }
        m.finish()
    }
}

/// Prometheus text: each metric's HELP and TYPE once, then its samples.
#[derive(Default)]
struct Metrics {
    families: Vec<(String, String, &'static str, Vec<String>)>,
}

impl Metrics {
    fn sample(
        &mut self,
        name: &str,
        help: &str,
        ty: &'static str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        let mut line = name.to_string();
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let val = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(line, "{k}=\"{val}\"");
            }
            line.push('}');
        }
        let _ = write!(line, " {v}");
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.3.push(line),
            None => self
                .families
                .push((name.to_string(), help.to_string(), ty, vec![line])),
        }
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, help, "gauge", labels, v);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, help, "counter", labels, v);
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for (name, help, ty, lines) in self.families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {ty}");
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }
}
