use super::{corrupt, decompose, shuffle, ClassPrior, CorruptionEffect, LevelTable, Relabeling};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn an_additive_table_splits_into_its_row_and_column_effects() {
    // f = 1 + a_u + b_k with a = (-1, 0, 1), b = (-0.5, 0.5) and no interaction: the
    // components are the sample variances of a (1) and b (0.5), the residual is 0.
    let a = [-1.0, 0.0, 1.0];
    let b = [-0.5, 0.5];
    let table: Vec<Vec<f64>> = a
        .iter()
        .map(|a| b.iter().map(|b| 1.0 + a + b).collect())
        .collect();
    let split = decompose(&table).unwrap();
    assert!(close(split.mean, 1.0), "{split:?}");
    assert!(close(split.pseudo_sd, 1.0), "{split:?}");
    assert!(close(split.labeled_sd, 0.5f64.sqrt()), "{split:?}");
    assert!(close(split.residual_sd, 0.0), "{split:?}");
    assert!(close(split.pseudo_share, 2.0 / 3.0), "{split:?}");
    assert!(close(split.labeled_share, 1.0 / 3.0), "{split:?}");
    assert!(split.pseudo_f_statistic.is_infinite());
    // Row 0 is (-0.5, 0.5) around a mean of 0: one value of six disagrees in sign.
    assert!(close(split.sign_agreement, 5.0 / 6.0), "{split:?}");
}

#[test]
fn a_latin_square_is_all_residual() {
    // Every row and column holds the same values, so neither batch matters on average.
    let base = [1.0, -1.0, 2.0, -2.0];
    let table: Vec<Vec<f64>> = (0..4)
        .map(|shift| (0..4).map(|j| base[(j + shift) % 4]).collect())
        .collect();
    let split = decompose(&table).unwrap();
    assert!(close(split.pseudo_share, 0.0), "{split:?}");
    assert!(close(split.labeled_share, 0.0), "{split:?}");
    assert!(close(split.residual_share, 1.0), "{split:?}");
    assert!(close(split.pseudo_f_statistic, 0.0), "{split:?}");
    // Single values have the total variance: sum of squares 40 over 15.
    assert!(close(split.total_sd, (40.0f64 / 15.0).sqrt()), "{split:?}");
}

#[test]
fn pseudo_label_noise_shows_as_a_large_f_statistic() {
    // Rows differ by 1 per step, labeled batches add a small interaction.
    let table: Vec<Vec<f64>> = (0..5)
        .map(|u| {
            (0..6)
                .map(|k| u as f64 + 0.01 * ((u * 7 + k * 3) % 5) as f64)
                .collect()
        })
        .collect();
    let split = decompose(&table).unwrap();
    assert!(split.pseudo_share > 0.99, "{split:?}");
    assert!(split.pseudo_f_statistic > 1e3, "{split:?}");
}

#[test]
fn a_constant_table_has_no_variance_and_no_nan() {
    let split = decompose(&vec![vec![0.25; 3]; 4]).unwrap();
    assert_eq!(split.mean, 0.25);
    for v in [
        split.pseudo_share,
        split.labeled_share,
        split.residual_share,
    ] {
        assert_eq!(v, 0.0);
    }
    assert_eq!(split.pseudo_f_statistic, 0.0);
    assert_eq!(split.total_sd, 0.0);
}

