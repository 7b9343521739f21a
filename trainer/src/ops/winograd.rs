//! Winograd's minimal filtering for the 3x3 stride-1 convolutions, thirteen of ResNet-18's
//! twenty convolutions and 83 % of its multiply-adds: forward, input gradient and weight
//! gradient, with 2x2 output tiles (F(2x2, 3x3), `f2.rs`) or 4x4 (F(4x4, 3x3), `f4.rs`).
//!
//! Why: with im2col, a 3x3 convolution is one GEMM with `9 * C_in` inner products per output
//! pixel. Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks", CVPR 2016) computes each `m x m` output tile from an `(m + 2) x (m + 2)` input
//! tile with `(m + 2)^2` products per channel pair instead of `9 m^2`: 4 per output instead of
//! 9 with 2x2 tiles, 2.25 with 4x4. The transformed input is `(m + 2)^2 / m^2` times the
//! output (4x, 2.25x) where im2col's column matrix is 9x. 2x2 tiles only add and halve, so
//! they match im2col to float rounding; 4x4 tiles cost about one decimal digit (`f4.rs`).
//!
//! Notation (the paper's): `d` an input tile, `g` a 3x3 filter, `Y` an output tile,
//! `Y = A^T [(G g G^T) ⊙ (B^T d B)] A`. For a chunk of images with `T` tiles in all, the
//! transformed input is `(m + 2)^2` matrices `V_ξ` (`C_in x T`), the transformed weights as
//! many `U_ξ` (`C_out x C_in`) and the GEMMs `M_ξ = U_ξ V_ξ` (`C_out x T`), for the positions
//! `ξ = (m + 2) * row + column` of a tile.
//!
//! - The input gradient of a stride-1 convolution is the convolution of the output gradient
//!   with the weights flipped and their channel axes swapped, padding `2 - p`: the same forward
//!   pass on other operands.
//! - The weight gradient is the adjoint of the forward: `dU = Σ (A dY A^T) ⊙ (B^T d B)` over
//!   tiles (one GEMM `P_ξ V_ξ^T` per position), then `dg = G^T dU G`.
//!
//! Threads and chunks follow `chunks.rs`, as im2col's do: the batch is split into one group
//! per rayon thread, each group transforms and multiplies chunks of images on its own scratch.

mod f2;
mod f4;

use super::algorithm::{conv_algorithm, ConvAlgorithm, Pass};
use super::chunks::{at_least, dense, par_zeroed, split_batch, transposed, Plan};
use super::im2col::{sgemm, ConvGeometry, MatRef};
use super::partials::sum_range_into;
use gemm::Parallelism;

/// Aim for at least this many tiles (GEMM columns) per chunk of images (within chunks.rs's
/// memory bound on a chunk)...
const TARGET_CHUNK_TILES: usize = 160;
/// ... and this many with 4x4 tiles, whose 36 positions per tile make a chunk's transformed
/// input and products 2.25x larger per tile: measured on layer1's planes (`cargo bench -p
/// face2exp-trainer --bench conv_algorithms -- --only layer1`, 48 px / batch 64, 64 px / 32,
/// 96 px / 32 and 112 px / 32), 160 tiles cost 4-23 % more than 48 in every pass (320 up to
/// 1.5x); 24 and 64 were within this VM's noise of 48.
const TARGET_CHUNK_TILES_4X4: usize = 48;

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
/// Fewest tiles for the forward pass and the input gradient when the batch is smaller than the
/// thread count, so that one group holds it all and its GEMMs are split over the threads
/// instead: measured at batch 1 (2 threads, `conv_algorithms -- --batch 1`, Winograd / im2col
/// in ms), Winograd lost on 100 and 196 tiles per image (20x20 planes of 128 channels 0.87 /
/// 0.80, 28x28 of 64 0.55 / 0.40, of 128 1.64 / 1.59) and won on 400 and 784 (40x40 of 64
/// channels 0.71 / 0.83, 56x56 1.30 / 1.57).
const MIN_SHARED_GROUP_TILES: usize = 256;
/// Smallest output side at which Winograd pays: on a 3x3 plane the 2x2 tiles cover 4x4, and
/// with 7 of 16 outputs wasted it lost on every pass (ratio 1.07-1.34 at 48 px / batch 64).
const MIN_PLANE_SIDE: usize = 4;

