//! Reading the detector's safetensors file: header metadata checks and convolution tensors.

use super::depthwise::Depthwise3x3;
use crate::kernels::{Conv2d, Conv2dParams};
use crate::LoadError;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use safetensors::{Dtype, SafeTensors};

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
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| LoadError::MissingTensor(name.to_string()))?;
        if view.shape() != shape {
            return Err(LoadError::WrongShape {
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(LoadError::WrongDtype {
                    tensor: name.to_string(),
                    dtype: alloc::format!("{other:?}"),
                })
            }
        };
        if values.iter().any(|v| !v.is_finite()) {
            return Err(LoadError::BadValues {
                tensor: name.to_string(),
                problem: "NaN or infinite weights",
            });
        }
        Ok(values)
    }
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = frac * 2^-24.
            let v = frac as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
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

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
