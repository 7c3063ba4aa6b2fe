//! One case in: an image (NIfTI file or DICOM series folder) and a mask (NIfTI label map,
//! RTSTRUCT or SEG), cut down to the box around the selected regions plus a margin.
//!
//! The mask is read first, so the image can be read only as far as the regions reach (for NIfTI,
//! streamed: the rest of the image is never held in memory).

use std::path::Path;
use std::sync::Arc;

use crate::{Geometry, Volume, VolumeError, bounding_box, dicom_series, nifti, rtstruct, seg};

/// Which regions of a mask to use.
#[derive(Debug, Clone, PartialEq)]
pub enum RegionSelector {
    /// Every label of a label map, every ROI of an RTSTRUCT, every segment of a SEG.
    All,
    Label(u16),
    /// An RTSTRUCT ROI name or SEG segment label.
    Name(String),
}

/// A region to compute features for: a mask on the case's cropped grid and the value marking it.
#[derive(Debug, Clone)]
pub struct MaskRegion {
    pub name: String,
    pub label: u16,
    pub mask: Arc<Volume<u16>>,
}

/// An image cropped to its regions, with where the crop sits in the full image.
#[derive(Debug)]
pub struct Case {
    pub frame: Geometry,
    pub offset: [usize; 3],
    pub image: Volume<f32>,
    pub regions: Vec<MaskRegion>,
}

fn is_nifti(p: &Path) -> bool {
    let s = p.to_string_lossy().to_ascii_lowercase();
    s.ends_with(".nii") || s.ends_with(".nii.gz")
}

