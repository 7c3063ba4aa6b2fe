//! Federated runs as hospitals run them, all as processes on 127.0.0.1: `medfed hub serve`,
//! site nodes (`medfed site serve`) that each register one real centre's table of the UCI
//! Heart Disease data (shipped in demo-data/, CC BY 4.0), and `medfed study run` submitting a
//! study spec. Exactness against pooled training, results stored as a dataset, the sites'
//! audit logs; then the bad days: a site whose policy refuses the run, a site that stalls
//! mid-run, a site that dies, and a hub killed and restarted mid-run; and the attacks on
//! disclosure control (an indicator of one row, a saturated design, two runs differing by a
//! row), refused at every site with refusals that carry no count.

mod common;

use std::path::{Path, PathBuf};

use common::{Api, People, Server, SiteProc, free_port, hub_world, medfed, serve, wait_for};
use medfed_federated::regression;
use medfed_federated::run::SiteData;
use medfed_federated::spec::StudySpec;
use medfed_federated::table::{Design, standardise};
use serde_json::Value;

fn demo_table(centre: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("demo-data/heart/{centre}.csv"))
}

/// Features every centre but Switzerland bears under its disclosure rules (FLamby's 13 include
/// indicators with a handful of rows at some centres: `sex` at Long Beach holds 2 women,
/// `restecg=1` 2 of Cleveland's rows; those are refused at the site).
const FEATURES: &str = r#"["age", "trestbps", "chol", "thalach", "exang", "oldpeak"]"#;

fn spec(algorithm: &str, run: &str) -> String {
    format!(
        "study = \"study-a\"\ntitle = \"Heart disease\"\n[data]\ntable = \"heart\"\nlabel = \"target\"\nfeatures = {FEATURES}\nsplit = {{ column = \"flamby_split\" }}\n[algorithm]\n{algorithm}\n[run]\n{run}\n"
    )
}

/// A site node of `org` holding one centre's table for study-a, with extra federated rules.
fn heart_site(root: &Path, name: &str, org: &str, centre: &str, rules: &str) -> SiteProc {
    let site = SiteProc::with_config(
        root,
        name,
        &format!(
            "organisation = \"{org}\"\n[storage]\ndir = \"data\"\nmin_free_disk_bytes = 0\n\
             [[study]]\nid = \"study-a\"\nallow = [\"federated-learning\"]\nauto_approve = [\"federated-learning\"]\n\
             [study.federated]\n{rules}\n[[table]]\nid = \"heart\"\nstudy = \"study-a\"\npath = \"heart.csv\"\n"
        ),
    );
    std::fs::copy(demo_table(centre), site.dir.join("heart.csv")).unwrap();
    site
}

/// Enrol and serve `sites`; wait until the hub lists their tables.
fn bring_up(api: &Api, people: &People, url: &str, sites: &mut [SiteProc]) {
    for (i, s) in sites.iter_mut().enumerate() {
        let org = if i % 2 == 0 { "org1" } else { "org2" };
        s.enroll(url, &api.enrolment_token(&people.coord, org));
        s.serve();
    }
    wait_for(60, "every site's table at the hub", || {
        let v = api.call(
            &people.coord,
            "GET",
            "/api/v1/studies/study-a/sites?limit=100",
            None,
        );
        let with_table = v["items"]
            .as_array()?
            .iter()
            .filter(|s| {
                s["state"]["tables"]
                    .as_array()
                    .is_some_and(|t| !t.is_empty())
            })
            .count();
        (with_table == sites.len()).then_some(())
    });
}

