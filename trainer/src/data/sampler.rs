//! Which items go into batch `b`, as a pure function of (seed, b): a resumed run starting at
//! batch `b` sees exactly the batches the uninterrupted run would have seen, and several
//! workers can compute their batches independently.
//!
//! - [`EpochSampler`]: a fresh permutation of all items each epoch, permutation `e` seeded from
//!   (seed, e); the stream of positions `b * batch_size ..` runs across epoch boundaries, so
//!   every batch is full.
//! - [`ClassBalancedSampler`]: draws come in blocks of K (K = classes present), each block a
//!   seeded permutation of the K classes, so every draw is each class with probability 1/K and
//!   every batch is balanced to within one item per class. The j-th draw of class c takes item
//!   `j mod n_c` of class c's permutation for cycle `j / n_c`, seeded from (seed, c, cycle):
//!   within a class every item is used once before any is repeated.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Mixes words into one 64-bit seed (splitmix64 finaliser over a running hash), so that
/// nearby inputs such as (seed, b) and (seed, b + 1) give unrelated streams.
pub fn mix_seed(words: &[u64]) -> u64 {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for &word in words {
        state = splitmix64(state ^ splitmix64(word));
    }
    state
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A ChaCha8 generator seeded from several words (see [`mix_seed`]).
pub fn rng_for(words: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix_seed(words))
}

/// Stream tags keep the different uses of one seed apart.
const EPOCH_TAG: u64 = 0xE90C;
const CLASS_ORDER_TAG: u64 = 0xC1A5;
const CLASS_ITEMS_TAG: u64 = 0x17E5;

/// A seeded permutation of 0..len.
fn permutation(len: usize, words: &[u64]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..len as u32).collect();
    order.shuffle(&mut rng_for(words));
    order
}

/// Which sampler a loader uses.
#[derive(Clone, Debug)]
pub enum Sampler {
    Epoch(EpochSampler),
    ClassBalanced(ClassBalancedSampler),
}

impl Sampler {
    /// Dataset indices of batch `b`.
    pub fn batch(&mut self, b: u64) -> Vec<usize> {
        match self {
            Sampler::Epoch(s) => s.batch(b),
            Sampler::ClassBalanced(s) => s.batch(b),
        }
    }
}

/// Shuffles all items every epoch; see the module docs.
#[derive(Clone, Debug)]
pub struct EpochSampler {
    len: usize,
    batch_size: usize,
    seed: u64,
    /// The last epoch's permutation, since consecutive batches mostly share one.
    cache: Option<(u64, Vec<u32>)>,
}

impl EpochSampler {
    pub fn new(len: usize, batch_size: usize, seed: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(len > 0, "cannot sample from an empty dataset");
        anyhow::ensure!(batch_size > 0, "batch size must be at least 1");
        Ok(EpochSampler {
            len,
            batch_size,
            seed,
            cache: None,
        })
    }

    /// The epoch that draw number `position` (= b * batch_size + i) belongs to.
    pub fn epoch_of(&self, position: u64) -> u64 {
        position / self.len as u64
    }

    /// Dataset indices of batch `b`.
    pub fn batch(&mut self, b: u64) -> Vec<usize> {
        let start = b * self.batch_size as u64;
        (start..start + self.batch_size as u64)
            .map(|position| {
                let epoch = self.epoch_of(position);
                let offset = (position % self.len as u64) as usize;
                self.permutation(epoch)[offset] as usize
            })
            .collect()
    }

    fn permutation(&mut self, epoch: u64) -> &[u32] {
        if self.cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let order = permutation(self.len, &[self.seed, EPOCH_TAG, epoch]);
            self.cache = Some((epoch, order));
        }
        &self.cache.as_ref().expect("filled above").1
    }
}

/// Draws every class equally often; see the module docs.
#[derive(Clone, Debug)]
pub struct ClassBalancedSampler {
    /// Dataset indices of each class that has items, in canonical class order.
    members: Vec<Vec<usize>>,
    batch_size: usize,
    seed: u64,
    /// Per class: the last cycle's permutation.
    cache: Vec<Option<(u64, Vec<u32>)>>,
}

