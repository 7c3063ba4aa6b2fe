//! Secure aggregation with double masking (Bonawitz et al., CCS 2017): the hub learns the sum
//! of the sites' vectors and nothing about any one of them, even when sites drop out, and even
//! if it lies about who dropped out or tells different sites different stories.
//!
//! Each round every site makes three key pairs and a random self-mask seed; the hub relays the
//! public keys. Two of the key pairs are X25519 and are never used for the same thing (the
//! paper's s-keys and c-keys):
//!
//! - **mask keys**: sites i and j derive their pairwise mask seed from this Diffie-Hellman
//!   secret (HKDF-SHA-256, label `medfed-secagg-mask-v2`, the round and both ids);
//! - **share keys**: each site splits its self-mask seed into Shamir shares (threshold t,
//!   byte-wise over GF(2^8)) and sends one to every other site through the hub, sealed with
//!   AES-256-GCM under a key derived from *this* secret (label `medfed-secagg-share-v2`, bound
//!   to the round, the sender and the recipient, which are also the associated data).
//!
//! A survivor reveals the pairwise seed it shares with a site declared dropped; that seed says
//! nothing about the share keys, so a hub that declares a delivered site dropped cannot open
//! the shares it relayed and rebuild the site's self-mask.
//!
//! The third key pair (Ed25519) signs the split of the round: before anything is revealed, the
//! hub sends every survivor the survivors S and the dropped D; each survivor checks that S and D
//! partition the round, that every survivor sent it a share that opens, and that S holds at
//! least t sites, and then signs (round, S, D), once per round. A survivor reveals only when
//! shown at least t valid signatures of its own split by sites of S. Since t is more than half
//! the round, two different splits can never both gather t signatures from sites that sign
//! once: the hub gets one split per round, everyone reveals for the same D, and the sum over S
//! is all it can compute (a split-view attack, S told to some and D to others, is refused).
//!
//! Values are fixed-point numbers in the ring of 64-bit integers (2^-32 resolution). Site i
//! sends
//!
//! `y_i = x_i + PRG(self_i) + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)`
//!
//! so the pairwise masks cancel in the sum and the self-masks do not. The hub rebuilds the
//! survivors' self-masks from t shares and removes the masks survivors shared with D.
//!
//! Not covered: the hub relays the public keys and is also the CA of the sites' certificates, so
//! a hub that substitutes keys (or enrols sites of its own) is a man in the middle that no check
//! here can see; resisting that needs keys or certificates vouched for outside the hub.

use std::collections::{BTreeMap, BTreeSet};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signer, Verifier};
use hkdf::Hkdf;
use rand::{RngCore, SeedableRng};
use sha2::Sha256;

use crate::FederatedError;

/// Fixed-point resolution: values are multiples of 2^-32 (a Newton step from masked sums then
/// matches the unmasked one to about 1e-9).
pub const FRACTION_BITS: u32 = 32;
/// Largest magnitude one value (or a sum) may have: the sum must fit in 63 bits.
pub const MAX_ABS: f64 = (1u64 << 30) as f64;

/// Domain labels: a key derived under one can never equal a key derived under another.
const MASK_LABEL: &[u8] = b"medfed-secagg-mask-v2";
const SHARE_LABEL: &[u8] = b"medfed-secagg-share-v2";
const SPLIT_LABEL: &[u8] = b"medfed-secagg-split-v2";

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

/// The public half of a site's round keys, as the hub relays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundPublic {
    /// X25519: pairwise mask seeds.
    pub mask: [u8; 32],
    /// X25519: the keys that seal self-mask shares (never used for masks).
    pub share: [u8; 32],
    /// Ed25519: signs this site's survivor/dropped split of the round.
    pub sign: [u8; 32],
}

/// A site's secrets for one round: its key pairs and its self-mask seed.
pub struct RoundKeys {
    mask: x25519_dalek::StaticSecret,
    share: x25519_dalek::StaticSecret,
    sign: ed25519_dalek::SigningKey,
    pub public: RoundPublic,
    self_seed: [u8; 32],
}

