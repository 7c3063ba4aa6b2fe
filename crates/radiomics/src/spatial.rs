//! Moran's I and Geary's C (IBSI 3.1.18, 3.1.19) with inverse-distance weights over all voxel pairs.
//!
//! The standard's definition sums over every pair of the region's voxels. For small regions that
//! is done literally; for large ones the same sums are written as a convolution of the region with
//! the 1/r kernel and computed exactly (up to rounding) by FFT on the region's bounding box:
//! `sum_ij w_ij a_i b_j = sum_i a_i (K * b)_i`, which is O(M log M) instead of O(N^2).

use rustfft::FftPlanner;
use rustfft::num_complex::Complex64;

use crate::region::Region;

/// Above this many voxels the FFT route is taken.
const DIRECT_LIMIT: usize = 3000;

/// (Moran's I, Geary's C) of the intensity mask.
pub fn moran_geary(region: &Region) -> (f64, f64) {
    let n = region.intensity.iter().filter(|&&m| m).count();
    if n < 2 {
        return (f64::NAN, f64::NAN);
    }
    if n <= DIRECT_LIMIT {
        direct(region)
    } else {
        by_fft(region)
    }
}

fn finish(n: f64, s0: f64, moran_num: f64, geary_num: f64, ss: f64) -> (f64, f64) {
    if ss == 0.0 {
        // A uniform region: both measures are undefined (0/0).
        return (f64::NAN, f64::NAN);
    }
    (
        n / s0 * moran_num / ss,
        (n - 1.0) / (2.0 * s0) * geary_num / ss,
    )
}

/// The literal O(N^2) sums of the standard.
pub(crate) fn direct(region: &Region) -> (f64, f64) {
    let d = region.geometry.dims;
    let sp = region.geometry.spacing;
    let pts: Vec<([f64; 3], f64)> = (0..region.intensity.len())
        .filter(|&i| region.intensity[i])
        .map(|i| {
            let c = [
                (i % d[0]) as f64 * sp[0],
                ((i / d[0]) % d[1]) as f64 * sp[1],
                (i / (d[0] * d[1])) as f64 * sp[2],
            ];
            (c, region.image[i] as f64)
        })
        .collect();
    let n = pts.len() as f64;
    let mean = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let ss: f64 = pts.iter().map(|p| (p.1 - mean).powi(2)).sum();
    let (mut s0, mut mnum, mut gnum) = (0.0, 0.0, 0.0);
    for (i, (a, xa)) in pts.iter().enumerate() {
        for (b, xb) in &pts[i + 1..] {
            let w = 1.0
                / ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt();
            s0 += 2.0 * w;
            mnum += 2.0 * w * (xa - mean) * (xb - mean);
            gnum += 2.0 * w * (xa - xb).powi(2);
        }
    }
    finish(n, s0, mnum, gnum, ss)
}

fn fast_size(min: usize) -> usize {
    (min..)
        .find(|&n| {
            let mut m = n;
            for p in [2, 3, 5, 7] {
                while m % p == 0 {
                    m /= p;
                }
            }
            m == 1
        })
        .unwrap_or(min)
}

