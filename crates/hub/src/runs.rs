//! Federated runs on the hub: a study coordinator submits a study spec; the hub hands each
//! chosen site a `federated-learning` task and then drives the rounds over the sites' links
//! ([`medfed_federated::protocol`]): keys, masked releases with sealed self-mask shares, the
//! survivors' signatures of the round's split, reveals, unmasking, and the coordinator's next
//! step.
//!
//! Invariants kept here:
//! - the hub only ever holds masked releases and the unmasked *sum* (secure aggregation is on
//!   unless the spec and every site's policy turned it off);
//! - a round never waits longer than the spec's round timeout: sites that have not answered
//!   are dropped (secure aggregation recovers their masks) while at least `min_sites` remain,
//!   and the run fails with a clear reason otherwise; a dropped site stays out of the run;
//! - after every completed round the coordinator is saved; a restarted hub resumes each
//!   running run from its last completed round (sites rejoin with fresh keys);
//! - a finished run's model (safetensors), results, spec and submitter are stored as a
//!   dataset of the study.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use medfed_catalogue::{Dataset, ObjectEntry, Provenance, Run, Task, now_ms};
use medfed_federated::eval::Metrics;
use medfed_federated::protocol::{Exchange, Instruction, SiteMessage};
use medfed_federated::run::{Coordinator, Step};
use medfed_federated::secagg::{self, Reveal, RoundPublic};
use medfed_federated::spec::StudySpec;
use medfed_policy::StudyRole;
use medfed_store::ObjectKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Hub;
use crate::api::{ApiError, ApiResult, Caller, JsonBody, PageQuery, paged, peek, study_for};
use crate::sites::managed_study;

pub fn routes(l: &crate::config::Limits) -> Router<Arc<Hub>> {
    Router::new()
        .route(
            "/api/v1/studies/{study}/runs",
            get(list_runs).post(create_run),
        )
        .route(
            "/api/v1/studies/{study}/runs/{run}",
            get(get_run).delete(cancel_run),
        )
        .route(
            "/api/v1/studies/{study}/runs/{run}/results/{name}",
            get(run_result_file),
        )
        .route(
            "/api/v1/site/runs/{run}/exchange",
            post(exchange).layer(DefaultBodyLimit::max(l.max_run_message_bytes)),
        )
}

/// The runs this hub drives, by id (finished ones stay, so late sites hear that they are).
#[derive(Default)]
pub(crate) struct Registry {
    runs: Mutex<HashMap<String, Arc<RunHandle>>>,
}

pub(crate) struct RunHandle {
    state: Mutex<RunState>,
    changed: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One site's standing in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSite {
    pub site_id: String,
    pub organisation: String,
    /// active, dropped, refused
    pub status: String,
    pub detail: String,
}

enum Phase {
    /// Waiting for every active site's key for the next round.
    Keys,
    Collect {
        step: Step,
        participants: BTreeMap<u32, RoundPublic>,
        threshold: usize,
        masked: BTreeMap<u32, Vec<u64>>,
        plain: BTreeMap<u32, Vec<f64>>,
        /// recipient -> sender -> sealed share
        shares: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
        metrics: BTreeMap<u32, Metrics>,
    },
    /// Waiting for every survivor's signature of the split (survivors, dropped).
    Confirm {
        step: Step,
        threshold: usize,
        survivors: Vec<u32>,
        dropped: Vec<u32>,
        masked: BTreeMap<u32, Vec<u64>>,
        /// Sealed for their recipients with keys the hub never learns (not even from the
        /// seeds revealed for dropped sites); delivered here and not kept past this phase.
        shares: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
        metrics: BTreeMap<u32, Metrics>,
        signatures: BTreeMap<u32, Vec<u8>>,
    },
    Reveal {
        step: Step,
        threshold: usize,
        survivors: Vec<u32>,
        dropped: Vec<u32>,
        masked: BTreeMap<u32, Vec<u64>>,
        metrics: BTreeMap<u32, Metrics>,
        signatures: BTreeMap<u32, Vec<u8>>,
        reveals: BTreeMap<u32, Reveal>,
    },
    Over,
}

/// What is saved after each completed round (and what a restarted hub resumes from).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    coordinator: Coordinator,
    sites: Vec<RunSite>,
    #[serde(default)]
    round_ms: Vec<f64>,
}

struct RunState {
    id: String,
    study: String,
    saved: Saved,
    status: String,
    detail: String,
    phase: Phase,
    /// Keys for the next round, by site index.
    keys: BTreeMap<u32, RoundPublic>,
    deadline: Instant,
    round_started: Option<Instant>,
    /// Bumped on every change, to wake waiting exchanges and the driver.
    version: u64,
    /// Saved state is older than the coordinator.
    dirty: bool,
    /// Events for the hub's audit log, written by the driver.
    events: Vec<(String, String)>,
}

fn timeout(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.01, 86_400.0))
}

impl RunState {
    fn spec(&self) -> &StudySpec {
        &self.saved.coordinator.spec
    }

    fn secure(&self) -> bool {
        self.spec().privacy.secure_aggregation
    }

    fn active(&self) -> Vec<u32> {
        (0..self.saved.sites.len() as u32)
            .filter(|&i| self.saved.sites[i as usize].status == "active")
            .collect()
    }

    fn drop_site(&mut self, i: u32, status: &str, detail: String) {
        let s = &mut self.saved.sites[i as usize];
        if s.status == "active" {
            s.status = status.into();
            s.detail = detail.clone();
            self.events.push((
                format!("run.site.{status}"),
                format!("{}: {detail}", s.site_id),
            ));
            self.dirty = true;
        }
    }

    fn fail(&mut self, detail: String) {
        self.status = "failed".into();
        self.detail = detail.clone();
        self.phase = Phase::Over;
        self.dirty = true;
        self.events.push(("run.fail".into(), detail));
    }

    /// Why a run stops for want of sites: how many sites are ready and why the others are not
    /// (refused by their policy, dropped, silent), so that "every site refused" reads as such.
    fn why_too_few(&self, ready: usize, need: usize) -> String {
        let count = |status: &str| {
            self.saved
                .sites
                .iter()
                .filter(|s| s.status == status)
                .count()
        };
        let (refused, dropped) = (count("refused"), count("dropped"));
        let silent = self.saved.sites.len() - ready - refused - dropped;
        let total = self.saved.sites.len();
        if refused == total {
            return format!(
                "every site ({total}) refused the run under its policy; see each site's reason"
            );
        }
        let mut parts = Vec::new();
        if refused > 0 {
            parts.push(format!("{refused} refused under their policy"));
        }
        if dropped > 0 {
            parts.push(format!("{dropped} dropped"));
        }
        if silent > 0 {
            parts.push(format!("{silent} did not answer within the timeout"));
        }
        format!(
            "{ready} of {total} site(s) ready, the spec needs at least {need}: {}",
            parts.join(", ")
        )
    }

    fn needed(&self) -> usize {
        self.spec().run.min_sites.max(2)
    }

