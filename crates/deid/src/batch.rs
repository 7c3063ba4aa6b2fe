//! De-identifying a folder: every file is read, de-identified and written, or refused with a
//! one-line reason. One bad file never stops the batch.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dicom_object::OpenFileOptions;
use rayon::prelude::*;
use serde::Serialize;

use crate::engine::{Deidentifier, Rejection, read_bare_dataset};
use crate::error::DeidError;
use crate::profile::DeidProfile;
use crate::pseudonym::Pseudonymizer;
use crate::reid::{OriginalIdentity, ReidTable, reid_table_path};
use crate::table::TABLE_EDITION;

/// What happened to one input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Refused,
    Error,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Path relative to the input folder.
    pub input: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Path relative to the output folder (same as `input`), set when written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub bytes_in: u64,
}

/// The whole run, written as `deid-report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    pub medfed_version: &'static str,
    pub action_table: &'static str,
    pub options: Vec<&'static str>,
    pub files_total: usize,
    pub files_ok: usize,
    pub files_refused: usize,
    pub files_error: usize,
    pub files: Vec<FileReport>,
}

impl BatchReport {
    /// True when every input was de-identified.
    pub fn all_ok(&self) -> bool {
        self.files_ok == self.files_total
    }

    /// Writes the report as JSON, under a temporary name first.
    pub fn write_json(&self, path: &Path) -> Result<(), DeidError> {
        let json = serde_json::to_vec_pretty(self).expect("report serialises");
        write_atomically(path, &json, true, true).map_err(|e| DeidError::io(path, e))
    }
}

/// Settings of one batch run.
pub struct BatchRun<'a> {
    pub profile: &'a DeidProfile,
    pub pseudonymizer: &'a Pseudonymizer,
    /// Worker threads; 0 means one per core.
    pub jobs: usize,
}

impl BatchRun<'_> {
    /// De-identifies every file under `input` into the same relative path under `output`.
    /// `progress` is called once per file, from worker threads, with the number of files in
    /// the batch.
    pub fn run(
        &self,
        input: &Path,
        output: &Path,
        progress: &(dyn Fn(&FileReport, usize) + Sync),
    ) -> Result<BatchReport, DeidError> {
        let files = list_inputs(input, output)?;
        std::fs::create_dir_all(output).map_err(|e| DeidError::io(output, e))?;
        // Every output folder once, up front, rather than a lookup per file.
        let folders: std::collections::BTreeSet<&Path> =
            files.iter().filter_map(|f| f.parent()).collect();
        for folder in folders {
            let dir = output.join(folder);
            std::fs::create_dir_all(&dir).map_err(|e| DeidError::io(&dir, e))?;
        }
        let deidentifier = Deidentifier::new(self.profile, self.pseudonymizer);
        let identities: Mutex<BTreeMap<String, OriginalIdentity>> = Mutex::new(BTreeMap::new());

        let work = || {
            files
                .par_iter()
                .map(|rel| {
                    let report = process_file(&deidentifier, input, output, rel, &identities);
                    progress(&report, files.len());
                    report
                })
                .collect::<Vec<_>>()
        };
        let reports = if self.jobs == 0 {
            work()
        } else {
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.jobs)
                .build()
                .map_err(|e| DeidError::io(output, std::io::Error::other(e)))?
                .install(work)
        };

        let identities = identities.into_inner().unwrap_or_else(|p| p.into_inner());
        let key = self.pseudonymizer.key();
        ReidTable::new(reid_table_path(key.path()), key).merge(&identities)?;

        let count = |o| reports.iter().filter(|r| r.outcome == o).count();
        Ok(BatchReport {
            medfed_version: env!("CARGO_PKG_VERSION"),
            action_table: TABLE_EDITION,
            options: self.profile.options().iter().map(|o| o.name()).collect(),
            files_total: reports.len(),
            files_ok: count(Outcome::Ok),
            files_refused: count(Outcome::Refused),
            files_error: count(Outcome::Error),
            files: reports,
        })
    }
}

/// Every regular file under `input`, relative, sorted. The output folder must not lie inside
/// the input (it would be read back as input on the next run).
fn list_inputs(input: &Path, output: &Path) -> Result<Vec<PathBuf>, DeidError> {
    let input_abs = input.canonicalize().map_err(|e| DeidError::io(input, e))?;
    let output_abs = absolute_lexical(output);
    if output_abs.starts_with(&input_abs) {
        return Err(DeidError::OutputInsideInput {
            input: input.to_path_buf(),
            out: output.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(&input_abs)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| input.to_path_buf());
            DeidError::io(path, e.into())
        })?;
        if entry.file_type().is_file() {
            let rel = entry
                .path()
                .strip_prefix(&input_abs)
                .expect("walk stays under its root");
            files.push(rel.to_path_buf());
        }
    }
    Ok(files)
}

fn absolute_lexical(p: &Path) -> PathBuf {
    // The output may not exist yet; canonicalise its deepest existing ancestor.
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
            _ => break,
        }
    }
    let mut abs = existing.canonicalize().unwrap_or(existing);
    abs.extend(rest.into_iter().rev());
    abs
}

