//! Deterministic simulation of a primary's storage on a simulated disk
//! (docs/simulation.md): seeded steps of ingest, apply, checkpoint, WAL
//! rotation, disk failure, power loss (crash images), kill -9 and restart,
//! with the invariants checked after every restart and at reads in between:
//! - every acknowledged row is there, exactly once;
//! - a txn whose commit failed is there whole or not at all, never in part;
//! - rows read back carry exactly the values written (symbols included).
//!
//! A failure names its seed; `BASALT_SIM_SEED=<seed> cargo test --test
//! simulation -- --nocapture replay` replays it with the step log. A longer
//! run: `BASALT_SIM_SEEDS=2000 cargo test --release --test simulation --
//! --nocapture many_seeds` (`BASALT_SIM_SEED_BASE` moves the range).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt::batch::{Batch, BatchBuilder, Value};
use basalt::db::{Database, DbOptions, TableHandle};
use basalt::disk::{Mounted, SimDisk};
use basalt::gen::{CpuGenerator, BASE_TS_US, HOSTS};
use basalt::io::EngineChoice;
use basalt::replication::replica::Replica;
use basalt::replication::uploader::{UploadOptions, Uploader};
use basalt::store::{FaultControl, Store, StoreConfig};
use basalt::table::ColumnType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const DAY_US: i64 = 86_400_000_000;
const WAIT: Duration = Duration::from_secs(30);
const STEPS: usize = 150;

/// What the node must hold: rows by their `requests` value.
#[derive(Default)]
struct Model {
    /// Acknowledged rows: requests → ts.
    acked: BTreeMap<u64, i64>,
    /// Txns whose commit failed: each must be wholly there or wholly absent.
    unsure: Vec<Vec<(u64, i64)>>,
    next: u64,
    max_ts: i64,
    /// Rows from this one on carry the `note` column (added mid-run).
    note_from: Option<u64>,
    /// The last txn committed before the column was added: a schema change
    /// travels with the next txn, so until one is uploaded the replica's
    /// `_meta` is one version behind.
    note_after_txn: u64,
}

/// The `note` of row `i`: null for every fifth, else text of varying length.
fn note(i: u64) -> Option<String> {
    (!i.is_multiple_of(5)).then(|| format!("note {i} {}", "x".repeat((i % 37) as usize)))
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    steps: u64,
    commits: u64,
    failed_commits: u64,
    power_losses: u64,
    kills: u64,
    restarts: u64,
    rows: u64,
    uploads: u64,
    replica_checks: u64,
    replica_power_losses: u64,
    store_faults: u64,
    columns_added: u64,
    /// Objects damaged at rest and refused by the replica.
    corruptions_refused: u64,
}

