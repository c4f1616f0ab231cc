//! SQL over HTTP, as QuestDB serves it: `GET /exec?query=...` answers JSON
//! `{query, columns, timestamp, dataset, count}` (`limit=n` or `limit=lo,hi`,
//! `count=true` counts every row of the result); `GET /exp?query=...`
//! answers CSV. Errors are 400 with `{query, error, position}`.
//!
//! The query runs on the SQL engine's threads; the shard that took the
//! connection only forwards chunks of at most [`CHUNK_BYTES`], and a bounded
//! channel paces the query to the client, so a result is never held whole.

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::http::{json, query_param, Answer, BodyError};
use super::ServerState;
use crate::sql::{format, Output, SqlError};

/// Bytes a result is sent in.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks queued between the query and the connection.
const CHUNKS_QUEUED_MAX: usize = 4;

#[derive(Clone, Copy)]
pub(super) enum Kind {
    Exec,
    Exp,
}

/// Rows of the result to send: `skip` rows, then up to `take`.
#[derive(Clone, Copy)]
struct Window {
    skip: u64,
    take: u64,
}

/// QuestDB's `limit`: `n` (the first n rows) or `lo,hi` (rows lo+1 to hi).
fn parse_limit(v: &str) -> Result<Window, String> {
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("limit {v:?} is not a row count: use limit=n or limit=lo,hi"))
    };
    match v.split_once(',') {
        None => Ok(Window {
            skip: 0,
            take: num(v)?,
        }),
        Some((lo, hi)) => {
            let (lo, hi) = (num(lo)?, num(hi)?);
            if hi < lo {
                return Err(format!("limit {v:?}: the upper bound is below the lower"));
            }
            Ok(Window {
                skip: lo,
                take: hi - lo,
            })
        }
    }
}

fn sql_error(query: &str, e: &SqlError) -> Answer {
    let status = if e.denied {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    };
    json(
        status,
        serde_json::json!({"query": query, "error": e.message, "position": e.position}),
    )
}

pub(super) async fn answer(
    req: Request<Incoming>,
    state: &ServerState,
    kind: Kind,
    who: crate::auth::Principal,
) -> Answer {
    let q = req.uri().query();
    let query = query_param(q, "query").unwrap_or_default();
    if query.trim().is_empty() {
        return sql_error(
            &query,
            &SqlError::new("empty query: pass it as ?query=...", 0),
        );
    }
    let window = match query_param(q, "limit").filter(|l| !l.is_empty()) {
        None => Window {
            skip: 0,
            take: u64::MAX,
        },
        Some(l) => match parse_limit(&l) {
            Ok(w) => w,
            Err(msg) => return sql_error(&query, &SqlError::new(msg, 0)),
        },
    };
    let count_all = query_param(q, "count").is_some_and(|c| c.eq_ignore_ascii_case("true"));
    let Some(engine) = state.sql.clone() else {
        return sql_error(
            &query,
            &SqlError::new("SQL is not enabled on this server", 0),
        );
    };
    let (tx, rx) = flume::bounded::<Result<Bytes, SqlError>>(CHUNKS_QUEUED_MAX);
    let q2 = query.clone();
    let runtime = engine.runtime().clone();
    runtime.spawn(async move {
        produce(&engine, &q2, kind, window, count_all, &who, tx).await;
    });
    let first = match rx.recv_async().await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return sql_error(&query, &e),
        Err(_) => {
            return sql_error(
                &query,
                &SqlError::new("the query was cancelled (server shutting down)", 0),
            )
        }
    };
    let rest = rx.into_stream().map(|r| match r {
        Ok(b) => Ok(Frame::data(b)),
        Err(e) => Err(BodyError::from(e.message)),
    });
    let body =
        StreamBody::new(futures_util::stream::once(async { Ok(Frame::data(first)) }).chain(rest))
            .boxed_unsync();
    let mut r = Response::new(body);
    let headers = r.headers_mut();
    match kind {
        Kind::Exec => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Kind::Exp => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            );
            headers.insert(
                CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"basalt-query.csv\""),
            );
        }
    }
    r
}

/// Runs the query and sends its answer in chunks. An error before the first
/// chunk is sent goes to the client as a 400; a later one ends the body.
async fn produce(
    engine: &crate::sql::SqlEngine,
    query: &str,
    kind: Kind,
    window: Window,
    count_all: bool,
    who: &crate::auth::Principal,
    tx: flume::Sender<Result<Bytes, SqlError>>,
) {
    let mut stream = match engine.execute(query, None, who).await {
        Ok(Output::Rows(s)) => s,
        Ok(Output::Command(_)) => {
            let body: &[u8] = match kind {
                Kind::Exec => b"{\"ddl\":\"OK\"}",
                Kind::Exp => b"",
            };
            let _ = tx.send_async(Ok(Bytes::from_static(body))).await;
            return;
        }
        Err(e) => {
            let _ = tx.send_async(Err(e)).await;
            return;
        }
    };
    let schema = stream.schema();
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    match kind {
        Kind::Exec => format::json_head(query, &schema, &mut buf),
        Kind::Exp => format::csv_header(&schema, &mut buf),
    }
    let (mut seen, mut sent_rows, mut sent_any) = (0u64, 0u64, false);
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                let e = SqlError::new(e.find_root().to_string(), 0);
                if sent_any {
                    tracing::warn!(query, error = %e.message, "query failed while its result was being sent");
                }
                let _ = tx.send_async(Err(e)).await;
                return;
            }
        };
        let n = batch.num_rows() as u64;
        let lo = window.skip.saturating_sub(seen).min(n);
        let hi = (window.skip.saturating_add(window.take))
            .saturating_sub(seen)
            .min(n);
        seen += n;
        if lo < hi {
            let r = match kind {
                Kind::Exec => {
                    format::json_rows(&batch, lo as usize..hi as usize, sent_rows == 0, &mut buf)
                }
                Kind::Exp => {
                    format::csv_rows(&batch.slice(lo as usize, (hi - lo) as usize), &mut buf)
                }
            };
            if let Err(e) = r {
                let _ = tx.send_async(Err(SqlError::new(e.to_string(), 0))).await;
                return;
            }
            sent_rows += hi - lo;
        }
        if buf.len() >= CHUNK_BYTES {
            let chunk = Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK_BYTES)));
            if tx.send_async(Ok(chunk)).await.is_err() {
                return; // the client went away: dropping the stream stops the query
            }
            sent_any = true;
        }
        let window_done = seen >= window.skip.saturating_add(window.take);
        if window_done && !count_all {
            break;
        }
    }
    if let Kind::Exec = kind {
        format::json_tail(if count_all { seen } else { sent_rows }, &mut buf);
    }
    let _ = tx.send_async(Ok(Bytes::from(buf))).await;
}

#[cfg(test)]
mod tests {
    use super::parse_limit;

    #[test]
    fn limits() {
        let w = parse_limit("10").unwrap();
        assert_eq!((w.skip, w.take), (0, 10));
        let w = parse_limit("10,25").unwrap();
        assert_eq!((w.skip, w.take), (10, 15));
        assert!(parse_limit("-5").is_err());
        assert!(parse_limit("9,3").is_err());
    }
}
