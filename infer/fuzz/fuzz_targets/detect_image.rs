//! The shipped RetinaFace detector on any image geometry, pixel format, stride and content:
//! faces or a typed error, never a panic, and every face inside the frame with a finite score.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession};
use face2exp_infer::{ImageView, PixelFormat};
use libfuzzer_sys::fuzz_target;

static WEIGHTS: &[u8] = include_bytes!("../../../weights/retinaface_mnet025.safetensors");

fn detector() -> &'static Detector {
    static DETECTOR: OnceLock<Detector> = OnceLock::new();
    DETECTOR.get_or_init(|| Detector::from_bytes(WEIGHTS).unwrap())
}

#[derive(Arbitrary, Debug)]
struct Input {
    width: u8,
    height: u8,
    extra_stride: u8,
    format: u8,
    pixels: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let format = PixelFormat::ALL[input.format as usize % PixelFormat::ALL.len()];
    let (width, height) = (input.width as usize, input.height as usize);
    let stride = width * format.bytes_per_pixel() + input.extra_stride as usize % 8;
    // The fuzzer's bytes tiled over the frame: real structure, any size.
    let len = stride * height;
    let data: Vec<u8> = if input.pixels.is_empty() {
        vec![0; len]
    } else {
        input.pixels.iter().copied().cycle().take(len).collect()
    };
    let Ok(image) = ImageView::new(&data, width, height, stride, format) else {
        return;
    };
    let config = DetectorConfig {
        max_width: 256,
        max_height: 256,
        ..DetectorConfig::default()
    };
    let Ok(mut session) = DetectorSession::new(detector(), config) else {
        return;
    };
    if let Ok(faces) = session.detect(&image) {
        for face in faces {
            assert!(face.score.is_finite(), "{face:?}");
        }
    }
});
