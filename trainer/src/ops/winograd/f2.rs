//! The F(2x2, 3x3) transforms: 4x4 input tiles, 2x2 output tiles, 16 positions per tile.
//! `B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`, `G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2;
//! 0 0 1]`, `A^T = [1 1 1 0; 0 1 -1 -1]` (Lavin & Gray). Planes are stored with even and odd
//! columns apart ([`split_plane_into`] with two phases), so that the column transforms read
//! contiguous runs.

use super::{combine, split_plane_into, Tiles};
use crate::ops::im2col::ConvGeometry;

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
/// matrices `V_ξ` (`C_in x columns`, stored one after the other in `v`). `plane` is scratch.
///
/// Row by row of tiles: first `B^T` down the four plane rows a tile row reads (whole rows,
/// contiguous), then `B` across them, writing each of the 16 positions as one contiguous run
/// over the tiles of the row.
pub(super) fn transform_input(
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
        split_plane_into::<2>(plane, pw, src, g.w, g.padding);
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

/// `A^T M A` of the tiles in columns `[first, first + tiles)` of the 16 matrices `M_ξ`
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
    // The gradient plane grown to whole tiles, the overhang zero.
    let pw = 2 * n;
    plane.clear();
    plane.resize(pw * 2 * tiles.rows + 4 * pw, 0.0);
    let (padded, rows) = plane.split_at_mut(pw * 2 * tiles.rows);
    for co in 0..g.c_out {
        let src = &grad_image[co * oh * ow..(co + 1) * oh * ow];
        split_plane_into::<2>(padded, pw, src, ow, 0);
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
