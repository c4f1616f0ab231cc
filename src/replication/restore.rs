//! Point-in-time restore: a data directory as the store's history was at a
//! moment (or txn), from the newest snapshot at or before it plus the
//! segments after it. Also what `basalt backups` lists.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use object_store::ObjectStoreExt;

use super::replica::{Replica, Stop};
use super::snapshot::{self, Manifest, Progress};
use super::{first_txn_of, table_prefix, TABLES_PREFIX};
use crate::store::Store;

/// A restore in progress: its target, so that a rerun resumes only the same one.
pub const MARKER_FILE: &str = "_restore";

/// What a restore aims at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// Commit time on the primary, µs since the Unix epoch: every txn
    /// committed at or before it, nothing after.
    pub time_us: Option<i64>,
    /// Per table, the last txn (tables not named: `time_us`, or latest).
    pub txns: BTreeMap<String, u64>,
}

impl Target {
    fn stop(&self, table: &str) -> Stop {
        Stop {
            txn: self.txns.get(table).copied().unwrap_or(u64::MAX),
            time_us: self.time_us.unwrap_or(i64::MAX),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = self.time_us {
            parts.push(format!("time {} ({t} µs)", fmt_time(t)));
        }
        for (t, n) in &self.txns {
            parts.push(format!("{t}={n}"));
        }
        if parts.is_empty() {
            "latest".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Parses `--to-time`: RFC 3339 or µs since the Unix epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(us) = s.trim().parse::<i64>() {
        return Ok(us);
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.timestamp_micros())
        .map_err(|e| {
            format!("--to-time {s:?} is neither RFC 3339 (2026-12-03T10:15:00Z) nor µs since the epoch: {e}")
        })
}

/// Parses one `--to-txn TABLE=N`.
pub fn parse_txn(s: &str) -> Result<(String, u64), String> {
    let (t, n) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("--to-txn {s:?} is not TABLE=N"))?;
    let n = n
        .parse::<u64>()
        .map_err(|_| format!("--to-txn {s:?}: {n:?} is not a txn number"))?;
    Ok((t.to_string(), n))
}

pub fn fmt_time(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us).map_or_else(
        || format!("{us} µs"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

/// One table's chain in the store.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    /// First txn of its oldest segment (1 unless retention removed some).
    pub first_txn: u64,
    /// Last txn of its newest segment and that txn's commit time.
    pub last_txn: u64,
    pub last_commit_us: i64,
    /// Segments (first txn, bytes).
    pub segments: Vec<(u64, u64)>,
}

/// What the store can restore.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub snapshots: Vec<Manifest>,
    pub chains: BTreeMap<String, Chain>,
}

impl Summary {
    /// The earliest restorable moment: `None` when every chain starts at
    /// txn 1 (any moment); else the oldest snapshot's cut.
    pub fn earliest_us(&self) -> Option<i64> {
        if self.chains.values().all(|c| c.first_txn <= 1) {
            return None;
        }
        self.snapshots.first().map(|m| m.cut_us)
    }

    /// The newest commit the store holds.
    pub fn latest_us(&self) -> i64 {
        self.chains
            .values()
            .map(|c| c.last_commit_us)
            .max()
            .unwrap_or(0)
    }

    pub fn range_text(&self) -> String {
        format!(
            "the store restores any moment from {} to its newest commit at {}",
            self.earliest_us()
                .map_or_else(|| "its first commit".to_string(), fmt_time),
            fmt_time(self.latest_us())
        )
    }
}

/// Reads every manifest (in `snapshots`) and every table's chain (in
/// `store`): one listing per table, one GET of each table's newest segment.
/// An unreadable manifest is skipped with a warning.
pub async fn summary(store: &Store, snapshots: &Store) -> Result<Summary, String> {
    let mut out = Summary::default();
    for s in snapshot::manifest_seqs(snapshots).await? {
        match snapshot::read_manifest(snapshots, s).await {
            Ok(m) => out.snapshots.push(m),
            Err(e) if e.starts_with("snapshot manifest") => {
                tracing::warn!(error = %e, "skipping an unreadable snapshot manifest");
            }
            Err(e) => return Err(e),
        }
    }
    let prefix = store.path(&[TABLES_PREFIX]);
    let listing = store
        .inner
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|e| format!("listing {prefix}: {e}"))?;
    for p in listing.common_prefixes {
        let Some(table) = p.filename().map(str::to_string) else {
            continue;
        };
        let tp = table_prefix(store, &table);
        let mut segments = Vec::new();
        let mut l = store.inner.list(Some(&tp));
        while let Some(m) = l.next().await {
            let m = m.map_err(|e| format!("listing {tp}: {e}"))?;
            if let Some(f) = first_txn_of(&m.location) {
                segments.push((f, m.size));
            }
        }
        segments.sort_unstable();
        let Some(&(last_first, _)) = segments.last() else {
            continue;
        };
        let key = super::segment_key(store, &table, last_first);
        let seg = fetch_segment(store, &key).await?;
        let h = seg.header();
        out.chains.insert(
            table,
            Chain {
                first_txn: segments[0].0,
                last_txn: h.last_txn,
                last_commit_us: h.commit_times_us.iter().copied().max().unwrap_or(0),
                segments,
            },
        );
    }
    Ok(out)
}

/// The newest commit time in `table`'s chain in the store (its newest
/// segment's), if it has segments: one listing and one GET.
pub async fn newest_commit_us(store: &Store, table: &str) -> Result<Option<i64>, String> {
    let tp = table_prefix(store, table);
    let keys = store
        .list_after(&tp, &super::segment_key(store, table, 0))
        .await
        .map_err(|e| format!("listing {tp}: {e}"))?;
    let Some(key) = keys.iter().rev().find(|k| first_txn_of(k).is_some()) else {
        return Ok(None);
    };
    let seg = fetch_segment(store, key).await?;
    Ok(seg.header().commit_times_us.iter().copied().max())
}

/// Downloads and verifies the segment at `key`.
async fn fetch_segment(
    store: &Store,
    key: &object_store::path::Path,
) -> Result<crate::segment::Segment, String> {
    let bytes = store
        .inner
        .get(key)
        .await
        .map_err(|e| format!("reading {key}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(&bytes);
    crate::segment::Segment::from_aligned(aligned).map_err(|e| format!("object {key}: {e}"))
}

/// The snapshot a restore to `target` starts from (`None`: from txn 1),
/// or why the store cannot restore it.
pub fn choose_base<'a>(
    s: &'a Summary,
    target: &Target,
    now_us: i64,
) -> Result<Option<&'a Manifest>, String> {
    if let Some(t) = target.time_us {
        if t > now_us {
            return Err(format!(
                "--to-time {} is in the future; {}",
                fmt_time(t),
                s.range_text()
            ));
        }
    }
    for (table, n) in &target.txns {
        let Some(c) = s.chains.get(table) else {
            return Err(format!(
                "--to-txn {table}={n}: the store has no table {table} (it has: {})",
                s.chains.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        };
        if *n > c.last_txn {
            return Err(format!(
                "--to-txn {table}={n}: the store holds txns of {table} up to {}",
                c.last_txn
            ));
        }
    }
    let fits = |m: &Manifest| {
        target.time_us.is_none_or(|t| m.cut_us <= t)
            && target
                .txns
                .iter()
                .all(|(table, n)| m.table(table).is_none_or(|x| x.txn <= *n))
    };
    if let Some(m) = s.snapshots.iter().rev().find(|m| fits(m)) {
        return Ok(Some(m));
    }
    // No snapshot at or before the point: only chains that start at txn 1
    // restore it.
    let cut: Vec<&String> = s
        .chains
        .iter()
        .filter(|(_, c)| c.first_txn > 1)
        .map(|(t, _)| t)
        .collect();
    if cut.is_empty() {
        return Ok(None);
    }
    Err(format!(
        "{} is before anything the store can restore (the segments of {} before the oldest \
         snapshot were removed by retention); {}",
        target.describe(),
        cut.iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        s.range_text()
    ))
}

/// What a restore did.
#[derive(Clone, Debug, Default)]
pub struct RestoreReport {
    pub snapshot: Option<u64>,
    /// Per table, the txn restored to.
    pub tables: BTreeMap<String, u64>,
    pub bytes: u64,
    pub objects: u64,
}

/// Restores into `data_dir` (empty, or holding a killed restore of the
/// same target) from the chains in `store` and the snapshots in
/// `snapshots` (the same store, or a separate one): builds the base snapshot's tables, then applies segments
/// up to the target, each checkpointed, so a rerun resumes.
pub fn restore(
    store: &Store,
    snapshots: &Store,
    data_dir: &Path,
    target: &Target,
    progress: &Progress,
    total: &std::sync::atomic::AtomicU64,
) -> Result<RestoreReport, String> {
    let marker = data_dir.join(MARKER_FILE);
    let want = format!(
        "basalt restore\nstore {}\ntarget {}\n",
        store.config,
        target.describe()
    );
    prepare_dir(data_dir, &marker, &want)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let s = rt.block_on(summary(store, snapshots))?;
    let base = choose_base(&s, target, crate::db::now_us())?.cloned();
    drop(rt);
    // What is left to download, for the progress line.
    let mut estimate: u64 = 0;
    if let Some(m) = &base {
        for t in &m.tables {
            if !crate::disk::exists(&data_dir.join(&t.name)) {
                estimate += t.parts().map(|p| p.bytes).sum::<u64>();
            }
        }
    }
    for (name, c) in &s.chains {
        let from = base
            .as_ref()
            .and_then(|m| m.table(name))
            .map_or(0, |t| t.txn);
        let to = target.stop(name).txn;
        estimate += c
            .segments
            .iter()
            .enumerate()
            .filter(|(i, (first, _))| {
                let next = c.segments.get(i + 1).map_or(u64::MAX, |n| n.0);
                next > from + 1 && *first <= to
            })
            .map(|(_, (_, b))| b)
            .sum::<u64>();
    }
    total.store(estimate, Ordering::Relaxed);
    let mut replica = Replica::new(store.clone(), data_dir).map_err(|e| e.to_string())?;
    let mut report = RestoreReport {
        snapshot: base.as_ref().map(|m| m.seq),
        ..Default::default()
    };
    if let Some(m) = &base {
        // Tables a killed run already built are kept.
        let todo: Vec<&snapshot::TableSnapshot> = m
            .tables
            .iter()
            .filter(|t| !crate::disk::exists(&data_dir.join(&t.name)))
            .collect();
        if let Some(t) = todo.iter().find(|t| target.stop(&t.name).txn < t.txn) {
            return Err(format!(
                "table {}: the snapshot chosen holds txn {}, past the target",
                t.name, t.txn
            ));
        }
        snapshot::materialize_blocking(snapshots, data_dir, &todo, false, progress)?;
    }
    for (name, chain) in &s.chains {
        let in_base = base.as_ref().is_some_and(|m| m.table(name).is_some());
        if !in_base && chain.first_txn > 1 && !crate::disk::exists(&data_dir.join(name)) {
            // Not in the base snapshot and its chain trimmed by retention:
            // dropped before the base (retention only trims tables every
            // kept snapshot holds).
            tracing::warn!(table = %name, first_txn = chain.first_txn, "not restored: the table was dropped before the snapshot the restore starts from");
            continue;
        }
        let txn = replica
            .apply_until(name, target.stop(name), progress)
            .map_err(|e| e.to_string())?;
        if txn > 0 {
            report.tables.insert(name.clone(), txn);
        }
    }
    replica.checkpoint_all().map_err(|e| e.to_string())?;
    drop(replica);
    crate::disk::remove_file(&marker).map_err(|e| format!("{}: {e}", marker.display()))?;
    crate::table::files::fsync_dir(data_dir).map_err(|e| e.to_string())?;
    report.bytes = progress.bytes.load(Ordering::Relaxed);
    report.objects = progress.objects.load(Ordering::Relaxed);
    Ok(report)
}

/// The data directory must be new, empty, or a killed restore of the
/// same target (its marker says which).
fn prepare_dir(data_dir: &Path, marker: &Path, want: &str) -> Result<(), String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    crate::disk::create_dir_all_durable(data_dir).map_err(|e| io(data_dir, e))?;
    match crate::disk::read(marker).map(|b| String::from_utf8_lossy(&b).into_owned()) {
        Ok(have) if have == want => return Ok(()), // resuming
        Ok(have) => {
            return Err(format!(
                "{} holds an unfinished restore of another target ({}); finish it with the same \
                 arguments, or restore into an empty directory",
                data_dir.display(),
                have.lines().last().unwrap_or("").trim()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(marker, e)),
    }
    let entries = crate::disk::read_dir(data_dir).map_err(|e| io(data_dir, e))?;
    if !entries.is_empty() {
        return Err(format!(
            "{} is not empty: restore builds a new data directory (give an empty or new one)",
            data_dir.display()
        ));
    }
    crate::table::files::durable_replace(data_dir, MARKER_FILE, want.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(())
}
