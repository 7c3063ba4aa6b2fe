//! The site's part in a federated run: read the registered table the spec selects, and for
//! every step the hub asks for, check the site's rules, compute the release, mask it (secure
//! aggregation) and send it; reveal what the protocol allows once the hub names the
//! survivors. Every release, signature, reveal and refusal is recorded (and synced) in the
//! site's audit log before it is sent; when the log cannot be written nothing is sent and the
//! site leaves the run, saying why. Rows never leave; the hub sees only masked vectors and the
//! sum.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use medfed_federated::protocol::{Exchange, Instruction, Note, Outcome, Participant, SiteMessage};
use medfed_federated::run::{SiteData, site_release};
use medfed_federated::spec::StudySpec;
use serde_json::json;

use crate::node::{LocalTask, Shared, backoff, lock, off_worker};

/// How long one exchange may wait at the hub for the next instruction.
const WAIT_MS: u64 = 20_000;

/// The study spec, the site's data and disclosure rules for a task, or why the site cannot
/// take part.
fn prepare(
    s: &Shared,
    task: &LocalTask,
) -> Result<(StudySpec, SiteData, medfed_federated::Disclosure), String> {
    let spec = StudySpec::from_toml(task.params["spec"].as_str().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    if spec.study != task.study {
        return Err(format!(
            "the spec is for study {}, not {}",
            spec.study, task.study
        ));
    }
    let sp = s.policy.study(&task.study).map_err(|e| e.to_string())?;
    sp.check_run(&spec)?;
    let site_id = lock(&s.identity).enrolled.site_id.clone();
    let table = s
        .policy
        .tables
        .iter()
        .find(|t| t.id == spec.table_of(&site_id) && t.study == task.study)
        .ok_or_else(|| {
            format!(
                "no table {:?} is registered for this study here",
                spec.table_of(&site_id)
            )
        })?;
    let split = spec.data.split.as_ref().map(|s| s.column.as_str());
    let read = match table.path.extension().and_then(|e| e.to_str()) {
        Some("csv") => std::fs::read_to_string(&table.path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                medfed_federated::table::Table::from_csv_keeping(&text, split)
                    .map_err(|e| e.to_string())
            }),
        Some("parquet") => crate::tables::parquet_table(&table.path, split),
        other => Err(format!(
            "unsupported table format {other:?} (csv or parquet)"
        )),
    };
    let (rows, texts) = read.map_err(|e| format!("table {:?} unreadable: {e}", table.id))?;
    let data = SiteData::from_table(rows, &texts, &spec)
        .map_err(|e| format!("table {:?}: {e}", table.id))?;
    let rules = sp.disclosure();
    // Disclosure control on the design and against earlier runs, before anything is released.
    medfed_federated::run::check_disclosure(&spec, &data, &rules).map_err(|e| e.to_string())?;
    remember_selection(s, &table.id, &data, rules.min_rows)?;
    Ok((spec, data, rules))
}

/// Refuse a run whose rows differ from an earlier run's on `table` by fewer than the minimum,
/// else remember its rows (`<storage>/state/federated-selections.json`, written atomically).
fn remember_selection(
    s: &Shared,
    table: &str,
    data: &SiteData,
    min_rows: u64,
) -> Result<(), String> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let path = s.policy.storage.dir.join("state/federated-selections.json");
    let mut memory: medfed_federated::run::DisclosureMemory = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("the record of earlier runs is unreadable: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => return Err(format!("the record of earlier runs is unreadable: {e}")),
    };
    memory
        .check(table, data, min_rows)
        .map_err(|e| e.to_string())?;
    memory.remember(table, data);
    let bytes = serde_json::to_vec(&memory).map_err(|e| e.to_string())?;
    crate::identity::write_atomically(&path, &bytes, false)
        .map_err(|e| format!("the record of earlier runs cannot be written: {e}"))
}

fn running(s: &Shared, task: &str) -> bool {
    !s.stop.load(Ordering::Relaxed)
        && lock(&s.tasks)
            .get(task)
            .is_some_and(|t| t.status == "running")
}

fn set_progress(s: &Shared, task: &str, progress: serde_json::Value) {
    if let Some(t) = lock(&s.tasks).get_mut(task) {
        t.progress = progress;
        t.reported = false;
    }
}

/// Rules under which nothing can be released (used when the site leaves the run).
fn nothing_leaves() -> medfed_federated::Disclosure {
    medfed_federated::Disclosure {
        min_rows: u64::MAX,
        min_cell: u64::MAX,
    }
}

/// Record a release, a refusal, a signature or a reveal in the site's audit log, durably, before
/// it is sent; the error means it must not be sent.
fn record(
    s: &Shared,
    task: &str,
    resource: &str,
    note: Note,
) -> Result<(), medfed_audit::AuditError> {
    let resource = resource.to_string();
    match note {
        Note::Released {
            round,
            stage,
            values,
            rows,
            masked,
        } => {
            let how = if masked {
                "masked"
            } else {
                "unmasked (secure aggregation off)"
            };
            s.audit_durably(
                "federated.release",
                resource,
                &format!("round {round} {stage}: {values} values over {rows} rows, {how}"),
            )?;
            set_progress(s, task, json!({"round": round, "stage": stage}));
            Ok(())
        }
        Note::Refused(reason) => s.audit_durably("federated.refuse", resource, &reason),
        Note::SplitSigned {
            round,
            survivors,
            dropped,
        } => s.audit_durably(
            "federated.sign-split",
            resource,
            &format!("round {round}: survivors {survivors:?}, dropped {dropped:?}"),
        ),
        Note::Revealed {
            round,
            survivors,
            dropped,
        } => s.audit_durably(
            "federated.reveal",
            resource,
            &format!(
                "round {round}: self-mask shares for sites {survivors:?}, pairwise seeds for dropped sites {dropped:?}"
            ),
        ),
        Note::RevealRefused(reason) => {
            s.audit_durably("federated.reveal-refused", resource, &reason)
        }
    }
}

