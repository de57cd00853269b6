//! Unique makers: how many distinct wallets made the swaps of a candle or a
//! window, as a sketch that merges like the other candle fields.
//!
//! Up to [`EXACT_MAX`] makers the sketch is the set of their hashes and the
//! count is exact. Beyond, it is a HyperLogLog of [`REGISTERS`] registers
//! (precision 10) read with Ertl's estimator (as Redis' `PFCOUNT` is): a
//! standard error of 1.04 / √1024 ≈ 3.25 %, so within ±6.5 % for 95 % of
//! counts and ±10 % for nearly all; a test measures it.
//!
//! A sketch's state is a function of the set of makers it has seen, however
//! they were split into candles, partitions and merges: merging is the
//! union of the sets, or the maximum of each register. So the actors, Redis
//! and PostgreSQL, which hold the same partial sketches, count the same, and
//! the reference model gets the same count from the sketch of the exact set
//! ([`Makers::of`]).

use std::collections::BTreeSet;
use std::fmt;

use super::swap::Address;

/// Makers counted exactly; one more and the sketch becomes registers (the
/// same 1 KiB either way).
pub const EXACT_MAX: usize = 128;
/// Index bits of a hash.
const PRECISION: u32 = 10;
pub const REGISTERS: usize = 1 << PRECISION;
/// The largest register value: the rank of the remaining 54 bits.
const MAX_RANK: u8 = (64 - PRECISION + 1) as u8;

/// The hash a maker is counted by: its 20 bytes mixed by MurmurHash3's
/// 64-bit finaliser. Fixed here, not taken from a hasher that may change
/// between versions, because sketches are stored.
pub fn hash(maker: &Address) -> u64 {
    fn fmix(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
    let bytes = &maker.0;
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let tail = u64::from(u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")));
    fmix(word(0) ^ fmix(word(8) ^ fmix(tail ^ 0x9e37_79b9_7f4a_7c15)))
}

/// The distinct makers of some swaps (see the module).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Makers(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    /// Sorted, distinct hashes; at most [`EXACT_MAX`].
    Exact(Vec<u64>),
    /// The register of each index: the highest rank seen.
    Registers(Box<[u8; REGISTERS]>),
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Exact(Vec::new())
    }
}

/// A stored sketch that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSketch(String);

impl fmt::Display for BadSketch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad makers sketch: {}", self.0)
    }
}

impl std::error::Error for BadSketch {}

impl Makers {
    /// The sketch of exactly these makers' hashes.
    pub fn of(hashes: impl IntoIterator<Item = u64>) -> Makers {
        let mut makers = Makers::default();
        for hash in hashes {
            makers.insert(hash);
        }
        makers
    }

    pub fn insert(&mut self, hash: u64) {
        match &mut self.0 {
            Repr::Exact(hashes) => {
                if let Err(at) = hashes.binary_search(&hash) {
                    hashes.insert(at, hash);
                    if hashes.len() > EXACT_MAX {
                        self.0 = Repr::Registers(registers_of(hashes));
                    }
                }
            }
            Repr::Registers(registers) => set(registers, hash),
        }
    }

