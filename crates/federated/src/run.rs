//! A federated run as a sequence of steps. The hub's [`Coordinator`] says what every site
//! computes next ([`Step`]); each site answers with one vector ([`site_release`]) that travels
//! masked; the coordinator advances on the sum alone. The stages:
//!
//! 1. `moments` (when standardising, and for statistics): row count, sums and sums of squares
//!    of the features over the training rows; the hub derives means and standard deviations.
//! 2. the algorithm: `histogram` (statistics), `newton` (one per iteration) or `train` (one per
//!    FedAvg/FedProx round);
//! 3. `evaluate` (classifiers): binned scores on each site's test rows for the overall AUC and
//!    calibration, plus the site's own metrics as numbers.
//!
//! The coordinator is plain data (serde): the hub saves it after every completed step and
//! resumes from it after a restart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::{self, BinnedScores, Metrics};
use crate::fedavg::{self, ModelKind, WeightedUpdate};
use crate::regression::{self, NewtonSummary};
use crate::spec::{AlgorithmKind, StudySpec};
use crate::table::{Design, Table, standardise};
use crate::{Disclosure, FederatedError, stats};

/// The label's levels in cross-tabs.
const LABEL_LEVELS: [f64; 2] = [0.0, 1.0];

/// Feature means and standard deviations (index 0, the intercept, is 0 and 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    pub mean: Vec<f64>,
    pub sd: Vec<f64>,
}

/// What every site computes in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "kebab-case")]
pub enum Stage {
    Moments,
    /// `pass` counts the merges of neighbouring bins so far (0: the spec's bins).
    Histogram {
        edges: Vec<Vec<f64>>,
        #[serde(default)]
        pass: u32,
    },
    Newton {
        iteration: u64,
        beta: Vec<f64>,
    },
    Train {
        iteration: u64,
        params: Vec<f64>,
    },
    Evaluate {
        params: Vec<f64>,
    },
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Moments => "moments",
            Stage::Histogram { .. } => "histogram",
            Stage::Newton { .. } => "newton",
            Stage::Train { .. } => "train",
            Stage::Evaluate { .. } => "evaluate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Protocol round, from 1 (also the secure-aggregation round).
    pub round: u64,
    pub stage: Stage,
    pub scaling: Option<Scaling>,
}

/// What one site releases for one step: the vector (sent masked) and, for evaluation only,
/// the site's own metrics (numbers over at least its minimum of rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub vector: Vec<f64>,
    pub metrics: Option<Metrics>,
    /// Rows the release was computed over (recorded in the site's audit log, never sent).
    #[serde(skip)]
    pub rows: u64,
}

/// A site's rows for a run: training and test designs from its registered table.
#[derive(Debug, Clone)]
pub struct SiteData {
    pub train: Design,
    pub test: Design,
    /// Raw (unscaled) training values of each feature, for statistics.
    pub columns: Vec<Vec<f64>>,
    /// Which rows of the table the training and test designs hold (differencing is checked
    /// on these, see [`DisclosureMemory`]).
    pub train_rows: Selection,
    pub test_rows: Selection,
}

/// A set of row indices of a site's table, as sorted half-open ranges (selections are mostly
/// long runs: a split or a few rows dropped for missing values, so this stays small).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection(Vec<(u64, u64)>);

