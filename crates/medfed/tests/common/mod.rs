//! Helpers shared by the process-level tests: the `medfed` binary, a hub server process, the
//! people of a test world and their API calls, site node processes.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use medfed_hub::client::HubClient;
use medfed_policy::StudyRole;
use serde_json::{Value, json};

pub fn medfed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_medfed"))
}

pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use medfed_testkit::free_port;

/// Start `medfed hub serve`, logging at debug level into `log` (appended).
pub fn serve(dir: &Path, port: u16, log: &Path, failpoint: Option<&str>) -> Server {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = medfed();
    cmd.args(["hub", "serve", "--config"])
        .arg(dir.join("hub.toml"))
        .env("MEDFED_LOG", "debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if let Some(f) = failpoint {
        cmd.env("MEDFED_HUB_FAILPOINT", f);
    }
    let server = Server {
        child: cmd.spawn().unwrap(),
        port,
    };
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(server);
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!(
        "hub did not start within 30 s; its log ends: {}",
        &log[log.len().saturating_sub(4000)..]
    );
}

/// Poll `f` until it gives a value or `secs` pass.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The people of the test world and their API tokens.
pub struct People {
    pub admin: String,
    pub coord: String,
    pub op1: String,
    pub op2: String,
    pub res_a: String,
    pub res_b: String,
}

/// hub.toml, then the world set up on the hub's host before it serves (as an operator's
/// setup would): organisations, people, two studies.
pub fn hub_world(d: &Path, port: u16, extra: &str) -> People {
    std::fs::write(
        d.join("hub.toml"),
        format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n{extra}"),
    )
    .unwrap();
    let cfg = medfed_hub::HubConfig::load(&d.join("hub.toml")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let hub = medfed_hub::Hub::open(cfg).await.unwrap();
        let c = &hub.catalogue;
        c.create_organisation("org1", "Hospital One").await.unwrap();
        c.create_organisation("org2", "Hospital Two").await.unwrap();
        let (_, admin) = medfed_hub::bootstrap_on(&hub, "local:admin", Some("org1"))
            .await
            .unwrap();
        let token = async |subject: &str, org: &str, grants: &[(&str, StudyRole)]| {
            let u = c.create_user(subject, Some(org), false).await.unwrap();
            for (study, role) in grants {
                c.grant(&u.id, study, *role).await.unwrap();
            }
            medfed_hub::issue_token(&hub, &u.id, 1).await.unwrap()
        };
        let both = ["org1".to_string(), "org2".to_string()];
        c.create_study("study-a", "Study A", &both).await.unwrap();
        c.create_study("study-b", "Study B", &both).await.unwrap();
        People {
            admin,
            coord: token(
                "local:coord",
                "org1",
                &[("study-a", StudyRole::StudyCoordinator)],
            )
            .await,
            op1: token("local:op1", "org1", &[("study-a", StudyRole::SiteOperator)]).await,
            op2: token("local:op2", "org2", &[("study-a", StudyRole::SiteOperator)]).await,
            res_a: token("local:res-a", "org1", &[("study-a", StudyRole::Researcher)]).await,
            res_b: token("local:res-b", "org2", &[("study-b", StudyRole::Researcher)]).await,
        }
    })
}

/// A blocking JSON call to the hub as one of the people.
pub struct Api {
    pub rt: tokio::runtime::Runtime,
    pub base: String,
    pub ca: PathBuf,
}

impl Api {
    pub fn new(d: &Path, port: u16) -> Api {
        Api {
            rt: tokio::runtime::Runtime::new().unwrap(),
            base: format!("https://127.0.0.1:{port}"),
            ca: d.join("data/tls/ca.pem"),
        }
    }

    pub fn client(&self, token: &str) -> HubClient {
        HubClient::new(&self.base, Some(&self.ca))
            .unwrap()
            .with_token(token)
    }

