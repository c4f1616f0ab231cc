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

/// Everything `/status` and `/metrics` read; built once at start-up.
#[derive(Debug)]
pub struct NodeStatus {
    pub role: Role,
    /// The store's connection string, secrets masked.
    pub store: String,
    pub store_stats: Arc<StoreStats>,
    /// The primary's tables.
    pub catalog: Option<Catalog>,
    pub upload: Option<Arc<UploadStatus>>,
    pub replica: Option<Arc<ReplicaStatus>>,
}

/// Bytes of WAL files under a table directory's `_wal/`.
fn wal_bytes(table_dir: &Path) -> u64 {
    let Ok(shards) = std::fs::read_dir(table_dir.join(crate::table::files::WAL_DIR)) else {
        return 0;
    };
    shards
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flat_map(|files| files.flatten())
        .filter_map(|f| f.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
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
    fn primary_tables(&self) -> Vec<PrimaryTable> {
        let uploads = self.upload.as_ref().map(|u| u.tables()).unwrap_or_default();
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
        let mut tables = serde_json::Map::new();
        match self.role {
            Role::Primary => {
                for t in self.primary_tables() {
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
                if let Some(r) = &self.replica {
                    for (name, t) in r.tables() {
                        tables.insert(name, serde_json::to_value(t).unwrap_or(Value::Null));
                    }
                }
            }
        }
        let mut out = json!({
            "role": self.role.name(),
            "store": self.store,
            "store_requests": self.store_stats.total.snapshot(),
            "tables": tables,
        });
        if let Some(r) = &self.replica {
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
        let mut m = Metrics::default();
        m.gauge(
            "basalt_node_role",
            "1 for the role this node runs as.",
            &[("role", self.role.name())],
            1.0,
        );
        let now = now_us();
        for t in self.primary_tables() {
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
        if let Some(r) = &self.replica {
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
