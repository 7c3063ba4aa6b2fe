//! The IBSI 1 digital phantom against all 482 reference values, read from shared/ibsi.

use medfed_radiomics::{Discretisation, RadiomicsSettings, extract};
use medfed_volume::nifti;

use crate::support::shared_dir;

/// IBSI's rule: round to 3 significant digits, then compare within the tolerance.
fn sig3(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 2 - x.abs().log10().floor() as i32;
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

#[test]
fn digital_phantom_matches_every_ibsi_reference_value() {
    let dir = shared_dir().join("ibsi");
    let image = nifti::read_image(&dir.join("digital_phantom/nifti/image/phantom.nii.gz")).unwrap();
    let mask = nifti::read_labels(&dir.join("digital_phantom/nifti/mask/mask.nii.gz")).unwrap();
    // The IBSI's phantom settings: no interpolation, re-segmentation or discretisation.
    let settings = RadiomicsSettings {
        texture_discretisation: Discretisation::None,
        ivh_discretisation: Discretisation::None,
        ..Default::default()
    };
    let features = extract(&image, &mask, 1, &settings).unwrap();
    let mut rd =
        csv::Reader::from_path(dir.join("ibsi1_digital_phantom_reference_values.csv")).unwrap();
    let headers = rd.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (tag_c, ref_c, tol_c) = (col("tag"), col("reference_value"), col("tolerance"));
    let mut total = 0;
    let mut failures = Vec::new();
    for rec in rd.records() {
        let rec = rec.unwrap();
        total += 1;
        let tag = &rec[tag_c];
        let reference: f64 = rec[ref_c].parse().unwrap();
        let tol: f64 = rec[tol_c].parse().unwrap();
        match features.get(tag) {
            None => failures.push(format!("{tag}: not computed (reference {reference})")),
            Some(v) if (sig3(v) - reference).abs() <= tol + 1e-12 * reference.abs() => {}
            Some(v) => failures.push(format!(
                "{tag}: {v} (rounded {}) vs reference {reference} +- {tol}",
                sig3(v)
            )),
        }
    }
    assert_eq!(total, 482, "the reference table should hold 482 values");
    assert!(
        failures.is_empty(),
        "{} of {total} IBSI reference values not matched:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
