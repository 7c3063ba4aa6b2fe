//! `medfed radiomics`: IBSI features for one case or a manifest of cases, as CSV or Parquet.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use medfed_radiomics::region::{Frame, Region, read_margin};
use medfed_radiomics::{FeatureRow, FeatureTable, RadiomicsSettings, features_of};
use medfed_volume::{RegionSelector, load_case};
use rayon::prelude::*;

#[derive(Args)]
pub struct RadiomicsArgs {
    /// Image: a NIfTI file (.nii, .nii.gz) or a folder holding one DICOM series
    #[arg(long, conflicts_with = "manifest", requires = "mask")]
    image: Option<PathBuf>,
    /// Mask: a NIfTI label map, a DICOM RTSTRUCT or a DICOM SEG file
    #[arg(long, requires = "image")]
    mask: Option<PathBuf>,
    /// Only this label of a label map (or this segment number of a SEG) [default: every label]
    #[arg(long, conflicts_with = "roi")]
    label: Option<u16>,
    /// Only this ROI name (RTSTRUCT) or segment label (SEG) [default: every one]
    #[arg(long)]
    roi: Option<String>,
    /// CSV with columns id,image,mask (optional: label or roi); relative paths are relative to it
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Settings (TOML); omitted keys keep their documented defaults (docs/radiomics.md)
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output table: .csv or .parquet; the settings sidecar is written beside it
    #[arg(long, required_unless_present = "print_defaults")]
    out: Option<PathBuf>,
    /// Cases processed at once [default: number of cores]
    #[arg(long)]
    jobs: Option<usize>,
    /// Print the default settings as TOML and exit
    #[arg(long)]
    print_defaults: bool,
}

/// One line of work: an image, a mask, which regions.
pub struct CaseSpec {
    pub id: String,
    pub image: PathBuf,
    pub mask: PathBuf,
    pub selector: RegionSelector,
}

