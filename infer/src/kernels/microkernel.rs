//! The GEMM micro-kernels: a `MR x NR` tile of `A . B` from a packed `A` panel and a `B`
//! block, an AVX2+FMA version chosen at run time (see [`detect`]) and a portable one.

use super::gemm::{MR, NR};
use super::Activation;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub(super) fn detect() -> Simd {
    use core::sync::atomic::{AtomicU8, Ordering};
    static CACHED: AtomicU8 = AtomicU8::new(0);
    match CACHED.load(Ordering::Relaxed) {
        1 => Simd::Portable,
        2 => Simd::Avx2Fma,
        _ => {
            let simd = if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
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
pub(super) fn detect() -> Simd {
    if cfg!(all(
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )) {
        Simd::Avx2Fma
    } else {
        Simd::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn detect() -> Simd {
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

pub(super) type Tile = [f32; MR * NR];

/// Where a micro-kernel reads its `kc x NR` block of `B`: row `kk` is `b[rows[kk]..][..NR]`.
/// `rows` is `kk * NR` for a packed panel, `kk * ld` for a dense matrix read in place (a 1x1
/// convolution's input planes), or a tap's offset into a zero-padded input (a stride-1
/// convolution read in place, see `conv::Implicit`). Whoever builds a block checks that
/// every row lies inside `b`.
#[derive(Clone, Copy)]
pub(super) struct BBlock<'a> {
    pub b: &'a [f32],
    pub rows: &'a [usize],
}

impl BBlock<'_> {
    #[inline(always)]
    fn check(&self, kc: usize) {
        debug_assert!(self.rows.len() >= kc);
        debug_assert!(self.rows[..kc].iter().all(|&r| r + NR <= self.b.len()));
    }
}

/// How a full `MR x NR` tile is stored straight into `C`: the first depth block starts from
/// the bias (`c = acc + bias[r]`), later blocks add to what is there (`c = acc + c`), and the
/// last block also adds the residual and applies the activation.
pub(super) struct FusedStore<'a> {
    pub c: &'a mut [f32],
    pub ldc: usize,
    /// Rows of the tile that exist in `C` (`1..=MR`; the last row panel may be short, its
    /// packed `A` rows are zero and its extra accumulators are dropped).
    pub rows: usize,
    /// One value per row (`rows` of them).
    pub bias: &'a [f32],
    pub residual: Option<&'a [f32]>,
    pub activation: Activation,
    /// Not the first depth block: accumulate onto `c` instead of the bias.
    pub accumulate: bool,
    /// The last depth block: add the residual and apply the activation.
    pub finish: bool,
}

/// `tile = A_panel[kc x MR]^T . B[kc x NR]`.
pub(super) fn kernel_portable(kc: usize, a: &[f32], b: BBlock<'_>, tile: &mut Tile) {
    b.check(kc);
    let mut acc = [[0.0f32; NR]; MR];
    for (kk, ak) in a.chunks_exact(MR).take(kc).enumerate() {
        let bk = &b.b[b.rows[kk]..][..NR];
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

/// The AVX2 accumulation loop shared by the AVX2 kernels (a macro because
/// `#[target_feature]` functions cannot be force-inlined into each other). `$load` names the
/// macro that reads 8 values of a `B` row as floats: `load_f32`, `load_f16` or `load_i8`.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_accumulate {
    ($kc:expr, $a:expr, $b:expr, $rows:expr, $load:ident) => {{
        use core::arch::x86_64::*;
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (mut ap, b, mut row) = ($a.as_ptr(), $b.as_ptr(), $rows.as_ptr());
        for _ in 0..$kc {
            // SAFETY: the loop reads kc*MR floats from `a`, kc row offsets, and NR values at
            // each offset of `b`, which the callers checked (see `BBlock`).
            unsafe {
                let bp = b.add(*row);
                let b0 = $load!(bp);
                let b1 = $load!(bp.add(8));
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(r));
                    row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(av, b1, row[1]);
                }
                ap = ap.add(MR);
                row = row.add(1);
            }
        }
        acc
    }};
}

#[cfg(target_arch = "x86_64")]
macro_rules! load_f32 {
    ($p:expr) => {
        _mm256_loadu_ps($p)
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! load_f16 {
    ($p:expr) => {
        _mm256_cvtph_ps(_mm_loadu_si128($p as *const __m128i))
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! load_i8 {
    ($p:expr) => {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64($p as *const __m128i)))
    };
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn store_tile_rows(acc: &[[core::arch::x86_64::__m256; 2]; MR], tile: &mut Tile) {
    use core::arch::x86_64::*;
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: tile has MR*NR floats; callers run with AVX enabled.
        unsafe {
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR), row[0]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR + 8), row[1]);
        }
    }
}

/// `B` rows of `NR` IEEE half floats, packed (row `kk` at `b[kk * NR..]`): the narrow GEMM's
/// weights when stored at half precision.
#[derive(Clone, Copy)]
pub(super) struct HalfBlock<'a> {
    pub b: &'a [u16],
}

/// [`kernel_portable`] over half-precision `B` rows.
pub(super) fn kernel_portable_f16(kc: usize, a: &[f32], b: HalfBlock<'_>, tile: &mut Tile) {
    let mut acc = [[0.0f32; NR]; MR];
    for (ak, bk) in a.chunks_exact(MR).zip(b.b.chunks_exact(NR)).take(kc) {
        let bk: [f32; NR] = core::array::from_fn(|j| crate::tensor_read::f16_to_f32(bk[j]));
        for r in 0..MR {
            for j in 0..NR {
                acc[r][j] += ak[r] * bk[j];
            }
        }
    }
    for r in 0..MR {
        tile[r * NR..r * NR + NR].copy_from_slice(&acc[r]);
    }
}

