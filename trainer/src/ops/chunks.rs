//! What the CPU convolution kernels (im2col in `conv.rs`, `winograd.rs`, `taps.rs`) share: how
//! a batch is split into one group of images per rayon thread and each group into chunks, the
//! per-thread scratch buffers, the drivers that run a kernel's chunk body over the groups in
//! parallel, and the copies between the (N, C, plane) tensor layout and the GEMMs' column
//! layout.
//!
//! Threads: each group runs single-threaded GEMMs on its own scratch (no synchronisation inside
//! a layer); a batch smaller than the thread count instead hands all threads to the GEMMs.
//! Images whose output plane is small (the deep layers) are gathered into chunks so that each
//! GEMM still has a wide right-hand side.

use super::im2col::MatRef;
use super::partials::{sum_range_into, Partials};
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// No chunk's column matrix grows past this many floats (16 MiB).
const MAX_CHUNK_FLOATS: usize = 4 << 20;

/// Column, product and gathered-gradient buffers of one thread, kept between calls: every
/// layer of every step used to allocate them afresh, zero them (`resize`) and fault their pages
/// in, only for im2col / the GEMM / the gather to overwrite every float anyway.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) col: Vec<f32>,
    pub(super) out: Vec<f32>,
    pub(super) gathered: Vec<f32>,
    /// One zero-bordered input plane for im2col / col2im (and Winograd's input transform).
    pub(super) padded: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

impl Scratch {
    /// This thread's buffers, leaving empty ones behind: a task that rayon runs on this thread
    /// while this one waits inside a parallel GEMM simply starts from empty buffers.
    pub(super) fn take() -> Scratch {
        SCRATCH.with(|cell| cell.take())
    }

    pub(super) fn give_back(self) {
        SCRATCH.with(|cell| cell.set(self));
    }

    /// Runs `body` with this thread's buffers ([`Scratch::take`], then give them back).
    pub(super) fn with<R>(body: impl FnOnce(&mut Scratch) -> R) -> R {
        let mut scratch = Scratch::take();
        let result = body(&mut scratch);
        scratch.give_back();
        result
    }
}

/// The first `len` floats of `buffer`, grown (never shrunk) to hold them. The contents are
/// stale: callers overwrite every float they read.
pub(super) fn at_least(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// A vector of `len` zeros, zero-filled `chunk` floats at a time inside the parallel tasks that
/// then run `body(index, chunk_floats)` on them (the last chunk may be shorter).
///
/// The kernels' outputs used to be `vec![0.0; len]`: calloc zero-fills on the calling thread
/// alone, before the parallel work starts. At 64 px / batch 32 those fills were ~6 % of a
/// training step's main-thread samples while the other thread slept (`perf`, session 16). Here
/// each task zeroes its own chunk just before filling it: on every thread, and while the chunk
/// is in cache. Kernels see the same zeros as before.
pub(super) fn par_zeroed(
    len: usize,
    chunk: usize,
    body: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(index, part)| {
            for v in part.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every element of `part` was initialised just above, and
            // `MaybeUninit<f32>` has the layout of `f32`.
            let part = unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) };
            body(index, part);
        });
    // SAFETY: the chunks cover the first `len` elements and each task initialised its own
    // before `body` ran (a panicking `body` propagates out of `for_each` before this line).
    unsafe { out.set_len(len) };
    out
}

/// How the batch is spread over threads, and each thread's images over chunks (one GEMM, or
/// Winograd's 16, per chunk).
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// Images per thread group (the last group may hold fewer).
    images_per_group: usize,
    /// Images per chunk inside a group.
    chunk: usize,
    /// Parallelism handed to each GEMM.
    pub(super) gemm_parallelism: Parallelism,
    batch: usize,
}

/// Images per thread group and the parallelism each GEMM gets: one group per rayon thread, or,
/// for a batch smaller than the thread count, one group whose GEMMs use every thread.
pub(super) fn split_batch(batch: usize) -> (usize, Parallelism) {
    let threads = rayon::current_num_threads().max(1);
    if batch >= threads {
        (batch.div_ceil(threads), Parallelism::None)
    } else if threads > 1 {
        (batch.max(1), Parallelism::Rayon(threads))
    } else {
        (batch.max(1), Parallelism::None)
    }
}

