//! The F(4x4, 3x3) transforms: 6x6 input tiles, 4x4 output tiles, 36 positions per tile, on
//! the interpolation points 0, ±1, ±2 (Lavin & Gray, as in NNPACK and oneDNN):
//!
//! ```text
//! B^T = [4  0 -5  0 1 0]   G = [ 1/4     0     0]   A^T = [1 1  1 1  1 0]
//!       [0 -4 -4  1 1 0]       [-1/6  -1/6  -1/6]         [0 1 -1 2 -2 0]
//!       [0  4 -4 -1 1 0]       [-1/6   1/6  -1/6]         [0 1  1 4  4 0]
//!       [0 -2 -1  2 1 0]       [1/24  1/12   1/6]         [0 1 -1 8 -8 1]
//!       [0  2 -1 -2 1 0]       [1/24 -1/12   1/6]
//!       [0  4  0 -5 0 1]       [   0     0     1]
//! ```
//!
//! 2.25 products per output and channel pair against F(2x2)'s 4, and a transformed input of
//! 2.25x the output against 4x; the price is rounding: with coefficients up to 8 and 1/24 the
//! error is about ten times F(2x2)'s, 5e-6 to 1.5e-5 of the largest output on 64-512 channels
//! against under 1e-6 (measured against im2col; the tests hold both to a bound).
//! Planes are stored with their columns split into four phases ([`split_plane_into`]), so that
//! the column transforms, which read columns 4tj..4tj+5, read contiguous runs.

use super::Tiles;
use crate::ops::im2col::{split_plane_into, ConvGeometry};

/// Phases of a stored plane row: the output tile's width.
const PHASES: usize = 4;

/// `G` applied to a filter column `(a, b, c)`.
pub(super) fn filter(a: f32, b: f32, c: f32) -> [f32; 6] {
    [
        0.25 * a,
        -(a + b + c) / 6.0,
        -(a - b + c) / 6.0,
        a / 24.0 + b / 12.0 + c / 6.0,
        a / 24.0 - b / 12.0 + c / 6.0,
        c,
    ]
}

/// `G^T` applied to a column of `dU` (six values).
pub(super) fn filter_back(u: &[f32]) -> [f32; 3] {
    let (s12, d12, s34, d34) = (u[1] + u[2], u[1] - u[2], u[3] + u[4], u[3] - u[4]);
    [
        0.25 * u[0] - s12 / 6.0 + s34 / 24.0,
        -d12 / 6.0 + d34 / 12.0,
        (s34 - s12) / 6.0 + u[5],
    ]
}

/// `B^T x` for one six-value column or row `x`.
#[inline(always)]
fn b_t(x: [f32; 6]) -> [f32; 6] {
    let [x0, x1, x2, x3, x4, x5] = x;
    [
        4.0 * x0 - 5.0 * x2 + x4,
        x3 + x4 - 4.0 * (x1 + x2),
        x4 - x3 + 4.0 * (x1 - x2),
        x4 - x2 - 2.0 * (x1 - x3),
        x4 - x2 + 2.0 * (x1 - x3),
        4.0 * x1 - 5.0 * x3 + x5,
    ]
}

/// `A^T m` for one six-value column or row `m`.
#[inline(always)]
fn a_t(m: [f32; 6]) -> [f32; 4] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m5,
    ]
}

