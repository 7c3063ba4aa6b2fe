//! What `medfed ml`'s commands do, as library calls over a manifest of cases: train a U-Net from
//! a spec (checkpointed every epoch, resumed after a kill), evaluate it per case, predict label
//! maps on the images' own grids, fine-tune a trained model's unfrozen layers on local cases,
//! and run the two-network cascade. The binary adds the progress bar and the report files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_model, load_optimizer, save_model, save_optimizer};
use crate::dataset::{
    ManifestCase, PreparedCase, Preprocess, Split, nearest, pad_to, prepare, read_manifest, unpad,
};
use crate::metrics::{dice, hd95, iou, surface_dice};
use crate::model_file::{self, DataSummary, EpochMetrics, FinetuneRecord, ModelCard};
use crate::sample::Sample;
use crate::train::{TrainConfig, Trainer, predict};
use crate::unet::{UNet3d, UNetConfig};
use crate::{Device, MlError, Result};

/// A training run as written in `SPEC.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// The cases (CSV: id,image,label,split); relative to the spec file's folder.
    pub manifest: PathBuf,
    #[serde(default)]
    pub preprocess: Preprocess,
    pub model: UNetConfig,
    pub train: TrainConfig,
}

impl TrainSpec {
    /// Reads and checks a spec; the manifest path is resolved against the spec's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| MlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut spec: TrainSpec = toml::from_str(&text)
            .map_err(|e| MlError::Config(format!("{}: {e}", path.display())))?;
        if spec.manifest.is_relative() {
            spec.manifest = path.parent().unwrap_or(Path::new(".")).join(&spec.manifest);
        }
        spec.preprocess.validate()?;
        spec.model.validate()?;
        spec.model.check_spatial(&spec.train.patch)?;
        Ok(spec)
    }
}

/// Reads the manifest's cases of `splits`, prepared as `pre` says.
pub fn prepare_split(
    manifest: &Path,
    splits: &[Split],
    pre: &Preprocess,
    classes: usize,
    need_labels: bool,
) -> Result<Vec<PreparedCase>> {
    let cases: Vec<ManifestCase> = read_manifest(manifest)?
        .into_iter()
        .filter(|c| splits.contains(&c.split))
        .collect();
    cases
        .iter()
        .map(|c| {
            if need_labels && c.label.is_none() {
                return Err(MlError::Data(format!(
                    "{}: case {} has no label",
                    manifest.display(),
                    c.id
                )));
            }
            prepare(c, pre, classes)
        })
        .collect()
}

/// Counts of `cases` per split and training voxels per class; no identifiers.
pub fn summarise(cases: &[PreparedCase], classes: usize) -> DataSummary {
    let mut s = DataSummary {
        cases: BTreeMap::new(),
        voxels_per_class: vec![0; classes],
    };
    for c in cases {
        *s.cases.entry(c.split).or_default() += 1;
        if c.split == Split::Train {
            for &l in &c.sample.label {
                if let Some(n) = s.voxels_per_class.get_mut(usize::from(l)) {
                    *n += 1;
                }
            }
        }
    }
    s
}

/// Class labels of `case` on its working grid: the sample padded to at least the patch,
/// predicted by sliding windows, and cut back.
pub fn predict_working(
    model: &UNet3d,
    card: &ModelCard,
    sample: &Sample,
    device: &Device,
) -> Result<Vec<u8>> {
    let padded = pad_for(sample, card.patch)?;
    let labels = predict(model, &card.network, &padded, card.patch, device)?;
    Ok(unpad(&labels, padded.dims, sample.dims))
}

fn pad_for(s: &Sample, patch: [usize; 3]) -> Result<Sample> {
    let fill = s.image.iter().copied().fold(f32::INFINITY, f32::min);
    pad_to(s, patch, if fill.is_finite() { fill } else { 0.0 })
}

/// Working-grid labels carried back to the case's source grid (nearest neighbour).
pub fn to_source_grid(labels: &[u8], case: &PreparedCase) -> Vec<u8> {
    let v = medfed_volume::Volume {
        geometry: case.grid,
        data: labels.to_vec(),
    };
    nearest(&v, &case.source_grid).data
}

