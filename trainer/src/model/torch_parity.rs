//! The Rust ResNet against PyTorch/torchvision: fixtures made by tools/torch_reference.py hold
//! the input, eval and train logits, running statistics after one train-mode forward and
//! gradients of a cross-entropy loss, all computed by torchvision in float64; the weights are
//! regenerated here from the same counter-based hash, so the committed fixtures stay small.
//! PyTorch's own float32 result is within 1e-5 (relative to each tensor's largest value) of
//! that truth, recorded in each fixture's metadata; ours must be within 1e-4.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};

use super::{Arch, BnMode, ResNet, ResNetConfig, Stem};

/// Largest accepted max |ours - torch float64| / max |torch float64| per compared tensor.
const TOLERANCE: f32 = 1e-4;
/// The same for early-layer gradients, which pass back through many train-mode BatchNorms that
/// divide by small batch deviations. With candle's own kernels (`ops::set_fast_cpu_kernels(false)`)
/// they are within 1e-4; the fast CPU kernels measured 2.6e-3 on resnet50's
/// `layer1.0.downsample.0.weight` (f32 sums inside each plane), and Winograd F(2x2, 3x3), whose
/// rounding error scales with a whole 4x4 input tile rather than with each output, 4.0e-3 on
/// resnet18's `bn1.weight` (2.5e-6 with im2col for every convolution; the ops agree to ~1e-6 of
/// each other on every single convolution, `ops::winograd` tests). Winograd F(4x4, 3x3), which
/// rounds about ten times as coarsely (`ops::winograd::f4`) and takes the small-stem resnet18's
/// 48x48, 24x24 and 12x12 planes, measured 1.23e-2 on its `layer3.0.downsample.0.weight`
/// (2.1e-2 with 4x4 tiles on every 3x3 convolution, under 1e-3 with 2x2 tiles on every one).
/// A wrong graph is off by 1e-1 or more.
const DEEP_GRAD_TOLERANCE: f32 = 3e-2;

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    })
}

/// `n` values in [-1, 1): splitmix64 of (fnv1a64(name) + (i + 1) * golden), top 24 bits.
fn hash_uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(name);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f64 / (1u64 << 23) as f64 - 1.0
        })
        .collect()
}

/// The same values as `deterministic_value` in tools/torch_reference.py; `last_bn` is `bn3`
/// for resnet50 (its residual branches' last BatchNorm weights are scaled by 0.2 to keep the
/// test well conditioned) and empty for resnet18.
fn deterministic_value(name: &str, dims: &[usize], last_bn: &str) -> candle_core::Result<Tensor> {
    let u = hash_uniform(name, dims.iter().product());
    let is_last_bn = !last_bn.is_empty()
        && name.starts_with("layer")
        && name.ends_with(&format!(".{last_bn}.weight"));
    let values: Vec<f32> = if is_last_bn {
        u.iter().map(|v| ((1.0 + 0.2 * v) * 0.2) as f32).collect()
    } else if name.ends_with("running_var") {
        u.iter().map(|v| (1.0 + 0.5 * v) as f32).collect()
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        u.iter().map(|v| (0.1 * v) as f32).collect()
    } else if dims.len() == 1 {
        u.iter().map(|v| (1.0 + 0.2 * v) as f32).collect()
    } else {
        let fan_in: usize = dims[1..].iter().product();
        let scale = if dims.len() == 4 {
            (6.0 / fan_in as f64).sqrt()
        } else {
            1.0 / (fan_in as f64).sqrt()
        };
        u.iter().map(|v| (v * scale) as f32).collect()
    };
    Tensor::from_vec(values, dims, &Device::Cpu)
}

fn fixture(name: &str) -> anyhow::Result<HashMap<String, Tensor>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model")
        .join(name);
    crate::export::read_tensors(&path, &Device::Cpu)
}

