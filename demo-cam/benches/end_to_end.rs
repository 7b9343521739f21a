//! End-to-end frame rate of the demo pipeline on 640x480 frames with one and three real
//! faces, on 1 and 2 threads, with wall and CPU time per stage (capture = converting the
//! frame into the display buffer, as the camera path does; detect; classify; track +
//! overlay). Rows marked "pipelined" detect the next frame on a second thread while this one
//! is classified (the demo's default with 2+ threads). Prints a markdown table.
//!
//!     cargo bench -p face2exp-demo --bench end_to_end [-- --frames N]
//!
//! Needs weights/retinaface_mnet025.safetensors; the classifier is
//! weights/face2exp-base.safetensors or, with `--weights PATH`, any model in the shipped
//! format.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use face2exp_demo::engine::{Engine, EngineConfig};
use face2exp_demo::faces::FaceResult;
use face2exp_demo::frame::Frame;
use face2exp_demo::overlay::{self, StageTimes};
use face2exp_demo::pipeline::{Analyzer, Pipeline};
use face2exp_demo::source::{load_image, FrameSource, Next};
use face2exp_demo::track::{Tracker, TrackerConfig};
use face2exp_demo::weights;
use face2exp_infer::LatePrecision;

const WIDTH: usize = 640;
const HEIGHT: usize = 480;

/// CPU time of the whole process (all threads).
fn process_cpu_time() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A 640x480 RGB scene with the fixture photos pasted onto a mid-grey background.
fn scene(photos: &[(&Path, usize, usize)]) -> Result<Vec<u8>> {
    let mut rgb = vec![128u8; WIDTH * HEIGHT * 3];
    let mut photo = Frame::default();
    for &(path, x0, y0) in photos {
        load_image(path, &mut photo)?;
        for y in 0..photo.height().min(HEIGHT - y0) {
            for x in 0..photo.width().min(WIDTH - x0) {
                let p = photo.pixels()[y * photo.width() + x];
                let i = ((y0 + y) * WIDTH + x0 + x) * 3;
                rgb[i..i + 3].copy_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, p as u8]);
            }
        }
    }
    Ok(rgb)
}

#[derive(Default)]
struct Totals {
    wall: [Duration; 4],
    cpu: [Duration; 4],
}

fn timed<T>(wall: &mut Duration, cpu: &mut Duration, f: impl FnOnce() -> T) -> T {
    let (w0, c0) = (Instant::now(), process_cpu_time());
    let out = f();
    *wall += w0.elapsed();
    *cpu += process_cpu_time() - c0;
    out
}

/// The scenes are fixed, so a different face count means the detector went wrong.
fn check_faces(found: usize, expected: usize) -> Result<()> {
    if found != expected {
        bail!("expected {expected} faces in the scene, the detector found {found}");
    }
    Ok(())
}

fn bench(
    engine: &mut Engine,
    rgb: &[u8],
    frames: usize,
    expected_faces: usize,
) -> Result<(f64, Totals)> {
    let mut frame = Frame::new(WIDTH, HEIGHT);
    let mut faces: Vec<FaceResult> = Vec::with_capacity(16);
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut totals = Totals::default();
    let warmup = 5;
    let mut start = Instant::now();
    for i in 0..warmup + frames {
        if i == warmup {
            totals = Totals::default();
            start = Instant::now();
        }
        let t = &mut totals;
        timed(&mut t.wall[0], &mut t.cpu[0], || {
            frame.copy_from_rgb8(WIDTH, HEIGHT, rgb, WIDTH * 3)
        })?;
        timed(&mut t.wall[1], &mut t.cpu[1], || {
            engine.detect(&frame, &mut faces)
        })?;
        timed(&mut t.wall[2], &mut t.cpu[2], || {
            engine.classify(&frame, &mut faces)
        })?;
        timed(&mut t.wall[3], &mut t.cpu[3], || {
            tracker.update(&mut faces);
            overlay::draw_faces(&mut frame, &faces, engine.class_names(), 2);
            overlay::draw_stats(&mut frame, &StageTimes::default(), 2);
        });
        check_faces(faces.len(), expected_faces)?;
    }
    let fps = frames as f64 / start.elapsed().as_secs_f64();
    Ok((fps, totals))
}

/// The scene, converted into the frame on every read as the camera path does.
struct Replay<'a> {
    rgb: &'a [u8],
}

impl FrameSource for Replay<'_> {
    fn next_frame(&mut self, frame: &mut Frame) -> Result<Next> {
        frame.copy_from_rgb8(WIDTH, HEIGHT, self.rgb, WIDTH * 3)?;
        Ok(Next::Frame)
    }
    fn frame_name(&self) -> &str {
        "scene"
    }
    fn is_live(&self) -> bool {
        true
    }
}

