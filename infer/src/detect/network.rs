//! The RetinaFace MobileNet-0.25 network (biubug6/Pytorch_Retinaface, BN folded) as a fixed list
//! of [`Conv2d`]s, and its forward pass over buffers sized once per session.
//!
//! Tensor names follow the PyTorch module paths of the ONNX export `tools/convert_retinaface.py`
//! reads: `fx.stage{1,2,3}.{i}.{0,1}.0` (MobileNet depthwise / pointwise pairs, the first layer
//! `fx.stage1.0.0`), `fpn.output{1,2,3}.0`, `fpn.merge{1,2}.0`, `ssh{1,2,3}.conv*`, and the heads
//! `{class,bbox,landmark}_head.{..}_head.{0,1,2}`.

use super::depthwise::Depthwise3x3;
use super::weights::{conv_from_tensors, depthwise_from_tensors, TensorSource};
use crate::kernels::{Activation, Conv2d, KernelError, Parallel};
use crate::LoadError;
use alloc::vec::Vec;

/// Slope of every LeakyReLU in the network (the export checks it is 0.1 everywhere).
const LEAKY: Activation = Activation::LeakyRelu(0.1);
/// Channels of the FPN and SSH outputs.
pub(crate) const FPN_CHANNELS: usize = 64;
/// Anchors per feature-map position (two sizes per level).
pub(crate) const ANCHORS_PER_CELL: usize = 2;
/// Stride of each detection level in input pixels.
pub(crate) const STRIDES: [usize; 3] = [8, 16, 32];

/// The convolution of a layer: generic (GEMM) or MobileNet's depthwise 3x3.
#[derive(Clone, Debug)]
enum Op {
    Conv(Conv2d),
    Depthwise(Depthwise3x3),
}

/// One convolution and the activation fused after it.
#[derive(Clone, Debug)]
struct Layer {
    op: Op,
    activation: Activation,
}

impl Layer {
    fn forward(
        &self,
        input: &[f32],
        (h, w): (usize, usize),
        output: &mut [f32],
        scratch: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(usize, usize), KernelError> {
        match &self.op {
            Op::Conv(conv) => {
                let out = conv.output_size(h, w).ok_or(KernelError::InvalidParams(
                    "detector input smaller than a kernel",
                ))?;
                conv.forward(input, h, w, output, None, self.activation, scratch, par)?;
                Ok(out)
            }
            Op::Depthwise(dw) => dw.forward(input, (h, w), output, self.activation, par),
        }
    }

    fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        match &self.op {
            Op::Conv(conv) => conv.output_size(h, w),
            Op::Depthwise(dw) => dw.output_size(h, w),
        }
    }

    /// Floats of convolution scratch for this layer's fastest path at a `h x w` input.
    fn scratch_len_at(&self, threads: usize, (h, w): (usize, usize)) -> usize {
        match &self.op {
            Op::Conv(conv) => conv.scratch_len_at(threads, h, w),
            Op::Depthwise(_) => Conv2d::scratch_len(threads),
        }
    }

    fn out_channels(&self) -> usize {
        match &self.op {
            Op::Conv(conv) => conv.params().out_channels,
            Op::Depthwise(dw) => dw.channels(),
        }
    }
}

/// SSH context module: three branches (3x3, "5x5" = two 3x3, "7x7" = three 3x3 sharing the
/// first) concatenated on channels, then ReLU. ReLU is element-wise, so each branch's last conv
/// applies it and writes straight into its channel range of the output: no concat copy.
#[derive(Clone, Debug)]
struct Ssh {
    conv3x3: Layer,
    conv5x5_1: Layer,
    conv5x5_2: Layer,
    conv7x7_2: Layer,
    conv7x7_3: Layer,
}

/// The three prediction heads of one level: face/background logits, box deltas, landmark deltas.
#[derive(Clone, Debug)]
struct Heads {
    class: Layer,
    bbox: Layer,
    landmark: Layer,
}

/// Feature-map sizes for one input size: `levels[i]` is the `(height, width)` at stride
/// `STRIDES[i]`, and `backbone_max` the largest intermediate tensor of the backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shapes {
    pub levels: [(usize, usize); 3],
    pub backbone_max: usize,
}

