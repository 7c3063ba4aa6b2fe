//! Federated algorithms against references nobody here wrote the numbers of: pooled training on
//! the real four-centre UCI Heart Disease table (../shared), a plain single-process FedAvg, and
//! the arithmetic of secure aggregation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use medfed_federated::fedavg::{self, LocalTraining, ModelKind, WeightedUpdate};
use medfed_federated::regression::{self, NewtonSummary};
use medfed_federated::secagg::{self, Masking, RoundKeys};
use medfed_federated::table::Design;
use medfed_federated::{Disclosure, FederatedError, heart, stats};

const OPEN: Disclosure = Disclosure {
    min_rows: 10,
    min_cell: 5,
};

fn shared_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MEDFED_SHARED_DIR") {
        return PathBuf::from(d);
    }
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("/work/shared")
}

/// The four centres, standardised with federated (summed) moments of the training rows.
fn heart_centres() -> Option<Vec<heart::Centre>> {
    let path = shared_dir().join("datasets/heart_disease_uci_4centres/heart_disease_4centres.csv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("SKIPPED: {} is not present", path.display());
        return None;
    };
    let mut centres = heart::centres(&text).unwrap();
    heart::standardise_federated(&mut centres, &OPEN).unwrap();
    Some(centres)
}

/// Sum the sites' vectors through secure aggregation (all sites survive).
fn masked_sum(round: u64, vectors: &[Vec<f64>]) -> Vec<f64> {
    secagg::run_in_process(round, vectors, 2, &[]).unwrap()
}

#[test]
fn federated_newton_with_secure_aggregation_equals_pooled_training_on_four_real_centres() {
    let Some(centres) = heart_centres() else {
        return;
    };
    let p = centres[0].train.width();
    assert_eq!(p, 14, "intercept + FLamby's 13 features");
    let sizes: Vec<usize> = centres.iter().map(|c| c.train.rows()).collect();
    assert_eq!(
        sizes,
        vec![199, 172, 30, 85],
        "FLamby's published training sizes"
    );
    let ridge = 1e-3;
    let mut round = 0;
    let federated = regression::newton_fit(p, ridge, 50, 1e-10, |beta| {
        round += 1;
        let parts: Vec<Vec<f64>> = centres
            .iter()
            .map(|c| {
                regression::logistic_site_step(&c.train, beta, &OPEN)
                    .unwrap()
                    .to_vec()
            })
            .collect();
        NewtonSummary::from_vec(p, &masked_sum(round, &parts))
    })
    .unwrap();
    let pooled_rows = Design::concat(&centres.iter().map(|c| &c.train).collect::<Vec<_>>());
    let pooled = regression::newton_fit(p, ridge, 50, 1e-10, |beta| {
        regression::logistic_site_step(&pooled_rows, beta, &OPEN)
    })
    .unwrap();
    assert!(federated.converged && pooled.converged);
    for (j, (a, b)) in federated.beta.iter().zip(&pooled.beta).enumerate() {
        assert!((a - b).abs() < 1e-6, "coefficient {j}: {a} vs {b}");
    }
    // Linear regression (oldpeak on the rest) from summed normal equations, likewise.
    let mut total = NewtonSummary::zeros(p);
    for c in &centres {
        total
            .add(&regression::linear_site_step(&c.train, &OPEN).unwrap())
            .unwrap();
    }
    let fed = regression::linear_solve(&total, 0.0).unwrap();
    let pooled = regression::linear_solve(
        &regression::linear_site_step(&pooled_rows, &OPEN).unwrap(),
        0.0,
    )
    .unwrap();
    for (a, b) in fed.iter().zip(&pooled) {
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }
}