impl Selection {
    /// From ascending row indices.
    pub fn from_sorted(rows: &[usize]) -> Selection {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &r in rows {
            let r = r as u64;
            match ranges.last_mut() {
                Some((_, end)) if *end == r => *end += 1,
                _ => ranges.push((r, r + 1)),
            }
        }
        Selection(ranges)
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn intersection_len(&self, o: &Selection) -> u64 {
        let (mut i, mut j, mut n) = (0, 0, 0);
        while i < self.0.len() && j < o.0.len() {
            let (a, b) = (self.0[i], o.0[j]);
            let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
            n += hi.saturating_sub(lo);
            if a.1 <= b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        n
    }

    /// Rows in exactly one of the two selections.
    pub fn symmetric_difference_len(&self, o: &Selection) -> u64 {
        self.len() + o.len() - 2 * self.intersection_len(o)
    }
}

/// DataSHIELD's saturation filter (`nfilter.glm`, default 0.33): a model may have at most
/// this fraction of the site's rows as parameters. Near saturation the parameters determine
/// the rows (at p = n a linear model reproduces every label).
pub const NFILTER_GLM: f64 = 0.33;

/// Whether the values take at most two distinct values (a binary coding: its levels are
/// counts, whatever the column is called).
fn distinct_at_most_two(values: impl Iterator<Item = f64>) -> Option<Vec<f64>> {
    let mut seen: Vec<f64> = Vec::with_capacity(2);
    for v in values {
        if !seen.contains(&v) {
            if seen.len() == 2 {
                return None;
            }
            seen.push(v);
        }
    }
    Some(seen)
}

/// Rows per level of a column with at most two levels.
fn level_counts(values: &[f64], levels: &[f64]) -> Vec<u64> {
    levels
        .iter()
        .map(|l| values.iter().filter(|v| *v == l).count() as u64)
        .collect()
}

/// The disclosure rules on the design itself, in the manner of DataSHIELD, checked at the
/// site before anything of the run is released (the row and cell minimums of each release are
/// checked again by every step):
///
/// - every level of an indicator (`name=v`) or binary feature, and of a binary label, holds
///   at least `min_rows` rows, and so do the rows not at that level (an empty level reveals
///   no person and passes): a mean, sum or coefficient of an indicator over a handful of
///   rows is those rows' values;
/// - for a binary label, every cell of a binary feature by the label holds none or at least
///   `min_cell` rows: the gradient and the cross-products are those cells' counts;
/// - models (Newton, FedAvg/FedProx) have at most [`NFILTER_GLM`] x rows coefficients.
///
/// Refusals name the rule and the feature, never a count.
pub fn check_disclosure(
    spec: &StudySpec,
    data: &SiteData,
    rules: &Disclosure,
) -> Result<(), FederatedError> {
    let evaluates = spec.run.evaluate && spec.classifies() && spec.privacy.dp.is_none();
    let split = spec.data.split.is_some();
    let mut designs = vec![&data.train];
    if evaluates && split {
        designs.push(&data.test);
    }
    let ok_level = |c: u64, n: u64| {
        let rest = n - c;
        (c == 0 || c >= rules.min_rows) && (rest == 0 || rest >= rules.min_rows)
    };
    let uses_label =
        spec.algorithm.kind != AlgorithmKind::Statistics || !spec.algorithm.crosstab.is_empty();
    for d in designs {
        let n = d.rows() as u64;
        rules.check_rows(n)?;
        let label = if uses_label {
            distinct_at_most_two(d.y.iter().copied())
        } else {
            None
        };
        if let Some(levels) = &label
            && !level_counts(&d.y, levels).iter().all(|&c| ok_level(c, n))
        {
            return Err(FederatedError::SmallLevel("the label".into()));
        }
        for (j, name) in spec.data.features.iter().enumerate() {
            let col: Vec<f64> = d.x.iter().map(|x| x[j + 1]).collect();
            let levels = match distinct_at_most_two(col.iter().copied()) {
                Some(l) => l,
                // An indicator with more than two values cannot happen; a numeric column
                // with many values is not a set of levels.
                None => continue,
            };
            if !level_counts(&col, &levels).iter().all(|&c| ok_level(c, n)) {
                return Err(FederatedError::SmallLevel(format!("feature {name:?}")));
            }
            if let Some(ylev) = &label {
                for l in &levels {
                    for yl in ylev {
                        let c = col
                            .iter()
                            .zip(&d.y)
                            .filter(|(x, y)| *x == l && *y == yl)
                            .count() as u64;
                        if c > 0 && c < rules.min_cell {
                            return Err(FederatedError::SmallModelCell(format!(
                                "feature {name:?}"
                            )));
                        }
                    }
                }
            }
        }
    }
    if spec.algorithm.kind != AlgorithmKind::Statistics {
        // The design's coefficients (intercept included); for the MLP this bounds the design,
        // not the hidden units, whose updates are trained rather than solved (DP is the
        // control there).
        let p = spec.data.features.len() as f64 + 1.0;
        if p > NFILTER_GLM * data.train.rows() as f64 {
            return Err(FederatedError::Saturated);
        }
    }
    Ok(())
}

/// What a site remembers of its earlier runs, to refuse differencing: two releases over row
/// selections that differ by a few rows give those rows' values by subtraction (a run with
/// one patient's row dropped by a missing value, a split column or a changed selector). The
/// site keeps, per table, every selection it has released over; a run whose training or test
/// selection differs from a remembered one by 1 to `min_rows - 1` rows is refused. Pure data:
/// the site node loads and saves it in its state directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisclosureMemory {
    /// Table id at the site -> selections released over.
    pub tables: BTreeMap<String, Vec<Selection>>,
}

impl DisclosureMemory {
    fn selections(data: &SiteData) -> impl Iterator<Item = &Selection> {
        std::iter::once(&data.train_rows).chain(
            (data.test_rows != data.train_rows && !data.test_rows.is_empty())
                .then_some(&data.test_rows),
        )
    }

    /// Refuse `data` if one of its selections is a near copy of an earlier one.
    pub fn check(&self, table: &str, data: &SiteData, min_rows: u64) -> Result<(), FederatedError> {
        let Some(earlier) = self.tables.get(table) else {
            return Ok(());
        };
        for new in Self::selections(data) {
            for old in earlier {
                let d = new.symmetric_difference_len(old);
                if d > 0 && d < min_rows {
                    return Err(FederatedError::Differencing);
                }
            }
        }
        Ok(())
    }

