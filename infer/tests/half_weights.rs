//! `Model::store_late_weights_as_f16` and `_as_int8`: which layers they convert, and how far the
//! outputs move.

mod common;

use common::{model_file, random_input, Spec};
use face2exp_infer::{ImageView, Model, PixelFormat, Session, SessionConfig};
use std::path::Path;

fn session(model: &Model) -> Session<'_> {
    Session::new(
        model,
        SessionConfig {
            max_width: 320,
            max_height: 320,
            threads: 1,
        },
    )
}

/// Converts the late layers of a random 48 px ResNet-18 with `convert`, checks which weights
/// it covered and that the logits move, by at most `tolerance` of the largest logit.
fn check_late_layers(convert: fn(&mut Model) -> usize, tolerance: f32) {
    let spec = Spec {
        arch: "resnet18",
        stem: "imagenet",
        input_size: 48,
        classes: 7,
    };
    let bytes = model_file(&spec, 11);
    let single = Model::from_bytes(&bytes).unwrap();
    let mut converted = Model::from_bytes(&bytes).unwrap();
    // At 48 px layer3 has 3x3 outputs and layer4 2x2: both stages run narrow, nothing earlier.
    let layer3 = 128 * 256 * 9 + 256 * 256 * 9 * 3 + 128 * 256;
    let layer4 = 256 * 512 * 9 + 512 * 512 * 9 * 3 + 256 * 512;
    assert_eq!(convert(&mut converted), layer3 + layer4);
    // Idempotent: nothing left to convert.
    assert_eq!(convert(&mut converted), layer3 + layer4);
    for seed in 0..5 {
        let input = random_input(48, seed);
        let want = session(&single).forward_chw(&input).unwrap().to_vec();
        let got = session(&converted).forward_chw(&input).unwrap().to_vec();
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (w, g) in want.iter().zip(&got) {
            assert!(
                (w - g).abs() <= tolerance * scale.max(1.0),
                "{want:?} vs {got:?}"
            );
        }
        assert_ne!(
            want, got,
            "the conversion changed nothing: were any converted?"
        );
    }
}

#[test]
fn late_layers_of_resnet18_at_48px_go_half_and_logits_barely_move() {
    check_late_layers(Model::store_late_weights_as_f16, 2e-3);
}

#[test]
fn late_layers_go_int8_and_logits_move_within_the_quantisation_step() {
    check_late_layers(Model::store_late_weights_as_int8, 3e-2);
}

#[test]
fn shipped_network_keeps_its_predictions_on_the_fixture_faces() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let single = Model::load(root.join("weights/face2exp-base.safetensors")).unwrap();
    let mut half = single.clone();
    assert!(half.store_late_weights_as_f16() > 0);
    let mut int8 = single.clone();
    assert!(int8.store_late_weights_as_int8() > 0);
    for name in ["obama_241x301.png", "two_portraits.png"] {
        let image = image::open(root.join("tests/fixtures").join(name))
            .unwrap()
            .to_rgb8();
        let (w, h) = image.dimensions();
        let view =
            ImageView::packed(image.as_raw(), w as usize, h as usize, PixelFormat::Rgb8).unwrap();
        let config = SessionConfig {
            max_width: w as usize,
            max_height: h as usize,
            threads: 1,
        };
        let want = Session::new(&single, config).classify(&view).unwrap();
        // f16 moves probabilities by ~1e-4, int8 by a few 1e-3 (see the FER2013 val test).
        for (model, tolerance) in [(&half, 2e-3), (&int8, 2e-2)] {
            let got = Session::new(model, config).classify(&view).unwrap();
            assert_eq!(want.class, got.class, "{name}");
            for (p, q) in want.probs.iter().zip(&got.probs) {
                assert!(
                    (p - q).abs() < tolerance,
                    "{name}: {:?} vs {:?}",
                    want.probs,
                    got.probs
                );
            }
        }
    }
}

/// Opt-in (`FACE2EXP_DATA`): the shipped network on all of FER2013 val, single precision
/// against half-precision and int8 late layers: prediction agreement and accuracy of each.
/// Also single precision with flip averaging (`Session::set_flip_average`), which must be at
/// least as accurate as without (the demo turns it on for image files because it is).
///
///     FACE2EXP_DATA=/work/shared/data cargo test --release -p face2exp-infer --test half_weights -- --nocapture
#[test]
fn half_and_int8_weights_agree_on_fer2013_val() {
    let Some(data) = std::env::var_os("FACE2EXP_DATA") else {
        println!(
            "skipped: set FACE2EXP_DATA to the data folder holding fer2013/val to run this test"
        );
        return;
    };
    let val = Path::new(&data).join("fer2013/val");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let single = Model::load(root.join("weights/face2exp-base.safetensors")).unwrap();
    let (mut half, mut int8) = (single.clone(), single.clone());
    half.store_late_weights_as_f16();
    int8.store_late_weights_as_int8();
    let config = SessionConfig {
        max_width: 64,
        max_height: 64,
        threads: 1,
    };
    let models = [&single, &half, &int8, &single];
    let mut sessions: Vec<Session> = models.iter().map(|m| Session::new(m, config)).collect();
    sessions[3].set_flip_average(true);
    let (mut total, mut agree, mut correct) = (0usize, [0usize; 4], [0usize; 4]);
    let mut max_prob_change = [0.0f32; 4];
    for entry in std::fs::read_dir(&val).unwrap() {
        let dir = entry.unwrap().path();
        let folder = dir.file_name().unwrap().to_string_lossy().into_owned();
        // FER2013's folder for anger is "angry".
        let name = if folder == "angry" {
            "anger"
        } else {
            folder.as_str()
        };
        let label = single.class_names().iter().position(|c| c == name).unwrap();
        for file in std::fs::read_dir(&dir).unwrap() {
            let image = image::open(file.unwrap().path()).unwrap().to_rgb8();
            let (w, h) = image.dimensions();
            let view = ImageView::packed(image.as_raw(), w as usize, h as usize, PixelFormat::Rgb8)
                .unwrap();
            let p: Vec<_> = sessions
                .iter_mut()
                .map(|s| s.classify(&view).unwrap())
                .collect();
            total += 1;
            for i in 0..4 {
                agree[i] += usize::from(p[i].class == p[0].class);
                correct[i] += usize::from(p[i].class == label);
                for (x, y) in p[0].probs.iter().zip(&p[i].probs) {
                    max_prob_change[i] = max_prob_change[i].max((x - y).abs());
                }
            }
        }
    }
    let pct = |n: usize| 100.0 * n as f64 / total as f64;
    println!("FER2013 val, {total} images:");
    let names = [
        "single",
        "f16 late layers",
        "int8 late layers",
        "single, flip averaged",
    ];
    for (i, name) in names.iter().enumerate() {
        println!(
            "  {name}: accuracy {:.2}%, agrees with single on {:.2}%, largest probability \
             change {:.2e}",
            pct(correct[i]),
            pct(agree[i]),
            max_prob_change[i]
        );
    }
    assert!(
        total > 3000,
        "FER2013 val should have 3,589 images, found {total}"
    );
    for i in 1..3 {
        assert!(pct(agree[i]) >= 99.0, "agreement {:.2}%", pct(agree[i]));
        assert!((pct(correct[0]) - pct(correct[i])).abs() <= 0.5);
    }
    assert!(
        correct[3] >= correct[0],
        "flip averaging lost accuracy: {:.2}% against {:.2}%",
        pct(correct[3]),
        pct(correct[0])
    );
}
