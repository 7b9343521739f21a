//! BatchNorm2d in training mode (batch statistics) as one fused CPU op with its backward.
//!
//! candle composes train-mode BatchNorm from about ten single-threaded elementwise and reduction
//! ops forward and more backward, each a full pass over the activations. Here the forward is two
//! passes (statistics, normalise) and the backward two (per-channel sums, input gradient), all
//! spread over rayon's threads. The forward's statistics are kept for the backward and handed
//! to the caller for the running estimates. A ReLU after the BatchNorm can be fused in: the
//! forward clamps in its normalising pass, the backward masks the gradient first
//! ([`super::relu`]).

use std::sync::{Arc, Mutex};

use super::chunks::par_zeroed;
use super::conv::contiguous_f32;
use super::relu::relu_grad;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Per-channel numbers shared between the forward op, its backward and the caller.
#[derive(Debug, Default)]
struct Saved {
    mean: Vec<f32>,
    /// Biased variance (divides by the element count), as used to normalise.
    var: Vec<f32>,
    inv_std: Vec<f32>,
    /// Backward: sum of dL/dy and of dL/dy * x_hat per channel.
    sum_grad: Vec<f32>,
    sum_grad_xhat: Vec<f32>,
}

type Shared = Arc<Mutex<Saved>>;

fn lock(saved: &Shared) -> std::sync::MutexGuard<'_, Saved> {
    // A poisoned lock only means another thread panicked mid-update; the numbers are rewritten
    // by every forward, so carry on with them.
    saved.lock().unwrap_or_else(|e| e.into_inner())
}

/// Independent partial sums per plane: one f32 accumulator is a serial chain of dependent adds
/// (about 4 cycles per value) that the compiler may not reorder; 16 chains vectorise.
const LANES: usize = 16;

/// Two sums per channel over an (N, C, plane) buffer: `f(range, channel)` returns a plane's
/// pair of f32 sums, which are added up across the batch's planes in f64.
fn per_channel_sums(
    n: usize,
    c: usize,
    plane: usize,
    f: impl Fn(std::ops::Range<usize>, usize) -> (f32, f32) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            (0..n).fold((0f64, 0f64), |(a, b), image| {
                let base = (image * c + ch) * plane;
                let (da, db) = f(base..base + plane, ch);
                (a + da as f64, b + db as f64)
            })
        })
        .collect()
}

/// Each channel's mean and biased variance over an (N, C, plane) buffer in one read: the sums
/// of `d = x - s` and `d^2`, `s` the channel's first value, so `var = E[d^2] - E[d]^2`. A
/// sample of the channel lies within a few standard deviations of its mean, so the subtraction
/// loses a few bits at most, where E[x^2] - E[x]^2 loses them all to a large offset (and `d` is
/// exact when `x` and `s` are within a factor of two). Two passes (mean, then squares about
/// it) read every BatchNorm input twice.
fn channel_mean_and_var(x: &[f32], n: usize, c: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let count = (n * plane) as f64;
    let first = |ch: usize| x[ch * plane];
    let sums = per_channel_sums(n, c, plane, |r, ch| shifted_sums(&x[r], first(ch)));
    sums.into_iter()
        .enumerate()
        .map(|(ch, (d, d2))| {
            let mean_d = d / count;
            let var = (d2 / count - mean_d * mean_d).max(0.0);
            ((first(ch) as f64 + mean_d) as f32, var as f32)
        })
        .unzip()
}

/// `(sum of (x - shift), sum of (x - shift)^2)`, in [`LANES`] chains.
fn shifted_sums(x: &[f32], shift: f32) -> (f32, f32) {
    let (mut sum, mut squares) = ([0f32; LANES], [0f32; LANES]);
    let mut chunks = x.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            let d = chunk[l] - shift;
            sum[l] += d;
            squares[l] += d * d;
        }
    }
    let (mut s, mut q) = (sum.iter().sum::<f32>(), squares.iter().sum::<f32>());
    for &v in chunks.remainder() {
        s += v - shift;
        q += (v - shift) * (v - shift);
    }
    (s, q)
}

