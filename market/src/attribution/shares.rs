//! Data shares: how the data share of a payout run is divided between receipts by value,
//! then between each receipt's contributors by their weights.

use alloy_primitives::{Address, B256, U256, keccak256};
use serde::{Deserialize, Serialize};

use super::PPM_WHOLE;
use super::weights::Weights;
use crate::types::Wei;

/// The part of a settlement's data share owed to one contributor for one receipt.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct DataEntry {
    /// Who is owed.
    pub contributor: Address,
    /// The receipt's leaf index in the settlement batch.
    pub leaf: u64,
    /// The contributor's position in the receipt's weights.
    pub weight_index: u32,
    /// How much.
    pub amount: Wei,
}

impl DataEntry {
    /// The entry's digest in a run's data tree:
    /// `keccak256(contributor ‖ uint64be(leaf) ‖ uint32be(weightIndex))`; the tree is a
    /// Merkle-sum tree whose leaf values are the amounts.
    pub fn digest(&self) -> B256 {
        let mut buf = [0u8; 32];
        buf[..20].copy_from_slice(self.contributor.as_slice());
        buf[20..28].copy_from_slice(&self.leaf.to_be_bytes());
        buf[28..].copy_from_slice(&self.weight_index.to_be_bytes());
        keccak256(buf)
    }

    /// The order of entries in a run's data tree: by contributor, then leaf. A contributor's
    /// entries are then contiguous, and it claims them as one range.
    pub fn key(&self) -> (Address, u64) {
        (self.contributor, self.leaf)
    }
}

/// A receipt's part of its run's data share: `floor(value × run_data / run_value)` (zero
/// for a run of zero value). Receipts of one run share its data share by value; the parts
/// never sum to more than `run_data`.
// Two u128 factors cannot overflow 256 bits, and the divisor is checked non-zero above.
#[allow(clippy::arithmetic_side_effects)]
pub fn receipt_data_share(value: Wei, run_value: Wei, run_data: Wei) -> Wei {
    if run_value.0 == 0 {
        return Wei::ZERO;
    }
    let share = U256::from(value.0) * U256::from(run_data.0) / U256::from(run_value.0);
    // value ≤ run_value for a receipt of the run, so share ≤ run_data; saturate otherwise.
    Wei(u128::try_from(share).unwrap_or(u128::MAX))
}

/// `floor(amount × ppm / 10^6)`, exactly and without overflow.
// With `amount = q·10^6 + r`: `q·ppm ≤ amount` for ppm ≤ 10^6 (a weight never exceeds a
// whole), `r·ppm < 10^12`, and the sum is at most `amount`.
#[allow(clippy::arithmetic_side_effects)]
pub fn ppm_of(amount: Wei, ppm: u32) -> Wei {
    let whole = u128::from(PPM_WHOLE);
    let ppm = u128::from(ppm);
    Wei((amount.0 / whole) * ppm + (amount.0 % whole) * ppm / whole)
}

/// The data entries of one payout run: for each receipt (its leaf index in the batch, its
/// value and its weights), its data share ([`receipt_data_share`]) is split by its weights
/// ([`ppm_of`]); entries of zero are left out; the result is sorted by
/// [`DataEntry::key`]. Receipts without weights add nothing, so their share (and the
/// rounding dust) stays with the model's data pool.
pub fn run_data_entries<'a>(
    receipts: impl IntoIterator<Item = (u64, Wei, &'a Weights)>,
    run_value: Wei,
    run_data: Wei,
) -> Vec<DataEntry> {
    let mut entries = Vec::new();
    for (leaf, value, weights) in receipts {
        let data = receipt_data_share(value, run_value, run_data);
        for (j, w) in weights.as_slice().iter().enumerate() {
            let amount = ppm_of(data, w.ppm);
            if amount.0 > 0 {
                entries.push(DataEntry { contributor: w.contributor, leaf, weight_index: j as u32, amount });
            }
        }
    }
    entries.sort_by_key(DataEntry::key);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::Weight;

    fn a(i: u8) -> Address {
        Address::repeat_byte(i)
    }

    #[test]
    fn data_shares_round_down_and_never_exceed_the_run() {
        assert_eq!(ppm_of(Wei(999_999), 500_000), Wei(499_999));
        assert_eq!(ppm_of(Wei(u128::MAX), PPM_WHOLE), Wei(u128::MAX));
        assert_eq!(receipt_data_share(Wei(1), Wei(3), Wei(100)), Wei(33));
        assert_eq!(receipt_data_share(Wei(5), Wei(0), Wei(100)), Wei::ZERO);
        let w = Weights::new(vec![Weight { contributor: a(1), ppm: 1 }, Weight { contributor: a(2), ppm: 999_999 }])
            .unwrap();
        let entries = run_data_entries([(0, Wei(1), &w), (1, Wei(2), &w)], Wei(3), Wei(100));
        // data shares 33 and 66; a(1)'s 1 ppm of either rounds to nothing.
        assert_eq!(
            entries.iter().map(|e| (e.contributor, e.leaf, e.amount.0)).collect::<Vec<_>>(),
            vec![(a(2), 0, 32), (a(2), 1, 65)]
        );
    }
}