struct Sim {
    seed: u64,
    rng: SmallRng,
    disk: Mounted,
    gen: CpuGenerator,
    opts: DbOptions,
    db: Option<Database>,
    table: Option<Arc<TableHandle>>,
    model: Model,
    log: Vec<String>,
    stats: Stats,
    store: Store,
    /// Faults of the store as the uploader and the replica see it.
    faults: Arc<FaultControl>,
    /// The replica runs on its own machine: its own disk, its own power.
    replica_disk: Mounted,
    replica: Option<Replica>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = SmallRng::seed_from_u64(seed);
        let disk = SimDisk::mount_seeded(rng.random());
        let replica_disk = SimDisk::mount_seeded(rng.random());
        let store = StoreConfig::parse("memory::")
            .and_then(|c| c.build())
            .expect("memory store");
        let opts = DbOptions {
            data_dir: disk.root().join("node"),
            engine: EngineChoice::Portable,
            shards: 1,
            pin_shards: false,
            wal_file_bytes_max: rng.random_range(2_048..65_536),
            apply_interval: Duration::ZERO,
            // Checkpoints by row count only: a timer would make runs differ.
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_rows_max: rng.random_range(10..400),
            retain_wal_for_upload: true,
            upload_store_id: store.config.id(),
            ..DbOptions::default()
        };
        Sim {
            seed,
            rng,
            disk,
            gen: CpuGenerator::default(),
            opts,
            db: None,
            table: None,
            model: Model {
                max_ts: BASE_TS_US,
                ..Model::default()
            },
            log: Vec::new(),
            stats: Stats::default(),
            faults: Arc::new(FaultControl::default()),
            store,
            replica_disk,
            replica: None,
        }
    }

    fn fail(&self, step: usize, why: String) -> String {
        let tail: Vec<&String> = self.log.iter().rev().take(12).collect();
        format!(
            "simulation seed {} failed at step {step}: {why}\nlast steps (newest first): {tail:#?}\n\
             replay: BASALT_SIM_SEED={} cargo test --test simulation -- --nocapture replay",
            self.seed, self.seed
        )
    }

    fn open(&mut self) -> Result<(), String> {
        let db = Database::open(self.opts.clone())
            .map_err(|e| format!("the node does not open after a restart: {e}"))?;
        let table = match db.table("cpu") {
            Some(t) => t,
            None => db
                .create_table("cpu", self.gen.schema())
                .map_err(|e| format!("create table: {e}"))?,
        };
        self.table = Some(table);
        self.db = Some(db);
        Ok(())
    }

    fn db(&self) -> &Database {
        self.db.as_ref().expect("open")
    }

    fn rows(&mut self) -> Vec<(u64, i64)> {
        let n = self.rng.random_range(1..=40u64);
        let o3 = self.rng.random_bool(0.2) && self.model.max_ts > BASE_TS_US;
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let i = self.model.next;
            self.model.next += 1;
            let ts = if o3 {
                self.rng.random_range(BASE_TS_US..=self.model.max_ts)
            } else {
                // Mostly close together; now and then into a later day.
                let jump = if self.rng.random_bool(0.03) {
                    DAY_US / 2
                } else {
                    self.rng.random_range(0..1_000)
                };
                self.model.max_ts += jump;
                self.model.max_ts
            };
            out.push((i, ts));
        }
        out
    }

    fn batch(&self, rows: &[(u64, i64)]) -> Batch {
        let schema = self.table.as_ref().expect("open").schema();
        let mut b = BatchBuilder::new(&schema);
        for (i, ts) in rows {
            self.gen.row_partial(&mut b, *i, *ts);
            if self.model.note_from.is_some() {
                let n = note(*i);
                let v = n.as_deref().map_or(Value::Null, Value::Varchar);
                b.set(8, v).expect("note is column 8");
            }
            b.finish_row().expect("rows have a timestamp");
        }
        b.finish()
    }

    /// Adds the `note` column: once it is acknowledged, every restart must
    /// keep it, and rows before it read as null.
    fn add_column(&mut self) -> Result<(), String> {
        if self.model.note_from.is_some() {
            return Ok(());
        }
        let table = self.table.clone().expect("open");
        self.db()
            .add_column(&table, "note", ColumnType::Varchar)
            .map_err(|e| format!("add column: {e}"))?;
        self.model.note_from = Some(self.model.next);
        self.model.note_after_txn = table.committed_txn();
        self.stats.columns_added += 1;
        self.log.push("add column note".into());
        Ok(())
    }

    /// Commits one txn and records what the node promised.
    fn commit(&mut self) -> Result<(), String> {
        let rows = self.rows();
        let batch = self.batch(&rows);
        let table = self.table.clone().expect("open");
        self.stats.commits += 1;
        match self.db().commit(&table, batch) {
            Ok(txn) => {
                self.log
                    .push(format!("commit txn {txn}: {} rows", rows.len()));
                self.model.acked.extend(rows);
                // The shard and the applier would otherwise write at the
                // same time, and the order of their writes (so the crash
                // images) would depend on thread timing, not the seed.
                self.settle();
            }
            Err(e) => {
                self.stats.failed_commits += 1;
                self.log
                    .push(format!("commit of {} rows failed: {e}", rows.len()));
                self.model.unsure.push(rows);
            }
        }
        Ok(())
    }

    /// Waits until what was committed is applied (errors are the disk's).
    fn settle(&mut self) {
        let table = self.table.clone().expect("open");
        let txn = table.committed_txn();
        if let Err(e) = table.wait_applied(txn, WAIT) {
            self.log.push(format!("apply did not finish: {e}"));
        }
        // And the checkpoint that apply may have made due.
        self.db().applier_barrier();
    }

    /// Stops the node: `power` drops what the disk had not made durable.
    fn stop(&mut self, how: &str) {
        self.table = None;
        match how {
            "clean" => {
                self.db.take().expect("open").close();
            }
            _ => {
                // Nothing the node does from here reaches the disk, as
                // with kill -9 or a power cut.
                self.disk.freeze();
                drop(self.db.take());
                if how == "power" {
                    let r = self.disk.crash(&mut self.rng);
                    self.log.push(format!("crash image: {r:?}"));
                } else {
                    self.disk.heal();
                }
            }
        }
    }

    /// Reads the whole table and checks it against the model. After a
    /// restart `settled` is true: unsure txns are resolved for good.
    fn check(&mut self, settled: bool) -> Result<(), String> {
        let mut cols = vec!["host", "usage_user", "requests", "ts"];
        if self.model.note_from.is_some() {
            cols.push("note");
        }
        let scan = self
            .db()
            .scan("cpu", &cols, None)
            .map_err(|e| format!("scan failed: {e}"))?;
        let mut seen: BTreeMap<u64, i64> = BTreeMap::new();
        for r in 0..scan.row_count() {
            let Value::Long(i) = scan.value(2, r) else {
                return Err(format!("row {r}: requests is {:?}", scan.value(2, r)));
            };
            let i = i as u64;
            let Value::Timestamp(ts) = scan.value(3, r) else {
                return Err(format!("row {r}: ts is {:?}", scan.value(3, r)));
            };
            let host = format!("host_{:02}", i % HOSTS);
            if scan.value(0, r) != Value::Symbol(&host) {
                return Err(format!(
                    "row {i}: host {:?}, wrote {host}",
                    scan.value(0, r)
                ));
            }
            let user = (i % 1000) as f64 / 10.0;
            if scan.value(1, r) != Value::Double(user) {
                return Err(format!(
                    "row {i}: usage_user {:?}, wrote {user}",
                    scan.value(1, r)
                ));
            }
            if let Some(from) = self.model.note_from {
                let want = if i < from { None } else { note(i) };
                let want = want.as_deref().map_or(Value::Null, Value::Varchar);
                if scan.value(4, r) != want {
                    return Err(format!(
                        "row {i}: note {:?}, wrote {want:?}",
                        scan.value(4, r)
                    ));
                }
            }
            if seen.insert(i, ts).is_some() {
                return Err(format!("row {i} is there twice"));
            }
        }
        for (i, ts) in &self.model.acked {
            match seen.remove(i) {
                Some(t) if t == *ts => {}
                Some(t) => return Err(format!("acknowledged row {i}: ts {t}, wrote {ts}")),
                // Before a restart, a row may still be on its way to the
                // column files; after one, it must be there.
                None if settled => return Err(format!("acknowledged row {i} is lost")),
                None => {}
            }
        }
        let mut kept = Vec::new();
        for txn in std::mem::take(&mut self.model.unsure) {
            let present = txn.iter().filter(|(i, _)| seen.contains_key(i)).count();
            if present != 0 && present != txn.len() {
                return Err(format!(
                    "a failed commit is there in part: {present} of {} rows",
                    txn.len()
                ));
            }
            for (i, ts) in &txn {
                if let Some(t) = seen.remove(i) {
                    if t != *ts {
                        return Err(format!("row {i}: ts {t}, wrote {ts}"));
                    }
                }
            }
            if present == txn.len() && settled {
                // Recovered from the WAL: from now on it must stay.
                self.model.acked.extend(txn);
            } else if !settled {
                kept.push(txn);
            }
        }
        self.model.unsure = kept;
        if let Some((i, _)) = seen.into_iter().next() {
            return Err(format!("row {i} was never written"));
        }
        self.stats.rows = self.model.acked.len() as u64;
        Ok(())
    }

    fn step(&mut self, step: usize) -> Result<(), String> {
        let r = self.rng.random_range(0..100u32);
        match r {
            0..=59 => self.commit(),
            60..=64 => {
                // The disk fails a few operations from now, in the middle
                // of this commit or of its apply; then the power goes.
                let k = self.rng.random_range(0..12);
                self.log.push(format!("disk fails after {k} more ops"));
                self.disk.fail_after(k);
                self.commit()?;
                self.settle();
                self.restart("power")
            }
            65..=74 => {
                self.settle();
                self.check(false)
            }
            75..=84 => {
                self.settle();
                self.restart("power")
            }
            85..=88 => self.restart("kill"),
            89..=90 => self.restart("clean"),
            91..=94 => self.upload_and_compare(),
            95 => self.replica_power_loss(),
            96..=97 => self.add_column(),
            _ => {
                // The clock steps back (NTP); commit times must not.
                let back = self.rng.random_range(1..10_000_000);
                self.disk.step_clock(-back);
                self.log.push(format!("clock steps back {back} µs"));
                let _ = step;
                Ok(())
            }
        }
    }

    /// Uploads every committed txn (the uploader runs only inside this
    /// step, so its writes do not interleave with the others), then the
    /// replica applies the store and must equal the primary row for row.
    fn upload_and_compare(&mut self) -> Result<(), String> {
        self.settle();
        let table = self.table.clone().expect("open");
        let txn = table.committed_txn();
        let opts = UploadOptions {
            segment_age_max: Duration::ZERO,
            retry_backoff_max: Duration::from_millis(50),
            ..UploadOptions::default()
        };
        // Some uploads fail, some land but report failure (the uploader
        // cannot tell whether its PUT happened).
        let put_every = [0, 0, 3, 5][self.rng.random_range(0..4)];
        let lost_ack_every = [0, 0, 4][self.rng.random_range(0..3)];
        self.faults
            .fail_put_every
            .store(put_every, Ordering::Relaxed);
        self.faults
            .fail_after_put_every
            .store(lost_ack_every, Ordering::Relaxed);
        let store = self.store.with_faults(self.faults.clone());
        let up = Uploader::start(self.db().catalog(), store.clone(), opts)
            .map_err(|e| format!("uploader: {e}"))?;
        let deadline = Instant::now() + WAIT;
        let stored =
            futures_lite::future::block_on(table.wait_uploaded(txn, || Instant::now() > deadline));
        up.shutdown();
        self.faults.fail_put_every.store(0, Ordering::Relaxed);
        self.faults.fail_after_put_every.store(0, Ordering::Relaxed);
        if !stored {
            return Err(format!(
                "txn {txn} not uploaded within {WAIT:?} (stored {})",
                table.uploaded_txn()
            ));
        }
        self.stats.uploads += 1;
        self.log.push(format!("uploaded to txn {txn}"));
        if txn == 0 {
            // Nothing committed yet: the store holds no segment of the table.
            return Ok(());
        }
        if self.replica.is_none() {
            let dir = self.replica_disk.root().join("replica");
            self.replica =
                Some(Replica::new(store, &dir).map_err(|e| format!("replica does not open: {e}"))?);
        }
        // Now and then a bit of a segment the replica has not applied yet
        // flips at rest: the replica must refuse it and apply nothing of it.
        // Put back, the replica goes on.
        if self.rng.random_bool(0.25) {
            self.corrupt_and_restore()?;
        }
        // Some downloads fail: the replica reports it and the next sync
        // goes on from where it stopped.
        let get_every = [0, 0, 2, 3][self.rng.random_range(0..4)];
        self.faults
            .fail_get_every
            .store(get_every, Ordering::Relaxed);
        let replica = self.replica.as_mut().expect("just set");
        let mut tries = 0;
        let synced = loop {
            tries += 1;
            match replica.sync_all() {
                Ok(_) => break Ok(()),
                Err(e) if e.to_string().contains("injected fault") && tries < 50 => {}
                Err(e) => break Err(format!("replica sync (try {tries}): {e}")),
            }
        };
        self.faults.fail_get_every.store(0, Ordering::Relaxed);
        synced?;
        self.stats.store_faults = self.faults.injected.load(Ordering::Relaxed);
        let applied = replica
            .applied_txn("cpu")
            .map_err(|e| format!("replica: {e}"))?;
        if applied != txn {
            return Err(format!("replica at txn {applied}, primary uploaded {txn}"));
        }
        let cols = ["host", "usage_user", "requests", "ts"];
        let dir = self.replica_disk.root().join("replica");
        let theirs = basalt::table::TableReader::open(&dir, "cpu")
            .and_then(|r| r.scan(&cols, None))
            .map_err(|e| format!("replica scan: {e}"))?;
        let ours = self
            .db()
            .scan("cpu", &cols, None)
            .map_err(|e| format!("primary scan: {e}"))?;
        if ours.row_count() != theirs.row_count() {
            return Err(format!(
                "replica has {} rows at txn {txn}, primary {}",
                theirs.row_count(),
                ours.row_count()
            ));
        }
        for r in 0..ours.row_count() {
            for (c, name) in cols.iter().enumerate() {
                if ours.value(c, r) != theirs.value(c, r) {
                    return Err(format!(
                        "replica differs at row {r}, column {name}: {:?} vs primary {:?}",
                        theirs.value(c, r),
                        ours.value(c, r)
                    ));
                }
            }
        }
        // Not only the same rows: the same bytes in every column file.
        let mut ours = table_files(&self.opts.data_dir.join("cpu"))?;
        let mut theirs = table_files(&dir.join("cpu"))?;
        if self.model.note_from.is_some() && txn <= self.model.note_after_txn {
            ours.remove("_meta");
            theirs.remove("_meta");
        }
        for (name, bytes) in &ours {
            match theirs.get(name) {
                Some(b) if b == bytes => {}
                Some(b) => {
                    let at = b.iter().zip(bytes).position(|(x, y)| x != y);
                    return Err(format!(
                        "replica's {name} differs from the primary's at txn {txn}: {} vs {} bytes, first difference at {at:?}",
                        b.len(),
                        bytes.len()
                    ));
                }
                None => return Err(format!("replica has no {name}")),
            }
        }
        if let Some(extra) = theirs.keys().find(|k| !ours.contains_key(*k)) {
            return Err(format!("replica has {extra}, the primary does not"));
        }
        self.stats.replica_checks += 1;
        Ok(())
    }

    fn corrupt_and_restore(&mut self) -> Result<(), String> {
        use basalt::replication::{first_txn_of, segment_key, table_prefix};
        use futures_lite::future::block_on;
        use object_store::ObjectStoreExt;
        let replica = self.replica.as_mut().expect("made by the caller");
        let applied = replica
            .applied_txn("cpu")
            .map_err(|e| format!("replica: {e}"))?;
        let store = &self.store;
        let keys = block_on(store.list_after(
            &table_prefix(store, "cpu"),
            &segment_key(store, "cpu", applied),
        ))
        .map_err(|e| format!("listing: {e}"))?;
        let Some(key) = keys
            .iter()
            .filter(|k| first_txn_of(k).is_some_and(|f| f > applied))
            .max_by_key(|k| first_txn_of(k))
        else {
            return Ok(());
        };
        let first = first_txn_of(key).expect("filtered");
        let good = block_on(async { store.inner.get(key).await?.bytes().await })
            .map_err(|e| format!("reading {key}: {e}"))?;
        let mut bad = good.to_vec();
        let at = self.rng.random_range(0..bad.len());
        bad[at] ^= 1 << self.rng.random_range(0..8);
        block_on(store.inner.put(key, bad.into())).map_err(|e| format!("{e}"))?;
        let refused = replica.sync_all();
        let now = replica
            .applied_txn("cpu")
            .map_err(|e| format!("replica: {e}"))?;
        block_on(store.inner.put(key, good.into())).map_err(|e| format!("{e}"))?;
        match refused {
            Err(e) if now < first => {
                self.log
                    .push(format!("bit {at} of {key} flipped: refused ({e})"));
                self.stats.corruptions_refused += 1;
                Ok(())
            }
            Err(e) => Err(format!(
                "the replica applied txn {now} of damaged {key} (from txn {first}), then: {e}"
            )),
            Ok(_) => Err(format!(
                "the replica accepted {key} with byte {at} damaged (applied to txn {now})"
            )),
        }
    }

    /// The order of the table's watermarks, checked after every step:
    /// allocated ≥ written ≥ applied ≥ checkpointed, uploaded ≤ written.
    fn check_watermarks(&self) -> Result<(), String> {
        let Some(t) = &self.table else { return Ok(()) };
        let (c, w, a, k, u) = (
            t.committed_txn(),
            t.written_txn(),
            t.resolved_txn(),
            t.checkpoint_txn(),
            t.uploaded_txn(),
        );
        if c >= w && w >= a && a >= k && u <= w {
            Ok(())
        } else {
            Err(format!(
                "watermarks out of order: committed {c}, written {w}, applied {a}, \
                 checkpointed {k}, uploaded {u}"
            ))
        }
    }

    /// The replica's machine loses power; it comes back and catches up at
    /// the next upload step.
    fn replica_power_loss(&mut self) -> Result<(), String> {
        if self.replica.take().is_none() {
            return Ok(());
        }
        self.stats.replica_power_losses += 1;
        let r = self.replica_disk.crash(&mut self.rng);
        self.log.push(format!("replica power loss: {r:?}"));
        Ok(())
    }

    fn restart(&mut self, how: &str) -> Result<(), String> {
        self.log.push(format!("restart ({how})"));
        match how {
            "power" => self.stats.power_losses += 1,
            "kill" => self.stats.kills += 1,
            _ => self.stats.restarts += 1,
        }
        self.stop(how);
        self.open()?;
        self.check(true)
    }

    fn run(self, steps: usize) -> Result<(Stats, u64), String> {
        self.run_recorded(steps).map(|(s, t, _)| (s, t))
    }

    /// [`Sim::run`], also returning every disk operation in order.
    fn run_recorded(mut self, steps: usize) -> Result<(Stats, u64, Vec<String>), String> {
        self.disk.record();
        self.open().map_err(|e| self.fail(0, e))?;
        for s in 1..=steps {
            self.stats.steps += 1;
            if let Err(e) = self.step(s).and_then(|()| self.check_watermarks()) {
                return Err(self.fail(s, e));
            }
        }
        self.settle();
        self.restart("power").map_err(|e| self.fail(steps + 1, e))?;
        self.upload_and_compare()
            .map_err(|e| self.fail(steps + 1, e))?;
        let trace = self.disk.trace();
        Ok((self.stats, trace, self.disk.recorded()))
    }
}

