//! The two-U-Net cascade (as in LungQuant, Lizzi et al. 2022): the first network segments the
//! lungs, the second sees only the voxels inside that mask and segments lesions there; the
//! lesion fraction is lesion volume over lung volume.

use burn::tensor::Device;

use crate::sample::Sample;
use crate::train::predict;
use crate::unet::{UNet3d, UNetConfig};
use crate::{MlError, Result};

/// What the cascade finds in one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeResult {
    /// 1 inside the lungs.
    pub lung: Vec<u8>,
    /// 1 in lesions (always inside `lung`).
    pub lesion: Vec<u8>,
    /// Lesion voxels over lung voxels (0 when no lung was found).
    pub lesion_fraction: f64,
}

/// Intensities maps `image` to `[0, 1]` through the window `[centre - width/2, centre +
/// width/2]` (a lung window is centre -600, width 1500 HU).
pub fn window(image: &[f32], centre: f32, width: f32) -> Result<Vec<f32>> {
    if width.is_nan() || width <= 0.0 || !centre.is_finite() {
        return Err(MlError::Config(format!(
            "window centre {centre}, width {width}"
        )));
    }
    let lo = centre - width / 2.0;
    Ok(image
        .iter()
        .map(|&v| ((v - lo) / width).clamp(0.0, 1.0))
        .collect())
}

/// The second network's input: the image inside `mask`, 0 elsewhere.
pub fn restrict(image: &Sample, mask: &[u8]) -> Result<Sample> {
    if mask.len() != image.len() {
        return Err(MlError::Shape(format!(
            "mask of {} voxels for {}",
            mask.len(),
            image.len()
        )));
    }
    let data = image
        .image
        .iter()
        .zip(mask)
        .map(|(&v, &m)| if m != 0 { v } else { 0.0 })
        .collect();
    Sample::new(image.dims, data, image.label.clone())
}

/// Runs lung then lesion network on `image` (already windowed).
pub fn cascade(
    lung: (&UNet3d, &UNetConfig),
    lesion: (&UNet3d, &UNetConfig),
    image: &Sample,
    patch: [usize; 3],
    device: &Device,
) -> Result<CascadeResult> {
    let lung_mask = predict(lung.0, lung.1, image, patch, device)?;
    let inside = restrict(image, &lung_mask)?;
    let mut lesion_mask = predict(lesion.0, lesion.1, &inside, patch, device)?;
    for (l, &g) in lesion_mask.iter_mut().zip(&lung_mask) {
        if g == 0 {
            *l = 0;
        }
    }
    let n_lung = lung_mask.iter().filter(|&&v| v != 0).count();
    let n_lesion = lesion_mask.iter().filter(|&&v| v != 0).count();
    let lesion_fraction = if n_lung == 0 {
        0.0
    } else {
        n_lesion as f64 / n_lung as f64
    };
    Ok(CascadeResult {
        lung: lung_mask,
        lesion: lesion_mask,
        lesion_fraction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::seeded_unet3d;

    #[test]
    fn window_maps_to_unit_range_and_refuses_bad_windows() {
        let w = window(&[-2000.0, -1350.0, -600.0, 150.0, 3000.0], -600.0, 1500.0).unwrap();
        assert_eq!(w, vec![0.0, 0.0, 0.5, 1.0, 1.0]);
        assert!(window(&[0.0], 0.0, 0.0).is_err());
        assert!(window(&[0.0], f32::NAN, 10.0).is_err());
    }

    #[test]
    fn the_second_network_sees_only_the_first_ones_mask_and_lesions_stay_inside_it() {
        let s = Sample::new([4, 4, 4], (0..64).map(|i| i as f32 + 1.0).collect(), vec![]).unwrap();
        let mask: Vec<u8> = (0..64).map(|i| (i % 2) as u8).collect();
        let r = restrict(&s, &mask).unwrap();
        assert!(
            r.image
                .iter()
                .zip(&mask)
                .all(|(&v, &m)| (m == 0) == (v == 0.0))
        );
        assert!(restrict(&s, &mask[..10]).is_err());
        let d = Device::flex();
        let cfg = UNetConfig::small(1, 2);
        let (a, b) = (
            seeded_unet3d(&cfg, 1, &d).unwrap(),
            seeded_unet3d(&cfg, 2, &d).unwrap(),
        );
        let out = cascade((&a, &cfg), (&b, &cfg), &s, [4, 4, 4], &d).unwrap();
        assert!(
            out.lesion
                .iter()
                .zip(&out.lung)
                .all(|(&l, &g)| l == 0 || g != 0)
        );
        let (nl, nz) = (
            out.lung.iter().filter(|&&v| v != 0).count(),
            out.lesion.iter().filter(|&&v| v != 0).count(),
        );
        let expected = if nl == 0 { 0.0 } else { nz as f64 / nl as f64 };
        assert_eq!(out.lesion_fraction, expected);
    }
}
