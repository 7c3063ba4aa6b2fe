//! Training and inference of the 3-D U-Net on in-memory samples: random (foreground-weighted)
//! patches, augmentation, soft Dice + cross-entropy, Adam; sliding-window prediction.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::augment::Augment;
use crate::loss::{cross_entropy, one_hot, soft_dice};
use crate::patch::{extract, random_origin, tile_origins};
use crate::sample::Sample;
use crate::unet::{UNet3d, UNetConfig};
use crate::{MlError, Result};

/// A 3-D U-Net whose initial weights follow from `seed`.
pub fn seeded_unet3d(cfg: &UNetConfig, seed: u64, device: &Device) -> Result<UNet3d> {
    UNet3d::seeded(cfg, seed, device)
}

/// How a segmentation network is trained; stored with the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training samples.
    pub epochs: usize,
    /// Optimizer steps per epoch (each a batch of random patches).
    pub steps_per_epoch: usize,
    /// Patches per step.
    pub batch: usize,
    /// Patch size `[z, y, x]`; each axis a multiple of `2^depth`.
    pub patch: [usize; 3],
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Share of patches centred on a foreground voxel.
    #[serde(default = "default_foreground")]
    pub foreground: f64,
    /// Seed of weights, patch draws, augmentation and dropout.
    pub seed: u64,
    /// Augmentation of each patch.
    #[serde(default)]
    pub augment: Augment,
}

fn default_foreground() -> f64 {
    0.5
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// Epoch number, from 0.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub loss: f64,
}

/// A training run's state between epochs: the model, the optimizer and the generator.
pub struct Trainer {
    /// The network (on the autodiff device).
    pub model: UNet3d,
    /// The optimizer with its moments.
    pub optim: ModuleOptimizer,
    /// The next epoch to run.
    pub next_epoch: usize,
    cfg: UNetConfig,
    train: TrainConfig,
    device: Device,
}

impl Trainer {
    /// A fresh run: seeded weights on the autodiff form of `device`.
    pub fn new(cfg: &UNetConfig, train: &TrainConfig, device: &Device) -> Result<Self> {
        cfg.validate()?;
        cfg.check_spatial(&train.patch)?;
        if train.batch == 0
            || train.steps_per_epoch == 0
            || train.learning_rate.is_nan()
            || train.learning_rate <= 0.0
        {
            return Err(MlError::Config(
                "batch, steps_per_epoch and learning_rate must be positive".into(),
            ));
        }
        let device = device.clone().autodiff();
        let model = seeded_unet3d(cfg, train.seed, &device)?;
        Ok(Self {
            model,
            optim: AdamConfig::new().init(),
            next_epoch: 0,
            cfg: cfg.clone(),
            train: train.clone(),
            device,
        })
    }

    /// A run that continues from `model` (fine-tuning): its frozen parameters stay as they are.
    /// `model` lives on the autodiff form of `device` (load it there).
    pub fn from_model(
        model: UNet3d,
        cfg: &UNetConfig,
        train: &TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        let mut t = Self::new(cfg, train, device)?;
        t.model = model;
        Ok(t)
    }

    /// Runs epoch `self.next_epoch` over `samples`. The patch and augmentation generator is
    /// derived from the seed and the epoch number, so an epoch resumed from a checkpoint draws
    /// the same patches as it would have without the interruption.
    pub fn epoch(&mut self, samples: &[Sample]) -> Result<EpochReport> {
        self.epoch_with(samples, || {})
    }

    /// [`Self::epoch`], calling `step_done` after each optimizer step (for progress bars).
    pub fn epoch_with(
        &mut self,
        samples: &[Sample],
        mut step_done: impl FnMut(),
    ) -> Result<EpochReport> {
        if samples.is_empty() {
            return Err(MlError::Config("no training samples".into()));
        }
        let epoch = self.next_epoch;
        let mut rng = StdRng::seed_from_u64(
            self.train.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let _g = crate::rng::lock();
        self.device
            .seed(self.train.seed.wrapping_add(epoch as u64 + 1));
        let mut total = 0.0;
        for _ in 0..self.train.steps_per_epoch {
            let mut images = Vec::new();
            let mut labels = Vec::new();
            let mut size = self.train.patch;
            for _ in 0..self.train.batch {
                let s = &samples[rand::Rng::random_range(&mut rng, 0..samples.len())];
                let o = random_origin(s, self.train.patch, self.train.foreground, &mut rng)?;
                let p = self
                    .train
                    .augment
                    .apply(&extract(s, o, self.train.patch)?, &mut rng);
                size = p.dims;
                images.extend_from_slice(&p.image);
                labels.extend_from_slice(&p.label);
            }
            let n = self.train.batch;
            let x = Tensor::<5>::from_data(
                TensorData::new(images, [n, 1, size[0], size[1], size[2]]),
                &self.device,
            );
            let y = one_hot::<5>(
                &labels,
                [n, self.cfg.classes, size[0], size[1], size[2]],
                &self.device,
            )?;
            let logits = self.model.try_forward(&self.cfg, x)?;
            let loss =
                soft_dice(logits.clone(), y.clone(), true)? + cross_entropy(logits, y, None)?;
            total += f64::from(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &self.model);
            self.model = self
                .optim
                .step(self.train.learning_rate, self.model.clone(), grads);
            step_done();
        }
        self.next_epoch += 1;
        let report = EpochReport {
            epoch,
            loss: total / self.train.steps_per_epoch as f64,
        };
        tracing::debug!(epoch, loss = report.loss, "epoch done");
        Ok(report)
    }
}

/// Class labels for a whole sample by sliding-window inference: softmax probabilities of
/// overlapping patches (half a patch apart) averaged, then the most probable class per voxel.
/// A volume smaller than the patch along an axis is refused (pad it first).
pub fn predict(
    model: &UNet3d,
    cfg: &UNetConfig,
    s: &Sample,
    patch: [usize; 3],
    device: &Device,
) -> Result<Vec<u8>> {
    cfg.check_spatial(&patch)?;
    let model = model.valid();
    let device = device.clone().inner();
    let c = cfg.classes;
    let mut prob = vec![0f32; c * s.len()];
    let mut hits = vec![0u16; s.len()];
    for o in tile_origins(s.dims, patch, 0.5)? {
        let p = extract(s, o, patch)?;
        let x = Tensor::<5>::from_data(
            TensorData::new(p.image, [1, 1, patch[0], patch[1], patch[2]]),
            &device,
        );
        let out = softmax(model.forward(x), 1).into_data();
        let out = out
            .try_to_vec::<f32>()
            .map_err(|e| MlError::Data(format!("{e:?}")))?;
        let m = patch.iter().product::<usize>();
        let mut i = 0;
        for z in o[0]..o[0] + patch[0] {
            for y in o[1]..o[1] + patch[1] {
                for x in o[2]..o[2] + patch[2] {
                    let v = s.index(z, y, x);
                    for k in 0..c {
                        prob[k * s.len() + v] += out[k * m + i];
                    }
                    hits[v] = hits[v].saturating_add(1);
                    i += 1;
                }
            }
        }
    }
    Ok((0..s.len())
        .map(|v| {
            (0..c)
                .max_by(|&a, &b| prob[a * s.len() + v].total_cmp(&prob[b * s.len() + v]))
                .unwrap_or(0) as u8
        })
        .collect())
}