/// Every file of a table that holds data, by path relative to the table,
/// with partition directories named without their version (versions count
/// apply steps, which differ between nodes; contents must not).
fn table_files(dir: &std::path::Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    use basalt::disk;
    let e = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    let reader = basalt::table::TableReader::open(
        dir.parent().expect("table dir has a parent"),
        &dir.file_name().expect("table name").to_string_lossy(),
    )
    .map_err(|x| e(&x))?;
    let state = reader.state().map_err(|x| e(&x))?;
    let mut out = BTreeMap::new();
    let mut add = |sub: &std::path::Path, label: &str| -> Result<(), String> {
        for f in disk::read_dir(sub).map_err(|x| e(&x))? {
            let bytes = disk::read(&sub.join(&f.name)).map_err(|x| e(&x))?;
            out.insert(format!("{label}/{}", f.name), bytes);
        }
        Ok(())
    };
    for p in &state.partitions {
        let name = reader.schema().partition_by.partition_name(p.floor);
        add(
            &dir.join(basalt::table::files::partition_dir(&name, p.version)),
            &name,
        )?;
    }
    add(&dir.join("_sym"), "_sym")?;
    out.insert(
        "_meta".into(),
        disk::read(&dir.join("_meta")).map_err(|x| e(&x))?,
    );
    Ok(out)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// CI's bounded run: a fixed range of seeds, so a failure replays.
#[test]
fn many_seeds() {
    let n = env_u64("BASALT_SIM_SEEDS").unwrap_or(24);
    let base = env_u64("BASALT_SIM_SEED_BASE").unwrap_or(1);
    let started = Instant::now();
    let mut total = Stats::default();
    for seed in base..base + n {
        let (s, _) = Sim::new(seed).run(STEPS).unwrap_or_else(|e| panic!("{e}"));
        total.steps += s.steps;
        total.commits += s.commits;
        total.failed_commits += s.failed_commits;
        total.power_losses += s.power_losses;
        total.kills += s.kills;
        total.restarts += s.restarts;
        total.rows += s.rows;
        total.uploads += s.uploads;
        total.replica_checks += s.replica_checks;
        total.replica_power_losses += s.replica_power_losses;
        total.store_faults += s.store_faults;
        total.columns_added += s.columns_added;
        total.corruptions_refused += s.corruptions_refused;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "simulation: {n} seeds from {base}, {} steps in {secs:.1} s ({:.0} steps/s): {total:?}",
        total.steps,
        total.steps as f64 / secs
    );
    // The run exercised what it claims to (not vacuous).
    assert!(total.power_losses >= n, "{total:?}");
    assert!(total.failed_commits > 0, "{total:?}");
    assert!(total.rows > 0, "{total:?}");
    assert!(total.replica_checks > 0, "{total:?}");
    assert!(total.store_faults > 0, "{total:?}");
    assert!(total.columns_added > 0, "{total:?}");
    assert!(total.corruptions_refused > 0, "{total:?}");
}

/// Seeds that found bugs, run every time (docs/simulation.md).
const REGRESSIONS: &[(u64, &str)] = &[
    (
        2,
        "a partition's column files depended on how txns were grouped into apply steps",
    ),
    (5, "the data directory's name was never made durable"),
    (
        10031,
        "a power loss emptied the upload mark; the uploader refused its own history",
    ),
];

#[test]
fn regression_seeds() {
    for (seed, bug) in REGRESSIONS {
        if let Err(e) = Sim::new(*seed).run(STEPS) {
            panic!("regression ({bug}):\n{e}");
        }
    }
}

/// One seed, with its step log (`BASALT_SIM_SEED`; seed 7 without it).
#[test]
fn replay() {
    // RUST_LOG=info (or debug) shows what the node logged.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let seed = env_u64("BASALT_SIM_SEED").unwrap_or(7);
    let steps = env_u64("BASALT_SIM_STEPS").map_or(STEPS, |s| s as usize);
    let (s, trace) = Sim::new(seed).run(steps).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("seed {seed}: {s:?}, disk trace {trace:016x}");
}

/// Two runs of one seed do the same I/O, operation for operation.
#[test]
fn one_seed_replays_exactly() {
    for seed in [3, 11] {
        let (a, ta, oa) = Sim::new(seed)
            .run_recorded(STEPS)
            .unwrap_or_else(|e| panic!("{e}"));
        let (b, tb, ob) = Sim::new(seed)
            .run_recorded(STEPS)
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(k) = (0..oa.len().min(ob.len())).find(|k| oa[*k] != ob[*k]) {
            panic!(
                "seed {seed}: the runs part at disk operation {k}: {:?} vs {:?} (before: {:?})",
                oa[k],
                ob[k],
                &oa[k.saturating_sub(5)..k]
            );
        }
        assert_eq!(
            (a.commits, a.failed_commits, a.rows),
            (b.commits, b.failed_commits, b.rows),
            "seed {seed}"
        );
        assert_eq!(ta, tb, "seed {seed}: the two runs' disk traces differ");
    }
}
