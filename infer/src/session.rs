//! The mutable half of plan/state: a session owns every buffer one classification needs,
//! sized when it is created, so classifying allocates nothing.

use crate::error::ClassifyError;
use crate::image::{FaceRegion, ImageView};
use crate::kernels::{softmax, Parallel, Sequential};
use crate::model::{Model, MAX_CLASSES};
use crate::network::Activations;
use crate::preprocess::Preprocessor;
use alloc::vec;
use alloc::vec::Vec;

/// Largest `max_width` / `max_height` a session accepts (larger values are clamped).
pub const MAX_SIDE: usize = 16384;
/// Most threads a session starts.
pub const MAX_THREADS: usize = 64;
/// Most faces [`Session::classify_batch`] sends through the network's late layers at once.
pub const MAX_BATCH: usize = 8;

/// Limits a session is sized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Widest image (or face crop) `classify` accepts, in pixels.
    pub max_width: usize,
    /// Tallest image (or face crop) `classify` accepts, in pixels.
    pub max_height: usize,
    /// Threads per forward pass, the caller's included (`1` = no pool; always 1 without `std`).
    pub threads: usize,
}

impl Default for SessionConfig {
    /// Full-HD frames, one thread.
    fn default() -> Self {
        SessionConfig {
            max_width: 1920,
            max_height: 1080,
            threads: 1,
        }
    }
}

/// Class probabilities of one face.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// Softmax probabilities in the model's class order; entries past `num_classes` are 0.
    pub probs: [f32; MAX_CLASSES],
    pub num_classes: usize,
    /// Index of the most probable class.
    pub class: usize,
    /// `probs[class]`.
    pub confidence: f32,
}

impl Prediction {
    pub const EMPTY: Prediction = Prediction {
        probs: [0.0; MAX_CLASSES],
        num_classes: 0,
        class: 0,
        confidence: 0.0,
    };

    /// The probabilities of the model's classes only.
    pub fn probs(&self) -> &[f32] {
        &self.probs[..self.num_classes]
    }

    fn from_logits(logits: &[f32]) -> Prediction {
        let mut probs = [0.0; MAX_CLASSES];
        let n = logits.len().min(MAX_CLASSES);
        // Lengths match by construction, so this cannot fail.
        let _ = softmax(&logits[..n], &mut probs[..n]);
        Prediction::from_probs(probs, n)
    }

    /// The mean of the probabilities of two views of one face (the face and its mirror image).
    fn averaged(a: &Prediction, b: &Prediction) -> Prediction {
        let mut probs = [0.0; MAX_CLASSES];
        for ((p, &pa), &pb) in probs.iter_mut().zip(&a.probs).zip(&b.probs) {
            *p = 0.5 * (pa + pb);
        }
        Prediction::from_probs(probs, a.num_classes)
    }

    fn from_probs(probs: [f32; MAX_CLASSES], n: usize) -> Prediction {
        let mut class = 0;
        for (i, &p) in probs[..n].iter().enumerate() {
            if p > probs[class] {
                class = i;
            }
        }
        Prediction {
            probs,
            num_classes: n,
            class,
            confidence: probs[class],
        }
    }
}

/// Reusable per-thread state for classifying with one [`Model`].
pub struct Session<'m> {
    model: &'m Model,
    config: SessionConfig,
    preprocessor: Preprocessor,
    input: Vec<f32>,
    logits: Vec<f32>,
    /// `classify_batch`'s inputs and logits, one slot per face of a batch.
    batch_inputs: Vec<f32>,
    batch_logits: Vec<f32>,
    activations: Activations,
    pool: PoolSlot,
    /// See [`Session::set_flip_average`].
    flip_average: bool,
}

/// The session's worker pool when it has one (with `std` and more than one thread).
#[cfg(feature = "std")]
type PoolSlot = Option<crate::WorkerPool>;
#[cfg(not(feature = "std"))]
type PoolSlot = ();