/// The pipelined engine through the demo's own [`Pipeline`]: detection of frame k+1 on its
/// thread while frame k is classified, tracked and drawn. Stage times are per-frame means of
/// what the pipeline reports (they overlap, so they do not add up to the frame time). CPU
/// time per frame: this thread's (capture, classify, track, overlay) and the rest of the
/// process's (the detection thread, with one detector thread at 2 threads in all).
fn bench_pipelined(
    engine: Engine,
    rgb: &[u8],
    frames: usize,
    expected_faces: usize,
) -> Result<(f64, [f64; 4], [f64; 2])> {
    let mut pipeline = Pipeline::new(engine, Some(TrackerConfig::default()));
    let mut source = Replay { rgb };
    let mut frame = Frame::new(WIDTH, HEIGHT);
    let warmup = 5;
    let mut sums = [0.0f64; 4];
    let (mut start, mut cpu_start, mut main_start) =
        (Instant::now(), process_cpu_time(), thread_cpu_time());
    for i in 0..warmup + frames {
        if i == warmup {
            sums = [0.0; 4];
            (start, cpu_start, main_start) =
                (Instant::now(), process_cpu_time(), thread_cpu_time());
        }
        pipeline.step(&mut source, &mut frame)?;
        let overlay_start = Instant::now();
        pipeline.draw(&mut frame, true);
        let t = pipeline.times();
        let stages = [t.capture_ms, t.detect_ms, t.classify_ms];
        for (sum, ms) in sums.iter_mut().zip(stages) {
            *sum += ms as f64;
        }
        sums[3] += overlay_start.elapsed().as_secs_f64() * 1e3;
        check_faces(pipeline.faces().len(), expected_faces)?;
    }
    let fps = frames as f64 / start.elapsed().as_secs_f64();
    let per_frame = |d: Duration| d.as_secs_f64() * 1e3 / frames as f64;
    let all = per_frame(process_cpu_time() - cpu_start);
    let main = per_frame(thread_cpu_time() - main_start);
    Ok((fps, sums.map(|s| s / frames as f64), [main, all - main]))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let frames: usize = flag("--frames")
        .map_or(Ok(60), |f| f.parse())
        .context("--frames N")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let classifier_path = flag("--weights").map(PathBuf::from);
    let detector_path = root.join("weights/retinaface_mnet025.safetensors");
    let classifier = weights::resolve(
        classifier_path.as_deref(),
        weights::embedded_classifier(),
        "classifier",
        "--weights",
    )?;
    let detector = weights::resolve(Some(&detector_path), None, "detector", "--detector")?;

    let fixtures = root.join("tests/fixtures");
    let one = scene(&[(&fixtures.join("obama_241x301.png"), 200, 90)])?;
    let three = scene(&[
        (&fixtures.join("two_portraits.png"), 10, 20),
        (&fixtures.join("obama_241x301.png"), 390, 170),
    ])?;

    println!(
        "classifier: {}; {frames} frames of {WIDTH}x{HEIGHT} after 5 warm-up",
        classifier.origin
    );
    println!();
    println!("| faces | threads | detect downscale | late weights | FPS | capture ms | detect ms | classify ms | track+overlay ms | CPU ms/frame (capture / detect / classify / overlay) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // Half-precision and int8 late layers (--half-weights, --int8-weights) only where
    // detection is cheap enough for classification to matter.
    // Pipelined rows: detection of the next frame overlaps this frame's classification.
    let (f16, int8) = (Some(LatePrecision::F16), Some(LatePrecision::Int8));
    let configs = [
        (1, 1, None, false),
        (2, 1, None, false),
        (2, 1, None, true),
        (1, 2, None, false),
        (2, 2, None, false),
        (2, 2, None, true),
        (1, 2, f16, false),
        (2, 2, f16, false),
        (2, 2, f16, true),
        (2, 2, int8, false),
        (2, 2, int8, true),
    ];
    for (faces, rgb) in [(1, &one), (3, &three)] {
        for (threads, downscale, late_weights, pipelined) in configs {
            let config = EngineConfig {
                threads,
                max_faces: 16,
                score_threshold: 0.6,
                detect_downscale: downscale,
                late_weights,
                pipelined,
                flip_average: false,
            };
            let precision = match late_weights {
                None => "f32",
                Some(LatePrecision::F16) => "f16",
                Some(LatePrecision::Int8) => "int8",
            };
            let engine = Engine::load(&classifier, Some(&detector), &config)?;
            if pipelined {
                let (fps, ms, cpu) = bench_pipelined(engine, rgb, frames, faces)?;
                println!(
                    "| {faces} | {threads}, pipelined | {downscale} | {precision} | {fps:.1} | {:.2} | {:.2} | {:.2} | {:.2} | detect thread {:.2}; capture + classify + overlay thread {:.2} |",
                    ms[0], ms[1], ms[2], ms[3], cpu[1], cpu[0]
                );
                continue;
            }
            let mut engine = engine;
            let (fps, t) = bench(&mut engine, rgb, frames, faces)?;
            let ms = |d: Duration| d.as_secs_f64() * 1e3 / frames as f64;
            println!(
                "| {faces} | {threads} | {downscale} | {precision} | {fps:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} / {:.2} |",
                ms(t.wall[0]),
                ms(t.wall[1]),
                ms(t.wall[2]),
                ms(t.wall[3]),
                ms(t.cpu[0]),
                ms(t.cpu[1]),
                ms(t.cpu[2]),
                ms(t.cpu[3]),
            );
        }
    }
    Ok(())
}
