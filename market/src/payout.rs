//! What a settlement pays, run by run: the payout runs a provider declares for a batch
//! (docs/protocol.md, "Settlement"), the data entries each run commits to and the claims a
//! contributor makes against them, and the credits a finalized run makes to each role.
//!
//! The contracts check these rules (`Channels.sol`, `DataDisputes.sol`); the node builds
//! them with [`payout_runs`], the watcher recomputes them the same way, and `attrinet
//! earnings` and the devnet read credits through [`PayoutRun::credits`]. One function each,
//! so that what is sent, checked and reported can never drift apart.

use std::collections::BTreeMap;

use alloy_primitives::{Address, B256};

use crate::attribution::{DataEntry, Weights, run_data_entries};
use crate::error::MarketError;
use crate::merkle::{SumProof, SumTree};
use crate::receipt::Receipt;
use crate::split::{Payout, Split};
use crate::types::{ModelId, Seq, Wei};

/// Why the honest payouts of a batch could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum PayoutError {
    /// A receipt's weights are missing or are not the ones its `attributionRoot` commits to
    /// (without weights, any receipt that commits to some).
    #[error("the weights of receipt {seq} are missing or do not match its attributionRoot")]
    WeightsMismatch {
        /// The receipt's seq.
        seq: Seq,
    },
    /// Weights were given for another number of receipts than the batch holds.
    #[error("weights given for {weights} receipts, but the batch holds {receipts}")]
    WeightsCount {
        /// Receipts in the batch.
        receipts: usize,
        /// Weights given.
        weights: usize,
    },
    /// A receipt names a model whose split is not known (not registered).
    #[error("model {0} is not registered: its split is unknown")]
    UnknownModel(ModelId),
    /// No version of its model's terms covers a receipt: it was made at prices the model
    /// no longer had, past the grace after the update (see `TermsHistory::version_for`).
    /// A settlement holding it would be provable fraud.
    #[error("receipt {seq} was made at prices no version of model {model}'s terms covers at its time")]
    NoTerms {
        /// The receipt's seq.
        seq: Seq,
        /// Its model.
        model: ModelId,
    },
    /// An amount overflowed.
    #[error(transparent)]
    Amount(#[from] MarketError),
}

/// What a payout run commits to about its data entries (the `dataRoot`, `dataEntries` and
/// `distributed` fields of the contract's `Payout`). All zero when the run distributes
/// nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct DataCommitment {
    /// Root hash of the Merkle-sum tree over the entries.
    pub root: B256,
    /// Number of entries: it fixes the tree's shape.
    pub entries: u64,
    /// Their total: paid to contributors as they claim; the rest of the run's data share
    /// goes to the model's data pool at finalize.
    pub distributed: Wei,
}

/// One run of consecutive receipts of one model, made under one version of its terms, in a
/// batch, with the run's value split into its four shares and what of its data share goes
/// to contributors. A batch's payouts are its runs, in order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PayoutRun {
    /// The model of every receipt in the run.
    pub model: ModelId,
    /// How many receipts (leaves) the run covers.
    pub leaves: u64,
    /// The run's value, split.
    pub parts: Payout,
    /// The run's data entries; all zero when its receipts carry no weights.
    pub data: DataCommitment,
    /// The version of the model's terms its receipts were made under: disputes judge its
    /// split, and its receipts' prices and times, by that version alone.
    pub terms: u32,
}

/// The four roles a finalized run credits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Role {
    /// The node that served.
    Node,
    /// The model's owner.
    Owner,
    /// The model's data pool: the data share no contributor's entry claims.
    DataPool,
    /// The protocol's treasury.
    Protocol,
}

impl Role {
    /// The role's name as people read it.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Owner => "model owner",
            Role::DataPool => "data pool",
            Role::Protocol => "protocol",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who a run's shares go to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Beneficiaries {
    /// The provider that settled.
    pub node: Address,
    /// The model's owner when the settlement finalized.
    pub owner: Address,
    /// The model's data pool when the settlement finalized.
    pub data_pool: Address,
    /// The protocol's treasury.
    pub protocol: Address,
}

impl PayoutRun {
    /// A run under the model's first terms that distributes nothing to contributors (its
    /// whole data share goes to the model's data pool).
    pub fn new(model: ModelId, leaves: u64, parts: Payout) -> PayoutRun {
        PayoutRun { model, leaves, parts, data: DataCommitment::default(), terms: 0 }
    }

    /// The same run under terms version `version`.
    pub fn under(self, version: u32) -> PayoutRun {
        PayoutRun { terms: version, ..self }
    }

    /// The run's value: the sum of its parts.
    pub fn value(&self) -> Result<Wei, MarketError> {
        self.parts.total()
    }

