//! Convolutions on small bordered planes as one GEMM per kernel tap, each over only the outputs
//! where that tap reads inside the input: forward, input gradient and weight gradient.
//!
//! Why: at the 48-64 px inputs this project trains on, ResNet-18's deepest planes are 2x2 to
//! 4x4 pixels, and a 3x3 kernel with padding 1 reads the zero border with most of its taps. On
//! a 2x2 plane each output has 4 of its 9 taps inside the input, so im2col's GEMM multiplies a
//! zero in 5 of every 9 products; on a 3x3 plane in 32 of 81. Splitting the convolution by tap
//! skips them: for tap `t = (ky, kx)` the outputs that read inside the input form a rectangle
//! `R_t` (rows and columns are independent), and the tap's contribution is one GEMM
//! `W_t (C_out x C_in) * X_t (C_in x |R_t|)`, `X_t` the input shifted by the tap and cut to
//! `R_t`. Exactly the products that do not meet the border are computed, and each GEMM still
//! has `C_in` inner products per output (256-512 where this pays).
//!
//! - forward: `y[R_t] += W_t X_t` for every tap;
//! - input gradient: `dx[R_t shifted by t] += W_t^T dy[R_t]`;
//! - weight gradient: `dW_t = Σ dy[R_t] X_t^T` over the images.
//!
//! Each `W_t` is a matrix view of the weights: of a tap-major copy (`C_out x k*k x C_in`, dense
//! rows) made once per call where the tap GEMMs are wide, else of the weights as they lie
//! (column stride `k*k`, [`MAX_MEAN_TAP_COLUMNS_IN_PLACE`]). Threads and chunks: `chunks.rs`,
//! as im2col's.

use std::ops::Range;

use super::algorithm::{conv_algorithm, ConvAlgorithm, Pass};
use super::chunks::{
    at_least, chunk_matrix, dense, par_zeroed, scatter_chunk, split_batch, transposed, Plan,
    Scratch,
};
use super::im2col::{copy_short, sgemm, sgemm_rows, ConvGeometry, MatRef};
use gemm::Parallelism;
use rayon::prelude::*;

/// `pays` takes a convolution when at most this share of im2col's products reads inside the
/// input (the rest multiply the zero border): 0.82 on a 7x7 plane with a 3x3 kernel, 0.84 on
/// 8x8, where Winograd won every pass (`WIDE_INPUT_CHANNELS`)...
const MAX_USEFUL_FRACTION: f64 = 0.83;
/// ...and each tap's GEMM has at least this many inner products per output, enough to amortise
/// packing `W_t` for the few columns a corner tap has...
const MIN_INPUT_CHANNELS: usize = 64;
/// ...and, for the weight gradient, a thread group's tap GEMMs have at least this many columns
/// (images x outputs) on average. Below it packing the operands of nine narrow GEMMs costs more
/// than the skipped products: measured with `cargo bench -p face2exp-trainer --bench
/// conv_algorithms`, 2 threads, ratios to im2col: at 64 px / batch 32 the 2x2 planes have 28-44
/// columns per tap and lose (weight gradient 1.14-1.35, and 1.19-1.29 when measured again in
/// session 15: it reads no weights, so their layout below plays no part), at 48 px / batch 64
/// they have 57 and win (0.78-0.91). The input gradient won at every size measured
/// (0.38-0.84), so it has no such bound...
const MIN_MEAN_TAP_COLUMNS: usize = 50;
/// ...and the forward pass this many per thread (a batch smaller than the thread count has
/// one group whose GEMMs `gemm` splits over the threads): with 28-44 columns it lost
/// (1.06-1.16) while it copied the weights tap-major, and wins with them read in place
/// ([`MAX_MEAN_TAP_COLUMNS_IN_PLACE`]): layer4's 2x2 planes at 64 px / 32 (28 columns) 0.81 in
/// two runs, layer4.0.conv1 (44) 0.89 and 1.00. At batch 1, layer3's 7x7 planes at 112 px (40
/// columns over two threads) lost: 1.12-1.21.
const MIN_MEAN_TAP_COLUMNS_FORWARD: usize = 25;

