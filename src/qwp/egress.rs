//! QWP egress: `QUERY_REQUEST`s decoded, SQL results encoded as
//! `RESULT_BATCH`es (docs/qwp.md, "Egress").
//!
//! Every batch the server sends carries the delta of the connection's
//! symbol dictionary and raw (not Gorilla-encoded) temporal columns, under
//! the flags QuestDB's own server sets (`0x0C`), which is what every client
//! is known to read.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date64Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::common::ScalarValue;
use foldhash::HashMap;

use super::{
    finish_message, put_str, put_varint, start_message, status, truncate, types, Cursor, WireError,
};
use super::{FLAG_DELTA_SYMBOL_DICT, FLAG_GORILLA};

pub const MSG_QUERY_REQUEST: u8 = 0x10;
pub const MSG_RESULT_BATCH: u8 = 0x11;
const MSG_RESULT_END: u8 = 0x12;
const MSG_QUERY_ERROR: u8 = 0x13;
pub const MSG_CANCEL: u8 = 0x14;
pub const MSG_CREDIT: u8 = 0x15;
const MSG_EXEC_DONE: u8 = 0x16;
const MSG_CACHE_RESET: u8 = 0x17;

/// `QUERY_REQUEST` flag: clear the connection's symbol dictionary first.
pub const QUERY_FLAG_RESET_DICT: u64 = 0x01;
/// `QUERY_REQUEST` flag: a timeout follows (not advertised, refused).
const QUERY_FLAG_TIMEOUT: u64 = 0x02;

/// Rows per `RESULT_BATCH` unless the client asks for fewer.
pub const BATCH_ROWS_MAX: usize = 16_384;
/// Longest SQL text accepted (as the clients cap it).
const SQL_BYTES_MAX: usize = 1 << 20;
/// Most binds in one request.
const BINDS_MAX: usize = 1024;
/// Connection dictionary entries past which it is reset between queries.
pub const DICT_ENTRIES_SOFT_MAX: usize = 100_000;

/// What a client sends on `/read/v1`.
#[derive(Debug)]
pub enum ClientMsg {
    Query(QueryRequest),
    Cancel { request_id: i64 },
    Credit { request_id: i64, bytes: u64 },
}

#[derive(Debug)]
pub struct QueryRequest {
    pub request_id: i64,
    pub sql: String,
    /// Bytes of results the client takes before it sends `CREDIT`; 0 is
    /// unbounded.
    pub initial_credit: u64,
    pub binds: Vec<ScalarValue>,
    pub flags: u64,
}

/// A client message refused: the request it names (if it got that far),
/// the status and why.
#[derive(Debug)]
pub struct BadRequest {
    pub request_id: Option<i64>,
    pub status: u8,
    pub message: String,
}

impl From<WireError> for BadRequest {
    fn from(e: WireError) -> BadRequest {
        BadRequest {
            request_id: None,
            status: status::PARSE_ERROR,
            message: e.to_string(),
        }
    }
}

pub fn decode_client(buf: &[u8]) -> Result<ClientMsg, BadRequest> {
    let mut c = Cursor::new(buf);
    let kind = c.u8("message kind")?;
    let request_id = c.i64("request id")?;
    let with_id = |mut e: BadRequest| {
        e.request_id = Some(request_id);
        e
    };
    let msg = match kind {
        MSG_QUERY_REQUEST => query_request(&mut c, request_id).map_err(with_id)?,
        MSG_CANCEL => ClientMsg::Cancel { request_id },
        MSG_CREDIT => ClientMsg::Credit {
            request_id,
            bytes: c.varint("credit").map_err(|e| with_id(e.into()))?,
        },
        k => {
            return Err(BadRequest {
                request_id: Some(request_id),
                status: status::PARSE_ERROR,
                message: format!("unknown message kind {k:#04x}"),
            })
        }
    };
    if !c.is_empty() {
        return Err(with_id(
            c.error(format!("{} bytes after the message", c.remaining()))
                .into(),
        ));
    }
    Ok(msg)
}

