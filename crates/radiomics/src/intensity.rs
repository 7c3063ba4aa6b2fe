//! First-order families: local intensity (IBSI 3.2, 9ST6), intensity-based statistics (3.3, UHIW),
//! intensity histogram (3.4, ZVCW) and intensity-volume histogram (3.5, P88C).

use crate::FeatureSink;
use crate::region::{Discretised, PEAK_RADIUS_MM, Region};
use crate::settings::{Discretisation, RadiomicsSettings};

/// Local and global intensity peaks: the highest mean intensity in a 1 cm^3 sphere centred on
/// (local) the region's brightest voxels or (global) any of its voxels.
///
/// The sphere's voxels are summed row by row from prefix sums along x, so a sphere costs one
/// lookup per row, not one per voxel, and nothing beyond the region's padded box is touched.
pub fn local_intensity(region: &Region, out: &mut FeatureSink) {
    let g = &region.geometry;
    let [nx, ny, nz] = g.dims;
    let sp = g.spacing;
    let r2 = PEAK_RADIUS_MM * PEAK_RADIUS_MM + 1e-9;
    let ry = (PEAK_RADIUS_MM / sp[1]).floor() as i64;
    let rz = (PEAK_RADIUS_MM / sp[2]).floor() as i64;
    // Rows of the sphere: (dy, dz, half width in x).
    let mut rows = Vec::new();
    for dz in -rz..=rz {
        for dy in -ry..=ry {
            let rest = r2 - (dy as f64 * sp[1]).powi(2) - (dz as f64 * sp[2]).powi(2);
            if rest >= 0.0 {
                rows.push((dy, dz, (rest.sqrt() / sp[0]).floor() as i64));
            }
        }
    }
    let mut prefix = vec![0.0f64; (nx + 1) * ny * nz];
    for row in 0..ny * nz {
        let base = row * (nx + 1);
        for x in 0..nx {
            prefix[base + x + 1] = prefix[base + x] + region.image[row * nx + x] as f64;
        }
    }
    let mut max_val = f32::NEG_INFINITY;
    for i in 0..region.image.len() {
        if region.intensity[i] {
            max_val = max_val.max(region.image[i]);
        }
    }
    // Sphere sums for a whole row of the region at once: each sphere row adds one prefix-sum
    // difference per voxel, in a loop the compiler can vectorise.
    let mut local = f64::NEG_INFINITY;
    let mut global = f64::NEG_INFINITY;
    let mut sums: Vec<f64> = Vec::with_capacity(nx);
    let mut counts: Vec<f64> = Vec::with_capacity(nx);
    for z in 0..nz {
        for y in 0..ny {
            let row = &region.intensity[nx * (y + ny * z)..nx * (y + ny * z + 1)];
            let (Some(x0), Some(x1)) = (row.iter().position(|&m| m), row.iter().rposition(|&m| m))
            else {
                continue;
            };
            let len = x1 - x0 + 1;
            sums.clear();
            sums.resize(len, 0.0);
            counts.clear();
            counts.resize(len, 0.0);
            for &(dy, dz, hw) in &rows {
                let (yy, zz) = (y as i64 + dy, z as i64 + dz);
                if yy < 0 || zz < 0 || yy >= ny as i64 || zz >= nz as i64 {
                    continue;
                }
                let base = (yy as usize + ny * zz as usize) * (nx + 1);
                let pre = &prefix[base..base + nx + 1];
                let hw = hw as usize;
                // Voxels whose sphere row lies inside the block need no clamping: a plain
                // difference of shifted prefix sums, which vectorises.
                let first = hw.saturating_sub(x0).min(len);
                let last = (nx.saturating_sub(hw + x0)).min(len).max(first);
                for (j, (s, c)) in sums.iter_mut().zip(counts.iter_mut()).enumerate() {
                    if j == first {
                        break;
                    }
                    let x = x0 + j;
                    let (lo, hi) = (x.saturating_sub(hw), (x + hw + 1).min(nx));
                    *s += pre[hi] - pre[lo];
                    *c += (hi - lo) as f64;
                }
                if first < last {
                    let width = (2 * hw + 1) as f64;
                    let upper = &pre[x0 + first + hw + 1..x0 + last + hw + 1];
                    let lower = &pre[x0 + first - hw..x0 + last - hw];
                    for ((s, c), (u, l)) in sums[first..last]
                        .iter_mut()
                        .zip(counts[first..last].iter_mut())
                        .zip(upper.iter().zip(lower))
                    {
                        *s += u - l;
                        *c += width;
                    }
                }
                for j in last..len {
                    let x = x0 + j;
                    let (lo, hi) = (x.saturating_sub(hw), (x + hw + 1).min(nx));
                    sums[j] += pre[hi] - pre[lo];
                    counts[j] += (hi - lo) as f64;
                }
            }
            for j in 0..len {
                let i = nx * (y + ny * z) + x0 + j;
                if region.intensity[i] {
                    let m = sums[j] / counts[j];
                    global = global.max(m);
                    if region.image[i] == max_val {
                        local = local.max(m);
                    }
                }
            }
        }
    }
    out.push("loc_peak_loc", local);
    out.push("loc_peak_glob", global);
}

