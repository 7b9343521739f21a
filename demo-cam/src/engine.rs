//! Detection and classification through `face2exp-infer`: the detector finds faces and
//! landmarks in the frame's own BGRA bytes, the classifier crops/aligns each face and returns
//! its class probabilities. Sessions are sized for the largest frame seen so far and rebuilt
//! only when a larger one arrives, so steady-state frames do not allocate.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession};
use face2exp_infer::{
    FaceRegion, ImageView, LatePrecision, Model, PixelFormat, Prediction, Session, SessionConfig,
};

use crate::faces::{FaceResult, MAX_CLASSES};
use crate::frame::Frame;
use crate::pipeline::{AnalyzeTimes, Analyzer};
use crate::weights::WeightBytes;

mod worker;

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
    /// Run the detector on the frame shrunk by this factor K (1..=8): about K^2 times
    /// cheaper; finds faces at least 32 x K px wide.
    pub detect_downscale: usize,
    /// Store the classifier's late-layer weights as half floats
    /// (`Model::store_late_weights_as_f16`: faster per face, outputs within ~3e-4) or int8
    /// (`Model::store_late_weights_as_int8`: faster still, outputs within ~1e-2); `None` keeps
    /// single precision.
    pub late_weights: Option<LatePrecision>,
    /// Detect frame k+1 on a thread of its own while frame k is classified (one frame of
    /// latency, both cores busy); `threads` is split between the two stages.
    pub pipelined: bool,
    /// Classify each face and its mirror image and average the probabilities
    /// (`Session::set_flip_average`): about a point more accurate, slower per face.
    pub flip_average: bool,
}

/// Finds faces in frames; sessions sized for the largest frame seen so far.
pub(crate) struct DetectStage {
    detector: Option<&'static Detector>,
    session: Option<DetectorSession<'static>>,
    limits: (usize, usize),
    config: EngineConfig,
}

/// Crops, aligns and classifies faces; its session grows with the frame like the detector's.
struct ClassifyStage {
    model: &'static Model,
    session: Session<'static>,
    limits: (usize, usize),
    threads: usize,
    /// One frame's faces and predictions, kept so that classifying allocates nothing once
    /// they have grown to the most faces seen.
    regions: Vec<FaceRegion>,
    predictions: Vec<Prediction>,
}

pub struct Engine {
    classify: ClassifyStage,
    /// Detection on the caller's thread (sequential mode) ...
    detect: Option<DetectStage>,
    /// ... or on its own thread (`EngineConfig::pipelined`).
    worker: Option<worker::DetectWorker>,
    class_names: Vec<&'static str>,
}

/// Frames the sessions are first sized for; larger ones grow them.
const FIRST_LIMITS: (usize, usize) = (640, 480);

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
        match config.late_weights {
            Some(LatePrecision::F16) => model.store_late_weights_as_f16(),
            Some(LatePrecision::Int8) => model.store_late_weights_as_int8(),
            None => 0,
        };
        let model: &'static Model = Box::leak(Box::new(model));
        let detector = match detector {
            Some(weights) => {
                let loaded = Detector::from_bytes(&weights.bytes)
                    .map_err(|e| anyhow!("{}: {e}", weights.origin))?;
                Some(&*Box::leak(Box::new(loaded)))
            }
            None => None,
        };
        // Pipelined, each stage has its own thread and the threads are split between them.
        let pipelined = config.pipelined && detector.is_some();
        let (detect_threads, classify_threads) = if pipelined {
            let classify = (config.threads / 2).max(1);
            ((config.threads - classify).max(1), classify)
        } else {
            (config.threads, config.threads)
        };
        let detect = DetectStage::new(
            detector,
            FIRST_LIMITS,
            EngineConfig {
                threads: detect_threads,
                ..*config
            },
        )?;
        let (detect, worker) = if pipelined {
            (
                None,
                Some(worker::DetectWorker::spawn(detect, config.max_faces)?),
            )
        } else {
            (Some(detect), None)
        };
        Ok(Engine {
            classify: ClassifyStage::new(model, FIRST_LIMITS, classify_threads, config),
            detect,
            worker,
            class_names,
        })
    }

    /// Whether detection runs on its own thread ([`Engine::submit`] / [`Engine::collect`]).
    pub fn is_pipelined(&self) -> bool {
        self.worker.is_some()
    }

    /// Replaces `faces` with the faces found in `frame` (probabilities zero until
    /// [`Engine::classify`]), or with the whole frame when there is no detector. In
    /// pipelined mode this still works, by a round trip through the detection thread.
    pub fn detect(&mut self, frame: &Frame, faces: &mut Vec<FaceResult>) -> Result<()> {
        match (&mut self.detect, &mut self.worker) {
            (Some(stage), _) => stage.detect(frame, faces),
            (None, Some(worker)) => {
                worker.submit(frame.clone())?;
                worker.collect(faces)?.1.map(|_| ())
            }
            (None, None) => unreachable!("an engine has a detection stage or a worker"),
        }
    }

    /// Pipelined mode: starts detecting faces in `frame` on the detection thread.
    pub fn submit(&mut self, frame: Frame) -> Result<()> {
        match &mut self.worker {
            Some(worker) => worker.submit(frame),
            None => bail!("submit needs an engine loaded with `pipelined`"),
        }
    }

    /// Pipelined mode: waits for the frame given to [`Engine::submit`] and returns it with
    /// its detection time or error; `faces` holds its faces, probabilities still zero.
    pub fn collect(&mut self, faces: &mut Vec<FaceResult>) -> Result<(Frame, Result<Duration>)> {
        match &mut self.worker {
            Some(worker) => worker.collect(faces),
            None => bail!("collect needs an engine loaded with `pipelined`"),
        }
    }

    /// Fills in each face's class probabilities.
    pub fn classify(&mut self, frame: &Frame, faces: &mut [FaceResult]) -> Result<()> {
        self.classify.classify(frame, faces)
    }
}

