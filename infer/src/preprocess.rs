//! Face crop -> normalised CHW network input, allocation-free after construction.
//!
//! Box crops are resized exactly as `image::imageops::resize(.., FilterType::Triangle)` does
//! (the trainer's preprocessing): a vertical pass into f32 rows, then a horizontal pass,
//! rounded to 8 bits; same f32 arithmetic in the same order, so results match bit for bit.
//! Landmark crops are warped by a similarity transform and area-sampled when shrinking.

use crate::error::ClassifyError;
use crate::image::{FaceRegion, ImageView, PixelFormat};
use crate::kernels::gemm::SharedMut;
use crate::kernels::Parallel;
use alloc::vec;
use alloc::vec::Vec;

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

/// Most sub-samples per axis when area-sampling an aligned crop.
const MAX_SUPERSAMPLE: usize = 8;

/// Pre-sized buffers for one input size and a maximum crop size.
#[derive(Debug)]
pub(crate) struct Preprocessor {
    size: usize,
    max_width: usize,
    max_height: usize,
    /// Taps per output pixel the buffers hold.
    max_taps: usize,
    /// Vertical pass output: `size` rows of up to `max_width` RGB f32 pixels.
    rows: Vec<f32>,
    weights_v: Vec<f32>,
    weights_h: Vec<f32>,
    spans_v: Vec<(usize, usize)>,
    spans_h: Vec<(usize, usize)>,
}

/// `image`'s `clamp`, kept separate so the arithmetic reads like the reference.
fn clamp_i64(a: i64, min: i64, max: i64) -> i64 {
    if a < min {
        min
    } else if a > max {
        max
    } else {
        a
    }
}

fn triangle(x: f32) -> f32 {
    let a = if x < 0.0 { -x } else { x };
    if a < 1.0 {
        1.0 - a
    } else {
        0.0
    }
}

/// Triangle-filter taps for resampling `in_len` to `out_len` samples, as `image` computes them.
fn filter_taps(
    in_len: usize,
    out_len: usize,
    max_taps: usize,
    weights: &mut [f32],
    spans: &mut [(usize, usize)],
) {
    let ratio = in_len as f32 / out_len as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let support = sratio;
    for out in 0..out_len {
        let center = (out as f32 + 0.5) * ratio;
        let left = clamp_i64(libm::floorf(center - support) as i64, 0, in_len as i64 - 1);
        let right = clamp_i64(
            libm::ceilf(center + support) as i64,
            left + 1,
            in_len as i64,
        );
        let center = center - 0.5;
        // Never more taps than the buffers hold (cannot happen for sizes within the maximum).
        let right = right.min(left + max_taps as i64);
        let taps = &mut weights[out * max_taps..][..(right - left) as usize];
        let mut sum = 0.0;
        for (t, w) in taps.iter_mut().enumerate() {
            *w = triangle(((left as usize + t) as f32 - center) / sratio);
            sum += *w;
        }
        if sum > 0.0 {
            for w in taps.iter_mut() {
                *w /= sum;
            }
        }
        spans[out] = (left as usize, (right - left) as usize);
    }
}

impl Preprocessor {
    pub fn new(size: usize, max_width: usize, max_height: usize) -> Preprocessor {
        let longest = max_width.max(max_height).max(size);
        let max_taps = 2 * longest.div_ceil(size) + 3;
        Preprocessor {
            size,
            max_width,
            max_height,
            max_taps,
            rows: vec![0.0; size * max_width * 3],
            weights_v: vec![0.0; size * max_taps],
            weights_h: vec![0.0; size * max_taps],
            spans_v: vec![(0, 0); size],
            spans_h: vec![(0, 0); size],
        }
    }

