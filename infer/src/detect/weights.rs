//! Reading the detector's safetensors file: header metadata checks and convolution tensors.

use super::depthwise::Depthwise3x3;
use crate::kernels::{Conv2d, Conv2dParams};
use crate::LoadError;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use safetensors::SafeTensors;

/// The `arch` metadata value of the one detector this module implements.
pub const RETINAFACE_ARCH: &str = "retinaface-mnet0.25";

/// A parsed safetensors buffer.
pub(crate) struct TensorSource<'a> {
    tensors: SafeTensors<'a>,
}

impl<'a> TensorSource<'a> {
    /// Parses `bytes` and checks `face2exp.format` = 1 and `arch` = [`RETINAFACE_ARCH`].
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<TensorSource<'a>, LoadError> {
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| LoadError::Container(e.to_string()))?;
        let tensors =
            SafeTensors::deserialize(bytes).map_err(|e| LoadError::Container(e.to_string()))?;
        let meta = header.metadata().as_ref();
        let get = |key: &'static str| -> Result<&str, LoadError> {
            meta.and_then(|m| m.get(key))
                .map(String::as_str)
                .ok_or(LoadError::MissingMetadata(key))
        };
        let format = get("face2exp.format")?;
        if format != "1" {
            return Err(LoadError::BadMetadata {
                key: "face2exp.format",
                value: format.to_string(),
                problem: "this reader knows format 1",
            });
        }
        let arch = get("arch")?;
        if arch != RETINAFACE_ARCH {
            return Err(LoadError::BadMetadata {
                key: "arch",
                value: arch.to_string(),
                problem: "not the face detector this crate runs (retinaface-mnet0.25)",
            });
        }
        Ok(TensorSource { tensors })
    }

    /// Tensor `name` as F32 values (F16 and BF16 converted), checked against `shape`.
    pub(crate) fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        crate::tensor_read::f32_tensor(&self.tensors, name, shape)
    }
}

/// `{name}.weight` (OIHW) and `{name}.bias` as a convolution with padding `kernel / 2`.
pub(crate) fn conv_from_tensors(
    src: &TensorSource<'_>,
    name: &str,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
) -> Result<Conv2d, LoadError> {
    let mut key = String::from(name);
    key.push_str(".weight");
    let weight = src.f32_tensor(&key, &[out_channels, in_channels / groups, kernel, kernel])?;
    key.truncate(name.len());
    key.push_str(".bias");
    let bias = src.f32_tensor(&key, &[out_channels])?;
    let params = Conv2dParams {
        groups,
        ..Conv2dParams::new(in_channels, out_channels, kernel, stride, kernel / 2)
    };
    Conv2d::new(params, &weight, Some(&bias)).map_err(|error| LoadError::Kernel {
        layer: name.to_string(),
        error,
    })
}

/// `{name}.weight` (`[channels, 1, 3, 3]`) and `{name}.bias` as a depthwise 3x3 convolution.
pub(crate) fn depthwise_from_tensors(
    src: &TensorSource<'_>,
    name: &str,
    channels: usize,
    stride: usize,
) -> Result<Depthwise3x3, LoadError> {
    let weight = src.f32_tensor(&alloc::format!("{name}.weight"), &[channels, 1, 3, 3])?;
    let bias = src.f32_tensor(&alloc::format!("{name}.bias"), &[channels])?;
    Depthwise3x3::new(channels, stride, &weight, &bias).map_err(|error| LoadError::Kernel {
        layer: name.to_string(),
        error,
    })
}
