//! The narrow GEMM: `C = A . B` computed as `C^T = B^T . A^T`, for the late, low-resolution
//! layers whose few output pixels would pad most of the micro-kernel's [`NR`] columns. Those
//! layers read every weight once per forward and are bound by memory traffic, so their weights
//! can also be stored as IEEE half floats ([`PackedAT::to_half`]), halving the traffic.
//!
//! For the same reason several images (the faces of one frame) go through such a layer in one
//! product ([`gemm_narrow_batch`]): every weight is read once for all of them instead of once
//! per face, and their few pixels fill the micro-kernel's rows that one face leaves empty.

use super::gemm::{
    block_offset, check_operands, packed_index, BSource, Epilogue, OutputSpan, PackedA, SharedMut,
    KC, MR, NC, NR, PANEL_ROWS,
};
use super::microkernel::{
    detect, kernel_portable, kernel_portable_f16, kernel_portable_i8, BBlock, HalfBlock, Int8Block,
    Simd, Tile,
};
#[cfg(target_arch = "x86_64")]
use super::microkernel::{kernel_avx2, kernel_avx2_f16, kernel_avx2_i8};
use super::{KernelError, Parallel};
use crate::tensor_read::{f16_to_f32, f32_to_f16};
use alloc::vec;
use alloc::vec::Vec;

/// The left operand packed the other way, for [`gemm_narrow`]: rows in panels of [`NR`]
/// (zero-padded), each `K` groups of `NR` values, depth block by depth block.
#[derive(Clone, Debug)]
pub struct PackedAT {
    m: usize,
    k: usize,
    data: Weights,
}

#[derive(Clone, Debug)]
enum Weights {
    Single(Vec<f32>),
    /// IEEE half bit patterns, same layout.
    Half(Vec<u16>),
    /// Symmetric 8-bit integers, same layout; row (output channel) `i` is
    /// `values * scales[i]`.
    Int8 {
        values: Vec<i8>,
        scales: Vec<f32>,
    },
}

impl Weights {
    /// `tile = pixels . panel` for the weight panel at `at` (one depth block of `kc` rows of
    /// [`NR`] output channels), with the kernel for this storage and CPU.
    #[inline(always)]
    fn panel_product(&self, simd: Simd, at: usize, kc: usize, pixels: &[f32], tile: &mut Tile) {
        match self {
            Weights::Single(w) => {
                let w_panel = BBlock {
                    b: &w[at..at + kc * NR],
                    rows: &PANEL_ROWS[..kc],
                };
                match simd {
                    Simd::Portable => kernel_portable(kc, pixels, w_panel, tile),
                    // SAFETY: detect() checked the CPU; lengths are exact above.
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx2Fma => unsafe { kernel_avx2(kc, pixels, w_panel, tile) },
                }
            }
            Weights::Int8 { values, .. } => {
                let w_panel = Int8Block {
                    b: &values[at..at + kc * NR],
                };
                match simd {
                    Simd::Portable => kernel_portable_i8(kc, pixels, w_panel, tile),
                    // SAFETY: detect() checked AVX2 and FMA; lengths above.
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx2Fma => unsafe { kernel_avx2_i8(kc, pixels, w_panel, tile) },
                }
            }
            Weights::Half(w) => {
                let w_panel = HalfBlock {
                    b: &w[at..at + kc * NR],
                };
                match simd {
                    Simd::Portable => kernel_portable_f16(kc, pixels, w_panel, tile),
                    // SAFETY: detect() checked AVX2, FMA and F16C; lengths above.
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx2Fma => unsafe { kernel_avx2_f16(kc, pixels, w_panel, tile) },
                }
            }
        }
    }
}

impl PackedAT {
    pub fn from_packed(a: &PackedA) -> PackedAT {
        let (m, k) = (a.m, a.k);
        let (panels_a, panels) = (m.div_ceil(MR), m.div_ceil(NR));
        let mut data = vec![0.0f32; panels * NR * k];
        for row in 0..m {
            let (p, r) = (row / MR, row % MR);
            let (q, j) = (row / NR, row % NR);
            for kk in 0..k {
                data[packed_index(q, panels, NR, k, kk) + j] =
                    a.data[packed_index(p, panels_a, MR, k, kk) + r];
            }
        }
        PackedAT {
            m,
            k,
            data: Weights::Single(data),
        }
    }

    /// Stores the weights as IEEE half floats (round to nearest even): half the memory and
    /// half the traffic of the memory-bound layers this GEMM serves, for a relative error of
    /// at most 2^-11 per weight. The activations and the accumulation stay single precision.
    pub fn to_half(&mut self) {
        if let Weights::Single(values) = &self.data {
            self.data = Weights::Half(values.iter().map(|&v| f32_to_f16(v)).collect());
        }
    }

    pub fn is_half(&self) -> bool {
        matches!(self.data, Weights::Half(_))
    }

