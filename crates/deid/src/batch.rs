//! De-identifying a folder: every file is read, de-identified and written, or refused with a
//! one-line reason; every entry that is not a file (a symbolic link, a folder that cannot be
//! read, a device) gets a line too. One bad entry never stops the batch.
//!
//! Symbolic links are not followed: one that points inside the input folder names a file that
//! is de-identified where it lies, and one that points outside would carry the batch beyond the
//! folder it was given. Each is reported as skipped, with that reason.
//!
//! Durability: outputs are written under a temporary name and linked into place, so no
//! partial file is ever visible under its name; the whole output file system is synced once
//! at the end (syncfs), before the report that names the outputs, instead of once per file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dicom_core::header::Header;
use dicom_dictionary_std::tags;
use dicom_encoding::text::SpecificCharacterSet;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use rayon::prelude::*;
use serde::Serialize;

use crate::engine::{Deidentifier, Rejection};
use crate::error::DeidError;
use crate::profile::DeidProfile;
use crate::pseudonym::Pseudonymizer;
use crate::reader::read_file;
use crate::reid::{OriginalIdentity, ReidTable, reid_table_path};
use crate::table::TABLE_EDITION;

/// What happened to one input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Refused,
    Error,
    /// Not a file to read: a symbolic link (not followed) or a device, FIFO or socket.
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Path relative to the input folder (of a folder, for one that could not be read).
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
    pub files_skipped: usize,
    pub files: Vec<FileReport>,
}

impl BatchReport {
    /// True when every input was de-identified (nothing refused, failed or skipped).
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
        let entries = list_inputs(input, output)?;
        std::fs::create_dir_all(output).map_err(|e| DeidError::io(output, e))?;
        // Every output folder once, up front, rather than a lookup per file.
        let folders: std::collections::BTreeSet<&Path> = entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File))
            .filter_map(|e| e.rel.parent())
            .collect();
        for folder in folders {
            let dir = output.join(folder);
            std::fs::create_dir_all(&dir).map_err(|e| DeidError::io(&dir, e))?;
        }
        let deidentifier = Deidentifier::new(self.profile, self.pseudonymizer);
        let identities: Mutex<BTreeMap<String, OriginalIdentity>> = Mutex::new(BTreeMap::new());

        let total = entries.len();
        let work = || {
            entries
                .par_iter()
                .map(|entry| {
                    let report = match &entry.kind {
                        EntryKind::File => {
                            process_file(&deidentifier, input, output, &entry.rel, &identities)
                        }
                        EntryKind::NotProcessed(outcome, reason) => {
                            not_processed(&entry.rel, *outcome, reason)
                        }
                    };
                    progress(&report, total);
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

        // The outputs were not synced one by one; they are before anything names them.
        sync_outputs(output, &reports).map_err(|e| DeidError::io(output, e))?;

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
            files_skipped: count(Outcome::Skipped),
            files: reports,
        })
    }
}

/// One entry of the input folder.
struct Entry {
    /// Relative to the input folder.
    rel: PathBuf,
    kind: EntryKind,
}

enum EntryKind {
    File,
    /// Reported as it is, with this reason, without being opened.
    NotProcessed(Outcome, String),
}

fn not_processed(rel: &Path, outcome: Outcome, reason: &str) -> FileReport {
    // No path in the log, as for files (see process_file).
    tracing::warn!(outcome = ?outcome, reason, "an entry of the input folder was not processed; deid-report.json names it");
    FileReport {
        input: rel.to_string_lossy().into_owned(),
        outcome,
        reason: Some(reason.to_string()),
        output: None,
        bytes_in: 0,
    }
}

/// Every entry under `input`, relative, sorted: regular files to process, and the symbolic
/// links, special files and unreadable folders to report. The output folder must not lie
/// inside the input (it would be read back as input on the next run).
fn list_inputs(input: &Path, output: &Path) -> Result<Vec<Entry>, DeidError> {
    let input_abs = input.canonicalize().map_err(|e| DeidError::io(input, e))?;
    let output_abs = absolute_lexical(output);
    if output_abs.starts_with(&input_abs) {
        return Err(DeidError::OutputInsideInput {
            input: input.to_path_buf(),
            out: output.to_path_buf(),
        });
    }
    let relative = |p: &Path| {
        p.strip_prefix(&input_abs)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let mut entries = Vec::new();
    for entry in walkdir::WalkDir::new(&input_abs)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                // A folder that cannot be listed: its files are not processed, and the
                // report says so; the walk goes on with its siblings.
                let rel = e.path().map(relative).unwrap_or_default();
                let why = e
                    .io_error()
                    .map(|io| io.to_string())
                    .unwrap_or_else(|| "cannot be walked".to_string());
                entries.push(Entry {
                    rel: if rel.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        rel
                    },
                    kind: EntryKind::NotProcessed(
                        Outcome::Error,
                        format!("cannot read this folder ({why}); nothing in it was processed"),
                    ),
                });
                continue;
            }
        };
        let ft = entry.file_type();
        let kind = if ft.is_file() {
            EntryKind::File
        } else if ft.is_dir() {
            continue;
        } else if ft.is_symlink() {
            EntryKind::NotProcessed(
                Outcome::Skipped,
                "symbolic link, not followed (a target inside the input folder is de-identified where it lies; one outside is not the batch's to read)".into(),
            )
        } else {
            // Opening a FIFO would block the batch; a device is no DICOM file.
            EntryKind::NotProcessed(
                Outcome::Skipped,
                "not a regular file (device, FIFO or socket)".into(),
            )
        };
        entries.push(Entry {
            rel: relative(entry.path()),
            kind,
        });
    }
    Ok(entries)
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

