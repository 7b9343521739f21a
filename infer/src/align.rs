//! Face alignment: a similarity transform from the detector's five landmarks onto the
//! template the classifier was trained with, and an anti-aliased warp of the face into the
//! network input. Allocation-free: the caller owns every buffer.

use crate::error::ClassifyError;
use crate::image::{ImageView, PixelFormat};
use crate::kernels::gemm::SharedMut;
use crate::kernels::Parallel;

/// Canonical positions of the five landmarks (image-left eye, image-right eye, nose,
/// image-left and image-right mouth corner) in the network input, as fractions of its side.
///
/// Measured where RetinaFace puts them on FER2013 training crops, the framing the classifier
/// learned from (`tools/fer2013_template.py`: 2,000 random crops, a face found in 1,980; mean
/// positions, std 0.07-0.11 since FER2013 crops are loosely registered; weights/README.md).
pub const ALIGN_TEMPLATE: [[f32; 2]; 5] = [
    [0.3210, 0.3838],
    [0.6741, 0.3785],
    [0.4959, 0.5909],
    [0.3605, 0.7601],
    [0.6464, 0.7560],
];

/// Most sub-samples per axis when area-sampling an aligned crop straight from the image; past
/// this shrink factor the image is first box-averaged onto a coarser grid (see `align`).
const MAX_SUPERSAMPLE: usize = 3;

/// Most pixels read per axis of one grid cell.
const MAX_CELL_TAPS: usize = 8;

/// Widest grid cell, in pixels: past a shrink factor of 3 x this (a face ~2,000 times wider
/// than any image) the grid no longer covers the face, which is then garbage but harmless.
const MAX_CELL: usize = 1 << 16;

/// Side, in cells, of the box-averaged grid an aligned crop of side `size` is sampled from.
/// The output square spans at most `scale * size * sqrt(2)` source pixels along an axis and a
/// cell is at least `scale / 3` pixels wide, so at most `3 sqrt(2) size` cells plus margins.
fn grid_side(size: usize) -> usize {
    (9 * size).div_ceil(2) + 4
}

/// Warps the face at `points` onto the template in `out` (`[3, size, size]`, normalised),
/// area-sampling when it shrinks the face: each output pixel is the mean of `n x n` bilinear
/// samples, `n` the shrink factor rounded up. Past a factor of [`MAX_SUPERSAMPLE`] (faces over
/// ~180 px for a 48 px network) the face's region is first box-averaged into `grid`, cells of
/// `k x k` pixels with `k` the factor over 3 rounded up, and the crop samples that grid with
/// at most 3 x 3 samples per pixel: nearly the same anti-aliasing for a fraction of the reads
/// (a 300 px face: about one read per source pixel plus 9 samples per output pixel, instead of
/// 25 samples per output pixel). Rows of each pass are split between `par`'s threads (every
/// value is computed the same way whichever thread does it). `grid` must hold
/// `grid_len(size)` floats, `out` `3 * size * size`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn align(
    grid: &mut [f32],
    size: usize,
    image: &ImageView<'_>,
    points: &[[f32; 2]; 5],
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), ClassifyError> {
    let inverse = similarity_to_template(points, size as f32)?;
    // Source pixels per output pixel decides how many samples average into one output.
    let scale = libm::sqrtf(inverse.a * inverse.a + inverse.b * inverse.b);
    let warp = Warp {
        inverse,
        cell: 1.0,
        offset: (0.0, 0.0),
        samples: (libm::ceilf(scale) as usize).max(1),
        size,
        mean,
        std,
        width: image.width(),
        height: image.height(),
    };
    let job = Job {
        warp,
        scale,
        grid,
        out: SharedMut(out.as_mut_ptr()),
        par,
    };
    let (data, stride) = (image.data(), image.stride());
    // One reader per format, chosen here once, so the per-pixel loops are compiled for it.
    macro_rules! packed {
        ($bytes:literal, $r:literal, $g:literal, $b:literal) => {
            job.run(move |x: usize, y: usize| {
                let p = &data[y * stride + x * $bytes..][..$bytes];
                [p[$r] as f32, p[$g] as f32, p[$b] as f32]
            })
        };
    }
    match image.format() {
        PixelFormat::Rgb8 => packed!(3, 0, 1, 2),
        PixelFormat::Bgr8 => packed!(3, 2, 1, 0),
        PixelFormat::Rgba8 => packed!(4, 0, 1, 2),
        PixelFormat::Bgra8 => packed!(4, 2, 1, 0),
        PixelFormat::Gray8 => packed!(1, 0, 0, 0),
        // Two pixels share their chroma: the general reader.
        PixelFormat::Yuyv => job.run(|x, y| image.rgb(x, y)),
    }
    Ok(())
}

