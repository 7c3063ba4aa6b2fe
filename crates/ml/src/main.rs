//! `medfed-ml`: the deep-learning commands (`medfed ml ...` runs this binary), kept out of the
//! main `medfed` binary so that only this one links burn. A thin layer over
//! [`medfed_ml::workflow`]: arguments, progress bars and report files.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use medfed_ml::dataset::Split;
use medfed_ml::device::{DeviceChoice, device};
use medfed_ml::workflow::{self, FinetuneSpec, MODEL_FILE, TrainEvent, TrainSpec, mean_with_ci};

#[derive(Parser)]
#[command(
    name = "medfed-ml",
    version,
    about = "Segmentation networks on medical images: train, evaluate, predict, fine-tune, cascade"
)]
struct Cli {
    /// Where tensors run: cpu (default), cuda or cuda:N (needs a build with --features cuda).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a U-Net from SPEC.toml; resumes from OUT/checkpoint after an interruption.
    Train {
        spec: PathBuf,
        /// Output folder (model.safetensors, checkpoint/, history.csv).
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Dice, IoU, HD95 and surface Dice per case and class, with means and 95 % intervals.
    Evaluate {
        model: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
        /// Splits to evaluate (comma-separated).
        #[arg(long, default_value = "test", value_delimiter = ',')]
        split: Vec<String>,
        /// Per-case CSV report (default: only the summary on stdout).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Label maps (NIfTI, on each image's own grid) for the manifest's cases.
    Predict {
        model: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long, default_value = "test", value_delimiter = ',')]
        split: Vec<String>,
        /// Folder for <case id>.nii.gz.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Retrain the unfrozen layers of MODEL on the manifest's train cases; reports the mean
    /// Dice per split before and after.
    Finetune {
        model: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
        /// Encoder levels to freeze (depth + 1 freezes the bottom block too).
        #[arg(long, default_value_t = 2)]
        freeze: usize,
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 3e-4)]
        learning_rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Organ model, then lesion model inside the organ mask: both masks and the lesion
    /// fraction per case.
    Cascade {
        organ: PathBuf,
        lesion: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long, default_value = "test", value_delimiter = ',')]
        split: Vec<String>,
        /// Folder for <id>.organ.nii.gz, <id>.lesion.nii.gz and cascade.csv.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Print a model file's card (network, preprocessing, data summary, version, metrics).
    Info { model: PathBuf },
    /// Write synthetic chest-CT phantoms (medfed-synth) as NIfTI cases with a manifest: label 1
    /// lung, 2 lesion (inside the lung). For training the cascade where no real labelled chest
    /// CT can be had; the data are synthetic and say so in their names.
    SynthChest {
        out: PathBuf,
        #[arg(long, default_value_t = 16)]
        train: usize,
        #[arg(long, default_value_t = 4)]
        validation: usize,
        #[arg(long, default_value_t = 10)]
        test: usize,
        /// Image noise, HU (standard deviation).
        #[arg(long, default_value_t = 20.0)]
        noise_hu: f64,
        /// In-plane blur passes (softer reconstruction kernel).
        #[arg(long, default_value_t = 0)]
        blur: usize,
        /// First case's seed; case i uses seed + i.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEDFED_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn splits(names: &[String]) -> anyhow::Result<Vec<Split>> {
    names
        .iter()
        .map(|s| s.parse::<Split>().map_err(anyhow::Error::from))
        .collect()
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} {{elapsed_precise}} (eta {{eta}}) {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
}

/// A line above the bar, or on stderr when there is no bar (not a terminal): logs keep it.
fn say(b: &ProgressBar, line: String) {
    if b.is_hidden() {
        eprintln!("{line}");
    } else {
        b.println(line);
    }
}

