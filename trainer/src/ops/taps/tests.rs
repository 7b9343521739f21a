//! Per-tap GEMMs against the im2col path (itself checked against candle and finite differences
//! in `ops/tests.rs`): every kernel size, stride and padding, planes from 1x1 up, taps whose
//! rectangles are empty, batch 1, odd channel counts and batches with several chunks per thread
//! group; and the rectangles and useful fractions worked by hand.

use super::super::conv::kernel_checks::assert_matches_im2col;
use super::*;

/// (batch, c_in, h, w, c_out, k, stride, padding).
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: &[Case] = &[
    // ResNet-18's small planes: layer4 at 48-64 px (2x2), layer3 at 48 px (3x3), at 64 px (4x4).
    (4, 16, 2, 2, 8, 3, 1, 1),
    (3, 8, 3, 3, 5, 3, 1, 1),
    (2, 6, 4, 4, 7, 3, 1, 1),
    // Stride 2 into them (layer4.0.conv1 at 48 px: 3x3 -> 2x2).
    (3, 5, 3, 3, 4, 3, 2, 1),
    (2, 4, 4, 5, 3, 3, 2, 1),
    // A 1x1 plane (the centre tap only) and planes smaller than the kernel with wide padding,
    // where whole taps read nothing but border.
    (2, 3, 1, 1, 2, 3, 1, 1),
    (1, 2, 2, 3, 3, 5, 1, 2),
    (2, 3, 2, 2, 2, 7, 2, 3),
    (1, 2, 3, 2, 2, 3, 1, 2),
    // No padding: every tap covers every output.
    (2, 3, 5, 6, 4, 3, 1, 0),
    // The 7x7/2 stem on an odd size, 2x2 kernels.
    (2, 3, 11, 9, 4, 7, 2, 3),
    (3, 2, 5, 5, 3, 2, 2, 1),
    // layer3 at 112 px (7x7), which taps take from 256 channels on.
    (3, 8, 7, 7, 6, 3, 1, 1),
    // 10x10 outputs: several chunks of 5 images in each thread group.
    (24, 3, 10, 10, 4, 3, 1, 1),
    // Batch 1 with ResNet channel counts.
    (1, 64, 2, 2, 64, 3, 1, 1),
    // 128 columns per tap and image: the tap-major weight copy whatever the thread count.
    (3, 4, 12, 12, 5, 3, 1, 1),
];

/// The cases above read the weights both ways ([`MAX_MEAN_TAP_COLUMNS_IN_PLACE`]): in place
/// on layer4's 2x2 planes at batch 1, from the tap-major copy on a 12x12 plane.
#[test]
fn taps_cases_cover_both_weight_layouts() {
    let columns = |dims, c| {
        let g = ConvGeometry::new(dims, (c, dims.1, 3, 3), 1, 1).unwrap();
        mean_tap_columns(&g, &taps(&g))
    };
    assert!(columns((1, 64, 2, 2), 64) < MAX_MEAN_TAP_COLUMNS_IN_PLACE);
    assert!(columns((3, 4, 12, 12), 5) >= MAX_MEAN_TAP_COLUMNS_IN_PLACE);
}

#[test]
fn taps_match_im2col_forward_and_both_gradients() {
    for (seed, &(batch, c_in, h, w, c_out, k, stride, padding)) in CASES.iter().enumerate() {
        let g =
            ConvGeometry::new((batch, c_in, h, w), (c_out, c_in, k, k), stride, padding).unwrap();
        assert!(applies(&g), "{g:?}");
        assert_matches_im2col(&g, 13 + seed as u64, [forward, input_grad, weight_grad]);
    }
}

