//! The two-way variance split of a probe's U x K table of f, and how f moves when B's pseudo
//! labels are corrupted.

use anyhow::bail;
use serde::Serialize;

/// Variance components of a U x K table of f (two-way random effects without replication).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FeedbackVariance {
    pub mean: f64,
    /// sd of single values around the grand mean (what one training step sees).
    pub total_sd: f64,
    /// Standard deviations of the three components: pseudo-label batch, labeled batch, and
    /// interaction + residual.
    pub pseudo_sd: f64,
    pub labeled_sd: f64,
    pub residual_sd: f64,
    /// Shares of the summed variance components (they add up to 1; all 0 for a constant table).
    pub pseudo_share: f64,
    pub labeled_share: f64,
    pub residual_share: f64,
    /// F = MS(pseudo) / MS(residual) with (U-1, (U-1)(K-1)) degrees of freedom: about 1 when
    /// the pseudo-label batch does not matter.
    pub pseudo_f_statistic: f64,
    /// Fraction of single values whose sign matches their pseudo-label batch's mean.
    pub sign_agreement: f64,
}

impl FeedbackVariance {
    /// A plain-text summary of the split of `values`, headed by `title`.
    pub fn table(&self, title: &str, values: &[Vec<f64>]) -> String {
        let (u, k) = (values.len(), values.first().map_or(0, Vec::len));
        let sd_share = |name: &str, sd: f64, share: f64| {
            format!("{name:<22} {sd:>11.3e} {:>9.1} %\n", 100.0 * share)
        };
        let mut out = format!(
            "{title}: {u} pseudo-label x {k} labeled batches\n\
             mean {:.3e}, sd of one value {:.3e}\n\n\
             {:<22} {:>11} {:>11}\n",
            self.mean, self.total_sd, "component", "sd", "share"
        );
        out += &sd_share("pseudo-label batch", self.pseudo_sd, self.pseudo_share);
        out += &sd_share("labeled batch", self.labeled_sd, self.labeled_share);
        out += &sd_share(
            "interaction+residual",
            self.residual_sd,
            self.residual_share,
        );
        out += &format!(
            "\nF(pseudo) = {:.2} with ({}, {}) df; {:.1} % of values share their pseudo-label \
             batch's sign",
            self.pseudo_f_statistic,
            u.saturating_sub(1),
            u.saturating_sub(1) * k.saturating_sub(1),
            100.0 * self.sign_agreement
        );
        out
    }
}

/// Splits the variance of `values[u][k]`. Needs U >= 2 and K >= 2, all finite.
pub fn decompose(values: &[Vec<f64>]) -> anyhow::Result<FeedbackVariance> {
    let u = values.len();
    let k = values.first().map_or(0, Vec::len);
    if u < 2 || k < 2 {
        bail!("the variance split needs at least 2 x 2 values, got {u} x {k}");
    }
    if values.iter().any(|row| row.len() != k) {
        bail!("every pseudo-label batch needs the same {k} labeled-batch values");
    }
    if values.iter().flatten().any(|v| !v.is_finite()) {
        bail!("the feedback table has a non-finite value");
    }
    let (uf, kf) = (u as f64, k as f64);
    let mean = table_mean(values);
    let row_means = row_means(values);
    let col_means: Vec<f64> = (0..k)
        .map(|j| values.iter().map(|r| r[j]).sum::<f64>() / uf)
        .collect();
    let ss_rows = kf * row_means.iter().map(|m| (m - mean).powi(2)).sum::<f64>();
    let ss_cols = uf * col_means.iter().map(|m| (m - mean).powi(2)).sum::<f64>();
    let mut ss_residual = 0.0;
    let mut ss_total = 0.0;
    let mut agreeing = 0usize;
    for (row, row_mean) in values.iter().zip(&row_means) {
        for (v, col_mean) in row.iter().zip(&col_means) {
            ss_residual += (v - row_mean - col_mean + mean).powi(2);
            ss_total += (v - mean).powi(2);
            agreeing += usize::from((*v >= 0.0) == (*row_mean >= 0.0));
        }
    }
    let ms_rows = ss_rows / (uf - 1.0);
    let ms_cols = ss_cols / (kf - 1.0);
    let ms_residual = ss_residual / ((uf - 1.0) * (kf - 1.0));
    // Expected mean squares: E[MS_rows] = s2_e + K s2_u, E[MS_cols] = s2_e + U s2_k.
    let pseudo_var = ((ms_rows - ms_residual) / kf).max(0.0);
    let labeled_var = ((ms_cols - ms_residual) / uf).max(0.0);
    let residual_var = ms_residual;
    let sum = pseudo_var + labeled_var + residual_var;
    let share = |v: f64| if sum > 0.0 { v / sum } else { 0.0 };
    Ok(FeedbackVariance {
        mean,
        total_sd: (ss_total / (uf * kf - 1.0)).sqrt(),
        pseudo_sd: pseudo_var.sqrt(),
        labeled_sd: labeled_var.sqrt(),
        residual_sd: residual_var.sqrt(),
        pseudo_share: share(pseudo_var),
        labeled_share: share(labeled_var),
        residual_share: share(residual_var),
        // Infinite (JSON null) when the table is exactly additive, 0 when it is constant.
        pseudo_f_statistic: if ms_residual > 0.0 {
            ms_rows / ms_residual
        } else if ms_rows > 0.0 {
            f64::INFINITY
        } else {
            0.0
        },
        sign_agreement: agreeing as f64 / (uf * kf),
    })
}

