//! QWP over WebSocket on the HTTP port (docs/qwp.md): ingress on
//! `GET /write/v4` and `/api/v4/write`, egress (SQL) on `GET /read/v1` and
//! `/api/v1/read`.
//!
//! hyper answers the upgrade; the connection then stays on the shard task
//! that accepted it ([`run`]). Ingress decodes each message onto column
//! batches and acknowledges it (cumulatively, in order) once its rows are
//! durable, the guarantee of ILP/HTTP's 204; frames keep arriving while
//! earlier ones are being made durable, so one connection's commits group.
//! Egress runs each query on the SQL engine's threads and forwards its
//! encoded batches, within the client's byte credit.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role as WsRole, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use super::http::{full, Answer};
use super::{now_us, or_tick, Event, ServerState, SHUTDOWN_POLL};
use crate::batch::Batch;
use crate::db::{CommitTicket, DbError, ShardEnv, TableHandle};
use crate::qwp::ingress::{self, MapError, Refusal, Session};
#[cfg(feature = "sql")]
use crate::qwp::ServerInfo;
use crate::qwp::{self, status, Role};

/// Largest QWP message accepted (before the HTTP request limit lowers it).
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;
/// Messages received and not yet durable before reading pauses.
const PENDING_MAX: usize = 256;

/// Which QWP endpoint a connection upgraded on.
#[derive(Clone, Copy, Debug)]
pub(super) enum Endpoint {
    Ingress,
    Egress,
}

/// An accepted upgrade, run once hyper hands the connection back.
pub(super) struct Upgrade {
    pub endpoint: Endpoint,
    /// Egress: rows per result batch the client asked for
    /// (`X-QWP-Max-Batch-Rows`), within the server's own limit.
    #[cfg_attr(not(feature = "sql"), allow(dead_code))]
    pub batch_rows: usize,
    /// Whom the connection's queries run as.
    #[cfg_attr(not(feature = "sql"), allow(dead_code))]
    pub who: crate::auth::Principal,
}

fn message_limit(state: &ServerState) -> usize {
    MESSAGE_BYTES_MAX.min(state.config.http_request_bytes_max)
}

/// The node's role as QWP clients read it.
fn role(state: &ServerState) -> (Role, u64) {
    match &state.config.node {
        None => (Role::Standalone, 0),
        Some(n) => {
            let st = n.state();
            let role = match (st.role, st.switching) {
                (crate::replication::Role::Replica, Some(crate::replication::Role::Primary)) => {
                    Role::PrimaryCatchup
                }
                (crate::replication::Role::Replica, _) => Role::Replica,
                (crate::replication::Role::Primary, _) if !st.writable => Role::PrimaryCatchup,
                (crate::replication::Role::Primary, _) => Role::Primary,
            };
            (role, st.epoch)
        }
    }
}

fn plain(status: StatusCode, msg: String) -> Answer {
    let mut r = Response::new(full(msg));
    *r.status_mut() = status;
    r
}

