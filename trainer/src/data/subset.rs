//! Reproducible subsets: class-balanced or stratified fractions of a dataset, and lists that
//! pin the exact items chosen so another run (or another machine) reuses the same subset.
//!
//! Balanced rule: total = round(fraction * N). Every class gets the same quota q, the largest
//! for which sum_c min(n_c, q) <= total; classes with fewer than q items give all they have.
//! The remaining total - sum_c min(n_c, q) items go one each to the classes (in canonical
//! order) that still have items left. So on FER2013's train split (28,709 images, 436 of
//! them disgust) a 10% balanced subset (2,871) takes 410 of every class plus one more neutral,
//! and a 20% subset (5,742) takes all 436 disgust images and 884 or 885 of each other class.
//!
//! Stratified rule: class c gets floor(fraction * n_c), and the items still missing to reach
//! round(fraction * N) go to the classes with the largest fractional remainders (ties in
//! canonical order), so class proportions are kept as closely as whole numbers allow.
//!
//! Within a class the items taken are the first of a permutation seeded from (seed, class);
//! the subset lists them in the dataset's order. Unlabeled items form one group of their own.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use rand::seq::SliceRandom;

use super::sampler::rng_for;
use super::Dataset;
use crate::labels::Expression;

const SUBSET_TAG: u64 = 0x5AB5;

/// The items of each group (class index; unlabeled last), in dataset order.
fn groups(dataset: &Dataset) -> Vec<Vec<usize>> {
    let unlabeled = dataset.num_classes.max(
        dataset
            .items
            .iter()
            .filter_map(|i| i.label)
            .map(|l| l.index() + 1)
            .max()
            .unwrap_or(0),
    );
    let mut groups = vec![Vec::new(); unlabeled + 1];
    for (index, item) in dataset.items.iter().enumerate() {
        groups[item.label.map_or(unlabeled, Expression::index)].push(index);
    }
    groups
}

fn check_fraction(fraction: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        fraction > 0.0 && fraction <= 1.0,
        "subset fraction must be in (0, 1], got {fraction}"
    );
    Ok(())
}

/// Takes `quota[g]` items of each group, seeded, and returns them in dataset order.
fn take(groups: &[Vec<usize>], quota: &[usize], seed: u64) -> Vec<usize> {
    let mut chosen = Vec::new();
    for (g, members) in groups.iter().enumerate() {
        let mut order = members.clone();
        order.shuffle(&mut rng_for(&[seed, SUBSET_TAG, g as u64]));
        chosen.extend_from_slice(&order[..quota[g]]);
    }
    chosen.sort_unstable();
    chosen
}

/// Indices of a class-balanced subset (see the module docs for the rule).
pub fn balanced_indices(dataset: &Dataset, fraction: f64, seed: u64) -> anyhow::Result<Vec<usize>> {
    check_fraction(fraction)?;
    let groups = groups(dataset);
    let total = (fraction * dataset.len() as f64).round() as usize;
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    let filled = |q: usize| sizes.iter().map(|&n| n.min(q)).sum::<usize>();
    // Largest q with filled(q) <= total, by bisection over 0..=max size.
    let (mut low, mut high) = (0, sizes.iter().copied().max().unwrap_or(0));
    while low < high {
        let mid = (low + high).div_ceil(2);
        if filled(mid) <= total {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    let mut quota: Vec<usize> = sizes.iter().map(|&n| n.min(low)).collect();
    let mut left = total - filled(low);
    for (g, q) in quota.iter_mut().enumerate() {
        if left > 0 && sizes[g] > *q {
            *q += 1;
            left -= 1;
        }
    }
    Ok(take(&groups, &quota, seed))
}

/// Indices of a stratified subset that keeps class proportions (see the module docs).
pub fn stratified_indices(
    dataset: &Dataset,
    fraction: f64,
    seed: u64,
) -> anyhow::Result<Vec<usize>> {
    check_fraction(fraction)?;
    let groups = groups(dataset);
    let total = (fraction * dataset.len() as f64).round() as usize;
    let exact: Vec<f64> = groups.iter().map(|g| fraction * g.len() as f64).collect();
    let mut quota: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut by_remainder: Vec<usize> = (0..groups.len()).collect();
    // Stable sort: equal remainders stay in canonical order.
    by_remainder.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra)
    });
    let mut missing = total.saturating_sub(quota.iter().sum());
    for g in by_remainder {
        if missing > 0 && quota[g] < groups[g].len() {
            quota[g] += 1;
            missing -= 1;
        }
    }
    Ok(take(&groups, &quota, seed))
}

/// A class-balanced fraction of `dataset`, reproducible from `seed`.
pub fn balanced_fraction(dataset: &Dataset, fraction: f64, seed: u64) -> anyhow::Result<Dataset> {
    let indices = balanced_indices(dataset, fraction, seed)?;
    let name = format!("{} (balanced {fraction}, seed {seed})", dataset.name);
    Ok(dataset.select(name, &indices))
}

/// A stratified fraction of `dataset` (class proportions kept), reproducible from `seed`.
pub fn stratified_fraction(dataset: &Dataset, fraction: f64, seed: u64) -> anyhow::Result<Dataset> {
    let indices = stratified_indices(dataset, fraction, seed)?;
    let name = format!("{} (stratified {fraction}, seed {seed})", dataset.name);
    Ok(dataset.select(name, &indices))
}

/// Writes the items of `subset` as a list: a `#` comment line, then `key<TAB>label` per item
/// (key = [`ImageSource::key`](super::ImageSource::key), label = canonical name or `-`).
pub fn write_list(subset: &Dataset, path: &Path) -> anyhow::Result<()> {
    let mut text = format!(
        "# face2exp subset of {} items: {}\n",
        subset.len(),
        subset.name
    );
    for item in &subset.items {
        let label = item.label.map_or("-", Expression::name);
        text.push_str(&format!("{}\t{label}\n", item.source.key()));
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| anyhow::anyhow!("{}: cannot write subset list: {e}", path.display()))
}

/// Reads a list written by [`write_list`] and picks those items out of `parent`, in the list's
/// order. Every entry must exist in `parent` with the same label.
pub fn read_list(path: &Path, parent: &Dataset) -> anyhow::Result<Dataset> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read subset list: {e}", path.display()))?;
    let by_key: HashMap<String, usize> = parent
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.source.key(), i))
        .collect();
    let mut indices = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), line_no + 1);
        let (key, label) = line
            .rsplit_once('\t')
            .ok_or_else(|| anyhow::anyhow!("{}: expected KEY<TAB>LABEL, got {line:?}", at()))?;
        let &index = by_key
            .get(key)
            .ok_or_else(|| anyhow::anyhow!("{}: {key:?} is not in {}", at(), parent.name))?;
        let actual = parent.items[index].label.map_or("-", Expression::name);
        anyhow::ensure!(
            actual == label,
            "{}: {key:?} is labeled {actual} in {}, the list says {label}",
            at(),
            parent.name
        );
        indices.push(index);
    }
    let name = format!("{} (list {})", parent.name, path.display());
    Ok(parent.select(name, &indices))
}
