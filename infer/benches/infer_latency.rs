//! Latency of one face at batch 1: `cargo bench -p face2exp-infer --bench infer_latency`.
//!
//! Prints a table per network (ResNet-18, imagenet stem at 64 and 112 px, small stem at 64 px)
//! and thread count: median milliseconds of `forward_chw`, of a full `classify` of a 640x480
//! RGB frame, achieved GFLOP/s (2 x MACs / time) and that as a share of this CPU's measured
//! FMA peak. `INFER_BENCH_ITERS` sets the timed iterations (default 20).

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "support/timing.rs"]
mod timing;

use common::{model_file, random_input, random_pixels, Spec};
use face2exp_infer::kernels::gemm::simd_name;
use face2exp_infer::{ImageView, Model, PixelFormat, Session, SessionConfig};
use std::hint::black_box;
use std::time::Instant;
use timing::median_ms;

/// Single-core f32 FMA throughput measured with independent AVX2 accumulators.
#[cfg(target_arch = "x86_64")]
fn peak_gflops() -> f64 {
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run(n: usize) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..n {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0.0f32; 8];
        let mut sum = acc[0];
        for x in &acc[1..] {
            sum = _mm256_add_ps(sum, *x);
        }
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return f64::NAN;
    }
    let n = 20_000_000;
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            black_box(unsafe { run(black_box(n)) });
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (n * 12 * 8 * 2) as f64 / best / 1e9
}

#[cfg(not(target_arch = "x86_64"))]
fn peak_gflops() -> f64 {
    f64::NAN
}

fn main() {
    let iters: usize = std::env::var("INFER_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let peak = peak_gflops();
    println!("face2exp-infer latency, batch 1, micro-kernel {}, measured 1-core FMA peak {peak:.1} GFLOP/s", simd_name());
    println!();
    println!("| network | input | threads | GFLOP | forward ms | classify 640x480 ms | GFLOP/s | % of peak x threads |");
    println!("|---|---|---|---|---|---|---|---|");
    let frame = random_pixels(640 * 480 * 3, 1);
    let image = ImageView::packed(&frame, 640, 480, PixelFormat::Rgb8).unwrap();
    for (stem, size) in [("imagenet", 64), ("imagenet", 112), ("small", 64)] {
        let spec = Spec {
            arch: "resnet18",
            stem,
            input_size: size,
            classes: 7,
        };
        let model = Model::from_bytes(&model_file(&spec, 1)).unwrap();
        let gflop = 2.0 * model.macs() as f64 / 1e9;
        let input = random_input(size, 2);
        for threads in [1, 2] {
            let mut session = Session::new(
                &model,
                SessionConfig {
                    max_width: 640,
                    max_height: 480,
                    threads,
                },
            );
            let forward = median_ms(iters, || {
                black_box(session.forward_chw(&input).unwrap());
            });
            let classify = median_ms(iters, || {
                black_box(session.classify(&image).unwrap());
            });
            let rate = gflop / (forward / 1e3);
            println!(
                "| resnet18 {stem} | {size} | {threads} | {gflop:.3} | {forward:.2} | {classify:.2} | {rate:.1} | {:.0}% |",
                100.0 * rate / (peak * threads as f64)
            );
        }
    }
}
