//! The contracts' alloy bindings, generated from the committed artifacts, and every
//! conversion between the plain types ([`crate::types`], attrinet-market's) and the
//! contracts' ABI types, the encoding of each fraud proof as its dispute call included.
//! Nothing else in the crate builds an ABI value.

// The generated methods take one argument per Solidity parameter; the dispute functions
// have more than clippy likes, and their shape is the contract's.
#![allow(clippy::too_many_arguments)]

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::sol_types::SolCall;
use attrinet_market::{
    self as market, DataCommitment, DataEntry, MerkleProof, ModelId, Payout, PayoutRun, Price, Split, SumNode,
    SumProof, Wei,
};

use crate::error::{ChainError, Result};
use crate::types::{FraudProof, SumPreimage, WeightLeaf};

alloy::sol!(
    /// Nodes, models and bonds (chain/contracts/Registry.sol).
    #[sol(rpc, all_derives)]
    Registry,
    "artifacts/Registry.json"
);

alloy::sol!(
    /// Channels, settlement and fraud proofs (chain/contracts/Channels.sol).
    #[sol(rpc, all_derives)]
    Channels,
    "artifacts/Channels.json"
);

/// DataDisputes in a module of its own: its ABI names Channels' structs, and the types
/// alloy generates for them would clash with those of the `Channels` binding above.
pub(crate) mod data_disputes {
    #![allow(missing_docs, clippy::too_many_arguments)]
    alloy::sol!(
        /// Disputes of data entries and attribution weights
        /// (chain/contracts/DataDisputes.sol), deployed by Channels' constructor.
        #[sol(rpc, all_derives)]
        DataDisputes,
        "artifacts/DataDisputes.json"
    );
}

/// The receipt as `Channels` takes it in disputes (same fields as its EIP-712 struct).
pub(crate) fn receipt(r: &market::Receipt) -> Channels::Receipt {
    let e = r.to_eip712();
    Channels::Receipt {
        channel: e.channel,
        seq: e.seq,
        payer: e.payer,
        provider: e.provider,
        payerKey: e.payerKey,
        providerKey: e.providerKey,
        model: e.model,
        requestHash: e.requestHash,
        responseHash: e.responseHash,
        inputTokens: e.inputTokens,
        outputTokens: e.outputTokens,
        priceIn: e.priceIn,
        priceOut: e.priceOut,
        value: e.value,
        cumulative: e.cumulative,
        attributionRoot: e.attributionRoot,
        timestamp: e.timestamp,
    }
}

/// The voucher as `Channels.settle` takes it.
pub(crate) fn voucher(v: &market::Voucher) -> Channels::Voucher {
    Channels::Voucher { channel: v.channel.0, seq: v.seq.0, cumulative: v.cumulative.0, receiptsRoot: v.receipts_root }
}

pub(crate) fn sum_node(n: &SumNode) -> Channels::SumNode {
    Channels::SumNode { hash: n.hash, sum: n.sum.0 }
}

/// A leaf given by its preimage, as `disputeRunSum` and `disputeSum` take it: the hash
/// field carries the receipt digest, the sum field its value.
pub(crate) fn leaf(digest: B256, value: Wei) -> Channels::SumNode {
    Channels::SumNode { hash: digest, sum: value.0 }
}

pub(crate) fn proof(p: &SumProof) -> Channels::Proof {
    Channels::Proof { index: p.index, count: p.leaf_count, siblings: p.siblings.iter().map(sum_node).collect() }
}

/// The data entry as `Channels.claimData` takes it.
pub(crate) fn entry(e: &DataEntry) -> Channels::DataEntry {
    Channels::DataEntry { contributor: e.contributor, leaf: e.leaf, weightIndex: e.weight_index, amount: e.amount.0 }
}

/// A payout run as `settle`, `finalize` and the disputes take it.
pub(crate) fn payout(r: &PayoutRun) -> Channels::Payout {
    Channels::Payout {
        model: r.model.0,
        leaves: r.leaves,
        node: r.parts.node.0,
        owner: r.parts.owner.0,
        data: r.parts.data.0,
        protocol: r.parts.protocol.0,
        dataRoot: r.data.root,
        dataEntries: r.data.entries,
        distributed: r.data.distributed.0,
        termsVersion: r.terms,
    }
}

pub(crate) fn payouts(runs: &[PayoutRun]) -> Vec<Channels::Payout> {
    runs.iter().map(payout).collect()
}

/// A payout run as a `Settled` event records it.
pub(crate) fn payout_of(p: &Channels::Payout) -> PayoutRun {
    PayoutRun {
        model: ModelId(p.model),
        leaves: p.leaves,
        parts: Payout { node: Wei(p.node), owner: Wei(p.owner), data: Wei(p.data), protocol: Wei(p.protocol) },
        data: DataCommitment { root: p.dataRoot, entries: p.dataEntries, distributed: Wei(p.distributed) },
        terms: p.termsVersion,
    }
}

