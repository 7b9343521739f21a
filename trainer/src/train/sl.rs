//! One supervised step: cross-entropy on a labeled batch, SGD, EMA. This is the paper's SL
//! baseline and the fine-tuning phase after Meta-Face2Exp.

use candle_core::{DType, Device, Tensor, D};

use super::losses::cross_entropy;
use super::metrics_log::StepRecord;
use super::network::Network;
use crate::data::LabeledBatch;
use crate::model::BnMode;

pub fn step(
    net: &mut Network,
    batch: &LabeledBatch,
    lr: f64,
    label_smoothing: f64,
    device: &Device,
) -> anyhow::Result<StepRecord> {
    let x = batch.to_tensor(device)?;
    let y = batch.labels_tensor(device)?;
    let logits = net.model.forward_with(&x, BnMode::Train)?;
    let loss = cross_entropy(&logits, &y, label_smoothing)?;
    let grads = loss.backward()?;
    net.optimizer.step(&grads, lr)?;
    net.update_ema()?;
    let mut record = StepRecord::default();
    record.add("loss", loss.to_scalar::<f32>()? as f64);
    record.add("train_acc", batch_accuracy(&logits, &y)?);
    record.add("lr", lr);
    Ok(record)
}

/// Fraction of rows whose argmax equals the target.
pub fn batch_accuracy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<f64> {
    let hits = logits
        .argmax(D::Minus1)?
        .eq(&targets.to_dtype(DType::U32)?)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    Ok(hits as f64)
}