/// Per-level outputs of the heads in CHW order: class `[2*2, h, w]`, bbox `[2*4, h, w]`,
/// landmarks `[2*10, h, w]` (anchor-major channels, as the ONNX graph's reshape reads them).
pub(crate) struct HeadOutputs<'a> {
    pub class: [&'a [f32]; 3],
    pub bbox: [&'a [f32]; 3],
    pub landmark: [&'a [f32]; 3],
}

/// Immutable network plan.
#[derive(Clone, Debug)]
pub(crate) struct RetinaNet {
    /// `fx.stage1` .. `fx.stage3`, each a chain of layers.
    stages: [Vec<Layer>; 3],
    /// `fpn.output{1,2,3}`: lateral 1x1 convolutions to 64 channels.
    lateral: [Layer; 3],
    /// `fpn.merge2`, `fpn.merge1`.
    merge: [Layer; 2],
    ssh: [Ssh; 3],
    heads: [Heads; 3],
}

fn layer(
    src: &TensorSource<'_>,
    name: &str,
    shape: (usize, usize, usize, usize, usize),
    activation: Activation,
) -> Result<Layer, LoadError> {
    let (in_ch, out_ch, kernel, stride, groups) = shape;
    Ok(Layer {
        op: Op::Conv(conv_from_tensors(
            src, name, in_ch, out_ch, kernel, stride, groups,
        )?),
        activation,
    })
}

/// MobileNet `conv_dw`: depthwise 3x3 (`{prefix}.0.0`) then pointwise 1x1 (`{prefix}.1.0`).
fn depthwise_separable(
    src: &TensorSource<'_>,
    prefix: &str,
    in_ch: usize,
    out_ch: usize,
    stride: usize,
    layers: &mut Vec<Layer>,
) -> Result<(), LoadError> {
    let mut name = alloc::string::String::from(prefix);
    name.push_str(".0.0");
    layers.push(Layer {
        op: Op::Depthwise(depthwise_from_tensors(src, &name, in_ch, stride)?),
        activation: LEAKY,
    });
    name.truncate(prefix.len());
    name.push_str(".1.0");
    layers.push(layer(src, &name, (in_ch, out_ch, 1, 1, 1), LEAKY)?);
    Ok(())
}

impl RetinaNet {
    pub(crate) fn from_tensors(src: &TensorSource<'_>) -> Result<RetinaNet, LoadError> {
        use alloc::format;
        let mut stage1 = Vec::new();
        stage1.push(layer(src, "fx.stage1.0.0", (3, 8, 3, 2, 1), LEAKY)?);
        for (i, (cin, cout, stride)) in [
            (8, 16, 1),
            (16, 32, 2),
            (32, 32, 1),
            (32, 64, 2),
            (64, 64, 1),
        ]
        .into_iter()
        .enumerate()
        {
            depthwise_separable(
                src,
                &format!("fx.stage1.{}", i + 1),
                cin,
                cout,
                stride,
                &mut stage1,
            )?;
        }
        let mut stage2 = Vec::new();
        for i in 0..6 {
            let (cin, stride) = if i == 0 { (64, 2) } else { (128, 1) };
            depthwise_separable(
                src,
                &format!("fx.stage2.{i}"),
                cin,
                128,
                stride,
                &mut stage2,
            )?;
        }
        let mut stage3 = Vec::new();
        depthwise_separable(src, "fx.stage3.0", 128, 256, 2, &mut stage3)?;
        depthwise_separable(src, "fx.stage3.1", 256, 256, 1, &mut stage3)?;

        let f = FPN_CHANNELS;
        let lateral = [
            layer(src, "fpn.output1.0", (64, f, 1, 1, 1), LEAKY)?,
            layer(src, "fpn.output2.0", (128, f, 1, 1, 1), LEAKY)?,
            layer(src, "fpn.output3.0", (256, f, 1, 1, 1), LEAKY)?,
        ];
        let merge = [
            layer(src, "fpn.merge2.0", (f, f, 3, 1, 1), LEAKY)?,
            layer(src, "fpn.merge1.0", (f, f, 3, 1, 1), LEAKY)?,
        ];
        let ssh_level = |i: usize| -> Result<Ssh, LoadError> {
            let relu = Activation::Relu;
            Ok(Ssh {
                conv3x3: layer(src, &format!("ssh{i}.conv3X3.0"), (f, f / 2, 3, 1, 1), relu)?,
                conv5x5_1: layer(
                    src,
                    &format!("ssh{i}.conv5X5_1.0"),
                    (f, f / 4, 3, 1, 1),
                    LEAKY,
                )?,
                conv5x5_2: layer(
                    src,
                    &format!("ssh{i}.conv5X5_2.0"),
                    (f / 4, f / 4, 3, 1, 1),
                    relu,
                )?,
                conv7x7_2: layer(
                    src,
                    &format!("ssh{i}.conv7X7_2.0"),
                    (f / 4, f / 4, 3, 1, 1),
                    LEAKY,
                )?,
                conv7x7_3: layer(
                    src,
                    &format!("ssh{i}.conv7x7_3.0"),
                    (f / 4, f / 4, 3, 1, 1),
                    relu,
                )?,
            })
        };
        let heads_level = |i: usize| -> Result<Heads, LoadError> {
            let a = ANCHORS_PER_CELL;
            let none = Activation::None;
            Ok(Heads {
                class: layer(
                    src,
                    &format!("class_head.class_head.{i}"),
                    (f, a * 2, 1, 1, 1),
                    none,
                )?,
                bbox: layer(
                    src,
                    &format!("bbox_head.bbox_head.{i}"),
                    (f, a * 4, 1, 1, 1),
                    none,
                )?,
                landmark: layer(
                    src,
                    &format!("landmark_head.landmark_head.{i}"),
                    (f, a * 10, 1, 1, 1),
                    none,
                )?,
            })
        };
        Ok(RetinaNet {
            stages: [stage1, stage2, stage3],
            lateral,
            merge,
            ssh: [ssh_level(1)?, ssh_level(2)?, ssh_level(3)?],
            heads: [heads_level(0)?, heads_level(1)?, heads_level(2)?],
        })
    }

    /// Feature-map sizes for an input of `height x width`; `None` if it is too small to run.
    pub(crate) fn shapes(&self, height: usize, width: usize) -> Option<Shapes> {
        let mut size = (height, width);
        let mut backbone_max = 0;
        let mut levels = [(0, 0); 3];
        for (stage, level) in self.stages.iter().zip(levels.iter_mut()) {
            for layer in stage {
                size = layer.output_size(size.0, size.1)?;
                backbone_max = backbone_max.max(layer.out_channels() * size.0 * size.1);
            }
            *level = size;
        }
        Some(Shapes {
            levels,
            backbone_max,
        })
    }

    /// Floats of convolution scratch for frames up to `shapes`: the stride-1 3x3 layers of
    /// the FPN and SSH modules read a padded copy of their input in place when it fits
    /// (`Conv2d::scratch_len_at`). The backbone has no such layer.
    fn scratch_len(&self, shapes: &Shapes, threads: usize) -> usize {
        let at = |layer: &Layer, level: usize| layer.scratch_len_at(threads, shapes.levels[level]);
        let mut len = Conv2d::scratch_len(threads).max(at(&self.merge[0], 1));
        len = len.max(at(&self.merge[1], 0));
        for (level, ssh) in self.ssh.iter().enumerate() {
            for layer in [
                &ssh.conv3x3,
                &ssh.conv5x5_1,
                &ssh.conv5x5_2,
                &ssh.conv7x7_2,
                &ssh.conv7x7_3,
            ] {
                len = len.max(at(layer, level));
            }
        }
        len
    }

    /// Stage output channels (64, 128, 256).
    fn stage_channels(&self, stage: usize) -> usize {
        self.stages[stage].last().map_or(0, Layer::out_channels)
    }

    /// Runs the network on a CHW BGR mean-subtracted `input` of `height x width`.
    pub(crate) fn forward<'b>(
        &self,
        input: &[f32],
        (height, width): (usize, usize),
        shapes: &Shapes,
        buffers: &'b mut Buffers,
        par: &dyn Parallel,
    ) -> Result<HeadOutputs<'b>, KernelError> {
        let Buffers {
            ping,
            pong,
            stage_out,
            fpn,
            ssh_out,
            ssh_tmp,
            head_class,
            head_bbox,
            head_landmark,
            scratch,
        } = &mut *buffers;
        // Backbone: ping-pong through the chain, the last layer of each stage writes its output.
        let mut size = (height, width);
        for (s, stage) in self.stages.iter().enumerate() {
            let (done, rest) = stage_out.split_at_mut(s);
            let out = &mut rest[0];
            let (mut prev, mut next): (&mut Vec<f32>, &mut Vec<f32>) = (&mut *ping, &mut *pong);
            let last = stage.len() - 1;
            for (i, layer) in stage.iter().enumerate() {
                let src: &[f32] = match (i, s) {
                    (0, 0) => input,
                    (0, _) => &done[s - 1],
                    _ => &prev[..],
                };
                let dst: &mut [f32] = if i == last {
                    &mut out[..]
                } else {
                    &mut next[..]
                };
                size = layer.forward(src, size, dst, scratch, par)?;
                core::mem::swap(&mut prev, &mut next);
            }
        }
        // FPN: laterals, then top-down: P2 = merge2(L2 + up(L3)), P1 = merge1(L1 + up(P2)).
        let lv = shapes.levels;
        let [l1, l2, l3, p2, p1] = fpn;
        self.lateral[0].forward(&stage_out[0], lv[0], l1, scratch, par)?;
        self.lateral[1].forward(&stage_out[1], lv[1], l2, scratch, par)?;
        self.lateral[2].forward(&stage_out[2], lv[2], l3, scratch, par)?;
        add_upsampled_nearest(l2, lv[1], l3, lv[2], FPN_CHANNELS);
        self.merge[0].forward(l2, lv[1], p2, scratch, par)?;
        add_upsampled_nearest(l1, lv[0], p2, lv[1], FPN_CHANNELS);
        self.merge[1].forward(l1, lv[0], p1, scratch, par)?;

        let features: [&[f32]; 3] = [p1, p2, l3];
        for level in 0..3 {
            let (h, w) = lv[level];
            let plane = h * w;
            let ssh = &self.ssh[level];
            let out = &mut ssh_out[level][..FPN_CHANNELS * plane];
            let (branch3, rest) = out.split_at_mut(FPN_CHANNELS / 2 * plane);
            let (branch5, branch7) = rest.split_at_mut(FPN_CHANNELS / 4 * plane);
            let [t1, t2] = ssh_tmp;
            ssh.conv3x3
                .forward(features[level], (h, w), branch3, scratch, par)?;
            ssh.conv5x5_1
                .forward(features[level], (h, w), t1, scratch, par)?;
            ssh.conv5x5_2.forward(t1, (h, w), branch5, scratch, par)?;
            ssh.conv7x7_2.forward(t1, (h, w), t2, scratch, par)?;
            ssh.conv7x7_3.forward(t2, (h, w), branch7, scratch, par)?;
            let heads = &self.heads[level];
            heads
                .class
                .forward(out, (h, w), &mut head_class[level], scratch, par)?;
            heads
                .bbox
                .forward(out, (h, w), &mut head_bbox[level], scratch, par)?;
            heads
                .landmark
                .forward(out, (h, w), &mut head_landmark[level], scratch, par)?;
        }
        let buffers: &'b Buffers = buffers;
        Ok(buffers.heads(shapes))
    }
}

