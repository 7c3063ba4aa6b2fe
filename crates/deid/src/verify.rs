//! Checks a de-identified folder independently of how it was made: every file re-reads as
//! DICOM, carries the de-identification markers, holds none of a list of identifying values
//! anywhere in its bytes, and every image reference resolves to an instance of the set.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use dicom_core::header::Header;
use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::error::DeidError;
use crate::reader::read_object;

/// What [`verify_output`] found.
#[derive(Debug, Default)]
pub struct Verification {
    pub files: usize,
    pub bytes: u64,
    /// Files that did not re-read as DICOM, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Files lacking Patient Identity Removed = YES.
    pub unmarked: Vec<PathBuf>,
    /// (file, index into the planted list) for every identifying value found.
    pub leaks: Vec<(PathBuf, usize)>,
    /// Referenced SOP Instance UIDs (in image references) that name no instance of the set.
    pub dangling_references: usize,
    pub references: usize,
}

impl Verification {
    pub fn is_clean(&self) -> bool {
        self.unreadable.is_empty()
            && self.unmarked.is_empty()
            && self.leaks.is_empty()
            && self.dangling_references == 0
    }
}

/// Verifies every `.dcm`-or-other file under `dir` except the JSON report.
pub fn verify_output(dir: &Path, planted: &[Vec<u8>]) -> Result<Verification, DeidError> {
    let mut v = Verification::default();
    let mut instances = HashSet::new();
    let mut referenced = Vec::new();
    // (index into `planted`, finder); empty needles would match everywhere, so they are skipped.
    let finders: Vec<(usize, memchr::memmem::Finder<'_>)> = planted
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.is_empty())
        .map(|(i, n)| (i, memchr::memmem::Finder::new(n.as_slice())))
        .collect();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.map_err(|e| DeidError::io(dir, e.into()))?;
        if !entry.file_type().is_file() || entry.path().extension().is_some_and(|x| x == "json") {
            continue;
        }
        let path = entry.path().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| DeidError::io(&path, e))?;
        v.files += 1;
        v.bytes += bytes.len() as u64;
        for (i, finder) in &finders {
            if finder.find(&bytes).is_some() {
                v.leaks.push((path.clone(), *i));
            }
        }
        let obj = match read_object(&bytes) {
            Ok(o) => o,
            Err(e) => {
                v.unreadable.push((path, e.reason().to_string()));
                continue;
            }
        };
        let marked = obj
            .get(tags::PATIENT_IDENTITY_REMOVED)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|s| s.trim() == "YES");
        if !marked {
            v.unmarked.push(path.clone());
        }
        if let Some(uid) = obj
            .get(tags::SOP_INSTANCE_UID)
            .and_then(|e| e.to_str().ok())
        {
            instances.insert(uid.trim_end_matches('\0').to_string());
        }
        collect_image_references(&obj, &mut referenced);
    }
    v.references = referenced.len();
    v.dangling_references = referenced
        .iter()
        .filter(|r| !instances.contains(*r))
        .count();
    Ok(v)
}

fn collect_image_references(ds: &InMemDicomObject, out: &mut Vec<String>) {
    for elem in ds.iter() {
        if let Value::Sequence(seq) = elem.value() {
            let is_image_ref = elem.tag() == tags::REFERENCED_IMAGE_SEQUENCE
                || elem.tag() == tags::SOURCE_IMAGE_SEQUENCE;
            for item in seq.items() {
                if is_image_ref
                    && let Some(uid) = item
                        .get(tags::REFERENCED_SOP_INSTANCE_UID)
                        .and_then(|e| e.to_str().ok())
                {
                    out.push(uid.trim_end_matches('\0').to_string());
                }
                collect_image_references(item, out);
            }
        }
    }
}
