//! Loading a face2exp weights file (docs/FORMAT.md) into an immutable, validated plan with
//! BatchNorm folded into the convolutions and weights packed for the kernels.

use crate::error::LoadError;
use crate::kernels::conv::LatePrecision;
use crate::kernels::{fold_batch_norm, Conv2d, Conv2dParams, Linear};
use crate::network::{Block, Network, Stem};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use safetensors::tensor::SafeTensors;

/// BatchNorm epsilon of torchvision's ResNets.
pub const BN_EPS: f32 = 1e-5;
/// Most classes a model may have (the canonical eight).
pub const MAX_CLASSES: usize = 8;
/// Largest `input_size` accepted; bounds what a hostile header can make us allocate.
pub const MAX_INPUT_SIZE: usize = 1024;
/// Smallest `input_size`: the imagenet stem and four stages need 32 px to leave one pixel.
pub const MIN_INPUT_SIZE: usize = 8;

/// Network depth, as the `arch` metadata names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
        }
    }

    /// Blocks per stage.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Arch::Resnet18 => [2, 2, 2, 2],
            Arch::Resnet34 | Arch::Resnet50 => [3, 4, 6, 3],
        }
    }

    /// Bottleneck blocks (expansion 4) instead of basic blocks.
    pub fn bottleneck(self) -> bool {
        self == Arch::Resnet50
    }

    fn parse(name: &str) -> Option<Arch> {
        match name {
            "resnet18" => Some(Arch::Resnet18),
            "resnet34" => Some(Arch::Resnet34),
            "resnet50" => Some(Arch::Resnet50),
            _ => None,
        }
    }
}

/// An expression network ready to run: the immutable plan that [`crate::Session`]s borrow.
#[derive(Clone, Debug)]
pub struct Model {
    arch: Arch,
    stem: Stem,
    input_size: usize,
    class_names: Vec<String>,
    mean: [f32; 3],
    std: [f32; 3],
    pub(crate) network: Network,
}

impl Model {
    /// Reads and validates a weights file; errors name the file.
    #[cfg(feature = "std")]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Model, LoadError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| LoadError::Io {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Model::from_bytes(&bytes).map_err(|error| LoadError::InFile {
            path: shown,
            error: alloc::boxed::Box::new(error),
        })
    }

    /// Parses a safetensors file held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, LoadError> {
        let container = |e: safetensors::SafeTensorError| LoadError::Container(format!("{e}"));
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(container)?;
        let tensors = SafeTensors::deserialize(bytes).map_err(container)?;
        let empty = Default::default();
        let meta = header.metadata().as_ref().unwrap_or(&empty);
        let get = |key: &'static str| {
            meta.get(key)
                .map(|s| s.trim())
                .ok_or(LoadError::MissingMetadata(key))
        };

        let format_version = get("face2exp.format")?;
        if format_version != "1" {
            return Err(bad(
                "face2exp.format",
                format_version,
                "unsupported format version (this reader knows 1)",
            ));
        }
        let arch_name = get("arch")?;
        let arch =
            Arch::parse(arch_name).ok_or_else(|| LoadError::UnknownArch(arch_name.to_string()))?;
        let stem_name = get("stem")?;
        let stem = match stem_name {
            "imagenet" => Stem::Imagenet,
            "small" => Stem::Small,
            other => {
                return Err(LoadError::UnknownArch(format!(
                    "{arch_name} with stem {other}"
                )))
            }
        };
        let size_text = get("input_size")?;
        let input_size: usize = size_text
            .parse()
            .map_err(|_| bad("input_size", size_text, "not a whole number"))?;
        if !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&input_size) {
            return Err(bad("input_size", size_text, "outside 8..=1024"));
        }
        let classes_text = get("classes")?;
        let class_names: Vec<String> = classes_text
            .split(',')
            .map(|c| c.trim().to_string())
            .collect();
        if class_names.iter().any(|c| c.is_empty()) || class_names.len() > MAX_CLASSES {
            return Err(bad(
                "classes",
                classes_text,
                "need 1 to 8 non-empty comma-separated names",
            ));
        }
        let mean = parse_triplet("mean", get("mean")?)?;
        let std = parse_triplet("std", get("std")?)?;
        if std.iter().any(|&s| s <= 0.0) {
            return Err(bad("std", get("std")?, "every std must be positive"));
        }
        if let Some(pre) = meta.get("preprocess") {
            if pre.trim() != "resize-triangle" {
                return Err(bad("preprocess", pre, "only resize-triangle is supported"));
            }
        }

        let reader = Reader { tensors: &tensors };
        let network = build_network(&reader, arch, stem, input_size, class_names.len())?;
        Ok(Model {
            arch,
            stem,
            input_size,
            class_names,
            mean,
            std,
            network,
        })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn stem(&self) -> Stem {
        self.stem
    }

    /// Side of the square network input in pixels.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Output order of the logits and probabilities.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Per-channel RGB mean subtracted from pixels in [0, 1].
    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    /// Per-channel RGB std pixels are divided by.
    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// Multiply-accumulates of one forward pass.
    pub fn macs(&self) -> u64 {
        self.network.macs
    }

    /// Stores the weights of the late layers (outputs under 16 pixels, e.g. ResNet-18's last
    /// two stages at 48 px: 10.5 M of its 11.2 M weights) as IEEE half floats, widened in
    /// registers as they are used; activations and sums stay single precision. Those layers
    /// read every weight once per face, so their time is memory traffic, which this halves;
    /// the price is a relative error of up to 2^-11 per weight (logits move by about 1e-3;
    /// docs/BENCHMARKS.md has the measured speed and agreement). Call before making sessions.
    /// Returns how many weights are now half precision.
    pub fn store_late_weights_as_f16(&mut self) -> usize {
        self.store_late_weights(LatePrecision::F16)
    }

    /// Like [`Model::store_late_weights_as_f16`], with the late layers' weights as signed
    /// bytes and one scale per output channel (`max |w| / 127`): a quarter of the memory
    /// traffic of single precision, for an error of up to `max |w| / 254` per weight; sums
    /// and activations stay single precision. Measured on FER2013 val in docs/BENCHMARKS.md.
    /// Returns how many weights are now int8.
    pub fn store_late_weights_as_int8(&mut self) -> usize {
        self.store_late_weights(LatePrecision::Int8)
    }

    fn store_late_weights(&mut self, precision: LatePrecision) -> usize {
        self.network
            .blocks
            .iter_mut()
            .map(|block| block.late_weights_to(precision))
            .sum()
    }
}

