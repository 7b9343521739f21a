//! Preprocessing against the trainer's contract: `image::imageops::resize` with
//! `FilterType::Triangle`, then `(x/255 - mean) / std`, in every pixel format and with strides.

mod common;

use common::{model_file, random_pixels, Spec};
use face2exp_infer::{
    yuv_to_rgb, ClassifyError, FaceRegion, ImageView, Model, PixelFormat, Session, SessionConfig,
    ALIGN_TEMPLATE,
};
use image::imageops::{resize, FilterType};
use image::RgbImage;

fn model(size: usize) -> Model {
    Model::from_bytes(&model_file(
        &Spec {
            arch: "resnet18",
            stem: "small",
            input_size: size,
            classes: 7,
        },
        5,
    ))
    .unwrap()
}

/// Undo normalisation: the 8-bit level each input value came from.
fn levels(input: &[f32], model: &Model) -> Vec<[f32; 3]> {
    let plane = input.len() / 3;
    let (mean, std) = (model.mean(), model.std());
    (0..plane)
        .map(|i| core::array::from_fn(|c| (input[c * plane + i] * std[c] + mean[c]) * 255.0))
        .collect()
}

/// Encodes an RGB image in `format` with `pad` extra bytes per row.
fn encode(rgb: &RgbImage, format: PixelFormat, pad: usize) -> (Vec<u8>, usize) {
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let stride = w * format.bytes_per_pixel() + pad;
    let mut out = vec![0xAB; stride * h];
    for y in 0..h {
        for x in 0..w {
            let [r, g, b] = rgb.get_pixel(x as u32, y as u32).0;
            let at = y * stride + x * format.bytes_per_pixel();
            match format {
                PixelFormat::Rgb8 => out[at..at + 3].copy_from_slice(&[r, g, b]),
                PixelFormat::Bgr8 => out[at..at + 3].copy_from_slice(&[b, g, r]),
                PixelFormat::Rgba8 => out[at..at + 4].copy_from_slice(&[r, g, b, 200]),
                PixelFormat::Bgra8 => out[at..at + 4].copy_from_slice(&[b, g, r, 200]),
                PixelFormat::Gray8 => out[at] = r,
                PixelFormat::Yuyv => unreachable!(),
            }
        }
    }
    (out, stride)
}

fn max_diff(
    model: &Model,
    session: &mut Session,
    view: &ImageView,
    face: Option<&FaceRegion>,
    want: &RgbImage,
) -> f32 {
    let got = levels(session.preprocess(view, face).unwrap(), model);
    let mut worst = 0.0f32;
    for (g, p) in got.iter().zip(want.pixels()) {
        for (&level, &reference) in g.iter().zip(&p.0) {
            worst = worst.max((level - reference as f32).abs());
        }
    }
    worst
}

#[test]
fn resize_matches_image_crate_in_every_format() {
    for (size, (w, h)) in [
        (48, (97, 61)),
        (64, (64, 64)),
        (64, (23, 40)),
        (16, (300, 211)),
    ] {
        let model = model(size);
        let mut session = Session::new(&model, SessionConfig::default());
        for format in [
            PixelFormat::Rgb8,
            PixelFormat::Bgr8,
            PixelFormat::Rgba8,
            PixelFormat::Bgra8,
            PixelFormat::Gray8,
        ] {
            let mut rgb =
                RgbImage::from_raw(w, h, random_pixels((w * h * 3) as usize, w as u64)).unwrap();
            if format == PixelFormat::Gray8 {
                rgb.pixels_mut().for_each(|p| p.0 = [p.0[0]; 3]);
            }
            let want = resize(&rgb, size as u32, size as u32, FilterType::Triangle);
            let (bytes, stride) = encode(&rgb, format, 5);
            let view = ImageView::new(&bytes, w as usize, h as usize, stride, format).unwrap();
            let diff = max_diff(&model, &mut session, &view, None, &want);
            assert!(
                diff <= 1.0 + 1e-3,
                "{format:?} {w}x{h}->{size}: max diff {diff} grey levels"
            );
        }
    }
}

