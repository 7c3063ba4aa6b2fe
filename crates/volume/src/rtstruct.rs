//! DICOM RTSTRUCT: closed planar contours rasterised onto an image grid, one mask per ROI name.
//!
//! A voxel is inside when its centre is inside the contour (even-odd rule, so a contour drawn
//! inside another on the same slice is a hole). Contours must lie in image slice planes.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use crate::dicom_series::{floats, int, string};
use crate::{Geometry, Volume, VolumeError};

/// One structure of the set: its name and its contours (each a list of world points, mm).
#[derive(Debug, Clone)]
pub struct Structure {
    pub number: i64,
    pub name: String,
    pub contours: Vec<Vec<[f64; 3]>>,
}

/// Read every ROI of an RTSTRUCT file.
pub fn read_structures(path: &Path) -> Result<Vec<Structure>, VolumeError> {
    let obj = OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| VolumeError::dicom(path, format!("not readable as DICOM: {e}")))?;
    let ds: &InMemDicomObject = &obj;
    if string(ds, tags::MODALITY).as_deref() != Some("RTSTRUCT") {
        return Err(VolumeError::dicom(
            path,
            "not an RTSTRUCT (Modality is not RTSTRUCT)",
        ));
    }
    let mut structures = Vec::new();
    let names = ds
        .element(tags::STRUCTURE_SET_ROI_SEQUENCE)
        .ok()
        .and_then(|e| e.items().map(|i| i.to_vec()));
    for item in names.unwrap_or_default() {
        structures.push(Structure {
            number: int(&item, tags::ROI_NUMBER).unwrap_or(-1),
            name: string(&item, tags::ROI_NAME).unwrap_or_default(),
            contours: Vec::new(),
        });
    }
    let rois = ds
        .element(tags::ROI_CONTOUR_SEQUENCE)
        .ok()
        .and_then(|e| e.items().map(|i| i.to_vec()));
    for item in rois.unwrap_or_default() {
        let number = int(&item, tags::REFERENCED_ROI_NUMBER).unwrap_or(-2);
        let Some(s) = structures.iter_mut().find(|s| s.number == number) else {
            continue;
        };
        let contours = item
            .element(tags::CONTOUR_SEQUENCE)
            .ok()
            .and_then(|e| e.items().map(|i| i.to_vec()));
        for c in contours.unwrap_or_default() {
            let kind = string(&c, tags::CONTOUR_GEOMETRIC_TYPE).unwrap_or_default();
            if kind != "CLOSED_PLANAR" {
                continue;
            }
            let data = floats(&c, tags::CONTOUR_DATA).unwrap_or_default();
            if data.len() < 9 || !data.len().is_multiple_of(3) {
                return Err(VolumeError::dicom(
                    path,
                    format!(
                        "ROI '{}': a contour with {} coordinates (not x,y,z triplets)",
                        s.name,
                        data.len()
                    ),
                ));
            }
            s.contours
                .push(data.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect());
        }
    }
    Ok(structures)
}

/// Rasterise one structure onto `grid` (1 inside, 0 outside).
pub fn rasterise(s: &Structure, grid: &Geometry) -> Result<Volume<u16>, VolumeError> {
    let mut mask = Volume::filled(*grid, 0u16);
    let [nx, ny, nz] = grid.dims;
    for contour in &s.contours {
        let pts: Vec<[f64; 3]> = contour.iter().map(|&w| grid.continuous_index(w)).collect();
        let z = pts[0][2];
        let zi = z.round();
        if pts.iter().any(|p| (p[2] - zi).abs() > 0.1) || zi < -0.5 || zi > nz as f64 - 0.5 {
            return Err(VolumeError::GridMismatch(format!(
                "ROI '{}': a contour at slice index {z:.2} does not lie in a slice of the image (wrong image for this RTSTRUCT?)",
                s.name
            )));
        }
        let zi = zi as usize;
        // Scanline fill at voxel centres, toggling so that nested contours make holes.
        for y in 0..ny {
            let yc = y as f64;
            let mut xs = Vec::new();
            for k in 0..pts.len() {
                let (a, b) = (pts[k], pts[(k + 1) % pts.len()]);
                if (a[1] <= yc) != (b[1] <= yc) {
                    xs.push(a[0] + (yc - a[1]) / (b[1] - a[1]) * (b[0] - a[0]));
                }
            }
            xs.sort_by(f64::total_cmp);
            for pair in xs.chunks_exact(2) {
                let x0 = pair[0].ceil().max(0.0) as usize;
                let x1 = pair[1].floor().min(nx as f64 - 1.0);
                if x1 < 0.0 {
                    continue;
                }
                for x in x0..=(x1 as usize) {
                    if (x as f64) <= pair[1] {
                        let i = grid.index(x, y, zi);
                        mask.data[i] ^= 1;
                    }
                }
            }
        }
    }
    Ok(mask)
}