/// Mean foreground Dice of `model` over `cases` on their working grids.
fn mean_dice(
    model: &UNet3d,
    card: &ModelCard,
    cases: &[PreparedCase],
    device: &Device,
) -> Result<f64> {
    let mut total = 0.0;
    for c in cases {
        let p = predict_working(model, card, &c.sample, device)?;
        total += foreground_dice(&p, &c.sample.label, card.network.classes);
    }
    Ok(total / cases.len().max(1) as f64)
}

fn foreground_dice(pred: &[u8], truth: &[u8], classes: usize) -> f64 {
    let fg = (1..classes)
        .map(|k| dice(pred, truth, k as u8))
        .sum::<f64>();
    fg / (classes - 1) as f64
}

/// What [`train`] reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// Cases read and prepared.
    Prepared(DataSummary),
    /// A checkpoint was found; training goes on from this epoch.
    Resumed { next_epoch: usize },
    /// One optimizer step of the current epoch is done.
    Step,
    /// An epoch is done (its loss and validation Dice).
    Epoch(EpochMetrics),
}

#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    spec: String,
    next_epoch: usize,
    history: Vec<EpochMetrics>,
}

const CHECKPOINT: &str = "checkpoint";
/// The trained model inside a run's output folder.
pub const MODEL_FILE: &str = "model.safetensors";

/// Trains the spec's network; writes `out/model.safetensors` at the end and a checkpoint after
/// every epoch under `out/checkpoint/`, from which a killed run resumes exactly (same patches,
/// same weights as without the interruption). A checkpoint of another spec is refused, not
/// overwritten.
pub fn train(
    spec: &TrainSpec,
    out: &Path,
    device: &Device,
    mut on: impl FnMut(TrainEvent),
) -> Result<ModelCard> {
    let classes = spec.model.classes;
    let cases = prepare_split(
        &spec.manifest,
        &[Split::Train, Split::Validation],
        &spec.preprocess,
        classes,
        true,
    )?;
    let summary = summarise(&cases, classes);
    on(TrainEvent::Prepared(summary.clone()));
    let (train_cases, val_cases): (Vec<_>, Vec<_>) =
        cases.into_iter().partition(|c| c.split == Split::Train);
    if train_cases.is_empty() {
        return Err(MlError::Data(format!(
            "{}: no case with split train",
            spec.manifest.display()
        )));
    }
    let samples = train_cases
        .iter()
        .map(|c| pad_for(&c.sample, spec.train.patch))
        .collect::<Result<Vec<_>>>()?;
    let mut card = ModelCard::new(
        spec.model.clone(),
        spec.preprocess.clone(),
        spec.train.clone(),
        summary,
    );
    let mut trainer = Trainer::new(&spec.model, &spec.train, device)?;
    // A checkpoint resumes under the same spec, whatever the epoch count: a run can be
    // extended by raising `epochs`.
    let mut keyed = spec.clone();
    keyed.train.epochs = 0;
    run_epochs(
        &mut trainer,
        &samples,
        &val_cases,
        &mut card,
        spec_key(&keyed)?,
        out,
        device,
        &mut on,
    )?;
    model_file::save(&trainer.model, &card, &out.join(MODEL_FILE))?;
    Ok(card)
}

fn spec_key<T: Serialize>(t: &T) -> Result<String> {
    serde_json::to_string(t).map_err(|e| MlError::Config(e.to_string()))
}

