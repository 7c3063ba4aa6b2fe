//! `medfed hub ...` (serve and host-side administration) and `medfed upload`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use medfed_hub::HubConfig;
use medfed_hub::client::HubClient;

#[derive(Subcommand)]
pub enum HubCommand {
    /// Serve the hub over HTTPS until interrupted (Ctrl-C).
    Serve(ConfigArg),
    /// Create the first platform administrator and print an API token for them (once).
    Bootstrap {
        #[command(flatten)]
        config: ConfigArg,
        /// The administrator's subject: their OIDC subject (`oidc:<issuer>#<sub>`) or a local name
        #[arg(long, default_value = "local:admin")]
        subject: String,
        /// The administrator's organisation (created if missing)
        #[arg(long)]
        organisation: Option<String>,
    },
    /// Issue an API token for a user, on the hub's host (for accounts without OIDC). Audited.
    /// Works while the hub serves (through its host socket, `<data_dir>/host.sock`) or stopped.
    IssueToken {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 90)]
        days: u64,
    },
    /// Make a new master key version and re-wrap every dataset key with it (blobs untouched).
    RotateKey {
        #[command(flatten)]
        config: ConfigArg,
        /// Delete older master key files after the re-wrap has committed
        #[arg(long)]
        retire: bool,
    },
    /// Remove datasets past their retention date now (the server also does this periodically).
    Sweep(ConfigArg),
    /// Issue a new server certificate (new key) under the hub's CA; enrolled sites keep
    /// working because they trust the CA. Stop the hub first; it uses the new one at start.
    ReissueCert(ConfigArg),
}

