//! QWP, QuestDB's binary columnar protocol over WebSocket (docs/qwp.md):
//! the wire layer shared by ingress (`/write/v4`, [`ingress`]) and egress
//! (`/read/v1`, `egress`), with no I/O. The server side of the socket is in
//! `server/ws.rs`.
//!
//! Every decoder here reads hostile bytes: it bounds-checks every read,
//! never allocates more than the message could describe, and answers a
//! [`WireError`] that says what and where.

#[cfg(feature = "sql")]
pub mod egress;
pub mod ingress;

/// `"QWP1"`, the first four bytes of every message with a header.
pub const MAGIC: [u8; 4] = *b"QWP1";
/// The one protocol version there is.
pub const VERSION: u8 = 1;
/// Bytes of the message header: magic, version, flags, table count, length.
pub const HEADER_BYTES: usize = 12;

/// Header flags.
pub const FLAG_DEFER_COMMIT: u8 = 0x01;
pub const FLAG_GORILLA: u8 = 0x04;
pub const FLAG_DELTA_SYMBOL_DICT: u8 = 0x08;

/// Column type codes.
pub mod types {
    pub const BOOLEAN: u8 = 0x01;
    pub const BYTE: u8 = 0x02;
    pub const SHORT: u8 = 0x03;
    pub const INT: u8 = 0x04;
    pub const LONG: u8 = 0x05;
    pub const FLOAT: u8 = 0x06;
    pub const DOUBLE: u8 = 0x07;
    pub const SYMBOL: u8 = 0x09;
    pub const TIMESTAMP: u8 = 0x0A;
    pub const DATE: u8 = 0x0B;
    pub const UUID: u8 = 0x0C;
    pub const LONG256: u8 = 0x0D;
    pub const GEOHASH: u8 = 0x0E;
    pub const VARCHAR: u8 = 0x0F;
    pub const TIMESTAMP_NANOS: u8 = 0x10;
    pub const DOUBLE_ARRAY: u8 = 0x11;
    pub const LONG_ARRAY: u8 = 0x12;
    pub const DECIMAL64: u8 = 0x13;
    pub const DECIMAL128: u8 = 0x14;
    pub const DECIMAL256: u8 = 0x15;
    pub const CHAR: u8 = 0x16;
    pub const BINARY: u8 = 0x17;
    pub const IPV4: u8 = 0x18;

    /// The type's name as QuestDB spells it.
    pub fn name(code: u8) -> &'static str {
        match code {
            BOOLEAN => "BOOLEAN",
            BYTE => "BYTE",
            SHORT => "SHORT",
            INT => "INT",
            LONG => "LONG",
            FLOAT => "FLOAT",
            DOUBLE => "DOUBLE",
            SYMBOL => "SYMBOL",
            TIMESTAMP => "TIMESTAMP",
            DATE => "DATE",
            UUID => "UUID",
            LONG256 => "LONG256",
            GEOHASH => "GEOHASH",
            VARCHAR => "VARCHAR",
            TIMESTAMP_NANOS => "TIMESTAMP_NS",
            DOUBLE_ARRAY => "DOUBLE[]",
            LONG_ARRAY => "LONG[]",
            DECIMAL64 => "DECIMAL64",
            DECIMAL128 => "DECIMAL128",
            DECIMAL256 => "DECIMAL256",
            CHAR => "CHAR",
            BINARY => "BINARY",
            IPV4 => "IPV4",
            _ => "unknown",
        }
    }
}

/// Status bytes of ingress answers and egress `QUERY_ERROR`s.
pub mod status {
    pub const OK: u8 = 0x00;
    pub const SCHEMA_MISMATCH: u8 = 0x03;
    pub const PARSE_ERROR: u8 = 0x05;
    pub const INTERNAL_ERROR: u8 = 0x06;
    pub const SECURITY_ERROR: u8 = 0x08;
    pub const WRITE_ERROR: u8 = 0x09;
    pub const CANCELLED: u8 = 0x0A;
    pub const LIMIT_EXCEEDED: u8 = 0x0B;
    pub const DICTIONARY_GAP: u8 = 0x0D;
}

