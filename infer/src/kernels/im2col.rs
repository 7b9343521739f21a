//! The im2col matrix `[C*kh*kw, oh*ow]` of a CHW input, never materialised: its blocks are
//! written straight into the GEMM's packing buffer.
//!
//! Packing is on the critical path: for a 64-channel layer each packed value feeds only 64
//! multiply-adds, so a slow pack costs as much as the arithmetic. Everything that depends
//! only on the panel's columns (which output rows they span, where those rows start in the
//! input) is therefore worked out once per panel, the depth index walks (channel, tap)
//! incrementally instead of dividing per row, and a row that lies wholly inside one input row
//! is a single fixed-width copy.

use super::gemm::{column_panels, BSource, MR, NR};
use super::microkernel::{detect, Simd};

pub(super) struct Im2col<'a> {
    pub input: &'a [f32],
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub padding: usize,
    pub out_w: usize,
    pub n: usize,
}

/// A row of the im2col matrix as (input channel, kernel row, kernel column), walked in order
/// without a division per row. Also how [`super::gemm::RowStarts`] walks a padded input.
#[derive(Clone, Copy)]
pub(super) struct Tap {
    pub ci: usize,
    pub ky: usize,
    pub kx: usize,
    kernel_h: usize,
    kernel_w: usize,
}

impl Tap {
    pub(super) fn at(row: usize, kernel_h: usize, kernel_w: usize) -> Tap {
        Tap {
            ci: row / (kernel_h * kernel_w),
            ky: row / kernel_w % kernel_h,
            kx: row % kernel_w,
            kernel_h,
            kernel_w,
        }
    }

    #[inline(always)]
    pub(super) fn advance(&mut self) {
        self.kx += 1;
        if self.kx == self.kernel_w {
            self.kx = 0;
            self.ky += 1;
            if self.ky == self.kernel_h {
                self.ky = 0;
                self.ci += 1;
            }
        }
    }
}

/// Lanes of one packed half-row that read one contiguous run of an input row (stride 1).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Run {
    lanes: core::arch::x86_64::__m256i,
    start: isize,
}

/// A run of a panel's columns that lies in one output row: columns `j..j+len` of the panel
/// read input row `y + ky` from column `x + kx` on (stride apart), for tap `(ky, kx)`.
#[derive(Clone, Copy, Default)]
struct Segment {
    j: usize,
    len: usize,
    y: isize,
    x: isize,
}

impl BSource for Im2col<'_> {
    fn k(&self) -> usize {
        self.channels * self.kernel_h * self.kernel_w
    }
    fn n(&self) -> usize {
        self.n
    }
    fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, width: usize, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if detect() == Simd::Avx2Fma && self.input.len() <= i32::MAX as usize && width <= NR {
            // SAFETY: detect() checked the CPU; the other preconditions are checked above.
            unsafe { self.pack_avx2(k0, kc, j0, nc, width, dst) };
            return;
        }
        // Literal widths let the compiler unroll the fixed-size copies.
        match width {
            NR => self.pack_panels(k0, kc, j0, nc, NR, dst),
            MR => self.pack_panels(k0, kc, j0, nc, MR, dst),
            _ => self.pack_panels(k0, kc, j0, nc, width, dst),
        }
    }
}

