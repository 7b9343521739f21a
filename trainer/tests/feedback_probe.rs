//! `face2exp probe-feedback` on a tiny generated Meta-Face2Exp run: it reads the checkpoint
//! without changing it, gives the same table twice, scales with A's learning rate as the exact
//! f must, and refuses a supervised run.

mod common;

use std::path::Path;

use face2exp_trainer::train::feedback_probe::{probe, ProbeOptions, ProbeReport, Relabeling};
use face2exp_trainer::train::{train, JudgeStatistics, Method, RunOptions};

fn trained_run(data: &Path, out: &Path, method: Method, per_class: usize) {
    trained_run_with(data, out, method, per_class, |_| {});
}

fn trained_run_with(
    data: &Path,
    out: &Path,
    method: Method,
    per_class: usize,
    configure: impl FnOnce(&mut face2exp_trainer::train::TrainConfig),
) {
    common::write_imagefolder(&data.join("train"), per_class, 40);
    common::write_unlabeled(&data.join("faces"), 28, 64);
    let mut config = common::tiny_config(data, method);
    config.steps = 3;
    configure(&mut config);
    let options = RunOptions {
        out: out.to_path_buf(),
        resume: false,
        stop_after: None,
        progress: false,
    };
    train(config, &options).unwrap();
}

fn options(run: &Path, lr_adaptation: Option<f64>) -> ProbeOptions {
    ProbeOptions {
        run: run.to_path_buf(),
        // 7 labeled images per batch: (2 + 2) x 7 = all 28; 2 x 14 unlabeled = all 28.
        pseudo_batches: 2,
        labeled_batches: 2,
        lr_adaptation,
        device: None,
        corrupt: vec![1.0],
        shuffle: vec![1.0],
        uniform: true,
        judge_statistics: JudgeStatistics::Batch,
        pseudo_data: None,
        pseudo_center_crop: None,
        seed: 5,
        progress: false,
    }
}

