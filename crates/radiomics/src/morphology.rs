//! Morphological features (IBSI 3.1, family HCUG): a marching-cubes mesh of the morphological
//! mask, its convex hull, principal component axes, and the spatial autocorrelation of the
//! intensity mask (Moran's I, Geary's C).

use crate::FeatureSink;
use crate::hull::ConvexHull;
use crate::region::Region;
use crate::spatial;

/// Volume and area of the marching-cubes surface of a binary mask, vertices on edge midpoints
/// between voxel centres. Triangles are measured as they are made and never stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeshMeasure {
    /// Enclosed volume, mm^3.
    pub volume: f64,
    /// Surface area, mm^2.
    pub area: f64,
    pub triangles: usize,
    /// Volume with the winding's sign (positive: faces counter-clockwise seen from outside).
    signed_volume: f64,
}

/// Corners of each cube face, counter-clockwise seen from outside the cube.
const FACES: [[[i64; 3]; 4]; 6] = [
    [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]],
    [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 1]],
    [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]],
    [[0, 1, 0], [0, 1, 1], [1, 1, 1], [1, 1, 0]],
    [[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]],
    [[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]],
];

impl MeshMeasure {
    /// Marching cubes on `mask` (grid `dims`) at iso-level 0.5; outside the grid counts as outside.
    ///
    /// Rather than a 256-case lookup table, each cube's surface polygon is traced from the
    /// crossings on its six faces (a face with two diagonal inside corners joins them), so
    /// neighbouring cubes always agree and the mesh is closed and consistently oriented.
    pub fn of_mask(mask: &[bool], dims: [usize; 3], spacing: [f64; 3]) -> MeshMeasure {
        let mut out = MeshMeasure {
            volume: 0.0,
            area: 0.0,
            triangles: 0,
            signed_volume: 0.0,
        };
        let Some((lo, hi)) = mask_box(mask, dims) else {
            return out;
        };
        let inside = |x: i64, y: i64, z: i64| -> bool {
            x >= 0
                && y >= 0
                && z >= 0
                && (x as usize) < dims[0]
                && (y as usize) < dims[1]
                && (z as usize) < dims[2]
                && mask[x as usize + dims[0] * (y as usize + dims[1] * z as usize)]
        };
        let mm =
            |v: [i64; 3]| -> [f64; 3] { std::array::from_fn(|k| v[k] as f64 * 0.5 * spacing[k]) };
        let mut signed = 0.0;
        let mut next: Vec<([i64; 3], [i64; 3])> = Vec::with_capacity(12);
        let mut poly: Vec<[i64; 3]> = Vec::with_capacity(12);
        // Only cells touching the mask's box can hold surface.
        for z in lo[2] as i64 - 1..hi[2] as i64 {
            for y in lo[1] as i64 - 1..hi[1] as i64 {
                for x in lo[0] as i64 - 1..hi[0] as i64 {
                    let mut corners = [false; 8];
                    let mut count = 0;
                    for (c, v) in corners.iter_mut().enumerate() {
                        let c = c as i64;
                        *v = inside(x + (c & 1), y + ((c >> 1) & 1), z + ((c >> 2) & 1));
                        count += *v as usize;
                    }
                    if count == 0 || count == 8 {
                        continue;
                    }
                    let corner_in = |c: [i64; 3]| corners[(c[0] + 2 * c[1] + 4 * c[2]) as usize];
                    next.clear();
                    for face in &FACES {
                        let ins = face.map(corner_in);
                        // Crossing edge k runs from corner k to corner k+1 (CCW).
                        let mid = |k: usize| {
                            let (a, b) = (face[k], face[(k + 1) % 4]);
                            [
                                2 * x + a[0] + b[0],
                                2 * y + a[1] + b[1],
                                2 * z + a[2] + b[2],
                            ]
                        };
                        for k in 0..4 {
                            let entry = !ins[k] && ins[(k + 1) % 4];
                            if !entry {
                                continue;
                            }
                            // Pair the entry with the nearest exit clockwise: on a face with two
                            // diagonal inside corners this joins them (cuts off the outside ones).
                            let mut j = (k + 3) % 4;
                            while !ins[j] || ins[(j + 1) % 4] {
                                j = (j + 3) % 4;
                            }
                            next.push((mid(k), mid(j)));
                        }
                    }
                    // Link segments into closed polygons and fan-triangulate each.
                    let mut used = [false; 12];
                    for s in 0..next.len() {
                        if used[s] {
                            continue;
                        }
                        poly.clear();
                        poly.push(next[s].0);
                        used[s] = true;
                        let mut cur = next[s].1;
                        while cur != poly[0] {
                            poly.push(cur);
                            let Some(t) = (0..next.len()).find(|&t| !used[t] && next[t].0 == cur)
                            else {
                                break;
                            };
                            used[t] = true;
                            cur = next[t].1;
                        }
                        let start = fullest_fan_start(&poly);
                        let n = poly.len();
                        for k in 1..n.saturating_sub(1) {
                            let a = mm(poly[start]);
                            let b = mm(poly[(start + k) % n]);
                            let c = mm(poly[(start + k + 1) % n]);
                            signed += dot(a, cross(b, c));
                            out.area += norm(cross(sub(b, a), sub(c, a))) / 2.0;
                            out.triangles += 1;
                        }
                    }
                }
            }
        }
        out.signed_volume = signed / 6.0;
        out.volume = out.signed_volume.abs();
        out
    }
}

