//! Which kernel computes each convolution, process-wide: a switch for benchmarks (A/B in one
//! process) and bug hunts. Every kernel computes the same convolution; they differ in speed
//! and rounding only.

use std::sync::atomic::{AtomicU8, Ordering};

/// The convolution kernels' selection rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvAlgorithm {
    /// im2col for every convolution.
    Im2col,
    /// Each kernel where it pays (the default): Winograd on 3x3 stride-1 planes of 4x4 and up
    /// with enough tiles (`winograd.rs`; 4x4 output tiles on planes of 12x12 and up whose sides
    /// are multiples of 4, else 2x2), else per-tap GEMMs on small bordered planes (`taps.rs`),
    /// else im2col.
    Auto,
    /// Winograd with 2x2 output tiles wherever it applies, even where it is slower, im2col
    /// elsewhere: for benchmarks.
    Winograd,
    /// Winograd with 4x4 output tiles wherever it applies, even where it is slower, im2col
    /// elsewhere: for benchmarks.
    Winograd4,
    /// `auto` without the per-tap GEMMs (the default before them): for A/B benchmarks.
    AutoNoTaps,
    /// Per-tap GEMMs wherever they apply (kernels larger than 1x1), even where they are
    /// slower, im2col elsewhere: for benchmarks.
    Taps,
}

static ALGORITHM: AtomicU8 = AtomicU8::new(ConvAlgorithm::Auto as u8);

/// Sets the convolution algorithm for the whole process; [`ConvAlgorithm::Auto`] is the
/// default.
pub fn set_conv_algorithm(algorithm: ConvAlgorithm) {
    ALGORITHM.store(algorithm as u8, Ordering::Relaxed);
}

pub(super) fn conv_algorithm() -> ConvAlgorithm {
    match ALGORITHM.load(Ordering::Relaxed) {
        x if x == ConvAlgorithm::Im2col as u8 => ConvAlgorithm::Im2col,
        x if x == ConvAlgorithm::Winograd as u8 => ConvAlgorithm::Winograd,
        x if x == ConvAlgorithm::Winograd4 as u8 => ConvAlgorithm::Winograd4,
        x if x == ConvAlgorithm::Taps as u8 => ConvAlgorithm::Taps,
        x if x == ConvAlgorithm::AutoNoTaps as u8 => ConvAlgorithm::AutoNoTaps,
        _ => ConvAlgorithm::Auto,
    }
}

/// The pass of a convolution a kernel computes: the kernels pay off at different sizes in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Forward,
    InputGrad,
    WeightGrad,
}
