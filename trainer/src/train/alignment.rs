//! Distribution alignment of B's pseudo labels (ReMixMatch, Berthelot et al., ICLR 2020; not
//! part of Face2Exp, off by default).
//!
//! B's pseudo distribution p on face-recognition images leans to the classes such faces show
//! most; A learns from that lean and L_c hands it back to B. Alignment multiplies p by
//! target / running mean of p (target: uniform, the class-balanced labeled sampling B is
//! trained with) and renormalises, so that over time every class is proposed about equally
//! often. The weights are applied as a shift of the logits, log(target) - log(mean), which is
//! the same thing before the softmax and also moves the hard pseudo labels (argmax).

use candle_core::{Device, Tensor};

/// The checkpoint metadata key the running mean is kept under.
pub const METADATA_KEY: &str = "pseudo_marginal";

/// B's logits divided by the temperature and, with alignment, shifted by the classes' log
/// weights ([`PseudoMarginal::log_weights_tensor`]): their softmax is the pseudo distribution,
/// their argmax the hard labels. Training and `probe-feedback` both draw labels through it.
pub fn pseudo_logits(
    logits: &Tensor,
    temperature: f64,
    shift: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let scaled = (logits / temperature)?;
    match shift {
        Some(shift) => scaled.broadcast_add(shift),
        None => Ok(scaled),
    }
}

/// The running mean of B's (unaligned) pseudo distribution; empty until the first batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PseudoMarginal {
    pub mean: Vec<f64>,
}

impl PseudoMarginal {
    /// Folds one batch's mean distribution in: the first batch starts the average (so no
    /// correction for a start at 0 is needed), later ones move it by 1 - decay.
    pub fn update(&mut self, batch_mean: &[f64], decay: f64) {
        if self.mean.len() != batch_mean.len() {
            self.mean = batch_mean.to_vec();
            return;
        }
        for (running, &batch) in self.mean.iter_mut().zip(batch_mean) {
            *running = decay * *running + (1.0 - decay) * batch;
        }
    }

    /// log(1 / K) - log(mean_k) per class, to add to logits divided by the temperature.
    /// Floored so that a class B never proposes gets a large but finite boost.
    pub fn log_weights(&self) -> Vec<f64> {
        let uniform = 1.0 / self.mean.len() as f64;
        self.mean
            .iter()
            .map(|&m| uniform.ln() - m.max(1e-6).ln())
            .collect()
    }

    /// The largest over the smallest class share of the running mean (1 when balanced).
    pub fn imbalance(&self) -> f64 {
        let max = self.mean.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min = self.mean.iter().copied().fold(f64::INFINITY, f64::min);
        max / min.max(1e-12)
    }

    /// The means as checkpoint metadata: comma-separated, lossless (`{:e}`).
    pub fn to_metadata(&self) -> String {
        let parts: Vec<String> = self.mean.iter().map(|m| format!("{m:e}")).collect();
        parts.join(",")
    }

    pub fn from_metadata(text: &str) -> anyhow::Result<Self> {
        let mean = if text.is_empty() {
            Vec::new()
        } else {
            text.split(',')
                .map(|part| {
                    part.parse::<f64>().map_err(|e| {
                        anyhow::anyhow!("checkpoint metadata `{METADATA_KEY}`: `{part}`: {e}")
                    })
                })
                .collect::<anyhow::Result<_>>()?
        };
        Ok(Self { mean })
    }

    /// [`Self::log_weights`] as a (1, K) tensor to broadcast over a batch of logits.
    pub fn log_weights_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        let weights: Vec<f32> = self.log_weights().iter().map(|&w| w as f32).collect();
        Tensor::from_vec(weights, (1, self.mean.len()), device)
    }
}

#[cfg(test)]
mod tests {
    use super::PseudoMarginal;
    use candle_core::{Device, Tensor, D};
    use candle_nn::ops::softmax_last_dim;

    #[test]
    fn the_first_batch_starts_the_mean_and_later_ones_move_it() {
        let mut marginal = PseudoMarginal::default();
        marginal.update(&[0.5, 0.3, 0.2], 0.9);
        assert_eq!(marginal.mean, vec![0.5, 0.3, 0.2]);
        marginal.update(&[0.0, 0.0, 1.0], 0.9);
        let expected = [0.45, 0.27, 0.28];
        for (m, e) in marginal.mean.iter().zip(expected) {
            assert!((m - e).abs() < 1e-12, "{:?}", marginal.mean);
        }
        assert!((marginal.imbalance() - 0.45 / 0.27).abs() < 1e-12);
    }

    #[test]
    fn a_batch_that_is_the_running_mean_aligns_to_uniform() {
        // Every row is the running mean, so p * uniform / mean is constant over the classes.
        let p = [0.6f32, 0.25, 0.1, 0.05];
        let mut marginal = PseudoMarginal::default();
        marginal.update(&p.map(f64::from), 0.99);
        let device = Device::Cpu;
        let logits = Tensor::new(&[p.map(f32::ln), p.map(f32::ln)], &device).unwrap();
        let shifted = logits
            .broadcast_add(&marginal.log_weights_tensor(&device).unwrap())
            .unwrap();
        let aligned = softmax_last_dim(&shifted)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for row in aligned {
            for q in row {
                assert!((q - 0.25).abs() < 1e-6, "{q}");
            }
        }
    }

    #[test]
    fn alignment_moves_the_hard_label_to_a_rarely_proposed_class() {
        // Class 0 is proposed 70 % of the time, class 1 10 %: a row that B puts at 0.5 / 0.4
        // becomes class 1 once each is divided by how often it is proposed.
        let mut marginal = PseudoMarginal::default();
        marginal.update(&[0.7, 0.1, 0.2], 0.99);
        let device = Device::Cpu;
        let logits = Tensor::new(&[[0.5f32.ln(), 0.4f32.ln(), 0.1f32.ln()]], &device).unwrap();
        assert_eq!(
            logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap(),
            [0]
        );
        let shifted = logits
            .broadcast_add(&marginal.log_weights_tensor(&device).unwrap())
            .unwrap();
        assert_eq!(
            shifted.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap(),
            [1]
        );
    }

    #[test]
    fn metadata_round_trips_and_names_a_bad_number() {
        let marginal = PseudoMarginal {
            mean: vec![0.1, 1.0 / 3.0, 0.5666666666666667],
        };
        let back = PseudoMarginal::from_metadata(&marginal.to_metadata()).unwrap();
        assert_eq!(back, marginal);
        assert_eq!(
            PseudoMarginal::from_metadata("").unwrap(),
            PseudoMarginal::default()
        );
        let err = PseudoMarginal::from_metadata("0.1,zero").unwrap_err();
        assert!(err.to_string().contains("`zero`"), "{err}");
    }
}
