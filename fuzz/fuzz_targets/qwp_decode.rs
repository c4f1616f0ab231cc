//! Any bytes as a QWP ingress message (the first byte sets the size of the
//! connection's symbol dictionary): the decoder answers a message or a
//! refusal without panicking, and a message it returns is consistent with
//! the bytes (value counts match rows and nulls, symbol ids resolve).
#![no_main]

use basalt::qwp::ingress::{decode, Data, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&dict, frame)) = data.split_first() else {
        return;
    };
    let dict = usize::from(dict);
    let Ok(msg) = decode(frame, dict) else {
        return;
    };
    assert!(msg.delta_start <= dict);
    let symbols = dict.max(msg.delta_start + msg.delta.len());
    let session = Session::default();
    for t in &msg.tables {
        for c in &t.columns {
            let nulls = c.nulls.map_or(0, |b| b.iter().map(|x| x.count_ones() as usize).sum());
            assert_eq!(c.present + nulls, t.rows, "values + nulls = rows");
            match &c.data {
                Data::Bits(b) => assert_eq!(b.len(), c.present.div_ceil(8)),
                Data::Decoded(v) => assert_eq!(v.len(), c.present),
                Data::Var { offsets, bytes } => {
                    assert_eq!(offsets.len(), (c.present + 1) * 4);
                    let last = u32::from_le_bytes(offsets[offsets.len() - 4..].try_into().unwrap());
                    assert_eq!(last as usize, bytes.len());
                }
                Data::Symbols(ids) => {
                    assert_eq!(ids.len(), c.present);
                    for id in ids {
                        assert!((*id as usize) < symbols);
                        let _ = session.symbol(&msg, *id);
                    }
                }
                Data::Fixed(b) => assert_eq!(b.len() % c.present.max(1), 0),
                Data::Unsupported => {}
            }
        }
    }
});
