//! `site.toml`: what the hospital allows. The hub can send any task; the site decides with this
//! file alone, and refuses what it does not allow.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use medfed_federated::Disclosure;
use medfed_federated::spec::{AlgorithmKind, StudySpec};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The ways of working a study may be allowed at this site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WayOfWorking {
    /// De-identified DICOM goes to the hub's encrypted storage.
    Harvest,
    /// Only radiomic feature tables go to the hub.
    Features,
    /// Only model parameters and aggregates go to the hub.
    FederatedLearning,
}

/// One study this site takes part in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyPolicy {
    pub id: String,
    /// Ways of working the hospital allows for this study (none by default).
    #[serde(default)]
    pub allow: Vec<WayOfWorking>,
    /// De-identification options the study must use (PS3.15 option names).
    #[serde(default)]
    pub deid_options: Vec<String>,
    /// Nothing aggregated over fewer rows than this leaves the site.
    #[serde(default = "default_min_count")]
    pub min_count: u32,
    /// Task kinds that run without a person approving them (none by default).
    #[serde(default)]
    pub auto_approve: Vec<WayOfWorking>,
    /// What federated runs of this study may do here.
    #[serde(default)]
    pub federated: FederatedPolicy,
}

/// The site's rules for federated runs (checked against every run's spec before any row is
/// read, and again on every release).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedPolicy {
    /// Algorithms allowed (default: every built-in one).
    #[serde(default = "all_algorithms")]
    pub algorithms: Vec<AlgorithmKind>,
    /// The most rounds a run may ask for.
    #[serde(default = "max_rounds")]
    pub max_rounds: u64,
    /// No count (histogram cell, cross-tab cell) below this leaves the site.
    #[serde(default = "min_cell_count")]
    pub min_cell_count: u64,
    /// Refuse runs without differential privacy.
    #[serde(default)]
    pub require_dp: bool,
    /// Refuse runs whose privacy cost exceeds this epsilon.
    #[serde(default)]
    pub max_epsilon: Option<f64>,
    /// Runs with secure aggregation turned off are refused unless this is set.
    #[serde(default)]
    pub allow_without_secure_aggregation: bool,
}

fn all_algorithms() -> Vec<AlgorithmKind> {
    vec![
        AlgorithmKind::Statistics,
        AlgorithmKind::NewtonLogistic,
        AlgorithmKind::NewtonLinear,
        AlgorithmKind::Fedavg,
        AlgorithmKind::Fedprox,
    ]
}
fn max_rounds() -> u64 {
    1000
}
fn min_cell_count() -> u64 {
    5
}

impl Default for FederatedPolicy {
    fn default() -> Self {
        FederatedPolicy {
            algorithms: all_algorithms(),
            max_rounds: max_rounds(),
            min_cell_count: min_cell_count(),
            require_dp: false,
            max_epsilon: None,
            allow_without_secure_aggregation: false,
        }
    }
}

impl StudyPolicy {
    /// Whether a federated run may touch this site's data at all; the reason if not.
    pub fn check_run(&self, spec: &StudySpec) -> Result<(), String> {
        let f = &self.federated;
        let kind = spec.algorithm.kind;
        if !f.algorithms.contains(&kind) {
            return Err(format!(
                "algorithm {} is not allowed for this study here",
                kind.name()
            ));
        }
        if spec.run.rounds > f.max_rounds {
            return Err(format!(
                "{} rounds asked, this site allows at most {}",
                spec.run.rounds, f.max_rounds
            ));
        }
        if !spec.privacy.secure_aggregation && !f.allow_without_secure_aggregation {
            return Err("this site requires secure aggregation".into());
        }
        match (spec.epsilon(), f.require_dp, f.max_epsilon) {
            (None, true, _) => Err("this site requires differential privacy".into()),
            (Some(e), _, Some(max)) if e > max => Err(format!(
                "the run's privacy cost epsilon = {e:.2} exceeds this site's maximum of {max}"
            )),
            _ => Ok(()),
        }
    }

    /// The disclosure rules releases of this study obey here.
    pub fn disclosure(&self) -> Disclosure {
        Disclosure {
            min_rows: u64::from(self.min_count),
            min_cell: self.federated.min_cell_count,
        }
    }
}

fn default_min_count() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomConfig {
    /// This node's AE title.
    #[serde(default = "default_ae")]
    pub ae_title: String,
    /// Where the C-STORE receiver listens (a hospital-internal address).
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// Calling AE titles allowed to send (the PACS, modalities). Empty: nobody.
    #[serde(default)]
    pub allowed_calling_ae_titles: Vec<String>,
    /// The study the received DICOM is for (the PACS export for it points at this node).
    /// Default: the one study that allows harvest, if there is exactly one.
    #[serde(default)]
    pub study: Option<String>,
}

fn default_ae() -> String {
    "MEDFED".into()
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 11112))
}

