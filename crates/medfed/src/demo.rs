//! `medfed demo` (the main job on embedded defaults) and `medfed synth`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use medfed_deid::{DeidOption, DeidProfile, ReidTable, SiteKey, reid_table_path, verify_output};
use medfed_synth::{SynthConfig, generate};

use crate::deid_cmd::run_batch;

#[derive(Args)]
pub struct DemoArgs {
    /// Working folder for the demo's data [default: a new folder under the system's temp dir]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Number of synthetic patients (one character set each, cycling)
    #[arg(long, default_value_t = 5)]
    patients: usize,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Output folder (created; must be empty or absent)
    out: PathBuf,
    #[arg(long, default_value_t = 5)]
    patients: usize,
    #[arg(long, default_value_t = 2)]
    studies: usize,
    #[arg(long, default_value_t = 2)]
    series: usize,
    #[arg(long, default_value_t = 12)]
    slices: usize,
    /// Rows and columns of each slice
    #[arg(long, default_value_t = 64)]
    matrix: u16,
    #[arg(long, default_value_t = 20261126)]
    seed: u64,
}

pub fn synth(args: &SynthArgs) -> anyhow::Result<ExitCode> {
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        anyhow::bail!("{} is not empty", args.out.display());
    }
    let cfg = SynthConfig {
        patients: args.patients,
        studies_per_patient: args.studies,
        series_per_study: args.series,
        slices_per_series: args.slices,
        rows: args.matrix,
        columns: args.matrix,
        seed: args.seed,
    };
    let set = generate(&args.out, &cfg)?;
    println!(
        "{} files, {:.1} MB in {}",
        set.files.len(),
        set.bytes as f64 / 1e6,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("medfed-demo-")
            .tempdir()?
            .keep(),
    };
    let original = dir.join("site/original");
    let deidentified = dir.join("site/deidentified");
    // The demo's own key, so it never touches a real site key.
    let key_path = dir.join("site/site.key");
    if original.exists() || deidentified.exists() {
        anyhow::bail!("{} already holds a demo; pass a new --dir", dir.display());
    }
    println!("medfed demo in {}", dir.display());

    let t = Instant::now();
    let cfg = SynthConfig {
        patients: args.patients,
        ..SynthConfig::default()
    };
    let set = generate(&original, &cfg).context("generating the synthetic study set")?;
    println!(
        "1. generated {} CT images of {} patients ({} studies, {:.1} MB) with identifying values in tags, free text, nested sequences, private blocks and 5 character sets [{:.2} s]",
        set.files.len(),
        cfg.patients,
        cfg.patients * cfg.studies_per_patient,
        set.bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let profile = DeidProfile::with_options([
        DeidOption::RetainLongModifiedDates,
        DeidOption::CleanDescriptors,
    ])?;
    let t = Instant::now();
    let report = run_batch(&original, &deidentified, &profile, &key_path, 0)?;
    report.write_json(&deidentified.join("deid-report.json"))?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "2. de-identified (Basic Profile + retain-long-modified-dates + clean-descriptors): {} ok, {} refused, {} errors [{:.2} s, {:.0} files/s]",
        report.files_ok,
        report.files_refused,
        report.files_error,
        secs,
        report.files_total as f64 / secs.max(1e-9)
    );

    let t = Instant::now();
    let planted = set.planted();
    let v = verify_output(&deidentified, &planted)?;
    println!(
        "3. verified {} output files: {} unreadable, {} unmarked, {} leaks of {} planted identifying values, {}/{} image references resolve [{:.2} s]",
        v.files,
        v.unreadable.len(),
        v.unmarked.len(),
        v.leaks.len(),
        planted.len(),
        v.references - v.dangling_references,
        v.references,
        t.elapsed().as_secs_f64()
    );
    for (path, i) in v.leaks.iter().take(10) {
        println!("   LEAK: planted value #{i} in {}", path.display());
    }

    let key = SiteKey::load(&key_path)?;
    let table = ReidTable::new(reid_table_path(&key_path), &key);
    let entries = table.read_all()?;
    let reversed = set
        .patients
        .iter()
        .filter(|p| entries.values().any(|who| who.patient_id == p.patient_id))
        .count();
    println!(
        "4. re-identification table (encrypted, stays at the site): {} pseudonyms, {}/{} patients reversible with the site key",
        entries.len(),
        reversed,
        set.patients.len()
    );

    let t = Instant::now();
    let (regions, failed, features) =
        demo_features(&deidentified, &cfg, &dir.join("site/features.csv"))?;
    println!(
        "5. IBSI radiomics of the de-identified lesions: {regions} regions x {features} features, {failed} failed -> {} (settings beside it) [{:.2} s]",
        dir.join("site/features.csv").display(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let hub = demo_hub(
        &dir.join("hub"),
        &deidentified,
        &SitesInput {
            original: &original,
            planted: &planted,
            work: &dir.join("sites"),
        },
    )?;
    println!(
        "6. hub on embedded defaults (SQLite, encrypted local objects, TLS 1.2+ on {}): {} de-identified instances of {} studies stored via STOW-RS by the site operator; the researcher finds {} studies via QIDO-RS and retrieves an instance via WADO-RS {}; audit log verifies ({} records) [{:.2} s]",
        hub.address,
        hub.stored,
        hub.studies_stored,
        hub.studies_found,
        if hub.retrieved_identical {
            "byte-identical"
        } else {
            "DIFFERENT"
        },
        hub.audit_records,
        t.elapsed().as_secs_f64()
    );
    let s = &hub.sites;
    println!(
        "7. two site nodes (two hospitals) enrolled with one-time tokens, linked to the hub over mutual TLS; the PACS pushed {} original instances over DICOM C-STORE; the nodes de-identified them under their own site policy and harvested them: {} found on the hub by the study's researcher, {} identifying values in them, {} seen by a researcher of no part in the study; site audit logs {} [{:.2} s]",
        s.sent_by_pacs,
        s.found_on_hub,
        s.leaks,
        s.outsider_sees,
        if s.site_audit_ok {
            "verify"
        } else {
            "DO NOT VERIFY"
        },
        hub.sites_secs
    );
    let f = &hub.federated;
    println!(
        "8. a federated study across four hospitals (UCI Heart Disease, four real centres, CC BY 4.0, Janosi et al. 1988): {} site nodes each register their own table; exact federated logistic regression with secure aggregation ({} rounds) equals pooled training to {:.1e} in every coefficient; per-centre mean test accuracy: federated Newton {:.3}, pooled (all rows in one place, reference only) {:.3}, each centre alone {:.3}, FedAvg 50 rounds {:.3} (median round {:.1} ms); overall AUC from the secure sum {:.3}; results stored as dataset {}; site audit logs {} [{:.2} s]",
        f.sites,
        f.newton_rounds,
        f.max_coefficient_difference,
        f.newton_accuracy,
        f.pooled_accuracy,
        f.alone_accuracy,
        f.fedavg_accuracy,
        f.fedavg_median_round_ms,
        f.overall_auc,
        f.dataset,
        if f.site_audit_ok {
            "verify"
        } else {
            "DO NOT VERIFY"
        },
        hub.federated_secs
    );
    let ok = v.is_clean()
        && report.all_ok()
        && hub.ok()
        && s.ok()
        && f.ok()
        && reversed == set.patients.len()
        && failed == 0
        && regions > 0;
    println!("{}", if ok { "demo: OK" } else { "demo: FAILED" });
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Step 5: each de-identified series gets a lesion mask (the synthetic lesion's known sphere,
/// written as NIfTI on the series' grid) and its features go into one table.
fn demo_features(
    deidentified: &std::path::Path,
    cfg: &SynthConfig,
    out: &std::path::Path,
) -> anyhow::Result<(usize, usize, usize)> {
    use medfed_radiomics::{FeatureTable, RadiomicsSettings};
    use medfed_volume::{RegionSelector, Volume, dicom_series, nifti};

    let masks = out.with_file_name("lesion-masks");
    std::fs::create_dir_all(&masks)?;
    let mut series: Vec<PathBuf> = walkdir::WalkDir::new(deidentified)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir() && e.file_name().to_string_lossy().starts_with("SE"))
        .map(|e| e.into_path())
        .collect();
    series.sort();
    // CT in HU: fixed bin size of 25 HU for texture, as is usual for CT.
    let settings = RadiomicsSettings::from_toml(
        "[texture_discretisation]\nmethod = \"fixed_bin_size\"\nwidth = 25.0\n",
    )?;
    let mut cases = Vec::new();
    for (i, dir) in series.iter().enumerate() {
        let study: usize = dir
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_string_lossy().trim_start_matches("ST").parse().ok())
            .unwrap_or(0);
        let lesion = medfed_synth::lesion_for(cfg, study);
        let geometry = dicom_series::read_series(dir)?.geometry;
        let mut mask = Volume::filled(geometry, 0u16);
        let [nx, ny, nz] = geometry.dims;
        for z in 0..nz {
            for y in 0..ny {
                for x in 0..nx {
                    let d2 = (x as f64 - lesion.center[0]).powi(2)
                        + (y as f64 - lesion.center[1]).powi(2)
                        + (z as f64 - lesion.center[2]).powi(2);
                    if d2 <= lesion.radius * lesion.radius {
                        mask.data[geometry.index(x, y, z)] = 1;
                    }
                }
            }
        }
        let mask_path = masks.join(format!("series{i:03}.nii.gz"));
        nifti::write(&mask_path, &mask)?;
        cases.push(crate::radiomics_cmd::CaseSpec {
            id: dir
                .strip_prefix(deidentified)
                .unwrap_or(dir)
                .display()
                .to_string(),
            image: dir.clone(),
            mask: mask_path,
            selector: RegionSelector::All,
        });
    }
    use rayon::prelude::*;
    let rows: Vec<_> = cases
        .par_iter()
        .flat_map_iter(|c| crate::radiomics_cmd::extract_case(c, &settings))
        .collect();
    let failed = rows.iter().filter(|r| r.error.is_some()).count();
    for r in rows.iter().filter(|r| r.error.is_some()) {
        println!(
            "   radiomics failed for {}: {}",
            r.case_id,
            r.error.as_deref().unwrap_or("")
        );
    }
    let table = FeatureTable { settings, rows };
    table.write(out)?;
    Ok((table.rows.len(), failed, table.tags().len()))
}

/// What step 6 did.
struct HubDemo {
    address: String,
    stored: usize,
    failed: usize,
    studies_stored: usize,
    studies_found: usize,
    retrieved_identical: bool,
    audit_records: u64,
    sites: SitesDemo,
    sites_secs: f64,
    federated: crate::demo_federated::FederatedDemo,
    federated_secs: f64,
}

impl HubDemo {
    fn ok(&self) -> bool {
        self.stored > 0
            && self.failed == 0
            && self.studies_found == self.studies_stored
            && self.retrieved_identical
    }
}

/// Step 6: a hub on embedded defaults; the roles of a study set up through its API; the
/// de-identified files stored by the site operator and found and read back by a researcher.
fn demo_hub(
    data_dir: &std::path::Path,
    deidentified: &std::path::Path,
    sites: &SitesInput<'_>,
) -> anyhow::Result<HubDemo> {
    use medfed_hub::client::HubClient;
    use reqwest::Method;
    use serde_json::json;

    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(deidentified)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "dcm"))
        .map(|e| e.into_path())
        .collect();
    files.sort();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cfg = medfed_hub::HubConfig {
            data_dir: data_dir.to_path_buf(),
            listen: "127.0.0.1:0".parse()?,
            ..Default::default()
        };
        let running = medfed_hub::start(cfg).await.context("starting the demo hub")?;
        let hub = running.hub.clone();
        let base = format!("https://127.0.0.1:{}", running.addr.port());
        let anon = HubClient::new(&base, running.ca_pem.as_deref())?;
        let (_, admin_token) = medfed_hub::bootstrap_on(&hub, "local:demo-admin", None).await?;
        let admin = anon.with_token(&admin_token);
        admin.call(Method::POST, "/api/v1/organisations", Some(json!({"id": "demo-hospital", "name": "Demo Hospital"}))).await?;
        let mut tokens = Vec::new();
        for who in ["coordinator", "site-operator", "researcher"] {
            let u = admin
                .call(Method::POST, "/api/v1/users", Some(json!({"subject": format!("local:demo-{who}"), "organisation": "demo-hospital"})))
                .await?;
            let id = u["id"].as_str().unwrap_or_default().to_string();
            // The demo has no OIDC issuer: tokens are issued on the hub's host, as an operator would.
            tokens.push((id.clone(), medfed_hub::issue_token(&hub, &id, 1).await?));
        }
        let (coord_id, coord) = (&tokens[0].0, anon.with_token(&tokens[0].1));
        let (op_id, op) = (&tokens[1].0, anon.with_token(&tokens[1].1));
        let (res_id, res) = (&tokens[2].0, anon.with_token(&tokens[2].1));
        admin
            .call(Method::POST, "/api/v1/studies", Some(json!({"id": "demo-study", "title": "Demo CT study", "organisations": ["demo-hospital"], "coordinator": coord_id})))
            .await?;
        coord.call(Method::POST, "/api/v1/studies/demo-study/grants", Some(json!({"user": op_id, "role": "site-operator"}))).await?;
        coord.call(Method::POST, "/api/v1/studies/demo-study/grants", Some(json!({"user": res_id, "role": "researcher"}))).await?;
        let ds = op
            .call(
                Method::POST,
                "/api/v1/studies/demo-study/datasets",
                Some(json!({
                    "title": "Synthetic CT, de-identified at the demo site",
                    "licence": "demo only",
                    "retention_until": "2030-12-31",
                    "provenance": {"site": "demo-hospital", "deid_settings": "basic + retain-long-modified-dates + clean-descriptors", "medfed_version": env!("CARGO_PKG_VERSION")},
                })),
            )
            .await?;
        let ds = ds["id"].as_str().unwrap_or_default().to_string();
        let (mut stored, mut failed) = (0, 0);
        let mut study_uids = std::collections::BTreeSet::new();
        for batch in files.chunks(40) {
            let bodies = batch.iter().map(std::fs::read).collect::<Result<Vec<_>, _>>()?;
            let (_, v) = op.stow(&ds, &bodies).await?;
            stored += v["00081199"]["Value"].as_array().map_or(0, |a| a.len());
            failed += v["00081198"]["Value"].as_array().map_or(0, |a| a.len());
        }
        for f in &files {
            let obj = dicom_object::open_file(f)?;
            study_uids.insert(obj.element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)?.to_str()?.trim_end_matches('\0').to_string());
        }
        let found = res.call(Method::GET, "/api/v1/dicomweb/studies?limit=500", None).await?;
        let studies_found = found.as_array().map_or(0, |a| a.len());
        // Read one instance back and compare with the file the site sent.
        let first = dicom_object::open_file(&files[0])?;
        let uid = |t| -> anyhow::Result<String> { Ok(first.element(t)?.to_str()?.trim_end_matches('\0').to_string()) };
        use dicom_dictionary_std::tags;
        let path = format!(
            "/api/v1/dicomweb/studies/{}/series/{}/instances/{}",
            uid(tags::STUDY_INSTANCE_UID)?,
            uid(tags::SERIES_INSTANCE_UID)?,
            uid(tags::SOP_INSTANCE_UID)?
        );
        let resp = res.request(Method::GET, &path).send().await?;
        let body = resp.bytes().await?;
        let sent = std::fs::read(&files[0])?;
        let retrieved_identical = memchr::memmem::find(&body, &sent).is_some() && body.len() < sent.len() + 300;
        let step6 = std::time::Instant::now();
        let work = sites.work;
        let sites = demo_sites(&base, running.ca_pem.as_deref(), &hub, &admin, coord_id, &coord, op_id, sites).await?;
        let sites_secs = step6.elapsed().as_secs_f64();
        let step8 = std::time::Instant::now();
        let federated = crate::demo_federated::run(&base, &admin, coord_id, &coord, work).await?;
        let federated_secs = step8.elapsed().as_secs_f64();
        running.stop().await;
        let audit = medfed_audit::verify(&hub.config.audit_log(), &hub.audit_public_key())
            .map_err(|p| anyhow::anyhow!("the demo hub's audit log does not verify: {p}"))?;
        Ok(HubDemo {
            address: base,
            stored,
            failed,
            studies_stored: study_uids.len(),
            studies_found,
            retrieved_identical,
            audit_records: audit.records,
            sites,
            sites_secs,
            federated,
            federated_secs,
        })
    })
}

