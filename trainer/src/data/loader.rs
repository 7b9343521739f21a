//! Batches from worker threads, in order, with a bounded prefetch queue.
//!
//! Worker w of W makes batches start + w, start + w + W, ... into its own bounded channel and
//! the consumer reads the channels round-robin, so batches arrive in order however fast each
//! worker is. Batch b is a pure function of (seed, b): its items come from the sampler and
//! item i's augmentation from a ChaCha stream seeded with (seed, stream, b, i), so it is the
//! same whichever worker makes it and whether or not the run was resumed at b.
//!
//! An item that cannot be decoded is replaced by the next decodable item of the dataset
//! (deterministically, so batches stay full and reproducible), counted once, and reported
//! once when the loader is dropped (or on demand through `skipped()`).

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver};
use image::RgbImage;
use rayon::prelude::*;

use super::augment::{eval_transform, random_erasing, strong_view, to_chw, weak_view};
use super::decode::{decode_rgb, SkipReport, SkippedImages};
use super::sampler::{rng_for, ClassBalancedSampler, EpochSampler, Sampler};
use super::Dataset;

/// Stream tags that keep the augmentation streams of one seed apart.
const LABELED_STREAM: u64 = 1;
const WEAK_STREAM: u64 = 2;
const STRONG_STREAM: u64 = 3;

/// How many following items are tried when an item cannot be decoded.
const MAX_SUBSTITUTES: usize = 64;

/// Settings shared by the loaders.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Square network input side S.
    pub input_size: u32,
    /// Per-channel mean and std of RGB in [0, 1] (ImageNet's by default, as torchvision).
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Worker threads making batches (at least 1).
    pub workers: usize,
    /// Batches made ahead of the consumer, over all workers.
    pub prefetch: usize,
    pub seed: u64,
    /// Centred fraction of each decoded image kept before any transform (1.0 = all). LFW's
    /// face fills about the central 0.46 (115 of 250 px); FER crops use 1.0.
    pub center_crop: f32,
    /// RandAugment ops per strong view and their maximum magnitude (of 10).
    pub randaugment_n: usize,
    pub randaugment_m: u32,
    /// Probability of torchvision's `RandomErasing` on each labeled image (0 = off).
    pub random_erasing: f32,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            input_size: 64,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            workers: 2,
            prefetch: 4,
            seed: 0,
            center_crop: 1.0,
            randaugment_n: 2,
            randaugment_m: 10,
            random_erasing: 0.0,
        }
    }
}

/// N labeled images, CHW f32 normalised, N * 3 * S * S values.
#[derive(Clone, Debug, PartialEq)]
pub struct LabeledBatch {
    pub images: Vec<f32>,
    /// Canonical class indices.
    pub labels: Vec<u32>,
    pub n: usize,
    pub size: usize,
}

impl LabeledBatch {
    /// The images as an (N, 3, S, S) F32 tensor.
    pub fn to_tensor(
        &self,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_slice(&self.images, (self.n, 3, self.size, self.size), device)
    }

    /// The labels as an (N,) U32 tensor.
    pub fn labels_tensor(
        &self,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_slice(&self.labels, self.n, device)
    }
}

/// Two views of the same N unlabeled images: weak (flip/crop/rotate) and strong (RandAugment).
#[derive(Clone, Debug, PartialEq)]
pub struct UnlabeledBatch {
    pub weak: Vec<f32>,
    pub strong: Vec<f32>,
    pub n: usize,
    pub size: usize,
    /// The images' class indices when the dataset has them (labeled data in the unlabeled
    /// role, e.g. to measure pseudo-label accuracy); training never reads them.
    pub known_labels: Option<Vec<u32>>,
}

impl UnlabeledBatch {
    /// The weak view as an (N, 3, S, S) F32 tensor.
    pub fn to_tensor(
        &self,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_slice(&self.weak, (self.n, 3, self.size, self.size), device)
    }

