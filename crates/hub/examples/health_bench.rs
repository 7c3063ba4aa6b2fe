//! Does the hub keep answering while it works? (run by `bench/hub/health.sh`, release build)
//!
//! 1,000 concurrent clients, each on its own TLS connection, ask `GET /api/v1/health` in a
//! loop, first on an idle hub, then while uploaders push large objects through the chunked
//! upload API (SHA-256 per chunk and whole, AES-256-GCM at rest, fsync on publish). Printed:
//! p50 / p99 / max latency of both phases, the ratio loaded / idle of the p99, and whether the
//! loaded p99 stays under the 50 ms bar of issue 13. Blocking work on the async workers (the
//! audit append of every request, hashing, file reads, fsyncs) shows up here as a p99 far above
//! the idle one.
//!
//! Clients, uploaders and hub share the same cores, so the figures include the clients' own
//! TLS work: they are an upper bound of what the hub alone would show.

// Benchmark programs set up with blocking calls; the rule is for the hub's request path.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{Res, arg, percentile, write_payload};
use medfed_hub::client::HubClient;
use medfed_policy::StudyRole;

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
                match client
                    .call(reqwest::Method::GET, "/api/v1/health", None)
                    .await
                {
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

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Res<()> {
    let clients_n = arg("--clients", 1000) as usize;
    let per_client = arg("--requests", 20) as usize;
    let uploaders = arg("--uploaders", 4) as usize;
    let upload_bytes = arg("--upload-bytes", 64 << 20);
    let interval = Duration::from_millis(arg("--interval-ms", 0));
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();

    let mut cfg = medfed_hub::HubConfig {
        data_dir: dir.join("hub"),
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    // Every client of the benchmark comes from 127.0.0.1: the per-address cap is for the
    // internet, not for this test.
    cfg.limits.max_connections_per_address = clients_n + uploaders + 16;
    let running = medfed_hub::start(cfg).await?;
    let hub = running.hub.clone();
    let base = format!("https://127.0.0.1:{}", running.addr.port());
    let cat = &hub.catalogue;
    cat.create_organisation("org1", "One").await?;
    cat.create_study("bench", "Bench", &["org1".into()]).await?;
    let op = cat.create_user("local:op", Some("org1"), false).await?;
    cat.grant(&op.id, "bench", StudyRole::SiteOperator).await?;
    let op_token = medfed_hub::issue_token(&hub, &op.id, 1).await?;
    let opc = HubClient::new(&base, running.ca_pem.as_deref())?.with_token(&op_token);
    let ds = opc
        .call(
            reqwest::Method::POST,
            "/api/v1/studies/bench/datasets",
            Some(serde_json::json!({"title": "bench", "licence": "none", "retention_until": "2099-01-01", "provenance": {"deid_settings": "basic", "medfed_version": "bench"}})),
        )
        .await?;
    let ds = ds["id"].as_str().unwrap_or_default().to_string();
    let payloads: Vec<_> = (0..uploaders)
        .map(|u| {
            let p = dir.join(format!("payload-{u}.bin"));
            write_payload(&p, upload_bytes, u as u64).map(|_| p)
        })
        .collect::<Res<_>>()?;

    // Each client connects (TLS handshake) before any clock starts.
    let mut clients = Vec::with_capacity(clients_n);
    for _ in 0..clients_n {
        let c = HubClient::new(&base, running.ca_pem.as_deref())?;
        clients.push(c);
    }
    futures_util::future::join_all(
        clients
            .iter()
            .map(|c| c.call(reqwest::Method::GET, "/api/v1/health", None)),
    )
    .await;

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
    let idle = health_phase(&clients, per_client, interval).await?;
    report("idle hub", &idle);

    let stop = Arc::new(AtomicBool::new(false));
    let uploaded = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    let failed_uploads = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    for p in payloads.clone() {
        let (opc, ds, stop, uploaded) = (opc.clone(), ds.clone(), stop.clone(), uploaded.clone());
        let failed_uploads = failed_uploads.clone();
        workers.push(tokio::spawn(async move {
            // Each upload under a new name (a hard link): a dataset holds one object per name.
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let name = p.with_file_name(format!(
                    "{}-{i}.bin",
                    p.file_stem().unwrap_or_default().to_string_lossy()
                ));
                if std::fs::hard_link(&p, &name).is_err() {
                    break;
                }
                match opc
                    .upload_file(&ds, &name, "application/octet-stream", None, &|_| {})
                    .await
                {
                    Ok(_) => {
                        uploaded.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed_uploads
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(e.to_string()),
                }
                let _ = std::fs::remove_file(&name);
            }
        }));
    }
    // Let the uploads get going before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let loaded = health_phase(&clients, per_client, interval).await?;
    let busy = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    report(
        &format!(
            "while {uploaders} uploaders push {} MB objects",
            upload_bytes >> 20
        ),
        &loaded,
    );
    println!(
        "  uploads completed during the loaded phase and after: {} ({:.1} s of load)",
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
    running.stop().await;
    Ok(())
}
