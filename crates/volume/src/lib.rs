//! 3-D medical images and masks: the [`Volume`] type with its geometry (voxel spacing, origin,
//! direction) and the readers that make one from NIfTI files, DICOM image series, DICOM RTSTRUCT
//! contours and DICOM SEG objects.
//!
//! Every reader returns world coordinates in the DICOM patient system (LPS, millimetres), so an
//! image from one format and a mask from another can be checked against each other with
//! [`Geometry::same_grid`]. Voxels are stored x fastest, then y, then z (NIfTI and DICOM order).
//!
//! - [`nifti`]: NIfTI-1 and NIfTI-2, plain or gzip, read and write.
//! - [`dicom_series`]: a folder of DICOM images to one volume.
//! - [`rtstruct`]: RTSTRUCT polygons rasterised onto an image grid, per ROI name.
//! - [`seg`]: DICOM SEG segments (binary and fractional) onto an image grid.
//! - [`source`]: one case (image + mask) cut down to the box around its regions.
// Voxel code indexes several arrays by the same axis or level; index loops say that plainly.
#![allow(clippy::needless_range_loop, clippy::type_complexity)]

pub mod dicom_series;
mod error;
pub mod nifti;
pub mod rtstruct;
pub mod seg;
pub mod source;

pub use error::VolumeError;
pub use source::{Case, MaskRegion, RegionSelector, load_case};

/// Where a voxel grid sits in the world: `world = origin + direction * (index * spacing)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// Voxels along x, y, z.
    pub dims: [usize; 3],
    /// Millimetres between voxel centres along each grid axis.
    pub spacing: [f64; 3],
    /// World position (LPS, mm) of the centre of voxel (0, 0, 0).
    pub origin: [f64; 3],
    /// Unit vectors of the grid axes in world coordinates: column `k` is axis `k`.
    pub direction: [[f64; 3]; 3],
}

impl Geometry {
    /// An axis-aligned grid at the world origin.
    pub fn new(dims: [usize; 3], spacing: [f64; 3]) -> Self {
        Geometry {
            dims,
            spacing,
            origin: [0.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        }
    }

    pub fn len(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Linear index of voxel (x, y, z).
    #[inline]
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }

    /// World position of a (possibly fractional) voxel index.
    pub fn world(&self, ijk: [f64; 3]) -> [f64; 3] {
        let mut w = self.origin;
        for (r, wr) in w.iter_mut().enumerate() {
            for (k, &c) in ijk.iter().enumerate() {
                *wr += self.direction[r][k] * c * self.spacing[k];
            }
        }
        w
    }

    /// Fractional voxel index of a world position (inverse of [`Geometry::world`]).
    pub fn continuous_index(&self, world: [f64; 3]) -> [f64; 3] {
        let d = [
            world[0] - self.origin[0],
            world[1] - self.origin[1],
            world[2] - self.origin[2],
        ];
        let inv = invert3(&self.direction);
        let mut out = [0.0; 3];
        for (k, o) in out.iter_mut().enumerate() {
            *o = (inv[k][0] * d[0] + inv[k][1] * d[1] + inv[k][2] * d[2]) / self.spacing[k];
        }
        out
    }

    /// Whether two grids coincide voxel for voxel (within `tol_mm` at the grid's corners).
    pub fn same_grid(&self, other: &Geometry, tol_mm: f64) -> bool {
        if self.dims != other.dims {
            return false;
        }
        let far = [
            self.dims[0].saturating_sub(1) as f64,
            self.dims[1].saturating_sub(1) as f64,
            self.dims[2].saturating_sub(1) as f64,
        ];
        [
            [0.0; 3],
            far,
            [far[0], 0.0, 0.0],
            [0.0, far[1], 0.0],
            [0.0, 0.0, far[2]],
        ]
        .iter()
        .all(|&c| distance(self.world(c), other.world(c)) <= tol_mm)
    }

    /// Volume of one voxel in mm^3.
    pub fn voxel_volume(&self) -> f64 {
        self.spacing[0] * self.spacing[1] * self.spacing[2]
    }
}

/// A 3-D array of voxels with its geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T> {
    pub geometry: Geometry,
    /// Voxels, x fastest.
    pub data: Vec<T>,
}