    /// Fills `out` (`[3, size, size]`) from the face (or the whole image when `face` is None).
    pub fn run(
        &mut self,
        image: &ImageView<'_>,
        face: Option<&FaceRegion>,
        mean: [f32; 3],
        std: [f32; 3],
        out: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), ClassifyError> {
        let plane = self.size * self.size;
        if out.len() < 3 * plane {
            return Err(ClassifyError::Length {
                what: "network input",
                expected: 3 * plane,
                found: out.len(),
            });
        }
        match face {
            Some(FaceRegion {
                landmarks: Some(points),
                ..
            }) => self.align(image, points, mean, std, out, par),
            Some(face) => {
                let (x0, y0, w, h) = box_to_crop(image, face.bbox)?;
                self.resize(image, x0, y0, w, h, mean, std, out)
            }
            None => self.resize(image, 0, 0, image.width(), image.height(), mean, std, out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn resize(
        &mut self,
        image: &ImageView<'_>,
        x0: usize,
        y0: usize,
        width: usize,
        height: usize,
        mean: [f32; 3],
        std: [f32; 3],
        out: &mut [f32],
    ) -> Result<(), ClassifyError> {
        if width > self.max_width || height > self.max_height {
            return Err(ClassifyError::TooLarge {
                width,
                height,
                max_width: self.max_width,
                max_height: self.max_height,
            });
        }
        let s = self.size;
        filter_taps(
            height,
            s,
            self.max_taps,
            &mut self.weights_v,
            &mut self.spans_v,
        );
        filter_taps(
            width,
            s,
            self.max_taps,
            &mut self.weights_h,
            &mut self.spans_h,
        );
        // Vertical pass: rows[oy][x] = sum_t w_t * pixel(x, left + t).
        for oy in 0..s {
            let (left, count) = self.spans_v[oy];
            let row = &mut self.rows[oy * width * 3..(oy + 1) * width * 3];
            row.fill(0.0);
            for (t, &w) in self.weights_v[oy * self.max_taps..][..count]
                .iter()
                .enumerate()
            {
                let y = y0 + left + t;
                for (x, acc) in row.chunks_exact_mut(3).enumerate() {
                    let p = image.rgb(x0 + x, y);
                    acc[0] += p[0] * w;
                    acc[1] += p[1] * w;
                    acc[2] += p[2] * w;
                }
            }
        }
        // Horizontal pass, rounded to 8 bits like the reference, then normalised.
        for oy in 0..s {
            let row = &self.rows[oy * width * 3..(oy + 1) * width * 3];
            for ox in 0..s {
                let (left, count) = self.spans_h[ox];
                let mut acc = [0.0f32; 3];
                for (t, &w) in self.weights_h[ox * self.max_taps..][..count]
                    .iter()
                    .enumerate()
                {
                    let p = &row[(left + t) * 3..(left + t) * 3 + 3];
                    acc[0] += p[0] * w;
                    acc[1] += p[1] * w;
                    acc[2] += p[2] * w;
                }
                for c in 0..3 {
                    let level = libm::roundf(acc[c].clamp(0.0, 255.0));
                    out[c * s * s + oy * s + ox] = (level / 255.0 - mean[c]) / std[c];
                }
            }
        }
        Ok(())
    }

    /// Warps the face onto the template. Output rows are split between `par`'s threads
    /// (every output pixel is computed the same way whichever thread does it), and pixels
    /// are read through a reader chosen once per call for the image's format.
    fn align(
        &mut self,
        image: &ImageView<'_>,
        points: &[[f32; 2]; 5],
        mean: [f32; 3],
        std: [f32; 3],
        out: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), ClassifyError> {
        let s = self.size;
        let inverse = similarity_to_template(points, s as f32)?;
        // Source pixels per output pixel decides how many samples average into one output.
        let scale = libm::sqrtf(inverse.a * inverse.a + inverse.b * inverse.b);
        let n = (libm::ceilf(scale) as usize).clamp(1, MAX_SUPERSAMPLE);
        let warp = Warp {
            inverse,
            samples: n,
            size: s,
            mean,
            std,
            width: image.width(),
            height: image.height(),
        };
        // Bytes per pixel and where red, green and blue sit in a pixel.
        let layout = match image.format() {
            PixelFormat::Rgb8 => Some((3, [0, 1, 2])),
            PixelFormat::Bgr8 => Some((3, [2, 1, 0])),
            PixelFormat::Rgba8 => Some((4, [0, 1, 2])),
            PixelFormat::Bgra8 => Some((4, [2, 1, 0])),
            PixelFormat::Gray8 => Some((1, [0, 0, 0])),
            PixelFormat::Yuyv => None,
        };
        let rows_per_task = s.div_ceil(par.threads().max(1));
        let out = SharedMut(out.as_mut_ptr());
        let task = |t: usize, _worker: usize| {
            let rows = t * rows_per_task..s.min((t + 1) * rows_per_task);
            // SAFETY: `run` checked that `out` holds 3 * s * s floats; task t writes only its
            // own rows of each channel plane, so no two tasks touch the same float.
            let write = |i: usize, v: f32| unsafe { *out.get().add(i) = v };
            match layout {
                Some((bytes, [r, g, b])) => {
                    let (data, stride) = (image.data(), image.stride());
                    warp.rows(rows, write, |x, y| {
                        let p = &data[y * stride + x * bytes..];
                        [p[r] as f32, p[g] as f32, p[b] as f32]
                    })
                }
                // Two pixels share their chroma: the general reader.
                None => warp.rows(rows, write, |x, y| image.rgb(x, y)),
            }
        };
        par.run(s.div_ceil(rows_per_task), &task);
        Ok(())
    }
}

/// One aligned crop: where each output pixel samples the image, and how it is normalised.
struct Warp {
    inverse: InverseSimilarity,
    samples: usize,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    width: usize,
    height: usize,
}

impl Warp {
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
        for v in rows {
            for u in 0..s {
                let mut acc = [0.0f32; 3];
                for j in 0..n {
                    for i in 0..n {
                        let (qx, qy) = (
                            u as f32 + (i as f32 + 0.5) * step,
                            v as f32 + (j as f32 + 0.5) * step,
                        );
                        let (x, y) = self.inverse.apply(qx, qy);
                        let p = bilinear(&pixel, self.width, self.height, x - 0.5, y - 0.5);
                        acc[0] += p[0];
                        acc[1] += p[1];
                        acc[2] += p[2];
                    }
                }
                for (c, sum) in acc.into_iter().enumerate() {
                    let level = libm::roundf((sum * norm).clamp(0.0, 255.0));
                    write(
                        c * s * s + v * s + u,
                        (level / 255.0 - self.mean[c]) / self.std[c],
                    );
                }
            }
        }
    }
}

/// Integer crop `(x0, y0, width, height)` of a face box, rounded to whole pixels and clipped
/// to the image.
fn box_to_crop(
    image: &ImageView<'_>,
    bbox: [f32; 4],
) -> Result<(usize, usize, usize, usize), ClassifyError> {
    if bbox.iter().any(|v| !v.is_finite()) {
        return Err(ClassifyError::BadFace("box is not finite"));
    }
    let [x, y, w, h] = bbox;
    if w <= 0.0 || h <= 0.0 {
        return Err(ClassifyError::BadFace("box has no area"));
    }
    let clip = |v: f32, max: usize| libm::roundf(v).clamp(0.0, max as f32) as usize;
    let (x0, x1) = (clip(x, image.width()), clip(x + w, image.width()));
    let (y0, y1) = (clip(y, image.height()), clip(y + h, image.height()));
    if x1 <= x0 || y1 <= y0 {
        return Err(ClassifyError::BadFace(
            "box lies outside the image or rounds to nothing",
        ));
    }
    Ok((x0, y0, x1 - x0, y1 - y0))
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
