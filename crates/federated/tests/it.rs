//! Federated algorithms against references nobody here wrote the numbers of: pooled training on
//! the real four-centre UCI Heart Disease table (../shared), a plain single-process FedAvg, and
//! the arithmetic of secure aggregation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use medfed_federated::fedavg::{self, LocalTraining, ModelKind, WeightedUpdate};
use medfed_federated::regression::{self, NewtonSummary};
use medfed_federated::secagg::{self, Masking, Reveal, RoundKeys, RoundPublic};
use medfed_federated::table::Design;
use medfed_federated::{Disclosure, FederatedError, heart, stats};

const OPEN: Disclosure = Disclosure {
    min_rows: 10,
    min_cell: 5,
};

/// The four-centre table under ../shared (None, after reporting the skip, when absent).
fn heart_table() -> Option<String> {
    let path =
        medfed_testkit::shared("datasets/heart_disease_uci_4centres/heart_disease_4centres.csv")?;
    Some(std::fs::read_to_string(path).unwrap())
}

/// The four centres, standardised with federated (summed) moments of the training rows.
fn heart_centres() -> Option<Vec<heart::Centre>> {
    let text = heart_table()?;
    let mut centres = heart::centres(&text).unwrap();
    heart::standardise_federated(&mut centres, &OPEN).unwrap();
    Some(centres)
}

/// Sum the sites' vectors through secure aggregation (all sites survive).
fn masked_sum(round: u64, vectors: &[Vec<f64>]) -> Vec<f64> {
    secagg::run_in_process(round, vectors, vectors.len() / 2 + 1, &[]).unwrap()
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
                        for (gk, xk) in g.iter_mut().zip(&d.x[i]) {
                            *gk += e * xk;
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

/// One round of secure aggregation among `n` sites, everything the hub relays in view: the
/// sites' masking states, the sealed shares by recipient and sender, the masked vectors.
struct Round {
    round: u64,
    threshold: usize,
    updates: Vec<Vec<f64>>,
    sites: Vec<Masking>,
    inbox: BTreeMap<u32, BTreeMap<u32, Vec<u8>>>,
    masked: BTreeMap<u32, Vec<u64>>,
}

impl Round {
    fn new(round: u64, n: usize, threshold: usize, len: usize) -> Round {
        use rand::Rng;
        let mut rng = rand::rng();
        let updates: Vec<Vec<f64>> = (0..n)
            .map(|s| {
                (0..len)
                    .map(|i| {
                        (i as f64 / 100.0 + s as f64).sin() * (s + 1) as f64
                            + rng.random_range(-0.1..0.1)
                    })
                    .collect()
            })
            .collect();
        let keys: Vec<RoundKeys> = (0..n).map(|_| RoundKeys::generate()).collect();
        let publics: BTreeMap<u32, RoundPublic> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u32, k.public))
            .collect();
        let sites: Vec<Masking> = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| Masking::new(i as u32, round, k, &publics, threshold).unwrap())
            .collect();
        let mut inbox: BTreeMap<u32, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
        for m in &sites {
            for (to, sealed) in m.encrypted_shares().unwrap() {
                inbox.entry(to).or_default().insert(m.me, sealed);
            }
        }
        let masked = sites
            .iter()
            .zip(&updates)
            .map(|(m, u)| (m.me, m.mask(u).unwrap()))
            .collect();
        Round {
            round,
            threshold,
            updates,
            sites,
            inbox,
            masked,
        }
    }

    fn others(&self, of: u32) -> Vec<u32> {
        (0..self.sites.len() as u32).filter(|&j| j != of).collect()
    }

    /// Site `i` asked to sign a split.
    fn sign(&mut self, i: u32, survivors: &[u32], dropped: &[u32]) -> Option<Vec<u8>> {
        let got = self.inbox.get(&i).cloned().unwrap_or_default();
        self.sites[i as usize]
            .sign_split(survivors, dropped, &got, 2)
            .ok()
    }

    /// Site `i` asked to reveal for a split, shown `signatures`.
    fn reveal(
        &self,
        i: u32,
        survivors: &[u32],
        dropped: &[u32],
        signatures: &BTreeMap<u32, Vec<u8>>,
    ) -> Option<Reveal> {
        self.sites[i as usize]
            .reveal(survivors, dropped, signatures)
            .ok()
    }
}