/// FedAvg as a textbook writes it, in one process: no medfed code but the shared batch order.
fn plain_fedavg(sites: &[&Design], rounds: u64, t: &LocalTraining) -> Vec<f64> {
    let p = sites[0].width();
    let mut global = vec![0.0; p];
    for round in 0..rounds {
        let mut acc = vec![0.0; p];
        let mut n_total = 0.0;
        for (s, d) in sites.iter().enumerate() {
            let mut w = global.clone();
            for epoch in 0..t.epochs {
                let order = fedavg::epoch_order(d.rows(), t.seed, round, s as u64, epoch as u64);
                for batch in order.chunks(t.batch_size) {
                    let mut g = vec![0.0; p];
                    for &i in batch {
                        let z: f64 = w.iter().zip(&d.x[i]).map(|(a, b)| a * b).sum();
                        let e = 1.0 / (1.0 + (-z).exp()) - d.y[i];
                        for k in 0..p {
                            g[k] += e * d.x[i][k];
                        }
                    }
                    for k in 0..p {
                        w[k] -= t.learning_rate * g[k] / batch.len() as f64;
                    }
                }
            }
            for k in 0..p {
                acc[k] += w[k] * d.rows() as f64;
            }
            n_total += d.rows() as f64;
        }
        global = acc.iter().map(|a| a / n_total).collect();
    }
    global
}

#[test]
fn fedavg_through_secure_aggregation_equals_a_plain_single_process_fedavg() {
    let Some(centres) = heart_centres() else {
        return;
    };
    let t = LocalTraining {
        model: ModelKind::Logistic,
        epochs: 2,
        batch_size: 16,
        learning_rate: 0.1,
        mu: 0.0,
        seed: 7,
    };
    let sites: Vec<&Design> = centres.iter().map(|c| &c.train).collect();
    let mut global = t.model.init(sites[0].width(), t.seed);
    for round in 0..10 {
        let updates: Vec<Vec<f64>> = sites
            .iter()
            .enumerate()
            .map(|(s, d)| {
                fedavg::local_round(&t, &global, d, round, s as u64, &OPEN)
                    .unwrap()
                    .to_vec()
            })
            .collect();
        let total = WeightedUpdate::from_vec(&masked_sum(1000 + round, &updates)).unwrap();
        global = fedavg::average(&total).unwrap();
    }
    let reference = plain_fedavg(&sites, 10, &t);
    for (a, b) in global.iter().zip(&reference) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // FedProx with mu > 0 pulls local models towards the global one: different from FedAvg.
    let prox = LocalTraining { mu: 0.5, ..t };
    let init = t.model.init(sites[0].width(), t.seed);
    let a = fedavg::local_round(&t, &reference, sites[0], 0, 0, &OPEN).unwrap();
    let b = fedavg::local_round(&prox, &reference, sites[0], 0, 0, &OPEN).unwrap();
    assert_ne!(a, b);
    assert_eq!(init.len(), reference.len());
}