    /// What site `i` should do now.
    fn instruction_for(&self, i: u32) -> Instruction {
        let site = &self.saved.sites[i as usize];
        if self.status == "done" {
            return Instruction::Finished {
                detail: self.detail.clone(),
            };
        }
        if self.status != "running" {
            return Instruction::Stop {
                detail: format!("the run {}: {}", self.status, self.detail),
            };
        }
        if site.status != "active" {
            return Instruction::Stop {
                detail: format!("{} from the run: {}", site.status, site.detail),
            };
        }
        match &self.phase {
            Phase::Keys if !self.keys.contains_key(&i) => Instruction::Join,
            Phase::Collect {
                step,
                participants,
                threshold,
                masked,
                plain,
                ..
            } if participants.contains_key(&i)
                && !masked.contains_key(&i)
                && !plain.contains_key(&i)
                // A participant that sent a new key lost this round's (it restarted): it
                // cannot mask for this round and waits for the next.
                && !self.keys.contains_key(&i) =>
            {
                Instruction::Compute {
                    me: i,
                    step: step.clone(),
                    participants: participants.clone(),
                    threshold: *threshold,
                    secure: self.secure(),
                }
            }
            Phase::Confirm {
                step,
                survivors,
                dropped,
                shares,
                signatures,
                ..
            } if survivors.contains(&i)
                && !signatures.contains_key(&i)
                && !self.keys.contains_key(&i) =>
            {
                Instruction::SignSplit {
                    round: step.round,
                    survivors: survivors.clone(),
                    dropped: dropped.clone(),
                    shares: shares.get(&i).cloned().unwrap_or_default(),
                }
            }
            Phase::Reveal {
                step,
                survivors,
                dropped,
                signatures,
                reveals,
                ..
            } if survivors.contains(&i)
                && !reveals.contains_key(&i)
                && !self.keys.contains_key(&i) =>
            {
                Instruction::Reveal {
                    round: step.round,
                    survivors: survivors.clone(),
                    dropped: dropped.clone(),
                    signatures: signatures.clone(),
                }
            }
            _ => Instruction::Wait,
        }
    }

    fn apply(&mut self, i: u32, msg: SiteMessage) {
        if self.saved.sites[i as usize].status != "active" || self.status != "running" {
            return;
        }
        let secure = self.secure();
        match (msg, &mut self.phase) {
            (SiteMessage::Join { public }, _) => {
                self.keys.insert(i, public);
            }
            (
                SiteMessage::Release {
                    round,
                    masked: m,
                    plain: p,
                    shares: sh,
                    metrics: me,
                    next_public,
                },
                Phase::Collect {
                    step,
                    participants,
                    masked,
                    plain,
                    shares,
                    metrics,
                    ..
                },
            ) if round == step.round
                && participants.contains_key(&i)
                && !masked.contains_key(&i)
                && !plain.contains_key(&i) =>
            {
                match (secure, m, p) {
                    (true, Some(m), _) => {
                        masked.insert(i, m);
                        for (to, sealed) in sh {
                            if participants.contains_key(&to) && to != i {
                                shares.entry(to).or_default().insert(i, sealed);
                            }
                        }
                    }
                    (false, _, Some(p)) => {
                        plain.insert(i, p);
                    }
                    _ => return,
                }
                if let Some(m) = me {
                    metrics.insert(i, m);
                }
                if let Some(k) = next_public {
                    self.keys.insert(i, k);
                }
            }
            (
                SiteMessage::SplitSigned { round, signature },
                Phase::Confirm {
                    step,
                    survivors,
                    signatures,
                    ..
                },
            ) if round == step.round
                && survivors.contains(&i)
                && !signatures.contains_key(&i)
                && !self.keys.contains_key(&i) =>
            {
                signatures.insert(i, signature);
            }
            (
                SiteMessage::Reveal {
                    round,
                    reveal,
                    next_public,
                },
                Phase::Reveal {
                    step,
                    survivors,
                    reveals,
                    ..
                },
            ) if round == step.round && survivors.contains(&i) && !reveals.contains_key(&i) => {
                reveals.insert(i, reveal);
                self.keys.insert(i, next_public);
            }
            (SiteMessage::Refuse { reason }, _) => {
                self.drop_site(i, "refused", reason);
            }
            _ => return,
        }
        self.progress(false);
    }

    /// Move on when the phase is complete, or when its deadline passed (`timed_out`).
    fn progress(&mut self, timed_out: bool) {
        loop {
            let before = self.version;
            self.step_phase(timed_out && self.deadline <= Instant::now());
            if self.version == before {
                return;
            }
        }
    }

    fn changed(&mut self) {
        self.version += 1;
    }

    /// Whether the phase still waits for an active site.
    fn waits(&self, active: &[u32]) -> bool {
        match &self.phase {
            Phase::Over => false,
            Phase::Keys => active.iter().any(|i| !self.keys.contains_key(i)),
            Phase::Collect {
                participants,
                masked,
                plain,
                ..
            } => participants
                .keys()
                .any(|i| !masked.contains_key(i) && !plain.contains_key(i) && active.contains(i)),
            // A survivor that sent a new key instead refused this round's split: not waited for.
            Phase::Confirm {
                survivors,
                signatures,
                ..
            } => survivors.iter().any(|i| {
                !signatures.contains_key(i) && active.contains(i) && !self.keys.contains_key(i)
            }),
            Phase::Reveal {
                survivors, reveals, ..
            } => survivors.iter().any(|i| {
                !reveals.contains_key(i) && active.contains(i) && !self.keys.contains_key(i)
            }),
        }
    }

