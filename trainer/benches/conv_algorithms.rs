//! The CPU convolution kernels of `trainer/src/ops`, Winograd F(2x2, 3x3) against im2col, on
//! the 3x3 stride-1 convolutions of ResNet-18 at one input size and batch, alternating the two
//! in one process and printing a markdown table of median milliseconds and their ratio:
//!
//!   cargo bench -p face2exp-trainer --bench conv_algorithms -- --image 64 --batch 32
//!
//! Threads: rayon's (`RAYON_NUM_THREADS`, default all cores).

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use face2exp_trainer::ops::{self, ConvAlgorithm, ConvGeometry};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Parser)]
#[command(about = "Winograd against im2col on ResNet-18's 3x3 stride-1 convolutions")]
struct Cli {
    /// Square network input side in pixels (the stem and max pool divide it by 4).
    #[arg(long, default_value_t = 64)]
    image: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed repetitions of each pass and algorithm (alternating), after one warm-up.
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    ops::configure_cpu_runtime();
    let cli = Cli::parse();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    println!(
        "threads: {}, input {} px, batch {}, median of {} (ms)\n",
        rayon::current_num_threads(),
        cli.image,
        cli.batch,
        cli.reps
    );
    println!("| layer | plane | channels | pass | im2col | winograd | ratio | auto | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let algorithms = [
        ConvAlgorithm::Im2col,
        ConvAlgorithm::Winograd,
        ConvAlgorithm::Auto,
    ];
    let mut totals = [0f64; 3];
    let mut side = cli.image.div_ceil(4);
    for (layer, channels) in [64usize, 128, 256, 512].into_iter().enumerate() {
        // Each stage runs its 3x3 stride-1 convolution three times at batch scale (four in
        // layer1, where the first block has no stride-2 conv); timing one is enough.
        let g = ConvGeometry::new(
            (cli.batch, channels, side, side),
            (channels, channels, 3, 3),
            1,
            1,
        )?;
        let x = random(&mut rng, cli.batch * channels * side * side);
        let w = random(&mut rng, channels * channels * 9);
        let grad_y = random(&mut rng, cli.batch * channels * g.out_plane());
        let passes: [(&str, &dyn Fn() -> Vec<f32>); 3] = [
            ("forward", &|| ops::conv2d_forward(&g, &x, &w)),
            ("input grad", &|| ops::conv2d_input_grad(&g, &grad_y, &w)),
            ("weight grad", &|| ops::conv2d_weight_grad(&g, &x, &grad_y)),
        ];
        let uses = if layer == 0 { 4.0 } else { 3.0 };
        for (pass, run) in passes {
            let mut times = [Vec::new(), Vec::new(), Vec::new()];
            for rep in 0..=cli.reps {
                for (algorithm, &kind) in algorithms.iter().enumerate() {
                    ops::set_conv_algorithm(kind);
                    let start = Instant::now();
                    std::hint::black_box(run());
                    if rep > 0 {
                        times[algorithm].push(start.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            let [im2col, winograd, auto] = times.map(median);
            for (total, ms) in totals.iter_mut().zip([im2col, winograd, auto]) {
                *total += uses * ms;
            }
            println!(
                "| layer{} | {side}x{side} | {channels} | {pass} | {im2col:.2} | {winograd:.2} | \
                 {:.2} | {auto:.2} | {:.2} |",
                layer + 1,
                winograd / im2col,
                auto / im2col
            );
        }
        side = side.div_ceil(2);
    }
    println!(
        "\nAll 3x3 stride-1 convolutions of one step (forward + both gradients): im2col {:.1} ms, \
         winograd {:.1} ms ({:.2}), auto {:.1} ms ({:.2})",
        totals[0],
        totals[1],
        totals[1] / totals[0],
        totals[2],
        totals[2] / totals[0]
    );
    Ok(())
}