/// Bytes a frame may be cut at, in errors: a message may be megabytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct WireError {
    pub what: String,
    /// Offset in the message (header included).
    pub at: usize,
}

/// A bounds-checked reader over one message.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn error(&self, what: impl Into<String>) -> WireError {
        WireError {
            what: what.into(),
            at: self.pos,
        }
    }

    pub fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(self.error(format!(
                "{what}: {n} bytes needed, {} left in the message",
                self.remaining()
            )));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    /// The bytes not read yet (without consuming them).
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.bytes(1, what)?[0])
    }

    pub fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    pub fn i64(&mut self, what: &str) -> Result<i64, WireError> {
        let b = self.bytes(8, what)?;
        Ok(i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Unsigned LEB128, at most 10 bytes (the 10th holds bit 63 only).
    pub fn varint(&mut self, what: &str) -> Result<u64, WireError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                self.pos = start;
                return Err(self.error(format!("{what}: the message ends inside a varint")));
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                self.pos = start;
                return Err(self.error(format!("{what}: varint overflows 64 bits")));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        self.pos = start;
        Err(self.error(format!("{what}: varint longer than 10 bytes")))
    }

    /// A varint that counts something of at most `max`.
    pub fn count(&mut self, what: &str, max: usize) -> Result<usize, WireError> {
        let at = self.pos;
        let v = self.varint(what)?;
        if v > max as u64 {
            return Err(WireError {
                what: format!("{what} {v} is over the limit of {max}"),
                at,
            });
        }
        Ok(v as usize)
    }

    /// A varint length, then that many bytes of UTF-8.
    pub fn str(&mut self, what: &str, max: usize) -> Result<&'a str, WireError> {
        let n = self.count(&format!("{what} length"), max)?;
        let at = self.pos;
        let b = self.bytes(n, what)?;
        std::str::from_utf8(b).map_err(|_| WireError {
            what: format!("{what} is not UTF-8"),
            at,
        })
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `s` cut to at most `max` bytes, on a character boundary (names and
/// messages have byte limits on the wire).
pub fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Starts a message with a header; [`finish_message`] fills in its length.
pub fn start_message(out: &mut Vec<u8>, flags: u8, tables: u16) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(&tables.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

pub fn finish_message(out: &mut [u8]) {
    let len = (out.len() - HEADER_BYTES) as u32;
    out[8..12].copy_from_slice(&len.to_le_bytes());
}

/// A node's role as `SERVER_INFO` and `X-QuestDB-Role` name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Standalone = 0,
    Primary = 1,
    Replica = 2,
    PrimaryCatchup = 3,
}

impl Role {
    pub fn header(self) -> &'static str {
        match self {
            Role::Standalone => "STANDALONE",
            Role::Primary => "PRIMARY",
            Role::Replica => "REPLICA",
            Role::PrimaryCatchup => "PRIMARY_CATCHUP",
        }
    }
}

/// What `SERVER_INFO` tells a client at connect.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub role: Role,
    pub epoch: u64,
    pub capabilities: u32,
    pub wall_ns: i64,
    pub cluster_id: String,
    pub node_id: String,
}

/// Capability: `QUERY_REQUEST` may end with a flags varint.
pub const CAP_QUERY_FLAGS: u32 = 0x02;

const MSG_SERVER_INFO: u8 = 0x18;

/// The `SERVER_INFO` message, the first an egress connection gets.
pub fn server_info(info: &ServerInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    start_message(&mut out, 0, 0);
    out.push(MSG_SERVER_INFO);
    out.push(info.role as u8);
    out.extend_from_slice(&info.epoch.to_le_bytes());
    out.extend_from_slice(&info.capabilities.to_le_bytes());
    out.extend_from_slice(&info.wall_ns.to_le_bytes());
    for s in [&info.cluster_id, &info.node_id] {
        let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s);
    }
    finish_message(&mut out);
    out
}

#[cfg(test)]
mod tests;
