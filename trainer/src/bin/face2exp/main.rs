//! `face2exp`: train (SL or Meta-Face2Exp), evaluate and export facial-expression networks.
//! A thin front end: every command is a library call.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use face2exp_trainer::eval::Tta;
use face2exp_trainer::train;
use face2exp_trainer::{commands, data};

mod train_args;
use train_args::TrainArgs;

#[derive(Parser)]
#[command(
    name = "face2exp",
    version,
    about = "Train, evaluate and export facial-expression recognition networks (Meta-Face2Exp, CVPR 2022)",
    long_about = "Train, evaluate and export facial-expression recognition networks.\n\n\
        Data is named by a spec `KIND:PATH[#SPLIT]` wherever a command takes data:\n  \
        imagefolder:DIR     DIR/<class>/*.png|jpg (e.g. FER2013 as class folders)\n  \
        fer2013-csv:FILE    the original fer2013.csv (#train, #publictest, #privatetest)\n  \
        rafdb:DIR           RAF-DB basic (#train, #test)\n  \
        affectnet:CSV       AffectNet training.csv / validation.csv\n  \
        folder:DIR          unlabeled faces, every image under DIR (LFW, VGGFace2, ...)\n\n\
        Set RUST_LOG=debug for more log detail."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a base network: supervised (`--method sl`) or Meta-Face2Exp (`--method meta`).
    Train(Box<TrainArgs>),
    /// Evaluate exported weights: overall / mean / std of per-class accuracy and the confusion matrix.
    Eval(EvalArgs),
    /// Write inference weights (safetensors + metadata) from a run folder.
    Export(ExportArgs),
    /// Average several weights files of one network into one (a "model soup").
    Average(AverageArgs),
    /// Measure how much of Meta-Face2Exp's feedback f is about B's pseudo labels, how much is
    /// the noise of the labeled batch that judges A's step, and whether f prefers B's labels
    /// to corrupted ones (docs/METHOD.md, "Measuring f"; results: docs/RESULTS_PROBE.md).
    ProbeFeedback(ProbeArgs),
    /// Redraw a run folder's training curves (curves.png, val_curves.png).
    Plot {
        /// The run folder.
        #[arg(long)]
        run: PathBuf,
    },
}

#[derive(Args)]
struct EvalArgs {
    /// Inference weights written by `face2exp export` (or a run's best_base.safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Labeled data to evaluate on, e.g. imagefolder:../shared/data/fer2013/val
    #[arg(long)]
    data: String,
    /// Print exactly one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Also draw the confusion matrix to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Test-time augmentation: `hflip` averages each image's prediction with its mirror
    /// image's, as the demo's --flip-average does (about a point more accuracy on FER2013 val
    /// for the shipped network, at twice the cost).
    #[arg(long, value_enum, default_value = "none")]
    tta: Tta,
}

/// From a Meta-Face2Exp checkpoint, A takes U steps on U batches of B's pseudo labels (each
/// from the checkpointed state) and the exact f of each step is computed on the same K labeled
/// batches. The U x K table's variance is split into the pseudo-label batch (what B can learn
/// from), the labeled batch and their interaction. Reads the run folder, writes nothing there.
#[derive(Args)]
struct ProbeArgs {
    /// A `--method meta` run folder with a checkpoint.safetensors.
    #[arg(long)]
    run: PathBuf,
    /// U: pseudo-label batches (of batch_size x mu unlabeled images each).
    #[arg(long, default_value_t = 24)]
    pseudo_batches: usize,
    /// K: labeled batches (of batch_size images each) judging every step.
    #[arg(long, default_value_t = 16)]
    labeled_batches: usize,
    /// A's learning rate for the probe steps [default: the run's peak adaptation lr].
    #[arg(long)]
    lr_adaptation: Option<f64>,
    /// Device to probe on [default: the run's].
    #[arg(long)]
    device: Option<String>,
    /// Also probe each pseudo-label batch with this fraction of B's labels moved to another
    /// class (comma-separated list): does f rank B's own labels above corrupted ones?
    #[arg(long, value_delimiter = ',', default_value = "1")]
    corrupt: Vec<f64>,
    /// Also probe each pseudo-label batch with this fraction of B's labels permuted among
    /// their images (comma-separated list): as wrong as --corrupt, but the batch's class mix
    /// is kept, which tells f's response to correctness from its response to the class mix.
    #[arg(long, value_delimiter = ',')]
    shuffle: Vec<f64>,
    /// Also probe each pseudo-label batch with A stepping toward the uniform distribution
    /// (label smoothing 1, no labels): a step that only makes A less sure. With the report's
    /// calibration table it tells whether f rewards lowering A's confidence.
    #[arg(long)]
    uniform: bool,
    /// BatchNorm statistics A is judged with after its step: batch (the labeled batch's own,
    /// as training does) or running (A's, as eval and deployment see it).
    #[arg(long, value_enum, default_value = "batch")]
    judge_statistics: face2exp_trainer::train::JudgeStatistics,
    /// Pseudo-label images from this data spec instead of the run's unlabeled data. Labeled
    /// data (e.g. imagefolder:../shared/data/fer2013/val) adds how f follows the share of B's
    /// labels that are right, batch by batch.
    #[arg(long)]
    pseudo_data: Option<String>,
    /// Centre crop of those images [default: 1.0 for --pseudo-data, else the run's].
    #[arg(long)]
    pseudo_center_crop: Option<f32>,
    /// Seed for the probe's image sample and augmentations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the table and its variance split as one JSON object here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw mean f against the fraction of B's labels corrupted to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// The weights at the run's last checkpoint (EMA weights when the run kept an EMA).
    Last,
    /// The base network with the best validation mean class accuracy (best_base.safetensors).
    Best,
}