/// Answers a WebSocket upgrade request: 101 and the upgrade to run, or the
/// refusal clients understand (421 with the node's role for writes to a
/// node that takes none, so that a client tries its next address).
pub(super) fn upgrade(
    req: Request<Incoming>,
    state: &ServerState,
    endpoint: Endpoint,
    who: crate::auth::Principal,
) -> (Answer, Option<Upgrade>) {
    let h = req.headers();
    let has_token = |name, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(UPGRADE, "websocket") || !has_token(CONNECTION, "upgrade") {
        let msg = format!(
            "{} is QWP over WebSocket: send a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
            req.uri().path()
        );
        return (plain(StatusCode::BAD_REQUEST, msg), None);
    }
    if h.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 is required".into(),
        );
        r.headers_mut()
            .insert("Sec-WebSocket-Version", HeaderValue::from_static("13"));
        return (r, None);
    }
    let Some(key) = h.get("sec-websocket-key").map(|k| k.as_bytes().to_vec()) else {
        return (
            plain(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is missing".into(),
            ),
            None,
        );
    };
    if let Some(v) = h.get("x-qwp-max-version").and_then(|v| v.to_str().ok()) {
        if v.trim().parse::<u32>().map_or(true, |v| v < 1) {
            let msg = format!("X-QWP-Max-Version {v:?}: this server speaks QWP version 1");
            return (plain(StatusCode::UPGRADE_REQUIRED, msg), None);
        }
    }
    match endpoint {
        Endpoint::Ingress => {
            if let Some(e) = state.write_refusal() {
                let (role, _) = role(state);
                let role = if role == Role::Standalone || role == Role::Primary {
                    Role::Replica
                } else {
                    role
                };
                let mut r = plain(StatusCode::MISDIRECTED_REQUEST, e.to_string());
                r.headers_mut()
                    .insert("X-QuestDB-Role", HeaderValue::from_static(role.header()));
                return (r, None);
            }
        }
        Endpoint::Egress => {
            #[cfg(feature = "sql")]
            let enabled = state.sql.is_some();
            // A build without SQL (`--no-default-features`) answers queries
            // as a server with SQL off does, not with a dropped upgrade.
            #[cfg(not(feature = "sql"))]
            let enabled = false;
            if !enabled {
                let msg = "SQL is not enabled on this server".to_string();
                return (plain(StatusCode::NOT_FOUND, msg), None);
            }
        }
    }
    #[cfg(feature = "sql")]
    let server_rows = crate::qwp::egress::BATCH_ROWS_MAX;
    #[cfg(not(feature = "sql"))]
    let server_rows = 16_384;
    // Zero, malformed or larger values leave the server's limit.
    let batch_rows = h
        .get("x-qwp-max-batch-rows")
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .map_or(server_rows, |n| n.min(server_rows));
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert(UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    hs.insert(
        "Sec-WebSocket-Accept",
        HeaderValue::from_str(&accept).expect("base64"),
    );
    hs.insert("X-QWP-Version", HeaderValue::from_static("1"));
    if let Endpoint::Ingress = endpoint {
        hs.insert(
            "X-QWP-Max-Batch-Size",
            HeaderValue::from(message_limit(state) as u64),
        );
    }
    (
        r,
        Some(Upgrade {
            endpoint,
            batch_rows,
            who,
        }),
    )
}

/// The connection's socket after the upgrade, as tokio's I/O traits see it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Io for T {}

type Ws<'a> = WebSocketStream<Box<dyn Io + 'a>>;

/// Serves an upgraded connection to its end. `read` holds the bytes hyper
/// read past the request.
pub(super) async fn run<I>(up: Upgrade, io: I, read: Bytes, state: Arc<ServerState>, env: ShardEnv)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    let io: Box<dyn Io + '_> = Box::new(hyper_util::rt::TokioIo::new(io));
    let limit = message_limit(&state);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit + 64))
        .max_frame_size(Some(limit + 64));
    let ws =
        WebSocketStream::from_partially_read(io, read.to_vec(), WsRole::Server, Some(config)).await;
    match up.endpoint {
        Endpoint::Ingress => Ingress::new(ws, state, env).run().await,
        #[cfg(feature = "sql")]
        Endpoint::Egress => egress::run(ws, state, env, up.batch_rows, up.who).await,
        #[cfg(not(feature = "sql"))]
        Endpoint::Egress => {}
    }
}

/// Closes with a code and a reason (cut to fit a control frame).
async fn close(ws: &mut Ws<'_>, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: qwp::truncate(reason, 120).to_string().into(),
    };
    let _ = ws.close(Some(frame)).await;
}

/// A message's rows on their way to durability.
struct Pending {
    /// The first message the acknowledgement of `seq` covers that no
    /// earlier entry does: `seq`, or the start of its deferred group.
    first: u64,
    seq: u64,
    tickets: VecDeque<CommitTicket>,
}

/// Rows of a deferred-commit group held before they are committed anyway
/// (without an acknowledgement, which waits for the group's end), as
/// QuestDB does past `qwp.max.uncommitted.rows`.
const DEFERRED_ROWS_MAX: usize = 1_000_000;