    fn step_phase(&mut self, late: bool) {
        let active = self.active();
        let round_timeout = timeout(self.spec().run.round_timeout_s);
        let need = self.needed();
        if matches!(self.phase, Phase::Over) || (self.waits(&active) && !late) {
            return;
        }
        self.changed();
        // The phase is complete (or late): owned from here on, replaced by the next one.
        match std::mem::replace(&mut self.phase, Phase::Over) {
            Phase::Over => {}
            Phase::Keys => {
                let ready: Vec<u32> = active
                    .iter()
                    .copied()
                    .filter(|i| self.keys.contains_key(i))
                    .collect();
                if ready.len() < need {
                    let why = self.why_too_few(ready.len(), need);
                    self.fail(why);
                    return;
                }
                for i in active.iter().filter(|i| !ready.contains(i)) {
                    self.drop_site(*i, "dropped", "no answer within the round timeout".into());
                }
                let Some(step) = self.saved.coordinator.step.clone() else {
                    // Finished before a restart, results not stored yet: store them now.
                    self.status = "done".into();
                    self.dirty = true;
                    return;
                };
                let participants: BTreeMap<u32, RoundPublic> =
                    ready.iter().map(|i| (*i, self.keys[i])).collect();
                self.keys.clear();
                let n = participants.len();
                let threshold = need.max(n / 2 + 1).min(n);
                self.phase = Phase::Collect {
                    step,
                    participants,
                    threshold,
                    masked: BTreeMap::new(),
                    plain: BTreeMap::new(),
                    shares: BTreeMap::new(),
                    metrics: BTreeMap::new(),
                };
                self.round_started.get_or_insert_with(Instant::now);
                self.deadline = Instant::now() + round_timeout;
            }
            Phase::Collect {
                step,
                participants,
                threshold,
                masked,
                plain,
                shares,
                metrics,
            } => {
                let delivered: Vec<u32> = participants
                    .keys()
                    .copied()
                    .filter(|i| masked.contains_key(i) || plain.contains_key(i))
                    .collect();
                let waiting: Vec<u32> = participants
                    .keys()
                    .copied()
                    .filter(|i| !delivered.contains(i) && active.contains(i))
                    .collect();
                if delivered.len() < need {
                    self.fail(format!(
                        "round {}: only {} site(s) delivered; at least {need} are needed",
                        step.round,
                        delivered.len()
                    ));
                    return;
                }
                let dropped: Vec<u32> = participants
                    .keys()
                    .copied()
                    .filter(|i| !delivered.contains(i))
                    .collect();
                for &i in &waiting {
                    self.drop_site(
                        i,
                        "dropped",
                        format!("no release within the round timeout (round {})", step.round),
                    );
                }
                if self.secure() && delivered.len() < threshold {
                    // Enough sites for the study, too few to rebuild the self-masks: nothing
                    // is revealed; the round is redone with fresh keys among those left.
                    self.events.push((
                        "run.round.retry".into(),
                        format!(
                            "round {}: {} of {} sites delivered, below the threshold of {threshold}",
                            step.round,
                            delivered.len(),
                            participants.len()
                        ),
                    ));
                    self.phase = Phase::Keys;
                    self.deadline = Instant::now() + round_timeout;
                } else if self.secure() {
                    self.phase = Phase::Confirm {
                        step,
                        threshold,
                        survivors: delivered,
                        dropped,
                        masked,
                        shares,
                        metrics,
                        signatures: BTreeMap::new(),
                    };
                    self.deadline = Instant::now() + round_timeout;
                } else {
                    let len = plain.values().next().map_or(0, Vec::len);
                    if plain.values().any(|v| v.len() != len) {
                        self.fail("sites released vectors of different lengths".into());
                        return;
                    }
                    let mut sum = vec![0.0; len];
                    for v in plain.values() {
                        sum.iter_mut().zip(v).for_each(|(s, x)| *s += x);
                    }
                    let sites: Vec<u32> = plain.keys().copied().collect();
                    self.complete_round(&step, sum, &sites, metrics);
                }
            }
            Phase::Confirm {
                step,
                threshold,
                survivors,
                dropped,
                masked,
                metrics,
                signatures,
                ..
            } => {
                let unsigned: Vec<u32> = survivors
                    .iter()
                    .copied()
                    .filter(|i| !signatures.contains_key(i))
                    .collect();
                if !unsigned.is_empty() {
                    // A survivor vanished or refused the split: nothing was revealed; the
                    // round is redone with fresh keys without it.
                    for &i in &unsigned {
                        let why = if self.keys.contains_key(&i) {
                            format!("refused to sign the split of round {}", step.round)
                        } else {
                            format!(
                                "no signature within the round timeout (round {})",
                                step.round
                            )
                        };
                        self.drop_site(i, "dropped", why);
                    }
                    self.events.push((
                        "run.round.retry".into(),
                        format!(
                            "round {}: {} site(s) did not sign the split",
                            step.round,
                            unsigned.len()
                        ),
                    ));
                    self.phase = Phase::Keys;
                    self.deadline = Instant::now() + round_timeout;
                    return;
                }
                self.phase = Phase::Reveal {
                    step,
                    threshold,
                    survivors,
                    dropped,
                    masked,
                    metrics,
                    signatures,
                    reveals: BTreeMap::new(),
                };
                self.deadline = Instant::now() + round_timeout;
            }
            Phase::Reveal {
                step,
                threshold,
                survivors,
                dropped,
                masked,
                metrics,
                reveals,
                ..
            } => {
                let missing: Vec<u32> = survivors
                    .iter()
                    .copied()
                    .filter(|i| !reveals.contains_key(i) && active.contains(i))
                    .collect();
                let gone = survivors
                    .iter()
                    .filter(|i| !reveals.contains_key(i))
                    .count();
                if gone > 0 {
                    // A survivor vanished before revealing: its masks cannot be removed.
                    // Redo the round with fresh keys without it (nothing was unmasked).
                    for &i in &missing {
                        self.drop_site(
                            i,
                            "dropped",
                            format!("no reveal within the round timeout (round {})", step.round),
                        );
                    }
                    self.events.push((
                        "run.round.retry".into(),
                        format!("round {}: {gone} site(s) did not reveal", step.round),
                    ));
                    self.phase = Phase::Keys;
                    self.deadline = Instant::now() + round_timeout;
                    return;
                }
                match secagg::unmask(&masked, &dropped, &reveals, threshold) {
                    Ok(sum) => {
                        let sites: Vec<u32> = masked.keys().copied().collect();
                        self.complete_round(&step, sum, &sites, metrics)
                    }
                    Err(e) => self.fail(format!("round {}: unmasking failed: {e}", step.round)),
                }
            }
        }
    }

    fn complete_round(
        &mut self,
        step: &Step,
        sum: Vec<f64>,
        in_sum: &[u32],
        metrics: BTreeMap<u32, Metrics>,
    ) {
        let by_site = metrics
            .into_iter()
            .map(|(i, m)| (self.saved.sites[i as usize].site_id.clone(), m))
            .collect();
        let site_ids: Vec<String> = in_sum
            .iter()
            .map(|&i| self.saved.sites[i as usize].site_id.clone())
            .collect();
        let sites = site_ids.len();
        if let Err(e) = self.saved.coordinator.advance(&sum, &site_ids, by_site) {
            self.fail(format!("round {}: {e}", step.round));
            return;
        }
        if let Some(t) = self.round_started.take() {
            self.saved.round_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        self.events.push((
            "run.round".into(),
            format!(
                "round {} ({}) aggregated over {sites} sites",
                step.round,
                step.stage.name()
            ),
        ));
        self.dirty = true;
        if self.saved.coordinator.step.is_none() {
            self.status = "done".into();
            self.detail = format!("finished after {} rounds", step.round);
            self.phase = Phase::Over;
        } else {
            self.phase = Phase::Keys;
            self.deadline = Instant::now() + timeout(self.spec().run.round_timeout_s);
        }
    }

    fn view(&self) -> Value {
        let c = &self.saved.coordinator;
        let step = c.step.as_ref();
        let phase = match &self.phase {
            Phase::Keys => "keys",
            Phase::Collect { .. } => "collect",
            Phase::Confirm { .. } => "confirm",
            Phase::Reveal { .. } => "reveal",
            Phase::Over => "over",
        };
        let reporting = match &self.phase {
            Phase::Collect { masked, plain, .. } => masked.len() + plain.len(),
            Phase::Confirm { signatures, .. } => signatures.len(),
            Phase::Reveal { reveals, .. } => reveals.len(),
            _ => 0,
        };
        json!({
            "id": self.id,
            "study": self.study,
            "status": self.status,
            "detail": self.detail,
            "phase": phase,
            "round": step.map(|s| s.round),
            "stage": step.map(|s| s.stage.name()),
            "training_rounds_done": c.training_rounds(),
            "rounds": c.spec.run.rounds,
            "algorithm": c.spec.algorithm.kind.name(),
            "secure_aggregation": c.spec.privacy.secure_aggregation,
            "epsilon": c.spec.epsilon(),
            "sites": self.saved.sites,
            "active_sites": self.active().len(),
            "reporting": reporting,
            "history": c.history,
            "round_ms": self.saved.round_ms,
            "result": c.result,
            "version": self.version,
        })
    }
}

impl RunHandle {
    fn new(state: RunState) -> Arc<RunHandle> {
        Arc::new(RunHandle {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
        })
    }