    /// Remember `data`'s selections (once each).
    pub fn remember(&mut self, table: &str, data: &SiteData) {
        let list = self.tables.entry(table.to_string()).or_default();
        for s in Self::selections(data) {
            if !list.contains(s) {
                list.push(s.clone());
            }
        }
    }
}

impl SiteData {
    /// The design the spec selects from a CSV table's text.
    pub fn from_csv(text: &str, spec: &StudySpec) -> Result<SiteData, FederatedError> {
        let split = spec.data.split.as_ref().map(|s| s.column.as_str());
        let (table, texts) = Table::from_csv_keeping(text, split)?;
        SiteData::from_table(table, &texts, spec)
    }

    /// The design the spec selects from a table already read (any format); `texts` holds the
    /// split column's text for every row when the spec splits.
    pub fn from_table(
        table: Table,
        texts: &[String],
        spec: &StudySpec,
    ) -> Result<SiteData, FederatedError> {
        let d = &spec.data;
        let split = d.split.as_ref();
        if split.is_some() && texts.len() != table.rows.len() {
            return Err(FederatedError::Table(
                "the split column was not read".into(),
            ));
        }
        let ((train, train_rows), (test, test_rows)) = match split {
            Some(s) => (
                table.design_where(&d.features, &d.label, |i| texts[i] == s.train)?,
                table.design_where(&d.features, &d.label, |i| texts[i] == s.test)?,
            ),
            None => {
                let t = table.design_where(&d.features, &d.label, |_| true)?;
                (t.clone(), t)
            }
        };
        let columns = (1..train.width())
            .map(|j| train.x.iter().map(|x| x[j]).collect())
            .collect();
        Ok(SiteData {
            train,
            test,
            columns,
            train_rows: Selection::from_sorted(&train_rows),
            test_rows: Selection::from_sorted(&test_rows),
        })
    }
}

fn scaled(d: &Design, s: &Option<Scaling>) -> Design {
    let mut d = d.clone();
    if let Some(s) = s {
        standardise(&mut d, &s.mean, &s.sd);
    }
    d
}

/// Standard normal draws from the operating system's generator (the noise must not be
/// reproducible by anyone, or it could be subtracted).
fn gaussian(n: usize) -> Vec<f64> {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

/// The site step: check the site's rules and compute what it releases for `step`. `site` is
/// the site's index in the run (it seeds the batch order, as in [`fedavg::local_round`]).
pub fn site_release(
    spec: &StudySpec,
    data: &SiteData,
    step: &Step,
    site: u64,
    rules: &Disclosure,
) -> Result<Release, FederatedError> {
    let train = || scaled(&data.train, &step.scaling);
    if spec.privacy.dp.is_some() && !matches!(step.stage, Stage::Train { .. }) {
        // Only the clipped, noised updates have a sensitivity the accountant can charge for a
        // whole site's table; whatever the hub asks, nothing else leaves in a DP run.
        return Err(FederatedError::NotPrivate(step.stage.name().into()));
    }
    let (vector, metrics, rows) = match &step.stage {
        Stage::Moments => {
            let n = data.train.rows() as u64;
            rules.check_rows(n)?;
            let mut v = vec![n as f64];
            v.extend(data.columns.iter().map(|c| c.iter().sum::<f64>()));
            v.extend(
                data.columns
                    .iter()
                    .map(|c| c.iter().map(|x| x * x).sum::<f64>()),
            );
            (v, None, n)
        }
        Stage::Histogram { edges, .. } => {
            if edges.len() != data.columns.len() {
                return Err(FederatedError::Shape("one edge list per feature".into()));
            }
            rules.check_rows(data.train.rows() as u64)?;
            // Layout: every feature's counts, every cross-tab's counts, then per feature the
            // interior edges this site needs removed, one withheld flag per feature and one per
            // cross-tab. A histogram with a small cell is withheld (zeros) and the site says
            // which neighbouring bins would bear it; the hub merges and asks again.
            let (mut v, mut votes, mut flags, mut tab_flags) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (c, e) in data.columns.iter().zip(edges) {
                let counts = stats::histogram_counts(c, e)?;
                let remove = stats::merge_votes(&counts, rules.min_cell);
                let small = remove.iter().any(|&r| r) || rules.check_cells(counts.clone()).is_err();
                let released = if small { vec![0; counts.len()] } else { counts };
                v.extend(released.iter().map(|&k| k as f64));
                votes.extend(remove.iter().map(|&r| f64::from(u8::from(r))));
                flags.push(f64::from(u8::from(small)));
            }
            for (column, levels) in &spec.algorithm.crosstab {
                let j = spec.data.features.iter().position(|f| f == column);
                let col = j
                    .map(|j| &data.columns[j])
                    .ok_or_else(|| FederatedError::NoColumn(column.clone()))?;
                match stats::site_crosstab(col, &data.train.y, levels, &LABEL_LEVELS, rules) {
                    Ok(counts) => {
                        v.extend(counts.iter().map(|&k| k as f64));
                        tab_flags.push(0.0);
                    }
                    Err(FederatedError::SmallCell { .. } | FederatedError::TooFewRows { .. }) => {
                        v.extend(std::iter::repeat_n(0.0, levels.len() * LABEL_LEVELS.len()));
                        tab_flags.push(1.0);
                    }
                    Err(e) => return Err(e),
                }
            }
            v.extend(votes);
            v.extend(flags);
            v.extend(tab_flags);
            (v, None, data.train.rows() as u64)
        }
        Stage::Newton { beta, .. } => {
            let d = train();
            let s = match spec.algorithm.kind {
                AlgorithmKind::NewtonLinear => regression::linear_site_step(&d, rules)?,
                _ => regression::logistic_site_step(&d, beta, rules)?,
            };
            (s.to_vec(), None, d.rows() as u64)
        }
        Stage::Train { iteration, params } => {
            let d = train();
            let t = spec.local_training();
            let u = fedavg::local_round(&t, params, &d, *iteration, site, rules)?;
            let v = match &spec.privacy.dp {
                None => u.to_vec(),
                Some(dp) => {
                    // Site-level Gaussian mechanism: clip the update, add noise, weight 1.
                    let n = u.n as f64;
                    let mut delta: Vec<f64> = u
                        .weighted
                        .iter()
                        .zip(params)
                        .map(|(w, g)| w / n - g)
                        .collect();
                    let norm = delta.iter().map(|x| x * x).sum::<f64>().sqrt();
                    let scale = (dp.clip / norm).min(1.0);
                    let noise = gaussian(delta.len());
                    for (x, z) in delta.iter_mut().zip(noise) {
                        *x = *x * scale + z * dp.noise_multiplier * dp.clip;
                    }
                    WeightedUpdate {
                        n: 1,
                        weighted: params.iter().zip(&delta).map(|(g, x)| g + x).collect(),
                    }
                    .to_vec()
                }
            };
            (v, None, d.rows() as u64)
        }
        Stage::Evaluate { params } => {
            let d = scaled(&data.test, &step.scaling);
            let scores = predict_all(spec, params, &d);
            let bins = spec.run.evaluation_bins;
            let b = eval::site_binned(&scores, &d.y, bins, rules)?;
            let m = eval::metrics(&scores, &d.y, 0.5, rules)?;
            (b.to_vec(), Some(m), d.rows() as u64)
        }
    };
    Ok(Release {
        vector,
        metrics,
        rows,
    })
}

fn predict_all(spec: &StudySpec, params: &[f64], d: &Design) -> Vec<f64> {
    match spec.algorithm.kind {
        AlgorithmKind::NewtonLogistic => {
            d.x.iter()
                .map(|x| regression::predict_logistic(params, x))
                .collect()
        }
        _ => {
            let m = spec.model_kind();
            d.x.iter().map(|x| m.predict(params, x)).collect()
        }
    }
}

/// One completed round, for progress and the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u64,
    pub stage: String,
    pub sites: usize,
    /// The sites whose releases are in the round's sum.
    #[serde(default)]
    pub site_ids: Vec<String>,
    /// Mean training loss at the start of the round (Newton), when known.
    pub loss: Option<f64>,
    /// Largest parameter change the round made.
    pub change: Option<f64>,
}

/// Per feature: pooled count, mean, standard deviation, quartiles (from the summed histogram),
/// and the histogram itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStatistics {
    pub feature: String,
    pub n: u64,
    pub mean: f64,
    pub sd: f64,
    pub q25: f64,
    pub median: f64,
    pub q75: f64,
    /// Bin edges (the end bins also hold what falls outside) and pooled counts.
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
    /// Sites in `n`, `mean` and `sd` (the moments round) and in the histogram and quartiles.
    #[serde(default)]
    pub moment_sites: usize,
    #[serde(default)]
    pub histogram_sites: usize,
    /// The sites of the moments round and of the histogram round. Of the histogram round's
    /// sites, `histogram_sites` are in the counts: which of them withheld a feature's histogram
    /// is hidden by secure aggregation (only the sum of their flags is released).
    #[serde(default)]
    pub moment_site_ids: Vec<String>,
    #[serde(default)]
    pub histogram_round_site_ids: Vec<String>,
    /// Whether neighbouring bins of the spec's were merged so that every site's bins hold
    /// none or at least its minimum cell count (then `edges` are the merged ones).
    #[serde(default)]
    pub bins_merged: bool,
}

