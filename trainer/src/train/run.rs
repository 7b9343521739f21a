//! The run loop shared by `--method sl` and `--method meta`: run folder, data, networks,
//! schedules, periodic evaluation, JSON-lines metrics, atomic checkpoints and bit-for-bit resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::alignment::{self, PseudoMarginal};
use super::checkpoint;
use super::config::{Method, TrainConfig};
use super::device::parse_device;
use super::meta::{self, MetaState, StepRates};
use super::metrics_log::{self, MetricsLog, StepRecord};
use super::network::Network;
use super::sl;
use crate::data::{self, Dataset, DatasetSpec, LabeledLoader, LoaderConfig, UnlabeledLoader};
use crate::eval::Metrics;
use crate::export::ModelMeta;
use crate::model::ResNetConfig;

/// File names inside a run folder.
pub const CONFIG_FILE: &str = "config.toml";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const SUBSET_FILE: &str = "subset.txt";
pub const BEST_FILE: &str = "best_base.safetensors";

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Continue from the run folder's checkpoint (with the config stored there).
    pub resume: bool,
    /// Return after this many steps as if the process had been killed right after them (tests).
    pub stop_after: Option<u64>,
    /// Show progress bars.
    pub progress: bool,
}

#[derive(Clone, Debug)]
pub struct RunSummary {
    pub steps: u64,
    pub seconds: f64,
    /// The last evaluation of B on the validation set.
    pub base_metrics: Option<Metrics>,
    pub adaptation_metrics: Option<Metrics>,
}

