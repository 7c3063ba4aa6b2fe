//! Deep learning on medical images for medfed: 2-D/3-D U-Nets and ResNet-style classifiers,
//! their losses, augmentation, patch sampling, training, inference, metrics and model files.
//! The only crate that links burn (CPU `flex` backend; CUDA behind the `cuda` feature).

pub mod augment;
pub mod cascade;
pub mod checkpoint;
pub mod classifier;
pub mod dataset;
pub mod device;
mod error;
pub mod loss;
pub mod metrics;
pub mod model_file;
pub mod norm;
pub mod patch;
mod rng;
pub mod sample;
pub mod train;
pub mod unet;
pub mod workflow;

/// burn's device type, so callers need not depend on burn.
pub use burn::tensor::Device;
pub use error::{MlError, Result};
