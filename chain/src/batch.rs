//! Settlement batches, off chain: the payout runs a provider declares, the Merkle-sum tree
//! a voucher commits to (every level kept, so that proofs can be made for any node), and
//! [`examine`], which decides whether a settlement is honest and, when it is not, builds
//! the fraud proof the contract will accept. Pure: the watcher fetches what it needs from
//! the chain first.
//!
//! The checks mirror `Channels.sol` exactly; a proof that this module builds for a batch
//! the contract would call honest is a bug (the dispute would revert with `NotFraud`).

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, U256};
use attrinet_market::{
    self as market, ChannelId, ModelId, Receipt, Seq, SignedReceipt, Split, SumNode, SumProof, Wei, Weights,
};

use crate::bindings::Channels;
use crate::client::ModelTerms;
use crate::data::{CommittedData, DataCommitment, WeightLeaf, examine_data};
use crate::error::{ChainError, Result};

/// One run of consecutive receipts of one model in a batch, with the run's value split
/// into its four shares and what of its data share goes to contributors. A batch's payouts
/// are its runs, in order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PayoutRun {
    /// The model of every receipt in the run.
    pub model: ModelId,
    /// How many receipts (leaves) the run covers.
    pub leaves: u64,
    /// The run's value, split.
    pub parts: market::Payout,
    /// The run's data entries; all zero when its receipts carry no weights.
    pub data: DataCommitment,
}

impl PayoutRun {
    /// A run that distributes nothing to contributors (its whole data share goes to the
    /// model's data pool).
    pub fn new(model: ModelId, leaves: u64, parts: market::Payout) -> PayoutRun {
        PayoutRun { model, leaves, parts, data: DataCommitment::default() }
    }

    /// The run's value: the sum of its parts.
    pub fn value(&self) -> Result<Wei> {
        Ok(self.parts.total()?)
    }

    pub(crate) fn abi(&self) -> Channels::Payout {
        Channels::Payout {
            model: self.model.0,
            leaves: self.leaves,
            node: self.parts.node.0,
            owner: self.parts.owner.0,
            data: self.parts.data.0,
            protocol: self.parts.protocol.0,
            dataRoot: self.data.root,
            dataEntries: self.data.entries,
            distributed: self.data.distributed.0,
        }
    }

    pub(crate) fn from_abi(p: &Channels::Payout) -> Result<PayoutRun> {
        Ok(PayoutRun {
            model: ModelId(p.model),
            leaves: p.leaves,
            parts: market::Payout {
                node: Wei(p.node),
                owner: Wei(p.owner),
                data: Wei(p.data),
                protocol: Wei(p.protocol),
            },
            data: DataCommitment { root: p.dataRoot, entries: p.dataEntries, distributed: Wei(p.distributed) },
        })
    }
}

/// The honest payouts of a batch without attribution weights: consecutive receipts of one
/// model form a run, and each run's total value is split by the model's registered split
/// (`split_of`); the data shares go to the models' data pools. A receipt that commits to
/// weights is an error ([`ChainError::WeightsMismatch`]): its contributors are owed entries,
/// which [`crate::attributed_payout_runs`] makes.
pub fn payout_runs(
    receipts: &[Receipt],
    mut split_of: impl FnMut(&ModelId) -> Option<Split>,
) -> Result<Vec<PayoutRun>> {
    if let Some(r) = receipts.iter().find(|r| r.attribution_root != B256::ZERO) {
        return Err(ChainError::WeightsMismatch { seq: r.seq });
    }
    let mut runs: Vec<(ModelId, u64, Wei)> = Vec::new();
    for r in receipts {
        match runs.last_mut() {
            Some((model, leaves, value)) if *model == r.model => {
                *leaves += 1;
                *value = value.checked_add(r.value)?;
            }
            _ => runs.push((r.model, 1, r.value)),
        }
    }
    runs.into_iter()
        .map(|(model, leaves, value)| {
            let split = split_of(&model).ok_or(ChainError::UnknownModel(model.0))?;
            Ok(PayoutRun::new(model, leaves, split.apply(value)))
        })
        .collect()
}

