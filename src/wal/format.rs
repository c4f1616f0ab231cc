//! WAL file and record layout (docs/format.md, "WAL files"), and the scan
//! that finds where the valid records of a file end.

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

pub const FILE_MAGIC: &[u8; 8] = b"BSLTWAL\0";
pub const FILE_VERSION: u32 = 1;
pub const FILE_VERSIONS: &str = "1";
pub const FILE_HEADER_BYTES: usize = 32;
pub const RECORD_MAGIC: &[u8; 4] = b"WREC";
pub const RECORD_HEADER_BYTES: usize = 48;
/// Largest payload one record may carry; a larger length field is damage.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = 1 << 30;
/// Flag: this record is the last one of a group-commit write.
pub const FLAG_GROUP_END: u16 = 1;
/// Schema version of a table's first columns (records name the version their batch was built for).
pub const SCHEMA_VERSION: u16 = 1;

pub fn encode_file_header(shard: u32, seq: u64) -> [u8; FILE_HEADER_BYTES] {
    let mut h = [0u8; FILE_HEADER_BYTES];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..12].copy_from_slice(&FILE_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&shard.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let sum = xxh3_64(&h[..24]);
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    h
}

#[derive(Debug, PartialEq, Eq)]
pub enum FileHeaderError {
    Short,
    BadMagic,
    BadChecksum,
    Version(u32),
}

/// Returns (shard, seq) of a WAL file header.
pub fn decode_file_header(b: &[u8]) -> Result<(u32, u64), FileHeaderError> {
    if b.len() < FILE_HEADER_BYTES {
        return Err(FileHeaderError::Short);
    }
    if &b[..8] != FILE_MAGIC {
        return Err(FileHeaderError::BadMagic);
    }
    let sum = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
    if sum != xxh3_64(&b[..24]) {
        return Err(FileHeaderError::BadChecksum);
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != FILE_VERSION {
        return Err(FileHeaderError::Version(version));
    }
    Ok((
        u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
        u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
    ))
}

/// What a record header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub payload_len: u32,
    pub txn: u64,
    pub commit_time_us: i64,
    /// File offset of the first record of this record's group-commit write.
    pub group_start: u64,
    pub row_count: u32,
    pub schema_version: u16,
    pub flags: u16,
}

/// Bytes a record with `payload_len` takes, padded to 8.
pub fn record_bytes(payload_len: u32) -> u64 {
    RECORD_HEADER_BYTES as u64 + u64::from(payload_len).div_ceil(8) * 8
}

/// Appends a record (header, payload, zero padding) to `out`.
pub fn append_record(out: &mut Vec<u8>, h: &RecordHeader, payload: &[u8]) {
    assert!(
        payload.len() <= RECORD_PAYLOAD_BYTES_MAX as usize
            && h.payload_len as usize == payload.len(),
        "WAL payload of {} bytes: callers must refuse payloads over the limit",
        payload.len()
    );
    let start = out.len();
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&h.payload_len.to_le_bytes());
    out.extend_from_slice(&h.txn.to_le_bytes());
    out.extend_from_slice(&h.commit_time_us.to_le_bytes());
    out.extend_from_slice(&h.group_start.to_le_bytes());
    out.extend_from_slice(&h.row_count.to_le_bytes());
    out.extend_from_slice(&h.schema_version.to_le_bytes());
    out.extend_from_slice(&h.flags.to_le_bytes());
    let mut hasher = Xxh3::new();
    hasher.update(&out[start..start + 40]);
    hasher.update(payload);
    out.extend_from_slice(&hasher.digest().to_le_bytes());
    out.extend_from_slice(payload);
    let pad = record_bytes(h.payload_len) as usize - RECORD_HEADER_BYTES - payload.len();
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// Decodes and checks the record at `pos` of `file`. `None` if it is not a
/// whole, valid record (torn, zeroed or damaged).
pub fn read_record(file: &[u8], pos: usize) -> Option<(RecordHeader, &[u8])> {
    let (h, payload) = parse_record(file, pos)?;
    let stored = u64::from_le_bytes(file[pos + 40..pos + 48].try_into().expect("8 bytes"));
    let mut hasher = Xxh3::new();
    hasher.update(&file[pos..pos + 40]);
    hasher.update(payload);
    (hasher.digest() == stored).then_some((h, payload))
}

/// [`read_record`] without the checksum: for bytes a larger checksum
/// already covers (a segment body). `None` if the header is not a
/// record's or the record does not fit in `file`.
pub fn parse_record(file: &[u8], pos: usize) -> Option<(RecordHeader, &[u8])> {
    let head = file.get(pos..pos.checked_add(RECORD_HEADER_BYTES)?)?;
    if &head[..4] != RECORD_MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
    let payload_len = u32_at(4);
    if payload_len > RECORD_PAYLOAD_BYTES_MAX {
        return None;
    }
    let end = pos as u64 + record_bytes(payload_len);
    if end > file.len() as u64 {
        return None;
    }
    let payload =
        &file[pos + RECORD_HEADER_BYTES..pos + RECORD_HEADER_BYTES + payload_len as usize];
    let h = RecordHeader {
        payload_len,
        txn: u64_at(8),
        commit_time_us: u64_at(16) as i64,
        group_start: u64_at(24),
        row_count: u32_at(32),
        schema_version: u16::from_le_bytes([head[36], head[37]]),
        flags: u16::from_le_bytes([head[38], head[39]]),
    };
    Some((h, payload))
}