#[derive(Args)]
struct ExportArgs {
    /// The run folder to export from.
    #[arg(long)]
    run: PathBuf,
    /// base (B, the network apps run) or adaptation (A).
    #[arg(long, default_value = "base")]
    net: String,
    #[arg(long, value_enum, default_value = "last")]
    from: Which,
    /// Output .safetensors file.
    #[arg(long)]
    out: PathBuf,
}

/// The uniform average of weights files from one training trajectory (a run's exported EMA
/// weights at different steps, or runs continued from one another): usually better than each
/// member. The files must describe the same network; BatchNorm statistics are averaged too.
#[derive(Args)]
struct AverageArgs {
    /// Two or more weights files written by `face2exp export` (or `average`).
    #[arg(long, num_args = 2.., required = true)]
    weights: Vec<PathBuf>,
    /// Output .safetensors file.
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    face2exp_trainer::ops::configure_cpu_runtime();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(error) = face2exp_trainer::ops::on_compute_pool(|| run(cli)) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => {
            let (config, options) = args.into_config()?;
            let summary = train::train(config, &options)?;
            if let Some(m) = &summary.base_metrics {
                println!("{}", m.table());
            }
            println!(
                "trained {} steps in {:.0} s; run folder {}",
                summary.steps,
                summary.seconds,
                options.out.display()
            );
            Ok(())
        }
        Command::Eval(args) => {
            let spec: data::DatasetSpec = args.data.parse()?;
            let metrics = commands::eval_weights(
                &args.weights,
                &spec,
                &args.device,
                args.batch_size,
                args.tta,
            )?;
            if let Some(plot) = &args.plot {
                face2exp_trainer::plot::confusion_png(plot, &metrics)
                    .with_context(|| format!("drawing {}", plot.display()))?;
            }
            if args.json {
                println!("{}", serde_json::to_string(&metrics.to_json())?);
            } else {
                println!("{}", metrics.table());
            }
            Ok(())
        }
        Command::Export(args) => {
            let best = matches!(args.from, Which::Best);
            commands::export_run(&args.run, &args.net, best, &args.out)?;
            eprintln!("wrote {}", args.out.display());
            Ok(())
        }
        Command::Average(args) => {
            face2exp_trainer::average::average_weights(&args.weights, &args.out)?;
            eprintln!(
                "wrote {}, the average of {} files",
                args.out.display(),
                args.weights.len()
            );
            Ok(())
        }
        Command::ProbeFeedback(args) => {
            use face2exp_trainer::train::feedback_probe::{self, ProbeOptions};
            let table = feedback_probe::probe(&ProbeOptions {
                run: args.run,
                pseudo_batches: args.pseudo_batches,
                labeled_batches: args.labeled_batches,
                lr_adaptation: args.lr_adaptation,
                device: args.device,
                corrupt: args.corrupt,
                shuffle: args.shuffle,
                uniform: args.uniform,
                judge_statistics: args.judge_statistics,
                pseudo_data: args.pseudo_data,
                pseudo_center_crop: args.pseudo_center_crop,
                seed: args.seed,
                progress: true,
            })?;
            let report = feedback_probe::ProbeReport::new(table)?;
            println!("{}", report.text());
            if let Some(path) = &args.json {
                let json = serde_json::to_string(&report)?;
                face2exp_trainer::atomic::write_atomically(path, json.as_bytes())?;
                eprintln!("wrote {}", path.display());
            }
            if let Some(path) = &args.plot {
                face2exp_trainer::plot::xy_png(
                    path,
                    "mean f, B's labels relabeled",
                    "fraction of B's labels relabeled",
                    &report.corruption_curves(),
                )?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Plot { run } => {
            train::run::write_plots(&run, None)?;
            eprintln!("wrote plots in {}", run.display());
            Ok(())
        }
    }
}