/// A model's prices and split as the Registry takes them.
pub(crate) fn terms(price: Price, split: Split) -> Registry::Terms {
    let (node, owner, data, protocol) = split.bps();
    Registry::Terms {
        priceIn: price.per_1k_input.0,
        priceOut: price.per_1k_output.0,
        nodeBps: node,
        ownerBps: owner,
        dataBps: data,
        protocolBps: protocol,
    }
}

/// A model's prices and split as the Registry holds them (the split checked like any).
pub(crate) fn terms_of(t: &Registry::Terms) -> Result<(Price, Split)> {
    let price = Price { per_1k_input: Wei(t.priceIn), per_1k_output: Wei(t.priceOut) };
    let split = Split::new(t.nodeBps, t.ownerBps, t.dataBps, t.protocolBps).map_err(ChainError::Market)?;
    Ok((price, split))
}

/// Conversions to the ABI types of the `DataDisputes` binding. alloy generates its own
/// copies of Channels' structs there; each is the Channels conversion re-tagged through its
/// ABI encoding (the layouts are the same Solidity structs), so no field list is written
/// twice.
mod dd {
    use alloy::sol_types::SolValue;

    use super::data_disputes::Channels as C;
    use super::*;

    /// The same ABI value as another binding's type.
    fn retag<A: SolValue, B: SolValue + From<<B::SolType as alloy::sol_types::SolType>::RustType>>(a: &A) -> B {
        B::abi_decode(&a.abi_encode()).expect("both bindings are generated from the same Solidity struct")
    }

    pub(super) fn payouts(runs: &[PayoutRun]) -> Vec<C::Payout> {
        runs.iter().map(|r| retag(&super::payout(r))).collect()
    }

    pub(super) fn receipt(r: &market::Receipt) -> C::Receipt {
        retag(&super::receipt(r))
    }

    pub(super) fn node(n: &SumNode) -> C::SumNode {
        C::SumNode { hash: n.hash, sum: n.sum.0 }
    }

    pub(super) fn proof(p: &SumProof) -> C::Proof {
        C::Proof { index: p.index, count: p.leaf_count, siblings: p.siblings.iter().map(node).collect() }
    }

    pub(super) fn entry(e: &DataEntry) -> C::DataEntry {
        retag(&super::entry(e))
    }

    pub(super) fn weight(w: &WeightLeaf) -> C::Weight {
        C::Weight { contributor: w.contributor, ppm: w.ppm, count: w.count }
    }

    pub(super) fn plain_proof(p: &MerkleProof) -> C::PlainProof {
        C::PlainProof { index: p.index, count: p.leaf_count, siblings: p.siblings.clone() }
    }

    /// An absent entry (a missing neighbour in `disputeDataMissing`): ignored by the
    /// contract, but it must decode.
    pub(super) fn no_entry() -> (C::DataEntry, C::Proof) {
        (C::DataEntry { contributor: Address::ZERO, leaf: 0, weightIndex: 0, amount: 0 }, proof(&SumProof::empty()))
    }
}

/// Which contract a dispute goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Disputes {
    /// `Channels` (sequence, value, split and Merkle-sum frauds).
    Channels,
    /// `DataDisputes` (data entries and weights).
    Data,
}

/// A fraud proof as its dispute call: the contract, the function (for errors and logs) and
/// the ABI-encoded call data.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct DisputeCall {
    pub(crate) to: Disputes,
    pub(crate) function: &'static str,
    pub(crate) data: Bytes,
}

fn call<C: SolCall>(to: Disputes, function: &'static str, c: C) -> DisputeCall {
    DisputeCall { to, function, data: c.abi_encode().into() }
}