fn query_request(c: &mut Cursor<'_>, request_id: i64) -> Result<ClientMsg, BadRequest> {
    let sql = c.str("SQL text", SQL_BYTES_MAX)?.to_string();
    let initial_credit = c.varint("initial credit")?;
    let n = c.count("bind count", BINDS_MAX)?;
    let mut binds = Vec::with_capacity(n);
    for i in 0..n {
        binds.push(bind(c).map_err(|mut e| {
            e.message = format!("bind ${}: {}", i + 1, e.message);
            e
        })?);
    }
    let flags = if c.is_empty() {
        0
    } else {
        c.varint("query flags")?
    };
    if flags & QUERY_FLAG_TIMEOUT != 0 {
        return Err(BadRequest {
            request_id: None,
            status: status::PARSE_ERROR,
            message: "query timeouts are not supported by this server".into(),
        });
    }
    Ok(ClientMsg::Query(QueryRequest {
        request_id,
        sql,
        initial_credit,
        binds,
        flags,
    }))
}

/// One bind: a one-row column.
fn bind(c: &mut Cursor<'_>) -> Result<ScalarValue, BadRequest> {
    let ty = c.u8("bind type")?;
    let null = match c.u8("bind null flag")? {
        0 => false,
        _ => {
            c.u8("bind null bitmap")?;
            true
        }
    };
    let unsupported = || BadRequest {
        request_id: None,
        status: status::SCHEMA_MISMATCH,
        message: format!("binds of type {} are not supported", types::name(ty)),
    };
    let fixed = |c: &mut Cursor<'_>, n: usize| -> Result<[u8; 8], BadRequest> {
        let mut a = [0u8; 8];
        if !null {
            a[..n].copy_from_slice(c.bytes(n, "bind value")?);
        }
        Ok(a)
    };
    let v = |a: [u8; 8]| (!null).then_some(i64::from_le_bytes(a));
    Ok(match ty {
        types::BOOLEAN => ScalarValue::Boolean(v(fixed(c, 1)?).map(|b| b & 1 == 1)),
        types::BYTE => ScalarValue::Int8(v(fixed(c, 1)?).map(|b| b as i8)),
        types::SHORT => ScalarValue::Int16(v(fixed(c, 2)?).map(|b| b as i16)),
        types::INT => ScalarValue::Int32(v(fixed(c, 4)?).map(|b| b as i32)),
        types::LONG => ScalarValue::Int64(v(fixed(c, 8)?)),
        types::FLOAT => ScalarValue::Float32(v(fixed(c, 4)?).map(|b| f32::from_bits(b as u32))),
        types::DOUBLE => ScalarValue::Float64(v(fixed(c, 8)?).map(|b| f64::from_bits(b as u64))),
        types::TIMESTAMP => ScalarValue::TimestampMicrosecond(v(fixed(c, 8)?), None),
        types::TIMESTAMP_NANOS => ScalarValue::TimestampNanosecond(v(fixed(c, 8)?), None),
        types::DATE => ScalarValue::TimestampMillisecond(v(fixed(c, 8)?), None),
        types::CHAR => ScalarValue::Utf8(
            v(fixed(c, 2)?).map(|u| char::from_u32(u as u32).unwrap_or('\u{fffd}').to_string()),
        ),
        types::VARCHAR => {
            if null {
                ScalarValue::Utf8(None)
            } else {
                c.u32("bind offset")?;
                let len = c.u32("bind length")? as usize;
                let at = c.pos();
                let b = c.bytes(len, "bind text")?;
                let s = std::str::from_utf8(b).map_err(|_| WireError {
                    what: "bind text is not UTF-8".into(),
                    at,
                })?;
                ScalarValue::Utf8(Some(s.to_string()))
            }
        }
        _ => return Err(unsupported()),
    })
}

/// A column's type on the wire, and the Arrow type it is cast to first.
fn wire_type(dt: &DataType) -> (u8, DataType) {
    use DataType as D;
    match dt {
        D::Boolean => (types::BOOLEAN, D::Boolean),
        D::Int8 => (types::BYTE, D::Int8),
        D::Int16 | D::UInt8 => (types::SHORT, D::Int16),
        D::Int32 | D::UInt16 => (types::INT, D::Int32),
        D::Int64 | D::UInt32 | D::UInt64 => (types::LONG, D::Int64),
        D::Float16 | D::Float32 => (types::FLOAT, D::Float32),
        // Decimals as /exec shows them.
        D::Float64 | D::Decimal128(..) | D::Decimal256(..) => (types::DOUBLE, D::Float64),
        D::Timestamp(..) => (types::TIMESTAMP, D::Timestamp(TimeUnit::Microsecond, None)),
        D::Date32 | D::Date64 => (types::DATE, D::Date64),
        D::Dictionary(..) => (
            types::SYMBOL,
            D::Dictionary(Box::new(D::Int32), Box::new(D::LargeUtf8)),
        ),
        _ => (types::VARCHAR, D::LargeUtf8),
    }
}

