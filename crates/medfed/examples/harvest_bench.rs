//! Harvest benchmark (issue 5), one run on 127.0.0.1, release build (see bench/harvest/run.sh):
//! instances per second from dcmtk's `storescu` through a medfed site node (C-STORE receiver,
//! synced inbox, de-identification with the study's options, STOW-RS over mutual TLS) into the
//! hub's encrypted store and index, beside the same `storescu` into dcmtk's own `storescp`
//! writing files, in the same run; the ratio of the two.
//!
//! Usage: harvest_bench --medfed target/release/medfed [--instances N] [--matrix M]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Killed, arg, free_port, wait_port};

use medfed_hub::client::HubClient;
use medfed_policy::StudyRole;
use serde_json::json;

fn storescu(aet: &str, port: u16, files: &[PathBuf]) -> Duration {
    let t = Instant::now();
    let ok = Command::new("storescu")
        .args(["-aet", "PACS1", "-aec", aet, "127.0.0.1", &port.to_string()])
        // dcmtk leaves Nagle's algorithm on unless told; with it every instance waits for
        // delayed acknowledgements (about 40 ms each way), which would measure the kernel.
        .env("TCP_NODELAY", "1")
        .args(files)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("storescu (dcmtk) must be installed")
        .success();
    assert!(ok, "storescu failed");
    t.elapsed()
}