impl<T: Copy> Volume<T> {
    /// A volume filled with `value`.
    pub fn filled(geometry: Geometry, value: T) -> Self {
        Volume {
            data: vec![value; geometry.len()],
            geometry,
        }
    }

    pub fn dims(&self) -> [usize; 3] {
        self.geometry.dims
    }

    #[inline]
    pub fn get(&self, x: usize, y: usize, z: usize) -> T {
        self.data[self.geometry.index(x, y, z)]
    }

    /// The sub-volume `lo..hi` (exclusive) along each axis, geometry moved accordingly.
    pub fn crop(&self, lo: [usize; 3], hi: [usize; 3]) -> Volume<T> {
        let dims = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]];
        let mut geometry = self.geometry;
        geometry.origin = self
            .geometry
            .world([lo[0] as f64, lo[1] as f64, lo[2] as f64]);
        geometry.dims = dims;
        let mut data = Vec::with_capacity(geometry.len());
        for z in lo[2]..hi[2] {
            for y in lo[1]..hi[1] {
                let start = self.geometry.index(lo[0], y, z);
                data.extend_from_slice(&self.data[start..start + dims[0]]);
            }
        }
        Volume { geometry, data }
    }

    /// Convert every voxel.
    pub fn map<U>(&self, f: impl Fn(T) -> U) -> Volume<U> {
        Volume {
            geometry: self.geometry,
            data: self.data.iter().map(|&v| f(v)).collect(),
        }
    }
}

/// An image: intensities as 32-bit floats (HU, SUV, arbitrary MR units).
pub type Image = Volume<f32>;

/// A label map: 0 is background, each other value one region.
pub type LabelMap = Volume<u16>;

/// Bounding box `[lo, hi)` of the voxels for which `inside` holds, or None if there are none.
pub fn bounding_box<T: Copy>(
    vol: &Volume<T>,
    inside: impl Fn(T) -> bool,
) -> Option<([usize; 3], [usize; 3])> {
    bounding_box_of(&vol.data, vol.dims(), inside)
}

/// [`bounding_box`] of voxels held in a plain slice on a grid of `dims` (x fastest).
pub fn bounding_box_of<T: Copy>(
    data: &[T],
    dims: [usize; 3],
    inside: impl Fn(T) -> bool,
) -> Option<([usize; 3], [usize; 3])> {
    let [nx, ny, _] = dims;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for (i, &v) in data.iter().enumerate() {
        if inside(v) {
            let c = [i % nx, (i / nx) % ny, i / (nx * ny)];
            for k in 0..3 {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k] + 1);
            }
        }
    }
    (lo[0] != usize::MAX).then_some((lo, hi))
}

pub(crate) fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Cross product of two 3-vectors.
pub fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Dot product of two 3-vectors.
pub fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn invert3(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let inv_det = if det.abs() < 1e-12 { 0.0 } else { 1.0 / det };
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let (a, b) = ((j + 1) % 3, (j + 2) % 3);
            let (c, d) = ((i + 1) % 3, (i + 2) % 3);
            r[i][j] = (m[a][c] * m[b][d] - m[a][d] * m[b][c]) * inv_det;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_and_index_are_inverse_under_rotation() {
        let mut g = Geometry::new([10, 20, 30], [0.7, 0.9, 2.5]);
        g.origin = [-100.0, 50.0, 12.5];
        let (c, s) = (0.3f64.cos(), 0.3f64.sin());
        g.direction = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let w = g.world([3.5, 7.0, 11.0]);
        let back = g.continuous_index(w);
        for (a, b) in back.iter().zip([3.5, 7.0, 11.0]) {
            assert!((a - b).abs() < 1e-9, "{back:?}");
        }
    }

    #[test]
    fn crop_moves_origin_and_keeps_values() {
        let g = Geometry::new([4, 3, 2], [1.0, 2.0, 3.0]);
        let v = Volume {
            geometry: g,
            data: (0..24).map(|i| i as f32).collect(),
        };
        let c = v.crop([1, 1, 1], [3, 3, 2]);
        assert_eq!(c.dims(), [2, 2, 1]);
        assert_eq!(c.data, vec![17.0, 18.0, 21.0, 22.0]);
        assert_eq!(c.geometry.origin, [1.0, 2.0, 3.0]);
        assert_eq!(
            bounding_box(&v, |x| x >= 17.0 && x != 20.0),
            Some(([1, 1, 1], [4, 3, 2]))
        );
    }
}