/// `medfed study run --json`: the final run (Null if none was printed), stderr, success.
fn study_run(d: &Path, port: u16, token: &str, spec_text: &str) -> (Value, String, bool) {
    let path = d.join(format!("spec-{}.toml", rand_suffix()));
    std::fs::write(&path, spec_text).unwrap();
    let out = medfed()
        .args(["study", "run", "--json", "--hub"])
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--ca")
        .arg(d.join("data/tls/ca.pem"))
        .arg(&path)
        .env("MEDFED_TOKEN", token)
        .output()
        .unwrap();
    (
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.status.success(),
    )
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Pooled training on the union of the centres' training rows, standardised with the pooled
/// mean and standard deviation: what federated Newton must equal.
fn pooled_newton(centres: &[&str], spec_text: &str) -> Vec<f64> {
    let spec = StudySpec::from_toml(spec_text).unwrap();
    let parts: Vec<Design> = centres
        .iter()
        .map(|c| {
            SiteData::from_csv(&std::fs::read_to_string(demo_table(c)).unwrap(), &spec)
                .unwrap()
                .train
        })
        .collect();
    let mut pooled = Design::concat(&parts.iter().collect::<Vec<_>>());
    let p = pooled.width();
    let n = pooled.rows() as f64;
    let (mut mean, mut sd) = (vec![0.0; p], vec![1.0; p]);
    for j in 1..p {
        mean[j] = pooled.x.iter().map(|x| x[j]).sum::<f64>() / n;
        sd[j] = (pooled
            .x
            .iter()
            .map(|x| (x[j] - mean[j]).powi(2))
            .sum::<f64>()
            / (n - 1.0))
            .sqrt();
    }
    standardise(&mut pooled, &mean, &sd);
    let rules = medfed_federated::Disclosure {
        min_rows: 1,
        min_cell: 1,
    };
    regression::newton_fit(p, 0.0, 50, 1e-10, |b| {
        regression::logistic_site_step(&pooled, b, &rules)
    })
    .unwrap()
    .beta
}

fn start(d: &Path, port: u16) -> Server {
    serve(d, port, &d.join("hub.log"), None)
}

#[test]
fn four_hospitals_train_exactly_what_pooled_training_gives_and_the_results_are_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let people = hub_world(d, port, "");
    let _hub = start(d, port);
    let api = Api::new(d, port);
    let url = format!("https://127.0.0.1:{port}");
    // Switzerland's test rows hold one healthy patient: its evaluation would be hers, so it
    // refuses the run (the label rule) and the others go on.
    let centres = ["cleveland", "hungary", "switzerland", "long_beach_va"];
    let mut sites: Vec<SiteProc> = centres
        .iter()
        .enumerate()
        .map(|(i, c)| {
            heart_site(
                d,
                &format!("site{i}"),
                if i % 2 == 0 { "org1" } else { "org2" },
                c,
                "",
            )
        })
        .collect();
    // The last hospital registered its table under its own name: the spec maps it.
    let renamed = std::fs::read_to_string(sites[3].config())
        .unwrap()
        .replace("id = \"heart\"", "id = \"cardiology-2024\"");
    std::fs::write(sites[3].config(), renamed).unwrap();
    bring_up(&api, &people, &url, &mut sites);
    let mapping = format!(
        "site_tables = {{ \"{}\" = \"cardiology-2024\" }}\n[algorithm]",
        sites[3].site_id()
    );
    let mapped = |t: String| t.replacen("[algorithm]", &mapping, 1);

    // Without the mapping the hub names the site that lacks the table.
    let (_, err, ok) = study_run(
        d,
        port,
        &people.coord,
        &spec("kind = \"newton-logistic\"", ""),
    );
    assert!(
        !ok && err.contains("has not registered a table \"heart\""),
        "{err}"
    );
    // A spec naming a column the sites do not have is refused before anything is sent.
    let bad = mapped(
        spec("kind = \"newton-logistic\"", "rounds = 30").replace("\"oldpeak\"", "\"weight\""),
    );
    let (_, err, ok) = study_run(d, port, &people.coord, &bad);
    assert!(!ok && err.contains("lacks column(s) weight"), "{err}");
    // Researchers may not start runs.
    let (_, err, ok) = study_run(
        d,
        port,
        &people.res_a,
        &spec("kind = \"newton-logistic\"", ""),
    );
    assert!(
        !ok && err.contains("403"),
        "a researcher must not start a run: {err}"
    );

    let text = mapped(spec(
        "kind = \"newton-logistic\"",
        "rounds = 30\nround_timeout_s = 20",
    ));
    let (view, err, ok) = study_run(d, port, &people.coord, &text);
    if !ok {
        for s in &sites {
            let log = s.log();
            eprintln!(
                "--- {}:\n{}",
                s.dir.display(),
                &log[log.len().saturating_sub(3000)..]
            );
        }
        panic!("run failed: {view:#} {err}");
    }
    assert_eq!(view["status"], "done");
    let params: Vec<f64> = view["result"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let pooled = pooled_newton(&["cleveland", "hungary", "long_beach_va"], &text);
    assert_eq!(params.len(), 7);
    for (j, (a, b)) in params.iter().zip(&pooled).enumerate() {
        assert!(
            (a - b).abs() < 1e-6,
            "coefficient {j}: federated {a} vs pooled {b}"
        );
    }
    // Every centre evaluated on its own test rows; the overall figures from the secure sum.
    let eval = &view["result"]["evaluation"];
    assert_eq!(eval["per_site"].as_object().unwrap().len(), 3);
    assert_eq!(eval["overall"]["n"], 104 + 89 + 45);
    let swiss = view["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["site_id"] == sites[2].site_id().as_str())
        .unwrap();
    assert_eq!(swiss["status"], "refused");
    assert_eq!(
        swiss["detail"], "a level of the label has fewer rows than this site's minimum",
        "{swiss:#}"
    );
    let auc = eval["overall"]["auc"].as_f64().unwrap();
    assert!(auc > 0.75 && auc < 1.0, "overall AUC {auc}");

    // Members without a researcher's or coordinator's role follow the run, not its results.
    let run_path = format!(
        "/api/v1/studies/study-a/runs/{}",
        view["id"].as_str().unwrap()
    );
    let as_operator = api.call(&people.op1, "GET", &run_path, None);
    assert_eq!(as_operator["status"], "done");
    assert!(as_operator["result"].is_null(), "{as_operator:#}");
    assert!(!api.call(&people.res_a, "GET", &run_path, None)["result"].is_null());
    // The results are a dataset of the study: model, results, spec, who ran it.
    let ds = view["result_dataset"].as_str().unwrap();
    let objects = api.call(
        &people.res_a,
        "GET",
        &format!("/api/v1/datasets/{ds}/objects"),
        None,
    );
    let items = objects["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|o| o["name"].as_str().unwrap()).collect();
    for want in ["model.safetensors", "result.json", "spec.toml", "run.json"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let model_id = items
        .iter()
        .find(|o| o["name"] == "model.safetensors")
        .unwrap()["id"]
        .as_str()
        .unwrap();
    let bytes = api.rt.block_on(async {
        api.client(&people.res_a)
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/datasets/{ds}/objects/{model_id}"),
            )
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("params").unwrap();
    let from_file: Vec<f64> = t
        .data()
        .chunks(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    // The run view's JSON numbers are parsed to within an ulp; the file holds the exact bits.
    for (a, b) in from_file.iter().zip(&params) {
        assert!((a - b).abs() <= 1e-15 * a.abs().max(1.0), "{a} vs {b}");
    }
    assert_eq!(from_file.len(), params.len());
    let run_json_id = items.iter().find(|o| o["name"] == "run.json").unwrap()["id"]
        .as_str()
        .unwrap();
    let record = api.call(
        &people.res_a,
        "GET",
        &format!("/api/v1/datasets/{ds}/objects/{run_json_id}"),
        None,
    );
    assert!(
        record["submitted_by"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    // The coordinator (no data-reading role) downloads the run's results; the file is the
    // stored model, byte for byte. A site operator of the study is refused.
    let out = d.join("results");
    let results = |token: &str| {
        medfed()
            .args([
                "study",
                "results",
                "study-a",
                view["id"].as_str().unwrap(),
                "--hub",
            ])
            .arg(format!("https://127.0.0.1:{port}"))
            .arg("--ca")
            .arg(d.join("data/tls/ca.pem"))
            .arg("--out")
            .arg(&out)
            .env("MEDFED_TOKEN", token)
            .output()
            .unwrap()
    };
    let got = results(&people.coord);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        &bytes[..]
    );
    for f in ["result.json", "spec.toml", "run.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    std::fs::remove_dir_all(&out).unwrap();
    let refused = results(&people.op1);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!out.join("result.json").exists());

    // Each site recorded what it released, and its audit log verifies.
    for (i, s) in sites.iter().enumerate() {
        if i == 2 {
            assert!(!s.audit().contains("federated.release"));
            continue;
        }
        let audit = s.audit();
        assert!(audit.contains("federated.release"), "{}", s.log());
        assert!(audit.contains("masked"));
        assert!(audit.contains("federated.finish"));
        let key = medfed_audit::load_or_create_key(&s.dir.join("data/audit.key")).unwrap();
        medfed_audit::verify(&s.dir.join("data/site.audit.jsonl"), &key.verifying_key()).unwrap();
    }
    // A long run, cancelled by the coordinator: the sites stop, nothing is stored.
    let long = d.join("long.toml");
    std::fs::write(
        &long,
        mapped(spec(
            "kind = \"fedavg\"\nlearning_rate = 0.01",
            "rounds = 1000",
        )),
    )
    .unwrap();
    let hub_args = |cmd: &mut std::process::Command| {
        cmd.args(["--hub", &url, "--ca"])
            .arg(d.join("data/tls/ca.pem"))
            .env("MEDFED_TOKEN", &people.coord);
    };
    let mut submit = medfed();
    submit.args(["study", "run", "--detach"]).arg(&long);
    hub_args(&mut submit);
    let out = submit.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let long_run = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let long_path = format!("/api/v1/studies/study-a/runs/{long_run}");
    wait_for(30, "the long run to start", || {
        let v = api.call(&people.coord, "GET", &long_path, None);
        (v["training_rounds_done"].as_u64() > Some(0)).then_some(())
    });
    let mut cancel = medfed();
    cancel.args(["study", "cancel", "study-a", &long_run]);
    hub_args(&mut cancel);
    assert!(cancel.output().unwrap().status.success());
    let cancelled = wait_for(30, "the cancellation saved", || {
        let v = api.call(&people.coord, "GET", &long_path, None);
        (v["status"] == "cancelled").then_some(v)
    });
    assert!(cancelled["result_dataset"].is_null());
    assert!(cancelled["training_rounds_done"].as_u64().unwrap() < 1000);

    // The sites' tasks for the first run ended done at the hub; the cancelled run's stopped.
    wait_for(30, "every site's task done", || {
        let v = api.call(
            &people.coord,
            "GET",
            "/api/v1/studies/study-a/tasks?limit=100",
            None,
        );
        let tasks = v["items"].as_array()?.clone();
        let done = tasks.iter().filter(|t| t["status"] == "done").count();
        let stopped = tasks.iter().filter(|t| t["status"] == "failed").count();
        // Switzerland refused both runs.
        (done == 3 && stopped == 5).then_some(())
    });
}

#[cfg(unix)]
fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[cfg(unix)]
#[test]
fn refusing_stalling_and_dying_sites_are_dropped_and_a_restarted_hub_resumes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let people = hub_world(d, port, "");
    let mut hub = start(d, port);
    let api = Api::new(d, port);
    let url = format!("https://127.0.0.1:{port}");
    let mut sites = vec![
        heart_site(d, "steady1", "org1", "cleveland", ""),
        heart_site(d, "steady2", "org2", "hungary", ""),
        heart_site(d, "staller", "org1", "long_beach_va", ""),
        heart_site(d, "doomed", "org2", "cleveland", ""),
        // This hospital allows statistics only: it refuses the training run.
        heart_site(
            d,
            "strict",
            "org1",
            "hungary",
            "algorithms = [\"statistics\"]",
        ),
        // This one releases nothing over fewer than 50 rows; it has 30 training rows.
        heart_site(d, "tiny", "org2", "switzerland", ""),
    ];
    let tiny = std::fs::read_to_string(sites[5].config())
        .unwrap()
        .replace("[study.federated]", "min_count = 50\n[study.federated]");
    std::fs::write(sites[5].config(), tiny).unwrap();
    bring_up(&api, &people, &url, &mut sites);
    let text = spec(
        // Rounds of a few milliseconds each: enough of them to act mid-run.
        "kind = \"fedavg\"\nlearning_rate = 0.01\nbatch_size = 8\nepochs = 3",
        "rounds = 1000\nmin_sites = 2\nround_timeout_s = 2\nstart_timeout_s = 30",
    );
    let path = d.join("fedavg.toml");
    std::fs::write(&path, &text).unwrap();
    let out = medfed()
        .args(["study", "run", "--detach", "--hub", &url, "--ca"])
        .arg(d.join("data/tls/ca.pem"))
        .arg(&path)
        .env("MEDFED_TOKEN", &people.coord)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let view = || {
        api.call(
            &people.coord,
            "GET",
            &format!("/api/v1/studies/study-a/runs/{run}"),
            None,
        )
    };
    let done_rounds = |v: &Value| v["training_rounds_done"].as_u64().unwrap_or(0);
    let ids: Vec<String> = sites.iter().map(|s| s.site_id()).collect();
    // The run lists sites in its own order: find each of ours by id.
    let site_status = |v: &Value, i: usize| {
        v["sites"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["site_id"] == ids[i].as_str()))
            .and_then(|x| x["status"].as_str())
            .unwrap_or("")
            .to_string()
    };

    // The strict site refused at once (its policy), and the run went on without it.
    wait_for(30, "the strict site's refusal", || {
        (site_status(&view(), 4) == "refused").then_some(())
    });
    wait_for(60, "three rounds", || {
        (done_rounds(&view()) >= 3).then_some(())
    });
    // One site stalls (stopped, its connections open), another dies.
    signal(sites[2].child.as_ref().unwrap(), "-STOP");
    sites[3].child.as_mut().unwrap().kill().unwrap();
    wait_for(30, "the stalled and the dead site dropped", || {
        let v = view();
        (site_status(&v, 2) == "dropped" && site_status(&v, 3) == "dropped").then_some(())
    });
    let before = wait_for(30, "two more rounds", || {
        let v = view();
        let r = done_rounds(&v);
        (r >= 6).then_some(r)
    });
    // Kill the hub mid-run; a new hub process resumes from the last completed round (saved
    // after each round, so at most the round in flight is redone).
    hub.child.kill().unwrap();
    hub.child.wait().unwrap();
    hub = start(d, port);
    let first = done_rounds(&view());
    assert!(
        first + 1 >= before,
        "resumed at {first}, {before} rounds were done"
    );
    wait_for(60, "the run to move after the restart", || {
        (done_rounds(&view()) > first).then_some(())
    });
    let final_view = wait_for(120, "the run to finish", || {
        let v = view();
        (v["status"] != "running" && v["status"] != "finishing").then_some(v)
    });
    assert_eq!(final_view["status"], "done", "{final_view:#}");
    assert_eq!(final_view["training_rounds_done"], 1000);
    assert_eq!(site_status(&final_view, 0), "active");
    assert_eq!(site_status(&final_view, 1), "active");
    assert!(final_view["result_dataset"].as_str().is_some());
    let hub_log = std::fs::read_to_string(d.join("data/audit/hub.audit.jsonl")).unwrap();
    assert!(
        hub_log.contains("run.resume"),
        "the hub recorded the resumption"
    );
    assert!(hub_log.contains("run.site.dropped"));
    assert!(hub_log.contains("run.site.refused"));
    // The strict site never released anything; the tiny one refused its first release.
    let strict = sites[4].audit();
    assert!(!strict.contains("federated.release"), "{strict}");
    assert_eq!(site_status(&final_view, 5), "refused");
    let tiny = sites[5].audit();
    assert!(!tiny.contains("federated.release"), "{tiny}");
    // It says which rule refused, never its count or the minimum.
    assert_eq!(
        audit_outcomes(&tiny, "federated.refuse"),
        vec!["fewer rows than this site's minimum".to_string()],
        "{tiny}"
    );
    signal(sites[2].child.as_ref().unwrap(), "-CONT");
    drop(hub);
}

/// The outcomes of every `action` record in an audit log (JSON lines).
fn audit_outcomes(log: &str, action: &str) -> Vec<String> {
    fn find(v: &Value, action: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if m.get("action").and_then(Value::as_str) == Some(action)
                    && let Some(o) = m.get("outcome").and_then(Value::as_str)
                {
                    out.push(o.to_string());
                }
                m.values().for_each(|x| find(x, action, out));
            }
            Value::Array(a) => a.iter().for_each(|x| find(x, action, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for line in log.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            find(&v, action, &mut out);
        }
    }
    out
}

/// A centre's table as a hospital might hold it: a local record number `row` first, and
/// `bp2`, the resting blood pressure re-measured, missing for one patient (the 17th row).
fn numbered_table(centre: &str) -> String {
    let text = std::fs::read_to_string(demo_table(centre)).unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 {
            out.push_str(&format!("row,{line},bp2\n"));
        } else {
            let bp = line.split(',').nth(3).unwrap();
            let bp2 = if i == 17 { "" } else { bp };
            out.push_str(&format!("{},{line},{bp2}\n", i - 1));
        }
    }
    out
}

#[test]
fn disclosure_attacks_are_refused_at_every_site_and_refusals_carry_no_counts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let people = hub_world(d, port, "");
    let _hub = start(d, port);
    let api = Api::new(d, port);
    let url = format!("https://127.0.0.1:{port}");
    let centres = ["cleveland", "hungary", "long_beach_va"];
    let mut sites: Vec<SiteProc> = centres
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let org = if i % 2 == 0 { "org1" } else { "org2" };
            let site = SiteProc::with_config(
                d,
                &format!("site{i}"),
                &format!(
                    "organisation = \"{org}\"\n[storage]\ndir = \"data\"\nmin_free_disk_bytes = 0\n\
                     [[study]]\nid = \"study-a\"\nallow = [\"federated-learning\"]\nauto_approve = [\"federated-learning\"]\nmin_count = 10\n\
                     [study.federated]\nmin_cell_count = 5\n\
                     [[table]]\nid = \"heart\"\nstudy = \"study-a\"\npath = \"heart.csv\"\n\
                     [[table]]\nid = \"small\"\nstudy = \"study-a\"\npath = \"small.csv\"\n"
                ),
            );
            let table = numbered_table(c);
            let small: Vec<&str> = table.lines().take(21).collect();
            std::fs::write(site.dir.join("heart.csv"), &table).unwrap();
            std::fs::write(site.dir.join("small.csv"), small.join("\n") + "\n").unwrap();
            site
        })
        .collect();
    bring_up(&api, &people, &url, &mut sites);
    let ids: Vec<String> = sites.iter().map(SiteProc::site_id).collect();
    let run_spec = |table: &str, label: &str, features: &str, algorithm: &str| {
        format!(
            "study = \"study-a\"\n[data]\ntable = \"{table}\"\nlabel = \"{label}\"\nfeatures = {features}\n\
             [algorithm]\n{algorithm}\n[run]\nround_timeout_s = 20\nstart_timeout_s = 60\n"
        )
    };
    // A run every site refuses: it fails, and each site's refusal is exactly the rule.
    let refused_everywhere = |spec_text: &str, rule: &str| {
        let (view, err, ok) = study_run(d, port, &people.coord, spec_text);
        assert!(!ok, "the attack must not finish: {view:#} {err}");
        let run = if view.is_null() {
            let runs = api.call(&people.coord, "GET", "/api/v1/studies/study-a/runs", None);
            runs["items"].as_array().unwrap().last().unwrap().clone()
        } else {
            view
        };
        let id = run["id"].as_str().unwrap().to_string();
        let run = api.call(
            &people.coord,
            "GET",
            &format!("/api/v1/studies/study-a/runs/{id}"),
            None,
        );
        assert_eq!(run["status"], "failed", "{run:#}");
        assert!(run["result_dataset"].is_null());
        for sid in &ids {
            let s = run["sites"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["site_id"] == sid.as_str())
                .unwrap();
            assert_eq!(s["status"], "refused", "{run:#}");
            assert_eq!(s["detail"], rule, "{run:#}");
        }
        assert!(
            !run["detail"].as_str().unwrap_or("").contains("rows"),
            "{run:#}"
        );
    };

    // 1. The review's attack: a linear model on the indicator of one record.
    let indicator_rule = "a level of feature \"row=5\" has fewer rows than this site's minimum";
    refused_everywhere(
        &run_spec(
            "heart",
            "thalach",
            r#"["row=5"]"#,
            "kind = \"newton-linear\"",
        ),
        indicator_rule,
    );
    // 2. A saturated design: 7 coefficients on 19 rows (20, less the one without bp2).
    let saturated_rule = "the design is saturated: too many parameters for this site's rows";
    refused_everywhere(
        &run_spec(
            "small",
            "thalach",
            r#"["row", "age", "trestbps", "chol", "cp", "bp2"]"#,
            "kind = \"newton-linear\"",
        ),
        saturated_rule,
    );
    // 3. Differencing: a run on every row, then one whose extra feature drops one patient.
    let (view, err, ok) = study_run(
        d,
        port,
        &people.coord,
        &run_spec("heart", "thalach", r#"["age"]"#, "kind = \"newton-linear\""),
    );
    assert!(ok && view["status"] == "done", "{view:#} {err}");
    let differencing_rule = "the rows selected differ from an earlier run's by fewer than this site's minimum (differencing)";
    refused_everywhere(
        &run_spec(
            "heart",
            "thalach",
            r#"["age", "bp2"]"#,
            "kind = \"newton-linear\"",
        ),
        differencing_rule,
    );

    // 4. Statistics with the documented defaults (20 bins, a cross-tab of cp by the label):
    // done, bins merged where the sites' data cannot bear them, and every figure says which
    // sites it covers.
    let (view, err, ok) = study_run(
        d,
        port,
        &people.coord,
        &run_spec(
            "heart",
            "target",
            r#"["age", "chol", "thalach", "cp"]"#,
            "kind = \"statistics\"\ncrosstab = { cp = [1, 2, 3, 4] }",
        ),
    );
    assert!(ok && view["status"] == "done", "{view:#} {err}");
    let result = &view["result"];
    for f in result["statistics"].as_array().unwrap() {
        assert_eq!(f["moment_sites"], 3, "{f:#}");
        assert_eq!(f["histogram_sites"], 3, "{f:#}");
        assert_eq!(f["moment_site_ids"].as_array().unwrap().len(), 3, "{f:#}");
        assert_eq!(f["moment_site_ids"], f["histogram_round_site_ids"], "{f:#}");
        assert_eq!(f["bins_merged"], true, "{f:#}");
        let counts: u64 = f["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(counts, f["n"].as_u64().unwrap());
    }
    let tab = &result["crosstabs"][0];
    let warnings: Vec<&str> = result["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("merged")),
        "{warnings:?}"
    );
    // Hungary and Long Beach hold a cell of 3 (cp = 1 with disease; cp = 2 healthy): they
    // withhold the table, which is then Cleveland's alone, and says so.
    assert_eq!(tab["sites"], 1, "{tab:#}");
    assert_eq!(
        tab["round_site_ids"],
        result["statistics"][0]["moment_site_ids"]
    );
    assert_eq!(
        tab["counts"],
        serde_json::json!([16, 7, 41, 9, 68, 18, 39, 105])
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("cross-tab \"cp\" covers 1 of 3 site(s)")),
        "{warnings:?}"
    );

    // No refusal anywhere carries a count: the sites' audit logs, the hub's, the tasks.
    let rules = [indicator_rule, saturated_rule, differencing_rule];
    for s in &sites {
        let refusals = audit_outcomes(&s.audit(), "federated.refuse");
        assert_eq!(refusals.len(), 3, "{refusals:?}");
        assert!(
            refusals.iter().all(|r| rules.contains(&r.as_str())),
            "{refusals:?}"
        );
    }
    let hub_log = std::fs::read_to_string(d.join("data/audit/hub.audit.jsonl")).unwrap();
    let hub_refusals = audit_outcomes(&hub_log, "run.site.refused");
    assert_eq!(hub_refusals.len(), 9, "{hub_refusals:?}");
    for r in &hub_refusals {
        let (_, detail) = r.split_once(": ").unwrap();
        assert!(rules.contains(&detail), "{r}");
    }
    let tasks = api.call(
        &people.coord,
        "GET",
        "/api/v1/studies/study-a/tasks?limit=100",
        None,
    );
    for t in tasks["items"].as_array().unwrap() {
        let detail = t["detail"].as_str().unwrap_or("");
        assert!(
            !detail.contains("below") && !detail.contains(" rows is"),
            "{t:#}"
        );
    }
}