/// A pooled cross-tab of a feature's levels (rows) against the label's 0/1 (columns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossTab {
    pub feature: String,
    pub levels: Vec<f64>,
    /// Row-major: `counts[level * 2 + label]`.
    pub counts: Vec<u64>,
    /// Sites whose counts are in the table (a site with a cell below its minimum withholds
    /// its table), out of the round's `round_site_ids`.
    #[serde(default)]
    pub sites: usize,
    #[serde(default)]
    pub round_site_ids: Vec<String>,
}

/// The overall evaluation, from the summed binned scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overall {
    pub n: u64,
    pub accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    /// Exact up to ties within a score bin.
    pub auc: f64,
    /// (mean predicted, observed positive rate, rows) per score bin with rows.
    pub calibration: Vec<(f64, f64, u64)>,
    /// Mean of the sites' accuracies (FLamby's per-centre figure).
    pub mean_site_accuracy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Keyed by site id.
    pub per_site: BTreeMap<String, Metrics>,
    pub overall: Overall,
}

/// What a finished run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub algorithm: String,
    pub label: String,
    pub features: Vec<String>,
    pub model: Option<ModelKind>,
    /// Coefficients (intercept first) or the MLP's parameters, on the scaled features.
    pub params: Vec<f64>,
    pub scaling: Option<Scaling>,
    pub statistics: Vec<FeatureStatistics>,
    pub crosstabs: Vec<CrossTab>,
    pub evaluation: Option<Evaluation>,
    /// Per-site privacy cost of the run, when it used differential privacy.
    pub epsilon: Option<f64>,
    pub delta: Option<f64>,
    pub rounds: u64,
    /// What the reader must know about the figures: figures over different sets of sites,
    /// merged bins, stages a DP run left out.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl RunResult {
    /// The model as safetensors: `params`, and `feature_mean`/`feature_sd` when standardised,
    /// all F64; the algorithm, model, label and features in the metadata. None for statistics.
    pub fn model_safetensors(&self) -> Option<Vec<u8>> {
        use safetensors::{Dtype, tensor::TensorView};
        self.model.as_ref()?;
        let bytes = |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let mut tensors = vec![("params".to_string(), bytes(&self.params))];
        if let Some(s) = &self.scaling {
            tensors.push(("feature_mean".into(), bytes(&s.mean)));
            tensors.push(("feature_sd".into(), bytes(&s.sd)));
        }
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(name, b)| {
                TensorView::new(Dtype::F64, vec![b.len() / 8], b).map(|v| (name.clone(), v))
            })
            .collect::<Result<_, _>>()
            .ok()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "medfed-federated-v1".to_string());
        meta.insert("algorithm".into(), self.algorithm.clone());
        meta.insert(
            "model".into(),
            serde_json::to_string(&self.model).unwrap_or_default(),
        );
        meta.insert("label".into(), self.label.clone());
        meta.insert(
            "features".into(),
            serde_json::to_string(&self.features).unwrap_or_default(),
        );
        safetensors::serialize(views, Some(meta)).ok()
    }
}

