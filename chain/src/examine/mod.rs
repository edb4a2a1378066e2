//! The pure checkers a watcher runs: [`examine`] decides whether a settlement is honest
//! given the batch behind it and, when it is not, builds the fraud proof the contract will
//! accept; its data entries are checked in [`data`], and weights paid outside the model's
//! datanet in [`outsider`]. They read the plain types only; the watcher fetches what they
//! need from the chain first.
//!
//! The checks mirror `Channels.sol` and `DataDisputes.sol` exactly; a proof built here for
//! a batch the contract calls honest is a bug (the dispute would revert with `NotFraud`).

mod data;
mod outsider;

use std::collections::BTreeMap;

use alloy::primitives::{B256, U256};
use attrinet_market::{ChannelId, ModelId, Receipt, SumNode, SumProof, SumTree, TermsHistory, Wei};

pub use outsider::{Registered, outsider};

use crate::error::{BatchError, ChainError, Result};
use crate::types::{Batch, FraudProof, Settlement, SumPreimage, Verdict};

/// Number of levels above the leaves of a tree of `n` leaves.
fn depth(mut n: u64) -> usize {
    let mut d = 0;
    while n > 1 {
        n = n.div_ceil(2);
        d += 1;
    }
    d
}

/// A batch that does not match its settlement: nothing can be proven from it.
fn bad(channel: ChannelId, reason: impl Into<String>) -> ChainError {
    BatchError::Inconsistent { channel, reason: reason.into() }.into()
}