fn mask_box(mask: &[bool], dims: [usize; 3]) -> Option<([usize; 3], [usize; 3])> {
    medfed_volume::bounding_box_of(mask, dims, |m| m)
}

/// The only mesh vertices that can be convex-hull vertices, in doubled voxel units: the first and
/// last crossing on every axis-parallel line through the mask. (Every mesh vertex lies on such a
/// line between an inside and an outside voxel; any other crossing on the line lies between these
/// two.)
fn hull_candidates(mask: &[bool], dims: [usize; 3]) -> Vec<[i64; 3]> {
    let [nx, ny, nz] = dims;
    let mut pts = Vec::new();
    let mut ymin = vec![usize::MAX; nx * nz];
    let mut ymax = vec![0usize; nx * nz];
    let mut zmin = vec![usize::MAX; nx * ny];
    let mut zmax = vec![0usize; nx * ny];
    for z in 0..nz {
        for y in 0..ny {
            let row = &mask[nx * (y + ny * z)..nx * (y + ny * z) + nx];
            let (Some(first), Some(last)) =
                (row.iter().position(|&m| m), row.iter().rposition(|&m| m))
            else {
                continue;
            };
            let (y2, z2) = (2 * y as i64, 2 * z as i64);
            pts.push([2 * first as i64 - 1, y2, z2]);
            pts.push([2 * last as i64 + 1, y2, z2]);
            for (x, _) in row
                .iter()
                .enumerate()
                .take(last + 1)
                .skip(first)
                .filter(|(_, m)| **m)
            {
                let (a, b) = (x + nx * z, x + nx * y);
                ymin[a] = ymin[a].min(y);
                ymax[a] = ymax[a].max(y);
                zmin[b] = zmin[b].min(z);
                zmax[b] = zmax[b].max(z);
            }
        }
    }
    for z in 0..nz {
        for x in 0..nx {
            let a = x + nx * z;
            if ymin[a] != usize::MAX {
                pts.push([2 * x as i64, 2 * ymin[a] as i64 - 1, 2 * z as i64]);
                pts.push([2 * x as i64, 2 * ymax[a] as i64 + 1, 2 * z as i64]);
            }
        }
    }
    for y in 0..ny {
        for x in 0..nx {
            let b = x + nx * y;
            if zmin[b] != usize::MAX {
                pts.push([2 * x as i64, 2 * y as i64, 2 * zmin[b] as i64 - 1]);
                pts.push([2 * x as i64, 2 * y as i64, 2 * zmax[b] as i64 + 1]);
            }
        }
    }
    pts
}

