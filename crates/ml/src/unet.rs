//! 2-D and 3-D U-Nets (Ronneberger et al. 2015; Çiçek et al. 2016) with configurable depth,
//! width, normalisation and dropout.
//!
//! Down-sampling is a stride-2 convolution and up-sampling a stride-2 transposed convolution:
//! burn 0.22 has no 3-D max pooling, and strided convolutions are what nnU-Net uses anyway.

use burn::nn::conv::{
    Conv2d, Conv2dConfig, Conv3d, Conv3dConfig, ConvTranspose2d, ConvTranspose2dConfig,
    ConvTranspose3d, ConvTranspose3dConfig,
};
use burn::nn::{Dropout, DropoutConfig, PaddingConfig2d, PaddingConfig3d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::norm::{Norm, NormKind};
use crate::{MlError, Result};

/// How a U-Net is built; stored with each model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Input channels (1 for CT or one MR sequence).
    pub in_channels: usize,
    /// Output classes, background included (logits per class).
    pub classes: usize,
    /// Channels of the first level; each level below doubles them.
    pub base_channels: usize,
    /// Number of down-sampling steps; inputs must be divisible by `2^depth` along every axis.
    pub depth: usize,
    /// Normalisation after each convolution.
    #[serde(default)]
    pub norm: NormKind,
    /// Dropout probability after each block (0 for none).
    #[serde(default)]
    pub dropout: f64,
}

impl UNetConfig {
    /// A small configuration: `classes` outputs, 8 base channels, depth 2, instance norm.
    pub fn small(in_channels: usize, classes: usize) -> Self {
        Self {
            in_channels,
            classes,
            base_channels: 8,
            depth: 2,
            norm: NormKind::Instance,
            dropout: 0.0,
        }
    }

    /// Refuses what burn would panic on or what makes no network.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MlError::Config(m));
        if self.in_channels == 0 || self.classes < 2 || self.base_channels == 0 {
            return bad(format!(
                "in_channels {} (>= 1), classes {} (>= 2, background included), base_channels {} (>= 1)",
                self.in_channels, self.classes, self.base_channels
            ));
        }
        if !(1..=6).contains(&self.depth) {
            return bad(format!("depth {} (1..=6)", self.depth));
        }
        if self
            .base_channels
            .checked_shl(self.depth as u32)
            .is_none_or(|c| c > 4096)
        {
            return bad(format!(
                "base_channels {} << depth {} exceeds 4096",
                self.base_channels, self.depth
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} (0 <= p < 1)", self.dropout));
        }
        Ok(())
    }

    /// Checks that spatial dimensions `dims` can go through the network.
    pub fn check_spatial(&self, dims: &[usize]) -> Result<()> {
        let m = 1usize << self.depth;
        if dims.iter().any(|&d| d == 0 || d % m != 0) {
            return Err(MlError::Shape(format!(
                "spatial size {dims:?}: each axis must be a positive multiple of {m} (2^depth)"
            )));
        }
        Ok(())
    }
}

/// `modules` with the first `n` frozen (their parameters need no gradient).
fn freeze_first<M: Module>(modules: Vec<M>, n: usize) -> Vec<M> {
    modules
        .into_iter()
        .enumerate()
        .map(|(i, m)| if i < n { m.no_grad() } else { m })
        .collect()
}