/// Every intermediate tensor of one forward pass, sized for the largest frame of a session.
pub(crate) struct Buffers {
    ping: Vec<f32>,
    pong: Vec<f32>,
    stage_out: [Vec<f32>; 3],
    /// Laterals L1, L2, L3 (L3 is also P3), then P2, P1.
    fpn: [Vec<f32>; 5],
    ssh_out: [Vec<f32>; 3],
    ssh_tmp: [Vec<f32>; 2],
    head_class: [Vec<f32>; 3],
    head_bbox: [Vec<f32>; 3],
    head_landmark: [Vec<f32>; 3],
    scratch: Vec<f32>,
}

impl Buffers {
    /// The head outputs of the last forward pass for frames of `shapes`.
    pub(crate) fn heads(&self, shapes: &Shapes) -> HeadOutputs<'_> {
        let a = ANCHORS_PER_CELL;
        let plane = |l: usize| shapes.levels[l].0 * shapes.levels[l].1;
        HeadOutputs {
            class: [0, 1, 2].map(|l| &self.head_class[l][..a * 2 * plane(l)]),
            bbox: [0, 1, 2].map(|l| &self.head_bbox[l][..a * 4 * plane(l)]),
            landmark: [0, 1, 2].map(|l| &self.head_landmark[l][..a * 10 * plane(l)]),
        }
    }

    /// Buffers for frames up to `shapes` (the shapes of the largest frame); `threads` workers.
    pub(crate) fn new(net: &RetinaNet, shapes: &Shapes, threads: usize) -> Buffers {
        let zeros = |n: usize| alloc::vec![0.0f32; n];
        let plane = |l: usize| shapes.levels[l].0 * shapes.levels[l].1;
        let a = ANCHORS_PER_CELL;
        let f = FPN_CHANNELS;
        Buffers {
            ping: zeros(shapes.backbone_max),
            pong: zeros(shapes.backbone_max),
            stage_out: [0, 1, 2].map(|l| zeros(net.stage_channels(l) * plane(l))),
            fpn: [
                zeros(f * plane(0)),
                zeros(f * plane(1)),
                zeros(f * plane(2)),
                zeros(f * plane(1)),
                zeros(f * plane(0)),
            ],
            ssh_out: [0, 1, 2].map(|l| zeros(f * plane(l))),
            ssh_tmp: [zeros(f / 4 * plane(0)), zeros(f / 4 * plane(0))],
            head_class: [0, 1, 2].map(|l| zeros(a * 2 * plane(l))),
            head_bbox: [0, 1, 2].map(|l| zeros(a * 4 * plane(l))),
            head_landmark: [0, 1, 2].map(|l| zeros(a * 10 * plane(l))),
            scratch: zeros(net.scratch_len(shapes, threads)),
        }
    }
}