/// `(sum of g, sum of g * (x - mean))`, in [`LANES`] chains.
fn sum_and_dot(g: &[f32], x: &[f32], mean: f32) -> (f32, f32) {
    let (mut sum, mut dot) = ([0f32; LANES], [0f32; LANES]);
    let (mut gs, mut xs) = (g.chunks_exact(LANES), x.chunks_exact(LANES));
    for (gc, xc) in (&mut gs).zip(&mut xs) {
        for l in 0..LANES {
            sum[l] += gc[l];
            dot[l] += gc[l] * (xc[l] - mean);
        }
    }
    let (mut s, mut d) = (sum.iter().sum::<f32>(), dot.iter().sum::<f32>());
    for (&gv, &xv) in gs.remainder().iter().zip(xs.remainder()) {
        s += gv;
        d += gv * (xv - mean);
    }
    (s, d)
}

/// Forward: `x.apply_op3(weight, bias, BatchNormTrain)` -> y, statistics left in `saved`.
struct BatchNormTrain {
    eps: f64,
    /// y = relu(BatchNorm(x)).
    relu: bool,
    saved: Shared,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "face2exp-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = contiguous_f32("batch norm input", s1, l1)?;
        let weight = contiguous_f32("batch norm weight", s2, l2)?;
        let bias = contiguous_f32("batch norm bias", s3, l3)?;
        if weight.len() != c || bias.len() != c {
            candle_core::bail!(
                "batch norm: input has {c} channels, weight {} and bias {} values",
                weight.len(),
                bias.len()
            );
        }
        let plane = h * w;
        let count = (n * plane) as f64;
        if count < 2.0 {
            candle_core::bail!("batch norm in train mode needs more than one value per channel, input is {n}x{c}x{h}x{w}");
        }
        let (mean, var) = channel_mean_and_var(x, n, c, plane);
        let inv_std: Vec<f32> = var
            .iter()
            .map(|v| (1.0 / (*v as f64 + self.eps).sqrt()) as f32)
            .collect();
        let relu = self.relu;
        let y = par_zeroed(x.len(), plane, |p, out| {
            let inp = &x[p * plane..][..out.len()];
            let ch = p % c;
            let scale = weight[ch] * inv_std[ch];
            let shift = bias[ch] - mean[ch] * scale;
            if relu {
                for (o, v) in out.iter_mut().zip(inp) {
                    *o = (v * scale + shift).max(0.0);
                }
            } else {
                for (o, v) in out.iter_mut().zip(inp) {
                    *o = v * scale + shift;
                }
            }
        });
        let mut saved = lock(&self.saved);
        saved.mean = mean;
        saved.var = var;
        saved.inv_std = inv_std;
        Ok((CpuStorage::F32(y), Shape::from((n, c, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_y = if self.relu {
            relu_grad(grad_y, y)?
        } else {
            grad_y.contiguous()?
        };
        // One op computes the per-channel sums (they are the weight and bias gradients) and keeps
        // them for the input gradient that follows.
        let sums = x.apply_op2_no_bwd(
            &grad_y,
            &BatchNormParamGrad {
                saved: self.saved.clone(),
            },
        )?;
        let grad_weight = weight.track_op().then(|| sums.get(0)).transpose()?;
        let grad_bias = bias.track_op().then(|| sums.get(1)).transpose()?;
        let grad_x = if x.track_op() {
            Some(x.apply_op3_no_bwd(
                &grad_y,
                weight,
                &BatchNormInputGrad {
                    saved: self.saved.clone(),
                },
            )?)
        } else {
            None
        };
        Ok((grad_x, grad_weight, grad_bias))
    }
}

/// `x.apply_op2_no_bwd(grad_y, ...)` -> (2, C): [dL/dweight, dL/dbias].
struct BatchNormParamGrad {
    saved: Shared,
}

impl candle_core::CustomOp2 for BatchNormParamGrad {
    fn name(&self) -> &'static str {
        "face2exp-batch-norm-param-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        if l2.shape().dims4()? != (n, c, h, w) {
            candle_core::bail!(
                "batch norm backward: gradient shape {:?} does not match input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let x = contiguous_f32("batch norm input", s1, l1)?;
        let grad_y = contiguous_f32("batch norm output gradient", s2, l2)?;
        let mut saved = lock(&self.saved);
        if saved.mean.len() != c {
            candle_core::bail!(
                "batch norm backward: no statistics from the forward pass for {c} channels"
            );
        }
        let (mean, inv_std) = (&saved.mean, &saved.inv_std);
        let plane = h * w;
        // Both sums in one pass; inv_std factors out of the second.
        let sums = per_channel_sums(n, c, plane, |r, ch| {
            sum_and_dot(&grad_y[r.clone()], &x[r], mean[ch])
        });
        let sum_grad: Vec<f32> = sums.iter().map(|(s, _)| *s as f32).collect();
        let sum_grad_xhat: Vec<f32> = sums
            .iter()
            .zip(inv_std)
            .map(|((_, d), inv_std)| (d * *inv_std as f64) as f32)
            .collect();
        let mut out = sum_grad_xhat.clone();
        out.extend_from_slice(&sum_grad);
        saved.sum_grad = sum_grad;
        saved.sum_grad_xhat = sum_grad_xhat;
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }
}

/// `x.apply_op3_no_bwd(grad_y, weight, ...)` -> dL/dx, after [`BatchNormParamGrad`] ran.
struct BatchNormInputGrad {
    saved: Shared,
}

impl CustomOp3 for BatchNormInputGrad {
    fn name(&self) -> &'static str {
        "face2exp-batch-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let x = contiguous_f32("batch norm input", s1, l1)?;
        let grad_y = contiguous_f32("batch norm output gradient", s2, l2)?;
        let weight = contiguous_f32("batch norm weight", s3, l3)?;
        let saved = lock(&self.saved);
        if saved.sum_grad.len() != c || weight.len() != c {
            candle_core::bail!("batch norm backward: per-channel sums missing for {c} channels");
        }
        let plane = h * w;
        let count = (n * plane) as f32;
        let grad_x = par_zeroed(x.len(), plane, |p, out| {
            let ch = p % c;
            let base = p * plane;
            let (mean, inv_std) = (saved.mean[ch], saved.inv_std[ch]);
            let mean_grad = saved.sum_grad[ch] / count;
            let mean_grad_xhat = saved.sum_grad_xhat[ch] / count;
            let scale = weight[ch] * inv_std;
            let (x, grad_y) = (&x[base..][..out.len()], &grad_y[base..][..out.len()]);
            for ((o, &x), &dy) in out.iter_mut().zip(x).zip(grad_y) {
                let xhat = (x - mean) * inv_std;
                *o = scale * (dy - mean_grad - xhat * mean_grad_xhat);
            }
        });
        Ok((CpuStorage::F32(grad_x), Shape::from((n, c, h, w))))
    }
}

/// Train-mode BatchNorm2d on the CPU, followed by a ReLU when `relu`: returns `y`
/// (differentiable in x, weight and bias) and the batch mean and biased variance (C,),
/// detached, for the caller's running estimates.
pub fn batch_norm_train_cpu(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let saved = Shared::default();
    let op = BatchNormTrain {
        eps,
        relu,
        saved: saved.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    let (mean, var) = {
        let s = lock(&saved);
        (s.mean.clone(), s.var.clone())
    };
    let c = mean.len();
    let mean = Tensor::from_vec(mean, c, x.device())?;
    let var = Tensor::from_vec(var, c, x.device())?;
    Ok((y, mean, var))
}