/// Runs the remaining epochs of `trainer.train`'s count, resuming from `out/checkpoint` when it
/// holds a run of the same `key`; appends to `card.history`.
#[allow(clippy::too_many_arguments)]
fn run_epochs(
    trainer: &mut Trainer,
    samples: &[Sample],
    validation: &[PreparedCase],
    card: &mut ModelCard,
    key: String,
    out: &Path,
    device: &Device,
    on: &mut impl FnMut(TrainEvent),
) -> Result<Vec<EpochMetrics>> {
    let dir = out.join(CHECKPOINT);
    let progress_path = dir.join("progress.json");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MlError::Io { path, source }
    };
    let mut history = Vec::new();
    if progress_path.exists() {
        let text = std::fs::read_to_string(&progress_path).map_err(io(&progress_path))?;
        let p: Progress = serde_json::from_str(&text).map_err(|e| MlError::Record {
            path: progress_path.clone(),
            message: e.to_string(),
        })?;
        if p.spec != key {
            return Err(MlError::Config(format!(
                "{} holds the checkpoint of another run; give another output folder or remove it",
                dir.display()
            )));
        }
        let at = dir.join(epoch_dir(p.next_epoch));
        trainer.model = load_model(trainer.model.clone(), &at.join("model.bpk"))?;
        trainer.optim = load_optimizer(trainer.optim.clone(), &at.join("optim.bpk"))?;
        trainer.next_epoch = p.next_epoch;
        history = p.history;
        on(TrainEvent::Resumed {
            next_epoch: p.next_epoch,
        });
    }
    let epochs = card.train.epochs;
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    while trainer.next_epoch < epochs {
        let report = trainer.epoch_with(samples, || on(TrainEvent::Step))?;
        let validation_dice = if validation.is_empty() {
            None
        } else {
            Some(mean_dice(&trainer.model, card, validation, device)?)
        };
        let m = EpochMetrics {
            epoch: report.epoch,
            loss: report.loss,
            validation_dice,
        };
        history.push(m.clone());
        // The epoch's files go to a folder of their own; progress.json names it last, so a kill
        // at any point leaves the previous complete checkpoint in force.
        let at = dir.join(epoch_dir(trainer.next_epoch));
        std::fs::create_dir_all(&at).map_err(io(&at))?;
        save_model(&trainer.model, &at.join("model.bpk"))?;
        save_optimizer(&trainer.optim, &at.join("optim.bpk"))?;
        let p = Progress {
            spec: key.clone(),
            next_epoch: trainer.next_epoch,
            history: history.clone(),
        };
        let json = serde_json::to_vec_pretty(&p).map_err(|e| MlError::Config(e.to_string()))?;
        medfed_durable::write_atomically(&progress_path, &json, medfed_durable::Publish::REPLACE)
            .map_err(io(&progress_path))?;
        let previous = dir.join(epoch_dir(trainer.next_epoch - 1));
        if previous != at {
            let _ = std::fs::remove_dir_all(previous);
        }
        on(TrainEvent::Epoch(m));
    }
    card.history.extend(history.iter().cloned());
    Ok(history)
}

fn epoch_dir(next_epoch: usize) -> String {
    format!("after-epoch-{next_epoch:04}")
}

/// Metrics of one case, measured on the image's own grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseMetrics {
    pub id: String,
    pub split: Split,
    pub class: u8,
    pub dice: f64,
    pub iou: f64,
    /// `None` when the prediction or the truth is empty.
    pub hd95_mm: Option<f64>,
    pub surface_dice: f64,
}

/// Tolerance of the surface Dice: one voxel of the coarsest axis, at least 1 mm.
fn tolerance(g: &medfed_volume::Geometry) -> f64 {
    g.spacing.iter().copied().fold(1.0, f64::max)
}

/// Per-case, per-class metrics of a prediction on the source grid against the case's truth.
pub fn case_metrics(pred: &[u8], case: &PreparedCase, classes: usize) -> Vec<CaseMetrics> {
    let g = case.source_grid;
    let dims = [g.dims[2], g.dims[1], g.dims[0]];
    let spacing = [g.spacing[2], g.spacing[1], g.spacing[0]];
    let truth = &case.source_label;
    (1..classes as u8)
        .map(|k| CaseMetrics {
            id: case.id.clone(),
            split: case.split,
            class: k,
            dice: dice(pred, truth, k),
            iou: iou(pred, truth, k),
            hd95_mm: hd95(pred, truth, k, dims, spacing),
            surface_dice: surface_dice(pred, truth, k, dims, spacing, tolerance(&g)),
        })
        .collect()
}

/// Mean of `values` with a 95 % percentile bootstrap interval (2,000 resamples, fixed seed, so
/// the report is reproducible); the interval is the mean itself for fewer than two values.
pub fn mean_with_ci(values: &[f64]) -> (f64, f64, f64) {
    use rand::{Rng, SeedableRng};
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, mean, mean);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    let mut means: Vec<f64> = (0..2000)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    (mean, means[50], means[1949])
}