    fn notify(&self) {
        let v = lock(&self.state).version;
        self.changed.send_if_modified(|x| {
            let moved = *x != v;
            *x = v;
            moved
        });
    }
}

// ---------------------------------------------------------------- the driver

/// Keeps one run moving: deadlines, saving after each completed round, the hub's audit
/// records, and the results dataset when it is done.
async fn drive(hub: Arc<Hub>, h: Arc<RunHandle>) {
    let mut rx = h.changed.subscribe();
    loop {
        let deadline = lock(&h.state).deadline;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                let mut st = lock(&h.state);
                if st.deadline <= Instant::now() {
                    st.progress(true);
                    // Nothing moved: look again no sooner than a round timeout from now.
                    if st.deadline <= Instant::now() {
                        st.deadline = Instant::now() + timeout(st.spec().run.round_timeout_s);
                    }
                }
            }
            r = rx.changed() => if r.is_err() { return },
        }
        h.notify();
        let over = save(&hub, &h).await;
        if over {
            // Saved, results stored: wake whoever follows the run.
            lock(&h.state).changed();
            h.notify();
            return;
        }
    }
}

/// Write what changed; returns true once the run is over and its outcome is stored.
async fn save(hub: &Arc<Hub>, h: &Arc<RunHandle>) -> bool {
    let (id, study, dirty, status, detail, saved, events) = {
        let mut st = lock(&h.state);
        let dirty = std::mem::take(&mut st.dirty);
        (
            st.id.clone(),
            st.study.clone(),
            dirty,
            st.status.clone(),
            st.detail.clone(),
            st.saved.clone(),
            std::mem::take(&mut st.events),
        )
    };
    for (action, outcome) in events {
        if let Err(e) = hub
            .audit_system(&action, &format!("study/{study}/run/{id}"), &outcome)
            .await
        {
            tracing::error!(error = %e, "audit append failed");
        }
    }
    if !dirty {
        return status != "running";
    }
    let state = serde_json::to_value(&saved).unwrap_or(Value::Null);
    let mut dataset = None;
    if status == "done" {
        match store_results(hub, &id, &study, &saved).await {
            Ok(d) => dataset = Some(d),
            Err(e) => {
                tracing::error!(run = %id, error = %e, "storing the run's results failed");
                let r = hub
                    .catalogue
                    .update_run(
                        &id,
                        "failed",
                        &format!("results could not be stored: {e}"),
                        &state,
                        None,
                    )
                    .await;
                if let Err(e) = r {
                    tracing::error!(run = %id, error = %e, "saving the run failed");
                }
                return true;
            }
        }
    }
    if let Err(e) = hub
        .catalogue
        .update_run(&id, &status, &detail, &state, dataset.as_deref())
        .await
    {
        tracing::error!(run = %id, error = %e, "saving the run failed");
        lock(&h.state).dirty = true;
    }
    status != "running"
}

