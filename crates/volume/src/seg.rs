//! DICOM Segmentation objects (binary and fractional) onto an image grid, one mask per segment.
//!
//! Frames are placed by their Image Position (Patient); the segmentation's pixel grid must
//! coincide with the image's (same orientation and spacing, frames on image slices). A fractional
//! segment counts a voxel as inside at half its maximum value or more (IBSI's partial-volume
//! threshold 0.5).

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use crate::dicom_series::{floats, int, string};
use crate::{Geometry, Volume, VolumeError, cross, dot};

/// A segment of a SEG object with the frames that carry it.
#[derive(Debug, Clone)]
pub struct Segment {
    pub number: i64,
    pub label: String,
}

/// A decoded SEG object.
pub struct Segmentation {
    pub segments: Vec<Segment>,
    rows: usize,
    cols: usize,
    row_dir: [f64; 3],
    col_dir: [f64; 3],
    /// (between rows, between columns), mm.
    spacing: [f64; 2],
    /// Per frame: segment number, position, pixel values (0..=1 after scaling).
    frames: Vec<(i64, [f64; 3], Vec<f32>)>,
}

fn nested(ds: &InMemDicomObject, path: &[dicom_core::Tag]) -> Option<InMemDicomObject> {
    let mut cur = ds.clone();
    for &t in path {
        cur = cur.element(t).ok()?.items()?.first()?.clone();
    }
    Some(cur)
}

