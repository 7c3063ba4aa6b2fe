//! Secure aggregation by pairwise masks (after Bonawitz et al., CCS 2017, without its second
//! mask): the hub learns the sum of the sites' vectors and nothing about any one of them.
//!
//! Each round every site makes an X25519 key pair and the hub relays the public keys. Sites i
//! and j derive the same seed from their Diffie-Hellman secret, the round and their ids, and
//! expand it (ChaCha20) into a mask vector. Values are fixed-point numbers in the ring of 64-bit
//! integers (2^-32 resolution); site i adds the masks it shares with higher ids and subtracts
//! those it shares with lower ids, so all masks cancel in the sum. What the hub receives from a
//! site is uniformly distributed whatever the site's values.
//!
//! Dropout after masking: if site k's vector never arrives, the survivors' masks shared with k
//! no longer cancel. Each survivor then reveals the one seed it shared with k (never a seed with
//! a site whose vector arrived), and the hub removes those masks.
//!
//! Limit (documented in docs/federated.md): with single masking, a hub that falsely declares a
//! site dropped after receiving its vector could unmask that vector. Sites refuse to reveal when
//! fewer than the study's minimum would survive; Bonawitz's double masking (a self-mask whose
//! seed is secret-shared) closes the gap and is not implemented here.

use std::collections::BTreeMap;

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

/// A site's key pair for one round.
pub struct RoundKeys {
    secret: x25519_dalek::StaticSecret,
    pub public: [u8; 32],
}

impl RoundKeys {
    pub fn generate() -> RoundKeys {
        let secret = x25519_dalek::StaticSecret::from(rand::random::<[u8; 32]>());
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        RoundKeys { secret, public }
    }
}

/// One site's view of a round: its id, its keys and every participant's public key.
pub struct Masking<'a> {
    pub me: u32,
    pub round: u64,
    keys: &'a RoundKeys,
    peers: BTreeMap<u32, [u8; 32]>,
}

fn expand(seed: &[u8; 32], len: usize) -> Vec<u64> {
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(*seed);
    (0..len).map(|_| rng.next_u64()).collect()
}

impl<'a> Masking<'a> {
    /// `participants`: every site of the round (this one included) with its public key.
    pub fn new(
        me: u32,
        round: u64,
        keys: &'a RoundKeys,
        participants: &BTreeMap<u32, [u8; 32]>,
    ) -> Result<Masking<'a>, FederatedError> {
        if participants.get(&me) != Some(&keys.public) {
            return Err(err("this site's own key is not in the round"));
        }
        let mut peers = participants.clone();
        peers.remove(&me);
        if peers.is_empty() {
            return Err(err("secure aggregation needs at least two sites"));
        }
        Ok(Masking {
            me,
            round,
            keys,
            peers,
        })
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

    /// The masked vector this site sends.
    pub fn mask(&self, values: &[f64]) -> Result<Vec<u64>, FederatedError> {
        let mut out = encode(values)?;
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

    /// The seeds this site shared with `dropped` sites, for the hub to remove their masks.
    /// Refused for this site itself, for unknown sites, and when fewer than `min_survivors`
    /// sites would remain.
    pub fn reveal(
        &self,
        dropped: &[u32],
        min_survivors: usize,
    ) -> Result<BTreeMap<u32, [u8; 32]>, FederatedError> {
        if dropped.contains(&self.me) {
            return Err(err("a site never reveals its own masks"));
        }
        let survivors = self.peers.len() + 1 - dropped.len();
        if survivors < min_survivors.max(2) {
            return Err(err(format!(
                "only {survivors} sites would remain, fewer than the minimum of {min_survivors}"
            )));
        }
        dropped
            .iter()
            .map(|&k| Ok((k, self.seed_with(k)?)))
            .collect()
    }
}

/// The hub step: the sum of the survivors' values from their masked vectors, removing the masks
/// they shared with `dropped` sites (`revealed[survivor][dropped] = seed`).
pub fn unmask(
    masked: &BTreeMap<u32, Vec<u64>>,
    dropped: &[u32],
    revealed: &BTreeMap<u32, BTreeMap<u32, [u8; 32]>>,
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
        for &k in dropped {
            let seed = revealed
                .get(i)
                .and_then(|r| r.get(&k))
                .ok_or_else(|| err(format!("site {i} has not revealed its seed with {k}")))?;
            let m = expand(seed, len);
            for (s, m) in sum.iter_mut().zip(m) {
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
