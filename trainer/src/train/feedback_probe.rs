//! How much of the circuit feedback f is about B's pseudo labels, and how much is about which
//! labeled batch happened to judge A's step (`face2exp probe-feedback`).
//!
//! Training sees one f per step: A takes one step on one batch of B's pseudo labels, and one
//! labeled batch judges it. B can only learn from the part of f that says whether *those pseudo
//! labels* helped, which is f averaged over labeled batches. The probe loads a Meta-Face2Exp
//! checkpoint and, for each of U pseudo-label batches, takes A's step from the checkpointed
//! state and computes the exact f against the same K labeled batches, then puts A back. The
//! U x K table splits f's variance (two-way random effects, one value per cell) into the
//! pseudo-label batch (signal for B), the labeled batch, and their interaction (noise).
//!
//! Whether f tells good pseudo labels from bad ones is tested directly: each pseudo-label batch
//! is also given with a fraction of B's labels replaced by other classes (`corrupt`), and A's
//! step on those labels is judged by the same labeled batches. And with labeled images in the
//! pseudo-label role (`pseudo_data`, e.g. FER2013 val), the probe correlates f with the share
//! of B's labels that are right in each batch: their natural quality.
//!
//! Moving labels to other classes also flattens the batch's class mix, and any step on labels
//! A disagrees with makes it less sure. Permuting B's labels among the batch's images
//! (`shuffle`) makes them wrong and keeps the mix; a step toward the uniform distribution
//! (`uniform`) uses no labels and only makes A less sure. The report gives the class mixes and
//! A's calibration on the judging images beside them, and `judge_statistics` chooses the
//! BatchNorm statistics A is judged with.

use std::path::{Path, PathBuf};

use anyhow::bail;
use candle_core::{Tensor, D};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::alignment;
use super::checkpoint;
use super::config::{JudgeStatistics, Method, PseudoView, TrainConfig};
use super::device::parse_device;
use super::losses::cross_entropy;
use super::meta::feedback_dots;
use super::network::Network;
use super::run::{loader_config, preload_options, CHECKPOINT_FILE, CONFIG_FILE, SUBSET_FILE};
use crate::data::{self, Dataset, LabeledLoader, UnlabeledLoader};
use crate::model::{BnMode, ResNetConfig};
pub use relabel::{corrupt, shuffle, ClassPrior, Relabeling};
pub use variance::{decompose, pearson, AccuracyLink, CorruptionEffect, FeedbackVariance};

pub use calibration::Calibration;
use relabel::LabelTally;

mod calibration;
mod relabel;
mod variance;

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// A Meta-Face2Exp run folder (its config.toml and checkpoint.safetensors).
    pub run: PathBuf,
    /// U: pseudo-label batches, each one step of A from the checkpoint.
    pub pseudo_batches: usize,
    /// K: labeled batches, the same ones judge every pseudo-label step.
    pub labeled_batches: usize,
    /// A's learning rate for the probe step; `None` takes the run's peak (a finished cosine
    /// run ends at 0). f scales with it; the variance shares do not, to first order.
    pub lr_adaptation: Option<f64>,
    /// Overrides the run's device (e.g. probe a CUDA run on `cpu`).
    pub device: Option<String>,
    /// Fractions of B's pseudo labels to replace by another class, each probed on the same
    /// batches as B's own labels (which are always probed, as fraction 0).
    pub corrupt: Vec<f64>,
    /// Fractions of B's pseudo labels to permute among their images (the batch's class mix
    /// kept), each probed on the same batches, after the `corrupt` levels.
    pub shuffle: Vec<f64>,
    /// Also probes each batch with A stepping toward the uniform distribution (label
    /// smoothing 1, no labels at all): a step that only makes A less sure.
    pub uniform: bool,
    /// The BatchNorm statistics A is judged with after its step: the labeled batch's own, as
    /// training does, or A's running ones.
    pub judge_statistics: JudgeStatistics,
    /// Takes the pseudo-label images from this data spec instead of the run's unlabeled data.
    /// When it is labeled (e.g. FER2013 val), the probe records how many of B's labels are
    /// right in each batch and how f follows that.
    pub pseudo_data: Option<String>,
    /// Centre crop of the pseudo-label images; `None`: the run's unlabeled crop for the run's
    /// data, 1.0 (none) for `pseudo_data`, which is expected to hold face crops.
    pub pseudo_center_crop: Option<f32>,
    /// Picks the probe's images and augmentations; the run's own seed is not reused.
    pub seed: u64,
    pub progress: bool,
}

