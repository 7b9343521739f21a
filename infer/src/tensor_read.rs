//! Reading one tensor of a safetensors file as checked f32 values: shared by the classifier
//! (model.rs) and the detector (detect/weights.rs), which accept the same dtypes and refuse the
//! same problems.

use crate::error::LoadError;
use alloc::format;
use alloc::string::ToString;
use alloc::vec::Vec;
use safetensors::tensor::{Dtype, SafeTensors};

/// Tensor `name` as F32 values (F16 and BF16 converted), checked against `shape` and for
/// finite values.
pub(crate) fn f32_tensor(
    tensors: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, LoadError> {
    let view = tensors
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
                dtype: format!("{other:?}"),
            })
        }
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(LoadError::BadValues {
            tensor: name.to_string(),
            problem: "contains NaN or infinite values",
        });
    }
    Ok(values)
}

/// IEEE single -> half, rounding to nearest even (subnormals, overflow to infinity and NaN
/// included): how weights are narrowed for half-precision storage.
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x007f_ffff;
    if exp == 0xff {
        // Infinity stays infinite; NaN keeps a set quiet bit.
        return sign | 0x7c00 | if frac != 0 { 0x0200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal half (or zero): shift the full significand into place and round.
        if e < -10 {
            return sign;
        }
        let significand = frac | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = significand >> shift;
        let rest = significand & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        let round = rest > halfway || (rest == halfway && half & 1 == 1);
        return sign | (half + round as u32) as u16;
    }
    let half = ((e as u32) << 10) | (frac >> 13);
    let rest = frac & 0x1fff;
    let round = rest > 0x1000 || (rest == 0x1000 && half & 1 == 1);
    // A carry out of the significand correctly bumps the exponent (up to infinity).
    sign | (half + round as u32) as u16
}

/// Minimal IEEE half -> single conversion (subnormals included).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if frac == 0 => sign,
        0 => {
            // Subnormal: value = frac * 2^-24.
            let v = frac as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::{f16_to_f32, f32_to_f16};

    #[test]
    fn single_to_half_rounds_to_nearest_even_and_round_trips() {
        for h in (0..=0xffffu16).filter(|h| (h & 0x7c00) != 0x7c00) {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#06x}");
        }
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00); // tie -> even
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02); // tie -> even (up)
        assert_eq!(f32_to_f16(1.0 + 1.5 * 2f32.powi(-11)), 0x3c01);
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds past the largest half
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000); // tie -> even (zero)
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-25)), 0x0001);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