#[test]
fn face_box_crops_then_resizes() {
    let model = model(32);
    let mut session = Session::new(&model, SessionConfig::default());
    let (w, h) = (120u32, 90u32);
    let rgb = RgbImage::from_raw(w, h, random_pixels((w * h * 3) as usize, 9)).unwrap();
    let (bytes, stride) = encode(&rgb, PixelFormat::Rgb8, 0);
    let view = ImageView::new(&bytes, w as usize, h as usize, stride, PixelFormat::Rgb8).unwrap();
    let crop = image::imageops::crop_imm(&rgb, 30, 12, 50, 61).to_image();
    let want = resize(&crop, 32, 32, FilterType::Triangle);
    let face = FaceRegion::from_bbox([30.2, 11.8, 49.9, 61.1]);
    let diff = max_diff(&model, &mut session, &view, Some(&face), &want);
    assert!(diff <= 1.0 + 1e-3, "max diff {diff}");
    // A box hanging over the border is clipped to the image.
    let clipped = FaceRegion::from_bbox([100.0, 70.0, 50.0, 50.0]);
    let crop = image::imageops::crop_imm(&rgb, 100, 70, 20, 20).to_image();
    let want = resize(&crop, 32, 32, FilterType::Triangle);
    assert!(max_diff(&model, &mut session, &view, Some(&clipped), &want) <= 1.0 + 1e-3);
    let outside = FaceRegion::from_bbox([500.0, 0.0, 10.0, 10.0]);
    assert!(matches!(
        session.classify_face(&view, &outside),
        Err(ClassifyError::BadFace(_))
    ));
}

#[test]
fn yuyv_decodes_bt601() {
    assert_eq!(yuv_to_rgb(16, 128, 128), [0.0, 0.0, 0.0]);
    let white = yuv_to_rgb(235, 128, 128);
    assert!(white.iter().all(|&v| (v - 255.0).abs() < 0.5), "{white:?}");
    // A uniform YUYV frame resizes to that colour everywhere.
    let model = model(16);
    let mut session = Session::new(&model, SessionConfig::default());
    let frame: Vec<u8> = [81u8, 90, 81, 240].repeat(40 * 30 / 2);
    let view = ImageView::packed(&frame, 40, 30, PixelFormat::Yuyv).unwrap();
    let want = yuv_to_rgb(81, 90, 240);
    for px in levels(session.preprocess(&view, None).unwrap(), &model) {
        for c in 0..3 {
            assert!((px[c] - want[c].round()).abs() < 1e-3, "{px:?} vs {want:?}");
        }
    }
}

#[test]
fn landmarks_align_face_to_template() {
    // A face drawn at known landmarks, rotated and scaled by 3: after alignment each landmark
    // must land on its template position. Mark each landmark with a bright square.
    let size = 48usize;
    let model = model(size);
    let mut session = Session::new(&model, SessionConfig::default());
    let (w, h) = (400usize, 300usize);
    let (angle, scale, tx, ty) = (0.3f32, 3.0f32, 120.0f32, 40.0f32);
    let to_image = |p: [f32; 2]| {
        let (x, y) = (p[0] * size as f32, p[1] * size as f32);
        [
            scale * (angle.cos() * x - angle.sin() * y) + tx,
            scale * (angle.sin() * x + angle.cos() * y) + ty,
        ]
    };
    let landmarks: [[f32; 2]; 5] = core::array::from_fn(|i| to_image(ALIGN_TEMPLATE[i]));
    let mut grey = vec![0u8; w * h];
    for p in &landmarks {
        for y in (p[1] as usize - 4)..(p[1] as usize + 4) {
            for x in (p[0] as usize - 4)..(p[0] as usize + 4) {
                grey[y * w + x] = 255;
            }
        }
    }
    let view = ImageView::packed(&grey, w, h, PixelFormat::Gray8).unwrap();
    let face = FaceRegion {
        bbox: [0.0, 0.0, 1.0, 1.0],
        landmarks: Some(landmarks),
    };
    let got = levels(session.preprocess(&view, Some(&face)).unwrap(), &model);
    for t in ALIGN_TEMPLATE {
        let (x, y) = ((t[0] * size as f32) as usize, (t[1] * size as f32) as usize);
        assert!(
            got[y * size + x][0] > 200.0,
            "template point {t:?} is dark: {}",
            got[y * size + x][0]
        );
    }
    // Far from any landmark the aligned crop is black.
    assert!(got[2 * size + 2][0] < 1.0);
}