/// Encodes results for one connection: it owns the connection's symbol
/// dictionary (string → id), shared by every query on it.
#[derive(Default)]
pub struct Encoder {
    ids: HashMap<String, u32>,
    /// Entries added since the last batch, in id order.
    delta: Vec<String>,
    body: Vec<u8>,
}

impl Encoder {
    pub fn dict_len(&self) -> usize {
        self.ids.len()
    }

    /// Clears the dictionary; the client must get [`cache_reset`] first.
    pub fn reset_dict(&mut self) {
        self.ids.clear();
        self.delta.clear();
    }

    /// `RESULT_BATCH` `seq` of request `rid` with `batch`'s rows; batch 0
    /// carries the schema.
    pub fn batch(
        &mut self,
        rid: i64,
        seq: u64,
        schema: &SchemaRef,
        batch: &RecordBatch,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let rows = batch.num_rows();
        self.body.clear();
        let mut body = std::mem::take(&mut self.body);
        put_varint(&mut body, 0); // result sets have no table name
        put_varint(&mut body, rows as u64);
        if seq == 0 {
            put_varint(&mut body, schema.fields().len() as u64);
            for f in schema.fields() {
                let name = truncate(f.name(), 127);
                put_str(&mut body, name);
                body.push(wire_type(f.data_type()).0);
            }
        }
        let dict_before = self.ids.len();
        for col in batch.columns() {
            if let Err(e) = self.column(col, &mut body) {
                // The client never gets this batch: forget its new entries.
                for s in self.delta.drain(..) {
                    self.ids.remove(&s);
                }
                self.body = body;
                return Err(e);
            }
        }
        start_message(out, FLAG_GORILLA | FLAG_DELTA_SYMBOL_DICT, 1);
        out.push(MSG_RESULT_BATCH);
        out.extend_from_slice(&rid.to_le_bytes());
        put_varint(out, seq);
        put_varint(out, dict_before as u64);
        put_varint(out, self.delta.len() as u64);
        for s in self.delta.drain(..) {
            put_str(out, &s);
        }
        out.extend_from_slice(&body);
        finish_message(out);
        self.body = body;
        Ok(())
    }