struct Ingress<'a> {
    ws: Ws<'a>,
    state: Arc<ServerState>,
    env: ShardEnv,
    session: Session,
    /// Sequence number of the next message (the count received).
    next_seq: u64,
    /// Messages in order; acknowledged once all their txns are durable.
    pending: VecDeque<Pending>,
    /// The open deferred-commit group: its first message, rows held, and
    /// txns already submitted for it.
    deferred_since: Option<u64>,
    deferred: Vec<(Arc<TableHandle>, Batch)>,
    deferred_rows: usize,
    deferred_tickets: VecDeque<CommitTicket>,
    /// Highest sequence number acknowledged.
    acked: Option<u64>,
    /// After a refusal, later messages are dropped unanswered: the client
    /// reconnects and sends them again.
    broken: bool,
}

enum IngressEvent {
    Message(Option<Result<Message, WsError>>),
    Durable(Result<u64, DbError>),
}

/// Why a message was not committed.
enum Failure {
    /// Refused for what it is (a status the client reads).
    Refused(Refusal),
    /// Valid, but its rows could not be made durable.
    Write(DbError),
}

impl From<MapError> for Failure {
    fn from(e: MapError) -> Failure {
        match e {
            MapError::Refused(r) => Failure::Refused(r),
            MapError::Db(e) => Failure::Write(e),
        }
    }
}

