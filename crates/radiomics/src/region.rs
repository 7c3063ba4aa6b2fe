//! The IBSI 1 image-processing chain (IBSI chapter 2): crop to the region, interpolate image and
//! mask, re-segment, discretise.
//!
//! Everything after cropping works on the region's bounding box, padded only as far as the
//! local-intensity sphere reaches, so the cost follows the region and not the image.

use medfed_volume::{Geometry, Volume, bounding_box};

use crate::RadiomicsError;
use crate::settings::{Discretisation, Interpolation, InterpolationMethod, RadiomicsSettings};

/// Radius in mm of the 1 cm^3 sphere of the local intensity features (IBSI 3.2).
pub const PEAK_RADIUS_MM: f64 = 6.203_504_908_994;

/// A region ready for feature computation: a block of the (interpolated) image around the region.
#[derive(Debug, Clone)]
pub struct Region {
    /// Grid of the block.
    pub geometry: Geometry,
    /// Intensities of every voxel of the block, inside the region or not.
    pub image: Vec<f32>,
    /// Morphological mask: the (interpolated) region before re-segmentation.
    pub morph: Vec<bool>,
    /// Intensity mask: the morphological mask after re-segmentation.
    pub intensity: Vec<bool>,
}

/// Grey levels of the intensity mask's voxels after discretisation; 0 outside the mask.
#[derive(Debug, Clone)]
pub struct Discretised {
    pub levels: Vec<u32>,
    /// Number of grey levels Ng: the bin count (fixed bin number) or the highest level present.
    pub n_levels: u32,
    /// For fixed bin size: the lower edge and the width, to map a level back to intensities.
    pub bin_lower: Option<(f64, f64)>,
}

/// Where a (cropped) image sits in the full image it was read from. Interpolation aligns its new
/// grid with the full image's centre (IBSI grid alignment), so it needs the full grid.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// The full image's grid.
    pub geometry: Geometry,
    /// Index in the full image of the crop's voxel (0, 0, 0).
    pub offset: [usize; 3],
}

impl Frame {
    /// The frame of an image that was not cropped.
    pub fn whole(geometry: Geometry) -> Self {
        Frame {
            geometry,
            offset: [0; 3],
        }
    }
}

/// Voxels around a region that reading must keep: the local-intensity sphere and the
/// interpolation kernel's support, in voxels of the original grid.
pub fn read_margin(spacing: [f64; 3], settings: &RadiomicsSettings) -> [usize; 3] {
    let interp = settings.interpolation.as_ref();
    std::array::from_fn(|k| {
        let new_spacing = interp.map_or(spacing[k], |i| i.target_spacing(spacing)[k]);
        let reach = PEAK_RADIUS_MM + new_spacing;
        (reach / spacing[k]).ceil() as usize
            + match interp.map(|i| i.method) {
                None => 0,
                Some(InterpolationMethod::Cubic) => 34,
                Some(_) => 4,
            }
    })
}

impl Region {
    /// Crop `image` around the voxels of `mask` equal to `label`, interpolate and re-segment as
    /// `settings` say.
    pub fn extract(
        image: &Volume<f32>,
        mask: &Volume<u16>,
        label: u16,
        settings: &RadiomicsSettings,
    ) -> Result<Region, RadiomicsError> {
        Self::extract_in(image, mask, label, settings, Frame::whole(image.geometry))
    }

    /// As [`Region::extract`] for an image and mask cropped out of a larger image (`frame`).
    pub fn extract_in(
        image: &Volume<f32>,
        mask: &Volume<u16>,
        label: u16,
        settings: &RadiomicsSettings,
        frame: Frame,
    ) -> Result<Region, RadiomicsError> {
        if !image
            .geometry
            .same_grid(&mask.geometry, 1e-3 * image.geometry.spacing[0].max(1.0))
        {
            return Err(RadiomicsError::GridMismatch(format!(
                "image grid {:?} spacing {:?} origin {:?} vs mask grid {:?} spacing {:?} origin {:?}",
                image.geometry.dims,
                image.geometry.spacing,
                image.geometry.origin,
                mask.geometry.dims,
                mask.geometry.spacing,
                mask.geometry.origin
            )));
        }
        let (lo, hi) =
            bounding_box(mask, |v| v == label).ok_or(RadiomicsError::EmptyRegion(label))?;
        let mut region = match &settings.interpolation {
            None => crop(image, mask, label, lo, hi),
            Some(interp) => interpolate(image, mask, label, lo, hi, interp, frame),
        };
        if !region.morph.iter().any(|&m| m) {
            return Err(RadiomicsError::EmptyRegion(label));
        }
        region.resegment(settings);
        if !region.intensity.iter().any(|&m| m) {
            return Err(RadiomicsError::Settings(
                "re-segmentation removed every voxel of the region".into(),
            ));
        }
        Ok(region)
    }