#[test]
fn batch_matches_single_faces_and_sizes_are_enforced() {
    let model = model(8);
    let mut session = Session::new(
        &model,
        SessionConfig {
            max_width: 100,
            max_height: 80,
            threads: 1,
        },
    );
    let frame = random_pixels(120 * 90 * 3, 3);
    let view = ImageView::packed(&frame, 120, 90, PixelFormat::Rgb8).unwrap();
    let faces = [
        FaceRegion::from_bbox([5.0, 5.0, 40.0, 50.0]),
        FaceRegion::from_bbox([60.0, 20.0, 30.0, 30.0]),
    ];
    let mut batch = [face2exp_infer::Prediction::EMPTY; 2];
    session.classify_batch(&view, &faces, &mut batch).unwrap();
    for (face, got) in faces.iter().zip(&batch) {
        let single = session.classify_face(&view, face).unwrap();
        assert_eq!(&single, got);
        let sum: f32 = got.probs().iter().sum();
        assert!((sum - 1.0).abs() < 1e-5 && got.confidence == got.probs[got.class]);
    }
    assert!(matches!(
        session.classify_batch(&view, &faces, &mut batch[..1]),
        Err(ClassifyError::Length { .. })
    ));
    // The whole 120x90 frame exceeds the 100x80 maximum; a crop inside it does not.
    assert!(matches!(
        session.classify(&view),
        Err(ClassifyError::TooLarge { .. })
    ));
}

