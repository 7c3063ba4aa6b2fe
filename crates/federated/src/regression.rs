//! Exact federated regression. Newton-Raphson for logistic regression needs, at each
//! iteration, only the sums over all rows of the gradient and the Hessian of the log-likelihood;
//! linear regression needs only X'X and X'y. Each site computes its part; the hub adds them and
//! solves. The result is pooled training's, up to the order of floating-point additions.

use serde::{Deserialize, Serialize};

use crate::linalg::{Matrix, dot};
use crate::table::Design;
use crate::{Disclosure, FederatedError};

/// A site's part of one Newton iteration (or of linear regression's normal equations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewtonSummary {
    pub n: u64,
    /// Logistic: sum of (p - y) x. Linear: sum of y x.
    pub gradient: Vec<f64>,
    /// Logistic: sum of p (1 - p) x x'. Linear: sum of x x'. Row-major, p x p.
    pub hessian: Vec<f64>,
    /// Logistic: negative log-likelihood. Linear: sum of y^2.
    pub loss: f64,
}

impl NewtonSummary {
    pub fn zeros(p: usize) -> NewtonSummary {
        NewtonSummary {
            n: 0,
            gradient: vec![0.0; p],
            hessian: vec![0.0; p * p],
            loss: 0.0,
        }
    }

    /// Add another site's part.
    pub fn add(&mut self, o: &NewtonSummary) -> Result<(), FederatedError> {
        if o.gradient.len() != self.gradient.len() {
            return Err(FederatedError::Shape(
                "summaries of different widths".into(),
            ));
        }
        self.n += o.n;
        self.loss += o.loss;
        for (a, b) in self.gradient.iter_mut().zip(&o.gradient) {
            *a += b;
        }
        for (a, b) in self.hessian.iter_mut().zip(&o.hessian) {
            *a += b;
        }
        Ok(())
    }

    /// As one vector (for secure aggregation): n, loss, gradient, upper triangle of the Hessian.
    pub fn to_vec(&self) -> Vec<f64> {
        let p = self.gradient.len();
        let mut v = vec![self.n as f64, self.loss];
        v.extend_from_slice(&self.gradient);
        for i in 0..p {
            for j in i..p {
                v.push(self.hessian[i * p + j]);
            }
        }
        v
    }