#[test]
fn tables_it_cannot_split_are_errors() {
    let err = decompose(&[vec![1.0, 2.0]]).unwrap_err().to_string();
    assert!(err.contains("2 x 2"), "{err}");
    let err = decompose(&[vec![1.0, 2.0], vec![1.0]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("same 2"), "{err}");
    let err = decompose(&[vec![1.0, f64::NAN], vec![1.0, 2.0]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite"), "{err}");
}

#[test]
fn corruption_moves_exactly_the_asked_fraction_to_other_classes() {
    let labels: Vec<u32> = (0..40).map(|i| i % 7).collect();
    assert_eq!(corrupt(&labels, 0.0, 7, 3), labels);
    for (fraction, moved) in [(0.25, 10), (0.5, 20), (1.0, 40)] {
        let out = corrupt(&labels, fraction, 7, 3);
        let changed = labels.iter().zip(&out).filter(|(a, b)| a != b).count();
        assert_eq!(changed, moved, "fraction {fraction}");
        assert!(out.iter().all(|l| *l < 7));
        assert_eq!(out, corrupt(&labels, fraction, 7, 3), "seeded");
    }
    assert_ne!(corrupt(&labels, 0.5, 7, 3), corrupt(&labels, 0.5, 7, 4));
}

#[test]
fn a_corruption_that_lowers_every_f_is_ranked_below_throughout() {
    let level = |corrupted: f64, shift: f64| LevelTable {
        corrupted,
        relabeling: Relabeling::OtherClass,
        changed: corrupted,
        label_shares: vec![0.5, 0.5],
        applied: (0..3)
            .map(|u| (0..4).map(|k| (u * 4 + k) as f64 - shift).collect())
            .collect(),
        gradient: vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]],
    };
    let effect = CorruptionEffect::between(&level(0.0, 0.0), &level(1.0, 0.5)).unwrap();
    assert_eq!(effect.corrupted, 1.0);
    assert!(close(effect.applied.clean_minus_corrupted, 0.5));
    assert!(close(effect.applied.standard_error, 0.0));
    assert_eq!(effect.applied.single_ranks_clean_higher, 1.0);
    assert_eq!(effect.applied.average_ranks_clean_higher, 1.0);
    assert!(close(effect.applied.mean, 5.5 - 0.5));
    // Equal tables: neither is higher anywhere.
    assert_eq!(effect.gradient.single_ranks_clean_higher, 0.0);
    assert!(close(effect.gradient.clean_minus_corrupted, 0.0));
    let text = CorruptionEffect::table(&[effect]);
    assert!(text.contains("100 % other     100 % applied"), "{text}");
}

#[test]
fn pearson_is_one_for_a_line_minus_one_for_its_mirror_and_zero_for_a_constant() {
    use super::pearson;
    let x = [1.0, 2.0, 3.0, 4.0];
    assert!(close(pearson(&x, &[3.0, 5.0, 7.0, 9.0]), 1.0));
    assert!(close(pearson(&x, &[9.0, 7.0, 5.0, 3.0]), -1.0));
    assert_eq!(pearson(&x, &[2.0; 4]), 0.0);
}

#[test]
fn the_accuracy_link_follows_batch_accuracy_and_needs_one_per_batch() {
    use super::AccuracyLink;
    // f rises with accuracy in the applied table and falls with it along the gradient.
    let accuracy = [0.4, 0.5, 0.6];
    let level = LevelTable {
        corrupted: 0.0,
        relabeling: Relabeling::OtherClass,
        changed: 0.0,
        label_shares: vec![0.5, 0.5],
        applied: vec![vec![1.0, 1.2], vec![2.0, 2.2], vec![3.0, 3.2]],
        gradient: vec![vec![3.0, 3.0], vec![2.0, 2.0], vec![1.0, 1.0]],
    };
    let link = AccuracyLink::new(&accuracy, &level).unwrap();
    assert!(close(link.mean_accuracy, 0.5));
    assert!(close(link.sd_accuracy, 0.1));
    assert!(close(link.applied_mean_r, 1.0));
    assert!(close(link.gradient_mean_r, -1.0));
    assert!(close(link.gradient_single_r, -1.0));
    // Single values carry the within-batch spread: below the batch means' r.
    assert!(link.applied_single_r > 0.9 && link.applied_single_r < 1.0);
    let err = AccuracyLink::new(&accuracy[..2], &level)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one per batch"), "{err}");
}

#[test]
fn a_shuffle_keeps_the_class_mix_and_moves_only_the_asked_fraction() {
    let labels: Vec<u32> = (0..40).map(|i| [0, 0, 0, 1, 1, 2, 3, 4][i % 8]).collect();
    let histogram = |l: &[u32]| {
        let mut h = [0usize; 7];
        l.iter().for_each(|&c| h[c as usize] += 1);
        h
    };
    assert_eq!(shuffle(&labels, 0.0, 3), labels);
    for fraction in [0.25, 0.5, 1.0] {
        let out = shuffle(&labels, fraction, 3);
        assert_eq!(histogram(&out), histogram(&labels), "class mix kept");
        let changed = out.iter().zip(&labels).filter(|(a, b)| a != b).count();
        assert!(changed > 0, "{fraction}: some labels move");
        assert!(
            changed <= (fraction * 40.0) as usize,
            "{fraction}: only the chosen ones"
        );
        assert_eq!(out, shuffle(&labels, fraction, 3), "seeded");
    }
    // Moving to other classes flattens the same batch's mix instead.
    let moved = corrupt(&labels, 1.0, 7, 3);
    assert_ne!(histogram(&moved), histogram(&labels));
    assert_eq!(
        Relabeling::Shuffle.apply(&labels, 1.0, 7, 3),
        shuffle(&labels, 1.0, 3)
    );
    assert_eq!(Relabeling::OtherClass.apply(&labels, 1.0, 7, 3), moved);
}

#[test]
fn a_tally_gives_the_class_shares_and_the_fraction_changed() {
    use super::relabel::LabelTally;
    let own = [0u32, 0, 1, 2];
    let mut tally = LabelTally::new(3);
    assert_eq!(tally.summary(Relabeling::OtherClass), (vec![0.0; 3], 0.0));
    tally.add(&[0, 1, 1, 2], &own);
    tally.add(&own, &own);
    let (shares, changed) = tally.summary(Relabeling::Shuffle);
    assert_eq!(shares, vec![3.0 / 8.0, 3.0 / 8.0, 2.0 / 8.0]);
    assert_eq!(changed, 1.0 / 8.0);
    assert_eq!(
        tally.summary(Relabeling::Uniform),
        (vec![1.0 / 3.0; 3], 1.0),
        "the uniform target replaces every label"
    );
    assert_eq!(LabelTally::class_shares(&own, 3), vec![0.5, 0.25, 0.25]);
    assert_eq!(Relabeling::Uniform.label_smoothing(0.1), 1.0);
    assert_eq!(Relabeling::Shuffle.label_smoothing(0.1), 0.1);
}

#[test]
fn the_class_mix_distance_is_the_share_of_labels_that_must_change_class() {
    assert!(close(
        ClassPrior::distance(&[0.5, 0.5, 0.0], &[0.5, 0.5, 0.0]),
        0.0
    ));
    assert!(close(ClassPrior::distance(&[1.0, 0.0], &[0.0, 1.0]), 1.0));
    assert!(close(
        ClassPrior::distance(&[0.6, 0.4, 0.0], &[0.3, 0.4, 0.3]),
        0.3
    ));
    let prior = ClassPrior {
        judges: vec![0.6, 0.4, 0.0],
        pseudo: vec![0.3, 0.4, 0.3],
        adaptation: vec![0.6, 0.4, 0.0],
    };
    let text = prior.text();
    assert!(text.contains("neutral      60.0    30.0    60.0"), "{text}");
    assert!(
        text.contains("B's labels 0.300, A's prediction 0.000"),
        "{text}"
    );
}

#[test]
fn an_overconfident_network_s_loss_is_lowest_above_temperature_one() {
    use super::calibration::{mean_softmax, softmax};
    use super::Calibration;
    use crate::train::JudgeStatistics;
    // Two of three images right; all three at 5 nats of margin: the wrong one costs ~5 nats
    // at T 1, and softening the logits saves more there than it costs on the right ones.
    let logits = vec![
        vec![5.0f32, 0.0, 0.0],
        vec![0.0, 5.0, 0.0],
        vec![5.0, 0.0, 0.0],
    ];
    let labels = [0u32, 1, 2];
    let confident = Calibration::new(JudgeStatistics::Batch, &logits, &labels);
    assert!(close(confident.accuracy, 2.0 / 3.0));
    let top = softmax(&logits[0], 1.0)[0];
    assert!(close(confident.mean_top_probability, top));
    assert!(confident.best_temperature() > 1.0, "{confident:?}");
    let at_one = confident
        .cross_entropy
        .iter()
        .find(|(t, _)| *t == 1.0)
        .unwrap()
        .1;
    let expected = -(2.0 * top.ln() + softmax(&logits[2], 1.0)[2].ln()) / 3.0;
    assert!(close(at_one, expected), "{at_one} vs {expected}");
    // All right: the sharper, the better.
    let right = Calibration::new(JudgeStatistics::Running, &logits[..2], &labels[..2]);
    assert_eq!(right.best_temperature(), 0.75);
    assert!(Calibration::text(&[confident, right]).contains("running"));
    // A logit 1e3 away: the probability underflows, the loss stays finite (1e3 nats).
    let far = Calibration::new(JudgeStatistics::Running, &[vec![1e3f32, 0.0]], &[1]);
    assert!((far.cross_entropy[1].1 - 1e3).abs() < 1e-6, "{far:?}");
    let mix = mean_softmax(&logits, 3);
    assert!(close(mix.iter().sum::<f64>(), 1.0));
    assert!(close(mix[1], (2.0 * (1.0 - top) / 2.0 + top) / 3.0));
}
