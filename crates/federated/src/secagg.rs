//! Secure aggregation with double masking (Bonawitz et al., CCS 2017): the hub learns the sum
//! of the sites' vectors and nothing about any one of them, even when sites drop out and even if
//! it lies about who dropped out.
//!
//! Each round every site makes an X25519 key pair and a random self-mask seed; the hub relays
//! the public keys. Sites i and j derive the same pairwise seed from their Diffie-Hellman secret,
//! the round and their ids. Each site splits its self-mask seed into Shamir shares (threshold t,
//! byte-wise over GF(2^8)) and sends one to every other site, encrypted (AES-256-GCM) under a key
//! derived from their pairwise seed, through the hub. Values are fixed-point numbers in the ring
//! of 64-bit integers (2^-32 resolution). Site i sends
//!
//! `y_i = x_i + PRG(self_i) + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)`
//!
//! so the pairwise masks cancel in the sum and the self-masks do not. To unmask, the hub names
//! the survivors S and the dropped D; every survivor reveals, for each site in D, the pairwise
//! seed it shares with it, and for each site in S, its share of that site's self-mask seed;
//! never both kinds for one site. The hub rebuilds the survivors' self-masks from t shares and
//! removes all masks. A site the hub falsely calls dropped keeps its self-mask: its vector stays
//! uniformly random to the hub.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::FederatedError;

/// Fixed-point resolution: values are multiples of 2^-32 (a Newton step from masked sums then
/// matches the unmasked one to about 1e-9).
pub const FRACTION_BITS: u32 = 32;
/// Largest magnitude one value (or a sum) may have: the sum must fit in 63 bits.
pub const MAX_ABS: f64 = (1u64 << 30) as f64;

fn err(s: impl Into<String>) -> FederatedError {
    FederatedError::SecAgg(s.into())
}

/// Values to ring elements.
pub fn encode(values: &[f64]) -> Result<Vec<u64>, FederatedError> {
    values
        .iter()
        .map(|&v| {
            if !v.is_finite() || v.abs() >= MAX_ABS {
                return Err(err(format!("value {v} out of the encodable range")));
            }
            Ok((v * (1u64 << FRACTION_BITS) as f64).round() as i64 as u64)
        })
        .collect()
}

/// Ring elements (a sum) back to values.
pub fn decode(sum: &[u64]) -> Vec<f64> {
    sum.iter()
        .map(|&u| u as i64 as f64 / (1u64 << FRACTION_BITS) as f64)
        .collect()
}

/// A site's secrets for one round: its key pair and its self-mask seed.
pub struct RoundKeys {
    secret: x25519_dalek::StaticSecret,
    pub public: [u8; 32],
    self_seed: [u8; 32],
}

impl RoundKeys {
    pub fn generate() -> RoundKeys {
        let secret = x25519_dalek::StaticSecret::from(rand::random::<[u8; 32]>());
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        RoundKeys {
            secret,
            public,
            self_seed: rand::random(),
        }
    }
}

// ---------------------------------------------------------------- Shamir over GF(2^8)

fn gf_mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let carry = a & 0x80;
        a <<= 1;
        if carry != 0 {
            a ^= 0x1b; // x^8 + x^4 + x^3 + x + 1
        }
        b >>= 1;
    }
    p
}

fn gf_inv(a: u8) -> u8 {
    // a^254 = a^-1 in GF(2^8).
    let mut r = 1u8;
    let mut base = a;
    let mut e = 254u8;
    while e != 0 {
        if e & 1 != 0 {
            r = gf_mul(r, base);
        }
        base = gf_mul(base, base);
        e >>= 1;
    }
    r
}

/// Shares of `secret` at x = 1..=n (one polynomial of degree `threshold - 1` per byte).
fn split(secret: &[u8; 32], n: usize, threshold: usize) -> Vec<[u8; 32]> {
    let mut shares = vec![[0u8; 32]; n];
    for (b, &s) in secret.iter().enumerate() {
        let mut coeffs = vec![s];
        coeffs.extend((1..threshold).map(|_| rand::random::<u8>()));
        for (k, share) in shares.iter_mut().enumerate() {
            let x = (k + 1) as u8;
            let mut y = 0u8;
            for &c in coeffs.iter().rev() {
                y = gf_mul(y, x) ^ c;
            }
            share[b] = y;
        }
    }
    shares
}

