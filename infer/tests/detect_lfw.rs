//! Opt-in: on the 13,233 LFW deep-funneled photos (250x250, one face centred in each), the
//! fraction where the detector finds the centred face. Needs `FACE2EXP_DATA` (the folder holding
//! `lfw/`); skips with a message otherwise. `FACE2EXP_LFW_LIMIT=N` checks N photos spread evenly
//! over the sorted list (CI uses 2,000 to stay quick). Run it optimised, it decodes and detects every photo:
//!
//!     FACE2EXP_DATA=/work/shared/data cargo test --release -p face2exp-infer --test detect_lfw -- --nocapture

mod common;

use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession, Face};
use face2exp_infer::{ImageView, PixelFormat};
use std::path::Path;

/// The centred face: its box centre within 25 px of the photo's centre and its width 50-200 px
/// (LFW faces fill roughly the central 110-120 px).
fn is_centred(face: &Face, width: f32, height: f32) -> bool {
    let (cx, cy) = (
        face.bbox[0] + face.bbox[2] / 2.0,
        face.bbox[1] + face.bbox[3] / 2.0,
    );
    (cx - width / 2.0).abs() <= 25.0
        && (cy - height / 2.0).abs() <= 25.0
        && (50.0..=200.0).contains(&face.bbox[2])
}

#[test]
fn finds_the_centred_face_in_lfw() {
    let Some(data) = std::env::var_os("FACE2EXP_DATA") else {
        println!("skipped: set FACE2EXP_DATA to the data folder holding lfw/ to run this test");
        return;
    };
    let limit = std::env::var("FACE2EXP_LFW_LIMIT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let photos = common::lfw::photos(&Path::new(&data).join("lfw"), limit);
    assert!(
        !photos.is_empty(),
        "no LFW photos under {}",
        Path::new(&data).join("lfw").display()
    );
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../weights/retinaface_mnet025.safetensors");
    let detector = Detector::load(weights).unwrap();
    let config = DetectorConfig {
        max_width: 250,
        max_height: 250,
        ..DetectorConfig::default()
    };
    let mut session = DetectorSession::new(&detector, config).unwrap();
    let (mut found, mut unreadable, mut misses) = (0usize, 0usize, Vec::new());
    let start = std::time::Instant::now();
    for path in &photos {
        let Ok(photo) = image::open(path) else {
            unreadable += 1;
            continue;
        };
        let photo = photo.to_rgb8();
        let (w, h) = (photo.width() as usize, photo.height() as usize);
        let view = ImageView::packed(photo.as_raw(), w, h, PixelFormat::Rgb8).unwrap();
        let faces = session.detect(&view).unwrap();
        if faces.iter().any(|f| is_centred(f, w as f32, h as f32)) {
            found += 1;
        } else if misses.len() < 10 {
            misses.push(path.display().to_string());
        }
    }
    let checked = photos.len() - unreadable;
    let fraction = found as f64 / checked as f64;
    println!(
        "LFW: centred face found in {found} of {checked} photos ({:.2}%), {unreadable} unreadable, {:.1} s; \
         threshold {}, first misses: {misses:?}",
        100.0 * fraction,
        start.elapsed().as_secs_f64(),
        config.score_threshold
    );
    assert!(
        fraction >= 0.97,
        "the detector misses the centred LFW face too often: {:.2}%",
        100.0 * fraction
    );
}
