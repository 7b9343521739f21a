//! conv2d on the CPU as candle custom ops: forward, input gradient and weight gradient, each an
//! im2col/col2im copy around one GEMM per chunk of images, or Winograd F(2x2, 3x3) for the 3x3
//! stride-1 convolutions where it is faster (`winograd.rs` decides, `set_conv_algorithm`
//! overrides).
//!
//! Threads: the batch is split into one group of images per rayon thread, each group running
//! single-threaded GEMMs on its own scratch (no synchronisation inside a layer); a batch smaller
//! than the thread count instead hands all threads to the GEMM. Images whose output plane is small
//! (the deep layers) are gathered into chunks so that each GEMM still has a wide right-hand side.

use super::im2col::{col2im, im2col, sgemm, ConvGeometry, MatRef};
use super::winograd::{self, Pass};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Aim for at least this many GEMM columns (images x output pixels) per chunk.
const TARGET_CHUNK_COLUMNS: usize = 512;
/// ...without letting one column matrix grow past this many floats (16 MiB).
const MAX_CHUNK_FLOATS: usize = 4 << 20;

/// Column, product and gathered-gradient buffers of one thread, kept between calls: every
/// layer of every step used to allocate them afresh, zero them (`resize`) and fault their pages
/// in, only for im2col / the GEMM / the gather to overwrite every float anyway.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) col: Vec<f32>,
    pub(super) out: Vec<f32>,
    pub(super) gathered: Vec<f32>,
    /// One zero-bordered input plane for im2col / col2im (and Winograd's input transform).
    pub(super) padded: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

impl Scratch {
    /// This thread's buffers, leaving empty ones behind: a task that rayon runs on this thread
    /// while this one waits inside a parallel GEMM simply starts from empty buffers.
    pub(super) fn take() -> Scratch {
        SCRATCH.with(|cell| cell.take())
    }

    pub(super) fn give_back(self) {
        SCRATCH.with(|cell| cell.set(self));
    }
}

/// The first `len` floats of `buffer`, grown (never shrunk) to hold them. The contents are
/// stale: callers overwrite every float they read.
pub(super) fn at_least(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// How the batch is spread over threads, and each thread's images over chunks (one GEMM, or
/// Winograd's 16, per chunk).
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// Images per thread group (the last group may hold fewer).
    pub(super) images_per_group: usize,
    /// Images per chunk inside a group.
    pub(super) chunk: usize,
    /// Parallelism handed to each GEMM.
    pub(super) gemm_parallelism: Parallelism,
}

/// Images per thread group and the parallelism each GEMM gets: one group per rayon thread, or,
/// for a batch smaller than the thread count, one group whose GEMMs use every thread.
pub(super) fn split_batch(batch: usize) -> (usize, Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    if batch >= threads {
        (batch.div_ceil(threads), Parallelism::None)
    } else if threads > 1 {
        (batch.max(1), Parallelism::Rayon(threads))
    } else {
        (batch.max(1), Parallelism::None)
    }
}

impl Plan {
    /// im2col's plan: a chunk's GEMM has one column per output pixel and a column matrix of
    /// `C_in * k * k` rows.
    fn new(g: &ConvGeometry) -> Self {
        Self::for_columns(g.batch, g.out_plane(), g.col_rows(), TARGET_CHUNK_COLUMNS)
    }

    /// Chunks of at least `target_columns` GEMM columns (`columns_per_image` per image) where
    /// the thread group has the images, without letting a chunk's `floats_per_column` x
    /// columns buffer grow past [`MAX_CHUNK_FLOATS`].
    pub(super) fn for_columns(
        batch: usize,
        columns_per_image: usize,
        floats_per_column: usize,
        target_columns: usize,
    ) -> Self {
        let (images_per_group, gemm_parallelism) = split_batch(batch);
        let columns = columns_per_image.max(1);
        let by_width = target_columns.div_ceil(columns);
        let by_memory = (MAX_CHUNK_FLOATS / (floats_per_column * columns).max(1)).max(1);
        Self {
            images_per_group,
            chunk: by_width.min(by_memory).clamp(1, images_per_group),
            gemm_parallelism,
        }
    }

    /// `(first, count)` of each chunk of a group of `images` images, relative to the group.
    pub(super) fn chunks(&self, images: usize) -> impl Iterator<Item = (usize, usize)> {
        let chunk = self.chunk;
        (0..images)
            .step_by(chunk)
            .map(move |first| (first, chunk.min(images - first)))
    }
}

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