impl<'a> Ingress<'a> {
    fn new(ws: Ws<'a>, state: Arc<ServerState>, env: ShardEnv) -> Ingress<'a> {
        Ingress {
            ws,
            state,
            env,
            session: Session::default(),
            next_seq: 0,
            pending: VecDeque::new(),
            deferred_since: None,
            deferred: Vec::new(),
            deferred_rows: 0,
            deferred_tickets: VecDeque::new(),
            acked: None,
            broken: false,
        }
    }

    async fn run(mut self) {
        loop {
            // Checked every turn: a busy connection never lets the tick fire.
            if self.state.shutting_down() {
                // Messages in flight are acknowledged once durable; the
                // close (1001) makes the client send the rest elsewhere.
                let _ = self.drain().await;
                close(&mut self.ws, CloseCode::Away, "server shutting down").await;
                return;
            }
            let ev = {
                let front = self.pending.front().and_then(|p| p.tickets.front());
                let durable = async {
                    match front {
                        Some(t) => IngressEvent::Durable(t.ready().await),
                        None => std::future::pending().await,
                    }
                };
                let full = self.pending.len() >= PENDING_MAX;
                let ws = &mut self.ws;
                let next = async {
                    if full {
                        std::future::pending().await
                    } else {
                        IngressEvent::Message(ws.next().await)
                    }
                };
                or_tick(
                    self.env.stack,
                    SHUTDOWN_POLL,
                    futures_lite::future::or(durable, next),
                )
                .await
            };
            let ev = match ev {
                Event::Tick => continue,
                Event::Ready(ev) => ev,
            };
            let go_on = match ev {
                IngressEvent::Durable(r) => self.durable(r).await,
                IngressEvent::Message(None) => false,
                IngressEvent::Message(Some(Err(e))) => {
                    self.transport_error(e).await;
                    false
                }
                IngressEvent::Message(Some(Ok(m))) => match m {
                    Message::Binary(b) => {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        self.broken || self.message(seq, &b).await
                    }
                    Message::Text(_) => {
                        close(
                            &mut self.ws,
                            CloseCode::Unsupported,
                            "QWP is binary: text frames are not accepted",
                        )
                        .await;
                        false
                    }
                    Message::Close(_) => {
                        // Nothing can be sent after the peer's close but
                        // the reply to it.
                        let _ = self.ws.close(None).await;
                        false
                    }
                    // Pongs go out with the next write or read.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => true,
                },
            };
            if !go_on {
                return;
            }
        }
    }

    /// The front message's next txn is durable (or failed).
    async fn durable(&mut self, r: Result<u64, DbError>) -> bool {
        let p = self.pending.front_mut().expect("awaited");
        p.tickets.pop_front();
        if let Err(e) = r {
            let (first, seq) = (p.first, p.seq);
            self.pending.pop_front();
            return self.fail(first, seq, Failure::Write(e)).await;
        }
        if !p.tickets.is_empty() {
            return true;
        }
        // Acknowledge the last of a run of durable messages.
        let mut seq = p.seq;
        self.pending.pop_front();
        while let Some(q) = self.pending.front().filter(|q| q.tickets.is_empty()) {
            seq = q.seq;
            self.pending.pop_front();
        }
        self.ack(seq).await
    }

    /// One message: decoded, mapped and submitted; `false` ends the
    /// connection.
    async fn message(&mut self, seq: u64, frame: &[u8]) -> bool {
        let first = self.deferred_since.unwrap_or(seq);
        match self.take(seq, frame).await {
            Ok(()) => true,
            Err(f) => self.fail(first, seq, f).await,
        }
    }

    async fn take(&mut self, seq: u64, frame: &[u8]) -> Result<(), Failure> {
        let Some(db) = self.state.db.upgrade() else {
            return Err(Failure::Write(DbError::Closed));
        };
        if let Some(e) = db.write_refusal() {
            return Err(Failure::Write(e));
        }
        let msg = ingress::decode(frame, self.session.dict_len()).map_err(Failure::Refused)?;
        let batches = ingress::to_batches(
            &db,
            &self.session,
            &msg,
            now_us(),
            self.state.config.partition_by,
        )?;
        self.session.apply_delta(&msg);
        let first = *self.deferred_since.get_or_insert(seq);
        self.deferred_rows += batches.iter().map(|(_, b)| b.row_count()).sum::<usize>();
        self.deferred.extend(batches);
        let defer = msg.defer_commit();
        if defer && self.deferred_rows <= DEFERRED_ROWS_MAX {
            // Acknowledged with the message that ends the group.
            return Ok(());
        }
        // Validated and encoded whole before any is sent.
        let group = std::mem::take(&mut self.deferred);
        self.deferred_rows = 0;
        let mut prepared = Vec::with_capacity(group.len());
        for (handle, batch) in group {
            prepared.push(db.prepare(&handle, batch).map_err(MapError::from)?);
        }
        for p in prepared {
            let t = db.submit_prepared_async(p).await.map_err(Failure::Write)?;
            self.deferred_tickets.push_back(t);
        }
        if defer {
            // Too many rows held: committed now, acknowledged at the end.
            return Ok(());
        }
        self.deferred_since = None;
        let tickets = std::mem::take(&mut self.deferred_tickets);
        if tickets.is_empty() && self.pending.is_empty() {
            if !self.ack(seq).await {
                return Err(Failure::Write(DbError::Closed));
            }
            return Ok(());
        }
        self.pending.push_back(Pending {
            first,
            seq,
            tickets,
        });
        Ok(())
    }

    /// Waits for every message in flight to be durable and acknowledges
    /// the last. `Err` names the first that failed (nothing from it on is
    /// acknowledged).
    async fn drain(&mut self) -> Result<(), (u64, u64, DbError)> {
        let mut last = None;
        while let Some(mut p) = self.pending.pop_front() {
            while let Some(t) = p.tickets.pop_front() {
                if let Err(e) = t.wait_async().await {
                    if let Some(seq) = last {
                        self.ack(seq).await;
                    }
                    return Err((p.first, p.seq, e));
                }
            }
            last = Some(p.seq);
        }
        if let Some(seq) = last {
            self.ack(seq).await;
        }
        Ok(())
    }

    async fn ack(&mut self, seq: u64) -> bool {
        if self.acked.is_some_and(|a| a >= seq) {
            return true;
        }
        self.acked = Some(seq);
        let mut out = Vec::with_capacity(11);
        out.push(status::OK);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        self.ws.send(Message::Binary(out.into())).await.is_ok()
    }

    /// Message `seq` (whose acknowledgement would also cover `first..seq`)
    /// was not committed. Earlier messages are made durable and
    /// acknowledged first (the clients expect it), never `first..=seq`;
    /// then the error. Later messages are dropped: the client sends them
    /// again after reconnecting. A node that stopped taking writes closes
    /// with 1000 instead, so the client finds the primary.
    async fn fail(&mut self, first: u64, seq: u64, f: Failure) -> bool {
        self.broken = true;
        self.deferred.clear();
        self.deferred_rows = 0;
        self.deferred_since = None;
        self.deferred_tickets.clear();
        let (first, seq, f) = match self.drain().await {
            Ok(()) => (first, seq, f),
            // An earlier message failed: that one is answered.
            Err((first, seq, e)) => (first, seq, Failure::Write(e)),
        };
        let r = match f {
            Failure::Refused(r) => r,
            Failure::Write(DbError::ReadOnly | DbError::NotPrimary(_)) => {
                close(
                    &mut self.ws,
                    CloseCode::Normal,
                    "this node no longer takes writes",
                )
                .await;
                return false;
            }
            Failure::Write(DbError::Closed) => {
                close(&mut self.ws, CloseCode::Away, "server shutting down").await;
                return false;
            }
            Failure::Write(e) => Refusal {
                status: status::WRITE_ERROR,
                message: format!("the rows could not be made durable: {e}"),
            },
        };
        warn!(
            seq,
            status = r.status,
            "QWP ingress: refused a message: {}",
            r.message
        );
        if first > 0 && !self.ack(first - 1).await {
            return false;
        }
        let m = qwp::truncate(&r.message, 1024);
        let mut out = Vec::with_capacity(11 + m.len());
        out.push(r.status);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&(m.len() as u16).to_le_bytes());
        out.extend_from_slice(m.as_bytes());
        self.ws.send(Message::Binary(out.into())).await.is_ok()
    }

