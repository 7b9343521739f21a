//! Classifying N faces of one frame: one `Session::classify_batch` call against N calls of
//! `Session::classify_face`, for 1-8 faces, 1 and 2 threads, and the shipped network's late
//! layers in f32, f16 and int8; and the batch call with flip averaging on
//! (`Session::set_flip_average`: each face classified as itself and mirrored). The three
//! alternate run by run (round-robin), so drift of the machine hits all alike; prints median ms
//! per frame and the ratios.
//!
//!     cargo run --release -p face2exp-infer --example classify_batch_bench [-- ROUNDS]
//!
//! Faces: the two faces the detector finds in the two-face fixture, repeated to N.

mod common;

use face2exp_infer::{
    FaceRegion, ImageView, Model, PixelFormat, Prediction, Session, SessionConfig,
};
use std::time::Instant;

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(30);
    let (photo, found) = common::two_face_fixture(1.0)?;
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let view = ImageView::packed(photo.as_raw(), w, h, PixelFormat::Rgb8)?;

    let full = Model::load(common::repo_root().join("weights/face2exp-base.safetensors"))?;
    let (mut half, mut int8) = (full.clone(), full.clone());
    half.store_late_weights_as_f16();
    int8.store_late_weights_as_int8();
    println!("{rounds} rounds, median ms per frame; batch = one classify_batch call");
    println!(
        "| late weights | threads | faces | face by face ms | batch ms | face by face / batch \
         | flip-averaged batch ms | flip-averaged / batch |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, model) in [("f32", &full), ("f16", &half), ("int8", &int8)] {
        for threads in [1, 2] {
            let config = SessionConfig {
                max_width: w,
                max_height: h,
                threads,
            };
            let mut session = Session::new(model, config);
            for faces in [1, 2, 3, 4, 8] {
                let regions: Vec<FaceRegion> = found.iter().copied().cycle().take(faces).collect();
                let mut out = vec![Prediction::EMPTY; faces];
                let (mut alone, mut batched, mut flipped) = (Vec::new(), Vec::new(), Vec::new());
                for round in 0..rounds + 2 {
                    let start = Instant::now();
                    for face in &regions {
                        session.classify_face(&view, face)?;
                    }
                    let one_by_one = start.elapsed().as_secs_f64() * 1e3;
                    let start = Instant::now();
                    session.classify_batch(&view, &regions, &mut out)?;
                    let batch = start.elapsed().as_secs_f64() * 1e3;
                    session.set_flip_average(true);
                    let start = Instant::now();
                    session.classify_batch(&view, &regions, &mut out)?;
                    let flip = start.elapsed().as_secs_f64() * 1e3;
                    session.set_flip_average(false);
                    // The first two rounds warm the caches and the pool.
                    if round >= 2 {
                        alone.push(one_by_one);
                        batched.push(batch);
                        flipped.push(flip);
                    }
                }
                let (a, b, f) = (median(alone), median(batched), median(flipped));
                println!(
                    "| {name} | {threads} | {faces} | {a:.2} | {b:.2} | {:.2} | {f:.2} | {:.2} |",
                    a / b,
                    f / b
                );
            }
        }
    }
    Ok(())
}