/// Where the valid records of a WAL file end, and what lies after them.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// The file ends exactly after the last whole group.
    Clean,
    /// Bytes after the last whole group: a group whose write was not synced
    /// (torn, reordered, or cut at a record boundary), or zeros. Never
    /// acknowledged, so safe to cut.
    Torn { bytes: u64 },
    /// A damaged record followed by a group that started after it: the
    /// damaged record was in a group already synced, so committed data is
    /// damaged. Not safe to cut.
    Damaged { offset: u64 },
}

/// Scans the records of a WAL file. Returns the records of whole groups
/// (offset, header), in file order, and what follows them.
///
/// Groups are written one at a time and each is synced before the next is
/// written, so only the last group of a file can be incomplete. A record
/// names the offset where its group starts: a valid record whose group starts
/// after a damaged record proves the damage is in an earlier, synced group.
pub fn scan(file: &[u8]) -> (Vec<(usize, RecordHeader)>, Tail) {
    let mut records = Vec::new();
    let mut pos = FILE_HEADER_BYTES;
    while let Some((h, _)) = read_record(file, pos) {
        records.push((pos, h));
        pos += record_bytes(h.payload_len) as usize;
    }
    let mut probe = pos + 8;
    while pos < file.len() && probe + RECORD_HEADER_BYTES <= file.len() {
        match read_record(file, probe) {
            Some((h, _)) if h.group_start > pos as u64 => {
                return (records, Tail::Damaged { offset: pos as u64 });
            }
            Some((h, _)) => probe += record_bytes(h.payload_len) as usize,
            None => probe += 8,
        }
    }
    let whole = records
        .iter()
        .rposition(|(_, h)| h.flags & FLAG_GROUP_END != 0)
        .map_or(0, |i| i + 1);
    records.truncate(whole);
    let valid_end = records.last().map_or(FILE_HEADER_BYTES, |(at, h)| {
        at + record_bytes(h.payload_len) as usize
    });
    if valid_end >= file.len() {
        (records, Tail::Clean)
    } else {
        (
            records,
            Tail::Torn {
                bytes: (file.len() - valid_end) as u64,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(out: &mut Vec<u8>, txns: &[u64]) {
        let group_start = out.len() as u64;
        for (i, t) in txns.iter().enumerate() {
            let payload = vec![*t as u8; (*t as usize) % 13];
            let h = RecordHeader {
                payload_len: payload.len() as u32,
                txn: *t,
                commit_time_us: 5,
                group_start,
                row_count: 1,
                schema_version: SCHEMA_VERSION,
                flags: if i + 1 == txns.len() {
                    FLAG_GROUP_END
                } else {
                    0
                },
            };
            append_record(out, &h, &payload);
        }
    }

    fn file() -> Vec<u8> {
        let mut f = encode_file_header(3, 9).to_vec();
        group(&mut f, &[1, 2]);
        group(&mut f, &[3]);
        group(&mut f, &[4, 5, 6]);
        f
    }

    #[test]
    fn header_round_trip() {
        assert_eq!(decode_file_header(&encode_file_header(3, 9)), Ok((3, 9)));
        let mut h = encode_file_header(3, 9);
        h[12] ^= 1;
        assert_eq!(decode_file_header(&h), Err(FileHeaderError::BadChecksum));
    }

    #[test]
    fn clean_file_scans_every_record() {
        let f = file();
        let (recs, tail) = scan(&f);
        assert_eq!(
            recs.iter().map(|r| r.1.txn).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(tail, Tail::Clean);
        assert_ne!(recs[1].1.flags & FLAG_GROUP_END, 0);
        assert_eq!(recs[0].1.flags & FLAG_GROUP_END, 0);
    }

    #[test]
    fn every_cut_of_the_last_group_is_torn() {
        let f = file();
        let (recs, _) = scan(&f);
        let last_group = recs[3].0;
        for len in last_group + 1..f.len() {
            let (r, tail) = scan(&f[..len]);
            assert_eq!(
                r.len(),
                3,
                "len {len}: the whole groups before the cut stay, the cut group goes"
            );
            assert_eq!(
                tail,
                Tail::Torn {
                    bytes: (len - last_group) as u64
                },
                "len {len}"
            );
        }
    }

    #[test]
    fn a_lost_middle_record_of_the_last_group_is_torn_but_damage_before_a_later_group_is_not() {
        let f = file();
        let (recs, _) = scan(&f);
        // Last group: records 4, 5, 6. Losing 4 while 5 and 6 reached the disk
        // can happen when the unsynced write was reordered.
        let mut g = f.clone();
        g[recs[3].0 + RECORD_HEADER_BYTES + 1] ^= 0xFF;
        let (r, tail) = scan(&g);
        assert_eq!(r.len(), 3);
        assert!(matches!(tail, Tail::Torn { .. }));
        // Damage in group [3], which was followed by a synced group: refuse.
        let mut d = f.clone();
        d[recs[2].0 + 1] ^= 0xFF;
        let (r, tail) = scan(&d);
        assert_eq!(r.len(), 2);
        assert_eq!(
            tail,
            Tail::Damaged {
                offset: recs[2].0 as u64
            }
        );
    }

    #[test]
    fn zeros_after_the_records_are_torn() {
        let mut f = file();
        f.extend(std::iter::repeat_n(0, 4096));
        assert!(matches!(scan(&f).1, Tail::Torn { bytes: 4096 }));
    }
}