    /// What `Channels.finalize` credits for this run, role by role: the node, owner and
    /// protocol shares whole, and to the data pool (the owner when there is none) what the
    /// run's entries do not distribute (contributors claim theirs separately). An error
    /// when the run distributes more than its data share, which `settle` refuses.
    pub fn credits(&self, to: &Beneficiaries) -> Result<[(Role, Address, Wei); 4], MarketError> {
        let undistributed = self.parts.data.checked_sub(self.data.distributed)?;
        // Without a pool (cleared after the run's terms were replaced) the owner gets it.
        let pool = if to.data_pool == Address::ZERO { to.owner } else { to.data_pool };
        Ok([
            (Role::Node, to.node, self.parts.node),
            (Role::Owner, to.owner, self.parts.owner),
            (Role::DataPool, pool, undistributed),
            (Role::Protocol, to.protocol, self.parts.protocol),
        ])
    }
}

/// Share-wise totals of payout runs.
pub fn payout_totals(runs: &[PayoutRun]) -> Result<Payout, MarketError> {
    runs.iter().try_fold(Payout::default(), |acc, r| acc.checked_add(&r.parts))
}

/// The honest payouts of a batch: consecutive receipts of one model made under one version
/// of its terms form a run, each run's total value is split by that version's split
/// (`terms_of` gives a receipt's version and split: `TermsHistory::version_for` on the
/// chain's history, or an error such as [`PayoutError::NoTerms`]), and the run's data
/// share is divided into entries by its receipts' weights ([`run_data_entries`], leaf
/// indexes counted from the batch's first receipt). `weights[i]` are receipt `i`'s, which
/// must be the ones its `attribution_root` commits to; `None` for a batch without weights,
/// where a receipt that commits to some is an error (its contributors would be owed
/// entries nobody can make). Returns the runs and each run's entries, aligned.
pub fn payout_runs(
    receipts: &[Receipt],
    weights: Option<&[Weights]>,
    mut terms_of: impl FnMut(&Receipt) -> Result<(u32, Split), PayoutError>,
) -> Result<(Vec<PayoutRun>, Vec<CommittedData>), PayoutError> {
    if let Some(w) = weights
        && w.len() != receipts.len()
    {
        return Err(PayoutError::WeightsCount { receipts: receipts.len(), weights: w.len() });
    }
    let none = Weights::none();
    let weight = |i: usize| weights.map_or(&none, |w| &w[i]);
    // Checked before anything is computed: weights that are not the committed ones would
    // make entries the contract refuses.
    for (i, r) in receipts.iter().enumerate() {
        if weight(i).root() != r.attribution_root {
            return Err(PayoutError::WeightsMismatch { seq: r.seq });
        }
    }
    let terms = receipts.iter().map(&mut terms_of).collect::<Result<Vec<_>, _>>()?;
    let mut runs = Vec::new();
    let mut data = Vec::new();
    let mut start = 0usize;
    let keyed: Vec<_> = receipts.iter().zip(&terms).collect();
    for run in keyed.chunk_by(|(a, ta), (b, tb)| a.model == b.model && ta.0 == tb.0) {
        let (first, &(version, split)) = run[0];
        let model = first.model;
        // The runs tile the batch: start + run.len() ≤ receipts.len().
        #[allow(clippy::arithmetic_side_effects)]
        let leaves = start..start + run.len();
        let value = run.iter().try_fold(Wei::ZERO, |acc, (r, _)| acc.checked_add(r.value))?;
        let parts = split.apply(value);
        let entries =
            run_data_entries(leaves.clone().map(|i| (i as u64, receipts[i].value, weight(i))), value, parts.data);
        let committed = CommittedData::honest(entries)?;
        let mut payout = PayoutRun::new(model, run.len() as u64, parts).under(version);
        if !committed.entries.is_empty() {
            payout.data = committed.commitment();
        }
        runs.push(payout);
        data.push(committed);
        start = leaves.end;
    }
    Ok((runs, data))
}

/// A run's data entries and the tree over them, as committed (sums possibly dishonest, for
/// tests and what a provider publishes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommittedData {
    /// The entries, in tree order.
    pub entries: Vec<DataEntry>,
    /// The Merkle-sum tree over `(entry digest, amount)`.
    pub tree: SumTree,
}

impl CommittedData {
    /// The honest tree over `entries` (in the given order).
    pub fn honest(entries: Vec<DataEntry>) -> Result<CommittedData, MarketError> {
        let leaves: Vec<_> = entries.iter().map(|e| (e.digest(), e.amount)).collect();
        Ok(CommittedData { tree: SumTree::new(&leaves)?, entries })
    }

    /// What the payout run declares about these entries.
    pub fn commitment(&self) -> DataCommitment {
        let root = self.tree.root();
        DataCommitment { root: root.hash, entries: self.entries.len() as u64, distributed: root.sum }
    }

    /// What `contributor` is owed from these entries.
    pub fn total_of(&self, contributor: &Address) -> Result<Wei, MarketError> {
        self.entries
            .iter()
            .filter(|e| e.contributor == *contributor)
            .try_fold(Wei::ZERO, |acc, e| acc.checked_add(e.amount))
    }