/// The fan apex that makes a cell's (possibly non-planar) polygon enclose the most volume.
///
/// Faces wind counter-clockwise seen from outside, so the region's signed volume is positive and
/// the fullest triangulation is the one with the largest signed volume. Comparing fans is
/// independent of the origin: two fans of one boundary differ by a closed surface. This is the
/// triangulation that reproduces the IBSI consensus mesh volume of the digital phantom.
fn fullest_fan_start(poly: &[[i64; 3]]) -> usize {
    let n = poly.len();
    if n <= 3 {
        return 0;
    }
    let signed = |s: usize| -> i64 {
        let mut t = 0;
        for k in 1..n - 1 {
            let (a, b, c) = (poly[s], poly[(s + k) % n], poly[(s + k + 1) % n]);
            let bc = [
                b[1] * c[2] - b[2] * c[1],
                b[2] * c[0] - b[0] * c[2],
                b[0] * c[1] - b[1] * c[0],
            ];
            t += a[0] * bc[0] + a[1] * bc[1] + a[2] * bc[2];
        }
        t
    };
    (0..n).max_by_key(|&s| signed(s)).unwrap_or(0)
}

pub(crate) fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
pub(crate) use medfed_volume::{cross, dot};
pub(crate) fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

/// Compute the morphology family into `out`.
pub fn compute(region: &Region, out: &mut FeatureSink) {
    let g = &region.geometry;
    let sp = g.spacing;
    let dims = g.dims;
    let t = std::time::Instant::now();
    let lap =
        |what: &str| tracing::debug!(seconds = t.elapsed().as_secs_f64(), "{what} (cumulative)");
    let mesh = MeshMeasure::of_mask(&region.morph, dims, sp);
    lap("mesh");
    let (volume, area) = (mesh.volume, mesh.area);
    let n_morph = region.morph.iter().filter(|&&m| m).count();
    let vol_approx = n_morph as f64 * g.voxel_volume();
    let pi = std::f64::consts::PI;

    out.push("morph_volume", volume);
    out.push("morph_vol_approx", vol_approx);
    out.push("morph_area_mesh", area);
    out.push("morph_av", area / volume);
    out.push("morph_comp_1", volume / (pi.sqrt() * area.powf(1.5)));
    out.push("morph_comp_2", 36.0 * pi * volume * volume / area.powi(3));
    out.push(
        "morph_sph_dispr",
        area / (36.0 * pi * volume * volume).cbrt(),
    );
    out.push(
        "morph_sphericity",
        (36.0 * pi * volume * volume).cbrt() / area,
    );
    out.push(
        "morph_asphericity",
        (area.powi(3) / (36.0 * pi * volume * volume)).cbrt() - 1.0,
    );

    // Centre of mass shift: geometric centre of the morphological mask vs the intensity-weighted
    // centre of the intensity mask.
    let coord = |i: usize| -> [f64; 3] {
        [
            (i % dims[0]) as f64 * sp[0],
            ((i / dims[0]) % dims[1]) as f64 * sp[1],
            (i / (dims[0] * dims[1])) as f64 * sp[2],
        ]
    };
    let mut geo = [0.0; 3];
    let mut weighted = [0.0; 3];
    let mut wsum = 0.0;
    let mut isum = 0.0;
    let mut n_int = 0usize;
    for i in 0..region.morph.len() {
        if region.morph[i] {
            let c = coord(i);
            for k in 0..3 {
                geo[k] += c[k];
            }
        }
        if region.intensity[i] {
            let c = coord(i);
            let v = region.image[i] as f64;
            for k in 0..3 {
                weighted[k] += v * c[k];
            }
            wsum += v;
            isum += v;
            n_int += 1;
        }
    }
    let shift = norm(sub(
        geo.map(|v| v / n_morph as f64),
        weighted.map(|v| v / wsum),
    ));
    out.push("morph_com", shift);

    lap("mesh features, centre of mass");
    let candidates = hull_candidates(&region.morph, dims);
    let hull = ConvexHull::of_points(&candidates);
    lap("hull");
    let hull_pts: Vec<[f64; 3]> = hull
        .vertex_indices()
        .iter()
        .map(|&i| std::array::from_fn(|k| candidates[i][k] as f64 * 0.5 * sp[k]))
        .collect();
    let mut diam2: f64 = 0.0;
    for (i, a) in hull_pts.iter().enumerate() {
        for b in &hull_pts[i + 1..] {
            let d = sub(*a, *b);
            diam2 = diam2.max(dot(d, d));
        }
    }
    out.push("morph_diam", diam2.sqrt());
    lap("diameter");

    // Principal component analysis of the morphological mask's voxel centres.
    let mut mean = [0.0; 3];
    let pts: Vec<[f64; 3]> = (0..region.morph.len())
        .filter(|&i| region.morph[i])
        .map(coord)
        .collect();
    for p in &pts {
        for k in 0..3 {
            mean[k] += p[k] / pts.len() as f64;
        }
    }
    let mut cov = [[0.0; 3]; 3];
    for p in &pts {
        let d = sub(*p, mean);
        for r in 0..3 {
            for c in 0..3 {
                cov[r][c] += d[r] * d[c] / (pts.len() as f64 - 1.0).max(1.0);
            }
        }
    }
    let [l1, l2, l3] = symmetric_eigenvalues(cov);
    out.push("morph_pca_maj_axis", 4.0 * l1.sqrt());
    out.push("morph_pca_min_axis", 4.0 * l2.sqrt());
    out.push("morph_pca_least_axis", 4.0 * l3.sqrt());
    out.push("morph_pca_elongation", (l2 / l1).sqrt());
    out.push("morph_pca_flatness", (l3 / l1).sqrt());

    // Axis-aligned bounding box of the mesh: the mask's box, as the outermost vertices sit half a
    // voxel beyond the outermost voxel centres.
    let (blo, bhi) = mask_box(&region.morph, dims).unwrap_or(([0; 3], [0; 3]));
    let e: [f64; 3] = std::array::from_fn(|k| (bhi[k] - blo[k]) as f64 * sp[k]);
    out.push("morph_vol_dens_aabb", volume / (e[0] * e[1] * e[2]));
    out.push(
        "morph_area_dens_aabb",
        area / (2.0 * (e[0] * e[1] + e[0] * e[2] + e[1] * e[2])),
    );

    // Approximate enclosing ellipsoid: semi-axes 2 sqrt(lambda).
    let (a, b, c) = (2.0 * l1.sqrt(), 2.0 * l2.sqrt(), 2.0 * l3.sqrt());
    out.push("morph_vol_dens_aee", 3.0 * volume / (4.0 * pi * a * b * c));
    out.push("morph_area_dens_aee", area / ellipsoid_area(a, b, c));

    let (hull_volume, hull_area) = hull.volume_and_area(&candidates, sp);
    out.push("morph_vol_dens_conv_hull", volume / hull_volume);
    out.push("morph_area_dens_conv_hull", area / hull_area);

    out.push("morph_integ_int", isum / n_int as f64 * volume);

    lap("pca, boxes, ellipsoid");
    let (moran, geary) = spatial::moran_geary(region);
    lap("moran, geary");
    out.push("morph_moran_i", moran);
    out.push("morph_geary_c", geary);
}