impl RoundKeys {
    pub fn generate() -> RoundKeys {
        let mask = x25519_dalek::StaticSecret::from(rand::random::<[u8; 32]>());
        let share = x25519_dalek::StaticSecret::from(rand::random::<[u8; 32]>());
        let sign = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let public = RoundPublic {
            mask: x25519_dalek::PublicKey::from(&mask).to_bytes(),
            share: x25519_dalek::PublicKey::from(&share).to_bytes(),
            sign: sign.verifying_key().to_bytes(),
        };
        RoundKeys {
            mask,
            share,
            sign,
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

/// One site's view of a round: its id, its keys, every participant's public keys, the Shamir
/// shares of its self-mask seed (one per participant, made once) and the split it signed.
pub struct Masking {
    pub me: u32,
    pub round: u64,
    pub threshold: usize,
    keys: RoundKeys,
    /// Every participant (this site included); a participant's Shamir x is its position + 1.
    participants: BTreeMap<u32, RoundPublic>,
    shares: Vec<[u8; 32]>,
    signed: Option<Signed>,
}

/// The one split a site signs in a round, and the shares it opened for it.
struct Signed {
    survivors: BTreeSet<u32>,
    dropped: BTreeSet<u32>,
    signature: Vec<u8>,
    opened: BTreeMap<u32, [u8; 32]>,
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

/// 32 bytes from a Diffie-Hellman secret under `label`, bound to the round and two ids.
fn derive(secret: &[u8; 32], label: &[u8], round: u64, a: u32, b: u32) -> [u8; 32] {
    let mut info = label.to_vec();
    info.extend(round.to_le_bytes());
    info.extend(a.to_le_bytes());
    info.extend(b.to_le_bytes());
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(None, secret)
        .expand(&info, &mut out)
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    out
}

/// The associated data of the share `from` seals for `to` in `round`.
fn share_aad(round: u64, from: u32, to: u32) -> Vec<u8> {
    let mut aad = SHARE_LABEL.to_vec();
    aad.extend(round.to_le_bytes());
    aad.extend(from.to_le_bytes());
    aad.extend(to.to_le_bytes());
    aad
}

/// The bytes a site signs for a split of `round`.
pub fn split_message(round: u64, survivors: &BTreeSet<u32>, dropped: &BTreeSet<u32>) -> Vec<u8> {
    let mut m = SPLIT_LABEL.to_vec();
    m.extend(round.to_le_bytes());
    for set in [survivors, dropped] {
        m.extend((set.len() as u32).to_le_bytes());
        for s in set {
            m.extend(s.to_le_bytes());
        }
    }
    m
}

/// A list of site ids as a set; a site named twice is refused.
fn as_set(ids: &[u32], what: &str) -> Result<BTreeSet<u32>, FederatedError> {
    let set: BTreeSet<u32> = ids.iter().copied().collect();
    if set.len() != ids.len() {
        return Err(err(format!("a site is named twice among the {what}")));
    }
    Ok(set)
}

impl Masking {
    /// `participants`: every site of the round (this one included) with its public keys;
    /// `threshold`: shares needed to rebuild a self-mask, more than half the sites (so that no
    /// two different splits of the round can each gather that many signatures).
    pub fn new(
        me: u32,
        round: u64,
        keys: RoundKeys,
        participants: &BTreeMap<u32, RoundPublic>,
        threshold: usize,
    ) -> Result<Masking, FederatedError> {
        if participants.get(&me) != Some(&keys.public) {
            return Err(err("this site's own key is not in the round"));
        }
        let n = participants.len();
        if !(2..=255).contains(&n) {
            return Err(err("secure aggregation needs 2 to 255 sites"));
        }
        if threshold * 2 <= n || threshold > n {
            return Err(err(format!(
                "threshold {threshold} for {n} sites: it must be more than half of them and at most all"
            )));
        }
        for (j, p) in participants.iter().filter(|(j, _)| **j != me) {
            let mine = &keys.public;
            if p.mask == mine.mask || p.share == mine.share || p.sign == mine.sign {
                return Err(err(format!("site {j} was given this site's own key")));
            }
        }
        let shares = split(&keys.self_seed, n, threshold);
        Ok(Masking {
            me,
            round,
            threshold,
            keys,
            participants: participants.clone(),
            shares,
            signed: None,
        })
    }

    fn x_of(&self, site: u32) -> Result<usize, FederatedError> {
        self.participants
            .keys()
            .position(|&p| p == site)
            .ok_or_else(|| err(format!("site {site} is not in this round")))
    }

    fn peer(&self, other: u32) -> Result<&RoundPublic, FederatedError> {
        self.participants
            .get(&other)
            .filter(|_| other != self.me)
            .ok_or_else(|| err(format!("site {other} is not a peer in this round")))
    }

    fn agree(
        secret: &x25519_dalek::StaticSecret,
        public: &[u8; 32],
        other: u32,
    ) -> Result<[u8; 32], FederatedError> {
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
        if !shared.was_contributory() {
            return Err(err(format!("site {other}'s public key is degenerate")));
        }
        Ok(shared.to_bytes())
    }

    /// The pairwise mask seed with `other` (the same at both ends).
    fn seed_with(&self, other: u32) -> Result<[u8; 32], FederatedError> {
        let dh = Self::agree(&self.keys.mask, &self.peer(other)?.mask, other)?;
        let (lo, hi) = (self.me.min(other), self.me.max(other));
        Ok(derive(&dh, MASK_LABEL, self.round, lo, hi))
    }

    /// The key that seals the share `from` sends `to` (one per direction and round), from the
    /// share keys only.
    fn share_cipher(&self, from: u32, to: u32) -> Result<Aes256Gcm, FederatedError> {
        let other = if from == self.me { to } else { from };
        let dh = Self::agree(&self.keys.share, &self.peer(other)?.share, other)?;
        let key = derive(&dh, SHARE_LABEL, self.round, from, to);
        Ok(Aes256Gcm::new(&key.into()))
    }

    /// This site's self-mask shares for the other sites, each sealed for its recipient (the
    /// hub relays them and cannot open them).
    pub fn encrypted_shares(&self) -> Result<BTreeMap<u32, Vec<u8>>, FederatedError> {
        self.participants
            .keys()
            .filter(|&&j| j != self.me)
            .map(|&j| {
                let share = self.shares[self.x_of(j)?];
                // Each key seals exactly one message, so a fixed nonce is never reused.
                let sealed = self
                    .share_cipher(self.me, j)?
                    .encrypt(
                        Nonce::from_slice(&[0u8; 12]),
                        Payload {
                            msg: &share[..],
                            aad: &share_aad(self.round, self.me, j),
                        },
                    )
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
        for &j in self.participants.keys().filter(|&&j| j != self.me) {
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

    fn open_share(&self, from: u32, sealed: &[u8]) -> Result<[u8; 32], FederatedError> {
        let plain = self
            .share_cipher(from, self.me)?
            .decrypt(
                Nonce::from_slice(&[0u8; 12]),
                Payload {
                    msg: sealed,
                    aad: &share_aad(self.round, from, self.me),
                },
            )
            .map_err(|_| err(format!("the share from site {from} does not open")))?;
        plain
            .try_into()
            .map_err(|_| err(format!("the share from site {from} has the wrong size")))
    }

    /// Sign the hub's split of the round into survivors (whose vectors arrived) and dropped:
    /// the first step of revealing, and the only split this site ever signs in this round
    /// (the same split again gets the same signature). Refused if the two lists do not
    /// partition the round, if this site is not a survivor, if a survivor sent this site no
    /// share that opens (`received`: the sealed shares others sent it), or if fewer than
    /// `min_survivors` (or the threshold) survive.
    pub fn sign_split(
        &mut self,
        survivors: &[u32],
        dropped: &[u32],
        received: &BTreeMap<u32, Vec<u8>>,
        min_survivors: usize,
    ) -> Result<Vec<u8>, FederatedError> {
        let s = as_set(survivors, "survivors")?;
        let d = as_set(dropped, "dropped")?;
        if let Some(signed) = &self.signed {
            if signed.survivors == s && signed.dropped == d {
                return Ok(signed.signature.clone());
            }
            return Err(err(format!(
                "round {}: this site already signed a different split of the round",
                self.round
            )));
        }
        if !s.contains(&self.me) || d.contains(&self.me) {
            return Err(err(
                "a site reveals only as a survivor, never its own masks",
            ));
        }
        if let Some(x) = s.intersection(&d).next() {
            return Err(err(format!("site {x} is named both survivor and dropped")));
        }
        let named: BTreeSet<u32> = s.union(&d).copied().collect();
        let round: BTreeSet<u32> = self.participants.keys().copied().collect();
        if named != round {
            return Err(err(
                "the survivors and the dropped are not exactly the sites of the round",
            ));
        }
        let need = min_survivors.max(self.threshold);
        if s.len() < need {
            return Err(err(format!(
                "only {} sites survive, fewer than the minimum of {need}",
                s.len()
            )));
        }
        let mut opened = BTreeMap::new();
        for &i in &s {
            let share = if i == self.me {
                self.shares[self.x_of(i)?]
            } else {
                let sealed = received.get(&i).ok_or_else(|| {
                    err(format!("survivor {i} sent this site no share of its mask"))
                })?;
                self.open_share(i, sealed)?
            };
            opened.insert(i, share);
        }
        let signature = self
            .keys
            .sign
            .sign(&split_message(self.round, &s, &d))
            .to_bytes()
            .to_vec();
        self.signed = Some(Signed {
            survivors: s,
            dropped: d,
            signature: signature.clone(),
            opened,
        });
        Ok(signature)
    }

    /// What this site reveals for the split it signed: pairwise seeds for the dropped,
    /// self-mask shares for the survivors. Refused unless `survivors` and `dropped` are that
    /// split and `signatures` holds valid signatures of it by at least the threshold of
    /// survivors (so every site that reveals this round reveals for the same split).
    pub fn reveal(
        &self,
        survivors: &[u32],
        dropped: &[u32],
        signatures: &BTreeMap<u32, Vec<u8>>,
    ) -> Result<Reveal, FederatedError> {
        let signed = self
            .signed
            .as_ref()
            .ok_or_else(|| err("this site has signed no split of this round"))?;
        let (s, d) = (as_set(survivors, "survivors")?, as_set(dropped, "dropped")?);
        if signed.survivors != s || signed.dropped != d {
            return Err(err(format!(
                "round {}: asked to reveal for a split other than the one this site signed",
                self.round
            )));
        }
        let message = split_message(self.round, &s, &d);
        let valid = s
            .iter()
            .filter(|i| {
                let (Some(sig), Some(p)) = (signatures.get(i), self.participants.get(i)) else {
                    return false;
                };
                let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
                    return false;
                };
                ed25519_dalek::VerifyingKey::from_bytes(&p.sign)
                    .is_ok_and(|k| k.verify(&message, &sig).is_ok())
            })
            .count();
        if valid < self.threshold {
            return Err(err(format!(
                "round {}: {valid} survivors signed this split, {} needed",
                self.round, self.threshold
            )));
        }
        let seeds = d
            .iter()
            .map(|&k| Ok((k, self.seed_with(k)?)))
            .collect::<Result<_, FederatedError>>()?;
        Ok(Reveal {
            x: (self.x_of(self.me)? + 1) as u8,
            seeds,
            shares: signed.opened.clone(),
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
/// deliver; the survivors sign the split and reveal; the hub unmasks.
pub fn run_in_process(
    round: u64,
    vectors: &[Vec<f64>],
    threshold: usize,
    drop_after_masking: &[u32],
) -> Result<Vec<f64>, FederatedError> {
    let keys: Vec<RoundKeys> = vectors.iter().map(|_| RoundKeys::generate()).collect();
    let publics: BTreeMap<u32, RoundPublic> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u32, k.public))
        .collect();
    let mut sites = keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| Masking::new(i as u32, round, k, &publics, threshold))
        .collect::<Result<Vec<_>, _>>()?;
    // Shares travel (sealed) through the hub: inbox[to][from].
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
    let mut signatures = BTreeMap::new();
    for m in sites.iter_mut().filter(|m| survivors.contains(&m.me)) {
        let got = inbox.get(&m.me).unwrap_or(&empty);
        let sig = m.sign_split(&survivors, drop_after_masking, got, threshold)?;
        signatures.insert(m.me, sig);
    }
    let reveals = sites
        .iter()
        .filter(|m| survivors.contains(&m.me))
        .map(|m| Ok((m.me, m.reveal(&survivors, drop_after_masking, &signatures)?)))
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
