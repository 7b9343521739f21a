//! Single-precision GEMM with a pre-packed left operand and fused epilogue:
//! `C[m, n] = act(A[m, :] . B[:, n] + bias[m] (+ residual[m, n]))`.
//!
//! `A` (weights) is packed once into panels of [`MR`] rows; `B` (activations, or an implicit
//! im2col view of them, see [`BSource`]) is packed per call into panels of [`NR`] columns in
//! blocks of [`KC`] x [`NC`] so a panel of each stays in L1 and the `B` block in L2 (the
//! GotoBLAS scheme). The packing buffer is caller-provided scratch, so nothing allocates.

use super::im2col::Tap;
pub use super::microkernel::simd_name;
use super::microkernel::{detect, kernel_portable, BBlock, Simd, Tile};
#[cfg(target_arch = "x86_64")]
use super::microkernel::{kernel_avx2, kernel_avx2_fused, FusedStore};
pub use super::narrow::{
    gemm_narrow, gemm_narrow_batch, narrow_is_better, Batch, BatchedB, PackedAT,
};
use super::{check_len, Activation, KernelError, Parallel};
use alloc::vec;
use alloc::vec::Vec;

/// Rows of `A` per micro-kernel tile.
pub const MR: usize = 6;
/// Columns of `B` per micro-kernel tile (two AVX registers).
pub const NR: usize = 16;
/// Depth of one packed block.
pub const KC: usize = 256;
/// Columns of one packed `B` block (a multiple of [`NR`]).
pub const NC: usize = 128;
/// Floats of packing scratch one worker needs: pass `threads * PACK_SCRATCH_LEN` to [`gemm`].
pub const PACK_SCRATCH_LEN: usize = KC * NC;

/// The bias of a GEMM without one.
static ZERO_BIAS: [f32; MR] = [0.0; MR];

/// Row offsets of a packed panel (`NR` floats per row), for any depth block.
pub(super) static PANEL_ROWS: [usize; KC] = {
    let mut rows = [0; KC];
    let mut kk = 0;
    while kk < KC {
        rows[kk] = kk * NR;
        kk += 1;
    }
    rows
};

/// Where panel `panel` (of `panels`, each `width` rows wide) starts for the depth block at
/// `k0` of `kc` rows, in a packed operand of depth `k`.
///
/// Packed operands are laid out depth block by depth block: all panels' rows `0..KC`, then
/// all panels' rows `KC..2*KC`, and so on. The GEMM walks every panel of one depth block
/// before the next block, so this order makes that walk one sequential stream, which the
/// hardware prefetcher follows; panel-major order jumped `width * k` floats per panel, and
/// the late layers, which read each weight exactly once, were bound by those misses.
#[inline(always)]
pub(super) fn block_offset(
    panel: usize,
    panels: usize,
    width: usize,
    k0: usize,
    kc: usize,
) -> usize {
    k0 * width * panels + panel * kc * width
}

/// Floats from packed row `kk` (depth index) of `panel`: `kk`'s block, then its row in it.
#[inline(always)]
pub(super) fn packed_index(
    panel: usize,
    panels: usize,
    width: usize,
    k: usize,
    kk: usize,
) -> usize {
    let k0 = kk / KC * KC;
    let kc = KC.min(k - k0);
    block_offset(panel, panels, width, k0, kc) + (kk - k0) * width
}

/// The left operand, packed for the micro-kernel: rows in panels of [`MR`] (zero-padded),
/// each panel `K` groups of `MR` values, stored depth block by depth block (see
/// [`block_offset`]).
#[derive(Clone, Debug)]
pub struct PackedA {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) data: Vec<f32>,
}