/// numpy's default percentile (linear interpolation between order statistics).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The statistics shared by the statistics and histogram families, under `prefix`.
fn statistics(values: &[f64], prefix: &str, out: &mut FeatureSink, with_energy: bool) {
    let n = values.len() as f64;
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / n;
    let m = |p: i32| values.iter().map(|v| (v - mean).powi(p)).sum::<f64>() / n;
    let (m2, m3, m4) = (m(2), m(3), m(4));
    let median = percentile(&sorted, 50.0);
    let (p10, p25, p75, p90) = (
        percentile(&sorted, 10.0),
        percentile(&sorted, 25.0),
        percentile(&sorted, 75.0),
        percentile(&sorted, 90.0),
    );
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    let robust: Vec<f64> = values
        .iter()
        .copied()
        .filter(|&v| v >= p10 && v <= p90)
        .collect();
    let rmean = robust.iter().sum::<f64>() / robust.len() as f64;
    let t = |name: &str| format!("{prefix}_{name}");
    out.push(&t("mean"), mean);
    out.push(&t("var"), m2);
    out.push(&t("skew"), if m2 == 0.0 { 0.0 } else { m3 / m2.powf(1.5) });
    out.push(
        &t("kurt"),
        if m2 == 0.0 { 0.0 } else { m4 / (m2 * m2) - 3.0 },
    );
    out.push(&t("median"), median);
    out.push(&t("min"), min);
    out.push(&t("p10"), p10);
    out.push(&t("p90"), p90);
    out.push(&t("max"), max);
    if !with_energy {
        // The histogram family lists the mode here.
        out.push(&t("mode"), mode(&sorted, mean));
    }
    out.push(&t("iqr"), p75 - p25);
    out.push(&t("range"), max - min);
    out.push(
        &t("mad"),
        values.iter().map(|v| (v - mean).abs()).sum::<f64>() / n,
    );
    out.push(
        &t("rmad"),
        robust.iter().map(|v| (v - rmean).abs()).sum::<f64>() / robust.len() as f64,
    );
    out.push(
        &t("medad"),
        values.iter().map(|v| (v - median).abs()).sum::<f64>() / n,
    );
    out.push(&t("cov"), m2.sqrt() / mean);
    out.push(&t("qcod"), (p75 - p25) / (p75 + p25));
    if with_energy {
        let energy: f64 = values.iter().map(|v| v * v).sum();
        out.push(&t("energy"), energy);
        out.push(&t("rms"), (energy / n).sqrt());
    }
}

/// Most frequent value; among equally frequent ones, the one closest to the mean.
fn mode(sorted: &[f64], mean: f64) -> f64 {
    let (mut best, mut best_n) = (sorted[0], 0usize);
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j] == sorted[i] {
            j += 1;
        }
        let n = j - i;
        if n > best_n || (n == best_n && (sorted[i] - mean).abs() < (best - mean).abs()) {
            best = sorted[i];
            best_n = n;
        }
        i = j;
    }
    best
}

/// Intensity-based statistics on the intensity mask.
pub fn stats(region: &Region, out: &mut FeatureSink) {
    statistics(&region.intensities(), "stat", out, true);
}