macro_rules! unet {
    ($Name:ident, $Block:ident, $R:literal, $Conv:ident, $ConvCfg:ident, $Up:ident, $UpCfg:ident,
     $k3:expr, $k2:expr, $k1:expr, $pad:expr) => {
        /// Two convolutions, each normalised and rectified, then dropout.
        #[derive(Module, Debug)]
        pub struct $Block {
            conv1: $Conv,
            norm1: Norm,
            conv2: $Conv,
            norm2: Norm,
            dropout: Dropout,
        }

        impl $Block {
            fn new(cin: usize, cout: usize, cfg: &UNetConfig, device: &Device) -> Self {
                Self {
                    conv1: $ConvCfg::new([cin, cout], $k3)
                        .with_padding($pad)
                        .init(device),
                    norm1: Norm::new(cfg.norm, cout, device),
                    conv2: $ConvCfg::new([cout, cout], $k3)
                        .with_padding($pad)
                        .init(device),
                    norm2: Norm::new(cfg.norm, cout, device),
                    dropout: DropoutConfig::new(cfg.dropout).init(),
                }
            }

            fn forward(&self, x: Tensor<$R>) -> Tensor<$R> {
                let x = relu(self.norm1.forward(self.conv1.forward(x)));
                let x = relu(self.norm2.forward(self.conv2.forward(x)));
                self.dropout.forward(x)
            }
        }

        /// A U-Net over `[batch, channels, spatial...]` tensors; outputs class logits.
        #[derive(Module, Debug)]
        pub struct $Name {
            encoders: Vec<$Block>,
            downs: Vec<$Conv>,
            bottom: $Block,
            ups: Vec<$Up>,
            decoders: Vec<$Block>,
            head: $Conv,
        }

        impl $Name {
            /// Builds the network with unseeded weights; refuses an invalid configuration
            /// instead of panicking.
            pub fn new(cfg: &UNetConfig, device: &Device) -> Result<Self> {
                let _g = crate::rng::lock();
                Self::build(cfg, device)
            }

            /// Builds the network with weights that follow from `seed`.
            pub fn seeded(cfg: &UNetConfig, seed: u64, device: &Device) -> Result<Self> {
                let _g = crate::rng::lock();
                device.seed(seed);
                Self::build(cfg, device)
            }

            fn build(cfg: &UNetConfig, device: &Device) -> Result<Self> {
                cfg.validate()?;
                let width = |level: usize| cfg.base_channels << level;
                let mut encoders = Vec::new();
                let mut downs = Vec::new();
                let mut ups = Vec::new();
                let mut decoders = Vec::new();
                for level in 0..cfg.depth {
                    let cin = if level == 0 {
                        cfg.in_channels
                    } else {
                        width(level - 1)
                    };
                    encoders.push($Block::new(cin, width(level), cfg, device));
                    downs.push(
                        $ConvCfg::new([width(level), width(level)], $k2)
                            .with_stride($k2)
                            .init(device),
                    );
                    ups.push(
                        $UpCfg::new([width(level + 1), width(level)], $k2)
                            .with_stride($k2)
                            .init(device),
                    );
                    decoders.push($Block::new(2 * width(level), width(level), cfg, device));
                }
                let bottom = $Block::new(width(cfg.depth - 1), width(cfg.depth), cfg, device);
                let head = $ConvCfg::new([width(0), cfg.classes], $k1).init(device);
                Ok(Self {
                    encoders,
                    downs,
                    bottom,
                    ups,
                    decoders,
                    head,
                })
            }

            /// Class logits for `x`; the caller checks the shape first
            /// ([`UNetConfig::check_spatial`]) or uses [`Self::try_forward`].
            pub fn forward(&self, x: Tensor<$R>) -> Tensor<$R> {
                let mut skips = Vec::with_capacity(self.encoders.len());
                let mut x = x;
                for (enc, down) in self.encoders.iter().zip(&self.downs) {
                    let s = enc.forward(x);
                    x = down.forward(s.clone());
                    skips.push(s);
                }
                x = self.bottom.forward(x);
                for ((up, dec), skip) in self.ups.iter().zip(&self.decoders).zip(skips).rev() {
                    x = dec.forward(Tensor::cat(vec![up.forward(x), skip], 1));
                }
                self.head.forward(x)
            }

            /// The network with the weights of its first `levels` encoder levels (and, for
            /// `levels > depth`, the bottom block) frozen: fine-tuning then trains only the
            /// decoder side and what is left of the encoder.
            pub fn freeze_encoder(self, levels: usize) -> Self {
                let n = levels.min(self.encoders.len());
                let bottom = if levels > self.encoders.len() {
                    self.bottom.no_grad()
                } else {
                    self.bottom
                };
                Self {
                    encoders: freeze_first(self.encoders, n),
                    downs: freeze_first(self.downs, n),
                    bottom,
                    ..self
                }
            }

            /// [`Self::forward`] after checking the input's channels and spatial size.
            pub fn try_forward(&self, cfg: &UNetConfig, x: Tensor<$R>) -> Result<Tensor<$R>> {
                let dims = x.dims();
                if dims[1] != cfg.in_channels {
                    return Err(MlError::Shape(format!(
                        "input has {} channels, the network takes {}",
                        dims[1], cfg.in_channels
                    )));
                }
                cfg.check_spatial(&dims[2..])?;
                Ok(self.forward(x))
            }
        }
    };
}

unet!(
    UNet2d,
    ConvBlock2d,
    4,
    Conv2d,
    Conv2dConfig,
    ConvTranspose2d,
    ConvTranspose2dConfig,
    [3, 3],
    [2, 2],
    [1, 1],
    PaddingConfig2d::Explicit(1, 1, 1, 1)
);
unet!(
    UNet3d,
    ConvBlock3d,
    5,
    Conv3d,
    Conv3dConfig,
    ConvTranspose3d,
    ConvTranspose3dConfig,
    [3, 3, 3],
    [2, 2, 2],
    [1, 1, 1],
    PaddingConfig3d::Explicit(1, 1, 1)
);
