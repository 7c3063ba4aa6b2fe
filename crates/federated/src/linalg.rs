//! The little dense linear algebra the algorithms need (p is tens, not thousands): symmetric
//! positive-definite solves by Cholesky, in a fixed order so results are reproducible.

use crate::FederatedError;

/// A square matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub n: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    pub fn zeros(n: usize) -> Matrix {
        Matrix {
            n,
            data: vec![0.0; n * n],
        }
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.n + j]
    }

    pub fn add_at(&mut self, i: usize, j: usize, v: f64) {
        self.data[i * self.n + j] += v;
    }

    /// Solve `self * x = b` for symmetric positive-definite `self`.
    pub fn solve_spd(&self, b: &[f64]) -> Result<Vec<f64>, FederatedError> {
        let n = self.n;
        if b.len() != n || self.data.len() != n * n {
            return Err(FederatedError::Shape(format!(
                "{n}x{n} matrix, vector of {}",
                b.len()
            )));
        }
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let mut s = self.at(i, j);
                for k in 0..j {
                    s -= l[i * n + k] * l[j * n + k];
                }
                if i == j {
                    if s <= 1e-12 * self.at(i, i).abs().max(1e-300) || !s.is_finite() {
                        return Err(FederatedError::Singular);
                    }
                    l[i * n + i] = s.sqrt();
                } else {
                    l[i * n + j] = s / l[j * n + j];
                }
            }
        }
        let mut y = vec![0.0; n];
        for i in 0..n {
            let mut s = b[i];
            for k in 0..i {
                s -= l[i * n + k] * y[k];
            }
            y[i] = s / l[i * n + i];
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            let mut s = y[i];
            for k in i + 1..n {
                s -= l[k * n + i] * x[k];
            }
            x[i] = s / l[i * n + i];
        }
        Ok(x)
    }
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_known_system_and_refuses_a_singular_one() {
        // [[4, 2], [2, 3]] x = [2, 1]  ->  x = [0.5, 0]
        let m = Matrix {
            n: 2,
            data: vec![4.0, 2.0, 2.0, 3.0],
        };
        let x = m.solve_spd(&[2.0, 1.0]).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-15 && x[1].abs() < 1e-15, "{x:?}");
        let s = Matrix {
            n: 2,
            data: vec![1.0, 1.0, 1.0, 1.0],
        };
        assert_eq!(s.solve_spd(&[1.0, 1.0]), Err(FederatedError::Singular));
    }
}
