//! The node's network front: ILP over HTTP (`/write`, `/api/v2/write`,
//! `/ping`, `/settings`) and ILP over TCP, served by the database's pinned
//! shards.
//!
//! ```text
//! client ─▶ kernel (SO_REUSEPORT) ─▶ shard k: accept, read, parse ILP,
//!                                     build batches ─▶ shard k's commit loop
//!                                     (same executor) ─▶ WAL + fdatasync ─▶ 204
//! ```
//!
//! Each shard binds its own listener on both addresses; a connection stays on
//! the shard that accepted it, which parses it and commits to its own WAL.
//! Connection tasks hold only a weak reference to the database, so shutdown
//! can close it (flushing the applier and checkpointing) once they stop.

mod http;
pub mod net;
#[cfg(feature = "sql")]
mod sql;
mod tcp;
mod ws;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::info;

pub(crate) use crate::db::now_us;
use crate::db::{Database, DbError, ShardEnv};
use crate::ingest::IngestOptions;
use crate::io::NetStack;
use net::Listener;

/// Server settings. `Default` gives the documented defaults.
#[derive(Clone)]
pub struct ServerConfig {
    /// ILP over HTTP (and `/ping`, `/settings`).
    pub http: SocketAddr,
    /// ILP over TCP.
    pub ilp: SocketAddr,
    /// Tables created on first use get this partition scheme.
    pub partition_by: crate::table::PartitionBy,
    /// An HTTP request body larger than this (after gunzip too) gets 413.
    pub http_request_bytes_max: usize,
    /// An ILP/TCP line longer than this closes the connection.
    pub ilp_line_bytes_max: usize,
    /// ILP/TCP: commit a connection's rows once it holds this many...
    pub ilp_commit_rows: usize,
    /// ... or once its oldest uncommitted row is this old.
    pub ilp_commit_interval: Duration,
    /// Connections (HTTP and TCP together) served at once; more are closed.
    pub connections_max: usize,
    /// Replication status for `GET /status`, `GET /metrics` and `GET /lifecycle`.
    pub node: Option<Arc<crate::replication::NodeStatus>>,
    /// ILP/HTTP answers 204 only once the request's rows are in the object
    /// store (`--ack-after upload`), not as soon as they are durable here.
    pub ack_after_upload: bool,
    /// ... waiting at most this long (then 503, not acknowledged).
    pub ack_upload_timeout: Duration,
    /// Role switches (`SWITCH ROLE`); `None` without an object store.
    pub control: Option<Arc<dyn crate::replication::RoleControl>>,
    /// SQL (`/exec`, `/exp`, PostgreSQL wire) is served.
    pub sql: bool,
    /// PostgreSQL wire protocol; `None` turns it off.
    pub pg: Option<SocketAddr>,
    /// Users and their permissions on every port (`Auth::off()`: none).
    pub auth: Arc<crate::auth::Auth>,
    /// TLS on every port, when set.
    pub tls: Option<crate::auth::tls::Tls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http: "127.0.0.1:9000".parse().expect("valid address"),
            ilp: "127.0.0.1:9009".parse().expect("valid address"),
            partition_by: crate::table::PartitionBy::Day,
            http_request_bytes_max: 256 * 1024 * 1024,
            ilp_line_bytes_max: 1024 * 1024,
            ilp_commit_rows: 100_000,
            ilp_commit_interval: Duration::from_millis(100),
            connections_max: 4096,
            node: None,
            ack_after_upload: false,
            ack_upload_timeout: Duration::from_secs(30),
            control: None,
            sql: true,
            pg: Some("127.0.0.1:8812".parse().expect("valid address")),
            auth: Arc::new(crate::auth::Auth::off()),
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot start the SQL engine: {0}")]
    Sql(std::io::Error),
}

/// How often idle tasks look at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// What every connection task shares.
pub(crate) struct ServerState {
    db: Weak<Database>,
    config: ServerConfig,
    shutting_down: AtomicBool,
    connections: Arc<AtomicUsize>,
    /// Numbers the `errorId` of HTTP error answers.
    errors: AtomicU64,
    /// Random per process, so error ids from two runs do not collide.
    error_prefix: u64,
    #[cfg(feature = "sql")]
    sql: Option<Arc<crate::sql::SqlEngine>>,
}

