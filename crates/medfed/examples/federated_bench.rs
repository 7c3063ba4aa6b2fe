//! Federated learning benchmark (issue 6), one run on 127.0.0.1, release build (see
//! bench/federated/run.sh): a hub and five site nodes as separate processes over mutual TLS,
//! each site holding its part of the Wisconsin breast-cancer rows exactly as the Flower kit
//! exported them (`OUTDIR/task/iid/site-K.csv`, standardised), FedAvg logistic regression with
//! secure aggregation, 1 epoch of mini-batch SGD per round (batch 16, lr 0.1), 20 rounds, as
//! the Flower kit trains. Reports the median and max round latency, the end-to-end time from
//! submitting the spec to the results stored on the hub, and test accuracy/AUC on the kit's
//! held-out `test.csv`; writes them as JSON for run.sh to set beside Flower's figures.
//!
//! Usage: federated_bench --medfed target/release/medfed --task DIR [--rounds 20] [--out FILE]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{Killed, arg, free_port, wait_port};

use medfed_federated::Disclosure;
use medfed_hub::client::HubClient;
use medfed_policy::StudyRole;
use serde_json::{Value, json};

fn spawn(medfed: &Path, args: &[&str], config: &Path, log: &Path) -> Killed {
    let log = std::fs::File::create(log).unwrap();
    Killed(
        Command::new(medfed)
            .args(args)
            .arg(config)
            .env("MEDFED_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Columns and rows of one of the kit's CSV files.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    (header, rows)
}

fn main() {
    let medfed = PathBuf::from(arg("--medfed").unwrap_or("target/release/medfed".into()));
    let task = PathBuf::from(arg("--task").expect("--task DIR (the Flower kit's task/iid)"));
    let rounds: u64 = arg("--rounds").map_or(20, |r| r.parse().unwrap());
    let sites = 5;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (columns, _) = read_csv(&task.join("site-0.csv"));
    let label = columns.last().unwrap().clone();
    let features = &columns[..columns.len() - 1];

    // The hub, set up on its host (as an operator would), then served as a process.
    let hub_port = free_port();
    std::fs::write(
        d.join("hub.toml"),
        format!("listen = \"127.0.0.1:{hub_port}\"\ndata_dir = \"hub\"\n"),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let coord = rt.block_on(async {
        let hub = medfed_hub::Hub::open(medfed_hub::HubConfig::load(&d.join("hub.toml")).unwrap())
            .await
            .unwrap();
        let c = &hub.catalogue;
        c.create_organisation("org1", "Hospital One").await.unwrap();
        c.create_study("bench", "Federated benchmark", &["org1".into()])
            .await
            .unwrap();
        let u = c
            .create_user("local:coord", Some("org1"), false)
            .await
            .unwrap();
        c.grant(&u.id, "bench", StudyRole::StudyCoordinator)
            .await
            .unwrap();
        medfed_hub::issue_token(&hub, &u.id, 1).await.unwrap()
    });
    let _hub = spawn(
        &medfed,
        &["hub", "serve", "--config"],
        &d.join("hub.toml"),
        &d.join("hub.log"),
    );
    let base = format!("https://127.0.0.1:{hub_port}");
    wait_port(hub_port, Some(&d.join("hub.log")));
    let client = HubClient::new(&base, Some(&d.join("hub/tls/ca.pem")))
        .unwrap()
        .with_token(&coord);
    let call = |m: reqwest::Method, p: &str, b: Option<Value>| {
        rt.block_on(client.call(m, p, b))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    };

    // Five site nodes, each its own process with its own certificate.
    let mut nodes = Vec::new();
    for k in 0..sites {
        let sd = d.join(format!("site{k}"));
        std::fs::create_dir_all(&sd).unwrap();
        std::fs::copy(task.join(format!("site-{k}.csv")), sd.join("wdbc.csv")).unwrap();
        std::fs::write(
            sd.join("site.toml"),
            "organisation = \"org1\"\n[storage]\ndir = \"data\"\nmin_free_disk_bytes = 0\n\
             [[study]]\nid = \"bench\"\nallow = [\"federated-learning\"]\nauto_approve = [\"federated-learning\"]\nmin_count = 10\n\
             [[table]]\nid = \"wdbc\"\nstudy = \"bench\"\npath = \"wdbc.csv\"\n",
        )
        .unwrap();
        let token = call(
            reqwest::Method::POST,
            "/api/v1/studies/bench/enrolments",
            Some(json!({"organisation": "org1"})),
        )["token"]
            .as_str()
            .unwrap()
            .to_string();
        let enrolled = Command::new(&medfed)
            .args([
                "site", "enroll", "--hub", &base, "--token", &token, "--config",
            ])
            .arg(sd.join("site.toml"))
            .output()
            .unwrap();
        assert!(enrolled.status.success(), "{enrolled:?}");
        nodes.push(spawn(
            &medfed,
            &["site", "serve", "--config"],
            &sd.join("site.toml"),
            &sd.join("site.log"),
        ));
    }
    for _ in 0..600 {
        let v = call(reqwest::Method::GET, "/api/v1/studies/bench/sites", None);
        let ready = v["items"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|s| {
                    s["state"]["tables"]
                        .as_array()
                        .is_some_and(|t| !t.is_empty())
                })
                .count()
        });
        if ready == sites {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let quoted: Vec<String> = features.iter().map(|f| format!("{f:?}")).collect();
    let spec = format!(
        "study = \"bench\"\n[data]\ntable = \"wdbc\"\nlabel = \"{label}\"\nfeatures = [{}]\nstandardise = false\n\
         [algorithm]\nkind = \"fedavg\"\nepochs = 1\nbatch_size = 16\nlearning_rate = 0.1\n\
         [run]\nrounds = {rounds}\nmin_sites = {sites}\nevaluate = false\nround_timeout_s = 30\n",
        quoted.join(", ")
    );
    let started = Instant::now();
    let created = call(
        reqwest::Method::POST,
        "/api/v1/studies/bench/runs",
        Some(json!({ "spec": spec })),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let mut view = Value::Null;
    let mut version = 0u64;
    for _ in 0..10_000 {
        view = call(
            reqwest::Method::GET,
            &format!("/api/v1/studies/bench/runs/{id}?after={version}&wait_s=10"),
            None,
        );
        if view["status"] == "done" || view["status"] == "failed" {
            break;
        }
        version = view["version"].as_u64().unwrap_or(version);
    }
    let end_to_end = started.elapsed().as_secs_f64();
    assert_eq!(view["status"], "done", "{view:#}");
    let mut round_ms: Vec<f64> = view["round_ms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let all_rounds_ms: f64 = round_ms.iter().sum();
    round_ms.sort_by(f64::total_cmp);
    let params: Vec<f64> = view["result"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    let (_, test) = read_csv(&task.join("test.csv"));
    let scores: Vec<f64> = test
        .iter()
        .map(|r| {
            let z: f64 = params[0]
                + params[1..]
                    .iter()
                    .zip(&r[..r.len() - 1])
                    .map(|(w, x)| w * x)
                    .sum::<f64>();
            1.0 / (1.0 + (-z).exp())
        })
        .collect();
    let labels: Vec<f64> = test.iter().map(|r| r[r.len() - 1]).collect();
    let m = medfed_federated::eval::metrics(
        &scores,
        &labels,
        0.5,
        &Disclosure {
            min_rows: 0,
            min_cell: 0,
        },
    )
    .unwrap();
    let out = json!({
        "sites": sites,
        "rounds": round_ms.len(),
        "round_median_ms": round_ms[round_ms.len() / 2],
        "round_max_ms": round_ms.last(),
        "all_rounds_s": all_rounds_ms / 1000.0,
        "end_to_end_s": end_to_end,
        "test_accuracy": m.accuracy,
        "test_auc": m.auc,
        "secure_aggregation": true,
        "mutual_tls": true,
    });
    println!(
        "medfed: {sites} site processes, mutual TLS, secure aggregation, {} rounds: median round {:.2} ms (max {:.2}), all rounds {:.3} s, end to end {:.3} s (submit -> results stored); test accuracy {:.4}, AUC {:.4}",
        round_ms.len(),
        out["round_median_ms"].as_f64().unwrap(),
        out["round_max_ms"].as_f64().unwrap(),
        all_rounds_ms / 1000.0,
        end_to_end,
        m.accuracy,
        m.auc
    );
    if let Some(path) = arg("--out") {
        std::fs::write(path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    }
    drop(nodes);
}
