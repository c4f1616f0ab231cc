//! ILP over HTTP, as QuestDB serves it: `POST /write` and `/api/v2/write`
//! (`?precision=n|u|ms|s`, gzip bodies), `GET /ping` → 204, `GET /settings`
//! (what the official clients ask to pick a protocol version). A request is
//! answered 204 only once its rows are durable; errors are QuestDB's JSON
//! `{"code","message","line","errorId"}`.

use std::cell::Cell;
use std::convert::Infallible;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};

use super::net::{FuturesIo, Stream};
use super::ws;
use super::{now_us, or_tick, Event, ServerState, SHUTDOWN_POLL};
use crate::auth::{Denied, Door, Permission, Principal};
use crate::db::{Database, DbError, ShardEnv};
use crate::ilp::Precision;
use crate::ingest::{IngestError, Ingestor};

/// How long a request in flight may take to finish once shutdown began.
const SHUTDOWN_REQUEST_GRACE: Duration = Duration::from_secs(10);

pub(super) async fn serve(
    stream: Stream,
    peer: Option<SocketAddr>,
    state: Arc<ServerState>,
    env: ShardEnv,
) {
    let peer = peer.map(|p| p.ip());
    match stream {
        Stream::Glommio(s) => serve_io(FuturesIo(s), peer, state, env).await,
        Stream::Tokio(s) => serve_io(hyper_util::rt::TokioIo::new(s), peer, state, env).await,
        Stream::GlommioTls(s) => serve_io(FuturesIo(s), peer, state, env).await,
        Stream::TokioTls(s) => serve_io(hyper_util::rt::TokioIo::new(s), peer, state, env).await,
    }
}

async fn serve_io<I>(io: I, peer: Option<IpAddr>, state: Arc<ServerState>, env: ShardEnv)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let st = state.clone();
    // A WebSocket upgrade answered by the service: once its 101 is written,
    // this task takes the connection back from hyper and serves QWP on it.
    let upgraded: Rc<Cell<Option<ws::Upgrade>>> = Rc::default();
    let slot = upgraded.clone();
    let service = hyper::service::service_fn(move |req| {
        let st = st.clone();
        let slot = slot.clone();
        Box::pin(async move { Ok::<_, Infallible>(handle(req, &st, env, peer, &slot).await) })
    });
    let mut conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    loop {
        let done = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
        match or_tick(env.stack, SHUTDOWN_POLL, done).await {
            Event::Ready(r) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                    return;
                }
                if let Some(up) = upgraded.take() {
                    let parts = conn.into_parts();
                    ws::run(up, parts.io, parts.read_buf, state, env).await;
                }
                return;
            }
            Event::Tick if state.shutting_down() => {
                // Finish the request in flight (if any), then close.
                std::pin::Pin::new(&mut conn).graceful_shutdown();
                let done = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx));
                let _ = or_tick(env.stack, SHUTDOWN_REQUEST_GRACE, done).await;
                return;
            }
            Event::Tick => {}
        }
    }
}

/// A response body: whole, or streamed (`/exec`, `/exp`). A streamed body
/// that fails midway ends the connection, so a client never takes a cut
/// result for a whole one.
pub(super) type Body = UnsyncBoxBody<Bytes, BodyError>;
pub(super) type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type Answer = Response<Body>;