/// Floats of the grid buffer [`align`] needs for an input of side `size`.
pub(crate) fn grid_len(size: usize) -> usize {
    grid_side(size) * grid_side(size) * 3
}

/// Runs `each` on consecutive ranges of `0..rows`, one range per thread of `par`.
fn split_rows(par: &dyn Parallel, rows: usize, each: impl Fn(core::ops::Range<usize>) + Sync) {
    let per_task = rows.div_ceil(par.threads().max(1));
    let task = |t: usize, _worker: usize| each(t * per_task..rows.min((t + 1) * per_task));
    par.run(rows.div_ceil(per_task), &task);
}

/// One call of [`align`], before the pixel reader is chosen.
struct Job<'a> {
    warp: Warp,
    scale: f32,
    grid: &'a mut [f32],
    out: SharedMut,
    par: &'a dyn Parallel,
}

impl Job<'_> {
    fn run(self, read: impl Fn(usize, usize) -> [f32; 3] + Sync) {
        let (s, par, out) = (self.warp.size, self.par, self.out);
        if self.warp.samples > MAX_SUPERSAMPLE {
            let grid = CellGrid::covering(&self.warp.inverse, s, self.scale);
            let cells = SharedMut(self.grid.as_mut_ptr());
            let (width, height) = (self.warp.width, self.warp.height);
            split_rows(par, grid.rows, |rows| {
                for row in rows {
                    // SAFETY: `grid_side` bounds `grid.rows` and `grid.cols` and the buffer
                    // holds `grid_len` floats; each task writes only its own rows.
                    let cells = unsafe {
                        let row_len = grid.cols * 3;
                        core::slice::from_raw_parts_mut(cells.get().add(row * row_len), row_len)
                    };
                    grid.average_row(row, cells, width, height, &read);
                }
            });
            let cells = &self.grid[..grid.rows * grid.cols * 3];
            // Sample the grid, not the image: grid index = (pixel index - cell centre) / k.
            let k = grid.cell as f32;
            let warp = Warp {
                cell: k,
                offset: (
                    0.5 - (0.5 + grid.x0 as f32 + (k - 1.0) / 2.0) / k,
                    0.5 - (0.5 + grid.y0 as f32 + (k - 1.0) / 2.0) / k,
                ),
                samples: (libm::ceilf(self.scale / k) as usize).clamp(1, MAX_SUPERSAMPLE),
                width: grid.cols,
                height: grid.rows,
                ..self.warp
            };
            let cols = grid.cols;
            warp.all_rows(par, out, |x, y| {
                let c = &cells[(y * cols + x) * 3..][..3];
                [c[0], c[1], c[2]]
            });
        } else {
            self.warp.all_rows(par, out, read);
        }
    }
}

/// The face's region in `cell x cell`-pixel blocks: cell `(col, row)` averages the pixels
/// `x0 + col * cell ..` and `y0 + row * cell ..` (edges replicated outside the image).
#[derive(Clone, Copy, Debug)]
struct CellGrid {
    cell: usize,
    x0: isize,
    y0: isize,
    cols: usize,
    rows: usize,
}