impl Segmentation {
    pub fn read(path: &Path) -> Result<Segmentation, VolumeError> {
        let bad = |r: String| VolumeError::dicom(path, r);
        let obj = OpenFileOptions::new()
            .open_file(path)
            .map_err(|e| bad(format!("not readable as DICOM: {e}")))?;
        let ds: &InMemDicomObject = &obj;
        if string(ds, tags::MODALITY).as_deref() != Some("SEG") {
            return Err(bad("not a DICOM SEG (Modality is not SEG)".into()));
        }
        let fractional = string(ds, tags::SEGMENTATION_TYPE).as_deref() == Some("FRACTIONAL");
        let max_frac = int(ds, tags::MAXIMUM_FRACTIONAL_VALUE)
            .unwrap_or(255)
            .max(1) as f32;
        let rows = int(ds, tags::ROWS).ok_or_else(|| bad("no Rows".into()))? as usize;
        let cols = int(ds, tags::COLUMNS).ok_or_else(|| bad("no Columns".into()))? as usize;
        let n_frames = int(ds, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(0) as usize;
        let segments = ds
            .element(tags::SEGMENT_SEQUENCE)
            .ok()
            .and_then(|e| e.items().map(|i| i.to_vec()))
            .unwrap_or_default()
            .iter()
            .map(|s| Segment {
                number: int(s, tags::SEGMENT_NUMBER).unwrap_or(0),
                label: string(s, tags::SEGMENT_LABEL).unwrap_or_default(),
            })
            .collect();
        let shared = nested(ds, &[tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE]);
        let per_frame = ds
            .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .ok()
            .and_then(|e| e.items().map(|i| i.to_vec()))
            .unwrap_or_default();
        if per_frame.len() != n_frames {
            return Err(bad(format!(
                "{} per-frame functional groups for {n_frames} frames",
                per_frame.len()
            )));
        }
        // Orientation and spacing: per frame if present, else shared.
        let lookup = |frame: &InMemDicomObject, seq: dicom_core::Tag, tag: dicom_core::Tag| {
            nested(frame, &[seq])
                .and_then(|o| floats(&o, tag))
                .or_else(|| {
                    shared
                        .as_ref()
                        .and_then(|s| nested(s, &[seq]))
                        .and_then(|o| floats(&o, tag))
                })
        };
        let first = per_frame.first().ok_or_else(|| bad("no frames".into()))?;
        let ori = lookup(
            first,
            tags::PLANE_ORIENTATION_SEQUENCE,
            tags::IMAGE_ORIENTATION_PATIENT,
        )
        .filter(|v| v.len() == 6)
        .ok_or_else(|| bad("no Image Orientation (Patient) in the functional groups".into()))?;
        let sp = lookup(first, tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)
            .filter(|v| v.len() == 2)
            .ok_or_else(|| bad("no Pixel Spacing in the functional groups".into()))?;
        let bytes = ds
            .element(tags::PIXEL_DATA)
            .map_err(|_| bad("no Pixel Data".into()))?
            .to_bytes()
            .map_err(|e| bad(format!("Pixel Data: {e}")))?;
        let per = rows * cols;
        let need = if fractional {
            per * n_frames
        } else {
            (per * n_frames).div_ceil(8)
        };
        if bytes.len() < need {
            return Err(bad(format!(
                "Pixel Data has {} bytes, {n_frames} frames need {need}",
                bytes.len()
            )));
        }
        let mut frames = Vec::with_capacity(n_frames);
        for (f, item) in per_frame.iter().enumerate() {
            let seg_no = nested(item, &[tags::SEGMENT_IDENTIFICATION_SEQUENCE])
                .and_then(|o| int(&o, tags::REFERENCED_SEGMENT_NUMBER))
                .ok_or_else(|| bad(format!("frame {}: no Referenced Segment Number", f + 1)))?;
            let pos = nested(item, &[tags::PLANE_POSITION_SEQUENCE])
                .and_then(|o| floats(&o, tags::IMAGE_POSITION_PATIENT))
                .filter(|v| v.len() == 3)
                .ok_or_else(|| bad(format!("frame {}: no Image Position (Patient)", f + 1)))?;
            let px: Vec<f32> = if fractional {
                bytes[f * per..(f + 1) * per]
                    .iter()
                    .map(|&b| b as f32 / max_frac)
                    .collect()
            } else {
                // Binary frames are bit-packed continuously, least significant bit first.
                (0..per)
                    .map(|i| {
                        let bit = f * per + i;
                        ((bytes[bit / 8] >> (bit % 8)) & 1) as f32
                    })
                    .collect()
            };
            frames.push((seg_no, [pos[0], pos[1], pos[2]], px));
        }
        Ok(Segmentation {
            segments,
            rows,
            cols,
            row_dir: [ori[0], ori[1], ori[2]],
            col_dir: [ori[3], ori[4], ori[5]],
            spacing: [sp[0], sp[1]],
            frames,
        })
    }

    /// The grid spanned by the segmentation's own frames (for a SEG without its image).
    pub fn own_grid(&self) -> Geometry {
        let normal = cross(self.row_dir, self.col_dir);
        let mut ks: Vec<f64> = self.frames.iter().map(|f| dot(f.1, normal)).collect();
        ks.sort_by(f64::total_cmp);
        ks.dedup_by(|a, b| (*a - *b).abs() < 1e-3);
        let step = if ks.len() > 1 { ks[1] - ks[0] } else { 1.0 };
        let first = self
            .frames
            .iter()
            .min_by(|a, b| dot(a.1, normal).total_cmp(&dot(b.1, normal)))
            .map(|f| f.1)
            .unwrap_or_default();
        let mut g = Geometry::new(
            [self.cols, self.rows, ks.len().max(1)],
            [self.spacing[1], self.spacing[0], step],
        );
        g.origin = first;
        for r in 0..3 {
            g.direction[r] = [self.row_dir[r], self.col_dir[r], normal[r]];
        }
        g
    }

    /// Segment `number` on `grid` (1 inside, 0 outside).
    pub fn rasterise(&self, number: i64, grid: &Geometry) -> Result<Volume<u16>, VolumeError> {
        let mismatch = |m: String| Err(VolumeError::GridMismatch(m));
        let gx = [
            grid.direction[0][0],
            grid.direction[1][0],
            grid.direction[2][0],
        ];
        let gy = [
            grid.direction[0][1],
            grid.direction[1][1],
            grid.direction[2][1],
        ];
        if dot(gx, self.row_dir) < 0.9999 || dot(gy, self.col_dir) < 0.9999 {
            return mismatch("the segmentation's orientation differs from the image's".into());
        }
        if (grid.spacing[0] - self.spacing[1]).abs() > 1e-3
            || (grid.spacing[1] - self.spacing[0]).abs() > 1e-3
        {
            return mismatch(format!(
                "segmentation pixel spacing {:?} differs from the image's {:?} (resampling a SEG is not supported)",
                self.spacing,
                [grid.spacing[1], grid.spacing[0]]
            ));
        }
        let mut mask = Volume::filled(*grid, 0u16);
        for (seg, pos, px) in self.frames.iter().filter(|f| f.0 == number) {
            let idx = grid.continuous_index(*pos);
            let r = idx.map(f64::round);
            if (0..3).any(|k| (idx[k] - r[k]).abs() > 0.05) {
                return mismatch(format!(
                    "a frame of segment {seg} does not start on an image voxel (index {idx:.2?})"
                ));
            }
            let (ox, oy, oz) = (r[0] as i64, r[1] as i64, r[2] as i64);
            if oz < 0 || oz >= grid.dims[2] as i64 {
                return mismatch(format!(
                    "a frame of segment {seg} lies outside the image (slice {oz})"
                ));
            }
            for row in 0..self.rows {
                for col in 0..self.cols {
                    if px[row * self.cols + col] >= 0.5 {
                        let (x, y) = (ox + col as i64, oy + row as i64);
                        if x < 0 || y < 0 || x >= grid.dims[0] as i64 || y >= grid.dims[1] as i64 {
                            return mismatch(format!("segment {seg} reaches outside the image"));
                        }
                        let i = grid.index(x as usize, y as usize, oz as usize);
                        mask.data[i] = 1;
                    }
                }
            }
        }
        Ok(mask)
    }
}
