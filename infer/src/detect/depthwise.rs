//! Depthwise 3x3 convolution (padding 1, stride 1 or 2) with fused bias and activation.
//!
//! MobileNet's depthwise layers are a few percent of the detector's multiply-adds but, with the
//! generic per-tap bounds-checked loop of `kernels::conv`, took over half its time. Here each
//! output row is three row passes whose interior is a plain slice loop the compiler vectorises;
//! only the first and last column take the padding into account.

use crate::kernels::{Activation, KernelError, Parallel};
use alloc::vec::Vec;

/// A depthwise 3x3 convolution, weights `[channels, 1, 3, 3]`.
#[derive(Clone, Debug)]
pub(crate) struct Depthwise3x3 {
    channels: usize,
    stride: usize,
    weights: Vec<[f32; 9]>,
    bias: Vec<f32>,
}

#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint channel planes of the output (see `forward`).
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}

impl SharedOut {
    /// A method, so closures capture the whole `Sync` wrapper, not its raw-pointer field.
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

impl Depthwise3x3 {
    pub(crate) fn new(
        channels: usize,
        stride: usize,
        weight: &[f32],
        bias: &[f32],
    ) -> Result<Self, KernelError> {
        if channels == 0 || !(stride == 1 || stride == 2) {
            return Err(KernelError::InvalidParams(
                "depthwise 3x3 needs channels and stride 1 or 2",
            ));
        }
        if weight.len() != channels * 9 || bias.len() != channels {
            return Err(KernelError::Length {
                what: "depthwise 3x3 weights",
                expected: channels * 9,
                found: weight.len(),
            });
        }
        Ok(Depthwise3x3 {
            channels,
            stride,
            weights: weight
                .chunks_exact(9)
                .map(|k| core::array::from_fn(|i| k[i]))
                .collect(),
            bias: bias.to_vec(),
        })
    }

    pub(crate) fn channels(&self) -> usize {
        self.channels
    }

    /// Output size for a `height x width` input (padding 1).
    pub(crate) fn output_size(&self, height: usize, width: usize) -> Option<(usize, usize)> {
        if height == 0 || width == 0 {
            return None;
        }
        Some((
            (height - 1) / self.stride + 1,
            (width - 1) / self.stride + 1,
        ))
    }

    /// `output = act(depthwise(input) + bias)`, input `[C, h, w]`, output `[C, oh, ow]`.
    pub(crate) fn forward(
        &self,
        input: &[f32],
        (h, w): (usize, usize),
        output: &mut [f32],
        activation: Activation,
        par: &dyn Parallel,
    ) -> Result<(usize, usize), KernelError> {
        let (oh, ow) = self
            .output_size(h, w)
            .ok_or(KernelError::InvalidParams("depthwise input is empty"))?;
        let c = self.channels;
        if input.len() < c * h * w {
            return Err(KernelError::Length {
                what: "depthwise input",
                expected: c * h * w,
                found: input.len(),
            });
        }
        if output.len() < c * oh * ow {
            return Err(KernelError::Length {
                what: "depthwise output",
                expected: c * oh * ow,
                found: output.len(),
            });
        }
        let out = SharedOut(output.as_mut_ptr());
        let tasks = par.threads().max(1).min(c);
        let per_task = c.div_ceil(tasks);
        let task = |t: usize, _worker: usize| {
            for ch in t * per_task..c.min((t + 1) * per_task) {
                let plane = &input[ch * h * w..(ch + 1) * h * w];
                // SAFETY: channel `ch` belongs to this task only, and its plane lies inside
                // `output` (length checked above), so no two tasks write the same element.
                let dst = unsafe { core::slice::from_raw_parts_mut(out.at(ch * oh * ow), oh * ow) };
                self.channel(
                    plane,
                    (h, w),
                    dst,
                    (oh, ow),
                    &self.weights[ch],
                    self.bias[ch],
                    activation,
                );
            }
        };
        par.run(c.div_ceil(per_task), &task);
        Ok((oh, ow))
    }

