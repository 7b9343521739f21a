//! Winograd against the im2col path (itself checked against candle and finite differences in
//! `ops/tests.rs`), on every geometry it takes: odd and even sizes (tiles overhanging the
//! output), padding 0, 1 and 2, batch 1, channel counts that are not multiples of anything, and
//! batches large enough to use several chunks per thread group.

use super::super::conv::kernel_checks::{assert_matches_im2col, assert_matches_im2col_within};
use super::*;

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

#[test]
fn winograd_matches_im2col_forward_and_both_gradients() {
    for (seed, &(batch, c_in, h, w, c_out, padding)) in CASES.iter().enumerate() {
        let g = ConvGeometry::new((batch, c_in, h, w), (c_out, c_in, 3, 3), 1, padding).unwrap();
        assert!(applies(&g), "{g:?}");
        assert_matches_im2col(&g, 11 + seed as u64, [forward, input_grad, weight_grad]);
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

fn forward4(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    forward_with(TileSize::Four, g, x, w)
}

fn input_grad4(g: &ConvGeometry, grad_y: &[f32], w: &[f32]) -> Vec<f32> {
    input_grad_with(TileSize::Four, g, grad_y, w)
}

fn weight_grad4(g: &ConvGeometry, x: &[f32], grad_y: &[f32]) -> Vec<f32> {
    weight_grad_with(TileSize::Four, g, x, grad_y)
}

/// 4x4 tiles round about ten times as coarsely as 2x2 ones (`f4.rs`): 5e-6 to 1.5e-5 of the
/// largest output on 64-512 channels, where 2x2 tiles stay under 1e-6.
const TOLERANCE_4X4: f32 = 3e-5;

#[test]
fn winograd_4x4_tiles_match_im2col_forward_and_both_gradients() {
    let wide = [(2, 256, 12, 12, 256, 1)];
    for (seed, &(batch, c_in, h, w, c_out, padding)) in CASES.iter().chain(&wide).enumerate() {
        let g = ConvGeometry::new((batch, c_in, h, w), (c_out, c_in, 3, 3), 1, padding).unwrap();
        let passes = [forward4, input_grad4, weight_grad4];
        assert_matches_im2col_within(&g, 31 + seed as u64, passes, TOLERANCE_4X4);
    }
}
