//! Detection and classification through `face2exp-infer`: the detector finds faces and
//! landmarks in the frame's own BGRA bytes, the classifier crops/aligns each face and returns
//! its class probabilities. Sessions are sized for the largest frame seen so far and rebuilt
//! only when a larger one arrives, so steady-state frames do not allocate.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession};
use face2exp_infer::{FaceRegion, ImageView, Model, PixelFormat, Session, SessionConfig};

use crate::faces::{FaceResult, MAX_CLASSES};
use crate::frame::Frame;
use crate::pipeline::{AnalyzeTimes, Analyzer};
use crate::weights::WeightBytes;

/// Canonical class names (trainer/src/labels.rs), as `&'static str` for the overlay and JSON.
pub const CANONICAL_CLASSES: [&str; MAX_CLASSES] = [
    "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt",
];

/// NMS overlap above which the weaker of two face boxes is dropped (RetinaFace's default).
const NMS_IOU: f32 = 0.4;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineConfig {
    pub threads: usize,
    pub max_faces: usize,
    pub score_threshold: f32,
    /// Run the detector on the frame shrunk by this factor (1..=8): 2 quarters its cost but
    /// misses faces smaller than about 32 px.
    pub detect_downscale: usize,
    /// Store the classifier's late-layer weights as half floats
    /// (`Model::store_late_weights_as_f16`): faster per face, outputs within ~1e-4.
    pub half_weights: bool,
}

pub struct Engine {
    classifier: &'static Model,
    detector: Option<&'static Detector>,
    session: Session<'static>,
    detector_session: Option<DetectorSession<'static>>,
    limits: (usize, usize),
    config: EngineConfig,
    class_names: Vec<&'static str>,
}

impl Engine {
    /// Loads the networks (once per process: they live as long as the program) and makes
    /// sessions for 640x480 frames, grown on demand. Without a detector every frame is
    /// classified as one face.
    pub fn load(
        classifier: &WeightBytes,
        detector: Option<&WeightBytes>,
        config: &EngineConfig,
    ) -> Result<Engine> {
        if !(0.0..1.0).contains(&config.score_threshold) {
            bail!(
                "--score-threshold {} is outside [0, 1)",
                config.score_threshold
            );
        }
        let model = Model::from_bytes(&classifier.bytes)
            .map_err(|e| anyhow!("{}: {e}", classifier.origin))?;
        let class_names = model
            .class_names()
            .iter()
            .map(|name| {
                CANONICAL_CLASSES
                    .iter()
                    .copied()
                    .find(|c| c == name)
                    .ok_or_else(|| {
                        anyhow!(
                            "{}: class {name:?} is not a canonical face2exp class",
                            classifier.origin
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut model = model;
        if config.half_weights {
            model.store_late_weights_as_f16();
        }
        let model: &'static Model = Box::leak(Box::new(model));
        let detector = match detector {
            Some(weights) => {
                let loaded = Detector::from_bytes(&weights.bytes)
                    .map_err(|e| anyhow!("{}: {e}", weights.origin))?;
                Some(&*Box::leak(Box::new(loaded)))
            }
            None => None,
        };
        let limits = (640, 480);
        let (session, detector_session) = make_sessions(model, detector, limits, config)?;
        Ok(Engine {
            classifier: model,
            detector,
            session,
            detector_session,
            limits,
            config: *config,
            class_names,
        })
    }

    fn fit(&mut self, frame: &Frame) -> Result<()> {
        let (w, h) = (frame.width(), frame.height());
        if w > self.limits.0 || h > self.limits.1 {
            let limits = (w.max(self.limits.0), h.max(self.limits.1));
            let (session, detector_session) =
                make_sessions(self.classifier, self.detector, limits, &self.config)?;
            self.session = session;
            self.detector_session = detector_session;
            self.limits = limits;
        }
        Ok(())
    }

    /// Replaces `faces` with the faces found in `frame` (probabilities zero until
    /// [`Engine::classify`]), or with the whole frame when there is no detector.
    pub fn detect(&mut self, frame: &Frame, faces: &mut Vec<FaceResult>) -> Result<()> {
        faces.clear();
        self.fit(frame)?;
        let (w, h) = (frame.width(), frame.height());
        match &mut self.detector_session {
            Some(session) => {
                let found = session
                    .detect(&bgra_view(frame)?)
                    .map_err(|e| anyhow!("face detection failed on a {w}x{h} frame: {e}"))?;
                faces.extend(found.iter().map(|f| {
                    FaceResult::new(f.bbox, f.score, Some(f.landmarks), [0.0; MAX_CLASSES])
                }));
            }
            None => faces.push(FaceResult::new(
                [0.0, 0.0, w as f32, h as f32],
                1.0,
                None,
                [0.0; MAX_CLASSES],
            )),
        }
        Ok(())
    }

    /// Fills in each face's class probabilities.
    pub fn classify(&mut self, frame: &Frame, faces: &mut [FaceResult]) -> Result<()> {
        let view = bgra_view(frame)?;
        for face in faces {
            let region = FaceRegion {
                bbox: face.bbox,
                landmarks: face.landmarks,
            };
            let prediction = self
                .session
                .classify_face(&view, &region)
                .map_err(|e| anyhow!("classifying the face at {:?} failed: {e}", face.bbox))?;
            face.probs = prediction.probs;
        }
        Ok(())
    }
}

/// The frame's `0x00RRGGBB` words as the BGRA bytes they are in memory.
fn bgra_view(frame: &Frame) -> Result<ImageView<'_>> {
    let (w, h) = (frame.width(), frame.height());
    ImageView::new(frame.as_bgra_bytes(), w, h, w * 4, PixelFormat::Bgra8)
        .map_err(|e| anyhow!("bad {w}x{h} frame: {e}"))
}

fn make_sessions(
    model: &'static Model,
    detector: Option<&'static Detector>,
    (max_width, max_height): (usize, usize),
    config: &EngineConfig,
) -> Result<(Session<'static>, Option<DetectorSession<'static>>)> {
    let session = Session::new(
        model,
        SessionConfig {
            max_width,
            max_height,
            threads: config.threads,
        },
    );
    let detector_session = match detector {
        Some(detector) => Some(
            DetectorSession::new(
                detector,
                DetectorConfig {
                    max_width,
                    max_height,
                    max_faces: config.max_faces,
                    score_threshold: config.score_threshold,
                    nms_iou: NMS_IOU,
                    threads: config.threads,
                    downscale: config.detect_downscale,
                },
            )
            .map_err(|e| anyhow!("cannot set up the face detector: {e}"))?,
        ),
        None => None,
    };
    Ok((session, detector_session))
}

impl Analyzer for Engine {
    fn class_names(&self) -> &[&'static str] {
        &self.class_names
    }

    fn analyze(&mut self, frame: &Frame, faces: &mut Vec<FaceResult>) -> Result<AnalyzeTimes> {
        let start = Instant::now();
        self.detect(frame, faces)?;
        let detected = Instant::now();
        self.classify(frame, faces)?;
        Ok(AnalyzeTimes {
            detect: detected - start,
            classify: detected.elapsed(),
        })
    }
}
