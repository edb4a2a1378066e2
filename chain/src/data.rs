//! Data rewards, off chain: the data entries a settlement commits to per payout run
//! (docs/protocol.md, "Attribution"), the trees over them, contributors' claims, and the
//! watcher's check of a settlement's entries against its receipts' weights, which builds the
//! proof `DataDisputes` accepts when they do not match. Pure, like `batch`.
//!
//! The checks mirror `DataDisputes.sol`; a proof built here for entries the contract calls
//! honest is a bug.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use alloy::primitives::{Address, B256};
use attrinet_market::{
    self as market, DataEntry, MerkleProof, MerkleTree, Receipt, SignedReceipt, Split, SumNode, SumProof, Wei, Weight,
    Weights, run_data_entries,
};

use crate::batch::{CommittedTree, FraudProof, PayoutRun, Settlement, SumPreimage, Verdict};
use crate::error::{ChainError, Result};

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

/// A leaf of a receipt's weights tree exactly as the tree holds it (a well-formed tree's
/// leaves all name its size; a malformed one's need not, which is what a dispute shows).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WeightLeaf {
    /// The contributor.
    pub contributor: Address,
    /// Its weight, in parts per million.
    pub ppm: u32,
    /// The tree size the leaf names.
    pub count: u32,
}

impl WeightLeaf {
    /// The leaves of well-formed weights.
    pub fn of(weights: &Weights) -> Vec<WeightLeaf> {
        let count = weights.len() as u32;
        weights.as_slice().iter().map(|w| WeightLeaf { contributor: w.contributor, ppm: w.ppm, count }).collect()
    }

    /// The leaf digest: keccak256(contributor ‖ uint32be(ppm) ‖ uint32be(count)).
    pub fn digest(&self) -> B256 {
        market::weight_digest(&Weight { contributor: self.contributor, ppm: self.ppm }, self.count)
    }
}

/// The plain Merkle root over weight leaves, as a receipt's `attributionRoot` commits them.
pub fn weights_root(leaves: &[WeightLeaf]) -> B256 {
    MerkleTree::new(&leaves.iter().map(WeightLeaf::digest).collect::<Vec<_>>()).root()
}

/// Leaves that are well-formed weights: each names the count, ascending, non-zero, whole.
fn well_formed(leaves: &[WeightLeaf]) -> Option<Weights> {
    if leaves.iter().any(|l| l.count as usize != leaves.len()) {
        return None;
    }
    Weights::new(leaves.iter().map(|l| Weight { contributor: l.contributor, ppm: l.ppm }).collect()).ok()
}

/// A run's data entries and the tree over them, as committed (sums possibly dishonest, for
/// tests and what a provider publishes).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommittedData {
    /// The entries, in tree order.
    pub entries: Vec<DataEntry>,
    /// The Merkle-sum tree over `(entry digest, amount)`.
    pub tree: CommittedTree,
}

impl CommittedData {
    /// The honest tree over `entries` (in the given order).
    pub fn honest(entries: Vec<DataEntry>) -> Result<CommittedData> {
        let leaves: Vec<_> = entries.iter().map(|e| (e.digest(), e.amount)).collect();
        Ok(CommittedData { tree: CommittedTree::honest(&leaves)?, entries })
    }

    /// What the payout run declares about these entries.
    pub fn commitment(&self) -> DataCommitment {
        let root = self.tree.root();
        DataCommitment { root: root.hash, entries: self.entries.len() as u64, distributed: root.sum }
    }

    /// What `contributor` is owed from these entries.
    pub fn total_of(&self, contributor: &Address) -> Result<Wei> {
        self.entries
            .iter()
            .filter(|e| e.contributor == *contributor)
            .try_fold(Wei::ZERO, |acc, e| Ok(acc.checked_add(e.amount)?))
    }