/// The output tile of a Winograd pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TileSize {
    /// F(2x2, 3x3): 4x4 input tiles, 16 positions.
    Two,
    /// F(4x4, 3x3): 6x6 input tiles, 36 positions.
    Four,
}

impl TileSize {
    /// The output tile's side `m`.
    fn side(self) -> usize {
        match self {
            Self::Two => 2,
            Self::Four => 4,
        }
    }

    /// The input tile's side `m + 2`, the transforms' length.
    fn input_side(self) -> usize {
        self.side() + 2
    }

    /// Positions `ξ` in a transformed tile: one GEMM each.
    fn positions(self) -> usize {
        self.input_side() * self.input_side()
    }

    /// `G` applied to one filter column `(a, b, c)`: the first [`Self::input_side`] values.
    fn filter(self, a: f32, b: f32, c: f32) -> [f32; 6] {
        match self {
            Self::Two => {
                let [u0, u1, u2, u3] = f2::filter(a, b, c);
                [u0, u1, u2, u3, 0.0, 0.0]
            }
            Self::Four => f4::filter(a, b, c),
        }
    }

    /// `G^T` applied to one column of `dU` ([`Self::input_side`] values).
    fn filter_back(self, u: &[f32]) -> [f32; 3] {
        match self {
            Self::Two => f2::filter_back(u),
            Self::Four => f4::filter_back(u),
        }
    }

    fn transform_input(
        self,
        g: &ConvGeometry,
        tiles: &Tiles,
        image: &[f32],
        v: &mut [f32],
        at: (usize, usize),
        plane: &mut Vec<f32>,
    ) {
        match self {
            Self::Two => f2::transform_input(g, tiles, image, v, at, plane),
            Self::Four => f4::transform_input(g, tiles, image, v, at, plane),
        }
    }

    fn transform_output(
        self,
        g: &ConvGeometry,
        tiles: &Tiles,
        m: &[f32],
        at: (usize, usize),
        out_image: &mut [f32],
        rows: &mut Vec<f32>,
    ) {
        match self {
            Self::Two => f2::transform_output(g, tiles, m, at, out_image, rows),
            Self::Four => f4::transform_output(g, tiles, m, at, out_image, rows),
        }
    }

    fn transform_output_grad(
        self,
        g: &ConvGeometry,
        tiles: &Tiles,
        grad_image: &[f32],
        p: &mut [f32],
        at: (usize, usize),
        plane: &mut Vec<f32>,
    ) {
        match self {
            Self::Two => f2::transform_output_grad(g, tiles, grad_image, p, at, plane),
            Self::Four => f4::transform_output_grad(g, tiles, grad_image, p, at, plane),
        }
    }
}

/// Whether Winograd computes this pass: it [`applies`], and with [`ConvAlgorithm::Auto`] the
/// batch also gives each thread group enough tiles for its GEMMs.
pub fn pays(g: &ConvGeometry, pass: Pass) -> bool {
    match conv_algorithm() {
        _ if !applies(g) => return false,
        ConvAlgorithm::Im2col | ConvAlgorithm::Taps => return false,
        ConvAlgorithm::Winograd | ConvAlgorithm::Winograd4 => return true,
        ConvAlgorithm::Auto | ConvAlgorithm::AutoNoTaps => {}
    }
    if g.out_h.min(g.out_w) < MIN_PLANE_SIDE {
        return false;
    }
    let (images_per_group, parallelism) = split_batch(g.batch);
    let shared = matches!(parallelism, Parallelism::Rayon(_));
    let group_tiles = Tiles::new(g, TileSize::Two).per_image() * images_per_group;
    match pass {
        Pass::Forward | Pass::InputGrad if shared => group_tiles >= MIN_SHARED_GROUP_TILES,
        Pass::Forward | Pass::InputGrad => group_tiles >= MIN_GROUP_TILES,
        Pass::WeightGrad => group_tiles >= MIN_GROUP_TILES_WEIGHT_GRAD,
    }
}