// ---------------------------------------------------------------- the hub's own arithmetic

/// The PRG the protocol publishes (ChaCha20 from the seed).
fn prg(seed: &[u8; 32], len: usize) -> Vec<u64> {
    let mut rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(*seed);
    (0..len)
        .map(|_| rand::RngCore::next_u64(&mut rng))
        .collect()
}

fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let carry = a & 0x80;
        a <<= 1;
        if carry != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

/// Lagrange interpolation at 0 over GF(2^8), byte by byte (what the hub would run on any
/// shares it holds, however few).
fn interpolate(points: &[(u8, [u8; 32])]) -> [u8; 32] {
    let inv = |a: u8| (0..=255u8).find(|&b| gf_mul(a, b) == 1).unwrap_or(0);
    let mut out = [0u8; 32];
    for (i, (xi, yi)) in points.iter().enumerate() {
        let mut l = 1u8;
        for (j, (xj, _)) in points.iter().enumerate() {
            if i != j {
                l = gf_mul(l, gf_mul(*xj, inv(xj ^ xi)));
            }
        }
        for b in 0..32 {
            out[b] ^= gf_mul(l, yi[b]);
        }
    }
    out
}

/// The hub's best estimate of the sum over `group` from what it holds: the group's masked
/// vectors, minus every pairwise mask crossing the group's border whose seed any reveal gave
/// (by either end), minus each member's self-mask rebuilt from every share of it revealed
/// (and from any share the hub opened itself).
fn reconstruct(
    r: &Round,
    group: &[u32],
    reveals: &[(u32, Reveal)],
    opened: &[(u32, u8, [u8; 32])],
) -> Vec<f64> {
    let len = r.updates[0].len();
    let mut acc = vec![0u64; len];
    for &k in group {
        for (a, y) in acc.iter_mut().zip(&r.masked[&k]) {
            *a = a.wrapping_add(*y);
        }
        for j in r.others(k).into_iter().filter(|j| !group.contains(j)) {
            let seed = reveals.iter().find_map(|(by, rv)| {
                if *by == j {
                    rv.seeds.get(&k).copied()
                } else if *by == k {
                    rv.seeds.get(&j).copied()
                } else {
                    None
                }
            });
            if let Some(seed) = seed {
                for (a, m) in acc.iter_mut().zip(prg(&seed, len)) {
                    *a = if j > k {
                        a.wrapping_sub(m)
                    } else {
                        a.wrapping_add(m)
                    };
                }
            }
        }
        let mut points: Vec<(u8, [u8; 32])> = Vec::new();
        let found = reveals
            .iter()
            .filter_map(|(_, rv)| rv.shares.get(&k).map(|sh| (rv.x, *sh)))
            .chain(
                opened
                    .iter()
                    .filter(|(of, _, _)| *of == k)
                    .map(|(_, x, sh)| (*x, *sh)),
            );
        for p in found {
            if !points.iter().any(|q| q.0 == p.0) {
                points.push(p);
            }
        }
        if !points.is_empty() {
            for (a, m) in acc.iter_mut().zip(prg(&interpolate(&points), len)) {
                *a = a.wrapping_sub(m);
            }
        }
    }
    secagg::decode(&acc)
}