impl Im2col<'_> {
    /// The AVX2 pack: each packed row is one or two 8-lane gathers whose per-lane offsets and
    /// in-bounds masks are worked out once per panel and shifted per tap, so padding, row
    /// breaks and strides cost no branches. Same values as [`Im2col::pack_panels`].
    ///
    /// # Safety
    /// The CPU must support AVX2; `panel_width <= NR`; the input holds fewer than 2^31 floats.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_avx2(
        &self,
        k0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
        panel_width: usize,
        dst: &mut [f32],
    ) {
        use core::arch::x86_64::*;
        const LANES: usize = 8;
        let halves = panel_width.div_ceil(LANES);
        let (h, w) = (self.height as i32, self.width as i32);
        let (s, pad) = (self.stride as i32, self.padding as i32);
        let plane_len = self.height * self.width;
        assert!(dst.len() >= nc.div_ceil(panel_width) * kc * panel_width);
        // Lanes past the matrix's last column (the ragged last panel) gather nothing and are
        // stored as zeros.
        let (zero_f, minus_one) = (_mm256_setzero_ps(), _mm256_set1_epi32(-1));
        let (hv, wv) = (_mm256_set1_epi32(h), _mm256_set1_epi32(w));
        for (col0, width, panel) in column_panels(dst, kc, j0, nc, panel_width) {
            // Per lane: the input row and column of tap (0, 0), and their flat offset.
            let mut ys = [[i32::MIN / 2; LANES]; 2];
            let mut xs = [[0i32; LANES]; 2];
            for t in 0..width {
                let col = col0 + t;
                let (oy, ox) = ((col / self.out_w) as i32, (col % self.out_w) as i32);
                ys[t / LANES][t % LANES] = oy * s - pad;
                xs[t / LANES][t % LANES] = ox * s - pad;
            }
            let mut y0 = [_mm256_setzero_si256(); 2];
            let mut x0 = [_mm256_setzero_si256(); 2];
            let mut offset0 = [_mm256_setzero_si256(); 2];
            for half in 0..halves {
                unsafe {
                    y0[half] = _mm256_loadu_si256(ys[half].as_ptr().cast());
                    x0[half] = _mm256_loadu_si256(xs[half].as_ptr().cast());
                }
                // Rows of invalid lanes are far out of range; keep their offset harmless.
                let y_clamped = _mm256_max_epi32(y0[half], _mm256_set1_epi32(-h - 1));
                offset0[half] = _mm256_add_epi32(_mm256_mullo_epi32(y_clamped, wv), x0[half]);
            }
            // Stride 1: the lanes of one output row read consecutive input floats, so each
            // such run is one masked load from `start` (the flat offset of its lane 0, which
            // may lie before the plane; masked-off lanes are never read).
            let mut runs = [[Run {
                lanes: _mm256_setzero_si256(),
                start: 0,
            }; LANES]; 2];
            let mut run_count = [0usize; 2];
            if s == 1 {
                for half in 0..halves {
                    let mut t = 0;
                    while t < LANES && half * LANES + t < width {
                        let col = col0 + half * LANES + t;
                        let len = (LANES - t)
                            .min(width - half * LANES - t)
                            .min(self.out_w - col % self.out_w);
                        let mut lanes = [0i32; LANES];
                        lanes[t..t + len].fill(-1);
                        let first =
                            ys[half][t] as isize * self.width as isize + xs[half][t] as isize;
                        runs[half][run_count[half]] = Run {
                            lanes: unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) },
                            start: first - t as isize,
                        };
                        run_count[half] += 1;
                        t += len;
                    }
                }
            }
            let mut tap = Tap::at(k0, self.kernel_h, self.kernel_w);
            for out in panel.chunks_exact_mut(panel_width).take(kc) {
                let plane = self.input[tap.ci * plane_len..][..plane_len].as_ptr();
                let (ky, kx) = (tap.ky, tap.kx);
                let tap_shift = ky as isize * self.width as isize + kx as isize;
                let (dy, dx) = (_mm256_set1_epi32(ky as i32), _mm256_set1_epi32(kx as i32));
                let shift = _mm256_set1_epi32(ky as i32 * w + kx as i32);
                for half in 0..halves {
                    let iy = _mm256_add_epi32(y0[half], dy);
                    let ix = _mm256_add_epi32(x0[half], dx);
                    let inside = _mm256_and_si256(
                        _mm256_and_si256(
                            _mm256_cmpgt_epi32(iy, minus_one),
                            _mm256_cmpgt_epi32(hv, iy),
                        ),
                        _mm256_and_si256(
                            _mm256_cmpgt_epi32(ix, minus_one),
                            _mm256_cmpgt_epi32(wv, ix),
                        ),
                    );
                    let v = if s == 1 {
                        // Contiguous runs: one masked load per run (gathers are slow on AMD).
                        let mut v = zero_f;
                        for run in &runs[half][..run_count[half]] {
                            let lanes = _mm256_and_si256(inside, run.lanes);
                            let from = plane.wrapping_offset(run.start + tap_shift);
                            // SAFETY: only lanes inside the plane are read.
                            let part = unsafe { _mm256_maskload_ps(from, lanes) };
                            v = _mm256_or_ps(v, part);
                        }
                        v
                    } else {
                        let offset = _mm256_add_epi32(offset0[half], shift);
                        // SAFETY: lanes outside `inside` are not read; inside lanes address
                        // row iy < h, column ix < w of this plane.
                        unsafe {
                            _mm256_mask_i32gather_ps::<4>(
                                zero_f,
                                plane,
                                offset,
                                _mm256_castsi256_ps(inside),
                            )
                        }
                    };
                    let lanes = LANES.min(panel_width - half * LANES);
                    if lanes == LANES {
                        // SAFETY: 8 floats from half * 8 lie inside this packed row.
                        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(half * LANES), v) };
                    } else {
                        // A partial store through memory: AMD's masked store is microcoded
                        // and costs more than the gather.
                        let mut tail = [0.0f32; LANES];
                        unsafe { _mm256_storeu_ps(tail.as_mut_ptr(), v) };
                        out[half * LANES..].copy_from_slice(&tail[..lanes]);
                    }
                }
                tap.advance();
            }
        }
    }

    #[inline(always)]
    fn pack_panels(
        &self,
        k0: usize,
        kc: usize,
        j0: usize,
        nc: usize,
        panel_width: usize,
        dst: &mut [f32],
    ) {
        assert!(panel_width <= NR, "im2col panels are at most NR wide");
        let (h, w) = (self.height as isize, self.width as isize);
        let (s, pad) = (self.stride as isize, self.padding as isize);
        let plane_len = self.height * self.width;
        for (col0, width, panel) in column_panels(dst, kc, j0, nc, panel_width) {
            let mut segments = [Segment::default(); NR];
            let mut count = 0;
            let (mut j, mut oy, mut ox) = (0, col0 / self.out_w, col0 % self.out_w);
            while j < width {
                let len = (width - j).min(self.out_w - ox);
                segments[count] = Segment {
                    j,
                    len,
                    y: oy as isize * s - pad,
                    x: ox as isize * s - pad,
                };
                count += 1;
                j += len;
                ox = 0;
                oy += 1;
            }
            let segments = &segments[..count];
            // One contiguous run of the full panel width: the common case in early layers.
            let whole = count == 1 && width == panel_width && s == 1;

            let mut tap = Tap::at(k0, self.kernel_h, self.kernel_w);
            for out in panel.chunks_exact_mut(panel_width).take(kc) {
                let plane = &self.input[tap.ci * plane_len..][..plane_len];
                let (dy, dx) = (tap.ky as isize, tap.kx as isize);
                let first = segments[0];
                let (iy, ix) = (first.y + dy, first.x + dx);
                if whole && iy >= 0 && iy < h && ix >= 0 && ix + panel_width as isize <= w {
                    let at = iy as usize * self.width + ix as usize;
                    out.copy_from_slice(&plane[at..at + panel_width]);
                } else {
                    for seg in segments {
                        let iy = seg.y + dy;
                        let out = &mut out[seg.j..seg.j + seg.len];
                        if iy < 0 || iy >= h {
                            out.fill(0.0);
                            continue;
                        }
                        let row = &plane[iy as usize * self.width..][..self.width];
                        let ix0 = seg.x + dx;
                        if s == 1 {
                            let len = seg.len as isize;
                            let lo = (-ix0).clamp(0, len) as usize;
                            let hi = (w - ix0).clamp(lo as isize, len) as usize;
                            out[..lo].fill(0.0);
                            let from = (ix0 + lo as isize) as usize;
                            for (o, &v) in out[lo..hi].iter_mut().zip(&row[from..]) {
                                *o = v;
                            }
                            out[hi..].fill(0.0);
                        } else {
                            for (t, o) in out.iter_mut().enumerate() {
                                let ix = ix0 + t as isize * s;
                                *o = if ix >= 0 && ix < w {
                                    row[ix as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                    out[width..].fill(0.0);
                }
                tap.advance();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// The packed block straight from the definition of im2col.
    fn reference(m: &Im2col<'_>, k0: usize, kc: usize, j0: usize, nc: usize, w: usize) -> Vec<f32> {
        let mut out = vec![0.0; nc.div_ceil(w) * kc * w];
        let taps = m.kernel_h * m.kernel_w;
        for kk in 0..kc {
            let row = k0 + kk;
            let (ci, ky, kx) = (row / taps, row % taps / m.kernel_w, row % m.kernel_w);
            for j in 0..nc {
                let col = j0 + j;
                let (oy, ox) = (col / m.out_w, col % m.out_w);
                let iy = (oy * m.stride + ky) as isize - m.padding as isize;
                let ix = (ox * m.stride + kx) as isize - m.padding as isize;
                let inside = iy >= 0 && ix >= 0 && iy < m.height as isize && ix < m.width as isize;
                let v = if inside {
                    m.input[(ci * m.height + iy as usize) * m.width + ix as usize]
                } else {
                    0.0
                };
                out[(j / w) * kc * w + kk * w + j % w] = v;
            }
        }
        out
    }

    #[test]
    fn scalar_and_simd_packs_match_the_definition() {
        // (channels, height, width, kernel, stride, padding)
        for &(c, h, w, k, s, p) in &[
            (3, 17, 13, 7, 2, 3),
            (5, 9, 28, 3, 1, 1),
            (4, 5, 3, 3, 1, 1),
            (2, 2, 2, 3, 1, 1),
            (3, 11, 11, 3, 2, 1),
            (6, 7, 30, 1, 2, 0),
        ] {
            let input: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
            let out_h = (h + 2 * p - k) / s + 1;
            let out_w = (w + 2 * p - k) / s + 1;
            let m = Im2col {
                input: &input,
                channels: c,
                height: h,
                width: w,
                kernel_h: k,
                kernel_w: k,
                stride: s,
                padding: p,
                out_w,
                n: out_h * out_w,
            };
            let depth = m.k();
            for width in [NR, MR] {
                for (k0, j0) in [(0, 0), (depth / 3, 5.min(m.n - 1)), (depth - 1, 0)] {
                    let kc = (depth - k0).min(40);
                    let nc = (m.n - j0).min(3 * width + 1);
                    let want = reference(&m, k0, kc, j0, nc, width);
                    let mut got = vec![f32::NAN; want.len()];
                    m.pack_panels(k0, kc, j0, nc, width, &mut got);
                    assert_eq!(got, want, "scalar {c}x{h}x{w} k{k} s{s} p{p} width {width}");
                    #[cfg(target_arch = "x86_64")]
                    if detect() == Simd::Avx2Fma {
                        got.fill(f32::NAN);
                        // SAFETY: AVX2 detected; width <= NR; tiny input.
                        unsafe { m.pack_avx2(k0, kc, j0, nc, width, &mut got) };
                        assert_eq!(got, want, "avx2 {c}x{h}x{w} k{k} s{s} p{p} width {width}");
                    }
                }
            }
        }
    }
}
