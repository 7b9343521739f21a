//! The circuit-feedback coefficient f of Meta-Face2Exp, checked against its definition:
//! - `exact` equals eta_A times the finite-difference derivative of A's labeled loss along the
//!   update A applied;
//! - `taylor` (labeled loss before minus after) agrees with `exact` to first order as the
//!   learning rate shrinks;
//! - `official` keeps a BatchNorm offset that does not vanish with the learning rate, because
//!   its "before" loss is taken from a forward over labeled + strong images together;
//! - on networks without batch statistics (BatchNorm frozen to its running statistics, so
//!   each image's output depends on that image alone) `taylor` still agrees with `exact` to
//!   first order, and the official form's offset is gone: it equals `taylor`.

use candle_core::{Device, Tensor};
use face2exp_trainer::data::{LabeledBatch, UnlabeledBatch};
use face2exp_trainer::model::{Arch, BnMode, ResNetConfig, Stem};
use face2exp_trainer::train::config::MetaConfig;
use face2exp_trainer::train::losses::cross_entropy;
use face2exp_trainer::train::meta::{step, MetaState, StepRates};
use face2exp_trainer::train::network::Network;
use face2exp_trainer::train::optim::SgdConfig;
use face2exp_trainer::train::schedule::ScheduleConfig;
use face2exp_trainer::train::{Feedback, JudgeStatistics};
use rand::{Rng, SeedableRng};

const SIZE: usize = 32;

fn batches() -> (LabeledBatch, UnlabeledBatch) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut images = |n: usize, shift: f32| -> Vec<f32> {
        (0..n * 3 * SIZE * SIZE)
            .map(|_| rng.gen_range(-1.0f32..1.0) + shift)
            .collect()
    };
    let labeled = LabeledBatch {
        images: images(6, 0.0),
        labels: vec![0, 1, 2, 3, 4, 5],
        n: 6,
        size: SIZE,
    };
    // The unlabeled images come from a shifted distribution (FR faces differ from FER crops),
    // which is what makes the official form's BatchNorm statistics differ.
    let unlabeled = UnlabeledBatch {
        weak: images(6, 0.5),
        strong: images(6, 0.8),
        n: 6,
        size: SIZE,
        known_labels: None,
    };
    (labeled, unlabeled)
}

fn network(role: &'static str, seed: u64) -> Network {
    let config = ResNetConfig {
        arch: Arch::Resnet18,
        stem: Stem::Imagenet,
        num_classes: 7,
        input_size: SIZE,
    };
    // Plain SGD: the applied update direction is exactly A's pseudo-label gradient g_u.
    let sgd = SgdConfig {
        momentum: 0.0,
        nesterov: false,
        weight_decay: 0.0,
    };
    Network::new(
        role,
        &config,
        None,
        &Device::Cpu,
        sgd,
        ScheduleConfig::default(),
        None,
        seed,
    )
    .unwrap()
}

/// Gives `net` the running statistics of a trained network on these batches (a few
/// train-mode passes over labeled + unlabeled images, momentum 0.1), then freezes them: from
/// here on every BatchNorm is a fixed per-channel affine map plus its learned weight and bias,
/// i.e. the network has no batch statistics.
fn freeze_batch_norm(net: &mut Network) {
    let (labeled, unlabeled) = batches();
    let x = Tensor::cat(
        &[
            labeled.to_tensor(&Device::Cpu).unwrap(),
            unlabeled.strong_tensor(&Device::Cpu).unwrap(),
        ],
        0,
    )
    .unwrap();
    for _ in 0..40 {
        net.model.forward_with(&x, BnMode::Train).unwrap();
    }
    net.model.freeze_batch_norm(true);
}

/// Runs one meta step from a fixed start and returns (f, A before, A after).
fn feedback(kind: Feedback, lr_adaptation: f64) -> (f64, Vec<Tensor>, Network) {
    feedback_on(kind, lr_adaptation, false)
}

/// As [`feedback`], on networks with frozen BatchNorm when `frozen`.
fn feedback_on(kind: Feedback, lr_adaptation: f64, frozen: bool) -> (f64, Vec<Tensor>, Network) {
    feedback_judged(kind, lr_adaptation, frozen, JudgeStatistics::Batch)
}

/// As [`feedback_on`], with A's labeled loss taken with `judge`'s BatchNorm statistics.
fn feedback_judged(
    kind: Feedback,
    lr_adaptation: f64,
    frozen: bool,
    judge: JudgeStatistics,
) -> (f64, Vec<Tensor>, Network) {
    let (labeled, unlabeled) = batches();
    let mut base = network("base", 1);
    let mut adaptation = network("adaptation", 2);
    if frozen {
        freeze_batch_norm(&mut base);
        freeze_batch_norm(&mut adaptation);
    }
    let before: Vec<Tensor> = adaptation
        .optimizer
        .params()
        .iter()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    let cfg = MetaConfig {
        feedback: kind,
        judge_statistics: judge,
        ..MetaConfig::default()
    };
    let rates = StepRates {
        lr_base: 0.01,
        lr_adaptation,
        step: 0,
    };
    let record = step(
        &mut base,
        &mut adaptation,
        &labeled,
        &unlabeled,
        &rates,
        &cfg,
        0.0,
        &mut MetaState::default(),
        &Device::Cpu,
    )
    .unwrap();
    (record.0["f_raw"], before, adaptation)
}

