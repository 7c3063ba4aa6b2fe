//! Harvest: inbox instances of a study that allows it are de-identified at the site with the
//! study's required options, sent to the hub's dataset (STOW-RS), and only then moved out of the
//! inbox. The originals, the site key and the re-identification table stay here. An instance the
//! hub already has counts as sent (restarts never duplicate); a failure leaves the instance in
//! the inbox with its reason, for the next pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use medfed_audit::{AuditLog, Event};
use medfed_deid::{
    DeidOption, DeidProfile, Deidentifier, Pseudonymizer, ReidTable, SiteKey, reid_table_path,
};
use medfed_hub::client::HubClient;

use crate::inbox::Inbox;
use crate::policy::{SitePolicy, WayOfWorking};

#[derive(Debug, thiserror::Error)]
pub enum HarvestError {
    #[error("refused by site policy")]
    Refused(#[from] crate::policy::Refusal),
    #[error(transparent)]
    Deid(#[from] medfed_deid::DeidError),
    #[error(transparent)]
    Audit(#[from] medfed_audit::AuditError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the hub")]
    Hub(#[from] medfed_hub::client::ClientError),
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HarvestReport {
    pub sent: usize,
    /// Already on the hub (a pass interrupted after sending, before moving the original).
    pub already_there: usize,
    /// Inbox files that stay for the next pass, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// Harvest for one study into one hub dataset.
pub struct Harvester<'a> {
    pub policy: &'a SitePolicy,
    pub study: &'a str,
    pub dataset: &'a str,
    pub inbox: &'a Inbox,
    pub hub: &'a HubClient,
    pub site_key: &'a Path,
    pub audit: &'a AuditLog,
}

/// Instances per STOW-RS request.
const BATCH: usize = 32;
/// STOW-RS requests in flight at once.
const IN_FLIGHT: usize = 4;

impl Harvester<'_> {
    fn harvested_dir(&self) -> PathBuf {
        self.policy.storage.dir.join("harvested")
    }

    fn audit(&self, action: &str, resource: String, outcome: &str) -> Result<(), HarvestError> {
        self.audit.append(Event {
            actor: format!("site:{}", self.policy.organisation),
            on_behalf_of: None,
            action: action.into(),
            resource,
            outcome: outcome.into(),
        })?;
        Ok(())
    }

    fn instance_resource(&self, sop: &str) -> String {
        format!(
            "study/{}/dataset/{}/instance/{sop}",
            self.study, self.dataset
        )
    }

    /// Append a `harvest.release` record for every instance of a batch (by its de-identified
    /// SOP Instance UID, the one the hub will hold), then sync the log.
    fn record_release(&self, batch: &[(PathBuf, String)]) -> Result<(), HarvestError> {
        for (_, sop) in batch {
            self.audit("harvest.release", self.instance_resource(sop), "sending")?;
        }
        self.audit.sync()?;
        Ok(())
    }

    /// One pass over the inbox.
    pub async fn run_once(&self) -> Result<HarvestReport, HarvestError> {
        let study = match self.policy.allows(self.study, WayOfWorking::Harvest) {
            Ok(s) => s,
            Err(refusal) => {
                self.audit(
                    "harvest.refuse",
                    format!("study/{}", self.study),
                    &refusal.to_string(),
                )?;
                return Err(refusal.into());
            }
        };
        let options = study
            .deid_options
            .iter()
            .map(|n| DeidOption::from_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let profile = DeidProfile::with_options(options)?;
        let pseudonymizer = Pseudonymizer::new(SiteKey::load_or_create(self.site_key)?);
        let deidentifier = Deidentifier::new(&profile, &pseudonymizer);
        let harvested = self.harvested_dir();
        std::fs::create_dir_all(&harvested).map_err(|source| HarvestError::Io {
            path: harvested.clone(),
            source,
        })?;
        let files = self.inbox.list().map_err(|e| HarvestError::Io {
            path: self.inbox.dir().to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut report = HarvestReport::default();
        // Batches are prepared (de-identified, identities recorded) one after another, and up
        // to IN_FLIGHT of them are on their way to the hub at once, so the hub's writes overlap.
        let key = SiteKey::load_or_create(self.site_key)?;
        let reid = ReidTable::new(reid_table_path(self.site_key), &key);
        // A window bounds how many de-identified instances are held in memory at once.
        for window in files.chunks(BATCH * IN_FLIGHT * 2) {
            // De-identifying a window and writing the re-identification table take the CPU and
            // the disk: off the async workers, so the link's heartbeat keeps its beat.
            let prepared = crate::node::off_worker(|| -> Result<_, HarvestError> {
                let mut prepared = Vec::new();
                for batch in window.chunks(BATCH) {
                    let mut bodies = Vec::new();
                    let mut originals = Vec::new();
                    let mut identities = BTreeMap::new();
                    for f in batch {
                        match deidentify_file(&deidentifier, f) {
                            Ok((bytes, sop, patient)) => {
                                if let Some((pseudonym, who)) = patient {
                                    identities.insert(pseudonym, who);
                                }
                                bodies.push(bytes);
                                originals.push((f.clone(), sop));
                            }
                            Err(why) => report.failed.push((f.clone(), why)),
                        }
                    }
                    if !bodies.is_empty() {
                        prepared.push((bodies, originals, identities));
                    }
                }
                // The re-identification table is written before anything leaves the site.
                let all: BTreeMap<_, _> = prepared
                    .iter()
                    .flat_map(|(_, _, ids)| ids.iter().map(|(k, v)| (k.clone(), v.clone())))
                    .collect();
                reid.merge(&all)?;
                Ok(prepared)
            })?;
            let mut sends = futures_util::stream::iter(prepared.into_iter().map(
                |(bodies, originals, _)| async move {
                    // Fail closed: a batch goes out only once its release is in the site's
                    // audit log, on disk. If that fails, this batch is not sent (the pass
                    // stops; its originals stay in the inbox for the next pass).
                    if let Err(e) = crate::node::off_worker(|| self.record_release(&originals)) {
                        return (originals, Err(e));
                    }
                    let answer = self.hub.stow(self.dataset, &bodies).await;
                    (originals, answer.map_err(HarvestError::from))
                },
            ))
            .buffered(IN_FLIGHT);
            while let Some((originals, answer)) = sends.next().await {
                let (status, answer) = answer?;
                // 200: all stored; 202: some failed; 409: all failed (each with its reason). Any
                // other answer (refused credentials, an error) stores nothing: nothing moves.
                if !matches!(status.as_u16(), 200 | 202 | 409) {
                    return Err(HarvestError::Hub(medfed_hub::client::ClientError::Status {
                        status,
                        detail: answer["detail"].as_str().unwrap_or_default().to_string(),
                    }));
                }
                let sop_of =
                    |f: &serde_json::Value| f["00081155"]["Value"][0].as_str().map(str::to_string);
                let failed: BTreeMap<String, u64> = answer["00081198"]["Value"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|f| Some((sop_of(f)?, f["00081197"]["Value"][0].as_u64()?)))
                            .collect()
                    })
                    .unwrap_or_default();
                // Only what the hub confirms counts as sent.
                let stored: std::collections::BTreeSet<String> = answer["00081199"]["Value"]
                    .as_array()
                    .map(|a| a.iter().filter_map(sop_of).collect())
                    .unwrap_or_default();
                for (original, sop) in originals {
                    let outcome = match failed.get(&sop) {
                        None if stored.contains(&sop) => "sent",
                        None => {
                            report
                                .failed
                                .push((original, "the hub did not confirm it".to_string()));
                            continue;
                        }
                        Some(0x0111) => "already-on-hub",
                        Some(code) => {
                            report.failed.push((
                                original,
                                format!("the hub refused it (status {code:#06x})"),
                            ));
                            self.audit(
                                "harvest.send",
                                self.instance_resource(&sop),
                                "refused by hub",
                            )?;
                            continue;
                        }
                    };
                    self.audit("harvest.send", self.instance_resource(&sop), outcome)?;
                    let dest = harvested.join(original.file_name().unwrap_or_default());
                    // The error names the harvested folder, not the inbox file: that file is
                    // named by the original SOP Instance UID, and this message reaches the
                    // status the hub is shown.
                    self.inbox
                        .move_out(&original, &dest)
                        .map_err(|e| HarvestError::Io {
                            path: harvested.clone(),
                            source: match e {
                                crate::inbox::InboxError::Io { source, .. } => source,
                                other => std::io::Error::other(other.to_string()),
                            },
                        })?;
                    if outcome == "sent" {
                        report.sent += 1;
                    } else {
                        report.already_there += 1;
                    }
                }
            }
        }
        Ok(report)
    }
}

type Patient = Option<(String, medfed_deid::OriginalIdentity)>;

/// De-identify one inbox file; its bytes, its new SOP Instance UID and the patient mapping.
fn deidentify_file(
    d: &Deidentifier<'_>,
    path: &Path,
) -> Result<(Vec<u8>, String, Patient), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let obj = medfed_deid::read_object(&bytes).map_err(|r| r.reason().to_string())?;
    let out = d.deidentify(obj).map_err(|r| r.reason().to_string())?;
    let sop = out
        .object
        .meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string();
    let mut buf = Vec::with_capacity(bytes.len());
    out.object
        .write_all(&mut buf)
        .map_err(|e| format!("cannot encode: {e}"))?;
    Ok((buf, sop, out.patient))
}