/// Share-wise totals of payout runs.
pub fn payout_totals(runs: &[PayoutRun]) -> Result<market::Payout> {
    runs.iter().try_fold(market::Payout::default(), |acc, r| Ok(acc.checked_add(&r.parts)?))
}

/// The Merkle-sum tree a voucher commits to, with every level kept. Built honestly from
/// leaves, or taken as published (then possibly inconsistent, which is what
/// [`examine`] looks for).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommittedTree {
    levels: Vec<Vec<SumNode>>,
}

impl CommittedTree {
    /// The tree of docs/protocol.md over `(receipt digest, value)` leaves.
    pub fn honest(leaves: &[(B256, Wei)]) -> Result<CommittedTree> {
        CommittedTree::build(leaves, None)
    }

    /// A tree whose node `index` of `level` records `sum` instead of its children's sum,
    /// with every ancestor hashed over that record: the shape of a batch a dishonest
    /// builder commits to, for tests and simulations.
    pub fn with_recorded_sum(leaves: &[(B256, Wei)], level: usize, index: usize, sum: Wei) -> Result<CommittedTree> {
        CommittedTree::build(leaves, Some((level, index, sum)))
    }

    /// A tree as published: levels from the leaves up to the root.
    pub fn from_levels(levels: Vec<Vec<SumNode>>) -> CommittedTree {
        CommittedTree { levels }
    }

    fn build(leaves: &[(B256, Wei)], tamper: Option<(usize, usize, Wei)>) -> Result<CommittedTree> {
        let mut level: Vec<SumNode> = leaves.iter().map(|(d, v)| SumNode::leaf(d, *v)).collect();
        let mut levels = Vec::new();
        let mut depth = 0;
        loop {
            if let Some((l, i, sum)) = tamper
                && l == depth
                && i < level.len()
            {
                level[i].sum = sum;
            }
            let done = level.len() <= 1;
            levels.push(level.clone());
            if done {
                break;
            }
            level = level
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => SumNode::parent(l, r),
                    [last] => Ok(*last),
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect::<Result<_, _>>()?;
            depth += 1;
        }
        Ok(CommittedTree { levels })
    }

    /// The levels, leaves first.
    pub fn levels(&self) -> &[Vec<SumNode>] {
        &self.levels
    }

    /// The root (hash zero and sum zero for an empty tree).
    pub fn root(&self) -> SumNode {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or_default()
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Whether there are no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The path from node `index` of `level` to the root, in the contract's format (the
    /// index and count are those of the node's level).
    pub fn proof(&self, level: usize, index: usize) -> Option<SumProof> {
        let nodes = self.levels.get(level)?;
        if index >= nodes.len() {
            return None;
        }
        let mut siblings = Vec::new();
        let mut i = index;
        for l in &self.levels[level..self.levels.len() - 1] {
            if let Some(s) = l.get(i ^ 1) {
                siblings.push(*s);
            }
            i /= 2;
        }
        Some(SumProof { index: index as u64, leaf_count: nodes.len() as u64, siblings })
    }
}

/// A Merkle-sum node given by what it hashes: a leaf's receipt digest and value, or an
/// inner node's two children.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SumPreimage {
    /// A leaf.
    Leaf {
        /// The receipt digest.
        digest: B256,
        /// The value the leaf hashes.
        value: Wei,
    },
    /// An inner node.
    Inner {
        /// Left child as recorded.
        left: SumNode,
        /// Right child as recorded.
        right: SumNode,
    },
}

