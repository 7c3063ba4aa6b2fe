//! The site node installed at a hospital: the hospital's own policy ([`SitePolicy`], from
//! `site.toml`, enforced here and never overridable by the hub), the DICOM receiver
//! ([`Receiver`]: C-STORE and C-ECHO for the configured calling AE titles only) and the local
//! [`Inbox`] every received instance lands in, durably, before anything else happens to it.

mod inbox;
mod policy;
mod scp;

pub use inbox::{Inbox, InboxError, Stored};
pub use policy::{PolicyError, Refusal, SitePolicy, StudyPolicy, WayOfWorking};
pub use scp::{Receiver, TRANSFER_SYNTAXES};