pub(super) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What an endpoint needs of the caller: nothing (`/ping`, and `/settings`,
/// which the official clients fetch without credentials), or a permission.
fn needs(method: &Method, path: &str) -> Option<Permission> {
    Some(match (method, path) {
        (_, "/ping" | "/settings") => return None,
        (&Method::POST, "/write" | "/api/v2/write") => Permission::Write,
        (_, "/write/v4" | "/api/v4/write") => Permission::Write,
        _ => Permission::Read,
    })
}

/// Checks the request's credentials against what `needs` says; the refusal
/// (401 after the per-peer slowdown, or 403) otherwise.
async fn authorize(
    req: &Request<Incoming>,
    state: &ServerState,
    env: ShardEnv,
    peer: Option<IpAddr>,
) -> Result<Principal, Answer> {
    let auth = &state.config.auth;
    if !auth.enabled() {
        return Ok(Principal::anonymous());
    }
    let Some(need) = needs(req.method(), req.uri().path()) else {
        return Ok(Principal::anonymous());
    };
    let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    // A header that already logged in is not a guess: it neither waits
    // nor costs a check again.
    let known = header.and_then(|h| auth.cached(h));
    if header.is_some() && known.is_none() {
        let wait = auth.admit(peer);
        if !wait.is_zero() {
            crate::io::sleep(env.stack, wait).await;
        }
    }
    let checked = match known {
        Some(p) => Ok(p),
        None => auth.http(header),
    };
    let who = match checked {
        Ok(p) => {
            auth.succeeded(Door::Http);
            p
        }
        Err(denied) => {
            if denied != Denied::Missing {
                let user = header.and_then(crate::auth::basic_user).unwrap_or_default();
                let delay = auth.failed(Door::Http, peer, &user, &denied);
                crate::io::sleep(env.stack, delay).await;
            }
            let mut r = plain_text(StatusCode::UNAUTHORIZED, denied.to_string());
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"basalt\", charset=\"UTF-8\""),
            );
            return Err(r);
        }
    };
    // The message is built only for a refusal.
    match who.require(need, &format_args!("{} {}", req.method(), req.uri().path())) {
        Ok(()) => Ok(who),
        Err(msg) => Err(plain_text(StatusCode::FORBIDDEN, msg)),
    }
}

