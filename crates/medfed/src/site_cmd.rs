//! `medfed site ...`: the site node (so far: the DICOM receiver filling the local inbox).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Subcommand;
use medfed_site::{Inbox, Receiver, SitePolicy};

#[derive(Subcommand)]
pub enum SiteCommand {
    /// Receive DICOM (C-STORE, C-ECHO) from the calling AE titles site.toml allows, into the
    /// site's inbox, until interrupted.
    Receive {
        /// site.toml
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
            let inbox = Arc::new(Inbox::open(&policy.inbox_dir(), policy.storage.inbox_quota_bytes)?);
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
    }
}
