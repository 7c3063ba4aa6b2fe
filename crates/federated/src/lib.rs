//! Federated analytics and learning for medfed: the vetted, built-in algorithms a site runs on
//! its own table, and secure aggregation of what they release. Pure computation: no files, no
//! network (the site node and the hub move the messages).
//!
//! Every algorithm is split the same way: a **site step** computes a summary of the site's rows
//! (a gradient and Hessian, counts, a locally trained model) after checking the site's
//! disclosure rules ([`Disclosure`]); the **hub step** combines the sums. Sums are all the hub
//! needs, so each site's summary can travel masked ([`secagg`]): the hub learns only the sum.
//!
//! - [`table`]: a numeric table (CSV) with a schema; feature/label selection.
//! - [`stats`]: counts, means, variances, histograms (quantiles from them), cross-tabs, with
//!   the minimum cell count enforced at the site.
//! - [`regression`]: exact federated logistic and linear regression (Newton-Raphson on summed
//!   gradients and Hessians: the result is pooled training's).
//! - [`fedavg`]: FedAvg and FedProx for logistic regression and a one-hidden-layer MLP.
//! - [`eval`]: accuracy, ROC AUC, sensitivity/specificity, calibration from per-site binned
//!   counts (no per-patient prediction leaves a site).
//! - [`secagg`]: double-masked sums (pairwise masks + secret-shared self-masks) with recovery
//!   when a site drops out after masking.
//! - [`spec`]: the study spec (TOML) and the differential-privacy accountant.
//! - [`run`]: a run as steps: the hub's [`run::Coordinator`] and the site's
//!   [`run::site_release`].
//! - [`heart`]: the four-centre UCI Heart Disease benchmark (FLamby's preparation).

pub mod eval;
pub mod fedavg;
pub mod heart;
pub mod linalg;
pub mod protocol;
pub mod regression;
pub mod run;
pub mod secagg;
pub mod spec;
pub mod stats;
pub mod table;

/// Why a site refuses to release something, or an input is unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FederatedError {
    #[error("{rows} rows is below this site's minimum of {min}")]
    TooFewRows { rows: u64, min: u64 },
    #[error("a cell of {count} is below this site's minimum cell count of {min}")]
    SmallCell { count: u64, min: u64 },
    #[error("column {0:?} is not in the table")]
    NoColumn(String),
    #[error("table: {0}")]
    Table(String),
    #[error(
        "the Hessian is singular (collinear features or separable data); add ridge regularisation"
    )]
    Singular,
    #[error("shapes do not match: {0}")]
    Shape(String),
    #[error("secure aggregation: {0}")]
    SecAgg(String),
    #[error("study spec: {0}")]
    Spec(String),
}

/// A site's disclosure rules for aggregates (from its policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disclosure {
    /// Nothing computed over fewer rows leaves the site.
    pub min_rows: u64,
    /// No count below this leaves the site (zero counts are allowed: they reveal no person).
    pub min_cell: u64,
}

impl Disclosure {
    pub fn check_rows(&self, rows: u64) -> Result<(), FederatedError> {
        if rows < self.min_rows {
            return Err(FederatedError::TooFewRows {
                rows,
                min: self.min_rows,
            });
        }
        Ok(())
    }

    pub fn check_cells(&self, counts: impl IntoIterator<Item = u64>) -> Result<(), FederatedError> {
        for c in counts {
            if c > 0 && c < self.min_cell {
                return Err(FederatedError::SmallCell {
                    count: c,
                    min: self.min_cell,
                });
            }
        }
        Ok(())
    }
}
