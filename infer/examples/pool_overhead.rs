//! Cost of one near-empty job on the worker pool (2 threads), after the caller has been busy
//! elsewhere for 0, 20 and 200 us: the per-layer synchronisation overhead every convolution
//! pays when a session runs on more than one thread. Prints a table.
//!
//!     cargo run --release -p face2exp-infer --example pool_overhead [-- JOBS]
//!
//! A gap longer than the pool's spin time (100 us) shows the cost of waking a parked worker.

use face2exp_infer::kernels::Parallel;
use face2exp_infer::WorkerPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);
    let pool = WorkerPool::new(2)?;
    let tasks_run = AtomicUsize::new(0);
    println!("| gap before each job | mean us per job | median us per job |");
    println!("|---|---|---|");
    for gap in [0u64, 20, 200].map(Duration::from_micros) {
        let mut times: Vec<f64> = (0..jobs)
            .map(|_| {
                let busy = Instant::now();
                while busy.elapsed() < gap {
                    std::hint::spin_loop();
                }
                let start = Instant::now();
                pool.run(2, &|_, _| {
                    tasks_run.fetch_add(1, Ordering::Relaxed);
                });
                start.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "| {} us | {mean:.1} | {:.1} |",
            gap.as_micros(),
            times[times.len() / 2]
        );
    }
    assert_eq!(tasks_run.load(Ordering::Relaxed), 2 * 3 * jobs);
    Ok(())
}
