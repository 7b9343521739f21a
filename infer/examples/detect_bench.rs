//! Face detection latency on 640x480 and 1280x720 frames, full resolution and shrunk by 2
//! (`DetectorConfig::downscale`), with 1 and 2 threads; prints a table.
//!
//!     cargo run --release -p face2exp-infer --example detect_bench [-- ITERATIONS]
//!
//! The frames are the two-face fixture photo scaled to each size (so NMS and decoding see real
//! faces). `tools/retinaface_bench.py` times onnxruntime on the same frames for comparison.

use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession};
use face2exp_infer::{ImageView, PixelFormat};
use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let detector = Detector::load(root.join("weights/retinaface_mnet025.safetensors"))?;
    let photo = image::open(root.join("tests/fixtures/two_portraits.png"))?.to_rgb8();
    println!(
        "kernel: {}, {iterations} timed runs after 3 warm-up runs",
        face2exp_infer::kernels::gemm::simd_name()
    );
    println!("| frame | downscale | threads | faces | median ms | min ms | mean ms |");
    println!("|---|---|---|---|---|---|---|");
    for (w, h) in [(640u32, 480u32), (1280, 720)] {
        let frame = image::imageops::resize(&photo, w, h, image::imageops::FilterType::Triangle);
        let view = ImageView::packed(frame.as_raw(), w as usize, h as usize, PixelFormat::Rgb8)?;
        for (threads, downscale) in [(1, 1), (2, 1), (1, 2), (2, 2)] {
            let config = DetectorConfig {
                max_width: w as usize,
                max_height: h as usize,
                threads,
                downscale,
                ..DetectorConfig::default()
            };
            let mut session = DetectorSession::new(&detector, config)?;
            let mut faces = 0;
            for _ in 0..3 {
                faces = session.detect(&view)?.len();
            }
            let mut times: Vec<f64> = (0..iterations)
                .map(|_| {
                    let start = Instant::now();
                    let found = session.detect(&view).map(|f| f.len());
                    assert_eq!(found.ok(), Some(faces));
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            println!(
                "| {w}x{h} | {downscale} | {threads} | {faces} | {:.2} | {:.2} | {mean:.2} |",
                times[times.len() / 2],
                times[0]
            );
        }
    }
    Ok(())
}
