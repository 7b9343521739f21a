//! 2-D convolution on CHW tensors: im2col fused into the GEMM's packing (no column buffer),
//! or for stride-1 kernels a padded input the GEMM reads in place (`kernels::implicit`,
//! chosen per layer shape by [`ConvPath`]), a plain GEMM for 1x1 stride-1, and a direct kernel
//! for depthwise convolutions.

use super::gemm::{self, BSource, Epilogue, PackedA, PackedAT};
use super::implicit;
use super::{check_len, Activation, KernelError, Parallel};
use alloc::vec::Vec;

mod batch;
mod input;

use input::GemmInput;

/// Shape of a convolution, as `torch.nn.Conv2d` takes it (square stride and padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl Conv2dParams {
    /// A square `kernel x kernel` convolution without groups.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Conv2dParams {
            in_channels,
            out_channels,
            kernel_h: kernel,
            kernel_w: kernel,
            stride,
            padding,
            groups: 1,
        }
    }

    /// Number of weights: `out * in/groups * kh * kw` (the OIHW tensor's length).
    pub fn weight_len(&self) -> usize {
        self.out_channels * (self.in_channels / self.groups.max(1)) * self.kernel_h * self.kernel_w
    }

    /// Output `(height, width)` for an input of `(height, width)`; `None` when the kernel does
    /// not fit even once.
    pub fn output_size(&self, height: usize, width: usize) -> Option<(usize, usize)> {
        let span_h = height + 2 * self.padding;
        let span_w = width + 2 * self.padding;
        if span_h < self.kernel_h || span_w < self.kernel_w || self.stride == 0 {
            return None;
        }
        Some((
            (span_h - self.kernel_h) / self.stride + 1,
            (span_w - self.kernel_w) / self.stride + 1,
        ))
    }

    fn validate(&self) -> Result<(), KernelError> {
        if self.in_channels == 0
            || self.out_channels == 0
            || self.kernel_h == 0
            || self.kernel_w == 0
        {
            return Err(KernelError::InvalidParams(
                "conv2d channels and kernel must be non-zero",
            ));
        }
        if self.stride == 0 {
            return Err(KernelError::InvalidParams("conv2d stride must be non-zero"));
        }
        if self.groups == 0
            || self.in_channels % self.groups != 0
            || self.out_channels % self.groups != 0
        {
            return Err(KernelError::InvalidParams(
                "conv2d groups must divide both channel counts",
            ));
        }
        Ok(())
    }
}

