//! Training-step and forward benchmark of the project's ResNet-18 on the CPU, with this crate's
//! fast kernels or candle's own (`--kernels candle`), printing a table.
//!
//! One configuration per process so that the peak RSS belongs to it alone:
//!   cargo bench -p face2exp-trainer --bench train_step                    # default suite, table
//!   cargo bench -p face2exp-trainer --bench train_step -- step --image 112 --batch 32
//!   cargo bench -p face2exp-trainer --bench train_step -- forward --image 112
//! `step`/`forward` print one JSON line; scripts/bench_train.py runs them next to PyTorch
//! (with `--serve`, a block of steps per line of standard input, for interleaving with it).
//! The step's update is the trainer's SGD (momentum, Nesterov, weight decay) unless
//! `--optimizer plain` (lr only, as the tables before session 9 used).
//! Threads: rayon's (`RAYON_NUM_THREADS`, default all cores); candle's element-wise workers
//! poll `CANDLE_BARRIER_POOL_SPIN_LIMIT` times before parking, and glibc keeps freed memory
//! (`ops::configure_cpu_runtime`, as in `face2exp`).

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{loss::cross_entropy, Optimizer, VarBuilder, VarMap, SGD};
use clap::{Parser, Subcommand, ValueEnum};
use face2exp_trainer::model::{trainable_vars, Arch, ResNet, ResNetConfig, Stem};
use face2exp_trainer::ops::{self, ConvAlgorithm};
use face2exp_trainer::train::optim::{Sgd, SgdConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NUM_CLASSES: usize = 7;
const LR: f64 = 0.01;

#[derive(Parser)]
#[command(about = "ResNet-18 CPU training-step benchmark")]
struct Cli {
    #[command(subcommand)]
    what: Option<What>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum What {
    /// Time forward + backward + SGD update in train mode.
    Step(Config),
    /// Time an eval-mode forward pass.
    Forward(Config),
    /// Time the trainer's SGD update of ResNet-18's parameters alone, the fused in-place CPU
    /// ops against the same update in candle tensor ops, alternating in one process.
    Update {
        #[arg(long, default_value_t = 20)]
        reps: usize,
        /// Passed by `cargo bench`; ignored.
        #[arg(long, hide = true)]
        bench: bool,
    },
}

#[derive(clap::Args, Clone)]
struct Config {
    /// Square input side in pixels.
    #[arg(long, default_value_t = 112)]
    image: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long, value_enum, default_value_t = Kernels::Fast)]
    kernels: Kernels,
    /// Which ResNet-18: the project's (trainer/src/model) or this file's minimal one, which
    /// also uses the fused train-mode BatchNorm (`ops::batch_norm_train`).
    #[arg(long, value_enum, default_value_t = ModelKind::Project)]
    model: ModelKind,
    /// The update after backward: the trainer's SGD (momentum 0.9, Nesterov, weight decay
    /// 5e-4 on conv and linear weights, its defaults) or plain SGD (candle_nn's, lr only).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Trainer)]
    optimizer: OptimizerKind,
    /// Kernel of the 3x3 stride-1 convolutions (fast kernels only): Winograd where it pays
    /// (`auto`, the trainer's default), im2col everywhere, or Winograd everywhere it applies.
    #[arg(long, value_enum, default_value_t = ConvAlgorithm::Auto)]
    conv: ConvAlgorithm,
    /// After the warm-up, print `ready`, then for each line of standard input, a number of
    /// steps (or forwards; empty: one), run that many back to back and print their seconds on
    /// one line; when the input ends, the usual JSON line over all of them (`--reps` is
    /// ignored). For interleaving blocks of steps with another process's:
    /// `scripts/bench_train.py --interleave`.
    #[arg(long)]
    serve: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum Kernels {
    /// trainer/src/ops custom ops.
    Fast,
    /// candle's built-in conv2d and the portable max pool.
    Candle,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum OptimizerKind {
    Trainer,
    Plain,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum ModelKind {
    Project,
    Minimal,
}

/// torchvision's ResNet-18 (BasicBlock, 7x7/2 stem, 3x3/2 max pool) from `ops` alone.
struct MinimalResNet18 {
    stem: ConvBn,
    blocks: Vec<(ConvBn, ConvBn, Option<ConvBn>)>,
    fc: candle_nn::Linear,
}

struct ConvBn {
    weight: Tensor,
    stride: usize,
    padding: usize,
    gamma: Tensor,
    beta: Tensor,
}

impl ConvBn {
    fn new(c_in: usize, c_out: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        Ok(Self {
            weight: vb.get_with_hints((c_out, c_in, k, k), "conv", init)?,
            stride,
            padding: k / 2,
            gamma: vb.get_with_hints(c_out, "bn.weight", candle_nn::Init::Const(1.0))?,
            beta: vb.get_with_hints(c_out, "bn.bias", candle_nn::Init::Const(0.0))?,
        })
    }

    /// Train mode: batch statistics (running estimates are not kept in this benchmark model).
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = ops::conv2d(x, &self.weight, self.stride, self.padding)?;
        if train {
            Ok(ops::batch_norm_train(&y, &self.gamma, &self.beta, 1e-5, false)?.0)
        } else {
            let per_channel = (1, self.gamma.dim(0)?, 1, 1);
            let scale = (&self.gamma / (1.0f64 + 1e-5).sqrt())?;
            Ok(y.broadcast_mul(&scale.reshape(per_channel)?)?
                .broadcast_add(&self.beta.reshape(per_channel)?)?)
        }
    }
}

impl MinimalResNet18 {
    fn new(vb: VarBuilder) -> Result<Self> {
        let stem = ConvBn::new(3, 64, 7, 2, vb.pp("stem"))?;
        let mut blocks = Vec::new();
        let mut c_in = 64;
        for (stage, planes) in [64, 128, 256, 512].into_iter().enumerate() {
            for b in 0..2 {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let vb = vb.pp(format!("layer{}.{b}", stage + 1));
                let down = (stride != 1 || c_in != planes)
                    .then(|| ConvBn::new(c_in, planes, 1, stride, vb.pp("downsample")))
                    .transpose()?;
                blocks.push((
                    ConvBn::new(c_in, planes, 3, stride, vb.pp("a"))?,
                    ConvBn::new(planes, planes, 3, 1, vb.pp("b"))?,
                    down,
                ));
                c_in = planes;
            }
        }
        let fc = candle_nn::linear(512, NUM_CLASSES, vb.pp("fc"))?;
        Ok(Self { stem, blocks, fc })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = ops::max_pool_3x3_s2_p1(&self.stem.forward(x, train)?.relu()?)?;
        for (a, b, down) in &self.blocks {
            let identity = match down {
                Some(d) => d.forward(&y, train)?,
                None => y.clone(),
            };
            let out = b.forward(&a.forward(&y, train)?.relu()?, train)?;
            y = (out + identity)?.relu()?;
        }
        Ok(candle_nn::Module::forward(
            &self.fc,
            &ops::global_avg_pool(&y)?,
        )?)
    }
}

enum Model {
    Project(ResNet),
    Minimal(MinimalResNet18),
}

impl Model {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Model::Project(m) => Ok(m.forward_t(x, train)?),
            Model::Minimal(m) => m.forward_t(x, train),
        }
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM line in /proc/self/status")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// The project's ResNet-18 for 7 classes at this input side.
fn resnet18(image: usize) -> ResNetConfig {
    ResNetConfig {
        arch: Arch::Resnet18,
        stem: Stem::Imagenet,
        num_classes: NUM_CLASSES,
        input_size: image,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// The requests of `--serve`: each line of standard input asks for a block of that many
/// steps (an empty line for one), answered with their times on one line.
struct Requests {
    lines: std::io::Lines<std::io::StdinLock<'static>>,
    /// Steps left in the current block, and the times of those done.
    left: usize,
    block: Vec<f64>,
}

impl Requests {
    /// Whether repetition `rep` (1-based, after the warm-up) runs: up to `--reps`, or with
    /// `--serve` while a block is open or standard input has another request.
    fn next_rep(&mut self, cfg: &Config, rep: usize) -> Result<bool> {
        if !cfg.serve {
            return Ok(rep <= cfg.reps);
        }
        if self.left == 0 {
            let Some(line) = self.lines.next() else {
                return Ok(false);
            };
            let line = line.context("reading a request from standard input")?;
            let line = line.trim();
            self.left = if line.is_empty() {
                1
            } else {
                line.parse()
                    .with_context(|| format!("request {line:?}: not a number of steps"))?
            };
            if self.left == 0 {
                bail!("request {line:?}: ask for at least one step");
            }
        }
        Ok(true)
    }

    /// Records a served step's time; answers the request when its block is complete.
    fn done(&mut self, seconds: f64) -> Result<()> {
        self.block.push(seconds);
        self.left -= 1;
        if self.left == 0 {
            let times: Vec<String> = self.block.drain(..).map(|t| format!("{t:.6}")).collect();
            println!("{}", times.join(" "));
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

fn run(what: &str, cfg: &Config) -> Result<()> {
    ops::set_fast_cpu_kernels(cfg.kernels == Kernels::Fast);
    ops::set_conv_algorithm(cfg.conv);
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = match cfg.model {
        ModelKind::Project => Model::Project(ResNet::new(&resnet18(cfg.image), vb)?),
        ModelKind::Minimal => Model::Minimal(MinimalResNet18::new(vb)?),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let pixels = cfg.batch * 3 * cfg.image * cfg.image;
    let images: Vec<f32> = (0..pixels).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
    let images = Tensor::from_vec(images, (cfg.batch, 3, cfg.image, cfg.image), &dev)?;
    let labels: Vec<u32> = (0..cfg.batch)
        .map(|_| rng.gen_range(0..NUM_CLASSES as u32))
        .collect();
    let labels = Tensor::from_vec(labels, cfg.batch, &dev)?;
    let named = trainable_vars(&varmap);
    let mut plain = SGD::new(named.iter().map(|(_, v)| v.clone()).collect(), LR)?;
    let mut trainer = Sgd::new(named, SgdConfig::default());
    let mut times = Vec::with_capacity(cfg.reps);
    // Forward (with the loss), backward and update of each step, trainer SGD only (candle_nn's
    // plain SGD does backward and update in one call).
    let mut phases: [Vec<f64>; 3] = Default::default();
    let mut last_loss = f32::NAN;
    let mut requests = Requests {
        lines: std::io::stdin().lines(),
        left: 0,
        block: Vec::new(),
    };
    for rep in 0.. {
        if rep > 0 && !requests.next_rep(cfg, rep)? {
            break;
        }
        let start = Instant::now();
        match what {
            "step" => {
                let loss = cross_entropy(&model.forward_t(&images, true)?, &labels)?;
                let forward_done = Instant::now();
                match cfg.optimizer {
                    OptimizerKind::Plain => plain.backward_step(&loss)?,
                    OptimizerKind::Trainer => {
                        let grads = loss.backward()?;
                        let backward_done = Instant::now();
                        trainer.step(&grads, LR)?;
                        if rep > 0 {
                            let spans = [start, forward_done, backward_done, Instant::now()];
                            for (phase, span) in phases.iter_mut().zip(spans.windows(2)) {
                                phase.push((span[1] - span[0]).as_secs_f64());
                            }
                        }
                    }
                }
                last_loss = loss.to_scalar::<f32>()?;
            }
            _ => {
                let logits = model.forward_t(&images, false)?;
                last_loss = logits.sum_all()?.to_scalar::<f32>()?;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        if rep == 0 {
            if cfg.serve {
                println!("ready");
                std::io::stdout().flush()?;
            }
        } else {
            times.push(elapsed);
            if cfg.serve {
                requests.done(elapsed)?;
            }
        }
    }
    if times.is_empty() {
        bail!("no {what} was timed (--serve read no request)");
    }
    if !last_loss.is_finite() {
        bail!("the {what} produced a non-finite value {last_loss}");
    }
    let phases = if phases[0].is_empty() {
        String::new()
    } else {
        let [f, b, u] = phases.map(median);
        format!(",\"forward_s\":{f:.5},\"backward_s\":{b:.5},\"update_s\":{u:.5}")
    };
    println!(
        "{{\"impl\":\"candle-{:?}-{:?}-{:?}\",\"what\":\"{what}\",\"image\":{},\"batch\":{},\"threads\":{},\"median_s\":{:.5},\"min_s\":{:.5},\"peak_rss_mib\":{:.1}{phases}}}",
        cfg.kernels,
        cfg.model,
        cfg.optimizer,
        cfg.image,
        cfg.batch,
        rayon::current_num_threads(),
        median(times.clone()),
        times.iter().cloned().fold(f64::INFINITY, f64::min),
        peak_rss_mib()?
    );
    Ok(())
}

/// The default suite: every configuration in its own child process, then one table.
fn suite() -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    let jobs: &[(&str, usize, usize, &str, &str)] = &[
        ("step", 64, 32, "fast", "project"),
        ("step", 64, 32, "fast", "minimal"),
        ("step", 64, 32, "candle", "project"),
        ("step", 112, 32, "fast", "project"),
        ("step", 112, 32, "fast", "minimal"),
        ("forward", 112, 1, "fast", "project"),
        ("forward", 112, 1, "candle", "project"),
    ];
    for &(what, image, batch, kernels, model) in jobs {
        let out = Command::new(&exe)
            .args([
                what,
                "--image",
                &image.to_string(),
                "--batch",
                &batch.to_string(),
            ])
            .args(["--kernels", kernels, "--model", model])
            .args(["--reps", if what == "step" { "2" } else { "5" }])
            .output()?;
        if !out.status.success() {
            bail!(
                "{what} {image}/{batch}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let json = String::from_utf8(out.stdout)?;
        let field = |name: &str| -> Result<f64> {
            let start = json
                .find(&format!("\"{name}\":"))
                .context("field missing")?
                + name.len()
                + 3;
            let end = json[start..].find([',', '}']).context("field end")? + start;
            Ok(json[start..end].parse()?)
        };
        rows.push((
            what,
            image,
            batch,
            kernels,
            model,
            field("median_s")?,
            field("peak_rss_mib")?,
        ));
    }
    println!("| what | image | batch | kernels | model | median s | peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|");
    for (what, image, batch, kernels, model, secs, rss) in rows {
        println!("| {what} | {image} | {batch} | {kernels} | {model} | {secs:.3} | {rss:.0} |");
    }
    Ok(())
}

/// Median ms of the SGD update with the fused ops and with tensor ops, and their ratio.
fn update(reps: usize) -> Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = ResNet::new(
        &resnet18(48),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let images = Tensor::randn(0f32, 1.0, (4, 3, 48, 48), &dev)?;
    let labels = Tensor::new(&[0u32, 1, 2, 3], &dev)?;
    let grads = cross_entropy(&model.forward_t(&images, true)?, &labels)?.backward()?;
    let named = trainable_vars(&varmap);
    let count: usize = named.iter().map(|(_, v)| v.elem_count()).sum();
    let mut sgd = Sgd::new(named, SgdConfig::default());
    sgd.step(&grads, LR)?; // momentum buffers exist from here on, as in training
    let (mut fused, mut tensor_ops) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        for (fast, times) in [(true, &mut fused), (false, &mut tensor_ops)] {
            ops::set_fast_cpu_kernels(fast);
            let start = Instant::now();
            sgd.step(&grads, LR)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (fused, tensor_ops) = (median(fused), median(tensor_ops));
    println!("| update of {count} parameters | fused ms | tensor ops ms | tensor ops / fused |");
    println!("|---|---|---|---|");
    println!(
        "| SGD, momentum 0.9, Nesterov, wd 5e-4, {} threads | {fused:.2} | {tensor_ops:.2} | {:.2} |",
        rayon::current_num_threads(),
        tensor_ops / fused
    );
    Ok(())
}

fn main() -> Result<()> {
    face2exp_trainer::ops::configure_cpu_runtime();
    let cli = Cli::parse();
    // On a worker of rayon's pool, as the `face2exp` binary runs (ops::on_compute_pool).
    face2exp_trainer::ops::on_compute_pool(|| match cli.what {
        Some(What::Update { reps, .. }) => update(reps),
        Some(What::Step(cfg)) => run("step", &cfg),
        Some(What::Forward(cfg)) => run("forward", &cfg),
        None => suite(),
    })
}