/// Evidence against a pending settlement, one variant per dispute function of Channels.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FraudProof {
    /// Leaf `proof.index` is not the channel's receipt with seq batchStart + 1 + index.
    Seq {
        /// The receipt at that leaf.
        receipt: Receipt,
        /// The value its leaf hashes.
        leaf_value: Wei,
        /// Its path.
        proof: SumProof,
    },
    /// A leaf whose value is not its receipt's, or whose receipt's value is not its
    /// tokens at the model's registered prices.
    Value {
        /// The receipt.
        receipt: Receipt,
        /// The value its leaf hashes.
        leaf_value: Wei,
        /// Its path.
        proof: SumProof,
    },
    /// Payout run `run` is not the registered split of its value.
    Split {
        /// The settlement's payouts.
        payouts: Vec<PayoutRun>,
        /// The run.
        run: usize,
    },
    /// A receipt inside payout run `run` is of another model.
    Attribution {
        /// The settlement's payouts.
        payouts: Vec<PayoutRun>,
        /// The run.
        run: usize,
        /// The receipt.
        receipt: Receipt,
        /// The value its leaf hashes.
        leaf_value: Wei,
        /// Its path.
        proof: SumProof,
    },
    /// Payout run `run`'s value is not the sum of its leaves.
    RunSum {
        /// The settlement's payouts.
        payouts: Vec<PayoutRun>,
        /// The run.
        run: usize,
        /// First leaf of the run: (digest, value).
        first: (B256, Wei),
        /// Its path.
        first_proof: SumProof,
        /// Last leaf of the run: (digest, value).
        last: (B256, Wei),
        /// Its path.
        last_proof: SumProof,
    },
    /// A node whose recorded sum is not what it hashes (or overflows), or a root whose
    /// total is not the settled amount.
    Sum {
        /// The node.
        node: SumPreimage,
        /// Its sum as its parent records it (ignored for the root).
        recorded: Wei,
        /// Its path (count 1, no siblings, for the root).
        proof: SumProof,
    },
    /// A data entry of run `run` that is not owed: outside the run, for a receipt without
    /// weights, past its receipt's weights, another contributor's weight, or the wrong amount.
    DataEntry {
        /// The settlement's payouts.
        payouts: Vec<PayoutRun>,
        /// The run.
        run: usize,
        /// The entry.
        entry: market::DataEntry,
        /// Its path in the run's data tree.
        entry_proof: SumProof,
        /// The receipt at the entry's leaf (any receipt when the leaf is outside the run).
        receipt: Receipt,
        /// The value its leaf hashes.
        leaf_value: Wei,
        /// Its path in the batch.
        receipt_proof: SumProof,
        /// The weight at the entry's weight index (weight 0 when the index is past the end;
        /// unused when the receipt has no weights).
        weight: WeightLeaf,
        /// Its path in the receipt's weights tree.
        weight_proof: market::MerkleProof,
    },
    /// Two neighbouring data entries out of (contributor, leaf) order.
    DataOrder {
        /// The settlement's payouts.
        payouts: Vec<PayoutRun>,
        /// The run.
        run: usize,
        /// The first entry.
        a: market::DataEntry,
        /// Its path.
        a_proof: SumProof,
        /// The next one.
        b: market::DataEntry,
        /// Its path.
        b_proof: SumProof,
    },
    /// A receipt's weight owed a non-zero amount without an entry: the entries around the
    /// gap where it would be.
    DataMissing {
        /// The settlement's payouts.
        payouts: Vec<PayoutRun>,
        /// The run.
        run: usize,
        /// The receipt.
        receipt: Receipt,
        /// The value its leaf hashes.
        leaf_value: Wei,
        /// Its path in the batch.
        receipt_proof: SumProof,
        /// The weight without an entry.
        weight: WeightLeaf,
        /// Its path in the receipt's weights tree.
        weight_proof: market::MerkleProof,
        /// How many entries sort before the missing one.
        gap: u64,
        /// The entry at `gap - 1`, if any, and its path.
        below: Option<(market::DataEntry, SumProof)>,
        /// The entry at `gap`, if any, and its path.
        above: Option<(market::DataEntry, SumProof)>,
    },
    /// A node of a run's data tree whose sum does not add up, whose total is not what the run
    /// distributes, or whose kind (entry or inner node) is not the declared shape's.
    DataNode {
        /// The settlement's payouts.
        payouts: Vec<PayoutRun>,
        /// The run.
        run: usize,
        /// The node's level in the declared shape (0 = entries).
        level: u64,
        /// The node.
        node: SumPreimage,
        /// Its sum as its parent records it (ignored for the root).
        recorded: Wei,
        /// Its path under the declared shape.
        proof: SumProof,
    },
    /// A receipt whose weights tree holds malformed weights, given in full.
    Weights {
        /// The receipt.
        receipt: Receipt,
        /// The value its leaf hashes.
        leaf_value: Wei,
        /// Its path in the batch.
        proof: SumProof,
        /// Every leaf of its weights tree, in order.
        weights: Vec<WeightLeaf>,
    },
    /// A receipt's weight paying an address that owns no contribution of the model's
    /// datanet (any weight, when the model has none).
    Outsider {
        /// The receipt.
        receipt: Receipt,
        /// The value its leaf hashes.
        leaf_value: Wei,
        /// Its path in the batch.
        proof: SumProof,
        /// The weight.
        weight: WeightLeaf,
        /// Its path in the receipt's weights tree.
        weight_proof: market::MerkleProof,
        /// The address's neighbours among the datanet's owners; `None` when the model has
        /// no datanet.
        datanet: Option<market::OutsiderProof>,
    },
}

