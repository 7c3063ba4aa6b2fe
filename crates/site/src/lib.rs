//! The site node installed at a hospital: the hospital's own policy ([`SitePolicy`], from
//! `site.toml`, enforced here and never overridable by the hub), the DICOM receiver
//! ([`Receiver`]: C-STORE and C-ECHO for the configured calling AE titles only) and the local
//! [`Inbox`] every received instance lands in, durably, before anything else happens to it;
//! the [`Harvester`] de-identifies inbox instances with the study's required options and sends
//! them to the hub, recording everything it sends in the site's own audit log.
//!
//! [`SiteIdentity`] is the site's enrolment with the hub (its own key pair, the certificate
//! the hub's CA signed, the hub certificate pinned at enrolment); [`SiteNode`] is the running
//! node: receiver, outbound-only link to the hub (long poll, tasks, reports, reconnection with
//! backoff) and the harvest loop with retries.

mod harvest;
mod identity;
mod inbox;
mod node;
mod participant;
mod policy;
mod scp;
mod scu;
mod tables;

pub use harvest::{HarvestError, HarvestReport, Harvester};
pub use identity::{Enrolled, IdentityError, SiteIdentity};
pub use inbox::{Inbox, InboxError, Stored};
pub use node::{
    ItemFailure, LocalTask, NodeError, NodeOptions, NodeStatus, SiteNode, backoff, leave_decision,
    read_status,
};
pub use policy::{PolicyError, Refusal, SitePolicy, StudyPolicy, TablePolicy, WayOfWorking};
pub use scp::{Receiver, TRANSFER_SYNTAXES};
pub use scu::{SendError, SendReport, send_files};
pub use tables::{TableInfo, describe as describe_tables};
