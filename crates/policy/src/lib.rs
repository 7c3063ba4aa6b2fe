//! The hub's authorisation in one place: every request is an [`Action`] on a [`Resource`] by a
//! [`Principal`], and [`decide`] says whether it is allowed, forbidden (403: the principal may know
//! the resource exists) or hidden (404: need-to-know, the principal may not even learn that it
//! exists). No other module decides access.
//!
//! Rules:
//! - Study roles are granted per study: study-coordinator, researcher, site-operator, data-owner,
//!   auditor. Without a role in a study, everything of that study is hidden, including its
//!   existence (search results are filtered with [`visible`]).
//! - Platform administration (users, organisations, creating studies, key rotation) belongs to
//!   platform-admins. Segregation of duties: being platform-admin grants nothing inside a study;
//!   an administrator who should read study data needs a study role like anyone else.
//! - Organisation-bound duties: a site-operator uploads only to datasets of their own
//!   organisation, a data-owner deletes or releases only their own organisation's datasets.
//! - Grants ([`check_grant`]): study roles go only to people of the study's organisations, and
//!   never by one's own hand (no self-grants, so an administrator cannot make themself
//!   coordinator and then researcher; [`check_appointment`] for a new study's coordinator).

use serde::{Deserialize, Serialize};

/// Roles granted per study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudyRole {
    StudyCoordinator,
    Researcher,
    SiteOperator,
    DataOwner,
    Auditor,
}

/// A role in one study.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub study: String,
    pub role: StudyRole,
}

/// Who is asking, as authentication established it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    /// The organisation (hospital) the principal belongs to, if any.
    pub organisation: Option<String>,
    pub platform_admin: bool,
    pub grants: Vec<Grant>,
}

impl Principal {
    fn roles_in<'a>(&'a self, study: &'a str) -> impl Iterator<Item = StudyRole> + 'a {
        self.grants
            .iter()
            .filter(move |g| g.study == study)
            .map(|g| g.role)
    }

    fn has(&self, study: &str, role: StudyRole) -> bool {
        self.roles_in(study).any(|r| r == role)
    }

    fn member_of(&self, study: &str) -> bool {
        self.roles_in(study).next().is_some()
    }
}

/// What a request touches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resource {
    /// Platform-wide administration: users, organisations, the list of all studies, keys.
    Platform,
    Study {
        study: String,
    },
    Dataset {
        study: String,
        owner_organisation: String,
    },
    /// The audit records of one study.
    StudyAudit {
        study: String,
    },
}

impl Resource {
    fn study(&self) -> Option<&str> {
        match self {
            Resource::Platform => None,
            Resource::Study { study }
            | Resource::Dataset { study, .. }
            | Resource::StudyAudit { study } => Some(study),
        }
    }
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Users, organisations, bootstrap, master-key rotation.
    AdministerPlatform,
    CreateStudy,
    /// See that a study exists and its metadata (title, members' organisations).
    ReadStudy,
    /// Grant and revoke study roles, issue site enrolment tokens.
    ManageStudy,
    /// See datasets and their catalogue entries (search, QIDO-RS).
    SearchDatasets,
    /// Read object content (WADO-RS, downloads).
    ReadData,
    /// Upload into a dataset (STOW-RS, harvest).
    Upload,
    /// Delete a dataset (crypto-shredding) or change its retention.
    DeleteDataset,
    /// Place or lift a legal hold.
    LegalHold,
    ReadAudit,
}

/// The answer, with the HTTP status it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Allow,
    /// 403: the principal may know the resource exists but may not do this.
    Forbidden,
    /// 404: the principal may not learn that the resource exists.
    Hidden,
}

impl Decision {
    pub fn status(self) -> u16 {
        match self {
            Decision::Allow => 200,
            Decision::Forbidden => 403,
            Decision::Hidden => 404,
        }
    }
}

/// Decide one request.
pub fn decide(who: &Principal, action: Action, on: &Resource) -> Decision {
    use Action::*;
    use StudyRole::*;
    let Some(study) = on.study() else {
        // Platform resource.
        return match action {
            AdministerPlatform | CreateStudy if who.platform_admin => Decision::Allow,
            _ => Decision::Forbidden,
        };
    };
    // Need-to-know: no role in the study, nothing of it exists for this principal. Platform
    // administration does not change that (segregation of duties).
    if !who.member_of(study) {
        return Decision::Hidden;
    }
    let own_org = |o: &str| who.organisation.as_deref() == Some(o);
    let allowed = match (action, on) {
        (ReadStudy, Resource::Study { .. }) => true,
        (ManageStudy, Resource::Study { .. }) => who.has(study, StudyCoordinator),
        (SearchDatasets, Resource::Study { .. } | Resource::Dataset { .. }) => [
            StudyCoordinator,
            Researcher,
            DataOwner,
            SiteOperator,
            Auditor,
        ]
        .iter()
        .any(|&r| who.has(study, r)),
        (ReadData, Resource::Dataset { .. }) => who.has(study, Researcher),
        (
            Upload,
            Resource::Dataset {
                owner_organisation, ..
            },
        ) => who.has(study, SiteOperator) && own_org(owner_organisation),
        (
            DeleteDataset | LegalHold,
            Resource::Dataset {
                owner_organisation, ..
            },
        ) => who.has(study, DataOwner) && own_org(owner_organisation),
        (ReadAudit, Resource::StudyAudit { .. }) => {
            who.has(study, Auditor) || who.has(study, StudyCoordinator)
        }
        _ => false,
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Forbidden
    }
}

/// Whether a resource may appear in this principal's listings and search results at all.
pub fn visible(who: &Principal, on: &Resource) -> bool {
    match on.study() {
        None => who.platform_admin,
        Some(study) => who.member_of(study),
    }
}

/// Why a study role may not be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantRefusal {
    /// The grantee belongs to no organisation of the study.
    OutsideTheStudy,
    /// The granter would grant themself (segregation of duties).
    SelfGrant,
}

impl std::fmt::Display for GrantRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GrantRefusal::OutsideTheStudy => {
                "the user belongs to no organisation taking part in this study"
            }
            GrantRefusal::SelfGrant => "nobody grants a study role to themself",
        })
    }
}

impl std::error::Error for GrantRefusal {}

/// Whether `granter` may give `grantee` a role in a study whose member organisations are
/// `study_organisations` (whether the granter manages the study at all is [`decide`]'s
/// question, `ManageStudy`):
/// - a study role opens the study's data, so it goes only to people of the organisations that
///   take part in it;
/// - nobody grants themself a role, a platform administrator naming themself coordinator
///   included: otherwise one person could go from administrator to coordinator to researcher
///   by their own decisions (segregation of duties). Every role comes from someone else.
pub fn check_grant(
    granter: &Principal,
    grantee: &Principal,
    study_organisations: &[String],
) -> Result<(), GrantRefusal> {
    check_appointment(granter, grantee)?;
    match grantee.organisation.as_deref() {
        Some(org) if study_organisations.iter().any(|o| o == org) => Ok(()),
        _ => Err(GrantRefusal::OutsideTheStudy),
    }
}

/// Whether `granter` (a platform administrator creating a study) may name `coordinator` its
/// first coordinator. Only the self-grant rule applies: a coordinating centre need not be one
/// of the study's organisations, but the administrator cannot appoint themself.
pub fn check_appointment(granter: &Principal, coordinator: &Principal) -> Result<(), GrantRefusal> {
    if granter.id == coordinator.id {
        return Err(GrantRefusal::SelfGrant);
    }
    Ok(())
}