#[derive(Args)]
pub struct ConfigArg {
    /// hub.toml [default: embedded defaults, data in ./hub-data]
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<HubConfig> {
        Ok(match &self.config {
            Some(p) => HubConfig::load(p)?,
            None => HubConfig::default(),
        })
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn run(cmd: HubCommand) -> anyhow::Result<ExitCode> {
    // The hub's own runtime (more async workers than cores) also for the short commands:
    // one runtime per process, built before the command is known.
    let rt = medfed_hub::server_runtime()?;
    rt.block_on(async move {
        match cmd {
            HubCommand::Serve(c) => serve(c.load()?).await,
            HubCommand::Bootstrap { config, subject, organisation } => {
                let cfg = config.load()?;
                let (user, token) = medfed_hub::bootstrap(&cfg, &subject, organisation.as_deref()).await?;
                println!("platform administrator created: user {user}");
                println!("API token (shown once; store it now):\n{token}");
                Ok(ExitCode::SUCCESS)
            }
            HubCommand::IssueToken { config, user, days } => {
                let cfg = config.load()?;
                // A running hub does it itself (it holds the audit log); else open it here.
                let ask = medfed_hub::host::HostRequest::IssueToken { user: user.clone(), days };
                match medfed_hub::host::request(&cfg.data_dir, &ask).await? {
                    Some(medfed_hub::host::HostAnswer::Token(token)) => {
                        println!("{token}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Some(medfed_hub::host::HostAnswer::Refused(why)) => {
                        anyhow::bail!("the running hub refused: {why}")
                    }
                    None => {}
                }
                let hub = medfed_hub::Hub::open(cfg).await?;
                hub.catalogue.user(&user).await.context("no such user")?;
                let token = medfed_hub::issue_token(&hub, &user, days).await?;
                hub.audit_system("token.issue-on-host", &format!("user/{user}"), "allowed").await?;
                println!("{token}");
                Ok(ExitCode::SUCCESS)
            }
            HubCommand::RotateKey { config, retire } => {
                let cfg = config.load()?;
                let hub = medfed_hub::Hub::open(cfg.clone()).await?;
                let mut keys = medfed_hub::keys::MasterKeys::load(&cfg.keys_dir())?;
                let (version, n) = keys.rotate(&hub.catalogue, retire).await?;
                hub.audit_system("keys.rotate", &format!("master-key/v{version}"), &format!("rewrapped {n}")).await?;
                println!("master key version {version}: {n} data keys re-wrapped; restart the hub to use it");
                Ok(ExitCode::SUCCESS)
            }
            HubCommand::ReissueCert(c) => {
                let cfg = c.load()?;
                if cfg.tls.cert_file.is_some() {
                    anyhow::bail!("[tls] cert_file is configured: replace that certificate instead");
                }
                let hub = medfed_hub::Hub::open(cfg.clone()).await.context("opening the hub (is it still running?)")?;
                let out = hub.ca.issue_server_certificate(&cfg.tls_dir(), &cfg.tls.names)?;
                hub.audit_system("tls.reissue-server-certificate", "hub", "issued").await?;
                println!("new server certificate {} (same CA {}); start the hub to use it", out.cert_pem.display(), out.ca_pem.display());
                Ok(ExitCode::SUCCESS)
            }
            HubCommand::Sweep(c) => {
                let hub = medfed_hub::Hub::open(c.load()?).await?;
                let h = hub.sweep_expired(medfed_catalogue_now()).await?;
                println!("{} expired datasets removed", h.datasets_removed);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn medfed_catalogue_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn serve(cfg: HubConfig) -> anyhow::Result<ExitCode> {
    let running = medfed_hub::start(cfg).await.context("starting the hub")?;
    println!("hub listening on https://{}", running.addr);
    if let Some(ca) = &running.ca_pem {
        println!("clients trust the hub's generated CA: {}", ca.display());
    }
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct UploadArgs {
    /// The hub, e.g. https://127.0.0.1:8443
    #[arg(long)]
    hub: String,
    /// CA certificate to trust for the hub (PEM)
    #[arg(long)]
    ca: Option<PathBuf>,
    /// API token [default: $MEDFED_TOKEN]
    #[arg(long, env = "MEDFED_TOKEN", hide_env_values = true)]
    token: String,
    /// Target dataset id
    #[arg(long)]
    dataset: String,
    /// Media type of the files [default: application/dicom for files that are DICOM by
    /// content, else application/octet-stream]. The hub recognises DICOM by content whatever
    /// is declared, and refuses instances that are not de-identified.
    #[arg(long)]
    media_type: Option<String>,
    /// Continue this interrupted upload (one file only)
    #[arg(long)]
    resume: Option<String>,
    files: Vec<PathBuf>,
}

pub fn upload(args: &UploadArgs) -> anyhow::Result<ExitCode> {
    if args.resume.is_some() && args.files.len() != 1 {
        anyhow::bail!("--resume continues one file's upload");
    }
    let rt = runtime()?;
    rt.block_on(async {
        let client = HubClient::new(&args.hub, args.ca.as_deref())?.with_token(&args.token);
        let total: u64 = args
            .files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        for f in &args.files {
            bar.set_message(display_name(f));
            let media_type = match &args.media_type {
                Some(m) => m.clone(),
                None => sniffed_media_type(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .to_string(),
            };
            let v = client
                .upload_file(
                    &args.dataset,
                    f,
                    &media_type,
                    args.resume.as_deref(),
                    &|n| bar.inc(n),
                )
                .await
                .with_context(|| format!("uploading {}", f.display()))?;
            bar.println(format!(
                "{} -> object {}",
                f.display(),
                v["id"].as_str().unwrap_or("?")
            ));
        }
        bar.finish_and_clear();
        Ok(ExitCode::SUCCESS)
    })
}

/// The media type a file's content says it has: DICOM or opaque bytes.
fn sniffed_media_type(p: &Path) -> std::io::Result<&'static str> {
    use std::io::Read;
    let mut head = Vec::with_capacity(medfed_hub::dicom::SNIFF_LEN);
    std::fs::File::open(p)?
        .take(medfed_hub::dicom::SNIFF_LEN as u64)
        .read_to_end(&mut head)?;
    Ok(if medfed_hub::dicom::looks_like_dicom(&head) {
        "application/dicom"
    } else {
        "application/octet-stream"
    })
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_declares_dicom_for_files_that_are_dicom_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let part10 = dir.path().join("scan.bin");
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM\x02\x00\x00\x00UL\x04\x00");
        std::fs::write(&part10, &bytes).unwrap();
        assert_eq!(sniffed_media_type(&part10).unwrap(), "application/dicom");
        // A bare Explicit VR data set starting with (0008,0005) Specific Character Set.
        let bare = dir.path().join("bare");
        std::fs::write(&bare, b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100").unwrap();
        assert_eq!(sniffed_media_type(&bare).unwrap(), "application/dicom");
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, b"a,b\n1,2\n").unwrap();
        assert_eq!(
            sniffed_media_type(&csv).unwrap(),
            "application/octet-stream"
        );
    }
}
