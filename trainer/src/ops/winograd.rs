//! Winograd F(2x2, 3x3) for the 3x3 stride-1 convolutions, thirteen of ResNet-18's twenty
//! convolutions and 83 % of its multiply-adds: forward, input gradient and weight gradient.
//!
//! Why: with im2col, a 3x3 convolution is one GEMM with `9 * C_in` inner products per output
//! pixel. Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks", CVPR 2016) computes each 2x2 output tile from a 4x4 input tile with 16 products
//! per channel pair instead of 36, so the GEMM work drops 2.25x; and the transformed input is
//! 4x the input (16 values per 2x2 tile) where im2col's column matrix is 9x. The transforms
//! only add and halve, so the results match im2col's to float rounding.
//!
//! Notation (the paper's): `d` a 4x4 input tile, `g` a 3x3 filter, `Y` a 2x2 output tile,
//! `Y = A^T [(G g G^T) ⊙ (B^T d B)] A`. For a chunk of images with `T` tiles in all, the
//! transformed input is 16 matrices `V_ξ` (`C_in x T`), the transformed weights 16 matrices
//! `U_ξ` (`C_out x C_in`) and the GEMMs `M_ξ = U_ξ V_ξ` (`C_out x T`), for the 16 positions
//! `ξ = 4 * row + column` of a tile.
//!
//! - The input gradient of a stride-1 convolution is the convolution of the output gradient
//!   with the weights flipped and their channel axes swapped, padding `2 - p`: the same forward
//!   pass on other operands.
//! - The weight gradient is the adjoint of the forward: `dU = Σ (A dY A^T) ⊙ (B^T d B)` over
//!   tiles (16 GEMMs `P_ξ V_ξ^T`), then `dg = G^T dU G`.
//!
//! Threads and chunks follow `chunks.rs`, as im2col's do: the batch is split into one group
//! per rayon thread, each group transforms and multiplies chunks of images on its own scratch.

use super::algorithm::{conv_algorithm, ConvAlgorithm, Pass};
use super::chunks::{at_least, dense, split_batch, sum_partials, transposed, Plan};
use super::im2col::{sgemm, ConvGeometry, MatRef};
use rayon::prelude::*;

/// Positions in a transformed 4x4 tile.
const POSITIONS: usize = 16;
/// Aim for at least this many tiles (GEMM columns) per chunk of images (within chunks.rs's
/// memory bound on a chunk).
const TARGET_CHUNK_TILES: usize = 160;

/// Whether Winograd can compute this convolution: 3x3 kernel, stride 1, padding at most 2 (so
/// that the input gradient is a convolution with non-negative padding too).
pub fn applies(g: &ConvGeometry) -> bool {
    g.k == 3 && g.stride == 1 && g.padding <= 2 && g.out_h > 0 && g.out_w > 0
}

/// Fewest tiles per thread group (GEMM columns per transformed position, see [`Plan`]) at which
/// Winograd's forward and input gradient beat im2col, and its weight gradient. Below them the
/// 16 GEMMs per chunk are too narrow for the transformed weights they stream (16 MiB for
/// 512 x 512 channels), and the weight gradient's 16-matrix partial sums cost more than they
/// save. Measured with `cargo bench -p face2exp-trainer --bench conv_algorithms` (ResNet-18 at
/// 64 px / batch 32 and 112 px / batch 64, 2 threads): forward and input gradient lose at 16
/// tiles per group (ratio 1.04-1.34) and win from 64 (0.58-0.83); the weight gradient loses at
/// 64 (1.12), breaks even at 512 on a 7x7 plane (0.98) and wins at 256 on 8x8 and up (0.65-0.83).
const MIN_GROUP_TILES: usize = 64;
const MIN_GROUP_TILES_WEIGHT_GRAD: usize = 256;
/// Smallest output side at which Winograd pays: on a 3x3 plane the 2x2 tiles cover 4x4, and
/// with 7 of 16 outputs wasted it lost on every pass (ratio 1.07-1.34 at 48 px / batch 64).
const MIN_PLANE_SIDE: usize = 4;

