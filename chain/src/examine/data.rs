//! The check of a settlement's data entries against its receipts' weights (docs/protocol.md,
//! "Attribution"), which builds the proof `DataDisputes` accepts when they do not match.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256};
use attrinet_market::{
    CommittedData, DataEntry, MerkleProof, MerkleTree, SignedReceipt, SumNode, SumProof, SumTree, Wei, Weights,
    run_data_entries,
};

use super::bad;
use crate::error::Result;
use crate::types::{FraudProof, Settlement, SumPreimage, Verdict, WeightLeaf, weights_root, well_formed};

/// Checks the settlement's data entries against its receipts' weights, once everything
/// else in the batch is known honest (positions, values, runs: `receipts_tree` has exactly
/// one leaf per settled seq). `weights[i]` are receipt i's weight leaves (empty when its
/// root is zero); `data` holds the committed entries of runs by data root.
pub(super) fn examine_data(
    s: &Settlement,
    receipts: &[SignedReceipt],
    receipts_tree: &SumTree,
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
    let receipt_proof = |i: usize| receipts_tree.proof(i).expect("index below the leaf count");

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
    let entry_leaf = |j: usize| {
        let e = committed.entries[j];
        (e.digest(), e.amount)
    };
    if let Some((level, index, preimage, recorded)) = super::inconsistent(tree, entry_leaf) {
        let proof = tree.proof_at(level, index).expect("node exists");
        return fraud(node(level, preimage, recorded, proof));
    }
    let (root_preimage, total) = super::root_preimage(tree, entry_leaf);
    if total != Some(declared.distributed.0) {
        let top = tree.levels().len() - 1;
        return fraud(node(top, root_preimage, Wei::ZERO, SumProof::of_root()));
    }

    // d. Order.
    let entry_proof = |j: usize| tree.proof(j).expect("entry index in range");
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
        let none = || (WeightLeaf { contributor: Address::ZERO, ppm: 0, count: 0 }, MerkleProof::empty());
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
    tree: &SumTree,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(c: u8, leaf: u64, amount: u128) -> DataEntry {
        DataEntry { contributor: Address::repeat_byte(c), leaf, weight_index: 0, amount: Wei(amount) }
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
