//! The site's identity towards the hub: a key pair made here (the private key never leaves
//! the site), the client certificate the hub's CA signed for it, and the hub certificate(s) the
//! site pinned at enrolment. Enrolment needs nothing installed by hand: the one-time token
//! carries the SHA-256 of what the site must trust, so the first connection cannot be
//! intercepted. Files live in `<storage.dir>/identity`; every write is temporary-then-rename.

use std::path::{Path, PathBuf};

use medfed_hub::client::{ClientError, HubClient};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a medfed enrolment token (expected mfe1.<id>.<secret>.<fingerprint>)")]
    MalformedToken,
    #[error(
        "the hub at {0} offered a certificate that does not match the enrolment token's fingerprint; refusing to trust it"
    )]
    TrustMismatch(String),
    #[error("this site is not enrolled: run `medfed site enroll --hub URL --token T` first")]
    NotEnrolled,
    #[error("this site is enrolled already (site {0}); remove {1} to enrol again")]
    AlreadyEnrolled(String, PathBuf),
    #[error("key or certificate request: {0}")]
    Key(String),
    #[error(transparent)]
    Hub(#[from] ClientError),
    #[error("unexpected answer from the hub: {0}")]
    Answer(String),
}

/// What `site.json` records about the enrolment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolled {
    pub site_id: String,
    pub organisation: String,
    pub hub_url: String,
    pub certificate_not_after_ms: i64,
    /// When this site received its current certificate (its lifetime is the difference).
    #[serde(default)]
    pub certificate_received_ms: i64,
}

/// The enrolled site's files.
pub struct SiteIdentity {
    dir: PathBuf,
    pub enrolled: Enrolled,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write through a temporary file in the same directory, synced, renamed, the directory synced
/// (medfed-durable); `private` files are created 0600.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let how = if private {
        medfed_durable::Publish::PRIVATE
    } else {
        medfed_durable::Publish::REPLACE
    };
    medfed_durable::write_atomically(path, bytes, how)
}