impl CellGrid {
    /// The grid over every pixel the output square of side `size` reads, with a cell margin.
    fn covering(inverse: &InverseSimilarity, size: usize, scale: f32) -> CellGrid {
        // The smallest cells that need at most 3 samples per axis per output pixel: the
        // filter blurs at most ~25 % more than sampling the image itself (std of a 3.3x
        // shrink's filter 1.26 source pixels against 1.01, 4.4x: 1.53 against 1.31), where
        // cells as wide as the shrink factor would add a bilinear tent as wide as the
        // footprint (4.4x: 2.27).
        let cell = (libm::ceilf(scale / MAX_SUPERSAMPLE as f32) as usize).clamp(1, MAX_CELL);
        let s = size as f32;
        let corners = [(0.0, 0.0), (s, 0.0), (0.0, s), (s, s)].map(|(u, v)| inverse.apply(u, v));
        let (mut lo, mut hi) = (
            (f32::INFINITY, f32::INFINITY),
            (f32::NEG_INFINITY, f32::NEG_INFINITY),
        );
        for (x, y) in corners {
            lo = (lo.0.min(x), lo.1.min(y));
            hi = (hi.0.max(x), hi.1.max(y));
        }
        let k = cell as f32;
        let side = grid_side(size);
        // Landmarks far outside any image still give finite coordinates (checked when the
        // transform was built); the casts saturate and the clamps keep the grid in its buffer.
        let span =
            |lo: f32, hi: f32| ((libm::ceilf((hi - lo) / k) as usize).saturating_add(3)).min(side);
        CellGrid {
            cell,
            x0: (libm::floorf(lo.0) as isize).saturating_sub(cell as isize),
            y0: (libm::floorf(lo.1) as isize).saturating_sub(cell as isize),
            cols: span(lo.0, hi.0),
            rows: span(lo.1, hi.1),
        }
    }

    /// Writes row `row`'s cell means (RGB) into `cells`, reading pixels through `read`.
    #[inline(always)]
    fn average_row(
        &self,
        row: usize,
        cells: &mut [f32],
        width: usize,
        height: usize,
        read: &impl Fn(usize, usize) -> [f32; 3],
    ) {
        let clamp = |v: isize, max: usize| v.clamp(0, max as isize - 1) as usize;
        // Cells wider than MAX_CELL_TAPS pixels (faces over ~400 px at 48 px, or absurd
        // landmarks) are read at MAX_CELL_TAPS evenly spaced pixels per axis, bounding the work.
        let step = self.cell.div_ceil(MAX_CELL_TAPS);
        let taps = self.cell.div_ceil(step);
        // Centre the taps in the cell (exactly when all are read).
        let first = (self.cell - 1 - (taps - 1) * step) / 2;
        cells.fill(0.0);
        // Saturating: landmarks far outside any image put the grid there too (all its reads
        // are then clamped edge pixels); nothing may overflow on the way.
        let top = self.y0.saturating_add((row * self.cell) as isize);
        for dy in (first..self.cell).step_by(step) {
            let y = clamp(top.saturating_add(dy as isize), height);
            for (col, sum) in cells.chunks_exact_mut(3).enumerate() {
                let left = self.x0.saturating_add((col * self.cell) as isize);
                let mut acc = [0.0f32; 3];
                for dx in (first..self.cell).step_by(step) {
                    let p = read(clamp(left.saturating_add(dx as isize), width), y);
                    acc[0] += p[0];
                    acc[1] += p[1];
                    acc[2] += p[2];
                }
                sum[0] += acc[0];
                sum[1] += acc[1];
                sum[2] += acc[2];
            }
        }
        let norm = 1.0 / (taps * taps) as f32;
        for v in cells.iter_mut() {
            *v *= norm;
        }
    }
}