#[test]
fn the_probe_reads_a_meta_checkpoint_and_measures_the_exact_feedback() {
    let data = tempfile::tempdir().unwrap();
    let run = data.path().join("run");
    trained_run(data.path(), &run, Method::Meta, 4);
    let checkpoint = std::fs::read(run.join("checkpoint.safetensors")).unwrap();

    let first = probe(&options(&run, None)).unwrap();
    assert_eq!(first.step, 3);
    assert_eq!(first.lr_adaptation, 0.05, "the run's peak adaptation lr");
    let fractions: Vec<f64> = first.levels.iter().map(|l| l.corrupted).collect();
    assert_eq!(
        fractions,
        [0.0, 1.0, 1.0, 1.0],
        "B's own labels first, then the corrupted, shuffled and uniform ones"
    );
    assert_eq!(first.levels[2].relabeling, Relabeling::Shuffle);
    assert_eq!(first.levels[3].relabeling, Relabeling::Uniform);
    assert_eq!(first.levels[3].changed, 1.0);
    assert_eq!(first.levels[3].label_shares, vec![1.0 / 7.0; 7]);
    assert_ne!(
        first.levels[3].gradient, first.levels[0].gradient,
        "the uniform target is another step"
    );
    let statistics: Vec<&str> = first
        .calibration
        .iter()
        .map(|c| c.statistics.name())
        .collect();
    assert_eq!(statistics, ["batch", "running"]);
    for c in &first.calibration {
        assert!((0.0..=1.0).contains(&c.accuracy), "{c:?}");
        assert!(c.mean_top_probability >= 1.0 / 7.0 - 1e-9, "{c:?}");
        assert!(
            c.cross_entropy
                .iter()
                .all(|(_, l)| l.is_finite() && *l > 0.0),
            "{c:?}"
        );
    }
    assert_eq!(first.levels[0].changed, 0.0);
    assert_eq!(
        first.levels[1].changed, 1.0,
        "every label moved to another class"
    );
    assert_eq!(
        first.levels[2].label_shares, first.levels[0].label_shares,
        "a shuffle keeps B's class mix"
    );
    let prior = &first.class_prior;
    assert_eq!(prior.pseudo, first.levels[0].label_shares);
    for mix in [&prior.judges, &prior.pseudo, &prior.adaptation] {
        assert_eq!(mix.len(), 7);
        assert!((mix.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{mix:?}");
    }
    for level in &first.levels {
        for table in [&level.applied, &level.gradient] {
            assert_eq!(table.len(), 2);
            assert!(table.iter().all(|row| row.len() == 2));
            assert!(table.iter().flatten().all(|f| f.is_finite() && *f != 0.0));
        }
        // A's momentum from three training steps makes the applied update differ from g_u.
        assert_ne!(level.applied, level.gradient);
    }
    // Other labels, another step of A, another f.
    assert_ne!(first.levels[0].gradient, first.levels[1].gradient);

    // A is put back after every probe step and the run folder is only read.
    let second = probe(&options(&run, None)).unwrap();
    assert_eq!(first.levels, second.levels);
    assert_eq!(
        checkpoint,
        std::fs::read(run.join("checkpoint.safetensors")).unwrap()
    );

    // Judged with A's running statistics: another f of the same steps.
    let running = probe(&ProbeOptions {
        judge_statistics: JudgeStatistics::Running,
        ..options(&run, None)
    })
    .unwrap();
    assert_eq!(running.judge_statistics, JudgeStatistics::Running);
    assert_ne!(running.levels[0].applied, first.levels[0].applied);
    assert!(running
        .levels
        .iter()
        .flat_map(|l| l.applied.iter().flatten())
        .all(|f| f.is_finite()));
    assert_eq!(
        running.calibration, first.calibration,
        "judging does not move A"
    );

    // f = lr <grad CE_l(theta - lr d), d> is lr times a dot product that settles as lr -> 0,
    // so f / lr must agree at two small rates. f32 rounding of A's tiny step moves each f / lr
    // by a few units whatever its size (up to 4 in a table whose largest |f / lr| was 154), so
    // the tolerance scales with the table; an lr-independent offset in f would exceed it.
    let slopes = |lr: f64| -> Vec<f64> {
        let report = probe(&options(&run, Some(lr))).unwrap();
        report.levels[0]
            .applied
            .iter()
            .flatten()
            .map(|f| f / lr)
            .collect()
    };
    let (small, double) = (slopes(1e-5), slopes(2e-5));
    let largest = small.iter().fold(0.0_f64, |m, s| m.max(s.abs()));
    assert!(largest > 0.0, "f vanished: {small:?}");
    for (a, b) in small.iter().zip(&double) {
        assert!(
            (a - b).abs() < 0.05 * largest,
            "f / lr = {a} at lr 1e-5 but {b} at 2e-5 (largest |f / lr| {largest})"
        );
    }

    // The run's unlabeled faces carry no labels: no pseudo-label accuracy.
    assert!(first.pseudo_accuracy.is_empty());
    let report = ProbeReport::new(first).unwrap();
    assert!(report.accuracy_link.is_none());
    let text = report.text();
    assert!(text.contains("pseudo-label batch"), "{text}");
    assert!(text.contains("uniform"), "{text}");
    assert!(text.contains("temperature"), "{text}");
    // `--plot`'s data: fractions 0 and 1, each the mean of its table.
    let curves = report.corruption_curves();
    assert_eq!(
        curves.len(),
        4,
        "other-class and shuffled, along both directions"
    );
    let clean = &report.table.levels[0].applied;
    let clean_mean = clean.iter().flatten().sum::<f64>() / 4.0;
    assert_eq!(curves[0].1[0].0, 0.0);
    assert!((curves[0].1[0].1 - clean_mean).abs() < 1e-12);
    assert_eq!(curves[0].1[1].0, 1.0);
    let png = data.path().join("corruption.png");
    face2exp_trainer::plot::xy_png(&png, "f", "fraction corrupted", &curves).unwrap();
    assert!(image::open(&png).is_ok(), "a readable PNG");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["applied"]["pseudo_share"].is_number(), "{json}");
    assert_eq!(json["corruption"][0]["corrupted"], 1.0, "{json}");
}

#[test]
fn a_supervised_run_is_refused_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let run = data.path().join("run");
    trained_run(data.path(), &run, Method::Sl, 4);
    let err = probe(&options(&run, None)).unwrap_err().to_string();
    assert!(err.contains("--method meta"), "{err}");
}

