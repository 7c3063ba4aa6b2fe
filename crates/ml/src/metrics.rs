//! Segmentation metrics on label maps: Dice, IoU (Jaccard), and over the surface voxels the
//! 95th-percentile symmetric Hausdorff distance and the surface Dice at a tolerance, in
//! millimetres (exact distances through a Euclidean distance transform).

/// Dice of the voxels labelled `class` in `pred` and `truth`; 1 when both are empty (nothing to
/// find and nothing found).
pub fn dice(pred: &[u8], truth: &[u8], class: u8) -> f64 {
    let (i, p, t) = counts(pred, truth, class);
    if p + t == 0 {
        1.0
    } else {
        2.0 * i as f64 / (p + t) as f64
    }
}

/// Intersection over union of `class`; 1 when both are empty.
pub fn iou(pred: &[u8], truth: &[u8], class: u8) -> f64 {
    let (i, p, t) = counts(pred, truth, class);
    let u = p + t - i;
    if u == 0 { 1.0 } else { i as f64 / u as f64 }
}

fn counts(pred: &[u8], truth: &[u8], class: u8) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for (&a, &b) in pred.iter().zip(truth) {
        let (pa, tb) = (a == class, b == class);
        c.0 += (pa && tb) as usize;
        c.1 += pa as usize;
        c.2 += tb as usize;
    }
    c
}

fn surface(mask: &[bool], dims: [usize; 3]) -> Vec<[usize; 3]> {
    let [nz, ny, nx] = dims;
    let at = |z: usize, y: usize, x: usize| mask[(z * ny + y) * nx + x];
    let mut out = Vec::new();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                if !at(z, y, x) {
                    continue;
                }
                // A voxel is on the surface when a face neighbour is outside (or off the grid
                // along an axis longer than one voxel).
                let edge = |c: usize, n: usize| n > 1 && (c == 0 || c + 1 == n);
                let on = edge(z, nz)
                    || edge(y, ny)
                    || edge(x, nx)
                    || (z > 0 && !at(z - 1, y, x))
                    || (z + 1 < nz && !at(z + 1, y, x))
                    || (y > 0 && !at(z, y - 1, x))
                    || (y + 1 < ny && !at(z, y + 1, x))
                    || (x > 0 && !at(z, y, x - 1))
                    || (x + 1 < nx && !at(z, y, x + 1));
                if on {
                    out.push([z, y, x]);
                }
            }
        }
    }
    out
}

/// Squared Euclidean distance (mm²) from every voxel to the nearest voxel where `feature`
/// holds, exact (Felzenszwalb and Huttenlocher's separable lower envelope of parabolas, one
/// axis at a time, with the axis' spacing); `1e30` everywhere when there is no feature voxel.
pub fn squared_distance_transform(
    feature: &[bool],
    dims: [usize; 3],
    spacing: [f64; 3],
) -> Vec<f64> {
    const FAR: f64 = 1e30;
    let mut d: Vec<f64> = feature.iter().map(|&f| if f { 0.0 } else { FAR }).collect();
    let n_max = dims.iter().copied().max().unwrap_or(0);
    let (mut f, mut out) = (vec![0.0; n_max], vec![0.0; n_max]);
    let (mut v, mut z) = (vec![0usize; n_max], vec![0.0; n_max + 1]);
    let strides = [dims[1] * dims[2], dims[2], 1];
    for axis in 0..3 {
        let n = dims[axis];
        if n == 0 {
            return d;
        }
        let w = spacing[axis];
        let (o1, o2) = ((axis + 1) % 3, (axis + 2) % 3);
        for a in 0..dims[o1] {
            for b in 0..dims[o2] {
                let base = a * strides[o1] + b * strides[o2];
                for q in 0..n {
                    f[q] = d[base + q * strides[axis]];
                }
                envelope(&f[..n], w, &mut v, &mut z, &mut out[..n]);
                for q in 0..n {
                    d[base + q * strides[axis]] = out[q].min(FAR);
                }
            }
        }
    }
    d
}