fn bad(key: &'static str, value: &str, problem: &'static str) -> LoadError {
    LoadError::BadMetadata {
        key,
        value: value.to_string(),
        problem,
    }
}

fn parse_triplet(key: &'static str, text: &str) -> Result<[f32; 3], LoadError> {
    let mut out = [0.0f32; 3];
    let mut parts = text.split(',');
    for slot in out.iter_mut() {
        let part = parts
            .next()
            .ok_or_else(|| bad(key, text, "need three comma-separated numbers"))?;
        *slot = part
            .trim()
            .parse()
            .ok()
            .filter(|v: &f32| v.is_finite())
            .ok_or_else(|| bad(key, text, "need three finite numbers"))?;
    }
    if parts.next().is_some() {
        return Err(bad(key, text, "need exactly three numbers"));
    }
    Ok(out)
}

struct Reader<'a, 'data> {
    tensors: &'a SafeTensors<'data>,
}

impl Reader<'_, '_> {
    /// The tensor `name` as f32, checked against `shape` and for finite values.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        crate::tensor_read::f32_tensor(self.tensors, name, shape)
    }

    /// `{prefix}` conv weight followed by BatchNorm `{bn}`, folded into one convolution.
    fn conv_bn(&self, conv: &str, bn: &str, params: Conv2dParams) -> Result<Conv2d, LoadError> {
        let shape = [
            params.out_channels,
            params.in_channels / params.groups,
            params.kernel_h,
            params.kernel_w,
        ];
        let mut weight = self.get(&format!("{conv}.weight"), &shape)?;
        let c = [params.out_channels];
        let gamma = self.get(&format!("{bn}.weight"), &c)?;
        let beta = self.get(&format!("{bn}.bias"), &c)?;
        let mean = self.get(&format!("{bn}.running_mean"), &c)?;
        let var_name = format!("{bn}.running_var");
        let var = self.get(&var_name, &c)?;
        if var.iter().any(|&v| v < 0.0) {
            return Err(LoadError::BadValues {
                tensor: var_name,
                problem: "negative variance",
            });
        }
        let mut bias = alloc::vec![0.0; params.out_channels];
        let kernel_err = |error| LoadError::Kernel {
            layer: conv.to_string(),
            error,
        };
        fold_batch_norm(&mut weight, &mut bias, &gamma, &beta, &mean, &var, BN_EPS)
            .map_err(kernel_err)?;
        Conv2d::new(params, &weight, Some(&bias)).map_err(kernel_err)
    }
}

