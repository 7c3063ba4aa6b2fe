//! `medfed deid`: folder in, de-identified folder and JSON report out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use medfed_deid::{
    BatchReport, BatchRun, DeidOption, DeidProfile, Pseudonymizer, ReidTable, SiteKey,
    reid_table_path,
};

#[derive(Args, Clone)]
pub struct DeidArgs {
    /// Folder of DICOM files to de-identify (read recursively; never modified)
    pub in_dir: Option<PathBuf>,
    /// Where the de-identified files go, at the same relative paths (nothing is overwritten)
    pub out_dir: Option<PathBuf>,
    /// Enable an option of the Basic Profile (repeatable): retain-safe-private, retain-uids,
    /// retain-device-identity, retain-institution-identity, retain-patient-characteristics,
    /// retain-long-full-dates, retain-long-modified-dates, clean-descriptors,
    /// clean-structured-content, clean-graphics, clean-pixel-data
    #[arg(long = "option", value_name = "NAME")]
    pub options: Vec<String>,
    /// Profile file (TOML): options, safe private attributes, pixel signatures
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// The site key [default: $MEDFED_SITE_KEY, else ~/.local/share/medfed/site.key];
    /// generated on first use, never leaves the site
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Where to write the JSON report [default: OUT_DIR/deid-report.json]
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Worker threads [default: one per core]
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
}

/// The site key's path: flag, environment, or the user's data folder.
pub fn default_key_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("MEDFED_SITE_KEY") {
        return Ok(PathBuf::from(p));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("cannot find a place for the site key: set --key-file or MEDFED_SITE_KEY")?;
    Ok(data.join("medfed/site.key"))
}

pub fn build_profile(args: &DeidArgs) -> anyhow::Result<DeidProfile> {
    let mut profile = match &args.profile {
        Some(p) => DeidProfile::from_toml_file(p)?,
        None => DeidProfile::default(),
    };
    for name in &args.options {
        profile.add_option(DeidOption::from_name(name)?)?;
    }
    if profile.has(DeidOption::CleanPixelData) && profile.pixel_signatures.is_empty() {
        eprintln!(
            "note: clean-pixel-data without a pixel signature table: objects with burned-in text will still be refused"
        );
    }
    Ok(profile)
}

/// De-identifies a folder with a progress bar; returns the report.
pub fn run_batch(
    input: &Path,
    output: &Path,
    profile: &DeidProfile,
    key_path: &Path,
    jobs: usize,
) -> anyhow::Result<BatchReport> {
    let key = SiteKey::load_or_create(key_path)?;
    let pseudonymizer = Pseudonymizer::new(key);
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} de-identifying [{bar:30}] {pos}/{len} files {per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let run = BatchRun {
        profile,
        pseudonymizer: &pseudonymizer,
        jobs,
    };
    let report = run
        .run(input, output, &|_, total| {
            bar.set_length(total as u64);
            bar.inc(1)
        })
        .with_context(|| format!("de-identifying {}", input.display()))?;
    bar.finish_and_clear();
    Ok(report)
}

pub fn run(args: &DeidArgs) -> anyhow::Result<ExitCode> {
    let (Some(input), Some(output)) = (&args.in_dir, &args.out_dir) else {
        bail!("usage: medfed deid IN_DIR OUT_DIR [--option NAME]... (see --help)");
    };
    if !input.is_dir() {
        bail!("input {} is not a folder", input.display());
    }
    let profile = build_profile(args)?;
    let key_path = default_key_path(args.key_file.clone())?;
    let started = Instant::now();
    let report = run_batch(input, output, &profile, &key_path, args.jobs)?;
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| output.join("deid-report.json"));
    report.write_json(&report_path)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} entries: {} de-identified, {} refused, {} errors, {} skipped (links, special files) in {:.2} s ({:.0} files/s); report: {}",
        report.files_total,
        report.files_ok,
        report.files_refused,
        report.files_error,
        report.files_skipped,
        secs,
        report.files_total as f64 / secs.max(1e-9),
        report_path.display()
    );
    for f in report.files.iter().filter(|f| f.reason.is_some()).take(10) {
        eprintln!(
            "  {:?} {}: {}",
            f.outcome,
            f.input,
            f.reason.as_deref().unwrap_or("")
        );
    }
    Ok(if report.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

pub fn reidentify(pseudonym: &str, key_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let key_path = default_key_path(key_file)?;
    let key = SiteKey::load(&key_path)
        .with_context(|| format!("reading the site key {}", key_path.display()))?;
    let table = ReidTable::new(reid_table_path(&key_path), &key);
    let result = table.lookup(pseudonym);
    // Every lookup, found or not, is recorded beside the key: who, when, which pseudonym.
    let log_path = key_path.with_extension("reid-access.log");
    let line = format!(
        "{}\t{}\t{}\t{}\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        pseudonym,
        if result.is_ok() { "found" } else { "not-found" }
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(|| format!("cannot record the lookup in {}", log_path.display()))?;
    let who = result?;
    println!(
        "PatientID\t{}\nPatientName\t{}",
        who.patient_id, who.patient_name
    );
    Ok(ExitCode::SUCCESS)
}
