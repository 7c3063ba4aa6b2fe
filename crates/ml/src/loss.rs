//! Segmentation and classification losses on class logits `[batch, classes, spatial...]`
//! against one-hot targets of the same shape.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

use crate::{MlError, Result};

fn flatten<const D: usize>(logits: Tensor<D>, target: Tensor<D>) -> Result<(Tensor<3>, Tensor<3>)> {
    let (a, b) = (logits.dims(), target.dims());
    if a != b || D < 2 {
        return Err(MlError::Shape(format!(
            "logits {a:?} and target {b:?} must have one shape"
        )));
    }
    let m: usize = a[2..].iter().product();
    Ok((
        logits.reshape([a[0], a[1], m]),
        target.reshape([a[0], a[1], m]),
    ))
}

/// Soft Dice loss (Milletari et al. 2016, squared-free form): `1 - mean over classes of
/// (2 Σ p t + ε) / (Σ p + Σ t + ε)`, sums over the batch and all voxels. `skip_background`
/// leaves class 0 out of the mean, because on small foregrounds it otherwise dominates.
pub fn soft_dice<const D: usize>(
    logits: Tensor<D>,
    target: Tensor<D>,
    skip_background: bool,
) -> Result<Tensor<1>> {
    let (logits, target) = flatten(logits, target)?;
    let c = logits.dims()[1];
    let p = softmax(logits, 1);
    let eps = 1e-5;
    let inter = (p.clone() * target.clone()).sum_dims(&[0, 2]);
    let denom = p.sum_dims(&[0, 2]) + target.sum_dims(&[0, 2]);
    let dice: Tensor<1> = ((inter * 2.0 + eps) / (denom + eps)).reshape([c]);
    let dice = if skip_background && c > 1 {
        dice.narrow(0, 1, c - 1)
    } else {
        dice
    };
    Ok(dice.mean().neg() + 1.0)
}

/// Cross-entropy, mean over samples and voxels, optional per-class weights.
pub fn cross_entropy<const D: usize>(
    logits: Tensor<D>,
    target: Tensor<D>,
    weights: Option<&[f32]>,
) -> Result<Tensor<1>> {
    let (logits, target) = flatten(logits, target)?;
    let [n, c, m] = logits.dims();
    let logp = log_softmax(logits, 1);
    let mut per = logp * target;
    if let Some(w) = weights {
        if w.len() != c {
            return Err(MlError::Shape(format!(
                "{} class weights for {c} classes",
                w.len()
            )));
        }
        let wt = Tensor::<1>::from_data(TensorData::new(w.to_vec(), [c]), &per.device())
            .reshape([1, c, 1]);
        per = per * wt;
    }
    Ok(per.sum().neg() / (n * m) as f64)
}

/// Focal loss (Lin et al. 2017): `-Σ t (1 - p)^γ log p`, mean over samples and voxels;
/// γ = 0 is cross-entropy.
pub fn focal<const D: usize>(
    logits: Tensor<D>,
    target: Tensor<D>,
    gamma: f64,
) -> Result<Tensor<1>> {
    if !(0.0..=10.0).contains(&gamma) {
        return Err(MlError::Config(format!("focal gamma {gamma} (0..=10)")));
    }
    let (logits, target) = flatten(logits, target)?;
    let [n, _, m] = logits.dims();
    let logp = log_softmax(logits, 1);
    let p = logp.clone().exp();
    let modulating = (p.neg() + 1.0).clamp_min(0.0).powf_scalar(gamma);
    Ok((modulating * logp * target).sum().neg() / (n * m) as f64)
}

/// One-hot `[batch, classes, spatial...]` from labels `0..classes`, flattened in the same order
/// as the spatial dims (`labels.len()` = batch × voxels). A label out of range is an error.
pub fn one_hot<const D: usize>(
    labels: &[u8],
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    let (n, c) = (shape[0], shape[1]);
    let m: usize = shape[2..].iter().product();
    if labels.len() != n * m {
        return Err(MlError::Shape(format!(
            "{} labels for {n} x {m} voxels",
            labels.len()
        )));
    }
    let mut data = vec![0f32; n * c * m];
    for b in 0..n {
        for (i, &l) in labels[b * m..(b + 1) * m].iter().enumerate() {
            let l = l as usize;
            if l >= c {
                return Err(MlError::Shape(format!("label {l} with {c} classes")));
            }
            data[(b * c + l) * m + i] = 1.0;
        }
    }
    Ok(Tensor::from_data(TensorData::new(data, shape), device))
}