/// Trains as configured, writing everything to `options.out`.
pub fn train(config: TrainConfig, options: &RunOptions) -> anyhow::Result<RunSummary> {
    let started = Instant::now();
    let config = config.with_method_defaults();
    let out = &options.out;
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating run folder {}", out.display()))?;
    let checkpoint_path = out.join(CHECKPOINT_FILE);
    let config = if options.resume {
        if !checkpoint_path.exists() {
            bail!(
                "--resume: {} has no {CHECKPOINT_FILE} to resume from",
                out.display()
            );
        }
        let stored = TrainConfig::from_toml_file(&out.join(CONFIG_FILE))?;
        if stored != config && !config.labeled.is_empty() {
            tracing::warn!(
                "--resume uses the config stored in the run folder; other settings are ignored"
            );
        }
        stored
    } else {
        if checkpoint_path.exists() {
            bail!(
                "{} already holds a run (it has {CHECKPOINT_FILE}): pass --resume to continue it, \
                 or choose another --out",
                out.display()
            );
        }
        config.validate()?;
        crate::atomic::write_atomically(&out.join(CONFIG_FILE), config.to_toml()?.as_bytes())?;
        config
    };
    let device = parse_device(&config.device)?;
    let data = RunData::prepare(&config, out, options)?;
    let net_config = ResNetConfig {
        arch: config.model.arch,
        stem: config.model.stem,
        num_classes: data.num_classes,
        input_size: config.model.input_size,
    };
    let init = config.model.init.as_deref();
    let mut base = Network::new(
        "base",
        &net_config,
        init,
        &device,
        config.sgd.clone(),
        config.schedule.clone(),
        config.ema_decay,
        config.seed,
    )?;
    let mut adaptation = match config.method {
        Method::Sl => None,
        Method::Meta => Some(Network::new(
            "adaptation",
            &net_config,
            init,
            &device,
            config.sgd.clone(),
            config.meta.adaptation_schedule.clone(),
            None,
            config.seed.wrapping_add(1),
        )?),
    };
    base.model.freeze_batch_norm(config.model.freeze_batch_norm);
    if let Some(a) = &mut adaptation {
        a.model.freeze_batch_norm(config.model.freeze_batch_norm);
    }

    let mut start_step = 0;
    let mut meta_state = MetaState::default();
    let mut best_mean_acc = f64::NEG_INFINITY;
    if options.resume {
        let (tensors, metadata) = checkpoint::load(&checkpoint_path, &device)?;
        base.restore(&tensors)?;
        if let Some(a) = &mut adaptation {
            a.restore(&tensors)?;
        }
        let field = |key: &str| -> anyhow::Result<f64> {
            metadata
                .get(key)
                .with_context(|| format!("checkpoint metadata has no `{key}`"))?
                .parse::<f64>()
                .with_context(|| format!("checkpoint metadata `{key}` is not a number"))
        };
        start_step = field("step")? as u64;
        meta_state.feedback_baseline = field("feedback_baseline")?;
        // Checkpoints written before the run bound existed have no sum; theirs was 0.
        if metadata.contains_key("feedback_run_sum") {
            meta_state.feedback_run_sum = field("feedback_run_sum")?;
        }
        // Likewise for distribution alignment's running mean; theirs was not kept.
        if let Some(text) = metadata.get(alignment::METADATA_KEY) {
            meta_state.pseudo_marginal = PseudoMarginal::from_metadata(text)?;
        }
        best_mean_acc = field("best_mean_class_acc")?;
        tracing::info!("resuming {} at step {start_step}", out.display());
    }

    let meta_steps = if config.method == Method::Meta {
        config.steps
    } else {
        0
    };
    let total_steps = config.steps
        + if config.method == Method::Meta {
            config.meta.finetune_steps
        } else {
            0
        };
    let mut labeled = LabeledLoader::new(
        data.labeled.clone(),
        &loader_config(&config, config.batch_size, 0),
        config.draws_balanced_batches(),
        start_step,
    )?;
    let mut unlabeled = match (&data.unlabeled, config.method) {
        (Some(u), Method::Meta) if start_step < meta_steps => Some(UnlabeledLoader::new(
            u.clone(),
            &loader_config(&config, config.batch_size * config.meta.mu, 1),
            start_step,
        )?),
        _ => None,
    };
    let mut log = MetricsLog::open(
        &out.join(METRICS_FILE),
        options.resume.then_some(start_step),
    )?;
    let bar = progress_bar(options.progress, total_steps, start_step);
    let mut window: Vec<StepRecord> = Vec::new();
    let mut window_started = Instant::now();
    let mut summary = RunSummary {
        steps: start_step,
        seconds: 0.0,
        base_metrics: None,
        adaptation_metrics: None,
    };

    for step in start_step..total_steps {
        let labeled_batch = labeled.next_batch()?;
        let record = match (&mut adaptation, &mut unlabeled) {
            (Some(a), Some(u)) if step < meta_steps => {
                let unlabeled_batch = u.next_batch()?;
                let rates = StepRates {
                    lr_base: base.schedule.lr_at(step, meta_steps),
                    lr_adaptation: a.schedule.lr_at(step, meta_steps),
                    step,
                };
                meta::step(
                    &mut base,
                    a,
                    &labeled_batch,
                    &unlabeled_batch,
                    &rates,
                    &config.meta,
                    config.label_smoothing,
                    &mut meta_state,
                    &device,
                )?
            }
            _ => {
                // SL, or B's fine-tuning after the meta phase (at the schedule's final rate).
                let lr = if step < meta_steps || meta_steps == 0 {
                    base.schedule.lr_at(step, total_steps)
                } else {
                    base.schedule
                        .lr_at(meta_steps.saturating_sub(1), meta_steps)
                        .max(base.schedule.lr * 0.01)
                };
                sl::step(
                    &mut base,
                    &labeled_batch,
                    lr,
                    config.label_smoothing,
                    &device,
                )?
            }
        };
        anyhow::ensure!(
            record.0.get("loss").is_some_and(|l| l.is_finite()),
            "step {}: the loss is not finite ({:?}); lower the learning rate",
            step + 1,
            record.0.get("loss")
        );
        window.push(record);
        let done = step + 1;
        bar.inc(1);
        if done % config.log_every.max(1) == 0 || done == total_steps {
            let images = window.len() * labeled_batch.n;
            let mut line = metrics_log::summarise(&window);
            line.insert("kind".into(), json!("train"));
            line.insert("step".into(), json!(done));
            line.insert(
                "labeled_images_per_s".into(),
                json!(images as f64 / window_started.elapsed().as_secs_f64().max(1e-9)),
            );
            bar.set_message(format!(
                "loss {:.3} acc {:.3}",
                line.get("loss").and_then(Value::as_f64).unwrap_or(f64::NAN),
                line.get("train_acc")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN)
            ));
            log.write(&Value::Object(line))?;
            window.clear();
            window_started = Instant::now();
        }
        let eval_now =
            config.eval_every > 0 && (done % config.eval_every == 0 || done == total_steps);
        if let (true, Some(val)) = (eval_now, &data.val) {
            let metrics = evaluate(&base, val, &config, &device)?;
            log.write(&eval_record(done, "base", &metrics))?;
            bar.println(format!(
                "step {done}: base val acc {:.4} mean class acc {:.4} std {:.4}",
                metrics.overall_acc, metrics.mean_class_acc, metrics.std_class_acc
            ));
            if metrics.mean_class_acc > best_mean_acc {
                best_mean_acc = metrics.mean_class_acc;
                let meta = inference_meta(&config, &base, done, &metrics);
                crate::export::write_weights(
                    &out.join(BEST_FILE),
                    &sorted(base.inference_tensors()?),
                    &meta,
                )?;
            }
            summary.base_metrics = Some(metrics);
            if let Some(a) = &adaptation {
                let metrics = evaluate(a, val, &config, &device)?;
                log.write(&eval_record(done, "adaptation", &metrics))?;
                summary.adaptation_metrics = Some(metrics);
            }
        }
        if done % config.checkpoint_every.max(1) == 0 || done == total_steps {
            let mut tensors = HashMap::new();
            base.checkpoint_tensors(&mut tensors);
            if let Some(a) = &adaptation {
                a.checkpoint_tensors(&mut tensors);
            }
            let metadata = HashMap::from([
                ("step".to_string(), done.to_string()),
                (
                    "feedback_baseline".to_string(),
                    format!("{:e}", meta_state.feedback_baseline),
                ),
                (
                    "feedback_run_sum".to_string(),
                    format!("{:e}", meta_state.feedback_run_sum),
                ),
                (
                    alignment::METADATA_KEY.to_string(),
                    meta_state.pseudo_marginal.to_metadata(),
                ),
                (
                    "best_mean_class_acc".to_string(),
                    format!("{best_mean_acc:e}"),
                ),
                ("config".to_string(), config.to_toml()?),
            ]);
            checkpoint::save(&checkpoint_path, &tensors, metadata)?;
        }
        summary.steps = done;
        if options.stop_after == Some(done) {
            bar.abandon();
            return Ok(summary);
        }
        if done == meta_steps {
            unlabeled = None; // fine-tuning needs no unlabeled batches: stop their workers
        }
    }
    bar.finish();
    write_plots(out, summary.base_metrics.as_ref())?;
    summary.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "finished {} steps in {:.0} s",
        summary.steps,
        summary.seconds
    );
    Ok(summary)
}

