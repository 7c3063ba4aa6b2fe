//! A folder of single-frame DICOM images (one series) to one [`Volume`].
//!
//! Slices are sorted by their position along the slice normal; rescale slope and intercept are
//! applied. The series must have one orientation, one pixel grid, evenly spaced slices and slice
//! positions that move along the normal: a gap, a mixed folder or a tilted gantry is refused with
//! a message that says which.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};

use crate::{Geometry, Volume, VolumeError, cross, dot};

/// Read the series in `dir` (files directly inside it; non-DICOM files are skipped).
pub fn read_series(dir: &Path) -> Result<Volume<f32>, VolumeError> {
    let err = |reason: String| VolumeError::Series {
        path: dir.to_path_buf(),
        reason,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| VolumeError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut slices = Vec::new();
    for f in &files {
        if let Some(obj) = open_dicom(f)? {
            slices.push(Slice::read(f, obj)?);
        }
    }
    if slices.is_empty() {
        return Err(err("no DICOM image files in the folder".into()));
    }
    let series: std::collections::BTreeSet<&str> =
        slices.iter().map(|s| s.series_uid.as_str()).collect();
    if series.len() > 1 {
        return Err(err(format!(
            "mixed series: {} series in one folder ({}); put each series in its own folder",
            series.len(),
            series.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let first = &slices[0];
    for s in &slices {
        if s.rows != first.rows || s.cols != first.cols {
            return Err(err(format!(
                "{}: {}x{} pixels, the series' first slice has {}x{}",
                s.path.display(),
                s.cols,
                s.rows,
                first.cols,
                first.rows
            )));
        }
        if (0..3).any(|k| {
            (s.row_dir[k] - first.row_dir[k]).abs() > 1e-4
                || (s.col_dir[k] - first.col_dir[k]).abs() > 1e-4
        }) {
            return Err(err(format!(
                "{}: orientation differs within the series",
                s.path.display()
            )));
        }
        if (0..2).any(|k| (s.pixel_spacing[k] - first.pixel_spacing[k]).abs() > 1e-4) {
            return Err(err(format!(
                "{}: pixel spacing differs within the series",
                s.path.display()
            )));
        }
    }
    let normal = cross(first.row_dir, first.col_dir);
    let (cols, rows, row_dir, col_dir, pixel_spacing) = (
        first.cols,
        first.rows,
        first.row_dir,
        first.col_dir,
        first.pixel_spacing,
    );
    slices.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    let mut slice_spacing = pixel_spacing[0].max(1.0);
    if slices.len() > 1 {
        let steps: Vec<f64> = slices
            .windows(2)
            .map(|w| dot(w[1].position, normal) - dot(w[0].position, normal))
            .collect();
        if let Some(i) = steps.iter().position(|&d| d.abs() < 1e-3) {
            return Err(err(format!(
                "two slices at the same position ({} and {}): a mixed or duplicated series",
                slices[i].path.display(),
                slices[i + 1].path.display()
            )));
        }
        let mut sorted = steps.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        if let Some(i) = steps
            .iter()
            .position(|&d| (d - median).abs() > 0.1 * median.max(1e-3))
        {
            return Err(err(format!(
                "uneven slice spacing: {:.3} mm between {} and {}, {:.3} mm elsewhere (a gap or missing slice)",
                steps[i],
                slices[i].path.display(),
                slices[i + 1].path.display(),
                median
            )));
        }
        // Positions must advance along the normal: anything sideways is a tilted gantry.
        for w in slices.windows(2) {
            let d = [
                w[1].position[0] - w[0].position[0],
                w[1].position[1] - w[0].position[1],
                w[1].position[2] - w[0].position[2],
            ];
            let along = dot(d, normal);
            let sideways = (dot(d, d) - along * along).max(0.0).sqrt();
            if sideways > 0.01 * along.abs().max(0.1) {
                return Err(err(format!(
                    "slices shift {sideways:.2} mm sideways per {along:.2} mm step (tilted gantry or sheared series); resample it to an orthogonal grid first"
                )));
            }
        }
        slice_spacing = median;
    }
    let mut geometry = Geometry::new(
        [cols, rows, slices.len()],
        [pixel_spacing[1], pixel_spacing[0], slice_spacing],
    );
    geometry.origin = slices[0].position;
    for r in 0..3 {
        geometry.direction[r] = [row_dir[r], col_dir[r], normal[r]];
    }
    // Bounded: headers can claim any size; each slice's pixels are checked as they are read.
    let mut data = Vec::with_capacity(geometry.len().min(1 << 28));
    for s in &slices {
        data.extend(s.pixels()?);
    }
    Ok(Volume { geometry, data })
}

/// Open a DICOM file; `None` for a file that is not DICOM at all (no "DICM" marker), an error
/// for one that is but cannot be read, so a series never loses a slice silently. Trailing zero
/// padding after the last element (written by some exporters) is tolerated.
fn open_dicom(path: &Path) -> Result<Option<DefaultDicomObject>, VolumeError> {
    let bytes = std::fs::read(path).map_err(|source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Ok(None);
    }
    let first = match OpenFileOptions::new().from_reader(&bytes[..]) {
        Ok(o) => return Ok(Some(o)),
        Err(e) => e,
    };
    // Zero padding parses as empty 8-byte elements; only the last, partial one trips the parser.
    let zeros = bytes.iter().rev().take_while(|&&b| b == 0).count();
    if zeros >= 8 {
        for cut in 1..8 {
            if let Ok(o) = OpenFileOptions::new().from_reader(&bytes[..bytes.len() - cut]) {
                return Ok(Some(o));
            }
        }
    }
    Err(VolumeError::dicom(
        path,
        format!("unreadable DICOM file in the series: {first}"),
    ))
}

struct Slice {
    path: PathBuf,
    obj: DefaultDicomObject,
    series_uid: String,
    rows: usize,
    cols: usize,
    position: [f64; 3],
    row_dir: [f64; 3],
    col_dir: [f64; 3],
    /// (between rows, between columns) in mm.
    pixel_spacing: [f64; 2],
}

pub(crate) fn string(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element(tag)
        .ok()?
        .to_str()
        .ok()
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
}

pub(crate) fn floats(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    obj.element(tag).ok()?.to_multi_float64().ok()
}

pub(crate) fn int(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<i64> {
    obj.element(tag).ok()?.to_int::<i64>().ok()
}

impl Slice {
    fn read(path: &Path, obj: DefaultDicomObject) -> Result<Slice, VolumeError> {
        let bad = |r: &str| VolumeError::dicom(path, r.to_string());
        let ds: &InMemDicomObject = &obj;
        if int(ds, tags::NUMBER_OF_FRAMES).unwrap_or(1) > 1 {
            return Err(bad(
                "multi-frame images are not supported as a series; export single-frame slices",
            ));
        }
        let pos = floats(ds, tags::IMAGE_POSITION_PATIENT).filter(|v| v.len() == 3);
        let ori = floats(ds, tags::IMAGE_ORIENTATION_PATIENT).filter(|v| v.len() == 6);
        let sp = floats(ds, tags::PIXEL_SPACING).filter(|v| v.len() == 2);
        let (Some(pos), Some(ori), Some(sp)) = (pos, ori, sp) else {
            return Err(bad(
                "no Image Position/Orientation (Patient) or Pixel Spacing: not a cross-sectional image",
            ));
        };
        let rows = int(ds, tags::ROWS).ok_or_else(|| bad("no Rows"))? as usize;
        let cols = int(ds, tags::COLUMNS).ok_or_else(|| bad("no Columns"))? as usize;
        Ok(Slice {
            path: path.to_path_buf(),
            series_uid: string(ds, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
            rows,
            cols,
            position: [pos[0], pos[1], pos[2]],
            row_dir: [ori[0], ori[1], ori[2]],
            col_dir: [ori[3], ori[4], ori[5]],
            pixel_spacing: [sp[0], sp[1]],
            obj,
        })
    }

    fn pixels(&self) -> Result<Vec<f32>, VolumeError> {
        let bad = |r: String| VolumeError::dicom(&self.path, r);
        let ds: &InMemDicomObject = &self.obj;
        let ts = self.obj.meta().transfer_syntax().trim_end_matches('\0');
        let native = [
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2.1.99",
        ];
        if int(ds, tags::SAMPLES_PER_PIXEL).unwrap_or(1) != 1 {
            return Err(bad("colour images are not supported for radiomics".into()));
        }
        let bits = int(ds, tags::BITS_ALLOCATED).unwrap_or(16);
        let signed = int(ds, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
        let slope = floats(ds, tags::RESCALE_SLOPE)
            .and_then(|v| v.first().copied())
            .unwrap_or(1.0);
        let intercept = floats(ds, tags::RESCALE_INTERCEPT)
            .and_then(|v| v.first().copied())
            .unwrap_or(0.0);
        // Native pixel data is read as stored; encapsulated data (JPEG, JPEG 2000, RLE) is
        // decoded to native little-endian samples first.
        let decoded;
        let bytes: std::borrow::Cow<[u8]> = if native.contains(&ts) {
            let elem = ds
                .element(tags::PIXEL_DATA)
                .map_err(|_| bad("no Pixel Data".into()))?;
            elem.to_bytes()
                .map_err(|e| bad(format!("Pixel Data: {e}")))?
        } else {
            use dicom_pixeldata::PixelDecoder;
            decoded = self.obj.decode_pixel_data().map_err(|e| {
                bad(format!(
                    "compressed pixel data (transfer syntax {ts}) could not be decoded: {e}"
                ))
            })?;
            std::borrow::Cow::Borrowed(decoded.data())
        };
        let n = self.rows * self.cols;
        // Values are decoded from the bytes as stored; dicom-rs keeps native data little endian.
        let raw: Vec<f64> = match (bits, signed) {
            (8, false) => bytes.iter().take(n).map(|&b| b as f64).collect(),
            (8, true) => bytes.iter().take(n).map(|&b| b as i8 as f64).collect(),
            (16, false) => bytes
                .chunks_exact(2)
                .take(n)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as f64)
                .collect(),
            (16, true) => bytes
                .chunks_exact(2)
                .take(n)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f64)
                .collect(),
            (32, false) => bytes
                .chunks_exact(4)
                .take(n)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            (32, true) => bytes
                .chunks_exact(4)
                .take(n)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            (b, _) => return Err(bad(format!("{b} bits allocated is not supported"))),
        };
        if raw.len() < n {
            return Err(bad(format!("Pixel Data holds {} of {n} pixels", raw.len())));
        }
        Ok(raw
            .into_iter()
            .map(|v| (v * slope + intercept) as f32)
            .collect())
    }
}
