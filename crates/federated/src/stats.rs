//! Federated descriptive statistics. A site releases sums (count, sum, sum of squares per
//! column), histogram counts on bin edges everybody agreed, or cross-tab counts; the hub adds
//! them. Means and variances from summed moments equal the pooled ones; quantiles come from the
//! summed histogram (exact to the bin). Counts below the site's minimum cell count are refused
//! at the site.

use serde::{Deserialize, Serialize};

use crate::{Disclosure, FederatedError};

/// Count, sum and sum of squares of one column's present values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Moments {
    pub fn add(&mut self, o: &Moments) {
        self.n += o.n;
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.n as f64
    }

    /// Sample variance (n - 1).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            return f64::NAN;
        }
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }
}

/// The site step for moments of `values` (missing values, NaN, skipped).
pub fn site_moments(values: &[f64], disclosure: &Disclosure) -> Result<Moments, FederatedError> {
    let mut m = Moments::default();
    for &v in values.iter().filter(|v| !v.is_nan()) {
        m.n += 1;
        m.sum += v;
        m.sum_sq += v * v;
    }
    disclosure.check_rows(m.n)?;
    Ok(m)
}

/// The site step for a histogram on `edges` (ascending; values outside go to the end bins).
pub fn site_histogram(
    values: &[f64],
    edges: &[f64],
    disclosure: &Disclosure,
) -> Result<Vec<u64>, FederatedError> {
    let counts = histogram_counts(values, edges)?;
    disclosure.check_rows(counts.iter().sum())?;
    disclosure.check_cells(counts.iter().copied())?;
    Ok(counts)
}

/// Which interior edges of a histogram (edge `i + 1`, between bins `i` and `i + 1`) to remove
/// so that every merged bin holds none or at least `min_cell` rows: neighbouring bins are
/// joined from the left until they reach the minimum, and a small remainder at the right joins
/// the group before it. All false when the histogram already passes.
pub fn merge_votes(counts: &[u64], min_cell: u64) -> Vec<bool> {
    let bins = counts.len();
    let mut remove = vec![false; bins.saturating_sub(1)];
    let mut acc = 0;
    for (b, &c) in counts.iter().enumerate() {
        acc += c;
        if b + 1 == bins {
            break;
        }
        if acc == 0 || acc >= min_cell {
            acc = 0;
        } else {
            remove[b] = true;
        }
    }
    // The last group (`acc`): while it is small, join it with the group to its left.
    let mut last = acc;
    let mut k = remove.len();
    while last > 0 && last < min_cell {
        // Skip the edges inside the last group; `k - 1` is then the edge that bounds it.
        while k > 0 && remove[k - 1] {
            k -= 1;
        }
        if k == 0 {
            break;
        }
        k -= 1;
        remove[k] = true;
        last += counts[k];
        while k > 0 && remove[k - 1] {
            k -= 1;
            last += counts[k];
        }
    }
    remove
}

/// Edges with the voted interior edges removed (the outer two always stay).
pub fn merged_edges(edges: &[f64], remove: &[bool]) -> Vec<f64> {
    let mut out = vec![edges[0]];
    for (i, e) in edges.iter().enumerate().skip(1) {
        if i + 1 == edges.len() || !remove.get(i - 1).copied().unwrap_or(false) {
            out.push(*e);
        }
    }
    out
}

/// Counts of `values` (NaN skipped) in the bins of `edges`, without disclosure checks: the
/// caller decides what may leave.
pub fn histogram_counts(values: &[f64], edges: &[f64]) -> Result<Vec<u64>, FederatedError> {
    if edges.len() < 2 || edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err(FederatedError::Shape("histogram edges must ascend".into()));
    }
    let bins = edges.len() - 1;
    let mut counts = vec![0u64; bins];
    for &v in values.iter().filter(|v| !v.is_nan()) {
        let b = edges
            .partition_point(|e| *e <= v)
            .saturating_sub(1)
            .min(bins - 1);
        counts[b] += 1;
    }
    Ok(counts)
}

/// The `q`-quantile (0..=1) from summed histogram counts, interpolating linearly in the bin.
pub fn quantile(edges: &[f64], counts: &[u64], q: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let target = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0.0;
    for (b, &c) in counts.iter().enumerate() {
        let next = seen + c as f64;
        if next >= target && c > 0 {
            let f = (target - seen) / c as f64;
            return edges[b] + f * (edges[b + 1] - edges[b]);
        }
        seen = next;
    }
    edges[edges.len() - 1]
}

