//! Site nodes as hospitals run them, all as processes on 127.0.0.1: `medfed hub serve`,
//! `medfed site enroll` with a one-time token, `medfed site serve` (receiver, outbound link,
//! harvest), DICOM pushed by dcmtk's `storescu`, results read back by QIDO-RS/WADO-RS. Then the
//! bad days: the hub killed mid-harvest, the link cut, a full inbox, a revoked site, a renewed
//! site certificate and a re-issued hub certificate. dcmtk is required in CI
//! (`MEDFED_REQUIRE_DCMTK=1`); without it these tests say SKIPPED.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Api, Server, SiteProc, free_port, hub_world, medfed, serve, wait_for};
use serde_json::{Value, json};

fn dcmtk() -> bool {
    let ok = Command::new("storescu").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("MEDFED_REQUIRE_DCMTK").is_err(),
            "MEDFED_REQUIRE_DCMTK is set but dcmtk's storescu is not installed"
        );
        eprintln!("SKIPPED: dcmtk (storescu) is not installed");
    }
    ok
}

fn synth(dir: &Path, patients: usize, slices: usize, seed: u64) -> (Vec<PathBuf>, Vec<Vec<u8>>) {
    let set = medfed_synth::generate(
        dir,
        &medfed_synth::SynthConfig {
            patients,
            studies_per_patient: 1,
            series_per_study: 1,
            slices_per_series: slices,
            seed,
            ..Default::default()
        },
    )
    .unwrap();
    let planted = set.planted();
    let mut files = set.files;
    files.sort();
    (files, planted)
}

fn hub_audit(d: &Path) -> String {
    std::fs::read_to_string(d.join("data/audit/hub.audit.jsonl")).unwrap_or_default()
}

fn start_hub(d: &Path, port: u16) -> Server {
    serve(d, port, &d.join("hub.log"), None)
}

