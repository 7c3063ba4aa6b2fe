//! Cases for training, evaluation and prediction: a CSV manifest of cases (`id,image,label,split`),
//! each read through medfed-volume (a NIfTI image with a NIfTI label map, or a DICOM series
//! folder with a DICOM SEG or RTSTRUCT file), resampled to one voxel spacing, its intensities
//! normalised and its labels mapped to the network's classes.
//!
//! The grids stay in medfed-volume's order (x fastest); a [`Sample`]'s `[z, y, x]` dims are the
//! same voxels in the same memory order, so no copy is needed between the two.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use medfed_volume::{Geometry, Volume, dicom_series, nifti, rtstruct, seg};
use serde::{Deserialize, Serialize};

use crate::sample::Sample;
use crate::{MlError, Result};

/// Which part of a study a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl std::str::FromStr for Split {
    type Err = MlError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Ok(Self::Train),
            "val" | "valid" | "validation" => Ok(Self::Validation),
            "test" | "testing" => Ok(Self::Test),
            other => Err(MlError::Data(format!(
                "split {other:?}: expected train, validation or test"
            ))),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Train => "train",
            Self::Validation => "validation",
            Self::Test => "test",
        })
    }
}

/// One row of a manifest. Relative paths are resolved against the manifest's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestCase {
    /// The case's name in reports (never logged: manifests often name cases by MRN).
    pub id: String,
    /// A `.nii`/`.nii.gz` file or a folder holding one DICOM series.
    pub image: PathBuf,
    /// A NIfTI label map, DICOM SEG or RTSTRUCT on the image's grid; `None` for prediction.
    pub label: Option<PathBuf>,
    pub split: Split,
}

/// Reads a manifest: a CSV with a header naming `id`, `image` and `split`, and optionally
/// `label` (or `mask`). Duplicate ids, unknown splits and missing columns are errors naming the
/// line.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestCase>> {
    let bad = |m: String| MlError::Data(format!("{}: {m}", path.display()));
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| bad(e.to_string()))?;
    let header = r.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |names: &[&str]| {
        header
            .iter()
            .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
    };
    let (Some(id), Some(image), Some(split)) = (col(&["id"]), col(&["image"]), col(&["split"]))
    else {
        return Err(bad(format!(
            "the manifest needs columns id,image,split (and label for training); found {:?}",
            header.iter().collect::<Vec<_>>()
        )));
    };
    let label = col(&["label", "mask"]);
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (n, rec) in r.records().enumerate() {
        let line = n + 2;
        let rec = rec.map_err(|e| bad(format!("line {line}: {e}")))?;
        let field = |i: usize| rec.get(i).unwrap_or("");
        let case_id = field(id).to_string();
        if case_id.is_empty() || field(image).is_empty() {
            return Err(bad(format!("line {line}: empty id or image")));
        }
        if !seen.insert(case_id.clone()) {
            return Err(bad(format!("line {line}: id {case_id:?} appears twice")));
        }
        let split = field(split)
            .parse()
            .map_err(|e: MlError| bad(format!("line {line}: {e}")))?;
        out.push(ManifestCase {
            id: case_id,
            image: resolve(field(image)),
            label: label.map(field).filter(|l| !l.is_empty()).map(resolve),
            split,
        });
    }
    if out.is_empty() {
        return Err(bad("no cases".into()));
    }
    Ok(out)
}

/// How intensities are brought to the network's range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Intensity {
    /// A fixed window mapped to `[0, 1]` (CT: lung window centre -600, width 1500 HU).
    Window { centre: f32, width: f32 },
    /// The image's own `low`..`high` percentiles mapped to `[0, 1]`, clipped (MR, whose units
    /// differ between scanners).
    Percentile { low: f64, high: f64 },
    /// Zero mean, unit variance over the image.
    ZScore,
}

impl Default for Intensity {
    fn default() -> Self {
        Self::Percentile {
            low: 0.5,
            high: 99.5,
        }
    }
}

/// How stored label values become classes `0..classes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LabelRule {
    /// Every non-zero value is class 1 (a brain mask stored as tissue labels 4, 5, 6).
    #[default]
    Binary,
    /// The stored value is the class.
    Keep,
    /// `[stored, class]` pairs; values not listed are background.
    Map(Vec<[u16; 2]>),
}

impl LabelRule {
    fn class(&self, v: u16) -> u16 {
        match self {
            Self::Binary => u16::from(v != 0),
            Self::Keep => v,
            Self::Map(pairs) => pairs.iter().find(|p| p[0] == v).map_or(0, |p| p[1]),
        }
    }
}

