//! The work behind `face2exp eval` and `face2exp export`, as library calls so tests and other
//! tools can use them without the CLI.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};

use crate::data::{self, DatasetSpec, LoaderConfig};
use crate::eval::{Metrics, Tta};
use crate::export::{self, ModelMeta};
use crate::model::ResNetConfig;
use crate::train::checkpoint;
use crate::train::device::parse_device;
use crate::train::run::{sorted, BEST_FILE, CHECKPOINT_FILE};
use crate::train::TrainConfig;

/// Evaluates inference weights on a labeled dataset, preprocessing as the file's metadata says.
/// Corrupt images are skipped, counted and reported by the loader. `tta` adds test-time
/// augmentation (see [`Tta`]).
pub fn eval_weights(
    weights: &Path,
    spec: &DatasetSpec,
    device: &str,
    batch_size: usize,
    tta: Tta,
) -> anyhow::Result<Metrics> {
    let device = parse_device(device)?;
    let (model, meta) = export::load_model(weights, &device)?;
    let dataset = data::load_dataset(spec)?;
    anyhow::ensure!(
        dataset.is_labeled(),
        "{spec}: evaluation needs labeled data"
    );
    anyhow::ensure!(
        dataset.num_classes <= meta.classes.len(),
        "{spec} has {} classes but {} predicts only {}",
        dataset.num_classes,
        weights.display(),
        meta.classes.len()
    );
    let loader = LoaderConfig {
        batch_size,
        input_size: meta.input_size as u32,
        mean: meta.mean,
        std: meta.std,
        ..LoaderConfig::default()
    };
    let batches = data::eval_batches(&dataset, &loader).map(|batch| {
        let batch = batch?;
        Ok((batch.to_tensor(&device)?, batch.labels.clone()))
    });
    crate::eval::evaluate_with(&model, batches, &device, tta)
}

/// Writes the inference weights of network `net` (`base` or `adaptation`) of a run folder.
/// `best` takes B's best-on-validation weights (`best_base.safetensors`) instead of the last.
pub fn export_run(run: &Path, net: &str, best: bool, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        net == "base" || net == "adaptation",
        "--net must be `base` or `adaptation`, got `{net}`"
    );
    if best {
        anyhow::ensure!(
            net == "base",
            "--from best exists only for the base network"
        );
        let path = run.join(BEST_FILE);
        let (tensors, meta) = export::read_weights(&path, &Device::Cpu).with_context(|| {
            format!(
                "{} has no best weights (was validation data given?)",
                run.display()
            )
        })?;
        return export::write_weights(out, &sorted(tensors), &meta);
    }
    let path = run.join(CHECKPOINT_FILE);
    let (tensors, metadata) = checkpoint::load(&path, &Device::Cpu)?;
    let config: TrainConfig = toml::from_str(
        metadata
            .get("config")
            .with_context(|| format!("{}: checkpoint has no stored config", path.display()))?,
    )
    .with_context(|| format!("{}: stored config does not parse", path.display()))?;
    let weights = network_weights(&tensors, net)
        .with_context(|| format!("{} holds no `{net}` network", path.display()))?;
    let fc = weights
        .get("fc.weight")
        .with_context(|| format!("{}: `{net}` has no fc.weight", path.display()))?;
    let net_config = ResNetConfig {
        arch: config.model.arch,
        stem: config.model.stem,
        num_classes: fc.dim(0)?,
        input_size: config.model.input_size,
    };
    let mut meta = ModelMeta::new(&net_config);
    meta.mean = config.mean;
    meta.std = config.std;
    meta.extra.insert(
        "method".into(),
        toml::Value::try_from(config.method)?
            .as_str()
            .unwrap_or("")
            .into(),
    );
    meta.extra.insert("net".into(), net.into());
    meta.extra
        .insert("data".into(), crate::train::run::data_description(&config));
    if let Some(step) = metadata.get("step") {
        meta.extra.insert("steps".into(), step.clone());
    }
    // Check the weights build the network they claim before writing them out.
    export::model_from_tensors(&path, &net_config, weights.clone(), &Device::Cpu)?;
    export::write_weights(out, &sorted(weights), &meta)
}

/// A network's inference weights from checkpoint tensors: its EMA copy when one was kept.
fn network_weights(
    tensors: &HashMap<String, Tensor>,
    net: &str,
) -> Option<HashMap<String, Tensor>> {
    let pick = |prefix: String| -> HashMap<String, Tensor> {
        tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|n| (n.to_string(), t.clone())))
            .filter(|(n, _)| !n.starts_with("momentum.") && !n.starts_with("ema."))
            .collect()
    };
    let ema = pick(format!("{net}.ema."));
    let live = pick(format!("{net}."));
    let chosen = if ema.is_empty() { live } else { ema };
    (!chosen.is_empty()).then_some(chosen)
}