impl ClassBalancedSampler {
    /// `labels[i]` is item i's class index; unlabeled items (None) are never drawn.
    pub fn new(labels: &[Option<usize>], batch_size: usize, seed: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(batch_size > 0, "batch size must be at least 1");
        let classes = labels.iter().flatten().max().map_or(0, |&c| c + 1);
        let mut members = vec![Vec::new(); classes];
        for (index, label) in labels.iter().enumerate() {
            if let Some(class) = label {
                members[*class].push(index);
            }
        }
        members.retain(|m| !m.is_empty());
        anyhow::ensure!(
            !members.is_empty(),
            "a class-balanced sampler needs labeled items"
        );
        let cache = vec![None; members.len()];
        Ok(ClassBalancedSampler {
            members,
            batch_size,
            seed,
            cache,
        })
    }

    /// Number of classes drawn from (those with at least one item).
    pub fn num_classes(&self) -> usize {
        self.members.len()
    }

    /// Dataset index of draw number `position` (= b * batch_size + i).
    pub fn draw(&mut self, position: u64) -> usize {
        let k = self.members.len() as u64;
        let block = position / k;
        let order = permutation(self.members.len(), &[self.seed, CLASS_ORDER_TAG, block]);
        let slot = order[(position % k) as usize] as usize;
        // Draw `block` of class `slot` is that class's block-th draw.
        let count = self.members[slot].len() as u64;
        let (cycle, offset) = (block / count, (block % count) as usize);
        if self.cache[slot].as_ref().map(|(c, _)| *c) != Some(cycle) {
            let order = permutation(
                count as usize,
                &[self.seed, CLASS_ITEMS_TAG, slot as u64, cycle],
            );
            self.cache[slot] = Some((cycle, order));
        }
        let order = &self.cache[slot].as_ref().expect("filled above").1;
        self.members[slot][order[offset] as usize]
    }

    /// Dataset indices of batch `b`.
    pub fn batch(&mut self, b: u64) -> Vec<usize> {
        let start = b * self.batch_size as u64;
        (start..start + self.batch_size as u64)
            .map(|position| self.draw(position))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_sampler_visits_every_item_once_per_epoch() {
        let mut sampler = EpochSampler::new(10, 4, 7).unwrap();
        // Batches 0..5 cover positions 0..20: epochs 0 and 1 exactly.
        let drawn: Vec<usize> = (0..5).flat_map(|b| sampler.batch(b)).collect();
        for epoch in drawn.chunks(10) {
            let mut sorted = epoch.to_vec();
            sorted.sort();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(drawn[..10], drawn[10..], "each epoch has its own order");
    }

    #[test]
    fn batches_depend_only_on_seed_and_index() {
        let labels: Vec<Option<usize>> = (0..50)
            .map(|i| Some(i % 3 + (i % 7 == 0) as usize))
            .collect();
        let mut fresh = ClassBalancedSampler::new(&labels, 8, 3).unwrap();
        let replayed: Vec<Vec<usize>> = (0..40).map(|b| fresh.batch(b)).collect();
        let mut resumed = ClassBalancedSampler::new(&labels, 8, 3).unwrap();
        assert_eq!(resumed.batch(37), replayed[37]);
        assert_eq!(resumed.batch(5), replayed[5]);
        let mut other_seed = ClassBalancedSampler::new(&labels, 8, 4).unwrap();
        assert_ne!(other_seed.batch(37), replayed[37]);

        let mut epoch = EpochSampler::new(50, 8, 3).unwrap();
        let replayed: Vec<Vec<usize>> = (0..40).map(|b| epoch.batch(b)).collect();
        let mut resumed = EpochSampler::new(50, 8, 3).unwrap();
        assert_eq!(resumed.batch(33), replayed[33]);
        assert_eq!(resumed.batch(2), replayed[2]);
    }
}
