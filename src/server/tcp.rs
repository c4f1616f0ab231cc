//! ILP over TCP: a stream of lines, no acknowledgements. A connection's rows
//! are committed once it holds `ilp_commit_rows` of them, once the oldest is
//! `ilp_commit_interval` old, and when the peer closes. A malformed line
//! closes the connection with a log line naming the problem; the lines
//! before it are committed.
//!
//! A connection also commits after 64 MiB of ILP text (`COMMIT_BYTES`),
//! and stops reading at shutdown (committing what it holds).
//!
//! One commit per connection is in flight while the next rows are parsed:
//! its ticket is awaited before the next commit is sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};

use super::net::Stream;
use super::{now_us, or_tick, Event, ServerState, SHUTDOWN_POLL};
use crate::db::ShardEnv;
use crate::ilp::Precision;
use crate::ingest::{Committing, IngestBuffer, Ingestor};

/// First size of a connection's read buffer; it doubles up to the line limit.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// A connection's rows are also committed after this much ILP text, which
/// bounds what one connection holds in memory whatever its row count.
const COMMIT_BYTES: usize = 64 * 1024 * 1024;

pub(super) async fn serve(
    mut stream: Stream,
    peer: Option<SocketAddr>,
    state: Arc<ServerState>,
    env: ShardEnv,
) {
    let peer = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
    debug!(peer, shard = env.shard, "ILP/TCP connection");
    if let Some(e) = state.write_refusal() {
        warn!(peer, "ILP/TCP: closing connection: {e}");
        return;
    }
    let mut conn = Connection {
        state: &state,
        peer: &peer,
        buf: IngestBuffer::default(),
        in_flight: Vec::new(),
        oldest: None,
        bytes: 0,
    };
    let line_max = state.config.ilp_line_bytes_max;
    let mut data = vec![0u8; READ_BUFFER_BYTES.min(line_max.max(1024))];
    let mut filled = 0;
    loop {
        if filled == data.len() {
            if data.len() >= line_max {
                warn!(
                    peer,
                    limit = line_max,
                    "ILP/TCP: closing connection: a line is longer than ilp_line_bytes_max"
                );
                break;
            }
            data.resize((data.len() * 2).min(line_max), 0);
        }
        // With rows waiting, wake up in time for the commit interval.
        let wait = match conn.oldest {
            Some(t) => state
                .config
                .ilp_commit_interval
                .saturating_sub(t.elapsed())
                .min(SHUTDOWN_POLL),
            None => SHUTDOWN_POLL,
        };
        let n = match or_tick(env.stack, wait, stream.read(&mut data[filled..])).await {
            Event::Tick => {
                if conn.due() && !conn.commit().await {
                    return;
                }
                if state.shutting_down() {
                    break;
                }
                continue;
            }
            Event::Ready(Ok(n)) => n,
            Event::Ready(Err(e)) => {
                debug!(peer, error = %e, "ILP/TCP read failed");
                break;
            }
        };
        let eof = n == 0;
        filled += n;
        // Whole lines only, unless the peer is done: then the rest is the
        // last line. `add` says how far it got (a newline inside a quoted
        // string does not end a line), and the rest waits for more bytes.
        let Some(used) = conn.add(&data[..filled], eof) else {
            break;
        };
        data.copy_within(used..filled, 0);
        filled -= used;
        conn.bytes += used;
        if eof || state.shutting_down() {
            break;
        }
        let full = conn.buf.rows() >= state.config.ilp_commit_rows || conn.bytes >= COMMIT_BYTES;
        if (full || conn.due()) && !conn.commit().await {
            return;
        }
    }
    conn.commit().await;
    conn.wait_in_flight().await;
    debug!(peer, "ILP/TCP connection closed");
}

struct Connection<'a> {
    state: &'a ServerState,
    peer: &'a str,
    buf: IngestBuffer,
    in_flight: Vec<Committing>,
    /// When the oldest uncommitted row arrived.
    oldest: Option<Instant>,
    /// ILP bytes parsed since the last commit.
    bytes: usize,
}

impl Connection<'_> {
    fn due(&self) -> bool {
        self.oldest
            .is_some_and(|t| t.elapsed() >= self.state.config.ilp_commit_interval)
    }

    /// Parses the complete lines of `text` (all of it when `last`) into the
    /// buffer and returns the bytes used; `None` (after logging why) on a
    /// bad line.
    fn add(&mut self, text: &[u8], last: bool) -> Option<usize> {
        let db = self.state.db.upgrade()?;
        let ingestor = Ingestor::new(&db, self.state.ingest_options(Precision::Nanos));
        let result = ingestor.add(&mut self.buf, text, now_us(), last);
        if self.buf.rows() > 0 && self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        match result {
            Ok(used) => Some(used),
            Err(e) => {
                warn!(peer = self.peer, error = %e, "ILP/TCP: closing connection on a bad line; lines before it are committed");
                None
            }
        }
    }

    /// Sends the held rows as one txn per table, after the previous commit
    /// is durable. False (after logging why) when a commit failed.
    async fn commit(&mut self) -> bool {
        if !self.wait_in_flight().await {
            return false;
        }
        self.oldest = None;
        self.bytes = 0;
        if self.buf.rows() == 0 {
            return true;
        }
        let Some(db) = self.state.db.upgrade() else {
            warn!(
                peer = self.peer,
                rows = self.buf.rows(),
                "ILP/TCP: server shut down before rows could be committed"
            );
            return false;
        };
        let ingestor = Ingestor::new(&db, self.state.ingest_options(Precision::Nanos));
        match ingestor.submit_async(&mut self.buf).await {
            Ok(c) => {
                self.in_flight = c;
                true
            }
            Err(e) => {
                warn!(peer = self.peer, error = %e, "ILP/TCP: commit failed; closing connection");
                false
            }
        }
    }

    async fn wait_in_flight(&mut self) -> bool {
        let mut ok = true;
        for c in self.in_flight.drain(..) {
            if let Err(e) = c.ticket.wait_async().await {
                warn!(peer = self.peer, table = c.table, rows = c.rows, error = %e, "ILP/TCP: commit failed; closing connection");
                ok = false;
            }
        }
        ok
    }
}