/// What step 7 needs from the earlier steps.
struct SitesInput<'a> {
    /// The PACS's originals (identifying), one folder per patient.
    original: &'a std::path::Path,
    planted: &'a [Vec<u8>],
    /// Where the two site nodes keep their data.
    work: &'a std::path::Path,
}

/// What step 7 did.
struct SitesDemo {
    sent_by_pacs: usize,
    found_on_hub: usize,
    leaks: usize,
    site_audit_ok: bool,
    outsider_sees: usize,
}

impl SitesDemo {
    fn ok(&self) -> bool {
        self.sent_by_pacs > 0
            && self.found_on_hub == self.sent_by_pacs
            && self.leaks == 0
            && self.site_audit_ok
            && self.outsider_sees == 0
    }
}

/// Every instance a token's owner finds by QIDO-RS, as WADO-RS paths.
async fn qido_instances(c: &medfed_hub::client::HubClient) -> anyhow::Result<Vec<String>> {
    use reqwest::Method;
    let uid = |v: &serde_json::Value, tag: &str| {
        v[tag]["Value"][0].as_str().unwrap_or_default().to_string()
    };
    let mut out = Vec::new();
    for st in c
        .call(Method::GET, "/api/v1/dicomweb/studies?limit=500", None)
        .await?
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let st = uid(&st, "0020000D");
        let series = c
            .call(
                Method::GET,
                &format!("/api/v1/dicomweb/studies/{st}/series?limit=500"),
                None,
            )
            .await?;
        for se in series.as_array().cloned().unwrap_or_default() {
            let se = uid(&se, "0020000E");
            let insts = c
                .call(
                    Method::GET,
                    &format!("/api/v1/dicomweb/studies/{st}/series/{se}/instances?limit=500"),
                    None,
                )
                .await?;
            for i in insts.as_array().cloned().unwrap_or_default() {
                out.push(format!(
                    "/api/v1/dicomweb/studies/{st}/series/{se}/instances/{}",
                    uid(&i, "00080018")
                ));
            }
        }
    }
    Ok(out)
}