/// Copies images `[first, first + count)` of a (N, rows, plane) tensor into a (rows, count*plane)
/// matrix, the column layout the GEMMs use.
fn gather_chunk(
    src: &[f32],
    rows: usize,
    plane: usize,
    first: usize,
    count: usize,
    dst: &mut [f32],
) {
    let width = count * plane;
    for b in 0..count {
        let image = &src[(first + b) * rows * plane..(first + b + 1) * rows * plane];
        for r in 0..rows {
            dst[r * width + b * plane..r * width + (b + 1) * plane]
                .copy_from_slice(&image[r * plane..(r + 1) * plane]);
        }
    }
}

/// The inverse of [`gather_chunk`] for the images of one group: `dst` starts at image `first`.
fn scatter_chunk(
    src: &[f32],
    rows: usize,
    plane: usize,
    first: usize,
    count: usize,
    dst: &mut [f32],
) {
    let width = count * plane;
    for b in 0..count {
        let image = &mut dst[(first + b) * rows * plane..(first + b + 1) * rows * plane];
        for r in 0..rows {
            image[r * plane..(r + 1) * plane]
                .copy_from_slice(&src[r * width + b * plane..r * width + (b + 1) * plane]);
        }
    }
}

/// Row-major dense matrix view.
pub(super) fn dense(data: &[f32], cols: usize) -> MatRef<'_> {
    MatRef {
        data,
        row_stride: cols,
        col_stride: 1,
    }
}

/// Transposed view of a dense row-major matrix with `cols` columns.
pub(super) fn transposed(data: &[f32], cols: usize) -> MatRef<'_> {
    MatRef {
        data,
        row_stride: 1,
        col_stride: cols,
    }
}

/// y = conv2d(x, w): the forward pass, through Winograd where it pays, else im2col.
pub fn conv2d_forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    if winograd::pays(g, Pass::Forward) {
        winograd::forward(g, x, w)
    } else {
        im2col_forward(g, x, w)
    }
}

/// [`conv2d_forward`] through im2col, for any geometry.
pub(super) fn im2col_forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let plan = Plan::new(g);
    let (rows, plane, c_out) = (g.col_rows(), g.out_plane(), g.c_out);
    let in_image = g.c_in * g.in_plane();
    let out_image = c_out * plane;
    let mut y = vec![0f32; g.batch * out_image];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(plan.images_per_group * out_image)
        .enumerate()
        .for_each(|(group, y_group)| {
            let first_image = group * plan.images_per_group;
            let images = y_group.len() / out_image;
            let mut scratch = Scratch::take();
            for (done, count) in plan.chunks(images) {
                let width = count * plane;
                let image0 = first_image + done;
                let rhs = if g.is_pointwise() && count == 1 {
                    &x[image0 * in_image..(image0 + 1) * in_image]
                } else {
                    let col = at_least(&mut scratch.col, rows * width);
                    im2col_chunk(g, x, (image0, count), col, &mut scratch.padded);
                    &*col
                };
                if count == 1 {
                    let dst = &mut y_group[done * out_image..(done + 1) * out_image];
                    sgemm(
                        c_out,
                        width,
                        rows,
                        dst,
                        false,
                        dense(w, rows),
                        dense(rhs, width),
                        plan.gemm_parallelism,
                    );
                } else {
                    let out = at_least(&mut scratch.out, c_out * width);
                    sgemm(
                        c_out,
                        width,
                        rows,
                        out,
                        false,
                        dense(w, rows),
                        dense(rhs, width),
                        plan.gemm_parallelism,
                    );
                    scatter_chunk(out, c_out, plane, done, count, y_group);
                }
            }
            scratch.give_back();
        });
    y
}

/// dL/dx, through Winograd where it pays, else `col2im(w^T * dL/dy)`.
pub fn conv2d_input_grad(g: &ConvGeometry, grad_y: &[f32], w: &[f32]) -> Vec<f32> {
    if winograd::pays(g, Pass::InputGrad) {
        winograd::input_grad(g, grad_y, w)
    } else {
        im2col_input_grad(g, grad_y, w)
    }
}