/// The probe's f values, one table per corruption level, the first for B's own labels.
#[derive(Clone, Debug, Serialize)]
pub struct FeedbackTable {
    pub step: u64,
    pub lr_adaptation: f64,
    pub judge_statistics: JudgeStatistics,
    pub levels: Vec<LevelTable>,
    /// Per pseudo-label batch, the fraction of B's labels that are right (only when the
    /// pseudo-label images are labeled; empty otherwise).
    pub pseudo_accuracy: Vec<f64>,
    pub class_prior: ClassPrior,
    /// A at the checkpoint on the judging images, with batch and with running statistics.
    pub calibration: Vec<Calibration>,
}

/// f for every (pseudo-label batch u, labeled batch k) at one corruption level: `applied[u][k]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LevelTable {
    /// Fraction of B's pseudo labels relabeled (0: B's own labels).
    pub corrupted: f64,
    pub relabeling: Relabeling,
    /// Fraction of the labels A stepped on that differ from B's (below `corrupted` for a
    /// shuffle, which can swap two labels of one class).
    pub changed: f64,
    /// Class shares of the targets A stepped on (1 / classes each for the uniform target).
    pub label_shares: Vec<f64>,
    /// f along the update A's optimizer applied, as `--feedback exact` trains with: with
    /// momentum it carries A's earlier steps (the checkpointed buffer), the same for every u.
    pub applied: Vec<Vec<f64>>,
    /// f along the pseudo-label gradient g_u alone, the paper's formula: only this step's
    /// pseudo labels, judged at the same new weights.
    pub gradient: Vec<Vec<f64>>,
}

