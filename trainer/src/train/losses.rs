//! Losses shared by the supervised and the Meta-Face2Exp steps.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::ops::log_softmax;

/// Mean cross-entropy of `logits` (N, K) against class indices `targets` (N, U32), with label
/// smoothing `eps` as `torch.nn.CrossEntropyLoss(label_smoothing=eps)`:
/// `(1 - eps) * NLL + eps * mean_k(-log p_k)`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, eps: f64) -> Result<Tensor> {
    let log_p = log_softmax(logits, D::Minus1)?;
    let nll = log_p
        .gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?
        .mean_all()?;
    if eps == 0.0 {
        return Ok(nll);
    }
    let uniform = log_p.mean(D::Minus1)?.neg()?.mean_all()?;
    (nll * (1.0 - eps))? + (uniform * eps)?
}

/// Per-sample soft cross-entropy `-sum_k p_k log softmax(logits)_k`, shape (N,).
pub fn soft_cross_entropy(logits: &Tensor, target_probs: &Tensor) -> Result<Tensor> {
    (target_probs * log_softmax(logits, D::Minus1)?)?
        .sum(D::Minus1)?
        .neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_computation() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, 0.0, 3.0]], &dev)?;
        let targets = Tensor::new(&[1u32, 0], &dev)?;
        // log-sum-exp per row: ln(e^1 + e^2 + e^0.5), ln(2 + e^3)
        let lse0 = (1f64.exp() + 2f64.exp() + 0.5f64.exp()).ln();
        let lse1 = (2.0 + 3f64.exp()).ln();
        let nll = ((lse0 - 2.0) + (lse1 - 0.0)) / 2.0;
        let got = cross_entropy(&logits, &targets, 0.0)?.to_scalar::<f32>()? as f64;
        assert!((got - nll).abs() < 1e-5, "{got} vs {nll}");
        let uniform = ((3.0 * lse0 - 3.5) / 3.0 + (3.0 * lse1 - 3.0) / 3.0) / 2.0;
        let got = cross_entropy(&logits, &targets, 0.1)?.to_scalar::<f32>()? as f64;
        assert!((got - (0.9 * nll + 0.1 * uniform)).abs() < 1e-5);
        // Soft CE with a one-hot target is the NLL of that sample.
        let onehot = Tensor::new(&[[0.0f32, 1.0, 0.0], [1.0, 0.0, 0.0]], &dev)?;
        let soft = soft_cross_entropy(&logits, &onehot)?
            .mean_all()?
            .to_scalar::<f32>()? as f64;
        assert!((soft - nll).abs() < 1e-5);
        Ok(())
    }
}