impl PackedA {
    /// Packs a row-major `m x k` matrix.
    pub fn new(m: usize, k: usize, a: &[f32]) -> Result<PackedA, KernelError> {
        if m == 0 || k == 0 {
            return Err(KernelError::InvalidParams(
                "GEMM needs at least one row and one column",
            ));
        }
        check_len("GEMM left operand", a.len(), m * k)?;
        let panels = m.div_ceil(MR);
        let mut data = vec![0.0f32; panels * MR * k];
        for row in 0..m {
            let (p, r) = (row / MR, row % MR);
            for (kk, &v) in a[row * k..(row + 1) * k].iter().enumerate() {
                data[packed_index(p, panels, MR, k, kk) + r] = v;
            }
        }
        Ok(PackedA { m, k, data })
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn depth(&self) -> usize {
        self.k
    }

    /// Rows `k0..k0+kc` (one depth block) of panel `p`.
    #[inline(always)]
    fn block(&self, p: usize, k0: usize, kc: usize) -> &[f32] {
        let at = block_offset(p, self.m.div_ceil(MR), MR, k0, kc);
        &self.data[at..at + kc * MR]
    }
}

/// The right operand, a `k x n` matrix that can pack any block of itself.
pub trait BSource: Sync {
    fn k(&self) -> usize;
    fn n(&self) -> usize;
    /// Writes rows `k0..k0+kc` and columns `j0..j0+nc` as `ceil(nc/width)` panels, panel `jp`
    /// at `dst[jp*kc*width..]` holding `kc` groups of `width` values; columns past `nc` are 0.
    /// `width` is [`NR`] for [`gemm`] and [`MR`] for [`gemm_narrow`].
    fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, width: usize, dst: &mut [f32]);
    /// `Some((data, rows))` when element `(kk, j)` already sits at `data[rows.start(kk) + j]`:
    /// [`gemm`] then reads full column panels in place instead of packing (copying) them.
    fn in_place(&self) -> Option<(&[f32], RowStarts)> {
        None
    }
}

/// Where the rows of an in-place [`BSource`] start in its data. Both forms increase with the
/// row, so the last row bounds them all.
#[derive(Clone, Copy, Debug)]
pub enum RowStarts {
    /// Row `kk` starts at `kk * ld` (a row-major matrix).
    Strided(usize),
    /// The im2col rows of a stride-1 convolution over a zero-padded CHW input whose planes
    /// are `height x width` (padding included): row `(ci, ky, kx)` starts at
    /// `(ci * height + ky) * width + kx`, and column `j` is output pixel `j` in padded-width
    /// coordinates (`oy * width + ox`).
    Taps {
        height: usize,
        width: usize,
        kernel_h: usize,
        kernel_w: usize,
    },
}

impl RowStarts {
    /// Where row `row` starts.
    #[inline]
    pub fn start(&self, row: usize) -> usize {
        let mut start = [0];
        self.fill(row, &mut start);
        start[0]
    }

    /// The starts of rows `k0..k0 + out.len()`, walking the taps without a division per row
    /// (this runs once per depth block and column chunk, which for a 16-channel layer is as
    /// often as a few hundred thousand multiply-adds).
    fn fill(&self, k0: usize, out: &mut [usize]) {
        match *self {
            RowStarts::Strided(ld) => {
                for (kk, start) in out.iter_mut().enumerate() {
                    *start = (k0 + kk) * ld;
                }
            }
            RowStarts::Taps {
                height,
                width,
                kernel_h,
                kernel_w,
            } => {
                let mut tap = Tap::at(k0, kernel_h, kernel_w);
                for start in out.iter_mut() {
                    *start = (tap.ci * height + tap.ky) * width + tap.kx;
                    tap.advance();
                }
            }
        }
    }
}

/// A row-major `k x n` matrix with row stride `ld`.
pub struct DenseB<'a> {
    pub data: &'a [f32],
    pub k: usize,
    pub n: usize,
    pub ld: usize,
}