/// One aligned crop: where each output pixel samples the source (the image, or a cell grid
/// over it), and how it is normalised.
struct Warp {
    inverse: InverseSimilarity,
    /// Source pixels per unit of the sampled grid (1 for the image itself) ...
    cell: f32,
    /// ... and the grid's offset: sampled position = image position / cell + offset.
    offset: (f32, f32),
    samples: usize,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    /// The sampled source's size in its own units.
    width: usize,
    height: usize,
}

impl Warp {
    /// All output rows, split between `par`'s threads, into `out` (`3 * size * size`).
    fn all_rows(
        &self,
        par: &dyn Parallel,
        out: SharedMut,
        pixel: impl Fn(usize, usize) -> [f32; 3] + Sync,
    ) {
        split_rows(par, self.size, |rows| {
            // SAFETY: `align`'s caller gave `out` 3 * size * size floats; each task writes
            // only its own rows of each channel plane, so no two tasks touch the same float.
            let write = |i: usize, v: f32| unsafe { *out.get().add(i) = v };
            self.rows(rows, write, &pixel)
        });
    }

    /// Output rows `rows`, each pixel the mean of `samples^2` bilinear samples read through
    /// `pixel(x, y)`, rounded to 8 bits and normalised; `write(index, value)` stores it.
    #[inline(always)]
    fn rows(
        &self,
        rows: core::ops::Range<usize>,
        write: impl Fn(usize, f32),
        pixel: impl Fn(usize, usize) -> [f32; 3],
    ) {
        let (s, n) = (self.size, self.samples);
        let step = 1.0 / n as f32;
        let norm = 1.0 / (n * n) as f32;
        let inv_cell = 1.0 / self.cell;
        // Sampled position of output point (qx, qy), minus the half pixel of `bilinear`'s
        // pixel-index coordinates; it moves by fixed steps between sub-samples.
        let (a, b) = (self.inverse.a * inv_cell, self.inverse.b * inv_cell);
        let place = |qx: f32, qy: f32| {
            let (x, y) = self.inverse.apply(qx, qy);
            (
                x * inv_cell + self.offset.0 - 0.5,
                y * inv_cell + self.offset.1 - 0.5,
            )
        };
        let (along_i, along_j) = ((a * step, -b * step), (b * step, a * step));
        for v in rows {
            for u in 0..s {
                let mut acc = [0.0f32; 3];
                let first = place(u as f32 + 0.5 * step, v as f32 + 0.5 * step);
                for j in 0..n {
                    let row = (
                        first.0 + j as f32 * along_j.0,
                        first.1 + j as f32 * along_j.1,
                    );
                    for i in 0..n {
                        let (x, y) = (row.0 + i as f32 * along_i.0, row.1 + i as f32 * along_i.1);
                        let p = bilinear(&pixel, self.width, self.height, x, y);
                        acc[0] += p[0];
                        acc[1] += p[1];
                        acc[2] += p[2];
                    }
                }
                for (c, sum) in acc.into_iter().enumerate() {
                    // Rounded to a level as an 8-bit image would be (non-negative after the
                    // clamp, so adding a half and truncating rounds to nearest).
                    let level = ((sum * norm).clamp(0.0, 255.0) + 0.5) as u32 as f32;
                    write(
                        c * s * s + v * s + u,
                        (level / 255.0 - self.mean[c]) / self.std[c],
                    );
                }
            }
        }
    }
}

/// `source = [a b; -b a] (target - t)`: maps output-pixel coordinates into the image.
#[derive(Clone, Copy, Debug)]
struct InverseSimilarity {
    a: f32,
    b: f32,
    tx: f32,
    ty: f32,
}

impl InverseSimilarity {
    #[inline(always)]
    fn apply(&self, qx: f32, qy: f32) -> (f32, f32) {
        let (dx, dy) = (qx - self.tx, qy - self.ty);
        (self.a * dx + self.b * dy, -self.b * dx + self.a * dy)
    }
}

