//! `--init FILE`: start from a torchvision/timm checkpoint saved as safetensors (for example
//! ImageNet resnet18), whose classifier usually has another number of classes.

use std::path::Path;

use anyhow::{bail, Context};
use candle_nn::VarMap;

use crate::export::read_tensors;

/// What [`load_init`] did, for the training log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitReport {
    /// Model tensors set from the file.
    pub loaded: Vec<String>,
    /// `fc.*` tensors kept at their fresh init because the file's shape differs (other class count).
    pub skipped_classifier: Vec<String>,
    /// File tensors the model has no use for.
    pub unused: Vec<String>,
}

/// Overwrites the variables of `varmap` (already built by `ResNet::new`) with the tensors of the
/// safetensors checkpoint at `path`. `fc.*` is skipped when its shape differs; any other missing
/// tensor or shape mismatch is an error naming the tensor, and nothing is changed then.
pub fn load_init(varmap: &VarMap, path: &Path) -> anyhow::Result<InitReport> {
    let data = varmap.data().lock().expect("VarMap mutex poisoned");
    let device = match data.values().next() {
        Some(var) => var.device().clone(),
        None => bail!("cannot load {}: the model has no variables yet", path.display()),
    };
    let tensors = read_tensors(path, &device)?;
    let mut report = InitReport::default();
    let mut updates = Vec::new();
    let mut problems = Vec::new();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let Some(tensor) = tensors.get(name) else {
            if name.starts_with("fc.") {
                report.skipped_classifier.push(name.clone());
            } else {
                problems.push(format!("missing tensor `{name}`"));
            }
            continue;
        };
        if tensor.dims() == var.dims() {
            updates.push((name.clone(), var, tensor));
        } else if name.starts_with("fc.") {
            report.skipped_classifier.push(name.clone());
        } else {
            problems.push(format!(
                "tensor `{name}` has shape {:?} in the file but the model needs {:?}{}",
                tensor.dims(),
                var.dims(),
                if name == "conv1.weight" {
                    " (a checkpoint for the other stem?)"
                } else {
                    ""
                }
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "cannot initialise from {}: {}",
            path.display(),
            problems.join("; ")
        );
    }
    for (name, var, tensor) in updates {
        let value = tensor.to_dtype(var.dtype())?;
        var.set(&value)
            .with_context(|| format!("setting `{name}` from {}", path.display()))?;
        report.loaded.push(name);
    }
    let mut unused: Vec<String> = tensors
        .keys()
        .filter(|k| !data.contains_key(*k))
        .cloned()
        .collect();
    unused.sort();
    report.unused = unused;
    Ok(report)
}