impl Plan {
    /// Chunks of at least `target_columns` GEMM columns (`columns_per_image` per image) where
    /// the thread group has the images, without letting a chunk's `floats_per_column` x
    /// columns buffer grow past [`MAX_CHUNK_FLOATS`].
    pub(super) fn for_columns(
        batch: usize,
        columns_per_image: usize,
        floats_per_column: usize,
        target_columns: usize,
    ) -> Self {
        let (images_per_group, gemm_parallelism) = split_batch(batch);
        let columns = columns_per_image.max(1);
        let by_width = target_columns.div_ceil(columns);
        let by_memory = (MAX_CHUNK_FLOATS / (floats_per_column * columns).max(1)).max(1);
        Self {
            images_per_group,
            chunk: by_width.min(by_memory).clamp(1, images_per_group),
            gemm_parallelism,
            batch,
        }
    }

    /// `(first, count)` of each chunk of a group of `images` images, relative to the group.
    fn chunks(&self, images: usize) -> impl Iterator<Item = (usize, usize)> {
        let chunk = self.chunk;
        (0..images)
            .step_by(chunk)
            .map(move |first| (first, chunk.min(images - first)))
    }

    /// The chunks of thread group `group` of a group of `images` images.
    fn group_chunks(&self, group: usize, images: usize) -> impl Iterator<Item = Chunk> {
        let group_first = group * self.images_per_group;
        self.chunks(images).map(move |(in_group, count)| Chunk {
            first: group_first + in_group,
            in_group,
            count,
        })
    }

    /// The forward passes' and input gradients' driver: a zeroed output of `per_image` floats
    /// per image of the batch, split into one part per thread group, and `body(scratch, chunk,
    /// group_out)` run for each chunk of each group, the groups in parallel, each on its
    /// thread's [`Scratch`]. `group_out` is the group's whole part; the chunk's images start at
    /// `chunk.in_group` in it.
    pub(super) fn output(
        &self,
        per_image: usize,
        body: impl Fn(&mut Scratch, Chunk, &mut [f32]) + Sync,
    ) -> Vec<f32> {
        let group_len = self.images_per_group * per_image;
        // With `per_image == 0` the output is empty and no task runs.
        par_zeroed(self.batch * per_image, group_len, |group, group_out| {
            Scratch::with(|scratch| {
                for chunk in self.group_chunks(group, group_out.len() / per_image) {
                    body(scratch, chunk, group_out);
                }
            })
        })
    }

    /// The weight gradients' driver: each thread group runs `body(scratch, chunk, partial)` for
    /// its chunks into its own `len` floats, the groups in parallel, and the groups' partial
    /// sums come back for [`Partials::sum`] or a caller that sums them on its way to another
    /// layout. No synchronisation inside a layer. The floats are stale (recycled buffers):
    /// `body` must overwrite every one of them on its group's first chunk (`chunk.in_group ==
    /// 0`) before it accumulates.
    pub(super) fn partials(
        &self,
        len: usize,
        body: impl Fn(&mut Scratch, Chunk, &mut [f32]) + Sync,
    ) -> Partials {
        let groups = self.batch.div_ceil(self.images_per_group);
        let mut partials = Partials::take(groups, len);
        partials
            .groups_mut()
            .enumerate()
            .for_each(|(group, partial)| {
                let images = self
                    .images_per_group
                    .min(self.batch - group * self.images_per_group);
                Scratch::with(|scratch| {
                    for chunk in self.group_chunks(group, images) {
                        body(scratch, chunk, partial);
                    }
                });
            });
        partials
    }
}

/// Consecutive images of one thread group that one GEMM (or one set of GEMMs) covers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunk {
    /// Its first image's index in the batch.
    pub(super) first: usize,
    /// Its first image's index in its thread group.
    pub(super) in_group: usize,
    pub(super) count: usize,
}

/// Copies images `[first, first + count)` of a (N, rows, plane) tensor into a (rows, count*plane)
/// matrix, the column layout the GEMMs use.
fn gather_chunk(
    src: &[f32],
    rows: usize,
    plane: usize,
    first: usize,
    count: usize,
    dst: &mut [f32],
) {
    let width = count * plane;
    for b in 0..count {
        let image = &src[(first + b) * rows * plane..(first + b + 1) * rows * plane];
        for r in 0..rows {
            dst[r * width + b * plane..r * width + (b + 1) * plane]
                .copy_from_slice(&image[r * plane..(r + 1) * plane]);
        }
    }
}

/// The chunk's images of a (N, rows, plane) tensor in the column layout: the tensor's own
/// floats for a single image, else gathered into `buffer`.
pub(super) fn chunk_matrix<'a>(
    src: &'a [f32],
    rows: usize,
    plane: usize,
    chunk: Chunk,
    buffer: &'a mut Vec<f32>,
) -> &'a [f32] {
    let image = rows * plane;
    if chunk.count == 1 {
        return &src[chunk.first * image..(chunk.first + 1) * image];
    }
    let dst = at_least(buffer, chunk.count * image);
    gather_chunk(src, rows, plane, chunk.first, chunk.count, dst);
    dst
}