/// Evaluates the model at `model_path` on the manifest's cases of `splits`.
pub fn evaluate(
    model_path: &Path,
    manifest: &Path,
    splits: &[Split],
    device: &Device,
    mut on_case: impl FnMut(),
) -> Result<Vec<CaseMetrics>> {
    let (model, card) = model_file::load(model_path, device)?;
    let cases = prepare_split(
        manifest,
        splits,
        &card.preprocess,
        card.network.classes,
        true,
    )?;
    let mut out = Vec::new();
    for c in &cases {
        let p = to_source_grid(&predict_working(&model, &card, &c.sample, device)?, c);
        out.extend(case_metrics(&p, c, card.network.classes));
        on_case();
    }
    Ok(out)
}

/// Label maps on each case's source grid, by the model at `model_path`.
pub fn predict_cases(
    model_path: &Path,
    manifest: &Path,
    splits: &[Split],
    device: &Device,
    mut each: impl FnMut(&PreparedCase, medfed_volume::Volume<u16>) -> Result<()>,
) -> Result<()> {
    let (model, card) = model_file::load(model_path, device)?;
    let cases = prepare_split(
        manifest,
        splits,
        &card.preprocess,
        card.network.classes,
        false,
    )?;
    for c in &cases {
        let p = to_source_grid(&predict_working(&model, &card, &c.sample, device)?, c);
        let v = medfed_volume::Volume {
            geometry: c.source_grid,
            data: p.into_iter().map(u16::from).collect(),
        };
        each(c, v)?;
    }
    Ok(())
}

/// What fine-tuning changed: mean foreground Dice per split before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FinetuneReport {
    pub before: BTreeMap<Split, f64>,
    pub after: BTreeMap<Split, f64>,
    pub card: ModelCard,
}

/// How a fine-tuning run goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneSpec {
    /// Encoder levels to freeze (the bottom block too when greater than the network's depth).
    pub frozen_levels: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub learning_rate: f64,
    pub seed: u64,
}

/// Retrains the unfrozen layers of the model at `base` on the manifest's train cases (the
/// base model's preprocessing and patch), measuring every split before and after; writes the
/// tuned model (its card records the step) and checkpoints under `out`.
pub fn finetune(
    base: &Path,
    manifest: &Path,
    how: &FinetuneSpec,
    out: &Path,
    device: &Device,
    mut on: impl FnMut(TrainEvent),
) -> Result<FinetuneReport> {
    let (model, mut card) = model_file::load(base, &device.clone().autodiff())?;
    let classes = card.network.classes;
    let cases = prepare_split(
        manifest,
        &[Split::Train, Split::Validation, Split::Test],
        &card.preprocess,
        classes,
        true,
    )?;
    let summary = summarise(&cases, classes);
    on(TrainEvent::Prepared(summary.clone()));
    let by_split = |m: &UNet3d, card: &ModelCard| -> Result<BTreeMap<Split, f64>> {
        let mut r = BTreeMap::new();
        for split in [Split::Train, Split::Validation, Split::Test] {
            let of: Vec<PreparedCase> =
                cases.iter().filter(|c| c.split == split).cloned().collect();
            if !of.is_empty() {
                r.insert(split, mean_dice(m, card, &of, device)?);
            }
        }
        Ok(r)
    };
    let before = by_split(&model, &card)?;
    let samples = cases
        .iter()
        .filter(|c| c.split == Split::Train)
        .map(|c| pad_for(&c.sample, card.patch))
        .collect::<Result<Vec<_>>>()?;
    if samples.is_empty() {
        return Err(MlError::Data(format!(
            "{}: no case with split train to tune on",
            manifest.display()
        )));
    }
    let validation: Vec<PreparedCase> = cases
        .iter()
        .filter(|c| c.split == Split::Validation)
        .cloned()
        .collect();
    let tune = TrainConfig {
        epochs: how.epochs,
        steps_per_epoch: how.steps_per_epoch,
        learning_rate: how.learning_rate,
        seed: how.seed,
        ..card.train.clone()
    };
    let mut trainer = Trainer::from_model(
        model.freeze_encoder(how.frozen_levels),
        &card.network,
        &tune,
        device,
    )?;
    let mut tuned_card = card.clone();
    tuned_card.train = tune;
    tuned_card.history.clear();
    let key = spec_key(&(spec_key(&card)?, how, manifest))?;
    let history = run_epochs(
        &mut trainer,
        &samples,
        &validation,
        &mut tuned_card,
        key,
        out,
        device,
        &mut on,
    )?;
    card.finetuned.push(FinetuneRecord {
        frozen_levels: how.frozen_levels,
        data: summary,
        history,
    });
    let after = by_split(&trainer.model, &card)?;
    model_file::save(&trainer.model, &card, &out.join(MODEL_FILE))?;
    Ok(FinetuneReport {
        before,
        after,
        card,
    })
}