/// Whether Winograd computes this pass: it [`applies`], and with [`ConvAlgorithm::Auto`] the
/// batch also gives each thread group enough tiles for its GEMMs.
pub fn pays(g: &ConvGeometry, pass: Pass) -> bool {
    match conv_algorithm() {
        _ if !applies(g) => return false,
        ConvAlgorithm::Im2col | ConvAlgorithm::Taps => return false,
        ConvAlgorithm::Winograd => return true,
        ConvAlgorithm::Auto | ConvAlgorithm::AutoNoTaps => {}
    }
    if g.out_h.min(g.out_w) < MIN_PLANE_SIDE {
        return false;
    }
    let (images_per_group, _) = split_batch(g.batch);
    let group_tiles = Tiles::new(g).per_image() * images_per_group;
    match pass {
        Pass::Forward | Pass::InputGrad => group_tiles >= MIN_GROUP_TILES,
        Pass::WeightGrad => group_tiles >= MIN_GROUP_TILES_WEIGHT_GRAD,
    }
}

/// The tile grid of a convolution's output, and the zero-bordered input plane it reads.
#[derive(Debug, Clone, Copy)]
struct Tiles {
    rows: usize,
    cols: usize,
    /// Width of the bordered plane: the input sits at (padding, padding); the border and what
    /// lies past the input (where the last tile overhangs an odd output) are zeros. Rows are
    /// stored deinterleaved ([`deinterleave_into`]), `plane_w / 2` even columns first.
    plane_w: usize,
    plane_len: usize,
}

impl Tiles {
    fn new(g: &ConvGeometry) -> Self {
        let (rows, cols) = (g.out_h.div_ceil(2), g.out_w.div_ceil(2));
        // 2 * rows + 2 >= out_h + 2 = h + 2 * padding: the plane holds the padded input.
        let plane_w = 2 * cols + 2;
        Self {
            rows,
            cols,
            plane_w,
            plane_len: plane_w * (2 * rows + 2),
        }
    }

    fn per_image(&self) -> usize {
        self.rows * self.cols
    }
}

/// The chunk plan of a Winograd pass: one GEMM column per tile, and per column 16 transformed
/// values of every channel on the wider side.
fn chunk_plan(g: &ConvGeometry, tiles_per_image: usize) -> Plan {
    let floats_per_column = POSITIONS * g.c_in.max(g.c_out);
    Plan::for_columns(
        g.batch,
        tiles_per_image,
        floats_per_column,
        TARGET_CHUNK_TILES,
    )
}

/// `B^T d B` of every tile of one image, into columns `[first, first + tiles)` of the 16
/// matrices `V_ξ` (`C_in x columns`, stored one after the other in `v`). `plane` is scratch.
///
/// Row by row of tiles: first `B^T` down the four plane rows a tile row reads (whole rows,
/// contiguous), then `B` across them, writing each of the 16 positions as one contiguous run
/// over the tiles of the row.
fn transform_input(
    g: &ConvGeometry,
    tiles: &Tiles,
    image: &[f32],
    v: &mut [f32],
    (columns, first): (usize, usize),
    plane: &mut Vec<f32>,
) {
    let pw = tiles.plane_w;
    plane.clear();
    plane.resize(tiles.plane_len + 4 * pw, 0.0);
    let (plane, rows) = plane.split_at_mut(tiles.plane_len);
    let position_stride = g.c_in * columns;
    for c in 0..g.c_in {
        let src = &image[c * g.in_plane()..(c + 1) * g.in_plane()];
        for (r, row) in src.chunks_exact(g.w).enumerate() {
            deinterleave_into(
                &mut plane[(r + g.padding) * pw..(r + 1 + g.padding) * pw],
                row,
                g.padding,
            );
        }
        for ti in 0..tiles.rows {
            let d = |r: usize| &plane[(2 * ti + r) * pw..(2 * ti + r + 1) * pw];
            let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
            // B^T d: rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
            let (t0, rest) = rows.split_at_mut(pw);
            let (t1, rest) = rest.split_at_mut(pw);
            let (t2, t3) = rest.split_at_mut(pw);
            combine(t0, d0, d2, |a, b| a - b);
            combine(t1, d1, d2, |a, b| a + b);
            combine(t2, d2, d1, |a, b| a - b);
            combine(t3, d1, d3, |a, b| a - b);
            let run = c * columns + first + ti * tiles.cols;
            for (r, t) in [&*t0, &*t1, &*t2, &*t3].into_iter().enumerate() {
                let at = |c4: usize| (r * 4 + c4) * position_stride + run;
                let out = |c4: usize| at(c4)..at(c4) + tiles.cols;
                // ... then B on columns: (x0 - x2, x1 + x2, x2 - x1, x1 - x3), where x0..x3
                // are columns 2tj..2tj+3: even[tj], odd[tj], even[tj + 1], odd[tj + 1].
                let (even, odd) = t.split_at(pw / 2);
                let n = tiles.cols;
                let (e0, e1, o0, o1) = (&even[..n], &even[1..=n], &odd[..n], &odd[1..=n]);
                combine(&mut v[out(0)], e0, e1, |a, b| a - b);
                combine(&mut v[out(1)], o0, e1, |a, b| a + b);
                combine(&mut v[out(2)], e1, o0, |a, b| a - b);
                combine(&mut v[out(3)], o0, o1, |a, b| a - b);
            }
        }
    }
}