    pub fn call(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.rt
            .block_on(self.client(token).call(m, path, body))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get_status(&self, token: &str, path: &str) -> u16 {
        let c = self.client(token);
        self.rt
            .block_on(async { c.request(reqwest::Method::GET, path).send().await })
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn enrolment_token(&self, coord: &str, org: &str) -> String {
        let v = self.call(
            coord,
            "POST",
            "/api/v1/studies/study-a/enrolments",
            Some(json!({"organisation": org})),
        );
        v["token"].as_str().unwrap().to_string()
    }

    pub fn dataset(&self, op: &str) -> String {
        let v = self.call(
            op,
            "POST",
            "/api/v1/studies/study-a/datasets",
            Some(json!({
                "title": "Harvested CT",
                "licence": "study members only",
                "retention_until": "2099-12-31",
                "provenance": {"site": "", "deid_settings": "site policy", "medfed_version": "test"},
            })),
        );
        v["id"].as_str().unwrap().to_string()
    }

    pub fn task(&self, coord: &str, site: &str, kind: &str, params: Value) -> String {
        let v = self.call(
            coord,
            "POST",
            "/api/v1/studies/study-a/tasks",
            Some(json!({"site": site, "kind": kind, "params": params})),
        );
        v["id"].as_str().unwrap().to_string()
    }

    pub fn task_status(&self, coord: &str, id: &str) -> String {
        let v = self.call(
            coord,
            "GET",
            "/api/v1/studies/study-a/tasks?limit=500",
            None,
        );
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .map(|t| t["status"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// SOP Instance UIDs the token's owner finds by QIDO-RS, across studies and series.
    pub fn instances(&self, token: &str) -> Vec<String> {
        let mut sops = Vec::new();
        let studies = self.call(token, "GET", "/api/v1/dicomweb/studies?limit=500", None);
        for s in studies.as_array().unwrap() {
            let st = s["0020000D"]["Value"][0].as_str().unwrap();
            let series = self.call(
                token,
                "GET",
                &format!("/api/v1/dicomweb/studies/{st}/series?limit=500"),
                None,
            );
            for se in series.as_array().unwrap() {
                let se = se["0020000E"]["Value"][0].as_str().unwrap();
                let insts = self.call(
                    token,
                    "GET",
                    &format!("/api/v1/dicomweb/studies/{st}/series/{se}/instances?limit=500"),
                    None,
                );
                for i in insts.as_array().unwrap() {
                    sops.push(format!(
                        "{st}/series/{se}/instances/{}",
                        i["00080018"]["Value"][0].as_str().unwrap()
                    ));
                }
            }
        }
        sops
    }
}

/// A site node: its directory, config and (while serving) its process.
pub struct SiteProc {
    pub dir: PathBuf,
    pub dicom_port: u16,
    pub child: Option<Child>,
}

impl Drop for SiteProc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl SiteProc {
    pub fn new(root: &Path, name: &str, org: &str, quota: u64) -> SiteProc {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let dicom_port = free_port();
        std::fs::write(
            dir.join("site.toml"),
            format!(
                "organisation = \"{org}\"\n[dicom]\nae_title = \"{ae}\"\nbind = \"127.0.0.1:{dicom_port}\"\nallowed_calling_ae_titles = [\"PACS1\"]\n[storage]\ndir = \"data\"\ninbox_quota_bytes = {quota}\nmin_free_disk_bytes = 0\n[[study]]\nid = \"study-a\"\nallow = [\"harvest\"]\nauto_approve = [\"harvest\"]\n",
                ae = name.to_uppercase()
            ),
        )
        .unwrap();
        SiteProc {
            dir,
            dicom_port,
            child: None,
        }
    }

    /// A site node without a DICOM receiver, configured by `site_toml`.
    pub fn with_config(root: &Path, name: &str, site_toml: &str) -> SiteProc {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("site.toml"), site_toml).unwrap();
        SiteProc {
            dir,
            dicom_port: 0,
            child: None,
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("site.toml")
    }

    pub fn enroll(&self, hub_url: &str, token: &str) {
        let out = medfed()
            .args([
                "site",
                "enroll",
                "--name",
                "test node",
                "--hub",
                hub_url,
                "--config",
            ])
            .arg(self.config())
            .env("MEDFED_ENROLMENT_TOKEN", token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enroll: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn site_id(&self) -> String {
        let v: Value = serde_json::from_slice(
            &std::fs::read(self.dir.join("data/identity/site.json")).unwrap(),
        )
        .unwrap();
        v["site_id"].as_str().unwrap().to_string()
    }

    pub fn serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("site.log"))
            .unwrap();
        let child = medfed()
            .args(["site", "serve", "--poll-wait", "5", "--config"])
            .arg(self.config())
            .env("MEDFED_LOG", "debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.dicom_port;
        if port == 0 {
            // No DICOM receiver: the node is up once it writes its status.
            let status = self.dir.join("data/state/status.json");
            wait_for(30, "the site node's status", || {
                status.exists().then_some(())
            });
        } else {
            wait_for(30, "the site's DICOM receiver", || {
                TcpStream::connect(("127.0.0.1", port)).ok()
            });
        }
    }

    pub fn status(&self) -> medfed_site::NodeStatus {
        medfed_site::read_status(&self.dir.join("data")).unwrap_or_default()
    }

    /// Instances in the inbox now (the status file may be half a second old).
    pub fn inbox_count(&self) -> usize {
        std::fs::read_dir(self.dir.join("data/inbox"))
            .map(|r| {
                r.filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("site.log")).unwrap_or_default()
    }

    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/site.audit.jsonl")).unwrap_or_default()
    }

    /// Push files with storescu as `calling`; storescu's success.
    pub fn push(&self, calling: &str, files: &[PathBuf]) -> bool {
        Command::new("storescu")
            .args([
                "-aet",
                calling,
                "-aec",
                &self
                    .dir
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_uppercase(),
            ])
            .arg("127.0.0.1")
            .arg(self.dicom_port.to_string())
            .args(files)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}
