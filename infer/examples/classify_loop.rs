//! Classifies one face of the two-face fixture (or a batch of them) over and over for a few
//! seconds and prints the median and minimum time per call: a steady workload for a profiler.
//!
//!     cargo run --release -p face2exp-infer --example classify_loop -- \
//!         [f32|f16|int8] [THREADS] [SECONDS] [SCALE] [FACES] [classify|align]
//!     perf record -g target/release/examples/classify_loop int8 1 8
//!
//! The late layers' weights are stored as given (default int8); threads default to 1, seconds
//! to 8. SCALE (default 1) scales the photo first: its faces are about 100 px at 1, and the
//! alignment's cost grows with the face (it area-samples when shrinking to the input). FACES
//! (default 1) above 1 times one `classify_batch` call on that many faces instead. `align`
//! times only the preprocessing of the faces (landmark alignment, `Session::preprocess`).

mod common;

use face2exp_infer::{
    FaceRegion, ImageView, Model, PixelFormat, Prediction, Session, SessionConfig,
};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let precision = args.next().unwrap_or_else(|| "int8".into());
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let seconds: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8.0);
    let scale: f32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1.0);
    let (photo, faces) = common::two_face_fixture(scale)?;
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let view = ImageView::packed(photo.as_raw(), w, h, PixelFormat::Rgb8)?;
    let count: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    // FACES > 1 classifies that many (the fixture's two, repeated) with one classify_batch.
    let faces: Vec<FaceRegion> = faces.iter().copied().cycle().take(count.max(1)).collect();
    let align_only = match args.next().as_deref() {
        None | Some("classify") => false,
        Some("align") => true,
        Some(other) => return Err(format!("unknown mode `{other}`: classify or align").into()),
    };
    let mut out = vec![Prediction::EMPTY; faces.len()];
    let mut model = Model::load(common::repo_root().join("weights/face2exp-base.safetensors"))?;
    match precision.as_str() {
        "f32" => {}
        "f16" => {
            model.store_late_weights_as_f16();
        }
        "int8" => {
            model.store_late_weights_as_int8();
        }
        other => return Err(format!("unknown precision `{other}`: f32, f16 or int8").into()),
    }
    let config = SessionConfig {
        max_width: w,
        max_height: h,
        threads,
    };
    let mut session = Session::new(&model, config);
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        if align_only {
            for face in &faces {
                session.preprocess(&view, Some(face))?;
            }
        } else if faces.len() == 1 {
            session.classify_face(&view, &faces[0])?;
        } else {
            session.classify_batch(&view, &faces, &mut out)?;
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{precision}, {threads} thread(s), {} face(s) per call{}: median {:.3} ms, min {:.3} ms \
         per call over {} calls",
        faces.len(),
        if align_only { ", alignment only" } else { "" },
        times[times.len() / 2],
        times[0],
        times.len()
    );
    Ok(())
}
