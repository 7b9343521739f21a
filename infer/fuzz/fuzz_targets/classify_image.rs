//! `classify` and `classify_face` on any image geometry, pixel format, stride, buffer length
//! and face region (NaN, infinite, huge, inverted boxes and landmarks): a result or a typed
//! error, never a panic, and finite probabilities that sum to 1 when it succeeds.
#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use face2exp_infer::{FaceRegion, ImageView, Model, PixelFormat, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let spec = common::Spec {
            arch: "resnet18",
            stem: "small",
            input_size: 8,
            classes: 7,
        };
        Model::from_bytes(&common::model_file(&spec, 11)).unwrap()
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    width: u16,
    height: u8,
    extra_stride: u8,
    short_by: u8,
    format: u8,
    bbox: [f32; 4],
    landmarks: Option<[[f32; 2]; 5]>,
    pixel: u8,
}

fuzz_target!(|input: Input| {
    let format = PixelFormat::ALL[input.format as usize % PixelFormat::ALL.len()];
    let (width, height) = (input.width as usize % 400, input.height as usize);
    let stride = width * format.bytes_per_pixel() + input.extra_stride as usize % 16;
    let len = (stride * height).saturating_sub(input.short_by as usize % 4);
    let data = vec![input.pixel; len];
    let config = SessionConfig {
        max_width: 256,
        max_height: 128,
        threads: 1,
    };
    let mut session = Session::new(model(), config);
    let Ok(image) = ImageView::new(&data, width, height, stride, format) else {
        return;
    };
    let check = |p: &face2exp_infer::Prediction| {
        let sum: f32 = p.probs().iter().sum();
        assert!(p.class < 7 && (sum - 1.0).abs() < 1e-3, "{p:?}");
    };
    if let Ok(p) = session.classify(&image) {
        check(&p);
    }
    let face = FaceRegion {
        bbox: input.bbox,
        landmarks: input.landmarks,
    };
    if let Ok(p) = session.classify_face(&image, &face) {
        check(&p);
    }
});