/// The output tile of a pass that [`pays`]: 4x4 where [`large_tiles_pay`] (or forced), else
/// 2x2.
fn tile_size(g: &ConvGeometry) -> TileSize {
    match conv_algorithm() {
        ConvAlgorithm::Winograd4 => TileSize::Four,
        ConvAlgorithm::Winograd => TileSize::Two,
        _ if large_tiles_pay(g) => TileSize::Four,
        _ => TileSize::Two,
    }
}

/// Whether 4x4 output tiles beat 2x2 ones on this convolution (all three passes): output sides
/// that are multiples of 4 (no tile overhangs the output) from 12 on, enough 4x4 tiles per
/// thread group ([`MIN_GROUP_TILES`]), and not the 16x16 planes of 64 channels. Measured with
/// `cargo bench -p face2exp-trainer --bench conv_algorithms -- --only layer`, 2 threads, 4x4 /
/// 2x2 tiles in ms (forward, input gradient, weight gradient): 12x12 planes of 64 channels (48
/// px / batch 64) 2.87 / 3.61, 2.88 / 3.52, 2.84 / 3.84; 28x28 (112 px / 32) 6.58 / 7.98, 6.49
/// / 7.97, 6.32 / 8.30; 24x24 (96 px / 32) 6.78 / 7.85, 4.73 / 6.02, 4.80 / 6.41; 16x16 of 128
/// channels (128 px / 16) 4.10 / 4.52, 4.03 / 4.56, 5.12 / 5.41. Lost: 16x16 planes of 64
/// channels (64 px / 32, three runs: 3.02-3.27 / 2.81-3.01, 2.94-3.32 / 2.89-2.99, 3.65-3.90 /
/// 3.12-3.25, where 2x2 tiles fill rows of exactly eight), 14x14 (112 px, the last tile
/// overhanging, two runs: 7.21-7.86 / 6.59-6.78 forward, 9.15-9.65 / 6.90-7.24 weight
/// gradient), 8x8, 7x7 and 6x6 planes (too few tiles), and a batch of one image on 28x28 (49
/// tiles: 0.51 / 0.54 ms, both slower than im2col's 0.39).
fn large_tiles_pay(g: &ConvGeometry) -> bool {
    const MIN_SIDE: usize = 12;
    const EIGHT_TILE_ROWS: usize = 16;
    const WIDE_CHANNELS: usize = 128;
    let multiple_of_4 = g.out_h % 4 == 0 && g.out_w % 4 == 0;
    let side = g.out_h.min(g.out_w);
    let narrow_16 = side == EIGHT_TILE_ROWS && g.c_in.min(g.c_out) < WIDE_CHANNELS;
    let (images_per_group, _) = split_batch(g.batch);
    let group_tiles = Tiles::new(g, TileSize::Four).per_image() * images_per_group;
    multiple_of_4 && side >= MIN_SIDE && !narrow_16 && group_tiles >= MIN_GROUP_TILES
}

/// The tile grid of a convolution's output, and the zero-bordered input plane it reads.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tiles {
    rows: usize,
    cols: usize,
    /// Width of the bordered plane: the input sits at (padding, padding); the border and what
    /// lies past the input (where the last tile overhangs the output) are zeros. Rows are
    /// stored with their columns split into `m` phases
    /// ([`split_plane_into`](super::im2col::split_plane_into)).
    plane_w: usize,
    plane_len: usize,
}

impl Tiles {
    fn new(g: &ConvGeometry, size: TileSize) -> Self {
        let m = size.side();
        let (rows, cols) = (g.out_h.div_ceil(m), g.out_w.div_ceil(m));
        // m * rows + 2 >= out_h + 2 = h + 2 * padding: the plane holds the padded input. The
        // width is a whole number of phases, the last tile's two extra columns included.
        let plane_w = m * cols + m;
        Self {
            rows,
            cols,
            plane_w,
            plane_len: plane_w * (m * rows + 2),
        }
    }

    fn per_image(&self) -> usize {
        self.rows * self.cols
    }
}

