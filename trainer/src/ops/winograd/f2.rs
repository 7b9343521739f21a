//! The F(2x2, 3x3) transforms: 4x4 input tiles, 2x2 output tiles, 16 positions per tile.
//! `B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2;
//! 0 0 1]`, `A^T = [1 1 1 0; 0 1 -1 -1]` (Lavin & Gray). Planes are stored with even and odd
//! columns apart ([`split_plane_into`] with two phases), so that the column transforms read
//! contiguous runs.

use super::{combine, Tiles};
use crate::ops::im2col::{split_plane_into, ConvGeometry};

/// `G` applied to a filter column `(a, b, c)`.
pub(super) fn filter(a: f32, b: f32, c: f32) -> [f32; 4] {
    [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
}

/// `G^T` applied to a column of `dU`: `(u0 + (u1 + u2) / 2, (u1 - u2) / 2, (u1 + u2) / 2 + u3)`.
pub(super) fn filter_back(u: &[f32]) -> [f32; 3] {
    let half_sum = 0.5 * (u[1] + u[2]);
    [u[0] + half_sum, 0.5 * (u[1] - u[2]), half_sum + u[3]]
}

/// `B^T d B` of every tile of one image, into columns `[first, first + tiles)` of the 16
/// matrices `V_ξ` (`C_in x columns`, stored one after the other in `v`). `scratch` is scratch.
///
/// Columns first, then rows, each channel in two passes: `B` across every plane row (runs of
/// one value per tile column, read from the row's even and odd columns), into a buffer that
/// keeps even and odd plane rows apart; then `B^T` down the tile rows, which with that layout
/// is one contiguous run over all the image's tiles per position. On 16x16 and 8x8 planes a
/// tile row is only eight or four tiles, and row-by-row transforms spent their time in loop
/// overhead on runs that short; the whole-image runs are as many times longer as the plane has
/// tile rows (8 and 4).
pub(super) fn transform_input(
    g: &ConvGeometry,
    tiles: &Tiles,
    image: &[f32],
    v: &mut [f32],
    (columns, first): (usize, usize),
    scratch: &mut Vec<f32>,
) {
    let (pw, n, tile_rows) = (tiles.plane_w, tiles.cols, tiles.rows);
    // Plane rows 2ti + parity for ti in 0..=tile_rows, per column position c4 and parity.
    let half = (tile_rows + 1) * n;
    scratch.clear();
    scratch.resize(tiles.plane_len + 8 * half, 0.0);
    let (plane, columns_done) = scratch.split_at_mut(tiles.plane_len);
    let position_stride = g.c_in * columns;
    let per_image = tile_rows * n;
    for c in 0..g.c_in {
        let src = &image[c * g.in_plane()..(c + 1) * g.in_plane()];
        split_plane_into(plane, pw, src, g.w, g.padding, 2);
        // B on columns: (x0 - x2, x1 + x2, x2 - x1, x1 - x3), where x0..x3 are columns
        // 2tj..2tj+3: even[tj], odd[tj], even[tj + 1], odd[tj + 1].
        for (y, row) in plane.chunks_exact(pw).enumerate() {
            let (even, odd) = row.split_at(pw / 2);
            let (e0, e1, o0, o1) = (&even[..n], &even[1..=n], &odd[..n], &odd[1..=n]);
            let at = |c4: usize| ((2 * c4 + y % 2) * (tile_rows + 1) + y / 2) * n;
            let out = |c4: usize| at(c4)..at(c4) + n;
            combine(&mut columns_done[out(0)], e0, e1, |a, b| a - b);
            combine(&mut columns_done[out(1)], o0, e1, |a, b| a + b);
            combine(&mut columns_done[out(2)], e1, o0, |a, b| a - b);
            combine(&mut columns_done[out(3)], o0, o1, |a, b| a - b);
        }
        // ... then B^T on rows, the same combination of plane rows 2ti..2ti+3: even rows ti
        // and ti + 1, odd rows ti and ti + 1, each a run over all tile rows.
        let run = c * columns + first;
        for c4 in 0..4 {
            let even = &columns_done[2 * c4 * half..(2 * c4 + 1) * half];
            let odd = &columns_done[(2 * c4 + 1) * half..(2 * c4 + 2) * half];
            let (e0, e1) = (&even[..per_image], &even[n..]);
            let (o0, o1) = (&odd[..per_image], &odd[n..]);
            let at = |r: usize| (r * 4 + c4) * position_stride + run;
            let out = |r: usize| at(r)..at(r) + per_image;
            combine(&mut v[out(0)], e0, e1, |a, b| a - b);
            combine(&mut v[out(1)], o0, e1, |a, b| a + b);
            combine(&mut v[out(2)], e1, o0, |a, b| a - b);
            combine(&mut v[out(3)], o0, o1, |a, b| a - b);
        }
    }
}

/// `A^T M A` of the tiles in columns `[first, first + tiles)` of the 16 matrices `M_ξ`
/// (`C_out x columns`), written into one output image, clipped at its edges. `rows` is scratch.
///
/// Rows first, over all the image's tiles at once (each `M_ξ` holds them as one run), then
/// columns, row by row of the output: see [`transform_input`] for why whole-image runs.
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
    let per_image = tiles.rows * n;
    rows.clear();
    rows.resize(8 * per_image, 0.0);
    for co in 0..g.c_out {
        let plane = &mut out_image[co * oh * ow..(co + 1) * oh * ow];
        let run = co * columns + first;
        let m_at =
            |xi: usize| &m[xi * position_stride + run..xi * position_stride + run + per_image];
        // A^T m: rows (m0 + m1 + m2, m1 - m2 - m3), one run over the tiles per column c.
        for c in 0..4 {
            let (m0, m1, m2, m3) = (m_at(c), m_at(4 + c), m_at(8 + c), m_at(12 + c));
            let (s0, s1) = rows[c * 2 * per_image..(c + 1) * 2 * per_image].split_at_mut(per_image);
            for (s, (a, (b, c))) in s0.iter_mut().zip(m0.iter().zip(m1.iter().zip(m2))) {
                *s = a + b + c;
            }
            for (s, (b, (c, d))) in s1.iter_mut().zip(m1.iter().zip(m2.iter().zip(m3))) {
                *s = b - c - d;
            }
        }
        // ... then the same on columns: (s0 + s1 + s2, s1 - s2 - s3), per output row.
        for y in 0..oh {
            let (ti, r) = (y / 2, y % 2);
            let s = |c: usize| {
                let at = (c * 2 + r) * per_image + ti * n;
                &rows[at..at + n]
            };
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

/// `A dY A^T` of every 2x2 tile of one output-gradient image (zeros past its edges), into
/// columns `[first, first + tiles)` of the 16 matrices `P_ξ` (`C_out x columns`). `scratch`
/// is scratch.
///
/// Columns first, row by row of the gradient, into a buffer that keeps even and odd rows
/// apart; then rows, over all the image's tiles at once: see [`transform_input`] for why.
pub(super) fn transform_output_grad(
    g: &ConvGeometry,
    tiles: &Tiles,
    grad_image: &[f32],
    p: &mut [f32],
    (columns, first): (usize, usize),
    scratch: &mut Vec<f32>,
) {
    let position_stride = g.c_out * columns;
    let (oh, ow, n, tile_rows) = (g.out_h, g.out_w, tiles.cols, tiles.rows);
    let per_image = tile_rows * n;
    // The gradient plane grown to whole tiles, the overhang zero.
    let pw = 2 * n;
    let padded_len = pw * 2 * tile_rows;
    scratch.clear();
    scratch.resize(padded_len + 8 * per_image, 0.0);
    let (padded, columns_done) = scratch.split_at_mut(padded_len);
    for co in 0..g.c_out {
        let src = &grad_image[co * oh * ow..(co + 1) * oh * ow];
        split_plane_into(padded, pw, src, ow, 0, 2);
        // A on columns: (u0, u0 + u1, u0 - u1, -u1), where u0 and u1 are columns 2tj and
        // 2tj + 1: even[tj] and odd[tj]...
        for (y, row) in padded.chunks_exact(pw).enumerate() {
            let (even, odd) = row.split_at(n);
            let at = |c4: usize| ((2 * c4 + y % 2) * tile_rows + y / 2) * n;
            let out = |c4: usize| at(c4)..at(c4) + n;
            columns_done[out(0)].copy_from_slice(even);
            combine(&mut columns_done[out(1)], even, odd, |a, b| a + b);
            combine(&mut columns_done[out(2)], even, odd, |a, b| a - b);
            combine(&mut columns_done[out(3)], even, odd, |_, b| -b);
        }
        // ... then the same on rows, (y0, y0 + y1, y0 - y1, -y1) with y0 and y1 the even and
        // odd gradient rows, each a run over all the image's tiles.
        let run = co * columns + first;
        for c4 in 0..4 {
            let y0 = &columns_done[2 * c4 * per_image..(2 * c4 + 1) * per_image];
            let y1 = &columns_done[(2 * c4 + 1) * per_image..(2 * c4 + 2) * per_image];
            let at = |r: usize| (r * 4 + c4) * position_stride + run;
            let out = |r: usize| at(r)..at(r) + per_image;
            p[out(0)].copy_from_slice(y0);
            combine(&mut p[out(1)], y0, y1, |a, b| a + b);
            combine(&mut p[out(2)], y0, y1, |a, b| a - b);
            combine(&mut p[out(3)], y0, y1, |_, b| -b);
        }
    }
}
