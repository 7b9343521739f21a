//! The weight gradients' per-thread-group partial sums, and their buffers kept between calls.
//!
//! Each thread group of a weight gradient sums its images into a partial of the whole gradient
//! ([`Plan::partials`](super::chunks::Plan::partials)); the partials are added at the end.
//! Allocated afresh every call, each partial was zero-filled only for the group's first GEMM to
//! overwrite it, and then summed on one thread: at 64 px / batch 32 the zero-filling was 1.3 %
//! of a training step's samples (`perf`; layer4's gradients are 9 MiB a partial) and the sum
//! another 0.5 %. The buffers now come from a pool and keep their stale contents (the drivers'
//! bodies overwrite every float on a group's first chunk), and the sum runs on every thread,
//! fused with the layout change that follows it where there is one.

use std::sync::Mutex;

use rayon::prelude::*;

/// Buffers back from finished weight gradients. A step runs one convolution at a time, so this
/// holds about one buffer per thread group, each as long as the longest gradient seen.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// More than this many idle buffers are freed (concurrent gradients would otherwise leave a
/// pool the size of their peak).
const MAX_POOLED: usize = 16;

fn pool() -> std::sync::MutexGuard<'static, Vec<Vec<f32>>> {
    // A panic while holding the lock leaves a list of buffers, which is still valid.
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Floats per rayon task of [`Partials::sum`].
const SUM_CHUNK: usize = 1 << 14;

/// One partial sum of `len` floats per thread group; the buffers go back to the pool on drop.
pub(super) struct Partials {
    buffers: Vec<Vec<f32>>,
    len: usize,
}

impl Partials {
    /// `groups` buffers of at least `len` floats, from the pool where it has them. The contents
    /// are stale: the caller overwrites every float before it reads one.
    pub(super) fn take(groups: usize, len: usize) -> Self {
        let mut buffers: Vec<Vec<f32>> = {
            let mut pool = pool();
            let keep = pool.len().saturating_sub(groups);
            pool.drain(keep..).collect()
        };
        buffers.resize_with(groups, Vec::new);
        for buffer in &mut buffers {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        }
        Self { buffers, len }
    }

    /// Each group's `len` floats, for the groups to fill in parallel.
    pub(super) fn groups_mut(&mut self) -> impl IndexedParallelIterator<Item = &mut [f32]> {
        let len = self.len;
        self.buffers.par_iter_mut().map(move |b| &mut b[..len])
    }

    /// Each group's partial sum.
    pub(super) fn parts(&self) -> Vec<&[f32]> {
        self.buffers.iter().map(|b| &b[..self.len]).collect()
    }

    /// The sum of the partials, `len` zeros for no groups (an empty batch).
    pub(super) fn sum(mut self) -> Vec<f32> {
        let len = self.len;
        match self.buffers.len() {
            0 => vec![0f32; len],
            // The only partial is the sum: hand it over instead of copying it, unless it is a
            // recycled buffer much longer than this gradient (a small gradient would then hold
            // a large allocation for as long as candle keeps it).
            1 if self.buffers[0].capacity() <= 2 * len => {
                let mut total = std::mem::take(&mut self.buffers[0]);
                total.truncate(len);
                total
            }
            1 => self.buffers[0][..len].to_vec(),
            _ => {
                let parts = self.parts();
                let mut total = Vec::with_capacity(len);
                // The first two in one pass, straight into the uninitialised floats: zeroing
                // them first (`par_zeroed`) and adding each part in a pass of its own made
                // layer4's weight gradient ~5-25 % slower (5ccf6ee).
                total.spare_capacity_mut()[..len]
                    .par_chunks_mut(SUM_CHUNK)
                    .enumerate()
                    .for_each(|(i, dst)| {
                        let at = i * SUM_CHUNK;
                        let pairs = parts[0][at..].iter().zip(&parts[1][at..]);
                        for (d, (a, b)) in dst.iter_mut().zip(pairs) {
                            d.write(a + b);
                        }
                    });
                // SAFETY: the chunks above cover the first `len` floats and each wrote all of
                // its floats (both parts hold `len`, so the zips end with the chunk).
                unsafe { total.set_len(len) };
                for part in parts.iter().skip(2) {
                    total
                        .par_chunks_mut(SUM_CHUNK)
                        .zip(part.par_chunks(SUM_CHUNK))
                        .for_each(|(t, p)| t.iter_mut().zip(p).for_each(|(t, p)| *t += *p));
                }
                total
            }
        }
    }
}

impl Drop for Partials {
    fn drop(&mut self) {
        let mut pool = pool();
        for buffer in self.buffers.drain(..) {
            if !buffer.is_empty() && pool.len() < MAX_POOLED {
                pool.push(buffer);
            }
        }
    }
}

/// `sum(parts)[i]` for a slice of `count` floats from `at`, written into `dst`.
pub(super) fn sum_range_into(parts: &[&[f32]], at: usize, dst: &mut [f32]) {
    let count = dst.len();
    match parts.split_first() {
        None => dst.fill(0.0),
        Some((first, rest)) => {
            dst.copy_from_slice(&first[at..at + count]);
            for part in rest {
                dst.iter_mut()
                    .zip(&part[at..at + count])
                    .for_each(|(d, p)| *d += *p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(groups: usize, len: usize, value: impl Fn(usize, usize) -> f32 + Sync) -> Partials {
        let mut partials = Partials::take(groups, len);
        partials.groups_mut().enumerate().for_each(|(g, part)| {
            for (i, v) in part.iter_mut().enumerate() {
                *v = value(g, i);
            }
        });
        partials
    }

    #[test]
    fn sums_any_number_of_groups_from_recycled_buffers() {
        // Longer buffers first, so that the shorter requests get recycled, stale ones; sums
        // over several of the sum's chunks, and a partial one.
        let cases = [
            (3, 3 * SUM_CHUNK),
            (2, 40_001),
            (2, 700),
            (1, 50),
            (4, 999),
            (0, 5),
            (2, 0),
        ];
        for (groups, len) in cases {
            let value = |g: usize, i: usize| (g * 7 + i % 13) as f32;
            let partials = filled(groups, len, value);
            assert_eq!(partials.parts().len(), groups);
            let total = partials.sum();
            assert_eq!(total.len(), len, "{groups} groups of {len}");
            for (i, t) in total.iter().enumerate() {
                let want: f32 = (0..groups).map(|g| value(g, i)).sum();
                assert_eq!(*t, want, "{groups} groups of {len}, float {i}");
            }
        }
    }

    #[test]
    fn sum_range_into_adds_every_part() {
        let (a, b, c) = ([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [0.5; 4]);
        let mut dst = [9.0; 2];
        sum_range_into(&[&a, &b, &c], 1, &mut dst);
        assert_eq!(dst, [22.5, 33.5]);
        sum_range_into(&[], 0, &mut dst);
        assert_eq!(dst, [0.0, 0.0]);
    }
}
