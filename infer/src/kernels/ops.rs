//! Element-wise and pooling kernels on CHW tensors, plus the classifier head.

use super::{check_len, KernelError};
use alloc::vec::Vec;

/// Output size of a pooling window, PyTorch's floor mode: `(in + 2p - k) / s + 1`.
pub fn pool_output_size(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Option<usize> {
    if stride == 0 || kernel == 0 || size + 2 * padding < kernel {
        return None;
    }
    Some((size + 2 * padding - kernel) / stride + 1)
}

fn pool_shape(
    input_len: usize,
    output_len: usize,
    (channels, height, width): (usize, usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<(usize, usize), KernelError> {
    if padding * 2 > kernel {
        return Err(KernelError::InvalidParams(
            "pool padding must be at most half the kernel",
        ));
    }
    let oh = pool_output_size(height, kernel, stride, padding);
    let ow = pool_output_size(width, kernel, stride, padding);
    let (oh, ow) = oh.zip(ow).ok_or(KernelError::InvalidParams(
        "pool window larger than the input",
    ))?;
    check_len("pool input", input_len, channels * height * width)?;
    check_len("pool output", output_len, channels * oh * ow)?;
    Ok((oh, ow))
}

/// `torch.nn.MaxPool2d(kernel, stride, padding)`; padded positions never win.
pub fn max_pool2d(
    input: &[f32],
    shape: (usize, usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
    output: &mut [f32],
) -> Result<(usize, usize), KernelError> {
    let (oh, ow) = pool_shape(input.len(), output.len(), shape, kernel, stride, padding)?;
    let (channels, height, width) = shape;
    for c in 0..channels {
        let plane = &input[c * height * width..(c + 1) * height * width];
        for oy in 0..oh {
            let y0 = (oy * stride).saturating_sub(padding);
            let y1 = (oy * stride + kernel - padding).min(height);
            for ox in 0..ow {
                let x0 = (ox * stride).saturating_sub(padding);
                let x1 = (ox * stride + kernel - padding).min(width);
                let mut best = f32::NEG_INFINITY;
                for y in y0..y1 {
                    for &v in &plane[y * width + x0..y * width + x1] {
                        best = if v > best { v } else { best };
                    }
                }
                output[(c * oh + oy) * ow + ox] = best;
            }
        }
    }
    Ok((oh, ow))
}

/// `torch.nn.AvgPool2d(kernel, stride, padding)` with its default `count_include_pad=True`.
pub fn avg_pool2d(
    input: &[f32],
    shape: (usize, usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
    output: &mut [f32],
) -> Result<(usize, usize), KernelError> {
    let (oh, ow) = pool_shape(input.len(), output.len(), shape, kernel, stride, padding)?;
    let (channels, height, width) = shape;
    let norm = 1.0 / (kernel * kernel) as f32;
    for c in 0..channels {
        let plane = &input[c * height * width..(c + 1) * height * width];
        for oy in 0..oh {
            let y0 = (oy * stride).saturating_sub(padding);
            let y1 = (oy * stride + kernel - padding).min(height);
            for ox in 0..ow {
                let x0 = (ox * stride).saturating_sub(padding);
                let x1 = (ox * stride + kernel - padding).min(width);
                let mut sum = 0.0;
                for y in y0..y1 {
                    sum += plane[y * width + x0..y * width + x1].iter().sum::<f32>();
                }
                output[(c * oh + oy) * ow + ox] = sum * norm;
            }
        }
    }
    Ok((oh, ow))
}

/// Mean of each channel plane: `[C, hw]` -> `[C]` (`AdaptiveAvgPool2d(1)`).
pub fn global_avg_pool(
    input: &[f32],
    channels: usize,
    hw: usize,
    output: &mut [f32],
) -> Result<(), KernelError> {
    if hw == 0 {
        return Err(KernelError::InvalidParams("global pool of an empty plane"));
    }
    check_len("global pool input", input.len(), channels * hw)?;
    check_len("global pool output", output.len(), channels)?;
    let norm = 1.0 / hw as f32;
    for (o, plane) in output.iter_mut().zip(input.chunks_exact(hw)) {
        *o = plane.iter().sum::<f32>() * norm;
    }
    Ok(())
}

/// `out = a + b` element-wise over `out.len()` values.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    check_len("add lhs", a.len(), out.len())?;
    check_len("add rhs", b.len(), out.len())?;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
    Ok(())
}

/// `acc += b` element-wise over `acc.len()` values.
pub fn add_in_place(acc: &mut [f32], b: &[f32]) -> Result<(), KernelError> {
    check_len("add rhs", b.len(), acc.len())?;
    for (o, &y) in acc.iter_mut().zip(b) {
        *o += y;
    }
    Ok(())
}

/// `F.interpolate(x, size=(out_h, out_w), mode="nearest")`: source index `floor(dst * in / out)`.
pub fn upsample_nearest(
    input: &[f32],
    (channels, height, width): (usize, usize, usize),
    (out_h, out_w): (usize, usize),
    output: &mut [f32],
) -> Result<(), KernelError> {
    if height == 0 || width == 0 {
        return Err(KernelError::InvalidParams("upsample of an empty plane"));
    }
    check_len("upsample input", input.len(), channels * height * width)?;
    check_len("upsample output", output.len(), channels * out_h * out_w)?;
    for c in 0..channels {
        let plane = &input[c * height * width..(c + 1) * height * width];
        for oy in 0..out_h {
            let sy = (oy * height / out_h).min(height - 1);
            let out_row = &mut output[(c * out_h + oy) * out_w..][..out_w];
            for (ox, o) in out_row.iter_mut().enumerate() {
                *o = plane[sy * width + (ox * width / out_w).min(width - 1)];
            }
        }
    }
    Ok(())
}

/// Nearest-neighbour upsampling by 2 in both directions.
pub fn upsample_nearest2x(
    input: &[f32],
    shape: (usize, usize, usize),
    output: &mut [f32],
) -> Result<(), KernelError> {
    upsample_nearest(input, shape, (shape.1 * 2, shape.2 * 2), output)
}

/// `torch.cat(parts, dim=1)` for CHW tensors: the parts' planes one after the other.
pub fn concat_channels(parts: &[&[f32]], output: &mut [f32]) -> Result<(), KernelError> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    check_len("concat output", output.len(), total)?;
    let mut at = 0;
    for part in parts {
        output[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    Ok(())
}

/// A fully connected layer `y = W x + b`, `W` row-major `[out, in]` as `torch.nn.Linear` stores it.
#[derive(Clone, Debug)]
pub struct Linear {
    in_features: usize,
    out_features: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Linear {
    pub fn new(
        in_features: usize,
        out_features: usize,
        weight: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Linear, KernelError> {
        if in_features == 0 || out_features == 0 {
            return Err(KernelError::InvalidParams(
                "linear layer needs non-zero features",
            ));
        }
        if weight.len() != in_features * out_features {
            return Err(KernelError::Length {
                what: "linear weight",
                expected: in_features * out_features,
                found: weight.len(),
            });
        }
        let bias = match bias {
            Some(b) if b.len() != out_features => {
                return Err(KernelError::Length {
                    what: "linear bias",
                    expected: out_features,
                    found: b.len(),
                })
            }
            Some(b) => b.to_vec(),
            None => alloc::vec![0.0; out_features],
        };
        Ok(Linear {
            in_features,
            out_features,
            weight: weight.to_vec(),
            bias,
        })
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn forward(&self, input: &[f32], output: &mut [f32]) -> Result<(), KernelError> {
        linear_forward(&self.weight, &self.bias, self.in_features, input, output)
    }
}

/// `output[o] = bias[o] + weight[o, :] . input`, over `output.len()` rows.
pub fn linear_forward(
    weight: &[f32],
    bias: &[f32],
    in_features: usize,
    input: &[f32],
    output: &mut [f32],
) -> Result<(), KernelError> {
    check_len("linear input", input.len(), in_features)?;
    check_len("linear weight", weight.len(), output.len() * in_features)?;
    check_len("linear bias", bias.len(), output.len())?;
    for (o, (row, &b)) in output
        .iter_mut()
        .zip(weight.chunks_exact(in_features).zip(bias))
    {
        // Eight partial sums so the compiler can vectorise the dot product.
        let mut partial = [0.0f32; 8];
        let chunks = row.chunks_exact(8).zip(input.chunks_exact(8));
        for (w, x) in chunks {
            for i in 0..8 {
                partial[i] += w[i] * x[i];
            }
        }
        let tail = in_features / 8 * 8;
        let mut sum: f32 = partial.iter().sum();
        for i in tail..in_features {
            sum += row[i] * input[i];
        }
        *o = sum + b;
    }
    Ok(())
}

/// Numerically stable softmax of `logits` into `probs` (same length).
pub fn softmax(logits: &[f32], probs: &mut [f32]) -> Result<(), KernelError> {
    check_len("softmax output", probs.len(), logits.len())?;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (p, &l) in probs.iter_mut().zip(logits) {
        *p = libm::expf(l - max);
        sum += *p;
    }
    if sum > 0.0 && sum.is_finite() {
        for p in probs[..logits.len()].iter_mut() {
            *p /= sum;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn max_pool_matches_torch_semantics_with_padding() {
        // 1x4x4 ramp, 3x3 stride 2 padding 1 (the ResNet stem pool) -> 2x2.
        let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let mut y = vec![0.0; 4];
        assert_eq!(max_pool2d(&x, (1, 4, 4), 3, 2, 1, &mut y).unwrap(), (2, 2));
        assert_eq!(y, vec![5.0, 7.0, 13.0, 15.0]);
    }

    #[test]
    fn upsample_concat_and_softmax() {
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut y = vec![0.0; 16];
        upsample_nearest2x(&x, (1, 2, 2), &mut y).unwrap();
        assert_eq!(&y[..8], &[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
        let mut cat = vec![0.0; 6];
        concat_channels(&[&x[..2], &x], &mut cat).unwrap();
        assert_eq!(cat, vec![1.0, 2.0, 1.0, 2.0, 3.0, 4.0]);
        let mut p = [0.0; 3];
        softmax(&[1000.0, 1000.0, f32::NEG_INFINITY], &mut p).unwrap();
        assert_eq!(p, [0.5, 0.5, 0.0]);
    }

    #[test]
    fn linear_with_ragged_width() {
        let w: Vec<f32> = (0..2 * 11).map(|i| i as f32).collect();
        let lin = Linear::new(11, 2, &w, Some(&[1.0, -1.0])).unwrap();
        let x = [1.0f32; 11];
        let mut y = [0.0; 2];
        lin.forward(&x, &mut y).unwrap();
        assert_eq!(y, [55.0 + 1.0, 176.0 - 1.0]);
    }
}