/// A progress bar over all training steps, its message the last epoch's loss and Dice.
fn training_bar(epochs: usize, steps: usize) -> impl FnMut(TrainEvent) {
    let b = bar((epochs * steps) as u64, "training");
    move |e| match e {
        TrainEvent::Prepared(s) => say(
            &b,
            format!(
                "cases: {}",
                s.cases
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        TrainEvent::Resumed { next_epoch } => {
            b.set_position((next_epoch * steps) as u64);
            say(&b, format!("resuming after epoch {next_epoch}"));
        }
        TrainEvent::Step => b.inc(1),
        TrainEvent::Epoch(m) => {
            let val = m
                .validation_dice
                .map_or(String::new(), |d| format!(", validation Dice {d:.4}"));
            b.set_message(format!("epoch {} loss {:.4}{val}", m.epoch + 1, m.loss));
            say(
                &b,
                format!("epoch {:>3}: loss {:.4}{val}", m.epoch + 1, m.loss),
            );
            if (m.epoch + 1) * steps >= b.length().unwrap_or(0) as usize {
                b.finish_and_clear();
            }
        }
    }
}

/// A case id as a file name: only letters, digits, '-', '_' and '.' kept, never `..`.
fn file_stem(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("case_{s}")
    } else {
        s
    }
}

/// Rows as a CSV file with a header, written under a temporary name and renamed.
fn write_csv<T: serde::Serialize>(path: &std::path::Path, rows: &[T]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    medfed_durable::write_atomically(path, &bytes, medfed_durable::Publish::REPLACE)
        .with_context(|| format!("writing {}", path.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let choice: DeviceChoice = cli.device.parse()?;
    let dev = device(choice)?;
    match cli.cmd {
        Cmd::Train { spec, out } => {
            let s = TrainSpec::load(&spec)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let card = workflow::train(
                &s,
                &out,
                &dev,
                training_bar(s.train.epochs, s.train.steps_per_epoch),
            )?;
            write_csv(&out.join("history.csv"), &card.history)?;
            let last = card.history.last();
            println!(
                "model: {} (epochs {}, final loss {:.4}{})",
                out.join(MODEL_FILE).display(),
                card.history.len(),
                last.map_or(f64::NAN, |m| m.loss),
                last.and_then(|m| m.validation_dice)
                    .map_or(String::new(), |d| format!(", validation Dice {d:.4}"))
            );
        }
        Cmd::Evaluate {
            model,
            manifest,
            split,
            report,
        } => {
            let splits = splits(&split)?;
            let n = medfed_ml::dataset::read_manifest(&manifest)?
                .iter()
                .filter(|c| splits.contains(&c.split))
                .count();
            if n == 0 {
                bail!("{}: no case in split(s) {split:?}", manifest.display());
            }
            let b = bar(n as u64, "evaluating");
            let rows = workflow::evaluate(&model, &manifest, &splits, &dev, || b.inc(1))?;
            b.finish_and_clear();
            if let Some(path) = report {
                write_csv(&path, &rows)?;
            }
            let classes: std::collections::BTreeSet<u8> = rows.iter().map(|r| r.class).collect();
            let mut out = std::io::stdout().lock();
            writeln!(out, "cases: {n}; mean [95 % bootstrap interval]")?;
            for k in classes {
                let of: Vec<_> = rows.iter().filter(|r| r.class == k).collect();
                let col = |f: &dyn Fn(&workflow::CaseMetrics) -> Option<f64>| {
                    let v: Vec<f64> = of.iter().filter_map(|r| f(r)).collect();
                    let (m, lo, hi) = mean_with_ci(&v);
                    format!("{m:.4} [{lo:.4}, {hi:.4}]")
                };
                writeln!(
                    out,
                    "class {k}: Dice {}  IoU {}  HD95 mm {}  surface Dice {}",
                    col(&|r| Some(r.dice)),
                    col(&|r| Some(r.iou)),
                    col(&|r| r.hd95_mm),
                    col(&|r| Some(r.surface_dice)),
                )?;
            }
        }
        Cmd::Predict {
            model,
            manifest,
            split,
            out,
        } => {
            std::fs::create_dir_all(&out)?;
            let mut written = 0;
            workflow::predict_cases(&model, &manifest, &splits(&split)?, &dev, |c, v| {
                let path = out.join(format!("{}.nii.gz", file_stem(&c.id)));
                medfed_volume::nifti::write(&path, &v)?;
                written += 1;
                Ok(())
            })?;
            println!("{written} label maps in {}", out.display());
        }
        Cmd::Finetune {
            model,
            manifest,
            freeze,
            epochs,
            steps,
            learning_rate,
            seed,
            out,
        } => {
            std::fs::create_dir_all(&out)?;
            let how = FinetuneSpec {
                frozen_levels: freeze,
                epochs,
                steps_per_epoch: steps,
                learning_rate,
                seed,
            };
            let r = workflow::finetune(
                &model,
                &manifest,
                &how,
                &out,
                &dev,
                training_bar(epochs, steps),
            )?;
            println!("mean foreground Dice per split, before -> after fine-tuning:");
            for (split, before) in &r.before {
                println!(
                    "  {split:<10} {before:.4} -> {:.4}",
                    r.after.get(split).copied().unwrap_or(f64::NAN)
                );
            }
            println!("model: {}", out.join(MODEL_FILE).display());
        }
        Cmd::Cascade {
            organ,
            lesion,
            manifest,
            split,
            out,
        } => {
            std::fs::create_dir_all(&out)?;
            let rows = workflow::cascade(
                &organ,
                &lesion,
                &manifest,
                &splits(&split)?,
                &dev,
                |r, case, organ_mask, lesion_mask| {
                    let stem = file_stem(&r.id);
                    for (what, m) in [("organ", organ_mask), ("lesion", lesion_mask)] {
                        let v = medfed_volume::Volume {
                            geometry: case.source_grid,
                            data: m.iter().map(|&x| u16::from(x)).collect(),
                        };
                        medfed_volume::nifti::write(
                            &out.join(format!("{stem}.{what}.nii.gz")),
                            &v,
                        )?;
                    }
                    Ok(())
                },
            )?;
            write_csv(&out.join("cascade.csv"), &rows)?;
            for r in &rows {
                println!(
                    "{}: lesion fraction {:.2} %{}",
                    r.id,
                    100.0 * r.lesion_fraction,
                    match (r.organ_dice, r.lesion_dice, r.true_lesion_fraction) {
                        (Some(o), Some(l), Some(t)) => format!(
                            " (true {:.2} %), organ Dice {o:.4}, lesion Dice {l:.4}",
                            100.0 * t
                        ),
                        _ => String::new(),
                    }
                );
            }
            println!("table: {}", out.join("cascade.csv").display());
        }
        Cmd::SynthChest {
            out,
            train,
            validation,
            test,
            noise_hu,
            blur,
            seed,
        } => synth_chest(&out, [train, validation, test], noise_hu, blur, seed)?,
        Cmd::Info { model } => {
            let card = medfed_ml::model_file::read_card(&model)?;
            println!("{}", serde_json::to_string_pretty(&card)?);
        }
    }
    Ok(())
}

fn synth_chest(
    out: &std::path::Path,
    counts: [usize; 3],
    noise_hu: f64,
    blur: usize,
    seed: u64,
) -> anyhow::Result<()> {
    use medfed_synth::chest::{ChestSpec, chest_ct};
    use medfed_volume::{Geometry, Volume};
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let spec = ChestSpec {
        noise_hu,
        blur,
        ..ChestSpec::default()
    };
    let total: usize = counts.iter().sum();
    let b = bar(total as u64, "phantoms");
    let mut manifest = String::from("id,image,label,split\n");
    let splits = [Split::Train, Split::Validation, Split::Test];
    let mut i = 0u64;
    for (split, &n) in splits.iter().zip(&counts) {
        for _ in 0..n {
            let c = chest_ct(&spec, seed + i);
            let [nz, ny, nx] = c.dims;
            let g = Geometry::new([nx, ny, nz], [c.spacing[2], c.spacing[1], c.spacing[0]]);
            let id = format!("synthetic_chest_{:03}", seed + i);
            let image = Volume {
                geometry: g,
                data: c.hu.clone(),
            };
            let labels = Volume {
                geometry: g,
                data: c
                    .lung
                    .iter()
                    .zip(&c.lesion)
                    .map(|(&l, &s)| if s != 0 { 2 } else { u16::from(l != 0) })
                    .collect(),
            };
            medfed_volume::nifti::write(&out.join(format!("{id}.nii.gz")), &image)?;
            medfed_volume::nifti::write(&out.join(format!("{id}.labels.nii.gz")), &labels)?;
            manifest.push_str(&format!("{id},{id}.nii.gz,{id}.labels.nii.gz,{split}\n"));
            i += 1;
            b.inc(1);
        }
    }
    b.finish_and_clear();
    let path = out.join("cases.csv");
    medfed_durable::write_atomically(&path, manifest.as_bytes(), medfed_durable::Publish::REPLACE)?;
    println!(
        "{total} synthetic chest-CT cases; manifest {}",
        path.display()
    );
    Ok(())
}