impl<'m> Session<'m> {
    /// Allocates every buffer for `config` (sides clamped to [`MAX_SIDE`], threads to
    /// `1..=MAX_THREADS`); falls back to one thread if worker threads cannot be started.
    pub fn new(model: &'m Model, config: SessionConfig) -> Session<'m> {
        let config = SessionConfig {
            max_width: config.max_width.clamp(1, MAX_SIDE),
            max_height: config.max_height.clamp(1, MAX_SIDE),
            threads: if cfg!(feature = "std") {
                config.threads.clamp(1, MAX_THREADS)
            } else {
                1
            },
        };
        #[cfg(feature = "std")]
        let pool = if config.threads > 1 {
            crate::WorkerPool::new(config.threads).ok()
        } else {
            None
        };
        #[cfg(feature = "std")]
        let threads = pool.as_ref().map_or(1, |p| p.threads());
        #[cfg(not(feature = "std"))]
        let threads = 1;
        let s = model.input_size();
        let activations = model.network.activations(threads, MAX_BATCH);
        let batch = activations.batch_capacity();
        Session {
            model,
            config: SessionConfig { threads, ..config },
            preprocessor: Preprocessor::new(s, config.max_width, config.max_height),
            input: vec![0.0; 3 * s * s],
            logits: vec![0.0; model.num_classes()],
            batch_inputs: vec![0.0; if batch > 1 { batch * 3 * s * s } else { 0 }],
            batch_logits: vec![0.0; batch * model.num_classes()],
            activations,
            #[cfg(feature = "std")]
            pool,
            #[cfg(not(feature = "std"))]
            pool: (),
            flip_average: false,
        }
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The configuration in force (after clamping; `threads` is what actually runs).
    pub fn config(&self) -> SessionConfig {
        self.config
    }

    /// Also classify every face mirrored left-right and report the mean of the two probability
    /// vectors (test-time augmentation; the trainer's `face2exp eval --tta hflip` computes the
    /// same). The shipped network was trained with random flips, so both views are faces it
    /// knows; averaging them gains about a point of accuracy on FER2013 val
    /// (docs/RESULTS.md) for 1.5-2x the classification time (the two views share the late
    /// layers' batch; docs/BENCHMARKS.md). Off by default. Allocates nothing: the buffers
    /// already exist.
    pub fn set_flip_average(&mut self, on: bool) {
        self.flip_average = on;
    }

    /// Whether [`Session::set_flip_average`] is on.
    pub fn flip_average(&self) -> bool {
        self.flip_average
    }

    /// Classifies the whole image as one face crop.
    pub fn classify(&mut self, image: &ImageView<'_>) -> Result<Prediction, ClassifyError> {
        self.preprocess(image, None)?;
        self.run_network()
    }

    /// Classifies one face: aligned by its landmarks when present, else cropped to its box.
    pub fn classify_face(
        &mut self,
        image: &ImageView<'_>,
        face: &FaceRegion,
    ) -> Result<Prediction, ClassifyError> {
        self.preprocess(image, Some(face))?;
        self.run_network()
    }

    /// Classifies every face of one frame into `out` (same length as `faces`). Faces go
    /// through the network's late layers together, up to [`MAX_BATCH`] at a time, so each of
    /// their weights is read once per batch instead of once per face: with the shipped 48 px
    /// network, three faces cost well under three times one. The predictions are the same,
    /// bit for bit, as [`Session::classify_face`]'s.
    pub fn classify_batch(
        &mut self,
        image: &ImageView<'_>,
        faces: &[FaceRegion],
        out: &mut [Prediction],
    ) -> Result<(), ClassifyError> {
        if out.len() != faces.len() {
            return Err(ClassifyError::Length {
                what: "classify_batch output",
                expected: faces.len(),
                found: out.len(),
            });
        }
        // With flip averaging each face takes two slots of a batch: itself and its mirror.
        let views = if self.flip_average { 2 } else { 1 };
        let per_batch = self.activations.batch_capacity() / views;
        if per_batch <= 1 {
            for (face, slot) in faces.iter().zip(out.iter_mut()) {
                *slot = self.classify_face(image, face)?;
            }
            return Ok(());
        }
        let model = self.model;
        let input_len = self.input.len();
        for (faces, out) in faces.chunks(per_batch).zip(out.chunks_mut(per_batch)) {
            let inputs = &mut self.batch_inputs[..faces.len() * views * input_len];
            let par = parallel(&self.pool);
            for (face, input) in faces.iter().zip(inputs.chunks_exact_mut(views * input_len)) {
                let input = &mut input[..input_len];
                self.preprocessor
                    .run(image, Some(face), model.mean(), model.std(), input, par)?;
            }
            self.run_batch(views, out)?;
        }
        Ok(())
    }

    /// Classifies the `out.len()` faces whose inputs are in `batch_inputs`, face i's at slot
    /// `views * i`; with 2 views each face's mirror image goes into the slot after it and the
    /// two predictions are averaged. One late-layer batch for all of them.
    fn run_batch(&mut self, views: usize, out: &mut [Prediction]) -> Result<(), ClassifyError> {
        let model = self.model;
        let (input_len, classes) = (self.input.len(), model.num_classes());
        let images = out.len() * views;
        let inputs = &mut self.batch_inputs[..images * input_len];
        if views == 2 {
            for pair in inputs.chunks_exact_mut(2 * input_len) {
                let (input, mirror) = pair.split_at_mut(input_len);
                mirror_into(input, mirror, model.input_size());
            }
        }
        let logits = &mut self.batch_logits[..images * classes];
        let par = parallel(&self.pool);
        model
            .network
            .forward_batch(inputs, images, &mut self.activations, par, logits)?;
        for (slot, logits) in out.iter_mut().zip(logits.chunks_exact(views * classes)) {
            *slot = Prediction::from_logits(&logits[..classes]);
            if views == 2 {
                *slot = Prediction::averaged(slot, &Prediction::from_logits(&logits[classes..]));
            }
        }
        Ok(())
    }

    /// Runs preprocessing only and returns the normalised `[3, S, S]` network input.
    pub fn preprocess(
        &mut self,
        image: &ImageView<'_>,
        face: Option<&FaceRegion>,
    ) -> Result<&[f32], ClassifyError> {
        let model = self.model;
        self.preprocessor.run(
            image,
            face,
            model.mean(),
            model.std(),
            &mut self.input,
            parallel(&self.pool),
        )?;
        Ok(&self.input)
    }

    /// Logits of an already normalised CHW input of `3 * S * S` floats (for parity checks).
    pub fn forward_chw(&mut self, input: &[f32]) -> Result<&[f32], ClassifyError> {
        if input.len() != self.input.len() {
            return Err(ClassifyError::Length {
                what: "forward_chw input",
                expected: self.input.len(),
                found: input.len(),
            });
        }
        self.input.copy_from_slice(input);
        self.forward_input()?;
        Ok(&self.logits)
    }

    /// Classifies `self.input`, and its mirror image too with flip averaging on.
    fn run_network(&mut self) -> Result<Prediction, ClassifyError> {
        if !self.flip_average {
            self.forward_input()?;
            return Ok(Prediction::from_logits(&self.logits));
        }
        if self.activations.batch_capacity() >= 2 {
            // Both views in one batch: the late layers read their weights once for the two.
            self.batch_inputs[..self.input.len()].copy_from_slice(&self.input);
            let mut out = [Prediction::EMPTY];
            self.run_batch(2, &mut out)?;
            return Ok(out[0]);
        }
        self.forward_input()?;
        let first = Prediction::from_logits(&self.logits);
        for row in self.input.chunks_exact_mut(self.model.input_size()) {
            row.reverse();
        }
        self.forward_input()?;
        Ok(Prediction::averaged(
            &first,
            &Prediction::from_logits(&self.logits),
        ))
    }

    fn forward_input(&mut self) -> Result<(), ClassifyError> {
        let par = parallel(&self.pool);
        self.model
            .network
            .forward(&self.input, &mut self.activations, par, &mut self.logits)?;
        Ok(())
    }
}

/// Writes the left-right mirror image of a CHW input of side `side` (every row reversed).
fn mirror_into(input: &[f32], mirror: &mut [f32], side: usize) {
    for (src, dst) in input.chunks_exact(side).zip(mirror.chunks_exact_mut(side)) {
        for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
            *d = *s;
        }
    }
}

/// The session's worker pool, or the calling thread alone.
#[cfg(feature = "std")]
fn parallel(pool: &PoolSlot) -> &dyn Parallel {
    match pool {
        Some(pool) => pool,
        None => &Sequential,
    }
}

/// Without `std` there is no pool: the calling thread alone.
#[cfg(not(feature = "std"))]
fn parallel(_: &PoolSlot) -> &dyn Parallel {
    &Sequential
}
