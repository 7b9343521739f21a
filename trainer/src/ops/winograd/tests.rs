//! Winograd against the im2col path (itself checked against candle and finite differences in
//! `ops/tests.rs`), on every geometry it takes: odd and even sizes (tiles overhanging the
//! output), padding 0, 1 and 2, batch 1, channel counts that are not multiples of anything, and
//! batches large enough to use several chunks per thread group.

use super::super::conv::{im2col_forward, im2col_input_grad, im2col_weight_grad};
use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// (batch, c_in, h, w, c_out, padding).
const CASES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (1, 1, 3, 3, 1, 0),
    (1, 3, 5, 4, 2, 1),
    (2, 5, 7, 9, 6, 1),
    (3, 4, 6, 6, 7, 0),
    (2, 3, 4, 5, 5, 2),
    (1, 2, 1, 1, 3, 1),
    (4, 16, 2, 2, 8, 1),
    (5, 7, 12, 11, 9, 1),
    // 45 tiles per image: several chunks of 12 images in each thread group.
    (40, 3, 9, 18, 2, 1),
    // ResNet-sized planes and channel counts.
    (2, 64, 48, 48, 64, 1),
    (3, 32, 24, 24, 64, 1),
];

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Largest |a - b| relative to the largest |b| (at least 1).
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn winograd_matches_im2col_forward_and_both_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for &(batch, c_in, h, w, c_out, padding) in CASES {
        let g = ConvGeometry::new((batch, c_in, h, w), (c_out, c_in, 3, 3), 1, padding).unwrap();
        assert!(applies(&g), "{g:?}");
        let x = random(&mut rng, batch * c_in * h * w);
        let weight = random(&mut rng, c_out * c_in * 9);
        let grad_y = random(&mut rng, batch * c_out * g.out_plane());
        let checks = [
            (
                "forward",
                forward(&g, &x, &weight),
                im2col_forward(&g, &x, &weight),
            ),
            (
                "input gradient",
                input_grad(&g, &grad_y, &weight),
                im2col_input_grad(&g, &grad_y, &weight),
            ),
            (
                "weight gradient",
                weight_grad(&g, &x, &grad_y),
                im2col_weight_grad(&g, &x, &grad_y),
            ),
        ];
        for (what, winograd, reference) in checks {
            let error = relative_error(&winograd, &reference);
            assert!(error < 1e-5, "{what} of {g:?}: relative error {error}");
        }
    }
}

#[test]
fn winograd_takes_only_3x3_stride_1_with_small_padding() {
    let geometry = |k, stride, padding| {
        ConvGeometry::new((1, 2, 8, 8), (2, 2, k, k), stride, padding).unwrap()
    };
    assert!(applies(&geometry(3, 1, 1)));
    assert!(!applies(&geometry(3, 2, 1)));
    assert!(!applies(&geometry(1, 1, 0)));
    assert!(!applies(&geometry(7, 1, 3)));
    assert!(!applies(&geometry(3, 1, 3)));
}

/// One filter, one channel, worked by hand: on the ramp x[r][c] = 4r + c, a kernel that takes
/// the centre tap minus the top-left one gives (4(r+1) + c + 1) - (4r + c) = 5 at all four
/// outputs, exactly (every intermediate is a small integer or half-integer).
#[test]
fn winograd_forward_worked_example() {
    let g = ConvGeometry::new((1, 1, 4, 4), (1, 1, 3, 3), 1, 0).unwrap();
    let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let mut weight = vec![0f32; 9];
    weight[4] = 1.0;
    weight[0] = -1.0;
    assert_eq!(forward(&g, &x, &weight), vec![5.0; 4]);
}
