//! The ResNet forward pass over pre-sized buffers (the "plan" half of plan/state).

use crate::kernels::{
    global_avg_pool, max_pool2d, Activation, Conv2d, KernelError, Linear, Parallel,
};
use alloc::vec;
use alloc::vec::Vec;

/// First layers of the network (docs/FORMAT.md, "Stems").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 7x7 stride-2 conv + 3x3 stride-2 max pool (torchvision).
    Imagenet,
    /// 3x3 stride-1 conv, no pool (48-64 px inputs).
    Small,
}

/// One residual block with BN folded: basic (conv1, conv2) or bottleneck (conv1..conv3).
#[derive(Clone, Debug)]
pub(crate) struct Block {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Option<Conv2d>,
    pub downsample: Option<Conv2d>,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
}

impl Block {
    /// Lets each convolution pick its GEMM shape for the output size it will see.
    pub fn prepare_for_input(&mut self) {
        let (mut h, mut w) = (self.in_h, self.in_w);
        for conv in [
            Some(&mut self.conv1),
            Some(&mut self.conv2),
            self.conv3.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if let Some((oh, ow)) = conv.output_size(h, w) {
                conv.prepare_for_output_pixels(oh * ow);
                (h, w) = (oh, ow);
            }
        }
        if let Some(ds) = &mut self.downsample {
            if let Some((oh, ow)) = ds.output_size(self.in_h, self.in_w) {
                ds.prepare_for_output_pixels(oh * ow);
            }
        }
    }

    /// See [`crate::Model::store_late_weights_as_f16`].
    pub fn late_weights_to_half(&mut self) -> usize {
        [
            Some(&mut self.conv1),
            Some(&mut self.conv2),
            self.conv3.as_mut(),
            self.downsample.as_mut(),
        ]
        .into_iter()
        .flatten()
        .map(Conv2d::narrow_weights_to_half)
        .sum()
    }

    /// Floats of convolution scratch this block's convolutions need to take their fastest
    /// paths at its input size.
    pub fn scratch_len(&self, threads: usize) -> usize {
        let mut len = Conv2d::scratch_len(threads);
        let (mut h, mut w) = (self.in_h, self.in_w);
        for conv in [Some(&self.conv1), Some(&self.conv2), self.conv3.as_ref()]
            .into_iter()
            .flatten()
        {
            len = len.max(conv.scratch_len_at(threads, h, w));
            match conv.output_size(h, w) {
                Some(size) => (h, w) = size,
                None => break,
            }
        }
        if let Some(ds) = &self.downsample {
            len = len.max(ds.scratch_len_at(threads, self.in_h, self.in_w));
        }
        len
    }

