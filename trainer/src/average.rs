//! `face2exp average`: the uniform average of several weights files of one network ("model
//! soup", Wortsman et al., ICML 2022; stochastic weight averaging, Izmailov et al., UAI 2018).
//!
//! Checkpoints of one training trajectory (a run's EMA weights at different steps, or runs
//! continued from one another) lie in one basin of the loss, and their average generalises
//! better than its members. It only makes sense for such related files: averaging two
//! independently trained networks gives garbage, which nothing here can detect, so the files
//! must at least describe the same network (same metadata and tensors).
//!
//! BatchNorm running statistics are averaged like every other tensor rather than recomputed on
//! training data; for close members the difference is small (docs/RESULTS.md measures the
//! shipped average on val).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor};

use crate::export::{self, ModelMeta};

/// Header keys that describe one trained file and would be wrong for the average: the
/// validation figures, the step, and the members' own provenance.
fn describes_one_member(key: &str) -> bool {
    key.starts_with("val_") || key == "steps" || key == "averaged_from"
}

/// Averages the weights files `inputs` (at least two, same network) and writes the result to
/// `out` atomically, with the network description they share, their other header keys minus
/// the per-file figures, plus `averaged_from` naming the members. Where the members' descriptive
/// keys (`method`, `data`, ...) disagree, the average records every distinct value, so a soup
/// of supervised and Meta-Face2Exp checkpoints does not claim to be either alone. Returns the
/// written metadata.
pub fn average_weights(inputs: &[PathBuf], out: &Path) -> anyhow::Result<ModelMeta> {
    ensure!(
        inputs.len() >= 2,
        "averaging needs at least two weights files, got {}",
        inputs.len()
    );
    let (first_path, rest) = inputs.split_first().expect("two or more");
    let (first, meta) = export::read_weights(first_path, &Device::Cpu)?;
    let mut member_extras = vec![meta.extra.clone()];
    // Running sums in f64, so the result does not depend on the order of the files.
    let mut sums: BTreeMap<String, (Vec<usize>, Vec<f64>)> = BTreeMap::new();
    for (name, tensor) in &first {
        sums.insert(name.clone(), (tensor.dims().to_vec(), to_f64(tensor)?));
    }
    for path in rest {
        let (tensors, other) = export::read_weights(path, &Device::Cpu)?;
        check_same_network(first_path, &meta, path, &other)?;
        member_extras.push(other.extra);
        add_into(&mut sums, first_path, path, &tensors)?;
    }
    let count = inputs.len() as f64;
    let mut averaged = Vec::with_capacity(sums.len());
    let mut by_name = HashMap::with_capacity(sums.len());
    for (name, (dims, sum)) in sums {
        let values: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let tensor = Tensor::from_vec(values, dims, &Device::Cpu)?;
        by_name.insert(name.clone(), tensor.clone());
        averaged.push((name, tensor));
    }
    // The average must still build the network its metadata names.
    export::model_from_tensors(first_path, &meta.config(), by_name, &Device::Cpu)?;
    let mut out_meta = meta;
    out_meta.extra = merged_descriptions(&member_extras);
    let members: Vec<String> = inputs
        .iter()
        .map(|p| {
            p.file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into())
        })
        .collect();
    out_meta
        .extra
        .insert("averaged_from".into(), members.join(","));
    export::write_weights(out, &averaged, &out_meta)?;
    Ok(out_meta)
}

/// The members' header keys, minus those that describe one file: a key's value where every
/// member that has it agrees, else its distinct values in member order joined by " | ".
fn merged_descriptions(members: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for extra in members {
        for (key, value) in extra {
            if describes_one_member(key) {
                continue;
            }
            let seen = values.entry(key.clone()).or_default();
            if !seen.contains(&value.as_str()) {
                seen.push(value);
            }
        }
    }
    values
        .into_iter()
        .map(|(key, distinct)| (key, distinct.join(" | ")))
        .collect()
}

fn to_f64(tensor: &Tensor) -> anyhow::Result<Vec<f64>> {
    Ok(tensor
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?)
}

/// The network-defining metadata of `other` must equal that of the first file.
fn check_same_network(
    first_path: &Path,
    first: &ModelMeta,
    path: &Path,
    other: &ModelMeta,
) -> anyhow::Result<()> {
    let differs = |what: &str, a: String, b: String| -> anyhow::Result<()> {
        if a != b {
            bail!(
                "{} is a different network from {}: {what} {b} vs {a}",
                path.display(),
                first_path.display()
            );
        }
        Ok(())
    };
    differs("arch", first.arch.to_string(), other.arch.to_string())?;
    differs("stem", first.stem.to_string(), other.stem.to_string())?;
    differs(
        "input_size",
        first.input_size.to_string(),
        other.input_size.to_string(),
    )?;
    differs("classes", first.classes.join(","), other.classes.join(","))?;
    differs(
        "mean",
        format!("{:?}", first.mean),
        format!("{:?}", other.mean),
    )?;
    differs(
        "std",
        format!("{:?}", first.std),
        format!("{:?}", other.std),
    )?;
    differs(
        "preprocess",
        format!("{:?}", first.extra.get("preprocess")),
        format!("{:?}", other.extra.get("preprocess")),
    )
}

/// Adds the tensors of `path` to the running sums; every tensor of the first file must be
/// there with the same shape, and no other.
fn add_into(
    sums: &mut BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    first_path: &Path,
    path: &Path,
    tensors: &HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    if let Some(extra) = tensors.keys().find(|name| !sums.contains_key(*name)) {
        bail!(
            "{}: tensor `{extra}` is not in {}",
            path.display(),
            first_path.display()
        );
    }
    for (name, (dims, sum)) in sums.iter_mut() {
        let tensor = tensors
            .get(name)
            .with_context(|| format!("{}: missing tensor `{name}`", path.display()))?;
        ensure!(
            tensor.dims() == dims.as_slice(),
            "{}: tensor `{name}` has shape {:?}, {} has {:?}",
            path.display(),
            tensor.dims(),
            first_path.display(),
            dims
        );
        for (s, v) in sum.iter_mut().zip(to_f64(tensor)?) {
            *s += v;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
