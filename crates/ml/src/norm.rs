//! The normalisation a network's blocks use, chosen in its configuration.

use burn::nn::{
    BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, InstanceNorm, InstanceNormConfig,
};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Which normalisation follows each convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// Per-sample, per-channel statistics: the usual choice for medical volumes, where batches
    /// are one or two patches (nnU-Net's default).
    #[default]
    Instance,
    /// Batch statistics with running averages for inference.
    Batch,
    /// Channels in groups of up to 8 (falls back to fewer groups when the count does not divide).
    Group,
    /// No normalisation.
    None,
}

/// A normalisation layer of any [`NormKind`].
#[derive(Module, Debug)]
pub enum Norm {
    /// Instance normalisation.
    Instance(InstanceNorm),
    /// Batch normalisation.
    Batch(BatchNorm),
    /// Group normalisation.
    Group(GroupNorm),
    /// Identity.
    None(burn::nn::Identity),
}

impl Norm {
    /// A normalisation of `kind` over `channels` channels.
    pub fn new(kind: NormKind, channels: usize, device: &Device) -> Self {
        match kind {
            NormKind::Instance => Norm::Instance(InstanceNormConfig::new(channels).init(device)),
            NormKind::Batch => Norm::Batch(BatchNormConfig::new(channels).init(device)),
            NormKind::Group => {
                let groups = (1..=8.min(channels))
                    .rev()
                    .find(|g| channels.is_multiple_of(*g))
                    .unwrap_or(1);
                Norm::Group(GroupNormConfig::new(groups, channels).init(device))
            }
            NormKind::None => Norm::None(burn::nn::Identity::new()),
        }
    }

    /// Normalise `x` (`[batch, channels, ...]`).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Norm::Instance(n) => n.forward(x),
            Norm::Batch(n) => n.forward(x),
            Norm::Group(n) => n.forward(x),
            Norm::None(_) => x,
        }
    }
}
