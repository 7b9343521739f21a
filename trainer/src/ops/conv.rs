//! conv2d on the CPU as candle custom ops: forward, input gradient and weight gradient, each an
//! im2col/col2im copy around one GEMM per chunk of images, or Winograd F(2x2, 3x3) for the 3x3
//! stride-1 convolutions where it is faster (`winograd.rs` decides, `set_conv_algorithm`
//! overrides).
//! Per-tap GEMMs (`taps.rs`) take small bordered planes where Winograd does not pay, and
//! before it where the channels are wide ([`kernel`]). Threads and chunks: `chunks.rs`.

use super::algorithm::Pass;
use super::chunks::{
    at_least, chunk_matrix, dense, scatter_chunk, transpose_sum, transposed,
    weight_grad_transposed, Chunk, Plan, Scratch,
};
use super::im2col::{col2im, im2col, sgemm, ConvGeometry};
use super::taps;
use super::winograd;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Aim for at least this many GEMM columns (images x output pixels) per chunk.
const TARGET_CHUNK_COLUMNS: usize = 512;
/// The storage of a contiguous f32 tensor as a slice, with a clear error otherwise.
pub(super) fn contiguous_f32<'a>(
    what: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        other => candle_core::bail!("{what}: expected f32, got {:?}", other.dtype()),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: tensor must be contiguous"),
    }
}

/// [`contiguous_f32`] for an operand written in place (`InplaceOp` destinations).
pub(super) fn contiguous_f32_mut<'a>(
    what: &str,
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> Result<&'a mut [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_mut_slice(),
        other => candle_core::bail!("{what}: expected f32, got {:?}", other.dtype()),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("{what}: tensor must be contiguous"),
    }
}

/// The column matrix of images `[first, first + count)` of the input `x`, image-major along
/// its `count * plane` columns (one GEMM's right-hand side).
fn im2col_chunk(
    g: &ConvGeometry,
    x: &[f32],
    (first, count): (usize, usize),
    col: &mut [f32],
    padded: &mut Vec<f32>,
) {
    let (in_image, plane) = (g.c_in * g.in_plane(), g.out_plane());
    for b in 0..count {
        let image = &x[(first + b) * in_image..(first + b + 1) * in_image];
        im2col(g, image, col, count * plane, b * plane, padded);
    }
}

/// The kernels that compute a convolution pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Winograd,
    Taps,
    Im2col,
}

/// Which kernel computes this pass: per-tap GEMMs where they pay and the channels are wide
/// ([`taps::beats_winograd`]), else Winograd where it pays, else taps where they pay, else
/// im2col.
fn kernel(g: &ConvGeometry, pass: Pass) -> Kernel {
    let taps_pay = taps::pays(g, pass);
    if taps_pay && taps::beats_winograd(g) {
        Kernel::Taps
    } else if winograd::pays(g, pass) {
        Kernel::Winograd
    } else if taps_pay {
        Kernel::Taps
    } else {
        Kernel::Im2col
    }
}

/// y = conv2d(x, w): the forward pass, by the kernel that pays (`kernel`).
pub fn conv2d_forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    match kernel(g, Pass::Forward) {
        Kernel::Winograd => winograd::forward(g, x, w),
        Kernel::Taps => taps::forward(g, x, w),
        Kernel::Im2col => im2col_forward(g, x, w),
    }
}

/// im2col's plan: a chunk's GEMM has one column per output pixel and a column matrix of
/// `C_in * k * k` rows.
fn im2col_plan(g: &ConvGeometry) -> Plan {
    Plan::for_columns(g.batch, g.out_plane(), g.col_rows(), TARGET_CHUNK_COLUMNS)
}

/// A chunk's column matrix: the input images themselves for a pointwise convolution of one
/// image, else im2col of them in `col`.
fn chunk_columns<'a>(
    g: &ConvGeometry,
    x: &'a [f32],
    chunk: Chunk,
    col: &'a mut Vec<f32>,
    padded: &mut Vec<f32>,
) -> &'a [f32] {
    let in_image = g.c_in * g.in_plane();
    if g.is_pointwise() && chunk.count == 1 {
        return &x[chunk.first * in_image..(chunk.first + 1) * in_image];
    }
    let col = at_least(col, g.col_rows() * chunk.count * g.out_plane());
    im2col_chunk(g, x, (chunk.first, chunk.count), col, padded);
    col
}

