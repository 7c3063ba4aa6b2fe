//! `medfed study run SPEC.toml`: submit a federated study spec to the hub and follow the run
//! (round, stage, sites reporting) to its results; `medfed study show` prints a run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use medfed_hub::client::HubClient;
use serde_json::Value;

use crate::hub_cmd::runtime;

#[derive(Subcommand)]
pub enum StudyCommand {
    /// Submit a study spec (TOML) to the hub and follow the run to its results.
    Run(RunArgs),
    /// Print a run: status, rounds, sites, metrics, where the results are.
    Show(ShowArgs),
    /// Cancel a running run (study coordinator): its sites stop; no results are stored.
    Cancel(CancelArgs),
    /// Download a finished run's results (model.safetensors, result.json, spec.toml, run.json)
    /// into a folder (study coordinators and researchers).
    Results(ResultsArgs),
}

#[derive(Args)]
pub struct ResultsArgs {
    study: String,
    run: String,
    /// Folder to write the files into (created; existing files are not replaced)
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Args)]
pub struct CancelArgs {
    study: String,
    run: String,
    #[command(flatten)]
    hub: HubArgs,
}

#[derive(Args)]
pub struct HubArgs {
    /// The hub, e.g. https://127.0.0.1:8443
    #[arg(long, env = "MEDFED_HUB")]
    hub: String,
    /// CA certificate to trust for the hub (PEM)
    #[arg(long)]
    ca: Option<PathBuf>,
    /// API token of a study coordinator [default: $MEDFED_TOKEN]
    #[arg(long, env = "MEDFED_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Args)]
pub struct RunArgs {
    spec: PathBuf,
    #[command(flatten)]
    hub: HubArgs,
    /// Submit and print the run id without following it.
    #[arg(long)]
    detach: bool,
    /// Print the final run as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    study: String,
    run: String,
    #[command(flatten)]
    hub: HubArgs,
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: StudyCommand) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async {
        match cmd {
            StudyCommand::Run(a) => {
                let text = std::fs::read_to_string(&a.spec)
                    .with_context(|| format!("reading {}", a.spec.display()))?;
                let spec = medfed_federated::spec::StudySpec::from_toml(&text)
                    .with_context(|| a.spec.display().to_string())?;
                let client =
                    HubClient::new(&a.hub.hub, a.hub.ca.as_deref())?.with_token(&a.hub.token);
                let id = submit(&client, &spec.study, &text).await?;
                if a.detach {
                    println!("{id}");
                    return Ok(ExitCode::SUCCESS);
                }
                let view = follow(&client, &spec.study, &id, true).await?;
                finish(&view, a.json)
            }
            StudyCommand::Cancel(a) => {
                let client =
                    HubClient::new(&a.hub.hub, a.hub.ca.as_deref())?.with_token(&a.hub.token);
                let (status, v) = client
                    .send(client.request(
                        reqwest::Method::DELETE,
                        &format!("/api/v1/studies/{}/runs/{}", a.study, a.run),
                    ))
                    .await?;
                if !status.is_success() {
                    anyhow::bail!(
                        "the hub refused: {status} {}",
                        v["detail"].as_str().unwrap_or_default()
                    );
                }
                println!("run {} cancelled", a.run);
                Ok(ExitCode::SUCCESS)
            }
            StudyCommand::Results(a) => {
                let client =
                    HubClient::new(&a.hub.hub, a.hub.ca.as_deref())?.with_token(&a.hub.token);
                download_results(&client, &a).await
            }
            StudyCommand::Show(a) => {
                let client =
                    HubClient::new(&a.hub.hub, a.hub.ca.as_deref())?.with_token(&a.hub.token);
                let view = client
                    .call(
                        reqwest::Method::GET,
                        &format!("/api/v1/studies/{}/runs/{}", a.study, a.run),
                        None,
                    )
                    .await?;
                finish(&view, a.json)
            }
        }
    })
}

