//! End-to-end training on generated data: a run killed after a checkpoint and resumed ends
//! with exactly the weights of an uninterrupted run, for SL and Meta-Face2Exp; the feedback
//! changes B; export and eval read what training wrote.

mod common;

use common::tiny_config as config;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use face2exp_trainer::train::checkpoint;
use face2exp_trainer::train::meta::MetaState;
use face2exp_trainer::train::{train, Method, RunOptions, TrainConfig};

fn dataset() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::write_imagefolder(&dir.path().join("train"), 4, 40);
    common::write_unlabeled(&dir.path().join("faces"), 12, 64);
    dir
}

fn options(out: &Path, resume: bool, stop_after: Option<u64>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        resume,
        stop_after,
        progress: false,
    }
}

fn checkpoint_tensors(run: &Path) -> HashMap<String, Tensor> {
    checkpoint::load(&run.join("checkpoint.safetensors"), &Device::Cpu)
        .unwrap()
        .0
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_resume_is_bit_exact(method: Method, configure: impl FnOnce(&mut TrainConfig)) {
    let data = dataset();
    let runs = tempfile::tempdir().unwrap();
    let straight = runs.path().join("straight");
    let killed = runs.path().join("killed");
    let mut cfg = config(data.path(), method);
    configure(&mut cfg);
    train(cfg.clone(), &options(&straight, false, None)).unwrap();
    // The run folder records the sampler the method chose, so a resume draws the same batches.
    let stored = TrainConfig::from_toml_file(&straight.join("config.toml")).unwrap();
    assert_eq!(stored.balanced_sampler, Some(method == Method::Meta));
    // "Kill" after step 4: the last checkpoint is step 3, so step 4 is redone on resume.
    train(cfg.clone(), &options(&killed, false, Some(4))).unwrap();
    let err = train(cfg.clone(), &options(&killed, false, None)).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let summary = train(TrainConfig::default(), &options(&killed, true, None)).unwrap();
    assert_eq!(summary.steps, 6);
    let a = checkpoint_tensors(&straight);
    let b = checkpoint_tensors(&killed);
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert_eq!(
            max_abs_diff(t, &b[name]),
            0.0,
            "{method:?}: `{name}` differs after resume"
        );
    }
    // The resumed log reads as one run: one train record per step, no duplicates.
    let records =
        face2exp_trainer::train::metrics_log::read_records(&killed.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = records
        .iter()
        .filter(|r| r["kind"] == "train")
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn sl_resume_is_bit_exact() {
    assert_resume_is_bit_exact(Method::Sl, |_| {});
}

#[test]
fn meta_resume_is_bit_exact() {
    assert_resume_is_bit_exact(Method::Meta, |_| {});
}

#[test]
fn meta_resume_carries_the_run_bounds_sum() {
    // A budget small enough to cut f on most steps, and f weighted enough that the cut moves
    // B's weights: a resume that restarted the sum at 0 would let step 4 through uncut.
    assert_resume_is_bit_exact(Method::Meta, |cfg| {
        cfg.meta.feedback_run_budget = Some(1e-3);
        cfg.meta.feedback_run_decay = 0.99;
        cfg.meta.feedback_scale = 1e3;
    });
}

#[test]
fn meta_resume_carries_the_pseudo_marginal() {
    // A fast-moving mean: a resume that restarted it from step 4's batch alone would give
    // that step other consistency targets and pseudo labels.
    assert_resume_is_bit_exact(Method::Meta, |cfg| {
        cfg.meta.distribution_alignment = Some(0.5);
    });
}

#[test]
fn feedback_changes_the_base_network_and_exports_evaluate() {
    let data = dataset();
    let runs = tempfile::tempdir().unwrap();
    let with_f = runs.path().join("with_f");
    let without_f = runs.path().join("without_f");
    let mut cfg = config(data.path(), Method::Meta);
    cfg.steps = 3;
    cfg.eval_every = 3;
    train(cfg.clone(), &options(&with_f, false, None)).unwrap();
    cfg.meta.zero_feedback = true;
    train(cfg, &options(&without_f, false, None)).unwrap();

    let records =
        face2exp_trainer::train::metrics_log::read_records(&with_f.join("metrics.jsonl")).unwrap();
    let fs: Vec<f64> = records
        .iter()
        .filter_map(|r| r.get("f_raw")?.as_f64())
        .collect();
    assert_eq!(fs.len(), 3);
    assert!(fs.iter().any(|f| f.abs() > 1e-6), "f never moved: {fs:?}");
    let a = checkpoint_tensors(&with_f);
    let b = checkpoint_tensors(&without_f);
    let differs = a
        .iter()
        .filter(|(n, _)| n.starts_with("base.") && !n.contains("momentum"))
        .any(|(n, t)| max_abs_diff(t, &b[n]) > 0.0);
    assert!(differs, "B is identical with and without feedback");
    // A learns from B's pseudo labels only, so with identical B inputs at step 1 the
    // adaptation networks agree after the first step but B's feedback then separates them.

    // Both networks export, and the export evaluates with the JSON keys the CLI promises.
    for net in ["base", "adaptation"] {
        let file = runs.path().join(format!("{net}.safetensors"));
        face2exp_trainer::commands::export_run(&with_f, net, false, &file).unwrap();
        let spec = format!("imagefolder:{}", data.path().join("train").display())
            .parse()
            .unwrap();
        let metrics = face2exp_trainer::commands::eval_weights(
            &file,
            &spec,
            "cpu",
            16,
            face2exp_trainer::eval::Tta::None,
        )
        .unwrap();
        assert_eq!(metrics.n, 28);
        let json = metrics.to_json();
        for key in [
            "n",
            "overall_acc",
            "mean_class_acc",
            "std_class_acc",
            "per_class_acc",
            "confusion",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
    }
    assert!(with_f.join("best_base.safetensors").exists());
    assert!(with_f.join("curves.png").exists());
}

#[test]
fn meta_draws_class_balanced_batches_unless_told_not_to() {
    // The two samplers draw different first batches from the same seed, so L_s at step 1
    // says which one a run used: the default must match `Some(true)`, not `Some(false)`.
    let first_loss_s = |balanced_sampler: Option<bool>| {
        meta_train_records(1, |cfg| cfg.balanced_sampler = balanced_sampler)[0]["loss_s"]
            .as_f64()
            .expect("a train record with loss_s")
    };
    let default = first_loss_s(None);
    assert_eq!(default, first_loss_s(Some(true)));
    assert_ne!(default, first_loss_s(Some(false)));
}

/// The train records of a Meta run of `steps` steps on fresh data, `configure` applied.
fn meta_train_records(
    steps: u64,
    configure: impl FnOnce(&mut TrainConfig),
) -> Vec<serde_json::Value> {
    let data = dataset();
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("meta");
    let mut cfg = config(data.path(), Method::Meta);
    cfg.steps = steps;
    configure(&mut cfg);
    train(cfg, &options(&run, false, None)).unwrap();
    let records =
        face2exp_trainer::train::metrics_log::read_records(&run.join("metrics.jsonl")).unwrap();
    let train: Vec<_> = records
        .into_iter()
        .filter(|r| r["kind"] == "train")
        .collect();
    assert_eq!(train.len() as u64, steps);
    train
}

/// The train records of a 3-step Meta run with baseline decay 0.5 and `configure` applied.
fn three_meta_steps(configure: impl FnOnce(&mut TrainConfig)) -> Vec<serde_json::Value> {
    let train = meta_train_records(3, |cfg| {
        cfg.meta.feedback_baseline_decay = Some(0.5);
        configure(cfg);
    });
    for r in &train {
        let judged = r["loss_judge"]
            .as_f64()
            .expect("A's judged labeled loss is logged");
        assert!(judged.is_finite() && judged > 0.0, "loss_judge {judged}");
    }
    train
}

/// Asserts each record's f is `expected(updates, f_raw)`, updates counting from 1.
fn assert_f(records: &[serde_json::Value], mut expected: impl FnMut(u64, f64) -> f64) {
    for (updates, r) in (1..).zip(records) {
        let want = expected(updates, r["f_raw"].as_f64().unwrap());
        let f = r["f"].as_f64().unwrap();
        assert!(
            (f - want).abs() <= 1e-12 * want.abs().max(1e-12),
            "step {updates}: f {f}, expected {want}"
        );
    }
}

#[test]
fn feedback_scale_multiplies_the_centred_f() {
    let records = three_meta_steps(|cfg| cfg.meta.feedback_scale = 3.0);
    // The baseline itself is unit-tested in meta.rs; here only the factor's place is checked.
    let mut state = MetaState::default();
    assert_f(&records, |_, raw| {
        3.0 * state.subtract_feedback_baseline(0.5, raw)
    });
}

#[test]
fn the_debiased_baseline_takes_the_first_f_as_its_mean() {
    let records = three_meta_steps(|cfg| {
        cfg.meta.feedback_baseline_debias = true;
        cfg.meta.feedback_scale = 2.0;
    });
    // Without the correction the first f would be half the raw f (decay 0.5 from 0).
    assert_eq!(records[0]["f"].as_f64().unwrap(), 0.0);
    assert_ne!(records[0]["f_raw"].as_f64().unwrap(), 0.0);
    let mut state = MetaState::default();
    assert_f(&records, |updates, raw| {
        2.0 * state.subtract_debiased_feedback_baseline(0.5, updates, raw)
    });
}

#[test]
fn the_clip_bounds_f_before_the_baseline() {
    // A bound far below any real f clamps every step, so f is set by the bound alone.
    let clip = 1e-9;
    let records = three_meta_steps(|cfg| {
        cfg.meta.feedback_clip = Some(clip);
        cfg.meta.feedback_scale = 2.0;
    });
    let mut state = MetaState::default();
    assert_f(&records, |_, raw| {
        assert!(raw.abs() > clip, "the raw f is logged unclamped: {raw}");
        2.0 * state.subtract_feedback_baseline(0.5, raw.clamp(-clip, clip))
    });
    for r in &records {
        assert_eq!(r["f_clamped"].as_f64(), Some(1.0));
    }
}

#[test]
fn the_run_bound_cuts_f_after_the_baseline() {
    let (budget, decay) = (1e-9, 0.5);
    let records = three_meta_steps(|cfg| {
        cfg.meta.feedback_run_budget = Some(budget);
        cfg.meta.feedback_run_decay = decay;
        cfg.meta.feedback_scale = 2.0;
    });
    let mut state = MetaState::default();
    assert_f(&records, |_, raw| {
        let centred = state.subtract_feedback_baseline(0.5, raw);
        2.0 * state.bound_feedback_run(budget, decay, centred)
    });
    // The first step is cut by the budget alone; every step's sum stays within it.
    assert_eq!(records[0]["f_run_bounded"].as_f64(), Some(1.0));
    for r in &records {
        let sum = r["f_run_sum"].as_f64().unwrap();
        assert!(sum.abs() <= budget * (1.0 + 1e-12), "f_run_sum {sum}");
    }
}

#[test]
fn the_judge_shift_splits_the_running_judges_loss_change() {
    let records = three_meta_steps(|cfg| {
        cfg.meta.feedback = face2exp_trainer::train::Feedback::Taylor;
        cfg.meta.judge_statistics = face2exp_trainer::train::JudgeStatistics::Running;
        cfg.meta.log_judge_shift = true;
    });
    for r in &records {
        let [start, stats, judged, raw] = [
            "loss_judge_start",
            "loss_judge_stats",
            "loss_judge",
            "f_raw",
        ]
        .map(|key| r[key].as_f64().unwrap_or_else(|| panic!("{key} is logged")));
        // Under `taylor` f_raw is the whole change, statistics and weights together.
        // Both losses are f32 in the step, so the tolerance is f32's rounding at their size.
        assert!(
            (raw - (start - judged)).abs() <= 1e-6 * start.max(judged),
            "f_raw {raw}, start {start}, after {judged}"
        );
        assert_ne!(
            start, stats,
            "the strong-view forward moved A's running statistics"
        );
    }
}

#[test]
fn the_adaptation_grad_clip_bounds_a_step() {
    let unclipped = three_meta_steps(|_| {});
    // A bound far below any real gradient norm clips every step.
    let clipped = three_meta_steps(|cfg| cfg.meta.adaptation_grad_clip = Some(1e-9));
    for r in &clipped {
        assert!(
            r["grad_norm_u"].as_f64().unwrap() > 1e-9,
            "the norm is logged unclipped"
        );
        assert_eq!(r["grad_clipped_u"].as_f64(), Some(1.0));
    }
    assert!(unclipped[0].get("grad_clipped_u").is_none());
    // The first step is the same in both runs up to A's update, which f is taken from.
    assert_eq!(
        unclipped[0]["grad_norm_u"].as_f64(),
        clipped[0]["grad_norm_u"].as_f64()
    );
    assert_ne!(unclipped[0]["f_raw"], clipped[0]["f_raw"]);
}

#[test]
fn alignment_moves_the_consistency_targets_and_logs_the_imbalance() {
    let plain = three_meta_steps(|_| {});
    let aligned = three_meta_steps(|cfg| cfg.meta.distribution_alignment = Some(0.9));
    // Step 1 starts from the same B on the same batches: the supervised loss agrees, the
    // consistency loss does not, because its targets were divided by the batch's own mean.
    assert_eq!(plain[0]["loss_s"], aligned[0]["loss_s"]);
    let (c_plain, c_aligned) = (
        plain[0]["loss_c"].as_f64().unwrap(),
        aligned[0]["loss_c"].as_f64().unwrap(),
    );
    assert!(
        (c_plain - c_aligned).abs() > 1e-6,
        "L_c {c_plain} with and {c_aligned} without alignment"
    );
    for r in &aligned {
        let imbalance = r["pseudo_imbalance"]
            .as_f64()
            .expect("logged with alignment");
        assert!(imbalance.is_finite() && imbalance >= 1.0, "{imbalance}");
    }
    assert!(plain.iter().all(|r| r.get("pseudo_imbalance").is_none()));
}
