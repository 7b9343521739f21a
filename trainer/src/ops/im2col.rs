//! The building blocks of the CPU convolution: its geometry, the im2col/col2im copies that turn a
//! convolution into one matrix product, and a bounds-checked front end for the `gemm` crate.
//!
//! Layouts are row-major. A "column matrix" for a chunk of `b` images has `C_in*K*K` rows and
//! `b*P` columns (`P = OH*OW`), image-major along the columns, so one GEMM covers the whole chunk.

use gemm::Parallelism;

/// Shape of one convolution: NCHW input, (C_out, C_in, K, K) weight, square kernel/stride/padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvGeometry {
    /// Validates the pieces and derives the output size, naming what is wrong otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        (batch, c_in, h, w): (usize, usize, usize, usize),
        (c_out, w_c_in, kh, kw): (usize, usize, usize, usize),
        stride: usize,
        padding: usize,
    ) -> candle_core::Result<Self> {
        if w_c_in != c_in {
            candle_core::bail!("conv2d: input has {c_in} channels but the weight expects {w_c_in}");
        }
        if kh != kw || kh == 0 {
            candle_core::bail!(
                "conv2d: only square non-empty kernels are supported, got {kh}x{kw}"
            );
        }
        if stride == 0 {
            candle_core::bail!("conv2d: stride must be at least 1");
        }
        if h + 2 * padding < kh || w + 2 * padding < kw {
            candle_core::bail!(
                "conv2d: kernel {kh}x{kw} is larger than the padded input {}x{}",
                h + 2 * padding,
                w + 2 * padding
            );
        }
        let out_h = (h + 2 * padding - kh) / stride + 1;
        let out_w = (w + 2 * padding - kw) / stride + 1;
        Ok(Self {
            batch,
            c_in,
            h,
            w,
            c_out,
            k: kh,
            stride,
            padding,
            out_h,
            out_w,
        })
    }

    /// Output pixels per image and channel.
    pub fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Input pixels per image and channel.
    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }

    /// Rows of the column matrix: one per (input channel, kernel row, kernel column).
    pub fn col_rows(&self) -> usize {
        self.c_in * self.k * self.k
    }

    /// A 1x1, stride-1, unpadded convolution reads the input image as its column matrix as is.
    pub fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.padding == 0
    }

    /// Width and float count of one input plane with its zero border, the plane [`im2col`]
    /// reads from and [`col2im`] sums into.
    fn padded_plane(&self) -> (usize, usize) {
        let width = self.w + 2 * self.padding;
        (width, width * (self.h + 2 * self.padding))
    }

    /// Where each input row starts inside the bordered plane.
    fn padded_row_starts(&self) -> impl Iterator<Item = usize> {
        let (width, p) = (self.padded_plane().0, self.padding);
        (0..self.h).map(move |r| (r + p) * width + p)
    }
}