/// Pearson correlation.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn the_hub_sees_noise_from_each_site_and_the_exact_sum_even_after_a_dropout() {
    use rand::Rng;
    let mut rng = rand::rng();
    let n = 20_000;
    let sites = 4;
    let threshold = 3;
    let updates: Vec<Vec<f64>> = (0..sites)
        .map(|s| {
            (0..n)
                .map(|i| (i as f64 / 100.0).sin() * (s + 1) as f64 + rng.random_range(-0.1..0.1))
                .collect()
        })
        .collect();
    let keys: Vec<RoundKeys> = (0..sites).map(|_| RoundKeys::generate()).collect();
    let publics: BTreeMap<u32, [u8; 32]> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u32, k.public))
        .collect();
    let maskers: Vec<Masking> = (0..sites)
        .zip(keys)
        .map(|(i, k)| Masking::new(i as u32, 9, k, &publics, threshold).unwrap())
        .collect();
    let mut inbox: BTreeMap<u32, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
    for m in &maskers {
        for (to, sealed) in m.encrypted_shares().unwrap() {
            inbox.entry(to).or_default().insert(m.me, sealed);
        }
    }
    let masked: Vec<Vec<u64>> = maskers
        .iter()
        .zip(&updates)
        .map(|(m, u)| m.mask(u).unwrap())
        .collect();
    for (u, m) in updates.iter().zip(&masked) {
        // What the hub receives does not follow the update...
        let as_float: Vec<f64> = m.iter().map(|&x| x as f64).collect();
        let r = correlation(u, &as_float);
        assert!(r.abs() < 0.03, "correlation {r}");
        // ...and is uniform: the top bit is set about half the time.
        let top = m.iter().filter(|&&x| x >> 63 == 1).count() as f64 / n as f64;
        assert!((top - 0.5).abs() < 0.02, "top bit {top}");
    }
    let reveal = |survivors: &[u32], dropped: &[u32]| -> BTreeMap<u32, secagg::Reveal> {
        survivors
            .iter()
            .map(|&i| {
                (
                    i,
                    maskers[i as usize]
                        .reveal(survivors, dropped, &inbox[&i], 3)
                        .unwrap(),
                )
            })
            .collect()
    };
    // All survive: the exact sum.
    let all: BTreeMap<u32, Vec<u64>> = masked
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, v)| (i as u32, v))
        .collect();
    let sum = secagg::unmask(&all, &[], &reveal(&[0, 1, 2, 3], &[]), threshold).unwrap();
    for i in 0..n {
        let want: f64 = updates.iter().map(|u| u[i]).sum();
        assert!((sum[i] - want).abs() < 1e-8, "{i}");
    }
    // Site 2 masked its update but its vector never arrives: the others reveal the seeds they
    // shared with it and their shares of each other's self-masks; the hub gets the exact sum of
    // the three that arrived.
    let mut arrived = all.clone();
    arrived.remove(&2);
    let sum = secagg::unmask(&arrived, &[2], &reveal(&[0, 1, 3], &[2]), threshold).unwrap();
    for i in 0..n {
        let want = updates[0][i] + updates[1][i] + updates[3][i];
        assert!((sum[i] - want).abs() < 1e-8, "{i}");
    }
    // A hub that received site 1's vector and then claims it dropped gets its pairwise seeds but
    // not its self-mask: what it can compute from site 1 alone is still noise.
    let lie = reveal(&[0, 2, 3], &[1]);
    let mut stripped = masked[1].clone();
    for (&j, r) in &lie {
        let seed = r.seeds[&1];
        let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(seed);
        for v in stripped.iter_mut() {
            let m = rand::RngCore::next_u64(&mut rng);
            // Site 1 added the mask shared with a higher id and subtracted it for a lower one.
            *v = if j > 1 {
                v.wrapping_sub(m)
            } else {
                v.wrapping_add(m)
            };
        }
    }
    let decoded = secagg::decode(&stripped);
    let r = correlation(&updates[1], &decoded);
    assert!(
        r.abs() < 0.03,
        "a lying hub unmasked site 1: correlation {r}"
    );
    // The rules a site keeps: never its own masks, never a site on both lists, never below the
    // threshold, and shares only from sites in the round.
    assert!(maskers[0].reveal(&[1, 2, 3], &[0], &inbox[&0], 3).is_err());
    assert!(maskers[0].reveal(&[0, 1, 2], &[2], &inbox[&0], 3).is_err());
    assert!(maskers[0].reveal(&[0, 1], &[2, 3], &inbox[&0], 2).is_err());
    assert!(secagg::unmask(&arrived, &[2], &BTreeMap::new(), threshold).is_err());
    // The whole protocol in one call, with a dropout.
    let sum = secagg::run_in_process(3, &updates, 3, &[0]).unwrap();
    assert!((sum[7] - (updates[1][7] + updates[2][7] + updates[3][7])).abs() < 1e-8);
}