/// [`conv2d_forward`] through im2col, for any geometry.
pub(super) fn im2col_forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let plan = im2col_plan(g);
    let (rows, plane, c_out) = (g.col_rows(), g.out_plane(), g.c_out);
    let out_image = c_out * plane;
    plan.output(out_image, |scratch, chunk, y_group| {
        let Scratch {
            col, out, padded, ..
        } = scratch;
        let width = chunk.count * plane;
        let rhs = dense(chunk_columns(g, x, chunk, col, padded), width);
        // One image: the GEMM writes the output in place; more: into `out`, then scattered.
        let direct = chunk.count == 1;
        let dst = if direct {
            &mut y_group[chunk.in_group * out_image..(chunk.in_group + 1) * out_image]
        } else {
            at_least(out, c_out * width)
        };
        let lhs = dense(w, rows);
        sgemm(
            c_out,
            width,
            rows,
            dst,
            false,
            lhs,
            rhs,
            plan.gemm_parallelism,
        );
        if !direct {
            scatter_chunk(out, c_out, plane, chunk.in_group, chunk.count, y_group);
        }
    })
}

/// dL/dx, by the kernel that pays (`kernel`); im2col's is `col2im(w^T * dL/dy)`.
pub fn conv2d_input_grad(g: &ConvGeometry, grad_y: &[f32], w: &[f32]) -> Vec<f32> {
    match kernel(g, Pass::InputGrad) {
        Kernel::Winograd => winograd::input_grad(g, grad_y, w),
        Kernel::Taps => taps::input_grad(g, grad_y, w),
        Kernel::Im2col => im2col_input_grad(g, grad_y, w),
    }
}

/// [`conv2d_input_grad`] through im2col, for any geometry.
pub(super) fn im2col_input_grad(g: &ConvGeometry, grad_y: &[f32], w: &[f32]) -> Vec<f32> {
    let plan = im2col_plan(g);
    let (rows, plane, c_out) = (g.col_rows(), g.out_plane(), g.c_out);
    let in_image = g.c_in * g.in_plane();
    plan.output(in_image, |scratch, chunk, gx_group| {
        let Scratch {
            col,
            gathered,
            padded,
            ..
        } = scratch;
        let (width, done) = (chunk.count * plane, chunk.in_group);
        let grad = chunk_matrix(grad_y, c_out, plane, chunk, gathered);
        let (lhs, rhs) = (transposed(w, rows), dense(grad, width));
        // A pointwise convolution of one image: the GEMM writes dL/dx in place.
        let direct = g.is_pointwise() && chunk.count == 1;
        let dst = if direct {
            &mut gx_group[done * in_image..(done + 1) * in_image]
        } else {
            at_least(col, rows * width)
        };
        sgemm(
            rows,
            width,
            c_out,
            dst,
            false,
            lhs,
            rhs,
            plan.gemm_parallelism,
        );
        if !direct {
            for b in 0..chunk.count {
                let dst = &mut gx_group[(done + b) * in_image..(done + b + 1) * in_image];
                col2im(g, col, width, b * plane, dst, padded);
            }
        }
    })
}

/// dL/dw = sum over images of dL/dy * im2col(x)^T; each thread group sums its own images, the
/// partial sums are added at the end.
pub fn conv2d_weight_grad(g: &ConvGeometry, x: &[f32], grad_y: &[f32]) -> Vec<f32> {
    match kernel(g, Pass::WeightGrad) {
        Kernel::Winograd => winograd::weight_grad(g, x, grad_y),
        Kernel::Taps => taps::weight_grad(g, x, grad_y),
        Kernel::Im2col => im2col_weight_grad(g, x, grad_y),
    }
}

/// [`conv2d_weight_grad`] through im2col, for any geometry.
pub(super) fn im2col_weight_grad(g: &ConvGeometry, x: &[f32], grad_y: &[f32]) -> Vec<f32> {
    let plan = im2col_plan(g);
    let (rows, plane, c_out) = (g.col_rows(), g.out_plane(), g.c_out);
    let transposed_gemm = weight_grad_transposed(c_out, rows);
    let partials = plan.partials(c_out * rows, |scratch, chunk, grad_w| {
        let Scratch {
            col,
            gathered,
            padded,
            ..
        } = scratch;
        let width = chunk.count * plane;
        let grad = chunk_matrix(grad_y, c_out, plane, chunk, gathered);
        let cols = chunk_columns(g, x, chunk, col, padded);
        let accumulate = chunk.in_group > 0;
        let (m, n, lhs, rhs) = if transposed_gemm {
            // dW^T (rows x C_out) = X dY^T.
            (rows, c_out, dense(cols, width), transposed(grad, width))
        } else {
            (c_out, rows, dense(grad, width), transposed(cols, width))
        };
        sgemm(
            m,
            n,
            width,
            grad_w,
            accumulate,
            lhs,
            rhs,
            plan.gemm_parallelism,
        );
    });
    if transposed_gemm {
        transpose_sum(&partials.parts(), rows, c_out)
    } else {
        partials.sum()
    }
}