/// Decides whether `s` is honest given the batch behind it and the terms histories of the
/// models it names, and builds the proof when it is not. An error means the batch does not
/// match the settlement (wrong root, missing receipts): nothing can be proven from it.
pub fn examine(s: &Settlement, batch: &Batch, terms: &BTreeMap<ModelId, TermsHistory>) -> Result<Verdict> {
    let id = s.channel;
    let digests: Vec<B256> = batch.receipts.iter().map(|r| r.receipt.digest()).collect();
    let tree = match &batch.tree {
        Some(t) => t.clone(),
        None => {
            SumTree::new(&batch.receipts.iter().zip(&digests).map(|(r, d)| (*d, r.receipt.value)).collect::<Vec<_>>())?
        }
    };
    if tree.root().hash != s.receipts_root {
        return Err(bad(id, format!("tree root {} is not the settled root {}", tree.root().hash, s.receipts_root)));
    }
    if tree.len() != batch.receipts.len() {
        return Err(bad(id, format!("{} leaves but {} receipts", tree.len(), batch.receipts.len())));
    }
    if tree.is_empty() {
        return Ok(Verdict::Unprovable("the settled root is that of an empty batch".into()));
    }
    for r in &batch.receipts {
        if let Err(e) = r.verify() {
            // The chain does not check ed25519, so a forged co-signature is not a fraud
            // class of the contract; it is reported, and the receipt is judged on its content.
            tracing::warn!(target: "chain::watcher", channel = %id, seq = %r.receipt.seq, %e, "receipt signature does not verify");
        }
    }

    // The value each leaf hashes: its receipt's, or, for a dishonest leaf, its recorded sum.
    let mut leaf_values = Vec::with_capacity(tree.len());
    for (i, (leaf, d)) in tree.levels()[0].iter().zip(&digests).enumerate() {
        let r = &batch.receipts[i].receipt;
        let v = if SumNode::leaf(d, r.value).hash == leaf.hash {
            r.value
        } else if SumNode::leaf(d, leaf.sum).hash == leaf.hash {
            leaf.sum
        } else {
            return Err(bad(id, format!("leaf {i} is not the leaf of receipt seq {}", r.seq)));
        };
        leaf_values.push(v);
    }

    // 1. Recorded sums. The highest inconsistent node first: the path above it is
    //    consistent, so its proof walks to the root. Until none is left, no leaf proof
    //    through such a node would verify, so this comes before everything else.
    let leaf = |j: usize| (digests[j], leaf_values[j]);
    if let Some((level, j, node, recorded)) = inconsistent(&tree, leaf) {
        let proof = tree.proof_at(level, j).expect("node exists");
        return Ok(Verdict::Fraud(Box::new(FraudProof::Sum { node, recorded, proof })));
    }

    let n = s.seq.0.checked_sub(s.batch_start.0).ok_or_else(|| bad(id, "seq before the batch start"))?;
    let c = tree.len() as u64;
    let leaf_proof = |i: usize| tree.proof(i).expect("index below the leaf count");

    // 2. Positions. With a leaf count other than n only leaf 0 can be placed, and its depth
    //    shows the count is wrong when the depths differ.
    if c != n {
        if c == 0 {
            return Ok(Verdict::Unprovable("empty batch for a non-empty settlement".into()));
        }
        let r = &batch.receipts[0].receipt;
        if seq_wrong(s, r, 0) || depth(c) != depth(n) {
            let proof = leaf_proof(0);
            return Ok(Verdict::Fraud(Box::new(FraudProof::Seq {
                receipt: r.clone(),
                leaf_value: leaf_values[0],
                proof,
            })));
        }
    } else {
        for (i, sr) in batch.receipts.iter().enumerate() {
            if seq_wrong(s, &sr.receipt, i as u64) {
                let proof = leaf_proof(i);
                let receipt = sr.receipt.clone();
                return Ok(Verdict::Fraud(Box::new(FraudProof::Seq { receipt, leaf_value: leaf_values[i], proof })));
            }
        }
    }

    // 3. Values at the receipts' own prices (membership only, so any leaf count will do);
    //    whether those are the model's prices is each run's business (step 5).
    for (i, sr) in batch.receipts.iter().enumerate() {
        let r = &sr.receipt;
        let value = r.price.contract_value(r.input_tokens, r.output_tokens);
        if leaf_values[i] != r.value || value != U256::from(r.value.0) {
            let proof = leaf_proof(i);
            return Ok(Verdict::Fraud(Box::new(FraudProof::Value {
                receipt: r.clone(),
                leaf_value: leaf_values[i],
                proof,
            })));
        }
    }

    // 4. The total: the root's sum must be the amount claimed.
    let (node, total) = root_preimage(&tree, leaf);
    if total != Some(s.amount.0) {
        // The root's sum is not recorded by any parent: the contract takes its preimage's.
        return Ok(Verdict::Fraud(Box::new(FraudProof::Sum { node, recorded: Wei::ZERO, proof: SumProof::of_root() })));
    }

    // 5. Payouts: each run's split by the terms version it names (settle refused any other),
    //    then (positional) its receipts' models, prices and times, and its sum.
    let history = |run: &attrinet_market::PayoutRun| terms.get(&run.model).ok_or(BatchError::UnknownModel(run.model));
    for (k, run) in s.payouts.iter().enumerate() {
        let value = run.value()?;
        let t = history(run)?
            .get(run.terms)
            .ok_or_else(|| bad(id, format!("run {k} names a terms version the model never had")))?;
        if run.parts != t.split.apply(value) {
            return Ok(Verdict::Fraud(Box::new(FraudProof::Split { payouts: s.payouts.clone(), run: k })));
        }
    }
    if c != n {
        return Ok(Verdict::Unprovable(format!(
            "batch has {c} leaves where the settlement covers {n} seqs, and leaf 0 cannot show it"
        )));
    }
    let mut start = 0usize;
    for (k, run) in s.payouts.iter().enumerate() {
        let end = start + run.leaves as usize;
        let h = history(run)?;
        for (i, sr) in batch.receipts.iter().enumerate().take(end).skip(start) {
            let r = &sr.receipt;
            if r.model != run.model || !h.covers(run.terms, r) {
                return Ok(Verdict::Fraud(Box::new(FraudProof::Attribution {
                    payouts: s.payouts.clone(),
                    run: k,
                    receipt: r.clone(),
                    leaf_value: leaf_values[i],
                    proof: leaf_proof(i),
                })));
            }
        }
        let sum = leaf_values[start..end].iter().try_fold(Wei::ZERO, |acc, v| acc.checked_add(*v))?;
        if sum != run.value()? {
            return Ok(Verdict::Fraud(Box::new(FraudProof::RunSum {
                payouts: s.payouts.clone(),
                run: k,
                first: (digests[start], leaf_values[start]),
                first_proof: leaf_proof(start),
                last: (digests[end - 1], leaf_values[end - 1]),
                last_proof: leaf_proof(end - 1),
            })));
        }
        start = end;
    }
    // 6. Data rewards: the runs' entries against the receipts' weights.
    data::examine_data(s, &batch.receipts, &tree, batch.weights.as_deref(), &batch.data)
}

