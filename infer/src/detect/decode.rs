//! From head outputs to faces: anchors, score threshold, box and landmark decoding, NMS.
//!
//! RetinaFace's prior boxes: at every cell `(x, y)` of the level with stride `s` sit two square
//! anchors of side `ANCHOR_SIZES[level]`, centred on `((x + 0.5) s, (y + 0.5) s)`. A box is
//! `centre = anchor_centre + 0.1 * delta_xy * side`, `size = side * exp(0.2 * delta_wh)`; a
//! landmark is `anchor_centre + 0.1 * delta * side`. The Python reference does the same in
//! coordinates normalised by the image size, which cancels out: we decode in pixels directly.

use super::network::{HeadOutputs, Shapes, ANCHORS_PER_CELL, STRIDES};
use super::{AnchorOutput, Face};
use alloc::vec::Vec;
use core::cmp::Ordering;

/// Anchor sides in pixels per level (`min_sizes` of biubug6's `cfg_mnet`).
pub(crate) const ANCHOR_SIZES: [[f32; ANCHORS_PER_CELL]; 3] =
    [[16.0, 32.0], [64.0, 128.0], [256.0, 512.0]];
/// Centre and size variances of the box encoding.
const VARIANCE: [f32; 2] = [0.1, 0.2];

/// An anchor whose face probability passed the threshold, with its decoded box.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub score: f32,
    /// `[x, y, w, h]` in image pixels.
    pub bbox: [f32; 4],
    level: u8,
    anchor: u8,
    cell: u32,
}

/// Number of anchors for the given feature-map sizes (`2 * cells` over the three levels).
pub(crate) fn anchor_count(shapes: &Shapes) -> usize {
    shapes
        .levels
        .iter()
        .map(|(h, w)| h * w * ANCHORS_PER_CELL)
        .sum()
}

/// Face probability of anchor `a` at `cell`: softmax over the (background, face) logits.
#[inline]
fn face_probability(class: &[f32], plane: usize, a: usize, cell: usize) -> f32 {
    let background = class[(a * 2) * plane + cell];
    let face = class[(a * 2 + 1) * plane + cell];
    1.0 / (1.0 + libm::expf(background - face))
}

/// Pushes every anchor with probability `> threshold` into `out` (which must have capacity for
/// all anchors, so this never allocates). Iterates in the ONNX graph's anchor order.
pub(crate) fn collect_candidates(
    heads: &HeadOutputs<'_>,
    shapes: &Shapes,
    threshold: f32,
    out: &mut Vec<Candidate>,
) {
    out.clear();
    // score > t  <=>  face - background > ln(t / (1 - t)): compare logits first and take the
    // exponential only for the few anchors near or above it (a little slack for rounding; the
    // exact test on the probability follows).
    let min_margin = if threshold > 0.0 {
        libm::logf(threshold) - libm::logf(1.0 - threshold) - 1e-3
    } else {
        f32::NEG_INFINITY
    };
    for level in 0..3 {
        let (h, w) = shapes.levels[level];
        let plane = h * w;
        let (class, bbox) = (heads.class[level], heads.bbox[level]);
        let stride = STRIDES[level] as f32;
        for cell in 0..plane {
            for a in 0..ANCHORS_PER_CELL {
                let margin = class[(a * 2 + 1) * plane + cell] - class[(a * 2) * plane + cell];
                // `partial_cmp` so that NaN (a broken input) is rejected, never kept.
                if margin.partial_cmp(&min_margin) != Some(Ordering::Greater) {
                    continue;
                }
                let score = face_probability(class, plane, a, cell);
                if score.partial_cmp(&threshold) != Some(Ordering::Greater)
                    || out.len() == out.capacity()
                {
                    continue;
                }
                let side = ANCHOR_SIZES[level][a];
                let delta = |k: usize| bbox[(a * 4 + k) * plane + cell];
                let cx = ((cell % w) as f32 + 0.5) * stride + delta(0) * VARIANCE[0] * side;
                let cy = ((cell / w) as f32 + 0.5) * stride + delta(1) * VARIANCE[0] * side;
                let bw = side * libm::expf(delta(2) * VARIANCE[1]);
                let bh = side * libm::expf(delta(3) * VARIANCE[1]);
                out.push(Candidate {
                    score,
                    bbox: [cx - bw / 2.0, cy - bh / 2.0, bw, bh],
                    level: level as u8,
                    anchor: a as u8,
                    cell: cell as u32,
                });
            }
        }
    }
}