/// The chunk plan of a Winograd pass: one GEMM column per tile, and per column one transformed
/// value per position of every channel on the wider side.
fn chunk_plan(g: &ConvGeometry, size: TileSize, tiles_per_image: usize) -> Plan {
    let floats_per_column = size.positions() * g.c_in.max(g.c_out);
    Plan::for_columns(
        g.batch,
        tiles_per_image,
        floats_per_column,
        match size {
            TileSize::Two => TARGET_CHUNK_TILES,
            TileSize::Four => TARGET_CHUNK_TILES_4X4,
        },
    )
}

/// `out[i] = f(a[i], b[i])` over the shortest of the three, as zipped iterators: no bounds
/// checks, so the compiler vectorises it.
#[inline(always)]
fn combine(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = f(*x, *y);
    }
}

/// The transformed filters `U_ξ = G g G^T`, stored filter-row-major: `u[(row * P + ξ) *
/// row_len + col]` for `P` positions, so that each `U_ξ` is a strided matrix (row stride
/// `P * row_len`) and the rows split over threads. Forward: rows are output channels, columns
/// input channels. With `adjoint`, the filters of the input gradient: flipped in both axes,
/// channel axes swapped.
struct TransformedWeights {
    u: Vec<f32>,
    rows: usize,
    row_len: usize,
    positions: usize,
}

impl TransformedWeights {
    fn new(w: &[f32], (c_out, c_in): (usize, usize), adjoint: bool, size: TileSize) -> Self {
        let (rows, row_len) = if adjoint {
            (c_in, c_out)
        } else {
            (c_out, c_in)
        };
        let (side, positions) = (size.input_side(), size.positions());
        let u = par_zeroed(
            rows * positions * row_len,
            positions * row_len,
            |row, u_row| {
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
                    // G g on the filter's columns, then G on the rows of the result.
                    let columns: [[f32; 6]; 3] =
                        std::array::from_fn(|c| size.filter(tap(0, c), tap(1, c), tap(2, c)));
                    for r in 0..side {
                        let row = size.filter(columns[0][r], columns[1][r], columns[2][r]);
                        for (c, &value) in row[..side].iter().enumerate() {
                            u_row[(r * side + c) * row_len + col] = value;
                        }
                    }
                }
            },
        );
        Self {
            u,
            rows,
            row_len,
            positions,
        }
    }

    /// `U_ξ` as a (rows x row_len) matrix view.
    fn position(&self, xi: usize) -> MatRef<'_> {
        let start = xi * self.row_len;
        let end = (self.rows - 1) * self.positions * self.row_len + start + self.row_len;
        MatRef {
            data: &self.u[start..end],
            row_stride: self.positions * self.row_len,
            col_stride: 1,
        }
    }
}

/// y = conv2d(x, w) for a 3x3 stride-1 convolution ([`applies`]).
pub fn forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    forward_with(tile_size(g), g, x, w)
}

/// [`forward`] with the given output tile.
fn forward_with(size: TileSize, g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let u = TransformedWeights::new(w, (g.c_out, g.c_in), false, size);
    run_forward(size, g, x, &u)
}

/// dL/dx for a 3x3 stride-1 convolution: the forward pass over dL/dy with the adjoint filters.
pub fn input_grad(g: &ConvGeometry, grad_y: &[f32], w: &[f32]) -> Vec<f32> {
    input_grad_with(tile_size(g), g, grad_y, w)
}

/// [`input_grad`] with the given output tile.
fn input_grad_with(size: TileSize, g: &ConvGeometry, grad_y: &[f32], w: &[f32]) -> Vec<f32> {
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
    let u = TransformedWeights::new(w, (g.c_out, g.c_in), true, size);
    run_forward(size, &adjoint, grad_y, &u)
}