/// From this many input channels on, taps go before Winograd where both pay. Winograd's 16
/// GEMMs per chunk stream 16 transformed weight matrices over ~160 tiles each, taps' 9 stream
/// the weights themselves over up to 512 columns, and with 256 channels and more the weight
/// traffic decides. Measured with `cargo bench -p face2exp-trainer --bench conv_algorithms`,
/// 2 threads, taps against Winograd in ms: 4x4 planes of 256 channels (64 px / batch 64)
/// forward 5.52 / 7.74, input gradient 5.62 / 7.02; 512 channels (112 px / 64) 20.6 / 21.6,
/// 22.8 / 22.2; 7x7 planes of 256 channels (112 px / 64) forward 17.2 / 20.6, input gradient
/// 18.4 / 19.9, weight gradient 19.1 / 26.9. With 128 channels Winograd won the forward and
/// the input gradient on 6x6 and 8x8 planes (48-64 px: 4.19 / 5.47 ms on 6x6's input gradient
/// at batch 64).
const WIDE_INPUT_CHANNELS: usize = 256;

/// Aim for at least this many GEMM columns (images x output pixels) per chunk, as im2col does.
const TARGET_TAP_COLUMNS: usize = 512;

/// Whether per-tap GEMMs can compute this convolution: any kernel larger than 1x1.
pub fn applies(g: &ConvGeometry) -> bool {
    g.k > 1 && g.out_h > 0 && g.out_w > 0
}

/// Whether per-tap GEMMs compute this pass: they [`apply`](applies), and with
/// [`ConvAlgorithm::Auto`] the border wastes enough of im2col's products and (forward, weight
/// gradient) the batch gives each tap's GEMM enough columns.
pub fn pays(g: &ConvGeometry, pass: Pass) -> bool {
    match conv_algorithm() {
        _ if !applies(g) => false,
        ConvAlgorithm::Im2col
        | ConvAlgorithm::Winograd
        | ConvAlgorithm::Winograd4
        | ConvAlgorithm::AutoNoTaps => false,
        ConvAlgorithm::Taps => true,
        ConvAlgorithm::Auto => pays_by_rule(g, pass),
    }
}

/// Whether taps go before Winograd where both [`pays`]: wide input channels
/// ([`WIDE_INPUT_CHANNELS`]).
pub fn beats_winograd(g: &ConvGeometry) -> bool {
    g.c_in >= WIDE_INPUT_CHANNELS
}

/// The [`ConvAlgorithm::Auto`] rule of [`pays`], for a convolution that [`applies`].
fn pays_by_rule(g: &ConvGeometry, pass: Pass) -> bool {
    let taps = taps(g);
    if g.c_in < MIN_INPUT_CHANNELS || useful_fraction(g, &taps) > MAX_USEFUL_FRACTION {
        return false;
    }
    let columns = mean_tap_columns(g, &taps);
    match pass {
        Pass::InputGrad => true,
        Pass::Forward => {
            let gemm_threads = match split_batch(g.batch).1 {
                Parallelism::Rayon(threads) => threads.max(1),
                Parallelism::None => 1,
            };
            columns / gemm_threads >= MIN_MEAN_TAP_COLUMNS_FORWARD
        }
        Pass::WeightGrad => columns >= MIN_MEAN_TAP_COLUMNS,
    }
}

/// GEMM columns (images x outputs) of a thread group's tap GEMMs, on average over the taps.
fn mean_tap_columns(g: &ConvGeometry, taps: &[Tap]) -> usize {
    let useful: usize = taps.iter().map(Tap::outputs).sum();
    split_batch(g.batch).0 * useful / taps.len().max(1)
}

/// The share of im2col's products that read inside the input, given the convolution's
/// [`taps`]: 16/36 on a 2x2 plane with a 3x3 kernel and padding 1, 49/81 on 3x3, 100/144 on
/// 4x4, 1 without padding.
fn useful_fraction(g: &ConvGeometry, taps: &[Tap]) -> f64 {
    let useful: usize = taps.iter().map(Tap::outputs).sum();
    useful as f64 / (g.k * g.k * g.out_plane()).max(1) as f64
}

