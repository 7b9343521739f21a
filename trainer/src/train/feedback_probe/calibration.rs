//! How confident A is on the images that judge its steps.
//!
//! If A is overconfident on the judging images, any step that makes it less sure (wrong
//! labels, a uniform target) lowers its labeled loss there and earns a positive f, whatever
//! the labels were. The cross-entropy at a few softmax temperatures shows it: an
//! overconfident network's loss falls as the temperature rises above 1. A is judged with
//! batch statistics, as in training; running statistics (as `eval` uses) are given beside.

use serde::Serialize;

use crate::train::JudgeStatistics;

/// Softmax temperatures the judging cross-entropy is given at.
pub const TEMPERATURES: [f64; 5] = [0.75, 1.0, 1.25, 1.5, 2.0];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Calibration {
    /// Batch (as training judges A) or running (as `eval` runs it).
    pub statistics: JudgeStatistics,
    pub accuracy: f64,
    pub mean_top_probability: f64,
    /// (temperature, mean cross-entropy of the logits divided by it), for each of
    /// [`TEMPERATURES`].
    pub cross_entropy: Vec<(f64, f64)>,
}

impl Calibration {
    /// From one row of logits per image and its label.
    pub fn new(statistics: JudgeStatistics, logits: &[Vec<f32>], labels: &[u32]) -> Self {
        let n = logits.len().max(1) as f64;
        let mut right = 0usize;
        let mut top = 0.0;
        for (row, &label) in logits.iter().zip(labels) {
            let p = softmax(row, 1.0);
            let best = argmax(&p);
            right += usize::from(best == label as usize);
            top += p[best];
        }
        let cross_entropy = TEMPERATURES
            .iter()
            .map(|&t| {
                let loss: f64 = logits
                    .iter()
                    .zip(labels)
                    .map(|(row, &label)| -log_softmax(row, t)[label as usize])
                    .sum();
                (t, loss / n)
            })
            .collect();
        Self {
            statistics,
            accuracy: right as f64 / n,
            mean_top_probability: top / n,
            cross_entropy,
        }
    }

    /// The temperature of lowest cross-entropy: above 1 means overconfident.
    pub fn best_temperature(&self) -> f64 {
        self.cross_entropy
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(1.0, |&(t, _)| t)
    }

    pub fn text(rows: &[Calibration]) -> String {
        let mut out = format!(
            "A at the checkpoint on the judging images: cross-entropy at softmax temperature T \
             (lowest above T = 1: overconfident)\n\n{:<11} {:>8} {:>9}",
            "statistics", "accuracy", "mean top"
        );
        for t in TEMPERATURES {
            out += &format!(" {:>7}", format!("T {t}"));
        }
        for row in rows {
            out += &format!(
                "\n{:<11} {:>6.1} % {:>7.1} %",
                row.statistics.name(),
                100.0 * row.accuracy,
                100.0 * row.mean_top_probability
            );
            for (_, loss) in &row.cross_entropy {
                out += &format!(" {loss:>7.4}");
            }
        }
        out
    }
}

/// softmax(row / temperature) in f64.
pub fn softmax(row: &[f32], temperature: f64) -> Vec<f64> {
    log_softmax(row, temperature)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// log softmax(row / temperature) in f64, shifted by the row's maximum: finite where the
/// probability itself underflows to 0 (a far-off logit under unsettled running statistics).
pub fn log_softmax(row: &[f32], temperature: f64) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let shifted: Vec<f64> = row
        .iter()
        .map(|&v| (v as f64 - max) / temperature)
        .collect();
    let log_sum = shifted.iter().map(|z| z.exp()).sum::<f64>().ln();
    shifted.into_iter().map(|z| z - log_sum).collect()
}

/// The mean of the rows' softmax: the class mix a network predicts.
pub fn mean_softmax(logits: &[Vec<f32>], classes: usize) -> Vec<f64> {
    let mut mix = vec![0.0; classes];
    for row in logits {
        for (m, p) in mix.iter_mut().zip(softmax(row, 1.0)) {
            *m += p;
        }
    }
    let n = logits.len().max(1) as f64;
    mix.iter().map(|m| m / n).collect()
}

fn argmax(p: &[f64]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}
