//! `medfed site ...`: enrolment with the hub, the running node (`serve`: DICOM receiver,
//! outbound link, harvest), approvals, status, and the one-shot receive/import/harvest tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Subcommand;
use medfed_site::{Inbox, Receiver, SitePolicy, Stored};

#[derive(Subcommand)]
pub enum SiteCommand {
    /// Enrol this site with the hub: a key pair is made here, the hub's CA signs its
    /// certificate request; from then on the site talks to the hub over mutual TLS only.
    Enroll {
        #[arg(long)]
        config: PathBuf,
        /// The hub, e.g. https://hub.example.org:8443
        #[arg(long)]
        hub: String,
        /// The one-time enrolment token a study coordinator created [default: $MEDFED_ENROLMENT_TOKEN]
        #[arg(long, env = "MEDFED_ENROLMENT_TOKEN", hide_env_values = true)]
        token: String,
        /// A name the hub shows for this node
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Run the site node until interrupted: DICOM receiver, the outbound link to the hub
    /// (tasks, heartbeats, reconnection), harvest with retries.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Longest wait of one poll at the hub, seconds
        #[arg(long, default_value_t = 25)]
        poll_wait: u64,
    },
    /// Send DICOM files (or folders of them) to a storage SCP with C-STORE, as they are: to
    /// test a receiver, or to push a study to a site node.
    Send {
        /// host:port of the SCP
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "MEDFED_SCU")]
        calling: String,
        #[arg(long, default_value = "MEDFED")]
        called: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Approve a task that waits for a person (its kind is not auto-approved in site.toml).
    Approve {
        #[arg(long)]
        config: PathBuf,
        task: String,
    },
    /// Refuse a task that waits for a person.
    Reject {
        #[arg(long)]
        config: PathBuf,
        task: String,
    },
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
    /// The node's state: link to the hub, intake, harvest progress and failures, tasks.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Print the full status as JSON
        #[arg(long)]
        json: bool,
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
        SiteCommand::Status { config, json } => {
            let policy = SitePolicy::load(&config)?;
            status(&policy, json)
        }
        SiteCommand::Enroll {
            config,
            hub,
            token,
            name,
        } => {
            let policy = SitePolicy::load(&config)?;
            if policy.organisation.is_empty() {
                anyhow::bail!(
                    "{}: set `organisation` (as the hub knows it) first",
                    config.display()
                );
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let id = rt.block_on(medfed_site::SiteIdentity::enroll(
                &policy.storage.dir,
                &hub,
                &token,
                &policy.organisation,
                &name,
            ))?;
            let key = medfed_audit::load_or_create_key(&policy.storage.dir.join("audit.key"))?;
            let audit = medfed_audit::AuditLog::open(
                &policy.storage.dir.join("site.audit.jsonl"),
                key,
                100,
            )?;
            audit.append(medfed_audit::Event {
                actor: format!("site:{}", policy.organisation),
                on_behalf_of: None,
                action: "site.enrol".into(),
                resource: format!("site/{}", id.enrolled.site_id),
                outcome: format!("enrolled with {}", id.enrolled.hub_url),
            })?;
            println!(
                "enrolled as site {} of {} with {}; start it with `medfed site serve --config {}`",
                id.enrolled.site_id,
                id.enrolled.organisation,
                id.enrolled.hub_url,
                config.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        SiteCommand::Serve { config, poll_wait } => {
            let policy = SitePolicy::load(&config)?;
            let options = medfed_site::NodeOptions {
                poll_wait_s: poll_wait,
                ..Default::default()
            };
            let node = medfed_site::SiteNode::open(policy.clone(), options)
                .with_context(|| format!("opening the site node of {}", config.display()))?;
            match node.dicom_addr() {
                Some(a) => println!(
                    "{} receiving DICOM on {a} (callers: {})",
                    policy.dicom.ae_title,
                    policy.dicom.allowed_calling_ae_titles.join(", ")
                ),
                None => println!("no calling AE title allowed: the DICOM receiver is off"),
            }
            let stop = node.stopper();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let serving = tokio::spawn(node.serve());
                let _ = tokio::signal::ctrl_c().await;
                println!("stopping");
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                anyhow::Ok(serving.await??)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        SiteCommand::Send {
            to,
            calling,
            called,
            paths,
        } => {
            let mut files: Vec<PathBuf> = paths
                .iter()
                .flat_map(|p| walkdir::WalkDir::new(p).into_iter().filter_map(Result::ok))
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .collect();
            files.sort();
            let r = medfed_site::send_files(&to, &calling, &called, &files)?;
            println!("{} of {} instances stored at {to}", r.stored, files.len());
            for (f, status) in &r.refused {
                println!("  refused {} (status {status:#06x})", f.display());
            }
            Ok(if r.refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        SiteCommand::Approve { config, task } => decide(&config, &task, true),
        SiteCommand::Reject { config, task } => decide(&config, &task, false),
    }
}

/// Leave a person's decision for the running node (it applies and audits it).
fn decide(config: &std::path::Path, task: &str, approve: bool) -> anyhow::Result<ExitCode> {
    let policy = SitePolicy::load(config)?;
    let who = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    medfed_site::leave_decision(&policy.storage.dir, task, approve, &format!("by {who}"))?;
    println!(
        "{} of task {task} left for the running node (see `medfed site status`)",
        if approve { "approval" } else { "rejection" }
    );
    Ok(ExitCode::SUCCESS)
}

fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    format!("{:.0} s ago", (now - ms).max(0) as f64 / 1000.0)
}

fn status(policy: &SitePolicy, as_json: bool) -> anyhow::Result<ExitCode> {
    let inbox = Inbox::open(&policy.inbox_dir(), policy.storage.inbox_quota_bytes)?;
    let harvested = std::fs::read_dir(policy.storage.dir.join("harvested"))
        .map(|r| r.count())
        .unwrap_or(0);
    let node = medfed_site::read_status(&policy.storage.dir);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&node)?);
        return Ok(ExitCode::SUCCESS);
    }
    match medfed_site::SiteIdentity::load(&policy.storage.dir) {
        Ok(id) => println!(
            "site {} of {} enrolled with {}",
            id.enrolled.site_id, id.enrolled.organisation, id.enrolled.hub_url
        ),
        Err(e) => println!("{e}"),
    }
    println!(
        "inbox: {} instances, {:.1} of {:.1} MB; harvested: {harvested}",
        inbox.list()?.len(),
        inbox.used_bytes() as f64 / 1e6,
        policy.storage.inbox_quota_bytes as f64 / 1e6
    );
    let Some(st) = node else {
        println!("the node has not run yet (medfed site serve)");
        return Ok(ExitCode::SUCCESS);
    };
    let link = match (st.connected, st.last_contact_ms, &st.hub_error) {
        (true, Some(t), _) => format!("connected (last contact {})", ago(t)),
        (_, _, Some(e)) => format!(
            "NOT connected since {}: {e}",
            st.hub_unreachable_since_ms.map(ago).unwrap_or_default()
        ),
        _ => "connecting".into(),
    };
    println!("hub link: {link}  (status written {})", ago(st.updated_ms));
    println!(
        "intake: {}",
        st.intake_paused
            .as_deref()
            .map_or("accepting".into(), |w| format!("PAUSED: {w}"))
    );
    println!(
        "harvest: {} sent, {} already on the hub{}",
        st.sent,
        st.already_on_hub,
        st.harvest_paused
            .as_deref()
            .map_or(String::new(), |w| format!("; PAUSED: {w}"))
    );
    for f in &st.failures {
        println!(
            "  retrying {} (attempt {}): {}",
            f.file, f.attempts, f.reason
        );
    }
    for f in &st.quarantined {
        println!(
            "  set aside {} after {} attempts: {}",
            f.file, f.attempts, f.reason
        );
    }
    for t in &st.tasks {
        println!(
            "task {} {} for study {}: {}{}",
            t.id,
            t.kind,
            t.study,
            t.status,
            if t.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", t.detail)
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