pub fn run(args: &RadiomicsArgs) -> anyhow::Result<ExitCode> {
    if args.print_defaults {
        print!("{}", RadiomicsSettings::default().to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    let settings = match &args.config {
        Some(p) => RadiomicsSettings::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("in {}", p.display()))?,
        None => RadiomicsSettings::default(),
    };
    let cases = if let Some(m) = &args.manifest {
        read_manifest(m)?
    } else {
        let (Some(image), Some(mask)) = (&args.image, &args.mask) else {
            bail!("give --image and --mask, or --manifest");
        };
        let selector = match (&args.label, &args.roi) {
            (Some(l), _) => RegionSelector::Label(*l),
            (_, Some(n)) => RegionSelector::Name(n.clone()),
            _ => RegionSelector::All,
        };
        vec![CaseSpec {
            id: image
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            image: image.clone(),
            mask: mask.clone(),
            selector,
        }]
    };
    let Some(out) = &args.out else {
        bail!("--out is required");
    };
    let ext_ok = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv") || e.eq_ignore_ascii_case("parquet"));
    if !ext_ok {
        bail!("--out must end in .csv or .parquet: {}", out.display());
    }
    let progress = ProgressBar::new(cases.len() as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} radiomics [{bar:30}] {pos}/{len} cases {elapsed} (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.jobs.unwrap_or(0))
        .build()
        .context("starting worker threads")?;
    let rows: Vec<FeatureRow> = pool.install(|| {
        cases
            .par_iter()
            .flat_map_iter(|case| {
                let rows = extract_case(case, &settings);
                progress.inc(1);
                rows
            })
            .collect()
    });
    progress.finish_and_clear();
    let mut failed = 0;
    for r in rows.iter().filter(|r| r.error.is_some()) {
        failed += 1;
        eprintln!(
            "failed: {} region {}: {}",
            r.case_id,
            r.region,
            r.error.as_deref().unwrap_or("")
        );
    }
    let table = FeatureTable { settings, rows };
    table.write(out)?;
    println!(
        "{} regions, {} features each, {} failed -> {} (settings: {})",
        table.rows.len(),
        table.tags().len(),
        failed,
        out.display(),
        FeatureTable::sidecar_path(out).display()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Every region of one case; a failure becomes a row with an error, never an abort.
pub fn extract_case(case: &CaseSpec, settings: &RadiomicsSettings) -> Vec<FeatureRow> {
    let row = |region: String, features, error| FeatureRow {
        case_id: case.id.clone(),
        image: case.image.display().to_string(),
        mask: case.mask.display().to_string(),
        region,
        features,
        error,
    };
    let started = std::time::Instant::now();
    let loaded = match load_case(&case.image, &case.mask, &case.selector, |sp| {
        read_margin(sp, settings)
    }) {
        Ok(c) => c,
        Err(e) => {
            let name = match &case.selector {
                RegionSelector::All => "*".to_string(),
                RegionSelector::Label(l) => l.to_string(),
                RegionSelector::Name(n) => n.clone(),
            };
            return vec![row(name, Default::default(), Some(e.to_string()))];
        }
    };
    // No case id in logs: manifests often name cases by MRN; the output table keys its rows.
    tracing::info!(
        load_s = started.elapsed().as_secs_f64(),
        box_voxels = loaded.image.data.len(),
        "case loaded"
    );
    let frame = Frame {
        geometry: loaded.frame,
        offset: loaded.offset,
    };
    // Regions of one case (all labels of an atlas, say) run in parallel too.
    loaded
        .regions
        .par_iter()
        .map(|r| {
            let (t, cpu) = (std::time::Instant::now(), thread_cpu_seconds());
            let result = Region::extract_in(&loaded.image, &r.mask, r.label, settings, frame)
                .and_then(|region| features_of(&region, settings));
            tracing::info!(
                region = %r.name,
                features_s = t.elapsed().as_secs_f64(),
                features_cpu_s = thread_cpu_seconds() - cpu,
                "region done"
            );
            match result {
                Ok(f) => row(r.name.clone(), f, None),
                Err(e) => row(r.name.clone(), Default::default(), Some(e.to_string())),
            }
        })
        .collect()
}

/// CPU time of the calling thread (Linux: /proc/thread-self/schedstat), for the per-region log;
/// 0 where unavailable. With one worker thread this is the region's CPU time, unaffected by
/// time the machine gives to others.
fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

fn read_manifest(path: &Path) -> anyhow::Result<Vec<CaseSpec>> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rd =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = rd.headers()?.clone();
    let col = |n: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(n))
    };
    let (Some(id), Some(image), Some(mask)) = (col("id"), col("image"), col("mask")) else {
        bail!(
            "{}: the manifest needs columns id,image,mask (found {:?})",
            path.display(),
            headers
        );
    };
    let (label, roi) = (col("label"), col("roi"));
    let mut cases = Vec::new();
    for (n, rec) in rd.records().enumerate() {
        let rec = rec.with_context(|| format!("{} line {}", path.display(), n + 2))?;
        let get = |c: usize| rec.get(c).unwrap_or("").trim().to_string();
        let resolve = |p: String| {
            let p = PathBuf::from(p);
            if p.is_absolute() { p } else { base.join(p) }
        };
        let selector = match (
            label.map(get).filter(|s| !s.is_empty()),
            roi.map(get).filter(|s| !s.is_empty()),
        ) {
            (Some(l), _) => RegionSelector::Label(l.parse().with_context(|| {
                format!(
                    "{} line {}: label '{l}' is not 1..65535",
                    path.display(),
                    n + 2
                )
            })?),
            (None, Some(r)) => RegionSelector::Name(r),
            _ => RegionSelector::All,
        };
        cases.push(CaseSpec {
            id: get(id),
            image: resolve(get(image)),
            mask: resolve(get(mask)),
            selector,
        });
    }
    if cases.is_empty() {
        bail!("{}: no cases", path.display());
    }
    Ok(cases)
}
