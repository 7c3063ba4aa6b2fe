//! The hub as its operators run it: `medfed hub bootstrap`, `medfed hub serve` as a process
//! killed at chosen points of an upload and restarted, `medfed audit verify` on its log; and no
//! planted identifying value ever reaches its logs or its audit log.

use std::io::Write;
use std::path::{Path, PathBuf};

use medfed_hub::client::HubClient;
use serde_json::json;

mod common;
use common::{Server, free_port, medfed, serve};

fn client(dir: &Path, s: &Server, token: &str) -> HubClient {
    HubClient::new(
        &format!("https://127.0.0.1:{}", s.port),
        Some(&dir.join("data/tls/ca.pem")),
    )
    .unwrap()
    .with_token(token)
}

fn blobs(dir: &Path, dataset: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("data/objects/datasets").join(dataset))
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn a_hub_killed_mid_upload_recovers_consistently_and_never_logs_identifying_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    std::fs::write(
        d.join("hub.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\n[audit]\ncheckpoint_every = 5\n"
        ),
    )
    .unwrap();
    let log = d.join("hub.log");
    let boot = medfed()
        .args(["hub", "bootstrap", "--organisation", "org1", "--config"])
        .arg(d.join("hub.toml"))
        .output()
        .unwrap();
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );
    let stdout = String::from_utf8(boot.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("mf_"), "{stdout}");
    // A second bootstrap is refused.
    let again = medfed()
        .args(["hub", "bootstrap", "--config"])
        .arg(d.join("hub.toml"))
        .output()
        .unwrap();
    assert!(!again.status.success());

    // A synthetic study with planted identifying values, not de-identified.
    let synth_dir = d.join("synth");
    let s = medfed()
        .args([
            "synth",
            "--patients",
            "1",
            "--studies",
            "1",
            "--series",
            "1",
            "--slices",
            "2",
        ])
        .arg(&synth_dir)
        .output()
        .unwrap();
    assert!(s.status.success());
    let raw: Vec<PathBuf> = walkdir::WalkDir::new(&synth_dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "dcm"))
        .map(|e| e.path().to_path_buf())
        .collect();
    assert!(!raw.is_empty());
    let planted = ["PLANTED^NAME^ONE", "PLANTED-MRN-TWO", "Planted Street 3"];

    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = serve(d, port, &log, None);
    let c = client(d, &server, &token);
    // Segregation of duties: nobody grants themself a study role, so the study's coordinator
    // is another account. The administrator creates it; its first token (no OIDC here) comes
    // from the hub's host while the hub serves (`hub issue-token`, through the host socket).
    let coord_id = rt.block_on(async {
        let u = c
            .call(
                reqwest::Method::POST,
                "/api/v1/users",
                Some(json!({"subject": "local:coord", "organisation": "org1"})),
            )
            .await
            .unwrap();
        u["id"].as_str().unwrap().to_string()
    });
    let issue = |user: &str| {
        medfed()
            .args([
                "hub",
                "issue-token",
                "--user",
                user,
                "--days",
                "1",
                "--config",
            ])
            .arg(d.join("hub.toml"))
            .output()
            .unwrap()
    };
    let issued = issue(&coord_id);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let coord_token = String::from_utf8(issued.stdout).unwrap().trim().to_string();
    assert!(coord_token.starts_with("mf_"), "{coord_token}");
    let unknown = issue("no-such-user");
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("the running hub refused: no user no-such-user"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let coord = client(d, &server, &coord_token);
    let (admin_id, dataset) = rt.block_on(async {
        let me = c.call(reqwest::Method::GET, "/api/v1/me", None).await.unwrap();
        let admin = me["user"]["id"].as_str().unwrap().to_string();
        c.call(reqwest::Method::POST, "/api/v1/studies", Some(json!({"id": "study-a", "title": "A", "organisations": ["org1"], "coordinator": coord_id}))).await.unwrap();
        // The administrator holds study roles only by explicit, audited grants of the coordinator.
        for role in ["site-operator", "researcher"] {
            coord.call(reqwest::Method::POST, "/api/v1/studies/study-a/grants", Some(json!({"user": admin, "role": role}))).await.unwrap();
        }
        let ds = c
            .call(
                reqwest::Method::POST,
                "/api/v1/studies/study-a/datasets",
                Some(json!({"title": "t", "licence": "l", "retention_until": "2099-01-01", "provenance": {"site": "org1", "deid_settings": "basic", "medfed_version": "0.1.0"}})),
            )
            .await
            .unwrap();
        let ds = ds["id"].as_str().unwrap().to_string();
        // Planted values in every place a request can carry them.
        let raw_bytes: Vec<Vec<u8>> = raw.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let (st, _) = c.stow(&ds, &raw_bytes).await.unwrap();
        assert_eq!(st, reqwest::StatusCode::CONFLICT, "instances that are not de-identified are refused");
        let (st, _) = c.send(c.request(reqwest::Method::GET, &format!("/api/v1/dicomweb/studies?PatientName={}&PatientID={}", planted[0], planted[1]))).await.unwrap();
        assert_eq!(st, reqwest::StatusCode::OK);
        let (st, _) = c.send(c.request(reqwest::Method::GET, "/api/v1/datasets/PLANTED%5ENAME%5EONE/objects")).await.unwrap();
        assert_eq!(st, reqwest::StatusCode::NOT_FOUND);
        let named = d.join(format!("{}.csv", planted[2]));
        std::fs::File::create(&named).unwrap().write_all(b"a,b\n1,2\n").unwrap();
        c.upload_file(&ds, &named, "text/csv", None, &|_| {}).await.unwrap();
        let anon = HubClient::new(&format!("https://127.0.0.1:{port}"), Some(&d.join("data/tls/ca.pem"))).unwrap();
        let (st, _) = anon.send(anon.request(reqwest::Method::GET, "/api/v1/me").bearer_auth(planted[0])).await.unwrap();
        assert_eq!(st, reqwest::StatusCode::UNAUTHORIZED);
        (admin, ds)
    });
    assert!(!admin_id.is_empty());
    drop(server);

    // Crash 1: the blob is published, the process dies before the catalogue commit.
    let payload = d.join("payload.bin");
    std::fs::write(&payload, vec![42u8; 300_000]).unwrap();
    let mut server = serve(d, port, &log, Some("after-blob-publish"));
    let before = blobs(d, &dataset).len();
    let r = rt.block_on(client(d, &server, &token).upload_file(
        &dataset,
        &payload,
        "application/octet-stream",
        None,
        &|_| {},
    ));
    assert!(r.is_err(), "the hub died during the upload");
    assert!(!server.child.wait().unwrap().success());
    assert_eq!(
        blobs(d, &dataset).len(),
        before + 1,
        "an orphan blob was left behind"
    );
    drop(server);

    // Restart: the orphan is removed; every catalogue entry has an intact object.
    let server = serve(d, port, &log, None);
    assert_eq!(
        blobs(d, &dataset).len(),
        before,
        "recovery removed the orphan"
    );
    let check = |server: &Server| {
        rt.block_on(async {
            let c = client(d, server, &token);
            let list = c
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/datasets/{dataset}/objects"),
                    None,
                )
                .await
                .unwrap();
            let items = list["items"].as_array().unwrap().clone();
            for o in &items {
                let body = c
                    .request(
                        reqwest::Method::GET,
                        &format!(
                            "/api/v1/datasets/{dataset}/objects/{}",
                            o["id"].as_str().unwrap()
                        ),
                    )
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                use sha2::Digest;
                assert_eq!(
                    hex::encode(sha2::Sha256::digest(&body)),
                    o["sha256"].as_str().unwrap()
                );
            }
            items.len()
        })
    };
    assert_eq!(check(&server), 1);
    drop(server);

    // Crash 2: the catalogue commit happened, the process dies before the audit record.
    let mut server = serve(d, port, &log, Some("after-index-commit"));
    let r = rt.block_on(client(d, &server, &token).upload_file(
        &dataset,
        &payload,
        "application/octet-stream",
        None,
        &|_| {},
    ));
    assert!(r.is_err());
    assert!(!server.child.wait().unwrap().success());
    drop(server);
    let server = serve(d, port, &log, None);
    assert_eq!(
        check(&server),
        2,
        "the committed object is listed and intact"
    );
    drop(server);

    // The audit chain verifies after both crashes.
    let audit = d.join("data/audit/hub.audit.jsonl");
    let records = std::fs::read_to_string(&audit).unwrap();
    let host_issues: Vec<&str> = records
        .lines()
        .filter(|l| l.contains("token.issue-on-host"))
        .collect();
    assert_eq!(host_issues.len(), 2, "both host requests are audited");
    assert!(host_issues[0].contains("allowed") && host_issues[1].contains("refused"));
    let v = medfed()
        .args(["audit", "verify", "--log"])
        .arg(&audit)
        .arg("--public-key")
        .arg(d.join("data/keys/audit.pub"))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    // The private key file, passed by mistake, is named as such (it has the public key's form).
    let v = medfed()
        .args(["audit", "verify", "--log"])
        .arg(&audit)
        .arg("--public-key")
        .arg(d.join("data/keys/audit.key"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&v.stderr);
    assert!(!v.status.success());
    assert!(
        said.contains("is the private signing key") && said.contains("audit.pub"),
        "{said}"
    );
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    assert!(audit_text.contains("recovery.remove-orphan"));
    assert!(audit_text.contains("\"outcome\":\"denied 401\""));
    // No planted value, from the test or from the synthetic set, in the logs or the audit log.
    let logs = std::fs::read(&log).unwrap();
    let audit_bytes = audit_text.as_bytes();
    let mut values: Vec<Vec<u8>> = planted.iter().map(|p| p.as_bytes().to_vec()).collect();
    values.extend(medfed_synth_planted(&raw));
    for p in &values {
        for (name, hay) in [("hub log", &logs[..]), ("audit log", audit_bytes)] {
            assert!(
                memchr::memmem::find(hay, p).is_none(),
                "planted value {:?} in the {name}",
                String::from_utf8_lossy(p)
            );
        }
    }
}

/// The identifying values the synthetic files carry (patient name and id, as written).
fn medfed_synth_planted(files: &[PathBuf]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in files {
        let obj = dicom_object::open_file(f).unwrap();
        for tag in [
            dicom_dictionary_std::tags::PATIENT_NAME,
            dicom_dictionary_std::tags::PATIENT_ID,
        ] {
            if let Ok(e) = obj.element(tag) {
                let v = e.to_str().unwrap().trim().to_string();
                if v.len() >= 4 {
                    out.push(v.into_bytes());
                }
            }
        }
    }
    out
}
