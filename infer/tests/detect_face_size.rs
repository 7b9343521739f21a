//! Opt-in: which face sizes the detector still finds when it runs on a shrunk frame
//! (`DetectorConfig::downscale`), the speed/recall trade-off behind the demo's defaults.
//!
//! LFW photos (one centred face each) are scaled so that the face is 24-192 px wide, pasted in
//! the middle of a mid-grey 640x480 frame, and detected at downscale 1-4. A face counts as found
//! when a detection's box centre lies within a quarter of the face width of the expected centre
//! and its width is within 0.6-1.6x the expected width. The expected box is the one the
//! detector finds at full resolution in the original 250x250 photo, scaled. Needs
//! `FACE2EXP_DATA` (the folder holding `lfw/`); skips with a message otherwise.
//! `FACE2EXP_LFW_SIZE_LIMIT=N` sets the sample (default 300, spread evenly over the sorted list):
//!
//!     FACE2EXP_DATA=/work/shared/data cargo test --release -p face2exp-infer --test detect_face_size -- --nocapture

mod common;

use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession, Face};
use face2exp_infer::{ImageView, PixelFormat};
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use std::path::Path;

const FRAME: (u32, u32) = (640, 480);
const FACE_WIDTHS: [f32; 7] = [24.0, 32.0, 48.0, 64.0, 96.0, 128.0, 192.0];
const DOWNSCALES: [usize; 4] = [1, 2, 3, 4];

/// The face nearest the photo's centre, if one lies within 25 px of it.
fn centred_face(faces: &[Face], width: f32, height: f32) -> Option<Face> {
    let off_centre = |f: &Face| {
        let cx = f.bbox[0] + f.bbox[2] / 2.0 - width / 2.0;
        let cy = f.bbox[1] + f.bbox[3] / 2.0 - height / 2.0;
        cx.abs().max(cy.abs())
    };
    faces
        .iter()
        .filter(|f| off_centre(f) <= 25.0)
        .min_by(|a, b| off_centre(a).total_cmp(&off_centre(b)))
        .copied()
}

/// True when one of `faces` matches the expected box `[cx, cy, width]`.
fn matches(faces: &[Face], [cx, cy, width]: [f32; 3]) -> bool {
    faces.iter().any(|f| {
        let (fx, fy) = (f.bbox[0] + f.bbox[2] / 2.0, f.bbox[1] + f.bbox[3] / 2.0);
        (fx - cx).abs().max((fy - cy).abs()) <= width / 4.0
            && (0.6 * width..=1.6 * width).contains(&f.bbox[2])
    })
}

#[test]
fn recall_by_face_size_and_downscale() {
    let Some(data) = std::env::var_os("FACE2EXP_DATA") else {
        println!("skipped: set FACE2EXP_DATA to the data folder holding lfw/ to run this test");
        return;
    };
    let limit = std::env::var("FACE2EXP_LFW_SIZE_LIMIT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(300)
        .max(1);
    let photos = common::lfw::photos(&Path::new(&data).join("lfw"), Some(limit));
    assert!(!photos.is_empty(), "no LFW photos under {:?}", data);

    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../weights/retinaface_mnet025.safetensors");
    let detector = Detector::load(weights).unwrap();
    let session_for = |downscale| {
        let config = DetectorConfig {
            max_width: FRAME.0 as usize,
            max_height: FRAME.1 as usize,
            threads: 2,
            downscale,
            ..DetectorConfig::default()
        };
        DetectorSession::new(&detector, config).unwrap()
    };
    let mut reference = session_for(1);
    let mut sessions: Vec<DetectorSession> = DOWNSCALES.iter().map(|&d| session_for(d)).collect();
    // found[size][downscale]
    let mut found = [[0usize; DOWNSCALES.len()]; FACE_WIDTHS.len()];
    let (mut used, mut skipped) = (0usize, 0usize);
    let start = std::time::Instant::now();
    for path in &photos {
        let Ok(photo) = image::open(path) else {
            skipped += 1;
            continue;
        };
        let photo = photo.to_rgb8();
        let (w, h) = photo.dimensions();
        let view =
            ImageView::packed(photo.as_raw(), w as usize, h as usize, PixelFormat::Rgb8).unwrap();
        let Some(face) = centred_face(reference.detect(&view).unwrap(), w as f32, h as f32) else {
            skipped += 1;
            continue;
        };
        used += 1;
        for (size_index, &target) in FACE_WIDTHS.iter().enumerate() {
            let scale = target / face.bbox[2];
            let (sw, sh) = (
                (w as f32 * scale).round() as u32,
                (h as f32 * scale).round() as u32,
            );
            // Photos larger than the frame are cropped by the paste, not squeezed, so the face
            // keeps its scale and position.
            let scaled = imageops::resize(&photo, sw, sh, FilterType::Triangle);
            let mut frame = RgbImage::from_pixel(FRAME.0, FRAME.1, Rgb([128, 128, 128]));
            let x0 = (i64::from(FRAME.0) - i64::from(sw)) / 2;
            let y0 = (i64::from(FRAME.1) - i64::from(sh)) / 2;
            imageops::replace(&mut frame, &scaled, x0, y0);
            let expected = [
                x0 as f32 + (face.bbox[0] + face.bbox[2] / 2.0) * scale,
                y0 as f32 + (face.bbox[1] + face.bbox[3] / 2.0) * scale,
                target,
            ];
            let view = ImageView::packed(
                frame.as_raw(),
                FRAME.0 as usize,
                FRAME.1 as usize,
                PixelFormat::Rgb8,
            )
            .unwrap();
            for (d, session) in sessions.iter_mut().enumerate() {
                if matches(session.detect(&view).unwrap(), expected) {
                    found[size_index][d] += 1;
                }
            }
        }
    }
    assert!(used > 0, "no usable LFW photo among {}", photos.len());
    let recall = |s: usize, d: usize| 100.0 * found[s][d] as f64 / used as f64;
    println!(
        "{used} LFW photos ({skipped} skipped: unreadable or no centred face at full resolution), \
         {FRAME:?} frames, threshold {}, {:.1} s",
        DetectorConfig::default().score_threshold,
        start.elapsed().as_secs_f64()
    );
    println!("| face width px | downscale 1 | downscale 2 | downscale 3 | downscale 4 |");
    println!("|---|---|---|---|---|");
    for (s, width) in FACE_WIDTHS.iter().enumerate() {
        let cells: Vec<String> = (0..DOWNSCALES.len())
            .map(|d| format!("{:.1}%", recall(s, d)))
            .collect();
        println!("| {width} | {} |", cells.join(" | "));
    }
    // The rule the demo's `--detect-downscale` help and weights/README.md state: faces at least
    // 32 x downscale px wide are found.
    for (d, &downscale) in DOWNSCALES.iter().enumerate() {
        for (s, &width) in FACE_WIDTHS.iter().enumerate() {
            if width >= 32.0 * downscale as f32 {
                assert!(
                    recall(s, d) >= 97.0,
                    "downscale {downscale} finds only {:.1}% of {width} px faces",
                    recall(s, d)
                );
            }
        }
    }
}