    /// The strong view as an (N, 3, S, S) F32 tensor.
    pub fn strong_tensor(
        &self,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_slice(&self.strong, (self.n, 3, self.size, self.size), device)
    }
}

/// Decodes item `index`, or the next decodable one; returns the image and the index used.
fn decode_or_substitute(
    dataset: &Dataset,
    index: usize,
    center_crop: f32,
    skipped: &SkippedImages,
) -> anyhow::Result<(RgbImage, usize)> {
    let tries = dataset.len().min(MAX_SUBSTITUTES);
    for step in 0..tries {
        let candidate = (index + step) % dataset.len();
        let source = &dataset.items[candidate].source;
        match decode_rgb(source, center_crop) {
            Ok(image) => return Ok((image, candidate)),
            Err(error) => skipped.record(source.key(), &error),
        }
    }
    anyhow::bail!(
        "{}: {tries} consecutive items from index {index} cannot be decoded ({})",
        dataset.name,
        skipped.report()
    )
}

/// Worker threads feeding per-worker bounded channels, read round-robin.
struct Pipeline<B> {
    receivers: Vec<Receiver<anyhow::Result<B>>>,
    handles: Vec<JoinHandle<()>>,
    next_batch: u64,
    start_batch: u64,
    skipped: SkippedImages,
    name: String,
}

impl<B: Send + 'static> Pipeline<B> {
    fn spawn<F>(
        cfg: &LoaderConfig,
        sampler: Sampler,
        start_batch: u64,
        name: String,
        skipped: SkippedImages,
        make: F,
    ) -> Self
    where
        F: Fn(&[usize], u64) -> anyhow::Result<B> + Send + Sync + 'static,
    {
        let workers = cfg.workers.max(1);
        let capacity = cfg.prefetch.div_ceil(workers).max(1);
        let make = Arc::new(make);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (sender, receiver) = bounded(capacity);
            let (make, mut sampler) = (Arc::clone(&make), sampler.clone());
            let handle = std::thread::Builder::new()
                .name(format!("face2exp-loader-{worker}"))
                .spawn(move || {
                    let mut b = start_batch + worker as u64;
                    // Ends when the consumer drops its receiver.
                    loop {
                        let indices = sampler.batch(b);
                        if sender.send(make(&indices, b)).is_err() {
                            break;
                        }
                        b += workers as u64;
                    }
                })
                .expect("spawning a loader thread");
            receivers.push(receiver);
            handles.push(handle);
        }
        Pipeline {
            receivers,
            handles,
            next_batch: start_batch,
            start_batch,
            skipped,
            name,
        }
    }

    fn next(&mut self) -> anyhow::Result<B> {
        let slot = ((self.next_batch - self.start_batch) % self.receivers.len() as u64) as usize;
        let received = self.receivers[slot]
            .recv()
            .map_err(|_| anyhow::anyhow!("{}: loader worker {slot} stopped", self.name));
        // A failed batch still uses its slot, so the following batches stay in order.
        self.next_batch += 1;
        received?
    }
}

impl<B> Drop for Pipeline<B> {
    fn drop(&mut self) {
        self.receivers.clear();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
        self.skipped.report().warn(&self.name);
    }
}

/// Weakly augmented labeled batches, endless, from an epoch or class-balanced sampler.
pub struct LabeledLoader {
    pipeline: Pipeline<LabeledBatch>,
}

