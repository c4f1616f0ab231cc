//! Any bytes applied as a segment into a scratch table: applied or refused
//! with a typed error; never a panic, and the table stays readable.
#![no_main]

use std::sync::OnceLock;

use basalt::gen::CpuGenerator;
use basalt::segment::{apply_segment, reseal, Segment};
use basalt::table::{TableReader, TableWriter};
use libfuzzer_sys::fuzz_target;

/// A scratch data dir on tmpfs when there is one.
fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("basalt-fuzz-apply-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    // Checksums made to match, so mutated archives reach apply.
    let mut sealed = data.to_vec();
    reseal(&mut sealed);
    let Ok(seg) = Segment::from_slice(&sealed) else {
        return;
    };
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir.join("cpu"));
    let gen = CpuGenerator::default();
    // The table the segment names, with its id, so apply gets past the
    // identity check and exercises schema changes and batches.
    let id = seg.header().table_id;
    let mut w = TableWriter::create_with_id(dir, "cpu", gen.schema(), id).expect("scratch table");
    if apply_segment(&mut w, &seg).is_ok() {
        drop(w);
        TableReader::open(dir, "cpu")
            .and_then(|r| r.scan(&[], None))
            .expect("a table a segment was applied to stays readable");
    }
});
