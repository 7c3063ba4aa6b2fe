//! De-identification of DICOM at the site: the PS3.15 Annex E Basic Application Level
//! Confidentiality Profile with every option, keyed pseudonyms, and a batch runner that never
//! aborts on one bad file.
//!
//! - [`table`]: Table E.1-1 as data (2024b with all option columns, plus 2026c basic rows).
//! - [`profile`]: the options and the site's profile file.
//! - [`pseudonym`]: the site key and HMAC-SHA-256 pseudonyms, UIDs and date shifts.
//! - [`engine`]: one object in, one de-identified object (or a refusal) out.
//! - [`freetext`]: what the clean options do to free text: own values in any spelling, dates,
//!   phones, e-mail, IDs and names found by pattern.
//! - [`pixels`]: the burned-in annotation gate and clean-pixel-data.
//! - [`reid`]: the encrypted re-identification table that never leaves the site.
//! - [`batch`]: folders in, folders and a JSON report out, in parallel.
//! - `reader`: input parsed with every declared length checked against the bytes that remain.

pub mod batch;
mod dates;
pub mod engine;
mod error;
pub mod freetext;
pub mod pixels;
pub mod profile;
pub mod pseudonym;
mod reader;
pub mod reid;
pub mod table;
pub mod verify;

pub use batch::{BatchReport, BatchRun, FileReport, Outcome};
pub use engine::{Deidentified, Deidentifier, Rejection};
pub use error::DeidError;
pub use profile::{DeidOption, DeidProfile, SafePrivateAttribute};
pub use pseudonym::{Pseudonymizer, SiteKey};
pub use reader::{read_bare_dataset, read_object};
pub use reid::{OriginalIdentity, ReidTable, reid_table_path};
pub use table::{ActionTable, TABLE_EDITION};
pub use verify::{Verification, verify_output};
