//! A site's numeric table: named columns of f64 (empty cells are missing), read from CSV. The
//! hub only ever sees the schema (column names) and, above the site's minimum, the row count.

use crate::FederatedError;

#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    /// Row-major; `NaN` marks a missing value.
    pub rows: Vec<Vec<f64>>,
}

/// Features and a binary or continuous label, rows with a missing value dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Design {
    /// Each row starts with 1.0 (the intercept), then the features in order.
    pub x: Vec<Vec<f64>>,
    pub y: Vec<f64>,
}

impl Design {
    pub fn rows(&self) -> usize {
        self.y.len()
    }

    /// Number of coefficients (intercept included).
    pub fn width(&self) -> usize {
        self.x.first().map_or(0, Vec::len)
    }

    /// Rows `idx` of this design, in that order.
    pub fn subset(&self, idx: &[usize]) -> Design {
        Design {
            x: idx.iter().map(|&i| self.x[i].clone()).collect(),
            y: idx.iter().map(|&i| self.y[i]).collect(),
        }
    }

    /// Append another design's rows (pooling, for comparisons).
    pub fn concat(parts: &[&Design]) -> Design {
        Design {
            x: parts.iter().flat_map(|d| d.x.iter().cloned()).collect(),
            y: parts.iter().flat_map(|d| d.y.iter().copied()).collect(),
        }
    }
}

impl Table {
    /// Read a CSV with a header row; every selected cell must be a number or empty.
    pub fn from_csv(text: &str) -> Result<Table, FederatedError> {
        Ok(Table::from_csv_keeping(text, None)?.0)
    }

    /// As [`Table::from_csv`], also returning the text of column `keep` (a split or group
    /// column such as `train`/`test`) for every row.
    pub fn from_csv_keeping(
        text: &str,
        keep: Option<&str>,
    ) -> Result<(Table, Vec<String>), FederatedError> {
        let mut r = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(text.as_bytes());
        let columns: Vec<String> = r
            .headers()
            .map_err(|e| FederatedError::Table(e.to_string()))?
            .iter()
            .map(str::to_string)
            .collect();
        let kept = match keep {
            Some(name) => Some(
                columns
                    .iter()
                    .position(|c| c == name)
                    .ok_or_else(|| FederatedError::NoColumn(name.to_string()))?,
            ),
            None => None,
        };
        let (mut rows, mut texts) = (Vec::new(), Vec::new());
        for (n, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| FederatedError::Table(format!("row {}: {e}", n + 1)))?;
            if let Some(k) = kept {
                texts.push(rec.get(k).unwrap_or("").trim().to_string());
            }
            rows.push(
                rec.iter()
                    .map(|c| {
                        let c = c.trim();
                        if c.is_empty() {
                            f64::NAN
                        } else {
                            // Text cells (ids, centre names) are kept as missing numbers;
                            // selecting such a column drops every row, which `design` reports.
                            c.parse().unwrap_or(f64::NAN)
                        }
                    })
                    .collect(),
            );
        }
        Ok((Table { columns, rows }, texts))
    }

    /// The rows whose flag is set, in order.
    pub fn select(&self, keep: impl Fn(usize) -> bool) -> Table {
        Table {
            columns: self.columns.clone(),
            rows: (0..self.rows.len())
                .filter(|&i| keep(i))
                .map(|i| self.rows[i].clone())
                .collect(),
        }
    }

    pub fn column(&self, name: &str) -> Result<usize, FederatedError> {
        self.columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| FederatedError::NoColumn(name.to_string()))
    }

    /// Rows where `column == value`.
    pub fn filter_eq(&self, column: &str, value: f64) -> Result<Table, FederatedError> {
        let c = self.column(column)?;
        Ok(Table {
            columns: self.columns.clone(),
            rows: self
                .rows
                .iter()
                .filter(|r| r[c] == value)
                .cloned()
                .collect(),
        })
    }

    /// The design for `features` and `label`: rows with a missing selected value are dropped;
    /// a feature named `name=v` is the indicator of `name == v` (one-hot coding).
    pub fn design(&self, features: &[String], label: &str) -> Result<Design, FederatedError> {
        Ok(self.design_where(features, label, |_| true)?.0)
    }

    /// As [`Table::design`], over the rows `keep` selects, also returning the indices (into
    /// this table) of the rows the design holds: the selection that differencing is checked on.
    pub fn design_where(
        &self,
        features: &[String],
        label: &str,
        keep: impl Fn(usize) -> bool,
    ) -> Result<(Design, Vec<usize>), FederatedError> {
        let lab = self.column(label)?;
        let cols: Vec<(usize, Option<f64>)> = features
            .iter()
            .map(|f| match f.split_once('=') {
                Some((name, v)) => {
                    let v: f64 = v
                        .parse()
                        .map_err(|_| FederatedError::Table(format!("{f}: not name=number")))?;
                    Ok((self.column(name)?, Some(v)))
                }
                None => Ok((self.column(f)?, None)),
            })
            .collect::<Result<_, _>>()?;
        let mut d = Design {
            x: Vec::new(),
            y: Vec::new(),
        };
        let mut kept = Vec::new();
        for (i, r) in self.rows.iter().enumerate() {
            if !keep(i) || r[lab].is_nan() || cols.iter().any(|(c, _)| r[*c].is_nan()) {
                continue;
            }
            kept.push(i);
            let mut x = Vec::with_capacity(cols.len() + 1);
            x.push(1.0);
            for (c, eq) in &cols {
                x.push(match eq {
                    Some(v) => f64::from(u8::from(r[*c] == *v)),
                    None => r[*c],
                });
            }
            d.x.push(x);
            d.y.push(r[lab]);
        }
        Ok((d, kept))
    }
}

/// Standardise features with given means and standard deviations (computed federatedly by
/// [`crate::stats`]); the intercept column is left alone.
pub fn standardise(d: &mut Design, mean: &[f64], sd: &[f64]) {
    for x in &mut d.x {
        for j in 1..x.len() {
            let s = if sd[j] > 0.0 { sd[j] } else { 1.0 };
            x[j] = (x[j] - mean[j]) / s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_design_drops_rows_with_missing_values_and_one_hot_codes() {
        let t = Table::from_csv("a,b,y\n1,3,0\n2,,1\n3,4,1\nx,4,0\n").unwrap();
        let d = t.design(&["a".into(), "b=4".into()], "y").unwrap();
        assert_eq!(d.x, vec![vec![1.0, 1.0, 0.0], vec![1.0, 3.0, 1.0]]);
        assert_eq!(d.y, vec![0.0, 1.0]);
        assert!(t.design(&["c".into()], "y").is_err());
        let (d, kept) = t.design_where(&["a".into()], "y", |i| i != 0).unwrap();
        assert_eq!((d.rows(), kept), (2, vec![1, 2]));
    }
}
