//! The applier: one thread that puts committed txns into column files in txn
//! order. Shards report each txn they were given as committed or aborted;
//! the applier holds early arrivals until every txn before them is resolved.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::error;

use crate::batch::Batch;
use crate::table::{ColumnType, Schema, TableError, TableWriter};

use super::{DbError, TableHandle};

pub enum ApplyMsg {
    AddTable {
        handle: Arc<TableHandle>,
        writer: Box<TableWriter>,
    },
    Committed {
        table: Arc<TableHandle>,
        txn: u64,
        batch: Batch,
    },
    Aborted {
        table: Arc<TableHandle>,
        txn: u64,
    },
    /// Forget a dropped table (its writer closes); answered once done.
    DropTable {
        table: Arc<TableHandle>,
        done: flume::Sender<()>,
    },
    /// Let go of a table (a role switch to replica): what is pending is
    /// applied, the table checkpointed and its writer closed; answered once
    /// done.
    Release {
        table: Arc<TableHandle>,
        done: flume::Sender<()>,
    },
    /// Answered once the applier has done everything that what was sent
    /// before asked for, the applies and checkpoints it caused included.
    Barrier {
        done: flume::Sender<()>,
    },
    /// Add a column; answered once `_meta` is durable.
    AddColumn {
        table: Arc<TableHandle>,
        name: String,
        ty: ColumnType,
        ack: flume::Sender<Result<Arc<Schema>, DbError>>,
    },
}

/// When the applier applies and checkpoints.
#[derive(Clone, Copy, Debug)]
pub struct ApplierLimits {
    /// Rows put into one apply step.
    pub rows_max: usize,
    /// Least time between two apply steps: commits arriving meanwhile are
    /// applied together, so `_txn` renames and column-file growth do not
    /// join every WAL fdatasync's journal commit.
    pub apply_interval: Duration,
    /// A table with applied but unsynced txns is checkpointed this often.
    pub checkpoint_interval: Duration,
    /// ... or as soon as this many rows were applied since its last checkpoint.
    pub checkpoint_rows_max: usize,
}

struct Slot {
    handle: Arc<TableHandle>,
    writer: TableWriter,
    last_checkpoint: Instant,
    rows_since_checkpoint: usize,
    /// Resolved txns not yet applied: `Some` committed, `None` aborted.
    pending: BTreeMap<u64, Option<Batch>>,
    /// Next txn to resolve.
    next: u64,
}

/// Runs until every sender is gone, applying what arrived and checkpointing
/// on the limits; a last checkpoint of every table on the way out.
pub fn run(rx: flume::Receiver<ApplyMsg>, limits: ApplierLimits) {
    let mut slots: HashMap<String, Slot> = HashMap::new();
    let tick = (limits.checkpoint_interval / 2).max(Duration::from_millis(1));
    let mut next_apply = Instant::now();
    let mut open = true;
    // Barriers wait for a round that applies (see `ApplyMsg::Barrier`).
    let mut barriers: Vec<flume::Sender<()>> = Vec::new();
    while open {
        // With txns waiting, sleep only until the next apply is allowed.
        let pending = slots.values().any(|s| !s.pending.is_empty());
        let wait = if pending {
            next_apply.saturating_duration_since(Instant::now())
        } else {
            tick
        };
        let mut take = |msg: ApplyMsg, slots: &mut HashMap<String, Slot>| match msg {
            ApplyMsg::Barrier { done } => barriers.push(done),
            msg => handle(slots, msg),
        };
        match rx.recv_timeout(wait) {
            Ok(msg) => take(msg, &mut slots),
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => open = false,
        }
        while let Ok(msg) = rx.try_recv() {
            take(msg, &mut slots);
        }
        let now = Instant::now();
        let apply_now = now >= next_apply || !open;
        if apply_now {
            next_apply = now + limits.apply_interval;
        }
        for slot in slots.values_mut() {
            if apply_now {
                apply_ready(slot, limits.rows_max);
            }
            let due = slot.last_checkpoint.elapsed() >= limits.checkpoint_interval
                || slot.rows_since_checkpoint >= limits.checkpoint_rows_max;
            if due {
                checkpoint(slot);
            }
        }
        if apply_now {
            for b in barriers.drain(..) {
                let _ = b.send(());
            }
        }
    }
    for slot in slots.values_mut() {
        apply_ready(slot, limits.rows_max);
        checkpoint(slot);
    }
}