/// Every key the hub could derive from a revealed seed, tried on every share it relayed
/// (with and without the associated data the protocol uses): the shares it opens, as
/// (owner, x, share).
fn open_relayed_shares(r: &Round, reveals: &[(u32, Reveal)]) -> Vec<(u32, u8, [u8; 32])> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use sha2::Digest;
    let seeds: Vec<[u8; 32]> = reveals
        .iter()
        .flat_map(|(_, rv)| rv.seeds.values().copied())
        .collect();
    let mut opened = Vec::new();
    for (&to, from_map) in &r.inbox {
        for (&from, sealed) in from_map {
            let label = |l: &[u8]| {
                let mut v = l.to_vec();
                v.extend(r.round.to_le_bytes());
                v.extend(from.to_le_bytes());
                v.extend(to.to_le_bytes());
                v
            };
            let (v1, v2) = (
                label(b"medfed-secagg-share-v1"),
                label(b"medfed-secagg-share-v2"),
            );
            for seed in &seeds {
                let mut keys: Vec<[u8; 32]> = vec![*seed];
                // The derivation of the reviewed commit (share key from the pairwise seed).
                let mut h = sha2::Sha256::new();
                h.update(&v1);
                h.update(seed);
                keys.push(h.finalize().into());
                // Today's share-key derivation, with the seed in place of the share secret.
                let mut k = [0u8; 32];
                hkdf::Hkdf::<sha2::Sha256>::new(None, seed)
                    .expand(&v2, &mut k)
                    .unwrap();
                keys.push(k);
                for key in keys {
                    let c = aes_gcm::Aes256Gcm::new(&key.into());
                    for aad in [&[][..], &v2[..]] {
                        let nonce = aes_gcm::Nonce::from_slice(&[0u8; 12]);
                        let payload = Payload { msg: sealed, aad };
                        if let Ok(p) = c.decrypt(nonce, payload)
                            && let Ok(share) = <[u8; 32]>::try_from(p)
                        {
                            // Shamir x of the recipient: its position + 1.
                            opened.push((from, to as u8 + 1, share));
                        }
                    }
                }
            }
        }
    }
    opened
}

#[test]
fn the_hub_sees_noise_from_each_site_and_the_exact_sum_even_after_a_dropout() {
    let n = 20_000;
    let mut r = Round::new(9, 4, 3, n);
    for (u, m) in r.updates.iter().zip(r.masked.values()) {
        // What the hub receives does not follow the update...
        let as_float: Vec<f64> = m.iter().map(|&x| x as f64).collect();
        let c = correlation(u, &as_float);
        assert!(c.abs() < 0.03, "correlation {c}");
        // ...and is uniform: the top bit is set about half the time.
        let top = m.iter().filter(|&&x| x >> 63 == 1).count() as f64 / n as f64;
        assert!((top - 0.5).abs() < 0.02, "top bit {top}");
    }
    // Site 2 masked its update but its vector never arrives: the others sign the split, then
    // reveal the seeds they shared with it and their shares of each other's self-masks; the hub
    // gets the exact sum of the three that arrived.
    let (survivors, dropped) = ([0, 1, 3], [2]);
    let signatures: BTreeMap<u32, Vec<u8>> = survivors
        .iter()
        .map(|&i| (i, r.sign(i, &survivors, &dropped).unwrap()))
        .collect();
    let reveals: BTreeMap<u32, Reveal> = survivors
        .iter()
        .map(|&i| (i, r.reveal(i, &survivors, &dropped, &signatures).unwrap()))
        .collect();
    let mut arrived = r.masked.clone();
    arrived.remove(&2);
    let sum = secagg::unmask(&arrived, &dropped, &reveals, r.threshold).unwrap();
    for (i, got) in sum.iter().enumerate() {
        let want = r.updates[0][i] + r.updates[1][i] + r.updates[3][i];
        assert!((got - want).abs() < 1e-8, "{i}");
    }
    // The lying-hub test's reconstruction, run on the honest reveals, rebuilds the survivors'
    // sum: the attacker's arithmetic there is right, so its failures below mean something.
    let listed: Vec<(u32, Reveal)> = reveals.clone().into_iter().collect();
    let rebuilt = reconstruct(&r, &survivors, &listed, &[]);
    assert!((rebuilt[5] - sum[5]).abs() < 1e-8);
    assert!(secagg::unmask(&arrived, &dropped, &BTreeMap::new(), r.threshold).is_err());
    // All survive, and the whole protocol in one call with a dropout.
    let all = secagg::run_in_process(4, &r.updates, 3, &[]).unwrap();
    let want: f64 = r.updates.iter().map(|u| u[11]).sum();
    assert!((all[11] - want).abs() < 1e-8);
    let sum = secagg::run_in_process(3, &r.updates, 3, &[0]).unwrap();
    assert!((sum[7] - (r.updates[1][7] + r.updates[2][7] + r.updates[3][7])).abs() < 1e-8);
}