    /// Adds every maker of `other`.
    pub fn merge(&mut self, other: &Makers) {
        match (&mut self.0, &other.0) {
            (_, Repr::Exact(hashes)) => hashes.iter().for_each(|&h| self.insert(h)),
            (Repr::Registers(mine), Repr::Registers(theirs)) => {
                mine.iter_mut().zip(theirs.iter()).for_each(|(m, t)| *m = (*m).max(*t));
            }
            (Repr::Exact(hashes), Repr::Registers(theirs)) => {
                let mut registers = theirs.clone();
                hashes.iter().for_each(|&h| set(&mut registers, h));
                self.0 = Repr::Registers(registers);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0 == Repr::Exact(Vec::new())
    }

    /// How many distinct makers: exact up to [`EXACT_MAX`], else estimated.
    pub fn count(&self) -> u64 {
        match &self.0 {
            Repr::Exact(hashes) => hashes.len() as u64,
            Repr::Registers(registers) => estimate(registers),
        }
    }

    /// The stored form: empty when no maker was seen; else a tag byte (0
    /// for hashes, 1 for registers) and the 8-byte big-endian hashes or the
    /// 1024 registers.
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.0 {
            Repr::Exact(hashes) if hashes.is_empty() => Vec::new(),
            Repr::Exact(hashes) => std::iter::once(0).chain(hashes.iter().flat_map(|h| h.to_be_bytes())).collect(),
            Repr::Registers(registers) => std::iter::once(1).chain(registers.iter().copied()).collect(),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Makers, BadSketch> {
        match bytes.split_first() {
            None => Ok(Makers::default()),
            Some((0, rest)) if rest.len() % 8 == 0 && rest.len() / 8 <= EXACT_MAX => {
                let hashes: Vec<u64> =
                    rest.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();
                if !hashes.windows(2).all(|w| w[0] < w[1]) {
                    return Err(BadSketch("hashes not sorted and distinct".into()));
                }
                Ok(Makers(Repr::Exact(hashes)))
            }
            Some((1, rest)) if rest.len() == REGISTERS && rest.iter().all(|&r| r <= MAX_RANK) => {
                Ok(Makers(Repr::Registers(Box::new(rest.try_into().expect("REGISTERS bytes")))))
            }
            Some((tag, rest)) => Err(BadSketch(format!("tag {tag} with {} bytes", rest.len()))),
        }
    }
}

impl fmt::Debug for Makers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if matches!(self.0, Repr::Exact(_)) { "exact" } else { "estimated" };
        write!(f, "Makers({} {kind})", self.count())
    }
}

fn registers_of(hashes: &[u64]) -> Box<[u8; REGISTERS]> {
    let mut registers = Box::new([0u8; REGISTERS]);
    hashes.iter().for_each(|&h| set(&mut registers, h));
    registers
}

/// The top [`PRECISION`] bits pick the register; the rank of the rest (its
/// leading zeros plus one, at most [`MAX_RANK`]) is kept if higher.
fn set(registers: &mut [u8; REGISTERS], hash: u64) {
    let index = (hash >> (64 - PRECISION)) as usize;
    let rank = ((hash << PRECISION).leading_zeros() + 1).min(u32::from(MAX_RANK)) as u8;
    registers[index] = registers[index].max(rank);
}

/// Ertl's improved raw estimator ("New cardinality estimation algorithms for
/// HyperLogLog sketches", 2017): no bias correction tables, no switch to
/// linear counting.
fn estimate(registers: &[u8; REGISTERS]) -> u64 {
    let m = REGISTERS as f64;
    let q = usize::from(MAX_RANK) - 1;
    let mut histogram = [0u32; MAX_RANK as usize + 1];
    registers.iter().for_each(|&r| histogram[usize::from(r)] += 1);
    let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
    for k in (1..=q).rev() {
        z = 0.5 * (z + f64::from(histogram[k]));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    (m * m / (2.0 * std::f64::consts::LN_2) / z).round() as u64
}

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

/// The distinct makers of a set, counted the plain way and then as the
/// sketch counts them: what the reference model serves.
pub fn reference_count(makers: &BTreeSet<Address>) -> u64 {
    Makers::of(makers.iter().map(hash)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn addresses(n: usize, seed: u64) -> Vec<Address> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        (0..n).map(|_| Address(rng.gen())).collect()
    }

    #[test]
    fn up_to_the_exact_limit_the_count_is_exact_and_repeats_do_not_count() {
        for n in [0, 1, 2, 50, EXACT_MAX] {
            let list = addresses(n, n as u64);
            let makers = Makers::of(list.iter().chain(list.iter()).map(hash));
            assert_eq!(makers.count(), n as u64);
        }
    }

    /// The documented error, measured: over 400 sets from 129 to 200,000
    /// makers, the root mean square relative error is near 3.25 % and none
    /// is off by 10 % or more.
    #[test]
    fn beyond_the_exact_limit_the_error_is_the_documented_one() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let (mut squares, mut worst, trials) = (0.0, 0.0f64, 400);
        for trial in 0..trials {
            let n = if trial % 2 == 0 { rng.gen_range(129..5_000) } else { rng.gen_range(5_000..200_000) };
            let makers = Makers::of((0..n).map(|_| rng.gen::<u64>()));
            let error = (makers.count() as f64 - n as f64) / n as f64;
            squares += error * error;
            worst = worst.max(error.abs());
        }
        let rms = (squares / trials as f64).sqrt();
        assert!((0.02..0.045).contains(&rms), "rms error {rms}");
        assert!(worst < 0.10, "worst error {worst}");
    }

    #[test]
    fn the_sketch_of_a_union_is_the_sketch_of_the_set_however_it_was_split_and_merged() {
        let all = addresses(3_000, 1);
        let whole = Makers::of(all.iter().map(hash));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        for _ in 0..20 {
            let mut parts: Vec<Makers> = vec![Makers::default(); rng.gen_range(1..40)];
            for (i, maker) in all.iter().enumerate() {
                // Each maker in one or more parts, parts of every size.
                let at = rng.gen_range(0..parts.len());
                parts[at].insert(hash(maker));
                if i % 3 == 0 {
                    let again = rng.gen_range(0..parts.len());
                    parts[again].insert(hash(maker));
                }
            }
            let mut merged = Makers::default();
            for part in &parts {
                merged.merge(part);
            }
            assert_eq!(merged, whole);
        }
        let small = Makers::of(addresses(5, 3).iter().map(hash));
        let mut both = small.clone();
        both.merge(&whole);
        let mut other_way = whole.clone();
        other_way.merge(&small);
        assert_eq!(both, other_way);
    }

    #[test]
    fn the_stored_form_reads_back_and_anything_else_is_refused() {
        for n in [0, 3, EXACT_MAX, EXACT_MAX + 1, 10_000] {
            let makers = Makers::of(addresses(n, 9).iter().map(hash));
            assert_eq!(Makers::from_bytes(&makers.to_bytes()).unwrap(), makers, "{n}");
        }
        assert!(Makers::default().to_bytes().is_empty());
        for bad in [&[2u8][..], &[0, 1, 2], &[1; 10], &[0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1]] {
            assert!(Makers::from_bytes(bad).is_err(), "{bad:?}");
        }
        let mut high = vec![1u8];
        high.extend([MAX_RANK + 1; REGISTERS]);
        assert!(Makers::from_bytes(&high).is_err(), "a register above the largest rank");
    }

    #[test]
    fn makers_whose_addresses_differ_in_one_byte_hash_apart() {
        let a = Address([0; 20]);
        let hashes: BTreeSet<u64> = (0..20)
            .map(|i| {
                let mut b = a;
                b.0[i] = 1;
                hash(&b)
            })
            .chain([hash(&a)])
            .collect();
        assert_eq!(hashes.len(), 21);
    }
}
