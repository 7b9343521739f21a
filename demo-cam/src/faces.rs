//! What the pipeline knows about one face in one frame; the tracker, the overlay and the JSON
//! output all read this one record.

/// Most classes any face2exp model has (the seven basic expressions plus contempt).
pub const MAX_CLASSES: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaceResult {
    /// `[x, y, w, h]` in frame pixels.
    pub bbox: [f32; 4],
    /// Detector confidence in [0, 1] (1 for `--whole-image`).
    pub score: f32,
    /// Eyes, nose tip, mouth corners, when the detector gives them.
    pub landmarks: Option<[[f32; 2]; 5]>,
    /// Class probabilities in canonical order; the first `num_classes` are used. Smoothed over
    /// time when tracking is on.
    pub probs: [f32; MAX_CLASSES],
    /// Identity across frames (0 when tracking is off).
    pub track_id: u64,
}

impl FaceResult {
    pub fn new(
        bbox: [f32; 4],
        score: f32,
        landmarks: Option<[[f32; 2]; 5]>,
        probs: [f32; MAX_CLASSES],
    ) -> Self {
        FaceResult {
            bbox,
            score,
            landmarks,
            probs,
            track_id: 0,
        }
    }

    /// The most probable class among the first `num_classes` and its probability.
    pub fn top_class(&self, num_classes: usize) -> (usize, f32) {
        let n = num_classes.clamp(1, MAX_CLASSES);
        let mut best = 0;
        for (i, &p) in self.probs[..n].iter().enumerate() {
            if p > self.probs[best] {
                best = i;
            }
        }
        (best, self.probs[best])
    }
}

/// Intersection over union of two `[x, y, w, h]` boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let ix = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0])).max(0.0);
    let iy = ((a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1])).max(0.0);
    let inter = ix * iy;
    let union = a[2].max(0.0) * a[3].max(0.0) + b[2].max(0.0) * b[3].max(0.0) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_identical_disjoint_and_half_overlapping_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[20.0, 0.0, 10.0, 10.0]), 0.0);
        // Overlap 5x10 = 50, union 150.
        assert!((iou(&a, &[5.0, 0.0, 10.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&[0.0; 4], &[0.0; 4]), 0.0);
    }

    #[test]
    fn top_class_looks_only_at_the_models_classes() {
        let mut probs = [0.0; MAX_CLASSES];
        probs[2] = 0.6;
        probs[7] = 0.9;
        let face = FaceResult::new([0.0; 4], 1.0, None, probs);
        assert_eq!(face.top_class(7), (2, 0.6));
        assert_eq!(face.top_class(8), (7, 0.9));
    }
}
