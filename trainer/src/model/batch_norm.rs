//! BatchNorm2d with the running-statistics update under the caller's control.
//!
//! `candle_nn::BatchNorm` always updates its running statistics in train mode. Meta-Face2Exp
//! evaluates one network twice in a step (once per objective), and PyTorch-equivalent training
//! needs exactly one update per optimiser step, so the mode is explicit here: [`BnMode`].

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::ops;

/// PyTorch's defaults for `nn.BatchNorm2d`.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// How BatchNorm layers normalise, and whether they touch their running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    /// Normalise with batch statistics and update the running mean/var in place
    /// (PyTorch `model.train()`).
    Train,
    /// Normalise with batch statistics, leave running statistics untouched: for a second
    /// forward pass of the same network within one optimisation step.
    TrainNoStatsUpdate,
    /// Normalise with the running statistics (PyTorch `model.eval()`).
    Eval,
}

impl BnMode {
    pub fn uses_batch_stats(self) -> bool {
        !matches!(self, BnMode::Eval)
    }
}

/// `nn.BatchNorm2d` over (N, C, H, W) with torchvision's tensor names
/// (`weight`, `bias`, `running_mean`, `running_var`).
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    // Vars so the update is in place: when the VarBuilder comes from a VarMap these share
    // storage with the map's entries, so saving the map saves the updated statistics.
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

/// Builds a BatchNorm2d under `vb` (e.g. `vb.pp("bn1")`), PyTorch's init: weight 1, bias 0,
/// running mean 0, running var 1.
pub fn batch_norm2d(channels: usize, vb: VarBuilder) -> Result<BatchNorm2d> {
    let weight = vb.get_with_hints(channels, "weight", Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.))?;
    let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.))?;
    let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.))?;
    Ok(BatchNorm2d {
        weight,
        bias,
        running_mean: Var::from_tensor(&running_mean)?,
        running_var: Var::from_tensor(&running_var)?,
        eps: BN_EPS,
        momentum: BN_MOMENTUM,
    })
}

impl BatchNorm2d {
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.forward_then(x, mode, false)
    }

    /// `relu(self.forward(x, mode))`, fused into one op in train mode on the CPU.
    pub fn forward_relu(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.forward_then(x, mode, true)
    }

    fn forward_then(&self, x: &Tensor, mode: BnMode, relu: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        if c != self.weight.dim(0)? {
            candle_core::bail!(
                "batch norm expects {} channels, input has shape {:?}",
                self.weight.dim(0)?,
                x.shape()
            )
        }
        let per_channel = (1, c, 1, 1);
        if !mode.uses_batch_stats() {
            // Copy the statistics so a later in-place update cannot change what this graph saw.
            let mean = self.running_mean.as_tensor().detach().copy()?;
            let var = self.running_var.as_tensor().detach().copy()?;
            let scale = self.weight.div(&(var + self.eps)?.sqrt()?)?;
            let shift = self.bias.sub(&mean.mul(&scale)?)?;
            let y = x
                .broadcast_mul(&scale.reshape(per_channel)?)?
                .broadcast_add(&shift.reshape(per_channel)?)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let count = n * h * w;
        if count < 2 {
            candle_core::bail!(
                "batch norm in train mode needs more than one value per channel, input has shape {:?}",
                x.shape()
            )
        }
        // Fused on the CPU (f64 accumulation across planes, like PyTorch's), candle ops elsewhere.
        let (y, batch_mean, batch_var) =
            ops::batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
        if mode == BnMode::Train {
            let m = self.momentum;
            let dtype = self.running_mean.dtype();
            // PyTorch keeps the unbiased variance as its running estimate.
            let unbiased = (batch_var.to_dtype(dtype)? * (count as f64 / (count - 1) as f64))?;
            let rm = self.running_mean.as_tensor().detach();
            let rv = self.running_var.as_tensor().detach();
            self.running_mean
                .set(&((rm * (1. - m))? + (batch_mean.to_dtype(dtype)? * m)?)?)?;
            self.running_var
                .set(&((rv * (1. - m))? + (unbiased * m)?)?)?;
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn channel_values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn train_mode_normalises_with_batch_stats_and_updates_running_stats() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let bn = batch_norm2d(
            2,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev).pp("bn"),
        )?;
        // Channel 0 holds 1..4, channel 1 holds 10,10,10,30 (N=2, H=1, W=2).
        let x = Tensor::new(
            &[[[[1f32, 2.]], [[10., 10.]]], [[[3., 4.]], [[10., 30.]]]],
            &dev,
        )?;
        let y = bn.forward(&x, BnMode::Train)?;
        // Channel 0: mean 2.5, biased var 1.25.
        let y0: Vec<f32> = y.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
        let expect = [1f32, 2., 3., 4.].map(|v| (v - 2.5) / (1.25f32 + 1e-5).sqrt());
        let (a, b) = (y0, [expect[0], expect[1], expect[2], expect[3]]);
        for (g, e) in a.iter().zip(b) {
            assert!((g - e).abs() < 1e-5, "{g} vs {e}");
        }
        // Running mean 0.9*0 + 0.1*[2.5, 15]; running var 0.9*1 + 0.1*unbiased var [5/3, 100].
        let rm = channel_values(bn.running_mean());
        let rv = channel_values(bn.running_var());
        assert!(
            (rm[0] - 0.25).abs() < 1e-6 && (rm[1] - 1.5).abs() < 1e-6,
            "{rm:?}"
        );
        assert!((rv[0] - (0.9 + 0.1 * 5. / 3.)).abs() < 1e-5, "{rv:?}");
        assert!((rv[1] - (0.9 + 10.)).abs() < 1e-4, "{rv:?}");
        // The update lands in the VarMap under torchvision's names.
        let stored = varmap.data().lock().unwrap()["bn.running_mean"]
            .as_tensor()
            .clone();
        assert_eq!(channel_values(&stored), rm);
        Ok(())
    }

    #[test]
    fn no_stats_update_mode_keeps_running_stats_and_eval_uses_them() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let bn = batch_norm2d(1, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        let x = Tensor::new(&[[[[1f32, 3.]]]], &dev)?;
        let y = bn.forward(&x, BnMode::TrainNoStatsUpdate)?;
        assert_eq!(channel_values(bn.running_mean()), [0.0]);
        assert_eq!(channel_values(bn.running_var()), [1.0]);
        let y: Vec<f32> = y.flatten_all()?.to_vec1()?;
        assert!(
            (y[0] + 1.0).abs() < 1e-4 && (y[1] - 1.0).abs() < 1e-4,
            "{y:?}"
        );
        // Eval with mean 0, var 1: identity up to eps.
        let e: Vec<f32> = bn.forward(&x, BnMode::Eval)?.flatten_all()?.to_vec1()?;
        assert!(
            (e[0] - 1.0).abs() < 1e-4 && (e[1] - 3.0).abs() < 1e-4,
            "{e:?}"
        );
        assert!(bn.forward(&x.narrow(3, 0, 1)?, BnMode::Train).is_err());
        Ok(())
    }
}