/// What is done to every case before it reaches a network; stored with each model, so that
/// prediction prepares images exactly as training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Turn every image so that its grid axes run along the patient axes (L, P, S), as the
    /// same anatomy then lies the same way in every array whatever order the scanner stored it
    /// in (on by default).
    #[serde(default = "yes")]
    pub canonical_orientation: bool,
    /// Voxel spacing to resample to, mm along the grid's x, y, z; none keeps each image's own.
    #[serde(default)]
    pub spacing: Option<[f64; 3]>,
    #[serde(default)]
    pub intensity: Intensity,
    #[serde(default)]
    pub labels: LabelRule,
    /// For the second network of a cascade: while training, the image is kept only where the
    /// label maps to non-zero under this rule (the organ), 0 elsewhere, as the cascade will
    /// show it the image inside the first network's mask.
    #[serde(default)]
    pub restrict_training_to: Option<LabelRule>,
}

fn yes() -> bool {
    true
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            canonical_orientation: true,
            spacing: None,
            intensity: Intensity::default(),
            labels: LabelRule::default(),
            restrict_training_to: None,
        }
    }
}

impl Preprocess {
    /// Refuses settings that would make no image.
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = self.spacing
            && s.iter().any(|&v| !(v.is_finite() && v > 0.0))
        {
            return Err(MlError::Config(format!(
                "spacing {s:?}: each must be > 0 mm"
            )));
        }
        match self.intensity {
            Intensity::Window { centre, width } if !(centre.is_finite() && width > 0.0) => Err(
                MlError::Config(format!("window centre {centre}, width {width}")),
            ),
            Intensity::Percentile { low, high } if !(0.0 <= low && low < high && high <= 100.0) => {
                Err(MlError::Config(format!(
                    "percentiles {low}..{high}: need 0 <= low < high <= 100"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A case ready for a network, with the grids needed to put its predictions back.
#[derive(Debug, Clone)]
pub struct PreparedCase {
    pub id: String,
    pub split: Split,
    /// Normalised image and classes on the working grid.
    pub sample: Sample,
    /// The working grid (after resampling).
    pub grid: Geometry,
    /// The image's own grid, where outputs are written and metrics measured.
    pub source_grid: Geometry,
    /// Classes on the source grid (empty when unlabelled).
    pub source_label: Vec<u8>,
}

/// Reads, resamples and normalises one case; `classes` bounds the mapped labels.
pub fn prepare(case: &ManifestCase, pre: &Preprocess, classes: usize) -> Result<PreparedCase> {
    pre.validate()?;
    let image = read_image(&case.image)?;
    let labels = match &case.label {
        Some(p) => Some(read_label_map(p, &image.geometry)?),
        None => None,
    };
    prepare_volumes(case, &image, labels.as_ref(), pre, classes)
}

/// [`prepare`] on volumes already in memory (the synthetic generators' output).
pub fn prepare_volumes(
    case: &ManifestCase,
    image: &Volume<f32>,
    labels: Option<&Volume<u16>>,
    pre: &Preprocess,
    classes: usize,
) -> Result<PreparedCase> {
    let source_grid = image.geometry;
    let source_label = match labels {
        Some(l) => map_labels(&l.data, &pre.labels, classes, &case.id)?,
        None => Vec::new(),
    };
    let (image, labels) = if pre.canonical_orientation {
        (canonical(image), labels.map(canonical))
    } else {
        (image.clone(), labels.cloned())
    };
    let (image, labels) = match pre.spacing {
        Some(s) => (
            resample_image(&image, s),
            labels.map(|l| resample_labels(&l, &image.geometry, s)),
        ),
        None => (image, labels),
    };
    let grid = image.geometry;
    let mut values = normalise(&image.data, &pre.intensity);
    if let (Some(rule), Some(l)) = (&pre.restrict_training_to, &labels) {
        for (v, &stored) in values.iter_mut().zip(&l.data) {
            if rule.class(stored) == 0 {
                *v = 0.0;
            }
        }
    }
    let classes_of = match &labels {
        Some(l) => map_labels(&l.data, &pre.labels, classes, &case.id)?,
        None => Vec::new(),
    };
    let [x, y, z] = grid.dims;
    Ok(PreparedCase {
        id: case.id.clone(),
        split: case.split,
        sample: Sample::new([z, y, x], values, classes_of)?,
        grid,
        source_grid,
        source_label,
    })
}

fn map_labels(stored: &[u16], rule: &LabelRule, classes: usize, id: &str) -> Result<Vec<u8>> {
    stored
        .iter()
        .map(|&v| {
            let c = rule.class(v);
            if usize::from(c) >= classes {
                Err(MlError::Data(format!(
                    "case {id}: label value {v} maps to class {c}, but the network has {classes} classes (background included); set [preprocess] labels"
                )))
            } else {
                Ok(c as u8)
            }
        })
        .collect()
}

fn is_nifti(p: &Path) -> bool {
    let s = p.to_string_lossy().to_ascii_lowercase();
    s.ends_with(".nii") || s.ends_with(".nii.gz")
}

/// A `.nii`/`.nii.gz` image or a DICOM series folder.
pub fn read_image(path: &Path) -> Result<Volume<f32>> {
    if path.is_dir() {
        Ok(dicom_series::read_series(path)?)
    } else if is_nifti(path) {
        Ok(nifti::read_image(path)?)
    } else {
        Err(MlError::Data(format!(
            "{}: an image is a .nii / .nii.gz file or a folder holding one DICOM series",
            path.display()
        )))
    }
}

/// A label map on `grid`: NIfTI (checked to lie on the grid), or DICOM SEG (segment `n` is
/// label `n`) or RTSTRUCT (the `k`-th ROI is label `k`, from 1), rasterised onto it.
pub fn read_label_map(path: &Path, grid: &Geometry) -> Result<Volume<u16>> {
    if is_nifti(path) {
        let l = nifti::read_labels(path)?;
        if !l.geometry.same_grid(grid, 1e-3 * grid.spacing[0].max(1.0)) {
            return Err(MlError::Data(format!(
                "{}: label grid {:?} (spacing {:?}) is not the image's {:?} (spacing {:?})",
                path.display(),
                l.geometry.dims,
                l.geometry.spacing,
                grid.dims,
                grid.spacing
            )));
        }
        return Ok(l);
    }
    let mut out = Volume::filled(*grid, 0u16);
    if let Ok(s) = seg::Segmentation::read(path) {
        for segment in &s.segments {
            let m = s.rasterise(segment.number, grid)?;
            paint(&mut out, &m, segment.number as u16);
        }
        return Ok(out);
    }
    let rois = rtstruct::read_structures(path).map_err(|e| {
        MlError::Data(format!(
            "{}: neither NIfTI, DICOM SEG nor a readable RTSTRUCT ({e})",
            path.display()
        ))
    })?;
    for (k, roi) in rois.iter().enumerate() {
        let m = rtstruct::rasterise(roi, grid)?;
        paint(&mut out, &m, (k + 1) as u16);
    }
    Ok(out)
}

fn paint(out: &mut Volume<u16>, mask: &Volume<u16>, label: u16) {
    for (o, &m) in out.data.iter_mut().zip(&mask.data) {
        if m != 0 {
            *o = label;
        }
    }
}

/// Intensities normalised as `how` says.
pub fn normalise(values: &[f32], how: &Intensity) -> Vec<f32> {
    match *how {
        Intensity::Window { centre, width } => {
            let lo = centre - width / 2.0;
            values
                .iter()
                .map(|&v| ((v - lo) / width).clamp(0.0, 1.0))
                .collect()
        }
        Intensity::Percentile { low, high } => {
            let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
            sorted.sort_by(f32::total_cmp);
            let at = |q: f64| {
                if sorted.is_empty() {
                    0.0
                } else {
                    sorted[((q / 100.0) * (sorted.len() - 1) as f64).round() as usize]
                }
            };
            let (lo, hi) = (at(low), at(high));
            let span = (hi - lo).max(f32::EPSILON);
            values
                .iter()
                .map(|&v| ((v - lo) / span).clamp(0.0, 1.0))
                .collect()
        }
        Intensity::ZScore => {
            let n = values.len().max(1) as f64;
            let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = values
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let sd = var.sqrt().max(1e-6);
            values
                .iter()
                .map(|&v| ((f64::from(v) - mean) / sd) as f32)
                .collect()
        }
    }
}

/// The grid covering the same extent as `g` with voxels of `spacing` (voxel centres placed so
/// that both grids' outer faces coincide as nearly as whole voxels allow).
pub fn resampled_grid(g: &Geometry, spacing: [f64; 3]) -> Geometry {
    let dims: [usize; 3] = std::array::from_fn(|k| {
        ((g.dims[k] as f64 * g.spacing[k] / spacing[k]).round() as usize).max(1)
    });
    // Index 0 of the new grid, in old voxel units.
    let start: [f64; 3] = std::array::from_fn(|k| 0.5 * spacing[k] / g.spacing[k] - 0.5);
    Geometry {
        dims,
        spacing,
        origin: g.world(start),
        direction: g.direction,
    }
}

/// Continuous index in `from` of each voxel centre of `to`, per axis (both grids share their
/// direction, so the axes are separable).
fn axis_map(from: &Geometry, to: &Geometry, k: usize) -> Vec<f64> {
    let o = from.continuous_index(to.origin)[k];
    (0..to.dims[k])
        .map(|i| o + i as f64 * to.spacing[k] / from.spacing[k])
        .collect()
}

/// `image` resampled trilinearly to `spacing` (edges clamped).
pub fn resample_image(image: &Volume<f32>, spacing: [f64; 3]) -> Volume<f32> {
    let from = image.geometry;
    let to = resampled_grid(&from, spacing);
    let lerp = |k: usize| -> Vec<(usize, usize, f32)> {
        let n = from.dims[k];
        axis_map(&from, &to, k)
            .into_iter()
            .map(|c| {
                let c = c.clamp(0.0, (n - 1) as f64);
                let i0 = c.floor() as usize;
                let i1 = (i0 + 1).min(n - 1);
                (i0, i1, (c - i0 as f64) as f32)
            })
            .collect()
    };
    let (ax, ay, az) = (lerp(0), lerp(1), lerp(2));
    let mut data = Vec::with_capacity(to.len());
    for &(z0, z1, wz) in &az {
        for &(y0, y1, wy) in &ay {
            for &(x0, x1, wx) in &ax {
                let v = |x, y, z| image.get(x, y, z);
                let c00 = v(x0, y0, z0) * (1.0 - wx) + v(x1, y0, z0) * wx;
                let c10 = v(x0, y1, z0) * (1.0 - wx) + v(x1, y1, z0) * wx;
                let c01 = v(x0, y0, z1) * (1.0 - wx) + v(x1, y0, z1) * wx;
                let c11 = v(x0, y1, z1) * (1.0 - wx) + v(x1, y1, z1) * wx;
                let c0 = c00 * (1.0 - wy) + c10 * wy;
                let c1 = c01 * (1.0 - wy) + c11 * wy;
                data.push(c0 * (1.0 - wz) + c1 * wz);
            }
        }
    }
    Volume { geometry: to, data }
}

/// `labels` on grid `from` resampled to `spacing` by nearest neighbour.
pub fn resample_labels(labels: &Volume<u16>, from: &Geometry, spacing: [f64; 3]) -> Volume<u16> {
    let to = resampled_grid(from, spacing);
    nearest(labels, &to)
}

/// `labels` carried onto grid `to` by nearest neighbour in world coordinates (any direction,
/// permuted or flipped axes included); voxels of `to` outside `labels`' grid take the nearest
/// edge voxel.
pub fn nearest<T: Copy>(labels: &Volume<T>, to: &Geometry) -> Volume<T> {
    let from = labels.geometry;
    // world(i) is affine in i, so the source index is too: its value at the origin plus one
    // step per axis of `to`.
    let at = |i: [f64; 3]| from.continuous_index(to.world(i));
    let o = at([0.0; 3]);
    let step: [[f64; 3]; 3] = std::array::from_fn(|k| {
        let mut e = [0.0; 3];
        e[k] = 1.0;
        let p = at(e);
        std::array::from_fn(|a| p[a] - o[a])
    });
    let clamp = |c: f64, a: usize| c.round().clamp(0.0, (from.dims[a] - 1) as f64) as usize;
    let mut data = Vec::with_capacity(to.len());
    for z in 0..to.dims[2] {
        for y in 0..to.dims[1] {
            for x in 0..to.dims[0] {
                let (fx, fy, fz) = (x as f64, y as f64, z as f64);
                let c: [usize; 3] = std::array::from_fn(|a| {
                    clamp(
                        o[a] + fx * step[0][a] + fy * step[1][a] + fz * step[2][a],
                        a,
                    )
                });
                data.push(labels.get(c[0], c[1], c[2]));
            }
        }
    }
    Volume {
        geometry: *to,
        data,
    }
}

/// `v` with its grid axes permuted and flipped so that axis `r` runs along world axis `r`
/// (L, P, S) in the positive direction; the voxels' world positions are unchanged.
pub fn canonical<T: Copy>(v: &Volume<T>) -> Volume<T> {
    let g = v.geometry;
    // For each world axis, the grid axis most nearly along it (largest components first, so
    // an oblique grid still gets a permutation).
    let mut pairs: Vec<(usize, usize)> = (0..3).flat_map(|r| (0..3).map(move |k| (r, k))).collect();
    pairs.sort_by(|a, b| {
        g.direction[b.0][b.1]
            .abs()
            .total_cmp(&g.direction[a.0][a.1].abs())
    });
    let (mut perm, mut taken_r, mut taken_k) = ([0usize; 3], [false; 3], [false; 3]);
    for (r, k) in pairs {
        if !taken_r[r] && !taken_k[k] {
            perm[r] = k;
            taken_r[r] = true;
            taken_k[k] = true;
        }
    }
    let flip: [bool; 3] = std::array::from_fn(|r| g.direction[r][perm[r]] < 0.0);
    if perm == [0, 1, 2] && flip == [false; 3] {
        return v.clone();
    }
    let dims: [usize; 3] = std::array::from_fn(|r| g.dims[perm[r]]);
    let old = |i: [usize; 3]| -> [usize; 3] {
        let mut o = [0; 3];
        for r in 0..3 {
            o[perm[r]] = if flip[r] { dims[r] - 1 - i[r] } else { i[r] };
        }
        o
    };
    let o0 = old([0; 3]);
    let geometry = Geometry {
        dims,
        spacing: std::array::from_fn(|r| g.spacing[perm[r]]),
        origin: g.world([o0[0] as f64, o0[1] as f64, o0[2] as f64]),
        direction: std::array::from_fn(|row| {
            std::array::from_fn(|r| {
                let d = g.direction[row][perm[r]];
                if flip[r] { -d } else { d }
            })
        }),
    };
    let mut data = Vec::with_capacity(g.len());
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let o = old([x, y, z]);
                data.push(v.get(o[0], o[1], o[2]));
            }
        }
    }
    Volume { geometry, data }
}

/// Pads `s` with `fill` (and background labels) at the far end of each axis up to `min` `[z, y,
/// x]`; returns the padded sample (its dims are the original ones where no padding was needed).
pub fn pad_to(s: &Sample, min: [usize; 3], fill: f32) -> Result<Sample> {
    let dims: [usize; 3] = std::array::from_fn(|k| s.dims[k].max(min[k]));
    if dims == s.dims {
        return Ok(s.clone());
    }
    let n = dims.iter().product();
    let mut image = vec![fill; n];
    let mut label = if s.label.is_empty() {
        Vec::new()
    } else {
        vec![0u8; n]
    };
    for z in 0..s.dims[0] {
        for y in 0..s.dims[1] {
            let from = s.index(z, y, 0);
            let to = (z * dims[1] + y) * dims[2];
            image[to..to + s.dims[2]].copy_from_slice(&s.image[from..from + s.dims[2]]);
            if !label.is_empty() {
                label[to..to + s.dims[2]].copy_from_slice(&s.label[from..from + s.dims[2]]);
            }
        }
    }
    Sample::new(dims, image, label)
}

/// The first `dims` `[z, y, x]` of `values` laid out on `padded` dims (undoes [`pad_to`]).
pub fn unpad(values: &[u8], padded: [usize; 3], dims: [usize; 3]) -> Vec<u8> {
    if padded == dims {
        return values.to_vec();
    }
    let mut out = Vec::with_capacity(dims.iter().product());
    for z in 0..dims[0] {
        for y in 0..dims[1] {
            let from = (z * padded[1] + y) * padded[2];
            out.extend_from_slice(&values[from..from + dims[2]]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_resolve_paths_and_refuse_what_is_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("cases.csv");
        std::fs::write(
            &m,
            "id,image,label,split\na,img/a.nii.gz,lab/a.nii.gz,train\nb,/abs/b.nii,,Test\n",
        )
        .unwrap();
        let cases = read_manifest(&m).unwrap();
        assert_eq!(cases[0].image, dir.path().join("img/a.nii.gz"));
        assert_eq!(cases[0].label, Some(dir.path().join("lab/a.nii.gz")));
        assert_eq!(cases[1].image, PathBuf::from("/abs/b.nii"));
        assert_eq!(
            (cases[1].label.clone(), cases[1].split),
            (None, Split::Test)
        );

        std::fs::write(&m, "id,image,split\na,x.nii,train\na,y.nii,test\n").unwrap();
        let e = read_manifest(&m).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("twice"), "{e}");
        std::fs::write(&m, "id,image,split\na,x.nii,holdout\n").unwrap();
        assert!(
            read_manifest(&m)
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
        std::fs::write(&m, "name,image\na,x.nii\n").unwrap();
        assert!(
            read_manifest(&m)
                .unwrap_err()
                .to_string()
                .contains("columns")
        );
    }

    #[test]
    fn resampling_keeps_the_extent_and_linear_ramps() {
        // A ramp along x on 1 mm voxels, resampled to 2 mm: each new voxel is the mean of the
        // two old centres it covers, and the grid spans the same 8 mm.
        let g = Geometry::new([8, 2, 2], [1.0, 1.0, 1.0]);
        let v = Volume {
            geometry: g,
            data: (0..32).map(|i| (i % 8) as f32).collect(),
        };
        let r = resample_image(&v, [2.0, 1.0, 1.0]);
        assert_eq!(r.geometry.dims, [4, 2, 2]);
        assert_eq!(&r.data[..4], &[0.5, 2.5, 4.5, 6.5]);
        assert!((r.geometry.origin[0] - 0.5).abs() < 1e-9);
        // Back to 1 mm by nearest neighbour lands on the same extent.
        let l = v.map(|x| x as u16);
        let coarse = resample_labels(&l, &g, [2.0, 1.0, 1.0]);
        let back = nearest(&coarse, &g);
        assert_eq!(back.geometry.dims, g.dims);
        assert!(
            back.data
                .iter()
                .zip(&l.data)
                .all(|(&a, &b)| a.abs_diff(b) <= 1)
        );
    }

    #[test]
    fn canonical_orientation_keeps_every_voxel_where_it_is_in_the_world() {
        // An LSA grid (x runs to the patient's left reversed, y up, z front), as ITK writes.
        let g = Geometry {
            dims: [4, 3, 2],
            spacing: [2.0, 3.0, 1.5],
            origin: [10.0, -5.0, 7.0],
            direction: [[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
        };
        let v = Volume {
            geometry: g,
            data: (0..24).map(|i| i as u16).collect(),
        };
        let c = canonical(&v);
        assert_eq!(c.geometry.dims, [4, 2, 3]);
        for r in 0..3 {
            for k in 0..3 {
                let want = if r == k { 1.0 } else { 0.0 };
                assert!((c.geometry.direction[r][k] - want).abs() < 1e-12);
            }
        }
        // Every voxel keeps its world position and value; back by world-nearest is the input.
        let back = nearest(&c, &g);
        assert_eq!(back.data, v.data);
        for z in 0..2 {
            for y in 0..3 {
                for x in 0..4 {
                    let w = g.world([x as f64, y as f64, z as f64]);
                    let i = c.geometry.continuous_index(w).map(|f| f.round() as usize);
                    assert_eq!(c.get(i[0], i[1], i[2]), v.get(x, y, z));
                }
            }
        }
    }

    #[test]
    fn normalisation_and_label_rules() {
        let w = normalise(
            &[-2000.0, -600.0, 3000.0],
            &Intensity::Window {
                centre: -600.0,
                width: 1500.0,
            },
        );
        assert_eq!(w, vec![0.0, 0.5, 1.0]);
        let p = normalise(
            &(0..=100).map(|v| v as f32).collect::<Vec<_>>(),
            &Intensity::Percentile {
                low: 10.0,
                high: 90.0,
            },
        );
        assert_eq!((p[0], p[50], p[100]), (0.0, 0.5, 1.0));
        let z = normalise(&[1.0, 3.0], &Intensity::ZScore);
        assert_eq!(z, vec![-1.0, 1.0]);
        assert_eq!(LabelRule::Binary.class(6), 1);
        assert_eq!(LabelRule::Map(vec![[4, 2]]).class(4), 2);
        assert_eq!(LabelRule::Map(vec![[4, 2]]).class(5), 0);
        let bad = Preprocess {
            spacing: Some([1.0, 0.0, 1.0]),
            ..Preprocess::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn padding_round_trips() {
        let s = Sample::new([1, 2, 3], (0..6).map(|v| v as f32).collect(), vec![1; 6]).unwrap();
        let p = pad_to(&s, [2, 4, 4], -1.0).unwrap();
        assert_eq!(p.dims, [2, 4, 4]);
        assert_eq!(p.image[p.index(0, 1, 2)], 5.0);
        assert_eq!(p.image[p.index(1, 3, 3)], -1.0);
        assert_eq!(unpad(&p.label, p.dims, s.dims), s.label);
    }
}
