//! A shard: one thread (pinned to a core) running an I/O engine's executor.
//! It owns a WAL per table it has written to, collects commits into groups,
//! gives each commit its txn from the table's sequencer, writes the group
//! with one write and one fdatasync per table, then acknowledges.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::debug;

use crate::batch::Batch;
use crate::io::{Engine, LocalTask, NetStack};
use crate::table::files::WAL_DIR;
use crate::wal::format::{self, RecordHeader, FLAG_GROUP_END};
use crate::wal::WalWriter;

use super::{ApplyMsg, DbError, TableHandle};

/// A commit on its way to a shard.
pub struct CommitRequest {
    pub table: Arc<TableHandle>,
    /// Schema version the batch was built for (its columns are that version's).
    pub schema_version: u16,
    pub payload: Vec<u8>,
    pub batch: Batch,
    pub ack: flume::Sender<Result<u64, DbError>>,
}

/// Counters of one shard, written only by that shard (one cache line each).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ShardStats {
    /// Group writes, each followed by one fdatasync.
    pub groups: AtomicU64,
    /// Commits (txns) made durable.
    pub commits: AtomicU64,
    /// WAL bytes written, framing included.
    pub bytes: AtomicU64,
}

/// Where a task given to [`crate::db::Database::spawn_on_shard`] runs.
#[derive(Clone, Copy, Debug)]
pub struct ShardEnv {
    pub shard: usize,
    pub stack: NetStack,
}

/// Makes a task on the shard thread (tasks need not be `Send`).
pub type SpawnFn = Box<dyn FnOnce(ShardEnv) -> LocalTask + Send>;

pub enum ShardMsg {
    Commit(CommitRequest),
    /// Run a task on this shard's executor, next to the commit loop.
    Spawn(SpawnFn),
    /// A table was dropped: close its WAL files, then answer. Commits queued
    /// before this message are written first.
    Forget {
        table: Arc<TableHandle>,
        done: flume::Sender<()>,
    },
    Stop,
}

/// Limits of one shard.
#[derive(Clone, Copy, Debug)]
pub struct ShardLimits {
    /// A group stops taking more commits at this many payload bytes.
    pub group_bytes_max: usize,
    /// WAL file size at which the next file is started.
    pub wal_file_bytes_max: u64,
}

/// What a shard thread is given.
pub struct ShardContext {
    pub shard: u32,
    pub rx: flume::Receiver<ShardMsg>,
    pub applier: flume::Sender<ApplyMsg>,
    pub limits: ShardLimits,
    pub stats: Arc<ShardStats>,
}