/// The inverse of [`gather_chunk`] for the images of one group: `dst` starts at image `first`.
pub(super) fn scatter_chunk(
    src: &[f32],
    rows: usize,
    plane: usize,
    first: usize,
    count: usize,
    dst: &mut [f32],
) {
    let width = count * plane;
    for b in 0..count {
        let image = &mut dst[(first + b) * rows * plane..(first + b + 1) * rows * plane];
        for r in 0..rows {
            image[r * plane..(r + 1) * plane]
                .copy_from_slice(&src[r * width + b * plane..r * width + (b + 1) * plane]);
        }
    }
}

/// Row-major dense matrix view.
pub(super) fn dense(data: &[f32], cols: usize) -> MatRef<'_> {
    MatRef {
        data,
        row_stride: cols,
        col_stride: 1,
    }
}

/// Transposed view of a dense row-major matrix with `cols` columns.
pub(super) fn transposed(data: &[f32], cols: usize) -> MatRef<'_> {
    MatRef {
        data,
        row_stride: 1,
        col_stride: cols,
    }
}

/// Whether a weight gradient's GEMM `dW (c_out x inner) = dY X^T` (`inner` = C_in x k x k for
/// im2col) runs faster as `dW^T = X dY^T`, then transposed ([`transpose_sum`]). gemm's speed
/// depends on which operand it packs along its micro-kernel's rows: measured with `--bench
/// conv_algorithms` (ResNet-18 at 48 px / 64 and 64 px / 32, 2 threads, AVX-512), the
/// transposed product took the stem's weight gradient from 11-12 to 6.9 ms, layer1's 3x3
/// (im2col) from 9.6 to 5.4 and layer3's from 5.3-6.2 to 4.5-4.8, but layer4's (512 output
/// channels) from 6.2-11.3 to 13.1-16.7; the 1x1 shortcuts (inner < c_out) moved both ways
/// within noise.
pub(super) fn weight_grad_transposed(c_out: usize, inner: usize) -> bool {
    c_out <= 256 && inner >= 2 * c_out
}

/// The sum of `parts` (each rows x cols, row-major) transposed to (cols x rows), in blocks of
/// 32 source columns so that the scattered writes stay in cache: the weight gradients' partial
/// sums added on their way to the (C_out, inner) layout, in one pass.
pub(super) fn transpose_sum(parts: &[&[f32]], rows: usize, cols: usize) -> Vec<f32> {
    const BLOCK: usize = 32;
    if rows == 0 || cols == 0 {
        return vec![0f32; rows * cols];
    }
    par_zeroed(rows * cols, BLOCK * rows, |block, dst_block| {
        let (first_col, width) = (block * BLOCK, dst_block.len() / rows);
        let mut row = [0f32; BLOCK];
        for r in 0..rows {
            sum_range_into(parts, r * cols + first_col, &mut row[..width]);
            for (j, &v) in row[..width].iter().enumerate() {
                dst_block[j * rows + r] = v;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_zeroed_hands_every_float_zeroed_to_one_chunk() {
        for (len, chunk) in [(0, 4), (1, 4), (10, 3), (12, 3), (100_000, 4096), (5, 0)] {
            let out = par_zeroed(len, chunk, |index, part| {
                assert!(part.iter().all(|v| *v == 0.0), "chunk {index} not zeroed");
                assert!(part.len() <= chunk.max(1));
                for (i, v) in part.iter_mut().enumerate() {
                    if i % 2 == 0 {
                        *v = (index * chunk.max(1) + i) as f32;
                    }
                }
            });
            assert_eq!(out.len(), len);
            for (i, v) in out.iter().enumerate() {
                let want = if (i % chunk.max(1)) % 2 == 0 {
                    i as f32
                } else {
                    0.0
                };
                assert_eq!(*v, want, "len {len} chunk {chunk} float {i}");
            }
        }
    }

    #[test]
    fn transpose_sum_matches_the_definition_across_partial_blocks() {
        for (rows, cols) in [(37, 70), (1, 33), (64, 147), (5, 1), (0, 4), (3, 0)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let other: Vec<f32> = src.iter().map(|v| 0.5 - v * v).collect();
            for parts in [vec![&src[..]], vec![&src[..], &other[..]]] {
                let dst = transpose_sum(&parts, rows, cols);
                assert_eq!(dst.len(), rows * cols);
                for r in 0..rows {
                    for c in 0..cols {
                        let want: f32 = parts.iter().map(|p| p[r * cols + c]).sum();
                        assert_eq!(dst[c * rows + r], want, "{rows}x{cols} at ({r}, {c})");
                    }
                }
            }
        }
    }
}