/// Runs the probe on a Meta-Face2Exp run folder's checkpoint.
pub fn probe(options: &ProbeOptions) -> anyhow::Result<FeedbackTable> {
    let run = &options.run;
    let config = TrainConfig::from_toml_file(&run.join(CONFIG_FILE))?;
    if config.method != Method::Meta {
        bail!(
            "{}: a `{:?}` run has no adaptation network to probe; pass a `--method meta` run",
            run.display(),
            config.method
        );
    }
    let (unlabeled_spec, default_crop) = match (&options.pseudo_data, &config.unlabeled) {
        (Some(spec), _) => (spec, 1.0),
        (None, Some(spec)) => (spec, config.unlabeled_center_crop),
        (None, None) => bail!(
            "{}: the run's config names no unlabeled data",
            run.display()
        ),
    };
    if options.pseudo_batches < 2 || options.labeled_batches < 2 {
        bail!("the probe needs at least 2 pseudo-label batches and 2 labeled batches");
    }
    for (flag, fractions) in [("corrupt", &options.corrupt), ("shuffle", &options.shuffle)] {
        if let Some(bad) = fractions.iter().find(|c| !(0.0..=1.0).contains(*c)) {
            bail!("--{flag} {bad}: a fraction of the pseudo labels must lie in [0, 1]");
        }
    }
    let device = parse_device(options.device.as_deref().unwrap_or(&config.device))?;
    let (tensors, metadata) = checkpoint::load(&run.join(CHECKPOINT_FILE), &device)?;
    let step = metadata
        .get("step")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    // B's labels as training drew them: a run with distribution alignment shifts B's logits by
    // its running mean, here the one the checkpoint holds (training also folds in each batch).
    let alignment_shift = match (
        config.meta.distribution_alignment,
        metadata.get(alignment::METADATA_KEY),
    ) {
        (Some(_), Some(text)) if !text.is_empty() => {
            Some(alignment::PseudoMarginal::from_metadata(text)?.log_weights_tensor(&device)?)
        }
        _ => None,
    };

    // Only the images the probe uses are decoded: a random sample of each dataset.
    let batch = config.batch_size;
    let unlabeled_batch = batch * config.meta.mu;
    let (preload_labeled, mut preload_unlabeled) = preload_options(&config, options.progress);
    preload_unlabeled.center_crop = options.pseudo_center_crop.unwrap_or(default_crop);
    let labeled_all = labeled_set(&config, run)?;
    // K judging batches, then one batch per pseudo-label step to share B's BatchNorm batch
    // with the unlabeled images, as B's forward in training does.
    let labeled_count = (options.labeled_batches + options.pseudo_batches) * batch;
    let labeled = sample(&labeled_all, labeled_count, options.seed)?;
    let unlabeled_all = data::load_dataset(&unlabeled_spec.parse()?)?;
    let unlabeled = sample(
        &unlabeled_all,
        options.pseudo_batches * unlabeled_batch,
        options.seed ^ 1,
    )?;
    let (labeled, _) = data::preload(&labeled, &preload_labeled)?;
    let (unlabeled, _) = data::preload(&unlabeled, &preload_unlabeled)?;
    let mut labeled_loader = LabeledLoader::new(
        labeled,
        &probe_loader(&config, batch, options.seed, 0),
        false,
        0,
    )?;
    let mut unlabeled_loader = UnlabeledLoader::new(
        unlabeled,
        &probe_loader(&config, unlabeled_batch, options.seed, 1),
        0,
    )?;
    let num_classes = labeled_all.num_classes;
    let mut judge_labels = Vec::new();
    let judges: Vec<(Tensor, Tensor)> = (0..options.labeled_batches)
        .map(|_| {
            let batch = labeled_loader.next_batch()?;
            judge_labels.extend_from_slice(&batch.labels);
            Ok((batch.to_tensor(&device)?, batch.labels_tensor(&device)?))
        })
        .collect::<anyhow::Result<_>>()?;

    let net_config = ResNetConfig {
        arch: config.model.arch,
        stem: config.model.stem,
        num_classes,
        input_size: config.model.input_size,
    };
    let network = |role, schedule, ema_decay| {
        // No init file: every weight comes from the checkpoint.
        Network::new(
            role,
            &net_config,
            None,
            &device,
            config.sgd.clone(),
            schedule,
            ema_decay,
            config.seed,
        )
    };
    // As in training: only B keeps an EMA.
    let mut base = network("base", config.schedule.clone(), config.ema_decay)?;
    let adaptation_schedule = config.meta.adaptation_schedule.clone();
    let mut adaptation = network("adaptation", adaptation_schedule, None)?;
    base.restore(&tensors)?;
    let lr = options
        .lr_adaptation
        .unwrap_or(config.meta.adaptation_schedule.lr);

    adaptation.restore(&tensors)?;
    // Training judges A with batch statistics; running statistics are how `eval` sees it.
    let mut adaptation_mix = Vec::new();
    let mut calibration = Vec::new();
    for statistics in JudgeStatistics::ALL {
        let logits = judge_logits(&adaptation, &judges, statistics.bn_mode())?;
        if statistics == JudgeStatistics::Batch {
            adaptation_mix = calibration::mean_softmax(&logits, num_classes);
        }
        calibration.push(Calibration::new(statistics, &logits, &judge_labels));
    }
    // B's own labels, the other-class levels, then the shuffles: the first levels' seeds (and
    // so their labels) do not depend on whether shuffles are asked for.
    let kinds = std::iter::once((Relabeling::OtherClass, 0.0))
        .chain(options.corrupt.iter().map(|&c| (Relabeling::OtherClass, c)))
        .chain(options.shuffle.iter().map(|&c| (Relabeling::Shuffle, c)))
        .chain(options.uniform.then_some((Relabeling::Uniform, 1.0)));
    let mut levels: Vec<LevelTable> = kinds
        .map(|(relabeling, corrupted)| LevelTable {
            corrupted,
            relabeling,
            changed: 0.0,
            label_shares: Vec::new(),
            applied: Vec::new(),
            gradient: Vec::new(),
        })
        .collect();
    let mut tallies = vec![LabelTally::new(num_classes); levels.len()];
    let mut pseudo_accuracy = Vec::new();
    let bar = progress(options.progress, options.pseudo_batches);
    for u in 0..options.pseudo_batches {
        let companion = labeled_loader.next_batch()?;
        let pseudo = unlabeled_loader.next_batch()?;
        let x_l = companion.to_tensor(&device)?;
        let x_uw = pseudo.to_tensor(&device)?;
        let x_us = pseudo.strong_tensor(&device)?;
        let (n_l, n_u) = (x_l.dim(0)?, x_uw.dim(0)?);
        let b_logits = base
            .model
            .forward_with(
                &Tensor::cat(&[&x_l, &x_uw, &x_us], 0)?,
                BnMode::TrainNoStatsUpdate,
            )?
            .detach();
        let view = match config.meta.pseudo_view {
            PseudoView::Strong => b_logits.narrow(0, n_l + n_u, n_u)?,
            PseudoView::Weak => b_logits.narrow(0, n_l, n_u)?,
        };
        let hard_pseudo: Vec<u32> =
            alignment::pseudo_logits(&view, config.meta.temperature, alignment_shift.as_ref())?
                .argmax(D::Minus1)?
                .to_vec1()?;
        if let Some(truth) = &pseudo.known_labels {
            let right = hard_pseudo
                .iter()
                .zip(truth)
                .filter(|(a, b)| a == b)
                .count();
            pseudo_accuracy.push(right as f64 / truth.len() as f64);
        }
        for (level, table) in levels.iter_mut().enumerate() {
            let seed = options.seed ^ ((u as u64) << 32 | level as u64);
            let labels = table
                .relabeling
                .apply(&hard_pseudo, table.corrupted, num_classes, seed);
            tallies[level].add(&labels, &hard_pseudo);
            let smoothing = table.relabeling.label_smoothing(config.label_smoothing);
            let labels = Tensor::from_vec(labels, n_u, &device)?;
            // A's step from the checkpoint (momentum included), as training takes it.
            adaptation.restore(&tensors)?;
            let [applied, gradient] = judged_step(
                &mut adaptation,
                (&x_us, &labels, smoothing),
                &judges,
                lr,
                options.judge_statistics,
            )?;
            table.applied.push(applied);
            table.gradient.push(gradient);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for (table, tally) in levels.iter_mut().zip(&tallies) {
        (table.label_shares, table.changed) = tally.summary(table.relabeling);
    }
    let class_prior = ClassPrior {
        judges: LabelTally::class_shares(&judge_labels, num_classes),
        pseudo: levels[0].label_shares.clone(),
        adaptation: adaptation_mix,
    };
    Ok(FeedbackTable {
        step,
        lr_adaptation: lr,
        judge_statistics: options.judge_statistics,
        levels,
        pseudo_accuracy,
        class_prior,
        calibration,
    })
}

/// A's logits on every judging image, one row each, with `mode`'s BatchNorm statistics.
fn judge_logits(
    adaptation: &Network,
    judges: &[(Tensor, Tensor)],
    mode: BnMode,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut rows = Vec::new();
    for (x, _) in judges {
        let logits = adaptation.model.forward_with(x, mode)?.detach();
        rows.extend(logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?);
    }
    Ok(rows)
}

/// A's step on `labels` for `x_us`, then f along the applied update and along the
/// pseudo-label gradient for every judging batch.
fn judged_step(
    adaptation: &mut Network,
    (x_us, labels, label_smoothing): (&Tensor, &Tensor, f64),
    judges: &[(Tensor, Tensor)],
    lr: f64,
    judge_statistics: JudgeStatistics,
) -> anyhow::Result<[Vec<f64>; 2]> {
    let a_us = adaptation
        .model
        .forward_with(x_us, BnMode::TrainNoStatsUpdate)?;
    let grads_u = cross_entropy(&a_us, labels, label_smoothing)?.backward()?;
    let pseudo_gradient: Vec<(usize, Tensor)> = adaptation
        .optimizer
        .params()
        .iter()
        .enumerate()
        .filter_map(|(i, (_, v))| grads_u.get(v.as_tensor()).map(|g| (i, g.detach())))
        .collect();
    let applied = adaptation.optimizer.step_with_directions(&grads_u, lr)?;
    let mut rows = [
        Vec::with_capacity(judges.len()),
        Vec::with_capacity(judges.len()),
    ];
    for (x, y) in judges {
        // With running statistics they are the checkpoint's: the probe's step does not move
        // them (training's step moves them 10 % toward the unlabeled batch's).
        let a_l = adaptation
            .model
            .forward_with(x, judge_statistics.bn_mode())?;
        let loss_l = cross_entropy(&a_l, y, 0.0)?;
        let dots = feedback_dots(adaptation, [&applied, &pseudo_gradient], &loss_l, lr)?;
        for (row, f) in rows.iter_mut().zip(dots) {
            row.push(f);
        }
    }
    Ok(rows)
}

/// The run's labeled training images: its listed subset when it trained on one.
fn labeled_set(config: &TrainConfig, run: &Path) -> anyhow::Result<Dataset> {
    let full = data::load_dataset(&config.labeled.parse()?)?;
    let list = run.join(SUBSET_FILE);
    if list.exists() {
        data::subset::read_list(&list, &full)
    } else {
        Ok(full)
    }
}

/// `count` distinct items of `dataset`, drawn with `seed`.
fn sample(dataset: &Dataset, count: usize, seed: u64) -> anyhow::Result<Dataset> {
    if dataset.len() < count {
        bail!(
            "{}: the probe needs {count} images, the dataset has {}",
            dataset.name,
            dataset.len()
        );
    }
    let mut indices: Vec<usize> = (0..dataset.len()).collect();
    indices.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    indices.truncate(count);
    indices.sort_unstable();
    Ok(dataset.select(format!("{} (probe sample)", dataset.name), &indices))
}

fn probe_loader(config: &TrainConfig, batch: usize, seed: u64, stream: u64) -> data::LoaderConfig {
    data::LoaderConfig {
        seed: seed.wrapping_mul(1_000_003).wrapping_add(stream),
        ..loader_config(config, batch, stream)
    }
}

fn progress(show: bool, len: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "probe [{elapsed_precise}] {wide_bar} {pos}/{len} pseudo-label steps (eta {eta})",
        )
        .expect("static progress template"),
    );
    bar
}