    /// Stores the weights as signed 8-bit integers with one scale per output channel
    /// (`max |w| / 127`, rounded to nearest): a quarter of the memory and traffic of single
    /// precision, for an error of at most half a step (`max |w| / 254`) per weight. Activations
    /// and sums stay single precision; the scale multiplies each finished tile.
    pub fn to_int8(&mut self) {
        let values: Vec<f32> = match &self.data {
            Weights::Single(v) => v.clone(),
            Weights::Half(v) => v.iter().map(|&h| f16_to_f32(h)).collect(),
            Weights::Int8 { .. } => return,
        };
        let panels = self.m.div_ceil(NR);
        let at = |row: usize, kk: usize| packed_index(row / NR, panels, NR, self.k, kk) + row % NR;
        let scales: Vec<f32> = (0..self.m)
            .map(|row| {
                let max = (0..self.k).fold(0.0f32, |m, kk| m.max(values[at(row, kk)].abs()));
                if max > 0.0 {
                    max / 127.0
                } else {
                    1.0
                }
            })
            .collect();
        let mut quantised = vec![0i8; values.len()];
        for (row, &scale) in scales.iter().enumerate() {
            for kk in 0..self.k {
                let i = at(row, kk);
                quantised[i] = libm::roundf(values[i] / scale).clamp(-127.0, 127.0) as i8;
            }
        }
        self.data = Weights::Int8 {
            values: quantised,
            scales,
        };
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.data, Weights::Int8 { .. })
    }
}

/// True when [`gemm_narrow`] wastes less of the micro-kernel than [`gemm`] for `n` columns.
pub fn narrow_is_better(n: usize) -> bool {
    n > 0 && n < NR && n.div_ceil(MR) * MR < NR
}

/// How the columns of a batched product map to images: image `i` owns columns
/// `i * padded .. i * padded + pixels` (the rest of its `padded`, a multiple of [`MR`] when
/// there is more than one image, are zero), and its output plane starts at `i * image_stride`
/// in `C` (channel `ch`, pixel `px` at `i * image_stride + ch * ldc + px`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub images: usize,
    pub pixels: usize,
    pub padded: usize,
    pub image_stride: usize,
}

impl Batch {
    /// `images` images of `pixels` output pixels each, outputs `image_stride` floats apart.
    pub fn new(images: usize, pixels: usize, image_stride: usize) -> Batch {
        let padded = if images > 1 {
            Batch::image_columns(pixels)
        } else {
            pixels
        };
        Batch {
            images,
            pixels,
            padded,
            image_stride,
        }
    }

    /// Columns one image of `pixels` output pixels takes in a batch of two or more: whole
    /// micro-kernel panels.
    pub fn image_columns(pixels: usize) -> usize {
        pixels.div_ceil(MR) * MR
    }

    /// Columns of the whole product.
    pub fn columns(&self) -> usize {
        self.images * self.padded
    }
}

/// The right operand of a batched product: image `i`'s `k x pixels` operand is `source(i)`,
/// laid out as [`Batch`] says. Each [`MR`]-wide panel lies within one image (the padding
/// sees to it), so it is packed by that image's own source.
pub struct BatchedB<F> {
    pub batch: Batch,
    pub k: usize,
    pub source: F,
}

impl<F, S> BSource for BatchedB<F>
where
    F: Fn(usize) -> S + Sync,
    S: BSource,
{
    fn k(&self) -> usize {
        self.k
    }

    fn n(&self) -> usize {
        self.batch.columns()
    }

    fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, width: usize, dst: &mut [f32]) {
        let Batch { pixels, padded, .. } = self.batch;
        debug_assert!(j0 % width == 0 && (self.batch.images == 1 || padded % width == 0));
        for panel in 0..nc.div_ceil(width) {
            let column = j0 + panel * width;
            let (image, local) = (column / padded, column % padded);
            let dst = &mut dst[panel * kc * width..][..kc * width];
            match pixels.saturating_sub(local).min(width) {
                0 => dst.fill(0.0),
                count => (self.source)(image).pack(k0, kc, local, count, width, dst),
            }
        }
    }
}

/// Same result as [`gemm`], computed as `C^T = B^T . A^T` so that the few columns of a
/// late, low-resolution layer fill the micro-kernel's [`MR`] side instead of padding [`NR`].
///
/// Requires `b.n() <= NC` rounded down to a multiple of [`MR`]; `scratch` as for [`gemm`].
pub fn gemm_narrow(
    a: &PackedAT,
    b: &dyn BSource,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue<'_>,
    scratch: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    let batch = Batch::new(1, b.n(), 0);
    gemm_narrow_batch(a, b, batch, c, ldc, epilogue, scratch, par)
}

