//! The chain's plain types: what a settlement declares and what a watcher proves against
//! it, the model terms and channel state the contracts hold, and where a deployment lives.
//! No I/O and no ABI here: [`crate::abi`] converts these to the contracts' types, and the
//! checkers in `examine` read them.

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256};
use attrinet_market::{
    self as market, ChannelId, CommittedData, Domain, MerkleTree, PayoutRun, Price, PublicKey, Receipt, Seq,
    SignedReceipt, Split, SumNode, SumProof, SumTree, Wei, Weight, Weights,
};

/// Where the contracts live.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Deployment {
    /// The L2's chain id.
    pub chain_id: u64,
    /// The Registry contract.
    pub registry: Address,
    /// The Channels contract (the EIP-712 verifying contract).
    pub channels: Address,
    /// The block Channels was deployed in: event followers start there.
    pub deploy_block: u64,
}

impl Deployment {
    /// The EIP-712 domain receipts and vouchers of this deployment are signed under.
    pub fn domain(&self) -> Domain {
        Domain { chain_id: self.chain_id, verifying_contract: self.channels }
    }
}

/// Parameters fixed at deployment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeployConfig {
    /// Receives the protocol share.
    pub treasury: Address,
    /// Seconds a settlement can be disputed.
    pub challenge_window: u64,
    /// Seconds between a payer's thaw and its withdrawal.
    pub thaw_delay: u64,
    /// Seconds between a node's unbond request and the withdrawal of its bond.
    pub unbond_delay: u64,
    /// The least bond a provider must hold to settle.
    pub min_bond: Wei,
}

/// A mined transaction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TxOutcome {
    /// Its hash.
    pub tx: B256,
    /// The block it was mined in.
    pub block: u64,
    /// Gas it used.
    pub gas_used: u64,
}

/// A channel as the contract holds it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChannelInfo {
    /// The client.
    pub payer: Address,
    /// The node.
    pub provider: Address,
    /// Deposit (after a withdrawal: what was settled).
    pub deposit: Wei,
    /// Cumulative of the last finalized settlement.
    pub settled: Wei,
    /// Seq of the last finalized settlement: the next batch starts after it.
    pub settled_seq: Seq,
    /// When the payer may withdraw; zero when not thawing.
    pub thaw_end: u64,
    /// The payer withdrew its deposit.
    pub closed: bool,
    /// The payer's ed25519 key, named when it opened the channel.
    pub payer_key: PublicKey,
}

/// A settlement in its challenge window.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PendingInfo {
    /// The voucher's receipts root.
    pub receipts_root: B256,
    /// keccak256 of the ABI-encoded payouts.
    pub payouts_hash: B256,
    /// The voucher's cumulative.
    pub cumulative: Wei,
    /// The voucher's seq.
    pub seq: Seq,
    /// End of the challenge window (chain time).
    pub deadline: u64,
}

/// A model's terms in force on chain, and their version (every earlier version stays in
/// the registry: see `ChainClient::terms_history`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ModelTerms {
    /// Prices.
    pub price: Price,
    /// Split.
    pub split: Split,
    /// The version: 0 at registration, one more at each update.
    pub version: u32,
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
    pub tree: Option<SumTree>,
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
pub(crate) fn well_formed(leaves: &[WeightLeaf]) -> Option<Weights> {
    if leaves.iter().any(|l| l.count as usize != leaves.len()) {
        return None;
    }
    Weights::new(leaves.iter().map(|l| Weight { contributor: l.contributor, ppm: l.ppm }).collect()).ok()
}

/// A position in the chain's log stream: everything at or before it has been handled.
/// `log_index == u64::MAX` means "all of `block`".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Cursor {
    /// Block number.
    pub block: u64,
    /// Log index within the block.
    pub log_index: u64,
}

impl Cursor {
    /// All of `block` (and everything before it).
    pub fn end_of(block: u64) -> Cursor {
        Cursor { block, log_index: u64::MAX }
    }

    /// The position just before this log: committing it leaves this log unhandled.
    pub fn before(self) -> Cursor {
        match self.log_index {
            0 => Cursor::end_of(self.block.saturating_sub(1)),
            i => Cursor { block: self.block, log_index: i - 1 },
        }
    }
}