/// The hub's side of a run: what to compute next, and how to advance on the sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coordinator {
    pub spec: StudySpec,
    /// The step in progress; None once finished.
    pub step: Option<Step>,
    pub history: Vec<RoundRecord>,
    pub result: Option<RunResult>,
    /// Statistics: the moments, kept for the histogram step, and the sites they cover.
    #[serde(default)]
    moments: Option<Vec<stats::Moments>>,
    #[serde(default)]
    moment_sites: usize,
    #[serde(default)]
    moment_site_ids: Vec<String>,
}

fn shape(msg: String) -> FederatedError {
    FederatedError::Shape(msg)
}

impl Coordinator {
    pub fn new(spec: StudySpec) -> Coordinator {
        // A DP run releases its noised updates only (see `site_release`): no moments round.
        let standardise = spec.data.standardise && spec.privacy.dp.is_none();
        let first = if standardise || spec.algorithm.kind == AlgorithmKind::Statistics {
            Stage::Moments
        } else {
            Self::first_training(&spec)
        };
        Coordinator {
            step: Some(Step {
                round: 1,
                stage: first,
                scaling: None,
            }),
            spec,
            history: Vec::new(),
            result: None,
            moments: None,
            moment_sites: 0,
            moment_site_ids: Vec::new(),
        }
    }

    /// How many bins a histogram release has per feature, and its total length.
    fn histogram_layout(spec: &StudySpec, edges: &[Vec<f64>]) -> (Vec<usize>, usize) {
        let bins: Vec<usize> = edges.iter().map(|e| e.len().saturating_sub(1)).collect();
        let tabs: usize = spec.algorithm.crosstab.values().map(|l| l.len() * 2).sum();
        let total = bins.iter().sum::<usize>()
            + tabs
            + bins.iter().map(|b| b.saturating_sub(1)).sum::<usize>()
            + bins.len()
            + spec.algorithm.crosstab.len();
        (bins, total)
    }

    /// Coefficients plus the intercept.
    fn width(spec: &StudySpec) -> usize {
        spec.data.features.len() + 1
    }

    fn first_training(spec: &StudySpec) -> Stage {
        let p = Self::width(spec);
        match spec.algorithm.kind {
            AlgorithmKind::NewtonLogistic | AlgorithmKind::NewtonLinear => Stage::Newton {
                iteration: 0,
                beta: vec![0.0; p],
            },
            _ => Stage::Train {
                iteration: 0,
                params: spec.model_kind().init(p, spec.algorithm.seed),
            },
        }
    }

    /// Training rounds (or Newton iterations) completed.
    pub fn training_rounds(&self) -> u64 {
        self.history
            .iter()
            .filter(|r| r.stage == "train" || r.stage == "newton")
            .count() as u64
    }

