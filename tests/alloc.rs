//! Allocation counts users rely on, tallied by a counting global allocator
//! (its own test binary, so it sees only these tests; they run one at a
//! time through a lock):
//! - ILP ingestion allocates nothing per row once its buffers have grown;
//! - encoding a segment copies the column data once, into the buffer that
//!   becomes the upload body, and handing it over copies nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use basalt::gen::CpuGenerator;
use basalt::segment::{Compression, SegmentWriter};

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size(), Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Serializes the tests: the counters are process-wide.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn counted<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let (b0, c0) = (BYTES.load(Ordering::SeqCst), CALLS.load(Ordering::SeqCst));
    let out = f();
    (
        out,
        BYTES.load(Ordering::SeqCst) - b0,
        CALLS.load(Ordering::SeqCst) - c0,
    )
}

#[test]
fn ilp_ingestion_allocates_nothing_per_row() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let db = basalt::db::Database::open(basalt::db::DbOptions {
        data_dir: dir.path().to_path_buf(),
        engine: basalt::io::EngineChoice::Portable,
        shards: 1,
        ..basalt::db::DbOptions::default()
    })
    .unwrap();
    let gen = CpuGenerator::default();
    let mut text = Vec::new();
    for i in 0..100_000 {
        gen.ilp_line(&mut text, "cpu", i);
    }
    let ing = basalt::ingest::Ingestor::new(&db, basalt::ingest::IngestOptions::default());
    // The first lines create the table and its columns.
    let mut buf = basalt::ingest::IngestBuffer::default();
    let first = text.iter().position(|&b| b == b'\n').unwrap() + 1;
    ing.add(&mut buf, &text[..first], 0, false).unwrap();
    let (used, bytes, calls) = counted(|| ing.add(&mut buf, &text[first..], 0, false).unwrap());
    assert_eq!(used, text.len() - first);
    assert_eq!(buf.rows(), 100_000);
    println!("100,000 ILP rows: {calls} allocations, {bytes} bytes");
    // Column buffers double as they grow: a few dozen reallocations per
    // column, never one per row.
    assert!(calls < 1_000, "{calls} allocations for 100,000 rows");
    drop(buf);
    db.close();
}

#[test]
fn encode_allocates_the_upload_buffer_once_and_hands_it_over_without_copying() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let gen = CpuGenerator::default();
    let mut w = SegmentWriter::new(1, "cpu", gen.schema()).unwrap();
    for t in 0..40u64 {
        w.push(t + 1, 0, gen.batch(t * 10_000, 10_000, 0)).unwrap();
    }
    let data = w.data_bytes();
    let (enc, bytes, calls) = counted(|| w.finish(Compression::None).unwrap());
    let len = enc.len();
    println!("encode of {len} bytes: {bytes} bytes allocated in {calls} calls");
    assert!(
        len > data * 9 / 10,
        "segment {len} bytes holds {data} bytes of columns"
    );
    // One buffer of the segment's size (sized up front: no regrowth copies),
    // plus rkyv's small scratch space.
    assert!(
        bytes < len + len / 20 + 64 * 1024,
        "encoding {len} bytes allocated {bytes} bytes in {calls} calls: the data was copied more than once"
    );
    let ptr = enc.as_slice().as_ptr();
    let (body, bytes, _) = counted(|| enc.into_bytes());
    assert_eq!(body.as_ptr(), ptr);
    assert!(
        bytes <= 128,
        "handing over the buffer allocated {bytes} bytes"
    );
    println!("segment of {len} bytes ({data} bytes of column data)");
}