#[test]
fn a_statistic_over_fewer_rows_than_the_sites_minimum_is_refused_at_the_site() {
    let Some(centres) = heart_centres() else {
        return;
    };
    // Switzerland's test part has 16 rows.
    let swiss = &centres[2].test;
    assert_eq!(swiss.rows(), 16);
    let strict = Disclosure {
        min_rows: 20,
        min_cell: 5,
    };
    let ages: Vec<f64> = swiss.x.iter().map(|x| x[1]).collect();
    assert_eq!(
        stats::site_moments(&ages, &strict),
        Err(FederatedError::TooFewRows { rows: 16, min: 20 })
    );
    assert!(regression::logistic_site_step(swiss, &[0.0; 14], &strict).is_err());
    // Sex by label at Cleveland: every cell has at least 5 rows, so it is released.
    let cle = &centres[0].train;
    let sex: Vec<f64> = cle.x.iter().map(|x| (x[2] > 0.0) as u8 as f64).collect();
    let t = stats::site_crosstab(&sex, &cle.y, &[0.0, 1.0], &[0.0, 1.0], &OPEN).unwrap();
    assert_eq!(t.iter().sum::<u64>(), 199);
}

/// The spec the run-engine tests use on the heart centres.
fn heart_spec(algorithm: &str) -> medfed_federated::spec::StudySpec {
    let features: Vec<String> = heart::features().iter().map(|f| format!("{f:?}")).collect();
    medfed_federated::spec::StudySpec::from_toml(&format!(
        "study = \"heart\"\n[data]\ntable = \"heart\"\nlabel = \"target\"\nfeatures = [{}]\n\
         split = {{ column = \"flamby_split\" }}\n[algorithm]\n{algorithm}\n[run]\nrounds = 50\n",
        features.join(", ")
    ))
    .unwrap()
}

/// Drive a whole run in process: every step's releases summed through secure aggregation.
fn drive(
    spec: &medfed_federated::spec::StudySpec,
    sites: &[medfed_federated::run::SiteData],
) -> medfed_federated::run::Coordinator {
    drive_under(spec, sites, &OPEN).unwrap()
}

fn drive_under(
    spec: &medfed_federated::spec::StudySpec,
    sites: &[medfed_federated::run::SiteData],
    rules: &Disclosure,
) -> Result<medfed_federated::run::Coordinator, FederatedError> {
    use medfed_federated::run::{Coordinator, site_release};
    let mut c = Coordinator::new(spec.clone());
    while let Some(step) = c.step.clone() {
        let releases: Vec<_> = sites
            .iter()
            .enumerate()
            .map(|(i, d)| site_release(spec, d, &step, i as u64, rules))
            .collect::<Result<_, _>>()?;
        let vectors: Vec<Vec<f64>> = releases.iter().map(|r| r.vector.clone()).collect();
        let metrics = releases
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.metrics.map(|m| (format!("site-{i}"), m)))
            .collect();
        c.advance(&masked_sum(step.round, &vectors), sites.len(), metrics)?;
    }
    Ok(c)
}

fn heart_sites(
    spec: &medfed_federated::spec::StudySpec,
) -> Option<Vec<medfed_federated::run::SiteData>> {
    let path = shared_dir().join("datasets/heart_disease_uci_4centres/heart_disease_4centres.csv");
    let text = std::fs::read_to_string(&path).ok()?;
    Some(
        heart::centre_tables(&text)
            .unwrap()
            .iter()
            .map(|(_, csv)| medfed_federated::run::SiteData::from_csv(csv, spec).unwrap())
            .collect(),
    )
}

