//! The network's heavy operations behind one facade, so the model code never cares which
//! implementation runs: candle's own kernels (always on CUDA, and for dtypes other than f32), or
//! this crate's fast CPU kernels (candle custom ops with their own backward).
//!
//! Every function here is differentiable through candle's autograd.

mod algorithm;
mod batch_norm;
mod chunks;
mod conv;
mod im2col;
mod partials;
mod pool;
mod relu;
mod taps;
mod update;
mod winograd;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Result, Tensor, D};

pub use algorithm::{set_conv_algorithm, ConvAlgorithm};
pub use conv::{conv2d_forward, conv2d_input_grad, conv2d_weight_grad, Conv2dOp};
pub use im2col::ConvGeometry;
pub use pool::MaxPool3x3S2P1;
pub use relu::AddRelu;
pub use update::EmaUpdate;
pub(crate) use update::SgdStep;

static FAST_CPU_KERNELS: AtomicBool = AtomicBool::new(true);

/// Switches the fast CPU kernels on (the default) or off for the whole process, so benchmarks
/// and bug hunts can compare them with candle's own kernels on the same model.
pub fn set_fast_cpu_kernels(enabled: bool) {
    FAST_CPU_KERNELS.store(enabled, Ordering::Relaxed);
}

/// How many times candle's element-wise worker threads poll for more work before they park,
/// unless `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set. With candle's default (25,000) an idle worker
/// keeps polling through the convolutions that run on rayon's threads in between, taking a core
/// from them: on the 2-core development machine the polling was 5 % of a training step's CPU
/// time, and 1,000 made the step about 5 % faster (docs/BENCHMARKS_HISTORY.md, "Training kernels").
pub const CANDLE_SPIN_LIMIT: u32 = 1_000;

/// Tunes the process for CPU training; call it first thing in `main`, before any thread exists
/// (it sets an environment variable, and candle reads it when its worker threads start), as the
/// `face2exp` binary and the benchmarks do.
///
/// - [`CANDLE_SPIN_LIMIT`], unless the user set `CANDLE_BARRIER_POOL_SPIN_LIMIT`.
/// - With glibc, unless the user set any `MALLOC_*_` variable it reads: freed memory stays in
///   the process (no trimming; the heap grows in 256 MiB steps; blocks up to 32 MiB come from
///   the heap, not `mmap`). A training step frees and allocates the same few hundred MiB of
///   tensors every time; glibc's defaults hand much of it back to the kernel, and the step then
///   spends ~5 % of its time zeroing and faulting the same pages in again. This made 64 px /
///   batch 64 steps ~7 % and 112 px / batch 32 steps ~14 % faster for 14-40 MiB more peak RSS
///   (docs/BENCHMARKS_HISTORY.md).
pub fn configure_cpu_runtime() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        std::env::set_var(SPIN, CANDLE_SPIN_LIMIT.to_string());
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_tuned = [
            "MALLOC_TOP_PAD_",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_MMAP_THRESHOLD_",
        ]
        .iter()
        .any(|var| std::env::var_os(var).is_some());
        if !user_tuned {
            // SAFETY: mallopt only changes allocator parameters; glibc serialises it with
            // allocation, and no other thread exists yet.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
                libc::mallopt(libc::M_TOP_PAD, 256 << 20);
            }
        }
    }
}

/// Runs `work` on a thread of rayon's pool and waits for it: call it around the training or
/// evaluation loop, as the `face2exp` binary and the benchmarks do. The CPU kernels split every
/// layer over the pool. Called from outside it, each of the hundreds of parallel sections in a
/// step injects a job, wakes a worker and puts the calling thread to sleep until the section
/// ends; from inside, a section starts on the calling worker and the others steal from it. A
/// batch-1 forward pass at 112 px took 13.3-13.9 ms from the main thread and 10.9-11.4 ms from
/// inside the pool (train_step bench, alternating, 2 threads).
pub fn on_compute_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    // `scope` runs its closure on a worker of the global pool when called from outside it.
    rayon::scope(|_| work())
}

/// Whether [`set_fast_cpu_kernels`] left the fast CPU kernels on.
pub fn fast_cpu_kernels() -> bool {
    FAST_CPU_KERNELS.load(Ordering::Relaxed)
}

