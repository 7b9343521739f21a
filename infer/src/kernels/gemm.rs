//! Single-precision GEMM with a pre-packed left operand and fused epilogue:
//! `C[m, n] = act(A[m, :] . B[:, n] + bias[m] (+ residual[m, n]))`.
//!
//! `A` (weights) is packed once into panels of [`MR`] rows; `B` (activations, or an implicit
//! im2col view of them, see [`BSource`]) is packed per call into panels of [`NR`] columns in
//! blocks of [`KC`] x [`NC`] so a panel of each stays in L1 and the `B` block in L2 (the
//! GotoBLAS scheme). The packing buffer is caller-provided scratch, so nothing allocates.

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

/// The left operand, packed for the micro-kernel: panel `p` holds rows `p*MR..p*MR+MR`
/// (zero-padded) as `K` consecutive groups of `MR` values.
#[derive(Clone, Debug)]
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<f32>,
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
        for (p, panel) in data.chunks_exact_mut(MR * k).enumerate() {
            for r in 0..MR.min(m - p * MR) {
                let row = &a[(p * MR + r) * k..][..k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * MR + r] = v;
                }
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
}

/// The left operand packed the other way, for [`gemm_narrow`]: panel `q` holds rows
/// `q*NR..q*NR+NR` (zero-padded) as `K` groups of `NR` values.
#[derive(Clone, Debug)]
pub struct PackedAT {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedAT {
    pub fn from_packed(a: &PackedA) -> PackedAT {
        let (m, k) = (a.m, a.k);
        let mut data = vec![0.0f32; m.div_ceil(NR) * NR * k];
        for row in 0..m {
            let (p, r) = (row / MR, row % MR);
            let (q, j) = (row / NR, row % NR);
            for kk in 0..k {
                data[q * NR * k + kk * NR + j] = a.data[p * MR * k + kk * MR + r];
            }
        }
        PackedAT { m, k, data }
    }
}

/// True when [`gemm_narrow`] wastes less of the micro-kernel than [`gemm`] for `n` columns.
pub fn narrow_is_better(n: usize) -> bool {
    n > 0 && n < NR && n.div_ceil(MR) * MR < NR
}

/// The right operand, a `k x n` matrix that can pack any block of itself.
pub trait BSource: Sync {
    fn k(&self) -> usize;
    fn n(&self) -> usize;
    /// Writes rows `k0..k0+kc` and columns `j0..j0+nc` as `ceil(nc/width)` panels, panel `jp`
    /// at `dst[jp*kc*width..]` holding `kc` groups of `width` values; columns past `nc` are 0.
    /// `width` is [`NR`] for [`gemm`] and [`MR`] for [`gemm_narrow`].
    fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, width: usize, dst: &mut [f32]);
}

/// A row-major `k x n` matrix with row stride `ld`.
pub struct DenseB<'a> {
    pub data: &'a [f32],
    pub k: usize,
    pub n: usize,
    pub ld: usize,
}

impl BSource for DenseB<'_> {
    fn k(&self) -> usize {
        self.k
    }
    fn n(&self) -> usize {
        self.n
    }
    fn pack(
        &self,
        k0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
        panel_width: usize,
        dst: &mut [f32],
    ) {
        for (jp, panel) in dst
            .chunks_exact_mut(kc * panel_width)
            .take(nc.div_ceil(panel_width))
            .enumerate()
        {
            let col = j0 + jp * panel_width;
            let width = panel_width.min(j0 + nc - col);
            for kk in 0..kc {
                let src = &self.data[(k0 + kk) * self.ld + col..][..width];
                let out = &mut panel[kk * panel_width..(kk + 1) * panel_width];
                out[..width].copy_from_slice(src);
                out[width..].fill(0.0);
            }
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
fn detect() -> Simd {
    use core::sync::atomic::{AtomicU8, Ordering};
    static CACHED: AtomicU8 = AtomicU8::new(0);
    match CACHED.load(Ordering::Relaxed) {
        1 => Simd::Portable,
        2 => Simd::Avx2Fma,
        _ => {
            let simd =
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    Simd::Avx2Fma
                } else {
                    Simd::Portable
                };
            CACHED.store(
                if simd == Simd::Portable { 1 } else { 2 },
                Ordering::Relaxed,
            );
            simd
        }
    }
}

#[cfg(all(not(feature = "std"), target_arch = "x86_64"))]
fn detect() -> Simd {
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        Simd::Avx2Fma
    } else {
        Simd::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Simd {
    Simd::Portable
}

/// Name of the micro-kernel this CPU runs (`"avx2+fma"` or `"portable"`).
pub fn simd_name() -> &'static str {
    match detect() {
        Simd::Portable => "portable",
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma => "avx2+fma",
    }
}

type Tile = [f32; MR * NR];

/// `tile = A_panel[kc x MR]^T . B_panel[kc x NR]`.
fn kernel_portable(kc: usize, a: &[f32], b: &[f32], tile: &mut Tile) {
    let mut acc = [[0.0f32; NR]; MR];
    for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for r in 0..MR {
            let av = ak[r];
            for j in 0..NR {
                acc[r][j] += av * bk[j];
            }
        }
    }
    for r in 0..MR {
        tile[r * NR..r * NR + NR].copy_from_slice(&acc[r]);
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; `a` holds `kc*MR` and `b` `kc*NR` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, a: &[f32], b: &[f32], tile: &mut Tile) {
    use core::arch::x86_64::*;
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
    for _ in 0..kc {
        // SAFETY: the loop reads kc*MR floats from `a` and kc*NR from `b`, checked by callers.
        unsafe {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: tile has MR*NR floats.
        unsafe {
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR), row[0]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR + 8), row[1]);
        }
    }
}