/// `A y` for one four-value column or row `y` of an output-gradient tile.
#[inline(always)]
fn a(y: [f32; 4]) -> [f32; 6] {
    let [y0, y1, y2, y3] = y;
    let (even, odd) = (y0 + y2, y1 + y3);
    let (even4, odd2) = (y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
    [y0, even + odd, even - odd, even4 + odd2, even4 - odd2, y3]
}

/// Re-slices each named slice to exactly `len` values, so that the compiler sees every index
/// below `len` in bounds and vectorises the loop over them.
macro_rules! fit {
    ($len:expr; $($s:ident),+) => { $(let $s = &$s[..$len];)+ };
}

/// [`fit`] for mutable slices.
macro_rules! fit_mut {
    ($len:expr; $($s:ident),+) => { $(let $s = &mut $s[..$len];)+ };
}

/// `runs[k][i] = values[k]` for each named run, in order.
macro_rules! store {
    ($i:expr, $values:expr; $($run:ident),+) => {{
        let mut values = $values.into_iter();
        $($run[$i] = values.next().expect("one value per run");)+
    }};
}

/// `K` runs of `len` values of `v`, `stride` apart from `start`.
#[inline(always)]
fn runs<const K: usize>(v: &[f32], start: usize, stride: usize, len: usize) -> [&[f32]; K] {
    std::array::from_fn(|k| &v[start + k * stride..start + k * stride + len])
}

/// `K` disjoint mutable runs of `len` values of `v`, `stride >= len` apart from `start`.
#[inline(always)]
fn runs_mut<const K: usize>(
    v: &mut [f32],
    start: usize,
    stride: usize,
    len: usize,
) -> [&mut [f32]; K] {
    let mut rest = &mut v[start..];
    std::array::from_fn(|k| {
        let step = if k + 1 < K { stride } else { len };
        let (run, tail) = std::mem::take(&mut rest).split_at_mut(step);
        rest = tail;
        &mut run[..len]
    })
}

/// `B^T d B` of every tile of one image, into columns `[first, first + tiles)` of the 36
/// matrices `V_ξ` (`C_in x columns`, stored one after the other in `v`). `plane` is scratch.
///
/// Row by row of tiles: first `B^T` down the six plane rows a tile row reads (whole rows,
/// contiguous), then `B` across them, writing each of the 36 positions as one contiguous run
/// over the tiles of the row.
pub(super) fn transform_input(
    g: &ConvGeometry,
    tiles: &Tiles,
    image: &[f32],
    v: &mut [f32],
    (columns, first): (usize, usize),
    plane: &mut Vec<f32>,
) {
    let (pw, n) = (tiles.plane_w, tiles.cols);
    let phase_len = pw / PHASES;
    plane.clear();
    plane.resize(tiles.plane_len + 6 * pw, 0.0);
    let (plane, rows) = plane.split_at_mut(tiles.plane_len);
    let position_stride = g.c_in * columns;
    for c in 0..g.c_in {
        let src = &image[c * g.in_plane()..(c + 1) * g.in_plane()];
        split_plane_into(plane, pw, src, g.w, g.padding, PHASES);
        for ti in 0..tiles.rows {
            // B^T d down the six plane rows, whole rows at a time...
            let [d0, d1, d2, d3, d4, d5] = runs(plane, 4 * ti * pw, pw, pw);
            let [t0, t1, t2, t3, t4, t5] = runs_mut(rows, 0, pw, pw);
            fit!(pw; d0, d1, d2, d3, d4, d5);
            fit_mut!(pw; t0, t1, t2, t3, t4, t5);
            for i in 0..pw {
                let o = b_t([d0[i], d1[i], d2[i], d3[i], d4[i], d5[i]]);
                store!(i, o; t0, t1, t2, t3, t4, t5);
            }
            // ... then B across each of them: x0..x5 are columns 4tj..4tj+5, the first four
            // phases at tj, then phases 0 and 1 at tj + 1.
            let run = c * columns + first + ti * n;
            for (r, t_row) in rows.chunks_exact(pw).enumerate() {
                let [p0, p1, p2, p3] = runs(t_row, 0, phase_len, phase_len);
                let at = r * 6 * position_stride + run;
                let [o0, o1, o2, o3, o4, o5] = runs_mut(v, at, position_stride, n);
                fit!(n + 1; p0, p1, p2, p3);
                fit_mut!(n; o0, o1, o2, o3, o4, o5);
                for tj in 0..n {
                    let o = b_t([p0[tj], p1[tj], p2[tj], p3[tj], p0[tj + 1], p1[tj + 1]]);
                    store!(tj, o; o0, o1, o2, o3, o4, o5);
                }
            }
        }
    }
}

/// `A^T M A` of the tiles in columns `[first, first + tiles)` of the 36 matrices `M_ξ`
/// (`C_out x columns`), written into one output image, clipped at its edges. `rows` is scratch.
pub(super) fn transform_output(
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
    rows.resize(24 * n, 0.0);
    for co in 0..g.c_out {
        let plane = &mut out_image[co * oh * ow..(co + 1) * oh * ow];
        for ti in 0..tiles.rows {
            let run = co * columns + first + ti * n;
            // A^T m down each of the six columns c of the tiles: rows[(c * 4 + k) * n + tj]
            // holds row k of column c of tile tj.
            for c in 0..6 {
                let at = c * position_stride + run;
                let [m0, m1, m2, m3, m4, m5] = runs(m, at, 6 * position_stride, n);
                let [s0, s1, s2, s3] = runs_mut(rows, c * 4 * n, n, n);
                fit!(n; m0, m1, m2, m3, m4, m5);
                fit_mut!(n; s0, s1, s2, s3);
                for tj in 0..n {
                    let o = a_t([m0[tj], m1[tj], m2[tj], m3[tj], m4[tj], m5[tj]]);
                    store!(tj, o; s0, s1, s2, s3);
                }
            }
            // ... then across each row k: outputs 4tj..4tj+3, clipped at the right edge.
            for k in 0..4 {
                let y = 4 * ti + k;
                if y >= oh {
                    break;
                }
                let [s0, s1, s2, s3, s4, s5] = runs(rows, k * n, 4 * n, n);
                fit!(n; s0, s1, s2, s3, s4, s5);
                let out_row = &mut plane[y * ow..(y + 1) * ow];
                let (whole, last) = out_row.split_at_mut(ow / 4 * 4);
                for (tj, out) in whole.chunks_exact_mut(4).enumerate() {
                    *<&mut [f32; 4]>::try_from(out).expect("four outputs") =
                        a_t([s0[tj], s1[tj], s2[tj], s3[tj], s4[tj], s5[tj]]);
                }
                if !last.is_empty() {
                    let tj = n - 1;
                    let values = a_t([s0[tj], s1[tj], s2[tj], s3[tj], s4[tj], s5[tj]]);
                    last.copy_from_slice(&values[..last.len()]);
                }
            }
        }
    }
}

/// `A dY A^T` of every 4x4 tile of one output-gradient image (zeros past its edges), into
/// columns `[first, first + tiles)` of the 36 matrices `P_ξ` (`C_out x columns`). `plane` is
/// scratch.
pub(super) fn transform_output_grad(
    g: &ConvGeometry,
    tiles: &Tiles,
    grad_image: &[f32],
    p: &mut [f32],
    (columns, first): (usize, usize),
    plane: &mut Vec<f32>,
) {
    let position_stride = g.c_out * columns;
    let (oh, ow, n) = (g.out_h, g.out_w, tiles.cols);
    // The gradient plane grown to whole tiles, the overhang zero, columns in four phases.
    let pw = 4 * n;
    plane.clear();
    plane.resize(pw * 4 * tiles.rows + 6 * pw, 0.0);
    let (padded, rows) = plane.split_at_mut(pw * 4 * tiles.rows);
    for co in 0..g.c_out {
        let src = &grad_image[co * oh * ow..(co + 1) * oh * ow];
        split_plane_into(padded, pw, src, ow, 0, PHASES);
        for ti in 0..tiles.rows {
            // A y down the four plane rows of the tile row, whole rows...
            let [y0, y1, y2, y3] = runs(padded, 4 * ti * pw, pw, pw);
            let [t0, t1, t2, t3, t4, t5] = runs_mut(rows, 0, pw, pw);
            fit!(pw; y0, y1, y2, y3);
            fit_mut!(pw; t0, t1, t2, t3, t4, t5);
            for i in 0..pw {
                let o = a([y0[i], y1[i], y2[i], y3[i]]);
                store!(i, o; t0, t1, t2, t3, t4, t5);
            }
            // ... then across each of them: u0..u3 are columns 4tj..4tj+3, phases 0-3 at tj.
            let run = co * columns + first + ti * n;
            for (r, t_row) in rows.chunks_exact(pw).enumerate() {
                let [u0, u1, u2, u3] = runs(t_row, 0, n, n);
                let at = r * 6 * position_stride + run;
                let [o0, o1, o2, o3, o4, o5] = runs_mut(p, at, position_stride, n);
                fit!(n; u0, u1, u2, u3);
                fit_mut!(n; o0, o1, o2, o3, o4, o5);
                for tj in 0..n {
                    let o = a([u0[tj], u1[tj], u2[tj], u3[tj]]);
                    store!(tj, o; o0, o1, o2, o3, o4, o5);
                }
            }
        }
    }
}