/// One axis of [`squared_distance_transform`]: `out[p] = min_q (w (p - q))² + f[q]`.
fn envelope(f: &[f64], w: f64, v: &mut [usize], z: &mut [f64], out: &mut [f64]) {
    let pos = |q: usize| q as f64 * w;
    let cut = |q: usize, p: usize| {
        ((f[q] + pos(q) * pos(q)) - (f[p] + pos(p) * pos(p))) / (2.0 * (pos(q) - pos(p)))
    };
    let mut k = 0;
    v[0] = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in 1..f.len() {
        let mut s = cut(q, v[k]);
        while k > 0 && s <= z[k] {
            k -= 1;
            s = cut(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < pos(q) {
            k += 1;
        }
        *o = (pos(q) - pos(v[k])).powi(2) + f[v[k]];
    }
}

/// Distances (mm) from each surface voxel of `class` in `a` to the surface of `class` in `b`,
/// and from `b`'s to `a`'s; `None` when either surface is empty.
fn surface_distances(
    a: &[u8],
    b: &[u8],
    class: u8,
    dims: [usize; 3],
    spacing: [f64; 3],
) -> Option<(Vec<f64>, Vec<f64>)> {
    let surf = |m: &[u8]| {
        let mask: Vec<bool> = m.iter().map(|&v| v == class).collect();
        let pts = surface(&mask, dims);
        let mut on = vec![false; mask.len()];
        for p in &pts {
            on[(p[0] * dims[1] + p[1]) * dims[2] + p[2]] = true;
        }
        (pts, on)
    };
    let ((pa, sa), (pb, sb)) = (surf(a), surf(b));
    if pa.is_empty() || pb.is_empty() {
        return None;
    }
    let to = |pts: &[[usize; 3]], on: &[bool]| -> Vec<f64> {
        let dt = squared_distance_transform(on, dims, spacing);
        pts.iter()
            .map(|p| dt[(p[0] * dims[1] + p[1]) * dims[2] + p[2]].sqrt())
            .collect()
    };
    Some((to(&pa, &sb), to(&pb, &sa)))
}

/// 95th-percentile symmetric Hausdorff distance (mm) between the surfaces of `class` in `pred`
/// and `truth` (distances of both surfaces pooled); `None` when either is empty. Exact nearest
/// distances between voxel centres, through [`squared_distance_transform`]. `dims` and
/// `spacing` are `[z, y, x]`.
pub fn hd95(
    pred: &[u8],
    truth: &[u8],
    class: u8,
    dims: [usize; 3],
    spacing: [f64; 3],
) -> Option<f64> {
    let (mut all, back) = surface_distances(pred, truth, class, dims, spacing)?;
    all.extend(back);
    all.sort_by(f64::total_cmp);
    let k = ((all.len() as f64 * 0.95).ceil() as usize).clamp(1, all.len()) - 1;
    Some(all[k])
}

/// Surface Dice at tolerance `tolerance_mm` (Nikolov et al. 2021): the share of both surfaces'
/// voxels that lie within the tolerance of the other surface. 1 when both are empty, 0 when
/// only one is.
pub fn surface_dice(
    pred: &[u8],
    truth: &[u8],
    class: u8,
    dims: [usize; 3],
    spacing: [f64; 3],
    tolerance_mm: f64,
) -> f64 {
    let has = |m: &[u8]| m.contains(&class);
    match surface_distances(pred, truth, class, dims, spacing) {
        Some((a, b)) => {
            let near = a.iter().chain(&b).filter(|&&d| d <= tolerance_mm).count();
            near as f64 / (a.len() + b.len()) as f64
        }
        None if !has(pred) && !has(truth) => 1.0,
        None => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_transform_matches_brute_force_on_anisotropic_grids() {
        let dims = [5, 7, 6];
        let spacing = [2.5, 1.0, 0.7];
        let n = dims.iter().product::<usize>();
        let feature: Vec<bool> = (0..n).map(|i| i % 17 == 3 || i == 100).collect();
        let dt = squared_distance_transform(&feature, dims, spacing);
        let at = |i: usize| {
            [
                i / (dims[1] * dims[2]),
                (i / dims[2]) % dims[1],
                i % dims[2],
            ]
        };
        for i in 0..n {
            let p = at(i);
            let brute = (0..n)
                .filter(|&j| feature[j])
                .map(|j| {
                    let q = at(j);
                    (0..3)
                        .map(|k| ((p[k] as f64 - q[k] as f64) * spacing[k]).powi(2))
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min);
            assert!(
                (dt[i] - brute).abs() < 1e-9,
                "voxel {p:?}: {} vs {brute}",
                dt[i]
            );
        }
    }

    #[test]
    fn surface_dice_counts_surface_voxels_within_tolerance() {
        let dims = [1, 1, 10];
        let a = [0, 1, 1, 1, 0, 0, 0, 0, 0, 0];
        let b = [0, 0, 0, 1, 1, 1, 0, 0, 0, 0];
        // On a row the surface is each run's two ends: a's {1, 3} lie 2 and 0 from b's {3, 5},
        // and b's lie 0 and 2 from a's; two of the four are within 1 mm, all within 2 mm.
        assert_eq!(surface_dice(&a, &b, 1, dims, [1.0; 3], 1.0), 0.5);
        assert_eq!(surface_dice(&a, &b, 1, dims, [1.0; 3], 2.0), 1.0);
        assert_eq!(surface_dice(&a, &a, 1, dims, [1.0; 3], 0.0), 1.0);
        assert_eq!(
            surface_dice(&[0; 10], &[0; 10], 1, dims, [1.0; 3], 1.0),
            1.0
        );
        assert_eq!(surface_dice(&a, &[0; 10], 1, dims, [1.0; 3], 1.0), 0.0);
    }
}