    /// Advance on the sum of the releases of `site_ids` for the current step; `metrics` are
    /// the sites' own evaluation figures (evaluate stage only), keyed by site id.
    pub fn advance(
        &mut self,
        sum: &[f64],
        site_ids: &[String],
        metrics: BTreeMap<String, Metrics>,
    ) -> Result<(), FederatedError> {
        let sites = site_ids.len();
        let step = self
            .step
            .clone()
            .ok_or_else(|| shape("the run is finished".into()))?;
        let spec = self.spec.clone();
        let p = Self::width(&spec);
        let mut record = RoundRecord {
            round: step.round,
            stage: step.stage.name().into(),
            sites,
            site_ids: site_ids.to_vec(),
            loss: None,
            change: None,
        };
        let mut scaling = step.scaling.clone();
        let mut statistics = Vec::new();
        let mut crosstabs = Vec::new();
        let mut evaluation = None;
        let mut final_params = Vec::new();
        let next = match &step.stage {
            Stage::Moments => {
                let k = p - 1;
                if sum.len() != 1 + 2 * k {
                    return Err(shape(format!("{} moments for {k} features", sum.len())));
                }
                let n = sum[0].round().max(0.0) as u64;
                let moments: Vec<stats::Moments> = (0..k)
                    .map(|j| stats::Moments {
                        n,
                        sum: sum[1 + j],
                        sum_sq: sum[1 + k + j],
                    })
                    .collect();
                if spec.algorithm.kind == AlgorithmKind::Statistics {
                    let bins = spec.algorithm.histogram_bins;
                    let edges = moments
                        .iter()
                        .map(|m| {
                            let (mu, sd) = (m.mean(), m.variance().sqrt());
                            let half = if sd > 0.0 { 4.0 * sd } else { 0.5 };
                            (0..=bins)
                                .map(|i| mu - half + 2.0 * half * i as f64 / bins as f64)
                                .collect()
                        })
                        .collect();
                    self.moments = Some(moments);
                    self.moment_sites = sites;
                    self.moment_site_ids = site_ids.to_vec();
                    Some(Stage::Histogram { edges, pass: 0 })
                } else {
                    let mut s = Scaling {
                        mean: vec![0.0; p],
                        sd: vec![1.0; p],
                    };
                    for (j, m) in moments.iter().enumerate() {
                        s.mean[j + 1] = m.mean();
                        s.sd[j + 1] = m.variance().sqrt();
                    }
                    scaling = Some(s);
                    Some(Self::first_training(&spec))
                }
            }
            Stage::Histogram { edges, pass } => {
                let (bins, total) = Self::histogram_layout(&spec, edges);
                let moments = self.moments.clone().unwrap_or_default();
                if sum.len() != total || moments.len() != edges.len() {
                    return Err(shape(format!(
                        "{} histogram and cross-tab counts",
                        sum.len()
                    )));
                }
                let count = |v: &[f64]| -> Vec<u64> {
                    v.iter().map(|c| c.round().max(0.0) as u64).collect()
                };
                let hist_len: usize = bins.iter().sum();
                let tabs: usize = spec.algorithm.crosstab.values().map(|l| l.len() * 2).sum();
                let votes_at = hist_len + tabs;
                let votes_len: usize = bins.iter().map(|b| b.saturating_sub(1)).sum();
                let flags = count(&sum[votes_at + votes_len..votes_at + votes_len + bins.len()]);
                let tab_flags = count(&sum[votes_at + votes_len + bins.len()..]);
                // Some site withheld a histogram: merge the bins any site asked to merge and
                // ask again (once suffices: every site's groups are unions of the new bins; a
                // second pass covers sites whose whole column is below the cell minimum).
                let mut at = votes_at;
                let mut merged_any = false;
                let new_edges: Vec<Vec<f64>> = edges
                    .iter()
                    .zip(&bins)
                    .map(|(e, b)| {
                        let v = &sum[at..at + b.saturating_sub(1)];
                        at += b.saturating_sub(1);
                        let remove: Vec<bool> = v.iter().map(|x| x.round() > 0.0).collect();
                        merged_any |= remove.iter().any(|&r| r);
                        stats::merged_edges(e, &remove)
                    })
                    .collect();
                if flags.iter().any(|&f| f > 0) && merged_any && *pass < 2 {
                    Some(Stage::Histogram {
                        edges: new_edges,
                        pass: pass + 1,
                    })
                } else {
                    self.moments = None;
                    let mut at = hist_len;
                    for (feature, levels) in &spec.algorithm.crosstab {
                        let k = levels.len() * 2;
                        crosstabs.push(CrossTab {
                            feature: feature.clone(),
                            levels: levels.clone(),
                            counts: count(&sum[at..at + k]),
                            sites: sites.saturating_sub(tab_flags[crosstabs.len()] as usize),
                            round_site_ids: site_ids.to_vec(),
                        });
                        at += k;
                    }
                    let mut from = 0;
                    statistics = spec
                        .data
                        .features
                        .iter()
                        .zip(edges)
                        .zip(&moments)
                        .enumerate()
                        .map(|(j, ((f, e), m))| {
                            let counts = count(&sum[from..from + bins[j]]);
                            from += bins[j];
                            FeatureStatistics {
                                feature: f.clone(),
                                n: m.n,
                                mean: m.mean(),
                                sd: m.variance().sqrt(),
                                q25: stats::quantile(e, &counts, 0.25),
                                median: stats::quantile(e, &counts, 0.5),
                                q75: stats::quantile(e, &counts, 0.75),
                                edges: e.clone(),
                                counts,
                                moment_sites: self.moment_sites,
                                histogram_sites: sites.saturating_sub(flags[j] as usize),
                                moment_site_ids: self.moment_site_ids.clone(),
                                histogram_round_site_ids: site_ids.to_vec(),
                                bins_merged: *pass > 0,
                            }
                        })
                        .collect();
                    None
                }
            }
            Stage::Newton { iteration, beta } => {
                let total = NewtonSummary::from_vec(p, sum)?;
                if total.n > 0 {
                    record.loss = Some(total.loss / total.n as f64);
                }
                let (next, done) = if spec.algorithm.kind == AlgorithmKind::NewtonLinear {
                    (
                        regression::linear_solve(&total, spec.algorithm.ridge)?,
                        true,
                    )
                } else {
                    let b = regression::newton_update(beta, &total, spec.algorithm.ridge)?;
                    let change = max_change(beta, &b);
                    record.change = Some(change);
                    let done =
                        change < spec.algorithm.tolerance || iteration + 1 >= spec.run.rounds;
                    (b, done)
                };
                if done {
                    self.after_training(next, &mut final_params)
                } else {
                    Some(Stage::Newton {
                        iteration: iteration + 1,
                        beta: next,
                    })
                }
            }
            Stage::Train { iteration, params } => {
                let total = WeightedUpdate::from_vec(sum)?;
                let next = fedavg::average(&total)?;
                if next.len() != params.len() {
                    return Err(shape(format!(
                        "{} parameters, not {}",
                        next.len(),
                        params.len()
                    )));
                }
                record.change = Some(max_change(params, &next));
                if iteration + 1 >= spec.run.rounds {
                    self.after_training(next, &mut final_params)
                } else {
                    Some(Stage::Train {
                        iteration: iteration + 1,
                        params: next,
                    })
                }
            }
            Stage::Evaluate { params } => {
                let bins = spec.run.evaluation_bins;
                let b = BinnedScores::from_vec(bins, sum)?;
                final_params = params.clone();
                evaluation = Some(Evaluation {
                    overall: overall(&b, &metrics),
                    per_site: metrics,
                });
                None
            }
        };
        self.history.push(record);
        self.step = next.map(|stage| Step {
            round: step.round + 1,
            stage,
            scaling: scaling.clone(),
        });
        if self.step.is_none() {
            self.finish(final_params, scaling, (statistics, crosstabs), evaluation);
        }
        Ok(())
    }

