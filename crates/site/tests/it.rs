//! The site's DICOM receiver against a real peer: dcmtk's `storescu` and `echoscu` (required in
//! CI through `MEDFED_REQUIRE_DCMTK=1`; skipped with a message where dcmtk is absent).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use medfed_site::{Inbox, Receiver};

fn dcmtk() -> bool {
    let ok = Command::new("storescu").arg("--version").output().is_ok();
    if !ok {
        medfed_testkit::skip(
            Some("MEDFED_REQUIRE_DCMTK"),
            "dcmtk (storescu) is not installed",
        );
    }
    ok
}

struct Running {
    port: u16,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(dir: &Path, quota: u64) -> Running {
    let inbox = Arc::new(Inbox::open(dir, quota).unwrap());
    let r = Receiver::bind(
        "127.0.0.1:0".parse().unwrap(),
        "MEDFED",
        &["PACS1".to_string()],
    )
    .unwrap();
    let port = r.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let (i, s) = (inbox.clone(), stop.clone());
    let thread = Some(std::thread::spawn(move || r.run(i, s).unwrap()));
    Running {
        port,
        inbox,
        stop,
        thread,
    }
}

fn storescu(calling: &str, port: u16, files: &[PathBuf]) -> std::process::Output {
    Command::new("storescu")
        .args([
            "-aet",
            calling,
            "-aec",
            "MEDFED",
            "127.0.0.1",
            &port.to_string(),
        ])
        .args(files)
        .output()
        .unwrap()
}

fn synthetic(dir: &Path) -> Vec<PathBuf> {
    let cfg = medfed_synth::SynthConfig {
        patients: 1,
        studies_per_patient: 1,
        series_per_study: 1,
        slices_per_series: 4,
        ..Default::default()
    };
    medfed_synth::generate(dir, &cfg).unwrap().files
}

#[test]
fn storescu_delivers_into_the_inbox_only_for_allowed_callers() {
    if !dcmtk() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = synthetic(&tmp.path().join("src"));
    let site = start(&tmp.path().join("inbox"), 1 << 30);
    // C-ECHO.
    let echo = Command::new("echoscu")
        .args([
            "-aet",
            "PACS1",
            "-aec",
            "MEDFED",
            "127.0.0.1",
            &site.port.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        echo.status.success(),
        "{}",
        String::from_utf8_lossy(&echo.stderr)
    );
    // An unregistered calling AE title is refused and stores nothing.
    let out = storescu("INTRUDER", site.port, &files);
    assert!(!out.status.success(), "an unknown caller must be refused");
    assert!(site.inbox.list().unwrap().is_empty());
    // The allowed caller's instances arrive whole, as sent; sending again duplicates nothing.
    let out = storescu("PACS1", site.port, &files);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = storescu("PACS1", site.port, &files);
    assert!(out.status.success());
    let stored = site.inbox.list().unwrap();
    assert_eq!(stored.len(), files.len());
    for f in &files {
        let sent = dicom_object::open_file(f).unwrap();
        let uid = sent
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        let got = dicom_object::open_file(site.inbox.dir().join(format!("{uid}.dcm"))).unwrap();
        let px = |o: &dicom_object::DefaultDicomObject| {
            o.element(dicom_dictionary_std::tags::PIXEL_DATA)
                .unwrap()
                .to_bytes()
                .unwrap()
                .to_vec()
        };
        assert_eq!(px(&got), px(&sent), "pixel data as sent");
        let name = |o: &dicom_object::DefaultDicomObject| {
            o.element(dicom_dictionary_std::tags::PATIENT_NAME)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            name(&got),
            name(&sent),
            "the inbox holds the original (it never leaves the site)"
        );
    }
}

#[test]
fn a_full_inbox_refuses_instances_and_keeps_what_it_has() {
    if !dcmtk() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let files = synthetic(&tmp.path().join("src"));
    let one = std::fs::metadata(&files[0]).unwrap().len();
    // Room for about two instances.
    let site = start(&tmp.path().join("inbox"), one * 2 + one / 2);
    assert!(files.len() > 2);
    storescu("PACS1", site.port, &files);
    let kept = site.inbox.list().unwrap();
    assert_eq!(kept.len(), 2, "exactly what fits is kept");
    for k in &kept {
        dicom_object::open_file(k).expect("every kept file is complete");
    }
    assert!(site.inbox.used_bytes() <= one * 2 + one / 2);
}

#[test]
fn medfeds_own_scu_stores_byte_identical_data_sets_and_is_refused_like_any_stranger() {
    let tmp = tempfile::tempdir().unwrap();
    let files = synthetic(&tmp.path().join("src"));
    let site = start(&tmp.path().join("inbox"), 1 << 30);
    let addr = format!("127.0.0.1:{}", site.port);
    assert!(medfed_site::send_files(&addr, "STRANGER", "MEDFED", &files).is_err());
    assert!(site.inbox.list().unwrap().is_empty());
    let r = medfed_site::send_files(&addr, "PACS1", "MEDFED", &files).unwrap();
    assert_eq!((r.stored, r.refused.len()), (files.len(), 0));
    // What arrived is the sent data set, byte for byte, after a file meta group.
    for f in &files {
        let sent = std::fs::read(f).unwrap();
        let uid = dicom_object::open_file(f)
            .unwrap()
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches('\0')
            .to_string();
        let got = std::fs::read(site.inbox.dir().join(format!("{uid}.dcm"))).unwrap();
        let meta_end = |b: &[u8]| {
            let len = u32::from_le_bytes(b[140..144].try_into().unwrap()) as usize;
            144 + len
        };
        assert_eq!(
            &sent[meta_end(&sent)..],
            &got[meta_end(&got)..],
            "{}",
            f.display()
        );
    }
    // Sent again: the receiver recognises every instance; nothing is duplicated.
    let again = medfed_site::send_files(&addr, "PACS1", "MEDFED", &files).unwrap();
    assert_eq!(again.stored, files.len());
    assert_eq!(site.inbox.list().unwrap().len(), files.len());
}