fn run_forward(size: TileSize, g: &ConvGeometry, x: &[f32], u: &TransformedWeights) -> Vec<f32> {
    let tiles = Tiles::new(g, size);
    let (per_image, positions) = (tiles.per_image(), size.positions());
    let plan = chunk_plan(g, size, per_image);
    let (in_image, out_image) = (g.c_in * g.in_plane(), g.c_out * g.out_plane());
    plan.output(out_image, |scratch, chunk, y_group| {
        let columns = chunk.count * per_image;
        let v = at_least(&mut scratch.col, positions * g.c_in * columns);
        for b in 0..chunk.count {
            let image = chunk.first + b;
            let src = &x[image * in_image..(image + 1) * in_image];
            let at = (columns, b * per_image);
            size.transform_input(g, &tiles, src, v, at, &mut scratch.padded);
        }
        let m = at_least(&mut scratch.out, positions * g.c_out * columns);
        for xi in 0..positions {
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
            size.transform_output(g, &tiles, m, at, dst, &mut scratch.gathered);
        }
    })
}

/// dL/dw for a 3x3 stride-1 convolution: each thread group sums `dU` over its images, the
/// partial sums are added, and `G^T dU G` gives the (C_out, C_in, 3, 3) gradient.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], grad_y: &[f32]) -> Vec<f32> {
    weight_grad_with(tile_size(g), g, x, grad_y)
}

/// [`weight_grad`] with the given output tile.
fn weight_grad_with(size: TileSize, g: &ConvGeometry, x: &[f32], grad_y: &[f32]) -> Vec<f32> {
    let tiles = Tiles::new(g, size);
    let (per_image, positions) = (tiles.per_image(), size.positions());
    let plan = chunk_plan(g, size, per_image);
    let (in_image, out_image) = (g.c_in * g.in_plane(), g.c_out * g.out_plane());
    let matrix = g.c_out * g.c_in;
    let partials = plan.partials(positions * matrix, |scratch, chunk, grad_u| {
        let columns = chunk.count * per_image;
        let v = at_least(&mut scratch.col, positions * g.c_in * columns);
        let p = at_least(&mut scratch.out, positions * g.c_out * columns);
        for b in 0..chunk.count {
            let image = chunk.first + b;
            let at = (columns, b * per_image);
            let src = &x[image * in_image..(image + 1) * in_image];
            size.transform_input(g, &tiles, src, v, at, &mut scratch.padded);
            let grad = &grad_y[image * out_image..(image + 1) * out_image];
            size.transform_output_grad(g, &tiles, grad, p, at, &mut scratch.gathered);
        }
        for xi in 0..positions {
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
    untransform_weight_grad(size, &partials.parts(), matrix)
}

/// `G^T dU G` for every (C_out, C_in) pair, `dU` the sum of the thread groups' partial `parts`:
/// the matrices `dU_ξ` back to 3x3 filters. Blocks of pairs run in parallel; each block first
/// gathers its pairs' values from the matrices as contiguous runs, summing the parts on the way
/// (reading them pair by pair would touch one cache line per position and pair: 10 ms for 512 x
/// 512 channels with 2x2 tiles, single-threaded, before this).
fn untransform_weight_grad(size: TileSize, parts: &[&[f32]], matrix: usize) -> Vec<f32> {
    const BLOCK: usize = 256;
    const MAX_POSITIONS: usize = 36;
    let (side, positions) = (size.input_side(), size.positions());
    par_zeroed(matrix * 9, 9 * BLOCK, |block, filters| {
        let first = block * BLOCK;
        let pairs = filters.len() / 9;
        let mut gathered = [[0f32; BLOCK]; MAX_POSITIONS];
        for (xi, run) in gathered[..positions].iter_mut().enumerate() {
            sum_range_into(parts, xi * matrix + first, &mut run[..pairs]);
        }
        for (pair, filter) in filters.chunks_exact_mut(9).enumerate() {
            let du = |r: usize, c: usize| gathered[r * side + c][pair];
            // Columns first: G^T on each column of dU (side x side -> 3 x side), then on
            // each row.
            let mut columns = [[0f32; 3]; 6];
            for (c, column) in columns[..side].iter_mut().enumerate() {
                let values: [f32; 6] =
                    std::array::from_fn(|r| if r < side { du(r, c) } else { 0.0 });
                *column = size.filter_back(&values[..side]);
            }
            for (r, out) in filter.chunks_exact_mut(3).enumerate() {
                let row: [f32; 6] = std::array::from_fn(|c| columns[c][r]);
                out.copy_from_slice(&size.filter_back(&row[..side]));
            }
        }
    })
}

#[cfg(test)]
mod tests;