/// Load `image` and `mask`, keep `margin(spacing)` voxels around the selected regions.
pub fn load_case(
    image: &Path,
    mask: &Path,
    selector: &RegionSelector,
    margin: impl Fn([f64; 3]) -> [usize; 3],
) -> Result<Case, VolumeError> {
    // The image grid, without reading the image itself when it is NIfTI.
    let (frame, series) = if image.is_dir() {
        let v = dicom_series::read_series(image)?;
        (v.geometry, Some(v))
    } else if is_nifti(image) {
        (nifti::read_geometry(image)?, None)
    } else {
        return Err(VolumeError::Nifti {
            path: image.to_path_buf(),
            reason: "the image must be a .nii / .nii.gz file or a folder holding a DICOM series"
                .into(),
        });
    };
    let m = margin(frame.spacing);
    let widen = |lo: [usize; 3], hi: [usize; 3]| -> ([usize; 3], [usize; 3]) {
        (
            std::array::from_fn(|k| lo[k].saturating_sub(m[k])),
            std::array::from_fn(|k| (hi[k] + m[k]).min(frame.dims[k])),
        )
    };
    if is_nifti(mask) {
        // One streaming pass keeps only the labelled rows, never the whole label map.
        let label_rows = nifti::read_label_rows(mask)?;
        let (mask_grid, extents) = (label_rows.geometry, &label_rows.extents);
        if !mask_grid.same_grid(&frame, 1e-3 * frame.spacing[0].max(1.0)) {
            return Err(VolumeError::GridMismatch(format!(
                "{}: mask grid {:?} / spacing {:?} / origin {:?} differs from the image's {:?} / {:?} / {:?}",
                mask.display(),
                mask_grid.dims,
                mask_grid.spacing,
                mask_grid.origin,
                frame.dims,
                frame.spacing,
                frame.origin
            )));
        }
        let wanted: Vec<u16> = match selector {
            RegionSelector::All => extents.keys().copied().collect(),
            RegionSelector::Label(l) => vec![*l],
            RegionSelector::Name(n) => {
                return Err(VolumeError::NotFound {
                    path: mask.to_path_buf(),
                    what: format!(
                        "ROI name '{n}' (a NIfTI mask has labels, not names; use --label)"
                    ),
                    available: String::new(),
                });
            }
        };
        let available = || {
            let v: Vec<String> = extents.keys().map(|l| l.to_string()).collect();
            if v.is_empty() {
                "none (the mask is empty)".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut lo = [usize::MAX; 3];
        let mut hi = [0usize; 3];
        for l in &wanted {
            let Some((a, b)) = extents.get(l) else {
                return Err(VolumeError::NotFound {
                    path: mask.to_path_buf(),
                    what: format!("label {l}"),
                    available: available(),
                });
            };
            for k in 0..3 {
                lo[k] = lo[k].min(a[k]);
                hi[k] = hi[k].max(b[k]);
            }
        }
        if wanted.is_empty() {
            return Err(VolumeError::NotFound {
                path: mask.to_path_buf(),
                what: "any labelled voxel".into(),
                available: available(),
            });
        }
        let (lo, hi) = widen(lo, hi);
        let labels = Arc::new(label_rows.crop(lo, hi));
        let image = match series {
            Some(v) => v.crop(lo, hi),
            None => nifti::read_image_box(image, Some((lo, hi)))?,
        };
        let regions = wanted
            .into_iter()
            .map(|l| MaskRegion {
                name: l.to_string(),
                label: l,
                mask: labels.clone(),
            })
            .collect();
        return Ok(Case {
            frame,
            offset: lo,
            image,
            regions,
        });
    }
    let full_regions = dicom_regions(mask, selector, &frame)?;
    // Union box of the regions, widened by the margin.
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for r in &full_regions {
        if let Some((l, h)) = bounding_box(&r.mask, |v| v == r.label) {
            for k in 0..3 {
                lo[k] = lo[k].min(l[k]);
                hi[k] = hi[k].max(h[k]);
            }
        }
    }
    if lo[0] == usize::MAX {
        return Err(VolumeError::NotFound {
            path: mask.to_path_buf(),
            what: "any voxel of the selected regions".into(),
            available: "empty mask".into(),
        });
    }
    let (lo, hi) = widen(lo, hi);
    let image = match series {
        Some(v) => v.crop(lo, hi),
        None => nifti::read_image_box(image, Some((lo, hi)))?,
    };
    // Crop each distinct mask volume once.
    let mut cropped: Vec<(*const Volume<u16>, Arc<Volume<u16>>)> = Vec::new();
    let regions = full_regions
        .into_iter()
        .map(|r| {
            let key = Arc::as_ptr(&r.mask);
            let mask = match cropped.iter().find(|(k, _)| *k == key) {
                Some((_, c)) => c.clone(),
                None => {
                    let c = Arc::new(r.mask.crop(lo, hi));
                    cropped.push((key, c.clone()));
                    c
                }
            };
            MaskRegion { mask, ..r }
        })
        .collect();
    Ok(Case {
        frame,
        offset: lo,
        image,
        regions,
    })
}

fn dicom_regions(
    mask: &Path,
    selector: &RegionSelector,
    frame: &Geometry,
) -> Result<Vec<MaskRegion>, VolumeError> {
    let modality = {
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(mask)
            .map_err(|e| {
                VolumeError::dicom(
                    mask,
                    format!("not a NIfTI file and not readable as DICOM: {e}"),
                )
            })?;
        dicom_series::string(&obj, dicom_dictionary_std::tags::MODALITY).unwrap_or_default()
    };
    let pick = |name: &str, number: i64| match selector {
        RegionSelector::All => true,
        RegionSelector::Label(l) => number == *l as i64,
        RegionSelector::Name(n) => n == name,
    };
    let mut out = Vec::new();
    let mut names = Vec::new();
    match modality.as_str() {
        "RTSTRUCT" => {
            for s in rtstruct::read_structures(mask)? {
                names.push(s.name.clone());
                if pick(&s.name, s.number) && !s.contours.is_empty() {
                    out.push(MaskRegion {
                        mask: Arc::new(rtstruct::rasterise(&s, frame)?),
                        name: s.name,
                        label: 1,
                    });
                }
            }
        }
        "SEG" => {
            let segm = seg::Segmentation::read(mask)?;
            for s in &segm.segments {
                names.push(s.label.clone());
                if pick(&s.label, s.number) {
                    out.push(MaskRegion {
                        mask: Arc::new(segm.rasterise(s.number, frame)?),
                        name: s.label.clone(),
                        label: 1,
                    });
                }
            }
        }
        other => {
            return Err(VolumeError::dicom(
                mask,
                format!("a DICOM mask must be RTSTRUCT or SEG, this one's Modality is '{other}'"),
            ));
        }
    }
    if out.is_empty() {
        return Err(VolumeError::NotFound {
            path: mask.to_path_buf(),
            what: format!("{selector:?}"),
            available: names.join(", "),
        });
    }
    Ok(out)
}