/// On a 2x2 plane with a 3x3 kernel and padding 1, tap (0, 0) reads inside the input only at
/// output (1, 1), the centre tap at all four outputs, tap (2, 1) on the top row: 16 of 36.
#[test]
fn tap_rectangles_worked_by_hand() {
    let g = ConvGeometry::new((1, 1, 2, 2), (1, 1, 3, 3), 1, 1).unwrap();
    let all = taps(&g);
    assert_eq!(all.len(), 9);
    assert_eq!((all[0].rows.clone(), all[0].cols.clone()), (1..2, 1..2));
    assert_eq!((all[4].rows.clone(), all[4].cols.clone()), (0..2, 0..2));
    assert_eq!((all[7].rows.clone(), all[7].cols.clone()), (0..1, 0..2));
    assert_eq!(useful_fraction(&g, &taps(&g)), 16.0 / 36.0);
    // 3x3 plane: corners read 4 taps, edges 6, the centre 9.
    let g = ConvGeometry::new((1, 1, 3, 3), (1, 1, 3, 3), 1, 1).unwrap();
    assert_eq!(useful_fraction(&g, &taps(&g)), 49.0 / 81.0);
    // 1x1 plane, padding 1: only the centre tap is left.
    let g = ConvGeometry::new((1, 1, 1, 1), (1, 1, 3, 3), 1, 1).unwrap();
    assert_eq!(
        taps(&g).iter().map(|t| t.index).collect::<Vec<_>>(),
        vec![4]
    );
    // Stride 2 from 3x3 to 2x2: output 0 reads rows -1..=1, output 1 rows 1..=3.
    let g = ConvGeometry::new((1, 1, 3, 3), (1, 1, 3, 3), 2, 1).unwrap();
    assert_eq!(useful_fraction(&g, &taps(&g)), 16.0 / 36.0);
    // No border: nothing to skip.
    let g = ConvGeometry::new((1, 1, 5, 5), (1, 1, 3, 3), 1, 0).unwrap();
    assert_eq!(useful_fraction(&g, &taps(&g)), 1.0);
}

#[test]
fn taps_take_bordered_small_planes_with_enough_channels_and_columns() {
    let geometry = |batch, c_in, side, k, padding| {
        ConvGeometry::new((batch, c_in, side, side), (8, c_in, k, k), 1, padding).unwrap()
    };
    // `pays_by_rule` is what `Auto` (the default) asks, whatever another test set.
    let threads = rayon::current_num_threads().max(1);
    let many = 64 * threads;
    for pass in [Pass::Forward, Pass::InputGrad, Pass::WeightGrad] {
        assert!(pays_by_rule(&geometry(many, 512, 2, 3, 1), pass));
        assert!(pays_by_rule(&geometry(many, 256, 3, 3, 1), pass));
        assert!(
            !pays_by_rule(&geometry(many, 32, 2, 3, 1), pass),
            "too few channels"
        );
        assert!(
            !pays_by_rule(&geometry(many, 64, 16, 3, 1), pass),
            "border too thin"
        );
        // 7x7 (layer3 at 112 px, 361 of 441 products useful) pays, 8x8 (484 of 576) does not.
        assert!(pays_by_rule(&geometry(many, 256, 7, 3, 1), pass));
        assert!(
            !pays_by_rule(&geometry(many, 128, 8, 3, 1), pass),
            "border too thin"
        );
    }
    // Taps go before Winograd from 256 input channels on, not at 128.
    assert!(beats_winograd(&geometry(many, 256, 4, 3, 1)));
    assert!(!beats_winograd(&geometry(many, 128, 6, 3, 1)));
    // One image per thread on a 2x2 plane: 16 / 9 columns per tap GEMM.
    let narrow = geometry(threads, 512, 2, 3, 1);
    assert!(pays_by_rule(&narrow, Pass::InputGrad));
    assert!(!pays_by_rule(&narrow, Pass::Forward));
    assert!(!pays_by_rule(&narrow, Pass::WeightGrad));
    // 16 images per thread on a 2x2 plane (layer4 at 64 px / 32): 28 columns per tap GEMM.
    let sixteen = geometry(16 * threads, 512, 2, 3, 1);
    assert!(pays_by_rule(&sixteen, Pass::Forward));
    assert!(!pays_by_rule(&sixteen, Pass::WeightGrad));
    assert!(
        !applies(&geometry(many, 64, 2, 1, 0)),
        "1x1 kernels have no taps to skip"
    );
}