pub async fn run<E: Engine>(engine: E, ctx: ShardContext) {
    let rx = &ctx.rx;
    // Keyed by table name; the table id tells a re-created table's WAL from
    // a dropped one's.
    let mut wals: HashMap<String, (u64, WalWriter<E::File>)> = HashMap::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut stop = false;
    let env = ShardEnv {
        shard: ctx.shard as usize,
        stack: engine.net_stack(),
    };
    while !stop {
        let first = match rx.recv_async().await {
            Ok(ShardMsg::Commit(c)) => c,
            Ok(ShardMsg::Spawn(make)) => {
                crate::io::spawn_local(env.stack, make(env));
                continue;
            }
            Ok(ShardMsg::Forget { table, done }) => {
                forget(&mut wals, &table);
                let _ = done.send(());
                continue;
            }
            Ok(ShardMsg::Stop) | Err(_) => break,
        };
        let mut bytes = first.payload.len();
        let mut group = vec![first];
        let mut forgotten = Vec::new();
        while bytes < ctx.limits.group_bytes_max {
            match rx.try_recv() {
                Ok(ShardMsg::Commit(c)) => {
                    bytes += c.payload.len();
                    group.push(c);
                }
                Ok(ShardMsg::Spawn(make)) => crate::io::spawn_local(env.stack, make(env)),
                Ok(ShardMsg::Forget { table, done }) => {
                    // After the group: it may hold the table's last commits.
                    forgotten.push((table, done));
                    break;
                }
                Ok(ShardMsg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        // One WAL write per table in the group, tables in order of first appearance.
        while !group.is_empty() {
            let name = group[0].table.name.clone();
            let (mine, rest): (Vec<_>, Vec<_>) =
                group.into_iter().partition(|c| c.table.name == name);
            group = rest;
            buf = commit_table(&engine, &ctx, &mut wals, mine, buf).await;
        }
        for (table, done) in forgotten {
            forget(&mut wals, &table);
            let _ = done.send(());
        }
    }
    debug!(shard = ctx.shard, "shard stopped");
}

fn forget<F>(wals: &mut HashMap<String, (u64, WalWriter<F>)>, table: &TableHandle) {
    if wals
        .get(&table.name)
        .is_some_and(|(id, _)| *id == table.table_id)
    {
        wals.remove(&table.name);
    }
}

async fn commit_table<E: Engine>(
    engine: &E,
    ctx: &ShardContext,
    wals: &mut HashMap<String, (u64, WalWriter<E::File>)>,
    reqs: Vec<CommitRequest>,
    mut buf: Vec<u8>,
) -> Vec<u8> {
    let (shard, applier, limits, stats) = (ctx.shard, &ctx.applier, ctx.limits, &ctx.stats);
    let table = reqs[0].table.clone();
    if table.refusal().is_some() {
        // Dropped (or failed) since the commit was prepared: its directory
        // may be gone, so nothing may be written for it.
        for r in reqs {
            let e = table.refusal().unwrap_or(DbError::Closed);
            let _ = r.ack.send(Err(e));
        }
        return buf;
    }
    if wals
        .get(&table.name)
        .is_some_and(|(id, _)| *id != table.table_id)
    {
        // A dropped table's WAL; this is a new table of the same name.
        wals.remove(&table.name);
    }
    if !wals.contains_key(&table.name) {
        let wal_dir = table.dir.join(WAL_DIR);
        match WalWriter::create(
            engine,
            Path::new(&wal_dir),
            shard,
            limits.wal_file_bytes_max,
        )
        .await
        {
            Ok(w) => {
                wals.insert(table.name.clone(), (table.table_id, w));
            }
            Err(e) => {
                let e = Arc::new(e);
                for r in reqs {
                    let _ = r.ack.send(Err(DbError::Wal(e.clone())));
                }
                return buf;
            }
        }
    }
    let wal = &mut wals.get_mut(&table.name).expect("inserted above").1;
    let group_start = match wal.begin_group(engine).await {
        Ok(pos) => pos,
        Err(e) => {
            let e = Arc::new(e);
            for r in reqs {
                let _ = r.ack.send(Err(DbError::Wal(e.clone())));
            }
            return buf;
        }
    };
    // The sequencer: one atomic add gives this group its contiguous txn range.
    let n = reqs.len() as u64;
    let (first_txn, commit_time_us) = table.sequence(n);
    buf.clear();
    for (i, r) in reqs.iter().enumerate() {
        let h = RecordHeader {
            payload_len: r.payload.len() as u32,
            txn: first_txn + i as u64,
            commit_time_us,
            group_start,
            row_count: r.batch.row_count() as u32,
            schema_version: r.schema_version,
            flags: if i as u64 + 1 == n { FLAG_GROUP_END } else { 0 },
        };
        format::append_record(&mut buf, &h, &r.payload);
    }
    let last_txn = first_txn + n - 1;
    let group_bytes = buf.len() as u64;
    let result = wal.write_group(buf, last_txn).await;
    let buf = match result {
        Ok(b) => {
            table.mark_written(first_txn, last_txn);
            stats.groups.fetch_add(1, Ordering::Relaxed);
            stats.commits.fetch_add(n, Ordering::Relaxed);
            stats.bytes.fetch_add(group_bytes, Ordering::Relaxed);
            for (i, r) in reqs.into_iter().enumerate() {
                let txn = first_txn + i as u64;
                // Applier first: the txn is durable, so it must reach the table
                // even if the client has gone away.
                let _ = applier
                    .send_async(ApplyMsg::Committed {
                        table: table.clone(),
                        txn,
                        batch: r.batch,
                    })
                    .await;
                let _ = r.ack.send(Ok(txn));
            }
            b
        }
        Err(e) => {
            let e = Arc::new(e);
            // Recorded durably before anyone may ship the txns (as empty);
            // if that fails the txns stay unresolved for the uploader (the
            // table refuses commits until reopened).
            let recorded = (first_txn..=last_txn).all(|txn| table.note_aborted(txn));
            if recorded {
                table.mark_written(first_txn, last_txn);
            }
            for (i, r) in reqs.into_iter().enumerate() {
                let _ = applier
                    .send_async(ApplyMsg::Aborted {
                        table: table.clone(),
                        txn: first_txn + i as u64,
                    })
                    .await;
                let _ = r.ack.send(Err(DbError::Wal(e.clone())));
            }
            Vec::new()
        }
    };
    wal.remove_applied(table.wal_release_txn());
    buf
}
