//! The processing chain on a cropped image gives what it gives on the whole image: reading only
//! the region's box must not move the interpolation grid or change a feature.

use medfed_radiomics::region::{Frame, Region, read_margin};
use medfed_radiomics::settings::{Interpolation, InterpolationMethod};
use medfed_radiomics::{Discretisation, RadiomicsSettings, features_of};
use medfed_volume::{Geometry, Volume, bounding_box};

#[test]
fn cropped_and_whole_image_give_identical_features_with_interpolation() {
    // Large enough that even the cubic kernel's margin leaves something to cut off.
    let dims = [120, 110, 90];
    let mut g = Geometry::new(dims, [0.9, 0.9, 2.5]);
    g.origin = [-20.0, 13.0, 40.0];
    let mut state = 7u64;
    let mut rnd = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let mut image = Volume::filled(g, 0f32);
    let mut mask = Volume::filled(g, 0u16);
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                let i = g.index(x, y, z);
                image.data[i] = (40.0 * rnd()).round() + (x as f32) * 0.5 - 200.0;
                let d = [
                    (x as f64 - 60.0) * 0.9,
                    (y as f64 - 55.0) * 0.9,
                    (z as f64 - 45.0) * 2.5,
                ];
                if d.iter().map(|v| v * v).sum::<f64>() <= 7.5f64.powi(2) {
                    mask.data[i] = 3;
                }
            }
        }
    }
    for method in [
        InterpolationMethod::Linear,
        InterpolationMethod::Cubic,
        InterpolationMethod::Nearest,
    ] {
        let settings = RadiomicsSettings {
            interpolation: Some(Interpolation {
                spacing: [1.0, 1.0, 1.0],
                method,
                round_intensities: true,
                mask_threshold: 0.5,
            }),
            texture_discretisation: Discretisation::FixedBinSize {
                width: 5.0,
                lower: None,
            },
            ..Default::default()
        };
        let whole = Region::extract(&image, &mask, 3, &settings).unwrap();
        let (lo, hi) = bounding_box(&mask, |v| v == 3).unwrap();
        let m = read_margin(g.spacing, &settings);
        let lo: [usize; 3] = std::array::from_fn(|k| lo[k].saturating_sub(m[k]));
        let hi: [usize; 3] = std::array::from_fn(|k| (hi[k] + m[k]).min(dims[k]));
        assert!(
            lo.iter().all(|&v| v > 0),
            "the crop should really cut the image: {lo:?}"
        );
        let frame = Frame {
            geometry: g,
            offset: lo,
        };
        let cropped =
            Region::extract_in(&image.crop(lo, hi), &mask.crop(lo, hi), 3, &settings, frame)
                .unwrap();
        let a = features_of(&whole, &settings).unwrap();
        let b = features_of(&cropped, &settings).unwrap();
        assert_eq!(a.values.len(), 482);
        let mut bad = Vec::new();
        for ((ta, va), (tb, vb)) in a.values.iter().zip(&b.values) {
            assert_eq!(ta, tb);
            if !(va == vb
                || (va.is_nan() && vb.is_nan())
                || (va - vb).abs() <= 1e-9 * va.abs().max(1.0))
            {
                bad.push(format!("{ta}: whole {va} vs cropped {vb}"));
            }
        }
        assert!(
            bad.is_empty(),
            "{method:?}: {} differ:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}
