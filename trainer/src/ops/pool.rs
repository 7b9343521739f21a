//! ResNet's stem max pool (kernel 3, stride 2, padding 1) on the CPU, with a real backward:
//! each output's gradient goes to the first input in its window that holds the maximum
//! (row-major scan order, as PyTorch does), found again from the input and the forward's output
//! instead of stored.

use super::chunks::par_zeroed;
use super::conv::contiguous_f32;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

const KERNEL: usize = 3;
const STRIDE: usize = 2;
const PADDING: usize = 1;

thread_local! {
    /// [`pool_plane`]'s row buffer, kept by each thread between planes and calls.
    static ROW_MAX: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Output size of the pool along one axis.
pub fn pooled_len(len: usize) -> usize {
    (len + 2 * PADDING - KERNEL) / STRIDE + 1
}

/// The larger of two values, NaN if either is (as PyTorch's max pool propagates NaN): one
/// compare and one select, so the row loops below vectorise.
#[inline(always)]
fn nan_max(a: f32, b: f32) -> f32 {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

/// The input rows (or columns) output row `o`'s window covers, clipped to `len`.
#[inline(always)]
fn window(o: usize, len: usize) -> std::ops::Range<usize> {
    (o * STRIDE).saturating_sub(PADDING)..(o * STRIDE + KERNEL - PADDING).min(len)
}

/// Max-pools one (h, w) plane into `out` (oh, ow), separably: each output row first takes the
/// element-wise maximum of its (up to) three input rows into `row_max` (whole rows, which the
/// compiler vectorises), then each output the maximum of three neighbours of that. A direct
/// loop over each 3x3 window, tracking the first maximum with branches, took 5 % of a 48 px
/// training step.
fn pool_plane(plane: &[f32], h: usize, w: usize, out: &mut [f32], row_max: &mut Vec<f32>) {
    let ow = pooled_len(w);
    row_max.clear();
    row_max.resize(w, 0.0);
    for (i, out_row) in out.chunks_exact_mut(ow).enumerate() {
        let rows = window(i, h);
        row_max.copy_from_slice(&plane[rows.start * w..(rows.start + 1) * w]);
        for r in rows.start + 1..rows.end {
            for (m, v) in row_max.iter_mut().zip(&plane[r * w..(r + 1) * w]) {
                *m = nan_max(*m, *v);
            }
        }
        for (j, o) in out_row.iter_mut().enumerate() {
            let cols = window(j, w);
            *o = row_max[cols.clone()]
                .iter()
                .fold(row_max[cols.start], |m, v| nan_max(m, *v));
        }
    }
}

/// Index (within the plane) of the first input of output (oh, ow)'s window, in row-major
/// order, that holds the window's maximum `max` (the forward pass's output, so only equality is
/// tested; a NaN maximum matches the first NaN). This is where PyTorch sends the gradient too.
#[inline]
fn first_argmax(plane: &[f32], w: usize, (oh, ow): (usize, usize), h: usize, max: f32) -> usize {
    let cols = window(ow, w);
    for r in window(oh, h) {
        for c in cols.clone() {
            let v = plane[r * w + c];
            if v == max || (max.is_nan() && v.is_nan()) {
                return r * w + c;
            }
        }
    }
    unreachable!("a window's maximum is one of its inputs")
}

/// Forward op: (N, C, H, W) -> (N, C, OH, OW).
#[derive(Debug, Clone, Copy)]
pub struct MaxPool3x3S2P1;

impl CustomOp1 for MaxPool3x3S2P1 {
    fn name(&self) -> &'static str {
        "face2exp-max-pool-3x3-s2-p1"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        if h == 0 || w == 0 {
            candle_core::bail!("max pool: empty input plane {h}x{w}");
        }
        let x = contiguous_f32("max pool input", storage, layout)?;
        let (oh, ow) = (pooled_len(h), pooled_len(w));
        let y = par_zeroed(n * c * oh * ow, oh * ow, |p, out| {
            ROW_MAX.with_borrow_mut(|row_max| {
                pool_plane(&x[p * h * w..(p + 1) * h * w], h, w, out, row_max)
            })
        });
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(
            &y.contiguous()?,
            &grad_y.contiguous()?,
            &MaxPoolGrad,
        )?))
    }
}

/// `x.apply_op3_no_bwd(y, grad_y, MaxPoolGrad)` -> dL/dx, `y` the forward pass's output.
#[derive(Debug, Clone, Copy)]
struct MaxPoolGrad;

impl CustomOp3 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "face2exp-max-pool-3x3-s2-p1-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (oh, ow) = (pooled_len(h), pooled_len(w));
        for (what, layout) in [("output", l2), ("gradient", l3)] {
            if layout.shape().dims4()? != (n, c, oh, ow) {
                candle_core::bail!(
                    "max pool backward: {what} shape {:?} does not match input {:?}",
                    layout.shape(),
                    l1.shape()
                );
            }
        }
        let x = contiguous_f32("max pool input", s1, l1)?;
        let y = contiguous_f32("max pool output", s2, l2)?;
        let grad_y = contiguous_f32("max pool output gradient", s3, l3)?;
        let grad_x = par_zeroed(n * c * h * w, h * w, |p, gx| {
            let plane = &x[p * h * w..(p + 1) * h * w];
            let (maxima, gy) = (&y[p * oh * ow..], &grad_y[p * oh * ow..]);
            for i in 0..oh {
                for j in 0..ow {
                    let at = first_argmax(plane, w, (i, j), h, maxima[i * ow + j]);
                    gx[at] += gy[i * ow + j];
                }
            }
        });
        Ok((CpuStorage::F32(grad_x), Shape::from((n, c, h, w))))
    }
}
