//! Any bytes as an ILP request body: lines split and parse into values or a
//! typed error with a position inside the line, never a panic.
#![no_main]

use basalt::ilp::{is_blank, next_line, parse_line, Line, Precision};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut line = Line::default();
    while let Some((text, used)) = next_line(rest) {
        assert!(used > text.len() && used <= rest.len());
        if !is_blank(text) {
            match parse_line(text, Precision::Nanos, &mut line) {
                Ok(()) => {
                    assert!(!line.measurement.is_empty());
                    assert!(!line.fields.is_empty());
                }
                Err(e) => assert!(e.position <= text.len(), "{e}: position past the line"),
            }
        }
        rest = &rest[used..];
    }
});