/// The call that proves `proof` against the pending settlement of `channel`.
pub(crate) fn dispute(channel: market::ChannelId, proof: &FraudProof) -> DisputeCall {
    use Disputes::{Channels as Ch, Data};
    use data_disputes::DataDisputes as D;
    let id = channel.0;
    let p = self::proof;
    match proof {
        FraudProof::Seq { receipt: r, leaf_value, proof: pr } => {
            call(Ch, "Channels.disputeSeq", Channels::disputeSeqCall::new((id, receipt(r), leaf_value.0, p(pr))))
        }
        FraudProof::Value { receipt: r, leaf_value, proof: pr } => {
            call(Ch, "Channels.disputeValue", Channels::disputeValueCall::new((id, receipt(r), leaf_value.0, p(pr))))
        }
        FraudProof::Split { payouts: runs, run } => {
            call(Ch, "Channels.disputeSplit", Channels::disputeSplitCall::new((id, payouts(runs), U256::from(*run))))
        }
        FraudProof::Attribution { payouts: runs, run, receipt: r, leaf_value, proof: pr } => call(
            Ch,
            "Channels.disputeAttribution",
            Channels::disputeAttributionCall::new((
                id,
                payouts(runs),
                U256::from(*run),
                receipt(r),
                leaf_value.0,
                p(pr),
            )),
        ),
        FraudProof::RunSum { payouts: runs, run, first, first_proof, last, last_proof } => call(
            Ch,
            "Channels.disputeRunSum",
            Channels::disputeRunSumCall::new((
                id,
                payouts(runs),
                U256::from(*run),
                leaf(first.0, first.1),
                p(first_proof),
                leaf(last.0, last.1),
                p(last_proof),
            )),
        ),
        FraudProof::Sum { node, recorded, proof: pr } => {
            let (is_leaf, a, b) = match node {
                SumPreimage::Leaf { digest, value } => (true, leaf(*digest, *value), sum_node(&SumNode::default())),
                SumPreimage::Inner { left, right } => (false, sum_node(left), sum_node(right)),
            };
            call(Ch, "Channels.disputeSum", Channels::disputeSumCall::new((id, is_leaf, a, b, recorded.0, p(pr))))
        }
        FraudProof::DataEntry {
            payouts: runs,
            run,
            entry: e,
            entry_proof,
            receipt: r,
            leaf_value,
            receipt_proof,
            weight,
            weight_proof,
        } => call(
            Data,
            "DataDisputes.disputeDataEntry",
            D::disputeDataEntryCall::new((
                id,
                dd::payouts(runs),
                U256::from(*run),
                dd::entry(e),
                dd::proof(entry_proof),
                dd::receipt(r),
                leaf_value.0,
                dd::proof(receipt_proof),
                dd::weight(weight),
                dd::plain_proof(weight_proof),
            )),
        ),
        FraudProof::DataOrder { payouts: runs, run, a, a_proof, b, b_proof } => call(
            Data,
            "DataDisputes.disputeDataOrder",
            D::disputeDataOrderCall::new((
                id,
                dd::payouts(runs),
                U256::from(*run),
                dd::entry(a),
                dd::proof(a_proof),
                dd::entry(b),
                dd::proof(b_proof),
            )),
        ),
        FraudProof::DataMissing {
            payouts: runs,
            run,
            receipt: r,
            leaf_value,
            receipt_proof,
            weight,
            weight_proof,
            gap,
            below,
            above,
        } => {
            let side = |n: &Option<(DataEntry, SumProof)>| match n {
                Some((e, p)) => (dd::entry(e), dd::proof(p)),
                None => dd::no_entry(),
            };
            let ((below, below_proof), (above, above_proof)) = (side(below), side(above));
            call(
                Data,
                "DataDisputes.disputeDataMissing",
                D::disputeDataMissingCall::new((
                    id,
                    dd::payouts(runs),
                    U256::from(*run),
                    dd::receipt(r),
                    leaf_value.0,
                    dd::proof(receipt_proof),
                    dd::weight(weight),
                    dd::plain_proof(weight_proof),
                    *gap,
                    below,
                    below_proof,
                    above,
                    above_proof,
                )),
            )
        }
        FraudProof::DataNode { payouts: runs, run, level, node, recorded, proof: pr } => {
            let (is_leaf, a, b) = match node {
                SumPreimage::Leaf { digest, value } => {
                    (true, SumNode { hash: *digest, sum: *value }, SumNode::default())
                }
                SumPreimage::Inner { left, right } => (false, *left, *right),
            };
            call(
                Data,
                "DataDisputes.disputeDataNode",
                D::disputeDataNodeCall::new((
                    id,
                    dd::payouts(runs),
                    U256::from(*run),
                    U256::from(*level),
                    is_leaf,
                    dd::node(&a),
                    dd::node(&b),
                    recorded.0,
                    dd::proof(pr),
                )),
            )
        }
        FraudProof::Weights { receipt: r, leaf_value, proof: pr, weights } => call(
            Data,
            "DataDisputes.disputeWeights",
            D::disputeWeightsCall::new((
                id,
                dd::receipt(r),
                leaf_value.0,
                dd::proof(pr),
                weights.iter().map(dd::weight).collect(),
            )),
        ),
        FraudProof::Outsider { receipt: r, leaf_value, proof: pr, weight, weight_proof, datanet } => {
            use data_disputes::DataDisputes::{DatanetParts, Neighbour};
            let side = |s: Option<&(Address, MerkleProof)>| match s {
                Some((owner, p)) => Neighbour { present: true, owner: *owner, proof: dd::plain_proof(p) },
                None => {
                    Neighbour { present: false, owner: Address::ZERO, proof: dd::plain_proof(&MerkleProof::empty()) }
                }
            };
            let (parts, lo, hi) = match datanet {
                Some(o) => (
                    DatanetParts {
                        minSpan: o.min_span,
                        contributionsRoot: o.contributions_root,
                        ownersRoot: o.owners_root,
                        ownerCount: o.owner_count,
                    },
                    side(o.below.as_ref()),
                    side(o.above.as_ref()),
                ),
                // A model without a datanet: the contract ignores the rest.
                None => (
                    DatanetParts { minSpan: 0, contributionsRoot: B256::ZERO, ownersRoot: B256::ZERO, ownerCount: 0 },
                    side(None),
                    side(None),
                ),
            };
            call(
                Data,
                "DataDisputes.disputeOutsider",
                D::disputeOutsiderCall::new((
                    id,
                    dd::receipt(r),
                    leaf_value.0,
                    dd::proof(pr),
                    dd::weight(weight),
                    dd::plain_proof(weight_proof),
                    parts,
                    lo,
                    hi,
                )),
            )
        }
    }
}