/// The forward op: `x.apply_op2(w, Conv2dOp)`.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dOp {
    pub stride: usize,
    pub padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "face2exp-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = ConvGeometry::new(
            l1.shape().dims4()?,
            l2.shape().dims4()?,
            self.stride,
            self.padding,
        )?;
        let x = contiguous_f32("conv2d input", s1, l1)?;
        let w = contiguous_f32("conv2d weight", s2, l2)?;
        let y = conv2d_forward(&g, x, w);
        Ok((
            CpuStorage::F32(y),
            Shape::from((g.batch, g.c_out, g.out_h, g.out_w)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_y = grad_y.contiguous()?;
        let (_, _, h, width) = x.dims4()?;
        // The image at the bottom of the network is no variable's descendant: skip its gradient.
        let grad_x = if x.track_op() {
            let op = ConvInputGradOp {
                stride: self.stride,
                padding: self.padding,
                h,
                w: width,
            };
            Some(grad_y.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let grad_w = if w.track_op() {
            let op = ConvWeightGradOp {
                stride: self.stride,
                padding: self.padding,
                k: w.dim(2)?,
            };
            Some(x.apply_op2_no_bwd(&grad_y, &op)?)
        } else {
            None
        };
        Ok((grad_x, grad_w))
    }
}

/// `grad_y.apply_op2_no_bwd(w, ...)` -> dL/dx of shape (N, C_in, h, w).
#[derive(Debug, Clone, Copy)]
struct ConvInputGradOp {
    stride: usize,
    padding: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for ConvInputGradOp {
    fn name(&self) -> &'static str {
        "face2exp-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c_out, out_h, out_w) = l1.shape().dims4()?;
        let w_dims = l2.shape().dims4()?;
        let g = ConvGeometry::new(
            (n, w_dims.1, self.h, self.w),
            w_dims,
            self.stride,
            self.padding,
        )?;
        if (g.c_out, g.out_h, g.out_w) != (c_out, out_h, out_w) {
            candle_core::bail!(
                "conv2d backward: gradient shape {:?} does not match the convolution {g:?}",
                l1.shape()
            );
        }
        let grad_y = contiguous_f32("conv2d output gradient", s1, l1)?;
        let w = contiguous_f32("conv2d weight", s2, l2)?;
        let grad_x = conv2d_input_grad(&g, grad_y, w);
        Ok((CpuStorage::F32(grad_x), Shape::from((n, g.c_in, g.h, g.w))))
    }
}

/// `x.apply_op2_no_bwd(grad_y, ...)` -> dL/dw of shape (C_out, C_in, k, k).
#[derive(Debug, Clone, Copy)]
struct ConvWeightGradOp {
    stride: usize,
    padding: usize,
    k: usize,
}

impl CustomOp2 for ConvWeightGradOp {
    fn name(&self) -> &'static str {
        "face2exp-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x_dims = l1.shape().dims4()?;
        let (n, c_out, out_h, out_w) = l2.shape().dims4()?;
        let g = ConvGeometry::new(
            x_dims,
            (c_out, x_dims.1, self.k, self.k),
            self.stride,
            self.padding,
        )?;
        if (g.batch, g.out_h, g.out_w) != (n, out_h, out_w) {
            candle_core::bail!(
                "conv2d backward: gradient shape {:?} does not match the convolution {g:?}",
                l2.shape()
            );
        }
        let x = contiguous_f32("conv2d input", s1, l1)?;
        let grad_y = contiguous_f32("conv2d output gradient", s2, l2)?;
        let grad_w = conv2d_weight_grad(&g, x, grad_y);
        Ok((
            CpuStorage::F32(grad_w),
            Shape::from((c_out, g.c_in, g.k, g.k)),
        ))
    }
}

#[cfg(test)]
pub(super) mod kernel_checks;
