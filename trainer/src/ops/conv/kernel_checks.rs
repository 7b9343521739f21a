//! The check the alternative convolution kernels' tests share: a kernel's three passes against
//! the im2col path (itself checked against candle and finite differences in `ops/tests.rs`) on
//! random operands.

use super::{im2col_forward, im2col_input_grad, im2col_weight_grad};
use crate::ops::ConvGeometry;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One pass of a kernel: (geometry, first operand, second operand) -> result, in the argument
/// order of `conv2d_forward`, `conv2d_input_grad` and `conv2d_weight_grad`.
pub(crate) type PassFn = fn(&ConvGeometry, &[f32], &[f32]) -> Vec<f32>;

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Largest |a - b| relative to the largest |b| (at least 1).
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Asserts that `forward`, `input_grad` and `weight_grad` agree with im2col's within a
/// relative error of 1e-5 on random operands of `g`.
pub(crate) fn assert_matches_im2col(g: &ConvGeometry, seed: u64, passes: [PassFn; 3]) {
    assert_matches_im2col_within(g, seed, passes, 1e-5);
}

/// [`assert_matches_im2col`] within the given relative error.
pub(crate) fn assert_matches_im2col_within(
    g: &ConvGeometry,
    seed: u64,
    [forward, input_grad, weight_grad]: [PassFn; 3],
    tolerance: f32,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = random(&mut rng, g.batch * g.c_in * g.in_plane());
    let weight = random(&mut rng, g.c_out * g.c_in * g.k * g.k);
    let grad_y = random(&mut rng, g.batch * g.c_out * g.out_plane());
    let checks = [
        (
            "forward",
            forward(g, &x, &weight),
            im2col_forward(g, &x, &weight),
        ),
        (
            "input gradient",
            input_grad(g, &grad_y, &weight),
            im2col_input_grad(g, &grad_y, &weight),
        ),
        (
            "weight gradient",
            weight_grad(g, &x, &grad_y),
            im2col_weight_grad(g, &x, &grad_y),
        ),
    ];
    for (what, kernel, reference) in checks {
        let error = relative_error(&kernel, &reference);
        assert!(error < tolerance, "{what} of {g:?}: relative error {error}");
    }
}
