//! Stride-1 convolutions as a GEMM that reads its input in place: no im2col packing.
//!
//! With the input copied once into a zero-padded buffer whose planes are `hp x wp`, and output
//! pixels numbered in *padded-width* coordinates (`oy * wp + ox`), im2col row `(ci, ky, kx)`
//! is simply the padded buffer from offset `(ci * hp + ky) * wp + kx` on: every row is a
//! contiguous slice, so the GEMM's micro-kernel reads it where it is
//! ([`RowStarts::Taps`]). The price is `wp - ow` garbage columns per output row (computed,
//! then dropped when the result is copied out with the residual and activation), so the path
//! is taken only where rows are wide enough for that to cost less than packing, which for
//! small output-channel counts (the detector's 16- and 32-channel heads) costs as much as
//! the arithmetic.

use super::gemm::{self, BSource, Epilogue, PackedA, RowStarts, PACK_SCRATCH_LEN};
use super::{Activation, Conv2dParams, ConvPath, KernelError, Parallel};

/// Where [`ConvPath::Auto`] takes the implicit path, from
/// `cargo run --release -p face2exp-infer --example conv_paths` (table in docs/BENCHMARKS.md):
/// it wins by 1.2-1.8x for 16-32 output channels from 8-pixel rows on (packing costs as much
/// as the arithmetic when each packed value feeds few channels), by 1.2-1.6x for 64 channels
/// from 15-pixel rows on, and by 1.08x for 128 channels at 28 pixels; with 64-128 channels
/// and 8-14 pixel rows it loses up to 16% (the garbage columns outweigh the saved packing).
fn implicit_wins(out_channels: usize, out_width: usize) -> bool {
    out_width >= 28
        || (out_channels <= 32 && out_width >= 8)
        || (out_channels <= 64 && out_width >= 15)
}

/// Sizes of one implicit convolution over a `height x width` input.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    padding: usize,
    /// Padded plane size.
    hp: usize,
    wp: usize,
    oh: usize,
    ow: usize,
    kernel_h: usize,
    kernel_w: usize,
}

impl Layout {
    /// The layout when `p` at this input size takes the implicit path under `path`.
    pub fn new(p: &Conv2dParams, height: usize, width: usize, path: ConvPath) -> Option<Layout> {
        // An empty input (possible with enough padding) is left to the packed path.
        if p.stride != 1 || p.groups != 1 || p.kernel_h * p.kernel_w == 1 || height * width == 0 {
            return None;
        }
        let (oh, ow) = p.output_size(height, width)?;
        let take = match path {
            ConvPath::Auto => implicit_wins(p.out_channels, ow),
            ConvPath::Packed => false,
            ConvPath::Implicit => true,
        };
        if !take {
            return None;
        }
        Some(Layout {
            channels: p.in_channels,
            out_channels: p.out_channels,
            height,
            width,
            padding: p.padding,
            hp: height + 2 * p.padding,
            wp: width + 2 * p.padding,
            oh,
            ow,
            kernel_h: p.kernel_h,
            kernel_w: p.kernel_w,
        })
    }

    /// Floats of the padded input: the last tap's row runs `kernel_w - 1` past the planes.
    fn padded_len(&self) -> usize {
        self.channels * self.hp * self.wp + self.kernel_w
    }

    /// Output columns in padded-width coordinates.
    fn columns(&self) -> usize {
        self.oh * self.wp
    }

    /// Floats of scratch the path needs with `threads` workers.
    pub fn scratch_len(&self, threads: usize) -> usize {
        threads.max(1) * PACK_SCRATCH_LEN + self.padded_len() + self.out_channels * self.columns()
    }
}

/// The padded input read in place; only the ragged last column panel is ever packed.
struct PaddedTaps<'a> {
    data: &'a [f32],
    rows: RowStarts,
    k: usize,
    n: usize,
}