/// `fine += upsample_nearest(coarse)` to the fine map's size, as ONNX `Resize(mode=nearest,
/// coordinate_transformation_mode=asymmetric, nearest_mode=floor)` does: source index
/// `floor(dst * coarse / fine)`. Fused so the upsampled map is never stored.
fn add_upsampled_nearest(
    fine: &mut [f32],
    (fh, fw): (usize, usize),
    coarse: &[f32],
    (ch, cw): (usize, usize),
    channels: usize,
) {
    for c in 0..channels {
        let dst = &mut fine[c * fh * fw..(c + 1) * fh * fw];
        let src = &coarse[c * ch * cw..(c + 1) * ch * cw];
        for y in 0..fh {
            let sy = (y * ch / fh).min(ch - 1);
            let src_row = &src[sy * cw..(sy + 1) * cw];
            let dst_row = &mut dst[y * fw..(y + 1) * fw];
            // sx = floor(x * cw / fw), stepped without a division per pixel.
            let (mut sx, mut rem) = (0, 0);
            for d in dst_row.iter_mut() {
                *d += src_row[sx];
                rem += cw;
                while rem >= fw && sx + 1 < cw {
                    rem -= fw;
                    sx += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::add_upsampled_nearest;

    #[test]
    fn upsampling_picks_floor_of_scaled_index() {
        // 3 -> 7 columns and 2 -> 3 rows: source index floor(dst * in / out), as ONNX Resize
        // (nearest, asymmetric, floor) computes it.
        let coarse = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
        let mut fine = [0.5f32; 21];
        add_upsampled_nearest(&mut fine, (3, 7), &coarse, (2, 3), 1);
        let cols = [0, 0, 0, 1, 1, 2, 2];
        let rows = [0, 0, 1];
        for y in 0..3 {
            for x in 0..7 {
                assert_eq!(
                    fine[y * 7 + x],
                    0.5 + coarse[rows[y] * 3 + cols[x]],
                    "({x}, {y})"
                );
            }
        }
    }
}