    fn column(&mut self, col: &ArrayRef, out: &mut Vec<u8>) -> Result<(), String> {
        let (ty, arrow) = wire_type(col.data_type());
        let col = if col.data_type() == &arrow {
            col.clone()
        } else {
            cast(col, &arrow)
                .map_err(|e| format!("cannot send a {} column: {e}", col.data_type()))?
        };
        let rows = col.len();
        // BOOLEAN, BYTE and SHORT have no nulls on the wire (nor in QuestDB).
        let nullable = !matches!(ty, types::BOOLEAN | types::BYTE | types::SHORT);
        let nulls = col.logical_null_count();
        let bitmap = nullable && nulls > 0;
        if bitmap {
            out.push(1);
            let mut bits = vec![0u8; rows.div_ceil(8)];
            for r in 0..rows {
                if col.is_null(r) {
                    bits[r / 8] |= 1 << (r % 8);
                }
            }
            out.extend_from_slice(&bits);
        } else {
            out.push(0);
        }
        let keep = |r: usize| !bitmap || col.is_valid(r);
        macro_rules! fixed {
            ($t:ty) => {{
                let a = col.as_primitive::<$t>();
                for r in 0..rows {
                    if keep(r) {
                        out.extend_from_slice(&a.value(r).to_le_bytes());
                    }
                }
            }};
        }
        match ty {
            types::BOOLEAN => {
                let a = col.as_boolean();
                let mut bits = vec![0u8; rows.div_ceil(8)];
                for r in 0..rows {
                    if a.is_valid(r) && a.value(r) {
                        bits[r / 8] |= 1 << (r % 8);
                    }
                }
                out.extend_from_slice(&bits);
            }
            types::BYTE => fixed!(Int8Type),
            types::SHORT => fixed!(Int16Type),
            types::INT => fixed!(Int32Type),
            types::LONG => fixed!(Int64Type),
            types::FLOAT => fixed!(Float32Type),
            types::DOUBLE => fixed!(Float64Type),
            types::TIMESTAMP => {
                out.push(0); // raw, not Gorilla
                fixed!(TimestampMicrosecondType)
            }
            types::DATE => {
                out.push(0);
                fixed!(Date64Type)
            }
            types::SYMBOL => {
                let d = col.as_dictionary::<Int32Type>();
                let values = d.values().as_string::<i64>();
                // Dictionary key → connection id, assigned on first use.
                let mut ids: Vec<Option<u32>> = vec![None; values.len()];
                for r in 0..rows {
                    if !d.is_valid(r) {
                        continue;
                    }
                    let k = d.keys().value(r) as usize;
                    let id = match ids[k] {
                        Some(id) => id,
                        None => {
                            let s = values.value(k);
                            let next = self.ids.len() as u32;
                            let id = *self.ids.entry(s.to_string()).or_insert_with(|| {
                                self.delta.push(s.to_string());
                                next
                            });
                            ids[k] = Some(id);
                            id
                        }
                    };
                    put_varint(out, u64::from(id));
                }
            }
            _ => {
                let a = col.as_string::<i64>();
                let mut offsets = Vec::with_capacity((rows + 1) * 4);
                let mut bytes = Vec::new();
                offsets.extend_from_slice(&0u32.to_le_bytes());
                for r in 0..rows {
                    if keep(r) {
                        if a.is_valid(r) {
                            bytes.extend_from_slice(a.value(r).as_bytes());
                        }
                        let end = u32::try_from(bytes.len())
                            .map_err(|_| "a batch of text over 4 GiB".to_string())?;
                        offsets.extend_from_slice(&end.to_le_bytes());
                    }
                }
                out.extend_from_slice(&offsets);
                out.extend_from_slice(&bytes);
            }
        }
        Ok(())
    }
}

/// `RESULT_END`: the last batch's sequence number and the rows sent.
pub fn result_end(rid: i64, final_seq: u64, total_rows: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    start_message(&mut out, 0, 0);
    out.push(MSG_RESULT_END);
    out.extend_from_slice(&rid.to_le_bytes());
    put_varint(&mut out, final_seq);
    put_varint(&mut out, total_rows);
    finish_message(&mut out);
    out
}

/// `EXEC_DONE` for a statement without rows. `op` is QuestDB's statement
/// type code.
pub fn exec_done(rid: i64, op: u8, rows_affected: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    start_message(&mut out, 0, 0);
    out.push(MSG_EXEC_DONE);
    out.extend_from_slice(&rid.to_le_bytes());
    out.push(op);
    put_varint(&mut out, rows_affected);
    finish_message(&mut out);
    out
}

/// QuestDB's statement type code of a command tag (0 when it has none).
pub fn op_type(tag: &str) -> u8 {
    match tag {
        "INSERT" => 2,
        "ALTER TABLE" => 4,
        "DROP TABLE" => 7,
        "CREATE TABLE" => 9,
        _ => 0,
    }
}

/// `QUERY_ERROR`. The message is cut to fit its u16 length.
pub fn query_error(rid: i64, status: u8, message: &str) -> Vec<u8> {
    let m = truncate(message, u16::MAX as usize);
    let mut out = Vec::with_capacity(16 + m.len());
    start_message(&mut out, 0, 0);
    out.push(MSG_QUERY_ERROR);
    out.extend_from_slice(&rid.to_le_bytes());
    out.push(status);
    out.extend_from_slice(&(m.len() as u16).to_le_bytes());
    out.extend_from_slice(m.as_bytes());
    finish_message(&mut out);
    out
}

/// `CACHE_RESET` of the symbol dictionary.
pub fn cache_reset() -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    start_message(&mut out, 0, 0);
    out.push(MSG_CACHE_RESET);
    out.push(0x01);
    finish_message(&mut out);
    out
}

/// The empty first batch of a result without rows: the client needs the
/// schema.
pub fn empty_batch(schema: &SchemaRef) -> RecordBatch {
    RecordBatch::new_empty(Arc::clone(schema))
}