impl LabeledLoader {
    /// Starts the workers; the first `next_batch` returns batch `start_batch`.
    pub fn new(
        dataset: impl Into<Arc<Dataset>>,
        cfg: &LoaderConfig,
        balanced: bool,
        start_batch: u64,
    ) -> anyhow::Result<Self> {
        let dataset: Arc<Dataset> = dataset.into();
        anyhow::ensure!(
            dataset.is_labeled(),
            "{}: a labeled loader needs every item labeled",
            dataset.name
        );
        let sampler = if balanced {
            let labels: Vec<Option<usize>> = dataset
                .items
                .iter()
                .map(|i| i.label.map(|l| l.index()))
                .collect();
            Sampler::ClassBalanced(ClassBalancedSampler::new(
                &labels,
                cfg.batch_size,
                cfg.seed,
            )?)
        } else {
            Sampler::Epoch(EpochSampler::new(dataset.len(), cfg.batch_size, cfg.seed)?)
        };
        let skipped = SkippedImages::default();
        let (cfg, skipped_in) = (cfg.clone(), skipped.clone());
        let name = dataset.name.clone();
        let pipeline = Pipeline::spawn(
            &cfg.clone(),
            sampler,
            start_batch,
            name,
            skipped,
            move |indices, b| {
                let size = cfg.input_size as usize;
                let plane = 3 * size * size;
                let mut images = vec![0.0; indices.len() * plane];
                let mut labels = Vec::with_capacity(indices.len());
                for (i, (&index, out)) in indices.iter().zip(images.chunks_mut(plane)).enumerate() {
                    let (image, used) =
                        decode_or_substitute(&dataset, index, cfg.center_crop, &skipped_in)?;
                    let mut rng = rng_for(&[cfg.seed, LABELED_STREAM, b, i as u64]);
                    to_chw(
                        &weak_view(&image, cfg.input_size, &mut rng),
                        cfg.mean,
                        cfg.std,
                        out,
                    );
                    random_erasing(out, size, cfg.random_erasing, &mut rng);
                    labels.push(dataset.items[used].label.expect("checked labeled").index() as u32);
                }
                Ok(LabeledBatch {
                    images,
                    labels,
                    n: indices.len(),
                    size,
                })
            },
        );
        Ok(LabeledLoader { pipeline })
    }

    pub fn next_batch(&mut self) -> anyhow::Result<LabeledBatch> {
        self.pipeline.next()
    }

    /// The index of the batch the next call returns (for checkpoints).
    pub fn next_batch_index(&self) -> u64 {
        self.pipeline.next_batch
    }

    /// Images skipped so far because they could not be decoded.
    pub fn skipped(&self) -> SkipReport {
        self.pipeline.skipped.report()
    }
}

/// Weak and strong views of unlabeled images, endless, epoch-shuffled.
pub struct UnlabeledLoader {
    pipeline: Pipeline<UnlabeledBatch>,
}

impl UnlabeledLoader {
    /// Starts the workers; the first `next_batch` returns batch `start_batch`.
    pub fn new(
        dataset: impl Into<Arc<Dataset>>,
        cfg: &LoaderConfig,
        start_batch: u64,
    ) -> anyhow::Result<Self> {
        let dataset: Arc<Dataset> = dataset.into();
        let sampler = Sampler::Epoch(EpochSampler::new(dataset.len(), cfg.batch_size, cfg.seed)?);
        let skipped = SkippedImages::default();
        let (cfg, skipped_in) = (cfg.clone(), skipped.clone());
        let name = dataset.name.clone();
        let pipeline = Pipeline::spawn(
            &cfg.clone(),
            sampler,
            start_batch,
            name,
            skipped,
            move |indices, b| {
                let size = cfg.input_size as usize;
                let plane = 3 * size * size;
                let mut weak = vec![0.0; indices.len() * plane];
                let mut strong = vec![0.0; indices.len() * plane];
                let outputs = weak.chunks_mut(plane).zip(strong.chunks_mut(plane));
                let mut known_labels = Some(Vec::with_capacity(indices.len()));
                for (i, (&index, (weak_out, strong_out))) in indices.iter().zip(outputs).enumerate()
                {
                    let (image, used) =
                        decode_or_substitute(&dataset, index, cfg.center_crop, &skipped_in)?;
                    known_labels = match (known_labels, dataset.items[used].label) {
                        (Some(mut labels), Some(label)) => {
                            labels.push(label.index() as u32);
                            Some(labels)
                        }
                        _ => None,
                    };
                    let mut rng = rng_for(&[cfg.seed, WEAK_STREAM, b, i as u64]);
                    to_chw(
                        &weak_view(&image, cfg.input_size, &mut rng),
                        cfg.mean,
                        cfg.std,
                        weak_out,
                    );
                    let mut rng = rng_for(&[cfg.seed, STRONG_STREAM, b, i as u64]);
                    let view = strong_view(
                        &image,
                        cfg.input_size,
                        cfg.randaugment_n,
                        cfg.randaugment_m,
                        &mut rng,
                    );
                    to_chw(&view, cfg.mean, cfg.std, strong_out);
                }
                Ok(UnlabeledBatch {
                    weak,
                    strong,
                    n: indices.len(),
                    size,
                    known_labels,
                })
            },
        );
        Ok(UnlabeledLoader { pipeline })
    }