    /// After the last training step: evaluate, or finish with these parameters.
    fn after_training(&self, params: Vec<f64>, last: &mut Vec<f64>) -> Option<Stage> {
        if self.spec.run.evaluate && self.spec.classifies() && self.spec.privacy.dp.is_none() {
            Some(Stage::Evaluate { params })
        } else {
            *last = params;
            None
        }
    }

    fn finish(
        &mut self,
        params: Vec<f64>,
        scaling: Option<Scaling>,
        (statistics, crosstabs): (Vec<FeatureStatistics>, Vec<CrossTab>),
        evaluation: Option<Evaluation>,
    ) {
        let spec = &self.spec;
        let model = match spec.algorithm.kind {
            AlgorithmKind::Statistics => None,
            AlgorithmKind::NewtonLogistic | AlgorithmKind::NewtonLinear => {
                Some(ModelKind::Logistic)
            }
            _ => Some(spec.model_kind()),
        };
        self.result = Some(RunResult {
            algorithm: spec.algorithm.kind.name().into(),
            label: spec.data.label.clone(),
            features: spec.data.features.clone(),
            model,
            params,
            scaling,
            statistics,
            crosstabs,
            evaluation,
            epsilon: spec.epsilon(),
            delta: spec.privacy.dp.as_ref().map(|d| d.delta),
            rounds: self.history.len() as u64,
            warnings: Vec::new(),
        });
        let warnings = self.warnings();
        if let Some(r) = &mut self.result {
            r.warnings = warnings;
        }
    }

