//! Tests of the GEMM against a naive float64 product, and of its in-place and fused paths
//! against the packed, tile-buffer path.

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

/// Deterministic `m x k` weights, `k x n` right operand and `m` biases with varied values.
fn operands(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let a = (0..m * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let b = (0..k * n)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
        .collect();
    let bias = (0..m).map(|i| i as f32 * 0.1).collect();
    (a, b, bias)
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
        let (a, b, bias) = operands(m, k, n);
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

/// Hides [`BSource::in_place`], so `gemm` packs every panel.
struct PackedOnly<'a>(DenseB<'a>);

impl BSource for PackedOnly<'_> {
    fn k(&self) -> usize {
        self.0.k
    }
    fn n(&self) -> usize {
        self.0.n
    }
    fn pack(&self, k0: usize, kc: usize, j0: usize, nc: usize, w: usize, dst: &mut [f32]) {
        self.0.pack(k0, kc, j0, nc, w, dst)
    }
}

#[test]
fn in_place_and_fused_epilogue_match_packed_and_naive() {
    // (m, k, n, ld of B and C): full tiles take the fused store (over several depth blocks
    // when k > KC), ragged rows and columns the tile buffer; strides wider than n check the
    // indexing.
    for &(m, k, n, ld) in &[
        (12, 40, 48, 48),
        (12, 600, 32, 35),
        (12, 40, 48, 53),
        (13, 300, 37, 40),
        (6, 8, 16, 16),
    ] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let b: Vec<f32> = (0..k * ld)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let residual: Vec<f32> = (0..m * ld)
            .map(|i| ((i * 29 % 31) as f32 - 15.0) / 8.0)
            .collect();
        let bias: Vec<f32> = (0..m).map(|i| i as f32 * 0.1 - 0.5).collect();
        let packed = PackedA::new(m, k, &a).unwrap();
        let dense = || DenseB { data: &b, k, n, ld };
        for activation in [
            Activation::None,
            Activation::Relu,
            Activation::LeakyRelu(0.1),
        ] {
            let epi = Epilogue {
                bias: Some(&bias),
                residual: Some(&residual),
                activation,
            };
            let run = |src: &dyn BSource| {
                let mut c = vec![f32::NAN; m * ld];
                let mut scratch = vec![0.0; PACK_SCRATCH_LEN];
                gemm(&packed, src, &mut c, ld, epi, &mut scratch, &Sequential).unwrap();
                c
            };
            let (direct, copied) = (run(&dense()), run(&PackedOnly(dense())));
            for i in 0..m {
                for j in 0..n {
                    let at = i * ld + j;
                    assert_eq!(
                        direct[at].to_bits(),
                        copied[at].to_bits(),
                        "{m}x{k}x{n} at {i},{j}"
                    );
                    let mut want = bias[i] as f64 + residual[at] as f64;
                    for kk in 0..k {
                        want += a[i * k + kk] as f64 * b[kk * ld + j] as f64;
                    }
                    let want = activation.apply(want as f32);
                    let got = direct[at];
                    assert!(
                        (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "{m}x{k}x{n} {activation:?}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// `relu(A . B + bias)` through [`gemm_narrow`] for the `m x k` weights `a` (row-major) and
/// the `k x n` matrix `b`, with the packed weights passed through `convert` first.
fn narrow_product(
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
    convert: fn(&mut PackedAT),
) -> Vec<f32> {
    let bias: Vec<f32> = (0..m).map(|i| i as f32 * 0.1).collect();
    let mut packed = PackedAT::from_packed(&PackedA::new(m, k, a).unwrap());
    convert(&mut packed);
    let mut c = vec![f32::NAN; m * n];
    let mut scratch = vec![0.0; PACK_SCRATCH_LEN];
    let dense = DenseB {
        data: b,
        k,
        n,
        ld: n,
    };
    let epi = Epilogue {
        bias: Some(&bias),
        residual: None,
        activation: Activation::Relu,
    };
    gemm_narrow(&packed, &dense, &mut c, n, epi, &mut scratch, &Sequential).unwrap();
    c
}

/// `((m, k, n), weights, right operand)`.
type NarrowCase = ((usize, usize, usize), Vec<f32>, Vec<f32>);

/// Narrow shapes of ResNet-18's last stages (2x2 and 3x3 outputs), depth over KC, a row count
/// that leaves a partial panel; deterministic weights (row `i` scaled differently) and inputs.
fn narrow_cases() -> Vec<NarrowCase> {
    [(64, 600, 4), (37, 300, 9), (16, 9, 1)]
        .into_iter()
        .map(|(m, k, n)| {
            let a = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / (37.0 + (i / k) as f32))
                .collect();
            let b = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            ((m, k, n), a, b)
        })
        .collect()
}

#[test]
fn half_weights_equal_single_weights_rounded_to_half() {
    use crate::tensor_read::{f16_to_f32, f32_to_f16};
    for (shape, a, b) in narrow_cases() {
        let rounded: Vec<f32> = a.iter().map(|&v| f16_to_f32(f32_to_f16(v))).collect();
        let want = narrow_product(shape, &rounded, &b, |_| {});
        let got = narrow_product(shape, &a, &b, |p| {
            p.to_half();
            assert!(p.is_half());
        });
        let same = want
            .iter()
            .zip(&got)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{shape:?}");
    }
}

#[test]
fn portable_half_kernel_matches_portable_single_kernel() {
    use super::super::microkernel::{kernel_portable, kernel_portable_f16, BBlock, HalfBlock};
    use crate::tensor_read::f16_to_f32;
    let kc = 37;
    let a: Vec<f32> = (0..kc * MR).map(|i| (i % 11) as f32 - 5.0).collect();
    let halves: Vec<u16> = (0..kc * NR)
        .map(|i| (0x3000 + i * 13 % 0x1000) as u16)
        .collect();
    let singles: Vec<f32> = halves.iter().map(|&h| f16_to_f32(h)).collect();
    let (mut want, mut got) = ([0.0; MR * NR], [0.0; MR * NR]);
    let block = BBlock {
        b: &singles,
        rows: &PANEL_ROWS[..kc],
    };
    kernel_portable(kc, &a, block, &mut want);
    kernel_portable_f16(kc, &a, HalfBlock { b: &halves }, &mut got);
    assert_eq!(want, got);
}

#[test]
fn int8_weights_equal_single_weights_quantised_per_output_channel() {
    for ((m, k, n), mut a, b) in narrow_cases() {
        // An all-zero output channel too.
        a[..k].fill(0.0);
        // The quantisation `to_int8` documents: per row, step max|w|/127, round to nearest.
        let dequantised: Vec<f32> = a
            .chunks_exact(k)
            .flat_map(|row| {
                let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let step = if max > 0.0 { max / 127.0 } else { 1.0 };
                row.iter().map(move |&v| (v / step).round() * step)
            })
            .collect();
        let want = narrow_product((m, k, n), &dequantised, &b, |_| {});
        let got = narrow_product((m, k, n), &a, &b, |p| {
            p.to_int8();
            assert!(p.is_int8());
        });
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            // Same products, summed unscaled and scaled once: float rounding apart.
            assert!(
                (w - g).abs() <= 1e-4 * (1.0 + w.abs()),
                "{m}x{k}x{n} at {i}: {w} vs {g}"
            );
        }
        let single = narrow_product((m, k, n), &a, &b, |_| {});
        assert_ne!(single, got, "{m}x{k}x{n}: int8 changed nothing");
    }
}

#[test]
fn portable_int8_kernel_matches_portable_single_kernel() {
    use super::super::microkernel::{kernel_portable, kernel_portable_i8, BBlock, Int8Block};
    let kc = 37;
    let a: Vec<f32> = (0..kc * MR).map(|i| (i % 11) as f32 - 5.0).collect();
    let bytes: Vec<i8> = (0..kc * NR).map(|i| (i * 29 % 255) as i32 as i8).collect();
    let singles: Vec<f32> = bytes.iter().map(|&q| f32::from(q)).collect();
    let (mut want, mut got) = ([0.0; MR * NR], [0.0; MR * NR]);
    let block = BBlock {
        b: &singles,
        rows: &PANEL_ROWS[..kc],
    };
    kernel_portable(kc, &a, block, &mut want);
    kernel_portable_i8(kc, &a, Int8Block { b: &bytes }, &mut got);
    assert_eq!(want, got);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_int8_kernel_matches_portable_int8_kernel() {
    use super::super::microkernel::{detect, kernel_avx2_i8, kernel_portable_i8, Int8Block, Simd};
    if detect() != Simd::Avx2Fma {
        return;
    }
    let kc = KC;
    let a: Vec<f32> = (0..kc * MR)
        .map(|i| ((i % 13) as f32 - 6.0) / 7.0)
        .collect();
    let bytes: Vec<i8> = (0..kc * NR).map(|i| (i * 29 % 255) as i32 as i8).collect();
    let (mut want, mut got) = ([0.0; MR * NR], [0.0; MR * NR]);
    kernel_portable_i8(kc, &a, Int8Block { b: &bytes }, &mut want);
    // SAFETY: detect() found AVX2 and FMA; lengths are kc*MR and kc*NR.
    unsafe { kernel_avx2_i8(kc, &a, Int8Block { b: &bytes }, &mut got) };
    for (w, g) in want.iter().zip(&got) {
        // FMA rounds once where the portable kernel rounds twice.
        assert!((w - g).abs() <= 1e-3 * (1.0 + w.abs()), "{w} vs {g}");
    }
}

/// The narrow GEMM packs B once per depth block for all tasks, as many blocks at a time as the
/// scratch holds. Shapes whose packed B exceeds the scratch (several groups of blocks) and ones
/// that fit in one group give the naive product, and one thread and two give the same bits.
#[cfg(feature = "std")]
#[test]
fn narrow_gemm_in_groups_of_depth_blocks_matches_naive_and_is_thread_invariant() {
    let pool = crate::WorkerPool::new(2).unwrap();
    // (m, k, n): B packed is k x padded n floats against 32,768 (one thread) or 65,536 (two).
    for &(m, k, n) in &[
        (40, 3000, 100),
        (33, 4608, 12),
        (70, 700, 5),
        (16, 257, 126),
    ] {
        let (a, b, bias) = operands(m, k, n);
        let packed = PackedAT::from_packed(&PackedA::new(m, k, &a).unwrap());
        let src = DenseB {
            data: &b,
            k,
            n,
            ld: n,
        };
        let epi = Epilogue {
            bias: Some(&bias),
            residual: None,
            activation: Activation::None,
        };
        let run = |par: &dyn Parallel| {
            let mut c = vec![f32::NAN; m * n];
            let mut scratch = vec![0.0; par.threads() * PACK_SCRATCH_LEN];
            gemm_narrow(&packed, &src, &mut c, n, epi, &mut scratch, par).unwrap();
            c
        };
        let (one, two) = (run(&Sequential), run(&pool));
        let want = naive(m, k, n, &a, &b, &bias);
        for (x, y) in one.iter().zip(&want) {
            assert!(
                (x - y).abs() < 1e-3 * (1.0 + y.abs()),
                "{m}x{k}x{n}: {x} vs {y}"
            );
        }
        assert!(
            one.iter()
                .zip(&two)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{m}x{k}x{n}: one and two threads differ"
        );
    }
    // 127 columns would be 132 once padded to whole panels, more than a packing slot holds.
    let (a, b) = (vec![1.0; 16 * 8], vec![1.0; 8 * 127]);
    let packed = PackedAT::from_packed(&PackedA::new(16, 8, &a).unwrap());
    let src = DenseB {
        data: &b,
        k: 8,
        n: 127,
        ld: 127,
    };
    let epi = Epilogue {
        bias: None,
        residual: None,
        activation: Activation::None,
    };
    let (mut c, mut scratch) = (vec![0.0; 16 * 127], vec![0.0; PACK_SCRATCH_LEN]);
    assert!(gemm_narrow(&packed, &src, &mut c, 127, epi, &mut scratch, &Sequential).is_err());
}
