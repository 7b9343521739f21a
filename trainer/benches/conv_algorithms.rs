//! The CPU convolution kernels of `trainer/src/ops`, Winograd F(2x2, 3x3) and F(4x4, 3x3) and
//! per-tap GEMMs against im2col, on every convolution of ResNet-18 at one input size and batch (the 7x7 stem,
//! the 3x3 convolutions, the 1x1 shortcuts), alternating them in one process and printing a
//! markdown table of median milliseconds and ratios:
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
#[command(about = "Winograd and per-tap GEMMs against im2col on ResNet-18's convolutions")]
struct Cli {
    /// Square network input side in pixels (the stem and max pool divide it by 4).
    #[arg(long, default_value_t = 64)]
    image: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed repetitions of each pass and algorithm (alternating), after one warm-up.
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Only the convolutions whose name starts with this (e.g. `layer1`, `conv1`), for profiling
    /// one shape.
    #[arg(long)]
    only: Option<String>,
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

/// One of ResNet-18's convolutions: where it sits, its input side and channels, kernel, stride,
/// padding, and how many times a forward pass runs it.
struct Conv {
    name: String,
    side: usize,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    uses: f64,
}

impl Conv {
    fn new(name: String, side: usize, (c_in, c_out): (usize, usize), kernel: usize) -> Conv {
        let (stride, padding) = (1, kernel / 2);
        let uses = 1.0;
        Conv {
            name,
            side,
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            uses,
        }
    }

    fn strided(self) -> Conv {
        Conv { stride: 2, ..self }
    }

    fn used(self, uses: f64) -> Conv {
        Conv { uses, ..self }
    }

    /// The stem reads the images, which need no gradient: the trainer skips its input gradient.
    fn is_stem(&self) -> bool {
        self.c_in == 3
    }
}

/// ResNet-18's convolutions at an input size: the 7x7/2 stem, each stage's stride-1 3x3
/// convolution (four in layer1, three in the others, timing one is enough), and the stride-2
/// 3x3 first convolution and 1x1 shortcut of layers 2-4.
fn resnet18_convs(image: usize) -> Vec<Conv> {
    let mut convs = vec![Conv::new("conv1 7x7/2 (stem)".into(), image, (3, 64), 7).strided()];
    let mut side = image.div_ceil(4);
    for (layer, channels) in [64usize, 128, 256, 512].into_iter().enumerate() {
        if layer > 0 {
            let c = (channels / 2, channels);
            let name = format!("layer{}.0.conv1", layer + 1);
            convs.push(Conv::new(name, side, c, 3).strided());
            let name = format!("layer{}.0.downsample 1x1/2", layer + 1);
            convs.push(Conv::new(name, side, c, 1).strided());
            side = side.div_ceil(2);
        }
        let name = format!("layer{} 3x3/1", layer + 1);
        let c = (channels, channels);
        convs.push(Conv::new(name, side, c, 3).used(if layer == 0 { 4.0 } else { 3.0 }));
    }
    convs
}

fn main() -> Result<()> {
    ops::configure_cpu_runtime();
    let cli = Cli::parse();
    // On a worker of rayon's pool, as the trainer runs (ops::on_compute_pool).
    ops::on_compute_pool(|| table(&cli))
}

fn table(cli: &Cli) -> Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    println!(
        "threads: {}, input {} px, batch {}, median of {} (ms); ratios against im2col\n",
        rayon::current_num_threads(),
        cli.image,
        cli.batch,
        cli.reps
    );
    // (column name, algorithm); the first is the reference of the ratios.
    let algorithms = [
        ("im2col", ConvAlgorithm::Im2col),
        ("winograd", ConvAlgorithm::Winograd),
        ("winograd4", ConvAlgorithm::Winograd4),
        ("taps", ConvAlgorithm::Taps),
        ("auto-no-taps", ConvAlgorithm::AutoNoTaps),
        ("auto", ConvAlgorithm::Auto),
    ];
    let mut header = String::from("| conv | plane | channels | pass | im2col |");
    for (name, _) in &algorithms[1..] {
        header += &format!(" {name} | ratio |");
    }
    println!(
        "{header}\n|{}",
        "---|".repeat(5 + 2 * (algorithms.len() - 1))
    );
    let mut totals = vec![0f64; algorithms.len()];
    let chosen = |name: &str| {
        cli.only
            .as_deref()
            .is_none_or(|prefix| name.starts_with(prefix))
    };
    for conv in resnet18_convs(cli.image)
        .into_iter()
        .filter(|c| chosen(&c.name))
    {
        let g = ConvGeometry::new(
            (cli.batch, conv.c_in, conv.side, conv.side),
            (conv.c_out, conv.c_in, conv.kernel, conv.kernel),
            conv.stride,
            conv.padding,
        )?;
        let x = random(&mut rng, cli.batch * conv.c_in * conv.side * conv.side);
        let w = random(&mut rng, conv.c_out * conv.c_in * conv.kernel * conv.kernel);
        let grad_y = random(&mut rng, cli.batch * conv.c_out * g.out_plane());
        let passes: [(&str, &dyn Fn() -> Vec<f32>); 3] = [
            ("forward", &|| ops::conv2d_forward(&g, &x, &w)),
            ("input grad", &|| ops::conv2d_input_grad(&g, &grad_y, &w)),
            ("weight grad", &|| ops::conv2d_weight_grad(&g, &x, &grad_y)),
        ];
        for (pass, run) in passes {
            if conv.is_stem() && pass == "input grad" {
                continue;
            }
            let mut times = vec![Vec::new(); algorithms.len()];
            for rep in 0..=cli.reps {
                for (algorithm, &(_, kind)) in algorithms.iter().enumerate() {
                    ops::set_conv_algorithm(kind);
                    let start = Instant::now();
                    std::hint::black_box(run());
                    if rep > 0 {
                        times[algorithm].push(start.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            let ms: Vec<f64> = times.into_iter().map(median).collect();
            for (total, ms) in totals.iter_mut().zip(&ms) {
                *total += conv.uses * ms;
            }
            let mut row = format!(
                "| {} | {}x{} -> {}x{} | {} -> {} | {pass} | {:.2} |",
                conv.name, conv.side, conv.side, g.out_h, g.out_w, conv.c_in, conv.c_out, ms[0]
            );
            for time in &ms[1..] {
                row += &format!(" {time:.2} | {:.2} |", time / ms[0]);
            }
            println!("{row}");
        }
    }
    let mut summary = format!(
        "\nAll convolutions of one step (forward, both gradients, the stem's weight gradient \
         only): im2col {:.1} ms",
        totals[0]
    );
    for ((name, _), total) in algorithms.iter().zip(&totals).skip(1) {
        summary += &format!(", {name} {total:.1} ms ({:.2})", total / totals[0]);
    }
    let (no_taps, auto) = (totals[algorithms.len() - 2], totals[algorithms.len() - 1]);
    println!("{summary}; auto / auto-no-taps {:.2}", auto / no_taps);
    Ok(())
}