impl BSource for DenseB<'_> {
    fn in_place(&self) -> Option<(&[f32], RowStarts)> {
        Some((self.data, RowStarts::Strided(self.ld)))
    }
    fn k(&self) -> usize {
        self.k
    }
    fn n(&self) -> usize {
        self.n
    }
    fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, width: usize, dst: &mut [f32]) {
        pack_rows(
            self.data,
            RowStarts::Strided(self.ld),
            k0,
            kc,
            j0,
            nc,
            width,
            dst,
        );
    }
}

/// The `ceil(nc / width)` packed panels of a `kc`-deep block of columns `j0..j0 + nc` in
/// `dst`, each as (first column, how many of its `width` columns exist, its floats): how
/// every [`BSource::pack`] walks its destination.
pub(super) fn column_panels(
    dst: &mut [f32],
    kc: usize,
    j0: usize,
    nc: usize,
    width: usize,
) -> impl Iterator<Item = (usize, usize, &mut [f32])> {
    dst.chunks_exact_mut(kc * width)
        .take(nc.div_ceil(width))
        .enumerate()
        .map(move |(jp, panel)| {
            let col = j0 + jp * width;
            (col, width.min(j0 + nc - col), panel)
        })
}

/// [`BSource::pack`] for a source whose rows lie in `data` where `rows` says: the ragged last
/// column panel of an in-place source, which [`gemm`] packs rather than reads in place.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_rows(
    data: &[f32],
    rows: RowStarts,
    k0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    panel_width: usize,
    dst: &mut [f32],
) {
    for (col, width, panel) in column_panels(dst, kc, j0, nc, panel_width) {
        for (kk, out) in panel.chunks_exact_mut(panel_width).take(kc).enumerate() {
            let start = rows.start(k0 + kk) + col;
            out[..width].copy_from_slice(&data[start..start + width]);
            out[width..].fill(0.0);
        }
    }
}

/// What happens to each accumulated value before it is stored.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    /// Added per row of `C`.
    pub bias: Option<&'a [f32]>,
    /// Added element-wise, same layout and `ldc` as `C` (a ResNet shortcut).
    pub residual: Option<&'a [f32]>,
    pub activation: Activation,
}

/// A buffer's start shared by the tasks of one parallel job, each writing floats no other
/// task touches (tiles of C, scratch slots, rows of an image).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: every user hands each task a disjoint part of the buffer (see each `unsafe` use).
unsafe impl Sync for SharedMut {}
unsafe impl Send for SharedMut {}

impl SharedMut {
    // A method, so closures capture the whole (Sync) wrapper rather than its raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }

    /// Worker `worker`'s packing slot of the scratch this points into.
    ///
    /// # Safety
    /// The scratch holds a slot for `worker`, and no one else uses that slot meanwhile (each
    /// worker runs one task at a time).
    pub(super) unsafe fn pack_slot<'a>(self, worker: usize) -> &'a mut [f32] {
        // SAFETY: as the caller promises.
        unsafe {
            core::slice::from_raw_parts_mut(self.0.add(worker * PACK_SCRATCH_LEN), PACK_SCRATCH_LEN)
        }
    }
}

/// Where a GEMM writes `C`: `len` floats of which the product needs `needed`, rows `ldc`
/// apart holding `columns` values each (for a batch, per image).
pub(super) struct OutputSpan {
    pub len: usize,
    pub ldc: usize,
    pub columns: usize,
    pub needed: usize,
}

impl OutputSpan {
    /// One row-major `m x n` output with row stride `ldc`.
    pub(super) fn matrix(len: usize, m: usize, n: usize, ldc: usize) -> OutputSpan {
        OutputSpan {
            len,
            ldc,
            columns: n,
            needed: (m - 1) * ldc + n,
        }
    }
}

