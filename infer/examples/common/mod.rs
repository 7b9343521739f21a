//! What several examples share: the repository root and the faces of the two-face fixture.

use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession};
use face2exp_infer::{FaceRegion, ImageView, PixelFormat};
use std::path::{Path, PathBuf};

/// The workspace root (the shipped weights and the test fixtures live under it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tests/fixtures/two_portraits.png` as RGB, scaled by `scale` first (its faces are about
/// 100 px at 1), and the face regions the shipped detector finds in it (an error if none).
pub fn two_face_fixture(
    scale: f32,
) -> Result<(image::RgbImage, Vec<FaceRegion>), Box<dyn std::error::Error>> {
    let root = repo_root();
    let mut photo = image::open(root.join("tests/fixtures/two_portraits.png"))?.to_rgb8();
    if scale != 1.0 {
        let (w, h) = (photo.width() as f32 * scale, photo.height() as f32 * scale);
        let filter = image::imageops::FilterType::Triangle;
        photo = image::imageops::resize(&photo, w.round() as u32, h.round() as u32, filter);
    }
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let view = ImageView::packed(photo.as_raw(), w, h, PixelFormat::Rgb8)?;
    let detector = Detector::load(root.join("weights/retinaface_mnet025.safetensors"))?;
    let config = DetectorConfig {
        max_width: w,
        max_height: h,
        ..DetectorConfig::default()
    };
    let found: Vec<FaceRegion> = DetectorSession::new(&detector, config)?
        .detect(&view)?
        .iter()
        .map(|face| face.region())
        .collect();
    if found.is_empty() {
        return Err("no face found in the two-face fixture".into());
    }
    Ok((photo, found))
}
