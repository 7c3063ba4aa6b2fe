//! Chest-CT phantoms with lung and lesion label maps, for training and testing segmentation
//! where no real labelled chest CT can be had. Tissues carry textbook Hounsfield units (air
//! -1000, aerated lung about -850, fat -100, muscle and blood 40, bone 400-1000); body and lung
//! shapes, vessels, lesions, noise and in-plane blur vary per case with the seed.
//!
//! The lesions imitate COVID-19 findings: ground-glass opacities (-700 to -300 HU, vessels still
//! visible through them) and consolidations (-100 to 40 HU). Only voxels inside the lungs are
//! lesion; vessels inside the lungs count as lung, as in lungmask's R231 labels.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Label of lung voxels in [`ChestCase::lung`].
pub const LUNG: u8 = 1;
/// Label of lesion voxels in [`ChestCase::lesion`].
pub const LESION: u8 = 1;

/// How a phantom is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct ChestSpec {
    /// Grid `[z, y, x]`.
    pub dims: [usize; 3],
    /// Voxel size in mm `[z, y, x]`.
    pub spacing: [f64; 3],
    /// Standard deviation of the Gaussian noise, HU (real scanners: about 10-40).
    pub noise_hu: f64,
    /// In-plane blur passes (3x3 box), standing for softer reconstruction kernels.
    pub blur: usize,
    /// Lesions drawn (each ground-glass or consolidation, inside a lung).
    pub lesions: usize,
}

impl Default for ChestSpec {
    fn default() -> Self {
        Self {
            dims: [32, 64, 64],
            spacing: [5.0, 5.5, 5.5],
            noise_hu: 20.0,
            blur: 0,
            lesions: 3,
        }
    }
}

/// One phantom: intensities and the two label maps on one `[z, y, x]` grid, x fastest.
#[derive(Debug, Clone, PartialEq)]
pub struct ChestCase {
    /// Grid `[z, y, x]`.
    pub dims: [usize; 3],
    /// Voxel size in mm.
    pub spacing: [f64; 3],
    /// Hounsfield units.
    pub hu: Vec<f32>,
    /// [`LUNG`] inside either lung (vessels and lesions included), 0 elsewhere.
    pub lung: Vec<u8>,
    /// [`LESION`] in lesion voxels, 0 elsewhere.
    pub lesion: Vec<u8>,
}

impl ChestCase {
    /// Lesion volume as a share of lung volume (0 when there is no lung).
    pub fn lesion_fraction(&self) -> f64 {
        let lung = self.lung.iter().filter(|&&l| l != 0).count();
        let lesion = self.lesion.iter().filter(|&&l| l != 0).count();
        if lung == 0 {
            0.0
        } else {
            lesion as f64 / lung as f64
        }
    }
}