/// The results as a dataset of the study: `model.safetensors` (when there is a model),
/// `result.json` (metrics, statistics, rounds, sites, timings), `spec.toml`, `run.json` (who
/// ran it, when).
async fn store_results(
    hub: &Arc<Hub>,
    id: &str,
    study: &str,
    saved: &Saved,
) -> Result<String, String> {
    let run = hub
        .catalogue
        .run(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the run row is gone")?;
    let s = hub
        .catalogue
        .study(study)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the study is gone")?;
    let creator = hub
        .catalogue
        .user(&run.created_by)
        .await
        .map_err(|e| e.to_string())?;
    let owner = creator
        .organisation
        .filter(|o| s.organisations.contains(o))
        .or_else(|| s.organisations.first().cloned())
        .ok_or("the study has no organisation to own the results")?;
    let result = saved.coordinator.result.clone().ok_or("no result")?;
    let dataset_id = uuid::Uuid::new_v4().to_string();
    let years = 10 * 365 * 86_400_000i64;
    let d = Dataset {
        pid: format!("urn:uuid:{dataset_id}"),
        id: dataset_id.clone(),
        study: study.into(),
        owner_organisation: owner,
        title: format!(
            "Federated run {id}: {} ({})",
            result.algorithm,
            if saved.coordinator.spec.title.is_empty() {
                study
            } else {
                &saved.coordinator.spec.title
            }
        ),
        licence: "study terms".into(),
        provenance: Provenance {
            site: saved
                .sites
                .iter()
                .filter(|s| s.status == "active")
                .map(|s| s.site_id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            deid_settings: "federated: no row left any site".into(),
            medfed_version: env!("CARGO_PKG_VERSION").into(),
        },
        retention_until_ms: now_ms() + years,
        legal_hold: false,
        created_ms: now_ms(),
    };
    let (dk, wrapped) = hub.keys.new_data_key(&dataset_id);
    hub.catalogue
        .create_dataset(&d, &wrapped, &run.created_by)
        .await
        .map_err(|e| e.to_string())?;
    let record = json!({
        "run": id,
        "study": study,
        "submitted_by": run.created_by,
        "submitted_ms": run.created_ms,
        "finished_ms": now_ms(),
        "sites": saved.sites,
        "medfed_version": env!("CARGO_PKG_VERSION"),
    });
    let mut objects: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "result.json",
            "application/json",
            serde_json::to_vec_pretty(&json!({
                "result": result,
                "history": saved.coordinator.history,
                "round_ms": saved.round_ms,
            }))
            .unwrap_or_default(),
        ),
        ("spec.toml", "application/toml", run.spec.into_bytes()),
        (
            "run.json",
            "application/json",
            serde_json::to_vec_pretty(&record).unwrap_or_default(),
        ),
    ];
    if let Some(model) = result.model_safetensors() {
        objects.insert(0, ("model.safetensors", "application/octet-stream", model));
    }
    let mut entries = Vec::new();
    let mut blobs = Vec::new();
    for (name, media_type, bytes) in objects {
        let object = uuid::Uuid::new_v4().simple().to_string();
        let key = ObjectKey::parse(&dataset_id, &object).map_err(|e| e.to_string())?;
        entries.push(ObjectEntry {
            dataset: dataset_id.clone(),
            id: object,
            name: name.into(),
            media_type: media_type.into(),
            size: bytes.len() as i64,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            created_ms: now_ms(),
        });
        blobs.push((key, bytes));
    }
    hub.blocking(move |b| {
        for (key, bytes) in &blobs {
            medfed_store::put_encrypted(b, key, &dk, &bytes[..])?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?;
    for e in &entries {
        hub.catalogue
            .add_object(e, None)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(dataset_id)
}

impl Registry {
    fn get(&self, id: &str) -> Option<Arc<RunHandle>> {
        lock(&self.runs).get(id).cloned()
    }

    fn insert(&self, id: &str, h: Arc<RunHandle>) {
        lock(&self.runs).insert(id.to_string(), h);
    }
}

/// A site's task for `run` ended at the site (refused by its policy, failed, rejected by a
/// person): the run goes on without it, at once rather than at the timeout.
pub(crate) fn site_left(hub: &Hub, run: &str, site: &str, detail: &str) {
    let Some(h) = hub.runs.get(run) else {
        return;
    };
    {
        let mut st = lock(&h.state);
        if let Some(i) = st.saved.sites.iter().position(|x| x.site_id == site) {
            st.apply(
                i as u32,
                SiteMessage::Refuse {
                    reason: detail.to_string(),
                },
            );
        }
    }
    h.notify();
}

fn start_driving(hub: &Arc<Hub>, id: &str, state: RunState) {
    let h = RunHandle::new(state);
    hub.runs.insert(id, h.clone());
    tokio::spawn(drive(hub.clone(), h));
}

/// At start: pick up every run that was running, from its last completed round. Sites rejoin
/// with fresh keys; the first round waits up to the spec's start timeout for them.
pub(crate) async fn resume_all(hub: &Arc<Hub>) -> Result<usize, crate::HubError> {
    let runs = hub.catalogue.running_runs().await?;
    let mut resumed = 0;
    for run in runs {
        let saved: Saved = match serde_json::from_value(run.state.clone()) {
            Ok(s) => s,
            Err(e) => {
                hub.catalogue
                    .update_run(
                        &run.id,
                        "failed",
                        &format!("saved state unreadable: {e}"),
                        &run.state,
                        None,
                    )
                    .await?;
                continue;
            }
        };
        let round = saved.coordinator.step.as_ref().map_or(0, |s| s.round);
        let start = timeout(saved.coordinator.spec.run.start_timeout_s);
        hub.audit_system(
            "run.resume",
            &format!("study/{}/run/{}", run.study, run.id),
            &format!("resumed at round {round}"),
        )
        .await?;
        tracing::info!(run = %run.id, round, "resuming a federated run");
        start_driving(
            hub,
            &run.id,
            RunState {
                id: run.id.clone(),
                study: run.study.clone(),
                saved,
                status: "running".into(),
                detail: String::new(),
                phase: Phase::Keys,
                keys: BTreeMap::new(),
                deadline: Instant::now() + start,
                round_started: None,
                version: 0,
                dirty: false,
                events: Vec::new(),
            },
        );
        resumed += 1;
    }
    Ok(resumed)
}

// ---------------------------------------------------------------- handlers

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRun {
    /// The study spec, as TOML text.
    spec: String,
}

/// Whether a site's last report lists `table` for `study` with every column the spec uses.
fn table_problem(site: &medfed_catalogue::Site, study: &str, spec: &StudySpec) -> Option<String> {
    let tables = site.state["tables"].as_array().cloned().unwrap_or_default();
    let Some(t) = tables
        .iter()
        .find(|t| t["study"] == study && t["id"] == spec.table_of(&site.id))
    else {
        return Some(format!(
            "site {} has not registered a table {:?} for this study",
            site.id,
            spec.table_of(&site.id)
        ));
    };
    let columns: Vec<&str> = t["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut wanted: Vec<&str> = spec
        .data
        .features
        .iter()
        .map(|f| f.split_once('=').map_or(f.as_str(), |(n, _)| n))
        .collect();
    wanted.push(&spec.data.label);
    if let Some(s) = &spec.data.split {
        wanted.push(&s.column);
    }
    let missing: Vec<&str> = wanted
        .into_iter()
        .filter(|w| !columns.contains(w))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "site {}'s table {:?} lacks column(s) {}",
            site.id,
            spec.table_of(&site.id),
            missing.join(", ")
        )
    })
}

async fn create_run(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    JsonBody(b): JsonBody<NewRun>,
) -> ApiResult<impl IntoResponse> {
    let s = managed_study(&hub, &c, &study).await?;
    let spec = StudySpec::from_toml(&b.spec).map_err(|e| ApiError::invalid(e.to_string()))?;
    if spec.study != study {
        return Err(ApiError::invalid(format!(
            "the spec is for study {:?}, not {study:?}",
            spec.study
        )));
    }
    let enrolled = hub
        .catalogue
        .list_sites(
            Some(&s.organisations),
            medfed_catalogue::Page {
                limit: 1000,
                offset: 0,
            },
        )
        .await?;
    let enrolled: Vec<_> = enrolled
        .into_iter()
        .filter(|x| x.revoked_ms.is_none())
        .collect();
    let chosen: Vec<_> = if spec.sites.is_empty() {
        enrolled
    } else {
        let mut v = Vec::new();
        for id in &spec.sites {
            let site = enrolled.iter().find(|x| &x.id == id).ok_or_else(|| {
                ApiError::invalid(format!("{id} is not an active site of this study"))
            })?;
            v.push(site.clone());
        }
        v
    };
    if chosen.len() < spec.run.min_sites {
        return Err(ApiError::invalid(format!(
            "{} active site(s) in the study; the spec needs at least {}",
            chosen.len(),
            spec.run.min_sites
        )));
    }
    if let Some(unknown) = spec
        .data
        .site_tables
        .keys()
        .find(|k| !chosen.iter().any(|x| &x.id == *k))
    {
        return Err(ApiError::invalid(format!(
            "data.site_tables names {unknown}, which is not a site of this run"
        )));
    }
    if let Some(p) = chosen.iter().find_map(|x| table_problem(x, &study, &spec)) {
        return Err(ApiError::invalid(p));
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let now = now_ms();
    let sites: Vec<RunSite> = chosen
        .iter()
        .map(|x| RunSite {
            site_id: x.id.clone(),
            organisation: x.organisation.clone(),
            status: "active".into(),
            detail: String::new(),
        })
        .collect();
    let saved = Saved {
        coordinator: Coordinator::new(spec.clone()),
        sites,
        round_ms: Vec::new(),
    };
    hub.catalogue
        .create_run(&Run {
            id: id.clone(),
            study: study.clone(),
            spec: b.spec.clone(),
            status: "running".into(),
            detail: String::new(),
            state: serde_json::to_value(&saved).unwrap_or(Value::Null),
            result_dataset: None,
            created_by: c.user.id.clone(),
            created_ms: now,
            updated_ms: now,
        })
        .await?;
    for (i, x) in chosen.iter().enumerate() {
        hub.catalogue
            .create_task(&Task {
                id: uuid::Uuid::new_v4().simple().to_string(),
                site_id: x.id.clone(),
                study: study.clone(),
                kind: "federated-learning".into(),
                params: json!({"run": id, "index": i, "spec": b.spec}),
                status: "queued".into(),
                detail: String::new(),
                progress: json!({}),
                created_by: c.user.id.clone(),
                created_ms: now,
                updated_ms: now,
            })
            .await?;
    }
    c.note.resource(format!("study/{study}/run/{id}"));
    start_driving(
        &hub,
        &id,
        RunState {
            id: id.clone(),
            study: study.clone(),
            saved,
            status: "running".into(),
            detail: String::new(),
            phase: Phase::Keys,
            keys: BTreeMap::new(),
            deadline: Instant::now() + timeout(spec.run.start_timeout_s),
            round_started: None,
            version: 0,
            dirty: false,
            events: Vec::new(),
        },
    );
    hub.sites_changed();
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": id, "study": study, "sites": chosen.iter().map(|x| &x.id).collect::<Vec<_>>(), "epsilon": spec.epsilon()}),
        ),
    ))
}