/// One kernel tap and the rectangle of outputs at which it reads inside the input.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tap {
    /// `ky * k + kx`, the tap's place in a filter.
    index: usize,
    ky: usize,
    kx: usize,
    rows: Range<usize>,
    cols: Range<usize>,
}

impl Tap {
    fn outputs(&self) -> usize {
        self.rows.len() * self.cols.len()
    }

    /// Where output `(oy, ox)` of the rectangle reads the input, as an index into one plane.
    /// Only called inside the rectangle, where it is in bounds by construction.
    fn input_index(&self, g: &ConvGeometry, oy: usize, ox: usize) -> usize {
        (oy * g.stride + self.ky - g.padding) * g.w + ox * g.stride + self.kx - g.padding
    }
}

/// The outputs `o < out_len` whose input `o * stride + tap - padding` lies in `[0, in_len)`.
fn valid_outputs(
    tap: usize,
    stride: usize,
    padding: usize,
    in_len: usize,
    out_len: usize,
) -> Range<usize> {
    let first = padding.saturating_sub(tap).div_ceil(stride);
    let end = if in_len + padding > tap {
        ((in_len - 1 + padding - tap) / stride + 1).min(out_len)
    } else {
        0
    };
    first.min(end)..end
}

/// The taps that read inside the input at one output at least, in filter order.
fn taps(g: &ConvGeometry) -> Vec<Tap> {
    let mut taps = Vec::with_capacity(g.k * g.k);
    for ky in 0..g.k {
        let rows = valid_outputs(ky, g.stride, g.padding, g.h, g.out_h);
        for kx in 0..g.k {
            let cols = valid_outputs(kx, g.stride, g.padding, g.w, g.out_w);
            if !rows.is_empty() && !cols.is_empty() {
                let (index, rows) = (ky * g.k + kx, rows.clone());
                taps.push(Tap {
                    index,
                    ky,
                    kx,
                    rows,
                    cols,
                });
            }
        }
    }
    taps
}

/// Writes the transpose of each `rows x cols` block of `src` into the same block of `dst`:
/// (C_out, C_in, k*k) weights to tap-major (C_out, k*k, C_in). Blocks in parallel; each block's
/// few KiB stay in L1 while its rows are read with a stride and written contiguously.
fn transpose_blocks_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    let block = rows * cols;
    if block == 0 {
        return;
    }
    dst.par_chunks_mut(block)
        .zip(src.par_chunks(block))
        .for_each(|(d, s)| {
            for (c, d_row) in d.chunks_exact_mut(rows).enumerate() {
                for (r, v) in d_row.iter_mut().enumerate() {
                    *v = s[r * cols + c];
                }
            }
        });
}

thread_local! {
    /// The tap-major weights of the current call, kept between calls: re-laying out 512 x 512
    /// x 9 weights into a fresh (zeroed, faulted-in) 9 MiB vector took 1.6-4 ms, about what the
    /// skipped products save on a 2x2 plane.
    static TAP_WEIGHTS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Below this many columns per tap GEMM ([`mean_tap_columns`]) the taps read `W_t` from the
/// weights as they lie (a matrix with column stride `k * k`), which `gemm` packs anyway,
/// instead of from a tap-major copy: with so few columns each packed weight serves little
/// work, and the copy's full pass over the weights (9 MiB at 512 channels) cost more than the
/// strided packing. Measured with `cargo bench -p face2exp-trainer --bench conv_algorithms`
/// (64 px / batch 32, two runs, ratio to im2col, tap-major / in place): layer4's 2x2 planes
/// (28 columns per tap) forward 1.12 / 0.80-0.97, input gradient 0.99-1.00 / 0.85-0.91;
/// layer4.0.conv1 (44) forward 1.25-1.26 / 0.88-0.89, input gradient 1.08-1.22 / 0.89-0.97;
/// but layer3's 4x4 planes (178) forward 0.80-0.90 / 0.93-0.94, input gradient 0.56-0.62 /
/// 0.61-0.68, and layer3.0.conv1 (215) forward 1.12-1.13 / 1.14-1.18.
const MAX_MEAN_TAP_COLUMNS_IN_PLACE: usize = 100;

/// The weights as the tap GEMMs read them: `C_out x C_in x k*k` as given, or a tap-major
/// (`C_out x k*k x C_in`) copy.
#[derive(Clone, Copy)]
struct TapWeights<'a> {
    data: &'a [f32],
    tap_major: bool,
}