/// [`gemm_narrow`] over a batch of images laid out as `batch` says (`b` is usually a
/// [`BatchedB`]): bit-identical to one [`gemm_narrow`] per image, with each weight panel read
/// once for the whole batch. Requires `batch.columns() <= NC` rounded down to a multiple of
/// [`MR`]; the residual has `C`'s layout.
#[allow(clippy::too_many_arguments)]
pub fn gemm_narrow_batch(
    a: &PackedAT,
    b: &dyn BSource,
    batch: Batch,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue<'_>,
    scratch: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    let (m, k, n) = (a.m, a.k, b.n());
    let plane = (m - 1) * ldc + batch.pixels;
    let laid_out = n == batch.columns()
        && batch.pixels <= batch.padded
        && (batch.images <= 1 || (batch.padded % MR == 0 && batch.image_stride >= m * ldc));
    if !laid_out {
        return Err(KernelError::InvalidParams(
            "narrow GEMM batch layout does not match its operand",
        ));
    }
    let out = OutputSpan {
        len: c.len(),
        ldc,
        columns: batch.pixels,
        needed: batch.images.saturating_sub(1) * batch.image_stride + plane,
    };
    // Whole micro-kernel panels of B must fit in one worker's packing slot (KC x NC floats).
    let shape = (
        NC / MR * MR,
        "narrow GEMM needs n <= NC rounded down to MR and ldc >= n",
    );
    let Some(threads) = check_operands(m, k, b, out, shape, &epilogue, scratch.len(), par)? else {
        return Ok(());
    };
    let panels = m.div_ceil(NR);
    let per_task = panels.div_ceil(threads);
    let simd = detect();
    let c_ptr = SharedMut(c.as_mut_ptr());
    let c_len = c.len();
    // B is packed once per depth block into scratch shared by every task, not once per task:
    // the tasks differ only in their rows of A, and packing B again in each of them was pure
    // duplicated work (all of it on the critical path with two threads). As many depth blocks
    // as the scratch holds are packed by one parallel job, then multiplied by another.
    let padded_n = Batch::image_columns(n);
    let blocks = k.div_ceil(KC);
    if KC * padded_n > scratch.len() {
        return Err(KernelError::InvalidParams(
            "narrow GEMM: one packed depth block of B exceeds the scratch",
        ));
    }
    let blocks_per_group = (scratch.len() / (KC * padded_n)).min(blocks);
    let scratch_ptr = SharedMut(scratch.as_mut_ptr());
    let scratch_len = scratch.len();
    let mut first_block = 0;
    while first_block < blocks {
        let group = blocks_per_group.min(blocks - first_block);
        let pack_block = |i: usize, _worker: usize| {
            let k0 = (first_block + i) * KC;
            let kc = KC.min(k - k0);
            // SAFETY: block i of the group owns floats [i*KC*padded_n, +kc*padded_n), inside
            // the scratch by the choice of blocks_per_group, disjoint from every other block's.
            let dst = unsafe {
                core::slice::from_raw_parts_mut(
                    scratch_ptr.get().add(i * KC * padded_n),
                    kc * padded_n,
                )
            };
            b.pack(k0, kc, 0, n, MR, dst);
        };
        par.run(group, &pack_block);
        let multiply = |t: usize, _worker: usize| {
            let q0 = t * per_task;
            let q1 = panels.min(q0 + per_task);
            // SAFETY: the packing job has finished; from here on the scratch is only read.
            let packed = unsafe {
                core::slice::from_raw_parts(scratch_ptr.get() as *const f32, scratch_len)
            };
            // SAFETY: tasks write disjoint rows (channels) of C.
            let c = unsafe { core::slice::from_raw_parts_mut(c_ptr.get(), c_len) };
            let mut tile: Tile = [0.0; MR * NR];
            for i in 0..group {
                let k0 = (first_block + i) * KC;
                let kc = KC.min(k - k0);
                let pack = &packed[i * KC * padded_n..][..kc * padded_n];
                let (first, last) = (k0 == 0, k0 + kc == k);
                for q in q0..q1 {
                    // Panel q's rows k0..k0+kc (one depth block), stored block by block.
                    let at = block_offset(q, panels, NR, k0, kc);
                    let channels = NR.min(m - q * NR);
                    for pp in 0..n.div_ceil(MR) {
                        let pixels = &pack[pp * kc * MR..][..kc * MR];
                        a.data.panel_product(simd, at, kc, pixels, &mut tile);
                        let column = pp * MR;
                        let (image, px0) = (column / batch.padded, column % batch.padded);
                        let count = MR.min(batch.pixels.saturating_sub(px0));
                        let plane0 = image * batch.image_stride;
                        for j in 0..channels {
                            let ch = q * NR + j;
                            let bias = epilogue.bias.map_or(0.0, |b| b[ch]);
                            // Exactly 1 for float weights, so their results are unchanged.
                            let scale = match &a.data {
                                Weights::Int8 { scales, .. } => scales[ch],
                                _ => 1.0,
                            };
                            for r in 0..count {
                                let at = plane0 + ch * ldc + px0 + r;
                                let sum = tile[r * NR + j] * scale;
                                let mut v = sum + if first { bias } else { c[at] };
                                if last {
                                    if let Some(res) = epilogue.residual {
                                        v += res[at];
                                    }
                                    v = epilogue.activation.apply(v);
                                }
                                c[at] = v;
                            }
                        }
                    }
                }
            }
        };
        par.run(panels.div_ceil(per_task), &multiply);
        first_block += group;
    }
    Ok(())
}