fn stored_view(run: &Run) -> Value {
    let saved: Option<Saved> = serde_json::from_value(run.state.clone()).ok();
    json!({
        "id": run.id,
        "study": run.study,
        "status": run.status,
        "detail": run.detail,
        "created_by": run.created_by,
        "created_ms": run.created_ms,
        "result_dataset": run.result_dataset,
        "sites": saved.as_ref().map(|s| &s.sites),
        "history": saved.as_ref().map(|s| &s.coordinator.history),
        "round_ms": saved.as_ref().map(|s| &s.round_ms),
        "result": saved.as_ref().and_then(|s| s.coordinator.result.as_ref()),
        "rounds": saved.as_ref().map(|s| s.coordinator.spec.run.rounds),
        "training_rounds_done": saved.as_ref().map(|s| s.coordinator.training_rounds()),
        "algorithm": saved.as_ref().map(|s| s.coordinator.spec.algorithm.kind.name()),
    })
}

#[derive(Deserialize, Default)]
struct RunQuery {
    /// Long poll: answer once the run's version differs from this (or after `wait_s`).
    after: Option<u64>,
    wait_s: Option<u64>,
}

async fn get_run(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path((study, id)): Path<(String, String)>,
    Query(q): Query<RunQuery>,
) -> ApiResult<Json<Value>> {
    study_for(&hub, &c, &study).await?;
    let run = hub
        .catalogue
        .run(&id)
        .await?
        .filter(|r| r.study == study)
        .ok_or_else(ApiError::not_found)?;
    c.note.resource(format!("study/{study}/run/{id}"));
    let mut v = get_run_view(&hub, &run, q).await?;
    // The model and metrics are for the study's coordinators and researchers, as the results
    // dataset is; other members follow the progress only.
    if let (false, Some(o)) = (sees_results(&c, &study), v.as_object_mut()) {
        o.remove("result");
    }
    Ok(Json(v))
}

/// A site that is still "active" in a running run but whose node has not been heard from
/// within `[sites] online_within_s` (killed, cut off) is shown as such, with when it was last
/// seen, rather than as simply active until the round timeout drops it.
async fn mark_offline_sites(hub: &Arc<Hub>, v: &mut Value) -> ApiResult<()> {
    let within_ms = hub.config.sites.online_within_s as i64 * 1000;
    let Some(sites) = v.get_mut("sites").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let mut offline = 0;
    for s in sites.iter_mut() {
        let Some(id) = s["site_id"].as_str().map(str::to_string) else {
            continue;
        };
        let last_seen = hub.catalogue.site(&id).await?.and_then(|x| x.last_seen_ms);
        let online = last_seen.is_some_and(|t| medfed_catalogue::now_ms() - t <= within_ms);
        if s["status"] == "active" && !online {
            offline += 1;
        }
        s["online"] = json!(online);
        s["last_seen_ms"] = json!(last_seen);
    }
    v["active_sites_offline"] = json!(offline);
    Ok(())
}

/// The files a finished run stored, by name.
const RESULT_FILES: [&str; 4] = ["model.safetensors", "result.json", "spec.toml", "run.json"];

/// Whether `c` sees a run's model and metrics: its study's coordinators and researchers.
fn sees_results(c: &Caller, study: &str) -> bool {
    c.principal.grants.iter().any(|g| {
        g.study == study && matches!(g.role, StudyRole::StudyCoordinator | StudyRole::Researcher)
    })
}

/// One file of a finished run's results (model, metrics, spec, submitter), for the study's
/// coordinators and researchers. They are aggregates released under the sites' disclosure
/// rules, not rows: the coordinator who ran the study gets them here without the data-reading
/// role the results dataset otherwise asks for.
async fn run_result_file(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path((study, id, name)): Path<(String, String, String)>,
) -> ApiResult<axum::response::Response> {
    study_for(&hub, &c, &study).await?;
    let run = hub
        .catalogue
        .run(&id)
        .await?
        .filter(|r| r.study == study)
        .ok_or_else(ApiError::not_found)?;
    c.note.resource(format!("study/{study}/run/{id}/results"));
    if !sees_results(&c, &study) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "not permitted"));
    }
    if !RESULT_FILES.contains(&name.as_str()) {
        return Err(ApiError::not_found());
    }
    let dataset = match &run.result_dataset {
        Some(d) => hub.catalogue.dataset(d).await?,
        None => None,
    }
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the run has stored no results"))?;
    let object = hub
        .catalogue
        .object_named(&dataset.id, &name)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let body = crate::api::stream_object(&hub, &dataset, &object).await?;
    let mut r = axum::response::Response::new(body);
    if let Ok(v) = axum::http::HeaderValue::from_str(&object.media_type) {
        r.headers_mut().insert(axum::http::header::CONTENT_TYPE, v);
    }
    Ok(r)
}

async fn get_run_view(hub: &Arc<Hub>, run: &Run, q: RunQuery) -> ApiResult<Value> {
    let id = run.id.clone();
    let Some(h) = hub.runs.get(&id) else {
        return Ok(stored_view(run));
    };
    if let Some(after) = q.after {
        let mut rx = h.changed.subscribe();
        let wait = Duration::from_secs(q.wait_s.unwrap_or(10).min(30));
        let deadline = tokio::time::Instant::now() + wait;
        while *rx.borrow_and_update() == after {
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let mut v = lock(&h.state).view();
    mark_offline_sites(hub, &mut v).await?;
    // Stored fields (who, when, the results dataset) once the driver has saved them.
    let run = hub.catalogue.run(&id).await?.unwrap_or_else(|| run.clone());
    v["created_by"] = json!(run.created_by);
    v["created_ms"] = json!(run.created_ms);
    v["result_dataset"] = json!(run.result_dataset);
    if v["status"] != "running" && run.status == "running" {
        // Over, but not saved yet: report it as still finishing.
        v["status"] = json!("finishing");
    }
    Ok(v)
}

async fn list_runs(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(study): Path<String>,
    Query(p): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    study_for(&hub, &c, &study).await?;
    let page = p.page(&hub.config.limits)?;
    let runs = hub.catalogue.list_study_runs(&study, peek(page)).await?;
    Ok(paged(
        runs.iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "status": r.status,
                    "detail": r.detail,
                    "created_by": r.created_by,
                    "created_ms": r.created_ms,
                    "result_dataset": r.result_dataset,
                })
            })
            .collect(),
        page,
    ))
}