impl ServerState {
    fn ingest_options(&self, precision: crate::ilp::Precision) -> IngestOptions {
        IngestOptions {
            precision,
            partition_by: self.config.partition_by,
        }
    }

    /// Why writes are refused now (a replica, a role switch, fenced):
    /// ILP/HTTP answers 421, ILP/TCP closes the connection.
    fn write_refusal(&self) -> Option<DbError> {
        self.db.upgrade().and_then(|d| d.write_refusal())
    }

    fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Counts a connection in; `None` when at the limit.
    fn enter(&self) -> Option<Slot> {
        Slot::enter(&self.connections, self.config.connections_max)
    }
}

/// A connection's place in a count of open ones, given back on drop.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Counts one in; `None` (and nothing counted) when `limit` are open.
    pub(crate) fn enter(count: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
        if count.fetch_add(1, Ordering::AcqRel) >= limit {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running server. [`Server::shutdown`] stops it and closes the database.
pub struct Server {
    db: Arc<Database>,
    state: Arc<ServerState>,
    pub http_addr: SocketAddr,
    pub ilp_addr: SocketAddr,
    /// Where PostgreSQL clients connect, when served.
    pub pg_addr: Option<SocketAddr>,
    #[cfg(feature = "sql")]
    pg_stop: Option<tokio::sync::watch::Sender<bool>>,
}

#[derive(Clone, Copy)]
enum Protocol {
    Http,
    Ilp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http => "ILP/HTTP",
            Protocol::Ilp => "ILP/TCP",
        }
    }
}

/// Resolves port 0 and checks that no one (no other basalt either) listens
/// on `addr`: the probe socket is bound without `SO_REUSEPORT`.
fn probe(what: &'static str, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
    let l = StdListener::bind(addr).map_err(|source| ServerError::Listen { what, addr, source })?;
    l.local_addr()
        .map_err(|source| ServerError::Listen { what, addr, source })
}