/// The cascade's result for one case, on its source grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CascadeCase {
    pub id: String,
    pub split: Split,
    pub lesion_fraction: f64,
    /// With a label: the first model's Dice, the second's, and the lesion fraction of the
    /// truth (each model's card says how the label file maps to its classes).
    pub organ_dice: Option<f64>,
    pub lesion_dice: Option<f64>,
    pub true_lesion_fraction: Option<f64>,
}

/// Runs the organ model, then the lesion model on the image inside the organ mask; both models
/// must work on the same grid (the same resampling spacing).
pub fn cascade(
    organ: &Path,
    lesion: &Path,
    manifest: &Path,
    splits: &[Split],
    device: &Device,
    mut each: impl FnMut(&CascadeCase, &PreparedCase, &[u8], &[u8]) -> Result<()>,
) -> Result<Vec<CascadeCase>> {
    let (m1, c1) = model_file::load(organ, device)?;
    let (m2, c2) = model_file::load(lesion, device)?;
    if c1.preprocess.spacing != c2.preprocess.spacing {
        return Err(MlError::Config(format!(
            "the two models resample to different spacings ({:?} and {:?}); the cascade needs one grid",
            c1.preprocess.spacing, c2.preprocess.spacing
        )));
    }
    let cases: Vec<ManifestCase> = read_manifest(manifest)?
        .into_iter()
        .filter(|c| splits.contains(&c.split))
        .collect();
    if c1.network.classes != 2 || c2.network.classes != 2 {
        return Err(MlError::Config(
            "the cascade takes two binary networks (2 classes each, background included)".into(),
        ));
    }
    // The second network sees the image inside the first one's mask only, never the truth's.
    let lesion_pre = Preprocess {
        restrict_training_to: None,
        ..c2.preprocess.clone()
    };
    let mut out = Vec::new();
    for case in &cases {
        let a = prepare(case, &c1.preprocess, c1.network.classes)?;
        let b = prepare(case, &lesion_pre, c2.network.classes)?;
        let organ_mask = predict_working(&m1, &c1, &a.sample, device)?;
        let inside = crate::cascade::restrict(&b.sample, &organ_mask)?;
        let mut lesion_mask = predict_working(&m2, &c2, &inside, device)?;
        for (l, &o) in lesion_mask.iter_mut().zip(&organ_mask) {
            if o == 0 {
                *l = 0;
            }
        }
        let (organ_src, lesion_src) = (
            to_source_grid(&organ_mask, &a),
            to_source_grid(&lesion_mask, &b),
        );
        let fraction = |organ: &[u8], lesion: &[u8]| {
            let n = organ.iter().filter(|&&v| v != 0).count();
            let l = lesion
                .iter()
                .zip(organ)
                .filter(|&(&l, &o)| l != 0 && o != 0)
                .count();
            if n == 0 { 0.0 } else { l as f64 / n as f64 }
        };
        let labelled = !a.source_label.is_empty();
        let r = CascadeCase {
            id: case.id.clone(),
            split: case.split,
            lesion_fraction: fraction(&organ_src, &lesion_src),
            organ_dice: labelled.then(|| foreground_dice(&organ_src, &a.source_label, 2)),
            lesion_dice: labelled.then(|| foreground_dice(&lesion_src, &b.source_label, 2)),
            true_lesion_fraction: labelled.then(|| fraction(&a.source_label, &b.source_label)),
        };
        each(&r, &a, &organ_src, &lesion_src)?;
        out.push(r);
    }
    Ok(out)
}
