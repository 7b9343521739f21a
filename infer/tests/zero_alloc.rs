//! After warm-up, classifying allocates nothing: counted by a global allocator, which is why
//! this test lives alone in its own binary.

mod common;

use common::{model_file, random_pixels, Spec};
use face2exp_infer::{
    FaceRegion, ImageView, Model, PixelFormat, Prediction, Session, SessionConfig,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static REALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (allocations, reallocations) made by `f`.
fn count(f: impl FnOnce()) -> (usize, usize) {
    let (a, r) = (
        ALLOCS.load(Ordering::SeqCst),
        REALLOCS.load(Ordering::SeqCst),
    );
    f();
    (
        ALLOCS.load(Ordering::SeqCst) - a,
        REALLOCS.load(Ordering::SeqCst) - r,
    )
}

fn check_session(
    model: &Model,
    threads: usize,
    formats: &[PixelFormat],
    calls: usize,
    flip_average: bool,
) {
    let mut session = Session::new(
        model,
        SessionConfig {
            max_width: 160,
            max_height: 120,
            threads,
        },
    );
    session.set_flip_average(flip_average);
    // Different sizes per call: buffers must be sized for the maximum, not the first image.
    let sizes = [(160usize, 120usize), (38, 41), (8, 6), (100, 3)];
    let frames: Vec<Vec<u8>> = sizes
        .iter()
        .map(|&(w, h)| random_pixels((w * 4 + 3) * h, (w * h) as u64))
        .collect();
    let faces = [
        FaceRegion::from_bbox([10.0, 5.0, 60.0, 70.0]),
        FaceRegion {
            bbox: [0.0; 4],
            landmarks: Some([
                [50.0, 40.0],
                [80.0, 42.0],
                [66.0, 60.0],
                [52.0, 80.0],
                [78.0, 81.0],
            ]),
        },
    ];
    let mut out = [Prediction::EMPTY; 2];
    for &format in formats {
        let views: Vec<ImageView> = sizes
            .iter()
            .zip(&frames)
            .map(|(&(w, h), data)| {
                ImageView::new(data, w, h, w * format.bytes_per_pixel() + 3, format).unwrap()
            })
            .collect();
        session.classify(&views[0]).unwrap();
        let (allocs, reallocs) = count(|| {
            for i in 0..calls {
                let p = session.classify(&views[i % views.len()]).unwrap();
                assert!(p.class < model.num_classes());
            }
            session.classify_batch(&views[0], &faces, &mut out).unwrap();
        });
        assert_eq!(
            (allocs, reallocs),
            (0, 0),
            "{format:?}, {threads} threads, flip average {flip_average}: allocations during classify"
        );
    }
}

/// A plain `main` instead of libtest (`harness = false` in Cargo.toml): libtest's monitor
/// thread allocates when it reports a test "running for over 60 seconds", and the counting
/// allocator would charge that to the code under test on a slow or busy machine (seen with
/// the suite niced beside two training runs: 2 allocations and 1 reallocation).
fn main() {
    classify_allocates_nothing_after_warm_up();
    println!("test classify_allocates_nothing_after_warm_up ... ok");
}

fn classify_allocates_nothing_after_warm_up() {
    let spec = Spec {
        arch: "resnet18",
        stem: "small",
        input_size: 8,
        classes: 7,
    };
    let mut model = Model::from_bytes(&model_file(&spec, 4)).unwrap();
    check_session(&model, 1, &PixelFormat::ALL, 100, false);
    // The worker pool must not allocate per job either (fewer calls: the test runs in CI).
    check_session(&model, 2, &[PixelFormat::Rgb8], 20, false);
    // Nor averaging each face with its mirror image, batched or not.
    check_session(&model, 1, &[PixelFormat::Rgb8], 20, true);
    check_session(&model, 2, &[PixelFormat::Rgb8], 20, true);
    // Nor the half-precision late layers.
    assert!(model.store_late_weights_as_f16() > 0);
    check_session(&model, 1, &[PixelFormat::Rgb8], 20, false);
}
