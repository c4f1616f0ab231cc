//! The fixed preamble of a segment, and what can be wrong with one.

use xxhash_rust::xxh3::xxh3_64;

/// First bytes of every segment.
pub const MAGIC: [u8; 8] = *b"BASALTSG";
/// The version this build writes.
pub const FORMAT_VERSION: u16 = 2;
/// Versions this build reads. A version is never dropped from this list:
/// tests/data keeps a sample of each, read by a test.
pub const ACCEPTED_VERSIONS: &[u16] = &[1, 2];
pub const PREAMBLE_BYTES: usize = 64;
/// No segment (stored or decompressed) is larger; a length field claiming
/// more is refused before anything is allocated.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Archives start at multiples of this (rkyv's archived types need at most 8).
pub const ARCHIVE_ALIGN: usize = 16;

/// Block compression of the body, per segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// The rkyv body as serialized: the upload buffer is the encode buffer.
    #[default]
    None,
    /// lz4 block format (lz4_flex) over the whole body.
    Lz4,
}

impl Compression {
    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
        }
    }

    pub fn from_code(c: u8) -> Option<Compression> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            _ => None,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            _ => Err(format!("unknown compression {s:?} (expected none or lz4)")),
        }
    }
}

/// The fixed 64 bytes at the start of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    pub version: u16,
    pub compression: Compression,
    pub header_len: u32,
    /// Body bytes as stored (compressed when `compression` says so).
    pub body_len: u64,
    /// Body bytes after decompression (= `body_len` without compression).
    pub body_raw_len: u64,
    pub header_xxh3: u64,
    pub body_xxh3: u64,
}

pub(crate) fn align_up(n: usize) -> usize {
    n.div_ceil(ARCHIVE_ALIGN) * ARCHIVE_ALIGN
}

impl Preamble {
    /// Offset of the body: after the header, aligned (version 1); right
    /// after the preamble (version 2).
    pub fn body_offset(&self) -> usize {
        match self.version {
            1 => align_up(PREAMBLE_BYTES + self.header_len as usize),
            _ => PREAMBLE_BYTES,
        }
    }

    /// Offset of the header: right after the preamble (version 1); after
    /// the stored body, aligned (version 2).
    pub fn header_offset(&self) -> usize {
        match self.version {
            1 => PREAMBLE_BYTES,
            _ => align_up(PREAMBLE_BYTES + self.body_len as usize),
        }
    }

    pub fn total_len(&self) -> u64 {
        match self.version {
            1 => self.body_offset() as u64 + self.body_len,
            _ => self.header_offset() as u64 + u64::from(self.header_len),
        }
    }