/// Folds an inference-mode BatchNorm that follows a convolution into its weights and bias:
/// `w' = w * g / sqrt(var + eps)`, `b' = (b - mean) * g / sqrt(var + eps) + beta`.
///
/// `weight` is OIHW with `bias.len()` output channels.
#[allow(clippy::too_many_arguments)]
pub fn fold_batch_norm(
    weight: &mut [f32],
    bias: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Result<(), KernelError> {
    let channels = bias.len();
    for (what, len) in [
        ("BN gamma", gamma.len()),
        ("BN beta", beta.len()),
        ("BN mean", mean.len()),
        ("BN var", var.len()),
    ] {
        if len != channels {
            return Err(KernelError::Length {
                what,
                expected: channels,
                found: len,
            });
        }
    }
    if channels == 0 || weight.len() % channels != 0 {
        return Err(KernelError::InvalidParams(
            "BN channels do not divide the conv weight",
        ));
    }
    let per_channel = weight.len() / channels;
    for o in 0..channels {
        let scale = gamma[o] / libm::sqrtf(var[o] + eps);
        for w in &mut weight[o * per_channel..(o + 1) * per_channel] {
            *w *= scale;
        }
        bias[o] = (bias[o] - mean[o]) * scale + beta[o];
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Plan {
    /// One packed GEMM operand per group, and optionally the same packed for the narrow GEMM.
    Gemm {
        groups: Vec<PackedA>,
        narrow: Vec<PackedAT>,
    },
    /// `groups == in == out`: weights `[C, kh*kw]` applied per channel.
    Depthwise(Vec<f32>),
}

/// How the weights of the memory-bound late layers are stored (see
/// [`crate::Model::store_late_weights_as_f16`] and [`crate::Model::store_late_weights_as_int8`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatePrecision {
    /// IEEE half floats: half the traffic, relative error up to 2^-11 per weight.
    F16,
    /// Signed bytes with one scale per output channel: a quarter of the traffic.
    Int8,
}

/// A convolution with its weights packed for the kernels and its bias (BN already folded).
#[derive(Clone, Debug)]
pub struct Conv2d {
    params: Conv2dParams,
    plan: Plan,
    bias: Vec<f32>,
    path: ConvPath,
}

/// How a stride-1 convolution feeds its GEMM (see `kernels::implicit`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvPath {
    /// Implicit where it measured faster (narrow output channels or wide rows), else packed.
    #[default]
    Auto,
    /// Always pack im2col blocks.
    Packed,
    /// Read a padded copy of the input in place whenever the convolution allows it (stride
    /// 1, no groups, kernel larger than 1x1) and the scratch is large enough.
    Implicit,
}

impl Conv2d {
    /// `weight` in OIHW order (`[out, in/groups, kh, kw]`), `bias` per output channel.
    pub fn new(
        params: Conv2dParams,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Conv2d, KernelError> {
        params.validate()?;
        if weight.len() != params.weight_len() {
            return Err(KernelError::Length {
                what: "conv2d weight",
                expected: params.weight_len(),
                found: weight.len(),
            });
        }
        let bias = match bias {
            Some(b) if b.len() != params.out_channels => {
                return Err(KernelError::Length {
                    what: "conv2d bias",
                    expected: params.out_channels,
                    found: b.len(),
                })
            }
            Some(b) => b.to_vec(),
            None => alloc::vec![0.0; params.out_channels],
        };
        let depthwise = params.groups == params.in_channels && params.groups == params.out_channels;
        let plan = if depthwise && params.groups > 1 {
            Plan::Depthwise(weight.to_vec())
        } else {
            let out_g = params.out_channels / params.groups;
            let k = params.in_channels / params.groups * params.kernel_h * params.kernel_w;
            let mut packed = Vec::with_capacity(params.groups);
            for g in 0..params.groups {
                packed.push(PackedA::new(
                    out_g,
                    k,
                    &weight[g * out_g * k..(g + 1) * out_g * k],
                )?);
            }
            Plan::Gemm {
                groups: packed,
                narrow: Vec::new(),
            }
        };
        Ok(Conv2d {
            params,
            plan,
            bias,
            path: ConvPath::Auto,
        })
    }

    /// Also packs the weights for [`gemm::gemm_narrow`] when an output of `pixels` pixels
    /// (`oh * ow`) runs faster that way; call it once when the output size is known.
    pub fn prepare_for_output_pixels(&mut self, pixels: usize) {
        if let Plan::Gemm { groups, narrow } = &mut self.plan {
            if gemm::narrow_is_better(pixels) && narrow.is_empty() {
                *narrow = groups.iter().map(PackedAT::from_packed).collect();
            }
        }
    }

    /// Stores the weights packed for [`gemm::gemm_narrow`] (see
    /// [`Conv2d::prepare_for_output_pixels`]) at `precision`; returns how many weights that
    /// covers (0 when this convolution does not run narrow).
    pub fn narrow_weights_to(&mut self, precision: LatePrecision) -> usize {
        match &mut self.plan {
            Plan::Gemm { narrow, .. } if !narrow.is_empty() => {
                for weights in narrow.iter_mut() {
                    match precision {
                        LatePrecision::F16 => weights.to_half(),
                        LatePrecision::Int8 => weights.to_int8(),
                    }
                }
                self.params.weight_len()
            }
            _ => 0,
        }
    }

    /// Overrides the automatic choice between packed and implicit GEMM input, for
    /// benchmarks and tests; [`Conv2d::scratch_len_at`] follows it.
    pub fn set_path(&mut self, path: ConvPath) {
        self.path = path;
    }

    pub fn params(&self) -> &Conv2dParams {
        &self.params
    }

    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Output `(height, width)`, `None` when the input is smaller than the kernel.
    pub fn output_size(&self, height: usize, width: usize) -> Option<(usize, usize)> {
        self.params.output_size(height, width)
    }

    /// [`Conv2d::output_size`], as the error a forward pass reports.
    fn checked_output_size(
        &self,
        height: usize,
        width: usize,
    ) -> Result<(usize, usize), KernelError> {
        self.output_size(height, width)
            .ok_or(KernelError::InvalidParams(
                "conv2d input smaller than its kernel",
            ))
    }

    /// Floats of scratch [`Conv2d::forward`] needs with `threads` workers.
    pub fn scratch_len(threads: usize) -> usize {
        threads.max(1) * gemm::PACK_SCRATCH_LEN
    }

    /// Floats of scratch that let [`Conv2d::forward`] take its fastest path for a
    /// `height x width` input: stride-1 convolutions with wide enough rows read a padded
    /// copy of the input in place instead of packing im2col blocks (see
    /// `kernels::implicit`). With less (but at least [`Conv2d::scratch_len`]) it packs.
    pub fn scratch_len_at(&self, threads: usize, height: usize, width: usize) -> usize {
        let implicit = implicit::Layout::new(&self.params, height, width, self.path)
            .map_or(0, |layout| layout.scratch_len(threads));
        Self::scratch_len(threads).max(implicit)
    }

    /// `output = act(conv(input) + bias (+ residual))`, input `[in, height, width]`, output and
    /// residual `[out, oh, ow]`. Allocation-free.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        input: &[f32],
        height: usize,
        width: usize,
        output: &mut [f32],
        residual: Option<&[f32]>,
        activation: Activation,
        scratch: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), KernelError> {
        let p = &self.params;
        let (oh, ow) = self.checked_output_size(height, width)?;
        check_len("conv2d input", input.len(), p.in_channels * height * width)?;
        let out_len = p.out_channels * oh * ow;
        check_len("conv2d output", output.len(), out_len)?;
        if let Some(r) = residual {
            check_len("conv2d residual", r.len(), out_len)?;
        }
        let output = &mut output[..out_len];
        match &self.plan {
            Plan::Depthwise(weights) => {
                depthwise(
                    p, weights, &self.bias, input, height, width, oh, ow, output, residual,
                    activation, par,
                );
                Ok(())
            }
            Plan::Gemm { groups, narrow } => {
                if let Some(layout) = implicit::Layout::new(p, height, width, self.path) {
                    // Only when the caller sized scratch for it (see `scratch_len_at`).
                    if scratch.len() >= layout.scratch_len(par.threads()) {
                        return implicit::forward(
                            &layout, &groups[0], &self.bias, input, output, residual, activation,
                            scratch, par,
                        );
                    }
                }
                let in_g = p.in_channels / p.groups;
                let out_g = p.out_channels / p.groups;
                let n = oh * ow;
                for (g, packed) in groups.iter().enumerate() {
                    let input_g =
                        &input[g * in_g * height * width..(g + 1) * in_g * height * width];
                    let rows = g * out_g * n..(g + 1) * out_g * n;
                    let epilogue = Epilogue {
                        bias: Some(&self.bias[g * out_g..(g + 1) * out_g]),
                        residual: residual.map(|r| &r[rows.clone()]),
                        activation,
                    };
                    let out_slice = &mut output[rows];
                    let src = GemmInput::new(p, input_g, (height, width), (oh, ow));
                    let src: &dyn BSource = &src;
                    match narrow.get(g) {
                        Some(narrow) if gemm::narrow_is_better(n) => {
                            gemm::gemm_narrow(narrow, src, out_slice, n, epilogue, scratch, par)?
                        }
                        _ => gemm::gemm(packed, src, out_slice, n, epilogue, scratch, par)?,
                    }
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: depthwise tasks write disjoint channel planes.
unsafe impl Sync for SharedOut {}
unsafe impl Send for SharedOut {}

impl SharedOut {
    // A method, so closures capture the whole (Sync) wrapper rather than its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
fn depthwise(
    p: &Conv2dParams,
    weights: &[f32],
    bias: &[f32],
    input: &[f32],
    height: usize,
    width: usize,
    oh: usize,
    ow: usize,
    output: &mut [f32],
    residual: Option<&[f32]>,
    activation: Activation,
    par: &dyn Parallel,
) {
    let channels = p.in_channels;
    let taps = p.kernel_h * p.kernel_w;
    let out_ptr = SharedOut(output.as_mut_ptr());
    let threads = par.threads().max(1);
    let per_task = channels.div_ceil(threads);
    let task = |t: usize, _worker: usize| {
        let c0 = t * per_task;
        let c1 = channels.min(c0 + per_task);
        for c in c0..c1 {
            let plane = &input[c * height * width..(c + 1) * height * width];
            let kernel = &weights[c * taps..(c + 1) * taps];
            // SAFETY: channel planes are disjoint between tasks.
            let out =
                unsafe { core::slice::from_raw_parts_mut(out_ptr.get().add(c * oh * ow), oh * ow) };
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[c];
                    for ky in 0..p.kernel_h {
                        let iy = (oy * p.stride + ky) as isize - p.padding as isize;
                        if iy < 0 || iy >= height as isize {
                            continue;
                        }
                        let row = &plane[iy as usize * width..][..width];
                        for kx in 0..p.kernel_w {
                            let ix = (ox * p.stride + kx) as isize - p.padding as isize;
                            if ix >= 0 && ix < width as isize {
                                acc += kernel[ky * p.kernel_w + kx] * row[ix as usize];
                            }
                        }
                    }
                    let at = oy * ow + ox;
                    if let Some(r) = residual {
                        acc += r[c * oh * ow + at];
                    }
                    out[at] = activation.apply(acc);
                }
            }
        }
    };
    par.run(channels.div_ceil(per_task), &task);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Sequential;
    use alloc::vec;

    /// Direct convolution, the definition.
    fn naive(p: &Conv2dParams, w: &[f32], b: &[f32], x: &[f32], h: usize, wd: usize) -> Vec<f32> {
        let (oh, ow) = p.output_size(h, wd).unwrap();
        let in_g = p.in_channels / p.groups;
        let out_g = p.out_channels / p.groups;
        let mut y = vec![0.0; p.out_channels * oh * ow];
        for o in 0..p.out_channels {
            let g = o / out_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = b[o] as f64;
                    for ci in 0..in_g {
                        for ky in 0..p.kernel_h {
                            for kx in 0..p.kernel_w {
                                let iy = (oy * p.stride + ky) as isize - p.padding as isize;
                                let ix = (ox * p.stride + kx) as isize - p.padding as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                    let xi = ((g * in_g + ci) * h + iy as usize) * wd + ix as usize;
                                    let wi = ((o * in_g + ci) * p.kernel_h + ky) * p.kernel_w + kx;
                                    s += x[xi] as f64 * w[wi] as f64;
                                }
                            }
                        }
                    }
                    y[(o * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
        y
    }

    #[test]
    fn conv_variants_match_direct_convolution() {
        let cases = [
            (Conv2dParams::new(3, 8, 7, 2, 3), 19, 23),
            (Conv2dParams::new(5, 7, 3, 1, 1), 9, 10),
            (Conv2dParams::new(6, 9, 1, 1, 0), 5, 7),
            (Conv2dParams::new(6, 9, 1, 2, 0), 5, 7),
            (Conv2dParams::new(20, 30, 3, 2, 1), 4, 4),
            (Conv2dParams::new(20, 30, 3, 1, 1), 3, 3),
            (
                Conv2dParams {
                    groups: 2,
                    ..Conv2dParams::new(4, 6, 3, 2, 1)
                },
                8,
                9,
            ),
            (
                Conv2dParams {
                    groups: 8,
                    ..Conv2dParams::new(8, 8, 3, 2, 1)
                },
                11,
                6,
            ),
            (
                Conv2dParams {
                    groups: 8,
                    ..Conv2dParams::new(8, 8, 3, 1, 1)
                },
                4,
                5,
            ),
        ];
        for (p, h, w) in cases {
            let wt: Vec<f32> = (0..p.weight_len())
                .map(|i| ((i * 29 % 31) as f32 - 15.0) / 15.0)
                .collect();
            let b: Vec<f32> = (0..p.out_channels).map(|i| i as f32 * 0.05 - 0.1).collect();
            let x: Vec<f32> = (0..p.in_channels * h * w)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
                .collect();
            let mut conv = Conv2d::new(p, &wt, Some(&b)).unwrap();
            let (oh, ow) = conv.output_size(h, w).unwrap();
            conv.prepare_for_output_pixels(oh * ow);
            let mut y = vec![0.0; p.out_channels * oh * ow];
            let mut scratch = vec![0.0; Conv2d::scratch_len(1)];
            conv.forward(
                &x,
                h,
                w,
                &mut y,
                None,
                Activation::None,
                &mut scratch,
                &Sequential,
            )
            .unwrap();
            let want = naive(&p, &wt, &b, &x, h, w);
            for (a, e) in y.iter().zip(&want) {
                assert!((a - e).abs() < 1e-4 * (1.0 + e.abs()), "{p:?}: {a} vs {e}");
            }
        }
    }
}
