//! ResNet's stem max pool (kernel 3, stride 2, padding 1) on the CPU, with a real backward:
//! each output's gradient goes to the first input in its window that holds the maximum
//! (row-major scan order, as PyTorch does), recomputed from the input instead of stored.

use super::conv::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const KERNEL: usize = 3;
const STRIDE: usize = 2;
const PADDING: usize = 1;

/// Output size of the pool along one axis.
pub fn pooled_len(len: usize) -> usize {
    (len + 2 * PADDING - KERNEL) / STRIDE + 1
}

/// Index (within the plane) of the first maximum of output pixel (oh, ow)'s window.
#[inline]
fn window_argmax(plane: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> usize {
    let r0 = (oh * STRIDE).saturating_sub(PADDING);
    let r1 = (oh * STRIDE + KERNEL - PADDING).min(h);
    let c0 = (ow * STRIDE).saturating_sub(PADDING);
    let c1 = (ow * STRIDE + KERNEL - PADDING).min(w);
    let mut best = r0 * w + c0;
    let mut best_value = plane[best];
    for r in r0..r1 {
        for c in c0..c1 {
            let v = plane[r * w + c];
            // `>` keeps the first maximum; a NaN anywhere wins so it propagates like in PyTorch.
            if v > best_value || (v.is_nan() && !best_value.is_nan()) {
                best = r * w + c;
                best_value = v;
            }
        }
    }
    best
}

/// Forward op: (N, C, H, W) -> (N, C, OH, OW).
#[derive(Debug, Clone, Copy)]
pub struct MaxPool3x3S2P1;

impl CustomOp1 for MaxPool3x3S2P1 {
    fn name(&self) -> &'static str {
        "face2exp-max-pool-3x3-s2-p1"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        if h == 0 || w == 0 {
            candle_core::bail!("max pool: empty input plane {h}x{w}");
        }
        let x = contiguous_f32("max pool input", storage, layout)?;
        let (oh, ow) = (pooled_len(h), pooled_len(w));
        let mut y = vec![0f32; n * c * oh * ow];
        y.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(out, plane)| {
                for i in 0..oh {
                    for j in 0..ow {
                        out[i * ow + j] = plane[window_argmax(plane, h, w, i, j)];
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad_y.contiguous()?, &MaxPoolGrad)?,
        ))
    }
}

/// `x.apply_op2_no_bwd(grad_y, MaxPoolGrad)` -> dL/dx.
#[derive(Debug, Clone, Copy)]
struct MaxPoolGrad;

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "face2exp-max-pool-3x3-s2-p1-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (oh, ow) = (pooled_len(h), pooled_len(w));
        if l2.shape().dims4()? != (n, c, oh, ow) {
            candle_core::bail!(
                "max pool backward: gradient shape {:?} does not match input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let x = contiguous_f32("max pool input", s1, l1)?;
        let grad_y = contiguous_f32("max pool output gradient", s2, l2)?;
        let mut grad_x = vec![0f32; n * c * h * w];
        grad_x
            .par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(grad_y.par_chunks(oh * ow)))
            .for_each(|(gx, (plane, gy))| {
                for i in 0..oh {
                    for j in 0..ow {
                        gx[window_argmax(plane, h, w, i, j)] += gy[i * ow + j];
                    }
                }
            });
        Ok((CpuStorage::F32(grad_x), Shape::from((n, c, h, w))))
    }
}
