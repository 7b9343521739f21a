//! SGD with momentum, Nesterov and decoupled-by-parameter weight decay, with PyTorch's update
//! rule, and with its state exposed by name so checkpoints can save and restore it exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::ops::{self, SgdStep};
use serde::{Deserialize, Serialize};

/// Hyper-parameters of [`Sgd`]. Serde names match the TOML config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    /// L2 weight decay, applied to conv and linear weights only (tensors of rank >= 2): decaying
    /// BatchNorm scales and biases hurts small-data training and the official code excludes them.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        }
    }
}

/// Stochastic gradient descent as `torch.optim.SGD` (dampening 0):
/// `g = grad + wd * p; buf = momentum * buf + g; d = nesterov ? g + momentum * buf : buf; p -= lr * d`.
pub struct Sgd {
    params: Vec<(String, Var)>,
    momentum_buffers: HashMap<String, Tensor>,
    config: SgdConfig,
}

impl Sgd {
    pub fn new(params: Vec<(String, Var)>, config: SgdConfig) -> Self {
        Self {
            params,
            momentum_buffers: HashMap::new(),
            config,
        }
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Applies one update with learning rate `lr`. Parameters without a gradient are left alone.
    /// On the CPU (f32, contiguous, with momentum) parameters and momentum buffers are updated
    /// in place by one fused op (`SgdStep`), bit-identical to the tensor-op update used
    /// elsewhere.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.update(grads, lr, false).map(|_| ())
    }

    /// [`Sgd::step`], returning the applied update direction `d` per parameter (by index in
    /// [`Sgd::params`], so that `p_new = p_old - lr * d`), which Meta-Face2Exp's exact feedback
    /// needs.
    pub fn step_with_directions(
        &mut self,
        grads: &GradStore,
        lr: f64,
    ) -> Result<Vec<(usize, Tensor)>> {
        self.update(grads, lr, true)
    }

    fn update(
        &mut self,
        grads: &GradStore,
        lr: f64,
        keep_directions: bool,
    ) -> Result<Vec<(usize, Tensor)>> {
        let mut applied = Vec::with_capacity(self.params.len());
        for (index, (name, var)) in self.params.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let param = var.as_tensor();
            let decays = self.config.weight_decay != 0.0 && var.rank() >= 2;
            let fused = self.config.momentum != 0.0 && ops::in_place_update_applies(&[param, grad]);
            if fused {
                let weight_decay = decays.then_some(self.config.weight_decay as f32);
                let momentum = self.config.momentum as f32;
                let buffer = match self.momentum_buffers.get(name) {
                    Some(buffer) if buffer.is_contiguous() => buffer.clone(),
                    Some(buffer) => buffer.copy()?,
                    // Zero times the momentum plus g is exactly g: the first step matches.
                    None => param.zeros_like()?,
                };
                if keep_directions {
                    // The direction the step below applies, from the buffer and parameter
                    // before it, by the tensor ops it matches bit for bit.
                    let g = decayed_grad(grad, param, decays, self.config.weight_decay)?;
                    let (_, direction) = tensor_direction(&self.config, &g, Some(&buffer))?;
                    applied.push((index, direction.detach()));
                }
                let step = SgdStep {
                    buffer: &buffer,
                    lr: lr as f32,
                    momentum,
                    weight_decay,
                    nesterov: self.config.nesterov,
                };
                param.inplace_op2(grad, &step)?;
                self.momentum_buffers.insert(name.clone(), buffer);
                continue;
            }
            // Gradients computed from tracked activations carry candle's op graph; keeping them
            // (in momentum buffers) without detaching would chain every step's graph to the
            // next and grow memory without bound.
            let g = decayed_grad(grad, param, decays, self.config.weight_decay)?;
            let direction = if self.config.momentum != 0.0 {
                let old = self.momentum_buffers.get(name);
                let (buf, direction) = tensor_direction(&self.config, &g, old)?;
                self.momentum_buffers.insert(name.clone(), buf.detach());
                direction
            } else {
                g
            };
            var.set(&(param - (&direction * lr)?)?)?;
            if keep_directions {
                applied.push((index, direction));
            }
        }
        Ok(applied)
    }

    /// Momentum buffers by parameter name, for checkpoints.
    pub fn state(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.momentum_buffers.iter()
    }

    /// Restores momentum buffers saved by [`Sgd::state`]; names that are not parameters are an error.
    pub fn load_state(&mut self, state: HashMap<String, Tensor>) -> anyhow::Result<()> {
        for (name, buf) in &state {
            let (_, var) = self.params.iter().find(|(n, _)| n == name).ok_or_else(|| {
                anyhow::anyhow!("optimizer state names unknown parameter `{name}`")
            })?;
            anyhow::ensure!(
                var.shape() == buf.shape(),
                "optimizer state for `{name}` has shape {:?}, parameter has {:?}",
                buf.shape(),
                var.shape()
            );
        }
        self.momentum_buffers = state;
        Ok(())
    }
}

