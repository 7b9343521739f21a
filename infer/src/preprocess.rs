//! Face crop -> normalised CHW network input, allocation-free after construction.
//!
//! Box crops are resized exactly as `image::imageops::resize(.., FilterType::Triangle)` does
//! (the trainer's preprocessing): a vertical pass into f32 rows, then a horizontal pass,
//! rounded to 8 bits; same f32 arithmetic in the same order, so results match bit for bit.
//! Landmark crops are warped onto the classifier's template by `crate::align`.

use crate::error::ClassifyError;
use crate::image::{FaceRegion, ImageView};
use crate::kernels::Parallel;
use alloc::vec;
use alloc::vec::Vec;

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
    /// Aligned crops of large faces: the face's region box-averaged into cells, RGB f32.
    grid: Vec<f32>,
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
            grid: vec![0.0; crate::align::grid_len(size)],
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
            }) => crate::align::align(
                &mut self.grid,
                self.size,
                image,
                points,
                mean,
                std,
                out,
                par,
            ),
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