/// A new key pair and a certificate request for it (PEM each).
fn key_and_request(organisation: &str) -> Result<(String, String), IdentityError> {
    let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, organisation);
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    Ok((key.serialize_pem(), csr))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl SiteIdentity {
    pub fn dir_for(storage_dir: &Path) -> PathBuf {
        storage_dir.join("identity")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Enrol with the hub: check its certificate against the token, make a key pair here,
    /// send the request with the one-time token, keep what the hub's CA signed.
    pub async fn enroll(
        storage_dir: &Path,
        hub_url: &str,
        token: &str,
        organisation: &str,
        name: &str,
    ) -> Result<SiteIdentity, IdentityError> {
        let dir = Self::dir_for(storage_dir);
        if let Ok(existing) = Self::load(storage_dir) {
            return Err(IdentityError::AlreadyEnrolled(
                existing.enrolled.site_id,
                dir,
            ));
        }
        let parts: Vec<&str> = token.trim().split('.').collect();
        let [prefix, _, _, pinned] = parts[..] else {
            return Err(IdentityError::MalformedToken);
        };
        if prefix != "mfe1" || pinned.len() != 64 {
            return Err(IdentityError::MalformedToken);
        }
        let trust = HubClient::fetch_server_trust(hub_url).await?;
        if hex::encode(Sha256::digest(trust.as_bytes())) != pinned {
            return Err(IdentityError::TrustMismatch(hub_url.to_string()));
        }
        let (key_pem, csr) = key_and_request(organisation)?;
        // From here on the hub's certificate is verified against the pinned trust.
        let pinned_client = HubClient::for_site(hub_url, trust.as_bytes(), None)?;
        let answer = pinned_client
            .call(
                reqwest::Method::POST,
                "/api/v1/enrol",
                Some(json!({
                    "token": token.trim(),
                    "csr_pem": csr,
                    "name": name,
                    "version": env!("CARGO_PKG_VERSION"),
                })),
            )
            .await?;
        let field = |k: &str| {
            answer[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| IdentityError::Answer(format!("no {k}")))
        };
        let enrolled = Enrolled {
            site_id: field("site_id")?,
            organisation: field("organisation")?,
            hub_url: hub_url.trim_end_matches('/').to_string(),
            certificate_not_after_ms: answer["certificate_not_after_ms"].as_i64().unwrap_or(0),
            certificate_received_ms: now_ms(),
        };
        if enrolled.organisation != organisation {
            return Err(IdentityError::Answer(format!(
                "the token is for organisation {}, but site.toml says {organisation}",
                enrolled.organisation
            )));
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut me = SiteIdentity { dir, enrolled };
        let trust_path = me.file("hub-trust.pem");
        write_atomically(&trust_path, field("server_trust_pem")?.as_bytes(), false)
            .map_err(io(&trust_path))?;
        // site.json is written last: its presence means the enrolment is complete.
        me.keep(&field("certificate_pem")?, &key_pem, me.enrolled.clone())?;
        Ok(me)
    }

    /// Keep a certificate with its key (one file, so they can never mismatch), then the record.
    fn keep(&mut self, cert_pem: &str, key_pem: &str, next: Enrolled) -> Result<(), IdentityError> {
        let pair = self.file("identity.pem");
        write_atomically(&pair, format!("{cert_pem}\n{key_pem}").as_bytes(), true)
            .map_err(io(&pair))?;
        let record = self.file("site.json");
        write_atomically(
            &record,
            &serde_json::to_vec_pretty(&next).unwrap_or_default(),
            false,
        )
        .map_err(io(&record))?;
        self.enrolled = next;
        Ok(())
    }

    /// The enrolled identity under `storage_dir`.
    pub fn load(storage_dir: &Path) -> Result<SiteIdentity, IdentityError> {
        let dir = Self::dir_for(storage_dir);
        let path = dir.join("site.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::NotEnrolled);
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let enrolled: Enrolled = serde_json::from_slice(&text)
            .map_err(|e| IdentityError::Answer(format!("{}: {e}", path.display())))?;
        Ok(SiteIdentity { dir, enrolled })
    }

    /// A client that talks to the hub over mutual TLS with this identity.
    pub fn client(&self) -> Result<HubClient, IdentityError> {
        let read = |name: &str| {
            let p = self.file(name);
            std::fs::read(&p).map_err(io(&p))
        };
        Ok(HubClient::for_site(
            &self.enrolled.hub_url,
            &read("hub-trust.pem")?,
            Some(&read("identity.pem")?),
        )?)
    }

    /// When renewal is due: a third of the certificate's lifetime before it expires.
    fn renewal_due_ms(&self) -> i64 {
        let e = &self.enrolled;
        let lifetime = e.certificate_not_after_ms - e.certificate_received_ms;
        e.certificate_not_after_ms - lifetime / 3
    }

    pub fn renewal_due(&self) -> bool {
        now_ms() >= self.renewal_due_ms()
    }

    /// Seconds until renewal is due (0 when it is).
    pub fn seconds_until_renewal(&self) -> u64 {
        ((self.renewal_due_ms() - now_ms()).max(0) / 1000) as u64
    }

    /// Ask the hub for a new certificate (new key pair), over the current one; the files are
    /// replaced only after the hub answered.
    pub async fn renew(&mut self, client: &HubClient) -> Result<(), IdentityError> {
        let (key_pem, csr) = key_and_request(&self.enrolled.organisation)?;
        let answer = client
            .call(
                reqwest::Method::POST,
                "/api/v1/site/renew",
                Some(json!({ "csr_pem": csr })),
            )
            .await?;
        let cert = answer["certificate_pem"]
            .as_str()
            .ok_or_else(|| IdentityError::Answer("no certificate_pem".into()))?;
        let mut next = self.enrolled.clone();
        next.certificate_not_after_ms = answer["certificate_not_after_ms"].as_i64().unwrap_or(0);
        next.certificate_received_ms = now_ms();
        self.keep(cert, &key_pem, next)?;
        Ok(())
    }
}