/// A probe's variance splits (B's own labels) and its corruption comparisons.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub table: FeedbackTable,
    pub applied: FeedbackVariance,
    pub gradient: FeedbackVariance,
    pub corruption: Vec<CorruptionEffect>,
    /// How f follows the accuracy of B's labels, when the pseudo-label images are labeled.
    pub accuracy_link: Option<AccuracyLink>,
}

impl ProbeReport {
    pub fn new(table: FeedbackTable) -> anyhow::Result<Self> {
        let clean = &table.levels[0];
        let corruption = table.levels[1..]
            .iter()
            .map(|level| CorruptionEffect::between(clean, level))
            .collect::<anyhow::Result<_>>()?;
        let accuracy_link = if table.pseudo_accuracy.is_empty() {
            None
        } else {
            Some(AccuracyLink::new(&table.pseudo_accuracy, clean)?)
        };
        Ok(Self {
            applied: decompose(&clean.applied)?,
            gradient: decompose(&clean.gradient)?,
            corruption,
            accuracy_link,
            table,
        })
    }

    /// Mean f against the fraction of B's labels relabeled (0 = B's own), one curve per
    /// direction and relabeling, sorted by fraction: for `plot::xy_png` (`--plot`).
    pub fn corruption_curves(&self) -> Vec<(&'static str, Vec<(f64, f64)>)> {
        // The means are already in the report: B's own labels' split, then each level.
        let curve = |kind: Relabeling, clean: f64, pick: fn(&CorruptionEffect) -> f64| {
            let mut points: Vec<(f64, f64)> = std::iter::once((0.0, clean))
                .chain(
                    self.corruption
                        .iter()
                        .filter(|c| c.relabeling == kind)
                        .map(|c| (c.corrupted, pick(c))),
                )
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            points
        };
        let mut curves = vec![
            (
                "f along the applied update",
                curve(Relabeling::OtherClass, self.applied.mean, |c| {
                    c.applied.mean
                }),
            ),
            (
                "f along the pseudo-label gradient",
                curve(Relabeling::OtherClass, self.gradient.mean, |c| {
                    c.gradient.mean
                }),
            ),
        ];
        if self
            .corruption
            .iter()
            .any(|c| c.relabeling == Relabeling::Shuffle)
        {
            curves.push((
                "applied update, labels shuffled (class mix kept)",
                curve(Relabeling::Shuffle, self.applied.mean, |c| c.applied.mean),
            ));
            curves.push((
                "pseudo-label gradient, labels shuffled",
                curve(Relabeling::Shuffle, self.gradient.mean, |c| c.gradient.mean),
            ));
        }
        curves
    }

    pub fn text(&self) -> String {
        let head = |what: &str| {
            format!(
                "f along {what}, step {}, lr_A {}, A judged with {:?} statistics",
                self.table.step, self.table.lr_adaptation, self.table.judge_statistics
            )
        };
        let clean = &self.table.levels[0];
        let mut out = format!(
            "{}\n\n{}",
            self.applied
                .table(&head("the applied update (as training)"), &clean.applied),
            self.gradient
                .table(&head("the pseudo-label gradient"), &clean.gradient)
        );
        if !self.corruption.is_empty() {
            out += "\n\n";
            out += &CorruptionEffect::table(&self.corruption);
        }
        out += "\n\n";
        out += &self.table.class_prior.text();
        out += "\n\n";
        out += &Calibration::text(&self.table.calibration);
        if let Some(link) = &self.accuracy_link {
            out += "\n\n";
            out += &link.text();
        }
        out
    }
}

#[cfg(test)]
mod tests;
