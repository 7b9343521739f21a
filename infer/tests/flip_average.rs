//! `Session::set_flip_average`: every face is classified as itself and as its mirror image, and
//! the two probability vectors are averaged. Checked against doing it by hand through
//! `preprocess` and `forward_chw`, on a network whose late layers batch (48 px, the shipped
//! configuration: both views share one batch) and one whose do not (112 px: the views run one
//! after the other), and `classify_batch` against `classify_face`.

mod common;

use common::{model_file, random_pixels, Spec};
use face2exp_infer::{
    FaceRegion, ImageView, Model, PixelFormat, Prediction, Session, SessionConfig, MAX_BATCH,
};

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

fn mirrored(input: &[f32], side: usize) -> Vec<f32> {
    input
        .chunks_exact(side)
        .flat_map(|row| row.iter().rev().copied())
        .collect()
}

fn faces(count: usize) -> Vec<FaceRegion> {
    (0..count)
        .map(|i| {
            let x = 4.0 + 9.0 * i as f32;
            let mut face = FaceRegion::from_bbox([x, 6.0 + 3.0 * i as f32, 50.0, 60.0]);
            if i % 2 == 0 {
                face.landmarks = Some([
                    [x + 15.0, 25.0],
                    [x + 35.0, 24.0],
                    [x + 26.0, 38.0],
                    [x + 17.0, 50.0],
                    [x + 33.0, 51.0],
                ]);
            }
            face
        })
        .collect()
}

fn check(input_size: usize) {
    let spec = Spec {
        arch: "resnet18",
        stem: "imagenet",
        input_size,
        classes: 7,
    };
    let model = Model::from_bytes(&model_file(&spec, 3)).unwrap();
    let (w, h) = (160usize, 120usize);
    let pixels = random_pixels(w * h * 3, 21);
    let view = ImageView::packed(&pixels, w, h, PixelFormat::Rgb8).unwrap();
    let all = faces(MAX_BATCH + 3);
    for threads in [1, 2] {
        let config = SessionConfig {
            max_width: w,
            max_height: h,
            threads,
        };
        let mut session = Session::new(&model, config);
        assert!(!session.flip_average(), "off by default");
        let plain = session.classify_face(&view, &all[0]).unwrap();
        session.set_flip_average(true);
        let mut flipped = Vec::new();
        for (i, face) in all.iter().enumerate() {
            let got = session.classify_face(&view, face).unwrap();
            // By hand: the same preprocessed input and its mirror, one at a time.
            let input = session.preprocess(&view, Some(face)).unwrap().to_vec();
            let a = softmax(session.forward_chw(&input).unwrap());
            let b = softmax(session.forward_chw(&mirrored(&input, input_size)).unwrap());
            let want: Vec<f32> = a.iter().zip(&b).map(|(a, b)| 0.5 * (a + b)).collect();
            for (k, (g, w)) in got.probs().iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() < 1e-6,
                    "{input_size} px, {threads} threads, face {i}, class {k}: {g} vs {w}"
                );
            }
            let best = (0..want.len())
                .max_by(|&x, &y| want[x].total_cmp(&want[y]))
                .unwrap();
            assert_eq!(got.class, best, "{input_size} px, face {i}");
            assert_eq!(got.confidence, got.probs[got.class]);
            flipped.push(got);
        }
        // Random pixels are not mirror-symmetric, so the average must differ from one view.
        assert_ne!(
            plain.probs, flipped[0].probs,
            "{input_size} px: flip changed nothing"
        );
        for count in [1, 2, 3, MAX_BATCH / 2 + 1, MAX_BATCH + 3] {
            let mut out = vec![Prediction::EMPTY; count];
            session
                .classify_batch(&view, &all[..count], &mut out)
                .unwrap();
            assert_eq!(
                out,
                flipped[..count],
                "{input_size} px, {threads} threads, {count} faces: batch differs from one by one"
            );
        }
        session.set_flip_average(false);
        assert_eq!(session.classify_face(&view, &all[0]).unwrap(), plain);
    }
}

#[test]
fn flip_average_is_the_mean_of_the_face_and_its_mirror() {
    check(48);
    check(112);
}
