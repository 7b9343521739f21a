//! Face detection latency, and detection followed by classification of every face found (issue
//! #5's target: a 640x480 frame detected and all faces classified in under 10 ms), on 640x480
//! and 1280x720 frames, at several detection downscales (`DetectorConfig::downscale`), with 1
//! and 2 threads; prints a table.
//!
//!     cargo run --release -p face2exp-infer --example detect_bench [-- ITERATIONS]
//!
//! The frames hold real faces so that NMS, decoding and classification do real work: "1 face" is
//! the Obama fixture (241x301) pasted at (200, 90) on a mid-grey 640x480 frame, as in the demo's
//! `end_to_end` bench (a face about 130 px wide, webcam distance); "2 faces" is the two-face
//! fixture photo scaled to the frame size. Classification uses the shipped base network with
//! f32 weights, and with its late layers in f16 (`Model::store_late_weights_as_f16`, the
//! demo's `--half-weights`) and in int8 (`Model::store_late_weights_as_int8`,
//! `--int8-weights`); one session per thread count, each face aligned by its landmarks, all
//! faces of a frame in one `Session::classify_batch` call (as the demo does).
//! `tools/retinaface_bench.py` times onnxruntime on the same frames for comparison.

use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession};
use face2exp_infer::{ImageView, Model, PixelFormat, Prediction, Session, SessionConfig};
use std::path::Path;
use std::time::Instant;

/// Median and minimum of `iterations` timed runs of `run` after 3 warm-ups, in ms.
fn time_ms(iterations: usize, mut run: impl FnMut()) -> (f64, f64) {
    for _ in 0..3 {
        run();
    }
    let mut times: Vec<f64> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let detector = Detector::load(root.join("weights/retinaface_mnet025.safetensors"))?;
    let full = Model::load(root.join("weights/face2exp-base.safetensors"))?;
    let (mut half, mut int8) = (full.clone(), full.clone());
    half.store_late_weights_as_f16();
    int8.store_late_weights_as_int8();
    let fixtures = root.join("tests/fixtures");
    let two = image::open(fixtures.join("two_portraits.png"))?.to_rgb8();
    let mut one = image::RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]));
    let obama = image::open(fixtures.join("obama_241x301.png"))?.to_rgb8();
    image::imageops::replace(&mut one, &obama, 200, 90);
    let resized = |w, h| image::imageops::resize(&two, w, h, image::imageops::FilterType::Triangle);
    println!(
        "kernel: {}, median / min ms of {iterations} timed runs after 3 warm-up runs",
        face2exp_infer::kernels::gemm::simd_name()
    );
    println!(
        "| frame | downscale | threads | faces | detect ms | detect + classify f32 ms | \
         detect + classify f16 ms | detect + classify int8 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let frames = [
        (one, &[1, 2, 3, 4][..]),
        (resized(640, 480), &[1, 2, 3, 4][..]),
        (resized(1280, 720), &[1, 2, 4][..]),
    ];
    for (frame, downscales) in frames {
        let (w, h) = frame.dimensions();
        let view = ImageView::packed(frame.as_raw(), w as usize, h as usize, PixelFormat::Rgb8)?;
        for threads in [1, 2] {
            let classify_config = SessionConfig {
                max_width: w as usize,
                max_height: h as usize,
                threads,
            };
            let mut sessions = [&full, &half, &int8].map(|m| Session::new(m, classify_config));
            for &downscale in downscales {
                let config = DetectorConfig {
                    max_width: w as usize,
                    max_height: h as usize,
                    threads,
                    downscale,
                    ..DetectorConfig::default()
                };
                let mut detector = DetectorSession::new(&detector, config)?;
                let faces = detector.detect(&view)?.len();
                let detect = time_ms(iterations, || {
                    let found = detector.detect(&view).map(|f| f.len());
                    assert_eq!(found.ok(), Some(faces), "face count changed between runs");
                });
                let mut with_classify = [(0.0, 0.0); 3];
                let (mut regions, mut predictions) = (Vec::new(), Vec::new());
                for (session, cell) in sessions.iter_mut().zip(&mut with_classify) {
                    *cell = time_ms(iterations, || {
                        let found = detector.detect(&view).expect("detection failed");
                        regions.clear();
                        regions.extend(found.iter().map(|face| face.region()));
                        predictions.resize(regions.len(), Prediction::EMPTY);
                        session
                            .classify_batch(&view, &regions, &mut predictions)
                            .expect("classification failed");
                    });
                }
                let cells: Vec<String> = [detect]
                    .iter()
                    .chain(&with_classify)
                    .map(|(median, min)| format!("{median:.2} / {min:.2}"))
                    .collect();
                println!(
                    "| {w}x{h} | {downscale} | {threads} | {faces} | {} |",
                    cells.join(" | ")
                );
            }
        }
    }
    Ok(())
}
