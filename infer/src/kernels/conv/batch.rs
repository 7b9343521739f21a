//! Convolutions over the faces of one frame at once. Only the late, low-resolution layers that
//! run the narrow GEMM gain from it: they are bound by reading their weights, which a batched
//! product reads once for every face instead of once per face.

use super::{implicit, Conv2d, GemmInput, Plan};
use crate::kernels::gemm::{self, Batch, BatchedB, Epilogue};
use crate::kernels::{check_len, Activation, KernelError, Parallel};

impl Conv2d {
    /// [`Conv2d::forward`] for `images` images stored one after another: input
    /// `[images, in, height, width]`, output and residual `[images, out, oh, ow]`. A layer that
    /// runs the narrow GEMM computes the whole batch in one product; any other runs image by
    /// image. Either way the result is bit-identical to one `forward` per image.
    /// Allocation-free.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_batch(
        &self,
        input: &[f32],
        images: usize,
        (height, width): (usize, usize),
        output: &mut [f32],
        residual: Option<&[f32]>,
        activation: Activation,
        scratch: &mut [f32],
        par: &dyn Parallel,
    ) -> Result<(), KernelError> {
        let p = &self.params;
        let (oh, ow) = self.checked_output_size(height, width)?;
        let (in_len, out_len) = (p.in_channels * height * width, p.out_channels * oh * ow);
        check_len("conv2d batch input", input.len(), images * in_len)?;
        check_len("conv2d batch output", output.len(), images * out_len)?;
        if let Some(r) = residual {
            check_len("conv2d batch residual", r.len(), images * out_len)?;
        }
        let pixels = oh * ow;
        let batch = Batch::new(images, pixels, out_len);
        let narrow = match &self.plan {
            // The packed (not implicit) path, as `forward` takes for these shapes, so that the
            // batch is bit-identical to it.
            Plan::Gemm { narrow, .. }
                if images > 1
                    && p.groups == 1
                    && narrow.len() == 1
                    && gemm::narrow_is_better(pixels)
                    && batch.columns() <= gemm::NC
                    && implicit::Layout::new(p, height, width, self.path).is_none() =>
            {
                &narrow[0]
            }
            _ => {
                for i in 0..images {
                    let outputs = i * out_len..(i + 1) * out_len;
                    self.forward(
                        &input[i * in_len..(i + 1) * in_len],
                        height,
                        width,
                        &mut output[outputs.clone()],
                        residual.map(|r| &r[outputs]),
                        activation,
                        scratch,
                        par,
                    )?;
                }
                return Ok(());
            }
        };
        let source = BatchedB {
            batch,
            k: p.in_channels * p.kernel_h * p.kernel_w,
            source: |i: usize| {
                let image = &input[i * in_len..(i + 1) * in_len];
                GemmInput::new(p, image, (height, width), (oh, ow))
            },
        };
        let epilogue = Epilogue {
            bias: Some(&self.bias),
            residual: residual.map(|r| &r[..images * out_len]),
            activation,
        };
        let output = &mut output[..images * out_len];
        gemm::gemm_narrow_batch(
            narrow, &source, batch, output, pixels, epilogue, scratch, par,
        )
    }
}
