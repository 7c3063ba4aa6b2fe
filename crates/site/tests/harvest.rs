//! Harvest end to end on 127.0.0.1: a hub (in this process, real HTTPS), a site's inbox filled by
//! folder import, de-identification with the study's options, STOW-RS into the study's dataset;
//! a researcher finds and retrieves the instances, which carry no identifying value of the
//! originals; a second pass and a replayed instance duplicate nothing; a study whose policy does
//! not allow harvest is refused at the site, and the refusal is in the site's audit log.

use std::path::PathBuf;

use medfed_catalogue::User;
use medfed_hub::client::HubClient;
use medfed_policy::StudyRole;
use medfed_site::{Harvester, Inbox, SitePolicy};
use serde_json::json;

/// A hub on embedded defaults with organisation `org1`, study `lung-ct` and its site operator.
async fn hub_with_site_operator(d: &std::path::Path) -> (medfed_hub::RunningHub, User) {
    let running = medfed_hub::start(medfed_hub::HubConfig {
        data_dir: d.join("hub"),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let cat = &running.hub.catalogue;
    cat.create_organisation("org1", "One").await.unwrap();
    cat.create_study("lung-ct", "Lung CT", &["org1".into()])
        .await
        .unwrap();
    let op = cat
        .create_user("local:site-op", Some("org1"), false)
        .await
        .unwrap();
    cat.grant(&op.id, "lung-ct", StudyRole::SiteOperator)
        .await
        .unwrap();
    (running, op)
}

/// The site's inbox, filled with `files` as a PACS would send them.
fn inbox_with(policy: &SitePolicy, files: &[PathBuf]) -> Inbox {
    let inbox = Inbox::open(&policy.inbox_dir(), 1 << 30).unwrap();
    for f in files {
        inbox.import(f).unwrap();
    }
    inbox
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_is_harvested_de_identified_once_and_only_where_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The hub.
    let (running, op) = hub_with_site_operator(d).await;
    let hub = running.hub.clone();
    let cat = &hub.catalogue;
    let res = cat
        .create_user("local:res", Some("org1"), false)
        .await
        .unwrap();
    cat.grant(&res.id, "lung-ct", StudyRole::Researcher)
        .await
        .unwrap();
    let outsider = cat
        .create_user("local:other", Some("org1"), false)
        .await
        .unwrap();
    let base = format!("https://127.0.0.1:{}", running.addr.port());
    let client = HubClient::new(&base, running.ca_pem.as_deref()).unwrap();
    let opc = client.with_token(&medfed_hub::issue_token(&hub, &op.id, 1).await.unwrap());
    let resc = client.with_token(&medfed_hub::issue_token(&hub, &res.id, 1).await.unwrap());
    let otherc = client.with_token(
        &medfed_hub::issue_token(&hub, &outsider.id, 1)
            .await
            .unwrap(),
    );
    let ds = opc
        .call(
            reqwest::Method::POST,
            "/api/v1/studies/lung-ct/datasets",
            Some(json!({"title": "harvest", "licence": "study members", "retention_until": "2099-01-01",
                        "provenance": {"site": "org1", "deid_settings": "basic + retain-long-modified-dates", "medfed_version": "test"}})),
        )
        .await
        .unwrap();
    let ds = ds["id"].as_str().unwrap().to_string();

    // The site: policy, inbox filled from a folder of originals with planted identifying values.
    let site_dir = d.join("site");
    let policy = SitePolicy::parse(&format!(
        "organisation = \"org1\"\n[storage]\ndir = \"{}\"\n[[study]]\nid = \"lung-ct\"\nallow = [\"harvest\"]\ndeid_options = [\"retain-long-modified-dates\"]\n[[study]]\nid = \"brain-mr\"\nallow = [\"features\"]\n",
        site_dir.display()
    ))
    .unwrap();
    let cfg = medfed_synth::SynthConfig {
        patients: 2,
        studies_per_patient: 1,
        series_per_study: 1,
        slices_per_series: 5,
        ..Default::default()
    };
    let set = medfed_synth::generate(&d.join("pacs"), &cfg).unwrap();
    let inbox = inbox_with(&policy, &set.files);
    let audit_key = medfed_audit::load_or_create_key(&site_dir.join("audit.key")).unwrap();
    let audit_pub = audit_key.verifying_key();
    let audit_path = site_dir.join("site.audit.jsonl");
    let audit = medfed_audit::AuditLog::open(&audit_path, audit_key, 10).unwrap();
    let site_key = site_dir.join("site.key");
    let harvester = Harvester {
        policy: &policy,
        study: "lung-ct",
        dataset: &ds,
        inbox: &inbox,
        hub: &opc,
        site_key: &site_key,
        audit: &audit,
    };

    let r = harvester.run_once().await.unwrap();
    assert_eq!(
        (r.sent, r.already_there, r.failed.len()),
        (10, 0, 0),
        "{r:?}"
    );
    assert!(inbox.list().unwrap().is_empty());
    // A second pass has nothing to do; a replayed original is recognised, not duplicated.
    assert_eq!(harvester.run_once().await.unwrap().sent, 0);
    let harvested: Vec<PathBuf> = std::fs::read_dir(site_dir.join("harvested"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(harvested.len(), 10);
    inbox.import(&harvested[0]).unwrap();
    let r = harvester.run_once().await.unwrap();
    assert_eq!((r.sent, r.already_there), (0, 1));

    // The researcher finds the two studies, ten instances, on the hub; nobody else does.
    let studies = resc
        .call(reqwest::Method::GET, "/api/v1/dicomweb/studies", None)
        .await
        .unwrap();
    let studies = studies.as_array().unwrap();
    assert_eq!(studies.len(), 2);
    let total: u64 = studies
        .iter()
        .map(|s| s["00201208"]["Value"][0].as_u64().unwrap())
        .sum();
    assert_eq!(total, 10);
    let none = otherc
        .call(reqwest::Method::GET, "/api/v1/dicomweb/studies", None)
        .await
        .unwrap();
    assert!(none.as_array().unwrap().is_empty());
    // Retrieved instances carry no identifying value of the originals.
    let planted = set.planted();
    let study_uid = studies[0]["0020000D"]["Value"][0].as_str().unwrap();
    let series = resc
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/dicomweb/studies/{study_uid}/series"),
            None,
        )
        .await
        .unwrap();
    let series_uid = series[0]["0020000E"]["Value"][0].as_str().unwrap();
    let insts = resc
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/dicomweb/studies/{study_uid}/series/{series_uid}/instances"),
            None,
        )
        .await
        .unwrap();
    for i in insts.as_array().unwrap() {
        let sop = i["00080018"]["Value"][0].as_str().unwrap();
        let body = resc
            .request(
                reqwest::Method::GET,
                &format!(
                    "/api/v1/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop}"
                ),
            )
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(body.len() > 1000);
        for p in &planted {
            assert!(
                memchr::memmem::find(&body, p).is_none(),
                "planted value {:?} reached the hub",
                String::from_utf8_lossy(p)
            );
        }
    }
    // Policy: a study that does not allow harvest is refused at the site, and audited.
    let refused = Harvester {
        study: "brain-mr",
        ..harvester
    };
    assert!(matches!(
        refused.run_once().await,
        Err(medfed_site::HarvestError::Refused(_))
    ));
    drop(audit);
    let log = std::fs::read_to_string(&audit_path).unwrap();
    assert!(log.contains("\"action\":\"harvest.refuse\""));
    assert_eq!(log.matches("\"outcome\":\"sent\"").count(), 10);
    for p in &planted {
        assert!(memchr::memmem::find(log.as_bytes(), p).is_none());
    }
    medfed_audit::verify(&audit_path, &audit_pub).unwrap();
    // The originals and the re-identification table stay at the site.
    assert!(medfed_deid::reid_table_path(&site_key).exists());
    running.stop().await;
}

/// Fail closed: with the site's audit log unwritable, a pass sends nothing, says why, and the
/// inbox keeps every instance; once the log can be written again, everything is sent, and each
/// instance's release is in the log before it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_audit_log_unwritable_a_harvest_sends_nothing_and_keeps_the_inbox() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (running, op) = hub_with_site_operator(d).await;
    let hub = running.hub.clone();
    let base = format!("https://127.0.0.1:{}", running.addr.port());
    let opc = HubClient::new(&base, running.ca_pem.as_deref())
        .unwrap()
        .with_token(&medfed_hub::issue_token(&hub, &op.id, 1).await.unwrap());
    let ds = opc
        .call(
            reqwest::Method::POST,
            "/api/v1/studies/lung-ct/datasets",
            Some(json!({"title": "harvest", "licence": "study members", "retention_until": "2099-01-01",
                        "provenance": {"site": "org1", "deid_settings": "basic", "medfed_version": "test"}})),
        )
        .await
        .unwrap();
    let ds = ds["id"].as_str().unwrap().to_string();
    let site_dir = d.join("site");
    let policy = SitePolicy::parse(&format!(
        "organisation = \"org1\"\n[storage]\ndir = \"{}\"\n[[study]]\nid = \"lung-ct\"\nallow = [\"harvest\"]\n",
        site_dir.display()
    ))
    .unwrap();
    let set = medfed_synth::generate(
        &d.join("pacs"),
        &medfed_synth::SynthConfig {
            patients: 1,
            studies_per_patient: 1,
            series_per_study: 1,
            slices_per_series: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let inbox = inbox_with(&policy, &set.files);
    let audit_key = medfed_audit::load_or_create_key(&site_dir.join("audit.key")).unwrap();
    let audit_pub = audit_key.verifying_key();
    let audit_path = site_dir.join("site.audit.jsonl");
    let audit = medfed_audit::AuditLog::open(&audit_path, audit_key, 10).unwrap();
    let site_key = site_dir.join("site.key");
    let harvester = Harvester {
        policy: &policy,
        study: "lung-ct",
        dataset: &ds,
        inbox: &inbox,
        hub: &opc,
        site_key: &site_key,
        audit: &audit,
    };
    // Tests run as root, for whom no permission bit makes a file unwritable. What fails for
    // root too: the log's signed head (rewritten by every append, by rename) replaced by a
    // directory, onto which no file can be renamed.
    let head = medfed_audit::head_path(&audit_path);
    std::fs::remove_file(&head).unwrap();
    std::fs::create_dir(&head).unwrap();
    let err = harvester.run_once().await.unwrap_err();
    assert!(
        matches!(err, medfed_site::HarvestError::Audit(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("site.audit.jsonl.head"), "{err}");
    assert_eq!(inbox.list().unwrap().len(), 4, "the inbox keeps everything");
    let on_hub = opc
        .call(reqwest::Method::GET, "/api/v1/dicomweb/studies", None)
        .await
        .unwrap();
    assert!(
        on_hub.as_array().unwrap().is_empty(),
        "released without an audit record: {on_hub}"
    );

    // The log writable again: everything goes, each release recorded before it was sent.
    std::fs::remove_dir(&head).unwrap();
    let r = harvester.run_once().await.unwrap();
    assert_eq!((r.sent, r.failed.len()), (4, 0), "{r:?}");
    assert!(inbox.list().unwrap().is_empty());
    drop(audit);
    let log = std::fs::read_to_string(&audit_path).unwrap();
    // Lines are records (flat: action, resource, ...) and checkpoints.
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["type"] == "record")
        .collect();
    let sends: Vec<usize> = (0..records.len())
        .filter(|&i| records[i]["action"] == "harvest.send")
        .collect();
    assert_eq!(sends.len(), 4);
    for i in sends {
        let resource = &records[i]["resource"];
        assert!(
            records[..i]
                .iter()
                .any(|r| r["action"] == "harvest.release" && r["resource"] == *resource),
            "{resource} sent without a release record before it"
        );
    }
    assert_eq!(log.matches("\"outcome\":\"sent\"").count(), 4);
    for p in &set.planted() {
        assert!(memchr::memmem::find(log.as_bytes(), p).is_none());
    }
    medfed_audit::verify(&audit_path, &audit_pub).unwrap();
    running.stop().await;
}