    /// Intensities of the intensity mask, in voxel order.
    pub fn intensities(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.intensity.iter().filter(|&&m| m).count());
        out.extend(
            self.image
                .iter()
                .zip(&self.intensity)
                .filter(|(_, m)| **m)
                .map(|(&v, _)| v as f64),
        );
        out
    }

    fn resegment(&mut self, settings: &RadiomicsSettings) {
        let r = &settings.resegmentation;
        // A voxel without a finite intensity (NaN in a float image) has nothing to measure.
        self.intensity = self
            .morph
            .iter()
            .zip(&self.image)
            .map(|(&m, v)| m && v.is_finite())
            .collect();
        if let Some([lo, hi]) = r.range {
            for (m, &v) in self.intensity.iter_mut().zip(&self.image) {
                *m = *m && (v as f64) >= lo && (v as f64) <= hi;
            }
        }
        if let Some(sigma) = r.outlier_sigma {
            let vals = self.intensities();
            let n = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / n;
            let sd = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            let (lo, hi) = (mean - sigma * sd, mean + sigma * sd);
            for (m, &v) in self.intensity.iter_mut().zip(&self.image) {
                *m = *m && (v as f64) >= lo && (v as f64) <= hi;
            }
        }
    }

    /// Discretise the intensity mask's voxels (IBSI 2.7).
    pub fn discretise(
        &self,
        d: Discretisation,
        settings: &RadiomicsSettings,
    ) -> Result<Discretised, RadiomicsError> {
        let vals = self.intensities();
        let (min, max) = vals
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let mut levels = vec![0u32; self.image.len()];
        let mut bin_lower = None;
        let n_levels = match d {
            Discretisation::FixedBinNumber { bins } => {
                let ng = bins as f64;
                for ((l, &v), &m) in levels.iter_mut().zip(&self.image).zip(&self.intensity) {
                    if m {
                        *l = if max > min {
                            ((ng * (v as f64 - min) / (max - min)).floor() as u32 + 1).min(bins)
                        } else {
                            1
                        };
                    }
                }
                bins
            }
            Discretisation::FixedBinSize { width, lower } => {
                let lower = lower
                    .or(settings
                        .resegmentation
                        .range
                        .map(|r| r[0])
                        .filter(|l| l.is_finite() && *l > -1e299))
                    .unwrap_or(min);
                bin_lower = Some((lower, width));
                let mut top = 0;
                for ((l, &v), &m) in levels.iter_mut().zip(&self.image).zip(&self.intensity) {
                    if m {
                        *l = (((v as f64 - lower) / width).floor().max(0.0) as u32) + 1;
                        top = top.max(*l);
                    }
                }
                top
            }
            Discretisation::None => {
                let mut top = 0;
                for ((l, &v), &m) in levels.iter_mut().zip(&self.image).zip(&self.intensity) {
                    if m {
                        let r = (v as f64).round();
                        if r < 1.0 || (v as f64 - r).abs() > 1e-6 || r > 1e6 {
                            return Err(RadiomicsError::Settings(format!(
                                "discretisation 'none' needs whole grey levels from 1; found {v}"
                            )));
                        }
                        *l = r as u32;
                        top = top.max(*l);
                    }
                }
                top
            }
        };
        Ok(Discretised {
            levels,
            n_levels,
            bin_lower,
        })
    }
}

/// How many voxels the block extends beyond the region along each axis: enough for the local
/// intensity sphere.
fn margin(spacing: [f64; 3]) -> [usize; 3] {
    std::array::from_fn(|k| (PEAK_RADIUS_MM / spacing[k]).ceil() as usize)
}

