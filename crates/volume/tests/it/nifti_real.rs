//! Real NIfTI volumes: the InVesalius head CT with its bone mask, colin27 with the AAL atlas.

use medfed_volume::{RegionSelector, bounding_box, load_case, nifti};

use crate::support::datasets;

#[test]
fn head_ct_round_trips_and_box_reads_equal_crops() {
    let path = datasets().join("invesalius_head_ct/head_ct_hu.nii.gz");
    let ct = nifti::read_image(&path).unwrap();
    let g = ct.geometry;
    assert_eq!(nifti::read_geometry(&path).unwrap(), g);
    assert!(
        g.spacing.iter().all(|&s| s > 0.1 && s < 5.0),
        "{:?}",
        g.spacing
    );
    // HU: air near -1000, bone well above 200.
    let (min, max) = ct
        .data
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(min <= -900.0 && max >= 1000.0, "{min} {max}");
    let lo = [g.dims[0] / 4, g.dims[1] / 3, g.dims[2] / 2];
    let hi = [g.dims[0] / 2, g.dims[1] / 2, g.dims[2] / 2 + 3];
    let boxed = nifti::read_image_box(&path, Some((lo, hi))).unwrap();
    assert_eq!(boxed, ct.crop(lo, hi));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ct.nii.gz");
    nifti::write(&out, &ct).unwrap();
    let back = nifti::read_image(&out).unwrap();
    assert_eq!(back.data, ct.data);
    assert!(back.geometry.same_grid(&g, 1e-3));
    // The bone mask (HU >= 226) lines up with the CT voxel for voxel.
    let bone =
        nifti::read_labels(&datasets().join("invesalius_head_ct/bone_mask_hu226.nii.gz")).unwrap();
    assert!(bone.geometry.same_grid(&g, 1e-3));
    let agree = bone
        .data
        .iter()
        .zip(&ct.data)
        .filter(|(m, v)| (**m > 0) == (**v >= 226.0))
        .count();
    assert!(
        agree as f64 > 0.999 * ct.data.len() as f64,
        "{agree} of {}",
        ct.data.len()
    );
}

#[test]
fn atlas_labels_are_found_with_their_boxes_in_one_pass() {
    let labels_path = datasets().join("colin27_aal_mri/aal_labels.nii.gz");
    let labels = nifti::read_labels(&labels_path).unwrap();
    let rows = nifti::read_label_rows(&labels_path).unwrap();
    let (grid, extents) = (rows.geometry, &rows.extents);
    assert_eq!(grid, labels.geometry);
    // The sparse rows crop to exactly what the full map holds.
    let (lo, hi) = ([20, 30, 40], [150, 170, 120]);
    assert_eq!(rows.crop(lo, hi), labels.crop(lo, hi));
    assert!(extents.len() >= 90, "{} labels", extents.len());
    for (&l, &(lo, hi)) in extents.iter().take(10) {
        assert_eq!(
            bounding_box(&labels, |v| v == l),
            Some((lo, hi)),
            "label {l}"
        );
    }
    // The T1 image and the atlas share a grid; a case with two labels keeps both.
    let t1 = datasets().join("colin27_aal_mri/ch2_t1.nii.gz");
    let first: Vec<u16> = extents.keys().copied().take(2).collect();
    let case = load_case(&t1, &labels_path, &RegionSelector::All, |_| [2, 2, 2]).unwrap();
    assert_eq!(case.regions.len(), extents.len());
    assert!(case.regions.iter().any(|r| r.label == first[1]));
    let missing =
        load_case(&t1, &labels_path, &RegionSelector::Label(60000), |_| [0; 3]).unwrap_err();
    assert!(missing.to_string().contains("label 60000"), "{missing}");
}
