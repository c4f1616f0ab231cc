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
//!
//! With users, a connection first logs in with QuestDB's ECDSA challenge
//! ([`login`]); a failed login closes it without a word, as QuestDB does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::net::Stream;
use super::{now_us, or_tick, Event, ServerState, SHUTDOWN_POLL};
use crate::auth::{Auth, Denied, Door, Permission, Principal};
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
    peer_addr: Option<SocketAddr>,
    state: Arc<ServerState>,
    env: ShardEnv,
) {
    let peer = peer_addr.map_or_else(|| "?".to_string(), |p| p.to_string());
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
    if state.config.auth.enabled() {
        let ip = peer_addr.map(|p| p.ip());
        let who = match login(&mut stream, &mut data, &mut filled, ip, &state, env).await {
            Ok(p) => p,
            Err(Some((user, denied))) => {
                let delay = state.config.auth.failed(Door::IlpTcp, ip, &user, &denied);
                crate::io::sleep(env.stack, delay).await;
                return;
            }
            Err(None) => return,
        };
        state.config.auth.succeeded(Door::IlpTcp);
        if let Err(msg) = who.require(Permission::Write, &"ILP/TCP writes") {
            warn!(peer, "ILP/TCP: closing connection: {msg}");
            return;
        }
    }
    // Lines that came with the signature are parsed before the first read
    // (which may never come), the same way as any read's.
    let mut unread = filled > 0;
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
        let eof = if std::mem::take(&mut unread) {
            false
        } else {
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
            filled += n;
            n == 0
        };
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

/// The time a client has to log in (QuestDB's clients wait 15 s).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// A key id line longer than this is refused.
const KEY_ID_BYTES_MAX: usize = 256;
/// A signature line longer than this is refused (base64 of a 72-byte DER
/// signature is 96 bytes).
const SIGNATURE_BYTES_MAX: usize = 128;

/// Reads one `\n`-terminated line into `data[..filled]` (more bytes may
/// follow it); returns where the newline is. `None` on EOF, error, timeout,
/// shutdown or a line longer than `max`.
async fn read_line(
    stream: &mut Stream,
    data: &mut [u8],
    filled: &mut usize,
    max: usize,
    deadline: Instant,
    state: &ServerState,
    env: ShardEnv,
) -> Option<usize> {
    loop {
        if let Some(i) = memchr::memchr(b'\n', &data[..*filled]) {
            return (i <= max).then_some(i);
        }
        if *filled > max || *filled == data.len() {
            return None;
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        match or_tick(
            env.stack,
            left.min(SHUTDOWN_POLL),
            stream.read(&mut data[*filled..]),
        )
        .await
        {
            Event::Tick if state.shutting_down() => return None,
            Event::Tick => {}
            Event::Ready(Ok(0) | Err(_)) => return None,
            Event::Ready(Ok(n)) => *filled += n,
        }
    }
}

/// QuestDB's ILP/TCP login: the client sends its key id and a newline; the
/// server answers a 512-byte challenge and a newline; the client sends the
/// base64 ECDSA P-256 signature of the challenge and a newline, then its
/// ILP lines. A challenge goes out whatever the key id, so unknown ids and
/// bad signatures look alike. `Err(Some(..))` for a failed login (counted
/// and slowed down by the caller), `Err(None)` when the client went away.
async fn login(
    stream: &mut Stream,
    data: &mut [u8],
    filled: &mut usize,
    peer: Option<std::net::IpAddr>,
    state: &ServerState,
    env: ShardEnv,
) -> Result<Principal, Option<(String, Denied)>> {
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    let wait = state.config.auth.admit(peer);
    if !wait.is_zero() {
        crate::io::sleep(env.stack, wait).await;
    }
    let Some(end) = read_line(stream, data, filled, KEY_ID_BYTES_MAX, deadline, state, env).await
    else {
        let claimed = String::from_utf8_lossy(&data[..(*filled).min(64)]).into_owned();
        return Err((*filled > 0).then(|| {
            (
                claimed,
                Denied::Malformed("no key id line within the time or size limit".into()),
            )
        }));
    };
    let key_id = String::from_utf8_lossy(&data[..end])
        .trim_end_matches('\r')
        .to_string();
    data.copy_within(end + 1..*filled, 0);
    *filled -= end + 1;
    let mut challenge = Auth::ilp_challenge();
    challenge.push(b'\n');
    if stream.write_all(&challenge).await.is_err() {
        return Err(None);
    }
    challenge.pop();
    let Some(end) = read_line(
        stream,
        data,
        filled,
        SIGNATURE_BYTES_MAX,
        deadline,
        state,
        env,
    )
    .await
    else {
        return Err(Some((
            key_id,
            Denied::Malformed("no signature line within the time or size limit".into()),
        )));
    };
    let result = state
        .config
        .auth
        .verify_ilp(&key_id, &challenge, &data[..end]);
    data.copy_within(end + 1..*filled, 0);
    *filled -= end + 1;
    result.map_err(|d| Some((key_id, d)))
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