/// The L2 norm of `params`' gradients taken together, before clipping, and whether they were
/// clipped: where the norm exceeds `max_norm`, the gradients in `grads` are scaled down to it,
/// as `torch.nn.utils.clip_grad_norm_` does (its 1e-6 included), before weight decay is added.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[(String, Var)],
    max_norm: Option<f64>,
) -> Result<(f64, bool)> {
    let mut sum_squares = 0f64;
    for (_, var) in params {
        if let Some(grad) = grads.get(var.as_tensor()) {
            sum_squares += grad.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sum_squares.sqrt();
    let coefficient = max_norm.map_or(1.0, |max_norm| max_norm / (norm + 1e-6));
    if coefficient >= 1.0 {
        return Ok((norm, false));
    }
    for (_, var) in params {
        if let Some(grad) = grads.get(var.as_tensor()) {
            let scaled = (grad.detach() * coefficient)?;
            grads.insert(var.as_tensor(), scaled);
        }
    }
    Ok((norm, true))
}

/// The gradient with weight decay where the parameter takes it, detached from candle's graph.
fn decayed_grad(grad: &Tensor, param: &Tensor, decays: bool, weight_decay: f64) -> Result<Tensor> {
    let g = grad.detach();
    if decays {
        g + (param * weight_decay)?
    } else {
        Ok(g)
    }
}

/// SGD's new momentum buffer and update direction in tensor ops, from the decayed gradient `g`
/// and the previous buffer (none on the first step): `b = b * momentum + g`, then `g + b *
/// momentum` (Nesterov) or `b`.
fn tensor_direction(
    config: &SgdConfig,
    g: &Tensor,
    buffer: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let buf = match buffer {
        Some(buf) => ((buf * config.momentum)? + g)?,
        None => g.clone(),
    };
    let direction = if config.nesterov {
        (g + (&buf * config.momentum)?)?
    } else {
        buf.clone()
    };
    Ok((buf, direction))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn clip_grad_norm_scales_the_joint_norm_down_to_the_bound() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[1.0f32, 0.0], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[1.0f32], &dev)?)?;
        let params = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
        // loss = 1.5 |w|^2 + 2 b^2 here: gradients (3, 0) and 4, a joint norm of 5.
        let loss = ((w.as_tensor().sqr()?.sum_all()? * 1.5)?
            + (b.as_tensor().sqr()? * 2.0)?.sum_all()?)?;
        let values = |grads: &GradStore| -> Result<Vec<f32>> {
            let mut out = grads.get(w.as_tensor()).unwrap().to_vec1::<f32>()?;
            out.extend(grads.get(b.as_tensor()).unwrap().to_vec1::<f32>()?);
            Ok(out)
        };
        let mut unclipped = loss.backward()?;
        assert_eq!(clip_grad_norm(&mut unclipped, &params, None)?, (5.0, false));
        assert_eq!(values(&unclipped)?, [3.0, 0.0, 4.0]);
        let mut loose = loss.backward()?;
        assert_eq!(
            clip_grad_norm(&mut loose, &params, Some(6.0))?,
            (5.0, false)
        );
        assert_eq!(
            values(&loose)?,
            [3.0, 0.0, 4.0],
            "under the bound nothing changes"
        );
        let mut clipped = loss.backward()?;
        assert_eq!(
            clip_grad_norm(&mut clipped, &params, Some(1.0))?,
            (5.0, true)
        );
        for (got, want) in values(&clipped)?.iter().zip([0.6, 0.0, 0.8]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        Ok(())
    }

    /// Reference values computed by hand from torch.optim.SGD's documented update rule.
    #[test]
    fn matches_pytorch_update_rule() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[0.5f32], &dev)?)?;
        let config = SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.1,
        };
        let mut sgd = Sgd::new(
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            config,
        );
        for _ in 0..2 {
            // loss = sum(w) + 3 b  => grad w = [1, 1], grad b = 3
            let loss = (w.as_tensor().sum_all()? + (b.as_tensor() * 3.0)?.sum_all()?)?;
            let grads = loss.backward()?;
            sgd.step(&grads, 0.1)?;
        }
        // w (decayed): step1 g=[1.1,0.8], buf=g, d=g+0.9g=[2.09,1.52] -> w=[0.791,-2.152]
        // step2 g=[1.0791,0.7848], buf=0.9*[1.1,0.8]+g=[2.0691,1.5048],
        // d=g+0.9*buf=[2.94129,2.13912] -> w=[0.496871,-2.365912]
        let got = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        assert!(
            (got[0] - 0.496871).abs() < 1e-5 && (got[1] + 2.365912).abs() < 1e-5,
            "{got:?}"
        );
        // b (no decay, rank 1): d1=3+2.7=5.7 -> 0.5-0.57=-0.07; buf2=5.7, d2=3+0.9*5.7=8.13 -> -0.883
        let got = b.as_tensor().to_vec1::<f32>()?;
        assert!((got[0] + 0.883).abs() < 1e-5, "{got:?}");
        Ok(())
    }

    /// A gradient that depends on the weights carries candle's op graph; the optimizer state
    /// must not keep it, or every step's graph stays alive (memory grew to 24 GB in a real run).
    #[test]
    fn optimizer_state_holds_no_autograd_graph() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &dev)?)?;
        let mut sgd = Sgd::new(vec![("w".into(), w.clone())], SgdConfig::default());
        for _ in 0..3 {
            let loss = (w.as_tensor() * w.as_tensor())?.sum_all()?;
            let grads = loss.backward()?;
            assert!(grads.get(w.as_tensor()).unwrap().track_op(), "test premise");
            for (_, direction) in sgd.step_with_directions(&grads, 0.1)? {
                assert!(!direction.track_op());
            }
            assert!(sgd.state().all(|(_, buf)| !buf.track_op()));
        }
        Ok(())
    }

    /// The tensor-op update the fused CPU path replaced, written out as it was.
    fn reference_step(
        config: &SgdConfig,
        param: &Tensor,
        grad: &Tensor,
        buffer: Option<&Tensor>,
        lr: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let mut g = grad.clone();
        if config.weight_decay != 0.0 && param.rank() >= 2 {
            g = (g + (param * config.weight_decay)?)?;
        }
        let buf = match buffer {
            Some(buf) => ((buf * config.momentum)? + &g)?,
            None => g.clone(),
        };
        let direction = if config.nesterov {
            (&g + (&buf * config.momentum)?)?
        } else {
            buf.clone()
        };
        Ok(((param - (&direction * lr)?)?, buf, direction))
    }

    #[test]
    fn fused_cpu_update_is_bit_identical_to_the_tensor_ops() -> Result<()> {
        let dev = Device::Cpu;
        for nesterov in [true, false] {
            let config = SgdConfig {
                momentum: 0.9,
                nesterov,
                weight_decay: 5e-4,
            };
            // A conv-like weight (decayed) and a bias-like vector (not), one of them larger
            // than a rayon chunk so the split path runs too.
            let shapes: [&[usize]; 2] = [&[70, 33, 3, 3], &[200_003]];
            let vars: Vec<(String, Var)> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| Ok((format!("p{i}"), Var::randn(0f32, 1.0, *s, &dev)?)))
                .collect::<Result<_>>()?;
            let mut expected: Vec<Tensor> = vars
                .iter()
                .map(|(_, v)| v.as_tensor().copy())
                .collect::<Result<_>>()?;
            let mut buffers: Vec<Option<Tensor>> = vec![None; vars.len()];
            let mut sgd = Sgd::new(vars.clone(), config.clone());
            for step in 0..3 {
                let mut total = Tensor::new(0f32, &dev)?;
                for (_, v) in &vars {
                    total = (total + (v.as_tensor().sqr()?.sum_all()? * (step + 1) as f64)?)?;
                }
                let grads = total.backward()?;
                let mut expected_directions = Vec::new();
                for (i, (_, v)) in vars.iter().enumerate() {
                    let grad = grads.get(v.as_tensor()).unwrap().detach();
                    let (p, b, d) =
                        reference_step(&config, &expected[i], &grad, buffers[i].as_ref(), 0.05)?;
                    (expected[i], buffers[i]) = (p, Some(b));
                    expected_directions.push(d);
                }
                let directions = if step == 1 {
                    sgd.step_with_directions(&grads, 0.05)?
                } else {
                    sgd.step(&grads, 0.05)?;
                    Vec::new()
                };
                for (index, direction) in directions {
                    let (got, want) = (
                        direction.flatten_all()?,
                        expected_directions[index].flatten_all()?,
                    );
                    assert_eq!(got.to_vec1::<f32>()?, want.to_vec1::<f32>()?);
                }
                for (i, (_, v)) in vars.iter().enumerate() {
                    let got = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                    let want = expected[i].flatten_all()?.to_vec1::<f32>()?;
                    assert!(
                        got == want,
                        "nesterov {nesterov}, step {step}, param {i} differs"
                    );
                }
            }
        }
        Ok(())
    }
}