/// Intensity histogram features on the discretised intensity mask.
pub fn histogram(levels: &Discretised, out: &mut FeatureSink) {
    let values: Vec<f64> = levels
        .levels
        .iter()
        .filter(|&&l| l > 0)
        .map(|&l| l as f64)
        .collect();
    statistics(&values, "ih", out, false);
    let ng = levels.n_levels.max(1) as usize;
    let mut h = vec![0.0f64; ng];
    for &l in levels.levels.iter().filter(|&&l| l > 0) {
        h[(l as usize - 1).min(ng - 1)] += 1.0;
    }
    let n: f64 = h.iter().sum();
    let entropy: f64 = -h
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| (c / n) * (c / n).log2())
        .sum::<f64>();
    let uniformity: f64 = h.iter().map(|&c| (c / n).powi(2)).sum();
    out.push("ih_entropy", entropy);
    out.push("ih_uniformity", uniformity);
    let grad: Vec<f64> = (0..ng)
        .map(|i| {
            if ng == 1 {
                0.0
            } else if i == 0 {
                h[1] - h[0]
            } else if i == ng - 1 {
                h[i] - h[i - 1]
            } else {
                (h[i + 1] - h[i - 1]) / 2.0
            }
        })
        .collect();
    let (mut imax, mut imin) = (0, 0);
    for i in 0..ng {
        if grad[i] > grad[imax] {
            imax = i;
        }
        if grad[i] < grad[imin] {
            imin = i;
        }
    }
    out.push("ih_max_grad", grad[imax]);
    out.push("ih_max_grad_g", (imax + 1) as f64);
    out.push("ih_min_grad", grad[imin]);
    out.push("ih_min_grad_g", (imin + 1) as f64);
}