#[test]
fn aligned_crops_are_the_same_in_every_format_and_with_two_threads() {
    // Alignment reads pixels through a reader picked per format and splits output rows
    // between threads: the same picture in each byte format (with row padding), on one
    // thread or two, must give the same bits. Rotated, and shrunk ~3x so each output pixel
    // averages 3x3 bilinear samples.
    let size = 48usize;
    let model = model(size);
    let (w, h) = (300u32, 220u32);
    let rgb = RgbImage::from_raw(w, h, random_pixels(w as usize * h as usize * 3, 11)).unwrap();
    let grey_rgb = RgbImage::from_fn(w, h, |x, y| {
        let r = rgb.get_pixel(x, y).0[0];
        image::Rgb([r, r, r])
    });
    let face = FaceRegion {
        bbox: [0.0, 0.0, 1.0, 1.0],
        landmarks: Some([
            [110.0, 80.0],
            [160.0, 90.0],
            [132.0, 118.0],
            [112.0, 150.0],
            [150.0, 158.0],
        ]),
    };
    let crop = |threads: usize, picture: &RgbImage, format: PixelFormat| {
        let config = SessionConfig {
            threads,
            ..SessionConfig::default()
        };
        let mut session = Session::new(&model, config);
        let (bytes, stride) = encode(picture, format, 5);
        let view = ImageView::new(&bytes, w as usize, h as usize, stride, format).unwrap();
        let input = session.preprocess(&view, Some(&face)).unwrap();
        input.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    let want = crop(1, &rgb, PixelFormat::Rgb8);
    for format in [PixelFormat::Bgr8, PixelFormat::Rgba8, PixelFormat::Bgra8] {
        assert_eq!(crop(1, &rgb, format), want, "{format:?}, one thread");
        assert_eq!(crop(2, &rgb, format), want, "{format:?}, two threads");
    }
    assert_eq!(crop(2, &rgb, PixelFormat::Rgb8), want, "Rgb8, two threads");
    assert_eq!(
        crop(2, &grey_rgb, PixelFormat::Gray8),
        crop(1, &grey_rgb, PixelFormat::Rgb8),
        "Gray8"
    );
}

#[test]
fn aligned_crops_of_a_ramp_are_centred_at_every_shrink_factor() {
    // An image whose levels rise linearly (0.2 per pixel right, 0.1 per pixel down), warped
    // by a known rotation and scale: any area filter centred on each output pixel's
    // footprint gives the ramp's value at the footprint's centre, so the crop's mean error
    // shows a misplaced filter (half a pixel, a cell's offset) that rounding alone cannot
    // explain. Shrink factors cover direct sampling (1.5), the cell grid with one sample per
    // pixel (3) and with 2 x 2 (4.4, 7.3), and sub-sampled cells (11.6).
    let size = 48usize;
    let model = model(size);
    let (w, h) = (1300usize, 1000usize);
    let ramp = |x: f32, y: f32| 0.2 * x + 0.1 * y - 40.0;
    let grey: Vec<u8> = (0..w * h)
        .map(|i| {
            ramp((i % w) as f32, (i / w) as f32)
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect();
    let view = ImageView::packed(&grey, w, h, PixelFormat::Gray8).unwrap();
    let config = SessionConfig {
        max_width: w,
        max_height: h,
        threads: 2,
    };
    let mut session = Session::new(&model, config);
    for scale in [1.5f32, 3.0, 4.4, 7.3, 11.6] {
        let angle = 0.3f32;
        let (centre_x, centre_y) = (650.0f32, 480.0f32);
        // Output continuous coordinates (pixel u covers [u, u + 1)) -> image coordinates.
        let to_image = |u: f32, v: f32| {
            let (x, y) = (u - size as f32 / 2.0, v - size as f32 / 2.0);
            (
                scale * (angle.cos() * x - angle.sin() * y) + centre_x,
                scale * (angle.sin() * x + angle.cos() * y) + centre_y,
            )
        };
        let landmarks: [[f32; 2]; 5] = core::array::from_fn(|i| {
            let t = ALIGN_TEMPLATE[i];
            let (x, y) = to_image(t[0] * size as f32, t[1] * size as f32);
            [x, y]
        });
        let face = FaceRegion {
            bbox: [0.0, 0.0, 1.0, 1.0],
            landmarks: Some(landmarks),
        };
        let got = levels(session.preprocess(&view, Some(&face)).unwrap(), &model);
        let (mut sum, mut worst) = (0.0f64, 0.0f32);
        for v in 0..size {
            for u in 0..size {
                let (x, y) = to_image(u as f32 + 0.5, v as f32 + 0.5);
                // Pixel (i, j)'s centre is at (i + 0.5, j + 0.5).
                let want = ramp(x - 0.5, y - 0.5);
                assert!(
                    (0.0..=255.0).contains(&want),
                    "ramp leaves 0..255 at {scale}"
                );
                let error = got[v * size + u][0] - want;
                sum += error as f64;
                worst = worst.max(error.abs());
            }
        }
        let mean = sum / (size * size) as f64;
        assert!(
            mean.abs() < 0.1 && worst <= 1.05,
            "shrink {scale}: mean error {mean:.3} levels, worst {worst:.3}"
        );
    }
}

#[test]
fn absurdly_spread_landmarks_neither_panic_nor_overflow() {
    // Landmarks the template's shape but up to a million times the input's size, partly or
    // wholly off the image: the grid's cells grow with the shrink factor (reads per cell are
    // bounded, so this stays quick), and no coordinate arithmetic may overflow.
    let model = model(48);
    let mut session = Session::new(&model, SessionConfig::default());
    let pixels = random_pixels(64 * 48 * 3, 9);
    let view = ImageView::packed(&pixels, 64, 48, PixelFormat::Rgb8).unwrap();
    for spread in [10.0f32, 1e3, 1e5, 1e6] {
        for offset in [0.0f32, -1e7, 3e9] {
            let landmarks = ALIGN_TEMPLATE.map(|[x, y]| [x * spread + offset, y * spread]);
            let face = FaceRegion {
                bbox: [0.0, 0.0, 1.0, 1.0],
                landmarks: Some(landmarks),
            };
            if let Ok(p) = session.classify_face(&view, &face) {
                assert!(p.class < 7 && p.confidence.is_finite());
            }
        }
    }
}