/// Writes the column matrix of one image (`C_in*H*W` values) into `col`, whose rows are
/// `row_len` long, starting at column `col_offset`. `padded` is scratch (any contents).
///
/// Each channel is first copied into a zero-bordered plane, so that every output pixel of every
/// kernel offset reads inside it: the copy loops then have no bounds to clip and no padding to
/// fill. At the 48-64 px inputs this project trains on, the deep layers' planes are 2-12 pixels
/// wide, and the per-row clipping, `fill` and `memcpy` calls of a clipped copy cost more than the
/// copying itself (18 % of a 48 px training step went to im2col that way).
pub fn im2col(
    g: &ConvGeometry,
    image: &[f32],
    col: &mut [f32],
    row_len: usize,
    col_offset: usize,
    padded: &mut Vec<f32>,
) {
    if g.stride > 1 && g.k > MIN_REUSE_FOR_PHASES * g.stride {
        return im2col_strided(g, image, col, row_len, col_offset, padded);
    }
    let (k, s, ow_n) = (g.k, g.stride, g.out_w);
    let plane = g.out_plane();
    let (pw, padded_len) = g.padded_plane();
    if g.padding > 0 {
        // Borders stay zero: each channel overwrites the interior only.
        padded.clear();
        padded.resize(padded_len, 0.0);
    }
    for c in 0..g.c_in {
        let src_plane = &image[c * g.in_plane()..(c + 1) * g.in_plane()];
        let source: &[f32] = if g.padding > 0 {
            for (at, src_row) in g.padded_row_starts().zip(src_plane.chunks_exact(g.w)) {
                copy_short(&mut padded[at..at + g.w], src_row);
            }
            padded
        } else {
            src_plane
        };
        for kh in 0..k {
            for kw in 0..k {
                let row = (c * k + kh) * k + kw;
                let dst = &mut col[row * row_len + col_offset..row * row_len + col_offset + plane];
                for (oh, dst_row) in dst.chunks_exact_mut(ow_n).enumerate() {
                    let src_row = &source[(oh * s + kh) * pw + kw..];
                    if s == 1 {
                        copy_short(dst_row, &src_row[..ow_n]);
                    } else {
                        let src_row = &src_row[..(ow_n - 1) * s + 1];
                        for (j, d) in dst_row.iter_mut().enumerate() {
                            *d = src_row[j * s];
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] splits a strided convolution's planes into column phases ([`im2col_strided`])
/// when the kernel is wider than this many strides: measured with `cargo bench -p
/// face2exp-trainer --bench conv_algorithms` (64 px / batch 32, two runs, ms, before / after),
/// the 7x7/2 stem's forward went from 4.17-4.38 to 3.62-3.65 and its weight gradient from
/// 6.63-6.70 to 6.05-6.07, but the 3x3/2 convolutions of layers 2-4 (each input read about
/// 2.25 times, not 12) lost 5-20 % (layer2.0.conv1's forward 1.73-1.76 against 1.94).
const MIN_REUSE_FOR_PHASES: usize = 2;

/// [`im2col`] for a strided convolution with a wide kernel (ResNet's 7x7/2 stem). Each
/// channel's zero-bordered plane is stored with its columns split into `stride` phases (column
/// `j` at `j % stride`, index `j / stride`), so that the `k * k` copies of each output row,
/// which read every `stride`-th column, read contiguous runs of one phase: one strided pass
/// over the plane instead of `k * k` (49 for the stem).
fn im2col_strided(
    g: &ConvGeometry,
    image: &[f32],
    col: &mut [f32],
    row_len: usize,
    col_offset: usize,
    padded: &mut Vec<f32>,
) {
    let (k, s, p, ow_n) = (g.k, g.stride, g.padding, g.out_w);
    let plane = g.out_plane();
    let phase_w = g.padded_plane().0.div_ceil(s);
    let row_stride = s * phase_w;
    // Borders stay zero: each channel overwrites the interior only.
    padded.clear();
    padded.resize(row_stride * (g.h + 2 * p), 0.0);
    for c in 0..g.c_in {
        let src_plane = &image[c * g.in_plane()..(c + 1) * g.in_plane()];
        split_plane_into(padded, row_stride, src_plane, g.w, p, s);
        for kh in 0..k {
            for kw in 0..k {
                let row = (c * k + kh) * k + kw;
                let dst = &mut col[row * row_len + col_offset..row * row_len + col_offset + plane];
                let start = (kw % s) * phase_w + kw / s;
                for (oh, dst_row) in dst.chunks_exact_mut(ow_n).enumerate() {
                    let at = (oh * s + kh) * row_stride + start;
                    copy_short(dst_row, &padded[at..at + ow_n]);
                }
            }
        }
    }
}

/// Writes the plane `src` (rows of `w` values) into `plane` (rows of `pw`) at row and column
/// `offset`, each row's columns split into `phases` phases ([`split_row_into`]). Inlined, so
/// that the Winograd transforms' constant phase counts fold into its loops.
#[inline(always)]
pub(super) fn split_plane_into(
    plane: &mut [f32],
    pw: usize,
    src: &[f32],
    w: usize,
    offset: usize,
    phases: usize,
) {
    for (r, row) in src.chunks_exact(w).enumerate() {
        let at = (r + offset) * pw;
        split_row_into(&mut plane[at..at + pw], row, offset, phases);
    }
}

/// Writes `src` into the plane row `dst` starting at column `offset`, its columns split into
/// `phases` phases: column `j` goes to `dst[(j % phases) * (dst.len() / phases) + j / phases]`,
/// so that whoever reads every `phases`-th column (a strided convolution's im2col, Winograd's
/// column transforms, which read columns `m tj .. m tj + m + 2` of every tile with `m = phases`)
/// reads contiguous runs of one phase instead of strided values.
#[inline(always)]
fn split_row_into(dst: &mut [f32], src: &[f32], offset: usize, phases: usize) {
    let part = dst.len() / phases;
    for phase in 0..phases {
        // The first source value whose column falls in this phase, and where it lands.
        let skip = (phase + phases - offset % phases) % phases;
        if skip >= src.len() {
            continue;
        }
        let at = phase * part + (offset + skip) / phases;
        let out = &mut dst[at..(phase + 1) * part];
        for (d, s) in out.iter_mut().zip(src[skip..].iter().step_by(phases)) {
            *d = *s;
        }
    }
}

/// `dst.copy_from_slice(src)` for the few floats of one image row, in fixed-size pieces the
/// compiler turns into register moves: a plain loop is recognised as a copy and becomes a
/// `memcpy` call, whose fixed cost dominates at these lengths.
#[inline(always)]
pub(super) fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    let (mut dst, mut src) = (&mut dst[..n], &src[..n]);
    while dst.len() >= 8 {
        let (head, rest) = dst.split_at_mut(8);
        head.copy_from_slice(&src[..8]);
        (dst, src) = (rest, &src[8..]);
    }
    if dst.len() >= 4 {
        let (head, rest) = dst.split_at_mut(4);
        head.copy_from_slice(&src[..4]);
        (dst, src) = (rest, &src[4..]);
    }
    // At most three left: separate statements, so no loop to recognise.
    if let Some(d) = dst.get_mut(0) {
        *d = src[0];
    }
    if let Some(d) = dst.get_mut(1) {
        *d = src[1];
    }
    if let Some(d) = dst.get_mut(2) {
        *d = src[2];
    }
}

/// The adjoint of [`im2col`]: adds every entry of one image's column matrix back onto the input
/// pixel it was read from. `image` must be zeroed (or hold a gradient to add to). `padded` is
/// scratch (any contents): each channel accumulates into a zero-bordered plane, as [`im2col`]
/// reads from one, and only its interior is added to `image`.
pub fn col2im(
    g: &ConvGeometry,
    col: &[f32],
    row_len: usize,
    col_offset: usize,
    image: &mut [f32],
    padded: &mut Vec<f32>,
) {
    let (k, s, ow_n) = (g.k, g.stride, g.out_w);
    let plane = g.out_plane();
    let in_plane = g.in_plane();
    let (pw, padded_len) = g.padded_plane();
    if padded.len() < padded_len {
        padded.resize(padded_len, 0.0);
    }
    for c in 0..g.c_in {
        let dst_plane = &mut image[c * in_plane..(c + 1) * in_plane];
        let target: &mut [f32] = if g.padding > 0 {
            padded[..padded_len].fill(0.0);
            &mut padded[..padded_len]
        } else {
            dst_plane
        };
        for kh in 0..k {
            for kw in 0..k {
                let row = (c * k + kh) * k + kw;
                let src = &col[row * row_len + col_offset..row * row_len + col_offset + plane];
                for (oh, src_row) in src.chunks_exact(ow_n).enumerate() {
                    let dst_row = &mut target[(oh * s + kh) * pw + kw..];
                    if s == 1 {
                        for (d, x) in dst_row[..ow_n].iter_mut().zip(src_row) {
                            *d += *x;
                        }
                    } else {
                        let dst_row = &mut dst_row[..(ow_n - 1) * s + 1];
                        for (j, x) in src_row.iter().enumerate() {
                            dst_row[j * s] += *x;
                        }
                    }
                }
            }
        }
        if g.padding > 0 {
            let dst_plane = &mut image[c * in_plane..(c + 1) * in_plane];
            for (at, dst_row) in g.padded_row_starts().zip(dst_plane.chunks_exact_mut(g.w)) {
                for (d, x) in dst_row.iter_mut().zip(&padded[at..at + g.w]) {
                    *d += *x;
                }
            }
        }
    }
}

/// A row-major matrix view: element (r, c) lives at `data[r*row_stride + c*col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `dst (m x n) = [dst +] lhs (m x k) * rhs (k x n)` through the `gemm` crate, with `dst`
/// row-major and dense (row stride `n`). Accumulates into `dst` when `accumulate` is set.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    parallelism: Parallelism,
) {
    sgemm_rows(m, n, k, dst, n, accumulate, lhs, rhs, parallelism);
}

/// [`sgemm`] into a row-major `dst` whose rows are `dst_row_stride >= n` floats apart: a block
/// of columns of a wider matrix.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_rows(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_row_stride >= n, "gemm destination rows overlap");
    assert!(
        dst.len() > (m - 1) * dst_row_stride + n - 1,
        "gemm destination too small"
    );
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let last = |v: &MatRef<'_>, rows: usize, cols: usize| {
        (rows - 1) * v.row_stride + (cols - 1) * v.col_stride
    };
    assert!(last(&lhs, m, k) < lhs.data.len(), "gemm lhs out of bounds");
    assert!(last(&rhs, k, n) < rhs.data.len(), "gemm rhs out of bounds");
    // SAFETY: the asserts above keep every element the kernel touches inside the slices, the
    // destination is borrowed mutably and cannot alias the (shared) operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// im2col by the definition, one element at a time.
    fn im2col_reference(g: &ConvGeometry, image: &[f32]) -> Vec<f32> {
        let p = g.out_plane();
        let mut col = vec![0.0; g.col_rows() * p];
        for c in 0..g.c_in {
            for kh in 0..g.k {
                for kw in 0..g.k {
                    for oh in 0..g.out_h {
                        for ow in 0..g.out_w {
                            let ih = (oh * g.stride + kh) as isize - g.padding as isize;
                            let iw = (ow * g.stride + kw) as isize - g.padding as isize;
                            if ih >= 0 && iw >= 0 && (ih as usize) < g.h && (iw as usize) < g.w {
                                col[((c * g.k + kh) * g.k + kw) * p + oh * g.out_w + ow] =
                                    image[c * g.in_plane() + ih as usize * g.w + iw as usize];
                            }
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_and_col2im_are_adjoint_and_match_the_definition() -> candle_core::Result<()> {
        let cases = [
            (2, 5, 7, 3, 1, 1),
            (1, 6, 6, 3, 2, 1),
            (3, 9, 8, 7, 2, 3),
            (2, 5, 5, 1, 2, 0),
            (1, 4, 3, 1, 1, 0),
            (1, 2, 2, 3, 1, 1),
            (1, 3, 3, 3, 3, 2),
            (2, 16, 16, 3, 1, 1),
            (1, 5, 9, 5, 1, 2),
            (3, 6, 4, 3, 1, 1),
            (2, 1, 6, 3, 1, 1),
            (1, 4, 1, 5, 1, 2),
        ];
        for &(c, h, w, k, s, p) in &cases {
            let g = ConvGeometry::new((1, c, h, w), (1, c, k, k), s, p)?;
            let image: Vec<f32> = (0..c * h * w).map(|i| (i as f32 * 0.37).sin()).collect();
            // Leave one column of garbage on both sides to check the offset handling.
            let plane = g.out_plane();
            let row_len = plane + 2;
            let mut col = vec![f32::NAN; g.col_rows() * row_len];
            let mut padded = vec![f32::NAN; 7];
            im2col(&g, &image, &mut col, row_len, 1, &mut padded);
            let expect = im2col_reference(&g, &image);
            for r in 0..g.col_rows() {
                assert_eq!(
                    &col[r * row_len + 1..r * row_len + 1 + plane],
                    &expect[r * plane..(r + 1) * plane]
                );
            }
            // <im2col(x), y> == <x, col2im(y)> for every y.
            let y: Vec<f32> = (0..col.len()).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut back = vec![0.0; image.len()];
            col2im(&g, &y, row_len, 1, &mut back, &mut padded);
            let lhs: f64 = (0..g.col_rows())
                .flat_map(|r| (0..plane).map(move |j| (r, j)))
                .map(|(r, j)| expect[r * plane + j] as f64 * y[r * row_len + 1 + j] as f64)
                .sum();
            let rhs: f64 = image
                .iter()
                .zip(&back)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                "{lhs} vs {rhs} for {:?}",
                g
            );
        }
        Ok(())
    }

    #[test]
    fn geometry_rejects_mismatched_shapes_with_a_message() {
        let err = ConvGeometry::new((1, 3, 8, 8), (4, 2, 3, 3), 1, 1).unwrap_err();
        assert!(err.to_string().contains("3 channels"), "{err}");
        let err = ConvGeometry::new((1, 3, 2, 2), (4, 3, 7, 7), 1, 1).unwrap_err();
        assert!(
            err.to_string().contains("larger than the padded input"),
            "{err}"
        );
        let err = ConvGeometry::new((1, 3, 8, 8), (4, 3, 3, 3), 0, 1).unwrap_err();
        assert!(err.to_string().contains("stride"), "{err}");
    }
}