fn main() {
    let medfed = PathBuf::from(arg("--medfed").expect("--medfed PATH to the medfed binary"));
    let instances: usize = arg("--instances").map_or(1000, |v| v.parse().unwrap());
    let matrix: u16 = arg("--matrix").map_or(256, |v| v.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The PACS's study: originals with identifying values.
    let slices = 50;
    let set = medfed_synth::generate(
        &d.join("pacs"),
        &medfed_synth::SynthConfig {
            patients: instances.div_ceil(slices * 2),
            studies_per_patient: 1,
            series_per_study: 2,
            slices_per_series: slices,
            rows: matrix,
            columns: matrix,
            seed: 5,
        },
    )
    .unwrap();
    let mut files = set.files;
    files.sort();
    files.truncate(instances);
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    println!(
        "{} instances of {matrix} x {matrix}, {:.1} MB",
        files.len(),
        bytes as f64 / 1e6
    );

    // Peer: storescu -> storescp (files written, no fsync by default).
    let peer_port = free_port();
    let peer_out = d.join("storescp");
    std::fs::create_dir_all(&peer_out).unwrap();
    let peer = Killed(
        Command::new("storescp")
            .env("TCP_NODELAY", "1")
            .args(["-aet", "PEER", "-od"])
            .arg(&peer_out)
            .arg(peer_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("storescp (dcmtk) must be installed"),
    );
    wait_port(peer_port, None);
    let peer_time = storescu("PEER", peer_port, &files);
    drop(peer);
    let peer_rate = files.len() as f64 / peer_time.as_secs_f64();

    // medfed: a hub and a site node as processes; harvest task running before the push.
    let hub_port = free_port();
    std::fs::write(
        d.join("hub.toml"),
        format!("listen = \"127.0.0.1:{hub_port}\"\ndata_dir = \"hub\"\n"),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (coord, op, res) = rt.block_on(async {
        let hub = medfed_hub::Hub::open(medfed_hub::HubConfig::load(&d.join("hub.toml")).unwrap())
            .await
            .unwrap();
        let c = &hub.catalogue;
        c.create_organisation("org1", "Hospital One").await.unwrap();
        c.create_study("bench", "Harvest benchmark", &["org1".into()])
            .await
            .unwrap();
        let mut tokens = Vec::new();
        for (who, role) in [
            ("coord", StudyRole::StudyCoordinator),
            ("op", StudyRole::SiteOperator),
            ("res", StudyRole::Researcher),
        ] {
            let u = c
                .create_user(&format!("local:{who}"), Some("org1"), false)
                .await
                .unwrap();
            c.grant(&u.id, "bench", role).await.unwrap();
            tokens.push(medfed_hub::issue_token(&hub, &u.id, 1).await.unwrap());
        }
        (tokens[0].clone(), tokens[1].clone(), tokens[2].clone())
    });
    let hub_log = std::fs::File::create(d.join("hub.log")).unwrap();
    let _hub = Killed(
        Command::new(&medfed)
            .args(["hub", "serve", "--config"])
            .arg(d.join("hub.toml"))
            .env("MEDFED_LOG", "warn")
            .stdout(hub_log.try_clone().unwrap())
            .stderr(hub_log)
            .spawn()
            .unwrap(),
    );
    wait_port(hub_port, Some(&d.join("hub.log")));
    let base = format!("https://127.0.0.1:{hub_port}");
    let client = |t: &str| {
        HubClient::new(&base, Some(&d.join("hub/tls/ca.pem")))
            .unwrap()
            .with_token(t)
    };
    let call = |t: &str, m: reqwest::Method, p: &str, b: Option<serde_json::Value>| {
        rt.block_on(async { client(t).call(m, p, b).await })
            .unwrap()
    };
    let token = call(
        &coord,
        reqwest::Method::POST,
        "/api/v1/studies/bench/enrolments",
        Some(json!({"organisation": "org1"})),
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let site_port = free_port();
    let site_dir = d.join("site");
    std::fs::create_dir_all(&site_dir).unwrap();
    std::fs::write(
        site_dir.join("site.toml"),
        format!(
            "organisation = \"org1\"\n[dicom]\nae_title = \"SITE\"\nbind = \"127.0.0.1:{site_port}\"\nallowed_calling_ae_titles = [\"PACS1\"]\n[storage]\ndir = \"data\"\n[[study]]\nid = \"bench\"\nallow = [\"harvest\"]\nauto_approve = [\"harvest\"]\ndeid_options = [\"retain-long-modified-dates\", \"clean-descriptors\"]\n"
        ),
    )
    .unwrap();
    let enrolled = Command::new(&medfed)
        .args([
            "site", "enroll", "--hub", &base, "--token", &token, "--config",
        ])
        .arg(site_dir.join("site.toml"))
        .output()
        .unwrap();
    assert!(enrolled.status.success(), "{enrolled:?}");
    let site_log = std::fs::File::create(d.join("site.log")).unwrap();
    let _site = Killed(
        Command::new(&medfed)
            .args(["site", "serve", "--config"])
            .arg(site_dir.join("site.toml"))
            .env("MEDFED_LOG", "warn")
            .stdout(site_log.try_clone().unwrap())
            .stderr(site_log)
            .spawn()
            .unwrap(),
    );
    wait_port(site_port, Some(&d.join("site.log")));
    let site_id = medfed_site::SiteIdentity::load(&site_dir.join("data"))
        .unwrap()
        .enrolled
        .site_id;
    let ds = call(
        &op,
        reqwest::Method::POST,
        "/api/v1/studies/bench/datasets",
        Some(json!({"title": "bench", "licence": "bench", "retention_until": "2099-01-01",
            "provenance": {"site": "org1", "deid_settings": "site policy", "medfed_version": "bench"}})),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let task = call(
        &coord,
        reqwest::Method::POST,
        "/api/v1/studies/bench/tasks",
        Some(json!({"site": site_id, "kind": "harvest", "params": {"dataset": ds}})),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        let t = call(
            &coord,
            reqwest::Method::GET,
            "/api/v1/studies/bench/tasks",
            None,
        );
        if t["items"][0]["status"] == "running" {
            break;
        }
        assert_eq!(t["items"][0]["id"], task.as_str());
        std::thread::sleep(Duration::from_millis(50));
    }

    let t0 = Instant::now();
    let intake = storescu("SITE", site_port, &files);
    // Done when the site reports every instance sent (its status file, written twice a second).
    let data = site_dir.join("data");
    loop {
        let st = medfed_site::read_status(&data).unwrap_or_default();
        if st.sent as usize >= files.len() {
            break;
        }
        assert!(
            st.failures.is_empty(),
            "harvest failures: {:?}",
            st.failures
        );
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "harvest did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let end_to_end = t0.elapsed();
    // Check on the hub: every instance indexed and found by the study's researcher.
    let studies = call(
        &res,
        reqwest::Method::GET,
        "/api/v1/dicomweb/studies?limit=500",
        None,
    );
    let on_hub: u64 = studies
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["00201208"]["Value"][0].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(on_hub as usize, files.len(), "instances on the hub");
    let rate = files.len() as f64 / end_to_end.as_secs_f64();
    let intake_rate = files.len() as f64 / intake.as_secs_f64();
    println!(
        "storescu -> dcmtk storescp:                      {:8.2} s  {:7.1} instances/s",
        peer_time.as_secs_f64(),
        peer_rate
    );
    println!(
        "storescu -> medfed site inbox (synced):           {:8.2} s  {:7.1} instances/s  ratio {:.2}",
        intake.as_secs_f64(),
        intake_rate,
        intake_rate / peer_rate
    );
    println!(
        "storescu -> site -> de-identify -> hub (indexed): {:8.2} s  {:7.1} instances/s  ratio {:.2}",
        end_to_end.as_secs_f64(),
        rate,
        rate / peer_rate
    );
}