#[test]
fn a_site_signs_one_split_per_round_and_reveals_only_for_it_and_only_with_enough_signatures() {
    let mut r = Round::new(2, 4, 3, 16);
    // Splits a site refuses to sign: itself dropped, a site on both lists, a site left out, a
    // site named twice, too few survivors, a survivor that sent it no share.
    assert!(r.sign(0, &[1, 2, 3], &[0]).is_none());
    assert!(r.sign(0, &[0, 1, 2], &[2, 3]).is_none());
    assert!(r.sign(0, &[0, 1, 2], &[]).is_none());
    assert!(r.sign(0, &[0, 1, 1, 2], &[3]).is_none());
    assert!(r.sign(0, &[0, 1], &[2, 3]).is_none());
    let mut no_share = r.inbox[&0].clone();
    no_share.remove(&3);
    assert!(
        r.sites[0]
            .sign_split(&[0, 1, 2, 3], &[], &no_share, 2)
            .is_err()
    );
    // None of these counted as signing: site 0 still signs a good split, the same one again
    // (a retried request gets the same signature), and then no other.
    let s0 = r.sign(0, &[0, 1, 2], &[3]).unwrap();
    assert_eq!(r.sign(0, &[0, 1, 2], &[3]).unwrap(), s0);
    assert!(r.sign(0, &[0, 1, 2, 3], &[]).is_none());
    assert!(r.sign(0, &[0, 1, 3], &[2]).is_none());
    // It reveals only for that split, only with the threshold of valid signatures by
    // survivors: its own alone is not enough, nor two; forged or misplaced ones do not count.
    let mut sigs = BTreeMap::from([(0u32, s0.clone())]);
    assert!(r.reveal(0, &[0, 1, 2], &[3], &sigs).is_none());
    sigs.insert(1, r.sign(1, &[0, 1, 2], &[3]).unwrap());
    assert!(r.reveal(0, &[0, 1, 2], &[3], &sigs).is_none());
    let mut forged = sigs.clone();
    forged.insert(2, s0.clone());
    assert!(r.reveal(0, &[0, 1, 2], &[3], &forged).is_none());
    let s3_other = r.sign(3, &[0, 1, 2, 3], &[]).unwrap();
    let mut misplaced = sigs.clone();
    misplaced.insert(3, s3_other);
    assert!(r.reveal(0, &[0, 1, 2], &[3], &misplaced).is_none());
    sigs.insert(2, r.sign(2, &[0, 1, 2], &[3]).unwrap());
    let rv = r.reveal(0, &[0, 1, 2], &[3], &sigs).unwrap();
    assert_eq!(rv.seeds.keys().copied().collect::<Vec<_>>(), [3]);
    assert_eq!(rv.shares.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    assert!(r.reveal(0, &[0, 1, 2, 3], &[], &sigs).is_none());
    // A hub cannot lower the threshold a site accepts to half the round or less.
    let keys: Vec<RoundKeys> = (0..4).map(|_| RoundKeys::generate()).collect();
    let publics: BTreeMap<u32, RoundPublic> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u32, k.public))
        .collect();
    let k0 = keys.into_iter().next().unwrap();
    assert!(Masking::new(0, 1, k0, &publics, 2).is_err());
}