impl Server {
    /// Binds both addresses on every shard of `db` and starts serving.
    pub fn start(db: Database, config: ServerConfig) -> Result<Server, ServerError> {
        let db = Arc::new(db);
        let http_addr = probe("ILP/HTTP", config.http)?;
        let ilp_addr = probe("ILP/TCP", config.ilp)?;
        #[cfg(feature = "sql")]
        let sql = if config.sql {
            Some(
                crate::sql::SqlEngine::start(
                    db.data_dir(),
                    Arc::downgrade(&db),
                    config.control.clone(),
                    &crate::sql::SqlOptions::default(),
                )
                .map_err(ServerError::Sql)?,
            )
        } else {
            None
        };
        #[cfg(feature = "sql")]
        let (pg_addr, pg_stop) = match (&sql, config.pg) {
            (Some(engine), Some(addr)) => {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let bound = crate::sql::pg::listen(
                    engine.clone(),
                    addr,
                    config.auth.clone(),
                    config.tls.clone(),
                    stop_rx,
                )
                .map_err(|source| ServerError::Listen {
                    what: "PostgreSQL",
                    addr,
                    source,
                })?;
                (Some(bound), Some(stop_tx))
            }
            _ => (None, None),
        };
        #[cfg(not(feature = "sql"))]
        let pg_addr = None;
        let state = Arc::new(ServerState {
            db: Arc::downgrade(&db),
            config,
            shutting_down: AtomicBool::new(false),
            connections: Arc::new(AtomicUsize::new(0)),
            errors: AtomicU64::new(0),
            error_prefix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()),
            #[cfg(feature = "sql")]
            sql,
        });
        let server = Server {
            db,
            state,
            http_addr,
            ilp_addr,
            pg_addr,
            #[cfg(feature = "sql")]
            pg_stop,
        };
        for shard in 0..server.db.shard_count() {
            for (protocol, addr) in [(Protocol::Http, http_addr), (Protocol::Ilp, ilp_addr)] {
                let (tx, rx) = flume::bounded(1);
                let state = server.state.clone();
                server.db.spawn_on_shard(
                    shard,
                    Box::new(move |env: ShardEnv| {
                        Box::pin(async move {
                            let listener = match Listener::bind(env.stack, addr) {
                                Ok(l) => {
                                    let _ = tx.send(Ok(()));
                                    l
                                }
                                Err(e) => {
                                    let _ = tx.send(Err(e));
                                    return;
                                }
                            };
                            accept_loop(listener, protocol, state, env).await;
                        })
                    }),
                )?;
                match rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(source)) => {
                        server.stop_tasks();
                        return Err(ServerError::Listen {
                            what: protocol.name(),
                            addr,
                            source,
                        });
                    }
                    Err(_) => return Err(DbError::Closed.into()),
                }
            }
        }
        info!(
            http = %http_addr,
            ilp = %ilp_addr,
            shards = server.db.shard_count(),
            engine = %server.db.engine().choice,
            tls = server.state.config.tls.is_some(),
            users = server.state.config.auth.users().map_or(0, |u| u.len()),
            "serving ILP over HTTP and TCP"
        );
        Ok(server)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The database, for what lives beside the server (role switches)
    /// without keeping it open at shutdown.
    pub fn database_weak(&self) -> Weak<Database> {
        Arc::downgrade(&self.db)
    }

    fn stop_tasks(&self) {
        self.state.shutting_down.store(true, Ordering::Release);
        #[cfg(feature = "sql")]
        if let Some(stop) = &self.pg_stop {
            let _ = stop.send(true);
        }
    }

    /// Stops accepting, lets requests in flight finish (TCP connections
    /// commit what they hold), then closes the database: everything
    /// acknowledged is durable, and applied txns are checkpointed.
    pub fn shutdown(self, grace: Duration) {
        self.stop_tasks();
        let deadline = Instant::now() + grace;
        while self.state.connections.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.state.connections.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "closing connections still open after the grace period"
            );
        }
        // Tasks hold the database only while handling a request.
        let mut db = self.db;
        loop {
            match Arc::try_unwrap(db) {
                Ok(d) => {
                    d.close();
                    break;
                }
                Err(d) if Instant::now() < deadline + Duration::from_secs(5) => {
                    db = d;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    tracing::warn!("a request still holds the database; exiting without a final checkpoint (the WAL has every acknowledged commit)");
                    break;
                }
            }
        }
        info!("server stopped");
    }
}

enum Event<T> {
    Ready(T),
    Tick,
}

/// Waits for `f`, or `d`, whichever comes first.
async fn or_tick<T>(
    stack: NetStack,
    d: Duration,
    f: impl std::future::Future<Output = T>,
) -> Event<T> {
    futures_lite::future::or(async { Event::Ready(f.await) }, async {
        crate::io::sleep(stack, d).await;
        Event::Tick
    })
    .await
}

async fn accept_loop(
    listener: Listener,
    protocol: Protocol,
    state: Arc<ServerState>,
    env: ShardEnv,
) {
    // One accept in flight across shutdown ticks: dropping an io_uring
    // accept that already completed would leak the accepted socket.
    let mut accept = Box::pin(listener.accept());
    loop {
        let accepted = match or_tick(env.stack, SHUTDOWN_POLL, accept.as_mut()).await {
            Event::Tick => {
                if state.shutting_down() {
                    return;
                }
                continue;
            }
            Event::Ready(r) => r,
        };
        accept = Box::pin(listener.accept());
        if state.shutting_down() {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(protocol = protocol.name(), error = %e, "accept failed");
                crate::io::sleep(env.stack, Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(guard) = state.enter() else {
            tracing::warn!(
                protocol = protocol.name(),
                peer = ?peer,
                limit = state.config.connections_max,
                "refusing connection: connections_max reached"
            );
            continue;
        };
        stream.set_nodelay();
        let state = state.clone();
        let task: crate::io::LocalTask = Box::pin(async move {
            let stream = match &state.config.tls {
                None => stream,
                Some(tls) => match stream.accept_tls(tls, env.stack).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(protocol = protocol.name(), peer = ?peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            match protocol {
                Protocol::Http => http::serve(stream, peer, state, env).await,
                Protocol::Ilp => tcp::serve(stream, peer, state, env).await,
            }
            drop(guard);
        });
        crate::io::spawn_local(env.stack, task);
    }
}
