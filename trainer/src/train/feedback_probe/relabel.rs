//! The labels A steps on in the probe's comparison levels, and the class mix of every label
//! set involved.
//!
//! Moving B's labels to other classes does two things at once: it makes them wrong, and it
//! flattens the batch's class histogram toward uniform. Permuting them among the batch's own
//! images makes them just as wrong (for most images) and leaves the histogram as it was. f's
//! response to the two tells its response to correctness from its response to the class mix.
//! A step toward the uniform distribution uses no labels at all: it only makes A less sure.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::labels::Expression;

/// How a comparison level's labels differ from B's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Relabeling {
    /// The fraction of B's labels moved to another class (uniform over the others): wrong
    /// labels, and the class histogram flattened toward uniform. Level 0 (B's own labels) is
    /// this at fraction 0.
    OtherClass,
    /// The fraction of B's labels permuted among the chosen images: the batch's class
    /// histogram is unchanged, the labels are wrong wherever two chosen images differ.
    Shuffle,
    /// No labels: A steps toward the uniform distribution (label smoothing 1), a step that
    /// only makes it less sure. Its fraction is 1.
    Uniform,
}

impl Relabeling {
    pub fn apply(self, labels: &[u32], fraction: f64, classes: usize, seed: u64) -> Vec<u32> {
        match self {
            Relabeling::OtherClass => corrupt(labels, fraction, classes, seed),
            Relabeling::Shuffle => shuffle(labels, fraction, seed),
            // The step's loss ignores them.
            Relabeling::Uniform => labels.to_vec(),
        }
    }

    /// The label smoothing of A's step: the run's, or 1 (all weight on the uniform
    /// distribution) for the uniform target.
    pub fn label_smoothing(self, run_smoothing: f64) -> f64 {
        match self {
            Relabeling::Uniform => 1.0,
            _ => run_smoothing,
        }
    }

    /// A short column label for the report.
    pub fn short(self) -> &'static str {
        match self {
            Relabeling::OtherClass => "other",
            Relabeling::Shuffle => "shuffle",
            Relabeling::Uniform => "uniform",
        }
    }
}

/// `labels` with round(`fraction` x n) of them, chosen with `seed`, moved to another class
/// (uniform over the other `classes - 1`).
pub fn corrupt(labels: &[u32], fraction: f64, classes: usize, seed: u64) -> Vec<u32> {
    let mut out = labels.to_vec();
    if classes < 2 {
        return out;
    }
    let (chosen, mut rng) = choose(labels.len(), fraction, seed);
    for i in chosen {
        let shift = rand::Rng::gen_range(&mut rng, 1..classes as u32);
        out[i] = (out[i] + shift) % classes as u32;
    }
    out
}

/// `labels` with round(`fraction` x n) of them, chosen with `seed`, permuted among
/// themselves: the class histogram is exactly `labels`'.
pub fn shuffle(labels: &[u32], fraction: f64, seed: u64) -> Vec<u32> {
    let mut out = labels.to_vec();
    let (chosen, mut rng) = choose(labels.len(), fraction, seed);
    let mut moved: Vec<u32> = chosen.iter().map(|&i| labels[i]).collect();
    moved.shuffle(&mut rng);
    for (i, label) in chosen.into_iter().zip(moved) {
        out[i] = label;
    }
    out
}

/// round(`fraction` x n) distinct positions of n, and the generator to go on with.
fn choose(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, ChaCha8Rng) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let count = ((fraction * n as f64).round() as usize).min(n);
    if count == 0 {
        return (Vec::new(), rng);
    }
    let mut positions: Vec<usize> = (0..n).collect();
    positions.shuffle(&mut rng);
    positions.truncate(count);
    (positions, rng)
}

/// Counts one level's labels per class, and how many differ from B's.
#[derive(Clone, Debug)]
pub struct LabelTally {
    per_class: Vec<u64>,
    changed: u64,
}

impl LabelTally {
    pub fn new(classes: usize) -> Self {
        Self {
            per_class: vec![0; classes],
            changed: 0,
        }
    }

    /// Each class's share of `labels`.
    pub fn class_shares(labels: &[u32], classes: usize) -> Vec<f64> {
        let mut tally = Self::new(classes);
        tally.add(labels, labels);
        tally.summary(Relabeling::OtherClass).0
    }

    /// Counts `labels`, the level's labels for a batch whose own (B's) labels are `own`.
    pub fn add(&mut self, labels: &[u32], own: &[u32]) {
        for &label in labels {
            self.per_class[label as usize] += 1;
        }
        self.changed += labels.iter().zip(own).filter(|(a, b)| a != b).count() as u64;
    }

    /// Each class's share of the targets and the fraction of labels that differ from B's
    /// (0 and all 0 when nothing was counted). The uniform target ignores the labels: every
    /// one is replaced, by 1 / classes of each class.
    pub fn summary(&self, relabeling: Relabeling) -> (Vec<f64>, f64) {
        let classes = self.per_class.len();
        let total = self.per_class.iter().sum::<u64>();
        if relabeling == Relabeling::Uniform {
            return (vec![1.0 / classes as f64; classes], f64::from(total > 0));
        }
        let total = total.max(1) as f64;
        let shares = self.per_class.iter().map(|&c| c as f64 / total).collect();
        (shares, self.changed as f64 / total)
    }
}

/// The class mix A is judged on against the one B's labels teach it: if f rewards labels by
/// how they move A's predicted class mix toward the judges', it is the class prior, not the
/// labels' correctness, that B is taught.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassPrior {
    /// Class shares of the labeled judging batches' labels.
    pub judges: Vec<f64>,
    /// Class shares of B's hard pseudo labels over all pseudo-label batches.
    pub pseudo: Vec<f64>,
    /// A's softmax at the checkpoint, averaged over the judging images.
    pub adaptation: Vec<f64>,
}

impl ClassPrior {
    /// Total variation distance (half the L1 distance) of two class mixes: the share of
    /// labels that would have to change class to turn one into the other.
    pub fn distance(a: &[f64], b: &[f64]) -> f64 {
        0.5 * a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>()
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "Class mix (%): the judging labels, B's pseudo labels, A's mean prediction on the \
             judging images\n\n{:<9} {:>7} {:>7} {:>7}\n",
            "class", "judges", "B", "A"
        );
        for (class, ((j, p), a)) in self
            .judges
            .iter()
            .zip(&self.pseudo)
            .zip(&self.adaptation)
            .enumerate()
        {
            out += &format!(
                "{:<9} {:>7.1} {:>7.1} {:>7.1}\n",
                Expression(class).name(),
                100.0 * j,
                100.0 * p,
                100.0 * a
            );
        }
        out += &format!(
            "distance to the judges' mix (total variation): B's labels {:.3}, A's prediction {:.3}",
            Self::distance(&self.judges, &self.pseudo),
            Self::distance(&self.judges, &self.adaptation)
        );
        out
    }
}
