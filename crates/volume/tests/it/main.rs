//! Reader tests on the real volumes and DICOM files in shared/, and on generated RTSTRUCT and SEG
//! objects whose rasterisation is known.

mod dicom;
mod nifti_real;
mod support;
