//! The `medfed` command line: a thin shell over the library crates (argument parsing, wiring,
//! progress, exit codes).

mod audit_cmd;
mod deid_cmd;
mod demo;
mod demo_federated;
mod hub_cmd;
mod radiomics_cmd;
mod site_cmd;
mod study_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// mimalloc keeps freed memory for reuse: with the system allocator every object's large buffers
/// were fresh pages, and page faults took a sixth of a de-identification run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "medfed",
    version,
    about = "Federated medical imaging: de-identification, features and learning where the data lives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the main job on embedded defaults, end to end: de-identify a synthetic multi-patient
    /// DICOM set and verify it, compute its radiomic features, store it in a local hub, harvest
    /// it through two site nodes, and run a federated study across four hospitals' site nodes.
    Demo(demo::DemoArgs),
    /// De-identify a folder of DICOM files (PS3.15 Annex E), or reverse a pseudonym.
    Deid(DeidCommand),
    /// Check a tamper-evident audit log (hub or site).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// IBSI 1 radiomic features of image regions, as a CSV or Parquet table.
    Radiomics(radiomics_cmd::RadiomicsArgs),
    /// Run or administer the hub (HTTPS API, catalogue, encrypted storage, audit).
    #[command(subcommand)]
    Hub(hub_cmd::HubCommand),
    /// Run or operate a site node at a hospital: enrol with the hub, run the node (DICOM
    /// receiver, link to the hub, harvest, federated runs), decide tasks, show its status.
    #[command(subcommand)]
    Site(site_cmd::SiteCommand),
    /// Federated studies: submit a study spec to the hub and follow its run.
    #[command(subcommand)]
    Study(study_cmd::StudyCommand),
    /// Upload files to a dataset on the hub (chunked, resumable, checked by SHA-256).
    Upload(hub_cmd::UploadArgs),
    /// Write a synthetic DICOM set with planted identifying values (for tests and benchmarks).
    Synth(demo::SynthArgs),
    /// Segmentation networks (train, evaluate, predict, finetune, cascade, info, synth-chest):
    /// runs the `medfed-ml` binary beside this one (build it with `cargo build --release -p
    /// medfed-ml`), so that only that binary links the deep-learning engine.
    #[command(disable_help_flag = true)]
    Ml {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain, the signed checkpoints and the signed head; name the first bad
    /// record (exit code 2) or print OK.
    Verify(audit_cmd::VerifyArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DeidCommand {
    #[command(subcommand)]
    action: Option<DeidSubcommand>,
    #[command(flatten)]
    run: deid_cmd::DeidArgs,
}

#[derive(Subcommand)]
enum DeidSubcommand {
    /// Print the original patient identity behind a pseudonym (site operators only: needs
    /// the site key). Every lookup is logged beside the key.
    Reidentify {
        pseudonym: String,
        /// The site key [default: $MEDFED_SITE_KEY, else ~/.local/share/medfed/site.key]
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

/// Runs `medfed-ml` from this binary's folder, else from PATH, with `args`; its exit code is ours.
fn run_ml(args: &[std::ffi::OsString]) -> anyhow::Result<ExitCode> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("medfed-ml")))
        .filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| PathBuf::from("medfed-ml"));
    let status = std::process::Command::new(&program)
        .args(args)
        .status()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {} ({e}); build it with `cargo build --release -p medfed-ml`",
                program.display()
            )
        })?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(1),
    })
}

/// No transparent huge pages for this process (Linux). mimalloc asks for them on its arenas,
/// and the first touch of each then zeroes 2 MiB: in a de-identification batch of small files
/// that was an eighth of the run's time and half its resident memory (55 MB against 28 MB
/// peak for 1,200 files). Advisory: where the kernel refuses, nothing else changes.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and passes no memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    without_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEDFED_LOG")
                .unwrap_or_else(|_| "warn,dicom_parser=error,dicom_object=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Deid(DeidCommand {
            action:
                Some(DeidSubcommand::Reidentify {
                    pseudonym,
                    key_file,
                }),
            ..
        }) => deid_cmd::reidentify(&pseudonym, key_file),
        Command::Deid(DeidCommand { action: None, run }) => deid_cmd::run(&run),
        Command::Synth(args) => demo::synth(&args),
        Command::Radiomics(args) => radiomics_cmd::run(&args),
        Command::Audit(AuditCommand::Verify(args)) => audit_cmd::verify(&args),
        Command::Hub(cmd) => hub_cmd::run(cmd),
        Command::Upload(args) => hub_cmd::upload(&args),
        Command::Site(cmd) => site_cmd::run(cmd),
        Command::Study(cmd) => study_cmd::run(cmd),
        Command::Ml { args } => run_ml(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