/// Inputs from this size on have their output's write-back started as soon as it is written.
const EARLY_WRITEBACK_BYTES: u64 = 1 << 20;

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
        let cannot_read = |e: std::io::Error| Rejection::Error(format!("cannot read: {e}"));
        let file = File::open(&src).map_err(cannot_read)?;
        let size = file.metadata().map_err(cannot_read)?.len();
        report.bytes_in = size;
        let leave_pixels = !deidentifier.reads_pixel_data();
        let (parsed, file) = read_file(file, size, leave_pixels)?;
        let done = deidentifier.deidentify(parsed.object)?;
        let pixel_data = parsed.pixel_data.map(|range| (&file, range));
        // (An existing output is caught when the finished file is linked into place.)
        write_atomically_with(&dest, false, false, |w| {
            encode_output(w, done.object, pixel_data)?;
            // The batch syncs once at its end; starting a large file's write-back now overlaps
            // the disk with the next files' de-identification. Small files are left to that
            // sync, which submits them together (one submission per 30 KB image cost more than
            // its de-identification).
            w.flush()?;
            if size >= EARLY_WRITEBACK_BYTES {
                medfed_durable::start_writeback(w.get_ref());
            }
            Ok(())
        })
        .map_err(|e| {
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

/// Writes the de-identified object. With `pixel_data`, the input's Pixel Data element is
/// copied between the elements before it and those after it, byte for byte and unread (the
/// kernel copies file to file where it can): the output keeps the input's transfer syntax, so
/// those bytes are what encoding the element would have produced.
fn encode_output(
    w: &mut BufWriter<File>,
    object: DefaultDicomObject,
    pixel_data: Option<(&File, Range<u64>)>,
) -> std::io::Result<()> {
    let encode_err = |e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("cannot encode the de-identified object: {e}"))
    };
    // Spliced only where the de-identified object still holds the placeholder: Pixel Data
    // that the de-identifier removed or replaced is written as it left it.
    let splice = pixel_data.filter(|_| {
        object
            .get(tags::PIXEL_DATA)
            .is_some_and(crate::reader::is_placeholder)
    });
    let Some((input, range)) = splice else {
        return object.write_all(w).map_err(|e| encode_err(&e));
    };
    let ts_uid = object.meta().transfer_syntax().to_string();
    let ts = TransferSyntaxRegistry
        .get(&ts_uid)
        .ok_or_else(|| std::io::Error::other(format!("unknown transfer syntax {ts_uid}")))?;
    w.write_all(&[0u8; 128])?;
    w.write_all(b"DICM")?;
    object.meta().write(&mut *w).map_err(|e| encode_err(&e))?;
    let mut dataset = object.into_inner();
    dataset.remove_element(tags::PIXEL_DATA);
    let charset = dataset
        .get(tags::SPECIFIC_CHARACTER_SET)
        .and_then(|e| e.to_str().ok())
        .and_then(|v| SpecificCharacterSet::from_code(v.split('\\').next().unwrap_or("").trim()))
        .unwrap_or_default();
    let has_after = dataset.iter().any(|e| e.tag() > tags::PIXEL_DATA);
    let (before, after) = if has_after {
        let (b, a): (Vec<_>, Vec<_>) = dataset
            .into_iter()
            .partition(|e| e.tag() < tags::PIXEL_DATA);
        (
            InMemDicomObject::from_element_iter(b),
            Some(InMemDicomObject::from_element_iter(a)),
        )
    } else {
        (dataset, None)
    };
    before
        .write_dataset_with_ts_cs(&mut *w, ts, charset.clone())
        .map_err(|e| encode_err(&e))?;
    let mut src = input;
    src.seek(SeekFrom::Start(range.start))?;
    let len = range.end - range.start;
    let copied = std::io::copy(&mut src.take(len), w)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the input file shrank while it was being read",
        ));
    }
    if let Some(after) = after {
        after
            .write_dataset_with_ts_cs(&mut *w, ts, charset)
            .map_err(|e| encode_err(&e))?;
    }
    Ok(())
}

/// Syncs what the batch wrote: the output file system once (Linux), else each output file,
/// then each output folder, so that every file the report calls written survives a crash.
fn sync_outputs(output: &Path, reports: &[FileReport]) -> std::io::Result<()> {
    let written = reports.iter().filter_map(|r| r.output.as_deref());
    #[cfg(target_os = "linux")]
    {
        let _ = written;
        rustix::fs::syncfs(File::open(output)?)?;
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut folders = std::collections::BTreeSet::new();
        for rel in written {
            let path = output.join(rel);
            File::open(&path)?.sync_all()?;
            if let Some(parent) = path.parent() {
                folders.insert(parent.to_path_buf());
            }
        }
        for dir in folders {
            medfed_durable::sync_dir(&dir)?;
        }
    }
    Ok(())
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
/// partial file, and a sync per object would cost more than the de-identification; the batch
/// syncs them all at once before its report (see the module's note).
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
