//! Augmentation of training samples: flips, 90° rotations in the axial plane, intensity
//! scale and shift. Geometric transforms move image and labels together; all draws come from
//! the caller's seeded generator, so an augmented epoch is reproducible.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::sample::Sample;

/// Which augmentations are drawn, with what probability or range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Probability of a flip along each axis `[z, y, x]`.
    pub flip: [f64; 3],
    /// Probability of a random 90°·k rotation in the y-x plane (k in 1..=3).
    pub rotate90: f64,
    /// Intensity scale drawn from `[1 - s, 1 + s]`.
    pub scale: f32,
    /// Intensity shift drawn from `[-s, s]` (in the image's units after windowing).
    pub shift: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            flip: [0.0, 0.5, 0.5],
            rotate90: 0.5,
            scale: 0.1,
            shift: 0.1,
        }
    }
}

impl Augment {
    /// No augmentation.
    pub fn none() -> Self {
        Self {
            flip: [0.0; 3],
            rotate90: 0.0,
            scale: 0.0,
            shift: 0.0,
        }
    }

    /// An augmented copy of `s`.
    pub fn apply<R: Rng>(&self, s: &Sample, rng: &mut R) -> Sample {
        let mut out = s.clone();
        for axis in 0..3 {
            if self.flip[axis] > 0.0 && rng.random_bool(self.flip[axis].min(1.0)) {
                out = flip(&out, axis);
            }
        }
        // Rotations that change the grid would break a batch of equal-sized patches unless
        // y == x, so only square planes are rotated by 90° or 270°.
        if self.rotate90 > 0.0 && rng.random_bool(self.rotate90.min(1.0)) {
            let k = rng.random_range(1..=3u8);
            if k == 2 || out.dims[1] == out.dims[2] {
                out = rotate90(&out, k);
            }
        }
        if self.scale > 0.0 || self.shift > 0.0 {
            let a = 1.0 + self.scale * rng.random_range(-1.0f32..=1.0);
            let b = self.shift * rng.random_range(-1.0f32..=1.0);
            out.image.iter_mut().for_each(|v| *v = *v * a + b);
        }
        out
    }
}

/// `s` mirrored along `axis` (0 = z, 1 = y, 2 = x).
pub fn flip(s: &Sample, axis: usize) -> Sample {
    let [nz, ny, nx] = s.dims;
    let mut image = vec![0f32; s.len()];
    let mut label = vec![0u8; s.label.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let (sz, sy, sx) = match axis {
                    0 => (nz - 1 - z, y, x),
                    1 => (z, ny - 1 - y, x),
                    _ => (z, y, nx - 1 - x),
                };
                let (d, src) = (s.index(z, y, x), s.index(sz, sy, sx));
                image[d] = s.image[src];
                if !label.is_empty() {
                    label[d] = s.label[src];
                }
            }
        }
    }
    Sample {
        dims: s.dims,
        image,
        label,
    }
}

/// `s` rotated by `k` × 90° in the y-x plane (counter-clockwise looking down z).
pub fn rotate90(s: &Sample, k: u8) -> Sample {
    let mut out = s.clone();
    for _ in 0..(k % 4) {
        let [nz, ny, nx] = out.dims;
        let dims = [nz, nx, ny];
        let mut image = vec![0f32; out.len()];
        let mut label = vec![0u8; out.label.len()];
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    // (y, x) -> (nx - 1 - x, y) in the new (ny' = nx, nx' = ny) grid.
                    let d = (z * nx + (nx - 1 - x)) * ny + y;
                    let src = out.index(z, y, x);
                    image[d] = out.image[src];
                    if !label.is_empty() {
                        label[d] = out.label[src];
                    }
                }
            }
        }
        out = Sample { dims, image, label };
    }
    out
}