/// Correlation of the hub's best reconstruction of each single site's update with the truth,
/// the worst (largest in magnitude) over the sites.
fn worst_single_site(r: &Round, reveals: &[(u32, Reveal)], opened: &[(u32, u8, [u8; 32])]) -> f64 {
    (0..r.sites.len() as u32)
        .map(|t| {
            correlation(
                &r.updates[t as usize],
                &reconstruct(r, &[t], reveals, opened),
            )
        })
        .fold(0.0, |w: f64, c| if c.abs() > w.abs() { c } else { w })
}

/// Signatures of each split the hub collected, by split.
type Signed = BTreeMap<(Vec<u32>, Vec<u32>), BTreeMap<u32, Vec<u8>>>;

/// The hub asks each site in `asks` to sign and then reveal its split, showing it every
/// signature it holds for that split; every reveal any site gives is kept.
fn play(r: &mut Round, asks: &[(u32, Vec<u32>, Vec<u32>)], got: &mut Vec<(u32, Reveal)>) {
    let mut signed: Signed = BTreeMap::new();
    for (i, s, d) in asks {
        if let Some(sig) = r.sign(*i, s, d) {
            signed
                .entry((s.clone(), d.clone()))
                .or_default()
                .insert(*i, sig);
        }
    }
    // Every signature the hub holds, whatever split it is of.
    let every: BTreeMap<u32, Vec<u8>> = signed
        .values()
        .flatten()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    for (i, s, d) in asks {
        let mine = signed
            .get(&(s.clone(), d.clone()))
            .cloned()
            .unwrap_or_default();
        for shown in [&mine, &every] {
            if let Some(rv) = r.reveal(*i, s, d, shown) {
                got.push((*i, rv));
            }
        }
    }
}

