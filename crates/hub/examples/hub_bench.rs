//! The hub benchmark (run by `bench/hub/run.sh`, release build):
//! 1. upload throughput of one large object through the hub (HTTPS, chunked, SHA-256 per chunk
//!    and whole, AES-256-GCM at rest, fsync on publish) as a ratio of a plain loopback TCP copy
//!    of the same bytes into a file (also fsynced);
//! 2. latency of catalogue queries (dataset search and QIDO-RS, 50 results a page) from many
//!    concurrent clients, each with its own TLS connection: p50 / p99 / max and throughput.
//!
//! Clients run in the same process on the same cores as the hub, so the figures include the
//! clients' own TLS and parsing work.

// Benchmark programs set up with blocking calls; the rule is for the hub's request path.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};

use medfed_catalogue::{Dataset, InstanceEntry, ObjectEntry, Provenance, now_ms};
mod common;

use common::{Res, arg, percentile, write_payload};
use medfed_hub::client::HubClient;
use medfed_policy::StudyRole;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The same bytes over a loopback TCP connection into a file, synced: the plain copy.
async fn loopback_copy(src: &Path, dest: &Path) -> Res<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let dest = dest.to_path_buf();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await?;
        let mut out = tokio::fs::File::create(&dest).await?;
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).await?;
        }
        out.sync_all().await?;
        Ok::<(), std::io::Error>(())
    });
    let t = Instant::now();
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let mut f = tokio::fs::File::open(src).await?;
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        sock.write_all(&buf[..n]).await?;
    }
    sock.shutdown().await?;
    server.await??;
    Ok(t.elapsed())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Res<()> {
    let bytes = arg("--bytes", 1 << 30);
    let clients = arg("--clients", 1000) as usize;
    let per_client = arg("--queries", 10) as usize;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let payload = dir.join("payload.bin");
    write_payload(&payload, bytes, 0)?;

    let cfg = medfed_hub::HubConfig {
        data_dir: dir.join("hub"),
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    let running = medfed_hub::start(cfg).await?;
    let hub = running.hub.clone();
    let base = format!("https://127.0.0.1:{}", running.addr.port());
    let cat = &hub.catalogue;
    cat.create_organisation("org1", "One").await?;
    cat.create_study("bench", "Bench", &["org1".into()]).await?;
    let op = cat.create_user("local:op", Some("org1"), false).await?;
    cat.grant(&op.id, "bench", StudyRole::SiteOperator).await?;
    let op_token = medfed_hub::issue_token(&hub, &op.id, 1).await?;
    let anon = HubClient::new(&base, running.ca_pem.as_deref())?;
    let opc = anon.with_token(&op_token);
    let ds = opc
        .call(
            reqwest::Method::POST,
            "/api/v1/studies/bench/datasets",
            Some(serde_json::json!({"title": "bench", "licence": "none", "retention_until": "2099-01-01", "provenance": {"site": "org1", "deid_settings": "basic", "medfed_version": "bench"}})),
        )
        .await?;
    let ds = ds["id"].as_str().unwrap_or_default().to_string();

    // 1. Upload throughput.
    let plain = loopback_copy(&payload, &dir.join("plain-copy.bin")).await?;
    std::fs::remove_file(dir.join("plain-copy.bin"))?;
    let t = Instant::now();
    opc.upload_file(&ds, &payload, "application/octet-stream", None, &|_| {})
        .await?;
    let through_hub = t.elapsed();
    let mb = bytes as f64 / 1e6;
    println!("upload of {:.0} MB:", mb);
    println!(
        "  plain loopback TCP copy into a file: {:.2} s ({:.0} MB/s)",
        plain.as_secs_f64(),
        mb / plain.as_secs_f64()
    );
    println!(
        "  through the hub (HTTPS, chunked, SHA-256, AES-256-GCM, fsync): {:.2} s ({:.0} MB/s)",
        through_hub.as_secs_f64(),
        mb / through_hub.as_secs_f64()
    );
    println!(
        "  ratio hub / plain throughput: {:.2}",
        plain.as_secs_f64() / through_hub.as_secs_f64()
    );
    std::fs::remove_file(&payload)?;

    // 2. Query latency. A catalogue of 200 datasets and 20,000 indexed instances.
    for d in 0..200 {
        let id = format!("00000000-0000-4000-8000-{d:012}");
        let dataset = Dataset {
            id: id.clone(),
            pid: format!("urn:uuid:{id}"),
            study: "bench".into(),
            owner_organisation: "org1".into(),
            title: format!("dataset {d}"),
            licence: "none".into(),
            provenance: Provenance::default(),
            retention_until_ms: i64::MAX / 2,
            legal_hold: false,
            created_ms: now_ms(),
        };
        let (_, w) = hub.keys.new_data_key(&id);
        cat.create_dataset(&dataset, &w, &op.id).await?;
        for i in 0..100 {
            let object = format!("{d:04}{i:04}");
            let o = ObjectEntry {
                dataset: id.clone(),
                id: object.clone(),
                name: "x.dcm".into(),
                media_type: "application/dicom".into(),
                size: 1,
                sha256: String::new(),
                created_ms: now_ms(),
            };
            let inst = InstanceEntry {
                dataset: id.clone(),
                object,
                study_uid: format!("2.25.{}", d * 10 + i / 10),
                series_uid: format!("2.25.{d}.{i}"),
                sop_uid: format!("2.25.{d}.{i}.1"),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                modality: "CT".into(),
                patient_id: format!("PSEUDO-{d}"),
                patient_name: format!("PSEUDO^{d}"),
                study_date: "20240101".into(),
                series_number: "1".into(),
                instance_number: i.to_string(),
            };
            cat.add_object(&o, Some(&inst)).await?;
        }
    }
    let mut tokens = Vec::new();
    for r in 0..20 {
        let u = cat
            .create_user(&format!("local:researcher-{r}"), Some("org1"), false)
            .await?;
        cat.grant(&u.id, "bench", StudyRole::Researcher).await?;
        tokens.push(medfed_hub::issue_token(&hub, &u.id, 1).await?);
    }
    let mut handles = Vec::new();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients + 1));
    for c in 0..clients {
        let client =
            HubClient::new(&base, running.ca_pem.as_deref())?.with_token(&tokens[c % tokens.len()]);
        let start = start.clone();
        let only = std::env::var("HUB_BENCH_PATH").ok();
        handles.push(tokio::spawn(async move {
            // Connect (TLS handshake) before the clock starts.
            let _ = client
                .call(reqwest::Method::GET, "/api/v1/health", None)
                .await;
            start.wait().await;
            let mut lat = Vec::with_capacity(per_client);
            let mut errors = 0usize;
            for q in 0..per_client {
                let path = match only.as_deref() {
                    Some(p) => p,
                    None if q % 2 == 0 => "/api/v1/datasets?limit=50",
                    None => "/api/v1/dicomweb/studies?limit=50",
                };
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
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.await?;
        all.extend(l);
        errors += e;
    }
    let wall = t.elapsed();
    all.sort();
    println!(
        "catalogue queries: {clients} concurrent clients x {per_client} (dataset search and QIDO-RS studies, 50 per page; 200 datasets, 20,000 instances):"
    );
    println!(
        "  {} ok, {errors} failed in {:.2} s ({:.0} requests/s); latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        all.len(),
        wall.as_secs_f64(),
        all.len() as f64 / wall.as_secs_f64(),
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    running.stop().await;
    Ok(())
}
