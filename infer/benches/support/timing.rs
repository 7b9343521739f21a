//! Shared by the latency benchmarks (infer_latency here, infer_vs_candle in tests/): the median
//! of timed runs after one untimed warm-up.

/// Median milliseconds of `iters` calls of `f`, after one warm-up call.
pub fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
