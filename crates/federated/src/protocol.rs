//! The messages of a run between a site node and the hub (JSON over the site's mutual-TLS
//! link). Each round takes two exchanges per site, each one long-poll request whose answer
//! is the site's next instruction:
//!
//! 1. the site sends its public keys for the round (`join`, or with its previous reveal); the
//!    hub answers, once every site's keys are in, `compute` with the step and all the keys;
//! 2. the site sends its masked `release` and its self-mask shares, each sealed for its
//!    recipient; the hub answers, once the round's releases are in (or the timeout dropped
//!    the silent), `sign-split` with the survivors, the dropped and the shares meant for this
//!    site;
//! 3. the site checks the split and sends its signature of it (`split-signed`), once per round;
//!    the hub answers, once every survivor signed, `reveal` with the split and the signatures;
//! 4. the site checks that enough survivors signed the same split and sends its `reveal` (with
//!    its keys for the next round); the hub unmasks the sum, advances the coordinator and
//!    answers with the next `compute`, or `finished`.
//!
//! Without secure aggregation a round is step 2 alone, with plain vectors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::eval::Metrics;
use crate::run::Step;
use crate::secagg::{Reveal, RoundPublic};

/// From a site to the hub. (Externally tagged: maps keyed by site index survive JSON.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteMessage {
    /// Ready for the next round, with a fresh key (also after a restart of either side).
    Join { public: RoundPublic },
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
        /// Without secure aggregation: the keys for the next round.
        #[serde(default)]
        next_public: Option<RoundPublic>,
    },
    /// The site's signature of the round's split (survivors, dropped) the hub named.
    SplitSigned { round: u64, signature: Vec<u8> },
    Reveal {
        round: u64,
        reveal: Reveal,
        next_public: RoundPublic,
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
        participants: BTreeMap<u32, RoundPublic>,
        threshold: usize,
        secure: bool,
    },
    /// Check and sign this split of the round.
    SignSplit {
        round: u64,
        survivors: Vec<u32>,
        dropped: Vec<u32>,
        /// The sealed shares other sites sent this one, by sender.
        shares: BTreeMap<u32, Vec<u8>>,
    },
    Reveal {
        round: u64,
        survivors: Vec<u32>,
        dropped: Vec<u32>,
        /// The survivors' signatures of this split, by signer.
        signatures: BTreeMap<u32, Vec<u8>>,
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

/// What a site should record (in its audit log) about an answer before sending it.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    Released {
        round: u64,
        stage: &'static str,
        values: usize,
        rows: u64,
        masked: bool,
    },
    Refused(String),
    SplitSigned {
        round: u64,
        survivors: Vec<u32>,
        dropped: Vec<u32>,
    },
    Revealed {
        round: u64,
        survivors: Vec<u32>,
        dropped: Vec<u32>,
    },
    RevealRefused(String),
}

/// A site's next move.
#[derive(Debug)]
// One per exchange, moved straight to the sender: boxing the message would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Send {
        message: SiteMessage,
        note: Option<Note>,
    },
    Finished(String),
    Stopped(String),
}

/// A site's side of the protocol without I/O: its keys and masking state, and the answer to
/// each instruction. The site node adds the network and the audit log; the hub's tests drive
/// the run state machine with it.
pub struct Participant {
    keys: crate::secagg::RoundKeys,
    masking: Option<crate::secagg::Masking>,
    /// Fewer survivors than this and the site reveals nothing.
    min_survivors: usize,
}

impl Participant {
    pub fn new(min_survivors: usize) -> Participant {
        Participant {
            keys: crate::secagg::RoundKeys::generate(),
            masking: None,
            min_survivors,
        }
    }

    /// Ready for a round with fresh keys (also after a restart or a lost round).
    pub fn join(&mut self) -> SiteMessage {
        SiteMessage::Join {
            public: self.fresh_key(),
        }
    }

    /// New keys for the next round (the old masking state is dropped); the public keys.
    fn fresh_key(&mut self) -> RoundPublic {
        self.keys = crate::secagg::RoundKeys::generate();
        self.masking = None;
        self.keys.public
    }