/// The datasets of a run: labeled (possibly a subset), validation and unlabeled, preloaded.
struct RunData {
    labeled: Dataset,
    val: Option<Dataset>,
    unlabeled: Option<Dataset>,
    num_classes: usize,
}

impl RunData {
    fn prepare(config: &TrainConfig, out: &Path, options: &RunOptions) -> anyhow::Result<Self> {
        let spec: DatasetSpec = config.labeled.parse()?;
        let full = data::load_dataset(&spec)?;
        anyhow::ensure!(
            full.is_labeled(),
            "{spec}: the labeled data has unlabeled items"
        );
        let subset_path = out.join(SUBSET_FILE);
        let labeled = if options.resume && subset_path.exists() {
            data::subset::read_list(&subset_path, &full)?
        } else if let Some(list) = &config.subset_list {
            data::subset::read_list(list, &full)?
        } else if config.labeled_fraction < 1.0 {
            if config.balanced {
                data::subset::balanced_fraction(&full, config.labeled_fraction, config.seed)?
            } else {
                data::subset::stratified_fraction(&full, config.labeled_fraction, config.seed)?
            }
        } else {
            full.clone()
        };
        if labeled.len() != full.len() || config.subset_list.is_some() {
            data::subset::write_list(&labeled, &subset_path)?;
            tracing::info!(
                "labeled subset ({} images) listed in {}",
                labeled.len(),
                subset_path.display()
            );
        }
        let (preload_labeled, preload_unlabeled) = preload_options(config, options.progress);
        let (labeled, _) = data::preload(&labeled, &preload_labeled)?;
        let val = match &config.val {
            Some(v) => Some(data::preload(&data::load_dataset(&v.parse()?)?, &preload_labeled)?.0),
            None => None,
        };
        let unlabeled = match (&config.unlabeled, config.method) {
            (Some(u), Method::Meta) => {
                Some(data::preload(&data::load_dataset(&u.parse()?)?, &preload_unlabeled)?.0)
            }
            _ => None,
        };
        let num_classes = full.num_classes;
        Ok(Self {
            labeled,
            val,
            unlabeled,
            num_classes,
        })
    }
}

/// How a run preloads its labeled (and validation) images and its unlabeled ones: shrunk to
/// the input size, the unlabeled centre-cropped to the face first.
pub(crate) fn preload_options(
    config: &TrainConfig,
    progress: bool,
) -> (data::PreloadOptions, data::PreloadOptions) {
    let labeled = data::PreloadOptions {
        max_short_side: config.model.input_size as u32,
        center_crop: 1.0,
        progress,
    };
    let unlabeled = data::PreloadOptions {
        center_crop: config.unlabeled_center_crop,
        ..labeled.clone()
    };
    (labeled, unlabeled)
}