impl BSource for PaddedTaps<'_> {
    fn k(&self) -> usize {
        self.k
    }
    fn n(&self) -> usize {
        self.n
    }
    fn in_place(&self) -> Option<(&[f32], RowStarts)> {
        Some((self.data, self.rows))
    }
    fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, width: usize, dst: &mut [f32]) {
        gemm::pack_rows(self.data, self.rows, k0, kc, j0, nc, width, dst);
    }
}

/// `output = act(conv(input) + bias (+ residual))` through the padded input; `scratch` holds
/// at least `layout.scratch_len(par.threads())` floats.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    layout: &Layout,
    weights: &PackedA,
    bias: &[f32],
    input: &[f32],
    output: &mut [f32],
    residual: Option<&[f32]>,
    activation: Activation,
    scratch: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    let l = layout;
    let pack_len = par.threads().max(1) * PACK_SCRATCH_LEN;
    let (pack, rest) = scratch.split_at_mut(pack_len);
    let (padded, rest) = rest.split_at_mut(l.padded_len());
    let columns = l.columns();
    let wide = &mut rest[..l.out_channels * columns];

    // Zero borders (and the tail slack), input rows in between.
    let plane = l.hp * l.wp;
    for (ci, dst) in padded.chunks_exact_mut(plane).enumerate() {
        let src = &input[ci * l.height * l.width..][..l.height * l.width];
        dst[..l.padding * l.wp].fill(0.0);
        for (y, row) in src.chunks_exact(l.width).enumerate() {
            let at = (y + l.padding) * l.wp;
            dst[at..at + l.padding].fill(0.0);
            dst[at + l.padding..at + l.padding + l.width].copy_from_slice(row);
            dst[at + l.padding + l.width..at + l.wp].fill(0.0);
        }
        dst[(l.height + l.padding) * l.wp..].fill(0.0);
    }
    padded[l.channels * plane..].fill(0.0);

    let source = PaddedTaps {
        data: padded,
        rows: RowStarts::Taps {
            height: l.hp,
            width: l.wp,
            kernel_h: l.kernel_h,
            kernel_w: l.kernel_w,
        },
        k: l.channels * l.kernel_h * l.kernel_w,
        n: columns,
    };
    let epilogue = Epilogue {
        bias: Some(bias),
        residual: None,
        activation: Activation::None,
    };
    gemm::gemm(weights, &source, wide, columns, epilogue, pack, par)?;

    // Drop the garbage columns; the residual and activation follow the bias, in the same
    // order as the fused epilogue, so results match the im2col path bit for bit.
    let n = l.oh * l.ow;
    for (m, out) in output.chunks_exact_mut(n).take(l.out_channels).enumerate() {
        for (oy, out_row) in out.chunks_exact_mut(l.ow).enumerate() {
            let src = &wide[m * columns + oy * l.wp..][..l.ow];
            match residual {
                Some(r) => {
                    let r = &r[m * n + oy * l.ow..][..l.ow];
                    for ((o, &v), &s) in out_row.iter_mut().zip(src).zip(r) {
                        *o = activation.apply(v + s);
                    }
                }
                None => {
                    for (o, &v) in out_row.iter_mut().zip(src) {
                        *o = activation.apply(v);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Conv2d, ConvPath, Sequential};
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0)
            .collect()
    }

    /// The implicit path against the im2col path: same products summed in the same order,
    /// same epilogue, so the same bits.
    #[test]
    fn implicit_path_matches_im2col_bit_for_bit() {
        // (in, out, kernel, padding, height, width)
        for &(cin, cout, k, pad, h, w) in &[
            (3, 8, 3, 1, 9, 16),
            (64, 16, 3, 1, 15, 40),
            (5, 13, 5, 2, 7, 21),
            (4, 7, 3, 0, 6, 17),
            (40, 70, 3, 1, 3, 30),
            (9, 5, 3, 1, 4, 2),
        ] {
            let params = Conv2dParams::new(cin, cout, k, 1, pad);
            let mut conv = Conv2d::new(
                params,
                &values(params.weight_len(), 1),
                Some(&values(cout, 2)),
            )
            .unwrap();
            let (oh, ow) = params.output_size(h, w).unwrap();
            let input = values(cin * h * w, 3);
            let residual = values(cout * oh * ow, 4);
            for (activation, residual) in [
                (Activation::None, None),
                (Activation::Relu, Some(&residual[..])),
                (Activation::LeakyRelu(0.1), Some(&residual[..])),
            ] {
                let mut run = |path: ConvPath| {
                    conv.set_path(path);
                    let mut out = vec![f32::NAN; cout * oh * ow];
                    let mut scratch = vec![f32::NAN; conv.scratch_len_at(1, h, w)];
                    conv.forward(
                        &input,
                        h,
                        w,
                        &mut out,
                        residual,
                        activation,
                        &mut scratch,
                        &Sequential,
                    )
                    .unwrap();
                    out
                };
                let packed = run(ConvPath::Packed);
                let implicit = run(ConvPath::Implicit);
                let same = packed
                    .iter()
                    .zip(&implicit)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{params:?} at {h}x{w} with {activation:?}");
            }
            conv.set_path(ConvPath::Implicit);
            assert!(conv.scratch_len_at(1, h, w) > Conv2d::scratch_len(1));
        }
    }

    #[test]
    fn an_empty_input_with_wide_padding_is_not_a_panic() {
        let params = Conv2dParams::new(2, 3, 3, 1, 2);
        let mut conv = Conv2d::new(
            params,
            &values(params.weight_len(), 1),
            Some(&[1.0, 2.0, 3.0]),
        )
        .unwrap();
        for path in [ConvPath::Auto, ConvPath::Implicit, ConvPath::Packed] {
            conv.set_path(path);
            for (h, w) in [(0, 5), (5, 0)] {
                let (oh, ow) = params.output_size(h, w).unwrap();
                let mut out = vec![f32::NAN; 3 * oh * ow];
                let mut scratch = vec![0.0; conv.scratch_len_at(1, h, w)];
                conv.forward(
                    &[],
                    h,
                    w,
                    &mut out,
                    None,
                    Activation::None,
                    &mut scratch,
                    &Sequential,
                )
                .unwrap();
                // Only padding under the kernel: every output is the bias.
                assert!(out
                    .chunks(oh * ow)
                    .zip([1.0, 2.0, 3.0])
                    .all(|(c, b)| c.iter().all(|&v| v == b)));
            }
        }
    }

    #[test]
    fn auto_follows_the_measured_rule_and_strides_groups_stay_packed() {
        let at = |cin, cout, stride, h, w, path| {
            Layout::new(&Conv2dParams::new(cin, cout, 3, stride, 1), h, w, path).is_some()
        };
        assert!(at(64, 16, 1, 30, 40, ConvPath::Auto));
        assert!(at(32, 32, 1, 10, 8, ConvPath::Auto));
        assert!(!at(32, 32, 1, 10, 7, ConvPath::Auto));
        assert!(at(64, 64, 1, 15, 15, ConvPath::Auto));
        assert!(!at(64, 64, 1, 12, 12, ConvPath::Auto));
        assert!(!at(128, 128, 1, 14, 14, ConvPath::Auto));
        assert!(at(128, 128, 1, 28, 28, ConvPath::Auto));
        assert!(at(128, 128, 1, 14, 14, ConvPath::Implicit));
        assert!(!at(64, 16, 1, 30, 40, ConvPath::Packed));
        assert!(!at(8, 8, 2, 40, 40, ConvPath::Implicit));
        let padded = Conv2dParams::new(4, 4, 3, 1, 2);
        assert!(Layout::new(&padded, 0, 5, ConvPath::Implicit).is_none());
        let pointwise = Conv2dParams::new(8, 8, 1, 1, 0);
        assert!(Layout::new(&pointwise, 40, 40, ConvPath::Implicit).is_none());
        let grouped = Conv2dParams {
            groups: 2,
            ..Conv2dParams::new(8, 8, 3, 1, 1)
        };
        assert!(Layout::new(&grouped, 40, 40, ConvPath::Implicit).is_none());
    }
}
