use super::*;

#[test]
fn toml_round_trip_and_partial_files() -> anyhow::Result<()> {
    let config = TrainConfig {
        labeled: "imagefolder:/data/train".into(),
        ..TrainConfig::default()
    };
    let back: TrainConfig = toml::from_str(&config.to_toml()?)?;
    assert_eq!(back, config);
    let partial: TrainConfig = toml::from_str(
        "method = \"meta\"\nunlabeled = \"folder:/lfw\"\n[meta]\nfeedback = \"exact\"\n",
    )?;
    assert_eq!(partial.method, Method::Meta);
    assert_eq!(partial.meta.feedback, Feedback::Exact);
    assert_eq!(partial.meta.mu, 7);
    assert!(toml::from_str::<TrainConfig>("stepz = 3").is_err());
    Ok(())
}

#[test]
fn balanced_batches_default_by_method_and_old_configs_keep_their_choice() -> anyhow::Result<()> {
    // Run folders written before Meta defaulted to class-balanced batches say `false`; a
    // resumed run must keep drawing as it did.
    let old: TrainConfig = toml::from_str("method = \"meta\"\nbalanced_sampler = false\n")?;
    assert!(!old.draws_balanced_batches());
    let meta: TrainConfig = toml::from_str("method = \"meta\"\n")?;
    assert!(meta.draws_balanced_batches());
    assert!(!TrainConfig::default().draws_balanced_batches());
    // What a run writes to config.toml states the choice, whatever the default later becomes.
    let written = meta.with_method_defaults();
    assert_eq!(written.balanced_sampler, Some(true));
    let back: TrainConfig = toml::from_str(&written.to_toml()?)?;
    assert_eq!(back.balanced_sampler, Some(true));
    Ok(())
}

#[test]
fn frozen_batch_norm_needs_trained_weights() {
    let mut config = TrainConfig {
        labeled: "imagefolder:/data/train".into(),
        ..TrainConfig::default()
    };
    config.model.freeze_batch_norm = true;
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("--init"), "{message}");
    config.model.init = Some("weights/face2exp-base.safetensors".into());
    config.validate().unwrap();
}

fn meta_config() -> TrainConfig {
    TrainConfig {
        method: Method::Meta,
        labeled: "imagefolder:/data/train".into(),
        unlabeled: Some("folder:/lfw".into()),
        ..TrainConfig::default()
    }
}

/// `set` puts each value into a Meta config: every one in `refused` fails validation with an
/// error naming `flag`, every one in `accepted` passes.
fn assert_setting(
    flag: &str,
    refused: &[f64],
    accepted: &[f64],
    set: impl Fn(&mut TrainConfig, f64),
) {
    let mut config = meta_config();
    for &value in refused {
        set(&mut config, value);
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains(flag), "{value}: {message}");
    }
    for &value in accepted {
        set(&mut config, value);
        config.validate().unwrap();
    }
}

/// A decay setting refuses 1 (an average that never moves), negatives and NaN, and takes
/// 0 and `valid`.
fn assert_decay(flag: &str, valid: f64, set: impl Fn(&mut TrainConfig, f64)) {
    assert_setting(flag, &[1.0, -0.1, f64::NAN], &[0.0, valid], set);
}

#[test]
fn feedback_baseline_decay_must_be_below_one() {
    assert_decay("--feedback-baseline-decay", 0.99, |c, decay| {
        c.meta.feedback_baseline_decay = Some(decay)
    });
}

#[test]
fn the_baseline_correction_needs_a_baseline() {
    let mut config = meta_config();
    config.meta.feedback_baseline_debias = true;
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("--feedback-baseline-decay"), "{message}");
    config.meta.feedback_baseline_decay = Some(0.99);
    config.validate().unwrap();
}

/// `set` puts a bound into the config; every non-positive or non-finite one is refused
/// with an error naming `flag`, and `valid` is accepted.
fn assert_positive_bound(flag: &str, valid: f64, set: impl Fn(&mut TrainConfig, f64)) {
    assert_setting(flag, &[0.0, -valid, f64::NAN, f64::INFINITY], &[valid], set);
}

#[test]
fn feedback_clip_must_be_positive() {
    assert_positive_bound("--feedback-clip", 0.05, |c, clip| {
        c.meta.feedback_clip = Some(clip)
    });
}

#[test]
fn pseudo_label_settings_are_checked() {
    assert_positive_bound("meta.temperature", 0.5, |c, t| c.meta.temperature = t);
    assert_setting(
        "--threshold",
        &[-0.1, 1.01, f64::NAN],
        &[0.0, 0.95, 1.0],
        |c, threshold| c.meta.threshold = threshold,
    );
    assert_setting(
        "--lambda-u",
        &[-1.0, f64::NAN, f64::INFINITY],
        &[0.0, 1.0],
        |c, lambda_u| c.meta.lambda_u = lambda_u,
    );
}

#[test]
fn distribution_alignment_needs_a_decay_below_one() {
    assert_decay("--distribution-alignment", 0.999, |c, decay| {
        c.meta.distribution_alignment = Some(decay)
    });
}

#[test]
fn the_run_bound_needs_a_positive_budget_and_a_decay_below_one() {
    assert_positive_bound("--feedback-run-budget", 0.1, |c, budget| {
        c.meta.feedback_run_budget = Some(budget)
    });
    assert_decay("--feedback-run-decay", 0.9, |c, decay| {
        c.meta.feedback_run_decay = decay
    });
}

#[test]
fn adaptation_grad_clip_must_be_positive() {
    assert_positive_bound("--adaptation-grad-clip", 5.0, |c, norm| {
        c.meta.adaptation_grad_clip = Some(norm)
    });
}

#[test]
fn the_judge_shift_log_needs_the_running_judge() {
    let mut config = meta_config();
    config.meta.log_judge_shift = true;
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("--log-judge-shift"), "{message}");
    config.meta.feedback = Feedback::Exact;
    config.meta.judge_statistics = JudgeStatistics::Running;
    config.validate().unwrap();
}

#[test]
fn judge_statistics_names_are_the_json_and_cli_names() {
    use clap::ValueEnum;
    for statistics in JudgeStatistics::ALL {
        let json = serde_json::to_string(&statistics).unwrap();
        assert_eq!(json, format!("\"{}\"", statistics.name()));
        let cli = statistics.to_possible_value().unwrap();
        assert_eq!(cli.get_name(), statistics.name());
    }
}

#[test]
fn running_judge_statistics_are_refused_for_the_official_feedback() {
    let mut config = meta_config();
    config.meta.judge_statistics = JudgeStatistics::Running;
    config.meta.feedback = Feedback::Official;
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("--judge-statistics"), "{message}");
    for feedback in [Feedback::Exact, Feedback::Taylor] {
        config.meta.feedback = feedback;
        config.validate().unwrap();
    }
}

#[test]
fn feedback_scale_must_be_positive_and_finite() {
    assert_setting(
        "--feedback-scale",
        &[0.0, -1.0, f64::NAN, f64::INFINITY],
        &[1.0, 25.0, 1e-3],
        |c, scale| c.meta.feedback_scale = scale,
    );
}
