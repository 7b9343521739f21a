//! No input makes loading or classifying panic: random, truncated and bit-flipped weight
//! files; zero, odd and oversized images, strides and hostile face regions.

mod common;

use common::{model_file, Spec};
use face2exp_infer::{FaceRegion, ImageView, Model, PixelFormat, Session, SessionConfig};
use proptest::prelude::*;
use std::sync::OnceLock;

fn valid_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        model_file(
            &Spec {
                arch: "resnet18",
                stem: "small",
                input_size: 8,
                classes: 7,
            },
            11,
        )
    })
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::from_bytes(valid_file()).unwrap())
}

fn header_end() -> usize {
    let f = valid_file();
    8 + u64::from_le_bytes(f[..8].try_into().unwrap()) as usize
}

/// Loading must return (Ok or a typed error) and a model that loads must classify.
fn load_and_use(bytes: &[u8]) {
    if let Ok(model) = Model::from_bytes(bytes) {
        let mut session = Session::new(
            &model,
            SessionConfig {
                max_width: 16,
                max_height: 16,
                threads: 1,
            },
        );
        let pixels = [7u8; 16 * 16];
        let image = ImageView::packed(&pixels, 16, 16, PixelFormat::Gray8).unwrap();
        let p = session.classify(&image).unwrap();
        assert!(p.class < model.num_classes());
    }
}

fn format() -> impl Strategy<Value = PixelFormat> {
    prop::sample::select(PixelFormat::ALL.to_vec())
}

fn coordinate() -> impl Strategy<Value = f32> {
    prop_oneof![
        -50.0f32..250.0,
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(-1e30f32),
        Just(1e30f32),
        Just(0.0f32),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Model::from_bytes(&bytes).is_err());
    }

    #[test]
    fn truncated_files_are_errors(cut in 0usize..1_000_000) {
        let file = valid_file();
        let cut = cut % file.len();
        prop_assert!(Model::from_bytes(&file[..cut]).is_err());
    }

    #[test]
    fn header_bit_flips_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4)) {
        let mut bytes = valid_file().to_vec();
        let span = header_end();
        for (at, bit) in flips {
            bytes[at.index(span)] ^= 1 << bit;
        }
        load_and_use(&bytes);
    }

    #[test]
    fn any_image_and_face_never_panics(
        width in 0usize..300,
        height in 0usize..90,
        pad in 0usize..9,
        short_by in 0usize..3,
        format in format(),
        bbox in prop::array::uniform4(coordinate()),
        landmarks in prop::option::of(prop::array::uniform5(prop::array::uniform2(coordinate()))),
    ) {
        let stride = width * format.bytes_per_pixel() + pad;
        let len = (stride * height).saturating_sub(short_by * pad.min(1));
        let data = vec![200u8; len];
        let mut session = Session::new(model(), SessionConfig { max_width: 256, max_height: 64, threads: 1 });
        match ImageView::new(&data, width, height, stride, format) {
            Ok(image) => {
                let _ = session.classify(&image);
                let face = FaceRegion { bbox, landmarks };
                if let Ok(p) = session.classify_face(&image, &face) {
                    prop_assert!(p.class < 7 && p.confidence.is_finite());
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

proptest! {
    // Each case loads a whole ResNet-18, so fewer cases.
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn weight_bit_flips_never_panic(at in any::<prop::sample::Index>(), bit in 0u8..8) {
        // Flipping exponent bits makes NaN/inf weights, which must be refused, not run.
        let mut bytes = valid_file().to_vec();
        let start = header_end();
        let i = start + at.index(bytes.len() - start);
        bytes[i] ^= 1 << bit;
        load_and_use(&bytes);
    }
}