#[test]
fn two_sites_enrol_receive_from_storescu_and_harvest_for_that_studys_researchers_only() {
    if !dcmtk() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let people = hub_world(d, port, "");
    let _hub = start_hub(d, port);
    let api = Api::new(d, port);
    let url = format!("https://127.0.0.1:{port}");

    // Enrolment: a one-time token per organisation; a used token does not work twice.
    let mut s1 = SiteProc::new(d, "site1", "org1", 1 << 30);
    let mut s2 = SiteProc::new(d, "site2", "org2", 1 << 30);
    let t1 = api.enrolment_token(&people.coord, "org1");
    s1.enroll(&url, &t1);
    s2.enroll(&url, &api.enrolment_token(&people.coord, "org2"));
    let again = SiteProc::new(d, "site3", "org1", 1 << 30);
    let out = medfed()
        .args(["site", "enroll", "--hub", &url, "--token", &t1, "--config"])
        .arg(again.config())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a used enrolment token was accepted");
    // A token whose trust fingerprint does not match the hub is refused before anything is sent.
    let forged = format!("{}{}", &t1[..t1.len() - 64], "0".repeat(64));
    let out = medfed()
        .args([
            "site", "enroll", "--hub", &url, "--token", &forged, "--config",
        ])
        .arg(again.config())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));

    // Site 1 registers two local tables for study A: the hub may see their schema, and the row
    // count only at or above the study's minimum (10 by default).
    let mut clinical = String::from("age,sex,target\n");
    for i in 0..30 {
        clinical.push_str(&format!("{},{},{}\n", 40 + i, i % 2, i % 3));
    }
    std::fs::write(s1.dir.join("clinical.csv"), clinical).unwrap();
    std::fs::write(s1.dir.join("rare.csv"), "age,target\n51,1\n62,0\n").unwrap();
    let mut toml = std::fs::read_to_string(s1.config()).unwrap();
    toml.push_str("[[table]]\nid = \"clinical\"\nstudy = \"study-a\"\npath = \"clinical.csv\"\n[[table]]\nid = \"rare\"\nstudy = \"study-a\"\npath = \"rare.csv\"\n");
    std::fs::write(s1.config(), toml).unwrap();
    s1.serve();
    s2.serve();
    let (id1, id2) = (s1.site_id(), s2.site_id());
    // The hub shows both sites online with their version.
    wait_for(30, "both sites online", || {
        let v = api.call(&people.coord, "GET", "/api/v1/studies/study-a/sites", None);
        let items = v["items"].as_array().unwrap().clone();
        (items.len() == 2
            && items
                .iter()
                .all(|s| s["online"] == true && s["version"] == env!("CARGO_PKG_VERSION")))
        .then_some(())
    });

    let v = api.call(&people.coord, "GET", "/api/v1/studies/study-a/sites", None);
    let site1 = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id1.as_str())
        .unwrap()
        .clone();
    let tables = site1["state"]["tables"].as_array().unwrap();
    assert_eq!(tables[0]["id"], "clinical");
    assert_eq!(tables[0]["columns"], json!(["age", "sex", "target"]));
    assert_eq!(tables[0]["rows"], 30);
    assert_eq!(tables[1]["id"], "rare");
    assert_eq!(
        tables[1]["rows"],
        Value::Null,
        "a count below the minimum is not shown"
    );
    // Platform administration sees no study's tables.
    let v = api.call(&people.admin, "GET", "/api/v1/sites", None);
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["state"].get("tables").is_none())
    );

    // Harvest tasks: each site into its organisation's dataset.
    let (d1, d2) = (api.dataset(&people.op1), api.dataset(&people.op2));
    let h1 = api.task(&people.coord, &id1, "harvest", json!({"dataset": d1}));
    let h2 = api.task(&people.coord, &id2, "harvest", json!({"dataset": d2}));
    for h in [&h1, &h2] {
        wait_for(30, "harvest task running", || {
            (api.task_status(&people.coord, h) == "running").then_some(())
        });
    }

    // The PACS pushes with storescu; an unregistered calling AE title is refused.
    let (f1, planted1) = synth(&d.join("pacs1"), 2, 4, 11);
    let (f2, planted2) = synth(&d.join("pacs2"), 1, 5, 22);
    assert!(
        !s1.push("ROGUE", &f1[..1]),
        "an unregistered AE title was accepted"
    );
    assert!(s1.push("PACS1", &f1));
    assert!(s2.push("PACS1", &f2));
    let want = f1.len() + f2.len();
    let found = wait_for(90, "all instances on the hub", || {
        let sops = api.instances(&people.res_a);
        (sops.len() >= want).then_some(sops)
    });
    assert_eq!(found.len(), want, "nothing duplicated");
    // A researcher of another study finds nothing and cannot retrieve.
    assert!(api.instances(&people.res_b).is_empty());
    assert_eq!(
        api.get_status(
            &people.res_b,
            &format!("/api/v1/dicomweb/studies/{}", found[0])
        ),
        404
    );
    // Retrieved objects carry no identifying value of the originals.
    let planted: Vec<Vec<u8>> = planted1.into_iter().chain(planted2).collect();
    let c = api.client(&people.res_a);
    for sop in &found {
        let body = api
            .rt
            .block_on(async {
                c.request(
                    reqwest::Method::GET,
                    &format!("/api/v1/dicomweb/studies/{sop}"),
                )
                .send()
                .await
                .unwrap()
                .bytes()
                .await
            })
            .unwrap();
        assert!(body.len() > 1000);
        for p in &planted {
            assert!(
                memchr::memmem::find(&body, p).is_none(),
                "{:?} reached the hub",
                String::from_utf8_lossy(p)
            );
        }
    }
    // The site's status counts per instance (the file is rewritten twice a second); nothing
    // failed.
    let st = wait_for(10, "the status to count every instance", || {
        let st = s1.status();
        (st.sent as usize >= f1.len()).then_some(st)
    });
    assert_eq!(
        (st.sent as usize, st.failures.len()),
        (f1.len(), 0),
        "{st:?}"
    );
    let out = medfed()
        .args(["site", "status", "--config"])
        .arg(s1.config())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hub link: connected")
            && text.contains(&format!("harvest: {} sent", f1.len())),
        "{text}"
    );

    // Policy: a task the site does not allow is refused there, though the hub sent it; the
    // refusal is in both audit logs.
    let feat = api.task(&people.coord, &id1, "features", json!({}));
    wait_for(30, "features task refused", || {
        (api.task_status(&people.coord, &feat) == "refused").then_some(())
    });
    assert!(s1.audit().contains("\"action\":\"task.refuse\""));
    assert!(hub_audit(d).contains("\"action\":\"site.task.refused\""));
    // The inbox feeds one dataset at a time: a second harvest of the same study is refused.
    let again = api.task(&people.coord, &id1, "harvest", json!({"dataset": d1}));
    wait_for(30, "second harvest refused", || {
        (api.task_status(&people.coord, &again) == "refused").then_some(())
    });
    // A cancelled task stops at the site.
    api.call(
        &people.coord,
        "DELETE",
        &format!("/api/v1/studies/study-a/tasks/{h2}"),
        None,
    );
    wait_for(30, "cancellation at the site", || {
        s2.audit()
            .contains("\"action\":\"task.cancel\"")
            .then_some(())
    });
    // Nothing identifying in the site's audit log or the hub's.
    for p in &planted {
        assert!(memchr::memmem::find(s1.audit().as_bytes(), p).is_none());
        assert!(memchr::memmem::find(hub_audit(d).as_bytes(), p).is_none());
    }
    let key = medfed_audit::load_or_create_key(&s1.dir.join("data/audit.key")).unwrap();
    drop(s1);
    medfed_audit::verify(&d.join("site1/data/site.audit.jsonl"), &key.verifying_key()).unwrap();
}