fn crop(
    image: &Volume<f32>,
    mask: &Volume<u16>,
    label: u16,
    lo: [usize; 3],
    hi: [usize; 3],
) -> Region {
    let m = margin(image.geometry.spacing);
    let dims = image.dims();
    let lo: [usize; 3] = std::array::from_fn(|k| lo[k].saturating_sub(m[k]));
    let hi: [usize; 3] = std::array::from_fn(|k| (hi[k] + m[k]).min(dims[k]));
    let img = image.crop(lo, hi);
    let msk = mask.crop(lo, hi);
    let morph: Vec<bool> = msk.data.iter().map(|&v| v == label).collect();
    Region {
        geometry: img.geometry,
        image: img.data,
        intensity: morph.clone(),
        morph,
    }
}

/// IBSI grid alignment: the new grid shares the centre of the original image's grid.
fn new_grid(g: &Geometry, spacing: [f64; 3]) -> ([usize; 3], [f64; 3]) {
    let mut dims = [0; 3];
    let mut offset = [0.0; 3];
    for k in 0..3 {
        let n = ((g.dims[k] as f64 * g.spacing[k] / spacing[k]) - 1e-9)
            .ceil()
            .max(1.0) as usize;
        dims[k] = n;
        // Position of new index 0 in original (continuous) index units.
        offset[k] = (g.spacing[k] * (g.dims[k] as f64 - 1.0) - spacing[k] * (n as f64 - 1.0))
            / 2.0
            / g.spacing[k];
    }
    (dims, offset)
}