/// How f moves when a fraction of B's pseudo labels is replaced by other classes: the same
/// images, the same judging batches, only the labels A steps on differ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CorruptionEffect {
    pub corrupted: f64,
    pub relabeling: super::Relabeling,
    /// Fraction of the labels that differ from B's.
    pub changed: f64,
    pub applied: Shift,
    pub gradient: Shift,
}

/// One direction's comparison of B's own labels (clean) with corrupted ones.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shift {
    /// Mean f with the corrupted labels.
    pub mean: f64,
    /// Mean of clean minus corrupted f, and its standard error over pseudo-label batches.
    pub clean_minus_corrupted: f64,
    pub standard_error: f64,
    /// Fraction of (u, k) pairs in which one f (one labeled batch, as a training step has)
    /// is higher for the clean labels: 0.5 would mean f cannot tell them apart.
    pub single_ranks_clean_higher: f64,
    /// Fraction of pseudo-label batches whose f averaged over the K labeled batches is higher
    /// for the clean labels.
    pub average_ranks_clean_higher: f64,
}

impl Shift {
    fn between(clean: &[Vec<f64>], corrupted: &[Vec<f64>]) -> anyhow::Result<Self> {
        if clean.len() != corrupted.len()
            || clean.iter().zip(corrupted).any(|(a, b)| a.len() != b.len())
            || clean.len() < 2
        {
            bail!("clean and corrupted tables need the same shape, with 2 or more rows");
        }
        let row_diffs: Vec<f64> = clean
            .iter()
            .zip(corrupted)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).sum::<f64>() / a.len() as f64)
            .collect();
        let u = row_diffs.len() as f64;
        let (mean_diff, sd_diff) = mean_and_sd(&row_diffs);
        let cells = clean.iter().map(Vec::len).sum::<usize>() as f64;
        let higher = clean
            .iter()
            .flatten()
            .zip(corrupted.iter().flatten())
            .filter(|(a, b)| a > b)
            .count() as f64;
        Ok(Self {
            mean: table_mean(corrupted),
            clean_minus_corrupted: mean_diff,
            standard_error: sd_diff / u.sqrt(),
            single_ranks_clean_higher: higher / cells,
            average_ranks_clean_higher: row_diffs.iter().filter(|d| **d > 0.0).count() as f64 / u,
        })
    }
}