/// The secret from shares `(x, share)` (Lagrange interpolation at 0).
fn combine(shares: &[(u8, [u8; 32])]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, (xi, yi)) in shares.iter().enumerate() {
        let mut l = 1u8;
        for (j, (xj, _)) in shares.iter().enumerate() {
            if i != j {
                l = gf_mul(l, gf_mul(*xj, gf_inv(xj ^ xi)));
            }
        }
        for b in 0..32 {
            out[b] ^= gf_mul(l, yi[b]);
        }
    }
    out
}

/// One site's view of a round: its id, its keys, every participant's public key, and the Shamir
/// shares of its self-mask seed (one per participant, made once).
pub struct Masking {
    pub me: u32,
    pub round: u64,
    pub threshold: usize,
    keys: RoundKeys,
    peers: BTreeMap<u32, [u8; 32]>,
    /// Every participant, ascending; a participant's Shamir x is its position + 1.
    participants: Vec<u32>,
    shares: Vec<[u8; 32]>,
}

/// What a survivor reveals for the hub to unmask: the pairwise seeds it shares with dropped
/// sites, and its shares (at its x) of the surviving sites' self-mask seeds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reveal {
    pub x: u8,
    pub seeds: BTreeMap<u32, [u8; 32]>,
    pub shares: BTreeMap<u32, [u8; 32]>,
}

fn expand(seed: &[u8; 32], len: usize) -> Vec<u64> {
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(*seed);
    (0..len).map(|_| rng.next_u64()).collect()
}

impl Masking {
    /// `participants`: every site of the round (this one included) with its public key;
    /// `threshold`: shares needed to rebuild a self-mask (at least 2, at most the sites).
    pub fn new(
        me: u32,
        round: u64,
        keys: RoundKeys,
        participants: &BTreeMap<u32, [u8; 32]>,
        threshold: usize,
    ) -> Result<Masking, FederatedError> {
        if participants.get(&me) != Some(&keys.public) {
            return Err(err("this site's own key is not in the round"));
        }
        if participants.len() < 2 || participants.len() > 255 {
            return Err(err("secure aggregation needs 2 to 255 sites"));
        }
        if threshold < 2 || threshold > participants.len() {
            return Err(err(format!(
                "threshold {threshold} must be between 2 and the {} sites",
                participants.len()
            )));
        }
        let mut peers = participants.clone();
        peers.remove(&me);
        let shares = split(&keys.self_seed, participants.len(), threshold);
        Ok(Masking {
            me,
            round,
            threshold,
            keys,
            peers,
            participants: participants.keys().copied().collect(),
            shares,
        })
    }

    fn x_of(&self, site: u32) -> Result<usize, FederatedError> {
        self.participants
            .iter()
            .position(|&p| p == site)
            .ok_or_else(|| err(format!("site {site} is not in this round")))
    }