/// The loader settings of a run; `stream` separates the seeds of its loaders.
pub(crate) fn loader_config(config: &TrainConfig, batch_size: usize, stream: u64) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        input_size: config.model.input_size as u32,
        mean: config.mean,
        std: config.std,
        workers: config.workers,
        prefetch: config.prefetch,
        seed: config.seed.wrapping_mul(1_000_003).wrapping_add(stream),
        random_erasing: config.random_erasing,
        ..LoaderConfig::default()
    }
}

/// Evaluates a network (its EMA weights when enabled) on `val` in eval mode.
pub fn evaluate(
    net: &Network,
    val: &Dataset,
    config: &TrainConfig,
    device: &Device,
) -> anyhow::Result<Metrics> {
    let loader = loader_config(config, 256, 2);
    net.with_inference_weights(|model| {
        let batches = data::eval_batches(val, &loader).map(|batch| {
            let batch = batch?;
            Ok((batch.to_tensor(device)?, batch.labels.clone()))
        });
        crate::eval::evaluate(model, batches, device)
    })
}

fn eval_record(step: u64, net: &str, metrics: &Metrics) -> Value {
    let mut value = metrics.to_json();
    if let Value::Object(map) = &mut value {
        map.insert("kind".into(), json!("eval"));
        map.insert("net".into(), json!(net));
        map.insert("step".into(), json!(step));
    }
    value
}

/// Header metadata for B's inference weights written from a run.
pub fn inference_meta(
    config: &TrainConfig,
    net: &Network,
    step: u64,
    metrics: &Metrics,
) -> ModelMeta {
    let mut meta = ModelMeta::new(&net.config);
    meta.mean = config.mean;
    meta.std = config.std;
    let method = match config.method {
        Method::Sl => "sl",
        Method::Meta => "meta",
    };
    meta.extra.insert("method".into(), method.into());
    meta.extra.insert("net".into(), net.role.into());
    meta.extra.insert("data".into(), data_description(config));
    meta.extra.insert("steps".into(), step.to_string());
    meta.extra.insert(
        "val_overall_acc".into(),
        format!("{:.4}", metrics.overall_acc),
    );
    meta.extra.insert(
        "val_mean_class_acc".into(),
        format!("{:.4}", metrics.mean_class_acc),
    );
    meta.extra.insert(
        "val_std_class_acc".into(),
        format!("{:.4}", metrics.std_class_acc),
    );
    meta
}

pub fn data_description(config: &TrainConfig) -> String {
    let mut text = format!("labeled={}", config.labeled);
    if config.labeled_fraction < 1.0 {
        text += &format!(
            " fraction={}{}",
            config.labeled_fraction,
            if config.balanced { " balanced" } else { "" }
        );
    }
    if let (Method::Meta, Some(u)) = (config.method, &config.unlabeled) {
        text += &format!(" unlabeled={u}");
    }
    text
}

pub fn sorted(tensors: HashMap<String, candle_core::Tensor>) -> Vec<(String, candle_core::Tensor)> {
    let mut v: Vec<_> = tensors.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn progress_bar(show: bool, total: u64, start: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "train [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta}) {msg}",
        )
        .expect("static progress template"),
    );
    bar.set_position(start);
    bar
}

/// Training curves (and the last confusion matrix) as PNGs next to the metrics log.
pub fn write_plots(out: &Path, last: Option<&Metrics>) -> anyhow::Result<()> {
    let records = metrics_log::read_records(&out.join(METRICS_FILE))?;
    let mut series = Vec::new();
    for key in [
        "loss",
        "loss_s",
        "loss_c",
        "loss_u",
        "loss_f",
        "f",
        "loss_judge",
        "mask_rate",
        "train_acc",
    ] {
        let s = metrics_log::series(&records, "train", key);
        if !s.is_empty() {
            series.push((key, s));
        }
    }
    if !series.is_empty() {
        crate::plot::curves_png(&out.join("curves.png"), "training", &series)?;
    }
    let val: Vec<_> = ["overall_acc", "mean_class_acc", "std_class_acc"]
        .into_iter()
        .map(|k| {
            let points = records
                .iter()
                .filter(|r| r.get("kind").and_then(Value::as_str) == Some("eval"))
                .filter(|r| r.get("net").and_then(Value::as_str) == Some("base"))
                .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(k)?.as_f64()?)))
                .collect::<Vec<_>>();
            (k, points)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if !val.is_empty() {
        crate::plot::curves_png(
            &out.join("val_curves.png"),
            "validation (base network)",
            &val,
        )?;
    }
    if let Some(metrics) = last {
        crate::plot::confusion_png(&out.join("confusion.png"), metrics)?;
    }
    Ok(())
}
