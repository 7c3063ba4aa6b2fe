//! Does the hub keep answering while it works? (run by `bench/hub/health.sh`, release build)
//!
//! 1,000 concurrent clients, each on its own TLS connection, ask `GET /api/v1/health` in a
//! loop, first on an idle hub, then while uploaders push large objects through the chunked
//! upload API (SHA-256 per chunk and whole, AES-256-GCM at rest, fsync on publish). Printed:
//! p50 / p99 / max latency of both phases, the ratio loaded / idle of the p99, and whether the
//! loaded p99 stays under the 50 ms bar of issue 13. Blocking work on the async workers (the
//! audit append of every request, hashing, file reads, fsyncs) shows up here as a p99 far above
//! the idle one. The liveness probe is not audited; beside it 20 clients ask an audited route
//! (`GET /api/v1/me`, answered once its audit record is synced) at the same pace, and their
//! latency is printed too.
//!
//! The hub runs on its own tokio runtime, the health clients on another, as they would on
//! different machines. The uploaders stand for remote sites: each is a child process of this
//! program, at `--uploader-nice` (default 10) so that their client-side hashing and TLS, which
//! a real deployment runs elsewhere, do not take the cores from the hub on a small machine;
//! `--uploader-nice 0` runs them at the hub's priority (the harder, same-machine case). The
//! hub's own work for each upload (TLS, hashing, encryption, fsync) runs in the hub's process at
//! its own priorities either way.

// Benchmark programs set up with blocking calls; the rule is for the hub's request path.
#![allow(clippy::disallowed_methods)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{Res, arg, percentile, write_payload};
use medfed_hub::client::HubClient;
use medfed_policy::StudyRole;

/// Clients asking an audited route beside the liveness probe's load.
const AUDITED_CLIENTS: usize = 20;

struct Phase {
    latencies: Vec<Duration>,
    errors: usize,
    wall: Duration,
}

/// Every client asks /health `per_client` times, all starting together: back to back
/// (`interval` zero: a closed loop, which measures throughput as much as latency), or paced at
/// one request per `interval` each, spread evenly over the clients (an open load of
/// clients / interval requests a second, the way many users' consoles and sites poll).
async fn health_phase(clients: &[HubClient], per_client: usize, interval: Duration) -> Res<Phase> {
    paced_phase(clients, "/api/v1/health", per_client, interval).await
}

/// The liveness probe's load with, beside it, `audited` clients asking an authenticated route
/// (`/api/v1/me`) at the same pace: the probe is not audited, every other request waits for its
/// audit record to be written, so their latency is reported too.
async fn both_phases(
    clients: &[HubClient],
    audited: &[HubClient],
    per_client: usize,
    interval: Duration,
) -> Res<(Phase, Phase)> {
    let (h, a) = tokio::join!(
        health_phase(clients, per_client, interval),
        paced_phase(audited, "/api/v1/me", per_client, interval)
    );
    Ok((h?, a?))
}

