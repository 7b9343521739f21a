//! The frame loop allocates nothing once warm: a counting global allocator watches every
//! thread while the real pipeline (detector, classifier, tracker, overlay, JSON line) runs on
//! a real photo frame after frame. The only test in this binary, so nothing else allocates
//! meanwhile. Skips, saying why, without the detector weights.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use face2exp_demo::engine::{Engine, EngineConfig};
use face2exp_demo::frame::Frame;
use face2exp_demo::pipeline::Pipeline;
use face2exp_demo::report::JsonLines;
use face2exp_demo::source::{load_image, FrameSource, Next};
use face2exp_demo::track::TrackerConfig;
use face2exp_demo::weights;
use face2exp_infer::LatePrecision;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A camera stand-in that re-delivers one decoded photo, converting it from RGB bytes into
/// the frame each time as the capture path does.
struct Replay {
    rgb: Vec<u8>,
    width: usize,
    height: usize,
}

impl FrameSource for Replay {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Next> {
        frame.copy_from_rgb8(self.width, self.height, &self.rgb, self.width * 3)?;
        Ok(Next::Frame)
    }
    fn frame_name(&self) -> &str {
        "replay"
    }
    fn is_live(&self) -> bool {
        true
    }
}

/// A plain `main` instead of libtest (`harness = false` in Cargo.toml): libtest's monitor
/// thread allocates when it reports a test "running for over 60 seconds", and the counting
/// allocator would charge that to the code under test on a slow or busy machine (seen with
/// the suite niced beside two training runs: 2 allocations and 1 reallocation).
fn main() {
    steady_state_frames_allocate_nothing();
    println!("test steady_state_frames_allocate_nothing ... ok");
}

fn steady_state_frames_allocate_nothing() {
    let Some(detector_path) = common::detector_weights() else {
        eprintln!("SKIPPED: weights/retinaface_mnet025.safetensors is missing");
        return;
    };
    let classifier = weights::resolve(
        Some(&common::classifier_weights()),
        None,
        "classifier",
        "--weights",
    )
    .unwrap();
    let detector = weights::resolve(Some(&detector_path), None, "detector", "--detector").unwrap();
    let mut photo = Frame::default();
    load_image(&common::fixtures().join("two_portraits.png"), &mut photo).unwrap();
    let rgb: Vec<u8> = photo
        .pixels()
        .iter()
        .flat_map(|&p| [(p >> 16) as u8, (p >> 8) as u8, p as u8])
        .collect();
    let mut source = Replay {
        rgb,
        width: photo.width(),
        height: photo.height(),
    };

    for (threads, late_weights, pipelined, flip_average) in [
        (1, None, false, false),
        (2, None, false, false),
        (1, Some(LatePrecision::F16), false, false),
        (1, Some(LatePrecision::Int8), false, false),
        (2, None, true, false),
        (2, None, true, true),
    ] {
        let config = EngineConfig {
            threads,
            max_faces: 16,
            score_threshold: 0.6,
            detect_downscale: 1,
            late_weights,
            pipelined,
            flip_average,
        };
        let engine = Engine::load(&classifier, Some(&detector), &config).unwrap();
        let mut pipeline = Pipeline::new(engine, Some(TrackerConfig::default()));
        let mut frame = Frame::default();
        let mut json = JsonLines::new();
        let mut sink = std::io::sink();
        let mut run = |frames: usize| {
            for i in 0..frames {
                assert_eq!(pipeline.step(&mut source, &mut frame).unwrap(), Next::Frame);
                assert_eq!(pipeline.faces().len(), 2);
                pipeline.draw(&mut frame, true);
                json.write(
                    &mut sink,
                    i as u64,
                    "replay",
                    None,
                    pipeline.faces(),
                    pipeline.class_names(),
                )
                .unwrap();
            }
        };
        run(3);
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        run(10);
        let allocated = ALLOCATIONS.load(Ordering::SeqCst) - before;
        assert_eq!(
            allocated, 0,
            "{allocated} allocations in 10 warm frames on {threads} thread(s), pipelined {pipelined}, flip average {flip_average}"
        );
    }
}
