//! `medfed site ...`: the site node so far: the DICOM receiver, folder import, harvest to the
//! hub, status. (Enrolment and the outbound link to the hub are not built yet.)

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Subcommand;
use medfed_site::{Inbox, Receiver, SitePolicy, Stored};

#[derive(Subcommand)]
pub enum SiteCommand {
    /// Receive DICOM (C-STORE, C-ECHO) from the calling AE titles site.toml allows, into the
    /// site's inbox, until interrupted.
    Receive {
        /// site.toml
        #[arg(long)]
        config: PathBuf,
    },
    /// Import DICOM files from a folder into the site's inbox (byte for byte, once per instance).
    Import {
        #[arg(long)]
        config: PathBuf,
        folder: PathBuf,
    },
    /// De-identify the inbox with the study's required options and send it to the hub's dataset.
    Harvest {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        study: String,
        /// The hub dataset (registered by this site's operator)
        #[arg(long)]
        dataset: String,
        /// The hub, e.g. https://hub.example.org
        #[arg(long)]
        hub: String,
        /// CA certificate to trust for the hub (PEM)
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The site operator's API token [default: $MEDFED_TOKEN]
        #[arg(long, env = "MEDFED_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// What is waiting in the inbox and what has been harvested.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn run(cmd: SiteCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SiteCommand::Receive { config } => {
            let policy = SitePolicy::load(&config)?;
            if policy.dicom.allowed_calling_ae_titles.is_empty() {
                anyhow::bail!(
                    "{}: [dicom] allowed_calling_ae_titles is empty, so nobody could send; list the PACS and modalities",
                    config.display()
                );
            }
            let inbox = Arc::new(Inbox::open(
                &policy.inbox_dir(),
                policy.storage.inbox_quota_bytes,
            )?);
            let receiver = Receiver::bind(
                policy.dicom.bind,
                &policy.dicom.ae_title,
                &policy.dicom.allowed_calling_ae_titles,
            )
            .with_context(|| format!("binding the DICOM receiver to {}", policy.dicom.bind))?;
            println!(
                "{} receiving DICOM on {} into {} (callers: {})",
                policy.dicom.ae_title,
                receiver.local_addr()?,
                inbox.dir().display(),
                policy.dicom.allowed_calling_ae_titles.join(", ")
            );
            receiver.run(inbox, Arc::new(AtomicBool::new(false)))?;
            Ok(ExitCode::SUCCESS)
        }
        SiteCommand::Import { config, folder } => {
            let policy = SitePolicy::load(&config)?;
            let inbox = Inbox::open(&policy.inbox_dir(), policy.storage.inbox_quota_bytes)?;
            let (mut new, mut dup, mut bad) = (0, 0, 0);
            for e in walkdir::WalkDir::new(&folder)
                .into_iter()
                .filter_map(Result::ok)
            {
                if !e.file_type().is_file() {
                    continue;
                }
                match inbox.import(e.path()) {
                    Ok(Stored::New(_)) => new += 1,
                    Ok(Stored::Duplicate(_)) => dup += 1,
                    Err(medfed_site::InboxError::QuotaExceeded { used, quota }) => {
                        anyhow::bail!(
                            "inbox full ({used} of {quota} bytes) after {new} new instances; intake paused"
                        )
                    }
                    Err(err) => {
                        bad += 1;
                        eprintln!("skipped {}: {err}", e.path().display());
                    }
                }
            }
            println!("{new} instances imported, {dup} already in the inbox, {bad} files skipped");
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        SiteCommand::Harvest {
            config,
            study,
            dataset,
            hub,
            ca,
            token,
        } => {
            let policy = SitePolicy::load(&config)?;
            let inbox = Inbox::open(&policy.inbox_dir(), policy.storage.inbox_quota_bytes)?;
            let dir = &policy.storage.dir;
            let key = medfed_audit::load_or_create_key(&dir.join("audit.key"))?;
            let audit = medfed_audit::AuditLog::open(&dir.join("site.audit.jsonl"), key, 100)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let client =
                medfed_hub::client::HubClient::new(&hub, ca.as_deref())?.with_token(&token);
            let site_key = dir.join("site.key");
            let harvester = medfed_site::Harvester {
                policy: &policy,
                study: &study,
                dataset: &dataset,
                inbox: &inbox,
                hub: &client,
                site_key: &site_key,
                audit: &audit,
            };
            let r = rt.block_on(harvester.run_once())?;
            println!(
                "{} sent, {} already on the hub, {} failed (left in the inbox for the next pass)",
                r.sent,
                r.already_there,
                r.failed.len()
            );
            for (f, why) in r.failed.iter().take(20) {
                println!("  {}: {why}", f.display());
            }
            Ok(if r.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        SiteCommand::Status { config } => {
            let policy = SitePolicy::load(&config)?;
            let inbox = Inbox::open(&policy.inbox_dir(), policy.storage.inbox_quota_bytes)?;
            let harvested = std::fs::read_dir(policy.storage.dir.join("harvested"))
                .map(|r| r.count())
                .unwrap_or(0);
            println!(
                "inbox: {} instances, {:.1} of {:.1} MB; harvested: {harvested}",
                inbox.list()?.len(),
                inbox.used_bytes() as f64 / 1e6,
                policy.storage.inbox_quota_bytes as f64 / 1e6
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
