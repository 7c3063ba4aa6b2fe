//! Federated evaluation of a binary classifier without per-patient predictions leaving a site.
//! Per site: accuracy, sensitivity, specificity, ROC AUC and Brier score computed at the site
//! and released as numbers (above the row minimum). Overall: each site releases counts of
//! positives and negatives per score bin and per-bin sums for calibration; the hub adds them
//! (securely) and computes the overall AUC (exact up to ties within a bin) and calibration.

use serde::{Deserialize, Serialize};

use crate::{Disclosure, FederatedError};

/// Metrics of one site (or of everything).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n: u64,
    pub accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub auc: f64,
    pub brier: f64,
}

/// Exact metrics from scores and 0/1 labels (the site step; never released per row).
pub fn metrics(
    scores: &[f64],
    labels: &[f64],
    threshold: f64,
    disclosure: &Disclosure,
) -> Result<Metrics, FederatedError> {
    disclosure.check_rows(scores.len() as u64)?;
    let (mut tp, mut tn, mut fp, mut fneg, mut brier) = (0u64, 0u64, 0u64, 0u64, 0.0);
    for (&s, &y) in scores.iter().zip(labels) {
        let pos = y > 0.5;
        match (s >= threshold, pos) {
            (true, true) => tp += 1,
            (false, false) => tn += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
        }
        brier += (s - y) * (s - y);
    }
    let n = scores.len() as u64;
    Ok(Metrics {
        n,
        accuracy: (tp + tn) as f64 / n as f64,
        sensitivity: tp as f64 / (tp + fneg) as f64,
        specificity: tn as f64 / (tn + fp) as f64,
        auc: auc_exact(scores, labels),
        brier: brier / n as f64,
    })
}

/// ROC AUC by the rank statistic (ties count half); NaN without both classes.
pub fn auc_exact(scores: &[f64], labels: &[f64]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos) = (0.0, 0u64);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] > 0.5 {
                rank_sum += avg_rank;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = scores.len() as u64 - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64
}

/// What a site releases for the overall evaluation: per score bin, positives, negatives and the
/// sum of scores (calibration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinnedScores {
    pub positives: Vec<u64>,
    pub negatives: Vec<u64>,
    pub score_sums: Vec<f64>,
}

impl BinnedScores {
    pub fn add(&mut self, o: &BinnedScores) {
        for (a, b) in self.positives.iter_mut().zip(&o.positives) {
            *a += b;
        }
        for (a, b) in self.negatives.iter_mut().zip(&o.negatives) {
            *a += b;
        }
        for (a, b) in self.score_sums.iter_mut().zip(&o.score_sums) {
            *a += b;
        }
    }

    pub fn to_vec(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.positives.iter().map(|&c| c as f64).collect();
        v.extend(self.negatives.iter().map(|&c| c as f64));
        v.extend_from_slice(&self.score_sums);
        v
    }

    pub fn from_vec(bins: usize, v: &[f64]) -> Result<BinnedScores, FederatedError> {
        if v.len() != 3 * bins {
            return Err(FederatedError::Shape(format!(
                "{} values for {bins} bins",
                v.len()
            )));
        }
        let c = |s: &[f64]| s.iter().map(|x| x.round().max(0.0) as u64).collect();
        Ok(BinnedScores {
            positives: c(&v[..bins]),
            negatives: c(&v[bins..2 * bins]),
            score_sums: v[2 * bins..].to_vec(),
        })
    }

    /// AUC from the binned counts: pairs in different bins are ordered, pairs in one bin count
    /// half (exact when no two scores of different classes share a bin).
    pub fn auc(&self) -> f64 {
        let (mut below_neg, mut num) = (0.0, 0.0);
        for (p, n) in self.positives.iter().zip(&self.negatives) {
            num += *p as f64 * (below_neg + *n as f64 / 2.0);
            below_neg += *n as f64;
        }
        let pos: u64 = self.positives.iter().sum();
        let neg: u64 = self.negatives.iter().sum();
        num / (pos * neg) as f64
    }

    /// Per bin with rows: (mean predicted score, observed positive rate, rows).
    pub fn calibration(&self) -> Vec<(f64, f64, u64)> {
        (0..self.positives.len())
            .filter_map(|b| {
                let n = self.positives[b] + self.negatives[b];
                (n > 0).then(|| {
                    (
                        self.score_sums[b] / n as f64,
                        self.positives[b] as f64 / n as f64,
                        n,
                    )
                })
            })
            .collect()
    }
}

/// The site step for the overall evaluation.
pub fn site_binned(
    scores: &[f64],
    labels: &[f64],
    bins: usize,
    disclosure: &Disclosure,
) -> Result<BinnedScores, FederatedError> {
    disclosure.check_rows(scores.len() as u64)?;
    let mut b = BinnedScores {
        positives: vec![0; bins],
        negatives: vec![0; bins],
        score_sums: vec![0.0; bins],
    };
    for (&s, &y) in scores.iter().zip(labels) {
        let k = ((s.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        if y > 0.5 {
            b.positives[k] += 1;
        } else {
            b.negatives[k] += 1;
        }
        b.score_sums[k] += s;
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_from_ranks_and_from_fine_bins_agree() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2];
        let y = [0.0, 0.0, 1.0, 1.0, 1.0, 0.0];
        // Positives' scores 0.35, 0.8, 0.7 vs negatives 0.1, 0.4, 0.2: 8 of 9 pairs ordered.
        assert!((auc_exact(&s, &y) - 8.0 / 9.0).abs() < 1e-12);
        let open = Disclosure {
            min_rows: 1,
            min_cell: 1,
        };
        let b = site_binned(&s, &y, 1000, &open).unwrap();
        assert!((b.auc() - 8.0 / 9.0).abs() < 1e-12);
        let m = metrics(&s, &y, 0.5, &open).unwrap();
        assert_eq!((m.n, m.accuracy), (6, 5.0 / 6.0));
        assert!((m.sensitivity - 2.0 / 3.0).abs() < 1e-12 && m.specificity == 1.0);
    }
}