/// Writes `src` into the plane row `dst` starting at column `offset`, columns deinterleaved:
/// even columns in the first half of `dst`, odd columns in the second, so that the column
/// transforms, which read columns 2tj..2tj+3 of every tile, read contiguous runs instead.
fn deinterleave_into(dst: &mut [f32], src: &[f32], offset: usize) {
    let half = dst.len() / 2;
    let (even, odd) = dst.split_at_mut(half);
    // Column offset + i lands in `even` when offset + i is even: the first source value goes to
    // `even` (at offset / 2) or, for an odd offset, to `odd` (at offset / 2), and the two
    // alternate from there.
    let (first, second, second_at) = if offset % 2 == 0 {
        (&mut even[offset / 2..], &mut odd[offset / 2..], 0)
    } else {
        (&mut odd[offset / 2..], &mut even[offset / 2..], 1)
    };
    for (d, s) in first.iter_mut().zip(src.iter().step_by(2)) {
        *d = *s;
    }
    for (d, s) in second[second_at..]
        .iter_mut()
        .zip(src.iter().skip(1).step_by(2))
    {
        *d = *s;
    }
}

/// `out[i] = f(a[i], b[i])` over the shortest of the three, as zipped iterators: no bounds
/// checks, so the compiler vectorises it.
#[inline(always)]
fn combine(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = f(*x, *y);
    }
}

/// The transformed filters `U_ξ = G g G^T`, stored filter-row-major: `u[(row * 16 + ξ) *
/// row_len + col]`, so that each `U_ξ` is a strided matrix (row stride `16 * row_len`) and the
/// rows split over threads. Forward: rows are output channels, columns input channels. With
/// `adjoint`, the filters of the input gradient: flipped in both axes, channel axes swapped.
struct TransformedWeights {
    u: Vec<f32>,
    rows: usize,
    row_len: usize,
}

impl TransformedWeights {
    fn new(w: &[f32], c_out: usize, c_in: usize, adjoint: bool) -> Self {
        let (rows, row_len) = if adjoint {
            (c_in, c_out)
        } else {
            (c_out, c_in)
        };
        let mut u = vec![0f32; rows * POSITIONS * row_len];
        u.par_chunks_mut(POSITIONS * row_len)
            .enumerate()
            .for_each(|(row, u_row)| {
                for col in 0..row_len {
                    let (co, ci) = if adjoint { (col, row) } else { (row, col) };
                    let k: &[f32; 9] = w[(co * c_in + ci) * 9..(co * c_in + ci + 1) * 9]
                        .try_into()
                        .expect("nine taps");
                    let tap = |r: usize, c: usize| {
                        if adjoint {
                            k[(2 - r) * 3 + (2 - c)]
                        } else {
                            k[r * 3 + c]
                        }
                    };
                    // G g: rows (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2), then on
                    // columns.
                    let column = |c: usize| {
                        let (a, b, d) = (tap(0, c), tap(1, c), tap(2, c));
                        [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d]
                    };
                    let columns = [column(0), column(1), column(2)];
                    let gg: [[f32; 3]; 4] =
                        std::array::from_fn(|r| [columns[0][r], columns[1][r], columns[2][r]]);
                    for (r, [a, b, d]) in gg.into_iter().enumerate() {
                        let row = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                        for (c, value) in row.into_iter().enumerate() {
                            u_row[(r * 4 + c) * row_len + col] = value;
                        }
                    }
                }
            });
        Self { u, rows, row_len }
    }