/// Why a site stops when its audit log cannot hold what it would send.
fn unwritable(e: &medfed_audit::AuditError) -> String {
    format!("site audit log unwritable: {e}; nothing more is sent for this run")
}

/// Take part in the run of `task` until it finishes, fails, or the task stops here.
pub(crate) async fn participate(s: Arc<Shared>, task: LocalTask) {
    let run = task.params["run"].as_str().unwrap_or_default().to_string();
    let resource = format!("study/{}/run/{run}", task.study);
    let path = format!("/api/v1/site/runs/{run}/exchange");
    let (spec, data, rules, refusal) = match off_worker(|| prepare(&s, &task)) {
        Ok((spec, data, rules)) => (Some(spec), Some(data), rules, None),
        Err(reason) => {
            if let Err(e) =
                off_worker(|| s.audit_durably("federated.refuse", resource.clone(), &reason))
            {
                // Not even the refusal leaves: the hub drops this site at the round timeout.
                tracing::error!(run, error = %e, "left the run unannounced: the site's audit log cannot be written");
                s.set_task(&task.id, "failed", &unwritable(&e));
                return;
            }
            (
                None,
                None,
                nothing_leaves(),
                Some(SiteMessage::Refuse { reason }),
            )
        }
    };
    let mut me = Participant::new(spec.as_ref().map_or(2, |s| s.run.min_sites));
    let mut message = refusal.unwrap_or_else(|| me.join());
    let mut failures = 0u32;
    while running(&s, &task.id) {
        let client = lock(&s.client).clone();
        let body = serde_json::to_value(Exchange {
            message: message.clone(),
            wait_ms: WAIT_MS,
        })
        .unwrap_or_default();
        let answer = client.call(reqwest::Method::POST, &path, Some(body)).await;
        let ins: Instruction = match answer.map(serde_json::from_value) {
            Ok(Ok(ins)) => {
                failures = 0;
                ins
            }
            Ok(Err(e)) => {
                tracing::warn!(run, error = %e, "unreadable instruction from the hub");
                tokio::time::sleep(backoff(failures, s.options.max_backoff)).await;
                failures = failures.saturating_add(1);
                Instruction::Wait
            }
            Err(medfed_hub::client::ClientError::Status { status, .. })
                if status.as_u16() == 404 =>
            {
                Instruction::Stop {
                    detail: "the hub does not know this run".into(),
                }
            }
            Err(e) => {
                // The same message again after a pause: the hub takes each one once.
                tracing::debug!(run, error = %e, "run exchange failed; retrying");
                tokio::time::sleep(backoff(failures, s.options.max_backoff)).await;
                failures = failures.saturating_add(1);
                continue;
            }
        };
        // Training and masking take the CPU for a while: not on an async worker.
        let outcome = off_worker(|| {
            me.answer(ins, |step, index| match (&spec, &data) {
                (Some(spec), Some(data)) => {
                    site_release(spec, data, step, u64::from(index), &rules)
                }
                _ => Err(medfed_federated::FederatedError::Spec(
                    "this site does not take part in the run".into(),
                )),
            })
        });
        message = match outcome {
            Outcome::Send { message, note } => {
                if let Some(note) = note
                    && let Err(e) = off_worker(|| record(&s, &task.id, &resource, note))
                {
                    // Fail closed: what the log does not hold is not sent, and the masking
                    // state that went with it is gone, so this site leaves the run.
                    tracing::error!(run, error = %e, "left the run: the site's audit log cannot be written");
                    s.set_task(&task.id, "failed", &unwritable(&e));
                    return;
                }
                message
            }
            Outcome::Finished(detail) => {
                s.audit("federated.finish", resource.clone(), &detail);
                s.set_task(&task.id, "done", &detail);
                return;
            }
            Outcome::Stopped(detail) => {
                s.audit("federated.stop", resource.clone(), &detail);
                s.set_task(&task.id, "failed", &detail);
                return;
            }
        };
        tokio::task::yield_now().await;
    }
    if lock(&s.tasks)
        .get(&task.id)
        .is_some_and(|t| t.status == "running")
    {
        // The node is stopping: the task stays running and resumes at the next start.
        return;
    }
    // Cancelled or rejected here meanwhile: tell the hub this site leaves (recorded first,
    // like every refusal; unrecorded, the hub drops the site at the round timeout instead).
    let reason = "the task was stopped at the site";
    if let Err(e) = off_worker(|| s.audit_durably("federated.refuse", resource.clone(), reason)) {
        tracing::error!(run, error = %e, "left the run unannounced: the site's audit log cannot be written");
        return;
    }
    let client = lock(&s.client).clone();
    let leave = Exchange {
        message: SiteMessage::Refuse {
            reason: reason.into(),
        },
        wait_ms: 0,
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(
            reqwest::Method::POST,
            &path,
            serde_json::to_value(leave).ok(),
        ),
    )
    .await;
}
