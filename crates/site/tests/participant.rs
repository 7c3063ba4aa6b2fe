//! A site's federated releases fail closed: a hub (in this process, real HTTPS and mutual TLS)
//! runs a study over two site nodes holding real heart-disease centres; one node's audit log
//! is made unwritable after it accepted the run. That site sends nothing for the run (no
//! release, no refusal), its task says why (and its task report tells the hub), and the round
//! has one vector: the run fails for want of sites instead of going on with an unrecorded
//! release.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use medfed_hub::client::HubClient;
use medfed_policy::StudyRole;
use medfed_site::{LocalTask, NodeOptions, SiteIdentity, SiteNode, SitePolicy};
use serde_json::{Value, json};

/// Continuous features only, so that no small cell keeps a site out before the test's point.
const FEATURES: &str = r#"["age", "trestbps", "chol", "thalach", "oldpeak"]"#;

fn demo_table(centre: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../medfed/demo-data/heart/{centre}.csv"))
}

fn policy(dir: &Path, org: &str) -> SitePolicy {
    SitePolicy::parse(&format!(
        "organisation = \"{org}\"\n[storage]\ndir = \"{d}\"\nmin_free_disk_bytes = 0\n\
         [[study]]\nid = \"study-a\"\nallow = [\"federated-learning\"]\nauto_approve = [\"federated-learning\"]\n\
         [[table]]\nid = \"heart\"\nstudy = \"study-a\"\npath = \"{d}/heart.csv\"\n",
        d = dir.display()
    ))
    .unwrap()
}

/// A served node: its stop flag and task.
struct Served {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), medfed_site::NodeError>>,
}

impl Served {
    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

fn serve(dir: &Path, org: &str) -> Served {
    let node = SiteNode::open(
        policy(dir, org),
        NodeOptions {
            poll_wait_s: 1,
            ..Default::default()
        },
    )
    .unwrap();
    Served {
        stop: node.stopper(),
        task: tokio::spawn(node.serve()),
    }
}

fn tasks(dir: &Path) -> BTreeMap<String, LocalTask> {
    std::fs::read(dir.join("state/tasks.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

async fn wait_for<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_whose_audit_log_cannot_be_written_releases_nothing_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let running = medfed_hub::start(medfed_hub::HubConfig {
        data_dir: d.join("hub"),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let hub = running.hub.clone();
    let cat = &hub.catalogue;
    cat.create_organisation("org1", "One").await.unwrap();
    cat.create_organisation("org2", "Two").await.unwrap();
    cat.create_study("study-a", "Heart", &["org1".into(), "org2".into()])
        .await
        .unwrap();
    let coord = cat
        .create_user("local:coord", Some("org1"), false)
        .await
        .unwrap();
    cat.grant(&coord.id, "study-a", StudyRole::StudyCoordinator)
        .await
        .unwrap();
    let base = format!("https://127.0.0.1:{}", running.addr.port());
    let client = HubClient::new(&base, running.ca_pem.as_deref()).unwrap();
    let coordc = client.with_token(&medfed_hub::issue_token(&hub, &coord.id, 1).await.unwrap());

    // Two sites, each one real centre's table.
    let (a, b) = (d.join("site-a"), d.join("site-b"));
    for (dir, org, centre) in [(&a, "org1", "cleveland"), (&b, "org2", "cleveland")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(demo_table(centre), dir.join("heart.csv")).unwrap();
        let token = coordc
            .call(
                reqwest::Method::POST,
                "/api/v1/studies/study-a/enrolments",
                Some(json!({"organisation": org})),
            )
            .await
            .unwrap();
        SiteIdentity::enroll(dir, &base, token["token"].as_str().unwrap(), org, org)
            .await
            .unwrap();
    }
    let site_a = serve(&a, "org1");
    let site_b = serve(&b, "org2");
    wait_for(60, "both sites' tables at the hub", async || {
        let v = coordc
            .call(reqwest::Method::GET, "/api/v1/studies/study-a/sites", None)
            .await
            .ok()?;
        let ready = v["items"]
            .as_array()?
            .iter()
            .filter(|s| {
                s["state"]["tables"]
                    .as_array()
                    .is_some_and(|t| !t.is_empty())
            })
            .count();
        (ready == 2).then_some(())
    })
    .await;
    // Site B steps out for a while, so that the round cannot start before site A's log is
    // broken.
    site_b.stop().await;

    let spec = format!(
        "study = \"study-a\"\n[data]\ntable = \"heart\"\nlabel = \"target\"\nfeatures = {FEATURES}\n\
         split = {{ column = \"flamby_split\" }}\n[algorithm]\nkind = \"newton-logistic\"\nridge = 0.001\n\
         [run]\nrounds = 3\nmin_sites = 2\nround_timeout_s = 10\nstart_timeout_s = 60\n"
    );
    let run = coordc
        .call(
            reqwest::Method::POST,
            "/api/v1/studies/study-a/runs",
            Some(json!({ "spec": spec })),
        )
        .await
        .unwrap();
    let run = run["id"].as_str().unwrap().to_string();
    let task = wait_for(60, "site A accepting the run", async || {
        tasks(&a)
            .into_values()
            .find(|t| t.kind == "federated-learning" && t.status == "running")
    })
    .await;
    // Its participant reads the table and sends its key (nothing audited): give it the time.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Site A's log becomes unwritable, even for root: its signed head (replaced by rename after
    // every record) is now a directory, so no append completes.
    let head = a.join("site.audit.jsonl.head");
    std::fs::remove_file(&head).unwrap();
    std::fs::create_dir(&head).unwrap();
    let site_b = serve(&b, "org2");

    let path = format!("/api/v1/studies/study-a/runs/{run}");
    // Site A's own account, as its task list shows it until the hub has heard it.
    let mut mine: Option<LocalTask> = None;
    let view: Value = wait_for(120, "the run to end", async || {
        if let Some(t) = tasks(&a).remove(&task.id).filter(|t| t.status != "running") {
            mine = Some(t);
        }
        let v = coordc.call(reqwest::Method::GET, &path, None).await.ok()?;
        (v["status"] != "running").then_some(v)
    })
    .await;
    let mine = mine.unwrap_or_else(|| panic!("site A's task never left running: {view}"));
    assert_eq!(mine.status, "failed", "{mine:?}");
    assert!(
        mine.detail.starts_with("site audit log unwritable: "),
        "{}",
        mine.detail
    );
    // The hub heard why from the site's task report, and never got site A's release: the
    // round had one vector, so the run failed for want of sites (had A's release gone out,
    // the round would have had two and gone on).
    let sites = view["sites"].as_array().unwrap();
    let site_a_id = SiteIdentity::load(&a).unwrap().enrolled.site_id;
    let at_hub = sites
        .iter()
        .find(|s| s["site_id"] == site_a_id.as_str())
        .unwrap();
    assert_ne!(at_hub["status"], "active", "{view}");
    assert!(
        at_hub["detail"]
            .as_str()
            .unwrap()
            .contains("site audit log unwritable"),
        "{view}"
    );
    assert_eq!(view["status"], "failed", "{view}");
    assert!(
        view["detail"]
            .as_str()
            .unwrap()
            .contains("only 1 site(s) delivered"),
        "{view}"
    );
    assert_eq!(view["training_rounds_done"], 0, "{view}");

    site_a.stop().await;
    site_b.stop().await;
    running.stop().await;
}