/// Every result file the run stored; a model is absent for statistics runs.
async fn download_results(client: &HubClient, a: &ResultsArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut written = 0;
    for name in ["result.json", "spec.toml", "run.json", "model.safetensors"] {
        let path = format!("/api/v1/studies/{}/runs/{}/results/{name}", a.study, a.run);
        let resp = client
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .with_context(|| format!("asking the hub for {name}"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND && name == "model.safetensors" && written > 0 {
            continue;
        }
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            let detail: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            anyhow::bail!(
                "the hub refused {name}: {status} {}",
                detail["detail"].as_str().unwrap_or_default()
            );
        }
        let dest = a.out.join(name);
        let keep = medfed_durable::Publish {
            replace: false,
            ..medfed_durable::Publish::REPLACE
        };
        medfed_durable::write_atomically(&dest, &bytes, keep)
            .with_context(|| format!("writing {} (an existing file is kept)", dest.display()))?;
        println!("{} ({} bytes)", dest.display(), bytes.len());
        written += 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn finish(view: &Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
    } else {
        print!("{}", summary(view));
    }
    Ok(if view["status"] == "done" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Submit a spec; the run id.
pub async fn submit(client: &HubClient, study: &str, spec: &str) -> anyhow::Result<String> {
    let created = client
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/studies/{study}/runs"),
            Some(serde_json::json!({ "spec": spec })),
        )
        .await
        .context("the hub refused the run")?;
    Ok(created["id"].as_str().unwrap_or_default().to_string())
}

/// Follow a run until it is over (done or failed, and saved); its final view.
pub async fn follow(
    client: &HubClient,
    study: &str,
    id: &str,
    progress: bool,
) -> anyhow::Result<Value> {
    let bar = if progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} round {pos}/{len} {wide_msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let mut version: Option<u64> = None;
    loop {
        let mut path = format!("/api/v1/studies/{study}/runs/{id}");
        if let Some(v) = version {
            path.push_str(&format!("?after={v}&wait_s=10"));
        }
        let view = client.call(reqwest::Method::GET, &path, None).await?;
        let status = view["status"].as_str().unwrap_or("?").to_string();
        bar.set_length(view["rounds"].as_u64().unwrap_or(0));
        bar.set_position(view["training_rounds_done"].as_u64().unwrap_or(0));
        let sites = view["sites"].as_array().map_or(0, Vec::len);
        // The last completed round's figures: training loss (Newton), largest change.
        let last = view["history"].as_array().and_then(|h| h.last()).cloned();
        let figures = last.map_or(String::new(), |h| {
            let mut f = String::new();
            if let Some(l) = h["loss"].as_f64() {
                f.push_str(&format!(" · loss {l:.4}"));
            }
            if let Some(c) = h["change"].as_f64() {
                f.push_str(&format!(" · change {c:.1e}"));
            }
            f
        });
        let offline = match view["active_sites_offline"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!(" ({n} offline)"),
        };
        bar.set_message(format!(
            "{} · {} · {}/{} sites active{offline} · {} reporting{figures}",
            status,
            view["stage"].as_str().unwrap_or("-"),
            view["active_sites"].as_u64().unwrap_or(0),
            sites,
            view["reporting"].as_u64().unwrap_or(0),
        ));
        if status != "running" && status != "finishing" {
            bar.finish_and_clear();
            return Ok(view);
        }
        version = view["version"].as_u64();
        if version.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// A list of site ids for people, `-` when the hub did not say.
fn ids(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|x| x.as_str().unwrap_or("?"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

fn num(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}

/// A run for people: status, sites, evaluation, privacy, timings, where the results are.
pub fn summary(view: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        format!(
            "run {}: {} ({}){}",
            view["id"].as_str().unwrap_or("?"),
            view["status"].as_str().unwrap_or("?"),
            view["algorithm"].as_str().unwrap_or("?"),
            view["detail"]
                .as_str()
                .filter(|d| !d.is_empty())
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ),
    );
    for s in view["sites"].as_array().into_iter().flatten() {
        line(
            &mut out,
            format!(
                "  site {:<34} {}{}{}",
                s["site_id"].as_str().unwrap_or("?"),
                s["status"].as_str().unwrap_or("?"),
                if s["status"] == "active" && s["online"] == false {
                    ", offline: not heard from within the hub's online window"
                } else {
                    ""
                },
                s["detail"]
                    .as_str()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        );
    }
    let result = &view["result"];
    if let Some(eval) = result.get("evaluation").filter(|e| !e.is_null()) {
        line(
            &mut out,
            format!(
                "  {:<36} {:>6} {:>8} {:>8} {:>8} {:>8}",
                "evaluation", "n", "accuracy", "AUC", "sens.", "spec."
            ),
        );
        for (site, m) in eval["per_site"].as_object().into_iter().flatten() {
            line(
                &mut out,
                format!(
                    "  {:<36} {:>6} {:>8} {:>8} {:>8} {:>8}",
                    site,
                    m["n"],
                    num(&m["accuracy"]),
                    num(&m["auc"]),
                    num(&m["sensitivity"]),
                    num(&m["specificity"])
                ),
            );
        }
        let o = &eval["overall"];
        line(
            &mut out,
            format!(
                "  {:<36} {:>6} {:>8} {:>8} {:>8} {:>8}",
                "overall (secure sum of bins)",
                o["n"],
                num(&o["accuracy"]),
                num(&o["auc"]),
                num(&o["sensitivity"]),
                num(&o["specificity"])
            ),
        );
        line(
            &mut out,
            format!("  mean per-site accuracy {}", num(&o["mean_site_accuracy"])),
        );
    }
    for s in result["statistics"].as_array().into_iter().flatten() {
        line(
            &mut out,
            format!(
                "  {:<20} n {:>6}  mean {:>10}  sd {:>10}  quartiles {} / {} / {}  (sites {}; histogram {} of {})",
                s["feature"].as_str().unwrap_or("?"),
                s["n"],
                num(&s["mean"]),
                num(&s["sd"]),
                num(&s["q25"]),
                num(&s["median"]),
                num(&s["q75"]),
                ids(&s["moment_site_ids"]),
                s["histogram_sites"],
                s["histogram_round_site_ids"].as_array().map_or(0, Vec::len),
            ),
        );
    }
    for t in result["crosstabs"].as_array().into_iter().flatten() {
        let counts: Vec<u64> = t["counts"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let levels: Vec<String> = t["levels"]
            .as_array()
            .map(|l| l.iter().map(|v| v.to_string()).collect())
            .unwrap_or_default();
        let cells: Vec<String> = levels
            .iter()
            .zip(counts.chunks(2))
            .map(|(l, c)| format!("{l}: {}/{}", c[0], c.get(1).copied().unwrap_or(0)))
            .collect();
        line(
            &mut out,
            format!(
                "  {} by label (label 0/1): {}  ({} of the sites {})",
                t["feature"].as_str().unwrap_or("?"),
                cells.join(", "),
                t["sites"],
                ids(&t["round_site_ids"]),
            ),
        );
    }
    if let Some(eps) = result["epsilon"].as_f64() {
        line(
            &mut out,
            format!(
                "  differential privacy: epsilon {eps:.2} at delta {} per site",
                result["delta"]
            ),
        );
    }
    if let Some(ms) = view["round_ms"].as_array().filter(|m| !m.is_empty()) {
        let mut v: Vec<f64> = ms.iter().filter_map(Value::as_f64).collect();
        v.sort_by(f64::total_cmp);
        line(
            &mut out,
            format!(
                "  {} rounds, median {:.1} ms per round",
                v.len(),
                v[v.len() / 2]
            ),
        );
    }
    for w in result["warnings"].as_array().into_iter().flatten() {
        line(&mut out, format!("  note: {}", w.as_str().unwrap_or("?")));
    }
    if let Some(d) = view["result_dataset"].as_str() {
        line(
            &mut out,
            format!("  results (model.safetensors, result.json, spec.toml, run.json): dataset {d}"),
        );
    }
    out
}