/// Least-squares similarity (rotation, uniform scale, translation) taking the landmarks onto
/// [`ALIGN_TEMPLATE`] scaled to `size`, returned inverted for sampling.
fn similarity_to_template(
    points: &[[f32; 2]; 5],
    size: f32,
) -> Result<InverseSimilarity, ClassifyError> {
    if points.iter().flatten().any(|v| !v.is_finite()) {
        return Err(ClassifyError::BadFace("landmarks are not finite"));
    }
    let n = points.len() as f32;
    let (mut px, mut py, mut qx, mut qy) = (0.0, 0.0, 0.0, 0.0);
    for (p, q) in points.iter().zip(&ALIGN_TEMPLATE) {
        px += p[0];
        py += p[1];
        qx += q[0] * size;
        qy += q[1] * size;
    }
    (px, py, qx, qy) = (px / n, py / n, qx / n, qy / n);
    let (mut dot, mut cross, mut norm) = (0.0f32, 0.0f32, 0.0f32);
    for (p, q) in points.iter().zip(&ALIGN_TEMPLATE) {
        let (ax, ay) = (p[0] - px, p[1] - py);
        let (bx, by) = (q[0] * size - qx, q[1] * size - qy);
        dot += ax * bx + ay * by;
        cross += ax * by - ay * bx;
        norm += ax * ax + ay * ay;
    }
    if norm < 1e-6 || !norm.is_finite() {
        return Err(ClassifyError::BadFace("landmarks coincide"));
    }
    // Forward map: q = [a -b; b a] p + t.
    let (a, b) = (dot / norm, cross / norm);
    let det = a * a + b * b;
    if det < 1e-12 || !det.is_finite() {
        return Err(ClassifyError::BadFace(
            "landmarks give a degenerate transform",
        ));
    }
    let tx = qx - (a * px - b * py);
    let ty = qy - (b * px + a * py);
    Ok(InverseSimilarity {
        a: a / det,
        b: b / det,
        tx,
        ty,
    })
}

/// Bilinear sample at continuous pixel-index coordinates, edges replicated.
#[inline(always)]
fn bilinear(
    pixel: &impl Fn(usize, usize) -> [f32; 3],
    width: usize,
    height: usize,
    x: f32,
    y: f32,
) -> [f32; 3] {
    let max_x = (width - 1) as f32;
    let max_y = (height - 1) as f32;
    let x = x.clamp(0.0, max_x);
    let y = y.clamp(0.0, max_y);
    // Truncation is the floor here: both are clamped to be non-negative.
    let (x0, y0) = (x as usize, y as usize);
    let (wx, wy) = (x - x0 as f32, y - y0 as f32);
    let x1 = (x0 + 1).min(width - 1);
    let y1 = (y0 + 1).min(height - 1);
    let (p00, p01, p10, p11) = (pixel(x0, y0), pixel(x1, y0), pixel(x0, y1), pixel(x1, y1));
    let mut out = [0.0; 3];
    for c in 0..3 {
        let top = p00[c] + (p01[c] - p00[c]) * wx;
        let bottom = p10[c] + (p11[c] - p10[c]) * wx;
        out[c] = top + (bottom - top) * wy;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        // Landmarks = template scaled to 64 px, rotated by 0.4 rad, scaled by 2, shifted.
        let (c, s) = (libm::cosf(0.4) * 2.0, libm::sinf(0.4) * 2.0);
        let mut points = [[0.0f32; 2]; 5];
        for (p, q) in points.iter_mut().zip(&ALIGN_TEMPLATE) {
            let (x, y) = (q[0] * 64.0, q[1] * 64.0);
            *p = [c * x - s * y + 10.0, s * x + c * y + 20.0];
        }
        let inv = similarity_to_template(&points, 64.0).unwrap();
        for (p, q) in points.iter().zip(&ALIGN_TEMPLATE) {
            let (x, y) = inv.apply(q[0] * 64.0, q[1] * 64.0);
            assert!(
                (x - p[0]).abs() < 1e-3 && (y - p[1]).abs() < 1e-3,
                "{x},{y} vs {p:?}"
            );
        }
    }
}
