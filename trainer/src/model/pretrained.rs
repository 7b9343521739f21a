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
        None => bail!(
            "cannot load {}: the model has no variables yet",
            path.display()
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, ResNet, ResNetConfig, Stem};
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    fn build(stem: Stem, num_classes: usize) -> anyhow::Result<VarMap> {
        let varmap = VarMap::new();
        let config = ResNetConfig {
            arch: Arch::Resnet18,
            stem,
            num_classes,
            input_size: 64,
        };
        ResNet::new(
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        Ok(varmap)
    }

    /// An ImageNet-style checkpoint (1000 classes, `num_batches_tracked`) as torch saves it.
    fn imagenet_checkpoint(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
        let varmap = build(Stem::Imagenet, 1000)?;
        let mut tensors: HashMap<String, Tensor> =
            crate::export::varmap_tensors(&varmap).into_iter().collect();
        tensors.insert(
            "bn1.num_batches_tracked".into(),
            Tensor::new(10i64, &Device::Cpu)?,
        );
        candle_core::safetensors::save(&tensors, path)?;
        Ok(tensors)
    }

    #[test]
    fn imagenet_checkpoint_loads_everything_but_the_classifier() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("resnet18_imagenet.safetensors");
        let source = imagenet_checkpoint(&path)?;
        let varmap = build(Stem::Imagenet, 7)?;
        let fc_before = varmap.data().lock().unwrap()["fc.weight"]
            .as_tensor()
            .copy()?;
        let report = load_init(&varmap, &path)?;
        assert_eq!(report.loaded.len(), 100);
        assert_eq!(report.skipped_classifier, ["fc.bias", "fc.weight"]);
        assert!(report.unused.is_empty(), "{:?}", report.unused);
        let data = varmap.data().lock().unwrap();
        let same = |name: &str| -> anyhow::Result<f32> {
            Ok((data[name].as_tensor() - &source[name])?
                .abs()?
                .max_all()?
                .to_scalar()?)
        };
        assert_eq!(same("layer3.1.conv2.weight")?, 0.0);
        assert_eq!(same("layer2.0.downsample.1.running_var")?, 0.0);
        let fc_after = data["fc.weight"].as_tensor();
        let unchanged = (fc_after - &fc_before)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(unchanged, 0.0);
        Ok(())
    }

    #[test]
    fn a_stem_mismatch_is_an_error_naming_the_tensor() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("resnet18_imagenet.safetensors");
        imagenet_checkpoint(&path)?;
        let varmap = build(Stem::Small, 7)?;
        let err = load_init(&varmap, &path).unwrap_err().to_string();
        assert!(
            err.contains("`conv1.weight` has shape [64, 3, 7, 7]")
                && err.contains("resnet18_imagenet.safetensors"),
            "{err}"
        );
        Ok(())
    }
}
