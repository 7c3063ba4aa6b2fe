//! Patches of volumes too large for one forward pass: random patches for training (with a
//! share centred on foreground, as nnU-Net does, so small lesions are seen), and the tiling
//! that covers a whole volume for inference.

use rand::Rng;

use crate::sample::Sample;
use crate::{MlError, Result};

/// The sub-grid of `s` at `origin` with size `size` (both `[z, y, x]`).
pub fn extract(s: &Sample, origin: [usize; 3], size: [usize; 3]) -> Result<Sample> {
    if (0..3).any(|a| size[a] == 0 || origin[a] + size[a] > s.dims[a]) {
        return Err(MlError::Shape(format!(
            "patch {size:?} at {origin:?} outside {:?}",
            s.dims
        )));
    }
    let n = size.iter().product();
    let mut image = Vec::with_capacity(n);
    let mut label = Vec::with_capacity(if s.label.is_empty() { 0 } else { n });
    for z in origin[0]..origin[0] + size[0] {
        for y in origin[1]..origin[1] + size[1] {
            let start = s.index(z, y, origin[2]);
            image.extend_from_slice(&s.image[start..start + size[2]]);
            if !s.label.is_empty() {
                label.extend_from_slice(&s.label[start..start + size[2]]);
            }
        }
    }
    Ok(Sample {
        dims: size,
        image,
        label,
    })
}

/// A random patch origin; with probability `foreground` the patch contains a randomly chosen
/// voxel whose label is non-zero (when there is one).
pub fn random_origin<R: Rng>(
    s: &Sample,
    size: [usize; 3],
    foreground: f64,
    rng: &mut R,
) -> Result<[usize; 3]> {
    if (0..3).any(|a| size[a] == 0 || size[a] > s.dims[a]) {
        return Err(MlError::Shape(format!(
            "patch {size:?} larger than volume {:?}",
            s.dims
        )));
    }
    let max = [
        s.dims[0] - size[0],
        s.dims[1] - size[1],
        s.dims[2] - size[2],
    ];
    if foreground > 0.0 && rng.random_bool(foreground.min(1.0)) {
        let fg = s.label.iter().filter(|&&l| l != 0).count();
        if fg > 0 {
            let pick = rng.random_range(0..fg);
            if let Some(i) = s
                .label
                .iter()
                .enumerate()
                .filter(|(_, l)| **l != 0)
                .nth(pick)
                .map(|(i, _)| i)
            {
                let c = [
                    i / (s.dims[1] * s.dims[2]),
                    (i / s.dims[2]) % s.dims[1],
                    i % s.dims[2],
                ];
                let mut o = [0; 3];
                for a in 0..3 {
                    // Any origin that keeps the voxel inside the patch, drawn uniformly.
                    let lo = c[a].saturating_sub(size[a] - 1);
                    let hi = c[a].min(max[a]);
                    o[a] = rng.random_range(lo..=hi);
                }
                return Ok(o);
            }
        }
    }
    Ok([
        rng.random_range(0..=max[0]),
        rng.random_range(0..=max[1]),
        rng.random_range(0..=max[2]),
    ])
}

/// Origins of patches of `size` that cover a volume of `dims`, overlapping by at least
/// `overlap` (0..1) of the patch; the last patch on each axis is flush with the edge.
pub fn tile_origins(dims: [usize; 3], size: [usize; 3], overlap: f64) -> Result<Vec<[usize; 3]>> {
    if (0..3).any(|a| size[a] == 0 || size[a] > dims[a]) || !(0.0..1.0).contains(&overlap) {
        return Err(MlError::Shape(format!(
            "tiles of {size:?} (overlap {overlap}) over {dims:?}"
        )));
    }
    let axis = |a: usize| -> Vec<usize> {
        let step = ((size[a] as f64 * (1.0 - overlap)).floor() as usize).max(1);
        let last = dims[a] - size[a];
        let mut v: Vec<usize> = (0..=last).step_by(step).collect();
        if v.last() != Some(&last) {
            v.push(last);
        }
        v
    };
    let (za, ya, xa) = (axis(0), axis(1), axis(2));
    let mut out = Vec::with_capacity(za.len() * ya.len() * xa.len());
    for &z in &za {
        for &y in &ya {
            for &x in &xa {
                out.push([z, y, x]);
            }
        }
    }
    Ok(out)
}
