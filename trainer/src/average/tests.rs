use super::*;
use crate::export::{read_weights, varmap_tensors, write_weights};
use crate::model::{Arch, ResNet, ResNetConfig, Stem};
use candle_nn::{VarBuilder, VarMap};

const CONFIG: ResNetConfig = ResNetConfig {
    arch: Arch::Resnet18,
    stem: Stem::Imagenet,
    num_classes: 7,
    input_size: 32,
};

/// A randomly initialised network written to `dir/name` with `val_*` and `steps` metadata.
fn write_member(dir: &Path, name: &str, config: &ResNetConfig) -> anyhow::Result<PathBuf> {
    let varmap = VarMap::new();
    ResNet::new(
        config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let mut meta = ModelMeta::new(config);
    meta.extra.insert("method".into(), "sl".into());
    meta.extra.insert("steps".into(), "3000".into());
    meta.extra.insert("val_overall_acc".into(), "0.6489".into());
    let path = dir.join(name);
    write_weights(&path, &varmap_tensors(&varmap), &meta)?;
    Ok(path)
}

#[test]
fn average_is_the_elementwise_mean_with_honest_metadata() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let members: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| write_member(dir.path(), &format!("{n}.safetensors"), &CONFIG))
        .collect::<anyhow::Result<_>>()?;
    let out = dir.path().join("soup.safetensors");
    average_weights(&members, &out)?;
    let (got, meta) = read_weights(&out, &Device::Cpu)?;
    let inputs: Vec<HashMap<String, Tensor>> = members
        .iter()
        .map(|p| Ok(read_weights(p, &Device::Cpu)?.0))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(got.len(), inputs[0].len());
    for (name, tensor) in &got {
        let want = ((&inputs[0][name] + &inputs[1][name])? + &inputs[2][name])? / 3.0;
        let diff = (tensor - want?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{name}: off by {diff}");
    }
    assert_eq!(
        meta.extra["averaged_from"],
        "a.safetensors,b.safetensors,c.safetensors"
    );
    assert_eq!(meta.extra["method"], "sl");
    assert!(!meta.extra.contains_key("steps"));
    assert!(!meta.extra.contains_key("val_overall_acc"));
    assert_eq!(meta.config(), CONFIG);
    // It loads as a network.
    export::load_model(&out, &Device::Cpu)?;
    Ok(())
}

#[test]
fn an_average_of_different_methods_names_them_all() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sl = write_member(dir.path(), "sl.safetensors", &CONFIG)?;
    let meta_run = write_member(dir.path(), "meta.safetensors", &CONFIG)?;
    let (tensors, mut meta) = read_weights(&meta_run, &Device::Cpu)?;
    meta.extra.insert("method".into(), "meta".into());
    meta.extra
        .insert("data".into(), "labeled=fer unlabeled=lfw".into());
    let tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    write_weights(&meta_run, &tensors, &meta)?;
    let out = dir.path().join("soup.safetensors");
    // The first member's method comes first; a key only some members have is kept.
    let merged = average_weights(&[sl.clone(), meta_run.clone(), sl], &out)?;
    assert_eq!(merged.extra["method"], "sl | meta");
    assert_eq!(merged.extra["data"], "labeled=fer unlabeled=lfw");
    assert_eq!(merged.extra["preprocess"], "resize-triangle");
    assert!(!merged.extra.contains_key("steps"));
    assert_eq!(read_weights(&out, &Device::Cpu)?.1.extra, merged.extra);
    Ok(())
}

#[test]
fn averaging_refuses_one_file_and_different_networks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = write_member(dir.path(), "a.safetensors", &CONFIG)?;
    let out = dir.path().join("soup.safetensors");
    let err = average_weights(std::slice::from_ref(&a), &out).unwrap_err();
    assert!(err.to_string().contains("at least two"), "{err:#}");

    let other = ResNetConfig {
        input_size: 48,
        ..CONFIG
    };
    let b = write_member(dir.path(), "b.safetensors", &other)?;
    let err = format!("{:#}", average_weights(&[a.clone(), b], &out).unwrap_err());
    assert!(
        err.contains("b.safetensors") && err.contains("input_size"),
        "{err}"
    );

    let deeper = ResNetConfig {
        arch: Arch::Resnet34,
        ..CONFIG
    };
    let c = write_member(dir.path(), "c.safetensors", &deeper)?;
    let err = format!("{:#}", average_weights(&[a, c], &out).unwrap_err());
    assert!(
        err.contains("c.safetensors") && err.contains("arch"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written on error");
    Ok(())
}
