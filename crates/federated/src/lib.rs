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
    // Refusal texts name the rule, never a count: they reach the coordinator, the hub's audit
    // log and the run's state, and a count would disclose what the rule withholds. The fields
    // stay for the site's own tests and are never formatted.
    #[error("fewer rows than this site's minimum")]
    TooFewRows { rows: u64, min: u64 },
    #[error("a count is below this site's minimum cell count")]
    SmallCell { count: u64, min: u64 },
    /// A level of a categorical, indicator or binary column (or the label) holds fewer rows
    /// than the minimum, or all but fewer than the minimum (DataSHIELD's level filter).
    #[error("a level of {0} has fewer rows than this site's minimum")]
    SmallLevel(String),
    /// A cell a model's parameters depend on (a level of a binary feature by the label).
    #[error("a cell of {0} by the label is below this site's minimum cell count")]
    SmallModelCell(String),
    /// More parameters than the saturation filter allows for the site's rows (nfilter.glm).
    #[error("the design is saturated: too many parameters for this site's rows")]
    Saturated,
    /// The rows selected differ from those of an earlier run by fewer than the minimum.
    #[error(
        "the rows selected differ from an earlier run's by fewer than this site's minimum (differencing)"
    )]
    Differencing,
    /// A release that differential privacy cannot bound was asked for in a DP run.
    #[error("differential privacy: the {0} stage has no bounded sensitivity and is not released")]
    NotPrivate(String),
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