impl<'a> TapWeights<'a> {
    /// `W_t` (C_out x C_in).
    fn of(self, g: &ConvGeometry, tap: &Tap) -> MatRef<'a> {
        let taps = g.k * g.k;
        let (start, col_stride) = self.tap_start_and_stride(g, tap);
        MatRef {
            data: &self.data[start..],
            row_stride: taps * g.c_in,
            col_stride,
        }
    }

    /// `W_t^T` (C_in x C_out).
    fn transposed_of(self, g: &ConvGeometry, tap: &Tap) -> MatRef<'a> {
        let taps = g.k * g.k;
        let (start, row_stride) = self.tap_start_and_stride(g, tap);
        MatRef {
            data: &self.data[start..],
            row_stride,
            col_stride: taps * g.c_in,
        }
    }

    /// Where `W_t`'s first value lies, and the stride between its input channels.
    fn tap_start_and_stride(self, g: &ConvGeometry, tap: &Tap) -> (usize, usize) {
        if self.tap_major {
            (tap.index * g.c_in, 1)
        } else {
            (tap.index, g.k * g.k)
        }
    }
}

/// Runs `body` with the weights `w` as the taps read them ([`MAX_MEAN_TAP_COLUMNS_IN_PLACE`]).
fn with_tap_weights<R>(
    g: &ConvGeometry,
    taps: &[Tap],
    w: &[f32],
    body: impl FnOnce(TapWeights<'_>) -> R,
) -> R {
    if mean_tap_columns(g, taps) < MAX_MEAN_TAP_COLUMNS_IN_PLACE {
        return body(TapWeights {
            data: w,
            tap_major: false,
        });
    }
    let mut buffer = TAP_WEIGHTS.with(|cell| cell.take());
    let w_taps = at_least(&mut buffer, w.len());
    transpose_blocks_into(w, g.c_in, g.k * g.k, w_taps);
    let result = body(TapWeights {
        data: w_taps,
        tap_major: true,
    });
    TAP_WEIGHTS.with(|cell| cell.set(buffer));
    result
}

/// The thread groups and chunks: as im2col's, sized by the wider of a chunk's input and
/// output column matrices.
fn plan(g: &ConvGeometry) -> Plan {
    Plan::for_columns(
        g.batch,
        g.out_plane(),
        g.c_in.max(g.c_out),
        TARGET_TAP_COLUMNS,
    )
}

/// `X_t` of images `[first, first + count)` of `x`: (C_in, count * |R_t|), image-major columns.
fn gather_tap_input(
    g: &ConvGeometry,
    tap: &Tap,
    x: &[f32],
    (first, count): (usize, usize),
    dst: &mut [f32],
) {
    let (plane, in_image) = (g.in_plane(), g.c_in * g.in_plane());
    let (per_image, width) = (tap.outputs(), tap.cols.len());
    let columns = count * per_image;
    for c in 0..g.c_in {
        for b in 0..count {
            let src = &x[(first + b) * in_image + c * plane..][..plane];
            let dst = &mut dst[c * columns + b * per_image..][..per_image];
            for (dst_row, oy) in dst.chunks_exact_mut(width).zip(tap.rows.clone()) {
                let start = tap.input_index(g, oy, tap.cols.start);
                if g.stride == 1 {
                    copy_short(dst_row, &src[start..start + width]);
                } else {
                    for (j, d) in dst_row.iter_mut().enumerate() {
                        *d = src[start + j * g.stride];
                    }
                }
            }
        }
    }
}

/// `dy[R_t]`, (C_out, count * |R_t|), from a chunk's gathered output gradient (C_out,
/// count * plane).
fn cut_to_tap(g: &ConvGeometry, tap: &Tap, chunk: &[f32], count: usize, dst: &mut [f32]) {
    let plane = g.out_plane();
    let (per_image, width) = (tap.outputs(), tap.cols.len());
    for (c, dst) in dst.chunks_exact_mut(count * per_image).enumerate() {
        for (b, dst) in dst.chunks_exact_mut(per_image).enumerate() {
            let src = &chunk[(c * count + b) * plane..][..plane];
            for (dst_row, oy) in dst.chunks_exact_mut(width).zip(tap.rows.clone()) {
                let start = oy * g.out_w + tap.cols.start;
                copy_short(dst_row, &src[start..start + width]);
            }
        }
    }
}

/// The adjoint of [`cut_to_tap`]: adds a tap's (C_out, count * |R_t|) outputs into a chunk's
/// (C_out, count * plane) outputs.
fn add_from_tap(g: &ConvGeometry, tap: &Tap, part: &[f32], count: usize, chunk: &mut [f32]) {
    let plane = g.out_plane();
    let (per_image, width) = (tap.outputs(), tap.cols.len());
    for (c, part) in part.chunks_exact(count * per_image).enumerate() {
        for (b, part) in part.chunks_exact(per_image).enumerate() {
            let dst = &mut chunk[(c * count + b) * plane..][..plane];
            for (part_row, oy) in part.chunks_exact(width).zip(tap.rows.clone()) {
                let start = oy * g.out_w + tap.cols.start;
                for (d, v) in dst[start..start + width].iter_mut().zip(part_row) {
                    *d += *v;
                }
            }
        }
    }
}

/// The adjoint of [`gather_tap_input`]: adds a tap's (C_in, count * |R_t|) input gradient
/// onto the images of a group, `images` starting at the chunk's first image.
fn scatter_tap_input(g: &ConvGeometry, tap: &Tap, part: &[f32], count: usize, images: &mut [f32]) {
    let (plane, in_image) = (g.in_plane(), g.c_in * g.in_plane());
    let (per_image, width) = (tap.outputs(), tap.cols.len());
    for (c, part) in part.chunks_exact(count * per_image).enumerate() {
        for (b, part) in part.chunks_exact(per_image).enumerate() {
            let dst = &mut images[b * in_image + c * plane..][..plane];
            for (part_row, oy) in part.chunks_exact(width).zip(tap.rows.clone()) {
                let start = tap.input_index(g, oy, tap.cols.start);
                for (j, v) in part_row.iter().enumerate() {
                    dst[start + j * g.stride] += *v;
                }
            }
        }
    }
}

/// y = conv2d(x, w) by taps.
pub(super) fn forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (plane, c_in, c_out) = (g.out_plane(), g.c_in, g.c_out);
    let out_image = c_out * plane;
    let (taps, plan) = (taps(g), plan(g));
    with_tap_weights(g, &taps, w, |w_taps| {
        plan.output(out_image, |scratch, chunk, y_group| {
            let Scratch {
                col, out, gathered, ..
            } = scratch;
            let count = chunk.count;
            let outputs = at_least(out, c_out * count * plane);
            outputs.fill(0.0);
            for tap in &taps {
                let n = count * tap.outputs();
                let x_tap = at_least(col, c_in * n);
                gather_tap_input(g, tap, x, (chunk.first, count), x_tap);
                let (lhs, rhs) = (w_taps.of(g, tap), dense(x_tap, n));
                if tap.outputs() == plane {
                    sgemm(
                        c_out,
                        n,
                        c_in,
                        outputs,
                        true,
                        lhs,
                        rhs,
                        plan.gemm_parallelism,
                    );
                } else {
                    let part = at_least(gathered, c_out * n);
                    sgemm(c_out, n, c_in, part, false, lhs, rhs, plan.gemm_parallelism);
                    add_from_tap(g, tap, part, count, outputs);
                }
            }
            scatter_chunk(outputs, c_out, plane, chunk.in_group, count, y_group);
        })
    })
}