#[test]
fn labeled_images_in_the_pseudo_label_role_give_b_s_accuracy_per_batch() {
    let data = tempfile::tempdir().unwrap();
    let run = data.path().join("run");
    trained_run(data.path(), &run, Method::Meta, 6);
    let mut with_labels = options(&run, None);
    // The 42 labeled images: 2 + 3 judging and companion batches of 7, and 3 batches of 14
    // as pseudo-label images (a correlation needs 3 or more).
    with_labels.pseudo_batches = 3;
    with_labels.pseudo_data = Some(format!(
        "imagefolder:{}",
        data.path().join("train").display()
    ));
    let table = probe(&with_labels).unwrap();
    assert_eq!(table.pseudo_accuracy.len(), 3);
    for a in &table.pseudo_accuracy {
        assert!((0.0..=1.0).contains(a), "{a}");
        assert!(
            ((a * 14.0).round() - a * 14.0).abs() < 1e-9,
            "{a} is not k / 14"
        );
    }
    let report = ProbeReport::new(table).unwrap();
    let link = report.accuracy_link.as_ref().expect("an accuracy link");
    assert!(link.applied_mean_r.abs() <= 1.0);
    assert!(report.text().contains("B's pseudo labels are right on"));
}

#[test]
fn a_run_with_distribution_alignment_is_probed_with_its_aligned_labels() {
    let data = tempfile::tempdir().unwrap();
    let run = data.path().join("run");
    trained_run_with(data.path(), &run, Method::Meta, 4, |c| {
        c.meta.distribution_alignment = Some(0.5)
    });
    // B's classifier zeroed: every logit is 0, so B's labels are set by the alignment alone,
    // and the checkpointed running mean says class 4 is the one B proposes least.
    let checkpoint = run.join("checkpoint.safetensors");
    let (mut tensors, mut metadata) =
        face2exp_trainer::train::checkpoint::load(&checkpoint, &candle_core::Device::Cpu).unwrap();
    assert!(metadata.contains_key("pseudo_marginal"));
    for name in ["base.fc.weight", "base.fc.bias"] {
        let zeros = tensors[name].zeros_like().unwrap();
        tensors.insert(name.to_string(), zeros);
    }
    metadata.insert(
        "pseudo_marginal".to_string(),
        "0.2,0.2,0.2,0.2,0.01,0.09,0.1".to_string(),
    );
    face2exp_trainer::train::checkpoint::save(&checkpoint, &tensors, metadata).unwrap();
    let aligned = probe(&options(&run, None)).unwrap();
    let mut least_proposed = vec![0.0; 7];
    least_proposed[4] = 1.0;
    assert_eq!(aligned.levels[0].label_shares, least_proposed);

    // The same checkpoint probed as if the run had not aligned: all-equal logits, one class.
    let config_file = run.join("config.toml");
    let text = std::fs::read_to_string(&config_file).unwrap();
    assert!(text.contains("distribution_alignment = 0.5"), "{text}");
    let unaligned: String = text
        .lines()
        .filter(|line| !line.starts_with("distribution_alignment"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&config_file, unaligned).unwrap();
    let raw = probe(&options(&run, None)).unwrap();
    assert_ne!(raw.levels[0].label_shares, least_proposed);
}
