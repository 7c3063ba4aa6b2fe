//! The messages of a run between a site node and the hub (JSON over the site's mutual-TLS
//! link). Each round takes two exchanges per site, each one long-poll request whose answer
//! is the site's next instruction:
//!
//! 1. the site sends its public key for the round (`join`, or with its previous reveal); the
//!    hub answers, once every site's key is in, `compute` with the step and all the keys;
//! 2. the site sends its masked `release` and its self-mask shares, each encrypted for its
//!    recipient; the hub answers, once the round's releases are in (or the timeout dropped
//!    the silent), `reveal` with the survivors, the dropped and the shares meant for this site;
//! 3. the site sends its `reveal` (with its key for the next round); the hub unmasks the sum,
//!    advances the coordinator and answers with the next `compute`, or `finished`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::Metrics;
use crate::run::Step;
use crate::secagg::Reveal;

/// From a site to the hub. (Externally tagged: maps keyed by site index survive JSON.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteMessage {
    /// Ready for the next round, with a fresh key (also after a restart of either side).
    Join { public: [u8; 32] },
    /// The site's release for `round`: masked (secure aggregation) or plain (only when the
    /// spec and every site's policy turned secure aggregation off).
    Release {
        round: u64,
        #[serde(default)]
        masked: Option<Vec<u64>>,
        #[serde(default)]
        plain: Option<Vec<f64>>,
        /// Self-mask shares, encrypted for each recipient, by recipient index.
        #[serde(default)]
        shares: BTreeMap<u32, Vec<u8>>,
        /// Evaluation only: the site's own metrics.
        #[serde(default)]
        metrics: Option<Metrics>,
        /// Without secure aggregation: the key for the next round.
        #[serde(default)]
        next_public: Option<[u8; 32]>,
    },
    Reveal {
        round: u64,
        reveal: Reveal,
        next_public: [u8; 32],
    },
    /// The site's policy refuses this run or a step of it; the site leaves the run.
    Refuse { reason: String },
    /// Nothing new: just the next instruction, please.
    Poll,
}

/// From the hub to a site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Instruction {
    /// Send a fresh key (`join`).
    Join,
    Compute {
        /// This site's index in the run (its secure-aggregation id).
        me: u32,
        step: Step,
        participants: BTreeMap<u32, [u8; 32]>,
        threshold: usize,
        secure: bool,
    },
    Reveal {
        round: u64,
        survivors: Vec<u32>,
        dropped: Vec<u32>,
        /// The encrypted shares other sites sent this one, by sender.
        shares: BTreeMap<u32, Vec<u8>>,
    },
    /// Nothing to do yet; ask again.
    Wait,
    /// The run finished.
    Finished { detail: String },
    /// This site is out of the run (dropped, refused, or the run failed).
    Stop { detail: String },
}

/// A site's request: its message and how long it may wait for an instruction other than
/// `wait`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub message: SiteMessage,
    #[serde(default)]
    pub wait_ms: u64,
}