#[test]
fn a_lying_hub_playing_every_strategy_recovers_no_single_sites_update() {
    // 20,000 coordinates: a reconstruction that followed an update at all would correlate far
    // above the 0.03 that noise stays under.
    let len = 20_000;
    for (n, threshold) in [(4usize, 3usize), (5, 3), (5, 4), (7, 4)] {
        let target = 1u32;
        let everyone: Vec<u32> = (0..n as u32).collect();

        // 1. Every vector arrived; the hub declares the target dropped to everyone, collects
        //    the seeds they share with it, then asks again with the target as a survivor, and
        //    asks the target itself to sign the full split and reveal.
        let mut r = Round::new(10 + n as u64, n, threshold, len);
        let others = r.others(target);
        let mut got = Vec::new();
        let lie: Vec<_> = others
            .iter()
            .map(|&j| (j, others.clone(), vec![target]))
            .collect();
        play(&mut r, &lie, &mut got);
        assert_eq!(
            got.len() / 2,
            others.len(),
            "the lie is a valid split: all reveal"
        );
        assert!(got.iter().all(|(_, rv)| rv.seeds.contains_key(&target)));
        let again: Vec<_> = everyone
            .iter()
            .map(|&j| (j, everyone.clone(), vec![]))
            .collect();
        let before = got.len();
        play(&mut r, &again, &mut got);
        assert_eq!(
            got.len(),
            before,
            "n={n}: a site revealed for a second split"
        );
        assert!(
            got.iter().all(|(_, rv)| !rv.shares.contains_key(&target)),
            "n={n}: a share of the falsely dropped site's self-mask was revealed"
        );
        let opened = open_relayed_shares(&r, &got);
        assert!(
            opened.is_empty(),
            "n={n}: the hub opened {} relayed shares",
            opened.len()
        );
        let c = worst_single_site(&r, &got, &opened);
        assert!(
            c.abs() < 0.03,
            "n={n} t={threshold}: declared dropped, correlation {c}"
        );
        // The same information honestly gives the sum of the others, so the hub learns no
        // more than that.
        let rest = reconstruct(&r, &others, &got, &opened);
        let want: f64 = others.iter().map(|&j| r.updates[j as usize][3]).sum();
        assert!((rest[3] - want).abs() < 1e-8);

        // 2. Split views in a fresh round: the target is told it survives with half the sites
        //    and the others dropped; that half is told the target dropped; the rest are told
        //    everyone survived (the split that would unmask the target if sites revealed on
        //    their own say). Then every other split over every site, each site asked for each.
        let mut r = Round::new(20 + n as u64, n, threshold, len);
        let others = r.others(target);
        let (a, b) = others.split_at(others.len() / 2);
        let mut s_target: Vec<u32> = a.to_vec();
        s_target.push(target);
        s_target.sort();
        let not_target: Vec<u32> = others.clone();
        let mut asks = vec![(target, s_target.clone(), b.to_vec())];
        asks.extend(a.iter().map(|&j| (j, not_target.clone(), vec![target])));
        asks.extend(b.iter().map(|&j| (j, everyone.clone(), vec![])));
        let mut got = Vec::new();
        play(&mut r, &asks, &mut got);
        assert!(got.is_empty(), "n={n}: a split view was revealed for");
        let opened = open_relayed_shares(&r, &got);
        let c = worst_single_site(&r, &got, &opened);
        assert!(
            c.abs() < 0.03,
            "n={n} t={threshold}: split views, correlation {c}"
        );

        // 3. In a fresh round, every split of the round in turn, each asked of all its
        //    survivors: the first one all of them sign is revealed for, and no other.
        let mut r = Round::new(30 + n as u64, n, threshold, len);
        let mut got = Vec::new();
        for mask in 0u32..(1 << n) {
            let s: Vec<u32> = everyone
                .iter()
                .copied()
                .filter(|i| mask >> i & 1 == 1)
                .collect();
            let d: Vec<u32> = everyone
                .iter()
                .copied()
                .filter(|i| mask >> i & 1 == 0)
                .collect();
            let asks: Vec<_> = s.iter().map(|&j| (j, s.clone(), d.clone())).collect();
            play(&mut r, &asks, &mut got);
        }
        let opened = open_relayed_shares(&r, &got);
        assert!(opened.is_empty(), "n={n}: the hub opened relayed shares");
        let c = worst_single_site(&r, &got, &opened);
        assert!(
            c.abs() < 0.03,
            "n={n} t={threshold}: every split, correlation {c}"
        );
        assert!(!got.is_empty(), "n={n}: no split was revealed for at all");
        // Each site revealed for at most one split.
        for i in 0..n as u32 {
            let mut splits: Vec<(Vec<u32>, Vec<u32>)> = got
                .iter()
                .filter(|(by, _)| *by == i)
                .map(|(_, rv)| {
                    (
                        rv.shares.keys().copied().collect(),
                        rv.seeds.keys().copied().collect(),
                    )
                })
                .collect();
            splits.dedup();
            assert!(
                splits.len() <= 1,
                "n={n}: site {i} revealed for {} splits",
                splits.len()
            );
        }
    }
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
        let ids: Vec<String> = (0..sites.len()).map(|i| format!("site-{i}")).collect();
        c.advance(&masked_sum(step.round, &vectors), &ids, metrics)?;
    }
    Ok(c)
}

fn heart_sites(
    spec: &medfed_federated::spec::StudySpec,
) -> Option<Vec<medfed_federated::run::SiteData>> {
    let text = heart_table()?;
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
    // A histogram cell under a site's minimum cell count never leaves it: the bins are merged
    // until every site's bear it, and a cross-tab with a small cell is withheld (said so)...
    let merged = drive_under(&spec, &sites, &OPEN).unwrap().result.unwrap();
    assert!(
        merged.statistics.iter().all(|f| f.bins_merged),
        "{merged:?}"
    );
    assert!(merged.crosstabs[0].sites < sites.len() && !merged.warnings.is_empty());
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
    let Some(text) = heart_table() else {
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