    /// `U_ξ` as a (rows x row_len) matrix view.
    fn position(&self, xi: usize) -> MatRef<'_> {
        let start = xi * self.row_len;
        let end = (self.rows - 1) * POSITIONS * self.row_len + start + self.row_len;
        MatRef {
            data: &self.u[start..end],
            row_stride: POSITIONS * self.row_len,
            col_stride: 1,
        }
    }
}

/// `A^T M A` of the tiles in columns `[first, first + tiles)` of the 16 matrices `M_ξ`
/// (`C_out x columns`), written into one output image, clipped at its edges. `rows` is scratch.
fn transform_output(
    g: &ConvGeometry,
    tiles: &Tiles,
    m: &[f32],
    (columns, first): (usize, usize),
    out_image: &mut [f32],
    rows: &mut Vec<f32>,
) {
    let position_stride = g.c_out * columns;
    let (oh, ow, n) = (g.out_h, g.out_w, tiles.cols);
    rows.clear();
    rows.resize(8 * n, 0.0);
    for co in 0..g.c_out {
        let plane = &mut out_image[co * oh * ow..(co + 1) * oh * ow];
        for ti in 0..tiles.rows {
            let run = co * columns + first + ti * n;
            let m_at = |xi: usize| &m[xi * position_stride + run..xi * position_stride + run + n];
            // A^T m: rows (m0 + m1 + m2, m1 - m2 - m3), one run over the tiles per column c.
            for c in 0..4 {
                let (m0, m1, m2, m3) = (m_at(c), m_at(4 + c), m_at(8 + c), m_at(12 + c));
                let (s0, s1) = rows[c * 2 * n..(c + 1) * 2 * n].split_at_mut(n);
                for (s, (a, (b, c))) in s0.iter_mut().zip(m0.iter().zip(m1.iter().zip(m2))) {
                    *s = a + b + c;
                }
                for (s, (b, (c, d))) in s1.iter_mut().zip(m1.iter().zip(m2.iter().zip(m3))) {
                    *s = b - c - d;
                }
            }
            // ... then the same on columns: (s0 + s1 + s2, s1 - s2 - s3).
            for r in 0..2 {
                let y = 2 * ti + r;
                if y >= oh {
                    break;
                }
                let s = |c: usize| &rows[(c * 2 + r) * n..(c * 2 + r + 1) * n];
                let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
                let out_row = &mut plane[y * ow..(y + 1) * ow];
                for tj in 0..ow / 2 {
                    out_row[2 * tj] = s0[tj] + s1[tj] + s2[tj];
                    out_row[2 * tj + 1] = s1[tj] - s2[tj] - s3[tj];
                }
                if ow % 2 == 1 {
                    let tj = n - 1;
                    out_row[ow - 1] = s0[tj] + s1[tj] + s2[tj];
                }
            }
        }
    }
}