/// Whether the fast CPU kernels handle these tensors: f32 on the CPU (CUDA keeps candle's).
fn use_cpu_kernels(tensors: &[&Tensor]) -> bool {
    fast_cpu_kernels()
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Whether the in-place update ops (the optimizer's SGD step, [`EmaUpdate`]) handle
/// these tensors: where the fast CPU kernels do, and contiguous.
pub fn in_place_update_applies(tensors: &[&Tensor]) -> bool {
    use_cpu_kernels(tensors) && tensors.iter().all(|t| t.is_contiguous())
}

/// 2-D convolution without bias, `groups = 1`, square kernel, dilation 1.
/// `x`: (N, C_in, H, W), `w`: (C_out, C_in, K, K).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if use_cpu_kernels(&[x, w]) {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, Conv2dOp { stride, padding })
    } else {
        x.conv2d(w, padding, stride, 1, 1)
    }
}

/// ResNet's stem pooling: max pool, kernel 3, stride 2, padding 1 (padding never wins the max).
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(&[x]) {
        x.contiguous()?.apply_op1(MaxPool3x3S2P1)
    } else {
        max_pool_3x3_s2_p1_candle(x)
    }
}

/// BatchNorm2d in training mode: normalises with the batch's per-channel mean and biased
/// variance. `x`: (N, C, H, W), `weight`/`bias`: (C,). Returns `(y, batch_mean, batch_var)`,
/// the statistics detached (C,) so the caller can update its running estimates. With `relu`,
/// `y` is `relu(BatchNorm(x))` (fused into the same op on the CPU).
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    if use_cpu_kernels(&[x, weight, bias]) {
        batch_norm::batch_norm_train_cpu(x, weight, bias, eps, relu)
    } else {
        let (y, mean, var) = batch_norm_train_candle(x, weight, bias, eps)?;
        Ok((if relu { y.relu()? } else { y }, mean, var))
    }
}

/// `relu(a + b)` for same-shape tensors, the end of a residual block (one fused op on the CPU).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if use_cpu_kernels(&[a, b]) {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        (a + b)?.relu()
    }
}

/// The same from candle's ops (any device and float dtype).
fn batch_norm_train_candle(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = x.dim(1)?;
    let per_channel = (1, c, 1, 1);
    let mean = x.mean_keepdim((0, 2, 3))?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
    let scale = (&var + eps)?
        .sqrt()?
        .recip()?
        .broadcast_mul(&weight.reshape(per_channel)?)?;
    let y = centred
        .broadcast_mul(&scale)?
        .broadcast_add(&bias.reshape(per_channel)?)?;
    Ok((y, mean.detach().flatten_all()?, var.detach().flatten_all()?))
}

/// Global average pool: (N, C, H, W) -> (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(D::Minus1)
}

/// The portable max pool: candle's `max_pool2d` has no backward when kernel != stride, so this
/// is the maximum of nine strided views of the padded input, which autograd handles.
fn max_pool_3x3_s2_p1_candle(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let out_h = (h - 1) / 2 + 1;
    let out_w = (w - 1) / 2 + 1;
    // Pad one row/column in front and enough behind that every view of length 2*out is in range.
    let padded = pad_with_value(x, 1, 2 * out_h + 1 - h, 1, 2 * out_w + 1 - w, -1e30)?;
    let mut result: Option<Tensor> = None;
    for kh in 0..3 {
        for kw in 0..3 {
            let view = padded
                .narrow(2, kh, 2 * out_h)?
                .narrow(3, kw, 2 * out_w)?
                .reshape((n, c, out_h, 2, out_w, 2))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((n, c, out_h, out_w))?;
            result = Some(match result {
                None => view,
                Some(acc) => acc.maximum(&view)?,
            });
        }
    }
    result.ok_or_else(|| candle_core::Error::Msg("empty pooling window".into()))
}

fn pad_with_value(
    x: &Tensor,
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
    value: f64,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let fill = |rows: usize, cols: usize| {
        Tensor::full(value as f32, (n, c, rows, cols), x.device())?.to_dtype(x.dtype())
    };
    let mut parts = Vec::with_capacity(3);
    if top > 0 {
        parts.push(fill(top, w)?);
    }
    parts.push(x.clone());
    if bottom > 0 {
        parts.push(fill(bottom, w)?);
    }
    let x = Tensor::cat(&parts, 2)?;
    let h = h + top + bottom;
    let mut parts = Vec::with_capacity(3);
    if left > 0 {
        parts.push(fill(h, left)?);
    }
    parts.push(x);
    if right > 0 {
        parts.push(fill(h, right)?);
    }
    Tensor::cat(&parts, 3)
}

#[cfg(test)]
mod tests;