impl Default for DicomConfig {
    fn default() -> Self {
        DicomConfig {
            ae_title: default_ae(),
            bind: default_bind(),
            allowed_calling_ae_titles: Vec::new(),
            study: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The site's local data: inbox, de-identified output, keys, audit log.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// The inbox refuses new instances beyond this many bytes (intake pauses, nothing is lost).
    #[serde(default = "default_quota")]
    pub inbox_quota_bytes: u64,
    /// Intake pauses when the disk would have less than this free.
    #[serde(default = "default_reserve")]
    pub min_free_disk_bytes: u64,
}

fn default_reserve() -> u64 {
    1 << 30
}

fn default_dir() -> PathBuf {
    PathBuf::from("site-data")
}

fn default_quota() -> u64 {
    50 << 30
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dir: default_dir(),
            inbox_quota_bytes: default_quota(),
            min_free_disk_bytes: default_reserve(),
        }
    }
}

/// The hospital's rules for this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SitePolicy {
    /// The organisation (hospital) this node belongs to, as the hub knows it.
    #[serde(default)]
    pub organisation: String,
    #[serde(default)]
    pub dicom: DicomConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default, rename = "study")]
    pub studies: Vec<StudyPolicy>,
    /// Local tables (CSV or Parquet) registered for studies: only their schema and, at or above
    /// the study's minimum, their row count are shown to the hub.
    #[serde(default, rename = "table")]
    pub tables: Vec<TablePolicy>,
}

/// A local table registered as a dataset of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablePolicy {
    pub id: String,
    pub study: String,
    /// `.csv` or `.parquet`; relative paths are relative to site.toml.
    pub path: PathBuf,
}

/// Why the site refuses something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this site does not take part in study {0}")]
    UnknownStudy(String),
    #[error("study {study} does not allow {way:?} at this site")]
    NotAllowed { study: String, way: WayOfWorking },
    #[error("{rows} rows is below this site's minimum of {min} for study {study}")]
    TooFewRows { study: String, rows: u64, min: u32 },
}