/// Stop a running run (study coordinator): its sites are told to stop at their next exchange;
/// nothing more is aggregated and no results are stored.
async fn cancel_run(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path((study, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    managed_study(&hub, &c, &study).await?;
    hub.catalogue
        .run(&id)
        .await?
        .filter(|r| r.study == study)
        .ok_or_else(ApiError::not_found)?;
    c.note.resource(format!("study/{study}/run/{id}"));
    let h = hub.runs.get(&id);
    let cancelled = h.as_ref().is_some_and(|h| {
        let mut st = lock(&h.state);
        if st.status != "running" {
            return false;
        }
        st.status = "cancelled".into();
        st.detail = format!("cancelled by {}", c.user.id);
        st.phase = Phase::Over;
        st.dirty = true;
        st.changed();
        true
    });
    if !cancelled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the run is not running",
        ));
    }
    if let Some(h) = h {
        h.notify();
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A site's step in a run: apply its message, answer with its next instruction (waiting for
/// one up to `wait_ms`).
async fn exchange(
    State(hub): State<Arc<Hub>>,
    c: Caller,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<Exchange>,
) -> ApiResult<Json<Instruction>> {
    let site = c.site.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "only enrolled site nodes (mutual TLS)",
        )
    })?;
    let Some(h) = hub.runs.get(&id) else {
        // Not driven by this hub process: finished before a restart, or unknown.
        let run = hub
            .catalogue
            .run(&id)
            .await?
            .ok_or_else(ApiError::not_found)?;
        let member = serde_json::from_value::<Saved>(run.state.clone())
            .map(|s| s.sites.iter().any(|x| x.site_id == site.id))
            .unwrap_or(false);
        if !member {
            return Err(ApiError::not_found());
        }
        c.note.resource(format!("study/{}/run/{id}", run.study));
        return Ok(Json(match run.status.as_str() {
            "done" => Instruction::Finished { detail: run.detail },
            _ => Instruction::Stop {
                detail: format!("the run {}: {}", run.status, run.detail),
            },
        }));
    };
    let (index, study) = {
        let st = lock(&h.state);
        let i = st
            .saved
            .sites
            .iter()
            .position(|x| x.site_id == site.id)
            .ok_or_else(ApiError::not_found)?;
        (i as u32, st.study.clone())
    };
    c.note.resource(format!("study/{study}/run/{id}"));
    let mut rx = h.changed.subscribe();
    {
        let mut st = lock(&h.state);
        st.apply(index, b.message);
    }
    h.notify();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(b.wait_ms.min(25_000));
    loop {
        rx.borrow_and_update();
        let ins = lock(&h.state).instruction_for(index);
        if ins != Instruction::Wait || tokio::time::Instant::now() >= deadline {
            return Ok(Json(ins));
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Ok(Json(Instruction::Wait)) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
// Tests read their fixtures directly; the rule is for the request path.
#[allow(clippy::disallowed_methods)]
mod tests {
    //! The run state machine without a network: simulated sites answer its instructions with
    //! the real site computations and secure aggregation; sites stall, die and withhold
    //! reveals; deadlines are made to pass by hand.

    use super::*;
    use medfed_federated::Disclosure;
    use medfed_federated::protocol::Participant;
    use medfed_federated::run::{SiteData, site_release};

    const RULES: Disclosure = Disclosure {
        min_rows: 10,
        min_cell: 5,
    };

    fn spec(extra: &str) -> StudySpec {
        StudySpec::from_toml(&format!(
            "study = \"s\"\n[data]\ntable = \"heart\"\nlabel = \"target\"\nfeatures = [\"age\", \"sex\", \"thalach\", \"oldpeak\", \"cp=4\"]\nsplit = {{ column = \"flamby_split\" }}\n[algorithm]\nkind = \"fedavg\"\nlearning_rate = 0.05\n[run]\nrounds = 6\n{extra}"
        ))
        .unwrap()
    }

    fn heart(spec: &StudySpec, n: usize) -> Vec<SiteData> {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../medfed/demo-data/heart");
        ["cleveland", "hungary", "long_beach_va", "cleveland"][..n]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(dir.join(format!("{f}.csv"))).unwrap();
                SiteData::from_csv(&text, spec).unwrap()
            })
            .collect()
    }

    fn state(spec: &StudySpec, n: usize) -> RunState {
        RunState {
            id: "run".into(),
            study: "s".into(),
            saved: Saved {
                coordinator: Coordinator::new(spec.clone()),
                sites: (0..n)
                    .map(|i| RunSite {
                        site_id: format!("site{i}"),
                        organisation: "org".into(),
                        status: "active".into(),
                        detail: String::new(),
                    })
                    .collect(),
                round_ms: Vec::new(),
            },
            status: "running".into(),
            detail: String::new(),
            phase: Phase::Keys,
            keys: BTreeMap::new(),
            deadline: Instant::now() + Duration::from_secs(3600),
            round_started: None,
            version: 0,
            dirty: false,
            events: Vec::new(),
        }
    }

    /// A site (the protocol side the site node runs): `silent_from` (round) it answers
    /// nothing more; `no_sign_at` it releases but never signs the split; `no_reveal_at` it
    /// signs but never reveals.
    struct Sim {
        data: SiteData,
        site: Participant,
        silent_from: u64,
        no_sign_at: u64,
        no_reveal_at: u64,
    }

    fn act(st: &mut RunState, i: u32, s: &mut Sim, spec: &StudySpec) -> bool {
        let round = st.saved.coordinator.step.as_ref().map_or(0, |x| x.round);
        if round >= s.silent_from {
            return false;
        }
        let ins = st.instruction_for(i);
        match &ins {
            Instruction::Wait | Instruction::Finished { .. } | Instruction::Stop { .. } => {
                return false;
            }
            Instruction::SignSplit { round, .. } if *round == s.no_sign_at => return false,
            Instruction::Reveal { round, .. } if *round == s.no_reveal_at => return false,
            _ => {}
        }
        let data = &s.data;
        match s.site.answer(ins, |step, me| {
            site_release(spec, data, step, u64::from(me), &RULES)
        }) {
            medfed_federated::protocol::Outcome::Send { message, .. } => st.apply(i, message),
            other => panic!("unexpected {other:?}"),
        }
        true
    }

    /// Run to the end; when nobody can act, the deadline passes.
    fn drive(st: &mut RunState, sims: &mut [Sim], spec: &StudySpec) {
        for _ in 0..10_000 {
            if st.status != "running" {
                return;
            }
            let mut moved = false;
            for (i, s) in sims.iter_mut().enumerate() {
                moved |= act(st, i as u32, s, spec);
            }
            if !moved {
                st.deadline = Instant::now() - Duration::from_millis(1);
                st.progress(true);
            }
        }
        panic!("the run never ended");
    }

    /// The same run with plain sums over the sites that took part in each round (the first
    /// `sites` of them: dropped sites are the last ones here).
    fn replay(
        spec: &StudySpec,
        data: &[SiteData],
        history: &[medfed_federated::run::RoundRecord],
    ) -> Vec<f64> {
        let mut c = Coordinator::new(spec.clone());
        for h in history {
            let step = c.step.clone().unwrap();
            let mut sum: Vec<f64> = Vec::new();
            for (i, d) in data.iter().enumerate().take(h.sites) {
                let v = site_release(spec, d, &step, i as u64, &RULES)
                    .unwrap()
                    .vector;
                if sum.is_empty() {
                    sum = vec![0.0; v.len()];
                }
                sum.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
            }
            c.advance(&sum, &h.site_ids, BTreeMap::new()).unwrap();
        }
        c.result.unwrap().params
    }

    fn sims(data: &[SiteData]) -> Vec<Sim> {
        data.iter()
            .map(|d| Sim {
                data: d.clone(),
                site: Participant::new(2),
                silent_from: u64::MAX,
                no_sign_at: u64::MAX,
                no_reveal_at: u64::MAX,
            })
            .collect()
    }

    fn assert_close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
    }

    #[test]
    fn a_run_with_every_site_equals_the_plain_sum_and_so_does_one_without_secure_aggregation() {
        for extra in ["", "[privacy]\nsecure_aggregation = false\n"] {
            let spec = spec(extra);
            let data = heart(&spec, 3);
            let mut st = state(&spec, 3);
            drive(&mut st, &mut sims(&data), &spec);
            assert_eq!(st.status, "done", "{}", st.detail);
            let c = &st.saved.coordinator;
            assert!(c.history.iter().all(|h| h.sites == 3));
            assert_close(
                &c.result.as_ref().unwrap().params,
                &replay(&spec, &data, &c.history),
            );
        }
    }

    #[test]
    fn a_site_silent_after_its_key_and_one_that_withholds_its_reveal_are_dropped_and_the_sums_stay_exact()
     {
        let spec = spec("min_sites = 2\n");
        let data = heart(&spec, 4);
        let mut st = state(&spec, 4);
        let mut s = sims(&data);
        s[3].silent_from = 3;
        s[2].no_reveal_at = 5;
        drive(&mut st, &mut s, &spec);
        assert_eq!(st.status, "done", "{}", st.detail);
        let status: Vec<&str> = st.saved.sites.iter().map(|x| x.status.as_str()).collect();
        assert_eq!(status, ["active", "active", "dropped", "dropped"]);
        let c = &st.saved.coordinator;
        let sites: Vec<usize> = c.history.iter().map(|h| h.sites).collect();
        // Moments and round 2 with four; site 3 silent from round 3 (masks recovered); site 2
        // withheld its round-5 reveal (the round was redone without it).
        assert_eq!(sites, [4, 4, 3, 3, 2, 2, 2, 2]);
        assert_close(
            &c.result.as_ref().unwrap().params,
            &replay(&spec, &data, &c.history),
        );
        assert!(st.events.iter().any(|(a, _)| a == "run.round.retry"));
    }

    #[test]
    fn a_survivor_that_never_signs_the_split_is_dropped_and_the_round_redone_without_it() {
        let spec = spec("min_sites = 2\n");
        let data = heart(&spec, 4);
        let mut st = state(&spec, 4);
        let mut s = sims(&data);
        s[3].no_sign_at = 3;
        drive(&mut st, &mut s, &spec);
        assert_eq!(st.status, "done", "{}", st.detail);
        let site = &st.saved.sites[3];
        assert_eq!(site.status, "dropped");
        assert!(site.detail.contains("no signature"), "{}", site.detail);
        let c = &st.saved.coordinator;
        let sites: Vec<usize> = c.history.iter().map(|h| h.sites).collect();
        // Nothing of round 3 was revealed: it was redone by the three others.
        assert_eq!(sites[..2], [4, 4]);
        assert!(sites[2..].iter().all(|&n| n == 3), "{sites:?}");
        assert_close(
            &c.result.as_ref().unwrap().params,
            &replay(&spec, &data, &c.history),
        );
        assert!(
            st.events
                .iter()
                .any(|(a, d)| a == "run.round.retry" && d.contains("did not sign"))
        );
    }

    #[test]
    fn two_of_four_sites_silent_in_one_round_leave_enough_for_the_study_and_the_round_is_redone() {
        let spec = spec("min_sites = 2\n");
        let data = heart(&spec, 4);
        let mut st = state(&spec, 4);
        let mut s = sims(&data);
        s[2].silent_from = 4;
        s[3].silent_from = 4;
        drive(&mut st, &mut s, &spec);
        assert_eq!(st.status, "done", "{}", st.detail);
        let c = &st.saved.coordinator;
        let sites: Vec<usize> = c.history.iter().map(|h| h.sites).collect();
        assert_eq!(sites, [4, 4, 4, 2, 2, 2, 2, 2]);
        assert_close(
            &c.result.as_ref().unwrap().params,
            &replay(&spec, &data, &c.history),
        );
    }

    #[test]
    fn a_run_every_site_refuses_fails_saying_so_and_a_mix_is_counted_by_cause() {
        let spec = spec("min_sites = 3\n");
        let mut st = state(&spec, 3);
        for i in 0..3 {
            st.apply(
                i,
                SiteMessage::Refuse {
                    reason: "not allowed by this site's policy".into(),
                },
            );
        }
        assert_eq!(st.status, "failed");
        assert_eq!(
            st.detail,
            "every site (3) refused the run under its policy; see each site's reason"
        );
        assert!(!st.detail.contains("ready within"), "{}", st.detail);

        let mut st = state(&spec, 3);
        st.apply(
            0,
            SiteMessage::Refuse {
                reason: "policy".into(),
            },
        );
        st.deadline = Instant::now() - Duration::from_millis(1);
        st.progress(true);
        assert_eq!(st.status, "failed");
        assert_eq!(
            st.detail,
            "0 of 3 site(s) ready, the spec needs at least 3: 1 refused under their policy, 2 did not answer within the timeout"
        );
    }

    #[test]
    fn too_few_sites_fail_the_run_with_the_reason_instead_of_waiting() {
        let spec = spec("min_sites = 3\n");
        let data = heart(&spec, 3);
        let mut st = state(&spec, 3);
        let mut s = sims(&data);
        s[0].silent_from = 2;
        drive(&mut st, &mut s, &spec);
        assert_eq!(st.status, "failed");
        assert!(st.detail.contains("at least 3"), "{}", st.detail);
        assert_eq!(
            st.instruction_for(1),
            Instruction::Stop {
                detail: format!("the run failed: {}", st.detail)
            }
        );
    }
}