fn interpolate(
    image: &Volume<f32>,
    mask: &Volume<u16>,
    label: u16,
    lo: [usize; 3],
    hi: [usize; 3],
    interp: &Interpolation,
    frame: Frame,
) -> Region {
    let g = frame.geometry;
    let target = interp.target_spacing(g.spacing);
    let (new_dims, frame_offset) = new_grid(&g, target);
    // Work in the crop's index units: the new grid's origin relative to the crop.
    let offset: [f64; 3] = std::array::from_fn(|k| frame_offset[k] - frame.offset[k] as f64);
    let crop_dims = image.dims();
    let step: [f64; 3] = std::array::from_fn(|k| target[k] / g.spacing[k]);
    let m = margin(target);
    // New-grid indices whose position falls within one original voxel of the region, plus margin.
    let mut blo = [0usize; 3];
    let mut bhi = [0usize; 3];
    for k in 0..3 {
        let first = (((lo[k] as f64 - 1.0) - offset[k]) / step[k])
            .floor()
            .max(0.0) as usize;
        let last = ((((hi[k] as f64) - offset[k]) / step[k]).ceil().max(0.0) as usize + 1)
            .min(new_dims[k]);
        // New-grid voxels must also lie within the crop (the caller kept a margin for them).
        // New-grid voxels must lie within the crop where the crop ends inside the image (the
        // caller kept a margin for them); at the image's own edge they extend half a voxel
        // beyond the outermost centres, with edge values, as the IBSI grid does.
        let at_image_start = frame.offset[k] == 0;
        let at_image_end = frame.offset[k] + crop_dims[k] >= g.dims[k];
        let crop_first = if at_image_start {
            0
        } else {
            ((-offset[k]) / step[k]).ceil().max(0.0) as usize
        };
        let crop_last = if at_image_end {
            new_dims[k]
        } else {
            (((crop_dims[k] as f64 - 1.0 - offset[k]) / step[k])
                .floor()
                .max(0.0) as usize
                + 1)
            .min(new_dims[k])
        };
        let (first, last) = (
            first.max(crop_first),
            last.min(crop_last).max(first.max(crop_first) + 1),
        );
        blo[k] = first.saturating_sub(m[k]).max(crop_first);
        bhi[k] = (last + m[k]).min(crop_last).max(blo[k] + 1);
    }
    let dims: [usize; 3] = std::array::from_fn(|k| bhi[k] - blo[k]);
    let mut geometry = g;
    geometry.dims = dims;
    geometry.spacing = target;
    geometry.origin = image
        .geometry
        .world(std::array::from_fn(|k| offset[k] + blo[k] as f64 * step[k]));

    // The original block the interpolation reads from. The cubic B-spline prefilter's influence
    // decays as 0.268^n, so 30 voxels of support make it exact to rounding.
    let support = if interp.method == InterpolationMethod::Cubic {
        30
    } else {
        2
    };
    let src_lo: [usize; 3] = std::array::from_fn(|k| {
        let p = offset[k] + blo[k] as f64 * step[k];
        (p.floor() as i64 - support).clamp(0, crop_dims[k] as i64) as usize
    });
    let src_hi: [usize; 3] = std::array::from_fn(|k| {
        let p = offset[k] + (bhi[k] - 1) as f64 * step[k];
        ((p.ceil() as i64 + support + 1).clamp(0, crop_dims[k] as i64) as usize).max(src_lo[k] + 1)
    });
    let src = image.crop(src_lo, src_hi);
    let src_mask: Vec<f32> = mask
        .crop(src_lo, src_hi)
        .data
        .iter()
        .map(|&v| if v == label { 1.0 } else { 0.0 })
        .collect();
    let coeffs = (interp.method == InterpolationMethod::Cubic).then(|| bspline_coefficients(&src));
    let sd = src.dims();
    let n = dims[0] * dims[1] * dims[2];
    let mut out_img = Vec::with_capacity(n);
    let mut morph = Vec::with_capacity(n);
    // Sample positions per axis, as an integer voxel of the source block and a fraction. Both
    // come from the position in the full image's index units, so a crop gives bit-identical
    // weights to the whole image (rounding to whole HU is sensitive to the last bit).
    let samples: [Vec<(i64, f64)>; 3] = std::array::from_fn(|k| {
        (0..dims[k])
            .map(|i| {
                let pf = frame_offset[k] + (blo[k] + i) as f64 * step[k];
                let fl = pf.floor();
                (
                    fl as i64 - frame.offset[k] as i64 - src_lo[k] as i64,
                    pf - fl,
                )
            })
            .collect()
    });
    for &(iz, tz) in &samples[2] {
        for &(iy, ty) in &samples[1] {
            for &(ix, tx) in &samples[0] {
                let (i0, t) = ([ix, iy, iz], [tx, ty, tz]);
                let v = match interp.method {
                    InterpolationMethod::Nearest => nearest(&src.data, sd, i0, t),
                    InterpolationMethod::Linear => trilinear(&src.data, sd, i0, t),
                    InterpolationMethod::Cubic => {
                        cubic(coeffs.as_deref().unwrap_or(&src.data), sd, i0, t)
                    }
                };
                out_img.push(if interp.round_intensities {
                    v.round()
                } else {
                    v
                } as f32);
                morph.push(trilinear(&src_mask, sd, i0, t) >= interp.mask_threshold - 1e-9);
            }
        }
    }
    Region {
        geometry,
        image: out_img,
        intensity: morph.clone(),
        morph,
    }
}

#[inline]
fn at(data: &[f32], d: [usize; 3], x: i64, y: i64, z: i64) -> f64 {
    // Edge values extend beyond the image ("nearest" boundary).
    let c = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
    data[c(x, d[0]) + d[0] * (c(y, d[1]) + d[1] * c(z, d[2]))] as f64
}

fn nearest(data: &[f32], d: [usize; 3], i0: [i64; 3], t: [f64; 3]) -> f64 {
    // The nearest grid point; a tie (t = 0.5) goes up, as rounding the position would.
    let r = |k: usize| i0[k] + (t[k] >= 0.5) as i64;
    at(data, d, r(0), r(1), r(2))
}

fn trilinear(data: &[f32], d: [usize; 3], i0: [i64; 3], t: [f64; 3]) -> f64 {
    let [x0, y0, z0] = i0;
    let mut acc = 0.0;
    for dz in 0..2 {
        let wz = if dz == 0 { 1.0 - t[2] } else { t[2] };
        if wz == 0.0 {
            continue;
        }
        for dy in 0..2 {
            let wy = if dy == 0 { 1.0 - t[1] } else { t[1] };
            if wy == 0.0 {
                continue;
            }
            for dx in 0..2 {
                let wx = if dx == 0 { 1.0 - t[0] } else { t[0] };
                if wx == 0.0 {
                    continue;
                }
                acc += wx * wy * wz * at(data, d, x0 + dx, y0 + dy, z0 + dz);
            }
        }
    }
    acc
}

