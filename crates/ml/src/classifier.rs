//! CNN classifiers (2-D and 3-D) built from ResNet basic blocks (He et al. 2016).

use burn::nn::conv::{Conv2d, Conv2dConfig, Conv3d, Conv3dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::norm::{Norm, NormKind};
use crate::{MlError, Result};

/// How a classifier is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Number of classes (logits out).
    pub classes: usize,
    /// Channels of the first stage; each later stage doubles them and halves the resolution.
    pub base_channels: usize,
    /// Residual blocks per stage; the number of stages is the length.
    pub blocks: Vec<usize>,
    /// Normalisation after each convolution.
    #[serde(default)]
    pub norm: NormKind,
}

impl ClassifierConfig {
    /// Refuses what would not make a network.
    pub fn validate(&self) -> Result<()> {
        if self.in_channels == 0 || self.classes < 2 || self.base_channels == 0 {
            return Err(MlError::Config(
                "classifier: in_channels >= 1, classes >= 2, base_channels >= 1".into(),
            ));
        }
        if self.blocks.is_empty()
            || self.blocks.len() > 6
            || self.blocks.iter().any(|&b| b == 0 || b > 16)
        {
            return Err(MlError::Config(format!(
                "classifier: blocks {:?} (1-6 stages of 1-16 blocks)",
                self.blocks
            )));
        }
        Ok(())
    }
}

macro_rules! resnet {
    ($Name:ident, $Block:ident, $R:literal, $Conv:ident, $ConvCfg:ident, $k3:expr, $k1:expr, $s1:expr, $s2:expr, $pad:expr) => {
        /// conv-norm-relu-conv-norm plus the (projected) input, rectified.
        #[derive(Module, Debug)]
        pub struct $Block {
            conv1: $Conv,
            norm1: Norm,
            conv2: $Conv,
            norm2: Norm,
            project: Option<$Conv>,
        }

        impl $Block {
            fn new(
                cin: usize,
                cout: usize,
                downsample: bool,
                norm: NormKind,
                device: &Device,
            ) -> Self {
                let stride = if downsample { $s2 } else { $s1 };
                let project = (downsample || cin != cout).then(|| {
                    $ConvCfg::new([cin, cout], $k1)
                        .with_stride(stride)
                        .init(device)
                });
                Self {
                    conv1: $ConvCfg::new([cin, cout], $k3)
                        .with_stride(stride)
                        .with_padding($pad)
                        .init(device),
                    norm1: Norm::new(norm, cout, device),
                    conv2: $ConvCfg::new([cout, cout], $k3)
                        .with_padding($pad)
                        .init(device),
                    norm2: Norm::new(norm, cout, device),
                    project,
                }
            }

            fn forward(&self, x: Tensor<$R>) -> Tensor<$R> {
                let y = relu(self.norm1.forward(self.conv1.forward(x.clone())));
                let y = self.norm2.forward(self.conv2.forward(y));
                let skip = match &self.project {
                    Some(p) => p.forward(x),
                    None => x,
                };
                relu(y + skip)
            }
        }

        /// Residual stages, global average pooling, a linear layer to class logits.
        #[derive(Module, Debug)]
        pub struct $Name {
            stem: $Conv,
            stem_norm: Norm,
            blocks: Vec<$Block>,
            fc: Linear,
        }

        impl $Name {
            /// Builds the network with unseeded weights; refuses an invalid configuration
            /// instead of panicking.
            pub fn new(cfg: &ClassifierConfig, device: &Device) -> Result<Self> {
                let _g = crate::rng::lock();
                Self::build(cfg, device)
            }

            /// Builds the network with weights that follow from `seed`.
            pub fn seeded(cfg: &ClassifierConfig, seed: u64, device: &Device) -> Result<Self> {
                let _g = crate::rng::lock();
                device.seed(seed);
                Self::build(cfg, device)
            }

            fn build(cfg: &ClassifierConfig, device: &Device) -> Result<Self> {
                cfg.validate()?;
                let stem = $ConvCfg::new([cfg.in_channels, cfg.base_channels], $k3)
                    .with_padding($pad)
                    .init(device);
                let mut blocks = Vec::new();
                let mut c = cfg.base_channels;
                for (stage, &n) in cfg.blocks.iter().enumerate() {
                    let cout = cfg.base_channels << stage;
                    for i in 0..n {
                        blocks.push($Block::new(c, cout, stage > 0 && i == 0, cfg.norm, device));
                        c = cout;
                    }
                }
                Ok(Self {
                    stem,
                    stem_norm: Norm::new(cfg.norm, cfg.base_channels, device),
                    blocks,
                    fc: LinearConfig::new(c, cfg.classes).init(device),
                })
            }

            /// Class logits `[batch, classes]`.
            pub fn forward(&self, x: Tensor<$R>) -> Tensor<2> {
                let mut x = relu(self.stem_norm.forward(self.stem.forward(x)));
                for b in &self.blocks {
                    x = b.forward(x);
                }
                let d = x.dims();
                let (n, c) = (d[0], d[1]);
                let m: usize = d[2..].iter().product();
                let pooled: Tensor<2> = x.reshape([n, c, m]).mean_dim(2).reshape([n, c]);
                self.fc.forward(pooled)
            }
        }
    };
}

resnet!(
    ResNet2d,
    ResBlock2d,
    4,
    Conv2d,
    Conv2dConfig,
    [3, 3],
    [1, 1],
    [1, 1],
    [2, 2],
    PaddingConfig2d::Explicit(1, 1, 1, 1)
);
resnet!(
    ResNet3d,
    ResBlock3d,
    5,
    Conv3d,
    Conv3dConfig,
    [3, 3, 3],
    [1, 1, 1],
    [1, 1, 1],
    [2, 2, 2],
    PaddingConfig3d::Explicit(1, 1, 1)
);
