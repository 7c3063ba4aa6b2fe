//! A training case held in memory: one image channel and its label map on one voxel grid.

use crate::{MlError, Result};

/// Image intensities and labels on a `[z, y, x]` grid, x fastest (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Grid size `[z, y, x]`; a 2-D image has `z = 1`.
    pub dims: [usize; 3],
    /// Intensities, `z * y * x` values.
    pub image: Vec<f32>,
    /// Labels `0..classes`, same length (empty when unlabelled).
    pub label: Vec<u8>,
}

impl Sample {
    /// A sample after checking that image and label fit `dims`.
    pub fn new(dims: [usize; 3], image: Vec<f32>, label: Vec<u8>) -> Result<Self> {
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(image.len()) || (!label.is_empty() && label.len() != image.len()) {
            return Err(MlError::Shape(format!(
                "dims {dims:?} with {} image values and {} labels",
                image.len(),
                label.len()
            )));
        }
        Ok(Self { dims, image, label })
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.image.len()
    }

    /// Whether the grid is empty.
    pub fn is_empty(&self) -> bool {
        self.image.is_empty()
    }

    /// Linear index of `(z, y, x)`.
    pub fn index(&self, z: usize, y: usize, x: usize) -> usize {
        (z * self.dims[1] + y) * self.dims[2] + x
    }
}