impl FraudProof {
    /// The contract's name for this fraud class.
    pub fn kind(&self) -> &'static str {
        match self {
            FraudProof::Seq { .. } => "seq",
            FraudProof::Value { .. } => "value",
            FraudProof::Split { .. } => "split",
            FraudProof::Attribution { .. } => "attribution",
            FraudProof::RunSum { .. } => "run-sum",
            FraudProof::Sum { .. } => "sum",
            FraudProof::DataEntry { .. } => "data-entry",
            FraudProof::DataOrder { .. } => "data-order",
            FraudProof::DataMissing { .. } => "data-missing",
            FraudProof::DataNode { .. } => "data-node",
            FraudProof::Weights { .. } => "weights",
            FraudProof::Outsider { .. } => "outsider",
        }
    }
}

/// A settlement as its `Settled` event and the channel describe it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Settlement {
    /// The channel.
    pub channel: ChannelId,
    /// The channel's payer.
    pub payer: Address,
    /// The provider that settled.
    pub provider: Address,
    /// The voucher's seq.
    pub seq: Seq,
    /// The voucher's cumulative.
    pub cumulative: Wei,
    /// What it claims: cumulative − settled before it.
    pub amount: Wei,
    /// The voucher's receipts root.
    pub receipts_root: B256,
    /// The channel's settled seq before it: leaf i must be seq batch_start + 1 + i.
    pub batch_start: Seq,
    /// End of its challenge window (chain time).
    pub deadline: u64,
    /// The payout runs it declared.
    pub payouts: Vec<PayoutRun>,
}

/// The receipts behind a settlement, as a receipt source delivers them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Batch {
    /// The co-signed receipts, in leaf order.
    pub receipts: Vec<SignedReceipt>,
    /// The committed tree when the source has it; `None` means "the honest tree over
    /// these receipts" (what an honest payer signs).
    pub tree: Option<CommittedTree>,
    /// Each receipt's weights, as the leaves of its `attributionRoot` (empty for a receipt
    /// without); `None` when the source has no attribution data, which is enough only for
    /// settlements that neither carry weights nor distribute anything.
    pub weights: Option<Vec<Vec<WeightLeaf>>>,
    /// The committed data entries of the payout runs, by data root. A run whose root is
    /// missing here is checked against the honest entries.
    pub data: BTreeMap<B256, CommittedData>,
}

impl Batch {
    /// A batch of receipts without attribution data, under the honest tree.
    pub fn new(receipts: Vec<SignedReceipt>) -> Batch {
        Batch { receipts, tree: None, weights: None, data: BTreeMap::new() }
    }

    /// A batch of receipts with their weights and the runs' committed entries, under the
    /// honest tree.
    pub fn attributed(receipts: Vec<SignedReceipt>, weights: &[Weights], data: &[CommittedData]) -> Batch {
        Batch {
            receipts,
            tree: None,
            weights: Some(weights.iter().map(WeightLeaf::of).collect()),
            data: data.iter().filter(|d| !d.entries.is_empty()).map(|d| (d.commitment().root, d.clone())).collect(),
        }
    }
}