impl CorruptionEffect {
    pub fn between(
        clean: &super::LevelTable,
        corrupted: &super::LevelTable,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            corrupted: corrupted.corrupted,
            relabeling: corrupted.relabeling,
            changed: corrupted.changed,
            applied: Shift::between(&clean.applied, &corrupted.applied)?,
            gradient: Shift::between(&clean.gradient, &corrupted.gradient)?,
        })
    }

    /// One line per level and direction.
    pub fn table(effects: &[CorruptionEffect]) -> String {
        let mut out = format!(
            "B's labels against relabeled ones (the same images and labeled batches)\n\n\
             {:>9} {:<7} {:>7} {:<9} {:>11} {:>23} {:>12} {:>12}\n",
            "relabeled",
            "how",
            "changed",
            "along",
            "mean f",
            "clean - relabeled (se)",
            "one f ranks",
            "mean ranks"
        );
        for effect in effects {
            for (along, shift) in [("applied", &effect.applied), ("gradient", &effect.gradient)] {
                out += &format!(
                    "{:>8.0} % {:<7} {:>5.0} % {along:<9} {:>11.3e} {:>23} {:>10.1} % {:>10.1} %\n",
                    100.0 * effect.corrupted,
                    effect.relabeling.short(),
                    100.0 * effect.changed,
                    shift.mean,
                    format!(
                        "{:.3e} ({:.1e})",
                        shift.clean_minus_corrupted, shift.standard_error
                    ),
                    100.0 * shift.single_ranks_clean_higher,
                    100.0 * shift.average_ranks_clean_higher,
                );
            }
        }
        out += "(how: other = moved to another class, shuffle = permuted among the batch's \
                images, class mix kept, uniform = a step toward the uniform distribution, no \
                labels; ranks: how often f is higher for B's own labels, from \
                one labeled batch as a training step sees it, and averaged over all)";
        out
    }
}

/// How f follows the share of B's pseudo labels that are right, batch by batch (labeled
/// images in the pseudo-label role): does f rank B's labels by their natural quality?
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AccuracyLink {
    pub mean_accuracy: f64,
    pub sd_accuracy: f64,
    /// Pearson correlation across pseudo-label batches of their accuracy with f averaged over
    /// the labeled batches, and with single values of f (one labeled batch, as in training).
    pub applied_mean_r: f64,
    pub applied_single_r: f64,
    pub gradient_mean_r: f64,
    pub gradient_single_r: f64,
}

impl AccuracyLink {
    pub fn new(accuracy: &[f64], clean: &super::LevelTable) -> anyhow::Result<Self> {
        if accuracy.len() != clean.applied.len() || accuracy.len() < 3 {
            bail!(
                "{} pseudo-label accuracies for {} batches: need one per batch, 3 or more",
                accuracy.len(),
                clean.applied.len()
            );
        }
        let single = |t: &[Vec<f64>]| -> (Vec<f64>, Vec<f64>) {
            t.iter()
                .zip(accuracy)
                .flat_map(|(r, a)| r.iter().map(move |f| (*a, *f)))
                .unzip()
        };
        let (acc_a, f_a) = single(&clean.applied);
        let (acc_g, f_g) = single(&clean.gradient);
        let (mean, sd) = mean_and_sd(accuracy);
        Ok(Self {
            mean_accuracy: mean,
            sd_accuracy: sd,
            applied_mean_r: pearson(accuracy, &row_means(&clean.applied)),
            applied_single_r: pearson(&acc_a, &f_a),
            gradient_mean_r: pearson(accuracy, &row_means(&clean.gradient)),
            gradient_single_r: pearson(&acc_g, &f_g),
        })
    }

    pub fn text(&self) -> String {
        format!(
            "B's pseudo labels are right on {:.1} % (sd {:.1} points across batches); \
             correlation of f with that accuracy:\n\
             along the applied update: {:+.2} (f averaged over labeled batches), {:+.2} (one f)\n\
             along the pseudo-label gradient: {:+.2} (averaged), {:+.2} (one f)",
            100.0 * self.mean_accuracy,
            100.0 * self.sd_accuracy,
            self.applied_mean_r,
            self.applied_single_r,
            self.gradient_mean_r,
            self.gradient_single_r
        )
    }
}

/// The mean of every value of a table (0 for an empty one).
fn table_mean(values: &[Vec<f64>]) -> f64 {
    let n = values.iter().map(Vec::len).sum::<usize>().max(1);
    values.iter().flatten().sum::<f64>() / n as f64
}

/// The mean of each row of a table.
fn row_means(values: &[Vec<f64>]) -> Vec<f64> {
    values
        .iter()
        .map(|r| r.iter().sum::<f64>() / r.len() as f64)
        .collect()
}

/// The mean and the sample standard deviation (n - 1) of `xs`, at least 2 values.
fn mean_and_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Pearson's r; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len()) as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    if sxx > 0.0 && syy > 0.0 {
        sxy / (sxx * syy).sqrt()
    } else {
        0.0
    }
}