    fn seed_with(&self, other: u32) -> Result<[u8; 32], FederatedError> {
        let public = self
            .peers
            .get(&other)
            .ok_or_else(|| err(format!("site {other} is not in this round")))?;
        let shared = self
            .keys
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(*public));
        if !shared.was_contributory() {
            return Err(err(format!("site {other}'s public key is degenerate")));
        }
        let (lo, hi) = (self.me.min(other), self.me.max(other));
        let mut h = Sha256::new();
        h.update(b"medfed-secagg-v1");
        h.update(self.round.to_le_bytes());
        h.update(lo.to_le_bytes());
        h.update(hi.to_le_bytes());
        h.update(shared.as_bytes());
        Ok(h.finalize().into())
    }

    /// The key that encrypts the share `from` sends `to` (one per direction and round).
    fn share_cipher(&self, from: u32, to: u32, seed: &[u8; 32]) -> Aes256Gcm {
        let mut h = Sha256::new();
        h.update(b"medfed-secagg-share-v1");
        h.update(self.round.to_le_bytes());
        h.update(from.to_le_bytes());
        h.update(to.to_le_bytes());
        h.update(seed);
        Aes256Gcm::new(&h.finalize())
    }

    /// This site's self-mask shares for the other sites, each encrypted for its recipient (the
    /// hub relays them and cannot read them).
    pub fn encrypted_shares(&self) -> Result<BTreeMap<u32, Vec<u8>>, FederatedError> {
        self.peers
            .keys()
            .map(|&j| {
                let share = self.shares[self.x_of(j)?];
                let c = self.share_cipher(self.me, j, &self.seed_with(j)?);
                let sealed = c
                    .encrypt(Nonce::from_slice(&[0u8; 12]), &share[..])
                    .map_err(|_| err("share encryption failed"))?;
                Ok((j, sealed))
            })
            .collect()
    }

    /// The masked vector this site sends.
    pub fn mask(&self, values: &[f64]) -> Result<Vec<u64>, FederatedError> {
        let mut out = encode(values)?;
        for (o, m) in out
            .iter_mut()
            .zip(expand(&self.keys.self_seed, values.len()))
        {
            *o = o.wrapping_add(m);
        }
        for &j in self.peers.keys() {
            let m = expand(&self.seed_with(j)?, out.len());
            for (o, m) in out.iter_mut().zip(m) {
                *o = if j > self.me {
                    o.wrapping_add(m)
                } else {
                    o.wrapping_sub(m)
                };
            }
        }
        Ok(out)
    }

    /// What this site reveals once the hub names the survivors (whose vectors arrived) and the
    /// dropped: pairwise seeds for the dropped, self-mask shares for the survivors. Refused if a
    /// site is named in both, if this site is not a survivor, if anyone named is not in the
    /// round, or if fewer than `min_survivors` (or the threshold) survive. `received` holds the
    /// encrypted shares the other sites sent this one.
    pub fn reveal(
        &self,
        survivors: &[u32],
        dropped: &[u32],
        received: &BTreeMap<u32, Vec<u8>>,
        min_survivors: usize,
    ) -> Result<Reveal, FederatedError> {
        if !survivors.contains(&self.me) || dropped.contains(&self.me) {
            return Err(err(
                "a site reveals only as a survivor, never its own masks",
            ));
        }
        if let Some(s) = survivors.iter().find(|s| dropped.contains(s)) {
            return Err(err(format!("site {s} is named both survivor and dropped")));
        }
        for s in survivors.iter().chain(dropped) {
            self.x_of(*s)?;
        }
        if survivors.len() < min_survivors.max(self.threshold) {
            return Err(err(format!(
                "only {} sites survive, fewer than the minimum of {}",
                survivors.len(),
                min_survivors.max(self.threshold)
            )));
        }
        let mine = self.x_of(self.me)?;
        let mut shares = BTreeMap::new();
        for &i in survivors {
            let share = if i == self.me {
                self.shares[mine]
            } else {
                let sealed = received
                    .get(&i)
                    .ok_or_else(|| err(format!("no share from site {i}")))?;
                let c = self.share_cipher(i, self.me, &self.seed_with(i)?);
                let plain = c
                    .decrypt(
                        Nonce::from_slice(&[0u8; 12]),
                        Payload {
                            msg: sealed,
                            aad: &[],
                        },
                    )
                    .map_err(|_| err(format!("the share from site {i} does not decrypt")))?;
                plain
                    .try_into()
                    .map_err(|_| err(format!("the share from site {i} has the wrong size")))?
            };
            shares.insert(i, share);
        }
        let seeds = dropped
            .iter()
            .map(|&k| Ok((k, self.seed_with(k)?)))
            .collect::<Result<_, FederatedError>>()?;
        Ok(Reveal {
            x: (mine + 1) as u8,
            seeds,
            shares,
        })
    }
}

