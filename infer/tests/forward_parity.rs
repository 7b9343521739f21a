//! The packed, BN-folded forward pass against a naive reference on random-weight ResNets of
//! every architecture and stem, plus loading checks.

mod common;

use common::{model_file, random_input, random_weights, reference_forward, Spec};
use face2exp_infer::{Arch, Model, Session, SessionConfig, Stem};

fn check(spec: Spec, threads: usize) {
    let weights = random_weights(&spec, 7);
    let bytes = common::to_safetensors(&weights, common::metadata(&spec));
    let model = Model::from_bytes(&bytes).unwrap();
    assert_eq!(model.input_size(), spec.input_size);
    assert_eq!(model.num_classes(), spec.classes);
    let mut session = Session::new(
        &model,
        SessionConfig {
            threads,
            ..SessionConfig::default()
        },
    );
    // Two inputs for the cheap networks; the naive reference is slow for the deep ones.
    let inputs = if spec.arch == "resnet18" { 2 } else { 1 };
    for seed in 0..inputs {
        let input = random_input(spec.input_size, seed);
        let want = reference_forward(&spec, &weights, &input);
        let got = session.forward_chw(&input).unwrap();
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * scale,
                "{} {} {}px threads {threads}: {got:?} vs {want:?}",
                spec.arch,
                spec.stem,
                spec.input_size
            );
        }
    }
}

#[test]
fn resnet18_both_stems_match_reference() {
    check(
        Spec {
            arch: "resnet18",
            stem: "imagenet",
            input_size: 32,
            classes: 7,
        },
        1,
    );
    check(
        Spec {
            arch: "resnet18",
            stem: "small",
            input_size: 12,
            classes: 8,
        },
        1,
    );
}

#[test]
fn resnet34_both_stems_match_reference() {
    check(
        Spec {
            arch: "resnet34",
            stem: "imagenet",
            input_size: 36,
            classes: 7,
        },
        1,
    );
    check(
        Spec {
            arch: "resnet34",
            stem: "small",
            input_size: 8,
            classes: 7,
        },
        1,
    );
}

#[test]
fn resnet50_both_stems_match_reference() {
    check(
        Spec {
            arch: "resnet50",
            stem: "imagenet",
            input_size: 32,
            classes: 7,
        },
        1,
    );
    check(
        Spec {
            arch: "resnet50",
            stem: "small",
            input_size: 8,
            classes: 7,
        },
        1,
    );
}

#[test]
fn two_threads_match_reference() {
    check(
        Spec {
            arch: "resnet18",
            stem: "small",
            input_size: 16,
            classes: 7,
        },
        2,
    );
    check(
        Spec {
            arch: "resnet18",
            stem: "imagenet",
            input_size: 32,
            classes: 7,
        },
        3,
    );
}

#[test]
fn metadata_is_exposed() {
    let spec = Spec {
        arch: "resnet50",
        stem: "small",
        input_size: 8,
        classes: 7,
    };
    let model = Model::from_bytes(&model_file(&spec, 1)).unwrap();
    assert_eq!(model.arch(), Arch::Resnet50);
    assert_eq!(model.stem(), Stem::Small);
    assert_eq!(model.class_names()[6], "anger");
    assert_eq!(model.mean(), [0.485, 0.456, 0.406]);
    assert_eq!(model.std(), [0.229, 0.224, 0.225]);
    assert!(model.macs() > 0);
}

#[test]
fn half_precision_weights_load() {
    let spec = Spec {
        arch: "resnet18",
        stem: "small",
        input_size: 8,
        classes: 7,
    };
    let weights = random_weights(&spec, 3);
    // Re-encode every tensor as BF16 (exactly representable after truncation).
    let mut truncated = weights.clone();
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(name, (shape, vals))| {
            let bytes = vals
                .iter()
                .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
                .collect();
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    for (_, vals) in truncated.values_mut() {
        vals.iter_mut()
            .for_each(|v| *v = f32::from_bits(v.to_bits() & 0xffff_0000));
    }
    let views = encoded.iter().map(|(n, s, d)| {
        (
            n.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), d).unwrap(),
        )
    });
    let bytes = safetensors::tensor::serialize(views, Some(common::metadata(&spec))).unwrap();
    let model = Model::from_bytes(&bytes).unwrap();
    let mut session = Session::new(&model, SessionConfig::default());
    let input = random_input(8, 0);
    let want = reference_forward(&spec, &truncated, &input);
    let got = session.forward_chw(&input).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}
