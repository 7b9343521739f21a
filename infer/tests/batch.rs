//! `Session::classify_batch` runs the faces of a frame through the late layers together; its
//! predictions must be the same, bit for bit, as classifying each face alone, for every batch
//! size (past `MAX_BATCH` too), thread count, weight precision and architecture.

mod common;

use common::{model_file, random_pixels, Spec};
use face2exp_infer::{
    ClassifyError, FaceRegion, ImageView, Model, PixelFormat, Prediction, Session, SessionConfig,
    MAX_BATCH,
};

/// `count` different face boxes inside a `width x height` frame, some with landmarks.
fn faces(count: usize, width: f32, height: f32) -> Vec<FaceRegion> {
    (0..count)
        .map(|i| {
            let t = i as f32 / count as f32;
            let side = 0.2 * width + 0.3 * width * t;
            let (x, y) = ((width - side) * t, (height - side) * (1.0 - t));
            let mut face = FaceRegion::from_bbox([x, y, side, side]);
            if i % 2 == 1 {
                let (cx, cy) = (x + side / 2.0, y + side / 2.0);
                face.landmarks = Some([
                    [cx - 0.2 * side, cy - 0.1 * side],
                    [cx + 0.2 * side, cy - 0.12 * side],
                    [cx, cy + 0.05 * side],
                    [cx - 0.15 * side, cy + 0.25 * side],
                    [cx + 0.15 * side, cy + 0.24 * side],
                ]);
            }
            face
        })
        .collect()
}

fn check(spec: &Spec, half: bool) {
    let mut model = Model::from_bytes(&model_file(spec, 7)).unwrap();
    if half {
        model.store_late_weights_as_f16();
    }
    let (w, h) = (160usize, 120usize);
    let pixels = random_pixels(w * h * 3, 11);
    let view = ImageView::packed(&pixels, w, h, PixelFormat::Rgb8).unwrap();
    let all = faces(MAX_BATCH + 3, w as f32, h as f32);
    for threads in [1, 2] {
        let config = SessionConfig {
            max_width: w,
            max_height: h,
            threads,
        };
        let mut session = Session::new(&model, config);
        let alone: Vec<Prediction> = all
            .iter()
            .map(|face| session.classify_face(&view, face).unwrap())
            .collect();
        session.classify_batch(&view, &[], &mut []).unwrap();
        for count in [1, 2, 3, MAX_BATCH, MAX_BATCH + 3] {
            let mut out = vec![Prediction::EMPTY; count];
            session
                .classify_batch(&view, &all[..count], &mut out)
                .unwrap();
            for (i, (batched, single)) in out.iter().zip(&alone).enumerate() {
                assert_eq!(
                    batched, single,
                    "{} {} {} px, half {half}, {threads} threads: face {i} of {count} differs",
                    spec.arch, spec.stem, spec.input_size
                );
            }
        }
    }
}

#[test]
fn batched_predictions_equal_one_face_at_a_time() {
    // 48 px imagenet stem: the shipped configuration (layer3 and layer4 batched).
    // 8 px small stem: layer3 and layer4 on 2x2 and 1x1 maps. 112 px: nothing narrow, so
    // batches run face by face. resnet50 at 8 px: bottleneck blocks (conv3) batched.
    let specs = [
        ("resnet18", "imagenet", 48),
        ("resnet18", "small", 8),
        ("resnet18", "imagenet", 112),
        ("resnet50", "small", 8),
    ];
    for (arch, stem, input_size) in specs {
        let spec = Spec {
            arch,
            stem,
            input_size,
            classes: 7,
        };
        check(&spec, false);
        if input_size == 48 {
            check(&spec, true);
        }
    }
}

/// A bad face anywhere in a batch fails the whole call with that face's error, whichever
/// thread took it, and leaves the session working: the next batch is still right.
#[test]
fn a_bad_face_fails_the_batch_and_the_session_recovers() {
    let spec = Spec {
        arch: "resnet18",
        stem: "imagenet",
        input_size: 48,
        classes: 7,
    };
    let model = Model::from_bytes(&model_file(&spec, 7)).unwrap();
    let (w, h) = (160usize, 120usize);
    let pixels = random_pixels(w * h * 3, 5);
    let view = ImageView::packed(&pixels, w, h, PixelFormat::Rgb8).unwrap();
    let good = faces(4, w as f32, h as f32);
    for threads in [1, 2] {
        let mut session = Session::new(
            &model,
            SessionConfig {
                max_width: w,
                max_height: h,
                threads,
            },
        );
        let alone: Vec<Prediction> = good
            .iter()
            .map(|face| session.classify_face(&view, face).unwrap())
            .collect();
        for bad_at in 0..good.len() {
            let mut faces = good.clone();
            faces[bad_at].bbox = [10.0, 10.0, 0.0, 20.0];
            faces[bad_at].landmarks = None;
            let mut out = vec![Prediction::EMPTY; faces.len()];
            let result = session.classify_batch(&view, &faces, &mut out);
            assert!(
                matches!(result, Err(ClassifyError::BadFace("box has no area"))),
                "{threads} threads, bad face {bad_at}: {result:?}"
            );
            session.classify_batch(&view, &good, &mut out).unwrap();
            assert_eq!(out, alone, "{threads} threads, after bad face {bad_at}");
        }
    }
}
