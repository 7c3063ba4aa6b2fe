//! Segmentation metrics on label maps: Dice, IoU (Jaccard) and the 95th-percentile symmetric
//! Hausdorff distance over the surface voxels, in millimetres.

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

/// 95th-percentile symmetric Hausdorff distance (mm) between the surfaces of `class` in `pred`
/// and `truth`; `None` when either is empty. Exact nearest distances by brute force over the
/// surface voxels, which is quadratic in surface size: fine for evaluation on test volumes.
pub fn hd95(
    pred: &[u8],
    truth: &[u8],
    class: u8,
    dims: [usize; 3],
    spacing: [f64; 3],
) -> Option<f64> {
    let a = surface(&pred.iter().map(|&v| v == class).collect::<Vec<_>>(), dims);
    let b = surface(&truth.iter().map(|&v| v == class).collect::<Vec<_>>(), dims);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let d2 = |p: &[usize; 3], q: &[usize; 3]| -> f64 {
        (0..3)
            .map(|k| ((p[k] as f64 - q[k] as f64) * spacing[k]).powi(2))
            .sum()
    };
    let nearest = |from: &[[usize; 3]], to: &[[usize; 3]]| -> Vec<f64> {
        from.iter()
            .map(|p| {
                to.iter()
                    .map(|q| d2(p, q))
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            })
            .collect()
    };
    let mut all = nearest(&a, &b);
    all.extend(nearest(&b, &a));
    all.sort_by(f64::total_cmp);
    let k = ((all.len() as f64 * 0.95).ceil() as usize).clamp(1, all.len()) - 1;
    Some(all[k])
}