    async fn transport_error(&mut self, e: WsError) {
        use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                let msg = format!("message of {size} bytes is over the limit of {max_size}");
                warn!("QWP ingress: {msg}");
                close(&mut self.ws, CloseCode::Size, &msg).await;
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            | WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Io(_) => {}
            e => {
                debug!(error = %e, "QWP ingress: WebSocket error");
                close(&mut self.ws, CloseCode::Protocol, &e.to_string()).await;
            }
        }
    }
}

/// `SERVER_INFO` for this node now.
#[cfg(feature = "sql")]
fn server_info(state: &ServerState) -> ServerInfo {
    let (role, epoch) = role(state);
    ServerInfo {
        role,
        epoch,
        capabilities: qwp::CAP_QUERY_FLAGS,
        wall_ns: now_us().saturating_mul(1000),
        cluster_id: "basalt".into(),
        node_id: state.config.http.to_string(),
    }
}

#[cfg(feature = "sql")]
mod egress {
    use super::*;
    use crate::qwp::egress::{self as wire, ClientMsg, Encoder, QueryRequest};
    use crate::sql::{Output, SqlEngine};

    /// What a running query sends the connection.
    enum Out {
        Frame(Vec<u8>),
        /// The query's last message, and the dictionary back.
        Done(Vec<u8>, Encoder),
    }

    /// Encoded messages queued between a query and the connection.
    const QUEUED_MAX: usize = 4;

    struct Running {
        rid: i64,
        rx: flume::Receiver<Out>,
        /// Bytes the client still takes; `None` is unbounded.
        credit: Option<i64>,
    }

    enum EgressEvent {
        Message(Option<Result<Message, WsError>>),
        Out(Option<Out>),
    }