/// Cubic B-spline prefilter along every axis (mirror boundary), so that evaluating the spline at
/// grid points returns the original values.
fn bspline_coefficients(src: &Volume<f32>) -> Vec<f32> {
    let d = src.dims();
    let mut c: Vec<f64> = src.data.iter().map(|&v| v as f64).collect();
    let pole = 3f64.sqrt() - 2.0;
    let strides = [1, d[0], d[0] * d[1]];
    for axis in 0..3 {
        let n = d[axis];
        if n < 2 {
            continue;
        }
        let mut line = vec![0.0; n];
        let others: Vec<usize> = (0..3).filter(|&k| k != axis).collect();
        for a in 0..d[others[0]] {
            for b in 0..d[others[1]] {
                let base = a * strides[others[0]] + b * strides[others[1]];
                for (i, l) in line.iter_mut().enumerate() {
                    *l = c[base + i * strides[axis]];
                }
                prefilter_line(&mut line, pole);
                for (i, l) in line.iter().enumerate() {
                    c[base + i * strides[axis]] = *l;
                }
            }
        }
    }
    c.into_iter().map(|v| v as f32).collect()
}

fn prefilter_line(c: &mut [f64], z: f64) {
    let n = c.len();
    let gain = (1.0 - z) * (1.0 - 1.0 / z);
    for v in c.iter_mut() {
        *v *= gain;
    }
    // Causal initialisation for mirror-symmetric boundaries.
    let horizon = n.min(30);
    let mut zn = z;
    let mut sum = c[0];
    for v in c.iter().take(horizon).skip(1) {
        sum += zn * v;
        zn *= z;
    }
    c[0] = sum;
    for k in 1..n {
        c[k] += z * c[k - 1];
    }
    c[n - 1] = (z / (z * z - 1.0)) * (z * c[n - 2] + c[n - 1]);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
}