/// `A dY A^T` of every 2x2 tile of one output-gradient image (zeros past its edges), into
/// columns `[first, first + tiles)` of the 16 matrices `P_ξ` (`C_out x columns`). `plane` is
/// scratch.
fn transform_output_grad(
    g: &ConvGeometry,
    tiles: &Tiles,
    grad_image: &[f32],
    p: &mut [f32],
    (columns, first): (usize, usize),
    plane: &mut Vec<f32>,
) {
    let position_stride = g.c_out * columns;
    let (oh, ow, n) = (g.out_h, g.out_w, tiles.cols);
    // The gradient plane grown to whole tiles, the overhang zero.
    let pw = 2 * n;
    plane.clear();
    plane.resize(pw * 2 * tiles.rows + 4 * pw, 0.0);
    let (padded, rows) = plane.split_at_mut(pw * 2 * tiles.rows);
    for co in 0..g.c_out {
        let src = &grad_image[co * oh * ow..(co + 1) * oh * ow];
        for (r, row) in src.chunks_exact(ow).enumerate() {
            deinterleave_into(&mut padded[r * pw..(r + 1) * pw], row, 0);
        }
        for ti in 0..tiles.rows {
            let y0 = &padded[2 * ti * pw..(2 * ti + 1) * pw];
            let y1 = &padded[(2 * ti + 1) * pw..(2 * ti + 2) * pw];
            // A y: rows (y0, y0 + y1, y0 - y1, -y1), whole plane rows...
            let (t1, rest) = rows.split_at_mut(pw);
            let (t2, t3) = rest[..2 * pw].split_at_mut(pw);
            combine(t1, y0, y1, |a, b| a + b);
            combine(t2, y0, y1, |a, b| a - b);
            combine(t3, y0, y1, |_, b| -b);
            let run = co * columns + first + ti * n;
            for (r, t) in [y0, &*t1, &*t2, &*t3].into_iter().enumerate() {
                let at = |c4: usize| (r * 4 + c4) * position_stride + run;
                let out = |c4: usize| at(c4)..at(c4) + n;
                // ... then the same on columns: (u0, u0 + u1, u0 - u1, -u1), where u0 and u1
                // are columns 2tj and 2tj + 1: even[tj] and odd[tj].
                let (even, odd) = t.split_at(n);
                p[out(0)].copy_from_slice(even);
                combine(&mut p[out(1)], even, odd, |a, b| a + b);
                combine(&mut p[out(2)], even, odd, |a, b| a - b);
                combine(&mut p[out(3)], even, odd, |_, b| -b);
            }
        }
    }
}

/// y = conv2d(x, w) for a 3x3 stride-1 convolution ([`applies`]).
pub fn forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let u = TransformedWeights::new(w, g.c_out, g.c_in, false);
    let mut y = vec![0f32; g.batch * g.c_out * g.out_plane()];
    run_forward(g, x, &u, &mut y);
    y
}

/// dL/dx for a 3x3 stride-1 convolution: the forward pass over dL/dy with the adjoint filters.
pub fn input_grad(g: &ConvGeometry, grad_y: &[f32], w: &[f32]) -> Vec<f32> {
    let adjoint = ConvGeometry {
        batch: g.batch,
        c_in: g.c_out,
        h: g.out_h,
        w: g.out_w,
        c_out: g.c_in,
        k: 3,
        stride: 1,
        padding: 2 - g.padding,
        out_h: g.h,
        out_w: g.w,
    };
    let u = TransformedWeights::new(w, g.c_out, g.c_in, true);
    let mut grad_x = vec![0f32; g.batch * g.c_in * g.in_plane()];
    run_forward(&adjoint, grad_y, &u, &mut grad_x);
    grad_x
}

fn run_forward(g: &ConvGeometry, x: &[f32], u: &TransformedWeights, y: &mut [f32]) {
    let tiles = Tiles::new(g);
    let per_image = tiles.per_image();
    let plan = chunk_plan(g, per_image);
    let (in_image, out_image) = (g.c_in * g.in_plane(), g.c_out * g.out_plane());
    plan.for_each_chunk(y, out_image, |scratch, chunk, y_group| {
        let columns = chunk.count * per_image;
        let v = at_least(&mut scratch.col, POSITIONS * g.c_in * columns);
        for b in 0..chunk.count {
            let image = chunk.first + b;
            let src = &x[image * in_image..(image + 1) * in_image];
            let at = (columns, b * per_image);
            transform_input(g, &tiles, src, v, at, &mut scratch.padded);
        }
        let m = at_least(&mut scratch.out, POSITIONS * g.c_out * columns);
        for xi in 0..POSITIONS {
            let v_xi = xi * g.c_in * columns;
            let m_xi = &mut m[xi * g.c_out * columns..(xi + 1) * g.c_out * columns];
            let rhs = dense(&v[v_xi..v_xi + g.c_in * columns], columns);
            sgemm(
                g.c_out,
                columns,
                g.c_in,
                m_xi,
                false,
                u.position(xi),
                rhs,
                plan.gemm_parallelism,
            );
        }
        for b in 0..chunk.count {
            let image = chunk.in_group + b;
            let dst = &mut y_group[image * out_image..(image + 1) * out_image];
            let at = (columns, b * per_image);
            transform_output(g, &tiles, m, at, dst, &mut scratch.gathered);
        }
    });
}