/// A chunk's output gradient `dy` (C_out, count * plane) cut to a tap's rectangle, in `cut`
/// unless the rectangle is the whole plane.
fn tap_output_grad<'a>(
    g: &ConvGeometry,
    tap: &Tap,
    dy: &'a [f32],
    count: usize,
    cut: &'a mut Vec<f32>,
) -> &'a [f32] {
    if tap.outputs() == g.out_plane() {
        return dy;
    }
    let cut = at_least(cut, g.c_out * count * tap.outputs());
    cut_to_tap(g, tap, dy, count, cut);
    cut
}

/// dL/dx by taps.
pub(super) fn input_grad(g: &ConvGeometry, grad_y: &[f32], w: &[f32]) -> Vec<f32> {
    let (plane, c_in, c_out) = (g.out_plane(), g.c_in, g.c_out);
    let in_image = c_in * g.in_plane();
    if plane == 0 {
        return vec![0f32; g.batch * in_image];
    }
    let (taps, plan) = (taps(g), plan(g));
    with_tap_weights(g, &taps, w, |w_taps| {
        plan.output(in_image, |scratch, chunk, gx_group| {
            let Scratch {
                col, out, gathered, ..
            } = scratch;
            let count = chunk.count;
            let dy = chunk_matrix(grad_y, c_out, plane, chunk, gathered);
            let dx_images = &mut gx_group[chunk.in_group * in_image..][..count * in_image];
            for tap in &taps {
                let n = count * tap.outputs();
                let dy_tap = tap_output_grad(g, tap, dy, count, col);
                let part = at_least(out, c_in * n);
                let lhs = w_taps.transposed_of(g, tap);
                let rhs = dense(dy_tap, n);
                sgemm(c_in, n, c_out, part, false, lhs, rhs, plan.gemm_parallelism);
                scatter_tap_input(g, tap, part, count, dx_images);
            }
        })
    })
}