fn seq_wrong(s: &Settlement, r: &Receipt, index: u64) -> bool {
    r.channel != s.channel
        || r.payer != s.payer
        || r.provider != s.provider
        || u128::from(r.seq.0) != u128::from(s.batch_start.0) + 1 + u128::from(index)
}

/// The root's preimage and the total it commits to (`None` when the sum overflows).
/// `leaf(j)` is leaf `j`'s preimage: (digest, value).
fn root_preimage(tree: &SumTree, leaf: impl Fn(usize) -> (B256, Wei)) -> (SumPreimage, Option<u128>) {
    let levels = tree.levels();
    let top = levels.len() - 1;
    if top == 0 {
        let (digest, value) = leaf(0);
        (SumPreimage::Leaf { digest, value }, Some(value.0))
    } else {
        let (l, r) = (levels[top - 1][0], levels[top - 1][1]);
        (SumPreimage::Inner { left: l, right: r }, l.sum.0.checked_add(r.sum.0))
    }
}

/// The highest node below the root whose recorded sum (what its parent hashes) is not the
/// sum its own preimage commits to: (level, index, preimage, recorded sum). The path above
/// it is consistent, so its proof walks to the root. `leaf(j)` is leaf `j`'s preimage.
fn inconsistent(tree: &SumTree, leaf: impl Fn(usize) -> (B256, Wei)) -> Option<(usize, usize, SumPreimage, Wei)> {
    let levels = tree.levels();
    let top = levels.len() - 1;
    for level in (0..top).rev() {
        for (j, node) in levels[level].iter().enumerate() {
            let (preimage, actual) = if level == 0 {
                let (digest, value) = leaf(j);
                (SumPreimage::Leaf { digest, value }, Some(value.0))
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
    use alloy::primitives::Address;
    use attrinet_market::{
        Domain, Identity, PayoutRun, Price, PublicKey, Seq, SignedReceipt, Split, TermsVersion, payout_runs,
    };

    use super::*;

    fn price() -> Price {
        Price { per_1k_input: Wei(1_000), per_1k_output: Wei(3_000) }
    }

    fn split() -> Split {
        Split::new(7_000, 2_000, 900, 100).unwrap()
    }

    fn model() -> ModelId {
        ModelId::from([7; 32])
    }

    fn receipts(n: usize) -> Vec<SignedReceipt> {
        let node = Identity::from_secrets([1; 32], [2; 32]).unwrap();
        let client = Identity::from_secrets([3; 32], [4; 32]).unwrap();
        let mut cumulative = Wei::ZERO;
        (0..n)
            .map(|i| {
                let value = price().value(100 + i as u32, 10).unwrap();
                cumulative = cumulative.checked_add(value).unwrap();
                Receipt {
                    domain: Domain { chain_id: 31337, verifying_contract: Address::repeat_byte(9) },
                    channel: ChannelId::from([5; 32]),
                    seq: Seq(1 + i as u64),
                    payer: client.address(),
                    provider: node.address(),
                    payer_key: PublicKey::from(&client.ed25519),
                    provider_key: PublicKey::from(&node.ed25519),
                    model: model(),
                    request_hash: B256::repeat_byte(i as u8),
                    response_hash: B256::ZERO,
                    input_tokens: 100 + i as u32,
                    output_tokens: 10,
                    price: price(),
                    value,
                    cumulative,
                    attribution_root: B256::ZERO,
                    timestamp: 1,
                }
                .propose(&node.ed25519)
                .cosign(&client.ed25519)
            })
            .collect()
    }

    fn settlement(rs: &[SignedReceipt], tree: &SumTree, payouts: Vec<PayoutRun>) -> Settlement {
        let last = &rs.last().unwrap().receipt;
        Settlement {
            channel: last.channel,
            payer: last.payer,
            provider: last.provider,
            seq: last.seq,
            cumulative: tree.root().sum,
            amount: tree.root().sum,
            receipts_root: tree.root().hash,
            batch_start: Seq::ZERO,
            deadline: 100,
            payouts,
        }
    }

    fn terms() -> BTreeMap<ModelId, TermsHistory> {
        let t =
            TermsHistory { versions: vec![TermsVersion { price: price(), split: split(), since: 0 }], grace: 3_600 };
        BTreeMap::from([(model(), t)])
    }

    fn leaves(rs: &[SignedReceipt]) -> Vec<(B256, Wei)> {
        rs.iter().map(|r| (r.receipt.digest(), r.receipt.value)).collect()
    }

    #[test]
    fn honest_batch_is_honest_and_each_tampering_is_caught_by_its_class() {
        let rs = receipts(7);
        let plain: Vec<_> = rs.iter().map(|r| r.receipt.clone()).collect();
        let tree = SumTree::new(&leaves(&rs)).unwrap();
        let payouts = payout_runs(&plain, None, |_| Ok((0, split()))).unwrap().0;
        let s = settlement(&rs, &tree, payouts.clone());
        let batch = Batch::new(rs.clone());
        assert_eq!(examine(&s, &batch, &terms()).unwrap(), Verdict::Honest);

        // Payouts one wei off the split.
        let mut off = payouts.clone();
        off[0].parts.owner.0 -= 1;
        off[0].parts.node.0 += 1;
        let v = examine(&settlement(&rs, &tree, off), &batch, &terms()).unwrap();
        assert!(matches!(v, Verdict::Fraud(ref p) if p.kind() == "split"), "{v:?}");

        // A recorded sum that lies (and a voucher claiming the inflated total).
        let l = leaves(&rs);
        let bad = SumTree::with_recorded_sum(&l, 1, 1, Wei(l[2].1.0 + l[3].1.0 + 1)).unwrap();
        let mut s2 = settlement(&rs, &bad, payouts.clone());
        s2.amount = bad.root().sum;
        let v = examine(&s2, &Batch { tree: Some(bad), ..Batch::new(rs.clone()) }, &terms()).unwrap();
        match v {
            Verdict::Fraud(p) => match *p {
                FraudProof::Sum { node: SumPreimage::Inner { left, right }, recorded, proof } => {
                    assert_eq!((left.sum, right.sum), (l[2].1, l[3].1));
                    assert_eq!(recorded.0, l[2].1.0 + l[3].1.0 + 1);
                    assert_eq!((proof.index, proof.leaf_count), (1, 4));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }

        // A total that is not the claimed amount.
        let mut s3 = s.clone();
        s3.amount = Wei(s.amount.0 + 1);
        let v = examine(&s3, &batch, &terms()).unwrap();
        assert!(matches!(v, Verdict::Fraud(ref p) if p.kind() == "sum"), "{v:?}");

        // A batch that is not behind the root is an error, not a verdict.
        let mut s4 = s.clone();
        s4.receipts_root = B256::repeat_byte(1);
        assert!(matches!(examine(&s4, &batch, &terms()), Err(ChainError::Batch(BatchError::Inconsistent { .. }))));
    }

    #[test]
    fn wrong_batch_start_is_proven_at_leaf_zero() {
        let rs = receipts(8);
        let plain: Vec<_> = rs.iter().map(|r| r.receipt.clone()).collect();
        let tree = SumTree::new(&leaves(&rs)).unwrap();
        let mut s = settlement(&rs, &tree, payout_runs(&plain[4..], None, |_| Ok((0, split()))).unwrap().0);
        // The chain says 1..=4 are settled; the root still covers 1..=8.
        s.batch_start = Seq(4);
        s.amount = Wei(s.cumulative.0 - plain[3].cumulative.0);
        match examine(&s, &Batch::new(rs), &terms()).unwrap() {
            Verdict::Fraud(p) => match *p {
                FraudProof::Seq { receipt, proof, .. } => {
                    assert_eq!((receipt.seq, proof.index, proof.leaf_count), (Seq(1), 0, 8));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}
