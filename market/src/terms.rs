//! Which version of a model's terms a receipt was made under (docs/protocol.md, "Terms
//! versions"). The registry keeps every version an owner ever set; a payout run names one,
//! and disputes judge the run by that version alone, so no later update can turn an honest
//! settlement into "fraud". Both the node building its payouts and the watcher checking
//! them ask [`TermsHistory`], so the two can never disagree about a receipt.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::payout::PayoutError;
use crate::receipt::Receipt;
use crate::split::Split;
use crate::types::{ModelId, Price};

/// One version of a model's registered terms (`Registry.TermsVersion`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TermsVersion {
    /// Its prices.
    pub price: Price,
    /// Its split.
    pub split: Split,
    /// Chain time it came into force.
    pub since: u64,
}

/// Every version of a model's terms, oldest first, with the grace after an update during
/// which receipts may still be made under the version it replaced (`Registry.TERMS_GRACE`:
/// a node learns of an update only on its next pass over the chain).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TermsHistory {
    /// The versions, oldest first; the last is in force.
    pub versions: Vec<TermsVersion>,
    /// Seconds a replaced version still covers receipts.
    pub grace: u64,
}

impl TermsHistory {
    /// The version in force and its number; `None` for an empty history.
    pub fn current(&self) -> Option<(u32, &TermsVersion)> {
        let last = self.versions.len().checked_sub(1)?;
        Some((u32::try_from(last).ok()?, &self.versions[last]))
    }

    /// Version `v`, if the model has had it.
    pub fn get(&self, v: u32) -> Option<&TermsVersion> {
        self.versions.get(usize::try_from(v).ok()?)
    }

    /// The receipt times version `v` covers, `[since, until)`: from when it came into force
    /// until `grace` after the next version did (for ever for the version in force). What
    /// `Registry.termsVersion` returns.
    pub fn period(&self, v: u32) -> Option<(u64, u64)> {
        let this = self.get(v)?;
        let until = match self.get(v.checked_add(1)?) {
            Some(next) => next.since.saturating_add(self.grace),
            None => u64::MAX,
        };
        Some((this.since, until))
    }

    /// Whether receipt `r` belongs under version `v`: its prices are that version's and its
    /// time is in the version's period. The contract's `disputeAttribution` proves fraud
    /// for a receipt of a run where this is false (the model is the run's own business).
    pub fn covers(&self, v: u32, r: &Receipt) -> bool {
        match (self.get(v), self.period(v)) {
            (Some(t), Some((since, until))) => t.price == r.price && since <= r.timestamp && r.timestamp < until,
            _ => false,
        }
    }

    /// The version an honest provider settles `r` under: the newest that covers it, with
    /// its terms. `None` when none does: the receipt was made at prices the model no longer
    /// had, past the grace, and no settlement can hold it without being provable fraud.
    pub fn version_for(&self, r: &Receipt) -> Option<(u32, &TermsVersion)> {
        let newest = u32::try_from(self.versions.len()).ok()?;
        let v = (0..newest).rev().find(|&v| self.covers(v, r))?;
        Some((v, self.get(v)?))
    }
}

/// The version and split an honest provider settles `r` under, from the histories of the
/// batch's models: what [`crate::payout_runs`] takes from the node and the watcher alike.
pub fn honest_terms(histories: &BTreeMap<ModelId, TermsHistory>, r: &Receipt) -> Result<(u32, Split), PayoutError> {
    let h = histories.get(&r.model).ok_or(PayoutError::UnknownModel(r.model))?;
    let (v, t) = h.version_for(r).ok_or(PayoutError::NoTerms { seq: r.seq, model: r.model })?;
    Ok((v, t.split))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Wei;

    fn price(i: u128) -> Price {
        Price { per_1k_input: Wei(i), per_1k_output: Wei(i.wrapping_mul(2)) }
    }

    fn history() -> TermsHistory {
        let split = Split::new(7_000, 2_000, 900, 100).unwrap();
        let v = |p, since| TermsVersion { price: price(p), split, since };
        // Version 2 repeats version 0's prices: receipts at them after version 2 came into
        // force belong to it, not to version 0.
        TermsHistory { versions: vec![v(1, 100), v(5, 1_000), v(1, 2_000)], grace: 50 }
    }

    fn receipt(p: u128, timestamp: u64) -> Receipt {
        Receipt { price: price(p), timestamp, ..Receipt::default() }
    }

    #[test]
    fn a_receipt_belongs_to_the_newest_version_that_covers_its_prices_and_time() {
        let h = history();
        let version = |p, t| h.version_for(&receipt(p, t)).map(|(v, _)| v);
        assert_eq!(version(1, 99), None, "before the model had terms");
        assert_eq!(version(1, 100), Some(0));
        assert_eq!(version(1, 1_049), Some(0), "old prices within the grace");
        assert_eq!(version(1, 1_050), None, "old prices past the grace");
        assert_eq!(version(5, 999), None, "new prices before they were set");
        assert_eq!(version(5, 1_000), Some(1));
        assert_eq!(version(5, 2_049), Some(1));
        assert_eq!(version(1, 2_000), Some(2), "version 0's prices again, now version 2's");
        assert_eq!(version(1, u64::MAX - 1), Some(2));
        assert_eq!(h.current().map(|(v, _)| v), Some(2));
        assert_eq!(h.period(1), Some((1_000, 2_050)));
        assert_eq!(h.period(2), Some((2_000, u64::MAX)));
        assert_eq!(h.period(3), None);
        assert!(!h.covers(3, &receipt(1, 2_000)));
    }
}
