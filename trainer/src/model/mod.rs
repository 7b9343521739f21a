//! The networks: torchvision-named ResNet-18/34/50 (see docs/FORMAT.md), their configuration,
//! and the helpers a training loop needs around a `VarMap` (trainable variables, `--init`).

mod batch_norm;
mod pretrained;
mod resnet;

#[cfg(test)]
mod torch_parity;

use std::fmt;
use std::str::FromStr;

use candle_core::Var;
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

pub use batch_norm::{batch_norm2d, BatchNorm2d, BnMode, BN_EPS, BN_MOMENTUM};
pub use pretrained::{load_init, InitReport};
pub use resnet::ResNet;

/// The ResNet depth; names as torchvision's constructors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Resnet18, Arch::Resnet34, Arch::Resnet50];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
        }
    }

    /// Residual blocks in layer1..layer4.
    pub fn blocks_per_stage(self) -> [usize; 4] {
        match self {
            Arch::Resnet18 => [2, 2, 2, 2],
            Arch::Resnet34 | Arch::Resnet50 => [3, 4, 6, 3],
        }
    }

    /// Bottleneck (resnet50) or BasicBlock (resnet18/34).
    pub fn is_bottleneck(self) -> bool {
        matches!(self, Arch::Resnet50)
    }

    /// Output channels of a block relative to its width: 4 for Bottleneck, 1 for BasicBlock.
    pub fn expansion(self) -> usize {
        if self.is_bottleneck() {
            4
        } else {
            1
        }
    }

    /// Width of the pooled features that `fc` reads.
    pub fn feature_dim(self) -> usize {
        512 * self.expansion()
    }
}

/// The first layers before layer1; see docs/FORMAT.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// conv 7x7/2, BN, ReLU, max pool 3x3/2 (torchvision).
    Imagenet,
    /// conv 3x3/1, BN, ReLU, no pooling: keeps the resolution of 48-64 px faces.
    Small,
}

impl Stem {
    pub const ALL: [Stem; 2] = [Stem::Imagenet, Stem::Small];

    pub fn name(self) -> &'static str {
        match self {
            Stem::Imagenet => "imagenet",
            Stem::Small => "small",
        }
    }
}

/// A name that is not one of the accepted values, e.g. `--arch resnet19`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{got}`, expected one of: {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub got: String,
    pub expected: String,
}

fn parse_name<T: Copy>(
    what: &'static str,
    s: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<T, UnknownName> {
    let wanted = s.trim().to_ascii_lowercase();
    all.iter()
        .copied()
        .find(|&v| name(v) == wanted)
        .ok_or_else(|| UnknownName {
            what,
            got: s.to_string(),
            expected: all.iter().map(|&v| name(v)).collect::<Vec<_>>().join(", "),
        })
}

impl FromStr for Arch {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name("architecture", s, &Arch::ALL, Arch::name)
    }
}

impl FromStr for Stem {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_name("stem", s, &Stem::ALL, Stem::name)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Stem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that fixes a network's tensors and input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub arch: Arch,
    pub stem: Stem,
    pub num_classes: usize,
    /// Square input side in pixels.
    pub input_size: usize,
}

impl ResNetConfig {
    /// Smallest input side accepted: below it layer4 would see less than one pixel.
    pub const MIN_INPUT_SIZE: usize = 16;

    pub fn validate(&self) -> candle_core::Result<()> {
        if self.num_classes == 0 {
            candle_core::bail!("num_classes must be at least 1")
        }
        if self.input_size < Self::MIN_INPUT_SIZE {
            candle_core::bail!(
                "input_size {} is too small, the minimum is {}",
                self.input_size,
                Self::MIN_INPUT_SIZE
            )
        }
        Ok(())
    }
}

/// Whether a VarMap entry is a BatchNorm statistic (kept out of the optimiser).
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

/// The variables an optimiser should update: everything in `varmap` except BatchNorm running
/// statistics, sorted by name so that optimiser state lines up run after run.
pub fn trainable_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("VarMap mutex poisoned");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| !is_running_stat(name))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_lowercase() {
        assert_eq!("ResNet50".parse::<Arch>(), Ok(Arch::Resnet50));
        assert_eq!("small".parse::<Stem>(), Ok(Stem::Small));
        let err = "resnet19".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("resnet19") && err.contains("resnet18, resnet34, resnet50"));
        assert_eq!(Arch::Resnet34.to_string(), "resnet34");
        let cfg = ResNetConfig {
            arch: Arch::Resnet18,
            stem: Stem::Imagenet,
            num_classes: 7,
            input_size: 64,
        };
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(
            json,
            r#"{"arch":"resnet18","stem":"imagenet","num_classes":7,"input_size":64}"#
        );
        assert_eq!(serde_json::from_str::<ResNetConfig>(&json).unwrap(), cfg);
    }
}