    /// `(out_h, out_w, macs, largest tensor in floats)`, `None` if the input is too small.
    pub fn shape_and_cost(&self) -> Option<(usize, usize, u64, usize)> {
        let mut macs = 0u64;
        let mut largest = self.in_channels * self.in_h * self.in_w;
        let (mut h, mut w) = (self.in_h, self.in_w);
        for conv in [Some(&self.conv1), Some(&self.conv2), self.conv3.as_ref()]
            .into_iter()
            .flatten()
        {
            let p = conv.params();
            (h, w) = conv.output_size(h, w)?;
            macs += (p.out_channels * p.in_channels / p.groups * p.kernel_h * p.kernel_w * h * w)
                as u64;
            largest = largest.max(p.out_channels * h * w);
        }
        if let Some(ds) = &self.downsample {
            let p = ds.params();
            let (dh, dw) = ds.output_size(self.in_h, self.in_w)?;
            if (dh, dw) != (h, w) {
                return None;
            }
            macs += (p.out_channels * p.in_channels * dh * dw) as u64;
        }
        Some((h, w, macs, largest))
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Network {
    pub stem: Stem,
    pub stem_conv: Conv2d,
    pub blocks: Vec<Block>,
    pub fc: Linear,
    pub input_size: usize,
    /// Floats of the largest activation tensor: each buffer of [`Activations`] has this size.
    pub max_activation: usize,
    pub final_channels: usize,
    pub macs: u64,
}

/// Every intermediate tensor of one forward pass; owned by a session, reused across calls.
#[derive(Debug)]
pub(crate) struct Activations {
    x: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
    shortcut: Vec<f32>,
    pooled: Vec<f32>,
    scratch: Vec<f32>,
}

impl Network {
    pub fn activations(&self, threads: usize) -> Activations {
        let n = self.max_activation;
        Activations {
            x: vec![0.0; n],
            t1: vec![0.0; n],
            t2: vec![0.0; n],
            shortcut: vec![0.0; n],
            pooled: vec![0.0; self.final_channels],
            scratch: vec![0.0; self.scratch_len(threads)],
        }
    }

    fn scratch_len(&self, threads: usize) -> usize {
        let s = self.input_size;
        self.blocks
            .iter()
            .map(|b| b.scratch_len(threads))
            .fold(self.stem_conv.scratch_len_at(threads, s, s), usize::max)
    }

    /// Logits of one normalised CHW input `[3, S, S]`. Allocation-free.
    pub fn forward(
        &self,
        input: &[f32],
        a: &mut Activations,
        par: &dyn Parallel,
        logits: &mut [f32],
    ) -> Result<(), KernelError> {
        let s = self.input_size;
        let relu = Activation::Relu;
        let (mut h, mut w) = self
            .stem_conv
            .output_size(s, s)
            .ok_or(KernelError::InvalidParams("input smaller than the stem"))?;
        match self.stem {
            Stem::Imagenet => {
                self.stem_conv
                    .forward(input, s, s, &mut a.t1, None, relu, &mut a.scratch, par)?;
                (h, w) = max_pool2d(&a.t1[..64 * h * w], (64, h, w), 3, 2, 1, &mut a.x)?;
            }
            Stem::Small => {
                self.stem_conv
                    .forward(input, s, s, &mut a.x, None, relu, &mut a.scratch, par)?
            }
        }
        let mut channels = 64;
        for block in &self.blocks {
            let (bh, bw) = (h, w);
            let (h1, w1) = block
                .conv1
                .output_size(bh, bw)
                .ok_or(KernelError::InvalidParams("block input too small"))?;
            block
                .conv1
                .forward(&a.x, bh, bw, &mut a.t1, None, relu, &mut a.scratch, par)?;
            if let Some(ds) = &block.downsample {
                ds.forward(
                    &a.x,
                    bh,
                    bw,
                    &mut a.shortcut,
                    None,
                    Activation::None,
                    &mut a.scratch,
                    par,
                )?;
            }
            match &block.conv3 {
                None => {
                    let shortcut = if block.downsample.is_some() {
                        &a.shortcut
                    } else {
                        &a.x
                    };
                    block.conv2.forward(
                        &a.t1,
                        h1,
                        w1,
                        &mut a.t2,
                        Some(shortcut),
                        relu,
                        &mut a.scratch,
                        par,
                    )?;
                    core::mem::swap(&mut a.x, &mut a.t2);
                    (h, w) = (h1, w1);
                }
                Some(conv3) => {
                    let (h2, w2) = block
                        .conv2
                        .output_size(h1, w1)
                        .ok_or(KernelError::InvalidParams("block input too small"))?;
                    block.conv2.forward(
                        &a.t1,
                        h1,
                        w1,
                        &mut a.t2,
                        None,
                        relu,
                        &mut a.scratch,
                        par,
                    )?;
                    let shortcut = if block.downsample.is_some() {
                        &a.shortcut
                    } else {
                        &a.x
                    };
                    conv3.forward(
                        &a.t2,
                        h2,
                        w2,
                        &mut a.t1,
                        Some(shortcut),
                        relu,
                        &mut a.scratch,
                        par,
                    )?;
                    core::mem::swap(&mut a.x, &mut a.t1);
                    (h, w) = (h2, w2);
                }
            }
            channels = block
                .conv3
                .as_ref()
                .unwrap_or(&block.conv2)
                .params()
                .out_channels;
        }
        global_avg_pool(&a.x[..channels * h * w], channels, h * w, &mut a.pooled)?;
        self.fc.forward(&a.pooled, logits)
    }
}