fn checkpoint(slot: &mut Slot) {
    slot.last_checkpoint = Instant::now();
    if slot.handle.failure().is_some() || slot.writer.state().txn == slot.writer.checkpoint_txn() {
        return;
    }
    match slot.writer.checkpoint() {
        Ok(txn) => {
            slot.rows_since_checkpoint = 0;
            slot.handle.set_durable(txn);
            if slot.handle.is_replicated() {
                slot.handle
                    .clear_aborted_upto(slot.handle.wal_release_txn());
            }
        }
        Err(e) => {
            error!(table = %slot.handle.name, error = %e, "checkpoint failed; the table stays at its last checkpoint until reopened");
            slot.handle.set_failed(e.to_string());
        }
    }
}

/// The slot of `table` itself: not of a dropped table of the same name.
fn slot_of<'a>(
    slots: &'a mut HashMap<String, Slot>,
    table: &Arc<TableHandle>,
) -> Option<&'a mut Slot> {
    slots
        .get_mut(&table.name)
        .filter(|s| Arc::ptr_eq(&s.handle, table))
}

fn handle(slots: &mut HashMap<String, Slot>, msg: ApplyMsg) {
    match msg {
        ApplyMsg::DropTable { table, done } => {
            if slot_of(slots, &table).is_some() {
                slots.remove(&table.name);
            }
            let _ = done.send(());
        }
        ApplyMsg::Release { table, done } => {
            if let Some(s) = slot_of(slots, &table) {
                apply_ready(s, usize::MAX);
                checkpoint(s);
                slots.remove(&table.name);
            }
            let _ = done.send(());
        }
        ApplyMsg::Barrier { done } => {
            let _ = done.send(());
        }
        ApplyMsg::AddTable { handle, writer } => {
            let next = handle.resolved_txn() + 1;
            slots.insert(
                handle.name.clone(),
                Slot {
                    handle,
                    writer: *writer,
                    last_checkpoint: Instant::now(),
                    rows_since_checkpoint: 0,
                    pending: BTreeMap::new(),
                    next,
                },
            );
        }
        ApplyMsg::Committed { table, txn, batch } => {
            if let Some(s) = slot_of(slots, &table) {
                s.pending.insert(txn, Some(batch));
            }
        }
        ApplyMsg::Aborted { table, txn } => {
            if let Some(s) = slot_of(slots, &table) {
                s.pending.insert(txn, None);
            }
        }
        ApplyMsg::AddColumn {
            table,
            name,
            ty,
            ack,
        } => {
            let result = match slot_of(slots, &table) {
                None => Err(DbError::Table(TableError::NotFound(table.name.clone()))),
                Some(s) => s
                    .writer
                    .add_column(&name, ty)
                    .map_err(DbError::from)
                    .map(|schema| {
                        s.handle.set_schema(schema);
                        s.handle.schema()
                    }),
            };
            let _ = ack.send(result);
        }
    }
}

fn apply_ready(slot: &mut Slot, apply_rows_max: usize) {
    while slot.handle.failure().is_none() {
        let mut ready: Vec<(u64, Batch)> = Vec::new();
        let mut rows = 0;
        let mut progressed = false;
        while rows < apply_rows_max {
            let Some(entry) = slot.pending.first_entry() else {
                break;
            };
            if *entry.key() != slot.next {
                break;
            }
            let (txn, batch) = entry.remove_entry();
            if let Some(b) = batch {
                rows += b.row_count();
                ready.push((txn, b));
            }
            slot.next += 1;
            progressed = true;
        }
        if !progressed {
            return;
        }
        if !ready.is_empty() {
            let refs: Vec<(u64, &Batch)> = ready.iter().map(|(t, b)| (*t, b)).collect();
            slot.rows_since_checkpoint += rows;
            if let Err(e) = slot.writer.apply_validated(&refs) {
                error!(table = %slot.handle.name, error = %e, "apply failed; the table stays at its last applied txn until reopened");
                slot.handle.set_failed(e.to_string());
                return;
            }
        }
        slot.handle.set_resolved(slot.next - 1);
    }
}