/// dL/dw by taps: each thread group sums its images' `dy[R_t] X_t^T` into tap-major partials.
pub(super) fn weight_grad(g: &ConvGeometry, x: &[f32], grad_y: &[f32]) -> Vec<f32> {
    let (plane, c_in, c_out, taps_len) = (g.out_plane(), g.c_in, g.c_out, g.k * g.k);
    let (taps, plan) = (taps(g), plan(g));
    let partials = plan.partials(c_out * taps_len * c_in, |scratch, chunk, grad_w| {
        let Scratch {
            col, out, gathered, ..
        } = scratch;
        let count = chunk.count;
        let first_chunk = chunk.in_group == 0;
        if first_chunk && taps.len() < taps_len {
            // Taps that never read inside the input get no GEMM; their gradient is zero.
            let unread = (0..taps_len).filter(|t| !taps.iter().any(|tap| tap.index == *t));
            for t in unread {
                for row in grad_w.chunks_exact_mut(taps_len * c_in) {
                    row[t * c_in..(t + 1) * c_in].fill(0.0);
                }
            }
        }
        let dy = chunk_matrix(grad_y, c_out, plane, chunk, gathered);
        for tap in &taps {
            let n = count * tap.outputs();
            let dy_tap = tap_output_grad(g, tap, dy, count, out);
            let x_tap = at_least(col, c_in * n);
            gather_tap_input(g, tap, x, (chunk.first, count), x_tap);
            sgemm_rows(
                c_out,
                c_in,
                n,
                &mut grad_w[tap.index * c_in..],
                taps_len * c_in,
                !first_chunk,
                dense(dy_tap, n),
                transposed(x_tap, n),
                plan.gemm_parallelism,
            );
        }
    });
    // Sum the groups' tap-major partials and lay them out as (C_out, C_in, k*k) in one pass.
    let block = taps_len * c_in;
    let parts = partials.parts();
    par_zeroed(c_out * block, block, |co, dst| {
        for partial in &parts {
            let src = &partial[co * block..(co + 1) * block];
            for (ci, dst_taps) in dst.chunks_exact_mut(taps_len).enumerate() {
                for (t, d) in dst_taps.iter_mut().enumerate() {
                    *d += src[t * c_in + ci];
                }
            }
        }
    })
}

#[cfg(test)]
mod tests;