/// Checks the operands of an `m x k` by `k x n` product, for [`gemm`] and [`gemm_narrow`]:
/// `b`'s depth, then (when `n > 0`) `ldc >= columns` and `n <= max_n` (else `shape_error`),
/// then the lengths (`C` and the residual hold `needed` floats). Returns the worker count, or
/// `None` when `n == 0` leaves nothing to do.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_operands(
    m: usize,
    k: usize,
    b: &dyn BSource,
    out: OutputSpan,
    (max_n, shape_error): (usize, &'static str),
    epilogue: &Epilogue<'_>,
    scratch_len: usize,
    par: &dyn Parallel,
) -> Result<Option<usize>, KernelError> {
    let n = b.n();
    if b.k() != k {
        return Err(KernelError::Length {
            what: "GEMM right operand rows",
            expected: k,
            found: b.k(),
        });
    }
    if n == 0 {
        return Ok(None);
    }
    if out.ldc < out.columns || n > max_n {
        return Err(KernelError::InvalidParams(shape_error));
    }
    check_len("GEMM output", out.len, out.needed)?;
    if let Some(bias) = epilogue.bias {
        check_len("GEMM bias", bias.len(), m)?;
    }
    if let Some(residual) = epilogue.residual {
        check_len("GEMM residual", residual.len(), out.needed)?;
    }
    let threads = par.threads().max(1);
    check_len("GEMM scratch", scratch_len, threads * PACK_SCRATCH_LEN)?;
    Ok(Some(threads))
}

