//! Attribution weights: each contributor's parts per million of an output, and the Merkle
//! tree of them that a receipt commits to.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256, U256, keccak256};
use serde::{Deserialize, Serialize};

use super::{AttributionError, PPM_WHOLE};
use crate::merkle::{MerkleProof, MerkleTree};

/// One contributor's weight in an attribution.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Weight {
    /// The contributor (a contribution owner's address).
    pub contributor: Address,
    /// Its share, in parts per million (never zero).
    pub ppm: u32,
}

/// An output's attribution weights: strictly ascending by contributor, each non-zero,
/// summing to exactly [`PPM_WHOLE`]; or empty when nothing matched. Decoding checks the
/// same rules as [`Weights::new`].
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize)]
pub struct Weights(Vec<Weight>);

impl Weights {
    /// Weights from a list that must already follow the rules (ascending, non-zero, whole).
    pub fn new(weights: Vec<Weight>) -> Result<Weights, AttributionError> {
        let mut sum = 0u64;
        for (i, w) in weights.iter().enumerate() {
            if w.ppm == 0 {
                return Err(AttributionError::ZeroWeight { contributor: w.contributor });
            }
            if i.checked_sub(1).is_some_and(|prev| weights[prev].contributor >= w.contributor) {
                return Err(AttributionError::WeightsUnsorted { index: i });
            }
            sum = sum.saturating_add(u64::from(w.ppm));
        }
        if !weights.is_empty() && sum != u64::from(PPM_WHOLE) {
            return Err(AttributionError::WeightsSum { sum });
        }
        Ok(Weights(weights))
    }

    /// No attribution: the output matched nothing.
    pub fn none() -> Weights {
        Weights(Vec::new())
    }

    /// Parts per million from non-negative scores, by the largest-remainder rule: each
    /// contributor first gets `floor(score × 10^6 / total)`; the ppm still missing (fewer
    /// than the number of contributors) go one each to the largest remainders
    /// `score × 10^6 mod total`, ties to the smaller address. Contributors left at zero
    /// are dropped. All zero scores give no weights.
    // Scores are summed and scaled in 256 bits (no u128 set can overflow it; `total` is
    // non-zero below); each base is ≤ 10^6, so `given` ≤ 10^6 and `missing` ≥ 0 and less
    // than the number of contributors, each of whose part stays ≤ 10^6.
    #[allow(clippy::arithmetic_side_effects)]
    pub fn from_scores(scores: &BTreeMap<Address, u128>) -> Weights {
        let whole = u128::from(PPM_WHOLE);
        // Summed in 256 bits: no set of u128 scores can overflow it.
        let total = scores.values().fold(U256::ZERO, |acc, s| acc + U256::from(*s));
        if total.is_zero() {
            return Weights::none();
        }
        let mut parts: Vec<(Address, u32, U256)> = scores
            .iter()
            .map(|(c, s)| {
                let scaled = U256::from(*s) * U256::from(whole);
                let base = scaled / total; // ≤ 10^6
                (*c, base.to::<u32>(), scaled % total)
            })
            .collect();
        let given: u32 = parts.iter().map(|p| p.1).sum();
        let missing = PPM_WHOLE - given;
        let mut order: Vec<usize> = (0..parts.len()).collect();
        // Largest remainder first; BTreeMap order already makes ties go to the smaller address.
        order.sort_by(|&a, &b| parts[b].2.cmp(&parts[a].2).then(a.cmp(&b)));
        for &k in order.iter().take(missing as usize) {
            parts[k].1 += 1;
        }
        Weights(
            parts.into_iter().filter(|p| p.1 > 0).map(|(contributor, ppm, _)| Weight { contributor, ppm }).collect(),
        )
    }

    /// The weights, ascending by contributor.
    pub fn as_slice(&self) -> &[Weight] {
        &self.0
    }

    /// Whether there are none (nothing matched).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of contributors weighted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `contributor`'s weight, 0 when it has none.
    pub fn ppm_of(&self, contributor: &Address) -> u32 {
        self.0.binary_search_by(|w| w.contributor.cmp(contributor)).map_or(0, |i| self.0[i].ppm)
    }

    /// Leaf `index`'s digest: `keccak256(contributor ‖ uint32be(ppm) ‖ uint32be(count))`.
    /// The count makes a leaf name its tree's size, so a proof cannot place it at another
    /// position of a tree of another size (a promoted node hashes alike at both).
    pub fn leaf(&self, index: usize) -> Option<B256> {
        self.0.get(index).map(|w| weight_digest(w, self.0.len() as u32))
    }

    /// The Merkle root committed in the receipt's `attributionRoot` (zero when empty).
    pub fn root(&self) -> B256 {
        self.tree().root()
    }

    /// Inclusion proof of weight `index` under [`Weights::root`].
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        self.tree().proof(index)
    }

    fn tree(&self) -> MerkleTree {
        let count = self.0.len() as u32;
        MerkleTree::new(&self.0.iter().map(|w| weight_digest(w, count)).collect::<Vec<_>>())
    }
}

/// The leaf digest of a weight in a tree of `count` weights (see [`Weights::leaf`]).
pub fn weight_digest(w: &Weight, count: u32) -> B256 {
    let mut buf = [0u8; 28];
    buf[..20].copy_from_slice(w.contributor.as_slice());
    buf[20..24].copy_from_slice(&w.ppm.to_be_bytes());
    buf[24..].copy_from_slice(&count.to_be_bytes());
    keccak256(buf)
}

impl<'de> Deserialize<'de> for Weights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Decoded weights obey the same rules as constructed ones.
        Weights::new(Vec::<Weight>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(i: u8) -> Address {
        Address::repeat_byte(i)
    }

    #[test]
    fn largest_remainder_breaks_ties_by_address() {
        let scores = BTreeMap::from([(a(3), 1u128), (a(1), 1), (a(2), 1)]);
        let w = Weights::from_scores(&scores);
        // 333,333 each and one ppm left: equal remainders, so the smallest address gets it.
        assert_eq!(w.as_slice().iter().map(|w| w.ppm).collect::<Vec<_>>(), vec![333_334, 333_333, 333_333]);
        assert_eq!(w.as_slice()[0].contributor, a(1));
    }

    #[test]
    fn weights_rules_are_enforced() {
        let w = |c: u8, ppm| Weight { contributor: a(c), ppm };
        assert!(Weights::new(vec![w(1, 500_000), w(2, 500_000)]).is_ok());
        assert_eq!(
            Weights::new(vec![w(2, 500_000), w(1, 500_000)]),
            Err(AttributionError::WeightsUnsorted { index: 1 })
        );
        assert_eq!(Weights::new(vec![w(1, 999_999)]), Err(AttributionError::WeightsSum { sum: 999_999 }));
        assert_eq!(
            Weights::new(vec![w(1, 0), w(2, 1_000_000)]),
            Err(AttributionError::ZeroWeight { contributor: a(1) })
        );
        let bytes = crate::codec::encode(&vec![w(1, 7)]);
        assert!(crate::codec::decode::<Weights>(&bytes).is_err(), "decoding checks the sum");
    }
}
