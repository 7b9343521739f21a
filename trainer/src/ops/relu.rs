//! ReLU fused into the op before it, on the CPU: `relu(a + b)` for a residual block's output,
//! and the gradient mask that the fused BatchNorm + ReLU shares.
//!
//! candle's own ReLU is one pass forward but six backward (a zero tensor, a comparison, a
//! cast, a product, then the gradient accumulation's zero tensor and sum), each allocating a
//! full activation. Here the forward is part of the previous op's pass and the backward one
//! masking pass. The mask is PyTorch's (`threshold_backward`): the gradient flows where the
//! output is positive.

use super::chunks::par_zeroed;
use super::conv::contiguous_f32;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Values per rayon task.
const CHUNK: usize = 1 << 14;

/// `f(a, b)` element by element over two same-shape contiguous f32 operands, on rayon's
/// threads; `what` names the operands in errors.
fn zip_map(
    what: [&str; 2],
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    if l1.shape() != l2.shape() {
        candle_core::bail!(
            "{} shape {:?} differs from {} shape {:?}",
            what[0],
            l1.shape(),
            what[1],
            l2.shape()
        );
    }
    let a = contiguous_f32(what[0], s1, l1)?;
    let b = contiguous_f32(what[1], s2, l2)?;
    let out = par_zeroed(a.len(), CHUNK, |i, out| {
        let (a, b) = (&a[i * CHUNK..], &b[i * CHUNK..]);
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = f(a, b);
        }
    });
    Ok((CpuStorage::F32(out), l1.shape().clone()))
}

/// `grad.apply_op2_no_bwd(output, &ReluGrad)`: `grad` where `output > 0`, else 0.
pub(super) struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "face2exp-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        zip_map(
            ["relu backward: output gradient", "relu output"],
            (s1, l1),
            (s2, l2),
            |g, y| if y > 0.0 { g } else { 0.0 },
        )
    }
}

/// The gradient of a fused `relu(...)` output `y` given the gradient arriving at it.
pub(super) fn relu_grad(grad: &Tensor, y: &Tensor) -> Result<Tensor> {
    grad.contiguous()?.apply_op2_no_bwd(y, &ReluGrad)
}

/// `a.apply_op2(b, AddRelu)`: `relu(a + b)`, the end of a residual block.
pub struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "face2exp-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        zip_map(
            ["add + relu: left operand", "right operand"],
            (s1, l1),
            (s2, l2),
            |a, b| (a + b).max(0.0),
        )
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = relu_grad(grad_y, y)?;
        // Both operands get the same gradient; candle adds each into its own accumulator.
        Ok((
            a.track_op().then(|| grad.clone()),
            b.track_op().then_some(grad),
        ))
    }
}
