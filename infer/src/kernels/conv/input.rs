//! The right operand of a convolution's GEMM: the input read as a matrix or packed as im2col
//! blocks.

use super::Conv2dParams;
use crate::kernels::gemm::{BSource, DenseB, RowStarts};
use crate::kernels::im2col::Im2col;

/// The right operand of a convolution's GEMM for one image (one group's input planes): a 1x1
/// stride-1 convolution reads its input as the matrix itself, any other packs im2col blocks.
pub(super) enum GemmInput<'a> {
    Dense(DenseB<'a>),
    Im2col(Im2col<'a>),
}

impl<'a> GemmInput<'a> {
    pub(super) fn new(
        p: &Conv2dParams,
        input: &'a [f32],
        (height, width): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> GemmInput<'a> {
        let in_g = p.in_channels / p.groups;
        let n = oh * ow;
        if p.kernel_h == 1 && p.kernel_w == 1 && p.stride == 1 && p.padding == 0 {
            GemmInput::Dense(DenseB {
                data: input,
                k: in_g,
                n,
                ld: n,
            })
        } else {
            GemmInput::Im2col(Im2col {
                input,
                channels: in_g,
                height,
                width,
                kernel_h: p.kernel_h,
                kernel_w: p.kernel_w,
                stride: p.stride,
                padding: p.padding,
                out_w: ow,
                n,
            })
        }
    }

    fn source(&self) -> &dyn BSource {
        match self {
            GemmInput::Dense(dense) => dense,
            GemmInput::Im2col(im2col) => im2col,
        }
    }
}

impl BSource for GemmInput<'_> {
    fn k(&self) -> usize {
        self.source().k()
    }
    fn n(&self) -> usize {
        self.source().n()
    }
    fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, width: usize, dst: &mut [f32]) {
        self.source().pack(k0, kc, j0, nc, width, dst)
    }
    fn in_place(&self) -> Option<(&[f32], RowStarts)> {
        self.source().in_place()
    }
}
