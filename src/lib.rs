//! basalt: a time-series storage node.
//!
//! Data flows one way: [`batch`] rows → [`wal`] (durable, group-committed on
//! per-core shards through an [`io`] engine) → [`table`] column files via the
//! [`db`] applier. See docs/architecture.md and docs/format.md.

pub mod auth;
pub mod batch;
pub mod db;
pub mod disk;
pub mod gen;
pub mod ilp;
pub mod ingest;
pub mod io;
pub mod qwp;
pub mod replication;
pub mod segment;
pub mod server;
#[cfg(feature = "sql")]
pub mod sql;
#[cfg(feature = "sql-text")]
pub mod sqltext;
pub mod store;
pub mod table;
pub mod wal;