/// A TCP relay between a site and the hub that a test can cut and restore.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn new(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut held = o.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(upstream.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[test]
fn a_site_survives_hub_crashes_cut_links_a_full_inbox_certificate_changes_and_revocation() {
    if !dcmtk() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    // Site certificates live 40 s here, so the site must renew during the test (an outage
    // longer than a certificate's remaining third would need a new enrolment).
    let people = hub_world(d, port, "[sites]\ncertificate_lifetime_s = 40\n");
    let mut hub = Some(start_hub(d, port));
    let api = Api::new(d, port);
    let relay = Relay::new(port);
    let (files, _) = synth(&d.join("pacs"), 3, 6, 33);
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .collect();
    // Room for 8 instances in the inbox, not for 12.
    let quota = sizes.iter().max().unwrap() * 8 + sizes.iter().min().unwrap() / 2;
    let mut site = SiteProc::new(d, "site1", "org1", quota);
    site.enroll(
        &format!("https://127.0.0.1:{}", relay.port),
        &api.enrolment_token(&people.coord, "org1"),
    );
    site.serve();
    let id = site.site_id();
    let ds = api.dataset(&people.op1);
    let task = api.task(&people.coord, &id, "harvest", json!({"dataset": ds}));
    wait_for(30, "harvest running", || {
        (api.task_status(&people.coord, &task) == "running").then_some(())
    });

    // 1. The hub dies mid-harvest: it aborts right after committing the first batch, before
    // answering. The site retries; after the restart every instance is there exactly once.
    drop(hub.take());
    hub = Some(serve(
        d,
        port,
        &d.join("hub.log"),
        Some("after-index-commit"),
    ));
    wait_for(30, "site reconnected to the failpoint hub", || {
        site.status().connected.then_some(())
    });
    assert!(site.push("PACS1", &files[..6]));
    wait_for(60, "the hub to abort at its failpoint", || {
        hub.as_mut().unwrap().child.try_wait().unwrap().map(|_| ())
    });
    // While the hub is down: intake goes on into the inbox; the status says the hub is away.
    assert!(site.push("PACS1", &files[6..8]));
    wait_for(60, "status: hub unreachable", || {
        let st = site.status();
        (!st.connected && st.hub_error.is_some()).then_some(())
    });
    // A full inbox pauses intake (storescu gets 0xA700 for what does not fit); nothing is lost.
    assert!(
        !site.push("PACS1", &files[8..12]),
        "an over-quota push fully succeeded"
    );
    wait_for(30, "status: intake paused", || {
        site.status().intake_paused.filter(|w| w.contains("full"))
    });
    hub = Some(start_hub(d, port));
    wait_for(90, "inbox drained", || {
        (site.status().inbox_instances == 0).then_some(())
    });
    // Resend what did not fit, plus the rest, as much at a time as fits.
    for part in files[8..].chunks(8) {
        wait_for(60, "an empty inbox", || {
            (site.inbox_count() == 0).then_some(())
        });
        assert!(site.push("PACS1", part));
    }
    let sops = wait_for(90, "every instance once on the hub", || {
        let s = api.instances(&people.res_a);
        (s.len() >= files.len()).then_some(s)
    });
    assert_eq!(sops.len(), files.len(), "duplicates on the hub");

    // 2. The link is cut for a while: the site says so, keeps receiving, and catches up.
    relay.cut();
    wait_for(60, "status: link down", || {
        (!site.status().connected).then_some(())
    });
    let (more, _) = synth(&d.join("pacs-more"), 1, 3, 44);
    assert!(site.push("PACS1", &more));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(api.instances(&people.res_a).len(), files.len());
    relay.restore();
    wait_for(90, "the cut-off instances on the hub", || {
        (api.instances(&people.res_a).len() == files.len() + more.len()).then_some(())
    });

    // 2b. The site itself is killed (SIGKILL) right after receiving a burst and restarted: its
    // accepted task resumes from its own state; nothing is lost or sent twice.
    let (burst, _) = synth(&d.join("pacs-burst"), 1, 6, 77);
    assert!(site.push("PACS1", &burst));
    if let Some(c) = &mut site.child {
        let _ = c.kill();
        let _ = c.wait();
    }
    site.serve();
    let before_certs = files.len() + more.len() + burst.len();
    wait_for(90, "the burst on the hub after the site's restart", || {
        (api.instances(&people.res_a).len() == before_certs).then_some(())
    });

    // 3. Certificates: the site renewed its short-lived one on its own (and is still online
    // after the first expired); a re-issued hub certificate under the same CA changes nothing.
    wait_for(60, "a renewal", || {
        hub_audit(d)
            .contains("\"action\":\"site.certificate.renew\"")
            .then_some(())
    });
    drop(hub.take());
    let out = medfed()
        .args(["hub", "reissue-cert", "--config"])
        .arg(d.join("hub.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hub = Some(start_hub(d, port));
    let (after, _) = synth(&d.join("pacs-after"), 1, 2, 55);
    assert!(site.push("PACS1", &after));
    let total = before_certs + after.len();
    wait_for(90, "harvest after the hub's new certificate", || {
        (api.instances(&people.res_a).len() == total).then_some(())
    });

    // 4. Revocation cuts the site off at once; what it receives stays in its inbox.
    api.call(
        &people.admin,
        "POST",
        &format!("/api/v1/sites/{id}/revoke"),
        None,
    );
    wait_for(30, "status: refused", || {
        site.status().hub_error.filter(|e| e.contains("refused"))
    });
    let (late, _) = synth(&d.join("pacs-late"), 1, 2, 66);
    assert!(site.push("PACS1", &late));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(api.instances(&people.res_a).len(), total);
    assert_eq!(site.inbox_count(), late.len());
    let v = api.call(&people.admin, "GET", "/api/v1/sites", None);
    assert_eq!(v["items"][0]["revoked"], true);
    assert_eq!(v["items"][0]["online"], false);
    let log = site.log();
    assert!(!log.contains("panicked"), "{log}");
    drop(hub);
}

/// A dcmtk tool's exit status and everything it printed (at -v, so the association's answer is
/// in it).
fn dcmtk_tool(tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool).arg("-v").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The task as the hub shows it to the coordinator (status, detail).
fn task_on_hub(api: &Api, coord: &str, id: &str) -> Value {
    let v = api.call(
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
        .cloned()
        .unwrap_or_default()
}

/// An enrolled site process with a running harvest task into a new dataset of study A.
fn harvesting_site(d: &Path, api: &Api, people: &common::People, port: u16) -> (SiteProc, String) {
    let mut site = SiteProc::new(d, "site1", "org1", 1 << 30);
    site.enroll(
        &format!("https://127.0.0.1:{port}"),
        &api.enrolment_token(&people.coord, "org1"),
    );
    site.serve();
    let ds = api.dataset(&people.op1);
    let task = api.task(
        &people.coord,
        &site.site_id(),
        "harvest",
        json!({"dataset": ds}),
    );
    wait_for(30, "harvest running", || {
        (api.task_status(&people.coord, &task) == "running").then_some(())
    });
    (site, task)
}

/// The probes of the review, replayed with dcmtk against a site process: C-FIND, C-MOVE and
/// C-GET are refused at negotiation (the node proposes no Query/Retrieve context, so the
/// tools find no acceptable presentation context), and a store addressed to another AE title
/// is rejected (A-ASSOCIATE-RJ, called AE title not recognised) and so neither stored nor
/// harvested; the right AE title still stores and harvests.
#[test]
fn the_site_receiver_refuses_queries_retrievals_and_stores_for_another_ae_title() {
    if !dcmtk() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let people = hub_world(d, port, "");
    let _hub = start_hub(d, port);
    let api = Api::new(d, port);
    let (site, _task) = harvesting_site(d, &api, &people, port);
    let dicom_port = site.dicom_port.to_string();
    let peer = [
        "-aet",
        "PACS1",
        "-aec",
        "SITE1",
        "127.0.0.1",
        dicom_port.as_str(),
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        extra
            .iter()
            .chain(peer.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |tool: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dcmtk_tool(tool, &args)
    };

    let (ok, text) = run("echoscu", with(&[]));
    assert!(ok, "C-ECHO from a listed AE title failed: {text}");
    let query = [
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID=1.2.3.4",
    ];
    for (tool, extra) in [
        ("findscu", query.to_vec()),
        ("movescu", [&["-aem", "PACS1"][..], &query[..]].concat()),
        ("getscu", query.to_vec()),
    ] {
        let (ok, text) = run(tool, with(&extra));
        assert!(!ok, "{tool} succeeded against the site: {text}");
        assert!(
            // findscu, movescu: every proposed context refused; getscu, which also proposes
            // storage contexts (to receive what it gets), has none left for C-GET.
            text.contains("No Acceptable Presentation Contexts")
                || text.contains("No adequate Presentation Contexts for sending C-GET"),
            "{tool} was not refused at negotiation: {text}"
        );
    }

    let (files, _) = synth(&d.join("pacs"), 1, 3, 5);
    let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let mut args = vec![
        "-aet",
        "PACS1",
        "-aec",
        "NOTME",
        "127.0.0.1",
        dicom_port.as_str(),
    ];
    args.extend(paths.iter().map(String::as_str));
    let (ok, text) = dcmtk_tool("storescu", &args);
    assert!(!ok, "a store addressed to NOTME succeeded: {text}");
    assert!(
        text.to_lowercase()
            .contains("called ae title not recognized"),
        "not rejected for its called AE title: {text}"
    );
    // Long enough for the node's harvest loop (every 2 s) to have found anything.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(site.inbox_count(), 0, "a store for NOTME reached the inbox");
    assert!(api.instances(&people.res_a).is_empty(), "and the hub");
    assert!(!site.log().contains("instance received"), "{}", site.log());

    // Addressed to the site itself, the same files are stored and harvested.
    assert!(site.push("PACS1", &files));
    let found = wait_for(60, "the instances on the hub", || {
        let s = api.instances(&people.res_a);
        (s.len() >= files.len()).then_some(s)
    });
    assert_eq!(found.len(), files.len());
    assert!(!site.log().contains("panicked"), "{}", site.log());
}

/// Fail closed, with processes: the site's audit log made unwritable (its signed head replaced
/// by a directory: no permission bit stops root, which the tests run as, but nothing can be
/// renamed onto a directory), the node keeps receiving into its inbox but sends nothing; its
/// status and the task on the hub say why. Writable again, everything goes, once.
#[test]
fn with_its_audit_log_unwritable_a_site_releases_nothing_and_says_why() {
    if !dcmtk() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let people = hub_world(d, port, "");
    let _hub = start_hub(d, port);
    let api = Api::new(d, port);
    let (site, task) = harvesting_site(d, &api, &people, port);
    let head = medfed_audit::head_path(&site.dir.join("data/site.audit.jsonl"));
    std::fs::remove_file(&head).unwrap();
    std::fs::create_dir(&head).unwrap();

    let (files, planted) = synth(&d.join("pacs"), 1, 4, 9);
    assert!(site.push("PACS1", &files), "receiving is not a release");
    let why = wait_for(30, "the status to say why nothing is sent", || {
        site.status()
            .harvest_paused
            .filter(|w| w.contains("audit log unwritable"))
    });
    assert!(why.contains("nothing is sent"), "{why}");
    let detail = wait_for(30, "the task on the hub to say why", || {
        let t = task_on_hub(&api, &people.coord, &task);
        let detail = t["detail"].as_str().unwrap_or_default().to_string();
        detail.contains("audit log unwritable").then_some(detail)
    });
    assert_eq!(
        task_on_hub(&api, &people.coord, &task)["status"],
        "running",
        "{detail}"
    );
    assert!(
        api.instances(&people.res_a).is_empty(),
        "released without an audit record"
    );
    assert_eq!(
        site.inbox_count(),
        files.len(),
        "the inbox keeps everything"
    );

    std::fs::remove_dir(&head).unwrap();
    let found = wait_for(
        60,
        "the instances on the hub once the log is writable",
        || {
            let s = api.instances(&people.res_a);
            (s.len() >= files.len()).then_some(s)
        },
    );
    assert_eq!(found.len(), files.len(), "nothing twice");
    wait_for(30, "the task's reason cleared", || {
        let t = task_on_hub(&api, &people.coord, &task);
        (t["detail"].as_str().unwrap_or_default().is_empty()).then_some(())
    });
    // Every instance's release is recorded (a failed append may have left its line before
    // the head: the log holds more "sending" records than sends, never fewer).
    let audit = site.audit();
    assert!(audit.matches("\"action\":\"harvest.release\"").count() >= files.len());
    assert_eq!(audit.matches("\"outcome\":\"sent\"").count(), files.len());
    for p in &planted {
        assert!(memchr::memmem::find(audit.as_bytes(), p).is_none());
        assert!(memchr::memmem::find(site.log().as_bytes(), p).is_none());
    }
    let key = medfed_audit::load_or_create_key(&site.dir.join("data/audit.key")).unwrap();
    let log = site.dir.join("data/site.audit.jsonl");
    drop(site);
    medfed_audit::verify(&log, &key.verifying_key()).unwrap();
}
