//! The ResNet forward pass over pre-sized buffers (the "plan" half of plan/state).

use crate::kernels::conv::LatePrecision;
use crate::kernels::{
    check_len, gemm, global_avg_pool, max_pool2d, Activation, Conv2d, KernelError, Linear, Parallel,
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
    pub fn late_weights_to(&mut self, precision: LatePrecision) -> usize {
        [
            Some(&mut self.conv1),
            Some(&mut self.conv2),
            self.conv3.as_mut(),
            self.downsample.as_mut(),
        ]
        .into_iter()
        .flatten()
        .map(|conv| conv.narrow_weights_to(precision))
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

    /// Runs the block on `images` images in `bufs.x` (`[images, c, h, w]`), leaving the
    /// result in `bufs.x`; returns its `(channels, height, width)`.
    fn forward(
        &self,
        (h, w): (usize, usize),
        images: usize,
        bufs: &mut Buffers,
        scratch: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(usize, usize, usize), KernelError> {
        let relu = Activation::Relu;
        let too_small = || KernelError::InvalidParams("block input too small");
        let (h1, w1) = self.conv1.output_size(h, w).ok_or_else(too_small)?;
        self.conv1.forward_batch(
            &bufs.x,
            images,
            (h, w),
            &mut bufs.t1,
            None,
            relu,
            scratch,
            par,
        )?;
        if let Some(ds) = &self.downsample {
            let none = Activation::None;
            ds.forward_batch(
                &bufs.x,
                images,
                (h, w),
                &mut bufs.shortcut,
                None,
                none,
                scratch,
                par,
            )?;
        }
        let shortcut = if self.downsample.is_some() {
            &bufs.shortcut
        } else {
            &bufs.x
        };
        let last = self.conv3.as_ref().unwrap_or(&self.conv2);
        let out = match &self.conv3 {
            None => {
                let (t1, t2) = (&bufs.t1, &mut bufs.t2);
                let residual = Some(&shortcut[..]);
                self.conv2
                    .forward_batch(t1, images, (h1, w1), t2, residual, relu, scratch, par)?;
                (h1, w1)
            }
            Some(conv3) => {
                let (h2, w2) = self.conv2.output_size(h1, w1).ok_or_else(too_small)?;
                let (t1, t2) = (&mut bufs.t1, &mut bufs.t2);
                self.conv2
                    .forward_batch(t1, images, (h1, w1), t2, None, relu, scratch, par)?;
                let residual = Some(&shortcut[..]);
                conv3.forward_batch(t2, images, (h2, w2), t1, residual, relu, scratch, par)?;
                core::mem::swap(&mut bufs.t1, &mut bufs.t2);
                (h2, w2)
            }
        };
        core::mem::swap(&mut bufs.x, &mut bufs.t2);
        Ok((last.params().out_channels, out.0, out.1))
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

/// The four tensors a block reads and writes: its input `x` (and output, after a swap), two
/// intermediates and the downsampled shortcut.
#[derive(Debug)]
struct Buffers {
    x: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
    shortcut: Vec<f32>,
}

impl Buffers {
    fn new(len: usize) -> Buffers {
        Buffers {
            x: vec![0.0; len],
            t1: vec![0.0; len],
            t2: vec![0.0; len],
            shortcut: vec![0.0; len],
        }
    }
}

/// Every intermediate tensor of a forward pass; owned by a session, reused across calls.
#[derive(Debug)]
pub(crate) struct Activations {
    /// One image through the whole network, or through the blocks before `batch_from`.
    single: Buffers,
    /// Up to `batch_capacity` images through the blocks from `batch_from` on.
    batch: Buffers,
    batch_from: usize,
    batch_capacity: usize,
    pooled: Vec<f32>,
    scratch: Vec<f32>,
}

impl Activations {
    /// Most images one [`Network::forward_batch`] call takes.
    pub fn batch_capacity(&self) -> usize {
        self.batch_capacity
    }
}

/// Most faces batched through the late layers at once: past this the weights are already
/// read once per 8 faces, and the buffers stay small (8 x 4,608 floats each at 48 px).
pub(crate) const MAX_BATCH: usize = crate::session::MAX_BATCH;

impl Network {
    /// Buffers for one image at a time, or for batches of up to `max_batch` through the late
    /// layers that gain from batching (those running the narrow GEMM; with none, or for a
    /// `max_batch` of 1, batches run image by image).
    pub fn activations(&self, threads: usize, max_batch: usize) -> Activations {
        let (batch_from, per_image, columns) = self.batch_section();
        // Each image of a batch takes `columns` of the narrow GEMM's at most NC.
        let capacity = if batch_from < self.blocks.len() {
            max_batch
                .clamp(1, MAX_BATCH)
                .min(crate::kernels::gemm::NC / columns)
        } else {
            1
        };
        let batch_len = if capacity > 1 {
            capacity * per_image
        } else {
            0
        };
        Activations {
            single: Buffers::new(self.max_activation),
            batch: Buffers::new(batch_len),
            batch_from,
            batch_capacity: capacity,
            pooled: vec![0.0; self.final_channels],
            scratch: vec![0.0; self.scratch_len(threads)],
        }
    }

    /// `(first block of the batched section, floats per image of its largest tensor, GEMM
    /// columns per image of its widest layer)`: the trailing blocks whose every convolution
    /// runs the narrow GEMM.
    fn batch_section(&self) -> (usize, usize, usize) {
        let (mut from, mut per_image, mut columns) = (self.blocks.len(), 1, 1);
        for (i, block) in self.blocks.iter().enumerate().rev() {
            let Some((oh, ow, _, largest)) = block.shape_and_cost() else {
                break;
            };
            let Some((h1, w1)) = block.conv1.output_size(block.in_h, block.in_w) else {
                break;
            };
            if !(gemm::narrow_is_better(h1 * w1) && gemm::narrow_is_better(oh * ow)) {
                break;
            }
            from = i;
            per_image = per_image.max(largest);
            columns = columns.max(gemm::Batch::image_columns((h1 * w1).max(oh * ow)));
        }
        (from, per_image, columns)
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
        self.forward_batch(input, 1, a, par, logits)
    }

    /// Logits `[images, classes]` of `images` normalised inputs `[images, 3, S, S]`, at most
    /// [`Activations::batch_capacity`]: the early layers run image by image, the late ones on
    /// the whole batch. Bit-identical to one [`Network::forward`] per image. Allocation-free.
    pub fn forward_batch(
        &self,
        inputs: &[f32],
        images: usize,
        a: &mut Activations,
        par: &dyn Parallel,
        logits: &mut [f32],
    ) -> Result<(), KernelError> {
        let s = self.input_size;
        let classes = self.fc.out_features();
        check_len("network batch input", inputs.len(), images * 3 * s * s)?;
        check_len("network batch logits", logits.len(), images * classes)?;
        if images == 0 {
            return Ok(());
        }
        if images > a.batch_capacity {
            return Err(KernelError::InvalidParams(
                "batch larger than the activations were sized for",
            ));
        }
        let split = if images > 1 {
            a.batch_from
        } else {
            self.blocks.len()
        };
        let mut shape = (0, 0, 0);
        for (i, input) in inputs.chunks_exact(3 * s * s).take(images).enumerate() {
            shape = self.stem_forward(input, a, par)?;
            for block in &self.blocks[..split] {
                shape = block.forward((shape.1, shape.2), 1, &mut a.single, &mut a.scratch, par)?;
            }
            if images > 1 {
                let len = shape.0 * shape.1 * shape.2;
                a.batch.x[i * len..(i + 1) * len].copy_from_slice(&a.single.x[..len]);
            }
        }
        let bufs = if images > 1 {
            &mut a.batch
        } else {
            &mut a.single
        };
        for block in &self.blocks[split..] {
            shape = block.forward((shape.1, shape.2), images, bufs, &mut a.scratch, par)?;
        }
        let (channels, len) = (shape.0, shape.0 * shape.1 * shape.2);
        for (x, out) in bufs
            .x
            .chunks_exact(len)
            .zip(logits.chunks_exact_mut(classes))
            .take(images)
        {
            global_avg_pool(x, channels, shape.1 * shape.2, &mut a.pooled)?;
            self.fc.forward(&a.pooled, out)?;
        }
        Ok(())
    }

    /// The stem of one image into `a.single.x`; returns `(channels, height, width)`.
    fn stem_forward(
        &self,
        input: &[f32],
        a: &mut Activations,
        par: &dyn Parallel,
    ) -> Result<(usize, usize, usize), KernelError> {
        let s = self.input_size;
        let relu = Activation::Relu;
        let (h, w) = self
            .stem_conv
            .output_size(s, s)
            .ok_or(KernelError::InvalidParams("input smaller than the stem"))?;
        let channels = self.stem_conv.params().out_channels;
        let bufs = &mut a.single;
        match self.stem {
            Stem::Imagenet => {
                self.stem_conv.forward(
                    input,
                    s,
                    s,
                    &mut bufs.t1,
                    None,
                    relu,
                    &mut a.scratch,
                    par,
                )?;
                let (h, w) = max_pool2d(
                    &bufs.t1[..channels * h * w],
                    (channels, h, w),
                    3,
                    2,
                    1,
                    &mut bufs.x,
                )?;
                Ok((channels, h, w))
            }
            Stem::Small => {
                self.stem_conv.forward(
                    input,
                    s,
                    s,
                    &mut bufs.x,
                    None,
                    relu,
                    &mut a.scratch,
                    par,
                )?;
                Ok((channels, h, w))
            }
        }
    }
}