/// A plain-text answer: what the official clients print as it is for 401
/// and 403.
pub(super) fn plain_text(status: StatusCode, msg: String) -> Answer {
    let mut r = Response::new(full(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    state: &ServerState,
    env: ShardEnv,
    peer: Option<IpAddr>,
    upgraded: &Cell<Option<ws::Upgrade>>,
) -> Answer {
    let who = match authorize(&req, state, env, peer).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    let path = req.uri().path();
    match (req.method(), path) {
        (&Method::GET, "/write/v4" | "/api/v4/write" | "/read/v1" | "/api/v1/read") => {
            let endpoint = if path.contains("write") {
                ws::Endpoint::Ingress
            } else {
                ws::Endpoint::Egress
            };
            let (answer, up) = ws::upgrade(req, state, endpoint, who);
            upgraded.set(up);
            answer
        }
        (&Method::GET | &Method::HEAD, "/ping") => {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            // InfluxDB clients read this header to recognise a server.
            r.headers_mut()
                .insert("X-Influxdb-Version", HeaderValue::from_static("v2.7.4"));
            r
        }
        (&Method::POST, "/write" | "/api/v2/write") => match state.write_refusal() {
            Some(e) => refused(state, &e),
            None => write(req, state, env).await,
        },
        (&Method::GET, "/lifecycle") => match &state.config.node {
            Some(n) => json(StatusCode::OK, n.lifecycle_json()),
            None => json(
                StatusCode::OK,
                serde_json::json!({"role": "primary", "epoch": 0, "switch_in_flight": null,
                    "ready": true, "writable": true, "fenced": null, "last_switch": null}),
            ),
        },
        (&Method::GET, "/settings") => json(StatusCode::OK, settings(state)),
        #[cfg(feature = "sql")]
        (&Method::GET, "/exec") => {
            super::sql::answer(req, state, super::sql::Kind::Exec, who).await
        }
        #[cfg(feature = "sql")]
        (&Method::GET, "/exp") => super::sql::answer(req, state, super::sql::Kind::Exp, who).await,
        (&Method::GET, "/status") => match &state.config.node {
            Some(n) => json(StatusCode::OK, n.status_json()),
            None => json(
                StatusCode::OK,
                serde_json::json!({"role": "primary", "store": null}),
            ),
        },
        (&Method::GET, "/metrics") => {
            let mut text = state
                .config
                .node
                .as_ref()
                .map_or_else(String::new, |n| n.metrics_text());
            text.push_str(&state.config.auth.metrics_text());
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (
            _,
            "/write" | "/api/v2/write" | "/ping" | "/settings" | "/status" | "/metrics" | "/exec"
            | "/exp" | "/lifecycle" | "/write/v4" | "/api/v4/write" | "/read/v1" | "/api/v1/read",
        ) => {
            let msg = format!("method {} is not allowed on {path}", req.method());
            invalid(state, StatusCode::METHOD_NOT_ALLOWED, msg)
        }
        _ => {
            let msg = format!(
                "no such endpoint: {path} (ILP is accepted on POST /write and /api/v2/write; QWP over WebSocket on /write/v4 and /read/v1; SQL on GET /exec and /exp)"
            );
            error(state, StatusCode::NOT_FOUND, "not_found", msg, None)
        }
    }
}

/// What the official QuestDB clients read to pick an ILP protocol version:
/// basalt speaks versions 1 (text) and 2 (doubles in binary; arrays are
/// refused, basalt has no array column). Both the current (`config`
/// object) and the older (top-level) shapes are given.
fn settings(state: &ServerState) -> serde_json::Value {
    let writes: &[&str] = if state.write_refusal().is_some() {
        &[]
    } else {
        &["http", "tcp"]
    };
    serde_json::json!({
        "config": {
            "release.type": "basalt",
            "release.version": env!("CARGO_PKG_VERSION"),
            "line.proto.support.versions": [1, 2],
            "ilp.proto.transports": ["tcp", "http"],
            "accepting.writes": writes,
            "cairo.max.file.name.length": crate::table::schema::NAME_BYTES_MAX,
        },
        "line.proto.support.versions": [1, 2],
        "preferences.version": 0,
        "preferences": {},
    })
}

pub(super) fn json(status: StatusCode, body: serde_json::Value) -> Answer {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(
    state: &ServerState,
    status: StatusCode,
    code: &str,
    message: String,
    line: Option<usize>,
) -> Answer {
    let n = state.errors.fetch_add(1, Ordering::Relaxed);
    let error_id = format!("{:016x}-{n}", state.error_prefix);
    if status.is_server_error() {
        tracing::error!(
            error_id,
            status = status.as_u16(),
            message,
            "ILP/HTTP request failed"
        );
    } else {
        tracing::debug!(
            error_id,
            status = status.as_u16(),
            message,
            "ILP/HTTP request refused"
        );
    }
    json(
        status,
        serde_json::json!({"code": code, "message": message, "line": line, "errorId": error_id}),
    )
}

/// A refusal of the client's request that is not about one line.
fn invalid(state: &ServerState, status: StatusCode, message: String) -> Answer {
    error(state, status, "invalid", message, None)
}

/// The value of `key` in the query string.
/// The value of `key` in the query string, percent-decoded (`+` is a space).
pub(super) fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

enum Gunzip {
    TooLarge,
    Bad(std::io::Error),
}

fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, Gunzip> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(Gunzip::Bad)?;
    if out.len() > limit {
        return Err(Gunzip::TooLarge);
    }
    Ok(out)
}

async fn write(req: Request<Incoming>, state: &ServerState, env: ShardEnv) -> Answer {
    let limit = state.config.http_request_bytes_max;
    let too_large = |what: &str| {
        let msg = format!(
            "{what} is larger than the server's limit of {limit} bytes (http_request_bytes_max); send smaller requests"
        );
        error(
            state,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            msg,
            None,
        )
    };
    let precision = match query_param(req.uri().query(), "precision").as_deref() {
        None | Some("") => Precision::Nanos,
        Some(p) => match Precision::from_param(p) {
            Some(p) => p,
            None => {
                let msg = format!("unsupported precision {p:?}: use n, u, ms or s");
                return invalid(state, StatusCode::BAD_REQUEST, msg);
            }
        },
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large("the request body");
    }
    let gzip = match req.headers().get(CONTENT_ENCODING).map(HeaderValue::to_str) {
        None => false,
        Some(Ok(e)) if e.eq_ignore_ascii_case("identity") => false,
        Some(Ok(e)) if e.eq_ignore_ascii_case("gzip") => true,
        Some(e) => {
            let msg = format!(
                "unsupported Content-Encoding {:?}: send plain or gzip bodies",
                e.unwrap_or("(not text)")
            );
            return invalid(state, StatusCode::UNSUPPORTED_MEDIA_TYPE, msg);
        }
    };
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return too_large("the request body")
        }
        Err(e) => {
            let msg = format!("could not read the request body: {e}");
            return invalid(state, StatusCode::BAD_REQUEST, msg);
        }
    };
    let plain;
    let text: &[u8] = if gzip {
        match gunzip(&body, limit) {
            Ok(b) => {
                plain = b;
                &plain
            }
            Err(Gunzip::TooLarge) => return too_large("the gunzipped request body"),
            Err(Gunzip::Bad(e)) => {
                let msg = format!("the request body is not valid gzip: {e}");
                return invalid(state, StatusCode::UNSUPPORTED_MEDIA_TYPE, msg);
            }
        }
    } else {
        &body
    };
    let Some(db) = state.db.upgrade() else {
        let msg = "the server is shutting down".to_string();
        return error(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            msg,
            None,
        );
    };
    let ingestor = Ingestor::new(&db, state.ingest_options(precision));
    match ingestor.ingest_async(text, now_us()).await {
        Ok(report) => {
            if state.config.ack_after_upload {
                if let Some(refusal) = wait_uploaded(&db, &report, state, env).await {
                    return refusal;
                }
            }
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(e) => ingest_error(state, e),
    }
}

/// `--ack-after upload`: waits until every txn of the request is in the
/// object store. `Some` answer when that cannot happen or takes too long:
/// the rows are durable on this node but not acknowledged.
async fn wait_uploaded(
    db: &Database,
    report: &crate::ingest::IngestReport,
    state: &ServerState,
    env: ShardEnv,
) -> Option<Answer> {
    let limit = state.config.ack_upload_timeout;
    // One limit for the whole request, however many tables it wrote.
    let deadline = std::time::Instant::now() + limit;
    for (table, _, txn) in &report.tables {
        let Some(h) = db.table(table).filter(|h| h.is_replicated()) else {
            continue; // local only: nothing to upload
        };
        let wait = async { Some(h.wait_uploaded(*txn, || db.is_fenced()).await) };
        let timer = async {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            crate::io::sleep(env.stack, left).await;
            None
        };
        let msg = match futures_lite::future::or(wait, timer).await {
            Some(true) => continue,
            Some(false) if db.is_fenced() => format!(
                "the rows were committed on this node (table {table} txn {txn}) but this node was \
                 superseded by a new primary before they were known to be in the object store: they \
                 are NOT acknowledged, and the new primary may not have them (see /status, fenced)"
            ),
            Some(false) => format!(
                "the rows were committed on this node (table {table} txn {txn}) but the upload of \
                 table {table} stopped (see /status): they are NOT acknowledged"
            ),
            None => format!(
                "the rows were committed on this node (table {table} txn {txn}) but are not in the \
                 object store after {limit:?} (--ack-after upload): NOT acknowledged; they stay \
                 here and upload when the store answers, so retrying may write them twice"
            ),
        };
        return Some(error(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            "not_replicated",
            msg,
            None,
        ));
    }
    None
}

/// Writes refused by the node's role (a replica, a switch in flight, a
/// fenced primary): 421 Misdirected Request, as QuestDB answers, so that
/// clients try another node.
fn refused(state: &ServerState, e: &DbError) -> Answer {
    let (code, msg) = match e {
        DbError::ReadOnly => (
            "read_only",
            "this node is a read-only replica: send writes to the primary".to_string(),
        ),
        other => ("not_primary", other.to_string()),
    };
    error(state, StatusCode::MISDIRECTED_REQUEST, code, msg, None)
}

fn ingest_error(state: &ServerState, e: IngestError) -> Answer {
    match e {
        IngestError::Db(d @ (DbError::ReadOnly | DbError::NotPrimary(_))) => refused(state, &d),
        IngestError::Parse { line, .. } | IngestError::Line { line, .. } => {
            let msg = format!(
                "failed to parse line protocol: error in {e}; nothing in this request was committed"
            );
            error(state, StatusCode::BAD_REQUEST, "invalid", msg, Some(line))
        }
        IngestError::Db(DbError::Batch(b)) => {
            let msg = format!(
                "the request's rows were refused: {b}; nothing in this request was committed"
            );
            invalid(state, StatusCode::BAD_REQUEST, msg)
        }
        IngestError::Db(DbError::Closed) => {
            let msg = "the server is shutting down".to_string();
            error(
                state,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                msg,
                None,
            )
        }
        IngestError::Db(d) => {
            let code = if d.is_disk_full() {
                "disk_full"
            } else {
                "internal_error"
            };
            let msg = format!("commit failed: {d}");
            error(state, StatusCode::INTERNAL_SERVER_ERROR, code, msg, None)
        }
    }
}