/// The five landmarks of a candidate, in image pixels.
fn landmarks(heads: &HeadOutputs<'_>, shapes: &Shapes, c: &Candidate) -> [[f32; 2]; 5] {
    let level = c.level as usize;
    let (h, w) = shapes.levels[level];
    let plane = h * w;
    let cell = c.cell as usize;
    let a = c.anchor as usize;
    let stride = STRIDES[level] as f32;
    let side = ANCHOR_SIZES[level][a];
    let (ax, ay) = (
        ((cell % w) as f32 + 0.5) * stride,
        ((cell / w) as f32 + 0.5) * stride,
    );
    let lm = heads.landmark[level];
    let mut out = [[0.0; 2]; 5];
    for (k, point) in out.iter_mut().enumerate() {
        point[0] = ax + lm[(a * 10 + 2 * k) * plane + cell] * VARIANCE[0] * side;
        point[1] = ay + lm[(a * 10 + 2 * k + 1) * plane + cell] * VARIANCE[0] * side;
    }
    out
}

/// Raw outputs of anchor `index` in the ONNX order (level, then cell, then anchor).
pub(crate) fn anchor_output(
    heads: &HeadOutputs<'_>,
    shapes: &Shapes,
    mut index: usize,
) -> Option<AnchorOutput> {
    for level in 0..3 {
        let plane = shapes.levels[level].0 * shapes.levels[level].1;
        if index >= plane * ANCHORS_PER_CELL {
            index -= plane * ANCHORS_PER_CELL;
            continue;
        }
        let (cell, a) = (index / ANCHORS_PER_CELL, index % ANCHORS_PER_CELL);
        let bbox = heads.bbox[level];
        let lm = heads.landmark[level];
        return Some(AnchorOutput {
            score: face_probability(heads.class[level], plane, a, cell),
            box_deltas: core::array::from_fn(|k| bbox[(a * 4 + k) * plane + cell]),
            landmark_deltas: core::array::from_fn(|k| lm[(a * 10 + k) * plane + cell]),
        });
    }
    None
}

/// Intersection over union of two `[x, y, w, h]` boxes (0 for empty ones).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let h = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Greedy NMS as OpenCV's `dnn::NMSBoxes`: candidates by descending score (ties in anchor
/// order), each kept unless it overlaps an already kept face by IoU `> iou_threshold`; stops at
/// `max_faces` faces (`faces` must have that capacity). Sorts `candidates` in place; never allocates.
pub(crate) fn non_maximum_suppression(
    candidates: &mut [Candidate],
    heads: &HeadOutputs<'_>,
    shapes: &Shapes,
    iou_threshold: f32,
    max_faces: usize,
    faces: &mut Vec<Face>,
) {
    faces.clear();
    let order = |c: &Candidate| (c.level, c.cell, c.anchor);
    candidates.sort_unstable_by(|x, y| {
        y.score
            .total_cmp(&x.score)
            .then_with(|| order(x).cmp(&order(y)))
    });
    for c in candidates.iter() {
        if faces.len() >= max_faces {
            break;
        }
        if faces
            .iter()
            .all(|kept| iou(&kept.bbox, &c.bbox) <= iou_threshold)
        {
            faces.push(Face {
                bbox: c.bbox,
                score: c.score,
                landmarks: landmarks(heads, shapes, c),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::iou;

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[10.0, 0.0, 10.0, 10.0]), 0.0);
        // Half overlap: intersection 50, union 150.
        assert!((iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 10.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]), 0.0);
    }
}