/// dL/dw for a 3x3 stride-1 convolution: each thread group sums `dU` over its images, the
/// partial sums are added, and `G^T dU G` gives the (C_out, C_in, 3, 3) gradient.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], grad_y: &[f32]) -> Vec<f32> {
    let tiles = Tiles::new(g);
    let per_image = tiles.per_image();
    let plan = chunk_plan(g, per_image);
    let (in_image, out_image) = (g.c_in * g.in_plane(), g.c_out * g.out_plane());
    let matrix = g.c_out * g.c_in;
    let partials = plan.partials(POSITIONS * matrix, |scratch, chunk, grad_u| {
        let columns = chunk.count * per_image;
        let v = at_least(&mut scratch.col, POSITIONS * g.c_in * columns);
        let p = at_least(&mut scratch.out, POSITIONS * g.c_out * columns);
        for b in 0..chunk.count {
            let image = chunk.first + b;
            let at = (columns, b * per_image);
            let src = &x[image * in_image..(image + 1) * in_image];
            transform_input(g, &tiles, src, v, at, &mut scratch.padded);
            let grad = &grad_y[image * out_image..(image + 1) * out_image];
            transform_output_grad(g, &tiles, grad, p, at, &mut scratch.gathered);
        }
        for xi in 0..POSITIONS {
            let (p_xi, v_xi) = (xi * g.c_out * columns, xi * g.c_in * columns);
            sgemm(
                g.c_out,
                g.c_in,
                columns,
                &mut grad_u[xi * matrix..(xi + 1) * matrix],
                chunk.in_group > 0,
                dense(&p[p_xi..p_xi + g.c_out * columns], columns),
                transposed(&v[v_xi..v_xi + g.c_in * columns], columns),
                plan.gemm_parallelism,
            );
        }
    });
    untransform_weight_grad(&sum_partials(partials, POSITIONS * matrix), matrix)
}

/// `G^T dU G` for every (C_out, C_in) pair: the 16 matrices `dU_ξ` back to 3x3 filters.
/// Blocks of pairs run in parallel; each block first gathers its pairs' 16 values from the 16
/// matrices as contiguous runs (reading them pair by pair would touch 16 cache lines per pair:
/// 10 ms for 512 x 512 channels, single-threaded, before this).
fn untransform_weight_grad(grad_u: &[f32], matrix: usize) -> Vec<f32> {
    const BLOCK: usize = 256;
    let mut grad_w = vec![0f32; matrix * 9];
    // G^T applied to a 4-vector u: (u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3).
    let g_t = |u: [f32; 4]| {
        let half_sum = 0.5 * (u[1] + u[2]);
        [u[0] + half_sum, 0.5 * (u[1] - u[2]), half_sum + u[3]]
    };
    grad_w
        .par_chunks_mut(9 * BLOCK)
        .enumerate()
        .for_each(|(block, filters)| {
            let first = block * BLOCK;
            let pairs = filters.len() / 9;
            let mut gathered = [[0f32; BLOCK]; POSITIONS];
            for (xi, run) in gathered.iter_mut().enumerate() {
                let at = xi * matrix + first;
                run[..pairs].copy_from_slice(&grad_u[at..at + pairs]);
            }
            for (pair, filter) in filters.chunks_exact_mut(9).enumerate() {
                let du = |r: usize, c: usize| gathered[r * 4 + c][pair];
                // Columns first: G^T on each column of dU (4x4 -> 3x4), then on each row.
                let columns: [[f32; 3]; 4] =
                    std::array::from_fn(|c| g_t([du(0, c), du(1, c), du(2, c), du(3, c)]));
                for (r, out) in filter.chunks_exact_mut(3).enumerate() {
                    out.copy_from_slice(&g_t(columns.map(|column| column[r])));
                }
            }
        });
    grad_w
}

#[cfg(test)]
mod tests;
