//! CPU kernels for convolutional networks, shared by the expression classifier and the face
//! detector.
//!
//! # Layout
//! Every activation tensor is one image in **CHW** order (NCHW with N = 1): channel planes of
//! `height * width` floats, rows contiguous. CHW was chosen because a convolution then *is* a
//! matrix product `out[C_out, H*W] = W[C_out, C_in*kh*kw] x cols[C_in*kh*kw, H*W]` whose result
//! is already the next layer's input (no transposes), a 1x1 stride-1 convolution needs no
//! im2col at all (the input planes are the right-hand matrix), and depthwise convolutions,
//! pooling, upsampling and channel concatenation walk whole contiguous planes. Weights use
//! PyTorch's OIHW order on the way in and are packed once, at construction, for the GEMM.
//!
//! # Allocation
//! Constructors ([`Conv2d::new`], [`Linear::new`], [`gemm::PackedA::new`]) allocate; every
//! forward function writes into caller-provided slices and scratch and never allocates, so a
//! caller that sizes its buffers once runs allocation-free.
//!
//! # Threads
//! Kernels that can split work take a [`Parallel`] executor: [`Sequential`] runs on the calling
//! thread; with the `std` feature [`crate::WorkerPool`] runs on a persistent pool.
//!
//! # SIMD
//! The GEMM micro-kernel has an AVX2+FMA(+F16C) version chosen at run time (with `std`; at
//! compile time from `target_feature` without it) and a portable version the compiler
//! vectorises for any other target. [`gemm::simd_name`] tells which one runs. The im2col
//! packing has an AVX2 version too; F16C widens half-precision weights
//! ([`crate::Model::store_late_weights_as_f16`]).

pub mod conv;
pub mod gemm;
mod im2col;
mod implicit;
mod microkernel;
mod narrow;
pub mod ops;

pub use conv::{fold_batch_norm, Conv2d, Conv2dParams, ConvPath};
pub use gemm::{PackedA, PACK_SCRATCH_LEN};
pub use ops::{
    add, add_in_place, avg_pool2d, concat_channels, global_avg_pool, linear_forward, max_pool2d,
    pool_output_size, softmax, upsample_nearest, upsample_nearest2x, Linear,
};

use core::fmt;

/// Element-wise function applied after bias (and residual) in a fused kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// Identity.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x >= 0`, `slope * x` otherwise (RetinaFace uses slope 0.1 in its SSH/FPN).
    LeakyRelu(f32),
}

impl Activation {
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => {
                if x > 0.0 {
                    x
                } else {
                    0.0
                }
            }
            Activation::LeakyRelu(slope) => {
                if x >= 0.0 {
                    x
                } else {
                    x * slope
                }
            }
        }
    }
}

/// Runs independent tasks, possibly on several threads.
///
/// `run(tasks, f)` calls `f(task, worker)` once for every `task in 0..tasks` and returns when
/// all calls have returned. `worker < threads()` identifies the thread, so a task may use the
/// scratch slot of its worker: two calls with the same `worker` never overlap.
pub trait Parallel: Sync {
    fn threads(&self) -> usize;
    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync));
}

/// Runs every task on the calling thread, in order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequential;

impl Parallel for Sequential {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        for task in 0..tasks {
            f(task, 0);
        }
    }
}

/// A kernel was configured or called with inconsistent sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// A parameter is out of range (zero channels, groups not dividing channels, ...).
    InvalidParams(&'static str),
    /// A slice has the wrong length.
    Length {
        what: &'static str,
        expected: usize,
        found: usize,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::InvalidParams(what) => write!(f, "invalid kernel parameters: {what}"),
            KernelError::Length {
                what,
                expected,
                found,
            } => write!(f, "{what}: expected {expected} values, found {found}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for KernelError {}

pub(crate) fn check_len(
    what: &'static str,
    slice_len: usize,
    expected: usize,
) -> Result<(), KernelError> {
    if slice_len < expected {
        Err(KernelError::Length {
            what,
            expected,
            found: slice_len,
        })
    } else {
        Ok(())
    }
}