    #[allow(clippy::too_many_arguments)]
    fn channel(
        &self,
        plane: &[f32],
        (h, w): (usize, usize),
        dst: &mut [f32],
        (oh, ow): (usize, usize),
        k: &[f32; 9],
        bias: f32,
        activation: Activation,
    ) {
        for (oy, out_row) in dst.chunks_exact_mut(ow).take(oh).enumerate() {
            out_row.fill(bias);
            for ky in 0..3 {
                let iy = (oy * self.stride + ky) as isize - 1;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = &plane[iy as usize * w..(iy as usize + 1) * w];
                let (k0, k1, k2) = (k[ky * 3], k[ky * 3 + 1], k[ky * 3 + 2]);
                if self.stride == 1 {
                    row_stride1(row, out_row, k0, k1, k2);
                } else {
                    row_stride2(row, out_row, k0, k1, k2);
                }
            }
            for v in out_row.iter_mut() {
                *v = activation.apply(*v);
            }
        }
    }
}

/// `out[x] += k0 in[x-1] + k1 in[x] + k2 in[x+1]`, zero outside the row (`out.len() == w`).
#[inline(always)]
fn row_stride1(row: &[f32], out: &mut [f32], k0: f32, k1: f32, k2: f32) {
    let w = row.len();
    if w == 1 {
        out[0] += k1 * row[0];
        return;
    }
    out[0] += k1 * row[0] + k2 * row[1];
    for (o, win) in out[1..w - 1].iter_mut().zip(row.windows(3)) {
        *o += k0 * win[0] + k1 * win[1] + k2 * win[2];
    }
    out[w - 1] += k0 * row[w - 2] + k1 * row[w - 1];
}

/// `out[x] += k0 in[2x-1] + k1 in[2x] + k2 in[2x+1]`, zero outside the row.
#[inline(always)]
fn row_stride2(row: &[f32], out: &mut [f32], k0: f32, k1: f32, k2: f32) {
    let w = row.len();
    out[0] += k1 * row[0] + if w > 1 { k2 * row[1] } else { 0.0 };
    // Interior outputs x >= 1 with 2x + 1 < w read in[2x-1 ..= 2x+1] inside the row.
    let interior = w.saturating_sub(2) / 2;
    if interior > 0 {
        let taps = row[1..].chunks_exact(2).zip(row[2..].chunks_exact(2));
        for (o, (a, b)) in out[1..=interior].iter_mut().zip(taps) {
            *o += k0 * a[0] + k1 * a[1] + k2 * b[1];
        }
    }
    // A last output whose right tap falls off the row (odd widths).
    let last = interior + 1;
    if last < out.len() {
        let i = 2 * last - 1;
        out[last] += k0 * row[i] + if i + 1 < w { k1 * row[i + 1] } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Conv2d, Conv2dParams, Sequential};

    #[test]
    fn matches_the_generic_convolution() {
        for (h, w) in [
            (1, 1),
            (1, 2),
            (2, 1),
            (2, 2),
            (3, 3),
            (4, 5),
            (7, 6),
            (9, 10),
            (12, 13),
        ] {
            for stride in [1, 2] {
                let c = 3;
                let weight: Vec<f32> = (0..c * 9)
                    .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
                    .collect();
                let bias = [0.1, -0.2, 0.3];
                let input: Vec<f32> = (0..c * h * w)
                    .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
                    .collect();
                let params = Conv2dParams {
                    groups: c,
                    ..Conv2dParams::new(c, c, 3, stride, 1)
                };
                let generic = Conv2d::new(params, &weight, Some(&bias)).unwrap();
                let (oh, ow) = generic.output_size(h, w).unwrap();
                let act = Activation::LeakyRelu(0.1);
                let mut want = alloc::vec![0.0; c * oh * ow];
                let mut scratch = alloc::vec![0.0; Conv2d::scratch_len(1)];
                generic
                    .forward(
                        &input,
                        h,
                        w,
                        &mut want,
                        None,
                        act,
                        &mut scratch,
                        &Sequential,
                    )
                    .unwrap();
                let fast = Depthwise3x3::new(c, stride, &weight, &bias).unwrap();
                let mut got = alloc::vec![f32::NAN; c * oh * ow];
                assert_eq!(
                    fast.forward(&input, (h, w), &mut got, act, &Sequential)
                        .unwrap(),
                    (oh, ow)
                );
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "{h}x{w} stride {stride}: {got:?} vs {want:?}"
                    );
                }
            }
        }
    }
}