    /// The claim of `contributor`'s entries: its first and last entry with their paths
    /// (`Channels.claimData` sums what lies between from the paths' left sums, so the claim
    /// pays every entry between them, which in an honest tree are all the contributor's).
    /// `None` when it has no entry here, or when the amount overflows.
    pub fn claim(&self, contributor: &Address) -> Option<DataClaim> {
        let first = self.entries.iter().position(|e| e.contributor == *contributor)?;
        let last = self.entries.iter().rposition(|e| e.contributor == *contributor)?;
        let amount = self.entries[first..=last].iter().try_fold(Wei::ZERO, |acc, e| acc.checked_add(e.amount)).ok()?;
        Some(DataClaim {
            first: self.entries[first],
            first_proof: self.tree.proof(first)?,
            last: self.entries[last],
            last_proof: self.tree.proof(last)?,
            amount,
        })
    }
}

/// A contributor's claim of its entries of one run.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DataClaim {
    /// Its first entry.
    pub first: DataEntry,
    /// Its path.
    pub first_proof: SumProof,
    /// Its last entry.
    pub last: DataEntry,
    /// Its path.
    pub last_proof: SumProof,
    /// What the claim pays.
    pub amount: Wei,
}

/// Each contributor's total over `entries` (of one run or many), ascending by contributor.
pub fn contributor_totals<'a>(
    entries: impl IntoIterator<Item = &'a DataEntry>,
) -> Result<Vec<(Address, Wei)>, MarketError> {
    let mut totals: BTreeMap<Address, Wei> = BTreeMap::new();
    for e in entries {
        let t = totals.entry(e.contributor).or_default();
        *t = t.checked_add(e.amount)?;
    }
    Ok(totals.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(c: u8, leaf: u64, amount: u128) -> DataEntry {
        DataEntry { contributor: Address::repeat_byte(c), leaf, weight_index: 0, amount: Wei(amount) }
    }

    #[test]
    fn claims_sum_exactly_each_contributors_range() {
        let d = CommittedData::honest(vec![
            entry(1, 0, 5),
            entry(1, 3, 7),
            entry(2, 0, 11),
            entry(3, 1, 13),
            entry(3, 2, 17),
            entry(3, 4, 19),
        ])
        .unwrap();
        for (c, total) in [(1u8, 12u128), (2, 11), (3, 49)] {
            let claim = d.claim(&Address::repeat_byte(c)).unwrap();
            assert_eq!(claim.amount, Wei(total));
            assert_eq!(d.total_of(&Address::repeat_byte(c)).unwrap(), Wei(total));
            // The contract's arithmetic: left sums from the two proofs.
            let root = d.tree.root();
            let left = |p: &SumProof| {
                let mut i = p.index;
                let mut n = p.leaf_count;
                let mut left = 0u128;
                let mut sib = p.siblings.iter();
                while n > 1 {
                    if i % 2 == 1 || i != n - 1 {
                        let s = sib.next().unwrap();
                        if i % 2 == 1 {
                            left += s.sum.0;
                        }
                    }
                    i /= 2;
                    n = n.div_ceil(2);
                }
                left
            };
            claim.first_proof.verify(&claim.first.digest(), claim.first.amount, &root).unwrap();
            claim.last_proof.verify(&claim.last.digest(), claim.last.amount, &root).unwrap();
            assert_eq!(left(&claim.last_proof) + claim.last.amount.0 - left(&claim.first_proof), total);
        }
        assert!(d.claim(&Address::repeat_byte(9)).is_none());
        assert_eq!(d.commitment().distributed, Wei(72));
    }

    #[test]
    fn credits_give_the_pool_what_the_entries_do_not_distribute() {
        let parts = Payout { node: Wei(70), owner: Wei(20), data: Wei(9), protocol: Wei(1) };
        let mut run = PayoutRun::new(ModelId::from([1; 32]), 3, parts);
        run.data.distributed = Wei(4);
        let to = Beneficiaries {
            node: Address::repeat_byte(1),
            owner: Address::repeat_byte(2),
            data_pool: Address::repeat_byte(3),
            protocol: Address::repeat_byte(4),
        };
        let credits = run.credits(&to).unwrap();
        assert_eq!(credits.map(|c| c.2), [Wei(70), Wei(20), Wei(5), Wei(1)]);
        assert_eq!(credits.map(|c| c.1), [to.node, to.owner, to.data_pool, to.protocol]);
        // Credits plus what contributors claim are the run's value, exactly.
        let credited = credits.iter().try_fold(Wei::ZERO, |a, c| a.checked_add(c.2)).unwrap();
        assert_eq!(credited.checked_add(run.data.distributed).unwrap(), run.value().unwrap());
        run.data.distributed = Wei(10);
        assert!(run.credits(&to).is_err(), "distributing more than the data share");
    }
}