    /// What the finished result must say about itself.
    fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let spec = &self.spec;
        let Some(r) = &self.result else {
            return w;
        };
        if spec.privacy.dp.is_some() {
            if spec.data.standardise {
                w.push("differential privacy: features were not standardised (a moments round has no bounded sensitivity for a whole site's table, so none was released); the model is on the features as given".into());
            }
            if spec.run.evaluate && spec.classifies() {
                w.push("differential privacy: no evaluation was released (per-site metrics and score bins have no bounded sensitivity for a whole site's table)".into());
            }
        }
        let names = |ids: &[String]| ids.join(", ");
        for f in &r.statistics {
            if f.moment_site_ids != f.histogram_round_site_ids
                || f.histogram_sites != f.histogram_round_site_ids.len()
            {
                w.push(format!(
                    "feature {:?}: n, mean and sd cover {} site(s) ({}); the histogram and quartiles {} of the {} site(s) of their round ({}){}",
                    f.feature,
                    f.moment_sites,
                    names(&f.moment_site_ids),
                    f.histogram_sites,
                    f.histogram_round_site_ids.len(),
                    names(&f.histogram_round_site_ids),
                    if f.histogram_sites < f.histogram_round_site_ids.len() {
                        "; which of them withheld it secure aggregation hides"
                    } else {
                        ""
                    }
                ));
            }
            if f.bins_merged {
                w.push(format!(
                    "feature {:?}: neighbouring bins were merged ({} of the {} asked for) so that every site's bins hold none or at least its minimum cell count",
                    f.feature,
                    f.counts.len(),
                    spec.algorithm.histogram_bins
                ));
            }
        }
        if self
            .history
            .windows(2)
            .any(|h| h[0].site_ids != h[1].site_ids)
        {
            let per: Vec<String> = self
                .history
                .iter()
                .map(|h| format!("{} {}: {}", h.stage, h.round, names(&h.site_ids)))
                .collect();
            w.push(format!(
                "rounds cover different sites (sites dropped or withheld): {}",
                per.join("; ")
            ));
        }
        for t in &r.crosstabs {
            if t.sites != t.round_site_ids.len() {
                w.push(format!(
                    "cross-tab {:?} covers {} of {} site(s) ({}): the others hold a cell below their minimum and withheld it; which ones secure aggregation hides",
                    t.feature,
                    t.sites,
                    t.round_site_ids.len(),
                    names(&t.round_site_ids)
                ));
            }
        }
        w
    }
}

fn max_change(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn overall(b: &BinnedScores, per_site: &BTreeMap<String, Metrics>) -> Overall {
    // Scores of 0.5 and above fall in the upper half of the bins (the bin count is even).
    let half = b.positives.len() / 2;
    let tp: u64 = b.positives[half..].iter().sum();
    let fneg: u64 = b.positives[..half].iter().sum();
    let tn: u64 = b.negatives[..half].iter().sum();
    let fp: u64 = b.negatives[half..].iter().sum();
    let n = tp + fneg + tn + fp;
    let ratio = |a: u64, d: u64| {
        if d == 0 {
            f64::NAN
        } else {
            a as f64 / d as f64
        }
    };
    Overall {
        n,
        accuracy: ratio(tp + tn, n),
        sensitivity: ratio(tp, tp + fneg),
        specificity: ratio(tn, tn + fp),
        auc: b.auc(),
        calibration: b.calibration(),
        mean_site_accuracy: (!per_site.is_empty())
            .then(|| per_site.values().map(|m| m.accuracy).sum::<f64>() / per_site.len() as f64),
    }
}

/// For comparison only (the rows of every site in one place, which a federated run never
/// does): logistic regression by Newton on the pooled training rows of `sites`, standardised
/// with `scaling`, or else with the pooled mean and standard deviation of those rows. Returns
/// the coefficients and the scaling used.
pub fn pooled_newton(
    spec: &StudySpec,
    sites: &[SiteData],
    scaling: Option<&Scaling>,
) -> Result<(Vec<f64>, Scaling), FederatedError> {
    let pooled = Design::concat(&sites.iter().map(|s| &s.train).collect::<Vec<_>>());
    let (p, n) = (pooled.width(), pooled.rows() as f64);
    let s = match scaling {
        Some(s) => s.clone(),
        None => {
            let mut s = Scaling {
                mean: vec![0.0; p],
                sd: vec![1.0; p],
            };
            if spec.data.standardise {
                for j in 1..p {
                    let col = pooled.x.iter().map(|x| x[j]);
                    s.mean[j] = col.clone().sum::<f64>() / n;
                    s.sd[j] =
                        (col.map(|v| (v - s.mean[j]).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
                }
            }
            s
        }
    };
    let d = scaled(&pooled, &Some(s.clone()));
    let open = Disclosure {
        min_rows: 0,
        min_cell: 0,
    };
    let fit = regression::newton_fit(
        p,
        spec.algorithm.ridge,
        100,
        spec.algorithm.tolerance,
        |b| regression::logistic_site_step(&d, b, &open),
    )?;
    Ok((fit.beta, s))
}

/// Accuracy (threshold 0.5) of a model on one site's test rows, for comparisons.
pub fn test_accuracy(
    spec: &StudySpec,
    params: &[f64],
    scaling: &Option<Scaling>,
    site: &SiteData,
) -> f64 {
    let d = scaled(&site.test, scaling);
    let scores = predict_all(spec, params, &d);
    let right = scores
        .iter()
        .zip(&d.y)
        .filter(|(s, y)| (**s >= 0.5) == (**y > 0.5))
        .count();
    right as f64 / d.rows().max(1) as f64
}