#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: tasks write disjoint tiles of C and use disjoint scratch slots (one per worker).
unsafe impl Sync for SharedMut {}
unsafe impl Send for SharedMut {}

impl SharedMut {
    // A method, so closures capture the whole (Sync) wrapper rather than its raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
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
    if b.k() != k {
        return Err(KernelError::Length {
            what: "GEMM right operand rows",
            expected: k,
            found: b.k(),
        });
    }
    if n == 0 {
        return Ok(());
    }
    if ldc < n {
        return Err(KernelError::InvalidParams("GEMM ldc smaller than n"));
    }
    check_len("GEMM output", c.len(), (m - 1) * ldc + n)?;
    if let Some(bias) = epilogue.bias {
        check_len("GEMM bias", bias.len(), m)?;
    }
    if let Some(residual) = epilogue.residual {
        check_len("GEMM residual", residual.len(), (m - 1) * ldc + n)?;
    }
    let threads = par.threads().max(1);
    check_len("GEMM scratch", scratch.len(), threads * PACK_SCRATCH_LEN)?;

    // Split columns into chunks of at most NC; when that gives fewer chunks than threads
    // (late layers have few pixels), split the row panels too.
    let chunk = NC.min(n.div_ceil(threads).div_ceil(NR) * NR);
    let col_tasks = n.div_ceil(chunk);
    let panels = m.div_ceil(MR);
    let row_splits = threads.div_ceil(col_tasks).min(panels).max(1);
    let panels_per_split = panels.div_ceil(row_splits);
    let tasks = col_tasks * row_splits;

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
        let pack = unsafe {
            core::slice::from_raw_parts_mut(
                scratch_ptr.get().add(worker * PACK_SCRATCH_LEN),
                PACK_SCRATCH_LEN,
            )
        };
        // SAFETY: this task only touches rows p0*MR..p1*MR, columns j0..j0+nc of C, which no
        // other task touches.
        let c = unsafe { core::slice::from_raw_parts_mut(c_ptr.get(), c_len) };
        let mut tile: Tile = [0.0; MR * NR];
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            b.pack(k0, kc, j0, nc, NR, pack);
            let (first, last) = (k0 == 0, k0 + kc == k);
            // The B panel (kc x NR, 16 KiB) stays in L1 while the A panels stream past it.
            for jp in 0..nc.div_ceil(NR) {
                let b_panel = &pack[jp * kc * NR..][..kc * NR];
                for p in p0..p1 {
                    let a_block = &a.data[p * MR * k + k0 * MR..][..kc * MR];
                    let rows = MR.min(m - p * MR);
                    match simd {
                        Simd::Portable => kernel_portable(kc, a_block, b_panel, &mut tile),
                        // SAFETY: detect() checked the CPU; slice lengths are exact above.
                        #[cfg(target_arch = "x86_64")]
                        Simd::Avx2Fma => unsafe { kernel_avx2(kc, a_block, b_panel, &mut tile) },
                    }
                    let col = j0 + jp * NR;
                    let cols = NR.min(j0 + nc - col);
                    store_tile(
                        &tile,
                        c,
                        ldc,
                        p * MR,
                        rows,
                        col,
                        cols,
                        first,
                        last,
                        &epilogue,
                    );
                }
            }
            k0 += kc;
        }
    };
    par.run(tasks, &task);
    Ok(())
}

