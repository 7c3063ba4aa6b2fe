//! The command line as users and other tools call it: exit codes, report, re-identification.

use std::process::Command;

fn medfed() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medfed"));
    c.env_remove("MEDFED_SITE_KEY");
    c
}

#[test]
fn deid_writes_report_exits_nonzero_on_refusals_and_reidentifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, out, key) = (
        tmp.path().join("in"),
        tmp.path().join("out"),
        tmp.path().join("keys/site.key"),
    );
    let status = medfed()
        .args([
            "synth",
            input.to_str().unwrap(),
            "--patients",
            "2",
            "--studies",
            "1",
            "--series",
            "1",
            "--slices",
            "3",
            "--matrix",
            "16",
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let run = medfed()
        .args([
            "deid",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
            "--option",
            "clean-descriptors",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("deid-report.json")).unwrap()).unwrap();
    assert_eq!(report["files_ok"], 6);
    assert_eq!(report["options"][0], "clean-descriptors");
    assert!(key.exists(), "site key generated on first use");

    // A pseudonym from the output reverses to the original with the key, and the lookup is logged.
    let out_file = std::fs::read(out.join("P000/ST00/SE00/IM0001.dcm")).unwrap();
    let pos = out_file.windows(2).position(|w| w == b"MF").unwrap();
    let pseudonym = String::from_utf8_lossy(&out_file[pos..pos + 18]).into_owned();
    let re = medfed()
        .args([
            "deid",
            "reidentify",
            &pseudonym,
            "--key-file",
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        re.status.success(),
        "{}",
        String::from_utf8_lossy(&re.stderr)
    );
    assert!(String::from_utf8_lossy(&re.stdout).contains("PatientID\tPID"));
    let log = std::fs::read_to_string(key.with_extension("reid-access.log")).unwrap();
    assert!(log.contains(&pseudonym) && log.contains("found"));
    let unknown = medfed()
        .args([
            "deid",
            "reidentify",
            "MFNOPE",
            "--key-file",
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!unknown.status.success());

    // One non-DICOM file: everything else is still done, the exit code says not all was.
    std::fs::write(input.join("readme.txt"), "not dicom").unwrap();
    let run = medfed()
        .args([
            "deid",
            input.to_str().unwrap(),
            tmp.path().join("out2").to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("out2/deid-report.json")).unwrap())
            .unwrap();
    assert_eq!(report["files_ok"], 6);
    assert_eq!(report["files_refused"], 1);

    // Bad arguments are clear errors, not panics.
    let bad = medfed()
        .args([
            "deid",
            input.to_str().unwrap(),
            "x",
            "--option",
            "retain-all",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown de-identification option"));
}

/// The whole demo, with every log at debug level (the demo runs the hub and the site nodes in
/// its own process, so they all log to its stderr): it succeeds, and no identifying value the
/// synthetic generator planted (names, IDs, birth dates, accession numbers, the site's and
/// staff's values, every original UID) appears in what it printed or in any log or audit file
/// it wrote.
#[test]
fn demo_runs_end_to_end_and_logs_no_original_identifier() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let run = medfed()
        .args(["demo", "--dir", dir.to_str().unwrap()])
        .env("MEDFED_LOG", "debug")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{}", tail(&stderr));
    assert!(
        stdout.contains("0 leaks") && stdout.contains("demo: OK"),
        "{stdout}"
    );
    // The debug logs are there (else the grep below would prove nothing).
    assert!(stderr.contains("DEBUG"), "{}", tail(&stderr));
    assert!(stderr.contains("instance received"), "{}", tail(&stderr));

    // The same generator with the demo's settings gives the same planted values.
    let again = medfed_synth::generate(
        &tmp.path().join("again"),
        &medfed_synth::SynthConfig {
            patients: 5,
            ..Default::default()
        },
    )
    .unwrap();
    let planted = again.planted();
    let originals: Vec<Vec<u8>> = walkdir::WalkDir::new(dir.join("site/original"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(!originals.is_empty());
    for uid in &again.original_uids {
        assert!(
            originals
                .iter()
                .any(|o| memchr::memmem::find(o, uid.as_bytes()).is_some()),
            "the demo's originals are not the ones regenerated here ({uid})"
        );
    }

    let mut logs: Vec<(String, Vec<u8>)> = vec![
        ("stdout".into(), run.stdout.clone()),
        ("stderr".into(), run.stderr.clone()),
    ];
    for e in walkdir::WalkDir::new(&dir)
        .into_iter()
        .filter_map(Result::ok)
    {
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type().is_file()
            && (name.ends_with(".log") || name.ends_with(".jsonl") || name.ends_with(".head"))
        {
            logs.push((
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    assert!(
        logs.iter()
            .filter(|(n, _)| n.ends_with("site.audit.jsonl"))
            .count()
            >= 2,
        "the site nodes' audit logs: {:?}",
        logs.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for (name, text) in &logs {
        for p in &planted {
            assert!(
                memchr::memmem::find(text, p).is_none(),
                "{:?} in {name}",
                String::from_utf8_lossy(p)
            );
        }
    }
}

fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(6000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn phantom_dir() -> std::path::PathBuf {
    let shared = medfed_testkit::shared_dir();
    shared.join("ibsi/digital_phantom/nifti")
}

#[test]
fn radiomics_manifest_writes_csv_and_parquet_with_sidecar_and_keeps_going_on_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let p = phantom_dir();
    let manifest = tmp.path().join("cases.csv");
    std::fs::write(
        &manifest,
        format!(
            "id,image,mask\nphantom,{},{}\nbroken,{},missing.nii.gz\n",
            p.join("image/phantom.nii.gz").display(),
            p.join("mask/mask.nii.gz").display(),
            p.join("image/phantom.nii.gz").display(),
        ),
    )
    .unwrap();
    let config = tmp.path().join("ibsi.toml");
    std::fs::write(
        &config,
        "[texture_discretisation]\nmethod = \"none\"\n[ivh_discretisation]\nmethod = \"none\"\n",
    )
    .unwrap();
    let mut tables = Vec::new();
    for name in ["t.csv", "t.parquet", "again.csv"] {
        let out = tmp.path().join(name);
        let run = medfed()
            .args(["radiomics", "--manifest"])
            .arg(&manifest)
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        // One case failed (missing mask): reported, the other still written, exit code 2.
        assert_eq!(
            run.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(String::from_utf8_lossy(&run.stderr).contains("missing.nii.gz"));
        let sidecar: serde_json::Value = serde_json::from_slice(
            &std::fs::read(tmp.path().join(format!("{name}.settings.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            sidecar["settings"]["texture_discretisation"]["method"],
            "none"
        );
        assert_eq!(sidecar["rows"].as_array().unwrap().len(), 2);
        tables.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(&tables[1][..4], b"PAR1");
    // Same inputs, same bytes.
    assert_eq!(tables[0], tables[2]);
    let text = String::from_utf8(tables[0].clone()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.len(), 7 + 482);
    let col = |tag: &str| header.iter().position(|h| *h == tag).unwrap();
    // IBSI reference values for the phantom: volume 556 +- 4, mean 2.15.
    let vol: f64 = row[col("morph_volume")].parse().unwrap();
    assert!((vol - 556.0).abs() <= 4.0, "{vol}");
    assert_eq!(row[col("case_id")], "phantom");
    let failed = lines.next().unwrap();
    assert!(
        failed.starts_with("broken,") && failed.contains("missing.nii.gz"),
        "{failed}"
    );
}

#[test]
fn audit_verify_reports_ok_and_names_the_first_changed_record() {
    let tmp = tempfile::tempdir().unwrap();
    let log_path = tmp.path().join("audit.jsonl");
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let public = medfed_audit::public_key_hex(&key);
    let log = medfed_audit::AuditLog::open(&log_path, key, 3).unwrap();
    for i in 0..5 {
        log.append(medfed_audit::Event {
            actor: format!("user:{i}"),
            on_behalf_of: None,
            action: "dataset.read".into(),
            resource: format!("dataset/{i}"),
            outcome: "allowed".into(),
        })
        .unwrap();
    }
    let run = |args: &[&str]| medfed().args(args).output().unwrap();
    let ok = run(&[
        "audit",
        "verify",
        "--log",
        log_path.to_str().unwrap(),
        "--public-key",
        &public,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK, 5 records, 1 signed checkpoints"));
    let text = std::fs::read_to_string(&log_path)
        .unwrap()
        .replace("dataset/1\"", "dataset/9\"");
    std::fs::write(&log_path, text).unwrap();
    let bad = run(&[
        "audit",
        "verify",
        "--log",
        log_path.to_str().unwrap(),
        "--public-key",
        &public,
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        out.contains("FAILED at line 2") && out.contains("record 2 was changed"),
        "{out}"
    );
}