/// The hub step: the sum of the survivors' values. Each survivor's self-mask is rebuilt from at
/// least `threshold` revealed shares; the masks survivors shared with `dropped` sites are
/// removed with the revealed pairwise seeds.
pub fn unmask(
    masked: &BTreeMap<u32, Vec<u64>>,
    dropped: &[u32],
    reveals: &BTreeMap<u32, Reveal>,
    threshold: usize,
) -> Result<Vec<f64>, FederatedError> {
    let len = masked
        .values()
        .next()
        .map(Vec::len)
        .ok_or_else(|| err("no vector arrived"))?;
    let mut sum = vec![0u64; len];
    for (i, v) in masked {
        if v.len() != len {
            return Err(err(format!("site {i} sent {} values, not {len}", v.len())));
        }
        for (s, x) in sum.iter_mut().zip(v) {
            *s = s.wrapping_add(*x);
        }
        let shares: Vec<(u8, [u8; 32])> = reveals
            .values()
            .filter_map(|r| r.shares.get(i).map(|sh| (r.x, *sh)))
            .collect();
        if shares.len() < threshold.max(2) {
            return Err(err(format!(
                "{} shares of site {i}'s self-mask, {threshold} needed",
                shares.len()
            )));
        }
        let self_seed = combine(&shares);
        for (s, m) in sum.iter_mut().zip(expand(&self_seed, len)) {
            *s = s.wrapping_sub(m);
        }
        for &k in dropped {
            let seed = reveals
                .get(i)
                .and_then(|r| r.seeds.get(&k))
                .ok_or_else(|| err(format!("site {i} has not revealed its seed with {k}")))?;
            for (s, m) in sum.iter_mut().zip(expand(seed, len)) {
                // Site i added the mask if k > i and subtracted it otherwise: undo that.
                *s = if k > *i {
                    s.wrapping_sub(m)
                } else {
                    s.wrapping_add(m)
                };
            }
        }
    }
    Ok(decode(&sum))
}

/// The whole protocol in one process (for tests and benchmarks; the site node and the hub run
/// it over the site link): sites `0..n` mask `vectors`; those in `drop_after_masking` never
/// deliver; the survivors reveal; the hub unmasks.
pub fn run_in_process(
    round: u64,
    vectors: &[Vec<f64>],
    threshold: usize,
    drop_after_masking: &[u32],
) -> Result<Vec<f64>, FederatedError> {
    let keys: Vec<RoundKeys> = vectors.iter().map(|_| RoundKeys::generate()).collect();
    let publics: BTreeMap<u32, [u8; 32]> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u32, k.public))
        .collect();
    let sites = keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| Masking::new(i as u32, round, k, &publics, threshold))
        .collect::<Result<Vec<_>, _>>()?;
    // Shares travel (encrypted) through the hub: inbox[to][from].
    let mut inbox: BTreeMap<u32, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
    for m in &sites {
        for (to, sealed) in m.encrypted_shares()? {
            inbox.entry(to).or_default().insert(m.me, sealed);
        }
    }
    let mut masked = BTreeMap::new();
    for (m, v) in sites.iter().zip(vectors) {
        let y = m.mask(v)?;
        if !drop_after_masking.contains(&m.me) {
            masked.insert(m.me, y);
        }
    }
    let survivors: Vec<u32> = masked.keys().copied().collect();
    let empty = BTreeMap::new();
    let reveals = sites
        .iter()
        .filter(|m| survivors.contains(&m.me))
        .map(|m| {
            let got = inbox.get(&m.me).unwrap_or(&empty);
            Ok((
                m.me,
                m.reveal(&survivors, drop_after_masking, got, threshold)?,
            ))
        })
        .collect::<Result<BTreeMap<_, _>, FederatedError>>()?;
    unmask(&masked, drop_after_masking, &reveals, threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_of_shamir_shares_rebuilds_the_secret_and_fewer_do_not() {
        let secret: [u8; 32] = rand::random();
        let shares = split(&secret, 5, 3);
        let pick = |idx: &[usize]| -> Vec<(u8, [u8; 32])> {
            idx.iter().map(|&i| ((i + 1) as u8, shares[i])).collect()
        };
        assert_eq!(combine(&pick(&[0, 1, 2])), secret);
        assert_eq!(combine(&pick(&[4, 2, 0])), secret);
        assert_eq!(combine(&pick(&[0, 1, 2, 3, 4])), secret);
        assert_ne!(combine(&pick(&[1, 3])), secret);
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1);
        }
    }
}