/// Surface area of the approximate enclosing ellipsoid, semi-axes a >= b >= c, by the IBSI's
/// series of Legendre polynomials (20 terms).
///
/// The terms `(alpha beta)^nu P_nu(x)` with `x = (alpha^2 + beta^2) / (2 alpha beta)` are
/// carried by their own three-term recurrence, which stays finite when alpha or beta is 0.
fn ellipsoid_area(a: f64, b: f64, c: f64) -> f64 {
    let alpha2 = (1.0 - b * b / (a * a)).max(0.0);
    let beta2 = (1.0 - c * c / (a * a)).max(0.0);
    let s = (alpha2 + beta2) / 2.0;
    let q2 = alpha2 * beta2;
    let (mut prev, mut cur) = (1.0, s);
    let mut sum = 1.0 + cur / (1.0 - 4.0);
    for nu in 2..=20 {
        let next = ((2 * nu - 1) as f64 * s * cur - (nu - 1) as f64 * q2 * prev) / nu as f64;
        prev = cur;
        cur = next;
        sum += cur / (1.0 - 4.0 * (nu * nu) as f64);
    }
    4.0 * std::f64::consts::PI * a * b * sum
}

/// Eigenvalues of a symmetric 3x3 matrix, largest first (trigonometric method).
pub fn symmetric_eigenvalues(m: [[f64; 3]; 3]) -> [f64; 3] {
    let p1 = m[0][1].powi(2) + m[0][2].powi(2) + m[1][2].powi(2);
    let mut e = if p1 == 0.0 {
        [m[0][0], m[1][1], m[2][2]]
    } else {
        let q = (m[0][0] + m[1][1] + m[2][2]) / 3.0;
        let p2 = (m[0][0] - q).powi(2) + (m[1][1] - q).powi(2) + (m[2][2] - q).powi(2) + 2.0 * p1;
        let p = (p2 / 6.0).sqrt();
        let b: [[f64; 3]; 3] = std::array::from_fn(|r| {
            std::array::from_fn(|c| (m[r][c] - if r == c { q } else { 0.0 }) / p)
        });
        let det = b[0][0] * (b[1][1] * b[2][2] - b[1][2] * b[2][1])
            - b[0][1] * (b[1][0] * b[2][2] - b[1][2] * b[2][0])
            + b[0][2] * (b[1][0] * b[2][1] - b[1][1] * b[2][0]);
        let r = (det / 2.0).clamp(-1.0, 1.0);
        let phi = r.acos() / 3.0;
        let e1 = q + 2.0 * p * phi.cos();
        let e3 = q + 2.0 * p * (phi + 2.0 * std::f64::consts::PI / 3.0).cos();
        [e1, 3.0 * q - e1 - e3, e3]
    };
    e.sort_by(|a, b| b.total_cmp(a));
    e.map(|v| v.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_voxel_mesh_is_an_octahedron() {
        let m = MeshMeasure::of_mask(&[true], [1, 1, 1], [1.0; 3]);
        let (v, a) = (m.volume, m.area);
        assert!((v - 1.0 / 6.0).abs() < 1e-12, "{v}");
        // The winding convention fullest_fan_start relies on: positive signed volume.
        assert!(m.signed_volume > 0.0);
        // Eight equilateral faces with side sqrt(0.5).
        assert!((a - 8.0 * 3f64.sqrt() / 4.0 * 0.5).abs() < 1e-12, "{a}");
        assert_eq!(m.triangles, 8);
        // Its hull candidates are the six octahedron vertices (each found twice).
        let mut c = hull_candidates(&[true], [1, 1, 1]);
        c.sort();
        c.dedup();
        assert_eq!(c.len(), 6);
    }

    #[test]
    fn block_volume_approaches_voxel_count() {
        let dims = [6, 5, 4];
        let v = MeshMeasure::of_mask(&[true; 120], dims, [1.0, 2.0, 3.0]).volume;
        // A box of 6x5x4 voxels: the mesh cuts the corners and edges at half a voxel.
        let full = 6.0 * 10.0 * 12.0;
        assert!(v < full && v > 0.7 * full, "{v}");
        // Two voxels touching only diagonally stay separate and each is an octahedron.
        let mut diag = vec![false; 8];
        diag[0] = true;
        diag[7] = true;
        let v2 = MeshMeasure::of_mask(&diag, [2, 2, 2], [1.0; 3]).volume;
        assert!((v2 - 2.0 / 6.0).abs() < 1e-12, "{v2}");
    }

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        let e = symmetric_eigenvalues([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]]);
        for (a, b) in e.iter().zip([5.0, 3.0, 1.0]) {
            assert!((a - b).abs() < 1e-12, "{e:?}");
        }
    }

    #[test]
    fn ellipsoid_series_is_exact_for_a_sphere_and_continuous_at_spheroids() {
        let a = ellipsoid_area(2.0, 2.0, 2.0);
        assert!((a - 4.0 * std::f64::consts::PI * 4.0).abs() < 1e-9);
        let oblate = ellipsoid_area(2.0, 2.0, 1.0);
        let near = ellipsoid_area(2.0, 2.0 - 1e-7, 1.0);
        assert!(
            oblate.is_finite() && (oblate - near).abs() < 1e-4,
            "{oblate} {near}"
        );
        // Smaller than the circumscribed sphere, larger than the inscribed one.
        assert!(oblate < 4.0 * std::f64::consts::PI * 4.0 && oblate > 4.0 * std::f64::consts::PI);
    }
}