fn cubic(coeffs: &[f32], d: [usize; 3], i0: [i64; 3], frac: [f64; 3]) -> f64 {
    let base = i0.map(|v| v - 1);
    let w: [[f64; 4]; 3] = std::array::from_fn(|k| {
        let t = frac[k];
        [
            (1.0 - t).powi(3) / 6.0,
            (3.0 * t.powi(3) - 6.0 * t * t + 4.0) / 6.0,
            (-3.0 * t.powi(3) + 3.0 * t * t + 3.0 * t + 1.0) / 6.0,
            t.powi(3) / 6.0,
        ]
    });
    let mirror = |v: i64, n: usize| -> i64 {
        let n = n as i64;
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let m = v.rem_euclid(period);
        if m >= n { period - m } else { m }
    };
    let mut acc = 0.0;
    for (kz, wz) in w[2].iter().enumerate() {
        let z = mirror(base[2] + kz as i64, d[2]);
        for (ky, wy) in w[1].iter().enumerate() {
            let y = mirror(base[1] + ky as i64, d[1]);
            for (kx, wx) in w[0].iter().enumerate() {
                let x = mirror(base[0] + kx as i64, d[0]);
                acc += wx
                    * wy
                    * wz
                    * coeffs[(x + d[0] as i64 * (y + d[1] as i64 * z)) as usize] as f64;
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Resegmentation;

    fn ramp(dims: [usize; 3], spacing: [f64; 3]) -> Volume<f32> {
        let g = Geometry::new(dims, spacing);
        let mut data = Vec::new();
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    data.push((x + 10 * y + 100 * z) as f32);
                }
            }
        }
        Volume { geometry: g, data }
    }

    #[test]
    fn grid_alignment_keeps_the_image_centre() {
        let g = Geometry::new([5, 4, 4], [2.0; 3]);
        let (dims, off) = new_grid(&g, [1.0; 3]);
        assert_eq!(dims, [10, 8, 8]);
        // IBSI: old centre 4 mm from voxel 0; new voxel 0 sits at 4 - 9*0.5 = -0.5 mm.
        assert!((off[0] * 2.0 - -0.5).abs() < 1e-12, "{off:?}");
    }

    #[test]
    fn linear_interpolation_of_a_ramp_is_exact_inside() {
        let img = ramp([12, 12, 12], [1.0; 3]);
        let mut mask = img.map(|_| 0u16);
        for z in 3..9 {
            for y in 3..9 {
                for x in 3..9 {
                    let i = img.geometry.index(x, y, z);
                    mask.data[i] = 1;
                }
            }
        }
        let settings = RadiomicsSettings {
            interpolation: Some(Interpolation {
                spacing: [0.5; 3],
                method: InterpolationMethod::Linear,
                round_intensities: false,
                mask_threshold: 0.5,
            }),
            ..Default::default()
        };
        let r = Region::extract(&img, &mask, 1, &settings).unwrap();
        for (i, (&v, &m)) in r.image.iter().zip(&r.morph).enumerate() {
            if m {
                let d = r.geometry.dims;
                let c = [i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1])];
                let w = r.geometry.world(c.map(|v| v as f64));
                let expect = w[0] + 10.0 * w[1] + 100.0 * w[2];
                assert!((v as f64 - expect).abs() < 1e-3, "{v} vs {expect}");
            }
        }
        let n = r.morph.iter().filter(|&&m| m).count();
        // 6 voxels of 1 mm -> 12 new voxels per axis with centres 2.75 .. 8.25; the mask value at
        // the 8 corners is 0.75^3 = 0.42 < 0.5, on the edges 0.75^2 = 0.56 >= 0.5.
        assert_eq!(n, 12 * 12 * 12 - 8);
    }

    #[test]
    fn cubic_spline_reproduces_grid_values() {
        let img = ramp([9, 9, 9], [1.0; 3]);
        let sd = img.dims();
        let c = bspline_coefficients(&img);
        for p in [
            [2.0, 3.0, 4.0],
            [0.0, 0.0, 0.0],
            [8.0, 8.0, 8.0],
            [4.5, 4.0, 4.0],
        ] {
            let expect = p[0] + 10.0 * p[1] + 100.0 * p[2];
            let (i0, t) = (
                p.map(|v: f64| v.floor() as i64),
                p.map(|v: f64| v - v.floor()),
            );
            let got = cubic(&c, sd, i0, t);
            assert!((got - expect).abs() < 1e-2, "{p:?}: {got}");
        }
    }

    #[test]
    fn resegmentation_and_discretisation_follow_ibsi() {
        let img = ramp([10, 1, 1], [1.0; 3]);
        let mask = img.map(|_| 1u16);
        let settings = RadiomicsSettings {
            resegmentation: Resegmentation {
                range: Some([2.0, 7.0]),
                outlier_sigma: None,
            },
            ..Default::default()
        };
        let r = Region::extract(&img, &mask, 1, &settings).unwrap();
        assert_eq!(r.intensities(), vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        let d = r
            .discretise(
                Discretisation::FixedBinSize {
                    width: 2.0,
                    lower: None,
                },
                &settings,
            )
            .unwrap();
        // Bin edges start at the re-segmentation lower bound 2: [2,4) [4,6) [6,8).
        let got: Vec<u32> = d.levels.iter().copied().filter(|&l| l > 0).collect();
        assert_eq!(got, vec![1, 1, 2, 2, 3, 3]);
        let d = r
            .discretise(Discretisation::FixedBinNumber { bins: 5 }, &settings)
            .unwrap();
        let got: Vec<u32> = d.levels.iter().copied().filter(|&l| l > 0).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 5]);
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::settings::Resegmentation;

    fn volume(
        dims: [usize; 3],
        spacing: [f64; 3],
        f: impl Fn(usize, usize, usize) -> f32,
    ) -> Volume<f32> {
        let g = Geometry::new(dims, spacing);
        let mut data = Vec::with_capacity(g.len());
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    data.push(f(x, y, z));
                }
            }
        }
        Volume { geometry: g, data }
    }

    #[test]
    fn in_plane_interpolation_keeps_slices_and_rounds() {
        let img = volume([10, 10, 5], [2.0, 2.0, 3.0], |x, y, z| {
            (x * 7 + y * 3 + z) as f32 + 0.3
        });
        let mask = img.map(|_| 1u16);
        let settings = RadiomicsSettings {
            interpolation: Some(Interpolation {
                spacing: [1.0, 1.0, 0.0],
                method: InterpolationMethod::Linear,
                round_intensities: true,
                mask_threshold: 0.5,
            }),
            ..Default::default()
        };
        let r = Region::extract(&img, &mask, 1, &settings).unwrap();
        assert_eq!(r.geometry.spacing, [1.0, 1.0, 3.0]);
        // The z positions are the original slices: new grid 20 x 20 x 5, slice origin unchanged.
        assert_eq!(r.geometry.dims[2], 5);
        assert!((r.geometry.origin[2] - 0.0).abs() < 1e-12);
        // IBSI: 10 voxels of 2 mm -> 20 of 1 mm, centred: first new centre at -0.5 mm.
        assert!(
            (r.geometry.origin[0] - -0.5).abs() < 1e-12,
            "{:?}",
            r.geometry.origin
        );
        assert!(r.image.iter().all(|v| v.fract() == 0.0));
    }

    #[test]
    fn outlier_resegmentation_removes_beyond_three_sigma() {
        // 999 voxels of 0 and 1 (mean 0.5, sd 0.5) and one of 100.
        let img = volume([10, 10, 10], [1.0; 3], |x, y, z| {
            let i = x + 10 * (y + 10 * z);
            if i == 999 { 100.0 } else { (i % 2) as f32 }
        });
        let mask = img.map(|_| 1u16);
        let settings = RadiomicsSettings {
            resegmentation: Resegmentation {
                range: None,
                outlier_sigma: Some(3.0),
            },
            ..Default::default()
        };
        let r = Region::extract(&img, &mask, 1, &settings).unwrap();
        let kept = r.intensities();
        assert_eq!(kept.len(), 999);
        assert!(kept.iter().all(|&v| v <= 1.0));
        // The morphological mask keeps the outlier voxel.
        assert_eq!(r.morph.iter().filter(|&&m| m).count(), 1000);
    }

    #[test]
    fn fixed_bin_number_puts_the_maximum_in_the_last_bin_and_a_flat_region_in_one() {
        let img = volume([4, 1, 1], [1.0; 3], |x, _, _| [0.0, 1.0, 2.0, 8.0][x]);
        let mask = img.map(|_| 1u16);
        let s = RadiomicsSettings::default();
        let r = Region::extract(&img, &mask, 1, &s).unwrap();
        let d = r
            .discretise(Discretisation::FixedBinNumber { bins: 4 }, &s)
            .unwrap();
        let got: Vec<u32> = d.levels.iter().copied().filter(|&l| l > 0).collect();
        assert_eq!(got, vec![1, 1, 2, 4]);
        let flat = volume([3, 1, 1], [1.0; 3], |_, _, _| 5.0);
        let r = Region::extract(&flat, &flat.map(|_| 1u16), 1, &s).unwrap();
        let d = r
            .discretise(Discretisation::FixedBinNumber { bins: 8 }, &s)
            .unwrap();
        assert!(d.levels.iter().filter(|&&l| l > 0).all(|&l| l == 1));
    }
}

#[cfg(test)]
mod input_tests {
    use super::*;

    #[test]
    fn non_finite_intensities_leave_the_intensity_mask_and_huge_level_counts_are_refused() {
        let g = Geometry::new([4, 1, 1], [1.0; 3]);
        let img = Volume {
            geometry: g,
            data: vec![1.0, f32::NAN, 3.0, 1e6],
        };
        let mask = img.map(|_| 1u16);
        let s = RadiomicsSettings::default();
        let r = Region::extract(&img, &mask, 1, &s).unwrap();
        assert_eq!(r.intensities(), vec![1.0, 3.0, 1e6]);
        assert_eq!(r.morph.iter().filter(|&&m| m).count(), 4);
        let fine = RadiomicsSettings {
            texture_discretisation: Discretisation::FixedBinSize {
                width: 1.0,
                lower: None,
            },
            ..Default::default()
        };
        let e = crate::features_of(&r, &fine).unwrap_err().to_string();
        assert!(e.contains("too many for texture"), "{e}");
    }
}