/// Intensity-volume histogram features.
///
/// Intensities are the discretised levels (fixed bin number), the bin centres (fixed bin size),
/// or the intensities themselves in steps of 1 (no discretisation, e.g. CT in HU). The intensity
/// range is the re-segmentation range where it is finite, else the region's.
pub fn ivh(
    region: &Region,
    settings: &RadiomicsSettings,
    d: Discretisation,
    out: &mut FeatureSink,
) -> Result<(), crate::RadiomicsError> {
    let (values, lo, hi, step) = match d {
        Discretisation::FixedBinNumber { bins } => {
            let disc = region.discretise(d, settings)?;
            let v: Vec<f64> = disc
                .levels
                .iter()
                .filter(|&&l| l > 0)
                .map(|&l| l as f64)
                .collect();
            (v, 1.0, bins as f64, 1.0)
        }
        Discretisation::FixedBinSize { width, .. } => {
            let disc = region.discretise(d, settings)?;
            let (lower, w) = disc.bin_lower.unwrap_or((0.0, width));
            let centre = |l: u32| lower + (l as f64 - 0.5) * w;
            let v: Vec<f64> = disc
                .levels
                .iter()
                .filter(|&&l| l > 0)
                .map(|&l| centre(l))
                .collect();
            let top = settings
                .resegmentation
                .range
                .map(|r| r[1])
                .filter(|u| u.is_finite() && *u < 1e299)
                .map(|u| centre(((u - lower) / w).floor() as u32 + 1))
                .unwrap_or_else(|| v.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            (v, centre(1), top, w)
        }
        Discretisation::None => {
            let v = region.intensities();
            let (vmin, vmax) = v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let range = settings.resegmentation.range;
            let lo = range
                .map(|r| r[0])
                .filter(|l| l.is_finite() && *l > -1e299)
                .unwrap_or(vmin);
            let hi = range
                .map(|r| r[1])
                .filter(|u| u.is_finite() && *u < 1e299)
                .unwrap_or(vmax);
            (v, lo, hi, 1.0)
        }
    };
    let mut sorted = values;
    sorted.sort_unstable_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let steps = ((hi - lo) / step).round().max(0.0) as usize;
    let levels: Vec<f64> = (0..=steps).map(|k| lo + k as f64 * step).collect();
    // Fraction of the volume with intensity >= level.
    let nu = |l: f64| 1.0 - sorted.partition_point(|&v| v < l - 1e-9 * step) as f64 / n;
    let gamma = |l: f64| if hi > lo { (l - lo) / (hi - lo) } else { 0.0 };
    let v_at = |x: f64| {
        levels
            .iter()
            .find(|&&l| gamma(l) >= x - 1e-12)
            .map(|&l| nu(l))
            .unwrap_or(0.0)
    };
    let i_at = |x: f64| {
        levels
            .iter()
            .find(|&&l| nu(l) <= x + 1e-12)
            .copied()
            .unwrap_or(hi + step)
    };
    let (v10, v90, i10, i90) = (v_at(0.1), v_at(0.9), i_at(0.1), i_at(0.9));
    out.push("ivh_v10", v10);
    out.push("ivh_v90", v90);
    out.push("ivh_i10", i10);
    out.push("ivh_i90", i90);
    out.push("ivh_diff_v10_v90", v10 - v90);
    out.push("ivh_diff_i10_i90", i10 - i90);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear() {
        let s = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(percentile(&s, 50.0), 3.0);
        assert!((percentile(&s, 10.0) - 1.4).abs() < 1e-12);
        assert!((percentile(&s, 90.0) - 7.6).abs() < 1e-12);
    }

    #[test]
    fn mode_prefers_the_value_nearest_the_mean_on_ties() {
        assert_eq!(mode(&[1.0, 1.0, 5.0, 5.0, 6.0], 3.6), 5.0);
        assert_eq!(mode(&[1.0, 2.0, 2.0], 1.67), 2.0);
    }
}

#[cfg(test)]
mod peak_tests {
    use super::*;
    use medfed_volume::Geometry;

    /// The row-wise prefix sums against the definition: every voxel centre within the radius.
    #[test]
    fn peaks_equal_the_brute_force_sphere_means() {
        let dims = [34, 31, 13];
        let sp = [0.8, 0.9, 2.5];
        let g = Geometry::new(dims, sp);
        let mut state = 99u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let n = g.len();
        // Integer intensities so that several voxels share the maximum.
        let image: Vec<f32> = (0..n).map(|_| (rnd() * 40.0).floor()).collect();
        let c = [
            dims[0] as f64 / 2.0,
            dims[1] as f64 / 2.0,
            dims[2] as f64 / 2.0,
        ];
        let intensity: Vec<bool> = (0..n)
            .map(|i| {
                let p = [
                    i % dims[0],
                    (i / dims[0]) % dims[1],
                    i / (dims[0] * dims[1]),
                ];
                (0..3)
                    .map(|k| ((p[k] as f64 - c[k]) * sp[k]).powi(2))
                    .sum::<f64>()
                    <= 9.0f64.powi(2)
            })
            .collect();
        let region = Region {
            geometry: g,
            image: image.clone(),
            morph: intensity.clone(),
            intensity: intensity.clone(),
        };
        let mut out = FeatureSink::default();
        local_intensity(&region, &mut out);
        let coord = |i: usize| {
            [
                i % dims[0],
                (i / dims[0]) % dims[1],
                i / (dims[0] * dims[1]),
            ]
        };
        let mean_at = |i: usize| {
            let a = coord(i);
            let (mut s, mut k) = (0.0, 0.0);
            for j in 0..n {
                let b = coord(j);
                let d2: f64 = (0..3)
                    .map(|q| ((a[q] as f64 - b[q] as f64) * sp[q]).powi(2))
                    .sum();
                if d2 <= PEAK_RADIUS_MM * PEAK_RADIUS_MM {
                    s += image[j] as f64;
                    k += 1.0;
                }
            }
            s / k
        };
        let max = (0..n)
            .filter(|&i| intensity[i])
            .map(|i| image[i])
            .fold(f32::MIN, f32::max);
        let (mut local, mut global) = (f64::MIN, f64::MIN);
        for i in (0..n).filter(|&i| intensity[i]) {
            let m = mean_at(i);
            global = global.max(m);
            if image[i] == max {
                local = local.max(m);
            }
        }
        assert!((out.get("loc_peak_glob").unwrap() - global).abs() < 1e-9);
        assert!((out.get("loc_peak_loc").unwrap() - local).abs() < 1e-9);
    }
}