    pub fn from_vec(p: usize, v: &[f64]) -> Result<NewtonSummary, FederatedError> {
        if v.len() != 2 + p + p * (p + 1) / 2 {
            return Err(FederatedError::Shape(format!(
                "{} values for width {p}",
                v.len()
            )));
        }
        let mut s = NewtonSummary::zeros(p);
        s.n = v[0].round().max(0.0) as u64;
        s.loss = v[1];
        s.gradient.copy_from_slice(&v[2..2 + p]);
        let mut k = 2 + p;
        for i in 0..p {
            for j in i..p {
                s.hessian[i * p + j] = v[k];
                s.hessian[j * p + i] = v[k];
                k += 1;
            }
        }
        Ok(s)
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

/// `ln(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// The site step of logistic regression at `beta`, after the site's row minimum.
pub fn logistic_site_step(
    d: &Design,
    beta: &[f64],
    disclosure: &Disclosure,
) -> Result<NewtonSummary, FederatedError> {
    disclosure.check_rows(d.rows() as u64)?;
    let p = beta.len();
    if d.width() != p {
        return Err(FederatedError::Shape(format!(
            "{} features, {p} coefficients",
            d.width()
        )));
    }
    let mut s = NewtonSummary::zeros(p);
    s.n = d.rows() as u64;
    for (x, &y) in d.x.iter().zip(&d.y) {
        let z = dot(x, beta);
        let pr = sigmoid(z);
        s.loss += softplus(z) - y * z;
        let w = pr * (1.0 - pr);
        for i in 0..p {
            s.gradient[i] += (pr - y) * x[i];
            for j in i..p {
                s.hessian[i * p + j] += w * x[i] * x[j];
            }
        }
    }
    mirror(&mut s.hessian, p);
    Ok(s)
}

/// The site step of linear regression (normal equations).
pub fn linear_site_step(
    d: &Design,
    disclosure: &Disclosure,
) -> Result<NewtonSummary, FederatedError> {
    disclosure.check_rows(d.rows() as u64)?;
    let p = d.width();
    let mut s = NewtonSummary::zeros(p);
    s.n = d.rows() as u64;
    for (x, &y) in d.x.iter().zip(&d.y) {
        s.loss += y * y;
        for i in 0..p {
            s.gradient[i] += y * x[i];
            for j in i..p {
                s.hessian[i * p + j] += x[i] * x[j];
            }
        }
    }
    mirror(&mut s.hessian, p);
    Ok(s)
}

fn mirror(h: &mut [f64], p: usize) {
    for i in 0..p {
        for j in 0..i {
            h[i * p + j] = h[j * p + i];
        }
    }
}

/// Ridge penalty `ridge / 2 * |beta without intercept|^2` added to the summed part.
fn penalised(total: &NewtonSummary, beta: &[f64], ridge: f64) -> (Matrix, Vec<f64>) {
    let p = beta.len();
    let mut h = Matrix {
        n: p,
        data: total.hessian.clone(),
    };
    let mut g = total.gradient.clone();
    for j in 1..p {
        h.add_at(j, j, ridge);
        g[j] += ridge * beta[j];
    }
    (h, g)
}

/// The hub step: one Newton update from the summed parts.
pub fn newton_update(
    beta: &[f64],
    total: &NewtonSummary,
    ridge: f64,
) -> Result<Vec<f64>, FederatedError> {
    let (h, g) = penalised(total, beta, ridge);
    let step = h.solve_spd(&g)?;
    Ok(beta.iter().zip(&step).map(|(b, s)| b - s).collect())
}

/// The hub step of linear regression: the coefficients from summed normal equations.
pub fn linear_solve(total: &NewtonSummary, ridge: f64) -> Result<Vec<f64>, FederatedError> {
    let p = total.gradient.len();
    let mut h = Matrix {
        n: p,
        data: total.hessian.clone(),
    };
    for j in 1..p {
        h.add_at(j, j, ridge);
    }
    h.solve_spd(&total.gradient)
}

/// A fitted model and how the fit ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub beta: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
    /// Penalised negative log-likelihood per row at the last evaluated coefficients.
    pub loss_per_row: f64,
}

/// Newton iterations with `part(beta)` giving the summed site parts at `beta` (federated: the
/// sites' steps added, masked or not; pooled: one step over all rows).
pub fn newton_fit(
    p: usize,
    ridge: f64,
    max_iterations: usize,
    tolerance: f64,
    mut part: impl FnMut(&[f64]) -> Result<NewtonSummary, FederatedError>,
) -> Result<Fit, FederatedError> {
    let mut beta = vec![0.0; p];
    let mut last_loss = f64::INFINITY;
    for it in 1..=max_iterations {
        let total = part(&beta)?;
        let penalty: f64 = beta[1..].iter().map(|b| b * b).sum::<f64>() * ridge / 2.0;
        let loss = (total.loss + penalty) / total.n.max(1) as f64;
        let next = newton_update(&beta, &total, ridge)?;
        let change = next
            .iter()
            .zip(&beta)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        beta = next;
        if change < tolerance {
            return Ok(Fit {
                beta,
                iterations: it,
                converged: true,
                loss_per_row: loss,
            });
        }
        last_loss = loss;
    }
    Ok(Fit {
        beta,
        iterations: max_iterations,
        converged: false,
        loss_per_row: last_loss,
    })
}

/// Probability of the positive class.
pub fn predict_logistic(beta: &[f64], x: &[f64]) -> f64 {
    sigmoid(dot(beta, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_survives_its_vector_form() {
        let d = Design {
            x: vec![vec![1.0, 2.0, -1.0], vec![1.0, 0.5, 3.0]],
            y: vec![1.0, 0.0],
        };
        let s = logistic_site_step(
            &d,
            &[0.1, -0.2, 0.3],
            &Disclosure {
                min_rows: 1,
                min_cell: 1,
            },
        )
        .unwrap();
        assert_eq!(NewtonSummary::from_vec(3, &s.to_vec()).unwrap(), s);
        assert!(matches!(
            logistic_site_step(
                &d,
                &[0.0; 3],
                &Disclosure {
                    min_rows: 3,
                    min_cell: 1
                }
            ),
            Err(FederatedError::TooFewRows { rows: 2, min: 3 })
        ));
    }
}