fn build_network(
    r: &Reader<'_, '_>,
    arch: Arch,
    stem: Stem,
    input_size: usize,
    classes: usize,
) -> Result<Network, LoadError> {
    let too_small = || bad_size(input_size);
    let stem_params = match stem {
        Stem::Imagenet => Conv2dParams::new(3, 64, 7, 2, 3),
        Stem::Small => Conv2dParams::new(3, 64, 3, 1, 1),
    };
    let stem_conv = r.conv_bn("conv1", "bn1", stem_params)?;
    let (mut h, mut w) = stem_conv
        .output_size(input_size, input_size)
        .ok_or_else(too_small)?;
    let mut macs = (64 * 3 * stem_params.kernel_h * stem_params.kernel_w * h * w) as u64;
    let mut max_activation = 64 * h * w;
    if stem == Stem::Imagenet {
        h = crate::kernels::pool_output_size(h, 3, 2, 1).ok_or_else(too_small)?;
        w = crate::kernels::pool_output_size(w, 3, 2, 1).ok_or_else(too_small)?;
    }
    let expansion = if arch.bottleneck() { 4 } else { 1 };
    let mut in_channels = 64;
    let mut blocks = Vec::new();
    for (stage, &count) in arch.blocks().iter().enumerate() {
        let width = 64 << stage;
        let out_channels = width * expansion;
        for i in 0..count {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let name = format!("layer{}.{}", stage + 1, i);
            let needs_projection = stride != 1 || in_channels != out_channels;
            let downsample = if needs_projection {
                let params = Conv2dParams::new(in_channels, out_channels, 1, stride, 0);
                Some(r.conv_bn(
                    &format!("{name}.downsample.0"),
                    &format!("{name}.downsample.1"),
                    params,
                )?)
            } else {
                None
            };
            let (conv1, conv2, conv3) = if arch.bottleneck() {
                let c1 = r.conv_bn(
                    &format!("{name}.conv1"),
                    &format!("{name}.bn1"),
                    Conv2dParams::new(in_channels, width, 1, 1, 0),
                )?;
                let c2 = r.conv_bn(
                    &format!("{name}.conv2"),
                    &format!("{name}.bn2"),
                    Conv2dParams::new(width, width, 3, stride, 1),
                )?;
                let c3 = r.conv_bn(
                    &format!("{name}.conv3"),
                    &format!("{name}.bn3"),
                    Conv2dParams::new(width, out_channels, 1, 1, 0),
                )?;
                (c1, c2, Some(c3))
            } else {
                let c1 = r.conv_bn(
                    &format!("{name}.conv1"),
                    &format!("{name}.bn1"),
                    Conv2dParams::new(in_channels, width, 3, stride, 1),
                )?;
                let c2 = r.conv_bn(
                    &format!("{name}.conv2"),
                    &format!("{name}.bn2"),
                    Conv2dParams::new(width, width, 3, 1, 1),
                )?;
                (c1, c2, None)
            };
            let mut block = Block {
                conv1,
                conv2,
                conv3,
                downsample,
                in_channels,
                in_h: h,
                in_w: w,
            };
            let (oh, ow, block_macs, block_max) = block.shape_and_cost().ok_or_else(too_small)?;
            block.prepare_for_input();
            macs += block_macs;
            max_activation = max_activation.max(block_max);
            blocks.push(block);
            (h, w) = (oh, ow);
            in_channels = out_channels;
        }
    }
    let fc_weight = r.get("fc.weight", &[classes, in_channels])?;
    let fc_bias = r.get("fc.bias", &[classes])?;
    let fc = Linear::new(in_channels, classes, &fc_weight, Some(&fc_bias)).map_err(|error| {
        LoadError::Kernel {
            layer: "fc".to_string(),
            error,
        }
    })?;
    macs += (classes * in_channels) as u64;
    Ok(Network {
        stem,
        stem_conv,
        blocks,
        fc,
        input_size,
        max_activation,
        final_channels: in_channels,
        macs,
    })
}

fn bad_size(input_size: usize) -> LoadError {
    LoadError::BadMetadata {
        key: "input_size",
        value: format!("{input_size}"),
        problem: "too small for this architecture and stem",
    }
}
