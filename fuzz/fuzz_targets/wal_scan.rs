//! Any bytes as a WAL file: the recovery scan returns whole records and a
//! tail verdict without panicking, and every record it returns checks out.
#![no_main]

use basalt::wal::format::{self, Tail};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = format::decode_file_header(data);
    let (records, tail) = format::scan(data);
    let mut end = format::FILE_HEADER_BYTES;
    for (at, h) in &records {
        assert_eq!(*at, end, "records are contiguous");
        let (again, payload) = format::read_record(data, *at).expect("returned records are valid");
        assert_eq!(again, *h);
        assert_eq!(payload.len(), h.payload_len as usize);
        end += format::record_bytes(h.payload_len) as usize;
    }
    match tail {
        Tail::Clean => assert!(end >= data.len()),
        Tail::Torn { bytes } => assert_eq!(end as u64 + bytes, data.len() as u64),
        Tail::Damaged { offset } => assert!(offset as usize >= end),
    }
});