/// What [`examine`] concluded.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Everything checks out.
    Honest,
    /// The settlement is fraudulent; this proof shows it.
    Fraud(Box<FraudProof>),
    /// Something is wrong that no dispute of the contract can prove (said why).
    Unprovable(String),
}

/// Number of levels above the leaves of a tree of `n` leaves.
fn depth(mut n: u64) -> usize {
    let mut d = 0;
    while n > 1 {
        n = n.div_ceil(2);
        d += 1;
    }
    d
}

fn bad(channel: ChannelId, reason: impl Into<String>) -> ChainError {
    ChainError::BadBatch { channel, reason: reason.into() }
}

/// floor((in × priceIn + out × priceOut) / 1000) in 256 bits, as the contract computes it.
fn contract_value(r: &Receipt) -> U256 {
    (U256::from(r.input_tokens) * U256::from(r.price.per_1k_input.0)
        + U256::from(r.output_tokens) * U256::from(r.price.per_1k_output.0))
        / U256::from(1000u64)
}

/// Decides whether `s` is honest given the batch behind it and the terms of the models
/// it names, and builds the proof when it is not. An error means the batch does not
/// match the settlement (wrong root, missing receipts): nothing can be proven from it.
pub fn examine(s: &Settlement, batch: &Batch, terms: &BTreeMap<ModelId, ModelTerms>) -> Result<Verdict> {
    let id = s.channel;
    let digests: Vec<B256> = batch.receipts.iter().map(|r| r.receipt.digest()).collect();
    let tree = match &batch.tree {
        Some(t) => t.clone(),
        None => CommittedTree::honest(
            &batch.receipts.iter().zip(&digests).map(|(r, d)| (*d, r.receipt.value)).collect::<Vec<_>>(),
        )?,
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
    if let Some(proof) = inconsistent_node(&tree, &digests, &leaf_values) {
        return Ok(Verdict::Fraud(Box::new(proof)));
    }

    let n = s.seq.0.checked_sub(s.batch_start.0).ok_or_else(|| bad(id, "seq before the batch start"))?;
    let c = tree.len() as u64;
    let leaf_proof = |i: usize| tree.proof(0, i).expect("index below the leaf count");

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

    // 3. Values (membership only, so any leaf count will do).
    for (i, sr) in batch.receipts.iter().enumerate() {
        let r = &sr.receipt;
        let registered = terms.get(&r.model).is_some_and(|t| r.price == t.price || r.price == t.previous_price);
        if leaf_values[i] != r.value || contract_value(r) != U256::from(r.value.0) || !registered {
            let proof = leaf_proof(i);
            return Ok(Verdict::Fraud(Box::new(FraudProof::Value {
                receipt: r.clone(),
                leaf_value: leaf_values[i],
                proof,
            })));
        }
    }

    // 4. The total: the root's sum must be the amount claimed.
    if let Some(proof) = total_mismatch(s, &tree, &digests, &leaf_values) {
        return Ok(Verdict::Fraud(Box::new(proof)));
    }

    // 5. Payouts: each run's split, then (positional) its models and its sum.
    for (k, run) in s.payouts.iter().enumerate() {
        let value = run.value()?;
        let t = terms.get(&run.model).ok_or(ChainError::UnknownModel(run.model.0))?;
        if run.parts != t.split.apply(value) && run.parts != t.previous_split.apply(value) {
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
        for (i, sr) in batch.receipts.iter().enumerate().take(end).skip(start) {
            let r = &sr.receipt;
            if r.model != run.model {
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
    examine_data(s, &batch.receipts, &tree, batch.weights.as_deref(), &batch.data)
}

fn seq_wrong(s: &Settlement, r: &Receipt, index: u64) -> bool {
    r.channel != s.channel
        || r.payer != s.payer
        || r.provider != s.provider
        || u128::from(r.seq.0) != u128::from(s.batch_start.0) + 1 + u128::from(index)
}

/// The root's preimage, and a proof that its total is not the settled amount (or overflows).
fn total_mismatch(s: &Settlement, tree: &CommittedTree, digests: &[B256], leaf_values: &[Wei]) -> Option<FraudProof> {
    let levels = tree.levels();
    let top = levels.len() - 1;
    let (node, total) = if top == 0 {
        (SumPreimage::Leaf { digest: digests[0], value: leaf_values[0] }, Some(leaf_values[0].0))
    } else {
        let (l, r) = (levels[top - 1][0], levels[top - 1][1]);
        (SumPreimage::Inner { left: l, right: r }, l.sum.0.checked_add(r.sum.0))
    };
    // The root's sum is not recorded by any parent: the contract takes its preimage's.
    let proof = SumProof { index: 0, leaf_count: 1, siblings: Vec::new() };
    (total != Some(s.amount.0)).then_some(FraudProof::Sum { node, recorded: Wei::ZERO, proof })
}

/// The highest node below the root whose recorded sum (what its parent hashes) is not the
/// sum its own hash commits to.
fn inconsistent_node(tree: &CommittedTree, digests: &[B256], leaf_values: &[Wei]) -> Option<FraudProof> {
    let levels = tree.levels();
    let top = levels.len() - 1;
    for level in (0..top).rev() {
        for (j, node) in levels[level].iter().enumerate() {
            let preimage = if level == 0 {
                SumPreimage::Leaf { digest: digests[j], value: leaf_values[j] }
            } else {
                let below = &levels[level - 1];
                match (below.get(2 * j), below.get(2 * j + 1)) {
                    (Some(l), Some(r)) => SumPreimage::Inner { left: *l, right: *r },
                    // Promoted: the same node one level down, checked there.
                    _ => continue,
                }
            };
            let actual = match preimage {
                SumPreimage::Leaf { value, .. } => Some(value.0),
                SumPreimage::Inner { left, right } => left.sum.0.checked_add(right.sum.0),
            };
            if actual != Some(node.sum.0) {
                let proof = tree.proof(level, j).expect("node exists");
                return Some(FraudProof::Sum { node: preimage, recorded: node.sum, proof });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use attrinet_market::{Domain, Identity, Price, PublicKey, SumTree};

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

    fn settlement(rs: &[SignedReceipt], tree: &CommittedTree, payouts: Vec<PayoutRun>) -> Settlement {
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

    fn terms() -> BTreeMap<ModelId, ModelTerms> {
        let t = ModelTerms { price: price(), split: split(), previous_price: price(), previous_split: split() };
        BTreeMap::from([(model(), t)])
    }

    fn leaves(rs: &[SignedReceipt]) -> Vec<(B256, Wei)> {
        rs.iter().map(|r| (r.receipt.digest(), r.receipt.value)).collect()
    }

    #[test]
    fn honest_tree_and_proofs_are_the_markets() {
        for n in 1..=9 {
            let l = leaves(&receipts(n));
            let ours = CommittedTree::honest(&l).unwrap();
            let market = SumTree::new(&l).unwrap();
            assert_eq!(ours.root(), market.root(), "n = {n}");
            for i in 0..n {
                assert_eq!(ours.proof(0, i), market.proof(i), "n = {n}, leaf {i}");
            }
        }
    }

    #[test]
    fn honest_batch_is_honest_and_each_tampering_is_caught_by_its_class() {
        let rs = receipts(7);
        let plain: Vec<_> = rs.iter().map(|r| r.receipt.clone()).collect();
        let tree = CommittedTree::honest(&leaves(&rs)).unwrap();
        let payouts = payout_runs(&plain, |_| Some(split())).unwrap();
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
        let bad = CommittedTree::with_recorded_sum(&l, 1, 1, Wei(l[2].1.0 + l[3].1.0 + 1)).unwrap();
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
        assert!(matches!(examine(&s4, &batch, &terms()), Err(ChainError::BadBatch { .. })));
    }

    #[test]
    fn wrong_batch_start_is_proven_at_leaf_zero() {
        let rs = receipts(8);
        let plain: Vec<_> = rs.iter().map(|r| r.receipt.clone()).collect();
        let tree = CommittedTree::honest(&leaves(&rs)).unwrap();
        let mut s = settlement(&rs, &tree, payout_runs(&plain[4..], |_| Some(split())).unwrap());
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
