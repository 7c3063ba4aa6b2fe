//! The site node installed at a hospital: the hospital's own policy ([`SitePolicy`], from
//! `site.toml`, enforced here and never overridable by the hub), the DICOM receiver
//! ([`Receiver`]: C-STORE and C-ECHO for the configured calling AE titles only) and the local
//! [`Inbox`] every received instance lands in, durably, before anything else happens to it;
//! the [`Harvester`] de-identifies inbox instances with the study's required options and sends
//! them to the hub, recording everything it sends in the site's own audit log.

mod harvest;
mod inbox;
mod policy;
mod scp;

pub use harvest::{HarvestError, HarvestReport, Harvester};
pub use inbox::{Inbox, InboxError, Stored};
pub use policy::{PolicyError, Refusal, SitePolicy, StudyPolicy, WayOfWorking};
pub use scp::{Receiver, TRANSFER_SYNTAXES};