    /// The claim of `contributor`'s entries: its first and last entry with their paths
    /// (`Channels.claimData` sums what lies between from the paths' left sums). `None` when
    /// it has no entry here.
    pub fn claim(&self, contributor: &Address) -> Option<DataClaim> {
        let first = self.entries.iter().position(|e| e.contributor == *contributor)?;
        let last = self.entries.iter().rposition(|e| e.contributor == *contributor)?;
        let amount = self.entries[first..=last].iter().map(|e| e.amount.0).sum::<u128>();
        Some(DataClaim {
            first: self.entries[first],
            first_proof: self.tree.proof(0, first)?,
            last: self.entries[last],
            last_proof: self.tree.proof(0, last)?,
            amount: Wei(amount),
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

/// The honest payouts of a batch whose receipts carry attribution weights (`weights[i]`
/// for receipt `i`, which must be the weights its `attribution_root` commits to): the runs
/// of [`crate::payout_runs`], each with its data entries
/// ([`market::run_data_entries`], leaf indexes counted from the batch's first receipt)
/// and their commitment. Returns the runs and each run's entries, aligned.
pub fn attributed_payout_runs(
    receipts: &[Receipt],
    weights: &[Weights],
    mut split_of: impl FnMut(&market::ModelId) -> Option<Split>,
) -> Result<(Vec<PayoutRun>, Vec<CommittedData>)> {
    if weights.len() != receipts.len() {
        return Err(ChainError::WeightsMismatch {
            seq: receipts.get(weights.len()).map_or(market::Seq::ZERO, |r| r.seq),
        });
    }
    for (r, w) in receipts.iter().zip(weights) {
        if w.root() != r.attribution_root {
            return Err(ChainError::WeightsMismatch { seq: r.seq });
        }
    }
    let mut runs = Vec::new();
    let mut data = Vec::new();
    let mut start = 0usize;
    while start < receipts.len() {
        let model = receipts[start].model;
        let end = start + receipts[start..].iter().take_while(|r| r.model == model).count();
        let value = receipts[start..end].iter().try_fold(Wei::ZERO, |acc, r| acc.checked_add(r.value))?;
        let split = split_of(&model).ok_or(ChainError::UnknownModel(model.0))?;
        let parts = split.apply(value);
        let entries =
            run_data_entries((start..end).map(|i| (i as u64, receipts[i].value, &weights[i])), value, parts.data);
        let committed = CommittedData::honest(entries)?;
        let mut run = PayoutRun::new(model, (end - start) as u64, parts);
        if !committed.entries.is_empty() {
            run.data = committed.commitment();
        }
        runs.push(run);
        data.push(committed);
        start = end;
    }
    Ok((runs, data))
}

/// Each contributor's total over the runs' entries, ascending.
pub fn contributor_totals(data: &[CommittedData]) -> Result<Vec<(Address, Wei)>> {
    let mut totals: BTreeMap<Address, Wei> = BTreeMap::new();
    for d in data {
        for (c, amount) in market::contributor_totals(&d.entries).map_err(|_| market::MarketError::AmountOverflow)? {
            let t = totals.entry(c).or_default();
            *t = t.checked_add(amount)?;
        }
    }
    Ok(totals.into_iter().collect())
}

// ------------------------------------------------------------------ sources

/// Where a node or a watcher finds the attribution data behind receipts: the weights a
/// receipt's `attributionRoot` commits to (content-addressed by that root), and, for
/// recomputing weights against a datanet, the outputs (by `responseHash`). A node keeps
/// what it computed; a watcher gets them with the batch.
pub trait AttributionSource: Send + Sync {
    /// The weights whose root is `root`, if known.
    fn weights(&self, root: &B256) -> Result<Option<Weights>>;

    /// The output tokens whose hash is `response_hash`, if known.
    fn output(&self, response_hash: &B256) -> Result<Option<Vec<u32>>> {
        let _ = response_hash;
        Ok(None)
    }
}

impl std::fmt::Debug for dyn AttributionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttributionSource")
    }
}

/// Attribution data in memory (tests; a node's cache).
#[derive(Debug, Default)]
pub struct MemAttribution {
    weights: Mutex<HashMap<B256, Weights>>,
    outputs: Mutex<HashMap<B256, Vec<u32>>>,
}

impl MemAttribution {
    /// Keeps `weights` under their root, which it returns.
    pub fn insert_weights(&self, weights: Weights) -> B256 {
        let root = weights.root();
        self.weights.lock().unwrap_or_else(|p| p.into_inner()).insert(root, weights);
        root
    }

    /// Keeps an output under its response hash, which it returns.
    pub fn insert_output(&self, tokens: Vec<u32>) -> B256 {
        let hash = market::response_hash(&tokens);
        self.outputs.lock().unwrap_or_else(|p| p.into_inner()).insert(hash, tokens);
        hash
    }
}

impl AttributionSource for MemAttribution {
    fn weights(&self, root: &B256) -> Result<Option<Weights>> {
        Ok(self.weights.lock().unwrap_or_else(|p| p.into_inner()).get(root).cloned())
    }

    fn output(&self, response_hash: &B256) -> Result<Option<Vec<u32>>> {
        Ok(self.outputs.lock().unwrap_or_else(|p| p.into_inner()).get(response_hash).cloned())
    }
}

/// The weights of each receipt from `source` (none for a zero root); an error names the
/// first receipt whose weights it lacks.
pub fn weights_of(receipts: &[Receipt], source: &dyn AttributionSource) -> Result<Vec<Weights>> {
    receipts
        .iter()
        .map(|r| {
            if r.attribution_root == B256::ZERO {
                return Ok(Weights::none());
            }
            source.weights(&r.attribution_root)?.ok_or(ChainError::WeightsMismatch { seq: r.seq })
        })
        .collect()
}

// ------------------------------------------------------------------ the watcher's check

fn bad(channel: market::ChannelId, reason: impl Into<String>) -> ChainError {
    ChainError::BadBatch { channel, reason: reason.into() }
}

/// Checks the settlement's data entries against its receipts' weights, once everything
/// else in the batch is known honest (positions, values, runs: `receipts_tree` has exactly
/// one leaf per settled seq). `weights[i]` are receipt i's weight leaves (empty when its
/// root is zero); `data` holds the committed entries of runs by data root.
pub(crate) fn examine_data(
    s: &Settlement,
    receipts: &[SignedReceipt],
    receipts_tree: &CommittedTree,
    weights: Option<&[Vec<WeightLeaf>]>,
    data: &BTreeMap<B256, CommittedData>,
) -> Result<Verdict> {
    let id = s.channel;
    let attributed = receipts.iter().any(|r| r.receipt.attribution_root != B256::ZERO);
    let distributes = s.payouts.iter().any(|p| p.data.entries != 0);
    if !attributed && !distributes {
        return Ok(Verdict::Honest);
    }
    let Some(weights) = weights else {
        return Ok(Verdict::Unprovable(
            "the settlement involves attribution weights, but the receipt source has none".into(),
        ));
    };
    if weights.len() != receipts.len() {
        return Err(bad(id, format!("weights for {} of {} receipts", weights.len(), receipts.len())));
    }
    let receipt_proof = |i: usize| receipts_tree.proof(0, i).expect("index below the leaf count");

    // 1. Weights: they must be what each receipt commits to, and well-formed.
    let mut parsed: Vec<Weights> = Vec::with_capacity(receipts.len());
    for (i, (sr, leaves)) in receipts.iter().zip(weights).enumerate() {
        let r = &sr.receipt;
        if weights_root(leaves) != r.attribution_root {
            return Err(bad(id, format!("the weights given for seq {} are not its attributionRoot's", r.seq)));
        }
        match well_formed(leaves) {
            Some(w) => parsed.push(w),
            None => {
                return Ok(Verdict::Fraud(Box::new(FraudProof::Weights {
                    receipt: r.clone(),
                    leaf_value: r.value,
                    proof: receipt_proof(i),
                    weights: leaves.clone(),
                })));
            }
        }
    }

    // 2. Each run's entries.
    let mut start = 0usize;
    for (k, run) in s.payouts.iter().enumerate() {
        let end = start + run.leaves as usize;
        let expected = run_data_entries(
            (start..end).map(|i| (i as u64, receipts[i].receipt.value, &parsed[i])),
            run.value()?,
            run.parts.data,
        );
        if let Some(v) = examine_run(s, k, start..end, receipts, &parsed, &expected, data, &receipt_proof)? {
            return Ok(v);
        }
        start = end;
    }
    Ok(Verdict::Honest)
}

/// One run's entries; `None` when they are honest.
#[allow(clippy::too_many_arguments)]
fn examine_run(
    s: &Settlement,
    k: usize,
    range: std::ops::Range<usize>,
    receipts: &[SignedReceipt],
    weights: &[Weights],
    expected: &[DataEntry],
    data: &BTreeMap<B256, CommittedData>,
    receipt_proof: &dyn Fn(usize) -> SumProof,
) -> Result<Option<Verdict>> {
    let id = s.channel;
    let run = &s.payouts[k];
    let declared = run.data;
    let fraud = |p: FraudProof| Ok(Some(Verdict::Fraud(Box::new(p))));
    let weight_proof = |i: usize, j: usize| -> (WeightLeaf, MerkleProof) {
        let leaves = WeightLeaf::of(&weights[i]);
        let tree = MerkleTree::new(&leaves.iter().map(WeightLeaf::digest).collect::<Vec<_>>());
        (leaves[j], tree.proof(j).expect("weight index in range"))
    };
    let missing =
        |x: &DataEntry, gap: u64, below: Option<(DataEntry, SumProof)>, above: Option<(DataEntry, SumProof)>| {
            let i = x.leaf as usize;
            let (weight, weight_proof) = weight_proof(i, x.weight_index as usize);
            FraudProof::DataMissing {
                payouts: s.payouts.clone(),
                run: k,
                receipt: receipts[i].receipt.clone(),
                leaf_value: receipts[i].receipt.value,
                receipt_proof: receipt_proof(i),
                weight,
                weight_proof,
                gap,
                below,
                above,
            }
        };

    if declared.entries == 0 {
        // Settle refuses a root or a total without entries, so only omissions remain.
        return match expected.first() {
            Some(x) => fraud(missing(x, 0, None, None)),
            None => Ok(None),
        };
    }
    let Some(committed) = data.get(&declared.root) else {
        let honest = CommittedData::honest(expected.to_vec())?;
        if honest.commitment() == declared {
            return Ok(None);
        }
        return Ok(Some(Verdict::Unprovable(format!(
            "run {k}'s data entries are not the honest ones, and the source does not have the committed ones"
        ))));
    };
    let tree = &committed.tree;
    if tree.root().hash != declared.root {
        return Err(bad(id, format!("run {k}'s data tree does not hash to its declared root")));
    }
    if committed.entries.len() != tree.len() {
        return Err(bad(
            id,
            format!("run {k}: {} entries for a tree of {} leaves", committed.entries.len(), tree.len()),
        ));
    }
    for (j, (e, leaf)) in committed.entries.iter().zip(&tree.levels()[0]).enumerate() {
        if SumNode::leaf(&e.digest(), e.amount).hash != leaf.hash {
            return Err(bad(id, format!("run {k}: entry {j} is not the preimage of its leaf")));
        }
    }
    let node = |level: usize, node: SumPreimage, recorded: Wei, proof: SumProof| FraudProof::DataNode {
        payouts: s.payouts.clone(),
        run: k,
        level: level as u64,
        node,
        recorded,
        proof,
    };

    // a. The tree's shape must be the one its declared count gives, b. its sums must add
    //    up, c. its total must be what the run distributes.
    if let Some((level, preimage, recorded, proof)) = shape_mismatch(tree, committed, declared.entries) {
        return fraud(node(level, preimage, recorded, proof));
    }
    if let Some((level, index, preimage, recorded)) = inconsistent(tree, committed) {
        let proof = tree.proof(level, index).expect("node exists");
        return fraud(node(level, preimage, recorded, proof));
    }
    let levels = tree.levels();
    let top = levels.len() - 1;
    let (root_preimage, total) = if top == 0 {
        let e = committed.entries[0];
        (SumPreimage::Leaf { digest: e.digest(), value: e.amount }, Some(e.amount.0))
    } else {
        let (l, r) = (levels[top - 1][0], levels[top - 1][1]);
        (SumPreimage::Inner { left: l, right: r }, l.sum.0.checked_add(r.sum.0))
    };
    if total != Some(declared.distributed.0) {
        let proof = SumProof { index: 0, leaf_count: 1, siblings: Vec::new() };
        return fraud(node(top, root_preimage, Wei::ZERO, proof));
    }

    // d. Order.
    let entry_proof = |j: usize| tree.proof(0, j).expect("entry index in range");
    for j in 1..committed.entries.len() {
        let (a, b) = (committed.entries[j - 1], committed.entries[j]);
        if a.key() >= b.key() {
            return fraud(FraudProof::DataOrder {
                payouts: s.payouts.clone(),
                run: k,
                a,
                a_proof: entry_proof(j - 1),
                b,
                b_proof: entry_proof(j),
            });
        }
    }

    // e. Every entry owed, at its amount.
    for (j, e) in committed.entries.iter().enumerate() {
        let entry_fraud = |receipt: usize, weight: (WeightLeaf, MerkleProof)| FraudProof::DataEntry {
            payouts: s.payouts.clone(),
            run: k,
            entry: *e,
            entry_proof: entry_proof(j),
            receipt: receipts[receipt].receipt.clone(),
            leaf_value: receipts[receipt].receipt.value,
            receipt_proof: receipt_proof(receipt),
            weight: weight.0,
            weight_proof: weight.1,
        };
        let i = e.leaf as usize;
        // Evidence the contract ignores where it is not needed still has to decode.
        let none = || (WeightLeaf { contributor: Address::ZERO, ppm: 0, count: 0 }, empty_plain_proof());
        if !range.contains(&i) {
            return fraud(entry_fraud(range.start, none()));
        }
        let w = &weights[i];
        if w.is_empty() {
            return fraud(entry_fraud(i, none()));
        }
        if e.weight_index as usize >= w.len() {
            return fraud(entry_fraud(i, weight_proof(i, 0)));
        }
        let owed = expected.binary_search_by_key(&e.key(), DataEntry::key).is_ok_and(|p| expected[p] == *e);
        if !owed {
            return fraud(entry_fraud(i, weight_proof(i, e.weight_index as usize)));
        }
    }

    // f. Nothing owed left out. Entries are sorted and each is expected, so one missing
    //    key is the first expected entry the committed ones lack.
    for x in expected {
        let gap = committed.entries.partition_point(|e| e.key() < x.key());
        if committed.entries.get(gap).is_some_and(|e| e.key() == x.key()) {
            continue;
        }
        let below = gap.checked_sub(1).map(|g| (committed.entries[g], entry_proof(g)));
        let above = committed.entries.get(gap).map(|e| (*e, entry_proof(gap)));
        return fraud(missing(x, gap as u64, below, above));
    }
    Ok(None)
}

pub(crate) fn empty_plain_proof() -> MerkleProof {
    MerkleProof { index: 0, leaf_count: 0, siblings: Vec::new() }
}

/// The sizes of a tree's levels for `count` leaves, leaves first.
fn level_sizes(count: u64) -> Vec<u64> {
    let mut sizes = vec![count];
    while *sizes.last().expect("non-empty") > 1 {
        let next = sizes.last().expect("non-empty").div_ceil(2);
        sizes.push(next);
    }
    sizes
}

/// Follows promotions down: the real node a position stands for (a promoted node is its
/// child, unchanged).
fn resolve(sizes: &[u64], mut level: usize, mut index: u64) -> (usize, u64) {
    while level > 0 && 2 * index + 1 >= sizes[level - 1] {
        level -= 1;
        index *= 2;
    }
    (level, index)
}

/// A node whose kind (entry or inner node) differs between the tree as built and the shape
/// its declared entry count gives, with its preimage, recorded sum and path under the
/// declared shape. Walks both shapes from the root; while kinds agree the hashes agree,
/// so the first disagreement has a path that verifies.
fn shape_mismatch(
    tree: &CommittedTree,
    committed: &CommittedData,
    declared: u64,
) -> Option<(usize, SumPreimage, Wei, SumProof)> {
    let declared_sizes = level_sizes(declared);
    let actual_sizes: Vec<u64> = tree.levels().iter().map(|l| l.len() as u64).collect();
    let levels = tree.levels();
    // (declared level, index, actual level, index, siblings from the root down)
    let mut stack = vec![(declared_sizes.len() - 1, 0u64, actual_sizes.len() - 1, 0u64, Vec::<SumNode>::new())];
    while let Some((dl, dj, al, ai, path)) = stack.pop() {
        let (dl, dj) = resolve(&declared_sizes, dl, dj);
        let (al, ai) = resolve(&actual_sizes, al, ai);
        let node = levels[al][ai as usize];
        if (dl == 0) != (al == 0) {
            let preimage = if al == 0 {
                let e = committed.entries[ai as usize];
                SumPreimage::Leaf { digest: e.digest(), value: e.amount }
            } else {
                let below = &levels[al - 1];
                SumPreimage::Inner { left: below[2 * ai as usize], right: below[2 * ai as usize + 1] }
            };
            let siblings = path.into_iter().rev().collect();
            let proof = SumProof { index: dj, leaf_count: declared_sizes[dl], siblings };
            return Some((dl, preimage, node.sum, proof));
        }
        if dl == 0 {
            continue;
        }
        let below = &levels[al - 1];
        let (left, right) = (below[2 * ai as usize], below[2 * ai as usize + 1]);
        let mut to_left = path.clone();
        to_left.push(right);
        let mut to_right = path;
        to_right.push(left);
        // Right pushed first so the left subtree is searched first: any mismatch will do,
        // the leftmost is just the deterministic choice.
        stack.push((dl - 1, 2 * dj + 1, al - 1, 2 * ai + 1, to_right));
        stack.push((dl - 1, 2 * dj, al - 1, 2 * ai, to_left));
    }
    None
}

/// The highest node below the root whose recorded sum is not the sum its hash commits to:
/// (level, index, preimage, recorded sum).
fn inconsistent(tree: &CommittedTree, committed: &CommittedData) -> Option<(usize, usize, SumPreimage, Wei)> {
    let levels = tree.levels();
    let top = levels.len() - 1;
    for level in (0..top).rev() {
        for (j, node) in levels[level].iter().enumerate() {
            let (preimage, actual) = if level == 0 {
                let e = committed.entries[j];
                (SumPreimage::Leaf { digest: e.digest(), value: e.amount }, Some(e.amount.0))
            } else {
                let below = &levels[level - 1];
                match (below.get(2 * j), below.get(2 * j + 1)) {
                    (Some(l), Some(r)) => (SumPreimage::Inner { left: *l, right: *r }, l.sum.0.checked_add(r.sum.0)),
                    // Promoted: the same node one level down, checked there.
                    _ => continue,
                }
            };
            if actual != Some(node.sum.0) {
                return Some((level, j, preimage, node.sum));
            }
        }
    }
    None
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
    fn a_tree_of_another_size_than_declared_is_found_with_a_verifying_path() {
        let entries: Vec<_> = (0..5).map(|i| entry(1, i, 10 + i as u128)).collect();
        let d = CommittedData::honest(entries).unwrap();
        assert!(shape_mismatch(&d.tree, &d, 5).is_none(), "the honest shape");
        for declared in [1u64, 2, 3, 4, 6, 7, 8, 9, 16] {
            let (level, preimage, recorded, proof) =
                shape_mismatch(&d.tree, &d, declared).unwrap_or_else(|| panic!("declared {declared}"));
            // The path must lead to the root under the declared shape, as the contract walks it.
            let node = match preimage {
                SumPreimage::Leaf { digest, value } => SumNode::leaf(&digest, value),
                SumPreimage::Inner { left, right } => SumNode::parent(&left, &right).unwrap(),
            };
            let start = SumNode { hash: node.hash, sum: if proof.leaf_count == 1 { node.sum } else { recorded } };
            let sizes = level_sizes(declared);
            assert_eq!(proof.leaf_count, sizes[level]);
            let mut h = start;
            let (mut i, mut n) = (proof.index, proof.leaf_count);
            let mut sib = proof.siblings.iter();
            while n > 1 {
                if i % 2 == 1 || i != n - 1 {
                    let s = sib.next().unwrap();
                    h = if i % 2 == 0 { SumNode::parent(&h, s).unwrap() } else { SumNode::parent(s, &h).unwrap() };
                }
                i /= 2;
                n = n.div_ceil(2);
            }
            assert!(sib.next().is_none());
            assert_eq!(h.hash, d.tree.root().hash, "declared {declared}");
            // And the kind differs from the declared one there.
            let declared_leaf = level == 0;
            assert_ne!(declared_leaf, matches!(preimage, SumPreimage::Leaf { .. }), "declared {declared}");
        }
    }
}