/// [`conv2d_input_grad`] through im2col, for any geometry.
pub(super) fn im2col_input_grad(g: &ConvGeometry, grad_y: &[f32], w: &[f32]) -> Vec<f32> {
    let plan = Plan::new(g);
    let (rows, plane, c_out) = (g.col_rows(), g.out_plane(), g.c_out);
    let in_image = g.c_in * g.in_plane();
    let out_image = c_out * plane;
    let mut grad_x = vec![0f32; g.batch * in_image];
    if grad_x.is_empty() {
        return grad_x;
    }
    grad_x
        .par_chunks_mut(plan.images_per_group * in_image)
        .enumerate()
        .for_each(|(group, gx_group)| {
            let first_image = group * plan.images_per_group;
            let images = gx_group.len() / in_image;
            let mut scratch = Scratch::take();
            for (done, count) in plan.chunks(images) {
                let width = count * plane;
                let image0 = first_image + done;
                let lhs_grad = if count == 1 {
                    &grad_y[image0 * out_image..(image0 + 1) * out_image]
                } else {
                    let gathered = at_least(&mut scratch.gathered, c_out * width);
                    gather_chunk(grad_y, c_out, plane, image0, count, gathered);
                    &*gathered
                };
                if g.is_pointwise() && count == 1 {
                    let dst = &mut gx_group[done * in_image..(done + 1) * in_image];
                    sgemm(
                        rows,
                        width,
                        c_out,
                        dst,
                        false,
                        transposed(w, rows),
                        dense(lhs_grad, width),
                        plan.gemm_parallelism,
                    );
                } else {
                    let col = at_least(&mut scratch.col, rows * width);
                    sgemm(
                        rows,
                        width,
                        c_out,
                        col,
                        false,
                        transposed(w, rows),
                        dense(lhs_grad, width),
                        plan.gemm_parallelism,
                    );
                    for b in 0..count {
                        let dst = &mut gx_group[(done + b) * in_image..(done + b + 1) * in_image];
                        col2im(g, col, width, b * plane, dst, &mut scratch.padded);
                    }
                }
            }
            scratch.give_back();
        });
    grad_x
}

/// dL/dw = sum over images of dL/dy * im2col(x)^T; each thread group sums its own images, the
/// partial sums are added at the end.
pub fn conv2d_weight_grad(g: &ConvGeometry, x: &[f32], grad_y: &[f32]) -> Vec<f32> {
    if winograd::pays(g, Pass::WeightGrad) {
        winograd::weight_grad(g, x, grad_y)
    } else {
        im2col_weight_grad(g, x, grad_y)
    }
}

/// [`conv2d_weight_grad`] through im2col, for any geometry.
pub(super) fn im2col_weight_grad(g: &ConvGeometry, x: &[f32], grad_y: &[f32]) -> Vec<f32> {
    let plan = Plan::new(g);
    let (rows, plane, c_out) = (g.col_rows(), g.out_plane(), g.c_out);
    let in_image = g.c_in * g.in_plane();
    let out_image = c_out * plane;
    let groups = g.batch.div_ceil(plan.images_per_group);
    sum_over_groups(groups, c_out * rows, |group, grad_w| {
        let first_image = group * plan.images_per_group;
        let images = plan.images_per_group.min(g.batch - first_image);
        let mut scratch = Scratch::take();
        for (done, count) in plan.chunks(images) {
            let width = count * plane;
            let image0 = first_image + done;
            let grad = if count == 1 {
                &grad_y[image0 * out_image..(image0 + 1) * out_image]
            } else {
                let gathered = at_least(&mut scratch.gathered, c_out * width);
                gather_chunk(grad_y, c_out, plane, image0, count, gathered);
                &*gathered
            };
            let cols = if g.is_pointwise() && count == 1 {
                &x[image0 * in_image..(image0 + 1) * in_image]
            } else {
                let col = at_least(&mut scratch.col, rows * width);
                im2col_chunk(g, x, (image0, count), col, &mut scratch.padded);
                &*col
            };
            sgemm(
                c_out,
                rows,
                width,
                grad_w,
                done > 0,
                dense(grad, width),
                transposed(cols, width),
                plan.gemm_parallelism,
            );
        }
        scratch.give_back();
    })
}

/// Runs `accumulate(group, partial)` for every thread group in parallel, each into its own
/// zeroed `len` floats, and returns the sum of those partials: how the weight gradients sum
/// over the batch without synchronising inside a layer.
pub(super) fn sum_over_groups(
    groups: usize,
    len: usize,
    accumulate: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|group| {
            let mut partial = vec![0f32; len];
            accumulate(group, &mut partial);
            partial
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut total = partials.next().unwrap_or_else(|| vec![0f32; len]);
    for partial in partials {
        total.iter_mut().zip(&partial).for_each(|(t, p)| *t += *p);
    }
    total
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
