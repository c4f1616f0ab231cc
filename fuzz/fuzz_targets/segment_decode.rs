//! Any bytes given to the segment reader: a verified segment or a typed
//! error, never a panic, UB or an allocation sized by a length field.
#![no_main]

use basalt::segment::{reseal, Segment};
use libfuzzer_sys::fuzz_target;

fn exercise(bytes: &[u8]) {
    if let Ok(seg) = Segment::from_slice(bytes) {
        // Whatever verified must also read back and check.
        let _ = seg.batches();
        let _ = seg.check_blocks();
    }
}

fuzz_target!(|data: &[u8]| {
    // As given: checksums stop almost everything at the door...
    exercise(data);
    // ...so also with the checksums made to match, which takes the input
    // through rkyv validation and the header/body consistency checks.
    let mut sealed = data.to_vec();
    reseal(&mut sealed);
    exercise(&sealed);
});