impl DetectStage {
    fn new(
        detector: Option<&'static Detector>,
        limits: (usize, usize),
        config: EngineConfig,
    ) -> Result<DetectStage> {
        Ok(DetectStage {
            detector,
            session: detector_session(detector, limits, &config)?,
            limits,
            config,
        })
    }

    pub(crate) fn detect(&mut self, frame: &Frame, faces: &mut Vec<FaceResult>) -> Result<()> {
        faces.clear();
        let (w, h) = (frame.width(), frame.height());
        if let Some(limits) = grown_limits(self.limits, frame) {
            self.session = detector_session(self.detector, limits, &self.config)?;
            self.limits = limits;
        }
        match &mut self.session {
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
}

impl ClassifyStage {
    fn new(
        model: &'static Model,
        limits: (usize, usize),
        threads: usize,
        config: &EngineConfig,
    ) -> ClassifyStage {
        ClassifyStage {
            model,
            session: classifier_session(model, limits, threads, config.flip_average),
            limits,
            threads,
            regions: Vec::with_capacity(config.max_faces),
            predictions: Vec::with_capacity(config.max_faces),
        }
    }

    fn classify(&mut self, frame: &Frame, faces: &mut [FaceResult]) -> Result<()> {
        if let Some(limits) = grown_limits(self.limits, frame) {
            let flip_average = self.session.flip_average();
            self.session = classifier_session(self.model, limits, self.threads, flip_average);
            self.limits = limits;
        }
        let view = bgra_view(frame)?;
        // All faces in one call: they share the network's late layers (see
        // `Session::classify_batch`).
        self.regions.clear();
        self.regions.extend(faces.iter().map(|face| FaceRegion {
            bbox: face.bbox,
            landmarks: face.landmarks,
        }));
        self.predictions.clear();
        self.predictions.resize(faces.len(), Prediction::EMPTY);
        self.session
            .classify_batch(&view, &self.regions, &mut self.predictions)
            .map_err(|e| {
                anyhow!(
                    "classifying the {} faces of a frame failed: {e}",
                    faces.len()
                )
            })?;
        for (face, prediction) in faces.iter_mut().zip(&self.predictions) {
            face.probs = prediction.probs;
        }
        Ok(())
    }
}

/// The limits a session must grow to for `frame`, or `None` when it already fits.
fn grown_limits(limits: (usize, usize), frame: &Frame) -> Option<(usize, usize)> {
    let (w, h) = (frame.width(), frame.height());
    (w > limits.0 || h > limits.1).then(|| (w.max(limits.0), h.max(limits.1)))
}

/// The frame's `0x00RRGGBB` words as the BGRA bytes they are in memory.
fn bgra_view(frame: &Frame) -> Result<ImageView<'_>> {
    let (w, h) = (frame.width(), frame.height());
    ImageView::new(frame.as_bgra_bytes(), w, h, w * 4, PixelFormat::Bgra8)
        .map_err(|e| anyhow!("bad {w}x{h} frame: {e}"))
}

fn classifier_session(
    model: &'static Model,
    (max_width, max_height): (usize, usize),
    threads: usize,
    flip_average: bool,
) -> Session<'static> {
    let mut session = Session::new(
        model,
        SessionConfig {
            max_width,
            max_height,
            threads,
        },
    );
    session.set_flip_average(flip_average);
    session
}

fn detector_session(
    detector: Option<&'static Detector>,
    (max_width, max_height): (usize, usize),
    config: &EngineConfig,
) -> Result<Option<DetectorSession<'static>>> {
    let Some(detector) = detector else {
        return Ok(None);
    };
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
    .map(Some)
    .map_err(|e| anyhow!("cannot set up the face detector: {e}"))
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

    fn is_pipelined(&self) -> bool {
        Engine::is_pipelined(self)
    }

    fn submit(&mut self, frame: Frame) -> Result<()> {
        Engine::submit(self, frame)
    }

    fn collect(&mut self, faces: &mut Vec<FaceResult>) -> Result<(Frame, Result<Duration>)> {
        Engine::collect(self, faces)
    }

    fn classify(&mut self, frame: &Frame, faces: &mut [FaceResult]) -> Result<()> {
        Engine::classify(self, frame, faces)
    }
}