    pub(super) async fn run(
        mut ws: Ws<'_>,
        state: Arc<ServerState>,
        env: ShardEnv,
        max_rows: usize,
        who: crate::auth::Principal,
    ) {
        let Some(engine) = state.sql.clone() else {
            return;
        };
        if ws
            .send(Message::Binary(
                qwp::server_info(&server_info(&state)).into(),
            ))
            .await
            .is_err()
        {
            return;
        }
        let mut encoder = Some(Encoder::default());
        // The client's dictionary is no longer ours (a cancelled query kept
        // it): reset before the next query.
        let mut reset = false;
        let mut running: Option<Running> = None;
        loop {
            // Checked every turn: a streaming query never lets the tick fire.
            if state.shutting_down() {
                close(&mut ws, CloseCode::Away, "server shutting down").await;
                return;
            }
            let ev = {
                let out = async {
                    match &running {
                        Some(r) if r.credit.is_none_or(|c| c > 0) => {
                            EgressEvent::Out(r.rx.recv_async().await.ok())
                        }
                        _ => std::future::pending().await,
                    }
                };
                let ws = &mut ws;
                let next = async { EgressEvent::Message(ws.next().await) };
                or_tick(
                    env.stack,
                    SHUTDOWN_POLL,
                    futures_lite::future::or(out, next),
                )
                .await
            };
            let ev = match ev {
                Event::Tick => continue,
                Event::Ready(ev) => ev,
            };
            match ev {
                EgressEvent::Out(out) => {
                    let r = running.as_mut().expect("polled");
                    let (frame, last) = match out {
                        Some(Out::Frame(f)) => (f, false),
                        Some(Out::Done(f, enc)) => {
                            encoder = Some(enc);
                            (f, true)
                        }
                        // The query's task ended without a last message.
                        None => (
                            wire::query_error(r.rid, status::INTERNAL_ERROR, "the query stopped"),
                            true,
                        ),
                    };
                    // Clients give back credit for result batches only.
                    if let Some(c) = r.credit.as_mut().filter(|_| is_batch(&frame)) {
                        *c -= frame.len() as i64;
                    }
                    if last {
                        running = None;
                        if encoder.is_none() {
                            encoder = Some(Encoder::default());
                            reset = true;
                        }
                    }
                    if ws.send(Message::Binary(frame.into())).await.is_err() {
                        return;
                    }
                }
                EgressEvent::Message(None) => return,
                EgressEvent::Message(Some(Err(e))) => {
                    debug!(error = %e, "QWP egress: WebSocket error");
                    return;
                }
                EgressEvent::Message(Some(Ok(m))) => match m {
                    Message::Binary(b) => match wire::decode_client(&b) {
                        Ok(ClientMsg::Query(q)) => {
                            if running.is_some() {
                                let msg = "one query at a time per connection: wait for the \
                                           running query's end";
                                let f = wire::query_error(q.request_id, status::PARSE_ERROR, msg);
                                if ws.send(Message::Binary(f.into())).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            let enc = encoder.take().unwrap_or_default();
                            let reset_now = std::mem::take(&mut reset)
                                || q.flags & wire::QUERY_FLAG_RESET_DICT != 0
                                || enc.dict_len() > wire::DICT_ENTRIES_SOFT_MAX;
                            running =
                                Some(start(&engine, q, enc, reset_now, max_rows, who.clone()));
                        }
                        Ok(ClientMsg::Cancel { request_id }) => {
                            if running.as_ref().is_some_and(|r| r.rid == request_id) {
                                // Dropping the receiver stops the query.
                                running = None;
                                encoder = Some(Encoder::default());
                                reset = true;
                                let f = wire::query_error(
                                    request_id,
                                    status::CANCELLED,
                                    "cancelled by the client",
                                );
                                if ws.send(Message::Binary(f.into())).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(ClientMsg::Credit { request_id, bytes }) => {
                            if let Some(r) = running.as_mut().filter(|r| r.rid == request_id) {
                                if let Some(c) = &mut r.credit {
                                    *c = c.saturating_add(bytes.min(i64::MAX as u64) as i64);
                                }
                            }
                        }
                        Err(e) => {
                            let rid = e.request_id.unwrap_or(0);
                            warn!("QWP egress: bad client message: {}", e.message);
                            if running.as_ref().is_some_and(|r| r.rid == rid) {
                                running = None;
                                encoder = Some(Encoder::default());
                                reset = true;
                            }
                            let f = wire::query_error(rid, e.status, &e.message);
                            if ws.send(Message::Binary(f.into())).await.is_err() {
                                return;
                            }
                        }
                    },
                    Message::Text(_) => {
                        close(&mut ws, CloseCode::Unsupported, "QWP is binary").await;
                        return;
                    }
                    Message::Close(_) => {
                        let _ = ws.close(None).await;
                        return;
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                },
            }
        }
    }

    fn is_batch(frame: &[u8]) -> bool {
        frame.get(qwp::HEADER_BYTES) == Some(&wire::MSG_RESULT_BATCH)
    }

    fn start(
        engine: &Arc<SqlEngine>,
        q: QueryRequest,
        enc: Encoder,
        reset: bool,
        max_rows: usize,
        who: crate::auth::Principal,
    ) -> Running {
        let (tx, rx) = flume::bounded(QUEUED_MAX);
        let rid = q.request_id;
        let credit = (q.initial_credit > 0).then(|| q.initial_credit.min(i64::MAX as u64) as i64);
        let engine2 = engine.clone();
        engine.runtime().spawn(async move {
            produce(&engine2, q, enc, reset, max_rows, &who, tx).await;
        });
        Running { rid, rx, credit }
    }

    async fn produce(
        engine: &SqlEngine,
        q: QueryRequest,
        mut enc: Encoder,
        reset: bool,
        max_rows: usize,
        who: &crate::auth::Principal,
        tx: flume::Sender<Out>,
    ) {
        let rid = q.request_id;
        if reset {
            enc.reset_dict();
            if tx
                .send_async(Out::Frame(wire::cache_reset()))
                .await
                .is_err()
            {
                return;
            }
        }
        let params = (!q.binds.is_empty()).then_some(q.binds);
        let last = match engine.execute(&q.sql, params, who).await {
            Err(e) if e.denied => wire::query_error(rid, status::SECURITY_ERROR, &e.message),
            Err(e) => wire::query_error(rid, status::PARSE_ERROR, &e.message),
            Ok(Output::Command(tag)) => wire::exec_done(rid, wire::op_type(tag), 0),
            Ok(Output::Rows(mut stream)) => {
                let schema = stream.schema();
                let (mut seq, mut total) = (0u64, 0u64);
                let mut failed = None;
                while let Some(b) = stream.next().await {
                    let b = match b {
                        Ok(b) => b,
                        Err(e) => {
                            failed = Some(wire::query_error(
                                rid,
                                status::INTERNAL_ERROR,
                                &format!("the query failed: {e}"),
                            ));
                            break;
                        }
                    };
                    let mut at = 0;
                    while at < b.num_rows() {
                        let n = max_rows.min(b.num_rows() - at);
                        let mut out = Vec::new();
                        if let Err(m) = enc.batch(rid, seq, &schema, &b.slice(at, n), &mut out) {
                            failed = Some(wire::query_error(rid, status::INTERNAL_ERROR, &m));
                            break;
                        }
                        if tx.send_async(Out::Frame(out)).await.is_err() {
                            return; // cancelled, or the connection ended
                        }
                        seq += 1;
                        total += n as u64;
                        at += n;
                    }
                    if failed.is_some() {
                        break;
                    }
                }
                match failed {
                    Some(f) => f,
                    None => {
                        if seq == 0 {
                            // A result without rows still tells its columns.
                            let mut out = Vec::new();
                            let empty = wire::empty_batch(&schema);
                            if let Err(m) = enc.batch(rid, 0, &schema, &empty, &mut out) {
                                let _ = tx
                                    .send_async(Out::Done(
                                        wire::query_error(rid, status::INTERNAL_ERROR, &m),
                                        enc,
                                    ))
                                    .await;
                                return;
                            }
                            if tx.send_async(Out::Frame(out)).await.is_err() {
                                return;
                            }
                            seq = 1;
                        }
                        wire::result_end(rid, seq - 1, total)
                    }
                }
            }
        };
        let _ = tx.send_async(Out::Done(last, enc)).await;
    }
}
