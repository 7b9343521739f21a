//! Shared by the latency benchmarks (infer_latency here, infer_vs_candle in tests/).

/// Median milliseconds of `iters` calls of `f`, after one warm-up call.
#[allow(dead_code)]
pub fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&mut times)
}

/// Median milliseconds of each of `engines`, timed round-robin: every round calls each engine
/// once, after `warmup` untimed rounds. On a shared (virtual) machine whose speed drifts by
/// tens of percent over seconds, engines timed one after the other see different machines;
/// interleaved, they see the same drift, so the ratios of these medians are stable even when
/// the absolute times are not.
#[allow(dead_code)]
pub fn interleaved_median_ms(
    iters: usize,
    warmup: usize,
    engines: &mut [&mut dyn FnMut()],
) -> Vec<f64> {
    for _ in 0..warmup {
        for run in engines.iter_mut() {
            run();
        }
    }
    let mut times = vec![Vec::with_capacity(iters); engines.len()];
    for _ in 0..iters.max(1) {
        for (run, times) in engines.iter_mut().zip(&mut times) {
            let t = std::time::Instant::now();
            run();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.iter_mut().map(|t| median(t)).collect()
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
