//! ResNet-18/34/50 with torchvision's tensor names and shapes (Bottleneck v1.5: stride on the
//! 3x3 conv), written as small free functions over a `VarBuilder` scoped like the state dict,
//! after candle-transformers' resnet.rs. Heavy ops go through [`crate::ops`].

use candle_core::{Result, Tensor};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, Linear, Module, VarBuilder};

use super::batch_norm::{batch_norm2d, BatchNorm2d, BnMode};
use super::{Arch, ResNetConfig, Stem};
use crate::ops;

/// torchvision's conv init: `kaiming_normal_(mode="fan_out", nonlinearity="relu")`.
const CONV_INIT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// A bias-free square convolution.
#[derive(Clone, Debug)]
struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(x, &self.weight, self.stride, self.padding)
    }
}

fn conv(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv> {
    let weight = vb.get_with_hints((c_out, c_in, kernel, kernel), "weight", CONV_INIT)?;
    Ok(Conv {
        weight,
        stride,
        padding,
    })
}

/// `nn.Linear` with PyTorch's init: weight and bias uniform in +-1/sqrt(fan_in).
fn linear(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1. / (c_in as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let weight = vb.get_with_hints((c_out, c_in), "weight", init)?;
    let bias = vb.get_with_hints(c_out, "bias", init)?;
    Ok(Linear::new(weight, Some(bias)))
}

/// Conv followed by BatchNorm, the unit every block is made of.
#[derive(Clone, Debug)]
struct ConvBn {
    conv: Conv,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.bn.forward(&self.conv.forward(x)?, mode)
    }

    /// `relu(self.forward(x, mode))`, the ReLU fused into the BatchNorm where it can be.
    fn forward_relu(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.bn.forward_relu(&self.conv.forward(x)?, mode)
    }
}

/// `conv{i}` + `bn{i}` under the same `vb` (a block), as torchvision names them.
fn conv_bn(
    index: usize,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    vb: &VarBuilder,
) -> Result<ConvBn> {
    Ok(ConvBn {
        conv: conv(
            c_in,
            c_out,
            kernel,
            stride,
            kernel / 2,
            vb.pp(format!("conv{index}")),
        )?,
        bn: batch_norm2d(c_out, vb.pp(format!("bn{index}")))?,
    })
}

/// The projection shortcut: `downsample.0` (1x1 conv) and `downsample.1` (BatchNorm).
fn downsample(c_in: usize, c_out: usize, stride: usize, vb: VarBuilder) -> Result<ConvBn> {
    Ok(ConvBn {
        conv: conv(c_in, c_out, 1, stride, 0, vb.pp("0"))?,
        bn: batch_norm2d(c_out, vb.pp("1"))?,
    })
}

/// A BasicBlock (two convs) or Bottleneck (three convs) with its optional projection.
#[derive(Clone, Debug)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, unit) in self.convs.iter().enumerate() {
            y = if i < last {
                unit.forward_relu(&y, mode)?
            } else {
                unit.forward(&y, mode)?
            };
        }
        let shortcut = match &self.downsample {
            Some(projection) => projection.forward(x, mode)?,
            None => x.clone(),
        };
        ops::add_relu(&y, &shortcut)
    }
}

fn projection_if_needed(
    c_in: usize,
    c_out: usize,
    stride: usize,
    vb: &VarBuilder,
) -> Result<Option<ConvBn>> {
    if stride != 1 || c_in != c_out {
        Ok(Some(downsample(c_in, c_out, stride, vb.pp("downsample"))?))
    } else {
        Ok(None)
    }
}

/// torchvision `BasicBlock`: 3x3 (stride) -> 3x3.
fn basic_block(c_in: usize, planes: usize, stride: usize, vb: VarBuilder) -> Result<Block> {
    Ok(Block {
        convs: vec![
            conv_bn(1, c_in, planes, 3, stride, &vb)?,
            conv_bn(2, planes, planes, 3, 1, &vb)?,
        ],
        downsample: projection_if_needed(c_in, planes, stride, &vb)?,
    })
}

