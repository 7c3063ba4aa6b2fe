//! Iterative federated training: FedAvg (McMahan et al. 2017) and FedProx (Li et al. 2020) for
//! logistic regression and a one-hidden-layer MLP. A site trains the global parameters on its
//! rows for some epochs of mini-batch SGD (batches drawn from a seed, the round and the site, so
//! a run is reproducible) and releases `n * params` and `n`; the hub divides the sums.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::linalg::dot;
use crate::table::Design;
use crate::{Disclosure, FederatedError};

/// Which model the parameters describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModelKind {
    /// `p` coefficients (intercept first).
    Logistic,
    /// `hidden` tanh units on the `p` inputs (intercept input included), one sigmoid output.
    Mlp { hidden: usize },
}

impl ModelKind {
    pub fn parameters(&self, p: usize) -> usize {
        match *self {
            ModelKind::Logistic => p,
            ModelKind::Mlp { hidden } => hidden * p + hidden + 1,
        }
    }

    /// Initial parameters: zeros for logistic regression; small uniform weights from `seed`
    /// for the MLP (zeros would keep every hidden unit identical).
    pub fn init(&self, p: usize, seed: u64) -> Vec<f64> {
        match *self {
            ModelKind::Logistic => vec![0.0; p],
            ModelKind::Mlp { hidden } => {
                use rand::Rng;
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let a = (6.0 / (p + hidden) as f64).sqrt();
                (0..self.parameters(p))
                    .map(|i| {
                        if i < hidden * p + hidden {
                            rng.random_range(-a..a)
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
        }
    }

    /// Probability of the positive class.
    pub fn predict(&self, params: &[f64], x: &[f64]) -> f64 {
        match *self {
            ModelKind::Logistic => sigmoid(dot(params, x)),
            ModelKind::Mlp { hidden } => {
                let p = x.len();
                let (w1, rest) = params.split_at(hidden * p);
                let (w2, b2) = rest.split_at(hidden);
                let mut z = b2[0];
                for h in 0..hidden {
                    z += w2[h] * dot(&w1[h * p..(h + 1) * p], x).tanh();
                }
                sigmoid(z)
            }
        }
    }

    /// Add the gradient of the log-loss at one row to `grad`.
    fn add_gradient(&self, params: &[f64], x: &[f64], y: f64, grad: &mut [f64]) {
        match *self {
            ModelKind::Logistic => {
                let e = sigmoid(dot(params, x)) - y;
                for (g, xi) in grad.iter_mut().zip(x) {
                    *g += e * xi;
                }
            }
            ModelKind::Mlp { hidden } => {
                let p = x.len();
                let (w1, rest) = params.split_at(hidden * p);
                let w2 = &rest[..hidden];
                let a: Vec<f64> = (0..hidden)
                    .map(|h| dot(&w1[h * p..(h + 1) * p], x).tanh())
                    .collect();
                let z = rest[hidden] + dot(w2, &a);
                let e = sigmoid(z) - y;
                let (g1, grest) = grad.split_at_mut(hidden * p);
                for h in 0..hidden {
                    grest[h] += e * a[h];
                    let back = e * w2[h] * (1.0 - a[h] * a[h]);
                    for i in 0..p {
                        g1[h * p + i] += back * x[i];
                    }
                }
                grest[hidden] += e;
            }
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// How a site trains in one round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LocalTraining {
    pub model: ModelKind,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// FedProx's proximal term weight (0: FedAvg).
    pub mu: f64,
    pub seed: u64,
}

/// The order of a site's rows in one epoch of one round: a permutation drawn from
/// (seed, round, site, epoch) alone, so any implementation can reproduce it.
pub fn epoch_order(n: usize, seed: u64, round: u64, site: u64, epoch: u64) -> Vec<usize> {
    let mut key = [0u8; 32];
    for (i, v) in [seed, round, site, epoch].iter().enumerate() {
        key[i * 8..(i + 1) * 8].copy_from_slice(&v.to_le_bytes());
    }
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(key);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    idx
}

/// What a site releases after a round: its rows count and its parameters times that count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedUpdate {
    pub n: u64,
    pub weighted: Vec<f64>,
}

impl WeightedUpdate {
    /// `n` then the weighted parameters, for secure aggregation.
    pub fn to_vec(&self) -> Vec<f64> {
        let mut v = vec![self.n as f64];
        v.extend_from_slice(&self.weighted);
        v
    }

    pub fn from_vec(v: &[f64]) -> Result<WeightedUpdate, FederatedError> {
        let (n, w) = v
            .split_first()
            .ok_or_else(|| FederatedError::Shape("empty update".into()))?;
        Ok(WeightedUpdate {
            n: n.round().max(0.0) as u64,
            weighted: w.to_vec(),
        })
    }
}

/// The site step: train `global` on the site's rows (mini-batch SGD, FedProx term when
/// `mu > 0`) and release the weighted result, after the site's row minimum.
pub fn local_round(
    t: &LocalTraining,
    global: &[f64],
    d: &Design,
    round: u64,
    site: u64,
    disclosure: &Disclosure,
) -> Result<WeightedUpdate, FederatedError> {
    disclosure.check_rows(d.rows() as u64)?;
    if global.len() != t.model.parameters(d.width()) {
        return Err(FederatedError::Shape(format!(
            "{} parameters for a model of {}",
            global.len(),
            t.model.parameters(d.width())
        )));
    }
    let mut w = global.to_vec();
    let mut grad = vec![0.0; w.len()];
    for epoch in 0..t.epochs {
        let order = epoch_order(d.rows(), t.seed, round, site, epoch as u64);
        for batch in order.chunks(t.batch_size.max(1)) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            for &i in batch {
                t.model.add_gradient(&w, &d.x[i], d.y[i], &mut grad);
            }
            let scale = t.learning_rate / batch.len() as f64;
            for k in 0..w.len() {
                w[k] -= scale * grad[k] + t.learning_rate * t.mu * (w[k] - global[k]);
            }
        }
    }
    let n = d.rows() as u64;
    Ok(WeightedUpdate {
        n,
        weighted: w.iter().map(|v| v * n as f64).collect(),
    })
}

/// The hub step: the average of the sites' parameters weighted by their rows, from the sum.
pub fn average(total: &WeightedUpdate) -> Result<Vec<f64>, FederatedError> {
    if total.n == 0 {
        return Err(FederatedError::TooFewRows { rows: 0, min: 1 });
    }
    Ok(total.weighted.iter().map(|v| v / total.n as f64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MLP's analytic gradient matches finite differences of its log-loss.
    #[test]
    fn mlp_gradient_matches_finite_differences() {
        let m = ModelKind::Mlp { hidden: 3 };
        let x = [1.0, 0.3, -1.2];
        let y = 1.0;
        let w = m.init(3, 9);
        let mut g = vec![0.0; w.len()];
        m.add_gradient(&w, &x, y, &mut g);
        let loss = |w: &[f64]| {
            let p = m.predict(w, &x);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        };
        for k in 0..w.len() {
            let mut a = w.clone();
            let mut b = w.clone();
            a[k] += 1e-6;
            b[k] -= 1e-6;
            let fd = (loss(&a) - loss(&b)) / 2e-6;
            assert!((fd - g[k]).abs() < 1e-6, "{k}: {fd} vs {}", g[k]);
        }
    }
}