/// Same result as [`gemm`], computed as `C^T = B^T . A^T` so that the few columns of a
/// late, low-resolution layer fill the micro-kernel's [`MR`] side instead of padding [`NR`].
///
/// Requires `b.n() <= NC`; `scratch` as for [`gemm`].
pub fn gemm_narrow(
    a: &PackedAT,
    b: &dyn BSource,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue<'_>,
    scratch: &mut [f32],
    par: &dyn Parallel,
) -> Result<(), KernelError> {
    let (m, k, n) = (a.m, a.k, b.n());
    if b.k() != k {
        return Err(KernelError::Length {
            what: "GEMM right operand rows",
            expected: k,
            found: b.k(),
        });
    }
    if n == 0 {
        return Ok(());
    }
    if ldc < n || n > NC {
        return Err(KernelError::InvalidParams(
            "narrow GEMM needs n <= NC and ldc >= n",
        ));
    }
    check_len("GEMM output", c.len(), (m - 1) * ldc + n)?;
    if let Some(bias) = epilogue.bias {
        check_len("GEMM bias", bias.len(), m)?;
    }
    if let Some(residual) = epilogue.residual {
        check_len("GEMM residual", residual.len(), (m - 1) * ldc + n)?;
    }
    let threads = par.threads().max(1);
    check_len("GEMM scratch", scratch.len(), threads * PACK_SCRATCH_LEN)?;
    let panels = m.div_ceil(NR);
    let per_task = panels.div_ceil(threads);
    let simd = detect();
    let c_ptr = SharedMut(c.as_mut_ptr());
    let c_len = c.len();
    let scratch_ptr = SharedMut(scratch.as_mut_ptr());
    let task = |t: usize, worker: usize| {
        let q0 = t * per_task;
        let q1 = panels.min(q0 + per_task);
        // SAFETY: as in `gemm`: disjoint scratch slots, disjoint rows of C per task.
        let pack = unsafe {
            core::slice::from_raw_parts_mut(
                scratch_ptr.get().add(worker * PACK_SCRATCH_LEN),
                PACK_SCRATCH_LEN,
            )
        };
        let c = unsafe { core::slice::from_raw_parts_mut(c_ptr.get(), c_len) };
        let mut tile: Tile = [0.0; MR * NR];
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            b.pack(k0, kc, 0, n, MR, pack);
            let (first, last) = (k0 == 0, k0 + kc == k);
            for q in q0..q1 {
                let w_panel = &a.data[q * NR * k + k0 * NR..][..kc * NR];
                let channels = NR.min(m - q * NR);
                for pp in 0..n.div_ceil(MR) {
                    let pixels = &pack[pp * kc * MR..][..kc * MR];
                    match simd {
                        Simd::Portable => kernel_portable(kc, pixels, w_panel, &mut tile),
                        // SAFETY: detect() checked the CPU; slice lengths are exact above.
                        #[cfg(target_arch = "x86_64")]
                        Simd::Avx2Fma => unsafe { kernel_avx2(kc, pixels, w_panel, &mut tile) },
                    }
                    let px0 = pp * MR;
                    let count = MR.min(n - px0);
                    for j in 0..channels {
                        let ch = q * NR + j;
                        let bias = epilogue.bias.map_or(0.0, |b| b[ch]);
                        for r in 0..count {
                            let at = ch * ldc + px0 + r;
                            let mut v = tile[r * NR + j] + if first { bias } else { c[at] };
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
            k0 += kc;
        }
    };
    par.run(panels.div_ceil(per_task), &task);
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
mod tests {
    use super::*;
    use crate::kernels::Sequential;

    fn naive(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], bias: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = bias[i] as f64;
                for kk in 0..k {
                    s += a[i * k + kk] as f64 * b[kk * n + j] as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn gemm_matches_naive_on_ragged_sizes() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 300, 33),
            (13, 5, 130),
            (6, 513, 16),
            (40, 600, 4),
            (17, 9, 7),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let bias: Vec<f32> = (0..m).map(|i| i as f32 * 0.1).collect();
            let packed = PackedA::new(m, k, &a).unwrap();
            let mut c = vec![0.0; m * n];
            let mut scratch = vec![0.0; PACK_SCRATCH_LEN];
            let epi = Epilogue {
                bias: Some(&bias),
                residual: None,
                activation: Activation::None,
            };
            let src = DenseB {
                data: &b,
                k,
                n,
                ld: n,
            };
            gemm(&packed, &src, &mut c, n, epi, &mut scratch, &Sequential).unwrap();
            let want = naive(m, k, n, &a, &b, &bias);
            if n <= NC {
                let mut c2 = vec![0.0; m * n];
                gemm_narrow(
                    &PackedAT::from_packed(&packed),
                    &src,
                    &mut c2,
                    n,
                    epi,
                    &mut scratch,
                    &Sequential,
                )
                .unwrap();
                for (x, y) in c2.iter().zip(&want) {
                    assert!(
                        (x - y).abs() < 1e-3 * (1.0 + y.abs()),
                        "narrow {m}x{k}x{n}: {x} vs {y}"
                    );
                }
            }
            for (x, y) in c.iter().zip(&want) {
                assert!(
                    (x - y).abs() < 1e-3 * (1.0 + y.abs()),
                    "{m}x{k}x{n}: {x} vs {y}"
                );
            }
        }
    }
}
