//! Evaluation: the confusion matrix and the metrics FER papers report, computed from it.
//!
//! - `overall_acc`: correct / all samples.
//! - `per_class_acc[c]`: recall of class `c` (diagonal / row sum); undefined (NaN in Rust,
//!   `null` in JSON) for a class without samples.
//! - `mean_class_acc`: the mean of the defined per-class accuracies ("mean accuracy" in
//!   Meta-Face2Exp's tables).
//! - `std_class_acc`: the *population* standard deviation (divide by the count, not count - 1)
//!   of the same per-class accuracies: how unevenly the classes are served.

use std::fmt;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor, D};
use candle_nn::ops::softmax;
use serde_json::{json, Map, Value};

use crate::model::{BnMode, ResNet};

/// Accuracy figures plus the confusion matrix they come from
/// (rows = true class, columns = predicted class, canonical order).
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub n: u64,
    pub overall_acc: f64,
    pub mean_class_acc: f64,
    pub std_class_acc: f64,
    pub per_class_acc: Vec<f64>,
    pub confusion: Vec<Vec<u64>>,
    pub class_names: Vec<String>,
}

impl Metrics {
    /// Computes the metrics of a square confusion matrix with one row per class name.
    pub fn from_confusion(
        confusion: Vec<Vec<u64>>,
        class_names: Vec<String>,
    ) -> anyhow::Result<Self> {
        let k = class_names.len();
        if k == 0 || confusion.len() != k || confusion.iter().any(|row| row.len() != k) {
            bail!("the confusion matrix must be {k}x{k}, one row and column per class");
        }
        let n: u64 = confusion.iter().flatten().sum();
        if n == 0 {
            bail!("cannot compute accuracy of zero samples");
        }
        let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
        let per_class_acc: Vec<f64> = confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let total: u64 = row.iter().sum();
                if total == 0 {
                    f64::NAN
                } else {
                    row[i] as f64 / total as f64
                }
            })
            .collect();
        let defined: Vec<f64> = per_class_acc
            .iter()
            .copied()
            .filter(|a| !a.is_nan())
            .collect();
        let (mean, std) = mean_and_population_std(&defined);
        Ok(Self {
            n,
            overall_acc: correct as f64 / n as f64,
            mean_class_acc: mean,
            std_class_acc: std,
            per_class_acc,
            confusion,
            class_names,
        })
    }

    /// The metrics as JSON with exactly the keys `n`, `overall_acc`, `mean_class_acc`,
    /// `std_class_acc`, `per_class_acc` (class name -> accuracy, `null` for a class without
    /// samples) and `confusion` (list of rows).
    pub fn to_json(&self) -> Value {
        let per_class: Map<String, Value> = self
            .class_names
            .iter()
            .zip(&self.per_class_acc)
            .map(|(name, &acc)| {
                (
                    name.clone(),
                    if acc.is_nan() {
                        Value::Null
                    } else {
                        json!(acc)
                    },
                )
            })
            .collect();
        json!({
            "n": self.n,
            "overall_acc": self.overall_acc,
            "mean_class_acc": self.mean_class_acc,
            "std_class_acc": self.std_class_acc,
            "per_class_acc": per_class,
            "confusion": self.confusion,
        })
    }

    /// A plain-text report: the summary line, per-class accuracy and the confusion matrix.
    pub fn table(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "n = {}  overall acc = {:.2}%  mean class acc = {:.2}%  std class acc = {:.2}%",
            self.n,
            100. * self.overall_acc,
            100. * self.mean_class_acc,
            100. * self.std_class_acc
        )?;
        let width = self
            .class_names
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(5)
            .max(8);
        write!(f, "{:>width$} {:>7} {:>7} |", "true\\pred", "n", "acc")?;
        for name in &self.class_names {
            write!(f, " {:>8}", truncate(name, 8))?;
        }
        writeln!(f)?;
        for (i, name) in self.class_names.iter().enumerate() {
            let total: u64 = self.confusion[i].iter().sum();
            let acc = self.per_class_acc[i];
            let acc = if acc.is_nan() {
                "-".to_string()
            } else {
                format!("{:.2}%", 100. * acc)
            };
            write!(f, "{name:>width$} {total:>7} {acc:>7} |")?;
            for count in &self.confusion[i] {
                write!(f, " {count:>8}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Test-time augmentation of `face2exp eval`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Tta {
    /// Each image once, as it is.
    #[default]
    None,
    /// Each image and its left-right mirror image; the prediction is the argmax of the mean of
    /// the two softmax distributions (what `infer`'s `Session::set_flip_average` does).
    Hflip,
}

/// Runs `model` in eval mode over `batches` of (images (N, 3, S, S), labels) and returns the
/// metrics over the model's classes. Labels must be canonical indices below the class count.
pub fn evaluate(
    model: &ResNet,
    batches: impl Iterator<Item = anyhow::Result<(Tensor, Vec<u32>)>>,
    device: &Device,
) -> anyhow::Result<Metrics> {
    evaluate_with(model, batches, device, Tta::None)
}

/// [`evaluate`] with test-time augmentation.
pub fn evaluate_with(
    model: &ResNet,
    batches: impl Iterator<Item = anyhow::Result<(Tensor, Vec<u32>)>>,
    device: &Device,
    tta: Tta,
) -> anyhow::Result<Metrics> {
    let k = model.config().num_classes;
    let mut confusion = vec![vec![0u64; k]; k];
    for (index, batch) in batches.enumerate() {
        let (images, labels) =
            batch.with_context(|| format!("loading evaluation batch {index}"))?;
        let n = images.dim(0)?;
        if labels.len() != n {
            bail!(
                "evaluation batch {index} has {n} images but {} labels",
                labels.len()
            );
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= k) {
            bail!("evaluation batch {index} has label {bad}, but the model has only {k} classes");
        }
        // No gradient is wanted: detach so the graph holds nothing beyond this batch.
        let images = images.to_device(device)?.detach();
        let logits = model.forward_with(&images, BnMode::Eval)?.detach();
        let scores = match tta {
            Tta::None => logits,
            Tta::Hflip => {
                let mirrored = model.forward_with(&images.flip(&[3])?, BnMode::Eval)?;
                (softmax(&logits, D::Minus1)? + softmax(&mirrored.detach(), D::Minus1)?)?
            }
        };
        let predictions: Vec<u32> = scores.argmax(D::Minus1)?.to_vec1()?;
        for (&truth, &predicted) in labels.iter().zip(&predictions) {
            confusion[truth as usize][predicted as usize] += 1;
        }
    }
    let names = crate::labels::class_names(k)
        .iter()
        .map(|s| s.to_string())
        .collect();
    Metrics::from_confusion(confusion, names)
}

/// Mean and population standard deviation (divided by n, as the per-class std is reported);
/// NaN for no values.
pub(crate) fn mean_and_population_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        crate::labels::class_names(k)
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn metrics_match_hand_computation() {
        // 3 classes: rows 10, 5, 0 samples (the third class has none).
        let confusion = vec![vec![8, 2, 0], vec![1, 2, 2], vec![0, 0, 0]];
        let m = Metrics::from_confusion(confusion, names(3)).unwrap();
        assert_eq!(m.n, 15);
        assert!((m.overall_acc - 10. / 15.).abs() < 1e-12);
        assert_eq!(m.per_class_acc[..2], [0.8, 0.4]);
        assert!(m.per_class_acc[2].is_nan());
        // Mean of 0.8 and 0.4, population std = 0.2.
        assert!((m.mean_class_acc - 0.6).abs() < 1e-12);
        assert!((m.std_class_acc - 0.2).abs() < 1e-12);
        let json = m.to_json();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "confusion",
                "mean_class_acc",
                "n",
                "overall_acc",
                "per_class_acc",
                "std_class_acc"
            ]
        );
        assert_eq!(json["per_class_acc"]["happy"], 0.4);
        assert!(json["per_class_acc"]["sad"].is_null());
        assert_eq!(json["confusion"][1], json!([1, 2, 2]));
        let table = m.table();
        assert!(table.contains("overall acc = 66.67%"), "{table}");
        assert!(
            table.contains("neutral") && table.contains("80.00%"),
            "{table}"
        );
    }

    #[test]
    fn bad_confusion_matrices_are_rejected() {
        assert!(Metrics::from_confusion(vec![vec![0, 0], vec![0, 0]], names(2)).is_err());
        assert!(Metrics::from_confusion(vec![vec![1, 0]], names(2)).is_err());
    }

    #[test]
    fn evaluate_counts_predictions_of_a_real_network() -> anyhow::Result<()> {
        use crate::model::{Arch, ResNetConfig, Stem};
        use candle_nn::{VarBuilder, VarMap};
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let cfg = ResNetConfig {
            arch: Arch::Resnet18,
            stem: Stem::Imagenet,
            num_classes: 7,
            input_size: 32,
        };
        let model = ResNet::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &dev),
        )?;
        let images = Tensor::randn(0f32, 1., (5, 3, 32, 32), &dev)?;
        let predicted: Vec<u32> = model
            .forward_t(&images, false)?
            .argmax(D::Minus1)?
            .to_vec1()?;
        // Label the first three as the network predicts, the last two as something else.
        let mut labels = predicted.clone();
        labels[3] = (predicted[3] + 1) % 7;
        labels[4] = (predicted[4] + 3) % 7;
        let batches = vec![
            Ok((images.narrow(0, 0, 2)?, labels[..2].to_vec())),
            Ok((images.narrow(0, 2, 3)?, labels[2..].to_vec())),
        ];
        let m = evaluate(&model, batches.into_iter(), &dev)?;
        assert_eq!(m.n, 5);
        assert!((m.overall_acc - 0.6).abs() < 1e-12);
        let diagonal: u64 = (0..7).map(|i| m.confusion[i][i]).sum();
        assert_eq!(diagonal, 3);
        assert!(m.confusion[labels[3] as usize][predicted[3] as usize] >= 1);
        // Flip averaging: labels set to the argmax of the mean of both views' softmax, done
        // by hand, must all count as right; the plain predictions are not all the same.
        let mirrored = images.flip(&[3])?;
        let by_hand: Vec<u32> = (softmax(&model.forward_t(&images, false)?, D::Minus1)?
            + softmax(&model.forward_t(&mirrored, false)?, D::Minus1)?)?
        .argmax(D::Minus1)?
        .to_vec1()?;
        let flip = evaluate_with(
            &model,
            vec![Ok((images.clone(), by_hand.clone()))].into_iter(),
            &dev,
            Tta::Hflip,
        )?;
        assert_eq!(flip.overall_acc, 1.0);
        let column: Vec<f32> = mirrored.narrow(3, 0, 1)?.flatten_all()?.to_vec1()?;
        let last: Vec<f32> = images.narrow(3, 31, 1)?.flatten_all()?.to_vec1()?;
        assert_eq!(column, last, "flip(3) mirrors left-right");
        let bad = vec![Ok((images.narrow(0, 0, 1)?, vec![7u32]))];
        let err = evaluate(&model, bad.into_iter(), &dev)
            .unwrap_err()
            .to_string();
        assert!(err.contains("label 7"), "{err}");
        Ok(())
    }
}