    pub fn encode(&self) -> [u8; PREAMBLE_BYTES] {
        let mut b = [0u8; PREAMBLE_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10] = self.compression.code();
        b[16..20].copy_from_slice(&self.header_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.body_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.body_raw_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.header_xxh3.to_le_bytes());
        b[48..56].copy_from_slice(&self.body_xxh3.to_le_bytes());
        let sum = xxh3_64(&b[..56]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decodes and checks the preamble of `bytes` (the whole segment):
    /// magic, its own checksum, version, reserved bytes, and that the
    /// lengths it states match the segment's length.
    pub fn decode(bytes: &[u8]) -> Result<Preamble, SegmentError> {
        if bytes.len() < PREAMBLE_BYTES {
            return Err(SegmentError::Truncated {
                what: "preamble",
                expected: PREAMBLE_BYTES as u64,
                actual: bytes.len() as u64,
            });
        }
        let b = &bytes[..PREAMBLE_BYTES];
        if b[0..8] != MAGIC {
            return Err(SegmentError::NotASegment {
                found: b[0..8].try_into().expect("8 bytes"),
            });
        }
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let stored = u64_at(56);
        let actual = xxh3_64(&b[..56]);
        if stored != actual {
            return Err(SegmentError::ChecksumMismatch {
                part: "preamble".into(),
                expected: stored,
                actual,
            });
        }
        let version = u16_at(8);
        if !ACCEPTED_VERSIONS.contains(&version) {
            return Err(SegmentError::UnsupportedVersion {
                found: version,
                accepted: ACCEPTED_VERSIONS,
            });
        }
        let compression = Compression::from_code(b[10]).ok_or(SegmentError::Malformed(format!(
            "unknown compression code {}",
            b[10]
        )))?;
        if b[11..16].iter().chain(&b[20..24]).any(|&x| x != 0) {
            return Err(SegmentError::Malformed(
                "reserved preamble bytes are not zero".into(),
            ));
        }
        let p = Preamble {
            version,
            compression,
            header_len: u32_at(16),
            body_len: u64_at(24),
            body_raw_len: u64_at(32),
            header_xxh3: u64_at(40),
            body_xxh3: u64_at(48),
        };
        if p.body_len > SEGMENT_BYTES_MAX || p.body_raw_len > SEGMENT_BYTES_MAX {
            return Err(SegmentError::Malformed(format!(
                "body of {} bytes ({} decompressed) is over the limit of {SEGMENT_BYTES_MAX}",
                p.body_len, p.body_raw_len
            )));
        }
        match p.compression {
            Compression::None if p.body_raw_len != p.body_len => {
                return Err(SegmentError::Malformed(format!(
                    "uncompressed body states {} stored and {} raw bytes",
                    p.body_len, p.body_raw_len
                )))
            }
            // lz4 cannot expand more than 255 to 1: a larger claim is hostile.
            Compression::Lz4 if p.body_raw_len > p.body_len.saturating_mul(255) => {
                return Err(SegmentError::Malformed(format!(
                    "lz4 body of {} bytes cannot decompress to {} bytes",
                    p.body_len, p.body_raw_len
                )))
            }
            _ => {}
        }
        let total = p.total_len();
        if (bytes.len() as u64) < total {
            return Err(SegmentError::Truncated {
                what: "segment",
                expected: total,
                actual: bytes.len() as u64,
            });
        }
        if (bytes.len() as u64) > total {
            return Err(SegmentError::Malformed(format!(
                "{} bytes after the end of the body (segment is {total} bytes)",
                bytes.len() as u64 - total
            )));
        }
        Ok(p)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("not a basalt segment: starts with {found:02x?}, not the magic \"BASALTSG\"")]
    NotASegment { found: [u8; 8] },
    #[error("segment format version {found} is not readable by this build (it reads versions {accepted:?})")]
    UnsupportedVersion {
        found: u16,
        accepted: &'static [u16],
    },
    #[error("truncated: the {what} needs {expected} bytes, the segment has {actual}")]
    Truncated {
        what: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error(
        "checksum mismatch in the {part}: stored xxh3 {expected:016x}, computed {actual:016x}"
    )]
    ChecksumMismatch {
        part: String,
        expected: u64,
        actual: u64,
    },
    #[error("malformed segment: {0}")]
    Malformed(String),
    #[error("segment is for table {found_name:?} (id {found_id:016x}), not {expected_name:?} (id {expected_id:016x})")]
    ForeignTable {
        found_name: String,
        found_id: u64,
        expected_name: String,
        expected_id: u64,
    },
    #[error("segment txns {first}..={last} do not follow the table's txn {table_txn}: txns {missing_from}.. are missing")]
    Gap {
        first: u64,
        last: u64,
        table_txn: u64,
        missing_from: u64,
    },
    #[error("segment txns {first}..={last} link to a previous segment with checksum {found:016x}, but the segment this table applied before them has {expected:016x}: not the same history")]
    BrokenChain {
        first: u64,
        last: u64,
        expected: u64,
        found: u64,
    },
    #[error("segment txns {first}.. were written in epoch {epoch}, after segments of epoch {before}: a deposed primary's, refused")]
    EpochWentBack { first: u64, epoch: u64, before: u64 },
    #[error("segment does not fit the table: {0}")]
    Schema(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Table(#[from] crate::table::TableError),
}

/// Test and fuzz support: rewrites the lengths and checksums in the
/// preamble of `bytes` so they match its contents (whatever those are), so
/// fuzzing reaches the archive validation behind the checksums. No-op on
/// bytes too short to hold a preamble and header.
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < PREAMBLE_BYTES {
        return;
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    let (header, body) = if version == 1 {
        let header_len = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")) as usize;
        let body_off = align_up(PREAMBLE_BYTES.saturating_add(header_len));
        if body_off > bytes.len() {
            return;
        }
        (
            PREAMBLE_BYTES..PREAMBLE_BYTES + header_len,
            body_off..bytes.len(),
        )
    } else {
        // Version 2: keep the stated body length if it fits, the header is
        // the rest after the aligned end of the body.
        let stated = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
        let body_len = (stated.min((bytes.len() - PREAMBLE_BYTES) as u64)) as usize;
        let header_off = align_up(PREAMBLE_BYTES + body_len).min(bytes.len());
        let header_len = (bytes.len() - header_off) as u32;
        bytes[16..20].copy_from_slice(&header_len.to_le_bytes());
        (
            header_off..bytes.len(),
            PREAMBLE_BYTES..PREAMBLE_BYTES + body_len,
        )
    };
    let body_len = body.len() as u64;
    bytes[24..32].copy_from_slice(&body_len.to_le_bytes());
    if bytes[10] == 0 {
        bytes[32..40].copy_from_slice(&body_len.to_le_bytes());
    }
    let h = xxh3_64(&bytes[header]);
    bytes[40..48].copy_from_slice(&h.to_le_bytes());
    let b = xxh3_64(&bytes[body]);
    bytes[48..56].copy_from_slice(&b.to_le_bytes());
    let p = xxh3_64(&bytes[..56]);
    bytes[56..64].copy_from_slice(&p.to_le_bytes());
}