#[test]
fn a_whole_newton_run_from_site_tables_equals_pooled_training_and_evaluates_every_site() {
    let spec = heart_spec("kind = \"newton-logistic\"");
    let (Some(sites), Some(centres)) = (heart_sites(&spec), heart_centres()) else {
        return;
    };
    let run = drive(&spec, &sites);
    let result = run.result.clone().unwrap();
    let pooled_rows = Design::concat(&centres.iter().map(|c| &c.train).collect::<Vec<_>>());
    let pooled = regression::newton_fit(14, 0.0, 50, 1e-10, |beta| {
        regression::logistic_site_step(&pooled_rows, beta, &OPEN)
    })
    .unwrap();
    for (j, (a, b)) in result.params.iter().zip(&pooled.beta).enumerate() {
        assert!((a - b).abs() < 1e-6, "coefficient {j}: {a} vs {b}");
    }
    let stages: Vec<&str> = run.history.iter().map(|r| r.stage.as_str()).collect();
    assert_eq!(stages.first(), Some(&"moments"));
    assert_eq!(stages.last(), Some(&"evaluate"));
    // Per-site metrics equal what each centre computes on its own test rows.
    let eval = result.evaluation.clone().unwrap();
    for (i, c) in centres.iter().enumerate() {
        let scores: Vec<f64> = c
            .test
            .x
            .iter()
            .map(|x| regression::predict_logistic(&result.params, x))
            .collect();
        let m = medfed_federated::eval::metrics(&scores, &c.test.y, 0.5, &OPEN).unwrap();
        let got = eval.per_site[&format!("site-{i}")];
        assert_eq!(got.n, m.n);
        assert!((got.accuracy - m.accuracy).abs() < 1e-9);
        assert!((got.auc - m.auc).abs() < 1e-9);
    }
    assert_eq!(eval.overall.n, 254, "FLamby's 104 + 89 + 16 + 45 test rows");
    // The model travels as safetensors with the scaling.
    let st = result.model_safetensors().unwrap();
    let t = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert_eq!(t.tensor("params").unwrap().shape(), &[14]);
    assert_eq!(t.tensor("feature_sd").unwrap().shape(), &[14]);
}

#[test]
fn a_fedavg_run_equals_plain_fedavg_and_dp_changes_it_by_the_noise() {
    let spec =
        heart_spec("kind = \"fedavg\"\nepochs = 2\nbatch_size = 8\nlearning_rate = 0.05\nseed = 7");
    let (Some(sites), Some(centres)) = (heart_sites(&spec), heart_centres()) else {
        return;
    };
    let mut spec = spec;
    spec.run.rounds = 5;
    let run = drive(&spec, &sites);
    let designs: Vec<&Design> = centres.iter().map(|c| &c.train).collect();
    let plain = plain_fedavg(&designs, 5, &spec.local_training());
    for (a, b) in run.result.as_ref().unwrap().params.iter().zip(&plain) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // With differential privacy the result moves, and the accountant reports epsilon.
    let mut dp = spec.clone();
    dp.privacy.dp = Some(medfed_federated::spec::DpSpec {
        clip: 1.0,
        noise_multiplier: 1.0,
        delta: 1e-5,
    });
    let noisy = drive(&dp, &sites).result.unwrap();
    let eps = noisy.epsilon.unwrap();
    assert!(eps > 1.0 && eps < 100.0, "{eps}");
    let moved = noisy
        .params
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(moved > 1e-3, "the noise must show: {moved}");
}