/// Step 7: two site nodes (two hospitals) enrol with one-time tokens and run with their own
/// policy; the PACS pushes the original, identifying study over DICOM to each; each site
/// de-identifies and harvests into its organisation's dataset; a researcher finds every
/// instance on the hub and none carries an identifying value; a researcher of another study
/// finds nothing.
#[allow(clippy::too_many_arguments)]
async fn demo_sites(
    base: &str,
    ca: Option<&std::path::Path>,
    hub: &medfed_hub::Hub,
    admin: &medfed_hub::client::HubClient,
    coord_id: &str,
    coord: &medfed_hub::client::HubClient,
    op_hospital: &str,
    input: &SitesInput<'_>,
) -> anyhow::Result<SitesDemo> {
    use medfed_hub::client::HubClient;
    use reqwest::Method;
    use serde_json::json;

    let anon = HubClient::new(base, ca)?;
    admin
        .call(
            Method::POST,
            "/api/v1/organisations",
            Some(json!({"id": "demo-clinic", "name": "Demo Clinic"})),
        )
        .await?;
    let user = async |subject: &str, org: &str| -> anyhow::Result<(String, HubClient)> {
        let u = admin
            .call(
                Method::POST,
                "/api/v1/users",
                Some(json!({"subject": subject, "organisation": org})),
            )
            .await?;
        let id = u["id"].as_str().unwrap_or_default().to_string();
        let token = medfed_hub::issue_token(hub, &id, 1).await?;
        Ok((id, anon.with_token(&token)))
    };
    let (op_clinic, op_clinic_c) = user("local:demo-clinic-operator", "demo-clinic").await?;
    let (res_id, researcher) = user("local:demo-harvest-researcher", "demo-hospital").await?;
    let (_, outsider) = user("local:demo-outsider", "demo-clinic").await?;
    admin
        .call(Method::POST, "/api/v1/studies", Some(json!({"id": "demo-harvest", "title": "Demo harvest through two site nodes", "organisations": ["demo-hospital", "demo-clinic"], "coordinator": coord_id})))
        .await?;
    for (u, role) in [
        (op_hospital, "site-operator"),
        (op_clinic.as_str(), "site-operator"),
        (res_id.as_str(), "researcher"),
    ] {
        coord
            .call(
                Method::POST,
                "/api/v1/studies/demo-harvest/grants",
                Some(json!({"user": u, "role": role})),
            )
            .await?;
    }
    let op_hospital_c = {
        let token = medfed_hub::issue_token(hub, op_hospital, 1).await?;
        anon.with_token(&token)
    };
    // The PACS's patients, split between the two hospitals.
    let mut patients: Vec<PathBuf> = std::fs::read_dir(input.original)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    patients.sort();
    let mut nodes = Vec::new();
    let mut sent_by_pacs = 0;
    for (i, (org, op)) in [
        ("demo-hospital", &op_hospital_c),
        ("demo-clinic", &op_clinic_c),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = input.work.join(format!("node-{org}"));
        let policy = medfed_site::SitePolicy::parse(&format!(
            "organisation = \"{org}\"\n[dicom]\nae_title = \"NODE{i}\"\nbind = \"127.0.0.1:0\"\nallowed_calling_ae_titles = [\"DEMO_PACS\"]\n[storage]\ndir = \"{}\"\nmin_free_disk_bytes = 67108864\n[[study]]\nid = \"demo-harvest\"\nallow = [\"harvest\"]\nauto_approve = [\"harvest\"]\ndeid_options = [\"retain-long-modified-dates\", \"clean-descriptors\"]\n",
            dir.display()
        ))?;
        let token = coord
            .call(
                Method::POST,
                "/api/v1/studies/demo-harvest/enrolments",
                Some(json!({"organisation": org})),
            )
            .await?;
        let token = token["token"].as_str().unwrap_or_default().to_string();
        let identity =
            medfed_site::SiteIdentity::enroll(&dir, base, &token, org, &format!("demo node {org}"))
                .await?;
        let node = medfed_site::SiteNode::open(
            policy,
            medfed_site::NodeOptions {
                poll_wait_s: 5,
                harvest_every: std::time::Duration::from_millis(300),
                ..Default::default()
            },
        )?;
        let dicom = node.dicom_addr().context("the node's DICOM receiver")?;
        let stop = node.stopper();
        let serving = tokio::spawn(node.serve());
        let ds = op
            .call(Method::POST, "/api/v1/studies/demo-harvest/datasets", Some(json!({
                "title": format!("Synthetic CT harvested at {org}"),
                "licence": "demo only",
                "retention_until": "2030-12-31",
                "provenance": {"site": org, "deid_settings": "basic + retain-long-modified-dates + clean-descriptors (site policy)", "medfed_version": env!("CARGO_PKG_VERSION")},
            })))
            .await?;
        let task = coord
            .call(Method::POST, "/api/v1/studies/demo-harvest/tasks", Some(json!({"site": identity.enrolled.site_id, "kind": "harvest", "params": {"dataset": ds["id"]}})))
            .await?;
        nodes.push((
            stop,
            serving,
            dir,
            dicom,
            task["id"].as_str().unwrap_or_default().to_string(),
            i,
        ));
    }
    // The tasks reach the nodes through their long polls; wait until both accepted.
    for _ in 0..200 {
        let t = coord
            .call(Method::GET, "/api/v1/studies/demo-harvest/tasks", None)
            .await?;
        if t["items"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["status"] == "running"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for (_, _, _, dicom, _, i) in &nodes {
        let files: Vec<PathBuf> = patients
            .iter()
            .enumerate()
            .filter(|(k, _)| k % 2 == *i)
            .flat_map(|(_, p)| {
                walkdir::WalkDir::new(p)
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_file())
                    .map(|e| e.into_path())
            })
            .collect();
        let (addr, called) = (dicom.to_string(), format!("NODE{i}"));
        let r = tokio::task::spawn_blocking(move || {
            medfed_site::send_files(&addr, "DEMO_PACS", &called, &files)
        })
        .await??;
        sent_by_pacs += r.stored;
    }
    let mut found = Vec::new();
    for _ in 0..600 {
        found = qido_instances(&researcher).await?;
        if found.len() >= sent_by_pacs {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut leaks = 0;
    for path in &found {
        let body = researcher
            .request(Method::GET, path)
            .send()
            .await?
            .bytes()
            .await?;
        leaks += input
            .planted
            .iter()
            .filter(|p| memchr::memmem::find(&body, p).is_some())
            .count();
    }
    let outsider_sees = qido_instances(&outsider).await?.len();
    let mut site_audit_ok = true;
    for (stop, serving, dir, _, _, _) in nodes {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        serving.await??;
        let key = medfed_audit::load_or_create_key(&dir.join("audit.key"))?;
        site_audit_ok &=
            medfed_audit::verify(&dir.join("site.audit.jsonl"), &key.verifying_key()).is_ok();
    }
    Ok(SitesDemo {
        sent_by_pacs,
        found_on_hub: found.len(),
        leaks,
        site_audit_ok,
        outsider_sees,
    })
}