fn labeled_loss_with(net: &Network, labeled: &LabeledBatch, mode: BnMode) -> f64 {
    let x = labeled.to_tensor(&Device::Cpu).unwrap();
    let y = labeled.labels_tensor(&Device::Cpu).unwrap();
    let logits = net.model.forward_with(&x, mode).unwrap();
    cross_entropy(&logits, &y, 0.0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

#[test]
fn exact_feedback_matches_finite_differences_along_the_applied_update() {
    finite_difference_check(JudgeStatistics::Batch);
}

#[test]
fn exact_feedback_judged_with_running_statistics_matches_their_finite_differences() {
    finite_difference_check(JudgeStatistics::Running);
    // Another judge, another f of the same step.
    let (batch, ..) = feedback_judged(Feedback::Exact, 0.05, false, JudgeStatistics::Batch);
    let (running, ..) = feedback_judged(Feedback::Exact, 0.05, false, JudgeStatistics::Running);
    assert!(
        (batch - running).abs() > 0.05 * batch.abs(),
        "batch {batch}, running {running}"
    );
}

/// The exact f against a central difference of A's labeled loss (with `judge`'s statistics)
/// along the update A applied.
fn finite_difference_check(judge: JudgeStatistics) {
    let lr = 0.05;
    let (f_exact, before, adaptation) = feedback_judged(Feedback::Exact, lr, false, judge);
    let (labeled, _) = batches();
    let params: Vec<_> = adaptation.optimizer.params().to_vec();
    let after: Vec<Tensor> = params
        .iter()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    // Applied update: theta' = theta - lr * d  =>  d = (theta - theta') / lr.
    let directions: Vec<Tensor> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| ((b - a).unwrap() / lr).unwrap())
        .collect();
    // The loss of a freshly initialised ResNet on random inputs is strongly curved along d
    // (ReLU and max-pool kinks, BatchNorm over few values), so the difference quotient
    // converges only as the probe shrinks; 3e-6 * d is small enough and still far above f32
    // rounding of the loss.
    let h = 3e-6;
    let mut losses = [0.0; 2];
    for (slot, sign) in [(0, 1.0), (1, -1.0)] {
        for ((_, var), (theta, d)) in params.iter().zip(after.iter().zip(&directions)) {
            var.set(&(theta + (d * (sign * h)).unwrap()).unwrap())
                .unwrap();
        }
        losses[slot] = labeled_loss_with(&adaptation, &labeled, judge.bn_mode());
    }
    let f_fd = lr * (losses[0] - losses[1]) / (2.0 * h);
    assert!(f_exact.abs() > 1e-4, "f is too small to test: {f_exact}");
    let rel = (f_exact - f_fd).abs() / f_fd.abs();
    assert!(
        rel < 0.03,
        "{judge:?}: exact f {f_exact} vs finite differences {f_fd} (rel {rel})"
    );
}

#[test]
fn taylor_agrees_with_exact_to_first_order() {
    // At init the labeled loss is strongly curved along A's update, so "small" means an lr
    // whose step changes the loss by well under a percent; there the two must agree.
    for lr in [1e-5, 3e-6] {
        let (exact, ..) = feedback(Feedback::Exact, lr);
        let (taylor, ..) = feedback(Feedback::Taylor, lr);
        let rel = (exact - taylor).abs() / exact.abs();
        assert!(
            rel < 0.05,
            "lr {lr}: exact {exact}, taylor {taylor} (rel {rel})"
        );
    }
    // At a large lr the second-order terms dominate and the two differ: the test can tell.
    let (exact, ..) = feedback(Feedback::Exact, 1e-2);
    let (taylor, ..) = feedback(Feedback::Taylor, 1e-2);
    assert!(
        (exact - taylor).abs() / exact.abs() > 0.2,
        "exact {exact}, taylor {taylor}"
    );
}

#[test]
fn official_feedback_keeps_a_batchnorm_offset_as_lr_vanishes() {
    let mut offsets = Vec::new();
    for lr in [1e-6, 1e-7] {
        let (taylor, ..) = feedback(Feedback::Taylor, lr);
        let (official, ..) = feedback(Feedback::Official, lr);
        println!("lr {lr}: taylor f = {taylor:.3e}, official f = {official:.3e}");
        // Taylor's f is O(lr) (about 300 lr here) ...
        assert!(
            taylor.abs() < 1e-3,
            "taylor f should vanish with lr: {taylor}"
        );
        offsets.push(official);
    }
    // ... the official form's is dominated by the difference between A's labeled loss under
    // cat(x_l, x_us) batch statistics and under x_l alone, which does not depend on lr.
    assert!(
        offsets[1].abs() > 1e-2,
        "official f has no BatchNorm offset: {offsets:?}"
    );
    assert!(
        (offsets[0] - offsets[1]).abs() < 0.1 * offsets[1].abs(),
        "{offsets:?}"
    );
}

#[test]
fn without_batch_statistics_taylor_matches_exact_and_official_loses_its_offset() {
    for lr in [1e-5, 3e-6] {
        let (exact, ..) = feedback_on(Feedback::Exact, lr, true);
        let (taylor, ..) = feedback_on(Feedback::Taylor, lr, true);
        let (official, ..) = feedback_on(Feedback::Official, lr, true);
        println!("lr {lr}: exact {exact:.4e}, taylor {taylor:.4e}, official {official:.4e}");
        assert!(exact.abs() > 1e-7, "f is too small to test: {exact}");
        let rel = (exact - taylor).abs() / exact.abs();
        assert!(
            rel < 0.05,
            "lr {lr}: exact {exact}, taylor {taylor} (rel {rel})"
        );
        // Labeled images give the same logits alone or next to strong views, so the
        // official "before" loss is taylor's: what is left is float rounding.
        assert!(
            (official - taylor).abs() < 0.02 * taylor.abs(),
            "lr {lr}: official {official}, taylor {taylor}"
        );
    }
    // With batch statistics the same two forms differ by about 0.28 at lr 1e-6
    // (official_feedback_keeps_a_batchnorm_offset_as_lr_vanishes).
}