#[test]
fn a_statistics_run_gives_pooled_means_and_quartiles() {
    let mut spec = heart_spec("kind = \"statistics\"");
    spec.data.features = vec!["age".into(), "chol".into(), "sex".into()];
    spec.algorithm.crosstab.insert("sex".into(), vec![0.0, 1.0]);
    let Some(sites) = heart_sites(&spec) else {
        return;
    };
    // A histogram cell under a site's minimum cell count never leaves it...
    let e = drive_under(&spec, &sites, &OPEN).unwrap_err();
    assert!(matches!(e, FederatedError::SmallCell { .. }), "{e}");
    // ...and where cells may be small, pooled figures come out.
    let rules = Disclosure {
        min_rows: 10,
        min_cell: 0,
    };
    let r = drive_under(&spec, &sites, &rules).unwrap().result.unwrap();
    let ages: Vec<f64> = sites.iter().flat_map(|s| s.columns[0].clone()).collect();
    let mean = ages.iter().sum::<f64>() / ages.len() as f64;
    assert_eq!(r.statistics[0].n, ages.len() as u64);
    assert!((r.statistics[0].mean - mean).abs() < 1e-6);
    let mut sorted = ages.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    // Quartiles are exact to the histogram bin (8 sd / 20 bins wide).
    assert!((r.statistics[0].median - median).abs() < 0.4 * r.statistics[0].sd);
    assert_eq!(
        r.statistics[0].counts.iter().sum::<u64>(),
        ages.len() as u64
    );
    // The pooled cross-tab of sex by outcome is the count over every centre's rows.
    let mut want = vec![0u64; 4];
    for s in &sites {
        for (sex, y) in s.columns[2].iter().zip(&s.train.y) {
            want[*sex as usize * 2 + *y as usize] += 1;
        }
    }
    assert_eq!(r.crosstabs[0].feature, "sex");
    assert_eq!(r.crosstabs[0].counts, want);
}

#[test]
fn the_shipped_demo_tables_are_the_centres_of_the_source_table() {
    let path = shared_dir().join("datasets/heart_disease_uci_4centres/heart_disease_4centres.csv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("SKIPPED: {} is not present", path.display());
        return;
    };
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../medfed/demo-data/heart");
    let files = ["cleveland", "hungary", "switzerland", "long_beach_va"];
    for ((_, derived), file) in heart::centre_tables(&text).unwrap().iter().zip(files) {
        let on_disk = std::fs::read_to_string(shipped.join(format!("{file}.csv"))).unwrap();
        assert_eq!(&on_disk, derived, "{file}.csv");
    }
}

#[test]
fn each_demo_centre_alone_and_all_pooled_fit_with_a_light_ridge_on_the_pooled_scaling() {
    let mut spec = heart_spec("kind = \"newton-logistic\"\nridge = 0.001");
    spec.run.rounds = 50;
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../medfed/demo-data/heart");
    let sites: Vec<medfed_federated::run::SiteData> =
        ["cleveland", "hungary", "switzerland", "long_beach_va"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(shipped.join(format!("{f}.csv"))).unwrap();
                medfed_federated::run::SiteData::from_csv(&text, &spec).unwrap()
            })
            .collect();
    // Each centre alone on the pooled scaling (FLamby's comparison).
    let (_, scaling) = medfed_federated::run::pooled_newton(&spec, &sites, None).unwrap();
    for (i, s) in sites.iter().enumerate() {
        let positives = s.train.y.iter().filter(|y| **y > 0.5).count();
        if positives == s.train.rows() {
            // Switzerland's 30 training rows are all diseased: no model separates one class.
            assert_eq!(i, 2);
            continue;
        }
        let r =
            medfed_federated::run::pooled_newton(&spec, std::slice::from_ref(s), Some(&scaling));
        assert!(r.is_ok(), "centre {i}: {r:?}");
    }
}

#[test]
fn a_fedprox_mlp_run_trains_a_model_that_separates_the_classes() {
    let mut spec = heart_spec(
        "kind = \"fedprox\"\nmodel = \"mlp\"\nhidden = 6\nmu = 0.01\nepochs = 2\nbatch_size = 8\nlearning_rate = 0.05",
    );
    spec.run.rounds = 15;
    let Some(sites) = heart_sites(&spec) else {
        return;
    };
    let r = drive(&spec, &sites).result.unwrap();
    assert_eq!(r.params.len(), 6 * 14 + 6 + 1);
    let overall = r.evaluation.unwrap().overall;
    assert!(overall.auc > 0.8, "overall AUC {}", overall.auc);
    assert!(overall.calibration.iter().map(|c| c.2).sum::<u64>() == overall.n);
}