/// The same sums by FFT convolution over the intensity mask's bounding box.
pub(crate) fn by_fft(region: &Region) -> (f64, f64) {
    let d = region.geometry.dims;
    let sp = region.geometry.spacing;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    let mut sum = 0.0;
    let mut n = 0usize;
    for i in 0..region.intensity.len() {
        if region.intensity[i] {
            let c = [i % d[0], (i / d[0]) % d[1], i / (d[0] * d[1])];
            for k in 0..3 {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k] + 1);
            }
            sum += region.image[i] as f64;
            n += 1;
        }
    }
    let mean = sum / n as f64;
    let b: [usize; 3] = std::array::from_fn(|k| hi[k] - lo[k]);
    let p: [usize; 3] = std::array::from_fn(|k| fast_size(2 * b[k] - 1));
    let len = p[0] * p[1] * p[2];
    let at = |x: usize, y: usize, z: usize| x + p[0] * (y + p[1] * z);

    // Signal: mask + i * (centred intensity * mask); the kernel is real, so one transform
    // carries both convolutions.
    let mut sig = vec![Complex64::new(0.0, 0.0); len];
    let mut ss = 0.0;
    for z in 0..b[2] {
        for y in 0..b[1] {
            for x in 0..b[0] {
                let i = (lo[0] + x) + d[0] * ((lo[1] + y) + d[1] * (lo[2] + z));
                if region.intensity[i] {
                    let dv = region.image[i] as f64 - mean;
                    sig[at(x, y, z)] = Complex64::new(1.0, dv);
                    ss += dv * dv;
                }
            }
        }
    }
    let mut ker = vec![Complex64::new(0.0, 0.0); len];
    let wrap = |v: i64, n: usize| v.rem_euclid(n as i64) as usize;
    for dz in -(b[2] as i64 - 1)..b[2] as i64 {
        for dy in -(b[1] as i64 - 1)..b[1] as i64 {
            for dx in -(b[0] as i64 - 1)..b[0] as i64 {
                if dx == 0 && dy == 0 && dz == 0 {
                    continue;
                }
                let r = ((dx as f64 * sp[0]).powi(2)
                    + (dy as f64 * sp[1]).powi(2)
                    + (dz as f64 * sp[2]).powi(2))
                .sqrt();
                ker[at(wrap(dx, p[0]), wrap(dy, p[1]), wrap(dz, p[2]))] =
                    Complex64::new(1.0 / r, 0.0);
            }
        }
    }
    let mut planner = FftPlanner::<f64>::new();
    fft3(&mut planner, &mut sig, p, false);
    fft3(&mut planner, &mut ker, p, false);
    for (s, k) in sig.iter_mut().zip(&ker) {
        *s *= *k;
    }
    fft3(&mut planner, &mut sig, p, true);
    let scale = 1.0 / len as f64;
    let (mut s0, mut a, mut bsum) = (0.0, 0.0, 0.0);
    for z in 0..b[2] {
        for y in 0..b[1] {
            for x in 0..b[0] {
                let i = (lo[0] + x) + d[0] * ((lo[1] + y) + d[1] * (lo[2] + z));
                if region.intensity[i] {
                    let dv = region.image[i] as f64 - mean;
                    let c = sig[at(x, y, z)] * scale;
                    s0 += c.re;
                    a += dv * c.im;
                    bsum += dv * dv * c.re;
                }
            }
        }
    }
    finish(n as f64, s0, a, 2.0 * bsum - 2.0 * a, ss)
}

fn fft3(planner: &mut FftPlanner<f64>, data: &mut [Complex64], p: [usize; 3], inverse: bool) {
    let plan = |planner: &mut FftPlanner<f64>, n| {
        if inverse {
            planner.plan_fft_inverse(n)
        } else {
            planner.plan_fft_forward(n)
        }
    };
    // x: contiguous rows.
    plan(planner, p[0]).process(data);
    let mut line = Vec::new();
    for (axis, stride) in [(1usize, p[0]), (2usize, p[0] * p[1])] {
        let n = p[axis];
        let f = plan(planner, n);
        line.resize(n, Complex64::new(0.0, 0.0));
        let outer = data.len() / (n * stride);
        for o in 0..outer {
            for s in 0..stride {
                let base = o * n * stride + s;
                for (k, l) in line.iter_mut().enumerate() {
                    *l = data[base + k * stride];
                }
                f.process(&mut line);
                for (k, l) in line.iter().enumerate() {
                    data[base + k * stride] = *l;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medfed_volume::Geometry;

    #[test]
    fn fft_route_equals_the_literal_sums() {
        let dims = [14, 11, 6];
        let g = Geometry::new(dims, [0.8, 0.9, 2.5]);
        let mut state = 12345u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        let n = g.len();
        let image: Vec<f32> = (0..n)
            .map(|i| (i % 7) as f32 * 3.0 + (rnd() * 20.0) as f32)
            .collect();
        let intensity: Vec<bool> = (0..n).map(|_| rnd() < 0.7).collect();
        let region = Region {
            geometry: g,
            image,
            morph: intensity.clone(),
            intensity,
        };
        let (m1, g1) = direct(&region);
        let (m2, g2) = by_fft(&region);
        assert!((m1 - m2).abs() < 1e-9 * m1.abs().max(1.0), "{m1} {m2}");
        assert!((g1 - g2).abs() < 1e-9, "{g1} {g2}");
    }
}