/// [`kernel_avx2`] over half-precision `B` rows, widened in registers (F16C).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `a` holds `kc*MR` floats, `b.b` `kc*NR` halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn kernel_avx2_f16(kc: usize, a: &[f32], b: HalfBlock<'_>, tile: &mut Tile) {
    assert!(a.len() >= kc * MR && b.b.len() >= kc * NR);
    let acc = avx2_accumulate!(kc, a, b.b, &super::gemm::PANEL_ROWS[..kc], load_f16);
    store_tile_rows(&acc, tile);
}

/// `B` rows of `NR` signed 8-bit integers, packed (row `kk` at `b[kk * NR..]`): the narrow
/// GEMM's weights when stored as int8, each column (output channel) with its own scale that
/// the caller applies to the tile.
#[derive(Clone, Copy)]
pub(super) struct Int8Block<'a> {
    pub b: &'a [i8],
}

/// [`kernel_portable`] over int8 `B` rows (unscaled: `tile = A^T . q`).
pub(super) fn kernel_portable_i8(kc: usize, a: &[f32], b: Int8Block<'_>, tile: &mut Tile) {
    let mut acc = [[0.0f32; NR]; MR];
    for (ak, bk) in a.chunks_exact(MR).zip(b.b.chunks_exact(NR)).take(kc) {
        for r in 0..MR {
            for j in 0..NR {
                acc[r][j] += ak[r] * f32::from(bk[j]);
            }
        }
    }
    for r in 0..MR {
        tile[r * NR..r * NR + NR].copy_from_slice(&acc[r]);
    }
}

/// [`kernel_avx2`] over int8 `B` rows, widened to floats in registers (unscaled).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` holds `kc*MR` floats, `b.b` `kc*NR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel_avx2_i8(kc: usize, a: &[f32], b: Int8Block<'_>, tile: &mut Tile) {
    assert!(a.len() >= kc * MR && b.b.len() >= kc * NR);
    let acc = avx2_accumulate!(kc, a, b.b, &super::gemm::PANEL_ROWS[..kc], load_i8);
    store_tile_rows(&acc, tile);
}

/// # Safety
/// The CPU must support AVX2 and FMA; `a` holds `kc*MR` floats, `b` covers `kc` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel_avx2(kc: usize, a: &[f32], b: BBlock<'_>, tile: &mut Tile) {
    debug_assert!(a.len() >= kc * MR);
    b.check(kc);
    let acc = avx2_accumulate!(kc, a, b.b, b.rows, load_f32);
    store_tile_rows(&acc, tile);
}

/// [`kernel_avx2`] with the epilogue applied in registers and the tile written straight to
/// `C`: saves the round trip through the tile buffer and the scalar epilogue, which cost as
/// much as the arithmetic when `kc` is small (the detector's 1x1 convolutions) and a tenth of
/// the time when depth is split into blocks (every 3x3 convolution past 28 channels). Same
/// operation order as the scalar path (`(acc + bias)` or `(acc + c)`, `+ residual`, then the
/// activation), so the results are bit-identical.
///
/// # Safety
/// As [`kernel_avx2`]; `out.c` (and `out.residual`) hold `(out.rows-1)*ldc + NR` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel_avx2_fused(kc: usize, a: &[f32], b: BBlock<'_>, out: FusedStore<'_>) {
    use core::arch::x86_64::*;
    debug_assert!(a.len() >= kc * MR);
    b.check(kc);
    assert!((1..=MR).contains(&out.rows) && out.bias.len() >= out.rows);
    let span = (out.rows - 1) * out.ldc + NR;
    assert!(out.c.len() >= span);
    if let Some(res) = out.residual {
        assert!(res.len() >= span);
    }
    let acc = avx2_accumulate!(kc, a, b.b, b.rows, load_f32);
    let zero = _mm256_setzero_ps();
    for (r, row) in acc.iter().enumerate().take(out.rows) {
        let bias = _mm256_set1_ps(out.bias[r]);
        for (half, &v) in row.iter().enumerate() {
            let at = r * out.ldc + half * 8;
            // SAFETY: at + 8 <= (rows-1)*ldc + NR, asserted above for both slices.
            unsafe {
                let start = if out.accumulate {
                    _mm256_loadu_ps(out.c.as_ptr().add(at))
                } else {
                    bias
                };
                let mut v = _mm256_add_ps(v, start);
                if !out.finish {
                    _mm256_storeu_ps(out.c.as_mut_ptr().add(at), v);
                    continue;
                }
                if let Some(res) = out.residual {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(res.as_ptr().add(at)));
                }
                v = match out.activation {
                    Activation::None => v,
                    // max_ps returns its second operand for NaN and for +-0, as `apply` does.
                    Activation::Relu => _mm256_max_ps(v, zero),
                    Activation::LeakyRelu(slope) => {
                        let negative = _mm256_mul_ps(v, _mm256_set1_ps(slope));
                        let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(v, zero);
                        _mm256_blendv_ps(negative, v, keep)
                    }
                };
                _mm256_storeu_ps(out.c.as_mut_ptr().add(at), v);
            }
        }
    }
}