fn gauss<R: Rng>(rng: &mut R) -> f64 {
    // Box-Muller: rand 0.9 without rand_distr has no normal distribution.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

struct Tube {
    a: [f64; 3],
    b: [f64; 3],
    r: f64,
}

impl Tube {
    /// Distance from `p` to the segment, in normalised units.
    fn dist(&self, p: [f64; 3]) -> f64 {
        let ab = [
            self.b[0] - self.a[0],
            self.b[1] - self.a[1],
            self.b[2] - self.a[2],
        ];
        let ap = [p[0] - self.a[0], p[1] - self.a[1], p[2] - self.a[2]];
        let len2 = ab.iter().map(|v| v * v).sum::<f64>().max(1e-12);
        let t = (ap.iter().zip(&ab).map(|(x, y)| x * y).sum::<f64>() / len2).clamp(0.0, 1.0);
        (0..3)
            .map(|k| (ap[k] - t * ab[k]).powi(2))
            .sum::<f64>()
            .sqrt()
    }
}

/// A phantom drawn from `seed`; the same seed gives the same case.
pub fn chest_ct(spec: &ChestSpec, seed: u64) -> ChestCase {
    let mut rng = StdRng::seed_from_u64(seed);
    let [nz, ny, nx] = spec.dims;
    let n = nz * ny * nx;
    let mut u = |lo: f64, hi: f64| rng.random_range(lo..hi);
    // Shape parameters in normalised coordinates: x, y in [-1, 1] across the grid, z in [0, 1]
    // from the lung bases (z = 0) to above the apices.
    let body = [u(0.80, 0.92), u(0.58, 0.72)];
    let fat = u(0.04, 0.10);
    let lung_dx = u(0.36, 0.46);
    let lung_r = [u(0.26, 0.34), u(0.36, 0.46)];
    let lung_y = u(-0.12, 0.0);
    let lung_top = u(0.78, 0.92);
    let heart = [u(-0.05, 0.10), u(0.05, 0.2), u(0.20, 0.28), u(0.18, 0.26)];
    let contrast = u(0.0, 1.0) < 0.5;
    let blood_hu = if contrast {
        u(150.0, 300.0)
    } else {
        u(35.0, 50.0)
    };
    let rib_phase = u(0.0, 1.0);
    let mut tubes = Vec::new();
    for side in [-1.0, 1.0] {
        let hilum = [side * (lung_dx - 0.18), lung_y + 0.05, u(0.45, 0.6)];
        for _ in 0..10 {
            let end = [
                side * lung_dx + u(-0.25, 0.25),
                lung_y + u(-0.35, 0.35),
                u(0.05, 0.9),
            ];
            tubes.push(Tube {
                a: hilum,
                b: end,
                r: u(0.012, 0.03),
            });
        }
    }
    let mut blobs = Vec::new();
    for _ in 0..spec.lesions {
        let side = if u(0.0, 1.0) < 0.5 { -1.0 } else { 1.0 };
        // Peripheral and lower-lobe lesions are the commonest COVID-19 pattern.
        let centre = [
            side * (lung_dx + u(-0.1, 0.2)),
            lung_y + u(-0.25, 0.3),
            u(0.1, 0.6),
        ];
        let radii = [u(0.06, 0.16), u(0.06, 0.16), u(0.08, 0.22)];
        let consolidation = u(0.0, 1.0) < 0.35;
        let hu = if consolidation {
            u(-100.0, 40.0)
        } else {
            u(-700.0, -300.0)
        };
        blobs.push((centre, radii, hu, consolidation));
    }
    let base_lung = u(-880.0, -820.0);

    let mut hu = vec![-1000f32; n];
    let mut lung = vec![0u8; n];
    let mut lesion = vec![0u8; n];
    for z in 0..nz {
        let zn = (z as f64 + 0.5) / nz as f64;
        for y in 0..ny {
            let yn = 2.0 * (y as f64 + 0.5) / ny as f64 - 1.0;
            for x in 0..nx {
                let xn = 2.0 * (x as f64 + 0.5) / nx as f64 - 1.0;
                let i = (z * ny + y) * nx + x;
                let e = (xn / body[0]).powi(2) + (yn / body[1]).powi(2);
                if e > 1.0 {
                    continue;
                }
                let mut v = if e > (1.0 - fat).powi(2) {
                    -100.0
                } else {
                    40.0
                };
                // Ribs: bone arcs in the outer body wall, one every quarter of the height.
                let wall = e > (1.0 - fat - 0.08).powi(2) && e <= (1.0 - fat).powi(2);
                if wall && ((zn * 4.0 + rib_phase).fract() < 0.3) && yn < 0.5 {
                    v = 500.0;
                }
                // Spine behind the mediastinum.
                let spine = (xn / 0.12).powi(2) + ((yn - body[1] * 0.72) / 0.14).powi(2);
                if spine <= 1.0 {
                    v = if spine > 0.6 { 900.0 } else { 300.0 };
                }
                let p = [xn, yn, zn];
                for side in [-1.0, 1.0] {
                    // Each lung: an ellipsoid in-plane, tapering to the apex above.
                    let taper = if zn > 0.5 {
                        1.0 - ((zn - 0.5) / (lung_top - 0.5)).powi(2)
                    } else {
                        1.0
                    };
                    if taper <= 0.0 {
                        continue;
                    }
                    let s = taper.sqrt();
                    let d = ((xn - side * lung_dx) / (lung_r[0] * s)).powi(2)
                        + ((yn - lung_y) / (lung_r[1] * s)).powi(2);
                    // The dome of the diaphragm cuts the base.
                    let dome = 0.08 + 0.1 * (1.0 - d.min(1.0));
                    if d <= 1.0 && zn >= dome {
                        lung[i] = LUNG;
                        v = base_lung + 40.0 * yn; // dependent (posterior) lung is denser
                    }
                }
                let h = (xn - heart[0]).powi(2) / heart[2].powi(2)
                    + (yn - heart[1]).powi(2) / heart[3].powi(2)
                    + ((zn - 0.35) / 0.3).powi(2);
                if h <= 1.0 {
                    v = blood_hu * 0.3 + 40.0 * 0.7;
                }
                let aorta = ((xn + 0.08).powi(2) + (yn - 0.28).powi(2)).sqrt();
                if aorta < 0.07 && zn > 0.2 {
                    v = blood_hu;
                }
                if lung[i] == LUNG {
                    for (c, r, lhu, consolidation) in &blobs {
                        let q = (0..3).map(|k| ((p[k] - c[k]) / r[k]).powi(2)).sum::<f64>();
                        if q <= 1.0 {
                            lesion[i] = LESION;
                            // Ground glass keeps a trace of the parenchyma; consolidation replaces it.
                            v = if *consolidation {
                                *lhu
                            } else {
                                0.7 * lhu + 0.3 * v
                            };
                        }
                    }
                    if tubes.iter().any(|t| t.dist(p) < t.r) {
                        v = v.max(blood_hu * 0.5 + 20.0);
                    }
                }
                hu[i] = v as f32;
            }
        }
    }
    for _ in 0..spec.blur {
        blur_in_plane(&mut hu, spec.dims);
    }
    for v in hu.iter_mut() {
        *v += (spec.noise_hu * gauss(&mut rng)) as f32;
    }
    ChestCase {
        dims: spec.dims,
        spacing: spec.spacing,
        hu,
        lung,
        lesion,
    }
}

fn blur_in_plane(hu: &mut [f32], dims: [usize; 3]) {
    let [nz, ny, nx] = dims;
    let src = hu.to_vec();
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let mut s = 0.0;
                let mut c = 0.0;
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                        if yy >= 0 && xx >= 0 && (yy as usize) < ny && (xx as usize) < nx {
                            s += src[(z * ny + yy as usize) * nx + xx as usize];
                            c += 1.0;
                        }
                    }
                }
                hu[(z * ny + y) * nx + x] = s / c;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tissues_have_their_hounsfield_units_and_cases_vary() {
        let spec = ChestSpec {
            noise_hu: 0.0,
            ..ChestSpec::default()
        };
        let a = chest_ct(&spec, 1);
        assert_eq!(a, chest_ct(&spec, 1), "same seed, same case");
        let b = chest_ct(&spec, 2);
        assert_ne!(a.lung, b.lung, "lung shape varies per case");
        let mean = |c: &ChestCase, f: &dyn Fn(usize) -> bool| {
            let v: Vec<f32> = (0..c.hu.len()).filter(|&i| f(i)).map(|i| c.hu[i]).collect();
            v.iter().sum::<f32>() / v.len().max(1) as f32
        };
        let healthy = mean(&a, &|i| a.lung[i] == LUNG && a.lesion[i] == 0);
        assert!(
            (-900.0..-750.0).contains(&healthy),
            "aerated lung {healthy} HU"
        );
        assert!(a.hu[0] == -1000.0, "air outside the body");
        let lesion = mean(&a, &|i| a.lesion[i] == LESION);
        assert!(
            lesion > healthy + 150.0,
            "lesions are denser than lung: {lesion}"
        );
        assert!(
            a.lesion
                .iter()
                .zip(&a.lung)
                .all(|(&l, &g)| l == 0 || g == LUNG),
            "lesions only inside lungs"
        );
        let f = a.lesion_fraction();
        assert!(f > 0.0 && f < 0.5, "lesion fraction {f}");
        let lungs = a.lung.iter().filter(|&&l| l == LUNG).count() as f64 / a.lung.len() as f64;
        assert!(
            (0.08..0.45).contains(&lungs),
            "lungs fill {lungs} of the grid"
        );
    }

    #[test]
    fn noise_and_blur_follow_the_spec() {
        let clean = chest_ct(
            &ChestSpec {
                noise_hu: 0.0,
                ..ChestSpec::default()
            },
            3,
        );
        let noisy = chest_ct(
            &ChestSpec {
                noise_hu: 30.0,
                ..ChestSpec::default()
            },
            3,
        );
        let d: Vec<f64> = clean
            .hu
            .iter()
            .zip(&noisy.hu)
            .map(|(a, b)| f64::from(b - a))
            .collect();
        let sd = (d.iter().map(|v| v * v).sum::<f64>() / d.len() as f64).sqrt();
        assert!((27.0..33.0).contains(&sd), "noise sd {sd}");
        let blurred = chest_ct(
            &ChestSpec {
                noise_hu: 0.0,
                blur: 1,
                ..ChestSpec::default()
            },
            3,
        );
        assert_eq!(
            blurred.lung, clean.lung,
            "blur changes intensities, not labels"
        );
        assert_ne!(blurred.hu, clean.hu);
    }
}