async fn paced_phase(
    clients: &[HubClient],
    path: &'static str,
    per_client: usize,
    interval: Duration,
) -> Res<Phase> {
    let start = Arc::new(tokio::sync::Barrier::new(clients.len() + 1));
    let mut handles = Vec::new();
    let n = clients.len() as u32;
    for (k, client) in clients.iter().enumerate() {
        let client = client.clone();
        let start = start.clone();
        handles.push(tokio::spawn(async move {
            start.wait().await;
            let begun = tokio::time::Instant::now() + interval * k as u32 / n.max(1);
            let mut lat = Vec::with_capacity(per_client);
            let mut errors = 0usize;
            for q in 0..per_client {
                if !interval.is_zero() {
                    tokio::time::sleep_until(begun + interval * q as u32).await;
                }
                let t = Instant::now();
                match client.call(reqwest::Method::GET, path, None).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    start.wait().await;
    let t = Instant::now();
    let mut phase = Phase {
        latencies: Vec::new(),
        errors: 0,
        wall: Duration::ZERO,
    };
    for h in handles {
        let (l, e) = h.await?;
        phase.latencies.extend(l);
        phase.errors += e;
    }
    phase.wall = t.elapsed();
    phase.latencies.sort();
    Ok(phase)
}

fn report(name: &str, p: &Phase) {
    println!(
        "  {name}: {} ok, {} failed in {:.2} s ({:.0} requests/s); p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p.latencies.len(),
        p.errors,
        p.wall.as_secs_f64(),
        p.latencies.len() as f64 / p.wall.as_secs_f64(),
        percentile(&p.latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&p.latencies, 0.99).as_secs_f64() * 1e3,
        p.latencies
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    );
}

fn str_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

/// Child mode: one remote site's uploader. Uploads `payload` under fresh names until killed,
/// printing one line per completed upload and one `failed: ...` line per failed one.
fn uploader(base: &str) -> Res<()> {
    let ca = str_arg("--ca").map(PathBuf::from);
    let token = str_arg("--token").unwrap_or_default();
    let ds = str_arg("--dataset").unwrap_or_default();
    let payload = PathBuf::from(str_arg("--payload").unwrap_or_default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let opc = HubClient::new(base, ca.as_deref())?.with_token(&token);
        for i in 1u64.. {
            // Each upload under a new name (a hard link): a dataset holds one object per name.
            let name = payload.with_file_name(format!(
                "{}-{i}.bin",
                payload.file_stem().unwrap_or_default().to_string_lossy()
            ));
            std::fs::hard_link(&payload, &name)?;
            match opc
                .upload_file(&ds, &name, "application/octet-stream", None, &|_| {})
                .await
            {
                Ok(_) => println!("uploaded"),
                Err(e) => println!("failed: {e}"),
            }
            let _ = std::fs::remove_file(&name);
        }
        Ok(())
    })
}

/// Starts `uploaders` child processes at `nice`, each pushing its own payload, and counts
/// their completed and failed uploads as they report them.
fn spawn_uploaders(
    base: &str,
    ca: Option<&Path>,
    token: &str,
    ds: &str,
    payloads: &[PathBuf],
    nice: u64,
) -> Res<(
    Vec<std::process::Child>,
    Arc<AtomicU64>,
    Arc<std::sync::Mutex<Vec<String>>>,
)> {
    let exe = std::env::current_exe()?;
    let uploaded = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut children = Vec::new();
    for p in payloads {
        let mut cmd = std::process::Command::new("nice");
        cmd.arg("-n").arg(nice.to_string()).arg(&exe);
        cmd.args(["--upload-to", base, "--token", token, "--dataset", ds]);
        cmd.arg("--payload").arg(p);
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
        let out = child.stdout.take().ok_or("uploader without stdout")?;
        let (uploaded, failed) = (uploaded.clone(), failed.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                match line.strip_prefix("failed: ") {
                    Some(e) => failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(e.to_string()),
                    None => {
                        uploaded.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        children.push(child);
    }
    Ok((children, uploaded, failed))
}

fn main() -> Res<()> {
    if let Some(base) = str_arg("--upload-to") {
        return uploader(&base);
    }
    let clients_n = arg("--clients", 1000) as usize;
    let per_client = arg("--requests", 20) as usize;
    let uploaders = arg("--uploaders", 4) as usize;
    let upload_bytes = arg("--upload-bytes", 64 << 20);
    let interval = Duration::from_millis(arg("--interval-ms", 0));
    let nice = arg("--uploader-nice", 10);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();

    // The hub's runtime: its own worker threads, as in `medfed hub serve`.
    let hub_rt = medfed_hub::server_runtime()?;
    let mut cfg = medfed_hub::HubConfig {
        data_dir: dir.join("hub"),
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    // Every client of the benchmark comes from 127.0.0.1: the per-address cap is for the
    // internet, not for this test.
    cfg.limits.max_connections_per_address = clients_n + AUDITED_CLIENTS + uploaders + 16;
    let (running, op_token) = hub_rt.block_on(async {
        let running = medfed_hub::start(cfg).await?;
        let cat = &running.hub.catalogue;
        cat.create_organisation("org1", "One").await?;
        cat.create_study("bench", "Bench", &["org1".into()]).await?;
        let op = cat.create_user("local:op", Some("org1"), false).await?;
        cat.grant(&op.id, "bench", StudyRole::SiteOperator).await?;
        let op_token = medfed_hub::issue_token(&running.hub, &op.id, 1).await?;
        Res::Ok((running, op_token))
    })?;
    let base = format!("https://127.0.0.1:{}", running.addr.port());
    let ca = running.ca_pem.clone();

    let clients_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("clients")
        .enable_all()
        .build()?;
    let (clients, audited, ds) = clients_rt.block_on(async {
        let opc = HubClient::new(&base, ca.as_deref())?.with_token(&op_token);
        let ds = opc
            .call(
                reqwest::Method::POST,
                "/api/v1/studies/bench/datasets",
                Some(serde_json::json!({"title": "bench", "licence": "none", "retention_until": "2099-01-01", "provenance": {"deid_settings": "basic", "medfed_version": "bench"}})),
            )
            .await?;
        let ds = ds["id"].as_str().unwrap_or_default().to_string();
        // Each client connects (TLS handshake) before any clock starts.
        let mut clients = Vec::with_capacity(clients_n);
        for _ in 0..clients_n {
            clients.push(HubClient::new(&base, ca.as_deref())?);
        }
        futures_util::future::join_all(
            clients
                .iter()
                .map(|c| c.call(reqwest::Method::GET, "/api/v1/health", None)),
        )
        .await;
        let mut audited = Vec::with_capacity(AUDITED_CLIENTS);
        for _ in 0..AUDITED_CLIENTS {
            audited.push(HubClient::new(&base, ca.as_deref())?.with_token(&op_token));
        }
        futures_util::future::join_all(
            audited
                .iter()
                .map(|c| c.call(reqwest::Method::GET, "/api/v1/me", None)),
        )
        .await;
        Res::Ok((clients, audited, ds))
    })?;
    let payloads: Vec<_> = (0..uploaders)
        .map(|u| {
            let p = dir.join(format!("payload-{u}.bin"));
            write_payload(&p, upload_bytes, u as u64).map(|_| p)
        })
        .collect::<Res<_>>()?;

    println!(
        "GET /api/v1/health from {clients_n} concurrent clients x {per_client} requests, each on its own TLS connection:"
    );
    if interval.is_zero() {
        println!("  (closed loop: each client sends its next request when the last is answered)");
    } else {
        println!(
            "  (paced: each client one request every {} ms, {:.0} requests/s offered)",
            interval.as_millis(),
            clients_n as f64 / interval.as_secs_f64()
        );
    }
    let (idle, idle_audited) =
        clients_rt.block_on(both_phases(&clients, &audited, per_client, interval))?;
    report("idle hub", &idle);
    report(
        &format!("  beside it, {AUDITED_CLIENTS} clients' audited GET /api/v1/me"),
        &idle_audited,
    );

    let (mut children, uploaded, failed_uploads) =
        spawn_uploaders(&base, ca.as_deref(), &op_token, &ds, &payloads, nice)?;
    // Let the uploads get going before measuring.
    std::thread::sleep(Duration::from_millis(1500));
    let t = Instant::now();
    let (loaded, loaded_audited) =
        clients_rt.block_on(both_phases(&clients, &audited, per_client, interval))?;
    let busy = t.elapsed();
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    report(
        &format!(
            "while {uploaders} uploader processes (nice {nice}) push {} MB objects",
            upload_bytes >> 20
        ),
        &loaded,
    );
    report(
        &format!("  beside it, {AUDITED_CLIENTS} clients' audited GET /api/v1/me"),
        &loaded_audited,
    );
    println!(
        "  uploads completed during the loaded phase: {} ({:.1} s of load)",
        uploaded.load(Ordering::Relaxed),
        busy.as_secs_f64()
    );
    let failed = failed_uploads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(first) = failed.first() {
        println!("  uploads failed: {} (first: {first})", failed.len());
    }
    let (p_idle, p_loaded) = (
        percentile(&idle.latencies, 0.99),
        percentile(&loaded.latencies, 0.99),
    );
    println!(
        "  ratio p99 loaded / idle: {:.2}; loaded p99 {:.1} ms {} the 50 ms bar",
        p_loaded.as_secs_f64() / p_idle.as_secs_f64().max(1e-9),
        p_loaded.as_secs_f64() * 1e3,
        if p_loaded < Duration::from_millis(50) {
            "is under"
        } else {
            "is OVER"
        }
    );
    drop(clients);
    hub_rt.block_on(running.stop());
    Ok(())
}