/// The site step for a cross-tab of two coded columns: counts per (a, b) pair, row-major over
/// the agreed level lists; rows with a missing or unlisted value are skipped.
pub fn site_crosstab(
    a: &[f64],
    b: &[f64],
    a_levels: &[f64],
    b_levels: &[f64],
    disclosure: &Disclosure,
) -> Result<Vec<u64>, FederatedError> {
    let mut counts = vec![0u64; a_levels.len() * b_levels.len()];
    let mut n = 0;
    for (x, y) in a.iter().zip(b) {
        let (Some(i), Some(j)) = (
            a_levels.iter().position(|l| l == x),
            b_levels.iter().position(|l| l == y),
        ) else {
            continue;
        };
        counts[i * b_levels.len() + j] += 1;
        n += 1;
    }
    disclosure.check_rows(n)?;
    disclosure.check_cells(counts.iter().copied())?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Disclosure = Disclosure {
        min_rows: 1,
        min_cell: 1,
    };

    #[test]
    fn summed_moments_equal_pooled_ones_and_small_cells_are_refused() {
        let a = [1.0, 2.0, 3.0, f64::NAN];
        let b = [10.0, 20.0];
        let mut m = site_moments(&a, &OPEN).unwrap();
        m.add(&site_moments(&b, &OPEN).unwrap());
        let pooled = [1.0, 2.0, 3.0, 10.0, 20.0];
        let mean = pooled.iter().sum::<f64>() / 5.0;
        let var = pooled.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
        assert!((m.mean() - mean).abs() < 1e-12 && (m.variance() - var).abs() < 1e-9);
        let strict = Disclosure {
            min_rows: 3,
            min_cell: 2,
        };
        assert!(site_moments(&b, &strict).is_err());
        assert_eq!(
            site_histogram(&a, &[0.0, 2.0, 4.0], &strict),
            Err(FederatedError::SmallCell { count: 1, min: 2 })
        );
        let h = site_histogram(&[1.0, 1.5, 2.5, 3.0], &[0.0, 2.0, 4.0], &strict).unwrap();
        assert_eq!(h, vec![2, 2]);
        assert!((quantile(&[0.0, 2.0, 4.0], &h, 0.5) - 2.0).abs() < 1e-12);
        let t = site_crosstab(
            &[1.0, 1.0, 2.0],
            &[0.0, 1.0, 1.0],
            &[1.0, 2.0],
            &[0.0, 1.0],
            &OPEN,
        )
        .unwrap();
        assert_eq!(t, vec![1, 1, 0, 1]);
    }

    /// Counts per bin after merging by `votes` at `min`.
    fn merged(counts: &[u64], min: u64) -> Vec<u64> {
        let votes = merge_votes(counts, min);
        let mut out = vec![counts[0]];
        for (i, &c) in counts.iter().enumerate().skip(1) {
            if votes[i - 1] {
                *out.last_mut().unwrap() += c;
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn small_bins_merge_with_their_neighbours_until_every_bin_bears_the_minimum() {
        assert_eq!(merged(&[5, 6, 7], 5), vec![5, 6, 7], "nothing to merge");
        assert!(
            !merge_votes(&[5, 0, 7], 5).iter().any(|&v| v),
            "empty bins stay"
        );
        assert_eq!(merged(&[1, 2, 3, 9, 0, 0, 1], 5), vec![6, 10]);
        assert_eq!(merged(&[2, 20, 0, 4], 5), vec![26]);
        // Tails of mean +/- 4 sd, as the hub's default edges give.
        let c = [1, 0, 2, 8, 30, 41, 25, 9, 3, 1];
        let m = merged(&c, 5);
        assert_eq!(m.iter().sum::<u64>(), c.iter().sum::<u64>());
        assert!(m.iter().all(|&k| k == 0 || k >= 5), "{m:?}");
        assert_eq!(merged(&[3], 5), vec![3], "one bin cannot merge");
        let e = merged_edges(&[0.0, 1.0, 2.0, 3.0, 4.0], &[true, false, true]);
        assert_eq!(e, vec![0.0, 2.0, 4.0]);
    }
}