/// torchvision `Bottleneck` (v1.5): 1x1 -> 3x3 (stride) -> 1x1 expanding to 4 * planes.
fn bottleneck(c_in: usize, planes: usize, stride: usize, vb: VarBuilder) -> Result<Block> {
    let c_out = planes * 4;
    Ok(Block {
        convs: vec![
            conv_bn(1, c_in, planes, 1, 1, &vb)?,
            conv_bn(2, planes, planes, 3, stride, &vb)?,
            conv_bn(3, planes, c_out, 1, 1, &vb)?,
        ],
        downsample: projection_if_needed(c_in, c_out, stride, &vb)?,
    })
}

/// One stage (`layer1`..`layer4`): `blocks` blocks, the first one strided.
fn layer(
    arch: Arch,
    c_in: usize,
    planes: usize,
    blocks: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<Vec<Block>> {
    let block = if arch.is_bottleneck() {
        bottleneck
    } else {
        basic_block
    };
    let c_out = planes * arch.expansion();
    (0..blocks)
        .map(|i| {
            let (c, s) = if i == 0 { (c_in, stride) } else { (c_out, 1) };
            block(c, planes, s, vb.pp(i))
        })
        .collect()
}

/// A ResNet whose tensors live wherever its `VarBuilder` found or created them.
#[derive(Clone, Debug)]
pub struct ResNet {
    config: ResNetConfig,
    stem: ConvBn,
    layers: Vec<Vec<Block>>,
    fc: Linear,
    /// BatchNorm always normalises with its running statistics (see
    /// [`ResNet::freeze_batch_norm`]).
    frozen_batch_norm: bool,
}

impl ResNet {
    /// Builds the network under `vb` (unscoped: tensor names start at `conv1`, `layer1`, `fc`).
    /// From a `VarMap`-backed builder missing tensors are created with torchvision's init; from
    /// tensors (a file) every tensor must be present with its exact shape.
    pub fn new(config: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let (kernel, stride) = match config.stem {
            Stem::Imagenet => (7, 2),
            Stem::Small => (3, 1),
        };
        let stem = ConvBn {
            conv: conv(3, 64, kernel, stride, kernel / 2, vb.pp("conv1"))?,
            bn: batch_norm2d(64, vb.pp("bn1"))?,
        };
        let mut layers = Vec::with_capacity(4);
        let mut c_in = 64;
        for (i, &blocks) in config.arch.blocks_per_stage().iter().enumerate() {
            let planes = 64 << i;
            let stride = if i == 0 { 1 } else { 2 };
            let name = format!("layer{}", i + 1);
            layers.push(layer(
                config.arch,
                c_in,
                planes,
                blocks,
                stride,
                vb.pp(name),
            )?);
            c_in = planes * config.arch.expansion();
        }
        let fc = linear(c_in, config.num_classes, vb.pp("fc"))?;
        Ok(Self {
            config: config.clone(),
            stem,
            layers,
            fc,
            frozen_batch_norm: false,
        })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// With `frozen`, every BatchNorm normalises with its running statistics and leaves them
    /// alone, in training as in evaluation (any [`BnMode`] acts as `Eval`); its weight and
    /// bias still learn. Each image's output then depends on that image alone: for
    /// fine-tuning a trained network with small batches, and for Meta-Face2Exp without the
    /// BatchNorm offset of the official feedback (docs/METHOD.md). The statistics must be
    /// meaningful already, i.e. start from a trained network.
    pub fn freeze_batch_norm(&mut self, frozen: bool) {
        self.frozen_batch_norm = frozen;
    }

    /// Logits (N, num_classes) for images (N, 3, S, S); `train` as PyTorch's `model.train()`
    /// (batch statistics, running statistics updated) or `model.eval()`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mode = if train { BnMode::Train } else { BnMode::Eval };
        self.forward_with(x, mode)
    }

    /// Logits with explicit control of BatchNorm, see [`BnMode`].
    pub fn forward_with(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.fc.forward(&self.features_with(x, mode)?)
    }

    /// The globally pooled features (N, 512 * expansion) that `fc` reads.
    pub fn features_with(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let mode = if self.frozen_batch_norm {
            BnMode::Eval
        } else {
            mode
        };
        let (_, channels, h, w) = x.dims4()?;
        if channels != 3 || h == 0 || w == 0 {
            candle_core::bail!(
                "ResNet expects input of shape (N, 3, H, W), got {:?}",
                x.shape()
            )
        }
        let mut y = self.stem.forward_relu(x, mode)?;
        if self.config.stem == Stem::Imagenet {
            y = ops::max_pool_3x3_s2_p1(&y)?;
        }
        for stage in &self.layers {
            for block in stage {
                y = block.forward(&y, mode)?;
            }
        }
        ops::global_avg_pool(&y)
    }
}

#[cfg(test)]
mod tests {
    use super::super::trainable_vars;
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn build(arch: Arch, stem: Stem, size: usize) -> Result<(VarMap, ResNet)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = ResNetConfig {
            arch,
            stem,
            num_classes: 7,
            input_size: size,
        };
        let model = ResNet::new(&cfg, vb)?;
        Ok((varmap, model))
    }

    fn shapes(varmap: &VarMap) -> std::collections::HashMap<String, Vec<usize>> {
        let data = varmap.data().lock().unwrap();
        data.iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect()
    }

    #[test]
    fn tensor_names_and_counts_match_torchvision() -> Result<()> {
        // Parameter counts of torchvision.models.resnetXX(num_classes=7), running stats excluded.
        for (arch, params) in [
            (Arch::Resnet18, 11_180_103usize),
            (Arch::Resnet34, 21_288_263),
            (Arch::Resnet50, 23_522_375),
        ] {
            let (varmap, _) = build(arch, Stem::Imagenet, 64)?;
            let count: usize = trainable_vars(&varmap)
                .iter()
                .map(|(_, v)| v.elem_count())
                .sum();
            assert_eq!(count, params, "{arch}");
        }
        let (varmap, _) = build(Arch::Resnet50, Stem::Small, 64)?;
        let s = shapes(&varmap);
        assert_eq!(s["conv1.weight"], [64, 3, 3, 3]);
        assert_eq!(s["layer1.0.downsample.0.weight"], [256, 64, 1, 1]);
        assert_eq!(s["layer2.0.conv2.weight"], [128, 128, 3, 3]);
        assert_eq!(s["layer4.2.bn3.running_var"], [2048]);
        assert_eq!(s["fc.weight"], [7, 2048]);
        let (varmap, _) = build(Arch::Resnet18, Stem::Imagenet, 64)?;
        let s = shapes(&varmap);
        assert_eq!(s["conv1.weight"], [64, 3, 7, 7]);
        assert!(!s.contains_key("layer1.0.downsample.0.weight"));
        assert_eq!(s["layer3.0.downsample.1.running_mean"], [256]);
        assert_eq!(s.len(), 62 + 40);
        Ok(())
    }

    #[test]
    fn logits_have_the_right_shape_for_both_stems_and_sizes() -> Result<()> {
        for (arch, stem, size) in [
            (Arch::Resnet18, Stem::Small, 48),
            (Arch::Resnet18, Stem::Imagenet, 48),
            (Arch::Resnet18, Stem::Small, 64),
            (Arch::Resnet18, Stem::Imagenet, 112),
            (Arch::Resnet34, Stem::Imagenet, 64),
            (Arch::Resnet50, Stem::Imagenet, 48),
        ] {
            let (_, model) = build(arch, stem, size)?;
            let x = Tensor::randn(0f32, 1., (2, 3, size, size), &Device::Cpu)?;
            let eval = model.forward_t(&x, false)?;
            assert_eq!(eval.dims(), [2, 7], "{arch} {stem} {size}");
            let train = model.forward_t(&x, true)?;
            assert_eq!(train.dims(), [2, 7]);
            let values: Vec<Vec<f32>> = train.to_vec2()?;
            assert!(values.iter().flatten().all(|v| v.is_finite()));
        }
        Ok(())
    }

    #[test]
    fn small_stem_at_112_runs_and_bad_input_is_an_error() -> Result<()> {
        let (_, model) = build(Arch::Resnet18, Stem::Small, 112)?;
        let x = Tensor::randn(0f32, 1., (1, 3, 112, 112), &Device::Cpu)?;
        assert_eq!(model.forward_t(&x, false)?.dims(), [1, 7]);
        let grey = Tensor::zeros((1, 1, 112, 112), DType::F32, &Device::Cpu)?;
        let err = model.forward_t(&grey, false).unwrap_err().to_string();
        assert!(err.contains("(N, 3, H, W)"), "{err}");
        Ok(())
    }

    #[test]
    fn init_follows_torchvision() -> Result<()> {
        let (varmap, _) = build(Arch::Resnet18, Stem::Imagenet, 64)?;
        let data = varmap.data().lock().unwrap();
        let std = |name: &str| -> f64 {
            let v: Vec<f32> = data[name]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
        };
        // kaiming normal, fan_out = 256 * 3 * 3: std = sqrt(2 / 2304).
        let expected = (2. / 2304f64).sqrt();
        let got = std("layer3.1.conv2.weight");
        assert!((got / expected - 1.).abs() < 0.02, "{got} vs {expected}");
        // fc uniform in +-1/sqrt(512): std = bound / sqrt(3).
        let fc: Vec<f32> = data["fc.weight"].as_tensor().flatten_all()?.to_vec1()?;
        let bound = 1. / 512f32.sqrt();
        assert!(fc.iter().all(|v| v.abs() <= bound));
        let got = std("fc.weight");
        assert!(
            (got / (bound as f64 / 3f64.sqrt()) - 1.).abs() < 0.05,
            "{got}"
        );
        let ones: Vec<f32> = data["bn1.weight"].as_tensor().to_vec1()?;
        assert!(ones.iter().all(|&v| v == 1.));
        Ok(())
    }

    #[test]
    fn frozen_batch_norm_normalises_with_running_statistics_and_keeps_them() -> Result<()> {
        let (varmap, mut model) = build(Arch::Resnet18, Stem::Imagenet, 32)?;
        let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &Device::Cpu)?;
        // Running statistics worth keeping, then frozen.
        model.forward_with(&x, BnMode::Train)?;
        model.freeze_batch_norm(true);
        let running = |name: &str| -> Result<Vec<f32>> {
            let data = varmap.data().lock().unwrap();
            data[name].as_tensor().to_vec1()
        };
        let stats_before = running("layer1.0.bn1.running_mean")?;
        let eval = model.forward_with(&x, BnMode::Eval)?;
        let train = model.forward_with(&x, BnMode::Train)?;
        let diff = (eval - &train)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "train mode must normalise as eval mode");
        assert_eq!(running("layer1.0.bn1.running_mean")?, stats_before);
        // Each image alone gives the same logits as in the batch: no batch statistics.
        let alone = model.forward_with(&x.narrow(0, 1, 1)?, BnMode::Train)?;
        let in_batch = train.narrow(0, 1, 1)?;
        let diff = (alone - in_batch)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        model.freeze_batch_norm(false);
        let unfrozen = model.forward_with(&x, BnMode::TrainNoStatsUpdate)?;
        let diff = (unfrozen - train)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff > 1e-3, "unfreezing must bring batch statistics back");
        Ok(())
    }
}