impl SitePolicy {
    pub fn load(path: &Path) -> Result<SitePolicy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut p = Self::parse(&text).map_err(|e| match e {
            PolicyError::Parse { source, .. } => PolicyError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })?;
        if let Some(base) = path.parent().filter(|b| !b.as_os_str().is_empty()) {
            if p.storage.dir.is_relative() {
                p.storage.dir = base.join(&p.storage.dir);
            }
            for t in &mut p.tables {
                if t.path.is_relative() {
                    t.path = base.join(&t.path);
                }
            }
        }
        Ok(p)
    }

    pub fn parse(text: &str) -> Result<SitePolicy, PolicyError> {
        let p: SitePolicy = toml::from_str(text).map_err(|source| PolicyError::Parse {
            path: PathBuf::from("site.toml"),
            source,
        })?;
        for (i, t) in p.tables.iter().enumerate() {
            if p.tables[..i].iter().any(|o| o.id == t.id) {
                return Err(PolicyError::Invalid(format!(
                    "table {} is listed twice",
                    t.id
                )));
            }
            if p.study(&t.study).is_err() {
                return Err(PolicyError::Invalid(format!(
                    "table {} is for study {}, which this site does not take part in",
                    t.id, t.study
                )));
            }
        }
        for s in &p.studies {
            if let Some(w) = s.auto_approve.iter().find(|w| !s.allow.contains(w)) {
                return Err(PolicyError::Invalid(format!(
                    "study {}: {w:?} is auto-approved but not allowed",
                    s.id
                )));
            }
        }
        Ok(p)
    }

    pub fn study(&self, id: &str) -> Result<&StudyPolicy, Refusal> {
        self.studies
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Refusal::UnknownStudy(id.to_string()))
    }

    /// Whether `way` may run for `study` here at all.
    pub fn allows(&self, study: &str, way: WayOfWorking) -> Result<&StudyPolicy, Refusal> {
        let s = self.study(study)?;
        if s.allow.contains(&way) {
            Ok(s)
        } else {
            Err(Refusal::NotAllowed {
                study: study.to_string(),
                way,
            })
        }
    }

    /// Whether an aggregate over `rows` rows may leave the site for `study`.
    pub fn may_release_aggregate(&self, study: &str, rows: u64) -> Result<(), Refusal> {
        let s = self.study(study)?;
        if rows < u64::from(s.min_count) {
            return Err(Refusal::TooFewRows {
                study: study.to_string(),
                rows,
                min: s.min_count,
            });
        }
        Ok(())
    }

    /// The study the inbox feeds (see [`DicomConfig::study`]).
    pub fn intake_study(&self) -> Option<&str> {
        if let Some(s) = &self.dicom.study {
            return Some(s);
        }
        let mut harvest = self
            .studies
            .iter()
            .filter(|s| s.allow.contains(&WayOfWorking::Harvest));
        match (harvest.next(), harvest.next()) {
            (Some(only), None) => Some(&only.id),
            _ => None,
        }
    }

    pub fn inbox_dir(&self) -> PathBuf {
        self.storage.dir.join("inbox")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
organisation = "hospital-one"
[dicom]
ae_title = "MEDFED_SITE"
bind = "127.0.0.1:11112"
allowed_calling_ae_titles = ["PACS1"]
[storage]
dir = "data"
inbox_quota_bytes = 1000000
[[study]]
id = "lung-ct"
allow = ["harvest", "features"]
deid_options = ["retain-long-modified-dates"]
min_count = 20
auto_approve = ["features"]
[[study]]
id = "brain-mr"
allow = ["federated-learning"]
"#;

    #[test]
    fn the_hospital_decides_what_runs_for_which_study() {
        let p = SitePolicy::parse(EXAMPLE).unwrap();
        assert!(p.allows("lung-ct", WayOfWorking::Harvest).is_ok());
        assert_eq!(
            p.allows("brain-mr", WayOfWorking::Harvest).unwrap_err(),
            Refusal::NotAllowed {
                study: "brain-mr".into(),
                way: WayOfWorking::Harvest
            }
        );
        assert_eq!(
            p.allows("other", WayOfWorking::Features).unwrap_err(),
            Refusal::UnknownStudy("other".into())
        );
        assert!(p.may_release_aggregate("lung-ct", 20).is_ok());
        assert!(matches!(
            p.may_release_aggregate("lung-ct", 19),
            Err(Refusal::TooFewRows { min: 20, .. })
        ));
        // The default minimum applies where the study names none.
        assert!(p.may_release_aggregate("brain-mr", 9).is_err());
    }

    #[test]
    fn federated_runs_are_checked_against_the_studys_rules_before_any_data_is_read() {
        let spec = |extra: &str| {
            StudySpec::from_toml(&format!(
                "study = \"brain-mr\"\n[data]\ntable = \"t\"\nlabel = \"y\"\nfeatures = [\"x\"]\n[algorithm]\nkind = \"fedavg\"\n{extra}"
            ))
            .unwrap()
        };
        let dp = "[privacy.dp]\nclip = 1.0\nnoise_multiplier = 1.0\n";
        let p = SitePolicy::parse(EXAMPLE).unwrap();
        let open = p.study("brain-mr").unwrap();
        assert!(
            open.check_run(&spec("")).is_ok(),
            "defaults allow the built-ins"
        );
        assert_eq!(open.disclosure().min_rows, 10);
        assert_eq!(open.disclosure().min_cell, 5);
        let e = open
            .check_run(&spec("[privacy]\nsecure_aggregation = false\n"))
            .unwrap_err();
        assert!(e.contains("requires secure aggregation"), "{e}");
        let strict = SitePolicy::parse(&format!(
            "{EXAMPLE}[study.federated]\nalgorithms = [\"fedavg\"]\nmax_rounds = 50\nrequire_dp = true\nmax_epsilon = 20.0\n"
        ))
        .unwrap();
        let strict = strict.study("brain-mr").unwrap();
        let refusal = |extra: &str| strict.check_run(&spec(extra)).unwrap_err();
        assert!(refusal("").contains("requires differential privacy"));
        assert!(
            refusal(dp).contains("exceeds"),
            "20 rounds at sigma 1 cost more than 20"
        );
        assert!(refusal(&format!("[run]\nrounds = 60\n{dp}")).contains("at most 50"));
        let newton = StudySpec::from_toml(
            "study = \"brain-mr\"\n[data]\ntable = \"t\"\nlabel = \"y\"\nfeatures = [\"x\"]\n[algorithm]\nkind = \"newton-logistic\"\n",
        )
        .unwrap();
        assert!(
            strict
                .check_run(&newton)
                .unwrap_err()
                .contains("not allowed")
        );
        let cheap = "[run]\nrounds = 5\n[privacy.dp]\nclip = 1.0\nnoise_multiplier = 2.0\n";
        assert!(
            strict.check_run(&spec(cheap)).is_ok(),
            "{:?}",
            spec(cheap).epsilon()
        );
    }

    #[test]
    fn defaults_allow_nothing_and_mistakes_are_refused() {
        let p = SitePolicy::parse("").unwrap();
        assert!(p.dicom.allowed_calling_ae_titles.is_empty());
        assert!(p.studies.is_empty());
        assert!(SitePolicy::parse("studies = []").is_err(), "unknown key");
        let bad = "[[study]]\nid = \"x\"\nallow = [\"features\"]\nauto_approve = [\"harvest\"]\n";
        assert!(matches!(
            SitePolicy::parse(bad),
            Err(PolicyError::Invalid(_))
        ));
        assert!(SitePolicy::parse("[[study]]\nid = \"x\"\nallow = [\"everything\"]\n").is_err());
    }
}
