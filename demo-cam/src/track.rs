//! Stable labels on video: faces are matched to the previous frame's by box overlap (IoU),
//! and each tracked face's class probabilities are smoothed with an exponential moving
//! average so the label does not flicker between frames. A face unseen for more than
//! `patience` frames is dropped together with its smoothing state.

use crate::faces::{iou, FaceResult, MAX_CLASSES};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackerConfig {
    /// Least IoU between a track's last box and a detection for them to be the same face.
    pub min_iou: f32,
    /// Weight of the newest frame in the moving average (1 = no smoothing).
    pub alpha: f32,
    /// Frames a track survives without a matching detection before it is dropped.
    pub patience: u32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            min_iou: 0.3,
            alpha: 0.35,
            patience: 3,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Track {
    id: u64,
    bbox: [f32; 4],
    probs: [f32; MAX_CLASSES],
    missed: u32,
    matched: bool,
}

/// IoU tracker with per-track probability smoothing. Its buffers only grow to the largest
/// number of faces seen, so steady-state updates do not allocate.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    pairs: Vec<(f32, usize, usize)>,
    face_matched: Vec<bool>,
    next_id: u64,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker {
            config,
            tracks: Vec::new(),
            pairs: Vec::new(),
            face_matched: Vec::new(),
            next_id: 1,
        }
    }

    /// Number of faces currently tracked (including ones briefly missed).
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Matches this frame's faces to the tracks, replaces each face's probabilities with its
    /// track's smoothed ones and sets its `track_id`.
    pub fn update(&mut self, faces: &mut [FaceResult]) {
        self.pairs.clear();
        for (ti, track) in self.tracks.iter().enumerate() {
            for (fi, face) in faces.iter().enumerate() {
                let overlap = iou(&track.bbox, &face.bbox);
                if overlap >= self.config.min_iou {
                    self.pairs.push((overlap, ti, fi));
                }
            }
        }
        // Greedy assignment, best overlap first; sort_unstable_by does not allocate.
        self.pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        self.face_matched.clear();
        self.face_matched.resize(faces.len(), false);
        for track in &mut self.tracks {
            track.matched = false;
        }
        let alpha = self.config.alpha.clamp(0.0, 1.0);
        for &(_, ti, fi) in &self.pairs {
            let track = &mut self.tracks[ti];
            if track.matched || self.face_matched[fi] {
                continue;
            }
            track.matched = true;
            self.face_matched[fi] = true;
            let face = &mut faces[fi];
            for (smoothed, &new) in track.probs.iter_mut().zip(&face.probs) {
                *smoothed = alpha * new + (1.0 - alpha) * *smoothed;
            }
            track.bbox = face.bbox;
            track.missed = 0;
            face.probs = track.probs;
            face.track_id = track.id;
        }
        let patience = self.config.patience;
        for track in &mut self.tracks {
            if !track.matched {
                track.missed += 1;
            }
        }
        self.tracks.retain(|t| t.matched || t.missed <= patience);
        for (face, _) in faces
            .iter_mut()
            .zip(&self.face_matched)
            .filter(|(_, matched)| !**matched)
        {
            face.track_id = self.next_id;
            self.next_id += 1;
            self.tracks.push(Track {
                id: face.track_id,
                bbox: face.bbox,
                probs: face.probs,
                missed: 0,
                matched: true,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f32, probs: [f32; MAX_CLASSES]) -> FaceResult {
        FaceResult::new([x, 10.0, 50.0, 50.0], 0.9, None, probs)
    }

    fn one_hot(i: usize) -> [f32; MAX_CLASSES] {
        let mut p = [0.0; MAX_CLASSES];
        p[i] = 1.0;
        p
    }

    #[test]
    fn moving_faces_keep_their_ids_and_new_faces_get_new_ones() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut frame = [face(0.0, one_hot(1)), face(200.0, one_hot(2))];
        tracker.update(&mut frame);
        let (a, b) = (frame[0].track_id, frame[1].track_id);
        assert_ne!(a, b);
        // Both move 5 px and arrive in the opposite order, plus a third face appears.
        let mut frame = [
            face(205.0, one_hot(2)),
            face(5.0, one_hot(1)),
            face(400.0, one_hot(0)),
        ];
        tracker.update(&mut frame);
        assert_eq!(frame[0].track_id, b);
        assert_eq!(frame[1].track_id, a);
        assert!(frame[2].track_id != a && frame[2].track_id != b);
        assert_eq!(tracker.len(), 3);
    }

    #[test]
    fn probabilities_are_smoothed_and_still_sum_to_one() {
        let config = TrackerConfig {
            alpha: 0.25,
            ..TrackerConfig::default()
        };
        let mut tracker = Tracker::new(config);
        let mut frame = [face(0.0, one_hot(1))];
        tracker.update(&mut frame);
        assert_eq!(frame[0].probs, one_hot(1));
        // One frame of "sad" moves the average a quarter of the way: the label stays happy.
        let mut frame = [face(2.0, one_hot(2))];
        tracker.update(&mut frame);
        assert!((frame[0].probs[1] - 0.75).abs() < 1e-6);
        assert!((frame[0].probs[2] - 0.25).abs() < 1e-6);
        assert_eq!(frame[0].top_class(7).0, 1);
        assert!((frame[0].probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // A steady "sad" wins after a few frames.
        for _ in 0..4 {
            frame = [face(2.0, one_hot(2))];
            tracker.update(&mut frame);
        }
        assert_eq!(frame[0].top_class(7).0, 2);
    }

    #[test]
    fn a_face_that_leaves_loses_its_smoothing_state() {
        let config = TrackerConfig {
            patience: 2,
            ..TrackerConfig::default()
        };
        let mut tracker = Tracker::new(config);
        let mut frame = [face(0.0, one_hot(1))];
        tracker.update(&mut frame);
        let first_id = frame[0].track_id;
        // Missed for two frames: still remembered, the face comes back with its id.
        tracker.update(&mut []);
        tracker.update(&mut []);
        assert_eq!(tracker.len(), 1);
        let mut frame = [face(0.0, one_hot(1))];
        tracker.update(&mut frame);
        assert_eq!(frame[0].track_id, first_id);
        // Gone for three frames: dropped, so a face there now starts fresh, unsmoothed.
        for _ in 0..3 {
            tracker.update(&mut []);
        }
        assert!(tracker.is_empty());
        let mut frame = [face(0.0, one_hot(3))];
        tracker.update(&mut frame);
        assert_ne!(frame[0].track_id, first_id);
        assert_eq!(frame[0].probs, one_hot(3));
    }
}
