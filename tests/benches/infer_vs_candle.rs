//! face2exp-infer against the trainer's candle forward (and PyTorch, when a Python with torch is
//! given), same weights, batch 1, eval mode, in one run:
//!
//! ```text
//! cargo bench -p face2exp-tests --bench infer_vs_candle
//! PYTHON=/path/to/python-with-torch cargo bench -p face2exp-tests --bench infer_vs_candle
//! ```
//!
//! Rows: the shipped base network (weights/face2exp-base.safetensors, at its own input size)
//! and a ResNet-18 with random weights at 112x112, each on 1 and 2 threads. Columns: median
//! milliseconds of one forward of a normalised CHW input in
//! - `infer`: `face2exp_infer::Session::forward_chw` (BatchNorm folded, packed weights);
//! - `candle+ops`: the trainer's `ResNet::forward_with(.., BnMode::Eval)` with the project's
//!   CPU kernels (trainer/src/ops), as `face2exp eval` runs it;
//! - `candle`: the same forward on candle's own conv2d and pooling kernels;
//! - `torch`: scripts/bench_infer_torch.py on the same file (only with `PYTHON` set);
//!   and the ratios candle+ops / infer, candle / infer and torch / infer (above 1: infer faster).
//!
//! Each thread count runs in its own child process with `RAYON_NUM_THREADS` set, because
//! candle and rayon size their thread pools once per process. Inside a process the three Rust
//! engines are timed round-robin (one forward of each per round, after 3 warm-up rounds), so
//! that the machine's drift hits them alike; PyTorch runs afterwards in its own process.
//! `INFER_BENCH_ITERS` sets the timed rounds (default 20).

#[path = "../../infer/benches/support/timing.rs"]
mod timing;

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use timing::interleaved_median_ms;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use face2exp_infer::{Model, Session, SessionConfig};
use face2exp_trainer::export::{self, ModelMeta};
use face2exp_trainer::model::{Arch, BnMode, ResNet, ResNetConfig, Stem};
use face2exp_trainer::ops::set_fast_cpu_kernels;
use face2exp_trainer::train::network::seeded_init;

const THREADS: [usize; 2] = [1, 2];

fn iterations() -> usize {
    std::env::var("INFER_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The networks benchmarked, as (label, safetensors file). The random 112 px network is
/// exported once by the parent so that every process (and PyTorch) reads the same file.
fn networks(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut list = Vec::new();
    let shipped = workspace_root().join("weights/face2exp-base.safetensors");
    if shipped.is_file() {
        list.push(("shipped base".to_string(), shipped));
    } else {
        eprintln!("weights/face2exp-base.safetensors is missing: benchmarking random weights only");
    }
    let config = ResNetConfig {
        arch: Arch::Resnet18,
        stem: Stem::Imagenet,
        input_size: 112,
        num_classes: 7,
    };
    let varmap = VarMap::new();
    ResNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    seeded_init(&varmap, 7).unwrap();
    let path = dir.join("resnet18_imagenet_112_random.safetensors");
    export::write_weights(
        &path,
        &export::varmap_tensors(&varmap),
        &ModelMeta::new(&config),
    )
    .unwrap();
    list.push(("random".to_string(), path));
    list
}

/// One process, one thread count: prints `file \t size \t gflop \t infer \t candle+ops \t candle`.
fn child(threads: usize, files: &[String]) {
    let iters = iterations();
    for file in files {
        let path = Path::new(file);
        let bytes = std::fs::read(path).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        let (network, meta) = export::load_model(path, &Device::Cpu).unwrap();
        let size = meta.config().input_size;
        let gflop = 2.0 * model.macs() as f64 / 1e9;
        let input: Vec<f32> = (0..3 * size * size)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();

        let mut session = Session::new(
            &model,
            SessionConfig {
                max_width: size,
                max_height: size,
                threads,
            },
        );
        let x = Tensor::from_slice(&input, (1, 3, size, size), &Device::Cpu).unwrap();
        // candle's kernel choice is a global switch, flipped inside the closures so that the
        // three engines can be timed round-robin (see `interleaved_median_ms`).
        let mut run_infer = || {
            black_box(session.forward_chw(&input).unwrap());
        };
        let mut run_with_ops = || {
            set_fast_cpu_kernels(true);
            black_box(network.forward_with(&x, BnMode::Eval).unwrap());
        };
        let mut run_stock = || {
            set_fast_cpu_kernels(false);
            black_box(network.forward_with(&x, BnMode::Eval).unwrap());
        };
        let times = interleaved_median_ms(
            iters,
            3,
            &mut [&mut run_infer, &mut run_with_ops, &mut run_stock],
        );
        set_fast_cpu_kernels(true);
        let (infer, with_ops, stock) = (times[0], times[1], times[2]);
        println!("{file}\t{size}\t{gflop:.3}\t{infer:.3}\t{with_ops:.3}\t{stock:.3}");
    }
}

/// `$PYTHON scripts/bench_infer_torch.py --tsv`: (file, threads) -> milliseconds.
fn torch_times(files: &[String]) -> Option<HashMap<(String, usize), f64>> {
    let python = std::env::var("PYTHON").ok()?;
    let script = workspace_root().join("scripts/bench_infer_torch.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(iterations().to_string())
        .arg("--tsv")
        .args(files)
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "{python} {} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            eprintln!("cannot run {python}: {e}");
            return None;
        }
    };
    let mut times = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if let [file, threads, ms] = fields[..] {
            if let (Ok(threads), Ok(ms)) = (threads.parse(), ms.parse()) {
                times.insert((file.to_string(), threads), ms);
            }
        } else {
            eprintln!("{line}");
        }
    }
    Some(times)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let threads = args[pos + 1].parse().unwrap();
        child(threads, &args[pos + 2..]);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nets = networks(dir.path());
    let files: Vec<String> = nets
        .iter()
        .map(|(_, p)| p.to_string_lossy().into_owned())
        .collect();
    let mut rows = Vec::new();
    for threads in THREADS {
        let output = Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .arg(threads.to_string())
            .args(&files)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "child for {threads} threads failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() == 6 {
                rows.push((threads, f.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
            }
        }
    }
    let torch = torch_times(&files);
    let label: HashMap<&str, &str> = nets
        .iter()
        .zip(&files)
        .map(|((l, _), f)| (f.as_str(), l.as_str()))
        .collect();

    println!(
        "ResNet-18 forward, batch 1, eval mode, median of {} interleaved rounds",
        iterations()
    );
    println!();
    println!("| weights | input | threads | GFLOP | infer ms | candle+ops ms | candle ms | torch ms | candle+ops / infer | candle / infer | torch / infer |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (threads, f) in rows {
        let ms = |i: usize| f[i].parse::<f64>().unwrap();
        let (infer, with_ops, stock) = (ms(3), ms(4), ms(5));
        let torch_ms = torch
            .as_ref()
            .and_then(|t| t.get(&(f[0].clone(), threads)).copied());
        let (torch_cell, torch_ratio) = match torch_ms {
            Some(t) => (format!("{t:.2}"), format!("{:.2}", t / infer)),
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            "| {} | {} | {threads} | {} | {infer:.2} | {with_ops:.2} | {stock:.2} | {torch_cell} | {:.2} | {:.2} | {torch_ratio} |",
            label[f[0].as_str()],
            f[1],
            f[2],
            with_ops / infer,
            stock / infer,
        );
    }
}
