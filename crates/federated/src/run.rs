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
    Histogram { edges: Vec<Vec<f64>> },
    Newton { iteration: u64, beta: Vec<f64> },
    Train { iteration: u64, params: Vec<f64> },
    Evaluate { params: Vec<f64> },
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
        let (train, test) = match split {
            Some(s) => (
                table.select(|i| texts[i] == s.train),
                Some(table.select(|i| texts[i] == s.test)),
            ),
            None => (table, None),
        };
        let train = train.design(&d.features, &d.label)?;
        let test = match test {
            Some(t) => t.design(&d.features, &d.label)?,
            None => train.clone(),
        };
        let columns = (1..train.width())
            .map(|j| train.x.iter().map(|x| x[j]).collect())
            .collect();
        Ok(SiteData {
            train,
            test,
            columns,
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
        Stage::Histogram { edges } => {
            if edges.len() != data.columns.len() {
                return Err(FederatedError::Shape("one edge list per feature".into()));
            }
            let mut v = Vec::new();
            for (c, e) in data.columns.iter().zip(edges) {
                v.extend(
                    stats::site_histogram(c, e, rules)?
                        .iter()
                        .map(|&k| k as f64),
                );
            }
            for (column, levels) in &spec.algorithm.crosstab {
                let j = spec.data.features.iter().position(|f| f == column);
                let col = j
                    .map(|j| &data.columns[j])
                    .ok_or_else(|| FederatedError::NoColumn(column.clone()))?;
                let counts =
                    stats::site_crosstab(col, &data.train.y, levels, &LABEL_LEVELS, rules)?;
                v.extend(counts.iter().map(|&k| k as f64));
            }
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
}

/// A pooled cross-tab of a feature's levels (rows) against the label's 0/1 (columns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossTab {
    pub feature: String,
    pub levels: Vec<f64>,
    /// Row-major: `counts[level * 2 + label]`.
    pub counts: Vec<u64>,
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
    /// Statistics: the moments, kept for the histogram step.
    #[serde(default)]
    moments: Option<Vec<stats::Moments>>,
}

fn shape(msg: String) -> FederatedError {
    FederatedError::Shape(msg)
}

impl Coordinator {
    pub fn new(spec: StudySpec) -> Coordinator {
        let first = if spec.data.standardise || spec.algorithm.kind == AlgorithmKind::Statistics {
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
        }
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

    /// Advance on the sum of `sites` releases for the current step; `metrics` are the sites'
    /// own evaluation figures (evaluate stage only), keyed by site id.
    pub fn advance(
        &mut self,
        sum: &[f64],
        sites: usize,
        metrics: BTreeMap<String, Metrics>,
    ) -> Result<(), FederatedError> {
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
                    Some(Stage::Histogram { edges })
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
            Stage::Histogram { edges } => {
                let moments = self.moments.take().unwrap_or_default();
                let bins = spec.algorithm.histogram_bins;
                let tabs: usize = spec.algorithm.crosstab.values().map(|l| l.len() * 2).sum();
                if sum.len() != bins * edges.len() + tabs || moments.len() != edges.len() {
                    return Err(shape(format!(
                        "{} histogram and cross-tab counts",
                        sum.len()
                    )));
                }
                let count = |v: &[f64]| -> Vec<u64> {
                    v.iter().map(|c| c.round().max(0.0) as u64).collect()
                };
                let mut at = bins * edges.len();
                for (feature, levels) in &spec.algorithm.crosstab {
                    let k = levels.len() * 2;
                    crosstabs.push(CrossTab {
                        feature: feature.clone(),
                        levels: levels.clone(),
                        counts: count(&sum[at..at + k]),
                    });
                    at += k;
                }
                statistics = spec
                    .data
                    .features
                    .iter()
                    .zip(edges)
                    .zip(&moments)
                    .enumerate()
                    .map(|(j, ((f, e), m))| {
                        let counts = count(&sum[j * bins..(j + 1) * bins]);
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
                        }
                    })
                    .collect();
                None
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
        if self.spec.run.evaluate && self.spec.classifies() {
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
        });
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