fn process_file(
    deidentifier: &Deidentifier<'_>,
    input: &Path,
    output: &Path,
    rel: &Path,
    identities: &Mutex<BTreeMap<String, OriginalIdentity>>,
) -> FileReport {
    let rel_text = rel.to_string_lossy().into_owned();
    let src = input.join(rel);
    let mut report = FileReport {
        input: rel_text.clone(),
        outcome: Outcome::Error,
        reason: None,
        output: None,
        bytes_in: 0,
    };
    let dest = output.join(rel);
    let result = (|| -> Result<(), Rejection> {
        // (An existing output is caught when the finished file is linked into place.)
        let (object, size) = read_object_at(&src)?;
        report.bytes_in = size;
        let done = deidentifier.deidentify(object)?;
        let encode = |w: &mut BufWriter<File>| {
            done.object.write_all(w).map_err(|e| {
                std::io::Error::other(format!("cannot encode the de-identified object: {e}"))
            })
        };
        write_atomically_with(&dest, false, false, encode).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Rejection::Refused("output file already exists; nothing is overwritten".into())
            } else {
                Rejection::Error(format!("cannot write output: {e}"))
            }
        })?;
        if let Some((pseudonym, who)) = done.patient {
            identities
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pseudonym, who);
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            report.outcome = Outcome::Ok;
            report.output = Some(rel_text);
        }
        Err(Rejection::Refused(reason)) => {
            report.outcome = Outcome::Refused;
            report.reason = Some(reason);
        }
        Err(Rejection::Error(reason)) => {
            report.outcome = Outcome::Error;
            report.reason = Some(reason);
        }
    }
    if report.outcome != Outcome::Ok {
        // No file name: exports are often named by SOP Instance UID or patient, and logs travel
        // further than the report (which names the file, and stays beside the outputs).
        tracing::warn!(outcome = ?report.outcome, reason = report.reason.as_deref().unwrap_or(""), "a file was not de-identified; deid-report.json names it");
    }
    report
}

/// Parses a DICOM file straight from disk (no copy of the whole file in memory); only a file
/// the parser rejects is read whole, for [`read_object`]'s fallbacks.
fn read_object_at(path: &Path) -> Result<(dicom_object::DefaultDicomObject, u64), Rejection> {
    let cannot_read = |e: std::io::Error| Rejection::Error(format!("cannot read: {e}"));
    let file = File::open(path).map_err(cannot_read)?;
    let size = file.metadata().map_err(cannot_read)?.len();
    match OpenFileOptions::new().from_reader(file) {
        Ok(obj) => Ok((obj, size)),
        Err(_) => {
            let bytes = std::fs::read(path).map_err(cannot_read)?;
            Ok((read_object(&bytes)?, size))
        }
    }
}

/// Parses a DICOM file from memory: Part 10 with or without preamble, or, failing that, a bare
/// Implicit VR Little Endian data set.
pub fn read_object(bytes: &[u8]) -> Result<dicom_object::DefaultDicomObject, Rejection> {
    match OpenFileOptions::new().from_reader(bytes) {
        Ok(obj) => Ok(obj),
        Err(e) => {
            // Some writers pad files with zero bytes after the data set. Zeros carry nothing,
            // so they may be dropped: the parser reads them as empty 8-byte elements of group
            // 0000 (removed later) and only trips on the last, partial one.
            let zeros = bytes.iter().rev().take_while(|&&b| b == 0).count();
            if zeros >= 8 {
                for cut in 1..8 {
                    if let Ok(obj) = OpenFileOptions::new().from_reader(&bytes[..bytes.len() - cut])
                    {
                        tracing::debug!(zeros, "ignored trailing zero padding");
                        return Ok(obj);
                    }
                }
            }
            let has_magic =
                bytes.get(128..132) == Some(b"DICM") || bytes.get(0..4) == Some(b"DICM");
            if !has_magic && let Some(obj) = read_bare_dataset(bytes) {
                return Ok(obj);
            }
            if !has_magic {
                Err(Rejection::Refused(
                    "not a DICOM file (no DICM magic, and not a bare DICOM data set)".into(),
                ))
            } else {
                Err(Rejection::Error(format!(
                    "cannot parse DICOM: {}",
                    one_line(&e)
                )))
            }
        }
    }
}

fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}

/// Writes `bytes` to a temporary name beside `dest`, then moves it into place (medfed-durable).
/// Without `replace`, an existing `dest` is never overwritten (the link fails instead).
/// `durable` syncs the file and its directory before returning.
pub fn write_atomically(
    dest: &Path,
    bytes: &[u8],
    replace: bool,
    durable: bool,
) -> std::io::Result<()> {
    write_atomically_with(dest, replace, durable, |w| w.write_all(bytes))
}

/// [`write_atomically`] with the content produced by `fill`, streamed to the temporary file.
/// DICOM outputs pass `durable = false`: the link already guarantees that no reader sees a
/// partial file, a lost output after a crash is redone from its input, and a sync per object
/// would cost more than the de-identification.
pub fn write_atomically_with(
    dest: &Path,
    replace: bool,
    durable: bool,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let how = medfed_durable::Publish {
        replace,
        durable,
        mode: None,
    };
    medfed_durable::write_atomically_with(dest, how, fill)
}