    /// The answer to `ins`; `release` computes the site's vector for a step (after the site's
    /// rules, which may refuse).
    pub fn answer(
        &mut self,
        ins: Instruction,
        release: impl FnOnce(&Step, u32) -> Result<crate::run::Release, crate::FederatedError>,
    ) -> Outcome {
        let send = |message, note| Outcome::Send { message, note };
        match ins {
            Instruction::Wait => send(SiteMessage::Poll, None),
            Instruction::Join => send(self.join(), None),
            Instruction::Finished { detail } => Outcome::Finished(detail),
            Instruction::Stop { detail } => Outcome::Stopped(detail),
            Instruction::Compute {
                me, participants, ..
            } if participants
                .get(&me)
                .is_some_and(|k| *k != self.keys.public) =>
            {
                // The hub holds a key this site no longer has (a restart): start over.
                send(self.join(), None)
            }
            Instruction::Compute {
                me,
                step,
                participants,
                threshold,
                secure,
            } => {
                let refuse = |reason: String| {
                    send(
                        SiteMessage::Refuse {
                            reason: reason.clone(),
                        },
                        Some(Note::Refused(reason)),
                    )
                };
                let r = match release(&step, me) {
                    Ok(r) => r,
                    Err(e) => return refuse(format!("round {}: {e}", step.round)),
                };
                let note = Note::Released {
                    round: step.round,
                    stage: step.stage.name(),
                    values: r.vector.len(),
                    rows: r.rows,
                    masked: secure,
                };
                if !secure {
                    let public = self.fresh_key();
                    let message = SiteMessage::Release {
                        round: step.round,
                        masked: None,
                        plain: Some(r.vector),
                        shares: BTreeMap::new(),
                        metrics: r.metrics,
                        next_public: Some(public),
                    };
                    return send(message, Some(note));
                }
                let keys = std::mem::replace(&mut self.keys, crate::secagg::RoundKeys::generate());
                let masked =
                    crate::secagg::Masking::new(me, step.round, keys, &participants, threshold)
                        .and_then(|m| {
                            let y = m.mask(&r.vector)?;
                            let shares = m.encrypted_shares()?;
                            Ok((m, y, shares))
                        });
                match masked {
                    Ok((m, y, shares)) => {
                        self.masking = Some(m);
                        let message = SiteMessage::Release {
                            round: step.round,
                            masked: Some(y),
                            plain: None,
                            shares,
                            metrics: r.metrics,
                            next_public: None,
                        };
                        send(message, Some(note))
                    }
                    Err(e) => refuse(format!("round {}: {e}", step.round)),
                }
            }
            Instruction::SignSplit {
                round,
                survivors,
                dropped,
                shares,
            } => {
                let min = self.min_survivors;
                let signed = match self.masking.as_mut().filter(|m| m.round == round) {
                    None => Err("no masking state for this round (restarted?)".to_string()),
                    Some(m) => m
                        .sign_split(&survivors, &dropped, &shares, min)
                        .map_err(|e| e.to_string()),
                };
                match signed {
                    Ok(signature) => send(
                        SiteMessage::SplitSigned { round, signature },
                        Some(Note::SplitSigned {
                            round,
                            survivors,
                            dropped,
                        }),
                    ),
                    // A split this site cannot sign (or a second, different one): its masking
                    // state goes, so nothing of this round is ever revealed; the hub redoes
                    // the round without it.
                    Err(e) => send(self.join(), Some(Note::RevealRefused(e))),
                }
            }
            Instruction::Reveal {
                round,
                survivors,
                dropped,
                signatures,
            } => {
                // Taken: a site reveals at most once per round.
                let revealed = match self.masking.take().filter(|m| m.round == round) {
                    None => Err("no masking state for this round (restarted?)".to_string()),
                    Some(m) => m
                        .reveal(&survivors, &dropped, &signatures)
                        .map_err(|e| e.to_string()),
                };
                match revealed {
                    Ok(reveal) => {
                        let public = self.fresh_key();
                        let note = Note::Revealed {
                            round,
                            survivors,
                            dropped,
                        };
                        let message = SiteMessage::Reveal {
                            round,
                            reveal,
                            next_public: public,
                        };
                        send(message, Some(note))
                    }
                    // Refusing to reveal keeps this site's update masked; the hub redoes the
                    // round without it.
                    Err(e) => send(self.join(), Some(Note::RevealRefused(e))),
                }
            }
        }
    }
}