/// max |got - want| relative to max |want| (absolute when `want` is all near zero).
fn relative_error(got: &Tensor, want: &Tensor) -> anyhow::Result<f32> {
    assert_eq!(got.dims(), want.dims());
    let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
    Ok(diff / scale)
}

fn check(what: &str, got: &Tensor, want: &Tensor, tolerance: f32) -> anyhow::Result<()> {
    let err = relative_error(got, want)?;
    assert!(
        err < tolerance,
        "{what}: relative error {err:e} exceeds {tolerance:e}"
    );
    Ok(())
}

fn compare_with_torch(
    arch: Arch,
    stem: Stem,
    size: usize,
    file: &str,
    grad_tolerance: f32,
) -> anyhow::Result<()> {
    let reference = fixture(file)?;
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let config = ResNetConfig {
        arch,
        stem,
        num_classes: 7,
        input_size: size,
    };
    let model = ResNet::new(&config, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    {
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter() {
            let last_bn = if arch.is_bottleneck() { "bn3" } else { "" };
            var.set(&deterministic_value(name, var.dims(), last_bn)?)?;
        }
    }
    let x = &reference["input"];
    let eval = model.forward_with(x, BnMode::Eval)?;
    check("eval logits", &eval, &reference["logits_eval"], TOLERANCE)?;
    // A no-update train pass must agree with the updating one and leave statistics alone.
    let no_update = model.forward_with(x, BnMode::TrainNoStatsUpdate)?;
    check(
        "train logits (no stats update)",
        &no_update,
        &reference["logits_train"],
        TOLERANCE,
    )?;
    let train = model.forward_with(x, BnMode::Train)?;
    check(
        "train logits",
        &train,
        &reference["logits_train"],
        TOLERANCE,
    )?;
    let labels = reference["labels"].to_dtype(DType::U32)?;
    let loss = candle_nn::loss::cross_entropy(&train, &labels)?;
    check("loss", &loss.reshape(1)?, &reference["loss"], TOLERANCE)?;
    let grads = loss.backward()?;
    let data = varmap.data().lock().unwrap();
    let mut compared = 0;
    for (key, want) in &reference {
        if let Some(name) = key.strip_prefix("grad.") {
            let grad = grads.get(data[name].as_tensor()).expect("gradient");
            check(key, grad, want, grad_tolerance)?;
            compared += 1;
        } else if let Some(name) = key.strip_prefix("stat.") {
            check(key, data[name].as_tensor(), want, TOLERANCE)?;
            compared += 1;
        }
    }
    assert!(compared >= 6, "fixture {file} holds too little to compare");
    // The reference's argmax agrees too (a sanity check of the class order).
    let ours: Vec<u32> = eval.argmax(D::Minus1)?.to_vec1()?;
    let theirs: Vec<u32> = reference["logits_eval"].argmax(D::Minus1)?.to_vec1()?;
    assert_eq!(ours, theirs);
    Ok(())
}

#[test]
fn hash_matches_python_reference_values() {
    // tools/torch_reference.py: hash_uniform("input", 3), fnv1a64("conv1.weight").
    assert_eq!(
        hash_uniform("input", 3),
        [
            -0.8043633699417114,
            0.30472075939178467,
            -0.5927515029907227
        ]
    );
    assert_eq!(fnv1a64("conv1.weight"), 0x69a2_9a2c_ee47_d254);
}

#[test]
fn resnet18_small_stem_matches_torchvision() -> anyhow::Result<()> {
    compare_with_torch(
        Arch::Resnet18,
        Stem::Small,
        48,
        "resnet18_small48.safetensors",
        DEEP_GRAD_TOLERANCE,
    )
}

#[test]
fn resnet50_imagenet_stem_matches_torchvision() -> anyhow::Result<()> {
    compare_with_torch(
        Arch::Resnet50,
        Stem::Imagenet,
        64,
        "resnet50_imagenet64.safetensors",
        DEEP_GRAD_TOLERANCE,
    )
}