/// `C = epilogue(A . B)`, `C` row-major `a.rows() x b.n()` with row stride `ldc`.
///
/// `scratch` must hold `par.threads() * PACK_SCRATCH_LEN` floats.
pub fn gemm(
    a: &PackedA,
    b: &dyn BSource,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue<'_>,
    scratch: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    let (m, k, n) = (a.m, a.k, b.n());
    let shape = (usize::MAX, "GEMM ldc smaller than n");
    let Some(threads) = check_operands(
        m,
        k,
        b,
        OutputSpan::matrix(c.len(), m, n, ldc),
        shape,
        &epilogue,
        scratch.len(),
        par,
    )?
    else {
        return Ok(());
    };

    // Split columns into chunks of at most NC; when that gives fewer chunks than threads
    // (late layers have few pixels), split the row panels too.
    let chunk = NC.min(n.div_ceil(threads).div_ceil(NR) * NR);
    let col_tasks = n.div_ceil(chunk);
    let panels = m.div_ceil(MR);
    let row_splits = threads.div_ceil(col_tasks).min(panels).max(1);
    let panels_per_split = panels.div_ceil(row_splits);
    let tasks = col_tasks * row_splits;

    let in_place = b.in_place();
    if let Some((data, rows)) = in_place {
        if matches!(rows, RowStarts::Strided(ld) if ld < n) {
            return Err(KernelError::InvalidParams(
                "GEMM right operand stride below n",
            ));
        }
        check_len("GEMM right operand", data.len(), rows.start(k - 1) + n)?;
    }
    let simd = detect();
    let c_ptr = SharedMut(c.as_mut_ptr());
    let c_len = c.len();
    let scratch_ptr = SharedMut(scratch.as_mut_ptr());

    let task = |t: usize, worker: usize| {
        let (ct, rs) = (t % col_tasks, t / col_tasks);
        let j0 = ct * chunk;
        let nc = chunk.min(n - j0);
        let p0 = rs * panels_per_split;
        let p1 = panels.min(p0 + panels_per_split);
        // SAFETY: worker slots are disjoint and a worker runs one task at a time.
        let pack = unsafe { scratch_ptr.pack_slot(worker) };
        // SAFETY: this task only touches rows p0*MR..p1*MR, columns j0..j0+nc of C, which no
        // other task touches.
        let c = unsafe { core::slice::from_raw_parts_mut(c_ptr.get(), c_len) };
        let mut tile: Tile = [0.0; MR * NR];
        // Full column panels of an in-place source are read where they are; only the ragged
        // last panel (or everything, for an im2col view) is packed.
        let direct_panels = if in_place.is_some() { nc / NR } else { 0 };
        let mut row_starts = [0usize; KC];
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            if let Some((_, rows)) = in_place {
                rows.fill(k0, &mut row_starts[..kc]);
            }
            if direct_panels * NR < nc {
                let j_packed = j0 + direct_panels * NR;
                b.pack(k0, kc, j_packed, j0 + nc - j_packed, NR, pack);
            }
            let (first, last) = (k0 == 0, k0 + kc == k);
            // The B panel (kc x NR, 16 KiB) stays in L1 while the A panels stream past it.
            for jp in 0..nc.div_ceil(NR) {
                let col = j0 + jp * NR;
                // In-place rows were bounded above: start(k-1) + n <= data.len().
                let b_block = match in_place {
                    Some((data, _)) if jp < direct_panels => BBlock {
                        b: &data[col..],
                        rows: &row_starts[..kc],
                    },
                    _ => BBlock {
                        b: &pack[(jp - direct_panels) * kc * NR..][..kc * NR],
                        rows: &PANEL_ROWS[..kc],
                    },
                };
                let cols = NR.min(j0 + nc - col);
                for p in p0..p1 {
                    let a_block = a.block(p, k0, kc);
                    let rows = MR.min(m - p * MR);
                    let row0 = p * MR;
                    #[cfg(target_arch = "x86_64")]
                    if simd == Simd::Avx2Fma && cols == NR {
                        let at = row0 * ldc + col;
                        let span = (rows - 1) * ldc + NR;
                        // Borrowed, not copied: a small copy stored piecewise and reloaded
                        // whole stalled store forwarding on every call.
                        let bias = match epilogue.bias {
                            Some(all) => &all[row0..row0 + rows],
                            None => &ZERO_BIAS[..rows],
                        };
                        let out = FusedStore {
                            c: &mut c[at..at + span],
                            ldc,
                            rows,
                            bias,
                            residual: epilogue.residual.map(|r| &r[at..at + span]),
                            activation: epilogue.activation,
                            accumulate: !first,
                            finish: last,
                        };
                        // SAFETY: detect() checked the CPU; the slices are sized above.
                        unsafe { kernel_avx2_fused(kc, a_block, b_block, out) };
                        continue;
                    }
                    match simd {
                        Simd::Portable => kernel_portable(kc, a_block, b_block, &mut tile),
                        // SAFETY: detect() checked the CPU; slice lengths are exact above.
                        #[cfg(target_arch = "x86_64")]
                        Simd::Avx2Fma => unsafe { kernel_avx2(kc, a_block, b_block, &mut tile) },
                    }
                    store_tile(&tile, c, ldc, row0, rows, col, cols, first, last, &epilogue);
                }
            }
            k0 += kc;
        }
    };
    par.run(tasks, &task);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn store_tile(
    tile: &Tile,
    c: &mut [f32],
    ldc: usize,
    row0: usize,
    rows: usize,
    col: usize,
    cols: usize,
    first: bool,
    last: bool,
    epilogue: &Epilogue<'_>,
) {
    for r in 0..rows {
        let row = row0 + r;
        let at = row * ldc + col;
        let out = &mut c[at..at + cols];
        let acc = &tile[r * NR..r * NR + cols];
        if first {
            let bias = epilogue.bias.map_or(0.0, |b| b[row]);
            for (o, &v) in out.iter_mut().zip(acc) {
                *o = v + bias;
            }
        } else {
            for (o, &v) in out.iter_mut().zip(acc) {
                *o += v;
            }
        }
        if last {
            if let Some(residual) = epilogue.residual {
                for (o, &s) in out.iter_mut().zip(&residual[at..at + cols]) {
                    *o += s;
                }
            }
            if epilogue.activation != Activation::None {
                for o in out.iter_mut() {
                    *o = epilogue.activation.apply(*o);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "gemm_tests.rs"]
mod tests;
