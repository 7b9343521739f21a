//! Packed (im2col) against implicit (padded input read in place) GEMM input for stride-1 3x3
//! convolutions of the shapes ResNet-18 and the RetinaFace heads run, one thread; prints a
//! table. This is the measurement behind `ConvPath::Auto`'s rule.
//!
//!     cargo run --release -p face2exp-infer --example conv_paths
//!
//! Both paths are timed round-robin (7 rounds, median), so machine drift hits them alike.

use face2exp_infer::kernels::{Activation, Conv2d, Conv2dParams, ConvPath, Sequential};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("| in | out | input | packed ms | implicit ms | packed / implicit | auto picks |");
    println!("|---|---|---|---|---|---|---|");
    for &(cin, cout, h, w) in &[
        (64, 64, 56, 56),
        (64, 64, 28, 28),
        (128, 128, 28, 28),
        (128, 128, 14, 14),
        (64, 64, 12, 12),
        (128, 128, 10, 10),
        (128, 128, 8, 8),
        (256, 256, 7, 7),
        (64, 64, 60, 80),
        (64, 32, 30, 40),
        (64, 16, 30, 40),
        (16, 16, 30, 40),
        (64, 32, 15, 20),
        (16, 16, 15, 20),
        (64, 32, 8, 10),
        (16, 16, 8, 10),
    ] {
        let params = Conv2dParams::new(cin, cout, 3, 1, 1);
        let weights: Vec<f32> = (0..params.weight_len())
            .map(|i| (i % 17) as f32 * 0.01 - 0.08)
            .collect();
        let mut conv = Conv2d::new(params, &weights, None)?;
        let auto = conv.scratch_len_at(1, h, w) > Conv2d::scratch_len(1);
        let input: Vec<f32> = (0..cin * h * w).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut out = vec![0.0; cout * h * w];
        // About 0.2 GFLOP per timed batch.
        let reps = (100_000_000 / (cin * cout * h * w * 9)).clamp(3, 2000);
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..7 {
            for (path, times) in [ConvPath::Packed, ConvPath::Implicit]
                .iter()
                .zip(&mut times)
            {
                conv.set_path(*path);
                let mut scratch = vec![0.0; conv.scratch_len_at(1, h, w)];
                let start = Instant::now();
                for _ in 0..reps {
                    conv.forward(
                        &input,
                        h,
                        w,
                        &mut out,
                        None,
                        Activation::Relu,
                        &mut scratch,
                        &Sequential,
                    )?;
                }
                times.push(start.elapsed().as_secs_f64() * 1e3 / reps as f64);
            }
        }
        let [packed, implicit] = times.map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        });
        println!(
            "| {cin} | {cout} | {h}x{w} | {packed:.3} | {implicit:.3} | {:.2} | {} |",
            packed / implicit,
            if auto { "implicit" } else { "packed" }
        );
    }
    Ok(())
}
