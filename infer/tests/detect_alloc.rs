//! `DetectorSession::detect` performs no heap allocation after the session is created, with one
//! or two threads and for frames of any size up to the maximum. Its own test binary, so the
//! counting allocator sees nothing but this test.

use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession};
use face2exp_infer::{ImageView, PixelFormat};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// A plain `main` instead of libtest (`harness = false` in Cargo.toml): libtest's monitor
/// thread allocates when it reports a test "running for over 60 seconds", and the counting
/// allocator would charge that to the code under test on a slow or busy machine (seen with
/// the suite niced beside two training runs: 2 allocations and 1 reallocation).
fn main() {
    detect_allocates_nothing_after_warm_up();
    println!("test detect_allocates_nothing_after_warm_up ... ok");
}

fn detect_allocates_nothing_after_warm_up() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../weights/retinaface_mnet025.safetensors");
    let detector = Detector::load(path).unwrap();
    let photo = image::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/two_portraits.png"),
    )
    .unwrap()
    .to_rgb8();
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let small: Vec<u8> = (0..40 * 30 * 2).map(|i| (i * 7 % 251) as u8).collect();
    for threads in [1, 2] {
        let config = DetectorConfig {
            max_width: 400,
            max_height: 300,
            score_threshold: 0.02,
            threads,
            ..DetectorConfig::default()
        };
        let mut session = DetectorSession::new(&detector, config).unwrap();
        let frames = [
            ImageView::packed(photo.as_raw(), w, h, PixelFormat::Rgb8).unwrap(),
            ImageView::packed(&small, 40, 30, PixelFormat::Yuyv).unwrap(),
        ];
        // Warm-up: lets the worker threads start and park.
        session.detect(&frames[0]).unwrap();
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        // The counter itself works: one deliberate allocation is seen.
        drop(std::hint::black_box(Box::new(threads)));
        assert_eq!(ALLOCATIONS.swap(0, Ordering::Relaxed), 1);
        let mut found = 0;
        for frame in frames.iter().cycle().take(4) {
            found += session.detect(frame).unwrap().len();
        }
        COUNTING.store(false, Ordering::Relaxed);
        // A low threshold keeps many candidates in the NMS, the path most likely to allocate.
        assert!(found >= 4, "{threads} threads: found {found} faces");
        assert_eq!(
            ALLOCATIONS.load(Ordering::Relaxed),
            0,
            "{threads} threads: heap allocations in detect"
        );
    }
}