    pub fn next_batch(&mut self) -> anyhow::Result<UnlabeledBatch> {
        self.pipeline.next()
    }

    /// The index of the batch the next call returns (for checkpoints).
    pub fn next_batch_index(&self) -> u64 {
        self.pipeline.next_batch
    }

    /// Images skipped so far because they could not be decoded.
    pub fn skipped(&self) -> SkipReport {
        self.pipeline.skipped.report()
    }
}

/// Every item once, in dataset order, with the eval transform (no augmentation); the last
/// batch may be short. Items that cannot be decoded are left out, counted, and reported once
/// when the iterator is exhausted (see [`EvalBatches::skipped`]).
pub fn eval_batches<'a>(dataset: &'a Dataset, cfg: &LoaderConfig) -> EvalBatches<'a> {
    EvalBatches {
        dataset,
        cfg: cfg.clone(),
        next: 0,
        skipped: SkippedImages::default(),
        reported: false,
    }
}

/// The iterator [`eval_batches`] returns.
pub struct EvalBatches<'a> {
    dataset: &'a Dataset,
    cfg: LoaderConfig,
    next: usize,
    skipped: SkippedImages,
    reported: bool,
}

impl EvalBatches<'_> {
    /// Items left out so far because they could not be decoded.
    pub fn skipped(&self) -> SkipReport {
        self.skipped.report()
    }
}

impl Iterator for EvalBatches<'_> {
    type Item = anyhow::Result<LabeledBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch_size = self.cfg.batch_size.max(1);
        if self.next >= self.dataset.len() {
            if !self.reported {
                self.reported = true;
                self.skipped
                    .report()
                    .warn(&format!("eval {}", self.dataset.name));
            }
            return None;
        }
        let end = (self.next + batch_size).min(self.dataset.len());
        let items = &self.dataset.items[self.next..end];
        self.next = end;
        let (cfg, skipped) = (&self.cfg, &self.skipped);
        let size = cfg.input_size as usize;
        // Per item: its transformed pixels and label, or None when it could not be decoded.
        type Transformed = anyhow::Result<Option<(Vec<f32>, u32)>>;
        let results: Vec<Transformed> = items
            .par_iter()
            .map(|item| {
                let label = item.label.ok_or_else(|| {
                    anyhow::anyhow!("{}: {} has no label", self.dataset.name, item.source.key())
                })?;
                match decode_rgb(&item.source, cfg.center_crop) {
                    Ok(image) => {
                        let mut out = vec![0.0; 3 * size * size];
                        eval_transform(&image, cfg.input_size, cfg.mean, cfg.std, &mut out);
                        Ok(Some((out, label.index() as u32)))
                    }
                    Err(error) => {
                        skipped.record(item.source.key(), &error);
                        Ok(None)
                    }
                }
            })
            .collect();
        let mut batch = LabeledBatch {
            images: Vec::new(),
            labels: Vec::new(),
            n: 0,
            size,
        };
        for result in results {
            match result {
                Ok(Some((pixels, label))) => {
                    batch.images.extend_from_slice(&pixels);
                    batch.labels.push(label);
                    batch.n += 1;
                }
                Ok(None) => {}
                Err(error) => return Some(Err(error)),
            }
        }
        Some(Ok(batch))
    }
}
