//! Replication through an object store: the primary's uploader ships
//! sealed segments (`uploader`), replicas download, verify and apply them
//! (`replica`).
//!
//! Object keys (under the store's root):
//!
//! ```text
//! tables/<table>/<first_txn, 20 digits>.seg
//! ```
//!
//! A segment holds txns `first..=last` of one table; the next one starts at
//! `last + 1`. Keys sort in txn order, so a replica finds what is new with
//! one listing after the key of its last applied segment. Each key is
//! written once (conditional create), so two writers can never both extend
//! the chain at the same txn. New tables are announced in `catalog/`
//! (see [`catalog`]).

pub mod catalog;
pub mod epoch;
pub mod node;
pub mod replica;
pub mod restore;
pub mod snapshot;
pub mod status;
pub mod uploader;

pub use node::{Node, NodeConfig, RoleControl};
pub use replica::{
    Replica, ReplicaOptions, ReplicaRunner, ReplicaStatus, ReplicationError, SyncReport,
};
pub use status::{NodeStatus, Role, RoleState};
pub use uploader::{Owner, UploadOptions, UploadStatus, Uploader};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::store::Store;
use object_store::path::Path as ObjectPath;

/// A replication thread (uploader or replica) and the flag that stops it;
/// stopped and joined when dropped.
struct Background {
    stop: Arc<AtomicBool>,
    /// Woken when stopping, for a thread that sleeps until woken.
    wake: Option<Arc<tokio::sync::Notify>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Runs `body` on a thread named `name`, handing it the stop flag.
    fn spawn(
        name: &str,
        body: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> std::io::Result<Background> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(s))?;
        Ok(Background {
            stop,
            wake: None,
            thread: Some(thread),
        })
    }

    /// [`Background::spawn`] for a thread that sleeps on `wake`: stopping
    /// wakes it.
    fn spawn_woken(
        name: &str,
        wake: Arc<tokio::sync::Notify>,
        body: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> std::io::Result<Background> {
        let mut b = Background::spawn(name, body)?;
        b.wake = Some(wake);
        Ok(b)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = &self.wake {
            w.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Directory of all tables' segments under the store root.
pub const TABLES_PREFIX: &str = "tables";

/// `tables/<table>/` under the store's root.
pub fn table_prefix(store: &Store, table: &str) -> ObjectPath {
    store.path(&[TABLES_PREFIX, table])
}

/// The key of the segment of `table` whose first txn is `first_txn`.
pub fn segment_key(store: &Store, table: &str, first_txn: u64) -> ObjectPath {
    store.path(&[TABLES_PREFIX, table, &format!("{first_txn:020}.seg")])
}

/// The first txn a segment key names, if it is one.
pub fn first_txn_of(key: &ObjectPath) -> Option<u64> {
    let name = key.filename()?;
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}
